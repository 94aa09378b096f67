//! What can go wrong for a caller. No variant carries token bytes.

use core::fmt;
use freshen_core::oauth::{OAuthError, Rejected};
use std::sync::Arc;

use freshen_core::session::{AttemptFailure, ConfigError, FailReason, LogoutCause, TransportFailure};
use thiserror::Error;

/// Why no access token could be had.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum Error {
    /// The session is logged out: send the user to log in.
    #[error("logged out: {0}")]
    LoggedOut(LogoutCause),
    /// The store held no session and none was logged in yet: send the user to log in.
    #[error("there is no session yet; log in")]
    NoSession,
    /// The refresh failed for now (network, server, rate limit); the session
    /// and its tokens are kept, and the next call tries again (unless the
    /// server asked to wait: see the session's state).
    #[error("the refresh at {endpoint} failed for now: {failure}")]
    RefreshUnavailable {
        /// How its last attempt failed.
        failure: AttemptFailure,
        /// The token endpoint, without query or user information.
        endpoint: String,
        /// The transport's own error, when the last attempt got no answer.
        #[source]
        cause: Option<TransportError>,
    },
    /// The server refused the refresh for a reason that neither retrying nor
    /// logging in fixes (for example `invalid_client`, or a 404 from a wrong
    /// URL): the app is misconfigured.
    #[error("the token endpoint {endpoint} refused the client ({rejected}); check the client's configuration")]
    Rejected {
        /// What the server answered.
        rejected: Rejected,
        /// The token endpoint, without query or user information.
        endpoint: String,
    },
    /// The token endpoint wants the user to act (`mfa_required`,
    /// `interaction_required`, `consent_required`, `login_required`). The
    /// session is kept and not retried on its own: send the user through a
    /// login (or force a refresh once they have acted).
    #[error("the user must act before the session can be refreshed ({0})")]
    InteractionRequired(OAuthError),
    /// The store could not be read or written; tokens are written before use.
    #[error("the token store is unavailable")]
    StoreUnavailable,
    /// The access token is no longer usable and the server issued no refresh
    /// token to renew it: the user must log in again. No request was made.
    #[error("the access token has expired and there is no refresh token to renew it; log in again")]
    MissingRefreshToken,
    /// A login's token type and DPoP key disagree: bound tokens came
    /// without their key, or the server answered a proof with bearer
    /// tokens. The login was refused; the session held before is kept.
    #[error("the login's tokens and its DPoP key disagree (a bound login needs DPoP tokens)")]
    DpopMismatch,
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
    /// A DPoP proof for a request could not be made (the OS gave no
    /// randomness): the request was not sent, never sent unbound.
    #[error("a DPoP proof could not be made: {0}")]
    DpopProof(String),
    /// The access token cannot be sent as an HTTP header.
    #[error("the access token is not a valid header value")]
    InvalidToken,
    /// The session's settings cannot work (found by [`Session::start`](crate::Session::start)).
    #[error("invalid session settings: {0}")]
    Config(#[from] ConfigError),
    /// An endpoint URL cannot be used (found by
    /// [`Session::start`](crate::Session::start), not at the first call).
    #[error("the {endpoint} endpoint {url} {problem}")]
    InvalidEndpoint {
        /// `token`, `revocation`, `authorization` or `device authorization`.
        endpoint: &'static str,
        /// The URL as given, without user information or query.
        url: String,
        /// What is wrong with it.
        problem: &'static str,
    },
}

/// Checks an endpoint URL at start: it must parse, name a scheme and a host,
/// and use `https`, or plain `http` only to a loopback host (unless the app
/// allows plain http, as tests and simulations on private networks do).
/// Returns the URL as errors show it: without user information or query.
pub(crate) fn check_endpoint(endpoint: &'static str, url: &str, plain_http_allowed: bool) -> Result<String, Error> {
    let invalid = |shown: String, problem| Error::InvalidEndpoint { endpoint, url: shown, problem };
    let Ok(uri) = url.parse::<http::Uri>() else {
        return Err(invalid(String::new(), "does not parse as a URL"));
    };
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return Err(invalid(String::new(), "needs a scheme and a host (https://host/path)"));
    };
    let host = authority.host();
    let shown = match authority.port() {
        Some(port) => format!("{scheme}://{host}:{port}{}", uri.path()),
        None => format!("{scheme}://{host}{}", uri.path()),
    };
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    match scheme {
        "https" => Ok(shown),
        "http" if loopback || plain_http_allowed => Ok(shown),
        "http" => Err(invalid(shown, "uses plain http to a host that is not loopback; use https")),
        _ => Err(invalid(shown, "uses a scheme other than https or http")),
    }
}

impl Error {
    /// What a caller is told for `reason`: refresh errors name the token
    /// endpoint (`endpoint`, as shown) and carry the transport's own error
    /// when the last attempt went unanswered for that `transport` reason.
    pub(crate) fn from_reason(reason: FailReason, endpoint: &str, transport: Option<TransportError>) -> Self {
        match reason {
            FailReason::LoggedOut(LogoutCause::NoSession) => Self::NoSession,
            FailReason::LoggedOut(cause) => Self::LoggedOut(cause),
            FailReason::RefreshUnavailable(failure) => {
                let cause = match &failure {
                    AttemptFailure::Transport(told) => transport.filter(|error| error.failure() == *told),
                    _ => None,
                };
                Self::RefreshUnavailable { failure, endpoint: endpoint.to_owned(), cause }
            }
            FailReason::Rejected(rejected) => Self::Rejected { rejected, endpoint: endpoint.to_owned() },
            FailReason::InteractionRequired(error) => Self::InteractionRequired(error),
            FailReason::StoreUnavailable => Self::StoreUnavailable,
            FailReason::MissingRefreshToken => Self::MissingRefreshToken,
            FailReason::DpopMismatch => Self::DpopMismatch,
            FailReason::TimedOut => Self::TimedOut,
            FailReason::TooManyWaiters => Self::TooManyWaiters,
        }
    }

    /// The session's error behind a request that reqwest-middleware stopped
    /// ([`AuthMiddleware`](crate::middleware::AuthMiddleware) reports it as
    /// `reqwest_middleware::Error::Middleware`); `None` for an HTTP error.
    ///
    /// ```
    /// # fn handle(error: reqwest_middleware::Error) {
    /// if freshen::Error::from_middleware(&error).is_some_and(freshen::Error::needs_login) {
    ///     // send the user to the login screen
    /// }
    /// # }
    /// ```
    #[cfg(all(feature = "middleware", not(freshen_loom)))]
    #[cfg_attr(docsrs, doc(cfg(feature = "middleware")))]
    pub fn from_middleware(error: &reqwest_middleware::Error) -> Option<&Self> {
        match error {
            reqwest_middleware::Error::Middleware(error) => error.downcast_ref::<Self>(),
            reqwest_middleware::Error::Reqwest(_) => None,
        }
    }

    /// The session's error in `error` or its chain of sources: how an app
    /// finds it in a boxed error (a `tower::BoxError` from a stack around
    /// `freshen::tower::AuthLayer`, an `anyhow::Error`).
    ///
    /// ```
    /// let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(freshen::Error::NoSession);
    /// assert_eq!(freshen::Error::find_in(&*boxed), Some(&freshen::Error::NoSession));
    /// ```
    pub fn find_in<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a Self> {
        let mut next = Some(error);
        // Bounded: a chain of sources longer than this is not one a program built.
        for _ in 0..64 {
            let error = next?;
            if let Some(found) = error.downcast_ref::<Self>() {
                return Some(found);
            }
            next = error.source();
        }
        None
    }

    /// Whether the session ended (the user logged out, or the server
    /// declared the refresh token dead). See also [`Error::needs_login`].
    pub fn is_logged_out(&self) -> bool {
        matches!(self, Self::LoggedOut(_))
    }

    /// Whether the user must act (log in, or complete what the server asks
    /// for): there is no session, it ended, nothing can renew it, or the
    /// token endpoint asked for the user's interaction.
    pub fn needs_login(&self) -> bool {
        matches!(self, Self::NoSession | Self::LoggedOut(_) | Self::MissingRefreshToken | Self::InteractionRequired(_))
    }
}

/// How a request went unanswered: what the session must know (whether the
/// server may have seen it) and, for people, the transport's own error (a
/// refused connection, a TLS failure), kept as this error's `source`.
#[derive(Clone, Debug)]
pub struct TransportError {
    failure: TransportFailure,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl TransportError {
    /// A failure with the transport's own error as its cause. The cause must
    /// not carry token bytes (reqwest's does not: it never shows bodies).
    pub fn new(failure: TransportFailure, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self { failure, source: Some(Arc::new(source)) }
    }

    /// What the session makes of it.
    pub fn failure(&self) -> TransportFailure {
        self.failure
    }
}

impl From<TransportFailure> for TransportError {
    fn from(failure: TransportFailure) -> Self {
        Self { failure, source: None }
    }
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.failure)
    }
}

impl std::error::Error for TransportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|source| source as &(dyn std::error::Error + 'static))
    }
}

/// Equal when they fail the same way for the same stated cause.
impl PartialEq for TransportError {
    fn eq(&self, other: &Self) -> bool {
        self.failure == other.failure
            && self.source.as_ref().map(ToString::to_string) == other.source.as_ref().map(ToString::to_string)
    }
}

impl Eq for TransportError {}
