//! The simulated network between the sessions and the authority: latency,
//! sampled fates (lost requests, lost answers, errors), delivery, and the
//! authority serving a refresh.

use super::*;

impl World {
    pub(super) fn next_arrival(&mut self) -> MonoTime {
        let mean = self.config.demand.map_or(Duration::from_secs(1), |d| d.mean_interval);
        let millis = u64::try_from(mean.as_millis()).unwrap_or(u64::MAX).max(1);
        self.now.saturating_add(Duration::from_millis(1 + self.rng.below(2 * millis)))
    }

    /// One caller of the app's demand, at a process drawn at random: it logs
    /// the user out, forces a refresh, or (mostly) wants a token.
    fn caller_arrives(&mut self) {
        let p = if self.processes.len() > 1 { self.rng.below(self.processes.len() as u64) as usize } else { 0 };
        if self.chance(self.config.faults.logout, "logout") {
            self.log_out_at(p);
        } else if self.rng.chance(1, 40) {
            // The app forces a refresh now and then (a changed profile, a suspect token).
            self.force_refresh_at(p);
        } else {
            self.want_token_at(p);
        }
    }

    pub(super) fn schedule(&mut self, at: MonoTime, pending: Pending) {
        self.queue.push(at, pending);
    }

    /// Whether a fault of `kind` strikes now, counted if it does.
    pub(super) fn chance(&mut self, per_mille: u16, kind: &'static str) -> bool {
        let hit = self.draw(per_mille);
        if hit {
            self.count_fault(kind);
        }
        hit
    }

    /// Whether an event with this chance in a thousand happens now.
    pub(super) fn draw(&mut self, per_mille: u16) -> bool {
        per_mille > 0 && self.rng.chance(u64::from(per_mille), 1000)
    }

    pub(super) fn count_fault(&mut self, kind: &'static str) {
        *self.stats.tally.faults.entry(kind).or_default() += 1;
    }

    pub(super) fn latency(&mut self) -> (Duration, bool) {
        let extra = if self.chance(self.config.faults.delay, "delay") {
            let max = u64::try_from(self.config.faults.max_delay.as_millis()).unwrap_or(0);
            Duration::from_millis(self.rng.below(max + 1))
        } else {
            Duration::ZERO
        };
        (self.config.latency + extra, extra.is_zero())
    }

    pub(super) fn fate(&mut self) -> Fate {
        if let Some(fate) = self.scripted.pop_front() {
            return fate;
        }
        let f = self.config.faults;
        if self.chance(f.drop_request, "drop_request") {
            Fate::DropRequest
        } else if self.chance(f.refused, "refused") {
            Fate::Refused
        } else if self.chance(f.server_error, "server_error") {
            Fate::ServerError
        } else if self.chance(f.rate_limit, "rate_limit") {
            Fate::RateLimited(Duration::from_secs(1 + self.rng.below(60)))
        } else if self.chance(f.policy_refusal, "policy_refusal") {
            let pick = self.rng.below(PolicyRefusal::ALL.len() as u64) as usize;
            Fate::PolicyRefusal(PolicyRefusal::ALL.get(pick).copied().unwrap_or(PolicyRefusal::InvalidClient))
        } else if self.chance(f.drop_response, "drop_response") {
            Fate::DropResponse
        } else if self.chance(f.mangle_response, "mangle_response") {
            Fate::MangleResponse
        } else if self.chance(f.duplicate_response, "duplicate_response") {
            Fate::DuplicateResponse
        } else {
            Fate::Deliver
        }
    }

    pub(super) fn deliver(&mut self, pending: Pending) {
        // Server-side arrivals happen whatever the client does.
        let pending = match pending {
            Pending::RefreshArrives { incarnation, id, token, proof, fate, sent_at } => {
                return self.serve_refresh(incarnation, id, &token, proof.as_deref(), fate, sent_at);
            }
            Pending::RevokeArrives { incarnation, id, token, latency } => {
                let _ = self.authority.revoke(self.now, CLIENT_ID, token.expose_secret());
                self.observe_authority();
                self.schedule(self.now.saturating_add(latency), Pending::RevocationAnswered { incarnation, id });
                return;
            }
            Pending::ResourceArrives { incarnation, caller, grant, healthy, retried_at } => {
                return self.serve_resource(incarnation, caller, &grant, healthy, retried_at);
            }
            Pending::LockReleased { holder, fence, cause } => return self.database_releases(holder, fence, cause),
            // A stall that ends while the whole machine sleeps just ends: the
            // wake-up ticks every process. (Frozen with the rest instead, the
            // stall would outlast its end, and inputs deferred to that end
            // would be deferred to the past again and again: a busy loop
            // found by a fresh range, seed 1765571248.)
            Pending::ProcessResumes { incarnation } if self.suspended_until.is_some() => {
                if let Some(p) = self.process_of(incarnation) {
                    self.process_mut(p).paused_until = None;
                }
                return;
            }
            other => other,
        };
        let Some(pending) = self.client_frozen(pending) else { return };
        let addressee = match &pending {
            Pending::RefreshAnswered { incarnation, .. }
            | Pending::RefreshFailed { incarnation, .. }
            | Pending::StoreDone { incarnation, .. }
            | Pending::ResourceAnswered { incarnation, .. }
            | Pending::RevocationAnswered { incarnation, .. }
            | Pending::Input { incarnation, .. }
            | Pending::ProcessResumes { incarnation } => self.process_of(*incarnation),
            _ => None,
        };
        match (pending, addressee) {
            // Random demand ends with the last caller of the liveness phase, so
            // every caller has its whole bound before the verdict.
            (Pending::CallerArrives, _) if self.demand_until.is_some_and(|until| self.now > until) => {}
            (Pending::CallerArrives, _) => self.callers_arrive(),
            (Pending::RefreshAnswered { id, outcome, dpop_nonce, .. }, Some(p)) => {
                self.input(p, Event::RefreshCompleted { id, outcome: *outcome, dpop_nonce });
            }
            (Pending::RefreshFailed { id, failure, .. }, Some(p)) => {
                self.input(p, Event::RefreshFailed { id, failure });
            }
            (Pending::StoreDone { op, outcome, .. }, Some(p)) => self.store_done(p, op, outcome),
            (Pending::Input { mut event, .. }, Some(p)) => {
                // The driver reads the wall clock as it hands over a store's
                // answer: after the stall, not when the store answered.
                if let Event::StoreLoaded { unix_now, boot_now, .. } | Event::StoreLocked { unix_now, boot_now, .. } =
                    &mut *event
                {
                    (*unix_now, *boot_now) = (self.machine_wall(), Some(boot_at(self.now)));
                }
                self.input(p, *event);
            }
            (Pending::ProcessResumes { .. }, Some(p)) => self.resume(p),
            (Pending::RevocationAnswered { id, .. }, Some(p)) => self.input(p, Event::RevocationEnded { id }),
            (Pending::ResourceAnswered { caller, generation, ok: false, .. }, Some(p)) => {
                self.stats.unauthorized += 1;
                // One retry per request, never more: no 401 loop.
                let retried = self.process_mut(p).retried.entry(caller).or_insert(false);
                if !*retried {
                    *retried = true;
                    self.input(p, Event::Unauthorized { caller, generation });
                }
            }
            (Pending::Login { process, always }, _) => {
                if always {
                    self.login_pending = false;
                }
                if always || self.session_of(process).state().needs_login() {
                    self.log_in_at(process);
                }
            }
            // Only the latest resume wakes the client.
            (Pending::Resume, _) if self.suspended_until.is_some_and(|until| until <= self.now) => {
                self.machine_resumes()
            }
            // Addressed to an incarnation that crashed.
            _ => {}
        }
    }

    /// The next callers arrive (a burst draws its size; one caller at a time
    /// draws nothing), and the arrival after them is scheduled.
    fn callers_arrive(&mut self) {
        let burst = self.config.demand.map_or(1, |demand| demand.burst);
        let callers = if burst > 1 { 1 + self.rng.below(burst) } else { 1 };
        for _ in 0..callers {
            self.caller_arrives();
        }
        let next = self.next_arrival();
        self.schedule(next, Pending::CallerArrives);
    }

    /// The whole machine wakes from a suspend: every process not stalled
    /// sees its timers at once.
    fn machine_resumes(&mut self) {
        self.suspended_until = None;
        if let Some(since) = self.asleep_since.take() {
            self.asleep_before = self.asleep_before.saturating_add(self.now.saturating_duration_since(since));
        }
        note!(self, "{} resume", self.now);
        for p in 0..self.processes.len() {
            if self.process(p).paused_until.is_some() {
                continue;
            }
            let now = self.session_now(p);
            self.process_mut(p).machine.session.handle_timeout(now);
            self.drain(p);
        }
    }

    /// The resource server checks `grant` for `caller` and answers after a latency.
    pub(super) fn serve_resource(
        &mut self,
        incarnation: u32,
        caller: CallerId,
        grant: &AccessGrant,
        healthy: bool,
        retried_at: Option<MonoTime>,
    ) {
        let result = self.authority.validate(self.now, grant.access_token.expose_secret());
        self.observe_authority();
        if result == Err(crate::authority::InvalidToken::Expired) && healthy {
            let detail = format!("{caller} used {} after it expired", grant.generation);
            self.extra.push(Violation { invariant: Invariant::C7, at: self.now, detail });
        }
        if let (Some(retried_at), Err(reason)) = (retried_at, result) {
            self.stats.retries_refused += 1;
            // U8: a retry nothing raced, on a healthy network, gets a
            // token the server has not already killed.
            let untouched = healthy && !self.killable_unseen(&grant.access_token, incarnation, retried_at);
            let killed =
                matches!(reason, crate::authority::InvalidToken::Expired | crate::authority::InvalidToken::Replaced);
            if untouched && killed {
                let detail = format!("{caller}'s retry with {} was refused: {reason:?}", grant.generation);
                self.extra.push(Violation { invariant: Invariant::U8, at: self.now, detail });
            }
        }
        let (latency, _) = self.latency();
        let answer =
            Pending::ResourceAnswered { incarnation, caller, generation: grant.generation, ok: result.is_ok() };
        self.schedule(self.now.saturating_add(latency), answer);
    }

    /// A 429's headers: its `Retry-After` in seconds, or every other time
    /// as an HTTP-date with the server's `Date` (RFC 9110 §10.2.3 allows
    /// both). Tier 1's server keeps the world's clock (tier 2's are off by
    /// up to an hour); the date is to the second, as `Date` is, so the two
    /// differ by the wait exactly, while a client that read the date
    /// against its own clock would read a fraction of a second less.
    fn rate_limited(&mut self, wait: Duration) -> Vec<(&'static str, Vec<u8>)> {
        self.rate_limited += 1;
        if self.rate_limited % 2 == 1 {
            return vec![("Retry-After", wait.as_secs().to_string().into_bytes())];
        }
        let server_now = UnixTime::from_secs(wall_at(self.now).as_secs());
        let retry_at = server_now.saturating_add(wait);
        vec![("Retry-After", http_date(retry_at).into_bytes()), ("Date", http_date(server_now).into_bytes())]
    }

    /// C6: the wait a 429 asked is the one the session reads, in either form.
    fn check_wait_read(&mut self, asked: Duration, outcome: &Classified) {
        let read = match outcome {
            Classified::Transient(oauth::Transient { cause: oauth::TransientCause::RateLimited, retry_after }) => {
                *retry_after
            }
            _ => None,
        };
        if read != Some(asked) {
            let detail = format!("a 429 asked to wait {asked:?} and the session read {read:?}");
            self.extra.push(Violation { invariant: Invariant::C6, at: self.now, detail });
        }
    }

    pub(super) fn serve_refresh(
        &mut self,
        incarnation: u32,
        id: RefreshId,
        token: &RefreshToken,
        proof: Option<&Proof>,
        fate: Fate,
        sent_at: MonoTime,
    ) {
        let mut redeemed = false;
        let (status, mut headers, body): (u16, Vec<(&str, Vec<u8>)>, SecretString) = match fate {
            Fate::ServerError => (503, vec![], SecretString::from("<html>503 Service Unavailable</html>")),
            Fate::RateLimited(wait) => (429, self.rate_limited(wait), SecretString::from("")),
            Fate::PolicyRefusal(refusal) => {
                let (status, body) = refusal.response();
                (status, vec![], SecretString::from(body))
            }
            _ => {
                let result = self.authority.refresh(self.now, CLIENT_ID, None, token.expose_secret(), proof);
                self.observe_authority();
                redeemed = result.is_ok();
                match result {
                    Ok(issued) => {
                        self.note_issued_to(&issued.access_token, incarnation);
                        self.issued_at.entry(issued.access_token.fingerprint()).or_insert(self.now);
                        self.redemptions.push(Redemption { at: self.now, life: incarnation, answer_lost: false });
                        (200, vec![], issued.to_json())
                    }
                    Err(refusal) => {
                        if refusal == Refusal::UseDpopNonce {
                            *self.stats.tally.faults.entry("dpop_nonce_challenge").or_default() += 1;
                        }
                        (400, vec![], SecretString::from(Refusal::to_json(refusal)))
                    }
                }
            }
        };
        // A server with nonces names its current one in every answer to a
        // proof (its challenge included), as oidc-provider does.
        if let Some(nonce) = proof.and_then(|_| self.authority.dpop_nonce(self.now)) {
            headers.push(("DPoP-Nonce", nonce.into_bytes()));
        }
        let (latency, _) = self.latency();
        let at = self.now.saturating_add(latency);
        let arrives_at = match fate {
            Fate::Delay(extra) => at.saturating_add(extra),
            _ => at,
        };
        let too_late = arrives_at.saturating_duration_since(sent_at) >= self.config.session.request_timeout;
        if matches!(fate, Fate::DropResponse | Fate::MangleResponse) || too_late {
            // The server committed; the client will not read (in time) what it did.
            self.evidence.lost_answer = true;
            if let Some(last) = self.redemptions.last_mut().filter(|r| r.at == self.now && r.life == incarnation) {
                last.answer_lost = true;
            }
            if redeemed {
                let unread = self.unread_successes.entry(token.fingerprint()).or_default();
                *unread += 1;
                // More than one cycle's attempts: more than grace sized for one cycle covers.
                self.evidence.lost_beyond_a_cycle |= *unread > self.config.session.backoff.attempts;
            }
        }
        let body = match fate {
            Fate::DropResponse => return,
            Fate::MangleResponse => SecretString::from("<html>gateway error</html>"),
            _ => body,
        };
        let headers: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (*n, v.as_slice())).collect();
        let response = oauth::Response { status, headers: &headers, body: body.expose_secret().as_bytes() };
        let unix_now = self.machine_wall();
        let outcome = oauth::classify(&self.config.session.policy, &response, Some(unix_now));
        if let Fate::RateLimited(wait) = fate {
            self.check_wait_read(wait, &outcome);
        }
        let dpop_nonce = response.dpop_nonce();
        let at = match fate {
            Fate::Delay(extra) => at.saturating_add(extra),
            _ => at,
        };
        if fate == Fate::DuplicateResponse {
            let again = Pending::RefreshAnswered {
                incarnation,
                id,
                outcome: Box::new(outcome.clone()),
                dpop_nonce: dpop_nonce.clone(),
            };
            self.schedule(at.saturating_add(self.config.latency), again);
        }
        self.schedule(at, Pending::RefreshAnswered { incarnation, id, outcome: Box::new(outcome), dpop_nonce });
    }

    /// Records which life first received an access token. A grace replay can
    /// hand a token first issued to one life (a process that then crashed, or
    /// another process sharing the store) to another, which cannot know when
    /// the server issued it: a replay that keeps the original expiry then
    /// looks younger than it is. Such tokens are touched by that fault (the
    /// crash, or the lost answers that made another process present the same
    /// refresh token), and C7 and U8 do not judge their use.
    pub(super) fn note_issued_to(&mut self, access: &freshen_core::token::AccessToken, incarnation: u32) {
        let fingerprint = access.fingerprint();
        let first = *self.first_received_by.entry(fingerprint).or_insert(incarnation);
        if first != incarnation && self.cross_life_replays.insert(fingerprint) {
            self.stats.cross_life_replays += 1;
        }
    }

    /// Whether a refresh may have killed `access` behind the back of life
    /// `incarnation` (which was handed it for a retry at `retried_at`): one
    /// the server served after issuing it, for another life (which this one
    /// cannot see), or whose answer this life never read (lost, mangled, too
    /// late), or that came after the retry was granted (a race, not a bug).
    pub(super) fn killable_unseen(
        &self,
        access: &freshen_core::token::AccessToken,
        incarnation: u32,
        retried_at: MonoTime,
    ) -> bool {
        let Some(issued_at) = self.issued_at.get(&access.fingerprint()).copied() else { return true };
        self.redemptions
            .iter()
            .any(|r| r.at >= issued_at && (r.life != incarnation || r.answer_lost || r.at >= retried_at))
    }

    pub(super) fn observe_authority(&mut self) {
        for entry in self.authority.drain_audit() {
            if let crate::authority::AuditOutcome::Refused(refusal) = entry.outcome {
                self.evidence.refusal = Some(refusal);
            }
            self.revoked_by_the_app.observe(&entry, CLIENT_ID);
            self.authority_monitor.observe(&entry);
        }
    }
}
