//! loom models of the coordination unit: every interleaving (up to the
//! preemption bound) of callers, the driver answering I/O, cancellation and
//! logout. Run with
//! `RUSTFLAGS="--cfg freshen_loom" LOOM_MAX_PREEMPTIONS=3 cargo test -p freshen --lib --release loom -- --test-threads 1`
//! (one model at a time is faster: two at once contend for memory).

use freshen_core::ids::Generation;
use freshen_core::oauth::{Classified, TokenResponse};
use freshen_core::session::{Event, FailReason, Io, LogoutCause, Session, SessionConfig, StateView};
use freshen_core::stored::StoredSession;
use freshen_core::time::{MonoTime, UnixTime};
use freshen_core::token::{AccessToken, RefreshToken};
use loom::sync::{Condvar, Mutex};
use loom::thread;

use super::{Answer, Coordinator, Outcome, Waker, WallClock};
use crate::sync::Arc;

/// A waiting caller under loom: a slot and a condition variable.
#[derive(Clone)]
struct Slot(Arc<(Mutex<Option<Outcome>>, Condvar)>);

impl Slot {
    fn new() -> Self {
        Self(Arc::new((Mutex::new(None), Condvar::new())))
    }

    fn wait(&self) -> Outcome {
        let (value, ready) = &*self.0;
        let mut guard = value.lock().unwrap();
        loop {
            if let Some(outcome) = guard.take() {
                return outcome;
            }
            guard = ready.wait(guard).unwrap();
        }
    }

    fn try_take(&self) -> Option<Outcome> {
        self.0.0.lock().unwrap().take()
    }
}

impl Waker for Slot {
    fn wake(self, outcome: Outcome) {
        let (value, ready) = &*self.0;
        *value.lock().unwrap() = Some(outcome);
        ready.notify_all();
    }
}

/// A session whose stored access token is spent: the first caller needs a refresh.
fn coordinator() -> Arc<Coordinator<Slot>> {
    coordinator_with(SessionConfig::default())
}

fn coordinator_with(config: SessionConfig) -> Arc<Coordinator<Slot>> {
    let machine = Session::new(config, 1, MonoTime::ZERO, UnixTime::from_secs(1_000)).unwrap();
    Arc::new(Coordinator::new(machine, Box::new(|_| {}), WallClock::new(|| UnixTime::from_secs(1_000))))
}

fn spent_session() -> StoredSession {
    StoredSession::decode(
        br#"{"v":1,"generation":1,"access_token":"a1","refresh_token":"r1","access_expires_at_ms":0}"#,
    )
    .unwrap()
}

/// Counts participants (callers, the logout) that have made their move, so
/// the driver can wait for them on a condition variable instead of spinning.
#[derive(Clone)]
struct Progress(Arc<(Mutex<usize>, Condvar)>);

impl Progress {
    fn new() -> Self {
        Self(Arc::new((Mutex::new(0), Condvar::new())))
    }

    fn moved(&self) {
        *self.0.0.lock().unwrap() += 1;
        self.0.1.notify_all();
    }
}

/// The driver: answers the queued I/O, correctly, until all `participants`
/// have moved and nothing is left. Returns how many refreshes it sent.
fn drive(coordinator: &Coordinator<Slot>, progress: &Progress, participants: usize) -> usize {
    let mut refreshes = 0;
    let (moved, changed) = &*progress.0;
    loop {
        // The count is read before the take: a participant that moves in
        // between may have queued I/O the take missed.
        let all_moved = *moved.lock().unwrap() == participants;
        let io = coordinator.take_io();
        if io.is_empty() {
            if all_moved {
                // Every move happened before the count was read, and the take
                // came after: nothing can be queued now but by us.
                return refreshes;
            }
            let count = moved.lock().unwrap();
            if *count != participants {
                drop(changed.wait(count).unwrap());
            }
            continue;
        }
        for io in io {
            let event = match io {
                Io::LoadStore { op } => Event::StoreLoaded {
                    op,
                    stored: Some(spent_session()),
                    unix_now: UnixTime::from_secs(1_000),
                    boot_now: None,
                },
                // The models run one process: its lock is always free.
                Io::LockStore { op } => Event::StoreLocked {
                    op,
                    stored: Some(spent_session()),
                    unix_now: UnixTime::from_secs(1_000),
                    boot_now: None,
                },
                Io::Persist { op, .. } | Io::ClearStore { op } => Event::StoreWritten { op },
                Io::SendRefresh { id, .. } => {
                    refreshes += 1;
                    let response = TokenResponse::bearer(
                        AccessToken::new("a2"),
                        Some(core::time::Duration::from_secs(300)),
                        Some(RefreshToken::new("r2")),
                    );
                    Event::RefreshCompleted { id, outcome: Classified::Success(response), dpop_nonce: None }
                }
                Io::Revoke { id, .. } => Event::RevocationEnded { id },
                Io::UnlockStore => continue,
            };
            coordinator.handle(MonoTime::ZERO, event);
        }
    }
}

/// A caller thread that asks for a token, says so, and waits for the outcome.
fn waiting_caller(coordinator: &Arc<Coordinator<Slot>>, progress: &Progress) -> thread::JoinHandle<Outcome> {
    let (coordinator, progress) = (Arc::clone(coordinator), progress.clone());
    thread::spawn(move || {
        let slot = Slot::new();
        coordinator.want(MonoTime::ZERO, slot.clone());
        progress.moved();
        slot.wait()
    })
}

fn max_preemptions() -> loom::model::Builder {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound.get_or_insert(3);
    builder
}

/// Three callers on a spent token, one driver: exactly one refresh, and
/// every caller gets the refreshed token.
fn three_callers_one_refresh(config: SessionConfig) {
    max_preemptions().check(move || {
        let coordinator = coordinator_with(config.clone());
        let progress = Progress::new();
        let callers: Vec<_> = (0..3).map(|_| waiting_caller(&coordinator, &progress)).collect();
        let refreshes = drive(&coordinator, &progress, 3);
        for caller in callers {
            assert!(granted(caller.join().unwrap()) >= Generation(2));
        }
        assert_eq!(refreshes, 1, "three callers, one refresh");
        assert_eq!(coordinator.waiting(), 0);
    });
}

#[test]
fn loom_three_callers_one_refresh() {
    three_callers_one_refresh(SessionConfig::default());
}

/// The model is a checker: against the planted machine that lets every caller
/// start its own refresh, loom finds the interleaving that breaks it.
#[test]
fn loom_catches_a_planted_double_refresh() {
    let mut config = SessionConfig::default();
    config.plant = Some(freshen_core::session::Plant::NoSingleFlight);
    let caught = std::panic::catch_unwind(move || three_callers_one_refresh(config)).is_err();
    assert!(caught, "loom found no interleaving with two refreshes");
}

#[test]
fn loom_a_caller_that_drops_its_wait() {
    max_preemptions().check(|| {
        let coordinator = coordinator();
        let progress = Progress::new();
        let leaver = {
            let (coordinator, progress) = (Arc::clone(&coordinator), progress.clone());
            thread::spawn(move || {
                let slot = Slot::new();
                let caller = coordinator.want(MonoTime::ZERO, slot.clone());
                coordinator.cancel(caller);
                progress.moved();
                // Whatever raced with the cancel, nothing is delivered twice and nothing is lost.
                slot.try_take()
            })
        };
        let stayer = waiting_caller(&coordinator, &progress);
        let refreshes = drive(&coordinator, &progress, 2);
        let _ = leaver.join().unwrap();
        assert_eq!(granted(stayer.join().unwrap()), Generation(2));
        assert_eq!(refreshes, 1);
        assert_eq!(coordinator.waiting(), 0, "the one who left is not kept");
    });
}

#[test]
fn loom_logout_racing_a_refresh() {
    max_preemptions().check(|| {
        let coordinator = coordinator();
        let progress = Progress::new();
        let caller = waiting_caller(&coordinator, &progress);
        let logout = {
            let (coordinator, progress) = (Arc::clone(&coordinator), progress.clone());
            thread::spawn(move || {
                let slot = Slot::new();
                coordinator.log_out(MonoTime::ZERO, slot.clone());
                progress.moved();
                slot
            })
        };
        drive(&coordinator, &progress, 2);
        // Its clear and its revocation were carried out: the logout is told so.
        let logout = logout.join().unwrap();
        assert!(matches!(logout.try_take(), Some(Ok(Answer::LogoutFinished))), "the logout was not told it finished");
        match caller.join().unwrap() {
            // The refresh won the race: the token was written before it was granted.
            Ok(Answer::Token(granted)) => assert_eq!(granted.grant.generation, Generation(2)),
            Ok(Answer::LoginStored | Answer::LogoutFinished) => panic!("a caller was answered as a login or logout"),
            Err(reason) => assert_eq!(reason, FailReason::LoggedOut(LogoutCause::Requested)),
        }
        assert_eq!(coordinator.state(), StateView::LoggedOut { cause: LogoutCause::Requested });
        assert!(coordinator.fast().is_none(), "nothing is handed out after logout");
        assert_eq!(coordinator.waiting(), 0);
    });
}

/// The generation of the token a caller was granted; panics otherwise.
fn granted(outcome: Outcome) -> Generation {
    match outcome {
        Ok(Answer::Token(published)) => published.grant.generation,
        other => panic!("no token: {other:?}"),
    }
}
