//! Versioned schema migrations, applied at start under an advisory lock (so replicas
//! starting together apply each once), each in the transaction that records it. A schema
//! newer than this binary knows is refused: an older binary must not write to it.

use deadpool_postgres::Pool;

use super::DbFailure;

/// The migrations, in order; each one's number is its position from 1.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_store.sql"),
    include_str!("migrations/0002_replay.sql"),
    include_str!("migrations/0003_revoked.sql"),
    include_str!("migrations/0004_held_keys.sql"),
];

/// The schema version this binary writes.
#[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// Advisory lock key of migrations (`jwt-issuer` plus a purpose, as a number).
const LOCK_MIGRATE: i64 = 0x6a77_7469_7373_0001;

pub(super) async fn apply(pool: Pool) -> Result<(), DbFailure> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_MIGRATE])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS jwt_issuer_schema (
             version integer PRIMARY KEY,
             applied timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await?;
    let found: i32 = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM jwt_issuer_schema",
            &[],
        )
        .await?
        .get(0);
    if found > SCHEMA_VERSION {
        return Err(DbFailure::SchemaTooNew {
            found,
            known: SCHEMA_VERSION,
        });
    }
    for (version, sql) in (1..)
        .zip(MIGRATIONS)
        .skip(usize::try_from(found).unwrap_or(0))
    {
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO jwt_issuer_schema (version) VALUES ($1)",
            &[&version],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}
