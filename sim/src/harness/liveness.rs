//! The liveness phase: after the faults stop, every process's last caller
//! must be granted (after a fresh login where the session ended, judged by
//! the logout rules when it did); [`judge_healed`] gives the verdict, as in
//! tier 2.

use super::*;

impl World {
    /// Runs the whole campaign schedule: the safety phase with faults, then
    /// the healed liveness phase; then checks that the session settled.
    pub fn run(&mut self) {
        let safety_end = MonoTime::ZERO.saturating_add(self.config.safety_phase);
        self.run_until(safety_end);
        self.heal();
    }

    /// The liveness phase: faults stop, a suspended client wakes, and one last
    /// caller must be granted within the bounds (after a fresh login if the
    /// session ended). Records a violation if not.
    pub fn heal(&mut self) {
        let safety_end = self.now;
        self.config.faults = Faults::none();
        self.scripted.clear();
        self.scripted_store.clear();
        self.crash_at_command = None;
        // Healed: a suspended client wakes first, then one last caller must be
        // answered and the session must settle within the bounds.
        self.wake();
        self.end_pauses();
        let wait_bound = self.config.session.wait_bound();
        let end = safety_end.saturating_add(self.config.liveness_phase).max(self.now.saturating_add(wait_bound * 2));
        let last_call_at = end.saturating_sub(wait_bound + Duration::from_secs(5));
        self.demand_until = Some(last_call_at);
        self.run_until(last_call_at);
        let processes = 0..self.processes.len();
        for p in processes.clone() {
            if self.session_of(p).state().needs_login() {
                self.log_in_at(p);
            }
        }
        let mut last: Vec<CallerId> = processes.clone().map(|p| self.want_token_at(p)).collect();
        self.run_until(end);
        let mut again = false;
        for p in processes.clone() {
            let caller = last.get(p).copied().unwrap_or(CallerId(0));
            let told_logged_out = matches!(self.outcome(caller), Some(CallerOutcome::Failed(FailReason::LoggedOut(_))));
            let needs_login = self.session_of(p).state().needs_login();
            let logged_out = told_logged_out && needs_login;
            // The session ended after the caller asked (a refresh already out
            // was refused: tier-1 seed 10327160, a rotation lost in a crash
            // before healing), and the user's login landed before this check.
            // The logout was judged; the session goes on, so ask again.
            let logged_in_since =
                told_logged_out && !needs_login && self.process(p).logged_out_at.is_some_and(|at| at >= last_call_at);
            // Nothing but the user can renew these: no refresh token left, or
            // the server asked for the user's interaction.
            let ran_out = matches!(
                self.outcome(caller),
                Some(CallerOutcome::Failed(FailReason::MissingRefreshToken | FailReason::InteractionRequired(_)))
            );
            if logged_out || ran_out {
                // The session held a token that had died meanwhile (expired,
                // revoked, or ended by another process); the logout was judged
                // when it happened. A fresh login must then work.
                self.log_in_at(p);
            }
            if logged_out || ran_out || logged_in_since {
                if let Some(slot) = last.get_mut(p) {
                    *slot = self.want_token_at(p);
                }
                again = true;
            }
        }
        if again {
            self.run_until(self.now.saturating_add(wait_bound * 2));
        }
        self.land_store_work();
        self.finish();
        for p in processes {
            let caller = last.get(p).copied().unwrap_or(CallerId(0));
            let last_unserved = match self.outcome(caller) {
                Some(CallerOutcome::Granted(_)) => None,
                Some(other) => Some(format!("{other:?}")),
                None => Some("never answered".to_owned()),
            };
            let state = self.session_of(p).state();
            let process = format!("process {p}");
            // Sessions that ended were logged in again above: none is left ended.
            let healed = Healed {
                process: &process,
                unserved: u64::from(last_unserved.is_some()),
                last_unserved,
                state: Some(state),
                evidence: None,
                told_ended: None,
            };
            let judged = judge_healed(&self.config.session, &self.config.authority, &healed, self.now);
            self.extra.extend(judged.err());
        }
    }

    /// Ends the run: liveness checks that need the whole run.
    pub fn finish(&mut self) {
        let now = self.now;
        for process in &mut self.processes {
            process.machine.monitor.finish(now, true);
        }
    }
}
