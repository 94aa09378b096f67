//! Logging out: revocations, and telling the app when a logout's work is
//! done, so a process that exits right after it (a CLI) neither leaves the
//! session in its store nor cuts its revocation short.

use super::*;

impl Session {
    /// Sends a revocation (best effort) and remembers it until it ends or
    /// a logout stops waiting for it.
    pub(super) fn revoke(&mut self, refresh_token: RefreshToken) {
        let id = self.outbox.next_revocation;
        self.outbox.next_revocation = id.next();
        if self.outbox.revocations.len() == MAX_REVOCATIONS_AWAITED {
            self.outbox.revocations.pop_front();
        }
        let until = self.now.saturating_add(self.config.request_timeout);
        self.outbox.revocations.push_back((id, until));
        self.outbox.commands.push_back(Command::Io(Io::Revoke { id, refresh_token }));
    }

    pub(super) fn on_revocation_ended(&mut self, id: RevocationId) {
        let before = self.outbox.revocations.len();
        self.outbox.revocations.retain(|(sent, _)| *sent != id);
        if self.outbox.revocations.len() == before {
            self.ignore("the end of a revocation no longer awaited");
        }
    }

    /// A logout request is not answered yet.
    pub(super) fn logout_waits(&self) -> bool {
        self.logouts.answered < self.logouts.requested
    }

    /// When the oldest unanswered logout is told finished whatever its work
    /// ([`SessionConfig::logout_bound`]).
    pub(super) fn logout_gives_up_at(&self) -> Option<MonoTime> {
        self.logouts.waiting_since.map(|since| since.saturating_add(self.config.logout_bound()))
    }

    /// Answers the logouts requested so far once their work is done: the
    /// store holds no session (or has stopped answering, after its retries)
    /// and every revocation ended or ran out of time; or once they waited
    /// [`SessionConfig::logout_bound`] (a store that never answers). A login
    /// that overtook them ends them too: there is nothing left to do for them.
    pub(super) fn settle_logout(&mut self) {
        let now = self.now;
        self.outbox.revocations.retain(|(_, until)| *until > now);
        if !self.logout_waits() {
            return;
        }
        let overdue = self.logout_gives_up_at().is_some_and(|at| at <= now);
        let done = overdue
            || match &self.state {
                State::LoggedOut(_) => {
                    let gave_up = self.store.exhausted();
                    let cleared = self.write_wanted().is_none() && self.store.in_flight.is_none();
                    let owes_revocation = self.revoke_after_clear.is_some() && !gave_up;
                    (cleared || gave_up) && !owes_revocation && self.outbox.revocations.is_empty()
                }
                State::Loading | State::Valid(_) | State::Expired(_) | State::Refreshing(..) => true,
            };
        if done || self.planted(Plant::LogoutFinishedEarly) {
            self.logouts.answered = self.logouts.requested;
            self.logouts.waiting_since = None;
            self.outbox.commands.push_back(Command::LogoutFinished { requests: self.logouts.requested });
        }
    }
}
