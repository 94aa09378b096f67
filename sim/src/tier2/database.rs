//! Tier 2's shared database, a model of `PostgresStore` under its faults,
//! behind the real driver's [`Store`] trait (as tier 1's `harness/store.rs`
//! models it for the machine alone).
//!
//! One row per app: the blob, a fence every lock raises, and the fence its
//! content was written under. The lock is granted in turn; the database
//! takes it back from a holder whose connection was cut (up to the bound
//! later; the holder is not told), from one that stalls past the bound (a
//! write that waits out a GC or VM pause: its heartbeats stop, so the lock
//! goes), and from one that died. Writes under a lock are conditional on its
//! fence; F1 checks none lands over what a later lock's holder wrote.
//! Operations may be slow. Writes that fail after they landed are the
//! [`FaultyStore`] around it.

use freshen::store::{Store, StoreError, StoreLock};
use freshen_core::session::Plant;
use secrecy::{ExposeSecret, SecretString};

use super::*;

/// The database one app's processes share.
#[derive(Debug)]
pub(super) struct Database {
    bounds: crate::world::Database,
    plant: Option<Plant>,
    /// The app's cross-process monitor, told when a live holder's lock goes.
    shared: Arc<Mutex<SharedStoreMonitor>>,
    /// Granted in turn (tokio's mutex is fair); the guard sits in the row
    /// while held, so the database can take it back.
    turn: Arc<tokio::sync::Mutex<()>>,
    row: Mutex<Row>,
    dice: Mutex<Dice>,
}

#[derive(Debug, Default)]
struct Row {
    blob: Option<SecretString>,
    fence: u64,
    written_under: u64,
    holder: Option<Holder>,
    /// The fence of a holder that died, which a database with the plant
    /// `lock-not-released-on-death` keeps forever.
    dead: Option<u64>,
    report: DatabaseReport,
}

/// What a database saw in a run.
#[derive(Clone, Debug, Default)]
pub(super) struct DatabaseReport {
    /// Faults injected, by kind.
    pub(super) faults: BTreeMap<&'static str, u64>,
    /// Locks taken from holders that lived on.
    pub(super) locks_lost: u64,
    /// Writes refused for a lost lock.
    pub(super) fenced_writes: u64,
    /// F1.
    pub(super) violations: Vec<Violation>,
    pub(super) lines: Vec<String>,
}

#[derive(Debug)]
struct Holder {
    fence: u64,
    process: usize,
    _turn: tokio::sync::OwnedMutexGuard<()>,
}

/// The database's faults, drawn from a generator of its own; off once the
/// world heals.
#[derive(Debug)]
struct Dice {
    rng: SplitMix64,
    faults: Faults,
    quiet: bool,
}

impl Dice {
    fn chance(&mut self, per_mille: u16) -> bool {
        !self.quiet && per_mille > 0 && self.rng.chance(u64::from(per_mille), 1000)
    }

    fn below(&mut self, bound: Duration) -> Duration {
        let millis = u64::try_from(bound.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(self.rng.below(millis.max(1)))
    }
}

impl Database {
    pub(super) fn new(
        config: &WorldConfig,
        holding: Option<&StoredSession>,
        seed: u64,
        shared: Arc<Mutex<SharedStoreMonitor>>,
    ) -> Option<Arc<Self>> {
        let bounds = config.database?;
        let row = Row { blob: holding.map(StoredSession::encode), ..Row::default() };
        Some(Arc::new(Self {
            bounds,
            plant: config.session.plant,
            shared,
            turn: Arc::default(),
            row: Mutex::new(row),
            dice: Mutex::new(Dice { rng: SplitMix64::new(seed), faults: config.faults, quiet: false }),
        }))
    }

    /// Process `process`'s connection to it.
    pub(super) fn handle(self: &Arc<Self>, process: usize) -> DatabaseStore {
        DatabaseStore { db: Arc::clone(self), process, held: Arc::default() }
    }

    /// The world healed: no more faults.
    pub(super) fn heal(&self) {
        if let Ok(mut dice) = self.dice.lock() {
            dice.quiet = true;
        }
    }

    /// Process `process` died: a lock it held is released at once (its
    /// socket closed), unless the plant keeps it.
    pub(super) fn died(&self, process: usize) {
        let fence = self.with_row(|row| {
            let fence = row.holder.as_ref().filter(|h| h.process == process).map(|h| h.fence);
            row.dead = fence;
            fence
        });
        if let Some(fence) = fence {
            self.release(fence, "its holder's process died");
        }
    }

    /// Whether process `process` holds the lock.
    pub(super) fn holds(&self, process: usize) -> bool {
        self.with_row(|row| row.holder.as_ref().is_some_and(|holder| holder.process == process))
    }

    /// What it saw.
    pub(super) fn report(&self) -> DatabaseReport {
        self.with_row(|row| row.report.clone())
    }

    fn count(&self, fault: &'static str) {
        self.with_row(|row| *row.report.faults.entry(fault).or_default() += 1);
    }

    fn with_row<T>(&self, f: impl FnOnce(&mut Row) -> T) -> T {
        // A poisoned row means a panic elsewhere, which the run reports.
        let mut row = self.row.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut row)
    }

    fn roll(&self, per_mille: impl FnOnce(&Faults) -> u16) -> bool {
        self.dice.lock().is_ok_and(|mut dice| {
            let rate = per_mille(&dice.faults);
            dice.chance(rate)
        })
    }

    fn draw(&self, bound: Duration) -> Duration {
        self.dice.lock().map_or(Duration::ZERO, |mut dice| dice.below(bound))
    }

    /// Takes the lock from the holder of `fence`, if it still holds it.
    fn release(&self, fence: u64, cause: &'static str) {
        let keeps_dead = self.plant == Some(Plant::LockNotReleasedOnDeath);
        let released = self.with_row(|row| {
            if row.holder.as_ref().is_none_or(|h| h.fence != fence) || keeps_dead {
                return None;
            }
            let holder = row.holder.take()?;
            let live = row.dead != Some(fence);
            if live {
                row.report.locks_lost += 1;
            }
            row.report.lines.push(format!(
                "{} database releases lock {fence} of process {}: {cause}",
                elapsed(),
                holder.process
            ));
            Some((holder, live))
        });
        if let Some((holder, true)) = released
            && let Ok(mut shared) = self.shared.lock()
        {
            shared.lock_lost(holder.process);
        }
    }

    /// Slow now and then.
    async fn latency(&self) {
        if self.roll(|f| f.slow_store) {
            self.count("slow_store");
            tokio::time::sleep(self.draw(self.bounds.slow)).await;
        }
    }
}

fn elapsed() -> String {
    format!("{}", MonoTime::from_elapsed(turmoil::sim_elapsed().unwrap_or_default()))
}

/// One process's handle on the app's [`Database`]: the fence of the lock it
/// holds, as `PostgresStore` keeps it.
#[derive(Clone, Debug)]
pub(super) struct DatabaseStore {
    db: Arc<Database>,
    process: usize,
    held: Arc<Mutex<Option<u64>>>,
}

impl DatabaseStore {
    fn held(&self) -> Option<u64> {
        self.held.lock().ok().and_then(|held| *held)
    }

    async fn write(&self, blob: Option<SecretString>) -> Result<(), StoreError> {
        let db = &self.db;
        let held = self.held();
        if held.is_some() && db.roll(|f| f.pause) {
            // The worker stalls right here, past the bound; its lock goes
            // once its heartbeats stop counting (the last came up to a third
            // of the bound before).
            let hold = db.bounds.lock_hold;
            let stall = hold + Duration::from_millis(1) + db.draw(hold * 2);
            let released = hold.saturating_sub(db.draw(hold / 3));
            db.count("pause");
            if let Some(fence) = held {
                let db = Arc::clone(db);
                tokio::spawn(async move {
                    tokio::time::sleep(released).await;
                    db.release(fence, "its holder stalled");
                });
            }
            tokio::time::sleep(stall).await;
        }
        db.latency().await;
        let fenced_off = db.plant != Some(Plant::NoFencing);
        db.with_row(|row| {
            if let Some(fence) = held {
                if fence != row.fence && fenced_off {
                    row.report.fenced_writes += 1;
                    return Err(StoreError::Fenced);
                }
                if fence < row.written_under {
                    let detail = format!(
                        "a write under lock {fence} replaced what the holder of lock {} wrote",
                        row.written_under
                    );
                    let at = MonoTime::from_elapsed(turmoil::sim_elapsed().unwrap_or_default());
                    row.report.violations.push(Violation { invariant: Invariant::F1, at, detail });
                }
                row.written_under = fence;
            }
            row.blob = blob;
            Ok(())
        })
    }
}

/// Lets the lock go when the driver drops it (a dead process's runtime
/// drops it too, after [`Database::died`]).
struct HeldLock {
    db: Arc<Database>,
    fence: u64,
    held: Arc<Mutex<Option<u64>>>,
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        // As `PostgresStore`'s: a lost lock dropped late leaves a newer
        // lock's fence alone.
        if let Ok(mut held) = self.held.lock()
            && *held == Some(self.fence)
        {
            *held = None;
        }
        let dead = self.db.with_row(|row| row.dead == Some(self.fence));
        if dead && self.db.plant == Some(Plant::LockNotReleasedOnDeath) {
            return;
        }
        self.db.with_row(|row| {
            if row.holder.as_ref().is_some_and(|h| h.fence == self.fence) {
                row.holder = None;
            }
        });
    }
}

impl Store for DatabaseStore {
    async fn load(&self) -> Result<Option<StoredSession>, StoreError> {
        self.db.latency().await;
        let blob = self.db.with_row(|row| row.blob.clone());
        match blob {
            None => Ok(None),
            Some(blob) => StoredSession::decode(blob.expose_secret().as_bytes()).map(Some).map_err(StoreError::Corrupt),
        }
    }

    async fn save(&self, session: &StoredSession) -> Result<(), StoreError> {
        self.write(Some(session.encode())).await
    }

    async fn clear(&self) -> Result<(), StoreError> {
        self.write(None).await
    }

    async fn lock(&self) -> Result<StoreLock, StoreError> {
        let db = &self.db;
        db.latency().await;
        let turn = Arc::clone(&db.turn).lock_owned().await;
        let process = self.process;
        let fence = db.with_row(|row| {
            row.fence += 1;
            row.holder = Some(Holder { fence: row.fence, process, _turn: turn });
            row.fence
        });
        if let Ok(mut held) = self.held.lock() {
            *held = Some(fence);
        }
        if db.roll(|f| f.lock_lost) {
            // Cut at some point of the hold; the database notices within its bound.
            let after = db.draw(db.bounds.lock_hold) + db.draw(db.bounds.lock_hold) + Duration::from_millis(1);
            db.count("lock_lost");
            let db = Arc::clone(db);
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                db.release(fence, "its connection was cut");
            });
        }
        Ok(StoreLock::new(HeldLock { db: Arc::clone(db), fence, held: Arc::clone(&self.held) }))
    }
}

/// An app's store: memory (a file's stand-in) or the database.
#[derive(Clone, Debug)]
pub(super) enum AppStore {
    Memory(MemoryStore),
    Database(DatabaseStore),
}

/// What each process of a tier-2 app stores its session in.
pub(super) type HostStore = FaultyStore<AppStore>;

impl Store for AppStore {
    async fn load(&self) -> Result<Option<StoredSession>, StoreError> {
        match self {
            Self::Memory(store) => store.load().await,
            Self::Database(store) => store.load().await,
        }
    }

    async fn save(&self, session: &StoredSession) -> Result<(), StoreError> {
        match self {
            Self::Memory(store) => store.save(session).await,
            Self::Database(store) => store.save(session).await,
        }
    }

    async fn clear(&self) -> Result<(), StoreError> {
        match self {
            Self::Memory(store) => store.clear().await,
            Self::Database(store) => store.clear().await,
        }
    }

    async fn lock(&self) -> Result<StoreLock, StoreError> {
        match self {
            Self::Memory(store) => store.lock().await,
            Self::Database(store) => store.lock().await,
        }
    }
}
