//! The HTTP server: actix-web app, one file per endpoint. Handlers read prepared state
//! (JWKS body, ETag, metadata) and never touch the disk.

pub mod discovery;
pub mod error;
pub mod jwks;
pub mod metrics;
pub mod token;

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle, Service as _};
use actix_web::http::header::{self, HeaderValue};
use actix_web::web::{self, Bytes};
use actix_web::{App, HttpResponse, HttpServer};

pub use discovery::{JWKS_PATH, TOKEN_PATH};
pub use metrics::Metrics;

use arc_swap::ArcSwap;

use crate::oauth::clients::FileStamp;
use crate::oauth::{AuthLimiter, ClientRegistry, ClientStore, ClientStoreError};
use crate::{Config, JwksDocument, KeySet, SignError, Signer};

/// How often a running server looks for changes to the client registry file.
pub const CLIENTS_RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// What every handler reads: prepared once when the server is built.
pub struct AppState {
    /// Issues tokens.
    pub signer: Signer,
    /// The JWKS body and its ETag.
    pub jwks: JwksDocument,
    /// The ETag as a header value.
    pub jwks_etag: HeaderValue,
    /// `public, max-age=N`.
    pub jwks_cache_control: HeaderValue,
    /// The discovery document.
    pub discovery: Bytes,
    /// Counters.
    pub metrics: Metrics,
    /// The registered clients: an immutable snapshot, swapped whole on reload.
    pub clients: ArcSwap<ClientRegistry>,
    /// Where the registry comes from.
    pub client_store: ClientStore,
    /// The registry file version loaded last.
    client_stamp: std::sync::Mutex<Option<FileStamp>>,
    /// Failed-authentication limits.
    pub limiter: AuthLimiter,
    /// Lifetime of access tokens for clients without their own.
    pub token_ttl: Duration,
}

impl AppState {
    /// Reloads the client registry if its file changed; a registry that fails to load
    /// keeps the last good one in service and is reported loudly.
    pub fn reload_clients_if_changed(&self) {
        let stamp = self.client_store.stamp();
        let mut last = self.client_stamp.lock().unwrap_or_else(|p| p.into_inner());
        if stamp == *last {
            return;
        }
        *last = stamp;
        match self.client_store.load() {
            Ok(registry) => {
                tracing::info!(clients = registry.len(), "client registry reloaded");
                self.clients.store(Arc::new(registry));
            }
            Err(err) => {
                tracing::error!(error = %err, "client registry failed to load; keeping the previous one");
            }
        }
    }
}

/// Why the server could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The signer refused the keys or the issuer (includes the start-up self-check).
    #[error(transparent)]
    Signer(#[from] SignError),
    /// The listener could not be used.
    #[error("cannot listen: {0}")]
    Listen(#[from] io::Error),
    /// The client registry could not be loaded.
    #[error("cannot load clients: {0}")]
    Clients(#[from] ClientStoreError),
    /// Metrics registration failed.
    #[error("cannot register metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// A built server bound to its listener, not yet running.
pub struct Application {
    server: Server,
    addr: SocketAddr,
    issuer: String,
}

impl Application {
    /// Builds the server on an already bound listener (so tests bind 127.0.0.1:0 and
    /// read the port). Must be called inside an actix system.
    ///
    /// # Errors
    /// See [`ServerError`]; a key that fails the signing self-check stops the start here.
    pub fn build(
        config: &Config,
        listener: TcpListener,
        keys: KeySet,
    ) -> Result<Self, ServerError> {
        let addr = listener.local_addr()?;
        let issuer = config.issuer_for(addr);
        let signer = Signer::new(issuer.clone(), config.alg, Arc::new(keys))?;
        let metrics = Metrics::new()?;
        metrics.set_keys(signer.keys());
        let jwks = JwksDocument::new(&signer.keys().jwk_set());
        let discovery = discovery::Metadata::new(&issuer, signer.keys().algorithms()).to_bytes();
        let client_store = ClientStore::new(&config.keys_dir);
        let client_stamp = client_store.stamp();
        let clients = client_store.load()?;
        let state = web::Data::new(AppState {
            clients: ArcSwap::from_pointee(clients),
            client_store,
            client_stamp: std::sync::Mutex::new(client_stamp),
            limiter: AuthLimiter::new(
                config.auth_max_failures,
                config.auth_failure_window,
                crate::oauth::limiter::DEFAULT_CAPACITY,
            ),
            token_ttl: config.token_ttl,
            jwks_etag: HeaderValue::from_str(jwks.etag()).map_err(io::Error::other)?,
            jwks_cache_control: HeaderValue::from_str(&format!(
                "public, max-age={}",
                config.jwks_max_age.as_secs()
            ))
            .map_err(io::Error::other)?,
            jwks,
            discovery,
            signer,
            metrics,
        });
        let reloader = state.clone();
        actix_web::rt::spawn(async move {
            let mut tick = actix_web::rt::time::interval(CLIENTS_RELOAD_INTERVAL);
            loop {
                tick.tick().await;
                reloader.reload_clients_if_changed();
            }
        });
        let server = HttpServer::new(move || {
            let metrics = state.metrics.clone();
            App::new()
                .app_data(state.clone())
                .wrap_fn(move |req, srv| {
                    let fut = srv.call(req);
                    let metrics = metrics.clone();
                    async move {
                        let res = fut.await?;
                        let route = res.request().match_pattern();
                        metrics.observe_request(
                            route.as_deref().unwrap_or("unmatched"),
                            res.status().as_u16(),
                        );
                        Ok(res)
                    }
                })
                .configure(routes)
        })
        .workers(config.workers)
        .disable_signals()
        .shutdown_timeout(SHUTDOWN_TIMEOUT.as_secs())
        .listen(listener)?
        .run();
        Ok(Self {
            server,
            addr,
            issuer,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The issuer, as in tokens and discovery.
    pub fn issuer(&self) -> &str {
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

/// Stops the server gracefully (in-flight requests finish) on SIGTERM or SIGINT.
pub async fn stop_on_signal(handle: ServerHandle) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the server with SIGKILL");
        return;
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(signal = name, "shutting down gracefully");
    handle.stop(true).await;
}

/// Grace period for in-flight requests at shutdown.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

fn routes(cfg: &mut web::ServiceConfig) {
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
        web::resource("/healthz")
            .route(web::get().to(healthz))
            .route(web::head().to(healthz))
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

/// `GET /healthz`: 200 once the keys are loaded and the self-check passed (the server
/// does not listen before that).
async fn healthz() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(serde_json::json!({"status": "ok"}))
}
