//! Tier 2: depth. The real driver ([`freshen::Session`]) on client hosts,
//! talking HTTP/1.1 through hyper over turmoil's simulated network to the
//! reference authority, with many concurrent callers per host.
//!
//! Faults: partitions that heal, client crashes that restart the process from
//! its store, server restarts, 503s and 429s, answers dropped after the server
//! committed, and failing store writes. Every driver is watched by the same
//! [`ClientMonitor`] as tier 1 (through its observer hook), the authority by
//! the [`AuthorityMonitor`]. A safety phase with faults is followed by a
//! healed liveness phase in which every caller must be served (or the session
//! logged out for a cause the logout rules accept).
//!
//! Deterministic: turmoil, the sessions, the callers and the faults all draw
//! from the seed, and nothing reads the OS clock or randomness.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::authority::{AuditOp, AuditOutcome, AuthorityConfig, Refusal};
use crate::check::{
    AuthorityMonitor, ClientMonitor, Invariant, LogoutEvidence, Plant, SharedStoreMonitor, Violation, judge_logout,
};
use crate::harness::{Start, logout_name};
use bytes::Bytes;
use freshen::store::{Store, StoreError, StoreLock};
use freshen::transport::{HttpResponse, Transport, TransportError};
use freshen::{Config, Environment, Observer, Session};
use freshen_core::oauth::{Client, FormRequest, MAX_BODY_BYTES};
use freshen_core::rng::SplitMix64;
use freshen_core::session::{Command, Event, LogoutCause, SessionConfig, StateView, TransportFailure};
use freshen_core::stored::StoredSession;
use freshen_core::time::{MonoTime, UnixTime};
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use secrecy::{ExposeSecret, SecretString};

use crate::http::{State, answer, paths};

const AUTHORITY: &str = "authority";
const PORT: u16 = 80;

/// Fault rates (parts per thousand) and switches for one tier-2 world.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Faults {
    /// The token endpoint answers 503 without acting.
    pub server_error: u16,
    /// The token endpoint answers 429 without acting.
    pub rate_limit: u16,
    /// The token endpoint refuses by policy without acting: interaction
    /// required, invalid request or invalid client, a third each.
    pub policy_refusal: u16,
    /// The token endpoint acts, then drops the connection: the answer is lost.
    pub drop_after_commit: u16,
    /// A store write fails (half of them after the bytes landed).
    pub store_write_fail: u16,
    /// Partitions between a client and the authority, which then heal.
    pub partitions: bool,
    /// Client processes crash and restart from their store.
    pub crashes: bool,
    /// The authority restarts (its state survives, its connections do not).
    pub server_restarts: bool,
    /// A burst of callers comes with the user logging out (a new login follows).
    pub logout: u16,
    /// Client processes' wall clocks step forward (what a suspend looks like
    /// from inside: the monotonic clock fell behind) or back.
    pub clock_jumps: bool,
}

/// Everything that defines a tier-2 world besides its seed.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct WorldConfig {
    /// The sessions' configuration.
    pub session: SessionConfig,
    /// The authority's.
    pub authority: AuthorityConfig,
    /// Faults during the safety phase.
    pub faults: Faults,
    /// Client apps (each its own store and token family).
    pub hosts: usize,
    /// Processes of the first app, each its own host with its own driver and
    /// crashes, all sharing that app's store and its lock (a CLI run several
    /// times at once). More than one turns on
    /// [`SessionConfig::shared_store`].
    pub processes: usize,
    /// Mean time between two bursts of callers on one host.
    pub caller_interval: Duration,
    /// The most callers in one burst (a page load fires many requests at once).
    pub burst: u64,
    /// Whether the stored access tokens are already spent at start (an app
    /// opened after a night: the first burst finds no usable token).
    pub start_spent: bool,
    /// What each app's store holds at start: a pair, or one token alone.
    pub start: Start,
    /// How long faults are injected.
    pub safety_phase: Duration,
    /// How long the healed world then runs.
    pub liveness_phase: Duration,
    /// Each client host's ephemeral ports (first, last): a small range makes
    /// them wrap around often.
    pub ephemeral_ports: (u16, u16),
    /// Keep a printable trace.
    pub trace: bool,
}

impl WorldConfig {
    /// A world drawn from `seed`.
    pub fn sampled(seed: u64) -> Self {
        let mut rng = SplitMix64::new(seed ^ 0x7153_2000_0000_0002);
        let mut authority = AuthorityConfig::default();
        authority.access_ttl = Duration::from_secs(20 + rng.below(100));
        authority.refresh_ttl = Duration::from_secs(600 + rng.below(3600));
        authority.rotation = !rng.chance(1, 5);
        authority.grace = match rng.below(6) {
            0 | 1 => Duration::ZERO,
            // Longer than a whole retry cycle: the rule L1 applies.
            2 => Duration::from_secs(300 + rng.below(300)),
            _ => Duration::from_secs(rng.below(90)),
        };
        authority.grace_reuses = 1 + rng.below(6) as u32;
        authority.reuse_detection = !rng.chance(1, 4);
        // Real servers differ in what a grace replay returns and in whether a
        // refresh deletes the access token it replaces (Django OAuth Toolkit).
        authority.grace_replay = match rng.below(3) {
            0 => crate::authority::GraceReplay::SamePair,
            1 => crate::authority::GraceReplay::FreshPair,
            _ => crate::authority::GraceReplay::SamePairFullLifetime,
        };
        authority.revoke_previous_access = rng.chance(1, 3);
        let mut rate = |max: u64| if rng.chance(1, 2) { rng.below(max + 1) as u16 } else { 0 };
        let (server_error, rate_limit, drop_after_commit, store_write_fail, logout) =
            (rate(150), rate(80), rate(120), rate(150), rate(40));
        let policy_refusal = rate(30);
        let faults = Faults {
            server_error,
            rate_limit,
            policy_refusal,
            drop_after_commit,
            store_write_fail,
            partitions: rng.chance(1, 2),
            crashes: rng.chance(1, 2),
            server_restarts: rng.chance(1, 3),
            logout,
            clock_jumps: false,
        };
        let mut session = SessionConfig::default();
        let liveness_phase = session.wait_bound() + Duration::from_secs(60);
        let hosts = 1 + rng.below(3) as usize;
        let caller_interval = Duration::from_millis(100 + rng.below(3000));
        let burst = 1 + rng.below(30);
        let start_spent = rng.chance(1, 2);
        let start = match rng.below(8) {
            0 => Start::RefreshOnly,
            1 => Start::AccessOnly,
            _ => Start::Pair,
        };
        let safety_phase = Duration::from_secs(120 + rng.below(480));
        // Half the worlds run the first app as two to four processes sharing its store.
        let processes = if rng.chance(1, 2) { 2 + rng.below(3) as usize } else { 1 };
        session.shared_store = processes > 1;
        let faults = Faults { clock_jumps: rng.chance(1, 3), ..faults };
        Self {
            session,
            authority,
            faults,
            hosts,
            processes,
            caller_interval,
            burst,
            start_spent,
            start,
            safety_phase,
            liveness_phase,
            ephemeral_ports: EPHEMERAL_PORTS,
            trace: false,
        }
    }
}

impl WorldConfig {
    /// The same world, shaped so `plant` can show: a missing cross-process
    /// lock needs processes sharing a store (two to four of them).
    #[must_use]
    pub fn for_plant(mut self, plant: Option<Plant>) -> Self {
        match plant {
            Some(Plant::NoCrossProcessLock) => {
                self.processes = self.processes.max(2 + (self.safety_phase.as_secs() % 3) as usize);
                self.session.shared_store = true;
            }
            Some(Plant::LifetimeFromLastAttempt) => {
                self.authority.grace_replay = crate::authority::GraceReplay::SamePairFullLifetime;
                self.authority.grace = self.authority.grace.max(Duration::from_secs(120));
                self.faults.drop_after_commit = self.faults.drop_after_commit.max(100);
            }
            Some(Plant::RetryIgnoresRunningRefresh) => self.authority.revoke_previous_access = true,
            Some(Plant::RetriesInteractionRequired) => self.faults.policy_refusal = self.faults.policy_refusal.max(60),
            _ => {}
        }
        self
    }
}

/// What one tier-2 world did.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct Outcome {
    /// Invariant violations, client and authority.
    pub violations: Vec<Violation>,
    /// Refreshes the authority served.
    pub refreshes: u64,
    /// Callers that got a token.
    pub granted: u64,
    /// Callers that got none.
    pub failed: u64,
    /// Logouts by cause.
    pub logouts: BTreeMap<String, u64>,
    /// Faults injected, by kind.
    pub faults: BTreeMap<&'static str, u64>,
    /// The most connections one client host opened.
    pub most_connects: u64,
    /// The trace, when asked for.
    pub trace: Vec<String>,
}

/// Wall time inside the simulation.
fn sim_wall_clock() -> UnixTime {
    UnixTime::from_since_epoch(turmoil::since_epoch().unwrap_or_default())
}

/// The authority's answers with server-side faults.
#[derive(Debug)]
struct ServerFaults {
    rates: Mutex<Faults>,
    rng: Mutex<SplitMix64>,
    counts: Mutex<BTreeMap<&'static str, u64>>,
    /// Clients whose refresh answer was dropped after the server committed.
    dropped_for: Mutex<BTreeMap<String, u64>>,
}

impl ServerFaults {
    fn draw(&self, per_mille: u16, kind: &'static str) -> bool {
        let hit = per_mille > 0 && self.rng.lock().is_ok_and(|mut rng| rng.chance(u64::from(per_mille), 1000));
        if hit && let Ok(mut counts) = self.counts.lock() {
            *counts.entry(kind).or_default() += 1;
        }
        hit
    }
}

/// The connection is dropped instead of answered.
#[derive(Debug)]
struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("answer dropped after commit")
    }
}

impl std::error::Error for Dropped {}

async fn serve(
    state: &State,
    faults: &ServerFaults,
    request: Request<Incoming>,
) -> Result<http::Response<Full<Bytes>>, Dropped> {
    let (parts, body) = request.into_parts();
    let body = Limited::new(body, 16 * 1024).collect().await.map_err(|_| Dropped)?.to_bytes();
    if parts.method == Method::POST && parts.uri.path() == paths::TOKEN {
        let rates = faults.rates.lock().map(|r| r.clone()).unwrap_or_default();
        if faults.draw(rates.server_error, "server_error") {
            let mut response = http::Response::new(Full::new(Bytes::from_static(b"<html>503</html>")));
            *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            return Ok(response);
        }
        if faults.draw(rates.rate_limit, "rate_limit") {
            let mut response = http::Response::new(Full::new(Bytes::new()));
            *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
            response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("2"));
            return Ok(response);
        }
        if faults.draw(rates.policy_refusal, "policy_refusal") {
            use crate::authority::PolicyRefusal;
            let refusal = if faults.draw(333, "policy_refusal_interaction") {
                PolicyRefusal::InteractionRequired
            } else if faults.draw(500, "policy_refusal_invalid_request") {
                PolicyRefusal::InvalidRequest
            } else {
                PolicyRefusal::InvalidClient
            };
            let (status, body) = refusal.response();
            let mut response = http::Response::new(Full::new(Bytes::from(body)));
            *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
            response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
            return Ok(response);
        }
        let response = answer(state, &parts.method, parts.uri.path(), &parts.headers, &body);
        if faults.draw(rates.drop_after_commit, "drop_after_commit") {
            let client = form_urlencoded::parse(&body)
                .find(|(k, _)| k == "client_id")
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default();
            if let Ok(mut dropped) = faults.dropped_for.lock() {
                *dropped.entry(client).or_default() += 1;
            }
            return Err(Dropped);
        }
        return Ok(response);
    }
    Ok(answer(state, &parts.method, parts.uri.path(), &parts.headers, &body))
}

// turmoil keeps a server-side socket for a (client address, port) pair until
// the client's FIN or RST arrives, and panics ("... is already connected") when
// a SYN comes for a pair it still holds. It neither retransmits a FIN lost to a
// partition nor times out a half-open socket, so a client whose FIN was lost
// would, once its ephemeral ports wrapped around, reach a server that still
// holds its old connection: tier-2 seed 50176 did, after 67,500 callers on one
// host. Real stacks are saved by retransmission, server timeouts and TIME_WAIT;
// the world gets the same guarantees, which together make the collision
// impossible (`ConnectPacer` has the argument):
/// The authority closes every connection this long after accepting it, as a
/// real server's header-read and idle timeouts do.
const SERVER_CONNECTION_DEADLINE: Duration = Duration::from_secs(10);
/// A client gives up on a request (and its connection) after this long, as any
/// HTTP client with a timeout does. Longer than the sessions' own request
/// timeout, so refreshes are governed by the session, as in an app.
const CLIENT_REQUEST_DEADLINE: Duration = Duration::from_secs(15);
/// Every client host's ephemeral ports, unless a world says otherwise.
pub const EPHEMERAL_PORTS: (u16, u16) = (1024, 65535);
/// The pacer's window: a client socket's longest life, then the server's
/// longest hold of the same connection, and a second for the latencies.
const PACER_WINDOW: Duration =
    Duration::from_secs(CLIENT_REQUEST_DEADLINE.as_secs() + SERVER_CONNECTION_DEADLINE.as_secs() + 1);

/// Paces one client host's new connections so that no port is handed out
/// again while the server may still hold its previous connection.
///
/// turmoil assigns ports round robin, skipping ports in use. For port `p`,
/// assigned at `t1`, to be assigned again at `t2`, the allocator must pass all
/// `R` ports: each either assigned (a connect in `[t1, t2]`) or skipped (in use,
/// so opened at most [`CLIENT_REQUEST_DEADLINE`] before). With fewer than
/// [`PACER_WINDOW`] between `t1` and `t2`, all of them were opened within two
/// windows, so `R <= 2 * 2 * per_window`, which `per_window` (a quarter of
/// `R`, rounded down) makes false. Hence `t2 - t1 >= PACER_WINDOW`, by when the server has dropped its
/// side ([`SERVER_CONNECTION_DEADLINE`]) and its FIN has arrived. Ordinary
/// worlds open far fewer connections (tier 2's default campaign never reaches
/// the bound), so the pacer only ever delays a pathological burst.
#[derive(Debug)]
struct ConnectPacer {
    /// The most connections per window.
    per_window: u32,
    /// The current window's start and the connections opened in it.
    window: Mutex<(Duration, u32)>,
    /// Connections opened in all.
    connects: AtomicU64,
}

impl ConnectPacer {
    /// A pacer for a host whose ephemeral ports are `first..=last`.
    fn for_ports((first, last): (u16, u16)) -> Self {
        let ports = u32::from(last.saturating_sub(first)) + 1;
        Self {
            per_window: ((ports - 1) / 4).max(1),
            window: Mutex::new((Duration::ZERO, 0)),
            connects: AtomicU64::new(0),
        }
    }

    /// Waits, if the window's connections are spent, until the next window.
    async fn admit(&self) {
        loop {
            let now = turmoil::sim_elapsed().unwrap_or_default();
            let wait = match self.window.lock() {
                Ok(mut window) => {
                    if now >= window.0 + PACER_WINDOW {
                        *window = (now, 0);
                    }
                    if window.1 < self.per_window {
                        window.1 += 1;
                        self.connects.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    window.0 + PACER_WINDOW - now
                }
                Err(_) => return,
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// HTTP/1.1 over turmoil: one connection per request, so a lost connection
/// loses exactly one answer.
async fn send(pacer: &ConnectPacer, request: Request<Full<Bytes>>) -> Result<http::Response<Bytes>, TransportFailure> {
    pacer.admit().await;
    match tokio::time::timeout(CLIENT_REQUEST_DEADLINE, exchange(request)).await {
        Ok(answer) => answer,
        Err(_) => Err(TransportFailure::Interrupted),
    }
}

async fn exchange(request: Request<Full<Bytes>>) -> Result<http::Response<Bytes>, TransportFailure> {
    let stream = turmoil::net::TcpStream::connect((AUTHORITY, PORT)).await.map_err(|_| TransportFailure::NotSent)?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|_| TransportFailure::NotSent)?;
    // The connection task owns the socket: it too ends by the deadline.
    tokio::spawn(tokio::time::timeout(CLIENT_REQUEST_DEADLINE, connection));
    let response = sender.send_request(request).await.map_err(|_| TransportFailure::Interrupted)?;
    let (parts, body) = response.into_parts();
    let body =
        Limited::new(body, MAX_BODY_BYTES + 1).collect().await.map_err(|_| TransportFailure::Interrupted)?.to_bytes();
    Ok(http::Response::from_parts(parts, body))
}

/// freshen's transport over turmoil, paced with its host's other connections.
#[derive(Clone, Debug)]
struct TurmoilTransport {
    pacer: Arc<ConnectPacer>,
}

impl Transport for TurmoilTransport {
    async fn post_form(&self, url: &str, form: &FormRequest) -> Result<HttpResponse, TransportError> {
        let path = url.rsplit_once(AUTHORITY).map_or(url, |(_, path)| path);
        let request = Request::post(path)
            .header(header::HOST, AUTHORITY)
            .header(header::CONTENT_TYPE, FormRequest::CONTENT_TYPE)
            .body(Full::new(Bytes::from(form.expose_body().to_owned())))
            .map_err(|_| TransportFailure::NotSent)?;
        let response = send(&self.pacer, request).await?;
        let headers = response.headers().iter().map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()));
        Ok(HttpResponse::new(response.status().as_u16(), headers.collect::<Vec<_>>(), response.body().to_vec()))
    }
}

/// A client host's store: it lives outside the host, so it survives crashes;
/// a write lands whole or not at all.
#[derive(Clone, Debug)]
struct SimStore {
    blob: Arc<Mutex<Option<SecretString>>>,
    /// The lock the app's processes share; a crashed host's guard dies with
    /// its runtime, as an OS file lock dies with its process.
    lock: Arc<tokio::sync::Mutex<()>>,
    fail_rate: Arc<Mutex<u16>>,
    rng: Arc<Mutex<SplitMix64>>,
    failures: Arc<AtomicU64>,
}

impl SimStore {
    fn fails(&self) -> Option<bool> {
        let rate = self.fail_rate.lock().map(|r| *r).unwrap_or(0);
        let mut rng = self.rng.lock().ok()?;
        if rate > 0 && rng.chance(u64::from(rate), 1000) {
            self.failures.fetch_add(1, Ordering::Relaxed);
            Some(rng.chance(1, 2))
        } else {
            None
        }
    }
}

impl Store for SimStore {
    async fn load(&self) -> Result<Option<StoredSession>, StoreError> {
        let blob = self.blob.lock().map_err(|_| StoreError::Unavailable("poisoned"))?.clone();
        match blob {
            None => Ok(None),
            Some(blob) => StoredSession::decode(blob.expose_secret().as_bytes()).map(Some).map_err(StoreError::Corrupt),
        }
    }

    async fn save(&self, session: &StoredSession) -> Result<(), StoreError> {
        let landed_anyway = self.fails();
        if landed_anyway != Some(false) {
            *self.blob.lock().map_err(|_| StoreError::Unavailable("poisoned"))? = Some(session.encode());
        }
        match landed_anyway {
            None => Ok(()),
            Some(_) => Err(StoreError::Unavailable("simulated store failure")),
        }
    }

    async fn clear(&self) -> Result<(), StoreError> {
        *self.blob.lock().map_err(|_| StoreError::Unavailable("poisoned"))? = None;
        Ok(())
    }

    async fn lock(&self) -> Result<StoreLock, StoreError> {
        Ok(StoreLock::new(Arc::clone(&self.lock).lock_owned().await))
    }
}

/// Runs the client checker over a driver, and keeps its trace.
#[derive(Debug)]
struct Watch {
    name: String,
    /// This process's number within its app, for the app's shared-store monitor.
    process: usize,
    shared: Arc<Mutex<SharedStoreMonitor>>,
    monitor: Mutex<ClientMonitor>,
    trace: Option<Mutex<Vec<String>>>,
    logouts: Mutex<BTreeMap<String, u64>>,
}

impl Watch {
    fn line(&self, line: impl FnOnce() -> String) {
        if let Some(trace) = &self.trace
            && let Ok(mut trace) = trace.lock()
        {
            trace.push(line());
        }
    }
}

impl Watch {
    /// The process died: what it held in memory is gone, its lock with it.
    /// Told at the crash itself, not when the next incarnation starts: the
    /// lock passes to another process at once, and its refreshes must not be
    /// judged against requests of a process that no longer exists.
    fn crashed(&self) {
        if let Ok(mut monitor) = self.monitor.lock() {
            monitor.crash();
        }
        if let Ok(mut shared) = self.shared.lock() {
            shared.crash(self.process);
        }
    }
}

impl Observer for Watch {
    fn event(&self, now: MonoTime, event: &Event) {
        self.line(|| format!("{} {now} {event:?}", self.name));
        if let Ok(mut shared) = self.shared.lock() {
            shared.event(self.process, world_time(now), event);
        }
        if let Ok(mut monitor) = self.monitor.lock() {
            monitor.event(now, event);
        }
    }

    fn command(&self, now: MonoTime, command: &Command) {
        self.line(|| format!("{} {now}   -> {command:?}", self.name));
        if let Ok(mut shared) = self.shared.lock() {
            shared.command(self.process, world_time(now), command);
        }
        if let Some(cause) = match command {
            Command::StateChanged(view) => view.logout_cause(),
            _ => None,
        } && let Ok(mut logouts) = self.logouts.lock()
        {
            *logouts.entry(logout_name(&cause).to_owned()).or_default() += 1;
        }
        if let Ok(mut monitor) = self.monitor.lock() {
            monitor.command(now, command);
        }
    }

    fn step_end(&self, now: MonoTime, next_timeout: Option<MonoTime>) {
        if let Ok(mut monitor) = self.monitor.lock() {
            monitor.step_end(now, next_timeout);
        }
    }
}

/// The simulation's clock, shared by every host: a driver's own clock starts
/// when its process does, so processes compare times on this one.
fn world_time(fallback: MonoTime) -> MonoTime {
    turmoil::sim_elapsed().map_or(fallback, MonoTime::from_elapsed)
}

/// One client process on its own host: its store (shared with the other
/// processes of its app), checker and counters survive its crashes.
#[derive(Debug)]
struct Host {
    /// Numbers the process among all of them.
    index: usize,
    /// The app it belongs to: its client id, store and token family.
    app: usize,
    name: String,
    store: SimStore,
    watch: Arc<Watch>,
    incarnation: AtomicU32,
    granted: AtomicU64,
    failed: AtomicU64,
    /// After the network healed: callers that got no token, and the last state seen.
    failed_after_heal: AtomicU64,
    healed: std::sync::atomic::AtomicBool,
    last_state: Mutex<Option<StateView>>,
    /// Whether the safety phase's faults still run.
    faulty: std::sync::atomic::AtomicBool,
    logouts: AtomicU64,
    /// How far this process's wall clock has been stepped, in seconds (signed).
    wall_step: Arc<std::sync::atomic::AtomicI64>,
    /// The host's connections, over all its incarnations: ports are the host's.
    pacer: Arc<ConnectPacer>,
    /// A caller was told the session has no refresh token left: log in again.
    needs_login: std::sync::atomic::AtomicBool,
    /// A login for it is under way (cleared when that task ends, or dies with a crash).
    relogin_running: Arc<std::sync::atomic::AtomicBool>,
}

fn client_id(app: usize) -> String {
    format!("client-{app}")
}

/// One caller: a token (now and then a forced refresh), the resource, and
/// one retry after a 401.
async fn caller(session: Session<TurmoilTransport, SimStore>, host: Arc<Host>, forced: bool) {
    let healed = host.healed.load(Ordering::Acquire);
    let answer = if forced { session.refresh().await } else { session.access_token().await };
    let token = match answer {
        Ok(token) => token,
        Err(freshen::Error::MissingRefreshToken | freshen::Error::InteractionRequired(_)) => {
            // An access token alone has run out, or the server wants the user
            // to act: the app sends the user to log in.
            host.failed.fetch_add(1, Ordering::Relaxed);
            host.needs_login.store(true, Ordering::Release);
            return;
        }
        Err(_) => {
            host.failed.fetch_add(1, Ordering::Relaxed);
            if healed && host.healed.load(Ordering::Acquire) {
                host.failed_after_heal.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
    };
    host.granted.fetch_add(1, Ordering::Relaxed);
    let mut token = token;
    for attempt in 0..2 {
        let Ok(bearer) = token.authorization().cloned() else { return };
        let Ok(request) = Request::get(paths::RESOURCE)
            .header(header::HOST, AUTHORITY)
            .header(header::AUTHORIZATION, bearer)
            .body(Full::new(Bytes::new()))
        else {
            return;
        };
        match send(&host.pacer, request).await {
            Ok(response) if response.status() == StatusCode::UNAUTHORIZED && attempt == 0 => {
                match session.retry_token(&token).await {
                    Ok(fresh) => token = fresh,
                    Err(_) => return,
                }
            }
            _ => return,
        }
    }
}

/// The user logs out, then logs in again half a minute later (through the
/// authority's password grant).
async fn log_out_and_back_in(session: Session<TurmoilTransport, SimStore>, host: Arc<Host>, log_out: bool) {
    /// Ends the "login under way" mark however the task ends.
    struct Running(Arc<std::sync::atomic::AtomicBool>);
    impl Drop for Running {
        fn drop(&mut self) {
            self.0.store(false, Ordering::Release);
        }
    }
    let _running = (!log_out).then(|| Running(Arc::clone(&host.relogin_running)));
    if log_out {
        session.log_out().await;
    }
    tokio::time::sleep(Duration::from_secs(30)).await;
    let sent_at = tokio::time::Instant::now().into_std();
    let body = format!("grant_type=password&client_id={}&username=user&password=pw", client_id(host.app));
    let Ok(request) = Request::post(paths::TOKEN)
        .header(header::HOST, AUTHORITY)
        .header(header::CONTENT_TYPE, FormRequest::CONTENT_TYPE)
        .body(Full::new(Bytes::from(body)))
    else {
        return;
    };
    let Ok(response) = send(&host.pacer, request).await else { return };
    let response = HttpResponse::new(response.status().as_u16(), [], response.body().to_vec());
    if let freshen_core::oauth::Classified::Success(tokens) =
        response.classify(&freshen_core::oauth::Policy::default(), sim_wall_clock())
        && session.log_in_sent_at(tokens, sent_at).await.is_ok()
    {
        host.needs_login.store(false, Ordering::Release);
    }
}

async fn run_host(config: WorldConfig, seed: u64, host: Arc<Host>, plant: Option<Plant>) -> turmoil::Result {
    let incarnation = host.incarnation.fetch_add(1, Ordering::AcqRel);
    if incarnation > 0 {
        // The monitors learned of the crash when it happened (`Watch::crashed`).
        host.watch.line(|| format!("{} crash: incarnation {incarnation} starts", host.name));
    }
    let mut session_config = config.session.clone();
    session_config.plant = plant;
    let freshen_config =
        Config::new(format!("http://{AUTHORITY}{}", paths::TOKEN), Client::public(client_id(host.app)))
            .with_revocation_endpoint(format!("http://{AUTHORITY}{}", paths::REVOKE))
            .with_session(session_config)
            // The simulated network's host names are not loopback.
            .with_plain_http_allowed();
    let step = Arc::clone(&host.wall_step);
    let wall_clock = freshen::WallClock::new(move || {
        let now = sim_wall_clock();
        let by = step.load(Ordering::Acquire);
        let secs = Duration::from_secs(by.unsigned_abs());
        if by >= 0 {
            now.saturating_add(secs)
        } else {
            UnixTime::from_since_epoch(now.since_epoch().saturating_sub(secs))
        }
    });
    let environment = Environment::seeded(seed ^ (host.index as u64) << 32 ^ u64::from(incarnation))
        .with_wall_clock(wall_clock)
        .with_observer(Arc::clone(&host.watch) as Arc<dyn Observer>);
    let transport = TurmoilTransport { pacer: Arc::clone(&host.pacer) };
    let session =
        Session::start_in(freshen_config, transport, host.store.clone(), environment).map_err(|e| e.to_string())?;
    let mut states = session.watch_state();
    let mut relogging = false;
    let mut rng = SplitMix64::new(seed ^ 0xCA11 ^ (host.index as u64) << 16 ^ u64::from(incarnation));
    let mean = u64::try_from(config.caller_interval.as_millis()).unwrap_or(1000).max(1);
    loop {
        tokio::time::sleep(Duration::from_millis(1 + rng.below(2 * mean))).await;
        if let Ok(mut last) = host.last_state.lock() {
            *last = Some(states.borrow_and_update().clone());
        }
        let logout = u64::from(config.faults.logout);
        if host.faulty.load(Ordering::Acquire) && logout > 0 && rng.chance(logout, 1000) {
            host.logouts.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(log_out_and_back_in(session.clone(), Arc::clone(&host), true));
        } else if host.needs_login.load(Ordering::Acquire) && !host.relogin_running.swap(true, Ordering::AcqRel) {
            // Out of tokens without a logout: one login at a time, until one lands.
            tokio::spawn(log_out_and_back_in(session.clone(), Arc::clone(&host), false));
        } else if matches!(states.borrow().logout_cause(), Some(LogoutCause::EndedElsewhere | LogoutCause::NoSession))
            && !relogging
        {
            // The user logged out in another process of this app (this one
            // saw it, or restarted after it); here too they log in again.
            relogging = true;
            tokio::spawn(log_out_and_back_in(session.clone(), Arc::clone(&host), false));
        }
        if !states.borrow().needs_login() {
            relogging = false;
        }
        for _ in 0..1 + rng.below(config.burst) {
            // The app forces a refresh now and then (a changed profile, a suspect token).
            let forced = rng.chance(1, 200);
            tokio::spawn(caller(session.clone(), Arc::clone(&host), forced));
        }
    }
}

/// A fault the controller applies at a point in simulated time.
#[derive(Clone, Copy, Debug)]
enum Action {
    Partition(usize),
    Repair(usize),
    Crash(usize),
    RestartServer,
    /// Steps a process's wall clock by this many seconds.
    StepClock(usize, i64),
}

/// Runs one tier-2 world for `seed`. `plant` breaks the sessions on purpose.
pub fn run(config: &WorldConfig, seed: u64, plant: Option<Plant>) -> Outcome {
    let mut rng = SplitMix64::new(seed);
    let total = config.safety_phase + config.liveness_phase;
    let mut sim = turmoil::Builder::new()
        .rng_seed(rng.next_u64())
        .simulation_duration(total + Duration::from_secs(60))
        .tick_duration(Duration::from_millis(5))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(40))
        // Bursts open many connections at once; the default backlog (64) would overflow.
        .tcp_capacity(8192)
        .ephemeral_ports(config.ephemeral_ports.0..=config.ephemeral_ports.1)
        .epoch(std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000))
        .build();

    let state = State::simulated(config.authority.clone(), rng.next_u64());
    let faults = Arc::new(ServerFaults {
        rates: Mutex::new(config.faults.clone()),
        rng: Mutex::new(rng.fork()),
        counts: Mutex::new(BTreeMap::new()),
        dropped_for: Mutex::new(BTreeMap::new()),
    });
    {
        let (state, faults) = (Arc::clone(&state), Arc::clone(&faults));
        sim.host(AUTHORITY, move || {
            let (state, faults) = (Arc::clone(&state), Arc::clone(&faults));
            async move {
                let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
                loop {
                    let (stream, _) = listener.accept().await?;
                    let (state, faults) = (Arc::clone(&state), Arc::clone(&faults));
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |request| {
                            let (state, faults) = (Arc::clone(&state), Arc::clone(&faults));
                            async move { serve(&state, &faults, request).await }
                        });
                        // One request per connection, closed by the deadline at the
                        // latest (see `ConnectPacer` for why both matter).
                        let connection = hyper::server::conn::http1::Builder::new()
                            .keep_alive(false)
                            .serve_connection(TokioIo::new(stream), service);
                        let _ = tokio::time::timeout(SERVER_CONNECTION_DEADLINE, connection).await;
                    });
                }
            }
        });
    }

    let mut hosts: Vec<Arc<Host>> = Vec::new();
    for app in 0..config.hosts {
        let issued = state.login(&client_id(app));
        // Spent: issued a lifetime ago, so it expires as the world starts.
        let issued_at = UnixTime::from_secs(1_800_000_000).since_epoch().saturating_sub(if config.start_spent {
            issued.expires_in
        } else {
            Duration::ZERO
        });
        let stored = match config.start {
            Start::RefreshOnly => StoredSession::refresh_only(issued.refresh_token),
            Start::AccessOnly => StoredSession::access_only(issued.access_token),
            Start::Empty | Start::Pair => StoredSession::pair(issued.access_token, issued.refresh_token),
        };
        let stored = (config.start != Start::Empty)
            .then(|| stored.with_access_expiry(UnixTime::from_since_epoch(issued_at), issued.expires_in).encode());
        let store = SimStore {
            blob: Arc::new(Mutex::new(stored)),
            lock: Arc::default(),
            fail_rate: Arc::new(Mutex::new(config.faults.store_write_fail)),
            rng: Arc::new(Mutex::new(rng.fork())),
            failures: Arc::new(AtomicU64::new(0)),
        };
        let shared = Arc::new(Mutex::new(SharedStoreMonitor::new(&config.session)));
        let processes = if app == 0 { config.processes.max(1) } else { 1 };
        for process in 0..processes {
            let name = if process == 0 { client_id(app) } else { format!("{}-{process}", client_id(app)) };
            hosts.push(Arc::new(Host {
                index: hosts.len(),
                app,
                name: name.clone(),
                store: store.clone(),
                watch: Arc::new(Watch {
                    name,
                    process,
                    shared: Arc::clone(&shared),
                    monitor: Mutex::new(ClientMonitor::new(&config.session)),
                    trace: config.trace.then(|| Mutex::new(Vec::new())),
                    logouts: Mutex::new(BTreeMap::new()),
                }),
                incarnation: AtomicU32::new(0),
                granted: AtomicU64::new(0),
                failed: AtomicU64::new(0),
                failed_after_heal: AtomicU64::new(0),
                healed: std::sync::atomic::AtomicBool::new(false),
                last_state: Mutex::new(None),
                faulty: std::sync::atomic::AtomicBool::new(true),
                logouts: AtomicU64::new(0),
                wall_step: Arc::default(),
                pacer: Arc::new(ConnectPacer::for_ports(config.ephemeral_ports)),
                needs_login: std::sync::atomic::AtomicBool::new(false),
                relogin_running: Arc::default(),
            }));
        }
    }
    for host in &hosts {
        let (config, host, plant) = (config.clone(), Arc::clone(host), plant);
        sim.host(host.name.clone(), move || run_host(config.clone(), seed, Arc::clone(&host), plant));
    }
    sim.client("controller", async move {
        tokio::time::sleep(total).await;
        Ok(())
    });

    // The fault schedule for the safety phase, drawn up front.
    let mut schedule: Vec<(Duration, Action)> = Vec::new();
    let safety_ms = u64::try_from(config.safety_phase.as_millis()).unwrap_or(0).max(1);
    for index in 0..hosts.len() {
        if config.faults.partitions {
            for _ in 0..1 + rng.below(3) {
                let at = Duration::from_millis(rng.below(safety_ms));
                let length = Duration::from_millis(500 + rng.below(30_000));
                schedule.push((at, Action::Partition(index)));
                schedule.push(((at + length).min(config.safety_phase), Action::Repair(index)));
            }
        }
        if config.faults.crashes {
            for _ in 0..1 + rng.below(3) {
                schedule.push((Duration::from_millis(rng.below(safety_ms)), Action::Crash(index)));
            }
        }
        if config.faults.clock_jumps {
            for _ in 0..1 + rng.below(2) {
                let at = Duration::from_millis(rng.below(safety_ms));
                // Mostly forward (a suspend, as seen from inside), up to two
                // token lifetimes; sometimes back, up to ten minutes.
                let by = if rng.chance(3, 4) {
                    3 + rng.below(2 * config.authority.access_ttl.as_secs().max(1)) as i64
                } else {
                    -(1 + rng.below(600) as i64)
                };
                schedule.push((at, Action::StepClock(index, by)));
            }
        }
    }
    if config.faults.server_restarts {
        schedule.push((Duration::from_millis(rng.below(safety_ms)), Action::RestartServer));
    }
    schedule.sort_by_key(|(at, _)| *at);
    let mut schedule = schedule.into_iter().peekable();
    let mut counts: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut healed = false;
    let mut extra = Vec::new();
    let mut crashes = vec![0u64; hosts.len()];

    loop {
        let elapsed = sim.elapsed();
        while let Some((at, action)) = schedule.peek().copied() {
            if at > elapsed {
                break;
            }
            schedule.next();
            let name = |i: usize| hosts.get(i).map_or_else(String::new, |h| h.name.clone());
            match action {
                Action::Partition(i) => {
                    sim.partition(name(i), AUTHORITY);
                    *counts.entry("partition").or_default() += 1;
                }
                Action::Repair(i) => sim.repair(name(i), AUTHORITY),
                Action::Crash(i) => {
                    if let Some(host) = hosts.get(i) {
                        host.watch.crashed();
                    }
                    sim.bounce(name(i));
                    if let Some(count) = crashes.get_mut(i) {
                        *count += 1;
                    }
                    *counts.entry("crash").or_default() += 1;
                }
                Action::StepClock(i, by) => {
                    if let Some(host) = hosts.get(i) {
                        host.wall_step.fetch_add(by, Ordering::AcqRel);
                        host.watch.line(|| format!("{} wall clock stepped {by:+} s", host.name));
                    }
                    *counts.entry("clock_jump").or_default() += 1;
                }
                Action::RestartServer => {
                    sim.bounce(AUTHORITY);
                    *counts.entry("server_restart").or_default() += 1;
                }
            }
        }
        if !healed && elapsed >= config.safety_phase {
            healed = true;
            for host in &hosts {
                sim.repair(host.name.clone(), AUTHORITY);
            }
            if let Ok(mut rates) = faults.rates.lock() {
                *rates = Faults::default();
            }
            for host in &hosts {
                if let Ok(mut rate) = host.store.fail_rate.lock() {
                    *rate = 0;
                }
                host.faulty.store(false, Ordering::Release);
            }
        }
        // Callers that start once the world has healed and every bound has passed must be served.
        if healed && elapsed >= config.safety_phase + config.session.wait_bound() {
            for host in &hosts {
                host.healed.store(true, Ordering::Release);
            }
        }
        match sim.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(error) => {
                extra.push(Violation {
                    invariant: Invariant::C9,
                    at: MonoTime::from_elapsed(sim.elapsed()),
                    detail: format!("a host failed: {error}"),
                });
                break;
            }
        }
    }

    let mut outcome = Outcome { refreshes: state.stats().refreshes, ..Outcome::default() };
    for (kind, count) in faults.counts.lock().map(|c| c.clone()).unwrap_or_default() {
        *counts.entry(kind).or_default() += count;
    }
    let mut authority_monitor = AuthorityMonitor::new(&config.authority);
    let audit = state.authority().take_audit();
    for entry in &audit {
        authority_monitor.observe(entry);
    }
    outcome.violations.extend_from_slice(authority_monitor.violations());
    let dropped = faults.dropped_for.lock().map(|d| d.clone()).unwrap_or_default();
    for host in &hosts {
        outcome.most_connects = outcome.most_connects.max(host.pacer.connects.load(Ordering::Relaxed));
        outcome.granted += host.granted.load(Ordering::Relaxed);
        outcome.failed += host.failed.load(Ordering::Relaxed);
        *counts.entry("logout").or_default() += host.logouts.load(Ordering::Relaxed);
        // What the app's processes share is counted once, with its first process.
        if host.watch.process == 0 {
            *counts.entry("store_write_fail").or_default() += host.store.failures.load(Ordering::Relaxed);
            if let Ok(shared) = host.watch.shared.lock() {
                outcome.violations.extend_from_slice(shared.violations());
            }
        }
        let app_processes = || hosts.iter().filter(|other| other.app == host.app);
        if let Ok(mut monitor) = host.watch.monitor.lock() {
            monitor.finish(MonoTime::ZERO, false);
            outcome.violations.extend_from_slice(monitor.violations());
        }
        let last = host.last_state.lock().ok().and_then(|s| s.clone());
        let after_heal = host.failed_after_heal.load(Ordering::Relaxed);
        for (cause, count) in host.watch.logouts.lock().map(|l| l.clone()).unwrap_or_default() {
            *outcome.logouts.entry(cause).or_default() += count;
        }
        let logged_out = last.as_ref().and_then(StateView::logout_cause);
        match logged_out {
            None if after_heal > 0 => extra.push(Violation {
                invariant: Invariant::C5,
                at: MonoTime::from_elapsed(total),
                detail: format!("{}: {after_heal} callers failed after the world healed", host.name),
            }),
            Some(cause) => {
                let client = client_id(host.app);
                let lost = dropped.get(&client).copied().unwrap_or(0) > 0;
                let refusal = last_refusal(&audit, &client);
                let evidence = LogoutEvidence {
                    lost_answer: lost,
                    // The app's family is shared: any of its processes' crashes counts.
                    crashed: app_processes().any(|p| crashes.get(p.index).is_some_and(|c| *c > 0)),
                    revoked: false,
                    suspended: false,
                    refusal,
                };
                let at = MonoTime::from_elapsed(total);
                if let Err(mut violation) = judge_logout(&config.session, &config.authority, &cause, evidence, at) {
                    violation.detail = format!("{}: {}", host.name, violation.detail);
                    extra.push(violation);
                }
            }
            None => {}
        }
        if let Some(trace) = &host.watch.trace {
            outcome.trace.extend(trace.lock().map(|t| t.clone()).unwrap_or_default());
        }
    }
    outcome.violations.extend(extra);
    outcome.faults = counts;
    outcome
}

/// The authority's last refusal of a refresh from `client`, if any.
fn last_refusal(audit: &[crate::authority::Audit], client: &str) -> Option<Refusal> {
    audit.iter().rev().find_map(|entry| match (&entry.op, &entry.outcome) {
        (AuditOp::Refresh { client: c, .. }, AuditOutcome::Refused(refusal)) if c == client => Some(*refusal),
        _ => None,
    })
}
