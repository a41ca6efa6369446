//! [`JwksCache`]: a remote JWKS (or one found through an issuer's discovery document),
//! cached by its `Cache-Control: max-age`, refetched on an unknown kid at most once per
//! cooldown, with one fetch in flight, timeouts, a size limit, and the last good key set
//! kept when the issuer is down or answers garbage, for `max_stale` past its max-age at
//! most (then verification fails closed: a key revoked meanwhile must not stay trusted).
//!
//! Keys come only from the URL configured or discovered: redirects are never followed,
//! only a 200 with a JSON Content-Type is read, and a discovered `jwks_uri` must be https
//! on the issuer's origin (issue 10: an open redirect on the issuer's host, or a tampered
//! discovery document, must not become a way to inject signing keys).

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use super::http::{self, printable};
use super::{KeyRejected, KeyRing, KeySetError, VerifyError, VerifyingKey};

/// How a [`JwksCache`] fetches and keeps keys.
#[derive(Debug, Clone)]
pub struct JwksCacheOptions {
    /// Floor on the server's max-age, so a max-age of 0 does not mean a fetch per token
    /// (default 30 s).
    pub min_max_age: Duration,
    /// Ceiling on the server's max-age, so a new key is seen within this time even if the
    /// server asks for longer caching (default 1 h).
    pub max_max_age: Duration,
    /// Cache lifetime when the response says nothing (default 5 min).
    pub default_max_age: Duration,
    /// Least time between fetches caused by unknown kids or by failures, so random kids
    /// from an attacker or a down issuer cause no fetch storm (default 30 s).
    pub cooldown: Duration,
    /// How long past its max-age the last good key set may still be used while refetches
    /// fail (default 1 h): the `stale-if-error` of RFC 5861 section 4. After it every
    /// key is refused ([`KeySetError::Stale`], 503 in the extractor) until a fetch
    /// succeeds, so a key the issuer revoked is trusted at most max-age (clamped as
    /// above) plus `max_stale` after the last successful fetch, however long the issuer
    /// stays out of reach (or is kept out of reach). An hour rides out an outage twelve
    /// times jwt-issuer's default JWKS max-age of 5 min. `Duration::ZERO`: no grace,
    /// keys stop at the first failed refetch of a stale set; `Duration::MAX`: no limit.
    pub max_stale: Duration,
    /// Timeout of one fetch, connect to last byte (default 5 s).
    pub timeout: Duration,
    /// Largest JWKS response accepted (default 256 KiB).
    pub max_response_bytes: usize,
    /// Accept a discovered `jwks_uri` on another origin (scheme, host, port) than the
    /// issuer's, for issuers that publish their keys on a CDN (default false: such a
    /// document is refused, [`KeySetError::JwksUriRefused`]). The URL must still be https
    /// (http only between loopback hosts) and redirects are still not followed.
    pub allow_foreign_jwks_uri: bool,
}

impl Default for JwksCacheOptions {
    fn default() -> Self {
        Self {
            min_max_age: Duration::from_secs(30),
            max_max_age: Duration::from_secs(3600),
            default_max_age: Duration::from_secs(300),
            cooldown: Duration::from_secs(30),
            max_stale: Duration::from_secs(3600),
            timeout: Duration::from_secs(5),
            max_response_bytes: 256 * 1024,
            allow_foreign_jwks_uri: false,
        }
    }
}

/// A cached remote key set. Share one per issuer (it is `Send + Sync`).
#[derive(Debug)]
pub struct JwksCache {
    jwks_uri: String,
    client: reqwest::Client,
    options: JwksCacheOptions,
    state: RwLock<State>,
    fetching: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct State {
    ring: Option<Arc<KeyRing>>,
    fresh_until: Option<Instant>,
    last_attempt: Option<Instant>,
    last_error: Option<KeySetError>,
}

impl JwksCache {
    /// A cache over `jwks_uri`; nothing is fetched until the first key is needed. The URL
    /// is the caller's choice and used as given; a redirect from it is refused
    /// ([`KeySetError::Redirected`]), never followed.
    ///
    /// # Errors
    /// `KeySetUnavailable` if the HTTP client cannot be built.
    pub fn new(
        jwks_uri: impl Into<String>,
        options: JwksCacheOptions,
    ) -> Result<Self, VerifyError> {
        let client = http::client(options.timeout).map_err(VerifyError::KeySetUnavailable)?;
        Ok(Self {
            jwks_uri: jwks_uri.into(),
            client,
            options,
            state: RwLock::new(State::default()),
            fetching: tokio::sync::Mutex::new(()),
        })
    }

    /// Finds the `jwks_uri` in `issuer`'s `/.well-known/openid-configuration` (falling back
    /// to `/.well-known/oauth-authorization-server`), after checking that the document's
    /// `issuer` is exactly `issuer` (RFC 8414 section 3.3) and that the `jwks_uri` is https
    /// on the issuer's origin. Plain http is accepted only when the issuer itself is http
    /// on a loopback host (127.0.0.0/8, ::1, localhost), for tests and local development;
    /// [`JwksCacheOptions::allow_foreign_jwks_uri`] accepts another origin.
    ///
    /// # Errors
    /// `KeySetUnavailable` when `issuer` is not an http(s) URL ([`KeySetError::Invalid`]),
    /// no document is found, it names another issuer
    /// ([`KeySetError::IssuerMismatch`]), or its `jwks_uri` may not be used
    /// ([`KeySetError::JwksUriRefused`]).
    pub async fn discover(issuer: &str, options: JwksCacheOptions) -> Result<Self, VerifyError> {
        let unavailable = VerifyError::KeySetUnavailable;
        let probe = Self::new("", options)?;
        let (url, doc) =
            http::discovery_document(&probe.client, issuer, probe.options.max_response_bytes)
                .await
                .map_err(unavailable)?;
        let jwks_uri = doc
            .get("jwks_uri")
            .and_then(|v| v.as_str())
            .ok_or_else(|| {
                unavailable(KeySetError::Invalid {
                    url: url.clone(),
                    reason: "no jwks_uri".into(),
                })
            })?;
        if let Some(reason) =
            http::endpoint_refusal(issuer, jwks_uri, probe.options.allow_foreign_jwks_uri)
        {
            return Err(unavailable(KeySetError::JwksUriRefused {
                url,
                jwks_uri: printable(jwks_uri),
                reason,
            }));
        }
        Ok(Self {
            jwks_uri: jwks_uri.to_owned(),
            ..probe
        })
    }

    /// The JWKS URL.
    pub fn jwks_uri(&self) -> &str {
        &self.jwks_uri
    }

    /// The key for `kid`: from the cache while fresh; a stale or missing set is fetched;
    /// an unknown kid triggers a fetch only after the cooldown. When refetches fail the
    /// last good set serves for [`JwksCacheOptions::max_stale`] past its max-age.
    ///
    /// # Errors
    /// `UnknownKey`; `KeySetUnavailable` when no key set was ever fetched, or when the
    /// last good one is stale beyond `max_stale` ([`KeySetError::Stale`]).
    pub async fn key(&self, kid: &str) -> Result<Arc<VerifyingKey>, VerifyError> {
        self.ring_with(Some(kid)).await?.find(kid).cloned()
    }

    /// The whole key set, under the rules of [`JwksCache::key`] (for tokens that name no
    /// kid: a set not fetched yet is fetched, a stale one refetched).
    ///
    /// # Errors
    /// As [`JwksCache::key`].
    pub async fn keys(&self) -> Result<Arc<KeyRing>, VerifyError> {
        self.ring_with(None).await
    }

    /// Fetches the key set again now, unless a fetch was made within the cooldown (a
    /// verifier that cannot tell which key a token needs, having no kid, asks for this).
    pub async fn refresh(&self) {
        let decided = Instant::now();
        let cooled = self
            .read()
            .last_attempt
            .is_none_or(|t| decided.duration_since(t) >= self.options.cooldown);
        if cooled {
            self.fetch(decided).await;
        }
    }

    /// The current key set, fetched first when it is stale, missing, or lacks `kid`.
    async fn ring_with(&self, kid: Option<&str>) -> Result<Arc<KeyRing>, VerifyError> {
        let decided = Instant::now();
        let (fresh, missing, cooled, failed) = {
            let st = self.read();
            (
                st.fresh_until.is_some_and(|t| decided < t),
                st.ring
                    .as_ref()
                    .is_none_or(|r| kid.is_some_and(|kid| r.get(kid).is_none())),
                st.last_attempt
                    .is_none_or(|t| decided.duration_since(t) >= self.options.cooldown),
                st.last_error.is_some(),
            )
        };
        // Fresh: only an unknown kid fetches, at most once per cooldown. Stale: fetch, as
        // max-age says, unless the last attempt failed within the cooldown (then the last
        // good set serves).
        let fetch = if fresh {
            missing && cooled
        } else {
            cooled || !failed
        };
        if fetch {
            self.fetch(decided).await;
        }
        let st = self.read();
        if let Some(stale) = self.too_stale(&st, Instant::now()) {
            return Err(VerifyError::KeySetUnavailable(stale));
        }
        match &st.ring {
            Some(ring) => Ok(ring.clone()),
            None => Err(VerifyError::KeySetUnavailable(
                st.last_error.clone().unwrap_or(KeySetError::NotFetched),
            )),
        }
    }

    /// Why the kept key set may no longer be used at `now`: the last fetch failed and the
    /// set has been stale (past its max-age) for `max_stale` or longer. A fetch that
    /// succeeds clears the error and moves the max-age on, so it starts over.
    fn too_stale(&self, st: &State, now: Instant) -> Option<KeySetError> {
        let last_error = st.last_error.as_ref()?;
        let fresh_until = st.fresh_until?;
        // None: so far off it cannot be reached (`Duration::MAX`, no limit).
        let limit = fresh_until.checked_add(self.options.max_stale)?;
        (now >= limit).then(|| KeySetError::Stale {
            stale_for: now.saturating_duration_since(fresh_until),
            max_stale: self.options.max_stale,
            last_error: Box::new(last_error.clone()),
        })
    }

    /// Fetches now unless another caller fetched since `decided`; a failure keeps the
    /// previous key set.
    async fn fetch(&self, decided: Instant) {
        let _one_in_flight = self.fetching.lock().await;
        if self.read().last_attempt.is_some_and(|t| t >= decided) {
            return;
        }
        let result = self.fetch_ring().await;
        let mut st = self.state.write().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        st.last_attempt = Some(now);
        match result {
            Ok((ring, max_age)) => {
                st.ring = Some(Arc::new(ring));
                st.fresh_until = Some(now + max_age);
                st.last_error = None;
            }
            Err(e) => {
                tracing::warn!(jwks_uri = %self.jwks_uri, error = %e, kept_previous = st.ring.is_some(), "JWKS fetch failed");
                st.last_error = Some(e);
                if let Some(stale) = self.too_stale(&st, now) {
                    tracing::error!(jwks_uri = %self.jwks_uri, error = %stale, "JWKS too stale: no key is trusted until a fetch succeeds");
                }
            }
        }
    }

    async fn fetch_ring(&self) -> Result<(KeyRing, Duration), KeySetError> {
        // Only a 200 with a JSON Content-Type, within the size limit ([`http::read_json`]).
        let (body, max_age) = http::get_json(
            &self.client,
            &self.jwks_uri,
            self.options.max_response_bytes,
        )
        .await?;
        let invalid = |reason: String| KeySetError::Invalid {
            url: self.jwks_uri.clone(),
            reason,
        };
        let ring = KeyRing::from_json(&body).map_err(|e| invalid(e.to_string()))?;
        if ring.is_empty() {
            return Err(invalid(no_usable_key(ring.rejected())));
        }
        if !ring.rejected().is_empty() {
            tracing::debug!(jwks_uri = %self.jwks_uri, skipped = %skipped_keys(ring.rejected()), "JWKS keys skipped");
        }
        let o = &self.options;
        let max_age = max_age
            .unwrap_or(o.default_max_age)
            .clamp(o.min_max_age, o.max_max_age.max(o.min_max_age));
        Ok((ring, max_age))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        // State is replaced field by field under the write lock; a panic cannot leave a
        // half-updated key ring (the ring is swapped as one Arc).
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }
}

/// "no usable signing key" and why the keys were skipped.
fn no_usable_key(rejected: &[KeyRejected]) -> String {
    if rejected.is_empty() {
        "no usable signing key: the set has no keys".to_owned()
    } else {
        format!("no usable signing key: {}", skipped_keys(rejected))
    }
}

/// The reasons keys were skipped, bounded: a hostile set of many keys with long kids
/// makes a message of at most [`SHOWN_REASONS`] reasons of [`http::PRINTABLE_CHARS`] each.
fn skipped_keys(rejected: &[KeyRejected]) -> String {
    let mut text = rejected
        .iter()
        .take(SHOWN_REASONS)
        .map(|r| printable(&r.to_string()))
        .collect::<Vec<_>>()
        .join("; ");
    if rejected.len() > SHOWN_REASONS {
        text.push_str(&format!("; and {} more", rejected.len() - SHOWN_REASONS));
    }
    text
}

/// How many skipped keys an error names.
const SHOWN_REASONS: usize = 5;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_key_set_is_refused_from_max_stale_past_its_max_age_after_a_failure() {
        let cache = |max_stale| {
            JwksCache::new(
                "http://127.0.0.1:1/jwks.json",
                JwksCacheOptions {
                    max_stale,
                    ..JwksCacheOptions::default()
                },
            )
            .unwrap()
        };
        let fresh_until = Instant::now();
        let down = KeySetError::Status {
            url: "http://127.0.0.1:1/jwks.json".into(),
            status: 503,
        };
        let state = |last_error: Option<KeySetError>| State {
            ring: Some(Arc::new(KeyRing::default())),
            fresh_until: Some(fresh_until),
            last_attempt: Some(fresh_until),
            last_error,
        };
        let hour = Duration::from_secs(3600);
        let c = cache(hour);
        let failed = state(Some(down.clone()));
        assert_eq!(c.too_stale(&failed, fresh_until + hour / 2), None);
        assert_eq!(
            c.too_stale(&failed, fresh_until + hour),
            Some(KeySetError::Stale {
                stale_for: hour,
                max_stale: hour,
                last_error: Box::new(down.clone()),
            })
        );
        assert_eq!(
            c.too_stale(&state(None), fresh_until + 2 * hour),
            None,
            "the last fetch succeeded"
        );
        assert_eq!(
            cache(Duration::MAX).too_stale(&failed, fresh_until + 1000 * hour),
            None,
            "no limit, no overflow"
        );
        let text = c
            .too_stale(&failed, fresh_until + hour + Duration::from_millis(1500))
            .unwrap()
            .to_string();
        assert_eq!(
            text,
            "stale for 3601 s (max_stale 3600 s); last fetch error: http://127.0.0.1:1/jwks.json: HTTP 503"
        );
    }

    #[test]
    fn the_reasons_keys_were_skipped_are_bounded() {
        let long = "k".repeat(10_000);
        let rejected: Vec<_> = (0..1000)
            .map(|_| KeyRejected::DuplicateKid { kid: long.clone() })
            .collect();
        let text = no_usable_key(&rejected);
        assert!(text.ends_with("; and 995 more"), "{text}");
        assert!(text.len() < 2000, "{} bytes", text.len());
        assert_eq!(
            no_usable_key(&[]),
            "no usable signing key: the set has no keys"
        );
    }
}
