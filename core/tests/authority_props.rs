//! Property tests of the reference authority: random operations (logins,
//! refreshes of fresh, consumed, expired, foreign and made-up tokens,
//! concurrent redemptions, revocations, resource checks, time passing) under
//! random configurations, with A1–A6 checked over the audit.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // a test may panic: that is how it fails

use std::time::Duration;

use freshen_core::authority::{Authority, AuthorityConfig, AuthorityPlant, GraceReplay};
use freshen_core::check::{AuthorityMonitor, Violation};
use freshen_core::time::MonoTime;
use proptest::prelude::*;

fn cases() -> u32 {
    std::env::var("FRESHEN_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512)
}

#[derive(Clone, Debug)]
enum Op {
    Login { other_client: bool, device: bool },
    Refresh { pick: usize, other_client: bool, device: bool },
    Revoke { pick: usize, access: bool, other_client: bool },
    Validate { pick: usize },
    Advance { secs: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (any::<bool>(), any::<bool>()).prop_map(|(other_client, device)| Op::Login { other_client, device }),
        6 => (any::<usize>(), prop::bool::weighted(0.1), prop::bool::weighted(0.1))
            .prop_map(|(pick, other_client, device)| Op::Refresh { pick, other_client, device }),
        1 => (any::<usize>(), any::<bool>(), prop::bool::weighted(0.2))
            .prop_map(|(pick, access, other_client)| Op::Revoke { pick, access, other_client }),
        3 => any::<usize>().prop_map(|pick| Op::Validate { pick }),
        4 => prop_oneof![Just(0u64), 1u64..40, 40u64..400].prop_map(|secs| Op::Advance { secs }),
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

/// Runs `ops` and returns what the monitor found.
fn run(config: &AuthorityConfig, plant: Option<AuthorityPlant>, seed: u64, ops: &[Op]) -> Vec<Violation> {
    let mut authority = Authority::new(config.clone(), seed).with_audit().with_plant(plant);
    let mut monitor = AuthorityMonitor::new(config);
    let mut now = MonoTime::ZERO;
    // Every token ever issued (consumed and revoked ones included), plus a made-up one.
    let mut refresh = vec!["made-up-refresh".to_owned()];
    let mut access = vec!["made-up-access".to_owned()];
    let client = |other: bool| if other { "intruder" } else { "app" };
    let device = |bound: bool| bound.then_some("laptop");
    for op in ops {
        match op {
            Op::Login { other_client, device: bound } => {
                let issued = authority.login(now, client(*other_client), device(*bound));
                refresh.push(issued.refresh_token.expose_secret().to_owned());
                access.push(issued.access_token.expose_secret().to_owned());
            }
            Op::Refresh { pick, other_client, device: bound } => {
                let token = refresh[pick % refresh.len()].clone();
                if let Ok(issued) = authority.refresh(now, client(*other_client), device(*bound), &token) {
                    refresh.push(issued.refresh_token.expose_secret().to_owned());
                    access.push(issued.access_token.expose_secret().to_owned());
                }
            }
            Op::Revoke { pick, access: is_access, other_client } => {
                let pool = if *is_access { &access } else { &refresh };
                let token = pool[pick % pool.len()].clone();
                let _ = authority.revoke(now, client(*other_client), &token);
            }
            Op::Validate { pick } => {
                let token = access[pick % access.len()].clone();
                let _ = authority.validate(now, &token);
            }
            Op::Advance { secs } => now = now.saturating_add(Duration::from_secs(*secs)),
        }
        for entry in authority.take_audit() {
            monitor.observe(&entry);
        }
    }
    monitor.violations().to_vec()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    /// A1–A6 hold for any operations under any configuration.
    #[test]
    fn the_authority_keeps_a1_to_a6(config in config(), seed in any::<u64>(), ops in prop::collection::vec(op(), 1..120)) {
        let violations = run(&config, None, seed, &ops);
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
    ];
    for plant in plants {
        let mut runner = TestRunner::new(Config { cases: 4096, failure_persistence: None, ..Config::default() });
        let strategy = (config(), any::<u64>(), prop::collection::vec(op(), 1..120));
        let result = runner.run(&strategy, |(config, seed, ops)| {
            prop_assert!(run(&config, Some(plant), seed, &ops).is_empty());
            Ok(())
        });
        assert!(result.is_err(), "{plant:?} survived");
    }
}
