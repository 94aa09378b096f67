//! The simulated store and its cross-process lock: writes that land or not,
//! the lock granted and released, store work landing before a verdict.

use super::*;

impl World {
    /// Life `incarnation` lets go of the store's lock, or stops waiting for it.
    pub(super) fn leave_lock(&mut self, incarnation: u32) {
        self.lock_waiters.retain(|(waiter, _)| *waiter != incarnation);
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

    /// Life `incarnation` takes the lock and reads the store under it.
    pub(super) fn grant_lock(&mut self, incarnation: u32, op: StoreOpId) {
        self.lock_holder = Some(incarnation);
        let at = self.now.saturating_add(self.config.store_latency);
        let outcome = StoreOutcome::Locked(self.blob.clone());
        self.schedule(at, Pending::StoreDone { incarnation, op, outcome });
    }

    pub(super) fn write(&mut self, p: usize, op: StoreOpId, write: StoreWrite) {
        let incarnation = self.process(p).incarnation;
        let fate = match self.scripted_store.pop_front() {
            Some(fate) => fate,
            None if self.chance(self.config.faults.store_write_fail, "store_write_fail") => {
                // Half the failures happen after the bytes landed.
                if self.rng.chance(1, 2) { StoreFate::FailAfter } else { StoreFate::FailBefore }
            }
            None => StoreFate::Write,
        };
        let outcome = match fate {
            StoreFate::Write => StoreOutcome::Written { write: write.clone() },
            StoreFate::FailBefore => StoreOutcome::Failed { landed: None },
            StoreFate::FailAfter => StoreOutcome::Failed { landed: Some(write.clone()) },
        };
        self.process_mut(p).in_flight_write = Some(write);
        let at = self.now.saturating_add(self.config.store_latency);
        self.schedule(at, Pending::StoreDone { incarnation, op, outcome });
    }

    pub(super) fn apply(&mut self, write: StoreWrite) {
        self.blob = match write {
            StoreWrite::Put(blob) => Some(blob),
            StoreWrite::Delete => None,
        };
    }

    pub(super) fn store_done(&mut self, p: usize, op: StoreOpId, outcome: StoreOutcome) {
        self.process_mut(p).in_flight_write = None;
        let locked = matches!(outcome, StoreOutcome::Locked(_));
        let event = match outcome {
            StoreOutcome::Loaded(blob) | StoreOutcome::Locked(blob) => {
                let unix_now = wall_at(self.now);
                match blob.map(|b| StoredSession::decode(b.expose_secret().as_bytes())) {
                    Some(Err(error)) => Event::StoreFailed { op, error: StoreError::Corrupt(error) },
                    Some(Ok(stored)) if locked => Event::StoreLocked { op, stored: Some(stored), unix_now },
                    None if locked => Event::StoreLocked { op, stored: None, unix_now },
                    Some(Ok(stored)) => Event::StoreLoaded { op, stored: Some(stored), unix_now },
                    None => Event::StoreLoaded { op, stored: None, unix_now },
                }
            }
            StoreOutcome::Written { write } => {
                self.apply(write);
                Event::StoreWritten { op }
            }
            StoreOutcome::Failed { landed } => {
                if let Some(write) = landed {
                    self.apply(write);
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
            let next_store_answer = self
                .queue
                .iter()
                .find(|(_, pending)| matches!(pending, Pending::StoreDone { .. }))
                .map(|((at, _), _)| *at);
            match next_store_answer {
                Some(at) => self.run_until(at),
                None => break,
            }
        }
    }
}
