//! Checks a store the way a session relies on it, here freshen's own
//! `FileStore`: swap in your own `Store` to check it before you ship it.
//!
//! ```text
//! cargo run -p freshen-sim --example check_file_store
//! ```
//!
//! First the contract (what a save, a clear and the lock must do, across
//! handles), then three processes' sessions forcing refreshes against a strict
//! authority (rotation, reuse detection, no grace) while one store operation
//! in ten fails. A broken rule exits 1 and names it.

#![allow(clippy::print_stdout, clippy::print_stderr)] // an example reports on its terminal

use std::process::ExitCode;

use freshen::store::FileStore;
use freshen_sim::store_check::{StoreCheck, check_store};

#[tokio::main]
async fn main() -> ExitCode {
    let directory = std::env::temp_dir().join(format!("freshen-check-file-store-{}", std::process::id()));
    if let Err(error) = std::fs::create_dir_all(&directory) {
        eprintln!("cannot create {}: {error}", directory.display());
        return ExitCode::FAILURE;
    }
    let path = directory.join("session.json");
    // Each call opens a new handle on the same file, as a new process would.
    let result = check_store(|| FileStore::new(&path), &StoreCheck::shared()).await;
    let _ = std::fs::remove_dir_all(&directory);
    match result {
        Ok(report) => {
            println!("FileStore: {report}");
            ExitCode::SUCCESS
        }
        Err(violation) => {
            eprintln!("FileStore: {violation}");
            ExitCode::FAILURE
        }
    }
}
