//! The session handle and its driver task.
//!
//! [`Session`] is what an app holds: cheap to clone, `Send + Sync`. A valid
//! token comes from a published snapshot without waiting on a task or a lock.
//! Everything else goes through the core machine (in the
//! [coordinator](crate::coordinator)), whose I/O the driver task carries out:
//! refreshes over a [`Transport`], reads and writes over a [`Store`], and the
//! machine's timer. The refresh belongs to the driver, not to a caller: if
//! every caller gives up, the rotation still completes and is written.

use core::future::Future;
use core::mem;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::error::Error as _;
use std::sync::Mutex;

use freshen_core::dpop::DpopKey;
use freshen_core::ids::{CallerId, RefreshId, StoreOpId};
use freshen_core::oauth::{self, Client, TokenResponse};
use freshen_core::session::{Event, Io, NewSession, ProofNeeded, SessionConfig, StateView, Timeout, TransportFailure};
use freshen_core::stored::StoredSession;
use freshen_core::time::MonoTime;

#[cfg(any(feature = "middleware", feature = "tower"))]
use crate::authorize::ResourceNonces;
use freshen_core::token::RefreshToken;
use tokio::sync::{Notify, oneshot, watch};
use tokio::time::Instant;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::Environment;
use crate::Error;
use crate::clock::Clock;
use crate::coordinator::{Answer, Coordinator, Outcome, StateSink, Waker};
use crate::setters::setters;
use crate::stats::{Count, Counters, Stats};
use crate::store::{Store, StoreLock};
use crate::token::Token;
use crate::transport::{Transport, TransportError};
use std::sync::Arc;

mod driver;
use driver::{LockSlot, RefreshesOut, drive};

/// Everything a session needs to know besides its transport and store.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Config {
    /// The token endpoint (RFC 6749 §3.2).
    pub token_endpoint: String,
    /// The revocation endpoint (RFC 7009), for logout; `None` skips revocation.
    pub revocation_endpoint: Option<String>,
    /// The authorization endpoint (RFC 6749 §3.1), for
    /// [`Session::start_code_login`]; `None` when the app logs in otherwise.
    pub authorization_endpoint: Option<String>,
    /// The device authorization endpoint (RFC 8628 §3.1), for
    /// [`Session::start_device_login`]; `None` when the app logs in otherwise.
    pub device_authorization_endpoint: Option<String>,
    /// The authorization server's issuer identifier (its discovery
    /// document's `issuer`): a login's redirect that names another server
    /// is refused (RFC 9207, the mix-up defense). `None` checks nothing.
    pub issuer: Option<String>,
    /// The client and how it authenticates (none for public clients, basic or post).
    pub client: Client,
    /// A scope to request on refresh; `None` keeps the granted one.
    pub scope: Option<String>,
    /// Bind the session's tokens to a key on this device (DPoP, RFC 9449;
    /// see [`dpop`](crate::dpop)): the login flows make the key and prove
    /// it. Off: bearer tokens.
    pub dpop: bool,
    /// Refresh margin and jitter, backoff, request timeout, what counts as terminal.
    pub session: SessionConfig,
    /// How this session is named in its `freshen` tracing span (a tenant, an
    /// account); `None` names it by a number drawn from its seed.
    pub name: Option<String>,
    /// Accept plain `http` endpoints on hosts that are not loopback (tests
    /// and simulations on private networks). Off: tokens travel only over
    /// https, or over http to this machine.
    pub plain_http_allowed: bool,
}

impl Config {
    /// A configuration with the core's defaults: refresh 60 s (+ up to 15 s
    /// jitter) before expiry, 10 s request timeout, four attempts backing off
    /// from 0.5 s to 8 s, `invalid_grant` terminal.
    pub fn new(token_endpoint: impl Into<String>, client: Client) -> Self {
        Self {
            token_endpoint: token_endpoint.into(),
            revocation_endpoint: None,
            authorization_endpoint: None,
            device_authorization_endpoint: None,
            issuer: None,
            client,
            scope: None,
            dpop: false,
            session: SessionConfig::default(),
            name: None,
            plain_http_allowed: false,
        }
    }
}

setters! { Config {
    /// Revokes at this endpoint on logout.
    with_revocation_endpoint(url: impl Into<String>) => revocation_endpoint = Some(url.into());
    /// Logs in with the authorization code grant and PKCE at this endpoint
    /// (see [`Session::start_code_login`]).
    with_authorization_endpoint(url: impl Into<String>) => authorization_endpoint = Some(url.into());
    /// Logs in with the device flow at this endpoint (see [`Session::start_device_login`]).
    with_device_authorization_endpoint(url: impl Into<String>) => device_authorization_endpoint = Some(url.into());
    /// Refuses login redirects from any other issuer (see [`Config::issuer`]).
    with_issuer(issuer: impl Into<String>) => issuer = Some(issuer.into());
    /// Asks for this scope on every refresh (by default the granted one is kept).
    with_scope(scope: impl Into<String>) => scope = Some(scope.into());
    /// Binds the tokens of every login to a key on this device (DPoP; see
    /// [`Config::dpop`]).
    with_dpop() => dpop = true;
    /// Uses this session configuration.
    with_session(session: SessionConfig) => session = session;
    /// Names the session in its tracing span (see [`Config::name`]).
    with_name(name: impl Into<String>) => name = Some(name.into());
    /// Accepts plain `http` endpoints on any host (see [`Config::plain_http_allowed`]).
    with_plain_http_allowed() => plain_http_allowed = true;
}}

impl Waker for oneshot::Sender<Outcome> {
    fn wake(self, outcome: Outcome) {
        // The caller may have left; its answer is then simply dropped.
        let _ = self.send(outcome);
    }
}

struct Shared<T, S> {
    coordinator: Coordinator<oneshot::Sender<Outcome>>,
    transport: T,
    store: S,
    config: Config,
    clock: Clock,
    /// Wakes the driver: new I/O is queued, or the timer changed.
    kick: Notify,
    state: watch::Sender<StateView>,
    /// Every handle is gone, or [`Session::shutdown`] was called: nothing
    /// new goes out, what is in flight lands, then the driver stops.
    closing: AtomicBool,
    in_flight: AtomicUsize,
    /// Set once the driver has stopped.
    stopped: watch::Sender<bool>,
    /// The shared store's cross-process lock, as the machine last asked for it.
    store_lock: Mutex<LockSlot>,
    /// Refresh requests on the wire, and the store's lock kept for them.
    refreshes_out: Mutex<RefreshesOut>,
    /// The token endpoint as errors show it (no query, no user information).
    token_endpoint_shown: String,
    /// The transport's error for the last refresh attempt that went
    /// unanswered, until one is answered: the cause of a transport failure
    /// callers are told about.
    last_transport_error: Mutex<Option<TransportError>>,
    counters: Arc<Counters>,
    /// Resource servers' DPoP nonces, for the proofs of requests to them.
    #[cfg(any(feature = "middleware", feature = "tower"))]
    resource_nonces: ResourceNonces,
}

impl<T, S> Shared<T, S> {
    fn now(&self) -> MonoTime {
        self.clock.now()
    }

    fn instant(&self, at: MonoTime) -> Instant {
        self.clock.instant(at)
    }

    fn note_transport_error(&self, error: Option<TransportError>) {
        if let Ok(mut last) = self.last_transport_error.lock() {
            *last = error;
        }
    }
}

/// Signals the driver when the last handle goes.
struct HandleGuard {
    closing: Arc<dyn Fn() + Send + Sync>,
}

impl Drop for HandleGuard {
    fn drop(&mut self) {
        (self.closing)();
    }
}

/// A live session: what an app holds, cheap to clone, `Send + Sync`.
///
/// A valid token comes from a published snapshot without waiting on a task or
/// a lock. Everything else goes through the pure machine of
/// [`freshen_core::session`], whose I/O a driver task carries out: refreshes
/// over a [`Transport`], reads and writes over a [`Store`], and the machine's
/// timer. The refresh belongs to the driver, not to a caller: if every caller
/// gives up, the rotation still completes and is written.
pub struct Session<T, S> {
    shared: Arc<Shared<T, S>>,
    _guard: Arc<HandleGuard>,
}

impl<T, S> Clone for Session<T, S> {
    fn clone(&self) -> Self {
        Self { shared: Arc::clone(&self.shared), _guard: Arc::clone(&self._guard) }
    }
}

impl<T, S> core::fmt::Debug for Session<T, S> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Session").field("state", &*self.shared.state.borrow()).finish_non_exhaustive()
    }
}

impl<T: Transport, S: Store> Session<T, S> {
    /// Starts a session: reads the store and keeps the tokens fresh from then
    /// on. Spawns its driver on the current tokio runtime (so call it inside one).
    ///
    /// Fails with [`Error::InvalidEndpoint`] for an endpoint URL that cannot
    /// work (no scheme or host, or plain http to a host that is not loopback)
    /// and [`Error::Config`] for session settings that cannot.
    pub fn start(config: Config, transport: T, store: S) -> Result<Self, Error> {
        Self::start_in(config, transport, store, Environment::system())
    }

    /// [`Session::start`] with a chosen seed and wall clock: a test or a
    /// simulation that must replay passes its own [`Environment`].
    pub fn start_in(config: Config, transport: T, store: S, environment: Environment) -> Result<Self, Error> {
        let token_endpoint_shown =
            crate::error::check_endpoint("token", &config.token_endpoint, config.plain_http_allowed)?;
        if let Some(url) = &config.revocation_endpoint {
            crate::error::check_endpoint("revocation", url, config.plain_http_allowed)?;
        }
        if let Some(url) = &config.device_authorization_endpoint {
            crate::error::check_endpoint("device authorization", url, config.plain_http_allowed)?;
        }
        if let Some(url) = &config.authorization_endpoint {
            crate::error::check_endpoint("authorization", url, config.plain_http_allowed)?;
        }
        let seed = environment.draw_seed();
        let clock = Clock::new(environment.wall_clock().clone(), environment.boot_clock().clone());
        let machine = freshen_core::session::Session::new(config.session.clone(), seed, MonoTime::ZERO, clock.wall())?;
        let (state, _) = watch::channel(machine.state().clone());
        let publisher = state.clone();
        let counters = Arc::new(Counters::default());
        let counted = Arc::clone(&counters);
        let on_state: StateSink = Box::new(move |view| {
            info!(state = %view, "session state changed");
            if view.is_logged_out() {
                counted.add(Count::Logout);
            }
            publisher.send_replace(view.clone());
        });
        let wall = environment.wall_clock().clone();
        #[cfg(feature = "_internal_test_exports")]
        let coordinator = match environment.observer() {
            Some(observer) => Coordinator::observed(machine, on_state, wall, Arc::clone(observer)),
            None => Coordinator::new(machine, on_state, wall),
        };
        #[cfg(not(feature = "_internal_test_exports"))]
        let coordinator = Coordinator::new(machine, on_state, wall);
        let shared = Arc::new(Shared {
            coordinator,
            transport,
            store,
            config,
            clock,
            kick: Notify::new(),
            state,
            closing: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            stopped: watch::Sender::new(false),
            store_lock: Mutex::new(LockSlot::default()),
            refreshes_out: Mutex::new(RefreshesOut::default()),
            token_endpoint_shown,
            last_transport_error: Mutex::new(None),
            counters,
            #[cfg(any(feature = "middleware", feature = "tower"))]
            resource_nonces: ResourceNonces::default(),
        });
        let label = shared.config.name.clone().unwrap_or_else(|| (seed % 100_000).to_string());
        let span = info_span!("freshen", session = %label);
        tokio::spawn(drive(Arc::clone(&shared)).instrument(span));
        let closer = Arc::clone(&shared);
        let guard = HandleGuard {
            closing: Arc::new(move || {
                closer.closing.store(true, Ordering::Release);
                closer.kick.notify_one();
            }),
        };
        Ok(Self { shared, _guard: Arc::new(guard) })
    }

    /// An access token, waiting for a refresh only when none is usable. Many
    /// callers at once cause one refresh.
    pub async fn access_token(&self) -> Result<Token, Error> {
        if let Some(token) = self.shared.coordinator.fast() {
            return Ok(token);
        }
        self.wait(|coordinator, now, waker| coordinator.want(now, waker)).await
    }

    /// Lends a usable access token to `f` and returns what `f` returns:
    /// [`Session::access_token`] without handing out a handle of its own.
    /// While the token is valid nothing is cloned or counted, so threads
    /// that call it at once never write a shared cache line; otherwise it
    /// waits for a token as `access_token` does.
    ///
    /// ```no_run
    /// # async fn call(session: freshen::AnySession) -> Result<(), freshen::Error> {
    /// let header = session.with_token(|token| token.authorization().cloned()).await??;
    /// # let _ = header;
    /// # Ok(()) }
    /// ```
    pub async fn with_token<R>(&self, f: impl FnOnce(&Token) -> R) -> Result<R, Error> {
        match self.shared.coordinator.lend(f) {
            Ok(answer) => Ok(answer),
            Err(f) => {
                let token = self.wait(|coordinator, now, waker| coordinator.want(now, waker)).await?;
                Ok(f(&token))
            }
        }
    }

    /// A usable access token now, or `None` at once: for code that cannot
    /// wait, such as a synchronous interceptor (tonic's) or a UI thread. The
    /// session refreshes ahead of expiry on its own, so a healthy session
    /// answers `Some`. `None` when no token is usable this instant: the
    /// store is still being read, a refresh runs past the token's usable
    /// time, or only a login helps ([`Session::state`] says which). A `None`
    /// for a spent token that nothing renews starts the refresh a waiting
    /// caller would have started, so a later call finds its result.
    ///
    /// ```no_run
    /// # fn call(session: &freshen::AnySession) {
    /// match session.try_access_token() {
    ///     Some(token) => { let _header = token.authorization(); }
    ///     None => { /* no token this instant: fail this request, or await `access_token` */ }
    /// }
    /// # }
    /// ```
    pub fn try_access_token(&self) -> Option<Token> {
        self.try_with_token(Token::clone)
    }

    /// [`Session::try_access_token`], lending the token to `f` as
    /// [`Session::with_token`] does: nothing is cloned or written.
    #[inline]
    pub fn try_with_token<R>(&self, f: impl FnOnce(&Token) -> R) -> Option<R> {
        match self.shared.coordinator.lend(f) {
            Ok(answer) => Some(answer),
            Err(_) => {
                self.renew_for_a_caller_that_does_not_wait();
                None
            }
        }
    }

    /// What [`Session::try_with_token`] does when it finds no token: out of
    /// line, so the fast path it leaves carries none of its code.
    #[cold]
    #[inline(never)]
    fn renew_for_a_caller_that_does_not_wait(&self) {
        // Only where a caller's arrival would start work: a caller
        // that tries again and again while a refresh runs adds nothing.
        // (The state's guard is let go first: the machine's step publishes to it.)
        let now = self.shared.now();
        let renews = self.shared.state.borrow().renews_for_a_caller_at(now);
        if renews {
            self.shared.coordinator.want_unwaited(now);
            self.shared.kick.notify_one();
        }
    }

    /// After a resource answered 401 to `rejected`: a token to retry with,
    /// once. If `rejected` is the current token this starts a refresh; if it is
    /// older, the current one comes back at once.
    /// While a refresh is running, the retry waits for it: the server may have
    /// killed the current token along with the refused one.
    pub async fn retry_token(&self, rejected: &Token) -> Result<Token, Error> {
        let generation = rejected.generation();
        self.shared.counters.add(Count::TokenRefused);
        self.wait(move |coordinator, now, waker| coordinator.unauthorized(now, generation, waker)).await
    }

    /// Refreshes now, even if the access token is fresh, and returns the new
    /// token (or why there is none). A forced refresh asked while another
    /// refresh runs waits for it and then refreshes with its result: under
    /// refresh-token rotation, two forced refreshes rotate twice and never
    /// present one refresh token twice. One asked while the store is still
    /// writing the last rotation waits for that write: no refresh presents a
    /// token the store does not hold, so what another process (or this one,
    /// restarted) finds there is never more than one rotation old.
    pub async fn refresh(&self) -> Result<Token, Error> {
        self.wait(|coordinator, now, waker| coordinator.refresh_wanted(now, waker)).await
    }

    /// Marks `token` as no good (a resource refused it and the request will
    /// not be retried): the next caller gets a refreshed token. A token that
    /// is no longer the current one changes nothing.
    pub fn invalidate(&self, token: &Token) {
        self.shared.counters.add(Count::TokenRefused);
        self.shared.coordinator.invalidated(self.shared.now(), token.generation());
        self.shared.kick.notify_one();
    }

    /// Reports a 401 for `rejected` without waiting (a request that will not
    /// be retried): the same as [`Session::invalidate`].
    pub fn report_unauthorized(&self, rejected: &Token) {
        self.invalidate(rejected);
    }

    /// Starts the session from a login's token response, and resolves once
    /// it is stored (a crash after that cannot lose it), or fails with why
    /// not ([`Error::StoreUnavailable`], [`Error::LoggedOut`] when a logout
    /// came first, [`Error::TimedOut`]). Callers asking for a token
    /// meanwhile get the login's, once it is stored, like any other.
    ///
    /// Works whenever it is called, also while the store is still being read
    /// (the login wins over what it held). The access token's lifetime counts
    /// from now; [`Session::log_in_sent_at`] counts it from when the login
    /// request was sent, which is a little safer. A response without a
    /// refresh token makes a session that lasts as long as its access token.
    pub async fn log_in(&self, response: TokenResponse) -> Result<(), Error> {
        self.log_in_response(response, None, None).await
    }

    /// As [`Session::log_in`], for tokens bound by DPoP to `key` (made with
    /// [`dpop::generate_key`](crate::dpop::generate_key), whose proofs the
    /// login sent): the key is stored with them, and every refresh and
    /// resource request proves it. Tokens that are not of type `DPoP` are
    /// refused ([`Error::DpopMismatch`]): the server did not bind them.
    pub async fn log_in_bound(&self, response: TokenResponse, key: DpopKey) -> Result<(), Error> {
        self.log_in_response(response, None, Some(key)).await
    }

    /// As [`Session::log_in_bound`], with the lifetime counted from
    /// `sent_at` (see [`Session::log_in_sent_at`]).
    pub async fn log_in_bound_sent_at(
        &self,
        response: TokenResponse,
        sent_at: std::time::Instant,
        key: DpopKey,
    ) -> Result<(), Error> {
        self.log_in_response(response, Some(sent_at), Some(key)).await
    }

    /// A login from a token response to a request sent at `sent_at` (now,
    /// when unknown), bound to `key` if given.
    pub(crate) async fn log_in_response(
        &self,
        response: TokenResponse,
        sent_at: Option<std::time::Instant>,
        key: Option<DpopKey>,
    ) -> Result<(), Error> {
        let requested_at = sent_at.map_or_else(|| self.shared.now(), |at| self.shared.clock.at(Instant::from_std(at)));
        let mut new = NewSession::from_response(response, requested_at);
        new.dpop_key = key;
        self.log_in_session(new).await
    }

    /// As [`Session::log_in`], with the lifetime counted from `sent_at`, when
    /// the login request was sent (`std::time::Instant::now()` before sending
    /// it; under tokio's paused clock, `tokio::time::Instant::into_std`).
    pub async fn log_in_sent_at(&self, response: TokenResponse, sent_at: std::time::Instant) -> Result<(), Error> {
        self.log_in_response(response, Some(sent_at), None).await
    }

    /// Starts the session from tokens the app already holds (a pair
    /// migrated from another library, a refresh token alone, or an access
    /// token alone), built with [`StoredSession::pair`] and its siblings;
    /// resolves as [`Session::log_in`] does.
    ///
    /// [`StoredSession::pair`]: freshen_core::stored::StoredSession::pair
    pub async fn log_in_with(&self, tokens: StoredSession) -> Result<(), Error> {
        let new = NewSession::from_stored(tokens, self.shared.now(), self.shared.clock.wall());
        self.log_in_session(new).await
    }

    /// The wall clock now and the nonces resource servers gave, for the DPoP
    /// proofs of resource requests.
    #[cfg(any(feature = "middleware", feature = "tower"))]
    pub(crate) fn proof_parts(&self) -> (freshen_core::time::UnixTime, &ResourceNonces) {
        (self.shared.clock.wall(), &self.shared.resource_nonces)
    }

    /// The transport, configuration and clock the login flows share with the driver.
    pub(crate) fn login_parts(&self) -> (&T, &Config, &Clock) {
        (&self.shared.transport, &self.shared.config, &self.shared.clock)
    }

    async fn log_in_session(&self, new: NewSession) -> Result<(), Error> {
        match self.answer(|coordinator, now, waker| coordinator.logged_in(now, new, waker)).await {
            Ok(Answer::LoginStored) => Ok(()),
            // The machine answers a login only as stored or failed.
            Ok(Answer::Token(_) | Answer::LogoutFinished) => Err(Error::TimedOut),
            Err(error) => Err(error),
        }
    }

    /// Logs out: fails every waiter, revokes at the server (best effort) and
    /// clears the store. Returns when the session says both are done: the
    /// revocation ended or ran out of the request timeout, and the store was
    /// cleared or stopped answering after its retries. A store that never
    /// answers at all is not waited for past
    /// [`SessionConfig::logout_bound`](freshen_core::session::SessionConfig::logout_bound).
    pub async fn log_out(&self) {
        let (done, finished) = oneshot::channel();
        self.shared.coordinator.log_out(self.shared.now(), done);
        self.shared.kick.notify_one();
        // The machine answers within its bound; a closed channel means the
        // session's driver has stopped, and there is nothing left to wait for.
        let _ = finished.await;
    }

    /// Stops the session, for a process about to exit, without losing a
    /// rotation.
    ///
    /// A process that exits while a refresh is out loses the refresh token
    /// the server rotated to: the server has spent the old one, and the new
    /// one dies with the process (with reuse detection, a later replay of the
    /// old one can end the session for every process sharing it). After
    /// `shutdown` nothing new goes to the token endpoint or takes the store's
    /// lock; a refresh already sent is waited for (at most the request
    /// timeout) and its tokens written to the store; then the driver stops,
    /// releases the store's lock if it held it, and every waiting caller gets
    /// [`Error::Shutdown`]. A token still valid is handed out afterwards;
    /// anything that would wait gets [`Error::Shutdown`]. It stops the
    /// session for every clone of this handle.
    ///
    /// A write that fails meanwhile is retried at the store's backoff for up
    /// to the request timeout more (without taking the store's lock again);
    /// should it fail throughout, the store keeps its previous tokens, as
    /// after an exit.
    ///
    /// ```no_run
    /// # async fn run(session: freshen::AnySession) {
    /// // ... the service runs; on SIGTERM:
    /// session.shutdown().await;
    /// # }
    /// ```
    pub async fn shutdown(&self) {
        self.shared.closing.store(true, Ordering::Release);
        self.shared.kick.notify_one();
        let mut stopped = self.shared.stopped.subscribe();
        // The sender lives in `shared`, which this handle keeps alive.
        let _ = stopped.wait_for(|stopped| *stopped).await;
    }

    /// The state now, without waiting: never behind an answer this session
    /// gave (a caller told it is logged out finds `LoggedOut` here). While
    /// tokens are held, [`StateView::renewal`] tells an outage (and when the
    /// next attempt may start) from a misconfiguration and from "the next
    /// call refreshes"; its times are on this session's clock (see
    /// [`Session::instant`]).
    pub fn state(&self) -> StateView {
        self.shared.state.borrow().clone()
    }

    /// How many handles on this session exist (clones of it), for the
    /// registry: one that only it holds can be dropped.
    pub(crate) fn handles(&self) -> usize {
        Arc::strong_count(&self._guard)
    }

    /// The state as a stream, for watching: send the user to log in once
    /// only a login helps (`watch_state().wait_for(StateView::needs_login)`).
    pub fn watch_state(&self) -> watch::Receiver<StateView> {
        self.shared.state.subscribe()
    }

    /// When a time the state names (such as [`Renewal::Failing`]'s
    /// `retry_at`) falls, on tokio's clock.
    ///
    /// [`Renewal::Failing`]: freshen_core::session::Renewal::Failing
    pub fn instant(&self, at: MonoTime) -> Instant {
        self.shared.instant(at)
    }

    /// What the session has done since it started: refreshes, failures,
    /// waits and logouts (see [`Stats`]). Reading it costs a few atomic loads.
    pub fn stats(&self) -> Stats {
        self.shared.counters.snapshot()
    }

    /// How many callers wait for a token now.
    pub fn waiting(&self) -> usize {
        self.shared.coordinator.waiting()
    }

    /// Waits for a token.
    async fn wait(
        &self,
        register: impl FnOnce(&Coordinator<oneshot::Sender<Outcome>>, MonoTime, oneshot::Sender<Outcome>) -> CallerId,
    ) -> Result<Token, Error> {
        match self.answer(register).await? {
            Answer::Token(published) => Ok(Token(published)),
            // Only a login or a logout is answered this way, and neither comes here.
            Answer::LoginStored | Answer::LogoutFinished => Err(Error::TimedOut),
        }
    }

    /// Registers a waiter and waits for the machine's answer.
    async fn answer(
        &self,
        register: impl FnOnce(&Coordinator<oneshot::Sender<Outcome>>, MonoTime, oneshot::Sender<Outcome>) -> CallerId,
    ) -> Result<Answer, Error> {
        let (waker, answer) = oneshot::channel();
        self.shared.counters.add(Count::Wait);
        let caller = register(&self.shared.coordinator, self.shared.now(), waker);
        self.shared.kick.notify_one();
        // If this future is dropped, the caller is forgotten; the refresh goes on.
        let cancel = CancelOnDrop { coordinator: &self.shared.coordinator, caller };
        let answered = answer.await;
        // Answered (or let go): the coordinator has already forgotten the
        // caller, and a herd of thousands released at once does not queue
        // on its lock again just to be told so.
        core::mem::forget(cancel);
        match answered {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(reason)) => {
                self.shared.counters.add(Count::CallerFailed);
                let transport = self.shared.last_transport_error.lock().ok().and_then(|last| last.clone());
                Err(Error::from_reason(reason, &self.shared.token_endpoint_shown, transport))
            }
            Err(_) => Err(Error::Shutdown),
        }
    }
}

struct CancelOnDrop<'a> {
    coordinator: &'a Coordinator<oneshot::Sender<Outcome>>,
    caller: CallerId,
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        self.coordinator.cancel(self.caller);
    }
}
