//! `cargo bench -p freshen-bench`: the fast path against its hand-written
//! baseline, side by side in one run (divan prints both rows together).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark that cannot set up should stop

use std::sync::LazyLock;

use freshen_bench::{ACCESS_TOKEN, BenchSession};
use futures_util::FutureExt as _;
use tokio::runtime::Runtime;

static RUNTIME: LazyLock<Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime")
});

static SESSION: LazyLock<BenchSession> = LazyLock::new(|| {
    RUNTIME.block_on(freshen_bench::valid_session("http://127.0.0.1:9/token".into(), ACCESS_TOKEN)).expect("a session")
});

fn main() {
    divan::main();
}

/// A token from a valid session, on 1 and 2 threads at once.
#[divan::bench(threads = [1, 2])]
fn acquire_freshen(bencher: divan::Bencher<'_, '_>) {
    let session = &*SESSION;
    bencher.bench(|| session.access_token().now_or_never().expect("the fast path never waits").is_ok());
}

/// The baseline: `tokio::sync::RwLock<Option<String>>`, read and cloned.
#[divan::bench(threads = [1, 2])]
fn acquire_rwlock_clone(bencher: divan::Bencher<'_, '_>) {
    let lock = freshen_bench::baseline_lock(ACCESS_TOKEN);
    bencher.bench(|| lock.read().now_or_never().expect("never contended by a writer").clone());
}
