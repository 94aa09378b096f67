//! Bytes that hold a token and are wiped when the last copy of them drops
//! (the adapters' side of `freshen_core::scrub`).

use bytes::Bytes;
use http::HeaderValue;
use secrecy::zeroize::Zeroizing;

/// `parts` joined into bytes that are wiped when the last clone of them drops
/// (the buffer is sized exactly, so it never moves; see `freshen_core::scrub`).
pub(crate) fn wiped_bytes<const N: usize>(parts: [&str; N]) -> Bytes {
    let mut joined = Zeroizing::new(Vec::with_capacity(parts.iter().map(|part| part.len()).sum()));
    for part in parts {
        joined.extend_from_slice(part.as_bytes());
    }
    Bytes::from_owner(joined)
}

/// A header value of `parts` joined, marked sensitive (http never prints it)
/// and kept in [`wiped_bytes`]: cloning it into a request copies no token.
pub(crate) fn sensitive_header<const N: usize>(
    parts: [&str; N],
) -> Result<HeaderValue, http::header::InvalidHeaderValue> {
    let mut value = HeaderValue::from_maybe_shared(wiped_bytes(parts))?;
    value.set_sensitive(true);
    Ok(value)
}
