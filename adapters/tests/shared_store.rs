//! Sessions sharing one store, as processes share a file: one refresh between
//! them, whatever the number of callers, and every session adopts it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // a test may panic: that is how it fails

mod support;

use freshen::secrecy::ExposeSecret as _;
use std::collections::BTreeSet;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use freshen::store::{FileStore, Store, StoreError};
use freshen::{Environment, Session};
use freshen_core::ids::Generation;
use freshen_core::stored::DecodeError;
use freshen_sim::authority::AuthorityConfig;
use support::{AuthorityTransport, FaultyMemoryStore, config};

/// No grace and reuse detection: a second redemption of a token revokes the family.
fn strict() -> AuthorityConfig {
    let mut config = AuthorityConfig::default();
    config.grace = Duration::ZERO;
    config.reuse_detection = true;
    config
}

/// What a stampede left behind.
struct Aftermath {
    transport: AuthorityTransport,
    generations: BTreeSet<u64>,
    logged_out: usize,
    /// Whether the token the sessions hand out now is still accepted by the server.
    accepted: bool,
}

/// `processes` sessions sharing one store that holds a spent token; each gets
/// 50 callers at once.
async fn stampede(processes: usize, shared_store: bool) -> Aftermath {
    let transport = AuthorityTransport::new(strict());
    let store = FaultyMemoryStore::holding(&transport.login(Some(Duration::ZERO)));
    let sessions: Vec<_> = (0..processes)
        .map(|seed| {
            let mut config = config();
            config.session.shared_store = shared_store;
            Session::start_in(config, transport.clone(), store.clone(), Environment::seeded(seed as u64)).unwrap()
        })
        .collect();
    let callers: Vec<_> = sessions
        .iter()
        .flat_map(|session| (0..50).map(move |_| session.clone()))
        .map(|session| tokio::spawn(async move { session.access_token().await }))
        .collect();
    let mut generations = BTreeSet::new();
    for caller in callers {
        if let Ok(token) = caller.await.unwrap() {
            generations.insert(token.generation().0);
        }
    }
    // Let every rejection run its course (a re-read, one more attempt).
    tokio::time::sleep(Duration::from_secs(60)).await;
    let logged_out = sessions.iter().filter(|s| s.state().is_logged_out()).count();
    let accepted = match sessions[0].access_token().await {
        Ok(token) => transport.state.authority().validate(transport.now(), token.expose_secret()).is_ok(),
        Err(_) => false,
    };
    Aftermath { transport, generations, logged_out, accepted }
}

#[tokio::test(start_paused = true)]
async fn sessions_sharing_a_store_refresh_once_between_them() {
    let after = stampede(4, true).await;
    assert_eq!(after.transport.refreshes.load(SeqCst), 1, "one refresh for four processes");
    assert_eq!(after.generations, BTreeSet::from([2]), "every caller got the one new token");
    assert_eq!(after.logged_out, 0);
    assert!(after.accepted);
}

/// A server that deletes the previous access token on refresh (Django OAuth
/// Toolkit): after one process refreshes, the other's token is refused. Its
/// retry refreshes under the lock after reading the store, so it adopts the
/// other's tokens and sends nothing: one refresh between them, as the
/// README says.
#[tokio::test(start_paused = true)]
async fn a_token_deleted_by_another_process_s_refresh_is_replaced_from_the_store() {
    let mut authority = strict();
    authority.revoke_previous_access = true;
    let transport = AuthorityTransport::new(authority);
    let store = FaultyMemoryStore::holding(&transport.login(Some(Duration::from_secs(3600))));
    let [first, second] = [1, 2].map(|seed| {
        let mut config = config();
        config.session.shared_store = true;
        Session::start_in(config, transport.clone(), store.clone(), Environment::seeded(seed)).unwrap()
    });
    let held = second.access_token().await.unwrap();
    let refreshed = first.refresh().await.unwrap();
    assert_eq!(transport.refreshes.load(SeqCst), 1);
    let now = transport.now();
    assert!(transport.state.authority().validate(now, held.expose_secret()).is_err(), "the server deleted it");

    let replaced = second.retry_token(&held).await.unwrap();
    assert_eq!(replaced.generation(), refreshed.generation(), "the other process's token, from the store");
    assert_eq!(transport.refreshes.load(SeqCst), 1, "and no second refresh");
    assert!(transport.state.authority().validate(transport.now(), replaced.expose_secret()).is_ok());
    assert_eq!(second.stats().tokens_refused, 1);
}

/// The control: without the lock, the same stampede replays the spent token
/// and the server revokes the family. This is the bug the lock prevents.
#[tokio::test(start_paused = true)]
async fn without_the_lock_the_same_stampede_trips_reuse_detection() {
    let after = stampede(4, false).await;
    assert!(after.transport.refreshes.load(SeqCst) > 1);
    assert!(after.logged_out > 0 || !after.accepted, "reuse detection should have revoked the family");
}

/// Another process holds the lock far longer than the session waits for it.
/// The machine's timer, not the driver, ends each wait: the caller is told
/// within its bound, nothing is sent without the lock, and no abandoned wait
/// keeps a lock that comes late, so once the other process lets go the
/// session takes the lock, refreshes once and lets go in turn.
#[tokio::test(start_paused = true)]
async fn a_lock_held_elsewhere_too_long_fails_the_caller_in_time_and_no_late_lock_is_kept() {
    let transport = AuthorityTransport::new(strict());
    let store = FaultyMemoryStore::holding(&transport.login(Some(Duration::ZERO)));
    let mut config = config();
    config.session.shared_store = true;
    let (bound, lock_wait) = (config.session.wait_bound(), config.session.lock_wait());
    let session = Session::start_in(config, transport.clone(), store.clone(), Environment::seeded(1)).unwrap();
    let other_process = store.lock().await.unwrap();

    let asked = tokio::time::Instant::now();
    let refused = session.access_token().await;
    assert!(refused.is_err(), "a token without the lock");
    assert!(asked.elapsed() <= bound + Duration::from_secs(1), "told after {:?}", asked.elapsed());
    // Held through several more of the session's waits.
    tokio::time::sleep(lock_wait * 3).await;
    assert_eq!(transport.refreshes.load(SeqCst), 0, "refreshed without the lock");
    drop(other_process);

    let token = tokio::time::timeout(bound, session.access_token()).await;
    assert_eq!(token.expect("a late lock was kept").unwrap().generation().0, 2);
    assert_eq!(transport.refreshes.load(SeqCst), 1);
    let again = tokio::time::timeout(Duration::from_secs(5), store.lock()).await;
    assert!(matches!(again, Ok(Ok(_))), "the session kept the lock");
}

fn temporary_path(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("freshen-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("session.json")
}

#[tokio::test]
async fn a_file_store_round_trips_and_its_lock_excludes_other_handles() {
    let path = temporary_path("lock");
    let store = FileStore::new(&path);
    assert!(store.load().await.unwrap().is_none());
    let session = AuthorityTransport::new(strict()).login(Some(Duration::from_secs(60)));
    store.save(&session).await.unwrap();
    let loaded = store.load().await.unwrap().unwrap();
    assert_eq!(loaded.generation, session.generation);
    assert!(loaded.refresh_token.unwrap().same_as(session.refresh_token.as_ref().unwrap()));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the session file must be private");
    }

    // Another handle (as another process would open it) waits while the lock is held.
    let held = store.lock().await.unwrap();
    let other = FileStore::new(&path);
    assert!(tokio::time::timeout(Duration::from_millis(200), other.lock()).await.is_err());
    drop(held);
    let again = tokio::time::timeout(Duration::from_secs(5), other.lock()).await;
    assert!(matches!(again, Ok(Ok(_))), "the lock was not released");

    store.clear().await.unwrap();
    store.clear().await.unwrap();
    assert!(store.load().await.unwrap().is_none());
}

#[tokio::test]
async fn a_file_store_refuses_hostile_files_with_typed_errors() {
    let path = temporary_path("hostile");
    let store = FileStore::new(&path);
    std::fs::write(&path, vec![b'{'; 200 * 1024]).unwrap();
    assert!(matches!(store.load().await, Err(StoreError::Corrupt(DecodeError::TooLarge(_)))));
    std::fs::write(&path, b"\xff\xfe not json").unwrap();
    assert!(matches!(store.load().await, Err(StoreError::Corrupt(_))));
    // Left in place, as the trait promises.
    assert!(path.exists());
}

#[tokio::test]
async fn a_keyring_entry_is_shared_under_a_lock_file() {
    use freshen::store::{KeyringStore, LockFile};
    let transport = AuthorityTransport::new(strict());
    let lock = LockFile::new(temporary_path("keyring").with_extension("lock"));
    let store = KeyringStore::mock("freshen-test", "shared").unwrap().with_lock_file(lock);
    store.save(&transport.login(Some(Duration::ZERO))).await.unwrap();
    let sessions: Vec<_> = (0..3u64)
        .map(|seed| {
            let mut config = config();
            config.session.shared_store = true;
            Session::start_in(config, transport.clone(), store.clone(), Environment::seeded(seed)).unwrap()
        })
        .collect();
    let mut generations = BTreeSet::new();
    for session in &sessions {
        generations.insert(session.access_token().await.unwrap().generation().0);
    }
    assert_eq!(generations, BTreeSet::from([2]));
    assert_eq!(transport.refreshes.load(SeqCst), 1);
    // Without the lock file, sharing is refused with a typed error rather than done unsafely.
    let unlocked = KeyringStore::mock("freshen-test", "alone").unwrap();
    assert!(matches!(unlocked.lock().await, Err(StoreError::Unavailable(_))));
}

/// Two sessions of one process writing one file at once: each write has a
/// temporary file of its own, so none fails and the file holds one whole session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_file_store_writes_in_one_process_do_not_collide() {
    let path = temporary_path("collide");
    let (one, two) = (FileStore::new(&path), FileStore::new(&path));
    let session = AuthorityTransport::new(strict()).login(Some(Duration::from_secs(60)));
    let writes: Vec<_> = (0..40u64)
        .map(|i| {
            let store = if i % 2 == 0 { one.clone() } else { two.clone() };
            let mut session = session.clone();
            session.generation = freshen_core::ids::Generation(i + 1);
            tokio::spawn(async move { store.save(&session).await })
        })
        .collect();
    for write in writes {
        write.await.unwrap().unwrap();
    }
    let loaded = one.load().await.unwrap().unwrap();
    assert!((1..=40).contains(&loaded.generation.0));
    let leftovers = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .filter(|entry| entry.as_ref().unwrap().file_name().to_string_lossy().ends_with(".tmp"))
        .count();
    assert_eq!(leftovers, 0, "no temporary file is left behind");
    one.clear().await.unwrap();
}

/// A write refused `Fenced` while a refresh request is still out (a forced
/// refresh chained behind the one answered, sent at once because the server
/// does not rotate: the refresh token it carries is stored already): the
/// lock is lost, so the next write waits for the store's lock again.
/// Reusing the lost one (kept for the request out) let this process refresh
/// beside the lock's new holder (tier-2 seed 1108555, C1), and every write
/// under it was fenced again.
#[tokio::test(start_paused = true)]
async fn a_lock_lost_while_a_refresh_is_out_is_taken_again_not_reused() {
    let mut keeps_its_refresh_token = strict();
    keeps_its_refresh_token.rotation = false;
    let transport = AuthorityTransport::new(keeps_its_refresh_token);
    let store = FaultyMemoryStore::holding(&transport.login(Some(Duration::from_secs(3600))));
    let mut config = config();
    config.session.shared_store = true;
    let session = Session::start_in(config, transport.clone(), store.clone(), Environment::seeded(1)).unwrap();
    assert_eq!(session.access_token().await.unwrap().generation().0, 1);

    transport.hold();
    let first = support::refresh_in_background(&session).await;
    let second = support::refresh_in_background(&session).await;
    assert_eq!(store.faults().locks(), 1, "the first refresh runs under the lock");
    store.faults().lose_lock();

    // The first answer: its write is fenced while the chained refresh is out.
    transport.release(1);
    assert_eq!(first.await.unwrap().unwrap().generation().0, 2);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(transport.refreshes.load(SeqCst), 2, "the chained refresh is still out, and alone");
    assert_eq!(store.faults().locks(), 2, "the lost lock was reused, not taken again");
    assert_eq!(store.generation(), Some(Generation(2)), "written under the new lock");

    transport.release(1);
    assert_eq!(second.await.unwrap().unwrap().generation().0, 3);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(store.generation(), Some(Generation(3)));
    let stats = transport.state.authority().stats();
    assert_eq!((stats.refreshes, stats.refusals, stats.reuse_detections), (2, 0, 0));
}
