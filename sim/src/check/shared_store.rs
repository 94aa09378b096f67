//! C1 and C2 across the processes that share one store.

use super::*;

/// Checks C1 and C2 across processes that share one store (and so one token
/// family): at most one refresh in flight among them, on the world's clock
/// (a process's own requests too: its clock may jump ahead of a request it
/// still has out), and no process presents
/// a refresh token whose successor another process already wrote to the
/// store. Each process keeps its own [`ClientMonitor`] for the rest; feed this
/// one the same events and commands, named by process, on one clock.
///
/// A database can take the lock from a worker that lives on and believes it
/// holds it ([`SharedStoreMonitor::lock_lost`]); then two workers may refresh
/// at once, by design of every lock with a bound. Refreshes sent by such a
/// worker, or overlapping one it sent, are counted
/// ([`SharedStoreMonitor::lock_loss_overlaps`]) instead of reported; fencing
/// (F1) and the logout rules judge what they cost.
#[derive(Debug)]
pub struct SharedStoreMonitor {
    request_timeout: Duration,
    /// Each refresh in flight: when it was sent, its token, and whether its
    /// sender had lost the lock (then or since).
    in_flight: BTreeMap<(usize, RefreshId), (MonoTime, Fingerprint, bool)>,
    /// Processes whose lock a database released while they believed they held it.
    lockless: BTreeSet<usize>,
    lock_loss_overlaps: u64,
    /// The tokens each rotated token was answered for: once it is written,
    /// they are superseded durably.
    predecessors_of: BTreeMap<Fingerprint, BTreeSet<Fingerprint>>,
    pending_writes: BTreeMap<(usize, StoreOpId), Fingerprint>,
    durably_superseded: BTreeSet<Fingerprint>,
    /// What a send broke (and whether a lost lock excused it), judged when
    /// the machine sent it and counted once the request went out: a driver
    /// that refuses to send it (`NotSent`: an earlier request of its own is
    /// still out) put nothing on the wire.
    judged_sends: BTreeMap<(usize, RefreshId), Vec<(bool, Violation)>>,
    violations: Vec<Violation>,
}

impl SharedStoreMonitor {
    /// A monitor for processes whose sessions use `config`.
    pub fn new(config: &SessionConfig) -> Self {
        Self {
            request_timeout: config.request_timeout,
            in_flight: BTreeMap::new(),
            lockless: BTreeSet::new(),
            lock_loss_overlaps: 0,
            predecessors_of: BTreeMap::new(),
            pending_writes: BTreeMap::new(),
            durably_superseded: BTreeSet::new(),
            judged_sends: BTreeMap::new(),
            violations: Vec::new(),
        }
    }

    /// Violations found so far (with those of sends whose fate is not known yet).
    pub fn violations(&self) -> Vec<Violation> {
        let judged = self.judged_sends.values().flatten();
        let pending = judged.filter(|(excused, _)| !excused).map(|(_, violation)| violation);
        self.violations.iter().chain(pending).cloned().collect()
    }

    /// `process` died: its requests can no longer be acted on by it, and its
    /// pending writes land or not without telling anyone.
    pub fn crash(&mut self, process: usize) {
        self.lockless.remove(&process);
        self.in_flight.retain(|(p, _), _| *p != process);
        self.pending_writes.retain(|(p, _), _| *p != process);
    }

    /// The database released `process`'s lock while it lives on believing it
    /// holds it, until it next unlocks or locks.
    pub fn lock_lost(&mut self, process: usize) {
        self.lockless.insert(process);
        for (_, (_, _, lockless)) in self.in_flight.iter_mut().filter(|((p, _), _)| *p == process) {
            *lockless = true;
        }
    }

    /// A refresh broke `invariant`: a violation, unless a lost lock
    /// `excused` it (the process could not know), then counted as an overlap.
    fn flag(&mut self, excused: bool, violation: Violation) {
        if excused {
            self.lock_loss_overlaps += 1;
        } else {
            self.violations.push(violation);
        }
    }

    /// Refreshes C1 or C2 would have reported but for a lost lock.
    pub fn lock_loss_overlaps(&self) -> u64 {
        let pending = self.judged_sends.values().flatten().filter(|(excused, _)| *excused).count();
        self.lock_loss_overlaps + pending as u64
    }

    /// The send of `process`'s `id` went out (`sent`) or was refused by
    /// its driver: what it broke counts, or nothing does.
    fn send_fate(&mut self, process: usize, id: RefreshId, sent: bool) {
        for (excused, violation) in self.judged_sends.remove(&(process, id)).into_iter().flatten() {
            if sent {
                self.flag(excused, violation);
            }
        }
    }

    /// An input `process` is about to handle at `now`.
    pub fn event(&mut self, process: usize, _now: MonoTime, event: &Event) {
        match event {
            Event::RefreshCompleted { id, outcome, .. } => {
                self.send_fate(process, *id, true);
                let Some((_, token, _)) = self.in_flight.remove(&(process, *id)) else { return };
                let successor = match outcome {
                    Classified::Success(response) => response.refresh_token.as_ref().map(|r| r.fingerprint()),
                    Classified::Malformed(malformed) => {
                        malformed.salvaged_refresh_token.as_ref().map(|r| r.fingerprint())
                    }
                    _ => None,
                };
                if let Some(successor) = successor.filter(|s| *s != token) {
                    self.predecessors_of.entry(successor).or_default().insert(token);
                }
            }
            Event::RefreshFailed { id, failure } => {
                self.send_fate(process, *id, *failure != TransportFailure::NotSent);
                self.in_flight.remove(&(process, *id));
            }
            // A login or a logout ends the session in that process: a refresh
            // of the grant it ended, still out, presents a token nobody will
            // use again (as for C1 within a process; an answer to it after a
            // logout is revoked).
            Event::LoggedIn { .. } | Event::LogoutRequested => self.in_flight.retain(|(p, _), _| *p != process),
            Event::StoreWritten { op } => {
                if let Some(predecessors) =
                    self.pending_writes.remove(&(process, *op)).and_then(|written| self.predecessors_of.get(&written))
                {
                    self.durably_superseded.extend(predecessors.iter().copied());
                }
            }
            Event::StoreFailed { op, .. } => {
                self.pending_writes.remove(&(process, *op));
            }
            _ => {}
        }
    }

    /// A command `process` produced at `now`.
    pub fn command(&mut self, process: usize, now: MonoTime, command: &Command) {
        match command {
            Command::Io(Io::SendRefresh { id, refresh_token, .. }) => {
                let token = refresh_token.fingerprint();
                let timeout = self.request_timeout;
                let lockless = self.lockless.contains(&process);
                // Its own requests count too: on this clock a request is out
                // until it is answered or the timeout has really passed, even
                // where the process's own clock jumped ahead of it (a wall
                // clock stepped forward reads as a suspend).
                // One that no lost lock excuses, if there is one.
                let other = self
                    .in_flight
                    .iter()
                    .filter(|(_, (at, _, _))| now < at.saturating_add(timeout))
                    .min_by_key(|(_, (_, _, other_lockless))| *other_lockless)
                    .map(|((p, other), (_, _, other_lockless))| (*p, *other, *other_lockless));
                let mut judged = Vec::new();
                if let Some((p, other, other_lockless)) = other {
                    let detail = format!("process {process} sent {id} while process {p}'s {other} was in flight");
                    judged.push((lockless || other_lockless, Violation { invariant: Invariant::C1, at: now, detail }));
                }
                if self.durably_superseded.contains(&token) {
                    let detail = format!("process {process} sent {id} with {token}, whose successor the store held");
                    judged.push((lockless, Violation { invariant: Invariant::C2, at: now, detail }));
                }
                if !judged.is_empty() {
                    self.judged_sends.insert((process, *id), judged);
                }
                self.in_flight.insert((process, *id), (now, token, lockless));
            }
            Command::Io(Io::LockStore { .. } | Io::UnlockStore) => {
                self.lockless.remove(&process);
            }
            Command::Io(Io::Persist { op, session }) => {
                if let Some(token) = &session.refresh_token {
                    self.pending_writes.insert((process, *op), token.fingerprint());
                }
            }
            _ => {}
        }
    }
}
