//! [`Introspection`]: asks the issuer whether a token is still active (RFC 7662), for the
//! routes where a revoked token must stop working now rather than at its `exp`.
//!
//! A verified token costs at most one request per cache period: `active: true` is kept for
//! [`IntrospectionOptions::active_ttl`] but never past the token's `exp`; `active: false` is
//! kept until the token could no longer pass local verification at all, since a revoked or
//! expired token never becomes active again. The cache is keyed by a SHA-256 of the whole
//! token (never the token), bounded, and evicts its oldest entry when full. Concurrent
//! checks of one token share one request.
//!
//! Every failure is an error, never `true`: no answer, a timeout, a redirect (not
//! followed), a status other than 200, an answer that is not JSON, too large, or without a
//! boolean `active`, and a 401 (this service's own credentials refused). Requests follow
//! the rules of the key set fetches (no redirects, timeout, size limit, JSON only).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use reqwest::header::{self, HeaderValue};
use tokio::sync::OnceCell;
use zeroize::Zeroizing;

use super::http::{self, printable};
use super::jws::{TokenHash, token_hash};
use super::{DEFAULT_LEEWAY, IntrospectionError, KeySetError, VerifyError};
use crate::secret::ClientSecret;
use crate::sync::lock;

/// How an [`Introspection`] asks and caches.
#[derive(Debug, Clone)]
pub struct IntrospectionOptions {
    /// Timeout of one request, connect to last byte (default 2 s): a protected request
    /// waits at most this long for the issuer, then fails closed.
    pub timeout: Duration,
    /// How long an `active: true` answer is kept (default 30 s), never past the token's
    /// `exp`: a token revoked meanwhile is still accepted for at most this long.
    /// `Duration::ZERO` asks for every request.
    pub active_ttl: Duration,
    /// Most answers kept (default 10,000); when full, the oldest is dropped. 0 keeps none.
    pub max_entries: usize,
    /// Largest answer accepted (default 64 KiB; an answer holds one token's claims).
    pub max_response_bytes: usize,
    /// After a failed request, how long checks that need a request fail at once instead of
    /// sending one (default 1 s), so a down endpoint is not asked once per protected
    /// request and callers do not each wait out the timeout. `Duration::ZERO`: no cooldown.
    pub failure_cooldown: Duration,
}

impl Default for IntrospectionOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(2),
            active_ttl: Duration::from_secs(30),
            max_entries: 10_000,
            max_response_bytes: 64 * 1024,
            failure_cooldown: Duration::from_secs(1),
        }
    }
}

/// What an [`Introspection`] has done since it was built ([`Introspection::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct IntrospectionStats {
    /// Checks answered from the cache.
    pub hits: u64,
    /// Checks that needed an answer from the issuer (those that shared another check's
    /// request included).
    pub misses: u64,
    /// Requests sent.
    pub requests: u64,
    /// Requests that failed (no answer, or one that is not an answer), and checks refused
    /// within the failure cooldown.
    pub failures: u64,
    /// Answers in the cache now (expired ones included until they are looked up or evicted).
    pub entries: usize,
}

/// The issuer's token introspection endpoint (RFC 7662), asked with this service's client
/// credentials, its answers cached. `Send + Sync`: share one per issuer (in an `Arc`), and
/// give it to the [`Verifier`](super::Verifier)s of the routes that must refuse revoked
/// tokens ([`Verifier::with_introspection`](super::Verifier::with_introspection)).
///
/// ```no_run
/// use std::sync::Arc;
/// use jwt_issuer::secret::ClientSecret;
/// use jwt_issuer::verify::{Introspection, JwksCache, Validation, Verifier};
/// # async fn run(token: &str) -> Result<(), Box<dyn std::error::Error>> {
/// let issuer = "https://auth.example.com";
/// let secret = ClientSecret::new(std::env::var("INTROSPECTION_CLIENT_SECRET")?);
/// let introspection =
///     Introspection::discover(issuer, "orders-api", secret, Default::default()).await?;
/// let keys = JwksCache::discover(issuer, Default::default()).await?;
/// let strict = Verifier::remote(keys, Validation::new(issuer, ["orders-api"]))
///     .with_introspection(Arc::new(introspection));
/// let claims: serde_json::Value = strict.verify(token).await?; // NotActive once revoked
/// # Ok(()) }
/// ```
pub struct Introspection {
    endpoint: String,
    client_id: String,
    client_secret: ClientSecret,
    client: reqwest::Client,
    options: IntrospectionOptions,
    cache: Mutex<Cache>,
    in_flight: Mutex<HashMap<TokenHash, Arc<Answer>>>,
    last_failure: Mutex<Option<(Instant, IntrospectionError)>>,
    hits: AtomicU64,
    misses: AtomicU64,
    requests: AtomicU64,
    failures: AtomicU64,
}

impl Introspection {
    /// Introspection at `endpoint` (`{issuer}/oauth2/introspect` for jwt-issuer),
    /// authenticated as `client_id` with `client_secret` (HTTP Basic, RFC 6749 section
    /// 2.3.1). The URL is the caller's choice and used as given (use https: it receives the
    /// secret and the tokens); a redirect from it is refused, never followed. Nothing is
    /// sent until the first check.
    ///
    /// # Errors
    /// `IntrospectionUnavailable` if the HTTP client cannot be built.
    pub fn new(
        endpoint: impl Into<String>,
        client_id: impl Into<String>,
        client_secret: ClientSecret,
        options: IntrospectionOptions,
    ) -> Result<Self, VerifyError> {
        let client = http::client(options.timeout).map_err(|e| unavailable(e.into()))?;
        Ok(Self {
            endpoint: endpoint.into(),
            client_id: client_id.into(),
            client_secret,
            client,
            options,
            cache: Mutex::default(),
            in_flight: Mutex::default(),
            last_failure: Mutex::default(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        })
    }

    /// Finds the `introspection_endpoint` in `issuer`'s discovery document, as
    /// [`JwksCache::discover`](super::JwksCache::discover) finds the `jwks_uri`: the
    /// document's `issuer` must be exactly `issuer`, and the endpoint https on the issuer's
    /// origin (plain http only when the issuer is http on a loopback host). No other origin
    /// is accepted: the endpoint receives the client secret.
    ///
    /// # Errors
    /// `IntrospectionUnavailable` when `issuer` is not an http(s) URL, no document is found,
    /// it names another issuer or no `introspection_endpoint`
    /// ([`IntrospectionError::Fetch`]), or the endpoint may not be used
    /// ([`IntrospectionError::EndpointRefused`]).
    pub async fn discover(
        issuer: &str,
        client_id: impl Into<String>,
        client_secret: ClientSecret,
        options: IntrospectionOptions,
    ) -> Result<Self, VerifyError> {
        let probe = Self::new("", client_id, client_secret, options)?;
        let (url, doc) =
            http::discovery_document(&probe.client, issuer, probe.options.max_response_bytes)
                .await
                .map_err(|e| unavailable(e.into()))?;
        let endpoint = doc
            .get("introspection_endpoint")
            .and_then(|v| v.as_str())
            .ok_or_else(|| {
                unavailable(
                    KeySetError::Invalid {
                        url: url.clone(),
                        reason: "no introspection_endpoint".into(),
                    }
                    .into(),
                )
            })?;
        if let Some(reason) = http::endpoint_refusal(issuer, endpoint, false) {
            return Err(unavailable(IntrospectionError::EndpointRefused {
                url,
                endpoint: printable(endpoint),
                reason,
            }));
        }
        Ok(Self {
            endpoint: endpoint.to_owned(),
            ..probe
        })
    }

    /// The endpoint URL.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Whether the issuer holds `token` active: from the cache, or asked (one request for
    /// all concurrent checks of the token). `exp` is the token's `exp` (from its verified
    /// claims; `u64::MAX` if it has none): an `active: true` answer is kept for
    /// [`IntrospectionOptions::active_ttl`] but not past it; an `active: false` answer until
    /// [`DEFAULT_LEEWAY`] past it (a [`Verifier`](super::Verifier) passes its own leeway).
    ///
    /// Check only tokens that verified locally: this does not verify the token, and a
    /// request per forged token would let anyone load the issuer.
    ///
    /// # Errors
    /// `IntrospectionUnavailable` whenever there is no answer (the source says why); never
    /// `Ok(true)` without an `active: true` from the endpoint.
    pub async fn is_active(&self, token: &str, exp: u64) -> Result<bool, VerifyError> {
        self.check(token, exp, DEFAULT_LEEWAY)
            .await
            .map_err(unavailable)
    }

    /// The counters and the cache size.
    pub fn stats(&self) -> IntrospectionStats {
        IntrospectionStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            entries: lock(&self.cache).entries.len(),
        }
    }

    /// [`Introspection::is_active`] for a verifier that accepts tokens up to `leeway` past
    /// their `exp`: a negative answer is kept that long past it.
    pub(super) async fn check(
        &self,
        token: &str,
        exp: u64,
        leeway: Duration,
    ) -> Result<bool, IntrospectionError> {
        let key = token_hash(token);
        if let Some(active) = self.cached(&key) {
            return Ok(active);
        }
        let answer = {
            let mut in_flight = lock(&self.in_flight);
            // Again under the in-flight lock: a request that ended since the look-up above
            // stored its answer before it left the in-flight map, so it is found here and
            // not asked for again.
            if let Some(active) = self.cached(&key) {
                return Ok(active);
            }
            in_flight.entry(key).or_default().clone()
        };
        self.misses.fetch_add(1, Ordering::Relaxed);
        let shared = Shared {
            in_flight: &self.in_flight,
            key,
            answer,
        };
        // If the check that sends the request is dropped (its HTTP client went away),
        // a waiting one sends it instead (OnceCell's contract).
        shared
            .answer
            .get_or_init(|| self.ask(token, key, exp, leeway))
            .await
            .clone()
    }

    fn cached(&self, key: &TokenHash) -> Option<bool> {
        let active = lock(&self.cache).get(key, Instant::now())?;
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(active)
    }

    /// Asks the endpoint (unless within the failure cooldown) and caches the answer.
    async fn ask(
        &self,
        token: &str,
        key: TokenHash,
        exp: u64,
        leeway: Duration,
    ) -> Result<bool, IntrospectionError> {
        if let Some(last) = self.cooling_down() {
            self.failures.fetch_add(1, Ordering::Relaxed);
            return Err(IntrospectionError::CoolingDown(Box::new(last)));
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        match self.request(token).await {
            Ok(active) => {
                *lock(&self.last_failure) = None;
                let hold = if active {
                    self.options.active_ttl.min(until(exp))
                } else {
                    // Until the token could not pass local verification any more: within
                    // that time, asking again could only undo a revocation (a replica
                    // that has not seen it yet, an issuer's clock behind ours).
                    until(exp.saturating_add(leeway.as_secs()))
                };
                if !hold.is_zero() {
                    let now = Instant::now();
                    lock(&self.cache).insert(
                        key,
                        active,
                        now.checked_add(hold),
                        now,
                        self.options.max_entries,
                    );
                }
                Ok(active)
            }
            Err(e) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(endpoint = %self.endpoint, error = %e, "token introspection failed");
                *lock(&self.last_failure) = Some((Instant::now(), e.clone()));
                Err(e)
            }
        }
    }

    /// The last failure, if it happened within the cooldown.
    fn cooling_down(&self) -> Option<IntrospectionError> {
        let last = lock(&self.last_failure);
        let (at, error) = last.as_ref()?;
        (at.elapsed() < self.options.failure_cooldown).then(|| error.clone())
    }

    /// One RFC 7662 request: `active` from a 200 JSON answer, anything else an error.
    async fn request(&self, token: &str) -> Result<bool, IntrospectionError> {
        let url = &self.endpoint;
        // RFC 7662 section 2.1; a JWS is base64url and dots, encoded anyway.
        let body = format!(
            "token={}&token_type_hint=access_token",
            form_urlencode(token)
        );
        let res = self
            .client
            .post(url)
            .header(header::AUTHORIZATION, self.authorization()?)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| http::request_failed(url, e))?;
        let (body, _) = http::read_json(url, res, self.options.max_response_bytes)
            .await
            .map_err(|e| match e {
                KeySetError::Status { status: 401, url } => {
                    IntrospectionError::ClientRefused { url }
                }
                e => e.into(),
            })?;
        let invalid = |reason: String| KeySetError::Invalid {
            url: url.clone(),
            reason,
        };
        let answer: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| invalid(format!("not JSON: {e}")))?;
        // RFC 7662 section 2.2: `active` is REQUIRED and a boolean; `"true"`, 1 or a
        // missing member are not an answer.
        match answer.get("active") {
            Some(serde_json::Value::Bool(active)) => Ok(*active),
            _ => Err(invalid("no boolean \"active\" member".into()).into()),
        }
    }

    /// `Basic base64(urlencode(id) ":" urlencode(secret))` (RFC 6749 section 2.3.1), marked
    /// sensitive so that it is not shown in the HTTP client's debug output. The copies
    /// made here are wiped; the one the HTTP client keeps is not in our hands.
    fn authorization(&self) -> Result<HeaderValue, IntrospectionError> {
        let id = form_urlencode(&self.client_id);
        let secret = Zeroizing::new(form_urlencode(self.client_secret.expose_secret()));
        let mut pair = Zeroizing::new(String::with_capacity(id.len() + 1 + secret.len()));
        pair.push_str(&id);
        pair.push(':');
        pair.push_str(&secret);
        let encoded_len = base64::encoded_len(pair.len(), true).unwrap_or(0);
        let mut basic = Zeroizing::new(String::with_capacity("Basic ".len() + encoded_len));
        basic.push_str("Basic ");
        STANDARD.encode_string(pair.as_bytes(), &mut basic);
        let mut value = HeaderValue::from_str(&basic)
            .map_err(|e| IntrospectionError::Fetch(KeySetError::Client(e.to_string())))?;
        value.set_sensitive(true);
        Ok(value)
    }
}

impl fmt::Debug for Introspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Introspection")
            .field("endpoint", &self.endpoint)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret)
            .field("options", &self.options)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// The answer of one request, shared by the checks of one token while it is in flight.
type Answer = OnceCell<Result<bool, IntrospectionError>>;

fn unavailable(e: IntrospectionError) -> VerifyError {
    VerifyError::IntrospectionUnavailable(e)
}

/// The time from now until the Unix time `t` (zero once it has passed; `Duration::MAX`
/// beyond what the clock can name).
fn until(t: u64) -> Duration {
    match UNIX_EPOCH.checked_add(Duration::from_secs(t)) {
        Some(at) => at
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
        None => Duration::MAX,
    }
}

/// The `application/x-www-form-urlencoded` form of `s` (WHATWG URL, the serializer that
/// RFC 6749 appendix B points to): ASCII alphanumerics and `*-._` as they are, space as
/// `+`, every other byte of its UTF-8 as `%XX`.
fn form_urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                out.push(char::from(b));
            }
            b' ' => out.push('+'),
            _ => {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                out.push('%');
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 0xF)]));
            }
        }
    }
    out
}

/// A check's share of an in-flight answer. When dropped (the check is done, or was
/// cancelled) it takes the answer out of the in-flight map once it is there (the cache
/// has it, or it was an error that the next check must not reuse) or when no other check
/// waits for it: the map never keeps an entry nobody will finish.
struct Shared<'a> {
    in_flight: &'a Mutex<HashMap<TokenHash, Arc<Answer>>>,
    key: TokenHash,
    answer: Arc<Answer>,
}

impl Drop for Shared<'_> {
    fn drop(&mut self) {
        let mut in_flight = lock(self.in_flight);
        let ours = in_flight
            .get(&self.key)
            .is_some_and(|a| Arc::ptr_eq(a, &self.answer));
        // New shares are only taken under this lock, so the count cannot grow meanwhile:
        // 2 is the map's and ours.
        if ours && (self.answer.initialized() || Arc::strong_count(&self.answer) <= 2) {
            in_flight.remove(&self.key);
        }
    }
}

/// The answers, bounded, oldest evicted first.
#[derive(Debug, Default)]
struct Cache {
    entries: HashMap<TokenHash, Entry>,
    /// Insertion order: sequence number to key.
    order: BTreeMap<u64, TokenHash>,
    next: u64,
}

#[derive(Debug)]
struct Entry {
    active: bool,
    /// `None`: beyond what `Instant` can name.
    until: Option<Instant>,
    seq: u64,
}

impl Cache {
    /// The answer for `key` if it is still to be used at `now`; an expired one is dropped.
    fn get(&mut self, key: &TokenHash, now: Instant) -> Option<bool> {
        let entry = self.entries.get(key)?;
        if entry.until.is_none_or(|t| now < t) {
            return Some(entry.active);
        }
        let seq = entry.seq;
        self.entries.remove(key);
        self.order.remove(&seq);
        None
    }

    /// Keeps `active` for `key` until `until`, evicting the oldest answers to stay within
    /// `max` entries.
    fn insert(
        &mut self,
        key: TokenHash,
        active: bool,
        until: Option<Instant>,
        now: Instant,
        max: usize,
    ) {
        if max == 0 {
            return;
        }
        if let Some(old) = self.entries.get(&key) {
            // A token held inactive is never made active again: a late positive answer
            // (an issuer replica that missed the revocation) does not undo it.
            if active && !old.active && old.until.is_none_or(|t| now < t) {
                return;
            }
            let seq = old.seq;
            self.entries.remove(&key);
            self.order.remove(&seq);
        }
        while self.entries.len() >= max {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.entries.remove(&oldest);
        }
        let seq = self.next;
        self.next += 1;
        self.order.insert(seq, key);
        self.entries.insert(key, Entry { active, until, seq });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> TokenHash {
        [n; 32]
    }

    #[test]
    fn the_cache_keeps_at_most_max_entries_and_evicts_the_oldest() {
        let now = Instant::now();
        let later = Some(now + Duration::from_secs(60));
        let mut cache = Cache::default();
        for n in 0..5 {
            cache.insert(key(n), true, later, now, 3);
            assert!(cache.entries.len() <= 3);
        }
        assert_eq!(cache.entries.len(), 3);
        assert_eq!(cache.order.len(), 3);
        for n in 0..2 {
            assert_eq!(cache.get(&key(n), now), None, "{n} evicted");
        }
        for n in 2..5 {
            assert_eq!(cache.get(&key(n), now), Some(true), "{n} kept");
        }
        // Replacing an entry moves it to the end of the line.
        cache.insert(key(2), true, later, now, 3);
        cache.insert(key(9), true, later, now, 3);
        assert_eq!(cache.get(&key(3), now), None);
        assert_eq!(cache.get(&key(2), now), Some(true));
        assert_eq!(cache.entries.len(), cache.order.len());

        let mut none = Cache::default();
        none.insert(key(1), false, later, now, 0);
        assert!(none.entries.is_empty(), "max_entries 0 keeps nothing");
    }

    #[test]
    fn cached_answers_expire_and_a_live_negative_is_never_overwritten() {
        let now = Instant::now();
        let mut cache = Cache::default();
        cache.insert(key(1), true, Some(now + Duration::from_secs(1)), now, 10);
        assert_eq!(cache.get(&key(1), now), Some(true));
        assert_eq!(cache.get(&key(1), now + Duration::from_secs(1)), None);
        assert!(cache.entries.is_empty() && cache.order.is_empty());

        cache.insert(key(2), false, Some(now + Duration::from_secs(60)), now, 10);
        cache.insert(key(2), true, Some(now + Duration::from_secs(60)), now, 10);
        assert_eq!(cache.get(&key(2), now), Some(false));
        cache.insert(key(3), false, None, now, 10);
        assert_eq!(
            cache.get(&key(3), now + Duration::from_secs(1 << 40)),
            Some(false)
        );
    }

    #[test]
    fn an_in_flight_answer_leaves_the_map_when_done_or_abandoned() {
        let in_flight: Mutex<HashMap<TokenHash, Arc<Answer>>> = Mutex::default();
        let share = |answer: &Arc<Answer>| Shared {
            in_flight: &in_flight,
            key: key(1),
            answer: answer.clone(),
        };
        // The only check, cancelled before an answer: nobody would finish the entry.
        let answer = Arc::new(Answer::new());
        lock(&in_flight).insert(key(1), answer.clone());
        drop(answer);
        let only = share(&lock(&in_flight)[&key(1)]);
        drop(only);
        assert!(lock(&in_flight).is_empty());

        // Cancelled while another check waits: that one will send the request.
        let answer = Arc::new(Answer::new());
        lock(&in_flight).insert(key(1), answer.clone());
        let first = share(&answer);
        let waiting = share(&answer);
        drop(answer);
        drop(first);
        assert_eq!(lock(&in_flight).len(), 1);
        // Answered: the first check to finish takes it out, although others still read it.
        let other = share(&waiting.answer);
        waiting.answer.set(Ok(true)).unwrap();
        drop(waiting);
        assert!(lock(&in_flight).is_empty());
        drop(other);

        // A share of an older answer never removes a newer one.
        let old = Arc::new(Answer::new());
        let new = Arc::new(Answer::new());
        lock(&in_flight).insert(key(1), new.clone());
        drop(share(&old));
        assert!(Arc::ptr_eq(&lock(&in_flight)[&key(1)], &new));
    }

    #[test]
    fn hold_times_stop_at_exp_and_never_overflow() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert_eq!(until(now - 10), Duration::ZERO);
        assert_eq!(until(0), Duration::ZERO);
        let soon = until(now + 100);
        assert!(soon <= Duration::from_secs(100) && soon > Duration::from_secs(98));
        assert!(until(u64::MAX) >= Duration::from_secs(1 << 40));
        let at = Instant::now();
        assert!(at.checked_add(until(u64::MAX)).is_none_or(|t| t > at));
    }

    #[test]
    fn form_urlencoding_is_the_whatwg_serializer() {
        assert_eq!(form_urlencode("abc.DEF-123_*"), "abc.DEF-123_*");
        assert_eq!(form_urlencode("a b+c"), "a+b%2Bc");
        assert_eq!(form_urlencode("s:e/c%r=t&~"), "s%3Ae%2Fc%25r%3Dt%26%7E");
        assert_eq!(form_urlencode("é"), "%C3%A9");
        assert_eq!(form_urlencode(""), "");
    }

    #[test]
    fn the_basic_header_encodes_id_and_secret_first_and_is_sensitive() {
        let introspection = Introspection::new(
            "http://127.0.0.1:1/oauth2/introspect",
            "svc:1 a",
            ClientSecret::new("p@ss+w/rd".into()),
            IntrospectionOptions::default(),
        )
        .unwrap();
        let value = introspection.authorization().unwrap();
        assert!(value.is_sensitive());
        let encoded = value.to_str().unwrap().strip_prefix("Basic ").unwrap();
        let decoded = STANDARD.decode(encoded).unwrap();
        assert_eq!(decoded, b"svc%3A1+a:p%40ss%2Bw%2Frd");
        let shown = format!("{introspection:?}");
        assert!(!shown.contains("p@ss"), "{shown}");
        assert!(shown.contains("ClientSecret(..)"), "{shown}");
    }

    #[test]
    fn the_cache_key_is_a_hash_of_the_whole_token() {
        assert_ne!(token_hash("a.b.c"), token_hash("a.b.d"));
        assert_eq!(token_hash("a.b.c"), token_hash("a.b.c"));
        assert_ne!(&token_hash("a.b.c")[..5], b"a.b.c");
    }
}
