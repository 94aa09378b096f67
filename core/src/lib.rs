//! freshen-core: the pure heart of freshen.
#![forbid(unsafe_code)]

pub mod ids;
pub mod oauth;
pub mod rng;
pub mod session;
pub mod stored;
pub mod time;
pub mod token;
