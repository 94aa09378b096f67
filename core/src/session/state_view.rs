//! What an app observes of a session: its state, and how its renewal stands.

use core::fmt;

use super::types::{AttemptFailure, FailReason, LogoutCause};
use crate::ids::Generation;
use crate::oauth::{OAuthError, Rejected};
use crate::time::MonoTime;

/// The state an app observes.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StateView {
    /// The store is being read: whether a session exists is not known yet.
    Loading,
    /// The store held no session and none was logged in yet: send the user
    /// to log in. Unlike [`StateView::LoggedOut`], nothing ended.
    NoSession,
    /// An access token is usable.
    Valid {
        /// Its generation.
        generation: Generation,
        /// Whether it can be renewed when it runs out, and what stands in the way.
        renewal: Renewal,
    },
    /// The access token is unusable and no refresh is running.
    Expired {
        /// Its generation.
        generation: Generation,
        /// What the next caller meets: a refresh at once ([`Renewal::Ready`]),
        /// an outage, a misconfiguration, the user's turn, or no refresh token.
        renewal: Renewal,
    },
    /// A refresh is running (or waiting out a backoff).
    Refreshing {
        /// The generation being replaced.
        generation: Generation,
    },
    /// Terminal until [`Event::LoggedIn`](super::Event::LoggedIn): send the user to the login screen.
    LoggedOut {
        /// Why.
        cause: LogoutCause,
    },
}

/// What stands between a session and its next refresh: how an app tells an
/// outage from a misconfiguration from "the next call refreshes".
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Renewal {
    /// Nothing: a refresh runs when the token enters its refresh window, or
    /// at once for the next caller that needs one.
    Ready,
    /// The last refresh cycle failed for now (network, server, rate limit);
    /// the tokens are kept. The next caller starts a new cycle from
    /// `retry_at` (at once when `None`: a failure is not cached).
    Failing {
        /// How its last attempt failed.
        failure: AttemptFailure,
        /// No cycle starts before this: the server's `Retry-After` or the
        /// configured [`failure_cooldown`](super::SessionConfig::failure_cooldown).
        retry_at: Option<MonoTime>,
    },
    /// The token endpoint refused the client (`invalid_client`, a 404, a
    /// non-OAuth 4xx): the app is misconfigured. Retried no faster than the
    /// slowest backoff, from `retry_at`; never a logout.
    Misconfigured {
        /// What the server answered.
        rejected: Rejected,
        /// No cycle starts before this.
        retry_at: Option<MonoTime>,
    },
    /// The user must act (`mfa_required`, `login_required`, ...): nothing
    /// retries on its own; a login or a forced refresh does.
    InteractionRequired(OAuthError),
    /// The session holds no refresh token (the server issued none): once the
    /// access token is spent, the user must log in again.
    NoRefreshToken,
}

impl Renewal {
    /// Whether a caller arriving at `now` starts a refresh cycle.
    pub fn starts_a_cycle_at(&self, now: MonoTime) -> bool {
        match self {
            Self::Ready => true,
            Self::Failing { retry_at, .. } | Self::Misconfigured { retry_at, .. } => {
                retry_at.is_none_or(|at| at <= now)
            }
            Self::InteractionRequired(_) | Self::NoRefreshToken => false,
        }
    }

    /// Whether this is what callers told `reason` are to find in the state:
    /// the failure of the last cycle, or the lack of a refresh token (U7).
    pub fn explains(&self, reason: &FailReason) -> bool {
        match (self, reason) {
            (Self::Failing { failure, .. }, FailReason::RefreshUnavailable(told)) => failure == told,
            (Self::Misconfigured { rejected, .. }, FailReason::Rejected(told)) => rejected == told,
            (Self::InteractionRequired(error), FailReason::InteractionRequired(told)) => error == told,
            (Self::NoRefreshToken, FailReason::MissingRefreshToken) => true,
            _ => false,
        }
    }
}

impl StateView {
    /// Whether the session has ended: the user must log in again.
    pub fn is_logged_out(&self) -> bool {
        matches!(self, Self::LoggedOut { .. })
    }

    /// Whether only a login helps: nothing was stored, or the session ended.
    pub fn needs_login(&self) -> bool {
        matches!(self, Self::NoSession | Self::LoggedOut { .. })
    }

    /// Why only a login helps, when it does: [`LogoutCause::NoSession`] for
    /// a store that held nothing, else what ended the session.
    pub fn logout_cause(&self) -> Option<LogoutCause> {
        match self {
            Self::NoSession => Some(LogoutCause::NoSession),
            Self::LoggedOut { cause } => Some(cause.clone()),
            _ => None,
        }
    }

    /// What stands before the next refresh, while tokens are held and no refresh runs.
    pub fn renewal(&self) -> Option<&Renewal> {
        match self {
            Self::Valid { renewal, .. } | Self::Expired { renewal, .. } => Some(renewal),
            _ => None,
        }
    }

    /// Whether a caller who finds no usable token at `now` would set the
    /// session to work: no refresh or store read runs, and one may start
    /// (tokens are held, no backoff, `Retry-After` or cooldown is in force,
    /// and more than a login helps). A caller that cannot wait
    /// registers only then, so calling again and again adds nothing.
    pub fn renews_for_a_caller_at(&self, now: MonoTime) -> bool {
        match self {
            // Valid, but no token was usable: the machine looks again.
            Self::Valid { .. } => true,
            Self::Expired { renewal, .. } => renewal.starts_a_cycle_at(now),
            Self::Loading | Self::NoSession | Self::Refreshing { .. } | Self::LoggedOut { .. } => false,
        }
    }

    /// The generation of the tokens held, if any.
    pub fn generation(&self) -> Option<Generation> {
        match self {
            Self::Valid { generation, .. } | Self::Expired { generation, .. } | Self::Refreshing { generation } => {
                Some(*generation)
            }
            _ => None,
        }
    }
}

impl fmt::Display for StateView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Loading => f.write_str("Loading"),
            Self::NoSession => f.write_str("NoSession"),
            Self::Valid { generation, renewal: Renewal::Ready } => write!(f, "Valid({generation})"),
            Self::Valid { generation, renewal } => write!(f, "Valid({generation}; {renewal})"),
            Self::Expired { generation, renewal: Renewal::Ready } => write!(f, "Expired({generation})"),
            Self::Expired { generation, renewal } => write!(f, "Expired({generation}; {renewal})"),
            Self::Refreshing { generation } => write!(f, "Refreshing({generation})"),
            Self::LoggedOut { cause } => write!(f, "LoggedOut: {cause}"),
        }
    }
}

impl fmt::Display for Renewal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ready => f.write_str("a refresh runs when one is needed"),
            Self::Failing { failure, retry_at: None } => write!(f, "the last refresh failed ({failure})"),
            Self::Failing { failure, retry_at: Some(at) } => {
                write!(f, "the last refresh failed ({failure}); the next may start at {at}")
            }
            Self::Misconfigured { rejected, .. } => {
                write!(f, "the token endpoint refused the client ({rejected}); check its configuration")
            }
            Self::InteractionRequired(error) => write!(f, "the user must act ({error})"),
            Self::NoRefreshToken => f.write_str("no refresh token; a login renews the session"),
        }
    }
}

#[cfg(test)]
mod tests {
    use core::time::Duration;

    use super::*;
    use crate::session::TransportFailure;

    #[test]
    fn a_caller_that_cannot_wait_sets_work_going_only_where_a_refresh_may_start() {
        let now = MonoTime::ZERO.saturating_add(Duration::from_secs(100));
        let failing =
            |retry_at| Renewal::Failing { failure: AttemptFailure::Transport(TransportFailure::Timeout), retry_at };
        let expired = |renewal| StateView::Expired { generation: Generation(3), renewal };
        assert!(expired(Renewal::Ready).renews_for_a_caller_at(now));
        assert!(expired(failing(None)).renews_for_a_caller_at(now), "a failure is not cached");
        assert!(expired(failing(Some(now))).renews_for_a_caller_at(now));
        let later = now.saturating_add(Duration::from_secs(1));
        assert!(!expired(failing(Some(later))).renews_for_a_caller_at(now), "inside the server's Retry-After");
        assert!(!expired(Renewal::NoRefreshToken).renews_for_a_caller_at(now));
        assert!(StateView::Valid { generation: Generation(3), renewal: Renewal::Ready }.renews_for_a_caller_at(now));
        for busy_or_ended in [
            StateView::Loading,
            StateView::NoSession,
            StateView::Refreshing { generation: Generation(3) },
            StateView::LoggedOut { cause: LogoutCause::Requested },
        ] {
            assert!(!busy_or_ended.renews_for_a_caller_at(now), "{busy_or_ended}");
        }
    }
}
