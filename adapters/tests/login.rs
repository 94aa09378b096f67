//! Logging in with the device flow (RFC 8628), as a CLI does it, against the
//! reference authority's device grant on tokio's paused clock.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // a test may panic: that is how it fails

mod support;

use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use freshen::StateView;
use freshen::login::LoginError;
use freshen::store::MemoryStore;
use freshen_core::device::DeviceError;
use freshen_sim::authority::AuthorityConfig;
use freshen_sim::authority::device::Decision;
use support::{AuthorityTransport, DEVICE_URL};

fn device_session() -> (freshen::Session<AuthorityTransport, MemoryStore>, AuthorityTransport, MemoryStore) {
    let transport = AuthorityTransport::new(AuthorityConfig::default());
    let store = MemoryStore::new();
    let config = support::config().with_device_authorization_endpoint(DEVICE_URL);
    let session = support::start(config, transport.clone(), store.clone());
    (session, transport, store)
}

/// The user, at the verification page after `after`.
fn user_decides(transport: &AuthorityTransport, user_code: &str, after: Duration, decision: Decision) {
    let transport = transport.clone();
    let user_code = user_code.to_owned();
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        let now = transport.now();
        assert!(transport.state.authority().decide_device_login(now, &user_code, decision));
    });
}

#[tokio::test(start_paused = true)]
async fn a_device_login_polls_at_the_interval_until_approved_and_is_stored_before_it_resolves() {
    let (session, transport, store) = device_session();
    let login = session.start_device_login(Some("offline_access")).await.unwrap();
    assert_eq!(login.user_code().len(), 9, "{}", login.user_code());
    assert!(login.verification_uri().ends_with("/device"), "{}", login.verification_uri());
    assert!(login.verification_uri_complete().unwrap().contains(login.user_code()));
    assert_eq!(login.expires_in(), Duration::from_secs(600));
    user_decides(&transport, login.user_code(), Duration::from_secs(12), Decision::Approve);
    login.finish().await.unwrap();
    // Polled at 5, 10 and 15 s (the interval), never told to slow down.
    assert_eq!(transport.refreshes.load(SeqCst), 3);
    assert!(store.peek().is_some(), "resolved before the tokens were stored");
    assert!(matches!(session.state(), StateView::Valid { .. }), "{}", session.state());
    let token = session.access_token().await.unwrap();
    let now = transport.now();
    let header = token.authorization().unwrap().to_str().unwrap().to_owned();
    let bearer = header.strip_prefix("Bearer ").unwrap();
    assert!(transport.state.authority().validate(now, bearer).is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_refused_device_login_is_a_typed_error_and_starts_no_session() {
    let (session, transport, store) = device_session();
    let login = session.start_device_login(None).await.unwrap();
    user_decides(&transport, login.user_code(), Duration::from_secs(7), Decision::Deny);
    assert_eq!(login.finish().await.unwrap_err(), LoginError::Device(DeviceError::Denied));
    assert!(store.peek().is_none());
    assert_eq!(session.state(), StateView::NoSession);
}

#[tokio::test(start_paused = true)]
async fn a_device_login_nobody_approves_ends_at_expiry_without_polling_faster() {
    let (session, transport, _) = device_session();
    let login = session.start_device_login(None).await.unwrap();
    let started = tokio::time::Instant::now();
    assert_eq!(login.finish().await.unwrap_err(), LoginError::Device(DeviceError::Expired));
    assert!(started.elapsed() <= Duration::from_secs(600), "{:?}", started.elapsed());
    let polls = transport.refreshes.load(SeqCst);
    assert!((100..=120).contains(&polls), "{polls} polls in 600 s at a 5 s interval");
}

#[tokio::test(start_paused = true)]
async fn a_device_login_needs_its_endpoint() {
    let transport = AuthorityTransport::new(AuthorityConfig::default());
    let session = support::start(support::config(), transport, MemoryStore::new());
    let error = session.start_device_login(None).await.unwrap_err();
    assert_eq!(error, LoginError::NoEndpoint("device authorization"));
}
