//! What the fuzz targets run, in one place, so the targets in `fuzz/`, the test
//! that replays their committed corpora and the property tests all exercise
//! the same code. Each entry point takes arbitrary bytes, never panics on its
//! own account, and returns `Err` with a description when the code under test
//! broke a rule; the fuzz targets turn that into a crash.
//!
//! Inputs are decoded with [`Bytes`], which reads past the end as zeros, so
//! every byte string is a valid input and a fuzzer's mutations stay meaningful.

use std::time::Duration;

use secrecy::ExposeSecret as _;

use crate::authority::{Authority, AuthorityConfig, AuthorityPlant, GraceReplay};
use crate::check::{AuthorityMonitor, Violation};
use crate::executor::{Executor, Setup};
use crate::harness::{Fate, StoreFate, World};
use crate::world::{Start, WorldConfig};
use freshen_core::ids::CallerId;
use freshen_core::oauth::{Classified, MAX_RETRY_AFTER, MAX_TOKEN_BYTES, Policy, Response, classify};
use freshen_core::session::{Event, LogoutCause, SessionConfig, StateView};
use freshen_core::stored::StoredSession;
use freshen_core::time::{MonoTime, UnixTime};
use freshen_core::token::{AccessToken, RefreshToken};

/// The most operations one input may hold: a bound on the work per input.
pub const MAX_OPS: usize = 256;

/// A reader over fuzz input that yields zeros once the bytes run out.
#[derive(Clone, Debug)]
pub struct Bytes<'a> {
    rest: &'a [u8],
}

impl<'a> Bytes<'a> {
    /// Reads `data` from the start.
    pub fn new(data: &'a [u8]) -> Self {
        Self { rest: data }
    }

    /// Whether every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// The next byte, or 0.
    pub fn u8(&mut self) -> u8 {
        match self.rest.split_first() {
            Some((first, rest)) => {
                self.rest = rest;
                *first
            }
            None => 0,
        }
    }

    /// The next two bytes, little-endian.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    /// The next eight bytes, little-endian.
    pub fn u64(&mut self) -> u64 {
        let mut bytes = [0; 8];
        for byte in &mut bytes {
            *byte = self.u8();
        }
        u64::from_le_bytes(bytes)
    }

    /// A value in `0..n` (`n` > 0) from one byte, or two when `n` > 256.
    pub fn below(&mut self, n: u64) -> u64 {
        let raw = if n > 256 { u64::from(self.u16()) } else { u64::from(self.u8()) };
        raw % n.max(1)
    }

    /// A coin.
    pub fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }

    /// At most `len` bytes, fewer when the input ends.
    pub fn take(&mut self, len: usize) -> &'a [u8] {
        let (taken, rest) = self.rest.split_at(len.min(self.rest.len()));
        self.rest = rest;
        taken
    }

    /// Everything left.
    pub fn remaining(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.rest)
    }
}

fn violations_text(violations: &[Violation]) -> String {
    violations.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")
}

// ---------------------------------------------------------------------------
// oauth_response

/// What became of a session whose refresh was answered with one response.
#[derive(Debug)]
pub struct Aftermath {
    /// What the classifier made of the response.
    pub classified: Classified,
    /// The state once the store writes it asked for were done.
    pub state: StateView,
    /// Whether the caller waiting for the refresh got a token.
    pub granted: bool,
}

/// The refresh token the fixture session starts with.
pub const HELD_REFRESH_TOKEN: &str = "held-refresh-token";

/// Feeds `response` to a session as the answer to its refresh, and checks what
/// every hostile input must leave behind: the checker's invariants hold, the
/// session logs out if and only if the answer was terminal, and the refresh
/// token it holds (in memory and in the store) is the one it had, or the
/// successor the server issued. A token is never lost.
pub fn refresh_answered_with(response: &Response<'_>) -> Result<Aftermath, String> {
    let unix_now = UnixTime::from_secs(1_800_000_000);
    let classified = classify(&Policy::default(), response, Some(unix_now));
    let issued = match &classified {
        Classified::Success(tokens) => {
            let access = tokens.access_token.expose_secret();
            if access.is_empty() || access.len() > MAX_TOKEN_BYTES {
                return Err(format!("accepted an access token of {} bytes", access.len()));
            }
            if tokens.lifetime.is_some_and(|l| l > Policy::default().max_lifetime || l.as_secs() < 1) {
                return Err(format!("accepted a lifetime of {:?}", tokens.lifetime));
            }
            tokens.refresh_token.clone()
        }
        Classified::Malformed(malformed) => malformed.salvaged_refresh_token.clone(),
        Classified::Transient(transient) => {
            if transient.retry_after.is_some_and(|r| r > MAX_RETRY_AFTER) {
                return Err(format!("accepted a Retry-After of {:?}", transient.retry_after));
            }
            None
        }
        Classified::Terminal(_)
        | Classified::Rejected(_)
        | Classified::InteractionRequired(_)
        | Classified::NonceRequired(_) => None,
    };
    let held = RefreshToken::new(HELD_REFRESH_TOKEN);
    let expected = issued.unwrap_or_else(|| held.clone());

    let mut fixture = expired(&held, unix_now)?;
    fixture.input(Event::TokenWanted { caller: CallerId(1) });
    let Some((id, presented)) = fixture.sent.last().cloned() else {
        return Err("an expired session sent no refresh".into());
    };
    if !presented.same_as(&held) {
        return Err("the first refresh presented another token".into());
    }
    fixture.input(Event::RefreshCompleted { id, outcome: classified.clone(), dpop_nonce: None });
    let state = fixture.machine.session.state().clone();
    let granted = fixture.granted.contains(&CallerId(1));
    let terminal = matches!(classified, Classified::Terminal(_));

    match (&state, terminal) {
        (StateView::LoggedOut { .. }, true) => {
            if fixture.blob.is_some() {
                return Err("logged out but the store still holds the session".into());
            }
        }
        (StateView::LoggedOut { cause }, false) => return Err(format!("a non-terminal answer logged out: {cause:?}")),
        (_, true) => return Err(format!("a terminal answer left the session {state}")),
        (_, false) => {
            if !stored_refresh_token(&fixture).is_some_and(|s| s.same_as(&expected)) {
                return Err("the store no longer holds the refresh token the session should keep".into());
            }
            if !granted {
                next_refresh_presents(&mut fixture, &expected)?;
            }
        }
    }
    let violations = fixture.machine.monitor.violations();
    if !violations.is_empty() {
        return Err(violations_text(violations));
    }
    Ok(Aftermath { classified, state, granted })
}

/// The `oauth_response` target: the first two bytes are the status, the next
/// says how many of the following bytes are a `Retry-After` value, and the rest
/// is the body.
pub fn oauth_response(data: &[u8]) -> Result<(), String> {
    let mut input = Bytes::new(data);
    let status = input.u16() % 1000;
    let retry_len = usize::from(input.u8() % 41);
    let retry_after = input.take(retry_len);
    let body = input.remaining();
    let headers: &[(&str, &[u8])] = &[("retry-after", retry_after)];
    let response = Response { status, headers, body };
    refresh_answered_with(&response)?;
    login_reads(&response)
}

/// What the login flows make of the same bytes: read as a device
/// authorization response, as an answer to a device poll, and (the body) as
/// the redirect a browser brings back. Each gives a typed outcome; what one
/// accepts is within its bounds, and the poller never polls early after it.
pub fn login_reads(response: &Response<'_>) -> Result<(), String> {
    use freshen_core::device::{self, NextPoll, PollAnswer};
    const FALLBACK: &[u8] =
        br#"{"device_code":"d","user_code":"U","verification_uri":"https://e.com/d","expires_in":600}"#;
    let authorization = match device::parse_authorization(response) {
        Ok(authorization) => {
            let printable = |text: &str, spaces| text.chars().all(|c| c.is_ascii_graphic() || (spaces && c == ' '));
            if !printable(&authorization.user_code, true) || !printable(&authorization.verification_uri, false) {
                return Err("accepted a user code or URI that could forge a terminal line".into());
            }
            let in_range = |d: Duration| d >= Duration::from_secs(1) && d <= device::MAX_EXPIRES_IN;
            if !in_range(authorization.expires_in) || !in_range(authorization.interval) {
                return Err(format!("accepted {:?} / {:?}", authorization.expires_in, authorization.interval));
            }
            authorization
        }
        Err(_) => device::parse_authorization(&Response { status: 200, headers: &[], body: FALLBACK })
            .map_err(|e| format!("the fallback did not parse: {e}"))?,
    };
    let mut poller = device::DevicePoller::new(&authorization, MonoTime::ZERO);
    let first = MonoTime::ZERO.saturating_add(authorization.interval);
    if first < poller.expires_at() && poller.next(first) != NextPoll::Now {
        return Err("the first poll did not go out after one interval".into());
    }
    let answer = PollAnswer::Answered(classify(&Policy::default(), response, Some(UnixTime::from_secs(1_800_000_000))));
    if let Ok(None) = poller.answered(first, answer) {
        let soon = first.saturating_add(poller.interval()).saturating_sub(Duration::from_millis(1));
        if poller.next(soon) == NextPoll::Now {
            return Err("polled again before the interval".into());
        }
    }
    let target = String::from_utf8_lossy(response.body);
    let expected =
        freshen_core::code::Expected { path: "/callback", state: "state", issuer: Some("https://a.example") };
    if let Ok(code) = freshen_core::code::parse_redirect(&target, &expected)
        && (code.expose_secret().is_empty() || !code.expose_secret().chars().all(|c| c.is_ascii_graphic()))
    {
        return Err("accepted an empty or unprintable authorization code".into());
    }
    Ok(())
}

/// A session whose store answers every operation at once, and holds one blob
/// of bytes, as a keyring holds it.
type Fixture = Executor;

/// A session that will load `blob` from its store.
fn loading(blob: Option<Vec<u8>>, unix_now: UnixTime) -> Result<Fixture, String> {
    let setup = Setup { seed: 7, unix_origin: unix_now, blob, ..Setup::default() };
    Executor::new(&SessionConfig::default(), setup).map_err(|e| e.to_string())
}

/// A session loaded from a store that holds `refresh` and an expired access token.
fn expired(refresh: &RefreshToken, unix_now: UnixTime) -> Result<Fixture, String> {
    let blob = StoredSession::pair(AccessToken::new("expired-access-token"), refresh.clone())
        .with_access_expiry(UnixTime::from_secs(1_699_996_400), core::time::Duration::from_secs(3600));
    loading(Some(blob.encode().expose_secret().as_bytes().to_vec()), unix_now)
}

/// The refresh token in the store, if it holds a readable session.
fn stored_refresh_token(fixture: &Fixture) -> Option<RefreshToken> {
    fixture.stored().and_then(|s| s.refresh_token)
}

/// Callers keep asking, a day apart (past any cooldown a server may ask
/// for), until the session sends its next refresh, which must present `expected`.
fn next_refresh_presents(fixture: &mut Fixture, expected: &RefreshToken) -> Result<(), String> {
    let sent_before = fixture.sent.len();
    for round in 0..4 {
        fixture.input(Event::TokenWanted { caller: CallerId(100 + round) });
        // Fire timers until a refresh goes out or the session stops asking for time.
        for _ in 0..1000 {
            if let Some((_, next)) = fixture.sent.get(sent_before) {
                return if next.same_as(expected) {
                    Ok(())
                } else {
                    Err("the next refresh presented a token other than the one kept".into())
                };
            }
            let Some(at) = fixture.machine.session.poll_timeout().map(|due| due.at) else { break };
            fixture.now = fixture.now.max(at);
            let now = fixture.now;
            fixture.timeout(now);
        }
        fixture.now = fixture.now.saturating_add(MAX_RETRY_AFTER + Duration::from_secs(3600));
    }
    Err(format!("no later refresh, in state {}", fixture.machine.session.state()))
}

// ---------------------------------------------------------------------------
// stored_session

/// Loads a session from a store holding `blob`, and checks what every stored
/// blob must lead to: one the decoder accepts survives an encode/decode round
/// trip unchanged and the session takes its refresh token; one it refuses
/// logs the session out as unreadable (a typed error) and stays in the store
/// untouched, since a newer build of the app may have written it.
pub fn session_loaded_from(blob: &[u8]) -> Result<StateView, String> {
    let decoded = StoredSession::decode(blob);
    if let Ok(session) = &decoded {
        let encoded = session.encode();
        let again = StoredSession::decode(encoded.expose_secret().as_bytes())
            .map_err(|e| format!("an encoded session does not decode: {e}"))?;
        let same_access = match (&again.access_token, &session.access_token) {
            (Some(a), Some(b)) => a.same_as(b),
            (a, b) => a.is_none() && b.is_none(),
        };
        let same_refresh = match (&again.refresh_token, &session.refresh_token) {
            (Some(a), Some(b)) => a.same_as(b),
            (a, b) => a.is_none() && b.is_none(),
        };
        let same = again.generation == session.generation
            && same_access
            && again.token_type == session.token_type
            && same_refresh
            && again.access_expires_at == session.access_expires_at
            && again.access_lifetime == session.access_lifetime
            && again.scope == session.scope;
        if !same {
            return Err("the round trip changed the session".into());
        }
    }
    let mut fixture = loading(Some(blob.to_vec()), UnixTime::from_secs(1_800_000_000))?;
    fixture.input(Event::TokenWanted { caller: CallerId(1) });
    let state = fixture.machine.session.state().clone();
    match (&decoded, &state) {
        (Err(error), StateView::LoggedOut { cause: LogoutCause::StoredSessionUnreadable(why) }) if why == error => {
            if fixture.blob.as_deref() != Some(blob) {
                return Err("an unreadable blob was overwritten or deleted".into());
            }
        }
        (Err(error), _) => return Err(format!("an unreadable blob ({error}) left the session {state}")),
        (Ok(session), StateView::Valid { .. } | StateView::Refreshing { .. }) => {
            let presented = fixture.sent.last().map(|(_, token)| token);
            let held = presented.is_some() || fixture.granted.contains(&CallerId(1));
            let as_stored = |p: &RefreshToken| session.refresh_token.as_ref().is_some_and(|r| p.same_as(r));
            if !held || presented.is_some_and(|p| !as_stored(p)) {
                return Err(format!("the loaded session was not used as stored, in state {state}"));
            }
        }
        // An access token alone, no longer usable: nothing can renew it.
        (Ok(session), StateView::Expired { .. }) if session.refresh_token.is_none() => {
            if !fixture.sent.is_empty() {
                return Err("a session without a refresh token sent a refresh".into());
            }
        }
        (Ok(_), _) => return Err(format!("a readable blob left the session {state}")),
    }
    let violations = fixture.machine.monitor.violations();
    if !violations.is_empty() {
        return Err(violations_text(violations));
    }
    Ok(state)
}

/// The `stored_session` target: arbitrary bytes as the stored blob.
pub fn stored_session(data: &[u8]) -> Result<(), String> {
    session_loaded_from(data).map(drop)
}

// ---------------------------------------------------------------------------
// authority_ops

/// One operation on the reference authority.
#[derive(Clone, Debug)]
pub enum AuthorityOp {
    /// A login, by the app or another client, bound to a device or not.
    Login {
        /// By another client than the app.
        other_client: bool,
        /// Bound to a device.
        device: bool,
    },
    /// A refresh with the `pick`-th token ever issued (or a made-up one).
    Refresh {
        /// Which token.
        pick: usize,
        /// By another client than the app.
        other_client: bool,
        /// From a device.
        device: bool,
    },
    /// A revocation of the `pick`-th access or refresh token.
    Revoke {
        /// Which token.
        pick: usize,
        /// An access token rather than a refresh token.
        access: bool,
        /// By another client than the app.
        other_client: bool,
    },
    /// A resource checks the `pick`-th access token.
    Validate {
        /// Which token.
        pick: usize,
    },
    /// The user approves the app's authorization request: a code for it.
    IssueCode,
    /// The `pick`-th code ever issued is exchanged (again, perhaps: a
    /// client that lost the answer), by the app or another client.
    RedeemCode {
        /// Which code.
        pick: usize,
        /// By another client than the app.
        other_client: bool,
    },
    /// Time passes.
    Advance {
        /// How much.
        secs: u64,
    },
}

/// Runs `ops` against an authority with `config` and returns what the A1–A6
/// monitor found.
pub fn run_authority(
    config: &AuthorityConfig,
    plant: Option<AuthorityPlant>,
    seed: u64,
    ops: &[AuthorityOp],
) -> Vec<Violation> {
    let mut authority = Authority::new(config.clone(), seed).with_audit().with_plant(plant);
    let mut monitor = AuthorityMonitor::new(config);
    let mut now = MonoTime::ZERO;
    // Every token ever issued (consumed and revoked ones included), plus a made-up one.
    let mut refresh = vec!["made-up-refresh".to_owned()];
    let mut access = vec!["made-up-access".to_owned()];
    let client = |other: bool| if other { "intruder" } else { "app" };
    let device = |bound: bool| bound.then_some("laptop");
    let pick = |pool: &[String], index: usize| pool.get(index % pool.len()).cloned().unwrap_or_default();
    let mut codes = vec!["made-up-code".to_owned()];
    const REDIRECT: &str = "http://127.0.0.1:1/callback";
    const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    for op in ops.iter().take(MAX_OPS) {
        match *op {
            AuthorityOp::Login { other_client, device: bound } => {
                let issued = authority.login(now, client(other_client), device(bound));
                refresh.push(issued.refresh_token.expose_secret().to_owned());
                access.push(issued.access_token.expose_secret().to_owned());
            }
            AuthorityOp::Refresh { pick: index, other_client, device: bound } => {
                let token = pick(&refresh, index);
                if let Ok(issued) = authority.refresh(now, client(other_client), device(bound), &token, None) {
                    refresh.push(issued.refresh_token.expose_secret().to_owned());
                    access.push(issued.access_token.expose_secret().to_owned());
                }
            }
            AuthorityOp::Revoke { pick: index, access: is_access, other_client } => {
                let token = pick(if is_access { &access } else { &refresh }, index);
                let _ = authority.revoke(now, client(other_client), &token);
            }
            AuthorityOp::Validate { pick: index } => {
                let _ = authority.validate(now, &pick(&access, index));
            }
            AuthorityOp::IssueCode => {
                let challenge = crate::authority::code::s256_challenge(VERIFIER);
                codes.push(authority.issue_code(now, client(false), REDIRECT, &challenge));
            }
            AuthorityOp::RedeemCode { pick: index, other_client } => {
                let code = pick(&codes, index);
                if let Ok(issued) = authority.redeem_code(now, client(other_client), &code, REDIRECT, VERIFIER) {
                    refresh.push(issued.refresh_token.expose_secret().to_owned());
                    access.push(issued.access_token.expose_secret().to_owned());
                }
            }
            AuthorityOp::Advance { secs } => now = now.saturating_add(Duration::from_secs(secs)),
        }
        for entry in authority.drain_audit() {
            monitor.observe(&entry);
        }
    }
    monitor.violations().to_vec()
}

/// An authority configuration read from fuzz input, within the ranges the
/// property tests draw from.
pub fn authority_config(input: &mut Bytes<'_>) -> AuthorityConfig {
    AuthorityConfig {
        access_ttl: Duration::from_secs(10 + input.below(290)),
        refresh_ttl: Duration::from_secs(30 + input.below(570)),
        family_lifetime: Duration::from_secs(100 + input.below(1900)),
        rotation: input.below(5) != 0,
        grace: Duration::from_secs(if input.bool() { 0 } else { 1 + input.below(59) }),
        grace_reuses: input.below(4) as u32,
        grace_replay: if input.bool() { GraceReplay::FreshPair } else { GraceReplay::SamePair },
        reuse_detection: input.below(4) != 0,
        ..AuthorityConfig::default()
    }
}

/// The `authority_ops` target: a configuration, a seed, then operations until
/// the input ends (at most [`MAX_OPS`]); A1–A6 must hold.
pub fn authority_ops(data: &[u8]) -> Result<(), String> {
    let mut input = Bytes::new(data);
    let config = authority_config(&mut input);
    let seed = input.u64();
    let mut ops = Vec::new();
    while !input.is_empty() && ops.len() < MAX_OPS {
        let pick = usize::from(input.u8());
        ops.push(match input.u8() % 16 {
            0 => AuthorityOp::Login { other_client: input.below(8) == 0, device: input.below(8) == 0 },
            1..=6 => AuthorityOp::Refresh { pick, other_client: input.below(10) == 0, device: input.below(10) == 0 },
            7 => AuthorityOp::Revoke { pick, access: input.bool(), other_client: input.below(5) == 0 },
            8..=10 => AuthorityOp::Validate { pick },
            11 => AuthorityOp::IssueCode,
            12 => AuthorityOp::RedeemCode { pick, other_client: input.below(8) == 0 },
            _ => AuthorityOp::Advance { secs: input.below(400) },
        });
    }
    let violations = run_authority(&config, None, seed, &ops);
    if violations.is_empty() { Ok(()) } else { Err(violations_text(&violations)) }
}

// ---------------------------------------------------------------------------
// session_ops

/// The `session_ops` target: the session machine in lockstep with the
/// reference authority (a tier-1 world with no sampled faults), driven by
/// operations read from the input: callers, logouts and logins, crashes at
/// any point, suspends, revocations, and a scripted fate for each refresh
/// and store write, with time steps between them. Every invariant is checked
/// after every operation; then the world heals and the session must settle.
pub fn session_ops(data: &[u8]) -> Result<(), String> {
    session_ops_traced(data, false).1
}

/// [`session_ops`], returning the world as well; with `trace`, the world keeps
/// its printable trace (see [`World::trace`]) to explain a failure.
pub fn session_ops_traced(data: &[u8], trace: bool) -> (World, Result<(), String>) {
    world_ops(data, trace, 0)
}

/// [`session_ops`] over two to four processes sharing one store and its lock
/// (with [`SessionConfig::shared_store`](freshen_core::session::SessionConfig::shared_store)):
/// the input's first byte after the seed picks how many, and each operation
/// that acts on a process is prefixed by a byte naming which. C1 and C2 are
/// also checked across the processes.
pub fn shared_session_ops(data: &[u8]) -> Result<(), String> {
    shared_session_ops_traced(data, false).1
}

/// [`shared_session_ops`], returning the world as well.
pub fn shared_session_ops_traced(data: &[u8], trace: bool) -> (World, Result<(), String>) {
    world_ops(data, trace, World::SHARED)
}

/// [`shared_session_ops`] with every session bound by DPoP (RFC 9449): the
/// input's seed says whether the server requires nonces, and how often it
/// changes them (every 10 to 300 s), so nonce challenges meet lost answers,
/// crashes, logins and the other processes. D1–D3 are checked too.
pub fn bound_session_ops(data: &[u8]) -> Result<(), String> {
    bound_session_ops_traced(data, false).1
}

/// [`bound_session_ops`], returning the world as well.
pub fn bound_session_ops_traced(data: &[u8], trace: bool) -> (World, Result<(), String>) {
    world_ops(data, trace, World::SHARED | World::BOUND)
}

impl World {
    /// [`world_ops`]: several processes share one store.
    const SHARED: u8 = 1;
    /// [`world_ops`]: sessions are bound by DPoP.
    const BOUND: u8 = 2;
}

fn world_ops(data: &[u8], trace: bool, shape: u8) -> (World, Result<(), String>) {
    let shared = shape & World::SHARED != 0;
    let mut input = Bytes::new(data);
    let seed = input.u64();
    let mut config = WorldConfig::quiet();
    if shared {
        config.processes = 2 + input.below(3) as usize;
        config.session.shared_store = true;
    }
    config.authority = authority_config(&mut input);
    if shape & World::BOUND != 0 {
        // From the seed, so the bytes after it mean what they mean in the other targets.
        config.dpop = true;
        if !seed.is_multiple_of(4) {
            config.authority.dpop_nonce_lifetime = Some(Duration::from_secs(10 + (seed >> 8) % 291));
        }
    }
    config.latency = Duration::from_millis(1 + input.below(500));
    config.start = match input.below(8) {
        0 => Start::Empty,
        1 => Start::RefreshOnly,
        2 => Start::AccessOnly,
        _ => Start::Pair,
    };
    config.max_steps = 200_000;
    config.trace = trace;
    let processes = config.processes as u64;
    let mut world = World::new(config, seed);
    let mut ops = 0;
    while !input.is_empty() && ops < MAX_OPS {
        ops += 1;
        let op = input.u8() % 16;
        // Which process an operation acts on: read only where there are several,
        // so a single-process input means what it always meant.
        let p = if shared && matches!(op, 0..=6) { input.below(processes) as usize } else { 0 };
        match op {
            0 | 1 => {
                for _ in 0..=input.below(4) {
                    world.want_token_at(p);
                }
            }
            2 => {
                world.force_refresh_at(p);
            }
            3 => world.log_out_at(p),
            4 => world.log_in_at(p),
            5 => world.crash_with_at(p, input.bool()),
            6 => world.crash_at_command(input.below(8)),
            7 => world.suspend(Duration::from_secs(input.below(7200))),
            8 => world.revoke_stored_session(),
            9..=11 => world.script([fate(&mut input)]),
            12 => {
                let store = match input.below(3) {
                    0 => StoreFate::Write,
                    1 => StoreFate::FailBefore,
                    _ => StoreFate::FailAfter,
                };
                world.script_store([store]);
            }
            _ => world.run_for(Duration::from_millis(input.below(1 << 16) * (1 + input.below(8)))),
        }
        let violations = world.violations();
        if !violations.is_empty() {
            let broken = format!("after {ops} operations:\n{}", violations_text(&violations));
            return (world, Err(broken));
        }
    }
    world.heal();
    let violations = world.violations();
    let verdict =
        if violations.is_empty() { Ok(()) } else { Err(format!("after healing:\n{}", violations_text(&violations))) };
    (world, verdict)
}

fn fate(input: &mut Bytes<'_>) -> Fate {
    match input.below(9) {
        0 => Fate::Deliver,
        1 => Fate::DropRequest,
        2 => Fate::DropResponse,
        3 => Fate::MangleResponse,
        4 => Fate::DuplicateResponse,
        5 => Fate::Delay(Duration::from_millis(input.below(1 << 16))),
        6 => Fate::ServerError,
        7 => Fate::RateLimited(Duration::from_secs(input.below(120))),
        _ => Fate::Refused,
    }
}
