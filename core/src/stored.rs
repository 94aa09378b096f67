//! The session as it is kept in a store: one versioned blob, so an update is
//! one atomic write and never "access token written, refresh token not".
//!
//! The blob is JSON. Decoding reads untrusted bytes: it is bounded, never
//! panics, and its errors name the field at fault without echoing its content
//! (a token in a field of the wrong type must not reach a log).

use core::fmt;

use secrecy::SecretString;
use serde_json::{Map, Value};
use thiserror::Error;

use crate::ids::Generation;
use crate::oauth::MAX_TOKEN_BYTES;
use crate::time::UnixTime;
use crate::token::{AccessToken, RefreshToken, TokenType};

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: u64 = 1;

/// The largest blob [`StoredSession::decode`] accepts.
pub const MAX_BLOB_BYTES: usize = 64 * 1024;

/// Everything needed to resume a session after a restart.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct StoredSession {
    /// The token set's generation.
    pub generation: Generation,
    /// The access token.
    pub access_token: AccessToken,
    /// How to present it.
    pub token_type: TokenType,
    /// When the access token expires, on the wall clock; `None` when unknown.
    pub access_expires_at: Option<UnixTime>,
    /// The refresh token.
    pub refresh_token: RefreshToken,
    /// The granted scope, when known.
    pub scope: Option<String>,
}

/// Why a stored blob could not be read. Never contains the blob's bytes.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Larger than [`MAX_BLOB_BYTES`].
    #[error("stored session is {0} bytes, above the limit")]
    TooLarge(usize),
    /// Not a JSON object.
    #[error("stored session is not a JSON object")]
    NotAnObject,
    /// Written by a schema this build does not know (a newer version of the app).
    #[error("stored session has schema version {0}, this build reads {SCHEMA_VERSION}")]
    UnsupportedVersion(u64),
    /// A required field is absent.
    #[error("stored session lacks the field `{0}`")]
    MissingField(&'static str),
    /// A field has the wrong type or an impossible value.
    #[error("stored session has an invalid `{0}`")]
    InvalidField(&'static str),
}

impl StoredSession {
    /// Encodes the blob. It holds both tokens, so it comes back as a secret.
    pub fn encode(&self) -> SecretString {
        let mut object = Map::new();
        object.insert("v".into(), SCHEMA_VERSION.into());
        object.insert("generation".into(), self.generation.0.into());
        object.insert("token_type".into(), self.token_type.as_str().into());
        object.insert("access_token".into(), self.access_token.expose_secret().into());
        if let Some(at) = self.access_expires_at {
            object.insert(
                "access_expires_at_ms".into(),
                u64::try_from(at.since_epoch().as_millis()).unwrap_or(u64::MAX).into(),
            );
        }
        object.insert("refresh_token".into(), self.refresh_token.expose_secret().into());
        if let Some(scope) = &self.scope {
            object.insert("scope".into(), scope.as_str().into());
        }
        SecretString::from(Value::Object(object).to_string())
    }

    /// Decodes a blob written by [`StoredSession::encode`]. Unknown fields are
    /// ignored so that a minor addition does not need a new version.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_BLOB_BYTES {
            return Err(DecodeError::TooLarge(bytes.len()));
        }
        let object: Map<String, Value> = serde_json::from_slice(bytes).map_err(|_| DecodeError::NotAnObject)?;
        let version = required(&object, "v")?.as_u64().ok_or(DecodeError::InvalidField("v"))?;
        if version != SCHEMA_VERSION {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        let generation = required(&object, "generation")?.as_u64().ok_or(DecodeError::InvalidField("generation"))?;
        let token_type = match object.get("token_type") {
            None | Some(Value::Null) => TokenType::Bearer,
            Some(value) => TokenType::parse(value.as_str().ok_or(DecodeError::InvalidField("token_type"))?),
        };
        let access_expires_at = match object.get("access_expires_at_ms") {
            None | Some(Value::Null) => None,
            Some(value) => {
                let millis = value.as_u64().ok_or(DecodeError::InvalidField("access_expires_at_ms"))?;
                Some(UnixTime::from_since_epoch(core::time::Duration::from_millis(millis)))
            }
        };
        let scope = match object.get("scope") {
            None | Some(Value::Null) => None,
            Some(value) => Some(value.as_str().ok_or(DecodeError::InvalidField("scope"))?.to_owned()),
        };
        Ok(Self {
            generation: Generation(generation),
            access_token: AccessToken::new(token(&object, "access_token")?),
            token_type,
            access_expires_at,
            refresh_token: RefreshToken::new(token(&object, "refresh_token")?),
            scope,
        })
    }
}

fn required<'a>(object: &'a Map<String, Value>, field: &'static str) -> Result<&'a Value, DecodeError> {
    object.get(field).ok_or(DecodeError::MissingField(field))
}

fn token<'a>(object: &'a Map<String, Value>, field: &'static str) -> Result<&'a str, DecodeError> {
    let text = required(object, field)?.as_str().ok_or(DecodeError::InvalidField(field))?;
    if text.is_empty() || text.len() > MAX_TOKEN_BYTES {
        return Err(DecodeError::InvalidField(field));
    }
    Ok(text)
}

impl fmt::Display for StoredSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "stored {} refresh {}", self.generation, self.refresh_token.fingerprint())
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    fn sample() -> StoredSession {
        StoredSession {
            generation: Generation(7),
            access_token: AccessToken::new("canary-access"),
            token_type: TokenType::Bearer,
            access_expires_at: Some(UnixTime::from_secs(1_800_000_000)),
            refresh_token: RefreshToken::new("canary-refresh"),
            scope: Some("read write".into()),
        }
    }

    #[test]
    fn round_trips() {
        let blob = sample().encode();
        let back = StoredSession::decode(blob.expose_secret().as_bytes()).unwrap();
        assert_eq!(back.generation, Generation(7));
        assert!(back.access_token.same_as(&sample().access_token));
        assert!(back.refresh_token.same_as(&sample().refresh_token));
        assert_eq!(back.access_expires_at, Some(UnixTime::from_secs(1_800_000_000)));
        assert_eq!(back.scope.as_deref(), Some("read write"));
        assert_eq!(back.token_type, TokenType::Bearer);
    }

    #[test]
    fn hostile_blobs_give_typed_errors() {
        let cases: &[(&[u8], DecodeError)] = &[
            (b"", DecodeError::NotAnObject),
            (br#"{"v":1,"generation":7,"access_tok"#, DecodeError::NotAnObject),
            (b"[]", DecodeError::NotAnObject),
            (&[0xff, 0x00], DecodeError::NotAnObject),
            (br#"{"generation":1}"#, DecodeError::MissingField("v")),
            (br#"{"v":2,"future":true}"#, DecodeError::UnsupportedVersion(2)),
            (br#"{"v":"1"}"#, DecodeError::InvalidField("v")),
            (br#"{"v":1,"generation":-1}"#, DecodeError::InvalidField("generation")),
            (br#"{"v":1,"generation":1,"access_token":"a"}"#, DecodeError::MissingField("refresh_token")),
            (
                br#"{"v":1,"generation":1,"access_token":"a","refresh_token":""}"#,
                DecodeError::InvalidField("refresh_token"),
            ),
            (
                br#"{"v":1,"generation":1,"access_token":"a","refresh_token":"r","access_expires_at_ms":"soon"}"#,
                DecodeError::InvalidField("access_expires_at_ms"),
            ),
        ];
        for (bytes, expected) in cases {
            assert_eq!(StoredSession::decode(bytes).unwrap_err(), *expected, "{}", String::from_utf8_lossy(bytes));
        }
        let big = vec![b' '; MAX_BLOB_BYTES + 1];
        assert_eq!(StoredSession::decode(&big).unwrap_err(), DecodeError::TooLarge(MAX_BLOB_BYTES + 1));
    }

    #[test]
    fn errors_never_echo_token_bytes() {
        let blob = br#"{"v":1,"generation":1,"access_token":["canary-access"],"refresh_token":"canary-refresh"}"#;
        let error = StoredSession::decode(blob).unwrap_err();
        let shown = format!("{error} {error:?}");
        assert!(!shown.contains("canary"), "{shown}");
    }

    #[test]
    fn debug_and_display_hide_tokens() {
        let shown = format!("{:?} {}", sample(), sample());
        assert!(!shown.contains("canary"), "{shown}");
    }
}
