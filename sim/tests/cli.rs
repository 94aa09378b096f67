//! The campaign binary's manners, as a user at a shell meets them.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test may panic: that is how it fails

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};

fn sim() -> Command {
    Command::new(env!("CARGO_BIN_EXE_freshen-sim"))
}

#[test]
fn help_and_version_go_to_stdout_and_succeed() {
    for args in [&["--help"][..], &["-h"], &["serve", "--help"]] {
        let out = sim().args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {:?}", out.status);
        assert!(String::from_utf8_lossy(&out.stdout).contains("usage: freshen-sim"), "{args:?}");
    }
    let out = sim().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("freshen-sim {}", env!("CARGO_PKG_VERSION")));
    let out = sim().arg("--frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown argument --frobnicate"));
}

#[test]
fn a_failing_campaign_lists_every_failing_seed_and_a_replay_command_that_works_as_run() {
    let out = sim()
        .args(["--seeds", "3", "--tier", "1", "--plant", "grant-before-persist", "--threads", "1"])
        .env_remove("CARGO_MANIFEST_DIR")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let program = env!("CARGO_BIN_EXE_freshen-sim");
    assert!(stdout.contains(&format!("replay it with: {program} --seed 0 --plant grant-before-persist")), "{stdout}");
    assert!(stdout.contains("  tier 1 (3): 0 1 2"), "{stdout}");
    // Each is named on stderr as soon as it ends, so a run stopped before
    // its summary still tells what it found.
    let stderr = String::from_utf8_lossy(&out.stderr);
    for seed in 0..3 {
        assert!(stderr.contains(&format!("freshen-sim: tier 1 seed {seed} violated: ")), "{stderr}");
        assert!(
            stderr.contains(&format!("  replay: {program} --seed {seed} --plant grant-before-persist")),
            "{stderr}"
        );
    }
}

/// Sends SIGTERM to the process `pid`, as a service manager or `kill` does.
#[cfg(unix)]
fn terminate(pid: u32) {
    let killed = Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
    assert!(killed.success());
}

#[cfg(unix)]
#[test]
fn serve_prints_its_summary_on_sigterm() {
    let mut server = sim().args(["serve", "--port", "0"]).stdout(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.starts_with("reference authority on http://127.0.0.1:"), "{first}");
    terminate(server.id());
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    assert!(server.wait().unwrap().success());
    assert!(rest.iter().any(|line| line == "refreshes served: 0"), "{rest:?}");
}

/// A long campaign stopped by SIGTERM (a CI's timeout, a user's Ctrl-C is
/// SIGINT, handled alike) still prints its summary for the seeds it ran, and
/// says it was stopped: exit status 130, not success, as its seeds did not
/// all run.
#[cfg(unix)]
#[test]
fn a_campaign_stopped_by_sigterm_prints_its_summary() {
    let mut campaign = sim()
        .args(["--seeds", "1000000", "--tier", "1", "--threads", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(campaign.stderr.take().unwrap()).lines();
    let first = stderr.next().unwrap().unwrap();
    assert!(first.starts_with("freshen-sim: running seeds from 0, 1 at a time"), "{first}");
    terminate(campaign.id());
    let rest: Vec<String> = stderr.map(Result::unwrap).collect();
    let out = campaign.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{rest:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    // The summary, for however many seeds ran before the signal (perhaps none).
    assert!(stdout.contains("violations "), "{stdout}");
    assert!(stdout.contains("stopped by a signal after "), "{stdout}");
    assert!(rest.iter().any(|line| line.contains("interrupted")), "{rest:?}");
}
