//! The device authorization grant (RFC 8628), for CLIs and boxes without a
//! browser: the app shows the user a code to enter on another device, and
//! polls the token endpoint until the user has approved or refused.
//!
//! [`authorization_request`] and [`parse_authorization`] start a login;
//! [`DevicePoller`] decides, without I/O, when to poll and what each answer
//! means, so the rules the RFC sets are tested here like the session machine:
//! it never polls sooner than the interval (which `slow_down` lengthens by five
//! seconds for good, and which doubles after a failed or lost request, §3.5),
//! never after the code expired, and ends every login with a typed outcome.
//!
//! ```
//! use std::time::Duration;
//! use freshen_core::device::{parse_authorization, DevicePoller, NextPoll, PollAnswer};
//! use freshen_core::oauth::{Classified, Policy, Response, classify};
//! use freshen_core::time::MonoTime;
//!
//! let body = br#"{"device_code":"d1","user_code":"WDJB-MJHT","verification_uri":"https://example.com/device",
//!                 "expires_in":900,"interval":5}"#;
//! let authorization = parse_authorization(&Response { status: 200, headers: &[], body })?;
//! println!("Go to {} and enter {}", authorization.verification_uri, authorization.user_code);
//!
//! let mut poller = DevicePoller::new(&authorization, MonoTime::ZERO);
//! assert_eq!(poller.next(MonoTime::ZERO), NextPoll::At(MonoTime::from_secs(5)));
//! assert_eq!(poller.next(MonoTime::from_secs(5)), NextPoll::Now);
//! // The transport sends `freshen_core::device::token_request(..)`; the user has not approved yet.
//! let pending = Response { status: 400, headers: &[], body: br#"{"error":"authorization_pending"}"# };
//! let answer = PollAnswer::Answered(classify(&Policy::default(), &pending, None));
//! assert!(matches!(poller.answered(MonoTime::from_secs(5), answer), Ok(None)));
//! assert_eq!(poller.next(MonoTime::from_secs(6)), NextPoll::At(MonoTime::from_secs(10)));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use core::fmt;
use core::time::Duration;

use crate::dpop::MAX_NONCE_RETRIES;
use crate::oauth::{
    Classified, Client, FormRequest, Malformed, MalformedReason, OAuthError, Rejected, Response, TokenResponse,
    Transient, TransientCause, authenticated, form_buffer, oauth_error,
};
use crate::scrub::{JsonFields, Scalar};
use crate::session::TransportFailure;
use crate::time::MonoTime;
use crate::token::DeviceCode;

/// The `grant_type` of a device token request (RFC 8628 §3.4).
pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// The polling interval when the server names none (RFC 8628 §3.2).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

/// How much each `slow_down` lengthens the interval (RFC 8628 §3.5).
pub const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);

/// The longest interval that backing off after failures reaches on its own;
/// an interval the server sets or lengthens is kept whatever its size.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The longest a device code is believed to live: a larger `expires_in` is
/// cut to this, so a poller always ends.
pub const MAX_EXPIRES_IN: Duration = Duration::from_secs(60 * 60);

/// The longest user code, URI or device code read from a response.
const MAX_FIELD_BYTES: usize = 2 * 1024;

/// A started device login: what the user is shown, and the code the app polls with.
#[derive(Clone)]
#[non_exhaustive]
pub struct DeviceAuthorization {
    /// The secret the app polls with; never shown to the user.
    pub device_code: DeviceCode,
    /// What the user types in at the verification URI.
    pub user_code: String,
    /// Where the user goes, on any device.
    pub verification_uri: String,
    /// The verification URI with the user code filled in (for a QR code or a link), if the server gives one.
    pub verification_uri_complete: Option<String>,
    /// How long the codes live, from when the answer arrived (at most [`MAX_EXPIRES_IN`]).
    pub expires_in: Duration,
    /// How long to wait between polls (at least one second).
    pub interval: Duration,
}

impl fmt::Debug for DeviceAuthorization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceAuthorization")
            .field("device_code", &self.device_code)
            .field("user_code", &self.user_code)
            .field("verification_uri", &self.verification_uri)
            .field("verification_uri_complete", &self.verification_uri_complete)
            .field("expires_in", &self.expires_in)
            .field("interval", &self.interval)
            .finish()
    }
}

/// Why a device authorization response could not start a login.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The server refused with an OAuth error (`invalid_client`, `invalid_scope`, ...).
    #[error("the device authorization endpoint refused: {0}")]
    Refused(OAuthError),
    /// A status that is neither a success nor an OAuth error (a 404: wrong endpoint; a 5xx: try later).
    #[error("the device authorization endpoint answered {0}")]
    Status(u16),
    /// A success without the fields RFC 8628 §3.2 requires, or with unusable ones.
    #[error("the device authorization response lacks a usable {0}")]
    Malformed(&'static str),
}

/// Builds the device authorization request (RFC 8628 §3.1).
///
/// ```
/// use freshen_core::device::authorization_request;
/// use freshen_core::oauth::Client;
///
/// let request = authorization_request(&Client::public("cli"), Some("openid offline_access"));
/// assert_eq!(request.expose_body(), "scope=openid+offline_access&client_id=cli");
/// ```
pub fn authorization_request(client: &Client, scope: Option<&str>) -> FormRequest {
    let scope_parts = scope.map(|scope| ["scope", scope]).into_iter().flatten();
    let mut form = form_urlencoded::Serializer::new(form_buffer(client, scope_parts));
    if let Some(scope) = scope {
        form.append_pair("scope", scope);
    }
    authenticated(client, form)
}

/// Builds the device access token request (RFC 8628 §3.4), one per poll.
pub fn token_request(client: &Client, device_code: &DeviceCode) -> FormRequest {
    let parts = ["grant_type", GRANT_TYPE, "device_code", device_code.expose_secret()];
    let mut form = form_urlencoded::Serializer::new(form_buffer(client, parts.into_iter()));
    form.append_pair("grant_type", GRANT_TYPE);
    form.append_pair("device_code", device_code.expose_secret());
    authenticated(client, form)
}

/// The fields of a device authorization response that are read: the rest are skipped.
const AUTHORIZATION_FIELDS: [&str; 9] = [
    "error",
    "error_description",
    "device_code",
    "user_code",
    "verification_uri",
    "verification_url",
    "verification_uri_complete",
    "expires_in",
    "interval",
];

/// Reads a device authorization response. Bounded like [`classify`](crate::oauth::classify):
/// at most [`MAX_BODY_BYTES`](crate::oauth::MAX_BODY_BYTES) are parsed, and no field is trusted
/// beyond its documented range.
///
/// # Errors
/// The server refused, or answered something that cannot start a login.
pub fn parse_authorization(response: &Response<'_>) -> Result<DeviceAuthorization, StartError> {
    let object = if response.body.len() > crate::oauth::MAX_BODY_BYTES {
        None
    } else {
        JsonFields::read(response.body, &AUTHORIZATION_FIELDS)
    };
    if let Some(error) = object.as_ref().and_then(|o| oauth_error(response.status, o)) {
        return Err(StartError::Refused(error));
    }
    if !(200..=299).contains(&response.status) {
        return Err(StartError::Status(response.status));
    }
    let object = object.ok_or(StartError::Malformed("JSON object"))?;
    let text = |name: &'static str| {
        object
            .get(name)
            .and_then(Scalar::as_str)
            .filter(|text| !text.is_empty() && text.len() <= MAX_FIELD_BYTES)
            .ok_or(StartError::Malformed(name))
    };
    let device_code = DeviceCode::new(text("device_code")?);
    // Shown to the user as they are, so nothing that could forge a terminal line.
    let user_code = text("user_code")?;
    if !user_code.chars().all(|c| c.is_ascii_graphic() || c == ' ') {
        return Err(StartError::Malformed("user_code"));
    }
    // Some servers (Google's) spell it `verification_url`.
    let verification_uri = text("verification_uri")
        .or_else(|_| text("verification_url"))
        .map_err(|_| StartError::Malformed("verification_uri"))?;
    if !is_web_uri(verification_uri) {
        return Err(StartError::Malformed("verification_uri"));
    }
    let verification_uri_complete = text("verification_uri_complete").ok().filter(|uri| is_web_uri(uri));
    let expires_in = seconds(object.get("expires_in")).ok_or(StartError::Malformed("expires_in"))?;
    let interval = match object.get("interval") {
        None | Some(Scalar::Null) => DEFAULT_INTERVAL,
        some => seconds(some).ok_or(StartError::Malformed("interval"))?,
    };
    Ok(DeviceAuthorization {
        device_code,
        user_code: user_code.to_owned(),
        verification_uri: verification_uri.to_owned(),
        verification_uri_complete: verification_uri_complete.map(str::to_owned),
        expires_in,
        interval,
    })
}

fn is_web_uri(text: &str) -> bool {
    (text.starts_with("https://") || text.starts_with("http://")) && text.chars().all(|c| c.is_ascii_graphic())
}

/// A whole number of seconds, at least one, given as a number or a numeric
/// string; at most [`MAX_EXPIRES_IN`], past which a login has expired anyway.
fn seconds(value: Option<&Scalar<'_>>) -> Option<Duration> {
    let seconds = match value? {
        Scalar::Number(number) => Some(*number),
        Scalar::Text(text) => text.trim().parse::<u64>().ok(),
        _ => None,
    }?;
    (seconds >= 1).then(|| Duration::from_secs(seconds.min(MAX_EXPIRES_IN.as_secs())))
}

/// What the poller says to do at a given time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NextPoll {
    /// Send a token request now, then report its answer to [`DevicePoller::answered`].
    Now,
    /// Wait until then (and ask again).
    At(MonoTime),
    /// A poll is out: wait for its answer.
    AwaitingAnswer,
    /// The codes expired before the user approved: the login is over.
    Expired,
    /// An answer already ended the login.
    Ended,
}

/// How one poll went.
#[derive(Clone, Debug)]
pub enum PollAnswer {
    /// The token endpoint answered; see [`classify`](crate::oauth::classify).
    Answered(Classified),
    /// No answer.
    Failed(TransportFailure),
}

/// Why a device login ended without tokens.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceError {
    /// The user refused (`access_denied`).
    #[error("the user refused the login")]
    Denied,
    /// The codes expired before the user approved (`expired_token`, or no approval in time).
    #[error("the login expired before the user approved it")]
    Expired,
    /// The server refused for another reason (`invalid_client`, `invalid_grant`: an unknown or used code, ...).
    #[error("the token endpoint refused the device code: {0}")]
    Refused(Rejected),
    /// The server issued something unusable for an approved login: the code
    /// is spent, so the login must start again.
    #[error("the token endpoint's answer to an approved login was unusable: {0}")]
    Malformed(MalformedAnswer),
}

/// The reason carried by [`DeviceError::Malformed`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MalformedAnswer(pub MalformedReason);

impl fmt::Display for MalformedAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// Decides when to poll and what each answer means (see the [module docs](self)).
#[derive(Clone, Debug)]
pub struct DevicePoller {
    interval: Duration,
    expires_at: MonoTime,
    /// The earliest the next poll may go out.
    next_at: MonoTime,
    in_flight: bool,
    ended: bool,
    /// Nonce challenges in a row (see [`MAX_NONCE_RETRIES`]).
    nonce_retries: u32,
}

impl DevicePoller {
    /// A poller for `authorization`, whose answer arrived at `now`. The first
    /// poll waits one interval: the user cannot have approved sooner.
    pub fn new(authorization: &DeviceAuthorization, now: MonoTime) -> Self {
        let interval = authorization.interval.clamp(Duration::from_secs(1), MAX_EXPIRES_IN);
        Self {
            interval,
            expires_at: now.saturating_add(authorization.expires_in.min(MAX_EXPIRES_IN)),
            next_at: now.saturating_add(interval),
            in_flight: false,
            ended: false,
            nonce_retries: 0,
        }
    }

    /// The interval now in force.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// When the codes expire.
    pub fn expires_at(&self) -> MonoTime {
        self.expires_at
    }

    /// What to do at `now`. [`NextPoll::Now`] counts as sent: the next call
    /// says [`NextPoll::AwaitingAnswer`] until [`DevicePoller::answered`].
    pub fn next(&mut self, now: MonoTime) -> NextPoll {
        if self.ended {
            NextPoll::Ended
        } else if self.in_flight {
            NextPoll::AwaitingAnswer
        } else if self.next_at >= self.expires_at || now >= self.expires_at {
            // No poll could go out before expiry.
            self.ended = true;
            NextPoll::Expired
        } else if now < self.next_at {
            NextPoll::At(self.next_at)
        } else {
            self.in_flight = true;
            NextPoll::Now
        }
    }

    /// The answer to the poll sent last, arrived at `now`: `Ok(Some(tokens))`
    /// once the user approved (log them in), `Ok(None)` to keep polling, or
    /// why the login ended. An answer with no poll out is ignored (`Ok(None)`).
    ///
    /// # Errors
    /// The login ended without tokens; see [`DeviceError`].
    pub fn answered(&mut self, now: MonoTime, answer: PollAnswer) -> Result<Option<TokenResponse>, DeviceError> {
        if !self.in_flight || self.ended {
            return Ok(None);
        }
        self.in_flight = false;
        if let PollAnswer::Answered(Classified::NonceRequired(error)) = answer {
            // The server did not look at the poll: it wants one with its
            // nonce, at once. A server that keeps asking is refusing.
            self.nonce_retries += 1;
            if self.nonce_retries > MAX_NONCE_RETRIES {
                return self.end(Err(DeviceError::Refused(Rejected::Error(error))));
            }
            self.next_at = self.next_at.min(now);
            return Ok(None);
        }
        self.nonce_retries = 0;
        let error = match answer {
            PollAnswer::Answered(Classified::Success(tokens)) => return self.end(Ok(Some(tokens))),
            PollAnswer::Answered(Classified::Malformed(Malformed { reason, .. })) => {
                return self.end(Err(DeviceError::Malformed(MalformedAnswer(reason))));
            }
            PollAnswer::Answered(Classified::Rejected(rejected @ Rejected::Status(_))) => {
                return self.end(Err(DeviceError::Refused(rejected)));
            }
            PollAnswer::Answered(
                Classified::Terminal(error)
                | Classified::NonceRequired(error)
                | Classified::InteractionRequired(error)
                | Classified::Rejected(Rejected::Error(error))
                | Classified::Transient(Transient { cause: TransientCause::RetryRequested(error), .. }),
            ) => error,
            PollAnswer::Answered(Classified::Transient(Transient { retry_after, .. })) => {
                // A 5xx, 429 or 408: back off, and never sooner than the server asked.
                self.back_off(now, retry_after);
                return Ok(None);
            }
            PollAnswer::Failed(_) => {
                // §3.5: back off exponentially after a connection failure.
                self.back_off(now, None);
                return Ok(None);
            }
        };
        match error.code.as_str() {
            "authorization_pending" => {}
            "slow_down" => self.interval = self.interval.saturating_add(SLOW_DOWN_STEP).min(MAX_EXPIRES_IN),
            "temporarily_unavailable" => {
                self.back_off(now, None);
                return Ok(None);
            }
            "access_denied" => return self.end(Err(DeviceError::Denied)),
            "expired_token" => return self.end(Err(DeviceError::Expired)),
            _ => return self.end(Err(DeviceError::Refused(Rejected::Error(error)))),
        }
        self.next_at = now.saturating_add(self.interval);
        Ok(None)
    }

    fn end(
        &mut self,
        outcome: Result<Option<TokenResponse>, DeviceError>,
    ) -> Result<Option<TokenResponse>, DeviceError> {
        self.ended = true;
        outcome
    }

    /// Doubles the interval, up to [`MAX_BACKOFF`] (never shortening one the
    /// server set), and waits at least `retry_after`.
    fn back_off(&mut self, now: MonoTime, retry_after: Option<Duration>) {
        self.interval = self.interval.max((self.interval * 2).min(MAX_BACKOFF));
        self.next_at = now.saturating_add(self.interval.max(retry_after.unwrap_or_default()));
    }
}

#[cfg(test)]
mod tests;
