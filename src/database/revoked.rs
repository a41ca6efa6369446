//! [`PgRevoked`]: the revocation list (RFC 7009) over PostgreSQL, one row per revoked
//! `jti` with its token's `exp`, shared by the replicas. A revocation moves a counter of
//! its own (and notifies), so each replica reads the list again at its next reload and
//! the keys and clients are not reloaded for it.
//!
//! A revocation is one transaction under an advisory lock, so the bound of
//! [`MAX_REVOKED`] unexpired ids holds across replicas; every [`SWEEP_EVERY`]th one of a
//! process also deletes a bounded batch of expired rows. Times are the database's clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use deadpool_postgres::Pool;
use tokio::sync::Semaphore;

use super::{Counter, Database, DatabaseError, DbFailure};
use crate::oauth::revocation::{MAX_REVOKED, RevocationBackend, RevocationError, Revoked};
use crate::store::StoreVersion;

/// One revocation in this many (the first included) also deletes expired rows.
const SWEEP_EVERY: usize = 64;
/// Expired rows deleted by one sweep at most, so a revocation stays short whatever piled
/// up. Above [`SWEEP_EVERY`]: the sweeps outpace the rows that revocations add.
const SWEEP_BATCH: i64 = 1_000;
const _: () = assert!(SWEEP_BATCH as usize > SWEEP_EVERY);
/// Advisory lock key of revocations.
const LOCK_REVOKED: i64 = 0x6a77_7469_7373_0004;
/// Longest wait for another replica's revocation to end, below the call's own limit so
/// that a contended lock is reported as such.
const LOCK_WAIT: &str = "5s";
/// The latest expiry stored (9999-12-31T23:59:59Z): a later `exp` is kept until then,
/// which outlives any deployment, rather than failing the statement or wrapping.
const LATEST_EXP: i64 = 253_402_300_799;

/// The revoked tokens of a PostgreSQL store.
#[derive(Debug)]
pub struct PgRevoked {
    db: Arc<Database>,
    /// One revocation of this process holds a connection at a time: they wait for each
    /// other on the advisory lock anyway, and a flood of them must leave the pool's
    /// other connections to the polls and the assertion ids.
    permit: Arc<Semaphore>,
    revocations: AtomicUsize,
}

impl PgRevoked {
    /// The list in `db` (its table made by the schema migrations).
    pub fn new(db: Arc<Database>) -> Self {
        Self {
            db,
            permit: Arc::new(Semaphore::new(1)),
            revocations: AtomicUsize::new(0),
        }
    }

    /// One line naming the database, never its credentials.
    fn error(&self, e: DatabaseError) -> RevocationError {
        RevocationError::Database {
            store: self.db.describe().to_owned(),
            reason: e.reason().split_whitespace().collect::<Vec<_>>().join(" "),
        }
    }
}

impl RevocationBackend for PgRevoked {
    fn describe(&self) -> String {
        format!("PostgreSQL store {} (revoked tokens)", self.db.describe())
    }

    fn version(&self) -> Option<StoreVersion> {
        self.db.version(Counter::Revoked)
    }

    fn load(&self) -> Result<Vec<Revoked>, RevocationError> {
        let (list, counter) = self.db.call(read_unexpired).map_err(|e| self.error(e))?;
        // The list of an older copy of the database may miss revocations made since.
        self.db
            .check_counter(Counter::Revoked, counter)
            .map_err(|e| self.error(e))?;
        Ok(list)
    }

    /// Adds `entry` as [`RevocationBackend::revoke`] says; an id already stored with an
    /// earlier expiry is kept until the later one. Not refused once the counters went
    /// back (unlike the keys' and clients' changes): an added revocation is never less
    /// safe, whichever copy of the database it lands in.
    ///
    /// A call that timed out may have been applied; revoking again is no change.
    fn revoke(&self, entry: Revoked) -> Result<(), RevocationError> {
        let sweep = self
            .revocations
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(SWEEP_EVERY);
        let expires = exp_seconds(entry.exp);
        let permit = self.permit.clone();
        let full =
            self.db
                .call(move |pool| async move {
                    let _permit = permit.acquire_owned().await.map_err(|_| {
                        DbFailure::Other("the revocation list is closed".to_owned())
                    })?;
                    record(pool, entry.jti, expires, sweep).await
                })
                .map_err(|e| self.error(e))?;
        match full {
            Some(unexpired) => Err(RevocationError::Full(unexpired)),
            None => Ok(()),
        }
    }
}

/// The unexpired ids and the revoked counter. Ids are kept and loaded five minutes past
/// their expiry by the database's clock, so a database clock ahead of the replicas' (which
/// judge a token's `exp`) never lets a revoked token be active in its last moments.
async fn read_unexpired(pool: Pool) -> Result<(Vec<Revoked>, i64), DbFailure> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT jti, extract(epoch FROM least(expires, to_timestamp($1::bigint)))::bigint
             FROM jwt_issuer_revoked WHERE expires > now() - interval '5 minutes'",
            &[&LATEST_EXP],
        )
        .await?;
    let counter: i64 = client
        .query_one("SELECT revoked FROM jwt_issuer_versions", &[])
        .await?
        .get(0);
    let list = rows
        .iter()
        .map(|row| Revoked {
            jti: row.get(0),
            // Unexpired, so after 1970.
            exp: u64::try_from(row.get::<_, i64>(1)).unwrap_or(0),
        })
        .collect();
    Ok((list, counter))
}

/// Stores `jti` until `expires` in one transaction under [`LOCK_REVOKED`]; `Some(count)`
/// when [`MAX_REVOKED`] unexpired ids are there already (nothing added then).
async fn record(
    pool: Pool,
    jti: String,
    expires: i64,
    sweep: bool,
) -> Result<Option<usize>, DbFailure> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    tx.batch_execute(&format!("SET LOCAL lock_timeout = '{LOCK_WAIT}'"))
        .await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_REVOKED])
        .await?;
    // Revoked already, for as long: no change, and no statement to move the counter.
    let stored: Option<bool> = tx
        .query_opt(
            "SELECT expires >= to_timestamp($2::bigint) FROM jwt_issuer_revoked WHERE jti = $1",
            &[&jti, &expires],
        )
        .await?
        .map(|row| row.get(0));
    if stored == Some(true) {
        tx.commit().await?;
        return Ok(None);
    }
    // Expired rows are never loaded nor counted: this only keeps the table small. Looked
    // for first, so that a sweep with nothing to do does not move the counter.
    if sweep
        && tx
            .query_opt(
                "SELECT 1 FROM jwt_issuer_revoked
                 WHERE expires <= now() - interval '5 minutes' LIMIT 1",
                &[],
            )
            .await?
            .is_some()
    {
        tx.execute(
            "DELETE FROM jwt_issuer_revoked WHERE jti IN (
                 SELECT jti FROM jwt_issuer_revoked
                 WHERE expires <= now() - interval '5 minutes' LIMIT $1)",
            &[&SWEEP_BATCH],
        )
        .await?;
    }
    let unexpired: i64 = tx
        .query_one(
            "SELECT count(*) FROM jwt_issuer_revoked WHERE expires > now()",
            &[],
        )
        .await?
        .get(0);
    let limit = i64::try_from(MAX_REVOKED).unwrap_or(i64::MAX);
    if unexpired >= limit {
        // The sweep's deletions are kept.
        tx.commit().await?;
        return Ok(Some(usize::try_from(unexpired).unwrap_or(usize::MAX)));
    }
    if stored.is_some() {
        // Stored with an earlier expiry (by hand, or a jti seen again): kept until the
        // later one, never left to expire while its token is valid.
        tx.execute(
            "UPDATE jwt_issuer_revoked SET expires = to_timestamp($2::bigint) WHERE jti = $1",
            &[&jti, &expires],
        )
        .await?;
    } else {
        // The lock orders jwt-issuer's revocations; a row an operator inserted meanwhile
        // is left as it is.
        tx.execute(
            "INSERT INTO jwt_issuer_revoked (jti, expires) VALUES ($1, to_timestamp($2::bigint))
             ON CONFLICT (jti) DO NOTHING",
            &[&jti, &expires],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(None)
}

/// `exp` as stored: at most [`LATEST_EXP`], never wrapped into the past.
fn exp_seconds(exp: u64) -> i64 {
    i64::try_from(exp).unwrap_or(i64::MAX).min(LATEST_EXP)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exp_past_the_latest_is_kept_until_then_not_wrapped_into_the_past() {
        assert_eq!(exp_seconds(1_700_000_000), 1_700_000_000);
        assert_eq!(exp_seconds(u64::MAX), LATEST_EXP);
        assert_eq!(exp_seconds(i64::MAX as u64 + 1), LATEST_EXP);
    }
}
