//! One way to write a configuration's `with_` setters.

/// `with_` setters that take and return `self`, so that a configuration
/// reads as one expression (its `#[non_exhaustive]` rules out struct
/// literals outside this crate). Each entry is a setter's docs, its name and
/// argument, and the field it sets with the value it sets it to:
///
/// ```ignore
/// setters! { Config {
///     /// Asks for this scope on every refresh.
///     with_scope(scope: impl Into<String>) => scope = Some(scope.into());
///     /// Binds the tokens to a key on this device.
///     with_dpop() => dpop = true;
/// }}
/// ```
macro_rules! setters {
    ($type:ty { $(
        $(#[$doc:meta])*
        $setter:ident($($argument:ident: $argument_type:ty)?) => $field:ident = $value:expr;
    )* }) => {
        impl $type {
            $(
                $(#[$doc])*
                #[must_use]
                pub fn $setter(mut self, $($argument: $argument_type)?) -> Self {
                    self.$field = $value;
                    self
                }
            )*
        }
    };
}

pub(crate) use setters;
