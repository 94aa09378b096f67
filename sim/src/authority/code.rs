//! The authorization code grant with PKCE (RFC 6749 §4.1, RFC 7636 S256)
//! as the authority serves it. The user is assumed to approve at once (the
//! server's login page is not what is tested); a code lives a minute, is
//! bound to its client, redirect URI and challenge, and is redeemed once.

use core::time::Duration;

use base64::Engine as _;
use sha2::{Digest, Sha256};

use super::{Authority, AuthorityPlant, Issued};
use freshen_core::time::MonoTime;

/// How long an authorization code can be exchanged.
pub const CODE_TTL: Duration = Duration::from_secs(60);

/// The most codes outstanding at once; past it the oldest goes.
const MAX_CODES: usize = 1024;

#[derive(Clone, Debug)]
pub(super) struct IssuedCode {
    client: String,
    redirect_uri: String,
    challenge: String,
    expires_at: MonoTime,
}

/// Why a code was not exchanged (all `invalid_grant`, RFC 6749 §5.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CodeRefusal {
    /// Unknown, used, expired, or another client's code.
    UnknownCode,
    /// The redirect URI differs from the authorization request's.
    RedirectMismatch,
    /// The verifier does not hash to the challenge (RFC 7636 §4.6).
    VerifierMismatch,
}

/// base64url(SHA-256(`verifier`)), the S256 challenge of RFC 7636 §4.2.
pub fn s256_challenge(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

impl Authority {
    /// The user approved `client`'s authorization request: a code for it.
    pub fn issue_code(&mut self, now: MonoTime, client: &str, redirect_uri: &str, challenge: &str) -> String {
        self.codes.retain(|_, code| now < code.expires_at);
        if self.codes.len() >= MAX_CODES
            && let Some(oldest) = self.codes.iter().min_by_key(|(_, code)| code.expires_at).map(|(c, _)| c.clone())
        {
            self.codes.remove(&oldest);
        }
        let code = self.mint("ac");
        let issued = IssuedCode {
            client: client.to_owned(),
            redirect_uri: redirect_uri.to_owned(),
            challenge: challenge.to_owned(),
            expires_at: now.saturating_add(CODE_TTL),
        };
        self.codes.insert(code.clone(), issued);
        code
    }

    /// Exchanges a code (RFC 6749 §4.1.3): a new family, once. A failed
    /// exchange spends the code too, as RFC 6749 §10.5 allows.
    ///
    /// # Errors
    /// See [`CodeRefusal`].
    pub fn redeem_code(
        &mut self,
        now: MonoTime,
        client: &str,
        code: &str,
        redirect_uri: &str,
        verifier: &str,
    ) -> Result<Issued, CodeRefusal> {
        let kept = self.plant == Some(AuthorityPlant::RedeemsGrantTwice);
        let taken = if kept { self.codes.get(code).cloned() } else { self.codes.remove(code) };
        let issued = match taken {
            Some(issued) if issued.client == client && now < issued.expires_at => issued,
            _ => return Err(CodeRefusal::UnknownCode),
        };
        if issued.redirect_uri != redirect_uri {
            return Err(CodeRefusal::RedirectMismatch);
        }
        if s256_challenge(verifier) != issued.challenge {
            return Err(CodeRefusal::VerifierMismatch);
        }
        Ok(self.redeem_grant(now, client, code))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authority::AuthorityConfig;

    #[test]
    fn the_rfc_7636_example_verifier_hashes_to_its_challenge() {
        assert_eq!(
            s256_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn a_code_is_redeemed_once_with_its_verifier_and_redirect() {
        let mut a = Authority::new(AuthorityConfig::default(), 1);
        let (redirect, verifier) = ("http://127.0.0.1:5/cb", "v".repeat(43));
        let issue = |a: &mut Authority| a.issue_code(MonoTime::ZERO, "app", redirect, &s256_challenge(&verifier));
        let code = issue(&mut a);
        let at = MonoTime::from_secs(1);
        assert_eq!(a.redeem_code(at, "app", &code, redirect, "wrong").unwrap_err(), CodeRefusal::VerifierMismatch);
        let code = issue(&mut a);
        assert_eq!(
            a.redeem_code(at, "app", &code, "http://127.0.0.1:6/cb", &verifier).unwrap_err(),
            CodeRefusal::RedirectMismatch
        );
        let code = issue(&mut a);
        assert_eq!(a.redeem_code(at, "other", &code, redirect, &verifier).unwrap_err(), CodeRefusal::UnknownCode);
        let code = issue(&mut a);
        assert!(a.redeem_code(at, "app", &code, redirect, &verifier).is_ok());
        assert_eq!(a.redeem_code(at, "app", &code, redirect, &verifier).unwrap_err(), CodeRefusal::UnknownCode);
        let late = issue(&mut a);
        let expired = MonoTime::ZERO.saturating_add(CODE_TTL);
        assert_eq!(a.redeem_code(expired, "app", &late, redirect, &verifier).unwrap_err(), CodeRefusal::UnknownCode);
    }
}
