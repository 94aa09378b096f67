//! freshen-sim, the testkit: the reference authority, the invariant checker,
//! the deterministic world of tier 1, tier 2 on turmoil, the fuzzing entry
//! points, and the authority served over HTTP; the `freshen-sim` binary runs
//! the campaign over them.
//!
//! * [`authority`]: a reference authorization server (rotation, grace, reuse detection).
//! * [`check`]: the invariant checker (C1–C9, U1–U9, A1–A6) and the plants it must catch.
//! * [`executor`]: one machine driven by hand under the checker (the property tests' and fuzzers' loop).
//! * [`world`]: what a world is made of (configuration, faults, demand), for both tiers.
//! * [`harness`]: tier 1, a deterministic world that couples sessions and the authority.
//! * `tier2` (feature `tier2`, on by default): tier 2, the real driver over hyper on turmoil.
//! * [`fuzzing`]: what the fuzz targets and the corpus replay run.
//! * `http` (feature `tier2`): the authority over HTTP (`freshen-sim serve`, loopback tests), or in-process.
//! * `faulty_store` (feature `tier2`): any `Store` behind seeded and scripted failures, the one store double.
//! * `store_check` and `transport_check` (feature `tier2`): check an app's own `Store` or
//!   `Transport` the way a session relies on it.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod authority;
pub mod check;
pub mod executor;
mod fast_hash;
#[cfg(feature = "tier2")]
pub mod faulty_store;
pub mod fuzzing;
pub mod harness;
#[cfg(feature = "tier2")]
pub mod http;
#[cfg(feature = "tier2")]
pub mod store_check;
#[cfg(feature = "tier2")]
pub mod tier2;
#[cfg(feature = "tier2")]
pub mod transport_check;
pub mod world;
