//! The store check passes freshen's own stores and catches broken ones: each
//! planted store below breaks one rule, and the check must name that rule.

use core::sync::atomic::{AtomicU64, Ordering};

use freshen::store::{MemoryStore, StoreError, StoreLock};

use super::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime")
}

fn quick(shared: bool) -> StoreCheck {
    let check = if shared { StoreCheck::shared() } else { StoreCheck::single() };
    StoreCheck { rounds: 12, lock_wait: Duration::from_millis(200), ..check }
}

#[test]
fn memory_store_handles_that_share_one_place_pass_shared() {
    let place = MemoryStore::new();
    let report = runtime().block_on(check_store(|| place.clone(), &quick(true))).expect("the memory store holds");
    assert_eq!(report.rules, 6);
    assert!(report.faults > 0, "no fault was injected: {report}");
    // Forced refreshes only: the authority served at least one per session per round that reached it.
    assert!(report.refreshes >= 12, "{report}");
    assert!(report.final_generation.0 >= 12, "{report}");
}

#[test]
fn a_file_store_passes_shared() {
    let directory = std::env::temp_dir().join(format!("freshen-store-check-{}", std::process::id()));
    std::fs::create_dir_all(&directory).expect("a temporary directory");
    let path = directory.join("session.json");
    let result = runtime().block_on(check_store(|| freshen::store::FileStore::new(&path), &quick(true)));
    let _ = std::fs::remove_dir_all(&directory);
    let report = result.expect("the file store holds");
    assert_eq!(report.rules, 6);
}

/// A memory store with one flaw planted.
#[derive(Clone, Debug, Default)]
struct Planted {
    inner: MemoryStore,
    flaw: Flaw,
    writes: Arc<AtomicU64>,
}

#[derive(Clone, Copy, Debug, Default)]
enum Flaw {
    #[default]
    None,
    /// Its lock is a no-op.
    NoLock,
    /// Every write after this many is dropped (reported as done).
    DropsWritesAfter(u64),
}

impl Planted {
    fn with(flaw: Flaw) -> Self {
        Self { flaw, ..Self::default() }
    }
}

impl Store for Planted {
    async fn load(&self) -> Result<Option<StoredSession>, StoreError> {
        self.inner.load().await
    }
    async fn save(&self, session: &StoredSession) -> Result<(), StoreError> {
        let writes = self.writes.fetch_add(1, Ordering::SeqCst) + 1;
        match self.flaw {
            Flaw::DropsWritesAfter(kept) if writes > kept => Ok(()),
            _ => self.inner.save(session).await,
        }
    }
    async fn clear(&self) -> Result<(), StoreError> {
        self.inner.clear().await
    }
    async fn lock(&self) -> Result<StoreLock, StoreError> {
        match self.flaw {
            Flaw::NoLock => Ok(StoreLock::new(())),
            _ => self.inner.lock().await,
        }
    }
}

#[test]
fn a_store_whose_handles_do_not_share_is_caught() {
    // Each open makes a new memory store: a save never reaches another handle.
    let violation = runtime().block_on(check_store(Planted::default, &quick(false))).expect_err("caught");
    assert_eq!(violation.rule, "a save is read back whole by another handle", "{violation}");
}

#[test]
fn a_lock_that_does_not_exclude_is_caught_by_the_contract() {
    let place = Planted::with(Flaw::NoLock);
    let violation = runtime().block_on(check_contract(|| place.clone(), &quick(true))).expect_err("caught");
    assert_eq!(violation.rule, "a held lock keeps another handle waiting until it is dropped", "{violation}");
}

#[test]
fn a_lock_that_does_not_exclude_loses_the_session_under_load() {
    // Without the contract phase: sessions in three processes spend one
    // refresh token twice, and the authority's reuse detection ends them.
    // The check's answers take a moment, so the first round already clashes
    // (before, it relied on real time: 60 rounds once still let it through
    // on a loaded machine).
    let place = Planted::with(Flaw::NoLock);
    let check = StoreCheck { faults_per_mille: 0, rounds: 2, ..quick(true) };
    let violation = runtime().block_on(check_under_faults(|| place.clone(), &check)).expect_err("caught");
    assert_eq!(violation.rule, "no session is logged out while its store fails now and then", "{violation}");
}

#[test]
fn a_store_that_loses_writes_is_caught_at_the_end() {
    // The contract phase writes 18 times and the login is the 19th: every
    // rotation after it is lost.
    let place = Planted::with(Flaw::DropsWritesAfter(19));
    let check = StoreCheck { faults_per_mille: 0, ..quick(false) };
    let violation = runtime().block_on(check_store(|| place.clone(), &check)).expect_err("caught");
    assert_eq!(violation.rule, "the store ends holding the newest tokens, still valid", "{violation}");
}
