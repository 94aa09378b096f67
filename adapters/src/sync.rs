//! The concurrency primitives the coordination unit uses, in one place, so a
//! model checker can replace them: with `--cfg freshen_loom` they come from
//! loom, otherwise from std and arc-swap.

#[cfg(freshen_loom)]
pub(crate) use loom::sync::{Arc, Mutex, MutexGuard};
#[cfg(not(freshen_loom))]
pub(crate) use std::sync::{Arc, Mutex, MutexGuard};

/// Locks, recovering from poisoning: the state behind every lock here is
/// consistent between statements (the machine is never left half-updated by
/// a panic in our code, which only runs pure functions under the lock).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// A value readers take without a lock or a task: the fast path.
///
/// A reader that keeps the value clones it, and for a value behind an `Arc`
/// that is an atomic increment of a count shared by all its clones: with one
/// `Arc`, every thread would write the same cache line on every read. So the
/// snapshot holds one copy of the value per shard (as many as the machine has
/// threads, made once per store, which is once per refresh), and each thread
/// reads its own. A reader that only borrows ([`Snapshot::with`]) writes
/// nothing at all.
#[cfg(not(freshen_loom))]
#[derive(Debug)]
pub(crate) struct Snapshot<T>(arc_swap::ArcSwapOption<Box<[T]>>);

#[cfg(not(freshen_loom))]
impl<T> Snapshot<T> {
    pub(crate) fn empty() -> Self {
        Self(arc_swap::ArcSwapOption::empty())
    }

    /// Lends this thread's copy to `f`. `arc_swap`'s `load` borrows the
    /// shards without touching a shared count.
    #[inline]
    pub(crate) fn with<R>(&self, f: impl FnOnce(Option<&T>) -> R) -> R {
        let shards = self.0.load();
        f(shards.as_ref().and_then(|shards| shards.get(shard::this_thread())))
    }

    /// Publishes a value, `copy` making each shard's copy (`None` withdraws it).
    pub(crate) fn store(&self, copy: Option<impl Fn() -> T>) {
        let shards = copy.map(|copy| Arc::new((0..shard::count()).map(|_| copy()).collect::<Box<[T]>>()));
        self.0.store(shards);
    }
}

#[cfg(not(freshen_loom))]
mod shard {
    use std::cell::Cell;
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Copies per snapshot: the machine's threads, at most 64.
    pub(super) fn count() -> usize {
        static COUNT: OnceLock<usize> = OnceLock::new();
        *COUNT.get_or_init(|| std::thread::available_parallelism().map_or(1, usize::from).clamp(1, 64))
    }

    /// This thread's shard, below [`count`]: handed out in turn, so threads
    /// spread over the shards, and reduced once per thread, not per read (a
    /// division costs more than the rest of a read's lookup). The thread-local
    /// is a constant-initialized `Cell` with "none yet" as its start, so a read
    /// is one load from thread storage, with no lazy-init state to check.
    #[inline]
    pub(super) fn this_thread() -> usize {
        const UNASSIGNED: usize = usize::MAX;
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        thread_local! {
            static SHARD: Cell<usize> = const { Cell::new(UNASSIGNED) };
        }
        SHARD.with(|shard| match shard.get() {
            UNASSIGNED => {
                let assigned = NEXT.fetch_add(1, Ordering::Relaxed) % count();
                shard.set(assigned);
                assigned
            }
            assigned => assigned,
        })
    }
}

/// Under loom the snapshot is a mutex: loom models it, and it has the same
/// observable behaviour (a reader sees the old or the new value, whole).
#[cfg(freshen_loom)]
#[derive(Debug)]
pub(crate) struct Snapshot<T>(Mutex<Option<T>>);

#[cfg(freshen_loom)]
impl<T> Snapshot<T> {
    pub(crate) fn empty() -> Self {
        Self(Mutex::new(None))
    }

    pub(crate) fn with<R>(&self, f: impl FnOnce(Option<&T>) -> R) -> R {
        f(lock(&self.0).as_ref())
    }

    pub(crate) fn store(&self, copy: Option<impl Fn() -> T>) {
        *lock(&self.0) = copy.map(|copy| copy());
    }
}
