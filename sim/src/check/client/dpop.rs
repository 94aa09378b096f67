//! The DPoP checks of [`ClientMonitor`]: a nonce challenge is answered at
//! once by the same attempt with the server's nonce (D2), and no request
//! proves a key the store does not hold yet (D3). D1, the binding itself,
//! is checked where the server sees it ([`AuthorityMonitor`](crate::check::AuthorityMonitor)).

use std::hash::{DefaultHasher, Hash as _, Hasher as _};

use freshen_core::dpop::{DpopKey, DpopNonce, MAX_NONCE_RETRIES};

use super::*;

/// A key's identity for these checks: a 64-bit hash of its secret scalar
/// (two of a world's few hundred keys share one with odds near 10^-15). Its
/// thumbprint would cost a scalar multiplication for every key decoded from
/// a read of the store (a quarter of tier 1's time), and a SHA-256 of the
/// scalar cost 2 % of it.
type KeyId = u64;

fn key_id(key: &DpopKey) -> KeyId {
    // `new` has fixed keys: the same scalar gets the same id in every run.
    let mut hasher = DefaultHasher::new();
    key.expose_secret_bytes().hash(&mut hasher);
    hasher.finish()
}

/// One process's DPoP facts.
#[derive(Debug, Default)]
pub(super) struct DpopMonitor {
    /// Keys the store holds, as this process wrote or read it.
    durable_keys: BTreeSet<KeyId>,
    /// Writes in flight, with the key each carries.
    writing: BTreeMap<StoreOpId, Option<KeyId>>,
    /// The latest attempt sent, if it carried a proof.
    last_bound: Option<BoundAttempt>,
    /// A challenge the machine must answer before its step ends.
    owed: Option<BoundAttempt>,
    /// The process let go of the store's lock (a fenced write takes it
    /// away) and has not taken it again: an attempt still out is answered
    /// only under a new lock, so its challenge is owed no retry at once.
    unlocked: bool,
}

#[derive(Clone, Debug)]
struct BoundAttempt {
    id: RefreshId,
    token: Fingerprint,
    attempt: u32,
    at: MonoTime,
    /// The nonce it carried (for an owed retry: the one it must carry).
    nonce: Option<DpopNonce>,
    /// Challenges answered in a row by sending it again.
    retries: u32,
}

impl DpopMonitor {
    /// After a crash: what the store holds stays; what was in flight is gone.
    pub(super) fn crash(&mut self) {
        self.writing.clear();
        self.last_bound = None;
        self.owed = None;
        self.unlocked = false;
    }

    pub(super) fn event(&mut self, now: MonoTime, event: &Event, refreshing: bool, timeout: Duration) {
        match event {
            Event::StoreLoaded { stored, .. } | Event::StoreLocked { stored, .. } => {
                if matches!(event, Event::StoreLocked { .. }) {
                    // A lock taken while an attempt is out (the one before it
                    // lost): what is read under it decides the next attempt,
                    // so the one out is owed no retry at once.
                    self.unlocked = false;
                    self.last_bound = None;
                }
                if let Some(key) = stored.as_ref().and_then(|stored| stored.dpop_key.as_ref()) {
                    self.durable_keys.insert(key_id(key));
                }
            }
            Event::StoreWritten { op } => {
                if let Some(Some(key)) = self.writing.remove(op) {
                    self.durable_keys.insert(key);
                }
            }
            Event::StoreFailed { op, .. } => {
                self.writing.remove(op);
            }
            Event::RefreshCompleted { id, outcome: Classified::NonceRequired(_), dpop_nonce: Some(nonce) } => {
                // Owed only for the attempt in flight: the latest, bound,
                // before its deadline, while a cycle runs, within the bound
                // on challenges in a row.
                let in_flight = self.last_bound.as_ref().filter(|sent| {
                    sent.id == *id && now < sent.at.saturating_add(timeout) && sent.retries < MAX_NONCE_RETRIES
                });
                if let Some(sent) = in_flight.filter(|_| refreshing && !self.unlocked) {
                    self.owed = Some(BoundAttempt { nonce: Some(nonce.clone()), ..sent.clone() });
                }
            }
            _ => {}
        }
    }

    pub(super) fn command(&mut self, now: MonoTime, command: &Command, violations: &mut Vec<Violation>) {
        match command {
            Command::Io(Io::Persist { op, session }) => {
                self.writing.insert(*op, session.dpop_key.as_ref().map(key_id));
            }
            Command::Io(Io::UnlockStore) => self.unlocked = true,
            Command::Io(Io::SendRefresh { id, refresh_token, attempt, dpop }) => {
                let token = refresh_token.fingerprint();
                let owed = self.owed.take();
                let Some(proof) = dpop else {
                    self.last_bound = None;
                    if owed.is_some() {
                        violations.push(d2(now, "the nonce retry carried no proof".into()));
                    }
                    return;
                };
                if !self.durable_keys.contains(&key_id(&proof.key)) {
                    let detail =
                        format!("{id} proves a key the store does not hold yet (jkt {})", proof.key.thumbprint());
                    violations.push(Violation { invariant: Invariant::D3, at: now, detail });
                }
                let retries = match &owed {
                    Some(owed) => {
                        let same = owed.token == token && owed.attempt == *attempt && owed.nonce == proof.nonce;
                        if !same {
                            let detail = format!(
                                "{id} answered the nonce challenge to {} as attempt {attempt} (owed {}), nonce {}",
                                owed.id,
                                owed.attempt,
                                if proof.nonce == owed.nonce { "kept" } else { "not the server's" }
                            );
                            violations.push(d2(now, detail));
                        }
                        owed.retries + 1
                    }
                    None => 0,
                };
                let nonce = proof.nonce.clone();
                self.last_bound = Some(BoundAttempt { id: *id, token, attempt: *attempt, at: now, nonce, retries });
            }
            _ => {}
        }
    }

    /// A challenge owed a retry in the step that read it.
    pub(super) fn step_end(&mut self, now: MonoTime, violations: &mut Vec<Violation>) {
        if let Some(owed) = self.owed.take() {
            violations.push(d2(now, format!("the nonce challenge to {} was not answered at once", owed.id)));
        }
    }
}

fn d2(at: MonoTime, detail: String) -> Violation {
    Violation { invariant: Invariant::D2, at, detail }
}
