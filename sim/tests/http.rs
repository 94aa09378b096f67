//! freshen over real HTTP: the reqwest transport, the reqwest-middleware
//! middleware and the plain client wrapper, against the reference authority
//! served by hyper on a loopback port.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // a test may panic: that is how it fails

use freshen::secrecy::ExposeSecret as _;

use std::time::Duration;

use freshen::middleware::{AuthMiddleware, AuthorizedClient, ClientError};
use freshen::store::MemoryStore;
use freshen::transport::{ReqwestTransport, Transport};
use freshen::{Config, Environment, Error, Session};
use freshen_core::ids::Generation;
use freshen_core::oauth::{self, Classified, Client, MAX_BODY_BYTES, MalformedReason};
use freshen_core::session::{AttemptFailure, TransportFailure};
use freshen_core::stored::StoredSession;
use freshen_core::token::{AccessToken, RefreshToken};
use freshen_sim::authority::AuthorityConfig;
use freshen_sim::http::{Server, paths};

const CLIENT: &str = "http-test";

/// A server and a session whose stored access token is already spent.
async fn setup() -> (Server, Session<ReqwestTransport, MemoryStore>, MemoryStore) {
    let server = Server::loopback(AuthorityConfig::default(), 5).await.unwrap();
    let issued = server.state().login(CLIENT);
    let mut spent = StoredSession::pair(issued.access_token, issued.refresh_token);
    spent.access_expires_at = Some(freshen_core::time::UnixTime::EPOCH);
    let store = MemoryStore::holding(&spent);
    let config = Config::new(server.url(paths::TOKEN), Client::public(CLIENT))
        .with_revocation_endpoint(server.url(paths::REVOKE));
    let transport = ReqwestTransport::new().unwrap();
    let session = Session::start_in(config, transport, store.clone(), Environment::seeded(1)).unwrap();
    (server, session, store)
}

#[tokio::test]
async fn the_reqwest_transport_refreshes_over_http() {
    let (server, session, store) = setup().await;
    let token = session.access_token().await.unwrap();
    assert_eq!(token.generation(), Generation(2));
    assert_eq!(server.state().stats().refreshes, 1);
    assert_eq!(store.peek().unwrap().unwrap().generation, Generation(2));
}

#[tokio::test]
async fn the_transport_bounds_the_body_and_maps_failures() {
    // A refusal, a body over the bound, and a closed port.
    let transport = ReqwestTransport::new().unwrap();
    let server = Server::loopback(AuthorityConfig::default(), 5).await.unwrap();
    let form = oauth::refresh_request(&Client::public(CLIENT), &RefreshToken::new("unknown"), None);
    let response = transport.post_form(&server.url(paths::TOKEN), &form).await.unwrap();
    assert_eq!(response.status, 400);
    let outcome = response.classify(&oauth::Policy::default(), freshen_core::time::UnixTime::EPOCH);
    assert!(matches!(outcome, Classified::Terminal(_)), "{outcome:?}");

    let huge = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let huge_addr = huge.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut socket, _) = huge.accept().await.unwrap();
        let mut request = [0u8; 4096];
        let _ = socket.read(&mut request).await;
        let body = vec![b'x'; 10 * 1024 * 1024];
        let head =
            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\ncontent-type: application/json\r\n\r\n", body.len());
        let _ = socket.write_all(head.as_bytes()).await;
        let _ = socket.write_all(&body).await;
    });
    let response = transport.post_form(&format!("http://{huge_addr}/token"), &form).await.unwrap();
    assert_eq!(response.body.len(), MAX_BODY_BYTES + 1, "read stops one byte past the bound");
    let outcome = response.classify(&oauth::Policy::default(), freshen_core::time::UnixTime::EPOCH);
    assert!(matches!(outcome, Classified::Malformed(ref m) if m.reason == MalformedReason::BodyTooLarge));

    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let error = transport.post_form(&format!("http://{closed}/token"), &form).await.unwrap_err();
    assert_eq!(error.failure(), TransportFailure::NotSent);
    // reqwest's own error is kept as the cause, for people to read.
    let cause = std::error::Error::source(&error).expect("the transport's error is chained").to_string();
    assert!(!cause.is_empty(), "{cause}");
}

#[tokio::test]
async fn the_middleware_attaches_the_token_and_retries_a_401_once() {
    let (server, session, _) = setup().await;
    let api = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(AuthMiddleware::new(session.clone()))
        .build();
    let response = api.get(server.url(paths::RESOURCE)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "hello");

    // An admin revokes the current access token: the next request gets a 401,
    // the session refreshes, and the request is retried once with the new token.
    let current = session.access_token().await.unwrap();
    let now = server.state().now();
    server.state().authority().revoke(now, CLIENT, current.expose_secret()).unwrap();
    let hits = server.state().resource_hits();
    let response = api.get(server.url(paths::RESOURCE)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(server.state().resource_hits() - hits, 2, "one 401, one retry");
    assert_eq!(session.access_token().await.unwrap().generation(), Generation(3));
    assert_eq!(session.stats().tokens_refused, 1, "the 401 is counted");
}

#[tokio::test]
async fn a_second_401_is_returned_not_retried_again() {
    let (server, session, _) = setup().await;
    let api = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(AuthMiddleware::new(session.clone()))
        .build();
    let response = api.get(server.url(paths::ALWAYS_401)).send().await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(server.state().resource_hits(), 2, "exactly one retry: no 401 loop");
}

#[tokio::test]
async fn a_body_that_cannot_be_cloned_is_sent_once_and_its_401_is_an_error() {
    let (server, session, _) = setup().await;
    let api = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(AuthMiddleware::new(session.clone()))
        .build();
    let stream = futures_util::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"payload"))]);
    let error =
        api.post(server.url(paths::ALWAYS_401)).body(reqwest::Body::wrap_stream(stream)).send().await.unwrap_err();
    assert_eq!(Error::from_middleware(&error), Some(&Error::UnauthorizedNotRetried), "{error}");
    assert_eq!(server.state().resource_hits(), 1);
}

/// Made `without_retry`, both clients send a request once and keep no copy
/// of it: a 401 is an error, and the session, told the token was refused,
/// refreshes for the next request.
#[tokio::test]
async fn a_client_without_retry_sends_once_and_the_next_request_gets_a_fresh_token() {
    let (server, session, _) = setup().await;
    let Generation(first) = session.access_token().await.unwrap().generation();
    let api = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(AuthMiddleware::new(session.clone()).without_retry())
        .build();
    let error = api.get(server.url(paths::ALWAYS_401)).send().await.unwrap_err();
    assert_eq!(Error::from_middleware(&error), Some(&Error::UnauthorizedNotRetried), "{error}");
    assert_eq!(server.state().resource_hits(), 1, "sent once");
    let refreshed = session.access_token().await.unwrap();
    assert_eq!(refreshed.generation(), Generation(first + 1), "the refused token was replaced");

    let client = AuthorizedClient::new(reqwest::Client::new(), session.clone()).without_retry();
    let request = client.request(reqwest::Method::GET, server.url(paths::ALWAYS_401)).build().unwrap();
    assert!(matches!(client.execute(request).await, Err(ClientError::Session(Error::UnauthorizedNotRetried))));
    assert_eq!(server.state().resource_hits(), 2, "sent once");
    assert_eq!(session.access_token().await.unwrap().generation(), Generation(first + 2));
    assert_eq!(session.stats().tokens_refused, 2, "each refused token is counted");
    assert_eq!(client.send(client.get(server.url(paths::RESOURCE))).await.unwrap().status(), 200);
}

#[tokio::test]
async fn the_plain_wrapper_does_the_same_without_middleware() {
    let (server, session, _) = setup().await;
    let client = AuthorizedClient::new(reqwest::Client::new(), session.clone());
    assert_eq!(client.send(client.get(server.url(paths::RESOURCE))).await.unwrap().status(), 200);

    let request = client.request(reqwest::Method::GET, server.url(paths::ALWAYS_401)).build().unwrap();
    assert_eq!(client.execute(request).await.unwrap().status(), 401);

    let stream = futures_util::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"x"))]);
    let request = client
        .request(reqwest::Method::POST, server.url(paths::ALWAYS_401))
        .body(reqwest::Body::wrap_stream(stream))
        .build()
        .unwrap();
    assert!(matches!(client.execute(request).await, Err(ClientError::Session(Error::UnauthorizedNotRetried))));
}

#[tokio::test]
async fn logout_revokes_at_the_server() {
    let (server, session, store) = setup().await;
    let token = session.access_token().await.unwrap();
    session.log_out().await;
    assert!(store.peek().is_none());
    assert_eq!(server.state().stats().revocations, 1);
    let now = server.state().now();
    assert!(server.state().authority().validate(now, token.expose_secret()).is_err(), "the family is revoked");
}

/// Through the middleware, the session's own error comes back in one call,
/// and the common question (must the user log in?) is one more.
#[tokio::test]
async fn a_session_error_comes_back_through_the_middleware() {
    let server = Server::loopback(AuthorityConfig::default(), 5).await.unwrap();
    let config = Config::new(server.url(paths::TOKEN), Client::public(CLIENT));
    let session = Session::start(config, ReqwestTransport::new().unwrap(), MemoryStore::new()).unwrap();
    let api = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(AuthMiddleware::new(session.clone()))
        .build();
    let error = api.get(server.url(paths::RESOURCE)).send().await.unwrap_err();
    let cause = Error::from_middleware(&error).expect("the session's error");
    assert_eq!(cause, &Error::NoSession);
    assert!(cause.needs_login() && !cause.is_logged_out());
    assert_eq!(server.state().resource_hits(), 0, "nothing was sent without a token");
}

#[tokio::test]
async fn the_session_s_request_timeout_is_the_one_number_that_bounds_a_request() {
    // A token endpoint that accepts the connection and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/token", silent.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let mut spent = StoredSession::pair(AccessToken::new("a"), RefreshToken::new("r"));
    spent.access_expires_at = Some(freshen_core::time::UnixTime::EPOCH);
    let settings = freshen_core::session::SessionConfig::default()
        .with_request_timeout(Duration::from_millis(300))
        .with_backoff(freshen_core::session::Backoff::new(Duration::from_millis(10), Duration::from_millis(10), 1));
    let config = Config::new(url, Client::public(CLIENT)).with_session(settings);
    // The transport has no timeout of its own: the session's bounds the attempt.
    let session = Session::start(config, ReqwestTransport::new().unwrap(), MemoryStore::holding(&spent)).unwrap();
    let started = std::time::Instant::now();
    let error = session.access_token().await.unwrap_err();
    assert!(
        matches!(
            error,
            Error::RefreshUnavailable { failure: AttemptFailure::Transport(TransportFailure::Timeout), .. }
        ),
        "{error:?}"
    );
    // A sanity bound, far above 300 ms: without the session's deadline this never returns.
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
}

/// The README's device login, over HTTP: the app polls the token endpoint
/// while the user approves at the verification page (a form POST here, as
/// a browser would send it).
#[tokio::test]
async fn a_device_login_over_http_is_approved_at_the_verification_page() {
    let mut authority = AuthorityConfig::default();
    authority.device_interval = Duration::from_secs(1);
    let server = Server::loopback(authority, 5).await.unwrap();
    let store = MemoryStore::new();
    let config = Config::new(server.url(paths::TOKEN), Client::public(CLIENT))
        .with_device_authorization_endpoint(server.url(paths::DEVICE_AUTHORIZATION));
    let session =
        Session::start_in(config, ReqwestTransport::new().unwrap(), store.clone(), Environment::seeded(1)).unwrap();
    assert!(session.access_token().await.unwrap_err().needs_login());

    let login = session.start_device_login(Some("offline_access")).await.unwrap();
    let page = login.verification_uri().to_owned();
    assert_eq!(page, server.url(paths::DEVICE));
    let form = [("user_code", login.user_code().to_owned()), ("decision", "approve".to_owned())];
    let approve = reqwest::Client::new().post(&page).form(&form).send();
    let (approved, finished) = tokio::join!(approve, login.finish());
    assert_eq!(approved.unwrap().status(), 200);
    finished.unwrap();
    assert_eq!(store.peek().unwrap().unwrap().generation, Generation(1));
    let token = session.access_token().await.unwrap();
    let client = AuthorizedClient::new(reqwest::Client::new(), session.clone());
    let request = client.request(reqwest::Method::GET, server.url(paths::RESOURCE)).build().unwrap();
    assert_eq!(client.execute(request).await.unwrap().status(), 200);
    assert_eq!(token.generation(), Generation(1));
}

/// A code login (RFC 7636 PKCE, RFC 8252 loopback redirect) over HTTP. The
/// browser is reqwest without redirects: it asks for the authorization URL,
/// first wanders to the favicon and to a forged redirect (both ignored), then
/// follows the server's redirect to the app's loopback port.
#[tokio::test]
async fn a_code_login_with_pkce_comes_back_to_the_loopback_port_and_is_stored() {
    let server = Server::loopback(AuthorityConfig::default(), 5).await.unwrap();
    let store = MemoryStore::new();
    let config = Config::new(server.url(paths::TOKEN), Client::public(CLIENT))
        .with_authorization_endpoint(server.url(paths::AUTHORIZE));
    let session =
        Session::start_in(config, ReqwestTransport::new().unwrap(), store.clone(), Environment::seeded(1)).unwrap();
    let login = session.start_code_login(Some("openid offline_access")).await.unwrap();
    let url = login.authorization_url().to_owned();
    assert!(url.contains("code_challenge_method=S256"), "{url}");
    let redirect_uri = login.redirect_uri().to_owned();
    let browser = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let user = async {
        let port_root = redirect_uri.trim_end_matches("/callback");
        let favicon = browser.get(format!("{port_root}/favicon.ico")).send().await.unwrap();
        assert_eq!(favicon.status(), 404);
        let forged = browser.get(format!("{redirect_uri}?code=stolen&state=guess")).send().await.unwrap();
        assert_eq!(forged.status(), 400);
        let authorized = browser.get(&url).send().await.unwrap();
        assert_eq!(authorized.status(), 302);
        let back = authorized.headers()[reqwest::header::LOCATION].to_str().unwrap().to_owned();
        assert!(back.starts_with(&redirect_uri), "{back}");
        browser.get(back).send().await.unwrap().status()
    };
    let (page, finished) = tokio::join!(user, login.finish());
    assert_eq!(page, 200);
    finished.unwrap();
    assert_eq!(store.peek().unwrap().unwrap().generation, Generation(1));
    assert_eq!(session.access_token().await.unwrap().generation(), Generation(1));
}

/// The user declines at the server: the redirect carries the refusal, typed.
#[tokio::test]
async fn a_refused_code_login_is_a_typed_error() {
    let server = Server::loopback(AuthorityConfig::default(), 5).await.unwrap();
    let config = Config::new(server.url(paths::TOKEN), Client::public(CLIENT))
        .with_authorization_endpoint(server.url(paths::AUTHORIZE));
    let session =
        Session::start_in(config, ReqwestTransport::new().unwrap(), MemoryStore::new(), Environment::seeded(1))
            .unwrap();
    let login = session.start_code_login(None).await.unwrap();
    let url = reqwest::Url::parse(login.authorization_url()).unwrap();
    let state = url.query_pairs().find(|(name, _)| name == "state").unwrap().1.into_owned();
    let declined = format!("{}?error=access_denied&state={state}", login.redirect_uri());
    let (page, finished) = tokio::join!(reqwest::get(declined), login.finish());
    assert_eq!(page.unwrap().status(), 200);
    let error = finished.unwrap_err();
    assert!(
        matches!(&error, freshen::login::LoginError::Redirect(freshen_core::code::RedirectError::Refused(e)) if e.code == "access_denied"),
        "{error:?}"
    );
    assert!(session.access_token().await.unwrap_err().needs_login());
}

/// A DPoP-bound code login against the reference authority over real
/// HTTP, with nonces required at the token endpoint (and at the resource
/// too, when `resource_requires_nonce`): the session, its store, and the server.
async fn bound_login(resource_requires_nonce: bool) -> (Server, Session<ReqwestTransport, MemoryStore>, MemoryStore) {
    let mut authority = AuthorityConfig::default();
    authority.dpop_nonce_lifetime = Some(Duration::from_secs(60));
    authority.resource_requires_dpop_nonce = resource_requires_nonce;
    let server = Server::loopback(authority, 5).await.unwrap();
    let store = MemoryStore::new();
    let config = Config::new(server.url(paths::TOKEN), Client::public(CLIENT))
        .with_authorization_endpoint(server.url(paths::AUTHORIZE))
        .with_dpop()
        .with_plain_http_allowed();
    let session =
        Session::start_in(config, ReqwestTransport::new().unwrap(), store.clone(), Environment::seeded(1)).unwrap();
    let login = session.start_code_login(None).await.unwrap();
    let url = login.authorization_url().to_owned();
    let browser = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let user = async {
        let authorized = browser.get(&url).send().await.unwrap();
        let back = authorized.headers()[reqwest::header::LOCATION].to_str().unwrap().to_owned();
        browser.get(back).send().await.unwrap().status()
    };
    let (page, finished) = tokio::join!(user, login.finish());
    assert_eq!(page, 200);
    finished.unwrap();
    (server, session, store)
}

/// What `freshen-sim serve` runs, bound: the login binds the grant to the
/// session's key, a refresh is challenged for the nonce and proven, the
/// resource takes the token only with a proof, and the refresh token
/// without the key is refused.
#[tokio::test]
async fn a_dpop_bound_login_refreshes_and_calls_the_resource_with_proofs() {
    let (server, session, store) = bound_login(false).await;
    let stored = store.peek().unwrap().unwrap();
    assert_eq!(stored.token_type, freshen_core::token::TokenType::DPoP);
    assert!(stored.dpop_key.is_some(), "the key is stored with the tokens");

    let token = session.refresh().await.unwrap();
    let stats = session.stats();
    assert!(stats.dpop_nonce_challenges >= 1 && stats.refresh_attempts_failed == 0, "{stats:?}");
    let client = AuthorizedClient::new(reqwest::Client::new(), session.clone());
    let answer = client.send(client.get(server.url(paths::RESOURCE))).await.unwrap();
    assert_eq!(answer.status(), 200, "a bound token with its proof");
    // A proof is good for one request (RFC 9449 §11.1): sent again, refused.
    let url = server.url(paths::RESOURCE);
    let proof = token.dpop_proof("GET", &url, freshen::system_clock(), None).unwrap().unwrap();
    let send = || {
        reqwest::Client::new()
            .get(&url)
            .header(reqwest::header::AUTHORIZATION, token.authorization().unwrap().clone())
            .header("dpop", proof.expose())
            .send()
    };
    assert_eq!(send().await.unwrap().status(), 200, "a fresh proof");
    let replayed = send().await.unwrap();
    assert_eq!(replayed.status(), 401, "a proof sent twice");
    assert!(replayed.headers()[reqwest::header::WWW_AUTHENTICATE].to_str().unwrap().contains("invalid_dpop_proof"));
    let as_bearer = reqwest::Client::new()
        .get(server.url(paths::RESOURCE))
        .bearer_auth(token.expose_secret())
        .send()
        .await
        .unwrap();
    assert_eq!(as_bearer.status(), 401, "a bound token as a bearer token");
    let refresh_token = store.peek().unwrap().unwrap().refresh_token.unwrap();
    let form =
        [("grant_type", "refresh_token"), ("refresh_token", refresh_token.expose_secret()), ("client_id", CLIENT)];
    let stolen = reqwest::Client::new().post(server.url(paths::TOKEN)).form(&form).send().await.unwrap();
    assert_eq!(stolen.status(), 400);
    assert!(stolen.text().await.unwrap().contains("invalid_grant"));
    // The thief's attempt consumed nothing: the session refreshes on.
    session.refresh().await.unwrap();
}

/// A client that does not retry gets a resource's nonce challenge back as
/// it came, and its next request carries the nonce.
#[tokio::test]
async fn without_retry_a_nonce_challenge_is_answered_as_it_came_and_the_nonce_kept() {
    let (server, session, _store) = bound_login(true).await;
    let client = AuthorizedClient::new(reqwest::Client::new(), session).without_retry();
    let challenged = client.send(client.get(server.url(paths::RESOURCE))).await.unwrap();
    assert_eq!(challenged.status(), 401);
    assert!(challenged.headers()[reqwest::header::WWW_AUTHENTICATE].to_str().unwrap().contains("use_dpop_nonce"));
    assert_eq!(client.send(client.get(server.url(paths::RESOURCE))).await.unwrap().status(), 200);
    assert_eq!((server.state().resource_hits(), server.state().resource_nonce_challenges()), (2, 1));
}

/// A resource server that requires its nonce in every proof (RFC 9449 §9)
/// challenges the client's first request; the client sends it again with
/// the nonce and remembers it, so the next request is not challenged. A
/// proof naming a nonce the server no longer has is challenged too.
#[tokio::test]
async fn a_resource_that_requires_its_nonce_challenges_once_and_the_nonce_is_remembered() {
    let (server, session, _store) = bound_login(true).await;
    let client = AuthorizedClient::new(reqwest::Client::new(), session.clone());
    let state = server.state();
    let first = client.send(client.get(server.url(paths::RESOURCE))).await.unwrap();
    assert_eq!(first.status(), 200);
    assert!(first.headers().contains_key("dpop-nonce"), "every answer to a proof names the nonce");
    assert_eq!((state.resource_hits(), state.resource_nonce_challenges()), (2, 1), "challenged, then sent with it");
    let second = client.send(client.get(server.url(paths::RESOURCE))).await.unwrap();
    assert_eq!(second.status(), 200);
    assert_eq!((state.resource_hits(), state.resource_nonce_challenges()), (3, 1), "the nonce was remembered");

    let token = session.access_token().await.unwrap();
    let url = server.url(paths::RESOURCE);
    let send_with = |nonce: Option<&str>| {
        let nonce = nonce.map(|nonce| freshen_core::dpop::DpopNonce::parse(nonce.as_bytes()).unwrap());
        let proof = token.dpop_proof("GET", &url, freshen::system_clock(), nonce.as_ref()).unwrap().unwrap();
        reqwest::Client::new()
            .get(&url)
            .header(reqwest::header::AUTHORIZATION, token.authorization().unwrap().clone())
            .header("dpop", proof.expose())
            .send()
    };
    for (nonce, why) in
        [(None, "a proof without a nonce"), (Some("n0-0"), "a proof naming a nonce the server does not have")]
    {
        let refused = send_with(nonce).await.unwrap();
        assert_eq!(refused.status(), 401, "{why}");
        assert!(refused.headers()[reqwest::header::WWW_AUTHENTICATE].to_str().unwrap().contains("use_dpop_nonce"));
        let current = refused.headers()["dpop-nonce"].to_str().unwrap().to_owned();
        assert_eq!(send_with(Some(&current)).await.unwrap().status(), 200, "{why}, then with the nonce");
    }
}

/// A resource server on a loopback port that asks for a DPoP nonce (RFC 9449
/// §9) once: its first answer is a `use_dpop_nonce` challenge with nonce
/// `n1`; every later request must carry a valid proof with that nonce and
/// the bound token. Returns its URL and its request count.
async fn nonce_demanding_resource() -> (String, std::sync::Arc<std::sync::atomic::AtomicU32>) {
    use std::sync::atomic::Ordering;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1/me", listener.local_addr().unwrap());
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let (seen, resource_url) = (calls.clone(), url.clone());
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (seen, url) = (seen.clone(), resource_url.clone());
            let service = hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                let call = seen.fetch_add(1, Ordering::SeqCst);
                let token = AccessToken::new("bound-access");
                let proof = freshen_sim::authority::dpop::verify(
                    request.headers()["dpop"].as_bytes(),
                    request.method().as_str(),
                    &url,
                    freshen::system_clock(),
                    Some(&token),
                );
                let authorization = request.headers()[http::header::AUTHORIZATION].to_str().unwrap().to_owned();
                let proof = proof.expect("a valid proof of this request, naming the token");
                assert_eq!(authorization, "DPoP bound-access", "the same token, retry or not");
                let response = if call == 0 {
                    assert_eq!(proof.nonce, None);
                    freshen_sim::http::resource_nonce_challenge("n1")
                } else {
                    assert_eq!(proof.nonce.as_deref(), Some("n1"), "the retry carries the server's nonce");
                    http::Response::new(http_body_util::Full::<bytes::Bytes>::default())
                };
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(io, service));
        }
    });
    (url, calls)
}

/// A session whose stored token is bound to a key and valid for an hour.
fn bound_session() -> Session<ReqwestTransport, MemoryStore> {
    let key = freshen::dpop::DpopKey::from_bytes(&[9; 32]).unwrap();
    let stored = StoredSession::pair(AccessToken::new("bound-access"), RefreshToken::new("bound-refresh"))
        .with_access_expiry(freshen::system_clock(), Duration::from_secs(3600))
        .with_dpop_key(key);
    let config = Config::new("http://127.0.0.1:9/token", Client::public(CLIENT));
    let store = MemoryStore::holding(&stored);
    Session::start_in(config, ReqwestTransport::new().unwrap(), store, Environment::seeded(1)).unwrap()
}

/// A resource server's nonce challenge is answered once, with the same token
/// and the server's nonce, through the middleware and the plain wrapper
/// alike; the session is not told (the token is good), and a request whose
/// body cannot be sent twice gets the challenge back as it came.
#[tokio::test]
async fn a_resource_nonce_challenge_is_retried_once_with_the_same_token_and_the_nonce() {
    use std::sync::atomic::Ordering;
    let session = bound_session();
    let (url, calls) = nonce_demanding_resource().await;
    let api = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(AuthMiddleware::new(session.clone()))
        .build();
    assert_eq!(api.get(&url).send().await.unwrap().status(), 200);
    assert_eq!(calls.load(Ordering::SeqCst), 2, "one challenge, one retry");
    // The nonce is remembered: the next request carries it at once.
    assert_eq!(api.get(&url).send().await.unwrap().status(), 200);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(session.stats().refresh_attempts, 0, "the session was not told: the token is good");

    let session = bound_session();
    let (url, calls) = nonce_demanding_resource().await;
    let client = AuthorizedClient::new(reqwest::Client::new(), session.clone());
    assert_eq!(client.send(client.get(&url)).await.unwrap().status(), 200);
    assert_eq!(calls.load(Ordering::SeqCst), 2, "one challenge, one retry");
    assert_eq!(session.stats().refresh_attempts, 0);

    let session = bound_session();
    let (url, calls) = nonce_demanding_resource().await;
    let api = reqwest_middleware::ClientBuilder::new(reqwest::Client::new()).with(AuthMiddleware::new(session)).build();
    let stream = futures_util::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"payload"))]);
    let answer = api.get(&url).body(reqwest::Body::wrap_stream(stream)).send().await.unwrap();
    assert_eq!((answer.status(), calls.load(Ordering::SeqCst)), (reqwest::StatusCode::UNAUTHORIZED, 1), "sent once");
}
