//! freshen keeps OAuth sessions alive for apps, CLIs and services.
//!
//! A [`Session`] holds one login: a short-lived access token and a long-lived
//! refresh token kept in the OS keyring. It refreshes ahead of expiry, runs
//! **exactly one refresh at a time** while every other caller waits for it,
//! handles refresh-token rotation and lost answers, writes new tokens to the
//! store before anyone uses them, logs out (revoking and wiping the store) when
//! the server declares the session dead, and never puts a token in a log.
//!
//! Every decision is made by the pure machine in [`freshen_core`]; this crate
//! only carries its commands out: a tokio driver, a [`transport`] over reqwest,
//! a [`store`] over keyring-core, and [`middleware`] that attaches tokens and
//! retries a 401 once.
//!
//! ```no_run
//! use freshen::core::oauth::Client;
//! use freshen::middleware::AuthMiddleware;
//! use freshen::store::KeyringStore;
//! use freshen::transport::ReqwestTransport;
//! use freshen::{Config, Session};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let config = Config::new("https://auth.example.com/oauth/token", Client::public("my-cli"))
//!         .with_revocation_endpoint("https://auth.example.com/oauth/revoke");
//!     let store = KeyringStore::native("my-cli", "alice")?;
//!     let session = Session::start(config, ReqwestTransport::new()?, store)?;
//!
//!     // Every request carries a fresh token; a 401 is retried once with a new one.
//!     let api = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
//!         .with(AuthMiddleware::new(session.clone()))
//!         .build();
//!     let me = api.get("https://api.example.com/me").send().await?;
//!     println!("{}", me.status());
//!
//!     // Watch the session: once only a login helps, send the user to log in.
//!     session.watch_state().wait_for(|state| state.needs_login()).await?;
//!     Ok(())
//! }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(not(freshen_loom))]
mod any;
#[cfg(all(not(freshen_loom), any(feature = "middleware", feature = "tower")))]
mod authorize;
#[cfg(not(freshen_loom))]
mod clock;
// A loom build keeps these two without the driver that calls most of them.
#[cfg_attr(freshen_loom, allow(dead_code))]
mod coordinator;
#[cfg(not(freshen_loom))]
pub mod discovery;
#[cfg(not(freshen_loom))]
pub mod dpop;
#[cfg(not(freshen_loom))]
mod environment;
#[cfg_attr(freshen_loom, allow(dead_code))]
mod error;
#[cfg(not(freshen_loom))]
pub mod login;
#[cfg(all(not(freshen_loom), feature = "middleware"))]
#[cfg_attr(docsrs, doc(cfg(feature = "middleware")))]
pub mod middleware;
#[cfg(not(freshen_loom))]
mod registry;
mod scrub;
#[cfg(not(freshen_loom))]
mod session;
#[cfg(not(freshen_loom))]
mod setters;
#[cfg(not(freshen_loom))]
mod stats;
#[cfg(not(freshen_loom))]
pub mod store;
mod sync;
mod token;
#[cfg(all(not(freshen_loom), feature = "tower"))]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub mod tower;
#[cfg(not(freshen_loom))]
pub mod transport;

#[cfg(not(freshen_loom))]
pub use any::AnySession;
#[cfg(not(freshen_loom))]
pub use clock::{BootClock, WallClock, system_boot_clock, system_clock};
#[cfg(feature = "_internal_test_exports")]
#[doc(hidden)]
pub use coordinator::Observer;
#[cfg(not(freshen_loom))]
pub use environment::Environment;
pub use error::Error;
pub use freshen_core as core;
/// What a session's state reads (see [`Session::state`]).
pub use freshen_core::session::{Renewal, StateView};
/// Tokens an app already holds, for [`Session::log_in_with`].
pub use freshen_core::stored::StoredSession;
#[cfg(not(freshen_loom))]
pub use registry::Sessions;
/// The secret types tokens are kept in.
#[cfg(not(freshen_loom))]
pub use secrecy;
#[cfg(not(freshen_loom))]
pub use session::{Config, Session};
#[cfg(not(freshen_loom))]
pub use stats::Stats;
pub use token::Token;

/// The README's Rust examples, compiled as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeExamples;
