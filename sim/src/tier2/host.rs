//! One client process on its own host: its driver, its callers, its logins
//! and logouts, and the watch that feeds the checker.

use super::*;
use freshen::tower::AuthLayer;
use freshen_core::dpop::DpopKey;
use freshen_core::oauth::Classified;
use std::pin::Pin;
use std::task::{Context, Poll};
use tower_layer::Layer as _;
use tower_service::Service;

/// Runs the client checker over a driver, and keeps its trace.
#[derive(Debug)]
pub(super) struct Watch {
    pub(super) name: String,
    /// This process's number within its app, for the app's shared-store monitor.
    pub(super) process: usize,
    pub(super) shared: Arc<Mutex<SharedStoreMonitor>>,
    pub(super) monitor: Mutex<ClientMonitor>,
    pub(super) trace: Option<Mutex<Vec<String>>>,
    pub(super) logouts: Mutex<BTreeMap<String, u64>>,
    /// This process's last logout, on the world's clock: when the user's
    /// wait for a login began here.
    pub(super) last_logout: Mutex<Option<(MonoTime, LogoutCause)>>,
    /// Tokens this process read in refresh answers (access and refresh, a
    /// salvaged one included): an answer the server committed that no
    /// process of the app read was lost, whatever lost it.
    pub(super) read_in_answers: Mutex<BTreeSet<Fingerprint>>,
}

impl Watch {
    pub(super) fn line(&self, line: impl FnOnce() -> String) {
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
    pub(super) fn crashed(&self) {
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
        if let Event::RefreshCompleted { outcome, .. } = event {
            let read = match outcome {
                Classified::Success(response) => [
                    Some(response.access_token.fingerprint()),
                    response.refresh_token.as_ref().map(RefreshToken::fingerprint),
                ],
                Classified::Malformed(malformed) => {
                    [None, malformed.salvaged_refresh_token.as_ref().map(RefreshToken::fingerprint)]
                }
                _ => [None, None],
            };
            if let Ok(mut answers) = self.read_in_answers.lock() {
                answers.extend(read.into_iter().flatten());
            }
        }
        if let Ok(mut shared) = self.shared.lock() {
            shared.event(self.process, world_time(now), event);
        }
        if let Ok(mut monitor) = self.monitor.lock() {
            monitor.event(now, event);
        }
    }

    fn command(&self, now: MonoTime, command: &Command) {
        self.line(|| format!("{} {now}   -> {:?}", self.name, crate::check::traced(command)));
        if let Ok(mut shared) = self.shared.lock() {
            shared.command(self.process, world_time(now), command);
        }
        if let Command::StateChanged(view) = command
            && let Some(cause) = view.logout_cause()
        {
            if let Ok(mut logouts) = self.logouts.lock() {
                *logouts.entry(logout_name(&cause).to_owned()).or_default() += 1;
            }
            if let Ok(mut last) = self.last_logout.lock() {
                *last = Some((world_time(now), cause));
            }
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
pub(super) fn world_time(fallback: MonoTime) -> MonoTime {
    turmoil::sim_elapsed().map_or(fallback, MonoTime::from_elapsed)
}

/// One client process on its own host: its store (shared with the other
/// processes of its app), checker and counters survive its crashes.
#[derive(Debug)]
pub(super) struct Host {
    /// Numbers the process among all of them.
    pub(super) index: usize,
    /// The app it belongs to: its client id, store and token family.
    pub(super) app: usize,
    pub(super) name: String,
    pub(super) store: HostStore,
    /// The database the app's processes share, if they share one.
    pub(super) database: Option<Arc<Database>>,
    pub(super) watch: Arc<Watch>,
    pub(super) incarnation: AtomicU32,
    pub(super) granted: AtomicU64,
    pub(super) failed: AtomicU64,
    /// After the network healed: callers that got no token, and the last state seen.
    pub(super) failed_after_heal: AtomicU64,
    /// How the last of those callers was answered.
    pub(super) last_unserved: Mutex<Option<String>>,
    /// After the network healed: callers told the session had ended, and
    /// the last logout they were told of (judged by the logout rules).
    pub(super) told_ended_after_heal: AtomicU64,
    pub(super) last_told_ended: Mutex<Option<(MonoTime, LogoutCause)>>,
    pub(super) healed: std::sync::atomic::AtomicBool,
    pub(super) last_state: Mutex<Option<StateView>>,
    /// Whether the safety phase's faults still run.
    pub(super) faulty: std::sync::atomic::AtomicBool,
    pub(super) logouts: AtomicU64,
    /// How far this process's wall clock has been stepped, in seconds (signed).
    pub(super) wall_step: Arc<std::sync::atomic::AtomicI64>,
    /// The host's connections, over all its incarnations: ports are the host's.
    pub(super) pacer: Arc<ConnectPacer>,
    /// A caller was told the session has no refresh token left: log in again.
    pub(super) needs_login: std::sync::atomic::AtomicBool,
    /// A login for it is under way (cleared when that task ends, or dies with a crash).
    pub(super) relogin_running: Arc<std::sync::atomic::AtomicBool>,
    /// Where the keys of this host's DPoP-bound logins come from (`None`:
    /// the world binds nothing).
    pub(super) dpop_keys: Option<Mutex<SplitMix64>>,
    /// How the user logs in.
    pub(super) login: LoginGrant,
    /// Logins started, for each login's own PKCE verifier, state and
    /// approval delay.
    pub(super) logins: AtomicU32,
    /// The world asked the process to exit gracefully (as on SIGTERM: the
    /// app calls `Session::shutdown`); taken by the host's loop.
    pub(super) shutdown_asked: std::sync::atomic::AtomicBool,
    /// Its session has shut down: the world restarts the process.
    pub(super) shut_down: std::sync::atomic::AtomicBool,
}

impl Host {
    /// Whether this process holds its app's database lock.
    pub(super) fn holds_the_lock(&self) -> bool {
        self.database.as_ref().is_some_and(|database| database.holds(self.watch.process))
    }

    /// This host's wall clock: the simulation's, stepped by the world.
    pub(super) fn wall(&self) -> UnixTime {
        shifted(sim_wall_clock(), self.wall_step.load(Ordering::Acquire))
    }

    /// This host's boot clock: nobody steps it.
    pub(super) fn boot(&self) -> Option<BootTime> {
        Some(boot_clock_at(self.index, sim_wall_clock()))
    }
}

pub(super) fn client_id(app: usize) -> String {
    format!("client-{app}")
}

/// One caller: a token (now and then a forced refresh), then the resource
/// through freshen's tower layer, as an app's client reaches it: the layer
/// proves bound requests, follows the resource server's DPoP nonces and
/// retries once after a 401. It takes the published token, which is the
/// one just granted unless it was withdrawn at once (no simulated time
/// passes between the two).
pub(super) async fn caller(session: Session<TurmoilTransport, HostStore>, host: Arc<Host>, forced: bool) {
    let healed = host.healed.load(Ordering::Acquire);
    let answer = if forced { session.refresh().await } else { session.access_token().await };
    match answer {
        Ok(_) => {}
        Err(freshen::Error::MissingRefreshToken | freshen::Error::InteractionRequired(_)) => {
            // An access token alone has run out, or the server wants the user
            // to act: the app sends the user to log in.
            host.failed.fetch_add(1, Ordering::Relaxed);
            host.needs_login.store(true, Ordering::Release);
            return;
        }
        Err(error) => {
            host.failed.fetch_add(1, Ordering::Relaxed);
            if healed && host.healed.load(Ordering::Acquire) {
                if let freshen::Error::LoggedOut(cause) = error {
                    host.told_ended_after_heal.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut last) = host.last_told_ended.lock() {
                        *last = Some((world_time(MonoTime::ZERO), cause));
                    }
                } else {
                    host.failed_after_heal.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut last) = host.last_unserved.lock() {
                        *last = Some(error.to_string());
                    }
                }
            }
            return;
        }
    }
    host.granted.fetch_add(1, Ordering::Relaxed);
    let request = Request::get(format!("http://{AUTHORITY}{}", paths::RESOURCE))
        .header(header::HOST, AUTHORITY)
        .body(Full::new(Bytes::new()));
    let Ok(request) = request else { return };
    let mut resource = AuthLayer::new(session).layer(ResourceClient(Arc::clone(&host.pacer)));
    if std::future::poll_fn(|cx| resource.poll_ready(cx)).await.is_ok() {
        // Its answer is the app's business: the verdict judges the grants.
        let _ = resource.call(request).await;
    }
}

/// The resource server as a tower service: each request goes out as
/// [`send`] sends it, paced with this host's other connections. The layer
/// proves the absolute URL; the wire carries the path, with `Host`.
#[derive(Clone)]
struct ResourceClient(Arc<ConnectPacer>);

impl Service<Request<Full<Bytes>>> for ResourceClient {
    type Response = http::Response<Bytes>;
    type Error = TransportFailure;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<Full<Bytes>>) -> Self::Future {
        if let Some(path) = request.uri().path_and_query().cloned() {
            *request.uri_mut() = path.into();
        }
        let pacer = Arc::clone(&self.0);
        Box::pin(async move { send(&pacer, request).await })
    }
}

/// How long the user waits after a logout before logging in again.
const RELOGIN_PAUSE: Duration = Duration::from_secs(30);

/// How long a login takes once a session has ended, in a healed world: the
/// user's pause, the host's next round (a few seconds), then the slowest
/// login, the device grant's (reading the code for up to 21 s, up to three
/// approvals 5 s apart, two polling intervals, one slowed down, the write).
/// Seed 1037012's logins took 53 and 55 s.
pub(super) const LOGIN_BOUND: Duration = RELOGIN_PAUSE.saturating_add(Duration::from_secs(90));

/// The user logs out, then logs in again half a minute later, by the
/// world's [`LoginGrant`].
pub(super) async fn log_out_and_back_in(session: Session<TurmoilTransport, HostStore>, host: Arc<Host>, log_out: bool) {
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
    tokio::time::sleep(RELOGIN_PAUSE).await;
    // A bound world logs in with a new key from the world's seed.
    let key = host.dpop_keys.as_ref().and_then(|keys| keys.lock().ok().map(|mut keys| dpop_key_from(&mut keys)));
    // Each login attempt of the host has its own number: its proofs' ids,
    // PKCE verifier, state and the user's pace come from it.
    let attempt = host.logins.fetch_add(1, Ordering::Relaxed);
    let outcome = match host.login {
        LoginGrant::Password => {
            let body = format!("grant_type=password&client_id={}&username=user&password=pw", client_id(host.app));
            log_in_by_exchange(&session, &host, attempt, body, key).await
        }
        LoginGrant::Device => log_in_by_device(&session, &host, attempt, key).await,
        LoginGrant::Code => log_in_by_code(&session, &host, attempt, key).await,
    };
    host.watch.line(|| match &outcome {
        Ok(()) => format!("{} login by {:?}", host.name, host.login),
        Err(why) => format!("{} login by {:?} failed: {why}", host.name, host.login),
    });
    let logged_in = outcome.is_ok();
    // A login that failed (a lost answer spent its code, the user was too
    // slow) is tried again by the user: the host's loop starts the next one.
    host.needs_login.store(!logged_in, Ordering::Release);
}

/// One exchange at the token endpoint that ends in a login: `body` sent with
/// a proof by `key` (following the server's nonce challenges, boundedly),
/// the answer read as a login grant's, the tokens logged in with the time
/// the request was sent.
async fn log_in_by_exchange(
    session: &Session<TurmoilTransport, HostStore>,
    host: &Host,
    attempt: u32,
    body: String,
    key: Option<DpopKey>,
) -> Result<(), String> {
    let mut nonce = None;
    for round in 0..=freshen_core::dpop::MAX_NONCE_RETRIES {
        let sent_at = tokio::time::Instant::now().into_std();
        let mut request = Request::post(paths::TOKEN)
            .header(header::HOST, AUTHORITY)
            .header(header::CONTENT_TYPE, FormRequest::CONTENT_TYPE);
        if let Some(key) = &key {
            let url = format!("http://{AUTHORITY}{}", paths::TOKEN);
            let jti = login_proof_id(host, attempt, round);
            let claims = ProofClaims::new("POST", &url, host.wall(), jti).with_nonce(nonce.as_ref());
            request = request.header("dpop", key.proof(&claims).expose());
        }
        let request = request.body(Full::new(Bytes::from(body.clone()))).map_err(|e| e.to_string())?;
        let response = send(&host.pacer, request).await.map_err(|e| format!("token endpoint: {e:?}"))?;
        let headers = response.headers().iter().map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()));
        let response =
            HttpResponse::new(response.status().as_u16(), headers.collect::<Vec<_>>(), response.body().to_vec());
        let answer = response.classify(&freshen_core::oauth::Policy::default(), sim_wall_clock());
        if matches!(answer, Classified::NonceRequired(_)) && key.is_some() {
            nonce = response.dpop_nonce();
            continue;
        }
        let tokens = freshen_core::code::exchanged(answer).map_err(|e| e.to_string())?;
        let logged_in = match key {
            Some(key) => session.log_in_bound_sent_at(tokens, sent_at, key).await,
            None => session.log_in_sent_at(tokens, sent_at).await,
        };
        return logged_in.map_err(|e| e.to_string());
    }
    Err("nonce challenges without end".into())
}

/// The device grant through the driver's own flow: the user reads the code
/// and approves it on another device (a few tries over the same faulty
/// network, a few seconds apart) while the session polls.
async fn log_in_by_device(
    session: &Session<TurmoilTransport, HostStore>,
    host: &Arc<Host>,
    attempt: u32,
    key: Option<DpopKey>,
) -> Result<(), String> {
    let mut login = session.start_device_login(None).await.map_err(|e| e.to_string())?;
    if let Some(key) = key {
        login = login.with_dpop_key(key);
    }
    let user_code = login.user_code().to_owned();
    let user = Arc::clone(host);
    let reading = Duration::from_secs(2 + (host.index as u64 * 7 + u64::from(attempt) * 3) % 20);
    let approving = tokio::spawn(async move {
        tokio::time::sleep(reading).await;
        let form = format!("user_code={user_code}&decision=approve");
        for _ in 0..3 {
            let request = Request::post(paths::DEVICE)
                .header(header::HOST, AUTHORITY)
                .header(header::CONTENT_TYPE, FormRequest::CONTENT_TYPE)
                .body(Full::new(Bytes::from(form.clone())));
            let Ok(request) = request else { return };
            if send(&user.pacer, request).await.is_ok_and(|answer| answer.status().is_success()) {
                return;
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    });
    let finished = login.finish().await;
    approving.abort();
    finished.map_err(|e| e.to_string())
}

/// The authorization code grant with PKCE: the browser's request to the
/// authorization endpoint (the user approves at once), its redirect read by
/// the core as the driver's loopback listener reads it, the code exchanged.
async fn log_in_by_code(
    session: &Session<TurmoilTransport, HostStore>,
    host: &Host,
    attempt: u32,
    key: Option<DpopKey>,
) -> Result<(), String> {
    use freshen_core::code::{self, AuthorizationRequest, Expected};
    const CALLBACK: &str = "/callback";
    let redirect_uri = format!("http://127.0.0.1:49152{CALLBACK}");
    let verifier = format!("verifier-{:0>34}", host.index as u64 * 1_000_003 + u64::from(attempt));
    let state = format!("state-{}-{attempt}", host.index);
    let client = client_id(host.app);
    let challenge = crate::authority::code::s256_challenge(&verifier);
    let request = AuthorizationRequest {
        client_id: &client,
        redirect_uri: &redirect_uri,
        scope: None,
        state: &state,
        code_challenge: &challenge,
    };
    let url = code::authorization_url(&format!("http://{AUTHORITY}{}", paths::AUTHORIZE), &request)
        .map_err(|e| e.to_string())?;
    let target = url.trim_start_matches(&format!("http://{AUTHORITY}"));
    let request = Request::get(target)
        .header(header::HOST, AUTHORITY)
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let redirect = send(&host.pacer, request).await.map_err(|e| format!("authorization endpoint: {e:?}"))?;
    let location = redirect.headers().get(header::LOCATION).and_then(|v| v.to_str().ok());
    let back = location
        .and_then(|location| location.strip_prefix("http://127.0.0.1:49152"))
        .ok_or_else(|| format!("no redirect to the app ({})", redirect.status()))?;
    let expected = Expected { path: CALLBACK, state: &state, issuer: None };
    let code = code::parse_redirect(back, &expected).map_err(|e| e.to_string())?;
    let form = code::code_request(&Client::public(client.clone()), &code, &redirect_uri, &verifier);
    let body = form.expose_body().to_owned();
    log_in_by_exchange(session, host, attempt, body, key).await
}

/// A unique id for a login's DPoP proof: the host, its login attempt, the round.
fn login_proof_id(host: &Host, attempt: u32, round: u32) -> [u8; 16] {
    let mut jti = [0u8; 16];
    jti[..8].copy_from_slice(&(host.index as u64).to_le_bytes());
    jti[8..12].copy_from_slice(&attempt.to_le_bytes());
    jti[12..].copy_from_slice(&round.to_le_bytes());
    jti
}

pub(super) async fn run_host(config: WorldConfig, seed: u64, host: Arc<Host>) -> turmoil::Result {
    let incarnation = host.incarnation.fetch_add(1, Ordering::AcqRel);
    if incarnation > 0 {
        // The monitors learned of the crash or exit when it happened (`Watch::crashed`).
        host.watch.line(|| format!("{} restart: incarnation {incarnation} starts", host.name));
    }
    let session_config = config.session.clone();
    let freshen_config =
        Config::new(format!("http://{AUTHORITY}{}", paths::TOKEN), Client::public(client_id(host.app)))
            .with_revocation_endpoint(format!("http://{AUTHORITY}{}", paths::REVOKE))
            .with_device_authorization_endpoint(format!("http://{AUTHORITY}{}", paths::DEVICE_AUTHORIZATION))
            .with_session(session_config)
            // The simulated network's host names are not loopback.
            .with_plain_http_allowed();
    let clock_host = Arc::clone(&host);
    let wall_clock = freshen::WallClock::new(move || clock_host.wall());
    let boot_host = Arc::clone(&host);
    let boot_clock = freshen::BootClock::new(move || boot_host.boot());
    let environment = Environment::seeded(seed ^ (host.index as u64) << 32 ^ u64::from(incarnation))
        .with_wall_clock(wall_clock)
        .with_boot_clock(boot_clock)
        .with_observer(Arc::clone(&host.watch) as Arc<dyn Observer>);
    let transport = TurmoilTransport { pacer: Arc::clone(&host.pacer) };
    let session =
        Session::start_in(freshen_config, transport, host.store.clone(), environment).map_err(|e| e.to_string())?;
    let mut states = session.watch_state();
    let mut relogging = false;
    let mut rng = SplitMix64::new(seed ^ 0xCA11 ^ (host.index as u64) << 16 ^ u64::from(incarnation));
    let demand = config.demand.unwrap_or(Demand::every(Duration::from_secs(1)));
    let mean = u64::try_from(demand.mean_interval.as_millis()).unwrap_or(1000).max(1);
    loop {
        tokio::time::sleep(Duration::from_millis(1 + rng.below(2 * mean))).await;
        if host.shutdown_asked.swap(false, Ordering::AcqRel) {
            host.watch.line(|| format!("{} shutdown: incarnation {incarnation} exits", host.name));
            session.shutdown().await;
            host.shut_down.store(true, Ordering::Release);
            // The process has exited; the world starts the next one.
            return std::future::pending().await;
        }
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
        for _ in 0..1 + rng.below(demand.burst) {
            // The app forces a refresh now and then (a changed profile, a suspect token).
            let forced = rng.chance(1, 200);
            tokio::spawn(caller(session.clone(), Arc::clone(&host), forced));
        }
    }
}
