//! Getting the first tokens, each flow ending in a session that is stored
//! before the login resolves (as [`Session::log_in`](crate::Session::log_in) does):
//!
//! * [`Session::start_device_login`](crate::Session::start_device_login): the device authorization grant (RFC
//!   8628) for CLIs and headless boxes: the app shows the user a code and a
//!   URL, and the session is logged in once the user approved on any device.
//! * [`Session::start_code_login`](crate::Session::start_code_login): the authorization code grant with PKCE
//!   for desktop apps (RFC 7636, RFC 8252): the app opens the browser at a
//!   URL, and the server sends it back to a loopback address this listens on.
//!
//! [`Session::log_in`](crate::Session::log_in) takes a token response obtained any other way:
//! [`TokenResponse::from_json`](freshen_core::oauth::TokenResponse::from_json)
//! reads one from its body, and with the `oauth2` feature `from_oauth2`
//! converts the `oauth2` crate's.

mod code;
mod device;
#[cfg(feature = "oauth2")]
mod oauth2;

pub use code::{BROWSER_WAIT, CodeLogin};
pub use device::DeviceLogin;
#[cfg(feature = "oauth2")]
pub use oauth2::from_oauth2;

use core::time::Duration;

use freshen_core::code::{ExchangeError, RedirectError};
use freshen_core::device::{DeviceError, StartError};
use freshen_core::dpop::{DpopKey, DpopNonce};
use freshen_core::oauth::FormRequest;
use freshen_core::session::TransportFailure;
use thiserror::Error;

use crate::Error;
use crate::clock::Clock;
use crate::session::Config;
use crate::transport::{HttpResponse, Transport, TransportError};

/// One POST of a login flow, bounded by the session's request timeout.
async fn post<T: Transport>(
    transport: &T,
    url: &str,
    form: &FormRequest,
    timeout: Duration,
) -> Result<HttpResponse, TransportError> {
    match tokio::time::timeout(timeout, transport.post_form(url, form)).await {
        Ok(answered) => answered,
        Err(_) => Err(TransportFailure::Timeout.into()),
    }
}

/// The token endpoint as a login flow talks to it: each POST bounded by the
/// request timeout and, when the login binds a DPoP key, carrying a fresh
/// proof with the server's latest nonce (taken from every answer).
struct TokenEndpoint<'a, T> {
    transport: &'a T,
    config: &'a Config,
    clock: &'a Clock,
    /// The key the login's tokens are to be bound to.
    key: Option<DpopKey>,
    nonce: Option<DpopNonce>,
}

impl<'a, T: Transport> TokenEndpoint<'a, T> {
    fn new(transport: &'a T, config: &'a Config, clock: &'a Clock, key: Option<DpopKey>) -> Self {
        Self { transport, config, clock, key, nonce: None }
    }

    async fn post(&mut self, form: &FormRequest) -> Result<HttpResponse, TransportError> {
        let url = &self.config.token_endpoint;
        let proven;
        let form = match &self.key {
            Some(key) => {
                let proof = crate::dpop::proof(key, "POST", url, self.clock.wall(), self.nonce.as_ref(), None)
                    .map_err(|error| {
                        TransportError::new(TransportFailure::NotSent, std::io::Error::other(error.to_string()))
                    })?;
                proven = form.clone().with_dpop(proof);
                &proven
            }
            None => form,
        };
        let response = post(self.transport, url, form, self.config.session.request_timeout).await?;
        if let Some(nonce) = response.dpop_nonce() {
            self.nonce = Some(nonce);
        }
        Ok(response)
    }
}

/// Why a login gave no session.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum LoginError {
    /// The session's [`Config`] names no endpoint for this flow.
    #[error("no {0} endpoint is configured")]
    NoEndpoint(&'static str),
    /// The endpoint that starts the login could not be reached.
    #[error("the {endpoint} endpoint could not be reached: {error}")]
    Unreachable {
        /// Which endpoint.
        endpoint: &'static str,
        /// How the request failed.
        #[source]
        error: TransportError,
    },
    /// The device authorization endpoint refused or answered something unusable.
    #[error(transparent)]
    Start(#[from] StartError),
    /// The device login ended without tokens: refused by the user, expired,
    /// or refused by the server.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// The browser came back without a code: the user or the server
    /// refused, or the redirect was unusable.
    #[error(transparent)]
    Redirect(#[from] RedirectError),
    /// The token endpoint did not exchange the code.
    #[error(transparent)]
    Exchange(#[from] ExchangeError),
    /// No browser came back in time.
    #[error("no browser came back to the login's redirect address in time")]
    TimedOut,
    /// The loopback address for the redirect could not be listened on, or
    /// the OS could not provide randomness for the login's secrets.
    #[error("the login could not be set up: {0}")]
    Setup(String),
    /// The tokens came, but the session could not keep them (the store is
    /// unavailable, or a logout came first).
    #[error("the login's tokens could not be stored: {0}")]
    Session(#[source] Error),
}
