//! The logout checks of [`ClientMonitor`]: a logout is told finished only
//! once its work is done or its bound has passed (C4), never later than the
//! bound (C5), and a session logged out for a cause that clears the store
//! is clearing it (C4).

use super::*;

/// How many open revocations the session waits for (its `MAX_REVOCATIONS_AWAITED`).
const MAX_REVOCATIONS_AWAITED: usize = 8;

impl ClientMonitor {
    /// C4 for the app that exits after a logout (a CLI): a logout is told it
    /// is finished only once the store holds no session (or the store gave
    /// up after its retries) and its revocations ended or ran out of the
    /// request timeout, or once it waited `logout_bound` (a store that never
    /// answers); and only logouts that were asked for are answered.
    pub(super) fn logout_finished(&mut self, now: MonoTime, requests: u64) {
        let (requested, answered) = self.logouts;
        if requests > requested || requests <= answered {
            let detail = format!("answered logouts up to {requests} with {requested} requested, {answered} answered");
            self.violate(Invariant::C4, now, detail);
        }
        self.logouts.1 = self.logouts.1.max(requests);
        let since = self.logout_since.take();
        let overdue = since.is_some_and(|since| since.saturating_add(self.logout_bound) <= now);
        if overdue || !matches!(self.state, StateView::LoggedOut { .. }) {
            // Waited its bound, or a login overtook the logout: nothing is
            // left to wait for.
            return;
        }
        let gave_up = self.store_failures.0 >= self.config.store_backoff.attempts;
        let clears = self.logged_out.as_ref().is_some_and(LogoutCause::clears_store);
        if clears && self.store != StoreModel::Empty && !gave_up {
            let detail = format!("told a logout it is finished while the store is {:?}", self.store);
            self.violate(Invariant::C4, now, detail);
        }
        let timeout = self.config.request_timeout;
        // The session waits for its latest few revocations only.
        let open = self.revocations.iter().rev().take(MAX_REVOCATIONS_AWAITED);
        if let Some((id, _)) = open.clone().find(|(_, sent)| sent.saturating_add(timeout) > now) {
            let detail = format!("told a logout it is finished while revocation {id} is under way");
            self.violate(Invariant::C4, now, detail);
        }
    }

    /// C4: a session logged out for a cause that clears the store must be
    /// clearing it: a clear is pending, or the store is known empty, or the
    /// last store operation failed and its backoff excuses the wait.
    pub(super) fn check_clearing(&mut self, now: MonoTime) {
        let clearing = self.logged_out.as_ref().is_some_and(LogoutCause::clears_store);
        if !clearing || !self.pending_store.is_empty() || self.store == StoreModel::Empty {
            return;
        }
        // After a failure the next try waits out its backoff (capped at the slowest).
        let (failures, failed_at) = self.store_failures;
        let excused = failures > 0 && now <= failed_at.saturating_add(self.config.store_backoff.ceiling(failures));
        if !excused {
            self.violate(
                Invariant::C4,
                now,
                format!("logged out but the store is {:?} and no clear is under way", self.store),
            );
            // Report once per logout.
            self.store = StoreModel::Empty;
        }
    }

    /// C5: a logout is told it finished by its bound at the latest, so an
    /// app that exits after a logout (a CLI) never hangs on it.
    pub(super) fn check_logout_bound(&mut self, now: MonoTime) {
        let bound = self.logout_bound;
        if let Some(since) = self.logout_since.filter(|since| since.saturating_add(bound) < now) {
            self.logout_since = None;
            self.violate(Invariant::C5, now, format!("a logout asked at {since} waited longer than {bound:?}"));
        }
    }
}
