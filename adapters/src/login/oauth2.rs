//! A token response the `oauth2` crate received, for apps whose login
//! already runs on it (the `oauth2` feature).

use freshen_core::code::ExchangeError;
use freshen_core::oauth::{MalformedReason, TokenResponse};
use secrecy::zeroize::Zeroizing;

/// freshen's reading of a token response the `oauth2` crate received (for
/// [`Session::log_in`](crate::Session::log_in)): it is written back to JSON
/// and read by [`TokenResponse::from_json`], so one set of rules (bounds,
/// lifetimes, token types) applies however the tokens came.
///
/// # Errors
/// The response cannot be used by the same rules as any other.
#[cfg_attr(docsrs, doc(cfg(feature = "oauth2")))]
pub fn from_oauth2<R: oauth2::TokenResponse>(response: &R) -> Result<TokenResponse, ExchangeError> {
    // Sized up front so the buffer holding the tokens never moves, and wiped when dropped.
    let secrets = response.access_token().secret().len() + response.refresh_token().map_or(0, |r| r.secret().len());
    let mut json = Zeroizing::new(Vec::with_capacity(2 * secrets + 4096));
    serde_json::to_writer(&mut *json, response)
        .map_err(|_| ExchangeError::Malformed(MalformedReason::NotJsonObject))?;
    TokenResponse::from_json(&json)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use oauth2::basic::{BasicTokenResponse, BasicTokenType};
    use oauth2::{AccessToken, EmptyExtraTokenFields, RefreshToken, Scope};

    use super::*;

    #[test]
    fn an_oauth2_response_is_read_by_freshens_rules() {
        let mut response =
            BasicTokenResponse::new(AccessToken::new("a1".into()), BasicTokenType::Bearer, EmptyExtraTokenFields {});
        response.set_expires_in(Some(&Duration::from_secs(300)));
        response.set_refresh_token(Some(RefreshToken::new("r1".into())));
        response.set_scopes(Some(vec![Scope::new("openid".into()), Scope::new("offline_access".into())]));
        let tokens = from_oauth2(&response).unwrap();
        assert_eq!(tokens.access_token.expose_secret(), "a1");
        assert_eq!(tokens.refresh_token.unwrap().expose_secret(), "r1");
        assert_eq!(tokens.lifetime, Some(Duration::from_secs(300)));
        assert_eq!(tokens.scope.as_deref(), Some("openid offline_access"));

        // The same bounds as any response: an access token of 20 kB is not used.
        let huge = BasicTokenResponse::new(
            AccessToken::new("a".repeat(20_000)),
            BasicTokenType::Bearer,
            EmptyExtraTokenFields {},
        );
        assert!(matches!(from_oauth2(&huge), Err(ExchangeError::Malformed(_))));
    }
}
