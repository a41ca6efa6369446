//! Prometheus metrics (`jwt_issuer_*`) and the `GET /metrics` handler.

use actix_web::http::header::CONTENT_TYPE;
use actix_web::{HttpResponse, web};
use prometheus::{Encoder, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::KeySet;
use crate::oauth::ClientRegistry;

/// The service's counters, in a registry of their own (one per server, so several servers
/// in one process do not mix their figures).
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    jwks: IntCounterVec,
    keys_loaded: IntGaugeVec,
    keys_broken: IntGaugeVec,
    clients: IntGaugeVec,
    tokens: IntCounterVec,
    reload_failures: IntCounterVec,
    unapplied: IntGaugeVec,
    connections_refused: IntCounterVec,
}

impl Metrics {
    /// Registers every series.
    ///
    /// # Errors
    /// Only on a programming error (a duplicate or invalid series name).
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "jwt_issuer_http_requests_total",
                "HTTP requests by route and status",
            ),
            &["route", "status"],
        )?;
        let jwks = IntCounterVec::new(
            Opts::new(
                "jwt_issuer_jwks_responses_total",
                "JWKS responses: full body (200) or not modified (304)",
            ),
            &["status"],
        )?;
        let keys_loaded = IntGaugeVec::new(
            Opts::new(
                "jwt_issuer_keys_loaded",
                "Signing keys loaded, by algorithm",
            ),
            &["alg"],
        )?;
        let keys_broken = IntGaugeVec::new(
            Opts::new(
                "jwt_issuer_keys_broken",
                "Published keys that cannot be loaded (left out, not signing), by algorithm",
            ),
            &["alg"],
        )?;
        let clients = IntGaugeVec::new(
            Opts::new(
                "jwt_issuer_clients",
                "Registered clients: served, or skipped (an entry this server cannot serve)",
            ),
            &["state"],
        )?;
        let tokens = IntCounterVec::new(
            Opts::new(
                "jwt_issuer_token_requests_total",
                "Token endpoint outcomes: issued (by alg) or the OAuth error code",
            ),
            &["outcome", "detail"],
        )?;
        let reload_failures = IntCounterVec::new(
            Opts::new(
                "jwt_issuer_reload_failures_total",
                "Failed reloads of the key store or the client registry (retried every second)",
            ),
            &["store"],
        )?;
        let unapplied = IntGaugeVec::new(
            Opts::new(
                "jwt_issuer_store_change_unread",
                "1 while the store holds a change that cannot be read (no token is issued)",
            ),
            &["store"],
        )?;
        let connections_refused = IntCounterVec::new(
            Opts::new(
                "jwt_issuer_connections_refused_total",
                "Connections closed at once: their address held its share (per_address)",
            ),
            &["reason"],
        )?;
        connections_refused.with_label_values(&["per_address"]);
        registry.register(Box::new(connections_refused.clone()))?;
        for store in ["keys", "clients"] {
            reload_failures.with_label_values(&[store]);
            unapplied.with_label_values(&[store]);
        }
        registry.register(Box::new(reload_failures.clone()))?;
        registry.register(Box::new(unapplied.clone()))?;
        registry.register(Box::new(tokens.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(jwks.clone()))?;
        registry.register(Box::new(keys_loaded.clone()))?;
        registry.register(Box::new(clients.clone()))?;
        registry.register(Box::new(keys_broken.clone()))?;
        Ok(Self {
            registry,
            requests,
            jwks,
            keys_loaded,
            keys_broken,
            clients,
            tokens,
            reload_failures,
            unapplied,
            connections_refused,
        })
    }

    /// Counts one finished request. `route` is the matched pattern, never the raw path, so
    /// the series stay bounded whatever clients send.
    pub fn observe_request(&self, route: &str, status: actix_web::http::StatusCode) {
        self.requests
            .with_label_values(&[route, status.as_str()])
            .inc();
    }

    /// Counts one JWKS response.
    pub fn observe_jwks(&self, not_modified: bool) {
        let status = if not_modified { "304" } else { "200" };
        self.jwks.with_label_values(&[status]).inc();
    }

    /// Counts one token request: `Ok(alg)` issued, `Err(error code)` refused.
    pub fn observe_token(&self, outcome: Result<&str, &str>) {
        let labels = match outcome {
            Ok(alg) => ["issued", alg],
            Err(code) => ["refused", code],
        };
        self.tokens.with_label_values(&labels).inc();
    }

    /// Counts one connection closed at once, for `reason`.
    pub fn connection_refused(&self, reason: &str) {
        self.connections_refused.with_label_values(&[reason]).inc();
    }

    /// Counts one failed reload of `store` (`keys` or `clients`); `changed` when the store
    /// holds a change that could not be read.
    pub fn reload_failed(&self, store: &str, changed: bool) {
        self.reload_failures.with_label_values(&[store]).inc();
        if changed {
            self.set_unapplied(store, true);
        }
    }

    /// Sets whether `store` holds a change that could not be read.
    pub fn set_unapplied(&self, store: &str, unread: bool) {
        self.unapplied
            .with_label_values(&[store])
            .set(i64::from(unread));
    }

    /// Sets the clients gauges from a registry.
    pub fn set_clients(&self, registry: &ClientRegistry) {
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.clients
            .with_label_values(&["served"])
            .set(count(registry.len()));
        self.clients
            .with_label_values(&["skipped"])
            .set(count(registry.skipped().len()));
    }

    /// Sets the keys-loaded gauge from a key set.
    pub fn set_keys(&self, keys: &KeySet) {
        self.keys_broken.reset();
        for key in keys.broken() {
            self.keys_broken
                .with_label_values(&[key.alg.as_str()])
                .inc();
        }
        self.keys_loaded.reset();
        for key in keys.keys() {
            self.keys_loaded
                .with_label_values(&[key.alg().as_str()])
                .inc();
        }
    }

    fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Encoding gathered families into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

/// `GET /metrics`: Prometheus text exposition format 0.0.4.
pub async fn metrics(metrics: web::Data<Metrics>) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8"))
        .body(metrics.render())
}
