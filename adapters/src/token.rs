//! The access token handed to callers.

use core::fmt;

use bytes::Bytes;
use freshen_core::ids::Generation;
use freshen_core::session::AccessGrant;
use freshen_core::token::TokenType;
use http::HeaderValue;
use secrecy::ExposeSecret;
use secrecy::zeroize::Zeroizing;

use crate::Error;
use crate::sync::Arc;

/// A granted token, shared by every caller of the same generation: handing it
/// out clones an `Arc`, never the token.
#[derive(Clone, Debug)]
pub(crate) struct Published {
    pub(crate) grant: AccessGrant,
    /// `Bearer <token>`, marked sensitive so http never prints it; `None`
    /// when the token holds bytes a header cannot.
    header: Option<HeaderValue>,
}

impl Published {
    pub(crate) fn new(grant: AccessGrant) -> Self {
        let header = sensitive_header(["Bearer ", grant.access_token.expose_secret()]).ok();
        Self { grant, header }
    }
}

/// `parts` joined into bytes that are wiped when the last clone of them drops
/// (the buffer is sized exactly, so it never moves; see `freshen_core::scrub`).
pub(crate) fn wiped_bytes<const N: usize>(parts: [&str; N]) -> Bytes {
    let mut joined = Zeroizing::new(Vec::with_capacity(parts.iter().map(|part| part.len()).sum()));
    for part in parts {
        joined.extend_from_slice(part.as_bytes());
    }
    Bytes::from_owner(joined)
}

/// A header value of `parts` joined, marked sensitive (http never prints it)
/// and kept in [`wiped_bytes`]: cloning it into a request copies no token.
pub(crate) fn sensitive_header<const N: usize>(
    parts: [&str; N],
) -> Result<HeaderValue, http::header::InvalidHeaderValue> {
    let mut value = HeaderValue::from_maybe_shared(wiped_bytes(parts))?;
    value.set_sensitive(true);
    Ok(value)
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

    /// The `Authorization` header value (`Bearer …`), marked sensitive.
    pub fn authorization(&self) -> Result<&HeaderValue, Error> {
        self.0.header.as_ref().ok_or(Error::InvalidToken)
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
