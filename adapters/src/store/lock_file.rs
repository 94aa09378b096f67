//! [`LockFile`]: the OS file lock that lets processes share a store.

use core::time::Duration;
use std::fs::File;
use std::path::{Path, PathBuf};

use super::{StoreError, StoreLock};

pub(super) fn private_file(path: &Path, create: bool) -> std::io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true).create(create);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

/// A cross-process lock: an OS file lock (`flock`) on a file of its own,
/// which the kernel releases when the process holding it exits or is killed.
/// [`FileStore`](super::FileStore) uses one;
/// [`KeyringStore::with_lock_file`](super::KeyringStore::with_lock_file) adds one to a
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
