//! Arbitrary status, `Retry-After` and body into the response classifier:
//! it must never panic, and what it accepts must be within its stated bounds.
#![no_main]

use freshen_core::oauth::{Classified, MAX_RETRY_AFTER, MAX_TOKEN_BYTES, Policy, Response, classify};
use freshen_core::time::UnixTime;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [s0, s1, split, rest @ ..] = data else { return };
    let status = u16::from_le_bytes([*s0, *s1]) % 1000;
    let (retry_after, body) = rest.split_at(usize::from(*split).min(rest.len()).min(40));
    let headers: &[(&str, &[u8])] = &[("retry-after", retry_after)];
    let response = Response { status, headers, body };
    match classify(&Policy::default(), &response, Some(UnixTime::from_secs(1_800_000_000))) {
        Classified::Success(tokens) => {
            let access = tokens.access_token.expose_secret();
            assert!(!access.is_empty() && access.len() <= MAX_TOKEN_BYTES);
            assert!(tokens.lifetime.is_none_or(|l| l <= Policy::default().max_lifetime && l.as_secs() >= 1));
        }
        Classified::Transient(transient) => assert!(transient.retry_after.is_none_or(|r| r <= MAX_RETRY_AFTER)),
        _ => {}
    }
});
