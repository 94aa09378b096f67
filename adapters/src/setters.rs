//! One way to write a configuration's `with_` setters.

/// `with_` setters that take and return `self`, so that a configuration
/// reads as one expression (its `#[non_exhaustive]` rules out struct
/// literals outside this crate). Each entry is a setter's docs, its name and
/// argument, and the field it sets with the value it sets it to:
///
/// ```text
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

#[cfg(test)]
mod tests {
    use freshen_core::oauth::Client;
    use freshen_core::session::SessionConfig;

    use crate::Config;

    // The tables are written by hand: a setter that sets its neighbour's
    // field compiles just as well, so each is checked against its own.
    #[test]
    fn each_config_setter_sets_its_own_field() {
        let config = Config::new("https://as.example/token", Client::public("app"))
            .with_revocation_endpoint("https://as.example/revoke")
            .with_authorization_endpoint("https://as.example/authorize")
            .with_device_authorization_endpoint("https://as.example/device")
            .with_issuer("https://as.example")
            .with_scope("read")
            .with_dpop()
            .with_session(SessionConfig::default().with_shared_store(true))
            .with_name("tenant-7")
            .with_plain_http_allowed();
        assert_eq!(config.token_endpoint, "https://as.example/token");
        assert_eq!(config.revocation_endpoint.as_deref(), Some("https://as.example/revoke"));
        assert_eq!(config.authorization_endpoint.as_deref(), Some("https://as.example/authorize"));
        assert_eq!(config.device_authorization_endpoint.as_deref(), Some("https://as.example/device"));
        assert_eq!(config.issuer.as_deref(), Some("https://as.example"));
        assert_eq!(config.scope.as_deref(), Some("read"));
        assert!(config.dpop && config.session.shared_store && config.plain_http_allowed);
        assert_eq!(config.name.as_deref(), Some("tenant-7"));
    }

    #[cfg(feature = "postgres")]
    #[test]
    fn each_postgres_setter_sets_its_own_field() {
        use std::time::Duration;

        use crate::store::PostgresSettings;

        let seconds = Duration::from_secs;
        let settings = PostgresSettings::default()
            .with_table("tenants")
            .with_lock_hold(seconds(1))
            .with_lock_wait(seconds(2))
            .with_statement_timeout(seconds(3))
            .with_keepalive_idle(seconds(4))
            .with_pool_size(0);
        assert_eq!(settings.table, "tenants");
        let bounds = [settings.lock_hold, settings.lock_wait, settings.statement_timeout, settings.keepalive_idle];
        assert_eq!(bounds, [seconds(1), seconds(2), seconds(3), seconds(4)]);
        assert_eq!(settings.pool_size, 1, "a pool holds at least one connection");
    }
}
