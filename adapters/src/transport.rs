//! Carrying the requests the core builds to the token endpoint.
//!
//! A [`Transport`] posts a form and hands back status, the few headers the
//! core reads and a body cut at [`MAX_BODY_BYTES`](oauth::MAX_BODY_BYTES). It never logs bodies. The
//! session is generic over it, so a simulation can plug in its own network.

use core::future::Future;

use freshen_core::dpop::DpopNonce;
use freshen_core::oauth::{self, Classified, FormRequest, Policy};
#[cfg(feature = "reqwest")]
use freshen_core::session::TransportFailure;

pub use crate::any::BoxTransport;
pub use crate::error::TransportError;
use freshen_core::time::UnixTime;
use secrecy::zeroize::Zeroize as _;

/// The proof header of RFC 9449, named once for the token endpoint and the
/// resource requests: a name given as text is parsed again on every request.
#[cfg(any(feature = "reqwest", feature = "middleware", feature = "tower"))]
pub(crate) const DPOP: http::HeaderName = http::HeaderName::from_static("dpop");

/// Response headers the core reads; others are dropped at the door.
const KEPT_HEADERS: [&str; 4] = ["retry-after", "date", "www-authenticate", "dpop-nonce"];

/// A response from the token endpoint, bounded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// `Retry-After`, `Date`, `WWW-Authenticate` and `DPoP-Nonce`, if present (lower-case names).
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body, at most [`MAX_BODY_BYTES`](oauth::MAX_BODY_BYTES) + 1 bytes (one more says "too large").
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// A response with these parts; headers other than the kept ones are dropped.
    pub fn new(status: u16, headers: impl IntoIterator<Item = (String, Vec<u8>)>, body: Vec<u8>) -> Self {
        let headers = headers
            .into_iter()
            .map(|(name, value)| (name.to_ascii_lowercase(), value))
            .filter(|(name, _)| KEPT_HEADERS.contains(&name.as_str()))
            .collect();
        Self { status, headers, body }
    }

    /// How far the server's clock (its `Date`) is from `unix_now`, ours when
    /// the answer arrived; a sanity check only.
    pub fn clock_skew(&self, unix_now: UnixTime) -> Option<oauth::ClockSkew> {
        self.read(|response| response.clock_skew(unix_now))
    }

    /// The server's DPoP nonce (RFC 9449 §8), if it sent a valid one.
    pub fn dpop_nonce(&self) -> Option<DpopNonce> {
        self.read(|response| response.dpop_nonce())
    }

    /// What the response means, by the core's rules.
    pub fn classify(&self, policy: &Policy, unix_now: UnixTime) -> Classified {
        self.read(|response| oauth::classify(policy, response, Some(unix_now)))
    }

    /// The response as the core's parsers read it.
    pub fn read<R>(&self, parse: impl FnOnce(&oauth::Response<'_>) -> R) -> R {
        let headers: Vec<(&str, &[u8])> = self.headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())).collect();
        parse(&oauth::Response { status: self.status, headers: &headers, body: &self.body })
    }
}

impl Drop for HttpResponse {
    /// The body holds tokens: it is wiped (its whole capacity) before it is freed.
    fn drop(&mut self) {
        self.body.zeroize();
    }
}

/// Posts forms to the token and revocation endpoints.
pub trait Transport: Send + Sync + 'static {
    /// Posts `form` to `url` and returns the answer, or how it went unanswered.
    fn post_form(
        &self,
        url: &str,
        form: &FormRequest,
    ) -> impl Future<Output = Result<HttpResponse, TransportError>> + Send;
}

/// A [`Transport`] over reqwest. HTTPS needs the `rustls` feature (on by
/// default) or `native-tls`.
#[cfg(feature = "reqwest")]
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
#[derive(Clone, Debug)]
pub struct ReqwestTransport {
    client: reqwest::Client,
}

#[cfg(feature = "reqwest")]
impl ReqwestTransport {
    /// A transport over a client of its own. It sets no timeout: the
    /// session bounds every request by its one number,
    /// [`SessionConfig::request_timeout`](freshen_core::session::SessionConfig::request_timeout)
    /// (10 s by default), which the machine also counts the attempt by.
    pub fn new() -> Result<Self, reqwest::Error> {
        Ok(Self { client: reqwest::Client::builder().build()? })
    }

    /// A transport over a client you configured (proxies, TLS roots). A
    /// timeout set on it shorter than the session's `request_timeout` cuts
    /// requests short; leave it unset.
    pub fn with_client(client: reqwest::Client) -> Self {
        Self { client }
    }
}

#[cfg(feature = "reqwest")]
impl Transport for ReqwestTransport {
    async fn post_form(&self, url: &str, form: &FormRequest) -> Result<HttpResponse, TransportError> {
        let mut request = self
            .client
            .post(url)
            .header(http::header::CONTENT_TYPE, FormRequest::CONTENT_TYPE)
            .header(http::header::ACCEPT, "application/json")
            .body(crate::scrub::wiped_bytes([form.expose_body()]));
        if let Some(authorization) = form.expose_authorization() {
            let value = crate::scrub::sensitive_header([authorization])
                .map_err(|error| TransportError::new(TransportFailure::NotSent, error))?;
            request = request.header(http::header::AUTHORIZATION, value);
        }
        if let Some(proof) = form.expose_dpop() {
            let value = crate::scrub::sensitive_header([proof])
                .map_err(|error| TransportError::new(TransportFailure::NotSent, error))?;
            request = request.header(DPOP, value);
        }
        let mut response = request.send().await.map_err(failure)?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
            .collect::<Vec<_>>();
        // Sized for the largest body read, so it never grows (it holds tokens):
        // `HttpResponse` wipes it when it drops.
        let mut body = Vec::with_capacity(oauth::MAX_BODY_BYTES + 1);
        while let Some(chunk) = response.chunk().await.map_err(failure)? {
            let room = oauth::MAX_BODY_BYTES + 1 - body.len();
            body.extend_from_slice(chunk.get(..room.min(chunk.len())).unwrap_or_default());
            if body.len() > oauth::MAX_BODY_BYTES {
                break;
            }
        }
        Ok(HttpResponse::new(status, headers, body))
    }
}

#[cfg(feature = "reqwest")]
/// How a reqwest failure maps to what the core must know (whether the server
/// may have seen the request), keeping reqwest's error as the cause. Its URL
/// is dropped: errors name the endpoint themselves.
fn failure(error: reqwest::Error) -> TransportError {
    // A connect failure (a connect timeout included) never reached the server.
    let failure = if error.is_connect() || error.is_builder() {
        TransportFailure::NotSent
    } else if error.is_timeout() {
        TransportFailure::Timeout
    } else {
        TransportFailure::Interrupted
    };
    TransportError::new(failure, error.without_url())
}
