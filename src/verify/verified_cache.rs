//! [`VerifiedCache`]: the tokens a [`Verifier`](super::Verifier) has verified, so that a
//! token presented again costs a hash and a look-up rather than a signature check and a
//! JSON parse.
//!
//! Only the memory is here: what a hit must still pass (the header checks, the key resolved
//! from the current key set and equal to the one that verified the entry, the algorithm
//! pinned to it, the claims at the current time) is the verifier's to check, on every
//! call. An entry is keyed by a SHA-256 of the whole token (the cache holds no token),
//! remembers the [`KeyFingerprint`] of the key that verified it and the claims it had, and
//! is of no use once the token has expired (`exp` plus the leeway): a full cache drops
//! those first, then the entries that expire soonest.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Map, Value};

use super::jws::TokenHash;
use super::key::KeyFingerprint;

/// Default number of verified tokens a [`Verifier`](super::Verifier) remembers.
pub const DEFAULT_VERIFIED_CACHE_ENTRIES: usize = 10_000;

/// Largest claims cached, in bytes of memory once parsed (estimated as
/// [`VerifiedCacheStats::approx_bytes`] counts them): the claims of an access token take
/// 0.6-1.5 KiB, and a token carrying more is verified in full every time rather than let a
/// full cache hold that many large documents. An entry thus takes about 4.3 KiB at most,
/// and [`DEFAULT_VERIFIED_CACHE_ENTRIES`] of them about 45 MB at most (about 10 MB for
/// ordinary access tokens).
pub const MAX_CACHED_CLAIMS_BYTES: usize = 4 * 1024;

/// What a verifier's cache of verified tokens holds and has done
/// ([`Verifier::verified_cache_stats`](super::Verifier::verified_cache_stats)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifiedCacheStats {
    /// Tokens remembered now (expired ones included until a full cache drops them).
    pub entries: usize,
    /// Most tokens remembered (0: the cache is off).
    pub capacity: usize,
    /// Verifications answered from the cache (the claims checked again, with the current
    /// time, whatever they decided).
    pub hits: u64,
    /// Look-ups that found no entry for the token with the key resolved now; the token was
    /// then verified in full. Tokens that are never looked up (no kid, a payload over
    /// [`MAX_CACHED_CLAIMS_BYTES`] of JSON) are not counted; those looked up but not kept
    /// (no `exp`, claims over [`MAX_CACHED_CLAIMS_BYTES`] parsed) are a miss every time.
    pub misses: u64,
    /// Memory the entries take, estimated: the parsed claims (the nodes of their maps,
    /// 32 bytes a value, strings and arrays by capacity) plus a fixed cost per entry for
    /// the hash, the key's fingerprint and the two indexes.
    pub approx_bytes: usize,
}

/// Verified tokens by the hash of the token, bounded to a number of entries, expiry-ordered.
/// `Send + Sync`; a verifier and its clones share one in an `Arc`.
pub(super) struct VerifiedCache {
    capacity: usize,
    entries: Mutex<Entries>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl VerifiedCache {
    /// An empty cache of at most `capacity` entries (at least 1).
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            entries: Mutex::default(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The most entries kept.
    pub(super) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Whether a token whose payload segment has `payload_len` characters may be cached at
    /// all (not looked up otherwise): parsed claims take at least about the size of their
    /// JSON.
    pub(super) fn admits(payload_len: usize) -> bool {
        payload_len / 4 * 3 <= MAX_CACHED_CLAIMS_BYTES
    }

    /// The claims `token` had when it verified, if the key that verified it is `key`;
    /// counted as a hit or a miss. An entry of another key (the kid published again with
    /// other material) is a miss and is dropped: the token is verified in full against the
    /// key of now.
    pub(super) fn get(
        &self,
        token: &TokenHash,
        key: &KeyFingerprint,
    ) -> Option<Arc<Map<String, Value>>> {
        let found = {
            let mut entries = self.lock();
            match entries.by_token.get(token) {
                Some(entry) if entry.key == *key => Some(entry.claims.clone()),
                Some(_) => {
                    entries.remove(token);
                    None
                }
                None => None,
            }
        };
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Remembers that `token` verified with `key` and has `claims`, until `expires` (the
    /// first Unix second at which its claims no longer pass: `exp` plus the leeway), unless
    /// the claims take more than [`MAX_CACHED_CLAIMS_BYTES`]. When the cache is full, the
    /// entries expired at `now` are dropped, then, if it is still full, the one that
    /// expires soonest.
    pub(super) fn insert(
        &self,
        token: TokenHash,
        key: KeyFingerprint,
        claims: &Map<String, Value>,
        expires: u64,
        now: u64,
    ) {
        let claims_bytes = map_bytes(claims);
        if expires <= now || claims_bytes > MAX_CACHED_CLAIMS_BYTES {
            return;
        }
        let claims = Arc::new(claims.clone());
        let mut entries = self.lock();
        entries.remove(&token);
        if entries.by_token.len() >= self.capacity {
            while let Some(&(soonest, old)) = entries.by_expiry.first()
                && soonest <= now
            {
                entries.remove(&old);
            }
            if entries.by_token.len() >= self.capacity
                && let Some(&(_, old)) = entries.by_expiry.first()
            {
                entries.remove(&old);
            }
        }
        let approx_bytes = ENTRY_BYTES + claims_bytes;
        entries.approx_bytes += approx_bytes;
        entries.by_expiry.insert((expires, token));
        entries.by_token.insert(
            token,
            Entry {
                key,
                expires,
                claims,
                approx_bytes,
            },
        );
    }

    /// The counters and the size now.
    pub(super) fn stats(&self) -> VerifiedCacheStats {
        let (entries, approx_bytes) = {
            let entries = self.lock();
            (entries.by_token.len(), entries.approx_bytes)
        };
        VerifiedCacheStats {
            entries,
            capacity: self.capacity,
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            approx_bytes,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Entries> {
        // Each critical section is a few map operations that leave both indexes consistent
        // before anything can panic: a poisoned lock still holds a usable cache.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl fmt::Debug for VerifiedCache {
    /// Counts only: the claims of other callers' tokens stay out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stats = self.stats();
        f.debug_struct("VerifiedCache")
            .field("entries", &stats.entries)
            .field("capacity", &stats.capacity)
            .finish_non_exhaustive()
    }
}

/// Fixed cost of an entry, estimated: the map's slot (hash, entry and a control byte, at
/// most 7/8 of the slots used), the expiry index's (expiry, hash; B-tree nodes about 2/3
/// full), the claims' `Arc` header and map.
const ENTRY_BYTES: usize = (size_of::<(TokenHash, Entry)>() + 1) * 8 / 7
    + size_of::<(u64, TokenHash)>() * 3 / 2
    + 16
    + size_of::<Map<String, Value>>();

/// One B-tree node of a claims map (serde_json's `Map` is a `BTreeMap`): 11 slots of key
/// and value, and the lengths and parent link.
const MAP_NODE_BYTES: usize = 11 * (size_of::<String>() + size_of::<Value>()) + 16;

/// The heap a parsed JSON object takes, estimated: its B-tree nodes (one for up to 11
/// members, then about one per 8), its keys, and its values. Bounded recursion: serde_json
/// parses no deeper than 128 levels.
fn map_bytes(map: &Map<String, Value>) -> usize {
    let nodes = if map.len() <= 11 {
        1
    } else {
        map.len().div_ceil(8)
    };
    nodes * MAP_NODE_BYTES
        + map
            .iter()
            .map(|(k, v)| k.capacity() + value_bytes(v))
            .sum::<usize>()
}

/// The heap a JSON value takes beyond its own 32 bytes (counted where it is held).
fn value_bytes(value: &Value) -> usize {
    match value {
        Value::String(s) => s.capacity(),
        Value::Array(items) => {
            items.capacity() * size_of::<Value>() + items.iter().map(value_bytes).sum::<usize>()
        }
        Value::Object(map) => map_bytes(map),
        Value::Null | Value::Bool(_) | Value::Number(_) => 0,
    }
}

#[derive(Default)]
struct Entries {
    by_token: HashMap<TokenHash, Entry>,
    /// (expires, token) for every entry: the soonest to expire first.
    by_expiry: BTreeSet<(u64, TokenHash)>,
    approx_bytes: usize,
}

struct Entry {
    key: KeyFingerprint,
    expires: u64,
    claims: Arc<Map<String, Value>>,
    approx_bytes: usize,
}

impl Entries {
    fn remove(&mut self, token: &TokenHash) {
        if let Some(entry) = self.by_token.remove(token) {
            self.by_expiry.remove(&(entry.expires, *token));
            self.approx_bytes -= entry.approx_bytes;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(n: u16) -> TokenHash {
        let mut hash = [0u8; 32];
        hash[..2].copy_from_slice(&n.to_be_bytes());
        hash
    }

    fn claims() -> Map<String, Value> {
        let mut map = Map::new();
        map.insert("sub".into(), "alice".into());
        map
    }

    const KEY: KeyFingerprint = [7; 32];

    #[test]
    fn a_full_cache_drops_expired_entries_then_those_that_expire_soonest() {
        let cache = VerifiedCache::new(3);
        let now = 1_000;
        cache.insert(token(1), KEY, &claims(), 1_001, now);
        cache.insert(token(2), KEY, &claims(), 1_500, now);
        cache.insert(token(3), KEY, &claims(), 1_200, now);
        assert_eq!(cache.stats().entries, 3);
        // At 1_100, token 1 has expired: it goes, nothing else does.
        cache.insert(token(4), KEY, &claims(), 1_400, 1_100);
        assert!(cache.get(&token(1), &KEY).is_none());
        for n in [2, 3, 4] {
            assert!(cache.get(&token(n), &KEY).is_some(), "token {n}");
        }
        // None has expired: the soonest to expire (token 3, at 1_200) goes.
        cache.insert(token(5), KEY, &claims(), 1_300, 1_100);
        assert!(cache.get(&token(3), &KEY).is_none());
        for n in [2, 4, 5] {
            assert!(cache.get(&token(n), &KEY).is_some(), "token {n}");
        }
        let stats = cache.stats();
        assert_eq!((stats.entries, stats.capacity), (3, 3));
        assert_eq!(stats.approx_bytes, 3 * (ENTRY_BYTES + map_bytes(&claims())));
    }

    #[test]
    fn the_bound_holds_whatever_is_inserted() {
        let cache = VerifiedCache::new(10);
        for n in 0..1_000u16 {
            cache.insert(token(n), KEY, &claims(), 2_000 + u64::from(n % 7), 1_000);
            assert!(cache.stats().entries <= 10);
        }
        // The same token again replaces its entry.
        cache.insert(token(999), KEY, &claims(), 5_000, 1_000);
        let stats = cache.stats();
        assert_eq!(stats.entries, 10);
        assert_eq!(
            stats.approx_bytes,
            10 * (ENTRY_BYTES + map_bytes(&claims()))
        );
    }

    #[test]
    fn an_entry_is_used_only_with_the_key_that_verified_it() {
        let cache = VerifiedCache::new(10);
        cache.insert(token(1), KEY, &claims(), 2_000, 1_000);
        assert!(cache.get(&token(1), &[8; 32]).is_none(), "another key");
        assert!(
            cache.get(&token(1), &KEY).is_none(),
            "dropped at the first look-up with another key"
        );
        let stats = cache.stats();
        assert_eq!((stats.hits, stats.misses, stats.entries), (0, 2, 0));
        assert_eq!(stats.approx_bytes, 0);
    }

    #[test]
    fn an_expired_token_is_not_inserted_and_the_debug_form_holds_no_claims() {
        let cache = VerifiedCache::new(10);
        cache.insert(token(1), KEY, &claims(), 1_000, 1_000);
        assert_eq!(cache.stats().entries, 0);
        cache.insert(token(2), KEY, &claims(), 1_001, 1_000);
        let debug = format!("{cache:?}");
        assert!(
            debug.contains("entries: 1") && !debug.contains("alice"),
            "{debug}"
        );
    }
}
