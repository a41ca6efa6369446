//! The PostgreSQL store (`--store postgres://...`): keys and clients in one database that
//! several replicas share, behind the same seams as the keys dir ([`KeyBackend`],
//! [`ClientBackend`]), so the lifecycle rules and their timing are the same code.
//!
//! - [`Database`]: the connection pool on a runtime of its own (the seams are synchronous:
//!   they are called from the CLI and from the server's blocking threads), the schema
//!   migrations, the change counters and the LISTEN connection that wakes the replicas.
//! - [`PgKeys`], [`PgClients`]: the two backends. Every change is one transaction under an
//!   advisory lock, so replicas make one change at a time; it moves a counter and notifies.
//! - [`PgRevoked`]: revoked tokens (RFC 7009), behind [`RevocationBackend`], on a counter
//!   of their own.
//! - [`kek`]: private keys are stored sealed under a key-encryption key from outside the
//!   database.
//! - [`failures`]: failed client authentications counted across replicas.
//! - [`replay`]: single-use assertion ids shared by the replicas.
//!
//! Signing never touches the database: tokens are signed from the snapshot a reload made,
//! and a database that goes away leaves that snapshot serving until `--store-stale-after`.
//! The one exception is an assertion's id ([`replay`]), which must be checked across the
//! replicas before the assertion is accepted: without an answer it is refused.
//!
//! [`KeyBackend`]: crate::keys::KeyBackend
//! [`ClientBackend`]: crate::oauth::ClientBackend
//! [`RevocationBackend`]: crate::oauth::revocation::RevocationBackend

mod clients;
pub mod failures;
pub mod kek;
mod keys;
mod migrations;
pub mod replay;
mod revoked;

pub use clients::PgClients;
pub use kek::{Kek, KekError, KekRing};
pub use keys::PgKeys;
pub use migrations::SCHEMA_VERSION;
pub use revoked::PgRevoked;

use std::fmt;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::sync::Notify;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{NoTls, Socket};

use crate::store::StoreVersion;

/// The channel every change notifies (from the tables' triggers), with the table's name
/// as payload.
const CHANNEL: &str = "jwt_issuer_changes";
/// Longest wait for one call to the database (a query, a connection from the pool).
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for the change counters; a slow database must not stall the reloads.
const POLL_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest wait for a connection to be made.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Connections in the pool: changes, reloads, failure counts (at most 2 at once),
/// assertion ids (at most 2 at once) and revocations (one at a time), so a flood of any
/// of them leaves 2 to the reloads and changes.
const POOL_SIZE: usize = 7;
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
    /// A server on another machine without `sslmode` in the URL.
    #[error(
        "{url} is on another machine: add sslmode=require to the URL (TLS, the server's certificate checked), or sslmode=disable for plain text on a network you trust"
    )]
    SslModeMissing {
        /// The URL, redacted.
        url: String,
    },
    /// TLS was asked for and no CA certificate to check the server with could be read.
    #[error("{url}: sslmode=require: {reason}")]
    TlsRoots {
        /// The URL, redacted.
        url: String,
        /// What is missing.
        reason: String,
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
    /// Keys are sealed under a KEK that is not configured (a wrong KEK, or a rewrap whose
    /// old KEK was dropped too early).
    #[error(
        "{url}: keys are sealed under key-encryption key {}, which is not configured (configured: {}): set {}_FILE to the KEK the store's keys were sealed with (or the old one in {}_FILE and run `jwt-issuer store rewrap`)",
        .unknown.join(", "),
        .configured.join(", "),
        kek::KEK_ENV,
        kek::KEK_PREVIOUS_ENV
    )]
    UnknownKek {
        /// The URL, redacted.
        url: String,
        /// The ids of the KEKs stored keys are sealed under that none configured has.
        unknown: Vec<String>,
        /// The ids of the configured KEKs, current first.
        configured: Vec<String>,
    },
    /// The change counters went back: an older copy of the database.
    #[error(
        "{url}: the change counters went back (a restore, a failover to a standby that lags?): its rows may hold a key revoked since; this process no longer reads or writes them, and a restart accepts the database as it is"
    )]
    WentBack {
        /// The URL, redacted.
        url: String,
    },
    /// The runtime's thread could not be started.
    #[error("cannot start the PostgreSQL client's runtime: {0}")]
    Runtime(String),
}

impl DatabaseError {
    /// What failed, without the database's name (the store's errors add it).
    pub fn reason(self) -> String {
        match self {
            Self::Failed { reason, .. } => reason,
            other => crate::report::Report(&other).to_string(),
        }
    }
}

/// Which store's counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    /// The keys.
    Keys = 0,
    /// The clients.
    Clients = 1,
    /// The revoked tokens.
    Revoked = 2,
}

/// One PostgreSQL database shared by the key, client and revocation backends of this
/// process.
pub struct Database {
    url: String,
    runtime: Option<tokio::runtime::Runtime>,
    pool: Pool,
    kek: KekRing,
    seen: Mutex<Seen>,
    /// The highest counters ever read (keys, clients, revoked): counters only grow.
    highest: [std::sync::atomic::AtomicI64; 3],
    /// The counters were once seen lower than before: latched until a restart, so that an
    /// older copy of the database is never taken up once its counters catch up again.
    went_back: std::sync::atomic::AtomicBool,
    /// That was logged.
    went_back_logged: std::sync::atomic::AtomicBool,
    changed: Arc<Notify>,
}

/// What the last successful poll of the counters saw, and when.
#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    counters: Counters,
    at: Option<Instant>,
}

/// The change counters, as one read saw them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counters {
    keys: i64,
    clients: i64,
    revoked: i64,
}

impl Counters {
    fn get(&self, counter: Counter) -> i64 {
        match counter {
            Counter::Keys => self.keys,
            Counter::Clients => self.clients,
            Counter::Revoked => self.revoked,
        }
    }
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
    /// Connects to `url` (over TLS with `sslmode=require`, the server's certificate checked
    /// against `ca_file` or else the system's roots), applies the schema migrations this binary has and the database
    /// lacks (refusing a schema newer than it knows), and starts listening for changes.
    ///
    /// # Errors
    /// Unparsable URL, unreachable server, refused login, a newer schema.
    pub fn open(
        url: &DatabaseUrl,
        kek: KekRing,
        ca_file: Option<&Path>,
    ) -> Result<Arc<Self>, DatabaseError> {
        let redacted = url.redacted();
        let mut config = url.parse().map_err(|e| DatabaseError::InvalidUrl {
            url: redacted.clone(),
            reason: e.to_string(),
        })?;
        // Plain text to another machine is a choice to make, not a default: rows there
        // decide which keys are revoked.
        if config.get_ssl_mode() != tokio_postgres::config::SslMode::Require
            && !explicitly_plain(&url.0)
            && !is_local(&config)
        {
            return Err(DatabaseError::SslModeMissing { url: redacted });
        }
        // `require`: TLS with the server's certificate verified (libpq's verify-full);
        // otherwise plain (`prefer`, the default, would fall back to it anyway, and a
        // failed verification must not fall back).
        let tls = match config.get_ssl_mode() {
            tokio_postgres::config::SslMode::Require => Some(tls_connector(&redacted, ca_file)?),
            _ => {
                config.ssl_mode(tokio_postgres::config::SslMode::Disable);
                None
            }
        };
        config.application_name("jwt-issuer");
        config.connect_timeout(CONNECT_TIMEOUT);
        // A peer that vanished (a failover, a cut network) is noticed within a minute on
        // an idle connection: 15 s idle, then 3 probes 10 s apart. A call waiting for its
        // answer is bounded by its own time limit instead.
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(15));
        config.keepalives_interval(Duration::from_secs(10));
        config.keepalives_retries(3);
        // A change waits at most 10 s for another replica's change, as the keys dir's
        // lock does; no statement runs away; a session that stops talking inside a
        // transaction (a paused or cut-off replica) loses it, and its lock, after 30 s.
        // The NOTICEs of the idempotent migrations
        // ("already exists, skipping") are not news worth a log line at every start.
        config
            .options("-c lock_timeout=10s -c statement_timeout=30s -c idle_in_transaction_session_timeout=30s -c client_min_messages=warning");
        let changed = Arc::new(Notify::new());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("postgres")
            .enable_all()
            .build()
            .map_err(|e| DatabaseError::Runtime(e.to_string()))?;
        let manager_config = ManagerConfig {
            // Each connection is checked (an empty query, within CONNECT_TIMEOUT) before
            // it is used again: one whose peer vanished, or that still carries a call
            // given up on, is not closed, it hangs, and so would every call made on it.
            recycling_method: RecyclingMethod::Verified,
        };
        let (manager, listener): (Manager, Pin<Box<dyn Future<Output = ()> + Send>>) = match tls {
            Some(tls) => (
                Manager::from_config(config.clone(), tls.clone(), manager_config),
                Box::pin(listen(config, tls, changed.clone())),
            ),
            None => (
                Manager::from_config(config.clone(), NoTls, manager_config),
                Box::pin(listen(config, NoTls, changed.clone())),
            ),
        };
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
            highest: Default::default(),
            went_back: std::sync::atomic::AtomicBool::new(false),
            went_back_logged: std::sync::atomic::AtomicBool::new(false),
            changed,
        });
        database.call(migrations::apply)?;
        // Refused here, before any command reads or writes: with a wrong KEK a server
        // would start with its keys left out, and a `keys generate` would seal a key
        // under a KEK the other replicas do not have.
        let unknown: Vec<String> = database
            .call(sealed_kek_ids)?
            .into_iter()
            .filter(|id| !database.kek.knows(id))
            .collect();
        if !unknown.is_empty() {
            return Err(DatabaseError::UnknownKek {
                url: database.url.clone(),
                unknown,
                configured: database.kek.ids().map(str::to_owned).collect(),
            });
        }
        // The counters as they are now, so that a first poll that fails keeps these (and
        // the time of this read counts toward --store-stale-after), never "no store".
        let counters = database.call(read_counters)?;
        database.check_counters(counters)?;
        *database.seen() = Seen {
            counters,
            at: Some(Instant::now()),
        };
        database.spawn(listener);
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
            Ok(counters) if self.check_counters(counters).is_ok() => {
                let mut seen = self.seen();
                *seen = Seen {
                    counters,
                    at: Some(Instant::now()),
                };
                *seen
            }
            Ok(counters) => {
                // Counters only grow. Lower ones are an older copy of the database (a
                // restore, a failover to a standby that lags): its rows may hold a key
                // revoked since. Never taken as an answer from then on: the replica goes
                // stale and stops signing; a restart accepts the copy on purpose.
                if !self
                    .went_back_logged
                    .swap(true, std::sync::atomic::Ordering::Relaxed)
                {
                    tracing::error!(
                        store = %self.url,
                        highest = ?(
                            self.highest(Counter::Keys),
                            self.highest(Counter::Clients),
                            self.highest(Counter::Revoked)
                        ),
                        now = ?(counters.keys, counters.clients, counters.revoked),
                        "the store's change counters went back (a restore, a lagging standby?): its rows may hold a revoked key; this replica stops signing at --store-stale-after, and a restart accepts the database as it is"
                    );
                }
                *self.seen()
            }
            Err(_) => *self.seen(),
        };
        let value = seen.counters.get(counter);
        (value > 0).then(|| StoreVersion::new(format!("pg:{value}")))
    }

    /// Takes `value`, just read, for `counter`: refused when lower than the highest read
    /// before (an older copy of the database: a restore, a standby that lags, whose rows
    /// may hold a key revoked since), and for good once that happened in this process.
    ///
    /// # Errors
    /// [`DatabaseError::WentBack`].
    pub(crate) fn check_counter(&self, counter: Counter, value: i64) -> Result<(), DatabaseError> {
        use std::sync::atomic::Ordering;
        let highest = &self.highest[counter as usize];
        let before = highest.fetch_max(value, Ordering::SeqCst);
        if value < before {
            self.went_back.store(true, Ordering::SeqCst);
        }
        if self.went_back.load(Ordering::SeqCst) {
            return Err(DatabaseError::WentBack {
                url: self.url.clone(),
            });
        }
        Ok(())
    }

    /// [`Database::check_counter`] for each of `counters`.
    fn check_counters(&self, counters: Counters) -> Result<(), DatabaseError> {
        self.check_counter(Counter::Keys, counters.keys)?;
        self.check_counter(Counter::Clients, counters.clients)?;
        self.check_counter(Counter::Revoked, counters.revoked)
    }

    fn highest(&self, counter: Counter) -> i64 {
        self.highest[counter as usize].load(std::sync::atomic::Ordering::SeqCst)
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
        self.start(limit, work, move |result| {
            let _ = tx.send(result);
        });
        self.answer(limit, rx.recv_timeout(limit).ok())
    }

    /// As [`Database::call`] without blocking the caller's thread (an actix worker, whose
    /// other requests would wait): `work` runs on the database's runtime, bounded there by
    /// `limit`, and the caller awaits its answer. The deadline is kept on the database's
    /// runtime, so the caller's executor needs no timer of its own; dropping the returned
    /// future gives up on the answer, not on the work (which ends by `limit`).
    ///
    /// # Errors
    /// What `work` returned, or [`DatabaseError::Timeout`].
    pub(crate) async fn call_async<T, F, Fut>(
        &self,
        limit: Duration,
        work: F,
    ) -> Result<T, DatabaseError>
    where
        F: FnOnce(Pool) -> Fut,
        Fut: Future<Output = Result<T, DbFailure>> + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.start(limit, work, move |result| {
            let _ = tx.send(result);
        });
        // The sender goes with the task: at the limit, or at once when there is no runtime
        // to run it (this database being dropped).
        self.answer(limit, rx.await.ok())
    }

    /// Starts `work` on the database's runtime, bounded by `limit`; `deliver` gets its
    /// result, or is dropped unused at the limit.
    fn start<T, F, Fut>(
        &self,
        limit: Duration,
        work: F,
        deliver: impl FnOnce(Result<T, DbFailure>) + Send + 'static,
    ) where
        F: FnOnce(Pool) -> Fut,
        Fut: Future<Output = Result<T, DbFailure>> + Send + 'static,
        T: Send + 'static,
    {
        let future = work(self.pool.clone());
        // Given up on at the limit, the work goes too, and its connection back to the pool
        // (checked there before its next use): a call that never ends (a peer that vanished
        // answers nothing and resets nothing) must not hold a connection for ever: with every
        // connection of the pool held so, the server would never reach the database again.
        self.spawn(async move {
            if let Ok(result) = tokio::time::timeout(limit, future).await {
                deliver(result);
            }
        });
    }

    /// What a call started with `limit` came to: its result, or none by the limit.
    fn answer<T>(
        &self,
        limit: Duration,
        result: Option<Result<T, DbFailure>>,
    ) -> Result<T, DatabaseError> {
        match result {
            Some(result) => result.map_err(|e| self.failed(e)),
            None => Err(DatabaseError::Timeout {
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

/// The one deadline of a change transaction. The task on the database's runtime is
/// dropped when it passes (its transaction rolled back), and reports that; the caller waits
/// for the task's own report until just after it, so it is never told "failed" about a
/// change that then commits. A COMMIT sent and not answered by the deadline is reported as
/// of unknown outcome.
#[derive(Clone)]
pub(crate) struct ChangeDeadline {
    at: Instant,
    committing: Arc<std::sync::atomic::AtomicBool>,
}

impl ChangeDeadline {
    pub(crate) fn new(limit: Duration) -> Self {
        Self {
            at: Instant::now() + limit,
            committing: Arc::default(),
        }
    }

    /// Marks the COMMIT as sent (call just before it).
    pub(crate) fn committing(&self) {
        self.committing
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// `change` bounded by the deadline; what it came to, for the caller.
    pub(crate) async fn run(
        self,
        change: impl Future<Output = Result<(), DbFailure>>,
    ) -> Result<(), DbFailure> {
        match tokio::time::timeout_at(tokio::time::Instant::from_std(self.at), change).await {
            Ok(done) => done,
            Err(_) if self.committing.load(std::sync::atomic::Ordering::SeqCst) => {
                Err(DbFailure::Other(
                    "the commit got no answer in time: the change may or may not have been applied; look before trying again".to_owned(),
                ))
            }
            Err(_) => Err(DbFailure::Other(
                "no answer in time (another change holding the lock, or a slow database); nothing was changed".to_owned(),
            )),
        }
    }

    /// How long the caller waits for the task's report: until just after the deadline.
    pub(crate) fn wait(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now()) + Duration::from_secs(2)
    }

    /// The task's report on `done`, which always comes by the deadline: the outcome.
    pub(crate) fn outcome(
        &self,
        db: &Database,
        done: &std::sync::mpsc::Receiver<Result<(), DbFailure>>,
        limit: Duration,
    ) -> Result<(), DatabaseError> {
        match done.recv_timeout(self.wait()) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(failure)) => Err(db.failed(failure)),
            Err(_) if self.committing.load(std::sync::atomic::Ordering::SeqCst) => {
                Err(DatabaseError::Failed {
                    url: db.describe().to_owned(),
                    reason: "the commit got no answer in time: the change may or may not have been applied; look before trying again".to_owned(),
                })
            }
            Err(_) => Err(DatabaseError::Timeout {
                url: db.describe().to_owned(),
                limit,
            }),
        }
    }
}

/// A change transaction split between the database's runtime and the caller: the task
/// there takes the lock and sends the rows it read; the caller decides what to write and
/// sends that back ([`Change::commit`]). Dropping the change without committing it rolls
/// the transaction back.
pub(crate) struct Change<R, P> {
    deadline: ChangeDeadline,
    limit: Duration,
    rows: std::sync::mpsc::Receiver<R>,
    plan: tokio::sync::oneshot::Sender<P>,
    done: std::sync::mpsc::Receiver<Result<(), DbFailure>>,
}

impl Database {
    /// Starts `task` (the transaction: lock, read, send the rows, await the plan, write,
    /// commit) on the database's runtime, bounded by `limit`.
    pub(crate) fn begin_change<R, P, Fut>(
        &self,
        limit: Duration,
        task: impl FnOnce(
            Pool,
            std::sync::mpsc::SyncSender<R>,
            tokio::sync::oneshot::Receiver<P>,
            ChangeDeadline,
        ) -> Fut,
    ) -> Change<R, P>
    where
        Fut: Future<Output = Result<(), DbFailure>> + Send + 'static,
    {
        let (rows_tx, rows) = std::sync::mpsc::sync_channel(1);
        let (plan, plan_rx) = tokio::sync::oneshot::channel();
        let (done_tx, done) = std::sync::mpsc::sync_channel(1);
        let deadline = ChangeDeadline::new(limit);
        let work = task(self.pool.clone(), rows_tx, plan_rx, deadline.clone());
        let bound = deadline.clone();
        self.spawn(async move {
            let _ = done_tx.send(bound.run(work).await);
        });
        Change {
            deadline,
            limit,
            rows,
            plan,
            done,
        }
    }
}

impl<R, P> Change<R, P> {
    /// The rows the transaction read under its lock.
    ///
    /// # Errors
    /// Why the task read nothing (its own report, which comes by the deadline).
    pub(crate) fn rows(&self, db: &Database) -> Result<R, DatabaseError> {
        match self.rows.recv_timeout(self.deadline.wait()) {
            Ok(rows) => Ok(rows),
            Err(_) => self.outcome(db).and_then(|()| {
                Err(DatabaseError::Failed {
                    url: db.describe().to_owned(),
                    reason: "the change read nothing".to_owned(),
                })
            }),
        }
    }

    /// Sends what to write, and waits for the commit.
    ///
    /// # Errors
    /// The task's report: a failed write or commit, the deadline, an unknown outcome.
    pub(crate) fn commit(self, db: &Database, plan: P) -> Result<(), DatabaseError> {
        // A task that has ended already (its deadline passed) has reported why.
        let _ = self.plan.send(plan);
        self.deadline.outcome(db, &self.done, self.limit)
    }

    fn outcome(&self, db: &Database) -> Result<(), DatabaseError> {
        self.deadline.outcome(db, &self.done, self.limit)
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

/// The change counters of the keys, the clients and the revoked tokens. Triggers move
/// them on every statement that writes one of the tables, by jwt-issuer or by hand with SQL
/// (rows deleted, a restore), so every change is noticed, as the keys dir notices a file
/// edited by hand.
async fn read_counters(pool: Pool) -> Result<Counters, DbFailure> {
    let client = pool.get().await?;
    let row = client
        .query_one(
            "SELECT keys, clients, revoked FROM jwt_issuer_versions",
            &[],
        )
        .await?;
    Ok(Counters {
        keys: row.get(0),
        clients: row.get(1),
        revoked: row.get(2),
    })
}

/// The ids of the KEKs the stored private keys are sealed under.
async fn sealed_kek_ids(pool: Pool) -> Result<Vec<String>, DbFailure> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT DISTINCT kek_id FROM jwt_issuer_keys WHERE kek_id IS NOT NULL ORDER BY kek_id",
            &[],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Whether the connection string says `sslmode=disable` itself, as a URL query parameter
/// or a `key=value` pair.
fn explicitly_plain(url: &str) -> bool {
    let params: Vec<&str> = match url.split_once("://") {
        Some((_, rest)) => rest
            .split_once('?')
            .map(|(_, query)| query.split('&').collect())
            .unwrap_or_default(),
        None => url.split_whitespace().collect(),
    };
    params.contains(&"sslmode=disable")
}

/// Whether every host of `config` is this machine: a Unix socket, `localhost` or a
/// loopback address, and every `hostaddr` (which is what is connected to) a loopback one.
fn is_local(config: &tokio_postgres::Config) -> bool {
    use tokio_postgres::config::Host;
    config
        .get_hostaddrs()
        .iter()
        .all(std::net::IpAddr::is_loopback)
        && !config.get_hosts().is_empty()
        && config.get_hosts().iter().all(|host| match host {
            Host::Unix(_) => true,
            Host::Tcp(name) => {
                name == "localhost"
                    || name
                        .trim_start_matches('[')
                        .trim_end_matches(']')
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            }
        })
}

/// The TLS connector of `sslmode=require`: rustls on aws-lc-rs, TLS 1.2 and 1.3, the
/// server's certificate and name checked against the CAs of `ca_file`, or else the system's.
fn tls_connector(
    url: &str,
    ca_file: Option<&Path>,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect, DatabaseError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let failed = |reason: String| DatabaseError::TlsRoots {
        url: url.to_owned(),
        reason,
    };
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                .map_err(|e| {
                    failed(format!(
                        "cannot read --store-ca-file {}: {e}",
                        path.display()
                    ))
                })?;
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| failed(format!("{}: {e}", path.display())))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                // A system root rustls cannot use is skipped, as every client does.
                let _ = roots.add(cert);
            }
        }
    }
    if roots.is_empty() {
        return Err(failed(
            "no CA certificate to check the server with: set --store-ca-file (JWT_ISSUER_STORE_CA_FILE) to the PEM of the CA that signed the server's certificate".to_owned(),
        ));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| failed(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// One connection kept open with LISTEN: each notification wakes `changed`; a lost
/// connection is made again with backoff (and wakes `changed`, since a change may have
/// been missed meanwhile). The reloads poll the counters anyway, so a lost LISTEN only
/// slows propagation to the poll's period.
async fn listen<T>(config: tokio_postgres::Config, tls: T, changed: Arc<Notify>)
where
    T: MakeTlsConnect<Socket> + Clone + Send + Sync + 'static,
    T::Stream: Send + Sync + 'static,
    T::TlsConnect: Send + Sync,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    let mut wait = LISTEN_BACKOFF.0;
    loop {
        if let Ok((client, mut connection)) = config.connect(tls.clone()).await {
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
    /// Revoked tokens not expired yet.
    pub revoked: i64,
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
            tx.commit().await?;
            Ok((rewrapped, current))
        })
    }

    /// The schema version, the keys by state and by KEK, the number of clients and of
    /// revoked tokens not expired yet.
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
            let revoked: i64 = client
                .query_one(
                    "SELECT count(*) FROM jwt_issuer_revoked WHERE expires > now()",
                    &[],
                )
                .await?
                .get(0);
            Ok(StoreStatus {
                schema,
                keys_by_state,
                keys_by_kek,
                clients,
                revoked,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_user_or_password() {
        let url =
            DatabaseUrl::new("postgres://jwt:hunter2@db.internal:6432/tokens?sslmode=disable");
        assert!(url.has_password());
        assert_eq!(url.redacted(), "postgres://db.internal:6432/tokens");
        assert!(!format!("{url:?}").contains("hunter2"));
        let plain = DatabaseUrl::new("postgresql://jwt@localhost/tokens");
        assert!(!plain.has_password());
        assert_eq!(plain.redacted(), "postgres://localhost:5432/tokens");
        let kv = DatabaseUrl::new("host=/run/postgresql dbname=tokens password=hunter2");
        assert!(kv.has_password());
        assert_eq!(kv.redacted(), "postgres:///run/postgresql:5432/tokens");
        let junk = DatabaseUrl::new("postgres://jwt:hunter2@[bad");
        assert!(!junk.redacted().contains("hunter2"));
    }

    #[test]
    fn plain_text_needs_saying_for_any_host_that_is_not_this_machine() {
        let local = |url: &str| is_local(&url.parse().unwrap());
        assert!(local("postgres://u@localhost/db"));
        assert!(local("postgres://u@127.0.0.1:5433/db"));
        assert!(local("postgres://u@[::1]/db"));
        assert!(local("host=/run/postgresql dbname=db"));
        assert!(!local("postgres://u@localhost.evil.example/db"));
        assert!(!local("postgres://u@localhost,db.internal/db"));
        // What is connected to is the hostaddr, not the name.
        assert!(!local("postgres://u@localhost/db?hostaddr=10.0.0.5"));
        assert!(explicitly_plain(
            "postgres://u@db.internal/db?sslmode=disable"
        ));
        assert!(explicitly_plain("host=db.internal sslmode=disable"));
        // A password that spells the words is not a parameter.
        assert!(!explicitly_plain(
            "postgres://u:sslmode=disable@db.internal/db"
        ));
        assert!(!explicitly_plain(
            "postgres://u@db.internal/db?sslmode=prefer"
        ));
    }

    #[test]
    fn tls_without_a_usable_ca_and_a_bad_url_are_named_without_the_password() {
        let kek = KekRing::new(Kek::generate().0, Vec::new());
        let empty = tempfile::NamedTempFile::new().unwrap();
        let err = Database::open(
            &DatabaseUrl::new("postgres://jwt:hunter2@db.internal/tokens?sslmode=require"),
            kek.clone(),
            Some(empty.path()),
        )
        .unwrap_err();
        assert!(matches!(err, DatabaseError::TlsRoots { .. }), "{err}");
        assert!(err.to_string().contains("--store-ca-file"), "{err}");
        assert!(!err.to_string().contains("hunter2"));
        let err = Database::open(
            &DatabaseUrl::new("postgres://jwt:hunter2@db.internal/tokens"),
            kek.clone(),
            None,
        )
        .unwrap_err();
        assert!(matches!(err, DatabaseError::SslModeMissing { .. }), "{err}");
        assert!(err.to_string().contains("sslmode=require"), "{err}");
        assert!(!err.to_string().contains("hunter2"));
        let err = Database::open(
            &DatabaseUrl::new("postgres://jwt:hunter2@db.internal/tokens?nonsense=1"),
            kek,
            None,
        )
        .unwrap_err();
        assert!(matches!(err, DatabaseError::InvalidUrl { .. }), "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
}
