//! No token in any log line, Debug string or error message, over a whole
//! session (refresh, failed write, 401 retry, logout), a device login (its
//! device code included) and a session bound by DPoP (its key's secret
//! half included), with canary tokens.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // a test may panic: that is how it fails

mod support;

use base64::Engine as _;
use freshen::secrecy::ExposeSecret as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use freshen_sim::authority::AuthorityConfig;
use freshen_sim::authority::device::Decision;
use support::{AuthorityTransport, FaultyMemoryStore};

/// A stored access token that is already spent.
const SPENT: Option<Duration> = Some(Duration::ZERO);

async fn settle() {
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// Collects everything tracing prints.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn no_log_line_debug_string_or_error_contains_a_token() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    // Process-wide, and alone in this test binary: a thread-scoped subscriber
    // races with other tests over tracing's per-callsite interest cache.
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let mut authority = AuthorityConfig::default();
    authority.token_prefix = "CANARY".into();
    let transport = AuthorityTransport::new(authority);
    let store = FaultyMemoryStore::holding(&transport.login(SPENT));
    let session = support::start(support::config(), transport.clone(), store.clone());
    let mut shown = Vec::new();
    store.faults().fail_next_writes(1);
    let token = session.access_token().await.unwrap();
    shown.push(format!("{token:?} {session:?} {:?}", store.inner().peek()));
    let retried = session.retry_token(&token).await.unwrap();
    shown.push(format!("{retried:?} {:?}", retried.authorization().unwrap()));
    session.log_out().await;
    shown.push(format!("{:?}", session.access_token().await.unwrap_err()));
    shown.push(session.access_token().await.unwrap_err().to_string());

    // A device login: its device code is a secret too, and so are the tokens it brings.
    let device = support::config().with_device_authorization_endpoint(support::DEVICE_URL);
    let session = support::start(device, transport.clone(), freshen::store::MemoryStore::new());
    let login = session.start_device_login(None).await.unwrap();
    shown.push(format!("{login:?}"));
    let now = transport.now();
    assert!(transport.state.authority().decide_device_login(now, login.user_code(), Decision::Approve));
    login.finish().await.unwrap();
    shown.push(format!("{:?} {session:?}", session.access_token().await.unwrap()));
    let refused = session.start_device_login(None).await.unwrap();
    let now = transport.now();
    assert!(transport.state.authority().decide_device_login(now, refused.user_code(), Decision::Deny));
    let error = refused.finish().await.unwrap_err();
    shown.push(format!("{error:?} {error}"));

    // A session bound by DPoP: its refreshes carry proofs by a key whose
    // secret half is in the store, and must show nowhere else.
    let key = freshen::dpop::generate_key().unwrap();
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.expose_secret_bytes().as_slice());
    let store = FaultyMemoryStore::holding(&transport.login(SPENT).with_dpop_key(key.clone()));
    let session = support::start(support::config(), transport.clone(), store.clone());
    let outcome = session.access_token().await;
    shown.push(format!("{outcome:?} {session:?} {:?} {key:?}", store.inner().peek()));
    settle().await;

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("refresh answered"), "the log was captured:\n{logs}");
    for text in shown.iter().chain([&logs]) {
        assert!(!text.contains("CANARY_"), "a token leaked into: {text}");
        assert!(!text.contains(&secret), "the DPoP key leaked into: {text}");
    }
    assert!(logs.contains("dpop=true"), "the bound session's refresh was logged:\n{logs}");
    // The canary was real: the tokens do carry it.
    assert!(token.expose_secret().starts_with("CANARY_at_"));
}
