//! Identifiers that tie inputs to the outputs they answer.
//!
//! Every refresh attempt has a [`RefreshId`] and every token set a
//! [`Generation`]; an answer for an id that is no longer current is ignored, and
//! a 401 for an older generation never starts a refresh.

use core::fmt;

macro_rules! id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(pub u64);

        impl $name {
            /// The id after this one.
            #[must_use]
            pub const fn next(self) -> Self {
                Self(self.0.wrapping_add(1))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }
    };
}

id!(
    /// Names one request for a token: chosen by the driver, unique per request
    /// while it waits. A 401 on that request comes back with the same id.
    CallerId,
    "c"
);
id!(
    /// Names one token set. Each new set (refresh, login, or one adopted from the
    /// store) has a higher generation than the one it replaces. Numbers order
    /// the tokens of one process's session, nothing more: processes sharing a
    /// store number apart (two may each hold a g7 with different tokens), and
    /// after another process logs out and in again the stored numbers start
    /// over, so an app may see a lower generation follow a higher one.
    Generation,
    "g"
);
id!(
    /// Names one refresh attempt (one HTTP request to the token endpoint).
    RefreshId,
    "r"
);
id!(
    /// Names one store operation (load, persist or clear).
    StoreOpId,
    "s"
);
id!(
    /// Names one revocation request (RFC 7009) to the authorization server.
    RevocationId,
    "v"
);
