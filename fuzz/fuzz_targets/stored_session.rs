//! See [`freshen_sim::fuzzing::stored_session`]: the same function the corpus replay test runs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(broken) = freshen_sim::fuzzing::stored_session(data) {
        panic!("stored_session: {broken}");
    }
});
