//! What the examples that run several OS processes share: their runtime and
//! exit codes, flags, the strict loopback authority, spawning themselves as
//! children, and how many refreshes a run should have seen.

#![allow(dead_code, unreachable_pub)] // each example uses its part

use std::future::Future;
use std::process::{Child, Command, ExitCode, Output, Stdio};
use std::time::Duration;

use freshen::core::session::SessionConfig;
use freshen_sim::authority::AuthorityConfig;

pub type Error = Box<dyn std::error::Error>;

/// Refresh this long before expiry; the jitter spreads the processes' timers.
pub const MARGIN: Duration = Duration::from_millis(1000);
pub const JITTER: Duration = Duration::from_millis(300);
/// The shortest access-token lifetime the margin and jitter leave room for.
pub const SHORTEST_LIFETIME_MS: u64 = 2 * 1300;

/// Runs `future` on a multi-threaded runtime: its exit code, or 1 after
/// printing its error.
pub fn block_on(future: impl Future<Output = Result<ExitCode, Error>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("no runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(future) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The number after `flag`.
pub fn number<'a>(flag: &str, args: &mut impl Iterator<Item = &'a String>) -> Result<u64, String> {
    let text = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
    text.parse().map_err(|_| format!("{flag}: not a number: {text}"))
}

/// The number after `flag`, as a count from 1 to `most`.
pub fn count<'a>(flag: &str, args: &mut impl Iterator<Item = &'a String>, most: usize) -> Result<usize, String> {
    Ok(usize::try_from(number(flag, args)?).map_err(|e| e.to_string())?.clamp(1, most))
}

/// The flags every multi-process example takes: how long it runs, the
/// access tokens' lifetime and the authority's grace window.
#[derive(Debug)]
pub struct RunFlags {
    pub seconds: u64,
    pub lifetime: Duration,
    pub grace: Duration,
}

impl RunFlags {
    /// Defaults: no grace window, so a token presented twice ends the session.
    pub fn new(seconds: u64, lifetime: Duration) -> Self {
        Self { seconds, lifetime, grace: Duration::ZERO }
    }

    /// Reads `flag`'s value if it is one of these flags; `Ok(false)` if not.
    pub fn read<'a>(&mut self, flag: &str, args: &mut impl Iterator<Item = &'a String>) -> Result<bool, String> {
        match flag {
            "--seconds" => self.seconds = number(flag, args)?.clamp(1, 3600),
            "--lifetime-ms" => self.lifetime = Duration::from_millis(number(flag, args)?.max(SHORTEST_LIFETIME_MS)),
            "--grace" => self.grace = Duration::from_secs(number(flag, args)?),
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// Reads `args`: these flags into `run`, any other through `other`, which
/// refuses a flag it does not know.
pub fn read_flags<'a>(
    args: &'a [String],
    run: &mut RunFlags,
    mut other: impl FnMut(&str, &mut std::slice::Iter<'a, String>) -> Result<(), String>,
) -> Result<(), String> {
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        if !run.read(flag, &mut args)? {
            other(flag, &mut args)?;
        }
    }
    Ok(())
}

/// The authority under which two processes refreshing one token end its
/// session: rotation and reuse detection on, `grace` (none by default).
pub fn strict_authority(lifetime: Duration, grace: Duration) -> AuthorityConfig {
    let mut authority = AuthorityConfig::default();
    authority.access_ttl = lifetime;
    authority.grace = grace;
    authority.reuse_detection = true;
    authority.rotation = true;
    authority
}

/// The session settings of every child: shared store, the margin and jitter above.
pub fn child_session() -> SessionConfig {
    SessionConfig::default()
        .with_shared_store(true)
        .with_refresh_margin(MARGIN)
        .with_refresh_jitter(JITTER)
        .with_request_timeout(Duration::from_secs(5))
}

/// `count` copies of this program, each run with `args`, their output piped.
pub fn spawn_children(count: usize, args: &[String]) -> Result<Vec<Child>, Error> {
    let program = std::env::current_exe()?;
    let children = (0..count).map(|_| Command::new(&program).args(args).stdout(Stdio::piped()).spawn());
    Ok(children.collect::<Result<Vec<_>, _>>()?)
}

/// Waits for every child, off the runtime's threads.
pub async fn wait_all(children: Vec<Child>) -> Result<Vec<Output>, Error> {
    let outputs = tokio::task::spawn_blocking(move || {
        children.into_iter().map(Child::wait_with_output).collect::<Result<Vec<_>, _>>()
    });
    Ok(outputs.await??)
}

/// How many refreshes of one token chain a run of `elapsed` spans: each
/// token is refreshed between MARGIN and MARGIN + JITTER before it expires,
/// the first was issued just before the run (a late timer on a loaded
/// machine can cost one more).
pub fn expiries_spanned(elapsed: Duration, lifetime: Duration) -> (u64, u64) {
    let interval = lifetime.saturating_sub(MARGIN).max(Duration::from_millis(1));
    let shortest = interval.saturating_sub(JITTER).max(Duration::from_millis(1));
    let most = (elapsed.as_millis() / shortest.as_millis()) as u64 + 1;
    let least = ((elapsed.as_millis() / interval.as_millis()) as u64).saturating_sub(1);
    (least, most)
}
