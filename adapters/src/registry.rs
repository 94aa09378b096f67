//! [`Sessions`]: many sessions in one process, keyed by a name the app
//! chooses (a tenant id), for services that hold a session per customer.

use core::time::Duration;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use tokio::time::Instant;

use crate::session::{Config, Session};
use crate::store::Store;
use crate::transport::Transport;
use crate::{Error, Token};

/// Opens the store of one session key.
type OpenStore<S> = dyn Fn(&str) -> S + Send + Sync;

/// Sessions keyed by a name, started on first use and dropped once idle.
///
/// Each key's session is an ordinary [`Session`] with its own driver: one
/// refresh at a time per key, and keys never wait for each other. All of
/// them share one transport (its connection pool) and one configuration;
/// each reads its own store, opened by the function given to
/// [`Sessions::new`] (for a fleet, `Postgres::store` of the `postgres`
/// feature, with [`SessionConfig::shared_store`](freshen_core::session::SessionConfig::shared_store) on).
///
/// A session nobody has asked for during [`Sessions::idle_after`], that no
/// caller still holds and that is not refreshing, is dropped (its tokens stay
/// in its store; the next use starts it again), so memory follows the keys in
/// use, not every key ever seen. Cheap to clone.
pub struct Sessions<T, S> {
    inner: Arc<Inner<T, S>>,
}

struct Inner<T, S> {
    config: Config,
    transport: T,
    open: Box<OpenStore<S>>,
    idle_after: Duration,
    live: Mutex<Live<T, S>>,
}

/// The sessions in memory, and whether [`Sessions::shutdown`] has begun.
struct Live<T, S> {
    sessions: HashMap<Arc<str>, Entry<T, S>>,
    shut_down: bool,
}

struct Entry<T, S> {
    session: Session<T, S>,
    last_used: Instant,
    started: Instant,
}

/// How often a key whose store held no session looks again.
const NO_SESSION_RECHECK: Duration = Duration::from_secs(1);

impl<T, S> Clone for Sessions<T, S> {
    fn clone(&self) -> Self {
        Self { inner: Arc::clone(&self.inner) }
    }
}

impl<T, S> core::fmt::Debug for Sessions<T, S> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Sessions").field("idle_after", &self.inner.idle_after).finish_non_exhaustive()
    }
}

impl<T: Transport + Clone, S: Store> Sessions<T, S> {
    /// How long an unused session stays in memory by default.
    pub const DEFAULT_IDLE_AFTER: Duration = Duration::from_secs(300);

    /// Sessions over `transport`, each with `config` and the store `open`
    /// gives for its key. Spawns a task on the current tokio runtime that
    /// drops idle sessions (so call it inside one); the task ends with the
    /// last clone of this value.
    pub fn new(config: Config, transport: T, open: impl Fn(&str) -> S + Send + Sync + 'static) -> Self {
        Self::with_idle_after(config, transport, open, Self::DEFAULT_IDLE_AFTER)
    }

    /// [`Sessions::new`], dropping sessions unused for `idle_after`.
    pub fn with_idle_after(
        config: Config,
        transport: T,
        open: impl Fn(&str) -> S + Send + Sync + 'static,
        idle_after: Duration,
    ) -> Self {
        let inner = Arc::new(Inner {
            config,
            transport,
            open: Box::new(open),
            idle_after: idle_after.max(Duration::from_millis(1)),
            live: Mutex::new(Live { sessions: HashMap::new(), shut_down: false }),
        });
        tokio::spawn(sweep(Arc::downgrade(&inner)));
        Self { inner }
    }

    /// How long an unused session stays in memory.
    pub fn idle_after(&self) -> Duration {
        self.inner.idle_after
    }

    /// The session of `key`, started (its store read in the background) if
    /// it is not running yet. A key whose store held no session (a tenant
    /// not onboarded yet) reads it again on use, at most once a second, so
    /// a login written by another worker is found. A start must happen
    /// inside a tokio runtime, as [`Session::start`] does.
    ///
    /// # Errors
    /// The configuration cannot start a session ([`Session::start`]'s errors);
    /// [`Error::Shutdown`] after [`Sessions::shutdown`].
    pub fn session(&self, key: &str) -> Result<Session<T, S>, Error> {
        let now = Instant::now();
        let mut live = self.inner.live.lock().unwrap_or_else(PoisonError::into_inner);
        if live.shut_down {
            return Err(Error::Shutdown);
        }
        if let Some(entry) = live.sessions.get_mut(key) {
            entry.last_used = now;
            // A key whose store held nothing when its session started may
            // have been logged in since by another worker (onboarding): its
            // session reads the store again, at most once per NO_SESSION_RECHECK.
            let stale = matches!(entry.session.state(), crate::StateView::NoSession)
                && now.saturating_duration_since(entry.started) >= NO_SESSION_RECHECK;
            if !stale {
                return Ok(entry.session.clone());
            }
        }
        let config = self.inner.config.clone().with_name(key);
        let session = Session::start(config, self.inner.transport.clone(), (self.inner.open)(key))?;
        live.sessions.insert(key.into(), Entry { session: session.clone(), last_used: now, started: now });
        Ok(session)
    }

    /// A usable access token for `key`'s session ([`Session::access_token`]).
    ///
    /// # Errors
    /// As [`Session::access_token`], and as [`Sessions::session`].
    pub async fn access_token(&self, key: &str) -> Result<Token, Error> {
        self.session(key)?.access_token().await
    }

    /// How many sessions are in memory now.
    pub fn live(&self) -> usize {
        self.inner.live.lock().unwrap_or_else(PoisonError::into_inner).sessions.len()
    }

    /// Shuts every session down ([`Session::shutdown`], all at once), for a
    /// process about to exit: refreshes already sent are waited for and
    /// written, nothing new starts, and no session starts again
    /// ([`Sessions::session`] then fails with [`Error::Shutdown`]).
    pub async fn shutdown(&self) {
        let sessions: Vec<Session<T, S>> = {
            let mut live = self.inner.live.lock().unwrap_or_else(PoisonError::into_inner);
            live.shut_down = true;
            live.sessions.drain().map(|(_, entry)| entry.session).collect()
        };
        let mut stopping = tokio::task::JoinSet::new();
        for session in sessions {
            stopping.spawn(async move { session.shutdown().await });
        }
        while stopping.join_next().await.is_some() {}
    }

    /// Drops the sessions that are idle now; returns how many went. The
    /// registry's own task does this every half [`Sessions::idle_after`].
    pub fn drop_idle(&self) -> usize {
        self.inner.drop_idle(Instant::now())
    }
}

impl<T: Transport, S: Store> Inner<T, S> {
    fn drop_idle(&self, now: Instant) -> usize {
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        let live = &mut live.sessions;
        let before = live.len();
        live.retain(|_, entry| {
            let idle = now.saturating_duration_since(entry.last_used) >= self.idle_after;
            // A caller still holding the session, or a refresh under way,
            // keeps it: dropping it would start a second one for the key.
            let busy =
                entry.session.handles() > 1 || matches!(entry.session.state(), crate::StateView::Refreshing { .. });
            !idle || busy
        });
        before - live.len()
    }
}

/// Drops idle sessions every half idle period, until the registry is gone.
async fn sweep<T: Transport, S: Store>(registry: Weak<Inner<T, S>>) {
    let period = match registry.upgrade() {
        Some(inner) => (inner.idle_after / 2).max(Duration::from_millis(1)),
        None => return,
    };
    loop {
        tokio::time::sleep(period).await;
        let Some(inner) = registry.upgrade() else { return };
        inner.drop_idle(Instant::now());
    }
}
