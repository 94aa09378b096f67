//! The session as it is kept in a store: one versioned blob, so an update is
//! one atomic write and never "access token written, refresh token not".
//!
//! The blob is JSON. Decoding reads untrusted bytes: it is bounded, never
//! panics, and its errors name the field at fault without echoing its content
//! (a token in a field of the wrong type must not reach a log).

use core::fmt;
use core::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::SecretString;
use secrecy::zeroize::Zeroizing;
use thiserror::Error;

use crate::dpop::{DpopKey, KEY_BYTES};
use crate::ids::Generation;
use crate::oauth::MAX_TOKEN_BYTES;
use crate::scrub::{JsonFields, MemberValue, Scalar, write_object};
use crate::time::{BootId, BootTime, UnixTime};
use crate::token::{AccessToken, Fingerprint, RefreshToken, TokenType};

/// The schema version this build writes. It reads this one and every earlier one.
pub const SCHEMA_VERSION: u64 = 3;

/// The largest blob [`StoredSession::decode`] accepts.
pub const MAX_BLOB_BYTES: usize = 64 * 1024;

/// Everything needed to resume a session after a restart. A session may hold
/// a token pair, a refresh token alone (its first caller refreshes), or an
/// access token alone (served until it is no longer usable; then the user
/// must log in again).
///
/// An app that already holds tokens starts a session from them:
///
/// ```
/// use std::time::Duration;
/// use freshen_core::stored::StoredSession;
/// use freshen_core::time::UnixTime;
/// use freshen_core::token::{AccessToken, RefreshToken};
///
/// let issued_at = UnixTime::from_secs(1_800_000_000);
/// let stored = StoredSession::pair(AccessToken::new("a1"), RefreshToken::new("r1"))
///     .with_access_expiry(issued_at, Duration::from_secs(3600));
/// assert_eq!(stored.access_expires_at, Some(UnixTime::from_secs(1_800_003_600)));
/// let refresh_only = StoredSession::refresh_only(RefreshToken::new("r1"));
/// assert!(refresh_only.access_token.is_none());
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct StoredSession {
    /// The token set's generation.
    pub generation: Generation,
    /// The access token; `None` when only a refresh token is held.
    pub access_token: Option<AccessToken>,
    /// How to present it.
    pub token_type: TokenType,
    /// When the access token expires, on the wall clock; `None` when unknown.
    pub access_expires_at: Option<UnixTime>,
    /// When it expires on the boot clock of the machine that wrote it. A
    /// reader on the same boot goes by this instead of the wall clock, which
    /// may have been set back since the write (the token would look fresher
    /// than it is). `None` when unknown, or written where the platform has
    /// no boot clock.
    pub access_expires_boot: Option<BootTime>,
    /// The lifetime the access token was issued with (`expires_in`). It is
    /// what decides how early a token is refreshed: a restored token is
    /// judged by it, not by what is left of it. `None` when unknown (blobs
    /// of schema 1): the configured refresh margin then applies whole.
    pub access_lifetime: Option<Duration>,
    /// The refresh token; `None` when the server issued none.
    pub refresh_token: Option<RefreshToken>,
    /// The granted scope, when known.
    pub scope: Option<String>,
    /// The DPoP key the tokens are bound to (schema 3); `None` for
    /// bearer sessions. Kept in the same blob as the tokens, so that one
    /// write makes both durable and no bound token is ever stored without it.
    pub dpop_key: Option<DpopKey>,
    /// The login these tokens descend from (a digest of its first refresh
    /// token), kept through every refresh. After a write whose outcome was
    /// unknown, it tells a session whether the store holds a later rotation
    /// of its own login (adopted) or another grant (which its login
    /// replaces); generations alone cannot tell. `None` when unknown.
    pub(crate) lineage: Option<Fingerprint>,
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
    #[error("stored session has schema version {0}, this build reads up to {SCHEMA_VERSION}")]
    UnsupportedVersion(u64),
    /// A required field is absent.
    #[error("stored session lacks the field `{0}`")]
    MissingField(&'static str),
    /// A field has the wrong type or an impossible value.
    #[error("stored session has an invalid `{0}`")]
    InvalidField(&'static str),
}

impl StoredSession {
    pub(crate) fn with_tokens(access_token: Option<AccessToken>, refresh_token: Option<RefreshToken>) -> Self {
        Self {
            generation: Generation(1),
            access_token,
            token_type: TokenType::Bearer,
            access_expires_at: None,
            access_expires_boot: None,
            access_lifetime: None,
            refresh_token,
            scope: None,
            dpop_key: None,
            lineage: None,
        }
    }

    /// An access token and the refresh token that renews it (generation 1,
    /// bearer, lifetime unknown until [`StoredSession::with_access_expiry`]).
    pub fn pair(access_token: AccessToken, refresh_token: RefreshToken) -> Self {
        Self::with_tokens(Some(access_token), Some(refresh_token))
    }

    /// A refresh token alone: the session's first caller refreshes.
    pub fn refresh_only(refresh_token: RefreshToken) -> Self {
        Self::with_tokens(None, Some(refresh_token))
    }

    /// An access token alone (the server issued no refresh token): served
    /// until it is no longer usable, then callers get `MissingRefreshToken`.
    pub fn access_only(access_token: AccessToken) -> Self {
        Self::with_tokens(Some(access_token), None)
    }

    /// The access token was issued at `issued_at` (wall clock) for `lifetime`.
    #[must_use]
    pub fn with_access_expiry(mut self, issued_at: UnixTime, lifetime: Duration) -> Self {
        self.access_expires_at = Some(issued_at.saturating_add(lifetime));
        self.access_lifetime = Some(lifetime);
        self
    }

    /// The token type, when not bearer.
    #[must_use]
    pub fn with_token_type(mut self, token_type: TokenType) -> Self {
        self.token_type = token_type;
        self
    }

    /// The granted scope.
    #[must_use]
    pub fn with_scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = Some(scope.into());
        self
    }

    /// Bound to `key` by DPoP: the token type becomes `DPoP`.
    #[must_use]
    pub fn with_dpop_key(mut self, key: DpopKey) -> Self {
        self.dpop_key = Some(key);
        self.token_type = TokenType::DPoP;
        self
    }

    /// Encodes the blob (schema [`SCHEMA_VERSION`]). It holds tokens, so it
    /// comes back as a secret.
    pub fn encode(&self) -> SecretString {
        // Base64url of the secret scalar, in a buffer wiped when it drops.
        let mut key = Zeroizing::new(String::with_capacity(KEY_TEXT_BYTES));
        if let Some(dpop_key) = &self.dpop_key {
            URL_SAFE_NO_PAD.encode_string(dpop_key.expose_secret_bytes().as_slice(), &mut key);
        }
        fn text(value: Option<&str>) -> Option<MemberValue<'_>> {
            value.map(MemberValue::Text)
        }
        let number = |value: Option<u64>| value.map(MemberValue::Number);
        let expires_boot = self.access_expires_boot;
        // Written straight into a buffer sized up front and wiped when it
        // drops: no copy of a token is left behind (see `scrub`). The keys
        // are in alphabetical order, as blobs have always been written.
        write_object(&[
            ("access_expires_at_ms", number(self.access_expires_at.map(|at| millis(at.since_epoch())))),
            ("access_expires_boot_ms", number(expires_boot.map(|at| millis(at.since_boot())))),
            ("access_lifetime_ms", number(self.access_lifetime.map(millis))),
            ("access_token", text(self.access_token.as_ref().map(AccessToken::expose_secret))),
            ("boot_id", number(expires_boot.map(|at| at.boot().bits()))),
            ("dpop_key", text(self.dpop_key.as_ref().map(|_| key.as_str()))),
            ("generation", number(Some(self.generation.0))),
            ("lineage", number(self.lineage.map(Fingerprint::bits))),
            ("refresh_token", text(self.refresh_token.as_ref().map(RefreshToken::expose_secret))),
            ("scope", text(self.scope.as_deref())),
            ("token_type", text(Some(self.token_type.as_str()))),
            ("v", number(Some(SCHEMA_VERSION))),
        ])
    }

    /// Decodes a blob written by [`StoredSession::encode`] of this or an
    /// earlier schema (schema 1 always held both tokens and no lifetime).
    /// Unknown fields are ignored so that a minor addition does not need a
    /// new version.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_BLOB_BYTES {
            return Err(DecodeError::TooLarge(bytes.len()));
        }
        let object = JsonFields::read(bytes, &FIELDS).ok_or(DecodeError::NotAnObject)?;
        let version = required(&object, "v")?.as_u64().ok_or(DecodeError::InvalidField("v"))?;
        if !(1..=SCHEMA_VERSION).contains(&version) {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        let generation = required(&object, "generation")?.as_u64().ok_or(DecodeError::InvalidField("generation"))?;
        let token_type = match optional(&object, "token_type") {
            None => TokenType::Bearer,
            Some(value) => TokenType::parse(value.as_str().ok_or(DecodeError::InvalidField("token_type"))?),
        };
        let duration = |field: &'static str| -> Result<Option<Duration>, DecodeError> {
            optional(&object, field)
                .map(|value| value.as_u64().map(Duration::from_millis).ok_or(DecodeError::InvalidField(field)))
                .transpose()
        };
        let access_expires_at = duration("access_expires_at_ms")?.map(UnixTime::from_since_epoch);
        let access_lifetime = duration("access_lifetime_ms")?.filter(|_| version >= 2);
        // Advisory, like the lineage: one that cannot be read leaves the wall clock to go by.
        let access_expires_boot = match (
            optional(&object, "boot_id").and_then(Scalar::as_u64),
            optional(&object, "access_expires_boot_ms").and_then(Scalar::as_u64),
        ) {
            (Some(boot), Some(ms)) => Some(BootTime::new(BootId::from_bits(boot), Duration::from_millis(ms))),
            _ => None,
        };
        let scope = match optional(&object, "scope") {
            None => None,
            Some(value) => Some(value.as_str().ok_or(DecodeError::InvalidField("scope"))?.to_owned()),
        };
        // Schema 1 always held both tokens; schema 2 holds at least one.
        let (access_token, refresh_token) = if version == 1 {
            (Some(token(&object, "access_token")?), Some(token(&object, "refresh_token")?))
        } else {
            let access = optional(&object, "access_token").map(|_| token(&object, "access_token")).transpose()?;
            let refresh = optional(&object, "refresh_token").map(|_| token(&object, "refresh_token")).transpose()?;
            if access.is_none() && refresh.is_none() {
                return Err(DecodeError::MissingField("refresh_token"));
            }
            (access, refresh)
        };
        let dpop_key = match optional(&object, "dpop_key").filter(|_| version >= 3) {
            None => None,
            Some(value) => Some(dpop_key(value).ok_or(DecodeError::InvalidField("dpop_key"))?),
        };
        // Advisory (an optional field of schema 3, ignored by builds before
        // it): one that cannot be read is unknown, never a lost session.
        let lineage = optional(&object, "lineage").and_then(Scalar::as_u64).map(Fingerprint::from_bits);
        // A bound token without its key must never be sent unbound; a key
        // beside bearer tokens binds nothing: either is a broken blob.
        match (token_type == TokenType::DPoP, dpop_key.is_some()) {
            (true, false) => return Err(DecodeError::MissingField("dpop_key")),
            (false, true) => return Err(DecodeError::InvalidField("token_type")),
            _ => {}
        }
        Ok(Self {
            generation: Generation(generation),
            access_token: access_token.map(AccessToken::new),
            token_type,
            access_expires_at,
            access_expires_boot,
            access_lifetime,
            refresh_token: refresh_token.map(RefreshToken::new),
            scope,
            dpop_key,
            lineage,
        })
    }
}

/// The length of a key's base64url text.
const KEY_TEXT_BYTES: usize = (KEY_BYTES * 4).div_ceil(3);

fn dpop_key(value: &Scalar<'_>) -> Option<DpopKey> {
    let text = value.as_str().filter(|text| text.len() == KEY_TEXT_BYTES)?;
    let mut bytes = Zeroizing::new([0; KEY_BYTES]);
    let written = URL_SAFE_NO_PAD.decode_slice(text, &mut *bytes).ok()?;
    (written == KEY_BYTES).then(|| DpopKey::from_bytes(&*bytes).ok()).flatten()
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Every field a blob of any schema may hold: what decoding reads (the
/// rest is skipped unread).
const FIELDS: [&str; 12] = [
    "v",
    "generation",
    "token_type",
    "access_token",
    "access_expires_at_ms",
    "access_expires_boot_ms",
    "boot_id",
    "access_lifetime_ms",
    "refresh_token",
    "scope",
    "dpop_key",
    "lineage",
];

/// A blob's [`FIELDS`] as read.
type Fields<'a> = JsonFields<'a, { FIELDS.len() }>;

/// A field that may be absent; `null` counts as absent.
fn optional<'a>(object: &'a Fields<'_>, field: &str) -> Option<&'a Scalar<'a>> {
    object.get(field).filter(|value| !value.is_null())
}

fn required<'a>(object: &'a Fields<'_>, field: &'static str) -> Result<&'a Scalar<'a>, DecodeError> {
    object.get(field).ok_or(DecodeError::MissingField(field))
}

fn token<'a>(object: &'a Fields<'_>, field: &'static str) -> Result<&'a str, DecodeError> {
    let text = required(object, field)?.as_str().ok_or(DecodeError::InvalidField(field))?;
    if text.is_empty() || text.len() > MAX_TOKEN_BYTES {
        return Err(DecodeError::InvalidField(field));
    }
    Ok(text)
}

impl fmt::Display for StoredSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "stored {}", self.generation)?;
        if let Some(refresh) = &self.refresh_token {
            write!(f, " refresh {}", refresh.fingerprint())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    fn sample() -> StoredSession {
        StoredSession::pair(AccessToken::new("canary-access"), RefreshToken::new("canary-refresh"))
            .with_access_expiry(UnixTime::from_secs(1_800_000_000), Duration::from_secs(3600))
            .with_scope("read write")
    }

    /// The login a session descends from survives a write and a read; a
    /// lineage that cannot be read is unknown, not a lost session.
    #[test]
    fn lineage_round_trips_and_an_unreadable_one_is_unknown() {
        let mut stored = sample();
        stored.lineage = Some(RefreshToken::new("canary-login").fingerprint());
        let blob = stored.encode();
        let back = StoredSession::decode(blob.expose_secret().as_bytes()).unwrap();
        assert_eq!(back.lineage, stored.lineage);
        let unreadable = br#"{"v":3,"generation":1,"token_type":"Bearer","refresh_token":"r","lineage":"x"}"#;
        assert_eq!(StoredSession::decode(unreadable).unwrap().lineage, None);
        assert_eq!(StoredSession::decode(sample().encode().expose_secret().as_bytes()).unwrap().lineage, None);
    }

    /// The boot-clock expiry survives a write and a read; half of one, or
    /// one that cannot be read, is unknown, not a lost session.
    #[test]
    fn a_boot_clock_expiry_round_trips_and_an_unreadable_one_is_unknown() {
        let mut stored = sample();
        let at = BootTime::new(BootId::from_bits(u64::MAX - 7), Duration::from_millis(86_400_123));
        stored.access_expires_boot = Some(at);
        let back = StoredSession::decode(stored.encode().expose_secret().as_bytes()).unwrap();
        assert_eq!(back.access_expires_boot, Some(at));
        for unreadable in [
            &br#"{"v":3,"generation":1,"refresh_token":"r","boot_id":7}"#[..],
            br#"{"v":3,"generation":1,"refresh_token":"r","boot_id":"x","access_expires_boot_ms":5}"#,
            br#"{"v":3,"generation":1,"refresh_token":"r","boot_id":7,"access_expires_boot_ms":-5}"#,
        ] {
            assert_eq!(StoredSession::decode(unreadable).unwrap().access_expires_boot, None);
        }
    }

    /// The bytes a blob with every field is written as: the same as before
    /// blobs were written field by field (keys in alphabetical order, as
    /// serde_json's map wrote them), so what stores hold does not change.
    #[test]
    fn a_blob_is_written_as_it_always_was() {
        let mut stored = sample().with_dpop_key(DpopKey::from_bytes(&[7; 32]).unwrap());
        stored.access_token = Some(AccessToken::new("canary-\"access\u{1}"));
        stored.lineage = Some(RefreshToken::new("canary-login").fingerprint());
        let at = BootTime::new(BootId::from_bits(u64::MAX - 7), Duration::from_millis(86_400_123));
        stored.access_expires_boot = Some(at);
        stored.generation = Generation(u64::MAX);
        let written = concat!(
            r#"{"access_expires_at_ms":1800003600000,"access_expires_boot_ms":86400123,"access_lifetime_ms":3600000,"#,
            r#""access_token":"canary-\"access\u0001","boot_id":18446744073709551608,"#,
            r#""dpop_key":"BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc","generation":18446744073709551615,"#,
            r#""lineage":9793107416702638113,"refresh_token":"canary-refresh","scope":"read write","#,
            r#""token_type":"DPoP","v":3}"#,
        );
        assert_eq!(stored.encode().expose_secret(), written);
        let bare = StoredSession::refresh_only(RefreshToken::new("r"));
        assert_eq!(
            bare.encode().expose_secret(),
            r#"{"generation":1,"refresh_token":"r","token_type":"Bearer","v":3}"#
        );
    }

    #[test]
    fn round_trips() {
        let blob = sample().encode();
        let back = StoredSession::decode(blob.expose_secret().as_bytes()).unwrap();
        assert_eq!(back.generation, Generation(1));
        assert!(back.access_token.unwrap().same_as(&AccessToken::new("canary-access")));
        assert!(back.refresh_token.unwrap().same_as(&RefreshToken::new("canary-refresh")));
        assert_eq!(back.access_expires_at, Some(UnixTime::from_secs(1_800_003_600)));
        assert_eq!(back.access_lifetime, Some(Duration::from_secs(3600)));
        assert_eq!(back.scope.as_deref(), Some("read write"));
        assert_eq!(back.token_type, TokenType::Bearer);
    }

    #[test]
    fn a_single_token_round_trips() {
        for stored in
            [StoredSession::refresh_only(RefreshToken::new("r")), StoredSession::access_only(AccessToken::new("a"))]
        {
            let back = StoredSession::decode(stored.encode().expose_secret().as_bytes()).unwrap();
            assert_eq!(back.access_token.is_some(), stored.access_token.is_some());
            assert_eq!(back.refresh_token.is_some(), stored.refresh_token.is_some());
        }
    }

    #[test]
    fn a_schema_1_blob_migrates() {
        // Exactly what freshen 0.1 wrote.
        let v1 = br#"{"v":1,"generation":7,"token_type":"Bearer","access_token":"a","access_expires_at_ms":1800000000000,"refresh_token":"r","scope":"s"}"#;
        let stored = StoredSession::decode(v1).unwrap();
        assert_eq!(stored.generation, Generation(7));
        assert_eq!(stored.access_expires_at, Some(UnixTime::from_secs(1_800_000_000)));
        assert_eq!(stored.access_lifetime, None, "schema 1 did not know the issued lifetime");
        // Written back, it is the current schema, and reads the same.
        let v2 = stored.encode();
        assert!(v2.expose_secret().contains(r#""v":3"#));
        let again = StoredSession::decode(v2.expose_secret().as_bytes()).unwrap();
        assert_eq!(again.generation, Generation(7));
        assert_eq!(again.access_expires_at, stored.access_expires_at);
        assert!(again.refresh_token.unwrap().same_as(&RefreshToken::new("r")));
        // Schema 1 always held both tokens: one missing is a broken blob.
        assert_eq!(
            StoredSession::decode(br#"{"v":1,"generation":1,"refresh_token":"r"}"#).unwrap_err(),
            DecodeError::MissingField("access_token")
        );
    }

    #[test]
    fn a_schema_2_blob_migrates_unbound() {
        // Exactly what freshen wrote before DPoP.
        let v2 = br#"{"v":2,"generation":3,"token_type":"Bearer","access_token":"a","access_lifetime_ms":60000,"refresh_token":"r"}"#;
        let stored = StoredSession::decode(v2).unwrap();
        assert!(stored.dpop_key.is_none());
        assert_eq!(stored.access_lifetime, Some(Duration::from_secs(60)));
        let again = StoredSession::decode(stored.encode().expose_secret().as_bytes()).unwrap();
        assert_eq!(again.generation, Generation(3));
        assert!(again.dpop_key.is_none() && again.token_type == TokenType::Bearer);
    }

    #[test]
    fn a_bound_session_keeps_its_key_in_the_same_blob() {
        let key = DpopKey::from_bytes(&[7; KEY_BYTES]).unwrap();
        let bound = sample().with_dpop_key(key.clone());
        let blob = bound.encode();
        let back = StoredSession::decode(blob.expose_secret().as_bytes()).unwrap();
        assert_eq!(back.token_type, TokenType::DPoP);
        assert_eq!(back.dpop_key.as_ref().map(DpopKey::thumbprint), Some(key.thumbprint()));
        assert!(back.refresh_token.unwrap().same_as(&RefreshToken::new("canary-refresh")));
        // Neither Debug nor Display shows the key's secret.
        let secret = URL_SAFE_NO_PAD.encode(*key.expose_secret_bytes());
        assert!(blob.expose_secret().contains(&secret));
        let shown = format!("{bound:?} {bound}");
        assert!(!shown.contains(&secret) && !shown.contains("canary"), "{shown}");
    }

    #[test]
    fn a_bound_token_without_its_key_is_never_read_as_unbound() {
        let key = URL_SAFE_NO_PAD.encode([7; KEY_BYTES]);
        let cases: Vec<(String, DecodeError)> = vec![
            // The key lost: the tokens would be sent unbound.
            (
                r#"{"v":3,"generation":1,"token_type":"DPoP","refresh_token":"r"}"#.into(),
                DecodeError::MissingField("dpop_key"),
            ),
            // Schema 2 knew no keys.
            (
                format!(r#"{{"v":2,"generation":1,"token_type":"DPoP","refresh_token":"r","dpop_key":"{key}"}}"#),
                DecodeError::MissingField("dpop_key"),
            ),
            // A key beside bearer tokens binds nothing.
            (
                format!(r#"{{"v":3,"generation":1,"token_type":"Bearer","refresh_token":"r","dpop_key":"{key}"}}"#),
                DecodeError::InvalidField("token_type"),
            ),
            // Not a key: too short, not base64url, zero, not a string.
            (
                r#"{"v":3,"generation":1,"token_type":"DPoP","refresh_token":"r","dpop_key":"AAAA"}"#.into(),
                DecodeError::InvalidField("dpop_key"),
            ),
            (
                format!(
                    r#"{{"v":3,"generation":1,"token_type":"DPoP","refresh_token":"r","dpop_key":"{}"}}"#,
                    "*".repeat(43)
                ),
                DecodeError::InvalidField("dpop_key"),
            ),
            (
                format!(
                    r#"{{"v":3,"generation":1,"token_type":"DPoP","refresh_token":"r","dpop_key":"{}"}}"#,
                    URL_SAFE_NO_PAD.encode([0; KEY_BYTES])
                ),
                DecodeError::InvalidField("dpop_key"),
            ),
            (
                r#"{"v":3,"generation":1,"token_type":"DPoP","refresh_token":"r","dpop_key":7}"#.into(),
                DecodeError::InvalidField("dpop_key"),
            ),
        ];
        for (blob, expected) in cases {
            assert_eq!(StoredSession::decode(blob.as_bytes()).unwrap_err(), expected, "{blob}");
        }
    }

    #[test]
    fn hostile_blobs_give_typed_errors() {
        let cases: &[(&[u8], DecodeError)] = &[
            (b"", DecodeError::NotAnObject),
            (br#"{"v":1,"generation":7,"access_tok"#, DecodeError::NotAnObject),
            (b"[]", DecodeError::NotAnObject),
            (&[0xff, 0x00], DecodeError::NotAnObject),
            (br#"{"generation":1}"#, DecodeError::MissingField("v")),
            (br#"{"v":4,"future":true}"#, DecodeError::UnsupportedVersion(4)),
            (br#"{"v":0}"#, DecodeError::UnsupportedVersion(0)),
            (br#"{"v":"1"}"#, DecodeError::InvalidField("v")),
            (br#"{"v":1,"generation":-1}"#, DecodeError::InvalidField("generation")),
            (br#"{"v":1,"generation":1,"access_token":"a"}"#, DecodeError::MissingField("refresh_token")),
            (br#"{"v":2,"generation":1}"#, DecodeError::MissingField("refresh_token")),
            (
                br#"{"v":1,"generation":1,"access_token":"a","refresh_token":""}"#,
                DecodeError::InvalidField("refresh_token"),
            ),
            (br#"{"v":2,"generation":1,"access_token":7}"#, DecodeError::InvalidField("access_token")),
            (
                br#"{"v":1,"generation":1,"access_token":"a","refresh_token":"r","access_expires_at_ms":"soon"}"#,
                DecodeError::InvalidField("access_expires_at_ms"),
            ),
            (
                br#"{"v":2,"generation":1,"refresh_token":"r","access_lifetime_ms":-5}"#,
                DecodeError::InvalidField("access_lifetime_ms"),
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
