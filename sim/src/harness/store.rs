//! The simulated store and its cross-process lock: writes that land or not,
//! the lock granted and released, store work landing before a verdict.
//!
//! A world's shared store is a file under an OS lock (released only when its
//! holder unlocks or dies), or a database ([`WorldConfig::database`], as
//! `PostgresStore`): every lock it grants raises a fence, every write made
//! under a lock is conditional on it, and it releases the lock of a holder
//! whose connection was cut, who stalled, or who died, up to its lock bound
//! later, whether or not that holder knows.

use super::*;
use freshen_core::session::{Plant, StateView};

impl World {
    /// Life `incarnation` lets go of the store's lock, or stops waiting for it.
    pub(super) fn leave_lock(&mut self, incarnation: u32) {
        self.lock_waiters.retain(|(waiter, _)| *waiter != incarnation);
        if let Some(p) = self.process_of(incarnation) {
            self.process_mut(p).held_fence = None;
        }
        self.release_lock(incarnation);
    }

    /// Life `incarnation` no longer holds the store's lock; the next live waiter gets it.
    fn release_lock(&mut self, incarnation: u32) {
        if self.lock_holder != Some(incarnation) {
            return;
        }
        self.lock_holder = None;
        while let Some((waiter, op)) = self.lock_waiters.pop_front() {
            if self.process_of(waiter).is_some() {
                self.grant_lock(waiter, op);
                break;
            }
        }
    }

    /// Life `incarnation` takes the lock and reads the store under it. A
    /// database raises its fence, and may lose the holder's connection.
    pub(super) fn grant_lock(&mut self, incarnation: u32, op: StoreOpId) {
        self.lock_holder = Some(incarnation);
        let at = self.store_answer_at();
        if let Some(database) = self.config.database {
            self.fence += 1;
            let fence = self.fence;
            let holder = self.process_of(incarnation);
            if let Some(p) = holder {
                self.process_mut(p).held_fence = Some(fence);
            }
            let hold = millis(database.lock_hold);
            if holder.is_some_and(|p| self.process(p).paused_until.is_some()) {
                // Granted to a stalled worker: no heartbeat ever comes.
                let at = self.now.saturating_add(database.lock_hold);
                self.schedule(at, Pending::LockReleased { holder: incarnation, fence, cause: "its holder stalled" });
            } else if self.chance(self.config.faults.lock_lost, "lock_lost") {
                // Cut at some point of the hold; the database notices within its bound.
                let released =
                    self.now.saturating_add(Duration::from_millis(self.rng.below(hold) + 1 + self.rng.below(hold)));
                let cause = "its connection was cut";
                self.schedule(released, Pending::LockReleased { holder: incarnation, fence, cause });
            }
        }
        let outcome = StoreOutcome::Locked(self.blob.clone());
        self.schedule(at, Pending::StoreDone { incarnation, op, outcome });
    }

    /// When a store operation sent now answers: the store's latency, and for
    /// a slow database sometimes more.
    pub(super) fn store_answer_at(&mut self) -> MonoTime {
        let at = self.now.saturating_add(self.config.store_latency);
        match self.config.database.map(|database| database.slow) {
            Some(slow) if self.chance(self.config.faults.slow_store, "slow_store") => {
                at.saturating_add(Duration::from_millis(self.rng.below(millis(slow) + 1)))
            }
            _ => at,
        }
    }

    /// The database ends life `holder`'s hold under `fence`, if it still has it.
    pub(super) fn database_releases(&mut self, holder: u32, fence: u64, cause: &'static str) {
        if self.lock_holder != Some(holder) || self.fence != fence || self.planted(Plant::LockNotReleasedOnDeath) {
            return;
        }
        note!(self, "{} the database releases life {holder}'s lock: {cause}", self.now);
        if let Some(p) = self.process_of(holder) {
            // It lives, and believes it holds the lock.
            self.stats.tally.locks_lost += 1;
            self.evidence.lock_lost = self.config.database;
            self.shared_monitor.lock_lost(p);
        }
        self.release_lock(holder);
    }

    /// Life `dead` died holding `fence`, if any: an OS lock goes with it; a
    /// database lets go at once (the process died, its socket closed) or, as
    /// often, once it notices (the machine died), within its bound.
    pub(super) fn dead_lets_go(&mut self, dead: u32, fence: Option<u64>) {
        let (Some(database), Some(fence)) = (self.config.database, fence) else {
            self.leave_lock(dead);
            return;
        };
        self.lock_waiters.retain(|(waiter, _)| *waiter != dead);
        if self.rng.chance(1, 2) {
            self.database_releases(dead, fence, "its holder's process died");
        } else {
            let at = self.now.saturating_add(Duration::from_millis(1 + self.rng.below(millis(database.lock_hold))));
            self.schedule(at, Pending::LockReleased { holder: dead, fence, cause: "its holder's machine died" });
        }
    }

    /// Process `p` stalls (a GC or VM pause) for longer than the database's
    /// lock bound; a lock it holds is released once its heartbeats stop
    /// counting (the last one came up to a third of the bound before).
    pub(super) fn pause(&mut self, p: usize) {
        let Some(database) = self.config.database else { return };
        let hold = millis(database.lock_hold);
        let until = self.now.saturating_add(Duration::from_millis(hold + 1 + self.rng.below(2 * hold)));
        let incarnation = self.process(p).incarnation;
        self.process_mut(p).paused_until = Some(until);
        if matches!(self.process(p).machine.session.state(), StateView::Refreshing { .. }) {
            self.evidence.stalled_refreshing = true;
        }
        note_at!(self, p, "{} stalls until {until}", self.now);
        self.schedule(until, Pending::ProcessResumes { incarnation });
        if self.lock_holder == Some(incarnation) {
            let released = self.now.saturating_add(Duration::from_millis(hold - self.rng.below(hold / 3 + 1)));
            let cause = "its holder stalled";
            self.schedule(released, Pending::LockReleased { holder: incarnation, fence: self.fence, cause });
        }
    }

    /// The connection holding the database's lock is cut now (its holder
    /// is not told); the database notices `noticed` later and releases it.
    pub fn cut_lock_connection(&mut self, noticed: Duration) {
        if let (Some(holder), Some(_)) = (self.lock_holder, self.config.database) {
            let at = self.now.saturating_add(noticed);
            let (fence, cause) = (self.fence, "its connection was cut");
            self.schedule(at, Pending::LockReleased { holder, fence, cause });
        }
    }

    /// Process `p` stalls now for longer than the database's lock bound (a
    /// world with a database; see [`WorldConfig::database`]).
    pub fn stall(&mut self, p: usize) {
        self.pause(p);
    }

    /// A stalled process resumes: its timers fall due, its inputs follow.
    pub(super) fn resume(&mut self, p: usize) {
        // Stalls come apart (a pause, then a run of work): one sampled at
        // each input of the backlog would stall it again at once, and again
        // on every resume, deferring a backlog that only grows (a loop past
        // the step bound, seed 1723481).
        let running = self.config.database.map_or(Duration::ZERO, |database| database.lock_hold);
        let stall_free_until = self.now.saturating_add(running);
        let process = self.process_mut(p);
        process.paused_until = None;
        process.stall_free_until = stall_free_until;
        note_at!(self, p, "{} resumes", self.now);
        let now = self.session_now(p);
        self.process_mut(p).machine.session.handle_timeout(now);
        self.drain(p);
    }

    /// Runs until no process is stalled.
    pub(super) fn end_pauses(&mut self) {
        if let Some(last) = self.processes.iter().filter_map(|p| p.paused_until).max() {
            self.run_until(last);
        }
    }

    pub(super) fn write(&mut self, p: usize, op: StoreOpId, change: StoreChange) {
        let incarnation = self.process(p).incarnation;
        let fate = match self.scripted_store.pop_front() {
            Some(fate) => fate,
            None if self.chance(self.config.faults.store_write_fail, "store_write_fail") => {
                // Half the failures happen after the bytes landed.
                if self.rng.chance(1, 2) { StoreFate::FailAfter } else { StoreFate::FailBefore }
            }
            None => StoreFate::Write,
        };
        let fence = self.config.database.and(self.process(p).held_fence);
        let write = StoreWrite { change, fence };
        let outcome = match fate {
            StoreFate::Write => StoreOutcome::Written { write: write.clone() },
            StoreFate::FailBefore => StoreOutcome::Failed { landed: None },
            StoreFate::FailAfter => StoreOutcome::Failed { landed: Some(write.clone()) },
        };
        self.process_mut(p).in_flight_write = Some(write);
        let at = self.store_answer_at();
        self.schedule(at, Pending::StoreDone { incarnation, op, outcome });
    }

    /// A write reaches the store; returns whether it landed. A database
    /// refuses one made under a lock it has granted again since (unless the
    /// plant turns fencing off), and F1 checks that no write lands over what
    /// a later lock's holder wrote.
    pub(super) fn land(&mut self, write: StoreWrite) -> bool {
        if let Some(fence) = write.fence {
            if fence != self.fence && !self.planted(Plant::NoFencing) {
                self.stats.tally.fenced_writes += 1;
                note!(self, "{} the database fences off a write under lock {fence} (now {})", self.now, self.fence);
                return false;
            }
            if fence < self.written_under {
                self.extra.push(Violation {
                    invariant: Invariant::F1,
                    at: self.now,
                    detail: format!(
                        "a write under lock {fence} replaced what the holder of lock {} wrote",
                        self.written_under
                    ),
                });
            }
            self.written_under = fence;
        }
        self.blob = match write.change {
            StoreChange::Put(blob) => Some(blob),
            StoreChange::Delete => None,
        };
        true
    }

    fn planted(&self, plant: Plant) -> bool {
        self.config.session.plant == Some(plant)
    }

    pub(super) fn store_done(&mut self, p: usize, op: StoreOpId, outcome: StoreOutcome) {
        self.process_mut(p).in_flight_write = None;
        let locked = matches!(outcome, StoreOutcome::Locked(_));
        let event = match outcome {
            StoreOutcome::Loaded(blob) | StoreOutcome::Locked(blob) => {
                let (unix_now, boot_now) = (self.machine_wall(), Some(boot_at(self.now)));
                match blob.map(|b| StoredSession::decode(b.expose_secret().as_bytes())) {
                    Some(Err(error)) => Event::StoreFailed { op, error: StoreError::Corrupt(error) },
                    Some(Ok(stored)) if locked => Event::StoreLocked { op, stored: Some(stored), unix_now, boot_now },
                    None if locked => Event::StoreLocked { op, stored: None, unix_now, boot_now },
                    Some(Ok(stored)) => Event::StoreLoaded { op, stored: Some(stored), unix_now, boot_now },
                    None => Event::StoreLoaded { op, stored: None, unix_now, boot_now },
                }
            }
            StoreOutcome::Written { write } => {
                if self.land(write) {
                    Event::StoreWritten { op }
                } else {
                    Event::StoreFailed { op, error: StoreError::Fenced }
                }
            }
            StoreOutcome::Failed { landed } => {
                if let Some(write) = landed {
                    self.land(write);
                }
                Event::StoreFailed { op, error: StoreError::Unavailable }
            }
        };
        self.input(p, event);
    }

    /// Lets store operations already under way land before the verdict: a
    /// clear issued an instant before the liveness phase ends is still on its
    /// way, not a store that keeps a logged-out session. Bounded: each round
    /// delivers everything due up to the next store answer, which may start
    /// more store work (a timer's refresh), so a few rounds suffice.
    pub(super) fn land_store_work(&mut self) {
        const ROUNDS: usize = 8;
        for _ in 0..ROUNDS {
            let next_store_answer =
                self.queue.earliest(|pending| matches!(pending, Pending::StoreDone { .. } | Pending::Input { .. }));
            match next_store_answer {
                Some(at) => self.run_until(at),
                None => break,
            }
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
