//! What every way of authorizing requests shares: the headers a token
//! needs (with a DPoP proof for a bound one), the span each request runs
//! in, and the decision after a 401. [`middleware`](crate::middleware) (for
//! reqwest) and [`tower`](crate::tower) (for hyper, tonic and axum clients)
//! differ only in how they send.

use std::collections::VecDeque;
use std::sync::Mutex;

use freshen_core::dpop::DpopNonce;
use freshen_core::ids::Generation;

use crate::store::Store;
use crate::transport::{DPOP, Transport};
use crate::{Error, Session, Token};

/// The most resource servers whose DPoP nonce is remembered; the one heard
/// from least recently is forgotten first (its next request is challenged
/// once more, which costs a retry, not a failure).
const MAX_RESOURCE_NONCES: usize = 16;

/// The DPoP nonces resource servers handed out (RFC 9449 §9), by origin.
#[derive(Debug, Default)]
pub(crate) struct ResourceNonces(Mutex<VecDeque<(String, DpopNonce)>>);

impl ResourceNonces {
    fn get(&self, url: &str) -> Option<DpopNonce> {
        let origin = origin(url);
        let nonces = self.0.lock().ok()?;
        nonces.iter().find(|(o, _)| o == origin).map(|(_, nonce)| nonce.clone())
    }

    /// Remembers the newest nonce of `url`'s server.
    fn set(&self, url: &str, nonce: DpopNonce) {
        let origin = origin(url);
        let Ok(mut nonces) = self.0.lock() else { return };
        nonces.retain(|(o, _)| o != origin);
        if nonces.len() == MAX_RESOURCE_NONCES {
            nonces.pop_front();
        }
        nonces.push_back((origin.to_owned(), nonce));
    }
}

/// `scheme://authority` of `url`.
fn origin(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |at| at + 3);
    let end =
        url.get(after_scheme..).and_then(|rest| rest.find(['/', '?', '#'])).map_or(url.len(), |at| at + after_scheme);
    url.get(..end).unwrap_or(url)
}

/// The nonce header of RFC 9449 (the proof's is [`DPOP`]).
const DPOP_NONCE: http::HeaderName = http::HeaderName::from_static("dpop-nonce");

/// A fresh proof of `token`'s key for a `method` request to `url`, with
/// the server's latest nonce, for the `DPoP` header; `None` for a bearer
/// token (no clock read, no lock: nothing more on the fast path).
pub(crate) fn dpop_header<T: Transport, S: Store>(
    token: &Token,
    method: &str,
    url: &str,
    session: &Session<T, S>,
) -> Result<Option<http::HeaderValue>, Error> {
    if token.dpop_key().is_none() {
        return Ok(None);
    }
    let (now, nonces) = session.proof_parts();
    let Some(proof) = token.dpop_proof(method, url, now, nonces.get(url).as_ref())? else { return Ok(None) };
    crate::scrub::sensitive_header([proof.expose()]).map(Some).map_err(|_| Error::InvalidToken)
}

/// Puts `token` in the `Authorization` header (marked sensitive), and its
/// proof ([`dpop_header`]), if it has one, in the `DPoP` header.
pub(crate) fn authorize(
    headers: &mut http::HeaderMap,
    token: &Token,
    proof: Option<http::HeaderValue>,
) -> Result<(), Error> {
    headers.insert(http::header::AUTHORIZATION, token.authorization()?.clone());
    if let Some(proof) = proof {
        headers.insert(DPOP, proof);
    }
    Ok(())
}

/// Reads a resource server's answer to a request to `url` that carried
/// `token`: a nonce it sent replaces the one remembered, and says whether
/// the answer is a nonce challenge (a 401 with `error="use_dpop_nonce"`,
/// RFC 9449 §9), which is answered by sending the request again with the
/// nonce, the token unchanged (the session is not told: the token is
/// good). Only a bound token's request has a proof for a nonce to go in:
/// a bearer token's answer is not read at all.
pub(crate) fn heed_nonce<T: Transport, S: Store>(
    session: &Session<T, S>,
    token: &Token,
    url: &str,
    status: http::StatusCode,
    headers: &http::HeaderMap,
) -> bool {
    if token.dpop_key().is_none() {
        return false;
    }
    let Some(nonce) = headers.get(DPOP_NONCE).and_then(|value| DpopNonce::parse(value.as_bytes())) else {
        return false;
    };
    session.proof_parts().1.set(url, nonce);
    status == http::StatusCode::UNAUTHORIZED
        && headers.get_all(http::header::WWW_AUTHENTICATE).iter().any(|value| {
            let value = String::from_utf8_lossy(value.as_bytes()).to_ascii_lowercase();
            value.starts_with("dpop") && value.contains("use_dpop_nonce")
        })
}

/// The span of one authorized request: the generation of the token it
/// carried (the fresh one after a retry) and whether a 401 made it retry.
pub(crate) fn request_span() -> tracing::Span {
    tracing::info_span!("authorized_request", generation = tracing::field::Empty, retried = tracing::field::Empty)
}

/// Records the token a request was answered with, once it is known.
pub(crate) fn record_answer(generation: Generation, retried: bool) {
    tracing::Span::current().record("generation", tracing::field::display(generation)).record("retried", retried);
}

/// After a resource answered 401 to a request that carried `used`: its copy
/// (made before it was sent) and the token to send the copy with, once. A
/// request without a copy (its body cannot be sent twice) tells the session
/// the token was refused and fails with [`Error::UnauthorizedNotRetried`].
pub(crate) async fn prepare_retry<T: Transport, S: Store, R>(
    session: &Session<T, S>,
    used: &Token,
    copy: Option<R>,
) -> Result<(R, Token), Error> {
    let Some(copy) = copy else {
        session.report_unauthorized(used);
        return Err(Error::UnauthorizedNotRetried);
    };
    Ok((copy, session.retry_token(used).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_origin_is_scheme_and_authority() {
        assert_eq!(origin("https://api.example:8443/v1/me?x=1"), "https://api.example:8443");
        assert_eq!(origin("http://127.0.0.1:9/"), "http://127.0.0.1:9");
        assert_eq!(origin("https://api.example"), "https://api.example");
        assert_eq!(origin("https://api.example?q"), "https://api.example");
    }

    #[test]
    fn nonces_are_kept_per_origin_and_bounded() {
        let nonces = ResourceNonces::default();
        let nonce = |text: &str| DpopNonce::parse(text.as_bytes()).unwrap();
        nonces.set("https://a.example/x", nonce("n1"));
        nonces.set("https://a.example/y?z", nonce("n2"));
        assert_eq!(nonces.get("https://a.example/other"), Some(nonce("n2")), "the newest replaces the old");
        assert_eq!(nonces.get("https://b.example/"), None);
        for i in 0..MAX_RESOURCE_NONCES {
            nonces.set(&format!("https://s{i}.example/"), nonce("n"));
        }
        assert_eq!(nonces.get("https://a.example/"), None, "the least recent was forgotten");
        assert_eq!(nonces.0.lock().unwrap().len(), MAX_RESOURCE_NONCES);
    }
}
