//! DPoP proofs (RFC 9449): a JWT the client signs with a key it holds, sent in the `DPoP`
//! header with each request, so a token bound to that key (`cnf.jkt`) is of no use to
//! whoever copies it without the key. [`DpopProof::verify`] checks what every receiver
//! checks (section 4.3): the token endpoint adds the single use of `jti`, a resource server
//! the token's hash (`ath`) and its binding.
//!
//! Unlike a token's, a proof's key is the one embedded in its header: that is the point
//! (it proves possession of that key). The key still decides the algorithm, must be public
//! and asymmetric (ES256, RS256 or PS256), and is identified by its RFC 7638 thumbprint.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use super::VerifyingKey;
use super::jws::decode_json;
use crate::SigningAlg;
use crate::jwks::{Jwk, PRIVATE_JWK_MEMBERS, PublicKeyParams};
use crate::time::unix_now;

/// The `typ` of a DPoP proof.
pub const DPOP_TYP: &str = "dpop+jwt";
/// The algorithms a proof may be signed with, as `WWW-Authenticate` and discovery list them.
pub const DPOP_ALGS: [&str; 3] = ["ES256", "RS256", "PS256"];
/// How old a proof's `iat` may be (and how far ahead, for clocks): a proof is made for one
/// request, so this bounds how long its `jti` must be remembered.
pub const DPOP_MAX_AGE: Duration = Duration::from_secs(60);
/// Proofs a [`Verifier`](super::Verifier) remembers at most by default: each for about two
/// minutes ([`DpopProof::remember_until`]), so over 800 proofs a second.
pub const DEFAULT_DPOP_REPLAY_LIMIT: usize = 100_000;
/// Largest proof accepted.
const MAX_PROOF_BYTES: usize = 8 * 1024;
/// Longest `jti` accepted.
const MAX_JTI_LEN: usize = 256;

/// A proof that verified against its embedded key and matched the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DpopProof {
    /// The RFC 7638 thumbprint of the proof's key: what a bound token's `cnf.jkt` holds.
    pub jkt: String,
    /// Its `jti`, to be used once.
    pub jti: String,
    /// Its `iat`.
    pub iat: u64,
    /// The hash of the access token it was made for (resource requests).
    pub ath: Option<String>,
    /// The server nonce it carries, if any.
    pub nonce: Option<String>,
}

/// Why a proof was refused; the message names the rule (an `invalid_dpop_proof`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid DPoP proof: {0}")]
pub struct DpopError(pub String);

impl DpopProof {
    /// Verifies the proof `proof` (the `DPoP` header's value) for a request with `method`
    /// to `url` (query and fragment ignored, RFC 9449 section 4.3 item 9).
    ///
    /// # Errors
    /// [`DpopError`] naming the first rule broken: not a JWS, `typ` not `dpop+jwt`, an
    /// algorithm that is not the embedded key's or not asymmetric, a private or weak key,
    /// a bad signature, `htm`/`htu` not the request's, `iat` too old or ahead, `jti`
    /// missing.
    pub fn verify(proof: &str, method: &str, url: &str) -> Result<Self, DpopError> {
        let refused = |why: &str| DpopError(why.to_owned());
        if proof.len() > MAX_PROOF_BYTES {
            return Err(refused("larger than 8 KiB"));
        }
        let mut parts = proof.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(refused("a JWS has exactly three segments"));
        };
        let header: Map<String, Value> =
            decode_json(header).ok_or_else(|| refused("header is not base64url JSON"))?;
        if header.get("typ").and_then(Value::as_str) != Some(DPOP_TYP) {
            return Err(refused("typ must be dpop+jwt"));
        }
        if header.contains_key("crit") {
            return Err(refused("critical header extensions are not supported"));
        }
        let alg = header
            .get("alg")
            .and_then(Value::as_str)
            .ok_or_else(|| refused("alg is missing"))?;
        let alg = match alg {
            "ES256" => SigningAlg::Es256,
            "RS256" => SigningAlg::Rs256,
            "PS256" => SigningAlg::Ps256,
            _ => return Err(refused("alg must be ES256, RS256 or PS256")),
        };
        let jwk = header
            .get("jwk")
            .and_then(Value::as_object)
            .ok_or_else(|| refused("jwk is missing"))?;
        if PRIVATE_JWK_MEMBERS.iter().any(|m| jwk.contains_key(*m)) {
            return Err(refused("jwk holds private key material"));
        }
        let params: PublicKeyParams = serde_json::from_value(Value::Object(jwk.clone()))
            .map_err(|_| refused("jwk is not an EC P-256 or RSA public key"))?;
        // The key is parsed (base64url checked, RSA at least 2048 bits) before its
        // thumbprint is taken, and decides the algorithm.
        let key = VerifyingKey::from_jwk(&Jwk::new(params.clone(), alg))
            .map_err(|_| refused("jwk is not a usable public key for its alg"))?;
        let mut sig = [0u8; 1024];
        let len = URL_SAFE_NO_PAD
            .decode_slice(signature, &mut sig)
            .map_err(|_| refused("signature is not base64url"))?;
        key.check(
            &proof.as_bytes()[..proof.len() - signature.len() - 1],
            &sig[..len],
            true,
        )
        .map_err(|_| refused("the signature does not verify with its jwk"))?;

        let claims: Map<String, Value> =
            decode_json(payload).ok_or_else(|| refused("payload is not base64url JSON"))?;
        let text = |name: &str| claims.get(name).and_then(Value::as_str);
        let jti = text("jti")
            .filter(|j| !j.is_empty() && j.len() <= MAX_JTI_LEN)
            .ok_or_else(|| refused("jti must be a string of 1 to 256 characters"))?;
        if text("htm") != Some(method) {
            return Err(refused("htm is not the request's method"));
        }
        let htu = text("htu").ok_or_else(|| refused("htu is missing"))?;
        if !same_target(htu, url) {
            return Err(refused("htu is not the request's URL"));
        }
        let iat = claims
            .get("iat")
            .and_then(Value::as_f64)
            .filter(|i| i.is_finite() && *i >= 0.0)
            .map(|i| i as u64)
            .ok_or_else(|| refused("iat is missing or not a time"))?;
        let now = unix_now();
        let window = DPOP_MAX_AGE.as_secs();
        // Saturating: an iat of 1e20 is refused, never an overflow.
        if iat.saturating_add(window) < now {
            return Err(refused("iat is too old (a proof is made for one request)"));
        }
        if iat > now.saturating_add(window) {
            return Err(refused("iat is in the future"));
        }
        Ok(Self {
            jkt: params.thumbprint(),
            jti: jti.to_owned(),
            iat,
            ath: text("ath").map(str::to_owned),
            nonce: text("nonce").map(str::to_owned),
        })
    }

    /// Until when its `jti` must be remembered: as long as its `iat` is accepted.
    pub fn remember_until(&self) -> u64 {
        self.iat.saturating_add(2 * DPOP_MAX_AGE.as_secs() + 1)
    }
}

/// The `ath` of an access token: base64url(SHA-256(token)) (RFC 9449 section 4.2).
pub fn access_token_hash(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        token.as_bytes(),
    ))
}

/// The proofs a resource server has seen (RFC 9449 section 11.1), in memory, keyed by the
/// proof key's thumbprint and `jti`, each until its `iat` can no longer be accepted. At
/// most `limit` are held: when every slot holds an unexpired proof, a new one is refused
/// (fail closed), never accepted unchecked.
#[derive(Debug)]
pub(super) struct ProofReplayCache {
    entries: Mutex<Entries>,
    limit: usize,
}

#[derive(Debug, Default)]
struct Entries {
    /// SHA-256 of (jkt, jti) to its expiry.
    by_key: HashMap<[u8; 32], u64>,
    by_expiry: BTreeSet<(u64, [u8; 32])>,
}

/// The cache holds `limit` unexpired proofs already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ReplayCacheFull(pub usize);

impl ProofReplayCache {
    pub(super) fn new(limit: usize) -> Self {
        Self {
            entries: Mutex::default(),
            limit,
        }
    }

    /// Records `proof` as used: `Ok(true)` the first time, `Ok(false)` for a replay.
    pub(super) fn first_use(&self, proof: &DpopProof) -> Result<bool, ReplayCacheFull> {
        self.record(&proof.jkt, &proof.jti, proof.remember_until(), unix_now())
    }

    fn record(&self, jkt: &str, jti: &str, until: u64, now: u64) -> Result<bool, ReplayCacheFull> {
        // Length-prefixed, so that ("ab", "c") and ("a", "bc") differ.
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        ctx.update(&(jkt.len() as u64).to_be_bytes());
        ctx.update(jkt.as_bytes());
        ctx.update(jti.as_bytes());
        let mut key = [0u8; 32];
        key.copy_from_slice(ctx.finish().as_ref());
        // Plain entries: a panic elsewhere cannot leave one half-written.
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(&(exp, old)) = entries.by_expiry.first()
            && exp <= now
        {
            entries.by_expiry.pop_first();
            entries.by_key.remove(&old);
        }
        if entries.by_key.contains_key(&key) {
            return Ok(false);
        }
        if entries.by_key.len() >= self.limit {
            return Err(ReplayCacheFull(entries.by_key.len()));
        }
        entries.by_key.insert(key, until);
        entries.by_expiry.insert((until, key));
        Ok(true)
    }
}

/// Scheme, host, port and path equal (case of scheme and host ignored, default ports
/// implied); query and fragment ignored.
fn same_target(htu: &str, url: &str) -> bool {
    match (reqwest::Url::parse(htu), reqwest::Url::parse(url)) {
        (Ok(a), Ok(b)) => {
            // No user or password in a proof's target: nobody sends requests so.
            a.username().is_empty()
                && a.password().is_none()
                && a.scheme() == b.scheme()
                && a.host_str() == b.host_str()
                && a.port_or_known_default() == b.port_or_known_default()
                && a.path() == b.path()
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
    use serde_json::json;

    use super::*;

    const URL: &str = "https://issuer.example/oauth2/token";

    fn key() -> (EcdsaKeyPair, Value) {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
        let point = pair.public_key().as_ref().to_vec();
        let jwk =
            serde_json::to_value(PublicKeyParams::p256(&point[1..33], &point[33..65])).unwrap();
        (pair, jwk)
    }

    fn proof(pair: &EcdsaKeyPair, header: Value, claims: Value) -> String {
        let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
        let input = format!("{}.{}", b64(&header), b64(&claims));
        let sig = pair.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }

    fn claims() -> Value {
        json!({"jti": "j1", "htm": "POST", "htu": URL, "iat": unix_now()})
    }

    #[test]
    fn a_proof_names_its_key_by_thumbprint_and_matches_the_request() {
        let (pair, jwk) = key();
        let header = json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk});
        let ok = proof(&pair, header.clone(), claims());
        let verified = DpopProof::verify(&ok, "POST", &format!("{URL}?x=1#f")).unwrap();
        let params: PublicKeyParams = serde_json::from_value(jwk).unwrap();
        assert_eq!(verified.jkt, params.thumbprint());
        assert_eq!(verified.jti, "j1");
        assert!(DpopProof::verify(&ok, "GET", URL).is_err());
        assert!(DpopProof::verify(&ok, "POST", "https://issuer.example/other").is_err());
        assert!(DpopProof::verify(&ok, "POST", "http://issuer.example/oauth2/token").is_err());
    }

    #[test]
    fn the_replay_cache_refuses_a_second_use_and_fails_closed_when_full() {
        let cache = ProofReplayCache::new(2);
        assert_eq!(cache.record("k", "a", 100, 10), Ok(true));
        assert_eq!(cache.record("k", "a", 100, 10), Ok(false));
        // Another key's proof with the same jti is another proof.
        assert_eq!(cache.record("k2", "a", 100, 10), Ok(true));
        assert_eq!(cache.record("k", "b", 100, 10), Err(ReplayCacheFull(2)));
        // Once expired, slots are free again (and the old jti forgotten: its iat is
        // refused by then anyway).
        assert_eq!(cache.record("k", "b", 200, 100), Ok(true));
        assert_eq!(cache.record("k", "a", 200, 100), Ok(true));
    }

    #[test]
    fn each_rule_refuses() {
        let (pair, jwk) = key();
        let (_, other) = key();
        let header = |change: Value| {
            let mut h = json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk});
            for (k, v) in change.as_object().unwrap() {
                if v.is_null() {
                    h.as_object_mut().unwrap().remove(k);
                } else {
                    h[k] = v.clone();
                }
            }
            h
        };
        let with = |change: Value| {
            let mut c = claims();
            for (k, v) in change.as_object().unwrap() {
                if v.is_null() {
                    c.as_object_mut().unwrap().remove(k);
                } else {
                    c[k] = v.clone();
                }
            }
            c
        };
        let now = unix_now();
        let cases = [
            (proof(&pair, header(json!({"typ": "JWT"})), claims()), "typ"),
            (
                proof(&pair, header(json!({"alg": "HS256"})), claims()),
                "alg must be",
            ),
            (
                proof(&pair, header(json!({"alg": "RS256"})), claims()),
                "usable public key",
            ),
            (
                proof(&pair, header(json!({"jwk": null})), claims()),
                "jwk is missing",
            ),
            (
                proof(&pair, header(json!({"jwk": other})), claims()),
                "does not verify",
            ),
            (
                proof(
                    &pair,
                    header(json!({"jwk": {"kty": "oct", "k": "AAAA"}})),
                    claims(),
                ),
                "private key material",
            ),
            (
                proof(&pair, header(json!({})), with(json!({"jti": null}))),
                "jti",
            ),
            (
                proof(&pair, header(json!({})), with(json!({"iat": now - 600}))),
                "too old",
            ),
            (
                proof(&pair, header(json!({})), with(json!({"iat": now + 600}))),
                "future",
            ),
            (
                proof(&pair, header(json!({})), with(json!({"iat": 1e20}))),
                "in the future",
            ),
            (
                proof(
                    &pair,
                    header(json!({})),
                    with(json!({"htu": "https://u:p@issuer.example/oauth2/token"})),
                ),
                "htu is not",
            ),
            (
                proof(&pair, header(json!({})), with(json!({"htu": null}))),
                "htu is missing",
            ),
            ("a.b".to_owned(), "three segments"),
        ];
        for (proof, rule) in cases {
            let err = DpopProof::verify(&proof, "POST", URL).unwrap_err();
            assert!(err.0.contains(rule), "{rule}: {err}");
        }
    }
}
