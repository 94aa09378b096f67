//! What the authority did, as its monitor reads it (tokens by fingerprint
//! only), and the digest of its state each entry carries.

use super::*;

/// One operation as the monitor sees it: tokens by fingerprint only.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Audit {
    /// When it happened.
    pub at: MonoTime,
    /// What was asked.
    pub op: AuditOp,
    /// What the authority answered.
    pub outcome: AuditOutcome,
    /// Whether the authority's state differs afterwards.
    pub state_changed: bool,
}

/// An operation on the authority.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuditOp {
    /// A login.
    Login {
        /// The client.
        client: String,
        /// The device, if bound.
        device: Option<String>,
        /// The authorization or device code redeemed, for a login by one.
        grant: Option<Fingerprint>,
    },
    /// A refresh.
    Refresh {
        /// The client.
        client: String,
        /// The device presented.
        device: Option<String>,
        /// The token presented.
        token: Fingerprint,
        /// The thumbprint of the key whose DPoP proof came with it.
        dpop_jkt: Option<String>,
    },
    /// A family bound to a DPoP key at its login.
    Bind {
        /// The family.
        family: FamilyId,
        /// The key's thumbprint.
        jkt: String,
    },
    /// A revocation.
    Revoke {
        /// The client.
        client: String,
        /// The token presented.
        token: Fingerprint,
    },
    /// A resource checking an access token.
    Validate {
        /// The token presented.
        token: Fingerprint,
    },
}

/// The authority's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuditOutcome {
    /// Tokens issued.
    Issued {
        /// Their family.
        family: FamilyId,
        /// The access token.
        access: Fingerprint,
        /// The refresh token handed out.
        refresh: Fingerprint,
    },
    /// A refresh refused.
    Refused(Refusal),
    /// A revocation accepted (whether or not the token was known).
    Revoked,
    /// A revocation refused.
    RevokeRefused(RevokeError),
    /// An access token accepted.
    Valid {
        /// Its family.
        family: FamilyId,
    },
    /// An access token refused.
    Invalid(InvalidToken),
    /// A family bound to a key.
    Bound,
}

impl AuditOutcome {
    pub(super) fn issued(issued: &Issued) -> Self {
        Self::Issued {
            family: issued.family,
            access: issued.access_token.fingerprint(),
            refresh: issued.refresh_token.fingerprint(),
        }
    }
}
