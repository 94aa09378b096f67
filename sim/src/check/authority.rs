//! A1–A8 over the reference authority's audit, and D1 (the client's side of
//! a DPoP binding, seen where the server sees it).

use super::*;
use crate::fast_hash::{FastMap, FastSet};

#[derive(Clone, Debug)]
struct IssuedRefresh {
    family: FamilyId,
    expires_at: MonoTime,
    /// First successful redemption (with rotation), and replays since.
    consumed: Option<(MonoTime, u32)>,
    successes: u32,
}

#[derive(Clone, Debug)]
struct IssuedFamily {
    client: String,
    device: Option<String>,
    ends_at: MonoTime,
    revoked_at: Option<MonoTime>,
    /// The DPoP key the family is bound to.
    jkt: Option<String>,
}

/// Checks A1–A6 over an authority's [audit](crate::authority::Authority::take_audit),
/// from the configuration alone.
#[derive(Debug)]
pub struct AuthorityMonitor {
    config: AuthorityConfig,
    families: FastMap<FamilyId, IssuedFamily>,
    refresh: FastMap<Fingerprint, IssuedRefresh>,
    access: FastMap<Fingerprint, (FamilyId, MonoTime)>,
    /// Every authorization and device code that started a family (A8).
    redeemed_grants: FastSet<Fingerprint>,
    violations: Vec<Violation>,
}

impl AuthorityMonitor {
    /// A monitor for an authority configured with `config`.
    pub fn new(config: &AuthorityConfig) -> Self {
        Self {
            config: config.clone(),
            families: FastMap::default(),
            refresh: FastMap::default(),
            access: FastMap::default(),
            redeemed_grants: FastSet::default(),
            violations: Vec::new(),
        }
    }

    /// Violations found so far.
    pub fn violations(&self) -> &[Violation] {
        &self.violations
    }

    fn violate(&mut self, invariant: Invariant, at: MonoTime, detail: String) {
        self.violations.push(Violation { invariant, at, detail });
    }

    /// Checks one audited operation.
    pub fn observe(&mut self, entry: &Audit) {
        let at = entry.at;
        let refused = matches!(
            entry.outcome,
            AuditOutcome::Refused(_) | AuditOutcome::RevokeRefused(_) | AuditOutcome::Invalid(_)
        );
        let detection = entry.outcome == AuditOutcome::Refused(Refusal::ReuseDetected);
        if refused && !detection && entry.state_changed {
            self.violate(Invariant::A6, at, format!("{:?} changed the authority's state", entry.outcome));
        }
        match (&entry.op, &entry.outcome) {
            (AuditOp::Login { client, device, grant }, AuditOutcome::Issued { family, access, refresh }) => {
                if let Some(grant) = grant
                    && !self.redeemed_grants.insert(*grant)
                {
                    self.violate(Invariant::A8, at, format!("code {grant} started a second family ({family:?})"));
                }
                let ends_at = at.saturating_add(self.config.family_lifetime);
                self.families.insert(
                    *family,
                    IssuedFamily {
                        client: client.clone(),
                        device: device.clone(),
                        ends_at,
                        revoked_at: None,
                        jkt: None,
                    },
                );
                self.issue(at, *family, *access, Some(*refresh));
            }
            (AuditOp::Bind { family, jkt }, _) => {
                if let Some(f) = self.families.get_mut(family) {
                    f.jkt = Some(jkt.clone());
                }
            }
            (AuditOp::Refresh { client, device, token, dpop_jkt }, outcome) => {
                self.bound_presentation(at, *token, dpop_jkt.as_deref(), outcome);
                self.refresh(at, client, device.as_deref(), *token, outcome);
            }
            (AuditOp::Revoke { token, client }, AuditOutcome::Revoked) => {
                let family = self.refresh.get(token).map(|r| r.family);
                if let Some(family) = family {
                    if self.families.get(&family).is_some_and(|f| f.client != *client) {
                        self.violate(Invariant::A5, at, format!("{client} revoked a token of another client"));
                    }
                    self.revoke(at, family);
                }
            }
            (AuditOp::Validate { token }, AuditOutcome::Valid { family }) => {
                match self.access.get(token).copied() {
                    None => self.violate(Invariant::A5, at, format!("accepted unknown access token {token}")),
                    Some((_, expires_at)) if at >= expires_at => {
                        self.violate(Invariant::A5, at, format!("accepted access token {token} past expiry"));
                    }
                    Some(_) => {}
                }
                if self.families.get(family).is_some_and(|f| f.revoked_at.is_some()) {
                    self.violate(Invariant::A3, at, format!("accepted an access token of revoked {family}"));
                }
            }
            _ => {}
        }
    }

    /// A7 and D1: a bound family's token presented without a proof by its
    /// key is refused (the server's duty), and never presented so at all
    /// (the client's: worlds have no thieves).
    fn bound_presentation(
        &mut self,
        at: MonoTime,
        token: Fingerprint,
        proven_by: Option<&str>,
        outcome: &AuditOutcome,
    ) {
        let Some(record) = self.refresh.get(&token) else { return };
        let Some(jkt) = self.families.get(&record.family).and_then(|f| f.jkt.clone()) else { return };
        if proven_by == Some(jkt.as_str()) {
            return;
        }
        if matches!(outcome, AuditOutcome::Issued { .. }) {
            self.violate(Invariant::A7, at, format!("bound {token} served without a proof by its key"));
        }
        let shown = if proven_by.is_some() { "with another key's proof" } else { "without a proof" };
        self.violate(Invariant::D1, at, format!("bound {token} presented {shown}"));
    }

    fn issue(&mut self, at: MonoTime, family: FamilyId, access: Fingerprint, refresh: Option<Fingerprint>) {
        let ends_at = self.families.get(&family).map_or(at, |f| f.ends_at);
        self.access.insert(access, (family, at.saturating_add(self.config.access_ttl)));
        if let Some(refresh) = refresh {
            let expires_at = at.saturating_add(self.config.refresh_ttl).min(ends_at);
            self.refresh.entry(refresh).or_insert(IssuedRefresh { family, expires_at, consumed: None, successes: 0 });
        }
    }

    fn revoke(&mut self, at: MonoTime, family: FamilyId) {
        if let Some(f) = self.families.get_mut(&family) {
            f.revoked_at.get_or_insert(at);
        }
    }

    fn refresh(
        &mut self,
        at: MonoTime,
        client: &str,
        device: Option<&str>,
        token: Fingerprint,
        outcome: &AuditOutcome,
    ) {
        let Some(record) = self.refresh.get(&token).cloned() else {
            if matches!(outcome, AuditOutcome::Issued { .. }) {
                self.violate(Invariant::A5, at, format!("accepted unknown refresh token {token}"));
            }
            return;
        };
        let Some(family) = self.families.get(&record.family).cloned() else { return };
        let bound = family.client == client && family.device.as_deref() == device;
        let live = family.revoked_at.is_none() && at < record.expires_at && at < family.ends_at;
        let grace = self.config.grace;
        let in_grace = record
            .consumed
            .is_some_and(|(used, replays)| at < used.saturating_add(grace) && replays < self.config.grace_reuses);
        let consumed_outside_grace = self.config.rotation && record.consumed.is_some() && !in_grace;
        match outcome {
            AuditOutcome::Issued { family: issued_family, access, refresh } => {
                if !bound {
                    self.violate(Invariant::A5, at, format!("{token} accepted from the wrong client or device"));
                }
                if !live {
                    let invariant = if family.revoked_at.is_some() { Invariant::A3 } else { Invariant::A5 };
                    self.violate(invariant, at, format!("{token} accepted after its family was revoked or it expired"));
                }
                if consumed_outside_grace {
                    self.violate(Invariant::A1, at, format!("consumed {token} accepted outside grace"));
                }
                if self.config.rotation && grace.is_zero() && record.successes >= 1 {
                    self.violate(Invariant::A4, at, format!("{token} redeemed twice without grace"));
                }
                let issued_family = *issued_family;
                let (access, refresh) = (*access, *refresh);
                if let Some(r) = self.refresh.get_mut(&token) {
                    r.successes += 1;
                    if self.config.rotation {
                        r.consumed = Some(match r.consumed {
                            None => (at, 0),
                            Some((used, replays)) => (used, replays + 1),
                        });
                    } else {
                        r.expires_at = at.saturating_add(self.config.refresh_ttl).min(family.ends_at);
                    }
                }
                self.issue(at, issued_family, access, (refresh != token).then_some(refresh));
            }
            // Refused before the token was looked at (a DPoP nonce or replay).
            AuditOutcome::Refused(refusal) if refusal.before_the_token() => {}
            AuditOutcome::Refused(Refusal::DpopKeyMismatch) => {}
            AuditOutcome::Refused(refusal) => {
                if bound && live && in_grace && self.config.rotation {
                    self.violate(Invariant::A2, at, format!("replay of {token} inside grace refused ({refusal:?})"));
                }
                if bound
                    && live
                    && consumed_outside_grace
                    && self.config.reuse_detection
                    && *refusal != Refusal::ReuseDetected
                {
                    self.violate(
                        Invariant::A1,
                        at,
                        format!("reuse of {token} outside grace did not revoke the family"),
                    );
                }
                if *refusal == Refusal::ReuseDetected {
                    self.revoke(at, record.family);
                }
            }
            _ => {}
        }
    }
}
