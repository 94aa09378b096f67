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
use core::sync::atomic::{AtomicU64, Ordering};
use core::time::Duration;
use std::fs::File;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use freshen_core::stored::{DecodeError, MAX_BLOB_BYTES, StoredSession};
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
    /// long as it takes: the session bounds the wait
    /// ([`SessionConfig::lock_wait`](freshen_core::session::SessionConfig::lock_wait))
    /// by dropping this future. Used only with
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

/// A session in a file, for CLIs and services that share it between
/// processes (or that have no keyring). Writes replace the file atomically (a
/// temporary file renamed over it), so a reader sees the old session or the
/// new one, never half of each. On Unix the file is private to its owner
/// (mode 0600). Its lock is an OS file lock on `<path>.lock`, which the kernel
/// drops when the holder exits or is killed.
#[derive(Clone, Debug)]
pub struct FileStore {
    path: PathBuf,
    lock: LockFile,
}

impl FileStore {
    /// The session kept at `path` (its directory must exist).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let mut lock_path = path.clone().into_os_string();
        lock_path.push(".lock");
        Self { path, lock: LockFile::new(lock_path) }
    }

    /// Where the session is kept.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn blocking<T: Send + 'static>(
        &self,
        op: impl FnOnce(&Path) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || op(&path))
            .await
            .map_err(|_| StoreError::Unavailable("file store call panicked or was cancelled"))?
    }
}

fn private_file(path: &Path, create: bool) -> std::io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true).create(create);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

impl Store for FileStore {
    async fn load(&self) -> Result<Option<StoredSession>, StoreError> {
        self.blocking(|path| {
            let file = match File::open(path) {
                Ok(file) => file,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(_) => return Err(StoreError::Unavailable("the session file cannot be opened")),
            };
            // Read one byte past the limit, so an oversized file is reported as such.
            let limit = u64::try_from(MAX_BLOB_BYTES).unwrap_or(u64::MAX).saturating_add(1);
            let mut bytes = Vec::new();
            file.take(limit)
                .read_to_end(&mut bytes)
                .map_err(|_| StoreError::Unavailable("the session file cannot be read"))?;
            let bytes = secrecy::SecretSlice::from(bytes);
            StoredSession::decode(bytes.expose_secret()).map(Some).map_err(StoreError::Corrupt)
        })
        .await
    }

    async fn save(&self, session: &StoredSession) -> Result<(), StoreError> {
        let blob = session.encode();
        self.blocking(move |path| {
            // A name of its own per write: two sessions in one process (or two
            // writes racing) never share a temporary file.
            static WRITES: AtomicU64 = AtomicU64::new(0);
            let mut temporary = path.to_path_buf().into_os_string();
            temporary.push(format!(".{}.{}.tmp", std::process::id(), WRITES.fetch_add(1, Ordering::Relaxed)));
            let temporary = PathBuf::from(temporary);
            let written = (|| {
                let mut file = private_file(&temporary, true)?;
                file.set_len(0)?;
                file.write_all(blob.expose_secret().as_bytes())?;
                file.sync_all()?;
                std::fs::rename(&temporary, path)?;
                // The rename is durable only once the directory is: without
                // this, a power loss may bring back the old session after the
                // new tokens were handed out (and the old refresh token is
                // already spent under rotation).
                sync_directory_of(path)
            })();
            written.map_err(|_| {
                let _ = std::fs::remove_file(&temporary);
                StoreError::Unavailable("the session file cannot be written")
            })
        })
        .await
    }

    async fn clear(&self) -> Result<(), StoreError> {
        self.blocking(|path| match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(_) => Err(StoreError::Unavailable("the session file cannot be removed")),
        })
        .await
    }

    async fn lock(&self) -> Result<StoreLock, StoreError> {
        self.lock.lock().await
    }
}

/// Flushes the directory holding `path`, so a rename into it survives a power loss.
fn sync_directory_of(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let directory = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        std::fs::File::open(directory)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        // Windows cannot open a directory as a file; NTFS journals the rename.
        let _ = path;
        Ok(())
    }
}

/// A cross-process lock: an OS file lock (`flock`) on a file of its own,
/// which the kernel releases when the process holding it exits or is killed.
/// [`FileStore`] uses one; [`KeyringStore::with_lock_file`] adds one to a
/// keyring entry that several processes share.
#[derive(Clone, Debug)]
pub struct LockFile {
    path: PathBuf,
}

impl LockFile {
    /// A lock on `path` (created, mode 0600, if missing; its directory must exist).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// Takes the lock, however long that takes; drop the future to stop
    /// waiting. It polls a non-blocking `flock` (a thread blocked in `flock`
    /// could not be called back), backing off from 1 ms to 50 ms.
    pub async fn lock(&self) -> Result<StoreLock, StoreError> {
        let file =
            private_file(&self.path, true).map_err(|_| StoreError::Unavailable("the lock file cannot be opened"))?;
        let mut pause = Duration::from_millis(1);
        loop {
            match fs4::FileExt::try_lock(&file) {
                // Closing the file (dropping the lock) releases the flock.
                Ok(()) => return Ok(StoreLock::new(file)),
                Err(fs4::TryLockError::WouldBlock) => {}
                Err(fs4::TryLockError::Error(_)) => {
                    return Err(StoreError::Unavailable("the lock file cannot be locked"));
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
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
    lock: Option<LockFile>,
}

impl fmt::Debug for KeyringStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyringStore")
            .field("vendor", &self.credentials.vendor())
            .field("service", &self.service)
            .field("user", &self.user)
            .field("lock", &self.lock)
            .finish()
    }
}

impl KeyringStore {
    /// The entry `service`/`user` in `credentials`.
    pub fn new(credentials: Arc<CredentialStore>, service: impl Into<String>, user: impl Into<String>) -> Self {
        Self { credentials, service: service.into(), user: user.into(), lock: None }
    }

    /// The same entry, shared between processes under `lock` (a keyring has
    /// no lock of its own): needed with
    /// [`SessionConfig::shared_store`](freshen_core::session::SessionConfig::shared_store).
    #[must_use]
    pub fn with_lock_file(mut self, lock: LockFile) -> Self {
        self.lock = Some(lock);
        self
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

    async fn lock(&self) -> Result<StoreLock, StoreError> {
        match &self.lock {
            Some(lock) => lock.lock().await,
            None => Err(StoreError::Unavailable("a keyring store needs with_lock_file to be shared")),
        }
    }
}
