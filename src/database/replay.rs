//! Single-use assertion ids shared by the replicas of one database ([`SharedReplayCache`]):
//! one statement records an id or finds it used, on the database's clock, so an assertion
//! accepted at one replica is refused at every other until it expires. Ids are stored as
//! [`replay_key`] hashes: a jti is the client's text, of any length.
//!
//! Unlike the rest of the store this is on a token request's path, so it is asynchronous
//! (the caller's worker thread serves other requests meanwhile), bounded by
//! [`CHECK_TIMEOUT`] (well below the store's other calls), and fails closed: a database
//! that does not answer is an error, never a first use.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::Semaphore;

use super::{CALL_TIMEOUT, Database, DatabaseError, DbFailure};
use crate::oauth::replay::{FirstUse, ReplayCache, ReplayError, replay_key};

/// Longest wait for one check, a free connection included: a token request waits this
/// long at most before it is refused.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(3);
// A token request must not wait as long as an operator's command may.
const _: () = assert!(CHECK_TIMEOUT.as_secs() * 2 <= CALL_TIMEOUT.as_secs());
/// Checks holding a connection at once, at most; beyond, a check waits (within
/// [`CHECK_TIMEOUT`]) for one to end: a flood of assertions must leave the pool's other
/// connections to the polls that keep the replica fresh.
const MAX_IN_FLIGHT: usize = 2;
/// One check in this many also deletes a batch of expired ids, in the background.
const SWEEP_EVERY: usize = 256;
/// Expired ids deleted by one sweep at most, so a sweep stays short whatever piled up.
const SWEEP_BATCH: i64 = 1_000;

/// The used assertion ids of a PostgreSQL store.
#[derive(Debug)]
pub struct SharedReplayCache {
    db: Arc<Database>,
    /// Connections the checks and sweeps may hold ([`MAX_IN_FLIGHT`]).
    permits: Arc<Semaphore>,
    checks: AtomicUsize,
    /// A sweep is waiting or running: one at a time.
    sweeping: Arc<AtomicBool>,
}

impl SharedReplayCache {
    /// Ids kept in `db` (its table made by the schema migrations).
    pub fn new(db: Arc<Database>) -> Self {
        Self {
            db,
            permits: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            checks: AtomicUsize::new(0),
            sweeping: Arc::default(),
        }
    }

    /// Deletes a batch of expired ids in the background, unless a sweep is under way. It
    /// waits its turn for a permit with the checks: under a steady flood of checks a sweep
    /// that only took a free one would never run, and the table would only grow.
    fn sweep(&self) {
        if self.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        let (pool, permits, sweeping) = (
            self.db.pool.clone(),
            self.permits.clone(),
            self.sweeping.clone(),
        );
        self.db.spawn(async move {
            // Bounded like every call; a failed sweep leaves rows for the next one.
            let _ = tokio::time::timeout(CALL_TIMEOUT, async {
                let _permit = permits.acquire_owned().await;
                delete_expired(pool).await
            })
            .await;
            sweeping.store(false, Ordering::Release);
        });
    }
}

impl ReplayCache for SharedReplayCache {
    /// Records the id until `exp`, as [`ReplayCache::first_use`] says. `exp` must be the
    /// last second the assertion can be accepted (its `exp`, plus any leeway the caller
    /// allows past it): the id may come again from then on.
    ///
    /// # Errors
    /// [`ReplayError::Store`] when the database fails or does not answer within
    /// [`CHECK_TIMEOUT`].
    fn first_use<'a>(&'a self, issuer: &'a str, jti: &'a str, exp: u64) -> FirstUse<'a> {
        let key = replay_key(issuer, jti);
        let expires = exp_seconds(exp);
        Box::pin(async move {
            if self
                .checks
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(SWEEP_EVERY)
            {
                self.sweep();
            }
            let permits = self.permits.clone();
            self.db
                .call_async(CHECK_TIMEOUT, move |pool| {
                    record(pool, permits, key, expires)
                })
                .await
                .map_err(|e| store_error(&e))
        })
    }
}

/// Inserts the id, or takes over its row when that expired; `true` unless an unexpired
/// row was there. One statement, so two replicas recording the same id at once get one
/// `true` between them (the second waits for the first's row, then finds it unexpired).
async fn record(
    pool: Pool,
    permits: Arc<Semaphore>,
    key: [u8; 32],
    expires: i64,
) -> Result<bool, DbFailure> {
    let _permit = permits
        .acquire_owned()
        .await
        .map_err(|_| DbFailure::Other("the replay cache is closed".to_owned()))?;
    let client = pool.get().await?;
    // Prepared once per connection: one round trip per check after that.
    let statement = client
        .prepare_cached(
            "INSERT INTO jwt_issuer_used_jtis AS u (key, expires)
             VALUES ($1, to_timestamp($2::bigint))
             ON CONFLICT (key) DO UPDATE SET expires = EXCLUDED.expires
                 WHERE u.expires <= now()
             RETURNING true",
        )
        .await?;
    let row = client
        .query_opt(&statement, &[&key.as_slice(), &expires])
        .await?;
    Ok(row.is_some())
}

/// Deletes up to [`SWEEP_BATCH`] expired ids. Rows another sweep holds are skipped, and
/// the condition is checked again on the row deleted, so a row that a check just took
/// over (its new expiry ahead) is never deleted.
async fn delete_expired(pool: Pool) -> Result<u64, DbFailure> {
    let client = pool.get().await?;
    Ok(client
        .execute(
            "DELETE FROM jwt_issuer_used_jtis
             WHERE expires < now() AND key IN (
                 SELECT key FROM jwt_issuer_used_jtis WHERE expires < now()
                 LIMIT $1 FOR UPDATE SKIP LOCKED)",
            &[&SWEEP_BATCH],
        )
        .await?)
}

/// `exp` as PostgreSQL's bigint; one past its range fails the statement (closed).
fn exp_seconds(exp: u64) -> i64 {
    i64::try_from(exp).unwrap_or(i64::MAX)
}

/// One line naming the database (never its credentials) and what failed.
fn store_error(e: &DatabaseError) -> ReplayError {
    let line = format!("cannot check the assertion id for reuse: {e}");
    ReplayError::Store(line.split_whitespace().collect::<Vec<_>>().join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_are_one_line_naming_the_database_without_credentials() {
        let url = super::super::DatabaseUrl::new("postgres://jwt:hunter2@db.internal:6432/tokens")
            .redacted();
        let failed = DatabaseError::Failed {
            url: url.clone(),
            reason: "connection reset\n  by peer".to_owned(),
        };
        let ReplayError::Store(line) = store_error(&failed) else {
            panic!("not a store error");
        };
        assert_eq!(
            line,
            "cannot check the assertion id for reuse: postgres://db.internal:6432/tokens: connection reset by peer"
        );
        let timeout = DatabaseError::Timeout {
            url,
            limit: CHECK_TIMEOUT,
        };
        let line = store_error(&timeout).to_string();
        assert!(
            line.ends_with("db.internal:6432/tokens: no answer within 3s"),
            "{line}"
        );
        assert!(
            !line.contains("hunter2") && !line.contains("jwt@"),
            "{line}"
        );
    }

    #[test]
    fn an_exp_past_the_databases_range_is_not_wrapped_into_the_past() {
        assert_eq!(exp_seconds(1_700_000_000), 1_700_000_000);
        // Wrapped, it would be negative: an id stored as expired long ago, reusable at once.
        assert_eq!(exp_seconds(u64::MAX), i64::MAX);
    }
}
