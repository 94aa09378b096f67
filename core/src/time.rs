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

/// Which boot of which machine a [`BootTime`] counts from (on Linux, from
/// `/proc/sys/kernel/random/boot_id`). Readings of different boots do not
/// compare.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct BootId(u64);

impl BootId {
    /// The boot these bits name.
    pub const fn from_bits(bits: u64) -> Self {
        Self(bits)
    }

    /// Its bits, as a stored blob keeps them.
    pub const fn bits(self) -> u64 {
        self.0
    }
}

/// A reading of the boot clock: the time since the machine booted, counting
/// suspends, never stepped (Linux's `CLOCK_BOOTTIME`). A wall clock can be
/// set back between a write and a read (by hand, by NTP, by a virtual
/// machine's host), and a stored expiry read through it then looks later
/// than it is; two boot-clock readings of one boot differ by exactly the
/// time between them.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct BootTime {
    boot: BootId,
    since_boot: Duration,
}

impl BootTime {
    /// `since_boot` after boot `boot` began.
    pub const fn new(boot: BootId, since_boot: Duration) -> Self {
        Self { boot, since_boot }
    }

    /// The boot this reading counts from.
    pub const fn boot(self) -> BootId {
        self.boot
    }

    /// The time since that boot began.
    pub const fn since_boot(self) -> Duration {
        self.since_boot
    }

    /// `self + d`, saturating.
    #[must_use]
    pub fn saturating_add(self, d: Duration) -> Self {
        Self { since_boot: self.since_boot.saturating_add(d), ..self }
    }

    /// How long after `earlier` this is (zero when `earlier` is later), or
    /// `None` when the two count from different boots.
    pub fn duration_since(self, earlier: Self) -> Option<Duration> {
        (self.boot == earlier.boot).then(|| self.since_boot.saturating_sub(earlier.since_boot))
    }
}

/// How far the wall clock has run ahead of the monotonic one since their
/// origins, in nanoseconds (negative: behind). A suspend grows it by the time
/// slept: the monotonic clock (`CLOCK_MONOTONIC`, `Instant`) stops while the
/// computer sleeps, the wall clock does not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ClockGain(i64);

impl ClockGain {
    /// The gain shown by one pair of readings: `monotonic` elapsed since the
    /// monotonic origin, `wall` against the wall clock's reading at that origin.
    pub fn between(wall_origin: UnixTime, monotonic: Duration, wall: UnixTime) -> Self {
        let nanos = |d: Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
        // Signed: a wall clock set back before the origin reads as a loss.
        let wall_elapsed = if wall >= wall_origin {
            nanos(wall.saturating_duration_since(wall_origin))
        } else {
            -nanos(wall_origin.saturating_duration_since(wall))
        };
        Self(wall_elapsed.saturating_sub(nanos(monotonic)))
    }

    /// As nanoseconds, for a driver that keeps it in an atomic.
    pub const fn as_nanos(self) -> i64 {
        self.0
    }

    /// From [`ClockGain::as_nanos`].
    pub const fn from_nanos(nanos: i64) -> Self {
        Self(nanos)
    }

    /// What a reading with this gain means after one with `last`, the gain
    /// the detector last took as its reference. A gain larger by more than
    /// `threshold` is a suspend (or a wall clock stepped forward, which costs
    /// an early refresh, never a dead token): the whole gain is time slept. A
    /// gain smaller by more than `threshold` is a wall clock stepped back: it
    /// becomes the reference, so later gains count from there. Anything
    /// within `threshold` is clock jitter and changes nothing, so the
    /// reference moves only at a real jump.
    pub fn judged_after(self, last: Self, threshold: Duration) -> GainChange {
        let threshold = i64::try_from(threshold.as_nanos()).unwrap_or(i64::MAX);
        if self.0 > last.0.saturating_add(threshold) {
            let slept = u64::try_from(self.0.saturating_sub(last.0)).unwrap_or(u64::MAX);
            GainChange::Slept(Duration::from_nanos(slept))
        } else if self.0 < last.0.saturating_sub(threshold) {
            GainChange::SteppedBack
        } else {
            GainChange::Steady
        }
    }
}

/// What one clock reading showed ([`ClockGain::judged_after`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GainChange {
    /// Within the threshold of the reference: nothing happened.
    Steady,
    /// The computer slept this long (or the wall clock was stepped forward).
    Slept(Duration),
    /// The wall clock was stepped back: the new gain is the reference.
    SteppedBack,
}

/// The suspend detector as a value: feeds readings of the monotonic and wall
/// clocks through [`ClockGain::judged_after`] and adds every sleep to the
/// session's time, so an expiry planned before a suspend is checked against
/// the time that really passed. A driver with many concurrent readers keeps
/// the same two numbers in atomics (freshen's does); a simulation uses this.
#[derive(Clone, Copy, Debug)]
pub struct SleepDetector {
    wall_origin: UnixTime,
    threshold: Duration,
    reference: ClockGain,
    slept: Duration,
}

impl SleepDetector {
    /// The threshold for real clocks: a wall clock read coarsely (a few
    /// milliseconds) and slewed by NTP never gains this much between two
    /// readings, and a lag of this much is well inside the default
    /// [`expiry_safety`](crate::session::SessionConfig::expiry_safety).
    pub const REAL_CLOCKS: Duration = Duration::from_secs(2);

    /// A detector whose clocks' origins are now: the wall clock read `wall_origin`.
    pub fn new(wall_origin: UnixTime, threshold: Duration) -> Self {
        Self { wall_origin, threshold, reference: ClockGain::default(), slept: Duration::ZERO }
    }

    /// Takes one reading and returns the session's time: `monotonic` plus
    /// every sleep seen so far.
    pub fn observe(&mut self, monotonic: Duration, wall: UnixTime) -> MonoTime {
        let gain = ClockGain::between(self.wall_origin, monotonic, wall);
        match gain.judged_after(self.reference, self.threshold) {
            GainChange::Steady => {}
            GainChange::Slept(slept) => {
                self.slept = self.slept.saturating_add(slept);
                self.reference = gain;
            }
            GainChange::SteppedBack => self.reference = gain,
        }
        self.session_time(monotonic)
    }

    /// The sleep seen so far.
    pub fn slept(&self) -> Duration {
        self.slept
    }

    /// The session's time at `monotonic`, by the sleeps seen so far.
    pub fn session_time(&self, monotonic: Duration) -> MonoTime {
        MonoTime::from_elapsed(monotonic.saturating_add(self.slept))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGIN: UnixTime = UnixTime::from_secs(1_800_000_000);

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn wall(s: u64) -> UnixTime {
        ORIGIN.saturating_add(secs(s))
    }

    #[test]
    fn a_suspend_is_added_to_the_session_time_exactly() {
        let mut clock = SleepDetector::new(ORIGIN, SleepDetector::REAL_CLOCKS);
        assert_eq!(clock.observe(secs(10), wall(10)), MonoTime::from_secs(10));
        // Asleep for an hour: the monotonic clock stopped at 10 s.
        assert_eq!(clock.observe(secs(11), wall(3611)), MonoTime::from_secs(3611));
        assert_eq!(clock.slept(), secs(3600));
        // A second suspend adds to the first.
        assert_eq!(clock.observe(secs(20), wall(3720)), MonoTime::from_secs(3720));
        assert_eq!(clock.slept(), secs(3700));
    }

    #[test]
    fn jitter_below_the_threshold_is_ignored_until_it_adds_up() {
        let mut clock = SleepDetector::new(ORIGIN, SleepDetector::REAL_CLOCKS);
        assert_eq!(clock.observe(secs(10), wall(11)), MonoTime::from_secs(10));
        assert_eq!(clock.observe(secs(20), wall(21)), MonoTime::from_secs(20));
        // 2 s exactly is still jitter; past it, the whole gain counts.
        assert_eq!(clock.observe(secs(30), wall(32)), MonoTime::from_secs(30));
        assert_eq!(clock.observe(secs(40), wall(43)), MonoTime::from_secs(43));
        // The lag before a jump never exceeds the threshold.
        assert_eq!(clock.slept(), secs(3));
    }

    #[test]
    fn a_wall_clock_stepped_back_is_ignored_and_later_gains_count_from_there() {
        let mut clock = SleepDetector::new(ORIGIN, SleepDetector::REAL_CLOCKS);
        clock.observe(secs(100), wall(100));
        // Set back an hour: no time is taken away.
        assert_eq!(clock.observe(secs(110), UnixTime::from_secs(1_800_000_000 + 110 - 3600)), MonoTime::from_secs(110));
        // Then a suspend of ten minutes counts as ten minutes, not as an hour and ten.
        assert_eq!(clock.observe(secs(120), UnixTime::from_secs(1_800_000_000 + 720 - 3600)), MonoTime::from_secs(720));
        // Back before the origin itself reads as a loss too, and no reading panics.
        assert_eq!(clock.observe(secs(130), UnixTime::EPOCH), MonoTime::from_secs(730));
        assert_eq!(
            clock.observe(Duration::MAX, UnixTime::from_since_epoch(Duration::MAX)),
            MonoTime::from_elapsed(Duration::MAX)
        );
    }

    #[test]
    fn with_a_zero_threshold_every_gain_counts() {
        let mut clock = SleepDetector::new(ORIGIN, Duration::ZERO);
        assert_eq!(clock.observe(secs(5), wall(6)), MonoTime::from_secs(6));
        assert_eq!(clock.observe(secs(5), wall(6)), MonoTime::from_secs(6), "the same reading twice counts once");
    }
}
