//! The pure, deterministic heart of [freshen](https://docs.rs/freshen): an
//! OAuth session machine that never performs I/O, never reads a clock and
//! never spawns anything, so it can be model-checked, simulated, property-tested
//! and fuzzed, and it behaves the same under tokio, a test or a simulation.
//!
//! * [`session`]: the session machine (Valid, Expired, Refreshing, LoggedOut).
//! * [`oauth`]: RFC 6749 §6 refresh requests as data, and response classification.
//! * [`code`]: the authorization code grant with PKCE for native apps
//!   (RFC 7636, RFC 8252): the URL, the redirect, the exchange.
//! * [`device`]: the device authorization grant (RFC 8628): a pure poller
//!   that logs a CLI or a headless box in.
//! * [`stored`]: the session as one versioned blob for a store.
//! * [`token`], [`time`], [`ids`]: tokens as secrets, the two clocks as
//!   inputs, and the numbers that name generations, callers and operations.
//!
//! Every buffer that held a token on the way (a parsed response, a blob, a
//! form) is wiped before its memory is freed, and none ever grows (so the
//! allocator never frees an unwiped copy); the `freed-memory` test crate
//! checks it.
//!
//! The reference authority, the invariant checker and the simulated worlds
//! that test this machine live in the testkit, `freshen-sim`.
//!
//! # The run loop
//!
//! A driver owns a [`Session`](session::Session) and repeats three steps:
//! feed one input (an [`Event`](session::Event), or
//! [`handle_timeout`](session::Session::handle_timeout) when the timer fires),
//! carry out every [`Command`](session::Command) it queued, then re-arm its
//! timer from [`poll_timeout`](session::Session::poll_timeout). Time is an
//! input: the driver reads its clock and passes it in.
//!
//! ```
//! use std::time::Duration;
//! use freshen_core::ids::{CallerId, Generation};
//! use freshen_core::session::{Command, Event, Io, Renewal, Session, SessionConfig, StateView};
//! use freshen_core::stored::StoredSession;
//! use freshen_core::time::{MonoTime, UnixTime};
//!
//! // What the store holds (a real driver reads its keyring).
//! let blob = br#"{"v":1,"generation":1,"access_token":"a1","refresh_token":"r1"}"#;
//! let stored = StoredSession::decode(blob)?;
//!
//! let unix_now = UnixTime::from_secs(1_800_000_000);
//! let mut now = MonoTime::ZERO;
//! let mut session = Session::new(SessionConfig::default(), 42, now, unix_now)?;
//! let mut inputs = vec![Event::TokenWanted { caller: CallerId(1) }];
//! let mut granted = Vec::new();
//!
//! for _ in 0..10 {
//!     // 1. Carry out every command, in order; answers become inputs.
//!     while let Some(command) = session.poll_command() {
//!         match command {
//!             Command::Io(Io::LoadStore { op }) => {
//!                 inputs.push(Event::StoreLoaded { op, stored: Some(stored.clone()), unix_now, boot_now: None });
//!             }
//!             Command::Io(Io::Persist { op, .. } | Io::ClearStore { op }) => {
//!                 inputs.push(Event::StoreWritten { op });
//!             }
//!             Command::Grant { callers, grant } => granted.extend(callers.iter().map(|c| (*c, grant.generation))),
//!             // SendRefresh, Revoke, Fail, Publish, StateChanged: a real driver acts on these too.
//!             _ => {}
//!         }
//!     }
//!     // 2. Feed the next input, or 3. sleep until the timer and fire it.
//!     match inputs.pop() {
//!         Some(event) => session.handle(now, event),
//!         None => match session.poll_timeout().map(|due| due.at) {
//!             Some(deadline) => {
//!                 now = deadline;
//!                 session.handle_timeout(now);
//!             }
//!             None => break,
//!         },
//!     }
//! }
//! assert_eq!(granted, [(CallerId(1), Generation(1))]);
//! assert_eq!(session.state(), &StateView::Valid { generation: Generation(1), renewal: Renewal::Ready });
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! `cargo tree -p freshen-core -e normal` shows no runtime, network, keyring
//! or OS-randomness crate: that is how anyone can check the core is sans-IO.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod code;
pub mod device;
pub mod dpop;
pub mod ids;
pub mod oauth;
// The machine's seeded jitter. The testkit draws its worlds from the same
// generator, so the feature that is not for applications exports it.
#[cfg(feature = "_internal_test_exports")]
pub mod rng;
#[cfg(not(feature = "_internal_test_exports"))]
#[allow(unreachable_pub, dead_code)]
mod rng;
// Its JSON writer is public (below) only under the feature that is not for
// applications.
#[allow(unreachable_pub)]
mod scrub;
/// The core's JSON object writer, which the testkit's reference authority
/// writes its token answers with. Not for applications.
#[cfg(feature = "_internal_test_exports")]
pub mod json {
    pub use crate::scrub::{Member, MemberValue, write_object};
}
pub mod session;
pub mod stored;
pub mod time;
pub mod token;
