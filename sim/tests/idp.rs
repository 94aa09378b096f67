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

use freshen::store::MemoryStore;
use freshen::transport::ReqwestTransport;
use freshen::{Config, Environment, Error, Session};
use freshen_core::oauth::Client;
use freshen_core::session::LogoutCause;

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

fn session(url: &str, store: MemoryStore) -> Session<ReqwestTransport, MemoryStore> {
    let config = Config::new(format!("{url}/token"), Client::public(CLIENT))
        .with_revocation_endpoint(format!("{url}/token/revocation"))
        .with_authorization_endpoint(format!("{url}/auth"))
        .with_device_authorization_endpoint(format!("{url}/device/auth"))
        .with_issuer(url);
    Session::start_in(config, ReqwestTransport::new().unwrap(), store, Environment::seeded(3)).unwrap()
}

/// A session logged in with the code flow through the server's real authorization endpoint.
async fn logged_in(url: &str) -> (Session<ReqwestTransport, MemoryStore>, MemoryStore) {
    let store = MemoryStore::new();
    let session = session(url, store.clone());
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

/// Code login with PKCE through the server's real authorization endpoint,
/// then ten access-token expiries, each renewed by a rotating refresh.
#[tokio::test]
async fn a_code_login_lives_through_ten_expiries_with_rotation() {
    let Some(url) = idp().await else { return };
    let (session, store) = logged_in(&url).await;

    let mut generation = session.access_token().await.unwrap().generation();
    let mut refresh_tokens = vec![stored_refresh(&store)];
    assert_eq!(userinfo(&url, &session).await, 200);
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
            assert_eq!(userinfo(&url, &session).await, 200, "renewal {renewals}: the server refused the new token");
            let rotated = stored_refresh(&store);
            assert!(!refresh_tokens.contains(&rotated), "renewal {renewals} did not rotate the refresh token");
            refresh_tokens.push(rotated);
        }
    }
    assert_eq!(renewals, 10, "ten expiries renewed");
    assert_eq!(session.stats().refresh_attempts_failed, 0, "every refresh succeeded at once");
}

/// A refresh token already rotated away, replayed from elsewhere, is refused
/// and ends the grant (the server's reuse detection); the session says so.
#[tokio::test]
async fn a_replayed_old_refresh_token_is_refused_and_ends_the_grant() {
    let Some(url) = idp().await else { return };
    let (session, store) = logged_in(&url).await;
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
    let (session, store) = logged_in(&url).await;
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
    let store = MemoryStore::new();
    let session = session(&url, store.clone());
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
    assert_eq!(userinfo(&url, &session).await, 200);
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
