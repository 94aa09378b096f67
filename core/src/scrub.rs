//! Buffers that held secrets are wiped before their memory is freed.
//!
//! `secrecy` wipes the token types when they drop. What it cannot see are the
//! transient copies on the way: the JSON a token response is parsed into,
//! the blob a session is written as, a form being built. Two rules keep
//! those from leaving token bytes in freed memory:
//!
//! - every buffer that holds a secret is wiped when it drops
//!   ([`ScrubbedJson`], `Zeroizing`, [`into_secret`]);
//! - no such buffer ever grows: a `String` or `Vec` that outgrows its
//!   capacity is moved by the allocator, and the old block is freed as it
//!   is. Buffers are sized up front from an upper bound ([`json_bound`],
//!   [`form_bound`]).
//!
//! One copy is outside these rules: serde_json's scratch buffer for a JSON
//! string with escapes (`\"`, `\u…`). Tokens are printable ASCII and servers
//! do not escape them; a token that was escaped leaves that copy.
//! The `freed-memory` test crate checks all of this with an allocator that
//! scans every freed block for canary tokens.

use secrecy::SecretString;
use secrecy::zeroize::Zeroize;
use serde_json::{Map, Value};

/// A parsed JSON object whose every string (keys included) is wiped when it
/// drops: token responses and stored blobs are read through it.
#[derive(Debug, Default)]
pub(crate) struct ScrubbedJson(Map<String, Value>);

impl ScrubbedJson {
    /// Parses `bytes` as a JSON object; `None` when they are not one.
    pub(crate) fn parse(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok().map(Self)
    }
}

/// A value of a [`JsonField`].
#[derive(Clone, Copy, Debug)]
pub(crate) enum JsonValue<'a> {
    Text(&'a str),
    Number(u64),
}

/// One member of an object written by [`write_object`]: its key and value,
/// if present.
pub(crate) type JsonField<'a> = (&'static str, Option<JsonValue<'a>>);

/// Writes the object of the present `fields`, in their order, straight into
/// one buffer sized from an upper bound ([`json_bound`]) and then made a
/// secret: nothing is built in between, and the buffer never grows, so no
/// copy of a token is left behind.
pub(crate) fn write_object(fields: &[JsonField<'_>]) -> SecretString {
    let present = || fields.iter().filter_map(|(key, value)| value.map(|value| (*key, value)));
    let texts = present().flat_map(|(key, value)| match value {
        JsonValue::Text(text) => [Some(key), Some(text)],
        JsonValue::Number(_) => [Some(key), None],
    });
    let capacity = json_bound(texts.flatten(), fields.len());
    let mut buffer = Vec::with_capacity(capacity);
    let mut written = Ok(());
    buffer.push(b'{');
    for (index, (key, value)) in present().enumerate() {
        if index > 0 {
            buffer.push(b',');
        }
        written = written.and_then(|()| serde_json::to_writer(&mut buffer, key));
        buffer.push(b':');
        written = written.and_then(|()| match value {
            JsonValue::Text(text) => serde_json::to_writer(&mut buffer, text),
            JsonValue::Number(number) => serde_json::to_writer(&mut buffer, &number),
        });
    }
    buffer.push(b'}');
    match written {
        Ok(()) => debug_assert_eq!(buffer.capacity(), capacity, "json_bound was not a bound"),
        // Unreachable: strings and numbers always encode into a Vec.
        Err(_) => buffer.zeroize(),
    }
    match String::from_utf8(buffer) {
        Ok(text) => into_secret(text),
        // Unreachable: serde_json writes UTF-8.
        Err(error) => {
            error.into_bytes().zeroize();
            SecretString::default()
        }
    }
}

impl core::ops::Deref for ScrubbedJson {
    type Target = Map<String, Value>;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Drop for ScrubbedJson {
    fn drop(&mut self) {
        // Iterative, so a deeply nested value cannot exhaust the stack (the
        // parser already bounds nesting at 128).
        let mut pending: Vec<Value> = Vec::new();
        for (mut key, value) in core::mem::take(&mut self.0) {
            key.zeroize();
            pending.push(value);
        }
        while let Some(value) = pending.pop() {
            match value {
                Value::String(mut text) => text.zeroize(),
                Value::Array(items) => pending.extend(items),
                Value::Object(object) => {
                    for (mut key, value) in object {
                        key.zeroize();
                        pending.push(value);
                    }
                }
                Value::Null | Value::Bool(_) | Value::Number(_) => {}
            }
        }
    }
}

/// An upper bound on the JSON encoding of an object whose string keys and
/// values are `texts` plus at most `fields` numbers, `null`s and punctuation:
/// each byte of a string escapes to at most six (`\u001f`).
pub(crate) fn json_bound<'a>(texts: impl IntoIterator<Item = &'a str>, fields: usize) -> usize {
    let strings: usize = texts.into_iter().map(|text| 6 * text.len() + 2).sum();
    strings + fields * 32 + 2
}

/// An upper bound on a form's `application/x-www-form-urlencoded` encoding
/// whose names and values are `parts`: each byte encodes to at most three
/// (`%2F`), plus one `=` or `&` per part.
pub(crate) fn form_bound<'a>(parts: impl IntoIterator<Item = &'a str>) -> usize {
    parts.into_iter().map(|part| 3 * part.len() + 1).sum()
}

/// Moves `text` into a secret without a reallocation: a `String` with spare
/// capacity would be shrunk (moved) by `into_boxed_str`, leaving its old
/// block unwiped, so it is copied once into an exact block and wiped instead.
pub(crate) fn into_secret(mut text: String) -> SecretString {
    if text.capacity() == text.len() {
        return SecretString::from(text);
    }
    let exact: Box<str> = Box::from(text.as_str());
    text.zeroize();
    SecretString::new(exact)
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret as _;

    use super::*;

    #[test]
    fn an_object_round_trips_within_its_bound() {
        let token = "tok\"en\u{1}";
        let fields = [
            ("access_token", Some(JsonValue::Text(token))),
            ("absent", None),
            ("generation", Some(JsonValue::Number(7))),
        ];
        let encoded = write_object(&fields);
        assert_eq!(encoded.expose_secret(), r#"{"access_token":"tok\"en\u0001","generation":7}"#);
        let parsed = ScrubbedJson::parse(encoded.expose_secret().as_bytes()).unwrap();
        assert_eq!(parsed.get("access_token").and_then(Value::as_str), Some(token));
        assert_eq!(write_object(&[]).expose_secret(), "{}");
    }

    proptest::proptest! {
        #[test]
        fn the_bounds_hold_for_any_text(text in ".{0,64}", bytes in proptest::collection::vec(0u8..32, 0..64)) {
            let controls = String::from_utf8(bytes).unwrap();
            // `write_object` itself asserts (in debug builds) that its buffer never grew.
            let fields = [
                ("a", Some(JsonValue::Text(&text))),
                ("b", Some(JsonValue::Text(&controls))),
                ("n", Some(JsonValue::Number(u64::MAX))),
            ];
            let encoded = write_object(&fields);
            let parsed = ScrubbedJson::parse(encoded.expose_secret().as_bytes()).unwrap();
            proptest::prop_assert_eq!(parsed.get("b").and_then(Value::as_str), Some(controls.as_str()));
            proptest::prop_assert!(encoded.expose_secret().len() <= json_bound(["a", &text, "b", &controls, "n"], 3));
            let form: String = form_urlencoded::Serializer::new(String::new())
                .append_pair(&text, &controls)
                .finish();
            proptest::prop_assert!(form.len() <= form_bound([text.as_str(), controls.as_str()]));
        }
    }

    #[test]
    fn a_secret_is_made_without_spare_capacity() {
        let mut text = String::with_capacity(64);
        text.push_str("secret");
        assert_eq!(into_secret(text).expose_secret(), "secret");
    }
}
