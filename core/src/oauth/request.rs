//! The requests: a refresh and a revocation as form bodies, with the
//! client's authentication.

use super::*;

/// How the client authenticates to the token endpoint (RFC 6749 §2.3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ClientAuth {
    /// A public client: `client_id` in the form body, no secret.
    None,
    /// `Authorization: Basic` with the form-encoded id and secret.
    Basic,
    /// `client_id` and `client_secret` in the form body.
    Post,
}

/// The client identity presented to the token and revocation endpoints.
#[derive(Clone)]
pub struct Client {
    client_id: String,
    secret: Option<SecretString>,
    auth: ClientAuth,
}

impl Client {
    /// A public client (native app, CLI, SPA): no secret.
    pub fn public(client_id: impl Into<String>) -> Self {
        Self { client_id: client_id.into(), secret: None, auth: ClientAuth::None }
    }

    /// A confidential client authenticating with `auth` ([`ClientAuth::Basic`]
    /// or [`ClientAuth::Post`]; [`ClientAuth::None`] drops the secret).
    pub fn confidential(client_id: impl Into<String>, secret: SecretString, auth: ClientAuth) -> Self {
        let secret = (auth != ClientAuth::None).then_some(secret);
        Self { client_id: client_id.into(), secret, auth }
    }

    /// The client identifier.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// How this client authenticates.
    pub fn auth(&self) -> ClientAuth {
        self.auth
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("client_id", &self.client_id)
            .field("secret", &self.secret.as_ref().map(|_| "[REDACTED]"))
            .field("auth", &self.auth)
            .finish()
    }
}

/// An `application/x-www-form-urlencoded` POST, ready for a transport. The body
/// and the `Authorization` value hold secrets, so they are `secrecy` strings.
#[derive(Clone)]
pub struct FormRequest {
    body: SecretString,
    authorization: Option<SecretString>,
    dpop: Option<DpopProof>,
}

impl FormRequest {
    /// The `Content-Type` to send with [`FormRequest::expose_body`].
    pub const CONTENT_TYPE: &'static str = "application/x-www-form-urlencoded";

    /// The form body. It contains a token: send it, never log it.
    pub fn expose_body(&self) -> &str {
        self.body.expose_secret()
    }

    /// The `Authorization` header value, for [`ClientAuth::Basic`].
    pub fn expose_authorization(&self) -> Option<&str> {
        self.authorization.as_ref().map(ExposeSecret::expose_secret)
    }

    /// With a DPoP proof of this request (RFC 9449), sent as the `DPoP` header.
    #[must_use]
    pub fn with_dpop(mut self, proof: DpopProof) -> Self {
        self.dpop = Some(proof);
        self
    }

    /// The `DPoP` header value, when the request carries a proof.
    pub fn expose_dpop(&self) -> Option<&str> {
        self.dpop.as_ref().map(DpopProof::expose)
    }
}

impl fmt::Debug for FormRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FormRequest")
            .field("body", &"[REDACTED]")
            .field("authorization", &self.authorization.as_ref().map(|_| "[REDACTED]"))
            .field("dpop", &self.dpop)
            .finish()
    }
}

/// Builds the RFC 6749 §6 refresh request.
///
/// ```
/// use freshen_core::oauth::{refresh_request, Client};
/// use freshen_core::token::RefreshToken;
///
/// let request = refresh_request(&Client::public("cli"), &RefreshToken::new("r1"), None);
/// assert_eq!(request.expose_body(), "grant_type=refresh_token&refresh_token=r1&client_id=cli");
/// assert!(request.expose_authorization().is_none());
/// ```
pub fn refresh_request(client: &Client, refresh_token: &RefreshToken, scope: Option<&str>) -> FormRequest {
    let parts = ["grant_type", "refresh_token", "refresh_token", refresh_token.expose_secret()];
    let scope_parts = scope.map(|scope| ["scope", scope]).into_iter().flatten();
    let mut form = form_urlencoded::Serializer::new(form_buffer(client, parts.into_iter().chain(scope_parts)));
    form.append_pair("grant_type", "refresh_token");
    form.append_pair("refresh_token", refresh_token.expose_secret());
    if let Some(scope) = scope {
        form.append_pair("scope", scope);
    }
    authenticated(client, form)
}

/// Builds the RFC 7009 revocation request for a refresh token. Revoking the
/// refresh token lets the server drop the whole grant, access tokens included.
pub fn revocation_request(client: &Client, refresh_token: &RefreshToken) -> FormRequest {
    let parts = ["token", refresh_token.expose_secret(), "token_type_hint", "refresh_token"];
    let mut form = form_urlencoded::Serializer::new(form_buffer(client, parts.into_iter()));
    form.append_pair("token", refresh_token.expose_secret());
    form.append_pair("token_type_hint", "refresh_token");
    authenticated(client, form)
}

/// A buffer for a form of `parts` and the client's credentials, large enough
/// that building the form never moves it (it holds a token; see `scrub`).
pub(crate) fn form_buffer<'a>(client: &'a Client, parts: impl Iterator<Item = &'a str>) -> String {
    let secret = client.secret.as_ref().map(|secret| secret.expose_secret()).unwrap_or_default();
    let credentials = ["client_id", client.client_id.as_str(), "client_secret", secret];
    String::with_capacity(form_bound(parts.chain(credentials)))
}

/// `Basic base64(urlencode(id):urlencode(secret))` (RFC 6749 §2.3.1: both parts
/// are form-encoded before base64), built in buffers sized up front and wiped.
fn basic_authorization(client_id: &str, secret: &str) -> SecretString {
    let mut pair = Zeroizing::new(String::with_capacity(form_bound([client_id, secret])));
    pair.extend(form_urlencoded::byte_serialize(client_id.as_bytes()));
    pair.push(':');
    pair.extend(form_urlencoded::byte_serialize(secret.as_bytes()));
    let engine = base64::engine::general_purpose::STANDARD;
    let mut header = String::with_capacity("Basic ".len() + base64::encoded_len(pair.len(), true).unwrap_or(0));
    header.push_str("Basic ");
    engine.encode_string(pair.as_bytes(), &mut header);
    into_secret(header)
}

pub(crate) fn authenticated(client: &Client, mut form: form_urlencoded::Serializer<'_, String>) -> FormRequest {
    let mut authorization = None;
    match (client.auth, &client.secret) {
        (ClientAuth::Basic, Some(secret)) => {
            authorization = Some(basic_authorization(&client.client_id, secret.expose_secret()));
        }
        (ClientAuth::Post, Some(secret)) => {
            form.append_pair("client_id", &client.client_id);
            form.append_pair("client_secret", secret.expose_secret());
        }
        _ => {
            form.append_pair("client_id", &client.client_id);
        }
    }
    FormRequest { body: into_secret(form.finish()), authorization, dpop: None }
}
