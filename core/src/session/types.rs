//! The machine's inputs and outputs.

use core::fmt;
use core::time::Duration;

use crate::dpop::{DpopKey, DpopNonce};
use crate::ids::{CallerId, Generation, RefreshId, RevocationId, StoreOpId};
use crate::oauth::{Classified, MalformedReason, OAuthError, Rejected, TokenResponse, TransientCause};
use crate::stored::{DecodeError, StoredSession};
use crate::time::{BootTime, MonoTime, UnixTime};
use crate::token::{AccessToken, RefreshToken, TokenType};

use super::callers::Callers;
use super::state_view::StateView;

/// An input to [`Session::handle`](super::Session::handle).
///
/// Exhaustive on purpose: a driver matches on the machine's inputs and
/// outputs, and a new variant must make the compiler point at every driver.
#[derive(Clone, Debug)]
pub enum Event {
    /// A caller needs an access token. Answered by exactly one
    /// [`Command::Grant`] or [`Command::Fail`] naming `caller`.
    TokenWanted {
        /// Unique among callers waiting at the same time.
        caller: CallerId,
    },
    /// The app forces a refresh (the user changed something the token
    /// carries, or it suspects the token): `caller` is answered with a token
    /// from a refresh cycle that starts after this, even if the one held is
    /// fresh. One asked while a refresh runs waits for it and then refreshes
    /// with its result, so under rotation two forced refreshes rotate twice
    /// and never present one token twice.
    RefreshWanted {
        /// Answered like [`Event::TokenWanted`].
        caller: CallerId,
    },
    /// The app learned that the access token of `generation` is no good
    /// (a 401 on a request it will not retry): the next caller refreshes.
    /// Nothing answers it.
    Invalidated {
        /// The generation of the token that was refused.
        generation: Generation,
    },
    /// A resource answered 401 to a request that carried `generation`; the
    /// caller wants one retry. While a refresh runs, the retry waits for it:
    /// the server may have killed the current token along with the old one. Answered like [`Event::TokenWanted`]. A caller
    /// sends this at most once per request: that is what rules out 401 loops.
    Unauthorized {
        /// The caller whose request was refused.
        caller: CallerId,
        /// The generation of the token it carried.
        generation: Generation,
    },
    /// The token endpoint answered refresh `id`; see [`oauth::classify`](crate::oauth::classify).
    RefreshCompleted {
        /// The refresh answered.
        id: RefreshId,
        /// What the answer means.
        outcome: Classified,
        /// The `DPoP-Nonce` the answer carried, if valid: the token
        /// endpoint's newest nonce replaces the one held, whatever the answer.
        dpop_nonce: Option<DpopNonce>,
    },
    /// Refresh `id` got no answer.
    RefreshFailed {
        /// The refresh that failed.
        id: RefreshId,
        /// How.
        failure: TransportFailure,
    },
    /// [`Io::LoadStore`] `op` finished.
    StoreLoaded {
        /// The load answered.
        op: StoreOpId,
        /// What the store holds; `None` when it is empty.
        stored: Option<StoredSession>,
        /// The wall clock now, to turn a stored expiry back into monotonic time.
        unix_now: UnixTime,
        /// The boot clock now, where the platform has one: a stored expiry
        /// written on this boot is read by it, whatever the wall clock did
        /// since the write.
        boot_now: Option<BootTime>,
    },
    /// [`Io::LockStore`] `op` holds the store's cross-process lock, and
    /// the store was read under it. This is how the machine learns that
    /// another process wrote a newer generation: it adopts that instead of
    /// refreshing. A lock that could not be taken in time, or a read that
    /// failed under it, is answered with [`Event::StoreFailed`] instead (and
    /// the driver releases the lock).
    StoreLocked {
        /// The lock answered.
        op: StoreOpId,
        /// What the store holds; `None` when it is empty.
        stored: Option<StoredSession>,
        /// The wall clock now, as for [`Event::StoreLoaded`].
        unix_now: UnixTime,
        /// The boot clock now, as for [`Event::StoreLoaded`].
        boot_now: Option<BootTime>,
    },
    /// [`Io::Persist`] or [`Io::ClearStore`] `op` is durable.
    StoreWritten {
        /// The write that finished.
        op: StoreOpId,
    },
    /// Store operation `op` failed.
    StoreFailed {
        /// The operation that failed.
        op: StoreOpId,
        /// How.
        error: StoreError,
    },
    /// The user logs out: revoke, clear the store, fail every waiter. Answered
    /// by [`Command::LogoutFinished`] once that work is done.
    LogoutRequested,
    /// The revocation [`Io::Revoke`] `id` ended, however it ended
    /// (answered, refused, failed or timed out): revocation is best effort,
    /// and only a logout waits for it.
    RevocationEnded {
        /// The revocation.
        id: RevocationId,
    },
    /// The user logged in (or the app obtained tokens some other way). Works
    /// in any state, also while the store is still being read: the login
    /// outranks whatever the store held. `caller` is answered with
    /// [`Command::LoginStored`] once the session is durable (or with
    /// [`Command::Fail`]: the store gave up, a logout came first, or the wait
    /// bound passed).
    LoggedIn {
        /// Who waits for the login to be stored.
        caller: CallerId,
        /// The tokens.
        session: NewSession,
    },
}

/// How a refresh request went unanswered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TransportFailure {
    /// Certainly never reached the server (connection refused, DNS failure).
    NotSent,
    /// No answer in time; the server may have acted on it.
    Timeout,
    /// The connection broke after the request was written; the server may have acted on it.
    Interrupted,
}

impl TransportFailure {
    /// Whether the server may have acted on the request.
    pub fn outcome_unknown(self) -> bool {
        !matches!(self, Self::NotSent)
    }
}

/// How a store operation failed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreError {
    /// The store could not be reached or refused (locked keyring, I/O error);
    /// worth retrying.
    Unavailable,
    /// A load found a blob it cannot decode. It is left in place: a newer
    /// version of the app may have written it, and a login overwrites it.
    Corrupt(DecodeError),
    /// A write under the shared store's lock was refused: another process
    /// took the lock since (this one lost it), and may have written newer
    /// tokens. Nothing was written. The lock is gone, so the machine lets
    /// it go and writes again only under a new one, after reading what the
    /// store holds: never over another process's newer tokens.
    Fenced,
}

/// Tokens from a login, to start a session. A token pair, a refresh token
/// alone (the first caller refreshes), or an access token alone (served
/// while usable; then the user must log in again).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct NewSession {
    /// The access token; `None` when only a refresh token was kept.
    pub access_token: Option<AccessToken>,
    /// How to present it.
    pub token_type: TokenType,
    /// Its lifetime; `None` when unknown.
    pub lifetime: Option<Duration>,
    /// The refresh token that keeps the session alive; `None` when the
    /// server issued none.
    pub refresh_token: Option<RefreshToken>,
    /// The granted scope.
    pub scope: Option<String>,
    /// When the login request was sent: the lifetime counts from here.
    pub requested_at: MonoTime,
    /// `lifetime` is only what was left of the token, not what it was issued
    /// with (tokens the app held, from an old store): it gets the whole
    /// refresh margin, like a restored token of unknown issued lifetime (U2).
    pub issued_lifetime_unknown: bool,
    /// The DPoP key the tokens are bound to; `None` for bearer tokens. The
    /// login is refused ([`FailReason::DpopMismatch`]) unless the token type
    /// is `DPoP` exactly when a key is given.
    pub dpop_key: Option<DpopKey>,
}

impl NewSession {
    /// A bearer pair just issued with `lifetime`, for a login sent at `requested_at`.
    pub fn issued(
        access_token: AccessToken,
        lifetime: Duration,
        refresh_token: RefreshToken,
        requested_at: MonoTime,
    ) -> Self {
        Self {
            access_token: Some(access_token),
            token_type: TokenType::Bearer,
            lifetime: Some(lifetime),
            refresh_token: Some(refresh_token),
            scope: None,
            requested_at,
            issued_lifetime_unknown: false,
            dpop_key: None,
        }
    }

    /// A session from a token response to a login sent at `requested_at`.
    /// Without a refresh token in it, the session lives as long as its
    /// access token.
    pub fn from_response(response: TokenResponse, requested_at: MonoTime) -> Self {
        Self {
            refresh_token: response.refresh_token,
            access_token: Some(response.access_token),
            token_type: response.token_type,
            lifetime: response.lifetime,
            scope: response.scope,
            requested_at,
            issued_lifetime_unknown: false,
            dpop_key: None,
        }
    }

    /// A session from tokens the app already holds (migrated from another
    /// library, or handed over by another component), as a store would keep
    /// them: its access token expires at `stored.access_expires_at` on the
    /// wall clock, which reads `unix_now` at `now`. Its generation is not
    /// kept: a login always makes a new one.
    pub fn from_stored(stored: StoredSession, now: MonoTime, unix_now: UnixTime) -> Self {
        let left = stored.access_expires_at.map(|expires_at| expires_at.saturating_duration_since(unix_now));
        // The lifetime counts from when it was issued: `issued` before now.
        let (lifetime, requested_at) = match (left, stored.access_lifetime) {
            (Some(left), Some(issued)) => {
                let ago = issued.saturating_sub(left);
                if ago <= now.elapsed() {
                    (Some(issued), now.saturating_sub(ago))
                } else {
                    // Issued before this clock's zero: the expiry stays exact,
                    // the lifetime it is judged by is what lies since zero.
                    (Some(left.saturating_add(now.elapsed())), MonoTime::ZERO)
                }
            }
            (Some(left), None) => (Some(left), now),
            (None, _) => (None, now),
        };
        Self {
            access_token: stored.access_token,
            token_type: stored.token_type,
            lifetime,
            refresh_token: stored.refresh_token,
            scope: stored.scope,
            requested_at,
            issued_lifetime_unknown: stored.access_lifetime.is_none(),
            dpop_key: stored.dpop_key,
        }
    }

    /// Bound by DPoP to `key`, which made the login's proofs. The token
    /// type stays what the server said: a bound login needs `DPoP` (a
    /// server that answered `Bearer` did not bind the tokens).
    #[must_use]
    pub fn with_dpop_key(mut self, key: DpopKey) -> Self {
        self.dpop_key = Some(key);
        self
    }

    /// Whether the token type and the key disagree: `DPoP` tokens without
    /// their key cannot be used, and a key with bearer tokens binds nothing.
    pub fn binding_mismatch(&self) -> bool {
        (self.token_type == TokenType::DPoP) != self.dpop_key.is_some()
    }

    /// A session from a refresh token alone: its first caller refreshes.
    pub fn refresh_only(refresh_token: RefreshToken, requested_at: MonoTime) -> Self {
        Self {
            access_token: None,
            token_type: TokenType::Bearer,
            lifetime: None,
            refresh_token: Some(refresh_token),
            scope: None,
            requested_at,
            issued_lifetime_unknown: false,
            dpop_key: None,
        }
    }
}

/// What a DPoP proof of a token request needs from the machine; the driver
/// adds the method, URL, time and unique id ([`DpopKey::proof`]).
#[derive(Clone, Debug)]
pub struct ProofNeeded {
    /// The key the session's tokens are bound to.
    pub key: DpopKey,
    /// The token endpoint's latest nonce, if it gave one.
    pub nonce: Option<DpopNonce>,
}

/// Work a [`Command::Io`] asks of the driver: store, network. Each is
/// answered with an [`Event`] (named on the variant), except
/// [`Io::UnlockStore`]. Exhaustive on purpose, like [`Event`].
#[derive(Clone, Debug)]
pub enum Io {
    /// Read the store; answer with [`Event::StoreLoaded`] or [`Event::StoreFailed`].
    LoadStore {
        /// Names this operation.
        op: StoreOpId,
    },
    /// Write the whole session as one entry; answer with [`Event::StoreWritten`]
    /// or [`Event::StoreFailed`]. Store operations are issued one at a time.
    Persist {
        /// Names this operation.
        op: StoreOpId,
        /// What to write.
        session: StoredSession,
    },
    /// Delete the stored session; answer like [`Io::Persist`].
    ClearStore {
        /// Names this operation.
        op: StoreOpId,
    },
    /// Take the store's cross-process lock, then read the store; answer
    /// with [`Event::StoreLocked`] or [`Event::StoreFailed`]. Only with
    /// [`SessionConfig::shared_store`](super::SessionConfig::shared_store).
    /// The lock is held until [`Io::UnlockStore`]; store operations
    /// issued meanwhile run under it. The machine bounds the wait
    /// ([`SessionConfig::lock_wait`](super::SessionConfig::lock_wait), one of
    /// its timers): a driver need not, and must not count it as failed itself.
    LockStore {
        /// Names this operation.
        op: StoreOpId,
    },
    /// Release the store's lock, or, when its wait ran out, stop waiting for
    /// it: a lock that comes after this must be released at once, never
    /// kept. Nothing answers it; no store operation is in flight when it is
    /// issued (an answer to an abandoned wait is ignored).
    UnlockStore,
    /// Send a refresh request with this token
    /// ([`oauth::refresh_request`](crate::oauth::refresh_request)); answer with
    /// [`Event::RefreshCompleted`] or [`Event::RefreshFailed`].
    SendRefresh {
        /// Names this attempt.
        id: RefreshId,
        /// The token to present.
        refresh_token: RefreshToken,
        /// 1 for the first attempt of a cycle (a retry with a server's
        /// nonce keeps its attempt's number).
        attempt: u32,
        /// The session is DPoP-bound: sign a proof of this request with this
        /// key and send it as the `DPoP` header. `None`: a bearer session.
        dpop: Option<ProofNeeded>,
    },
    /// Revoke this token at the server (RFC 7009), best effort; answer with
    /// [`Event::RevocationEnded`] whatever the outcome. A logout waits for
    /// its revocation at most [`SessionConfig::request_timeout`](super::SessionConfig::request_timeout).
    Revoke {
        /// Names this revocation.
        id: RevocationId,
        /// The token to revoke.
        refresh_token: RefreshToken,
    },
}

/// An output of [`Session::poll_command`](super::Session::poll_command), to be
/// carried out by the driver in the order given: either I/O to start
/// ([`Command::Io`]) or something for the app side (answers to callers, what
/// may be handed out, the state). Exhaustive on purpose, like [`Event`].
#[derive(Clone, Debug)]
#[must_use]
pub enum Command {
    /// Start this I/O; its answer comes back as an [`Event`].
    Io(Io),
    /// Every logout requested so far (the first `requests` of
    /// [`Event::LogoutRequested`]) is done: the store no longer holds the
    /// session (or has stopped answering, after its retries), and its
    /// revocation ended or ran out of time. An app that exits after a logout
    /// (a CLI) waits for this. Also issued when a login overtook the logout.
    LogoutFinished {
        /// How many logout requests this answers, counted from the first.
        requests: u64,
    },
    /// What a caller may be handed without asking the machine, until
    /// `usable_until`: the driver's fast path. `None` withdraws it.
    Publish(Option<AccessGrant>),
    /// Hand `grant` to these callers.
    Grant {
        /// The callers answered.
        callers: Callers,
        /// Their token.
        grant: AccessGrant,
    },
    /// These callers' logins are durable: the store holds `generation`
    /// (the login's tokens, or newer ones that replaced them).
    LoginStored {
        /// The callers answered.
        callers: Callers,
        /// What the store holds.
        generation: Generation,
    },
    /// Fail these callers.
    Fail {
        /// The callers answered.
        callers: Callers,
        /// Why.
        reason: FailReason,
    },
    /// The observable state changed.
    StateChanged(StateView),
}

/// Input the machine ignored because it made no sense any more (a second
/// answer, a stale store answer): how many, and why the last one was.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ignored {
    /// How many inputs were ignored.
    pub count: u64,
    /// Why the last one was.
    pub last: Option<&'static str>,
}

/// When the machine's timer is next due, and why: what
/// [`Session::poll_timeout`](super::Session::poll_timeout) returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeout {
    /// Call [`Session::handle_timeout`](super::Session::handle_timeout) at this time.
    pub at: MonoTime,
    /// What falls due then, for traces ("the refresh window opens").
    pub reason: &'static str,
}

/// An access token a caller may use (the machine's output: exhaustive like
/// [`Command`], which carries it).
#[derive(Clone, Debug)]
pub struct AccessGrant {
    /// Its generation, to report with a 401.
    pub generation: Generation,
    /// The token.
    pub access_token: AccessToken,
    /// How to present it.
    pub token_type: TokenType,
    /// Do not hand it out from this time on; `None` when the lifetime is unknown.
    pub usable_until: Option<MonoTime>,
    /// The DPoP key it is bound to: every request that presents it carries
    /// a proof by this key. `None` for bearer tokens.
    pub dpop_key: Option<DpopKey>,
}

impl AccessGrant {
    /// Whether it may still be handed out at `now`.
    pub fn usable_at(&self, now: MonoTime) -> bool {
        self.usable_until.is_none_or(|until| now < until)
    }
}

/// Why a caller gets no token. Exhaustive on purpose, like [`Command`],
/// which carries it: every driver maps each reason to its own error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FailReason {
    /// The session is logged out; the user must log in again.
    LoggedOut(LogoutCause),
    /// The refresh failed for now (network, server, rate limit); a later call may succeed.
    RefreshUnavailable(AttemptFailure),
    /// The server refused the refresh for a reason that neither retrying nor
    /// logging out fixes (e.g. `invalid_client`): the app is misconfigured.
    Rejected(Rejected),
    /// The token endpoint wants the user to act (`mfa_required`,
    /// `interaction_required`, `consent_required`, `login_required`). The
    /// session and its tokens are kept (the refresh token was not proven
    /// dead) and no refresh is tried again on its own: until the app logs in
    /// again or forces a refresh, callers whose access token is spent get
    /// this at once.
    InteractionRequired(OAuthError),
    /// The store could not be read or written, so no token can be handed out
    /// (tokens are written before they are used). They are kept in memory.
    StoreUnavailable,
    /// The access token is no longer usable and the session holds no refresh
    /// token (the server issued none): the user must log in again. No
    /// request was made.
    MissingRefreshToken,
    /// A login's token type and DPoP key disagree (see
    /// [`NewSession::binding_mismatch`]): it was refused, and the session
    /// held before is kept.
    DpopMismatch,
    /// The caller waited longer than [`SessionConfig::wait_bound`](super::SessionConfig::wait_bound).
    TimedOut,
    /// Too many callers were waiting already.
    TooManyWaiters,
}

/// How the last attempt of a refresh cycle failed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AttemptFailure {
    /// No answer.
    Transport(TransportFailure),
    /// The server answered with a transient error.
    Server(TransientCause),
    /// The server answered with something unusable.
    Malformed(MalformedReason),
    /// The server asked to wait longer than a cycle may.
    RetryAfter(Duration),
}

/// Why a session ended.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LogoutCause {
    /// The store held no session at start.
    NoSession,
    /// The user asked.
    Requested,
    /// The server declared the refresh token dead. `after_lost_response` says an
    /// earlier answer for the same token was lost, so a server without a grace
    /// window may have rotated it: that is why the session ended.
    RefreshTokenRejected {
        /// The server's error.
        error: OAuthError,
        /// An answer for this token was lost before.
        after_lost_response: bool,
    },
    /// The stored session could not be decoded; it is left in place.
    StoredSessionUnreadable(DecodeError),
    /// Another process sharing the store ended the session (a logout there
    /// cleared the store this session was written to).
    EndedElsewhere,
}

impl fmt::Display for LogoutCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoSession => f.write_str("no session was stored; log in"),
            Self::Requested => f.write_str("the user logged out"),
            Self::RefreshTokenRejected { error, after_lost_response: false } => {
                write!(f, "the server rejected the refresh token ({error}); log in again")
            }
            Self::RefreshTokenRejected { error, after_lost_response: true } => write!(
                f,
                "the server rejected the refresh token ({error}) after an earlier answer was lost; log in again"
            ),
            Self::StoredSessionUnreadable(error) => write!(f, "the stored session cannot be read: {error}"),
            Self::EndedElsewhere => f.write_str("another process sharing the store ended the session"),
        }
    }
}

impl fmt::Display for AttemptFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Transport(failure) => write!(f, "{failure}"),
            Self::Server(cause) => write!(f, "{cause}"),
            Self::Malformed(reason) => write!(f, "{reason}"),
            Self::RetryAfter(wait) => write!(f, "the server asked to wait {} s", wait.as_secs()),
        }
    }
}

impl fmt::Display for TransportFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NotSent => "the request could not be sent",
            Self::Timeout => "no answer came in time",
            Self::Interrupted => "the connection broke before the answer came",
        })
    }
}

impl fmt::Display for FailReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::LoggedOut(cause) => write!(f, "logged out: {cause}"),
            Self::RefreshUnavailable(failure) => write!(f, "the refresh failed for now: {failure}"),
            Self::Rejected(rejected) => {
                write!(f, "the token endpoint refused the client ({rejected}); check the client's configuration")
            }
            Self::InteractionRequired(error) => write!(f, "the user must act before a refresh can succeed ({error})"),
            Self::StoreUnavailable => f.write_str("the token store cannot be read or written"),
            Self::MissingRefreshToken => {
                f.write_str("the access token is spent and there is no refresh token to renew it; log in again")
            }
            Self::DpopMismatch => f.write_str(
                "the login's tokens and its DPoP key disagree (DPoP tokens need their key, bearer ones none)",
            ),
            Self::TimedOut => f.write_str("timed out waiting for a token"),
            Self::TooManyWaiters => f.write_str("too many callers are waiting for a token"),
        }
    }
}

impl LogoutCause {
    /// Whether entering this state clears the store. Only a session the machine
    /// held is cleared: an empty store needs nothing, and an unreadable blob is
    /// left for the version of the app that wrote it (a login overwrites it).
    pub fn clears_store(&self) -> bool {
        matches!(self, Self::Requested | Self::RefreshTokenRejected { .. })
    }
}
