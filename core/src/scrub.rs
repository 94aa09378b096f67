//! Buffers that held secrets are wiped before their memory is freed.
//!
//! `secrecy` wipes the token types when they drop. What it cannot see are the
//! transient copies on the way: the JSON a token response is read from,
//! the blob a session is written as, a form being built. Three rules keep
//! those from leaving token bytes in freed memory:
//!
//! - JSON is read in place: [`JsonFields`] borrows the strings it keeps
//!   from the input, which the caller owns (and wipes, if it is a secret);
//! - every buffer that holds a secret is wiped when it drops (an escaped
//!   string [`JsonFields`] had to copy, `Zeroizing`, [`into_secret`]);
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

use std::borrow::Cow;

use secrecy::SecretString;
use secrecy::zeroize::Zeroize;
use serde_core::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// A value of a [`Member`].
#[derive(Clone, Copy, Debug)]
pub enum MemberValue<'a> {
    /// A JSON string.
    Text(&'a str),
    /// A non-negative integer.
    Number(u64),
}

/// One member of an object written by [`write_object`]: its key and value,
/// if present.
pub type Member<'a> = (&'static str, Option<MemberValue<'a>>);

/// Writes the object of the present `members`, in their order, straight into
/// one buffer sized from an upper bound (`json_bound`) and then made a
/// secret: nothing is built in between, and the buffer never grows, so no
/// copy of a token is left behind. The bytes are `serde_json`'s compact
/// printing of the same members.
pub fn write_object(members: &[Member<'_>]) -> SecretString {
    let present = || members.iter().filter_map(|(key, value)| value.map(|value| (*key, value)));
    let texts = present().flat_map(|(key, value)| match value {
        MemberValue::Text(text) => [Some(key), Some(text)],
        MemberValue::Number(_) => [Some(key), None],
    });
    let capacity = json_bound(texts.flatten(), members.len());
    let mut buffer = Vec::with_capacity(capacity);
    let mut written = Ok(());
    buffer.push(b'{');
    for (index, (key, value)) in present().enumerate() {
        if index > 0 {
            buffer.push(b',');
        }
        written = written.and_then(|()| write_string(&mut buffer, key));
        buffer.push(b':');
        written = written.and_then(|()| match value {
            MemberValue::Text(text) => write_string(&mut buffer, text),
            MemberValue::Number(number) => serde_json::to_writer(&mut buffer, &number),
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

/// Writes `text` as a JSON string: copied as it is when nothing in it needs
/// an escape (printable ASCII but `"` and `\`: every token and key in
/// practice), else escaped by `serde_json`. The same bytes either way.
fn write_string(buffer: &mut Vec<u8>, text: &str) -> serde_json::Result<()> {
    if text.bytes().all(|byte| matches!(byte, b' '..=b'~') && byte != b'"' && byte != b'\\') {
        buffer.push(b'"');
        buffer.extend_from_slice(text.as_bytes());
        buffer.push(b'"');
        Ok(())
    } else {
        serde_json::to_writer(buffer, text)
    }
}

/// A JSON value read by [`JsonFields`]: a string or a number an object's
/// field held, or what else it was. A string with escapes had to be copied
/// out of the input: that copy is wiped when the value drops.
#[derive(Debug)]
pub(crate) enum Scalar<'a> {
    Null,
    Text(Cow<'a, str>),
    /// A non-negative integer that fits in 64 bits.
    Number(u64),
    /// Any other number (negative, fractional or too large), as a float.
    Float(f64),
    /// Anything else: a boolean, an array or an object.
    Other,
}

impl Scalar<'_> {
    pub(crate) fn as_u64(&self) -> Option<u64> {
        match self {
            Self::Number(number) => Some(*number),
            _ => None,
        }
    }

    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Self::Text(text) => Some(text),
            _ => None,
        }
    }

    pub(crate) fn is_null(&self) -> bool {
        matches!(self, Self::Null)
    }
}

impl Drop for Scalar<'_> {
    fn drop(&mut self) {
        if let Self::Text(Cow::Owned(text)) = self {
            text.zeroize();
        }
    }
}

/// The fields `names` of one JSON object read from untrusted bytes (of a
/// key given twice, the last). Other fields are skipped unread, and
/// nothing is built for them: no map, no `String` per key, and no copy of
/// an unescaped token. Token responses, device authorizations and stored
/// blobs are read this way.
#[derive(Debug)]
pub(crate) struct JsonFields<'a, const N: usize> {
    names: &'static [&'static str; N],
    values: [Option<Scalar<'a>>; N],
}

impl<'a, const N: usize> JsonFields<'a, N> {
    /// `None` when `bytes` are not one JSON object.
    pub(crate) fn read(bytes: &'a [u8], names: &'static [&'static str; N]) -> Option<Self> {
        let mut deserializer = serde_json::Deserializer::from_slice(bytes);
        let values = deserializer.deserialize_map(FieldsVisitor { names }).ok()?;
        deserializer.end().ok()?;
        Some(Self { names, values })
    }

    /// The field `name` (one of the names read), if the object held it.
    pub(crate) fn get(&self, name: &str) -> Option<&Scalar<'a>> {
        let index = self.names.iter().position(|known| *known == name);
        debug_assert!(index.is_some(), "{name} is not a field read");
        self.values.get(index?)?.as_ref()
    }
}

struct FieldsVisitor<const N: usize> {
    names: &'static [&'static str; N],
}

impl<'de, const N: usize> Visitor<'de> for FieldsVisitor<N> {
    type Value = [Option<Scalar<'de>>; N];

    fn expecting(&self, formatter: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        formatter.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = [const { None }; N];
        while let Some(key) = map.next_key::<Scalar<'de>>()? {
            let slot = key.as_str().and_then(|key| self.names.iter().position(|name| *name == key));
            match slot.and_then(|index| fields.get_mut(index)) {
                Some(field) => *field = Some(map.next_value::<Scalar<'de>>()?),
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(fields)
    }
}

impl<'de> Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ScalarVisitor)
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar<'de>;

    fn expecting(&self, formatter: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_borrowed_str<E: de::Error>(self, text: &'de str) -> Result<Self::Value, E> {
        Ok(Scalar::Text(Cow::Borrowed(text)))
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
        Ok(Scalar::Text(Cow::Owned(text.to_owned())))
    }

    fn visit_u64<E: de::Error>(self, number: u64) -> Result<Self::Value, E> {
        Ok(Scalar::Number(number))
    }

    fn visit_i64<E: de::Error>(self, number: i64) -> Result<Self::Value, E> {
        Ok(u64::try_from(number).map_or(Scalar::Float(number as f64), Scalar::Number))
    }

    fn visit_f64<E: de::Error>(self, number: f64) -> Result<Self::Value, E> {
        Ok(Scalar::Float(number))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Scalar::Other)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other)
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
    use serde_json::{Map, Value};

    use super::*;

    #[test]
    fn strings_are_written_as_serde_json_writes_them() {
        for text in ["plain_token-1.~", "with space", "a\"quote", "a\\backslash", "t\u{7f}ab\t", "ünï"] {
            let encoded = write_object(&[("k", Some(MemberValue::Text(text)))]);
            let expected = format!("{{\"k\":{}}}", serde_json::to_string(text).unwrap());
            assert_eq!(encoded.expose_secret(), expected, "{text:?}");
        }
    }

    #[test]
    fn an_object_round_trips_within_its_bound() {
        let token = "tok\"en\u{1}";
        let fields = [
            ("access_token", Some(MemberValue::Text(token))),
            ("absent", None),
            ("generation", Some(MemberValue::Number(7))),
        ];
        let encoded = write_object(&fields);
        assert_eq!(encoded.expose_secret(), r#"{"access_token":"tok\"en\u0001","generation":7}"#);
        let parsed = JsonFields::read(encoded.expose_secret().as_bytes(), &["access_token"]).unwrap();
        assert_eq!(parsed.get("access_token").and_then(Scalar::as_str), Some(token));
        assert_eq!(write_object(&[]).expose_secret(), "{}");
    }

    proptest::proptest! {
        #[test]
        fn the_bounds_hold_for_any_text(text in ".{0,64}", bytes in proptest::collection::vec(0u8..32, 0..64)) {
            let controls = String::from_utf8(bytes).unwrap();
            // `write_object` itself asserts (in debug builds) that its buffer never grew.
            let fields = [
                ("a", Some(MemberValue::Text(&text))),
                ("b", Some(MemberValue::Text(&controls))),
                ("n", Some(MemberValue::Number(u64::MAX))),
            ];
            let encoded = write_object(&fields);
            let parsed = JsonFields::read(encoded.expose_secret().as_bytes(), &["b"]).unwrap();
            proptest::prop_assert_eq!(parsed.get("b").and_then(Scalar::as_str), Some(controls.as_str()));
            proptest::prop_assert!(encoded.expose_secret().len() <= json_bound(["a", &text, "b", &controls, "n"], 3));
            let form: String = form_urlencoded::Serializer::new(String::new())
                .append_pair(&text, &controls)
                .finish();
            proptest::prop_assert!(form.len() <= form_bound([text.as_str(), controls.as_str()]));
        }
    }

    /// What serde_json's own map says a field holds: the oracle for [`JsonFields`].
    fn as_the_map_reads_it(object: &Map<String, Value>, name: &str) -> Option<String> {
        object.get(name).map(|value| match value {
            Value::Null => "null".to_owned(),
            Value::String(text) => format!("text {text:?}"),
            Value::Number(number) if number.as_u64().is_some() => format!("number {number}"),
            Value::Number(number) => format!("float {:?}", number.as_f64()),
            _ => "other".to_owned(),
        })
    }

    fn as_read(scalar: Option<&Scalar<'_>>) -> Option<String> {
        scalar.map(|scalar| match scalar {
            Scalar::Null => "null".to_owned(),
            Scalar::Text(text) => format!("text {:?}", text.as_ref()),
            Scalar::Number(number) => format!("number {number}"),
            Scalar::Float(number) => format!("float {:?}", Some(*number)),
            Scalar::Other => "other".to_owned(),
        })
    }

    fn json_value() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just("null".to_owned()),
            any::<bool>().prop_map(|b| b.to_string()),
            any::<u64>().prop_map(|n| n.to_string()),
            any::<i64>().prop_map(|n| n.to_string()),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| format!("{f:e}")),
            Just("18446744073709551616".to_owned()),
            Just("1.0".to_owned()),
            ".{0,12}".prop_map(|text| serde_json::to_string(&text).unwrap()),
            Just(r#""tok\"en\u0041""#.to_owned()),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(|items| format!("[{}]", items.join(","))),
                proptest::collection::vec(("[a-z]{1,3}", inner), 0..4).prop_map(|members| {
                    let members: Vec<String> = members.iter().map(|(k, v)| format!("{k:?}:{v}")).collect();
                    format!("{{{}}}", members.join(","))
                }),
            ]
        })
    }

    proptest::proptest! {
        /// Whatever an object holds (any type, unknown and repeated keys,
        /// escaped keys), each field reads as serde_json's map holds it; and
        /// what is not one object is not read at all.
        #[test]
        fn fields_read_as_serde_jsons_map_holds_them(
            members in proptest::collection::vec(
                (proptest::prop_oneof![
                    proptest::strategy::Just("v".to_owned()),
                    proptest::strategy::Just("scope".to_owned()),
                    proptest::strategy::Just("\\u0076".to_owned()),
                    "[a-z]{1,2}",
                ], json_value()),
                0..8,
            ),
            top in json_value(),
        ) {
            const NAMES: [&str; 4] = ["v", "scope", "a", "zz"];
            let members: Vec<String> = members.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
            let object = format!("{{{}}}", members.join(","));
            for bytes in [object.as_bytes(), top.as_bytes()] {
                let oracle: Option<Map<String, Value>> = serde_json::from_slice(bytes).ok();
                let read = JsonFields::read(bytes, &NAMES);
                proptest::prop_assert_eq!(read.is_some(), oracle.is_some(), "{}", String::from_utf8_lossy(bytes));
                if let (Some(read), Some(oracle)) = (read, oracle) {
                    for name in NAMES {
                        proptest::prop_assert_eq!(as_read(read.get(name)), as_the_map_reads_it(&oracle, name));
                    }
                }
            }
        }
    }

    /// The one difference from serde_json's map: nesting deeper than its
    /// limit of 128 in a field that is skipped is skipped, not refused.
    #[test]
    fn a_deeply_nested_field_that_is_skipped_is_no_error() {
        let deep = format!(r#"{{"v":3,"x":{}{}}}"#, "[".repeat(200), "]".repeat(200));
        assert!(serde_json::from_slice::<Map<String, Value>>(deep.as_bytes()).is_err());
        let read = JsonFields::read(deep.as_bytes(), &["v"]).unwrap();
        assert_eq!(read.get("v").and_then(Scalar::as_u64), Some(3));
        assert!(JsonFields::read(b"[1]", &["v"]).is_none());
        assert!(JsonFields::read(br#"{"v":1} trailing"#, &["v"]).is_none());
    }

    #[test]
    fn a_secret_is_made_without_spare_capacity() {
        let mut text = String::with_capacity(64);
        text.push_str("secret");
        assert_eq!(into_secret(text).expose_secret(), "secret");
    }
}
