//! Carrying out each process's commands: inputs in, commands out, each
//! command turned into network, store or timer work.

use super::*;

impl World {
    pub(super) fn input(&mut self, p: usize, event: Event) {
        if let Some(until) = self.process(p).paused_until {
            // A stalled process handles it once it resumes.
            let incarnation = self.process(p).incarnation;
            self.schedule(until, Pending::Input { incarnation, event: Box::new(event) });
            return;
        }
        note_at!(self, p, "{} {event:?}", self.now);
        let now = self.now;
        self.shared_monitor.event(p, now, &event);
        let session_now = self.session_now(p);
        self.process_mut(p).machine.handle(now, session_now, event);
        self.drain(p);
    }

    /// Carries out every command process `p`'s session queued.
    pub(super) fn drain(&mut self, p: usize) {
        let now = self.now;
        while let Some(command) = self.process_mut(p).machine.next_command(now) {
            note_at!(self, p, "{}   -> {:?}", self.now, crate::check::traced(&command));
            self.shared_monitor.command(p, now, &command);
            self.execute(p, command);
            self.commands_seen += 1;
            if self.crash_at_command == Some(self.commands_seen) {
                // The commands still queued die with the process, and the step
                // never ends: what holds between steps need not hold mid-step.
                self.crash_process(p);
                return;
            }
        }
        let process = self.process_mut(p);
        process.machine.step_end(now, process.clock.lag);
        // Faults at command boundaries.
        if self.suspended_until.is_none() {
            // Counted where every crash is, sampled or scripted.
            if self.draw(self.config.faults.crash) {
                self.crash_process(p);
            } else if self.chance(self.config.faults.clock_jump, "clock_jump") {
                let pause =
                    Duration::from_secs(1 + self.rng.below(2 * self.config.authority.access_ttl.as_secs().max(1)));
                if self.config.wall_steps_back { self.step_wall_back(pause) } else { self.suspend(pause) }
            } else if self.process(p).paused_until.is_none()
                && self.now >= self.process(p).stall_free_until
                && self.chance(self.config.faults.pause, "pause")
            {
                self.pause(p);
            }
        }
    }

    pub(super) fn execute(&mut self, p: usize, command: Command) {
        let incarnation = self.process(p).incarnation;
        match command {
            Command::Io(Io::LoadStore { op } | Io::LockStore { op }) => {
                let at = self.store_answer_at();
                if self.chance(self.config.faults.store_load_fail, "store_load_fail") {
                    let outcome = StoreOutcome::Failed { landed: None };
                    self.schedule(at, Pending::StoreDone { incarnation, op, outcome });
                } else if !matches!(command, Command::Io(Io::LockStore { .. })) {
                    let outcome = StoreOutcome::Loaded(self.blob.clone());
                    self.schedule(at, Pending::StoreDone { incarnation, op, outcome });
                } else if self.lock_holder.is_none() {
                    self.grant_lock(incarnation, op);
                } else {
                    // Waits until the holder lets go, or the machine gives up.
                    self.lock_waiters.push_back((incarnation, op));
                }
            }
            Command::Io(Io::UnlockStore) => self.leave_lock(incarnation),
            Command::Io(Io::Persist { op, session }) => self.write(p, op, StoreChange::Put(session.encode())),
            Command::Io(Io::ClearStore { op }) => self.write(p, op, StoreChange::Delete),
            Command::Io(Io::SendRefresh { id, refresh_token, dpop, .. }) => {
                self.send_refresh(incarnation, id, refresh_token, dpop);
            }
            Command::Io(Io::Revoke { id, refresh_token }) => {
                let (latency, _) = self.latency();
                let arrives = Pending::RevokeArrives { incarnation, id, token: refresh_token, latency };
                self.schedule(self.now.saturating_add(latency), arrives);
            }
            Command::LogoutFinished { .. } => {}
            Command::LoginStored { callers, generation } => {
                for caller in callers {
                    self.outcomes.insert(caller, CallerOutcome::LoginStored(generation));
                }
            }
            Command::Grant { callers, grant } => self.grant(p, incarnation, callers, &grant),
            Command::Fail { callers, reason } => {
                // An access token alone has run out, or the server wants the
                // user to act: the app sends the user to log in.
                let relogin = matches!(reason, FailReason::MissingRefreshToken | FailReason::InteractionRequired(_))
                    && !self.login_pending;
                for caller in callers {
                    self.stats.tally.failed += 1;
                    self.outcomes.insert(caller, CallerOutcome::Failed(reason.clone()));
                }
                if relogin && self.config.demand.is_some() {
                    self.login_pending = true;
                    let at = self.now.saturating_add(Duration::from_secs(30));
                    self.schedule(at, Pending::Login { process: p, always: true });
                }
            }
            Command::StateChanged(view) if view.needs_login() => {
                let cause = view.logout_cause().unwrap_or(LogoutCause::NoSession);
                *self.stats.tally.logouts.entry(logout_name(&cause).to_owned()).or_default() += 1;
                let mut evidence = self.evidence;
                evidence.revoked |= self.revoked_by_the_app.explains(evidence.refusal);
                let judged = judge_logout(&self.config.session, &self.config.authority, &cause, evidence, self.now);
                self.extra.extend(judged.err());
                self.process_mut(p).logged_out_at = Some(self.now);
                // The user logs in again a while later, so the run goes on.
                if self.config.demand.is_some() {
                    let at = self.now.saturating_add(Duration::from_secs(30));
                    self.schedule(at, Pending::Login { process: p, always: false });
                }
            }
            Command::Publish(_) | Command::StateChanged(_) => {}
        }
    }

    /// `key`'s thumbprint, worked out once per key the world made rather
    /// than once per value a process decoded (see `keys_made`).
    fn thumbprint_of(&self, key: &DpopKey) -> String {
        let made = self.keys_made.iter().find(|made| made.is_same_key(key));
        made.unwrap_or(key).thumbprint()
    }

    /// A refresh request leaves: its fate and latency are drawn now.
    fn send_refresh(
        &mut self,
        incarnation: u32,
        id: RefreshId,
        refresh_token: RefreshToken,
        dpop: Option<ProofNeeded>,
    ) {
        self.stats.tally.refreshes += 1;
        // Tier 1 has no wire: the proof is what the server's rules read of
        // it (the signature itself is tier 2's and `serve`'s to check).
        let proof = dpop.map(|needed| {
            self.proofs_sent += 1;
            Box::new(Proof {
                jkt: self.thumbprint_of(&needed.key),
                jti: format!("jti-{}", self.proofs_sent),
                nonce: needed.nonce.map(|n| n.as_str().to_owned()),
            })
        });
        let fate = self.fate();
        let (latency, _) = self.latency();
        let at = self.now.saturating_add(latency);
        match fate {
            Fate::DropRequest => {}
            Fate::Refused => {
                let failure = TransportFailure::NotSent;
                self.schedule(at, Pending::RefreshFailed { incarnation, id, failure });
            }
            _ => {
                let sent_at = self.now;
                let arrives = Pending::RefreshArrives { incarnation, id, token: refresh_token, proof, fate, sent_at };
                self.schedule(at, arrives);
            }
        }
    }

    /// Callers got `grant`: each uses it at the resource.
    fn grant(&mut self, p: usize, incarnation: u32, callers: Callers, grant: &AccessGrant) {
        for caller in callers {
            self.stats.tally.granted += 1;
            self.outcomes.insert(caller, CallerOutcome::Granted(grant.generation));
            let (latency, healthy) = self.latency();
            // C7 speaks of a healthy network and a known expiry.
            let replayed = self.cross_life_replays.contains(&grant.access_token.fingerprint());
            let healthy = healthy && !self.clock_jumped && grant.usable_until.is_some() && !replayed;
            let retry = self.process(p).retried.get(&caller).copied().unwrap_or(false);
            let retried_at = retry.then_some(self.now);
            let pending = Pending::ResourceArrives { incarnation, caller, grant: grant.clone(), healthy, retried_at };
            self.schedule(self.now.saturating_add(latency), pending);
        }
    }

    pub(super) fn client_frozen(&mut self, pending: Pending) -> Option<Pending> {
        match self.suspended_until {
            Some(until) if self.now < until => {
                // The client sleeps: its inputs wait until it resumes.
                self.schedule(until, pending);
                None
            }
            _ => Some(pending),
        }
    }
}
