//! A deterministic world: the session machine and the reference authority,
//! joined by a simulated network and store on a virtual clock, with the
//! invariant checkers watching every step.
//!
//! Everything that happens is drawn from one seed, so a seed replays the same
//! run byte for byte. Tests script single fates ([`World::script`]); campaigns
//! sample [`Faults`] per seed. The loop is bounded by time and by a step count.
//! This is tier 1 of the simulation: no threads, no runtime, no sockets.
//!
//! Its rooms: [`crate::world`] what a world is made of (its configuration and
//! faults, shared with tier 2); `config.rs` the fates a test can script;
//! this file the world, its clock and what a test or campaign can do to it;
//! `executor.rs` carrying out each process's commands; `liveness.rs` the
//! healing phase and its verdict; `network.rs` the
//! network and the authority serving it; `store.rs` the store and its lock.

use core::fmt::Write as _;
use core::time::Duration;
use std::collections::{BTreeMap, VecDeque};

use secrecy::{ExposeSecret, SecretString};

use crate::authority::{Authority, PolicyRefusal, Proof, Refusal};
use crate::check::{
    AuthorityMonitor, Healed, Invariant, LogoutEvidence, SharedStoreMonitor, Violation, judge_healed, judge_logout,
};
use freshen_core::dpop::{DpopKey, DpopNonce};
use freshen_core::ids::{CallerId, Generation, RefreshId, RevocationId, StoreOpId};
use freshen_core::oauth::{self, Classified};
use freshen_core::rng::SplitMix64;
use freshen_core::session::{
    AccessGrant, Callers, Command, Event, FailReason, Io, LogoutCause, NewSession, ProofNeeded, Session, SessionConfig,
    StoreError, TransportFailure,
};
use freshen_core::stored::StoredSession;
use freshen_core::time::{BootId, BootTime, MonoTime, SleepDetector, UnixTime};
use freshen_core::token::{RefreshToken, TokenType};

use crate::executor::Watched;
use crate::world::{Faults, LoginGrant, PooledDpopKeys, Start, Tally, WorldConfig};
pub use config::{CLIENT_ID, Fate, StoreFate};
use queue::Queue;

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

/// How each caller ended, by its number: callers are numbered from 1 as
/// they come, so a vector holds them in order (a map cost a tree insert
/// per caller, 3 % of a tier-1 world).
#[derive(Debug, Default)]
struct Outcomes(Vec<Option<CallerOutcome>>);

impl Outcomes {
    fn insert(&mut self, caller: CallerId, outcome: CallerOutcome) {
        let Ok(index) = usize::try_from(caller.0) else { return };
        if index >= self.0.len() {
            self.0.resize(index + 1, None);
        }
        if let Some(slot) = self.0.get_mut(index) {
            *slot = Some(outcome);
        }
    }

    fn get(&self, caller: CallerId) -> Option<&CallerOutcome> {
        self.0.get(usize::try_from(caller.0).ok()?)?.as_ref()
    }
}

/// Counts over one run, for summaries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorldStats {
    /// What both tiers count: refreshes sent, callers, logouts, faults, the database's locks.
    pub tally: Tally,
    /// Resource requests refused with 401.
    pub unauthorized: u64,
    /// Retries after a 401 that were refused too (the caller's request failed for good).
    pub retries_refused: u64,
    /// Access tokens a grace replay handed to another life than the one they
    /// were first issued to (see `World::note_issued_to`).
    pub cross_life_replays: u64,
    /// Logins by an authorization code (each with its own PKCE verifier).
    pub logins_by_code: u64,
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
        /// The DPoP proof it carries, as the server's rules see it.
        proof: Option<Box<Proof>>,
        fate: Fate,
        sent_at: MonoTime,
    },
    RefreshAnswered {
        incarnation: u32,
        id: RefreshId,
        outcome: Box<Classified>,
        dpop_nonce: Option<DpopNonce>,
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
    /// The database releases the lock life `holder` took under `fence`, if
    /// it still holds it: its connection was cut, it stalled, or it died.
    LockReleased {
        holder: u32,
        fence: u64,
        cause: &'static str,
    },
    /// An input for a stalled process, handled once it resumes.
    Input {
        incarnation: u32,
        event: Box<Event>,
    },
    /// A stalled process resumes.
    ProcessResumes {
        incarnation: u32,
    },
    RevokeArrives {
        incarnation: u32,
        id: RevocationId,
        token: RefreshToken,
        /// The way back takes as long.
        latency: Duration,
    },
    /// The authority's answer to a revocation reaches the process.
    RevocationAnswered {
        incarnation: u32,
        id: RevocationId,
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
    /// This life's machine and its checker.
    machine: Watched,
    /// Turns the machine's clock readings into this life's session time, as
    /// freshen's driver does.
    clock: ProcessClock,
    /// Names this life of the process, unique across the world: messages
    /// addressed to an earlier life are dropped.
    incarnation: u32,
    retried: BTreeMap<CallerId, bool>,
    in_flight_write: Option<StoreWrite>,
    /// The fence of the database lock this life was last granted, until it
    /// lets go: its writes are conditional on it.
    held_fence: Option<u64>,
    /// A stalled process (a GC or VM pause) handles nothing until then.
    paused_until: Option<MonoTime>,
    /// A process that resumed runs at least until then before it can stall
    /// again: it first handles what arrived while it stood still.
    stall_free_until: MonoTime,
    /// When this process's session last ended (the logout judged then): a
    /// caller told so, whose user has logged in again since, is owed a token.
    logged_out_at: Option<MonoTime>,
}

/// A process's view of time: the machine's monotonic clock stops while it
/// is suspended, its wall clock does not, and the core's [`SleepDetector`]
/// (the driver's algorithm) must add each suspend back. The world's clocks are
/// exact (no coarse ticks, no NTP slew), so it detects with a zero threshold:
/// its session time is then the world's time exactly, and a detector that
/// missed or miscounted a suspend shows as a session whose time lags the
/// world's, handing out tokens the authority has let expire.
#[derive(Debug)]
struct ProcessClock {
    detector: SleepDetector,
    /// The world's time at this life's start, and the machine's monotonic reading then.
    booted_at: MonoTime,
    monotonic_at_boot: Duration,
    /// How far the session's time was behind the world's at the last reading:
    /// its timers fall due this much later in the world.
    lag: Duration,
}

impl ProcessClock {
    fn boot(config: &SessionConfig, now: MonoTime, monotonic: Duration, wall: UnixTime) -> Self {
        let threshold = if config.plant == Some(freshen_core::session::Plant::MissesSuspends) {
            Duration::MAX
        } else {
            Duration::ZERO
        };
        let detector = SleepDetector::new(wall, threshold);
        Self { detector, booted_at: now, monotonic_at_boot: monotonic, lag: Duration::ZERO }
    }
}

/// The wall clock at world time `now`, as the authority reads it (the
/// machine's may have been set back since: [`World::machine_wall`]).
fn wall_at(now: MonoTime) -> UnixTime {
    UnixTime::from_secs(UNIX_START).saturating_add(now.elapsed())
}

/// The boot the world's machine runs on, and how long it had been up when
/// the world began.
const MACHINE_BOOT: BootId = BootId::from_bits(0xB007_0001);
const UPTIME_AT_START: Duration = Duration::from_secs(3600);

/// The machine's boot clock at world time `now`: it counts suspends, and
/// nobody sets it.
fn boot_at(now: MonoTime) -> BootTime {
    BootTime::new(MACHINE_BOOT, UPTIME_AT_START.saturating_add(now.elapsed()))
}

/// `at` as an HTTP-date (IMF-fixdate, to the second), as servers write
/// `Date` and a dated `Retry-After`.
pub(crate) fn http_date(at: UnixTime) -> String {
    httpdate::fmt_http_date(std::time::UNIX_EPOCH + at.since_epoch())
}

#[derive(Debug)]
enum StoreOutcome {
    Loaded(Option<SecretString>),
    Locked(Option<SecretString>),
    Written { write: StoreWrite },
    Failed { landed: Option<StoreWrite> },
}

#[derive(Clone, Debug)]
struct StoreWrite {
    change: StoreChange,
    /// A database write is conditional on the fence of its writer's lock.
    fence: Option<u64>,
}

#[derive(Clone, Debug)]
enum StoreChange {
    Put(SecretString),
    Delete,
}

/// The world. See the [module docs](self).
#[derive(Debug)]
pub struct World {
    config: WorldConfig,
    seed: u64,
    rng: SplitMix64,
    /// Where the world's DPoP keys come from.
    dpop_keys: PooledDpopKeys,
    /// Every key the world's logins made, as first made. A process reads
    /// its key back from the store as a new value, which would work out its
    /// public key again (a scalar multiplication) for the thumbprint the
    /// world's server reads from a proof; the one made first already has.
    keys_made: Vec<DpopKey>,
    /// DPoP proofs sent so far: each one's id.
    proofs_sent: u64,
    now: MonoTime,
    processes: Vec<Process>,
    next_incarnation: u32,
    authority: Authority,
    /// The store's one entry: the encoded session blob.
    blob: Option<SecretString>,
    /// The store's cross-process lock: the life holding it, and those waiting.
    lock_holder: Option<u32>,
    lock_waiters: VecDeque<(u32, StoreOpId)>,
    /// A database store's fence, raised by every lock it grants, and the
    /// fence under which what it holds was written.
    fence: u64,
    written_under: u64,
    queue: Queue<Pending>,
    next_caller: u64,
    outcomes: Outcomes,
    scripted: VecDeque<Fate>,
    scripted_store: VecDeque<StoreFate>,
    /// Commands carried out so far, and the count at which to crash.
    commands_seen: u64,
    crash_at_command: Option<u64>,
    /// While suspended, the client does nothing until this time.
    suspended_until: Option<MonoTime>,
    /// When the current suspend began, and the time suspended before it: the
    /// machine's monotonic clock stands still meanwhile.
    asleep_since: Option<MonoTime>,
    asleep_before: Duration,
    clock_jumped: bool,
    /// How far the machine's wall clock has been set back, in all.
    wall_behind: Duration,
    shared_monitor: SharedStoreMonitor,
    authority_monitor: AuthorityMonitor,
    /// What the world knows about the current login, for the logout rules.
    evidence: LogoutEvidence,
    /// Whether the app revoked its grant (a logout) since the last reuse detection.
    revoked_by_the_app: crate::check::RevokedByTheApp,
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
    /// Per refresh token presented: how many of the server's successes for
    /// it the client never read (each spent one grace replay).
    unread_successes: BTreeMap<freshen_core::token::Fingerprint, u32>,
    /// 429s served: every other one gives its wait as an HTTP-date.
    rate_limited: u64,
    extra: Vec<Violation>,
    trace: Vec<String>,
    stats: WorldStats,
}

const UNIX_START: u64 = 1_800_000_000;

/// Where the app's code logins say the browser comes back (never contacted).
const CODE_REDIRECT: &str = "http://127.0.0.1:49152/callback";

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
        // Keys come from a generator of their own: a world that binds draws
        // nothing from the others.
        let mut dpop_keys = PooledDpopKeys::starting_at(SplitMix64::new(seed ^ 0xD90F_5EED_0000_0001).next_u64());
        let mut keys_made = Vec::new();
        let blob = (config.start != Start::Empty).then(|| {
            let issued = authority.login(now, CLIENT_ID, None);
            let family = issued.family;
            let expires_in = issued.expires_in;
            let mut stored = config.start.blob(issued, UnixTime::from_secs(UNIX_START));
            if config.start_on_this_boot {
                stored.access_expires_boot = Some(boot_at(now.saturating_add(expires_in)));
            }
            let stored = match config.dpop.then(|| dpop_keys.next_key()) {
                Some(key) => {
                    authority.bind(now, family, &key.thumbprint());
                    keys_made.push(key.clone());
                    stored.with_dpop_key(key)
                }
                None => stored,
            };
            stored.encode()
        });
        let count = config.processes.max(1);
        let processes = (0..count)
            .map(|index| {
                let seed = if index == 0 { session_seed } else { rng.next_u64() };
                Process {
                    machine: Watched::new(Self::boot(&config.session, seed, now, wall_at(now)), &config.session),
                    clock: ProcessClock::boot(&config.session, now, now.elapsed(), wall_at(now)),
                    incarnation: index as u32,
                    retried: BTreeMap::new(),
                    in_flight_write: None,
                    held_fence: None,
                    paused_until: None,
                    stall_free_until: MonoTime::ZERO,
                    logged_out_at: None,
                }
            })
            .collect();
        let mut world = Self {
            shared_monitor: SharedStoreMonitor::new(&config.session),
            authority_monitor: AuthorityMonitor::new(&config.authority),
            evidence: LogoutEvidence::default(),
            revoked_by_the_app: crate::check::RevokedByTheApp::default(),
            login_pending: false,
            demand_until: None,
            first_received_by: BTreeMap::new(),
            cross_life_replays: std::collections::BTreeSet::new(),
            issued_at: BTreeMap::new(),
            redemptions: Vec::new(),
            unread_successes: BTreeMap::new(),
            rate_limited: 0,
            config,
            seed,
            rng,
            dpop_keys,
            keys_made,
            proofs_sent: 0,
            now,
            processes,
            next_incarnation: count as u32,
            authority,
            blob,
            lock_holder: None,
            lock_waiters: VecDeque::new(),
            fence: 0,
            written_under: 0,
            queue: Queue::new(),
            next_caller: 1,
            outcomes: Outcomes::default(),
            scripted: VecDeque::new(),
            scripted_store: VecDeque::new(),
            commands_seen: 0,
            crash_at_command: None,
            suspended_until: None,
            asleep_since: None,
            asleep_before: Duration::ZERO,
            clock_jumped: false,
            wall_behind: Duration::ZERO,
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

    fn boot(config: &SessionConfig, seed: u64, now: MonoTime, unix_now: UnixTime) -> Session {
        match Session::new(config.clone(), seed, now, unix_now) {
            Ok(session) => session,
            // The world is built from validated configurations only.
            Err(error) => unreachable_config(error),
        }
    }

    /// The machine's wall clock: the world's, less every step back.
    pub(super) fn machine_wall(&self) -> UnixTime {
        UnixTime::from_since_epoch(wall_at(self.now).since_epoch().saturating_sub(self.wall_behind))
    }

    /// The machine's monotonic clock: the world's time less every suspend.
    fn monotonic(&self) -> Duration {
        let now = self.asleep_since.map_or(self.now, |since| since.min(self.now));
        now.elapsed().saturating_sub(self.asleep_before)
    }

    /// Process `p`'s session time now, read through its clock.
    pub(super) fn session_now(&mut self, p: usize) -> MonoTime {
        let (monotonic, wall, world_now) = (self.monotonic(), self.machine_wall(), self.now);
        let clock = &mut self.process_mut(p).clock;
        let since_boot = monotonic.saturating_sub(clock.monotonic_at_boot);
        let now = clock.booted_at.saturating_add(clock.detector.observe(since_boot, wall).elapsed());
        clock.lag = world_now.saturating_duration_since(now);
        now
    }

    /// The (first process's) session.
    pub fn session(&self) -> &Session {
        &self.process(0).machine.session
    }

    /// How many client processes share the store.
    pub fn processes(&self) -> usize {
        self.processes.len()
    }

    /// Process `p`'s session.
    pub fn session_of(&self, p: usize) -> &Session {
        &self.process(p).machine.session
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
        self.outcomes.get(caller)
    }

    /// Every violation found so far, client and authority.
    pub fn violations(&self) -> Vec<Violation> {
        let mut all: Vec<Violation> =
            self.processes.iter().flat_map(|p| p.machine.monitor.violations().to_vec()).collect();
        all.extend(self.shared_monitor.violations());
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

    /// The process whose timer is due first, and when.
    fn next_timer(&self) -> Option<(MonoTime, usize)> {
        if self.suspended_until.is_some() {
            return None;
        }
        let timers = self
            .processes
            .iter()
            .enumerate()
            .filter(|(_, process)| process.paused_until.is_none())
            .filter_map(|(p, process)| Some((process.machine.due()?.saturating_add(process.clock.lag), p)));
        timers.min()
    }

    /// Runs until `until` (or the step bound), delivering whatever is due.
    pub fn run_until(&mut self, until: MonoTime) {
        while self.stats.steps < self.config.max_steps {
            let next_message = self.queue.next_at();
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
                if let Some(pending) = self.queue.pop() {
                    self.deliver(pending);
                }
            } else if let Some((_, p)) = timer {
                note_at!(self, p, "{} timeout", self.now);
                let now = self.session_now(p);
                self.process_mut(p).machine.session.handle_timeout(now);
                self.drain(p);
            }
        }
        self.stats.tally.lock_loss_overlaps = self.shared_monitor.lock_loss_overlaps();
        if self.stats.steps >= self.config.max_steps {
            self.extra.push(Violation {
                invariant: Invariant::C9,
                at: self.now,
                detail: format!("the run exceeded {} steps", self.config.max_steps),
            });
        }
        self.now = self.now.max(until);
    }

    /// A one-line summary of the run, for campaign output.
    pub fn summary(&self) -> String {
        let mut line = String::new();
        let _ = write!(
            line,
            "seed {} state {} refreshes {} granted {} failed {} crashes {} violations {}",
            self.seed,
            self.session().state(),
            self.stats.tally.refreshes,
            self.stats.tally.granted,
            self.stats.tally.failed,
            self.stats.tally.fault_count("crash"),
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

mod actions;
mod config;
mod executor;
mod liveness;
mod network;
mod queue;
mod store;

#[cfg(test)]
mod tests;
