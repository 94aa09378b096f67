//! DPoP (RFC 9449): sessions whose tokens are bound to a key on this device.
//!
//! With [`Config::with_dpop`](crate::Config::with_dpop), a login makes a
//! P-256 key pair from OS randomness, proves it to the token endpoint, and
//! stores it in the same blob as the tokens: a restart keeps the binding,
//! and a refresh token stolen from the store's backups or the network is
//! useless without the key. Every refresh, and every request through the
//! middleware or the tower layer (features `middleware` and `tower`),
//! carries a fresh proof; servers' nonces are followed on their own.
//!
//! The proofs themselves are built by the core ([`freshen_core::dpop`]);
//! this module adds what needs the OS: the key's randomness, the proof's
//! unique id and time, and (with the `rustls` feature) a signer from AWS-LC
//! with nonces from the OS, many times faster than the core's own.

pub use freshen_core::dpop::{DpopKey, DpopNonce, DpopProof, InvalidKey, ProofClaims};
use freshen_core::time::UnixTime;
use freshen_core::token::AccessToken;

use crate::login::LoginError;

/// How many draws a new key may take: a draw is refused with odds below
/// 2^-32, so a second one is already beyond belief.
const KEY_DRAWS: usize = 4;

/// A new key pair from OS randomness, for a session bound by DPoP (the
/// login flows make one themselves; an app with its own login makes one
/// here, proves it to the token endpoint, and passes it to
/// [`Session::log_in_bound`](crate::Session::log_in_bound)).
///
/// # Errors
/// The OS has no randomness to give.
pub fn generate_key() -> Result<DpopKey, LoginError> {
    for _ in 0..KEY_DRAWS {
        let mut bytes = secrecy::zeroize::Zeroizing::new([0u8; freshen_core::dpop::KEY_BYTES]);
        getrandom::fill(&mut *bytes).map_err(|error| LoginError::Setup(format!("no OS randomness: {error}")))?;
        if let Ok(key) = DpopKey::from_bytes(&*bytes) {
            return Ok(key);
        }
    }
    Err(LoginError::Setup("the OS randomness gave no valid P-256 key".into()))
}

/// The OS gave no randomness for a proof's unique id: the proof is not made
/// (an id that repeats would get it refused), and the request is not sent.
#[derive(Debug, thiserror::Error)]
#[error("no OS randomness for a DPoP proof's id: {0}")]
pub struct NoRandomness(getrandom::Error);

/// A proof of a `method` request to `url` made at `now` (on the wall clock),
/// with the server's `nonce` and, to a resource server, the `access_token`
/// presented: what an app's own login sends to the token endpoint with a
/// key from [`generate_key`] (the session makes its own proofs). Its unique
/// id comes from OS randomness.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use freshen::dpop::{generate_key, proof};
/// use freshen_core::time::UnixTime;
///
/// let key = generate_key()?;
/// let now = UnixTime::from_secs(1_800_000_000);
/// let proof = proof(&key, "POST", "https://auth.example/token", now, None, None)?;
/// assert_eq!(proof.expose().split('.').count(), 3);
/// # Ok(())
/// # }
/// ```
///
/// # Errors
/// The OS gave no randomness for the proof's id.
pub fn proof(
    key: &DpopKey,
    method: &str,
    url: &str,
    now: UnixTime,
    nonce: Option<&DpopNonce>,
    access_token: Option<&AccessToken>,
) -> Result<DpopProof, NoRandomness> {
    let mut jti = [0u8; 16];
    getrandom::fill(&mut jti).map_err(NoRandomness)?;
    let mut claims = ProofClaims::new(method, url, now, jti).with_nonce(nonce);
    if let Some(token) = access_token {
        claims = claims.with_access_token(token);
    }
    Ok(sign(key, &claims))
}

/// Signs with AWS-LC where it is built (the `rustls` feature), else with
/// the core's signer; also the core's if AWS-LC refused the key or the
/// signing, which a valid key never makes it do.
fn sign(key: &DpopKey, claims: &ProofClaims<'_>) -> DpopProof {
    #[cfg(feature = "rustls")]
    if let Some(proof) = aws_lc::sign(key, claims) {
        return proof;
    }
    key.proof(claims)
}

#[cfg(feature = "rustls")]
mod aws_lc {
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
    use freshen_core::dpop::{DpopKey, DpopProof, KEY_BYTES, ProofClaims, SIGNATURE_BYTES};
    use secrecy::zeroize::Zeroizing;

    /// The key's signer, made once per key (it is kept with the key).
    struct Signer(Option<EcdsaKeyPair>);

    /// An RFC 5915 `ECPrivateKey` holding the scalar alone, on P-256: AWS-LC
    /// works out the public key itself (a scalar multiplication in its own,
    /// fast code). The scalar sits between the prefix and the suffix.
    const PREFIX: [u8; 7] = [0x30, 0x31, 0x02, 0x01, 0x01, 0x04, 0x20];
    const SUFFIX: [u8; 12] = [0xa0, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

    fn key_pair(secret: &Zeroizing<[u8; KEY_BYTES]>) -> Signer {
        let mut der = Zeroizing::new([0u8; PREFIX.len() + KEY_BYTES + SUFFIX.len()]);
        for (slot, byte) in der.iter_mut().zip(PREFIX.iter().chain(secret.iter()).chain(SUFFIX.iter())) {
            *slot = *byte;
        }
        Signer(EcdsaKeyPair::from_private_key_der(&ECDSA_P256_SHA256_FIXED_SIGNING, &*der).ok())
    }

    pub(super) fn sign(key: &DpopKey, claims: &ProofClaims<'_>) -> Option<DpopProof> {
        let pair = key.adapter_signer(key_pair)?.0.as_ref()?;
        let signing_input = key.signing_input(claims);
        let signature = pair.sign(&SystemRandom::new(), signing_input.as_bytes()).ok()?;
        let signature: &[u8; SIGNATURE_BYTES] = signature.as_ref().try_into().ok()?;
        Some(DpopKey::signed(signing_input, signature))
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    use super::*;

    /// The JWS parts of `proof`: the signing input and the signature.
    fn parts(proof: &DpopProof) -> (String, Vec<u8>) {
        let (input, signature) = proof.expose().rsplit_once('.').unwrap_or_default();
        (input.to_owned(), URL_SAFE_NO_PAD.decode(signature).unwrap_or_default())
    }

    #[test]
    fn a_proof_signs_what_the_core_would_and_verifies_with_the_keys_public_half() {
        let key = DpopKey::from_bytes(&[7; freshen_core::dpop::KEY_BYTES]).unwrap();
        let claims =
            ProofClaims::new("POST", "https://auth.example/token", UnixTime::from_secs(1_800_000_000), [1; 16]);
        let (ours, signature) = parts(&sign(&key, &claims));
        let (core, _) = parts(&key.proof(&claims));
        assert_eq!(ours, core, "the header and claims are the core's");
        assert_eq!(signature.len(), freshen_core::dpop::SIGNATURE_BYTES);
        #[cfg(feature = "rustls")]
        {
            use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};
            let jwk: serde_json::Value = serde_json::from_str(key.public_jwk()).unwrap();
            let coordinate = |name: &str| URL_SAFE_NO_PAD.decode(jwk[name].as_str().unwrap_or_default()).unwrap();
            let point = [vec![4], coordinate("x"), coordinate("y")].concat();
            let public = UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point);
            assert!(public.verify(ours.as_bytes(), &signature).is_ok(), "AWS-LC's signature does not verify");
            // Its nonces come from the OS: two signatures of one input differ.
            assert_ne!(parts(&sign(&key, &claims)).1, signature);
            // A wrong input is refused: the check can fail.
            assert!(public.verify(b"another input", &signature).is_err());
        }
    }
}
