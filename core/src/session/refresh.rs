//! Refresh cycles: wanting a token, forcing a refresh, sending attempts,
//! reading their answers, backing off, logging in and out.

use super::*;

impl Session {
    pub(super) fn on_token_wanted(&mut self, caller: CallerId) {
        self.add_waiter(caller, Needs::Any);
        if self.planted(Plant::NoSingleFlight)
            && matches!(&self.state, State::Refreshing(t, Cycle { phase: Phase::InFlight { .. }, .. }) if !t.usable_at(self.now))
        {
            self.send_next_attempt();
        }
    }

    pub(super) fn on_unauthorized(&mut self, caller: CallerId, generation: Generation) {
        self.on_invalidated(generation);
        // A refresh that runs when the retry is answered may kill the token
        // it would get (servers delete the previous access token when a
        // refresh commits): the retry waits until none is out, including one
        // chained after the cycle this 401 starts (U8).
        let refreshing = self.running_cycle().is_some() || self.straggler.is_some();
        let ignores = refreshing && self.planted(Plant::RetryIgnoresRunningRefresh);
        let needs = if ignores { Needs::Any } else { Needs::NoRefreshInFlight };
        self.add_waiter(caller, needs);
    }

    /// Only the current token can be proven bad; a 401 for an older one just
    /// means the caller retries with the current one.
    pub(super) fn on_invalidated(&mut self, generation: Generation) {
        if let Some(tokens) = self.tokens_mut()
            && tokens.generation == generation
        {
            tokens.access_rejected = true;
        } else {
            self.ignore("an invalidation of a token no longer held");
        }
    }

    /// A forced refresh: the caller gets a token from a cycle that starts
    /// after it asked, even if the one held is fresh. Under rotation, one
    /// asked while a cycle runs waits for it and then presents its result.
    pub(super) fn on_refresh_wanted(&mut self, caller: CallerId) {
        self.add_waiter(caller, Needs::CycleFrom(self.cycles_started + 1));
        let in_flight = matches!(&self.state, State::Refreshing(_, Cycle { phase: Phase::InFlight { .. }, .. }));
        if in_flight && self.planted(Plant::ForcedRefreshNotChained) {
            // The broken variant sends at once, with the token already in flight.
            self.send_next_attempt();
        }
    }

    /// Answers that carry news about the token the session holds (a success, a
    /// salvaged rotation, a rejection) count whichever attempt they answer;
    /// answers that only say "not now" count for the attempt in flight.
    pub(super) fn on_refresh_completed(&mut self, id: RefreshId, outcome: Classified) {
        let current = self.answers_current_tokens(id);
        match self.binding_kept(outcome) {
            Classified::Success(response) => {
                // A rejection of the held token is newer news than a delayed
                // success that keeps it: the token stays dead.
                let revives_dead_token = matches!(
                    &self.state,
                    State::Refreshing(held, Cycle { phase: Phase::Rereading { .. }, .. })
                        if response.refresh_token.as_ref().is_none_or(|r| held.holds_refresh(r))
                );
                // A late answer to an earlier attempt with the same refresh
                // token is older than the one these tokens came from: the
                // server issued its access token first, and may have deleted
                // it on the later redemption. One that rotates the refresh
                // token is news all the same: the token held may be spent.
                let superseded = self.tokens().is_some_and(|t| {
                    t.answered_by.is_some_and(|later| id < later)
                        && response.refresh_token.as_ref().is_none_or(|r| t.holds_refresh(r))
                });
                if current && !revives_dead_token && !superseded {
                    self.adopt_response(id, response);
                } else if let (State::LoggedOut(_), Some(rotated)) = (&self.state, &response.refresh_token) {
                    // Tokens issued after logout: revoke what the user no longer wants.
                    self.revoke(rotated.clone());
                } else {
                    self.heed_late_lifetime(id, &response);
                }
            }
            Classified::Terminal(error) => {
                if current {
                    self.on_terminal(id, error);
                }
            }
            Classified::NonceRequired(error) => {
                if self.in_flight(id) {
                    self.send_again_with_nonce(error);
                }
            }
            Classified::Malformed(malformed) => {
                let salvaged = current && self.salvage(id, malformed.salvaged_refresh_token);
                if self.in_flight(id) {
                    self.attempt_failed(AttemptFailure::Malformed(malformed.reason), !salvaged, None);
                }
            }
            Classified::Transient(Transient { cause, retry_after }) => {
                if self.in_flight(id) {
                    // A 5xx may come after the server committed; a 429 or a retry request did not.
                    let unknown = matches!(cause, TransientCause::ServerError(_));
                    self.attempt_failed(AttemptFailure::Server(cause), unknown, retry_after);
                }
            }
            Classified::Rejected(Rejected::Error(error)) if error.code == "invalid_request" && self.in_flight(id) => {
                self.on_invalid_request(id, error);
            }
            Classified::Rejected(rejected) => {
                if self.in_flight(id) {
                    self.end_cycle(FailReason::Rejected(rejected), None);
                }
            }
            Classified::InteractionRequired(error) if self.planted(Plant::RetriesInteractionRequired) => {
                if self.in_flight(id) {
                    let cause = TransientCause::RetryRequested(error);
                    self.attempt_failed(AttemptFailure::Server(cause), false, None);
                }
            }
            Classified::InteractionRequired(error) => {
                // Like a rejection, it speaks of the token, not the attempt: a
                // late one counts too. While the store is re-read after an
                // `invalid_request`, it is what the refusal comes to; after an
                // `invalid_grant`, the logout it may end in outranks it.
                if !current {
                    return;
                }
                match &mut self.state {
                    State::Refreshing(
                        _,
                        Cycle { phase: Phase::Rereading { otherwise: IfNothingNewer::LogOut, .. }, .. },
                    ) => {}
                    State::Refreshing(_, Cycle { phase: Phase::Rereading { error: refusal, otherwise, .. }, .. }) => {
                        *refusal = error;
                        *otherwise = IfNothingNewer::AwaitUser;
                    }
                    _ => {
                        self.abandon_in_flight(Some(id));
                        self.end_cycle(FailReason::InteractionRequired(error), None);
                    }
                }
            }
        }
    }

    /// A bound session never takes tokens of another type (a server that
    /// answers a proof with bearer tokens did not bind them: no silent
    /// downgrade), and a bearer session cannot present DPoP tokens. Such an
    /// answer is unusable; its rotated refresh token is salvaged like any
    /// unusable success's.
    fn binding_kept(&self, outcome: Classified) -> Classified {
        let Classified::Success(response) = outcome else { return outcome };
        let bound = self.tokens().is_some_and(|t| t.dpop_key.is_some());
        if (response.token_type == TokenType::DPoP) == bound {
            return Classified::Success(response);
        }
        Classified::Malformed(Malformed {
            status: 200,
            reason: MalformedReason::UnsupportedTokenType(response.token_type),
            salvaged_refresh_token: response.refresh_token,
        })
    }

    /// `use_dpop_nonce`: the server did not act on the attempt (RFC 9449
    /// §8) and wants it again with its nonce, which the answer brought. It is
    /// sent again at once as the same attempt: not a failure, not counted
    /// against the backoff, and not a second use of the refresh token. A
    /// server that keeps asking is refusing: past [`MAX_NONCE_RETRIES`] in a
    /// row (or with no nonce to send), the attempt failed. A bearer session
    /// has no proof to put a nonce in: the server wants a client bound by
    /// DPoP, and the app is misconfigured.
    fn send_again_with_nonce(&mut self, error: OAuthError) {
        let unproven = self.planted(Plant::RefreshesUnproven);
        if self.tokens().is_none_or(|t| t.dpop_key.is_none()) {
            self.end_cycle(FailReason::Rejected(Rejected::Error(error)), None);
            return;
        }
        let backs_off = self.planted(Plant::NonceChallengeBacksOff);
        if self.nonce_retries >= MAX_NONCE_RETRIES || self.dpop_nonce.is_none() || backs_off {
            let cause = TransientCause::RetryRequested(error);
            self.attempt_failed(AttemptFailure::Server(cause), false, None);
            return;
        }
        self.nonce_retries += 1;
        let now = self.now;
        let timeout = self.config.request_timeout;
        let lock_lost = self.locks_store() && !self.store.locked;
        let State::Refreshing(tokens, cycle) = &mut self.state else { return };
        if lock_lost {
            // The lock went with a fenced write while this attempt was out:
            // it goes again only under a new lock, after the store is read
            // under it, as any attempt does (C1 across processes; tier-1
            // seed 1114259).
            cycle.phase = Phase::Locking;
            return;
        }
        let Some(refresh_token) = tokens.refresh.clone() else { return };
        let proof = tokens.proof_needed(&self.dpop_nonce, unproven);
        let id = self.outbox.send_refresh(now, refresh_token, cycle.attempt, self.cycles_started, proof);
        cycle.phase = Phase::InFlight { id, deadline: now.saturating_add(timeout) };
    }

    /// A success not adopted may still carry the access token held (one
    /// adopted from the store, or from another answer): its lifetime, counted
    /// as an adopted answer's would be, can only bring that token's death
    /// nearer (U8; the `shared_session_ops` regression input
    /// `late-copy-of-the-held-pair-shortens-its-life`).
    fn heed_late_lifetime(&mut self, id: RefreshId, response: &TokenResponse) {
        let Some(lifetime) = response.lifetime else { return };
        let held = self.tokens().and_then(|t| t.access.as_ref());
        if !held.is_some_and(|access| access.same_as(&response.access_token)) {
            return;
        }
        // From the first attempt that presented the same refresh token and
        // may have been redeemed unseen; unknown (forgotten) counts from the origin.
        let base = self.outbox.sent(id).map_or(MonoTime::ZERO, |answered| {
            self.outbox
                .recent_sends
                .iter()
                .filter(|sent| sent.presented == answered.presented && !sent.settled)
                .map(|sent| sent.at)
                .fold(answered.at, MonoTime::min)
        });
        let death = base.saturating_add(lifetime);
        if let Some(tokens) = self.tokens_mut()
            && let Some(expiry) = &mut tokens.expiry
        {
            *expiry = expiry.dying_by(death);
        }
    }

    /// Whether an answer to `id` speaks of the tokens held: it answered a
    /// presentation since they were taken, or one of the very refresh token
    /// held (taken again from the store after this session had presented
    /// it: its rotation is news all the same, and missing it would present
    /// the token again, C2; `shared_session_ops` regression input
    /// `a-late-rotation-of-a-token-taken-back-from-the-store`).
    pub(super) fn answers_current_tokens(&self, id: RefreshId) -> bool {
        let presented_held = |t: &TokenSet| {
            let held = t.refresh.as_ref().map(RefreshToken::fingerprint);
            self.outbox.sent(id).is_some_and(|sent| Some(sent.presented) == held)
        };
        self.tokens().is_some_and(|t| (t.presented_since <= id || presented_held(t)) && id < self.outbox.next_refresh)
    }

    pub(super) fn adopt_response(&mut self, id: RefreshId, response: TokenResponse) {
        let generation = self.next_generation();
        let next_refresh = self.outbox.next_refresh;
        let now = self.now;
        let retry = match &self.state {
            State::Refreshing(_, cycle) => cycle.attempt > 1 || !self.in_flight(id),
            _ => true,
        };
        self.abandon_in_flight(Some(id));
        let forget_rotation = retry && self.planted(Plant::RetryForgetsRotation);
        let Some(old) = self.take_tokens() else { return };
        // A response without a refresh token keeps the one held: that is the
        // policy of RFC 6749 §6 for servers that do not rotate.
        let refresh = match response.refresh_token {
            Some(rotated) if !forget_rotation => rotated,
            _ => match old.refresh.clone() {
                Some(held) => held,
                None => return,
            },
        };
        let kept = old.holds_refresh(&refresh);
        // A rotation's lifetime counts from the first attempt that presented
        // this token: the answer may be a grace replay of what the server
        // issued then (U8). An attempt too old to be remembered counts from
        // the origin, which is conservative. An answer that keeps the token
        // is no replay (a replay carries the rotated token): it counts from
        // its own attempt. Counted from an earlier one whose answer was lost,
        // every answer of a server that never rotates came already spent, and
        // the session refreshed back to back (tier-1 seed 1755559).
        self.outbox.note_answer(id, &refresh);
        let sent = self.outbox.sent(id);
        let sent_at = sent.map_or(MonoTime::ZERO, |s| s.at);
        let cycle = sent.map_or(0, |s| s.cycle);
        let first_send = old.first_send.filter(|_| !kept && !self.planted(Plant::LifetimeFromLastAttempt));
        let base = first_send.map_or(sent_at, |first| first.min(sent_at)).min(now);
        let expiry = response.lifetime.map(|lifetime| Expiry::issued(base, lifetime, &self.config, &mut self.rng));
        self.state = State::Valid(TokenSet {
            generation,
            access: Some(response.access_token),
            token_type: response.token_type,
            scope: response.scope.or(old.scope),
            refresh: Some(refresh),
            expiry,
            access_rejected: false,
            refresh_first: false,
            cycle,
            answered_by: Some(id),
            salvaged: false,
            // A kept token may still be redeemed by an attempt out with it,
            // whose answer may yet be a rotation: the next lifetime counts
            // from that attempt. One already answered (a 503, say) cannot
            // be replayed into a later answer: this one kept the token.
            first_send: if kept { self.outbox.first_in_flight(old.presented_since, Some(id)) } else { None },
            presented_since: if kept { old.presented_since } else { next_refresh },
            last_failure: None,
            // A late answer adopted while an attempt with the old token is still
            // out: that attempt may yet trip reuse detection, and if it does, a
            // lost answer is why.
            answer_lost: old.answer_lost && (kept || self.straggler.is_some()),
            from_login: false,
            write_may_have_landed: false,
            refresh_stored: kept && (old.refresh_stored || self.store.holds == Holds::Session(old.generation)),
            lineage: old.lineage,
            answered_unlocked: self.locks_store() && !self.store.locked,
            dpop_key: old.dpop_key,
        });
        self.store.revive();
    }

    /// Keeps a rotated refresh token found in an unusable answer: the server
    /// issued it, so it replaces the one held, and is written before anything
    /// else. Returns whether it did.
    pub(super) fn salvage(&mut self, id: RefreshId, rotated: Option<RefreshToken>) -> bool {
        let Some(rotated) = rotated.filter(|r| self.tokens().is_some_and(|t| !t.holds_refresh(r))) else {
            return false;
        };
        self.outbox.note_answer(id, &rotated);
        let generation = self.next_generation();
        let next_refresh = self.outbox.next_refresh;
        if let Some(tokens) = self.tokens_mut() {
            tokens.generation = generation;
            tokens.refresh = Some(rotated);
            tokens.salvaged = true;
            tokens.refresh_stored = false;
            tokens.first_send = None;
            tokens.presented_since = next_refresh;
            tokens.answer_lost = false;
        }
        self.store.revive();
        true
    }

    pub(super) fn on_terminal(&mut self, id: RefreshId, error: OAuthError) {
        self.abandon_in_flight(Some(id));
        let after_lost_response = self.tokens().is_some_and(|t| t.answer_lost);
        let after = self.store.next_op;
        match &mut self.state {
            State::Refreshing(_, cycle) if cycle.reread => {
                self.log_out(LogoutCause::RefreshTokenRejected { error, after_lost_response });
                return;
            }
            State::Refreshing(_, cycle) => {
                cycle.reread = true;
                cycle.phase = Phase::Rereading { error, after, otherwise: IfNothingNewer::LogOut };
            }
            State::Valid(_) | State::Expired(_) => {
                // The rejection outlived its cycle; the attempts are spent, so
                // only a token found in the store may be tried, once.
                let Some(tokens) = self.take_tokens() else { return };
                let phase = Phase::Rereading { error, after, otherwise: IfNothingNewer::LogOut };
                let cycle = Cycle { attempt: self.config.backoff.attempts, phase, reread: true };
                self.state = State::Refreshing(tokens, cycle);
            }
            State::Loading | State::LoggedOut(_) => return,
        }
        // Another process sharing the store may have rotated the token: look
        // once before giving the session up.
        self.store.revive();
    }

    /// A 400 `invalid_request` to a refresh: fosite answers so the loser of
    /// two concurrent rotations, so like `invalid_grant` it sends the session
    /// to the store first; unlike it, it never logs out.
    pub(super) fn on_invalid_request(&mut self, id: RefreshId, error: OAuthError) {
        self.abandon_in_flight(Some(id));
        let after = self.store.next_op;
        let State::Refreshing(_, cycle) = &mut self.state else { return };
        if cycle.reread {
            self.end_cycle(FailReason::Rejected(Rejected::Error(error)), None);
            return;
        }
        cycle.reread = true;
        cycle.phase = Phase::Rereading { error, after, otherwise: IfNothingNewer::Fail };
        self.store.revive();
    }

    /// Attempt failed without proving the token dead: back off and retry, or
    /// end the cycle when attempts run out or the server asks for too long a pause.
    pub(super) fn attempt_failed(
        &mut self,
        failure: AttemptFailure,
        outcome_unknown: bool,
        retry_after: Option<Duration>,
    ) {
        let now = self.now;
        let config = &self.config;
        let State::Refreshing(tokens, cycle) = &mut self.state else { return };
        tokens.answer_lost |= outcome_unknown;
        if let Some(wait) = retry_after.filter(|wait| *wait > config.max_retry_after) {
            self.end_cycle(FailReason::RefreshUnavailable(AttemptFailure::RetryAfter(wait)), Some(wait));
            return;
        }
        if cycle.attempt >= config.backoff.attempts {
            self.end_cycle(FailReason::RefreshUnavailable(failure), retry_after);
            return;
        }
        let delay = jittered(&mut self.rng, config.backoff, cycle.attempt).max(retry_after.unwrap_or_default());
        cycle.phase = Phase::Backoff { until: now.saturating_add(delay) };
    }

    /// Ends a cycle that did not succeed: its waiters get `reason` now, the
    /// tokens stay, and the next caller that needs a refresh starts a new
    /// cycle at once. Only the server's `Retry-After`, a configured
    /// [`SessionConfig::failure_cooldown`], or a misconfigured client (retried
    /// at the slowest backoff pace) hold new cycles back.
    pub(super) fn end_cycle(&mut self, reason: FailReason, retry_after: Option<Duration>) {
        let config = &self.config;
        let misconfigured = matches!(reason, FailReason::Rejected(_));
        let mut hold = retry_after.unwrap_or_default().max(config.failure_cooldown);
        if misconfigured || self.planted(Plant::CachesFailure) {
            hold = hold.max(config.backoff.max);
        }
        let now = self.now;
        let failure = CycleFailure {
            reason: reason.clone(),
            hold_until: (!hold.is_zero()).then(|| now.saturating_add(hold)),
            proactive_at: now.saturating_add(hold.max(config.backoff.max)),
        };
        let Some(mut tokens) = self.take_tokens() else { return };
        tokens.last_failure = Some(failure);
        // Only an attempt that may have been redeemed unseen can be replayed
        // to the next cycle: its lifetime counts from the earliest such one.
        tokens.first_send = self.outbox.first_unsettled(tokens.presented_since, None, tokens.first_send);
        // The waiters this cycle was to serve: a forced refresh asked during
        // it waits for the next one. Waiters of a token still usable wait
        // only for the store (C3).
        let ended = self.cycles_started;
        let usable = tokens.usable_at(now);
        let mut failed = Callers::default();
        self.waiters.retain(|waiter| {
            let served_by_this = match waiter.needs {
                Needs::Any | Needs::NoRefreshInFlight => !usable,
                Needs::CycleFrom(n) => n <= ended,
                Needs::Durable => false,
            };
            if served_by_this {
                failed.push(waiter.caller);
            }
            !served_by_this
        });
        self.state = State::Valid(tokens);
        self.outbox.fail(failed, reason);
    }

    /// Sends the next attempt of the running cycle (or, for the no-single-flight
    /// plant, a second one alongside it).
    pub(super) fn send_next_attempt(&mut self) {
        let unproven = self.planted(Plant::RefreshesUnproven);
        let now = self.now;
        let timeout = self.config.request_timeout;
        let straggler = self.straggler;
        let lock_lost = self.locks_store() && !self.store.locked;
        let presentable = matches!(&self.state, State::Refreshing(tokens, _) if self.presentable(tokens));
        let State::Refreshing(tokens, cycle) = &mut self.state else { return };
        if let Some((_, deadline)) = straggler {
            // C1: wait until the abandoned attempt is answered or dead.
            cycle.phase = Phase::Backoff { until: deadline };
            return;
        }
        if lock_lost {
            // The lock went with a fenced write: no attempt goes out until a
            // new one is held and the store read under it (which may hold
            // another process's newer tokens).
            cycle.phase = Phase::Locking;
            return;
        }
        if !presentable {
            cycle.phase = Phase::AwaitingWrite;
            return;
        }
        let Some(refresh_token) = tokens.refresh.clone() else {
            // Adopted from another process without a refresh token: nothing to send.
            self.end_cycle(FailReason::MissingRefreshToken, None);
            return;
        };
        cycle.attempt += 1;
        tokens.first_send.get_or_insert(now);
        self.nonce_retries = 0;
        let proof = tokens.proof_needed(&self.dpop_nonce, unproven);
        let id = self.outbox.send_refresh(now, refresh_token, cycle.attempt, self.cycles_started, proof);
        cycle.phase = Phase::InFlight { id, deadline: now.saturating_add(timeout) };
    }

    /// The cycle moves on (an answer to attempt `answered`, or a session
    /// adopted from the store) while another attempt is still in flight:
    /// that one becomes the straggler, which counts as in flight until
    /// answered or past its deadline (C1).
    pub(super) fn abandon_in_flight(&mut self, answered: Option<RefreshId>) {
        if let State::Refreshing(_, Cycle { phase: Phase::InFlight { id, deadline }, .. }) = &self.state
            && Some(*id) != answered
        {
            self.abandon(*id, *deadline);
        }
    }

    /// Attempt `id` is abandoned in flight: it counts as in flight until
    /// answered or `until` (C1).
    pub(super) fn abandon(&mut self, id: RefreshId, until: MonoTime) {
        self.straggler = Some((id, until));
        self.straggler_wakes = 0;
    }

    pub(super) fn start_cycle(&mut self) {
        let unproven = self.planted(Plant::RefreshesUnproven);
        let now = self.now;
        let timeout = self.config.request_timeout;
        let Some(mut tokens) = self.take_tokens() else { return };
        let Some(refresh_token) = tokens.refresh.clone() else {
            // Settling never starts a cycle without a refresh token.
            self.state = State::Valid(tokens);
            return;
        };
        self.cycles_started += 1;
        if self.locks_store() && !self.store.locked {
            // The store is read under its lock first: another process may have refreshed.
            self.state = State::Refreshing(tokens, Cycle { attempt: 0, phase: Phase::Locking, reread: false });
            return;
        }
        tokens.first_send.get_or_insert(now);
        self.nonce_retries = 0;
        let proof = tokens.proof_needed(&self.dpop_nonce, unproven);
        let id = self.outbox.send_refresh(now, refresh_token, 1, self.cycles_started, proof);
        let phase = Phase::InFlight { id, deadline: now.saturating_add(timeout) };
        self.state = State::Refreshing(tokens, Cycle { attempt: 1, phase, reread: false });
    }

    pub(super) fn log_out(&mut self, cause: LogoutCause) {
        let previous = mem::replace(&mut self.state, State::LoggedOut(cause.clone()));
        if let (LogoutCause::Requested, State::Valid(t) | State::Expired(t) | State::Refreshing(t, _)) =
            (&cause, previous)
            && let Some(refresh_token) = t.refresh
        {
            // Revoked only once cleared, when another process may be
            // refreshing it under the lock: never where the store cannot hold
            // it (a login not yet written), which no clear would then release.
            if self.locks_store() && self.store_may_hold(t.generation) {
                self.revoke_after_clear = Some(refresh_token);
            } else {
                self.revoke(refresh_token);
            }
        }
        self.store.revive();
    }

    pub(super) fn on_logged_in(&mut self, new: NewSession) {
        let generation = self.next_generation();
        let base = new.requested_at.min(self.now);
        let expiry = new.lifetime.map(|lifetime| {
            let issued = (!new.issued_lifetime_unknown).then_some(lifetime);
            Expiry::plan(base.saturating_add(lifetime), issued, &self.config, &mut self.rng)
        });
        let mut login = StoredSession::with_tokens(new.access_token, new.refresh_token);
        login.token_type = new.token_type;
        login.scope = new.scope;
        login.dpop_key = new.dpop_key;
        login.lineage = login.refresh_token.as_ref().map(RefreshToken::fingerprint);
        let mut tokens = TokenSet::arrived(generation, login, expiry, self.outbox.next_refresh);
        tokens.from_login = true;
        tokens.refresh_stored = false;
        // The grant the login replaces: the tokens held, or those of a logout
        // whose clear never landed (still owed a revocation, and still stored).
        tokens.refresh_first = self.adopted_past_refresh_point(&tokens);
        let replaced = match self.take_tokens() {
            Some(old) => {
                let stored = self.store_may_hold(old.generation);
                old.refresh.map(|refresh| (refresh, stored))
            }
            None => self.revoke_after_clear.take().map(|refresh| (refresh, true)),
        };
        if let Some((old, stored)) = replaced.filter(|(old, _)| !tokens.holds_refresh(old)) {
            if !stored {
                // Never written: no restart and no other process can hold it.
                self.revoke(old);
            } else {
                // The server may drop it once the new grant is durable; revoked
                // earlier, a crash would restart from a dead token, and another
                // process sharing the store may be refreshing it.
                if self.replaced_grants.len() == MAX_REPLACED_GRANTS {
                    let (_, oldest) = self.replaced_grants.remove(0);
                    self.revoke(oldest);
                }
                self.replaced_grants.push((generation, old));
            }
        }
        self.state = State::Valid(tokens);
        self.store.revive();
    }
}

/// Equal jitter: between half and all of the backoff ceiling.
pub(super) fn jittered(rng: &mut SplitMix64, backoff: Backoff, attempt: u32) -> Duration {
    let ceiling = backoff.ceiling(attempt);
    let half = ceiling / 2;
    let spread = u64::try_from((ceiling - half).as_nanos()).unwrap_or(u64::MAX);
    half + Duration::from_nanos(rng.below(spread.saturating_add(1)))
}

impl Outbox {
    pub(super) fn send_refresh(
        &mut self,
        now: MonoTime,
        refresh_token: RefreshToken,
        attempt: u32,
        cycle: u64,
        dpop: Option<ProofNeeded>,
    ) -> RefreshId {
        let id = self.next_refresh;
        self.next_refresh = id.next();
        if self.recent_sends.len() == RECENT_SENDS {
            self.recent_sends.pop_front();
        }
        let presented = refresh_token.fingerprint();
        self.recent_sends.push_back(SentRefresh { id, at: now, presented, answered: false, settled: false, cycle });
        self.commands.push_back(Command::Io(Io::SendRefresh { id, refresh_token, attempt, dpop }));
        id
    }

    pub(super) fn sent(&self, id: RefreshId) -> Option<&SentRefresh> {
        self.recent_sends.iter().find(|sent| sent.id == id)
    }

    /// Records the refresh token that answer `id` left this session holding:
    /// if it is not the one the attempt presented, the answer rotated that
    /// one away.
    pub(super) fn note_answer(&mut self, id: RefreshId, held: &RefreshToken) {
        let held = held.fingerprint();
        let Some(presented) = self.sent(id).map(|sent| sent.presented).filter(|presented| *presented != held) else {
            return;
        };
        if self.rotated_away.contains(&presented) {
            return;
        }
        if self.rotated_away.len() == ROTATED_AWAY_REMEMBERED {
            self.rotated_away.pop_front();
        }
        self.rotated_away.push_back(presented);
    }

    /// Whether an answer this session took rotated away from `presented`
    /// (as far as the bounded memory reaches).
    pub(super) fn rotated_away_from(&self, presented: Fingerprint) -> bool {
        self.rotated_away.contains(&presented)
    }

    /// The earliest attempt from `since` on (other than `except`) that may
    /// have been redeemed unseen: a later answer for the same refresh token
    /// may be a grace replay of it (U8). `known` is the earliest one known
    /// before; once the attempts it names have left the bounded memory of
    /// sends, nothing says they settled, so it stays the earliest.
    pub(super) fn first_unsettled(
        &self,
        since: RefreshId,
        except: Option<RefreshId>,
        known: Option<MonoTime>,
    ) -> Option<MonoTime> {
        let oldest_remembered = self.recent_sends.front().map(|sent| sent.at);
        let forgotten = known.filter(|at| oldest_remembered.is_some_and(|oldest| *at < oldest));
        let remembered = self
            .recent_sends
            .iter()
            .filter(|sent| sent.id >= since && Some(sent.id) != except && !sent.settled)
            .map(|sent| sent.at)
            .min();
        forgotten.into_iter().chain(remembered).min()
    }

    /// The earliest attempt from `since` on (other than `except`) still
    /// waiting for its answer.
    pub(super) fn first_in_flight(&self, since: RefreshId, except: Option<RefreshId>) -> Option<MonoTime> {
        self.recent_sends
            .iter()
            .filter(|sent| sent.id >= since && Some(sent.id) != except && !sent.answered)
            .map(|sent| sent.at)
            .min()
    }

    /// Records an answer to `id`; false when it is not the first (or `id` is
    /// unknown, or too old to be remembered): such an answer is ignored.
    pub(super) fn first_answer(&mut self, id: RefreshId) -> bool {
        match self.recent_sends.iter_mut().find(|sent| sent.id == id) {
            Some(sent) if !sent.answered => {
                sent.answered = true;
                true
            }
            _ => false,
        }
    }

    pub(super) fn fail(&mut self, callers: Callers, reason: FailReason) {
        if !callers.is_empty() {
            self.commands.push_back(Command::Fail { callers, reason });
        }
    }
}
