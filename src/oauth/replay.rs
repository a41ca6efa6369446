//! Single-use token ids: a client assertion (RFC 7523 section 3, item 7) is accepted once,
//! and its `jti` is remembered until the assertion expires. [`ReplayCache`] is the seam;
//! [`MemoryReplayCache`] serves one process, the PostgreSQL store shares one table between
//! replicas (`database::replay`), so an assertion used at one replica is refused at all.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

use aws_lc_rs::digest;

use crate::time::unix_now;

/// Ids remembered by one process at most: at the assertion lifetime's ceiling of 5
/// minutes this is over 3,000 assertions a second, and 64 bytes an entry.
pub const MAX_REMEMBERED: usize = 1_000_000;

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

/// The ids of one process, in memory.
#[derive(Debug, Default)]
pub struct MemoryReplayCache {
    /// Hash of (issuer, jti) to `exp`.
    seen: Mutex<HashMap<[u8; 32], u64>>,
    limit: Option<usize>,
}

impl MemoryReplayCache {
    /// A cache of at most [`MAX_REMEMBERED`] ids.
    pub fn new() -> Self {
        Self::default()
    }

    /// A cache of at most `limit` ids (tests).
    pub fn with_limit(limit: usize) -> Self {
        Self {
            seen: Mutex::default(),
            limit: Some(limit),
        }
    }

    /// Records a use now; see [`ReplayCache::first_use`].
    ///
    /// # Errors
    /// [`ReplayError::Full`].
    pub fn record(&self, issuer: &str, jti: &str, exp: u64) -> Result<bool, ReplayError> {
        let key = replay_key(issuer, jti);
        let now = unix_now();
        let limit = self.limit.unwrap_or(MAX_REMEMBERED);
        // Plain entries: a panic elsewhere cannot leave one half-written.
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(&until) = seen.get(&key)
            && until > now
        {
            return Ok(false);
        }
        if seen.len() >= limit {
            seen.retain(|_, until| *until > now);
            if seen.len() >= limit {
                return Err(ReplayError::Full(seen.len()));
            }
        }
        seen.insert(key, exp);
        Ok(true)
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
        let cache = MemoryReplayCache::with_limit(2);
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
}
