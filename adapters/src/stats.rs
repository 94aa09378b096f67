//! What a session has done, counted cheaply (relaxed atomics, none on the
//! fast path): a snapshot for the app, the same counts as `tracing` events
//! (each one is logged where it happens), and, with the `metrics` feature, as
//! counters of the `metrics` facade.

use core::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of [`Session::stats`](crate::Session::stats): counts since the
/// session started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Refresh requests sent, retries included.
    pub refresh_attempts: u64,
    /// Refresh requests answered with new tokens.
    pub refreshes_succeeded: u64,
    /// Refresh requests that got no answer in time, or an answer without
    /// tokens (a DPoP nonce challenge is not a failure: see below).
    pub refresh_attempts_failed: u64,
    /// Refresh requests the token endpoint answered with a DPoP nonce
    /// challenge (`use_dpop_nonce`): sent again at once with its nonce.
    pub dpop_nonce_challenges: u64,
    /// Callers that had to wait for the session (no usable token was
    /// published): for a refresh, the store, a forced refresh or a login.
    pub waits: u64,
    /// Callers answered with an error.
    pub callers_failed: u64,
    /// Times the session ended (logged out, by the user or the server).
    pub logouts: u64,
    /// Access tokens reported refused by a resource (a 401), through
    /// [`Session::retry_token`](crate::Session::retry_token) or
    /// [`Session::invalidate`](crate::Session::invalidate), which the
    /// middleware and the tower layer call for you. Against a server that
    /// deletes the previous access token on refresh, every process sharing a
    /// store sees one after another process refreshes.
    pub tokens_refused: u64,
}

/// The live counters behind [`Stats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    refresh_attempts: AtomicU64,
    refreshes_succeeded: AtomicU64,
    refresh_attempts_failed: AtomicU64,
    dpop_nonce_challenges: AtomicU64,
    waits: AtomicU64,
    callers_failed: AtomicU64,
    logouts: AtomicU64,
    tokens_refused: AtomicU64,
}

/// One thing a session counts.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Count {
    RefreshAttempt,
    RefreshSucceeded,
    RefreshAttemptFailed,
    NonceChallenge,
    Wait,
    CallerFailed,
    Logout,
    TokenRefused,
}

impl Counters {
    pub(crate) fn add(&self, count: Count) {
        let (counter, _name) = match count {
            Count::RefreshAttempt => (&self.refresh_attempts, "freshen_refresh_attempts_total"),
            Count::RefreshSucceeded => (&self.refreshes_succeeded, "freshen_refreshes_succeeded_total"),
            Count::RefreshAttemptFailed => (&self.refresh_attempts_failed, "freshen_refresh_attempts_failed_total"),
            Count::NonceChallenge => (&self.dpop_nonce_challenges, "freshen_dpop_nonce_challenges_total"),
            Count::Wait => (&self.waits, "freshen_waits_total"),
            Count::CallerFailed => (&self.callers_failed, "freshen_callers_failed_total"),
            Count::Logout => (&self.logouts, "freshen_logouts_total"),
            Count::TokenRefused => (&self.tokens_refused, "freshen_tokens_refused_total"),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!(_name).increment(1);
    }

    pub(crate) fn snapshot(&self) -> Stats {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Stats {
            refresh_attempts: read(&self.refresh_attempts),
            refreshes_succeeded: read(&self.refreshes_succeeded),
            refresh_attempts_failed: read(&self.refresh_attempts_failed),
            dpop_nonce_challenges: read(&self.dpop_nonce_challenges),
            waits: read(&self.waits),
            callers_failed: read(&self.callers_failed),
            logouts: read(&self.logouts),
            tokens_refused: read(&self.tokens_refused),
        }
    }
}
