//! `PostgresStore` against a real PostgreSQL (`FRESHEN_POSTGRES_URL`; `.ci/run`
//! starts one with `.ci/postgres.sh` and sets `FRESHEN_REQUIRE_POSTGRES=1`,
//! which turns a skip into a failure). Each test has a table of its own.
//!
//! The store check (its contract, then real sessions in three "processes"
//! refreshing under faults against an authority with reuse detection and no
//! grace), and the fleet rules: the lock excludes; the database releases it
//! when its holder's connection dies, when the holder stalls past its bound
//! (and not while a live holder's refresh merely takes long),
//! and when a waiter gives up; a write under a lost lock is fenced off, also
//! after a logout; different sessions never wait for each other.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr, clippy::print_stdout)] // a test may panic: that is how it fails; it says why it skips

use std::time::Duration;

use freshen::store::{Postgres, PostgresSettings, PostgresStore, Store, StoreError};
use freshen_core::ids::Generation;
use freshen_core::stored::StoredSession;
use freshen_core::token::{AccessToken, RefreshToken};
use freshen_sim::store_check::{StoreCheck, check_store};

/// The database, or `None` (with the reason printed) when the tests may skip.
async fn database(table: &str, settings: PostgresSettings) -> Option<Postgres> {
    let required = std::env::var("FRESHEN_REQUIRE_POSTGRES").is_ok_and(|v| v == "1");
    let skip = |why: String| {
        assert!(!required, "FRESHEN_REQUIRE_POSTGRES=1 but {why}");
        eprintln!(
            "skipping the PostgreSQL test: {why}. .ci/run starts one with .ci/postgres.sh; FRESHEN_REQUIRE_POSTGRES=1 makes this a failure"
        );
    };
    let Ok(url) = std::env::var("FRESHEN_POSTGRES_URL") else {
        skip("FRESHEN_POSTGRES_URL is not set".into());
        return None;
    };
    let db = Postgres::new(&url, settings.with_table(table)).expect("a valid connection string");
    if let Err(error) = db.migrate().await {
        skip(format!("PostgreSQL at {url} cannot be used: {error}"));
        return None;
    }
    // A table of this test's own, empty.
    admin(&url, &format!("TRUNCATE {table}")).await;
    Some(db)
}

/// Runs `sql` on a connection of its own.
async fn admin(url: &str, sql: &str) {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
    let connection = tokio::spawn(connection);
    client.batch_execute(sql).await.unwrap();
    drop(client);
    let _ = connection.await;
}

/// Ends the server process that holds the lock of `table`'s session `key`,
/// as a network cut or a dead worker would.
async fn cut_lock_holder(table: &str, key: &str) {
    let url = std::env::var("FRESHEN_POSTGRES_URL").unwrap();
    let sql = format!(
        "SELECT pg_terminate_backend(pid) FROM pg_locks \
         WHERE locktype = 'advisory' AND granted \
         AND ((classid::bigint << 32) | objid::bigint) = hashtextextended('{table}/{key}', 0)"
    );
    admin(&url, &sql).await;
}

fn session(generation: u64, tag: &str) -> StoredSession {
    let mut session =
        StoredSession::pair(AccessToken::new(format!("at-{tag}")), RefreshToken::new(format!("rt-{tag}")));
    session.generation = Generation(generation);
    session
}

async fn loaded(store: &PostgresStore) -> Option<Generation> {
    store.load().await.unwrap().map(|s| s.generation)
}

/// Whether `store`'s lock comes within `wait`.
async fn locks_within(store: &PostgresStore, wait: Duration) -> Option<freshen::store::StoreLock> {
    tokio::time::timeout(wait, store.lock()).await.ok().map(|lock| lock.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_check_passes_with_three_processes_under_faults() {
    let Some(db) = database("t_store_check", PostgresSettings::default()).await else { return };
    let report = check_store(|| db.store("tenant-1"), &StoreCheck::shared()).await.unwrap();
    println!("{report}");
}

/// Two handles on `table`'s session `k` holding a session: the first took
/// the lock and lost it (its connection cut), the second holds it now.
async fn lock_lost(db: &Postgres, table: &str) -> (PostgresStore, PostgresStore, [freshen::store::StoreLock; 2]) {
    let (stale, next) = (db.store("k"), db.store("k"));
    stale.save(&session(3, "start")).await.unwrap();
    let lost = stale.lock().await.unwrap();
    cut_lock_holder(table, "k").await;
    let held = locks_within(&next, Duration::from_secs(5)).await.expect("the cut lock was released");
    (stale, next, [lost, held])
}

#[tokio::test]
async fn a_write_under_a_lost_lock_is_fenced_off() {
    let Some(db) = database("t_fenced", PostgresSettings::default()).await else { return };
    let (stale, next, _locks) = lock_lost(&db, "t_fenced").await;
    next.save(&session(4, "next")).await.unwrap();
    // The stale holder comes back with what it refreshed meanwhile.
    assert_eq!(stale.save(&session(4, "stale")).await, Err(StoreError::Fenced));
    assert_eq!(stale.save(&session(9, "stale")).await, Err(StoreError::Fenced));
    assert_eq!(stale.clear().await, Err(StoreError::Fenced));
    let kept = next.load().await.unwrap().unwrap();
    assert_eq!(kept.access_token.unwrap().expose_secret(), "at-next");
}

/// A handle whose lock was lost takes the lock again before the lost one is
/// dropped (a driver keeping it for a request still out): dropping the lost
/// lock leaves the new lock's fence in place, so that once the new lock is
/// lost too, the handle's writes are still fenced off. Clearing the fence on
/// any drop made them unconditional: they overwrote the next holder's.
#[tokio::test]
async fn a_lost_lock_dropped_late_leaves_the_new_locks_fence() {
    let Some(db) = database("t_late_drop", PostgresSettings::default()).await else { return };
    let store = db.store("k");
    store.save(&session(3, "start")).await.unwrap();
    let lost = store.lock().await.unwrap();
    cut_lock_holder("t_late_drop", "k").await;
    let relocked = locks_within(&store, Duration::from_secs(5)).await.expect("the cut lock was released");
    drop(lost);
    cut_lock_holder("t_late_drop", "k").await;
    let next = db.store("k");
    let _held = locks_within(&next, Duration::from_secs(5)).await.expect("the cut lock was released");
    next.save(&session(4, "next")).await.unwrap();
    assert_eq!(store.save(&session(5, "stale")).await, Err(StoreError::Fenced));
    assert_eq!(loaded(&next).await, Some(Generation(4)));
    drop(relocked);
}

#[tokio::test]
async fn a_cleared_session_keeps_its_fence() {
    let Some(db) = database("t_cleared", PostgresSettings::default()).await else { return };
    let (stale, next, [_lost, held]) = lock_lost(&db, "t_cleared").await;
    next.clear().await.unwrap();
    drop(held);
    // A late write cannot bring the logged-out session back.
    assert_eq!(stale.save(&session(4, "stale")).await, Err(StoreError::Fenced));
    assert_eq!(loaded(&next).await, None);
}

#[tokio::test]
async fn the_lock_excludes_until_its_holder_dies() {
    let Some(db) = database("t_excludes", PostgresSettings::default()).await else { return };
    let (first, second) = (db.store("k"), db.store("k"));
    let held = first.lock().await.unwrap();
    assert!(locks_within(&second, Duration::from_millis(500)).await.is_none(), "two holders at once");
    let waiting = tokio::spawn(async move { second.lock().await.map(drop) });
    cut_lock_holder("t_excludes", "k").await;
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("released").unwrap().unwrap();
    println!("lock passed on {:?} after its holder's connection ended", started.elapsed());
    drop(held);
}

#[tokio::test]
async fn a_stalled_holder_loses_the_lock_after_its_bound_and_its_write_is_fenced() {
    let settings = PostgresSettings::default().with_lock_hold(Duration::from_secs(1));
    let Some(db) = database("t_stalled", settings).await else { return };
    let (stalled, next) = (db.store("k"), db.store("k"));
    let (locked, stall) = (std::sync::mpsc::channel(), std::sync::mpsc::channel::<()>());
    // The stalled worker has a runtime of its own, which stops dead (a GC or
    // VM pause: no task runs, heartbeats included) until the other worker
    // holds the lock; then it wakes and writes what it had.
    let worker = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let lost = runtime.block_on(stalled.lock()).unwrap();
        locked.0.send(std::time::Instant::now()).unwrap();
        let _ = stall.1.recv();
        let written = runtime.block_on(stalled.save(&session(2, "stalled")));
        drop(lost);
        written
    });
    let started = tokio::task::spawn_blocking(move || locked.1.recv().unwrap()).await.unwrap();
    let held = locks_within(&next, Duration::from_secs(10)).await.expect("the stalled lock was released");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(900), "released after {waited:?}, before its bound");
    next.save(&session(2, "next")).await.unwrap();
    stall.0.send(()).unwrap();
    // Joined off this runtime: the worker's write runs on a pooled
    // connection whose task this runtime drives.
    let written = tokio::task::spawn_blocking(move || worker.join().unwrap()).await.unwrap();
    assert_eq!(written, Err(StoreError::Fenced));
    println!("a lock whose holder stalled past its 1 s bound passed on after {waited:?}");
    drop(held);
}

#[tokio::test]
async fn a_live_holder_keeps_its_lock_past_the_bound_while_its_refresh_takes_long() {
    let settings = PostgresSettings::default().with_lock_hold(Duration::from_secs(1));
    let Some(db) = database("t_live_holder", settings).await else { return };
    let (slow, other) = (db.store("k"), db.store("k"));
    let held = slow.lock().await.unwrap();
    // Three bounds without a store operation (a slow server, retries with
    // backoff): the heartbeat keeps the lock, and nobody else gets it.
    assert!(locks_within(&other, Duration::from_secs(3)).await.is_none(), "a live holder lost its lock");
    slow.save(&session(2, "slow")).await.unwrap();
    drop(held);
    assert!(locks_within(&other, Duration::from_secs(5)).await.is_some());
}

#[tokio::test]
async fn a_waiter_that_gives_up_leaves_no_lock_behind() {
    let Some(db) = database("t_gave_up", PostgresSettings::default()).await else { return };
    let (holder, quitter, later) = (db.store("k"), db.store("k"), db.store("k"));
    let held = holder.lock().await.unwrap();
    // The session stops waiting (its lock-wait bound) and drops the future.
    assert!(locks_within(&quitter, Duration::from_millis(300)).await.is_none());
    drop(held);
    // Had the abandoned wait been granted later, it would hold the lock now.
    assert!(locks_within(&later, Duration::from_secs(3)).await.is_some(), "an abandoned wait kept the lock");
}

#[tokio::test]
async fn different_sessions_never_wait_for_each_other() {
    let Some(db) = database("t_keys", PostgresSettings::default()).await else { return };
    let held = db.store("tenant-a").lock().await.unwrap();
    let other = locks_within(&db.store("tenant-b"), Duration::from_secs(2)).await;
    assert!(other.is_some(), "tenant-b waited for tenant-a's lock");
    // Nor the same key in another table.
    let Some(elsewhere) = database("t_keys_other", PostgresSettings::default()).await else { return };
    assert!(locks_within(&elsewhere.store("tenant-a"), Duration::from_secs(2)).await.is_some());
    drop(held);
}

#[tokio::test]
async fn migrating_again_changes_nothing_and_a_newer_schema_is_refused() {
    let Some(db) = database("t_migrate", PostgresSettings::default()).await else { return };
    let store = db.store("k");
    store.save(&session(5, "kept")).await.unwrap();
    db.migrate().await.unwrap();
    assert_eq!(loaded(&store).await, Some(Generation(5)));
    let url = std::env::var("FRESHEN_POSTGRES_URL").unwrap();
    admin(&url, "INSERT INTO t_migrate_schema (version) VALUES (99)").await;
    assert!(db.migrate().await.is_err(), "a newer schema was migrated over");
    admin(&url, "DELETE FROM t_migrate_schema WHERE version = 99").await;
}

/// The whole story with real sessions: a worker's lock is cut while its
/// refresh is in flight; another worker takes the lock and refreshes the same
/// token (the server's grace period answers it); the first worker's answer
/// comes, its write is fenced off, and it adopts what the other wrote. Nobody
/// is logged out and both end on the same, live tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_lost_its_lock_mid_refresh_adopts_the_next_holders_tokens() {
    use freshen::{Config, Environment, Session};
    use freshen_core::oauth::Client;
    use freshen_core::session::SessionConfig;
    use freshen_sim::authority::AuthorityConfig;
    use freshen_sim::http::{InProcess, State};

    let table = "t_sessions_fenced";
    let Some(db) = database(table, PostgresSettings::default()).await else { return };
    let mut grace = AuthorityConfig::default();
    (grace.grace, grace.reuse_detection, grace.rotation) = (Duration::from_secs(60), true, true);
    let state = State::new(grace, 1);
    let config = Config::new("https://authority.invalid/token", Client::public("fleet"))
        .with_session(SessionConfig::default().with_shared_store(true).with_refresh_jitter(Duration::ZERO));
    let start = |seed: u64| {
        Session::start_in(config.clone(), InProcess::new(state.clone()), db.store("tenant"), Environment::seeded(seed))
            .unwrap()
    };
    let first = start(1);
    let issued = state.login("fleet");
    first.log_in_with(StoredSession::pair(issued.access_token, issued.refresh_token)).await.unwrap();
    let second = start(2);

    // The first worker's refresh: the server acts at once, its answer takes a while.
    state.set_token_answer_delay(Duration::from_millis(800));
    let in_flight = tokio::spawn({
        let first = first.clone();
        async move { first.refresh().await }
    });
    // Its lock is cut once it holds it (polled: the refresh runs on its own).
    let url = std::env::var("FRESHEN_POSTGRES_URL").unwrap();
    let (probe, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let held = format!(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
         AND ((classid::bigint << 32) | objid::bigint) = hashtextextended('{table}/tenant', 0)"
    );
    let mut polls = 0;
    while probe.query_one(held.as_str(), &[]).await.unwrap().get::<_, i64>(0) == 0 {
        polls += 1;
        assert!(polls < 200, "the first worker never took the lock");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cut_lock_holder(table, "tenant").await;
    // The second worker refreshes the same token meanwhile, under the lock.
    let theirs = second.refresh().await.expect("the second worker refreshed");
    let ours = in_flight.await.unwrap();
    assert!(!first.state().is_logged_out(), "the first worker was logged out: {:?}", first.state());
    assert!(!second.state().is_logged_out(), "the second worker was logged out");
    let now = first.access_token().await.expect("the first worker has a token");
    assert_eq!(now.generation(), theirs.generation(), "the first worker did not adopt the stored tokens ({ours:?})");
    // What the store holds is alive at the server.
    let stored = db.store("tenant").load().await.unwrap().unwrap();
    let refresh_token = stored.refresh_token.unwrap();
    let accepted = state.authority().refresh(state.now(), "fleet", None, refresh_token.expose_secret(), None);
    assert!(accepted.is_ok(), "the stored refresh token was refused: {accepted:?}");
}
