//! The PostgreSQL store (`--store postgres://...`): keys and clients in one database that
//! several replicas share, behind the same seams as the keys dir ([`KeyBackend`],
//! [`ClientBackend`]), so the lifecycle rules and their timing are the same code.
//!
//! - [`Database`]: the connection pool on a runtime of its own (the seams are synchronous:
//!   they are called from the CLI and from the server's blocking threads), the schema
//!   migrations, the change counters and the LISTEN connection that wakes the replicas.
//! - [`PgKeys`], [`PgClients`]: the two backends. Every change is one transaction under an
//!   advisory lock, so replicas make one change at a time; it moves a counter and notifies.
//! - [`kek`]: private keys are stored sealed under a key-encryption key from outside the
//!   database.
//! - [`failures`]: failed client authentications counted across replicas.
//!
//! The hot path never touches the database: tokens are signed from the snapshot a reload
//! made, and a database that goes away leaves that snapshot serving until
//! `--store-stale-after`.
//!
//! [`KeyBackend`]: crate::keys::KeyBackend
//! [`ClientBackend`]: crate::oauth::ClientBackend

mod clients;
pub mod failures;
pub mod kek;
mod keys;
mod migrations;

pub use clients::PgClients;
pub use kek::{Kek, KekError, KekRing};
pub use keys::PgKeys;
pub use migrations::SCHEMA_VERSION;

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::sync::Notify;
use tokio_postgres::NoTls;

use crate::store::StoreVersion;

/// The channel every change notifies, with the store's name as payload.
const CHANNEL: &str = "jwt_issuer_changes";
/// Longest wait for one call to the database (a query, a connection from the pool).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for the change counters; a slow database must not stall the reloads.
const POLL_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest wait for a connection to be made.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Connections in the pool: changes, reloads and failure counts; the hot path uses none.
const POOL_SIZE: usize = 4;
/// Reconnection of the LISTEN connection: first wait, doubled up to the last.
const LISTEN_BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

/// A connection string with its password kept out of every message.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// Wraps a `postgres://` or `postgresql://` URL (or a `key=value` connection string).
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// Whether it carries a password (which belongs in the environment, never a flag).
    pub fn has_password(&self) -> bool {
        self.parse().is_ok_and(|c| c.get_password().is_some())
    }

    /// `postgres://host:port/dbname` without user or password, for messages.
    pub fn redacted(&self) -> String {
        match self.parse() {
            Ok(config) => {
                let host = config
                    .get_hosts()
                    .first()
                    .map(|h| match h {
                        tokio_postgres::config::Host::Tcp(name) => name.clone(),
                        tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
                    })
                    .unwrap_or_else(|| "localhost".to_owned());
                let port = config.get_ports().first().copied().unwrap_or(5432);
                let db = config.get_dbname().unwrap_or("");
                format!("postgres://{host}:{port}/{db}")
            }
            Err(_) => "postgres://(unparsable)".to_owned(),
        }
    }

    fn parse(&self) -> Result<tokio_postgres::Config, tokio_postgres::Error> {
        self.0.parse()
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({})", self.redacted())
    }
}

/// Why the database could not be used. Messages name the database without credentials,
/// never a key or a secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DatabaseError {
    /// The URL does not parse.
    #[error("invalid PostgreSQL URL {url}: {reason}")]
    InvalidUrl {
        /// The URL, redacted.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The URL asks for TLS, which this build does not speak to PostgreSQL.
    #[error(
        "{url}: sslmode=require is not supported yet; reach PostgreSQL over a private network or a local TLS proxy and use sslmode=disable"
    )]
    TlsUnsupported {
        /// The URL, redacted.
        url: String,
    },
    /// A call failed or the server could not be reached.
    #[error("{url}: {reason}")]
    Failed {
        /// The URL, redacted.
        url: String,
        /// What failed (PostgreSQL's message or the connection error).
        reason: String,
    },
    /// A call took longer than its limit.
    #[error("{url}: no answer within {}s", .limit.as_secs())]
    Timeout {
        /// The URL, redacted.
        url: String,
        /// The limit.
        limit: Duration,
    },
    /// The schema was made by a newer jwt-issuer.
    #[error(
        "{url}: the schema is at version {found}, newer than this binary knows ({known}); run the newer jwt-issuer, or restore a backup made for this one"
    )]
    SchemaTooNew {
        /// The URL, redacted.
        url: String,
        /// The schema's version.
        found: i32,
        /// The newest this binary knows.
        known: i32,
    },
    /// The runtime's thread could not be started.
    #[error("cannot start the PostgreSQL client's runtime: {0}")]
    Runtime(String),
}

/// Which store's counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    /// The keys.
    Keys,
    /// The clients.
    Clients,
}

impl Counter {
    fn column(self) -> &'static str {
        match self {
            Self::Keys => "keys",
            Self::Clients => "clients",
        }
    }
}

/// One PostgreSQL database shared by the key and client backends of this process.
pub struct Database {
    url: String,
    runtime: Option<tokio::runtime::Runtime>,
    pool: Pool,
    kek: KekRing,
    seen: Mutex<Seen>,
    changed: Arc<Notify>,
}

/// What the last successful poll of the counters saw, and when.
#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    keys: i64,
    clients: i64,
    at: Option<Instant>,
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Database")
            .field("url", &self.url)
            .field("kek", &self.kek.current_id())
            .finish_non_exhaustive()
    }
}

impl Database {
    /// Connects to `url`, applies the schema migrations this binary has and the database
    /// lacks (refusing a schema newer than it knows), and starts listening for changes.
    ///
    /// # Errors
    /// Unparsable URL, unreachable server, refused login, a newer schema.
    pub fn open(url: &DatabaseUrl, kek: KekRing) -> Result<Arc<Self>, DatabaseError> {
        let redacted = url.redacted();
        let mut config = url.parse().map_err(|e| DatabaseError::InvalidUrl {
            url: redacted.clone(),
            reason: e.to_string(),
        })?;
        if config.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
            return Err(DatabaseError::TlsUnsupported { url: redacted });
        }
        // NoTls: `prefer` (the default) would fall back to plain text anyway.
        config.ssl_mode(tokio_postgres::config::SslMode::Disable);
        config.application_name("jwt-issuer");
        config.connect_timeout(CONNECT_TIMEOUT);
        // A peer that vanished (a failover, a cut network) is noticed within a minute.
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(15));
        // A change waits at most 10 s for another replica's change, as the keys dir's
        // lock does; no statement runs away.
        config.options("-c lock_timeout=10s -c statement_timeout=30s");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("postgres")
            .enable_all()
            .build()
            .map_err(|e| DatabaseError::Runtime(e.to_string()))?;
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                // Each connection is checked (an empty query, within CONNECT_TIMEOUT) before
                // it is used again: one whose peer vanished, or that still carries a call
                // given up on, is not closed, it hangs, and so would every call made on it.
                recycling_method: RecyclingMethod::Verified,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(CALL_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| DatabaseError::Failed {
                url: redacted.clone(),
                reason: e.to_string(),
            })?;
        let database = Arc::new(Self {
            url: redacted,
            runtime: Some(runtime),
            pool,
            kek,
            seen: Mutex::new(Seen::default()),
            changed: Arc::new(Notify::new()),
        });
        database.call(migrations::apply)?;
        database.spawn(listen(config, database.changed.clone()));
        Ok(database)
    }

    /// The database, for messages: `postgres://host:port/db`, no credentials.
    pub fn describe(&self) -> &str {
        &self.url
    }

    /// The KEKs private keys are sealed under.
    pub fn kek(&self) -> &KekRing {
        &self.kek
    }

    /// Woken whenever another process commits a change (LISTEN/NOTIFY), and after the
    /// LISTEN connection is made again (a change may have been missed meanwhile).
    pub fn changed(&self) -> Arc<Notify> {
        self.changed.clone()
    }

    /// The store's change counter as a version (`None` while the store has never been
    /// changed). When the database cannot be asked, the last version seen: a database
    /// that went away is not a change, and the snapshot keeps serving until
    /// [`Database::unreachable_for`] says it is too old.
    pub fn version(&self, counter: Counter) -> Option<StoreVersion> {
        let seen = match self.call_within(POLL_TIMEOUT, read_counters) {
            Ok((keys, clients)) => {
                let mut seen = self.seen();
                *seen = Seen {
                    keys,
                    clients,
                    at: Some(Instant::now()),
                };
                *seen
            }
            Err(_) => *self.seen(),
        };
        let value = match counter {
            Counter::Keys => seen.keys,
            Counter::Clients => seen.clients,
        };
        (value > 0).then(|| StoreVersion::new(format!("pg:{value}")))
    }

    /// How long since the change counters were last read, `None` before the first read.
    pub fn unreachable_for(&self) -> Option<Duration> {
        self.seen().at.map(|at| at.elapsed())
    }

    /// Runs `work` with the pool on the database's runtime and waits for it at most
    /// [`CALL_TIMEOUT`]. Callable from any thread, inside another runtime or not (the
    /// future runs on this database's own runtime).
    ///
    /// # Errors
    /// What `work` returned, or [`DatabaseError::Timeout`].
    pub(crate) fn call<T, F, Fut>(&self, work: F) -> Result<T, DatabaseError>
    where
        F: FnOnce(Pool) -> Fut,
        Fut: Future<Output = Result<T, DbFailure>> + Send + 'static,
        T: Send + 'static,
    {
        self.call_within(CALL_TIMEOUT, work)
    }

    fn call_within<T, F, Fut>(&self, limit: Duration, work: F) -> Result<T, DatabaseError>
    where
        F: FnOnce(Pool) -> Fut,
        Fut: Future<Output = Result<T, DbFailure>> + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let future = work(self.pool.clone());
        // Given up on at the limit, the work goes too, and its connection back to the pool
        // (checked there before its next use): a call that never ends (a peer that vanished
        // answers nothing and resets nothing) must not hold a connection for ever: with every
        // connection of the pool held so, the server would never reach the database again.
        self.spawn(async move {
            if let Ok(result) = tokio::time::timeout(limit, future).await {
                let _ = tx.send(result);
            }
        });
        match rx.recv_timeout(limit) {
            Ok(result) => result.map_err(|e| self.failed(e)),
            Err(_) => Err(DatabaseError::Timeout {
                url: self.url.clone(),
                limit,
            }),
        }
    }

    /// Starts `future` on the database's runtime and returns at once.
    pub(crate) fn spawn(&self, future: impl Future<Output = ()> + Send + 'static) {
        if let Some(runtime) = &self.runtime {
            runtime.spawn(future);
        }
    }

    pub(crate) fn failed(&self, failure: DbFailure) -> DatabaseError {
        match failure {
            DbFailure::SchemaTooNew { found, known } => DatabaseError::SchemaTooNew {
                url: self.url.clone(),
                found,
                known,
            },
            DbFailure::Other(reason) => DatabaseError::Failed {
                url: self.url.clone(),
                reason,
            },
        }
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        // Plain numbers: a panic elsewhere cannot leave them half-written.
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        // Dropped from inside an async context too (a server's state): never block there.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A failure inside a database call, before it is given the database's name.
#[derive(Debug)]
pub(crate) enum DbFailure {
    SchemaTooNew { found: i32, known: i32 },
    Other(String),
}

impl From<tokio_postgres::Error> for DbFailure {
    fn from(e: tokio_postgres::Error) -> Self {
        // PostgreSQL's own message (with its code) when the server answered; otherwise the
        // connection error. Neither holds a parameter's value.
        Self::Other(match e.as_db_error() {
            Some(db) => format!("{} ({})", db.message(), db.code().code()),
            None => match std::error::Error::source(&e) {
                Some(source) => format!("{e}: {source}"),
                None => e.to_string(),
            },
        })
    }
}

impl From<deadpool_postgres::PoolError> for DbFailure {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => e.into(),
            deadpool_postgres::PoolError::Timeout(_) => {
                Self::Other("cannot connect (timed out)".to_owned())
            }
            other => Self::Other(format!("cannot connect: {other}")),
        }
    }
}

async fn read_counters(pool: Pool) -> Result<(i64, i64), DbFailure> {
    let client = pool.get().await?;
    let row = client
        .query_one("SELECT keys, clients FROM jwt_issuer_versions", &[])
        .await?;
    Ok((row.get(0), row.get(1)))
}

/// Moves `counter` and notifies the other replicas, inside the caller's transaction (the
/// notification is delivered at commit, never for a change rolled back).
pub(crate) async fn bump<C: tokio_postgres::GenericClient + Sync>(
    client: &C,
    counter: Counter,
) -> Result<(), DbFailure> {
    let column = counter.column();
    client
        .execute(
            &format!("UPDATE jwt_issuer_versions SET {column} = {column} + 1"),
            &[],
        )
        .await?;
    client
        .execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &column])
        .await?;
    Ok(())
}

/// One connection kept open with LISTEN: each notification wakes `changed`; a lost
/// connection is made again with backoff (and wakes `changed`, since a change may have
/// been missed meanwhile). The reloads poll the counters anyway, so a lost LISTEN only
/// slows propagation to the poll's period.
async fn listen(config: tokio_postgres::Config, changed: Arc<Notify>) {
    let mut wait = LISTEN_BACKOFF.0;
    loop {
        if let Ok((client, mut connection)) = config.connect(NoTls).await {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
            let driver = tokio::spawn(async move {
                while let Some(message) =
                    std::future::poll_fn(|cx| connection.poll_message(cx)).await
                {
                    match message {
                        Ok(tokio_postgres::AsyncMessage::Notification(_)) => {
                            let _ = tx.send(());
                        }
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
            });
            if client
                .batch_execute(&format!("LISTEN {CHANNEL}"))
                .await
                .is_ok()
            {
                wait = LISTEN_BACKOFF.0;
                changed.notify_one();
                while rx.recv().await.is_some() {
                    changed.notify_one();
                }
            }
            driver.abort();
            changed.notify_one();
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(LISTEN_BACKOFF.1);
    }
}

/// What `jwt-issuer store status` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreStatus {
    /// The schema version.
    pub schema: i32,
    /// Keys by state (`active`, `next`, ...) with their count.
    pub keys_by_state: Vec<(String, i64)>,
    /// Keys holding material, by the id of the KEK they are sealed under.
    pub keys_by_kek: Vec<(String, i64)>,
    /// Registered clients.
    pub clients: i64,
}

impl Database {
    /// Re-seals every stored private key that is not under the current KEK, in one
    /// transaction (all or none). The old KEK must be configured as a previous one.
    /// Returns how many keys were re-sealed and how many were under the current KEK
    /// already.
    ///
    /// # Errors
    /// A key sealed under a KEK that is not configured, an altered ciphertext, or a
    /// database failure: nothing is changed then.
    pub fn rewrap(&self) -> Result<(usize, usize), DatabaseError> {
        let ring = self.kek.clone();
        self.call(move |pool| async move {
            let mut client = pool.get().await?;
            let tx = client.transaction().await?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&keys::LOCK_KEYS])
                .await?;
            let rows = tx
                .query(
                    "SELECT kid, alg, kek_id, nonce, ciphertext FROM jwt_issuer_keys
                     WHERE ciphertext IS NOT NULL ORDER BY position",
                    &[],
                )
                .await?;
            let (mut rewrapped, mut current) = (0, 0);
            for row in &rows {
                let kid: String = row.get(0);
                let alg: String = row.get(1);
                let sealed = kek::Sealed {
                    kek_id: row.get(2),
                    nonce: row.get(3),
                    ciphertext: row.get(4),
                };
                if sealed.kek_id == ring.current_id() {
                    current += 1;
                    continue;
                }
                let alg = alg
                    .parse::<crate::SigningAlg>()
                    .map_err(|_| DbFailure::Other(format!("key {kid}: unknown algorithm")))?;
                let plain = ring
                    .open(&kid, alg, &sealed)
                    .map_err(|e| DbFailure::Other(format!("key {kid}: {e}")))?;
                let resealed = ring.seal(&kid, alg, &plain);
                tx.execute(
                    "UPDATE jwt_issuer_keys SET kek_id = $2, nonce = $3, ciphertext = $4
                     WHERE kid = $1",
                    &[
                        &kid,
                        &resealed.kek_id,
                        &resealed.nonce,
                        &resealed.ciphertext,
                    ],
                )
                .await?;
                rewrapped += 1;
            }
            if rewrapped > 0 {
                bump(&*tx, Counter::Keys).await?;
            }
            tx.commit().await?;
            Ok((rewrapped, current))
        })
    }

    /// The schema version, the keys by state and by KEK, and the number of clients.
    ///
    /// # Errors
    /// A database failure.
    pub fn status(&self) -> Result<StoreStatus, DatabaseError> {
        self.call(|pool| async move {
            let client = pool.get().await?;
            let schema: i32 = client
                .query_one(
                    "SELECT coalesce(max(version), 0) FROM jwt_issuer_schema",
                    &[],
                )
                .await?
                .get(0);
            let pairs = |rows: Vec<tokio_postgres::Row>| {
                rows.iter()
                    .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)))
                    .collect::<Vec<_>>()
            };
            let keys_by_state = pairs(
                client
                    .query(
                        "SELECT state, count(*) FROM jwt_issuer_keys GROUP BY state ORDER BY state",
                        &[],
                    )
                    .await?,
            );
            let keys_by_kek = pairs(
                client
                    .query(
                        "SELECT kek_id, count(*) FROM jwt_issuer_keys WHERE kek_id IS NOT NULL
                         GROUP BY kek_id ORDER BY kek_id",
                        &[],
                    )
                    .await?,
            );
            let clients: i64 = client
                .query_one("SELECT count(*) FROM jwt_issuer_clients", &[])
                .await?
                .get(0);
            Ok(StoreStatus {
                schema,
                keys_by_state,
                keys_by_kek,
                clients,
            })
        })
    }
}
