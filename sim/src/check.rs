//! The invariant checker: named properties over a recorded run.
//!
//! [`ClientMonitor`] watches one session's inputs and outputs and checks C1–C9;
//! [`AuthorityMonitor`] watches the authority's audit and checks A1–A6. Each
//! keeps its own small model of what must be true (which tokens were superseded,
//! which generations are durable, who waits) rather than trusting the code it
//! checks. The proptest suites, the simulation and the fuzzers all use these,
//! and each check has a test proving it reports a planted violation.

use core::fmt;
use core::time::Duration;
use std::collections::{BTreeMap, BTreeSet};

pub use crate::authority::AuthorityPlant;
use crate::authority::{Audit, AuditOp, AuditOutcome, AuthorityConfig, FamilyId, Refusal};
use crate::world::Database;
use freshen_core::ids::{CallerId, Generation, RefreshId, RevocationId, StoreOpId};
use freshen_core::oauth::{Classified, Transient, TransientCause};
pub use freshen_core::session::Plant;
use freshen_core::session::{Command, Event, FailReason, Io, LogoutCause, SessionConfig, StateView, TransportFailure};
use freshen_core::stored::StoredSession;
use freshen_core::time::{MonoTime, UnixTime};
use freshen_core::token::{Fingerprint, RefreshToken};

/// How a trace line shows a command: the work itself for [`Command::Io`]
/// (`Persist { .. }`, not `Io(Persist { .. })`), so traces recorded before
/// commands were grouped still replay byte for byte.
pub(crate) fn traced(command: &Command) -> &dyn fmt::Debug {
    match command {
        Command::Io(io) => io,
        other => other,
    }
}

/// A named invariant from DESIGN.md.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Invariant {
    /// At most one refresh in flight per session.
    C1,
    /// A refresh token is never sent again once its successor was received.
    C2,
    /// Tokens are durable before they are handed out; a rotated token is never dropped.
    C3,
    /// Logged out is terminal until a login: nothing granted, nothing sent, store cleared.
    C4,
    /// Every waiter is answered within the configured bound.
    C5,
    /// Transient failures back off within bounded attempts; terminal ones log out.
    C6,
    /// No token is handed out past its usable time (and none used past expiry).
    C7,
    /// The same seed and inputs give the same trace.
    C8,
    /// No panic and no busy loop, whatever the input.
    C9,
    /// A consumed refresh token outside grace is never accepted; its presentation revokes the family.
    A1,
    /// A replay inside grace is accepted within its count.
    A2,
    /// Revocation is terminal for the family.
    A3,
    /// Without grace, at most one redemption of a token succeeds.
    A4,
    /// Tokens are accepted only from their client and device, never past expiry.
    A5,
    /// A rejected request changes nothing.
    A6,
    /// A family bound by DPoP is refreshed only with a proof by its key.
    A7,
    /// An authorization or device code starts at most one family: a client
    /// that lost the answer and redeems it again gets nothing.
    A8,
    /// Fencing: no write to a shared database lands over what the holder of
    /// a later lock wrote (a worker that lost its lock never replaces the
    /// newer tokens of the worker that took it over).
    F1,
    /// A session is never logged out by its own races: when the server's
    /// grace covers a whole retry cycle (and enough replays), a lost answer
    /// alone does not end it.
    L1,
    /// Every logout has a cause the world produced: expiry, revocation, a
    /// lost answer, or a crash (or the user asked).
    L2,
    /// The state is never behind an answer: a caller is told only what the
    /// state already shows (logged out when failed as logged out; a usable
    /// token, Valid or Refreshing, when granted).
    U1,
    /// The refresh window is the user's: an access token that came from the
    /// store (or a login) with its refresh margin or less left is refreshed
    /// before it is handed out. The margin shrinks only for a token issued
    /// for no longer than the margin.
    U2,
    /// A failure is not cached: a caller is failed as "refresh unavailable"
    /// only by a refresh cycle that ran after it arrived, unless the server
    /// asked to wait (`Retry-After`) or the app configured a cooldown.
    U3,
    /// A session without a refresh token tells its callers so at once, with
    /// no request and no waiting, once its access token is spent.
    U4,
    /// A forced refresh hands its caller a token the session learned after
    /// the caller asked (never the one it held), and forced refreshes are
    /// chained: with C1 and C2, no refresh token is presented twice.
    U5,
    /// Error classes users can act on: a request for the user's interaction
    /// is not retried on its own (the refresh token it refused is presented
    /// again only after a forced refresh or a login), and no refusal but a
    /// terminal one (by the policy, `invalid_grant`) logs the session out.
    U6,
    /// The state tells why callers were failed: when a refresh cycle ended
    /// in an outage, a misconfiguration or a request for the user's
    /// interaction, or there is no refresh token, the state the session
    /// settles in (holding tokens, no refresh running) says which.
    U7,
    /// A token the server has already killed is never handed out: a retry
    /// after a 401 that nothing raced gets a token that is neither expired nor
    /// deleted by a refresh (the world checks it against the authority), and
    /// a refreshed token's lifetime counts from the first attempt that
    /// presented its refresh token (a grace replay may carry the original).
    U8,
    /// Logging in is awaitable: a login is told it is stored only once the
    /// store holds its tokens (or newer ones), so a crash after the answer
    /// cannot lose it; it is answered within the wait bound (C5), also when
    /// it came while the store was still being read.
    U9,
    /// A refresh token bound by DPoP is only ever presented with a proof by
    /// its key (no thief exists in a world: any other presentation is the
    /// client's).
    D1,
    /// A DPoP nonce challenge is not a use: the attempt it answered is sent
    /// again at once, the same attempt with the same token and the
    /// server's nonce (up to the machine's bound on challenges in a row),
    /// never backed off or counted against the attempts.
    D2,
    /// A DPoP key is durable before the first request it proves: a refresh
    /// with a proof by a key goes out only once the store holds that key
    /// (written or read by this process).
    D3,
}

impl fmt::Display for Invariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A broken invariant: which, when, and a description without token bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The invariant.
    pub invariant: Invariant,
    /// When it was observed.
    pub at: MonoTime,
    /// What happened.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} violated at {}: {}", self.invariant, self.at, self.detail)
    }
}

/// What the world knows about a logout, for the logout rules L1 and L2.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogoutEvidence {
    /// An answer the server committed was lost (dropped, mangled, or given up on).
    pub lost_answer: bool,
    /// The client crashed since its session began.
    pub crashed: bool,
    /// The client slept (a suspended laptop) since its session began: a
    /// retry cycle it was in stretched past every bound, grace included.
    pub suspended: bool,
    /// A process stalled (a GC or VM pause) while its refresh cycle ran: as
    /// a suspend does, the stall stretched that cycle past every bound, and
    /// answers that came meanwhile are read only after the attempts its
    /// timers sent on waking (tier-1 seed 1173623).
    pub stalled_refreshing: bool,
    /// The server answered one refresh token with success more times than a
    /// retry cycle presents it, and the client read none of those answers:
    /// the network lost answers across cycles (each new one started by
    /// callers, as the contract says), beyond the one cycle that L1's grace
    /// is sized for (tier-1 seed 1931014: eight presentations, seven answers
    /// lost, a grace of five replays).
    pub lost_beyond_a_cycle: bool,
    /// Someone revoked the grant (the user, from their account page; an admin).
    pub revoked: bool,
    /// The authority's last refusal of this client's refresh.
    pub refusal: Option<Refusal>,
    /// The shared database, if it released the lock of a worker that lived
    /// and went on as if it held it (its connection cut, or it stalled): two
    /// workers may then have presented one refresh token.
    pub lock_lost: Option<Database>,
}

/// Whether the app itself revoked the grant a session held: it revoked a
/// token (a user's logout, in another process of the app) and no reuse
/// detection came since. Where a database took a lock from a live worker,
/// that logout can run under the worker's refresh and revoke the family it
/// is rotating: its refresh is then refused as `Revoked`, which the user
/// asked for. Feed it the authority's audit, in order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RevokedByTheApp(bool);

impl RevokedByTheApp {
    /// One audit entry, for `client`'s grants.
    pub fn observe(&mut self, entry: &Audit, client: &str) {
        match (&entry.op, &entry.outcome) {
            (AuditOp::Revoke { client: by, .. }, AuditOutcome::Revoked) if by == client => self.0 = true,
            (AuditOp::Refresh { client: by, .. }, AuditOutcome::Refused(Refusal::ReuseDetected)) if by == client => {
                self.0 = false;
            }
            _ => {}
        }
    }

    /// Whether a refusal `refusal` of the session's refresh came from the
    /// app's own revocation.
    pub fn explains(self, refusal: Option<Refusal>) -> bool {
        self.0 && refusal == Some(Refusal::Revoked)
    }
}

/// Judges a logout by L1 and L2. A lock a database took from a live
/// worker is a cause, unless the server's grace covers it.
pub fn judge_logout(
    session: &SessionConfig,
    authority: &AuthorityConfig,
    cause: &LogoutCause,
    evidence: LogoutEvidence,
    at: MonoTime,
) -> Result<(), Violation> {
    let LogoutCause::RefreshTokenRejected { after_lost_response, .. } = cause else {
        // Asked for, nothing stored, or unreadable: not a rejection.
        return Ok(());
    };
    let violation = |invariant, detail: String| Err(Violation { invariant, at, detail });
    match evidence.refusal {
        Some(Refusal::Expired) => return Ok(()),
        Some(Refusal::Unknown | Refusal::WrongClient) => {
            return violation(Invariant::L2, format!("logged out after a {:?} refusal", evidence.refusal));
        }
        _ => {}
    }
    // A stall during a cycle defers the answers the process reads, past
    // their attempts' deadlines: they came too late, as lost ones do.
    let lost = evidence.lost_answer || *after_lost_response || evidence.stalled_refreshing;
    let grace_covers_retries =
        authority.grace >= session.refresh_cycle_bound() && authority.grace_reuses > session.backoff.attempts;
    let lock_lost = evidence.lock_lost;
    let grace_covers_lock = lock_lost.is_none_or(|database| {
        authority.grace >= database.covering_grace(session)
            && authority.grace_reuses >= Database::covering_reuses(session)
    });
    if evidence.crashed || evidence.revoked {
        Ok(())
    } else if !lost && lock_lost.is_none() {
        violation(
            Invariant::L2,
            format!("logged out ({:?}) with no lost answer, lost lock, crash, revocation or expiry", evidence.refusal),
        )
    } else if (!lost || grace_covers_retries)
        && grace_covers_lock
        && !evidence.suspended
        && !evidence.stalled_refreshing
        && !evidence.lost_beyond_a_cycle
    {
        let what = if lock_lost.is_some() { "a lost lock" } else { "a lost answer" };
        violation(Invariant::L1, format!("{what} ended the session though grace is {:?}", authority.grace))
    } else {
        Ok(())
    }
}

/// What one process showed once its world had healed (faults off) and every
/// bound had passed since: the input of [`judge_healed`], the liveness verdict
/// both tiers give.
#[derive(Clone, Debug)]
pub struct Healed<'a> {
    /// The process, as the verdict names it.
    pub process: &'a str,
    /// Callers that got no token in that time.
    pub unserved: u64,
    /// How the last of them was answered, for the verdict's detail.
    pub last_unserved: Option<String>,
    /// The state the process settled in.
    pub state: Option<&'a StateView>,
    /// What the world knows about how its session ended, if it ended and the
    /// world leaves it ended (tier 1 logs the user in again and asks once
    /// more, so it never leaves a session ended here).
    pub evidence: Option<LogoutEvidence>,
    /// Callers told the session had ended, in a session that went on (the
    /// user logged in again): not counted in `unserved`.
    pub told_ended: Option<ToldEnded>,
}

/// Callers told, after healing, that the session had ended: right if the
/// logout is one the rules accept (the user must log in again first), as for
/// a session left ended (tier-2 seed 1037012: a write held up past the lock's
/// bound ended the session just after the world healed, and the app's other
/// processes answered "logged out" until the user's next login landed).
///
/// The excuse lasts as long as the user takes to log in again: callers told
/// later than `login_bound` after the session ended here (or after the world
/// healed, if it ended before) waited on a login that should have landed (the
/// `lock-not-released-on-death` plant leaves every login waiting on a lock).
#[derive(Clone, Debug)]
pub struct ToldEnded {
    /// How many callers were told.
    pub callers: u64,
    /// When the last of them was told.
    pub last_told_at: MonoTime,
    /// The logout to judge: for callers told another process ended the
    /// session, the rejection that ended it there, if one did.
    pub cause: LogoutCause,
    /// When this process saw its session end, or the world healed if later.
    pub ended_at: MonoTime,
    /// How long the user takes to log in again in a healed world.
    pub login_bound: Duration,
}

/// The liveness rule after healing (C5 with L1 and L2): once faults stop and
/// every bound has passed, callers are served. A session left ended, or one
/// whose callers were told it had ended, must have ended for a cause the
/// logout rules accept; otherwise any unserved caller is a violation.
///
/// # Errors
/// The violation, naming the process.
pub fn judge_healed(
    session: &SessionConfig,
    authority: &AuthorityConfig,
    healed: &Healed<'_>,
    at: MonoTime,
) -> Result<(), Violation> {
    let ended = healed.state.and_then(StateView::logout_cause).zip(healed.evidence);
    let named = |mut violation: Violation| {
        violation.detail = format!("{}: {}", healed.process, violation.detail);
        violation
    };
    match ended {
        Some((cause, evidence)) => judge_logout(session, authority, &cause, evidence, at).map_err(named),
        None => {
            // Without the world's evidence a logout excuses nobody.
            let told_unexcused = match (&healed.told_ended, healed.evidence) {
                (Some(told), Some(evidence)) => {
                    let late = told.last_told_at.saturating_duration_since(told.ended_at);
                    if late > told.login_bound {
                        return Err(named(Violation {
                            invariant: Invariant::C5,
                            at,
                            detail: format!(
                                "after healing, {} caller(s) were told the session had ended, the last {late:?} after \
                                 it ended, past the {:?} a login takes",
                                told.callers, told.login_bound
                            ),
                        }));
                    }
                    judge_logout(session, authority, &told.cause, evidence, at).map_err(named)?;
                    0
                }
                (Some(told), None) => told.callers,
                (None, _) => 0,
            };
            let unserved = healed.unserved + told_unexcused;
            if unserved == 0 {
                return Ok(());
            }
            let last = match &healed.last_unserved {
                Some(last) => last.as_str(),
                None if healed.unserved == 0 => "told the session had ended",
                None => "never answered",
            };
            Err(named(Violation {
                invariant: Invariant::C5,
                at,
                detail: format!(
                    "after healing, {unserved} caller(s) got no token (the last: {last}) in state {}",
                    healed.state.map_or_else(|| "unknown".to_owned(), ToString::to_string),
                ),
            }))
        }
    }
}

/// C8: whether two renderings of the same run are identical, and where they
/// first differ.
pub fn same_trace(first: &[String], second: &[String]) -> Result<(), Violation> {
    let detail = match first.iter().zip(second).enumerate().find(|(_, (a, b))| a != b) {
        None if first.len() == second.len() => return Ok(()),
        None => format!("traces differ in length: {} and {}", first.len(), second.len()),
        Some((line, (a, b))) => format!("traces differ at line {line}: {a:?} vs {b:?}"),
    };
    Err(Violation { invariant: Invariant::C8, at: MonoTime::ZERO, detail })
}

mod authority;
mod client;
mod shared_store;

pub use authority::AuthorityMonitor;
pub use client::ClientMonitor;
pub use shared_store::SharedStoreMonitor;

#[cfg(test)]
mod tests;
