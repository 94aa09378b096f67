//! What a session draws from its surroundings rather than its configuration.

use std::hash::{BuildHasher, RandomState};
use std::time::SystemTime;

use crate::clock::{BootClock, WallClock, system_boot_clock};
use crate::setters::setters;

/// Where a session gets what is not configuration: the seed its jitter is
/// drawn from and the clocks it reads. An app never needs one:
/// [`Session::start`](crate::Session::start) uses [`Environment::system`].
/// Tests and simulations pass their own to
/// [`Session::start_in`](crate::Session::start_in), so a run replays.
///
/// ```
/// use freshen::{Environment, WallClock};
/// use freshen::core::time::UnixTime;
///
/// // Jitter from seed 7, and a wall clock that never moves.
/// let environment = Environment::seeded(7).with_wall_clock(WallClock::new(|| UnixTime::EPOCH));
/// assert_eq!(environment.seed(), Some(7));
/// ```
#[derive(Clone, Debug)]
pub struct Environment {
    seed: Option<u64>,
    wall_clock: WallClock,
    boot_clock: BootClock,
    #[cfg(feature = "_internal_test_exports")]
    observer: Option<std::sync::Arc<dyn crate::coordinator::Observer>>,
}

impl Environment {
    /// The operating system's: a seed drawn afresh, and the system's clocks.
    pub fn system() -> Self {
        Self {
            seed: None,
            wall_clock: WallClock::system(),
            boot_clock: BootClock::new(system_boot_clock),
            #[cfg(feature = "_internal_test_exports")]
            observer: None,
        }
    }

    /// The system's clocks, with jitter drawn from `seed`.
    pub fn seeded(seed: u64) -> Self {
        Self { seed: Some(seed), ..Self::system() }
    }

    /// The seed jitter is drawn from, when one was chosen.
    pub fn seed(&self) -> Option<u64> {
        self.seed
    }

    /// The seed to use: the chosen one, or one drawn now.
    pub(crate) fn draw_seed(&self) -> u64 {
        self.seed.unwrap_or_else(|| RandomState::new().hash_one(SystemTime::now()))
    }

    pub(crate) fn wall_clock(&self) -> &WallClock {
        &self.wall_clock
    }

    pub(crate) fn boot_clock(&self) -> &BootClock {
        &self.boot_clock
    }

    /// Lets `observer` see every input and command of the machine (the
    /// simulation's checker).
    #[cfg(feature = "_internal_test_exports")]
    #[doc(hidden)]
    #[must_use]
    pub fn with_observer(mut self, observer: std::sync::Arc<dyn crate::coordinator::Observer>) -> Self {
        self.observer = Some(observer);
        self
    }

    #[cfg(feature = "_internal_test_exports")]
    pub(crate) fn observer(&self) -> Option<&std::sync::Arc<dyn crate::coordinator::Observer>> {
        self.observer.as_ref()
    }
}

setters! { Environment {
    /// Reads this wall clock: it carries expiries across restarts, dates
    /// HTTP answers, and notices a suspend (see [`WallClock`]).
    with_wall_clock(wall_clock: WallClock) => wall_clock = wall_clock;
    /// Reads this boot clock: a stored expiry written on this boot is read
    /// by it rather than by the wall clock, which may have been set back
    /// since the write (see [`BootClock`]).
    with_boot_clock(boot_clock: BootClock) => boot_clock = boot_clock;
}}

impl Default for Environment {
    fn default() -> Self {
        Self::system()
    }
}
