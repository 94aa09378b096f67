//! Tier 2: depth. The real driver ([`freshen::Session`]) on client hosts,
//! talking HTTP/1.1 through hyper over turmoil's simulated network to the
//! reference authority, with many concurrent callers per host.
//!
//! Faults: partitions that heal, client crashes that restart the process from
//! its store, server restarts, 503s and 429s, answers dropped after the server
//! committed, and failing store writes. Every driver is watched by the same
//! [`ClientMonitor`] as tier 1 (through its observer hook), the authority by
//! the [`AuthorityMonitor`]. A safety phase with faults is followed by a
//! healed liveness phase in which every caller must be served (or the session
//! logged out for a cause the logout rules accept).
//!
//! Deterministic: turmoil, the sessions, the callers and the faults all draw
//! from the seed, and nothing reads the OS clock or randomness.
//!
//! Its rooms: this file the world's configuration and its phases ([`run`]);
//! `verdict.rs` what the run shows and its violations; `server.rs` the
//! authority's host; `client.rs` the transport and store the drivers use;
//! `host.rs` one client process and its callers.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::authority::{AuditOp, AuditOutcome, Refusal};
use crate::check::{
    AuthorityMonitor, ClientMonitor, Healed, Invariant, LogoutEvidence, SharedStoreMonitor, ToldEnded, Violation,
    judge_healed,
};
use crate::faulty_store::{FaultyStore, StoreFaults};
use crate::harness::logout_name;
use crate::world::{Demand, Faults, LoginGrant, Start, Tally, WorldConfig, dpop_key_from};
use bytes::Bytes;
use freshen::store::MemoryStore;
use freshen::transport::{HttpResponse, Transport, TransportError};
use freshen::{Config, Environment, Observer, Session};
use freshen_core::dpop::ProofClaims;
use freshen_core::oauth::{Client, FormRequest, MAX_BODY_BYTES};
use freshen_core::rng::SplitMix64;
use freshen_core::session::{Command, Event, LogoutCause, StateView, TransportFailure};
use freshen_core::stored::StoredSession;
use freshen_core::time::{BootId, BootTime, MonoTime, UnixTime};
use freshen_core::token::{Fingerprint, RefreshToken};
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::http::{State, answer, paths};

mod client;
mod database;
mod host;
mod server;
mod verdict;

use verdict::verdict;

use client::{ConnectPacer, SERVER_BACKLOG, TurmoilTransport, send};
use database::{AppStore, Database, HostStore};
use host::{Host, Watch, client_id, run_host};
use server::{SERVER_CONNECTION_DEADLINE, ServerFaults, serve};

const AUTHORITY: &str = "authority";
const PORT: u16 = 80;

/// Wall time inside the simulation.
fn sim_wall_clock() -> UnixTime {
    UnixTime::from_since_epoch(turmoil::since_epoch().unwrap_or_default())
}

/// How long each host had been up when the world began.
const UPTIME_AT_START: Duration = Duration::from_secs(3600);

/// Host `index`'s boot clock when the world's wall clock reads `wall`:
/// every host is a machine of its own, and none reboots.
fn boot_clock_at(index: usize, wall: UnixTime) -> BootTime {
    let since_start = wall.saturating_duration_since(UnixTime::from_secs(1_800_000_000));
    BootTime::new(BootId::from_bits(0xB007_0000 + index as u64), UPTIME_AT_START.saturating_add(since_start))
}

/// `wall` moved by `secs` seconds, forward or back: a clock that runs
/// ahead of or behind the world's (a server's offset, a host's step).
fn shifted(wall: UnixTime, secs: i64) -> UnixTime {
    let by = Duration::from_secs(secs.unsigned_abs());
    if secs >= 0 { wall.saturating_add(by) } else { UnixTime::from_since_epoch(wall.since_epoch().saturating_sub(by)) }
}

/// What one tier-2 world did.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct Outcome {
    /// Invariant violations, client and authority.
    pub violations: Vec<Violation>,
    /// What both tiers count: refreshes the authority served, callers,
    /// logouts, faults, and the first app's database's locks, if it has one.
    pub tally: Tally,
    /// The most connections one client host opened.
    pub most_connects: u64,
    /// The trace, when asked for.
    pub trace: Vec<String>,
}

/// A fault the controller applies at a point in simulated time.
#[derive(Clone, Copy, Debug)]
enum Action {
    Partition(usize),
    Repair(usize),
    Crash(usize),
    RestartServer,
    /// Steps a process's wall clock by this many seconds.
    StepClock(usize, i64),
}

/// Runs one tier-2 world for `seed` (a plant in `config.session` breaks the
/// sessions on purpose).
///
/// The phases, each drawing from the seed in this order: the network, the
/// authority, the client hosts, the fault schedule; then the run (faults
/// applied on time, the world healed after the safety phase); then the verdict.
pub fn run(config: &WorldConfig, seed: u64) -> Outcome {
    let mut rng = SplitMix64::new(seed);
    let total = config.safety_phase + config.liveness_phase;
    let mut sim = network(config, &mut rng, total);
    let state = State::simulated(config.authority.clone(), rng.next_u64());
    let faults = Arc::new(ServerFaults {
        rates: Mutex::new(config.faults),
        rng: Mutex::new(rng.fork()),
        counts: Mutex::new(BTreeMap::new()),
        dropped_for: Mutex::new(BTreeMap::new()),
        dropped_successes: Mutex::new(BTreeMap::new()),
        clock_offset: config.server_clock_offset,
        rate_limited: AtomicU64::new(0),
    });
    start_authority(&mut sim, &state, &faults);
    let hosts = client_hosts(config, &state, &mut rng);
    for host in &hosts {
        let (config, host) = (config.clone(), Arc::clone(host));
        sim.host(host.name.clone(), move || run_host(config.clone(), seed, Arc::clone(&host)));
    }
    sim.client("controller", async move {
        tokio::time::sleep(total).await;
        Ok(())
    });
    let schedule = fault_schedule(config, hosts.len(), &mut rng);
    let mut run = Run {
        counts: BTreeMap::new(),
        crashes: vec![0; hosts.len()],
        host_failure: None,
        crashes_due: Vec::new(),
        exits: SplitMix64::new(seed ^ 0x5107_D0E0_0000_0003),
    };
    run.drive(&mut sim, config, &hosts, &faults, schedule);
    verdict(config, &state, &faults, &hosts, run, total)
}

/// How far simulated time moves per step of the simulation. Every host's
/// runtime is polled once per tick whether or not anything happens, so this
/// sets the cost of a quiet second (a world is mostly quiet seconds); within
/// a tick each host's own timers still fire at their exact instants. 20 ms
/// is below every timeout and backoff the sessions use (the shortest, the
/// store's first retry, is 50 ms) and within the network's own latency
/// (1–40 ms, rounded up to ticks): a request and its answer take at least
/// two ticks. It was 5 ms until issue 17: 2–3× slower, with no planted bug
/// caught later.
const TICK: Duration = Duration::from_millis(20);

/// The simulated network, seeded.
fn network(config: &WorldConfig, rng: &mut SplitMix64, total: Duration) -> turmoil::Sim<'static> {
    turmoil::Builder::new()
        .rng_seed(rng.next_u64())
        .simulation_duration(total + Duration::from_secs(60))
        .tick_duration(TICK)
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(40))
        // Bursts open many connections at once; the default backlog (64) would overflow.
        .tcp_capacity(SERVER_BACKLOG)
        .ephemeral_ports(config.ephemeral_ports.0..=config.ephemeral_ports.1)
        .epoch(std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000))
        .build()
}

/// The authority's host: hyper serving the reference authority, one request
/// per connection.
fn start_authority(sim: &mut turmoil::Sim<'_>, state: &Arc<State>, faults: &Arc<ServerFaults>) {
    let (state, faults) = (Arc::clone(state), Arc::clone(faults));
    sim.host(AUTHORITY, move || {
        let (state, faults) = (Arc::clone(&state), Arc::clone(&faults));
        async move {
            let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
            loop {
                let (stream, _) = listener.accept().await?;
                let (state, faults) = (Arc::clone(&state), Arc::clone(&faults));
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let (state, faults) = (Arc::clone(&state), Arc::clone(&faults));
                        async move {
                            let mut response = serve(&state, &faults, request).await?;
                            let date = http_date(faults.clock(state.wall()));
                            response.headers_mut().entry(http::header::DATE).or_insert(date);
                            Ok::<_, server::Dropped>(response)
                        }
                    });
                    // One request per connection, closed by the deadline at the
                    // latest (see `ConnectPacer` for why both matter). The
                    // `Date` header is the simulation's (hyper's own reads the
                    // machine's clock: a replay would differ in it).
                    let connection = hyper::server::conn::http1::Builder::new()
                        .keep_alive(false)
                        .auto_date_header(false)
                        .serve_connection(TokioIo::new(stream), service);
                    let _ = tokio::time::timeout(SERVER_CONNECTION_DEADLINE, connection).await;
                });
            }
        }
    });
}

/// Every client process: one per app, and `config.processes` sharing app 0's
/// store. Each app's store starts as `config.start` says.
fn client_hosts(config: &WorldConfig, state: &State, rng: &mut SplitMix64) -> Vec<Arc<Host>> {
    let mut hosts: Vec<Arc<Host>> = Vec::new();
    let host_count = config.apps.saturating_sub(1) + config.processes.max(1);
    for app in 0..config.apps {
        let first_host = hosts.len();
        let issued = state.login(&client_id(app));
        // Spent: issued a lifetime ago, so it expires as the world starts.
        let issued_at = UnixTime::from_secs(1_800_000_000).since_epoch().saturating_sub(if config.start_spent {
            issued.expires_in
        } else {
            Duration::ZERO
        });
        let family = issued.family;
        let mut stored = config.start.blob(issued, UnixTime::from_since_epoch(issued_at));
        if config.start_on_this_boot {
            // Written by an earlier run of the app's first process.
            stored.access_expires_boot = stored.access_expires_at.map(|at| boot_clock_at(first_host, at));
        }
        let stored = match config.dpop.then(|| dpop_key_from(rng)) {
            Some(key) => {
                let now = state.now();
                state.authority().bind(now, family, &key.thumbprint());
                stored.with_dpop_key(key)
            }
            None => stored,
        };
        let holding = (config.start != Start::Empty).then_some(&stored);
        let memory = holding.map_or_else(MemoryStore::new, MemoryStore::holding);
        // The store lives outside the hosts, so it survives their crashes; its
        // lock is the app's, and a crashed host's guard dies with its runtime,
        // as an OS file lock dies with its process.
        let faults = Arc::new(StoreFaults::seeded(rng.next_u64()).with_write_failures(config.faults.store_write_fail));
        let shared = Arc::new(Mutex::new(SharedStoreMonitor::new(&config.session)));
        // The first app's processes may share a database instead.
        let database = match config.database {
            Some(_) if app == 0 => Database::new(config, holding, rng.next_u64(), Arc::clone(&shared)),
            _ => None,
        };
        let processes = if app == 0 { config.processes.max(1) } else { 1 };
        for process in 0..processes {
            let name = if process == 0 { client_id(app) } else { format!("{}-{process}", client_id(app)) };
            hosts.push(Arc::new(Host {
                index: hosts.len(),
                app,
                name: name.clone(),
                store: HostStore::new(
                    database
                        .as_ref()
                        .map_or_else(|| AppStore::Memory(memory.clone()), |db| AppStore::Database(db.handle(process))),
                    Arc::clone(&faults),
                ),
                database: database.clone(),
                watch: Arc::new(Watch {
                    name,
                    process,
                    shared: Arc::clone(&shared),
                    monitor: Mutex::new({
                        let mut monitor = ClientMonitor::new(&config.session);
                        monitor.expect_retry_after(server::RATE_LIMIT_WAIT);
                        monitor
                    }),
                    trace: config.trace.then(|| Mutex::new(Vec::new())),
                    logouts: Mutex::new(BTreeMap::new()),
                    last_logout: Mutex::new(None),
                    read_in_answers: Mutex::new(BTreeSet::new()),
                }),
                incarnation: AtomicU32::new(0),
                granted: AtomicU64::new(0),
                failed: AtomicU64::new(0),
                failed_after_heal: AtomicU64::new(0),
                told_ended_after_heal: AtomicU64::new(0),
                last_told_ended: Mutex::new(None),
                last_unserved: Mutex::new(None),
                healed: std::sync::atomic::AtomicBool::new(false),
                last_state: Mutex::new(None),
                faulty: std::sync::atomic::AtomicBool::new(true),
                logouts: AtomicU64::new(0),
                wall_step: Arc::default(),
                pacer: Arc::new(ConnectPacer::for_ports(config.ephemeral_ports, host_count)),
                needs_login: std::sync::atomic::AtomicBool::new(false),
                relogin_running: Arc::default(),
                dpop_keys: config.dpop.then(|| Mutex::new(SplitMix64::new(rng.next_u64()))),
                login: config.login,
                logins: AtomicU32::new(0),
                shutdown_asked: std::sync::atomic::AtomicBool::new(false),
                shut_down: std::sync::atomic::AtomicBool::new(false),
            }));
        }
    }
    hosts
}

/// The safety phase's faults, drawn up front, in time order.
fn fault_schedule(config: &WorldConfig, hosts: usize, rng: &mut SplitMix64) -> Vec<(Duration, Action)> {
    let mut schedule: Vec<(Duration, Action)> = Vec::new();
    let safety_ms = u64::try_from(config.safety_phase.as_millis()).unwrap_or(0).max(1);
    for index in 0..hosts {
        if config.faults.partition > 0 {
            for _ in 0..1 + rng.below(3) {
                let at = Duration::from_millis(rng.below(safety_ms));
                let length = Duration::from_millis(500 + rng.below(30_000));
                schedule.push((at, Action::Partition(index)));
                schedule.push(((at + length).min(config.safety_phase), Action::Repair(index)));
            }
        }
        if config.faults.crash > 0 {
            for _ in 0..1 + rng.below(3) {
                schedule.push((Duration::from_millis(rng.below(safety_ms)), Action::Crash(index)));
            }
        }
        if config.faults.clock_jump > 0 {
            for _ in 0..1 + rng.below(2) {
                let at = Duration::from_millis(rng.below(safety_ms));
                // Mostly forward (a suspend, as seen from inside), up to two
                // token lifetimes; sometimes back, up to ten minutes.
                let by = if rng.chance(3, 4) {
                    3 + rng.below(2 * config.authority.access_ttl.as_secs().max(1)) as i64
                } else {
                    -(1 + rng.below(600) as i64)
                };
                schedule.push((at, Action::StepClock(index, by)));
            }
        }
    }
    if config.faults.server_restart > 0 {
        schedule.push((Duration::from_millis(rng.below(safety_ms)), Action::RestartServer));
    }
    schedule.sort_by_key(|(at, _)| *at);
    schedule
}

/// What the run itself counted: faults applied, crashes per host, and a
/// host that failed (a panic inside the simulation).
struct Run {
    counts: BTreeMap<&'static str, u64>,
    crashes: Vec<u64>,
    host_failure: Option<Violation>,
    /// Crashes of database workers waiting for their host to hold the
    /// lock, each with the time it happens anyway.
    crashes_due: Vec<(Duration, usize)>,
    /// Whether a process that is to die exits gracefully instead (half of
    /// them): drawn apart from the seed's other draws.
    exits: SplitMix64,
}

impl Run {
    /// Steps the simulation to its end: faults applied on time, the world
    /// healed once the safety phase is over.
    fn drive(
        &mut self,
        sim: &mut turmoil::Sim<'_>,
        config: &WorldConfig,
        hosts: &[Arc<Host>],
        faults: &ServerFaults,
        schedule: Vec<(Duration, Action)>,
    ) {
        let mut schedule = schedule.into_iter().peekable();
        let mut healed = false;
        loop {
            let elapsed = sim.elapsed();
            while let Some((_, action)) = schedule.next_if(|(at, _)| *at <= elapsed) {
                match action {
                    // A worker sharing a database dies while it holds the
                    // lock (the case its release on death is for), if it
                    // takes the lock within 20 s and before the world heals.
                    Action::Crash(i) if hosts.get(i).is_some_and(|host| host.database.is_some()) => {
                        let latest = (elapsed + Duration::from_secs(20)).min(config.safety_phase);
                        self.crashes_due.push((latest, i));
                    }
                    action => self.apply(sim, hosts, action),
                }
            }
            let holds = |i: usize| hosts.get(i).is_some_and(|host| host.holds_the_lock());
            let (due, waiting): (Vec<_>, Vec<_>) =
                self.crashes_due.iter().partition(|(latest, i)| *latest <= elapsed || holds(*i));
            self.crashes_due = waiting;
            for (_, i) in due {
                self.apply(sim, hosts, Action::Crash(i));
            }
            for host in hosts {
                if host.shut_down.swap(false, Ordering::AcqRel) {
                    self.restart(sim, host);
                }
            }
            if !healed && elapsed >= config.safety_phase {
                healed = true;
                heal(sim, hosts, faults);
            }
            // Callers that start once the world has healed and every bound has passed must be served.
            if healed && elapsed >= config.safety_phase + config.session.wait_bound() {
                for host in hosts {
                    host.healed.store(true, Ordering::Release);
                }
            }
            // turmoil panics outside any host when the world breaks one of
            // its limits (a full backlog, a port still connected): that is a
            // violation of this seed, reported with it, never the end of a
            // campaign (a tier-2 deep run died of one, seed unknown).
            let stepped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sim.step()));
            let failure = match stepped {
                Ok(Ok(true)) => break,
                Ok(Ok(false)) => continue,
                Ok(Err(error)) => format!("a host failed: {error}"),
                Err(panic) => {
                    let message = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                        .unwrap_or_default();
                    format!("the simulated network panicked: {message}")
                }
            };
            self.host_failure = Some(Violation {
                invariant: Invariant::C9,
                at: MonoTime::from_elapsed(sim.elapsed()),
                detail: failure,
            });
            break;
        }
    }

    /// A process whose session shut down has exited: the monitors learn it
    /// as they learn of a crash (what it held in memory is gone), and the
    /// world starts its next incarnation. Not counted as a crash: a
    /// graceful exit loses nothing a later logout could be excused by.
    fn restart(&mut self, sim: &mut turmoil::Sim<'_>, host: &Host) {
        host.watch.crashed();
        if let Some(database) = &host.database {
            database.died(host.watch.process);
        }
        sim.bounce(host.name.clone());
        *self.counts.entry("restart_after_shutdown").or_default() += 1;
    }

    fn apply(&mut self, sim: &mut turmoil::Sim<'_>, hosts: &[Arc<Host>], action: Action) {
        let name = |i: usize| hosts.get(i).map_or_else(String::new, |h| h.name.clone());
        match action {
            Action::Partition(i) => {
                sim.partition(name(i), AUTHORITY);
                *self.counts.entry("partition").or_default() += 1;
            }
            Action::Repair(i) => sim.repair(name(i), AUTHORITY),
            // A process that exits gracefully first shuts its session down
            // (its refresh in flight answered and written, its lock let go),
            // then the world starts it again (`Run::restart`).
            Action::Crash(i) if hosts.get(i).is_some() && self.exits.chance(1, 2) => {
                if let Some(host) = hosts.get(i) {
                    host.shutdown_asked.store(true, Ordering::Release);
                }
                *self.counts.entry("shutdown").or_default() += 1;
            }
            Action::Crash(i) => {
                if let Some(host) = hosts.get(i) {
                    host.shutdown_asked.store(false, Ordering::Release);
                    host.watch.crashed();
                    if let Some(database) = &host.database {
                        database.died(host.watch.process);
                    }
                }
                sim.bounce(name(i));
                if let Some(count) = self.crashes.get_mut(i) {
                    *count += 1;
                }
                *self.counts.entry("crash").or_default() += 1;
            }
            Action::StepClock(i, by) => {
                if let Some(host) = hosts.get(i) {
                    host.wall_step.fetch_add(by, Ordering::AcqRel);
                    host.watch.line(|| format!("{} wall clock stepped {by:+} s", host.name));
                }
                *self.counts.entry("clock_jump").or_default() += 1;
            }
            Action::RestartServer => {
                sim.bounce(AUTHORITY);
                *self.counts.entry("server_restart").or_default() += 1;
            }
        }
    }
}

/// The safety phase is over: partitions repaired, server and store faults off.
fn heal(sim: &mut turmoil::Sim<'_>, hosts: &[Arc<Host>], faults: &ServerFaults) {
    for host in hosts {
        sim.repair(host.name.clone(), AUTHORITY);
    }
    if let Ok(mut rates) = faults.rates.lock() {
        *rates = Faults::default();
    }
    for host in hosts {
        host.store.faults().quiet(true);
        if let Some(database) = &host.database {
            database.heal();
        }
        host.faulty.store(false, Ordering::Release);
    }
}

/// `at` as an HTTP date (IMF-fixdate), for the `Date` header.
fn http_date(at: UnixTime) -> http::HeaderValue {
    let text = crate::harness::http_date(at);
    // An IMF-fixdate is ASCII; the fallback is never taken.
    http::HeaderValue::from_str(&text).unwrap_or(http::HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"))
}
