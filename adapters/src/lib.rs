//! freshen: keeps OAuth sessions alive.
//!
//! The tokio driver, reqwest transport and keyring store are built on
//! [`freshen_core`]; until they land, this crate re-exports the core.
#![forbid(unsafe_code)]

pub use freshen_core as core;
