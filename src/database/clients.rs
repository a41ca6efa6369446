//! [`PgClients`]: the client registry over PostgreSQL, one row per client holding the
//! entry as `clients.json` would (hashed secret, scopes, audiences, alg, TTL). A change is
//! one transaction under an advisory lock; an entry that does not parse is kept as it is.

use std::sync::Arc;
use std::time::Duration;

use super::{ChangeDeadline, Counter, Database, DatabaseError, DbFailure};
use crate::oauth::{Client, ClientBackend, ClientStoreError, SkippedClient};
use crate::store::StoreVersion;

/// How long a client change may take, waiting for another's lock included.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(25);

/// Advisory lock key of client changes.
const LOCK_CLIENTS: i64 = 0x6a77_7469_7373_0003;

/// The clients of a PostgreSQL store.
#[derive(Debug, Clone)]
pub struct PgClients {
    db: Arc<Database>,
}

impl PgClients {
    /// The clients in `db`.
    pub fn new(db: Arc<Database>) -> Self {
        Self { db }
    }

    fn error(&self, e: DatabaseError) -> ClientStoreError {
        ClientStoreError::Database {
            store: self.db.describe().to_owned(),
            reason: e.reason(),
        }
    }
}

/// Each row parsed on its own.
fn parse(rows: Vec<(String, serde_json::Value)>) -> Vec<Result<Client, SkippedClient>> {
    rows.into_iter()
        .map(|(client_id, entry)| {
            serde_json::from_value::<Client>(entry)
                .map_err(|e| SkippedClient {
                    client_id: client_id.clone(),
                    reason: format!("entry does not parse: {e}"),
                })
                .and_then(|client| {
                    if client.client_id == client_id {
                        Ok(client)
                    } else {
                        Err(SkippedClient {
                            client_id,
                            reason: "the entry names another client id than its row".into(),
                        })
                    }
                })
        })
        .collect()
}

async fn read_rows<C: tokio_postgres::GenericClient + Sync>(
    client: &C,
) -> Result<(Vec<(String, serde_json::Value)>, i64), DbFailure> {
    let rows = client
        .query(
            "SELECT client_id, entry FROM jwt_issuer_clients ORDER BY client_id",
            &[],
        )
        .await?;
    let counter: i64 = client
        .query_one("SELECT clients FROM jwt_issuer_versions", &[])
        .await?
        .get(0);
    Ok((rows.iter().map(|r| (r.get(0), r.get(1))).collect(), counter))
}

impl ClientBackend for PgClients {
    fn describe(&self) -> String {
        format!("PostgreSQL store {} (clients)", self.db.describe())
    }

    fn version(&self) -> Option<StoreVersion> {
        self.db.version(Counter::Clients)
    }

    fn load(&self) -> Result<Vec<Result<Client, SkippedClient>>, ClientStoreError> {
        let (rows, counter) = self
            .db
            .call(|pool| async move {
                let client = pool.get().await?;
                read_rows(&**client).await
            })
            .map_err(|e| self.error(e))?;
        self.db
            .check_counter(Counter::Clients, counter)
            .map_err(|e| self.error(e))?;
        Ok(parse(rows))
    }

    fn update(
        &self,
        change: &mut dyn FnMut(
            Option<Vec<Client>>,
        ) -> Result<Option<Vec<Client>>, ClientStoreError>,
    ) -> Result<(), ClientStoreError> {
        // As the key backend's change: read in the transaction, decide here, write there.
        let tx = self.db.begin_change(CHANGE_TIMEOUT, write_in_transaction);
        let (rows, counter) = tx.rows(&self.db).map_err(|e| self.error(e))?;
        self.db
            .check_counter(Counter::Clients, counter)
            .map_err(|e| self.error(e))?;
        let current = (counter > 0).then(|| parse(rows).into_iter().flatten().collect());
        // An error from `change` drops the plan's sender: rolled back.
        let Some(clients) = change(current)? else {
            return Ok(());
        };
        tx.commit(&self.db, clients).map_err(|e| self.error(e))
    }
}

/// The transaction of a client change: lock, read, send the rows, await the clients to
/// store; rows that do not parse stay, parsed ones the change dropped go.
async fn write_in_transaction(
    pool: deadpool_postgres::Pool,
    rows_tx: std::sync::mpsc::SyncSender<(Vec<(String, serde_json::Value)>, i64)>,
    plan_rx: tokio::sync::oneshot::Receiver<Vec<Client>>,
    deadline: ChangeDeadline,
) -> Result<(), DbFailure> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_CLIENTS])
        .await?;
    if rows_tx.send(read_rows(&*tx).await?).is_err() {
        return Ok(());
    }
    let Ok(clients) = plan_rx.await else {
        return Ok(());
    };
    let ids: Vec<&str> = clients.iter().map(|c| c.client_id.as_str()).collect();
    let existing = tx
        .query("SELECT client_id, entry FROM jwt_issuer_clients", &[])
        .await?;
    for row in &existing {
        let id: String = row.get(0);
        let entry: serde_json::Value = row.get(1);
        let parses = serde_json::from_value::<Client>(entry).is_ok();
        if parses && !ids.contains(&id.as_str()) {
            tx.execute(
                "DELETE FROM jwt_issuer_clients WHERE client_id = $1",
                &[&id],
            )
            .await?;
        }
    }
    for client in &clients {
        // A client always serializes (strings, numbers, lists).
        let entry = serde_json::to_value(client).unwrap_or_default();
        tx.execute(
            "INSERT INTO jwt_issuer_clients (client_id, entry) VALUES ($1, $2)
             ON CONFLICT (client_id) DO UPDATE SET entry = EXCLUDED.entry",
            &[&client.client_id, &entry],
        )
        .await?;
    }
    deadline.committing();
    tx.commit().await?;
    Ok(())
}
