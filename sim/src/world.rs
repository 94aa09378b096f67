//! What a simulated world is made of, for both tiers: the faults, who calls,
//! what the store holds at start, and how long the faults last.
//!
//! One [`WorldConfig`] and one [`Faults`] describe a world in either tier.
//! Tier 1 ([`harness`](crate::harness)) steps every message and command, so
//! it injects its faults per message and per command; tier 2 (`tier2`) runs
//! the real driver over a simulated TCP network, where a fault is a rate per
//! request or an event scheduled in the safety phase. Each field says which
//! tier carries it out. The tiers sample different worlds from a seed
//! ([`WorldConfig::sampled`], [`WorldConfig::sampled_tier2`]): a simulated
//! second of tier 2 costs far more, so its worlds are shorter and its tokens
//! live shorter.

use core::time::Duration;
use std::collections::BTreeMap;
use std::sync::OnceLock;

use freshen_core::dpop::DpopKey;
use freshen_core::rng::SplitMix64;
use freshen_core::session::{Plant, SessionConfig};
use freshen_core::stored::StoredSession;
use freshen_core::time::UnixTime;

use crate::authority::{AuthorityConfig, AuthorityPlant, GraceReplay, Issued};

/// A third of the worlds bind their sessions by DPoP; half of those talk to
/// a server that requires its nonce in every proof, changed every 30 s to
/// ten minutes. Drawn last, so the rest of a world is what it was before
/// DPoP was sampled.
fn sample_dpop(config: &mut WorldConfig, rng: &mut SplitMix64) {
    config.dpop = rng.chance(1, 3);
    if config.dpop && rng.chance(1, 2) {
        config.authority.dpop_nonce_lifetime = Some(Duration::from_secs(30 + rng.below(570)));
    }
}

/// How the user logs in (both tiers), drawn last so that the draws before
/// it make the same worlds as before logins had a kind.
fn sample_login(config: &mut WorldConfig, rng: &mut SplitMix64) {
    config.login = match rng.below(3) {
        0 => LoginGrant::Password,
        1 => LoginGrant::Device,
        _ => LoginGrant::Code,
    };
}

/// Half the worlds that share their store keep it in a database, with its
/// faults: lost lock connections, stalled workers, slow operations (and
/// writes that fail after they landed, which every store has). A third of
/// those talk to a server whose grace covers a lost lock, as a fleet's
/// should: there, a lost lock must cost no session. Drawn last, and only for
/// shared stores, so every other world is what it was before.
///
/// `pause_max` is the most stalls per thousand: tier 1 draws one per command
/// boundary, tier 2 one per write under the lock.
fn sample_database(config: &mut WorldConfig, rng: &mut SplitMix64, pause_max: u64) {
    if !config.session.shared_store || !rng.chance(1, 2) {
        return;
    }
    let database =
        Database { lock_hold: Duration::from_secs(5 + rng.below(56)), slow: Duration::from_millis(rng.below(3_000)) };
    let mut rate = |max: u64| if rng.chance(1, 2) { rng.below(max + 1) as u16 } else { 0 };
    config.faults.lock_lost = rate(100);
    config.faults.pause = rate(pause_max);
    config.faults.slow_store = rate(200);
    if rng.chance(1, 3) {
        let authority = &mut config.authority;
        authority.grace = database.covering_grace(&config.session) + Duration::from_secs(rng.below(300));
        authority.grace_reuses = Database::covering_reuses(&config.session) + rng.below(4) as u32;
    }
    config.database = Some(database);
}

/// How the user logs in, as apps do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoginGrant {
    /// The authority's password grant: one exchange (a stand-in for any
    /// login the app makes by itself).
    Password,
    /// The device authorization grant (RFC 8628): the user approves on
    /// another device while the app polls.
    Device,
    /// The authorization code grant with PKCE (RFC 7636): the user approves
    /// in a browser, the app exchanges the code once.
    Code,
}

/// A DPoP key drawn from `keys` (a world's own generator, so that binding
/// draws nothing from the others). A draw that is not a valid scalar (odds
/// below 2^-32) is drawn again, boundedly.
pub fn dpop_key_from(keys: &mut SplitMix64) -> DpopKey {
    for _ in 0..8 {
        let mut bytes = [0u8; 32];
        for chunk in bytes.chunks_mut(8) {
            chunk.copy_from_slice(&keys.next_u64().to_le_bytes());
        }
        if let Ok(key) = DpopKey::from_bytes(&bytes) {
            return key;
        }
    }
    // Eight invalid draws in a row do not happen; a fixed valid key keeps the world going.
    DpopKey::from_bytes(&[7; 32]).unwrap_or_else(|_| unreachable!("seven is a valid P-256 scalar"))
}

/// How many DPoP keys tier 1's worlds share. Making a key's public half is a
/// scalar multiplication (about 1.6 M instructions): while every login made
/// a key of its own, that was 13 % of a tier-1 campaign's instructions. The
/// pool's keys are made once per process, when first taken. A world takes
/// consecutive keys from a start of its own, so its keys are distinct unless
/// it logs in more than this many times.
const DPOP_KEY_POOL: usize = 256;

/// A world's DPoP keys: consecutive keys of the process's pool (see
/// `DPOP_KEY_POOL`) from a start the world drew. Which key a login binds
/// to is a name only; that two logins of one world never share one is what
/// the binding checks need.
#[derive(Debug)]
pub struct PooledDpopKeys {
    next: usize,
}

impl PooledDpopKeys {
    /// The keys from pool position `draw` (modulo the pool's size) on.
    pub fn starting_at(draw: u64) -> Self {
        Self { next: (draw % DPOP_KEY_POOL as u64) as usize }
    }

    /// The next key: made the first time any world in this process takes it.
    pub fn next_key(&mut self) -> DpopKey {
        static POOL: [OnceLock<DpopKey>; DPOP_KEY_POOL] = [const { OnceLock::new() }; DPOP_KEY_POOL];
        let index = self.next % DPOP_KEY_POOL;
        self.next = (index + 1) % DPOP_KEY_POOL;
        let make = || {
            let key = dpop_key_from(&mut SplitMix64::new(0xD90F_9001_u64 ^ index as u64));
            // Worked out here, once: every world's binding names the key by it.
            key.thumbprint();
            key
        };
        POOL.get(index).map_or_else(make, |slot| slot.get_or_init(make).clone())
    }
}

/// Every client host's ephemeral ports in tier 2, unless a world says otherwise.
pub const EPHEMERAL_PORTS: (u16, u16) = (1024, 65535);

/// Fault probabilities, in parts per thousand. Rates apply per refresh
/// request (network and server), per store operation, or per command
/// boundary (tier 1's processes); the tier-2 switches schedule events.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Faults {
    /// A refresh request is lost (tier 1).
    pub drop_request: u16,
    /// A refresh answer is lost after the server committed (both tiers; tier
    /// 2 drops the connection instead of answering).
    pub drop_response: u16,
    /// A refresh answer is mangled after the server committed (tier 1).
    pub mangle_response: u16,
    /// A refresh answer arrives twice (tier 1).
    pub duplicate_response: u16,
    /// A message is delayed by up to `max_delay`, which reorders messages (tier 1).
    pub delay: u16,
    /// The server answers 503 without acting (both tiers).
    pub server_error: u16,
    /// The server answers 429 without acting (both tiers).
    pub rate_limit: u16,
    /// The connection is refused (tier 1).
    pub refused: u16,
    /// The server refuses by policy without acting: interaction required,
    /// invalid request or invalid client (both tiers).
    pub policy_refusal: u16,
    /// A store write (save or clear) fails, half of them after it landed (both tiers).
    pub store_write_fail: u16,
    /// A store read (load or lock) fails (tier 1).
    pub store_load_fail: u16,
    /// A process crashes and restarts from its store. Tier 1: per command
    /// boundary. Tier 2 (a switch): each process crashes one to three times.
    pub crash: u16,
    /// A process's clock jumps. Tier 1: per command boundary, a suspend (the
    /// process sleeps, its wall clock runs on). Tier 2 (a switch): each
    /// process's wall clock steps once or twice, mostly forward.
    pub clock_jump: u16,
    /// A caller logs the user out, and a new login follows (both tiers; tier
    /// 2 draws it per burst of callers).
    pub logout: u16,
    /// Tier 2 (a switch): each process is cut off from the authority one to
    /// three times, for up to 30 s each. Tier 1's network loses messages one
    /// by one instead.
    pub partition: u16,
    /// Tier 2 (a switch): the authority restarts once; its state survives,
    /// its connections do not.
    pub server_restart: u16,
    /// A database store (both tiers): the connection holding a lock is
    /// cut, per lock granted. The holder is not told and goes on (it may be
    /// mid-refresh and still write); the database notices within the lock's
    /// bound and releases the lock.
    pub lock_lost: u16,
    /// A database store (tier 1: per command boundary; tier 2: per write
    /// under the lock, which waits it out): a worker stalls (a GC or VM
    /// pause) longer than the lock's bound, so the database releases a lock
    /// it holds; it resumes as if nothing happened.
    pub pause: u16,
    /// A database store (both tiers): an operation is slow, by up to
    /// [`Database::slow`] more than the store's latency.
    pub slow_store: u16,
    /// The longest extra delay (tier 1, with `delay`).
    pub max_delay: Duration,
}

impl Faults {
    /// No faults at all.
    pub fn none() -> Self {
        Self::default()
    }

    /// Tier 1's faults for a campaign seed: each kind on or off, at a drawn rate.
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
            partition: 0,
            server_restart: 0,
            lock_lost: 0,
            pause: 0,
            slow_store: 0,
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

impl Start {
    /// The blob a world starts from, made of a login's tokens issued at
    /// `issued_at` on the wall clock (a world that starts empty builds one
    /// too, and stores nothing).
    pub fn blob(self, issued: Issued, issued_at: UnixTime) -> StoredSession {
        let stored = match self {
            Self::RefreshOnly => StoredSession::refresh_only(issued.refresh_token),
            Self::AccessOnly => StoredSession::access_only(issued.access_token),
            Self::Empty | Self::Pair => StoredSession::pair(issued.access_token, issued.refresh_token),
        };
        stored.with_access_expiry(issued_at, issued.expires_in)
    }
}

/// A store shared by workers through a database (as `PostgresStore`): a
/// lock the database releases when its holder's connection ends or stops
/// answering, and fenced writes. Without one, a world's shared store is a
/// file under an OS lock, released only when its holder unlocks or dies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Database {
    /// How long after its holder stops answering (its connection cut, or the
    /// worker stalled) the database releases a lock: `PostgresSettings::lock_hold`.
    pub lock_hold: Duration,
    /// The most a slow operation takes beyond the store's latency.
    pub slow: Duration,
}

impl Database {
    /// The grace a server needs for a lost lock to cost no session: the
    /// holder that lost it may present a refresh token during its whole
    /// refresh cycle; the database releases the lock up to `lock_hold`
    /// later; the next holder reads the same token and presents it during a
    /// cycle of its own, once its write-ahead is done.
    pub fn covering_grace(&self, session: &SessionConfig) -> Duration {
        session
            .refresh_cycle_bound()
            .saturating_mul(2)
            .saturating_add(self.lock_hold)
            .saturating_add(session.store_backoff.total_ceiling())
            .saturating_add(self.slow.saturating_mul(4))
    }

    /// How many presentations of one token a lost lock may cause: every
    /// attempt of both holders' cycles.
    pub fn covering_reuses(session: &SessionConfig) -> u32 {
        session.backoff.attempts.saturating_add(1).saturating_mul(2)
    }
}

/// How callers arrive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Demand {
    /// Mean time between two arrivals (tier 1: in the whole app; tier 2: on
    /// each process).
    pub mean_interval: Duration,
    /// The most callers in one arrival (a page load fires many requests at
    /// once); each arrival brings one to this many.
    pub burst: u64,
}

impl Demand {
    /// One caller at a time, `mean_interval` apart on average.
    pub fn every(mean_interval: Duration) -> Self {
        Self { mean_interval, burst: 1 }
    }
}

/// Everything that defines a world besides its seed.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct WorldConfig {
    /// The sessions' configuration.
    pub session: SessionConfig,
    /// The authority's configuration.
    pub authority: AuthorityConfig,
    /// A broken authority, to prove the authority checks (tier 1).
    pub authority_plant: Option<AuthorityPlant>,
    /// Faults during the safety phase.
    pub faults: Faults,
    /// One-way network latency (tier 1; tier 2's network draws 1–40 ms).
    pub latency: Duration,
    /// Time a store operation takes (tier 1).
    pub store_latency: Duration,
    /// Random callers, if any.
    pub demand: Option<Demand>,
    /// How long faults are injected.
    pub safety_phase: Duration,
    /// How long the healed world then runs; long enough for every bound.
    pub liveness_phase: Duration,
    /// What each app's store holds when the world starts.
    pub start: Start,
    /// Whether the stored access tokens are already spent at start, an app
    /// opened after a night (tier 2).
    pub start_spent: bool,
    /// Processes of the first app sharing its store (and its lock), each with
    /// its own session, callers and crashes (a CLI run several times at once).
    /// More than one needs [`SessionConfig::shared_store`] to be safe;
    /// without it, that is the bug the checkers must catch.
    pub processes: usize,
    /// Client apps, each with its own store and token family (tier 2; the
    /// first app runs as `processes` processes).
    pub apps: usize,
    /// Each tier-2 process's ephemeral ports (first, last): a small range
    /// makes them wrap around often.
    pub ephemeral_ports: (u16, u16),
    /// Seconds the token endpoint's clock runs ahead of the world's (behind,
    /// when negative), as real servers' clocks do (tier 2). Its `Date`
    /// header reads that clock, and so does every other 429's
    /// `Retry-After`, given as an HTTP-date: only a client that reads the
    /// date against the server's own `Date` waits what the server asked.
    pub server_clock_offset: i64,
    /// Tier 1: a clock jump sets the machine's wall clock back (by hand, by
    /// NTP, a virtual machine restored) instead of suspending the machine.
    /// Read through the stepped clock, a stored expiry looks later than it
    /// is; the boot clock does not move.
    pub wall_steps_back: bool,
    /// The stored session at start was written on this boot (of the app's
    /// first process's machine, in tier 2): it
    /// carries the boot clock's expiry beside the wall clock's. Otherwise it
    /// was written before a reboot, and only the wall clock can read it.
    pub start_on_this_boot: bool,
    /// Keep a printable trace.
    pub trace: bool,
    /// The most steps a run may take (tier 1).
    pub max_steps: u64,
    /// Sessions are bound by DPoP (both tiers): every login, and the
    /// session the store starts with, carries a key the authority binds
    /// the family to.
    pub dpop: bool,
    /// How the user logs in (both tiers; the store's first session is
    /// there already).
    pub login: LoginGrant,
    /// The shared store is a database (with [`SessionConfig::shared_store`]).
    pub database: Option<Database>,
}

impl WorldConfig {
    /// A quiet world: no faults, no random callers, one app logged in with a
    /// token pair, 50 ms latency.
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
            start_spent: false,
            processes: 1,
            apps: 1,
            ephemeral_ports: EPHEMERAL_PORTS,
            server_clock_offset: 0,
            wall_steps_back: false,
            start_on_this_boot: true,
            trace: false,
            max_steps: 1_000_000,
            dpop: false,
            login: LoginGrant::Password,
            database: None,
        }
    }

    /// A tier-1 campaign world for `seed`: authority knobs, faults and demand
    /// all drawn from it.
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
            grace_replay: sample_grace_replay(&mut rng),
            reuse_detection: !rng.chance(1, 4),
            revoke_previous_access: rng.chance(1, 3),
            ..AuthorityConfig::default()
        };
        config.faults = Faults::sample(&mut rng);
        config.latency = Duration::from_millis(1 + rng.below(300));
        config.demand = Some(Demand::every(Duration::from_millis(200 + rng.below(20_000))));
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
        sample_dpop(&mut config, &mut rng);
        sample_login(&mut config, &mut rng);
        sample_database(&mut config, &mut rng, 6);
        // From a generator of their own, so the worlds drawn before them
        // stay the same worlds.
        let mut clocks = SplitMix64::new(seed ^ 0xB007_C10C_0000_0001);
        config.wall_steps_back = clocks.chance(1, 2);
        config.start_on_this_boot = clocks.chance(2, 3);
        config
    }

    /// A tier-2 campaign world for `seed`: one to three apps, bursts of
    /// callers, short-lived tokens and a safety phase of one to five minutes.
    pub fn sampled_tier2(seed: u64) -> Self {
        let mut rng = SplitMix64::new(seed ^ 0x7153_2000_0000_0002);
        let mut config = Self::quiet();
        let authority = &mut config.authority;
        authority.access_ttl = Duration::from_secs(20 + rng.below(100));
        authority.refresh_ttl = Duration::from_secs(600 + rng.below(3600));
        authority.rotation = !rng.chance(1, 5);
        authority.grace = match rng.below(6) {
            0 | 1 => Duration::ZERO,
            // Longer than a whole retry cycle: the rule L1 applies.
            2 => Duration::from_secs(300 + rng.below(300)),
            _ => Duration::from_secs(rng.below(90)),
        };
        authority.grace_reuses = 1 + rng.below(6) as u32;
        authority.reuse_detection = !rng.chance(1, 4);
        // Real servers differ in what a grace replay returns and in whether a
        // refresh deletes the access token it replaces (Django OAuth Toolkit).
        authority.grace_replay = sample_grace_replay(&mut rng);
        authority.revoke_previous_access = rng.chance(1, 3);
        let mut rate = |max: u64| if rng.chance(1, 2) { rng.below(max + 1) as u16 } else { 0 };
        let (server_error, rate_limit, drop_response, store_write_fail, logout) =
            (rate(150), rate(80), rate(120), rate(150), rate(40));
        let policy_refusal = rate(30);
        let mut switch = |numerator: u64, denominator: u64| u16::from(rng.chance(numerator, denominator));
        let (partition, crash, server_restart) = (switch(1, 2), switch(1, 2), switch(1, 3));
        config.faults = Faults {
            server_error,
            rate_limit,
            policy_refusal,
            drop_response,
            store_write_fail,
            partition,
            crash,
            server_restart,
            logout,
            ..Faults::none()
        };
        config.apps = 1 + rng.below(3) as usize;
        let mean_interval = Duration::from_millis(100 + rng.below(3000));
        config.demand = Some(Demand { mean_interval, burst: 1 + rng.below(30) });
        config.start_spent = rng.chance(1, 2);
        config.start = match rng.below(8) {
            0 => Start::RefreshOnly,
            1 => Start::AccessOnly,
            _ => Start::Pair,
        };
        // One to five minutes of faults (two to ten until issue 17): a
        // world's faults are drawn per host, not per minute, so shorter
        // worlds put more of them into each simulated (and wall) second.
        config.safety_phase = Duration::from_secs(60 + rng.below(240));
        // Healed, every bound passed, then half a minute of callers that
        // must all be served: a burst arrives every 0.1-3.1 s.
        config.liveness_phase = config.session.wait_bound() + Duration::from_secs(30);
        // Half the worlds run the first app as two to four processes sharing its store.
        config.processes = if rng.chance(1, 2) { 2 + rng.below(3) as usize } else { 1 };
        config.session.shared_store = config.processes > 1;
        config.faults.clock_jump = u16::from(rng.chance(1, 3));
        sample_dpop(&mut config, &mut rng);
        // A bound client's proofs carry its wall clock, which these worlds
        // step by minutes: a server that does not answer a stale `iat` with
        // a nonce challenge (as oidc-provider does once it has nonces)
        // refuses every proof. Tier 2's bound worlds talk to one that does.
        if config.dpop && config.authority.dpop_nonce_lifetime.is_none() {
            config.authority.dpop_nonce_lifetime = Some(Duration::from_secs(60 + rng.below(540)));
        }
        sample_login(&mut config, &mut rng);
        sample_database(&mut config, &mut rng, 100);
        // Half the servers' clocks are off by up to an hour either way.
        if rng.chance(1, 2) {
            config.server_clock_offset = rng.below(2 * 3600 + 1) as i64 - 3600;
        }
        config.start_on_this_boot = SplitMix64::new(seed ^ 0xB007_C10C_0000_0002).chance(2, 3);
        // Half the bound worlds' resource servers require the nonce in every
        // proof, as some real ones do: then every caller's first request to
        // it is challenged unless the session remembered its nonce. Drawn on
        // a stream of its own, so the rest of each world is what it was.
        config.authority.resource_requires_dpop_nonce =
            config.dpop && SplitMix64::new(seed ^ 0x0000_4E0C_E000_0003).chance(1, 2);
        config
    }

    /// The same world with a planted bug in its sessions, shaped so the bug
    /// can show: a missing cross-process lock needs processes sharing a
    /// store; the dead-token plants need servers that behave like Django
    /// OAuth Toolkit; retrying interaction-required needs the server to ask.
    #[must_use]
    pub fn with_plant(mut self, plant: Plant) -> Self {
        match plant {
            Plant::NoCrossProcessLock => {
                self.session.shared_store = true;
                self.processes = self.processes.max(2 + (self.safety_phase.as_secs() % 3) as usize);
            }
            // Shows against a server whose grace replay keeps the original
            // expiry, when answers get lost and tokens are short.
            Plant::LifetimeFromLastAttempt => {
                self.authority.grace_replay = GraceReplay::SamePairFullLifetime;
                self.authority.grace = self.authority.grace.max(Duration::from_secs(120));
                self.authority.access_ttl = self.authority.access_ttl.min(Duration::from_secs(60));
                self.faults.drop_response = self.faults.drop_response.max(100);
            }
            // Shows against a server that deletes the access token a refresh replaces.
            Plant::RetryIgnoresRunningRefresh => self.authority.revoke_previous_access = true,
            Plant::RetriesInteractionRequired => self.faults.policy_refusal = self.faults.policy_refusal.max(60),
            // The DPoP plants need bound sessions (with nonces, as every
            // bound world of tier 2 has); backing off from a nonce challenge
            // needs a server that challenges often.
            Plant::RefreshesUnproven | Plant::ProvesKeyBeforeStored => {
                self.dpop = true;
                self.authority.dpop_nonce_lifetime.get_or_insert(Duration::from_secs(300));
            }
            // A database whose locks are lost often, to workers that write late.
            Plant::NoFencing | Plant::LockNotReleasedOnDeath => {
                self.session.shared_store = true;
                self.processes = self.processes.max(2 + (self.safety_phase.as_secs() % 3) as usize);
                let database = self.database.get_or_insert(Database {
                    lock_hold: Duration::from_secs(5 + self.safety_phase.as_secs() % 30),
                    slow: Duration::from_millis(500),
                });
                database.slow = database.slow.max(Duration::from_millis(500));
                self.faults.lock_lost = self.faults.lock_lost.max(300);
                self.faults.pause = self.faults.pause.max(5);
                self.faults.slow_store = self.faults.slow_store.max(100);
                self.faults.crash = self.faults.crash.max(5);
            }
            Plant::NonceChallengeBacksOff => {
                self.dpop = true;
                self.authority.dpop_nonce_lifetime = Some(Duration::from_secs(30));
            }
            // A wall clock that is set back, under blobs the boot clock can read.
            Plant::IgnoresBootClock => {
                self.wall_steps_back = true;
                self.start_on_this_boot = true;
            }
            _ => {}
        }
        self.session.plant = Some(plant);
        self
    }
}

/// What a grace replay returns, as real servers differ.
fn sample_grace_replay(rng: &mut SplitMix64) -> GraceReplay {
    match rng.below(3) {
        0 => GraceReplay::SamePair,
        1 => GraceReplay::FreshPair,
        _ => GraceReplay::SamePairFullLifetime,
    }
}

/// What a run counted, in either tier: the campaign's figures for one seed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Tally {
    /// Refreshes: sent by the sessions (tier 1), served by the authority (tier 2).
    pub refreshes: u64,
    /// Callers that got a token.
    pub granted: u64,
    /// Callers that got none.
    pub failed: u64,
    /// Logouts, by cause.
    pub logouts: BTreeMap<String, u64>,
    /// Faults injected, by kind.
    pub faults: BTreeMap<&'static str, u64>,
    /// Locks a database released while their holder lived and believed it
    /// held them (its connection cut, or the worker stalled); in tier 2,
    /// the first app's database.
    pub locks_lost: u64,
    /// Writes a database refused because their writer's lock was lost.
    pub fenced_writes: u64,
    /// Refreshes C1 or C2 across workers would have flagged, where a
    /// worker's lock was lost (see `SharedStoreMonitor::lock_loss_overlaps`).
    pub lock_loss_overlaps: u64,
}

impl Tally {
    /// Faults of `kind` injected (`"crash"`, `"clock_jump"`, …).
    pub fn fault_count(&self, kind: &str) -> u64 {
        self.faults.get(kind).copied().unwrap_or(0)
    }

    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &Self) {
        self.refreshes += other.refreshes;
        self.granted += other.granted;
        self.failed += other.failed;
        for (cause, count) in &other.logouts {
            *self.logouts.entry(cause.clone()).or_default() += count;
        }
        for (kind, count) in &other.faults {
            *self.faults.entry(kind).or_default() += count;
        }
        self.locks_lost += other.locks_lost;
        self.fenced_writes += other.fenced_writes;
        self.lock_loss_overlaps += other.lock_loss_overlaps;
    }
}
