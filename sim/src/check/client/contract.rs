//! The contract checks of [`ClientMonitor`] that judge one input or answer
//! alone: the refresh window is the user's (U2), a failure is not cached
//! (U3), and a caller that asked before the session could know whether it
//! holds a refresh token may wait for the answer (U4).

use super::*;
use freshen_core::time::BootTime;

/// A store read's wall-clock and boot-clock readings.
pub(super) type Clocks = (UnixTime, Option<BootTime>);

impl ClientMonitor {
    /// U2: remembers a stored access token that has its refresh margin or
    /// less left (by the lifetime it was issued with) and a refresh token to
    /// renew it with: it must be refreshed before anyone gets it. What is
    /// left is what the session can know: by the boot clock when the blob
    /// was written on this boot (whatever the wall clock did since), else by
    /// the wall clock as it reads now.
    pub(super) fn note_refresh_first(&mut self, stored: &StoredSession, (unix_now, boot_now): Clocks, now: MonoTime) {
        let by_boot = stored.access_expires_boot.zip(boot_now).and_then(|(at, now)| at.duration_since(now));
        let by_wall = stored.access_expires_at.map(|at| at.saturating_duration_since(unix_now));
        let (Some(access), Some(left), Some(_)) = (&stored.access_token, by_boot.or(by_wall), &stored.refresh_token)
        else {
            return;
        };
        let first_sight = self.seen_access.insert(access.fingerprint(), now).is_none();
        if first_sight && left <= least_margin(&self.config, stored.access_lifetime) {
            self.inside_margin.insert(access.fingerprint());
        }
    }

    /// U3: callers failed as "refresh unavailable" must have had a cycle of
    /// their own, unless a server's `Retry-After` or the configured cooldown
    /// was in force.
    pub(super) fn check_not_cached(&mut self, now: MonoTime, callers: &[CallerId]) {
        if now < self.failure_excused_until {
            return;
        }
        if let Some(caller) = callers.iter().find(|c| self.unserved_since_arrival.contains(c)) {
            let detail = format!("failed {caller} as unavailable without trying a refresh after it arrived");
            self.violate(Invariant::U3, now, detail);
        }
    }

    /// Notes a caller that asked before the session could know whether it
    /// holds a refresh token: while the store is read or written (U4).
    pub(super) fn note_if_unknowing(&mut self, caller: CallerId) {
        if matches!(self.state, StateView::Loading) || !self.pending_store.is_empty() {
            self.asked_before_known.insert(caller);
        }
    }
}

/// The refresh margin a token issued for `lifetime` has at least (jitter only
/// adds to it): the configured one, or half the lifetime when the lifetime is
/// no longer than the margin.
pub(super) fn least_margin(config: &SessionConfig, lifetime: Option<Duration>) -> Duration {
    match lifetime {
        Some(lifetime) if lifetime <= config.refresh_margin => lifetime / 2,
        _ => config.refresh_margin,
    }
}
