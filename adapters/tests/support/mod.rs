//! Test doubles for the driver: the testkit's in-process token endpoint (so
//! rotation, grace and revocation are the reference authority's real rules),
//! with answers that can be held behind a gate, and the testkit's store that
//! fails on demand.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use freshen::transport::{HttpResponse, Transport, TransportError};
use freshen::{Config, Session};

use freshen_core::oauth::{Client, FormRequest};
use freshen_core::session::{SessionConfig, TransportFailure};
use freshen_core::stored::StoredSession;
use freshen_core::time::MonoTime;
use freshen_sim::authority::AuthorityConfig;
pub use freshen_sim::faulty_store::FaultyMemoryStore;
use freshen_sim::http::{self, InProcess, State};
use tokio::sync::Semaphore;

pub const CLIENT: &str = "freshen-test";
pub const TOKEN_URL: &str = "https://auth.test/token";
pub const REVOKE_URL: &str = "https://auth.test/revoke";
pub const DEVICE_URL: &str = "https://auth.test/device_authorization";

/// The testkit's in-process token endpoint (the rules `freshen-sim serve`
/// serves, on tokio's paused clock), with the faults the driver's tests
/// script: failures before sending, hung or lost answers, a gate that holds
/// answers, and latency.
#[derive(Clone)]
pub struct AuthorityTransport {
    pub state: Arc<State>,
    endpoint: InProcess,
    latency: Duration,
    /// Answers wait for a permit here when the gate is closed.
    gate: Arc<Semaphore>,
    gated: Arc<Mutex<bool>>,
    pub refreshes: Arc<AtomicUsize>,
    pub revocations: Arc<AtomicUsize>,
    failures: Arc<Mutex<VecDeque<TransportFailure>>>,
    /// While set, requests to the token endpoint are never answered.
    hung: Arc<std::sync::atomic::AtomicBool>,
    /// The next answers of the token endpoint are lost after the authority acted.
    lose_answers: Arc<AtomicUsize>,
}

/// A token endpoint's answer, scripted by a test: (status, headers, body).
pub type Scripted = (u16, Vec<(String, Vec<u8>)>, String);

impl AuthorityTransport {
    pub fn new(config: AuthorityConfig) -> Self {
        let state = State::new(config, 1);
        Self {
            endpoint: InProcess::new(Arc::clone(&state)),
            state,
            latency: Duration::from_millis(20),
            gate: Arc::new(Semaphore::new(0)),
            gated: Arc::new(Mutex::new(false)),
            refreshes: Arc::new(AtomicUsize::new(0)),
            revocations: Arc::new(AtomicUsize::new(0)),
            failures: Arc::new(Mutex::new(VecDeque::new())),
            hung: Arc::default(),
            lose_answers: Arc::default(),
        }
    }

    /// The next `n` refreshes reach the authority, which acts on them, but
    /// their answers never come: the client times out.
    pub fn lose_next_answers(&self, n: usize) {
        self.lose_answers.store(n, Ordering::SeqCst);
    }

    /// The next token requests get these answers (counted as refreshes), not the authority's.
    pub fn answer_next(&self, answers: impl IntoIterator<Item = Scripted>) {
        self.state.script_token_answers(answers.into_iter().map(|(status, headers, body)| http::Scripted {
            status,
            headers: headers.into_iter().map(|(name, value)| (name, String::from_utf8(value).unwrap())).collect(),
            body: body.into_bytes(),
        }));
    }

    /// An OAuth error answer.
    pub fn oauth_error(status: u16, code: &str) -> Scripted {
        (status, Vec::new(), serde_json::json!({ "error": code }).to_string())
    }

    /// From now on (or until `false`), the token endpoint never answers.
    pub fn hang(&self, hung: bool) {
        self.hung.store(hung, Ordering::SeqCst);
    }

    pub fn now(&self) -> MonoTime {
        self.state.now()
    }

    /// Logs in at the authority and returns the session a store would hold,
    /// its access token expiring in `expires_in` (issued lifetime unknown, as
    /// in a blob of schema 1).
    pub fn login(&self, expires_in: Option<Duration>) -> StoredSession {
        let issued = self.state.login(CLIENT);
        // The session's own wall clock, so a token stored as spent reads as spent.
        let unix_now = freshen::system_clock();
        let mut stored = StoredSession::pair(issued.access_token, issued.refresh_token);
        stored.access_expires_at = expires_in.map(|e| unix_now.saturating_add(e));
        stored
    }

    /// As [`AuthorityTransport::login`], for a token issued for `lifetime`
    /// that has `left` of it left.
    pub fn login_issued(&self, lifetime: Duration, left: Duration) -> StoredSession {
        let mut stored = self.login(Some(left));
        stored.access_lifetime = Some(lifetime);
        stored
    }

    /// Holds every answer until [`AuthorityTransport::release`].
    pub fn hold(&self) {
        *self.gated.lock().unwrap() = true;
    }

    /// Lets `n` held answers through.
    pub fn release(&self, n: usize) {
        self.gate.add_permits(n);
    }

    /// The next requests fail this way before reaching the authority.
    pub fn fail_next(&self, failures: impl IntoIterator<Item = TransportFailure>) {
        self.failures.lock().unwrap().extend(failures);
    }
}

impl Transport for AuthorityTransport {
    async fn post_form(&self, url: &str, form: &FormRequest) -> Result<HttpResponse, TransportError> {
        if let Some(failure) = self.failures.lock().unwrap().pop_front() {
            return Err(failure.into());
        }
        let token_endpoint = url == TOKEN_URL;
        if token_endpoint {
            self.refreshes.fetch_add(1, Ordering::SeqCst);
            if self.hung.load(Ordering::SeqCst) {
                return std::future::pending().await;
            }
        } else if url == REVOKE_URL {
            self.revocations.fetch_add(1, Ordering::SeqCst);
        }
        tokio::time::sleep(self.latency).await;
        let response = self.endpoint.post_form(url, form).await?;
        let gated = *self.gated.lock().unwrap();
        if gated {
            self.gate.acquire().await.unwrap().forget();
        }
        let lost = token_endpoint
            && self.lose_answers.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
        if lost {
            return std::future::pending().await;
        }
        tokio::time::sleep(self.latency).await;
        Ok(response)
    }
}

pub fn config() -> Config {
    let mut session = SessionConfig::default();
    session.refresh_jitter = Duration::ZERO;
    Config::new(TOKEN_URL, Client::public(CLIENT)).with_revocation_endpoint(REVOKE_URL).with_session(session)
}

/// The environment every test session runs in: seed 7, the system's wall clock.
pub fn environment() -> freshen::Environment {
    freshen::Environment::seeded(7)
}

/// Starts a session in [`environment`].
pub fn start<T: freshen::transport::Transport, S: freshen::store::Store>(
    config: Config,
    transport: T,
    store: S,
) -> Session<T, S> {
    Session::start_in(config, transport, store, environment()).unwrap()
}

/// A session over the authority whose stored token expires in `expires_in`.
pub fn session(
    authority: AuthorityConfig,
    expires_in: Option<Duration>,
) -> (Session<AuthorityTransport, FaultyMemoryStore>, AuthorityTransport, FaultyMemoryStore) {
    let transport = AuthorityTransport::new(authority);
    let store = FaultyMemoryStore::holding(&transport.login(expires_in));
    let session = start(config(), transport.clone(), store.clone());
    (session, transport, store)
}

/// A forced refresh on a task of its own, given 100 ms (paused time) to get
/// its request out, or to queue behind the one out, before the test goes on.
pub async fn refresh_in_background<T, S>(
    session: &Session<T, S>,
) -> tokio::task::JoinHandle<Result<freshen::Token, freshen::Error>>
where
    T: freshen::transport::Transport,
    S: freshen::store::Store,
{
    let session = session.clone();
    let refresh = tokio::spawn(async move { session.refresh().await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    refresh
}
