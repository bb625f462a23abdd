//! Opaque page tokens. A token carries where a listing continues and a
//! binding to the request it continues (namespace incarnation, RPC, record,
//! selector), sealed by a keyed checksum: a token of another request, or
//! one altered by hand, is refused with INVALID_ARGUMENT on `page_token`.
//!
//! The checksum is an integrity check, not a secret: authorization is
//! decided independently on every page, so a forged position can only
//! reach data the caller may read anyway.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use twox_hash::XxHash64;

use crate::error::{GatewayError, Result};

const VERSION: u8 = 1;
const SEAL_SEED: u64 = 0x7072_6973_6d2d_7074; // "prism-pt"
/// Longest token accepted (a key is at most 4 KiB, an id 1 KiB).
const MAX_TOKEN_LEN: usize = 8 * 1024;

fn seal(bytes: &[u8]) -> u64 {
    XxHash64::oneshot(SEAL_SEED, bytes)
}

/// A fingerprint of what a token continues; built by the caller from the
/// request's fixed parts.
pub fn binding(parts: &[&[u8]]) -> u64 {
    let mut h = XxHash64::with_seed(0);
    for p in parts {
        std::hash::Hasher::write(&mut h, &(p.len() as u64).to_be_bytes());
        std::hash::Hasher::write(&mut h, p);
    }
    std::hash::Hasher::finish(&h)
}

/// Seals `position` for the request fingerprinted by `binding`.
pub fn encode(binding: u64, position: &[u8]) -> String {
    let mut bytes = Vec::with_capacity(1 + 8 + position.len() + 8);
    bytes.push(VERSION);
    bytes.extend_from_slice(&binding.to_be_bytes());
    bytes.extend_from_slice(position);
    let check = seal(&bytes);
    bytes.extend_from_slice(&check.to_be_bytes());
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The position in `token`, if it was made for `binding`; `None` for an
/// empty token.
pub fn decode(binding: u64, token: &str) -> Result<Option<Vec<u8>>> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || GatewayError::invalid("page_token", "is not a page token of this request");
    if token.len() > MAX_TOKEN_LEN {
        return Err(bad());
    }
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    if bytes.len() < 1 + 8 + 8 || bytes[0] != VERSION {
        return Err(bad());
    }
    let (body, check) = bytes.split_at(bytes.len() - 8);
    if seal(body).to_be_bytes() != check || body[1..9] != binding.to_be_bytes() {
        return Err(bad());
    }
    Ok(Some(body[9..].to_vec()))
}

/// A scan position: record id and key, length-prefixed.
pub fn scan_position(id: &str, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + id.len() + key.len());
    out.extend_from_slice(&(id.len() as u32).to_be_bytes());
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(key);
    out
}

pub fn parse_scan_position(bytes: &[u8]) -> Result<(String, Vec<u8>)> {
    let bad = || GatewayError::invalid("page_token", "is not a page token of this request");
    let (len, rest) = bytes.split_first_chunk::<4>().ok_or_else(bad)?;
    let len = u32::from_be_bytes(*len) as usize;
    if rest.len() < len {
        return Err(bad());
    }
    let (id, key) = rest.split_at(len);
    Ok((String::from_utf8(id.to_vec()).map_err(|_| bad())?, key.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let b = binding(&[b"acme/x", b"id"]);
        let t = encode(b, b"last-key");
        assert_eq!(decode(b, &t).expect("valid"), Some(b"last-key".to_vec()));
        assert_eq!(decode(b, "").expect("empty"), None);
        let (id, key) = parse_scan_position(&scan_position("rec", b"\x00k")).expect("valid");
        assert_eq!((id.as_str(), key.as_slice()), ("rec", b"\x00k".as_slice()));
    }

    #[test]
    fn refuses_foreign_and_forged_tokens() {
        let b = binding(&[b"acme/x", b"id"]);
        let t = encode(b, b"k");
        assert!(decode(binding(&[b"acme/x", b"other"]), &t).is_err(), "foreign");
        let mut raw = URL_SAFE_NO_PAD.decode(&t).expect("b64");
        raw[10] ^= 1;
        assert!(decode(b, &URL_SAFE_NO_PAD.encode(raw)).is_err(), "altered");
        for junk in ["x", "!!!", "AAAA", &"A".repeat(MAX_TOKEN_LEN + 1)] {
            assert!(decode(b, junk).is_err(), "{junk}");
        }
        assert!(parse_scan_position(&[0, 0, 0, 9, b'a']).is_err());
    }
}
