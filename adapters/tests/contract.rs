//! The contract users expect of a session library, one scenario per rule,
//! written as an app would use the public API, against the reference
//! authority behind a scripted transport on tokio's paused clock.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // a test may panic: that is how it fails

mod support;

use std::time::Duration;

use freshen::Error;
use freshen_core::authority::AuthorityConfig;
use freshen_core::session::{LogoutCause, StateView};
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
