//! The OAuth 2.0 refresh exchange as data (RFC 6749 §6, RFC 7009), with no I/O.
//!
//! [`refresh_request`] and [`revocation_request`] build form requests;
//! [`classify`] turns whatever came back — status, headers and body bytes — into
//! one [`Classified`] outcome that the session machine acts on. Classification
//! never panics, reads at most [`MAX_BODY_BYTES`], and keeps a rotated refresh
//! token even when the rest of a success response is unusable.
//!
//! # The `expires_in` rule
//!
//! * A positive integer, a positive finite number (rounded down) or a string
//!   holding one (`"3600"`, as some servers send) is the lifetime in seconds,
//!   capped at [`Policy::max_lifetime`].
//! * Absent, `null`, zero, negative, below one second, not finite, or any other
//!   type means the lifetime is *unknown*: the session then does not refresh
//!   ahead of time and relies on a resource's 401 instead. Guessing a lifetime
//!   would either refresh in a loop (too short) or send expired tokens (too long).
//!
//! # Server deviations
//!
//! | response | classified as |
//! |---|---|
//! | 400/401/403 `invalid_grant` (with or without description) | [`Classified::Terminal`] |
//! | 200 with an `error` field | as the error it names |
//! | 400 `invalid_request` asking to retry (concurrent refresh) | [`Classified::Transient`] |
//! | 400 `invalid_request` otherwise (fosite's answer to the loser of two concurrent rotations) | [`Classified::Rejected`]; the session re-reads the store first, like after `invalid_grant`, and never logs out |
//! | `mfa_required`, `interaction_required`, `consent_required`, `login_required` | [`Classified::InteractionRequired`]: the user must act; session kept, not retried |
//! | 401 `invalid_client` (with `WWW-Authenticate`), `invalid_scope`, 404 or another 4xx without an OAuth error | [`Classified::Rejected`]: client misconfigured, session kept |
//! | 5xx, any body (HTML included) | [`Classified::Transient`] |
//! | 429 / 503 with `Retry-After` | [`Classified::Transient`] with the delay |
//! | 2xx that is not a usable token response | [`Classified::Malformed`], rotated refresh token salvaged |

use core::fmt;
use core::time::Duration;

use base64::Engine as _;
use secrecy::zeroize::Zeroizing;
use secrecy::{ExposeSecret, SecretString};

use crate::dpop::{DpopNonce, DpopProof};
use crate::scrub::{JsonFields, Scalar, form_bound, into_secret};
use crate::time::UnixTime;
use crate::token::{AccessToken, RefreshToken, TokenType};

mod request;
pub use request::{Client, ClientAuth, FormRequest, refresh_request, revocation_request};
pub(crate) use request::{authenticated, form_buffer};

/// The largest response body [`classify`] reads; transports should stop reading
/// here too. Real token responses are a few kilobytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The longest token accepted from a server.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// The longest error code or description kept from an error response.
const MAX_ERROR_TEXT: usize = 256;

/// The longest `Retry-After` honoured; a larger value is capped, not ignored.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 60 * 60);

/// What the classifier must know about this deployment.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Policy {
    /// OAuth error codes that prove the refresh token is dead, whatever the
    /// status they come with. Default: `invalid_grant`.
    pub terminal_errors: Vec<String>,
    /// Token types the caller can present. Default: bearer and DPoP; the
    /// session takes DPoP tokens only when it is bound (holds their key),
    /// and bearer tokens only when it is not.
    pub accepted_token_types: Vec<TokenType>,
    /// The longest lifetime believed from `expires_in`; larger values are capped.
    pub max_lifetime: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            terminal_errors: vec!["invalid_grant".to_owned()],
            accepted_token_types: vec![TokenType::Bearer, TokenType::DPoP],
            max_lifetime: Duration::from_secs(24 * 60 * 60),
        }
    }
}

/// An HTTP response to a token request, as a transport received it.
#[derive(Clone, Copy, Debug)]
pub struct Response<'a> {
    /// The status code.
    pub status: u16,
    /// Header names (any case) and raw values, in received order.
    pub headers: &'a [(&'a str, &'a [u8])],
    /// The body, ideally already cut at [`MAX_BODY_BYTES`] by the transport.
    pub body: &'a [u8],
}

impl Response<'_> {
    /// The `DPoP-Nonce` the server sent, if it is a valid nonce.
    pub fn dpop_nonce(&self) -> Option<DpopNonce> {
        self.header("dpop-nonce").and_then(DpopNonce::parse)
    }

    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| *v)
    }

    /// The server's clock when it answered, from `Date` (RFC 9110 §6.6.1).
    pub fn date(&self) -> Option<UnixTime> {
        parse_http_date(core::str::from_utf8(self.header("date")?).ok()?.trim())
    }

    /// How far the server's clock is from ours, read from `Date` against our
    /// wall clock when the answer arrived (`unix_now`). Good to a second or
    /// so plus the answer's travel time. Only a sanity check: no expiry
    /// depends on it, because lifetimes are relative (`expires_in`) and are
    /// counted on the monotonic clock from when the request was sent.
    pub fn clock_skew(&self, unix_now: UnixTime) -> Option<ClockSkew> {
        let server = self.date()?;
        Some(if server >= unix_now {
            ClockSkew { server_ahead: server.saturating_duration_since(unix_now), server_behind: Duration::ZERO }
        } else {
            ClockSkew { server_ahead: Duration::ZERO, server_behind: unix_now.saturating_duration_since(server) }
        })
    }
}

/// The difference between the server's clock and ours; one side is zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClockSkew {
    /// How far the server's clock is ahead of ours.
    pub server_ahead: Duration,
    /// How far it is behind.
    pub server_behind: Duration,
}

impl ClockSkew {
    /// Skews up to this are the `Date` header's own resolution, travel time
    /// and ordinary drift; beyond it, one of the two clocks is wrong.
    pub const NOTABLE: Duration = Duration::from_secs(60);

    /// The size of the difference, whichever way.
    pub fn magnitude(&self) -> Duration {
        self.server_ahead.max(self.server_behind)
    }

    /// Whether the clocks differ by more than [`ClockSkew::NOTABLE`].
    pub fn is_notable(&self) -> bool {
        self.magnitude() > Self::NOTABLE
    }
}

/// What a token response means for the session. Exhaustive on purpose: the
/// machine's input, matched by every driver (see [`Event`](crate::session::Event)).
#[derive(Clone, Debug)]
pub enum Classified {
    /// New tokens.
    Success(TokenResponse),
    /// The refresh token is dead (by default `invalid_grant`): log out.
    Terminal(OAuthError),
    /// Worth retrying later with the same refresh token.
    Transient(Transient),
    /// The server refused for a reason retrying will not fix and that does not
    /// prove the refresh token dead (client misconfigured, bad scope, ...).
    Rejected(Rejected),
    /// The server wants the user to act (multi-factor step-up, consent, a
    /// fresh login) before it issues tokens: no retry fixes it, and the
    /// refresh token is not proven dead. See [`INTERACTION_ERRORS`].
    InteractionRequired(OAuthError),
    /// A success status without a usable token response. The server may have
    /// rotated the refresh token, so the outcome is uncertain, like a lost response.
    Malformed(Malformed),
    /// `use_dpop_nonce` (RFC 9449 §8): the server did not act on the request
    /// and wants it again with a proof that carries its nonce (sent in the
    /// answer's `DPoP-Nonce` header). Not a failure, and not a use of the
    /// refresh token.
    NonceRequired(OAuthError),
}

/// A parsed successful token response (RFC 6749 §5.1).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct TokenResponse {
    /// The new access token.
    pub access_token: AccessToken,
    /// How to present it.
    pub token_type: TokenType,
    /// Its lifetime by the rule in the module docs; `None` when unknown.
    pub lifetime: Option<Duration>,
    /// A rotated refresh token; `None` means keep the current one.
    pub refresh_token: Option<RefreshToken>,
    /// The granted scope, when the server states it.
    pub scope: Option<String>,
}

impl TokenResponse {
    /// A bearer token response, for logins and tests.
    pub fn bearer(access_token: AccessToken, lifetime: Option<Duration>, refresh_token: Option<RefreshToken>) -> Self {
        Self { access_token, token_type: TokenType::Bearer, lifetime, refresh_token, scope: None }
    }

    /// Reads a token response the app's own login flow received, by the same
    /// bounded rules as a refresh's answer (see [`classify`]), for
    /// `Session::log_in`.
    ///
    /// ```
    /// use freshen_core::oauth::TokenResponse;
    ///
    /// let tokens = TokenResponse::from_json(br#"{"access_token":"a1","token_type":"Bearer","expires_in":300,"refresh_token":"r1"}"#)?;
    /// assert_eq!(tokens.lifetime, Some(std::time::Duration::from_secs(300)));
    /// # Ok::<(), freshen_core::code::ExchangeError>(())
    /// ```
    ///
    /// # Errors
    /// An OAuth error body, or no usable token response.
    pub fn from_json(body: &[u8]) -> Result<Self, crate::code::ExchangeError> {
        let response = Response { status: 200, headers: &[], body };
        crate::code::exchanged(classify(&Policy::default(), &response, None))
    }
}

/// An RFC 6749 §5.2 error response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OAuthError {
    /// The HTTP status it came with.
    pub status: u16,
    /// The `error` code, at most 256 printable ASCII characters.
    pub code: String,
    /// The `error_description`, if any, cut to 256 printable characters.
    pub description: Option<String>,
}

/// A failure worth retrying.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transient {
    /// Why.
    pub cause: TransientCause,
    /// The server's `Retry-After`, capped at [`MAX_RETRY_AFTER`].
    pub retry_after: Option<Duration>,
}

/// Why a failure is worth retrying.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransientCause {
    /// A 5xx status.
    ServerError(u16),
    /// 429 Too Many Requests.
    RateLimited,
    /// 408 Request Timeout.
    RequestTimeout,
    /// An OAuth error that asks for a retry: `temporarily_unavailable`, `slow_down`,
    /// or `invalid_request` whose description says to retry (concurrent refresh).
    RetryRequested(OAuthError),
}

/// A refusal that neither retrying nor logging out fixes.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rejected {
    /// An OAuth error not declared terminal (`invalid_client`, `invalid_scope`, ...).
    Error(OAuthError),
    /// A status with no OAuth error body (e.g. 401 with only `WWW-Authenticate`, a 3xx).
    Status(u16),
}

/// A success-status response that could not be used.
#[derive(Clone, Debug)]
pub struct Malformed {
    /// The status it came with.
    pub status: u16,
    /// What was wrong.
    pub reason: MalformedReason,
    /// A well-formed `refresh_token` found in it. The server issued it, so the
    /// session must keep it even though the rest is unusable.
    pub salvaged_refresh_token: Option<RefreshToken>,
}

impl fmt::Display for OAuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "status {} with error `{}`", self.status, self.code)?;
        match &self.description {
            Some(description) => write!(f, " ({description})"),
            None => Ok(()),
        }
    }
}

impl std::error::Error for OAuthError {}

impl fmt::Display for TransientCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ServerError(status) => write!(f, "the server failed with status {status}"),
            Self::RateLimited => f.write_str("the server is rate limiting (429)"),
            Self::RequestTimeout => f.write_str("the server timed the request out (408)"),
            Self::RetryRequested(error) => write!(f, "the server asked to retry: {error}"),
        }
    }
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Error(error) => write!(f, "{error}"),
            Self::Status(status) => write!(f, "status {status} without an OAuth error"),
        }
    }
}

impl fmt::Display for MalformedReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BodyTooLarge => write!(f, "the response is larger than {MAX_BODY_BYTES} bytes"),
            Self::NotJsonObject => f.write_str("the response is not a JSON object"),
            Self::MissingAccessToken => f.write_str("the response has no access token"),
            Self::InvalidAccessToken => f.write_str("the response's access token is empty, too long or not a string"),
            Self::InvalidRefreshToken => f.write_str("the response's refresh token is empty, too long or not a string"),
            Self::UnsupportedTokenType(kind) => {
                write!(f, "the response's token type `{}` is not accepted", kind.as_str())
            }
            Self::UnexpectedStatus(status) => write!(f, "the response has the unexpected status {status}"),
        }
    }
}

/// What made a success response unusable.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MalformedReason {
    /// Longer than [`MAX_BODY_BYTES`].
    BodyTooLarge,
    /// Not a JSON object (HTML, truncated, not UTF-8, ...).
    NotJsonObject,
    /// No `access_token`.
    MissingAccessToken,
    /// `access_token` empty, too long, or not a string.
    InvalidAccessToken,
    /// `refresh_token` present but empty, too long, or not a string.
    InvalidRefreshToken,
    /// A `token_type` the policy does not accept.
    UnsupportedTokenType(TokenType),
    /// An informational (1xx) or otherwise unusable status.
    UnexpectedStatus(u16),
}

/// Classifies a token-endpoint response. Never panics; see the module docs for
/// the rules. An HTTP-date `Retry-After` is read against the response's own
/// `Date` when it has one (both are the server's clock, so a skewed clock on
/// either side cannot stretch the wait), else against `unix_now`; with
/// neither, only delta-seconds are honoured.
///
/// ```
/// use freshen_core::oauth::{classify, Classified, Policy, Response};
///
/// let body = br#"{"error":"invalid_grant"}"#;
/// let response = Response { status: 403, headers: &[], body };
/// assert!(matches!(classify(&Policy::default(), &response, None), Classified::Terminal(_)));
/// ```
pub fn classify(policy: &Policy, response: &Response<'_>, unix_now: Option<UnixTime>) -> Classified {
    let status = response.status;
    let server_now = response.date().or(unix_now);
    let retry_after = response.header("retry-after").and_then(|value| parse_retry_after(value, server_now));
    let transient = |cause| Classified::Transient(Transient { cause, retry_after });

    // Status first: a 5xx or 429 body is often a proxy's HTML page and is never parsed.
    match status {
        500..=599 => return transient(TransientCause::ServerError(status)),
        429 => return transient(TransientCause::RateLimited),
        408 => return transient(TransientCause::RequestTimeout),
        _ => {}
    }
    let object =
        if response.body.len() > MAX_BODY_BYTES { None } else { JsonFields::read(response.body, &RESPONSE_FIELDS) };

    if let Some(error) = object.as_ref().and_then(|o| oauth_error(status, o)) {
        return classify_error(policy, error, retry_after);
    }
    match status {
        200..=299 => {}
        300..=499 => return Classified::Rejected(Rejected::Status(status)),
        _ => return malformed(status, MalformedReason::UnexpectedStatus(status), None),
    }
    let Some(object) = object else {
        let reason = if response.body.len() > MAX_BODY_BYTES {
            MalformedReason::BodyTooLarge
        } else {
            MalformedReason::NotJsonObject
        };
        return malformed(status, reason, None);
    };
    token_response(policy, status, &object)
}

fn malformed(status: u16, reason: MalformedReason, salvaged_refresh_token: Option<RefreshToken>) -> Classified {
    Classified::Malformed(Malformed { status, reason, salvaged_refresh_token })
}

/// OAuth error codes that ask the user to act (OpenID Connect Core §3.1.2.6,
/// and `mfa_required` as Auth0 and others send it from the token endpoint).
pub const INTERACTION_ERRORS: [&str; 4] =
    ["mfa_required", "interaction_required", "consent_required", "login_required"];

fn classify_error(policy: &Policy, error: OAuthError, retry_after: Option<Duration>) -> Classified {
    if policy.terminal_errors.contains(&error.code) {
        return Classified::Terminal(error);
    }
    if error.code == "use_dpop_nonce" {
        return Classified::NonceRequired(error);
    }
    if INTERACTION_ERRORS.contains(&error.code.as_str()) {
        return Classified::InteractionRequired(error);
    }
    let asks_to_retry = match error.code.as_str() {
        "temporarily_unavailable" | "slow_down" => true,
        "invalid_request" => error.description.as_deref().is_some_and(describes_retry),
        _ => false,
    };
    if asks_to_retry {
        Classified::Transient(Transient { cause: TransientCause::RetryRequested(error), retry_after })
    } else {
        Classified::Rejected(Rejected::Error(error))
    }
}

/// Servers that refuse a concurrent refresh say so in prose; these are the
/// phrasings seen in the wild.
fn describes_retry(description: &str) -> bool {
    let lower = description.to_ascii_lowercase();
    ["retry", "try again", "concurrent", "in progress", "already being refreshed"]
        .iter()
        .any(|phrase| lower.contains(phrase))
}

/// The fields of a token endpoint's answer that are read: the rest are skipped.
const RESPONSE_FIELDS: [&str; 7] =
    ["error", "error_description", "refresh_token", "access_token", "token_type", "expires_in", "scope"];

/// An OAuth error in an answer whose fields read include `error` and
/// `error_description`.
pub(crate) fn oauth_error<const N: usize>(status: u16, object: &JsonFields<'_, N>) -> Option<OAuthError> {
    let code = object.get("error")?.as_str()?;
    let code = printable(code, false);
    if code.is_empty() {
        return None;
    }
    let description = object.get("error_description").and_then(Scalar::as_str).map(|d| printable(d, true));
    Some(OAuthError { status, code, description })
}

/// Keeps at most [`MAX_ERROR_TEXT`] characters, and only printable ASCII (plus
/// spaces when `spaces` is set), so server text cannot forge log lines.
fn printable(text: &str, spaces: bool) -> String {
    text.chars().filter(|c| c.is_ascii_graphic() || (spaces && *c == ' ')).take(MAX_ERROR_TEXT).collect()
}

fn token_response(policy: &Policy, status: u16, object: &JsonFields<'_, { RESPONSE_FIELDS.len() }>) -> Classified {
    // The refresh token is read first: whatever else is wrong, a rotated refresh
    // token the server issued must not be lost.
    let refresh_token = match object.get("refresh_token") {
        None | Some(Scalar::Null) => None,
        Some(value) => match token_text(value) {
            Some(token) => Some(RefreshToken::new(token)),
            None => return malformed(status, MalformedReason::InvalidRefreshToken, None),
        },
    };
    let Some(access) = object.get("access_token") else {
        return malformed(status, MalformedReason::MissingAccessToken, refresh_token);
    };
    let Some(access) = token_text(access) else {
        return malformed(status, MalformedReason::InvalidAccessToken, refresh_token);
    };
    let token_type = match object.get("token_type").and_then(Scalar::as_str) {
        Some(text) => TokenType::parse(text),
        // RFC 6749 requires token_type, yet some servers omit it; bearer is what they mean.
        None => TokenType::Bearer,
    };
    if !policy.accepted_token_types.contains(&token_type) {
        return malformed(status, MalformedReason::UnsupportedTokenType(token_type), refresh_token);
    }
    Classified::Success(TokenResponse {
        access_token: AccessToken::new(access),
        token_type,
        lifetime: lifetime(object.get("expires_in"), policy.max_lifetime),
        refresh_token,
        scope: object.get("scope").and_then(Scalar::as_str).map(|s| printable(s, true)),
    })
}

fn token_text<'a>(value: &'a Scalar<'_>) -> Option<&'a str> {
    let text = value.as_str()?;
    (!text.is_empty() && text.len() <= MAX_TOKEN_BYTES).then_some(text)
}

/// Applies the `expires_in` rule from the module docs.
fn lifetime(value: Option<&Scalar<'_>>, max: Duration) -> Option<Duration> {
    let seconds = match value? {
        Scalar::Number(whole) => Some(*whole),
        Scalar::Float(number) => whole_seconds(*number),
        Scalar::Text(text) => {
            let text = text.trim();
            match text.parse::<u64>() {
                Ok(whole) => Some(whole),
                Err(_) => text.parse::<f64>().ok().and_then(whole_seconds),
            }
        }
        _ => None,
    }?;
    (seconds >= 1).then(|| Duration::from_secs(seconds).min(max))
}

fn whole_seconds(value: f64) -> Option<u64> {
    // `as` saturates for finite values beyond u64, which the cap then trims.
    (value.is_finite() && value >= 1.0).then(|| value.floor() as u64)
}

/// Reads `Retry-After` (RFC 9110 §10.2.3): delta-seconds, or an HTTP-date
/// when the current wall time is known. Capped at [`MAX_RETRY_AFTER`].
pub fn parse_retry_after(value: &[u8], unix_now: Option<UnixTime>) -> Option<Duration> {
    let text = core::str::from_utf8(value).ok()?.trim();
    let delay = if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        // A run of digits too long for u64 is still "very long": cap it.
        Duration::from_secs(text.parse::<u64>().unwrap_or(u64::MAX))
    } else {
        let at = parse_http_date(text)?;
        at.saturating_duration_since(unix_now?)
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

/// Parses an HTTP-date in any of the three forms RFC 9110 §5.6.7 requires
/// recipients to accept: IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`, the
/// only one senders may generate), the obsolete RFC 850 form (`Sunday,
/// 06-Nov-94 08:49:37 GMT`; a two-digit year below 70 is read as 20xx) and
/// asctime (`Sun Nov  6 08:49:37 1994`). The weekday must match the date: a
/// date that contradicts itself is not trusted. Nothing before 1970.
pub fn parse_http_date(text: &str) -> Option<UnixTime> {
    // Bounded input: no HTTP-date is longer than this.
    if text.len() > 40 || !text.is_ascii() {
        return None;
    }
    let (weekday, date) = if let Some((weekday, rest)) = text.split_once(", ") {
        let date = if weekday.len() == 3 { imf_fixdate(rest)? } else { rfc850_date(rest)? };
        let weekday = if weekday.len() == 3 {
            WEEKDAYS.iter().position(|w| *w == weekday)?
        } else {
            LONG_WEEKDAYS.iter().position(|w| *w == weekday)?
        };
        (weekday, date)
    } else {
        let (weekday, rest) = text.split_once(' ')?;
        (WEEKDAYS.iter().position(|w| *w == weekday)?, asctime_date(rest)?)
    };
    let (year, month, day, hour, minute, second) = date;
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 60 || year < 1970 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    // 1970-01-01 was a Thursday (index 4, Sunday first).
    if usize::try_from((days + 4).rem_euclid(7)).ok()? != weekday {
        return None;
    }
    let secs = u64::try_from(days).ok()? * 86_400 + hour * 3_600 + minute * 60 + second;
    Some(UnixTime::from_secs(secs))
}

/// Year, month, day, hour, minute, second.
type CivilTime = (i64, i64, i64, u64, u64, u64);

const WEEKDAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
const LONG_WEEKDAYS: [&str; 7] = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"];
const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

/// `06 Nov 1994 08:49:37 GMT`
fn imf_fixdate(rest: &str) -> Option<CivilTime> {
    let mut parts = rest.split(' ');
    let day = digits(parts.next()?, 2)?;
    let month = month_number(parts.next()?)?;
    let year = digits(parts.next()?, 4)?;
    let (hour, minute, second) = clock(parts.next()?)?;
    (parts.next() == Some("GMT") && parts.next().is_none()).then_some((
        year as i64,
        month,
        day as i64,
        hour,
        minute,
        second,
    ))
}

/// `06-Nov-94 08:49:37 GMT`
fn rfc850_date(rest: &str) -> Option<CivilTime> {
    let mut parts = rest.split(' ');
    let mut date = parts.next()?.split('-');
    let day = digits(date.next()?, 2)?;
    let month = month_number(date.next()?)?;
    let short_year = digits(date.next()?, 2)? as i64;
    let (hour, minute, second) = clock(parts.next()?)?;
    if date.next().is_some() || parts.next() != Some("GMT") || parts.next().is_some() {
        return None;
    }
    let year = if short_year < 70 { 2000 + short_year } else { 1900 + short_year };
    Some((year, month, day as i64, hour, minute, second))
}

/// `Nov  6 08:49:37 1994` (the day padded with a space, not a zero)
fn asctime_date(rest: &str) -> Option<CivilTime> {
    let month = month_number(rest.get(..3)?)?;
    let rest = rest.get(3..)?.strip_prefix(' ')?;
    let (day, rest) = match rest.strip_prefix(' ') {
        Some(rest) => (digits(rest.get(..1)?, 1)?, rest.get(1..)?),
        None => (digits(rest.get(..2)?, 2)?, rest.get(2..)?),
    };
    let mut parts = rest.strip_prefix(' ')?.split(' ');
    let (hour, minute, second) = clock(parts.next()?)?;
    let year = digits(parts.next()?, 4)?;
    parts.next().is_none().then_some((year as i64, month, day as i64, hour, minute, second))
}

/// Exactly `len` ASCII digits.
fn digits(text: &str, len: usize) -> Option<u64> {
    (text.len() == len && text.bytes().all(|b| b.is_ascii_digit())).then(|| text.parse().ok()).flatten()
}

fn month_number(name: &str) -> Option<i64> {
    Some(MONTHS.iter().position(|m| *m == name)? as i64 + 1)
}

/// `08:49:37`
fn clock(text: &str) -> Option<(u64, u64, u64)> {
    let mut parts = text.split(':');
    let time = (digits(parts.next()?, 2)?, digits(parts.next()?, 2)?, digits(parts.next()?, 2)?);
    parts.next().is_none().then_some(time)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Howard Hinnant's days-from-civil: days since 1970-01-01 of a proleptic
/// Gregorian date.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests;
