//! The driver task: carries out the machine's I/O (refreshes over the
//! transport, reads, writes and locks over the store) and fires its timer.

use super::*;

/// The driver: carries out the machine's I/O and fires its timer, until every
/// handle is gone and nothing is in flight or owed to the store.
pub(super) async fn drive<T: Transport, S: Store>(shared: Arc<Shared<T, S>>) {
    // Closing, with nothing in flight: until when a write the store is owed
    // (a rotation whose write failed) is still retried, at the store's
    // backoff: as long again as an answer in flight is waited for. Bounded,
    // so that a store that keeps failing does not hold up an exit.
    let mut owed_writes_until: Option<MonoTime> = None;
    loop {
        for io in shared.coordinator.take_io() {
            execute(&shared, io);
        }
        let closing = shared.closing.load(Ordering::Acquire);
        let mut retrying_owed_write = None;
        if closing && shared.in_flight.load(Ordering::Acquire) == 0 {
            // A task queues the I/O its answer asks for before it counts
            // itself done, so what it queued is seen here.
            let queued = shared.coordinator.take_io();
            if !queued.is_empty() {
                for io in queued {
                    execute(&shared, io);
                }
                continue;
            }
            let now = shared.now();
            let until = *owed_writes_until.get_or_insert(now.saturating_add(shared.config.session.request_timeout));
            if !shared.coordinator.store_write_owed() || now >= until {
                debug!("closing, nothing in flight or owed to the store: driver stops");
                break;
            }
            retrying_owed_write = Some(until);
        }
        // While closing, no new work is started from timers (answers in
        // flight still land), but a write the store is owed is retried.
        let deadline = match (closing, retrying_owed_write) {
            (false, _) => next_timer(&shared.coordinator),
            (true, None) => None,
            (true, Some(until)) => {
                let bound = Timeout { at: until, reason: "shutdown stops retrying the store" };
                Some(shared.coordinator.poll_timeout().filter(|due| due.at < until).unwrap_or(bound))
            }
        };
        let sleep = async {
            match deadline {
                Some(due) => tokio::time::sleep_until(shared.instant(due.at)).await,
                None => core::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = shared.kick.notified() => {}
            () = sleep => {
                if let Some(due) = deadline {
                    tracing::trace!(reason = due.reason, "timer due");
                }
                shared.coordinator.handle_timeout(shared.now());
            }
        }
    }
    // A lock the machine still held (a cycle parked between attempts) goes
    // now, not when the process ends.
    let released = shared.store_lock.lock().ok().map(|mut slot| mem::take(&mut *slot));
    drop(released);
    shared.coordinator.close();
    shared.stopped.send_replace(true);
}

/// When the driver's timer fires next: the machine's own timer, or the
/// moment the published token stops being usable, whichever comes first (the
/// fast path reads no monotonic clock; the machine withdraws the token then).
fn next_timer(coordinator: &Coordinator<oneshot::Sender<Outcome>>) -> Option<Timeout> {
    let machine = coordinator.poll_timeout();
    let withdraw =
        coordinator.published_until().map(|at| Timeout { at, reason: "the published token stops being usable" });
    match (machine, withdraw) {
        (Some(machine), Some(withdraw)) => Some(if withdraw.at < machine.at { withdraw } else { machine }),
        (machine, withdraw) => machine.or(withdraw),
    }
}

/// Runs one piece of I/O on its own task; its answer goes back to the machine.
pub(super) fn execute<T: Transport, S: Store>(shared: &Arc<Shared<T, S>>, io: Io) {
    if shared.closing.load(Ordering::Acquire) && refused_while_closing(shared, &io) {
        return;
    }
    match io {
        Io::SendRefresh { id, refresh_token, attempt, dpop } => {
            let span = info_span!("refresh", refresh = %id, attempt, dpop = dpop.is_some());
            if !RefreshesOut::start(shared) {
                let _entered = span.enter();
                debug!("an earlier refresh request is still out (this clock jumped ahead of it): not sent");
                let not_sent = Event::RefreshFailed { id, failure: TransportFailure::NotSent };
                shared.coordinator.handle(shared.now(), not_sent);
                return;
            }
            spawn_io(shared, span, |shared| async move {
                let event = send_refresh(&shared, id, &refresh_token, dpop.as_ref()).await;
                RefreshesOut::end(&shared);
                shared.coordinator.handle(shared.now(), event);
            });
        }
        Io::Revoke { id, refresh_token } => {
            let Some(url) = shared.config.revocation_endpoint.clone() else {
                shared.coordinator.handle(shared.now(), Event::RevocationEnded { id });
                return;
            };
            spawn_io(shared, info_span!("revoke", %id), |shared| async move {
                let form = oauth::revocation_request(&shared.config.client, &refresh_token);
                let timeout = shared.config.session.request_timeout;
                match tokio::time::timeout(timeout, shared.transport.post_form(&url, &form)).await {
                    Ok(Ok(response)) => info!(status = response.status, "revocation answered"),
                    Ok(Err(error)) => warn!(%error, "revocation got no answer (best effort)"),
                    Err(_) => warn!("revocation timed out (best effort)"),
                }
                shared.coordinator.handle(shared.now(), Event::RevocationEnded { id });
            });
        }
        Io::LoadStore { op } => spawn_io(shared, info_span!("store", %op), |shared| async move {
            let event = match shared.store.load().await {
                Ok(stored) => {
                    info!(found = stored.is_some(), "store loaded");
                    Event::StoreLoaded { op, stored, unix_now: shared.clock.wall(), boot_now: shared.clock.boot() }
                }
                Err(error) => {
                    warn!(%error, "store load failed");
                    Event::StoreFailed { op, error: error.into() }
                }
            };
            shared.coordinator.handle(shared.now(), event);
        }),
        Io::LockStore { op } => {
            let (stop_waiting, given_up) = oneshot::channel();
            if let Ok(mut slot) = shared.store_lock.lock() {
                *slot = LockSlot { wanted: Some(op), stop_waiting: Some(stop_waiting), held: None };
            }
            spawn_io(shared, info_span!("store", %op), |shared| async move {
                if let Some(event) = lock_and_read(&shared, op, given_up).await {
                    shared.coordinator.handle(shared.now(), event);
                }
            });
        }
        Io::UnlockStore => {
            // Dropping the slot's sender ends a wait the machine gave up.
            let released = shared.store_lock.lock().ok().map(|mut slot| mem::take(&mut *slot));
            let held = released.and_then(|slot| slot.held);
            let was_held = held.is_some();
            if held.is_some_and(|lock| RefreshesOut::keep(shared, lock)) {
                debug!("store unlocked for the session; its lock is kept until the refresh request out ends");
            } else {
                debug!(held = was_held, "store unlocked");
            }
        }
        Io::Persist { op, session } => {
            let generation = session.generation;
            spawn_io(shared, info_span!("store", %op, %generation), |shared| async move {
                let written = shared.store.save(&session).await;
                let failed = "store write failed; the tokens stay in memory and the write is retried";
                written_answer(&shared, op, written, failed);
            });
        }
        Io::ClearStore { op } => spawn_io(shared, info_span!("store", %op), |shared| async move {
            let cleared = shared.store.clear().await;
            written_answer(&shared, op, cleared, "store clear failed; it is retried");
        }),
    }
}

/// Tells the machine how a write or clear ended. A write refused as
/// [`Fenced`](crate::store::StoreError::Fenced) means another process has
/// taken the store's lock since this one got it: the lock this session holds
/// (or keeps for a refresh request still out) is dead, and is let go here,
/// before the machine hears of it, so that its next `LockStore` waits for the
/// lock again instead of reusing the dead one and refreshing beside the new
/// holder (C1 across processes; tier-2 seed 1108555).
fn written_answer<T, S>(
    shared: &Shared<T, S>,
    op: StoreOpId,
    result: Result<(), crate::store::StoreError>,
    failed: &'static str,
) {
    let event = match result {
        Ok(()) => Event::StoreWritten { op },
        Err(error) => {
            warn!(%error, "{failed}");
            if matches!(error, crate::store::StoreError::Fenced) {
                let held = shared.store_lock.lock().ok().and_then(|mut slot| slot.held.take());
                let kept = RefreshesOut::take_kept(shared);
                debug!(held = held.is_some(), kept = kept.is_some(), "the lost lock is let go");
            }
            Event::StoreFailed { op, error: error.into() }
        }
    };
    shared.coordinator.handle(shared.now(), event);
}

/// While closing, nothing new is presented to the server or locked. The
/// machine (and every observer) is told so at once, as a request that
/// could not be sent and a store that could not be reached: otherwise it
/// would count the attempt in flight, and another process taking the lock
/// next would seem to overlap it. Whether `io` was refused so.
fn refused_while_closing<T: Transport, S: Store>(shared: &Shared<T, S>, io: &Io) -> bool {
    let not_started = match *io {
        Io::SendRefresh { id, .. } => Event::RefreshFailed { id, failure: TransportFailure::NotSent },
        Io::LockStore { op } => Event::StoreFailed { op, error: freshen_core::session::StoreError::Unavailable },
        Io::Revoke { .. } | Io::LoadStore { .. } | Io::UnlockStore | Io::Persist { .. } | Io::ClearStore { .. } => {
            return false;
        }
    };
    debug!("closing: a new refresh attempt or store lock is not started");
    shared.coordinator.handle(shared.now(), not_started);
    true
}

/// One refresh attempt over the transport, bounded by the session's
/// `request_timeout`: the event that answers it, counted.
async fn send_refresh<T: Transport, S: Store>(
    shared: &Shared<T, S>,
    id: RefreshId,
    refresh_token: &RefreshToken,
    dpop: Option<&ProofNeeded>,
) -> Event {
    let config = &shared.config;
    let mut form = oauth::refresh_request(&config.client, refresh_token, config.scope.as_deref());
    if let Some(needed) = dpop {
        let now = shared.clock.wall();
        match crate::dpop::proof(&needed.key, "POST", &config.token_endpoint, now, needed.nonce.as_ref(), None) {
            Ok(proof) => form = form.with_dpop(proof),
            Err(error) => {
                // Never sent unbound: without a proof there is no request.
                warn!(%error, "no OS randomness for a DPoP proof; the refresh is not sent");
                return Event::RefreshFailed { id, failure: TransportFailure::NotSent };
            }
        }
    }
    debug!("sending refresh");
    shared.counters.add(Count::RefreshAttempt);
    let timeout = config.session.request_timeout;
    let event = match tokio::time::timeout(timeout, shared.transport.post_form(&config.token_endpoint, &form)).await {
        Ok(Ok(response)) => {
            shared.note_transport_error(None);
            let unix_now = shared.clock.wall();
            if let Some(skew) = response.clock_skew(unix_now).filter(|s| s.is_notable()) {
                // Only a sanity check: lifetimes count on the monotonic clock from the send.
                warn!(
                    server_ahead_s = skew.server_ahead.as_secs(),
                    server_behind_s = skew.server_behind.as_secs(),
                    "the token endpoint's clock (its Date header) differs from this machine's"
                );
            }
            let outcome = response.classify(&config.session.policy, unix_now);
            info!(status = response.status, outcome = outcome_name(&outcome), "refresh answered");
            Event::RefreshCompleted { id, outcome, dpop_nonce: response.dpop_nonce() }
        }
        Ok(Err(error)) => {
            warn!(%error, cause = error.source().map(tracing::field::display), "refresh got no answer");
            let failure = error.failure();
            shared.note_transport_error(Some(error));
            Event::RefreshFailed { id, failure }
        }
        Err(_) => {
            warn!("refresh timed out");
            shared.note_transport_error(None);
            Event::RefreshFailed { id, failure: TransportFailure::Timeout }
        }
    };
    shared.counters.add(match &event {
        Event::RefreshCompleted { outcome: oauth::Classified::Success(_), .. } => Count::RefreshSucceeded,
        Event::RefreshCompleted { outcome: oauth::Classified::NonceRequired(_), .. } => Count::NonceChallenge,
        _ => Count::RefreshAttemptFailed,
    });
    event
}

/// Refresh requests on the wire, and the store's lock kept for them.
///
/// The machine judges an attempt's deadline on the session's clock, which a
/// wall clock stepped forward moves ahead (it reads as a suspend), so it may
/// give up a request the transport still has out, and the server may still
/// answer. Until that request ends (answered, failed, or timed out on the
/// transport's own clock, at most `request_timeout` later), no other request
/// of this session goes out, and the store's lock is not let go: no process
/// presents the token that request carried while the server may still
/// rotate it (C1 across processes, on real time). A lock that a fenced
/// write shows lost is not kept: it excludes nobody (see `written_answer`).
#[derive(Default)]
pub(super) struct RefreshesOut {
    count: usize,
    /// The lock the machine let go of while a request was out.
    kept_lock: Option<StoreLock>,
}

impl RefreshesOut {
    /// Counts a request about to go out; false (and nothing counted) while another is out.
    fn start<T, S>(shared: &Shared<T, S>) -> bool {
        let Ok(mut out) = shared.refreshes_out.lock() else { return true };
        if out.count > 0 {
            return false;
        }
        out.count += 1;
        true
    }

    /// A request ended: the lock kept for it goes once none is out.
    fn end<T, S>(shared: &Shared<T, S>) {
        let released = shared.refreshes_out.lock().ok().and_then(|mut out| {
            out.count = out.count.saturating_sub(1);
            if out.count == 0 { out.kept_lock.take() } else { None }
        });
        if released.is_some() {
            debug!("the refresh request out ended: the store's lock kept for it is let go");
        }
    }

    /// Keeps `lock` while a request is out; true if kept, else it is let go here.
    fn keep<T, S>(shared: &Shared<T, S>, lock: StoreLock) -> bool {
        match shared.refreshes_out.lock() {
            Ok(mut out) if out.count > 0 => {
                out.kept_lock = Some(lock);
                true
            }
            _ => false,
        }
    }

    /// The lock kept for a request still out, for this session's next lock:
    /// it is this process's already, and waiting for it would wait on itself.
    fn take_kept<T, S>(shared: &Shared<T, S>) -> Option<StoreLock> {
        shared.refreshes_out.lock().ok().and_then(|mut out| out.kept_lock.take())
    }
}

/// The store's cross-process lock as the machine last asked for it: the
/// `LockStore` it waits for or holds, until `UnlockStore` empties the slot.
#[derive(Default)]
pub(super) struct LockSlot {
    wanted: Option<StoreOpId>,
    /// Dropped when the machine gives up the wait, which ends it.
    stop_waiting: Option<oneshot::Sender<()>>,
    held: Option<StoreLock>,
}

/// Takes the store's cross-process lock and reads the store under it. The
/// machine bounds the wait (`SessionConfig::lock_wait`): when it gives up, it
/// sends `UnlockStore`, which ends the wait here, and a lock that came at that
/// very moment is released, not kept. Then nothing is answered.
async fn lock_and_read<T: Transport, S: Store>(
    shared: &Shared<T, S>,
    op: StoreOpId,
    given_up: oneshot::Receiver<()>,
) -> Option<Event> {
    let locked = match RefreshesOut::take_kept(shared) {
        Some(kept) => Ok(kept),
        None => tokio::select! {
            biased;
            locked = shared.store.lock() => locked,
            _ = given_up => {
                debug!("the wait for the store's lock was given up");
                return None;
            }
        },
    };
    let lock = match locked {
        Ok(lock) => lock,
        Err(error) => {
            warn!(%error, "store lock failed");
            return Some(Event::StoreFailed { op, error: error.into() });
        }
    };
    {
        let Ok(mut slot) = shared.store_lock.lock() else { return None };
        if slot.wanted != Some(op) {
            debug!("the store's lock came after its wait was given up; released");
            return None;
        }
        slot.held = Some(lock);
        slot.stop_waiting = None;
    }
    match shared.store.load().await {
        Ok(stored) => {
            debug!(found = stored.is_some(), "store locked and read");
            Some(Event::StoreLocked { op, stored, unix_now: shared.clock.wall(), boot_now: shared.clock.boot() })
        }
        Err(error) => {
            warn!(%error, "store read under the lock failed; the lock is released");
            if let Ok(mut slot) = shared.store_lock.lock()
                && slot.wanted == Some(op)
            {
                slot.held = None;
            }
            Some(Event::StoreFailed { op, error: error.into() })
        }
    }
}

/// Spawns `work`, counting it in flight, and wakes the driver when it is done.
fn spawn_io<T, S, F, Fut>(shared: &Arc<Shared<T, S>>, span: tracing::Span, work: F)
where
    T: Transport,
    S: Store,
    F: FnOnce(Arc<Shared<T, S>>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    shared.in_flight.fetch_add(1, Ordering::AcqRel);
    let done = Arc::clone(shared);
    let future = work(Arc::clone(shared));
    tokio::spawn(
        async move {
            future.await;
            done.in_flight.fetch_sub(1, Ordering::AcqRel);
            done.kick.notify_one();
        }
        .instrument(span),
    );
}

fn outcome_name(outcome: &oauth::Classified) -> &'static str {
    match outcome {
        oauth::Classified::Success(_) => "success",
        oauth::Classified::Terminal(_) => "terminal",
        oauth::Classified::Transient(_) => "transient",
        oauth::Classified::Rejected(_) => "rejected",
        oauth::Classified::InteractionRequired(_) => "interaction_required",
        oauth::Classified::Malformed(_) => "malformed",
        oauth::Classified::NonceRequired(_) => "dpop_nonce_required",
    }
}
