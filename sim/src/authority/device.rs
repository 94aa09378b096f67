//! The device authorization grant (RFC 8628) as the authority serves it: a
//! login starts with a device code and a user code, the user approves or
//! refuses elsewhere (a test, or the `serve` command's `/device` form), and
//! polls sooner than the interval are told to `slow_down`, which lengthens it
//! by five seconds for that login, as §3.5 says. An approved code is redeemed
//! once, by the client that started it, for a new family.

use core::time::Duration;

use secrecy::SecretString;

use super::{Authority, AuthorityPlant, Issued};
use freshen_core::time::MonoTime;

/// How long the codes of a device login live.
pub const DEVICE_CODE_TTL: Duration = Duration::from_secs(600);

/// The most device logins pending at once.
const MAX_DEVICE_LOGINS: usize = 1024;

/// What starting a device login returns (RFC 8628 §3.2).
#[derive(Debug)]
pub struct DeviceStart {
    /// The code the client polls with.
    pub device_code: SecretString,
    /// The code the user enters.
    pub user_code: String,
    /// How long both live.
    pub expires_in: Duration,
    /// The polling interval.
    pub interval: Duration,
}

/// The user's answer at the verification page.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Decision {
    /// The user approves the login.
    Approve,
    /// The user refuses it.
    Deny,
}

/// Why a poll got no tokens (the error codes of RFC 8628 §3.5 and RFC 6749 §5.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PollRefusal {
    /// The user has not decided yet.
    AuthorizationPending,
    /// Polled sooner than the interval; the interval is now five seconds longer.
    SlowDown,
    /// The user refused.
    AccessDenied,
    /// The codes expired.
    ExpiredToken,
    /// An unknown or already redeemed code, or another client's.
    InvalidGrant,
}

impl PollRefusal {
    /// The OAuth error code.
    pub fn code(self) -> &'static str {
        match self {
            Self::AuthorizationPending => "authorization_pending",
            Self::SlowDown => "slow_down",
            Self::AccessDenied => "access_denied",
            Self::ExpiredToken => "expired_token",
            Self::InvalidGrant => "invalid_grant",
        }
    }
}

#[derive(Clone, Debug)]
pub(super) struct DeviceLogin {
    client: String,
    user_code: String,
    expires_at: MonoTime,
    interval: Duration,
    last_poll: Option<MonoTime>,
    decision: Option<Decision>,
    redeemed: bool,
}

impl Authority {
    /// Starts a device login for `client`.
    pub fn start_device_login(&mut self, now: MonoTime, client: &str) -> DeviceStart {
        // Bounded: logins past their expiry or redeemed are forgotten, and
        // past the cap the one closest to expiry goes.
        self.device_logins.retain(|_, login| now < login.expires_at && !login.redeemed);
        if self.device_logins.len() >= MAX_DEVICE_LOGINS
            && let Some(oldest) =
                self.device_logins.iter().min_by_key(|(_, login)| login.expires_at).map(|(code, _)| code.clone())
        {
            self.device_logins.remove(&oldest);
        }
        let interval = self.config.device_interval;
        let device_code = self.mint("dc");
        // Eight letters from an alphabet without vowels or look-alikes, as §6.1 advises.
        const LETTERS: &[u8] = b"BCDFGHJKLMNPQRSTVWXZ";
        let mut user_code = String::with_capacity(9);
        for at in 0..8 {
            if at == 4 {
                user_code.push('-');
            }
            let drawn = self.rng.below(LETTERS.len() as u64) as usize;
            user_code.extend(LETTERS.get(drawn).map(|letter| char::from(*letter)));
        }
        self.device_logins.insert(
            device_code.clone(),
            DeviceLogin {
                client: client.to_owned(),
                user_code: user_code.clone(),
                expires_at: now.saturating_add(DEVICE_CODE_TTL),
                interval,
                last_poll: None,
                decision: None,
                redeemed: false,
            },
        );
        DeviceStart { device_code: SecretString::from(device_code), user_code, expires_in: DEVICE_CODE_TTL, interval }
    }

    /// The user's decision on the login whose user code is `user_code`
    /// (case and dashes ignored). False when no undecided, unexpired login has it.
    pub fn decide_device_login(&mut self, now: MonoTime, user_code: &str, decision: Decision) -> bool {
        let wanted: String = user_code.chars().filter(char::is_ascii_alphanumeric).collect();
        let login = self.device_logins.values_mut().find(|login| {
            login
                .user_code
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .collect::<String>()
                .eq_ignore_ascii_case(&wanted)
        });
        match login {
            Some(login) if login.decision.is_none() && now < login.expires_at => {
                login.decision = Some(decision);
                true
            }
            _ => false,
        }
    }

    /// A poll by `client` with `device_code` (RFC 8628 §3.4): tokens of a new
    /// family once approved, at most once.
    ///
    /// # Errors
    /// No tokens now; see [`PollRefusal`].
    pub fn poll_device_login(&mut self, now: MonoTime, client: &str, device_code: &str) -> Result<Issued, PollRefusal> {
        let login = match self.device_logins.get_mut(device_code) {
            Some(login) if login.client == client && !login.redeemed => login,
            _ => return Err(PollRefusal::InvalidGrant),
        };
        if now >= login.expires_at {
            return Err(PollRefusal::ExpiredToken);
        }
        let early = login.last_poll.is_some_and(|last| now < last.saturating_add(login.interval));
        login.last_poll = Some(now);
        if early {
            login.interval += Duration::from_secs(5);
            return Err(PollRefusal::SlowDown);
        }
        match login.decision {
            None => Err(PollRefusal::AuthorizationPending),
            Some(Decision::Deny) => Err(PollRefusal::AccessDenied),
            Some(Decision::Approve) => {
                login.redeemed = self.plant != Some(AuthorityPlant::RedeemsGrantTwice);
                Ok(self.redeem_grant(now, client, device_code))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authority::AuthorityConfig;

    #[test]
    fn a_device_login_is_pending_until_approved_then_redeemed_once() {
        let mut a = Authority::new(AuthorityConfig::default(), 1);
        let start = a.start_device_login(MonoTime::ZERO, "cli");
        let code = secrecy::ExposeSecret::expose_secret(&start.device_code).to_owned();
        assert_eq!(start.user_code.len(), 9);
        let at = MonoTime::from_secs;
        assert_eq!(a.poll_device_login(at(5), "cli", &code).unwrap_err(), PollRefusal::AuthorizationPending);
        assert_eq!(a.poll_device_login(at(7), "cli", &code).unwrap_err(), PollRefusal::SlowDown);
        // The interval is now ten seconds, counted from the early poll.
        assert_eq!(a.poll_device_login(at(16), "cli", &code).unwrap_err(), PollRefusal::SlowDown);
        assert!(a.decide_device_login(at(20), &start.user_code.to_lowercase().replace('-', ""), Decision::Approve));
        assert!(!a.decide_device_login(at(20), &start.user_code, Decision::Deny), "decided once");
        assert_eq!(a.poll_device_login(at(40), "other", &code).unwrap_err(), PollRefusal::InvalidGrant);
        assert!(a.poll_device_login(at(60), "cli", &code).is_ok());
        assert_eq!(a.poll_device_login(at(80), "cli", &code).unwrap_err(), PollRefusal::InvalidGrant);
    }

    #[test]
    fn a_refused_or_expired_device_login_gives_no_tokens() {
        let mut a = Authority::new(AuthorityConfig::default(), 1);
        let start = a.start_device_login(MonoTime::ZERO, "cli");
        let code = secrecy::ExposeSecret::expose_secret(&start.device_code).to_owned();
        assert!(a.decide_device_login(MonoTime::from_secs(1), &start.user_code, Decision::Deny));
        assert_eq!(a.poll_device_login(MonoTime::from_secs(5), "cli", &code).unwrap_err(), PollRefusal::AccessDenied);
        let late = a.start_device_login(MonoTime::ZERO, "cli");
        let code = secrecy::ExposeSecret::expose_secret(&late.device_code).to_owned();
        let expired = MonoTime::ZERO.saturating_add(DEVICE_CODE_TTL);
        assert!(!a.decide_device_login(expired, &late.user_code, Decision::Approve));
        assert_eq!(a.poll_device_login(expired, "cli", &code).unwrap_err(), PollRefusal::ExpiredToken);
    }
}
