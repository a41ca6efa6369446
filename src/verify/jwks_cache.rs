//! [`JwksCache`]: a remote JWKS (or one found through an issuer's discovery document),
//! cached by its `Cache-Control: max-age`, refetched on an unknown kid at most once per
//! cooldown, with one fetch in flight, timeouts, a size limit, and the last good key set
//! kept when the issuer is down or answers garbage.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use super::{KeyRing, KeySetError, VerifyError, VerifyingKey};

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
    /// Timeout of one fetch, connect to last byte (default 5 s).
    pub timeout: Duration,
    /// Largest JWKS response accepted (default 256 KiB).
    pub max_response_bytes: usize,
}

impl Default for JwksCacheOptions {
    fn default() -> Self {
        Self {
            min_max_age: Duration::from_secs(30),
            max_max_age: Duration::from_secs(3600),
            default_max_age: Duration::from_secs(300),
            cooldown: Duration::from_secs(30),
            timeout: Duration::from_secs(5),
            max_response_bytes: 256 * 1024,
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
    /// A cache over `jwks_uri`; nothing is fetched until the first key is needed.
    ///
    /// # Errors
    /// `KeySetUnavailable` if the HTTP client cannot be built.
    pub fn new(
        jwks_uri: impl Into<String>,
        options: JwksCacheOptions,
    ) -> Result<Self, VerifyError> {
        let client = reqwest::Client::builder()
            .timeout(options.timeout)
            .user_agent(concat!("jwt-issuer/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| VerifyError::KeySetUnavailable(KeySetError::Client(e.to_string())))?;
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
    /// `issuer` is exactly `issuer` (RFC 8414 section 3.3).
    ///
    /// # Errors
    /// `KeySetUnavailable` when no document is found or it names another issuer.
    pub async fn discover(issuer: &str, options: JwksCacheOptions) -> Result<Self, VerifyError> {
        let unavailable = VerifyError::KeySetUnavailable;
        let probe = Self::new("", options)?;
        let base = issuer.trim_end_matches('/');
        let mut last_error = KeySetError::NotFetched;
        for path in [
            "/.well-known/openid-configuration",
            "/.well-known/oauth-authorization-server",
        ] {
            let url = format!("{base}{path}");
            match probe.get_limited(&url).await {
                Ok((body, _)) => {
                    let invalid = |reason: String| {
                        unavailable(KeySetError::Invalid {
                            url: url.clone(),
                            reason,
                        })
                    };
                    let doc: serde_json::Value = serde_json::from_slice(&body)
                        .map_err(|e| invalid(format!("not JSON: {e}")))?;
                    let published = doc.get("issuer").and_then(|v| v.as_str());
                    if published != Some(issuer) {
                        return Err(unavailable(KeySetError::IssuerMismatch {
                            url,
                            expected: issuer.to_owned(),
                            published: published.unwrap_or_default().chars().take(256).collect(),
                        }));
                    }
                    let jwks_uri = doc
                        .get("jwks_uri")
                        .and_then(|v| v.as_str())
                        .ok_or_else(|| invalid("no jwks_uri".into()))?;
                    return Ok(Self {
                        jwks_uri: jwks_uri.to_owned(),
                        ..probe
                    });
                }
                Err(e) => last_error = e,
            }
        }
        Err(unavailable(last_error))
    }

    /// The JWKS URL.
    pub fn jwks_uri(&self) -> &str {
        &self.jwks_uri
    }

    /// The key for `kid`: from the cache while fresh; a stale or missing set is fetched;
    /// an unknown kid triggers a fetch only after the cooldown.
    ///
    /// # Errors
    /// `UnknownKey`, or `KeySetUnavailable` when no key set was ever fetched.
    pub async fn key(&self, kid: &str) -> Result<Arc<VerifyingKey>, VerifyError> {
        let decided = Instant::now();
        let (fresh, missing, cooled, failed) = {
            let st = self.read();
            (
                st.fresh_until.is_some_and(|t| decided < t),
                st.ring.as_ref().is_none_or(|r| r.get(kid).is_none()),
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
        match &st.ring {
            Some(ring) => ring.get(kid).cloned().ok_or(VerifyError::UnknownKey),
            None => Err(VerifyError::KeySetUnavailable(
                st.last_error.clone().unwrap_or(KeySetError::NotFetched),
            )),
        }
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
            }
        }
    }

    async fn fetch_ring(&self) -> Result<(KeyRing, Duration), KeySetError> {
        let (body, max_age) = self.get_limited(&self.jwks_uri).await?;
        let invalid = |reason: String| KeySetError::Invalid {
            url: self.jwks_uri.clone(),
            reason,
        };
        let ring = KeyRing::from_json(&body).map_err(|e| invalid(e.to_string()))?;
        if ring.is_empty() {
            return Err(invalid("no usable signing key".into()));
        }
        let o = &self.options;
        let max_age = max_age
            .unwrap_or(o.default_max_age)
            .clamp(o.min_max_age, o.max_max_age.max(o.min_max_age));
        Ok((ring, max_age))
    }

    /// GET with the size limit; returns the body and the response's max-age.
    async fn get_limited(&self, url: &str) -> Result<(Vec<u8>, Option<Duration>), KeySetError> {
        let limit = self.options.max_response_bytes;
        let failed = |e: reqwest::Error| {
            if e.is_timeout() {
                KeySetError::Timeout {
                    url: url.to_owned(),
                }
            } else {
                KeySetError::Unreachable {
                    url: url.to_owned(),
                    reason: e.to_string(),
                }
            }
        };
        let too_large = || KeySetError::TooLarge {
            url: url.to_owned(),
            limit,
        };
        let mut res = self.client.get(url).send().await.map_err(failed)?;
        if !res.status().is_success() {
            return Err(KeySetError::Status {
                url: url.to_owned(),
                status: res.status().as_u16(),
            });
        }
        if res.content_length().is_some_and(|len| len > limit as u64) {
            return Err(too_large());
        }
        let max_age = res
            .headers()
            .get(reqwest::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_max_age);
        let mut body = Vec::new();
        while let Some(chunk) = res.chunk().await.map_err(failed)? {
            if body.len() + chunk.len() > limit {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok((body, max_age))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        // State is replaced field by field under the write lock; a panic cannot leave a
        // half-updated key ring (the ring is swapped as one Arc).
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }
}

/// `max-age=N` from a Cache-Control value; `no-store`/`no-cache` count as 0.
fn parse_max_age(value: &str) -> Option<Duration> {
    let mut max_age = None;
    for directive in value.split(',').map(str::trim) {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-store" || lower == "no-cache" {
            return Some(Duration::ZERO);
        }
        if let Some(n) = lower.strip_prefix("max-age=") {
            max_age = n.trim_matches('"').parse().ok().map(Duration::from_secs);
        }
    }
    max_age
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_parsing() {
        assert_eq!(
            parse_max_age("public, max-age=300"),
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            parse_max_age("max-age=\"60\""),
            Some(Duration::from_secs(60))
        );
        assert_eq!(parse_max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(parse_max_age("public"), None);
        assert_eq!(parse_max_age("max-age=abc"), None);
    }
}
