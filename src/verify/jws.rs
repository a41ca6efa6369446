//! The segments of a compact JWS read as JSON, shared by the verifier, DPoP proofs and the
//! issuer's look-ups before a token is verified; and the hash of a whole token under which
//! the verifier's caches keep what they know of it.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

/// A base64url segment of JSON (a JWS header or payload), as a map.
pub(crate) fn decode_json(segment: &str) -> Option<Map<String, Value>> {
    let bytes = URL_SAFE_NO_PAD.decode(segment).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// SHA-256 of a whole token: the key of the caches of verified tokens and of introspection
/// answers, so that no cache holds a token.
pub(crate) type TokenHash = [u8; 32];

/// The [`TokenHash`] of `token`.
pub(crate) fn token_hash(token: &str) -> TokenHash {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    let mut hash = [0u8; 32];
    hash.copy_from_slice(digest.as_ref());
    hash
}

/// Segment `index` (0: header, 1: claims) of a token of at most `max_bytes`, read before
/// anything is verified: only to decide which keys verify it, never to trust it.
#[cfg(feature = "issuer")]
pub(crate) fn unverified_segment(
    token: &str,
    index: usize,
    max_bytes: usize,
) -> Option<Map<String, Value>> {
    if token.len() > max_bytes {
        return None;
    }
    decode_json(token.split('.').nth(index)?)
}
