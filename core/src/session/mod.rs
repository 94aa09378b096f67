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
//! The code is split by concern: this file holds the machine's state and its
//! inputs and outputs; `refresh.rs` the refresh cycles, login and logout;
//! `store.rs` the store and its write-ahead gate; `settle.rs` what follows
//! every input (answering waiters, starting what the state wants,
//! publishing); `tokens.rs` the tokens held and their expiry.
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

mod callers;
mod config;
mod logout;
mod plant;
mod refresh;
mod settle;
mod state_view;
mod store;
mod tokens;
mod types;

use core::mem;
use core::time::Duration;
use std::collections::VecDeque;

pub use callers::{Callers, CallersIntoIter};
pub use config::{Backoff, ConfigError, SessionConfig};
pub use plant::Plant;
pub use state_view::{Renewal, StateView};
use store::ClockAnchor;
pub use types::{
    AccessGrant, AttemptFailure, Command, Event, FailReason, Ignored, Io, LogoutCause, NewSession, ProofNeeded,
    StoreError, Timeout, TransportFailure,
};

use crate::dpop::{DpopKey, DpopNonce, MAX_NONCE_RETRIES};
use crate::ids::{CallerId, Generation, RefreshId, RevocationId, StoreOpId};
use crate::oauth::{
    Classified, Malformed, MalformedReason, OAuthError, Rejected, TokenResponse, Transient, TransientCause,
};
use crate::rng::SplitMix64;
use crate::stored::StoredSession;
use crate::time::{BootTime, MonoTime, UnixTime};
use crate::token::{AccessToken, Fingerprint, RefreshToken, TokenType};

/// The session machine. See the [module docs](self).
#[derive(Debug)]
pub struct Session {
    config: SessionConfig,
    /// `config.wait_bound()`, worked out once: every caller's deadline adds it.
    wait_bound: Duration,
    rng: SplitMix64,
    /// The latest time seen; input time never moves it back.
    now: MonoTime,
    /// A moment known on every clock, to turn stored expiries into session time and back.
    anchor: ClockAnchor,
    state: State,
    /// Callers waiting, oldest first. Deadlines are arrival + a constant, so
    /// they are in order too, and so are their numbers.
    waiters: VecDeque<Waiter>,
    /// The number the next waiter gets.
    next_waiter: u64,
    /// What the waiters numbered up to `.1` were last judged by: all of them
    /// still waiting were kept. While it holds they would be kept again, so
    /// answering looks only at later ones (a herd waiting through a refresh
    /// was judged whole on every arrival: quadratic in the herd).
    waiters_kept: Option<(settle::Verdicts, u64)>,
    store: StoreSync,
    outbox: Outbox,
    /// The highest generation this machine has seen or made.
    last_generation: Generation,
    /// An attempt abandoned in flight (an earlier attempt's late success
    /// ended its cycle, or its deadline ended the cycle or passed in a
    /// sleep): it counts as in flight until answered or past its window, so
    /// no new refresh starts alongside it (C1).
    straggler: Option<(RefreshId, MonoTime)>,
    /// How many wakes have restarted the straggler's window, at most
    /// [`MAX_STRAGGLER_WAKES`]: a driver late at every call (one that polls
    /// rather than arms a timer) looks like one waking at every call, and
    /// would otherwise hold the straggler in flight forever.
    straggler_wakes: u8,
    /// Refresh cycles started so far; the running one, if any, is this number.
    cycles_started: u64,
    /// The token endpoint's latest DPoP nonce: the next proofs carry it.
    dpop_nonce: Option<DpopNonce>,
    /// `use_dpop_nonce` challenges answered in a row by sending the attempt
    /// again (at most [`MAX_NONCE_RETRIES`]).
    nonce_retries: u32,
    /// Input that made no sense any more (see [`Session::ignored`]).
    ignored: Ignored,
    /// What the last [`Command::Publish`] offered: its generation and usable time.
    published: Option<(Generation, Option<MonoTime>)>,
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
    /// Logout requests so far, and how many of them [`Command::LogoutFinished`] answered.
    logouts: Logouts,
}

/// The most replaced grants kept for revocation; older ones are revoked at once.
const MAX_REPLACED_GRANTS: usize = 4;

/// How long an attempt whose deadline ended its cycle still counts as in
/// flight: long enough for the driver's own timeout, which starts just after
/// the machine's, and for an answer read on waking from a suspend; short
/// enough that a lost answer holds nobody back for long.
const LATE_ANSWER_WINDOW: Duration = Duration::from_secs(1);

/// The most wakes an abandoned attempt's answer window restarts for: two
/// cover a sleep ended and begun again before the answer was read (tier-1
/// seed 9220947), and a driver always late still retries within a few calls.
const MAX_STRAGGLER_WAKES: u8 = 2;

/// The most revocations a logout waits for; past it, the oldest is not waited for.
const MAX_REVOCATIONS_AWAITED: usize = 8;

#[derive(Debug, Default)]
struct Logouts {
    requested: u64,
    answered: u64,
    /// When the oldest logout not answered yet was requested.
    waiting_since: Option<MonoTime>,
}

#[derive(Debug)]
struct Outbox {
    commands: VecDeque<Command>,
    next_refresh: RefreshId,
    next_revocation: RevocationId,
    /// Revocations sent and not yet ended, oldest first, each with the time
    /// a logout stops waiting for it.
    revocations: VecDeque<(RevocationId, MonoTime)>,
    /// The latest refreshes sent, newest last, at most [`RECENT_SENDS`]: when
    /// each went out (its answer's lifetime counts from there) and whether it
    /// was answered (one request gets one answer; a second is a duplicate).
    recent_sends: VecDeque<SentRefresh>,
    /// Refresh tokens an answer this session took rotated away, newest
    /// last, at most [`ROTATED_AWAY_REMEMBERED`]: each is behind the tokens
    /// held, whoever stores it again (another process may walk the same
    /// chain through grace replays and write each link back, renumbered).
    /// Kept apart from the sends, and longer: tier-2 seed 1025884 wrote back
    /// a token rotated away 33 sends earlier, past the sends' memory.
    rotated_away: VecDeque<Fingerprint>,
}

#[derive(Debug)]
struct SentRefresh {
    id: RefreshId,
    at: MonoTime,
    /// The refresh token it presented, by fingerprint.
    presented: Fingerprint,
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

/// How many rotated-away refresh tokens are remembered (8 bytes each).
const ROTATED_AWAY_REMEMBERED: usize = 256;

#[derive(Debug)]
struct Waiter {
    caller: CallerId,
    deadline: MonoTime,
    needs: Needs,
    /// Its place in arrival order (see `Session::waiters_kept`).
    number: u64,
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
    /// The refresh token came from a server's answer that was otherwise
    /// unusable (a rotation salvaged from a malformed success): like
    /// `answered_by`, it may be newer than anything stored.
    salvaged: bool,
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
    /// A write of these tokens failed in a way that may have landed them
    /// all the same (any failure but a fenced write): another process may
    /// then have read them, rotated them, and replaced them since.
    write_may_have_landed: bool,
    /// The store has held `refresh` (read from it, or written with an
    /// earlier generation that an answer keeping the token replaced): a
    /// refresh presenting it moves nothing the store holds out of date.
    refresh_stored: bool,
    /// The login these tokens descend from (see [`StoredSession`]'s field).
    lineage: Option<Fingerprint>,
    /// These tokens come from a late answer adopted while this process did
    /// not hold the shared store's lock: another process may since have
    /// redeemed the same refresh token under the lock and written a newer
    /// rotation, which then wins over this one.
    answered_unlocked: bool,
    /// The DPoP key the tokens are bound to (`None`: bearer). It comes with
    /// the tokens from a login or the store, and refreshes keep it: every
    /// refresh presenting `refresh` carries a proof by it.
    dpop_key: Option<DpopKey>,
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
    /// The next attempt waits for the write of the refresh token it will
    /// present: one salvaged from an unusable answer within the cycle
    /// (write-ahead, C3; a crash before the write would leave the store
    /// with the token the server rotated away). The store's answer moves it on.
    AwaitingWrite,
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
    /// The login (lineage) of the session `holds` names, where known.
    holds_lineage: Option<Fingerprint>,
    /// What the store was known to hold before a failed write made it
    /// unknown: a store found empty that last held a session was cleared by
    /// another process.
    known_before_failure: Holds,
    /// The login of the session `known_before_failure` names, where known:
    /// a rotation of it found later is that login moving on, not a sign
    /// that the failed write landed (U9, tier-1 seed 8010096).
    lineage_before_failure: Option<Fingerprint>,
    failures: u32,
    retry_at: Option<MonoTime>,
    /// The most failures in a row before waiters are failed.
    attempts: u32,
    /// This process holds the store's cross-process lock.
    locked: bool,
    /// While a [`StoreOp::Lock`] is in flight: when its wait ends
    /// ([`SessionConfig::lock_wait`]) and the store counts as unavailable.
    lock_wait_ends: Option<MonoTime>,
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
    /// A session that starts by reading the store ([`Io::LoadStore`]).
    ///
    /// `seed` drives every random choice (jitter), so the same seed and inputs
    /// give the same commands (C8). `now` and `unix_now` are the same moment on
    /// the monotonic and the wall clock.
    pub fn new(config: SessionConfig, seed: u64, now: MonoTime, unix_now: UnixTime) -> Result<Self, ConfigError> {
        config.validate()?;
        let store_attempts = config.store_backoff.attempts;
        let mut session = Self {
            wait_bound: config.wait_bound(),
            config,
            rng: SplitMix64::new(seed),
            now,
            anchor: ClockAnchor::new(now, unix_now, None),
            state: State::Loading,
            waiters: VecDeque::new(),
            next_waiter: 0,
            waiters_kept: None,
            store: StoreSync {
                next_op: StoreOpId(1),
                in_flight: None,
                holds: Holds::Unknown,
                holds_lineage: None,
                known_before_failure: Holds::Unknown,
                lineage_before_failure: None,
                failures: 0,
                retry_at: None,
                attempts: store_attempts,
                locked: false,
                lock_wait_ends: None,
            },
            outbox: Outbox {
                commands: VecDeque::new(),
                next_refresh: RefreshId(1),
                next_revocation: RevocationId(1),
                revocations: VecDeque::new(),
                recent_sends: VecDeque::new(),
                rotated_away: VecDeque::new(),
            },
            last_generation: Generation(0),
            straggler: None,
            straggler_wakes: 0,
            cycles_started: 0,
            dpop_nonce: None,
            nonce_retries: 0,
            ignored: Ignored::default(),
            replaced_grants: Vec::new(),
            revoke_after_clear: None,
            logouts: Logouts::default(),
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

    /// Whether the store is owed a write: tokens it does not hold yet (a
    /// rotation whose write failed), or a logout's clear. A driver that is
    /// stopping (its process shutting down) keeps firing the machine's timer
    /// a while longer when this holds, so that the write is retried rather
    /// than the rotation lost.
    pub fn store_write_owed(&self) -> bool {
        self.write_wanted().is_some()
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
        // A deadline due at this very instant is kept here: the timer for it
        // comes after this input, and no sooner than a millisecond on.
        self.fail_expired_waiters();
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
            Event::RefreshCompleted { id, outcome, dpop_nonce } => {
                // Whatever the answer, a newer nonce replaces the one held.
                if dpop_nonce.is_some() {
                    self.dpop_nonce = dpop_nonce;
                }
                self.on_refresh_completed(id, outcome);
            }
            Event::RefreshFailed { id, failure } => {
                if self.in_flight(id) {
                    self.attempt_failed(AttemptFailure::Transport(failure), failure.outcome_unknown(), None);
                } else {
                    self.ignore("a failure of an attempt no longer in flight");
                }
            }
            Event::StoreLoaded { op, stored, unix_now, boot_now } => {
                self.on_store_loaded(op, stored, ClockAnchor::new(self.now, unix_now, boot_now));
            }
            Event::StoreLocked { op, stored, unix_now, boot_now } => {
                self.on_store_locked(op, stored, ClockAnchor::new(self.now, unix_now, boot_now));
            }
            Event::StoreWritten { op } => self.on_store_written(op),
            Event::StoreFailed { op, error } => self.on_store_failed(op, error),
            Event::LogoutRequested => {
                self.logouts.waiting_since.get_or_insert(self.now);
                self.logouts.requested += 1;
                self.log_out(LogoutCause::Requested);
            }
            Event::RevocationEnded { id } => self.on_revocation_ended(id),
            Event::LoggedIn { caller, session } if session.binding_mismatch() => {
                self.outbox.fail(Callers::from([caller]), FailReason::DpopMismatch);
            }
            Event::LoggedIn { caller, session } => {
                self.on_logged_in(session);
                self.add_waiter(caller, Needs::Durable);
            }
        }
        self.settle();
    }

    /// Fires whatever timers are due at `now`. Calling it early is harmless.
    pub fn handle_timeout(&mut self, now: MonoTime) {
        // Timers slept through (a suspend, a stalled process) fire on waking
        // beside inputs that came meanwhile: an answer to an attempt whose
        // deadline passed in the sleep may be waiting to be read. Such an
        // attempt counts as in flight for a window from the wake, so that no
        // retry presents its token first (L2, tier-1 seed 9220947: the
        // retry presented a token the waiting answer had rotated, outside
        // the server's grace, and reuse detection ended the family).
        let woke_late = self.poll_timeout().is_some_and(|due| due.at.saturating_add(LATE_ANSWER_WINDOW) < now);
        self.advance(now);
        let now = self.now;
        self.fail_expired_waiters();
        self.straggler = match self.straggler {
            Some((id, _)) if woke_late && self.straggler_wakes < MAX_STRAGGLER_WAKES => {
                self.straggler_wakes += 1;
                Some((id, now.saturating_add(LATE_ANSWER_WINDOW)))
            }
            straggler => straggler.filter(|(_, deadline)| now < *deadline),
        };
        let due = match &self.state {
            State::Refreshing(_, cycle) => match cycle.phase {
                Phase::InFlight { id, deadline } => (deadline <= now).then_some(Some(id)),
                Phase::Backoff { until } => (until <= now).then_some(None),
                Phase::Locking | Phase::AwaitingWrite | Phase::Rereading { .. } => None,
            },
            _ => None,
        };
        match due {
            Some(Some(timed_out)) => {
                self.attempt_failed(AttemptFailure::Transport(TransportFailure::Timeout), true, None);
                if woke_late || !matches!(self.state, State::Refreshing(..)) {
                    // The cycle ended on this deadline (or it was slept
                    // through), but the driver's own timeout fires just after
                    // it, and after a suspend both fire on waking beside an
                    // answer already received: until the attempt is reported
                    // or the window closes, it counts as in flight, and a
                    // shared store's lock stays held for its answer. Unlocked
                    // at once, another process would present the token that
                    // answer rotated (L2).
                    self.abandon(timed_out, now.saturating_add(LATE_ANSWER_WINDOW));
                }
            }
            Some(None) => self.send_next_attempt(),
            None => {}
        }
        if let Some(op) = self.store.lock_wait_over(now) {
            self.give_up_lock_wait(op);
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
                Phase::Locking | Phase::AwaitingWrite | Phase::Rereading { .. } => {}
            },
            State::Valid(tokens) => {
                // Offered only while it could start a refresh: otherwise the
                // straggler's window, above, or the store's answer wakes the
                // session, and an open window would be due again and again
                // (the bound_session_ops input `refresh-window-while-unwritten`).
                if self.refresh_may_start(tokens) {
                    consider(tokens.refresh_due_at(), "the refresh window opens");
                }
                consider(tokens.expiry.map(|e| e.usable_until), "the access token stops being usable");
            }
            State::Loading | State::Expired(_) | State::LoggedOut(_) => {}
        }
        if self.store.in_flight.is_none() {
            consider(self.store.retry_at, "the store is tried again");
        }
        if self.logout_waits() {
            let revocation = self.outbox.revocations.iter().map(|(_, until)| *until).min();
            consider(revocation, "a logout stops waiting for its revocation");
            consider(self.logout_gives_up_at(), "a logout stops waiting for its store");
        }
        if matches!(self.store.in_flight, Some((_, StoreOp::Lock))) {
            consider(self.store.lock_wait_ends, "the wait for the store's lock ends");
        }
        // Every timer above is consumed or moved by `handle_timeout`; clamping
        // to just after now keeps a driver from busy-looping even if one is not.
        let floor = self.now.saturating_add(Duration::from_millis(1));
        next.map(|due| Timeout { at: due.at.max(floor), ..due })
    }

    /// Callers whose deadline has come are told they timed out.
    fn fail_expired_waiters(&mut self) {
        // Checked first: this runs on every input, the fast one included.
        if self.waiters.front().is_none_or(|waiter| waiter.deadline > self.now) {
            return;
        }
        let mut expired = Callers::default();
        while let Some(waiter) = self.waiters.front().filter(|w| w.deadline <= self.now) {
            expired.push(waiter.caller);
            self.waiters.pop_front();
        }
        self.outbox.fail(expired, FailReason::TimedOut);
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
            self.outbox.fail(Callers::from([caller]), FailReason::TooManyWaiters);
            return;
        }
        // Demand revives a store that gave up: it may work again now.
        self.store.revive();
        let deadline = self.now.saturating_add(self.wait_bound);
        let number = self.next_waiter;
        self.next_waiter += 1;
        self.waiters.push_back(Waiter { caller, deadline, needs, number });
    }

    /// A forced refresh (the app's word that the user acted) still waits.
    fn forced_refresh_waiting(&self) -> bool {
        self.waiters.iter().any(|w| matches!(w.needs, Needs::CycleFrom(_)))
    }

    /// The refresh cycle running now, if any.
    fn running_cycle(&self) -> Option<u64> {
        matches!(self.state, State::Refreshing(..)).then_some(self.cycles_started)
    }
}
