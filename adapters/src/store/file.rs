//! [`FileStore`]: a session in a private file, shared between processes
//! under an OS file lock.

use core::sync::atomic::{AtomicU64, Ordering};
use std::fs::File;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use freshen_core::stored::{MAX_BLOB_BYTES, StoredSession};
use secrecy::ExposeSecret;
use secrecy::zeroize::Zeroizing;

use super::lock_file::{LockFile, private_file};
use super::{Store, StoreError, StoreLock};

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

impl Store for FileStore {
    async fn load(&self) -> Result<Option<StoredSession>, StoreError> {
        self.blocking(|path| {
            let file = match File::open(path) {
                Ok(file) => file,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(_) => return Err(StoreError::Unavailable("the session file cannot be opened")),
            };
            // Read one byte past the limit, so an oversized file is reported as
            // such, into a buffer that never grows and is wiped (see `freshen_core::scrub`).
            let limit = MAX_BLOB_BYTES + 1;
            let mut bytes = Zeroizing::new(Vec::with_capacity(limit));
            file.take(u64::try_from(limit).unwrap_or(u64::MAX))
                .read_to_end(&mut bytes)
                .map_err(|_| StoreError::Unavailable("the session file cannot be read"))?;
            StoredSession::decode(&bytes).map(Some).map_err(StoreError::Corrupt)
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
