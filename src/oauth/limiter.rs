//! Brute-force limits on client authentication: after too many failures for one client id
//! or from one address within a window, further attempts for that id or from that address
//! are refused (429) until the window ends. Other ids and addresses are unaffected. The
//! address limit is higher than the id limit, since many clients may share an address
//! (a NAT, a sidecar): one client's failures lock that client, not its neighbours. Memory is
//! bounded: each table holds at most `capacity` entries, expired ones go first, then the
//! oldest.

use crate::sync::lock;
use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The address limit, as a multiple of the client id limit.
pub const ADDR_LIMIT_FACTOR: u32 = 5;

/// The brute-force limits' settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthLimits {
    /// Failed authentications allowed per window for one client id; an address gets
    /// [`ADDR_LIMIT_FACTOR`] times as many (default 10, at least 1).
    pub max_failures: u32,
    /// The window; a locked id or address waits until it ends (default 60 s, not zero).
    pub window: Duration,
    /// Entries per table, client ids and addresses (default 10,000).
    pub capacity: usize,
}

impl Default for AuthLimits {
    fn default() -> Self {
        Self {
            max_failures: 10,
            window: Duration::from_secs(60),
            capacity: 10_000,
        }
    }
}

/// Failure counts shared with the other replicas of a store (the PostgreSQL store), so
/// that N replicas do not give an attacker N times the attempts.
pub trait SharedFailures: Send + Sync + fmt::Debug {
    /// Adds one failure for `subject` (a client id or an address, as text) to the shared
    /// count of the current `window`, in the background: never blocks, and a store that
    /// cannot be reached only leaves the local count in force. When the store answers,
    /// `merge` gets the shared count and the time left in its window.
    fn add(&self, subject: String, window: Duration, merge: Box<dyn FnOnce(u32, Duration) + Send>);
}

/// Counts failed authentications per client id and per address.
#[derive(Debug)]
pub struct AuthLimiter {
    max_failures: u32,
    max_addr_failures: u32,
    window: Duration,
    capacity: usize,
    tables: Arc<Mutex<Tables>>,
    shared: Option<Arc<dyn SharedFailures>>,
}

#[derive(Debug, Default)]
struct Tables {
    by_client: HashMap<String, Window>,
    by_addr: HashMap<IpAddr, Window>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    failures: u32,
}

impl AuthLimiter {
    /// A limiter allowing `limits.max_failures` per window per client id and
    /// [`ADDR_LIMIT_FACTOR`] times as many per address, each table bounded to
    /// `limits.capacity` entries.
    pub fn new(limits: AuthLimits) -> Self {
        let max_failures = limits.max_failures.max(1);
        Self {
            max_failures,
            max_addr_failures: max_failures.saturating_mul(ADDR_LIMIT_FACTOR),
            window: limits.window,
            capacity: limits.capacity.max(1),
            tables: Arc::default(),
            shared: None,
        }
    }

    /// This limiter, also counting each failure in `shared` and taking the higher of the
    /// local and the shared count. A success never writes there.
    #[must_use]
    pub fn with_shared(mut self, shared: Arc<dyn SharedFailures>) -> Self {
        self.shared = Some(shared);
        self
    }

    /// `Err(retry_after)` when this id or address is locked out now.
    pub fn check(&self, client_id: &str, addr: Option<IpAddr>) -> Result<(), Duration> {
        let now = Instant::now();
        let tables = self.lock();
        let by_client = tables
            .by_client
            .get(client_id)
            .and_then(|w| self.locked_for(w, self.max_failures, now));
        let by_addr = addr
            .and_then(|a| tables.by_addr.get(&a))
            .and_then(|w| self.locked_for(w, self.max_addr_failures, now));
        match by_client.max(by_addr) {
            Some(wait) => Err(wait),
            None => Ok(()),
        }
    }

    /// Records one failed authentication.
    pub fn record_failure(&self, client_id: &str, addr: Option<IpAddr>) {
        let now = Instant::now();
        let mut tables = self.lock();
        let Tables { by_client, by_addr } = &mut *tables;
        self.bump(by_client, client_id.to_owned(), now);
        if let Some(addr) = addr {
            self.bump(by_addr, addr, now);
        }
        drop(tables);
        if let Some(shared) = &self.shared {
            let tables = self.tables.clone();
            let id = client_id.to_owned();
            let window = self.window;
            shared.add(
                format!("client {client_id}"),
                window,
                Box::new(move |count, left| {
                    merge(&mut lock(&tables).by_client, id, count, left, window);
                }),
            );
            if let Some(addr) = addr {
                let tables = self.tables.clone();
                shared.add(
                    format!("address {addr}"),
                    self.window,
                    Box::new(move |count, left| {
                        merge(&mut lock(&tables).by_addr, addr, count, left, window);
                    }),
                );
            }
        }
    }

    fn bump<K: Eq + Hash + Clone>(&self, table: &mut HashMap<K, Window>, key: K, now: Instant) {
        if !table.contains_key(&key) && table.len() >= self.capacity {
            table.retain(|_, w| now.duration_since(w.start) < self.window);
            if table.len() >= self.capacity
                && let Some(oldest) = table
                    .iter()
                    .min_by_key(|(_, w)| w.start)
                    .map(|(k, _)| k.clone())
            {
                table.remove(&oldest);
            }
        }
        let entry = table.entry(key).or_insert(Window {
            start: now,
            failures: 0,
        });
        if now.duration_since(entry.start) >= self.window {
            *entry = Window {
                start: now,
                failures: 0,
            };
        }
        entry.failures = entry.failures.saturating_add(1);
    }

    fn locked_for(&self, w: &Window, limit: u32, now: Instant) -> Option<Duration> {
        let end = w.start + self.window;
        (w.failures >= limit && now < end).then(|| end - now)
    }

    /// Entries held now (for tests and metrics).
    pub fn tracked(&self) -> (usize, usize) {
        let tables = self.lock();
        (tables.by_client.len(), tables.by_addr.len())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tables> {
        lock(&self.tables)
    }
}

/// Takes a shared count, whose window of length `window` ends `left` from now, when it
/// is higher than the local one. Only entries this replica tracks already are raised (the
/// table stays bounded).
fn merge<K: Eq + Hash>(
    table: &mut HashMap<K, Window>,
    key: K,
    count: u32,
    left: Duration,
    window: Duration,
) {
    let now = Instant::now();
    if let Some(entry) = table.get_mut(&key)
        && count > entry.failures
    {
        entry.failures = count;
        // Only ever later: the shared window may have started before the local one, and
        // must not end a local lock early.
        if let Some(start) = (now + left.min(window)).checked_sub(window) {
            entry.start = entry.start.max(start);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1)));
    const B: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2)));

    #[test]
    fn locks_an_id_after_max_failures_and_not_others() {
        let limiter = AuthLimiter::new(AuthLimits {
            max_failures: 3,
            window: Duration::from_secs(60),
            capacity: 100,
        });
        for _ in 0..3 {
            assert!(limiter.check("victim", B).is_ok());
            limiter.record_failure("victim", None);
        }
        let wait = limiter.check("victim", B).unwrap_err();
        assert!(wait > Duration::from_secs(55) && wait <= Duration::from_secs(60));
        assert!(limiter.check("other", B).is_ok());
    }

    #[test]
    fn locks_an_address_across_ids_at_a_higher_limit() {
        let limiter = AuthLimiter::new(AuthLimits {
            max_failures: 3,
            window: Duration::from_secs(60),
            capacity: 100,
        });
        for i in 0..3 * ADDR_LIMIT_FACTOR {
            assert!(limiter.check("fresh-id", A).is_ok(), "locked after {i}");
            limiter.record_failure(&format!("guess-{i}"), A);
        }
        assert!(limiter.check("fresh-id", A).is_err());
        assert!(limiter.check("fresh-id", B).is_ok());
    }

    #[test]
    fn lock_ends_with_the_window() {
        let limiter = AuthLimiter::new(AuthLimits {
            max_failures: 1,
            window: Duration::from_millis(50),
            capacity: 100,
        });
        limiter.record_failure("x", A);
        assert!(limiter.check("x", A).is_err());
        std::thread::sleep(Duration::from_millis(60));
        assert!(limiter.check("x", A).is_ok());
    }

    #[test]
    fn memory_is_bounded() {
        let limiter = AuthLimiter::new(AuthLimits {
            max_failures: 3,
            window: Duration::from_secs(60),
            capacity: 50,
        });
        for i in 0..1000u32 {
            let addr = IpAddr::V4(std::net::Ipv4Addr::from(i));
            limiter.record_failure(&format!("id-{i}"), Some(addr));
        }
        assert_eq!(limiter.tracked(), (50, 50));
    }
}
