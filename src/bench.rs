//! `jwt-issuer bench`: sign and verify throughput per algorithm, in process, on one
//! thread, through the very [`Signer`] and [`Verifier`] the server and downstream services
//! use, with the token and public key sizes: the numbers behind choosing HS256, RS256 or
//! ES256.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use crate::keys::{KeyStore, KeyStoreError, KeyVault};
use crate::secret::{ClientSecret, HmacSecret};
use crate::verify::{KeyRing, Validation, Verifier};
use crate::{InvalidIssuer, Issuer, SignError, Signer, SignerConfig, SigningAlg, TokenRequest};

/// One algorithm's figures.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    /// `HS256`, `RS256` (2048), `RS256-3072`, `ES256`.
    pub alg: String,
    /// The JWS `alg`.
    pub jws_alg: SigningAlg,
    /// Tokens signed per second, one thread.
    pub sign_per_s: f64,
    /// Tokens verified per second, one thread (signature and claims).
    pub verify_per_s: f64,
    /// Size of one token with the benchmark's claims.
    pub token_bytes: usize,
    /// Raw public key size (RSA modulus and exponent; P-256 x and y); 0 for HS256, whose
    /// key is never published.
    pub public_key_bytes: usize,
    /// Size of the published JWK (0 for HS256).
    pub jwk_bytes: usize,
    /// `secret`: every verifier holds the signing secret; `jwks`: anyone with the JWKS.
    pub verifier_needs: &'static str,
    /// The same, in words.
    pub who_can_verify: &'static str,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Time spent on each measurement (each algorithm's sign, then its verify).
    pub seconds: f64,
    /// One row per algorithm.
    pub results: Vec<BenchResult>,
}

/// Why the benchmark could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    /// Key generation in the temporary store failed.
    #[error(transparent)]
    Keys(#[from] KeyStoreError),
    /// Signing failed.
    #[error(transparent)]
    Sign(#[from] SignError),
    /// The benchmark's issuer is not a URL (a bug).
    #[error(transparent)]
    Issuer(#[from] InvalidIssuer),
    /// A benchmark token did not verify (a bug, reported rather than measured).
    #[error("benchmark token for {0} did not verify: {1}")]
    Verify(String, String),
    /// The temporary directory.
    #[error("cannot create a temporary directory")]
    TempDir(#[from] std::io::Error),
}

const ISSUER: &str = "https://issuer.example";

/// Runs every algorithm for `seconds` per measurement; with a `vault` (a PKCS#11 token),
/// ES256 and RS256 once more with keys generated and signing in it (`ES256-HSM`,
/// `RS256-HSM`), beside the in-process figures of the same run. The vault's keys are
/// destroyed at the end.
///
/// # Errors
/// Key generation or a self-check failing.
pub fn run(seconds: f64, vault: Option<Arc<dyn KeyVault>>) -> Result<BenchReport, BenchError> {
    let per_measurement = Duration::from_secs_f64(seconds.max(0.01));
    let tmp = tempfile::TempDir::new()?;
    let mut results = Vec::new();
    // A 256-bit random secret, as `openssl rand -base64 48` would make.
    let secret = HmacSecret::new(
        ClientSecret::generate().expose_secret().as_bytes().to_vec(),
        "bench secret",
    )
    .map_err(|e| BenchError::Verify("HS256".into(), e.to_string()))?;
    let mut cases = vec![
        ("HS256", SigningAlg::Hs256, 0, None),
        ("RS256", SigningAlg::Rs256, 2048, None),
        ("RS256-3072", SigningAlg::Rs256, 3072, None),
        ("ES256", SigningAlg::Es256, 0, None),
    ];
    if let Some(vault) = &vault {
        cases.push(("RS256-HSM", SigningAlg::Rs256, 2048, Some(vault.clone())));
        cases.push(("ES256-HSM", SigningAlg::Es256, 0, Some(vault.clone())));
    }
    let mut held = Vec::new();
    let result = (|| {
        for (name, alg, bits, vault) in cases {
            let mut store = KeyStore::new(tmp.path().join(name));
            if let Some(vault) = vault {
                store = store.with_vault(vault);
            }
            if alg.is_asymmetric() {
                let info = store.generate(alg, bits)?;
                if store.vault().is_some() {
                    held.push(info.location);
                }
            }
            results.push(measure(name, alg, &store, &secret, per_measurement)?);
        }
        Ok::<_, BenchError>(())
    })();
    if let Some(vault) = &vault {
        for uri in held {
            let _ = vault.destroy(&uri);
        }
    }
    result?;
    Ok(BenchReport { seconds, results })
}

/// Sign and verify rates of `alg` with the active key of `store`.
fn measure(
    name: &str,
    alg: SigningAlg,
    store: &KeyStore,
    secret: &HmacSecret,
    per_measurement: Duration,
) -> Result<BenchResult, BenchError> {
    {
        let keys = Arc::new(store.load()?);
        let config = SignerConfig {
            default_alg: alg,
            ..SignerConfig::new(Issuer::parse(ISSUER)?)
        };
        let signer = Signer::new(config, keys.clone(), Some(secret))?;
        let ring = if alg.is_asymmetric() {
            KeyRing::from_jwk_set(&keys.jwk_set()).0
        } else {
            KeyRing::from_secrets([secret])
        };
        let validation = Validation::new(ISSUER, ["orders-api"]);
        let mut request = TokenRequest::new("bench-client", Duration::from_secs(3600));
        request.aud = vec!["orders-api".into()];
        request.alg = Some(alg);
        request
            .extra
            .insert("scope".into(), "orders:read orders:write".into());
        let token = signer.issue(&request)?.token;
        Verifier::verify_with::<Value>(&ring, &token, &validation)
            .map_err(|e| BenchError::Verify(name.into(), e.to_string()))?;

        let sign_per_s = rate(per_measurement, || {
            black_box(signer.issue(black_box(&request)).is_ok());
        });
        let verify_per_s = rate(per_measurement, || {
            black_box(
                Verifier::verify_with::<Value>(&ring, black_box(&token), &validation).is_ok(),
            );
        });
        let (public_key_bytes, jwk_bytes) = match keys.active(alg).filter(|_| alg.is_asymmetric()) {
            Some(key) => {
                let raw = match &key.jwk().params {
                    crate::jwks::PublicKeyParams::Rsa { n, e } => (n.len() + e.len()) * 3 / 4,
                    crate::jwks::PublicKeyParams::Ec { x, y, .. } => (x.len() + y.len()) * 3 / 4,
                };
                (raw, serde_json::to_vec(key.jwk()).map_or(0, |v| v.len()))
            }
            None => (0, 0),
        };
        let (verifier_needs, who_can_verify) = if alg.is_asymmetric() {
            ("jwks", "anyone with the JWKS")
        } else {
            ("secret", "holders of the secret (who can also sign)")
        };
        Ok(BenchResult {
            alg: name.to_owned(),
            jws_alg: alg,
            sign_per_s,
            verify_per_s,
            token_bytes: token.len(),
            public_key_bytes,
            jwk_bytes,
            verifier_needs,
            who_can_verify,
        })
    }
}

/// Operations per second of `op`, run for about `time`.
fn rate(time: Duration, mut op: impl FnMut()) -> f64 {
    let start = Instant::now();
    let mut count: u64 = 0;
    loop {
        for _ in 0..16 {
            op();
        }
        count += 16;
        let elapsed = start.elapsed();
        if elapsed >= time {
            return count as f64 / elapsed.as_secs_f64();
        }
    }
}
