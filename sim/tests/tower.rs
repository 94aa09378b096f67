//! The tower layer over a hyper client, against the reference authority
//! served on a loopback port: the same contract as the reqwest middleware.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test may panic: that is how it fails

use freshen::secrecy::ExposeSecret as _;

use bytes::Bytes;
use freshen::store::MemoryStore;
use freshen::tower::{AuthError, AuthLayer, NoReplay};
use freshen::transport::ReqwestTransport;
use freshen::{Config, Environment, Error, Session};
use freshen_core::ids::Generation;
use freshen_core::oauth::Client;
use freshen_core::stored::StoredSession;
use freshen_sim::authority::AuthorityConfig;
use freshen_sim::http::{Server, paths};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use tower::{ServiceBuilder, ServiceExt as _};

const CLIENT: &str = "tower-test";

type Hyper = HyperClient<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

/// A server, a session whose stored access token is already spent, and a hyper client.
async fn setup() -> (Server, Session<ReqwestTransport, MemoryStore>, Hyper) {
    let server = Server::loopback(AuthorityConfig::default(), 5).await.unwrap();
    let issued = server.state().login(CLIENT);
    let mut spent = StoredSession::pair(issued.access_token, issued.refresh_token);
    spent.access_expires_at = Some(freshen_core::time::UnixTime::EPOCH);
    let config = Config::new(server.url(paths::TOKEN), Client::public(CLIENT));
    let transport = ReqwestTransport::new().unwrap();
    let session = Session::start_in(config, transport, MemoryStore::holding(&spent), Environment::seeded(1)).unwrap();
    let hyper = HyperClient::builder(TokioExecutor::new()).build_http();
    (server, session, hyper)
}

fn get(server: &Server, path: &str) -> http::Request<Full<Bytes>> {
    http::Request::get(server.url(path)).body(Full::default()).unwrap()
}

#[tokio::test]
async fn the_layer_attaches_the_token_and_retries_a_401_once() {
    let (server, session, hyper) = setup().await;
    let api = ServiceBuilder::new().layer(AuthLayer::new(session.clone())).service(hyper);
    let response = api.clone().oneshot(get(&server, paths::RESOURCE)).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.into_body().collect().await.unwrap().to_bytes(), "hello");

    // An admin revokes the current access token: one 401, a refresh, one retry.
    let current = session.access_token().await.unwrap();
    let now = server.state().now();
    server.state().authority().revoke(now, CLIENT, current.expose_secret()).unwrap();
    let hits = server.state().resource_hits();
    let response = api.oneshot(get(&server, paths::RESOURCE)).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(server.state().resource_hits() - hits, 2, "one 401, one retry");
    assert_eq!(session.access_token().await.unwrap().generation(), Generation(3));
}

#[tokio::test]
async fn a_second_401_is_returned_not_retried_again() {
    let (server, session, hyper) = setup().await;
    let api = ServiceBuilder::new().layer(AuthLayer::new(session)).service(hyper);
    let response = api.oneshot(get(&server, paths::ALWAYS_401)).await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(server.state().resource_hits(), 2, "exactly one retry: no 401 loop");
}

#[tokio::test]
async fn a_request_without_a_copy_is_sent_once_and_its_401_is_an_error() {
    let (server, session, hyper) = setup().await;
    let api = ServiceBuilder::new().layer(AuthLayer::new(session.clone()).replay_with(NoReplay)).service(hyper);
    let before = session.access_token().await.unwrap();
    let error = api.oneshot(get(&server, paths::ALWAYS_401)).await.unwrap_err();
    assert!(matches!(error.session(), Some(Error::UnauthorizedNotRetried)), "{error}");
    assert_eq!(server.state().resource_hits(), 1);
    // The refused token was reported: the next caller gets a fresh one.
    assert!(session.access_token().await.unwrap().generation() > before.generation());

    // Boxed, as a stack of tower layers hands it on, the session's error is still found.
    let boxed: tower::BoxError = Box::new(error);
    assert_eq!(Error::find_in(&*boxed), Some(&Error::UnauthorizedNotRetried));
}

#[tokio::test]
async fn a_copy_made_by_the_app_is_what_is_sent_again() {
    let (server, session, hyper) = setup().await;
    let copies = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = std::sync::Arc::clone(&copies);
    let replay = move |request: &http::Request<Full<Bytes>>| {
        counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut copy = http::Request::new(request.body().clone());
        *copy.uri_mut() = request.uri().clone();
        Some(copy)
    };
    let api = ServiceBuilder::new().layer(AuthLayer::new(session).replay_with(replay)).service(hyper);
    let response = api.oneshot(get(&server, paths::ALWAYS_401)).await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(server.state().resource_hits(), 2);
    assert_eq!(copies.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_session_error_comes_back_typed() {
    let server = Server::loopback(AuthorityConfig::default(), 5).await.unwrap();
    let config = Config::new(server.url(paths::TOKEN), Client::public(CLIENT));
    let transport = ReqwestTransport::new().unwrap();
    let session = Session::start(config, transport, MemoryStore::new()).unwrap();
    let hyper: Hyper = HyperClient::builder(TokioExecutor::new()).build_http();
    let api = ServiceBuilder::new().layer(AuthLayer::new(session)).service(hyper);
    let error = api.oneshot(get(&server, paths::RESOURCE)).await.unwrap_err();
    assert!(matches!(error, AuthError::Session(Error::NoSession)), "{error}");
    assert!(error.session().is_some_and(Error::needs_login));
    assert_eq!(server.state().resource_hits(), 0, "nothing sent without a token");
}

/// A bound token goes as `Authorization: DPoP` with a proof of each request;
/// a resource server's nonce challenge is answered once with the same token
/// and the server's nonce, and the session is not told (the token is good).
#[tokio::test]
async fn a_bound_token_is_proven_and_a_nonce_challenge_is_retried_with_the_nonce() {
    use freshen::dpop::DpopKey;
    use freshen_sim::authority::dpop::verify;
    let key = DpopKey::from_bytes(&[9; 32]).unwrap();
    let fresh = StoredSession::pair(
        freshen_core::token::AccessToken::new("bound-access"),
        freshen_core::token::RefreshToken::new("bound-refresh"),
    )
    .with_access_expiry(freshen::system_clock(), std::time::Duration::from_secs(3600))
    .with_dpop_key(key.clone());
    let config = Config::new("http://127.0.0.1:9/token", Client::public(CLIENT));
    let store = MemoryStore::holding(&fresh);
    let session = Session::start_in(config, ReqwestTransport::new().unwrap(), store, Environment::seeded(1)).unwrap();
    let url = "http://api.test/v1/me";
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let seen = calls.clone();
    let resource = tower::service_fn(move |request: http::Request<Full<Bytes>>| {
        let call = seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async move {
            let authorization = request.headers()[http::header::AUTHORIZATION].to_str().unwrap().to_owned();
            assert_eq!(authorization, "DPoP bound-access");
            let token = freshen_core::token::AccessToken::new("bound-access");
            let proof = verify(request.headers()["dpop"].as_bytes(), "GET", url, freshen::system_clock(), Some(&token));
            let proof = proof.expect("a valid proof of this request, naming the token");
            let response = if call == 0 {
                assert_eq!(proof.nonce, None);
                freshen_sim::http::resource_nonce_challenge("n1")
            } else {
                assert_eq!(proof.nonce.as_deref(), Some("n1"), "the retry carries the server's nonce");
                http::Response::new(Full::<Bytes>::default())
            };
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let api = ServiceBuilder::new().layer(AuthLayer::new(session.clone())).service(resource);
    let response = api.clone().oneshot(http::Request::get(url).body(Full::default()).unwrap()).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2, "one challenge, one retry");
    // The next request carries the nonce at once.
    let response = api.oneshot(http::Request::get(url).body(Full::default()).unwrap()).await.unwrap();
    assert_eq!((response.status(), calls.load(std::sync::atomic::Ordering::SeqCst)), (http::StatusCode::OK, 3));
    assert_eq!(session.stats().refresh_attempts, 0, "the session was not told: the token is good");
}
