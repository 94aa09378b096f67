//! `freshen-bench [--quick]`: prints one `key=value` line per figure (see
//! BENCHMARKS.md for what each means and the latest results). Lines starting
//! with `#` give the raw measurements behind the ratios.
#![allow(clippy::print_stdout, clippy::print_stderr)] // a report for the terminal

use std::process::ExitCode;
use std::time::Instant;

use freshen_bench::{BenchError, Release, Sizes};
use freshen_sim::http::paths;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let sizes = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        [] => Sizes::FULL,
        ["--quick"] => Sizes::QUICK,
        // Run under callgrind by `instructions_per_operation`.
        ["--operations", operation, count] => {
            let result =
                count.parse().map_err(Into::into).and_then(|count| freshen_bench::run_operations(operation, count));
            return match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    eprintln!("freshen-bench: {error}");
                    ExitCode::FAILURE
                }
            };
        }
        _ => {
            eprintln!("usage: freshen-bench [--quick]");
            return ExitCode::from(2);
        }
    };
    match run(sizes) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("freshen-bench: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Rounds of the middleware comparison: its ratio is reported as their
/// median and their worst, since one round can land on a noisy moment.
const MIDDLEWARE_ROUNDS: usize = 5;

fn run(sizes: Sizes) -> Result<(), BenchError> {
    let started = Instant::now();
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()?;
    println!("# {threads} cores; {sizes:?}");

    fast_path(&runtime, sizes)?;

    let (step_ns, step_allocs) = freshen_bench::step(sizes.steps)?;
    println!("step_ns={step_ns:.1}");
    println!("step_allocs={step_allocs}");
    for (key, operation) in [
        ("fastpath_instructions", "fastpath"),
        ("fastpath_sync_instructions", "fastpath_sync"),
        ("fastpath_owned_instructions", "fastpath_owned"),
        ("fastpath_floor_instructions", "fastpath_floor"),
        ("step_instructions", "step"),
    ] {
        match freshen_bench::instructions_per_operation(operation, 10_000, 110_000)? {
            Some(count) => println!("{key}={count:.0}"),
            None => println!("# {key}: valgrind is not installed"),
        }
    }

    let (freshen_proof, core_proof) = freshen_bench::dpop_proofs(sizes.dpop_proofs)?;
    println!(
        "# DPoP proof of a resource request, us: freshen (AWS-LC) {:.1}; the core's p256 signer {:.1}",
        freshen_proof / 1e3,
        core_proof / 1e3
    );
    println!("dpop_proof_us={:.1}", freshen_proof / 1e3);
    println!("dpop_proof_ratio={:.1}", core_proof / freshen_proof);

    herd(&runtime)?;

    middleware(&runtime, sizes)?;

    let fleet = freshen_bench::fleet(&runtime, sizes.fleet_sessions, sizes.fleet_lookups)?;
    println!(
        "# fleet of {} sessions: token p99 {:.2} us through the registry vs {:.2} us through one session held",
        sizes.fleet_sessions, fleet.token_p99_us, fleet.single_p99_us
    );
    println!("sessions_idle_bytes={:.0}", fleet.idle_bytes);
    println!("sessions_active_bytes={:.0}", fleet.active_bytes);
    println!("fleet_token_p99_us={:.2}", fleet.token_p99_us);
    drop(runtime);

    let sim = freshen_bench::sim_throughput(sizes.tier1_seeds, sizes.tier2_seeds);
    println!("sim_tier1_seeds_per_s={:.1}", sim.tier1_seeds_per_s);
    println!("sim_tier2_seeds_per_s={:.2}", sim.tier2_seeds_per_s);
    println!("sim_tier2_callers_per_s={:.0}", sim.tier2_callers_per_s);
    println!("sim_tier2_faults_per_s={:.1}", sim.tier2_faults_per_s);
    println!("# finished in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// An acquire against `RwLock<Option<String>>` + clone, on one thread and
/// two, with the floor any acquire must pay; its instructions and allocations.
fn fast_path(runtime: &tokio::runtime::Runtime, sizes: Sizes) -> Result<(), BenchError> {
    let session = runtime.block_on(freshen_bench::valid_session(
        format!("http://127.0.0.1:9{}", paths::TOKEN),
        freshen_bench::ACCESS_TOKEN,
    ))?;
    let one = freshen_bench::fastpath(runtime, &session, 1, sizes);
    let two = freshen_bench::fastpath(runtime, &session, 2, sizes);
    println!(
        "# fast path, ns per acquire: freshen {:.1} (synchronous {:.1}) vs RwLock+clone {:.1} (1 thread); {:.1} vs {:.1} (2 threads)",
        one.freshen, one.freshen_sync, one.baseline, two.freshen, two.baseline
    );
    let (ratio_1, ratio_2) = (one.baseline / one.freshen, two.baseline / two.freshen);
    println!("fastpath_ratio={:.2}", ratio_1.min(ratio_2));
    println!("fastpath_ratio_1t={ratio_1:.2}");
    println!("fastpath_ratio_2t={ratio_2:.2}");
    println!("fastpath_ns_1t={:.1}", one.freshen);
    println!("fastpath_sync_ratio_1t={:.2}", one.baseline / one.freshen_sync);
    println!("fastpath_sync_ns_1t={:.1}", one.freshen_sync);
    println!(
        "# the floor, ns: the coarse wall clock {:.1} and with a snapshot load {:.1} (1 thread); {:.1} and {:.1} (2 threads)",
        one.clock, one.floor, two.clock, two.floor
    );
    println!("fastpath_clock_ns_1t={:.1}", one.clock);
    println!("fastpath_floor_ns_1t={:.1}", one.floor);
    println!("fastpath_floor_ratio_1t={:.2}", one.baseline / one.floor);
    println!("fastpath_floor_ratio_2t={:.2}", two.baseline / two.floor);
    let owned = freshen_bench::fastpath_owned(runtime, &session, sizes);
    println!("# access_token (an owned handle, an Arc clone) on one thread: {owned:.1} ns");
    println!("fastpath_owned_ns_1t={owned:.1}");
    let (allocs, baseline_allocs) = freshen_bench::fastpath_allocs(runtime, &session, sizes.acquires);
    println!("# allocations per acquire: freshen {allocs} vs RwLock+clone {baseline_allocs}");
    println!("fastpath_allocs={allocs}");
    drop(session);
    Ok(())
}

/// `AuthMiddleware`, `AuthorizedClient` and the static retrying floor
/// against raw reqwest and an empty chain, in interleaved rounds.
fn middleware(runtime: &tokio::runtime::Runtime, sizes: Sizes) -> Result<(), BenchError> {
    let rounds = runtime.block_on(freshen_bench::middleware(sizes.requests, MIDDLEWARE_ROUNDS))?;
    let median_of = |values: &[f64]| freshen_bench::median(&mut values.to_vec());
    let (mut through, mut empty, mut authorized) = (Vec::new(), Vec::new(), Vec::new());
    let (mut floor, mut floor_share) = (Vec::new(), Vec::new());
    for (round, [raw, empty_chain, middleware, client, static_retrying]) in rounds.iter().enumerate() {
        println!(
            "# round {round}, median request, us: raw reqwest {raw:.1}; empty reqwest-middleware chain {empty_chain:.1}; \
             AuthMiddleware {middleware:.1}; AuthorizedClient {client:.1}; a static retrying middleware {static_retrying:.1}"
        );
        through.push(middleware / raw);
        empty.push(empty_chain / raw);
        authorized.push(client / raw);
        floor.push(static_retrying / raw);
        floor_share.push((static_retrying - empty_chain) / raw);
    }
    println!("middleware_ratio={:.3}", median_of(&through));
    println!("middleware_ratio_worst={:.3}", through.iter().copied().fold(0.0, f64::max));
    println!("middleware_empty_chain_ratio={:.3}", median_of(&empty));
    // freshen's own share beyond the framework: the middleware minus the empty chain.
    let own: Vec<f64> = through.iter().zip(&empty).map(|(through, empty)| through - empty).collect();
    println!("middleware_own_share={:.4}", median_of(&own));
    // The same for the least any middleware with the one retry must do.
    println!("middleware_floor_share={:.4}", median_of(&floor_share));
    println!("middleware_floor_ratio={:.3}", median_of(&floor));
    println!("middleware_floor_ratio_worst={:.3}", floor.iter().copied().fold(0.0, f64::max));
    println!("authorized_client_ratio={:.3}", median_of(&authorized));
    middleware_instructions()?;
    Ok(())
}

/// The middleware comparison in instructions, which do not move with the
/// machine's noise: user space of client and loopback server together.
fn middleware_instructions() -> Result<(), BenchError> {
    use freshen_bench::Arm;
    let mut counts = Vec::new();
    for arm in [Arm::Raw, Arm::EmptyChain, Arm::AuthMiddleware, Arm::StaticRetrying] {
        match freshen_bench::request_instructions(arm)? {
            Some(count) => counts.push(count),
            None => {
                println!("# middleware instructions: valgrind is not installed");
                return Ok(());
            }
        }
    }
    if let [raw, empty, through, floor] = counts[..] {
        println!(
            "# instructions per request: raw reqwest {raw:.0}; empty chain {empty:.0}; AuthMiddleware {through:.0}; \
             a static retrying middleware {floor:.0}"
        );
        println!("middleware_instructions={through:.0}");
        println!("middleware_instruction_ratio={:.3}", through / raw);
        println!("middleware_own_instructions={:.0}", through - empty);
        println!("middleware_own_instruction_share={:.4}", (through - empty) / raw);
        println!("middleware_floor_own_instructions={:.0}", floor - empty);
    }
    Ok(())
}

/// The herd: one refresh for 1,000 and for 10,000 callers, and how fast the
/// 10,000 are released against the runtime's own floor.
fn herd(runtime: &tokio::runtime::Runtime) -> Result<(), BenchError> {
    for (key, callers) in [("herd_refreshes_1k", 1_000), ("herd_refreshes_10k", 10_000)] {
        let herd = runtime.block_on(freshen_bench::herd(callers))?;
        println!("# herd of {callers}: release p99 {:.0} us, last {:.0} us", herd.release_p99_us, herd.release_max_us);
        println!("{key}={}", herd.refreshes);
        if callers == 10_000 {
            println!("herd_release_p99_us={:.0}", herd.release_p99_us);
            let floor = runtime.block_on(freshen_bench::herd_without_a_session(callers, Release::Oneshots))?;
            let broadcast = runtime.block_on(freshen_bench::herd_without_a_session(callers, Release::Broadcast))?;
            println!(
                "# {callers} tasks without a session, p99: one oneshot each {floor:.0} us (the floor), one watch publication {broadcast:.0} us"
            );
            println!("herd_floor_p99_us={floor:.0}");
            println!("herd_broadcast_p99_us={broadcast:.0}");
            println!("herd_release_ratio={:.2}", herd.release_p99_us / floor);
        }
    }
    Ok(())
}
