//! Opaque, validated page tokens for list RPCs: a kind tag and the last key
//! returned, hex-encoded. A token of another listing, or a forged one, is
//! refused with INVALID_ARGUMENT on `page_token`.

use crate::error::{ControlPlaneError, Result};

/// What a token continues; a token only continues the listing it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    Tenants,
    Namespaces,
    Audit,
}

impl Listing {
    fn tag(self) -> char {
        match self {
            Self::Tenants => 't',
            Self::Namespaces => 'n',
            Self::Audit => 'a',
        }
    }
}

pub fn encode(listing: Listing, last_key: &str) -> String {
    let mut out = String::with_capacity(2 + last_key.len() * 2);
    out.push(listing.tag());
    out.push('1');
    for b in last_key.bytes() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The last key of the previous page; `""` for no token.
pub fn decode(listing: Listing, token: &str) -> Result<String> {
    if token.is_empty() {
        return Ok(String::new());
    }
    let bad = || ControlPlaneError::invalid("page_token", "is not a page token of this listing");
    let mut chars = token.chars();
    if chars.next() != Some(listing.tag()) || chars.next() != Some('1') || token.len() > 2 + 2 * 1024 {
        return Err(bad());
    }
    let hex = &token[2..];
    if !hex.len().is_multiple_of(2) || hex.is_empty() {
        return Err(bad());
    }
    let bytes: Option<Vec<u8>> =
        (0..hex.len()).step_by(2).map(|i| hex.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok())).collect();
    String::from_utf8(bytes.ok_or_else(bad)?).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_foreign_tokens() {
        let t = encode(Listing::Namespaces, "acme/profiles");
        assert_eq!(decode(Listing::Namespaces, &t).expect("valid"), "acme/profiles");
        assert_eq!(decode(Listing::Namespaces, "").expect("empty"), "");
        for bad in [&encode(Listing::Tenants, "acme") as &str, "n1zz", "n1a", "x", "n1", "n1ff"] {
            assert!(decode(Listing::Namespaces, bad).is_err(), "{bad}");
        }
    }
}
