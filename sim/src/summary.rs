//! The campaign's summary (part of the `freshen-sim` binary, not the
//! library), folded in seed by seed as each one ends. Its memory does not
//! grow with the seeds run: a campaign budgeted by `--seconds` may run
//! millions, and keeping every seed's outcome until the end cost about a
//! kilobyte a seed (its tally's maps). Only the numbers of the first
//! violating seeds are kept (the lowest [`LISTED_FAILING`] of each tier;
//! the rest are counted), and the violations of the one the summary names.

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;

use freshen_core::session::Plant;
use freshen_sim::check::Violation;
use freshen_sim::world::{LoginGrant, Tally};

use crate::{Invocation, Options, Outcome, Tier, replay_command};

/// Violations printed for the seed the summary names.
const SHOWN_VIOLATIONS: usize = 5;

/// Failing seeds listed per tier, the lowest first: a planted campaign of
/// millions of seeds fails nearly every one, and its list would grow with them.
const LISTED_FAILING: usize = 1_000;

/// What the seeds run so far add up to.
#[derive(Default)]
pub(crate) struct Summary {
    tiers: BTreeMap<Tier, TierCounts>,
    tally: Tally,
    violations: usize,
    /// The seeds that violated an invariant, by tier.
    failing: BTreeMap<Tier, FailingSeeds>,
    /// The first of them in the order the summary lists seeds (tier, then
    /// seed), whatever order the threads ended them in, with its first
    /// violations.
    first_failing: Option<(Tier, u64, Vec<Violation>)>,
}

/// A tier's failing seeds: how many, and the lowest of them.
#[derive(Default)]
struct FailingSeeds {
    count: usize,
    lowest: BTreeSet<u64>,
}

impl FailingSeeds {
    fn add(&mut self, seed: u64) {
        self.count += 1;
        self.lowest.insert(seed);
        if self.lowest.len() > LISTED_FAILING {
            self.lowest.pop_last();
        }
    }
}

/// Seeds of one tier, and how many of them had each kind of world.
#[derive(Default)]
struct TierCounts {
    seeds: usize,
    shared: usize,
    bound: usize,
    device: usize,
    code: usize,
    databases: usize,
    covered: usize,
}

impl Summary {
    /// Adds one seed's outcome.
    pub(crate) fn add(&mut self, outcome: Outcome) {
        let counts = self.tiers.entry(outcome.tier).or_default();
        counts.seeds += 1;
        counts.shared += usize::from(outcome.processes > 1);
        counts.bound += usize::from(outcome.bound);
        counts.device += usize::from(outcome.login == LoginGrant::Device);
        counts.code += usize::from(outcome.login == LoginGrant::Code);
        counts.databases += usize::from(outcome.database.is_some());
        counts.covered += usize::from(outcome.database == Some(true));
        self.tally.add(&outcome.tally);
        if outcome.violations.is_empty() {
            return;
        }
        self.violations += outcome.violations.len();
        self.failing.entry(outcome.tier).or_default().add(outcome.seed);
        let earlier =
            self.first_failing.as_ref().is_none_or(|(tier, seed, _)| (outcome.tier, outcome.seed) < (*tier, *seed));
        if earlier {
            let mut violations = outcome.violations;
            violations.truncate(SHOWN_VIOLATIONS);
            self.first_failing = Some((outcome.tier, outcome.seed, violations));
        }
    }

    /// Seeds run.
    pub(crate) fn seeds(&self) -> usize {
        self.tiers.values().map(|counts| counts.seeds).sum()
    }

    /// Prints the summary; the exit status says whether any seed violated
    /// an invariant.
    pub(crate) fn report(&self, options: &Options, busy: &BTreeMap<Tier, f64>, seconds: f64) -> ExitCode {
        let plant = options.plant.map_or("none", Plant::name);
        println!("freshen-sim campaign: seeds from {}, plant {plant}, {} threads", options.first, options.threads);
        for (tier, counts) in &self.tiers {
            let number = tier.number();
            // Seeds per second of one thread's work, times the threads that shared it.
            let busy = busy.get(tier).copied().unwrap_or(seconds).max(f64::EPSILON);
            let rate = counts.seeds as f64 / busy * options.threads as f64;
            println!("{:<40} {:>12}", format!("seeds (tier {number})"), counts.seeds);
            println!("{:<40} {:>12}", format!("  with 2-4 processes on one store (tier {number})"), counts.shared);
            println!("{:<40} {:>12}", format!("  bound by DPoP (tier {number})"), counts.bound);
            for (count, name) in [(counts.device, "device"), (counts.code, "code + PKCE")] {
                println!("{:<40} {:>12}", format!("  logging in by {name} (tier {number})"), count);
            }
            println!("{:<40} {:>12}", format!("  sharing a database (tier {number})"), counts.databases);
            println!("{:<40} {:>12}", format!("    whose grace covers a lost lock (tier {number})"), counts.covered);
            println!("{:<40} {:>12.1}", format!("seeds per second (tier {number})"), rate);
        }
        let tally = &self.tally;
        println!("{:<40} {:>12}", "refreshes sent", tally.refreshes);
        println!("{:<40} {:>12}", "callers granted", tally.granted);
        println!("{:<40} {:>12}", "callers failed", tally.failed);
        println!("{:<40} {:>12}", "database: locks lost by live workers", tally.locks_lost);
        println!("{:<40} {:>12}", "database: writes fenced off", tally.fenced_writes);
        println!("{:<40} {:>12}", "database: overlaps where a lock was lost", tally.lock_loss_overlaps);
        for (kind, count) in &tally.faults {
            println!("{:<40} {:>12}", format!("faults: {kind}"), count);
        }
        for (cause, count) in &tally.logouts {
            println!("{:<40} {:>12}", format!("logouts: {cause}"), count);
        }
        println!("{:<40} {:>12}", "violations", self.violations);
        println!("{:<40} {:>12.1}", "wall time (s)", seconds);
        let Some((first_tier, first_seed, violations)) = &self.first_failing else {
            return ExitCode::SUCCESS;
        };
        println!();
        let failing: usize = self.failing.values().map(|seeds| seeds.count).sum();
        println!("{failing} of {} seeds violated an invariant; the first:", self.seeds());
        for violation in violations {
            println!("  tier {} seed {first_seed}: {violation}", first_tier.number());
        }
        let invocation = Invocation::current();
        println!("replay it with: {}", replay_command(&invocation, *first_tier, *first_seed, options.plant));
        println!("every failing seed:");
        for (tier, seeds) in &self.failing {
            let listed: Vec<String> = seeds.lowest.iter().map(u64::to_string).collect();
            let unlisted = seeds.count - seeds.lowest.len();
            let more = if unlisted > 0 { format!(" and {unlisted} more") } else { String::new() };
            println!("  tier {} ({}): {}{more}", tier.number(), seeds.count, listed.join(" "));
        }
        ExitCode::from(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tier_lists_its_lowest_failing_seeds_and_counts_the_rest() {
        let mut seeds = FailingSeeds::default();
        let total = LISTED_FAILING as u64 + 500;
        // In the order threads might end them: high and low interleaved.
        for seed in (0..total).map(|i| if i % 2 == 0 { total - 1 - i / 2 } else { i / 2 }) {
            seeds.add(seed);
        }
        assert_eq!(seeds.count, total as usize);
        assert_eq!(seeds.lowest.len(), LISTED_FAILING, "bounded");
        assert!(seeds.lowest.iter().copied().eq(0..LISTED_FAILING as u64), "the lowest are the ones kept");
    }
}
