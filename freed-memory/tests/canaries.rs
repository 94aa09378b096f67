//! No token bytes are left in memory freshen frees: the session's whole life
//! (load, refresh over a transport, store, authorize, log out) and the core's
//! codecs run under an allocator that scans every freed block for canary
//! tokens. One test, in phases: the allocator's state is global, and tests of
//! one binary run in parallel.
//!
//! What is outside freshen's control is left out on purpose: a real HTTP
//! stack's buffers (reqwest, hyper, TLS) and the keyring's platform code. The
//! transport here answers from a prepared buffer, as a server's bytes would
//! arrive.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test may panic: that is how it fails

use std::time::Duration;

use freshen::core::oauth::{self, Client, FormRequest};
use freshen::core::stored::StoredSession;
use freshen::core::time::UnixTime;
use freshen::core::token::{AccessToken, RefreshToken};
use freshen::secrecy::ExposeSecret as _;
use freshen::secrecy::zeroize::Zeroizing;
use freshen::store::{FileStore, Store as _};
use freshen::transport::{HttpResponse, Transport, TransportError};
use freshen::{Config, Session};
use freshen_freed_memory::{CANARY, ScanningAllocator, arm, disarm, hits};

#[global_allocator]
static ALLOCATOR: ScanningAllocator = ScanningAllocator;

const TOKEN_URL: &str = "http://127.0.0.1:9/token";
const REVOKE_URL: &str = "http://127.0.0.1:9/revoke";

/// A canary token: `CANARY` and a name, in an exactly sized buffer.
fn canary(name: &str) -> String {
    let mut text = String::with_capacity(CANARY.len() + 1 + name.len());
    text.push_str(std::str::from_utf8(CANARY).unwrap());
    text.push('-');
    text.push_str(name);
    text
}

/// Answers every refresh with `body` and every revocation with 200, copying
/// the prepared bytes as a network would deliver them.
struct CannedServer {
    refresh_answer: Zeroizing<Vec<u8>>,
}

impl Transport for CannedServer {
    async fn post_form(&self, url: &str, form: &FormRequest) -> Result<HttpResponse, TransportError> {
        assert!(form.expose_body().contains(std::str::from_utf8(CANARY).unwrap()), "the form carries the token");
        let body = if url == TOKEN_URL { self.refresh_answer.to_vec() } else { Vec::new() };
        Ok(HttpResponse::new(200, [], body))
    }
}

fn expect_hits(phase: &str, expected: impl Fn(usize) -> bool) {
    disarm();
    let (count, sizes) = hits();
    assert!(expected(count), "{phase}: {count} freed blocks held a canary (sizes of the first: {sizes:?})");
}

#[test]
fn freed_memory_holds_no_token() {
    // The allocator proves itself first: a plain String with a canary is
    // caught when it is freed, a wiped one is not, and one that grew is
    // caught at its reallocation even though it is wiped at the end.
    let plain = canary("plain");
    let wiped = Zeroizing::new(canary("wiped"));
    let mut grown = Zeroizing::new(canary("grown"));
    arm();
    drop(plain);
    expect_hits("a plain string", |hits| hits == 1);
    arm();
    drop(wiped);
    expect_hits("a wiped string", |hits| hits == 0);
    arm();
    grown.push_str(&"x".repeat(4096));
    drop(grown);
    expect_hits("a wiped string that grew", |hits| hits >= 1);

    // The core's codecs: the stored blob, the refresh form, a token response.
    let stored = StoredSession::pair(AccessToken::new(canary("access-1")), RefreshToken::new(canary("refresh-1")))
        .with_access_expiry(UnixTime::from_secs(1_800_000_000), Duration::from_secs(3600))
        .with_scope("read");
    let client = Client::public("freed-memory");
    let answer = Zeroizing::new(
        format!(
            r#"{{"access_token":"{}","refresh_token":"{}","token_type":"Bearer","expires_in":3600}}"#,
            canary("access-2"),
            canary("refresh-2")
        )
        .into_bytes(),
    );
    arm();
    {
        let blob = stored.encode();
        let decoded = StoredSession::decode(blob.expose_secret().as_bytes()).unwrap();
        assert_eq!(decoded.generation, stored.generation);
        let form = oauth::refresh_request(&client, stored.refresh_token.as_ref().unwrap(), Some("read"));
        let revoke = oauth::revocation_request(&client, stored.refresh_token.as_ref().unwrap());
        let response = oauth::Response { status: 200, headers: &[], body: &answer };
        let classified = oauth::classify(&oauth::Policy::default(), &response, None);
        assert!(matches!(classified, oauth::Classified::Success(_)));
        drop((form, revoke, classified));
    }
    expect_hits("the core's codecs", |hits| hits == 0);

    // A session's life: a spent token in a file, a refresh, the new token in
    // a header, a logout that revokes and wipes the file.
    let directory = std::env::temp_dir().join(format!("freshen-freed-memory-{}", std::process::id()));
    std::fs::create_dir_all(&directory).unwrap();
    let path = directory.join("session.json");
    let mut spent = stored.clone();
    spent.access_expires_at = Some(UnixTime::EPOCH);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    let config = Config::new(TOKEN_URL, client.clone()).with_revocation_endpoint(REVOKE_URL);
    let server = CannedServer { refresh_answer: answer };
    arm();
    runtime.block_on(async {
        let store = FileStore::new(&path);
        store.save(&spent).await.unwrap();
        let session = Session::start(config, server, store).unwrap();
        let token = session.access_token().await.unwrap();
        assert_eq!(token.generation().0, 2, "the spent token was refreshed");
        let header = token.authorization().unwrap().clone();
        assert!(header.is_sensitive());
        drop((header, token));
        session.log_out().await;
        assert!(!path.exists(), "logout wipes the store");
    });
    drop(runtime);
    drop((spent, stored));
    expect_hits("a session's life", |hits| hits == 0);
    let _ = std::fs::remove_dir_all(&directory);
}
