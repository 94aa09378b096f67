//! freshen's benchmarks. Every timing is a comparison of two things measured
//! in the same run, interleaved where it matters, so the machine's speed and
//! its background load cancel out; counts (allocations, refreshes) are exact.
//!
//! `freshen-bench` prints the figures as `key=value` lines; `cargo bench -p
//! freshen-bench` runs the same comparisons under divan.

pub mod alloc;
mod middleware;

pub use middleware::{Arm, middleware, request_instructions};

use std::error::Error;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use freshen::core::ids::CallerId;
use freshen::core::oauth::{Client, FormRequest};
use freshen::core::session::{Command, Event, Io, TransportFailure};
use freshen::core::stored::StoredSession;
use freshen::core::time::{MonoTime, UnixTime};
use freshen::store::MemoryStore;
use freshen::transport::{HttpResponse, ReqwestTransport, Transport, TransportError};
use freshen::{Config, Session, system_clock};
use freshen_sim::authority::AuthorityConfig;
use freshen_sim::harness::World;
use freshen_sim::http::{Server, paths};
use freshen_sim::world::WorldConfig;
use tokio::runtime::Runtime;
use tokio::sync::{RwLock, Semaphore};

/// What the benchmarks return on failure.
pub type BenchError = Box<dyn Error + Send + Sync>;

/// The session the fast-path and middleware benchmarks use.
pub type BenchSession = Session<ReqwestTransport, MemoryStore>;

/// An access token of a realistic length for an opaque token (64 bytes).
pub const ACCESS_TOKEN: &str = "bench-access-0123456789abcdef0123456789abcdef0123456789abcdef012";

const CLIENT: &str = "freshen-bench";

/// How much work each figure gets.
#[derive(Clone, Copy, Debug)]
pub struct Sizes {
    /// Token acquires per round, per thread.
    pub acquires: u64,
    /// Rounds of each side of the fast-path comparison (the median is kept).
    pub rounds: usize,
    /// Steps of the core machine.
    pub steps: u64,
    /// Requests each way in the middleware comparison.
    pub requests: usize,
    /// Tier-1 seeds.
    pub tier1_seeds: u64,
    /// Tier-2 seeds.
    pub tier2_seeds: u64,
    /// Sessions live at once in the fleet registry.
    pub fleet_sessions: usize,
    /// Token lookups timed among them.
    pub fleet_lookups: usize,
    /// DPoP proofs made by each signer.
    pub dpop_proofs: u64,
}

impl Sizes {
    /// Under a minute on two cores.
    pub const QUICK: Self = Self {
        acquires: 200_000,
        rounds: 7,
        steps: 200_000,
        requests: 2_000,
        tier1_seeds: 200,
        tier2_seeds: 6,
        fleet_sessions: 10_000,
        fleet_lookups: 20_000,
        dpop_proofs: 200,
    };
    /// Tighter figures, a few minutes.
    pub const FULL: Self = Self {
        acquires: 2_000_000,
        rounds: 11,
        steps: 2_000_000,
        requests: 20_000,
        tier1_seeds: 2_000,
        tier2_seeds: 40,
        fleet_sessions: 100_000,
        fleet_lookups: 200_000,
        dpop_proofs: 2_000,
    };
}

/// The median of `values` (which must not be empty).
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The `q`-quantile (0..=1) of `values`, nearest rank.
pub fn quantile(values: &mut [f64], q: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len().max(1));
    values.get(rank - 1).copied().unwrap_or(f64::NAN)
}

fn blob(access_token: &str, refresh_token: &str, access_expires_at: UnixTime) -> Result<StoredSession, BenchError> {
    let millis = access_expires_at.since_epoch().as_millis();
    let json = format!(
        r#"{{"v":1,"generation":1,"token_type":"Bearer","access_token":"{access_token}","access_expires_at_ms":{millis},"refresh_token":"{refresh_token}"}}"#
    );
    Ok(StoredSession::decode(json.as_bytes())?)
}

/// A session whose store holds an access token valid for an hour, loaded:
/// acquiring a token from it is the fast path.
pub async fn valid_session(token_endpoint: String, access_token: &str) -> Result<BenchSession, BenchError> {
    let stored = blob(access_token, "bench-refresh", system_clock().saturating_add(Duration::from_secs(3600)))?;
    let config = Config::new(token_endpoint, Client::public(CLIENT));
    let session = Session::start(config, ReqwestTransport::new()?, MemoryStore::holding(&stored))?;
    session.access_token().await?;
    Ok(session)
}

/// The hand-written baseline: a token behind a tokio `RwLock`, cloned out.
pub fn baseline_lock(access_token: &str) -> Arc<RwLock<Option<String>>> {
    Arc::new(RwLock::new(Some(access_token.to_owned())))
}

/// Nanoseconds per acquire on a valid session, each the median of
/// `sizes.rounds` rounds that alternate between the three; `threads` tasks
/// acquire at once, each `sizes.acquires` times.
#[derive(Clone, Copy, Debug)]
pub struct Fastpath {
    /// freshen's borrowing acquire, `with_token(..).await`.
    pub freshen: f64,
    /// freshen's synchronous borrowing acquire, `try_with_token(..)`, in
    /// the same kind of task: what a caller that need not wait pays.
    pub freshen_sync: f64,
    /// The hand-written baseline: a tokio `RwLock` read and a clone.
    pub baseline: f64,
    /// The coarse wall clock read alone ([`system_clock`]), which every
    /// acquire makes: it refuses a token past its usable time even when the
    /// timer that withdraws it fires late, or the machine was suspended.
    pub clock: f64,
    /// The floor of any acquire that keeps that guarantee and frees a
    /// replaced token at once: the clock read plus one `arc_swap` load of a
    /// snapshot like freshen's (an atomic exchange into this thread's debt
    /// slot, which is what lets a writer free the old value safely).
    pub floor: f64,
}

/// Times [`Fastpath`]'s three acquires in interleaved rounds of one run.
pub fn fastpath(runtime: &Runtime, session: &BenchSession, threads: usize, sizes: Sizes) -> Fastpath {
    let lock = baseline_lock(ACCESS_TOKEN);
    let acquires = sizes.acquires;
    let snapshot = Arc::new(floor_snapshot());
    let usable_until = system_clock().saturating_add(Duration::from_secs(3600));
    let (mut freshen, mut freshen_sync, mut baseline) = (Vec::new(), Vec::new(), Vec::new());
    let (mut clock, mut floor) = (Vec::new(), Vec::new());
    for _ in 0..sizes.rounds {
        freshen.push(timed_tasks(runtime, threads, acquires, session, move |session| async move {
            for _ in 0..acquires {
                black_box(session.with_token(|token| black_box(token).generation()).await.is_ok());
            }
        }));
        freshen_sync.push(timed_tasks(runtime, threads, acquires, session, move |session| async move {
            for _ in 0..acquires {
                black_box(session.try_with_token(|token| black_box(token).generation()).is_some());
            }
        }));
        baseline.push(timed_tasks(runtime, threads, acquires, &lock, move |lock| async move {
            for _ in 0..acquires {
                black_box(lock.read().await.clone());
            }
        }));
        clock.push(timed_tasks(runtime, threads, acquires, &(), move |()| async move {
            for _ in 0..acquires {
                black_box(black_box(system_clock()) < usable_until);
            }
        }));
        floor.push(timed_tasks(runtime, threads, acquires, &snapshot, move |snapshot| async move {
            for _ in 0..acquires {
                black_box(floor_acquire(&snapshot, usable_until));
            }
        }));
    }
    Fastpath {
        freshen: median(&mut freshen),
        freshen_sync: median(&mut freshen_sync),
        baseline: median(&mut baseline),
        clock: median(&mut clock),
        floor: median(&mut floor),
    }
}

/// The snapshot [`floor_acquire`] reads: a token, as freshen publishes one.
fn floor_snapshot() -> arc_swap::ArcSwapOption<Box<[String]>> {
    arc_swap::ArcSwapOption::from_pointee(vec![ACCESS_TOKEN.to_owned()].into_boxed_slice())
}

/// The floor of an acquire ([`Fastpath::floor`]): one `arc_swap` load and
/// one coarse clock read against a usable time, and the token's length
/// read, so the token is touched as a caller would.
#[inline]
fn floor_acquire(snapshot: &arc_swap::ArcSwapOption<Box<[String]>>, usable_until: UnixTime) -> Option<usize> {
    let shards = snapshot.load();
    let token = shards.as_ref().and_then(|shards| shards.first());
    token.filter(|_| system_clock() < usable_until).map(|token| black_box(token).len())
}

/// Runs `threads` tasks at once, each given its own clone of `shared`, and
/// returns the wall time divided by `operations` (each task's share).
fn timed_tasks<S, F, Fut>(runtime: &Runtime, threads: usize, operations: u64, shared: &S, task: F) -> f64
where
    S: Clone + Send + 'static,
    F: Fn(S) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let tasks: Vec<_> = (0..threads).map(|_| task(shared.clone())).collect();
    let started = Instant::now();
    runtime.block_on(async {
        let handles: Vec<_> = tasks.into_iter().map(tokio::spawn).collect();
        for handle in handles {
            let _ = handle.await;
        }
    });
    started.elapsed().as_nanos() as f64 / operations as f64
}

/// Nanoseconds per acquire through [`Session::access_token`], which hands
/// out a handle of its own (an `Arc` clone), on one task: the median of
/// `sizes.rounds` rounds. Context for the borrowing fast path.
pub fn fastpath_owned(runtime: &Runtime, session: &BenchSession, sizes: Sizes) -> f64 {
    let acquires = sizes.acquires;
    let mut rounds: Vec<f64> = (0..sizes.rounds)
        .map(|_| {
            timed_tasks(runtime, 1, acquires, session, move |session| async move {
                for _ in 0..acquires {
                    black_box(session.access_token().await.is_ok());
                }
            })
        })
        .collect();
    median(&mut rounds)
}

/// Runs `count` operations of one kind, for an instruction count under
/// callgrind: `fastpath` (the borrowing acquire), `fastpath_sync`
/// (`try_with_token`), `fastpath_owned` (`access_token`), or `step` (the
/// core machine's step).
pub fn run_operations(operation: &str, count: u64) -> Result<(), BenchError> {
    match operation {
        "step" => {
            let mut step = machine_step()?;
            for _ in 0..count {
                step();
            }
        }
        "fastpath_floor" => {
            // On a runtime, as the acquires it is the floor of are.
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let snapshot = floor_snapshot();
            let usable_until = system_clock().saturating_add(Duration::from_secs(3600));
            runtime.block_on(async {
                for _ in 0..count {
                    black_box(floor_acquire(&snapshot, usable_until));
                }
            });
        }
        "fastpath" | "fastpath_sync" | "fastpath_owned" => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let session = runtime.block_on(valid_session("http://127.0.0.1:9/token".into(), ACCESS_TOKEN))?;
            // Each loop its own future, so no iteration pays for choosing
            // it and no loop's code moves with another's.
            match operation {
                "fastpath_owned" => runtime.block_on(async {
                    for _ in 0..count {
                        black_box(session.access_token().await.is_ok());
                    }
                }),
                "fastpath_sync" => runtime.block_on(async {
                    for _ in 0..count {
                        black_box(session.try_with_token(|token| black_box(token).generation()).is_some());
                    }
                }),
                _ => runtime.block_on(async {
                    for _ in 0..count {
                        black_box(session.with_token(|token| black_box(token).generation()).await.is_ok());
                    }
                }),
            }
        }
        other => {
            let arm = other.strip_prefix("request_").and_then(Arm::named);
            let arm = arm.ok_or_else(|| format!("no operation {other}"))?;
            // One thread: the count does not depend on which worker ran what.
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async {
                let arms = middleware::Arms::new().await?;
                for _ in 0..count {
                    arms.once(arm).await?;
                }
                Ok::<_, BenchError>(())
            })?;
        }
    }
    Ok(())
}

/// Instructions per operation of `operation` ([`run_operations`]), counted
/// by callgrind over two runs of this program that differ only in how many
/// operations they run, so setup and teardown cancel out. `None` when
/// valgrind is not installed.
pub fn instructions_per_operation(operation: &str, few: u64, many: u64) -> Result<Option<f64>, BenchError> {
    let program = std::env::current_exe()?;
    let mut counts = Vec::new();
    for count in [few, many] {
        let output = match std::process::Command::new("valgrind")
            .args(["--tool=callgrind", "--callgrind-out-file=/dev/null"])
            .arg(&program)
            .args(["--operations", operation, &count.to_string()])
            .output()
        {
            Ok(output) => output,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error.into()),
        };
        if !output.status.success() {
            return Err(
                format!("callgrind run of {operation} failed: {}", String::from_utf8_lossy(&output.stderr)).into()
            );
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        let collected = stderr
            .lines()
            .find_map(|line| line.split("Collected :").nth(1))
            .and_then(|count| count.trim().parse::<u64>().ok())
            .ok_or("callgrind printed no instruction count")?;
        counts.push(collected);
    }
    match counts[..] {
        [at_few, at_many] => Ok(Some(at_many.saturating_sub(at_few) as f64 / many.saturating_sub(few).max(1) as f64)),
        _ => Err("callgrind did not run twice".into()),
    }
}

/// Heap allocations per acquire on the fast path, and per baseline acquire.
pub fn fastpath_allocs(runtime: &Runtime, session: &BenchSession, acquires: u64) -> (f64, f64) {
    let lock = baseline_lock(ACCESS_TOKEN);
    // `block_on` runs the loop on this thread, where the counter counts.
    let freshen = runtime.block_on(async {
        let before = alloc::on_this_thread();
        for _ in 0..acquires {
            black_box(session.with_token(|token| black_box(token).generation()).await.is_ok());
            black_box(session.try_with_token(|token| black_box(token).generation()).is_some());
            black_box(session.access_token().await.is_ok());
        }
        alloc::on_this_thread() - before
    });
    let baseline = runtime.block_on(async {
        let before = alloc::on_this_thread();
        for _ in 0..acquires {
            black_box(lock.read().await.clone());
        }
        alloc::on_this_thread() - before
    });
    (freshen as f64 / acquires as f64, baseline as f64 / acquires as f64)
}

/// Nanoseconds per DPoP proof of a resource request, signed by freshen (AWS-LC)
/// and by the core's own signer (p256, pure Rust; the only one before), in
/// interleaved rounds of one run: what a bound request costs its caller.
pub fn dpop_proofs(proofs: u64) -> Result<(f64, f64), BenchError> {
    let key = freshen::dpop::DpopKey::from_bytes(&[7; freshen::core::dpop::KEY_BYTES]).map_err(|_| "no key")?;
    let token = freshen::core::token::AccessToken::new(ACCESS_TOKEN);
    let (url, now) = ("https://api.example/v1/items", UnixTime::from_secs(1_800_000_000));
    // The first proof of each works out the public key: not what a request pays.
    black_box(freshen::dpop::proof(&key, "GET", url, now, None, Some(&token))?);
    let (mut freshen_ns, mut core_ns) = (Vec::new(), Vec::new());
    let per_round = (proofs / 10).max(1);
    for _ in 0..10 {
        let started = Instant::now();
        for _ in 0..per_round {
            black_box(freshen::dpop::proof(&key, "GET", url, now, None, Some(&token))?);
        }
        freshen_ns.push(started.elapsed().as_nanos() as f64 / per_round as f64);
        let started = Instant::now();
        for jti in 0..per_round {
            let claims = freshen::dpop::ProofClaims::new("GET", url, now, u128::from(jti).to_le_bytes())
                .with_access_token(&token);
            black_box(key.proof(&claims));
        }
        core_ns.push(started.elapsed().as_nanos() as f64 / per_round as f64);
    }
    Ok((median(&mut freshen_ns), median(&mut core_ns)))
}

/// The core machine alone, in steady state: a caller asks a valid session for
/// a token and every command is drained. Nanoseconds and allocations per step.
pub fn step(steps: u64) -> Result<(f64, f64), BenchError> {
    let mut step = machine_step()?;
    let mut run = |count: u64| {
        for _ in 0..count {
            step();
        }
    };
    run(steps / 10); // warm up
    let started = Instant::now();
    let ((), allocations) = alloc::counted(|| run(steps));
    let nanos = started.elapsed().as_nanos() as f64;
    Ok((nanos / steps as f64, allocations as f64 / steps as f64))
}

/// One step of the core machine on a valid session, as a closure: a new
/// caller asks for a token and every command is drained.
fn machine_step() -> Result<impl FnMut(), BenchError> {
    use freshen::core::session::{Session as Machine, SessionConfig};
    let unix_now = UnixTime::from_secs(1_800_000_000);
    let mut machine = Machine::new(SessionConfig::default(), 1, MonoTime::ZERO, unix_now)?;
    let stored = blob(ACCESS_TOKEN, "bench-refresh", unix_now.saturating_add(Duration::from_secs(3600)))?;
    let mut load = None;
    while let Some(command) = machine.poll_command() {
        if let Command::Io(Io::LoadStore { op }) = command {
            load = Some(op);
        }
    }
    let op = load.ok_or("the machine did not load its store")?;
    machine.handle(MonoTime::ZERO, Event::StoreLoaded { op, stored: Some(stored), unix_now, boot_now: None });
    while machine.poll_command().is_some() {}
    let now = MonoTime::from_secs(1);
    let mut caller = 0;
    Ok(move || {
        caller += 1;
        machine.handle(now, Event::TokenWanted { caller: CallerId(caller) });
        while let Some(command) = machine.poll_command() {
            drop(black_box(command));
        }
    })
}

/// What a thundering herd cost.
#[derive(Clone, Copy, Debug)]
pub struct Herd {
    /// Refreshes the authority served.
    pub refreshes: u64,
    /// Microseconds from the refresh response to a waiter's release: 99th percentile.
    pub release_p99_us: f64,
    /// The same, for the last waiter released.
    pub release_max_us: f64,
}

/// How [`herd_without_a_session`] releases its waiters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Release {
    /// Each waiter through its own oneshot channel, sent one after another
    /// by one thread: what the coordinator does, without the session.
    Oneshots,
    /// One `tokio::sync::watch` publication that every waiter reads: the
    /// broadcast design.
    Broadcast,
}

/// Returns once `waiting()` counts all `callers` (checked every millisecond,
/// for at most a minute): a herd is released only when it has gathered.
async fn all_waiting(waiting: impl Fn() -> usize, callers: usize) -> Result<(), BenchError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while waiting() < callers {
        if Instant::now() > deadline {
            return Err(format!("only {} of {callers} callers of the herd waited", waiting()).into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

/// [`herd`]'s release without a session, on the same runtime: `callers`
/// tasks wait and are released at once, measured as [`herd`] measures them
/// (microseconds from the release to each task's wake, the 99th
/// percentile). With [`Release::Oneshots`] it is the floor: no session can
/// release its waiters sooner than the runtime runs them.
pub async fn herd_without_a_session(callers: usize, release: Release) -> Result<f64, BenchError> {
    let ready = Arc::new(AtomicUsize::new(0));
    let (publish, published) = tokio::sync::watch::channel(false);
    let mut senders = Vec::with_capacity(callers);
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let (send, receive) = tokio::sync::oneshot::channel::<()>();
            senders.push(send);
            let (mut published, ready) = (published.clone(), Arc::clone(&ready));
            tokio::spawn(async move {
                ready.fetch_add(1, Ordering::Relaxed);
                let released = match release {
                    Release::Oneshots => receive.await.is_ok(),
                    Release::Broadcast => published.changed().await.is_ok(),
                };
                (released, Instant::now())
            })
        })
        .collect();
    all_waiting(|| ready.load(Ordering::Relaxed), callers).await?;
    let released_at = Instant::now();
    match release {
        Release::Oneshots => {
            if senders.into_iter().map(|send| send.send(())).any(|sent| sent.is_err()) {
                return Err("a waiter of the herd left before its release".into());
            }
        }
        Release::Broadcast => publish.send(true)?,
    }
    let mut latencies = Vec::with_capacity(callers);
    for task in tasks {
        let (released, at) = task.await?;
        if !released {
            return Err("a waiter of the herd was not released".into());
        }
        latencies.push(at.saturating_duration_since(released_at).as_secs_f64() * 1e6);
    }
    Ok(quantile(&mut latencies, 0.99))
}

/// A transport whose token requests wait at a gate, and which notes when the
/// answer came back.
#[derive(Clone, Debug)]
struct Gated {
    inner: ReqwestTransport,
    gate: Arc<Semaphore>,
    answered_at: Arc<Mutex<Option<Instant>>>,
}

impl Transport for Gated {
    async fn post_form(&self, url: &str, form: &FormRequest) -> Result<HttpResponse, TransportError> {
        let _permit = self.gate.acquire().await.map_err(|_| TransportFailure::NotSent)?;
        let answer = self.inner.post_form(url, form).await;
        if let Ok(mut at) = self.answered_at.lock() {
            *at = Some(Instant::now());
        }
        answer
    }
}

/// `callers` concurrent callers find the access token expired while the
/// refresh is held at a gate; the gate opens; every caller must get a token.
/// Runs against the reference authority on a loopback port.
pub async fn herd(callers: usize) -> Result<Herd, BenchError> {
    let server = Server::loopback(AuthorityConfig::default(), 1).await?;
    let issued = server.state().login(CLIENT);
    let expired = UnixTime::from_since_epoch(system_clock().since_epoch().saturating_sub(Duration::from_secs(60)));
    let stored = blob(issued.access_token.expose_secret(), issued.refresh_token.expose_secret(), expired)?;
    let gate = Arc::new(Semaphore::new(0));
    let answered_at = Arc::new(Mutex::new(None));
    let transport =
        Gated { inner: ReqwestTransport::new()?, gate: Arc::clone(&gate), answered_at: Arc::clone(&answered_at) };
    let config = Config::new(server.url(paths::TOKEN), Client::public(CLIENT));
    let session = Session::start(config, transport, MemoryStore::holding(&stored))?;
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let session = session.clone();
            tokio::spawn(async move {
                let granted = session.access_token().await.is_ok();
                (granted, Instant::now())
            })
        })
        .collect();
    // Every caller waits on the one refresh before the gate opens.
    all_waiting(|| session.waiting(), callers).await?;
    gate.add_permits(callers);
    let mut released = Vec::with_capacity(callers);
    for task in tasks {
        let (granted, at) = task.await?;
        if !granted {
            return Err("a caller of the herd got no token".into());
        }
        released.push(at);
    }
    let answered = answered_at.lock().ok().and_then(|at| *at).ok_or("the refresh never answered")?;
    let mut latencies: Vec<f64> =
        released.iter().map(|at| at.saturating_duration_since(answered).as_secs_f64() * 1e6).collect();
    let release_max_us = latencies.iter().copied().fold(0.0, f64::max);
    Ok(Herd {
        refreshes: server.state().stats().refreshes,
        release_p99_us: quantile(&mut latencies, 0.99),
        release_max_us,
    })
}

/// Campaign seeds per second in tier 1 and in tier 2, on every core, as the
/// campaign runs them (seeds `0..count`), and what tier 2 simulated per
/// second.
pub fn sim_throughput(tier1: u64, tier2: u64) -> SimThroughput {
    let tier1_seeds_per_s = parallel_seeds(tier1, |seed| {
        let mut world = World::new(WorldConfig::sampled(seed), seed);
        world.run();
        black_box(world.violations().len());
    });
    let (callers, faults) = (AtomicU64::new(0), AtomicU64::new(0));
    let tier2_seeds_per_s = parallel_seeds(tier2, |seed| {
        let config = WorldConfig::sampled_tier2(seed);
        let outcome = freshen_sim::tier2::run(&config, seed);
        callers.fetch_add(outcome.tally.granted + outcome.tally.failed, Ordering::Relaxed);
        faults.fetch_add(outcome.tally.faults.values().sum(), Ordering::Relaxed);
        black_box(outcome.violations.len());
    });
    // Seeds per second times what the seeds held, per seed: per wall second.
    let per_second = |total: &AtomicU64| total.load(Ordering::Relaxed) as f64 * tier2_seeds_per_s / tier2.max(1) as f64;
    SimThroughput {
        tier1_seeds_per_s,
        tier2_seeds_per_s,
        tier2_callers_per_s: per_second(&callers),
        tier2_faults_per_s: per_second(&faults),
    }
}

/// What [`sim_throughput`] measured, on all cores.
#[derive(Clone, Copy, Debug)]
pub struct SimThroughput {
    /// Tier-1 campaign seeds per second.
    pub tier1_seeds_per_s: f64,
    /// Tier-2 campaign seeds per second.
    pub tier2_seeds_per_s: f64,
    /// Tier-2 callers (granted or failed) simulated per wall second: what a
    /// world size cannot change, unlike seeds per second.
    pub tier2_callers_per_s: f64,
    /// Tier-2 faults injected per wall second.
    pub tier2_faults_per_s: f64,
}

fn parallel_seeds(count: u64, run: impl Fn(u64) + Sync) -> f64 {
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let next = AtomicU64::new(0);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= count {
                        break;
                    }
                    run(seed);
                }
            });
        }
    });
    count as f64 / started.elapsed().as_secs_f64()
}

/// What [`fleet`] measured.
#[derive(Clone, Copy, Debug)]
pub struct Fleet {
    /// Resident memory per idle session (started, loaded, holding a valid
    /// token), from the process's resident size before and after.
    pub idle_bytes: f64,
    /// Time to a token for a random key whose token is valid, p99.
    pub token_p99_us: f64,
    /// The same through one session alone, p99: what the registry adds is the gap.
    pub single_p99_us: f64,
    /// Resident memory per active session: its token spent, a refresh in
    /// flight (held at the token endpoint) and one caller waiting.
    pub active_bytes: f64,
}

/// `sessions` sessions in one [`Sessions`](freshen::Sessions) registry, each
/// over its own store holding a token valid for an hour: the resident
/// memory they take, and the time to a token for random keys among them
/// (`lookups` of them) against the same through one session held directly.
pub fn fleet(runtime: &Runtime, sessions: usize, lookups: usize) -> Result<Fleet, BenchError> {
    let stored = blob(ACCESS_TOKEN, "bench-refresh", system_clock().saturating_add(Duration::from_secs(3600)))?;
    // The stores first: their blobs stand for the database's rows, not for
    // the sessions' memory.
    let stores: Arc<Vec<MemoryStore>> = Arc::new((0..sessions).map(|_| MemoryStore::holding(&stored)).collect());
    let keys: Vec<String> = (0..sessions).map(|i| format!("tenant-{i}")).collect();
    let open = {
        let stores = Arc::clone(&stores);
        move |key: &str| {
            let index = key.strip_prefix("tenant-").and_then(|i| i.parse::<usize>().ok()).unwrap_or(0);
            stores.get(index).cloned().unwrap_or_default()
        }
    };
    runtime.block_on(async {
        let before = resident_bytes()?;
        let config = Config::new(format!("http://127.0.0.1:9{}", paths::TOKEN), Client::public(CLIENT));
        let registry = freshen::Sessions::new(config, ReqwestTransport::new()?, open);
        for key in &keys {
            registry.access_token(key).await?;
        }
        let after = resident_bytes()?;
        let idle_bytes = after.saturating_sub(before) as f64 / sessions.max(1) as f64;
        let mut rng = freshen::core::rng::SplitMix64::new(7);
        let mut times = Vec::with_capacity(lookups);
        for _ in 0..lookups {
            let key = keys.get(rng.below(keys.len() as u64) as usize).ok_or("no sessions")?;
            let started = Instant::now();
            black_box(registry.access_token(key).await?);
            times.push(started.elapsed().as_secs_f64() * 1e6);
        }
        let token_p99_us = quantile(&mut times, 0.99);
        let one = registry.session(keys.first().ok_or("no sessions")?)?;
        times.clear();
        for _ in 0..lookups {
            let started = Instant::now();
            black_box(one.access_token().await?);
            times.push(started.elapsed().as_secs_f64() * 1e6);
        }
        let single_p99_us = quantile(&mut times, 0.99);
        let active_bytes = active_fleet(&keys).await?;
        Ok(Fleet { idle_bytes, token_p99_us, single_p99_us, active_bytes })
    })
}

/// As many sessions again, each with its token spent, its refresh held in
/// flight at a closed gate, and one caller waiting: resident bytes per session.
async fn active_fleet(keys: &[String]) -> Result<f64, BenchError> {
    let spent = UnixTime::from_since_epoch(system_clock().since_epoch().saturating_sub(Duration::from_secs(60)));
    let stored = blob(ACCESS_TOKEN, "bench-refresh", spent)?;
    let stores: Arc<Vec<MemoryStore>> = Arc::new(keys.iter().map(|_| MemoryStore::holding(&stored)).collect());
    let open = move |key: &str| {
        let index = key.strip_prefix("tenant-").and_then(|i| i.parse::<usize>().ok()).unwrap_or(0);
        stores.get(index).cloned().unwrap_or_default()
    };
    let gate = Arc::new(Semaphore::new(0));
    let transport = Gated { inner: ReqwestTransport::new()?, gate: Arc::clone(&gate), answered_at: Arc::default() };
    let before = resident_bytes()?;
    let session = freshen::core::session::SessionConfig::default().with_request_timeout(Duration::from_secs(600));
    let config =
        Config::new(format!("http://127.0.0.1:9{}", paths::TOKEN), Client::public(CLIENT)).with_session(session);
    let registry = freshen::Sessions::new(config, transport, open);
    let mut waiters = Vec::with_capacity(keys.len());
    for key in keys {
        let session = registry.session(key)?;
        waiters.push(tokio::spawn(async move { session.access_token().await.map(drop) }));
    }
    // Bounded: every session reaches its refresh within moments of its start.
    for key in keys {
        let session = registry.session(key)?;
        for _ in 0..10_000 {
            if matches!(session.state(), freshen::StateView::Refreshing { .. }) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let after = resident_bytes()?;
    gate.close();
    for waiter in waiters {
        waiter.abort();
    }
    Ok(after.saturating_sub(before) as f64 / keys.len().max(1) as f64)
}

/// This process's resident memory (Linux: `/proc/self/statm`, in pages of 4 KiB).
fn resident_bytes() -> Result<u64, BenchError> {
    let statm = std::fs::read_to_string("/proc/self/statm")?;
    let pages = statm.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()).unwrap_or(0);
    Ok(pages * 4096)
}
