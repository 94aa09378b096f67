//! The driver's clock: monotonic, plus the time the machine slept.
//!
//! `Instant` (`CLOCK_MONOTONIC` on Linux) stops while the computer is
//! suspended, so after a laptop wakes, a token whose expiry was planned on it
//! looks fresher than it is, and the fast path would hand out a dead token.
//! The wall clock runs on through a suspend: whenever it has gained more than
//! [`SleepDetector::REAL_CLOCKS`] (2 s) on the monotonic clock since the last reading, the
//! gain is added to the session's time, so every expiry is checked again
//! against the time that really passed. A wall clock stepped forward (by hand,
//! or NTP) reads the same way: tokens then look older than they are, which
//! costs an early refresh, never a dead token. A wall clock stepped back is
//! ignored here; a stored expiry written on this boot is read by the boot
//! clock ([`BootClock`]), so a step between a write and a read cannot make a
//! token look fresher than it is. Tokio's timers run on the monotonic clock and fire late after a
//! suspend; the next reading (a caller, or that timer) catches up.

use core::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use core::time::Duration;
use std::sync::Arc;
use std::time::SystemTime;

use freshen_core::time::{BootId, BootTime, ClockGain, GainChange, MonoTime, SleepDetector, UnixTime};
use tokio::time::Instant;

/// Reads the wall clock (see [`Environment::with_wall_clock`](crate::Environment::with_wall_clock)).
#[derive(Clone)]
pub struct WallClock(Option<Arc<dyn Fn() -> UnixTime + Send + Sync>>);

impl WallClock {
    /// A wall clock read by `read`.
    pub fn new(read: impl Fn() -> UnixTime + Send + Sync + 'static) -> Self {
        Self(Some(Arc::new(read)))
    }

    /// The system's wall clock, [`system_clock`]: read by a direct call, not
    /// through a function pointer, because every acquire on the fast path
    /// reads it.
    pub fn system() -> Self {
        Self(None)
    }

    /// The time now.
    #[inline]
    pub fn now(&self) -> UnixTime {
        match &self.0 {
            None => system_clock(),
            Some(read) => read(),
        }
    }
}

impl core::fmt::Debug for WallClock {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("WallClock")
    }
}

/// The system's wall clock: [`Environment::system`](crate::Environment::system)'s. On Linux it
/// reads the coarse clock (`CLOCK_REALTIME_COARSE`, advanced every tick, a few
/// milliseconds): about 6 ns against about 50 for the precise one, and the
/// driver reads it on every acquire to notice a suspend. A few milliseconds are
/// far finer than anything the wall clock serves (stored expiries, HTTP dates
/// with one-second resolution, suspends of seconds).
#[inline]
pub fn system_clock() -> UnixTime {
    #[cfg(target_os = "linux")]
    {
        let now = rustix::time::clock_gettime(rustix::time::ClockId::RealtimeCoarse);
        if let (Ok(secs), Ok(nanos)) = (u64::try_from(now.tv_sec), u32::try_from(now.tv_nsec)) {
            return UnixTime::from_since_epoch(Duration::new(secs, nanos));
        }
    }
    UnixTime::from_since_epoch(SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default())
}

/// Reads the boot clock (see [`Environment::with_boot_clock`](crate::Environment::with_boot_clock)):
/// `None` where the platform has none.
#[derive(Clone)]
pub struct BootClock(Arc<dyn Fn() -> Option<BootTime> + Send + Sync>);

impl BootClock {
    /// A boot clock read by `read`.
    pub fn new(read: impl Fn() -> Option<BootTime> + Send + Sync + 'static) -> Self {
        Self(Arc::new(read))
    }

    /// The time now, if there is a boot clock.
    pub fn now(&self) -> Option<BootTime> {
        (self.0)()
    }
}

impl core::fmt::Debug for BootClock {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("BootClock")
    }
}

/// The system's boot clock: [`Environment::system`](crate::Environment::system)'s.
/// On Linux, `CLOCK_BOOTTIME` (it counts suspends and is never stepped) on
/// the boot `/proc/sys/kernel/random/boot_id` names. Elsewhere `None`: a
/// stored expiry is then read by the wall clock alone, so a wall clock set
/// back between a write and a read can make a token look fresher than it is
/// (its first use then gets a 401, and the session refreshes).
pub fn system_boot_clock() -> Option<BootTime> {
    #[cfg(target_os = "linux")]
    {
        static BOOT: std::sync::OnceLock<Option<BootId>> = std::sync::OnceLock::new();
        let boot = (*BOOT.get_or_init(linux_boot_id))?;
        let now = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
        if let (Ok(secs), Ok(nanos)) = (u64::try_from(now.tv_sec), u32::try_from(now.tv_nsec)) {
            return Some(BootTime::new(boot, Duration::new(secs, nanos)));
        }
    }
    None
}

/// This boot's id: its UUID's two halves folded into 64 bits. Read once,
/// and at most a line of it.
#[cfg(target_os = "linux")]
fn linux_boot_id() -> Option<BootId> {
    use std::io::Read as _;
    let mut text = String::new();
    let file = std::fs::File::open("/proc/sys/kernel/random/boot_id").ok()?;
    file.take(64).read_to_string(&mut text).ok()?;
    let hex: String = text.trim().chars().filter(|c| *c != '-').collect();
    let bits = u128::from_str_radix(&hex, 16).ok()?;
    Some(BootId::from_bits((bits >> 64) as u64 ^ bits as u64))
}

/// See the [module docs](self).
#[derive(Debug)]
pub(crate) struct Clock {
    origin: Instant,
    wall: WallClock,
    boot: BootClock,
    wall_origin: UnixTime,
    /// Wall time minus monotonic time since the origins, at the last reading (ns).
    last_gain: AtomicI64,
    /// Time slept so far (ns): added to every reading.
    slept: AtomicU64,
}

impl Clock {
    pub(crate) fn new(wall: WallClock, boot: BootClock) -> Self {
        let wall_origin = wall.now();
        let (last_gain, slept) = (AtomicI64::new(0), AtomicU64::new(0));
        Self { origin: Instant::now(), wall, boot, wall_origin, last_gain, slept }
    }

    pub(crate) fn wall(&self) -> UnixTime {
        self.wall.now()
    }

    pub(crate) fn boot(&self) -> Option<BootTime> {
        self.boot.now()
    }

    /// The session's time: monotonic, plus every suspend seen so far. The
    /// detection is the core's ([`ClockGain::judged_after`]); here its two
    /// numbers live in atomics, so readers on many threads never lock.
    pub(crate) fn now(&self) -> MonoTime {
        let monotonic = self.origin.elapsed();
        let gain = ClockGain::between(self.wall_origin, monotonic, self.wall.now());
        let last = self.last_gain.load(Ordering::Acquire);
        match gain.judged_after(ClockGain::from_nanos(last), SleepDetector::REAL_CLOCKS) {
            GainChange::Steady => {}
            GainChange::Slept(slept) => {
                // One reader claims each jump, so concurrent readers count it once.
                let claimed =
                    self.last_gain.compare_exchange(last, gain.as_nanos(), Ordering::AcqRel, Ordering::Acquire);
                if claimed.is_ok() {
                    let slept_ns = u64::try_from(slept.as_nanos()).unwrap_or(u64::MAX);
                    self.slept.fetch_add(slept_ns, Ordering::AcqRel);
                    tracing::info!(
                        slept_ms = slept.as_millis(),
                        "the wall clock jumped ahead of the monotonic one (a suspend): expiries are checked again"
                    );
                }
            }
            GainChange::SteppedBack => {
                // Jitter between readers is Steady, so the fast path never
                // writes a shared cache line.
                let _ = self.last_gain.compare_exchange(last, gain.as_nanos(), Ordering::AcqRel, Ordering::Acquire);
            }
        }
        MonoTime::from_elapsed(monotonic.saturating_add(Duration::from_nanos(self.slept.load(Ordering::Acquire))))
    }

    /// The session's time at `instant` (a moment already past).
    pub(crate) fn at(&self, instant: Instant) -> MonoTime {
        let slept = Duration::from_nanos(self.slept.load(Ordering::Acquire));
        MonoTime::from_elapsed(instant.saturating_duration_since(self.origin).saturating_add(slept))
    }

    /// When the monotonic clock will read session time `at`, for timers.
    pub(crate) fn instant(&self, at: MonoTime) -> Instant {
        let slept = Duration::from_nanos(self.slept.load(Ordering::Acquire));
        self.origin + at.elapsed().saturating_sub(slept)
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The default wall clock is the system's, read directly: it agrees
    /// with `SystemTime` to within the coarse clock's tick, and a clock the
    /// app supplies is still the one read.
    #[test]
    fn the_system_wall_clock_is_the_systems_and_a_supplied_one_is_read() {
        let system =
            UnixTime::from_since_epoch(SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default());
        let read = WallClock::system().now();
        let apart = if read > system {
            read.since_epoch() - system.since_epoch()
        } else {
            system.since_epoch() - read.since_epoch()
        };
        assert!(apart < Duration::from_secs(1), "the system wall clock is {apart:?} from SystemTime");
        assert_eq!(WallClock::new(|| UnixTime::from_secs(7)).now(), UnixTime::from_secs(7));
    }

    /// Linux has a boot clock: it names this boot, the same one on every
    /// reading, and runs forward.
    #[test]
    fn linux_reads_the_boot_clock_of_this_boot() {
        let first = system_boot_clock().expect("Linux has CLOCK_BOOTTIME and a boot_id");
        let second = system_boot_clock().expect("read twice");
        assert_eq!(first.boot(), second.boot());
        assert!(first.since_boot() > Duration::ZERO);
        assert!(second.since_boot() >= first.since_boot());
    }
}
