//! The coordination unit: the core machine, the callers waiting on it, and the
//! snapshot the fast path reads. Synchronous and small on purpose, so loom can
//! check it with its primitives swapped in (see [`crate::sync`]).
//!
//! Everything the machine decides arrives here as commands: grants and
//! failures wake waiters, `Publish` swaps the snapshot, and everything that
//! needs I/O is queued for the driver. The lock is held only while the pure
//! machine runs; waiters are woken after it is released.

use core::mem;
use std::collections::BTreeMap;

use freshen_core::ids::{CallerId, Generation};
use freshen_core::session::{Command, Event, FailReason, Io, NewSession, Session, StateView, Timeout};
use freshen_core::time::MonoTime;
#[cfg(freshen_loom)]
use freshen_core::time::UnixTime;

#[cfg(not(freshen_loom))]
use crate::clock::WallClock;
use crate::sync::{Arc, Mutex, Snapshot, lock};
use crate::token::{Published, Token};

/// What a waiter receives.
pub(crate) type Outcome = Result<Answer, FailReason>;

/// A waiter's good answer: a token for a caller, or word that a login is stored.
#[derive(Debug)]
pub(crate) enum Answer {
    Token(Arc<Published>),
    LoginStored,
    LogoutFinished,
}

/// Delivers an outcome to one waiting caller (a oneshot in the driver, a
/// condition variable under loom). Delivering to a caller who left is fine.
pub(crate) trait Waker: Send {
    fn wake(self, outcome: Outcome);
}

/// Sees every input the machine handles and every command it produces, in
/// order: how a simulation runs the invariant checker over a real driver.
#[cfg(feature = "_internal_test_exports")]
pub trait Observer: Send + Sync + core::fmt::Debug {
    /// An input, just before the machine handles it at `now`.
    fn event(&self, now: MonoTime, event: &Event);
    /// A command the machine produced while handling an input at `now`.
    fn command(&self, now: MonoTime, command: &Command);
    /// The machine finished an input at `now`; `next_timeout` is its timer.
    fn step_end(&self, now: MonoTime, next_timeout: Option<MonoTime>);
}

/// Where the coordinator publishes each new state, in order, before it wakes
/// the callers whose answers that state explains (U1).
pub(crate) type StateSink = Box<dyn Fn(&StateView) + Send + Sync>;

/// Under loom, which leaves out the clock module (it reads tokio's clock),
/// the wall clock is a plain function.
#[cfg(freshen_loom)]
pub(crate) struct WallClock(fn() -> UnixTime);

#[cfg(freshen_loom)]
impl WallClock {
    pub(crate) fn new(read: fn() -> UnixTime) -> Self {
        Self(read)
    }

    fn now(&self) -> UnixTime {
        (self.0)()
    }
}

#[cfg(freshen_loom)]
impl core::fmt::Debug for WallClock {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("WallClock")
    }
}

/// How much earlier than its usable time, on the wall clock, the fast path
/// stops handing out a published token by itself: the coarse wall clock's
/// lag (a tick, a few milliseconds) with room to spare. Until the driver's
/// timer withdraws it, a caller in this gap takes the machine's path, which
/// grants it if it is still usable.
const WALL_SLACK: core::time::Duration = core::time::Duration::from_millis(50);

#[derive(Debug)]
struct Inner<W> {
    machine: Session,
    waiting: BTreeMap<CallerId, W>,
    io: Vec<Io>,
    next_caller: u64,
    /// Logouts handed to the machine so far, and each waiting one with its
    /// number: [`Command::LogoutFinished`] answers them up to a number.
    logouts_requested: u64,
    logouts_waiting: Vec<(u64, W)>,
    /// The driver has stopped ([`Coordinator::close`]): nothing more is handled.
    closed: bool,
    /// The usable time of the token published last, if any.
    published_until: Option<MonoTime>,
}

impl<W> Inner<W> {
    fn new(machine: Session) -> Self {
        Self {
            machine,
            waiting: BTreeMap::new(),
            io: Vec::new(),
            next_caller: 1,
            logouts_requested: 0,
            logouts_waiting: Vec::new(),
            closed: false,
            published_until: None,
        }
    }
}

/// See the [module docs](self).
pub(crate) struct Coordinator<W> {
    inner: Mutex<Inner<W>>,
    published: Snapshot<Token>,
    on_state: StateSink,
    wall: WallClock,
    #[cfg(feature = "_internal_test_exports")]
    observer: Option<std::sync::Arc<dyn Observer>>,
}

impl<W> core::fmt::Debug for Coordinator<W> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Coordinator").finish_non_exhaustive()
    }
}

impl<W: Waker> Coordinator<W> {
    /// A coordinator around `machine` that publishes every state to `on_state`.
    pub(crate) fn new(machine: Session, on_state: StateSink, wall: WallClock) -> Self {
        let coordinator = Self {
            inner: Mutex::new(Inner::new(machine)),
            published: Snapshot::empty(),
            on_state,
            wall,
            #[cfg(feature = "_internal_test_exports")]
            observer: None,
        };
        coordinator.with_machine(MonoTime::ZERO, |_| None);
        coordinator
    }

    /// A coordinator whose every input and command `observer` sees.
    #[cfg(feature = "_internal_test_exports")]
    pub(crate) fn observed(
        machine: Session,
        on_state: StateSink,
        wall: WallClock,
        observer: std::sync::Arc<dyn Observer>,
    ) -> Self {
        let coordinator = Self {
            inner: Mutex::new(Inner::new(machine)),
            published: Snapshot::empty(),
            on_state,
            wall,
            observer: Some(observer),
        };
        coordinator.with_machine(MonoTime::ZERO, |_| None);
        coordinator
    }

    /// The fast path: the published token, if it may still be handed out.
    /// No lock, no task, no monotonic clock: the machine withdraws the token
    /// when it stops being usable, on the driver's timer
    /// ([`Coordinator::published_until`]). A timer can fire late (a busy
    /// runtime, or a suspend, which stops the monotonic clock the timers run
    /// on), so the token is also refused once the wall clock, which runs on
    /// through a suspend, reaches its usable time less [`WALL_SLACK`].
    pub(crate) fn fast(&self) -> Option<Token> {
        self.lend(Token::clone).ok()
    }

    /// [`Coordinator::fast`], lending the token to `f` instead of handing
    /// out a clone: nothing is written to memory any other thread reads.
    /// `f` comes back unused when there is no token to lend.
    #[inline]
    pub(crate) fn lend<R, F: FnOnce(&Token) -> R>(&self, f: F) -> Result<R, F> {
        self.published.with(|token| match token {
            Some(token) if token.0.refuse_from.is_none_or(|refuse_from| self.wall.now() < refuse_from) => Ok(f(token)),
            _ => Err(f),
        })
    }

    /// When the published token stops being usable, if one is published and
    /// its lifetime is known: the driver's timer fires then, so the machine
    /// withdraws it even when none of its own timers is due (during a refresh).
    pub(crate) fn published_until(&self) -> Option<MonoTime> {
        lock(&self.inner).published_until
    }

    /// Registers a caller who needs a token; `waker` gets the answer (perhaps
    /// before this returns).
    pub(crate) fn want(&self, now: MonoTime, waker: W) -> CallerId {
        self.register(Some(waker), |caller| Event::TokenWanted { caller }, now)
    }

    /// A caller who needs a token but does not wait for it (a synchronous
    /// `try_` that found none): the machine starts what a waiting caller's
    /// arrival would start; its answer goes nowhere.
    pub(crate) fn want_unwaited(&self, now: MonoTime) {
        self.register(None, |caller| Event::TokenWanted { caller }, now);
    }

    /// A resource refused a token of `generation`: the caller wants one retry.
    pub(crate) fn unauthorized(&self, now: MonoTime, generation: Generation, waker: W) -> CallerId {
        self.register(Some(waker), |caller| Event::Unauthorized { caller, generation }, now)
    }

    /// A login, whose `waker` is told once it is stored.
    pub(crate) fn logged_in(&self, now: MonoTime, session: NewSession, waker: W) -> CallerId {
        self.register(Some(waker), |caller| Event::LoggedIn { caller, session }, now)
    }

    /// A caller forces a refresh; `waker` gets the token of a refresh that
    /// starts after this (see [`Event::RefreshWanted`]).
    pub(crate) fn refresh_wanted(&self, now: MonoTime, waker: W) -> CallerId {
        self.register(Some(waker), |caller| Event::RefreshWanted { caller }, now)
    }

    /// The user logs out; `waker` is told when the logout's work is done.
    pub(crate) fn log_out(&self, now: MonoTime, waker: W) {
        self.with_machine(now, |inner| {
            inner.logouts_requested += 1;
            let number = inner.logouts_requested;
            inner.logouts_waiting.push((number, waker));
            Some(Event::LogoutRequested)
        });
    }

    /// The token of `generation` is no good: the next caller refreshes.
    pub(crate) fn invalidated(&self, now: MonoTime, generation: Generation) {
        self.handle(now, Event::Invalidated { generation });
    }

    fn register(&self, waker: Option<W>, event: impl FnOnce(CallerId) -> Event, now: MonoTime) -> CallerId {
        let mut caller = CallerId(0);
        self.with_machine(now, |inner| {
            caller = CallerId(inner.next_caller);
            inner.next_caller += 1;
            if let Some(waker) = waker {
                inner.waiting.insert(caller, waker);
            }
            Some(event(caller))
        });
        caller
    }

    /// The caller stopped waiting (its future was dropped). The machine will
    /// still answer it; the answer goes nowhere.
    pub(crate) fn cancel(&self, caller: CallerId) {
        lock(&self.inner).waiting.remove(&caller);
    }

    pub(crate) fn handle(&self, now: MonoTime, event: Event) {
        self.with_machine(now, |_| Some(event));
    }

    /// Fires the machine's timers (an input without an event).
    pub(crate) fn handle_timeout(&self, now: MonoTime) {
        self.with_machine(now, |_| None);
    }

    pub(crate) fn poll_timeout(&self) -> Option<Timeout> {
        lock(&self.inner).machine.poll_timeout()
    }

    pub(crate) fn store_write_owed(&self) -> bool {
        lock(&self.inner).machine.store_write_owed()
    }

    pub(crate) fn take_io(&self) -> Vec<Io> {
        std::mem::take(&mut lock(&self.inner).io)
    }

    #[cfg(all(test, freshen_loom))]
    pub(crate) fn state(&self) -> StateView {
        lock(&self.inner).machine.state().clone()
    }

    /// The driver has stopped: every caller still waiting, and every later
    /// one, is let go unanswered (its waker dropped, which it reads as a
    /// shutdown), and no input reaches the machine again.
    pub(crate) fn close(&self) {
        let released = {
            let mut inner = lock(&self.inner);
            inner.closed = true;
            (mem::take(&mut inner.waiting), mem::take(&mut inner.logouts_waiting))
        };
        drop(released);
    }

    /// How many callers wait (for tests and metrics).
    pub(crate) fn waiting(&self) -> usize {
        lock(&self.inner).waiting.len()
    }

    /// Under the lock: `prepare` may register a caller and names the event;
    /// the machine handles it at `now` (or fires its timers when there is
    /// none); the commands are routed and every new state published. Then,
    /// outside the lock, the callers it answered are woken: an answer never
    /// reaches a caller before the state that explains it.
    fn with_machine(&self, now: MonoTime, prepare: impl FnOnce(&mut Inner<W>) -> Option<Event>) {
        let mut woken = Vec::new();
        {
            let mut inner = lock(&self.inner);
            let event = prepare(&mut inner);
            if inner.closed {
                // Whoever just registered is let go: no driver will answer.
                let released = (mem::take(&mut inner.waiting), mem::take(&mut inner.logouts_waiting));
                drop(inner);
                drop(released);
                return;
            }
            match event {
                Some(event) => {
                    #[cfg(feature = "_internal_test_exports")]
                    if let Some(observer) = &self.observer {
                        observer.event(now, &event);
                    }
                    let ignored_before = inner.machine.ignored().count;
                    inner.machine.handle(now, event);
                    trace_ignored(&inner.machine, ignored_before);
                }
                None => inner.machine.handle_timeout(now),
            }
            while let Some(command) = inner.machine.poll_command() {
                #[cfg(feature = "_internal_test_exports")]
                if let Some(observer) = &self.observer {
                    observer.command(now, &command);
                }
                match command {
                    Command::Grant { callers, grant } => {
                        let published = Arc::new(Published::new(grant, None));
                        for caller in callers {
                            if let Some(waker) = inner.waiting.remove(&caller) {
                                woken.push((waker, Ok(Answer::Token(Arc::clone(&published)))));
                            }
                        }
                    }
                    Command::LoginStored { callers, .. } => {
                        for caller in callers {
                            if let Some(waker) = inner.waiting.remove(&caller) {
                                woken.push((waker, Ok(Answer::LoginStored)));
                            }
                        }
                    }
                    Command::Fail { callers, reason } => {
                        for caller in callers {
                            if let Some(waker) = inner.waiting.remove(&caller) {
                                woken.push((waker, Err(reason.clone())));
                            }
                        }
                    }
                    Command::Publish(grant) => {
                        inner.published_until = grant.as_ref().and_then(|grant| grant.usable_until);
                        let published = grant.map(|grant| {
                            // The usable time on the wall clock, for a timer that fires late.
                            let refuse_from = grant.usable_until.map(|until| {
                                let left = until.saturating_duration_since(now).saturating_sub(WALL_SLACK);
                                self.wall.now().saturating_add(left)
                            });
                            // One copy per shard, each with its own header: readers
                            // on different threads count different `Arc`s and `Bytes`.
                            move || Token(Arc::new(Published::new(grant.clone(), refuse_from)))
                        });
                        self.published.store(published);
                    }
                    Command::Io(io) => inner.io.push(io),
                    Command::LogoutFinished { requests } => {
                        let (finished, waiting) = mem::take(&mut inner.logouts_waiting)
                            .into_iter()
                            .partition(|(number, _)| *number <= requests);
                        inner.logouts_waiting = waiting;
                        woken.extend(finished.into_iter().map(|(_, waker)| (waker, Ok(Answer::LogoutFinished))));
                    }
                    // Published under the lock, so states appear in the order the
                    // machine reached them, and before anyone below is woken.
                    Command::StateChanged(view) => (self.on_state)(&view),
                }
            }
            // The machine withdraws a token once its usable time has come; if
            // it ever did not, the driver's timer for it would fire again at
            // once, for ever. Withdrawn here too: callers then ask the machine.
            if inner.published_until.is_some_and(|until| until <= now) {
                inner.published_until = None;
                self.published.store(None::<fn() -> Token>);
            }
            #[cfg(feature = "_internal_test_exports")]
            if let Some(observer) = &self.observer {
                observer.step_end(now, inner.machine.poll_timeout().map(|due| due.at));
            }
        }
        for (waker, outcome) in woken {
            waker.wake(outcome);
        }
    }
}

#[cfg(all(test, freshen_loom))]
mod loom_models;

/// Traces the input the machine just ignored, if it did (never silently dropped).
fn trace_ignored(machine: &Session, count_before: u64) {
    let ignored = machine.ignored();
    #[cfg(not(freshen_loom))]
    if ignored.count > count_before
        && let Some(reason) = ignored.last
    {
        tracing::debug!(reason, "the session ignored an input");
    }
    #[cfg(freshen_loom)]
    let _ = (ignored, count_before);
}
