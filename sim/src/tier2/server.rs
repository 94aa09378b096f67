//! The authority's side of tier 2: hyper serving the reference authority,
//! with the server faults (errors, dropped answers) drawn per request.

use super::*;

/// The authority's answers with server-side faults.
#[derive(Debug)]
pub(super) struct ServerFaults {
    pub(super) rates: Mutex<Faults>,
    pub(super) rng: Mutex<SplitMix64>,
    pub(super) counts: Mutex<BTreeMap<&'static str, u64>>,
    /// Clients whose refresh answer was dropped after the server committed.
    pub(super) dropped_for: Mutex<BTreeMap<String, u64>>,
    /// Per client and refresh token presented: successes dropped (each spent
    /// one grace replay the client never learnt of).
    pub(super) dropped_successes: Mutex<BTreeMap<(String, Fingerprint), u32>>,
    /// Seconds this server's clock runs ahead of the world's
    /// ([`WorldConfig::server_clock_offset`]).
    pub(super) clock_offset: i64,
    /// 429s answered so far: every other one gives its wait as an HTTP-date.
    pub(super) rate_limited: AtomicU64,
}

/// What every 429 asks a client to wait, in seconds or as a date: the
/// client checker holds each session to it ([`ClientMonitor::expect_retry_after`]).
pub(super) const RATE_LIMIT_WAIT: Duration = Duration::from_secs(2);

impl ServerFaults {
    /// This server's clock, at the world's wall time `wall`.
    pub(super) fn clock(&self, wall: UnixTime) -> UnixTime {
        shifted(wall, self.clock_offset)
    }

    /// A 429 at the world's wall time `wall`, stamped with this server's
    /// `Date`: its `Retry-After` in seconds, or every other time as a date
    /// on the same clock (RFC 9110 §10.2.3 allows both).
    fn rate_limited(&self, wall: UnixTime) -> http::Response<Full<Bytes>> {
        let mut response = http::Response::new(Full::new(Bytes::new()));
        *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        let now = self.clock(wall);
        let as_date = self.rate_limited.fetch_add(1, Ordering::Relaxed) % 2 == 1;
        let retry_after = if as_date {
            // The date to the second, as `Date` is: the two differ by the wait exactly.
            http_date(UnixTime::from_secs(now.as_secs()).saturating_add(RATE_LIMIT_WAIT))
        } else {
            header::HeaderValue::from(RATE_LIMIT_WAIT.as_secs())
        };
        let headers = response.headers_mut();
        headers.insert(header::RETRY_AFTER, retry_after);
        headers.insert(header::DATE, http_date(now));
        response
    }

    pub(super) fn draw(&self, per_mille: u16, kind: &'static str) -> bool {
        let hit = per_mille > 0 && self.rng.lock().is_ok_and(|mut rng| rng.chance(u64::from(per_mille), 1000));
        if hit && let Ok(mut counts) = self.counts.lock() {
            *counts.entry(kind).or_default() += 1;
        }
        hit
    }
}

/// The connection is dropped instead of answered.
#[derive(Debug)]
pub(super) struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("answer dropped after commit")
    }
}

impl std::error::Error for Dropped {}

pub(super) async fn serve(
    state: &State,
    faults: &ServerFaults,
    request: Request<Incoming>,
) -> Result<http::Response<Full<Bytes>>, Dropped> {
    let (parts, body) = request.into_parts();
    let body = Limited::new(body, 16 * 1024).collect().await.map_err(|_| Dropped)?.to_bytes();
    // The authorization endpoint reads its query.
    let target = parts.uri.path_and_query().map_or("/", |target| target.as_str());
    if parts.method == Method::POST && parts.uri.path() == paths::TOKEN {
        let rates = faults.rates.lock().map(|r| *r).unwrap_or_default();
        if faults.draw(rates.server_error, "server_error") {
            let mut response = http::Response::new(Full::new(Bytes::from_static(b"<html>503</html>")));
            *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            return Ok(response);
        }
        if faults.draw(rates.rate_limit, "rate_limit") {
            return Ok(faults.rate_limited(state.wall()));
        }
        if faults.draw(rates.policy_refusal, "policy_refusal") {
            use crate::authority::PolicyRefusal;
            let refusal = if faults.draw(333, "policy_refusal_interaction") {
                PolicyRefusal::InteractionRequired
            } else if faults.draw(500, "policy_refusal_invalid_request") {
                PolicyRefusal::InvalidRequest
            } else {
                PolicyRefusal::InvalidClient
            };
            let (status, body) = refusal.response();
            let mut response = http::Response::new(Full::new(Bytes::from(body)));
            *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
            response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
            return Ok(response);
        }
        let response = answer(state, &parts.method, target, &parts.headers, &body);
        if faults.draw(rates.drop_response, "drop_after_commit") {
            let field = |name: &str| {
                form_urlencoded::parse(&body).find(|(k, _)| k == name).map(|(_, v)| v.into_owned()).unwrap_or_default()
            };
            let client = field("client_id");
            if response.status() == StatusCode::OK
                && let Ok(mut dropped) = faults.dropped_successes.lock()
            {
                let token = RefreshToken::new(field("refresh_token")).fingerprint();
                *dropped.entry((client.clone(), token)).or_default() += 1;
            }
            if let Ok(mut dropped) = faults.dropped_for.lock() {
                *dropped.entry(client).or_default() += 1;
            }
            return Err(Dropped);
        }
        return Ok(response);
    }
    Ok(answer(state, &parts.method, target, &parts.headers, &body))
}

// turmoil keeps a server-side socket for a (client address, port) pair until
// the client's FIN or RST arrives, and panics ("... is already connected") when
// a SYN comes for a pair it still holds. It neither retransmits a FIN lost to a
// partition nor times out a half-open socket, so a client whose FIN was lost
// would, once its ephemeral ports wrapped around, reach a server that still
// holds its old connection: tier-2 seed 50176 did, after 67,500 callers on one
// host. Real stacks are saved by retransmission, server timeouts and TIME_WAIT;
// the world gets the same guarantees, which together make the collision
// impossible (`ConnectPacer` has the argument):
/// The authority closes every connection this long after accepting it, as a
/// real server's header-read and idle timeouts do.
pub(super) const SERVER_CONNECTION_DEADLINE: Duration = Duration::from_secs(10);
