//! A pure model of an authorization server's refresh-token rules: the
//! reference the simulation runs against, and a specification a backend can
//! reuse.
//!
//! Tokens belong to *families* (one per login). With rotation on, redeeming a
//! refresh token consumes it and issues a successor; presenting a consumed token
//! again inside the grace window replays (the same pair, or a fresh one), and
//! outside it is treated as theft: with reuse detection on, the whole family is
//! revoked, access tokens included. Revocation follows RFC 7009: an unknown
//! token is not an error, and revoking a refresh token ends its family.
//!
//! Invariants (checked by `check::AuthorityMonitor`, with the `testing` feature):
//! A1 a consumed token outside grace is never accepted again, and with reuse
//! detection its presentation revokes the family; A2 a replay inside grace is
//! accepted within its count; A3 revocation is terminal for the family; A4
//! without grace at most one redemption of a token succeeds; A5 tokens are
//! accepted only from their client (and device) and never past expiry; A6 a
//! rejected request changes nothing; A7 a family bound by DPoP (RFC 9449,
//! see [`dpop`]) is refreshed only with a proof by its key.

use core::fmt;
use core::time::Duration;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use digested::DigestedMap;

use secrecy::SecretString;
use serde_json::json;

mod audit;
pub mod code;
pub mod device;
mod digested;
pub mod dpop;

use crate::fast_hash::FastHasher;
pub use audit::{Audit, AuditOp, AuditOutcome};
pub use dpop::Proof;

use freshen_core::json::{MemberValue, write_object};
use freshen_core::rng::SplitMix64;
use freshen_core::time::MonoTime;
use freshen_core::token::{AccessToken, Fingerprint, RefreshToken};

/// What a grace replay returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GraceReplay {
    /// The pair issued on the first redemption, with what is left of the
    /// access token's life as `expires_in` (Okta-style).
    SamePair,
    /// A new pair; the earlier successor stays valid (Auth0-style).
    FreshPair,
    /// The pair issued on the first redemption, with the full lifetime as
    /// `expires_in`, while the access token keeps its original expiry
    /// (Django OAuth Toolkit with reuse protection). A client that counts the
    /// lifetime from its retry would use the token past its real expiry.
    SamePairFullLifetime,
}

/// The authority's knobs.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct AuthorityConfig {
    /// Access-token lifetime.
    pub access_ttl: Duration,
    /// Refresh-token lifetime, renewed on every use (sliding).
    pub refresh_ttl: Duration,
    /// Absolute lifetime of a family, from its login.
    pub family_lifetime: Duration,
    /// Issue a new refresh token on every redemption.
    pub rotation: bool,
    /// How long after its redemption a consumed refresh token is still
    /// accepted: the window `[redeemed, redeemed + grace)`, empty when zero.
    pub grace: Duration,
    /// How many replays the grace window accepts per token.
    pub grace_reuses: u32,
    /// What a replay returns.
    pub grace_replay: GraceReplay,
    /// Revoke the family when a consumed token is presented outside grace.
    pub reuse_detection: bool,
    /// A refresh deletes the access token issued with the refresh token it
    /// redeems, at once (Django OAuth Toolkit). A request still carrying that
    /// access token is refused from then on.
    pub revoke_previous_access: bool,
    /// Prefix of every token issued, so tests can scan output for them.
    pub token_prefix: String,
    /// The polling interval a device login starts with (RFC 8628 §3.2).
    pub device_interval: Duration,
    /// DPoP nonces (RFC 9449 §8): `Some(lifetime)` requires the current (or
    /// the previous) nonce in every proof, a new one every `lifetime`;
    /// `None` requires none (proofs are still checked for replays).
    pub dpop_nonce_lifetime: Option<Duration>,
    /// The resource server requires the nonce too (RFC 9449 §9): any proof
    /// without the current (or previous) one is answered with a nonce
    /// challenge, and every answer to a proof names the current nonce.
    /// Off: it challenges only a proof too old to stand without a nonce.
    /// Either way a proof that names a nonce must name a fresh one. Only
    /// with [`AuthorityConfig::dpop_nonce_lifetime`].
    pub resource_requires_dpop_nonce: bool,
}

impl Default for AuthorityConfig {
    fn default() -> Self {
        Self {
            access_ttl: Duration::from_secs(300),
            refresh_ttl: Duration::from_secs(24 * 60 * 60),
            family_lifetime: Duration::from_secs(30 * 24 * 60 * 60),
            rotation: true,
            grace: Duration::from_secs(30),
            grace_reuses: 2,
            grace_replay: GraceReplay::SamePair,
            reuse_detection: true,
            revoke_previous_access: false,
            token_prefix: "frsh".to_owned(),
            device_interval: Duration::from_secs(5),
            dpop_nonce_lifetime: None,
            resource_requires_dpop_nonce: false,
        }
    }
}

/// Names a token family (one login).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct FamilyId(pub u64);

impl fmt::Display for FamilyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "f{}", self.0)
    }
}

/// Tokens issued by a login or a refresh.
#[derive(Clone, Debug)]
pub struct Issued {
    /// The family they belong to.
    pub family: FamilyId,
    /// The access token.
    pub access_token: AccessToken,
    /// The refresh token to use next (the presented one when rotation is off).
    pub refresh_token: RefreshToken,
    /// The access token's lifetime.
    pub expires_in: Duration,
    /// The family is bound by DPoP: the tokens are of type `DPoP`.
    pub dpop_bound: bool,
}

impl Issued {
    /// The RFC 6749 §5.1 response body, members in the alphabetical order
    /// a `json!` value printed them in: a mangled answer cuts the same bytes
    /// as it always did, so traces replay unchanged.
    pub fn to_json(&self) -> SecretString {
        write_object(&[
            ("access_token", Some(MemberValue::Text(self.access_token.expose_secret()))),
            ("expires_in", Some(MemberValue::Number(self.expires_in.as_secs()))),
            ("refresh_token", Some(MemberValue::Text(self.refresh_token.expose_secret()))),
            ("token_type", Some(MemberValue::Text(if self.dpop_bound { "DPoP" } else { "Bearer" }))),
        ])
    }
}

/// Why a refresh was refused. Every reason about the token is
/// `invalid_grant` on the wire (RFC 6749 §5.2); the DPoP refusals before it
/// is looked at are RFC 9449's errors. The detail is for the audit and the
/// checkers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Refusal {
    /// Never issued, or already dropped.
    Unknown,
    /// Issued to another client or device.
    WrongClient,
    /// Past its sliding lifetime, or its family's absolute lifetime.
    Expired,
    /// Its family was revoked.
    Revoked,
    /// Consumed and outside grace, with reuse detection off.
    AlreadyUsed,
    /// Consumed and outside grace: the family is now revoked.
    ReuseDetected,
    /// Its family is bound by DPoP, and the request carried no proof by
    /// that key (`invalid_grant`, as oidc-provider answers it). Nothing is
    /// consumed.
    DpopKeyMismatch,
    /// The proof lacks the server's current nonce (`use_dpop_nonce`, with
    /// the nonce in `DPoP-Nonce`): the token was not looked at.
    UseDpopNonce,
    /// The proof's `jti` was seen before within the replay window
    /// (`invalid_dpop_proof`): the token was not looked at.
    DpopProofReplayed,
}

impl Refusal {
    /// The error code on the wire.
    pub fn code(self) -> &'static str {
        match self {
            Self::UseDpopNonce => "use_dpop_nonce",
            Self::DpopProofReplayed => "invalid_dpop_proof",
            _ => "invalid_grant",
        }
    }

    /// Whether the refusal came before the token was looked at (a DPoP
    /// nonce or replay): it says nothing about the token.
    pub fn before_the_token(self) -> bool {
        matches!(self, Self::UseDpopNonce | Self::DpopProofReplayed)
    }

    /// The RFC 6749 §5.2 error body (status 400).
    pub fn to_json(self) -> String {
        json!({ "error": self.code() }).to_string()
    }
}

/// Refusals a real token endpoint sends without touching the refresh token,
/// which the worlds make the authority answer now and then: each is a class
/// of error a session must act on differently (and none logs it out).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PolicyRefusal {
    /// 400 `interaction_required`: the user must act (step-up, consent).
    InteractionRequired,
    /// 400 `invalid_request`: what fosite answers the loser of two
    /// concurrent rotations.
    InvalidRequest,
    /// 401 `invalid_client`: the client's registration changed (misconfigured).
    InvalidClient,
}

impl PolicyRefusal {
    /// Every refusal, for sampling.
    pub const ALL: [Self; 3] = [Self::InteractionRequired, Self::InvalidRequest, Self::InvalidClient];

    /// The status and RFC 6749 §5.2 body it is answered with.
    pub fn response(self) -> (u16, String) {
        let (status, code) = match self {
            Self::InteractionRequired => (400, "interaction_required"),
            Self::InvalidRequest => (400, "invalid_request"),
            Self::InvalidClient => (401, "invalid_client"),
        };
        (status, json!({ "error": code }).to_string())
    }
}

/// Why an access token was refused by [`Authority::validate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum InvalidToken {
    /// Never issued.
    Unknown,
    /// Past its lifetime.
    Expired,
    /// Its family (or the token itself) was revoked.
    Revoked,
    /// A refresh deleted it ([`AuthorityConfig::revoke_previous_access`]).
    Replaced,
}

/// Why a revocation was refused (RFC 7009 §2.1: the token belongs to another client).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RevokeError {
    /// The token was issued to another client.
    WrongClient,
}

/// Running totals, for summaries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct AuthorityStats {
    /// Logins served.
    pub logins: u64,
    /// Refreshes that issued tokens (grace replays included).
    pub refreshes: u64,
    /// Refreshes accepted as grace replays.
    pub grace_replays: u64,
    /// Refreshes refused.
    pub refusals: u64,
    /// Families revoked by reuse detection.
    pub reuse_detections: u64,
    /// Families revoked by request.
    pub revocations: u64,
}

/// A deliberately broken authority, for proving the monitor catches it.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AuthorityPlant {
    /// Accepts a consumed token outside grace (breaks A1).
    AcceptsReuse,
    /// A revoked family's access tokens stay valid (breaks A3).
    DetectionSparesAccess,
    /// Ignores the client binding (breaks A5).
    IgnoresClient,
    /// A refused refresh still renews the token's sliding lifetime (breaks A6).
    RefusalRenews,
    /// Serves a bound family's refresh without a proof by its key (breaks A7).
    IgnoresDpopBinding,
    /// Forgets that an authorization or device code was redeemed (breaks A8).
    RedeemsGrantTwice,
}

/// A refresh token as a request presented it.
#[derive(Clone, Copy)]
struct Presented<'a> {
    client: &'a str,
    device: Option<&'a str>,
    token: &'a str,
    proof: Option<&'a Proof>,
}

#[derive(Clone, Debug, Hash)]
struct Family {
    client: String,
    device: Option<String>,
    created_at: MonoTime,
    revoked: bool,
    /// The thumbprint of the DPoP key the family is bound to.
    jkt: Option<String>,
}

#[derive(Clone, Debug, Hash)]
struct RefreshRecord {
    family: FamilyId,
    expires_at: MonoTime,
    consumed: Option<Consumed>,
    /// The access token issued with it (last issued, without rotation).
    access: String,
}

#[derive(Clone, Debug, Hash)]
struct Consumed {
    at: MonoTime,
    replays: u32,
    /// The pair issued on redemption, for same-pair replays.
    access: String,
    refresh: String,
    access_expires_at: MonoTime,
}

#[derive(Clone, Debug, Hash)]
struct AccessRecord {
    family: FamilyId,
    expires_at: MonoTime,
    revoked: bool,
    /// Deleted by the refresh that redeemed its refresh token.
    replaced: bool,
}

/// The reference authorization server. Deterministic: token bytes come from the seed.
#[derive(Clone)]
pub struct Authority {
    config: AuthorityConfig,
    rng: SplitMix64,
    families: DigestedMap<FamilyId, Family>,
    refresh_tokens: DigestedMap<String, RefreshRecord>,
    access_tokens: DigestedMap<String, AccessRecord>,
    issued: u64,
    stats: AuthorityStats,
    audit: Option<Vec<Audit>>,
    plant: Option<AuthorityPlant>,
    /// Device logins by device code ([`device`]); outside the digest, since
    /// only their redemption (a login) changes what a token accepts.
    device_logins: BTreeMap<String, device::DeviceLogin>,
    /// Authorization codes not yet exchanged ([`code`]), outside the digest likewise.
    codes: BTreeMap<String, code::IssuedCode>,
    /// DPoP proof ids seen lately, to refuse replays.
    seen_jti: dpop::SeenJti,
    /// Makes this authority's nonces its own (from its seed, without
    /// drawing from the token generator).
    nonce_tag: u64,
}

impl fmt::Debug for Authority {
    /// Counts only: the maps are keyed by token bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authority")
            .field("config", &self.config)
            .field("families", &self.families.len())
            .field("refresh_tokens", &self.refresh_tokens.len())
            .field("access_tokens", &self.access_tokens.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Authority {
    /// An authority with no families.
    pub fn new(config: AuthorityConfig, seed: u64) -> Self {
        Self {
            config,
            rng: SplitMix64::new(seed),
            families: DigestedMap::default(),
            refresh_tokens: DigestedMap::default(),
            access_tokens: DigestedMap::default(),
            issued: 0,
            stats: AuthorityStats::default(),
            audit: None,
            plant: None,
            device_logins: BTreeMap::new(),
            codes: BTreeMap::new(),
            seen_jti: dpop::SeenJti::default(),
            nonce_tag: (seed ^ 0xD9_0F_00_0D_0D_0F_00_0D).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40,
        }
    }

    /// Records every operation for [`Authority::take_audit`]. Costs a hash of
    /// the whole state per operation: for tests and simulations.
    #[must_use]
    pub fn with_audit(mut self) -> Self {
        self.audit = Some(Vec::new());
        self
    }

    #[doc(hidden)]
    #[must_use]
    pub fn with_plant(mut self, plant: Option<AuthorityPlant>) -> Self {
        self.plant = plant;
        self
    }

    /// The configuration.
    pub fn config(&self) -> &AuthorityConfig {
        &self.config
    }

    /// Running totals.
    pub fn stats(&self) -> AuthorityStats {
        self.stats
    }

    /// Refreshes served to `family` so far: its refresh tokens redeemed
    /// (each counted once; a grace replay adds nothing), and whether it was
    /// revoked. For reports that need one family's story among many.
    pub fn family_refreshes(&self, family: FamilyId) -> (u64, bool) {
        let redeemed = self.refresh_tokens.values().filter(|r| r.family == family && r.consumed.is_some()).count();
        (redeemed as u64, self.families.get(&family).is_some_and(|f| f.revoked))
    }

    /// The operations recorded since the last call, taken out in order. The
    /// audit keeps its buffer, so a world that reads it after every
    /// operation allocates nothing for it.
    pub fn drain_audit(&mut self) -> impl Iterator<Item = Audit> + '_ {
        self.audit.iter_mut().flat_map(|audit| audit.drain(..))
    }

    /// [`Authority::drain_audit`], collected.
    pub fn take_audit(&mut self) -> Vec<Audit> {
        self.drain_audit().collect()
    }

    /// Starts a family for `client` (a login or any grant that begins a session).
    pub fn login(&mut self, now: MonoTime, client: &str, device: Option<&str>) -> Issued {
        self.start_family(now, client, device, None)
    }

    /// Starts a family for `client` by redeeming `grant` (an authorization or
    /// device code), recorded so that A8 can see each redeemed once.
    fn redeem_grant(&mut self, now: MonoTime, client: &str, grant: &str) -> Issued {
        self.start_family(now, client, None, Some(grant))
    }

    fn start_family(&mut self, now: MonoTime, client: &str, device: Option<&str>, grant: Option<&str>) -> Issued {
        let op = AuditOp::Login {
            client: client.to_owned(),
            device: device.map(str::to_owned),
            grant: grant.map(Fingerprint::of),
        };
        self.audited(now, op, |this| {
            let family = FamilyId(this.families.len() as u64 + 1);
            this.families.insert(
                family,
                Family {
                    client: client.to_owned(),
                    device: device.map(str::to_owned),
                    created_at: now,
                    revoked: false,
                    jkt: None,
                },
            );
            this.stats.logins += 1;
            let issued = this.issue_pair(now, family);
            (AuditOutcome::issued(&issued), issued)
        })
    }

    /// Redeems a refresh token (RFC 6749 §6) under the rules in the module docs.
    pub fn refresh(
        &mut self,
        now: MonoTime,
        client: &str,
        device: Option<&str>,
        token: &str,
        proof: Option<&Proof>,
    ) -> Result<Issued, Refusal> {
        let op = AuditOp::Refresh {
            client: client.to_owned(),
            device: device.map(str::to_owned),
            token: Fingerprint::of(token),
            dpop_jkt: proof.map(|p| p.jkt.clone()),
        };
        self.audited(now, op, |this| {
            let result = match proof.map(|p| this.check_proof(now, p)) {
                Some(Err(refusal)) => Err(refusal),
                _ => this.redeem(now, &Presented { client, device, token, proof }),
            };
            let outcome = match &result {
                Ok(issued) => {
                    this.stats.refreshes += 1;
                    AuditOutcome::issued(issued)
                }
                Err(refusal) => {
                    this.stats.refusals += 1;
                    AuditOutcome::Refused(*refusal)
                }
            };
            (outcome, result)
        })
    }

    fn redeem(&mut self, now: MonoTime, presented: &Presented<'_>) -> Result<Issued, Refusal> {
        let Presented { client, device, token, proof } = *presented;
        let Some(record) = self.refresh_tokens.get(token) else { return Err(Refusal::Unknown) };
        let family_id = record.family;
        let family = self.families.get(&family_id).ok_or(Refusal::Unknown)?;
        let client_ok = family.client == client && family.device.as_deref() == device;
        if !client_ok && self.plant != Some(AuthorityPlant::IgnoresClient) {
            return Err(Refusal::WrongClient);
        }
        // RFC 9449 §5: a bound family's token is useless without its key
        // (checked before anything is consumed, as oidc-provider does).
        let key_shown = family.jkt.as_deref().is_none_or(|jkt| proof.is_some_and(|p| p.jkt == jkt));
        if !key_shown && self.plant != Some(AuthorityPlant::IgnoresDpopBinding) {
            return Err(Refusal::DpopKeyMismatch);
        }
        if family.revoked {
            return Err(Refusal::Revoked);
        }
        let family_end = family.created_at.saturating_add(self.config.family_lifetime);
        if now >= record.expires_at || now >= family_end {
            if self.plant == Some(AuthorityPlant::RefusalRenews) {
                let renewed = now.saturating_add(self.config.refresh_ttl);
                self.refresh_tokens.update(token, |record| record.expires_at = renewed);
            }
            return Err(Refusal::Expired);
        }
        if !self.config.rotation {
            // The same refresh token stays; its lifetime slides.
            let expires_at = now.saturating_add(self.config.refresh_ttl).min(family_end);
            self.refresh_tokens.update(token, |record| record.expires_at = expires_at);
            let (access, expires_in) = self.issue_access(now, family_id);
            let current = access.expose_secret().to_owned();
            let previous = self.refresh_tokens.update(token, |record| core::mem::replace(&mut record.access, current));
            self.replace_access(previous);
            return Ok(Issued {
                family: family_id,
                access_token: access,
                refresh_token: RefreshToken::new(token),
                expires_in,
                dpop_bound: self.bound(family_id),
            });
        }
        let Some(consumed) = &record.consumed else {
            let previous = Some(record.access.clone());
            let issued = self.issue_pair(now, family_id);
            self.replace_access(previous);
            let access_expires_at = now.saturating_add(issued.expires_in);
            let consumed = Consumed {
                at: now,
                replays: 0,
                access: issued.access_token.expose_secret().to_owned(),
                refresh: issued.refresh_token.expose_secret().to_owned(),
                access_expires_at,
            };
            self.refresh_tokens.update(token, |record| record.consumed = Some(consumed));
            return Ok(issued);
        };
        let in_grace =
            now < consumed.at.saturating_add(self.config.grace) && consumed.replays < self.config.grace_reuses;
        if in_grace || self.plant == Some(AuthorityPlant::AcceptsReuse) {
            self.stats.grace_replays += 1;
            let issued = match self.config.grace_replay {
                GraceReplay::SamePair => Issued {
                    family: family_id,
                    access_token: AccessToken::new(consumed.access.clone()),
                    refresh_token: RefreshToken::new(consumed.refresh.clone()),
                    expires_in: consumed.access_expires_at.saturating_duration_since(now),
                    dpop_bound: self.bound(family_id),
                },
                GraceReplay::SamePairFullLifetime => Issued {
                    family: family_id,
                    access_token: AccessToken::new(consumed.access.clone()),
                    refresh_token: RefreshToken::new(consumed.refresh.clone()),
                    expires_in: self.config.access_ttl,
                    dpop_bound: self.bound(family_id),
                },
                GraceReplay::FreshPair => self.issue_pair(now, family_id),
            };
            self.refresh_tokens.update(token, |record| {
                if let Some(consumed) = &mut record.consumed {
                    consumed.replays += 1;
                }
            });
            return Ok(issued);
        }
        if !self.config.reuse_detection {
            return Err(Refusal::AlreadyUsed);
        }
        self.stats.reuse_detections += 1;
        self.revoke_family(family_id);
        Err(Refusal::ReuseDetected)
    }

    /// RFC 7009 revocation. Revoking a refresh token ends its family; revoking
    /// an access token ends that token. An unknown token is not an error.
    pub fn revoke(&mut self, now: MonoTime, client: &str, token: &str) -> Result<(), RevokeError> {
        let op = AuditOp::Revoke { client: client.to_owned(), token: Fingerprint::of(token) };
        self.audited(now, op, |this| {
            let result = this.revoke_token(client, token);
            let outcome = match result {
                Ok(()) => AuditOutcome::Revoked,
                Err(error) => AuditOutcome::RevokeRefused(error),
            };
            (outcome, result)
        })
    }

    fn revoke_token(&mut self, client: &str, token: &str) -> Result<(), RevokeError> {
        let family = if let Some(record) = self.refresh_tokens.get(token) {
            Some((record.family, true))
        } else {
            self.access_tokens.get(token).map(|record| (record.family, false))
        };
        let Some((family, is_refresh)) = family else { return Ok(()) };
        if self.families.get(&family).is_some_and(|f| f.client != client) {
            return Err(RevokeError::WrongClient);
        }
        if is_refresh {
            if self.families.get(&family).is_some_and(|f| !f.revoked) {
                self.stats.revocations += 1;
            }
            self.revoke_family(family);
        } else {
            self.access_tokens.update(token, |record| record.revoked = true);
        }
        Ok(())
    }

    /// A resource server's check of an access token.
    pub fn validate(&mut self, now: MonoTime, token: &str) -> Result<FamilyId, InvalidToken> {
        let op = AuditOp::Validate { token: Fingerprint::of(token) };
        self.audited(now, op, |this| {
            let spares_access = this.plant == Some(AuthorityPlant::DetectionSparesAccess);
            let family_revoked = |family| !spares_access && this.families.get(&family).is_none_or(|f| f.revoked);
            let result = match this.access_tokens.get(token) {
                None => Err(InvalidToken::Unknown),
                Some(record) if record.revoked || family_revoked(record.family) => Err(InvalidToken::Revoked),
                Some(record) if record.replaced => Err(InvalidToken::Replaced),
                Some(record) if now >= record.expires_at => Err(InvalidToken::Expired),
                Some(record) => Ok(record.family),
            };
            let outcome = match result {
                Ok(family) => AuditOutcome::Valid { family },
                Err(invalid) => AuditOutcome::Invalid(invalid),
            };
            (outcome, result)
        })
    }

    /// Whether a family has been revoked (by request or by reuse detection).
    pub fn is_revoked(&self, family: FamilyId) -> bool {
        self.families.get(&family).is_some_and(|f| f.revoked)
    }

    fn revoke_family(&mut self, family: FamilyId) {
        self.families.update(&family, |f| f.revoked = true);
        if self.plant != Some(AuthorityPlant::DetectionSparesAccess) {
            self.access_tokens.update_where(|r| r.family == family, |record| record.revoked = true);
        }
    }

    fn issue_pair(&mut self, now: MonoTime, family: FamilyId) -> Issued {
        let (access_token, expires_in) = self.issue_access(now, family);
        let refresh = self.mint("rt");
        let family_end =
            self.families.get(&family).map_or(now, |f| f.created_at.saturating_add(self.config.family_lifetime));
        let expires_at = now.saturating_add(self.config.refresh_ttl).min(family_end);
        let access = access_token.expose_secret().to_owned();
        self.refresh_tokens.insert(refresh.clone(), RefreshRecord { family, expires_at, consumed: None, access });
        let dpop_bound = self.bound(family);
        Issued { family, access_token, refresh_token: RefreshToken::new(refresh), expires_in, dpop_bound }
    }

    /// Whether `family` is bound by DPoP.
    fn bound(&self, family: FamilyId) -> bool {
        self.families.get(&family).is_some_and(|f| f.jkt.is_some())
    }

    /// With [`AuthorityConfig::revoke_previous_access`], deletes the access
    /// token a refresh replaced.
    fn replace_access(&mut self, previous: Option<String>) {
        if !self.config.revoke_previous_access {
            return;
        }
        if let Some(access) = previous {
            self.access_tokens.update(access.as_str(), |record| record.replaced = true);
        }
    }

    fn issue_access(&mut self, now: MonoTime, family: FamilyId) -> (AccessToken, Duration) {
        let access = self.mint("at");
        let expires_at = now.saturating_add(self.config.access_ttl);
        self.access_tokens.insert(access.clone(), AccessRecord { family, expires_at, revoked: false, replaced: false });
        (AccessToken::new(access), self.config.access_ttl)
    }

    fn mint(&mut self, kind: &str) -> String {
        self.issued += 1;
        format!("{}_{kind}_{}_{:016x}", self.config.token_prefix, self.issued, self.rng.next_u64())
    }

    /// A fingerprint of the whole state, taken before and after each audited
    /// operation so the audit can say whether it changed anything (A6). It
    /// covers everything on purpose: an operation cannot change state behind
    /// the check's back. Each map keeps its own running digest
    /// ([`digested`]), so this costs nothing per token issued.
    fn digest(&self) -> u64 {
        let mut hasher = FastHasher::default();
        for part in [self.families.digest(), self.refresh_tokens.digest(), self.access_tokens.digest(), self.issued] {
            hasher.write_u64(part);
        }
        hasher.finish()
    }

    fn audited<T>(&mut self, now: MonoTime, op: AuditOp, body: impl FnOnce(&mut Self) -> (AuditOutcome, T)) -> T {
        let before = self.audit.is_some().then(|| self.digest());
        let (outcome, result) = body(self);
        if let Some(before) = before {
            let after = self.digest();
            let state_changed = after != before;
            if let Some(audit) = &mut self.audit {
                audit.push(Audit { at: now, op, outcome, state_changed });
            }
        }
        result
    }
}

#[cfg(test)]
mod tests;
