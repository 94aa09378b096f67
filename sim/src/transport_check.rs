//! Checks an app's own [`Transport`] the way a session relies on it.
//!
//! The session reads the token endpoint's answers by the core's rules: an
//! error status is an answer to classify (`invalid_grant` ends the session, a
//! 503 with `Retry-After` is retried later), and a failure must say whether
//! the server may have seen the request. A transport that turns a 400 into an
//! error (`error_for_status()`), drops `Retry-After`, buffers an unbounded
//! body, or calls a refused connection a timeout changes what the session
//! does. [`check_transport`] serves the reference authority on a loopback port
//! (plain HTTP) and checks, in order:
//!
//! 1. the form arrives as sent: `POST`, its content type, its body, and a
//!    confidential client's `Authorization`;
//! 2. an answer is an answer whatever its status (200, 400, 401, 429, 503),
//!    its body byte for byte;
//! 3. `Retry-After`, `Date` and `WWW-Authenticate` come through;
//! 4. a body over [`MAX_BODY_BYTES`] is cut at one byte more, not buffered whole;
//! 5. a refused connection fails as [`TransportFailure::NotSent`];
//! 6. a session over it logs in and rotates its refresh token five times.
//!
//! ```no_run
//! # async fn run() -> Result<(), freshen_sim::store_check::RuleBroken> {
//! use freshen::transport::ReqwestTransport;
//! use freshen_sim::transport_check::check_transport;
//!
//! let transport = ReqwestTransport::new().expect("a client");
//! let report = check_transport(transport).await?;
//! println!("{report}");
//! # Ok(()) }
//! ```

use core::fmt;
use core::time::Duration;
use std::net::SocketAddr;

use freshen::transport::{HttpResponse, Transport};
use freshen::{Config, Environment, Session};
use freshen_core::oauth::{self, Client, ClientAuth, FormRequest, MAX_BODY_BYTES};
use freshen_core::session::{SessionConfig, TransportFailure};
use freshen_core::stored::StoredSession;
use freshen_core::token::RefreshToken;
use secrecy::SecretString;

use crate::authority::AuthorityConfig;
use crate::http::{Scripted, Server, paths};
use crate::store_check::{RuleBroken, broke};

/// What a passing check did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransportReport {
    /// Rules checked.
    pub rules: usize,
    /// Requests the transport carried.
    pub requests: usize,
}

impl fmt::Display for TransportReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} rules held over {} requests", self.rules, self.requests)
    }
}

const CLIENT: &str = "transport-check";
const ROTATIONS: u64 = 5;

/// Runs every rule against `transport`; see the [module docs](self).
///
/// # Errors
/// The first rule the transport broke, or the loopback server could not start.
pub async fn check_transport<T: Transport + Clone>(transport: T) -> Result<TransportReport, RuleBroken> {
    let authority = AuthorityConfig { grace: Duration::ZERO, reuse_detection: true, ..AuthorityConfig::default() };
    let server = Server::loopback(authority, 7)
        .await
        .map_err(|error| broke("the loopback server starts", format!("it did not: {error}")))?;
    let mut report = TransportReport::default();
    let token_url = server.url(paths::TOKEN);
    let mut post = async |form: &FormRequest, rule: &'static str| {
        report.requests += 1;
        transport.post_form(&token_url, form).await.map_err(|error| broke(rule, format!("it failed: {error}")))
    };

    let rule = "the form arrives as sent";
    let secret = SecretString::from("transport-check-secret");
    let client = Client::confidential(CLIENT, secret, ClientAuth::Basic);
    let form = oauth::refresh_request(&client, &RefreshToken::new("transport-check-refresh"), Some("read write"));
    // Answered 200 whatever it holds: this rule looks only at what arrived.
    server.state().script_token_answers([Scripted { status: 200, headers: Vec::new(), body: b"{}".to_vec() }]);
    post(&form, rule).await?;
    let received = server.state().last_token_request().ok_or_else(|| broke(rule, "nothing arrived"))?;
    if received.method != "POST" {
        return Err(broke(rule, format!("it arrived as {}", received.method)));
    }
    if received.content_type.as_deref() != Some(FormRequest::CONTENT_TYPE) {
        return Err(broke(rule, format!("its content type was {:?}", received.content_type)));
    }
    if received.body != form.expose_body().as_bytes() {
        return Err(broke(rule, "its body differs from the form's"));
    }
    if received.authorization.as_deref() != form.expose_authorization() {
        return Err(broke(rule, "the client's Authorization did not arrive as given"));
    }
    report.rules += 1;

    let rule = "an answer is an answer whatever its status";
    for (status, body) in [
        (200, r#"{"access_token":"at","token_type":"Bearer","expires_in":60}"#),
        (400, r#"{"error":"invalid_grant"}"#),
        (401, r#"{"error":"invalid_client"}"#),
        (429, r#"{"error":"slow_down"}"#),
        (503, "<html>down for maintenance</html>"),
    ] {
        server.state().script_token_answers([Scripted { status, headers: Vec::new(), body: body.into() }]);
        let response = post(&form, rule).await?;
        if response.status != status || response.body != body.as_bytes() {
            return Err(broke(rule, format!("{status} came back as {} with another body", response.status)));
        }
    }
    report.rules += 1;

    let rule = "Retry-After, Date and WWW-Authenticate come through";
    let headers = [
        ("Retry-After", "7"),
        ("Date", "Tue, 01 Dec 2026 03:00:00 GMT"),
        ("WWW-Authenticate", "Basic realm=\"token\""),
    ];
    let scripted = Scripted {
        status: 503,
        headers: headers.iter().map(|(n, v)| ((*n).to_owned(), (*v).to_owned())).collect(),
        body: Vec::new(),
    };
    server.state().script_token_answers([scripted]);
    let response = post(&form, rule).await?;
    for (name, value) in headers {
        if header(&response, name) != Some(value.as_bytes()) {
            return Err(broke(rule, format!("{name} came back as {:?}", header(&response, name))));
        }
    }
    report.rules += 1;

    let rule = "a body over the limit is cut at one byte more";
    let huge = vec![b'x'; 4 * MAX_BODY_BYTES];
    server.state().script_token_answers([Scripted { status: 200, headers: Vec::new(), body: huge }]);
    let response = post(&form, rule).await?;
    if response.body.len() != MAX_BODY_BYTES + 1 {
        return Err(broke(rule, format!("{} bytes came back, not {}", response.body.len(), MAX_BODY_BYTES + 1)));
    }
    report.rules += 1;

    let rule = "a refused connection fails as not sent";
    let closed = closed_port().map_err(|error| broke(rule, format!("no free port to test with: {error}")))?;
    report.requests += 1;
    match transport.post_form(&format!("http://{closed}{}", paths::TOKEN), &form).await {
        Err(error) if error.failure() == TransportFailure::NotSent => report.rules += 1,
        Err(error) => return Err(broke(rule, format!("it failed as {:?}", error.failure()))),
        Ok(response) => return Err(broke(rule, format!("it answered {}", response.status))),
    }

    let (requests, rules) = (report.requests, report.rules);
    let rotated = rotate_through(transport, &server).await?;
    Ok(TransportReport { rules: rules + 1, requests: requests + rotated })
}

/// A session over `transport` logs in and forces [`ROTATIONS`] refreshes.
async fn rotate_through<T: Transport>(transport: T, server: &Server) -> Result<usize, RuleBroken> {
    let rule = "a session over it rotates its refresh token";
    let config = Config::new(server.url(paths::TOKEN), Client::public(CLIENT))
        .with_plain_http_allowed()
        .with_session(SessionConfig::default().with_refresh_jitter(Duration::ZERO));
    let session = Session::start_in(config, transport, freshen::store::MemoryStore::new(), Environment::seeded(7))
        .map_err(|error| broke(rule, format!("the session did not start: {error}")))?;
    let issued = server.state().login(CLIENT);
    let login = StoredSession::pair(issued.access_token, issued.refresh_token);
    session.log_in_with(login).await.map_err(|error| broke(rule, format!("the login failed: {error}")))?;
    for round in 1..=ROTATIONS {
        let token = session.refresh().await.map_err(|error| broke(rule, format!("refresh {round} failed: {error}")))?;
        if token.generation().0 != round + 1 {
            return Err(broke(rule, format!("refresh {round} gave generation {}", token.generation())));
        }
    }
    let refreshes = server.state().stats().refreshes;
    if refreshes != ROTATIONS {
        return Err(broke(rule, format!("the authority served {refreshes} refreshes, not {ROTATIONS}")));
    }
    Ok(usize::try_from(ROTATIONS).unwrap_or(usize::MAX))
}

fn header<'a>(response: &'a HttpResponse, name: &str) -> Option<&'a [u8]> {
    response.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_slice())
}

/// A loopback port nobody listens on: bound, then released.
fn closed_port() -> std::io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    listener.local_addr()
}

#[cfg(test)]
mod tests;
