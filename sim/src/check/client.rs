//! C1–C9, U1–U9 and D2–D3 over one session's inputs and outputs.

use super::*;
use crate::fast_hash::{FastMap, FastSet};
use contract::{Clocks, least_margin};
use freshen_core::session::{AccessGrant, NewSession};
use freshen_core::token::AccessToken;
use refresh::{Answer, Sent};

mod contract;
mod dpop;
mod logout;
mod refresh;

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
    /// The lock, and a read under it.
    Lock,
    /// A write of a generation, with its tokens ([`tokens_of`]).
    Persist(Generation, Option<Fingerprint>),
    Clear,
}

/// What names a stored session's tokens: its access token, unique to each
/// login and refresh (its refresh token where it has none). The same tokens
/// written again under another number are the same tokens.
fn tokens_of(stored: &StoredSession) -> Option<Fingerprint> {
    stored
        .access_token
        .as_ref()
        .map(AccessToken::fingerprint)
        .or(stored.refresh_token.as_ref().map(RefreshToken::fingerprint))
}

/// Checks C1–C7 and C9 over one session's events and commands. Feed it every
/// event with [`ClientMonitor::event`], every command with
/// [`ClientMonitor::command`], close each step with [`ClientMonitor::step_end`]
/// and the run with [`ClientMonitor::finish`]. C8 is checked by replaying a run
/// ([`same_trace`]).
#[derive(Debug)]
pub struct ClientMonitor {
    config: SessionConfig,
    /// C5's bounds on a caller's wait and a logout's, worked out once: they
    /// are checked after every step.
    wait_bound: Duration,
    logout_bound: Duration,
    /// What every 429 of this world's server asks to wait, when it asks
    /// the same each time (see [`ClientMonitor::expect_retry_after`]).
    retry_after_asked: Option<Duration>,
    sent: BTreeMap<RefreshId, Sent>,
    superseded: FastSet<Fingerprint>,
    /// Superseded tokens whose successor reached the store: they stay
    /// superseded across a crash.
    durably_superseded: FastSet<Fingerprint>,
    /// Successors received per token, to mark durability when they are written.
    successor_of: BTreeMap<Fingerprint, BTreeSet<Fingerprint>>,
    /// Refresh tokens this life received (a rotation, a login) that the
    /// store is not known to hold: a cycle must not start with one (C3).
    unwritten: FastSet<Fingerprint>,
    /// Refresh tokens the store was seen to hold (read or written): a late
    /// answer that carries one again brings no unwritten token.
    once_stored: FastSet<Fingerprint>,
    dead: FastSet<Fingerprint>,
    awaiting_logout: Option<MonoTime>,
    durable: BTreeSet<Generation>,
    /// The tokens (by [`tokens_of`]) each generation last named in the
    /// store, and when each set of tokens was first seen durable: a login is
    /// told stored only with tokens first durable at or after it (U9).
    /// Generations alone cannot say so: after a logout elsewhere another
    /// process numbers its login from the start again.
    durable_tokens: BTreeMap<Generation, Fingerprint>,
    first_durable: FastMap<Fingerprint, MonoTime>,
    pending_store: BTreeMap<StoreOpId, (PendingStore, Option<Fingerprint>)>,
    store: StoreModel,
    /// Store operations failed in a row, and when the last one failed.
    store_failures: (u32, MonoTime),
    waiting: BTreeMap<CallerId, MonoTime>,
    /// No caller in `waiting` has waited since before this: C5's scan for
    /// late callers runs only once it could find one (with a herd waiting,
    /// a scan on every step was most of a tier-2 world's time).
    waiting_floor: Option<MonoTime>,
    logged_out: Option<LogoutCause>,
    /// The state the session last reported.
    state: StateView,
    /// Callers that arrived while no refresh cycle ran, and none has started
    /// since: failing one of them as "unavailable" repeats an old failure.
    unserved_since_arrival: FastSet<CallerId>,
    /// Until when a failure may be repeated without a new cycle: the server's
    /// `Retry-After`, or the configured cooldown after a failed cycle.
    failure_excused_until: MonoTime,
    /// Access tokens adopted inside their refresh margin: never to be handed out (U2).
    inside_margin: FastSet<Fingerprint>,
    /// Access tokens this life of the session has seen (from a refresh, a
    /// login or the store): U2 judges a token when it first comes from the
    /// store; reading it back later (under a shared store's lock) adopts nothing.
    seen_access: FastMap<Fingerprint, MonoTime>,
    /// Callers that forced a refresh, and when they asked.
    forced: FastMap<CallerId, MonoTime>,
    /// Callers that asked while the store was being read or written: the
    /// session could not yet know whether it holds a refresh token, so U4
    /// lets them wait for the answer.
    asked_before_known: FastSet<CallerId>,
    /// Per refresh token the server kept (answered without rotating), when:
    /// presentations before it cannot be replayed by a later rotation.
    kept_since: FastMap<Fingerprint, MonoTime>,
    /// The latest each access token learned from a refresh may be used
    /// (its issued lifetime counted from the first presentation of its
    /// refresh token that may have committed), for U8.
    usable_at_most: FastMap<Fingerprint, MonoTime>,
    /// The token the last `Publish` offered the fast path (its access token,
    /// generation and usable time): the driver hands it out, without asking
    /// the machine, until the next `Publish`.
    published: Option<(Fingerprint, Generation, Option<MonoTime>)>,
    /// Callers retrying after a 401: while a refresh is out, it may kill the
    /// token they would be handed (U8).
    retrying: FastSet<CallerId>,
    /// Refresh tokens the server refused pending the user's interaction (U6),
    /// with the generation the session held then and when: tokens adopted
    /// later (a login, or a newer generation from the store) start afresh.
    awaits_user: BTreeMap<Fingerprint, (Generation, MonoTime)>,
    /// Why callers were failed in this step, when the state must say it (U7).
    told_this_step: Option<FailReason>,
    /// Callers waiting for their login to be stored, with when they logged in (U9).
    logins: BTreeMap<CallerId, MonoTime>,
    /// Logouts requested and answered as finished in this life.
    logouts: (u64, u64),
    /// When the oldest logout not answered yet was requested.
    logout_since: Option<MonoTime>,
    /// Revocations sent and not ended, with when each was sent.
    revocations: BTreeMap<RevocationId, MonoTime>,
    /// D2 and D3.
    dpop: dpop::DpopMonitor,
    violations: Vec<Violation>,
}

impl ClientMonitor {
    /// A monitor for a session with `config`.
    pub fn new(config: &SessionConfig) -> Self {
        Self {
            config: config.clone(),
            wait_bound: config.wait_bound(),
            logout_bound: config.logout_bound(),
            retry_after_asked: None,
            sent: BTreeMap::new(),
            superseded: FastSet::default(),
            durably_superseded: FastSet::default(),
            successor_of: BTreeMap::new(),
            unwritten: FastSet::default(),
            once_stored: FastSet::default(),
            dead: FastSet::default(),
            awaiting_logout: None,
            durable: BTreeSet::new(),
            durable_tokens: BTreeMap::new(),
            first_durable: FastMap::default(),
            pending_store: BTreeMap::new(),
            store: StoreModel::Unknown,
            store_failures: (0, MonoTime::ZERO),
            waiting: BTreeMap::new(),
            waiting_floor: None,
            logged_out: None,
            state: StateView::Loading,
            unserved_since_arrival: FastSet::default(),
            failure_excused_until: MonoTime::ZERO,
            inside_margin: FastSet::default(),
            seen_access: FastMap::default(),
            forced: FastMap::default(),
            asked_before_known: FastSet::default(),
            kept_since: FastMap::default(),
            usable_at_most: FastMap::default(),
            published: None,
            retrying: FastSet::default(),
            awaits_user: BTreeMap::new(),
            told_this_step: None,
            logins: BTreeMap::new(),
            logouts: (0, 0),
            logout_since: None,
            revocations: BTreeMap::new(),
            dpop: dpop::DpopMonitor::default(),
            violations: Vec::new(),
        }
    }

    /// Violations found so far.
    pub fn violations(&self) -> &[Violation] {
        &self.violations
    }

    /// Every violation found so far, leaving none: for a test that expects one.
    pub fn take_violations(&mut self) -> Vec<Violation> {
        std::mem::take(&mut self.violations)
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
        self.unwritten.clear();
        // What the old process learned of dead tokens died with it; its
        // successor may present the stored token once more.
        self.dead.clear();
        self.store = StoreModel::Unknown;
        self.state = StateView::Loading;
        self.unserved_since_arrival.clear();
        // Its successor judges each token by the clocks it reads the store with.
        self.seen_access.clear();
        self.inside_margin.clear();
        self.forced.clear();
        self.asked_before_known.clear();
        self.kept_since.clear();
        self.usable_at_most.clear();
        self.published = None;
        self.retrying.clear();
        self.awaits_user.clear();
        self.told_this_step = None;
        self.logins.clear();
        self.logouts = (0, 0);
        self.logout_since = None;
        self.revocations.clear();
        self.dpop.crash();
    }

    /// An input the session is about to handle at `now`.
    pub fn event(&mut self, now: MonoTime, event: &Event) {
        let refreshing = matches!(self.state, StateView::Refreshing { .. });
        self.dpop.event(now, event, refreshing, self.config.request_timeout);
        match event {
            Event::RefreshWanted { caller } => {
                self.awaits_user.clear();
                self.forced.insert(*caller, now);
                self.waits(*caller, now);
                self.note_if_unknowing(*caller);
                self.unserved_since_arrival.insert(*caller);
            }
            Event::Invalidated { .. } => {}
            Event::TokenWanted { caller } | Event::Unauthorized { caller, .. } => {
                self.waits(*caller, now);
                if matches!(event, Event::Unauthorized { .. }) {
                    self.retrying.insert(*caller);
                }
                self.note_if_unknowing(*caller);
                if !matches!(self.state, StateView::Refreshing { .. }) {
                    self.unserved_since_arrival.insert(*caller);
                }
            }
            Event::RefreshCompleted { id, outcome, .. } => self.refresh_answered(now, *id, outcome),
            Event::RefreshFailed { id, failure } => {
                if let Some(sent) = self.sent.get_mut(id) {
                    if sent.answered.is_none() {
                        sent.settled = !failure.outcome_unknown();
                    }
                    sent.answered.get_or_insert((now, Answer::Transient { retry_after: None }));
                }
            }
            Event::StoreLoaded { op, stored, unix_now, boot_now }
            | Event::StoreLocked { op, stored, unix_now, boot_now } => {
                self.store_read(now, *op, stored.as_ref(), (*unix_now, *boot_now));
            }
            Event::StoreWritten { op } => match self.pending_store.remove(op) {
                Some((PendingStore::Persist(generation, tokens), refresh)) => {
                    self.store_failures = (0, now);
                    self.made_durable(now, generation, tokens);
                    self.store = StoreModel::Holds(generation);
                    if let Some(refresh) = refresh {
                        self.unwritten.remove(&refresh);
                        self.once_stored.insert(refresh);
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
                Some((PendingStore::Load | PendingStore::Lock, _)) | None => {}
            },
            Event::StoreFailed { op, .. } => self.store_failed(now, *op),
            Event::LoggedIn { caller, session } => self.logged_in(now, *caller, session),
            Event::LogoutRequested => {
                self.logouts.0 += 1;
                self.logout_since.get_or_insert(now);
            }
            Event::RevocationEnded { id } => {
                self.revocations.remove(id);
            }
        }
    }

    /// A store operation failed, or (a lock) its wait was given up.
    fn store_failed(&mut self, now: MonoTime, op: StoreOpId) {
        if let Some((kind, _)) = self.pending_store.remove(&op) {
            self.store_failures = (self.store_failures.0 + 1, now);
            if !matches!(kind, PendingStore::Load | PendingStore::Lock) {
                self.store = StoreModel::Unknown;
            }
        }
    }

    /// The store was read (loaded, or locked and read): what it holds now.
    fn store_read(&mut self, now: MonoTime, op: StoreOpId, stored: Option<&StoredSession>, clocks: Clocks) {
        if self.pending_store.remove(&op).is_some() {
            self.store_failures = (0, now);
            self.store = match stored {
                Some(stored) => {
                    self.made_durable(now, stored.generation, tokens_of(stored));
                    // A newer generation starts afresh; so does, at a server
                    // that does not rotate, the very token refreshed since by
                    // another process with success: an access token this one
                    // had not seen when refused, beside it, is the server's
                    // later word (tier-1 seed 11328399: both processes
                    // numbered that session g140).
                    let refresh = stored.refresh_token.as_ref().map(RefreshToken::fingerprint);
                    let first_seen = stored.access_token.as_ref().map(|a| self.seen_access.get(&a.fingerprint()));
                    self.awaits_user.retain(|token, (held, refused_at)| {
                        let refreshed_since = refresh == Some(*token)
                            && first_seen.is_some_and(|seen| seen.is_none_or(|seen| seen > refused_at));
                        *held >= stored.generation && !refreshed_since
                    });
                    // A live token another process stored may replace a
                    // rejected one: the rejection no longer demands a logout.
                    if let Some(token) = stored.refresh_token.as_ref().map(RefreshToken::fingerprint) {
                        self.unwritten.remove(&token);
                        self.once_stored.insert(token);
                        let fresh = !self.dead.contains(&token) && !self.superseded.contains(&token);
                        if fresh && self.latest_token() != Some(token) {
                            self.awaiting_logout = None;
                        }
                    }
                    self.note_refresh_first(stored, clocks, now);
                    StoreModel::Holds(stored.generation)
                }
                None => StoreModel::Empty,
            };
        }
    }

    /// The store holds `generation`, naming `tokens`, as of `now`.
    fn made_durable(&mut self, now: MonoTime, generation: Generation, tokens: Option<Fingerprint>) {
        self.durable.insert(generation);
        if let Some(tokens) = tokens {
            self.durable_tokens.insert(generation, tokens);
            self.first_durable.entry(tokens).or_insert(now);
        }
    }

    /// `caller` waits from `now` on, unless it already did.
    fn waits(&mut self, caller: CallerId, now: MonoTime) {
        self.waiting.entry(caller).or_insert(now);
        self.waiting_floor = Some(self.waiting_floor.map_or(now, |floor| floor.min(now)));
    }

    /// `caller` logged in with `new`: a new session begins.
    fn logged_in(&mut self, now: MonoTime, caller: CallerId, new: &NewSession) {
        self.waits(caller, now);
        self.logins.insert(caller, now);
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
        if let Some(refresh) = &new.refresh_token {
            self.unwritten.insert(refresh.fingerprint());
        }
        // A new session: refreshes of the one it replaces are not its own (C1 is per session).
        self.sent.clear();
        self.logged_out = None;
        self.awaiting_logout = None;
    }

    /// C6: every 429 the server sends asks to wait `wait` (in seconds, or as
    /// an HTTP-date with its `Date`, on its own clock, which may be far from
    /// the client's): the session must read exactly that. The backoff
    /// checks take the wait the session read; this holds that reading to
    /// what the server asked.
    pub fn expect_retry_after(&mut self, wait: Duration) {
        self.retry_after_asked = Some(wait);
    }

    fn latest_token(&self) -> Option<Fingerprint> {
        self.sent.values().next_back().map(|s| s.token)
    }

    /// An output the session produced while handling an input at `now`.
    pub fn command(&mut self, now: MonoTime, command: &Command) {
        self.dpop.command(now, command, &mut self.violations);
        match command {
            Command::Io(Io::SendRefresh { id, refresh_token, attempt, .. }) => {
                self.refresh_sent(now, *id, refresh_token.fingerprint(), *attempt);
            }
            Command::Io(Io::Persist { op, session }) => {
                let token = session.refresh_token.as_ref().map(RefreshToken::fingerprint);
                if self.logged_out.as_ref().is_some_and(LogoutCause::clears_store) {
                    self.violate(Invariant::C4, now, format!("persisted {} after logout", session.generation));
                }
                if let Some(token) = token.filter(|t| self.superseded.contains(t)) {
                    self.violate(Invariant::C3, now, format!("persisted superseded refresh token {token}"));
                }
                let persist = PendingStore::Persist(session.generation, tokens_of(session));
                self.pending_store.insert(*op, (persist, token));
            }
            Command::Io(Io::ClearStore { op }) => {
                self.pending_store.insert(*op, (PendingStore::Clear, None));
            }
            Command::Io(Io::LoadStore { op }) => {
                self.pending_store.insert(*op, (PendingStore::Load, None));
            }
            Command::Io(Io::LockStore { op }) => {
                // A shared store's cycle starts by taking its lock.
                self.unserved_since_arrival.clear();
                self.pending_store.insert(*op, (PendingStore::Lock, None));
            }
            Command::Io(Io::UnlockStore) => {
                // Issued while a lock is still awaited, it gives up the wait:
                // the machine counts that as the store failing.
                let given_up: Vec<_> = self
                    .pending_store
                    .iter()
                    .filter(|(_, (kind, _))| matches!(kind, PendingStore::Lock))
                    .map(|(op, _)| *op)
                    .collect();
                for op in given_up {
                    self.store_failed(now, op);
                }
            }
            Command::Publish(Some(grant)) => {
                self.published = Some((grant.access_token.fingerprint(), grant.generation, grant.usable_until));
                self.handed_out(now, grant, None);
            }
            Command::Grant { grant, callers } => self.handed_out(now, grant, Some(callers)),
            Command::LoginStored { callers, generation } => {
                for caller in callers {
                    let logged_in_at = self.logins.remove(caller);
                    let first_durable =
                        self.durable_tokens.get(generation).and_then(|tokens| self.first_durable.get(tokens));
                    let older = logged_in_at.zip(first_durable).is_some_and(|(login, first)| *first < login);
                    if !self.durable.contains(generation) || older {
                        let detail = format!("told {caller} its login is stored, but the store does not hold it yet");
                        self.violate(Invariant::U9, now, detail);
                    }
                }
                self.resolve(now, callers, "told stored");
            }
            Command::Fail { callers, reason } => self.failed(now, callers, reason),
            Command::StateChanged(view) => self.state_changed(now, view),
            Command::Io(Io::Revoke { id, .. }) => {
                self.revocations.insert(*id, now);
            }
            Command::LogoutFinished { requests } => self.logout_finished(now, *requests),
            Command::Publish(None) => self.published = None,
        }
    }

    /// What the fast path hands out must be what the machine holds usable:
    /// published again whenever its usable time moves. A usable time left
    /// behind, earlier than the machine's, makes the driver's withdrawal
    /// timer fire at once, step after step (a driver spinning at 100 % CPU);
    /// one later than what the machine has learned hands out a token past
    /// its death, unseen by the machine.
    fn check_published(&mut self, now: MonoTime) {
        let Some((access, generation, Some(until))) = self.published else { return };
        if until <= now {
            let detail = format!("{generation} is still published after its usable time {until}");
            self.violate(Invariant::C7, now, detail);
            self.published = None;
        } else if let Some(at_most) = self.usable_at_most.get(&access).filter(|at_most| until > **at_most) {
            let detail =
                format!("{generation} is published usable until {until}, past what the session learned ({at_most})");
            self.violate(Invariant::U8, now, detail);
            self.published = None;
        }
    }

    /// A token handed out: published (`callers` is `None`) or granted.
    fn handed_out(&mut self, now: MonoTime, grant: &AccessGrant, callers: Option<&[CallerId]>) {
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
        if let Some(callers) = callers {
            let timeout = self.config.request_timeout;
            // The sends are looked through only for a retrying caller: there are many of them, and few retries.
            if let Some(caller) = callers.iter().find(|c| self.retrying.contains(c))
                && let Some((id, _)) =
                    self.sent.iter().find(|(_, s)| s.answered.is_none() && now < s.at.saturating_add(timeout))
            {
                let detail = format!(
                    "{caller}'s retry after a 401 got {} while {id}, which may kill it, was out",
                    grant.generation
                );
                self.violate(Invariant::U8, now, detail);
            }
            let learned = self.seen_access.get(&access).copied().unwrap_or(now);
            if let Some(caller) = callers.iter().find(|c| self.forced.get(c).is_some_and(|asked| learned < *asked)) {
                let detail =
                    format!("forced refresh by {caller} answered with {}, held before it asked", grant.generation);
                self.violate(Invariant::U5, now, detail);
            }
        }
        // By the tokens, not their number: two processes number their
        // sessions apart, and a number another process stored says nothing
        // of this one's unstored tokens.
        if !self.first_durable.contains_key(&access) {
            self.violate(Invariant::C3, now, format!("handed out {} before the store held it", grant.generation));
        }
        if self.logged_out.is_some() {
            self.violate(Invariant::C4, now, format!("handed out {} while logged out", grant.generation));
        }
        if callers.is_some() && !grant.usable_at(now) {
            self.violate(Invariant::C7, now, format!("granted {} past its usable time", grant.generation));
        }
        if let Some(callers) = callers {
            if !matches!(self.state, StateView::Valid { .. } | StateView::Refreshing { .. }) {
                let detail = format!("granted {} while the state still read {}", grant.generation, self.state);
                self.violate(Invariant::U1, now, detail);
            }
            self.resolve(now, callers, "granted");
        }
    }

    /// Callers failed for `reason`.
    fn failed(&mut self, now: MonoTime, callers: &[CallerId], reason: &FailReason) {
        if *reason == FailReason::MissingRefreshToken
            && let Some(caller) = callers
                .iter()
                .find(|c| !self.asked_before_known.contains(c) && self.waiting.get(c).is_some_and(|since| *since < now))
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

    /// The state callers read changed to `view`.
    fn state_changed(&mut self, now: MonoTime, view: &StateView) {
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
        self.check_published(now);
        self.check_clearing(now);
        self.dpop.step_end(now, &mut self.violations);
        let bound = self.wait_bound;
        if self.waiting_floor.is_some_and(|floor| floor.saturating_add(bound) < now) {
            let late: Vec<_> =
                self.waiting.iter().filter(|(_, since)| since.saturating_add(bound) < now).map(|(c, _)| *c).collect();
            for caller in late {
                self.waiting.remove(&caller);
                self.violate(Invariant::C5, now, format!("{caller} waited longer than {bound:?}"));
            }
            self.waiting_floor = self.waiting.values().min().copied();
        }
        self.check_logout_bound(now);
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
        let (requested, answered) = self.logouts;
        if answered < requested {
            self.violate(Invariant::C5, now, format!("{} logouts never told they finished", requested - answered));
        }
    }
}
