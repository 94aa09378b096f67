//! A deterministic world: the session machine and the reference authority,
//! joined by a simulated network and store on a virtual clock, with the
//! invariant checkers watching every step.
//!
//! Everything that happens is drawn from one seed, so a seed replays the same
//! run byte for byte. Tests script single fates ([`World::script`]); campaigns
//! sample [`Faults`] per seed. The loop is bounded by time and by a step count.
//! This is tier 1 of the simulation: no threads, no runtime, no sockets.

use core::fmt::Write as _;
use core::time::Duration;
use std::collections::{BTreeMap, VecDeque};

use secrecy::{ExposeSecret, SecretString};

use crate::authority::{Authority, AuthorityConfig, AuthorityPlant, PolicyRefusal, Refusal};
use crate::check::{
    AuthorityMonitor, ClientMonitor, Invariant, LogoutEvidence, SharedStoreMonitor, Violation, judge_logout,
};
use freshen_core::ids::{CallerId, Generation, RefreshId, StoreOpId};
use freshen_core::oauth::{self, Classified};
use freshen_core::rng::SplitMix64;
use freshen_core::session::{
    AccessGrant, Command, Event, FailReason, LogoutCause, NewSession, Session, SessionConfig, StoreError,
    TransportFailure,
};
use freshen_core::stored::StoredSession;
use freshen_core::time::{MonoTime, UnixTime};
use freshen_core::token::RefreshToken;

/// The client id the world's session uses.
pub const CLIENT_ID: &str = "freshen-sim";

/// What happens to one refresh request on the network and at the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fate {
    /// Delivered both ways after the normal latency.
    Deliver,
    /// Lost before the server saw it.
    DropRequest,
    /// The server acted on it; the answer was lost.
    DropResponse,
    /// The server acted on it; the answer arrived mangled (a proxy's page).
    MangleResponse,
    /// The answer arrives twice.
    DuplicateResponse,
    /// The answer is held up by this much more than the normal latency.
    Delay(Duration),
    /// The server answered 503 without acting on it.
    ServerError,
    /// The server answered 429 with this `Retry-After`, without acting on it.
    RateLimited(Duration),
    /// The connection was refused (the client learns at once).
    Refused,
    /// The server refused by policy without acting on it (see [`PolicyRefusal`]).
    PolicyRefusal(PolicyRefusal),
}

/// What happens to one store write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreFate {
    /// It lands and is acknowledged.
    Write,
    /// It fails before anything lands.
    FailBefore,
    /// It lands, but the store reports a failure.
    FailAfter,
}

/// Fault probabilities, in parts per thousand, sampled per message or per step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Faults {
    /// A refresh request is lost.
    pub drop_request: u16,
    /// A refresh answer is lost after the server committed.
    pub drop_response: u16,
    /// A refresh answer is mangled after the server committed.
    pub mangle_response: u16,
    /// A refresh answer arrives twice.
    pub duplicate_response: u16,
    /// A message is delayed by up to `max_delay` (which reorders messages).
    pub delay: u16,
    /// The server answers 503.
    pub server_error: u16,
    /// The server answers 429.
    pub rate_limit: u16,
    /// The connection is refused.
    pub refused: u16,
    /// The server refuses by policy (interaction required, invalid request,
    /// invalid client).
    pub policy_refusal: u16,
    /// A store write fails (before or after it landed).
    pub store_write_fail: u16,
    /// A store load fails.
    pub store_load_fail: u16,
    /// The client crashes at a command boundary and restarts from the store.
    pub crash: u16,
    /// The client is suspended for a while (its clock jumps on resume).
    pub clock_jump: u16,
    /// A caller logs the user out (a new login follows).
    pub logout: u16,
    /// The longest extra delay.
    pub max_delay: Duration,
}

impl Faults {
    /// No faults at all.
    pub fn none() -> Self {
        Self::default()
    }

    /// Faults drawn for a campaign seed: each kind on or off, at a drawn rate.
    pub fn sample(rng: &mut SplitMix64) -> Self {
        let mut rate = |max: u64| if rng.chance(1, 2) { rng.below(max + 1) as u16 } else { 0 };
        Self {
            drop_request: rate(150),
            drop_response: rate(150),
            mangle_response: rate(60),
            duplicate_response: rate(100),
            delay: rate(200),
            server_error: rate(150),
            rate_limit: rate(80),
            refused: rate(100),
            policy_refusal: rate(30),
            store_write_fail: rate(150),
            store_load_fail: rate(150),
            crash: rate(8),
            clock_jump: rate(4),
            logout: rate(10),
            max_delay: Duration::from_millis(rng.below(15_000)),
        }
    }
}

/// What the store holds when a world starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// Nothing: the session starts with no session.
    Empty,
    /// A token pair.
    Pair,
    /// A refresh token alone: the first caller refreshes.
    RefreshOnly,
    /// An access token alone: served while usable, then a login is needed.
    AccessOnly,
}

/// How callers arrive during the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Demand {
    /// Mean time between two callers.
    pub mean_interval: Duration,
}

/// Everything that defines a world, besides its seed.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct WorldConfig {
    /// The session's configuration.
    pub session: SessionConfig,
    /// The authority's configuration.
    pub authority: AuthorityConfig,
    /// A broken authority, to prove the authority checks.
    pub authority_plant: Option<AuthorityPlant>,
    /// Faults during the safety phase.
    pub faults: Faults,
    /// One-way network latency.
    pub latency: Duration,
    /// Time a store operation takes.
    pub store_latency: Duration,
    /// Random callers, if any.
    pub demand: Option<Demand>,
    /// How long faults are injected.
    pub safety_phase: Duration,
    /// How long the healed world then runs; long enough for every bound.
    pub liveness_phase: Duration,
    /// What the store holds when the world starts.
    pub start: Start,
    /// Client processes sharing the store (and its lock), each with its own
    /// session, callers and crashes. More than one needs
    /// [`SessionConfig::shared_store`] to be safe; without it, that is the
    /// bug the checkers must catch.
    pub processes: usize,
    /// Keep a printable trace.
    pub trace: bool,
    /// The most steps a run may take.
    pub max_steps: u64,
}

impl WorldConfig {
    /// A quiet world: no faults, no random callers, logged in, 50 ms latency.
    pub fn quiet() -> Self {
        let session = SessionConfig::default();
        let liveness_phase = session.wait_bound() + Duration::from_secs(60);
        Self {
            session,
            authority: AuthorityConfig::default(),
            authority_plant: None,
            faults: Faults::none(),
            latency: Duration::from_millis(50),
            store_latency: Duration::from_millis(5),
            demand: None,
            safety_phase: Duration::from_secs(3600),
            liveness_phase,
            start: Start::Pair,
            processes: 1,
            trace: false,
            max_steps: 1_000_000,
        }
    }

    /// A campaign world for `seed`: authority knobs, faults and demand all
    /// drawn from it.
    pub fn sampled(seed: u64) -> Self {
        let mut rng = SplitMix64::new(seed ^ 0x5EED_F00D_CAFE_0001);
        let mut config = Self::quiet();
        let access_ttl = Duration::from_secs(30 + rng.below(600));
        config.authority = AuthorityConfig {
            access_ttl,
            refresh_ttl: Duration::from_secs(600 + rng.below(4 * 3600)),
            family_lifetime: Duration::from_secs(3600 + rng.below(48 * 3600)),
            rotation: !rng.chance(1, 5),
            grace: match rng.below(6) {
                0 | 1 => Duration::ZERO,
                // Longer than a whole retry cycle: L1 applies.
                2 => Duration::from_secs(300 + rng.below(300)),
                _ => Duration::from_secs(rng.below(120)),
            },
            grace_reuses: 1 + rng.below(6) as u32,
            grace_replay: match rng.below(3) {
                0 => crate::authority::GraceReplay::SamePair,
                1 => crate::authority::GraceReplay::FreshPair,
                _ => crate::authority::GraceReplay::SamePairFullLifetime,
            },
            reuse_detection: !rng.chance(1, 4),
            revoke_previous_access: rng.chance(1, 3),
            ..AuthorityConfig::default()
        };
        config.faults = Faults::sample(&mut rng);
        config.latency = Duration::from_millis(1 + rng.below(300));
        config.demand = Some(Demand { mean_interval: Duration::from_millis(200 + rng.below(20_000)) });
        config.safety_phase = Duration::from_secs(600 + rng.below(3 * 3600));
        config.start = if rng.chance(1, 10) {
            Start::Empty
        } else {
            // Sessions that are not a full pair: a refresh token alone (its
            // access token dropped), or an access token alone (no refresh
            // token issued).
            match rng.below(16) {
                0 | 1 => Start::RefreshOnly,
                2 => Start::AccessOnly,
                _ => Start::Pair,
            }
        };
        // A third of the worlds run the shared-store protocol (lock, read,
        // refresh, write, unlock): alone, it must keep every invariant too.
        config.session.shared_store = rng.chance(1, 3);
        // Half of those are several processes sharing the store: a CLI run
        // twice at once, an app and its helper.
        if config.session.shared_store && rng.chance(1, 2) {
            config.processes = 2 + rng.below(3) as usize;
        }
        config
    }

    /// The same world with a planted bug, shaped so the bug can show: a
    /// missing cross-process lock needs processes sharing a store (two to
    /// four, configured to share); the dead-token plants need servers that
    /// behave like Django OAuth Toolkit.
    #[must_use]
    pub fn with_plant(mut self, plant: freshen_core::session::Plant) -> Self {
        match plant {
            freshen_core::session::Plant::NoCrossProcessLock => {
                self.session.shared_store = true;
                self.processes = self.processes.max(2 + (self.safety_phase.as_secs() % 3) as usize);
            }
            // Shows against a server whose grace replay keeps the original
            // expiry, when answers get lost and tokens are short.
            freshen_core::session::Plant::LifetimeFromLastAttempt => {
                self.authority.grace_replay = crate::authority::GraceReplay::SamePairFullLifetime;
                self.authority.grace = self.authority.grace.max(Duration::from_secs(120));
                self.authority.access_ttl = self.authority.access_ttl.min(Duration::from_secs(60));
                self.faults.drop_response = self.faults.drop_response.max(100);
            }
            // Shows against a server that deletes the access token a refresh replaces.
            freshen_core::session::Plant::RetryIgnoresRunningRefresh => self.authority.revoke_previous_access = true,
            _ => {}
        }
        self.session.plant = Some(plant);
        self
    }
}

/// How a caller's request ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallerOutcome {
    /// It got a token of this generation (and used it).
    Granted(Generation),
    /// It got no token.
    Failed(FailReason),
    /// Its login was stored; the store held this generation.
    LoginStored(Generation),
}

/// Counts over one run, for summaries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorldStats {
    /// Refresh requests the session sent.
    pub refreshes_sent: u64,
    /// Callers answered with a token.
    pub granted: u64,
    /// Callers failed.
    pub failed: u64,
    /// Resource requests refused with 401.
    pub unauthorized: u64,
    /// Retries after a 401 that were refused too (the caller's request failed for good).
    pub retries_refused: u64,
    /// Access tokens a grace replay handed to another life than the one they
    /// were first issued to (see `World::note_issued_to`).
    pub cross_life_replays: u64,
    /// Logouts, by cause (Debug name).
    pub logouts: BTreeMap<String, u64>,
    /// Faults injected, by kind.
    pub faults: BTreeMap<&'static str, u64>,
    /// Client crashes.
    pub crashes: u64,
    /// Steps taken.
    pub steps: u64,
}

#[derive(Debug)]
enum Pending {
    CallerArrives,
    RefreshArrives {
        incarnation: u32,
        id: RefreshId,
        token: RefreshToken,
        fate: Fate,
        sent_at: MonoTime,
    },
    RefreshAnswered {
        incarnation: u32,
        id: RefreshId,
        outcome: Classified,
    },
    RefreshFailed {
        incarnation: u32,
        id: RefreshId,
        failure: TransportFailure,
    },
    StoreDone {
        incarnation: u32,
        op: StoreOpId,
        outcome: StoreOutcome,
    },
    RevokeArrives {
        token: RefreshToken,
    },
    ResourceArrives {
        incarnation: u32,
        caller: CallerId,
        grant: AccessGrant,
        healthy: bool,
        /// For a retry after a 401: when the retry was granted.
        retried_at: Option<MonoTime>,
    },
    ResourceAnswered {
        incarnation: u32,
        caller: CallerId,
        generation: Generation,
        ok: bool,
    },
    /// A process waited for the store's lock as long as it may.
    LockTimeout {
        incarnation: u32,
        op: StoreOpId,
    },
    /// The user logs in again: after a logout, or (`always`) when told the
    /// session needs a new login although it is not logged out.
    Login {
        process: usize,
        always: bool,
    },
    Resume,
}

/// A refresh the authority served: when, for which life, and whether that
/// life never read the answer.
#[derive(Clone, Copy, Debug)]
struct Redemption {
    at: MonoTime,
    life: u32,
    answer_lost: bool,
}

/// One client process: its session and what dies with it.
#[derive(Debug)]
struct Process {
    session: Session,
    /// Names this life of the process, unique across the world: messages
    /// addressed to an earlier life are dropped.
    incarnation: u32,
    monitor: ClientMonitor,
    retried: BTreeMap<CallerId, bool>,
    in_flight_write: Option<StoreWrite>,
}

#[derive(Debug)]
enum StoreOutcome {
    Loaded(Option<SecretString>),
    Locked(Option<SecretString>),
    Written { write: StoreWrite },
    Failed { landed: Option<StoreWrite> },
}

#[derive(Clone, Debug)]
enum StoreWrite {
    Put(SecretString),
    Delete,
}

/// The world. See the [module docs](self).
#[derive(Debug)]
pub struct World {
    config: WorldConfig,
    seed: u64,
    rng: SplitMix64,
    now: MonoTime,
    processes: Vec<Process>,
    next_incarnation: u32,
    authority: Authority,
    /// The store's one entry: the encoded session blob.
    blob: Option<SecretString>,
    /// The store's cross-process lock: the life holding it, and those waiting.
    lock_holder: Option<u32>,
    lock_waiters: VecDeque<(u32, StoreOpId)>,
    queue: BTreeMap<(MonoTime, u64), Pending>,
    sequence: u64,
    next_caller: u64,
    outcomes: BTreeMap<CallerId, CallerOutcome>,
    scripted: VecDeque<Fate>,
    scripted_store: VecDeque<StoreFate>,
    /// Commands carried out so far, and the count at which to crash.
    commands_seen: u64,
    crash_at_command: Option<u64>,
    /// While suspended, the client does nothing until this time.
    suspended_until: Option<MonoTime>,
    clock_jumped: bool,
    shared_monitor: SharedStoreMonitor,
    authority_monitor: AuthorityMonitor,
    /// What the world knows about the current login, for the logout rules.
    evidence: LogoutEvidence,
    /// A login is on its way for a session that ran out of tokens.
    login_pending: bool,
    /// No random caller arrives after this (set by the liveness phase).
    demand_until: Option<MonoTime>,
    /// The life that first received each access token the authority issued
    /// in a refresh, and the tokens another life got again by a grace replay.
    first_received_by: BTreeMap<freshen_core::token::Fingerprint, u32>,
    cross_life_replays: std::collections::BTreeSet<freshen_core::token::Fingerprint>,
    /// When the authority first issued each access token.
    issued_at: BTreeMap<freshen_core::token::Fingerprint, MonoTime>,
    /// Every refresh the authority served, for U8.
    redemptions: Vec<Redemption>,
    extra: Vec<Violation>,
    trace: Vec<String>,
    stats: WorldStats,
}

const UNIX_START: u64 = 1_800_000_000;

/// Appends a trace line, formatting it only when tracing is on.
macro_rules! note {
    ($world:expr, $($arg:tt)*) => {
        if $world.config.trace {
            let line = format!($($arg)*);
            $world.trace.push(line);
        }
    };
}

/// Appends a trace line about process `p`, named when there are several.
macro_rules! note_at {
    ($world:expr, $p:expr, $($arg:tt)*) => {
        if $world.config.trace {
            let line = format!($($arg)*);
            let line = if $world.processes.len() > 1 { format!("p{} {line}", $p) } else { line };
            $world.trace.push(line);
        }
    };
}

impl World {
    /// A world for `seed`.
    pub fn new(config: WorldConfig, seed: u64) -> Self {
        let mut rng = SplitMix64::new(seed);
        let authority_seed = rng.next_u64();
        let session_seed = rng.next_u64();
        let mut authority =
            Authority::new(config.authority.clone(), authority_seed).with_audit().with_plant(config.authority_plant);
        let now = MonoTime::ZERO;
        let blob = (config.start != Start::Empty).then(|| {
            let issued = authority.login(now, CLIENT_ID, None);
            let stored = match config.start {
                Start::RefreshOnly => StoredSession::refresh_only(issued.refresh_token),
                Start::AccessOnly => StoredSession::access_only(issued.access_token),
                Start::Empty | Start::Pair => StoredSession::pair(issued.access_token, issued.refresh_token),
            };
            stored.with_access_expiry(UnixTime::from_secs(UNIX_START), issued.expires_in).encode()
        });
        let count = config.processes.max(1);
        let processes = (0..count)
            .map(|index| {
                let seed = if index == 0 { session_seed } else { rng.next_u64() };
                Process {
                    session: Self::boot(&config.session, seed, now),
                    incarnation: index as u32,
                    monitor: ClientMonitor::new(&config.session),
                    retried: BTreeMap::new(),
                    in_flight_write: None,
                }
            })
            .collect();
        let mut world = Self {
            shared_monitor: SharedStoreMonitor::new(&config.session),
            authority_monitor: AuthorityMonitor::new(&config.authority),
            evidence: LogoutEvidence::default(),
            login_pending: false,
            demand_until: None,
            first_received_by: BTreeMap::new(),
            cross_life_replays: std::collections::BTreeSet::new(),
            issued_at: BTreeMap::new(),
            redemptions: Vec::new(),
            config,
            seed,
            rng,
            now,
            processes,
            next_incarnation: count as u32,
            authority,
            blob,
            lock_holder: None,
            lock_waiters: VecDeque::new(),
            queue: BTreeMap::new(),
            sequence: 0,
            next_caller: 1,
            outcomes: BTreeMap::new(),
            scripted: VecDeque::new(),
            scripted_store: VecDeque::new(),
            commands_seen: 0,
            crash_at_command: None,
            suspended_until: None,
            clock_jumped: false,
            extra: Vec::new(),
            trace: Vec::new(),
            stats: WorldStats::default(),
        };
        if world.config.demand.is_some() {
            let first = world.next_arrival();
            world.schedule(first, Pending::CallerArrives);
        }
        for p in 0..world.processes.len() {
            world.drain(p);
        }
        world
    }

    fn boot(config: &SessionConfig, seed: u64, now: MonoTime) -> Session {
        let unix_now = UnixTime::from_secs(UNIX_START).saturating_add(now.elapsed());
        match Session::new(config.clone(), seed, now, unix_now) {
            Ok(session) => session,
            // The world is built from validated configurations only.
            Err(error) => unreachable_config(error),
        }
    }

    /// The (first process's) session.
    pub fn session(&self) -> &Session {
        &self.process(0).session
    }

    /// How many client processes share the store.
    pub fn processes(&self) -> usize {
        self.processes.len()
    }

    /// Process `p`'s session.
    pub fn session_of(&self, p: usize) -> &Session {
        &self.process(p).session
    }

    #[expect(clippy::indexing_slicing, reason = "the world has at least one process, and `p` is clamped to it")]
    fn process(&self, p: usize) -> &Process {
        &self.processes[p.min(self.processes.len() - 1)]
    }

    #[expect(clippy::indexing_slicing, reason = "the world has at least one process, and `p` is clamped to it")]
    fn process_mut(&mut self, p: usize) -> &mut Process {
        let last = self.processes.len() - 1;
        &mut self.processes[p.min(last)]
    }

    /// The process living life `incarnation`, if it still does.
    fn process_of(&self, incarnation: u32) -> Option<usize> {
        self.processes.iter().position(|p| p.incarnation == incarnation)
    }

    /// The authority.
    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    /// The virtual time.
    pub fn now(&self) -> MonoTime {
        self.now
    }

    /// Counts so far.
    pub fn stats(&self) -> &WorldStats {
        &self.stats
    }

    /// The printable trace (empty unless [`WorldConfig::trace`]).
    pub fn trace(&self) -> &[String] {
        &self.trace
    }

    /// How caller `caller` ended, if it has.
    pub fn outcome(&self, caller: CallerId) -> Option<&CallerOutcome> {
        self.outcomes.get(&caller)
    }

    /// Every violation found so far, client and authority.
    pub fn violations(&self) -> Vec<Violation> {
        let mut all: Vec<Violation> = self.processes.iter().flat_map(|p| p.monitor.violations().to_vec()).collect();
        all.extend_from_slice(self.shared_monitor.violations());
        all.extend_from_slice(self.authority_monitor.violations());
        all.extend_from_slice(&self.extra);
        all
    }

    /// The next refresh requests meet these fates, in order, before any sampled fault.
    pub fn script(&mut self, fates: impl IntoIterator<Item = Fate>) {
        self.scripted.extend(fates);
    }

    /// The next store writes meet these fates, in order, before any sampled fault.
    pub fn script_store(&mut self, fates: impl IntoIterator<Item = StoreFate>) {
        self.scripted_store.extend(fates);
    }

    /// What the store holds now, decoded.
    pub fn stored(&self) -> Option<StoredSession> {
        self.blob.as_ref().and_then(|b| StoredSession::decode(b.expose_secret().as_bytes()).ok())
    }

    /// The user revokes this app's access from their account page: the
    /// stored session's family is revoked at the authority.
    pub fn revoke_stored_session(&mut self) {
        self.evidence.revoked = true;
        if let Some(refresh) = self.stored().and_then(|stored| stored.refresh_token) {
            let _ = self.authority.revoke(self.now, CLIENT_ID, refresh.expose_secret());
            self.observe_authority();
        }
    }

    /// Runs for `duration` more.
    pub fn run_for(&mut self, duration: Duration) {
        self.run_until(self.now.saturating_add(duration));
    }

    /// A caller wants a token now (or, while the client is suspended, once it
    /// resumes). Returns its id, for [`World::outcome`].
    pub fn want_token(&mut self) -> CallerId {
        self.want_token_at(0)
    }

    /// A caller in process `p` wants a token, as [`World::want_token`].
    pub fn want_token_at(&mut self, p: usize) -> CallerId {
        self.new_caller_at(p, |caller| Event::TokenWanted { caller })
    }

    /// A caller in process `p` forces a refresh now (or once a suspended
    /// client resumes), as [`World::want_token_at`].
    pub fn force_refresh_at(&mut self, p: usize) -> CallerId {
        self.new_caller_at(p, |caller| Event::RefreshWanted { caller })
    }

    /// A new caller in process `p` asks as `asks` says.
    fn new_caller_at(&mut self, p: usize, asks: impl FnOnce(CallerId) -> Event) -> CallerId {
        self.wake();
        let caller = CallerId(self.next_caller);
        self.next_caller += 1;
        self.input(p, asks(caller));
        caller
    }

    /// The user logs out now (or once a suspended client resumes).
    pub fn log_out(&mut self) {
        self.log_out_at(0);
    }

    /// The user logs out in process `p`, as [`World::log_out`].
    pub fn log_out_at(&mut self, p: usize) {
        self.wake();
        self.input(p, Event::LogoutRequested);
    }

    /// The user logs in now, or once a suspended client resumes (the login
    /// itself is instantaneous).
    pub fn log_in(&mut self) {
        self.log_in_at(0);
    }

    /// The user logs in in process `p`, as [`World::log_in`].
    pub fn log_in_at(&mut self, p: usize) {
        self.wake();
        let issued = self.authority.login(self.now, CLIENT_ID, None);
        self.observe_authority();
        self.issued_at.entry(issued.access_token.fingerprint()).or_insert(self.now);
        let new = NewSession::issued(issued.access_token, issued.expires_in, issued.refresh_token, self.now);
        // With several processes, another may still hold the old family and
        // meet its fate later: what the world knows about it stays.
        if self.processes.len() == 1 {
            self.evidence = LogoutEvidence::default();
        }
        self.new_caller_at(p, |caller| Event::LoggedIn { caller, session: new });
    }

    /// The client crashes now and restarts from the store; a store write
    /// under way lands or not, as the world's seed decides.
    pub fn crash(&mut self) {
        self.crash_process(0);
    }

    fn crash_process(&mut self, p: usize) {
        let landed = self.rng.chance(1, 2);
        self.crash_with_at(p, landed);
    }

    /// The client crashes now; a store write under way lands if `write_lands`.
    pub fn crash_with(&mut self, write_lands: bool) {
        self.crash_with_at(0, write_lands);
    }

    /// Process `p` crashes and restarts, as [`World::crash_with`]; the OS
    /// releases its lock.
    pub fn crash_with_at(&mut self, p: usize, write_lands: bool) {
        self.stats.crashes += 1;
        if let Some(write) = self.process_mut(p).in_flight_write.take().filter(|_| write_lands) {
            self.apply(write);
        }
        let dead = self.process(p).incarnation;
        let incarnation = self.next_incarnation;
        self.next_incarnation += 1;
        self.evidence.crashed = true;
        self.shared_monitor.crash(p);
        note_at!(self, p, "{} crash: incarnation {} starts", self.now, incarnation);
        let seed = self.rng.next_u64();
        let session = Self::boot(&self.config.session, seed, self.now);
        let process = self.process_mut(p);
        process.monitor.crash();
        process.retried.clear();
        process.incarnation = incarnation;
        process.session = session;
        self.lock_waiters.retain(|(waiter, _)| *waiter != dead);
        self.release_lock(dead);
        self.drain(p);
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
    fn grant_lock(&mut self, incarnation: u32, op: StoreOpId) {
        self.lock_holder = Some(incarnation);
        let at = self.now.saturating_add(self.config.store_latency);
        let outcome = StoreOutcome::Locked(self.blob.clone());
        self.schedule(at, Pending::StoreDone { incarnation, op, outcome });
    }

    /// The client crashes right after carrying out its `count`-th command from now.
    pub fn crash_at_command(&mut self, count: u64) {
        self.crash_at_command = Some(self.commands_seen + count);
    }

    /// The client is suspended for `pause` (a laptop asleep): it handles
    /// nothing meanwhile, while the server's clock runs on.
    pub fn suspend(&mut self, pause: Duration) {
        // A second suspend while asleep can only prolong the sleep.
        let resume = self.now.saturating_add(pause).max(self.suspended_until.unwrap_or(MonoTime::ZERO));
        self.clock_jumped = true;
        self.evidence.suspended = true;
        self.suspended_until = Some(resume);
        note!(self, "{} suspend until {resume}", self.now);
        self.schedule(resume, Pending::Resume);
    }

    /// Nobody uses a sleeping client: runs until a suspended client resumes.
    fn wake(&mut self) {
        if let Some(resume) = self.suspended_until {
            self.run_until(resume);
        }
    }

    /// The process whose timer is due first, and when.
    fn next_timer(&self) -> Option<(MonoTime, usize)> {
        if self.suspended_until.is_some() {
            return None;
        }
        let timers =
            self.processes.iter().enumerate().filter_map(|(p, process)| Some((process.session.poll_timeout()?.at, p)));
        timers.min()
    }

    /// Runs until `until` (or the step bound), delivering whatever is due.
    pub fn run_until(&mut self, until: MonoTime) {
        while self.stats.steps < self.config.max_steps {
            let next_message = self.queue.keys().next().map(|(at, _)| *at);
            let timer = self.next_timer();
            let next_timer = timer.map(|(at, _)| at);
            let next = match (next_message, next_timer) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => match a.or(b) {
                    Some(at) => at,
                    None => break,
                },
            };
            if next > until {
                break;
            }
            self.stats.steps += 1;
            self.now = self.now.max(next);
            if next_message == Some(next) {
                if let Some((_, pending)) = self.queue.pop_first() {
                    self.deliver(pending);
                }
            } else if let Some((_, p)) = timer {
                note_at!(self, p, "{} timeout", self.now);
                let now = self.now;
                self.process_mut(p).session.handle_timeout(now);
                self.drain(p);
            }
        }
        if self.stats.steps >= self.config.max_steps {
            self.extra.push(Violation {
                invariant: Invariant::C9,
                at: self.now,
                detail: format!("the run exceeded {} steps", self.config.max_steps),
            });
        }
        self.now = self.now.max(until);
    }

    /// Runs the whole campaign schedule: the safety phase with faults, then
    /// the healed liveness phase; then checks that the session settled.
    pub fn run(&mut self) {
        let safety_end = MonoTime::ZERO.saturating_add(self.config.safety_phase);
        self.run_until(safety_end);
        self.heal();
    }

    /// The liveness phase: faults stop, a suspended client wakes, and one last
    /// caller must be granted within the bounds (after a fresh login if the
    /// session ended). Records a violation if not.
    pub fn heal(&mut self) {
        let safety_end = self.now;
        self.config.faults = Faults::none();
        self.scripted.clear();
        self.scripted_store.clear();
        self.crash_at_command = None;
        // Healed: a suspended client wakes first, then one last caller must be
        // answered and the session must settle within the bounds.
        self.wake();
        let wait_bound = self.config.session.wait_bound();
        let end = safety_end.saturating_add(self.config.liveness_phase).max(self.now.saturating_add(wait_bound * 2));
        let last_call_at = end.saturating_sub(wait_bound + Duration::from_secs(5));
        self.demand_until = Some(last_call_at);
        self.run_until(last_call_at);
        let processes = 0..self.processes.len();
        for p in processes.clone() {
            if self.session_of(p).state().needs_login() {
                self.log_in_at(p);
            }
        }
        let mut last: Vec<CallerId> = processes.clone().map(|p| self.want_token_at(p)).collect();
        self.run_until(end);
        let mut again = false;
        for p in processes.clone() {
            let caller = last.get(p).copied().unwrap_or(CallerId(0));
            let logged_out = matches!(self.outcome(caller), Some(CallerOutcome::Failed(FailReason::LoggedOut(_))))
                && self.session_of(p).state().needs_login();
            // Nothing but the user can renew these: no refresh token left, or
            // the server asked for the user's interaction.
            let ran_out = matches!(
                self.outcome(caller),
                Some(CallerOutcome::Failed(FailReason::MissingRefreshToken | FailReason::InteractionRequired(_)))
            );
            if logged_out || ran_out {
                // The session held a token that had died meanwhile (expired,
                // revoked, or ended by another process); the logout was judged
                // when it happened. A fresh login must then work.
                self.log_in_at(p);
                if let Some(slot) = last.get_mut(p) {
                    *slot = self.want_token_at(p);
                }
                again = true;
            }
        }
        if again {
            self.run_until(self.now.saturating_add(wait_bound * 2));
        }
        self.land_store_work();
        self.finish();
        for p in processes {
            let caller = last.get(p).copied().unwrap_or(CallerId(0));
            if !matches!(self.outcome(caller), Some(CallerOutcome::Granted(_))) {
                let detail = format!(
                    "after healing, process {p}'s last caller got {:?} in state {}",
                    self.outcome(caller),
                    self.session_of(p).state()
                );
                self.extra.push(Violation { invariant: Invariant::C5, at: self.now, detail });
            }
        }
    }

    /// Lets store operations already under way land before the verdict: a
    /// clear issued an instant before the liveness phase ends is still on its
    /// way, not a store that keeps a logged-out session. Bounded: each round
    /// delivers everything due up to the next store answer, which may start
    /// more store work (a timer's refresh), so a few rounds suffice.
    fn land_store_work(&mut self) {
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

    /// Ends the run: liveness checks that need the whole run.
    pub fn finish(&mut self) {
        let now = self.now;
        for process in &mut self.processes {
            process.monitor.finish(now, true);
        }
    }

    fn next_arrival(&mut self) -> MonoTime {
        let mean = self.config.demand.map_or(Duration::from_secs(1), |d| d.mean_interval);
        let millis = u64::try_from(mean.as_millis()).unwrap_or(u64::MAX).max(1);
        self.now.saturating_add(Duration::from_millis(1 + self.rng.below(2 * millis)))
    }

    fn schedule(&mut self, at: MonoTime, pending: Pending) {
        self.sequence += 1;
        self.queue.insert((at, self.sequence), pending);
    }

    fn chance(&mut self, per_mille: u16, kind: &'static str) -> bool {
        let hit = per_mille > 0 && self.rng.chance(u64::from(per_mille), 1000);
        if hit {
            *self.stats.faults.entry(kind).or_default() += 1;
        }
        hit
    }

    fn latency(&mut self) -> (Duration, bool) {
        let extra = if self.chance(self.config.faults.delay, "delay") {
            let max = u64::try_from(self.config.faults.max_delay.as_millis()).unwrap_or(0);
            Duration::from_millis(self.rng.below(max + 1))
        } else {
            Duration::ZERO
        };
        (self.config.latency + extra, extra.is_zero())
    }

    fn input(&mut self, p: usize, event: Event) {
        note_at!(self, p, "{} {event:?}", self.now);
        let now = self.now;
        self.shared_monitor.event(p, now, &event);
        let process = self.process_mut(p);
        process.monitor.event(now, &event);
        process.session.handle(now, event);
        self.drain(p);
    }

    /// Carries out every command process `p`'s session queued.
    fn drain(&mut self, p: usize) {
        while let Some(command) = self.process_mut(p).session.poll_command() {
            note_at!(self, p, "{}   -> {command:?}", self.now);
            let now = self.now;
            self.shared_monitor.command(p, now, &command);
            self.process_mut(p).monitor.command(now, &command);
            self.execute(p, command);
            self.commands_seen += 1;
            if self.crash_at_command == Some(self.commands_seen) {
                // The commands still queued die with the process, and the step
                // never ends: what holds between steps need not hold mid-step.
                self.crash_process(p);
                return;
            }
        }
        let (now, next) = (self.now, self.process(p).session.poll_timeout().map(|due| due.at));
        self.process_mut(p).monitor.step_end(now, next);
        // Faults at command boundaries.
        if self.suspended_until.is_none() {
            if self.chance(self.config.faults.crash, "crash") {
                self.crash_process(p);
            } else if self.chance(self.config.faults.clock_jump, "clock_jump") {
                let pause =
                    Duration::from_secs(1 + self.rng.below(2 * self.config.authority.access_ttl.as_secs().max(1)));
                self.suspend(pause);
            }
        }
    }

    fn execute(&mut self, p: usize, command: Command) {
        let incarnation = self.process(p).incarnation;
        match command {
            Command::LoadStore { op } | Command::LockStore { op } => {
                let at = self.now.saturating_add(self.config.store_latency);
                if self.chance(self.config.faults.store_load_fail, "store_load_fail") {
                    let outcome = StoreOutcome::Failed { landed: None };
                    self.schedule(at, Pending::StoreDone { incarnation, op, outcome });
                } else if !matches!(command, Command::LockStore { .. }) {
                    let outcome = StoreOutcome::Loaded(self.blob.clone());
                    self.schedule(at, Pending::StoreDone { incarnation, op, outcome });
                } else if self.lock_holder.is_none() {
                    self.grant_lock(incarnation, op);
                } else {
                    self.lock_waiters.push_back((incarnation, op));
                    let give_up = self.now.saturating_add(self.config.session.lock_wait());
                    self.schedule(give_up, Pending::LockTimeout { incarnation, op });
                }
            }
            Command::UnlockStore => self.release_lock(incarnation),
            Command::Persist { op, session } => self.write(p, op, StoreWrite::Put(session.encode())),
            Command::ClearStore { op } => self.write(p, op, StoreWrite::Delete),
            Command::SendRefresh { id, refresh_token, .. } => {
                self.stats.refreshes_sent += 1;
                let fate = self.fate();
                let (latency, _) = self.latency();
                match fate {
                    Fate::DropRequest => {}
                    Fate::Refused => {
                        let failure = TransportFailure::NotSent;
                        self.schedule(
                            self.now.saturating_add(latency),
                            Pending::RefreshFailed { incarnation, id, failure },
                        );
                    }
                    _ => {
                        let at = self.now.saturating_add(latency);
                        let sent_at = self.now;
                        self.schedule(
                            at,
                            Pending::RefreshArrives { incarnation, id, token: refresh_token, fate, sent_at },
                        );
                    }
                }
            }
            Command::Revoke { refresh_token } => {
                let (latency, _) = self.latency();
                self.schedule(self.now.saturating_add(latency), Pending::RevokeArrives { token: refresh_token });
            }
            Command::LoginStored { callers, generation } => {
                for caller in callers {
                    self.outcomes.insert(caller, CallerOutcome::LoginStored(generation));
                }
            }
            Command::Grant { callers, grant } => {
                for caller in callers {
                    self.stats.granted += 1;
                    self.outcomes.insert(caller, CallerOutcome::Granted(grant.generation));
                    let (latency, healthy) = self.latency();
                    // C7 speaks of a healthy network and a known expiry.
                    let replayed = self.cross_life_replays.contains(&grant.access_token.fingerprint());
                    let healthy = healthy && !self.clock_jumped && grant.usable_until.is_some() && !replayed;
                    let retry = self.process(p).retried.get(&caller).copied().unwrap_or(false);
                    let retried_at = retry.then_some(self.now);
                    let pending =
                        Pending::ResourceArrives { incarnation, caller, grant: grant.clone(), healthy, retried_at };
                    self.schedule(self.now.saturating_add(latency), pending);
                }
            }
            Command::Fail { callers, reason } => {
                // An access token alone has run out, or the server wants the
                // user to act: the app sends the user to log in.
                let relogin = matches!(reason, FailReason::MissingRefreshToken | FailReason::InteractionRequired(_))
                    && !self.login_pending;
                for caller in callers {
                    self.stats.failed += 1;
                    self.outcomes.insert(caller, CallerOutcome::Failed(reason.clone()));
                }
                if relogin && self.config.demand.is_some() {
                    self.login_pending = true;
                    let at = self.now.saturating_add(Duration::from_secs(30));
                    self.schedule(at, Pending::Login { process: p, always: true });
                }
            }
            Command::StateChanged(view) if view.needs_login() => {
                let cause = view.logout_cause().unwrap_or(LogoutCause::NoSession);
                *self.stats.logouts.entry(logout_name(&cause).to_owned()).or_default() += 1;
                let judged =
                    judge_logout(&self.config.session, &self.config.authority, &cause, self.evidence, self.now);
                self.extra.extend(judged.err());
                // The user logs in again a while later, so the run goes on.
                if self.config.demand.is_some() {
                    let at = self.now.saturating_add(Duration::from_secs(30));
                    self.schedule(at, Pending::Login { process: p, always: false });
                }
            }
            Command::Publish(_) | Command::StateChanged(_) => {}
        }
    }

    fn fate(&mut self) -> Fate {
        if let Some(fate) = self.scripted.pop_front() {
            return fate;
        }
        let f = self.config.faults;
        if self.chance(f.drop_request, "drop_request") {
            Fate::DropRequest
        } else if self.chance(f.refused, "refused") {
            Fate::Refused
        } else if self.chance(f.server_error, "server_error") {
            Fate::ServerError
        } else if self.chance(f.rate_limit, "rate_limit") {
            Fate::RateLimited(Duration::from_secs(1 + self.rng.below(60)))
        } else if self.chance(f.policy_refusal, "policy_refusal") {
            let pick = self.rng.below(PolicyRefusal::ALL.len() as u64) as usize;
            Fate::PolicyRefusal(PolicyRefusal::ALL.get(pick).copied().unwrap_or(PolicyRefusal::InvalidClient))
        } else if self.chance(f.drop_response, "drop_response") {
            Fate::DropResponse
        } else if self.chance(f.mangle_response, "mangle_response") {
            Fate::MangleResponse
        } else if self.chance(f.duplicate_response, "duplicate_response") {
            Fate::DuplicateResponse
        } else {
            Fate::Deliver
        }
    }

    fn write(&mut self, p: usize, op: StoreOpId, write: StoreWrite) {
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

    fn apply(&mut self, write: StoreWrite) {
        self.blob = match write {
            StoreWrite::Put(blob) => Some(blob),
            StoreWrite::Delete => None,
        };
    }

    fn client_frozen(&mut self, pending: Pending) -> Option<Pending> {
        match self.suspended_until {
            Some(until) if self.now < until => {
                // The client sleeps: its inputs wait until it resumes.
                self.schedule(until, pending);
                None
            }
            _ => Some(pending),
        }
    }

    fn deliver(&mut self, pending: Pending) {
        // Server-side arrivals happen whatever the client does.
        let pending = match pending {
            Pending::RefreshArrives { incarnation, id, token, fate, sent_at } => {
                return self.serve_refresh(incarnation, id, &token, fate, sent_at);
            }
            Pending::RevokeArrives { token } => {
                let _ = self.authority.revoke(self.now, CLIENT_ID, token.expose_secret());
                self.observe_authority();
                return;
            }
            Pending::ResourceArrives { incarnation, caller, grant, healthy, retried_at } => {
                let result = self.authority.validate(self.now, grant.access_token.expose_secret());
                self.observe_authority();
                if result == Err(crate::authority::InvalidToken::Expired) && healthy {
                    let detail = format!("{caller} used {} after it expired", grant.generation);
                    self.extra.push(Violation { invariant: Invariant::C7, at: self.now, detail });
                }
                if let (Some(retried_at), Err(reason)) = (retried_at, result) {
                    self.stats.retries_refused += 1;
                    // U8: a retry nothing raced, on a healthy network, gets a
                    // token the server has not already killed.
                    let untouched = healthy && !self.killable_unseen(&grant.access_token, incarnation, retried_at);
                    let killed = matches!(
                        reason,
                        crate::authority::InvalidToken::Expired | crate::authority::InvalidToken::Replaced
                    );
                    if untouched && killed {
                        let detail = format!("{caller}'s retry with {} was refused: {reason:?}", grant.generation);
                        self.extra.push(Violation { invariant: Invariant::U8, at: self.now, detail });
                    }
                }
                let (latency, _) = self.latency();
                let answer =
                    Pending::ResourceAnswered { incarnation, caller, generation: grant.generation, ok: result.is_ok() };
                self.schedule(self.now.saturating_add(latency), answer);
                return;
            }
            other => other,
        };
        let Some(pending) = self.client_frozen(pending) else { return };
        let addressee = match &pending {
            Pending::RefreshAnswered { incarnation, .. }
            | Pending::RefreshFailed { incarnation, .. }
            | Pending::StoreDone { incarnation, .. }
            | Pending::ResourceAnswered { incarnation, .. }
            | Pending::LockTimeout { incarnation, .. } => self.process_of(*incarnation),
            _ => None,
        };
        match (pending, addressee) {
            // Random demand ends with the last caller of the liveness phase, so
            // every caller has its whole bound before the verdict.
            (Pending::CallerArrives, _) if self.demand_until.is_some_and(|until| self.now > until) => {}
            (Pending::CallerArrives, _) => {
                let p = if self.processes.len() > 1 { self.rng.below(self.processes.len() as u64) as usize } else { 0 };
                if self.chance(self.config.faults.logout, "logout") {
                    self.log_out_at(p);
                } else if self.rng.chance(1, 40) {
                    // The app forces a refresh now and then (a changed profile, a suspect token).
                    self.force_refresh_at(p);
                } else {
                    self.want_token_at(p);
                }
                let next = self.next_arrival();
                self.schedule(next, Pending::CallerArrives);
            }
            (Pending::RefreshAnswered { id, outcome, .. }, Some(p)) => {
                self.input(p, Event::RefreshCompleted { id, outcome });
            }
            (Pending::RefreshFailed { id, failure, .. }, Some(p)) => {
                self.input(p, Event::RefreshFailed { id, failure });
            }
            (Pending::StoreDone { op, outcome, .. }, Some(p)) => self.store_done(p, op, outcome),
            (Pending::ResourceAnswered { caller, generation, ok: false, .. }, Some(p)) => {
                self.stats.unauthorized += 1;
                // One retry per request, never more: no 401 loop.
                let retried = self.process_mut(p).retried.entry(caller).or_insert(false);
                if !*retried {
                    *retried = true;
                    self.input(p, Event::Unauthorized { caller, generation });
                }
            }
            (Pending::LockTimeout { incarnation, op }, Some(p)) => {
                // Still waiting: the wait is over, and the store counts as unavailable.
                let waiting = self.lock_waiters.len();
                self.lock_waiters.retain(|waiter| *waiter != (incarnation, op));
                if self.lock_waiters.len() < waiting {
                    self.input(p, Event::StoreFailed { op, error: StoreError::Unavailable });
                }
            }
            (Pending::Login { process, always }, _) => {
                if always {
                    self.login_pending = false;
                }
                if always || self.session_of(process).state().needs_login() {
                    self.log_in_at(process);
                }
            }
            // Only the latest resume wakes the client.
            (Pending::Resume, _) if self.suspended_until.is_some_and(|until| until <= self.now) => {
                self.suspended_until = None;
                note!(self, "{} resume", self.now);
                for p in 0..self.processes.len() {
                    let now = self.now;
                    self.process_mut(p).session.handle_timeout(now);
                    self.drain(p);
                }
            }
            // Addressed to an incarnation that crashed.
            _ => {}
        }
    }

    fn store_done(&mut self, p: usize, op: StoreOpId, outcome: StoreOutcome) {
        self.process_mut(p).in_flight_write = None;
        let locked = matches!(outcome, StoreOutcome::Locked(_));
        let event = match outcome {
            StoreOutcome::Loaded(blob) | StoreOutcome::Locked(blob) => {
                let unix_now = UnixTime::from_secs(UNIX_START).saturating_add(self.now.elapsed());
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

    fn serve_refresh(&mut self, incarnation: u32, id: RefreshId, token: &RefreshToken, fate: Fate, sent_at: MonoTime) {
        let (status, headers, body): (u16, Vec<(&str, Vec<u8>)>, SecretString) = match fate {
            Fate::ServerError => (503, vec![], SecretString::from("<html>503 Service Unavailable</html>")),
            Fate::RateLimited(wait) => {
                (429, vec![("Retry-After", wait.as_secs().to_string().into_bytes())], SecretString::from(""))
            }
            Fate::PolicyRefusal(refusal) => {
                let (status, body) = refusal.response();
                (status, vec![], SecretString::from(body))
            }
            _ => {
                let result = self.authority.refresh(self.now, CLIENT_ID, None, token.expose_secret());
                self.observe_authority();
                match result {
                    Ok(issued) => {
                        self.note_issued_to(&issued.access_token, incarnation);
                        self.issued_at.entry(issued.access_token.fingerprint()).or_insert(self.now);
                        self.redemptions.push(Redemption { at: self.now, life: incarnation, answer_lost: false });
                        (200, vec![], issued.to_json())
                    }
                    Err(refusal) => (400, vec![], SecretString::from(Refusal::to_json(refusal))),
                }
            }
        };
        let (latency, _) = self.latency();
        let at = self.now.saturating_add(latency);
        let arrives_at = match fate {
            Fate::Delay(extra) => at.saturating_add(extra),
            _ => at,
        };
        let too_late = arrives_at.saturating_duration_since(sent_at) >= self.config.session.request_timeout;
        if matches!(fate, Fate::DropResponse | Fate::MangleResponse) || too_late {
            // The server committed; the client will not read (in time) what it did.
            self.evidence.lost_answer = true;
            if let Some(last) = self.redemptions.last_mut().filter(|r| r.at == self.now && r.life == incarnation) {
                last.answer_lost = true;
            }
        }
        let body = match fate {
            Fate::DropResponse => return,
            Fate::MangleResponse => SecretString::from("<html>gateway error</html>"),
            _ => body,
        };
        let headers: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (*n, v.as_slice())).collect();
        let response = oauth::Response { status, headers: &headers, body: body.expose_secret().as_bytes() };
        let unix_now = UnixTime::from_secs(UNIX_START).saturating_add(self.now.elapsed());
        let outcome = oauth::classify(&self.config.session.policy, &response, Some(unix_now));
        let at = match fate {
            Fate::Delay(extra) => at.saturating_add(extra),
            _ => at,
        };
        if fate == Fate::DuplicateResponse {
            let again = Pending::RefreshAnswered { incarnation, id, outcome: outcome.clone() };
            self.schedule(at.saturating_add(self.config.latency), again);
        }
        self.schedule(at, Pending::RefreshAnswered { incarnation, id, outcome });
    }

    /// Records which life first received an access token. A grace replay can
    /// hand a token first issued to one life (a process that then crashed, or
    /// another process sharing the store) to another, which cannot know when
    /// the server issued it: a replay that keeps the original expiry then
    /// looks younger than it is. Such tokens are touched by that fault (the
    /// crash, or the lost answers that made another process present the same
    /// refresh token), and C7 and U8 do not judge their use.
    fn note_issued_to(&mut self, access: &freshen_core::token::AccessToken, incarnation: u32) {
        let fingerprint = access.fingerprint();
        let first = *self.first_received_by.entry(fingerprint).or_insert(incarnation);
        if first != incarnation && self.cross_life_replays.insert(fingerprint) {
            self.stats.cross_life_replays += 1;
        }
    }

    /// Whether a refresh may have killed `access` behind the back of life
    /// `incarnation` (which was handed it for a retry at `retried_at`): one
    /// the server served after issuing it, for another life (which this one
    /// cannot see), or whose answer this life never read (lost, mangled, too
    /// late), or that came after the retry was granted (a race, not a bug).
    fn killable_unseen(
        &self,
        access: &freshen_core::token::AccessToken,
        incarnation: u32,
        retried_at: MonoTime,
    ) -> bool {
        let Some(issued_at) = self.issued_at.get(&access.fingerprint()).copied() else { return true };
        self.redemptions
            .iter()
            .any(|r| r.at >= issued_at && (r.life != incarnation || r.answer_lost || r.at >= retried_at))
    }

    fn observe_authority(&mut self) {
        for entry in self.authority.take_audit() {
            if let crate::authority::AuditOutcome::Refused(refusal) = entry.outcome {
                self.evidence.refusal = Some(refusal);
            }
            self.authority_monitor.observe(&entry);
        }
    }

    /// A one-line summary of the run, for campaign output.
    pub fn summary(&self) -> String {
        let mut line = String::new();
        let _ = write!(
            line,
            "seed {} state {} refreshes {} granted {} failed {} crashes {} violations {}",
            self.seed,
            self.session().state(),
            self.stats.refreshes_sent,
            self.stats.granted,
            self.stats.failed,
            self.stats.crashes,
            self.violations().len()
        );
        line
    }
}

/// The short name of a logout cause, for counting.
pub fn logout_name(cause: &LogoutCause) -> &'static str {
    match cause {
        LogoutCause::NoSession => "no_session",
        LogoutCause::Requested => "requested",
        LogoutCause::RefreshTokenRejected { after_lost_response: true, .. } => "rejected_after_lost_response",
        LogoutCause::RefreshTokenRejected { .. } => "rejected",
        LogoutCause::StoredSessionUnreadable(_) => "stored_session_unreadable",
        LogoutCause::EndedElsewhere => "ended_elsewhere",
        // `LogoutCause` is open to apps (they match on it); a cause added
        // later is counted here until it gets its own name.
        _ => "other",
    }
}

fn unreachable_config(error: freshen_core::session::ConfigError) -> Session {
    // Configurations reach the world through `validate`d constructors; a bad
    // one here is a bug in the caller, reported loudly.
    panic!("invalid session configuration in the world: {error}")
}

#[cfg(test)]
mod tests;
