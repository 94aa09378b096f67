//! DPoP (RFC 9449) as the reference authority models it: a family bound to
//! a key at its login, proofs that must carry the server's current nonce
//! (when nonces are on), and proof ids that are never accepted twice.
//!
//! The model sees a proof as [`Proof`]: what is left once the HTTP layer
//! (or tier 1's network, which has no wire) checked its signature, method,
//! URL and age. [`verify`] is that HTTP layer's check.

use std::collections::{BTreeSet, VecDeque};

use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use freshen_core::dpop::{access_token_hash, htu};
use freshen_core::time::{MonoTime, UnixTime};
use freshen_core::token::AccessToken;
use p256::ecdsa::VerifyingKey;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use core::time::Duration;

use super::{AuditOp, AuditOutcome, Authority, FamilyId, Refusal};

/// A proof's id is remembered this long (oidc-provider's own window for `iat`).
pub const JTI_WINDOW: Duration = Duration::from_secs(300);

/// The most proof ids remembered; the oldest go first.
const MAX_JTI: usize = 4096;

/// A proof that passed the HTTP layer's checks, as the rules see it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Proof {
    /// The JWK thumbprint (RFC 7638) of the key that signed it.
    pub jkt: String,
    /// Its unique id.
    pub jti: String,
    /// The server nonce it carried.
    pub nonce: Option<String>,
}

/// Proof ids seen within [`JTI_WINDOW`], oldest first, bounded; the set
/// holds the same ids, for lookup (a scan of up to [`MAX_JTI`] ids per
/// proof was a tenth of a bound tier-2 world's time).
#[derive(Clone, Debug, Default)]
pub(crate) struct SeenJti {
    order: VecDeque<(MonoTime, String)>,
    ids: BTreeSet<String>,
}

impl SeenJti {
    /// Records `jti` at `now`; false when it was seen within the window.
    pub(crate) fn first_use(&mut self, now: MonoTime, jti: &str) -> bool {
        while self.order.front().is_some_and(|(at, _)| now.saturating_duration_since(*at) >= JTI_WINDOW) {
            self.forget_oldest();
        }
        if self.ids.contains(jti) {
            return false;
        }
        if self.order.len() == MAX_JTI {
            self.forget_oldest();
        }
        self.order.push_back((now, jti.to_owned()));
        self.ids.insert(jti.to_owned());
        true
    }

    fn forget_oldest(&mut self) {
        if let Some((_, jti)) = self.order.pop_front() {
            self.ids.remove(&jti);
        }
    }
}

impl Authority {
    /// The nonce proofs must carry now, when nonces are on: a new one every
    /// `dpop_nonce_lifetime`, named by the period and the authority's seed.
    pub fn dpop_nonce(&self, now: MonoTime) -> Option<String> {
        self.nonce_of_period(now, 0)
    }

    /// Whether `nonce` is the current or the previous one (a proof made just
    /// before a change still stands); `false` for none, or with nonces off.
    pub fn dpop_nonce_is_fresh(&self, now: MonoTime, nonce: Option<&str>) -> bool {
        let fresh = [self.nonce_of_period(now, 0), self.nonce_of_period(now, 1)];
        nonce.is_some_and(|nonce| fresh.iter().flatten().any(|fresh| fresh == nonce))
    }

    fn nonce_of_period(&self, now: MonoTime, back: u64) -> Option<String> {
        let lifetime = self.config.dpop_nonce_lifetime?.as_millis().max(1);
        let period = (now.elapsed().as_millis() / lifetime) as u64;
        Some(format!("n{}-{:x}", period.checked_sub(back)?, self.nonce_tag))
    }

    /// Checks a proof's nonce and id before any grant looks at its token:
    /// a refusal here touches nothing.
    ///
    /// # Errors
    /// [`Refusal::UseDpopNonce`]: not the current (or previous) nonce;
    /// [`Refusal::DpopProofReplayed`]: its id was seen lately.
    pub fn check_proof(&mut self, now: MonoTime, proof: &Proof) -> Result<(), Refusal> {
        if self.config.dpop_nonce_lifetime.is_some() && !self.dpop_nonce_is_fresh(now, proof.nonce.as_deref()) {
            return Err(Refusal::UseDpopNonce);
        }
        if !self.seen_jti.first_use(now, &proof.jti) {
            return Err(Refusal::DpopProofReplayed);
        }
        Ok(())
    }

    /// The thumbprint of the key `family` is bound to, if it is.
    pub fn family_jkt(&self, family: FamilyId) -> Option<&str> {
        self.families.get(&family).and_then(|f| f.jkt.as_deref())
    }

    /// Binds `family` (just logged in with a proof by `jkt`) to that key:
    /// its tokens are of type `DPoP` and its refreshes need the key.
    pub fn bind(&mut self, now: MonoTime, family: FamilyId, jkt: &str) {
        let op = AuditOp::Bind { family, jkt: jkt.to_owned() };
        self.audited(now, op, |this| {
            this.families.update(&family, |f| f.jkt = Some(jkt.to_owned()));
            (AuditOutcome::Bound, ())
        });
    }
}

/// Why a `DPoP` header was not a valid proof of its request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InvalidProof {
    /// Not a JWT of three base64url parts with JSON header and claims.
    Malformed,
    /// Not `typ: dpop+jwt`, `alg: ES256` with a P-256 `jwk`.
    Header,
    /// The signature does not verify with the header's key.
    Signature,
    /// `htm` or `htu` name another request.
    WrongRequest,
    /// `iat` is too far from now (without a nonce to vouch for it).
    Stale,
    /// `ath` is not the hash of the access token presented.
    WrongAccessToken,
    /// No `jti`.
    NoId,
}

/// The longest a proof's header value may be.
const MAX_PROOF_BYTES: usize = 8 * 1024;

/// Checks a `DPoP` header of a `method` request to `url` received at
/// `now` (RFC 9449 §4.3), presenting `access_token` if any: the signature
/// by the header's key, the method and URL, its age (unless a nonce vouches
/// for it), `ath`. Returns what the authority's rules need.
///
/// # Errors
/// Why it is not a valid proof of this request.
pub fn verify(
    header: &[u8],
    method: &str,
    url: &str,
    now: UnixTime,
    access_token: Option<&AccessToken>,
) -> Result<Proof, InvalidProof> {
    if header.len() > MAX_PROOF_BYTES {
        return Err(InvalidProof::Malformed);
    }
    let text = core::str::from_utf8(header).map_err(|_| InvalidProof::Malformed)?;
    let mut parts = text.split('.');
    let (Some(head), Some(body), Some(signature), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(InvalidProof::Malformed);
    };
    let json = |part: &str| -> Result<Value, InvalidProof> {
        let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| InvalidProof::Malformed)?;
        serde_json::from_slice(&bytes).map_err(|_| InvalidProof::Malformed)
    };
    let (head_json, claims) = (json(head)?, json(body)?);
    if field(&head_json, "typ") != "dpop+jwt" || field(&head_json, "alg") != "ES256" {
        return Err(InvalidProof::Header);
    }
    let jwk = field(&head_json, "jwk");
    let coordinate = |name: &str| -> Result<Vec<u8>, InvalidProof> {
        let text = field(jwk, name).as_str().ok_or(InvalidProof::Header)?;
        URL_SAFE_NO_PAD.decode(text).ok().filter(|b| b.len() == 32).ok_or(InvalidProof::Header)
    };
    if field(jwk, "kty") != "EC" || field(jwk, "crv") != "P-256" {
        return Err(InvalidProof::Header);
    }
    let (x, y) = (coordinate("x")?, coordinate("y")?);
    let point = p256::EncodedPoint::from_affine_coordinates(x.as_slice().into(), y.as_slice().into(), false);
    // A point off the curve is a bad header, not a bad signature.
    VerifyingKey::from_encoded_point(&point).map_err(|_| InvalidProof::Header)?;
    let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| InvalidProof::Malformed)?;
    let signed = text.len() - text.rsplit('.').next().map_or(0, str::len) - 1;
    let input = text.get(..signed).ok_or(InvalidProof::Malformed)?;
    // JWS ES256 signatures are r || s, 64 bytes: AWS-LC's "fixed" encoding.
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point.as_bytes())
        .verify(input.as_bytes(), &signature)
        .map_err(|_| InvalidProof::Signature)?;
    if field(&claims, "htm") != method || field(&claims, "htu").as_str() != Some(htu(url)) {
        return Err(InvalidProof::WrongRequest);
    }
    // A nonce vouches for the proof's age (the authority checks it); without
    // one, `iat` must be recent (oidc-provider's rule).
    let iat = field(&claims, "iat").as_u64().ok_or(InvalidProof::Stale)?;
    let nonce = field(&claims, "nonce").as_str().map(str::to_owned);
    if nonce.is_none() && iat.abs_diff(now.since_epoch().as_secs()) > JTI_WINDOW.as_secs() {
        return Err(InvalidProof::Stale);
    }
    if let Some(token) = access_token
        && field(&claims, "ath").as_str() != Some(access_token_hash(token).as_str())
    {
        return Err(InvalidProof::WrongAccessToken);
    }
    let jti = field(&claims, "jti").as_str().filter(|j| !j.is_empty() && j.len() <= 256).ok_or(InvalidProof::NoId)?;
    let canonical = format!(
        r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
        URL_SAFE_NO_PAD.encode(&x),
        URL_SAFE_NO_PAD.encode(&y)
    );
    Ok(Proof { jkt: URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes())), jti: jti.to_owned(), nonce })
}

/// A JSON object's member, `null` when absent (or not an object).
fn field<'a>(value: &'a Value, name: &str) -> &'a Value {
    value.get(name).unwrap_or(&Value::Null)
}

#[cfg(test)]
mod tests {
    use freshen_core::dpop::{DpopKey, ProofClaims};

    use super::*;

    const URL: &str = "http://auth.test/token";

    fn now() -> UnixTime {
        UnixTime::from_secs(1_800_000_000)
    }

    #[test]
    fn a_proof_made_by_the_core_verifies_and_names_its_key() {
        let key = DpopKey::from_bytes(&[7; 32]).unwrap();
        let access = AccessToken::new("at");
        let claims = ProofClaims::new("GET", "http://api.test/me?x", now(), [1; 16]).with_access_token(&access);
        let proof = key.proof(&claims);
        let seen = verify(proof.expose().as_bytes(), "GET", "http://api.test/me", now(), Some(&access)).unwrap();
        assert_eq!(seen.jkt, key.thumbprint());
        assert_eq!(seen.nonce, None);
        // Every part of the request is bound.
        let header = proof.expose().as_bytes();
        let check = |method, url, at, token| verify(header, method, url, at, token).unwrap_err();
        assert_eq!(check("POST", "http://api.test/me", now(), Some(&access)), InvalidProof::WrongRequest);
        assert_eq!(check("GET", "http://api.test/you", now(), Some(&access)), InvalidProof::WrongRequest);
        let other = AccessToken::new("other");
        assert_eq!(check("GET", "http://api.test/me", now(), Some(&other)), InvalidProof::WrongAccessToken);
        let later = UnixTime::from_secs(1_800_000_000 + JTI_WINDOW.as_secs() + 1);
        assert_eq!(check("GET", "http://api.test/me", later, Some(&access)), InvalidProof::Stale);
    }

    #[test]
    fn a_forged_or_broken_proof_is_refused() {
        let key = DpopKey::from_bytes(&[7; 32]).unwrap();
        let proof = key.proof(&ProofClaims::new("POST", URL, now(), [2; 16]));
        let (signed, _) = proof.expose().rsplit_once('.').unwrap();
        // Signed by another key, presented under this key's header.
        let other = DpopKey::from_bytes(&[8; 32]).unwrap().proof(&ProofClaims::new("POST", URL, now(), [2; 16]));
        let forged = format!("{signed}.{}", other.expose().rsplit_once('.').unwrap().1);
        assert_eq!(verify(forged.as_bytes(), "POST", URL, now(), None).unwrap_err(), InvalidProof::Signature);
        for broken in ["", "a.b", "a.b.c.d", "!!.!!.!!"] {
            assert_eq!(
                verify(broken.as_bytes(), "POST", URL, now(), None).unwrap_err(),
                InvalidProof::Malformed,
                "{broken}"
            );
        }
        assert!(verify(&vec![b'a'; MAX_PROOF_BYTES + 1], "POST", URL, now(), None).is_err());
        assert!(verify(proof.expose().as_bytes(), "POST", URL, now(), None).is_ok());
    }
}
