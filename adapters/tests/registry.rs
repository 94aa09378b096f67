//! `Sessions`: one session per key in one process, started on first use,
//! dropped once idle, and never one refresh at a time for the whole process.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test may panic: that is how it fails

mod support;

use std::collections::HashMap;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use freshen::Sessions;
use freshen::store::MemoryStore;
use freshen_sim::authority::AuthorityConfig;
use support::{AuthorityTransport, config};

const IDLE: Duration = Duration::from_secs(60);

/// A registry over the in-process authority whose keys' stores each hold a
/// login (what a fleet's table holds), and the stores by key.
fn registry(keys: &[&str]) -> (Sessions<AuthorityTransport, MemoryStore>, AuthorityTransport) {
    let transport = AuthorityTransport::new(AuthorityConfig::default());
    let stores: HashMap<String, MemoryStore> = keys
        .iter()
        .map(|key| ((*key).to_owned(), MemoryStore::holding(&transport.login(Some(Duration::from_secs(3600))))))
        .collect();
    let stores = Arc::new(Mutex::new(stores));
    let open = move |key: &str| stores.lock().unwrap().entry(key.to_owned()).or_default().clone();
    (Sessions::with_idle_after(config(), transport.clone(), open, IDLE), transport)
}

#[tokio::test(start_paused = true)]
async fn each_key_is_one_session_started_on_first_use() {
    let (sessions, _) = registry(&["a", "b"]);
    assert_eq!(sessions.live(), 0);
    let a = sessions.access_token("a").await.unwrap();
    let b = sessions.access_token("b").await.unwrap();
    assert_ne!(a.authorization().unwrap(), b.authorization().unwrap(), "two keys shared a session");
    assert_eq!(sessions.access_token("a").await.unwrap().authorization().unwrap(), a.authorization().unwrap());
    assert_eq!(sessions.live(), 2);
    // A key with nothing stored is a session with no session: the app logs it in.
    assert!(sessions.access_token("new-tenant").await.unwrap_err().needs_login());
}

#[tokio::test(start_paused = true)]
async fn keys_refresh_side_by_side_never_one_at_a_time() {
    let keys: Vec<String> = (0..10).map(|k| format!("tenant-{k}")).collect();
    let (sessions, transport) = registry(&keys.iter().map(String::as_str).collect::<Vec<_>>());
    for key in &keys {
        sessions.access_token(key).await.unwrap();
    }
    // Ten forced refreshes at once; each answer takes two 20 ms legs.
    let started = tokio::time::Instant::now();
    let refreshes: Vec<_> = keys
        .iter()
        .map(|key| {
            let session = sessions.session(key).unwrap();
            tokio::spawn(async move { session.refresh().await })
        })
        .collect();
    for refresh in refreshes {
        refresh.await.unwrap().unwrap();
    }
    let took = started.elapsed();
    assert_eq!(transport.refreshes.load(SeqCst), 10);
    assert!(took < Duration::from_millis(200), "ten keys took {took:?}: refreshed one after another");
}

#[tokio::test(start_paused = true)]
async fn an_idle_session_is_dropped_and_starts_again_from_its_store() {
    let (sessions, _) = registry(&["a", "b"]);
    let before = sessions.access_token("a").await.unwrap();
    sessions.access_token("b").await.unwrap();
    // "b" stays in use; "a" does not.
    for _ in 0..4 {
        tokio::time::sleep(IDLE / 2).await;
        sessions.access_token("b").await.unwrap();
    }
    assert_eq!(sessions.live(), 1, "the idle session stayed in memory");
    let after = sessions.access_token("a").await.unwrap();
    assert_eq!(after.generation(), before.generation());
    assert_eq!(after.authorization().unwrap(), before.authorization().unwrap(), "not read back from its store");
    assert_eq!(sessions.live(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_session_a_caller_still_holds_is_not_dropped() {
    let (sessions, _) = registry(&["a"]);
    let held = sessions.session("a").unwrap();
    held.access_token().await.unwrap();
    tokio::time::sleep(IDLE * 3).await;
    assert_eq!(sessions.drop_idle(), 0);
    assert_eq!(sessions.live(), 1, "a held session was dropped: a second would start for its key");
    drop(held);
    assert_eq!(sessions.drop_idle(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_key_logged_in_elsewhere_after_its_first_use_is_found() {
    let transport = AuthorityTransport::new(AuthorityConfig::default());
    let store = MemoryStore::new();
    let opened = store.clone();
    let sessions = Sessions::new(config(), transport.clone(), move |_: &str| opened.clone());
    // Asked for before onboarding wrote it: no session yet.
    assert!(sessions.access_token("late").await.unwrap_err().needs_login());
    // Another worker onboards the tenant.
    freshen::store::Store::save(&store, &transport.login(Some(Duration::from_secs(3600)))).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(sessions.access_token("late").await.is_ok(), "the key kept its first answer");
}

#[tokio::test(start_paused = true)]
async fn shutdown_stops_every_session_and_starts_no_more() {
    let (sessions, transport) = registry(&["a", "b"]);
    let a = sessions.session("a").unwrap();
    sessions.access_token("b").await.unwrap();
    sessions.shutdown().await;
    assert_eq!(sessions.live(), 0);
    assert!(matches!(sessions.session("a"), Err(freshen::Error::Shutdown)));
    assert!(matches!(a.refresh().await, Err(freshen::Error::Shutdown)), "a handle kept from before was not stopped");
    assert_eq!(transport.refreshes.load(SeqCst), 0);
}
