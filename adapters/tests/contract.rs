//! The contract users expect of a session library, one scenario per rule,
//! written as an app would use the public API, against the reference
//! authority behind a scripted transport on tokio's paused clock.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // a test may panic: that is how it fails

mod support;

use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use freshen::Error;
use freshen_core::authority::AuthorityConfig;
use freshen_core::ids::Generation;
use freshen_core::session::{AttemptFailure, LogoutCause, StateView, TransportFailure};
use support::session as start;

/// A stored access token that is already spent.
const SPENT: Option<Duration> = Some(Duration::ZERO);

/// Rule 1: the state is never behind an answer. A caller told "logged out"
/// reads `LoggedOut` from the state at once, with no `.await` in between.
#[tokio::test(start_paused = true)]
async fn rule_1_a_caller_told_logged_out_reads_logged_out() {
    let (session, transport, store) = start(AuthorityConfig::default(), SPENT);
    let stored = store.inner.peek().unwrap().unwrap();
    let now = transport.now();
    transport
        .authority
        .lock()
        .unwrap()
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
    assert!(matches!(error, Error::RefreshUnavailable(_)), "{error:?}");
    assert_eq!(transport.refreshes.load(SeqCst), attempts);
    assert!(store.inner.peek().is_some(), "the session and its tokens stay");
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
    assert!(matches!(session.access_token().await.unwrap_err(), Error::RefreshUnavailable(_)));
    assert!(matches!(session.access_token().await.unwrap_err(), Error::RefreshUnavailable(_)));
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
    assert_eq!(error, Error::RefreshUnavailable(AttemptFailure::Transport(TransportFailure::Timeout)));
    let floor = config.request_timeout * config.backoff.attempts
        + (1..config.backoff.attempts).map(|a| config.backoff.floor(a)).sum::<Duration>();
    assert!(waited >= floor, "failed after {waited:?}, before every attempt had its time ({floor:?})");
    assert!(waited <= config.unanswered_cycle_bound(), "waited {waited:?}, past {:?}", config.unanswered_cycle_bound());
    assert_eq!(transport.refreshes.load(SeqCst), config.backoff.attempts as usize);
    transport.hang(false);
    assert_eq!(session.access_token().await.unwrap().generation(), Generation(2));
}

/// A session over the authority whose store holds `stored`.
fn start_from(
    transport: &support::AuthorityTransport,
    stored: &freshen_core::stored::StoredSession,
) -> (freshen::Session<support::AuthorityTransport, support::FlakyStore>, support::FlakyStore) {
    let store = support::FlakyStore::holding(stored);
    let session = freshen::Session::start(support::config(), transport.clone(), store.clone()).unwrap();
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
    let callers: Vec<_> = (0..50)
        .map(|_| {
            let session = session.clone();
            tokio::spawn(async move { session.access_token().await.map(|t| t.generation()) })
        })
        .collect();
    for caller in callers {
        assert_eq!(caller.await.unwrap().unwrap(), Generation(2));
    }
    assert_eq!(transport.refreshes.load(SeqCst), 1);
    assert!(store.inner.peek().unwrap().unwrap().access_token.is_some(), "the pair is stored");
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
