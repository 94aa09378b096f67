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
#[cfg(not(freshen_loom))]
#[derive(Debug)]
pub(crate) struct Snapshot<T>(arc_swap::ArcSwapOption<T>);

#[cfg(not(freshen_loom))]
impl<T> Snapshot<T> {
    pub(crate) fn empty() -> Self {
        Self(arc_swap::ArcSwapOption::empty())
    }

    pub(crate) fn load(&self) -> Option<Arc<T>> {
        self.0.load_full()
    }

    pub(crate) fn store(&self, value: Option<Arc<T>>) {
        self.0.store(value);
    }
}

/// Under loom the snapshot is a mutex: loom models it, and it has the same
/// observable behaviour (a reader sees the old or the new value, whole).
#[cfg(freshen_loom)]
#[derive(Debug)]
pub(crate) struct Snapshot<T>(Mutex<Option<Arc<T>>>);

#[cfg(freshen_loom)]
impl<T> Snapshot<T> {
    pub(crate) fn empty() -> Self {
        Self(Mutex::new(None))
    }

    pub(crate) fn load(&self) -> Option<Arc<T>> {
        lock(&self.0).clone()
    }

    pub(crate) fn store(&self, value: Option<Arc<T>>) {
        *lock(&self.0) = value;
    }
}
