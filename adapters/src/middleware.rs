//! Attaching tokens to requests, and the one retry after a 401.
//!
//! [`AuthMiddleware`] plugs into reqwest-middleware; [`AuthorizedClient`]
//! wraps a plain `reqwest::Client` for apps without it. Both attach
//! `Authorization: Bearer …` (or, for a session bound by DPoP,
//! `Authorization: DPoP …` and a fresh proof of the request); on a 401 they
//! tell the session which token was refused and retry once with the token
//! it hands back. A resource server's DPoP nonce challenge is retried once
//! instead, with the same token and the server's nonce. A second 401 is
//! returned as it is: there is no 401 loop. A request whose body cannot be
//! cloned is sent once; its 401 comes back as [`Error::UnauthorizedNotRetried`],
//! and so does every 401 of a client made [`without_retry`](AuthMiddleware::without_retry)
//! (no copy of each request is kept for a retry then).
//!
//! Through reqwest-middleware, the session's errors arrive as
//! `reqwest_middleware::Error::Middleware`; [`Error::from_middleware`] gets
//! them back. Each request runs in an `authorized_request` span that records
//! the token's generation and whether the request was retried after a 401.

use http::StatusCode;
use reqwest::{Request, Response};
use reqwest_middleware::{Middleware, Next};
use tracing::Instrument as _;

use crate::authorize::{authorize, dpop_header, heed_nonce, prepare_retry, record_answer, request_span};
use crate::store::Store;
use crate::transport::Transport;
use crate::{Error, Session, Token};

/// What the first answer asks for: the request once more, with the same
/// token and the server's DPoP nonce, or with a fresh token after a 401.
#[derive(Clone, Copy)]
enum Retry {
    WithNonce,
    WithFreshToken,
}

/// Authorizes `request` with `token`. A proof names the request's method
/// and URL, read from the request itself: nothing is copied for a bearer
/// token.
fn authorize_request<T: Transport, S: Store>(
    request: &mut Request,
    token: &Token,
    session: &Session<T, S>,
) -> Result<(), Error> {
    let proof = dpop_header(token, request.method().as_str(), request.url().as_str(), session)?;
    authorize(request.headers_mut(), token, proof)
}

/// Reads the server's answer to a request that carried `token` for a DPoP
/// nonce (see [`heed_nonce`]), keyed by the URL that answered.
fn heed_answer<T: Transport, S: Store>(session: &Session<T, S>, token: &Token, response: &Response) -> bool {
    heed_nonce(session, token, response.url().as_str(), response.status(), response.headers())
}

/// Reads the first answer (a DPoP nonce it carries is remembered) and says
/// whether it asks for the request again: a nonce challenge to a bound token,
/// or a 401. Synchronous, so the usual final answer is decided without
/// moving the response through the retry's future.
fn retry_wanted<T: Transport, S: Store>(session: &Session<T, S>, response: &Response, used: &Token) -> Option<Retry> {
    if heed_answer(session, used, response) {
        // The token is good: the server wants its nonce in the proof.
        return Some(Retry::WithNonce);
    }
    (response.status() == StatusCode::UNAUTHORIZED).then_some(Retry::WithFreshToken)
}

/// The request to send again for `retry`, authorized, with the token it
/// carries; `None` when the first answer stands (a nonce challenge to a
/// request whose body cannot be sent twice).
async fn retry_request<T: Transport, S: Store>(
    session: &Session<T, S>,
    retry: Retry,
    replay: Option<Request>,
    used: &Token,
) -> Result<Option<(Request, Token)>, Error> {
    let (mut replay, token) = match retry {
        Retry::WithNonce => match replay {
            Some(replay) => (replay, used.clone()),
            None => return Ok(None),
        },
        Retry::WithFreshToken => prepare_retry(session, used, replay).await?,
    };
    authorize_request(&mut replay, &token, session)?;
    Ok(Some((replay, token)))
}

/// How a request goes out: through the rest of a reqwest-middleware chain,
/// or straight from a `reqwest::Client`. It is all [`AuthMiddleware`] and
/// [`AuthorizedClient`] differ in; [`send_authorized`] is their one flow.
trait SendRequest {
    /// How sending fails.
    type Error;
    /// Sends `request` (the first time, or the one retry).
    fn send(&mut self, request: Request) -> impl Future<Output = Result<Response, Self::Error>> + Send;
}

/// Why [`send_authorized`] failed: no token, or the request itself.
enum Failure<E> {
    Session(Error),
    Send(E),
}

impl<E> From<Error> for Failure<E> {
    fn from(error: Error) -> Self {
        Self::Session(error)
    }
}

/// Sends `request` with a token from `session`, and once more if the answer
/// asks for it ([`retry_wanted`]) and `retry` allows, in an
/// `authorized_request` span.
fn send_authorized<'a, T: Transport, S: Store, C: SendRequest>(
    session: &'a Session<T, S>,
    mut request: Request,
    client: &'a mut C,
    retry: bool,
) -> impl Future<Output = Result<Response, Failure<C::Error>>> + 'a {
    async move {
        // Copied before it carries a token: the copy is authorized afresh if
        // it is sent, and a request without headers of its own copies none.
        let replay = if retry { request.try_clone() } else { None };
        let token = session.access_token().await?;
        authorize_request(&mut request, &token, session)?;
        let response = client.send(request).await.map_err(Failure::Send)?;
        let retry = match retry_wanted(session, &response, &token) {
            None => None,
            // Boxed: the rare retry's future would otherwise swell every request's.
            Some(retry) => Box::pin(retry_request(session, retry, replay, &token)).await?,
        };
        let response = match retry {
            None => {
                record_answer(token.generation(), false);
                response
            }
            Some((replay, with)) => {
                record_answer(with.generation(), true);
                let response = client.send(replay).await.map_err(Failure::Send)?;
                heed_answer(session, &with, &response);
                response
            }
        };
        tracing::debug!(status = response.status().as_u16(), "authorized request answered");
        Ok(response)
    }
    .instrument(request_span())
}

/// The rest of a reqwest-middleware chain, after [`AuthMiddleware`].
struct RestOfChain<'a, 'e> {
    next: Next<'a>,
    extensions: &'e mut http::Extensions,
}

impl SendRequest for RestOfChain<'_, '_> {
    type Error = reqwest_middleware::Error;

    fn send(&mut self, request: Request) -> impl Future<Output = reqwest_middleware::Result<Response>> + Send {
        self.next.clone().run(request, self.extensions)
    }
}

impl SendRequest for &reqwest::Client {
    type Error = reqwest::Error;

    fn send(&mut self, request: Request) -> impl Future<Output = reqwest::Result<Response>> + Send {
        self.execute(request)
    }
}

/// reqwest-middleware support: `ClientBuilder::new(client).with(AuthMiddleware::new(session))`.
#[derive(Debug)]
pub struct AuthMiddleware<T, S> {
    session: Session<T, S>,
    retry: bool,
}

impl<T, S> AuthMiddleware<T, S> {
    /// Middleware that authorizes requests with `session`'s tokens.
    pub fn new(session: Session<T, S>) -> Self {
        Self { session, retry: true }
    }

    /// Sends every request once: a 401 tells the session its token was
    /// refused (the next request gets a fresh one) and comes back as
    /// [`Error::UnauthorizedNotRetried`], and no copy of a request is kept
    /// for a retry. A resource's DPoP nonce challenge comes back as the
    /// response it is; its nonce is remembered for the next request. For
    /// apps that resend on their own terms.
    #[must_use]
    pub fn without_retry(mut self) -> Self {
        self.retry = false;
        self
    }
}

#[async_trait::async_trait]
impl<T: Transport, S: Store> Middleware for AuthMiddleware<T, S> {
    async fn handle(
        &self,
        request: Request,
        extensions: &mut http::Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        let chain = &mut RestOfChain { next, extensions };
        send_authorized(&self.session, request, chain, self.retry).await.map_err(|failure| match failure {
            Failure::Session(error) => reqwest_middleware::Error::middleware(error),
            Failure::Send(error) => error,
        })
    }
}

/// Why an [`AuthorizedClient`] request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// No token could be had, or a 401 could not be retried.
    #[error(transparent)]
    Session(#[from] Error),
    /// The request itself failed.
    #[error(transparent)]
    Http(#[from] reqwest::Error),
}

/// A `reqwest::Client` that authorizes every request, for apps that do not
/// use reqwest-middleware.
#[derive(Debug, Clone)]
pub struct AuthorizedClient<T, S> {
    client: reqwest::Client,
    session: Session<T, S>,
    retry: bool,
}

impl<T: Transport, S: Store> AuthorizedClient<T, S> {
    /// Wraps `client`.
    pub fn new(client: reqwest::Client, session: Session<T, S>) -> Self {
        Self { client, session, retry: true }
    }

    /// Sends every request once, as [`AuthMiddleware::without_retry`] does.
    #[must_use]
    pub fn without_retry(mut self) -> Self {
        self.retry = false;
        self
    }

    /// Starts a request (then pass it to [`AuthorizedClient::send`], or
    /// build it and pass it to [`AuthorizedClient::execute`]).
    pub fn request(&self, method: reqwest::Method, url: impl reqwest::IntoUrl) -> reqwest::RequestBuilder {
        self.client.request(method, url)
    }

    /// Starts a GET (then pass it to [`AuthorizedClient::send`]).
    pub fn get(&self, url: impl reqwest::IntoUrl) -> reqwest::RequestBuilder {
        self.client.get(url)
    }

    /// Starts a POST (then pass it to [`AuthorizedClient::send`]).
    pub fn post(&self, url: impl reqwest::IntoUrl) -> reqwest::RequestBuilder {
        self.client.post(url)
    }

    /// Builds `request` and sends it as [`AuthorizedClient::execute`] does:
    /// `client.send(client.get(url)).await`.
    pub async fn send(&self, request: reqwest::RequestBuilder) -> Result<Response, ClientError> {
        self.execute(request.build()?).await
    }

    /// Sends `request` with a token, retrying once after a 401 (unless
    /// made [`without_retry`](AuthorizedClient::without_retry)).
    pub async fn execute(&self, request: Request) -> Result<Response, ClientError> {
        send_authorized(&self.session, request, &mut &self.client, self.retry).await.map_err(|failure| match failure {
            Failure::Session(error) => ClientError::Session(error),
            Failure::Send(error) => ClientError::Http(error),
        })
    }
}
