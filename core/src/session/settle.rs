//! Settling after every input: answering waiters from the state, starting
//! what the state wants, and publishing the state callers read.

use super::*;

impl Session {
    /// Derives every consequence of the current facts: answers waiters, starts
    /// a refresh when one is needed, moves the store toward what the session
    /// holds, and reports what changed. Runs after every input.
    pub(super) fn settle(&mut self) {
        let now = self.now;
        if matches!(&self.state, State::Refreshing(tokens, Cycle { phase: Phase::AwaitingWrite, .. }) if self.presentable(tokens))
        {
            self.send_next_attempt();
        }
        if let State::Valid(tokens) = &self.state
            && !tokens.usable_at(now)
        {
            let Some(tokens) = self.take_tokens() else { return };
            self.state = State::Expired(tokens);
        }
        let refresh_needed = match &self.state {
            State::Valid(tokens) | State::Expired(tokens) => {
                let usable = tokens.usable_at(now);
                let wanted = tokens.refresh_due_at().is_some_and(|at| at <= now)
                    || self
                        .waiters
                        .iter()
                        .any(|w| w.wants_token() && !(usable && tokens.satisfies(w.needs, None, false)));
                // A forced refresh is the app's answer to a request for interaction.
                let forced = self.forced_refresh_waiting();
                let held = tokens.held_at(now) && !(forced && tokens.awaits_user());
                wanted && !held && self.refresh_may_start(tokens)
            }
            _ => false,
        };
        if refresh_needed {
            self.start_cycle();
        }
        // What callers can read comes before what they are told: the fast
        // path and the state first, then the answers (U1), so an app that
        // reads the state after an answer never sees an older one.
        self.publish();
        let answers_first = self.planted(Plant::AnswersBeforeState);
        if answers_first {
            self.answer_waiters();
        }
        let view = self.view_now();
        if view != self.view {
            self.view = view.clone();
            self.outbox.commands.push_back(Command::StateChanged(view));
        }
        if !answers_first {
            self.answer_waiters();
        }
        self.settle_store();
        self.settle_logout();
    }

    /// Whether a refresh may start on `tokens` now, whatever wants it: not
    /// without a refresh token, not while an abandoned attempt is out (C1),
    /// not before the tokens are presentable. `settle` starts a refresh only
    /// then, and `poll_timeout` offers the refresh window only then: one
    /// rule, since a window offered that cannot start a refresh is due again
    /// at once, and a driver is woken every millisecond.
    pub(super) fn refresh_may_start(&self, tokens: &TokenSet) -> bool {
        tokens.refresh.is_some() && self.straggler.is_none() && self.presentable(tokens)
    }

    /// Write-ahead for refreshes (C3): a refresh presents only a refresh
    /// token the store holds, as a grant hands out only stored tokens (an
    /// answer that kept the token changes nothing here). A rotation whose write
    /// is still out (or failed) is not built on: the older token the store
    /// holds is what another process, or this one after a crash, presents
    /// next, and each rotation on top of it moves that token further out
    /// of the grace a server gives replays (tier-2 seed 1037012: two
    /// rotations went out while one write hung past the lock's bound).
    /// Callers lose nothing, since nothing is handed out before its write
    /// lands. A bound login's key proves nothing before it is stored (D3).
    pub(super) fn presentable(&self, tokens: &TokenSet) -> bool {
        if tokens.refresh_stored || self.store.holds == Holds::Session(tokens.generation) {
            return true;
        }
        if tokens.from_login {
            tokens.dpop_key.is_none() && self.planted(Plant::RefreshesUnwritten)
                || self.planted(Plant::ProvesKeyBeforeStored)
        } else {
            self.planted(Plant::RefreshesUnwritten)
        }
    }

    /// Logged out, every waiter is told why; still loading, waiters wait
    /// for the store, unless it gave up.
    fn answer_waiters_without_tokens(&mut self) {
        let reason = match &self.state {
            State::LoggedOut(cause) => FailReason::LoggedOut(cause.clone()),
            State::Loading if self.store.exhausted() => FailReason::StoreUnavailable,
            State::Loading | State::Valid(_) | State::Expired(_) | State::Refreshing(..) => return,
        };
        let callers = self.waiters.drain(..).map(|w| w.caller).collect();
        self.outbox.fail(callers, reason);
    }

    /// What a waiter no token serves now is told, when nothing will serve it soon.
    fn blocked(&self, tokens: &TokenSet, durable: bool, store_gave_up: bool) -> Option<FailReason> {
        if let State::Refreshing(_, cycle) = &self.state {
            // A lock that cannot be had is a store that cannot be used.
            (matches!(cycle.phase, Phase::Locking | Phase::AwaitingWrite) && store_gave_up)
                .then_some(FailReason::StoreUnavailable)
        } else if tokens.refresh.is_none() {
            // Nothing can renew it: the user must log in again.
            Some(FailReason::MissingRefreshToken)
        } else if !durable && store_gave_up {
            // Nothing is handed out or refreshed before the store holds it:
            // a store that gave up serves nobody.
            Some(FailReason::StoreUnavailable)
        } else {
            // No refresh runs for a waiter it could serve: only a hold stops one.
            tokens.last_failure.as_ref().filter(|_| tokens.held_at(self.now)).map(|f| f.reason.clone())
        }
    }

    pub(super) fn answer_waiters(&mut self) {
        if self.waiters.is_empty() {
            return;
        }
        let now = self.now;
        let tokens = match &self.state {
            State::LoggedOut(_) | State::Loading => return self.answer_waiters_without_tokens(),
            State::Valid(tokens) | State::Expired(tokens) | State::Refreshing(tokens, _) => tokens,
        };
        let durable = self.planted(Plant::GrantBeforePersist) || self.store.holds == Holds::Session(tokens.generation);
        let grant = tokens.grant_at(now);
        let running = self.running_cycle();
        let straggling = self.straggler.is_some();
        let store_gave_up = self.store.exhausted();
        let blocked = self.blocked(tokens, durable, store_gave_up);
        let login_stored = durable || self.planted(Plant::LoginAnsweredBeforeStored);
        // Made only where waiters stay or stayed: a step that answers its
        // one caller at once never needs it.
        let verdicts = || Verdicts {
            login_stored,
            store_gave_up,
            durable,
            grantable: grant.is_some(),
            cycle: tokens.cycle,
            running,
            straggling,
            blocked: blocked.is_some(),
        };
        // What becomes of one waiter: answered (and how), or kept waiting.
        let judge = |waiter: &Waiter| -> Option<Answered> {
            if !waiter.wants_token() {
                return match (login_stored, store_gave_up) {
                    (true, _) => Some(Answered::Stored),
                    (false, true) => Some(Answered::Unstored),
                    (false, false) => None,
                };
            }
            let served = grant.is_some() && tokens.satisfies(waiter.needs, running, straggling);
            match (served, durable) {
                (true, true) => Some(Answered::Granted),
                (true, false) if store_gave_up => Some(Answered::Unstored),
                (true, false) => None,
                (false, _) if blocked.is_some() => Some(Answered::Refused),
                (false, _) => None,
            }
        };
        let (mut granted, mut stored, mut unstored, mut refused) =
            (Callers::default(), Callers::default(), Callers::default(), Callers::default());
        let mut answer = |waiter: &Waiter| match judge(waiter) {
            None => true,
            Some(answered) => {
                let to = match answered {
                    Answered::Granted => &mut granted,
                    Answered::Stored => &mut stored,
                    Answered::Unstored => &mut unstored,
                    Answered::Refused => &mut refused,
                };
                to.push(waiter.caller);
                false
            }
        };
        // Waiters kept under the same verdicts would be kept again: only
        // those that came since are judged, in order, as a full pass would.
        let first_unjudged = match self.waiters_kept {
            Some((kept, up_to)) if kept == verdicts() => self.waiters.partition_point(|w| w.number <= up_to),
            _ => 0,
        };
        if first_unjudged == 0 {
            self.waiters.retain(|waiter| answer(waiter));
        } else {
            let mut index = first_unjudged;
            while let Some(waiter) = self.waiters.get(index) {
                if answer(waiter) {
                    index += 1;
                } else {
                    self.waiters.remove(index);
                }
            }
        }
        self.waiters_kept = self.waiters.back().map(|last| (verdicts(), last.number));
        if !stored.is_empty() {
            self.outbox.commands.push_back(Command::LoginStored { callers: stored, generation: tokens.generation });
        }
        if let Some(grant) = grant.filter(|_| !granted.is_empty()) {
            self.outbox.commands.push_back(Command::Grant { callers: granted, grant });
        }
        self.outbox.fail(unstored, FailReason::StoreUnavailable);
        if let Some(reason) = blocked {
            self.outbox.fail(refused, reason);
        }
    }

    pub(super) fn publish(&mut self) {
        let now = self.now;
        let grant_before_persist = self.planted(Plant::GrantBeforePersist);
        let offer = self
            .tokens()
            .filter(|t| t.usable_at(now) && (grant_before_persist || self.store.holds == Holds::Session(t.generation)));
        // The same generation can change its usable time (read again from a
        // shared store, or found to die sooner by a late answer): the driver's
        // fast path and its withdrawal timer go by the published one, so it
        // is published again.
        let mut offered = offer.map(|t| (t.generation, t.expiry.map(|e| e.usable_until)));
        if self.planted(Plant::PublishesByGeneration) && offered.map(|o| o.0) == self.published.map(|p| p.0) {
            offered = self.published;
        }
        if offered != self.published {
            let grant = offer.and_then(|t| t.grant_at(now));
            self.published = offered;
            self.outbox.commands.push_back(Command::Publish(grant));
        }
    }

    /// What stands before the next refresh of `tokens`, for the state (U7).
    pub(super) fn renewal_of(&self, tokens: &TokenSet) -> Renewal {
        if tokens.refresh.is_none() {
            return Renewal::NoRefreshToken;
        }
        let Some(failure) = tokens.last_failure.as_ref().filter(|_| !self.planted(Plant::StateHidesFailure)) else {
            return Renewal::Ready;
        };
        let retry_at = failure.hold_until;
        match &failure.reason {
            FailReason::RefreshUnavailable(failure) => Renewal::Failing { failure: failure.clone(), retry_at },
            FailReason::Rejected(rejected) => Renewal::Misconfigured { rejected: rejected.clone(), retry_at },
            FailReason::InteractionRequired(error) => Renewal::InteractionRequired(error.clone()),
            // A cycle ends only with the reasons above, or for want of a
            // refresh token (answered above).
            FailReason::MissingRefreshToken
            | FailReason::LoggedOut(_)
            | FailReason::StoreUnavailable
            | FailReason::DpopMismatch
            | FailReason::TimedOut
            | FailReason::TooManyWaiters => Renewal::Ready,
        }
    }

    pub(super) fn view_now(&self) -> StateView {
        match &self.state {
            State::Loading => StateView::Loading,
            State::Valid(t) => StateView::Valid { generation: t.generation, renewal: self.renewal_of(t) },
            State::Expired(t) => StateView::Expired { generation: t.generation, renewal: self.renewal_of(t) },
            State::Refreshing(t, _) => StateView::Refreshing { generation: t.generation },
            State::LoggedOut(LogoutCause::NoSession) => StateView::NoSession,
            State::LoggedOut(cause) => StateView::LoggedOut { cause: cause.clone() },
        }
    }
}

/// Everything [`Session::answer_waiters`] judges a waiter by, besides the
/// waiter's own needs: equal verdicts judge every waiter alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Verdicts {
    login_stored: bool,
    store_gave_up: bool,
    durable: bool,
    grantable: bool,
    cycle: u64,
    running: Option<u64>,
    straggling: bool,
    blocked: bool,
}

/// How a waiter was answered.
#[derive(Clone, Copy)]
enum Answered {
    Granted,
    Stored,
    Unstored,
    Refused,
}
