//! The reference authority ([`crate::authority`]) served over HTTP/1.1
//! with hyper: a token endpoint (the `refresh_token`, `authorization_code`
//! with PKCE and RFC 8628 device grants, and a `password` grant that starts a
//! session for tests), an authorization endpoint that approves at once,
//! device authorization with a verification form, RFC 7009 revocation, and a
//! protected resource that answers 401 for an expired, revoked or unknown token.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::authority::{Authority, AuthorityConfig, AuthorityStats, Issued};
use bytes::Bytes;
use freshen_core::oauth::{Classified, Policy, TokenResponse};
use freshen_core::time::MonoTime;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

/// The largest request body the server reads.
const MAX_REQUEST_BYTES: usize = 16 * 1024;

/// Paths the server answers.
pub mod paths {
    /// The token endpoint.
    pub const TOKEN: &str = "/token";
    /// The revocation endpoint.
    pub const REVOKE: &str = "/revoke";
    /// A protected resource: 200 with a valid token, 401 otherwise.
    pub const RESOURCE: &str = "/resource";
    /// A resource that refuses every token (to test that a 401 is retried once).
    pub const ALWAYS_401: &str = "/always-401";
    /// The authorization endpoint (RFC 6749 §3.1): approves at once and
    /// redirects to the loopback `redirect_uri` with a code (PKCE S256 required).
    pub const AUTHORIZE: &str = "/authorize";
    /// The device authorization endpoint (RFC 8628 §3.1).
    pub const DEVICE_AUTHORIZATION: &str = "/device_authorization";
    /// The verification page, as a form: `user_code` and `decision`
    /// (`approve` or `deny`), the user's side of a device login.
    pub const DEVICE: &str = "/device";
}

/// What the protected resources counted.
#[derive(Debug, Default)]
struct ResourceCounts {
    requests: u64,
    nonce_challenges: u64,
}

/// The authority behind the server, with its clock and counters.
#[derive(Debug)]
pub struct State {
    authority: Mutex<Authority>,
    /// `None` in a turmoil simulation: time is the simulation's.
    origin: Option<Instant>,
    resource_counts: Mutex<ResourceCounts>,
    /// The resource server's record of proof ids (RFC 9449 §11.1): a proof
    /// presented twice is refused, as at the token endpoint.
    resource_proofs: Mutex<crate::authority::dpop::SeenJti>,
    /// How long the token endpoint holds an answer after it committed.
    token_answer_delay: Mutex<Duration>,
    /// Answers the token endpoint gives instead of the authority's, in order.
    scripted: Mutex<VecDeque<Scripted>>,
    /// The last request the token endpoint received.
    last_token_request: Mutex<Option<Received>>,
}

/// An answer the token endpoint gives as it is, instead of the authority's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scripted {
    /// Its status.
    pub status: u16,
    /// Its headers.
    pub headers: Vec<(String, String)>,
    /// Its body.
    pub body: Vec<u8>,
}

/// A request as the token endpoint received it (it holds the form's secrets:
/// for tests only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    /// Its method.
    pub method: String,
    /// Its `Content-Type`, if any.
    pub content_type: Option<String>,
    /// Its `Authorization`, if any.
    pub authorization: Option<String>,
    /// Its body.
    pub body: Vec<u8>,
}

impl State {
    /// A fresh authority.
    pub fn new(config: AuthorityConfig, seed: u64) -> Arc<Self> {
        Self::with(Authority::new(config, seed))
    }

    /// An authority inside a turmoil simulation: it reads the simulation's
    /// clock (zero before it starts) and records an audit for the checker.
    pub fn simulated(config: AuthorityConfig, seed: u64) -> Arc<Self> {
        Arc::new(Self {
            authority: Mutex::new(Authority::new(config, seed).with_audit()),
            origin: None,
            resource_counts: Mutex::default(),
            resource_proofs: Mutex::default(),
            token_answer_delay: Mutex::new(Duration::ZERO),
            scripted: Mutex::new(VecDeque::new()),
            last_token_request: Mutex::new(None),
        })
    }

    fn with(authority: Authority) -> Arc<Self> {
        Arc::new(Self {
            authority: Mutex::new(authority),
            origin: Some(Instant::now()),
            resource_counts: Mutex::default(),
            resource_proofs: Mutex::default(),
            token_answer_delay: Mutex::new(Duration::ZERO),
            scripted: Mutex::new(VecDeque::new()),
            last_token_request: Mutex::new(None),
        })
    }

    /// The authority's time: since the server started, or the simulation's.
    pub fn now(&self) -> MonoTime {
        MonoTime::from_elapsed(match self.origin {
            Some(origin) => origin.elapsed(),
            None => turmoil::sim_elapsed().unwrap_or_default(),
        })
    }

    /// The server's wall clock (the simulation's, under turmoil), which a
    /// DPoP proof's `iat` is judged by.
    pub fn wall(&self) -> freshen_core::time::UnixTime {
        match self.origin {
            Some(_) => freshen::system_clock(),
            None => freshen_core::time::UnixTime::from_since_epoch(turmoil::since_epoch().unwrap_or_default()),
        }
    }

    /// The authority, for direct use (a login, a revocation by an admin).
    pub fn authority(&self) -> MutexGuard<'_, Authority> {
        match self.authority.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Running totals (refreshes served, reuse detections, ...).
    pub fn stats(&self) -> AuthorityStats {
        self.authority().stats()
    }

    /// The token endpoint's next answers, given as they are (the authority
    /// is not asked while any is left).
    pub fn script_token_answers(&self, answers: impl IntoIterator<Item = Scripted>) {
        if let Ok(mut scripted) = self.scripted.lock() {
            scripted.extend(answers);
        }
    }

    /// The last request the token endpoint received.
    pub fn last_token_request(&self) -> Option<Received> {
        self.last_token_request.lock().ok().and_then(|last| last.clone())
    }

    /// The token endpoint commits at once, then holds its answer this long
    /// (on a real socket): a client killed meanwhile loses an answer the
    /// server acted on, the worst moment to die.
    pub fn set_token_answer_delay(&self, delay: Duration) {
        if let Ok(mut held) = self.token_answer_delay.lock() {
            *held = delay;
        }
    }

    /// Requests the protected resources received.
    pub fn resource_hits(&self) -> u64 {
        self.resource_counts.lock().map(|counts| counts.requests).unwrap_or_default()
    }

    /// Of those, the ones answered with a DPoP nonce challenge.
    pub fn resource_nonce_challenges(&self) -> u64 {
        self.resource_counts.lock().map(|counts| counts.nonce_challenges).unwrap_or_default()
    }

    fn count_resource_request(&self, count: impl FnOnce(&mut ResourceCounts)) {
        if let Ok(mut counts) = self.resource_counts.lock() {
            count(&mut counts);
        }
    }

    /// Starts a session for `client` (what a login would do).
    pub fn login(&self, client: &str) -> Issued {
        let now = self.now();
        self.authority().login(now, client, None)
    }
}

/// A server on a real socket.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Serves `state` on `addr` (use port 0 for any free port).
    pub async fn bind(state: Arc<State>, addr: SocketAddr) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let serving = Arc::clone(&state);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = Arc::clone(&serving);
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let state = Arc::clone(&state);
                        async move { Ok::<_, Infallible>(handle(&state, request).await) }
                    });
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
        Ok(Self { addr, state, task })
    }

    /// Serves a fresh authority on a free loopback port.
    pub async fn loopback(config: AuthorityConfig, seed: u64) -> std::io::Result<Self> {
        Self::bind(State::new(config, seed), SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// `http://127.0.0.1:port` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The authority and its counters.
    pub fn state(&self) -> &Arc<State> {
        &self.state
    }

    /// Logs `client` in over HTTP with this server's password grant, a
    /// stand-in for a browser login (a real server should not offer that
    /// grant): the tokens, and when the request was sent, for
    /// [`freshen::Session::log_in_sent_at`].
    pub async fn password_login(&self, client: &str) -> Result<(TokenResponse, std::time::Instant), LoginError> {
        let sent_at = std::time::Instant::now();
        let login = reqwest::Client::new()
            .post(self.url(paths::TOKEN))
            .form(&[("grant_type", "password"), ("client_id", client), ("username", "alice"), ("password", "x")])
            .send()
            .await?;
        let status = login.status().as_u16();
        let response = freshen::transport::HttpResponse::new(status, [], login.bytes().await?.to_vec());
        match response.classify(&Policy::default(), freshen::system_clock()) {
            Classified::Success(tokens) => Ok((tokens, sent_at)),
            _ => Err(LoginError::Refused { status }),
        }
    }
}

/// Why [`Server::password_login`] failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum LoginError {
    /// The request did not reach the server, or its answer was cut off.
    Http(reqwest::Error),
    /// The server answered with something other than tokens.
    Refused {
        /// The answer's HTTP status.
        status: u16,
    },
}

impl std::fmt::Display for LoginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Http(error) => write!(f, "the login request failed: {error}"),
            Self::Refused { status } => write!(f, "the login was refused (HTTP {status})"),
        }
    }
}

impl std::error::Error for LoginError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Http(error) => Some(error),
            Self::Refused { .. } => None,
        }
    }
}

impl From<reqwest::Error> for LoginError {
    fn from(error: reqwest::Error) -> Self {
        Self::Http(error)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn respond(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    if let Ok(value) = header::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    response
}

fn scripted_response(scripted: Scripted) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(scripted.body)));
    *response.status_mut() = StatusCode::from_u16(scripted.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    for (name, value) in scripted.headers {
        if let (Ok(name), Ok(value)) =
            (header::HeaderName::from_bytes(name.as_bytes()), header::HeaderValue::from_str(&value))
        {
            response.headers_mut().append(name, value);
        }
    }
    response
}

mod routes;

pub use routes::resource_nonce_challenge;

fn oauth_error(status: StatusCode, code: &str) -> Response<Full<Bytes>> {
    respond(status, "application/json", serde_json::json!({ "error": code }).to_string())
}

/// The authority as a [`Transport`](freshen::transport::Transport) in this
/// process: each form goes through [`answer`], the rules the server serves,
/// with no socket. Only the URL's path is read.
#[derive(Clone, Debug)]
pub struct InProcess {
    state: Arc<State>,
}

impl InProcess {
    /// A transport to `state`'s authority.
    pub fn new(state: Arc<State>) -> Self {
        Self { state }
    }
}

impl freshen::transport::Transport for InProcess {
    async fn post_form(
        &self,
        url: &str,
        form: &freshen_core::oauth::FormRequest,
    ) -> Result<freshen::transport::HttpResponse, freshen::transport::TransportError> {
        let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
        let path = after_scheme.find('/').map_or("/", |at| &after_scheme[at..]);
        let body = form.expose_body().as_bytes();
        let mut headers = http::HeaderMap::new();
        if let Some(host) = after_scheme.split('/').next().and_then(|host| header::HeaderValue::from_str(host).ok()) {
            headers.insert(header::HOST, host);
        }
        if let Some(proof) = form.expose_dpop().and_then(|proof| header::HeaderValue::from_str(proof).ok()) {
            headers.insert("dpop", proof);
        }
        let response = answer(&self.state, &Method::POST, path, &headers, body);
        // As over HTTP: the server has acted, its answer is on its way.
        let delay = self.state.token_answer_delay.lock().map(|d| *d).unwrap_or_default();
        if path == paths::TOKEN && !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let (parts, body) = response.into_parts();
        let body = body.collect().await.map(|collected| collected.to_bytes()).unwrap_or_default();
        let headers = parts.headers.iter().map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()));
        Ok(freshen::transport::HttpResponse::new(parts.status.as_u16(), headers.collect::<Vec<_>>(), body.to_vec()))
    }
}

/// Answers one request. Public so that other transports (turmoil) can serve it too.
pub async fn handle(state: &State, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let body = match Limited::new(body, MAX_REQUEST_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return oauth_error(StatusCode::PAYLOAD_TOO_LARGE, "invalid_request"),
    };
    let target = parts.uri.path_and_query().map_or("/", |target| target.as_str());
    let response = answer(state, &parts.method, target, &parts.headers, &body);
    let delay = state.token_answer_delay.lock().map(|d| *d).unwrap_or_default();
    if parts.uri.path() == paths::TOKEN && !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    response
}

/// Answers a request given as parts (`target` is the path and any query):
/// the rules, without the I/O.
pub fn answer(
    state: &State,
    method: &Method,
    target: &str,
    headers: &http::HeaderMap,
    body: &[u8],
) -> Response<Full<Bytes>> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let now = state.now();
    if path == paths::TOKEN {
        let header = |name| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let received = Received {
            method: method.to_string(),
            content_type: header(header::CONTENT_TYPE),
            authorization: header(header::AUTHORIZATION),
            body: body.to_vec(),
        };
        if let Ok(mut last) = state.last_token_request.lock() {
            *last = Some(received);
        }
        if let Some(scripted) = state.scripted.lock().ok().and_then(|mut s| s.pop_front()) {
            return scripted_response(scripted);
        }
    }
    let fields = |bytes: &[u8]| -> Fields { form_urlencoded::parse(bytes).into_owned().collect() };
    match (method, path) {
        (&Method::POST, paths::TOKEN) => routes::token(state, now, &fields(body), headers),
        (&Method::POST, paths::REVOKE) => routes::revoke(state, now, &fields(body)),
        (&Method::GET, paths::AUTHORIZE) => routes::authorize(state, now, &fields(query.as_bytes())),
        (&Method::POST, paths::DEVICE_AUTHORIZATION) => {
            let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("localhost");
            routes::device_authorization(state, now, &fields(body), host)
        }
        (&Method::POST, paths::DEVICE) => routes::device_decision(state, now, &fields(body)),
        (_, paths::RESOURCE | paths::ALWAYS_401) => routes::resource(state, now, method, path, headers),
        _ => respond(StatusCode::NOT_FOUND, "text/plain", ""),
    }
}

/// A form's or a query's fields.
type Fields = std::collections::HashMap<String, String>;
