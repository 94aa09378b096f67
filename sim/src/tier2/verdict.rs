//! The verdict on a tier-2 run: the monitors' violations, the liveness rule
//! after healing ([`judge_healed`], as in tier 1), and what the world did,
//! for the campaign's counts.

use super::*;

/// What the world did, and every violation: the monitors', the liveness
/// rule (after healing, callers are served) and the logout rules.
pub(super) fn verdict(
    config: &WorldConfig,
    state: &State,
    faults: &ServerFaults,
    hosts: &[Arc<Host>],
    run: Run,
    total: Duration,
) -> Outcome {
    let Run { mut counts, crashes, host_failure, .. } = run;
    let mut extra: Vec<Violation> = host_failure.into_iter().collect();
    let mut outcome = Outcome::default();
    outcome.tally.refreshes = state.stats().refreshes;
    for (kind, count) in faults.counts.lock().map(|c| c.clone()).unwrap_or_default() {
        *counts.entry(kind).or_default() += count;
    }
    let mut authority_monitor = AuthorityMonitor::new(&config.authority);
    let audit = state.authority().take_audit();
    for entry in &audit {
        authority_monitor.observe(entry);
        if entry.outcome == AuditOutcome::Refused(Refusal::UseDpopNonce) {
            *counts.entry("dpop_nonce_challenge").or_default() += 1;
        }
    }
    outcome.violations.extend_from_slice(authority_monitor.violations());
    *counts.entry("resource_nonce_challenge").or_default() += state.resource_nonce_challenges();
    let known = RunEvidence {
        audit: &audit,
        hosts,
        crashes: &crashes,
        dropped: faults.dropped_for.lock().map(|d| d.clone()).unwrap_or_default(),
        dropped_successes: faults.dropped_successes.lock().map(|d| d.clone()).unwrap_or_default(),
    };
    for host in hosts {
        outcome.most_connects = outcome.most_connects.max(host.pacer.connects.load(Ordering::Relaxed));
        outcome.tally.granted += host.granted.load(Ordering::Relaxed);
        outcome.tally.failed += host.failed.load(Ordering::Relaxed);
        *counts.entry("logout").or_default() += host.logouts.load(Ordering::Relaxed);
        // What the app's processes share is counted once, with its first process.
        if host.watch.process == 0 {
            *counts.entry("store_write_fail").or_default() += host.store.faults().failed();
            if let Ok(shared) = host.watch.shared.lock() {
                outcome.violations.extend(shared.violations());
                outcome.tally.lock_loss_overlaps += shared.lock_loss_overlaps();
            }
            if let Some(database) = &host.database {
                let report = database.report();
                for (kind, count) in report.faults {
                    *counts.entry(kind).or_default() += count;
                }
                outcome.tally.locks_lost += report.locks_lost;
                outcome.tally.fenced_writes += report.fenced_writes;
                outcome.violations.extend(report.violations);
                outcome.trace.extend(report.lines.into_iter().filter(|_| config.trace));
            }
        }
        if let Ok(mut monitor) = host.watch.monitor.lock() {
            monitor.finish(MonoTime::ZERO, false);
            outcome.violations.extend_from_slice(monitor.violations());
        }
        let last = host.last_state.lock().ok().and_then(|s| s.clone());
        for (cause, count) in host.watch.logouts.lock().map(|l| l.clone()).unwrap_or_default() {
            *outcome.tally.logouts.entry(cause).or_default() += count;
        }
        let at = MonoTime::from_elapsed(total);
        let evidence = logout_evidence(config, host, &known);
        let healed = Healed {
            process: &host.name,
            unserved: host.failed_after_heal.load(Ordering::Relaxed),
            last_unserved: host.last_unserved.lock().ok().and_then(|last| last.clone()),
            state: last.as_ref(),
            evidence: Some(evidence),
            told_ended: told_ended(host, hosts, MonoTime::from_elapsed(config.safety_phase)),
        };
        extra.extend(judge_healed(&config.session, &config.authority, &healed, at).err());
        if let Some(trace) = &host.watch.trace {
            outcome.trace.extend(trace.lock().map(|t| t.clone()).unwrap_or_default());
        }
    }
    outcome.violations.extend(extra);
    outcome.tally.faults = counts;
    outcome
}

/// What the whole run knows of lost answers, crashes and refusals, read
/// once for every host's [`LogoutEvidence`].
struct RunEvidence<'a> {
    audit: &'a [crate::authority::Audit],
    hosts: &'a [Arc<Host>],
    crashes: &'a [u64],
    dropped: BTreeMap<String, u64>,
    dropped_successes: BTreeMap<(String, Fingerprint), u32>,
}

/// What explains a logout `host`'s callers were told of: the faults its
/// app met that may end a session without a bug.
fn logout_evidence(config: &WorldConfig, host: &Host, known: &RunEvidence<'_>) -> LogoutEvidence {
    let client = client_id(host.app);
    LogoutEvidence {
        lost_answer: known.dropped.get(&client).copied().unwrap_or(0) > 0
            || answer_unread(known.audit, host, known.hosts),
        // The app's family is shared: any of its processes' crashes counts.
        crashed: known
            .hosts
            .iter()
            .filter(|other| other.app == host.app)
            .any(|p| known.crashes.get(p.index).is_some_and(|c| *c > 0)),
        revoked: {
            let mut revoked = crate::check::RevokedByTheApp::default();
            known.audit.iter().for_each(|entry| revoked.observe(entry, &client));
            revoked.explains(last_refusal(known.audit, &client))
        },
        suspended: false,
        // Tier 2's workers stall inside a store call (the lock's bound
        // passes), not for whole minutes of a refresh cycle.
        stalled_refreshing: false,
        // Only dropped answers are counted (not ones that came too late):
        // tier 2 excuses less than tier 1 does.
        lost_beyond_a_cycle: known
            .dropped_successes
            .iter()
            .any(|((by, _), count)| *by == client && *count > config.session.backoff.attempts),
        refusal: last_refusal(known.audit, &client),
        // The app's database took a lock from a live process.
        lock_lost: host.database.as_ref().filter(|database| database.report().locks_lost > 0).and(config.database),
    }
}

/// The callers `host` told, after healing, that the session had ended, and
/// the logout to judge for them: the one they were told of, or, for "ended
/// in another process", the app's latest rejection (the logout that emptied
/// the shared store; none if the user logged out there).
fn told_ended(host: &Host, hosts: &[Arc<Host>], healed_at: MonoTime) -> Option<ToldEnded> {
    let callers = host.told_ended_after_heal.load(Ordering::Relaxed);
    let (last_told_at, told) =
        host.last_told_ended.lock().ok().and_then(|last| last.clone()).filter(|_| callers > 0)?;
    let last_logout = |host: &Host| host.watch.last_logout.lock().ok().and_then(|last| last.clone());
    let cause = match told {
        LogoutCause::EndedElsewhere | LogoutCause::NoSession => hosts
            .iter()
            .filter(|other| other.app == host.app)
            .filter_map(|other| last_logout(other))
            .filter(|(_, cause)| matches!(cause, LogoutCause::RefreshTokenRejected { .. }))
            .max_by_key(|(at, _)| *at)
            .map_or(told, |(_, rejection)| rejection),
        told => told,
    };
    let ended_here = last_logout(host).map_or(MonoTime::ZERO, |(at, _)| at);
    Some(ToldEnded {
        callers,
        last_told_at,
        cause,
        ended_at: ended_here.max(healed_at),
        login_bound: super::host::LOGIN_BOUND,
    })
}

/// Whether the authority issued tokens to a refresh of `host`'s app that
/// none of its processes read: the answer was lost, by a dropped
/// connection, a partition, or a transport that gave up waiting (tier-2
/// seed 1046724: an answer that outlasted the request timeout, the
/// process's retries unsent, and another process presenting the rotated
/// token to reuse detection).
fn answer_unread(audit: &[crate::authority::Audit], host: &Host, hosts: &[Arc<Host>]) -> bool {
    let client = client_id(host.app);
    let mut read = BTreeSet::new();
    for process in hosts.iter().filter(|process| process.app == host.app) {
        if let Ok(answers) = process.watch.read_in_answers.lock() {
            read.extend(answers.iter().copied());
        }
    }
    audit.iter().any(|entry| match (&entry.op, &entry.outcome) {
        (AuditOp::Refresh { client: c, .. }, AuditOutcome::Issued { access, refresh, .. }) if *c == client => {
            !read.contains(access) && !read.contains(refresh)
        }
        _ => false,
    })
}

/// The authority's last refusal of a refresh from `client`, if any. A
/// nonce challenge is not one: it asks for the same attempt again and never
/// ends a session (D2), so it must not hide the refusal that did (tier-2
/// seed 1003832: another process's logout revoked the family, and the
/// `Revoked` that ended this one was masked by a later login's first
/// challenge, so the logout was blamed on a lost lock).
fn last_refusal(audit: &[crate::authority::Audit], client: &str) -> Option<Refusal> {
    audit.iter().rev().find_map(|entry| match (&entry.op, &entry.outcome) {
        (AuditOp::Refresh { client: c, .. }, AuditOutcome::Refused(refusal))
            if c == client && *refusal != Refusal::UseDpopNonce =>
        {
            Some(*refusal)
        }
        _ => None,
    })
}
