//! freshen against a real, certified authorization server: panva's
//! oidc-provider (`sim/idp/server.mjs`), which `.ci/run` installs and starts
//! on loopback with a short access-token lifetime and exports
//! `FRESHEN_IDP_URL`. Without it a test prints why and passes; with
//! `FRESHEN_REQUIRE_IDP=1` (set by `.ci/run`) it fails instead.
//!
//! The server finishes every login interaction at once for one account, so
//! the "browser" here (reqwest with cookies) only follows redirects and
//! submits the device flow's forms, as a user's browser would.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::print_stderr)] // a test may panic: that is how it fails

use std::time::Duration;

use freshen::dpop::{DpopKey, DpopNonce, ProofClaims};
use freshen::middleware::AuthorizedClient;
use freshen::secrecy::ExposeSecret as _;
use freshen::store::MemoryStore;
use freshen::transport::ReqwestTransport;
use freshen::{Config, Environment, Error, Session};
use freshen_core::oauth::Client;
use freshen_core::session::LogoutCause;
use freshen_core::token::TokenType;

const CLIENT: &str = "freshen-test";

/// The server's URL, or `None` after saying why it is not there.
async fn idp() -> Option<String> {
    let required = std::env::var("FRESHEN_REQUIRE_IDP").is_ok_and(|v| v == "1");
    let reason = match std::env::var("FRESHEN_IDP_URL") {
        Err(_) => "FRESHEN_IDP_URL is not set".to_owned(),
        Ok(url) => match reqwest::get(format!("{url}/.well-known/openid-configuration")).await {
            Ok(response) if response.status().is_success() => return Some(url),
            Ok(response) => format!("{url} answered {}", response.status()),
            Err(error) => format!("{url} is not reachable: {error}"),
        },
    };
    assert!(!required, "FRESHEN_REQUIRE_IDP=1 but {reason}");
    eprintln!(
        "skipping the real-server test: {reason}. .ci/run starts sim/idp/server.mjs; FRESHEN_REQUIRE_IDP=1 makes this a failure"
    );
    None
}

/// Whether a session binds its tokens to a key by DPoP.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Binding {
    Bearer,
    Dpop,
}

/// A session configured from the server's published metadata alone, as an
/// app that knows only the issuer would.
async fn session(url: &str, store: MemoryStore, binding: Binding) -> Session<ReqwestTransport, MemoryStore> {
    let mut config = Config::discover(url, Client::public(CLIENT)).await.expect("the server's metadata");
    if binding == Binding::Dpop {
        config = config.with_dpop();
    }
    Session::start_in(config, ReqwestTransport::new().unwrap(), store, Environment::seeded(3)).unwrap()
}

/// Discovery reads the certified server's metadata: every endpoint the
/// session uses, and the issuer, as its own routes name them.
#[tokio::test]
async fn the_servers_metadata_names_every_endpoint() {
    let Some(url) = idp().await else { return };
    let metadata = freshen::discovery::fetch(&reqwest::Client::new(), &url).await.unwrap();
    assert!(metadata.supports_dpop(), "{:?}", metadata.dpop_algorithms());
    let config = metadata.config(Client::public(CLIENT));
    assert_eq!(config.issuer, Some(url.clone()));
    assert_eq!(config.token_endpoint, format!("{url}/token"));
    assert_eq!(config.revocation_endpoint, Some(format!("{url}/token/revocation")));
    assert_eq!(config.authorization_endpoint, Some(format!("{url}/auth")));
    assert_eq!(config.device_authorization_endpoint, Some(format!("{url}/device/auth")));
    // Another issuer's name for the same server is refused (RFC 8414 §3.3).
    let other = url.replace("127.0.0.1", "localhost");
    let refused = freshen::discovery::fetch(&reqwest::Client::new(), &other).await;
    assert!(matches!(refused, Err(freshen::discovery::DiscoveryError::IssuerMismatch { .. })), "{refused:?}");
}

/// A session logged in with the code flow through the server's real authorization endpoint.
async fn logged_in(url: &str, binding: Binding) -> (Session<ReqwestTransport, MemoryStore>, MemoryStore) {
    let store = MemoryStore::new();
    let session = session(url, store.clone(), binding).await;
    let login = session.start_code_login(Some("openid offline_access")).await.unwrap();
    let (page, finished) = tokio::join!(browser().get(login.authorization_url()).send(), login.finish());
    assert_eq!(page.unwrap().status(), 200, "the loopback page");
    finished.unwrap();
    (session, store)
}

fn browser() -> reqwest::Client {
    reqwest::Client::builder().cookie_store(true).build().unwrap()
}

/// The server's word on an access token: its userinfo endpoint's status.
async fn userinfo(url: &str, session: &Session<ReqwestTransport, MemoryStore>) -> u16 {
    let token = session.access_token().await.unwrap();
    let response = reqwest::Client::new()
        .get(format!("{url}/me"))
        .header(reqwest::header::AUTHORIZATION, token.authorization().unwrap().clone())
        .send()
        .await
        .unwrap();
    response.status().as_u16()
}

/// A refresh presented by someone else (a thief, or a replay) straight to the token endpoint.
async fn present(url: &str, refresh_token: &str) -> serde_json::Value {
    let form = [("grant_type", "refresh_token"), ("refresh_token", refresh_token), ("client_id", CLIENT)];
    let body = reqwest::Client::new().post(format!("{url}/token")).form(&form).send().await.unwrap().bytes().await;
    serde_json::from_slice(&body.unwrap()).unwrap()
}

fn stored_refresh(store: &MemoryStore) -> String {
    store.peek().unwrap().unwrap().refresh_token.unwrap().expose_secret().to_owned()
}

/// Waits for ten access-token expiries, each renewed with a rotated refresh
/// token, the server accepting each new access token (`server_accepts`).
async fn ten_renewals(
    session: &Session<ReqwestTransport, MemoryStore>,
    store: &MemoryStore,
    server_accepts: impl AsyncFn() -> u16,
) {
    let mut generation = session.access_token().await.unwrap().generation();
    let mut refresh_tokens = vec![stored_refresh(store)];
    let mut renewals = 0;
    // Bounded: ten renewals of a short-lived token take well under this.
    for _ in 0..600 {
        if renewals == 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        let token = session.access_token().await.unwrap();
        if token.generation() != generation {
            generation = token.generation();
            renewals += 1;
            assert_eq!(server_accepts().await, 200, "renewal {renewals}: the server refused the new token");
            let rotated = stored_refresh(store);
            assert!(!refresh_tokens.contains(&rotated), "renewal {renewals} did not rotate the refresh token");
            refresh_tokens.push(rotated);
        }
    }
    assert_eq!(renewals, 10, "ten expiries renewed");
}

/// Code login with PKCE through the server's real authorization endpoint,
/// then ten access-token expiries, each renewed by a rotating refresh.
#[tokio::test]
async fn a_code_login_lives_through_ten_expiries_with_rotation() {
    let Some(url) = idp().await else { return };
    let (session, store) = logged_in(&url, Binding::Bearer).await;

    assert_eq!(userinfo(&url, &session).await, 200);
    ten_renewals(&session, &store, async || userinfo(&url, &session).await).await;
    assert_eq!(session.stats().refresh_attempts_failed, 0, "every refresh succeeded at once");
}

/// A refresh token already rotated away, replayed from elsewhere, is refused
/// and ends the grant (the server's reuse detection); the session says so.
#[tokio::test]
async fn a_replayed_old_refresh_token_is_refused_and_ends_the_grant() {
    let Some(url) = idp().await else { return };
    let (session, store) = logged_in(&url, Binding::Bearer).await;
    let stolen = stored_refresh(&store);
    session.refresh().await.unwrap();
    assert_ne!(stored_refresh(&store), stolen, "rotated");
    let replay = present(&url, &stolen).await;
    assert_eq!(replay["error"], "invalid_grant", "{replay}");
    let error = session.refresh().await.unwrap_err();
    assert!(matches!(error, Error::LoggedOut(LogoutCause::RefreshTokenRejected { .. })), "{error:?}");
}

/// Logout revokes the grant at the server: its refresh token no longer works.
#[tokio::test]
async fn logout_revokes_the_grant_at_the_server() {
    let Some(url) = idp().await else { return };
    let (session, store) = logged_in(&url, Binding::Bearer).await;
    let refresh_token = stored_refresh(&store);
    session.log_out().await;
    assert!(store.peek().is_none(), "the store is cleared");
    let after = present(&url, &refresh_token).await;
    assert_eq!(after["error"], "invalid_grant", "{after}");
}

/// The device flow against the real server: the user opens the complete
/// verification URI, submits the server's forms, and the polling session
/// logs in.
#[tokio::test]
async fn a_device_login_is_approved_through_the_servers_forms() {
    let Some(url) = idp().await else { return };
    let (session, store) = device_login(&url, Binding::Bearer).await;
    assert_eq!(store.peek().unwrap().unwrap().token_type, TokenType::Bearer);
    assert_eq!(userinfo(&url, &session).await, 200);
}

async fn device_login(url: &str, binding: Binding) -> (Session<ReqwestTransport, MemoryStore>, MemoryStore) {
    let store = MemoryStore::new();
    let session = session(url, store.clone(), binding).await;
    let login = session.start_device_login(Some("openid offline_access")).await.unwrap();
    let page = login.verification_uri_complete().expect("oidc-provider gives the complete URI").to_owned();
    let user = async {
        let browser = browser();
        let mut html = browser.get(&page).send().await.unwrap().text().await.unwrap();
        // Each page is one form of hidden fields (see server.mjs); submitted until approved.
        for _ in 0..4 {
            if html.contains("device login approved") {
                return;
            }
            let action = attribute(&html, "action").expect("a form");
            let fields = hidden_fields(&html);
            html = browser.post(action).form(&fields).send().await.unwrap().text().await.unwrap();
        }
        panic!("the device login was not approved: {html}");
    };
    let ((), finished) = tokio::join!(user, login.finish());
    finished.unwrap();
    assert!(store.peek().is_some());
    (session, store)
}

fn attribute(html: &str, name: &str) -> Option<String> {
    let start = html.find(&format!("{name}=\""))? + name.len() + 2;
    let end = html.get(start..)?.find('"')?;
    html.get(start..start + end).map(str::to_owned)
}

fn hidden_fields(html: &str) -> Vec<(String, String)> {
    html.split("<input")
        .skip(1)
        .filter_map(|input| Some((attribute(input, "name")?, attribute(input, "value")?)))
        .collect()
}

/// RFC 9207: oidc-provider names itself in the redirect (`iss`); a session
/// that expects another issuer refuses the code (the mix-up defense).
#[tokio::test]
async fn a_redirect_naming_another_issuer_is_refused() {
    let Some(url) = idp().await else { return };
    let config = Config::new(format!("{url}/token"), Client::public(CLIENT))
        .with_authorization_endpoint(format!("{url}/auth"))
        .with_issuer("https://another-server.example");
    let session =
        Session::start_in(config, ReqwestTransport::new().unwrap(), MemoryStore::new(), Environment::seeded(3))
            .unwrap();
    let login = session.start_code_login(Some("openid")).await.unwrap();
    let (_, finished) = tokio::join!(browser().get(login.authorization_url()).send(), login.finish());
    let error = finished.unwrap_err();
    assert_eq!(error, freshen::login::LoginError::Redirect(freshen_core::code::RedirectError::IssuerMismatch));
    assert!(session.access_token().await.unwrap_err().needs_login());
}

// DPoP (RFC 9449). The server requires a nonce in every proof, so each
// client's first proof, at the token endpoint and at the userinfo
// endpoint alike, is challenged.

/// The userinfo endpoint through the middleware: a bound token goes with a
/// fresh proof of each request (and the resource server's nonce).
async fn userinfo_bound(url: &str, client: &AuthorizedClient<ReqwestTransport, MemoryStore>) -> u16 {
    client.send(client.get(format!("{url}/me"))).await.unwrap().status().as_u16()
}

fn stored_key(store: &MemoryStore) -> DpopKey {
    let stored = store.peek().unwrap().unwrap();
    assert_eq!(stored.token_type, TokenType::DPoP);
    stored.dpop_key.expect("the key is stored with the tokens")
}

/// A refresh presented straight to the token endpoint with proofs by `key`
/// (following the server's nonce challenges, as a thief's client would).
async fn present_bound(url: &str, refresh_token: &str, key: &DpopKey) -> serde_json::Value {
    let token_url = format!("{url}/token");
    let form = [("grant_type", "refresh_token"), ("refresh_token", refresh_token), ("client_id", CLIENT)];
    let mut nonce: Option<DpopNonce> = None;
    for round in 0u8..3 {
        let mut jti = [round; 16];
        getrandom::fill(&mut jti).unwrap();
        let claims = ProofClaims::new("POST", &token_url, freshen::system_clock(), jti).with_nonce(nonce.as_ref());
        let proof = key.proof(&claims);
        let response =
            reqwest::Client::new().post(&token_url).header("dpop", proof.expose()).form(&form).send().await.unwrap();
        let next = response.headers().get("dpop-nonce").and_then(|v| DpopNonce::parse(v.as_bytes()));
        let body: serde_json::Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
        if body["error"] != "use_dpop_nonce" {
            return body;
        }
        nonce = next;
    }
    panic!("the server kept asking for a nonce");
}

/// A bound code login, then ten expiries: every refresh proves the session's
/// key (kept in the store with the tokens), the server rotates the bound
/// refresh token each time, nonce challenges are followed without counting
/// as failures, and each new access token works at the userinfo endpoint
/// only with a proof, never as a bearer token.
#[tokio::test]
async fn a_dpop_bound_session_lives_through_ten_expiries_with_rotation() {
    let Some(url) = idp().await else { return };
    let (session, store) = logged_in(&url, Binding::Dpop).await;
    let key = stored_key(&store).thumbprint();
    let client = AuthorizedClient::new(reqwest::Client::new(), session.clone());
    assert_eq!(userinfo_bound(&url, &client).await, 200, "challenged for a nonce, then answered");
    let token = session.access_token().await.unwrap();
    assert_eq!(token.token_type(), &TokenType::DPoP);
    let as_bearer = reqwest::Client::new().get(format!("{url}/me")).bearer_auth(token.expose_secret()).send().await;
    assert_eq!(as_bearer.unwrap().status(), 401, "a bound token without a proof is refused");

    let server_accepts = async || {
        assert_eq!(stored_key(&store).thumbprint(), key, "one key for the session's life");
        userinfo_bound(&url, &client).await
    };
    ten_renewals(&session, &store, server_accepts).await;
    let stats = session.stats();
    eprintln!("bound session against the real server: {stats:?}");
    assert_eq!(stats.refresh_attempts_failed, 0, "every refresh succeeded, nonce challenges aside: {stats:?}");
    assert!(stats.dpop_nonce_challenges >= 1, "the first refresh was challenged for a nonce: {stats:?}");
    assert_eq!(stats.refresh_attempts, stats.refreshes_succeeded + stats.dpop_nonce_challenges, "{stats:?}");
}

/// A bound refresh token stolen from the store is useless to a thief: the
/// server refuses it without a proof and with a proof by another key, and
/// the session (which holds the key) refreshes on, untouched.
#[tokio::test]
async fn a_stolen_bound_refresh_token_is_refused_without_its_key() {
    let Some(url) = idp().await else { return };
    let (session, store) = logged_in(&url, Binding::Dpop).await;
    let stolen = stored_refresh(&store);
    let unproven = present(&url, &stolen).await;
    assert_eq!(unproven["error"], "invalid_grant", "{unproven}");
    let thief = freshen::dpop::generate_key().unwrap();
    let other_key = present_bound(&url, &stolen, &thief).await;
    assert_eq!(other_key["error"], "invalid_grant", "{other_key}");
    session.refresh().await.unwrap();
    assert_ne!(stored_refresh(&store), stolen, "the session rotated on");
}

/// Logout revokes a bound grant: its refresh token is refused even with
/// proofs by its own key.
#[tokio::test]
async fn logout_revokes_a_bound_grant() {
    let Some(url) = idp().await else { return };
    let (session, store) = logged_in(&url, Binding::Dpop).await;
    let (refresh_token, key) = (stored_refresh(&store), stored_key(&store));
    session.log_out().await;
    assert!(store.peek().is_none(), "the store is cleared");
    let after = present_bound(&url, &refresh_token, &key).await;
    assert_eq!(after["error"], "invalid_grant", "{after}");
}

/// A bound device login: the polls prove the key, and the tokens are bound.
#[tokio::test]
async fn a_dpop_bound_device_login_is_approved() {
    let Some(url) = idp().await else { return };
    let (session, store) = device_login(&url, Binding::Dpop).await;
    stored_key(&store);
    let client = AuthorizedClient::new(reqwest::Client::new(), session);
    assert_eq!(userinfo_bound(&url, &client).await, 200);
}
