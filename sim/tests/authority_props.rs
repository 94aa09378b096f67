//! Property tests of the reference authority: random operations (logins,
//! refreshes of fresh, consumed, expired, foreign and made-up tokens,
//! concurrent redemptions, revocations, authorization codes exchanged once or
//! again, resource checks, time passing) under random configurations, with
//! A1–A6 and A8 checked over the audit.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // a test may panic: that is how it fails

use std::time::Duration;

use freshen_sim::authority::{AuthorityConfig, AuthorityPlant, GraceReplay};
use freshen_sim::fuzzing::{AuthorityOp, run_authority};
use proptest::prelude::*;

fn cases() -> u32 {
    std::env::var("FRESHEN_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512)
}

fn op() -> impl Strategy<Value = AuthorityOp> {
    prop_oneof![
        1 => (any::<bool>(), any::<bool>()).prop_map(|(other_client, device)| AuthorityOp::Login { other_client, device }),
        6 => (any::<usize>(), prop::bool::weighted(0.1), prop::bool::weighted(0.1))
            .prop_map(|(pick, other_client, device)| AuthorityOp::Refresh { pick, other_client, device }),
        1 => (any::<usize>(), any::<bool>(), prop::bool::weighted(0.2))
            .prop_map(|(pick, access, other_client)| AuthorityOp::Revoke { pick, access, other_client }),
        3 => any::<usize>().prop_map(|pick| AuthorityOp::Validate { pick }),
        1 => Just(AuthorityOp::IssueCode),
        1 => (any::<usize>(), prop::bool::weighted(0.1))
            .prop_map(|(pick, other_client)| AuthorityOp::RedeemCode { pick, other_client }),
        4 => prop_oneof![Just(0u64), 1u64..40, 40u64..400].prop_map(|secs| AuthorityOp::Advance { secs }),
    ]
}

fn config() -> impl Strategy<Value = AuthorityConfig> {
    (
        10u64..300,
        30u64..600,
        100u64..2000,
        prop::bool::weighted(0.8),
        prop_oneof![Just(0u64), 1u64..60],
        0u32..4,
        any::<bool>(),
        prop::bool::weighted(0.75),
    )
        .prop_map(|(access, refresh, family, rotation, grace, reuses, fresh, detection)| {
            let mut config = AuthorityConfig::default();
            config.access_ttl = Duration::from_secs(access);
            config.refresh_ttl = Duration::from_secs(refresh);
            config.family_lifetime = Duration::from_secs(family);
            config.rotation = rotation;
            config.grace = Duration::from_secs(grace);
            config.grace_reuses = reuses;
            config.grace_replay = if fresh { GraceReplay::FreshPair } else { GraceReplay::SamePair };
            config.reuse_detection = detection;
            config
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    /// A1–A6 and A8 hold for any operations under any configuration.
    #[test]
    fn the_authority_keeps_a1_to_a6(config in config(), seed in any::<u64>(), ops in prop::collection::vec(op(), 1..120)) {
        let violations = run_authority(&config, None, seed, &ops);
        prop_assert!(violations.is_empty(), "{}", violations.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"));
    }
}

/// The same suite fails against each planted authority: the properties can fail.
#[test]
fn the_suite_catches_every_planted_authority() {
    use proptest::test_runner::{Config, TestRunner};
    let plants = [
        AuthorityPlant::AcceptsReuse,
        AuthorityPlant::DetectionSparesAccess,
        AuthorityPlant::IgnoresClient,
        AuthorityPlant::RefusalRenews,
        AuthorityPlant::RedeemsGrantTwice,
    ];
    for plant in plants {
        let mut runner = TestRunner::new(Config { cases: 4096, failure_persistence: None, ..Config::default() });
        let strategy = (config(), any::<u64>(), prop::collection::vec(op(), 1..120));
        let result = runner.run(&strategy, |(config, seed, ops)| {
            prop_assert!(run_authority(&config, Some(plant), seed, &ops).is_empty());
            Ok(())
        });
        assert!(result.is_err(), "{plant:?} survived");
    }
}
