//! How a session paces its refreshes, and the bounds it guarantees.

use core::time::Duration;

use thiserror::Error;

use crate::oauth::Policy;

/// Exponential backoff with equal jitter: attempt `n` (counting from 1) waits
/// between half and all of `min(max, base * 2^(n-1))` before attempt `n + 1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Backoff {
    /// The delay after the first failure.
    pub base: Duration,
    /// The longest delay.
    pub max: Duration,
    /// Attempts in one cycle, the first included. At least 1.
    pub attempts: u32,
}

impl Backoff {
    /// A backoff policy.
    pub const fn new(base: Duration, max: Duration, attempts: u32) -> Self {
        Self { base, max, attempts }
    }

    /// The full (un-jittered) delay after failed attempt `attempt` (1-based).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(32);
        self.base.saturating_mul(1u32 << doublings.min(31)).min(self.max)
    }

    /// The shortest delay equal jitter can pick after failed attempt `attempt`.
    pub fn floor(&self, attempt: u32) -> Duration {
        self.ceiling(attempt) / 2
    }

    /// The sum of the longest delays between all attempts of one cycle.
    pub fn total_ceiling(&self) -> Duration {
        (1..self.attempts).map(|a| self.ceiling(a)).fold(Duration::ZERO, Duration::saturating_add)
    }
}

/// Configuration of a [`Session`](super::Session). `Default` suits an app or CLI
/// talking to a typical authorization server; each field has a `with_` setter.
///
/// ```
/// use std::time::Duration;
/// use freshen_core::session::SessionConfig;
///
/// let config = SessionConfig::default()
///     .with_refresh_margin(Duration::from_secs(120))
///     .with_shared_store(true);
/// assert!(config.shared_store && config.validate().is_ok());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionConfig {
    /// Refresh this long before the access token expires, so callers never wait.
    pub refresh_margin: Duration,
    /// Up to this much earlier again, drawn from the seed, so that many clients
    /// started together do not refresh together.
    pub refresh_jitter: Duration,
    /// Stop handing out an access token this long before it expires: the request
    /// carrying it still has to travel, and clocks drift.
    pub expiry_safety: Duration,
    /// How long one refresh request may take before it counts as lost.
    pub request_timeout: Duration,
    /// Retries of a refresh after transient failures.
    pub backoff: Backoff,
    /// The longest `Retry-After` waited out within one refresh cycle. A longer
    /// one ends the cycle; no refresh starts again before it has passed.
    pub max_retry_after: Duration,
    /// After a refresh cycle fails, how long callers are failed at once with
    /// its reason instead of starting a new cycle. Zero by default: a failure
    /// is not cached, and the next caller tries again. The server's
    /// `Retry-After` is honoured whatever this says.
    pub failure_cooldown: Duration,
    /// Retries of a failed store write or load.
    pub store_backoff: Backoff,
    /// The most callers that may wait at once; more are failed at once.
    pub max_waiters: usize,
    /// How token-endpoint responses are read.
    pub policy: Policy,
    /// Other processes use the same store (a CLI run twice at once, an app and
    /// its helper). Each refresh cycle then runs under the store's
    /// cross-process lock ([`Io::LockStore`](super::Io::LockStore)):
    /// the store is read first, a newer generation found there is adopted
    /// instead of refreshing, and the result is written before the lock is
    /// released. Every write takes the lock too. Off by default: a store only
    /// this process uses needs no lock.
    pub shared_store: bool,
    /// A deliberately broken variant, for proving that checkers catch bugs.
    #[cfg(feature = "_internal_test_exports")]
    pub plant: Option<super::Plant>,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            refresh_margin: Duration::from_secs(60),
            refresh_jitter: Duration::from_secs(15),
            expiry_safety: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            backoff: Backoff::new(Duration::from_millis(500), Duration::from_secs(8), 4),
            max_retry_after: Duration::from_secs(30),
            failure_cooldown: Duration::ZERO,
            store_backoff: Backoff::new(Duration::from_millis(50), Duration::from_secs(1), 4),
            max_waiters: 100_000,
            policy: Policy::default(),
            shared_store: false,
            #[cfg(feature = "_internal_test_exports")]
            plant: None,
        }
    }
}

/// `with_` setters, one per field, so a configuration reads as one
/// expression (the struct is `#[non_exhaustive]`, which rules out literals).
macro_rules! setters {
    ($($field:ident, $setter:ident: $type:ty;)*) => {
        impl SessionConfig {
            $(
                #[doc = concat!("Sets [`SessionConfig::", stringify!($field), "`].")]
                #[must_use]
                pub fn $setter(mut self, value: $type) -> Self {
                    self.$field = value;
                    self
                }
            )*
        }
    };
}

setters! {
    refresh_margin, with_refresh_margin: Duration;
    refresh_jitter, with_refresh_jitter: Duration;
    expiry_safety, with_expiry_safety: Duration;
    request_timeout, with_request_timeout: Duration;
    backoff, with_backoff: Backoff;
    max_retry_after, with_max_retry_after: Duration;
    failure_cooldown, with_failure_cooldown: Duration;
    store_backoff, with_store_backoff: Backoff;
    max_waiters, with_max_waiters: usize;
    policy, with_policy: Policy;
    shared_store, with_shared_store: bool;
}

/// A configuration the session cannot honour.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `backoff.attempts` or `store_backoff.attempts` is zero.
    #[error("a backoff policy must allow at least one attempt")]
    NoAttempts,
    /// `request_timeout` is zero: every refresh would count as lost at once.
    #[error("request_timeout must be positive")]
    ZeroTimeout,
    /// `max_waiters` is zero.
    #[error("max_waiters must be positive")]
    NoWaiters,
    /// A duration so large that deadlines computed from it would overflow.
    #[error("`{0}` is larger than a year")]
    TooLong(&'static str),
}

const YEAR: Duration = Duration::from_secs(365 * 24 * 60 * 60);

impl SessionConfig {
    /// Checks that every bound is usable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.backoff.attempts == 0 || self.store_backoff.attempts == 0 {
            return Err(ConfigError::NoAttempts);
        }
        if self.request_timeout.is_zero() {
            return Err(ConfigError::ZeroTimeout);
        }
        if self.max_waiters == 0 {
            return Err(ConfigError::NoWaiters);
        }
        let durations = [
            ("refresh_margin", self.refresh_margin),
            ("refresh_jitter", self.refresh_jitter),
            ("expiry_safety", self.expiry_safety),
            ("request_timeout", self.request_timeout),
            ("backoff.max", self.backoff.max),
            ("max_retry_after", self.max_retry_after),
            ("failure_cooldown", self.failure_cooldown),
            ("store_backoff.max", self.store_backoff.max),
            ("policy.max_lifetime", self.policy.max_lifetime),
        ];
        match durations.iter().find(|(_, d)| *d > YEAR) {
            Some((name, _)) => Err(ConfigError::TooLong(name)),
            None => Ok(()),
        }
    }

    /// The longest delay between two attempts of one cycle.
    pub fn longest_retry_delay(&self) -> Duration {
        self.backoff.max.max(self.max_retry_after)
    }

    /// How long a caller waits at most when the token endpoint never answers:
    /// every attempt of the cycle times out (`request_timeout` each), with the
    /// longest backoff between them. The caller is then failed with
    /// [`AttemptFailure::Transport`](super::AttemptFailure::Transport), and the
    /// next caller starts a new cycle.
    pub fn unanswered_cycle_bound(&self) -> Duration {
        self.request_timeout.saturating_mul(self.backoff.attempts).saturating_add(self.backoff.total_ceiling())
    }

    /// The most time one refresh cycle can take: every attempt timing out with
    /// the longest delay between them, plus one more attempt with a token
    /// salvaged or adopted from the store.
    pub fn refresh_cycle_bound(&self) -> Duration {
        let attempts = self.backoff.attempts.saturating_add(1);
        self.request_timeout
            .saturating_mul(attempts)
            .saturating_add(self.longest_retry_delay().saturating_mul(attempts - 1))
    }

    /// How long the machine waits for the store's cross-process lock before
    /// it counts the store unavailable: as long as another process may hold it
    /// for one refresh cycle and the write of its result. A holder that dies
    /// releases the lock at once (the OS drops it with the process).
    pub fn lock_wait(&self) -> Duration {
        self.refresh_cycle_bound().saturating_add(self.store_backoff.total_ceiling())
    }

    /// The longest a logout waits for its work before it is told finished
    /// anyway ([`Command::LogoutFinished`](super::Command::LogoutFinished)):
    /// the store's lock (a shared store), the clear's retries, then a
    /// revocation. Reached only when the store stops answering at all; the
    /// logged-out state holds, and the clear still lands when it answers.
    /// Time asleep counts toward it: after a suspend longer than the bound,
    /// the logout may be told finished just before its clear's answer.
    pub fn logout_bound(&self) -> Duration {
        let lock = if self.shared_store { self.lock_wait() } else { Duration::ZERO };
        lock.saturating_add(self.store_backoff.total_ceiling()).saturating_add(self.request_timeout)
    }

    /// C5: the longest any caller waits before its token is granted or its
    /// request failed: a whole refresh cycle, then the store retries for the
    /// write-ahead of its result.
    pub fn wait_bound(&self) -> Duration {
        self.refresh_cycle_bound()
            .saturating_add(self.store_backoff.total_ceiling())
            .saturating_add(self.request_timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_max() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_millis(500), 5);
        let ceilings: Vec<_> = (1..=5).map(|a| b.ceiling(a).as_millis()).collect();
        assert_eq!(ceilings, [100, 200, 400, 500, 500]);
        assert_eq!(b.floor(2), Duration::from_millis(100));
        assert_eq!(b.total_ceiling(), Duration::from_millis(1200));
        assert_eq!(Backoff::new(Duration::MAX, Duration::MAX, 100).ceiling(90), Duration::MAX);
    }

    #[test]
    fn validation_rejects_unusable_bounds() {
        assert_eq!(SessionConfig::default().validate(), Ok(()));
        let mut c = SessionConfig::default();
        c.backoff.attempts = 0;
        assert_eq!(c.validate(), Err(ConfigError::NoAttempts));
        let c = SessionConfig { request_timeout: Duration::ZERO, ..SessionConfig::default() };
        assert_eq!(c.validate(), Err(ConfigError::ZeroTimeout));
        let c = SessionConfig { max_waiters: 0, ..SessionConfig::default() };
        assert_eq!(c.validate(), Err(ConfigError::NoWaiters));
        let c = SessionConfig { refresh_margin: Duration::MAX, ..SessionConfig::default() };
        assert_eq!(c.validate(), Err(ConfigError::TooLong("refresh_margin")));
    }

    #[test]
    fn the_default_wait_bound_is_a_couple_of_minutes() {
        let bound = SessionConfig::default().wait_bound();
        assert!(bound > Duration::from_secs(60) && bound < Duration::from_secs(300), "{bound:?}");
    }
}
