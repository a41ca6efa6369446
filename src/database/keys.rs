//! [`PgKeys`]: the key backend over PostgreSQL. The manifest is the rows of
//! `jwt_issuer_keys` in order; each private key is a ciphertext in its row, sealed under
//! the KEK ([`super::kek`]). A change is one transaction holding an advisory lock, so the
//! replicas make one change at a time and each decides on the state the others left.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_postgres::GenericClient;

use super::kek::Sealed;
use super::{ChangeDeadline, Counter, Database, DatabaseError, DbFailure};
use crate::SigningAlg;
use crate::keys::{
    KeyBackend, KeyRecord, KeyState, KeyStoreError, Manifest, Millis, NewKey, SigningKey,
};
use crate::store::StoreVersion;

/// Advisory lock key of key changes.
pub(super) const LOCK_KEYS: i64 = 0x6a77_7469_7373_0002;
/// How long a change may wait for another replica's change (the server's lock_timeout
/// is 10 s) and then run.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(25);

/// Test hook: `JWT_ISSUER_CRASH_AT=before-commit` aborts the process inside a key change,
/// after its writes and before its commit.
const CRASH_ENV: &str = "JWT_ISSUER_CRASH_AT";

const COLUMNS: &str =
    "kid, alg, state, created, published, activated, retired, remove_after, removed, uri";

/// The keys of a PostgreSQL store.
#[derive(Debug, Clone)]
pub struct PgKeys {
    db: Arc<Database>,
}

impl PgKeys {
    /// The keys in `db`.
    pub fn new(db: Arc<Database>) -> Self {
        Self { db }
    }

    fn error(&self, e: DatabaseError) -> KeyStoreError {
        KeyStoreError::Database {
            store: self.db.describe().to_owned(),
            reason: e.reason(),
        }
    }

    fn invalid(&self, reason: String) -> KeyStoreError {
        KeyStoreError::InvalidManifest {
            path: format!("{} (table jwt_issuer_keys)", self.db.describe()).into(),
            reason,
        }
    }

    /// The manifest from rows and the keys counter; `None` for a store never changed.
    fn manifest_of(
        &self,
        rows: Vec<RecordRow>,
        counter: i64,
    ) -> Result<Option<Manifest>, KeyStoreError> {
        // Rows of an older copy of the database are never read nor changed.
        self.db
            .check_counter(Counter::Keys, counter)
            .map_err(|e| self.error(e))?;
        if rows.is_empty() && counter == 0 {
            return Ok(None);
        }
        if rows.is_empty() {
            // Changes were recorded and every row is gone: deleted outside jwt-issuer.
            // Never read as a first start, which would sign with fresh keys no verifier
            // expects (or adopt nothing and publish an empty set).
            return Err(self.invalid(format!(
                "the table is empty although {counter} changes were recorded: rows were deleted outside jwt-issuer; restore them"
            )));
        }
        let keys = rows
            .into_iter()
            .map(|row| row.into_record())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|reason| self.invalid(reason))?;
        let manifest = Manifest {
            version: Manifest::VERSION,
            keys,
        };
        manifest.check().map_err(|reason| self.invalid(reason))?;
        Ok(Some(manifest))
    }

    fn sealed_of(&self, kid: &str) -> Result<Option<(SigningAlg, Sealed)>, KeyStoreError> {
        let kid = kid.to_owned();
        let row = self
            .db
            .call(move |pool| async move {
                let client = pool.get().await?;
                let row = client
                    .query_opt(
                        "SELECT alg, kek_id, nonce, ciphertext FROM jwt_issuer_keys WHERE kid = $1",
                        &[&kid],
                    )
                    .await?;
                Ok(row.map(|r| {
                    let alg: String = r.get(0);
                    let kek_id: Option<String> = r.get(1);
                    let nonce: Option<Vec<u8>> = r.get(2);
                    let ciphertext: Option<Vec<u8>> = r.get(3);
                    (alg, kek_id, nonce, ciphertext)
                }))
            })
            .map_err(|e| self.error(e))?;
        let Some((alg, Some(kek_id), Some(nonce), Some(ciphertext))) = row else {
            return Ok(None);
        };
        let alg = alg
            .parse::<SigningAlg>()
            .map_err(|_| self.invalid(format!("key row with unknown algorithm {alg:?}")))?;
        Ok(Some((
            alg,
            Sealed {
                kek_id,
                nonce,
                ciphertext,
            },
        )))
    }

    /// The opened private key of `record`, as PEM.
    fn open(&self, record: &KeyRecord) -> Result<zeroize::Zeroizing<Vec<u8>>, KeyStoreError> {
        let Some((_, sealed)) = self.sealed_of(&record.kid)? else {
            return Err(KeyStoreError::KeyMissing {
                kid: record.kid.clone(),
                location: self.key_location(&record.kid),
            });
        };
        // Bound to the kid and algorithm of the record, not of the row: a row whose
        // algorithm was edited does not open either.
        self.db
            .kek()
            .open(&record.kid, record.alg, &sealed)
            .map_err(|e| KeyStoreError::Sealed {
                kid: record.kid.clone(),
                reason: e.to_string(),
            })
    }

    fn material(&self, record: &KeyRecord) -> Result<NewKey, KeyStoreError> {
        let pem = self.open(record)?;
        NewKey::from_pem(&pem).map_err(|source| KeyStoreError::InvalidKey {
            path: self.key_location(&record.kid).into(),
            source,
        })
    }
}

impl KeyBackend for PgKeys {
    fn describe(&self) -> String {
        format!("PostgreSQL store {}", self.db.describe())
    }

    fn version(&self) -> Option<StoreVersion> {
        self.db.version(Counter::Keys)
    }

    fn read_manifest(&self) -> Result<Option<Manifest>, KeyStoreError> {
        let (rows, counter) = self
            .db
            .call(|pool| async move {
                let client = pool.get().await?;
                read_rows(&**client).await
            })
            .map_err(|e| self.error(e))?;
        self.manifest_of(rows, counter)
    }

    fn with_unrecorded(&self, manifest: Manifest, _now: Millis) -> Result<Manifest, KeyStoreError> {
        // Nothing reaches the database but through a change.
        Ok(manifest)
    }

    fn load_key(&self, record: &KeyRecord) -> Result<SigningKey, KeyStoreError> {
        let key = self.material(record)?;
        key.signing_key(self.key_location(&record.kid))
            .map_err(|source| KeyStoreError::InvalidKey {
                path: self.key_location(&record.kid).into(),
                source,
            })
    }

    fn export_key(&self, record: &KeyRecord) -> Result<NewKey, KeyStoreError> {
        self.material(record)
    }

    fn since_last_contact(&self) -> Option<Duration> {
        // Never polled yet (a CLI command): the store was just read, so it is fresh.
        Some(self.db.unreachable_for().unwrap_or_default())
    }

    fn changes(&self) -> Option<Arc<tokio::sync::Notify>> {
        Some(self.db.changed())
    }

    fn key_location(&self, kid: &str) -> String {
        format!("{}#key={kid}", self.db.describe())
    }

    fn transact(
        &self,
        change: &mut dyn FnMut(&mut Manifest, &mut Vec<NewKey>, Millis),
    ) -> Result<(), KeyStoreError> {
        // The transaction lives on the database's runtime; `change` runs here, between
        // its read and its writes. Whatever fails, or times out, drops the transaction:
        // rolled back.
        let tx = self.db.begin_change(CHANGE_TIMEOUT, change_in_transaction);
        let (rows, counter) = tx.rows(&self.db).map_err(|e| self.error(e))?;
        let before = self.manifest_of(rows, counter)?;
        let mut manifest = before.clone().unwrap_or_default();
        let mut pending = Vec::new();
        change(&mut manifest, &mut pending, crate::time::now_ms());
        manifest
            .check()
            .map_err(|reason| self.invalid(format!("a change would store {reason}")))?;
        let plan = Plan::new(before.as_ref(), &manifest, &pending, self.db.kek())?;
        tx.commit(&self.db, plan).map_err(|e| self.error(e))
    }
}

/// One row's lifecycle columns, as read.
pub(super) struct RecordRow {
    kid: String,
    alg: String,
    state: String,
    created: SystemTime,
    published: SystemTime,
    activated: Option<SystemTime>,
    retired: Option<SystemTime>,
    remove_after: Option<SystemTime>,
    removed: Option<SystemTime>,
    uri: Option<String>,
}

impl RecordRow {
    fn from_row(row: &tokio_postgres::Row) -> Self {
        Self {
            kid: row.get(0),
            alg: row.get(1),
            state: row.get(2),
            created: row.get(3),
            published: row.get(4),
            activated: row.get(5),
            retired: row.get(6),
            remove_after: row.get(7),
            removed: row.get(8),
            uri: row.get(9),
        }
    }

    fn into_record(self) -> Result<KeyRecord, String> {
        let alg = self
            .alg
            .parse::<SigningAlg>()
            .map_err(|_| format!("key {} has unknown algorithm {:?}", self.kid, self.alg))?;
        let state = match self.state.as_str() {
            "next" => KeyState::Next,
            "active" => KeyState::Active,
            "retired" => KeyState::Retired,
            "removed" => KeyState::Removed,
            "revoked" => KeyState::Revoked,
            other => return Err(format!("key {} has unknown state {other:?}", self.kid)),
        };
        Ok(KeyRecord {
            kid: self.kid,
            alg,
            state,
            created: millis_of(self.created),
            published: millis_of(self.published),
            activated: self.activated.map(millis_of),
            retired: self.retired.map(millis_of),
            remove_after: self.remove_after.map(millis_of),
            removed: self.removed.map(millis_of),
            uri: self.uri,
        })
    }
}

/// What a change writes: every record in order, and the sealed keys it adds.
struct Plan {
    records: Vec<KeyRecord>,
    sealed: Vec<(String, Sealed)>,
    changed: bool,
}

impl Plan {
    fn new(
        before: Option<&Manifest>,
        after: &Manifest,
        pending: &[NewKey],
        kek: &super::KekRing,
    ) -> Result<Self, KeyStoreError> {
        // Only keys the changed manifest names are stored (a refused rotation's fresh
        // key is not).
        let sealed = pending
            .iter()
            .filter(|key| after.get(key.kid()).is_some() && key.private().is_some())
            .map(|key| {
                let pem = key.to_pem()?;
                Ok((
                    key.kid().to_owned(),
                    kek.seal(key.kid(), key.alg(), pem.as_bytes()),
                ))
            })
            .collect::<Result<Vec<_>, KeyStoreError>>()?;
        let changed = !sealed.is_empty() || before.is_none_or(|b| b.keys != after.keys);
        Ok(Self {
            records: after.keys.clone(),
            sealed,
            changed,
        })
    }
}

/// The rows and the keys counter, in whatever transaction `client` is in.
pub(super) async fn read_rows<C: GenericClient + Sync>(
    client: &C,
) -> Result<(Vec<RecordRow>, i64), DbFailure> {
    let rows = client
        .query(
            &format!("SELECT {COLUMNS} FROM jwt_issuer_keys ORDER BY position, kid"),
            &[],
        )
        .await?;
    let counter: i64 = client
        .query_one("SELECT keys FROM jwt_issuer_versions", &[])
        .await?
        .get(0);
    Ok((rows.iter().map(RecordRow::from_row).collect(), counter))
}

async fn change_in_transaction(
    pool: deadpool_postgres::Pool,
    rows_tx: std::sync::mpsc::SyncSender<(Vec<RecordRow>, i64)>,
    plan_rx: tokio::sync::oneshot::Receiver<Plan>,
    deadline: ChangeDeadline,
) -> Result<(), DbFailure> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEYS])
        .await?;
    let read = read_rows(&*tx).await?;
    // The caller gave up (timed out), or decided nothing to write, or failed: the
    // transaction is dropped, rolled back.
    if rows_tx.send(read).is_err() {
        return Ok(());
    }
    let Ok(plan) = plan_rx.await else {
        return Ok(());
    };
    if !plan.changed {
        return Ok(());
    }
    let insert = tx
        .prepare(
            "INSERT INTO jwt_issuer_keys (kid, position, alg, state, created, published, activated,
                 retired, remove_after, removed, kek_id, nonce, ciphertext, uri)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
             ON CONFLICT (kid) DO UPDATE SET
                 position = EXCLUDED.position,
                 state = EXCLUDED.state,
                 created = EXCLUDED.created,
                 published = EXCLUDED.published,
                 activated = EXCLUDED.activated,
                 retired = EXCLUDED.retired,
                 remove_after = EXCLUDED.remove_after,
                 removed = EXCLUDED.removed,
                 uri = EXCLUDED.uri,
                 -- A removed or revoked key's material is destroyed with the change.
                 kek_id = CASE WHEN EXCLUDED.state IN ('removed', 'revoked') THEN NULL
                          ELSE coalesce(EXCLUDED.kek_id, jwt_issuer_keys.kek_id) END,
                 nonce = CASE WHEN EXCLUDED.state IN ('removed', 'revoked') THEN NULL
                         ELSE coalesce(EXCLUDED.nonce, jwt_issuer_keys.nonce) END,
                 ciphertext = CASE WHEN EXCLUDED.state IN ('removed', 'revoked') THEN NULL
                              ELSE coalesce(EXCLUDED.ciphertext, jwt_issuer_keys.ciphertext) END",
        )
        .await?;
    for (position, record) in plan.records.iter().enumerate() {
        let sealed = plan
            .sealed
            .iter()
            .find(|(kid, _)| *kid == record.kid)
            .map(|(_, s)| s)
            .filter(|_| !matches!(record.state, KeyState::Removed | KeyState::Revoked));
        let position = i32::try_from(position).unwrap_or(i32::MAX);
        tx.execute(
            &insert,
            &[
                &record.kid,
                &position,
                &record.alg.as_str(),
                &record.state.as_str(),
                &time_of(record.created),
                &time_of(record.published),
                &record.activated.map(time_of),
                &record.retired.map(time_of),
                &record.remove_after.map(time_of),
                &record.removed.map(time_of),
                &sealed.map(|s| s.kek_id.as_str()),
                &sealed.map(|s| s.nonce.as_slice()),
                &sealed.map(|s| s.ciphertext.as_slice()),
                &record.uri,
            ],
        )
        .await?;
    }
    let kept: Vec<&str> = plan.records.iter().map(|r| r.kid.as_str()).collect();
    tx.execute(
        "DELETE FROM jwt_issuer_keys WHERE NOT (kid = ANY($1))",
        &[&kept],
    )
    .await?;
    // Test hook: the process dies with every write of the change sent and no commit, to
    // prove the others see the change whole or not at all.
    if std::env::var_os(CRASH_ENV).is_some_and(|step| step == "before-commit") {
        std::process::abort();
    }
    deadline.committing();
    tx.commit().await?;
    Ok(())
}

fn time_of(ms: Millis) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

fn millis_of(t: SystemTime) -> Millis {
    crate::time::unix_millis(t)
}
