//! The tokens held, and when they are due for refresh or stop being usable.

use super::*;

impl TokenSet {
    /// Tokens that arrived from outside a refresh (a login, the store), in
    /// the form the store keeps them, not yet presented: refreshes from
    /// `presented_since` on may carry them. Counted as the store's: a login
    /// says it is not.
    pub(super) fn arrived(
        generation: Generation,
        tokens: StoredSession,
        expiry: Option<Expiry>,
        presented_since: RefreshId,
    ) -> Self {
        Self {
            generation,
            access: tokens.access_token,
            token_type: tokens.token_type,
            scope: tokens.scope,
            refresh: tokens.refresh_token,
            expiry,
            access_rejected: false,
            refresh_first: false,
            cycle: 0,
            answered_by: None,
            salvaged: false,
            first_send: None,
            presented_since,
            last_failure: None,
            answer_lost: false,
            from_login: false,
            write_may_have_landed: false,
            refresh_stored: true,
            lineage: tokens.lineage,
            answered_unlocked: false,
            dpop_key: tokens.dpop_key,
        }
    }

    /// Whether `stored` is these tokens, as this session wrote or read them.
    pub(super) fn stored_as(&self, stored: &StoredSession) -> bool {
        stored.generation == self.generation && self.same_pair(stored)
    }

    /// Whether `stored` holds this very pair, whatever its number. The
    /// access token counts: a server that does not rotate answers every
    /// refresh with the same refresh token and a new access token, so two
    /// processes may hold one refresh token under one number with different
    /// access tokens (tier-1 seeds 1310 and 1337: the other process's pair
    /// was taken for this one's, which was then handed out unstored, C3).
    pub(super) fn same_pair(&self, stored: &StoredSession) -> bool {
        let same_access = match (&stored.access_token, &self.access) {
            (Some(theirs), Some(ours)) => theirs.same_as(ours),
            (theirs, ours) => theirs.is_none() && ours.is_none(),
        };
        same_access && same_refresh(&stored.refresh_token, &self.refresh)
    }

    /// Whether these tokens may serve a waiter with `needs`, while cycle
    /// `running` runs (if one does).
    pub(super) fn satisfies(&self, needs: Needs, running: Option<u64>, straggling: bool) -> bool {
        match needs {
            Needs::Any => true,
            Needs::CycleFrom(n) => self.cycle >= n,
            Needs::NoRefreshInFlight => running.is_none() && !straggling,
            Needs::Durable => false,
        }
    }

    /// What a refresh presenting these tokens must prove, with the token
    /// endpoint's latest `nonce`.
    pub(super) fn proof_needed(&self, nonce: &Option<DpopNonce>, unproven: bool) -> Option<ProofNeeded> {
        self.dpop_key.clone().filter(|_| !unproven).map(|key| ProofNeeded { key, nonce: nonce.clone() })
    }

    /// Whether a server's answer brought the refresh token held (a
    /// refresh, or a rotation salvaged from an unusable one), rather than a
    /// login or the store.
    pub(super) fn came_from_an_answer(&self) -> bool {
        self.answered_by.is_some() || self.salvaged
    }

    /// Whether the refresh token held is `token`.
    pub(super) fn holds_refresh(&self, token: &RefreshToken) -> bool {
        self.refresh.as_ref().is_some_and(|held| held.same_as(token))
    }

    pub(super) fn usable_at(&self, now: MonoTime) -> bool {
        self.access.is_some()
            && !self.access_rejected
            && !self.refresh_first
            && self.expiry.is_none_or(|e| now < e.usable_until)
    }

    /// When a proactive refresh is due (never without a refresh token): after
    /// a failed cycle, no sooner than its paced background retry. A token that
    /// an attempt whose answer was lost may have redeemed is due at that
    /// retry even before its window: only presenting it again within the
    /// server's grace gets its successor back, and the window can open after
    /// the grace has ended (L1; tier-1 seed 1147893).
    pub(super) fn refresh_due_at(&self) -> Option<MonoTime> {
        self.refresh.as_ref()?;
        let due = self.expiry?.refresh_at;
        if self.awaits_user() {
            return None;
        }
        Some(match &self.last_failure {
            None => due,
            Some(failure) if self.answer_lost => failure.proactive_at,
            Some(failure) => due.max(failure.proactive_at),
        })
    }

    /// The last cycle asked for the user's interaction (see
    /// [`FailReason::InteractionRequired`]): only the user can answer that, so
    /// no timer retries it; a login or a forced refresh does.
    pub(super) fn awaits_user(&self) -> bool {
        self.last_failure.as_ref().is_some_and(|f| matches!(f.reason, FailReason::InteractionRequired(_)))
    }

    /// Whether a failed cycle holds new ones back at `now`.
    pub(super) fn held_at(&self, now: MonoTime) -> bool {
        self.awaits_user() || self.last_failure.as_ref().and_then(|f| f.hold_until).is_some_and(|until| now < until)
    }

    /// The grant a caller may be handed at `now`, if the token is usable.
    pub(super) fn grant_at(&self, now: MonoTime) -> Option<AccessGrant> {
        let access = self.access.as_ref().filter(|_| self.usable_at(now))?;
        Some(AccessGrant {
            generation: self.generation,
            access_token: access.clone(),
            token_type: self.token_type.clone(),
            usable_until: self.expiry.map(|e| e.usable_until),
            dpop_key: self.dpop_key.clone(),
        })
    }
}

/// Whether two optional refresh tokens are the same (both absent included).
pub(super) fn same_refresh(a: &Option<RefreshToken>, b: &Option<RefreshToken>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.same_as(b),
        (None, None) => true,
        _ => false,
    }
}

impl Expiry {
    /// A token issued for `lifetime` by a request sent at `base`.
    pub(super) fn issued(base: MonoTime, lifetime: Duration, config: &SessionConfig, rng: &mut SplitMix64) -> Self {
        Self::plan(base.saturating_add(lifetime), Some(lifetime), config, rng)
    }

    /// The same plan moved earlier, whole, so that the token expires by
    /// `death` at the latest (unchanged when it already does).
    pub(super) fn dying_by(self, death: MonoTime) -> Self {
        let Some(early) = self.expires_at.elapsed().checked_sub(death.elapsed()).filter(|d| !d.is_zero()) else {
            return self;
        };
        Self {
            expires_at: death,
            usable_until: self.usable_until.saturating_sub(early),
            window_at: self.window_at.saturating_sub(early),
            refresh_at: self.refresh_at.saturating_sub(early),
            lifetime: self.lifetime,
        }
    }

    /// Plans a token's life from its expiry and the lifetime it was issued
    /// with. The refresh window is the user's: the token is refreshed
    /// `refresh_margin` (plus jitter) before it expires. Only a token issued
    /// for no longer than the margin has its margins shrunk (refresh at half
    /// its life, stop using it at three quarters), so a short token is still
    /// used before it is refreshed and refreshes cannot loop; jitter never
    /// takes more than half of what lies beyond the margin. An unknown issued
    /// lifetime (an old blob) gets the whole margin. The proactive refresh
    /// waits for a quarter of the life at least (see [`Expiry::refresh_at`]).
    pub(super) fn plan(
        expires_at: MonoTime,
        lifetime: Option<Duration>,
        config: &SessionConfig,
        rng: &mut SplitMix64,
    ) -> Self {
        let jitter_nanos = u64::try_from(config.refresh_jitter.as_nanos()).unwrap_or(u64::MAX);
        let jitter = Duration::from_nanos(rng.below(jitter_nanos.saturating_add(1)));
        let margin = config.refresh_margin;
        let (refresh_margin, safety) = match lifetime {
            Some(lifetime) if lifetime <= margin => (lifetime / 2, config.expiry_safety.min(lifetime / 4)),
            Some(lifetime) => {
                (margin.saturating_add(jitter.min((lifetime - margin) / 2)), config.expiry_safety.min(lifetime / 4))
            }
            None => (margin.saturating_add(jitter), config.expiry_safety),
        };
        let window_at = expires_at.saturating_sub(refresh_margin);
        let quarter_life = lifetime.map(|lifetime| expires_at.saturating_sub(lifetime).saturating_add(lifetime / 4));
        Self {
            expires_at,
            usable_until: expires_at.saturating_sub(safety),
            window_at,
            refresh_at: quarter_life.map_or(window_at, |floor| window_at.max(floor)),
            lifetime,
        }
    }
}
