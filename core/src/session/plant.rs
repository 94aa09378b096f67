//! The planted bugs: each one breaks one invariant, so that the checkers can
//! prove they catch it.

/// A deliberately broken variant of the machine. Each one breaks one invariant,
/// so the checkers can prove they catch it. Has no effect unless the `testing`
/// feature sets [`SessionConfig::plant`].
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Plant {
    /// Every caller that finds no usable token starts its own refresh (breaks C1).
    NoSingleFlight,
    /// Hands out tokens before the store holds them (breaks C3).
    GrantBeforePersist,
    /// Logs out without clearing the store (breaks C4).
    LogoutKeepsStorage,
    /// A retry that succeeds keeps the old refresh token (breaks C2).
    RetryForgetsRotation,
    /// Ignores [`SessionConfig::shared_store`]: refreshes without the store's
    /// cross-process lock (breaks C1 and C2 across processes).
    NoCrossProcessLock,
    /// Answers callers before it reports the state their answer implies
    /// (breaks U1: an app reading the state after a logout answer sees it
    /// still logged in).
    AnswersBeforeState,
    /// After a failed cycle, fails every caller for `backoff.max` without
    /// trying again (breaks U3: a failure is not cached).
    CachesFailure,
    /// Hands out a restored token that is already inside its refresh margin
    /// (breaks U2: the refresh window is the user's).
    IgnoresRefreshWindow,
    /// A forced refresh asked while one is in flight is sent at once with
    /// the same refresh token instead of after it with its successor (breaks
    /// C1, C2 and U5: forced refreshes are chained).
    ForcedRefreshNotChained,
    /// Counts a refresh's lifetime from the attempt that got the answer, not
    /// from the first attempt presenting the same token (breaks C7 and U8
    /// against servers whose grace replay keeps the original expiry).
    LifetimeFromLastAttempt,
    /// A retry after a 401 gets the current token at once, even while a
    /// refresh that may kill it runs (breaks U8 against servers that delete
    /// the previous access token on refresh).
    RetryIgnoresRunningRefresh,
    /// Treats a request for the user's interaction as a transient failure
    /// and retries it (breaks U6: only the user can answer it).
    RetriesInteractionRequired,
    /// Shows the tokens of a failed cycle as ready to refresh (breaks U7:
    /// the state tells an outage from a misconfiguration from the next call).
    StateHidesFailure,
    /// Tells a login it is stored before the store holds it (breaks U9: a
    /// crash then would lose a login the app was told is safe).
    LoginAnsweredBeforeStored,
    /// Not in the machine: the clock the simulation's driver runs the session
    /// on misses every suspend, so the session's time lags the world's by the
    /// time slept (breaks C7: a token past its expiry looks fresh).
    MissesSuspends,
    /// Tells a logout it is finished as soon as it is asked (breaks C4: an
    /// app that exits then leaves the session in its store, unrevoked).
    LogoutFinishedEarly,
    /// Sends refreshes of a DPoP-bound session without a proof (breaks D1:
    /// the server refuses them, and ends the session).
    RefreshesUnproven,
    /// Treats a DPoP nonce challenge as a failed attempt and backs off
    /// (breaks D2: the server did not act on it, and wants it again at once).
    NonceChallengeBacksOff,
    /// Refreshes a bound login before its key is stored (breaks D3: a crash
    /// then leaves a grant bound to a key nobody holds).
    ProvesKeyBeforeStored,
    /// Not in the machine: the simulated database's writes are
    /// unconditional, so a worker that lost its lock overwrites the next
    /// holder's newer tokens (breaks F1).
    NoFencing,
    /// Not in the machine: the simulated database keeps a lock whose holder
    /// died, was cut off or stalled, until it unlocks (breaks C5: the other
    /// workers wait for it forever).
    LockNotReleasedOnDeath,
    /// Publishes a token again only when its generation changes, not when
    /// its usable time moves (read again from a shared store, or found to
    /// die sooner): the fast path keeps the stale usable time (breaks C7:
    /// the driver's withdrawal timer fires at once for ever; or U8: a token
    /// handed out past its death).
    PublishesByGeneration,
    /// Refreshes tokens whose write has not landed (breaks C3: the store
    /// keeps a token rotated away again and again, which another process,
    /// or this one after a crash, presents next).
    RefreshesUnwritten,
    /// Reads a stored expiry by the wall clock alone, even when it was
    /// written on this boot (breaks U2: after the wall clock was set back, a
    /// token inside its refresh margin, or dead, looks fresh).
    IgnoresBootClock,
}

impl Plant {
    /// Every plant, for campaigns.
    pub const ALL: [Plant; 24] = [
        Plant::NoSingleFlight,
        Plant::GrantBeforePersist,
        Plant::LogoutKeepsStorage,
        Plant::RetryForgetsRotation,
        Plant::NoCrossProcessLock,
        Plant::AnswersBeforeState,
        Plant::CachesFailure,
        Plant::IgnoresRefreshWindow,
        Plant::ForcedRefreshNotChained,
        Plant::LifetimeFromLastAttempt,
        Plant::RetryIgnoresRunningRefresh,
        Plant::RetriesInteractionRequired,
        Plant::StateHidesFailure,
        Plant::LoginAnsweredBeforeStored,
        Plant::MissesSuspends,
        Plant::LogoutFinishedEarly,
        Plant::RefreshesUnproven,
        Plant::NonceChallengeBacksOff,
        Plant::ProvesKeyBeforeStored,
        Plant::NoFencing,
        Plant::LockNotReleasedOnDeath,
        Plant::PublishesByGeneration,
        Plant::RefreshesUnwritten,
        Plant::IgnoresBootClock,
    ];

    /// The name used on command lines.
    pub fn name(self) -> &'static str {
        match self {
            Plant::NoSingleFlight => "no-single-flight",
            Plant::GrantBeforePersist => "grant-before-persist",
            Plant::LogoutKeepsStorage => "logout-keeps-storage",
            Plant::RetryForgetsRotation => "retry-forgets-rotation",
            Plant::NoCrossProcessLock => "no-cross-process-lock",
            Plant::AnswersBeforeState => "answers-before-state",
            Plant::CachesFailure => "caches-a-failure",
            Plant::IgnoresRefreshWindow => "ignores-refresh-window",
            Plant::ForcedRefreshNotChained => "forced-refresh-not-chained",
            Plant::LifetimeFromLastAttempt => "lifetime-from-last-attempt",
            Plant::RetryIgnoresRunningRefresh => "retry-ignores-running-refresh",
            Plant::RetriesInteractionRequired => "retries-interaction-required",
            Plant::StateHidesFailure => "state-hides-failure",
            Plant::LoginAnsweredBeforeStored => "login-answered-before-stored",
            Plant::MissesSuspends => "misses-suspends",
            Plant::LogoutFinishedEarly => "logout-finished-early",
            Plant::RefreshesUnproven => "refreshes-unproven",
            Plant::NonceChallengeBacksOff => "nonce-challenge-backs-off",
            Plant::ProvesKeyBeforeStored => "proves-key-before-stored",
            Plant::NoFencing => "no-fencing",
            Plant::LockNotReleasedOnDeath => "lock-not-released-on-death",
            Plant::PublishesByGeneration => "publishes-by-generation",
            Plant::RefreshesUnwritten => "refreshes-unwritten",
            Plant::IgnoresBootClock => "ignores-boot-clock",
        }
    }

    /// The plant with this name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }
}
