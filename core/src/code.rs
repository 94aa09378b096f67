//! The authorization code grant with PKCE (RFC 6749 §4.1, RFC 7636) for
//! native apps (RFC 8252): the app sends the user's browser to
//! [`authorization_url`], the server redirects it back to a loopback address
//! the app listens on, [`parse_redirect`] checks the `state` and takes the
//! code, and [`code_request`] exchanges it for tokens.
//!
//! Everything here is pure: the `state`, the PKCE verifier and its S256
//! challenge come from the caller, which draws them from OS randomness (the
//! `freshen` driver does).
//!
//! ```
//! use freshen_core::code::{authorization_url, parse_redirect, AuthorizationRequest, Expected};
//!
//! let request = AuthorizationRequest {
//!     client_id: "my-app",
//!     redirect_uri: "http://127.0.0.1:49152/callback",
//!     scope: Some("openid offline_access"),
//!     state: "af0ifjsldkj",
//!     code_challenge: "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
//! };
//! let url = authorization_url("https://auth.example.com/authorize", &request)?;
//! assert!(url.starts_with("https://auth.example.com/authorize?response_type=code&client_id=my-app&"));
//!
//! let expected = Expected { path: "/callback", state: "af0ifjsldkj", issuer: Some("https://auth.example.com") };
//! let code = parse_redirect("/callback?code=SplxlOBeZQQYbYS6WxSbIA&state=af0ifjsldkj", &expected)?;
//! assert_eq!(code.expose_secret(), "SplxlOBeZQQYbYS6WxSbIA");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::oauth::{
    Classified, Client, FormRequest, Malformed, MalformedReason, OAuthError, Rejected, TokenResponse, Transient,
    authenticated, form_buffer,
};
use crate::token::AuthorizationCode;

/// The longest redirect target (path and query) read, and the longest code kept.
pub const MAX_REDIRECT_BYTES: usize = 8 * 1024;

/// What the authorization URL carries.
#[derive(Clone, Copy, Debug)]
pub struct AuthorizationRequest<'a> {
    /// The client's id.
    pub client_id: &'a str,
    /// Where the server sends the browser back (a loopback address for a native app).
    pub redirect_uri: &'a str,
    /// The scope asked for.
    pub scope: Option<&'a str>,
    /// An unguessable value the redirect must carry back (CSRF protection).
    pub state: &'a str,
    /// The PKCE challenge: base64url(SHA-256(verifier)), method `S256`.
    pub code_challenge: &'a str,
}

/// Why an authorization URL could not be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UrlError {
    /// The endpoint is not an absolute http(s) URL, or already has a fragment.
    #[error("the authorization endpoint is not an absolute http(s) URL without a fragment")]
    InvalidEndpoint,
}

/// The URL to send the user's browser to (RFC 6749 §4.1.1 with RFC 7636 §4.3).
/// Parameters are appended to any query the endpoint already has.
///
/// # Errors
/// The endpoint cannot carry them.
pub fn authorization_url(endpoint: &str, request: &AuthorizationRequest<'_>) -> Result<String, UrlError> {
    let absolute = endpoint.starts_with("https://") || endpoint.starts_with("http://");
    if !absolute || endpoint.contains('#') || !endpoint.chars().all(|c| c.is_ascii_graphic()) {
        return Err(UrlError::InvalidEndpoint);
    }
    let mut query = form_urlencoded::Serializer::new(String::new());
    query.append_pair("response_type", "code");
    query.append_pair("client_id", request.client_id);
    query.append_pair("redirect_uri", request.redirect_uri);
    if let Some(scope) = request.scope {
        query.append_pair("scope", scope);
    }
    query.append_pair("state", request.state);
    query.append_pair("code_challenge", request.code_challenge);
    query.append_pair("code_challenge_method", "S256");
    let separator = if endpoint.contains('?') { '&' } else { '?' };
    Ok(format!("{endpoint}{separator}{}", query.finish()))
}

/// Why a redirect brought no code.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RedirectError {
    /// A request for another path (a browser asking for `/favicon.ico`): keep listening.
    #[error("a request for another path")]
    OtherPath,
    /// The `state` is missing or not the one sent: the redirect was not
    /// caused by this login (a forged or stale one) and is ignored.
    #[error("the redirect's state does not match this login's")]
    StateMismatch,
    /// The redirect names another authorization server than this login's
    /// (`iss`, RFC 9207): a mix-up attack, or a misconfiguration.
    #[error("the redirect comes from another authorization server")]
    IssuerMismatch,
    /// The server refused (`access_denied` when the user declined, ...).
    #[error("the authorization server refused: {0}")]
    Refused(OAuthError),
    /// The redirect carries neither a code nor an error, or one too long.
    #[error("the redirect carries no usable code")]
    NoCode,
}

/// What a redirect must match to be this login's answer.
#[derive(Clone, Copy, Debug)]
pub struct Expected<'a> {
    /// The redirect URI's path.
    pub path: &'a str,
    /// The `state` the authorization URL carried.
    pub state: &'a str,
    /// The authorization server's issuer identifier, when the app knows it:
    /// a redirect whose `iss` names another server is refused (RFC 9207,
    /// the mix-up defense). One without `iss` is accepted, since not every
    /// server sends it.
    pub issuer: Option<&'a str>,
}

/// Reads the redirect target the browser requested (`/path?query`).
/// Bounded: a target longer than [`MAX_REDIRECT_BYTES`] carries no usable code.
///
/// # Errors
/// The request is not this login's answer, or the answer is a refusal.
pub fn parse_redirect(target: &str, expected: &Expected<'_>) -> Result<AuthorizationCode, RedirectError> {
    let Expected { path, state, issuer } = *expected;
    let (requested, query) = target.split_once('?').unwrap_or((target, ""));
    if requested != path {
        return Err(RedirectError::OtherPath);
    }
    if target.len() > MAX_REDIRECT_BYTES {
        return Err(RedirectError::NoCode);
    }
    let mut code = None;
    let mut error = None;
    let mut description = None;
    let mut returned_state = None;
    let mut returned_issuer = None;
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        match &*name {
            "code" => code = Some(value),
            "error" => error = Some(value),
            "error_description" => description = Some(value),
            "state" => returned_state = Some(value),
            "iss" => returned_issuer = Some(value),
            _ => {}
        }
    }
    // Checked first: an error redirect without our state may be forged too.
    if returned_state.as_deref() != Some(state) {
        return Err(RedirectError::StateMismatch);
    }
    if let (Some(issuer), Some(returned)) = (issuer, returned_issuer.as_deref())
        && returned != issuer
    {
        return Err(RedirectError::IssuerMismatch);
    }
    if let Some(error) = error {
        let printable = |text: &str| text.chars().filter(|c| c.is_ascii_graphic() || *c == ' ').take(256).collect();
        return Err(RedirectError::Refused(OAuthError {
            status: 302,
            code: printable(&error),
            description: description.map(|d| printable(&d)),
        }));
    }
    match code {
        Some(code) if !code.is_empty() && code.chars().all(|c| c.is_ascii_graphic()) => {
            Ok(AuthorizationCode::new(code.into_owned()))
        }
        _ => Err(RedirectError::NoCode),
    }
}

/// Builds the token request that exchanges `code` (RFC 6749 §4.1.3 with the
/// PKCE `code_verifier`, RFC 7636 §4.5).
pub fn code_request(client: &Client, code: &AuthorizationCode, redirect_uri: &str, code_verifier: &str) -> FormRequest {
    let parts = [
        "grant_type",
        "authorization_code",
        "code",
        code.expose_secret(),
        "redirect_uri",
        redirect_uri,
        "code_verifier",
        code_verifier,
    ];
    let mut form = form_urlencoded::Serializer::new(form_buffer(client, parts.into_iter()));
    form.append_pair("grant_type", "authorization_code");
    form.append_pair("code", code.expose_secret());
    form.append_pair("redirect_uri", redirect_uri);
    form.append_pair("code_verifier", code_verifier);
    authenticated(client, form)
}

/// Why the token endpoint did not exchange a code (or, for any login grant,
/// issue tokens). A code is spent either way: the login starts again.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ExchangeError {
    /// An OAuth error (`invalid_grant`: a used, expired or mismatched code; `invalid_client`; ...).
    #[error("the token endpoint refused: {0}")]
    Refused(OAuthError),
    /// A status without an OAuth error (a 404: wrong endpoint).
    #[error("the token endpoint answered {0}")]
    Status(u16),
    /// Unavailable for now (5xx, 429).
    #[error("the token endpoint is unavailable: {}", .0.cause)]
    Unavailable(Transient),
    /// A success without a usable token response.
    #[error("the token endpoint's answer was unusable: {0}")]
    Malformed(MalformedReason),
}

/// Reads a [`classify`](crate::oauth::classify)d answer to a login grant:
/// the tokens, or why there are none.
///
/// # Errors
/// Anything but a usable token response.
pub fn exchanged(answer: Classified) -> Result<TokenResponse, ExchangeError> {
    match answer {
        Classified::Success(tokens) => Ok(tokens),
        // A nonce challenge is answered by the caller (a second request with
        // the nonce) before it comes here; reaching here it is a refusal.
        Classified::Terminal(error) | Classified::InteractionRequired(error) | Classified::NonceRequired(error) => {
            Err(ExchangeError::Refused(error))
        }
        Classified::Rejected(Rejected::Error(error)) => Err(ExchangeError::Refused(error)),
        Classified::Rejected(Rejected::Status(status)) => Err(ExchangeError::Status(status)),
        Classified::Transient(transient) => Err(ExchangeError::Unavailable(transient)),
        Classified::Malformed(Malformed { reason, .. }) => Err(ExchangeError::Malformed(reason)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATE: &str = "s-123";
    const EXPECTED: Expected<'static> = Expected { path: "/cb", state: STATE, issuer: Some("https://a.example") };

    #[test]
    fn the_url_carries_pkce_and_keeps_an_existing_query() {
        let request = AuthorizationRequest {
            client_id: "app",
            redirect_uri: "http://127.0.0.1:5000/cb",
            scope: None,
            state: STATE,
            code_challenge: "ch",
        };
        let url = authorization_url("https://a.example/authorize?tenant=x", &request).unwrap();
        assert_eq!(
            url,
            "https://a.example/authorize?tenant=x&response_type=code&client_id=app&redirect_uri=http%3A%2F%2F127.0.0.1%3A5000%2Fcb&state=s-123&code_challenge=ch&code_challenge_method=S256"
        );
        for bad in ["/authorize", "ftp://a/authorize", "https://a/x#frag", "https://a/x y"] {
            assert_eq!(authorization_url(bad, &request), Err(UrlError::InvalidEndpoint), "{bad}");
        }
    }

    #[test]
    fn a_redirect_gives_its_code_only_with_the_right_state_and_path() {
        let code = parse_redirect("/cb?state=s-123&code=abc%2Fdef", &EXPECTED).unwrap();
        assert_eq!(code.expose_secret(), "abc/def");
        assert!(!format!("{code:?}").contains("abc"), "the code is a secret");
        assert_eq!(parse_redirect("/favicon.ico", &EXPECTED).unwrap_err(), RedirectError::OtherPath);
        assert_eq!(parse_redirect("/cb?code=abc", &EXPECTED).unwrap_err(), RedirectError::StateMismatch);
        assert_eq!(parse_redirect("/cb?code=abc&state=other", &EXPECTED).unwrap_err(), RedirectError::StateMismatch);
        assert_eq!(parse_redirect("/cb?error=access_denied", &EXPECTED).unwrap_err(), RedirectError::StateMismatch);
        let refused = parse_redirect("/cb?state=s-123&error=access_denied&error_description=no%0Athanks", &EXPECTED);
        assert!(
            matches!(&refused, Err(RedirectError::Refused(e)) if e.code == "access_denied" && e.description.as_deref() == Some("nothanks")),
            "{refused:?}"
        );
        assert_eq!(parse_redirect("/cb?state=s-123", &EXPECTED).unwrap_err(), RedirectError::NoCode);
        assert_eq!(parse_redirect("/cb?state=s-123&code=", &EXPECTED).unwrap_err(), RedirectError::NoCode);
        // RFC 9207: another server's redirect is refused; one without `iss` is accepted.
        let mixed_up = parse_redirect("/cb?state=s-123&code=abc&iss=https%3A%2F%2Fevil.example", &EXPECTED);
        assert_eq!(mixed_up.unwrap_err(), RedirectError::IssuerMismatch);
        assert!(parse_redirect("/cb?state=s-123&code=abc&iss=https%3A%2F%2Fa.example", &EXPECTED).is_ok());
        let long = format!("/cb?state=s-123&code={}", "a".repeat(MAX_REDIRECT_BYTES));
        assert_eq!(parse_redirect(&long, &EXPECTED).unwrap_err(), RedirectError::NoCode);
    }

    #[test]
    fn the_exchange_names_the_grant_the_redirect_and_the_verifier() {
        let request =
            code_request(&Client::public("app"), &AuthorizationCode::new("c1"), "http://127.0.0.1:5/cb", "v1");
        assert_eq!(
            request.expose_body(),
            "grant_type=authorization_code&code=c1&redirect_uri=http%3A%2F%2F127.0.0.1%3A5%2Fcb&code_verifier=v1&client_id=app"
        );
    }
}
