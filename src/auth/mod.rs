//! Caller credentials: where they come from and how they are checked.
//!
//! API keys are compared as SHA-256 hashes in constant time against every key attached to the
//! consumer (no early exit), then checked for `active` and `expires_at`.

pub mod identity;
pub mod jwt;

use crate::snapshot::{CompiledConsumer, CompiledKey};
use pingora::http::RequestHeader;
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

/// Headers that may carry a caller's credential; none of them is ever forwarded upstream.
pub const CREDENTIAL_HEADERS: [&str; 3] = ["authorization", "x-api-key", "apikey"];

/// The credential the caller presented: `Authorization: Bearer`, `x-api-key` or `apikey`.
pub fn presented(req: &RequestHeader) -> Option<&str> {
    let header = |name: &str| {
        req.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    if let Some(auth) = header("authorization") {
        let (scheme, rest) = auth.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| rest.trim())
            .filter(|t| !t.is_empty());
    }
    header("x-api-key").or_else(|| header("apikey"))
}

/// The attached, active, unexpired API key matching `presented`, if any.
pub fn verify_api_key<'c>(
    consumer: &'c CompiledConsumer,
    presented: &str,
    now_unix: i64,
) -> Option<&'c CompiledKey> {
    let hash: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    let mut found = subtle::Choice::from(0);
    let mut index = 0u64;
    for (i, key) in consumer.keys.iter().enumerate() {
        let eq = hash.ct_eq(&key.hash);
        index.conditional_assign(&(i as u64), eq);
        found |= eq;
    }
    if !bool::from(found) {
        return None;
    }
    let key = consumer.keys.get(index as usize)?;
    let live = key.active && now_unix < key.expires_at;
    live.then_some(key)
}
