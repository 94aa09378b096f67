//! The sans-IO session machine.
//!
//! A [`Session`] holds one OAuth session and decides everything about it: when
//! to refresh, which token to send, when to retry, when to write the store,
//! whom to answer, when to log out. It never performs I/O, never reads a clock
//! and never spawns anything. A driver feeds it inputs and carries out its outputs:
//!
//! * inputs: [`Session::handle`] (an [`Event`]) and [`Session::handle_timeout`];
//! * outputs: [`Session::poll_command`] (a [`Command`]) and [`Session::poll_timeout`].
//!
//! After every input, drain every command, then re-arm the timer. See the
//! [crate docs](crate) for the run loop.
//!
//! # Rules
//!
//! * One refresh at a time (C1). Callers that find no usable token wait for it.
//! * A token is handed out only once the store holds it (C3); a failed write is
//!   retried, and the new refresh token stays in memory meanwhile.
//! * One request gets one answer: a duplicate is ignored. An answer to a
//!   superseded attempt is ignored too, except news about the refresh token
//!   the session still holds (a success, a salvaged rotation, a rejection):
//!   that carries what the server did, and dropping it would lose the session.
//! * A 401 for an older generation retries with the current token; a 401 for
//!   the current generation starts a refresh.
//! * Transient failures back off; `invalid_grant` (by default) re-reads the
//!   store once, in case another process rotated the token, then logs out.

mod config;
mod types;

use core::mem;
use core::time::Duration;
use std::collections::VecDeque;

pub use config::{Backoff, ConfigError, SessionConfig};
pub use types::{
    AccessGrant, AttemptFailure, Command, Event, FailReason, Ignored, LogoutCause, NewSession, Renewal, StateView,
    StoreError, Timeout, TransportFailure,
};

use crate::ids::{CallerId, Generation, RefreshId, StoreOpId};
use crate::oauth::{Classified, OAuthError, Rejected, TokenResponse, Transient, TransientCause};
use crate::rng::SplitMix64;
use crate::stored::StoredSession;
use crate::time::{MonoTime, UnixTime};
use crate::token::{AccessToken, RefreshToken, TokenType};

/// A deliberately broken variant of the machine. Each one breaks one invariant,
/// so the checkers can prove they catch it. Has no effect unless the `testing`
/// feature sets [`SessionConfig::plant`].
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Plant {
    /// Every caller that finds no usable token starts its own refresh (breaks C1).
    NoSingleFlight,
    /// Hands out tokens before the store holds them (breaks C3).
    GrantBeforePersist,
    /// Logs out without clearing the store (breaks C4).
    LogoutKeepsStorage,
    /// A retry that succeeds keeps the old refresh token (breaks C2).
    RetryForgetsRotation,
    /// Ignores [`SessionConfig::shared_store`]: refreshes without the store's
    /// cross-process lock (breaks C1 and C2 across processes).
    NoCrossProcessLock,
    /// Answers callers before it reports the state their answer implies
    /// (breaks U1: an app reading the state after a logout answer sees it
    /// still logged in).
    AnswersBeforeState,
    /// After a failed cycle, fails every caller for `backoff.max` without
    /// trying again (breaks U3: a failure is not cached).
    CachesFailure,
    /// Hands out a restored token that is already inside its refresh margin
    /// (breaks U2: the refresh window is the user's).
    IgnoresRefreshWindow,
    /// A forced refresh asked while one is in flight is sent at once with
    /// the same refresh token instead of after it with its successor (breaks
    /// C1, C2 and U5: forced refreshes are chained).
    ForcedRefreshNotChained,
    /// Counts a refresh's lifetime from the attempt that got the answer, not
    /// from the first attempt presenting the same token (breaks C7 and U8
    /// against servers whose grace replay keeps the original expiry).
    LifetimeFromLastAttempt,
    /// A retry after a 401 gets the current token at once, even while a
    /// refresh that may kill it runs (breaks U8 against servers that delete
    /// the previous access token on refresh).
    RetryIgnoresRunningRefresh,
    /// Treats a request for the user's interaction as a transient failure
    /// and retries it (breaks U6: only the user can answer it).
    RetriesInteractionRequired,
    /// Shows the tokens of a failed cycle as ready to refresh (breaks U7:
    /// the state tells an outage from a misconfiguration from the next call).
    StateHidesFailure,
    /// Tells a login it is stored before the store holds it (breaks U9: a
    /// crash then would lose a login the app was told is safe).
    LoginAnsweredBeforeStored,
}

impl Plant {
    /// Every plant, for campaigns.
    pub const ALL: [Plant; 14] = [
        Plant::NoSingleFlight,
        Plant::GrantBeforePersist,
        Plant::LogoutKeepsStorage,
        Plant::RetryForgetsRotation,
        Plant::NoCrossProcessLock,
        Plant::AnswersBeforeState,
        Plant::CachesFailure,
        Plant::IgnoresRefreshWindow,
        Plant::ForcedRefreshNotChained,
        Plant::LifetimeFromLastAttempt,
        Plant::RetryIgnoresRunningRefresh,
        Plant::RetriesInteractionRequired,
        Plant::StateHidesFailure,
        Plant::LoginAnsweredBeforeStored,
    ];

    /// The name used on command lines.
    pub fn name(self) -> &'static str {
        match self {
            Plant::NoSingleFlight => "no-single-flight",
            Plant::GrantBeforePersist => "grant-before-persist",
            Plant::LogoutKeepsStorage => "logout-keeps-storage",
            Plant::RetryForgetsRotation => "retry-forgets-rotation",
            Plant::NoCrossProcessLock => "no-cross-process-lock",
            Plant::AnswersBeforeState => "answers-before-state",
            Plant::CachesFailure => "caches-a-failure",
            Plant::IgnoresRefreshWindow => "ignores-refresh-window",
            Plant::ForcedRefreshNotChained => "forced-refresh-not-chained",
            Plant::LifetimeFromLastAttempt => "lifetime-from-last-attempt",
            Plant::RetryIgnoresRunningRefresh => "retry-ignores-running-refresh",
            Plant::RetriesInteractionRequired => "retries-interaction-required",
            Plant::StateHidesFailure => "state-hides-failure",
            Plant::LoginAnsweredBeforeStored => "login-answered-before-stored",
        }
    }

    /// The plant with this name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }
}

/// The session machine. See the [module docs](self).
#[derive(Debug)]
pub struct Session {
    config: SessionConfig,
    rng: SplitMix64,
    /// The latest time seen; input time never moves it back.
    now: MonoTime,
    /// A point known on both clocks, to turn wall-clock expiries into monotonic ones.
    wall_anchor: (MonoTime, UnixTime),
    state: State,
    /// Callers waiting, oldest first. Deadlines are arrival + a constant, so
    /// they are in order too.
    waiters: VecDeque<Waiter>,
    store: StoreSync,
    outbox: Outbox,
    /// The highest generation this machine has seen or made.
    last_generation: Generation,
    /// An attempt abandoned in flight when an earlier attempt's late success
    /// ended its cycle: it counts as in flight until answered or past its
    /// deadline, so no new refresh starts alongside it (C1).
    straggler: Option<(RefreshId, MonoTime)>,
    /// Refresh cycles started so far; the running one, if any, is this number.
    cycles_started: u64,
    /// Input that made no sense any more (see [`Session::ignored`]).
    ignored: Ignored,
    /// What the last [`Command::Publish`] offered.
    published: Option<Generation>,
    view: StateView,
    /// Refresh tokens of grants that a login replaced, each with the login's
    /// generation. Revoked only once the store no longer needs them (it holds
    /// that generation or later, or nothing): revoked earlier, a crash before
    /// the login's write lands would restart from a dead token.
    replaced_grants: Vec<(Generation, RefreshToken)>,
    /// With a shared store, a logout revokes only once its clear has landed
    /// under the lock: revoked earlier, it would reject a refresh another
    /// process is making under that lock (and a crash before the clear would
    /// restart from a revoked session).
    revoke_after_clear: Option<RefreshToken>,
}

/// The most replaced grants kept for revocation; older ones are revoked at once.
const MAX_REPLACED_GRANTS: usize = 4;

#[derive(Debug)]
struct Outbox {
    commands: VecDeque<Command>,
    next_refresh: RefreshId,
    /// The latest refreshes sent, newest last, at most [`RECENT_SENDS`]: when
    /// each went out (its answer's lifetime counts from there) and whether it
    /// was answered (one request gets one answer; a second is a duplicate).
    recent_sends: VecDeque<SentRefresh>,
}

#[derive(Debug)]
struct SentRefresh {
    id: RefreshId,
    at: MonoTime,
    answered: bool,
    /// Its answer says what the server issued for it: nothing (a refusal, a
    /// 429, never sent) or what the answer carried. An attempt not settled
    /// may have been redeemed unseen, and a later grace replay may carry that.
    settled: bool,
    /// The refresh cycle it belongs to: the tokens its answer brings come from that cycle.
    cycle: u64,
}

/// Why a store answer was ignored: it answers an operation the machine no
/// longer awaits (a retry replaced it, or the session moved on).
const STALE_STORE_ANSWER: &str = "a store answer to an operation no longer awaited";

/// How many send times are remembered for answers that arrive late.
const RECENT_SENDS: usize = 32;

#[derive(Debug)]
struct Waiter {
    caller: CallerId,
    deadline: MonoTime,
    needs: Needs,
}

impl Waiter {
    /// Whether a token answers it (all but a login waiting to be stored).
    fn wants_token(&self) -> bool {
        self.needs != Needs::Durable
    }
}

/// Which token a waiter may be handed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Needs {
    /// Any usable token.
    Any,
    /// A token from refresh cycle `n` or a later one: a forced refresh asked
    /// while cycle `n - 1` may still run. Under rotation that chains forced
    /// refreshes, each presenting the token the previous one received.
    CycleFrom(u64),
    /// A login waiting to be stored: answered with
    /// [`Command::LoginStored`] once the tokens held are durable, never with
    /// a token.
    Durable,
    /// A retry after a 401 that came while a refresh ran (or an attempt was
    /// still out): a refresh may just have killed the token the caller holds
    /// and the one in memory alike, so it waits until no refresh is in
    /// flight (a cycle that starts meanwhile included), then takes any
    /// usable token.
    NoRefreshInFlight,
}

#[derive(Debug)]
enum State {
    /// The store has not been read yet.
    Loading,
    /// The access token is usable (or its lifetime unknown).
    Valid(TokenSet),
    /// The access token is unusable and no refresh runs.
    Expired(TokenSet),
    /// A refresh cycle runs.
    Refreshing(TokenSet, Cycle),
    /// Terminal until a login.
    LoggedOut(LogoutCause),
}

/// The tokens a session holds, and what the machine knows about them. A
/// session may hold both, a refresh token alone, or an access token alone.
#[derive(Clone, Debug)]
struct TokenSet {
    generation: Generation,
    /// `None` when only a refresh token is held: the first caller refreshes.
    access: Option<AccessToken>,
    token_type: TokenType,
    scope: Option<String>,
    /// `None` when the server issued none: the access token is served while
    /// it is usable, then callers are told the session needs a new login.
    refresh: Option<RefreshToken>,
    /// `None` when the lifetime is unknown.
    expiry: Option<Expiry>,
    /// A resource refused the access token with a 401 (or the app said it is bad).
    access_rejected: bool,
    /// The refresh cycle that brought these tokens; 0 for tokens from a
    /// login or the store. Forced refreshes wait for a later cycle.
    cycle: u64,
    /// The attempt whose answer brought these tokens, if one did.
    answered_by: Option<RefreshId>,
    /// When the first attempt presenting `refresh` went out. An answer to any
    /// later attempt may be a grace replay of what the server issued then (the
    /// same access token, its clock already running), so lifetimes count from
    /// here (U8).
    first_send: Option<MonoTime>,
    /// The access token came from outside a refresh (the store, a login)
    /// already past its refresh point: it is refreshed before it is handed
    /// out (U2). Replaced tokens never carry it.
    refresh_first: bool,
    /// Every refresh from this id on presented the bytes of `refresh` (which
    /// may outlive a generation when the server does not rotate): an answer
    /// to any of them is news about the token held.
    presented_since: RefreshId,
    /// How the last refresh cycle failed, while no later one succeeded.
    last_failure: Option<CycleFailure>,
    /// An attempt presenting `refresh` got no answer: the server may have
    /// rotated it, which is what a later rejection would then mean.
    answer_lost: bool,
    /// These tokens come from a login in this process: until written, they
    /// are newer than anything the store holds, whatever its generation says.
    from_login: bool,
    /// These tokens come from a late answer adopted while this process did
    /// not hold the shared store's lock: another process may since have
    /// redeemed the same refresh token under the lock and written a newer
    /// rotation, which then wins over this one.
    answered_unlocked: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Expiry {
    expires_at: MonoTime,
    usable_until: MonoTime,
    /// The refresh window opens: the margin (and jitter) before expiry. A
    /// token adopted past it is refreshed before it is handed out (U2).
    window_at: MonoTime,
    /// When the proactive refresh starts: at the window, but never before a
    /// quarter of the token's life, so tokens issued for barely more than
    /// the margin cannot make refreshes follow each other back to back.
    refresh_at: MonoTime,
    /// The lifetime it was issued with, when known: what the margins are
    /// judged by, and what the store keeps.
    lifetime: Option<Duration>,
}

/// A refresh cycle that ended without new tokens. A failure is not cached:
/// the next caller that needs a refresh starts a new cycle at once, unless
/// `hold_until` says the server asked to wait (or the app configured a
/// cooldown, or the client is misconfigured and is retried at the slowest
/// backoff pace).
#[derive(Clone, Debug)]
struct CycleFailure {
    /// What the callers of that cycle were told.
    reason: FailReason,
    /// No cycle starts before this, not even for a caller.
    hold_until: Option<MonoTime>,
    /// When the next cycle starts on its own, without a caller: background
    /// retries are paced at the slowest backoff, callers are not.
    proactive_at: MonoTime,
}

/// One refresh cycle: up to `backoff.attempts` attempts with the same token.
#[derive(Debug)]
struct Cycle {
    attempt: u32,
    phase: Phase,
    /// The store was re-read after a terminal answer (at most once per cycle).
    reread: bool,
}

#[derive(Debug)]
enum Phase {
    /// Waiting for the store's cross-process lock and what the store holds
    /// under it (shared stores only): no attempt is sent before.
    Locking,
    InFlight {
        id: RefreshId,
        deadline: MonoTime,
    },
    Backoff {
        until: MonoTime,
    },
    /// A terminal answer came; the store is re-read before logging out. Only
    /// a load issued from `after` on counts: an older one may predate the
    /// other process's write.
    Rereading {
        error: OAuthError,
        after: StoreOpId,
        /// What the answer means when the store holds nothing newer.
        otherwise: IfNothingNewer,
    },
}

/// What a refusal that sent the session to re-read the store comes to when
/// no other process rotated the token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum IfNothingNewer {
    /// `invalid_grant`: the refresh token is dead.
    LogOut,
    /// `invalid_request` (what fosite answers the loser of two concurrent
    /// rotations): a refusal to report, never a logout.
    Fail,
    /// An `invalid_request` followed by a request for the user's interaction.
    AwaitUser,
}

/// Keeps the store in step with the session, one operation at a time, so a
/// late write can never land after a later one.
#[derive(Debug)]
struct StoreSync {
    next_op: StoreOpId,
    in_flight: Option<(StoreOpId, StoreOp)>,
    holds: Holds,
    failures: u32,
    retry_at: Option<MonoTime>,
    /// The most failures in a row before waiters are failed.
    attempts: u32,
    /// This process holds the store's cross-process lock.
    locked: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StoreOp {
    Load,
    Lock,
    Persist(Generation),
    Clear,
}

/// What the store is known to hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Holds {
    Unknown,
    Empty,
    Session(Generation),
}

impl Session {
    /// A session that starts by reading the store ([`Command::LoadStore`]).
    ///
    /// `seed` drives every random choice (jitter), so the same seed and inputs
    /// give the same commands (C8). `now` and `unix_now` are the same moment on
    /// the monotonic and the wall clock.
    pub fn new(config: SessionConfig, seed: u64, now: MonoTime, unix_now: UnixTime) -> Result<Self, ConfigError> {
        config.validate()?;
        let store_attempts = config.store_backoff.attempts;
        let mut session = Self {
            config,
            rng: SplitMix64::new(seed),
            now,
            wall_anchor: (now, unix_now),
            state: State::Loading,
            waiters: VecDeque::new(),
            store: StoreSync {
                next_op: StoreOpId(1),
                in_flight: None,
                holds: Holds::Unknown,
                failures: 0,
                retry_at: None,
                attempts: store_attempts,
                locked: false,
            },
            outbox: Outbox { commands: VecDeque::new(), next_refresh: RefreshId(1), recent_sends: VecDeque::new() },
            last_generation: Generation(0),
            straggler: None,
            cycles_started: 0,
            ignored: Ignored::default(),
            replaced_grants: Vec::new(),
            revoke_after_clear: None,
            published: None,
            view: StateView::Loading,
        };
        session.settle();
        Ok(session)
    }

    /// The configuration in force.
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// The observable state.
    pub fn state(&self) -> &StateView {
        &self.view
    }

    /// How many callers wait.
    pub fn waiting(&self) -> usize {
        self.waiters.len()
    }

    /// Input ignored so far: how much, and why the last was. A driver may
    /// trace it; nothing is dropped without a count.
    pub fn ignored(&self) -> Ignored {
        self.ignored
    }

    fn ignore(&mut self, why: &'static str) {
        self.ignored = Ignored { count: self.ignored.count + 1, last: Some(why) };
    }

    /// Feeds one input. Infallible: input that makes no sense now (an unknown
    /// id, a duplicate, an answer after logout) is ignored, and counted in
    /// [`Session::ignored`].
    pub fn handle(&mut self, now: MonoTime, event: Event) {
        self.advance(now);
        if let Event::RefreshCompleted { id, .. } | Event::RefreshFailed { id, .. } = &event {
            if !self.outbox.first_answer(*id) {
                self.ignore("a second answer to one refresh attempt");
                self.settle();
                return;
            }
            let settled = match &event {
                Event::RefreshCompleted { outcome, .. } => match outcome {
                    Classified::Transient(Transient { cause, .. }) => !matches!(cause, TransientCause::ServerError(_)),
                    Classified::Malformed(_) => false,
                    _ => true,
                },
                Event::RefreshFailed { failure, .. } => !failure.outcome_unknown(),
                _ => false,
            };
            if let Some(sent) = self.outbox.recent_sends.iter_mut().find(|sent| sent.id == *id) {
                sent.settled = settled;
            }
            if self.straggler.is_some_and(|(straggler, _)| straggler == *id) {
                self.straggler = None;
            }
        }
        match event {
            Event::TokenWanted { caller } => self.on_token_wanted(caller),
            Event::RefreshWanted { caller } => self.on_refresh_wanted(caller),
            Event::Unauthorized { caller, generation } => self.on_unauthorized(caller, generation),
            Event::Invalidated { generation } => self.on_invalidated(generation),
            Event::RefreshCompleted { id, outcome } => self.on_refresh_completed(id, outcome),
            Event::RefreshFailed { id, failure } => {
                if self.in_flight(id) {
                    self.attempt_failed(AttemptFailure::Transport(failure), failure.outcome_unknown(), None);
                } else {
                    self.ignore("a failure of an attempt no longer in flight");
                }
            }
            Event::StoreLoaded { op, stored, unix_now } => self.on_store_loaded(op, stored, unix_now),
            Event::StoreLocked { op, stored, unix_now } => self.on_store_locked(op, stored, unix_now),
            Event::StoreWritten { op } => self.on_store_written(op),
            Event::StoreFailed { op, error } => self.on_store_failed(op, error),
            Event::LogoutRequested => self.log_out(LogoutCause::Requested),
            Event::LoggedIn { caller, session } => {
                self.on_logged_in(session);
                self.add_waiter(caller, Needs::Durable);
            }
        }
        self.settle();
    }

    /// Fires whatever timers are due at `now`. Calling it early is harmless.
    pub fn handle_timeout(&mut self, now: MonoTime) {
        self.advance(now);
        let now = self.now;
        let mut expired = Vec::new();
        while let Some(waiter) = self.waiters.front().filter(|w| w.deadline <= now) {
            expired.push(waiter.caller);
            self.waiters.pop_front();
        }
        self.outbox.fail(expired, FailReason::TimedOut);
        if self.straggler.is_some_and(|(_, deadline)| deadline <= now) {
            self.straggler = None;
        }
        let due = match &self.state {
            State::Refreshing(_, cycle) => match cycle.phase {
                Phase::InFlight { deadline, .. } => (deadline <= now).then_some(true),
                Phase::Backoff { until } => (until <= now).then_some(false),
                Phase::Locking | Phase::Rereading { .. } => None,
            },
            _ => None,
        };
        match due {
            Some(true) => self.attempt_failed(AttemptFailure::Transport(TransportFailure::Timeout), true, None),
            Some(false) => self.send_next_attempt(),
            None => {}
        }
        if self.store.retry_at.is_some_and(|at| at <= now) {
            self.store.retry_at = None;
        }
        self.settle();
    }

    /// The next output, if any. Drain until `None` after every input.
    #[must_use]
    pub fn poll_command(&mut self) -> Option<Command> {
        self.outbox.commands.pop_front()
    }

    /// When [`Session::handle_timeout`] must next be called, if ever, and
    /// why (for a driver's trace). Always later than the last time seen, so
    /// a driver cannot spin on it.
    #[must_use = "a driver that does not arm its timer for this never refreshes ahead of expiry"]
    pub fn poll_timeout(&self) -> Option<Timeout> {
        let mut next: Option<Timeout> = None;
        let mut consider = |at: Option<MonoTime>, reason: &'static str| {
            if let Some(at) = at
                && next.is_none_or(|n| at < n.at)
            {
                next = Some(Timeout { at, reason });
            }
        };
        consider(self.waiters.front().map(|w| w.deadline), "a waiting caller's deadline");
        consider(self.straggler.map(|(_, deadline)| deadline), "an abandoned attempt's answer window closes");
        match &self.state {
            State::Refreshing(_, cycle) => match cycle.phase {
                Phase::InFlight { deadline, .. } => consider(Some(deadline), "the refresh attempt's deadline"),
                Phase::Backoff { until } => consider(Some(until), "the backoff ends"),
                Phase::Locking | Phase::Rereading { .. } => {}
            },
            State::Valid(tokens) => {
                consider(tokens.refresh_due_at(), "the refresh window opens");
                consider(tokens.expiry.map(|e| e.usable_until), "the access token stops being usable");
            }
            State::Loading | State::Expired(_) | State::LoggedOut(_) => {}
        }
        if self.store.in_flight.is_none() {
            consider(self.store.retry_at, "the store is tried again");
        }
        // Every timer above is consumed or moved by `handle_timeout`; clamping
        // to just after now keeps a driver from busy-looping even if one is not.
        let floor = self.now.saturating_add(Duration::from_millis(1));
        next.map(|due| Timeout { at: due.at.max(floor), ..due })
    }

    fn advance(&mut self, now: MonoTime) {
        // Time never goes back: a clock that does is ignored until it catches up.
        self.now = self.now.max(now);
    }

    fn planted(&self, plant: Plant) -> bool {
        #[cfg(feature = "_internal_test_exports")]
        {
            self.config.plant == Some(plant)
        }
        #[cfg(not(feature = "_internal_test_exports"))]
        {
            let _ = plant;
            false
        }
    }

    fn tokens(&self) -> Option<&TokenSet> {
        match &self.state {
            State::Valid(t) | State::Expired(t) | State::Refreshing(t, _) => Some(t),
            State::Loading | State::LoggedOut(_) => None,
        }
    }

    fn tokens_mut(&mut self) -> Option<&mut TokenSet> {
        match &mut self.state {
            State::Valid(t) | State::Expired(t) | State::Refreshing(t, _) => Some(t),
            State::Loading | State::LoggedOut(_) => None,
        }
    }

    fn in_flight(&self, id: RefreshId) -> bool {
        matches!(&self.state, State::Refreshing(_, Cycle { phase: Phase::InFlight { id: current, .. }, .. }) if *current == id)
    }

    fn next_generation(&mut self) -> Generation {
        self.last_generation = self.last_generation.next();
        self.last_generation
    }

    fn add_waiter(&mut self, caller: CallerId, needs: Needs) {
        if self.waiters.len() >= self.config.max_waiters {
            self.outbox.fail(vec![caller], FailReason::TooManyWaiters);
            return;
        }
        // Demand revives a store that gave up: it may work again now.
        self.store.revive();
        let deadline = self.now.saturating_add(self.config.wait_bound());
        self.waiters.push_back(Waiter { caller, deadline, needs });
    }

    /// The refresh cycle running now, if any.
    fn running_cycle(&self) -> Option<u64> {
        matches!(self.state, State::Refreshing(..)).then_some(self.cycles_started)
    }

    fn on_token_wanted(&mut self, caller: CallerId) {
        self.add_waiter(caller, Needs::Any);
        if self.planted(Plant::NoSingleFlight)
            && matches!(&self.state, State::Refreshing(t, Cycle { phase: Phase::InFlight { .. }, .. }) if !t.usable_at(self.now))
        {
            self.send_next_attempt();
        }
    }

    fn on_unauthorized(&mut self, caller: CallerId, generation: Generation) {
        self.on_invalidated(generation);
        // A refresh that runs when the retry is answered may kill the token
        // it would get (servers delete the previous access token when a
        // refresh commits): the retry waits until none is out, including one
        // chained after the cycle this 401 starts (U8).
        let refreshing = self.running_cycle().is_some() || self.straggler.is_some();
        let ignores = refreshing && self.planted(Plant::RetryIgnoresRunningRefresh);
        let needs = if ignores { Needs::Any } else { Needs::NoRefreshInFlight };
        self.add_waiter(caller, needs);
    }

    /// Only the current token can be proven bad; a 401 for an older one just
    /// means the caller retries with the current one.
    fn on_invalidated(&mut self, generation: Generation) {
        if let Some(tokens) = self.tokens_mut()
            && tokens.generation == generation
        {
            tokens.access_rejected = true;
        } else {
            self.ignore("an invalidation of a token no longer held");
        }
    }

    /// A forced refresh: the caller gets a token from a cycle that starts
    /// after it asked, even if the one held is fresh. Under rotation, one
    /// asked while a cycle runs waits for it and then presents its result.
    fn on_refresh_wanted(&mut self, caller: CallerId) {
        self.add_waiter(caller, Needs::CycleFrom(self.cycles_started + 1));
        let in_flight = matches!(&self.state, State::Refreshing(_, Cycle { phase: Phase::InFlight { .. }, .. }));
        if in_flight && self.planted(Plant::ForcedRefreshNotChained) {
            // The broken variant sends at once, with the token already in flight.
            self.send_next_attempt();
        }
    }

    /// Answers that carry news about the token the session holds (a success, a
    /// salvaged rotation, a rejection) count whichever attempt they answer;
    /// answers that only say "not now" count for the attempt in flight.
    fn on_refresh_completed(&mut self, id: RefreshId, outcome: Classified) {
        let current = self.answers_current_tokens(id);
        match outcome {
            Classified::Success(response) => {
                // A rejection of the held token is newer news than a delayed
                // success that keeps it: the token stays dead.
                let revives_dead_token = matches!(
                    &self.state,
                    State::Refreshing(held, Cycle { phase: Phase::Rereading { .. }, .. })
                        if response.refresh_token.as_ref().is_none_or(|r| held.holds_refresh(r))
                );
                // A late answer to an earlier attempt with the same refresh
                // token is older than the one these tokens came from: the
                // server issued its access token first, and may have deleted
                // it on the later redemption. One that rotates the refresh
                // token is news all the same: the token held may be spent.
                let superseded = self.tokens().is_some_and(|t| {
                    t.answered_by.is_some_and(|later| id < later)
                        && response.refresh_token.as_ref().is_none_or(|r| t.holds_refresh(r))
                });
                if current && !revives_dead_token && !superseded {
                    self.adopt_response(id, response);
                } else if let (State::LoggedOut(_), Some(rotated)) = (&self.state, response.refresh_token) {
                    // Tokens issued after logout: revoke what the user no longer wants.
                    self.outbox.commands.push_back(Command::Revoke { refresh_token: rotated });
                }
            }
            Classified::Terminal(error) => {
                if current {
                    self.on_terminal(id, error);
                }
            }
            Classified::Malformed(malformed) => {
                let salvaged = current && self.salvage(malformed.salvaged_refresh_token);
                if self.in_flight(id) {
                    self.attempt_failed(AttemptFailure::Malformed(malformed.reason), !salvaged, None);
                }
            }
            Classified::Transient(Transient { cause, retry_after }) => {
                if self.in_flight(id) {
                    // A 5xx may come after the server committed; a 429 or a retry request did not.
                    let unknown = matches!(cause, TransientCause::ServerError(_));
                    self.attempt_failed(AttemptFailure::Server(cause), unknown, retry_after);
                }
            }
            Classified::Rejected(Rejected::Error(error)) if error.code == "invalid_request" && self.in_flight(id) => {
                self.on_invalid_request(id, error);
            }
            Classified::Rejected(rejected) => {
                if self.in_flight(id) {
                    self.end_cycle(FailReason::Rejected(rejected), None);
                }
            }
            Classified::InteractionRequired(error) if self.planted(Plant::RetriesInteractionRequired) => {
                if self.in_flight(id) {
                    let cause = TransientCause::RetryRequested(error);
                    self.attempt_failed(AttemptFailure::Server(cause), false, None);
                }
            }
            Classified::InteractionRequired(error) => {
                // Like a rejection, it speaks of the token, not the attempt: a
                // late one counts too. While the store is re-read after an
                // `invalid_request`, it is what the refusal comes to; after an
                // `invalid_grant`, the logout it may end in outranks it.
                if !current {
                    return;
                }
                match &mut self.state {
                    State::Refreshing(
                        _,
                        Cycle { phase: Phase::Rereading { otherwise: IfNothingNewer::LogOut, .. }, .. },
                    ) => {}
                    State::Refreshing(_, Cycle { phase: Phase::Rereading { error: refusal, otherwise, .. }, .. }) => {
                        *refusal = error;
                        *otherwise = IfNothingNewer::AwaitUser;
                    }
                    _ => {
                        self.abandon_in_flight(id);
                        self.end_cycle(FailReason::InteractionRequired(error), None);
                    }
                }
            }
        }
    }

    fn answers_current_tokens(&self, id: RefreshId) -> bool {
        self.tokens().is_some_and(|t| t.presented_since <= id && id < self.outbox.next_refresh)
    }

    fn adopt_response(&mut self, id: RefreshId, response: TokenResponse) {
        let generation = self.next_generation();
        let next_refresh = self.outbox.next_refresh;
        let now = self.now;
        let retry = match &self.state {
            State::Refreshing(_, cycle) => cycle.attempt > 1 || !self.in_flight(id),
            _ => true,
        };
        self.abandon_in_flight(id);
        let forget_rotation = retry && self.planted(Plant::RetryForgetsRotation);
        let Some(old) = self.take_tokens() else { return };
        // A response without a refresh token keeps the one held: that is the
        // policy of RFC 6749 §6 for servers that do not rotate.
        let refresh = match response.refresh_token {
            Some(rotated) if !forget_rotation => rotated,
            _ => match old.refresh.clone() {
                Some(held) => held,
                None => return,
            },
        };
        let kept = old.holds_refresh(&refresh);
        // The lifetime counts from the first attempt that presented this
        // token: the answer may be a grace replay of what the server issued
        // then (U8). An attempt too old to be remembered counts from the
        // origin, which is conservative.
        let sent = self.outbox.sent(id);
        let sent_at = sent.map_or(MonoTime::ZERO, |s| s.at);
        let cycle = sent.map_or(0, |s| s.cycle);
        let first_send = old.first_send.filter(|_| !self.planted(Plant::LifetimeFromLastAttempt));
        let base = first_send.map_or(sent_at, |first| first.min(sent_at)).min(now);
        let expiry = response.lifetime.map(|lifetime| Expiry::issued(base, lifetime, &self.config, &mut self.rng));
        self.state = State::Valid(TokenSet {
            generation,
            access: Some(response.access_token),
            token_type: response.token_type,
            scope: response.scope.or(old.scope),
            refresh: Some(refresh),
            expiry,
            access_rejected: false,
            refresh_first: false,
            cycle,
            answered_by: Some(id),
            // A kept token may still be redeemed by an attempt out with it,
            // whose answer may yet be a rotation: the next lifetime counts
            // from that attempt.
            first_send: if kept { self.outbox.first_unsettled(old.presented_since, Some(id)) } else { None },
            presented_since: if kept { old.presented_since } else { next_refresh },
            last_failure: None,
            // A late answer adopted while an attempt with the old token is still
            // out: that attempt may yet trip reuse detection, and if it does, a
            // lost answer is why.
            answer_lost: old.answer_lost && (kept || self.straggler.is_some()),
            from_login: false,
            answered_unlocked: self.locks_store() && !self.store.locked,
        });
        self.store.revive();
    }

    /// Keeps a rotated refresh token found in an unusable answer: the server
    /// issued it, so it replaces the one held, and is written before anything
    /// else. Returns whether it did.
    fn salvage(&mut self, rotated: Option<RefreshToken>) -> bool {
        let Some(rotated) = rotated.filter(|r| self.tokens().is_some_and(|t| !t.holds_refresh(r))) else {
            return false;
        };
        let generation = self.next_generation();
        let next_refresh = self.outbox.next_refresh;
        if let Some(tokens) = self.tokens_mut() {
            tokens.generation = generation;
            tokens.refresh = Some(rotated);
            tokens.first_send = None;
            tokens.presented_since = next_refresh;
            tokens.answer_lost = false;
        }
        self.store.revive();
        true
    }

    fn on_terminal(&mut self, id: RefreshId, error: OAuthError) {
        self.abandon_in_flight(id);
        let after_lost_response = self.tokens().is_some_and(|t| t.answer_lost);
        let after = self.store.next_op;
        match &mut self.state {
            State::Refreshing(_, cycle) if cycle.reread => {
                self.log_out(LogoutCause::RefreshTokenRejected { error, after_lost_response });
                return;
            }
            State::Refreshing(_, cycle) => {
                cycle.reread = true;
                cycle.phase = Phase::Rereading { error, after, otherwise: IfNothingNewer::LogOut };
            }
            State::Valid(_) | State::Expired(_) => {
                // The rejection outlived its cycle; the attempts are spent, so
                // only a token found in the store may be tried, once.
                let Some(tokens) = self.take_tokens() else { return };
                let phase = Phase::Rereading { error, after, otherwise: IfNothingNewer::LogOut };
                let cycle = Cycle { attempt: self.config.backoff.attempts, phase, reread: true };
                self.state = State::Refreshing(tokens, cycle);
            }
            State::Loading | State::LoggedOut(_) => return,
        }
        // Another process sharing the store may have rotated the token: look
        // once before giving the session up.
        self.store.revive();
    }

    /// A 400 `invalid_request` to a refresh: fosite answers so the loser of
    /// two concurrent rotations, so like `invalid_grant` it sends the session
    /// to the store first; unlike it, it never logs out.
    fn on_invalid_request(&mut self, id: RefreshId, error: OAuthError) {
        self.abandon_in_flight(id);
        let after = self.store.next_op;
        let State::Refreshing(_, cycle) = &mut self.state else { return };
        if cycle.reread {
            self.end_cycle(FailReason::Rejected(Rejected::Error(error)), None);
            return;
        }
        cycle.reread = true;
        cycle.phase = Phase::Rereading { error, after, otherwise: IfNothingNewer::Fail };
        self.store.revive();
    }

    /// Attempt failed without proving the token dead: back off and retry, or
    /// end the cycle when attempts run out or the server asks for too long a pause.
    fn attempt_failed(&mut self, failure: AttemptFailure, outcome_unknown: bool, retry_after: Option<Duration>) {
        let now = self.now;
        let config = &self.config;
        let State::Refreshing(tokens, cycle) = &mut self.state else { return };
        tokens.answer_lost |= outcome_unknown;
        if let Some(wait) = retry_after.filter(|wait| *wait > config.max_retry_after) {
            self.end_cycle(FailReason::RefreshUnavailable(AttemptFailure::RetryAfter(wait)), Some(wait));
            return;
        }
        if cycle.attempt >= config.backoff.attempts {
            self.end_cycle(FailReason::RefreshUnavailable(failure), retry_after);
            return;
        }
        let delay = jittered(&mut self.rng, config.backoff, cycle.attempt).max(retry_after.unwrap_or_default());
        cycle.phase = Phase::Backoff { until: now.saturating_add(delay) };
    }

    /// Ends a cycle that did not succeed: its waiters get `reason` now, the
    /// tokens stay, and the next caller that needs a refresh starts a new
    /// cycle at once. Only the server's `Retry-After`, a configured
    /// [`SessionConfig::failure_cooldown`], or a misconfigured client (retried
    /// at the slowest backoff pace) hold new cycles back.
    fn end_cycle(&mut self, reason: FailReason, retry_after: Option<Duration>) {
        let config = &self.config;
        let misconfigured = matches!(reason, FailReason::Rejected(_));
        let mut hold = retry_after.unwrap_or_default().max(config.failure_cooldown);
        if misconfigured || self.planted(Plant::CachesFailure) {
            hold = hold.max(config.backoff.max);
        }
        let now = self.now;
        let failure = CycleFailure {
            reason: reason.clone(),
            hold_until: (!hold.is_zero()).then(|| now.saturating_add(hold)),
            proactive_at: now.saturating_add(hold.max(config.backoff.max)),
        };
        let Some(mut tokens) = self.take_tokens() else { return };
        tokens.last_failure = Some(failure);
        // Only an attempt that may have been redeemed unseen can be replayed
        // to the next cycle: its lifetime counts from the earliest such one.
        tokens.first_send = self.outbox.first_unsettled(tokens.presented_since, None);
        // The waiters this cycle was to serve: a forced refresh asked during
        // it waits for the next one. Waiters of a token still usable wait
        // only for the store (C3).
        let ended = self.cycles_started;
        let usable = tokens.usable_at(now);
        let mut failed = Vec::new();
        self.waiters.retain(|waiter| {
            let served_by_this = match waiter.needs {
                Needs::Any | Needs::NoRefreshInFlight => !usable,
                Needs::CycleFrom(n) => n <= ended,
                Needs::Durable => false,
            };
            if served_by_this {
                failed.push(waiter.caller);
            }
            !served_by_this
        });
        self.state = State::Valid(tokens);
        self.outbox.fail(failed, reason);
    }

    /// Sends the next attempt of the running cycle (or, for the no-single-flight
    /// plant, a second one alongside it).
    fn send_next_attempt(&mut self) {
        let now = self.now;
        let timeout = self.config.request_timeout;
        let straggler = self.straggler;
        let State::Refreshing(tokens, cycle) = &mut self.state else { return };
        if let Some((_, deadline)) = straggler {
            // C1: wait until the abandoned attempt is answered or dead.
            cycle.phase = Phase::Backoff { until: deadline };
            return;
        }
        let Some(refresh_token) = tokens.refresh.clone() else {
            // Adopted from another process without a refresh token: nothing to send.
            self.end_cycle(FailReason::MissingRefreshToken, None);
            return;
        };
        cycle.attempt += 1;
        tokens.first_send.get_or_insert(now);
        let id = self.outbox.send_refresh(now, refresh_token, cycle.attempt, self.cycles_started);
        cycle.phase = Phase::InFlight { id, deadline: now.saturating_add(timeout) };
    }

    /// An answer to attempt `answered` moves the cycle on while another
    /// attempt is still in flight: that one becomes the straggler, which
    /// counts as in flight until answered or past its deadline (C1).
    fn abandon_in_flight(&mut self, answered: RefreshId) {
        if let State::Refreshing(_, Cycle { phase: Phase::InFlight { id, deadline }, .. }) = &self.state
            && *id != answered
        {
            self.straggler = Some((*id, *deadline));
        }
    }

    fn start_cycle(&mut self) {
        let now = self.now;
        let timeout = self.config.request_timeout;
        let Some(mut tokens) = self.take_tokens() else { return };
        let Some(refresh_token) = tokens.refresh.clone() else {
            // Settling never starts a cycle without a refresh token.
            self.state = State::Valid(tokens);
            return;
        };
        self.cycles_started += 1;
        if self.locks_store() && !self.store.locked {
            // The store is read under its lock first: another process may have refreshed.
            self.state = State::Refreshing(tokens, Cycle { attempt: 0, phase: Phase::Locking, reread: false });
            return;
        }
        tokens.first_send.get_or_insert(now);
        let id = self.outbox.send_refresh(now, refresh_token, 1, self.cycles_started);
        let phase = Phase::InFlight { id, deadline: now.saturating_add(timeout) };
        self.state = State::Refreshing(tokens, Cycle { attempt: 1, phase, reread: false });
    }

    fn log_out(&mut self, cause: LogoutCause) {
        let previous = mem::replace(&mut self.state, State::LoggedOut(cause.clone()));
        if let (LogoutCause::Requested, State::Valid(t) | State::Expired(t) | State::Refreshing(t, _)) =
            (&cause, previous)
            && let Some(refresh_token) = t.refresh
        {
            if self.locks_store() {
                self.revoke_after_clear = Some(refresh_token);
            } else {
                self.outbox.commands.push_back(Command::Revoke { refresh_token });
            }
        }
        self.store.revive();
    }

    fn on_logged_in(&mut self, new: NewSession) {
        let generation = self.next_generation();
        let base = new.requested_at.min(self.now);
        let expiry = new.lifetime.map(|lifetime| {
            let issued = (!new.issued_lifetime_unknown).then_some(lifetime);
            Expiry::plan(base.saturating_add(lifetime), issued, &self.config, &mut self.rng)
        });
        let mut tokens = TokenSet {
            generation,
            access: new.access_token,
            token_type: new.token_type,
            scope: new.scope,
            refresh: new.refresh_token,
            expiry,
            access_rejected: false,
            refresh_first: false,
            cycle: 0,
            answered_by: None,
            first_send: None,
            presented_since: self.outbox.next_refresh,
            last_failure: None,
            answer_lost: false,
            from_login: true,
            answered_unlocked: false,
        };
        // The grant the login replaces: the tokens held, or those of a logout
        // whose clear never landed (still owed a revocation, and still stored).
        tokens.refresh_first = self.adopted_past_refresh_point(&tokens);
        let replaced = match self.take_tokens() {
            Some(old) => {
                let stored = self.store_may_hold(old.generation);
                old.refresh.map(|refresh| (refresh, stored))
            }
            None => self.revoke_after_clear.take().map(|refresh| (refresh, true)),
        };
        if let Some((old, stored)) = replaced.filter(|(old, _)| !tokens.holds_refresh(old)) {
            if !stored {
                // Never written: no restart and no other process can hold it.
                self.outbox.commands.push_back(Command::Revoke { refresh_token: old });
            } else {
                // The server may drop it once the new grant is durable; revoked
                // earlier, a crash would restart from a dead token, and another
                // process sharing the store may be refreshing it.
                if self.replaced_grants.len() == MAX_REPLACED_GRANTS {
                    let (_, oldest) = self.replaced_grants.remove(0);
                    self.outbox.commands.push_back(Command::Revoke { refresh_token: oldest });
                }
                self.replaced_grants.push((generation, old));
            }
        }
        self.state = State::Valid(tokens);
        self.store.revive();
    }

    /// Whether the store may hold `generation`: it does, a write of it is
    /// out, or a failed write left the store unknown.
    fn store_may_hold(&self, generation: Generation) -> bool {
        matches!(self.store.holds, Holds::Unknown)
            || self.store.holds == Holds::Session(generation)
            || matches!(self.store.in_flight, Some((_, StoreOp::Persist(g))) if g == generation)
    }

    fn on_store_loaded(&mut self, op: StoreOpId, stored: Option<StoredSession>, unix_now: UnixTime) {
        if self.store.in_flight != Some((op, StoreOp::Load)) {
            self.ignore(STALE_STORE_ANSWER);
            return;
        }
        self.store.succeeded();
        self.wall_anchor = (self.now, unix_now);
        match &self.state {
            State::Loading => match stored {
                None => self.state = State::LoggedOut(LogoutCause::NoSession),
                Some(stored) => {
                    self.store.holds = Holds::Session(stored.generation);
                    self.last_generation = self.last_generation.max(stored.generation);
                    let tokens = self.tokens_from_store(stored, |generation| generation);
                    self.state = State::Valid(tokens);
                }
            },
            State::Refreshing(_, Cycle { phase: Phase::Rereading { after, .. }, .. }) if op >= *after => {
                self.reread(stored);
            }
            // A login, a logout or a rejection overtook the load: what it read
            // is stale (a re-read still wanted issues a new load). Its
            // generation still counts: the tokens held must outrank it, or a
            // later re-read would take it for another process's rotation.
            _ => {
                let Some(stored) = stored else { return };
                self.last_generation = self.last_generation.max(stored.generation);
                if self.tokens().is_some_and(|t| t.generation <= stored.generation) {
                    let generation = self.next_generation();
                    if let Some(tokens) = self.tokens_mut() {
                        tokens.generation = generation;
                    }
                    self.store.revive();
                }
            }
        }
    }

    /// A rejection waited for this read of the store: another process's
    /// rotation shows as a later generation with another token, and is
    /// adopted; anything else is ours, or older, and the session ends.
    fn reread(&mut self, stored: Option<StoredSession>) {
        let State::Refreshing(tokens, Cycle { phase: Phase::Rereading { .. }, .. }) = &self.state else {
            return;
        };
        let newer =
            stored.filter(|s| !same_refresh(&s.refresh_token, &tokens.refresh) && self.written_since(tokens, s));
        match newer {
            Some(stored) => self.adopt_stored(stored),
            None => self.refusal_stands(),
        }
    }

    /// The store showed no other process's rotation: a rejected refresh token
    /// ends the session; an `invalid_request` ends only the cycle.
    fn refusal_stands(&mut self) {
        let State::Refreshing(tokens, Cycle { phase: Phase::Rereading { error, otherwise, .. }, .. }) = &self.state
        else {
            return;
        };
        let error = error.clone();
        match otherwise {
            IfNothingNewer::LogOut => {
                let after_lost_response = tokens.answer_lost;
                self.log_out(LogoutCause::RefreshTokenRejected { error, after_lost_response });
            }
            IfNothingNewer::Fail => self.end_cycle(FailReason::Rejected(Rejected::Error(error)), None),
            IfNothingNewer::AwaitUser => self.end_cycle(FailReason::InteractionRequired(error), None),
        }
    }

    /// Whether `stored` was written after this session's tokens. A later
    /// generation says so; so does, for a shared store, anything other than
    /// the tokens this session knows the store held: once a logout elsewhere
    /// emptied the store, generations start again from whoever logs in next,
    /// so a number alone cannot tell.
    fn written_since(&self, tokens: &TokenSet, stored: &StoredSession) -> bool {
        !tokens.stored_as(stored)
            && (stored.generation > tokens.generation
                || (self.locks_store() && self.store.holds == Holds::Session(tokens.generation)))
    }

    /// The store's cross-process lock is held and the store was read under
    /// it, so what it holds is the truth until the lock is released.
    fn on_store_locked(&mut self, op: StoreOpId, stored: Option<StoredSession>, unix_now: UnixTime) {
        if self.store.in_flight != Some((op, StoreOp::Lock)) {
            self.ignore(STALE_STORE_ANSWER);
            return;
        }
        self.store.succeeded();
        self.store.locked = true;
        self.wall_anchor = (self.now, unix_now);
        if let State::Refreshing(_, Cycle { phase: Phase::Rereading { after, .. }, .. }) = &self.state {
            if op >= *after {
                self.reread(stored);
            }
            return;
        }
        let Some(held) = self.tokens() else {
            // Logged out: the lock is for clearing the store.
            self.store.holds = if stored.is_some() { Holds::Unknown } else { Holds::Empty };
            return;
        };
        let (generation, ours_durable) = (held.generation, self.store.holds == Holds::Session(held.generation));
        // A login not yet written is the user's latest word: nothing stored outranks it.
        let unwritten_login = held.from_login && !ours_durable;
        let theirs_newer = !unwritten_login && stored.as_ref().is_some_and(|s| self.written_since(held, s));
        let locking = matches!(self.state, State::Refreshing(_, Cycle { phase: Phase::Locking, .. }));
        match stored {
            // Another process refreshed (or logged in) since this one last
            // wrote or read: its tokens are newer, and refreshing ours would
            // replay a spent token. Adopted instead of refreshing.
            Some(stored) if locking && theirs_newer => self.adopt_locked(stored),
            // Ours came from a late answer outside the lock; theirs was written
            // under it since, from the same token or a later one.
            Some(stored) if theirs_newer && held.answered_unlocked => self.adopt_locked(stored),
            // Another process logged out: the session this one held ended there.
            None if locking && ours_durable => self.log_out(LogoutCause::EndedElsewhere),
            stored => {
                let same = stored.as_ref().is_some_and(|s| held.stored_as(s));
                self.store.holds = match &stored {
                    None => Holds::Empty,
                    Some(s) => Holds::Session(s.generation),
                };
                // Ours is newer (a login, or a rotation not yet written): it
                // must outrank what the store holds, then be written.
                if let Some(stored) = stored.filter(|_| !same) {
                    self.last_generation = self.last_generation.max(stored.generation);
                    if stored.generation >= generation {
                        let renumbered = self.next_generation();
                        if let Some(tokens) = self.tokens_mut() {
                            tokens.generation = renumbered;
                        }
                    }
                }
                if locking {
                    self.send_next_attempt();
                }
            }
        }
    }

    /// Takes over a newer session found under the lock: its tokens are what
    /// the store holds. Its access token ends the cycle if usable; otherwise
    /// its refresh token is sent, still under the lock.
    fn adopt_locked(&mut self, stored: StoredSession) {
        self.store.holds = Holds::Session(stored.generation);
        self.last_generation = self.last_generation.max(stored.generation);
        let mut tokens = self.tokens_from_store(stored, |generation| generation);
        // Another process refreshed while this cycle waited for the lock: its
        // tokens are this cycle's result.
        tokens.cycle = self.cycles_started;
        if tokens.usable_at(self.now) {
            self.state = State::Valid(tokens);
        } else {
            self.state = State::Refreshing(tokens, Cycle { attempt: 0, phase: Phase::Locking, reread: false });
            self.send_next_attempt();
        }
    }

    /// Takes over a session another process wrote while ours was being rejected.
    fn adopt_stored(&mut self, stored: StoredSession) {
        let durable = stored.generation > self.last_generation;
        let generation = if durable { stored.generation } else { self.next_generation() };
        self.last_generation = self.last_generation.max(generation);
        if durable {
            self.store.holds = Holds::Session(generation);
        }
        let mut tokens = self.tokens_from_store(stored, |_| generation);
        tokens.cycle = self.cycles_started;
        let State::Refreshing(_, cycle) = mem::replace(&mut self.state, State::Loading) else { return };
        if tokens.usable_at(self.now) {
            self.state = State::Valid(tokens);
        } else {
            // Its access token is spent too: one more attempt, with its refresh token.
            self.state = State::Refreshing(tokens, Cycle { phase: Phase::Backoff { until: self.now }, ..cycle });
            self.send_next_attempt();
        }
        self.store.revive();
    }

    fn tokens_from_store(
        &mut self,
        stored: StoredSession,
        generation: impl FnOnce(Generation) -> Generation,
    ) -> TokenSet {
        let (anchor_mono, anchor_unix) = self.wall_anchor;
        let max_lifetime = self.config.policy.max_lifetime;
        let expiry = stored.access_expires_at.map(|at| {
            // Remaining lifetime on the wall clock, measured from the anchor;
            // a stored blob is untrusted, so the same cap applies as on the wire.
            let remaining = at.saturating_duration_since(anchor_unix).min(max_lifetime);
            let expires_at = anchor_mono.min(self.now).saturating_add(remaining);
            // Margins are judged by the lifetime it was issued with, not by what is left.
            let lifetime = stored.access_lifetime.map(|lifetime| lifetime.min(max_lifetime));
            Expiry::plan(expires_at, lifetime, &self.config, &mut self.rng)
        });
        let mut tokens = TokenSet {
            generation: generation(stored.generation),
            access: stored.access_token,
            token_type: stored.token_type,
            scope: stored.scope,
            refresh: stored.refresh_token,
            expiry,
            access_rejected: false,
            refresh_first: false,
            cycle: 0,
            answered_by: None,
            first_send: None,
            presented_since: self.outbox.next_refresh,
            last_failure: None,
            answer_lost: false,
            from_login: false,
            answered_unlocked: false,
        };
        tokens.refresh_first = self.adopted_past_refresh_point(&tokens);
        tokens
    }

    /// U2: a token adopted from outside a refresh (the store, a login, another
    /// process) whose refresh point has passed is refreshed before it is
    /// handed out: the refresh window is the user's.
    fn adopted_past_refresh_point(&self, tokens: &TokenSet) -> bool {
        let past = tokens.refresh.is_some() && tokens.expiry.is_some_and(|e| self.now >= e.window_at);
        past && !self.planted(Plant::IgnoresRefreshWindow)
    }

    fn on_store_written(&mut self, op: StoreOpId) {
        let Some((_, kind)) = self.store.in_flight.filter(|(current, _)| *current == op) else {
            self.ignore(STALE_STORE_ANSWER);
            return;
        };
        self.store.holds = match kind {
            StoreOp::Persist(generation) => Holds::Session(generation),
            StoreOp::Clear => Holds::Empty,
            // A load or lock answered as a write: nothing was written.
            StoreOp::Load | StoreOp::Lock => self.store.holds,
        };
        if matches!(kind, StoreOp::Load | StoreOp::Lock) {
            self.store.in_flight = None;
            return;
        }
        self.store.succeeded();
        if kind == StoreOp::Clear
            && let Some(refresh_token) = self.revoke_after_clear.take()
        {
            self.outbox.commands.push_back(Command::Revoke { refresh_token });
        }
        let no_longer_needed = |replaced_by: Generation| match kind {
            StoreOp::Persist(stored) => stored >= replaced_by,
            _ => true,
        };
        for (replaced_by, refresh_token) in mem::take(&mut self.replaced_grants) {
            // A grant that came back (another process sharing the store kept
            // it) is the session's again: never revoke what is held.
            if self.tokens().is_some_and(|t| t.holds_refresh(&refresh_token)) {
                continue;
            }
            if no_longer_needed(replaced_by) {
                self.outbox.commands.push_back(Command::Revoke { refresh_token });
            } else {
                self.replaced_grants.push((replaced_by, refresh_token));
            }
        }
    }

    fn on_store_failed(&mut self, op: StoreOpId, error: StoreError) {
        let Some((_, kind)) = self.store.in_flight.filter(|(current, _)| *current == op) else {
            self.ignore(STALE_STORE_ANSWER);
            return;
        };
        self.store.in_flight = None;
        let read = matches!(kind, StoreOp::Load | StoreOp::Lock);
        if !read {
            // A failed write may or may not have happened.
            self.store.holds = Holds::Unknown;
        }
        let gave_up = match error {
            StoreError::Corrupt(decode) if kind == StoreOp::Load => {
                if matches!(self.state, State::Loading) {
                    self.state = State::LoggedOut(LogoutCause::StoredSessionUnreadable(decode));
                    return;
                }
                // A blob we cannot read holds nothing we could adopt.
                true
            }
            _ => self.store.failed(self.now, &self.config.store_backoff, &mut self.rng),
        };
        if gave_up && read {
            // The store cannot tell us better: the refusal stands.
            self.refusal_stands();
        }
    }

    fn take_tokens(&mut self) -> Option<TokenSet> {
        match mem::replace(&mut self.state, State::Loading) {
            State::Valid(t) | State::Expired(t) | State::Refreshing(t, _) => Some(t),
            other => {
                self.state = other;
                None
            }
        }
    }

    /// Derives every consequence of the current facts: answers waiters, starts
    /// a refresh when one is needed, moves the store toward what the session
    /// holds, and reports what changed. Runs after every input.
    fn settle(&mut self) {
        let now = self.now;
        if let State::Valid(tokens) = &self.state
            && !tokens.usable_at(now)
        {
            let Some(tokens) = self.take_tokens() else { return };
            self.state = State::Expired(tokens);
        }
        let refresh_needed = match &self.state {
            State::Valid(tokens) | State::Expired(tokens) => {
                let usable = tokens.usable_at(now);
                let wanted = tokens.refresh_due_at().is_some_and(|at| at <= now)
                    || self
                        .waiters
                        .iter()
                        .any(|w| w.wants_token() && !(usable && tokens.satisfies(w.needs, None, false)));
                // A forced refresh is the app's answer to a request for interaction.
                let forced = self.waiters.iter().any(|w| matches!(w.needs, Needs::CycleFrom(_)));
                let held = tokens.held_at(now) && !(forced && tokens.awaits_user());
                wanted && tokens.refresh.is_some() && !held && self.straggler.is_none()
            }
            _ => false,
        };
        if refresh_needed {
            self.start_cycle();
        }
        // What callers can read comes before what they are told: the fast
        // path and the state first, then the answers (U1), so an app that
        // reads the state after an answer never sees an older one.
        self.publish();
        let answers_first = self.planted(Plant::AnswersBeforeState);
        if answers_first {
            self.answer_waiters();
        }
        let view = self.view_now();
        if view != self.view {
            self.view = view.clone();
            self.outbox.commands.push_back(Command::StateChanged(view));
        }
        if !answers_first {
            self.answer_waiters();
        }
        self.settle_store();
    }

    fn answer_waiters(&mut self) {
        if self.waiters.is_empty() {
            return;
        }
        let now = self.now;
        let tokens = match &self.state {
            State::LoggedOut(cause) => {
                let callers = self.waiters.drain(..).map(|w| w.caller).collect();
                self.outbox.fail(callers, FailReason::LoggedOut(cause.clone()));
                return;
            }
            State::Loading => {
                if self.store.exhausted() {
                    let callers = self.waiters.drain(..).map(|w| w.caller).collect();
                    self.outbox.fail(callers, FailReason::StoreUnavailable);
                }
                return;
            }
            State::Valid(tokens) | State::Expired(tokens) | State::Refreshing(tokens, _) => tokens,
        };
        let durable = self.planted(Plant::GrantBeforePersist) || self.store.holds == Holds::Session(tokens.generation);
        let grant = tokens.grant_at(now);
        let running = self.running_cycle();
        let straggling = self.straggler.is_some();
        // What a waiter no token serves now is told, when nothing will serve it soon.
        let blocked = if let State::Refreshing(_, cycle) = &self.state {
            // A lock that cannot be had is a store that cannot be used.
            (matches!(cycle.phase, Phase::Locking) && self.store.exhausted()).then_some(FailReason::StoreUnavailable)
        } else if tokens.refresh.is_none() {
            // Nothing can renew it: the user must log in again.
            Some(FailReason::MissingRefreshToken)
        } else {
            // No refresh runs for a waiter it could serve: only a hold stops one.
            tokens.last_failure.as_ref().filter(|_| tokens.held_at(now)).map(|f| f.reason.clone())
        };
        let store_gave_up = self.store.exhausted();
        let login_stored = durable || self.planted(Plant::LoginAnsweredBeforeStored);
        let (mut granted, mut stored, mut unstored, mut refused) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        self.waiters.retain(|waiter| {
            if !waiter.wants_token() {
                match (login_stored, store_gave_up) {
                    (true, _) => stored.push(waiter.caller),
                    (false, true) => unstored.push(waiter.caller),
                    (false, false) => return true,
                }
                return false;
            }
            let served = grant.is_some() && tokens.satisfies(waiter.needs, running, straggling);
            match (served, durable) {
                (true, true) => granted.push(waiter.caller),
                (true, false) if store_gave_up => unstored.push(waiter.caller),
                (true, false) => return true,
                (false, _) if blocked.is_some() => refused.push(waiter.caller),
                (false, _) => return true,
            }
            false
        });
        if !stored.is_empty() {
            self.outbox.commands.push_back(Command::LoginStored { callers: stored, generation: tokens.generation });
        }
        if let Some(grant) = grant.filter(|_| !granted.is_empty()) {
            self.outbox.commands.push_back(Command::Grant { callers: granted, grant });
        }
        self.outbox.fail(unstored, FailReason::StoreUnavailable);
        if let Some(reason) = blocked {
            self.outbox.fail(refused, reason);
        }
    }

    /// A load is wanted while nothing is loaded yet, and while a rejection
    /// waits for the store to be re-read: derived from the state, never stored.
    fn load_wanted(&self) -> bool {
        matches!(self.state, State::Loading | State::Refreshing(_, Cycle { phase: Phase::Rereading { .. }, .. }))
    }

    /// What the store should hold when the machine is not reading it, if it
    /// is not there yet.
    fn write_wanted(&self) -> Option<StoreOp> {
        let goal = match &self.state {
            State::Loading => return None,
            State::LoggedOut(cause) => {
                if !cause.clears_store() || self.planted(Plant::LogoutKeepsStorage) {
                    return None;
                }
                Holds::Empty
            }
            State::Valid(t) | State::Expired(t) | State::Refreshing(t, _) => Holds::Session(t.generation),
        };
        match goal {
            _ if goal == self.store.holds => None,
            Holds::Session(generation) => Some(StoreOp::Persist(generation)),
            _ => Some(StoreOp::Clear),
        }
    }

    /// Whether this session takes the store's cross-process lock.
    fn locks_store(&self) -> bool {
        self.config.shared_store && !self.planted(Plant::NoCrossProcessLock)
    }

    /// The lock is held from the start of a refresh cycle (the read under
    /// it decides whether to send) until its result is written, and around
    /// every other write; an attempt abandoned in flight keeps it too. It is
    /// released between cycles, so a process that only reads never blocks
    /// the others. Derived from the state, never stored.
    fn lock_wanted(&self) -> bool {
        self.locks_store()
            && (matches!(self.state, State::Refreshing(..))
                || self.straggler.is_some()
                || self.write_wanted().is_some())
    }

    fn settle_store(&mut self) {
        let store = &self.store;
        if store.in_flight.is_some() || store.retry_at.is_some() {
            return;
        }
        let lock_wanted = self.lock_wanted();
        if self.store.locked && !lock_wanted {
            self.store.locked = false;
            self.outbox.commands.push_back(Command::UnlockStore);
            return;
        }
        let op = if lock_wanted && !self.store.locked {
            StoreOp::Lock
        } else if self.load_wanted() {
            StoreOp::Load
        } else {
            match self.write_wanted() {
                Some(op) => op,
                None => return,
            }
        };
        let id = self.store.next_op;
        let command = match op {
            StoreOp::Lock => Command::LockStore { op: id },
            StoreOp::Load => Command::LoadStore { op: id },
            StoreOp::Clear => Command::ClearStore { op: id },
            StoreOp::Persist(_) => {
                let Some(tokens) = self.tokens() else { return };
                Command::Persist { op: id, session: self.to_stored(tokens) }
            }
        };
        self.store.next_op = id.next();
        self.store.in_flight = Some((id, op));
        self.outbox.commands.push_back(command);
    }

    fn to_stored(&self, tokens: &TokenSet) -> StoredSession {
        let (anchor_mono, anchor_unix) = self.wall_anchor;
        StoredSession {
            generation: tokens.generation,
            access_token: tokens.access.clone(),
            token_type: tokens.token_type.clone(),
            access_expires_at: tokens
                .expiry
                .map(|e| anchor_unix.saturating_add(e.expires_at.saturating_duration_since(anchor_mono))),
            access_lifetime: tokens.expiry.and_then(|e| e.lifetime),
            refresh_token: tokens.refresh.clone(),
            scope: tokens.scope.clone(),
        }
    }

    fn publish(&mut self) {
        let now = self.now;
        let grant_before_persist = self.planted(Plant::GrantBeforePersist);
        let offer = self
            .tokens()
            .filter(|t| t.usable_at(now) && (grant_before_persist || self.store.holds == Holds::Session(t.generation)));
        let generation = offer.map(|t| t.generation);
        if generation != self.published {
            let grant = offer.and_then(|t| t.grant_at(now));
            self.published = generation;
            self.outbox.commands.push_back(Command::Publish(grant));
        }
    }

    /// What stands before the next refresh of `tokens`, for the state (U7).
    fn renewal_of(&self, tokens: &TokenSet) -> Renewal {
        if tokens.refresh.is_none() {
            return Renewal::NoRefreshToken;
        }
        let Some(failure) = tokens.last_failure.as_ref().filter(|_| !self.planted(Plant::StateHidesFailure)) else {
            return Renewal::Ready;
        };
        let retry_at = failure.hold_until;
        match &failure.reason {
            FailReason::RefreshUnavailable(failure) => Renewal::Failing { failure: failure.clone(), retry_at },
            FailReason::Rejected(rejected) => Renewal::Misconfigured { rejected: rejected.clone(), retry_at },
            FailReason::InteractionRequired(error) => Renewal::InteractionRequired(error.clone()),
            // A cycle ends only with the reasons above, or for want of a
            // refresh token (answered above).
            FailReason::MissingRefreshToken
            | FailReason::LoggedOut(_)
            | FailReason::StoreUnavailable
            | FailReason::TimedOut
            | FailReason::TooManyWaiters => Renewal::Ready,
        }
    }

    fn view_now(&self) -> StateView {
        match &self.state {
            State::Loading => StateView::Loading,
            State::Valid(t) => StateView::Valid { generation: t.generation, renewal: self.renewal_of(t) },
            State::Expired(t) => StateView::Expired { generation: t.generation, renewal: self.renewal_of(t) },
            State::Refreshing(t, _) => StateView::Refreshing { generation: t.generation },
            State::LoggedOut(LogoutCause::NoSession) => StateView::NoSession,
            State::LoggedOut(cause) => StateView::LoggedOut { cause: cause.clone() },
        }
    }
}

/// Equal jitter: between half and all of the backoff ceiling.
fn jittered(rng: &mut SplitMix64, backoff: Backoff, attempt: u32) -> Duration {
    let ceiling = backoff.ceiling(attempt);
    let half = ceiling / 2;
    let spread = u64::try_from((ceiling - half).as_nanos()).unwrap_or(u64::MAX);
    half + Duration::from_nanos(rng.below(spread.saturating_add(1)))
}

impl Outbox {
    fn send_refresh(&mut self, now: MonoTime, refresh_token: RefreshToken, attempt: u32, cycle: u64) -> RefreshId {
        let id = self.next_refresh;
        self.next_refresh = id.next();
        if self.recent_sends.len() == RECENT_SENDS {
            self.recent_sends.pop_front();
        }
        self.recent_sends.push_back(SentRefresh { id, at: now, answered: false, settled: false, cycle });
        self.commands.push_back(Command::SendRefresh { id, refresh_token, attempt });
        id
    }

    fn sent(&self, id: RefreshId) -> Option<&SentRefresh> {
        self.recent_sends.iter().find(|sent| sent.id == id)
    }

    /// The earliest attempt from `since` on (other than `except`) that may
    /// have been redeemed unseen: a later answer for the same refresh token
    /// may be a grace replay of it (U8).
    fn first_unsettled(&self, since: RefreshId, except: Option<RefreshId>) -> Option<MonoTime> {
        self.recent_sends
            .iter()
            .filter(|sent| sent.id >= since && Some(sent.id) != except && !sent.settled)
            .map(|sent| sent.at)
            .min()
    }

    /// Records an answer to `id`; false when it is not the first (or `id` is
    /// unknown, or too old to be remembered): such an answer is ignored.
    fn first_answer(&mut self, id: RefreshId) -> bool {
        match self.recent_sends.iter_mut().find(|sent| sent.id == id) {
            Some(sent) if !sent.answered => {
                sent.answered = true;
                true
            }
            _ => false,
        }
    }

    fn fail(&mut self, callers: Vec<CallerId>, reason: FailReason) {
        if !callers.is_empty() {
            self.commands.push_back(Command::Fail { callers, reason });
        }
    }
}

impl StoreSync {
    /// Failed `attempts` times in a row: waiters stop waiting for the store,
    /// though writes go on being retried at the slowest backoff.
    fn exhausted(&self) -> bool {
        self.failures >= self.attempts
    }

    /// New demand: retry at once, and with the fast backoff again.
    fn revive(&mut self) {
        if self.exhausted() {
            self.failures = 0;
            self.retry_at = None;
        }
    }

    fn succeeded(&mut self) {
        self.in_flight = None;
        self.failures = 0;
        self.retry_at = None;
    }

    /// Counts a failure and schedules the retry; returns whether the store is now exhausted.
    fn failed(&mut self, now: MonoTime, backoff: &Backoff, rng: &mut SplitMix64) -> bool {
        self.failures = self.failures.saturating_add(1);
        self.retry_at = Some(now.saturating_add(jittered(rng, *backoff, self.failures)));
        self.exhausted()
    }
}

impl TokenSet {
    /// Whether `stored` is these tokens, as this session wrote or read them.
    fn stored_as(&self, stored: &StoredSession) -> bool {
        stored.generation == self.generation && same_refresh(&stored.refresh_token, &self.refresh)
    }

    /// Whether these tokens may serve a waiter with `needs`, while cycle
    /// `running` runs (if one does).
    fn satisfies(&self, needs: Needs, running: Option<u64>, straggling: bool) -> bool {
        match needs {
            Needs::Any => true,
            Needs::CycleFrom(n) => self.cycle >= n,
            Needs::NoRefreshInFlight => running.is_none() && !straggling,
            Needs::Durable => false,
        }
    }

    /// Whether the refresh token held is `token`.
    fn holds_refresh(&self, token: &RefreshToken) -> bool {
        self.refresh.as_ref().is_some_and(|held| held.same_as(token))
    }

    fn usable_at(&self, now: MonoTime) -> bool {
        self.access.is_some()
            && !self.access_rejected
            && !self.refresh_first
            && self.expiry.is_none_or(|e| now < e.usable_until)
    }

    /// When a proactive refresh is due (never without a refresh token): after
    /// a failed cycle, no sooner than its paced background retry.
    fn refresh_due_at(&self) -> Option<MonoTime> {
        self.refresh.as_ref()?;
        let due = self.expiry?.refresh_at;
        if self.awaits_user() {
            return None;
        }
        Some(self.last_failure.as_ref().map_or(due, |f| due.max(f.proactive_at)))
    }

    /// The last cycle asked for the user's interaction (see
    /// [`FailReason::InteractionRequired`]): only the user can answer that, so
    /// no timer retries it; a login or a forced refresh does.
    fn awaits_user(&self) -> bool {
        self.last_failure.as_ref().is_some_and(|f| matches!(f.reason, FailReason::InteractionRequired(_)))
    }

    /// Whether a failed cycle holds new ones back at `now`.
    fn held_at(&self, now: MonoTime) -> bool {
        self.awaits_user() || self.last_failure.as_ref().and_then(|f| f.hold_until).is_some_and(|until| now < until)
    }

    /// The grant a caller may be handed at `now`, if the token is usable.
    fn grant_at(&self, now: MonoTime) -> Option<AccessGrant> {
        let access = self.access.as_ref().filter(|_| self.usable_at(now))?;
        Some(AccessGrant {
            generation: self.generation,
            access_token: access.clone(),
            token_type: self.token_type.clone(),
            usable_until: self.expiry.map(|e| e.usable_until),
        })
    }
}

/// Whether two optional refresh tokens are the same (both absent included).
fn same_refresh(a: &Option<RefreshToken>, b: &Option<RefreshToken>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.same_as(b),
        (None, None) => true,
        _ => false,
    }
}

impl Expiry {
    /// A token issued for `lifetime` by a request sent at `base`.
    fn issued(base: MonoTime, lifetime: Duration, config: &SessionConfig, rng: &mut SplitMix64) -> Self {
        Self::plan(base.saturating_add(lifetime), Some(lifetime), config, rng)
    }

    /// Plans a token's life from its expiry and the lifetime it was issued
    /// with. The refresh window is the user's: the token is refreshed
    /// `refresh_margin` (plus jitter) before it expires. Only a token issued
    /// for no longer than the margin has its margins shrunk (refresh at half
    /// its life, stop using it at three quarters), so a short token is still
    /// used before it is refreshed and refreshes cannot loop; jitter never
    /// takes more than half of what lies beyond the margin. An unknown issued
    /// lifetime (an old blob) gets the whole margin. The proactive refresh
    /// waits for a quarter of the life at least (see [`Expiry::refresh_at`]).
    fn plan(expires_at: MonoTime, lifetime: Option<Duration>, config: &SessionConfig, rng: &mut SplitMix64) -> Self {
        let jitter_nanos = u64::try_from(config.refresh_jitter.as_nanos()).unwrap_or(u64::MAX);
        let jitter = Duration::from_nanos(rng.below(jitter_nanos.saturating_add(1)));
        let margin = config.refresh_margin;
        let (refresh_margin, safety) = match lifetime {
            Some(lifetime) if lifetime <= margin => (lifetime / 2, config.expiry_safety.min(lifetime / 4)),
            Some(lifetime) => {
                (margin.saturating_add(jitter.min((lifetime - margin) / 2)), config.expiry_safety.min(lifetime / 4))
            }
            None => (margin.saturating_add(jitter), config.expiry_safety),
        };
        let window_at = expires_at.saturating_sub(refresh_margin);
        let quarter_life = lifetime.map(|lifetime| expires_at.saturating_sub(lifetime).saturating_add(lifetime / 4));
        Self {
            expires_at,
            usable_until: expires_at.saturating_sub(safety),
            window_at,
            refresh_at: quarter_life.map_or(window_at, |floor| window_at.max(floor)),
            lifetime,
        }
    }
}

#[cfg(test)]
mod tests;
