//! The device authorization grant (RFC 8628): the core's
//! [`freshen_core::device::DevicePoller`] decides when to poll; this module
//! only sends what it asks for.

use core::time::Duration;

use freshen_core::device::{self, DeviceAuthorization, DeviceError, DevicePoller, NextPoll, PollAnswer};
use tracing::{info, warn};

use freshen_core::dpop::DpopKey;

use super::{LoginError, TokenEndpoint, post};
use crate::Session;
use crate::store::Store;
use crate::transport::Transport;

impl<T: Transport, S: Store> Session<T, S> {
    /// Starts a device login (RFC 8628) at the configured
    /// [`device_authorization_endpoint`](crate::Config::device_authorization_endpoint),
    /// asking for `scope` (e.g. `"openid offline_access"`: many servers issue a
    /// refresh token only for `offline_access`). Show the user
    /// [`DeviceLogin::verification_uri`] and [`DeviceLogin::user_code`], then
    /// await [`DeviceLogin::finish`].
    ///
    /// # Errors
    /// No endpoint is configured, it could not be reached, or it refused.
    pub async fn start_device_login(&self, scope: Option<&str>) -> Result<DeviceLogin<T, S>, LoginError> {
        const ENDPOINT: &str = "device authorization";
        let (transport, config, clock) = self.login_parts();
        let url = config.device_authorization_endpoint.as_deref().ok_or(LoginError::NoEndpoint(ENDPOINT))?;
        let form = device::authorization_request(&config.client, scope);
        let response = post(transport, url, &form, config.session.request_timeout)
            .await
            .map_err(|error| LoginError::Unreachable { endpoint: ENDPOINT, error })?;
        let authorization = response.read(device::parse_authorization)?;
        info!(expires_in_s = authorization.expires_in.as_secs(), "device login started");
        let poller = DevicePoller::new(&authorization, clock.now());
        let dpop_key = config.dpop.then(crate::dpop::generate_key).transpose()?;
        Ok(DeviceLogin { session: self.clone(), authorization, poller, dpop_key })
    }
}

/// A device login waiting for the user (see [`Session::start_device_login`]).
pub struct DeviceLogin<T, S> {
    session: Session<T, S>,
    authorization: DeviceAuthorization,
    poller: DevicePoller,
    /// The key the tokens are bound to, when the session binds by DPoP.
    dpop_key: Option<DpopKey>,
}

impl<T, S> core::fmt::Debug for DeviceLogin<T, S> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DeviceLogin").field("authorization", &self.authorization).field("poller", &self.poller).finish()
    }
}

impl<T: Transport, S: Store> DeviceLogin<T, S> {
    /// What the user types in at [`DeviceLogin::verification_uri`].
    pub fn user_code(&self) -> &str {
        &self.authorization.user_code
    }

    /// Where the user goes, on any device.
    pub fn verification_uri(&self) -> &str {
        &self.authorization.verification_uri
    }

    /// The verification URI with the code filled in (for a link or a QR code), if the server gives one.
    pub fn verification_uri_complete(&self) -> Option<&str> {
        self.authorization.verification_uri_complete.as_deref()
    }

    /// How long the user has, from the start.
    pub fn expires_in(&self) -> Duration {
        self.authorization.expires_in
    }

    /// Binds the login's tokens to `key` by DPoP instead of a key the
    /// login makes itself (with [`Config::with_dpop`](crate::Config::with_dpop)):
    /// for an app that keeps its keys elsewhere, or a simulation that needs
    /// the same key on every run. The key is stored with the tokens.
    #[must_use]
    pub fn with_dpop_key(mut self, key: DpopKey) -> Self {
        self.dpop_key = Some(key);
        self
    }

    /// Polls the token endpoint as the server allows until the user decides
    /// or the codes expire, then logs the session in; resolves once the
    /// tokens are stored. Dropping the future stops polling.
    ///
    /// # Errors
    /// The user refused, the codes expired, the server refused, or the
    /// tokens could not be stored.
    pub async fn finish(mut self) -> Result<(), LoginError> {
        let (transport, config, clock) = self.session.login_parts();
        let form = device::token_request(&config.client, &self.authorization.device_code);
        let mut endpoint = TokenEndpoint::new(transport, config, clock, self.dpop_key.clone());
        // Bounded by the poller: it ends at the codes' expiry at the latest
        // (and answers a nonce challenge at once, a bounded number of times).
        loop {
            match self.poller.next(clock.now()) {
                NextPoll::At(at) => tokio::time::sleep_until(clock.instant(at)).await,
                NextPoll::Now => {
                    let sent_at = tokio::time::Instant::now();
                    let answer = match endpoint.post(&form).await {
                        Ok(response) => PollAnswer::Answered(response.classify(&config.session.policy, clock.wall())),
                        Err(error) => {
                            warn!(%error, "device login poll got no answer");
                            PollAnswer::Failed(error.failure())
                        }
                    };
                    if let Some(tokens) = self.poller.answered(clock.now(), answer)? {
                        info!(dpop = self.dpop_key.is_some(), "device login approved");
                        let (session, key) = (&self.session, self.dpop_key.take());
                        let sent_at = Some(sent_at.into_std());
                        return session.log_in_response(tokens, sent_at, key).await.map_err(LoginError::Session);
                    }
                }
                // Only `Expired` can come here: the loop awaits every answer
                // and returns on the one that ends the login.
                NextPoll::Expired | NextPoll::AwaitingAnswer | NextPoll::Ended => {
                    return Err(LoginError::Device(DeviceError::Expired));
                }
            }
        }
    }
}
