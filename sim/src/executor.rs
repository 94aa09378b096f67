//! One session machine driven by hand under the client checker: one input at
//! a time, every command recorded and shown to the [`ClientMonitor`], store
//! work answered at once or held for the test to answer. The tests of the
//! machine's single rules (`tests/session_rules.rs`), the property tests and
//! the fuzz fixture are built on it. Each process of tier 1's world is a
//! [`Watched`] machine too, whose commands the world carries out over its
//! network, store and lock (`harness`).

use std::collections::VecDeque;
use std::time::Duration;

use freshen_core::ids::{CallerId, Generation, RefreshId};
use freshen_core::session::{Command, ConfigError, Event, Io, Session, SessionConfig, StoreError};
use freshen_core::stored::{DecodeError, StoredSession};
use freshen_core::time::{BootId, BootTime, MonoTime, UnixTime};
use freshen_core::token::RefreshToken;
use secrecy::ExposeSecret;

use crate::check::{ClientMonitor, traced};

/// Commands carried out for one input before it counts as a runaway: one
/// input answered by thousands of commands is a bug, not a session.
pub const MAX_COMMANDS_PER_INPUT: usize = 10_000;

/// The boot the executor's machine runs on.
const EXECUTOR_BOOT: u64 = 0xB007;

/// When the store answers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StoreAnswers {
    /// Every store operation succeeds at once, within the step that asked.
    #[default]
    AtOnce,
    /// Store operations wait in [`Executor::pending_store`] until
    /// [`Executor::answer_store`] answers the oldest.
    Held,
}

/// How [`Executor::answer_store`] answers the oldest held store operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreAnswer {
    /// It succeeds.
    Done,
    /// It fails; the store is unreachable.
    Unavailable,
    /// A read finds a blob of a newer version (a write fails as unavailable).
    Corrupt,
}

/// Whether [`Executor::commands`] keeps the commands carried out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CommandLog {
    /// They are checked and carried out, not kept.
    #[default]
    Off,
    /// Every one is kept, from the first (tests of single rules).
    Kept,
}

/// Where an [`Executor`]'s machine starts: its seed, the wall clock and the
/// store at time zero, and how the store and the log behave. The defaults
/// are seed 0, the Unix epoch, an empty store that answers at once, and no
/// command log.
#[derive(Clone, Debug, Default)]
pub struct Setup {
    /// Drives the machine's random choices ([`Session::new`]).
    pub seed: u64,
    /// The wall clock at time zero.
    pub unix_origin: UnixTime,
    /// What the store holds: one blob of bytes, as a keyring holds it.
    pub blob: Option<Vec<u8>>,
    /// When the store answers.
    pub store: StoreAnswers,
    /// Whether every command is kept.
    pub log: CommandLog,
}

/// A session machine and the client checker watching it: every input,
/// every command and the end of every step pass the checker on their way.
/// The [`Executor`] drives one; so does each process of tier 1's world.
#[derive(Debug)]
pub struct Watched {
    /// The machine.
    pub session: Session,
    /// The checker watching every input and command.
    pub monitor: ClientMonitor,
    /// When the machine's timer fell due as the last step ended, on its own
    /// clock: a world asks after every event, and the machine changes only
    /// in steps, each of which ends in [`Watched::step_end`].
    due: Option<MonoTime>,
}

impl Watched {
    /// `session`, watched by a checker for `config`.
    pub fn new(session: Session, config: &SessionConfig) -> Self {
        let due = session.poll_timeout().map(|due| due.at);
        Self { session, monitor: ClientMonitor::new(config), due }
    }

    /// When the machine's timer falls due ([`Session::poll_timeout`]) as of
    /// the last step's end; a machine replaced since must end a step first.
    pub fn due(&self) -> Option<MonoTime> {
        self.due
    }

    /// Hands the machine `event` at its own time `session_now`; the checker
    /// sees it at `now` (the world's time, which a suspend may put ahead).
    pub fn handle(&mut self, now: MonoTime, session_now: MonoTime, event: Event) {
        self.monitor.event(now, &event);
        self.session.handle(session_now, event);
    }

    /// The machine's next command, once the checker has seen it at `now`.
    pub fn next_command(&mut self, now: MonoTime) -> Option<Command> {
        let command = self.session.poll_command()?;
        self.monitor.command(now, &command);
        Some(command)
    }

    /// The step is over at `now`: the checker sees when the machine's timer
    /// falls due, `lag` later on the world's clock than on its own.
    pub fn step_end(&mut self, now: MonoTime, lag: core::time::Duration) {
        self.due = self.session.poll_timeout().map(|due| due.at);
        self.monitor.step_end(now, self.due.map(|due| due.saturating_add(lag)));
    }
}

/// See the [module docs](self).
#[derive(Debug)]
pub struct Executor {
    /// The machine and its checker.
    pub machine: Watched,
    /// The machine's time.
    pub now: MonoTime,
    unix_origin: UnixTime,
    /// What the store holds: one blob of bytes, as a keyring holds it.
    pub blob: Option<Vec<u8>>,
    store: StoreAnswers,
    /// Store work asked for and not yet answered ([`StoreAnswers::Held`]).
    pub pending_store: VecDeque<Io>,
    /// Every refresh sent: its id and the token it presented.
    pub sent: Vec<(RefreshId, RefreshToken)>,
    /// Every caller granted, in order.
    pub granted: Vec<CallerId>,
    /// The generation last granted or published.
    pub generation: Generation,
    /// Each input and command as a line, when asked for (C8 compares two).
    pub trace: Option<Vec<String>>,
    /// Every command, in order, with [`CommandLog::Kept`].
    pub commands: Option<Vec<Command>>,
}

impl Executor {
    /// A machine for `config` started at time zero as `setup` says; its
    /// first commands are carried out (and kept, if `setup.log` says so).
    ///
    /// # Errors
    /// The configuration is invalid.
    pub fn new(config: &SessionConfig, setup: Setup) -> Result<Self, ConfigError> {
        let Setup { seed, unix_origin, blob, store, log } = setup;
        let session = Session::new(config.clone(), seed, MonoTime::ZERO, unix_origin)?;
        let mut executor = Self {
            machine: Watched::new(session, config),
            now: MonoTime::ZERO,
            unix_origin,
            blob,
            store,
            pending_store: VecDeque::new(),
            sent: Vec::new(),
            granted: Vec::new(),
            generation: Generation(0),
            trace: None,
            commands: (log == CommandLog::Kept).then(Vec::new),
        };
        executor.drain();
        Ok(executor)
    }

    /// Records a trace from now on.
    #[must_use]
    pub fn traced(mut self) -> Self {
        self.trace = Some(Vec::new());
        self
    }

    /// The wall clock, in step with the machine's.
    pub fn unix_now(&self) -> UnixTime {
        self.unix_origin.saturating_add(self.now.elapsed())
    }

    /// The boot clock, in step with the machine's: the machine booted an
    /// hour before the session's time began.
    pub fn boot_now(&self) -> Option<BootTime> {
        Some(BootTime::new(BootId::from_bits(EXECUTOR_BOOT), Duration::from_secs(3600) + self.now.elapsed()))
    }

    /// The session the store holds, if it holds a readable one.
    pub fn stored(&self) -> Option<StoredSession> {
        self.blob.as_deref().and_then(|blob| StoredSession::decode(blob).ok())
    }

    fn note(&mut self, line: impl FnOnce() -> String) {
        if let Some(trace) = &mut self.trace {
            trace.push(line());
        }
    }

    fn feed(&mut self, event: Event) {
        let now = self.now;
        self.note(|| format!("{now} {event:?}"));
        self.machine.handle(now, now, event);
    }

    /// Hands the machine `event`, then carries out what it asks.
    pub fn input(&mut self, event: Event) {
        self.feed(event);
        self.drain();
    }

    /// Fires the machine's timer at `at` (which may be in its past: a clock
    /// that stepped back), then carries out what it asks.
    pub fn timeout(&mut self, at: MonoTime) {
        let now = self.now;
        self.note(|| format!("{now} timeout"));
        self.machine.session.handle_timeout(at);
        self.drain();
    }

    /// Moves time on by `by`, firing every timer due on the way at its own
    /// time, then tells the machine the time (a driver that wakes does).
    pub fn advance(&mut self, by: core::time::Duration) {
        let until = self.now.saturating_add(by);
        for _ in 0..MAX_COMMANDS_PER_INPUT {
            match self.machine.session.poll_timeout().map(|due| due.at) {
                Some(at) if at <= until => {
                    self.now = at;
                    self.timeout(at);
                }
                _ => break,
            }
        }
        self.now = until;
        self.machine.session.handle_timeout(until);
        self.drain();
    }

    /// Carries out every command the machine queued.
    ///
    /// # Panics
    /// After [`MAX_COMMANDS_PER_INPUT`] commands: a runaway.
    pub fn drain(&mut self) {
        let mut count = 0;
        while let Some(command) = self.machine.next_command(self.now) {
            count += 1;
            assert!(count < MAX_COMMANDS_PER_INPUT, "runaway: {command:?}");
            let now = self.now;
            self.note(|| format!("{now} {:?}", traced(&command)));
            if let Some(commands) = &mut self.commands {
                commands.push(command.clone());
            }
            match command {
                Command::Io(Io::SendRefresh { id, refresh_token, .. }) => self.sent.push((id, refresh_token)),
                Command::Io(Io::UnlockStore | Io::Revoke { .. }) => {}
                Command::Io(io) => match self.store {
                    StoreAnswers::Held => self.pending_store.push_back(io),
                    StoreAnswers::AtOnce => {
                        if let Some(event) = self.carry_out(io, StoreAnswer::Done) {
                            self.feed(event);
                        }
                    }
                },
                Command::Grant { callers, grant } => {
                    self.granted.extend(callers);
                    self.generation = grant.generation;
                }
                Command::Publish(Some(grant)) => self.generation = grant.generation,
                Command::Publish(None)
                | Command::LoginStored { .. }
                | Command::Fail { .. }
                | Command::LogoutFinished { .. }
                | Command::StateChanged(_) => {}
            }
        }
        self.machine.step_end(self.now, core::time::Duration::ZERO);
    }

    /// Answers the oldest held store operation as `answer` says, if one waits.
    pub fn answer_store(&mut self, answer: StoreAnswer) {
        if let Some(io) = self.pending_store.pop_front()
            && let Some(event) = self.carry_out(io, answer)
        {
            self.input(event);
        }
    }

    /// The store's answer to `io`.
    fn carry_out(&mut self, io: Io, answer: StoreAnswer) -> Option<Event> {
        let (unix_now, boot_now) = (self.unix_now(), self.boot_now());
        let loaded = |blob: &Option<Vec<u8>>| blob.as_deref().map(StoredSession::decode).transpose();
        Some(match (io, answer) {
            (Io::LoadStore { op }, StoreAnswer::Done) => match loaded(&self.blob) {
                Ok(stored) => Event::StoreLoaded { op, stored, unix_now, boot_now },
                Err(error) => Event::StoreFailed { op, error: StoreError::Corrupt(error) },
            },
            (Io::LockStore { op }, StoreAnswer::Done) => match loaded(&self.blob) {
                Ok(stored) => Event::StoreLocked { op, stored, unix_now, boot_now },
                Err(error) => Event::StoreFailed { op, error: StoreError::Corrupt(error) },
            },
            (Io::LoadStore { op } | Io::LockStore { op }, StoreAnswer::Corrupt) => {
                Event::StoreFailed { op, error: StoreError::Corrupt(DecodeError::UnsupportedVersion(2)) }
            }
            (Io::Persist { op, session }, StoreAnswer::Done) => {
                self.blob = Some(session.encode().expose_secret().as_bytes().to_vec());
                Event::StoreWritten { op }
            }
            (Io::ClearStore { op }, StoreAnswer::Done) => {
                self.blob = None;
                Event::StoreWritten { op }
            }
            (
                Io::LoadStore { op } | Io::LockStore { op } | Io::Persist { op, .. } | Io::ClearStore { op },
                StoreAnswer::Unavailable | StoreAnswer::Corrupt,
            ) => Event::StoreFailed { op, error: StoreError::Unavailable },
            (Io::UnlockStore | Io::SendRefresh { .. } | Io::Revoke { .. }, _) => return None,
        })
    }
}
