//! [`AnySession`]: a session over any transport and store, as one type.
//!
//! The [`Store`] and [`Transport`] traits return `impl Future`, which a trait
//! object cannot; each is erased here through a twin trait whose futures
//! are boxed, at one allocation per operation.

use core::fmt;
use core::future::Future;
use core::pin::Pin;

use freshen_core::oauth::FormRequest;
use freshen_core::stored::StoredSession;

use crate::store::{Store, StoreError, StoreLock};
use crate::transport::{HttpResponse, Transport, TransportError};
use crate::{Config, Environment, Error, Session};

/// A session over any transport and store, as one type: for struct fields,
/// axum `State` and the like, where spelling `Session<T, S>` is a burden.
/// Made by [`Session::start_any`].
pub type AnySession = Session<BoxTransport, BoxStore>;

impl AnySession {
    /// Starts a session over `transport` and `store` (see [`Session::start`]),
    /// erasing their types.
    pub fn start_any(config: Config, transport: impl Transport, store: impl Store) -> Result<Self, Error> {
        Self::start_any_in(config, transport, store, Environment::system())
    }

    /// [`AnySession::start_any`] in a chosen [`Environment`] (see [`Session::start_in`]).
    pub fn start_any_in(
        config: Config,
        transport: impl Transport,
        store: impl Store,
        environment: Environment,
    ) -> Result<Self, Error> {
        Session::start_in(config, BoxTransport::new(transport), BoxStore::new(store), environment)
    }
}

/// Declares a box over one of the twin traits, with a constructor and a
/// `Debug` that names the type it holds (`BoxStore(freshen::store::FileStore)`).
macro_rules! erased {
    ($(#[$doc:meta])* $name:ident(dyn $twin:ident) for $bound:ident) => {
        $(#[$doc])*
        pub struct $name {
            inner: Box<dyn $twin>,
            holds: &'static str,
        }

        impl $name {
            #[doc = concat!("Boxes `value`, a [`", stringify!($bound), "`].")]
            pub fn new<T: $bound>(value: T) -> Self {
                Self { inner: Box::new(value), holds: core::any::type_name::<T>() }
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_tuple(stringify!($name)).field(&format_args!("{}", self.holds)).finish()
            }
        }
    };
}

erased! {
    /// Any [`Store`] behind one type, so that sessions over different stores
    /// share a type ([`AnySession`]). Costs one allocation per store operation.
    BoxStore(dyn DynStore) for Store
}

erased! {
    /// Any [`Transport`] behind one type, so that sessions over different
    /// transports share a type ([`AnySession`]): a struct field, an axum
    /// `State`. Costs one allocation per request.
    BoxTransport(dyn DynTransport) for Transport
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// [`Store`] with its futures boxed, so it can be a trait object.
trait DynStore: Send + Sync + 'static {
    fn load(&self) -> BoxFuture<'_, Result<Option<StoredSession>, StoreError>>;
    fn save<'a>(&'a self, session: &'a StoredSession) -> BoxFuture<'a, Result<(), StoreError>>;
    fn clear(&self) -> BoxFuture<'_, Result<(), StoreError>>;
    fn lock(&self) -> BoxFuture<'_, Result<StoreLock, StoreError>>;
}

impl<S: Store> DynStore for S {
    fn load(&self) -> BoxFuture<'_, Result<Option<StoredSession>, StoreError>> {
        Box::pin(Store::load(self))
    }

    fn save<'a>(&'a self, session: &'a StoredSession) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(Store::save(self, session))
    }

    fn clear(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(Store::clear(self))
    }

    fn lock(&self) -> BoxFuture<'_, Result<StoreLock, StoreError>> {
        Box::pin(Store::lock(self))
    }
}

impl Store for BoxStore {
    fn load(&self) -> impl Future<Output = Result<Option<StoredSession>, StoreError>> + Send {
        self.inner.load()
    }

    async fn save(&self, session: &StoredSession) -> Result<(), StoreError> {
        self.inner.save(session).await
    }

    fn clear(&self) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.inner.clear()
    }

    fn lock(&self) -> impl Future<Output = Result<StoreLock, StoreError>> + Send {
        self.inner.lock()
    }
}

/// [`Transport`] with its future boxed, so it can be a trait object.
trait DynTransport: Send + Sync + 'static {
    fn post_form<'a>(
        &'a self,
        url: &'a str,
        form: &'a FormRequest,
    ) -> BoxFuture<'a, Result<HttpResponse, TransportError>>;
}

impl<T: Transport> DynTransport for T {
    fn post_form<'a>(
        &'a self,
        url: &'a str,
        form: &'a FormRequest,
    ) -> BoxFuture<'a, Result<HttpResponse, TransportError>> {
        Box::pin(Transport::post_form(self, url, form))
    }
}

impl Transport for BoxTransport {
    async fn post_form(&self, url: &str, form: &FormRequest) -> Result<HttpResponse, TransportError> {
        self.inner.post_form(url, form).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    #[test]
    fn a_box_names_what_it_holds() {
        assert_eq!(format!("{:?}", BoxStore::new(MemoryStore::new())), "BoxStore(freshen::store::MemoryStore)");
    }
}
