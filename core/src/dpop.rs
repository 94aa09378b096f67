//! DPoP (RFC 9449): tokens bound to a key that never leaves the device.
//!
//! A DPoP-bound session holds an ES256 key pair next to its tokens, in the
//! same stored blob. Every request that presents a bound token carries a
//! proof: a JWT signed by that key that names the request's method and URL,
//! when it was made, an id used once, the server's latest nonce and, to a
//! resource server, a hash of the access token. A refresh token stolen
//! without the key is useless.
//!
//! Building a proof is pure: the caller passes the time and the unique id,
//! and signatures are deterministic (RFC 6979), so a simulation replays the
//! same bytes. An adapter may sign the same [`DpopKey::signing_input`]
//! itself, faster, with nonces from the OS (`freshen` does, with AWS-LC).
//!
//! ```
//! use freshen_core::dpop::{DpopKey, ProofClaims};
//! use freshen_core::time::UnixTime;
//!
//! // An app draws the 32 bytes from the OS; any valid scalar will do here.
//! let key = DpopKey::from_bytes(&[7; 32])?;
//! let claims = ProofClaims::new("POST", "https://auth.example/token", UnixTime::from_secs(1_800_000_000), [1; 16]);
//! let proof = key.proof(&claims);
//! assert_eq!(proof.expose().split('.').count(), 3);
//! assert_eq!(key.thumbprint().len(), 43);
//! # Ok::<(), freshen_core::dpop::InvalidKey>(())
//! ```

use core::any::Any;
use core::fmt;
use std::sync::{Arc, OnceLock};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::SecretKey;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use secrecy::zeroize::{Zeroize as _, Zeroizing};
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};
use thiserror::Error;

use crate::time::UnixTime;
use crate::token::AccessToken;

/// The length of a key's secret scalar.
pub const KEY_BYTES: usize = 32;

/// The length of an ES256 signature (r and s, 32 bytes each).
pub const SIGNATURE_BYTES: usize = 64;

/// How many `use_dpop_nonce` challenges in a row one request is sent again
/// for. A server asks once when its nonce changed; one that keeps asking is
/// refusing, and the retries must stay bounded.
pub const MAX_NONCE_RETRIES: u32 = 2;

/// The longest server nonce accepted; longer ones are ignored.
pub const MAX_NONCE_BYTES: usize = 512;

/// The bytes given are not a P-256 secret scalar (wrong length, zero, or not
/// below the group order: draw again).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[error("not a P-256 secret key")]
pub struct InvalidKey;

/// A session's DPoP key pair (P-256, signing ES256). Its secret half is
/// wiped when it drops and never shown by `Debug`. Clones share one key (a
/// reference count): every grant of a bound session carries it.
#[derive(Clone)]
pub struct DpopKey(Arc<KeyPair>);

struct KeyPair {
    /// The secret scalar alone: checked, but with no public key worked out.
    secret: SecretKey,
    /// The signing key, which holds the public key too: made when first
    /// needed, since that is a scalar multiplication, and a key decoded from
    /// every read of a store is mostly compared and dropped.
    signing: OnceLock<SigningKey>,
    /// The public key as a JWK with only its required members, in the order
    /// RFC 7638 hashes them: the proof header's `jwk` and the thumbprint's input.
    public_jwk: OnceLock<String>,
    /// The JWK thumbprint, hashed once: a key names itself often (traces,
    /// bindings), and each hash would cost more than the rest of a lookup.
    thumbprint: OnceLock<String>,
    /// A signer for this key that an adapter made ([`DpopKey::adapter_signer`]),
    /// kept with the key so that it is made once.
    adapter_signer: OnceLock<Box<dyn Any + Send + Sync>>,
}

impl KeyPair {
    fn signing(&self) -> &SigningKey {
        self.signing.get_or_init(|| SigningKey::from(&self.secret))
    }

    fn public_jwk(&self) -> &str {
        self.public_jwk.get_or_init(|| {
            let point = self.signing().verifying_key().to_encoded_point(false);
            // A valid secret scalar is never zero, so its point is never the
            // identity, which alone has no coordinates.
            let (x, y) = (point.x().map(|x| x.as_slice()), point.y().map(|y| y.as_slice()));
            format!(
                r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
                URL_SAFE_NO_PAD.encode(x.unwrap_or_default()),
                URL_SAFE_NO_PAD.encode(y.unwrap_or_default())
            )
        })
    }
}

impl DpopKey {
    /// The key whose secret scalar is `bytes` (big-endian). An app makes a
    /// key from [`KEY_BYTES`] bytes of OS randomness (the adapters do this);
    /// the rare draw that is not a valid scalar is an [`InvalidKey`].
    ///
    /// # Errors
    /// `bytes` are not a P-256 secret scalar.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, InvalidKey> {
        // `from_slice` would also take a shorter scalar, padded: the store
        // and the adapters always hold exactly 32 bytes.
        if bytes.len() != KEY_BYTES {
            return Err(InvalidKey);
        }
        // `from_slice` refuses zero and anything not below the group's order:
        // every scalar it takes has a public key.
        let secret = SecretKey::from_slice(bytes).map_err(|_| InvalidKey)?;
        Ok(Self(Arc::new(KeyPair {
            secret,
            signing: OnceLock::new(),
            public_jwk: OnceLock::new(),
            thumbprint: OnceLock::new(),
            adapter_signer: OnceLock::new(),
        })))
    }

    /// The secret scalar, for the store only.
    pub fn expose_secret_bytes(&self) -> Zeroizing<[u8; KEY_BYTES]> {
        let mut field = self.0.secret.to_bytes();
        let mut bytes = Zeroizing::new([0; KEY_BYTES]);
        bytes.copy_from_slice(&field);
        field.as_mut_slice().zeroize();
        bytes
    }

    /// Whether `other` holds the same secret scalar (compared in constant
    /// time): a key read back from the store is mostly the one held.
    pub fn is_same_key(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0.secret == other.0.secret
    }

    /// The public key as a JWK (`{"crv":"P-256","kty":"EC","x":…,"y":…}`).
    pub fn public_jwk(&self) -> &str {
        self.0.public_jwk()
    }

    /// The JWK SHA-256 thumbprint (RFC 7638), base64url: what a server binds
    /// tokens to (`cnf.jkt`), and a name for the key in traces.
    pub fn thumbprint(&self) -> String {
        let pair = &self.0;
        pair.thumbprint.get_or_init(|| URL_SAFE_NO_PAD.encode(Sha256::digest(pair.public_jwk().as_bytes()))).clone()
    }

    /// A proof for one request, signed here: deterministic (RFC 6979), so
    /// a simulation replays the same bytes.
    pub fn proof(&self, claims: &ProofClaims<'_>) -> DpopProof {
        let signing_input = self.signing_input(claims);
        let signature: Signature = self.0.signing().sign(signing_input.as_bytes());
        Self::signed(signing_input, &signature.to_bytes().into())
    }

    /// What a proof's signature covers (its header and claims, base64url,
    /// joined by a dot), for a signer outside the core: the adapters sign
    /// with AWS-LC, which is many times faster than the pure-Rust signer
    /// here but draws its nonces from the OS.
    pub fn signing_input(&self, claims: &ProofClaims<'_>) -> String {
        let header = format!(r#"{{"typ":"dpop+jwt","alg":"ES256","jwk":{}}}"#, self.0.public_jwk());
        let mut body = Map::new();
        body.insert("jti".into(), URL_SAFE_NO_PAD.encode(claims.jti).into());
        body.insert("htm".into(), claims.method.into());
        body.insert("htu".into(), htu(claims.url).into());
        body.insert("iat".into(), claims.issued_at.since_epoch().as_secs().into());
        if let Some(nonce) = claims.nonce {
            body.insert("nonce".into(), nonce.as_str().into());
        }
        if let Some(token) = claims.access_token {
            body.insert("ath".into(), access_token_hash(token).into());
        }
        let body = Value::Object(body).to_string();
        format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(body))
    }

    /// The proof whose [`signing_input`](Self::signing_input) carries
    /// `signature`: ES256, the two 32-byte big-endian halves r and s.
    pub fn signed(mut signing_input: String, signature: &[u8; SIGNATURE_BYTES]) -> DpopProof {
        signing_input.push('.');
        signing_input.push_str(&URL_SAFE_NO_PAD.encode(signature));
        DpopProof(signing_input)
    }

    /// The signer an adapter keeps for this key: made by `make` from the
    /// secret scalar on first use, then shared by every clone of the key.
    /// `None` if the signer kept is of another type.
    pub fn adapter_signer<T: Any + Send + Sync>(
        &self,
        make: impl FnOnce(&Zeroizing<[u8; KEY_BYTES]>) -> T,
    ) -> Option<&T> {
        self.0.adapter_signer.get_or_init(|| Box::new(make(&self.expose_secret_bytes()))).downcast_ref::<T>()
    }
}

impl fmt::Debug for DpopKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DpopKey(jkt {})", self.thumbprint())
    }
}

/// What a proof states about its request.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct ProofClaims<'a> {
    /// The HTTP method (`htm`).
    pub method: &'a str,
    /// The request's URL; its query and fragment are left out (`htu`).
    pub url: &'a str,
    /// When the proof is made (`iat`), on the wall clock.
    pub issued_at: UnixTime,
    /// Never used twice with one key (`jti`): 16 random bytes.
    pub jti: [u8; 16],
    /// The server's latest nonce, if it gave one.
    pub nonce: Option<&'a DpopNonce>,
    /// The access token the request presents (to a resource server): its
    /// hash goes in `ath`. `None` at the token endpoint.
    pub access_token: Option<&'a AccessToken>,
}

impl<'a> ProofClaims<'a> {
    /// A proof of a `method` request to `url`, made at `issued_at` with id `jti`.
    pub fn new(method: &'a str, url: &'a str, issued_at: UnixTime, jti: [u8; 16]) -> Self {
        Self { method, url, issued_at, jti, nonce: None, access_token: None }
    }

    /// With the server's nonce.
    #[must_use]
    pub fn with_nonce(mut self, nonce: Option<&'a DpopNonce>) -> Self {
        self.nonce = nonce;
        self
    }

    /// Presenting `token` to a resource server.
    #[must_use]
    pub fn with_access_token(mut self, token: &'a AccessToken) -> Self {
        self.access_token = Some(token);
        self
    }
}

/// A signed proof: the value of a request's `DPoP` header. It names no
/// token, but it is a credential while it is fresh, so `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct DpopProof(String);

impl DpopProof {
    /// The header value.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for DpopProof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DpopProof([REDACTED])")
    }
}

/// A nonce a server handed out in a `DPoP-Nonce` header, to put in the next
/// proofs it receives. Printable ASCII without `"` or `\` (RFC 9449 §8),
/// at most [`MAX_NONCE_BYTES`].
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct DpopNonce(String);

impl DpopNonce {
    /// Reads a `DPoP-Nonce` header value; `None` when it is not a valid nonce.
    pub fn parse(value: &[u8]) -> Option<Self> {
        let valid = |b: &u8| matches!(b, 0x21 | 0x23..=0x5b | 0x5d..=0x7e);
        let fits = !value.is_empty() && value.len() <= MAX_NONCE_BYTES;
        if !fits || !value.iter().all(valid) {
            return None;
        }
        core::str::from_utf8(value).ok().map(|text| Self(text.to_owned()))
    }

    /// The nonce.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for DpopNonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DpopNonce({} bytes)", self.0.len())
    }
}

/// The `htu` of a request to `url`: the URL without its query and fragment.
pub fn htu(url: &str) -> &str {
    url.split(['?', '#']).next().unwrap_or(url)
}

/// The `ath` of a proof that presents `token`: its SHA-256, base64url.
pub fn access_token_hash(token: &AccessToken) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(token.expose_secret().as_bytes()))
}

#[cfg(test)]
mod tests {
    use p256::ecdsa::VerifyingKey;
    use p256::ecdsa::signature::Verifier as _;

    use super::*;

    fn key() -> DpopKey {
        DpopKey::from_bytes(&[7; KEY_BYTES]).unwrap()
    }

    fn part(proof: &DpopProof, index: usize) -> Value {
        let text = proof.expose().split('.').nth(index).unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(text).unwrap()).unwrap()
    }

    #[test]
    fn a_proof_is_a_jwt_the_public_key_verifies() {
        let key = key();
        let nonce = DpopNonce::parse(b"n-1").unwrap();
        let token = AccessToken::new("canary-access");
        let claims =
            ProofClaims::new("GET", "https://api.example/v1/me?x=1#f", UnixTime::from_secs(1_800_000_000), [9; 16])
                .with_nonce(Some(&nonce))
                .with_access_token(&token);
        let proof = key.proof(&claims);
        let header = part(&proof, 0);
        assert_eq!(header["typ"], "dpop+jwt");
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["jwk"]["kty"], "EC");
        let body = part(&proof, 1);
        assert_eq!(body["htm"], "GET");
        assert_eq!(body["htu"], "https://api.example/v1/me");
        assert_eq!(body["iat"], 1_800_000_000);
        assert_eq!(body["nonce"], "n-1");
        assert_eq!(body["ath"], access_token_hash(&token));
        assert_eq!(body["jti"], URL_SAFE_NO_PAD.encode([9; 16]));
        // The signature verifies with the public key in the header.
        let (input, signature) = proof.expose().rsplit_once('.').unwrap();
        let x = URL_SAFE_NO_PAD.decode(header["jwk"]["x"].as_str().unwrap()).unwrap();
        let y = URL_SAFE_NO_PAD.decode(header["jwk"]["y"].as_str().unwrap()).unwrap();
        let point = p256::EncodedPoint::from_affine_coordinates(x.as_slice().into(), y.as_slice().into(), false);
        let verifying = VerifyingKey::from_encoded_point(&point).unwrap();
        let signature = Signature::from_slice(&URL_SAFE_NO_PAD.decode(signature).unwrap()).unwrap();
        verifying.verify(input.as_bytes(), &signature).unwrap();
        // Deterministic: the same claims sign to the same bytes.
        assert_eq!(key.proof(&claims), proof);
        assert!(!proof.expose().contains("canary") && !format!("{proof:?}").contains('.'));
    }

    #[test]
    fn the_thumbprint_is_rfc_7638s() {
        // RFC 7638's rule for EC keys: SHA-256 over {"crv","kty","x","y"} in
        // that order, no white space; checked against an independent hash.
        let key = key();
        assert!(key.public_jwk().starts_with(r#"{"crv":"P-256","kty":"EC","x":""#));
        let expected = URL_SAFE_NO_PAD.encode(Sha256::digest(key.public_jwk().as_bytes()));
        assert_eq!(key.thumbprint(), expected);
        assert_ne!(DpopKey::from_bytes(&[8; KEY_BYTES]).unwrap().thumbprint(), expected);
    }

    #[test]
    fn two_decodes_of_one_secret_are_the_same_key() {
        let key = key();
        let again = DpopKey::from_bytes(&*key.expose_secret_bytes()).unwrap();
        assert!(key.is_same_key(&again) && again.is_same_key(&key) && key.is_same_key(&key.clone()));
        assert!(!key.is_same_key(&DpopKey::from_bytes(&[8; KEY_BYTES]).unwrap()));
    }

    #[test]
    fn the_secret_round_trips_and_bad_scalars_are_refused() {
        let key = key();
        let again = DpopKey::from_bytes(&*key.expose_secret_bytes()).unwrap();
        assert_eq!(again.public_jwk(), key.public_jwk());
        assert_eq!(DpopKey::from_bytes(&[0; KEY_BYTES]).unwrap_err(), InvalidKey);
        assert_eq!(DpopKey::from_bytes(&[0xff; KEY_BYTES]).unwrap_err(), InvalidKey);
        assert_eq!(DpopKey::from_bytes(&[7; 31]).unwrap_err(), InvalidKey);
        let shown = format!("{key:?}");
        assert!(shown.starts_with("DpopKey(jkt "), "{shown}");
    }

    #[test]
    fn nonces_are_bounded_printable_text() {
        assert_eq!(DpopNonce::parse(b"eyJ7S_zG.-~").unwrap().as_str(), "eyJ7S_zG.-~");
        for bad in [&b""[..], b"a b", b"a\"b", b"a\\b", b"\xff", &[b'n'; MAX_NONCE_BYTES + 1]] {
            assert!(DpopNonce::parse(bad).is_none(), "{bad:?}");
        }
        assert!(DpopNonce::parse(&[b'n'; MAX_NONCE_BYTES]).is_some());
    }
}
