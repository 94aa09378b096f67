//! [`KeyringStore`]: the session as one entry in the OS keyring.

use core::fmt;
use std::sync::Arc;

use freshen_core::stored::{DecodeError, StoredSession};
use keyring_core::{CredentialStore, Entry};
use secrecy::ExposeSecret;
use secrecy::zeroize::Zeroizing;

use super::{LockFile, Store, StoreError, StoreLock};

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

    /// The platform's own keyring: the Secret Service on Linux (a desktop
    /// session), the login Keychain on macOS, the Credential Manager on
    /// Windows. Headless Linux servers use [`KeyringStore::keyutils`].
    #[cfg(any(target_os = "linux", target_os = "macos", target_os = "windows"))]
    #[cfg_attr(docsrs, doc(cfg(any(target_os = "linux", target_os = "macos", target_os = "windows"))))]
    pub fn native(service: impl Into<String>, user: impl Into<String>) -> Result<Self, StoreError> {
        #[cfg(target_os = "linux")]
        return Self::secret_service(service, user);
        #[cfg(target_os = "macos")]
        return Self::keychain(service, user);
        #[cfg(target_os = "windows")]
        return Self::credential_manager(service, user);
    }

    /// The entry in the desktop's Secret Service (GNOME Keyring, KWallet) over
    /// D-Bus. Read once here, so a missing or locked service fails now, not
    /// at the session's first write.
    #[cfg(target_os = "linux")]
    #[cfg_attr(docsrs, doc(cfg(target_os = "linux")))]
    pub fn secret_service(service: impl Into<String>, user: impl Into<String>) -> Result<Self, StoreError> {
        Self::platform(
            zbus_secret_service_keyring_store::Store::new(),
            "no Secret Service on the session bus",
            service,
            user,
            Probe::Read,
        )
    }

    /// The entry in the kernel's keyutils (headless servers). Written and
    /// removed once here under a probe name: without a session keyring
    /// (`keyctl session`, or a login session) the kernel refuses writes, and
    /// that fails now, not at the session's first write.
    #[cfg(target_os = "linux")]
    #[cfg_attr(docsrs, doc(cfg(target_os = "linux")))]
    pub fn keyutils(service: impl Into<String>, user: impl Into<String>) -> Result<Self, StoreError> {
        Self::platform(
            linux_keyutils_keyring_store::Store::new(),
            "kernel keyutils unavailable",
            service,
            user,
            Probe::Write,
        )
    }

    /// The entry in the macOS login Keychain. Read once here, so a keychain
    /// that cannot be reached fails now.
    #[cfg(target_os = "macos")]
    #[cfg_attr(docsrs, doc(cfg(target_os = "macos")))]
    pub fn keychain(service: impl Into<String>, user: impl Into<String>) -> Result<Self, StoreError> {
        Self::platform(
            apple_native_keyring_store::keychain::Store::new(),
            "the macOS Keychain is unavailable",
            service,
            user,
            Probe::Read,
        )
    }

    /// The entry in the Windows Credential Manager. Read once here, so a
    /// store that cannot be reached fails now.
    #[cfg(target_os = "windows")]
    #[cfg_attr(docsrs, doc(cfg(target_os = "windows")))]
    pub fn credential_manager(service: impl Into<String>, user: impl Into<String>) -> Result<Self, StoreError> {
        Self::platform(
            windows_native_keyring_store::Store::new(),
            "the Windows Credential Manager is unavailable",
            service,
            user,
            Probe::Read,
        )
    }

    /// The entry `service`/`user` in a platform's keyring, once `probe`
    /// found it working; `missing` says why when the keyring is not there.
    #[cfg(any(target_os = "linux", target_os = "macos", target_os = "windows"))]
    fn platform<K: keyring_core::api::CredentialStoreApi + Send + Sync + 'static>(
        credentials: keyring_core::Result<Arc<K>>,
        missing: &'static str,
        service: impl Into<String>,
        user: impl Into<String>,
        probe: Probe,
    ) -> Result<Self, StoreError> {
        let credentials = credentials.map_err(|_| StoreError::Unavailable(missing))?;
        Self::new(credentials, service, user).probed(probe)
    }

    /// Tries the keyring once, so one that cannot work fails at construction.
    /// A read of the entry itself (missing or unreadable is fine: that is
    /// the session's business); a write probe goes to an entry of its own.
    /// Blocks for one platform call.
    #[cfg(any(target_os = "linux", target_os = "macos", target_os = "windows"))]
    fn probed(self, probe: Probe) -> Result<Self, StoreError> {
        use keyring_core::Error as K;
        match probe {
            Probe::Read => match self.entry()?.get_password() {
                Ok(_) | Err(K::NoEntry | K::BadEncoding(_) | K::BadDataFormat(..)) => Ok(self),
                Err(error) => Err(unavailable(&error)),
            },
            Probe::Write => {
                let user = format!("{}.freshen-probe", self.user);
                let entry =
                    Entry::new_in_store(&self.credentials, &self.service, &user).map_err(|e| unavailable(&e))?;
                entry.set_password("probe").map_err(|e| unavailable(&e))?;
                match entry.delete_credential() {
                    Ok(()) | Err(K::NoEntry) => Ok(self),
                    Err(error) => Err(unavailable(&error)),
                }
            }
        }
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

/// How [`KeyringStore::probed`] tries a keyring.
#[cfg(any(target_os = "linux", target_os = "macos", target_os = "windows"))]
#[cfg_attr(not(target_os = "linux"), allow(dead_code))] // only keyutils writes
#[derive(Clone, Copy, Debug)]
enum Probe {
    Read,
    Write,
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
                let blob = Zeroizing::new(blob);
                StoredSession::decode(blob.as_bytes()).map(Some).map_err(StoreError::Corrupt)
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
