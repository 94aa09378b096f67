//! Every check proven live: each test feeds a deliberately wrong trace (or
//! runs a planted authority) and asserts the monitor names the invariant.

use super::*;
use crate::authority::Authority;
use freshen_core::oauth::{OAuthError, TokenResponse};
use freshen_core::session::{AccessGrant, FailReason, Renewal};
use freshen_core::stored::StoredSession;
use freshen_core::token::{AccessToken, RefreshToken, TokenType};
use secrecy::ExposeSecret as _;

fn t(ms: u64) -> MonoTime {
    MonoTime::from_millis(ms)
}

/// Attempt `id` of a refresh presenting `r1`.
fn send_r1(id: u64) -> Command {
    Command::Io(Io::SendRefresh { id: RefreshId(id), refresh_token: RefreshToken::new("r1"), attempt: 1, dpop: None })
}

fn monitor() -> ClientMonitor {
    ClientMonitor::new(&SessionConfig::default())
}

fn send(m: &mut ClientMonitor, at: u64, id: u64, token: &str, attempt: u32) {
    let command = Command::Io(Io::SendRefresh {
        id: RefreshId(id),
        refresh_token: RefreshToken::new(token),
        attempt,
        dpop: None,
    });
    m.command(t(at), &command);
}

fn answer(m: &mut ClientMonitor, at: u64, id: u64, outcome: Classified) {
    m.event(t(at), &Event::RefreshCompleted { id: RefreshId(id), outcome, dpop_nonce: None });
}

fn rotated(refresh: &str) -> Classified {
    Classified::Success(TokenResponse::bearer(
        AccessToken::new("a"),
        Some(Duration::from_secs(300)),
        Some(RefreshToken::new(refresh)),
    ))
}

fn grant(generation: u64, usable_until_ms: Option<u64>) -> AccessGrant {
    AccessGrant {
        generation: Generation(generation),
        access_token: AccessToken::new("a"),
        token_type: TokenType::Bearer,
        usable_until: usable_until_ms.map(t),
        dpop_key: None,
    }
}

fn stored(generation: u64, refresh: &str) -> StoredSession {
    let mut stored = StoredSession::pair(AccessToken::new("a"), RefreshToken::new(refresh));
    stored.generation = Generation(generation);
    stored
}

fn load(m: &mut ClientMonitor, generation: u64) {
    m.command(t(0), &Command::Io(Io::LoadStore { op: StoreOpId(1) }));
    let event = Event::StoreLoaded {
        op: StoreOpId(1),
        stored: Some(stored(generation, "r1")),
        unix_now: freshen_core::time::UnixTime::EPOCH,
        boot_now: None,
    };
    m.event(t(0), &event);
    m.command(
        t(0),
        &Command::StateChanged(StateView::Valid { generation: Generation(generation), renewal: Renewal::Ready }),
    );
}

fn found(violations: &[Violation]) -> Vec<Invariant> {
    violations.iter().map(|v| v.invariant).collect()
}

#[test]
fn c1_catches_two_refreshes_in_flight() {
    let mut m = monitor();
    send(&mut m, 0, 1, "r1", 1);
    send(&mut m, 100, 2, "r1", 1);
    assert_eq!(found(m.violations()), vec![Invariant::C1]);
}

#[test]
fn c1_allows_a_retry_after_the_deadline() {
    let mut m = monitor();
    send(&mut m, 0, 1, "r1", 1);
    send(&mut m, 11_000, 2, "r1", 2);
    assert!(m.violations().is_empty(), "{:?}", m.violations());
}

#[test]
fn c6_holds_the_wait_read_from_a_429_to_the_one_the_server_asked() {
    let limited = |seconds| {
        Classified::Transient(Transient {
            cause: freshen_core::oauth::TransientCause::RateLimited,
            retry_after: Some(Duration::from_secs(seconds)),
        })
    };
    let mut m = monitor();
    m.expect_retry_after(Duration::from_secs(2));
    send(&mut m, 0, 1, "r1", 1);
    answer(&mut m, 50, 1, limited(2));
    assert!(m.violations().is_empty(), "{:?}", m.violations());
    // A date read against the client's clock, an hour off the server's.
    send(&mut m, 2_100, 2, "r1", 2);
    answer(&mut m, 2_150, 2, limited(3_602));
    assert_eq!(found(m.violations()), vec![Invariant::C6]);
}

#[test]
fn c2_catches_a_superseded_token_sent_again() {
    let mut m = monitor();
    send(&mut m, 0, 1, "r1", 1);
    answer(&mut m, 50, 1, rotated("r2"));
    send(&mut m, 100, 2, "r1", 1);
    assert_eq!(found(m.violations()), vec![Invariant::C2]);
}

#[test]
fn c3_catches_a_grant_before_the_store_held_it() {
    let mut m = monitor();
    m.event(t(0), &Event::TokenWanted { caller: CallerId(1) });
    m.command(t(0), &Command::Io(Io::Persist { op: StoreOpId(1), session: stored(1, "r1") }));
    m.command(t(0), &Command::StateChanged(StateView::Valid { generation: Generation(1), renewal: Renewal::Ready }));
    m.command(t(0), &Command::Grant { callers: [CallerId(1)].into(), grant: grant(1, None) });
    assert_eq!(found(m.violations()), vec![Invariant::C3]);
}

#[test]
fn c3_catches_a_grant_of_tokens_stored_only_under_their_number() {
    // The store holds g1 (another login's tokens); this session then hands
    // out its own g1, whose tokens it never wrote: the same number says
    // nothing of them.
    let mut m = monitor();
    load(&mut m, 1);
    m.event(t(10), &Event::TokenWanted { caller: CallerId(1) });
    let mut unstored = grant(1, None);
    unstored.access_token = AccessToken::new("a-unstored");
    m.command(t(10), &Command::Grant { callers: [CallerId(1)].into(), grant: unstored });
    assert_eq!(found(m.violations()), vec![Invariant::C3]);
    // The tokens the store holds pass.
    let mut m = monitor();
    load(&mut m, 1);
    m.event(t(10), &Event::TokenWanted { caller: CallerId(1) });
    m.command(t(10), &Command::Grant { callers: [CallerId(1)].into(), grant: grant(1, None) });
    assert_eq!(found(m.violations()), vec![]);
}

/// U6 at a server that does not rotate: a token refused pending the user's
/// interaction is not presented again, unless the store shows the server
/// has since refreshed it with success (another process's new access token
/// beside it). The other process may number that session as this one
/// numbered its own (tier-1 seed 11328399): the number proves nothing.
#[test]
fn u6_lifts_a_refusal_only_once_the_store_shows_the_token_refreshed_since() {
    let presents_again_after_reading = |access: &str| {
        let mut m = monitor();
        load(&mut m, 1);
        m.command(t(5), &Command::Publish(Some(grant(1, None))));
        send(&mut m, 10, 1, "r1", 1);
        let refusal = OAuthError { status: 400, code: "interaction_required".into(), description: None };
        answer(&mut m, 20, 1, Classified::InteractionRequired(refusal));
        m.command(t(30), &Command::Io(Io::LockStore { op: StoreOpId(2) }));
        let mut read = stored(1, "r1");
        read.access_token = Some(AccessToken::new(access));
        let unix_now = freshen_core::time::UnixTime::EPOCH;
        m.event(t(30), &Event::StoreLocked { op: StoreOpId(2), stored: Some(read), unix_now, boot_now: None });
        send(&mut m, 40, 2, "r1", 1);
        found(m.violations())
    };
    // The pair the session held when refused: the token still awaits the user.
    assert_eq!(presents_again_after_reading("a"), vec![Invariant::U6]);
    // A pair another process got by refreshing the token since.
    assert_eq!(presents_again_after_reading("a-theirs"), vec![]);
}

#[test]
fn u1_catches_an_answer_the_state_does_not_show_yet() {
    let mut m = monitor();
    load(&mut m, 1);
    m.event(t(10), &Event::TokenWanted { caller: CallerId(1) });
    m.event(t(10), &Event::LogoutRequested);
    m.command(
        t(10),
        &Command::Fail { callers: [CallerId(1)].into(), reason: FailReason::LoggedOut(LogoutCause::Requested) },
    );
    m.command(t(10), &Command::StateChanged(StateView::LoggedOut { cause: LogoutCause::Requested }));
    assert_eq!(found(m.violations()), vec![Invariant::U1]);

    // Granted while the state still says the token is spent.
    let mut m = monitor();
    load(&mut m, 1);
    m.command(t(20), &Command::StateChanged(StateView::Expired { generation: Generation(1), renewal: Renewal::Ready }));
    m.event(t(20), &Event::TokenWanted { caller: CallerId(2) });
    m.command(t(20), &Command::Grant { callers: [CallerId(2)].into(), grant: grant(1, None) });
    assert_eq!(found(m.violations()), vec![Invariant::U1]);
}

fn unavailable() -> FailReason {
    FailReason::RefreshUnavailable(freshen_core::session::AttemptFailure::Transport(
        freshen_core::session::TransportFailure::Timeout,
    ))
}

#[test]
fn u3_catches_a_failure_repeated_without_a_new_cycle() {
    let mut m = monitor();
    load(&mut m, 1);
    m.command(t(0), &Command::StateChanged(StateView::Refreshing { generation: Generation(1) }));
    m.event(t(0), &Event::TokenWanted { caller: CallerId(1) });
    send(&mut m, 0, 1, "r1", 1);
    m.command(
        t(10_000),
        &Command::StateChanged(StateView::Expired { generation: Generation(1), renewal: Renewal::Ready }),
    );
    m.command(t(10_000), &Command::Fail { callers: [CallerId(1)].into(), reason: unavailable() });
    assert!(m.violations().is_empty(), "its own cycle failed it: {:?}", m.violations());
    // A caller after the failed cycle is told the old failure without a new attempt.
    m.event(t(11_000), &Event::TokenWanted { caller: CallerId(2) });
    m.command(t(11_000), &Command::Fail { callers: [CallerId(2)].into(), reason: unavailable() });
    assert_eq!(found(m.violations()), vec![Invariant::U3]);
}

#[test]
fn u3_accepts_a_failure_the_server_asked_to_hold() {
    let mut m = monitor();
    load(&mut m, 1);
    m.event(t(0), &Event::TokenWanted { caller: CallerId(1) });
    send(&mut m, 0, 1, "r1", 1);
    let limited = Classified::Transient(Transient {
        cause: freshen_core::oauth::TransientCause::RateLimited,
        retry_after: Some(Duration::from_secs(120)),
    });
    answer(&mut m, 50, 1, limited);
    m.command(t(50), &Command::StateChanged(StateView::Expired { generation: Generation(1), renewal: Renewal::Ready }));
    m.command(t(50), &Command::Fail { callers: [CallerId(1)].into(), reason: unavailable() });
    m.event(t(60_000), &Event::TokenWanted { caller: CallerId(2) });
    m.command(t(60_000), &Command::Fail { callers: [CallerId(2)].into(), reason: unavailable() });
    assert!(m.violations().is_empty(), "{:?}", m.violations());
    // Once the server's wait is over, a new caller needs a new cycle.
    m.event(t(121_000), &Event::TokenWanted { caller: CallerId(3) });
    m.command(t(121_000), &Command::Fail { callers: [CallerId(3)].into(), reason: unavailable() });
    assert_eq!(found(m.violations()), vec![Invariant::U3]);
}

#[test]
fn u1_accepts_the_state_first() {
    let mut m = monitor();
    load(&mut m, 1);
    m.event(t(10), &Event::TokenWanted { caller: CallerId(1) });
    m.command(t(10), &Command::Grant { callers: [CallerId(1)].into(), grant: grant(1, None) });
    m.event(t(20), &Event::TokenWanted { caller: CallerId(2) });
    m.event(t(20), &Event::LogoutRequested);
    m.command(t(20), &Command::StateChanged(StateView::LoggedOut { cause: LogoutCause::Requested }));
    m.command(
        t(20),
        &Command::Fail { callers: [CallerId(2)].into(), reason: FailReason::LoggedOut(LogoutCause::Requested) },
    );
    assert!(m.violations().is_empty(), "{:?}", m.violations());
}

#[test]
fn c3_catches_a_superseded_token_persisted() {
    let mut m = monitor();
    send(&mut m, 0, 1, "r1", 1);
    answer(&mut m, 50, 1, rotated("r2"));
    m.command(t(60), &Command::Io(Io::Persist { op: StoreOpId(1), session: stored(2, "r1") }));
    assert_eq!(found(m.violations()), vec![Invariant::C3]);
}

#[test]
fn c4_catches_activity_after_logout() {
    let mut m = monitor();
    load(&mut m, 1);
    m.command(t(0), &Command::StateChanged(StateView::LoggedOut { cause: LogoutCause::Requested }));
    m.command(t(0), &Command::Io(Io::ClearStore { op: StoreOpId(2) }));
    send(&mut m, 10, 1, "r1", 1);
    m.command(t(10), &Command::Publish(Some(grant(1, None))));
    assert_eq!(found(m.violations()), vec![Invariant::C4, Invariant::C4]);
}

#[test]
fn c4_catches_a_logout_that_keeps_the_store() {
    let mut m = monitor();
    load(&mut m, 1);
    m.command(t(0), &Command::StateChanged(StateView::LoggedOut { cause: LogoutCause::Requested }));
    m.step_end(t(0), None);
    assert_eq!(found(m.violations()), vec![Invariant::C4]);
}

#[test]
fn c4_catches_waiters_left_after_logout() {
    let mut m = monitor();
    m.event(t(0), &Event::TokenWanted { caller: CallerId(1) });
    m.command(t(0), &Command::StateChanged(StateView::LoggedOut { cause: LogoutCause::NoSession }));
    m.step_end(t(0), None);
    assert_eq!(found(m.violations()), vec![Invariant::C4]);
}

#[test]
fn c5_catches_a_waiter_held_too_long_and_a_double_answer() {
    let mut m = monitor();
    m.event(t(0), &Event::TokenWanted { caller: CallerId(1) });
    let late = MonoTime::ZERO.saturating_add(SessionConfig::default().wait_bound() + Duration::from_millis(1));
    m.step_end(late, None);
    m.command(late, &Command::Fail { callers: [CallerId(1)].into(), reason: FailReason::TimedOut });
    assert_eq!(found(m.violations()), vec![Invariant::C5, Invariant::C5]);
}

#[test]
fn c5_catches_a_logout_not_told_finished_by_its_bound() {
    let bound = SessionConfig::default().logout_bound();
    let at_bound = MonoTime::ZERO.saturating_add(bound);
    // Told at its bound, with the store never answering: fine.
    let mut m = monitor();
    m.event(t(0), &Event::LogoutRequested);
    m.step_end(at_bound, None);
    m.command(at_bound, &Command::LogoutFinished { requests: 1 });
    assert_eq!(found(m.violations()), vec![]);
    // Not told by then: C5, once.
    let mut m = monitor();
    m.event(t(0), &Event::LogoutRequested);
    m.step_end(at_bound.saturating_add(Duration::from_millis(1)), None);
    m.step_end(at_bound.saturating_add(Duration::from_secs(1)), None);
    assert_eq!(found(m.violations()), vec![Invariant::C5]);
}

#[test]
fn c5_catches_a_caller_never_answered() {
    let mut m = monitor();
    m.event(t(0), &Event::TokenWanted { caller: CallerId(1) });
    m.finish(t(1), true);
    assert_eq!(found(m.violations()), vec![Invariant::C5]);
}

#[test]
fn c6_catches_a_retry_inside_the_backoff() {
    let mut m = monitor();
    send(&mut m, 0, 1, "r1", 1);
    let failure = Classified::Transient(freshen_core::oauth::Transient {
        cause: freshen_core::oauth::TransientCause::ServerError(503),
        retry_after: None,
    });
    answer(&mut m, 100, 1, failure);
    // backoff floor after attempt 1 is 250 ms by default
    send(&mut m, 200, 2, "r1", 2);
    assert_eq!(found(m.violations()), vec![Invariant::C6]);
}

#[test]
fn c6_catches_too_many_attempts() {
    let mut m = monitor();
    let attempts = SessionConfig::default().backoff.attempts;
    send(&mut m, 0, 1, "r1", attempts + 2);
    assert_eq!(found(m.violations()), vec![Invariant::C6]);
}

#[test]
fn c6_catches_a_dead_token_retried_and_a_rejection_never_acted_on() {
    let mut m = monitor();
    send(&mut m, 0, 1, "r1", 1);
    let terminal = Classified::Terminal(OAuthError { status: 400, code: "invalid_grant".into(), description: None });
    answer(&mut m, 50, 1, terminal);
    send(&mut m, 20_000, 2, "r1", 1);
    m.finish(t(30_000), true);
    assert_eq!(found(m.violations()), vec![Invariant::C6, Invariant::C6]);
}

#[test]
fn c7_catches_a_grant_past_its_usable_time() {
    let mut m = monitor();
    load(&mut m, 1);
    m.event(t(1000), &Event::TokenWanted { caller: CallerId(1) });
    m.command(t(1000), &Command::Grant { callers: [CallerId(1)].into(), grant: grant(1, Some(1000)) });
    assert_eq!(found(m.violations()), vec![Invariant::C7]);
}

#[test]
fn c8_catches_traces_that_differ() {
    let one = vec!["a".to_owned(), "b".to_owned()];
    let two = vec!["a".to_owned(), "c".to_owned()];
    assert_eq!(same_trace(&one, &two).unwrap_err().invariant, Invariant::C8);
    assert_eq!(same_trace(&one, &one[..1]).unwrap_err().invariant, Invariant::C8);
    assert!(same_trace(&one, &one).is_ok());
}

#[test]
fn c9_catches_a_timer_that_would_spin() {
    let mut m = monitor();
    m.step_end(t(500), Some(t(500)));
    assert_eq!(found(m.violations()), vec![Invariant::C9]);
}

/// Runs `ops` against a (possibly planted) authority and returns what the monitor found.
fn audit(config: AuthorityConfig, plant: Option<AuthorityPlant>, ops: impl FnOnce(&mut Authority)) -> Vec<Invariant> {
    let mut authority = Authority::new(config.clone(), 1).with_audit().with_plant(plant);
    ops(&mut authority);
    let mut monitor = AuthorityMonitor::new(&config);
    for entry in authority.take_audit() {
        monitor.observe(&entry);
    }
    found(monitor.violations())
}

fn reuse_outside_grace(a: &mut Authority) {
    let login = a.login(t(0), "app", None);
    let token = login.refresh_token.expose_secret().to_owned();
    let _ = a.refresh(t(1000), "app", None, &token, None);
    let _ = a.refresh(t(60_000), "app", None, &token, None);
}

#[test]
fn the_correct_authority_passes_every_check() {
    let config = AuthorityConfig { grace: Duration::from_secs(10), ..AuthorityConfig::default() };
    assert!(audit(config, None, reuse_outside_grace).is_empty());
}

#[test]
fn a1_catches_reuse_accepted_outside_grace() {
    let config = AuthorityConfig { grace: Duration::from_secs(10), ..AuthorityConfig::default() };
    assert_eq!(audit(config, Some(AuthorityPlant::AcceptsReuse), reuse_outside_grace), vec![Invariant::A1]);
}

/// Records `ops` on a correct authority, then forges the last answer into a
/// refusal that changed nothing, and returns what the monitor found.
fn with_last_answer_forged_as_refused(config: AuthorityConfig, ops: impl FnOnce(&mut Authority)) -> Vec<Invariant> {
    let mut authority = Authority::new(config.clone(), 1).with_audit();
    ops(&mut authority);
    let mut log = authority.take_audit();
    if let Some(last) = log.last_mut() {
        last.outcome = AuditOutcome::Refused(Refusal::AlreadyUsed);
        last.state_changed = false;
    }
    let mut monitor = AuthorityMonitor::new(&config);
    log.iter().for_each(|e| monitor.observe(e));
    found(monitor.violations())
}

#[test]
fn a1_catches_reuse_that_does_not_revoke() {
    // Detection is on, yet the reuse outside grace is refused without revoking.
    let config = AuthorityConfig { grace: Duration::ZERO, ..AuthorityConfig::default() };
    assert_eq!(with_last_answer_forged_as_refused(config, reuse_outside_grace), vec![Invariant::A1]);
}

#[test]
fn a2_catches_a_replay_refused_inside_grace() {
    let config = AuthorityConfig { grace: Duration::from_secs(30), ..AuthorityConfig::default() };
    let found = with_last_answer_forged_as_refused(config, |a| {
        let login = a.login(t(0), "app", None);
        let token = login.refresh_token.expose_secret().to_owned();
        a.refresh(t(1000), "app", None, &token, None).unwrap();
        a.refresh(t(2000), "app", None, &token, None).unwrap();
    });
    assert_eq!(found, vec![Invariant::A2]);
}

#[test]
fn a3_catches_access_tokens_surviving_a_revoked_family() {
    let config = AuthorityConfig { grace: Duration::ZERO, ..AuthorityConfig::default() };
    let found = audit(config, Some(AuthorityPlant::DetectionSparesAccess), |a| {
        let login = a.login(t(0), "app", None);
        let token = login.refresh_token.expose_secret().to_owned();
        let next = a.refresh(t(1000), "app", None, &token, None).unwrap();
        let _ = a.refresh(t(2000), "app", None, &token, None);
        let _ = a.validate(t(3000), next.access_token.expose_secret());
    });
    assert_eq!(found, vec![Invariant::A3]);
}

#[test]
fn a4_catches_two_redemptions_without_grace() {
    let config = AuthorityConfig { grace: Duration::ZERO, ..AuthorityConfig::default() };
    let found = audit(config, Some(AuthorityPlant::AcceptsReuse), |a| {
        let login = a.login(t(0), "app", None);
        let token = login.refresh_token.expose_secret().to_owned();
        let _ = a.refresh(t(1000), "app", None, &token, None);
        let _ = a.refresh(t(1000), "app", None, &token, None);
    });
    assert!(found.contains(&Invariant::A4), "{found:?}");
}

#[test]
fn a5_catches_a_token_accepted_from_another_client() {
    let found = audit(AuthorityConfig::default(), Some(AuthorityPlant::IgnoresClient), |a| {
        let login = a.login(t(0), "app", None);
        let _ = a.refresh(t(1000), "intruder", None, login.refresh_token.expose_secret(), None);
    });
    assert_eq!(found, vec![Invariant::A5]);
}

#[test]
fn a6_catches_a_refusal_that_changes_state() {
    let config = AuthorityConfig { refresh_ttl: Duration::from_secs(10), ..AuthorityConfig::default() };
    let found = audit(config, Some(AuthorityPlant::RefusalRenews), |a| {
        let login = a.login(t(0), "app", None);
        let _ = a.refresh(t(20_000), "app", None, login.refresh_token.expose_secret(), None);
    });
    assert_eq!(found, vec![Invariant::A6]);
}

#[test]
fn a7_and_d1_catch_a_bound_token_served_without_its_key() {
    let proof = |jkt: &str| crate::authority::Proof { jkt: jkt.into(), jti: format!("{jkt}-1"), nonce: None };
    // The broken server serves it (A7); either way the client presented it unproven (D1).
    let found = audit(AuthorityConfig::default(), Some(AuthorityPlant::IgnoresDpopBinding), |a| {
        let login = a.login(t(0), "app", None);
        a.bind(t(0), login.family, "key-1");
        let _ = a.refresh(t(1000), "app", None, login.refresh_token.expose_secret(), Some(&proof("key-2")));
    });
    assert_eq!(found, vec![Invariant::A7, Invariant::D1]);
    // A sound server refuses it: only the client is at fault.
    let found = audit(AuthorityConfig::default(), None, |a| {
        let login = a.login(t(0), "app", None);
        a.bind(t(0), login.family, "key-1");
        let _ = a.refresh(t(1000), "app", None, login.refresh_token.expose_secret(), None);
        let _ = a.refresh(t(1001), "app", None, login.refresh_token.expose_secret(), Some(&proof("key-1")));
    });
    assert_eq!(found, vec![Invariant::D1]);
}

/// A client that lost the answer to its code exchange, and to a device
/// poll that was granted, presents the same code again.
fn codes_redeemed_twice(a: &mut Authority) {
    use crate::authority::code::s256_challenge;
    use crate::authority::device::Decision;
    let redirect = "http://127.0.0.1:1/cb";
    let verifier = "v".repeat(43);
    let code = a.issue_code(t(0), "app", redirect, &s256_challenge(&verifier));
    for at in [1, 2] {
        let _ = a.redeem_code(t(at), "app", &code, redirect, &verifier);
    }
    let start = a.start_device_login(t(0), "app");
    assert!(a.decide_device_login(t(1), &start.user_code, Decision::Approve));
    for at in [10_000, 30_000] {
        let _ = a.poll_device_login(t(at), "app", start.device_code.expose_secret());
    }
}

#[test]
fn a8_catches_a_code_that_starts_two_families() {
    assert!(audit(AuthorityConfig::default(), None, codes_redeemed_twice).is_empty());
    let found = audit(AuthorityConfig::default(), Some(AuthorityPlant::RedeemsGrantTwice), codes_redeemed_twice);
    assert_eq!(found, vec![Invariant::A8, Invariant::A8]);
}

fn rejected(after_lost_response: bool) -> LogoutCause {
    let error = OAuthError { status: 400, code: "invalid_grant".into(), description: None };
    LogoutCause::RefreshTokenRejected { error, after_lost_response }
}

#[test]
fn l2_catches_a_logout_with_no_cause_in_the_world() {
    let (session, authority) = (SessionConfig::default(), AuthorityConfig::default());
    let evidence = LogoutEvidence { refusal: Some(Refusal::ReuseDetected), ..LogoutEvidence::default() };
    let judged = judge_logout(&session, &authority, &rejected(false), evidence, t(0));
    assert_eq!(judged.unwrap_err().invariant, Invariant::L2);
    // The same logout with a cause is accepted: a lost answer, a crash, or expiry.
    for evidence in [
        LogoutEvidence { lost_answer: true, ..evidence },
        LogoutEvidence { crashed: true, ..evidence },
        LogoutEvidence { revoked: true, ..evidence },
        LogoutEvidence { refusal: Some(Refusal::Expired), ..evidence },
        // Answers read only after a stall, past their attempts' deadlines (seed 1379243).
        LogoutEvidence { stalled_refreshing: true, ..evidence },
    ] {
        assert!(judge_logout(&session, &authority, &rejected(false), evidence, t(0)).is_ok(), "{evidence:?}");
    }
    assert!(judge_logout(&session, &authority, &LogoutCause::Requested, LogoutEvidence::default(), t(0)).is_ok());
}

#[test]
fn the_healed_verdict_catches_an_unserved_caller_unless_the_session_ended_for_an_accepted_cause() {
    let (session, authority) = (SessionConfig::default(), AuthorityConfig::default());
    let valid = StateView::Valid { generation: Generation(3), renewal: Renewal::Ready };
    let served = Healed {
        process: "client-0",
        unserved: 0,
        last_unserved: None,
        state: Some(&valid),
        evidence: None,
        told_ended: None,
    };
    assert!(judge_healed(&session, &authority, &served, t(0)).is_ok());
    // A caller unserved in a healed world whose session goes on: C5, named.
    let unserved = Healed { unserved: 2, last_unserved: Some("timed out".into()), ..served.clone() };
    let violation = judge_healed(&session, &authority, &unserved, t(0)).unwrap_err();
    assert_eq!(violation.invariant, Invariant::C5);
    assert!(violation.detail.starts_with("client-0: ") && violation.detail.contains("timed out"), "{violation}");
    // Left ended: the logout rules judge instead, with the world's evidence.
    let ended = StateView::LoggedOut { cause: rejected(false) };
    let no_cause = LogoutEvidence { refusal: Some(Refusal::ReuseDetected), ..LogoutEvidence::default() };
    let left_ended = Healed { state: Some(&ended), evidence: Some(no_cause), ..unserved.clone() };
    assert_eq!(judge_healed(&session, &authority, &left_ended, t(0)).unwrap_err().invariant, Invariant::L2);
    let crashed = Healed { evidence: Some(LogoutEvidence { crashed: true, ..no_cause }), ..left_ended.clone() };
    assert!(judge_healed(&session, &authority, &crashed, t(0)).is_ok());
    // A world that logs the user in again gives no evidence: an ended state is no excuse.
    let relogged = Healed { evidence: None, ..left_ended };
    assert_eq!(judge_healed(&session, &authority, &relogged, t(0)).unwrap_err().invariant, Invariant::C5);
    // Callers told the session had ended, in a session that went on (the
    // user logged in again): the logout rules judge what they were told of.
    let told = Some(ToldEnded {
        callers: 3,
        last_told_at: MonoTime::from_secs(50),
        cause: rejected(false),
        ended_at: MonoTime::from_secs(10),
        login_bound: Duration::from_secs(40),
    });
    let told_of_a_crash = Healed {
        told_ended: told.clone(),
        evidence: Some(LogoutEvidence { crashed: true, ..no_cause }),
        ..served.clone()
    };
    assert!(judge_healed(&session, &authority, &told_of_a_crash, t(0)).is_ok());
    let told_of_no_cause = Healed { evidence: Some(no_cause), ..told_of_a_crash.clone() };
    assert_eq!(judge_healed(&session, &authority, &told_of_no_cause, t(0)).unwrap_err().invariant, Invariant::L2);
    // Other unserved callers still count beside excused ones.
    let and_one_timed_out = Healed { unserved: 1, last_unserved: Some("timed out".into()), ..told_of_a_crash.clone() };
    assert_eq!(judge_healed(&session, &authority, &and_one_timed_out, t(0)).unwrap_err().invariant, Invariant::C5);
    // A login that should have landed by then: the excuse has run out.
    let told_too_late = Healed {
        told_ended: told.clone().map(|told| ToldEnded { last_told_at: MonoTime::from_secs(51), ..told }),
        ..told_of_a_crash.clone()
    };
    let violation = judge_healed(&session, &authority, &told_too_late, t(0)).unwrap_err();
    assert!(violation.invariant == Invariant::C5 && violation.detail.contains("past the 40s"), "{violation}");
    // Without the world's evidence, callers told of a logout are unserved.
    let told_without_evidence = Healed { evidence: None, ..told_of_a_crash };
    let violation = judge_healed(&session, &authority, &told_without_evidence, t(0)).unwrap_err();
    assert!(
        violation.detail.contains("3 caller(s)") && violation.detail.contains("told the session had ended"),
        "{violation}"
    );
}

#[test]
fn l1_catches_a_lost_answer_that_grace_should_have_saved() {
    let session = SessionConfig::default();
    let mut authority = AuthorityConfig {
        grace: session.refresh_cycle_bound() + Duration::from_secs(1),
        grace_reuses: session.backoff.attempts + 1,
        ..AuthorityConfig::default()
    };
    let evidence =
        LogoutEvidence { lost_answer: true, refusal: Some(Refusal::ReuseDetected), ..LogoutEvidence::default() };
    let judged = judge_logout(&session, &authority, &rejected(true), evidence, t(0));
    assert_eq!(judged.unwrap_err().invariant, Invariant::L1);
    // A client asleep, or stalled while refreshing, stretched its cycle past
    // the grace; answers lost over more than one cycle spent more replays
    // than grace for one covers.
    for evidence in [
        LogoutEvidence { suspended: true, ..evidence },
        LogoutEvidence { stalled_refreshing: true, ..evidence },
        LogoutEvidence { lost_beyond_a_cycle: true, ..evidence },
    ] {
        assert!(judge_logout(&session, &authority, &rejected(true), evidence, t(0)).is_ok(), "{evidence:?}");
    }
    // A shorter grace does not promise that.
    authority.grace = Duration::from_secs(10);
    assert!(judge_logout(&session, &authority, &rejected(true), evidence, t(0)).is_ok());
}

#[test]
fn l1_catches_a_lost_lock_that_grace_should_have_saved_and_l2_accepts_one_it_did_not() {
    let session = SessionConfig::default();
    let database = crate::world::Database { lock_hold: Duration::from_secs(30), slow: Duration::ZERO };
    let mut authority = AuthorityConfig {
        grace: database.covering_grace(&session),
        grace_reuses: crate::world::Database::covering_reuses(&session),
        ..AuthorityConfig::default()
    };
    let evidence = LogoutEvidence {
        lock_lost: Some(database),
        refusal: Some(Refusal::ReuseDetected),
        ..LogoutEvidence::default()
    };
    let judged = judge_logout(&session, &authority, &rejected(false), evidence, t(0));
    assert_eq!(judged.unwrap_err().invariant, Invariant::L1);
    // A grace shorter than the lock's bound does not promise that; the lost lock is a cause.
    authority.grace = database.lock_hold;
    assert!(judge_logout(&session, &authority, &rejected(false), evidence, t(0)).is_ok());
    // Too few replays allowed: two holders may present one token more often.
    authority.grace = database.covering_grace(&session);
    authority.grace_reuses = session.backoff.attempts;
    assert!(judge_logout(&session, &authority, &rejected(false), evidence, t(0)).is_ok());
}

#[test]
fn the_shared_store_monitor_counts_overlaps_where_a_lock_was_lost_instead_of_reporting_them() {
    let config = SessionConfig::default();
    let send = |id: u64, token: &str| {
        Command::Io(Io::SendRefresh {
            id: RefreshId(id),
            refresh_token: RefreshToken::new(token),
            attempt: 1,
            dpop: None,
        })
    };
    // Process 0's lock was lost while its refresh was out; process 1 took it and refreshed.
    let mut monitor = SharedStoreMonitor::new(&config);
    monitor.command(0, t(0), &send(1, "r1"));
    monitor.lock_lost(0);
    monitor.command(1, t(1), &send(1, "r1"));
    assert!(monitor.violations().is_empty(), "{:?}", monitor.violations());
    assert_eq!(monitor.lock_loss_overlaps(), 1);
    // Once process 0 locks again, its sends are judged as ever.
    monitor.command(0, t(2), &Command::Io(Io::LockStore { op: StoreOpId(9) }));
    monitor.command(0, t(3), &send(2, "r1"));
    assert_eq!(monitor.violations().len(), 1, "{:?}", monitor.violations());
    assert_eq!(monitor.violations()[0].invariant, Invariant::C1);
}

#[test]
fn the_shared_store_monitor_catches_two_processes_refreshing_at_once() {
    let config = SessionConfig::default();
    let mut m = SharedStoreMonitor::new(&config);
    m.command(0, t(0), &send_r1(1));
    m.command(1, t(1_000), &send_r1(1));
    assert_eq!(m.violations().iter().map(|v| v.invariant).collect::<Vec<_>>(), [Invariant::C1]);
    // Once the first is answered (or dead), another may go.
    let mut m = SharedStoreMonitor::new(&config);
    m.command(0, t(0), &send_r1(1));
    m.event(0, t(500), &Event::RefreshFailed { id: RefreshId(1), failure: TransportFailure::Timeout });
    m.command(1, t(1_000), &send_r1(1));
    m.command(2, t(1_000 + config.request_timeout.as_millis() as u64), &send_r1(1));
    assert!(m.violations().is_empty(), "{:?}", m.violations());
}

/// On the world's clock a request is out until it is answered or its
/// timeout has really passed, whatever the process's own clock says (a wall
/// clock stepped forward moves it ahead: tier-2 seed 1031887). A send its
/// driver refused (`NotSent`) put nothing on the wire.
#[test]
fn the_shared_store_monitor_counts_a_processs_own_request_out_and_not_a_send_refused() {
    let config = SessionConfig::default();
    let mut m = SharedStoreMonitor::new(&config);
    m.command(0, t(0), &send_r1(1));
    m.command(0, t(2_000), &send_r1(2));
    m.event(0, t(2_000), &Event::RefreshFailed { id: RefreshId(2), failure: TransportFailure::NotSent });
    assert!(m.violations().is_empty(), "a send refused by its driver counted: {:?}", m.violations());
    m.command(0, t(3_000), &send_r1(3));
    assert_eq!(m.violations().iter().map(|v| v.invariant).collect::<Vec<_>>(), [Invariant::C1], "not yet answered");
    m.event(0, t(3_100), &Event::RefreshFailed { id: RefreshId(3), failure: TransportFailure::Interrupted });
    assert_eq!(m.violations().len(), 1, "it went out: it stays counted");
}

#[test]
fn the_shared_store_monitor_catches_a_token_replayed_after_another_process_stored_its_successor() {
    use freshen_core::session::TransportFailure;
    let mut m = SharedStoreMonitor::new(&SessionConfig::default());
    let send = |token: &str| {
        Command::Io(Io::SendRefresh {
            id: RefreshId(1),
            refresh_token: RefreshToken::new(token),
            attempt: 1,
            dpop: None,
        })
    };
    m.command(0, t(0), &send("r1"));
    m.event(0, t(100), &Event::RefreshCompleted { id: RefreshId(1), outcome: rotated("r2"), dpop_nonce: None });
    // Before the successor is durable, a replay of r1 is what a crash would force.
    m.command(1, t(200), &send("r1"));
    m.event(1, t(300), &Event::RefreshFailed { id: RefreshId(1), failure: TransportFailure::NotSent });
    assert!(m.violations().is_empty(), "{:?}", m.violations());
    m.command(0, t(400), &Command::Io(Io::Persist { op: StoreOpId(7), session: stored(2, "r2") }));
    m.event(0, t(500), &Event::StoreWritten { op: StoreOpId(7) });
    m.command(2, t(600), &send("r1"));
    assert_eq!(m.violations().iter().map(|v| v.invariant).collect::<Vec<_>>(), [Invariant::C2]);
}

#[test]
fn a_refusal_after_the_apps_own_revocation_is_explained_by_it_and_one_after_reuse_is_not() {
    let mut a = Authority::new(AuthorityConfig::default(), 1).with_audit();
    let login = a.login(t(0), "app", None);
    let token = login.refresh_token.expose_secret().to_owned();
    // Another process logs the user out: the family is revoked under this one's refresh.
    a.revoke(t(10), "app", &token).unwrap();
    let _ = a.refresh(t(20), "app", None, &token, None);
    let mut revoked = RevokedByTheApp::default();
    let mut last = None;
    for entry in a.take_audit() {
        revoked.observe(&entry, "app");
        if let AuditOutcome::Refused(refusal) = entry.outcome {
            last = Some(refusal);
        }
    }
    assert_eq!(last, Some(Refusal::Revoked));
    assert!(revoked.explains(last));
    // Another app's revocation explains nothing here.
    assert!(!RevokedByTheApp::default().explains(last));
    // A family ended by reuse detection is the race's, not the user's.
    let mut b = Authority::new(AuthorityConfig::default(), 2).with_audit();
    let login = b.login(t(0), "app", None);
    let other = b.login(t(0), "app", None);
    b.revoke(t(5), "app", other.refresh_token.expose_secret()).unwrap();
    reuse_outside_grace_of(&mut b, login.refresh_token.expose_secret());
    let mut revoked = RevokedByTheApp::default();
    b.take_audit().iter().for_each(|entry| revoked.observe(entry, "app"));
    assert!(!revoked.explains(Some(Refusal::Revoked)));
}

fn reuse_outside_grace_of(a: &mut Authority, token: &str) {
    let _ = a.refresh(t(1000), "app", None, token, None);
    let _ = a.refresh(t(60_000), "app", None, token, None);
}

/// U9 judges a login's answer by the tokens told stored, not by their
/// number: the session held before the login is not its answer, whatever
/// its number; another login stored since is (newer tokens, "or newer
/// ones"), even when numbered from the start again after a logout elsewhere
/// (tier-1 seed 8411277, which the number alone flagged).
#[test]
fn u9_catches_a_login_told_stored_with_the_tokens_it_replaced() {
    let log_in = |m: &mut ClientMonitor, at: u64| {
        let session = freshen_core::session::NewSession::issued(
            AccessToken::new("a-login"),
            Duration::from_secs(300),
            RefreshToken::new("r-login"),
            t(at),
        );
        m.event(t(at), &Event::LoggedIn { caller: CallerId(9), session });
    };
    let told_stored = |m: &mut ClientMonitor, at: u64, generation: u64| {
        let view = StateView::Valid { generation: Generation(generation), renewal: Renewal::Ready };
        m.command(t(at), &Command::StateChanged(view));
        m.command(t(at), &Command::LoginStored { callers: [CallerId(9)].into(), generation: Generation(generation) });
    };
    // Told stored with the session loaded before the login.
    let mut m = monitor();
    load(&mut m, 5);
    log_in(&mut m, 10);
    told_stored(&mut m, 20, 5);
    assert_eq!(found(m.violations()), vec![Invariant::U9]);
    // Told stored with another login read under the lock since, numbered lower.
    let mut m = monitor();
    load(&mut m, 5);
    log_in(&mut m, 10);
    m.command(t(15), &Command::Io(Io::LockStore { op: StoreOpId(2) }));
    let mut other = StoredSession::pair(AccessToken::new("a-other"), RefreshToken::new("r-other"));
    other.generation = Generation(2);
    let unix_now = freshen_core::time::UnixTime::EPOCH;
    m.event(t(15), &Event::StoreLocked { op: StoreOpId(2), stored: Some(other), unix_now, boot_now: None });
    told_stored(&mut m, 15, 2);
    assert_eq!(found(m.violations()), vec![]);
}
