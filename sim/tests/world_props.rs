//! Property tests of whole worlds: the session against the authority under
//! random faults, with every invariant (C1–C9, A1–A6) checked at every step
//! and liveness judged after the network heals. Fault rates are separate
//! strategies, so a failure shrinks to the fewest faults that still break it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // a test may panic: that is how it fails

use std::time::Duration;

use freshen_sim::harness::World;
use freshen_sim::world::{Demand, Faults, WorldConfig};
use proptest::prelude::*;

fn cases() -> u32 {
    std::env::var("FRESHEN_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(48)
}

fn rate() -> impl Strategy<Value = u16> {
    prop_oneof![2 => Just(0u16), 1 => 1u16..200]
}

fn faults() -> impl Strategy<Value = Faults> {
    (
        (rate(), rate(), rate(), rate(), rate(), rate(), rate()),
        (rate(), rate(), rate(), 0u16..10, 0u16..5, 0u16..10, 0u64..15_000),
    )
        .prop_map(|((drop_request, drop_response, mangle, duplicate, delay, server_error, rate_limit), rest)| {
            let (refused, store_write_fail, store_load_fail, crash, clock_jump, logout, max_delay) = rest;
            let mut faults = Faults::none();
            faults.drop_request = drop_request;
            faults.drop_response = drop_response;
            faults.mangle_response = mangle;
            faults.duplicate_response = duplicate;
            faults.delay = delay;
            faults.server_error = server_error;
            faults.rate_limit = rate_limit;
            faults.refused = refused;
            faults.store_write_fail = store_write_fail;
            faults.store_load_fail = store_load_fail;
            faults.crash = crash;
            faults.clock_jump = clock_jump;
            faults.logout = logout;
            faults.max_delay = Duration::from_millis(max_delay);
            faults
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn worlds_under_faults_keep_every_invariant(
        seed in any::<u64>(),
        faults in faults(),
        grace in prop_oneof![Just(0u64), 1u64..120],
        interval in 100u64..10_000,
    ) {
        let mut config = WorldConfig::sampled(seed);
        config.faults = faults;
        config.authority.grace = Duration::from_secs(grace);
        config.demand = Some(Demand::every(Duration::from_millis(interval)));
        config.safety_phase = Duration::from_secs(1800);
        let mut world = World::new(config, seed);
        world.run();
        let violations = world.violations();
        prop_assert!(violations.is_empty(), "{}", violations.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"));
    }
}
