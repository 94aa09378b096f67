//! The hostile-input table: one test per row, each a response or stored blob a
//! broken or hostile server, proxy or disk can produce, with its typed
//! expectation. Every row also goes through a live session (see
//! [`fuzzing::refresh_answered_with`] and [`fuzzing::session_loaded_from`]),
//! which checks what holds for all of them: no panic, a logout only for a
//! terminal answer, and no token lost.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test may panic: that is how it fails

use std::time::Duration;

use freshen_core::oauth::{
    Classified, Malformed, MalformedReason, OAuthError, Rejected, Response, TokenResponse, Transient, TransientCause,
};
use freshen_core::session::{LogoutCause, StateView};
use freshen_core::stored::DecodeError;
use freshen_core::token::TokenType;
use freshen_sim::fuzzing::{self, Aftermath};

fn answer(status: u16, body: &[u8]) -> Aftermath {
    answer_with(status, &[], body)
}

fn answer_with(status: u16, headers: &[(&str, &[u8])], body: &[u8]) -> Aftermath {
    match fuzzing::refresh_answered_with(&Response { status, headers, body }) {
        Ok(aftermath) => aftermath,
        Err(broken) => panic!("{broken}"),
    }
}

fn token_body(fields: &str) -> Vec<u8> {
    format!(r#"{{"access_token":"fresh-access","token_type":"Bearer"{fields}}}"#).into_bytes()
}

fn success(aftermath: &Aftermath) -> &TokenResponse {
    match &aftermath.classified {
        Classified::Success(tokens) => {
            assert!(aftermath.granted, "a success must grant the waiting caller");
            tokens
        }
        other => panic!("expected a success, got {other:?}"),
    }
}

fn malformed(aftermath: &Aftermath) -> &Malformed {
    match &aftermath.classified {
        Classified::Malformed(malformed) => malformed,
        other => panic!("expected a malformed answer, got {other:?}"),
    }
}

fn lifetime(expires_in: &str) -> Option<Duration> {
    success(&answer(200, &token_body(&format!(r#","expires_in":{expires_in}"#)))).lifetime
}

fn terminal(aftermath: &Aftermath) -> &OAuthError {
    assert!(matches!(aftermath.state, StateView::LoggedOut { cause: LogoutCause::RefreshTokenRejected { .. } }));
    match &aftermath.classified {
        Classified::Terminal(error) => error,
        other => panic!("expected a terminal error, got {other:?}"),
    }
}

// Response bodies.

#[test]
fn malformed_json() {
    let aftermath = answer(200, br#"{"access_token": "fresh-access", "expires_in": }"#);
    assert_eq!(malformed(&aftermath).reason, MalformedReason::NotJsonObject);
}

#[test]
fn truncated_body() {
    let aftermath = answer(200, br#"{"access_token":"fresh-access","expires_in":36"#);
    assert_eq!(malformed(&aftermath).reason, MalformedReason::NotJsonObject);
}

#[test]
fn ten_megabyte_body() {
    let mut body = br#"{"access_token":""#.to_vec();
    body.resize(10 * 1024 * 1024, b'a');
    body.extend_from_slice(br#""}"#);
    assert_eq!(malformed(&answer(200, &body)).reason, MalformedReason::BodyTooLarge);
}

#[test]
fn html_error_page_with_200() {
    let aftermath = answer(200, b"<!doctype html><html><body>Sign in to continue</body></html>");
    assert_eq!(malformed(&aftermath).reason, MalformedReason::NotJsonObject);
}

#[test]
fn html_error_page_with_500() {
    let aftermath = answer(500, b"<html><body>Internal Server Error</body></html>");
    assert!(matches!(
        aftermath.classified,
        Classified::Transient(Transient { cause: TransientCause::ServerError(500), retry_after: None })
    ));
}

#[test]
fn non_utf8_bytes() {
    let aftermath = answer(200, b"{\"access_token\":\"\xff\xfe\xfd\"}");
    assert_eq!(malformed(&aftermath).reason, MalformedReason::NotJsonObject);
}

#[test]
fn duplicate_keys_take_the_last() {
    let aftermath = answer(200, br#"{"access_token":"first","access_token":"second","expires_in":60}"#);
    assert_eq!(success(&aftermath).access_token.expose_secret(), "second");
}

#[test]
fn extra_nested_fields_are_ignored() {
    let body = token_body(r#","expires_in":60,"extra":{"deep":[1,{"deeper":[null,true,"x"]}],"id_token":{"a":1}}"#);
    assert_eq!(success(&answer(200, &body)).lifetime, Some(Duration::from_secs(60)));
}

// Error responses.

#[test]
fn invalid_grant_with_400_logs_out() {
    assert_eq!(terminal(&answer(400, br#"{"error":"invalid_grant"}"#)).status, 400);
}

#[test]
fn invalid_grant_with_401_logs_out() {
    assert_eq!(terminal(&answer(401, br#"{"error":"invalid_grant"}"#)).status, 401);
}

#[test]
fn invalid_grant_with_403_logs_out() {
    assert_eq!(terminal(&answer(403, br#"{"error":"invalid_grant"}"#)).status, 403);
}

#[test]
fn invalid_request_asking_to_retry_is_transient() {
    let body = br#"{"error":"invalid_request","error_description":"refresh in progress, retry"}"#;
    let aftermath = answer(400, body);
    assert!(matches!(
        &aftermath.classified,
        Classified::Transient(Transient { cause: TransientCause::RetryRequested(e), .. }) if e.code == "invalid_request"
    ));
}

#[test]
fn plain_invalid_request_is_rejected_not_terminal() {
    let aftermath = answer(400, br#"{"error":"invalid_request"}"#);
    assert!(matches!(&aftermath.classified, Classified::Rejected(Rejected::Error(e)) if e.code == "invalid_request"));
}

#[test]
fn an_error_field_in_a_200_is_an_error() {
    let aftermath = answer(200, br#"{"error":"invalid_grant","access_token":"fresh-access"}"#);
    assert_eq!(terminal(&aftermath).status, 200);
}

#[test]
fn a_429_with_a_date_retry_after_is_transient() {
    let headers: &[(&str, &[u8])] = &[("Retry-After", b"Fri, 15 Jan 2027 08:00:00 GMT")];
    let aftermath = answer_with(429, headers, b"slow down");
    assert!(matches!(
        aftermath.classified,
        Classified::Transient(Transient { cause: TransientCause::RateLimited, retry_after: Some(_) })
    ));
}

// Token fields.

#[test]
fn missing_access_token() {
    let aftermath = answer(200, br#"{"token_type":"Bearer","expires_in":60}"#);
    assert_eq!(malformed(&aftermath).reason, MalformedReason::MissingAccessToken);
}

#[test]
fn empty_access_token() {
    let aftermath = answer(200, br#"{"access_token":"","token_type":"Bearer"}"#);
    assert_eq!(malformed(&aftermath).reason, MalformedReason::InvalidAccessToken);
}

#[test]
fn a_rotated_refresh_token_beside_an_empty_access_token_is_kept() {
    let aftermath = answer(200, br#"{"access_token":"","refresh_token":"rotated-refresh"}"#);
    let salvaged = malformed(&aftermath).salvaged_refresh_token.as_ref().expect("salvaged");
    assert_eq!(salvaged.expose_secret(), "rotated-refresh");
}

#[test]
fn token_type_mac_or_unknown_is_unusable_and_dpop_only_to_a_bound_session() {
    for kind in ["mac", "N_A"] {
        let body = format!(r#"{{"access_token":"fresh-access","token_type":"{kind}"}}"#);
        let reason = malformed(&answer(200, body.as_bytes())).reason.clone();
        assert!(matches!(reason, MalformedReason::UnsupportedTokenType(t) if t != TokenType::Bearer), "{kind}");
    }
    // DPoP tokens read well, but a bearer session has no key to prove: it
    // never hands one out (a bound session takes nothing else).
    let aftermath = answer(200, br#"{"access_token":"fresh-access","token_type":"DPoP"}"#);
    assert!(matches!(&aftermath.classified, Classified::Success(t) if t.token_type == TokenType::DPoP));
    assert!(!aftermath.granted, "a bearer session handed out a DPoP-bound token");
}

#[test]
fn refresh_token_null_keeps_the_old_one() {
    let aftermath = answer(200, &token_body(r#","refresh_token":null"#));
    assert!(success(&aftermath).refresh_token.is_none());
}

// expires_in (the lifetime is believed within [1 s, 24 h]; otherwise unknown).

#[test]
fn expires_in_missing() {
    assert_eq!(success(&answer(200, &token_body(""))).lifetime, None);
}

#[test]
fn expires_in_zero() {
    assert_eq!(lifetime("0"), None);
}

#[test]
fn expires_in_negative() {
    assert_eq!(lifetime("-1"), None);
}

#[test]
fn expires_in_huge() {
    assert_eq!(lifetime("1e308"), Some(Duration::from_secs(24 * 60 * 60)));
}

#[test]
fn expires_in_as_a_string() {
    assert_eq!(lifetime(r#""3600""#), Some(Duration::from_secs(3600)));
}

#[test]
fn expires_in_fractional() {
    assert_eq!(lifetime("59.9"), Some(Duration::from_secs(59)));
}

// Stored blobs: a typed error, a logout as unreadable, and the blob left alone.

fn unreadable(blob: &[u8]) -> DecodeError {
    match fuzzing::session_loaded_from(blob) {
        Ok(StateView::LoggedOut { cause: LogoutCause::StoredSessionUnreadable(error) }) => error,
        other => panic!("expected an unreadable store, got {other:?}"),
    }
}

#[test]
fn stored_blob_from_a_future_schema() {
    let blob = br#"{"v":4,"generation":1,"access_token":"a","refresh_token":"r","hardware_key":"k"}"#;
    assert_eq!(unreadable(blob), DecodeError::UnsupportedVersion(4));
}

#[test]
fn stored_blob_truncated() {
    assert_eq!(unreadable(br#"{"v":1,"generation":1,"access_token":"a","refr"#), DecodeError::NotAnObject);
}

#[test]
fn stored_blob_with_wrong_types() {
    let blob = br#"{"v":1,"generation":"one","access_token":"a","refresh_token":"r"}"#;
    assert_eq!(unreadable(blob), DecodeError::InvalidField("generation"));
}

#[test]
fn stored_blob_readable() {
    let blob = br#"{"v":1,"generation":3,"access_token":"a","refresh_token":"r"}"#;
    let state = fuzzing::session_loaded_from(blob).unwrap();
    assert!(matches!(state, StateView::Valid { .. } | StateView::Refreshing { .. }), "{state}");
}
