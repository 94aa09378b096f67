//! A `tower` layer that authorizes requests: for hyper, tonic and axum
//! clients, the way [`middleware`](crate::middleware) does it for reqwest.
//!
//! [`AuthLayer`] wraps any `Service<http::Request<B>>`: it attaches
//! `Authorization: Bearer …` from the session; on a 401 it tells the session
//! which token was refused and sends a copy of the request once with the token
//! it hands back. A second 401 is returned as it is: there is no 401 loop.
//!
//! The copy needs the body twice. By default ([`CloneBody`]) the layer serves
//! bodies that are `Clone` (`Full<Bytes>`, `String`, `Empty`, …). For a
//! streaming body, say how to copy a request with [`AuthLayer::replay_with`],
//! or pass [`NoReplay`]: such a request is sent once and its 401 is
//! [`Error::UnauthorizedNotRetried`].
//!
//! ```no_run
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use hyper_util::client::legacy::Client;
//! use hyper_util::rt::TokioExecutor;
//! use tower::{ServiceBuilder, ServiceExt as _};
//!
//! # async fn example(session: freshen::AnySession) -> Result<(), tower::BoxError> {
//! let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
//! let api = ServiceBuilder::new().layer(freshen::tower::AuthLayer::new(session)).service(client);
//! let request = http::Request::get("http://api.example.com/me").body(Full::default())?;
//! let response = api.oneshot(request).await?;
//! println!("{}", response.status());
//! # Ok(())
//! # }
//! ```
//!
//! Each request runs in an `authorized_request` span that records the token's
//! generation and whether the request was retried after a 401.

use core::future::{Future, poll_fn};
use core::pin::Pin;
use core::task::{Context, Poll};

use http::{Request, Response, StatusCode};
use tower_layer::Layer;
use tower_service::Service;
use tracing::Instrument as _;

use crate::authorize::{authorize, dpop_header, heed_nonce, prepare_retry, record_answer, request_span};
use crate::store::Store;
use crate::transport::Transport;
use crate::{Error, Session, Token};

/// How the layer gets a second copy of a request, to send it again after a
/// 401; `None` when it cannot (the request is then sent once).
pub trait Replay<B> {
    /// A copy of `request`, made before it is sent.
    fn replay(&self, request: &Request<B>) -> Option<Request<B>>;
}

/// Copies requests whose body is `Clone`: the default.
#[derive(Clone, Copy, Debug, Default)]
pub struct CloneBody;

impl<B: Clone> Replay<B> for CloneBody {
    fn replay(&self, request: &Request<B>) -> Option<Request<B>> {
        let mut copy = Request::new(request.body().clone());
        *copy.method_mut() = request.method().clone();
        *copy.uri_mut() = request.uri().clone();
        *copy.version_mut() = request.version();
        *copy.headers_mut() = request.headers().clone();
        *copy.extensions_mut() = request.extensions().clone();
        Some(copy)
    }
}

/// Never copies: every request is sent once (for streaming bodies).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoReplay;

impl<B> Replay<B> for NoReplay {
    fn replay(&self, _: &Request<B>) -> Option<Request<B>> {
        None
    }
}

impl<B, F> Replay<B> for F
where
    F: Fn(&Request<B>) -> Option<Request<B>>,
{
    fn replay(&self, request: &Request<B>) -> Option<Request<B>> {
        self(request)
    }
}

/// Why an authorized request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError<E> {
    /// No token could be had, or a 401 could not be retried. Also found in a
    /// boxed error's chain by [`Error::find_in`].
    #[error("the session could not authorize the request")]
    Session(#[source] Error),
    /// The wrapped service failed.
    #[error(transparent)]
    Inner(E),
}

impl<E> From<Error> for AuthError<E> {
    fn from(error: Error) -> Self {
        Self::Session(error)
    }
}

impl<E> AuthError<E> {
    /// The session's error, if the session failed (not the wrapped service).
    pub fn session(&self) -> Option<&Error> {
        match self {
            Self::Session(error) => Some(error),
            Self::Inner(_) => None,
        }
    }
}

/// Authorizes `request` with `token` (and a proof of it, for a bound token),
/// and gives back its URL for reading the answer's DPoP nonce: written out
/// only for a bound token, since a bearer token needs no proof and its
/// answer is not read for a nonce (an empty string then, not allocated).
fn authorize_for<B, T: Transport, S: Store>(
    request: &mut Request<B>,
    token: &Token,
    session: &Session<T, S>,
) -> Result<String, Error> {
    let url = if token.dpop_key().is_some() { request.uri().to_string() } else { String::new() };
    let proof = dpop_header(token, request.method().as_str(), &url, session)?;
    authorize(request.headers_mut(), token, proof)?;
    Ok(url)
}

/// Authorizes every request with a session's tokens (see the [module docs](self)).
#[derive(Debug)]
pub struct AuthLayer<T, S, R = CloneBody> {
    session: Session<T, S>,
    replay: R,
}

impl<T, S, R: Clone> Clone for AuthLayer<T, S, R> {
    fn clone(&self) -> Self {
        Self { session: self.session.clone(), replay: self.replay.clone() }
    }
}

impl<T, S> AuthLayer<T, S> {
    /// A layer that authorizes requests with `session`'s tokens, retrying a
    /// 401 once for bodies that are `Clone`.
    pub fn new(session: Session<T, S>) -> Self {
        Self { session, replay: CloneBody }
    }
}

impl<T, S, R> AuthLayer<T, S, R> {
    /// Copies requests with `replay` instead (a closure
    /// `Fn(&Request<B>) -> Option<Request<B>>`, or [`NoReplay`]).
    pub fn replay_with<R2>(self, replay: R2) -> AuthLayer<T, S, R2> {
        AuthLayer { session: self.session, replay }
    }
}

impl<Inner, T, S, R: Clone> Layer<Inner> for AuthLayer<T, S, R> {
    type Service = AuthService<Inner, T, S, R>;

    fn layer(&self, inner: Inner) -> Self::Service {
        AuthService { inner, session: self.session.clone(), replay: self.replay.clone() }
    }
}

/// The service [`AuthLayer`] makes.
#[derive(Debug)]
pub struct AuthService<Inner, T, S, R = CloneBody> {
    inner: Inner,
    session: Session<T, S>,
    replay: R,
}

impl<Inner: Clone, T, S, R: Clone> Clone for AuthService<Inner, T, S, R> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone(), session: self.session.clone(), replay: self.replay.clone() }
    }
}

impl<Inner, T, S, R, B, ResponseBody> Service<Request<B>> for AuthService<Inner, T, S, R>
where
    Inner: Service<Request<B>, Response = Response<ResponseBody>> + Clone + Send + 'static,
    Inner::Future: Send,
    Inner::Error: Send,
    ResponseBody: Send,
    T: Transport,
    S: Store,
    R: Replay<B>,
    B: Send + 'static,
{
    type Response = Response<ResponseBody>;
    type Error = AuthError<Inner::Error>;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(AuthError::Inner)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let replay = self.replay.replay(&request);
        // The service polled ready is the one that sends; its clone stays.
        let fresh_inner = self.inner.clone();
        let mut inner = core::mem::replace(&mut self.inner, fresh_inner);
        let session = self.session.clone();
        let send = async move {
            let token = session.access_token().await?;
            let url = authorize_for(&mut request, &token, &session)?;
            let response = inner.call(request).await.map_err(AuthError::Inner)?;
            let challenged = heed_nonce(&session, &token, &url, response.status(), response.headers());
            // Once more at most: after a DPoP nonce challenge with the same
            // token (it is good), after any other 401 with a fresh one.
            let retry = if challenged {
                replay.map(|replay| (replay, token.clone()))
            } else if response.status() == StatusCode::UNAUTHORIZED {
                Some(prepare_retry(&session, &token, replay).await?)
            } else {
                None
            };
            let response = match retry {
                Some((mut replay, with)) => {
                    let url = authorize_for(&mut replay, &with, &session)?;
                    poll_fn(|cx| inner.poll_ready(cx)).await.map_err(AuthError::Inner)?;
                    let response = inner.call(replay).await.map_err(AuthError::Inner)?;
                    heed_nonce(&session, &with, &url, response.status(), response.headers());
                    record_answer(with.generation(), true);
                    response
                }
                None => {
                    record_answer(token.generation(), false);
                    response
                }
            };
            tracing::debug!(status = response.status().as_u16(), "authorized request answered");
            Ok(response)
        };
        Box::pin(send.instrument(request_span()))
    }
}
