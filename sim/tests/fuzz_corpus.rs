//! Replays every committed fuzz input (the seed corpora in `fuzz/corpus/` and
//! the minimized crashes kept in `fuzz/regressions/`) through the functions the fuzz targets
//! run, so a regression fails `cargo test` even where no fuzzer is installed.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test may panic: that is how it fails

use std::path::{Path, PathBuf};

use freshen_sim::fuzzing;

type Target = fn(&[u8]) -> Result<(), String>;

const TARGETS: [(&str, Target); 6] = [
    ("oauth_response", fuzzing::oauth_response),
    ("stored_session", fuzzing::stored_session),
    ("authority_ops", fuzzing::authority_ops),
    ("session_ops", fuzzing::session_ops),
    ("shared_session_ops", fuzzing::shared_session_ops),
    ("bound_session_ops", fuzzing::bound_session_ops),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect();
    files.sort();
    files
}

fn replay(name: &str, target: Target) {
    let corpus = inputs(&fuzz_dir().join("corpus").join(name));
    assert!(!corpus.is_empty(), "no committed corpus for {name}");
    let crashes = inputs(&fuzz_dir().join("regressions").join(name));
    let mut failures = Vec::new();
    for path in corpus.iter().chain(&crashes) {
        let data = std::fs::read(path).unwrap();
        let outcome = std::panic::catch_unwind(|| target(&data));
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(broken)) => failures.push(format!("{}: {broken}", path.display())),
            Err(_) => failures.push(format!("{}: panicked", path.display())),
        }
    }
    assert!(
        failures.is_empty(),
        "{name}: {} of {} inputs fail:\n{}",
        failures.len(),
        corpus.len(),
        failures.join("\n")
    );
}

#[test]
fn oauth_response_corpus() {
    replay(TARGETS[0].0, TARGETS[0].1);
}

#[test]
fn stored_session_corpus() {
    replay(TARGETS[1].0, TARGETS[1].1);
}

#[test]
fn authority_ops_corpus() {
    replay(TARGETS[2].0, TARGETS[2].1);
}

#[test]
fn session_ops_corpus() {
    replay(TARGETS[3].0, TARGETS[3].1);
}

#[test]
fn shared_session_ops_corpus() {
    replay(TARGETS[4].0, TARGETS[4].1);
}

#[test]
fn bound_session_ops_corpus() {
    replay(TARGETS[5].0, TARGETS[5].1);
}

/// Explains a `session_ops` or `shared_session_ops` input (the path names
/// the target): `FRESHEN_FUZZ_INPUT=path cargo test -p freshen-sim --test
/// fuzz_corpus explain -- --ignored --nocapture` prints the
/// world's trace (no token bytes) and the verdict.
#[test]
#[ignore = "a debugging aid, run by hand on one input"]
fn explain() {
    let path = std::env::var("FRESHEN_FUZZ_INPUT").expect("set FRESHEN_FUZZ_INPUT to a session_ops input");
    let data = std::fs::read(&path).unwrap();
    let (world, verdict) = if path.contains("bound_session_ops") {
        fuzzing::bound_session_ops_traced(&data, true)
    } else if path.contains("shared_session_ops") {
        fuzzing::shared_session_ops_traced(&data, true)
    } else {
        fuzzing::session_ops_traced(&data, true)
    };
    for line in world.trace() {
        println!("{line}");
    }
    println!("{verdict:?}");
}
