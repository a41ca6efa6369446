//! Prometheus metrics (`jwt_issuer_*`) and the `GET /metrics` handler.
//!
//! Every label value is bounded and chosen by the server, never copied from a request:
//! routes from a fixed list, statuses, algorithms, OAuth error codes, store names, the
//! kids of published keys and the ids of registered clients that authenticated. Times are
//! Unix timestamps in seconds (`*_timestamp_seconds`), the Prometheus convention: an alert
//! computes an age as `time() - x`, and the series need no update while nothing happens.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::http::header::CONTENT_TYPE;
use actix_web::{HttpResponse, web};
use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::oauth::ClientRegistry;
use crate::{KeySet, SigningAlg};

/// Upper bounds of the request duration buckets, in seconds: from 100 µs (a JWKS or
/// discovery answer from memory) through the milliseconds of a token (an RSA signature,
/// a secret hash) to 1 s, far past any healthy answer (slower ones are slow clients or an
/// overloaded host, and land in `+Inf`).
pub const DURATION_BUCKETS: [f64; 13] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// The stores the server reloads, as the `store` label names them.
const STORES: [&str; 2] = ["keys", "clients"];

/// The service's counters, in a registry of their own (one per server, so several servers
/// in one process do not mix their figures).
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Held while a family is rebuilt (reset, then filled) and while the registry is
    /// gathered, so a scrape never sees a key set half updated (no active key for an
    /// instant would fire the key alerts).
    rebuild: Arc<Mutex<()>>,
    requests: IntCounterVec,
    request_duration: HistogramVec,
    issued: IntCounterVec,
    reloads: IntCounterVec,
    last_reload: GaugeVec,
    key_state: IntGaugeVec,
    key_created: GaugeVec,
    key_activated: GaugeVec,
    rotation_period: Gauge,
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
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "jwt_issuer_http_request_duration_seconds",
                "Time from a request's arrival to its response head, by route and status",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["route", "status"],
        )?;
        let issued = IntCounterVec::new(
            Opts::new(
                "jwt_issuer_tokens_issued_total",
                "Tokens issued, by client, algorithm and signing key. Series: registered \
                 clients that got a token times the keys that signed one and are still \
                 published (series of removed keys and clients are dropped)",
            ),
            &["client_id", "alg", "kid"],
        )?;
        let reloads = IntCounterVec::new(
            Opts::new(
                "jwt_issuer_reloads_total",
                "Reloads of the key store or the client registry (on a change, a schedule, \
                 SIGHUP or a retry): changed (what is served changed), unchanged, failed",
            ),
            &["store", "outcome"],
        )?;
        let last_reload = GaugeVec::new(
            Opts::new(
                "jwt_issuer_last_successful_reload_timestamp_seconds",
                "When the server last knew it serves the store's current content (a reload \
                 that succeeded, or a check that found nothing to reload; checks run every \
                 second), as a Unix time. time() - this grows while reloads fail or stall",
            ),
            &["store"],
        )?;
        let key_state = IntGaugeVec::new(
            Opts::new(
                "jwt_issuer_key_state",
                "1 for each published key that loads, labelled with its state in the \
                 manifest (next, active, retired); one series per key",
            ),
            &["kid", "alg", "state"],
        )?;
        let key_created = GaugeVec::new(
            Opts::new(
                "jwt_issuer_key_created_timestamp_seconds",
                "When each published key was created or imported, as a Unix time",
            ),
            &["kid", "alg"],
        )?;
        let key_activated = GaugeVec::new(
            Opts::new(
                "jwt_issuer_key_activated_timestamp_seconds",
                "When each published key started signing, as a Unix time (keys that have \
                 signed: active and retired)",
            ),
            &["kid", "alg"],
        )?;
        let rotation_period = Gauge::with_opts(Opts::new(
            "jwt_issuer_key_rotation_period_seconds",
            "The automatic rotation period (--rotate-every); 0 when keys rotate only by hand",
        ))?;
        connections_refused.with_label_values(&["per_address"]);
        registry.register(Box::new(connections_refused.clone()))?;
        for store in STORES {
            reload_failures.with_label_values(&[store]);
            unapplied.with_label_values(&[store]);
            for outcome in ["changed", "unchanged", "failed"] {
                reloads.with_label_values(&[store, outcome]);
            }
        }
        registry.register(Box::new(request_duration.clone()))?;
        registry.register(Box::new(issued.clone()))?;
        registry.register(Box::new(reloads.clone()))?;
        registry.register(Box::new(last_reload.clone()))?;
        registry.register(Box::new(key_state.clone()))?;
        registry.register(Box::new(key_created.clone()))?;
        registry.register(Box::new(key_activated.clone()))?;
        registry.register(Box::new(rotation_period.clone()))?;
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
            rebuild: Arc::new(Mutex::new(())),
            requests,
            request_duration,
            issued,
            reloads,
            last_reload,
            key_state,
            key_created,
            key_activated,
            rotation_period,
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

    /// Times one finished request, labelled as [`Metrics::observe_request`] counts it;
    /// `elapsed` runs from its arrival to its response head.
    pub fn observe_duration(
        &self,
        route: &str,
        status: actix_web::http::StatusCode,
        elapsed: Duration,
    ) {
        self.request_duration
            .with_label_values(&[route, status.as_str()])
            .observe(elapsed.as_secs_f64());
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

    /// Counts one token issued to `client_id`, which must be the id of the registered
    /// client that authenticated (never an id as the request spelled it: the series stay
    /// bounded by the registry), signed with the key `kid`.
    pub fn observe_issued(&self, client_id: &str, alg: SigningAlg, kid: &str) {
        self.issued
            .with_label_values(&[client_id, alg.as_str(), kid])
            .inc();
    }

    /// Counts one connection closed at once, for `reason`.
    pub fn connection_refused(&self, reason: &str) {
        self.connections_refused.with_label_values(&[reason]).inc();
    }

    /// Counts one failed reload of `store` (`keys` or `clients`); `changed` when the store
    /// holds a change that could not be read.
    pub fn reload_failed(&self, store: &str, changed: bool) {
        self.reload_failures.with_label_values(&[store]).inc();
        self.reloads.with_label_values(&[store, "failed"]).inc();
        if changed {
            self.set_unapplied(store, true);
        }
    }

    /// Counts one successful reload of `store`; `changed` when what is served changed.
    pub fn reload_succeeded(&self, store: &str, changed: bool) {
        let outcome = if changed { "changed" } else { "unchanged" };
        self.reloads.with_label_values(&[store, outcome]).inc();
        self.store_current(store);
    }

    /// Records that the server serves what `store` holds now (loaded at start, reloaded,
    /// or checked and found unchanged).
    pub fn store_current(&self, store: &str) {
        self.last_reload
            .with_label_values(&[store])
            .set(unix_seconds(crate::time::now_ms()));
    }

    /// Sets the automatic rotation period (`None`: keys rotate only by hand).
    pub fn set_rotation_period(&self, every: Option<Duration>) {
        self.rotation_period
            .set(every.map_or(0.0, |d| d.as_secs_f64()));
    }

    /// Sets whether `store` holds a change that could not be read.
    pub fn set_unapplied(&self, store: &str, unread: bool) {
        self.unapplied
            .with_label_values(&[store])
            .set(i64::from(unread));
    }

    /// Sets the clients gauges from a registry, and drops the issued-token series of
    /// clients it no longer serves.
    pub fn set_clients(&self, registry: &ClientRegistry) {
        let _rebuilding = self.rebuild.lock().unwrap_or_else(|p| p.into_inner());
        self.drop_issued(|client_id, _, _| registry.get(client_id).is_none());
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.clients
            .with_label_values(&["served"])
            .set(count(registry.len()));
        self.clients
            .with_label_values(&["skipped"])
            .set(count(registry.skipped().len()));
    }

    /// Sets the key gauges from a key set (each key's state and times; keys no longer
    /// published lose their series), and drops the issued-token series of keys that left
    /// the set.
    pub fn set_keys(&self, keys: &KeySet) {
        let _rebuilding = self.rebuild.lock().unwrap_or_else(|p| p.into_inner());
        self.key_state.reset();
        self.key_created.reset();
        self.key_activated.reset();
        for key in keys.keys() {
            let (kid, alg) = (key.kid(), key.alg().as_str());
            let Some(record) = keys.manifest().get(kid) else {
                continue;
            };
            self.key_state
                .with_label_values(&[kid, alg, record.state.as_str()])
                .set(1);
            self.key_created
                .with_label_values(&[kid, alg])
                .set(unix_seconds(record.created));
            if let Some(activated) = record.activated {
                self.key_activated
                    .with_label_values(&[kid, alg])
                    .set(unix_seconds(activated));
            }
        }
        // The HS256 key is the configured secret, never in the key set: its series stay.
        let hs256 = SigningAlg::Hs256.as_str();
        self.drop_issued(|_, alg, kid| alg != hs256 && keys.find(kid).is_none());
        self.keys_broken.reset();
        self.keys_loaded.reset();
        // Zero rather than absent for every algorithm, so a rule compares without `absent()`.
        for alg in SigningAlg::ASYMMETRIC {
            self.keys_broken.with_label_values(&[alg.as_str()]).set(0);
            self.keys_loaded.with_label_values(&[alg.as_str()]).set(0);
        }
        for key in keys.broken() {
            self.keys_broken
                .with_label_values(&[key.alg.as_str()])
                .inc();
        }
        for key in keys.keys() {
            self.keys_loaded
                .with_label_values(&[key.alg().as_str()])
                .inc();
        }
    }

    fn render(&self) -> Vec<u8> {
        let families = {
            let _rebuilding = self.rebuild.lock().unwrap_or_else(|p| p.into_inner());
            self.registry.gather()
        };
        let mut out = Vec::new();
        // Encoding gathered families into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&families, &mut out);
        out
    }

    /// Removes the issued-token series whose (client_id, alg, kid) `gone` holds for.
    fn drop_issued(&self, gone: impl Fn(&str, &str, &str) -> bool) {
        let label = |pairs: &[prometheus::proto::LabelPair], name: &str| {
            pairs
                .iter()
                .find(|p| p.name() == name)
                .map(|p| p.value().to_owned())
                .unwrap_or_default()
        };
        let mut stale = Vec::new();
        for family in self.issued.collect() {
            for metric in family.get_metric() {
                let pairs = metric.get_label();
                let labels = ["client_id", "alg", "kid"].map(|name| label(pairs, name));
                if gone(&labels[0], &labels[1], &labels[2]) {
                    stale.push(labels);
                }
            }
        }
        for labels in stale {
            // A series gathered a moment ago: only a concurrent removal makes this fail.
            let _ = self.issued.remove_label_values(&labels);
        }
    }
}

/// Milliseconds since the Unix epoch as seconds, the unit of Prometheus timestamps.
fn unix_seconds(ms: crate::keys::Millis) -> f64 {
    // Exact: milliseconds since 1970 stay far below 2^53.
    ms as f64 / 1000.0
}

/// `GET /metrics`: Prometheus text exposition format 0.0.4.
pub async fn metrics(metrics: web::Data<Metrics>) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8"))
        .body(metrics.render())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::jwks::{Jwk, PublicKeyParams};
    use crate::keys::lifecycle::{KeyRecord, KeyState, Manifest};
    use crate::keys::{SignatureBackend, SignatureFailed, SigningKey};

    /// Metrics only read a key's kid and alg.
    struct NeverSigns;

    impl SignatureBackend for NeverSigns {
        fn sign(&self, _: &[u8]) -> Result<Vec<u8>, SignatureFailed> {
            Err(SignatureFailed("not in this test".into()))
        }
    }

    fn key(seed: u8) -> Arc<SigningKey> {
        Arc::new(SigningKey::from_backend(
            Jwk::new(
                PublicKeyParams::p256(&[seed; 32], &[seed; 32]),
                SigningAlg::Es256,
            ),
            format!("test:{seed}"),
            Box::new(NeverSigns),
        ))
    }

    fn set(keys: &[(&Arc<SigningKey>, KeyState)]) -> KeySet {
        let manifest = Manifest {
            version: Manifest::VERSION,
            keys: keys
                .iter()
                .map(|(k, state)| KeyRecord::new(k.kid().to_owned(), k.alg(), *state, 5_000))
                .collect(),
        };
        KeySet::new(
            keys.iter().map(|(k, _)| Arc::clone(k)).collect(),
            manifest,
            0,
        )
    }

    fn text(metrics: &Metrics) -> String {
        String::from_utf8(metrics.render()).unwrap()
    }

    #[test]
    fn key_series_follow_the_key_set_and_removed_keys_disappear() {
        let metrics = Metrics::new().unwrap();
        let (a, b) = (key(1), key(2));
        metrics.set_keys(&set(&[(&a, KeyState::Active), (&b, KeyState::Next)]));
        metrics.observe_issued("svc", SigningAlg::Es256, a.kid());
        metrics.observe_issued("svc", SigningAlg::Hs256, "hmac-kid");
        let before = text(&metrics);
        for line in [
            format!(
                r#"jwt_issuer_key_state{{alg="ES256",kid="{}",state="active"}} 1"#,
                a.kid()
            ),
            format!(
                r#"jwt_issuer_key_state{{alg="ES256",kid="{}",state="next"}} 1"#,
                b.kid()
            ),
            format!(
                r#"jwt_issuer_key_created_timestamp_seconds{{alg="ES256",kid="{}"}} 5"#,
                b.kid()
            ),
            format!(
                r#"jwt_issuer_key_activated_timestamp_seconds{{alg="ES256",kid="{}"}} 5"#,
                a.kid()
            ),
            format!(
                r#"jwt_issuer_tokens_issued_total{{alg="ES256",client_id="svc",kid="{}"}} 1"#,
                a.kid()
            ),
        ] {
            assert!(before.lines().any(|l| l == line), "no {line} in\n{before}");
        }
        assert!(
            !before.contains(&format!(
                r#"jwt_issuer_key_activated_timestamp_seconds{{alg="ES256",kid="{}"}}"#,
                b.kid()
            )),
            "a next key never signed: {before}"
        );

        // `a` is gone (removed or revoked): no series names it any more.
        metrics.set_keys(&set(&[(&b, KeyState::Active)]));
        let after = text(&metrics);
        assert!(!after.contains(a.kid()), "{after}");
        let line = format!(
            r#"jwt_issuer_key_state{{alg="ES256",kid="{}",state="active"}} 1"#,
            b.kid()
        );
        assert!(after.lines().any(|l| l == line), "{after}");
        assert!(!after.contains("state=\"next\""), "{after}");
        assert!(
            after.contains(
                r#"jwt_issuer_tokens_issued_total{alg="HS256",client_id="svc",kid="hmac-kid"} 1"#
            ),
            "the HS256 key is never in the key set: {after}"
        );
    }

    #[test]
    fn issued_series_of_clients_no_longer_served_are_dropped() {
        let metrics = Metrics::new().unwrap();
        metrics.observe_issued("gone", SigningAlg::Es256, "k1");
        assert!(text(&metrics).contains("client_id=\"gone\""));
        metrics.set_clients(&ClientRegistry::default());
        assert!(!text(&metrics).contains("client_id=\"gone\""));
    }

    #[test]
    fn every_reload_outcome_and_store_has_a_series_from_the_start() {
        let metrics = Metrics::new().unwrap();
        metrics.reload_succeeded("keys", true);
        metrics.reload_failed("clients", false);
        let text = text(&metrics);
        for line in [
            r#"jwt_issuer_reloads_total{outcome="changed",store="keys"} 1"#,
            r#"jwt_issuer_reloads_total{outcome="unchanged",store="keys"} 0"#,
            r#"jwt_issuer_reloads_total{outcome="failed",store="keys"} 0"#,
            r#"jwt_issuer_reloads_total{outcome="failed",store="clients"} 1"#,
            r#"jwt_issuer_reload_failures_total{store="clients"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "no {line} in\n{text}");
        }
        assert!(
            text.contains("jwt_issuer_last_successful_reload_timestamp_seconds{store=\"keys\"}")
        );
        assert!(
            !text
                .contains("jwt_issuer_last_successful_reload_timestamp_seconds{store=\"clients\"}")
        );
    }

    #[test]
    fn durations_fall_into_the_buckets_of_their_route_and_status() {
        let metrics = Metrics::new().unwrap();
        let ok = actix_web::http::StatusCode::OK;
        metrics.observe_duration("/healthz", ok, Duration::from_micros(300));
        let text = text(&metrics);
        let prefix =
            r#"jwt_issuer_http_request_duration_seconds_bucket{route="/healthz",status="200","#;
        for (le, count) in [("0.00025", 0), ("0.0005", 1), ("1", 1), ("+Inf", 1)] {
            let line = format!(r#"{prefix}le="{le}"}} {count}"#);
            assert!(text.lines().any(|l| l == line), "no {line} in\n{text}");
        }
        assert!(text.contains(
            r#"jwt_issuer_http_request_duration_seconds_count{route="/healthz",status="200"} 1"#
        ));
    }
}
