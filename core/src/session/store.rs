//! The store: loading, locking, re-reading, adopting what another process
//! wrote, and the write-ahead gate (tokens are written before anyone uses them).

use super::refresh::jittered;
use super::tokens::same_refresh;
use super::*;

impl Session {
    /// Whether the store may hold `generation`: it does, a write of it is
    /// out, or a failed write left the store unknown.
    pub(super) fn store_may_hold(&self, generation: Generation) -> bool {
        matches!(self.store.holds, Holds::Unknown)
            || self.store.holds == Holds::Session(generation)
            || matches!(self.store.in_flight, Some((_, StoreOp::Persist(g))) if g == generation)
    }

    pub(super) fn on_store_loaded(&mut self, op: StoreOpId, stored: Option<StoredSession>, anchor: ClockAnchor) {
        if self.store.in_flight != Some((op, StoreOp::Load)) {
            self.ignore(STALE_STORE_ANSWER);
            return;
        }
        self.store.succeeded();
        self.anchor = anchor;
        match &self.state {
            State::Loading => match stored {
                None => self.state = State::LoggedOut(LogoutCause::NoSession),
                Some(stored) => {
                    self.store.holds_session(&stored);
                    self.last_generation = self.last_generation.max(stored.generation);
                    let tokens = self.tokens_from_store(stored, |generation| generation);
                    self.state = State::Valid(tokens);
                }
            },
            State::Refreshing(_, Cycle { phase: Phase::Rereading { after, .. }, .. }) if op >= *after => {
                self.reread(stored);
            }
            // A login, a logout or a rejection overtook the load: what it read
            // is stale (a re-read still wanted issues a new load). Its
            // generation still counts: the tokens held must outrank it, or a
            // later re-read would take it for another process's rotation.
            _ => {
                let Some(stored) = stored else { return };
                self.last_generation = self.last_generation.max(stored.generation);
                if self.tokens().is_some_and(|t| t.generation <= stored.generation) {
                    let generation = self.next_generation();
                    if let Some(tokens) = self.tokens_mut() {
                        tokens.generation = generation;
                    }
                    self.store.revive();
                }
            }
        }
    }

    /// A rejection waited for this read of the store: another process's
    /// rotation shows as a later generation with another token, and is
    /// adopted; anything else is ours, or older, and the session ends.
    pub(super) fn reread(&mut self, stored: Option<StoredSession>) {
        let State::Refreshing(tokens, Cycle { phase: Phase::Rereading { .. }, .. }) = &self.state else {
            return;
        };
        let newer =
            stored.filter(|s| !same_refresh(&s.refresh_token, &tokens.refresh) && self.written_since(tokens, s));
        match newer {
            Some(stored) => self.adopt_stored(stored),
            None => self.refusal_stands(),
        }
    }

    /// The store showed no other process's rotation: a rejected refresh token
    /// ends the session; an `invalid_request` ends only the cycle.
    pub(super) fn refusal_stands(&mut self) {
        let State::Refreshing(tokens, Cycle { phase: Phase::Rereading { error, otherwise, .. }, .. }) = &self.state
        else {
            return;
        };
        let error = error.clone();
        match otherwise {
            IfNothingNewer::LogOut => {
                let after_lost_response = tokens.answer_lost;
                self.log_out(LogoutCause::RefreshTokenRejected { error, after_lost_response });
            }
            IfNothingNewer::Fail => self.end_cycle(FailReason::Rejected(Rejected::Error(error)), None),
            IfNothingNewer::AwaitUser => self.end_cycle(FailReason::InteractionRequired(error), None),
        }
    }

    /// Whether `stored` was written after this session's tokens. A later
    /// generation says so; so does, for a shared store, anything other than
    /// what this session last knew the store held (its own tokens, or what it
    /// last read there): once a logout elsewhere emptied the store,
    /// generations start again from whoever logs in next, so a number alone
    /// cannot tell. The very pair held under another number is no newer (a
    /// grace replay of one pair, or a process that read it back): this
    /// session's view of it is kept, as it may know an earlier presentation,
    /// and so an earlier death. The same refresh token with another access
    /// token is a later refresh at a server that does not rotate.
    ///
    /// A failed write leaves the store unknown, but not wholly: it holds the
    /// tokens written, or (if the write never landed, as a fenced one never
    /// does) what it held before or what another process wrote since. So
    /// for a rotation of the login held, what the store held before the
    /// write still tells whether another process rotated it meanwhile: a late
    /// answer must not be written back over later rotations of its own
    /// login (C2, tier-1 seed 2098901). Another login stored meanwhile gets
    /// no such weight here: a login here, or its rotation not yet written, is
    /// the user's latest word (U9, tier-2 seed 1007077), unless that rotation
    /// was answered under a lock lost since (`on_store_locked`).
    pub(super) fn written_since(&self, tokens: &TokenSet, stored: &StoredSession) -> bool {
        // The very pair held, written again under another number (by a
        // process that read it back): nothing newer. Adopting it would answer
        // a forced refresh with the token held before it asked (U5; the
        // `shared_session_ops` regression input `the-pair-held-renumbered-is-not-newer`).
        if tokens.same_pair(stored) {
            return false;
        }
        let same_login = tokens.lineage.is_some() && stored.lineage == tokens.lineage;
        let known = if same_login { self.store.last_known() } else { self.store.holds };
        let changed_since_known = match known {
            Holds::Session(known) => known == tokens.generation || known != stored.generation,
            Holds::Unknown | Holds::Empty => false,
        };
        !self.holds_what_ours_rotated(tokens, stored)
            && (rotated_past(tokens, stored)
                || stored.generation > tokens.generation
                || (self.locks_store() && changed_since_known))
    }

    /// Whether `stored` holds a refresh token that an answer this session
    /// took rotated away: it is older than the tokens held whatever its
    /// number (another process may have written it again, renumbered), and
    /// taking it would present a token whose successor this session holds
    /// (C2). Found by fuzzing for the answer these tokens came from
    /// (`shared_session_ops` regression input `a-renumbered-predecessor-is-not-newer`);
    /// tier-2 seed 3120 had it eight rotations back: a stalled worker kept
    /// rotating while its write hung, and another worker stored a grace
    /// replay of the first of those rotations meanwhile.
    fn holds_what_ours_rotated(&self, tokens: &TokenSet, stored: &StoredSession) -> bool {
        let Some(theirs) = stored.refresh_token.as_ref().map(RefreshToken::fingerprint) else { return false };
        let ours = tokens.refresh.as_ref().map(RefreshToken::fingerprint);
        ours != Some(theirs) && self.outbox.rotated_away_from(theirs)
    }

    /// The store's cross-process lock is held and the store was read under
    /// it, so what it holds is the truth until the lock is released.
    pub(super) fn on_store_locked(&mut self, op: StoreOpId, stored: Option<StoredSession>, anchor: ClockAnchor) {
        if self.store.in_flight != Some((op, StoreOp::Lock)) {
            self.ignore(STALE_STORE_ANSWER);
            return;
        }
        self.store.succeeded();
        self.store.locked = true;
        self.anchor = anchor;
        if let State::Refreshing(_, Cycle { phase: Phase::Rereading { after, .. }, .. }) = &self.state {
            if op >= *after {
                self.reread(stored);
            }
            return;
        }
        let Some(held) = self.tokens() else {
            // Logged out: the lock is for clearing the store.
            self.store.set_holds(if stored.is_some() { Holds::Unknown } else { Holds::Empty }, None);
            // Another process cleared it first: no process can refresh the
            // token any more, so the revocation the clear would have released
            // is due now (else the logout would wait for it forever).
            if stored.is_none()
                && let Some(refresh_token) = self.revoke_after_clear.take()
            {
                self.revoke(refresh_token);
            }
            return;
        };
        let (generation, ours_durable) = (held.generation, self.store.holds == Holds::Session(held.generation));
        let theirs_newer = stored.as_ref().is_some_and(|s| self.locked_read_outranks(held, s));
        let locking = matches!(self.state, State::Refreshing(_, Cycle { phase: Phase::Locking, .. }));
        match stored {
            // Another process refreshed (or logged in) since this one last
            // wrote or read: its tokens are newer, and refreshing ours would
            // replay a spent token. Adopted instead of refreshing.
            Some(stored) if locking && theirs_newer => self.adopt_locked(stored),
            // Ours came from a late answer outside the lock; theirs was written
            // under it since, from the same token or a later one.
            Some(stored) if theirs_newer && held.answered_unlocked => self.adopt_locked(stored),
            // Another process logged out: the session this one held ended there.
            None if locking && ours_durable => self.log_out(LogoutCause::EndedElsewhere),
            // Ours came under a lock another process has taken since (a late
            // answer outside it, or a write fenced off), and the store is
            // empty now, though it held a session this one knew, or this
            // one's login, whose write may have landed though reported
            // failed: another process logged out since, the only way a store
            // is emptied. Ours must not bring the session back: its token's
            // successor may have been stored and spent meanwhile (C2; found
            // by fuzzing, `shared_session_ops` regression input
            // `late-answer-after-the-store-was-cleared-elsewhere`, and for a
            // login by tier-1 seed 10070490). Whether a login's write landed
            // cannot be told from an empty store, so it counts as ended
            // elsewhere: the user logs in again, which is safe either way.
            None if held.answered_unlocked
                && (matches!(self.store.last_known(), Holds::Session(_))
                    || (held.from_login && held.write_may_have_landed)) =>
            {
                self.log_out(LogoutCause::EndedElsewhere);
            }
            stored => {
                let same = stored.as_ref().is_some_and(|s| held.stored_as(s));
                match &stored {
                    None => self.store.set_holds(Holds::Empty, None),
                    Some(s) => self.store.holds_session(s),
                }
                // Ours is newer (a login, or a rotation not yet written): it
                // must outrank what the store holds, then be written.
                if let Some(stored) = stored.filter(|_| !same) {
                    self.last_generation = self.last_generation.max(stored.generation);
                    if stored.generation >= generation {
                        let renumbered = self.next_generation();
                        if let Some(tokens) = self.tokens_mut() {
                            tokens.generation = renumbered;
                        }
                    }
                }
                if locking {
                    self.present_if_still_wanted();
                }
            }
        }
    }

    /// Whether `stored`, read under a new lock, outranks the tokens held
    /// (which are then adopted, never written over it).
    fn locked_read_outranks(&self, held: &TokenSet, stored: &StoredSession) -> bool {
        let ours_durable = self.store.holds == Holds::Session(held.generation);
        // A login not yet written is the user's latest word: nothing stored
        // outranks it, but a later rotation of that very login does (its
        // write landed although reported failed, and another process
        // refreshed it since; writing the login over that would bring back a
        // spent token: C2, tier-1 seed 1218751).
        let descends_from_ours = held.lineage.is_some() && stored.lineage == held.lineage;
        // Unless the login's write failed in a way that may have landed it:
        // then another process may have read it, rotated it and replaced it
        // with another login since, and anything the store holds that it
        // did not hold before that write came after it. Writing the login
        // back would bring back a token perhaps spent (C2, tier-2 seed
        // 1052175: the rotations went on elsewhere, then the family ended,
        // and the user logged in again there). What the store held before
        // the write, or a rotation of that login (its lineage), is no sign
        // of the write: that login moved on while ours never landed (U9,
        // tier-1 seed 8010096: a fenced login would otherwise be answered as
        // stored with another process's session).
        let replaced_since_our_write = held.from_login
            && held.write_may_have_landed
            && !descends_from_ours
            && !held.stored_as(stored)
            && self.store.known_before_failure != Holds::Session(stored.generation)
            && (stored.lineage.is_none() || stored.lineage != self.store.lineage_before_failure);
        let unwritten_login = held.from_login && !ours_durable && !descends_from_ours && !replaced_since_our_write;
        !unwritten_login
            && (replaced_since_our_write
                || self.late_rotation_under_another_login(held, stored)
                || self.written_since(held, stored))
    }

    /// A rotation answered under a lock lost before its write landed: the
    /// store went on holding its predecessor for the next holder, which may
    /// have presented it (a grace replay hands out this very successor) and
    /// rotated on. Another login stored since was written under a later
    /// lock, after a logout may have ended that family: it is the later
    /// word, and this rotation, perhaps spent, is not written back (C2,
    /// tier-2 seed 1068575). Not while a login here still waits to be
    /// stored: that login is the user's latest word (U9).
    fn late_rotation_under_another_login(&self, held: &TokenSet, stored: &StoredSession) -> bool {
        held.answered_unlocked
            && !held.from_login
            && held.lineage.is_some()
            && stored.lineage != held.lineage
            && !self.waiters.iter().any(|w| !w.wants_token())
    }

    /// A cycle that waited for the lock presents its token only if it still
    /// may: a late answer may have asked for the user's interaction meanwhile
    /// and the forced refresh that would override that may have given up
    /// (U6; found by the shared-store property at 30,000 cases:
    /// `a_cycle_whose_force_gave_up_waiting_for_the_lock_does_not_ask_again`).
    fn present_if_still_wanted(&mut self) {
        let forced = self.forced_refresh_waiting();
        let awaiting_user = self
            .tokens()
            .filter(|t| t.awaits_user() && !forced)
            .and_then(|t| t.last_failure.as_ref())
            .map(|f| f.reason.clone());
        match awaiting_user {
            Some(reason) => self.end_cycle(reason, None),
            None => self.send_next_attempt(),
        }
    }

    /// Takes over a newer session found under the lock: its tokens are what
    /// the store holds. Its access token ends the cycle if usable; otherwise
    /// its refresh token is sent, still under the lock.
    pub(super) fn adopt_locked(&mut self, stored: StoredSession) {
        // An attempt still out (sent under a lock lost since) counts as in
        // flight until answered or dead: the adopted token waits for it (C1).
        self.abandon_in_flight(None);
        self.store.holds_session(&stored);
        self.last_generation = self.last_generation.max(stored.generation);
        let mut tokens = self.tokens_from_store(stored, |generation| generation);
        self.keep_what_ours_knew(&mut tokens);
        // Another process refreshed while this cycle waited for the lock: its
        // tokens are this cycle's result.
        tokens.cycle = self.cycles_started;
        if tokens.usable_at(self.now) {
            self.state = State::Valid(tokens);
        } else {
            self.state = State::Refreshing(tokens, Cycle { attempt: 0, phase: Phase::Locking, reread: false });
            self.send_next_attempt();
        }
    }

    /// Takes over a session another process wrote while ours was being rejected.
    pub(super) fn adopt_stored(&mut self, stored: StoredSession) {
        let durable = stored.generation > self.last_generation;
        let generation = if durable { stored.generation } else { self.next_generation() };
        self.last_generation = self.last_generation.max(generation);
        // What the store holds now, also when ours is renumbered above it and
        // not yet durable: if the write of ours then fails, this is what the
        // store held before it. Left at an older blob of another login, a
        // later blob under that same number looked like nothing had changed,
        // and a late rotation of ours was written over its successor (C2,
        // tier-1 seed 15632305: numbers had started again after a logout
        // elsewhere).
        self.store.holds_session(&stored);
        let mut tokens = self.tokens_from_store(stored, |_| generation);
        self.keep_what_ours_knew(&mut tokens);
        tokens.cycle = self.cycles_started;
        let State::Refreshing(_, cycle) = mem::replace(&mut self.state, State::Loading) else { return };
        if tokens.usable_at(self.now) {
            self.state = State::Valid(tokens);
        } else {
            // Its access token is spent too: one more attempt, with its refresh token.
            self.state = State::Refreshing(tokens, Cycle { phase: Phase::Backoff { until: self.now }, ..cycle });
            self.send_next_attempt();
        }
        self.store.revive();
    }

    /// What this session knew of the tokens it takes over from the store,
    /// when they are (partly) the ones it holds: see the two rules below.
    fn keep_what_ours_knew(&self, adopted: &mut TokenSet) {
        self.keep_earlier_death(adopted);
        self.keep_first_presentation(adopted);
    }

    /// Tokens taken over from the store that carry the refresh token this
    /// session holds (another process renumbered them) were presented by
    /// this session already: an attempt of ours whose answer was lost may
    /// have been redeemed, and the answer to the next one may be its grace
    /// replay. Their next lifetime counts from that attempt (U8), as it
    /// would had the tokens not been taken over. Found by fuzzing
    /// (`shared_session_ops` regression input `renumbered-by-another-keeps-our-first-presentation`).
    fn keep_first_presentation(&self, adopted: &mut TokenSet) {
        let Some(held) = self.tokens().filter(|held| adopted.refresh.as_ref().is_some_and(|r| held.holds_refresh(r)))
        else {
            return;
        };
        let ours = self.outbox.first_unsettled(held.presented_since, None, held.first_send);
        adopted.first_send = match (adopted.first_send, ours) {
            (Some(theirs), Some(ours)) => Some(theirs.min(ours)),
            (theirs, ours) => theirs.or(ours),
        };
        // The same bytes since then: later cycles look back that far too
        // (`shared_session_ops` regression input
        // `renumbered-by-another-keeps-our-earlier-presentations`).
        adopted.presented_since = adopted.presented_since.min(held.presented_since);
    }

    /// Tokens taken over from the store that carry the access token this
    /// session holds (another process wrote the same rotation: a grace
    /// replay, or one answer reaching both) keep the earlier of the two
    /// deaths: each counted the lifetime from its own first presentation,
    /// and the earlier is the one U8 can vouch for. Found by fuzzing
    /// (`shared_session_ops` regression input `same-pair-from-the-store-keeps-the-earlier-death`).
    fn keep_earlier_death(&self, adopted: &mut TokenSet) {
        let held = self.tokens().filter(|held| match (&held.access, &adopted.access) {
            (Some(ours), Some(theirs)) => ours.same_as(theirs),
            _ => false,
        });
        if let (Some(ours), Some(theirs)) = (held.and_then(|held| held.expiry), &mut adopted.expiry) {
            *theirs = theirs.dying_by(ours.expires_at);
        }
    }

    pub(super) fn tokens_from_store(
        &mut self,
        mut stored: StoredSession,
        generation: impl FnOnce(Generation) -> Generation,
    ) -> TokenSet {
        let max_lifetime = self.config.policy.max_lifetime;
        let by_boot_clock = !self.planted(Plant::IgnoresBootClock);
        let expiry = self.anchor.left_of(&stored, by_boot_clock).map(|left| {
            // A stored blob is untrusted: the same cap applies as on the wire.
            let expires_at = self.anchor.now.min(self.now).saturating_add(left.min(max_lifetime));
            // Margins are judged by the lifetime it was issued with, not by what is left.
            let lifetime = stored.access_lifetime.map(|lifetime| lifetime.min(max_lifetime));
            Expiry::plan(expires_at, lifetime, &self.config, &mut self.rng)
        });
        // The key held, when the store holds it too: it keeps what it has
        // worked out (its public key, a scalar multiplication; an adapter's
        // signer) instead of making it again on the next proof.
        let held_key = self.tokens().and_then(|held| held.dpop_key.as_ref());
        stored.dpop_key = stored.dpop_key.map(|key| match held_key {
            Some(held) if held.is_same_key(&key) => held.clone(),
            _ => key,
        });
        let mut tokens = TokenSet::arrived(generation(stored.generation), stored, expiry, self.outbox.next_refresh);
        tokens.refresh_first = self.adopted_past_refresh_point(&tokens);
        tokens
    }

    /// U2: a token adopted from outside a refresh (the store, a login, another
    /// process) whose refresh point has passed is refreshed before it is
    /// handed out: the refresh window is the user's.
    pub(super) fn adopted_past_refresh_point(&self, tokens: &TokenSet) -> bool {
        let past = tokens.refresh.is_some() && tokens.expiry.is_some_and(|e| self.now >= e.window_at);
        past && !self.planted(Plant::IgnoresRefreshWindow)
    }

    pub(super) fn on_store_written(&mut self, op: StoreOpId) {
        let Some((_, kind)) = self.store.in_flight.filter(|(current, _)| *current == op) else {
            self.ignore(STALE_STORE_ANSWER);
            return;
        };
        match kind {
            StoreOp::Persist(generation) => {
                let lineage = self.tokens().filter(|t| t.generation == generation).and_then(|t| t.lineage);
                self.store.set_holds(Holds::Session(generation), lineage);
            }
            StoreOp::Clear => self.store.set_holds(Holds::Empty, None),
            // A load or lock answered as a write: nothing was written.
            StoreOp::Load | StoreOp::Lock => {}
        }
        if matches!(kind, StoreOp::Load | StoreOp::Lock) {
            self.store.in_flight = None;
            return;
        }
        self.store.succeeded();
        if kind == StoreOp::Clear
            && let Some(refresh_token) = self.revoke_after_clear.take()
        {
            self.revoke(refresh_token);
        }
        let no_longer_needed = |replaced_by: Generation| match kind {
            StoreOp::Persist(stored) => stored >= replaced_by,
            _ => true,
        };
        for (replaced_by, refresh_token) in mem::take(&mut self.replaced_grants) {
            // A grant that came back (another process sharing the store kept
            // it) is the session's again: never revoke what is held.
            if self.tokens().is_some_and(|t| t.holds_refresh(&refresh_token)) {
                continue;
            }
            if no_longer_needed(replaced_by) {
                self.revoke(refresh_token);
            } else {
                self.replaced_grants.push((replaced_by, refresh_token));
            }
        }
    }

    pub(super) fn on_store_failed(&mut self, op: StoreOpId, error: StoreError) {
        let Some((_, kind)) = self.store.in_flight.filter(|(current, _)| *current == op) else {
            self.ignore(STALE_STORE_ANSWER);
            return;
        };
        self.store.in_flight = None;
        let read = matches!(kind, StoreOp::Load | StoreOp::Lock);
        if !read {
            // A failed write may or may not have happened; a fenced one did
            // not, but another process took the lock since and may have
            // written: either way, what the store holds is unknown until read.
            if self.store.holds != Holds::Unknown {
                self.store.known_before_failure = self.store.holds;
                self.store.lineage_before_failure = self.store.holds_lineage;
            }
            self.store.set_holds(Holds::Unknown, None);
        }
        if let StoreOp::Persist(written) = kind
            && error != StoreError::Fenced
            && let Some(tokens) = self.tokens_mut().filter(|tokens| tokens.generation == written)
        {
            tokens.write_may_have_landed = true;
        }
        if error == StoreError::Fenced && self.store.locked {
            // The lock was lost: the next write takes a new one and reads
            // the store under it first. What this process holds came under
            // a lock another process has taken since, as if answered outside
            // it: `on_store_locked` adopts what that process wrote, or writes
            // ours if the store still holds what this one read.
            self.store.locked = false;
            self.outbox.commands.push_back(Command::Io(Io::UnlockStore));
            if let Some(tokens) = self.tokens_mut() {
                tokens.answered_unlocked = true;
            }
        }
        let gave_up = match error {
            StoreError::Corrupt(decode) if kind == StoreOp::Load => {
                if matches!(self.state, State::Loading) {
                    self.state = State::LoggedOut(LogoutCause::StoredSessionUnreadable(decode));
                    return;
                }
                // A blob we cannot read holds nothing we could adopt.
                true
            }
            _ => self.store.failed(self.now, &self.config.store_backoff, &mut self.rng),
        };
        if gave_up && read {
            // The store cannot tell us better: the refusal stands.
            self.refusal_stands();
        }
    }

    /// The lock did not come within [`SessionConfig::lock_wait`]: the driver
    /// stops waiting (and releases a lock that comes after all), and the
    /// store counts as unavailable, exactly as if the lock had failed.
    pub(super) fn give_up_lock_wait(&mut self, op: StoreOpId) {
        self.store.lock_wait_ends = None;
        self.outbox.commands.push_back(Command::Io(Io::UnlockStore));
        self.on_store_failed(op, StoreError::Unavailable);
    }

    pub(super) fn take_tokens(&mut self) -> Option<TokenSet> {
        match mem::replace(&mut self.state, State::Loading) {
            State::Valid(t) | State::Expired(t) | State::Refreshing(t, _) => Some(t),
            other => {
                self.state = other;
                None
            }
        }
    }

    /// A load is wanted while nothing is loaded yet, and while a rejection
    /// waits for the store to be re-read: derived from the state, never stored.
    pub(super) fn load_wanted(&self) -> bool {
        matches!(self.state, State::Loading | State::Refreshing(_, Cycle { phase: Phase::Rereading { .. }, .. }))
    }

    /// What the store should hold when the machine is not reading it, if it
    /// is not there yet.
    pub(super) fn write_wanted(&self) -> Option<StoreOp> {
        let goal = match &self.state {
            State::Loading => return None,
            State::LoggedOut(cause) => {
                if !cause.clears_store() || self.planted(Plant::LogoutKeepsStorage) {
                    return None;
                }
                Holds::Empty
            }
            State::Valid(t) | State::Expired(t) | State::Refreshing(t, _) => Holds::Session(t.generation),
        };
        match goal {
            _ if goal == self.store.holds => None,
            Holds::Session(generation) => Some(StoreOp::Persist(generation)),
            _ => Some(StoreOp::Clear),
        }
    }

    /// Whether this session takes the store's cross-process lock.
    pub(super) fn locks_store(&self) -> bool {
        self.config.shared_store && !self.planted(Plant::NoCrossProcessLock)
    }

    /// The lock is held from the start of a refresh cycle (the read under
    /// it decides whether to send) until its result is written, and around
    /// every other write; an attempt abandoned in flight keeps it too. It is
    /// released between cycles, so a process that only reads never blocks
    /// the others. Derived from the state, never stored.
    pub(super) fn lock_wanted(&self) -> bool {
        self.locks_store()
            && (matches!(self.state, State::Refreshing(..))
                || self.straggler.is_some()
                || self.write_wanted().is_some())
    }

    pub(super) fn settle_store(&mut self) {
        let store = &self.store;
        if store.in_flight.is_some() || store.retry_at.is_some() {
            return;
        }
        let lock_wanted = self.lock_wanted();
        if self.store.locked && !lock_wanted {
            self.store.locked = false;
            self.outbox.commands.push_back(Command::Io(Io::UnlockStore));
            return;
        }
        let op = if lock_wanted && !self.store.locked {
            StoreOp::Lock
        } else if self.load_wanted() {
            StoreOp::Load
        } else {
            match self.write_wanted() {
                Some(op) => op,
                None => return,
            }
        };
        let id = self.store.next_op;
        let command = match op {
            StoreOp::Lock => Command::Io(Io::LockStore { op: id }),
            StoreOp::Load => Command::Io(Io::LoadStore { op: id }),
            StoreOp::Clear => Command::Io(Io::ClearStore { op: id }),
            StoreOp::Persist(_) => {
                let Some(tokens) = self.tokens() else { return };
                Command::Io(Io::Persist { op: id, session: self.to_stored(tokens) })
            }
        };
        self.store.next_op = id.next();
        self.store.in_flight = Some((id, op));
        if op == StoreOp::Lock {
            self.store.lock_wait_ends = Some(self.now.saturating_add(self.config.lock_wait()));
        }
        self.outbox.commands.push_back(command);
    }

    pub(super) fn to_stored(&self, tokens: &TokenSet) -> StoredSession {
        let expires_at = tokens.expiry.map(|e| self.anchor.stored_expiry(e.expires_at));
        StoredSession {
            generation: tokens.generation,
            access_token: tokens.access.clone(),
            token_type: tokens.token_type.clone(),
            access_expires_at: expires_at.map(|(wall, _)| wall),
            access_expires_boot: expires_at.and_then(|(_, boot)| boot),
            access_lifetime: tokens.expiry.and_then(|e| e.lifetime),
            refresh_token: tokens.refresh.clone(),
            scope: tokens.scope.clone(),
            dpop_key: tokens.dpop_key.clone(),
            lineage: tokens.lineage,
        }
    }
}

impl StoreSync {
    pub(super) fn set_holds(&mut self, holds: Holds, lineage: Option<Fingerprint>) {
        self.holds = holds;
        self.holds_lineage = lineage;
    }

    /// The store holds `stored` (read there, adopted from there, or written).
    pub(super) fn holds_session(&mut self, stored: &StoredSession) {
        self.set_holds(Holds::Session(stored.generation), stored.lineage);
    }

    /// What the store holds, or if a failed write made that unknown, what
    /// it held before.
    pub(super) fn last_known(&self) -> Holds {
        if self.holds == Holds::Unknown { self.known_before_failure } else { self.holds }
    }

    /// Failed `attempts` times in a row: waiters stop waiting for the store,
    /// though writes go on being retried at the slowest backoff.
    pub(super) fn exhausted(&self) -> bool {
        self.failures >= self.attempts
    }

    /// New demand: retry at once, and with the fast backoff again.
    pub(super) fn revive(&mut self) {
        if self.exhausted() {
            self.failures = 0;
            self.retry_at = None;
        }
    }

    /// The lock in flight, if its wait is over at `now`.
    pub(super) fn lock_wait_over(&self, now: MonoTime) -> Option<StoreOpId> {
        match self.in_flight {
            Some((op, StoreOp::Lock)) if self.lock_wait_ends.is_some_and(|ends| ends <= now) => Some(op),
            _ => None,
        }
    }

    pub(super) fn succeeded(&mut self) {
        self.in_flight = None;
        self.failures = 0;
        self.retry_at = None;
    }

    /// Counts a failure and schedules the retry; returns whether the store is now exhausted.
    pub(super) fn failed(&mut self, now: MonoTime, backoff: &Backoff, rng: &mut SplitMix64) -> bool {
        self.failures = self.failures.saturating_add(1);
        self.retry_at = Some(now.saturating_add(jittered(rng, *backoff, self.failures)));
        self.exhausted()
    }
}

/// Whether `stored` is a later rotation of the very tokens held, which no
/// answer of this session's has replaced since it took them (from a login or
/// the store): same lineage, another refresh token. A lineage only moves
/// forward in the store, so it is newer whatever its number; numbers start
/// again after a logout elsewhere and may tie with ours or fall below them
/// (C2, tier-1 seed 1623718: a tie, and the spent token written back). A
/// rotation salvaged from a malformed answer is an answer too (the
/// shared-store property found the rule taking a stored predecessor over
/// one: `a_salvaged_rotation_is_newer_than_its_stored_predecessor`).
fn rotated_past(tokens: &TokenSet, stored: &StoredSession) -> bool {
    !tokens.came_from_an_answer()
        && tokens.lineage.is_some()
        && stored.lineage == tokens.lineage
        && !same_refresh(&stored.refresh_token, &tokens.refresh)
}

/// A moment read on the session's clock, the wall clock and, where the
/// platform has one, the boot clock: it turns a stored expiry into session
/// time and back. Taken at every read of the store, so a blob is read by
/// clocks read with it.
#[derive(Clone, Copy, Debug)]
pub(super) struct ClockAnchor {
    pub(super) now: MonoTime,
    unix: UnixTime,
    boot: Option<BootTime>,
}

impl ClockAnchor {
    pub(super) fn new(now: MonoTime, unix: UnixTime, boot: Option<BootTime>) -> Self {
        Self { now, unix, boot }
    }

    /// How long after this moment `stored`'s access token expires: by the
    /// boot clock when it was written on this boot (a wall clock set back
    /// since the write cannot make it look fresher), else by the wall clock.
    fn left_of(&self, stored: &StoredSession, by_boot_clock: bool) -> Option<Duration> {
        let by_boot = match (stored.access_expires_boot, self.boot) {
            (Some(expires), Some(now)) if by_boot_clock => expires.duration_since(now),
            _ => None,
        };
        by_boot.or_else(|| stored.access_expires_at.map(|at| at.saturating_duration_since(self.unix)))
    }

    /// Session time `expires_at` on the wall clock and the boot clock, for the store.
    fn stored_expiry(&self, expires_at: MonoTime) -> (UnixTime, Option<BootTime>) {
        let after = expires_at.saturating_duration_since(self.now);
        (self.unix.saturating_add(after), self.boot.map(|boot| boot.saturating_add(after)))
    }
}
