//! Tier 2: the real driver over hyper on turmoil, under faults.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::print_stdout)] // a test may panic: that is how it fails

use std::time::Duration;

use freshen_sim::tier2::run;
use freshen_sim::world::{Demand, WorldConfig};

/// A sampled world, shortened for the test suite: a minute of faults, then
/// just long enough healed for every bound.
fn short(seed: u64) -> WorldConfig {
    let mut config = WorldConfig::sampled_tier2(seed);
    config.safety_phase = Duration::from_secs(60);
    config.liveness_phase = config.session.wait_bound() + Duration::from_secs(10);
    config
}

/// Runs the sampled tier-2 world of `seed` (a regression seed) and asserts
/// it keeps every invariant.
fn sampled_without_violations(seed: u64) -> freshen_sim::tier2::Outcome {
    let outcome = run(&WorldConfig::sampled_tier2(seed), seed);
    assert!(outcome.violations.is_empty(), "seed {seed}: {:?}", outcome.violations);
    outcome
}

#[test]
fn sampled_worlds_keep_every_invariant() {
    for seed in 0..6 {
        let outcome = run(&short(seed), seed);
        println!(
            "seed {seed}: refreshes {} granted {} failed {} logouts {:?} faults {:?}",
            outcome.tally.refreshes,
            outcome.tally.granted,
            outcome.tally.failed,
            outcome.tally.logouts,
            outcome.tally.faults
        );
        assert!(outcome.violations.is_empty(), "seed {seed}: {:?}", outcome.violations);
        assert!(outcome.tally.granted > 0);
    }
}

/// Workers sharing a database whose lock connections are cut and whose
/// workers stall past the lock's bound, often: locks are lost and late
/// writes fenced off, and every invariant holds (F1 among them).
#[test]
fn database_worlds_lose_locks_and_fence_late_writes_without_a_violation() {
    let (mut locks_lost, mut fenced) = (0, 0);
    let shared: Vec<u64> = (0..40).filter(|seed| short(*seed).database.is_some()).take(2).collect();
    assert_eq!(shared.len(), 2, "sampling gives too few database worlds");
    for seed in shared {
        let mut config = short(seed);
        config.faults.lock_lost = 400;
        config.faults.pause = 200;
        let outcome = run(&config, seed);
        println!(
            "seed {seed}: locks lost {} writes fenced {} overlaps {} faults {:?}",
            outcome.tally.locks_lost,
            outcome.tally.fenced_writes,
            outcome.tally.lock_loss_overlaps,
            outcome.tally.faults
        );
        assert!(outcome.violations.is_empty(), "seed {seed}: {:?}", outcome.violations);
        locks_lost += outcome.tally.locks_lost;
        fenced += outcome.tally.fenced_writes;
    }
    assert!(locks_lost > 0 && fenced > 0, "locks lost {locks_lost}, writes fenced {fenced}");
}

#[test]
fn a_seed_replays_the_same_trace() {
    let trace = |seed| {
        let mut config = short(seed);
        config.trace = true;
        run(&config, seed).trace
    };
    let first = trace(4);
    assert!(first.len() > 100, "{}", first.len());
    let second = trace(4);
    if let Err(v) = freshen_sim::check::same_trace(&first, &second) {
        panic!("{v}");
    }
}

#[test]
fn every_planted_bug_is_caught_through_the_real_driver() {
    use freshen_sim::check::Plant;
    // Tier 2's hosts never sleep (turmoil has one clock for all): a clock that
    // misses suspends is tier 1's to catch. So is a refresh that proves a
    // DPoP key before it is stored: it needs a forced refresh in the instant
    // between a bound login and its write, which tier 1's scheduling makes
    // (seed 419) and tier 2's callers almost never do. A token whose usable
    // time moves within its generation is rare in these short worlds: tier 1
    // catches it often, and `a_token_whose_usable_time_moves_is_published_again`
    // through the real driver. A stored expiry read by the wall clock after
    // it was set back needs a restart in between: tier 1 catches it (seed
    // 5), tier 2 at seeds 1013806 and 1047247
    // (`a_wall_clock_set_back_before_a_restart_is_read_by_the_boot_clock`).
    let tier_1s = |plant: &Plant| {
        matches!(
            plant,
            Plant::MissesSuspends
                | Plant::ProvesKeyBeforeStored
                | Plant::PublishesByGeneration
                | Plant::IgnoresBootClock
        )
    };
    for plant in Plant::ALL.into_iter().filter(|plant| !tier_1s(plant)) {
        let caught = (0..60).find(|seed| {
            let config = short(*seed).with_plant(plant);
            !run(&config, *seed).violations.is_empty()
        });
        println!("{}: caught at seed {caught:?}", plant.name());
        assert!(caught.is_some(), "{} was never caught", plant.name());
    }
}

/// Tier-2 seed 18 (as sampled since issue 17) reads its generation back
/// from the shared store with a later usable time. The machine republished
/// only a new generation, so the driver's timer for the published token's
/// usable time fired at the stale time again and again: the run never ended
/// (a real driver would spin at 100 % CPU). The machine now publishes the
/// token again; planted back, the monitor says so, and the driver's own
/// guard withdraws the stale token, so the run still ends.
#[test]
fn a_token_whose_usable_time_moves_is_published_again() {
    use freshen_sim::check::{Invariant, Plant};
    let seed = 18;
    let (send, receive) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let clean = run(&WorldConfig::sampled_tier2(seed), seed);
        let planted = run(&WorldConfig::sampled_tier2(seed).with_plant(Plant::PublishesByGeneration), seed);
        let _ = send.send((clean, planted));
    });
    let (clean, planted) =
        receive.recv_timeout(Duration::from_secs(600)).expect("tier-2 seed 18 never ended: a driver's timer spins");
    assert!(clean.violations.is_empty(), "{:?}", clean.violations);
    assert!(clean.tally.refreshes > 0, "seed 18 no longer refreshes: pick another seed whose usable time moves");
    assert!(
        planted.violations.iter().any(|v| v.invariant == Invariant::C7),
        "the stale publication went unseen: {:?}",
        planted.violations
    );
}

/// Tier-2 seed 50176 (and 60173) once panicked turmoil after 67,500 callers:
/// a client host's ephemeral ports wrapped around to a port whose earlier
/// connection the server still held, its FIN lost to a partition. The world
/// now bounds every connection's life on both sides and paces connects (see
/// `ConnectPacer`). Here hosts get 1,024 ports under partitions, so they wrap
/// around several times; without those bounds these seeds panic the same way
/// (checked by hand: 7 of the first 30 seeds of this shape did). The seeds
/// are ones whose worlds wrap around at least three times; when world
/// sampling changes, the assertion below says which seed to replace.
#[test]
fn ports_that_wrap_around_meet_no_stale_connection() {
    for seed in [0, 5, 10, 25] {
        let mut config = WorldConfig::sampled_tier2(seed);
        config.faults.partition = 1;
        config.ephemeral_ports = (49152, 49152 + 1023);
        config.demand = Some(Demand { mean_interval: Duration::from_millis(400), burst: 4 });
        config.safety_phase = Duration::from_secs(700);
        let outcome = run(&config, seed);
        assert!(outcome.violations.is_empty(), "seed {seed}: {:?}", outcome.violations);
        let connects = outcome.most_connects;
        assert!(connects > 3 * 1024, "seed {seed}: {connects} connects do not wrap the ports around three times");
    }
}

/// Seed 70681: a process crashed right after sending a refresh under the
/// shared store's lock; the lock passed to another process at once, but the
/// cross-process checker heard of the crash only when the next incarnation
/// started, and judged the new holder's refresh against the dead one's.
#[test]
fn a_crashed_lock_holders_request_is_not_counted_in_flight() {
    let seed = 70681;
    sampled_without_violations(seed);
}

/// Seed 1003832 (the 10,000-seed deep run): one worker's requested logout
/// revoked the family while another worker held a sibling from a grace
/// replay; that worker's refresh was refused `Revoked`, which the app asked
/// for, but the verdict took the app's last refusal, a later login's nonce
/// challenge, and blamed a lost lock (L1).
#[test]
fn a_logout_the_app_asked_for_elsewhere_is_not_blamed_on_a_lost_lock() {
    let seed = 1_003_832;
    sampled_without_violations(seed);
}

/// Seeds that a rule for tier-1 seed 2098901 got wrong: taking what the
/// store held before a fenced write as what the session last knew, for any
/// login, let another login stored elsewhere win over the rotation of this
/// host's own latest login: 1007077 told the user their login was stored
/// while the store held the other one (U9); 1005671 wrote a superseded
/// token back (C2, C3). The rule now holds only within one login.
#[test]
fn another_login_stored_meanwhile_does_not_win_over_a_rotation_of_ours() {
    for seed in [1_007_077, 1_005_671] {
        sampled_without_violations(seed);
    }
}

/// Seed 147, once processes exited gracefully too: a worker asked to shut
/// down while it waited for the database's lock got the lock, and its
/// machine sent a refresh the closing driver then dropped unsent, told to
/// nobody. The checker counted it in flight; the driver let the lock go,
/// and the next worker's refresh seemed to overlap it (C1). The driver now
/// answers what it does not start as not sent.
#[test]
fn a_refresh_not_started_at_shutdown_is_not_counted_in_flight() {
    let seed = 147;
    let outcome = sampled_without_violations(seed);
    assert!(outcome.tally.fault_count("shutdown") > 0, "seed {seed} no longer shuts a process down");
}

/// Seed 3120 (stop 35's tier-2 run of seeds 400 on; it failed on the
/// build before that stop too): a worker the database had stalled kept
/// rotating in memory (forced refreshes, eight rotations) while its write
/// of an earlier one hung; the write was fenced, and under its next lock
/// the store held a grace replay of the rotation the worker itself had
/// received first, written by another worker. The machine took that over
/// as newer, dropped its eight later rotations, and presented the spent
/// token (C2, U8). Any token an answer of its own rotated away is now
/// older than what it holds, not only the last one.
#[test]
fn a_stalled_workers_own_later_rotations_win_over_a_replay_stored_meanwhile() {
    // 3702, found by the same run, failed the same way (U8); 1012581, from
    // the run of seeds 1,010,000 on, with C2, C3 and U5. Both pass with the fix.
    for seed in [3120, 3702, 1_012_581] {
        sampled_without_violations(seed);
    }
}

/// Seed 1025884 (stop 36's run of seeds 1,020,000 on, 14,929 violations):
/// another worker walked this worker's chain of rotations again through
/// grace replays and wrote each link back, renumbered above what this one
/// held. The first link it wrote had been rotated away by this worker 33
/// sends earlier, past the memory of sends that said so: the worker took
/// it as newer, and from then on presented spent tokens (C2). Rotated-away
/// tokens are now remembered apart from the sends, 256 of them.
#[test]
fn a_token_rotated_away_long_ago_and_stored_again_is_still_older() {
    let seed = 1_025_884;
    let outcome = sampled_without_violations(seed);
    assert!(outcome.tally.refreshes > 500, "seed {seed} no longer rotates long enough to test this");
}

/// Seed 1031887 (stop 37's run of seeds 1,030,000 on, C1): a process's
/// wall clock was stepped 113 s forward while its refresh was out. The
/// session's clock reads such a step as a suspend and jumped past the
/// attempt's deadline, so the machine gave the attempt up and let the lock
/// go, and another process presented the same refresh token while the
/// request was still out. The driver now sends nothing more and keeps the
/// lock until that request ends. (The checker now also counts a process's
/// own requests in flight on the world's clock.)
#[test]
fn a_wall_clock_stepped_forward_mid_refresh_lets_nobody_present_its_token_again() {
    let seed = 1_031_887;
    sampled_without_violations(seed);
}

/// Tier-2 seed 1037012 (C5 after healing, found by a deep run): a database
/// worker's write of a rotation was held up past the lock's bound, and the
/// worker that took the lock presented the older token still stored; reuse
/// detection revoked the family (a lost-lock hazard no grace covers in this
/// world). The rejection that ended the session landed just after the world
/// healed, and the app's other processes told their callers "logged out"
/// until the user logged in again. The verdict now judges the logout those
/// callers were told of, as it judges a session left ended.
#[test]
fn callers_told_of_an_accepted_logout_after_healing_are_not_unserved() {
    let seed = 1_037_012;
    let outcome = sampled_without_violations(seed);
    assert!(outcome.tally.logouts.get("rejected").is_some_and(|n| *n > 0), "{:?}", outcome.tally.logouts);
}

/// Tier-2 seed 1046724 (L2, found by a deep run): a refresh's answer
/// outlasted the request timeout (the server had rotated the token), the
/// process's retries could not be sent, and another process presented the
/// rotated token to reuse detection. The logout is the lost-answer hazard
/// the rules excuse (no grace here); the verdict counted only answers the
/// server dropped. It now counts any answer the server committed that no
/// process of the app read.
#[test]
fn an_answer_the_server_committed_and_nobody_read_was_lost() {
    let seed = 1_046_724;
    let outcome = sampled_without_violations(seed);
    assert_eq!(outcome.tally.logouts.get("rejected"), Some(&1), "{:?}", outcome.tally.logouts);
}

/// Tier-2 seed 1052175 (C2, found by a deep run): a worker's login write
/// failed but had landed; the other workers refreshed that login, its
/// family ended, and the user logged in again elsewhere. Under its next
/// lock the worker found that other login, counted its own as never
/// written (the user's latest word), wrote it back and presented its spent
/// refresh token: reuse detection, a logout, and a cleared store. A login
/// whose write may have landed now yields to a session stored since.
#[test]
fn a_login_whose_failed_write_landed_is_not_written_back_over_a_later_login() {
    let outcome = sampled_without_violations(1_052_175);
    assert!(outcome.tally.logouts.is_empty(), "{:?}", outcome.tally.logouts);
}

/// Tier-2 seed 1068575 (C2, found by a fresh-seed run): a worker stalled
/// with its rotation's write out; the database gave the lock away and
/// fenced the write. The next holder read the predecessor, still stored,
/// presented it, and got the same successor (a grace replay), which it
/// rotated on; the user then logged out and in again there. Under its next
/// lock the stalled worker found that new login, took it for an older word
/// than its own rotation, wrote its rotation back and presented its spent
/// token. A rotation answered under a lost lock now yields to another login
/// stored since.
#[test]
fn a_rotation_answered_under_a_lost_lock_yields_to_a_login_stored_since() {
    sampled_without_violations(1_068_575);
}

/// Tier-2 seed 93 (C3, found once C3 was judged by the tokens rather than
/// their number): at a server that does not rotate and deletes the previous
/// access token on refresh, a worker's late answer and another worker's
/// refresh of the same token were stored as one number. The worker took
/// the stored pair for its own, handed its unwritten (and deleted) access
/// token to a herd of callers, and every one of them got a 401. A late
/// answer now adopts the pair stored since.
#[test]
fn a_late_answer_at_a_server_that_does_not_rotate_yields_to_the_pair_stored_since() {
    sampled_without_violations(93);
}

/// Tier-2 seed 1108555 (C1, found by a deep run): three processes on the
/// database store, at a server that does not rotate. A process whose lock
/// the database had taken back (its write stalled) answered a refresh and
/// chained a forced one at once, which its stored refresh token allowed;
/// its write was fenced while that request was out. The driver kept the
/// lost lock for the request and reused it for the next write instead of
/// waiting for the lock again, so it refreshed beside the new holder. A
/// fenced write now lets the lost lock go (the driver test
/// `a_lock_lost_while_a_refresh_is_out_is_taken_again_not_reused` isolates it).
#[test]
fn a_lock_lost_while_a_refresh_is_out_is_not_reused() {
    sampled_without_violations(1_108_555);
}

/// Tier-2 seeds 1013806 and 1047247 (U2, found by deep runs): a process
/// restarted after its wall clock was set back (5½ and 6 minutes) read a
/// stored token by that clock as fresh, and handed it out though it was
/// inside its refresh margin or dead. Its blob was written on the same boot,
/// so the boot clock, which nobody steps, reads it right. Planted back (the
/// wall clock alone), both fail again.
#[test]
fn a_wall_clock_set_back_before_a_restart_is_read_by_the_boot_clock() {
    use freshen_sim::check::{Invariant, Plant};
    for seed in [1_013_806, 1_047_247] {
        sampled_without_violations(seed);
        let planted = run(&WorldConfig::sampled_tier2(seed).with_plant(Plant::IgnoresBootClock), seed);
        assert!(
            planted.violations.iter().any(|v| v.invariant == Invariant::U2),
            "seed {seed}: {:?}",
            planted.violations
        );
    }
}

#[test]
#[ignore = "a wider scan, run by hand"]
fn scan() {
    let t = std::time::Instant::now();
    let n: u64 = std::env::var("SEEDS").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    let mut bad = 0;
    for seed in 0..n {
        let outcome = run(&WorldConfig::sampled_tier2(seed), seed);
        if !outcome.violations.is_empty() {
            bad += 1;
            println!("seed {seed}: {:?}", outcome.violations.first());
        }
    }
    println!("{bad} bad of {n} in {:?}", t.elapsed());
}

/// A server whose clock is off by most of an hour, answering half the
/// refreshes with 429s: every other one gives its `Retry-After` as an
/// HTTP-date on that clock. Each must be read as the 2 s the server asked
/// (the checker holds every session to it), which only reading the date
/// against the server's own `Date` gives.
#[test]
fn a_retry_after_date_is_read_against_the_servers_clock() {
    for (seed, offset) in [(3, 2_700), (4, -3_000)] {
        let mut config = short(seed);
        config.server_clock_offset = offset;
        config.faults.rate_limit = 500;
        config.authority.access_ttl = Duration::from_secs(20);
        config.safety_phase = Duration::from_secs(240);
        config.trace = true;
        let outcome = run(&config, seed);
        assert!(outcome.violations.is_empty(), "seed {seed}: {:?}", outcome.violations);
        let read = outcome.trace.iter().filter(|line| line.contains("RateLimited, retry_after: Some(2s)")).count();
        let asked = outcome.tally.fault_count("rate_limit");
        println!("seed {seed}, server clock {offset:+} s: {asked} 429s, {read} read by a session");
        assert!(read >= 4, "seed {seed}: {read} 429s read ({asked} sent)");
    }
}
