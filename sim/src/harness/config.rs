//! What a world is made of: its configuration, the faults it samples, and
//! the fates a test can script.

use super::*;

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
