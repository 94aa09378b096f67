//! Quickstart: the reference authority on a loopback port, a real freshen
//! session (reqwest transport, memory store) behind reqwest-middleware, and 200
//! concurrent requests spread over three access-token lifetimes.
//!
//! `cargo run -p freshen-sim --example quickstart` prints the refreshes the
//! authority served: 3, one per expiry, however many requests were in flight.
#![allow(clippy::print_stdout)] // an example reports on its terminal

use std::time::Duration;

use freshen::core::oauth::Client;
use freshen::core::session::SessionConfig;
use freshen::middleware::AuthMiddleware;
use freshen::store::MemoryStore;
use freshen::transport::ReqwestTransport;
use freshen::{Config, Session};
use freshen_sim::authority::AuthorityConfig;
use freshen_sim::http::{Server, paths};

const CLIENT: &str = "quickstart";
const LIFETIME: Duration = Duration::from_secs(2);

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The authorization server: 2 s access tokens, rotation, reuse detection.
    let mut authority = AuthorityConfig::default();
    authority.access_ttl = LIFETIME;
    let server = Server::loopback(authority, 1).await?;
    println!("authority listening on {}", server.url(""));

    // The session: refresh 250 ms before expiry, tokens in memory.
    let session_config =
        SessionConfig::default().with_refresh_margin(Duration::from_millis(250)).with_refresh_jitter(Duration::ZERO);
    let config = Config::new(server.url(paths::TOKEN), Client::public(CLIENT))
        .with_revocation_endpoint(server.url(paths::REVOKE))
        .with_session(session_config);
    let session = Session::start(config, ReqwestTransport::new()?, MemoryStore::new())?;

    // Log in. The test server's password grant stands in for a browser
    // login here; `Session::start_code_login` and `start_device_login` run
    // the real flows, and tokens from any other flow are handed over this way.
    let (tokens, sent_at) = server.password_login(CLIENT).await?;
    session.log_in_sent_at(tokens, sent_at).await?;

    // 200 requests through the middleware, spread over three lifetimes (5.5 s).
    let api = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(AuthMiddleware::new(session.clone()))
        .build();
    let requests: Vec<_> = (0..200u64)
        .map(|i| {
            let (api, url) = (api.clone(), server.url(paths::RESOURCE));
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(i * 5_500 / 200)).await;
                api.get(url).send().await.map(|r| r.status().as_u16())
            })
        })
        .collect();
    let mut ok = 0;
    for request in requests {
        if matches!(request.await?, Ok(200)) {
            ok += 1;
        }
    }
    println!("requests answered 200: {ok} of 200");
    println!("refreshes served by the authority: {}", server.state().stats().refreshes);
    Ok(())
}
