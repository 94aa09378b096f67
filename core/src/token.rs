//! Secret token types.
//!
//! Tokens are `secrecy` strings wrapped in distinct types, so an access token can
//! never be sent where a refresh token belongs, and `Debug` never shows their
//! bytes. Traces name a token by its [`Fingerprint`], which identifies it without
//! revealing it.

use core::fmt;
use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};

macro_rules! secret_token {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        ///
        /// Cloning shares the bytes (a reference count), so handing one
        /// token to many callers copies nothing; they are zeroed when the
        /// last clone goes.
        #[derive(Clone)]
        pub struct $name(Arc<Held>);

        impl $name {
            /// Wraps a token value.
            pub fn new(value: impl Into<String>) -> Self {
                Self::from(SecretString::from(value.into()))
            }

            /// The token bytes. Call this only where they go on the wire or into the store.
            pub fn expose_secret(&self) -> &str {
                self.0.secret.expose_secret()
            }

            /// A short, stable, non-reversible name for this token, for traces.
            pub fn fingerprint(&self) -> Fingerprint {
                self.0.fingerprint
            }

            /// True when both hold the same bytes. Not constant-time: use it to
            /// compare tokens the session holds, never to authenticate a peer.
            pub fn same_as(&self, other: &Self) -> bool {
                self.expose_secret() == other.expose_secret()
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.fingerprint())
            }
        }

        impl From<SecretString> for $name {
            fn from(secret: SecretString) -> Self {
                Self(Arc::new(Held::new(secret)))
            }
        }
    };
}

/// A token's bytes with their fingerprint, worked out once: traces, the
/// machine's comparisons and the checkers name a token by it many times
/// over its life, and each digest is a pass over every byte.
struct Held {
    secret: SecretString,
    fingerprint: Fingerprint,
}

impl Held {
    fn new(secret: SecretString) -> Self {
        let fingerprint = Fingerprint::of(secret.expose_secret());
        Self { secret, fingerprint }
    }
}

secret_token!(
    /// A short-lived access token, attached to resource requests.
    AccessToken
);
secret_token!(
    /// A long-lived refresh token, sent only to the token endpoint and the store.
    RefreshToken
);
secret_token!(
    /// An authorization code (RFC 6749 §4.1.2): exchanged once for tokens,
    /// so a secret while it lives.
    AuthorizationCode
);
secret_token!(
    /// The device code of a device login (RFC 8628): whoever holds it can
    /// collect the tokens once the user approves, so it is a secret too.
    DeviceCode
);

/// A 64-bit FNV-1a digest of a token. Checkers compare tokens by it without
/// holding them; traces print only its low 32 bits (`#1a2b3c4d`), which name a
/// long random token without helping anyone guess it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Fingerprint(u64);

impl Fingerprint {
    /// The fingerprint of `value`.
    pub fn of(value: &str) -> Self {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in value.bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        Self(hash)
    }

    /// Its 64 bits, as a stored blob keeps them.
    pub(crate) fn bits(self) -> u64 {
        self.0
    }

    pub(crate) fn from_bits(bits: u64) -> Self {
        Self(bits)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{:08x}", self.0 as u32)
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// How the access token is presented (RFC 6749 §7.1), compared case-insensitively.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TokenType {
    /// RFC 6750 bearer token: `Authorization: Bearer <token>`.
    Bearer,
    /// RFC 9449 DPoP-bound token; needs a proof freshen does not produce.
    DPoP,
    /// Any other type, lower-cased.
    Other(String),
}

impl TokenType {
    /// Parses a `token_type` value, ignoring case and surrounding white space.
    pub fn parse(value: &str) -> Self {
        let value = value.trim();
        if value.eq_ignore_ascii_case("bearer") {
            Self::Bearer
        } else if value.eq_ignore_ascii_case("dpop") {
            Self::DPoP
        } else {
            Self::Other(value.to_ascii_lowercase())
        }
    }

    /// The canonical spelling, as stored.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Bearer => "Bearer",
            Self::DPoP => "DPoP",
            Self::Other(other) => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_a_fingerprint_not_the_token() {
        let token = RefreshToken::new("canary-refresh-7f3a");
        let shown = format!("{token:?}");
        assert!(!shown.contains("canary"), "{shown}");
        assert!(shown.starts_with("RefreshToken(#"), "{shown}");
        assert_eq!(token.fingerprint(), Fingerprint::of("canary-refresh-7f3a"));
    }

    #[test]
    fn token_type_ignores_case() {
        assert_eq!(TokenType::parse("BEARER"), TokenType::Bearer);
        assert_eq!(TokenType::parse(" bearer "), TokenType::Bearer);
        assert_eq!(TokenType::parse("DPoP"), TokenType::DPoP);
        assert_eq!(TokenType::parse("MAC"), TokenType::Other("mac".into()));
    }

    #[test]
    fn a_cloned_token_shares_its_bytes() {
        let token = AccessToken::new("canary-access-token");
        let clone = token.clone();
        assert_eq!(token.expose_secret().as_ptr(), clone.expose_secret().as_ptr(), "the clone copied the token");
        assert!(clone.same_as(&token));
    }
}
