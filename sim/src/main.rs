//! `freshen-sim`: the simulation campaign.
//!
//! Runs many seeded worlds (the session machine against the reference
//! authority under sampled faults), checks every invariant at every step, and
//! prints a summary. A failing seed is printed with the command that replays it.
//!
//! Exit status: 0 no invariant violated, 1 a violation, 2 a usage error.
#![allow(clippy::print_stdout, clippy::print_stderr)] // a command-line tool reports on its terminal

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use freshen_core::check::Violation;
use freshen_core::harness::{World, WorldConfig, WorldStats};
use freshen_core::session::Plant;

const USAGE: &str = "\
usage: freshen-sim [--seeds N] [--first S] [--tier 1] [--plant NAME] [--threads T]
       freshen-sim --seed S [--plant NAME]
       freshen-sim serve [--port P] [--access-ttl S] [--refresh-ttl S] [--family-lifetime S]
                         [--grace S] [--grace-reuses N] [--fresh-pair] [--no-rotation] [--no-reuse-detection]

  --seeds N     seeds to run (default 1000)
  --first S     first seed of the range (default 0)
  --tier 1      tier 1: the pure machine and authority in a discrete-event world
                (tier 2, turmoil with the real driver, is not built yet)
  --seed S      replay one seed and print its full trace (no token bytes)
  --plant NAME  run a deliberately broken session: no-single-flight,
                grant-before-persist, logout-keeps-storage, retry-forgets-rotation
  --threads T   worker threads (default: the machine's cores)

  serve         run the reference authority on 127.0.0.1:P (default 8080) until interrupted:
                POST /token (refresh_token and password grants), POST /revoke, GET /resource

exit status: 0 no invariant violated, 1 a violation (seed and replay command printed), 2 usage error";

/// `freshen-sim serve`: the reference authority on a real port, for manual use.
fn serve(args: impl Iterator<Item = String>) -> Result<(), String> {
    use freshen_core::authority::{AuthorityConfig, GraceReplay};
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
            other => return Err(format!("serve: unknown argument {other}")),
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let server = freshen_sim::http::Server::bind(freshen_sim::http::State::new(config.clone(), 1), address)
            .await
            .map_err(|e| format!("cannot listen on {address}: {e}"))?;
        println!("reference authority on {} ({config:?})", server.url(""));
        println!("  POST {}   POST {}   GET {}", server.url("/token"), server.url("/revoke"), server.url("/resource"));
        let _ = tokio::signal::ctrl_c().await;
        println!("refreshes served: {}", server.state().stats().refreshes);
        Ok(())
    })
}

#[derive(Debug)]
struct Options {
    seeds: u64,
    first: u64,
    replay: Option<u64>,
    plant: Option<Plant>,
    threads: usize,
}

fn parse(args: impl Iterator<Item = String>) -> Result<Options, String> {
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let mut options = Options { seeds: 1000, first: 0, replay: None, plant: None, threads };
    let mut args = args.peekable();
    while let Some(flag) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        let number =
            |name: &str, text: String| text.parse::<u64>().map_err(|_| format!("{name}: not a number: {text}"));
        match flag.as_str() {
            "--seeds" => options.seeds = number("--seeds", value("--seeds")?)?,
            "--first" => options.first = number("--first", value("--first")?)?,
            "--seed" => options.replay = Some(number("--seed", value("--seed")?)?),
            "--tier" => match value("--tier")?.as_str() {
                "1" => {}
                "2" => return Err("tier 2 (turmoil with the real driver) is not built yet".into()),
                other => return Err(format!("--tier: 1 or 2, not {other}")),
            },
            "--plant" => {
                let name = value("--plant")?;
                options.plant =
                    Some(Plant::from_name(&name).ok_or_else(|| format!("--plant: unknown variant {name}"))?);
            }
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

fn world(seed: u64, plant: Option<Plant>, trace: bool) -> World {
    let mut config = WorldConfig::sampled(seed);
    config.session.plant = plant;
    config.trace = trace;
    let mut world = World::new(config, seed);
    world.run();
    world
}

fn replay_command(seed: u64, plant: Option<Plant>) -> String {
    let plant = plant.map(|p| format!(" --plant {}", p.name())).unwrap_or_default();
    format!("cargo run --release -p freshen-sim -- --seed {seed}{plant}")
}

fn replay(seed: u64, plant: Option<Plant>) -> ExitCode {
    let world = world(seed, plant, true);
    for line in world.trace() {
        println!("{line}");
    }
    println!("{}", world.summary());
    let violations = world.violations();
    for violation in &violations {
        println!("{violation}");
    }
    if violations.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) }
}

/// What one seed contributed to the campaign.
struct Outcome {
    seed: u64,
    stats: WorldStats,
    violations: Vec<Violation>,
}

fn campaign(options: &Options) -> ExitCode {
    let started = Instant::now();
    let next = AtomicU64::new(options.first);
    let end = options.first.saturating_add(options.seeds);
    let done = AtomicU64::new(0);
    let outcomes = Mutex::new(Vec::new());
    let progress = std::io::stderr().is_terminal();
    std::thread::scope(|scope| {
        for _ in 0..options.threads {
            scope.spawn(|| {
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= end {
                        break;
                    }
                    let world = world(seed, options.plant, false);
                    let outcome = Outcome { seed, stats: world.stats().clone(), violations: world.violations() };
                    if let Ok(mut all) = outcomes.lock() {
                        all.push(outcome);
                    }
                    let finished = done.fetch_add(1, Ordering::Relaxed) + 1;
                    if progress && (finished % 10 == 0 || finished == options.seeds) {
                        draw_progress(finished, options.seeds);
                    }
                }
            });
        }
    });
    if progress {
        eprintln!();
    }
    let mut outcomes = outcomes.into_inner().unwrap_or_default();
    outcomes.sort_by_key(|o| o.seed);
    summarize(options, &outcomes, started.elapsed().as_secs_f64())
}

fn draw_progress(done: u64, total: u64) {
    const WIDTH: u64 = 40;
    let filled = (done * WIDTH / total.max(1)) as usize;
    let bar = format!("{}{}", "#".repeat(filled), "-".repeat(WIDTH as usize - filled));
    let mut err = std::io::stderr().lock();
    let _ = write!(err, "\r[{bar}] {done}/{total} seeds");
    let _ = err.flush();
}

fn summarize(options: &Options, outcomes: &[Outcome], seconds: f64) -> ExitCode {
    let mut faults: BTreeMap<&str, u64> = BTreeMap::new();
    let mut logouts: BTreeMap<String, u64> = BTreeMap::new();
    let (mut refreshes, mut granted, mut failed, mut crashes) = (0u64, 0u64, 0u64, 0u64);
    for outcome in outcomes {
        for (kind, count) in &outcome.stats.faults {
            *faults.entry(kind).or_default() += count;
        }
        for (cause, count) in &outcome.stats.logouts {
            *logouts.entry(cause.clone()).or_default() += count;
        }
        refreshes += outcome.stats.refreshes_sent;
        granted += outcome.stats.granted;
        failed += outcome.stats.failed;
        crashes += outcome.stats.crashes;
    }
    let failing: Vec<&Outcome> = outcomes.iter().filter(|o| !o.violations.is_empty()).collect();
    let violations: usize = failing.iter().map(|o| o.violations.len()).sum();
    let plant = options.plant.map_or("none", Plant::name);
    println!("freshen-sim campaign: tier 1, seeds {}..{}, plant {plant}", options.first, options.first + options.seeds);
    println!("{:<40} {:>12}", "seeds (tier 1)", outcomes.len());
    println!("{:<40} {:>12}", "refreshes sent", refreshes);
    println!("{:<40} {:>12}", "callers granted", granted);
    println!("{:<40} {:>12}", "callers failed", failed);
    println!("{:<40} {:>12}", "client crashes", crashes);
    for (kind, count) in &faults {
        println!("{:<40} {:>12}", format!("faults: {kind}"), count);
    }
    for (cause, count) in &logouts {
        println!("{:<40} {:>12}", format!("logouts: {cause}"), count);
    }
    println!("{:<40} {:>12}", "violations", violations);
    println!("{:<40} {:>12.1}", "seeds per second", outcomes.len() as f64 / seconds.max(f64::EPSILON));
    match failing.first() {
        None => ExitCode::SUCCESS,
        Some(first) => {
            println!();
            println!("{} of {} seeds violated an invariant; the first:", failing.len(), outcomes.len());
            for violation in first.violations.iter().take(5) {
                println!("  seed {}: {violation}", first.seed);
            }
            println!("replay it with: {}", replay_command(first.seed, options.plant));
            ExitCode::from(1)
        }
    }
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1).peekable();
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
    match parse(args) {
        Err(message) => {
            if !message.is_empty() {
                eprintln!("freshen-sim: {message}");
            }
            eprintln!("{USAGE}");
            if message.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(2) }
        }
        Ok(options) => match options.replay {
            Some(seed) => replay(seed, options.plant),
            None => campaign(&options),
        },
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
        let o = parse(args("--seeds 20 --first 5 --tier 1 --plant no-single-flight --threads 3")).unwrap();
        assert_eq!((o.seeds, o.first, o.threads), (20, 5, 3));
        assert_eq!(o.plant, Some(Plant::NoSingleFlight));
        assert_eq!(parse(args("--seed 7")).unwrap().replay, Some(7));
    }

    #[test]
    fn rejects_bad_usage() {
        for bad in ["--seeds", "--seeds x", "--seeds 0", "--plant nope", "--tier 3", "--tier 2", "--frobnicate"] {
            assert!(parse(args(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_replay_command_names_the_plant() {
        assert_eq!(
            replay_command(42, Some(Plant::GrantBeforePersist)),
            "cargo run --release -p freshen-sim -- --seed 42 --plant grant-before-persist"
        );
    }
}
