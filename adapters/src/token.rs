//! The access token handed to callers.

use core::fmt;

use freshen_core::dpop::DpopKey;
#[cfg(not(freshen_loom))]
use freshen_core::dpop::{DpopNonce, DpopProof};
use freshen_core::ids::Generation;
use freshen_core::session::AccessGrant;
use freshen_core::time::UnixTime;
use freshen_core::token::TokenType;
use http::HeaderValue;
use secrecy::ExposeSecret;

use crate::Error;
use crate::sync::Arc;

/// A granted token, shared by every caller of the same generation: handing it
/// out clones an `Arc`, never the token.
#[derive(Debug)]
pub(crate) struct Published {
    pub(crate) grant: AccessGrant,
    /// `Bearer <token>`, marked sensitive so http never prints it; `None`
    /// when the token holds bytes a header cannot.
    header: Option<HeaderValue>,
    /// For a published token: the wall time from which the fast path
    /// refuses it even if the driver's timer has not withdrawn it yet.
    pub(crate) refuse_from: Option<UnixTime>,
}

impl Published {
    pub(crate) fn new(grant: AccessGrant, refuse_from: Option<UnixTime>) -> Self {
        // A bound token is presented as `DPoP`, with a proof beside it (RFC 9449 §7.1).
        let scheme = if grant.dpop_key.is_some() { "DPoP " } else { "Bearer " };
        let header = crate::scrub::sensitive_header([scheme, grant.access_token.expose_secret()]).ok();
        Self { grant, header, refuse_from }
    }
}

/// An access token the session granted. Cheap to clone; `Debug` shows its
/// generation and fingerprint, never the token.
#[derive(Clone)]
pub struct Token(pub(crate) Arc<Published>);

impl Token {
    /// Its generation: pass the token back to [`Session::retry_token`](crate::Session::retry_token)
    /// after a 401, and the session knows which token was refused.
    pub fn generation(&self) -> Generation {
        self.0.grant.generation
    }

    /// How to present it.
    pub fn token_type(&self) -> &TokenType {
        &self.0.grant.token_type
    }

    /// The `Authorization` header value (`Bearer …`, or `DPoP …` for a
    /// bound token), marked sensitive. A bound token also needs a proof per
    /// request ([`Token::dpop_proof`]); the middleware adds both.
    pub fn authorization(&self) -> Result<&HeaderValue, Error> {
        self.0.header.as_ref().ok_or(Error::InvalidToken)
    }

    /// The DPoP key the token is bound to; `None` for a bearer token.
    pub fn dpop_key(&self) -> Option<&DpopKey> {
        self.0.grant.dpop_key.as_ref()
    }

    /// A proof for one `method` request to `url` that presents this token
    /// (`None` for a bearer token), made at `now` with the resource server's
    /// `nonce`, for requests sent without the middleware.
    ///
    /// # Errors
    /// The OS gave no randomness for the proof's id.
    #[cfg(not(freshen_loom))]
    pub fn dpop_proof(
        &self,
        method: &str,
        url: &str,
        now: UnixTime,
        nonce: Option<&DpopNonce>,
    ) -> Result<Option<DpopProof>, Error> {
        let Some(key) = self.dpop_key() else { return Ok(None) };
        crate::dpop::proof(key, method, url, now, nonce, Some(&self.0.grant.access_token))
            .map(Some)
            .map_err(|error| Error::DpopProof(error.to_string()))
    }
}

/// The token bytes, for a request that cannot take
/// [`Token::authorization`]. Exposing them takes `secrecy`'s trait in scope
/// (`use freshen::secrecy::ExposeSecret`), so every place that does is
/// visible in review. Send them; never log them.
impl ExposeSecret<str> for Token {
    fn expose_secret(&self) -> &str {
        self.0.grant.access_token.expose_secret()
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({}, {})", self.0.grant.generation, self.0.grant.access_token.fingerprint())
    }
}
