//! The invariant checker: named properties over a recorded run.
//!
//! [`ClientMonitor`] watches one session's inputs and outputs and checks C1–C9;
//! [`AuthorityMonitor`] watches the authority's audit and checks A1–A6. Each
//! keeps its own small model of what must be true (which tokens were superseded,
//! which generations are durable, who waits) rather than trusting the code it
//! checks. The proptest suites, the simulation and the fuzzers all use these,
//! and each check has a test proving it reports a planted violation.

use core::fmt;
use core::time::Duration;
use std::collections::{BTreeMap, BTreeSet};

pub use crate::authority::AuthorityPlant;
use crate::authority::{Audit, AuditOp, AuditOutcome, AuthorityConfig, FamilyId, Refusal};
use freshen_core::ids::{CallerId, Generation, RefreshId, StoreOpId};
use freshen_core::oauth::{Classified, Transient, TransientCause};
pub use freshen_core::session::Plant;
use freshen_core::session::{Command, Event, FailReason, LogoutCause, SessionConfig, StateView};
use freshen_core::stored::StoredSession;
use freshen_core::time::{MonoTime, UnixTime};
use freshen_core::token::{Fingerprint, RefreshToken};

/// A named invariant from DESIGN.md.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Invariant {
    /// At most one refresh in flight per session.
    C1,
    /// A refresh token is never sent again once its successor was received.
    C2,
    /// Tokens are durable before they are handed out; a rotated token is never dropped.
    C3,
    /// Logged out is terminal until a login: nothing granted, nothing sent, store cleared.
    C4,
    /// Every waiter is answered within the configured bound.
    C5,
    /// Transient failures back off within bounded attempts; terminal ones log out.
    C6,
    /// No token is handed out past its usable time (and none used past expiry).
    C7,
    /// The same seed and inputs give the same trace.
    C8,
    /// No panic and no busy loop, whatever the input.
    C9,
    /// A consumed refresh token outside grace is never accepted; its presentation revokes the family.
    A1,
    /// A replay inside grace is accepted within its count.
    A2,
    /// Revocation is terminal for the family.
    A3,
    /// Without grace, at most one redemption of a token succeeds.
    A4,
    /// Tokens are accepted only from their client and device, never past expiry.
    A5,
    /// A rejected request changes nothing.
    A6,
    /// A session is never logged out by its own races: when the server's
    /// grace covers a whole retry cycle (and enough replays), a lost answer
    /// alone does not end it.
    L1,
    /// Every logout has a cause the world produced: expiry, revocation, a
    /// lost answer, or a crash (or the user asked).
    L2,
    /// The state is never behind an answer: a caller is told only what the
    /// state already shows (logged out when failed as logged out; a usable
    /// token, Valid or Refreshing, when granted).
    U1,
    /// The refresh window is the user's: an access token that came from the
    /// store (or a login) with its refresh margin or less left is refreshed
    /// before it is handed out. The margin shrinks only for a token issued
    /// for no longer than the margin.
    U2,
    /// A failure is not cached: a caller is failed as "refresh unavailable"
    /// only by a refresh cycle that ran after it arrived, unless the server
    /// asked to wait (`Retry-After`) or the app configured a cooldown.
    U3,
    /// A session without a refresh token tells its callers so at once, with
    /// no request and no waiting, once its access token is spent.
    U4,
    /// A forced refresh hands its caller a token the session learned after
    /// the caller asked (never the one it held), and forced refreshes are
    /// chained: with C1 and C2, no refresh token is presented twice.
    U5,
    /// Error classes users can act on: a request for the user's interaction
    /// is not retried on its own (the refresh token it refused is presented
    /// again only after a forced refresh or a login), and no refusal but a
    /// terminal one (by the policy, `invalid_grant`) logs the session out.
    U6,
    /// The state tells why callers were failed: when a refresh cycle ended
    /// in an outage, a misconfiguration or a request for the user's
    /// interaction, or there is no refresh token, the state the session
    /// settles in (holding tokens, no refresh running) says which.
    U7,
    /// A token the server has already killed is never handed out: a retry
    /// after a 401 that nothing raced gets a token that is neither expired nor
    /// deleted by a refresh (the world checks it against the authority), and
    /// a refreshed token's lifetime counts from the first attempt that
    /// presented its refresh token (a grace replay may carry the original).
    U8,
    /// Logging in is awaitable: a login is told it is stored only once the
    /// store holds its tokens (or newer ones), so a crash after the answer
    /// cannot lose it; it is answered within the wait bound (C5), also when
    /// it came while the store was still being read.
    U9,
}

impl fmt::Display for Invariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A broken invariant: which, when, and a description without token bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The invariant.
    pub invariant: Invariant,
    /// When it was observed.
    pub at: MonoTime,
    /// What happened.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} violated at {}: {}", self.invariant, self.at, self.detail)
    }
}

/// Where a store is known to be, for C3 and C4.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StoreModel {
    Unknown,
    Empty,
    Holds(Generation),
}

#[derive(Clone, Copy, Debug)]
enum PendingStore {
    Load,
    Persist(Generation),
    Clear,
}

#[derive(Clone, Debug)]
struct Sent {
    token: Fingerprint,
    at: MonoTime,
    attempt: u32,
    /// When its answer came, and whether that answer asked for a pause.
    answered: Option<(MonoTime, Answer)>,
    /// Its answer says what the server issued for it: nothing (a refusal, a
    /// 429, a request never sent) or what the answer carried. A later grace
    /// replay can only carry tokens issued for an attempt not settled.
    settled: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    Transient { retry_after: Option<Duration> },
    Terminal,
    Other,
}

/// Checks C1–C7 and C9 over one session's events and commands. Feed it every
/// event with [`ClientMonitor::event`], every command with
/// [`ClientMonitor::command`], close each step with [`ClientMonitor::step_end`]
/// and the run with [`ClientMonitor::finish`]. C8 is checked by replaying a run
/// ([`same_trace`]).
#[derive(Debug)]
pub struct ClientMonitor {
    config: SessionConfig,
    sent: BTreeMap<RefreshId, Sent>,
    superseded: BTreeSet<Fingerprint>,
    /// Superseded tokens whose successor reached the store: they stay
    /// superseded across a crash.
    durably_superseded: BTreeSet<Fingerprint>,
    /// Successors received per token, to mark durability when they are written.
    successor_of: BTreeMap<Fingerprint, BTreeSet<Fingerprint>>,
    dead: BTreeSet<Fingerprint>,
    awaiting_logout: Option<MonoTime>,
    durable: BTreeSet<Generation>,
    pending_store: BTreeMap<StoreOpId, (PendingStore, Option<Fingerprint>)>,
    store: StoreModel,
    /// Store operations failed in a row, and when the last one failed.
    store_failures: (u32, MonoTime),
    waiting: BTreeMap<CallerId, MonoTime>,
    logged_out: Option<LogoutCause>,
    /// The state the session last reported.
    state: StateView,
    /// Callers that arrived while no refresh cycle ran, and none has started
    /// since: failing one of them as "unavailable" repeats an old failure.
    unserved_since_arrival: BTreeSet<CallerId>,
    /// Until when a failure may be repeated without a new cycle: the server's
    /// `Retry-After`, or the configured cooldown after a failed cycle.
    failure_excused_until: MonoTime,
    /// Access tokens adopted inside their refresh margin: never to be handed out (U2).
    inside_margin: BTreeSet<Fingerprint>,
    /// Access tokens this life of the session has seen (from a refresh, a
    /// login or the store): U2 judges a token when it first comes from the
    /// store; reading it back later (under a shared store's lock) adopts nothing.
    seen_access: BTreeMap<Fingerprint, MonoTime>,
    /// Callers that forced a refresh, and when they asked.
    forced: BTreeMap<CallerId, MonoTime>,
    /// Callers that asked while the store was being read or written: the
    /// session could not yet know whether it holds a refresh token, so U4
    /// lets them wait for the answer.
    asked_before_known: BTreeSet<CallerId>,
    /// Per refresh token the server kept (answered without rotating), when:
    /// presentations before it cannot be replayed by a later rotation.
    kept_since: BTreeMap<Fingerprint, MonoTime>,
    /// The latest each access token learned from a refresh may be used
    /// (its issued lifetime counted from the first presentation of its
    /// refresh token that may have committed), for U8.
    usable_at_most: BTreeMap<Fingerprint, MonoTime>,
    /// Callers retrying after a 401: while a refresh is out, it may kill the
    /// token they would be handed (U8).
    retrying: BTreeSet<CallerId>,
    /// Refresh tokens the server refused pending the user's interaction (U6),
    /// with the generation the session held then: tokens adopted later (a
    /// login, or a newer generation from the store) start afresh.
    awaits_user: BTreeMap<Fingerprint, Generation>,
    /// Why callers were failed in this step, when the state must say it (U7).
    told_this_step: Option<FailReason>,
    /// Callers waiting for their login to be stored, with the newest
    /// generation seen before it: the login's tokens are newer (U9).
    logins: BTreeMap<CallerId, Generation>,
    /// The newest generation the session showed or wrote.
    newest_generation: Generation,
    violations: Vec<Violation>,
}

impl ClientMonitor {
    /// A monitor for a session with `config`.
    pub fn new(config: &SessionConfig) -> Self {
        Self {
            config: config.clone(),
            sent: BTreeMap::new(),
            superseded: BTreeSet::new(),
            durably_superseded: BTreeSet::new(),
            successor_of: BTreeMap::new(),
            dead: BTreeSet::new(),
            awaiting_logout: None,
            durable: BTreeSet::new(),
            pending_store: BTreeMap::new(),
            store: StoreModel::Unknown,
            store_failures: (0, MonoTime::ZERO),
            waiting: BTreeMap::new(),
            logged_out: None,
            state: StateView::Loading,
            unserved_since_arrival: BTreeSet::new(),
            failure_excused_until: MonoTime::ZERO,
            inside_margin: BTreeSet::new(),
            seen_access: BTreeMap::new(),
            forced: BTreeMap::new(),
            asked_before_known: BTreeSet::new(),
            kept_since: BTreeMap::new(),
            usable_at_most: BTreeMap::new(),
            retrying: BTreeSet::new(),
            awaits_user: BTreeMap::new(),
            told_this_step: None,
            logins: BTreeMap::new(),
            newest_generation: Generation(0),
            violations: Vec::new(),
        }
    }

    /// Violations found so far.
    pub fn violations(&self) -> &[Violation] {
        &self.violations
    }

    fn violate(&mut self, invariant: Invariant, at: MonoTime, detail: String) {
        self.violations.push(Violation { invariant, at, detail });
    }

    /// The process crashed: what it held in memory is gone; the store and the
    /// tokens it made durable remain. Its successor starts a fresh session.
    pub fn crash(&mut self) {
        self.sent.clear();
        self.superseded = self.durably_superseded.clone();
        self.pending_store.clear();
        self.waiting.clear();
        self.logged_out = None;
        self.awaiting_logout = None;
        self.successor_of.clear();
        // What the old process learned of dead tokens died with it; its
        // successor may present the stored token once more.
        self.dead.clear();
        self.store = StoreModel::Unknown;
        self.state = StateView::Loading;
        self.unserved_since_arrival.clear();
        self.seen_access.clear();
        self.forced.clear();
        self.asked_before_known.clear();
        self.kept_since.clear();
        self.usable_at_most.clear();
        self.retrying.clear();
        self.awaits_user.clear();
        self.told_this_step = None;
        self.logins.clear();
        // Its successor numbers generations from what it reads.
        self.newest_generation = Generation(0);
    }

    /// An input the session is about to handle at `now`.
    pub fn event(&mut self, now: MonoTime, event: &Event) {
        match event {
            Event::RefreshWanted { caller } => {
                self.awaits_user.clear();
                self.forced.insert(*caller, now);
                self.waiting.entry(*caller).or_insert(now);
                self.note_if_unknowing(*caller);
                self.unserved_since_arrival.insert(*caller);
            }
            Event::Invalidated { .. } => {}
            Event::TokenWanted { caller } | Event::Unauthorized { caller, .. } => {
                self.waiting.entry(*caller).or_insert(now);
                if matches!(event, Event::Unauthorized { .. }) {
                    self.retrying.insert(*caller);
                }
                self.note_if_unknowing(*caller);
                if !matches!(self.state, StateView::Refreshing { .. }) {
                    self.unserved_since_arrival.insert(*caller);
                }
            }
            Event::RefreshCompleted { id, outcome } => self.refresh_answered(now, *id, outcome),
            Event::RefreshFailed { id, failure } => {
                if let Some(sent) = self.sent.get_mut(id) {
                    if sent.answered.is_none() {
                        sent.settled = !failure.outcome_unknown();
                    }
                    sent.answered.get_or_insert((now, Answer::Transient { retry_after: None }));
                }
            }
            Event::StoreLoaded { op, stored, unix_now } | Event::StoreLocked { op, stored, unix_now } => {
                if self.pending_store.remove(op).is_some() {
                    self.store_failures = (0, now);
                    self.store = match stored {
                        Some(stored) => {
                            self.durable.insert(stored.generation);
                            self.awaits_user.retain(|_, held| *held >= stored.generation);
                            // A live token another process stored may replace a
                            // rejected one: the rejection no longer demands a logout.
                            if let Some(token) = stored.refresh_token.as_ref().map(RefreshToken::fingerprint) {
                                let fresh = !self.dead.contains(&token) && !self.superseded.contains(&token);
                                if fresh && self.latest_token() != Some(token) {
                                    self.awaiting_logout = None;
                                }
                            }
                            self.note_refresh_first(stored, *unix_now, now);
                            StoreModel::Holds(stored.generation)
                        }
                        None => StoreModel::Empty,
                    };
                }
            }
            Event::StoreWritten { op } => match self.pending_store.remove(op) {
                Some((PendingStore::Persist(generation), refresh)) => {
                    self.store_failures = (0, now);
                    self.durable.insert(generation);
                    self.store = StoreModel::Holds(generation);
                    if let Some(refresh) = refresh {
                        let predecessors: Vec<_> = self
                            .successor_of
                            .iter()
                            .filter(|(_, successors)| successors.contains(&refresh))
                            .map(|(old, _)| *old)
                            .collect();
                        self.durably_superseded.extend(predecessors);
                    }
                }
                Some((PendingStore::Clear, _)) => {
                    self.store_failures = (0, now);
                    self.store = StoreModel::Empty;
                }
                Some((PendingStore::Load, _)) | None => {}
            },
            Event::StoreFailed { op, .. } => {
                if let Some((kind, _)) = self.pending_store.remove(op) {
                    self.store_failures = (self.store_failures.0 + 1, now);
                    if !matches!(kind, PendingStore::Load) {
                        self.store = StoreModel::Unknown;
                    }
                }
            }
            Event::LoggedIn { caller, session: new } => {
                self.waiting.entry(*caller).or_insert(now);
                self.logins.insert(*caller, self.newest_generation);
                if let Some(access) = &new.access_token {
                    self.seen_access.entry(access.fingerprint()).or_insert(now);
                }
                if let (Some(access), Some(lifetime), Some(_)) = (&new.access_token, new.lifetime, &new.refresh_token) {
                    let left = new.requested_at.saturating_add(lifetime).saturating_duration_since(now);
                    let issued = (!new.issued_lifetime_unknown).then_some(lifetime);
                    if left <= least_margin(&self.config, issued) {
                        self.inside_margin.insert(access.fingerprint());
                    }
                }
                // A new session: refreshes of the one it replaces are not its own (C1 is per session).
                self.sent.clear();
                self.logged_out = None;
                self.awaiting_logout = None;
            }
            Event::LogoutRequested => {}
        }
    }

    fn refresh_answered(&mut self, now: MonoTime, id: RefreshId, outcome: &Classified) {
        let Some(sent) = self.sent.get_mut(&id) else { return };
        let token = sent.token;
        let answer = match outcome {
            Classified::Transient(Transient { retry_after, .. }) => Answer::Transient { retry_after: *retry_after },
            Classified::Malformed(_) => Answer::Transient { retry_after: None },
            Classified::Terminal(_) => Answer::Terminal,
            _ => Answer::Other,
        };
        // One request gets one answer: a second one for the same id is a
        // duplicate (or nonsense), and says nothing new.
        if sent.answered.is_some() {
            return;
        }
        if let Answer::Transient { retry_after: Some(wait) } = answer {
            self.failure_excused_until = self.failure_excused_until.max(now.saturating_add(wait));
        }
        sent.answered = Some((now, answer));
        sent.settled = match outcome {
            Classified::Success(_)
            | Classified::Terminal(_)
            | Classified::Rejected(_)
            | Classified::InteractionRequired(_) => true,
            Classified::Transient(Transient { cause, .. }) => !matches!(cause, TransientCause::ServerError(_)),
            Classified::Malformed(_) => false,
        };
        let sent_at = sent.at;
        if let Classified::Success(response) = outcome {
            let access = response.access_token.fingerprint();
            self.seen_access.entry(access).or_insert(now);
            // A rotated answer may be a grace replay of what the server issued
            // an earlier presentation that may have committed (since the token
            // was last kept); an unrotated one was issued now.
            let rotated = response.refresh_token.as_ref().is_some_and(|r| r.fingerprint() != token);
            let presented = if rotated {
                let since = self.kept_since.get(&token).copied().unwrap_or(MonoTime::ZERO);
                self.sent
                    .values()
                    .filter(|s| s.token == token && s.at >= since && !s.settled)
                    .map(|s| s.at)
                    .fold(sent_at, MonoTime::min)
            } else {
                self.kept_since.insert(token, now);
                sent_at
            };
            if let Some(lifetime) = response.lifetime {
                // The session keeps the first answer that carried these
                // bytes; a straggler's copy of them changes nothing.
                self.usable_at_most.entry(access).or_insert(presented.saturating_add(lifetime));
            }
        }
        let successor = match outcome {
            Classified::Success(response) => response.refresh_token.as_ref().map(|r| r.fingerprint()),
            Classified::Malformed(malformed) => malformed.salvaged_refresh_token.as_ref().map(|r| r.fingerprint()),
            _ => None,
        };
        if let Some(successor) = successor.filter(|s| *s != token) {
            self.superseded.insert(token);
            self.successor_of.entry(token).or_default().insert(successor);
        }
        match outcome {
            Classified::InteractionRequired(_) => {
                let held = self.state.generation().unwrap_or(Generation(0));
                self.awaits_user.insert(token, held);
            }
            // The server's later word on the token replaces the request.
            Classified::Success(_) | Classified::Rejected(_) | Classified::Terminal(_) => {
                self.awaits_user.remove(&token);
            }
            _ => {}
        }
        if answer == Answer::Terminal {
            self.dead.insert(token);
            // The session must act on it if the rejected token is still the one it holds.
            let held = self.latest_token() == Some(token) && !self.superseded.contains(&token);
            if held && self.logged_out.is_none() {
                self.awaiting_logout.get_or_insert(now);
            }
        }
        if matches!(outcome, Classified::Success(_)) {
            self.awaiting_logout = None;
        }
    }

    fn latest_token(&self) -> Option<Fingerprint> {
        self.sent.values().next_back().map(|s| s.token)
    }

    /// An output the session produced while handling an input at `now`.
    pub fn command(&mut self, now: MonoTime, command: &Command) {
        match command {
            Command::SendRefresh { id, refresh_token, attempt } => {
                self.refresh_sent(now, *id, refresh_token.fingerprint(), *attempt);
            }
            Command::Persist { op, session } => {
                self.newest_generation = self.newest_generation.max(session.generation);
                let token = session.refresh_token.as_ref().map(RefreshToken::fingerprint);
                if self.logged_out.as_ref().is_some_and(LogoutCause::clears_store) {
                    self.violate(Invariant::C4, now, format!("persisted {} after logout", session.generation));
                }
                if let Some(token) = token.filter(|t| self.superseded.contains(t)) {
                    self.violate(Invariant::C3, now, format!("persisted superseded refresh token {token}"));
                }
                self.pending_store.insert(*op, (PendingStore::Persist(session.generation), token));
            }
            Command::ClearStore { op } => {
                self.pending_store.insert(*op, (PendingStore::Clear, None));
            }
            Command::LoadStore { op } => {
                self.pending_store.insert(*op, (PendingStore::Load, None));
            }
            Command::LockStore { op } => {
                // A shared store's cycle starts by taking its lock.
                self.unserved_since_arrival.clear();
                self.pending_store.insert(*op, (PendingStore::Load, None));
            }
            Command::Publish(Some(grant)) | Command::Grant { grant, .. } => {
                let access = grant.access_token.fingerprint();
                if self.inside_margin.contains(&access) {
                    let detail = format!("handed out {}, adopted inside its refresh margin", grant.generation);
                    self.violate(Invariant::U2, now, detail);
                }
                self.seen_access.entry(access).or_insert(now);
                if let (Some(until), Some(at_most)) = (grant.usable_until, self.usable_at_most.get(&access))
                    && until > *at_most
                {
                    let detail = format!(
                        "{} is held usable until {until}, past the first presentation of its refresh token plus its lifetime ({at_most})",
                        grant.generation
                    );
                    self.violate(Invariant::U8, now, detail);
                }
                if let Command::Grant { callers, .. } = command {
                    let timeout = self.config.request_timeout;
                    let in_flight =
                        self.sent.iter().find(|(_, s)| s.answered.is_none() && now < s.at.saturating_add(timeout));
                    if let (Some(caller), Some((id, _))) =
                        (callers.iter().find(|c| self.retrying.contains(c)), in_flight)
                    {
                        let detail = format!(
                            "{caller}'s retry after a 401 got {} while {id}, which may kill it, was out",
                            grant.generation
                        );
                        self.violate(Invariant::U8, now, detail);
                    }
                    let learned = self.seen_access.get(&access).copied().unwrap_or(now);
                    if let Some(caller) =
                        callers.iter().find(|c| self.forced.get(c).is_some_and(|asked| learned < *asked))
                    {
                        let detail = format!(
                            "forced refresh by {caller} answered with {}, held before it asked",
                            grant.generation
                        );
                        self.violate(Invariant::U5, now, detail);
                    }
                }
                if !self.durable.contains(&grant.generation) {
                    self.violate(
                        Invariant::C3,
                        now,
                        format!("handed out {} before the store held it", grant.generation),
                    );
                }
                if self.logged_out.is_some() {
                    self.violate(Invariant::C4, now, format!("handed out {} while logged out", grant.generation));
                }
                if matches!(command, Command::Grant { .. }) && !grant.usable_at(now) {
                    self.violate(Invariant::C7, now, format!("granted {} past its usable time", grant.generation));
                }
                if let Command::Grant { callers, .. } = command {
                    if !matches!(self.state, StateView::Valid { .. } | StateView::Refreshing { .. }) {
                        let detail = format!("granted {} while the state still read {}", grant.generation, self.state);
                        self.violate(Invariant::U1, now, detail);
                    }
                    self.resolve(now, callers, "granted");
                }
            }
            Command::LoginStored { callers, generation } => {
                for caller in callers {
                    let before = self.logins.remove(caller);
                    if !self.durable.contains(generation) || before.is_some_and(|before| *generation <= before) {
                        let detail = format!("told {caller} its login is stored, but the store does not hold it yet");
                        self.violate(Invariant::U9, now, detail);
                    }
                }
                self.resolve(now, callers, "told stored");
            }
            Command::Fail { callers, reason } => {
                if *reason == FailReason::MissingRefreshToken
                    && let Some(caller) = callers.iter().find(|c| {
                        !self.asked_before_known.contains(c) && self.waiting.get(c).is_some_and(|since| *since < now)
                    })
                {
                    let detail = format!("{caller} waited to be told the session has no refresh token");
                    self.violate(Invariant::U4, now, detail);
                }
                if matches!(
                    reason,
                    FailReason::RefreshUnavailable(_)
                        | FailReason::Rejected(_)
                        | FailReason::InteractionRequired(_)
                        | FailReason::MissingRefreshToken
                ) {
                    self.told_this_step = Some(reason.clone());
                }
                if let FailReason::RefreshUnavailable(_) = reason {
                    self.check_not_cached(now, callers);
                    let cooldown = self.config.failure_cooldown;
                    self.failure_excused_until = self.failure_excused_until.max(now.saturating_add(cooldown));
                }
                if let FailReason::LoggedOut(cause) = reason {
                    let shown = match &self.state {
                        StateView::LoggedOut { cause } => Some(cause),
                        StateView::NoSession => Some(&LogoutCause::NoSession),
                        _ => None,
                    };
                    if shown != Some(cause) {
                        let detail = format!("failed callers as logged out while the state still read {}", self.state);
                        self.violate(Invariant::U1, now, detail);
                    }
                }
                self.resolve(now, callers, "failed");
            }
            Command::StateChanged(view) => {
                if let Some(generation) = view.generation() {
                    self.newest_generation = self.newest_generation.max(generation);
                }
                if matches!(view, StateView::Refreshing { .. }) {
                    self.unserved_since_arrival.clear();
                }
                if matches!(view, StateView::NoSession) {
                    self.logged_out = Some(LogoutCause::NoSession);
                }
                if let StateView::LoggedOut { cause } = view {
                    if let LogoutCause::RefreshTokenRejected { error, .. } = cause
                        && !self.config.policy.terminal_errors.contains(&error.code)
                    {
                        let detail = format!("logged out on a refusal that is not terminal: {error}");
                        self.violate(Invariant::U6, now, detail);
                    }
                    self.logged_out = Some(cause.clone());
                    self.awaiting_logout = None;
                }
                self.state = view.clone();
            }
            Command::Publish(None) | Command::Revoke { .. } | Command::UnlockStore => {}
        }
    }

    fn refresh_sent(&mut self, now: MonoTime, id: RefreshId, token: Fingerprint, attempt: u32) {
        self.unserved_since_arrival.clear();
        let timeout = self.config.request_timeout;
        if let Some((other, _)) =
            self.sent.iter().find(|(_, s)| s.answered.is_none() && now < s.at.saturating_add(timeout))
        {
            let other = *other;
            self.violate(Invariant::C1, now, format!("sent {id} while {other} was in flight"));
        }
        if self.superseded.contains(&token) {
            self.violate(Invariant::C2, now, format!("{id} presented {token}, whose successor was received"));
        }
        if self.dead.contains(&token) {
            self.violate(Invariant::C6, now, format!("{id} presented {token}, which was declared dead"));
        }
        // A forced refresh is the app's word that the user acted (or that it
        // wants to try once more): it may present the token again.
        if self.awaits_user.contains_key(&token) && self.forced.is_empty() {
            self.violate(
                Invariant::U6,
                now,
                format!("{id} presented {token} again, which awaits the user's interaction"),
            );
        }
        // A forced refresh lifts the request: what follows is up to the server.
        if !self.forced.is_empty() {
            self.awaits_user.remove(&token);
        }
        if self.logged_out.is_some() {
            self.violate(Invariant::C4, now, format!("sent {id} while logged out"));
        }
        // One extra attempt is allowed after a token is salvaged or adopted from the store.
        if attempt > self.config.backoff.attempts + 1 {
            self.violate(Invariant::C6, now, format!("{id} is attempt {attempt}, above the bound"));
        }
        if let Some(previous) = self.sent.values().next_back().filter(|_| attempt > 1) {
            // An attempt fails at its answer or at its deadline, whichever comes first.
            let deadline = previous.at.saturating_add(timeout);
            let failed_at = match previous.answered {
                Some((at, Answer::Transient { retry_after })) if at < deadline => Some((at, retry_after)),
                Some((_, Answer::Transient { .. })) | None => Some((deadline, None)),
                Some(_) => None,
            };
            if let Some((failed_at, retry_after)) = failed_at.filter(|_| previous.token == token) {
                let floor = self.config.backoff.floor(previous.attempt);
                let pause = retry_after.filter(|r| *r <= self.config.max_retry_after).unwrap_or_default();
                let earliest = failed_at.saturating_add(floor.max(pause));
                if now < earliest {
                    self.violate(Invariant::C6, now, format!("{id} retried before {earliest} (backoff)"));
                }
            }
        }
        self.sent.insert(id, Sent { token, at: now, attempt, answered: None, settled: false });
    }

    /// U2: remembers a stored access token that has its refresh margin or
    /// less left (by the lifetime it was issued with) and a refresh token to
    /// renew it with: it must be refreshed before anyone gets it.
    fn note_refresh_first(&mut self, stored: &StoredSession, unix_now: UnixTime, unix_now_mono: MonoTime) {
        let (Some(access), Some(expires_at), Some(_)) =
            (&stored.access_token, stored.access_expires_at, &stored.refresh_token)
        else {
            return;
        };
        let left = expires_at.saturating_duration_since(unix_now);
        let first_sight = self.seen_access.insert(access.fingerprint(), unix_now_mono).is_none();
        if first_sight && left <= least_margin(&self.config, stored.access_lifetime) {
            self.inside_margin.insert(access.fingerprint());
        }
    }

    /// U3: callers failed as "refresh unavailable" must have had a cycle of
    /// their own, unless a server's `Retry-After` or the configured cooldown
    /// was in force.
    fn check_not_cached(&mut self, now: MonoTime, callers: &[CallerId]) {
        if now < self.failure_excused_until {
            return;
        }
        if let Some(caller) = callers.iter().find(|c| self.unserved_since_arrival.contains(c)) {
            let detail = format!("failed {caller} as unavailable without trying a refresh after it arrived");
            self.violate(Invariant::U3, now, detail);
        }
    }

    /// Notes a caller that asked before the session could know whether it
    /// holds a refresh token: while the store is read or written (U4).
    fn note_if_unknowing(&mut self, caller: CallerId) {
        if matches!(self.state, StateView::Loading) || !self.pending_store.is_empty() {
            self.asked_before_known.insert(caller);
        }
    }

    fn resolve(&mut self, now: MonoTime, callers: &[CallerId], how: &str) {
        for caller in callers {
            self.unserved_since_arrival.remove(caller);
            self.forced.remove(caller);
            self.asked_before_known.remove(caller);
            self.retrying.remove(caller);
            if self.waiting.remove(caller).is_none() {
                self.violate(Invariant::C5, now, format!("{how} {caller}, which was not waiting"));
            }
        }
    }

    /// Closes the step that handled an input at `now`; `next_timeout` is what
    /// `poll_timeout` returned after it.
    pub fn step_end(&mut self, now: MonoTime, next_timeout: Option<MonoTime>) {
        if next_timeout.is_some_and(|at| at <= now) {
            self.violate(Invariant::C9, now, "poll_timeout returned a time not after now".into());
        }
        if let (Some(reason), Some(renewal)) = (self.told_this_step.take(), self.state.renewal())
            && !renewal.explains(&reason)
        {
            let detail = format!("callers were told \"{reason}\" but the state reads {}", self.state);
            self.violate(Invariant::U7, now, detail);
        }
        if self.logged_out.is_some() && !self.waiting.is_empty() {
            let count = self.waiting.len();
            self.violate(Invariant::C4, now, format!("{count} callers still wait after logout"));
            self.waiting.clear();
        }
        self.check_clearing(now);
        let bound = self.config.wait_bound();
        let late: Vec<_> =
            self.waiting.iter().filter(|(_, since)| since.saturating_add(bound) < now).map(|(c, _)| *c).collect();
        for caller in late {
            self.waiting.remove(&caller);
            self.violate(Invariant::C5, now, format!("{caller} waited longer than {bound:?}"));
        }
    }

    /// C4: a session logged out for a cause that clears the store must be
    /// clearing it: a clear is pending, or the store is known empty, or the
    /// last store operation failed and its backoff excuses the wait.
    fn check_clearing(&mut self, now: MonoTime) {
        let clearing = self.logged_out.as_ref().is_some_and(LogoutCause::clears_store);
        if !clearing || !self.pending_store.is_empty() || self.store == StoreModel::Empty {
            return;
        }
        // After a failure the next try waits out its backoff (capped at the slowest).
        let (failures, failed_at) = self.store_failures;
        let excused = failures > 0 && now <= failed_at.saturating_add(self.config.store_backoff.ceiling(failures));
        if !excused {
            self.violate(
                Invariant::C4,
                now,
                format!("logged out but the store is {:?} and no clear is under way", self.store),
            );
            // Report once per logout.
            self.store = StoreModel::Empty;
        }
    }

    /// Ends the run at `now`. `settled` says inputs stopped long enough ago for
    /// every bound to have passed, so liveness can be judged.
    pub fn finish(&mut self, now: MonoTime, settled: bool) {
        if !settled {
            return;
        }
        if !self.waiting.is_empty() {
            let count = self.waiting.len();
            self.violate(Invariant::C5, now, format!("{count} callers never answered"));
        }
        if self.logged_out.as_ref().is_some_and(LogoutCause::clears_store) && self.store != StoreModel::Empty {
            self.violate(Invariant::C4, now, format!("logged out but the store is {:?}", self.store));
        }
        if let Some(since) = self.awaiting_logout {
            self.violate(Invariant::C6, now, format!("a terminal answer at {since} never led to a logout"));
        }
    }
}

/// The refresh margin a token issued for `lifetime` has at least (jitter only
/// adds to it): the configured one, or half the lifetime when the lifetime is
/// no longer than the margin.
fn least_margin(config: &SessionConfig, lifetime: Option<Duration>) -> Duration {
    match lifetime {
        Some(lifetime) if lifetime <= config.refresh_margin => lifetime / 2,
        _ => config.refresh_margin,
    }
}

/// Checks C1 and C2 across processes that share one store (and so one token
/// family): at most one refresh in flight among them, and no process presents
/// a refresh token whose successor another process already wrote to the
/// store. Each process keeps its own [`ClientMonitor`] for the rest; feed this
/// one the same events and commands, named by process, on one clock.
#[derive(Debug)]
pub struct SharedStoreMonitor {
    request_timeout: Duration,
    in_flight: BTreeMap<(usize, RefreshId), (MonoTime, Fingerprint)>,
    successor_of: BTreeMap<Fingerprint, BTreeSet<Fingerprint>>,
    pending_writes: BTreeMap<(usize, StoreOpId), Fingerprint>,
    durably_superseded: BTreeSet<Fingerprint>,
    violations: Vec<Violation>,
}

impl SharedStoreMonitor {
    /// A monitor for processes whose sessions use `config`.
    pub fn new(config: &SessionConfig) -> Self {
        Self {
            request_timeout: config.request_timeout,
            in_flight: BTreeMap::new(),
            successor_of: BTreeMap::new(),
            pending_writes: BTreeMap::new(),
            durably_superseded: BTreeSet::new(),
            violations: Vec::new(),
        }
    }

    /// Violations found so far.
    pub fn violations(&self) -> &[Violation] {
        &self.violations
    }

    /// `process` died: its requests can no longer be acted on by it, and its
    /// pending writes land or not without telling anyone.
    pub fn crash(&mut self, process: usize) {
        self.in_flight.retain(|(p, _), _| *p != process);
        self.pending_writes.retain(|(p, _), _| *p != process);
    }

    /// An input `process` is about to handle at `now`.
    pub fn event(&mut self, process: usize, _now: MonoTime, event: &Event) {
        match event {
            Event::RefreshCompleted { id, outcome } => {
                let Some((_, token)) = self.in_flight.remove(&(process, *id)) else { return };
                let successor = match outcome {
                    Classified::Success(response) => response.refresh_token.as_ref().map(|r| r.fingerprint()),
                    Classified::Malformed(malformed) => {
                        malformed.salvaged_refresh_token.as_ref().map(|r| r.fingerprint())
                    }
                    _ => None,
                };
                if let Some(successor) = successor.filter(|s| *s != token) {
                    self.successor_of.entry(token).or_default().insert(successor);
                }
            }
            Event::RefreshFailed { id, .. } => {
                self.in_flight.remove(&(process, *id));
            }
            // A login or a logout ends the session in that process: a refresh
            // of the grant it ended, still out, presents a token nobody will
            // use again (as for C1 within a process; an answer to it after a
            // logout is revoked).
            Event::LoggedIn { .. } | Event::LogoutRequested => self.in_flight.retain(|(p, _), _| *p != process),
            Event::StoreWritten { op } => {
                if let Some(written) = self.pending_writes.remove(&(process, *op)) {
                    let predecessors = self
                        .successor_of
                        .iter()
                        .filter(|(_, successors)| successors.contains(&written))
                        .map(|(old, _)| *old);
                    self.durably_superseded.extend(predecessors.collect::<Vec<_>>());
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
            Command::SendRefresh { id, refresh_token, .. } => {
                let token = refresh_token.fingerprint();
                let timeout = self.request_timeout;
                let other = self
                    .in_flight
                    .iter()
                    .find(|((p, _), (at, _))| *p != process && now < at.saturating_add(timeout))
                    .map(|((p, other), _)| (*p, *other));
                if let Some((p, other)) = other {
                    self.violations.push(Violation {
                        invariant: Invariant::C1,
                        at: now,
                        detail: format!("process {process} sent {id} while process {p}'s {other} was in flight"),
                    });
                }
                if self.durably_superseded.contains(&token) {
                    self.violations.push(Violation {
                        invariant: Invariant::C2,
                        at: now,
                        detail: format!("process {process} sent {id} with {token}, whose successor the store held"),
                    });
                }
                self.in_flight.insert((process, *id), (now, token));
            }
            Command::Persist { op, session } => {
                if let Some(token) = &session.refresh_token {
                    self.pending_writes.insert((process, *op), token.fingerprint());
                }
            }
            _ => {}
        }
    }
}

/// What the world knows about a logout, for the logout rules L1 and L2.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogoutEvidence {
    /// An answer the server committed was lost (dropped, mangled, or given up on).
    pub lost_answer: bool,
    /// The client crashed since its session began.
    pub crashed: bool,
    /// The client slept (a suspended laptop) since its session began: a
    /// retry cycle it was in stretched past every bound, grace included.
    pub suspended: bool,
    /// Someone revoked the grant (the user, from their account page; an admin).
    pub revoked: bool,
    /// The authority's last refusal of this client's refresh.
    pub refusal: Option<Refusal>,
}

/// Judges a logout by L1 and L2.
pub fn judge_logout(
    session: &SessionConfig,
    authority: &AuthorityConfig,
    cause: &LogoutCause,
    evidence: LogoutEvidence,
    at: MonoTime,
) -> Result<(), Violation> {
    let LogoutCause::RefreshTokenRejected { after_lost_response, .. } = cause else {
        // Asked for, nothing stored, or unreadable: not a rejection.
        return Ok(());
    };
    let violation = |invariant, detail: String| Err(Violation { invariant, at, detail });
    match evidence.refusal {
        Some(Refusal::Expired) => return Ok(()),
        Some(Refusal::Unknown | Refusal::WrongClient) => {
            return violation(Invariant::L2, format!("logged out after a {:?} refusal", evidence.refusal));
        }
        _ => {}
    }
    let lost = evidence.lost_answer || *after_lost_response;
    let grace_covers_retries =
        authority.grace >= session.refresh_cycle_bound() && authority.grace_reuses > session.backoff.attempts;
    if evidence.crashed || evidence.revoked {
        Ok(())
    } else if !lost {
        violation(
            Invariant::L2,
            format!("logged out ({:?}) with no lost answer, crash, revocation or expiry", evidence.refusal),
        )
    } else if grace_covers_retries && !evidence.suspended {
        violation(Invariant::L1, format!("a lost answer ended the session though grace is {:?}", authority.grace))
    } else {
        Ok(())
    }
}

/// C8: whether two renderings of the same run are identical, and where they
/// first differ.
pub fn same_trace(first: &[String], second: &[String]) -> Result<(), Violation> {
    let detail = match first.iter().zip(second).enumerate().find(|(_, (a, b))| a != b) {
        None if first.len() == second.len() => return Ok(()),
        None => format!("traces differ in length: {} and {}", first.len(), second.len()),
        Some((line, (a, b))) => format!("traces differ at line {line}: {a:?} vs {b:?}"),
    };
    Err(Violation { invariant: Invariant::C8, at: MonoTime::ZERO, detail })
}

#[derive(Clone, Debug)]
struct IssuedRefresh {
    family: FamilyId,
    expires_at: MonoTime,
    /// First successful redemption (with rotation), and replays since.
    consumed: Option<(MonoTime, u32)>,
    successes: u32,
}

#[derive(Clone, Debug)]
struct IssuedFamily {
    client: String,
    device: Option<String>,
    ends_at: MonoTime,
    revoked_at: Option<MonoTime>,
}

/// Checks A1–A6 over an authority's [audit](crate::authority::Authority::take_audit),
/// from the configuration alone.
#[derive(Debug)]
pub struct AuthorityMonitor {
    config: AuthorityConfig,
    families: BTreeMap<FamilyId, IssuedFamily>,
    refresh: BTreeMap<Fingerprint, IssuedRefresh>,
    access: BTreeMap<Fingerprint, (FamilyId, MonoTime)>,
    violations: Vec<Violation>,
}

impl AuthorityMonitor {
    /// A monitor for an authority configured with `config`.
    pub fn new(config: &AuthorityConfig) -> Self {
        Self {
            config: config.clone(),
            families: BTreeMap::new(),
            refresh: BTreeMap::new(),
            access: BTreeMap::new(),
            violations: Vec::new(),
        }
    }

    /// Violations found so far.
    pub fn violations(&self) -> &[Violation] {
        &self.violations
    }

    fn violate(&mut self, invariant: Invariant, at: MonoTime, detail: String) {
        self.violations.push(Violation { invariant, at, detail });
    }

    /// Checks one audited operation.
    pub fn observe(&mut self, entry: &Audit) {
        let at = entry.at;
        let refused = matches!(
            entry.outcome,
            AuditOutcome::Refused(_) | AuditOutcome::RevokeRefused(_) | AuditOutcome::Invalid(_)
        );
        let detection = entry.outcome == AuditOutcome::Refused(Refusal::ReuseDetected);
        if refused && !detection && entry.state_changed {
            self.violate(Invariant::A6, at, format!("{:?} changed the authority's state", entry.outcome));
        }
        match (&entry.op, &entry.outcome) {
            (AuditOp::Login { client, device }, AuditOutcome::Issued { family, access, refresh }) => {
                let ends_at = at.saturating_add(self.config.family_lifetime);
                self.families.insert(
                    *family,
                    IssuedFamily { client: client.clone(), device: device.clone(), ends_at, revoked_at: None },
                );
                self.issue(at, *family, *access, Some(*refresh));
            }
            (AuditOp::Refresh { client, device, token }, outcome) => {
                self.refresh(at, client, device.as_deref(), *token, outcome)
            }
            (AuditOp::Revoke { token, client }, AuditOutcome::Revoked) => {
                let family = self.refresh.get(token).map(|r| r.family);
                if let Some(family) = family {
                    if self.families.get(&family).is_some_and(|f| f.client != *client) {
                        self.violate(Invariant::A5, at, format!("{client} revoked a token of another client"));
                    }
                    self.revoke(at, family);
                }
            }
            (AuditOp::Validate { token }, AuditOutcome::Valid { family }) => {
                match self.access.get(token).copied() {
                    None => self.violate(Invariant::A5, at, format!("accepted unknown access token {token}")),
                    Some((_, expires_at)) if at >= expires_at => {
                        self.violate(Invariant::A5, at, format!("accepted access token {token} past expiry"));
                    }
                    Some(_) => {}
                }
                if self.families.get(family).is_some_and(|f| f.revoked_at.is_some()) {
                    self.violate(Invariant::A3, at, format!("accepted an access token of revoked {family}"));
                }
            }
            _ => {}
        }
    }

    fn issue(&mut self, at: MonoTime, family: FamilyId, access: Fingerprint, refresh: Option<Fingerprint>) {
        let ends_at = self.families.get(&family).map_or(at, |f| f.ends_at);
        self.access.insert(access, (family, at.saturating_add(self.config.access_ttl)));
        if let Some(refresh) = refresh {
            let expires_at = at.saturating_add(self.config.refresh_ttl).min(ends_at);
            self.refresh.entry(refresh).or_insert(IssuedRefresh { family, expires_at, consumed: None, successes: 0 });
        }
    }

    fn revoke(&mut self, at: MonoTime, family: FamilyId) {
        if let Some(f) = self.families.get_mut(&family) {
            f.revoked_at.get_or_insert(at);
        }
    }

    fn refresh(
        &mut self,
        at: MonoTime,
        client: &str,
        device: Option<&str>,
        token: Fingerprint,
        outcome: &AuditOutcome,
    ) {
        let Some(record) = self.refresh.get(&token).cloned() else {
            if matches!(outcome, AuditOutcome::Issued { .. }) {
                self.violate(Invariant::A5, at, format!("accepted unknown refresh token {token}"));
            }
            return;
        };
        let Some(family) = self.families.get(&record.family).cloned() else { return };
        let bound = family.client == client && family.device.as_deref() == device;
        let live = family.revoked_at.is_none() && at < record.expires_at && at < family.ends_at;
        let grace = self.config.grace;
        let in_grace = record
            .consumed
            .is_some_and(|(used, replays)| at < used.saturating_add(grace) && replays < self.config.grace_reuses);
        let consumed_outside_grace = self.config.rotation && record.consumed.is_some() && !in_grace;
        match outcome {
            AuditOutcome::Issued { family: issued_family, access, refresh } => {
                if !bound {
                    self.violate(Invariant::A5, at, format!("{token} accepted from the wrong client or device"));
                }
                if !live {
                    let invariant = if family.revoked_at.is_some() { Invariant::A3 } else { Invariant::A5 };
                    self.violate(invariant, at, format!("{token} accepted after its family was revoked or it expired"));
                }
                if consumed_outside_grace {
                    self.violate(Invariant::A1, at, format!("consumed {token} accepted outside grace"));
                }
                if self.config.rotation && grace.is_zero() && record.successes >= 1 {
                    self.violate(Invariant::A4, at, format!("{token} redeemed twice without grace"));
                }
                let issued_family = *issued_family;
                let (access, refresh) = (*access, *refresh);
                if let Some(r) = self.refresh.get_mut(&token) {
                    r.successes += 1;
                    if self.config.rotation {
                        r.consumed = Some(match r.consumed {
                            None => (at, 0),
                            Some((used, replays)) => (used, replays + 1),
                        });
                    } else {
                        r.expires_at = at.saturating_add(self.config.refresh_ttl).min(family.ends_at);
                    }
                }
                self.issue(at, issued_family, access, (refresh != token).then_some(refresh));
            }
            AuditOutcome::Refused(refusal) => {
                if bound && live && in_grace && self.config.rotation {
                    self.violate(Invariant::A2, at, format!("replay of {token} inside grace refused ({refusal:?})"));
                }
                if bound
                    && live
                    && consumed_outside_grace
                    && self.config.reuse_detection
                    && *refusal != Refusal::ReuseDetected
                {
                    self.violate(
                        Invariant::A1,
                        at,
                        format!("reuse of {token} outside grace did not revoke the family"),
                    );
                }
                if *refusal == Refusal::ReuseDetected {
                    self.revoke(at, record.family);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests;
