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
    transport.authority.lock().unwrap().revoke(now, support::CLIENT, stored.refresh_token.expose_secret()).unwrap();
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
