//! Single-use token ids: a client assertion (RFC 7523 section 3, item 7) is accepted once,
//! and its `jti` is remembered until the assertion expires. [`ReplayCache`] is the seam;
//! [`MemoryReplayCache`] serves one process, the PostgreSQL store shares one table between
//! replicas (`database::replay`), so an assertion used at one replica is refused at all.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

use aws_lc_rs::digest;

use crate::time::unix_now;

/// Ids remembered by one process at most: at the assertion lifetime's ceiling of 5
/// minutes this is over 3,000 assertions a second, and about 150 bytes an entry.
pub const MAX_REMEMBERED: usize = 1_000_000;
/// Ids one issuer (client) may hold at once: over 300 assertions a second for 5 minutes.
pub const MAX_PER_ISSUER: usize = 100_000;

/// The answer of [`ReplayCache::first_use`].
pub type FirstUse<'a> = Pin<Box<dyn Future<Output = Result<bool, ReplayError>> + Send + 'a>>;

/// Where used ids are remembered.
pub trait ReplayCache: Send + Sync + std::fmt::Debug {
    /// Records `jti` of `issuer` as used until `exp` (seconds since the epoch). `true` the
    /// first time, `false` for every later use before `exp`.
    ///
    /// # Errors
    /// When it cannot be told (the store does not answer, the cache is full): the caller
    /// refuses the assertion, never accepts it unchecked.
    fn first_use<'a>(&'a self, issuer: &'a str, jti: &'a str, exp: u64) -> FirstUse<'a>;
}

/// Why a use could not be recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// Every slot holds an id that has not expired yet.
    #[error("the replay cache is full ({0} unexpired ids)")]
    Full(usize),
    /// The shared store failed or did not answer.
    #[error("{0}")]
    Store(String),
}

/// The ids of one process, in memory, in order of expiry (expired ones go first, each in
/// O(log n)); each issuer may hold at most [`MAX_PER_ISSUER`] of them, so one client
/// (or its stolen key) cannot fill the cache and lock the others out.
#[derive(Debug)]
pub struct MemoryReplayCache {
    entries: Mutex<Entries>,
    limit: usize,
    per_issuer: usize,
}

#[derive(Debug, Default)]
struct Entries {
    /// Hash of (issuer, jti) to its expiry and issuer.
    by_key: HashMap<[u8; 32], (u64, String)>,
    by_expiry: BTreeSet<(u64, [u8; 32])>,
    per_issuer: HashMap<String, usize>,
}

impl Default for MemoryReplayCache {
    fn default() -> Self {
        Self::with_limits(MAX_REMEMBERED, MAX_PER_ISSUER)
    }
}

impl MemoryReplayCache {
    /// A cache of at most [`MAX_REMEMBERED`] ids, [`MAX_PER_ISSUER`] per issuer.
    pub fn new() -> Self {
        Self::default()
    }

    /// A cache of at most `limit` ids, `per_issuer` per issuer (tests).
    pub fn with_limits(limit: usize, per_issuer: usize) -> Self {
        Self {
            entries: Mutex::default(),
            limit,
            per_issuer,
        }
    }

    /// Records a use now; see [`ReplayCache::first_use`].
    ///
    /// # Errors
    /// [`ReplayError::Full`], for the cache or for this issuer.
    pub fn record(&self, issuer: &str, jti: &str, exp: u64) -> Result<bool, ReplayError> {
        let key = replay_key(issuer, jti);
        let now = unix_now();
        // Plain entries: a panic elsewhere cannot leave one half-written.
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.forget_expired(now);
        if entries.by_key.contains_key(&key) {
            return Ok(false);
        }
        let held = entries.per_issuer.get(issuer).copied().unwrap_or(0);
        if held >= self.per_issuer {
            return Err(ReplayError::Full(held));
        }
        if entries.by_key.len() >= self.limit {
            return Err(ReplayError::Full(entries.by_key.len()));
        }
        entries.by_key.insert(key, (exp, issuer.to_owned()));
        entries.by_expiry.insert((exp, key));
        *entries.per_issuer.entry(issuer.to_owned()).or_default() += 1;
        Ok(true)
    }
}

impl Entries {
    fn forget_expired(&mut self, now: u64) {
        while let Some(&(exp, key)) = self.by_expiry.first()
            && exp <= now
        {
            self.by_expiry.pop_first();
            if let Some((_, issuer)) = self.by_key.remove(&key)
                && let Some(held) = self.per_issuer.get_mut(&issuer)
            {
                *held -= 1;
                if *held == 0 {
                    self.per_issuer.remove(&issuer);
                }
            }
        }
    }
}

impl ReplayCache for MemoryReplayCache {
    fn first_use<'a>(&'a self, issuer: &'a str, jti: &'a str, exp: u64) -> FirstUse<'a> {
        Box::pin(std::future::ready(self.record(issuer, jti, exp)))
    }
}

/// The key an id is remembered by: a hash of issuer and jti (both from the network, of any
/// length), length-prefixed so no two pairs share one.
pub fn replay_key(issuer: &str, jti: &str) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(b"jwt-issuer jti\0");
    ctx.update(&(issuer.len() as u64).to_be_bytes());
    ctx.update(issuer.as_bytes());
    ctx.update(jti.as_bytes());
    let mut key = [0u8; 32];
    key.copy_from_slice(ctx.finish().as_ref());
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_accepted_once_per_issuer_until_it_expires() {
        let cache = MemoryReplayCache::new();
        let later = unix_now() + 60;
        assert!(cache.record("svc", "a", later).unwrap());
        assert!(!cache.record("svc", "a", later).unwrap());
        assert!(cache.record("other", "a", later).unwrap());
        assert!(cache.record("svc", "b", later).unwrap());
        // Issuer and jti are not simply joined: ("ab", "c") is not ("a", "bc").
        assert!(cache.record("ab", "c", later).unwrap());
        assert!(cache.record("a", "bc", later).unwrap());
        // An id whose assertion expired may come again (it is refused as expired before).
        assert!(cache.record("svc", "old", unix_now() - 1).unwrap());
        assert!(cache.record("svc", "old", later).unwrap());
    }

    #[test]
    fn a_full_cache_refuses_instead_of_forgetting_an_unexpired_id() {
        let cache = MemoryReplayCache::with_limits(2, 2);
        let later = unix_now() + 60;
        assert!(cache.record("svc", "a", later).unwrap());
        assert!(cache.record("svc", "b", unix_now() - 1).unwrap());
        // The expired entry makes room.
        assert!(cache.record("svc", "c", later).unwrap());
        assert!(matches!(
            cache.record("svc", "d", later),
            Err(ReplayError::Full(2))
        ));
        assert!(!cache.record("svc", "a", later).unwrap());
    }

    #[test]
    fn one_issuer_cannot_fill_the_cache_for_the_others() {
        let cache = MemoryReplayCache::with_limits(10, 3);
        let later = unix_now() + 60;
        for jti in ["a", "b", "c"] {
            assert!(cache.record("greedy", jti, later).unwrap());
        }
        assert!(matches!(
            cache.record("greedy", "d", later),
            Err(ReplayError::Full(3))
        ));
        assert!(cache.record("other", "a", later).unwrap());
        // Expired ids leave the issuer's count.
        let cache = MemoryReplayCache::with_limits(10, 1);
        assert!(cache.record("svc", "a", unix_now() - 1).unwrap());
        assert!(cache.record("svc", "b", later).unwrap());
    }
}
