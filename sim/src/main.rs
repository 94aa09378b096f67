//! `freshen-sim`: the simulation campaign.
//!
//! Runs many seeded worlds (the session machine against the reference
//! authority under sampled faults), checks every invariant at every step, and
//! prints a summary. A failing seed is printed with the command that replays it.
//!
//! Exit status: 0 no invariant violated, 1 a violation, 2 a usage error.
#![allow(clippy::print_stdout, clippy::print_stderr)] // a command-line tool reports on its terminal

mod summary;

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use freshen_core::session::Plant;
use freshen_sim::check::Violation;
use freshen_sim::harness::{World, WorldStats};
use freshen_sim::world::{Database, LoginGrant, Tally, WorldConfig};
use summary::Summary;

/// Every world allocates on nearly every event (deliveries, commands,
/// checker entries): under mimalloc a tier-1 seed costs 5.6 % fewer
/// instructions than under the system allocator (callgrind, 300 seeds).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "\
usage: freshen-sim [--seeds N | --seconds S] [--first S] [--tier 1|2] [--plant NAME] [--threads T] [--fail-fast] [--log]
       freshen-sim --seed S [--tier 1|2] [--plant NAME] [--log]
       freshen-sim plants
       freshen-sim --help | --version
       freshen-sim serve [--port P] [--access-ttl S] [--refresh-ttl S] [--family-lifetime S]
                         [--grace S] [--grace-reuses N] [--fresh-pair] [--no-rotation] [--no-reuse-detection]
                         [--device-interval S] [--dpop-nonce-lifetime S] [--resource-requires-nonce]

  --seeds N     seeds to run (default 4000)
  --seconds S   run seeds until S seconds have passed (seeds in progress then
                finish), for a CI budgeted by time; with --seeds, whichever
                comes first. Ctrl-C or SIGTERM stops a campaign the same way,
                summary included (a second one quits at once)
  --first S     first seed of the range (default 0)
  --tier T      run only tier 1 (the pure machine and authority in a discrete-event
                world: breadth) or tier 2 (the real driver over hyper on turmoil: depth);
                by default one seed in twenty runs in tier 2
  --seed S      replay one seed and print its full trace (no token bytes)
  --plant NAME  run a deliberately broken session (`freshen-sim plants` lists them,
                one name per line), which the campaign must catch
  --threads T   worker threads (default: the machine's cores)
  --fail-fast   stop taking seeds once one violated an invariant: the verdict
                (exit status) is the same, the counts cover only the seeds run
  --log         write every log event of the drivers (tier 2), at trace level, to
                stderr: the leak scan reads it for token bytes

  serve         run the reference authority on 127.0.0.1:P (default 8080) until interrupted:
                POST /token (refresh_token, authorization_code, device_code and password
                grants), GET /authorize (approves at once, redirecting to a loopback
                redirect_uri with a code; PKCE S256 required), POST /revoke, GET /resource,
                POST /device_authorization (RFC 8628), and POST /device
                (user_code=..&decision=approve|deny: the user's side of a device login).
                A login with a DPoP proof binds its grant to the proof's key (RFC 9449);
                --dpop-nonce-lifetime S requires the server's nonce in every proof, a new
                one every S seconds; --resource-requires-nonce requires it at /resource
                too (otherwise the resource asks only a proof too old or naming an old one)

A campaign writes its summary to stdout when it ends. While it runs, stderr
shows a progress bar on a terminal and a line a minute elsewhere, and names
each of the first 20 violating seeds, with its replay command, as it ends.

exit status: 0 no invariant violated, 1 a violation (seed and replay command printed), 2 usage error,
130 stopped by Ctrl-C or SIGTERM before its seeds ran, with no violation";

/// `freshen-sim serve`: the reference authority on a real port, for manual use.
fn serve(args: impl Iterator<Item = String>) -> Result<(), String> {
    use freshen_sim::authority::{AuthorityConfig, GraceReplay};
    let mut config = AuthorityConfig::default();
    let mut port: u16 = 8080;
    let mut args = args;
    while let Some(flag) = args.next() {
        let mut seconds = |name: &str| -> Result<std::time::Duration, String> {
            let text = args.next().ok_or_else(|| format!("{name} needs a value"))?;
            text.parse::<u64>().map(std::time::Duration::from_secs).map_err(|_| format!("{name}: not a number: {text}"))
        };
        match flag.as_str() {
            "--port" => port = u16::try_from(seconds("--port")?.as_secs()).map_err(|_| "--port: too large")?,
            "--access-ttl" => config.access_ttl = seconds("--access-ttl")?,
            "--refresh-ttl" => config.refresh_ttl = seconds("--refresh-ttl")?,
            "--family-lifetime" => config.family_lifetime = seconds("--family-lifetime")?,
            "--grace" => config.grace = seconds("--grace")?,
            "--grace-reuses" => {
                config.grace_reuses = u32::try_from(seconds("--grace-reuses")?.as_secs()).map_err(|_| "too large")?;
            }
            "--fresh-pair" => config.grace_replay = GraceReplay::FreshPair,
            "--no-rotation" => config.rotation = false,
            "--no-reuse-detection" => config.reuse_detection = false,
            "--device-interval" => config.device_interval = seconds("--device-interval")?,
            "--dpop-nonce-lifetime" => config.dpop_nonce_lifetime = Some(seconds("--dpop-nonce-lifetime")?),
            "--resource-requires-nonce" => config.resource_requires_dpop_nonce = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => return Err(format!("serve: unknown argument {other}")),
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let server = freshen_sim::http::Server::bind(freshen_sim::http::State::new(config.clone(), 1), address)
            .await
            .map_err(|e| format!("cannot listen on {address}: {e}"))?;
        // Listening before saying so: a SIGTERM sent as soon as the line is
        // read (a service manager, a test) must find the handler in place.
        let interrupted = Interrupted::listen();
        println!("reference authority on {} ({config:?})", server.url(""));
        println!("  POST {}   POST {}   GET {}", server.url("/token"), server.url("/revoke"), server.url("/resource"));
        println!("  POST {}   POST {}", server.url("/device_authorization"), server.url("/device"));
        interrupted.wait().await;
        println!("refreshes served: {}", server.state().stats().refreshes);
        Ok(())
    })
}

/// Ctrl-C or, on Unix, SIGTERM (what `kill` and service managers send),
/// listened for from [`Interrupted::listen`] on.
struct Interrupted {
    #[cfg(unix)]
    signals: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Interrupted {
    /// Installs the handlers now (inside a runtime).
    fn listen() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let signals = signal(SignalKind::interrupt()).ok().zip(signal(SignalKind::terminate()).ok());
            Self { signals }
        }
        #[cfg(not(unix))]
        Self {}
    }

    async fn wait(self) {
        #[cfg(unix)]
        if let Some((mut interrupt, mut terminate)) = self.signals {
            tokio::select! {
                biased;
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Which simulation runs a seed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Tier {
    /// The pure machine and authority in a discrete-event world: breadth.
    One,
    /// The real driver over hyper on turmoil: depth.
    Two,
}

impl Tier {
    fn number(self) -> u8 {
        match self {
            Tier::One => 1,
            Tier::Two => 2,
        }
    }
}

#[derive(Debug)]
struct Options {
    seeds: u64,
    /// `--seeds` was given: the range is bounded even with a time budget.
    seeds_given: bool,
    /// Stop taking seeds after this much time.
    budget: Option<Duration>,
    first: u64,
    tier: Option<Tier>,
    replay: Option<u64>,
    plant: Option<Plant>,
    threads: usize,
    fail_fast: bool,
    log: bool,
}

fn parse(args: impl Iterator<Item = String>) -> Result<Options, String> {
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let mut options = Options {
        // About a minute on two cores (59 s on this stop's machine): twice
        // the seeds of stop 30's default, which took as long then.
        seeds: 4000,
        seeds_given: false,
        budget: None,
        first: 0,
        tier: None,
        replay: None,
        plant: None,
        threads,
        fail_fast: false,
        log: false,
    };
    let mut args = args.peekable();
    while let Some(flag) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        let number =
            |name: &str, text: String| text.parse::<u64>().map_err(|_| format!("{name}: not a number: {text}"));
        match flag.as_str() {
            "--seeds" => {
                options.seeds = number("--seeds", value("--seeds")?)?;
                options.seeds_given = true;
            }
            "--seconds" => {
                let seconds = number("--seconds", value("--seconds")?)?;
                options.budget = Some(Duration::from_secs(seconds.max(1)));
            }
            "--first" => options.first = number("--first", value("--first")?)?,
            "--seed" => options.replay = Some(number("--seed", value("--seed")?)?),
            "--tier" => {
                options.tier = Some(match value("--tier")?.as_str() {
                    "1" => Tier::One,
                    "2" => Tier::Two,
                    other => return Err(format!("--tier: 1 or 2, not {other}")),
                });
            }
            "--plant" => {
                let name = value("--plant")?;
                options.plant =
                    Some(Plant::from_name(&name).ok_or_else(|| format!("--plant: unknown variant {name}"))?);
            }
            "--log" => options.log = true,
            "--fail-fast" => options.fail_fast = true,
            "--threads" => {
                options.threads = usize::try_from(number("--threads", value("--threads")?)?).unwrap_or(1).max(1);
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if options.seeds == 0 {
        return Err("--seeds must be at least 1".into());
    }
    Ok(options)
}

/// What one seed did, in either tier.
struct Outcome {
    tier: Tier,
    seed: u64,
    /// Client processes sharing one store (the first app's, in tier 2).
    processes: usize,
    /// Its sessions are bound by DPoP.
    bound: bool,
    /// How its user logs in.
    login: LoginGrant,
    /// Its shared store is a database; and whether its server's grace
    /// covers a lost lock (then a lost lock must cost no session).
    database: Option<bool>,
    tally: Tally,
    violations: Vec<Violation>,
    trace: Vec<String>,
}

/// Whether a world shares a database, and if so whether its server's grace
/// covers a lost lock.
fn database_kind(config: &WorldConfig) -> Option<bool> {
    config.database.map(|database| {
        config.authority.grace >= database.covering_grace(&config.session)
            && config.authority.grace_reuses >= Database::covering_reuses(&config.session)
    })
}

fn run_seed(tier: Tier, seed: u64, plant: Option<Plant>, trace: bool) -> Outcome {
    match tier {
        Tier::One => {
            let mut config = WorldConfig::sampled(seed);
            if let Some(plant) = plant {
                config = config.with_plant(plant);
            }
            config.trace = trace;
            let (processes, bound, login) = (config.processes, config.dpop, config.login);
            let database = database_kind(&config);
            let mut world = World::new(config, seed);
            world.run();
            let stats: &WorldStats = world.stats();
            let tally = stats.tally.clone();
            let mut trace = world.trace().to_vec();
            if !trace.is_empty() {
                trace.push(world.summary());
            }
            Outcome { tier, seed, processes, bound, login, database, tally, violations: world.violations(), trace }
        }
        Tier::Two => {
            let mut config = WorldConfig::sampled_tier2(seed);
            if let Some(plant) = plant {
                config = config.with_plant(plant);
            }
            config.trace = trace;
            let outcome = freshen_sim::tier2::run(&config, seed);
            Outcome {
                tier,
                seed,
                processes: config.processes,
                bound: config.dpop,
                login: config.login,
                database: database_kind(&config),
                tally: outcome.tally,
                violations: outcome.violations,
                trace: outcome.trace,
            }
        }
    }
}

/// How this binary was started, to print a replay command that works the same way.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Invocation {
    /// Through `cargo run` (which sets `CARGO_MANIFEST_DIR` for the program).
    Cargo,
    /// Directly, as this path.
    Binary(String),
}

impl Invocation {
    fn current() -> Self {
        match (std::env::var_os("CARGO_MANIFEST_DIR"), std::env::args().next()) {
            (None, Some(program)) => Invocation::Binary(program),
            _ => Invocation::Cargo,
        }
    }
}

fn replay_command(invocation: &Invocation, tier: Tier, seed: u64, plant: Option<Plant>) -> String {
    let plant = plant.map(|p| format!(" --plant {}", p.name())).unwrap_or_default();
    let tier = if tier == Tier::Two { " --tier 2" } else { "" };
    match invocation {
        Invocation::Cargo => format!("cargo run --release -p freshen-sim -- --seed {seed}{tier}{plant}"),
        Invocation::Binary(program) => format!("{program} --seed {seed}{tier}{plant}"),
    }
}

fn replay(tier: Tier, seed: u64, plant: Option<Plant>) -> ExitCode {
    let outcome = run_seed(tier, seed, plant, true);
    for line in &outcome.trace {
        println!("{line}");
    }
    println!(
        "tier {} seed {seed}: refreshes {} granted {} failed {} logouts {:?} violations {}",
        tier.number(),
        outcome.tally.refreshes,
        outcome.tally.granted,
        outcome.tally.failed,
        outcome.tally.logouts,
        outcome.violations.len()
    );
    for violation in &outcome.violations {
        println!("{violation}");
    }
    if outcome.violations.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) }
}

/// Which seeds run in which tier: all in the chosen tier, or by default one
/// in twenty in tier 2 (slower, deeper) and the rest in tier 1. The tiers are
/// interleaved, a tier-2 seed before every ten of tier 1: a bug only one tier
/// sees is met early (`--fail-fast` stops within seconds), and the long
/// tier-2 seeds all start early, so none runs alone at the end.
fn jobs(options: &Options) -> Jobs {
    match (options.budget, options.seeds_given) {
        (Some(_), false) => Jobs::Endless { first: options.first, tier: options.tier },
        _ => Jobs::Counted { first: options.first, count: options.seeds, tier: options.tier },
    }
}

/// The seeds a campaign runs, by position: worked out from the position, not
/// listed, so a campaign of any size holds no list of its seeds.
enum Jobs {
    /// `count` seeds from `first`: all in the chosen tier, or the counted
    /// interleaving of [`jobs`].
    Counted { first: u64, count: u64, tier: Option<Tier> },
    /// Until the time budget runs out: the chosen tier's seeds in order, or
    /// by default one tier-2 seed before every nineteen of tier 1 (the same
    /// one in twenty as a counted campaign).
    Endless { first: u64, tier: Option<Tier> },
}

impl Jobs {
    fn get(&self, index: u64) -> Option<(Tier, u64)> {
        match *self {
            Self::Counted { count, .. } if index >= count => None,
            Self::Counted { first, tier: Some(tier), .. } | Self::Endless { first, tier: Some(tier) } => {
                Some((tier, first.checked_add(index)?))
            }
            Self::Counted { first, count, tier: None } => {
                // One seed in twenty in tier 2 (at least one), each before a
                // block of ten tier-1 seeds, and the rest of tier 1 after them.
                // (A campaign of fewer than twenty seeds has one tier-2 seed
                // and a block cut short by `count`.)
                const PER_BLOCK: u64 = 10;
                let deep = (count / 20).clamp(1, count);
                let interleaved = deep * (PER_BLOCK + 1);
                let (tier, offset) = if index < interleaved {
                    let (block, position) = (index / (PER_BLOCK + 1), index % (PER_BLOCK + 1));
                    match position {
                        0 => (Tier::Two, block),
                        _ => (Tier::One, block * PER_BLOCK + position - 1),
                    }
                } else {
                    (Tier::One, deep * PER_BLOCK + (index - interleaved))
                };
                Some((tier, first.checked_add(offset)?))
            }
            Self::Endless { first, tier: None } => {
                let (block, position) = (index / 20, index % 20);
                match position {
                    0 => Some((Tier::Two, first.checked_add(block)?)),
                    _ => Some((Tier::One, first.checked_add(block * 19 + position - 1)?)),
                }
            }
        }
    }

    /// How many there are, when that is known.
    fn total(&self) -> Option<u64> {
        match self {
            Self::Counted { count, .. } => Some(*count),
            Self::Endless { .. } => None,
        }
    }
}

/// Listens for Ctrl-C and SIGTERM from now on, on a thread of its own: the
/// first sets the returned flag (a campaign then starts no new seed, lets
/// those in progress finish and prints its summary); a second ends the
/// process at once. `None` (no flag to set) where signals cannot be heard.
fn stop_on_interrupt() -> Option<Arc<AtomicBool>> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
    // Listening before the campaign says it started: a signal sent as soon
    // as that line is read (a CI's timeout, a test) must find the handler.
    let first = {
        let _inside = runtime.enter();
        Interrupted::listen()
    };
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = Arc::clone(&stop);
    std::thread::Builder::new()
        .name("freshen-sim interrupt".into())
        .spawn(move || {
            runtime.block_on(async move {
                first.wait().await;
                stopping.store(true, Ordering::Relaxed);
                eprintln!(
                    "\nfreshen-sim: interrupted: no new seed starts; the summary follows the seeds in progress \
                     (interrupt again to quit at once)"
                );
                Interrupted::listen().wait().await;
                std::process::exit(130);
            });
        })
        .ok()?;
    Some(stop)
}

fn campaign(options: &Options) -> ExitCode {
    let stop = stop_on_interrupt();
    let interrupted = || stop.as_ref().is_some_and(|stop| stop.load(Ordering::Relaxed));
    let jobs = jobs(options);
    let total = jobs.total();
    let next = AtomicU64::new(0);
    let done = AtomicU64::new(0);
    let summary = Mutex::new(Summary::default());
    let busy: Mutex<BTreeMap<Tier, f64>> = Mutex::new(BTreeMap::new());
    let started = Instant::now();
    let progress = Progress::new(started, total, options.plant);
    progress.say(&format!(
        "freshen-sim: running seeds from {}, {} at a time (Ctrl-C stops with a summary)",
        options.first, options.threads
    ));
    let caught = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        for _ in 0..options.threads {
            scope.spawn(|| {
                let in_time = || options.budget.is_none_or(|budget| started.elapsed() < budget);
                while let Some((tier, seed)) = Some(next.fetch_add(1, Ordering::Relaxed))
                    .filter(|_| !caught.load(Ordering::Relaxed) && !interrupted() && in_time())
                    .and_then(|i| jobs.get(i))
                {
                    let began = Instant::now();
                    let outcome = run_seed(tier, seed, options.plant, false);
                    if options.fail_fast && !outcome.violations.is_empty() {
                        caught.store(true, Ordering::Relaxed);
                    }
                    if let Ok(mut busy) = busy.lock() {
                        *busy.entry(tier).or_default() += began.elapsed().as_secs_f64();
                    }
                    let finished = done.fetch_add(1, Ordering::Relaxed) + 1;
                    progress.seed_ended(finished, &outcome);
                    if let Ok(mut summary) = summary.lock() {
                        summary.add(outcome);
                    }
                }
            });
        }
    });
    progress.end();
    let summary = summary.into_inner().unwrap_or_default();
    let busy = busy.into_inner().unwrap_or_default();
    let code = summary.report(options, &busy, started.elapsed().as_secs_f64());
    match (code == ExitCode::SUCCESS, interrupted()) {
        (true, true) => {
            println!("stopped by a signal after {} seeds", summary.seeds());
            ExitCode::from(130)
        }
        _ => code,
    }
}

/// What a campaign says on stderr while it runs: a bar on a terminal, and
/// elsewhere (a CI log, a deep run left alone) a line a minute. A seed that
/// violates an invariant is named as soon as it ends (the first few), so a
/// run stopped before its summary still leaves what it found.
struct Progress {
    terminal: bool,
    started: Instant,
    total: Option<u64>,
    plant: Option<Plant>,
    /// Violating seeds so far, and when the last line a minute was written.
    failing: AtomicU64,
    last_line: Mutex<Instant>,
}

impl Progress {
    const LINE_EVERY: Duration = Duration::from_secs(60);
    /// Violating seeds named as they end; the summary lists them all.
    const NAMED_AT_MOST: u64 = 20;

    fn new(started: Instant, total: Option<u64>, plant: Option<Plant>) -> Self {
        let terminal = std::io::stderr().is_terminal();
        Self { terminal, started, total, plant, failing: AtomicU64::new(0), last_line: Mutex::new(started) }
    }

    fn seed_ended(&self, finished: u64, outcome: &Outcome) {
        let failing = match outcome.violations.first() {
            Some(first) => {
                let failing = self.failing.fetch_add(1, Ordering::Relaxed) + 1;
                if failing <= Self::NAMED_AT_MOST {
                    let (tier, seed) = (outcome.tier.number(), outcome.seed);
                    let replay = replay_command(&Invocation::current(), outcome.tier, seed, self.plant);
                    self.say(&format!("freshen-sim: tier {tier} seed {seed} violated: {first}\n  replay: {replay}"));
                }
                failing
            }
            None => self.failing.load(Ordering::Relaxed),
        };
        let elapsed = self.started.elapsed();
        if self.terminal {
            if finished.is_multiple_of(10) || Some(finished) == self.total {
                self.draw_bar(finished, elapsed);
            }
        } else if let Ok(mut last) = self.last_line.lock()
            && last.elapsed() >= Self::LINE_EVERY
        {
            *last = Instant::now();
            let of = self.total.map(|total| format!("/{total}")).unwrap_or_default();
            eprintln!("freshen-sim: {finished}{of} seeds in {} s, {failing} violating", elapsed.as_secs());
        }
    }

    /// A line of its own, above the bar on a terminal.
    fn say(&self, line: &str) {
        if self.terminal {
            eprintln!("\r\x1b[2K{line}");
        } else {
            eprintln!("{line}");
        }
    }

    fn draw_bar(&self, done: u64, elapsed: Duration) {
        const WIDTH: u64 = 40;
        let mut err = std::io::stderr().lock();
        let _ = match self.total {
            Some(total) => {
                let filled = (done * WIDTH / total.max(1)).min(WIDTH) as usize;
                let bar = format!("{}{}", "#".repeat(filled), "-".repeat(WIDTH as usize - filled));
                write!(err, "\r[{bar}] {done}/{total} seeds")
            }
            None => write!(err, "\r{done} seeds in {} s", elapsed.as_secs()),
        };
        let _ = err.flush();
    }

    fn end(&self) {
        if self.terminal {
            eprintln!();
        }
    }
}

/// Sends every tracing event of freshen's own crates, at trace level, to
/// stderr (the network simulator's own chatter stays at info). Without the
/// machine's time: the log of a seed replays byte for byte, as its trace does.
fn install_log() {
    use tracing_subscriber::layer::SubscriberExt as _;
    let targets = tracing_subscriber::filter::Targets::new()
        .with_default(tracing::Level::INFO)
        .with_target("freshen", tracing::Level::TRACE)
        .with_target("freshen_core", tracing::Level::TRACE)
        .with_target("freshen_sim", tracing::Level::TRACE);
    let layer = tracing_subscriber::fmt::layer().without_time().with_ansi(false).with_writer(std::io::stderr);
    let subscriber = tracing_subscriber::registry().with(layer).with(targets);
    // It fails only when a subscriber is already set, and nothing else sets one.
    let _ = tracing::subscriber::set_global_default(subscriber);
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("plants") {
        for plant in Plant::ALL {
            println!("{}", plant.name());
        }
        return ExitCode::SUCCESS;
    }
    if args.peek().map(String::as_str) == Some("serve") {
        args.next();
        return match serve(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => {
                eprintln!("freshen-sim: {message}\n{USAGE}");
                ExitCode::from(2)
            }
        };
    }
    if matches!(args.peek().map(String::as_str), Some("-V" | "--version")) {
        println!("freshen-sim {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    match parse(args) {
        // Asked for: the usage goes to stdout, so it can be paged or grepped.
        Err(message) if message.is_empty() => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("freshen-sim: {message}\n{USAGE}");
            ExitCode::from(2)
        }
        Ok(options) => {
            if options.log {
                install_log();
            }
            match options.replay {
                Some(seed) => replay(options.tier.unwrap_or(Tier::One), seed, options.plant),
                None => campaign(&options),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> impl Iterator<Item = String> {
        line.split_whitespace().map(str::to_owned).collect::<Vec<_>>().into_iter()
    }

    #[test]
    fn parses_the_documented_flags() {
        let o = parse(args("--seeds 20 --first 5 --tier 2 --plant no-single-flight --threads 3")).unwrap();
        assert!(!o.fail_fast && parse(args("--fail-fast")).unwrap().fail_fast);
        assert_eq!((o.seeds, o.first, o.threads, o.tier), (20, 5, 3, Some(Tier::Two)));
        assert_eq!(o.plant, Some(Plant::NoSingleFlight));
        assert_eq!(parse(args("--seed 7")).unwrap().replay, Some(7));
        assert!(parse(args("--seed 7 --log")).unwrap().log);
        assert!(!o.log);
    }

    #[test]
    fn rejects_bad_usage() {
        for bad in ["--seeds", "--seeds x", "--seeds 0", "--seconds x", "--plant nope", "--tier 3", "--frobnicate"] {
            assert!(parse(args(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_replay_command_names_the_tier_and_the_plant() {
        assert_eq!(
            replay_command(&Invocation::Cargo, Tier::Two, 42, Some(Plant::GrantBeforePersist)),
            "cargo run --release -p freshen-sim -- --seed 42 --tier 2 --plant grant-before-persist"
        );
        assert_eq!(
            replay_command(&Invocation::Cargo, Tier::One, 7, None),
            "cargo run --release -p freshen-sim -- --seed 7"
        );
        // Run directly, the command names the binary as it was run.
        let direct = Invocation::Binary("target/release/freshen-sim".into());
        assert_eq!(replay_command(&direct, Tier::One, 7, None), "target/release/freshen-sim --seed 7");
    }

    #[test]
    fn the_default_campaign_runs_both_tiers() {
        let o = parse(args("--seeds 1000")).unwrap();
        let listed = jobs(&o);
        assert_eq!(listed.total(), Some(1000));
        let jobs: Vec<(Tier, u64)> = (0..1000).map_while(|i| listed.get(i)).collect();
        assert_eq!(jobs.len(), 1000);
        assert_eq!(listed.get(1000), None);
        assert_eq!(jobs.iter().filter(|(t, _)| *t == Tier::Two).count(), 50);
        // Each tier's seeds are the same as ever, in order; the tiers interleave.
        let seeds = |tier| jobs.iter().filter(|(t, _)| *t == tier).map(|(_, seed)| *seed).collect::<Vec<_>>();
        assert_eq!(seeds(Tier::Two), (0..50).collect::<Vec<_>>());
        assert_eq!(seeds(Tier::One), (0..950).collect::<Vec<_>>());
        assert_eq!(&jobs[..3], [(Tier::Two, 0), (Tier::One, 0), (Tier::One, 1)]);
        assert!(jobs[550..].iter().all(|(t, _)| *t == Tier::One), "450 short seeds follow the last long one");
    }

    /// The seeds are worked out from their position, not listed: they are
    /// the ones a list built block by block gives, for every campaign size
    /// (tiny ones included), and a campaign of a billion seeds costs no
    /// memory to describe.
    #[test]
    fn a_counted_campaign_works_its_seeds_out_as_a_list_would_give_them() {
        let listed = |first: u64, count: u64| {
            let deep = (count / 20).max(1).min(count);
            let mut tier1 = (first..first + count - deep).map(|seed| (Tier::One, seed));
            let mut jobs = Vec::new();
            for seed in first..first + deep {
                jobs.push((Tier::Two, seed));
                jobs.extend(tier1.by_ref().take(10));
            }
            jobs.extend(tier1);
            jobs
        };
        for count in (1..=450).chain([999, 1000, 1001, 2000, 4321]) {
            let counted = jobs_of(&format!("--seeds {count} --first 7"));
            let worked_out: Vec<_> = (0..count).map_while(|i| counted.get(i)).collect();
            assert_eq!(worked_out, listed(7, count), "{count} seeds");
            assert_eq!(counted.get(count), None);
        }
        let huge = jobs_of("--seeds 1000000000");
        assert_eq!(
            (huge.total(), huge.get(0), huge.get(999_999_999)),
            (Some(1_000_000_000), Some((Tier::Two, 0)), Some((Tier::One, 949_999_999)))
        );
        assert_eq!(jobs_of(&format!("--first {} --seeds 5 --tier 1", u64::MAX)).get(1), None, "past the last seed");
    }

    #[test]
    fn a_time_budget_runs_seeds_endlessly_one_in_twenty_in_tier_2() {
        let o = parse(args("--seconds 60 --first 100")).unwrap();
        assert_eq!(o.budget, Some(Duration::from_secs(60)));
        let endless = jobs(&o);
        assert_eq!(endless.total(), None);
        let jobs: Vec<(Tier, u64)> = (0..20_000).map_while(|i| endless.get(i)).collect();
        let seeds = |tier| jobs.iter().filter(|(t, _)| *t == tier).map(|(_, seed)| *seed).collect::<Vec<_>>();
        assert_eq!(seeds(Tier::Two), (100..1100).collect::<Vec<_>>());
        assert_eq!(seeds(Tier::One), (100..19_100).collect::<Vec<_>>());
        // With a tier, or with a seed count, as told.
        let tier1 = jobs_of("--seconds 5 --tier 1 --first 3");
        assert_eq!((tier1.total(), tier1.get(0), tier1.get(9)), (None, Some((Tier::One, 3)), Some((Tier::One, 12))));
        assert_eq!(jobs_of("--seconds 5 --seeds 40").total(), Some(40));
    }

    fn jobs_of(line: &str) -> Jobs {
        jobs(&parse(args(line)).unwrap())
    }
}
