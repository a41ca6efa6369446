//! Failed client authentications counted across the replicas of one database
//! ([`SharedFailures`]): each failure adds one to a row per subject in the background,
//! and the shared count comes back to the replica's own limiter. Successes never write.
//! Subjects are stored hashed: a secret pasted as a client id must not land in a table.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::{CALL_TIMEOUT, Database, DbFailure};
use crate::oauth::SharedFailures;

/// Shared counts in flight at most; beyond, a failure waits (counted) for the next add of
/// its subject: a database that went away must not pile up tasks under a brute-force
/// attack, and the counts must leave the pool's other connections to the polls that keep
/// the replica fresh.
const MAX_IN_FLIGHT: usize = 2;
/// Subjects whose failures wait for a free slot, at most (then the oldest are dropped: the
/// local limiter still counts them).
const MAX_WAITING: usize = 10_000;
/// One add in this many also deletes rows whose window ended long ago.
const SWEEP_EVERY: usize = 256;

/// The failure counts of a PostgreSQL store.
#[derive(Debug)]
pub struct SharedFailureCounts {
    db: Arc<Database>,
    in_flight: Arc<AtomicUsize>,
    adds: AtomicUsize,
    /// Failures not sent yet, by hashed subject.
    waiting: std::sync::Mutex<std::collections::HashMap<String, u32>>,
}

impl SharedFailureCounts {
    /// Counts kept in `db`.
    pub fn new(db: Arc<Database>) -> Self {
        Self {
            db,
            in_flight: Arc::default(),
            adds: AtomicUsize::new(0),
            waiting: std::sync::Mutex::default(),
        }
    }
}

impl SharedFailures for SharedFailureCounts {
    fn add(&self, subject: String, window: Duration, merge: Box<dyn FnOnce(u32, Duration) + Send>) {
        let subject = hashed(&subject);
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= MAX_IN_FLIGHT {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            // Sent with the subject's next add, so the shared count misses nothing.
            if waiting.len() < MAX_WAITING || waiting.contains_key(&subject) {
                *waiting.entry(subject).or_default() += 1;
            }
            return;
        }
        let failures = 1 + waiting.remove(&subject).unwrap_or(0);
        drop(waiting);
        let sweep = self
            .adds
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(SWEEP_EVERY);
        let pool = self.db.pool.clone();
        let in_flight = self.in_flight.clone();
        self.db.spawn(async move {
            // Bounded like every call: a hung one would hold its connection for ever.
            let added = tokio::time::timeout(
                CALL_TIMEOUT,
                add_one(pool, subject, failures, window, sweep),
            );
            if let Ok(Ok((count, left))) = added.await {
                merge(count, left);
            }
            in_flight.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

async fn add_one(
    pool: deadpool_postgres::Pool,
    subject: String,
    failures: u32,
    window: Duration,
    sweep: bool,
) -> Result<(u32, Duration), DbFailure> {
    let failures = i32::try_from(failures).unwrap_or(i32::MAX);
    let client = pool.get().await?;
    let window_secs = window.as_secs_f64();
    // A window that ended starts again at one; the database's clock decides for all.
    let row = client
        .query_one(
            "INSERT INTO jwt_issuer_auth_failures AS f (subject, window_start, failures)
             VALUES ($1, now(), $3)
             ON CONFLICT (subject) DO UPDATE SET
                 failures = CASE WHEN f.window_start <= now() - make_interval(secs => $2)
                            THEN $3 ELSE f.failures + $3 END,
                 window_start = CASE WHEN f.window_start <= now() - make_interval(secs => $2)
                                THEN now() ELSE f.window_start END
             RETURNING failures,
                 extract(epoch FROM window_start + make_interval(secs => $2) - now())::float8",
            &[&subject, &window_secs, &failures],
        )
        .await?;
    let count: i32 = row.get(0);
    let left: f64 = row.get(1);
    if sweep {
        client
            .execute(
                "DELETE FROM jwt_issuer_auth_failures
                 WHERE window_start < now() - make_interval(secs => $1) * 2",
                &[&window_secs],
            )
            .await?;
    }
    Ok((
        u32::try_from(count).unwrap_or(0),
        Duration::try_from_secs_f64(left.max(0.0)).unwrap_or_default(),
    ))
}

fn hashed(subject: &str) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(b"jwt-issuer failure subject\0");
    ctx.update(subject.as_bytes());
    URL_SAFE_NO_PAD.encode(ctx.finish())
}
