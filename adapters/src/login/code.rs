//! The authorization code grant with PKCE for native apps (RFC 7636, RFC
//! 8252 §7.3): a listener on a loopback port receives the browser's redirect.
//! The core builds the URL, reads the redirect and builds the exchange; this
//! module draws the secrets from OS randomness and does the socket work,
//! every read bounded in size and time.

use core::time::Duration;
use std::net::{Ipv4Addr, SocketAddr};

use base64::Engine as _;
use freshen_core::code::{self, AuthorizationRequest, Expected, RedirectError};
use freshen_core::token::AuthorizationCode;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{info, warn};

use freshen_core::dpop::{DpopKey, MAX_NONCE_RETRIES};
use freshen_core::oauth::Classified;

use super::{LoginError, TokenEndpoint};
use crate::Session;
use crate::store::Store;
use crate::transport::Transport;

/// The path the browser is sent back to.
const CALLBACK_PATH: &str = "/callback";

/// How long [`CodeLogin::finish`] waits for the browser to come back.
pub const BROWSER_WAIT: Duration = Duration::from_secs(10 * 60);

/// How long one connection to the listener may take to send its request.
const REQUEST_WAIT: Duration = Duration::from_secs(10);

/// The most connections the listener serves before giving up (a browser
/// asking for a favicon or retrying makes a few).
const MAX_CONNECTIONS: usize = 64;

impl<T: Transport, S: Store> Session<T, S> {
    /// Starts a login with the authorization code grant and PKCE at the
    /// configured [`authorization_endpoint`](crate::Config::authorization_endpoint),
    /// asking for `scope`: listens on a loopback port for the redirect (RFC
    /// 8252 §7.3). Open [`CodeLogin::authorization_url`] in the user's
    /// browser, then await [`CodeLogin::finish`].
    ///
    /// # Errors
    /// No endpoint is configured or it is not a URL, no loopback port could
    /// be listened on, or the OS gave no randomness.
    pub async fn start_code_login(&self, scope: Option<&str>) -> Result<CodeLogin<T, S>, LoginError> {
        let (_, config, _) = self.login_parts();
        let endpoint = config.authorization_endpoint.as_deref().ok_or(LoginError::NoEndpoint("authorization"))?;
        let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .await
            .map_err(|error| LoginError::Setup(format!("cannot listen on a loopback port: {error}")))?;
        let port = listener.local_addr().map_err(|error| LoginError::Setup(error.to_string()))?.port();
        let redirect_uri = format!("http://127.0.0.1:{port}{CALLBACK_PATH}");
        let state = random_text()?;
        let verifier = SecretString::from(random_text()?);
        let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(Sha256::digest(verifier.expose_secret().as_bytes()));
        let request = AuthorizationRequest {
            client_id: config.client.client_id(),
            redirect_uri: &redirect_uri,
            scope,
            state: &state,
            code_challenge: &challenge,
        };
        let url = code::authorization_url(endpoint, &request)
            .map_err(|error| LoginError::Setup(format!("the authorization endpoint: {error}")))?;
        let dpop_key = config.dpop.then(crate::dpop::generate_key).transpose()?;
        info!(port, "code login listening for the browser's redirect");
        Ok(CodeLogin { session: self.clone(), listener, redirect_uri, state, verifier, url, dpop_key })
    }
}

/// 32 bytes of OS randomness as base64url: 43 characters, a PKCE verifier
/// of the strength RFC 7636 §7.1 asks for, and an unguessable `state`.
fn random_text() -> Result<String, LoginError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|error| LoginError::Setup(format!("no OS randomness: {error}")))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// A code login waiting for the browser (see [`Session::start_code_login`]).
pub struct CodeLogin<T, S> {
    session: Session<T, S>,
    listener: TcpListener,
    redirect_uri: String,
    state: String,
    verifier: SecretString,
    url: String,
    /// The key the tokens are bound to, when the session binds by DPoP.
    dpop_key: Option<DpopKey>,
}

impl<T, S> core::fmt::Debug for CodeLogin<T, S> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // The URL and state are not secrets (the browser shows both), but the verifier is.
        f.debug_struct("CodeLogin").field("redirect_uri", &self.redirect_uri).finish_non_exhaustive()
    }
}

impl<T: Transport, S: Store> CodeLogin<T, S> {
    /// Where to send the user's browser.
    pub fn authorization_url(&self) -> &str {
        &self.url
    }

    /// Where the browser comes back: `http://127.0.0.1:PORT/callback`.
    pub fn redirect_uri(&self) -> &str {
        &self.redirect_uri
    }

    /// Binds the login's tokens to `key` by DPoP instead of a key the
    /// login makes itself (with [`Config::with_dpop`](crate::Config::with_dpop)),
    /// for an app that keeps its keys elsewhere. The key is stored with the tokens.
    #[must_use]
    pub fn with_dpop_key(mut self, key: DpopKey) -> Self {
        self.dpop_key = Some(key);
        self
    }

    /// Waits (at most [`BROWSER_WAIT`]) for the browser to come back with a
    /// code for this login, exchanges it, and logs the session in; resolves
    /// once the tokens are stored. Requests that are not this login's answer
    /// (another path, a wrong `state`) are answered and ignored.
    ///
    /// # Errors
    /// The user or the server refused, no browser came back in time, the
    /// exchange failed, or the tokens could not be stored.
    pub async fn finish(self) -> Result<(), LoginError> {
        let wait = self.await_redirect();
        let code = tokio::time::timeout(BROWSER_WAIT, wait).await.map_err(|_| LoginError::TimedOut)??;
        let (transport, config, clock) = self.session.login_parts();
        let form = code::code_request(&config.client, &code, &self.redirect_uri, self.verifier.expose_secret());
        let mut endpoint = TokenEndpoint::new(transport, config, clock, self.dpop_key.clone());
        let sent_at = tokio::time::Instant::now();
        let mut answer = None;
        // A nonce challenge (the server did not look at the code) is answered
        // at once with the nonce, a bounded number of times.
        for _ in 0..=MAX_NONCE_RETRIES {
            let response =
                endpoint.post(&form).await.map_err(|error| LoginError::Unreachable { endpoint: "token", error })?;
            let classified = response.classify(&config.session.policy, clock.wall());
            let challenged = matches!(classified, Classified::NonceRequired(_)) && endpoint.nonce.is_some();
            answer = Some(classified);
            if !challenged || endpoint.key.is_none() {
                break;
            }
        }
        let tokens = code::exchanged(answer.ok_or(LoginError::TimedOut)?)?;
        info!(dpop = self.dpop_key.is_some(), "code login exchanged");
        let sent_at = sent_at.into_std();
        self.session.log_in_response(tokens, Some(sent_at), self.dpop_key).await.map_err(LoginError::Session)
    }

    /// Serves the listener until a request carries this login's answer.
    async fn await_redirect(&self) -> Result<AuthorizationCode, LoginError> {
        for _ in 0..MAX_CONNECTIONS {
            let (mut stream, _) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    warn!(%error, "accepting on the login's loopback port failed");
                    continue;
                }
            };
            let target = match tokio::time::timeout(REQUEST_WAIT, read_target(&mut stream)).await {
                Ok(Some(target)) => target,
                _ => {
                    respond(&mut stream, "400 Bad Request", "That was not a browser's request.").await;
                    continue;
                }
            };
            let (_, config, _) = self.session.login_parts();
            let expected = Expected { path: CALLBACK_PATH, state: &self.state, issuer: config.issuer.as_deref() };
            match code::parse_redirect(&target, &expected) {
                Ok(code) => {
                    respond(&mut stream, "200 OK", "You are logged in. You can close this window.").await;
                    return Ok(code);
                }
                Err(RedirectError::OtherPath) => respond(&mut stream, "404 Not Found", "Not found.").await,
                Err(RedirectError::StateMismatch) => {
                    warn!("a redirect without this login's state was ignored");
                    respond(&mut stream, "400 Bad Request", "This is not the login in progress.").await;
                }
                Err(refused) => {
                    respond(&mut stream, "200 OK", "The login did not complete. You can close this window.").await;
                    return Err(refused.into());
                }
            }
        }
        Err(LoginError::Setup(format!("the loopback port got {MAX_CONNECTIONS} requests and none was the login's")))
    }
}

/// Reads one HTTP request's head (at most the core's bound) and returns its
/// target, for a `GET`; `None` for anything else.
async fn read_target(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::with_capacity(1024);
    let mut buffer = [0u8; 1024];
    while !head.windows(4).any(|window| window == b"\r\n\r\n") {
        let read = stream.read(&mut buffer).await.ok().filter(|read| *read > 0)?;
        head.extend_from_slice(buffer.get(..read)?);
        if head.len() > code::MAX_REDIRECT_BYTES + 1024 {
            return None;
        }
    }
    let line = head.split(|byte| *byte == b'\r').next()?;
    let mut parts = std::str::from_utf8(line).ok()?.split(' ');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("GET"), Some(target), Some(version)) if version.starts_with("HTTP/") => Some(target.to_owned()),
        _ => None,
    }
}

/// A small page for the browser, then the connection is closed.
async fn respond(stream: &mut TcpStream, status: &str, message: &str) {
    let body = format!("<!doctype html><title>Login</title><p>{message}</p>");
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    // Best effort: the browser may have gone; the login's outcome stands.
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}
