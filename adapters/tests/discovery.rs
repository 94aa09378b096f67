//! Discovery over HTTP: which document is tried, when the search moves on
//! to the next one, and that every failure is typed. The certified server's
//! own metadata is read in `sim/tests/idp.rs`.

#![cfg(feature = "reqwest")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // a test may panic: that is how it fails

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use freshen::Config;
use freshen::discovery::DiscoveryError;
use freshen_core::oauth::Client;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A loopback server answering each path from `routes` (404 otherwise),
/// one request per connection; its issuer URL, and the paths asked for.
async fn server(routes: BTreeMap<&'static str, (u16, String)>) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", listener.local_addr().unwrap());
    let asked = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&asked);
    let routes: BTreeMap<_, _> =
        routes.into_iter().map(|(path, (status, body))| (path, (status, body.replace("{issuer}", &issuer)))).collect();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && socket.read_exact(&mut byte).await.is_ok() {
                head.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&head).into_owned();
            let path = head.split(' ').nth(1).unwrap_or_default().to_owned();
            log.lock().unwrap().push(path.clone());
            let (status, body) = routes.get(path.as_str()).cloned().unwrap_or((404, String::new()));
            let answer = format!(
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(answer.as_bytes()).await;
        }
    });
    (issuer, asked)
}

const OAUTH: &str = "/.well-known/oauth-authorization-server";
const OIDC: &str = "/.well-known/openid-configuration";

fn metadata(issuer: &str) -> String {
    format!(r#"{{"issuer":"{issuer}","token_endpoint":"{issuer}/token","revocation_endpoint":"{issuer}/revoke"}}"#)
}

#[tokio::test]
async fn an_rfc_8414_document_is_read_first() {
    let (issuer, asked) = server(BTreeMap::from([(OAUTH, (200, metadata("{issuer}")))])).await;
    let config = Config::discover(&issuer, Client::public("app")).await.unwrap();
    assert_eq!(config.token_endpoint, format!("{issuer}/token"));
    assert_eq!(config.revocation_endpoint, Some(format!("{issuer}/revoke")));
    assert_eq!(config.issuer, Some(issuer));
    assert_eq!(*asked.lock().unwrap(), [OAUTH]);
}

/// A server with only the OpenID document: a 404 first, or a page that is
/// no metadata (a web app answering every path), then the OpenID one.
#[tokio::test]
async fn an_openid_provider_without_rfc_8414_is_found_at_its_own_path() {
    for first in [(404, String::new()), (200, "<html>hello</html>".to_owned()), (200, "{}".to_owned())] {
        let (issuer, asked) =
            server(BTreeMap::from([(OAUTH, first.clone()), (OIDC, (200, metadata("{issuer}")))])).await;
        let config = Config::discover(&issuer, Client::public("app")).await.unwrap();
        assert_eq!(config.token_endpoint, format!("{issuer}/token"), "{first:?}");
        assert_eq!(*asked.lock().unwrap(), [OAUTH, OIDC]);
    }
}

/// A document naming another issuer ends the search: the other document
/// is not asked for (RFC 8414 §3.3: the metadata must not be used).
#[tokio::test]
async fn a_document_naming_another_issuer_ends_the_search() {
    let routes =
        BTreeMap::from([(OAUTH, (200, metadata("https://evil.example.com"))), (OIDC, (200, metadata("{issuer}")))]);
    let (issuer, asked) = server(routes).await;
    let refused = Config::discover(&issuer, Client::public("app")).await;
    assert!(matches!(refused, Err(DiscoveryError::IssuerMismatch { .. })), "{refused:?}");
    assert_eq!(*asked.lock().unwrap(), [OAUTH]);
}

#[tokio::test]
async fn failures_are_typed() {
    let (issuer, _) = server(BTreeMap::new()).await;
    let missing = Config::discover(&issuer, Client::public("app")).await;
    assert!(matches!(missing, Err(DiscoveryError::Status { status: 404, .. })), "{missing:?}");

    let huge = format!(r#"{{"issuer":"{{issuer}}","padding":"{}"}}"#, "x".repeat(100_000));
    let (issuer, _) = server(BTreeMap::from([(OAUTH, (200, huge.clone())), (OIDC, (200, huge))])).await;
    let too_large = Config::discover(&issuer, Client::public("app")).await;
    assert!(matches!(too_large, Err(DiscoveryError::TooLarge)), "{too_large:?}");

    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let unreachable = Config::discover(&issuer, Client::public("app")).await;
    assert!(matches!(unreachable, Err(DiscoveryError::Unreachable { .. })), "{unreachable:?}");

    let insecure = Config::discover("http://auth.example.com", Client::public("app")).await;
    assert!(matches!(insecure, Err(DiscoveryError::InvalidIssuer(_))), "{insecure:?}");
}
