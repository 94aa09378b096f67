#![allow(clippy::unwrap_used, clippy::expect_used)] // a test may panic: that is how it fails

use super::*;

const ISSUER: &str = "https://auth.example.com";

/// A document as oidc-provider serves it (trimmed), for `issuer`.
fn document(issuer: &str) -> serde_json::Value {
    serde_json::json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/auth"),
        "token_endpoint": format!("{issuer}/token"),
        "revocation_endpoint": format!("{issuer}/token/revocation"),
        "device_authorization_endpoint": format!("{issuer}/device/auth"),
        "jwks_uri": format!("{issuer}/jwks"),
        "dpop_signing_alg_values_supported": ["ES256", "EdDSA"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "claims_parameter_supported": false,
    })
}

fn parsed(document: &serde_json::Value) -> Result<ServerMetadata, DiscoveryError> {
    ServerMetadata::parse(&serde_json::to_vec(document).unwrap(), ISSUER)
}

#[test]
fn a_document_fills_every_endpoint_and_the_issuer() {
    let metadata = parsed(&document(ISSUER)).unwrap();
    assert!(metadata.supports_dpop());
    let config = metadata.config(Client::public("app"));
    assert_eq!(config.token_endpoint, "https://auth.example.com/token");
    assert_eq!(config.revocation_endpoint.as_deref(), Some("https://auth.example.com/token/revocation"));
    assert_eq!(config.authorization_endpoint.as_deref(), Some("https://auth.example.com/auth"));
    assert_eq!(config.device_authorization_endpoint.as_deref(), Some("https://auth.example.com/device/auth"));
    assert_eq!(config.issuer.as_deref(), Some(ISSUER));
    assert!(!config.dpop, "DPoP is the app's choice");
}

#[test]
fn optional_endpoints_may_be_absent_but_the_token_endpoint_may_not() {
    let minimal = serde_json::json!({ "issuer": ISSUER, "token_endpoint": "https://auth.example.com/t" });
    let metadata = parsed(&minimal).unwrap();
    let config = metadata.config(Client::public("app"));
    assert_eq!((config.revocation_endpoint, config.authorization_endpoint), (None, None));
    assert!(!metadata.supports_dpop());
    assert!(metadata.dpop_algorithms().is_empty());
    let mut without = document(ISSUER);
    without.as_object_mut().unwrap().remove("token_endpoint");
    assert!(matches!(parsed(&without), Err(DiscoveryError::Field("token_endpoint"))));
}

/// RFC 8414 §3.3: a document naming another issuer is refused, however close.
#[test]
fn a_document_for_another_issuer_is_refused() {
    for other in ["https://evil.example.com", "https://auth.example.com/", "HTTPS://auth.example.com"] {
        let refused = parsed(&document(other));
        assert!(matches!(refused, Err(DiscoveryError::IssuerMismatch { .. })), "{other}: {refused:?}");
    }
    let mut unnamed = document(ISSUER);
    unnamed.as_object_mut().unwrap().remove("issuer");
    assert!(matches!(parsed(&unnamed), Err(DiscoveryError::Field("issuer"))));
}

#[test]
fn endpoints_must_be_https_or_loopback_http() {
    for (field, url) in [
        ("token_endpoint", "http://auth.example.com/token"),
        ("revocation_endpoint", "ftp://auth.example.com/revoke"),
        ("authorization_endpoint", "/auth"),
        ("device_authorization_endpoint", "https://user:pass@auth.example.com/device"),
    ] {
        let mut hostile = document(ISSUER);
        hostile[field] = url.into();
        match parsed(&hostile) {
            Err(DiscoveryError::InsecureEndpoint { field: named, .. }) => assert_eq!(named, field),
            other => panic!("{field} = {url}: {other:?}"),
        }
    }
    let loopback = "http://127.0.0.1:8080";
    let metadata = ServerMetadata::parse(&serde_json::to_vec(&document(loopback)).unwrap(), loopback).unwrap();
    assert_eq!(metadata.token_endpoint(), "http://127.0.0.1:8080/token");
}

/// Untrusted bytes get typed errors, never a panic, and errors quote little.
#[test]
fn hostile_documents_get_typed_errors() {
    assert!(matches!(ServerMetadata::parse(b"<html>", ISSUER), Err(DiscoveryError::NotJson)));
    assert!(matches!(ServerMetadata::parse(b"[1, 2]", ISSUER), Err(DiscoveryError::NotJson)));
    assert!(matches!(ServerMetadata::parse(&[b' '; MAX_BODY_BYTES + 1], ISSUER), Err(DiscoveryError::TooLarge)));
    let mut wrong_type = document(ISSUER);
    wrong_type["revocation_endpoint"] = 7.into();
    assert!(matches!(parsed(&wrong_type), Err(DiscoveryError::Field("revocation_endpoint"))));
    wrong_type = document(ISSUER);
    wrong_type["dpop_signing_alg_values_supported"] = serde_json::json!(["ES256", 1]);
    assert!(matches!(parsed(&wrong_type), Err(DiscoveryError::Field("dpop_signing_alg_values_supported"))));
    let long = format!("https://{}.example.com", "a".repeat(5000));
    let error = parsed(&document(&long)).unwrap_err().to_string();
    assert!(error.len() < 400, "{error}");
    // Nesting past serde_json's recursion limit is refused, not a stack overflow.
    let nested = format!("{}{}", "[".repeat(30_000), "]".repeat(30_000));
    assert!(matches!(ServerMetadata::parse(nested.as_bytes(), ISSUER), Err(DiscoveryError::NotJson)));
}

/// RFC 8414 §3.1: the well-known path goes between host and path; OpenID
/// Connect Discovery appends it.
#[test]
fn metadata_urls_follow_both_specifications() {
    assert_eq!(
        metadata_urls("https://auth.example.com").unwrap(),
        [
            "https://auth.example.com/.well-known/oauth-authorization-server",
            "https://auth.example.com/.well-known/openid-configuration"
        ]
    );
    assert_eq!(
        metadata_urls("https://auth.example.com:8443/tenant/1/").unwrap(),
        [
            "https://auth.example.com:8443/.well-known/oauth-authorization-server/tenant/1",
            "https://auth.example.com:8443/tenant/1/.well-known/openid-configuration"
        ]
    );
    for invalid in [
        "auth.example.com",
        "http://auth.example.com",
        "https://auth.example.com?tenant=1",
        "https://auth.example.com#x",
        "https://user@auth.example.com",
        "",
    ] {
        assert!(matches!(metadata_urls(invalid), Err(DiscoveryError::InvalidIssuer(_))), "{invalid}");
    }
    assert!(metadata_urls("http://localhost:8080").is_ok(), "loopback http, for development");
    assert!(metadata_urls("http://[::1]:8080").is_ok(), "any loopback address, as Session::start allows");
    assert!(metadata_urls("http://127.0.0.2").is_ok(), "any loopback address, as Session::start allows");
}
