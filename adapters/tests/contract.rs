//! The contract users expect of a session library, one scenario per rule,
//! written as an app would use the public API, against the reference
//! authority behind a scripted transport on tokio's paused clock.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // a test may panic: that is how it fails

mod support;

use freshen::secrecy::ExposeSecret as _;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use freshen::Error;
use freshen_core::ids::Generation;
use freshen_core::oauth::Rejected;
use freshen_core::session::{AttemptFailure, LogoutCause, Renewal, StateView, TransportFailure};
use freshen_sim::authority::AuthorityConfig;
use support::session as start;

/// A stored access token that is already spent.
const SPENT: Option<Duration> = Some(Duration::ZERO);

/// Rule 1: the state is never behind an answer. A caller told "logged out"
/// reads `LoggedOut` from the state at once, with no `.await` in between.
#[tokio::test(start_paused = true)]
async fn rule_1_a_caller_told_logged_out_reads_logged_out() {
    let (session, transport, store) = start(AuthorityConfig::default(), SPENT);
    let stored = store.inner().peek().unwrap().unwrap();
    let now = transport.now();
    transport
        .state
        .authority()
        .revoke(now, support::CLIENT, stored.refresh_token.as_ref().unwrap().expose_secret())
        .unwrap();
    let error = session.access_token().await.unwrap_err();
    assert!(matches!(error, Error::LoggedOut(LogoutCause::RefreshTokenRejected { .. })), "{error:?}");
    let state = session.state();
    assert!(state.is_logged_out(), "answered logged out, but the state read {state}");

    // And a logout asked for while callers wait: each sees the state it was told.
    let (session, transport, _) = start(AuthorityConfig::default(), SPENT);
    transport.hold();
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let session = session.clone();
            tokio::spawn(async move {
                let answer = session.access_token().await;
                (answer, session.state())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let logout = {
        let session = session.clone();
        tokio::spawn(async move { session.log_out().await })
    };
    for waiter in waiters {
        let (answer, state) = waiter.await.unwrap();
        assert_eq!(answer.unwrap_err(), Error::LoggedOut(LogoutCause::Requested));
        assert_eq!(state, StateView::LoggedOut { cause: LogoutCause::Requested });
    }
    transport.release(2);
    logout.await.unwrap();
}

/// Rule 3: a failure is not cached. A failed cycle answers its callers, keeps
/// the session, and the next caller starts a new cycle at once.
#[tokio::test(start_paused = true)]
async fn rule_3_the_next_caller_after_a_failed_cycle_tries_again() {
    let (session, transport, store) = start(AuthorityConfig::default(), SPENT);
    let attempts = support::config().session.backoff.attempts as usize;
    transport.answer_next((0..attempts).map(|_| (503, Vec::new(), "<html>down</html>".to_owned())));
    let error = session.access_token().await.unwrap_err();
    assert!(matches!(error, Error::RefreshUnavailable { .. }), "{error:?}");
    assert_eq!(transport.refreshes.load(SeqCst), attempts);
    assert!(store.inner().peek().is_some(), "the session and its tokens stay");
    // The server is back: the very next caller refreshes, with no cooldown.
    let token = session.access_token().await.unwrap();
    assert_eq!(token.generation(), Generation(2));
    assert_eq!(transport.refreshes.load(SeqCst), attempts + 1);
}

/// Rule 3: only the server's Retry-After holds new cycles back.
#[tokio::test(start_paused = true)]
async fn rule_3_a_retry_after_holds_callers_until_it_has_passed() {
    let (session, transport, _) = start(AuthorityConfig::default(), SPENT);
    let retry_after = vec![("Retry-After".to_owned(), b"120".to_vec())];
    transport.answer_next([(429, retry_after, String::new())]);
    assert!(matches!(session.access_token().await.unwrap_err(), Error::RefreshUnavailable { .. }));
    assert!(matches!(session.access_token().await.unwrap_err(), Error::RefreshUnavailable { .. }));
    assert_eq!(transport.refreshes.load(SeqCst), 1, "no request while the server asked to wait");
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(session.access_token().await.unwrap().generation(), Generation(2));
    assert_eq!(transport.refreshes.load(SeqCst), 2);
}

/// Rule 3: a hung token endpoint fails each caller at the documented deadline
/// (`SessionConfig::unanswered_cycle_bound`: every attempt's timeout plus the
/// backoff between them), not before and not never; the next caller tries again.
#[tokio::test(start_paused = true)]
async fn rule_3_a_hung_endpoint_fails_callers_at_the_documented_deadline() {
    let (session, transport, _) = start(AuthorityConfig::default(), SPENT);
    let config = support::config().session;
    transport.hang(true);
    let started = tokio::time::Instant::now();
    let error = session.access_token().await.unwrap_err();
    let waited = started.elapsed();
    let timed_out = AttemptFailure::Transport(TransportFailure::Timeout);
    assert!(matches!(&error, Error::RefreshUnavailable { failure, .. } if *failure == timed_out), "{error:?}");
    let floor = config.request_timeout * config.backoff.attempts
        + (1..config.backoff.attempts).map(|a| config.backoff.floor(a)).sum::<Duration>();
    assert!(waited >= floor, "failed after {waited:?}, before every attempt had its time ({floor:?})");
    assert!(waited <= config.unanswered_cycle_bound(), "waited {waited:?}, past {:?}", config.unanswered_cycle_bound());
    assert_eq!(transport.refreshes.load(SeqCst), config.backoff.attempts as usize);
    transport.hang(false);
    assert_eq!(session.access_token().await.unwrap().generation(), Generation(2));
}

/// `callers` concurrent callers all get a token of `generation`.
async fn all_callers_get(
    session: &freshen::Session<support::AuthorityTransport, support::FaultyMemoryStore>,
    callers: usize,
    generation: Generation,
) {
    let callers: Vec<_> = (0..callers)
        .map(|_| {
            let session = session.clone();
            tokio::spawn(async move { session.access_token().await.map(|t| t.generation()) })
        })
        .collect();
    for caller in callers {
        assert_eq!(caller.await.unwrap().unwrap(), generation);
    }
}

/// A session over the authority whose store holds `stored`.
fn start_from(
    transport: &support::AuthorityTransport,
    stored: &freshen_core::stored::StoredSession,
) -> (freshen::Session<support::AuthorityTransport, support::FaultyMemoryStore>, support::FaultyMemoryStore) {
    let store = support::FaultyMemoryStore::holding(stored);
    let session = support::start(support::config(), transport.clone(), store.clone());
    (session, store)
}

/// Rule 2: the refresh window is the user's. A restored token with the margin
/// (60 s here, no jitter) or less left is refreshed before it is handed out,
/// inclusive at the boundary; a second more and it is served as it is.
#[tokio::test(start_paused = true)]
async fn rule_2_a_restored_token_inside_the_margin_is_refreshed_first() {
    let margin = support::config().session.refresh_margin;
    let lifetime = Duration::from_secs(3600);
    let transport = support::AuthorityTransport::new(AuthorityConfig::default());
    let (session, _) = start_from(&transport, &transport.login_issued(lifetime, margin));
    assert_eq!(session.access_token().await.unwrap().generation(), Generation(2), "refreshed before use");
    assert_eq!(transport.refreshes.load(SeqCst), 1);

    let transport = support::AuthorityTransport::new(AuthorityConfig::default());
    let (session, _) = start_from(&transport, &transport.login_issued(lifetime, margin + Duration::from_secs(1)));
    assert_eq!(session.access_token().await.unwrap().generation(), Generation(1), "outside the margin: served");
    assert_eq!(transport.refreshes.load(SeqCst), 0);
}

/// Rule 2: the margin shrinks only for a token issued for no longer than the
/// margin, and a restored token is judged by the lifetime it was issued with,
/// not by what is left of it.
#[tokio::test(start_paused = true)]
async fn rule_2_only_a_short_issued_lifetime_shrinks_the_margin() {
    // Issued for 40 s (shorter than the 60 s margin): refreshed at half its life.
    let short = Duration::from_secs(40);
    let transport = support::AuthorityTransport::new(AuthorityConfig::default());
    let (session, _) = start_from(&transport, &transport.login_issued(short, Duration::from_secs(25)));
    assert_eq!(session.access_token().await.unwrap().generation(), Generation(1), "25 s left of 40: still served");
    let transport = support::AuthorityTransport::new(AuthorityConfig::default());
    let (session, _) = start_from(&transport, &transport.login_issued(short, Duration::from_secs(20)));
    assert_eq!(session.access_token().await.unwrap().generation(), Generation(2), "half its life left: refreshed");
    // Issued for an hour, 50 s left: the whole margin applies, whatever is left.
    let transport = support::AuthorityTransport::new(AuthorityConfig::default());
    let (session, _) =
        start_from(&transport, &transport.login_issued(Duration::from_secs(3600), Duration::from_secs(50)));
    assert_eq!(session.access_token().await.unwrap().generation(), Generation(2));
}

/// Rule 4: a session restored from a refresh token alone: the first callers
/// share one refresh.
#[tokio::test(start_paused = true)]
async fn rule_4_a_refresh_token_alone_is_refreshed_once_for_all_first_callers() {
    let transport = support::AuthorityTransport::new(AuthorityConfig::default());
    let login = transport.login(None);
    let stored = freshen_core::stored::StoredSession::refresh_only(login.refresh_token.unwrap());
    let (session, store) = start_from(&transport, &stored);
    all_callers_get(&session, 50, Generation(2)).await;
    assert_eq!(transport.refreshes.load(SeqCst), 1);
    assert!(store.inner().peek().unwrap().unwrap().access_token.is_some(), "the pair is stored");
}

/// Rule 4: an access token alone (the server issued no refresh token) is
/// served while it is usable; then callers are told at once, with no request.
#[tokio::test(start_paused = true)]
async fn rule_4_an_access_token_alone_is_served_then_reported_missing() {
    let transport = support::AuthorityTransport::new(AuthorityConfig::default());
    let login = transport.login(Some(Duration::from_secs(300)));
    let mut stored = freshen_core::stored::StoredSession::access_only(login.access_token.unwrap());
    stored.access_expires_at = login.access_expires_at;
    let (session, _) = start_from(&transport, &stored);
    assert_eq!(session.access_token().await.unwrap().generation(), Generation(1));
    tokio::time::sleep(Duration::from_secs(300)).await;
    let asked = tokio::time::Instant::now();
    assert_eq!(session.access_token().await.unwrap_err(), Error::MissingRefreshToken);
    assert_eq!(asked.elapsed(), Duration::ZERO, "told at once");
    assert_eq!(transport.refreshes.load(SeqCst), 0, "no request to the server");
    assert!(matches!(session.state(), StateView::Expired { .. }), "{}", session.state());
}

/// Rule 5: a forced refresh happens even if the token is fresh, and returns
/// its outcome; two back to back rotate twice (RT1 → RT2 → RT3) against a
/// server with reuse detection and no grace, never an invalid_grant.
#[tokio::test(start_paused = true)]
async fn rule_5_forced_refreshes_are_chained_under_rotation() {
    let mut strict = AuthorityConfig::default();
    strict.grace = Duration::ZERO;
    let (session, transport, store) = start(strict, Some(Duration::from_secs(3600)));
    let fresh = session.access_token().await.unwrap();
    assert_eq!(fresh.generation(), Generation(1));
    let forced = session.refresh().await.unwrap();
    assert_eq!(forced.generation(), Generation(2), "refreshed although the token was fresh");

    // Two at once: the second waits for the first and presents its result.
    transport.hold();
    let first = support::refresh_in_background(&session).await;
    let second = support::refresh_in_background(&session).await;
    transport.release(2);
    assert_eq!(first.await.unwrap().unwrap().generation(), Generation(3));
    assert_eq!(second.await.unwrap().unwrap().generation(), Generation(4));
    assert_eq!(transport.refreshes.load(SeqCst), 3);
    let stats = transport.state.authority().stats();
    assert_eq!((stats.refreshes, stats.refusals, stats.reuse_detections), (3, 0, 0));
    assert_eq!(store.generation(), Some(Generation(4)));
}

/// Rule 5: an invalidation hint makes the next caller refresh, once.
#[tokio::test(start_paused = true)]
async fn rule_5_an_invalidated_token_is_refreshed_by_the_next_caller_once() {
    let (session, transport, _) = start(AuthorityConfig::default(), Some(Duration::from_secs(3600)));
    let token = session.access_token().await.unwrap();
    session.invalidate(&token);
    assert_eq!(transport.refreshes.load(SeqCst), 0, "a hint, not a request");
    all_callers_get(&session, 10, Generation(2)).await;
    assert_eq!(transport.refreshes.load(SeqCst), 1);
    // A hint about a token already replaced changes nothing.
    session.invalidate(&token);
    assert_eq!(session.access_token().await.unwrap().generation(), Generation(2));
    assert_eq!(transport.refreshes.load(SeqCst), 1);
}

/// Whether the authority would accept `token` now.
fn accepted(transport: &support::AuthorityTransport, token: &freshen::Token) -> bool {
    transport.state.authority().validate(transport.now(), token.expose_secret()).is_ok()
}

/// Rule 8: a grace replay that returns the original pair with a full
/// `expires_in` (Django OAuth Toolkit) while the server keeps the original
/// expiry: the session counts the lifetime from its first attempt, so it never
/// hands out the token past the server's expiry.
#[tokio::test(start_paused = true)]
async fn rule_8_a_grace_replay_keeps_its_original_expiry() {
    let mut dot = AuthorityConfig::default();
    dot.grace_replay = freshen_sim::authority::GraceReplay::SamePairFullLifetime;
    dot.grace = Duration::from_secs(120);
    dot.access_ttl = Duration::from_secs(30);
    let (session, transport, _) = start(dot, SPENT);
    // The first two answers never come (the server rotated at once); the
    // third attempt, over 20 s later, gets the replay: "expires_in: 30",
    // which the server counts from the first attempt.
    transport.lose_next_answers(2);
    let first = session.access_token().await.unwrap();
    assert_eq!(transport.state.authority().stats().grace_replays, 2);
    // Every token handed out from now on is one the server accepts.
    for _ in 0..60 {
        let token = session.access_token().await.unwrap();
        assert!(accepted(&transport, &token), "handed out {token:?}, which the server already refuses");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(session.access_token().await.unwrap().generation() > first.generation());
}

/// Rule 8: the server deletes the previous access token when a refresh
/// commits. A 401 retry that comes while the refresh is in flight waits for
/// it instead of taking the current token, which that refresh has just killed.
#[tokio::test(start_paused = true)]
async fn rule_8_a_401_retry_during_a_refresh_waits_for_it() {
    let mut dot = AuthorityConfig::default();
    dot.revoke_previous_access = true;
    let (session, transport, _) = start(dot, Some(Duration::from_secs(3600)));
    let old = session.access_token().await.unwrap();
    let current = session.refresh().await.unwrap();
    // Another refresh is in flight; the server has committed it (and deleted
    // `current`), its answer is held.
    transport.hold();
    let forced = support::refresh_in_background(&session).await;
    assert!(!accepted(&transport, &current), "the server deleted it");
    // A request with the old token came back 401: its one retry must not get
    // `current`.
    let retry = {
        let session = session.clone();
        tokio::spawn(async move { session.retry_token(&old).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!retry.is_finished(), "the retry waits for the refresh in flight");
    transport.release(1);
    let retried = retry.await.unwrap().unwrap();
    assert!(accepted(&transport, &retried), "the retry got a token the server accepts");
    assert_eq!(forced.await.unwrap().unwrap().generation(), retried.generation());
}

/// Rule 6: a request for the user's interaction is its own error, keeps the
/// session, and is not retried on its own (no timer, no next caller); a forced
/// refresh, the app's word that the user acted, tries again.
#[tokio::test(start_paused = true)]
async fn rule_6_interaction_required_keeps_the_session_and_waits_for_the_user() {
    let (session, transport, store) = start(AuthorityConfig::default(), SPENT);
    transport.answer_next([support::AuthorityTransport::oauth_error(400, "interaction_required")]);
    let error = session.access_token().await.unwrap_err();
    assert!(matches!(&error, Error::InteractionRequired(e) if e.code == "interaction_required"), "{error:?}");
    assert!(!session.state().is_logged_out());
    assert!(store.inner().peek().is_some(), "the session and its tokens stay");
    tokio::time::sleep(Duration::from_secs(3600)).await;
    let error = session.access_token().await.unwrap_err();
    assert!(matches!(error, Error::InteractionRequired(_)), "{error:?}");
    assert_eq!(transport.refreshes.load(SeqCst), 1, "neither a timer nor a caller asked the server again");
    let token = session.refresh().await.unwrap();
    assert!(accepted(&transport, &token), "the refreshed token is live");
    assert_eq!(transport.refreshes.load(SeqCst), 2);
}

/// Rule 6: `invalid_request` (fosite's answer to the loser of two concurrent
/// rotations) sends the session to the store first: another process's newer
/// tokens are adopted, and without them it is a refusal, never a logout.
#[tokio::test(start_paused = true)]
async fn rule_6_invalid_request_rereads_the_store_and_never_logs_out() {
    let (session, transport, store) = start(AuthorityConfig::default(), SPENT);
    transport.answer_next([support::AuthorityTransport::oauth_error(400, "invalid_request")]);
    let error = session.access_token().await.unwrap_err();
    assert!(matches!(&error, Error::Rejected { .. }), "{error:?}");
    assert!(!session.state().is_logged_out());
    assert!(store.inner().peek().is_some());

    // Another process rotated meanwhile: its tokens are found and used.
    let (session, transport, store) = start(AuthorityConfig::default(), Some(Duration::from_secs(3600)));
    session.watch_state().wait_for(|s| !matches!(s, StateView::Loading)).await.unwrap();
    let mut theirs = transport.login(Some(Duration::from_secs(3600)));
    theirs.generation = Generation(5);
    freshen::store::Store::save(store.inner(), &theirs).await.unwrap();
    transport.answer_next([support::AuthorityTransport::oauth_error(400, "invalid_request")]);
    let token = session.refresh().await.unwrap();
    assert_eq!(token.generation(), Generation(5));
    assert_eq!(transport.refreshes.load(SeqCst), 1);
}

/// Rule 6: `invalid_client` is misconfiguration: typed, never a logout, and
/// retried no faster than the backoff's slowest pace.
#[tokio::test(start_paused = true)]
async fn rule_6_invalid_client_is_misconfiguration_paced_at_the_slowest_backoff() {
    let (session, transport, store) = start(AuthorityConfig::default(), SPENT);
    let pace = support::config().session.backoff.max;
    transport.answer_next([support::AuthorityTransport::oauth_error(401, "invalid_client")]);
    let error = session.access_token().await.unwrap_err();
    assert!(matches!(&error, Error::Rejected { .. }), "{error:?}");
    assert!(error.to_string().contains("invalid_client"), "{error}");
    assert!(!session.state().is_logged_out());
    assert!(store.inner().peek().is_some());
    assert!(matches!(session.access_token().await.unwrap_err(), Error::Rejected { .. }));
    assert_eq!(transport.refreshes.load(SeqCst), 1, "not retried before the slowest backoff");
    tokio::time::sleep(pace).await;
    assert_eq!(session.access_token().await.unwrap().generation(), Generation(2));
}

/// Rule 7: an endpoint that cannot work is refused at start with a typed
/// error that says why (and shows no credentials), not at the first call.
#[tokio::test(start_paused = true)]
async fn rule_7_an_endpoint_that_cannot_work_is_refused_at_start() {
    let transport = support::AuthorityTransport::new(AuthorityConfig::default());
    let start_with = |url: &str| {
        let config = freshen::Config::new(url, freshen_core::oauth::Client::public("app"));
        freshen::Session::start(config, transport.clone(), support::FaultyMemoryStore::default()).map(|_| ())
    };
    let error = start_with("http://user:secret@auth.example.com/token?x=1").unwrap_err();
    assert!(matches!(error, Error::InvalidEndpoint { endpoint: "token", .. }), "{error:?}");
    let said = error.to_string();
    assert!(said.contains("plain http") && said.contains("http://auth.example.com/token"), "{said}");
    assert!(!said.contains("secret") && !said.contains("x=1"), "{said}");
    assert!(matches!(start_with("auth.example.com/token"), Err(Error::InvalidEndpoint { .. })));
    assert!(matches!(start_with("ftp://auth.example.com/token"), Err(Error::InvalidEndpoint { .. })));
    assert!(matches!(start_with("not a url"), Err(Error::InvalidEndpoint { .. })));
    start_with("https://auth.example.com/token").unwrap();
    start_with("http://127.0.0.1:8080/token").unwrap();
    start_with("http://[::1]:8080/token").unwrap();
    start_with("http://localhost/token").unwrap();
    let allowed = freshen::Config::new("http://auth.internal/token", freshen_core::oauth::Client::public("app"))
        .with_plain_http_allowed();
    freshen::Session::start(allowed, transport.clone(), support::FaultyMemoryStore::default()).unwrap();
}

/// Rule 7: errors read as sentences for a person, with no struct dumps.
#[test]
fn rule_7_errors_read_as_sentences() {
    let error = freshen_core::oauth::OAuthError { status: 400, code: "invalid_grant".into(), description: None };
    let endpoint = "https://auth.example.com/token".to_owned();
    let timed_out = Error::RefreshUnavailable {
        failure: AttemptFailure::Transport(TransportFailure::Timeout),
        endpoint: endpoint.clone(),
        cause: None,
    };
    let errors = [
        Error::LoggedOut(LogoutCause::RefreshTokenRejected { error: error.clone(), after_lost_response: true }),
        timed_out.clone(),
        Error::Rejected { rejected: freshen_core::oauth::Rejected::Status(404), endpoint },
        Error::InteractionRequired(error),
        Error::NoSession,
    ];
    for error in errors {
        let said = error.to_string();
        assert!(!said.contains('{') && !said.contains("OAuthError") && !said.contains("Timeout"), "{said}");
    }
    assert_eq!(
        timed_out.to_string(),
        "the refresh at https://auth.example.com/token failed for now: no answer came in time"
    );
}

/// Rule 7: the state tells an outage (and when the next attempt may start)
/// from a misconfiguration and from "the next call refreshes".
#[tokio::test(start_paused = true)]
async fn rule_7_the_state_tells_an_outage_from_misconfiguration_from_the_next_call() {
    let (session, transport, _) = start(AuthorityConfig::default(), SPENT);
    // An outage: every attempt of the cycle goes unanswered.
    let attempts = support::config().session.backoff.attempts as usize;
    transport.fail_next(vec![TransportFailure::NotSent; attempts]);
    let error = session.access_token().await.unwrap_err();
    assert!(matches!(error, Error::RefreshUnavailable { .. }), "{error:?}");
    let outage = Renewal::Failing { failure: AttemptFailure::Transport(TransportFailure::NotSent), retry_at: None };
    assert!(matches!(session.state(), StateView::Expired { renewal, .. } if renewal == outage), "{}", session.state());

    // The server asks to wait longer than a cycle may: the state says until when.
    let waited_for = Duration::from_secs(3600);
    transport.answer_next([(503, vec![("retry-after".into(), b"3600".to_vec())], String::new())]);
    let error = session.access_token().await.unwrap_err();
    assert!(matches!(error, Error::RefreshUnavailable { .. }), "{error:?}");
    let Some(Renewal::Failing { retry_at: Some(retry_at), .. }) = session.state().renewal().cloned() else {
        panic!("no time for the next attempt in {}", session.state());
    };
    let from_now = retry_at.saturating_duration_since(transport.now());
    assert!(from_now <= waited_for && from_now > waited_for - Duration::from_secs(5), "{from_now:?}");
    let refreshes = transport.refreshes.load(SeqCst);
    assert!(matches!(session.access_token().await.unwrap_err(), Error::RefreshUnavailable { .. }));
    assert_eq!(transport.refreshes.load(SeqCst), refreshes, "held until the server's time");
    tokio::time::sleep(waited_for).await;

    // A misconfiguration reads as one, not as a plain expiry or an outage.
    transport.answer_next([support::AuthorityTransport::oauth_error(401, "invalid_client")]);
    let error = session.access_token().await.unwrap_err();
    assert!(matches!(error, Error::Rejected { .. }), "{error:?}");
    let state = session.state();
    assert!(
        matches!(state.renewal(), Some(Renewal::Misconfigured { rejected: Rejected::Error(e), retry_at: Some(_) }) if e.code == "invalid_client"),
        "{state}"
    );
    assert!(!state.needs_login(), "{state}");

    // Once a refresh succeeds, nothing stands in the way again.
    tokio::time::sleep(support::config().session.backoff.max).await;
    let token = session.access_token().await.unwrap();
    assert!(matches!(session.state(), StateView::Valid { renewal: Renewal::Ready, .. }), "{}", session.state());

    // A token the app says is bad: the state says the next call refreshes.
    session.invalidate(&token);
    assert!(matches!(session.state(), StateView::Expired { renewal: Renewal::Ready, .. }), "{}", session.state());
    let refreshes = transport.refreshes.load(SeqCst);
    assert!(session.access_token().await.unwrap().generation() > token.generation());
    assert_eq!(transport.refreshes.load(SeqCst), refreshes + 1);
}

/// Rule 7: a request that never reached the token endpoint carries the
/// transport's own error as its cause, and the error names the endpoint
/// (not `Transport(NotSent)` alone). Real reqwest, a closed loopback port.
#[tokio::test]
async fn rule_7_a_transport_failure_carries_the_transports_own_error() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let endpoint = format!("http://{closed}/token");
    let spent = freshen_core::stored::StoredSession::pair(
        freshen_core::token::AccessToken::new("canary-access-7"),
        freshen_core::token::RefreshToken::new("canary-refresh-7"),
    )
    .with_access_expiry(freshen::system_clock(), Duration::ZERO);
    let mut settings = support::config().session;
    settings.backoff.attempts = 1;
    let config = freshen::Config::new(&endpoint, freshen_core::oauth::Client::public("app")).with_session(settings);
    let transport = freshen::transport::ReqwestTransport::new().unwrap();
    let session = freshen::Session::start(config, transport, freshen::store::MemoryStore::holding(&spent)).unwrap();
    let error = session.access_token().await.unwrap_err();
    let Error::RefreshUnavailable { failure, endpoint: shown, cause } = &error else { panic!("{error:?}") };
    assert_eq!(*failure, AttemptFailure::Transport(TransportFailure::NotSent));
    assert_eq!(*shown, endpoint);
    assert!(error.to_string().contains(&endpoint), "{error}");
    let cause = cause.as_ref().expect("the transport's error is kept");
    let mut chain = Vec::new();
    let mut next: Option<&dyn std::error::Error> = std::error::Error::source(&error);
    while let Some(source) = next {
        chain.push(source.to_string());
        next = source.source();
    }
    assert!(chain.len() >= 2, "the cause and reqwest's error below it: {chain:?}");
    assert_eq!(chain[0], cause.to_string());
    let said = format!("{error} {chain:?} {error:?}");
    assert!(!said.contains("canary"), "{said}");
    assert!(!session.state().needs_login(), "an unreachable endpoint is an outage, not a logout");
}

/// A login at the authority, as the app's login flow would return it.
fn login_response(transport: &support::AuthorityTransport) -> freshen_core::oauth::TokenResponse {
    let issued = transport.state.authority().login(transport.now(), support::CLIENT, None);
    freshen_core::oauth::TokenResponse::bearer(issued.access_token, Some(issued.expires_in), Some(issued.refresh_token))
}

/// A session over an empty store.
fn start_empty() -> (
    freshen::Session<support::AuthorityTransport, support::FaultyMemoryStore>,
    support::AuthorityTransport,
    support::FaultyMemoryStore,
) {
    let transport = support::AuthorityTransport::new(AuthorityConfig::default());
    let store = support::FaultyMemoryStore::default();
    let session = support::start(support::config(), transport.clone(), store.clone());
    (session, transport, store)
}

/// Rule 9: the initial state tells "not loaded yet" and "no session yet"
/// apart from "logged out"; `log_in` resolves once the session is stored,
/// and fails with a typed error when the store cannot take it.
#[tokio::test(start_paused = true)]
async fn rule_9_log_in_resolves_once_the_session_is_stored() {
    let (session, transport, store) = start_empty();
    assert_eq!(session.state(), StateView::Loading);
    let state = session.watch_state().wait_for(|s| !matches!(s, StateView::Loading)).await.unwrap().clone();
    assert_eq!(state, StateView::NoSession);
    assert!(state.needs_login() && !state.is_logged_out());
    assert_eq!(session.access_token().await.unwrap_err(), Error::NoSession);

    // Two writes fail first: the login resolves only after the third lands.
    store.faults().fail_next_writes(2);
    let response = login_response(&transport);
    let access = response.access_token.expose_secret().to_owned();
    session.log_in(response).await.unwrap();
    assert_eq!(store.faults().writes(), 3);
    let stored = store.inner().peek().unwrap().unwrap();
    assert_eq!(stored.access_token.as_ref().unwrap().expose_secret(), access);
    assert_eq!(session.access_token().await.unwrap().expose_secret(), access);
    assert_eq!(transport.refreshes.load(SeqCst), 0);

    // A store that keeps failing: the login is told so (the tokens stay in memory).
    store.faults().fail_next_writes(usize::MAX);
    let error = session.log_in(login_response(&transport)).await.unwrap_err();
    assert_eq!(error, Error::StoreUnavailable);
    assert!(!session.state().needs_login());
}

/// Rule 9: a login made while the store is still being read wins over what
/// the store held, and is stored.
#[tokio::test(start_paused = true)]
async fn rule_9_log_in_works_while_the_store_is_still_loading() {
    let (session, transport, store) = start(AuthorityConfig::default(), Some(Duration::from_secs(3600)));
    let old = store.inner().peek().unwrap().unwrap();
    assert_eq!(session.state(), StateView::Loading, "nothing has run yet: the store is not read");
    let response = login_response(&transport);
    let access = response.access_token.expose_secret().to_owned();
    session.log_in(response).await.unwrap();
    let stored = store.inner().peek().unwrap().unwrap();
    assert_eq!(stored.access_token.as_ref().unwrap().expose_secret(), access);
    assert!(stored.generation > old.generation, "{} after {}", stored.generation, old.generation);
    assert_eq!(session.access_token().await.unwrap().expose_secret(), access);
}

/// Rule 9: an app starts a session from tokens it already holds, with no
/// JSON written by hand: a pair is served as is, a refresh token alone is
/// refreshed once by the first caller.
#[tokio::test(start_paused = true)]
async fn rule_9_a_session_starts_from_tokens_the_app_holds() {
    let (session, transport, store) = start_empty();
    let issued = transport.state.authority().login(transport.now(), support::CLIENT, None);
    let access = issued.access_token.expose_secret().to_owned();
    let held = freshen_core::stored::StoredSession::pair(issued.access_token, issued.refresh_token)
        .with_access_expiry(freshen::system_clock(), issued.expires_in);
    session.log_in_with(held).await.unwrap();
    assert_eq!(session.access_token().await.unwrap().expose_secret(), access);
    assert_eq!(transport.refreshes.load(SeqCst), 0);
    assert!(store.inner().peek().unwrap().is_ok());

    // A held pair with less than the margin left and no known issued lifetime
    // gets the whole margin (rule 2): it is refreshed before it is handed out.
    let (session, transport, _) = start_empty();
    let issued = transport.state.authority().login(transport.now(), support::CLIENT, None);
    let mut held = freshen_core::stored::StoredSession::pair(issued.access_token, issued.refresh_token);
    held.access_expires_at = Some(freshen::system_clock().saturating_add(Duration::from_secs(30)));
    session.log_in_with(held).await.unwrap();
    assert!(session.access_token().await.unwrap().generation() > Generation(1), "refreshed before use");
    assert_eq!(transport.refreshes.load(SeqCst), 1);

    let (session, transport, _) = start_empty();
    let issued = transport.state.authority().login(transport.now(), support::CLIENT, None);
    session.log_in_with(freshen_core::stored::StoredSession::refresh_only(issued.refresh_token)).await.unwrap();
    let callers: Vec<_> = (0..3)
        .map(|_| {
            let session = session.clone();
            tokio::spawn(async move { session.access_token().await })
        })
        .collect();
    for caller in callers {
        assert!(accepted(&transport, &caller.await.unwrap().unwrap()));
    }
    assert_eq!(transport.refreshes.load(SeqCst), 1, "three first callers, one refresh");
}
