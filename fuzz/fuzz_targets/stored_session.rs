//! Arbitrary bytes into the stored-session decoder: it must never panic, and
//! whatever it accepts must survive an encode/decode round trip unchanged.
#![no_main]

use freshen_core::stored::StoredSession;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(session) = StoredSession::decode(data) {
        let encoded = session.encode();
        let again = StoredSession::decode(secrecy::ExposeSecret::expose_secret(&encoded).as_bytes())
            .expect("an encoded session decodes");
        assert_eq!(again.generation, session.generation);
        assert!(again.access_token.same_as(&session.access_token));
        assert!(again.refresh_token.same_as(&session.refresh_token));
        assert_eq!(
            again.access_expires_at.map(|t| t.since_epoch().as_millis()),
            session.access_expires_at.map(|t| t.since_epoch().as_millis())
        );
        assert_eq!(again.scope, session.scope);
    }
});
