use secrecy::ExposeSecret as _;

use super::*;

const CLIENT: &str = "app";

fn t(secs: u64) -> MonoTime {
    MonoTime::from_secs(secs)
}

fn authority(config: AuthorityConfig) -> Authority {
    Authority::new(config, 42).with_audit()
}

fn redeem(a: &mut Authority, at: u64, token: &RefreshToken) -> Result<Issued, Refusal> {
    a.refresh(t(at), CLIENT, None, token.expose_secret(), None)
}

#[test]
fn rotation_consumes_and_issues_a_successor() {
    let mut a = authority(AuthorityConfig { grace: Duration::ZERO, ..AuthorityConfig::default() });
    let login = a.login(t(0), CLIENT, None);
    let next = redeem(&mut a, 1, &login.refresh_token).unwrap();
    assert!(!next.refresh_token.same_as(&login.refresh_token));
    assert_eq!(next.expires_in, Duration::from_secs(300));
    assert!(redeem(&mut a, 2, &next.refresh_token).is_ok());
}

#[test]
fn reuse_outside_grace_revokes_the_family_access_tokens_included() {
    let mut a = authority(AuthorityConfig { grace: Duration::from_secs(10), ..AuthorityConfig::default() });
    let login = a.login(t(0), CLIENT, None);
    let next = redeem(&mut a, 1, &login.refresh_token).unwrap();
    assert_eq!(redeem(&mut a, 12, &login.refresh_token).unwrap_err(), Refusal::ReuseDetected);
    assert_eq!(redeem(&mut a, 13, &next.refresh_token).unwrap_err(), Refusal::Revoked);
    assert_eq!(a.validate(t(13), next.access_token.expose_secret()), Err(InvalidToken::Revoked));
    assert_eq!(a.stats().reuse_detections, 1);
}

#[test]
fn reuse_without_detection_is_refused_but_keeps_the_family() {
    let config = AuthorityConfig { grace: Duration::ZERO, reuse_detection: false, ..AuthorityConfig::default() };
    let mut a = authority(config);
    let login = a.login(t(0), CLIENT, None);
    let next = redeem(&mut a, 1, &login.refresh_token).unwrap();
    assert_eq!(redeem(&mut a, 2, &login.refresh_token).unwrap_err(), Refusal::AlreadyUsed);
    assert!(redeem(&mut a, 3, &next.refresh_token).is_ok());
}

#[test]
fn grace_replays_the_same_pair_within_its_count() {
    let config = AuthorityConfig { grace: Duration::from_secs(10), grace_reuses: 1, ..AuthorityConfig::default() };
    let mut a = authority(config);
    let login = a.login(t(0), CLIENT, None);
    let first = redeem(&mut a, 1, &login.refresh_token).unwrap();
    let replay = redeem(&mut a, 5, &login.refresh_token).unwrap();
    assert!(replay.refresh_token.same_as(&first.refresh_token));
    assert!(replay.access_token.same_as(&first.access_token));
    assert_eq!(replay.expires_in, Duration::from_secs(296));
    // The count is spent: the next replay is theft.
    assert_eq!(redeem(&mut a, 6, &login.refresh_token).unwrap_err(), Refusal::ReuseDetected);
    assert_eq!(a.stats().grace_replays, 1);
}

#[test]
fn a_fresh_pair_replay_leaves_the_first_successor_valid() {
    let config = AuthorityConfig { grace_replay: GraceReplay::FreshPair, ..AuthorityConfig::default() };
    let mut a = authority(config);
    let login = a.login(t(0), CLIENT, None);
    let first = redeem(&mut a, 1, &login.refresh_token).unwrap();
    let replay = redeem(&mut a, 2, &login.refresh_token).unwrap();
    assert!(!replay.refresh_token.same_as(&first.refresh_token));
    assert!(redeem(&mut a, 3, &first.refresh_token).is_ok());
    assert!(redeem(&mut a, 4, &replay.refresh_token).is_ok());
}

#[test]
fn without_rotation_the_token_stays_and_slides() {
    let config =
        AuthorityConfig { rotation: false, refresh_ttl: Duration::from_secs(100), ..AuthorityConfig::default() };
    let mut a = authority(config);
    let login = a.login(t(0), CLIENT, None);
    let next = redeem(&mut a, 90, &login.refresh_token).unwrap();
    assert!(next.refresh_token.same_as(&login.refresh_token));
    // 180 is past the first lifetime (100) but within the slid one (190).
    assert!(redeem(&mut a, 180, &login.refresh_token).is_ok());
    assert_eq!(redeem(&mut a, 281, &login.refresh_token).unwrap_err(), Refusal::Expired);
}

#[test]
fn refresh_tokens_expire_slidingly_and_families_absolutely() {
    let config = AuthorityConfig {
        refresh_ttl: Duration::from_secs(100),
        family_lifetime: Duration::from_secs(250),
        ..AuthorityConfig::default()
    };
    let mut a = authority(config);
    let login = a.login(t(0), CLIENT, None);
    assert_eq!(redeem(&mut a, 100, &login.refresh_token).unwrap_err(), Refusal::Expired);
    let r1 = redeem(&mut a, 99, &login.refresh_token).unwrap();
    let r2 = redeem(&mut a, 198, &r1.refresh_token).unwrap();
    // Sliding would allow 298, but the family ends at 250.
    assert_eq!(redeem(&mut a, 250, &r2.refresh_token).unwrap_err(), Refusal::Expired);
}

#[test]
fn tokens_are_bound_to_their_client_and_device() {
    let mut a = authority(AuthorityConfig::default());
    let login = a.login(t(0), CLIENT, Some("laptop"));
    let token = login.refresh_token.expose_secret();
    assert_eq!(a.refresh(t(1), "other", Some("laptop"), token, None).unwrap_err(), Refusal::WrongClient);
    assert_eq!(a.refresh(t(1), CLIENT, Some("phone"), token, None).unwrap_err(), Refusal::WrongClient);
    assert_eq!(a.refresh(t(1), CLIENT, None, token, None).unwrap_err(), Refusal::WrongClient);
    assert!(a.refresh(t(1), CLIENT, Some("laptop"), token, None).is_ok());
}

#[test]
fn revocation_follows_rfc_7009() {
    let mut a = authority(AuthorityConfig::default());
    assert_eq!(a.revoke(t(0), CLIENT, "never-issued"), Ok(()));
    let login = a.login(t(0), CLIENT, None);
    assert_eq!(a.revoke(t(1), "other", login.refresh_token.expose_secret()), Err(RevokeError::WrongClient));
    assert!(a.validate(t(1), login.access_token.expose_secret()).is_ok());
    assert_eq!(a.revoke(t(2), CLIENT, login.refresh_token.expose_secret()), Ok(()));
    assert_eq!(a.validate(t(2), login.access_token.expose_secret()), Err(InvalidToken::Revoked));
    assert_eq!(redeem(&mut a, 3, &login.refresh_token).unwrap_err(), Refusal::Revoked);
    // Revoking an access token ends that token only.
    let other = a.login(t(4), CLIENT, None);
    assert_eq!(a.revoke(t(5), CLIENT, other.access_token.expose_secret()), Ok(()));
    assert_eq!(a.validate(t(5), other.access_token.expose_secret()), Err(InvalidToken::Revoked));
    assert!(redeem(&mut a, 6, &other.refresh_token).is_ok());
}

#[test]
fn access_tokens_expire() {
    let mut a = authority(AuthorityConfig::default());
    let login = a.login(t(0), CLIENT, None);
    assert!(a.validate(t(299), login.access_token.expose_secret()).is_ok());
    assert_eq!(a.validate(t(300), login.access_token.expose_secret()), Err(InvalidToken::Expired));
    assert_eq!(a.validate(t(1), "nope"), Err(InvalidToken::Unknown));
}

#[test]
fn the_audit_shows_which_refusals_changed_state() {
    let mut a = authority(AuthorityConfig { grace: Duration::ZERO, ..AuthorityConfig::default() });
    let login = a.login(t(0), CLIENT, None);
    let _ = a.refresh(t(1), "other", None, login.refresh_token.expose_secret(), None);
    redeem(&mut a, 2, &login.refresh_token).unwrap();
    let _ = redeem(&mut a, 3, &login.refresh_token);
    let audit = a.take_audit();
    let changed: Vec<_> = audit.iter().map(|e| (e.outcome.clone(), e.state_changed)).collect();
    assert!(matches!(changed[1], (AuditOutcome::Refused(Refusal::WrongClient), false)));
    assert!(matches!(changed[2], (AuditOutcome::Issued { .. }, true)));
    assert!(matches!(changed[3], (AuditOutcome::Refused(Refusal::ReuseDetected), true)));
    assert!(a.take_audit().is_empty());
}

#[test]
fn same_seed_same_tokens_and_debug_hides_them() {
    let mut one = Authority::new(AuthorityConfig::default(), 7);
    let mut two = Authority::new(AuthorityConfig::default(), 7);
    let (a, b) = (one.login(t(0), CLIENT, None), two.login(t(0), CLIENT, None));
    assert!(a.refresh_token.same_as(&b.refresh_token));
    let shown = format!("{one:?} {a:?}");
    assert!(!shown.contains("frsh_"), "{shown}");
}

fn proof(jkt: &str, jti: &str, nonce: Option<String>) -> Proof {
    Proof { jkt: jkt.into(), jti: jti.into(), nonce }
}

#[test]
fn a_bound_family_refreshes_only_with_its_key_and_nothing_is_consumed_before() {
    let mut a = authority(AuthorityConfig { grace: Duration::ZERO, ..AuthorityConfig::default() });
    let login = a.login(t(0), CLIENT, None);
    a.bind(t(0), login.family, "jkt-a");
    let token = login.refresh_token.expose_secret();
    assert_eq!(a.refresh(t(1), CLIENT, None, token, None).unwrap_err(), Refusal::DpopKeyMismatch);
    assert_eq!(
        a.refresh(t(1), CLIENT, None, token, Some(&proof("jkt-b", "1", None))).unwrap_err(),
        Refusal::DpopKeyMismatch
    );
    // Neither consumed it, nor tripped reuse detection.
    let next = a.refresh(t(2), CLIENT, None, token, Some(&proof("jkt-a", "2", None))).unwrap();
    assert!(next.dpop_bound && next.to_json().expose_secret().contains(r#""token_type":"DPoP""#));
    // A proof id is used once.
    let replayed = a.refresh(t(3), CLIENT, None, next.refresh_token.expose_secret(), Some(&proof("jkt-a", "2", None)));
    assert_eq!(replayed.unwrap_err(), Refusal::DpopProofReplayed);
    assert!(
        a.refresh(t(3), CLIENT, None, next.refresh_token.expose_secret(), Some(&proof("jkt-a", "3", None))).is_ok()
    );
}

#[test]
fn nonces_are_required_fresh_and_a_challenge_consumes_nothing() {
    let config = AuthorityConfig { dpop_nonce_lifetime: Some(Duration::from_secs(60)), ..AuthorityConfig::default() };
    let mut a = authority(config);
    let login = a.login(t(0), CLIENT, None);
    a.bind(t(0), login.family, "k");
    let token = login.refresh_token.expose_secret();
    assert_eq!(a.refresh(t(10), CLIENT, None, token, Some(&proof("k", "1", None))).unwrap_err(), Refusal::UseDpopNonce);
    let stale = Some("n-old".to_owned());
    assert_eq!(
        a.refresh(t(10), CLIENT, None, token, Some(&proof("k", "2", stale))).unwrap_err(),
        Refusal::UseDpopNonce
    );
    assert_eq!(Refusal::UseDpopNonce.to_json(), r#"{"error":"use_dpop_nonce"}"#);
    // The nonce of the period before still works; two periods back does not.
    let first = a.dpop_nonce(t(10));
    assert_ne!(a.dpop_nonce(t(70)), first);
    let next = a.refresh(t(70), CLIENT, None, token, Some(&proof("k", "3", first.clone()))).unwrap();
    let late = a.refresh(t(130), CLIENT, None, next.refresh_token.expose_secret(), Some(&proof("k", "4", first)));
    assert_eq!(late.unwrap_err(), Refusal::UseDpopNonce);
}

#[test]
fn a_token_answer_is_written_as_serde_json_printed_it() {
    for (access, refresh, dpop_bound) in [
        ("auth_at_1_00ab", "auth_rt_2_00cd", false),
        ("a b", "r\"q", true),
        ("a\\b", "r", true),
        ("\u{1}ünïcode", "\n\t", false),
    ] {
        let issued = Issued {
            family: FamilyId(3),
            access_token: AccessToken::new(access),
            refresh_token: RefreshToken::new(refresh),
            expires_in: Duration::from_secs(3600),
            dpop_bound,
        };
        let printed = json!({
            "access_token": access,
            "token_type": if dpop_bound { "DPoP" } else { "Bearer" },
            "expires_in": 3600,
            "refresh_token": refresh,
        })
        .to_string();
        assert_eq!(issued.to_json().expose_secret(), printed);
    }
}
