//! Several OS processes sharing one session file, against the reference
//! authority on a loopback port with no grace window and reuse detection on:
//! the setting in which two processes refreshing the same token end the
//! session for both. Each process runs a real freshen session (reqwest
//! transport, [`FileStore`] with `shared_store`) and calls a protected resource
//! every 20 ms for the whole run, across many access-token lifetimes.
//!
//! ```text
//! cargo run --release -p freshen-sim --example processes -- [--processes N] [--seconds S]
//!     [--lifetime-ms MS] [--grace S] [--kill-holder]
//! ```
//!
//! Passes (exit 0) when no process was logged out, the authority refused no
//! refresh (so no token was ever presented twice) and the refreshes it served
//! match the access-token expiries the run spanned.
//!
//! `--kill-holder` measures the worst moment to die: the token endpoint holds
//! its answers 800 ms after committing, and the process holding the store's
//! lock mid-refresh is killed with SIGKILL (found through `/proc/locks`). The
//! kernel releases its lock; what the others then do is reported. Without
//! grace the session cannot survive (the rotated token died with the process);
//! with a grace window (`--grace 30`) it must.
#![allow(clippy::print_stdout, clippy::print_stderr)] // an example reports on its terminal

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, ExitCode};
use std::time::{Duration, Instant};

use freshen::core::oauth::Client;
use freshen::core::session::SessionConfig;
use freshen::middleware::AuthMiddleware;
use freshen::store::FileStore;
use freshen::transport::ReqwestTransport;
use freshen::{Config, Session};
use freshen_sim::http::{Server, paths};

use common::{Error, RunFlags, count};

const CLIENT: &str = "processes-example";

#[derive(Debug)]
struct Options {
    run: RunFlags,
    processes: usize,
    kill_holder: bool,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut run = RunFlags::new(15, Duration::from_secs(3));
    let (mut processes, mut kill_holder) = (4, false);
    common::read_flags(args, &mut run, |flag, args| {
        match flag {
            "--processes" => processes = count(flag, args, 64)?,
            "--kill-holder" => kill_holder = true,
            other => return Err(format!("unknown argument {other}")),
        }
        Ok(())
    })?;
    Ok(Options { run, processes, kill_holder })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("child") {
        return common::block_on(child(args.get(1..).unwrap_or_default()));
    }
    match parse(&args) {
        Ok(options) => common::block_on(parent(options)),
        Err(error) => {
            eprintln!("{error}");
            ExitCode::from(2)
        }
    }
}

/// One process: calls the resource every 20 ms until the deadline, then
/// prints what it saw. Exits 3 if its session ended.
async fn child(args: &[String]) -> Result<ExitCode, Error> {
    let [token_url, resource_url, path, seconds] = args else { return Err("child: bad arguments".into()) };
    let config = Config::new(token_url.clone(), Client::public(CLIENT)).with_session(common::child_session());
    let session = Session::start(config, ReqwestTransport::new()?, FileStore::new(path))?;
    let api = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(AuthMiddleware::new(session.clone()))
        .build();
    let deadline = Instant::now() + Duration::from_secs(seconds.parse()?);
    let (mut ok, mut refused, mut failed) = (0u64, 0u64, 0u64);
    while Instant::now() < deadline {
        match api.get(resource_url).send().await {
            Ok(response) if response.status().is_success() => ok += 1,
            Ok(_) => refused += 1,
            Err(_) => failed += 1,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A refresh still out would die with the process, its rotated token with it.
    session.shutdown().await;
    let state = session.state();
    println!("pid {} ok {ok} refused {refused} failed {failed} state {state}", std::process::id());
    Ok(if state.needs_login() { ExitCode::from(3) } else { ExitCode::SUCCESS })
}

/// Logs in through the authority's password grant and writes the session to
/// the file, as a CLI's `login` command would.
async fn log_in(server: &Server, path: &Path) -> Result<(), Error> {
    let config = Config::new(server.url(paths::TOKEN), Client::public(CLIENT))
        .with_session(SessionConfig::default().with_shared_store(true));
    let store = FileStore::new(path);
    let session = Session::start(config, ReqwestTransport::new()?, store.clone())?;
    let (tokens, sent_at) = server.password_login(CLIENT).await?;
    // Resolves once the login is in the file: the other processes find it there.
    session.log_in_sent_at(tokens, sent_at).await?;
    Ok(())
}

/// The process holding an exclusive flock on `lock_file`, from `/proc/locks`.
fn lock_holder(lock_file: &Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let inode = std::fs::metadata(lock_file).ok()?.ino();
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (kind, mode, pid, file) = (fields.get(1)?, fields.get(3)?, fields.get(4)?, fields.get(5)?);
        (*kind == "FLOCK" && *mode == "WRITE" && file.rsplit(':').next()? == inode.to_string())
            .then(|| pid.parse().ok())
            .flatten()
    })
}

/// What the kill of the lock holder showed.
#[derive(Debug)]
struct Kill {
    pid: u32,
    at: Duration,
    /// Refreshes the authority had served when the holder died (its own
    /// included: the answer was committed and held back).
    refreshes_before: u64,
    /// How long until another process's refresh reached the authority.
    next_refresh_after: Option<Duration>,
}

/// Waits for a process to hold the lock through a refresh (held for 100 ms:
/// a read or a write takes a few), then kills it.
async fn kill_holder(server: &Server, lock_file: &Path, children: &mut [Child], start: Instant) -> Option<Kill> {
    let mut since: Option<(u32, Instant)> = None;
    for _ in 0..20_000 {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let holder = lock_holder(lock_file);
        since = match (holder, since) {
            (Some(pid), Some((held, from))) if pid == held => Some((held, from)),
            (Some(pid), _) => Some((pid, Instant::now())),
            (None, _) => None,
        };
        let Some((pid, from)) = since else { continue };
        if from.elapsed() < Duration::from_millis(100) {
            continue;
        }
        let child = children.iter_mut().find(|c| c.id() == pid)?;
        let refreshes_before = server.state().stats().refreshes;
        let _ = child.kill(); // SIGKILL
        let at = start.elapsed();
        let killed_at = Instant::now();
        let mut next_refresh_after = None;
        for _ in 0..2_000 {
            let stats = server.state().stats();
            if stats.refreshes + stats.refusals > refreshes_before {
                next_refresh_after = Some(killed_at.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        return Some(Kill { pid, at, refreshes_before, next_refresh_after });
    }
    None
}

async fn parent(options: Options) -> Result<ExitCode, Error> {
    let server = Server::loopback(common::strict_authority(options.run.lifetime, options.run.grace), 1).await?;
    if options.kill_holder {
        server.state().set_token_answer_delay(Duration::from_millis(800));
    }
    let dir = std::env::temp_dir().join(format!("freshen-processes-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path: PathBuf = dir.join("session.json");
    log_in(&server, &path).await?;
    println!("{options:?}; authority on {}; session file {}", server.url(""), path.display());

    let start = Instant::now();
    let child_args = [
        "child".into(),
        server.url(paths::TOKEN),
        server.url(paths::RESOURCE),
        path.display().to_string(),
        options.run.seconds.to_string(),
    ];
    let mut children = common::spawn_children(options.processes, &child_args)?;
    let kill = if options.kill_holder {
        let lock_file = PathBuf::from(format!("{}.lock", path.display()));
        kill_holder(&server, &lock_file, &mut children, start).await
    } else {
        None
    };
    // The children run for `seconds`; the server keeps answering meanwhile.
    let outputs = common::wait_all(children).await?;
    let elapsed = start.elapsed();
    let _ = std::fs::remove_dir_all(&dir);

    let mut logged_out = 0;
    let mut survivors = 0;
    for output in &outputs {
        let line = String::from_utf8_lossy(&output.stdout);
        match output.status.code() {
            Some(0) => survivors += 1,
            Some(3) => logged_out += 1,
            _ => {}
        }
        print!("  {}", if line.is_empty() { "(killed)\n".into() } else { line });
    }
    let stats = server.state().stats();
    let (least, most) = common::expiries_spanned(elapsed, options.run.lifetime);
    println!(
        "{} processes for {:.1} s: refreshes {} (expiries the run spans: {least}..={most}), refused {}, \
         reuse detections {}, logged out {logged_out}, survivors {survivors}",
        options.processes,
        elapsed.as_secs_f64(),
        stats.refreshes,
        stats.refusals,
        stats.reuse_detections,
    );
    if let Some(kill) = &kill {
        println!(
            "killed pid {} with SIGKILL at {:.2} s while it held the lock mid-refresh ({} refreshes served by then); \
             the next refresh reached the authority {} after the kill",
            kill.pid,
            kill.at.as_secs_f64(),
            kill.refreshes_before,
            kill.next_refresh_after.map_or("never".into(), |d| format!("{} ms", d.as_millis())),
        );
        let survived = logged_out == 0 && survivors == options.processes - 1;
        println!("the session {}", if survived { "survived" } else { "ended" });
        if options.run.grace.is_zero() || survived {
            return Ok(ExitCode::SUCCESS);
        }
        eprintln!("with a grace window the session must survive its lock holder's death");
        return Ok(ExitCode::FAILURE);
    }
    if options.kill_holder {
        eprintln!("no process was ever seen holding the lock through a refresh");
        return Ok(ExitCode::FAILURE);
    }
    let passed = logged_out == 0
        && survivors == options.processes
        && stats.refusals == 0
        && stats.reuse_detections == 0
        && (least..=most).contains(&stats.refreshes);
    Ok(if passed { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
