//! What can go wrong for a caller. No variant carries token bytes.

use freshen_core::session::{AttemptFailure, FailReason, LogoutCause};
use thiserror::Error;

/// Why no access token could be had.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum Error {
    /// The session is logged out: send the user to log in.
    #[error("logged out: {0}")]
    LoggedOut(LogoutCause),
    /// The refresh failed for now (network, server, rate limit); a later call may succeed.
    #[error("the refresh failed for now: {0}")]
    RefreshUnavailable(AttemptFailure),
    /// The server refused the refresh for a reason that neither retrying nor
    /// logging in fixes (for example `invalid_client`): the app is misconfigured.
    #[error("the token endpoint refused the client ({0}); check the client's configuration")]
    Rejected(freshen_core::oauth::Rejected),
    /// The token endpoint wants the user to act (`mfa_required`,
    /// `interaction_required`, `consent_required`, `login_required`). The
    /// session is kept and not retried on its own: send the user through a
    /// login (or force a refresh once they have acted).
    #[error("the user must act before the session can be refreshed ({0})")]
    InteractionRequired(freshen_core::oauth::OAuthError),
    /// The store could not be read or written; tokens are written before use.
    #[error("the token store is unavailable")]
    StoreUnavailable,
    /// The access token is no longer usable and the server issued no refresh
    /// token to renew it: the user must log in again. No request was made.
    #[error("the access token has expired and there is no refresh token to renew it; log in again")]
    MissingRefreshToken,
    /// Waited longer than the session's bound.
    #[error("timed out waiting for a token")]
    TimedOut,
    /// Too many callers were waiting already.
    #[error("too many callers waiting for a token")]
    TooManyWaiters,
    /// The session's driver has stopped (its runtime shut down).
    #[error("the session has shut down")]
    Shutdown,
    /// A resource answered 401 to a request whose body could not be cloned,
    /// so it was not retried with a fresh token. The session was told.
    #[error("the request was refused with 401 and its body cannot be replayed")]
    UnauthorizedNotRetried,
    /// The access token cannot be sent as an HTTP header.
    #[error("the access token is not a valid header value")]
    InvalidToken,
}

impl From<FailReason> for Error {
    fn from(reason: FailReason) -> Self {
        match reason {
            FailReason::LoggedOut(cause) => Self::LoggedOut(cause),
            FailReason::RefreshUnavailable(failure) => Self::RefreshUnavailable(failure),
            FailReason::Rejected(rejected) => Self::Rejected(rejected),
            FailReason::InteractionRequired(error) => Self::InteractionRequired(error),
            FailReason::StoreUnavailable => Self::StoreUnavailable,
            FailReason::MissingRefreshToken => Self::MissingRefreshToken,
            FailReason::TimedOut => Self::TimedOut,
            FailReason::TooManyWaiters => Self::TooManyWaiters,
            // A reason added to the core later reads as the store being unavailable
            // would be wrong; timing out is the honest generic answer.
            _ => Self::TimedOut,
        }
    }
}
