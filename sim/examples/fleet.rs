//! A fleet: worker processes sharing 100 tenant sessions in PostgreSQL,
//! against the reference authority on a loopback port with reuse detection
//! on. Each worker keeps its tenants' sessions in a [`Sessions`] registry over
//! a [`PostgresStore`] and calls the protected resource for random tenants,
//! across many access-token lifetimes.
//!
//! ```text
//! FRESHEN_POSTGRES_URL='host=127.0.0.1 port=54329 user=freshen dbname=postgres' \
//! cargo run --release -p freshen-sim --example fleet -- [--workers N] [--tenants N] [--seconds S]
//!     [--lifetime-ms MS] [--grace S] [--kill-holder | --stall-holder]
//! ```
//!
//! Passes (exit 0) when no tenant was logged out, no resource request was
//! refused, the authority refused no refresh (no token was presented twice)
//! and each tenant's refreshes match the expiries the run spanned.
//!
//! `--kill-holder`: the token endpoint holds its answers 800 ms after
//! committing, and a worker holding a tenant's lock mid-refresh (seen in
//! `pg_locks`) gets SIGKILL; reported: how long until another worker
//! refreshed that tenant, and what the server saw. Without grace the tenant
//! cannot survive (the rotated token died with the worker); with a grace
//! period (`--grace 30`) it must. `--stall-holder`: the holder gets SIGSTOP
//! for longer than the lock's bound (2 s here), then SIGCONT; if another
//! worker refreshed the tenant meanwhile, its late write must be fenced off,
//! and with a grace period the tenant must survive.
//!
//! Without `FRESHEN_POSTGRES_URL` it says why and exits 0, unless
//! `FRESHEN_REQUIRE_POSTGRES=1` (set by `.ci/run`).
#![allow(clippy::print_stdout, clippy::print_stderr)] // an example reports on its terminal

mod common;

use std::collections::BTreeMap;
use std::process::{Child, Command, ExitCode};
use std::time::{Duration, Instant};

use freshen::core::oauth::Client;
use freshen::core::rng::SplitMix64;
use freshen::core::session::SessionConfig;
use freshen::store::{LOCK_APPLICATION_NAME, Postgres, PostgresSettings};
use freshen::transport::ReqwestTransport;
use freshen::{Config, Session, Sessions, StoredSession};
use freshen_sim::authority::FamilyId;
use freshen_sim::http::{Server, paths};

use common::{Error, RunFlags, count};

const CLIENT: &str = "fleet-example";
/// How long a lock may sit idle before the database takes it back.
const LOCK_HOLD: Duration = Duration::from_secs(2);

#[derive(Debug)]
struct Options {
    run: RunFlags,
    workers: usize,
    tenants: usize,
    experiment: Option<Experiment>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Experiment {
    Kill,
    Stall,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut run = RunFlags::new(20, Duration::from_secs(4));
    let (mut workers, mut tenants, mut experiment) = (4, 100, None);
    common::read_flags(args, &mut run, |flag, args| {
        match flag {
            "--workers" => workers = count(flag, args, 32)?,
            "--tenants" => tenants = count(flag, args, 10_000)?,
            "--kill-holder" => experiment = Some(Experiment::Kill),
            "--stall-holder" => experiment = Some(Experiment::Stall),
            other => return Err(format!("unknown argument {other}")),
        }
        Ok(())
    })?;
    Ok(Options { run, workers, tenants, experiment })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Ok(url) = std::env::var("FRESHEN_POSTGRES_URL") else {
        if std::env::var("FRESHEN_REQUIRE_POSTGRES").is_ok_and(|v| v == "1") {
            eprintln!("FRESHEN_REQUIRE_POSTGRES=1 but FRESHEN_POSTGRES_URL is not set");
            return ExitCode::FAILURE;
        }
        println!("skipped: FRESHEN_POSTGRES_URL is not set (.ci/postgres.sh starts a throwaway cluster)");
        return ExitCode::SUCCESS;
    };
    if args.first().map(String::as_str) == Some("worker") {
        return common::block_on(worker(&url, args.get(1..).unwrap_or_default()));
    }
    match parse(&args) {
        Ok(options) => common::block_on(parent(&url, options)),
        Err(error) => {
            eprintln!("{error}");
            ExitCode::from(2)
        }
    }
}

fn database(url: &str, table: &str) -> Result<Postgres, Error> {
    Ok(Postgres::new(url, PostgresSettings::default().with_table(table).with_lock_hold(LOCK_HOLD))?)
}

fn tenant(index: usize) -> String {
    format!("tenant-{index}")
}

/// One worker: calls the resource for random tenants until the deadline,
/// then prints what it saw.
async fn worker(url: &str, args: &[String]) -> Result<ExitCode, Error> {
    let [token_url, resource_url, table, tenants, seconds] = args else { return Err("worker: bad arguments".into()) };
    let tenants: usize = tenants.parse()?;
    let db = database(url, table)?;
    let config = Config::new(token_url.clone(), Client::public(CLIENT)).with_session(common::child_session());
    let opener = db.clone();
    let sessions = Sessions::new(config, ReqwestTransport::new()?, move |key| opener.store(key));
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(seconds.parse()?);
    let mut rng = SplitMix64::new(u64::from(std::process::id()));
    let (mut ok, mut refused, mut failed) = (0u64, 0u64, 0u64);
    while Instant::now() < deadline {
        let key = tenant(rng.below(tenants as u64) as usize);
        let Ok(token) = sessions.access_token(&key).await else {
            failed += 1;
            continue;
        };
        let request = http.get(resource_url.as_str()).header("authorization", token.authorization()?.clone());
        match request.send().await {
            Ok(response) if response.status().is_success() => ok += 1,
            Ok(_) => refused += 1,
            Err(_) => failed += 1,
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let logged_out =
        (0..tenants).filter(|&t| sessions.session(&tenant(t)).is_ok_and(|s| s.state().needs_login())).count();
    // Refreshes still out would die with the process, their rotated tokens
    // with them: another worker's replay of the old ones, past the grace
    // window's replays, would then revoke those tenants.
    sessions.shutdown().await;
    println!(
        "pid {} ok {ok} refused {refused} failed {failed} tenants logged out {logged_out} fenced writes {}",
        std::process::id(),
        db.fenced_writes()
    );
    Ok(if logged_out > 0 { ExitCode::from(3) } else { ExitCode::SUCCESS })
}

/// Logs every tenant in (the authority's login, written through a session,
/// as an onboarding step would) and returns each tenant's token family.
async fn onboard(server: &Server, db: &Postgres, tenants: usize) -> Result<Vec<FamilyId>, Error> {
    let config = Config::new(server.url(paths::TOKEN), Client::public(CLIENT))
        .with_session(SessionConfig::default().with_shared_store(true));
    let mut families = Vec::with_capacity(tenants);
    for index in 0..tenants {
        let issued = server.state().login(CLIENT);
        families.push(issued.family);
        let session = Session::start(config.clone(), ReqwestTransport::new()?, db.store(tenant(index)))?;
        let stored = StoredSession::pair(issued.access_token, issued.refresh_token)
            .with_access_expiry(freshen::system_clock(), issued.expires_in);
        session.log_in_with(stored).await?;
    }
    Ok(families)
}

/// A worker holding a tenant's lock for at least 100 ms (mid-refresh, as the
/// token endpoint holds its answers): its pid and the tenant.
async fn lock_holder(
    probe: &tokio_postgres::Client,
    table: &str,
    tenants: usize,
) -> Result<Option<(u32, usize)>, Error> {
    let names: Vec<String> = (0..tenants).map(|t| format!("{table}/{}", tenant(t))).collect();
    let rows = probe
        .query(
            "SELECT a.application_name, n.ord::bigint FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
             JOIN unnest($1::text[]) WITH ORDINALITY AS n(name, ord) \
               ON ((l.classid::bigint << 32) | l.objid::bigint) = hashtextextended(n.name, 0) \
             WHERE l.locktype = 'advisory' AND l.granted AND now() - a.state_change > interval '100 milliseconds'",
            &[&names],
        )
        .await?;
    Ok(rows.iter().find_map(|row| {
        let name: String = row.get(0);
        let pid = name.strip_prefix(LOCK_APPLICATION_NAME)?.strip_prefix(':')?.parse().ok()?;
        let ordinal: i64 = row.get(1);
        Some((pid, usize::try_from(ordinal - 1).ok()?))
    }))
}

/// What an experiment on a lock holder showed.
#[derive(Debug)]
struct Struck {
    pid: u32,
    tenant: usize,
    at: Duration,
    /// How long until another worker's refresh of that tenant reached the authority.
    next_refresh_after: Option<Duration>,
}

/// Waits for a worker to hold a tenant's lock mid-refresh, then kills it or
/// stops it for twice the lock's bound (and lets it go on).
async fn strike(
    url: &str,
    server: &Server,
    table: &str,
    families: &[FamilyId],
    workers: &mut [Child],
    experiment: Experiment,
    start: Instant,
) -> Result<Option<Struck>, Error> {
    let (probe, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    for _ in 0..4_000 {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let Some((pid, tenant)) = lock_holder(&probe, table, families.len()).await? else { continue };
        let Some(worker) = workers.iter_mut().find(|w| w.id() == pid) else { continue };
        let family = families.get(tenant).copied().ok_or("no such tenant")?;
        let before = server.state().authority().family_refreshes(family).0;
        match experiment {
            Experiment::Kill => worker.kill()?, // SIGKILL
            Experiment::Stall => signal(pid, "STOP")?,
        }
        let at = start.elapsed();
        let struck_at = Instant::now();
        let mut next_refresh_after = None;
        // A stalled worker stays stopped for twice the lock's bound, then goes on.
        let mut resumed = experiment == Experiment::Kill;
        for _ in 0..10_000 {
            // Its own refresh (committed, its answer held back) was one; another worker's is the next.
            if next_refresh_after.is_none() && server.state().authority().family_refreshes(family).0 > before + 1 {
                next_refresh_after = Some(struck_at.elapsed());
            }
            if !resumed && struck_at.elapsed() >= 2 * LOCK_HOLD {
                signal(pid, "CONT")?;
                resumed = true;
            }
            if resumed && next_refresh_after.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if !resumed {
            signal(pid, "CONT")?;
        }
        return Ok(Some(Struck { pid, tenant, at, next_refresh_after }));
    }
    Ok(None)
}

fn signal(pid: u32, name: &str) -> Result<(), Error> {
    let status = Command::new("kill").arg(format!("-{name}")).arg(pid.to_string()).status()?;
    if status.success() { Ok(()) } else { Err(format!("kill -{name} {pid} failed").into()) }
}

async fn parent(url: &str, options: Options) -> Result<ExitCode, Error> {
    let server = Server::loopback(common::strict_authority(options.run.lifetime, options.run.grace), 1).await?;
    let table = format!("fleet_example_{}", std::process::id());
    let db = database(url, &table)?;
    db.migrate().await?;
    let families = onboard(&server, &db, options.tenants).await?;
    if options.experiment.is_some() {
        server.state().set_token_answer_delay(Duration::from_millis(800));
    }
    println!("{options:?}; authority on {}; table {table}", server.url(""));

    let start = Instant::now();
    let worker_args = [
        "worker".into(),
        server.url(paths::TOKEN),
        server.url(paths::RESOURCE),
        table.clone(),
        options.tenants.to_string(),
        options.run.seconds.to_string(),
    ];
    let mut workers = common::spawn_children(options.workers, &worker_args)?;
    let struck = match options.experiment {
        Some(experiment) => strike(url, &server, &table, &families, &mut workers, experiment, start).await?,
        None => None,
    };
    let outputs = common::wait_all(workers).await?;
    let elapsed = start.elapsed();

    let (mut refused, mut logged_out, mut fenced) = (0u64, 0u64, 0u64);
    for output in &outputs {
        let line = String::from_utf8_lossy(&output.stdout);
        let field = |name: &str| -> u64 {
            line.split(name).nth(1).and_then(|rest| rest.split_whitespace().next()?.parse().ok()).unwrap_or(0)
        };
        refused += field(" refused ");
        logged_out += field(" tenants logged out ");
        fenced += field(" fenced writes ");
        print!("  {}", if line.is_empty() { "(killed)\n".into() } else { line });
    }
    let stats = server.state().stats();
    let (least, most) = common::expiries_spanned(elapsed, options.run.lifetime);
    let per_tenant: Vec<(u64, bool)> =
        families.iter().map(|family| server.state().authority().family_refreshes(*family)).collect();
    let mut spread: BTreeMap<u64, usize> = BTreeMap::new();
    for (refreshes, _) in &per_tenant {
        *spread.entry(*refreshes).or_default() += 1;
    }
    let off = per_tenant.iter().filter(|(refreshes, _)| !(least..=most).contains(refreshes)).count();
    let revoked = per_tenant.iter().filter(|(_, revoked)| *revoked).count();
    drop_table(url, &table).await;
    println!(
        "{} workers, {} tenants, {:.1} s: refreshes {} (per tenant: {spread:?}; expiries the run spans: {least}..={most}, \
         {off} tenants outside), resource requests refused {refused}, refresh refusals {}, reuse detections {}, \
         families revoked {revoked}, tenants logged out {logged_out}, fenced writes {fenced}",
        options.workers,
        options.tenants,
        elapsed.as_secs_f64(),
        stats.refreshes,
        stats.refusals,
        stats.reuse_detections,
    );
    if let Some(struck) = &struck {
        let revoked_tenant = per_tenant.get(struck.tenant).is_some_and(|(_, revoked)| *revoked);
        return Ok(judge_strike(&options, struck, revoked_tenant, revoked == 0, fenced));
    }
    if options.experiment.is_some() {
        eprintln!("no worker was ever seen holding a lock mid-refresh");
        return Ok(ExitCode::FAILURE);
    }
    let passed = logged_out == 0
        && refused == 0
        && stats.refusals == 0
        && stats.reuse_detections == 0
        && revoked == 0
        && off == 0
        && outputs.iter().all(|o| o.status.success());
    Ok(if passed { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// An experiment's verdict: `struck`'s tenant must survive when the
/// authority keeps a grace period (`survived`: no family was revoked), and a
/// stalled holder's late write must be fenced.
fn judge_strike(options: &Options, struck: &Struck, revoked_tenant: bool, survived: bool, fenced: u64) -> ExitCode {
    let verb = if options.experiment == Some(Experiment::Kill) { "killed (SIGKILL)" } else { "stopped (SIGSTOP, 4 s)" };
    println!(
        "{verb} pid {} at {:.2} s while it held tenant-{}'s lock mid-refresh; another worker's refresh of that tenant \
         reached the authority {} later; tenant-{} {}",
        struck.pid,
        struck.at.as_secs_f64(),
        struck.tenant,
        struck.next_refresh_after.map_or("never".into(), |d| format!("{} ms", d.as_millis())),
        struck.tenant,
        if revoked_tenant { "was revoked" } else { "survived" },
    );
    // A late write is fenced only if another worker took the lock while the holder was stopped; on a
    // starved machine nobody may have, and then the holder's write is rightly its own.
    let taken_during_stall = struck.next_refresh_after.is_some_and(|after| after < 2 * LOCK_HOLD);
    let fenced_ok = options.experiment != Some(Experiment::Stall) || !taken_during_stall || fenced > 0 || !survived;
    if (options.run.grace.is_zero() || survived) && fenced_ok {
        return ExitCode::SUCCESS;
    }
    eprintln!(
        "with a grace period the tenant must survive, and a stalled holder's late write must be fenced when \
         another worker refreshed its tenant during the stall"
    );
    ExitCode::FAILURE
}

async fn drop_table(url: &str, table: &str) {
    if let Ok((client, connection)) = tokio_postgres::connect(url, tokio_postgres::NoTls).await {
        tokio::spawn(connection);
        let _ =
            client.batch_execute(&format!("DROP TABLE IF EXISTS {table}; DROP TABLE IF EXISTS {table}_schema")).await;
    }
}
