//! Checks an app's own [`Store`] the way a session relies on it.
//!
//! A session trusts its store with the one refresh token that keeps the user
//! logged in: under rotation, a write that is lost, torn or read back stale
//! ends the session at the next refresh, and a shared store whose lock does
//! not exclude lets two processes spend one token (the server's reuse
//! detection then logs the user out). [`check_store`] runs two phases against
//! the store that `open` opens (each call a new handle on the same place, as
//! a new process would open it):
//!
//! 1. **The contract** ([`check_contract`]): an empty store loads nothing; a
//!    save is read back whole by another handle; a later save replaces an
//!    earlier one; a clear is seen by another handle; saves racing from two
//!    handles leave one of them whole; and for a shared store, a held lock
//!    keeps another handle waiting until it is dropped.
//! 2. **Sessions under faults** ([`check_under_faults`]): real sessions (one
//!    per simulated process, each over its own handle, with `shared_store` when
//!    asked) force refreshes round after round against the reference authority
//!    with rotation, reuse detection on and no grace, while a seeded fault
//!    layer fails store operations (a failed write lands or not, at random).
//!    No session may be logged out, and afterwards a new handle must load the
//!    newest tokens, whose refresh token the authority still accepts.
//!
//! ```no_run
//! # async fn run() -> Result<(), freshen_sim::store_check::RuleBroken> {
//! use freshen::store::FileStore;
//! use freshen_sim::store_check::{StoreCheck, check_store};
//!
//! let path = std::env::temp_dir().join("my-app-session.json");
//! let report = check_store(|| FileStore::new(&path), &StoreCheck::shared()).await?;
//! println!("{report}");
//! # Ok(()) }
//! ```
//!
//! The check runs on real time: the store is the app's, with its own I/O.
//! The fault dice are seeded, but which operation meets which roll depends
//! on timing, so the counts in a [`StoreReport`] vary between runs.

use core::fmt;
use core::time::Duration;
use std::sync::Arc;

use freshen::store::Store;
use freshen::{Config, Environment, Session};
use freshen_core::ids::Generation;
use freshen_core::oauth::Client;
use freshen_core::session::{Backoff, SessionConfig};
use freshen_core::stored::StoredSession;
use secrecy::ExposeSecret;

use crate::authority::AuthorityConfig;
use crate::faulty_store::{FaultyStore, StoreFaults};
use crate::http::{InProcess, State};

/// How hard to check.
#[derive(Clone, Debug)]
pub struct StoreCheck {
    /// Sessions over the store at once, each on its own handle (a process each).
    pub processes: usize,
    /// Whether the store is shared: the lock rule is checked, and the
    /// sessions run with `shared_store` (required for more than one process).
    pub shared: bool,
    /// Forced refreshes per session in the fault phase.
    pub rounds: u32,
    /// Store operations failed, per thousand, in the fault phase.
    pub faults_per_mille: u16,
    /// Seeds the faults and the authority's tokens.
    pub seed: u64,
    /// How long a handle may take to get a free lock, and how long a held
    /// lock is watched to keep another handle out.
    pub lock_wait: Duration,
}

impl StoreCheck {
    /// One session on a store of its own: 40 rounds, 10 % of store operations failing.
    pub fn single() -> Self {
        Self {
            processes: 1,
            shared: false,
            rounds: 40,
            faults_per_mille: 100,
            seed: 7,
            lock_wait: Duration::from_secs(2),
        }
    }

    /// Three processes sharing the store under its lock: 20 rounds each, 10 % failing.
    pub fn shared() -> Self {
        Self { processes: 3, shared: true, rounds: 20, ..Self::single() }
    }
}

/// A rule the store (or, in [`transport_check`](crate::transport_check), the
/// transport) broke, with what was seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleBroken {
    /// The rule, as the module docs list it.
    pub rule: &'static str,
    /// What happened instead.
    pub seen: String,
}

impl fmt::Display for RuleBroken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "broke \"{}\": {}", self.rule, self.seen)
    }
}

impl std::error::Error for RuleBroken {}

pub(crate) fn broke(rule: &'static str, seen: impl Into<String>) -> RuleBroken {
    RuleBroken { rule, seen: seen.into() }
}

/// What a passing check did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreReport {
    /// Contract rules checked.
    pub rules: usize,
    /// Refreshes the authority served in the fault phase.
    pub refreshes: u64,
    /// Store operations the fault layer failed.
    pub faults: u64,
    /// The generation the store held at the end.
    pub final_generation: Generation,
}

impl fmt::Display for StoreReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} contract rules held; {} refreshes under {} injected store faults, no session lost; the store ends at generation {}",
            self.rules, self.refreshes, self.faults, self.final_generation
        )
    }
}

/// Runs both phases: [`check_contract`], then [`check_under_faults`].
///
/// # Errors
/// The first rule the store broke.
pub async fn check_store<S: Store>(open: impl Fn() -> S, check: &StoreCheck) -> Result<StoreReport, RuleBroken> {
    let rules = check_contract(&open, check).await?;
    let report = check_under_faults(&open, check).await?;
    Ok(StoreReport { rules, ..report })
}

const CLIENT: &str = "store-check";
const TOKEN_URL: &str = "https://authority.store-check.invalid/token";

/// The strictest authority: rotation, reuse detection, no grace. A refresh
/// token spent twice, or lost and replaced by an older one, ends the family.
fn authority(check: &StoreCheck) -> Arc<State> {
    let config =
        AuthorityConfig { grace: Duration::ZERO, reuse_detection: true, rotation: true, ..AuthorityConfig::default() };
    State::new(config, check.seed)
}

fn login(state: &State) -> StoredSession {
    let issued = state.login(CLIENT);
    StoredSession::pair(issued.access_token, issued.refresh_token)
}

fn same(a: &StoredSession, b: &StoredSession) -> bool {
    a.encode().expose_secret() == b.encode().expose_secret()
}

async fn load(store: &impl Store, rule: &'static str) -> Result<Option<StoredSession>, RuleBroken> {
    store.load().await.map_err(|error| broke(rule, format!("load failed: {error}")))
}

async fn save(store: &impl Store, session: &StoredSession, rule: &'static str) -> Result<(), RuleBroken> {
    store.save(session).await.map_err(|error| broke(rule, format!("save failed: {error}")))
}

/// Phase 1: the contract, with no faults injected. Returns how many rules held.
///
/// # Errors
/// The first rule the store broke.
pub async fn check_contract<S: Store>(open: impl Fn() -> S, check: &StoreCheck) -> Result<usize, RuleBroken> {
    let state = authority(check);
    let (writer, reader) = (open(), open());
    let mut rules = 0;

    let rule = "an empty store loads nothing";
    writer.clear().await.map_err(|error| broke(rule, format!("clear failed: {error}")))?;
    writer.clear().await.map_err(|error| broke(rule, format!("a second clear failed: {error}")))?;
    if load(&reader, rule).await?.is_some() {
        return Err(broke(rule, "a cleared store loaded a session"));
    }
    rules += 1;

    let rule = "a save is read back whole by another handle";
    let first = login(&state);
    save(&writer, &first, rule).await?;
    match load(&reader, rule).await? {
        Some(read) if same(&read, &first) => rules += 1,
        Some(_) => return Err(broke(rule, "another session was read back")),
        None => return Err(broke(rule, "nothing was read back")),
    }

    let rule = "a later save replaces an earlier one";
    let mut second = login(&state);
    second.generation = Generation(first.generation.0 + 1);
    save(&writer, &second, rule).await?;
    match load(&reader, rule).await? {
        Some(read) if same(&read, &second) => rules += 1,
        Some(read) => return Err(broke(rule, format!("read generation {} back", read.generation))),
        None => return Err(broke(rule, "nothing was read back")),
    }

    let rule = "a clear is seen by another handle";
    writer.clear().await.map_err(|error| broke(rule, format!("clear failed: {error}")))?;
    if load(&reader, rule).await?.is_some() {
        return Err(broke(rule, "the cleared session was still read back"));
    }
    rules += 1;

    let rule = "saves racing from two handles leave one of them whole";
    let candidates: Vec<StoredSession> = (0..16).map(|_| login(&state)).collect();
    let (a, b) = tokio::join!(
        save_each(&writer, candidates.iter().step_by(2), rule),
        save_each(&reader, candidates.iter().skip(1).step_by(2), rule)
    );
    a.and(b)?;
    match load(&open(), rule).await? {
        Some(read) if candidates.iter().any(|c| same(c, &read)) => rules += 1,
        Some(_) => return Err(broke(rule, "the store holds a session neither handle wrote")),
        None => return Err(broke(rule, "nothing was read back")),
    }

    if check.shared {
        rules += check_lock(&writer, &reader, check.lock_wait).await?;
    }
    writer.clear().await.map_err(|error| broke("an empty store loads nothing", format!("clear failed: {error}")))?;
    Ok(rules)
}

async fn save_each<'a>(
    store: &impl Store,
    sessions: impl Iterator<Item = &'a StoredSession>,
    rule: &'static str,
) -> Result<(), RuleBroken> {
    for session in sessions {
        save(store, session, rule).await?;
    }
    Ok(())
}

/// A held lock keeps another handle waiting, and is free again once dropped.
async fn check_lock(a: &impl Store, b: &impl Store, wait: Duration) -> Result<usize, RuleBroken> {
    let rule = "a held lock keeps another handle waiting until it is dropped";
    let held = match tokio::time::timeout(wait, a.lock()).await {
        Ok(Ok(lock)) => lock,
        Ok(Err(error)) => return Err(broke(rule, format!("a free lock failed: {error}"))),
        Err(_) => return Err(broke(rule, format!("a free lock took longer than {wait:?}"))),
    };
    if let Ok(second) = tokio::time::timeout(wait, b.lock()).await {
        return Err(broke(rule, format!("another handle got the lock while it was held ({:?})", second.map(|_| ()))));
    }
    drop(held);
    match tokio::time::timeout(wait, b.lock()).await {
        Ok(Ok(_)) => Ok(1),
        Ok(Err(error)) => Err(broke(rule, format!("the lock failed once released: {error}"))),
        Err(_) => Err(broke(rule, format!("the released lock was not free within {wait:?}"))),
    }
}

/// Phase 2: sessions over the store, with store operations failing.
///
/// # Errors
/// A session logged out, or the store not holding the newest tokens at the end.
pub async fn check_under_faults<S: Store>(open: impl Fn() -> S, check: &StoreCheck) -> Result<StoreReport, RuleBroken> {
    let state = authority(check);
    // Each answer takes a moment, as over a network: processes whose lock
    // does not exclude then read the same refresh token every round, not
    // only when the OS happens to run them side by side.
    state.set_token_answer_delay(Duration::from_millis(2));
    let faults = Arc::new(
        StoreFaults::seeded(check.seed ^ 0x5707_e5c4)
            .with_write_failures(check.faults_per_mille)
            .with_read_failures(check.faults_per_mille),
    );
    let session_config = SessionConfig::default()
        .with_refresh_jitter(Duration::ZERO)
        .with_shared_store(check.shared)
        .with_store_backoff(Backoff::new(Duration::from_millis(5), Duration::from_millis(40), 6));
    let config = Config::new(TOKEN_URL, Client::public(CLIENT)).with_session(session_config);
    let transport = InProcess::new(Arc::clone(&state));
    let rule = "no session is logged out while its store fails now and then";
    let start = |process: usize| {
        let store = FaultyStore::new(open(), Arc::clone(&faults));
        let environment = Environment::seeded(check.seed.wrapping_add(process as u64));
        Session::start_in(config.clone(), transport.clone(), store, environment)
            .map_err(|error| broke(rule, format!("a session did not start: {error}")))
    };
    // The first process logs in with the fault layer quiet (a login is the
    // app's to retry, and not what is checked here); the others start on
    // what it stored.
    faults.quiet(true);
    let first = start(0)?;
    first.log_in_with(login(&state)).await.map_err(|error| broke(rule, format!("the login failed: {error}")))?;
    let mut sessions = vec![first];
    for process in 1..check.processes.max(1) {
        sessions.push(start(process)?);
    }
    faults.quiet(false);

    let mut newest = Generation(0);
    for _ in 0..check.rounds {
        // Every process forces a refresh at once: each must wait its turn.
        let mut round = tokio::task::JoinSet::new();
        for session in &sessions {
            let session = session.clone();
            round.spawn(async move { session.refresh().await });
        }
        while let Some(outcome) = round.join_next().await {
            let outcome = outcome.map_err(|error| broke(rule, format!("a refresh task failed: {error}")))?;
            match outcome {
                Ok(token) => newest = newest.max(token.generation()),
                Err(error) if error.is_logged_out() => return Err(broke(rule, format!("a session ended: {error}"))),
                // The store failed or its wait ran out: the app retries later.
                Err(_) => {}
            }
        }
    }

    // Quiet again: each session must now hand out a token, whose write is durable.
    faults.quiet(true);
    for session in &sessions {
        let token = session
            .access_token()
            .await
            .map_err(|error| broke(rule, format!("no token once the store healed: {error}")))?;
        newest = newest.max(token.generation());
    }
    drop(sessions);

    let rule = "the store ends holding the newest tokens, still valid";
    let stored = load(&open(), rule).await?.ok_or_else(|| broke(rule, "the store was empty"))?;
    if stored.generation < newest {
        return Err(broke(rule, format!("generation {} stored, {newest} handed out", stored.generation)));
    }
    let refresh_token = stored.refresh_token.ok_or_else(|| broke(rule, "no refresh token was stored"))?;
    let now = state.now();
    if let Err(refusal) = state.authority().refresh(now, CLIENT, None, refresh_token.expose_secret(), None) {
        return Err(broke(rule, format!("the authority refused the stored refresh token: {refusal:?}")));
    }
    Ok(StoreReport {
        rules: 0,
        refreshes: state.stats().refreshes,
        faults: faults.failed(),
        final_generation: stored.generation,
    })
}

#[cfg(test)]
mod tests;
