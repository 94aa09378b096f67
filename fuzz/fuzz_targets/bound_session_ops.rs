//! See [`freshen_sim::fuzzing::bound_session_ops`]: the same function the corpus replay test runs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(broken) = freshen_sim::fuzzing::bound_session_ops(data) {
        panic!("bound_session_ops: {broken}");
    }
});
