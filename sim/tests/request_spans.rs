//! Each authorized request runs in a span naming the generation of the token
//! it was answered with and whether a 401 made it retry; the session's span
//! carries the name the app gave it. Its own test binary: a thread-scoped
//! subscriber shares callsites with whatever else runs in the process.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test may panic: that is how it fails

use freshen::secrecy::ExposeSecret as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use freshen::middleware::AuthMiddleware;
use freshen::store::MemoryStore;
use freshen::transport::ReqwestTransport;
use freshen::{Config, Session, StoredSession};
use freshen_core::oauth::Client;
use freshen_sim::authority::AuthorityConfig;
use freshen_sim::http::{Server, paths};

const CLIENT: &str = "span-test";

#[tokio::test]
async fn requests_and_sessions_are_named_in_their_spans() {
    let log = CapturedLog::default();
    let subscriber =
        tracing_subscriber::fmt().with_ansi(false).with_max_level(tracing::Level::DEBUG).with_writer(log.clone());
    let _guard = tracing::subscriber::set_default(subscriber.finish());

    let server = Server::loopback(AuthorityConfig::default(), 5).await.unwrap();
    let issued = server.state().login(CLIENT);
    let session = StoredSession::pair(issued.access_token, issued.refresh_token)
        .with_access_expiry(freshen::system_clock(), Duration::from_secs(3600));
    let config = Config::new(server.url(paths::TOKEN), Client::public(CLIENT)).with_name("tenant-42");
    let transport = ReqwestTransport::new().unwrap();
    let session = Session::start(config, transport, MemoryStore::holding(&session)).unwrap();
    let api = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(AuthMiddleware::new(session.clone()))
        .build();
    assert_eq!(api.get(server.url(paths::RESOURCE)).send().await.unwrap().status(), 200);

    // The token is revoked: one 401, a refresh, one retry.
    let current = session.access_token().await.unwrap();
    let now = server.state().now();
    server.state().authority().revoke(now, CLIENT, current.expose_secret()).unwrap();
    assert_eq!(api.get(server.url(paths::RESOURCE)).send().await.unwrap().status(), 200);

    let log = log.text();
    assert!(log.contains("authorized_request{generation=g1 retried=false}"), "{log}");
    assert!(log.contains("authorized_request{generation=g2 retried=true}"), "{log}");
    assert!(log.contains("freshen{session=tenant-42}"), "{log}");
    assert!(!log.contains(current.expose_secret()), "no token in the log");
}

/// A log written to memory.
#[derive(Clone, Default)]
struct CapturedLog(Arc<Mutex<Vec<u8>>>);

impl CapturedLog {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for CapturedLog {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for CapturedLog {
    type Writer = Self;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}
