//! The driver on tokio's paused clock, against the reference authority.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // a test may panic: that is how it fails

mod support;

use freshen::secrecy::ExposeSecret as _;
use std::collections::BTreeSet;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use freshen::Error;
use freshen::store::Store as _;
use freshen_core::ids::Generation;
use freshen_core::session::{LogoutCause, StateView, TransportFailure};
use freshen_sim::authority::AuthorityConfig;
use support::session;

/// A stored access token that is already spent.
const SPENT: Option<Duration> = Some(Duration::ZERO);

async fn settle() {
    tokio::time::sleep(Duration::from_millis(500)).await;
}

#[tokio::test(start_paused = true)]
async fn concurrent_callers_at_expiry_cause_exactly_one_refresh() {
    let (session, transport, store) = session(AuthorityConfig::default(), SPENT);
    let callers: Vec<_> = (0..200)
        .map(|_| {
            let session = session.clone();
            tokio::spawn(async move { session.access_token().await })
        })
        .collect();
    let mut generations = BTreeSet::new();
    for caller in callers {
        generations.insert(caller.await.unwrap().unwrap().generation());
    }
    assert_eq!(generations, BTreeSet::from([Generation(2)]));
    assert_eq!(transport.refreshes.load(SeqCst), 1);
    assert_eq!(store.generation(), Some(Generation(2)), "written before it was handed out");
}

#[tokio::test(start_paused = true)]
async fn a_valid_token_comes_from_the_snapshot_without_waiting() {
    let (session, transport, _) = session(AuthorityConfig::default(), Some(Duration::from_secs(300)));
    let first = session.access_token().await.unwrap();
    for _ in 0..1000 {
        let again = session.access_token().await.unwrap();
        assert_eq!(again.generation(), first.generation());
        assert_eq!(again.expose_secret(), first.expose_secret());
    }
    assert_eq!(session.waiting(), 0);
    assert_eq!(transport.refreshes.load(SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn a_caller_that_gives_up_does_not_abandon_the_refresh() {
    let (session, transport, store) = session(AuthorityConfig::default(), SPENT);
    transport.hold();
    let caller = {
        let session = session.clone();
        tokio::spawn(async move { session.access_token().await })
    };
    settle().await;
    assert_eq!(session.waiting(), 1);
    caller.abort();
    assert!(caller.await.unwrap_err().is_cancelled());
    assert_eq!(session.waiting(), 0, "the caller is forgotten");
    transport.release(1);
    settle().await;
    assert_eq!(store.generation(), Some(Generation(2)), "the rotation completed and was written");
    assert_eq!(session.access_token().await.unwrap().generation(), Generation(2));
    assert_eq!(transport.refreshes.load(SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn dropping_every_handle_mid_refresh_still_writes_the_rotation() {
    let (session, transport, store) = session(AuthorityConfig::default(), SPENT);
    transport.hold();
    settle().await;
    assert_eq!(transport.refreshes.load(SeqCst), 1, "the refresh started at load");
    drop(session);
    transport.release(1);
    settle().await;
    assert_eq!(store.generation(), Some(Generation(2)));
}

#[tokio::test(start_paused = true)]
async fn shutdown_waits_for_the_refresh_out_and_writes_its_rotation() {
    let (session, transport, store) = session(AuthorityConfig::default(), SPENT);
    transport.hold();
    settle().await;
    assert_eq!(transport.refreshes.load(SeqCst), 1, "the refresh started at load");
    let waiter = {
        let session = session.clone();
        tokio::spawn(async move { session.access_token().await })
    };
    let shutdown = {
        let session = session.clone();
        tokio::spawn(async move { session.shutdown().await })
    };
    settle().await;
    assert!(!shutdown.is_finished(), "shutdown returned with the rotated token still out");
    // Asked while shutting down: it would go out once the answer lands.
    let forced = {
        let session = session.clone();
        tokio::spawn(async move { session.refresh().await })
    };
    settle().await;
    transport.release(2);
    shutdown.await.unwrap();
    assert!(matches!(forced.await.unwrap(), Err(Error::Shutdown)), "a refresh started while shutting down");
    assert_eq!(store.generation(), Some(Generation(2)), "the rotation was written before shutdown returned");
    assert_eq!(waiter.await.unwrap().unwrap().generation(), Generation(2), "the answer in flight still lands");
    // Still valid: handed out. A forced refresh would go out: refused.
    assert_eq!(session.access_token().await.unwrap().generation(), Generation(2));
    assert!(matches!(session.refresh().await, Err(Error::Shutdown)));
    assert_eq!(transport.refreshes.load(SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn after_shutdown_nothing_starts_and_nobody_waits() {
    // Five minutes left, on a wall clock that follows tokio's: with the
    // driver stopped, no timer withdraws the token; the wall clock refuses it.
    let (session, transport, _) = session_on_a_steppable_clock();
    settle().await;
    session.shutdown().await;
    assert_eq!(session.access_token().await.unwrap().generation(), Generation(1), "a valid token is handed out");
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(transport.refreshes.load(SeqCst), 0, "the timer refreshed ahead after shutdown");
    assert!(matches!(session.access_token().await, Err(Error::Shutdown)), "the token died; nothing may wait");
    assert!(matches!(session.refresh().await, Err(Error::Shutdown)));
    tokio::time::timeout(Duration::from_secs(1), session.log_out()).await.expect("a logout after shutdown waited");
}

#[tokio::test(start_paused = true)]
async fn the_fast_path_stops_handing_out_a_token_at_its_usable_time_while_a_refresh_is_held() {
    // Five minutes left; the refresh ahead of expiry starts a minute early
    // and is held (for less than its long request timeout).
    let transport = support::AuthorityTransport::new(AuthorityConfig::default());
    let store = support::FaultyMemoryStore::holding(&transport.login(Some(Duration::from_secs(300))));
    let mut config = support::config();
    config.session.request_timeout = Duration::from_secs(200);
    let session = support::start(config, transport.clone(), store);
    transport.hold();
    tokio::time::sleep(Duration::from_secs(250)).await;
    assert_eq!(transport.refreshes.load(SeqCst), 1, "the refresh ahead started");
    let token = session.with_token(|token| token.generation()).await.unwrap();
    assert_eq!(token, Generation(1), "still usable: lent from the fast path");
    tokio::time::sleep(Duration::from_secs(80)).await;
    let caller = {
        let session = session.clone();
        tokio::spawn(async move { session.with_token(|token| token.generation()).await })
    };
    settle().await;
    assert!(!caller.is_finished(), "a token past its usable time was handed out");
    transport.release(1);
    assert_eq!(caller.await.unwrap().unwrap(), Generation(2));
}

#[tokio::test(start_paused = true)]
async fn shutdown_waits_no_longer_than_the_request_timeout_for_an_answer() {
    let (session, transport, store) = session(AuthorityConfig::default(), SPENT);
    transport.hang(true);
    settle().await;
    let started = tokio::time::Instant::now();
    session.shutdown().await;
    let waited = started.elapsed();
    let timeout = support::config().session.request_timeout;
    assert!(waited <= timeout, "shutdown waited {waited:?}, beyond the request timeout {timeout:?}");
    assert_eq!(transport.refreshes.load(SeqCst), 1, "no retry went out while shutting down");
    assert_eq!(store.generation(), Some(Generation(1)));
}

#[tokio::test(start_paused = true)]
async fn shutdown_retries_a_failed_write_of_the_rotation() {
    let (session, transport, store) = session(AuthorityConfig::default(), SPENT);
    transport.hold();
    settle().await;
    let shutdown = {
        let session = session.clone();
        tokio::spawn(async move { session.shutdown().await })
    };
    settle().await;
    // The answer lands after shutdown began; the first two writes of its tokens fail.
    store.faults().fail_next_writes(2);
    transport.release(1);
    shutdown.await.unwrap();
    assert_eq!(store.faults().writes(), 3, "the failed writes were not retried");
    assert_eq!(store.generation(), Some(Generation(2)), "the rotation was lost at shutdown");
    assert_eq!(transport.refreshes.load(SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn shutdown_gives_up_on_a_store_that_keeps_failing_after_the_request_timeout() {
    let (session, transport, store) = session(AuthorityConfig::default(), SPENT);
    transport.hold();
    settle().await;
    store.faults().fail_next_writes(usize::MAX);
    let shutdown = {
        let session = session.clone();
        tokio::spawn(async move { session.shutdown().await })
    };
    settle().await;
    let answered = tokio::time::Instant::now();
    transport.release(1);
    shutdown.await.unwrap();
    let waited = answered.elapsed();
    let timeout = support::config().session.request_timeout;
    assert!(waited <= timeout + Duration::from_millis(100), "shutdown retried the store for {waited:?}");
    assert!(store.faults().writes() > 4, "retried {} times", store.faults().writes());
    assert_eq!(store.generation(), Some(Generation(1)), "the store keeps its previous tokens");
}

#[tokio::test(start_paused = true)]
async fn logout_during_a_refresh_fails_waiters_revokes_and_clears() {
    let (session, transport, store) = session(AuthorityConfig::default(), SPENT);
    let mut state = session.watch_state();
    transport.hold();
    let caller = {
        let session = session.clone();
        tokio::spawn(async move { session.access_token().await })
    };
    settle().await;
    let logout = {
        let session = session.clone();
        tokio::spawn(async move { session.log_out().await })
    };
    settle().await;
    assert_eq!(caller.await.unwrap().unwrap_err(), Error::LoggedOut(LogoutCause::Requested));
    // The held refresh answer and the revocation come through.
    transport.release(2);
    logout.await.unwrap();
    settle().await;
    assert!(store.inner().peek().is_none(), "the store was cleared");
    assert_eq!(*state.borrow_and_update(), StateView::LoggedOut { cause: LogoutCause::Requested });
    // The revocation, and a second one for the tokens the late answer carried.
    assert_eq!(transport.revocations.load(SeqCst), 2);
    assert_eq!(session.access_token().await.unwrap_err(), Error::LoggedOut(LogoutCause::Requested));
}

/// A CLI exits right after `log_out`: it must not return before the
/// revocation reached the server and its answer came back, and it must not
/// hang on a server that never answers (the session's request timeout bounds it).
#[tokio::test(start_paused = true)]
async fn log_out_returns_when_the_session_says_its_revocation_ended_and_no_later_than_the_request_timeout() {
    let fresh = Some(Duration::from_secs(3600));
    let (answered, transport, store) = session(AuthorityConfig::default(), fresh);
    answered.access_token().await.unwrap();
    transport.hold();
    let logout = tokio::spawn(async move { answered.log_out().await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!logout.is_finished(), "returned while the revocation's answer was held");
    assert!(store.inner().peek().is_none(), "the store is cleared meanwhile");
    transport.release(1);
    logout.await.unwrap();
    assert_eq!(transport.revocations.load(SeqCst), 1);

    // Never answered: the logout ends at the request timeout.
    let (unanswered, transport, _store) = session(AuthorityConfig::default(), fresh);
    unanswered.access_token().await.unwrap();
    transport.hold();
    let asked = tokio::time::Instant::now();
    unanswered.log_out().await;
    let timeout = support::config().session.request_timeout;
    let took = asked.elapsed();
    assert!(took >= timeout && took < timeout + Duration::from_millis(100), "returned after {took:?}");
}

/// A store that stops answering (a keyring daemon that hangs) does not hang
/// `log_out`: the session tells it finished at its logout bound, and the
/// session stays logged out.
#[tokio::test(start_paused = true)]
async fn log_out_returns_at_the_sessions_bound_when_the_store_never_answers() {
    let (session, _transport, store) = session(AuthorityConfig::default(), Some(Duration::from_secs(3600)));
    session.access_token().await.unwrap();
    store.faults().hang_writes(true);
    let asked = tokio::time::Instant::now();
    let bound = support::config().session.logout_bound();
    tokio::time::timeout(bound * 2, session.log_out()).await.expect("log_out hung with the store");
    let took = asked.elapsed();
    assert!(took >= bound && took < bound + Duration::from_millis(100), "returned after {took:?}, bound {bound:?}");
    assert!(session.state().is_logged_out());
    assert!(store.inner().peek().is_some(), "the clear never landed: the store was hung");
}

/// A rotation whose write hangs is not built on: a second forced refresh
/// sends nothing while the first one's write is out, so the store's token
/// (what another process, or this one restarted, presents next) stays one
/// rotation behind, not two.
#[tokio::test(start_paused = true)]
async fn a_forced_refresh_waits_for_the_last_rotations_write() {
    let (session, transport, store) = session(AuthorityConfig::default(), Some(Duration::from_secs(3600)));
    session.access_token().await.unwrap();
    let stored = store.inner().peek().unwrap().unwrap().refresh_token.unwrap();
    store.faults().hang_writes(true);
    let bound = support::config().session.wait_bound();
    let first = tokio::time::timeout(bound * 2, session.refresh()).await.expect("the caller's bound holds");
    assert!(first.is_err(), "a token handed out before its write: {first:?}");
    assert_eq!(transport.refreshes.load(SeqCst), 1);
    let second = tokio::time::timeout(bound * 2, session.refresh()).await.expect("the caller's bound holds");
    assert!(second.is_err(), "{second:?}");
    assert_eq!(transport.refreshes.load(SeqCst), 1, "a rotation presented while its write was out");
    let still = store.inner().peek().unwrap().unwrap().refresh_token.unwrap();
    assert_eq!(still.expose_secret(), stored.expose_secret());
}

#[tokio::test(start_paused = true)]
async fn a_failed_store_write_is_retried_before_the_token_is_handed_out() {
    let (session, transport, store) = session(AuthorityConfig::default(), SPENT);
    store.faults().fail_next_writes(2);
    let token = session.access_token().await.unwrap();
    assert_eq!(token.generation(), Generation(2));
    assert_eq!(store.faults().writes(), 3);
    assert_eq!(store.generation(), Some(Generation(2)));
    assert_eq!(transport.refreshes.load(SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_store_that_keeps_failing_fails_callers_but_keeps_the_rotated_token() {
    let (session, transport, store) = session(AuthorityConfig::default(), SPENT);
    store.faults().fail_next_writes(4);
    assert_eq!(session.access_token().await.unwrap_err(), Error::StoreUnavailable);
    // The next caller revives the store; the rotated token (generation 2) is what gets written.
    let token = session.access_token().await.unwrap();
    assert_eq!(token.generation(), Generation(2));
    assert_eq!(store.generation(), Some(Generation(2)));
    assert_eq!(transport.refreshes.load(SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_401_for_the_current_token_refreshes_and_for_an_old_one_does_not() {
    let (session, transport, _) = session(AuthorityConfig::default(), Some(Duration::from_secs(300)));
    let first = session.access_token().await.unwrap();
    let second = session.retry_token(&first).await.unwrap();
    assert_eq!(second.generation(), Generation(2));
    assert_eq!(transport.refreshes.load(SeqCst), 1);
    // A late 401 for the first token: retry with the current one, no refresh.
    let again = session.retry_token(&first).await.unwrap();
    assert_eq!(again.generation(), Generation(2));
    assert_eq!(transport.refreshes.load(SeqCst), 1);
    assert_eq!(session.stats().tokens_refused, 2, "each 401 is counted, also one for an old token");
}

#[tokio::test(start_paused = true)]
async fn transient_failures_back_off_and_recover() {
    let (session, transport, _) = session(AuthorityConfig::default(), SPENT);
    transport.fail_next([TransportFailure::NotSent, TransportFailure::Interrupted]);
    let token = session.access_token().await.unwrap();
    assert_eq!(token.generation(), Generation(2));
}

#[tokio::test(start_paused = true)]
async fn a_dead_refresh_token_logs_out_and_the_state_says_why() {
    let (session, transport, store) = session(AuthorityConfig::default(), SPENT);
    let stored = store.inner().peek().unwrap().unwrap();
    let now = transport.now();
    transport
        .state
        .authority()
        .revoke(now, support::CLIENT, stored.refresh_token.as_ref().unwrap().expose_secret())
        .unwrap();
    let error = session.access_token().await.unwrap_err();
    assert!(matches!(error, Error::LoggedOut(LogoutCause::RefreshTokenRejected { .. })), "{error:?}");
    assert!(session.state().is_logged_out(), "the state shows what the caller was told");
    settle().await;
    assert!(store.inner().peek().is_none());
}

#[tokio::test(start_paused = true)]
async fn the_session_refreshes_ahead_of_expiry_without_callers() {
    let (session, transport, store) = session(AuthorityConfig::default(), Some(Duration::from_secs(300)));
    tokio::time::sleep(Duration::from_secs(3600)).await;
    // 300 s tokens refreshed 60 s early: one refresh every 240 s.
    let refreshes = transport.refreshes.load(SeqCst);
    assert!((14..=16).contains(&refreshes), "{refreshes}");
    assert_eq!(store.generation(), Some(Generation(refreshes as u64 + 1)));
    drop(session);
}

/// A wall clock that follows tokio's (paused) clock, plus a jump set by the test.
fn jumping_wall_clock() -> (freshen::WallClock, std::sync::Arc<std::sync::atomic::AtomicI64>) {
    let jump = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(0));
    let (origin, base) = (tokio::time::Instant::now(), freshen::system_clock());
    let seen = std::sync::Arc::clone(&jump);
    let clock = freshen::WallClock::new(move || {
        let now = base.saturating_add(origin.elapsed());
        let by = seen.load(SeqCst);
        let step = Duration::from_secs(by.unsigned_abs());
        if by >= 0 {
            now.saturating_add(step)
        } else {
            freshen::core::time::UnixTime::from_since_epoch(now.since_epoch().saturating_sub(step))
        }
    });
    (clock, jump)
}

/// A session whose stored token has five minutes left, on a wall clock the test can step.
fn session_on_a_steppable_clock() -> (
    freshen::Session<support::AuthorityTransport, support::FaultyMemoryStore>,
    support::AuthorityTransport,
    std::sync::Arc<std::sync::atomic::AtomicI64>,
) {
    let transport = support::AuthorityTransport::new(AuthorityConfig::default());
    let store = support::FaultyMemoryStore::holding(&transport.login(Some(Duration::from_secs(300))));
    let (wall_clock, jump) = jumping_wall_clock();
    let environment = support::environment().with_wall_clock(wall_clock);
    (freshen::Session::start_in(support::config(), transport.clone(), store, environment).unwrap(), transport, jump)
}

#[tokio::test(start_paused = true)]
async fn after_a_suspend_the_fast_path_does_not_hand_out_a_token_that_died_meanwhile() {
    let (session, transport, jump) = session_on_a_steppable_clock();
    let before = session.access_token().await.unwrap();
    assert_eq!(before.generation(), Generation(1));
    // The laptop sleeps an hour: the monotonic clock stood still, the wall clock did not.
    jump.store(3600, SeqCst);
    let after = session.access_token().await.unwrap();
    assert!(after.generation() > before.generation(), "handed out a token the suspend had killed");
    assert_eq!(transport.refreshes.load(SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_wall_clock_stepped_back_changes_nothing() {
    let (session, transport, jump) = session_on_a_steppable_clock();
    assert_eq!(session.access_token().await.unwrap().generation(), Generation(1));
    jump.store(-3600, SeqCst);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(session.access_token().await.unwrap().generation(), Generation(1));
    assert_eq!(transport.refreshes.load(SeqCst), 0);
}

/// A process that restarts after the wall clock was set back reads the
/// blob its predecessor wrote on this boot by the boot clock: a token 20 s
/// from expiry (inside the 60 s margin) is refreshed first, though the wall
/// clock gives it 620 s. Without a boot clock (as on platforms that have
/// none) only the wall clock can read it, and the token is handed out.
#[tokio::test(start_paused = true)]
async fn a_restart_after_the_wall_clock_was_set_back_reads_this_boots_blob_by_the_boot_clock() {
    use freshen::core::time::{BootId, BootTime};
    let origin = tokio::time::Instant::now();
    let boot_clock = freshen::BootClock::new(move || {
        Some(BootTime::new(BootId::from_bits(7), Duration::from_secs(3600) + origin.elapsed()))
    });
    let restarted = |boot_clock: freshen::BootClock| async move {
        let transport = support::AuthorityTransport::new(AuthorityConfig::default());
        let store = support::FaultyMemoryStore::holding(&transport.login(Some(Duration::from_secs(3600))));
        let (wall_clock, jump) = jumping_wall_clock();
        let environment =
            || support::environment().with_wall_clock(wall_clock.clone()).with_boot_clock(boot_clock.clone());
        let first =
            freshen::Session::start_in(support::config(), transport.clone(), store.clone(), environment()).unwrap();
        // A forced refresh: the driver writes a 300 s token, with its expiry on both clocks.
        assert_eq!(first.refresh().await.unwrap().generation(), Generation(2));
        first.shutdown().await;
        tokio::time::sleep(Duration::from_secs(280)).await;
        jump.store(-600, SeqCst);
        let second = freshen::Session::start_in(support::config(), transport.clone(), store, environment()).unwrap();
        let token = second.access_token().await.unwrap();
        (token.generation(), transport.refreshes.load(SeqCst))
    };
    assert_eq!(restarted(boot_clock).await, (Generation(3), 2), "handed out a token inside its margin");
    assert_eq!(restarted(freshen::BootClock::new(|| None)).await, (Generation(2), 1));
}

/// What an app keeps in a struct field (or an axum `State`): one session type,
/// whatever transport and store are behind it.
#[tokio::test(start_paused = true)]
async fn sessions_over_different_stores_share_one_type() {
    struct App {
        sessions: Vec<freshen::AnySession>,
    }
    let transport = support::AuthorityTransport::new(AuthorityConfig::default());
    let in_memory = freshen::store::MemoryStore::holding(&transport.login(Some(Duration::from_secs(3600))));
    let flaky = support::FaultyMemoryStore::holding(&transport.login(Some(Duration::ZERO)));
    let app = App {
        sessions: vec![
            freshen::AnySession::start_any(support::config(), transport.clone(), in_memory).unwrap(),
            freshen::AnySession::start_any(support::config(), transport.clone(), flaky.clone()).unwrap(),
        ],
    };
    assert_eq!(app.sessions[0].access_token().await.unwrap().generation(), Generation(1));
    // The spent one refreshes through the boxed transport and writes through the boxed store.
    assert_eq!(app.sessions[1].access_token().await.unwrap().generation(), Generation(2));
    assert_eq!(flaky.generation(), Some(Generation(2)));
}

/// The counts an app reads from the handle: refreshes, their failures, waits,
/// failed callers, refused tokens and logouts.
#[tokio::test(start_paused = true)]
async fn the_handle_counts_refreshes_failures_waits_and_logouts() {
    let (session, transport, _) = session(AuthorityConfig::default(), Some(Duration::ZERO));
    let token = session.access_token().await.unwrap();
    let stats = session.stats();
    assert_eq!((stats.refresh_attempts, stats.refreshes_succeeded, stats.refresh_attempts_failed), (1, 1, 0));
    assert_eq!((stats.waits, stats.callers_failed), (1, 0));
    session.access_token().await.unwrap();
    assert_eq!(session.stats().waits, 1, "a published token is no wait");

    let attempts = support::config().session.backoff.attempts;
    transport.fail_next(vec![TransportFailure::NotSent; attempts as usize]);
    assert_eq!(session.stats().tokens_refused, 0);
    session.invalidate(&token);
    assert_eq!(session.stats().tokens_refused, 1);
    assert!(session.access_token().await.is_err());
    let stats = session.stats();
    assert_eq!(stats.refresh_attempts, 1 + u64::from(attempts));
    assert_eq!(stats.refresh_attempts_failed, u64::from(attempts));
    assert_eq!((stats.waits, stats.callers_failed, stats.logouts), (2, 1, 0));
    session.log_out().await;
    assert_eq!(session.stats().logouts, 1);
}

/// A session whose stored token has five minutes left, with at most
/// `max_waiters` callers waiting in the machine.
fn session_with_waiters(
    max_waiters: usize,
) -> (freshen::Session<support::AuthorityTransport, support::FaultyMemoryStore>, support::AuthorityTransport) {
    let transport = support::AuthorityTransport::new(AuthorityConfig::default());
    let store = support::FaultyMemoryStore::holding(&transport.login(Some(Duration::from_secs(300))));
    let mut config = support::config();
    config.session.max_waiters = max_waiters;
    (support::start(config, transport.clone(), store), transport)
}

#[tokio::test(start_paused = true)]
async fn try_access_token_lends_a_valid_token_at_once_and_never_waits() {
    let (session, transport) = session_with_waiters(10);
    // The driver has not run yet: the store is still being read.
    assert!(session.try_access_token().is_none(), "a token before the store was read");
    assert_eq!(session.state(), StateView::Loading);
    settle().await;
    for _ in 0..1000 {
        assert_eq!(session.try_with_token(|token| token.generation()), Some(Generation(1)));
    }
    let token = session.try_access_token().unwrap();
    assert_eq!(token.generation(), Generation(1));
    assert_eq!(session.waiting(), 0);
    assert_eq!(session.stats().waits, 0, "a synchronous try counted as a wait");
    assert_eq!(transport.refreshes.load(SeqCst), 0);
}

/// A spent token that nothing renews (invalidated after a resource's 401,
/// with no caller since): a synchronous try cannot wait, but starts the one
/// refresh a waiting caller would have started; trying again and again
/// while it runs adds nothing to the machine (a real caller still finds
/// room among two waiters).
#[tokio::test(start_paused = true)]
async fn try_access_token_on_a_spent_token_starts_one_refresh_and_adds_no_waiters() {
    let (session, transport) = session_with_waiters(2);
    settle().await;
    let token = session.try_access_token().unwrap();
    session.invalidate(&token);
    settle().await;
    assert_eq!(transport.refreshes.load(SeqCst), 0, "an invalidated token is renewed for the next caller, not before");
    transport.hold();
    for _ in 0..1000 {
        assert!(session.try_access_token().is_none(), "handed out the invalidated token");
    }
    settle().await;
    assert_eq!(transport.refreshes.load(SeqCst), 1, "the tries started one refresh");
    assert_eq!(session.state(), StateView::Refreshing { generation: Generation(1) });
    let caller = {
        let session = session.clone();
        tokio::spawn(async move { session.access_token().await })
    };
    settle().await;
    transport.release(1);
    assert_eq!(caller.await.unwrap().unwrap().generation(), Generation(2), "the tries left no room to wait");
    assert_eq!(session.try_with_token(|token| token.generation()), Some(Generation(2)));
    assert_eq!(transport.refreshes.load(SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn try_access_token_without_a_session_starts_nothing() {
    let transport = support::AuthorityTransport::new(AuthorityConfig::default());
    let session = support::start(support::config(), transport.clone(), support::FaultyMemoryStore::default());
    settle().await;
    assert_eq!(session.state(), StateView::NoSession);
    for _ in 0..100 {
        assert!(session.try_access_token().is_none());
    }
    settle().await;
    assert_eq!(session.state(), StateView::NoSession);
    assert_eq!(transport.refreshes.load(SeqCst), 0);
}

/// A wall clock stepped forward while a refresh is out reads as a suspend:
/// the session's clock jumps past the attempt's deadline, so the machine
/// gives the attempt up, though the request is still out and the server has
/// taken it (tier-2 seed 1031887: another process then presented the same
/// refresh token). Until that request ends, the session sends no other
/// request and keeps the store's lock, so nobody presents that token again.
#[tokio::test(start_paused = true)]
async fn a_wall_clock_stepped_forward_mid_refresh_sends_nothing_more_and_keeps_the_lock_until_the_request_ends() {
    let transport = support::AuthorityTransport::new(AuthorityConfig::default());
    let store = support::FaultyMemoryStore::holding(&transport.login(Some(Duration::from_secs(300))));
    let mut config = support::config();
    config.session.shared_store = true;
    let (wall_clock, jump) = jumping_wall_clock();
    let environment = support::environment().with_wall_clock(wall_clock);
    let session = freshen::Session::start_in(config, transport.clone(), store.clone(), environment).unwrap();
    settle().await;
    transport.hold();
    let forced = {
        let session = session.clone();
        tokio::spawn(async move { session.refresh().await })
    };
    settle().await;
    assert_eq!(transport.refreshes.load(SeqCst), 1, "the forced refresh is out, its answer held");
    jump.store(113, SeqCst);
    // Another forced refresh reads the session's clock, which finds the step.
    let caller = {
        let session = session.clone();
        tokio::spawn(async move { session.refresh().await })
    };
    // Within the request timeout (10 s): the machine has given up every attempt.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(transport.refreshes.load(SeqCst), 1, "a request went out beside the one still out");
    assert!(forced.is_finished(), "the machine did not give the cycle up");
    let elsewhere = tokio::time::timeout(Duration::from_millis(500), store.lock()).await;
    assert!(elsewhere.is_err(), "the store's lock was let go with a request out");
    // The answer comes: the late rotation is adopted, and the lock goes.
    transport.release(1);
    settle().await;
    assert!(matches!(session.state(), StateView::Valid { generation: Generation(2), .. }), "{:?}", session.state());
    // The second forced refresh goes out now (its answer held): once it is
    // over too, nothing is out and the lock is free.
    let second = caller.await.unwrap();
    assert!(!matches!(second, Err(Error::LoggedOut(_))), "{second:?}");
    let elsewhere = tokio::time::timeout(Duration::from_secs(1), store.lock()).await;
    assert!(matches!(elsewhere, Ok(Ok(_))), "the lock was kept after the requests ended");
    assert_eq!(transport.refreshes.load(SeqCst), 2);
}
