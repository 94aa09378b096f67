use super::*;

fn run(status: u16, headers: &[(&str, &[u8])], body: &[u8]) -> Classified {
    classify(&Policy::default(), &Response { status, headers, body }, Some(UnixTime::from_secs(784_111_777)))
}

fn success(body: &str) -> TokenResponse {
    match run(200, &[], body.as_bytes()) {
        Classified::Success(tokens) => tokens,
        other => panic!("expected success, got {other:?}"),
    }
}

fn lifetime_of(expires_in: &str) -> Option<Duration> {
    success(&format!(r#"{{"access_token":"a","token_type":"Bearer","expires_in":{expires_in}}}"#)).lifetime
}

#[test]
fn public_client_sends_client_id_in_the_body() {
    let request = refresh_request(&Client::public("my app"), &RefreshToken::new("r+1/="), Some("read write"));
    assert_eq!(
        request.expose_body(),
        "grant_type=refresh_token&refresh_token=r%2B1%2F%3D&scope=read+write&client_id=my+app"
    );
    assert_eq!(request.expose_authorization(), None);
}

#[test]
fn basic_auth_form_encodes_before_base64() {
    let client = Client::confidential("id:1", SecretString::from("p@ss word"), ClientAuth::Basic);
    let request = refresh_request(&client, &RefreshToken::new("r"), None);
    assert_eq!(request.expose_body(), "grant_type=refresh_token&refresh_token=r");
    let expected = base64::engine::general_purpose::STANDARD.encode("id%3A1:p%40ss+word");
    assert_eq!(request.expose_authorization(), Some(format!("Basic {expected}").as_str()));
}

#[test]
fn post_auth_puts_the_secret_in_the_body() {
    let client = Client::confidential("id", SecretString::from("s"), ClientAuth::Post);
    let request = revocation_request(&client, &RefreshToken::new("r"));
    assert_eq!(request.expose_body(), "token=r&token_type_hint=refresh_token&client_id=id&client_secret=s");
}

#[test]
fn debug_of_requests_and_clients_hides_secrets() {
    let client = Client::confidential("id", SecretString::from("canary-secret"), ClientAuth::Basic);
    let request = refresh_request(&client, &RefreshToken::new("canary-refresh"), None);
    let shown = format!("{client:?} {request:?}");
    assert!(!shown.contains("canary"), "{shown}");
}

#[test]
fn success_keeps_every_field() {
    let tokens = success(
        r#"{"access_token":"a1","token_type":"bEaReR","expires_in":3600,"refresh_token":"r2","scope":"read","extra":{"nested":[1,2]}}"#,
    );
    assert_eq!(tokens.access_token.expose_secret(), "a1");
    assert_eq!(tokens.token_type, TokenType::Bearer);
    assert_eq!(tokens.lifetime, Some(Duration::from_secs(3600)));
    assert_eq!(tokens.refresh_token.as_ref().map(RefreshToken::expose_secret), Some("r2"));
    assert_eq!(tokens.scope.as_deref(), Some("read"));
}

#[test]
fn absent_or_null_refresh_token_means_keep_the_old_one() {
    assert!(success(r#"{"access_token":"a","token_type":"bearer"}"#).refresh_token.is_none());
    assert!(success(r#"{"access_token":"a","token_type":"bearer","refresh_token":null}"#).refresh_token.is_none());
}

#[test]
fn missing_token_type_is_bearer() {
    assert_eq!(success(r#"{"access_token":"a"}"#).token_type, TokenType::Bearer);
}

#[test]
fn expires_in_rule() {
    let day = Duration::from_secs(86_400);
    assert_eq!(lifetime_of("3600"), Some(Duration::from_secs(3600)));
    assert_eq!(lifetime_of(r#""3600""#), Some(Duration::from_secs(3600)));
    assert_eq!(lifetime_of("3600.9"), Some(Duration::from_secs(3600)));
    assert_eq!(lifetime_of(r#"" 90.5 ""#), Some(Duration::from_secs(90)));
    assert_eq!(lifetime_of("1e308"), Some(day));
    assert_eq!(lifetime_of("18446744073709551615"), Some(day));
    assert_eq!(lifetime_of("0"), None);
    assert_eq!(lifetime_of("-1"), None);
    assert_eq!(lifetime_of("0.5"), None);
    assert_eq!(lifetime_of("null"), None);
    assert_eq!(lifetime_of("true"), None);
    assert_eq!(lifetime_of(r#""soon""#), None);
    assert_eq!(lifetime_of(r#""inf""#), None);
    assert_eq!(lifetime_of(r#""NaN""#), None);
    assert_eq!(lifetime_of("{}"), None);
    assert_eq!(success(r#"{"access_token":"a"}"#).lifetime, None);
}

#[test]
fn invalid_grant_is_terminal_at_400_401_and_403() {
    for status in [400, 401, 403] {
        let outcome = run(status, &[], br#"{"error":"invalid_grant"}"#);
        assert!(
            matches!(&outcome, Classified::Terminal(e) if e.status == status && e.description.is_none()),
            "{outcome:?}"
        );
    }
}

#[test]
fn an_error_field_in_a_200_is_an_error() {
    assert!(matches!(run(200, &[], br#"{"error":"invalid_grant"}"#), Classified::Terminal(_)));
}

#[test]
fn invalid_request_asking_to_retry_is_transient() {
    let body = br#"{"error":"invalid_request","error_description":"Refresh already in progress, please retry"}"#;
    assert!(matches!(
        run(400, &[], body),
        Classified::Transient(Transient { cause: TransientCause::RetryRequested(_), .. })
    ));
    let plain = br#"{"error":"invalid_request","error_description":"missing parameter"}"#;
    assert!(matches!(run(400, &[], plain), Classified::Rejected(Rejected::Error(_))));
}

#[test]
fn invalid_client_is_rejected_not_terminal() {
    let headers: &[(&str, &[u8])] = &[("WWW-Authenticate", b"Basic realm=\"token\"")];
    let outcome = run(401, headers, br#"{"error":"invalid_client"}"#);
    assert!(matches!(outcome, Classified::Rejected(Rejected::Error(ref e)) if e.code == "invalid_client"));
    assert!(matches!(run(401, headers, b""), Classified::Rejected(Rejected::Status(401))));
}

#[test]
fn server_errors_are_transient_whatever_the_body() {
    let html = b"<html><body><h1>502 Bad Gateway</h1></body></html>";
    assert!(matches!(
        run(502, &[], html),
        Classified::Transient(Transient { cause: TransientCause::ServerError(502), retry_after: None })
    ));
    let huge = vec![b'x'; 10 * 1024 * 1024];
    assert!(matches!(run(500, &[], &huge), Classified::Transient(_)));
}

#[test]
fn retry_after_in_seconds_and_as_a_date() {
    let seconds: &[(&str, &[u8])] = &[("retry-after", b" 30 ")];
    assert!(matches!(
        run(429, seconds, b""),
        Classified::Transient(Transient { cause: TransientCause::RateLimited, retry_after: Some(d) }) if d == Duration::from_secs(30)
    ));
    // 784111777 is Sun, 06 Nov 1994 08:49:37 GMT; the date is two minutes later.
    let date: &[(&str, &[u8])] = &[("Retry-After", b"Sun, 06 Nov 1994 08:51:37 GMT")];
    assert!(matches!(
        run(503, date, b""),
        Classified::Transient(Transient { retry_after: Some(d), .. }) if d == Duration::from_secs(120)
    ));
    assert_eq!(parse_retry_after(b"99999999999999999999999", None), Some(MAX_RETRY_AFTER));
    assert_eq!(parse_retry_after(b"soon", None), None);
    assert_eq!(parse_retry_after(b"Sun, 06 Nov 1994 08:51:37 GMT", None), None);
    assert_eq!(parse_retry_after(&[0xff, 0xfe], None), None);
}

#[test]
fn http_dates_are_read_in_all_three_forms_and_must_agree_with_their_weekday() {
    let nov_6_1994 = Some(UnixTime::from_secs(784_111_777));
    let table: [(&str, Option<UnixTime>); 24] = [
        // IMF-fixdate, the preferred form.
        ("Thu, 01 Jan 1970 00:00:00 GMT", Some(UnixTime::EPOCH)),
        ("Sun, 06 Nov 1994 08:49:37 GMT", nov_6_1994),
        ("Tue, 29 Feb 2028 12:00:00 GMT", Some(UnixTime::from_secs(1_835_438_400))),
        // RFC 850, obsolete: long weekday, two-digit year.
        ("Sunday, 06-Nov-94 08:49:37 GMT", nov_6_1994),
        ("Tuesday, 29-Feb-28 12:00:00 GMT", Some(UnixTime::from_secs(1_835_438_400))),
        // asctime: the day padded with a space, no zone.
        ("Sun Nov  6 08:49:37 1994", nov_6_1994),
        ("Tue Feb 29 12:00:00 2028", Some(UnixTime::from_secs(1_835_438_400))),
        // A weekday that contradicts the date, in each form.
        ("Mon, 06 Nov 1994 08:49:37 GMT", None),
        ("Monday, 06-Nov-94 08:49:37 GMT", None),
        ("Mon Nov  6 08:49:37 1994", None),
        // Malformed in other ways.
        ("Sun, 06 Nov 1994 08:49:37 UTC", None),
        ("Sun, 06 Foo 1994 08:49:37 GMT", None),
        ("Sun, 06 Nov 1994 24:00:00 GMT", None),
        ("Wed, 01 Jan 1969 00:00:00 GMT", None),
        ("Thu, 30 Feb 2028 12:00:00 GMT", None),
        ("Sun, 6 Nov 1994 08:49:37 GMT", None),
        ("Sun Nov 06 08:49:37 1994", Some(UnixTime::from_secs(784_111_777))),
        ("Sun Nov 6 08:49:37 1994", None),
        ("Sunday, 06-Nov-1994 08:49:37 GMT", None),
        ("Sun, 06 Nov 1994 08:49:37 GMT ", None),
        ("Sun, 06 Nov 1994 8:49:37 GMT", None),
        ("Sun, 06 Nov 1994 08:49:+7 GMT", None),
        ("", None),
        ("Sun, 06 Nov 1994 08:49:37 GMT and a long tail of text", None),
    ];
    for (text, expected) in table {
        assert_eq!(parse_http_date(text), expected, "{text:?}");
    }
}

#[test]
fn unusable_success_bodies_are_malformed() {
    let cases: &[(&[u8], MalformedReason)] = &[
        (b"<html>ok</html>", MalformedReason::NotJsonObject),
        (br#"{"access_token":"a","#, MalformedReason::NotJsonObject),
        (b"[1,2]", MalformedReason::NotJsonObject),
        (&[0xff, 0xfe, b'{'], MalformedReason::NotJsonObject),
        (br#"{"token_type":"bearer"}"#, MalformedReason::MissingAccessToken),
        (br#"{"access_token":""}"#, MalformedReason::InvalidAccessToken),
        (br#"{"access_token":42}"#, MalformedReason::InvalidAccessToken),
        (br#"{"access_token":"a","refresh_token":""}"#, MalformedReason::InvalidRefreshToken),
        (br#"{"access_token":"a","refresh_token":7}"#, MalformedReason::InvalidRefreshToken),
        (
            br#"{"access_token":"a","token_type":"N_A"}"#,
            MalformedReason::UnsupportedTokenType(TokenType::Other("n_a".into())),
        ),
        (
            br#"{"access_token":"a","token_type":"mac"}"#,
            MalformedReason::UnsupportedTokenType(TokenType::Other("mac".into())),
        ),
    ];
    for (body, reason) in cases {
        match run(200, &[], body) {
            Classified::Malformed(m) => assert_eq!(&m.reason, reason, "{}", String::from_utf8_lossy(body)),
            other => panic!("{}: {other:?}", String::from_utf8_lossy(body)),
        }
    }
    let huge = [br#"{"access_token":""#.as_slice(), &vec![b'a'; MAX_BODY_BYTES], br#""}"#].concat();
    assert!(matches!(
        run(200, &[], &huge),
        Classified::Malformed(Malformed { reason: MalformedReason::BodyTooLarge, .. })
    ));
    assert!(matches!(
        run(101, &[], b""),
        Classified::Malformed(Malformed { reason: MalformedReason::UnexpectedStatus(101), .. })
    ));
}

#[test]
fn a_rotated_refresh_token_is_salvaged_from_an_unusable_success() {
    for body in [
        r#"{"refresh_token":"r2"}"#,
        r#"{"access_token":"","refresh_token":"r2"}"#,
        r#"{"access_token":"a","token_type":"mac","refresh_token":"r2"}"#,
    ] {
        match run(200, &[], body.as_bytes()) {
            Classified::Malformed(m) => {
                assert_eq!(m.salvaged_refresh_token.as_ref().map(RefreshToken::expose_secret), Some("r2"), "{body}");
            }
            other => panic!("{body}: {other:?}"),
        }
    }
}

#[test]
fn duplicate_keys_take_the_last_value() {
    let tokens = success(r#"{"access_token":"first","access_token":"second"}"#);
    assert_eq!(tokens.access_token.expose_secret(), "second");
}

#[test]
fn error_text_is_bounded_and_printable() {
    let body = format!(r#"{{"error":"invalid_scope\n\u001b[31m","error_description":"{}"}}"#, "x".repeat(5000));
    match run(400, &[], body.as_bytes()) {
        Classified::Rejected(Rejected::Error(e)) => {
            assert_eq!(e.code, "invalid_scope[31m");
            assert_eq!(e.description.map(|d| d.len()), Some(MAX_ERROR_TEXT));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_configured_code_becomes_terminal() {
    let policy =
        Policy { terminal_errors: vec!["invalid_grant".into(), "unauthorized_client".into()], ..Policy::default() };
    let response = Response { status: 400, headers: &[], body: br#"{"error":"unauthorized_client"}"# };
    assert!(matches!(classify(&policy, &response, None), Classified::Terminal(_)));
    assert!(matches!(run(400, &[], br#"{"error":"unauthorized_client"}"#), Classified::Rejected(_)));
}

#[test]
fn redirects_and_empty_client_errors_are_rejected() {
    assert!(matches!(run(302, &[], b""), Classified::Rejected(Rejected::Status(302))));
    assert!(matches!(run(404, &[], b"not found"), Classified::Rejected(Rejected::Status(404))));
}

#[test]
fn an_http_date_retry_after_is_read_against_the_servers_own_date() {
    // Our clock is a day off; the server's Date and Retry-After agree on two minutes.
    let headers: &[(&str, &[u8])] =
        &[("Date", b"Sun, 06 Nov 1994 08:49:37 GMT"), ("Retry-After", b"Sun, 06 Nov 1994 08:51:37 GMT")];
    let response = Response { status: 503, headers, body: b"" };
    let our_clock_a_day_behind = UnixTime::from_secs(784_111_777 - 86_400);
    assert!(matches!(
        classify(&Policy::default(), &response, Some(our_clock_a_day_behind)),
        Classified::Transient(Transient { retry_after: Some(d), .. }) if d == Duration::from_secs(120)
    ));
}

#[test]
fn the_date_header_gives_the_servers_clock_skew() {
    let headers: &[(&str, &[u8])] = &[("date", b"Sun, 06 Nov 1994 08:49:37 GMT")];
    let response = Response { status: 200, headers, body: b"{}" };
    let server = 784_111_777;
    let skew = response.clock_skew(UnixTime::from_secs(server - 300)).unwrap();
    assert_eq!((skew.server_ahead, skew.server_behind), (Duration::from_secs(300), Duration::ZERO));
    assert!(skew.is_notable());
    let skew = response.clock_skew(UnixTime::from_secs(server + 2)).unwrap();
    assert_eq!((skew.server_ahead, skew.server_behind), (Duration::ZERO, Duration::from_secs(2)));
    assert!(!skew.is_notable());
    let garbage: &[(&str, &[u8])] = &[("Date", b"yesterday"), ("Date", &[0xff])];
    assert_eq!(Response { status: 200, headers: garbage, body: b"" }.clock_skew(UnixTime::EPOCH), None);
    assert_eq!(Response { status: 200, headers: &[], body: b"" }.clock_skew(UnixTime::EPOCH), None);
}

#[test]
fn a_dpop_nonce_challenge_is_its_own_answer_and_nonces_are_read_from_any_answer() {
    let challenge =
        br#"{"error":"use_dpop_nonce","error_description":"Authorization server requires nonce in DPoP proof"}"#;
    let headers: &[(&str, &[u8])] = &[("DPoP-Nonce", b"eyJ7S_zG.9Rw")];
    assert!(matches!(run(400, headers, challenge), Classified::NonceRequired(e) if e.code == "use_dpop_nonce"));
    // Even where the server lists it as terminal, a nonce challenge is not a dead token.
    let response = Response { status: 400, headers, body: challenge };
    assert_eq!(response.dpop_nonce().map(|n| n.as_str().to_owned()).as_deref(), Some("eyJ7S_zG.9Rw"));
    let success = Response {
        status: 200,
        headers: &[("dpop-nonce", b"n2")],
        body: br#"{"access_token":"a","token_type":"DPoP"}"#,
    };
    assert_eq!(success.dpop_nonce().map(|n| n.as_str().to_owned()).as_deref(), Some("n2"));
    assert!(
        matches!(classify(&Policy::default(), &success, None), Classified::Success(t) if t.token_type == TokenType::DPoP)
    );
    let bad = Response { status: 200, headers: &[("dpop-nonce", b"has space")], body: b"" };
    assert!(bad.dpop_nonce().is_none());
}
