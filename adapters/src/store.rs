//! Where the session is kept between runs.
//!
//! The whole session is one entry: the core's versioned blob
//! ([`StoredSession::encode`]), so an update is one atomic write. A
//! [`Store`] loads, saves and clears that entry; the session issues one
//! operation at a time, so a store needs no ordering of its own.

use core::fmt;
use core::future::Future;
use std::sync::{Arc, Mutex};

use freshen_core::stored::{DecodeError, StoredSession};
use keyring_core::{CredentialStore, Entry};
use secrecy::{ExposeSecret, SecretString};
use thiserror::Error;

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
}

impl From<StoreError> for freshen_core::session::StoreError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Unavailable(_) => Self::Unavailable,
            StoreError::Corrupt(decode) => Self::Corrupt(decode),
        }
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
}

/// A store in memory: for tests, and for sessions that need not outlive the
/// process. It keeps the encoded blob, so it exercises the same codec as a
/// real store. Clones share the same entry.
#[derive(Clone, Default)]
pub struct MemoryStore {
    blob: Arc<Mutex<Option<SecretString>>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// A store that already holds `session`.
    pub fn holding(session: &StoredSession) -> Self {
        Self { blob: Arc::new(Mutex::new(Some(session.encode()))) }
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
}

/// A store over keyring-core: the session is one keyring entry (service and
/// user chosen by the app). The platform call blocks, so it runs on tokio's
/// blocking pool. Entries are made in this store's own credential store, never
/// through keyring-core's process-wide default, so an app's own keyring use is
/// left alone.
#[derive(Clone)]
pub struct KeyringStore {
    credentials: Arc<CredentialStore>,
    service: String,
    user: String,
}

impl fmt::Debug for KeyringStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyringStore")
            .field("vendor", &self.credentials.vendor())
            .field("service", &self.service)
            .field("user", &self.user)
            .finish()
    }
}

impl KeyringStore {
    /// The entry `service`/`user` in `credentials`.
    pub fn new(credentials: Arc<CredentialStore>, service: impl Into<String>, user: impl Into<String>) -> Self {
        Self { credentials, service: service.into(), user: user.into() }
    }

    /// The entry in the desktop's Secret Service (GNOME Keyring, KWallet) over D-Bus.
    #[cfg(target_os = "linux")]
    pub fn secret_service(service: impl Into<String>, user: impl Into<String>) -> Result<Self, StoreError> {
        let credentials = zbus_secret_service_keyring_store::Store::new()
            .map_err(|_| StoreError::Unavailable("no Secret Service on the session bus"))?;
        Ok(Self::new(credentials, service, user))
    }

    /// The entry in the kernel's keyutils (always available on Linux; headless servers).
    #[cfg(target_os = "linux")]
    pub fn keyutils(service: impl Into<String>, user: impl Into<String>) -> Result<Self, StoreError> {
        let credentials = linux_keyutils_keyring_store::Store::new()
            .map_err(|_| StoreError::Unavailable("kernel keyutils unavailable"))?;
        Ok(Self::new(credentials, service, user))
    }

    /// The entry in keyring-core's mock store (memory only; can inject errors).
    pub fn mock(service: impl Into<String>, user: impl Into<String>) -> Result<Self, StoreError> {
        let credentials =
            keyring_core::mock::Store::new().map_err(|_| StoreError::Unavailable("mock store unavailable"))?;
        Ok(Self::new(credentials, service, user))
    }

    /// The keyring entry itself, for callers that need keyring-specific access.
    pub fn entry(&self) -> Result<Entry, StoreError> {
        Entry::new_in_store(&self.credentials, &self.service, &self.user).map_err(|e| unavailable(&e))
    }

    async fn blocking<T: Send + 'static>(
        &self,
        op: impl FnOnce(Entry) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let entry = self.entry()?;
        tokio::task::spawn_blocking(move || op(entry))
            .await
            .map_err(|_| StoreError::Unavailable("keyring call panicked or was cancelled"))?
    }
}

/// Maps a keyring error to ours without its payload: `BadEncoding` and
/// `BadDataFormat` carry the stored bytes, which hold tokens.
fn unavailable(error: &keyring_core::Error) -> StoreError {
    use keyring_core::Error as K;
    StoreError::Unavailable(match error {
        K::NoStorageAccess(_) => "the keyring refused access (locked?)",
        K::PlatformFailure(_) => "the keyring platform failed",
        K::NoDefaultStore => "no keyring store",
        K::TooLong(..) => "the session is too long for this keyring",
        K::NotSupportedByStore(_) => "operation not supported by this keyring",
        _ => "the keyring failed",
    })
}

impl Store for KeyringStore {
    async fn load(&self) -> Result<Option<StoredSession>, StoreError> {
        self.blocking(|entry| match entry.get_password() {
            Ok(blob) => {
                let blob = SecretString::from(blob);
                StoredSession::decode(blob.expose_secret().as_bytes()).map(Some).map_err(StoreError::Corrupt)
            }
            Err(keyring_core::Error::NoEntry) => Ok(None),
            Err(keyring_core::Error::BadEncoding(_) | keyring_core::Error::BadDataFormat(..)) => {
                Err(StoreError::Corrupt(DecodeError::NotAnObject))
            }
            Err(error) => Err(unavailable(&error)),
        })
        .await
    }

    async fn save(&self, session: &StoredSession) -> Result<(), StoreError> {
        let blob = session.encode();
        self.blocking(move |entry| entry.set_password(blob.expose_secret()).map_err(|e| unavailable(&e))).await
    }

    async fn clear(&self) -> Result<(), StoreError> {
        self.blocking(|entry| match entry.delete_credential() {
            Ok(()) | Err(keyring_core::Error::NoEntry) => Ok(()),
            Err(error) => Err(unavailable(&error)),
        })
        .await
    }
}
