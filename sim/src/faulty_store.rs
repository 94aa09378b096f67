//! One store double for every test: any [`Store`] behind a fault layer.
//!
//! A session's promises are tested where stores misbehave: a write that
//! fails before it lands, one that lands and still reports a failure (the
//! keyring daemon answered, then the reply was lost), a read that fails. A
//! [`FaultyStore`] wraps a real store (a [`MemoryStore`] in the simulations
//! and the driver's tests, the app's own in
//! [`store_check`](crate::store_check)) and asks its [`StoreFaults`] before
//! each operation. The faults are seeded dice at a rate, and failures a test
//! scripts ("the next two writes fail"); several handles may share one
//! `StoreFaults`, as processes share one keyring.
//!
//! ```
//! # async fn run() {
//! use std::sync::Arc;
//! use freshen::store::{MemoryStore, Store};
//! use freshen_core::stored::StoredSession;
//! use freshen_core::token::RefreshToken;
//! use freshen_sim::faulty_store::{FaultyStore, StoreFaults};
//!
//! let faults = Arc::new(StoreFaults::seeded(7).with_write_failures(100));
//! let store = FaultyStore::new(MemoryStore::new(), Arc::clone(&faults));
//! faults.fail_next_writes(1);
//! let session = StoredSession::refresh_only(RefreshToken::new("r1"));
//! assert!(store.save(&session).await.is_err(), "a scripted failure comes first");
//! assert!(store.inner().peek().is_none(), "and it failed before landing");
//! # }
//! ```

use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use freshen::store::{MemoryStore, Store, StoreError, StoreLock};
use freshen_core::ids::Generation;
use freshen_core::rng::SplitMix64;
use freshen_core::stored::StoredSession;

/// The error an injected failure reports.
pub const INJECTED: StoreError = StoreError::Unavailable("a store failure the testkit injected");

/// What fails, and when: seeded dice at a rate per kind of operation, and
/// failures scripted by a test. Shared by every handle that should fail
/// together.
#[derive(Debug)]
pub struct StoreFaults {
    rng: Mutex<SplitMix64>,
    /// Saves and clears failing, parts per thousand.
    write_per_mille: u16,
    /// Loads and locks failing, parts per thousand.
    read_per_mille: u16,
    quiet: AtomicBool,
    hung_writes: AtomicBool,
    scripted_writes: AtomicUsize,
    lock_lost: AtomicBool,
    failed: AtomicU64,
    writes: AtomicU64,
    locks: AtomicU64,
}

/// How one operation fails, if it does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// Before it reached the store.
    Before,
    /// After the store carried it out: the caller hears of a failure that landed.
    AfterLanding,
}

impl StoreFaults {
    /// Nothing fails until a test scripts it.
    pub fn none() -> Self {
        Self::seeded(0)
    }

    /// Dice seeded with `seed`, at rate zero until set.
    pub fn seeded(seed: u64) -> Self {
        Self {
            rng: Mutex::new(SplitMix64::new(seed)),
            write_per_mille: 0,
            read_per_mille: 0,
            quiet: AtomicBool::new(false),
            hung_writes: AtomicBool::new(false),
            scripted_writes: AtomicUsize::new(0),
            lock_lost: AtomicBool::new(false),
            failed: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            locks: AtomicU64::new(0),
        }
    }

    /// Saves and clears fail `per_mille` times in a thousand, half of them
    /// after the write landed.
    #[must_use]
    pub fn with_write_failures(mut self, per_mille: u16) -> Self {
        self.write_per_mille = per_mille.min(1000);
        self
    }

    /// Loads and locks fail `per_mille` times in a thousand (before reading).
    #[must_use]
    pub fn with_read_failures(mut self, per_mille: u16) -> Self {
        self.read_per_mille = per_mille.min(1000);
        self
    }

    /// While quiet, the dice are not rolled: nothing fails but what a test
    /// scripted. A world heals its store this way.
    pub fn quiet(&self, quiet: bool) {
        self.quiet.store(quiet, Ordering::SeqCst);
    }

    /// From now on (until `false`), saves and clears never return: a keyring
    /// daemon that stopped answering. Nothing lands.
    pub fn hang_writes(&self, hung: bool) {
        self.hung_writes.store(hung, Ordering::SeqCst);
    }

    /// The next `n` saves or clears fail before landing, quiet or not.
    pub fn fail_next_writes(&self, n: usize) {
        self.scripted_writes.store(n, Ordering::SeqCst);
    }

    /// The lock taken last is lost, as a database's is when its holder
    /// stalls past its bound and another process takes it: saves and
    /// clears are refused [`StoreError::Fenced`] (nothing lands) until a
    /// lock is taken again. Shared by every handle, as the faults are.
    pub fn lose_lock(&self) {
        self.lock_lost.store(true, Ordering::SeqCst);
    }

    /// Locks taken so far.
    pub fn locks(&self) -> u64 {
        self.locks.load(Ordering::Relaxed)
    }

    /// Operations failed so far, dice and script.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// Saves and clears attempted so far, failed or not.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    async fn hang_if_asked(&self) {
        if self.hung_writes.load(Ordering::SeqCst) {
            core::future::pending::<()>().await;
        }
    }

    fn fenced(&self) -> Result<(), StoreError> {
        if self.lock_lost.load(Ordering::SeqCst) {
            self.failed.fetch_add(1, Ordering::Relaxed);
            return Err(StoreError::Fenced);
        }
        Ok(())
    }

    fn locked(&self) {
        self.locks.fetch_add(1, Ordering::Relaxed);
        self.lock_lost.store(false, Ordering::SeqCst);
    }

    fn roll_write(&self) -> Option<Fault> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        let scripted = self.scripted_writes.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        let fault = if scripted.is_ok() {
            Some(Fault::Before)
        } else {
            // One draw for whether it fails, one for whether it landed first.
            self.roll(self.write_per_mille)
                .map(|landed_first| if landed_first { Fault::AfterLanding } else { Fault::Before })
        };
        self.count(fault)
    }

    fn roll_read(&self) -> Option<Fault> {
        // A read that fails after it read has nothing to show for it: it failed.
        self.count(self.roll(self.read_per_mille).map(|_| Fault::Before))
    }

    /// `Some(second draw)` when the dice say fail; no draw at rate zero or
    /// while quiet, so a quiet store does not shift anyone's stream.
    fn roll(&self, per_mille: u16) -> Option<bool> {
        if per_mille == 0 || self.quiet.load(Ordering::SeqCst) {
            return None;
        }
        let mut rng = self.rng.lock().ok()?;
        rng.chance(u64::from(per_mille), 1000).then(|| rng.chance(1, 2))
    }

    fn count(&self, fault: Option<Fault>) -> Option<Fault> {
        if fault.is_some() {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        fault
    }
}

/// `inner` behind [`StoreFaults`]. Clones share the store (if `S`'s clones
/// do) and the faults.
#[derive(Debug)]
pub struct FaultyStore<S> {
    inner: S,
    faults: Arc<StoreFaults>,
}

/// The memory store behind faults: the double of the simulations and tests.
pub type FaultyMemoryStore = FaultyStore<MemoryStore>;

impl<S: Clone> Clone for FaultyStore<S> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone(), faults: Arc::clone(&self.faults) }
    }
}

impl<S: Default> Default for FaultyStore<S> {
    /// An empty store that fails only where a test scripts it.
    fn default() -> Self {
        Self::new(S::default(), Arc::new(StoreFaults::none()))
    }
}

impl<S> FaultyStore<S> {
    /// `inner`, failing as `faults` says.
    pub fn new(inner: S, faults: Arc<StoreFaults>) -> Self {
        Self { inner, faults }
    }

    /// The store behind the faults (to read what truly landed).
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The faults, to script failures, quiet them or count them.
    pub fn faults(&self) -> &StoreFaults {
        &self.faults
    }
}

impl FaultyMemoryStore {
    /// A memory store that holds `session`, failing only where a test scripts it.
    pub fn holding(session: &StoredSession) -> Self {
        Self::new(MemoryStore::holding(session), Arc::new(StoreFaults::none()))
    }

    /// The generation the store holds, if it holds a readable session.
    pub fn generation(&self) -> Option<Generation> {
        self.inner.peek().and_then(Result::ok).map(|stored| stored.generation)
    }
}

impl<S: Store> FaultyStore<S> {
    async fn run<T>(
        &self,
        fault: Option<Fault>,
        op: impl core::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match fault {
            None => op.await,
            Some(Fault::Before) => Err(INJECTED),
            Some(Fault::AfterLanding) => op.await.and(Err(INJECTED)),
        }
    }
}

impl<S: Store> Store for FaultyStore<S> {
    async fn load(&self) -> Result<Option<StoredSession>, StoreError> {
        self.run(self.faults.roll_read(), self.inner.load()).await
    }

    async fn save(&self, session: &StoredSession) -> Result<(), StoreError> {
        self.faults.hang_if_asked().await;
        self.faults.fenced()?;
        self.run(self.faults.roll_write(), self.inner.save(session)).await
    }

    async fn clear(&self) -> Result<(), StoreError> {
        self.faults.hang_if_asked().await;
        self.faults.fenced()?;
        self.run(self.faults.roll_write(), self.inner.clear()).await
    }

    async fn lock(&self) -> Result<StoreLock, StoreError> {
        let lock = self.run(self.faults.roll_read(), self.inner.lock()).await?;
        self.faults.locked();
        Ok(lock)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use freshen_core::token::RefreshToken;

    fn session(generation: u64) -> StoredSession {
        let mut session = StoredSession::refresh_only(RefreshToken::new(format!("r{generation}")));
        session.generation = Generation(generation);
        session
    }

    fn block_on<F: core::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(future)
    }

    #[test]
    fn scripted_write_failures_fail_before_landing_then_stop() {
        block_on(async {
            let store = FaultyMemoryStore::holding(&session(1));
            store.faults().fail_next_writes(2);
            assert_eq!(store.save(&session(2)).await, Err(INJECTED));
            assert_eq!(store.clear().await, Err(INJECTED));
            assert_eq!(store.generation(), Some(Generation(1)), "neither landed");
            store.save(&session(3)).await.unwrap();
            assert_eq!(store.generation(), Some(Generation(3)));
            assert_eq!((store.faults().writes(), store.faults().failed()), (3, 2));
        });
    }

    #[test]
    fn a_lost_lock_fences_writes_until_the_lock_is_taken_again() {
        block_on(async {
            let store = FaultyMemoryStore::holding(&session(1));
            let lost = store.lock().await.unwrap();
            store.faults().lose_lock();
            assert_eq!(store.save(&session(2)).await, Err(StoreError::Fenced));
            assert_eq!(store.clear().await, Err(StoreError::Fenced));
            assert_eq!(store.generation(), Some(Generation(1)), "nothing landed");
            drop(lost);
            let _again = store.lock().await.unwrap();
            store.save(&session(3)).await.unwrap();
            assert_eq!((store.faults().locks(), store.faults().failed()), (2, 2));
        });
    }

    #[test]
    fn dice_fail_writes_at_their_rate_half_of_them_after_landing() {
        block_on(async {
            let faults = Arc::new(StoreFaults::seeded(11).with_write_failures(500));
            let store = FaultyStore::new(MemoryStore::new(), Arc::clone(&faults));
            let (mut failed, mut landed_anyway) = (0, 0);
            for generation in 1..=400 {
                if store.save(&session(generation)).await.is_err() {
                    failed += 1;
                    landed_anyway += u32::from(store.generation() == Some(Generation(generation)));
                }
            }
            assert!((150..=250).contains(&failed), "{failed} of 400 at 50 %");
            assert!(landed_anyway > failed / 4 && landed_anyway < failed * 3 / 4, "{landed_anyway} of {failed}");
            assert_eq!(faults.failed(), u64::from(failed));
            assert!(store.load().await.is_ok(), "reads do not fail at a read rate of zero");
        });
    }

    #[test]
    fn a_quiet_store_fails_nothing_and_draws_nothing() {
        block_on(async {
            let faults = Arc::new(StoreFaults::seeded(3).with_write_failures(1000).with_read_failures(1000));
            let store = FaultyStore::new(MemoryStore::new(), Arc::clone(&faults));
            assert!(matches!(store.load().await, Err(INJECTED)));
            faults.quiet(true);
            let before = faults.rng.lock().unwrap().clone();
            store.save(&session(1)).await.unwrap();
            assert!(store.lock().await.is_ok());
            assert_eq!(*faults.rng.lock().unwrap(), before, "no draw while quiet");
        });
    }

    #[test]
    fn clones_share_the_store_and_the_faults() {
        block_on(async {
            let store = FaultyMemoryStore::default();
            let other = store.clone();
            store.faults().fail_next_writes(1);
            assert!(other.save(&session(1)).await.is_err());
            store.save(&session(2)).await.unwrap();
            assert_eq!(other.generation(), Some(Generation(2)));
        });
    }
}
