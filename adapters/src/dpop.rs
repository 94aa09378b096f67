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
//! unique id and time.

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

/// A proof of a `method` request to `url` made now (`now` on the wall clock),
/// with the server's `nonce` and, to a resource server, the `access_token`
/// presented. Its unique id comes from OS randomness; without any, a
/// counter-free id would repeat, so the proof is not made.
pub(crate) fn proof(
    key: &DpopKey,
    method: &str,
    url: &str,
    now: UnixTime,
    nonce: Option<&DpopNonce>,
    access_token: Option<&AccessToken>,
) -> Result<DpopProof, getrandom::Error> {
    let mut jti = [0u8; 16];
    getrandom::fill(&mut jti)?;
    let mut claims = ProofClaims::new(method, url, now, jti).with_nonce(nonce);
    if let Some(token) = access_token {
        claims = claims.with_access_token(token);
    }
    Ok(key.proof(&claims))
}
