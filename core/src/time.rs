//! Time as an input.
//!
//! The core never reads a clock. Callers pass [`MonoTime`], a point on their own
//! monotonic clock measured from an origin they choose (a driver takes
//! `Instant::now()` once and passes the elapsed time; a simulation passes its
//! virtual time), and, where a stored expiry must be restored, [`UnixTime`].
//! Both are plain durations, so traces print the same bytes on every run.

use core::fmt;
use core::time::Duration;

/// A point on the caller's monotonic clock: the time elapsed since an origin the
/// caller chose once. Only differences between two `MonoTime`s carry meaning.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct MonoTime(Duration);

impl MonoTime {
    /// The caller's origin.
    pub const ZERO: Self = Self(Duration::ZERO);

    /// The point `elapsed` after the caller's origin.
    pub const fn from_elapsed(elapsed: Duration) -> Self {
        Self(elapsed)
    }

    /// Whole milliseconds after the origin, handy in tests and simulations.
    pub const fn from_millis(millis: u64) -> Self {
        Self(Duration::from_millis(millis))
    }

    /// Whole seconds after the origin.
    pub const fn from_secs(secs: u64) -> Self {
        Self(Duration::from_secs(secs))
    }

    /// Time elapsed since the caller's origin.
    pub const fn elapsed(self) -> Duration {
        self.0
    }

    /// `self + d`, saturating at the largest representable time instead of panicking.
    #[must_use]
    pub fn saturating_add(self, d: Duration) -> Self {
        Self(self.0.saturating_add(d))
    }

    /// `self - d`, saturating at the origin.
    #[must_use]
    pub fn saturating_sub(self, d: Duration) -> Self {
        Self(self.0.saturating_sub(d))
    }

    /// How long after `earlier` this is; zero when `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Self) -> Duration {
        self.0.saturating_sub(earlier.0)
    }
}

impl fmt::Debug for MonoTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for MonoTime {
    /// `t+12.345s`: millisecond precision, stable across platforms.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "t+{}.{:03}s", self.0.as_secs(), self.0.subsec_millis())
    }
}

/// Wall-clock time as the duration since the Unix epoch. Used only to carry an
/// expiry across a restart (stored sessions) and to read HTTP dates; decisions
/// about "now" are made on [`MonoTime`], which cannot jump.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Debug)]
pub struct UnixTime(Duration);

impl UnixTime {
    /// The Unix epoch.
    pub const EPOCH: Self = Self(Duration::ZERO);

    /// `secs` seconds after the Unix epoch.
    pub const fn from_secs(secs: u64) -> Self {
        Self(Duration::from_secs(secs))
    }

    /// The time `since_epoch` after the Unix epoch.
    pub const fn from_since_epoch(since_epoch: Duration) -> Self {
        Self(since_epoch)
    }

    /// Time since the Unix epoch.
    pub const fn since_epoch(self) -> Duration {
        self.0
    }

    /// Whole seconds since the Unix epoch.
    pub const fn as_secs(self) -> u64 {
        self.0.as_secs()
    }

    /// `self + d`, saturating.
    #[must_use]
    pub fn saturating_add(self, d: Duration) -> Self {
        Self(self.0.saturating_add(d))
    }

    /// How long after `earlier` this is; zero when `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Self) -> Duration {
        self.0.saturating_sub(earlier.0)
    }
}
