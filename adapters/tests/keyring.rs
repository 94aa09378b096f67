//! The keyring store against real keyrings: Secret Service (GNOME Keyring over
//! D-Bus) and the kernel's keyutils, plus keyring-core's mock with injected
//! errors. Without those services a test prints why and passes; with
//! `FRESHEN_REQUIRE_KEYRING=1` (set by .ci/run) it fails instead.
//!
//! Real time, not tokio's paused clock: the keyring calls run on the blocking pool.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::print_stderr)] // a test may panic: that is how it fails

mod support;

use std::time::Duration;

use freshen::store::{KeyringStore, Store, StoreError};
use freshen_core::ids::Generation;
use freshen_core::stored::DecodeError;
use freshen_sim::authority::AuthorityConfig;
use support::AuthorityTransport;

/// Whether a missing keyring service is a failure rather than a skip.
fn required() -> bool {
    std::env::var("FRESHEN_REQUIRE_KEYRING").is_ok_and(|v| v == "1")
}

/// Skips (or fails, when required) with the reason.
fn unavailable(what: &str, why: &StoreError) {
    assert!(!required(), "{what} is unavailable ({why}) and FRESHEN_REQUIRE_KEYRING=1");
    eprintln!("skipping the {what} test: {why}. .ci/run starts one; FRESHEN_REQUIRE_KEYRING=1 makes this a failure");
}

fn unique(name: &str) -> String {
    format!("freshen-test-{name}-{}", std::process::id())
}

/// One whole session through `store`: written, refreshed, rotated, read back,
/// corrupted, and logged out.
async fn exercise(store: KeyringStore) {
    store.clear().await.unwrap();
    assert!(store.load().await.unwrap().is_none(), "a cleared entry reads as no session");

    let transport = AuthorityTransport::new(AuthorityConfig::default());
    let login = transport.login(Some(Duration::ZERO));
    store.save(&login).await.unwrap();
    let loaded = store.load().await.unwrap().unwrap();
    assert!(loaded.refresh_token.unwrap().same_as(login.refresh_token.as_ref().unwrap()));

    let session = support::start(support::config(), transport.clone(), store.clone());
    let token = session.access_token().await.unwrap();
    assert_eq!(token.generation(), Generation(2), "the spent token was refreshed");
    let rotated = store.load().await.unwrap().unwrap();
    assert_eq!(rotated.generation, Generation(2), "the rotation is in the keyring");
    assert!(!rotated.refresh_token.unwrap().same_as(login.refresh_token.as_ref().unwrap()));
    session.log_out().await;
    assert!(store.load().await.unwrap().is_none(), "logout cleared the keyring entry");
    drop(session);

    // What another program (or a newer version) left there is reported, not trusted.
    store.entry().unwrap().set_password("{\"v\":1,\"generation\":").unwrap();
    assert_eq!(store.load().await.unwrap_err(), StoreError::Corrupt(DecodeError::NotAnObject));
    store.entry().unwrap().set_password("{\"v\":99}").unwrap();
    assert_eq!(store.load().await.unwrap_err(), StoreError::Corrupt(DecodeError::UnsupportedVersion(99)));
    store.clear().await.unwrap();
    store.clear().await.unwrap();
}

#[tokio::test]
async fn secret_service_keeps_a_whole_session() {
    let store = match KeyringStore::secret_service(unique("ss"), "tester") {
        Ok(store) => store,
        Err(why) => return unavailable("Secret Service", &why),
    };
    if let Err(why) = store.clear().await {
        return unavailable("Secret Service", &why);
    }
    exercise(store).await;
}

#[tokio::test]
async fn kernel_keyutils_keeps_a_whole_session() {
    // The constructor tries a write: without a session keyring (`keyctl
    // session -`) it fails there, and a store it returns works.
    let store = match KeyringStore::keyutils(unique("ku"), "tester") {
        Ok(store) => store,
        Err(why) => return unavailable("keyutils (run under `keyctl session -`)", &why),
    };
    exercise(store).await;
}

#[tokio::test]
async fn the_mock_keyring_runs_the_same_session() {
    exercise(KeyringStore::mock(unique("mock"), "tester").unwrap()).await;
}

#[tokio::test]
async fn a_keyring_error_is_retried_and_never_shows_the_blob() {
    let store = KeyringStore::mock(unique("mock-errors"), "tester").unwrap();
    let transport = AuthorityTransport::new(AuthorityConfig::default());
    store.save(&transport.login(Some(Duration::ZERO))).await.unwrap();
    let session = support::start(support::config(), transport.clone(), store.clone());
    // The next keyring call (the load at start) fails once, as a locked keyring would.
    let entry = store.entry().unwrap();
    let mock: &keyring_core::mock::Cred = entry.as_any().downcast_ref().unwrap();
    mock.set_error(keyring_core::Error::NoStorageAccess("locked".into()));
    let token = session.access_token().await.unwrap();
    assert_eq!(token.generation(), Generation(2));

    // Bytes that are not UTF-8 come back from keyring-core with the raw blob
    // attached; our error must not carry them.
    store.entry().unwrap().set_secret(&[0xff, 0xfe, b'C', b'A', b'N', b'A', b'R', b'Y']).unwrap();
    let error = store.load().await.unwrap_err();
    assert_eq!(error, StoreError::Corrupt(DecodeError::NotAnObject));
    assert!(!format!("{error} {error:?}").contains("CANARY"));
}
