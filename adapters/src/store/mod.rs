//! Where the session is kept between runs.
//!
//! The whole session is one entry: the core's versioned blob
//! ([`StoredSession::encode`]), so an update is one atomic write. A
//! [`Store`] loads, saves and clears that entry; the session issues one
//! operation at a time, so a store needs no ordering of its own.
//!
//! A store that several processes share (a CLI run twice at once, an app and
//! its helper) also provides a cross-process lock ([`Store::lock`]); with
//! [`SessionConfig::shared_store`](freshen_core::session::SessionConfig::shared_store)
//! on, each refresh runs under it, so the processes refresh one at a time and
//! each adopts what another wrote. [`FileStore`] locks with an OS file lock,
//! which the kernel releases when its holder dies: a killed process can never
//! leave the others locked out.

use core::fmt;
use core::future::Future;
use std::sync::{Arc, Mutex};

use freshen_core::stored::{DecodeError, StoredSession};
use secrecy::{ExposeSecret, SecretString};
use thiserror::Error;

pub use crate::any::BoxStore;

#[cfg(feature = "file-store")]
mod file;
#[cfg(feature = "keyring")]
mod keyring;
#[cfg(any(feature = "file-store", feature = "keyring"))]
mod lock_file;
#[cfg(feature = "postgres")]
mod postgres;

#[cfg(feature = "file-store")]
#[cfg_attr(docsrs, doc(cfg(feature = "file-store")))]
pub use file::FileStore;
#[cfg(feature = "keyring")]
#[cfg_attr(docsrs, doc(cfg(feature = "keyring")))]
pub use keyring::KeyringStore;
#[cfg(any(feature = "file-store", feature = "keyring"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "file-store", feature = "keyring"))))]
pub use lock_file::LockFile;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use postgres::{LOCK_APPLICATION_NAME, Postgres, PostgresSettings, PostgresSetupError, PostgresStore};

/// Why a store operation failed. Never carries the stored bytes.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store could not be reached or refused (locked keyring, no daemon,
    /// I/O error); worth retrying.
    #[error("the credential store is unavailable: {0}")]
    Unavailable(&'static str),
    /// The stored entry cannot be decoded. It is left in place.
    #[error("the stored session is unreadable: {0}")]
    Corrupt(DecodeError),
    /// A write under the store's lock was refused because another process
    /// took the lock since (this one lost it: its connection was cut, or it
    /// stalled past the lock's bound). Nothing was written; what the store
    /// holds is newer than what this process knows.
    #[error("the write was fenced off: another process holds the session's lock now")]
    Fenced,
}

impl From<StoreError> for freshen_core::session::StoreError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Unavailable(_) => Self::Unavailable,
            StoreError::Fenced => Self::Fenced,
            StoreError::Corrupt(decode) => Self::Corrupt(decode),
        }
    }
}

/// The cross-process lock of a shared store, held until dropped.
pub struct StoreLock {
    _held: Box<dyn Send + Sync>,
}

impl StoreLock {
    /// A lock that is released when `guard` is dropped.
    pub fn new(guard: impl Send + Sync + 'static) -> Self {
        Self { _held: Box::new(guard) }
    }
}

impl fmt::Debug for StoreLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StoreLock")
    }
}

/// Keeps one session.
pub trait Store: Send + Sync + 'static {
    /// Reads the session; `None` when there is none.
    fn load(&self) -> impl Future<Output = Result<Option<StoredSession>, StoreError>> + Send;
    /// Replaces the session, in one write.
    fn save(&self, session: &StoredSession) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Deletes the session; deleting nothing is not an error.
    fn clear(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Takes the lock every process sharing this store honours, waiting as
    /// long as it takes: the session's machine bounds the wait
    /// ([`SessionConfig::lock_wait`](freshen_core::session::SessionConfig::lock_wait))
    /// and the driver then drops this future. Used only with
    /// [`SessionConfig::shared_store`](freshen_core::session::SessionConfig::shared_store);
    /// a store that cannot be shared keeps this default, which refuses.
    fn lock(&self) -> impl Future<Output = Result<StoreLock, StoreError>> + Send {
        core::future::ready(Err(StoreError::Unavailable("this store has no cross-process lock")))
    }
}

/// A store in memory: for tests, and for sessions that need not outlive the
/// process. It keeps the encoded blob, so it exercises the same codec as a
/// real store. Clones share the same entry.
/// Its lock is shared by its clones, so sessions in one process sharing a
/// `MemoryStore` behave like processes sharing a file.
#[derive(Clone, Default)]
pub struct MemoryStore {
    blob: Arc<Mutex<Option<SecretString>>>,
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// A store that already holds `session`.
    pub fn holding(session: &StoredSession) -> Self {
        Self { blob: Arc::new(Mutex::new(Some(session.encode()))), lock: Arc::default() }
    }

    /// What it holds now, decoded (for tests).
    pub fn peek(&self) -> Option<Result<StoredSession, DecodeError>> {
        let blob = self.blob.lock().ok()?.clone()?;
        Some(StoredSession::decode(blob.expose_secret().as_bytes()))
    }

    fn with<T>(&self, f: impl FnOnce(&mut Option<SecretString>) -> T) -> Result<T, StoreError> {
        let mut guard = self.blob.lock().map_err(|_| StoreError::Unavailable("memory store poisoned"))?;
        Ok(f(&mut guard))
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore").finish_non_exhaustive()
    }
}

impl Store for MemoryStore {
    async fn load(&self) -> Result<Option<StoredSession>, StoreError> {
        match self.with(|blob| blob.clone())? {
            None => Ok(None),
            Some(blob) => StoredSession::decode(blob.expose_secret().as_bytes()).map(Some).map_err(StoreError::Corrupt),
        }
    }

    async fn save(&self, session: &StoredSession) -> Result<(), StoreError> {
        let encoded = session.encode();
        self.with(|blob| *blob = Some(encoded))
    }

    async fn clear(&self) -> Result<(), StoreError> {
        self.with(|blob| *blob = None)
    }

    async fn lock(&self) -> Result<StoreLock, StoreError> {
        Ok(StoreLock::new(Arc::clone(&self.lock).lock_owned().await))
    }
}
