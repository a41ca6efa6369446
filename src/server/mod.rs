//! The HTTP server: actix-web app, one file per endpoint. Handlers read prepared state
//! (JWKS body, ETag, metadata) and never touch the disk.

pub mod connections;
pub mod discovery;
pub mod documents;
pub mod error;
pub mod introspect;
pub mod jwks;
pub mod metrics;
pub mod request_log;
pub mod revoke;
pub mod state;
pub mod tls;
pub mod token;

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle, Service as _};
use actix_web::http::header;
use actix_web::web;
use actix_web::{App, HttpResponse, HttpServer};

pub use documents::{
    INTROSPECTION_PATH, JWKS_PATH, JwksDocument, Metadata, REVOCATION_PATH, TOKEN_PATH,
};
pub use metrics::Metrics;

pub use state::{AppState, Published};

use crate::audit::{AuditLog, AuditOpenError};
use crate::oauth::ClientStoreError;
use crate::storage::Stores;
use crate::{Config, InvalidIssuer, Issuer, KeySet, SignError};

/// How often a running server checks the keys dir and the client registry for changes,
/// and does key maintenance.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// Why the server could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The signer refused the keys (includes the start-up self-check).
    #[error(transparent)]
    Signer(#[from] SignError),
    /// The bound address makes no issuer URL.
    #[error(transparent)]
    Issuer(#[from] InvalidIssuer),
    /// The listener could not be used.
    #[error("cannot listen")]
    Listen(#[from] io::Error),
    /// The client registry could not be loaded.
    #[error("cannot load clients")]
    Clients(#[from] ClientStoreError),
    /// Metrics registration failed.
    #[error("cannot register metrics")]
    Metrics(#[from] prometheus::Error),
    /// The TLS certificate and key cannot be used.
    #[error("cannot serve HTTPS")]
    Tls(#[from] tls::TlsError),
    /// The audit log could not be opened.
    #[error(transparent)]
    Audit(#[from] AuditOpenError),
    /// The trusted issuers file cannot be used.
    #[error("trusted issuers: {0}")]
    TrustedIssuers(String),
}

/// A built server bound to its listener, not yet running.
pub struct Application {
    server: Server,
    addr: SocketAddr,
    issuer: Issuer,
    state: web::Data<AppState>,
    drain: Duration,
}

impl Application {
    /// Builds the server on an already bound listener (so tests bind 127.0.0.1:0 and
    /// read the port), opening the audit log the config names. Must be called inside an
    /// actix system. With [`Config::tls`] it serves HTTPS only, and follows changes of the
    /// certificate and key files.
    ///
    /// # Errors
    /// See [`ServerError`]; a key that fails the signing self-check, or a TLS pair that
    /// cannot be used, stops the start here.
    pub fn build(
        config: &Config,
        listener: TcpListener,
        keys: KeySet,
    ) -> Result<Self, ServerError> {
        let audit = AuditLog::open_if(config.audit_log.as_deref())?;
        Self::build_with_audit(config, listener, keys, audit)
    }

    /// As [`Application::build`], recording into an audit log already open (the CLI opens
    /// it before the keys, so that the keys of a first start are recorded too).
    ///
    /// # Errors
    /// As [`Application::build`].
    pub fn build_with_audit(
        config: &Config,
        listener: TcpListener,
        keys: KeySet,
        audit: AuditLog,
    ) -> Result<Self, ServerError> {
        Self::build_with_stores(config, listener, keys, audit, Stores::keys_dir(config))
    }

    /// As [`Application::build_with_audit`], over `stores` already open (the CLI opens
    /// the store the settings name, the keys dir or PostgreSQL, before loading its keys).
    ///
    /// # Errors
    /// As [`Application::build`].
    pub fn build_with_stores(
        config: &Config,
        listener: TcpListener,
        keys: KeySet,
        audit: AuditLog,
        stores: Stores,
    ) -> Result<Self, ServerError> {
        let tls = match &config.tls {
            Some(files) => Some(tls::TlsCertificate::load(files)?),
            None => None,
        };
        let addr = listener.local_addr()?;
        let issuer = config.issuer_for(Some(addr))?;
        let state = web::Data::new(
            AppState::from_stores(config, issuer.clone(), keys, stores)?.with_audit(audit),
        );
        let background = state.clone();
        let app_state = state.clone();
        let limits = config.http;
        let connections = connections::ConnectionCounter::new(
            limits.max_connections_per_address,
            config.trusted_proxies.clone(),
            state.metrics.clone(),
        );
        // Installed now, before the server is reported ready: a SIGHUP that arrives
        // earlier than the first tick must reload, not kill the process.
        let mut hangup =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let store_changes = state.key_store.changes();
        actix_web::rt::spawn(async move {
            let mut tick = actix_web::rt::time::interval(RELOAD_INTERVAL);
            loop {
                let forced = tokio::select! {
                    _ = tick.tick() => false,
                    // Another replica changed the store: reload now, not at the next tick.
                    () = async { match &store_changes { Some(n) => n.notified().await, None => std::future::pending().await } } => false,
                    Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
                };
                if forced {
                    tracing::info!("SIGHUP: reloading keys and clients");
                }
                // Key generation (RSA), the signer's self-check and waiting for the store's
                // lock take milliseconds to seconds: off the system thread, which also runs
                // the signal handling. Maintenance runs on its own, so a change stuck in
                // another process (holding the lock) never holds up the reloads.
                let state = background.clone();
                drop(actix_web::rt::task::spawn_blocking(move || {
                    state.maintain_keys()
                }));
                let state = background.clone();
                let _ = actix_web::rt::task::spawn_blocking(move || state.reload(forced)).await;
            }
        });
        let server = HttpServer::new(move || {
            let metrics = state.metrics.clone();
            App::new()
                .app_data(state.clone())
                .app_data(web::Data::new(metrics.clone()))
                .wrap_fn(move |req, srv| {
                    let draining = req
                        .app_data::<web::Data<AppState>>()
                        .is_some_and(|s| s.is_draining());
                    let started = std::time::Instant::now();
                    let fut = srv.call(req);
                    let metrics = metrics.clone();
                    async move {
                        let mut res = fut.await?;
                        if draining {
                            // Keep-alive clients move to another replica before the stop.
                            res.response_mut()
                                .head_mut()
                                .set_connection_type(actix_web::http::ConnectionType::Close);
                        }
                        // Label by the resource the router chose, not by the path as the
                        // client spelled it: `/%68ealthz` is served by /healthz and counted
                        // there. Only the fixed ROUTES are labels (the series stay bounded);
                        // a path no resource serves is "unmatched".
                        let pattern = res.request().match_pattern();
                        let route = ROUTES
                            .iter()
                            .find(|r| pattern.as_deref() == Some(**r))
                            .copied()
                            .unwrap_or("unmatched");
                        metrics.observe_request(route, res.status());
                        metrics.observe_duration(route, res.status(), started.elapsed());
                        Ok(res)
                    }
                })
                // Outermost: its latency covers the whole request, its line shows the
                // final response.
                .wrap(request_log::RequestLog)
                .configure(routes)
        })
        .workers(config.workers)
        .on_connect(move |connection, data| connections.on_connect(connection, data))
        .client_request_timeout(limits.request_timeout)
        .keep_alive(if limits.keep_alive.is_zero() {
            actix_web::http::KeepAlive::Disabled
        } else {
            actix_web::http::KeepAlive::Timeout(limits.keep_alive)
        })
        // actix counts per worker.
        .max_connections((limits.max_connections / config.workers.max(1)).max(1))
        .disable_signals()
        .shutdown_timeout(SHUTDOWN_TIMEOUT.as_secs());
        let server = match &tls {
            Some(certificate) => {
                let tls_config = certificate.server_config()?;
                certificate.watch();
                server.listen_rustls_0_23(listener, tls_config)?
            }
            None => server.listen(listener)?,
        }
        .run();
        Ok(Self {
            server,
            addr,
            issuer,
            state: app_state,
            drain: limits.shutdown_drain,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The issuer, as in tokens and discovery.
    pub fn issuer(&self) -> &Issuer {
        &self.issuer
    }

    /// A handle to stop the server (gracefully with `stop(true)`).
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Serves until stopped through a [`ServerHandle`].
    ///
    /// # Errors
    /// I/O errors of the server.
    pub async fn run_until_stopped(self) -> io::Result<()> {
        self.server.await
    }
}

/// Stops the server gracefully on SIGTERM or SIGINT: in-flight requests finish. After
/// SIGTERM (an orchestrator's stop) the server drains first: for the configured drain
/// time it keeps accepting and answering, `/readyz` says 503 and every response closes
/// its connection, so that requests already on their way are answered and clients move to
/// another replica. SIGINT (Ctrl-C) stops without the drain. The handlers are installed
/// when this is called, not when the future is first polled, so call it before announcing
/// that the server is ready.
pub fn stop_on_signal(app: &Application) -> impl std::future::Future<Output = ()> + use<> {
    use tokio::signal::unix::{SignalKind, signal};
    let signals = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    let handle = app.handle();
    let state = app.state.clone();
    let drain = app.drain;
    async move {
        let (Ok(mut term), Ok(mut int)) = signals else {
            tracing::error!("cannot install signal handlers; stop the server with SIGKILL");
            return;
        };
        let terminate = tokio::select! {
            _ = term.recv() => true,
            _ = int.recv() => false,
        };
        if terminate && !drain.is_zero() {
            tracing::info!(signal = "SIGTERM", drain = ?drain, "draining, then shutting down");
            state
                .draining
                .store(true, std::sync::atomic::Ordering::Relaxed);
            // A second signal cuts the drain short.
            tokio::select! {
                () = actix_web::rt::time::sleep(drain) => {}
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        tracing::info!(
            signal = if terminate { "SIGTERM" } else { "SIGINT" },
            "shutting down gracefully"
        );
        // Accepting stops before the workers do, so no connection is accepted with no
        // worker left to take it.
        handle.pause().await;
        handle.stop(true).await;
    }
}

/// Grace period for in-flight requests at shutdown.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// The paths the service serves.
const ROUTES: [&str; 9] = [
    JWKS_PATH,
    "/.well-known/openid-configuration",
    "/.well-known/oauth-authorization-server",
    TOKEN_PATH,
    INTROSPECTION_PATH,
    REVOCATION_PATH,
    "/healthz",
    "/readyz",
    "/metrics",
];

/// Every route of the service (for `App::configure`; benches build an app without a socket).
pub fn routes(cfg: &mut web::ServiceConfig) {
    let get_only = || web::to(|| async { error::method_not_allowed("GET, HEAD") });
    cfg.service(
        web::resource(JWKS_PATH)
            .route(web::get().to(jwks::jwks))
            .route(web::head().to(jwks::jwks))
            .default_service(get_only()),
    );
    for path in [
        "/.well-known/openid-configuration",
        "/.well-known/oauth-authorization-server",
    ] {
        cfg.service(
            web::resource(path)
                .route(web::get().to(discovery::metadata))
                .route(web::head().to(discovery::metadata))
                .default_service(get_only()),
        );
    }
    cfg.service(
        web::resource(TOKEN_PATH)
            .route(web::post().to(token::token))
            .default_service(web::to(|| async { error::method_not_allowed("POST") })),
    );
    cfg.service(
        web::resource(INTROSPECTION_PATH)
            .route(web::post().to(introspect::introspect))
            .default_service(web::to(|| async { error::method_not_allowed("POST") })),
    );
    cfg.service(
        web::resource(REVOCATION_PATH)
            .route(web::post().to(revoke::revoke))
            .default_service(web::to(|| async { error::method_not_allowed("POST") })),
    );
    cfg.service(
        web::resource("/healthz")
            .route(web::get().to(healthz))
            .route(web::head().to(healthz))
            .default_service(get_only()),
    );
    cfg.service(
        web::resource("/readyz")
            .route(web::get().to(readyz))
            .route(web::head().to(readyz))
            .default_service(get_only()),
    );
    cfg.service(
        web::resource("/metrics")
            .route(web::get().to(metrics::metrics))
            .route(web::head().to(metrics::metrics))
            .default_service(get_only()),
    );
    cfg.default_service(web::to(error::not_found));
}

/// `GET /healthz` (liveness): 200 while the process serves; the server listens only once
/// the keys are loaded and self-checked. `degraded` names the published keys left out
/// because they cannot be loaded and the stores holding a change that cannot be read; the
/// reasons are in the log.
async fn healthz(state: web::Data<AppState>) -> HttpResponse {
    let published = state.published.load();
    let broken: Vec<serde_json::Value> = published
        .signer
        .keys()
        .broken()
        .iter()
        .map(|k| serde_json::json!({"kid": k.kid, "alg": k.alg, "state": k.state.as_str()}))
        .collect();
    let unread = unread_stores(&state);
    let stale = state.store_is_stale();
    let status = if broken.is_empty() && unread.is_empty() && !stale {
        "ok"
    } else {
        "degraded"
    };
    let mut body =
        serde_json::json!({"status": status, "broken_keys": broken, "unread_changes": unread});
    // A store that can go away (PostgreSQL): how long since it last answered.
    if let Some(since) = state.key_store.since_last_contact() {
        body["store_last_answered_seconds_ago"] = serde_json::json!(since.as_secs());
        body["store_stale"] = serde_json::json!(stale);
    }
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(body)
}

/// How long `/readyz` waits for a vault's key to say whether it can sign.
const HEALTH_PROBE_LIMIT: std::time::Duration = std::time::Duration::from_secs(2);

/// `GET /readyz` (readiness): 200 when the server can issue tokens with its default
/// algorithm and every algorithm a registered client uses; 503 with the reasons while it cannot (no usable active key for it, or a store
/// change that cannot be read, during which no token is issued). The JWKS and discovery are
/// served either way.
async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let published = state.published.load();
    let mut reasons = Vec::new();
    // The default algorithm, and every algorithm a registered client's tokens use.
    let default = published.signer.default_alg();
    let mut algs = state.clients.load().algorithms();
    algs.retain(|a| *a != default);
    algs.insert(0, default);
    for alg in algs {
        if !published.signer.supports(alg) {
            let whose = if alg == default {
                "the default algorithm"
            } else {
                "a registered client's algorithm"
            };
            reasons.push(format!("no usable active {alg} key ({whose})"));
        } else if let Some(key) = published.signer.keys().active(alg).filter(|k| k.blocks()) {
            // A key held in a vault (an HSM) that cannot sign now: its tokens get 503.
            // Asked off the async worker, and not for longer than a probe waits.
            let probe = web::block({
                let key = std::sync::Arc::clone(key);
                move || key.health()
            });
            let why = match tokio::time::timeout(HEALTH_PROBE_LIMIT, probe).await {
                Ok(Ok(Ok(()))) => continue,
                Ok(Ok(Err(why))) => why,
                Ok(Err(_)) => "the check failed".to_owned(),
                Err(_) => format!("no answer within {} s", HEALTH_PROBE_LIMIT.as_secs()),
            };
            reasons.push(format!(
                "the active {alg} key {} cannot sign: {why}",
                key.kid()
            ));
        }
    }
    if let Some(why) = state.unapplied_change() {
        reasons.push(why.to_owned());
    }
    if state.is_draining() {
        reasons.push("shutting down".to_owned());
    }
    let (mut res, status) = if reasons.is_empty() {
        (HttpResponse::Ok(), "ready")
    } else {
        (HttpResponse::ServiceUnavailable(), "not_ready")
    };
    res.insert_header((header::CACHE_CONTROL, "no-store"))
        .json(serde_json::json!({"status": status, "reasons": reasons}))
}

/// The stores (`keys`, `clients`) holding a change the server cannot read.
fn unread_stores(state: &AppState) -> Vec<&'static str> {
    [
        ("keys", state.key_reload.unapplied()),
        ("clients", state.client_reload.unapplied()),
    ]
    .into_iter()
    .filter_map(|(name, unread)| unread.then_some(name))
    .collect()
}
