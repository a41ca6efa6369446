//! What handlers read: the published key set as one immutable snapshot (signer, JWKS body
//! and ETag, discovery document), swapped whole when the keys dir changes, plus the client
//! registry, limits and counters. Reloads run on a timer and on SIGHUP; a store that fails
//! to load leaves the last good snapshot in service and is logged loudly.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::http::header::HeaderValue;
use actix_web::web::Bytes;
use arc_swap::ArcSwap;

use super::Metrics;
use super::documents::{JwksDocument, Metadata};
use crate::audit::{AuditLog, KeyChangeBy};
use crate::keys::{KeyStore, Millis};
use crate::oauth::federation::Federation;
use crate::oauth::revocation::Revocations;
use crate::oauth::{ClientRegistry, ClientStore, ClientStoreError, TokenEndpoint};
use crate::report::Report;
use crate::secret::HmacSecret;
use crate::storage::Stores;
use crate::store::StoreVersion;
use crate::ttl::check_ttl;
use crate::verify::KeyRing;
use crate::{Config, Issuer, KeySet, SignError, Signer, SignerConfig, SigningAlg};

/// How long key maintenance waits after its first failure before trying again; the wait
/// doubles with each failure up to [`MAINTENANCE_BACKOFF_MAX`].
pub const MAINTENANCE_BACKOFF_FIRST: Duration = Duration::from_secs(1);
/// The longest wait between attempts of a failing key maintenance.
pub const MAINTENANCE_BACKOFF_MAX: Duration = Duration::from_secs(60);

/// A failing key maintenance: when it last failed and how long to wait after that.
struct MaintenanceFailure {
    since_last: std::time::Instant,
    wait: Duration,
}

/// The published key set at one moment, prepared for serving.
pub struct Published {
    /// Issues tokens with this set's active keys.
    pub signer: Signer,
    /// The JWKS body and its ETag (which changes with the key set only).
    pub jwks: JwksDocument,
    /// The ETag as a header value.
    pub jwks_etag: HeaderValue,
    /// When the set changes by itself next (a retired key leaving, a scheduled rotation).
    pub next_change: Option<Millis>,
    /// The published keys and the HS256 secret as verifying keys: what introspection and
    /// revocation check this server's tokens against.
    pub verifying: Arc<KeyRing>,
    version: Option<StoreVersion>,
}

impl Published {
    fn build(
        settings: &StateConfig,
        keys: KeySet,
        version: Option<StoreVersion>,
    ) -> Result<Self, SignError> {
        let next_change = keys.next_change(settings.rotate_every);
        let signer = Signer::new(
            settings.signer.clone(),
            Arc::new(keys),
            settings.hmac_secret.as_ref(),
        )?;
        let jwks = JwksDocument::new(&signer.keys().jwk_set());
        // A base64url tag in quotes is always a valid header value.
        let jwks_etag =
            HeaderValue::from_str(jwks.etag()).unwrap_or_else(|_| HeaderValue::from_static("\"\""));
        let (ring, _) = KeyRing::from_jwk_set(&signer.keys().jwk_set());
        let verifying = Arc::new(ring.and_secrets(settings.hmac_secret.as_ref()));
        Ok(Self {
            signer,
            jwks,
            jwks_etag,
            next_change,
            verifying,
            version,
        })
    }
}

/// The shared state of one server.
pub struct AppState {
    /// The current key set snapshot.
    pub published: ArcSwap<Published>,
    /// Where keys come from.
    pub key_store: KeyStore,
    settings: StateConfig,
    /// The discovery document, rebuilt when the keys or the clients change (it lists the
    /// algorithms in use: HS256 only when the default or some client uses it).
    pub discovery: ArcSwap<Bytes>,
    /// The configured JWKS max-age.
    pub jwks_max_age: Duration,
    jwks_cache_control: HeaderValue,
    /// Counters.
    pub metrics: Metrics,
    /// The registered clients: an immutable snapshot, swapped whole on reload.
    pub clients: ArcSwap<ClientRegistry>,
    /// Where the registry comes from.
    pub client_store: ClientStore,
    client_version: Mutex<Option<StoreVersion>>,
    /// How the client registry's reloads are going.
    pub client_reload: ReloadStatus,
    /// How the key set's reloads are going.
    pub key_reload: ReloadStatus,
    /// The token endpoint: grants, client authentication, brute-force limits.
    pub token_endpoint: TokenEndpoint,
    maintenance_failure: Mutex<Option<MaintenanceFailure>>,
    /// Set at SIGTERM: readiness fails and every response closes its connection while the
    /// server drains.
    pub draining: std::sync::atomic::AtomicBool,
    /// Where issued and refused tokens and key changes are recorded (disabled by default).
    pub audit: AuditLog,
    /// The revoked tokens (RFC 7009), a snapshot read again when the list changes.
    pub revocations: Revocations,
}

/// Everything [`AppState::new`] needs besides the loaded keys.
pub struct StateConfig {
    /// Issuer, default algorithm and maximum token lifetime of every snapshot's signer.
    pub signer: SignerConfig,
    /// Automatic rotation period.
    pub rotate_every: Option<Duration>,
    /// The HS256 secret (JWT_SECRET / JWT_SECRET_FILE), if configured.
    pub hmac_secret: Option<HmacSecret>,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// How long a request body may take to arrive.
    pub body_timeout: Duration,
    /// The largest request body accepted.
    pub max_body_bytes: usize,
    /// How long the server signs while its store does not answer.
    pub store_stale_after: Duration,
}

impl AppState {
    /// The state of a server with `config` and `issuer`, over the keys dir and client
    /// registry the config names, starting from `keys`.
    ///
    /// # Errors
    /// As [`AppState::new`].
    pub fn from_config(
        config: &Config,
        issuer: Issuer,
        keys: KeySet,
    ) -> Result<Self, super::ServerError> {
        Self::from_stores(config, issuer, keys, Stores::keys_dir(config))
    }

    /// As [`AppState::from_config`], over `stores` (already open: the PostgreSQL store's
    /// connection is shared, not made twice).
    ///
    /// # Errors
    /// As [`AppState::new`].
    pub fn from_stores(
        config: &Config,
        issuer: Issuer,
        keys: KeySet,
        stores: Stores,
    ) -> Result<Self, super::ServerError> {
        let mut token_endpoint = TokenEndpoint::new(config.token_ttl, config.auth_limits)
            .with_replay_cache(stores.replay_cache());
        if let Some(shared) = stores.shared_failures() {
            token_endpoint = token_endpoint.with_shared_failures(shared);
        }
        if let Some(path) = &config.trusted_issuers {
            let federation = Federation::load(path).map_err(super::ServerError::TrustedIssuers)?;
            tracing::info!(issuers = %federation.issuers().join(" "), "trusting external issuers for the JWT bearer grant and token exchange");
            token_endpoint = token_endpoint.with_federation(std::sync::Arc::new(federation));
        }
        let revocations = Revocations::new(stores.revocations());
        if let Some(err) = revocations.unread_change() {
            tracing::error!(list = %revocations.describe(), error = %err, "the revocation list cannot be read; introspection answers 503 until it can");
        }
        Self::new(
            stores.keys,
            keys,
            stores.clients,
            revocations,
            StateConfig {
                signer: SignerConfig {
                    issuer,
                    default_alg: config.alg,
                    max_ttl: config.policy.max_token_ttl,
                },
                rotate_every: config.rotate_every,
                hmac_secret: config.hmac_secret.clone(),
                trusted_proxies: config
                    .trusted_proxies
                    .iter()
                    .map(std::net::IpAddr::to_canonical)
                    .collect(),
                body_timeout: config.http.request_timeout,
                max_body_bytes: config.http.max_body_bytes,
                store_stale_after: config.store_stale_after,
            },
            token_endpoint,
            Metrics::new()?,
        )
    }

    /// Prepares the first snapshot from `keys` and loads the client registry.
    ///
    /// # Errors
    /// The signer's self-check, or an unusable client registry.
    pub fn new(
        key_store: KeyStore,
        keys: KeySet,
        client_store: ClientStore,
        revocations: Revocations,
        config: StateConfig,
        token_endpoint: TokenEndpoint,
        metrics: Metrics,
    ) -> Result<Self, super::ServerError> {
        // No version yet: the caller loaded `keys` earlier, and a change since (a
        // revocation during the start) must not pass for seen. The first tick reloads.
        let published = Published::build(&config, keys, None)?;
        if !published.signer.keys().broken().is_empty() {
            report_broken(published.signer.keys());
        }
        metrics.set_keys(published.signer.keys());
        metrics.set_rotation_period(config.rotate_every);
        let client_version = client_store.version();
        let policy = *key_store.policy();
        let clients = load_clients(
            &client_store,
            config.hmac_secret.is_some(),
            &published.signer,
        )?;
        report_skipped(&clients);
        metrics.set_clients(&clients);
        for store in ["keys", "clients"] {
            metrics.store_current(store);
        }
        let discovery = discovery_document(&config, &token_endpoint, &published, &clients);
        Ok(Self {
            published: ArcSwap::from_pointee(published),
            jwks_max_age: policy.jwks_max_age,
            jwks_cache_control: HeaderValue::from_str(&format!(
                "public, max-age={}",
                policy.jwks_max_age.as_secs()
            ))
            .unwrap_or_else(|_| HeaderValue::from_static("no-cache")),
            key_store,
            discovery: ArcSwap::from_pointee(discovery),
            metrics,
            clients: ArcSwap::from_pointee(clients),
            client_store,
            client_version: Mutex::new(client_version),
            client_reload: ReloadStatus::default(),
            key_reload: ReloadStatus::default(),
            token_endpoint,
            settings: config,
            maintenance_failure: Mutex::new(None),
            draining: std::sync::atomic::AtomicBool::new(false),
            audit: AuditLog::disabled(),
            revocations,
        })
    }

    /// This state recording tokens and its own key changes (maintenance) in `audit`.
    #[must_use]
    pub fn with_audit(mut self, audit: AuditLog) -> Self {
        self.key_store = self
            .key_store
            .clone()
            .on_change(audit.key_observer(KeyChangeBy::Server));
        self.audit = audit;
        self
    }

    /// Why no token may be issued now: the key store or the client registry holds a
    /// change that could not be read yet (it may revoke a key or a secret).
    pub fn unapplied_change(&self) -> Option<&'static str> {
        if self.store_is_stale() {
            Some(
                "the store has not answered for longer than --store-stale-after: a revocation may be going unseen",
            )
        } else if self.key_reload.unapplied() {
            Some("the key store changed and cannot be read yet")
        } else if self.client_reload.unapplied() {
            Some("the client registry changed and cannot be read yet")
        } else {
            None
        }
    }

    /// Whether the store has not answered for longer than `--store-stale-after` (a
    /// database that went away; never for the keys dir).
    pub fn store_is_stale(&self) -> bool {
        self.key_store
            .since_last_contact()
            .is_some_and(|since| since > self.settings.store_stale_after)
    }

    /// Whether the store answered the last poll of its version (always, for the keys dir).
    fn store_answered(&self) -> bool {
        self.key_store
            .since_last_contact()
            .is_none_or(|since| since < Duration::from_secs(2))
    }

    /// How long a request body may take to arrive.
    pub fn body_timeout(&self) -> Duration {
        self.settings.body_timeout
    }

    /// The largest request body accepted.
    pub fn max_body_bytes(&self) -> usize {
        self.settings.max_body_bytes
    }

    /// True once SIGTERM started the drain.
    pub fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Proxies whose `X-Forwarded-For` is believed.
    pub fn trusted_proxies(&self) -> &[std::net::IpAddr] {
        &self.settings.trusted_proxies
    }

    /// `public, max-age=N`, where N is the configured max-age or the time left until the
    /// key set's next scheduled change, whichever is shorter, so caches follow scheduled
    /// changes on time.
    pub fn jwks_cache_control(&self, published: &Published) -> HeaderValue {
        let max_age = self.jwks_max_age.as_secs();
        let left = published.next_change.map(|change| {
            let now = crate::time::now_ms();
            change.saturating_sub(now) / 1000
        });
        match left {
            Some(left) if left < max_age => {
                HeaderValue::from_str(&format!("public, max-age={left}"))
                    .unwrap_or_else(|_| HeaderValue::from_static("no-cache"))
            }
            // The common case, prepared once.
            _ => self.jwks_cache_control.clone(),
        }
    }

    /// The reloads of keys and clients, if they changed (`force`: regardless). They take no
    /// lock, so a change stuck in another process never holds them up.
    pub fn reload(&self, force: bool) {
        self.reload_keys(force);
        self.reload_clients(force);
        let before = self.revocations.unread_change();
        match self.revocations.reload(force) {
            Some(err) if before.as_ref() != Some(&err) => {
                tracing::error!(list = %self.revocations.describe(), error = %err, "the revocation list cannot be read; introspection answers 503 until it can");
            }
            None if before.is_some() => {
                tracing::info!("the revocation list is read again");
            }
            _ => {}
        }
    }

    /// Key maintenance (removals, automatic rotation), with backoff after failures. It
    /// takes the store's lock, so the server runs it apart from the reloads.
    pub fn maintain_keys(&self) {
        let Ok(mut failing) = self.maintenance_failure.try_lock() else {
            // Still running from an earlier tick (waiting for another process's lock).
            return;
        };
        // After a failure (a read-only or full keys dir), wait before trying again, longer
        // each time up to a minute, rather than generating keys every tick that cannot be
        // stored; a fault that goes away is noticed within seconds.
        if failing
            .as_ref()
            .is_some_and(|f| f.since_last.elapsed() < f.wait)
        {
            return;
        }
        match self.key_store.maintain(self.settings.rotate_every) {
            Ok(done) => {
                for event in done {
                    tracing::info!(event = %event, "key maintenance");
                }
                if failing.take().is_some() {
                    tracing::info!("key maintenance works again");
                }
            }
            Err(err) => {
                // Logged once per episode: each attempt names a new key file, and a
                // read-only keys dir would repeat it for hours.
                let wait = match failing.as_ref() {
                    None => {
                        tracing::error!(error = %Report(&err), "key maintenance failed; another replica or an operator must rotate and remove keys; retrying with backoff");
                        MAINTENANCE_BACKOFF_FIRST
                    }
                    Some(f) => (f.wait * 2).min(MAINTENANCE_BACKOFF_MAX),
                };
                *failing = Some(MaintenanceFailure {
                    since_last: std::time::Instant::now(),
                    wait,
                });
            }
        }
    }

    /// Reloads the key set when the manifest changed or a scheduled change is due.
    pub fn reload_keys(&self, force: bool) {
        let current = self.published.load();
        let version = self.key_store.version();
        let now = crate::time::now_ms();
        let due = current.next_change.is_some_and(|t| now >= t);
        // A broken key may be fixed without a change to the manifest (chmod 600): try
        // again every tick while one is reported.
        let retry_broken = !current.signer.keys().broken().is_empty();
        // A failed reload is retried every tick until one succeeds, even when the store's
        // version went back to the one served (a file moved away and back).
        let retry_failed = self.key_reload.last_error().is_some();
        if !force && !due && !retry_broken && !retry_failed && version == current.version {
            // An unchanged version from a store that did not answer is the last one seen,
            // not a confirmation (the database went away).
            if self.store_answered() {
                self.metrics.store_current("keys");
            }
            return;
        }
        let had_keys = !current.signer.keys().is_empty();
        let built = self
            .key_store
            .reload(Some(current.signer.keys()))
            .map_err(|e| Report(&e).to_string())
            .and_then(|keys| {
                // A store that held keys and now has no manifest, or no keys, was deleted
                // or emptied by accident far more often than on purpose (keys are removed
                // one by one through their lifecycle): never publish what a first start
                // would make of it (its key files adopted again, a revoked one included).
                if had_keys && version.is_none() {
                    return Err(format!(
                        "{} has no readable manifest any more (deleted?); the last key set stays published",
                        self.key_store.describe()
                    ));
                }
                // Every key file unreadable at once (a directory being deleted file by
                // file, a volume gone): the same, not an empty JWKS that would fail every
                // token issued so far.
                if had_keys && keys.is_empty() {
                    return Err(format!(
                        "{} holds no usable keys any more (deleted?); the last key set stays published",
                        self.key_store.describe()
                    ));
                }
                Ok(keys)
            })
            .and_then(|keys| {
                Published::build(&self.settings, keys, version.clone())
                    .map_err(|e| Report(&e).to_string())
            });
        match built {
            Ok(next) => {
                let changed = next.jwks.etag() != current.jwks.etag();
                let broken_changed = next.signer.keys().broken() != current.signer.keys().broken();
                if broken_changed {
                    report_broken(next.signer.keys());
                }
                // A key changing state (next to active) changes the manifest, not the JWKS.
                let served_changed = changed
                    || broken_changed
                    || next.signer.keys().manifest() != current.signer.keys().manifest();
                self.metrics.reload_succeeded("keys", served_changed);
                self.metrics.set_keys(next.signer.keys());
                self.published.store(Arc::new(next));
                // In service first, then the unread mark lifted: never a moment where the
                // old key set signs as if the change were applied.
                if self.key_reload.unapplied() {
                    tracing::info!("the key store's change is applied; tokens are issued again");
                }
                self.key_reload.succeeded();
                self.metrics.set_unapplied("keys", false);
                self.refresh_discovery();
                if changed {
                    tracing::info!(etag = %self.published.load().jwks.etag(), "key set reloaded");
                }
            }
            Err(err) => {
                // The version is not recorded, so the next tick tries again. A change that
                // cannot be read may revoke a key: no token is signed until it is read.
                let changed = version != current.version;
                // Closed first (a request on another thread checks the flag), counted after.
                let new = self.key_reload.failed(&err, changed);
                self.metrics.reload_failed("keys", changed);
                if new {
                    if changed {
                        tracing::error!(error = %err, "KEY STORE CHANGED BUT CANNOT BE READ: no token is issued until it is (it may revoke a key); the JWKS stays as it was; retrying every second");
                    } else {
                        tracing::error!(error = %err, "KEY SET FAILED TO LOAD; still serving the previous key set; retrying every second");
                    }
                }
            }
        }
    }

    fn refresh_discovery(&self) {
        let doc = discovery_document(
            &self.settings,
            &self.token_endpoint,
            &self.published.load(),
            &self.clients.load(),
        );
        self.discovery.store(Arc::new(doc));
    }

    /// Reloads the client registry if its file changed.
    pub fn reload_clients(&self, force: bool) {
        let version = self.client_store.version();
        let mut last = self
            .client_version
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if !force && version == *last && self.client_reload.last_error().is_none() {
            if self.store_answered() {
                self.metrics.store_current("clients");
            }
            return;
        }
        // A registry file that existed and is gone was deleted with its directory, far
        // more often than on purpose (`clients remove` keeps the file): not "no clients".
        let loaded = if version.is_none() && last.is_some() {
            Err(ClientStoreError::Gone(self.client_store.describe()))
        } else {
            load_clients(
                &self.client_store,
                self.settings.hmac_secret.is_some(),
                &self.published.load().signer,
            )
        };
        match loaded {
            Ok(registry) => {
                self.metrics.reload_succeeded("clients", version != *last);
                // Recorded only now: a load that failed is tried again at the next tick.
                *last = version;
                let (served, skipped) = (registry.len(), registry.skipped().len());
                report_skipped(&registry);
                self.metrics.set_clients(&registry);
                // In service first, then the unread mark lifted: never a moment where the
                // old registry serves as if the change were applied.
                self.clients.store(Arc::new(registry));
                if self.client_reload.unapplied() {
                    tracing::info!(
                        "the client registry's change is applied; tokens are issued again"
                    );
                }
                self.client_reload.succeeded();
                self.metrics.set_unapplied("clients", false);
                tracing::info!(clients = served, skipped, "client registry reloaded");
                self.refresh_discovery();
            }
            Err(err) => {
                // A change that cannot be read may rotate a secret or remove a client: no
                // token is issued until it is read.
                let text = Report(&err).to_string();
                let changed = version != *last;
                let new = self.client_reload.failed(&text, changed);
                self.metrics.reload_failed("clients", changed);
                if new {
                    tracing::error!(error = %text, "CLIENT REGISTRY CHANGED BUT CANNOT BE READ: no token is issued until it is (it may remove a client or rotate a secret); retrying every second");
                }
            }
        }
    }
}

/// Discovery lists the algorithms tokens are signed with: those with an active key, and
/// HS256 only when the default algorithm or some client uses it.
fn discovery_document(
    settings: &StateConfig,
    endpoint: &TokenEndpoint,
    published: &Published,
    clients: &ClientRegistry,
) -> Bytes {
    let mut algs = published.signer.keys().algorithms();
    if settings.signer.default_alg == SigningAlg::Hs256
        || clients.algorithms().contains(&SigningAlg::Hs256)
    {
        algs.push(SigningAlg::Hs256);
    }
    Metadata::new(&settings.signer.issuer, algs, endpoint).to_bytes()
}

/// How the reloads of one store are going: the last error (so that a lasting failure is
/// logged once, and again only when it changes) and whether the store holds a change that
/// could not be read yet. Such a change may be a revocation or a secret rotation, so while
/// it is unread no token is issued (fail closed), and the server reports itself not ready.
#[derive(Default)]
pub struct ReloadStatus {
    last_error: Mutex<Option<String>>,
    unapplied: std::sync::atomic::AtomicBool,
}

impl ReloadStatus {
    /// Records a failed reload; `changed` when the store's version differs from the one
    /// being served (a change is waiting). True when the error is new (log it).
    fn failed(&self, text: &str, changed: bool) -> bool {
        if changed {
            self.unapplied
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        let mut last = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
        let new = last.as_deref() != Some(text);
        *last = Some(text.to_owned());
        new
    }

    /// The reload succeeded.
    fn succeeded(&self) {
        self.unapplied
            .store(false, std::sync::atomic::Ordering::SeqCst);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// True while the store holds a change that could not be loaded.
    pub fn unapplied(&self) -> bool {
        self.unapplied.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The error of the last reload, while reloads fail.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// One error line per key the manifest publishes that could not be loaded (left out: not
/// published, not signing); one line when every key loads again.
fn report_broken(keys: &KeySet) {
    if keys.broken().is_empty() {
        tracing::info!("every published key loads");
    }
    for key in keys.broken() {
        tracing::error!(kid = %key.kid, alg = %key.alg, state = key.state.as_str(), reason = %key.reason, "KEY LEFT OUT: it cannot be loaded; the other keys are served");
    }
}

/// One error line per client the server does not serve.
fn report_skipped(registry: &ClientRegistry) {
    for skipped in registry.skipped() {
        tracing::error!(client_id = %skipped.client_id.escape_debug(), reason = %skipped.reason, "client skipped; every other client is served");
    }
}

fn load_clients(
    store: &ClientStore,
    have_secret: bool,
    signer: &Signer,
) -> Result<ClientRegistry, ClientStoreError> {
    let mut registry = store.load()?;
    // What this server cannot serve is skipped client by client, never the registry.
    registry.skip_if(|client| match client.alg {
        Some(SigningAlg::Hs256) if !have_secret => {
            Some("uses HS256, but this server has no JWT_SECRET or JWT_SECRET_FILE".into())
        }
        _ => client.ttl_secs.and_then(|ttl| {
            check_ttl(Duration::from_secs(ttl), signer.max_ttl())
                .err()
                .map(|e| {
                    format!(
                        "its token ttl is longer than max_token_ttl ({}s)",
                        e.max.as_secs()
                    )
                })
        }),
    });
    Ok(registry)
}
