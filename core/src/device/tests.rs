use proptest::prelude::*;
use serde_json::Value;

use super::*;
use crate::oauth::{Policy, classify};

fn authorization(expires_in: u64, interval: u64) -> DeviceAuthorization {
    DeviceAuthorization {
        device_code: DeviceCode::new("d1"),
        user_code: "WDJB-MJHT".to_owned(),
        verification_uri: "https://example.com/device".to_owned(),
        verification_uri_complete: None,
        expires_in: Duration::from_secs(expires_in),
        interval: Duration::from_secs(interval),
    }
}

fn response(status: u16, headers: &[(&str, &[u8])], body: &str) -> PollAnswer {
    PollAnswer::Answered(classify(&Policy::default(), &Response { status, headers, body: body.as_bytes() }, None))
}

fn error(code: &str) -> PollAnswer {
    response(400, &[], &format!(r#"{{"error":"{code}"}}"#))
}

fn approved() -> PollAnswer {
    response(200, &[], r#"{"access_token":"a1","token_type":"Bearer","expires_in":300,"refresh_token":"r1"}"#)
}

#[test]
fn parses_what_rfc_8628_shows_and_defaults_the_interval() {
    let body = br#"{"device_code":"GmRhmhcxhwAzkoEqiMEg_DnyEysNkuNhszIySk9eS","user_code":"WDJB-MJHT",
        "verification_uri":"https://example.com/device","verification_uri_complete":"https://example.com/device?user_code=WDJB-MJHT",
        "expires_in":"1800"}"#;
    let parsed = parse_authorization(&Response { status: 200, headers: &[], body }).unwrap();
    assert_eq!(parsed.user_code, "WDJB-MJHT");
    assert_eq!(parsed.expires_in, Duration::from_secs(1800));
    assert_eq!(parsed.interval, DEFAULT_INTERVAL);
    assert_eq!(parsed.verification_uri_complete.as_deref(), Some("https://example.com/device?user_code=WDJB-MJHT"));
    assert!(!format!("{parsed:?}").contains("GmRhmhcx"), "the device code is a secret");
}

#[test]
fn a_start_that_cannot_work_is_a_typed_error() {
    let parse = |status, body: &str| parse_authorization(&Response { status, headers: &[], body: body.as_bytes() });
    assert!(
        matches!(parse(401, r#"{"error":"invalid_client"}"#), Err(StartError::Refused(e)) if e.code == "invalid_client")
    );
    assert_eq!(parse(404, "<html>").unwrap_err(), StartError::Status(404));
    assert_eq!(parse(200, "[]").unwrap_err(), StartError::Malformed("JSON object"));
    let without = |field: &str| {
        let mut object: serde_json::Map<String, Value> = serde_json::from_str(
            r#"{"device_code":"d","user_code":"U","verification_uri":"https://e.com/d","expires_in":60}"#,
        )
        .unwrap();
        object.remove(field);
        parse(200, &Value::Object(object).to_string())
    };
    for field in ["device_code", "user_code", "verification_uri", "expires_in"] {
        assert_eq!(without(field).unwrap_err(), StartError::Malformed(field), "{field}");
    }
    let bad = [
        (
            r#"{"device_code":"d","user_code":"U\u001b[2J","verification_uri":"https://e.com/d","expires_in":60}"#,
            "user_code",
        ),
        (
            r#"{"device_code":"d","user_code":"U","verification_uri":"javascript:alert(1)","expires_in":60}"#,
            "verification_uri",
        ),
        (r#"{"device_code":"d","user_code":"U","verification_uri":"https://e.com/d","expires_in":0}"#, "expires_in"),
        (
            r#"{"device_code":"d","user_code":"U","verification_uri":"https://e.com/d","expires_in":60,"interval":-5}"#,
            "interval",
        ),
    ];
    for (body, field) in bad {
        assert_eq!(parse(200, body).unwrap_err(), StartError::Malformed(field), "{body}");
    }
    let huge = format!(
        r#"{{"device_code":"{}","user_code":"U","verification_uri":"https://e.com/d","expires_in":60}}"#,
        "d".repeat(5000)
    );
    assert_eq!(parse(200, &huge).unwrap_err(), StartError::Malformed("device_code"));
}

#[test]
fn the_token_request_names_the_grant_and_the_code() {
    let request = token_request(&Client::public("cli"), &DeviceCode::new("d1"));
    assert_eq!(
        request.expose_body(),
        "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Adevice_code&device_code=d1&client_id=cli"
    );
}

#[test]
fn pending_polls_at_the_interval_slow_down_adds_five_seconds_for_good() {
    let mut poller = DevicePoller::new(&authorization(900, 5), MonoTime::ZERO);
    assert_eq!(poller.next(MonoTime::from_secs(1)), NextPoll::At(MonoTime::from_secs(5)));
    assert_eq!(poller.next(MonoTime::from_secs(5)), NextPoll::Now);
    assert_eq!(poller.next(MonoTime::from_secs(5)), NextPoll::AwaitingAnswer);
    assert!(poller.answered(MonoTime::from_secs(6), error("slow_down")).unwrap().is_none());
    assert_eq!(poller.next(MonoTime::from_secs(6)), NextPoll::At(MonoTime::from_secs(16)));
    assert_eq!(poller.next(MonoTime::from_secs(16)), NextPoll::Now);
    assert!(poller.answered(MonoTime::from_secs(16), error("authorization_pending")).unwrap().is_none());
    assert_eq!(poller.next(MonoTime::from_secs(16)), NextPoll::At(MonoTime::from_secs(26)), "slow_down lasts");
    assert_eq!(poller.next(MonoTime::from_secs(26)), NextPoll::Now);
    let tokens = poller.answered(MonoTime::from_secs(27), approved()).unwrap().expect("approved");
    assert_eq!(tokens.access_token.expose_secret(), "a1");
    assert_eq!(poller.next(MonoTime::from_secs(40)), NextPoll::Ended);
}

#[test]
fn every_way_a_login_ends_is_typed() {
    let ends = |answer| {
        let mut poller = DevicePoller::new(&authorization(900, 5), MonoTime::ZERO);
        assert_eq!(poller.next(MonoTime::from_secs(5)), NextPoll::Now);
        let outcome = poller.answered(MonoTime::from_secs(5), answer);
        assert_eq!(poller.next(MonoTime::from_secs(60)), NextPoll::Ended);
        outcome.unwrap_err()
    };
    assert_eq!(ends(error("access_denied")), DeviceError::Denied);
    assert_eq!(ends(error("expired_token")), DeviceError::Expired);
    assert!(
        matches!(ends(error("invalid_grant")), DeviceError::Refused(Rejected::Error(e)) if e.code == "invalid_grant")
    );
    assert!(matches!(ends(error("invalid_client")), DeviceError::Refused(_)));
    assert_eq!(ends(response(404, &[], "")), DeviceError::Refused(Rejected::Status(404)));
    assert!(matches!(ends(response(200, &[], "{}")), DeviceError::Malformed(_)));
}

#[test]
fn failures_back_off_and_honour_retry_after_and_expiry_ends_the_poll() {
    let mut poller = DevicePoller::new(&authorization(60, 5), MonoTime::ZERO);
    assert_eq!(poller.next(MonoTime::from_secs(5)), NextPoll::Now);
    poller.answered(MonoTime::from_secs(5), PollAnswer::Failed(TransportFailure::Timeout)).unwrap();
    assert_eq!(poller.next(MonoTime::from_secs(5)), NextPoll::At(MonoTime::from_secs(15)), "doubled");
    assert_eq!(poller.next(MonoTime::from_secs(15)), NextPoll::Now);
    poller.answered(MonoTime::from_secs(15), response(503, &[("retry-after", b"30")], "")).unwrap();
    assert_eq!(poller.next(MonoTime::from_secs(15)), NextPoll::At(MonoTime::from_secs(45)), "Retry-After");
    assert_eq!(poller.next(MonoTime::from_secs(45)), NextPoll::Now);
    poller.answered(MonoTime::from_secs(46), error("authorization_pending")).unwrap();
    // The next poll would be at 66 s, past the expiry at 60 s.
    assert_eq!(poller.next(MonoTime::from_secs(46)), NextPoll::Expired);
    assert_eq!(poller.next(MonoTime::from_secs(47)), NextPoll::Ended);
}

#[derive(Clone, Debug)]
enum Answer {
    Pending,
    SlowDown,
    Unavailable(Option<u8>),
    Lost,
    Denied,
    Approved,
    /// `use_dpop_nonce`: the server did not look at the poll.
    NonceChallenge,
}

fn answer() -> impl Strategy<Value = Answer> {
    prop_oneof![
        6 => Just(Answer::Pending),
        2 => Just(Answer::SlowDown),
        1 => proptest::option::of(0u8..90).prop_map(Answer::Unavailable),
        1 => Just(Answer::Lost),
        1 => Just(Answer::Denied),
        1 => Just(Answer::Approved),
        1 => Just(Answer::NonceChallenge),
    ]
}

proptest! {
    /// Whatever the server answers, however late the answers come and however
    /// early or late the driver asks: no poll sooner than the interval the
    /// server set (and any `Retry-After`) after the last answer, none at or
    /// after expiry, and every login ends, with a bounded number of polls. A
    /// nonce challenge is answered at once, at most `MAX_NONCE_RETRIES` times
    /// in a row; the next one ends the login.
    #[test]
    fn the_poller_never_polls_early_or_after_expiry_and_always_ends(
        expires_in in 1u64..1200,
        interval in 0u64..20,
        steps in prop::collection::vec((answer(), 0u64..30_000, 0u64..20_000), 1..400),
    ) {
        let start = MonoTime::from_secs(3);
        let mut poller = DevicePoller::new(&authorization(expires_in, interval), start);
        let expires_at = start.saturating_add(Duration::from_secs(expires_in));
        let mut server_interval = Duration::from_secs(interval.max(1));
        let mut earliest = start.saturating_add(server_interval);
        let mut now = start;
        let mut polls = 0u64;
        let mut challenges_in_a_row = 0;
        let mut ended = false;
        for (answer, latency_ms, early_ms) in steps {
            // The driver may wake early: it is told to wait, never to send.
            let early = now.saturating_add(Duration::from_millis(early_ms)).min(earliest.saturating_sub(Duration::from_millis(1)));
            if early >= now && early < earliest {
                prop_assert!(!matches!(poller.next(early), NextPoll::Now), "a poll at {early}, before {earliest}");
                now = early;
            }
            match poller.next(now) {
                NextPoll::At(at) => {
                    prop_assert!(at > now);
                    now = at;
                    continue;
                }
                NextPoll::Now => {}
                NextPoll::Expired | NextPoll::Ended => { ended = true; break; }
                NextPoll::AwaitingAnswer => prop_assert!(false, "no answer is outstanding"),
            }
            prop_assert!(now >= earliest, "polled at {now}, allowed from {earliest}");
            prop_assert!(now < expires_at, "polled at {now}, expired at {expires_at}");
            // A poll sent again with the server's nonce is the same poll.
            if challenges_in_a_row == 0 {
                polls += 1;
            }
            now = now.saturating_add(Duration::from_millis(latency_ms));
            let mut retry_after = Duration::ZERO;
            let reply = match answer {
                Answer::Pending => error("authorization_pending"),
                Answer::SlowDown => { server_interval += SLOW_DOWN_STEP; error("slow_down") }
                Answer::Unavailable(after) => {
                    retry_after = Duration::from_secs(after.map_or(0, u64::from));
                    match after {
                        Some(after) => response(503, &[("retry-after", after.to_string().as_bytes())], ""),
                        None => response(502, &[], ""),
                    }
                }
                Answer::Lost => PollAnswer::Failed(TransportFailure::Timeout),
                Answer::Denied => error("access_denied"),
                Answer::Approved => approved(),
                Answer::NonceChallenge => error("use_dpop_nonce"),
            };
            let challenged = matches!(answer, Answer::NonceChallenge);
            challenges_in_a_row = if challenged { challenges_in_a_row + 1 } else { 0 };
            if challenged && challenges_in_a_row > crate::dpop::MAX_NONCE_RETRIES {
                prop_assert!(matches!(poller.answered(now, reply), Err(DeviceError::Refused(_))));
                ended = true;
                break;
            }
            if challenged {
                // Sent again at once: the interval is not waited for.
                prop_assert!(matches!(poller.answered(now, reply), Ok(None)));
                earliest = earliest.min(now);
                continue;
            }
            match poller.answered(now, reply) {
                Ok(None) => earliest = now.saturating_add(server_interval.max(retry_after)),
                Ok(Some(_)) => { prop_assert!(matches!(answer, Answer::Approved)); ended = true; break; }
                Err(DeviceError::Denied) => { prop_assert!(matches!(answer, Answer::Denied)); ended = true; break; }
                Err(other) => prop_assert!(false, "unexpected {other:?}"),
            }
        }
        prop_assert!(polls <= expires_in, "{polls} polls in {expires_in} s");
        if !ended {
            // Left alone, the poller reaches an end by expiry, after a bounded number of steps.
            let mut left = 10_000;
            loop {
                match poller.next(now) {
                    NextPoll::At(at) => now = at,
                    NextPoll::Now => { poller.answered(now, error("authorization_pending")).unwrap(); }
                    NextPoll::AwaitingAnswer => { poller.answered(now, error("authorization_pending")).unwrap(); }
                    NextPoll::Expired | NextPoll::Ended => break,
                }
                left -= 1;
                prop_assert!(left > 0, "the poller never ended");
            }
            // A poll sent just before expiry may be answered as late as the
            // longest latency drawn (30 s); nothing is sent after expiry.
            prop_assert!(now <= expires_at.saturating_add(Duration::from_secs(30)));
        }
    }
}
