//! See [`freshen_sim::fuzzing::oauth_response`]: the same function the corpus replay test runs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(broken) = freshen_sim::fuzzing::oauth_response(data) {
        panic!("oauth_response: {broken}");
    }
});
