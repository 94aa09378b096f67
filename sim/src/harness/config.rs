//! The fates a test can script for one message or store write (the
//! configuration and the faults a campaign samples are [`crate::world`]'s).

use super::*;

/// The client id the world's session uses.
pub const CLIENT_ID: &str = "freshen-sim";

/// What happens to one refresh request on the network and at the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fate {
    /// Delivered both ways after the normal latency.
    Deliver,
    /// Lost before the server saw it.
    DropRequest,
    /// The server acted on it; the answer was lost.
    DropResponse,
    /// The server acted on it; the answer arrived mangled (a proxy's page).
    MangleResponse,
    /// The answer arrives twice.
    DuplicateResponse,
    /// The answer is held up by this much more than the normal latency.
    Delay(Duration),
    /// The server answered 503 without acting on it.
    ServerError,
    /// The server answered 429 with this `Retry-After`, without acting on it.
    RateLimited(Duration),
    /// The connection was refused (the client learns at once).
    Refused,
    /// The server refused by policy without acting on it (see [`PolicyRefusal`]).
    PolicyRefusal(PolicyRefusal),
}

/// What happens to one store write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreFate {
    /// It lands and is acknowledged.
    Write,
    /// It fails before anything lands.
    FailBefore,
    /// It lands, but the store reports a failure.
    FailAfter,
}
