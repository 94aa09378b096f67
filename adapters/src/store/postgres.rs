//! [`PostgresStore`]: many sessions in one PostgreSQL table, shared by a
//! fleet of workers.
//!
//! Each session is one row, keyed by a name the application chooses (a
//! tenant id): the encoded blob, its generation, and a **fence**, a counter
//! that every lock acquisition raises. Three rules make a fleet safe:
//!
//! * **The lock** is a PostgreSQL advisory lock on a connection of its own.
//!   The database releases it when that connection ends: the holder died (its
//!   socket closed, or TCP keepalive found it gone), or it stopped answering
//!   for longer than [`PostgresSettings::lock_hold`]. While the lock is held,
//!   the holder's runtime sends a heartbeat on that connection every third
//!   of the bound, so a refresh that takes long (a slow server, retries
//!   with backoff) keeps its lock; a worker stopped by a GC or VM pause sends
//!   none, and `idle_session_timeout` ends its connection: it loses the lock
//!   instead of blocking the fleet. A wait gives up after
//!   [`PostgresSettings::lock_wait`] (`lock_timeout`), and a waiter that goes
//!   away is noticed by the server (`client_connection_check_interval`).
//! * **Fencing.** Taking the lock raises the row's fence, and every write made
//!   under the lock is conditional on the fence it got: a worker that lost
//!   its lock (its connection cut, or stalled past the bound) and comes back
//!   can never overwrite what the next holder wrote. Its write fails with
//!   [`StoreError::Fenced`], and nothing is written; its session lets the
//!   lost lock go, takes it again, reads the row and adopts what the other
//!   worker wrote (or writes its own tokens if nobody did).
//! * **A cleared session keeps its row** (blob `NULL`), so the fence survives
//!   a logout and a late write cannot bring a logged-out session back.
//!
//! Run each session with
//! [`SessionConfig::shared_store`](freshen_core::session::SessionConfig::shared_store)
//! on, so that its refreshes run under the lock. The schema is created or
//! migrated only when asked ([`Postgres::migrate`]), never implicitly.
//! Requires PostgreSQL 14 or later.

use core::fmt;
use core::time::Duration;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use freshen_core::stored::StoredSession;
use secrecy::ExposeSecret;
use secrecy::zeroize::Zeroizing;
use tokio_postgres::NoTls;
use tracing::warn;

use super::{Store, StoreError, StoreLock};
use crate::setters::setters;

/// The application name of lock connections (`pg_stat_activity`), followed
/// by `:` and the holder's process id, so that an operator can tell them from
/// the pool's and see which process holds which lock.
pub const LOCK_APPLICATION_NAME: &str = "freshen-lock";

/// The bounds of the lock and of every statement; see the module docs.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct PostgresSettings {
    /// The table that holds the sessions.
    pub table: String,
    /// How long a lock holder may stop answering (no heartbeat on its lock
    /// connection: a stalled or cut-off worker) before the server ends its
    /// connection and so releases the lock. A live holder sends a heartbeat
    /// every third of it. A refresh token grace period at least this long
    /// plus twice the session's
    /// [`refresh_cycle_bound`](freshen_core::session::SessionConfig::refresh_cycle_bound)
    /// makes a lost lock cost no session (the simulation checks it).
    pub lock_hold: Duration,
    /// The longest one lock request waits.
    pub lock_wait: Duration,
    /// The longest any other statement runs, and a connection attempt waits.
    pub statement_timeout: Duration,
    /// Idle time before TCP keepalive probes a connection whose peer may be
    /// gone (probes every `keepalive_idle / 3`, three of them).
    pub keepalive_idle: Duration,
    /// Pooled connections for loads and writes (locks have their own).
    pub pool_size: usize,
}

impl Default for PostgresSettings {
    fn default() -> Self {
        Self {
            table: "freshen_sessions".into(),
            lock_hold: Duration::from_secs(30),
            lock_wait: Duration::from_secs(30),
            statement_timeout: Duration::from_secs(5),
            keepalive_idle: Duration::from_secs(15),
            pool_size: 16,
        }
    }
}

setters! { PostgresSettings {
    /// Sets [`PostgresSettings::table`] (letters, digits and `_` only).
    with_table(table: impl Into<String>) => table = table.into();
    /// Sets [`PostgresSettings::lock_hold`].
    with_lock_hold(bound: Duration) => lock_hold = bound;
    /// Sets [`PostgresSettings::lock_wait`].
    with_lock_wait(bound: Duration) => lock_wait = bound;
    /// Sets [`PostgresSettings::statement_timeout`].
    with_statement_timeout(bound: Duration) => statement_timeout = bound;
    /// Sets [`PostgresSettings::keepalive_idle`].
    with_keepalive_idle(idle: Duration) => keepalive_idle = idle;
    /// Sets [`PostgresSettings::pool_size`] (at least 1).
    with_pool_size(size: usize) => pool_size = size.max(1);
}}

/// Why a [`Postgres`] handle could not be made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PostgresSetupError {
    /// The connection string could not be read.
    #[error("the PostgreSQL connection string is invalid")]
    InvalidUrl,
    /// The table name has characters other than ASCII letters, digits and `_`.
    #[error("the table name may hold only ASCII letters, digits and '_'")]
    InvalidTable,
    /// The connection pool could not be built.
    #[error("the connection pool could not be built")]
    Pool,
}

/// A PostgreSQL database holding sessions: a connection pool for loads and
/// writes, and what lock connections need. Cheap to clone; make one per
/// process and a [`PostgresStore`] per session from it.
#[derive(Clone)]
pub struct Postgres {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    /// How lock connections connect: the pool's settings with the lock's bounds.
    lock_config: tokio_postgres::Config,
    settings: PostgresSettings,
    sql: Statements,
    /// Writes refused because their lock was lost (see [`Postgres::fenced_writes`]).
    fenced: AtomicU64,
}

/// The statements, with the table name in place.
struct Statements {
    load: String,
    lock_fence: String,
    save_fenced: String,
    save: String,
    clear_fenced: String,
    clear: String,
}

impl Statements {
    fn for_table(table: &str) -> Self {
        Self {
            load: format!("SELECT blob FROM {table} WHERE session_key = $1"),
            lock_fence: format!(
                "INSERT INTO {table} (session_key, fence) VALUES ($1, 1) \
                 ON CONFLICT (session_key) DO UPDATE SET fence = {table}.fence + 1 RETURNING fence"
            ),
            save_fenced: format!(
                "UPDATE {table} SET blob = $2, generation = $3, updated_at = now() \
                 WHERE session_key = $1 AND fence = $4"
            ),
            save: format!(
                "INSERT INTO {table} (session_key, blob, generation) VALUES ($1, $2, $3) \
                 ON CONFLICT (session_key) DO UPDATE SET blob = $2, generation = $3, updated_at = now()"
            ),
            clear_fenced: format!(
                "UPDATE {table} SET blob = NULL, generation = NULL, updated_at = now() \
                 WHERE session_key = $1 AND fence = $2"
            ),
            clear: format!(
                "UPDATE {table} SET blob = NULL, generation = NULL, updated_at = now() WHERE session_key = $1"
            ),
        }
    }
}

impl fmt::Debug for Postgres {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The connection string may carry a password: only the settings.
        f.debug_struct("Postgres").field("settings", &self.inner.settings).finish_non_exhaustive()
    }
}

fn millis(duration: Duration) -> u128 {
    duration.as_millis().max(1)
}

impl Postgres {
    /// The schema version [`Postgres::migrate`] brings a database to.
    pub const SCHEMA_VERSION: i32 = 1;

    /// A handle on the database at `url` (`postgresql://user@host:port/db`
    /// or `host=.. user=..`), without connecting yet. No TLS: use it on a
    /// private network or loopback (or put a TLS-terminating proxy beside it).
    ///
    /// # Errors
    /// The connection string or the table name is invalid.
    pub fn new(url: &str, settings: PostgresSettings) -> Result<Self, PostgresSetupError> {
        if settings.table.is_empty() || !settings.table.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(PostgresSetupError::InvalidTable);
        }
        let mut config: tokio_postgres::Config = url.parse().map_err(|_| PostgresSetupError::InvalidUrl)?;
        config
            .connect_timeout(settings.statement_timeout)
            .keepalives(true)
            .keepalives_idle(settings.keepalive_idle)
            .keepalives_interval((settings.keepalive_idle / 3).max(Duration::from_secs(1)))
            .keepalives_retries(3);
        let mut lock_config = config.clone();
        lock_config.application_name(format!("{LOCK_APPLICATION_NAME}:{}", std::process::id())).options(format!(
            "-c lock_timeout={} -c idle_session_timeout={} -c statement_timeout={} \
             -c client_connection_check_interval=1000",
            millis(settings.lock_wait),
            millis(settings.lock_hold),
            millis(settings.lock_wait + settings.statement_timeout),
        ));
        config.options(format!("-c statement_timeout={}", millis(settings.statement_timeout)));
        let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(settings.pool_size)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(settings.statement_timeout))
            .create_timeout(Some(settings.statement_timeout))
            .build()
            .map_err(|_| PostgresSetupError::Pool)?;
        let sql = Statements::for_table(&settings.table);
        Ok(Self { inner: Arc::new(Inner { pool, lock_config, settings, sql, fenced: AtomicU64::new(0) }) })
    }

    /// Creates the sessions table, or brings it to [`Postgres::SCHEMA_VERSION`]. Safe
    /// to run from several workers at once (it runs under a lock of its own).
    /// Call it when you deploy, not on every start.
    ///
    /// # Errors
    /// The database could not be reached, or holds a newer schema.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let table = &self.inner.settings.table;
        let mut client = self.client().await?;
        let transaction = client.transaction().await.map_err(unavailable("the migration could not start"))?;
        let version = format!("{table}_schema");
        let script = format!(
            "SELECT pg_advisory_xact_lock(hashtextextended('{version}', 0));
             CREATE TABLE IF NOT EXISTS {version} (version integer NOT NULL);
             CREATE TABLE IF NOT EXISTS {table} (
                 session_key text PRIMARY KEY,
                 fence bigint NOT NULL DEFAULT 0,
                 generation bigint,
                 blob text,
                 updated_at timestamptz NOT NULL DEFAULT now()
             );"
        );
        transaction.batch_execute(&script).await.map_err(unavailable("the schema could not be created"))?;
        let found: Option<i32> = transaction
            .query_opt(&format!("SELECT max(version) FROM {version}"), &[])
            .await
            .map_err(unavailable("the schema version could not be read"))?
            .and_then(|row| row.get(0));
        match found {
            Some(version) if version > Self::SCHEMA_VERSION => {
                return Err(StoreError::Unavailable("the database holds a newer freshen schema"));
            }
            Some(_) => {}
            None => {
                transaction
                    .execute(&format!("INSERT INTO {version} (version) VALUES ($1)"), &[&Self::SCHEMA_VERSION])
                    .await
                    .map_err(unavailable("the schema version could not be written"))?;
            }
        }
        transaction.commit().await.map_err(unavailable("the migration could not commit"))
    }

    /// The session kept under `key` (a tenant id, a user id). Make one per
    /// session: its lock and fence are its own.
    pub fn store(&self, key: impl Into<String>) -> PostgresStore {
        let key: Arc<str> = key.into().into();
        // Advisory locks are the database's, not the table's: the name
        // says which table's session it locks.
        let lock_name = format!("{}/{key}", self.inner.settings.table).into();
        PostgresStore { db: self.clone(), key, lock_name, fence: Arc::default() }
    }

    /// Writes of this handle's sessions refused so far because the writer
    /// had lost its lock (each one a worker that stalled or was cut off and
    /// came back: worth a metric).
    pub fn fenced_writes(&self) -> u64 {
        self.inner.fenced.load(Ordering::Relaxed)
    }

    async fn client(&self) -> Result<deadpool_postgres::Client, StoreError> {
        self.inner.pool.get().await.map_err(|error| {
            warn!(%error, "no PostgreSQL connection from the pool");
            StoreError::Unavailable("PostgreSQL cannot be reached")
        })
    }
}

/// A `map_err` that logs the database's error (never a parameter: the blob
/// travels only as a parameter) and keeps `what` as the typed reason.
fn unavailable(what: &'static str) -> impl Fn(tokio_postgres::Error) -> StoreError {
    move |error| {
        warn!(code = ?error.code().map(tokio_postgres::error::SqlState::code), %error, "{what}");
        StoreError::Unavailable(what)
    }
}

/// One session's row in a [`Postgres`] database. Clones share its lock
/// state, so give each session its own ([`Postgres::store`]).
#[derive(Clone)]
pub struct PostgresStore {
    db: Postgres,
    key: Arc<str>,
    /// What the advisory lock is taken on (hashed by the server).
    lock_name: Arc<str>,
    /// The fence of the lock this handle holds, while it holds one.
    fence: Arc<Mutex<Option<i64>>>,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore").field("key", &self.key).finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// The session's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    fn held_fence(&self) -> Option<i64> {
        self.fence.lock().ok().and_then(|fence| *fence)
    }

    /// Runs a write: fenced while this handle holds the lock (nothing is
    /// written if another took the lock since), unconditional otherwise.
    async fn write(
        &self,
        fenced: &str,
        unfenced: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<(), StoreError> {
        let client = self.db.client().await?;
        match self.held_fence() {
            Some(fence) => {
                let mut all: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params.to_vec();
                all.push(&fence);
                let written = client.execute(fenced, &all).await.map_err(unavailable("the session write failed"))?;
                if written == 0 {
                    self.db.inner.fenced.fetch_add(1, Ordering::Relaxed);
                    warn!(key = %self.key, "a write under a lost lock was fenced off");
                    return Err(StoreError::Fenced);
                }
                Ok(())
            }
            None => client.execute(unfenced, params).await.map(drop).map_err(unavailable("the session write failed")),
        }
    }
}

/// Releases the fence slot when the lock goes; the lock connection closes
/// with it, which releases the advisory lock on the server.
struct HeldLock {
    /// Owns the lock connection's client and beats on it.
    heartbeat: tokio::task::JoinHandle<()>,
    connection: tokio::task::JoinHandle<()>,
    fence: Arc<Mutex<Option<i64>>>,
    /// The fence this lock raised: a lock lost and dropped late leaves a
    /// newer lock's fence in the slot alone.
    own_fence: i64,
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        if let Ok(mut fence) = self.fence.lock()
            && *fence == Some(self.own_fence)
        {
            *fence = None;
        }
        // Ends the connection at once (the server releases the lock when it
        // sees the socket close), not when the runtime gets to it.
        self.heartbeat.abort();
        self.connection.abort();
    }
}

/// Keeps a live holder's lock connection from counting as idle: a statement
/// every third of `lock_hold`, until the lock is dropped (which aborts this)
/// or the connection fails (the lock is lost then; the next write under it
/// is fenced off).
async fn heartbeat(client: tokio_postgres::Client, lock_hold: Duration) {
    let every = (lock_hold / 3).max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(every).await;
        if let Err(error) = client.simple_query("SELECT 1").await {
            warn!(%error, "the session lock's connection failed: the lock is lost");
            return;
        }
    }
}

impl Store for PostgresStore {
    async fn load(&self) -> Result<Option<StoredSession>, StoreError> {
        let client = self.db.client().await?;
        let sql = &self.db.inner.sql;
        let row = client
            .query_opt(sql.load.as_str(), &[&&*self.key])
            .await
            .map_err(unavailable("the session could not be read"))?;
        let Some(blob) = row.and_then(|row| row.get::<_, Option<String>>(0)) else { return Ok(None) };
        // Bounded by the decoder (`MAX_BLOB_BYTES`); wiped once read.
        let blob = Zeroizing::new(blob);
        StoredSession::decode(blob.as_bytes()).map(Some).map_err(StoreError::Corrupt)
    }

    async fn save(&self, session: &StoredSession) -> Result<(), StoreError> {
        let encoded = session.encode();
        let blob: &str = encoded.expose_secret();
        let generation = i64::try_from(session.generation.0).unwrap_or(i64::MAX);
        let sql = &self.db.inner.sql;
        self.write(&sql.save_fenced, &sql.save, &[&&*self.key, &blob, &generation]).await
    }

    async fn clear(&self) -> Result<(), StoreError> {
        let sql = &self.db.inner.sql;
        self.write(&sql.clear_fenced, &sql.clear, &[&&*self.key]).await
    }

    async fn lock(&self) -> Result<StoreLock, StoreError> {
        let (client, connection) = self.db.inner.lock_config.connect(NoTls).await.map_err(|error| {
            warn!(%error, "no PostgreSQL lock connection");
            StoreError::Unavailable("PostgreSQL cannot be reached for the lock")
        })?;
        let connection = tokio::spawn(async move {
            if let Err(error) = connection.await {
                warn!(%error, "the lock's PostgreSQL connection ended");
            }
        });
        // Dropping this future (the session stopped waiting) drops the
        // client: the connection closes and the server cancels the wait.
        let locked = async {
            client
                .execute("SELECT pg_advisory_lock(hashtextextended($1, 0))", &[&&*self.lock_name])
                .await
                .map_err(unavailable("the session lock was not granted"))?;
            let row = client
                .query_one(self.db.inner.sql.lock_fence.as_str(), &[&&*self.key])
                .await
                .map_err(unavailable("the session lock's fence could not be raised"))?;
            Ok::<i64, StoreError>(row.get(0))
        };
        match locked.await {
            Ok(fence) => {
                if let Ok(mut held) = self.fence.lock() {
                    *held = Some(fence);
                }
                let heartbeat = tokio::spawn(heartbeat(client, self.db.inner.settings.lock_hold));
                let fence_slot = Arc::clone(&self.fence);
                Ok(StoreLock::new(HeldLock { heartbeat, connection, fence: fence_slot, own_fence: fence }))
            }
            Err(error) => {
                connection.abort();
                Err(error)
            }
        }
    }
}
