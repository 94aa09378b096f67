//! HTTPS works with the default features: the reqwest transport opens a TLS
//! handshake to an `https` token endpoint (a build without TLS refuses the
//! scheme before connecting, which is what this catches).

#![cfg(any(feature = "rustls", feature = "native-tls"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // a test may panic: that is how it fails

use std::time::Duration;

use freshen::transport::{ReqwestTransport, Transport};
use freshen_core::oauth::{self, Client};
use freshen_core::token::RefreshToken;
use tokio::io::AsyncReadExt as _;

#[tokio::test]
async fn an_https_endpoint_gets_a_tls_handshake() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut record = [0u8; 3];
        socket.read_exact(&mut record).await.unwrap();
        // Dropping the socket ends the handshake: the client's request fails.
        record
    });
    let transport = ReqwestTransport::new().unwrap();
    let form = oauth::refresh_request(&Client::public("app"), &RefreshToken::new("canary-tls"), None);
    let answer = transport.post_form(&format!("https://{address}/token"), &form).await;
    let record = tokio::time::timeout(Duration::from_secs(5), server).await.expect("no connection came").unwrap();
    assert_eq!(record[0], 0x16, "a TLS handshake record, not plain HTTP");
    assert_eq!(record[1], 0x03, "TLS record version");
    let error = answer.expect_err("the server closed the handshake");
    assert!(!format!("{error:?}").contains("canary"));
}
