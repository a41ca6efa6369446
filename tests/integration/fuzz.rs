//! Fuzzing on stable (issue 10): each `fuzz_<target>` must never panic, whatever its
//! input. A bounded loop feeds it a corpus of valid inputs, their mutations and pure random
//! bytes; `JWT_ISSUER_FUZZ_SECONDS` turns the short CI pass into a run of that many seconds
//! per target (`scripts/fuzz.sh`). The property tests are seeded loops over random cases.
//! Every loop prints its seed when it fails; `JWT_ISSUER_FUZZ_SEED` replays it.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use jwt_issuer::keys::{KeyState, Manifest, RotationPolicy};
use jwt_issuer::oauth::auth::{
    ClientAuthMethod, ClientSecretBasic, ClientSecretPost, authenticate_request,
};
use jwt_issuer::oauth::request::Form;
use jwt_issuer::secret::HmacSecret;
use jwt_issuer::sign::REGISTERED_CLAIMS;
use jwt_issuer::verify::{KeyRing, Validation, Verifier};
use jwt_issuer::{Issuer, KeyStore, Signer, SignerConfig, SigningAlg, TokenRequest, TokenType};
use serde_json::{Map, Value, json};
use tempfile::TempDir;

use crate::helpers::{keys_dir_with_template, list_dir};

const ISSUER: &str = "https://issuer.example";
const AUDIENCE: &str = "fuzz-api";

// ---------------------------------------------------------------------------------------
// Seeded randomness and the run budget
// ---------------------------------------------------------------------------------------

/// xorshift64: small, seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn bytes(&mut self, max_len: usize) -> Vec<u8> {
        let len = self.below(max_len + 1);
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// The seed of one loop: `JWT_ISSUER_FUZZ_SEED`, else the clock, mixed with the loop's
/// name so parallel tests do not share a stream.
fn seed_for(name: &str) -> u64 {
    let base = std::env::var("JWT_ISSUER_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    if std::env::var_os("JWT_ISSUER_FUZZ_SEED").is_some() {
        return base;
    }
    name.bytes().fold(base, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Prints the seed of a loop that panicked, so the failure reproduces.
struct SeedReport {
    name: &'static str,
    seed: u64,
}

impl Drop for SeedReport {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "{}: failed with seed {} (replay: JWT_ISSUER_FUZZ_SEED={} cargo test --test integration fuzz)",
                self.name, self.seed, self.seed
            );
        }
    }
}

/// A seeded generator whose seed is printed if the test fails.
fn seeded(name: &'static str) -> (Rng, SeedReport) {
    let seed = seed_for(name);
    (Rng::new(seed), SeedReport { name, seed })
}

/// How long a fuzz target runs: `short` executions (the CI pass), or
/// `JWT_ISSUER_FUZZ_SECONDS` seconds.
enum Budget {
    Executions(usize),
    Until(Instant),
}

impl Budget {
    fn new(short: usize) -> Self {
        match std::env::var("JWT_ISSUER_FUZZ_SECONDS")
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
        {
            Some(secs) if secs > 0.0 => Self::Until(Instant::now() + Duration::from_secs_f64(secs)),
            _ => Self::Executions(short),
        }
    }

    fn more(&self, done: usize) -> bool {
        match self {
            Self::Executions(n) => done < *n,
            // The clock is read every 16 executions.
            Self::Until(end) => !done.is_multiple_of(16) || Instant::now() < *end,
        }
    }
}

// ---------------------------------------------------------------------------------------
// The mutator and the driver
// ---------------------------------------------------------------------------------------

const MAX_INPUT: usize = 32 * 1024;
const INTERESTING: &[u8] = b".=-_+/%&:{}[]\",\\ \0\n\r\t\x7f\x80\xff";

/// One to four mutations of `input`: bit flips, byte changes, insertions, deletions,
/// truncations, splices with another corpus entry, repeated segments.
fn mutate(rng: &mut Rng, corpus: &[Vec<u8>], input: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(4) {
        let len = input.len();
        match rng.below(8) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                input[i] = if rng.chance(2) {
                    *rng.pick(INTERESTING)
                } else {
                    rng.next() as u8
                };
            }
            2 => {
                let i = rng.below(len + 1);
                let b = if rng.chance(2) {
                    *rng.pick(INTERESTING)
                } else {
                    rng.next() as u8
                };
                input.insert(i, b);
            }
            3 if len > 0 => {
                let start = rng.below(len);
                let end = (start + 1 + rng.below(8)).min(len);
                input.drain(start..end);
            }
            4 => input.truncate(rng.below(len + 1)),
            5 => {
                let other = rng.pick(corpus);
                let cut = rng.below(len + 1);
                let from = rng.below(other.len() + 1);
                input.truncate(cut);
                input.extend_from_slice(&other[from..]);
            }
            6 if len > 0 => {
                let start = rng.below(len);
                let end = (start + 1 + rng.below(32)).min(len);
                let segment = input[start..end].to_vec();
                let at = rng.below(len + 1);
                let most = if rng.chance(8) { 500 } else { 4 };
                let times = 1 + rng.below(most);
                let repeated: Vec<u8> = segment
                    .iter()
                    .copied()
                    .cycle()
                    .take(segment.len() * times)
                    .collect();
                input.splice(at..at, repeated);
            }
            _ => {
                let i = rng.below(len + 1);
                input.insert(i, rng.next() as u8);
            }
        }
        input.truncate(MAX_INPUT);
    }
}

/// The next input: a corpus entry as is (1 in 16), mutated, or pure random bytes (1 in 4).
fn next_input(rng: &mut Rng, corpus: &[Vec<u8>]) -> Vec<u8> {
    match rng.below(16) {
        0 => rng.pick(corpus).clone(),
        1..=4 => {
            let most = if rng.chance(8) { 4096 } else { 256 };
            rng.bytes(most)
        }
        _ => {
            let mut input = rng.pick(corpus).clone();
            mutate(rng, corpus, &mut input);
            input
        }
    }
}

/// Runs `target` over the corpus, then over generated inputs until the budget is spent;
/// returns the number of executions. A panic reports the input and the seed.
fn drive(
    name: &'static str,
    corpus: &[Vec<u8>],
    short: usize,
    mut target: impl FnMut(&[u8]),
) -> usize {
    let (mut rng, _report) = seeded(name);
    let budget = Budget::new(short);
    let started = Instant::now();
    let mut done = 0;
    let mut run = |input: &[u8]| {
        if let Err(panic) = panic::catch_unwind(AssertUnwindSafe(|| target(input))) {
            let shown = String::from_utf8_lossy(&input[..input.len().min(2048)]).into_owned();
            eprintln!(
                "{name}: panicked on input ({} bytes): {shown:?}",
                input.len()
            );
            panic::resume_unwind(panic);
        }
    };
    for input in corpus {
        run(input);
        done += 1;
    }
    while budget.more(done) {
        run(&next_input(&mut rng, corpus));
        done += 1;
    }
    println!(
        "fuzz target {name}: {done} executions in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    done
}

// ---------------------------------------------------------------------------------------
// Keys, signers and tokens
// ---------------------------------------------------------------------------------------

/// A strong HS256 secret and the previous one.
fn secrets() -> (HmacSecret, HmacSecret) {
    let current = HmacSecret::new(b"q7VtZ2mW9xLk4RbN8pHc3JfY6sDg1AeU0oTi5wXz".to_vec(), "FUZZ")
        .expect("strong secret");
    let previous = HmacSecret::new(b"Lm3Qx8Rv2Tz7Wb4Nk9Hp1Jd6Fs5Gc0Ay-_.~aB".to_vec(), "FUZZ")
        .expect("strong secret");
    (current, previous)
}

/// A signer over a copy of the template keys (ES256, RS256) and an HS256 secret, with
/// the rings that verify its tokens.
struct Keys {
    _tmp: TempDir,
    signer: Signer,
    public: KeyRing,
    shared: KeyRing,
    secret: HmacSecret,
}

impl Keys {
    fn new() -> Self {
        let (tmp, keys_dir) = keys_dir_with_template();
        let keys = KeyStore::new(&keys_dir).load().expect("load keys");
        let (public, rejected) = KeyRing::from_jwk_set(&keys.jwk_set());
        assert!(rejected.is_empty(), "{rejected:?}");
        let (secret, previous) = secrets();
        let shared = KeyRing::from_secrets([&secret, &previous]);
        let config = SignerConfig::new(Issuer::parse(ISSUER).expect("issuer"));
        let signer = Signer::new(config, Arc::new(keys), Some(&secret)).expect("signer");
        Self {
            _tmp: tmp,
            signer,
            public,
            shared,
            secret,
        }
    }

    fn ring(&self, alg: SigningAlg) -> &KeyRing {
        match alg {
            SigningAlg::Hs256 => &self.shared,
            _ => &self.public,
        }
    }

    fn issue(&self, alg: SigningAlg, typ: TokenType, aud: &[&str]) -> String {
        let mut request = TokenRequest::new("fuzz-client", Duration::from_secs(600));
        request.alg = Some(alg);
        request.typ = typ;
        request.aud = aud.iter().map(|a| a.to_string()).collect();
        self.signer.issue(&request).expect("issue").token
    }

    /// Tokens of every algorithm and type, plus an HS256 token without a kid signed by
    /// another library (verified by trying the shared secrets).
    fn tokens(&self) -> Vec<String> {
        let mut tokens = Vec::new();
        for alg in [SigningAlg::Es256, SigningAlg::Rs256, SigningAlg::Hs256] {
            for typ in [TokenType::Jwt, TokenType::AccessToken] {
                tokens.push(self.issue(alg, typ, &[AUDIENCE]));
            }
            tokens.push(self.issue(alg, TokenType::Jwt, &[AUDIENCE, "other"]));
        }
        let now = crate::helpers::unix_now();
        let claims = json!({"iss": ISSUER, "sub": "s", "aud": AUDIENCE, "exp": now + 600});
        let foreign = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(self.secret.expose_secret()),
        )
        .expect("encode");
        tokens.push(foreign);
        tokens
    }
}

fn validation() -> Validation {
    Validation::new(ISSUER, [AUDIENCE])
}

/// Base64url decoding that ignores padding and non-zero trailing bits: two encodings of
/// the same bytes compare equal.
fn lenient_decode(segment: &str) -> Option<Vec<u8>> {
    let config = GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent);
    GeneralPurpose::new(&base64::alphabet::URL_SAFE, config)
        .decode(segment)
        .ok()
}

/// The three decoded segments of a compact token.
fn decoded_segments(token: &str) -> Option<[Vec<u8>; 3]> {
    let mut parts = token.split('.');
    let segments = [
        lenient_decode(parts.next()?)?,
        lenient_decode(parts.next()?)?,
        lenient_decode(parts.next()?)?,
    ];
    parts.next().is_none().then_some(segments)
}

// ---------------------------------------------------------------------------------------
// Fuzz targets
// ---------------------------------------------------------------------------------------

/// What the verifier target checks against: the rings, the original tokens decoded.
struct VerifyTarget {
    keys: Keys,
    validation: Validation,
    originals: Vec<[Vec<u8>; 3]>,
    tokens: Vec<String>,
    /// How often each outcome came: shows how deep the inputs got.
    outcomes: RefCell<BTreeMap<String, usize>>,
}

/// The verifier on an arbitrary token string: never panics, and accepts only the tokens
/// that were issued (or an encoding of exactly their bytes).
fn fuzz_verify(target: &VerifyTarget, input: &[u8]) {
    let token = String::from_utf8_lossy(input);
    for ring in [&target.keys.public, &target.keys.shared] {
        let result = Verifier::verify_with::<Value>(ring, &token, &target.validation);
        let outcome = match &result {
            Ok(_) if target.tokens.iter().any(|t| *t == token) => "Ok".to_owned(),
            Ok(_) => "Ok (changed text, same bytes)".to_owned(),
            Err(e) => format!("{e:?}")
                .split('(')
                .next()
                .unwrap_or_default()
                .to_owned(),
        };
        *target.outcomes.borrow_mut().entry(outcome).or_insert(0) += 1;
        if let Ok(claims) = result {
            let decoded = decoded_segments(&token);
            assert!(
                decoded.is_some_and(|d| target.originals.contains(&d)),
                "a changed token verified: {token:?} -> {claims}"
            );
        }
    }
}

/// A JWKS document: parsing never panics.
fn fuzz_jwks(input: &[u8]) {
    if let Ok(ring) = KeyRing::from_json(input) {
        let _ = ring.len();
    }
}

/// The token endpoint's form body and Basic header. Before the first newline: the
/// `Authorization` value (when it is a valid header value); after it: the body. Without a
/// newline, the input is both.
fn fuzz_token_request(methods: &[Box<dyn ClientAuthMethod>], input: &[u8]) {
    let (header, body) = match input.iter().position(|&b| b == b'\n') {
        Some(i) => (&input[..i], &input[i + 1..]),
        None => (input, input),
    };
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_bytes(header) {
        headers.insert(AUTHORIZATION, value);
    }
    let mut form = match Form::parse(body) {
        Ok(form) => form,
        Err(_) => Form::parse(b"").expect("an empty form parses"),
    };
    if let Ok(presented) = authenticate_request(methods, &headers, &mut form) {
        assert!(
            !presented.client_id.is_empty(),
            "an empty client_id was accepted"
        );
    }
    assert!(
        form.get("client_secret").is_none(),
        "client_secret left in the form after authentication"
    );
}

/// What the import target works in: a keys dir and its files before the call.
struct ImportTarget {
    store: KeyStore,
    keys_dir: PathBuf,
    candidate: PathBuf,
    files: Vec<String>,
    imported: usize,
}

/// PEM import of arbitrary bytes: succeeds for a real new key or refuses, never panics,
/// never leaves a file behind when it refuses, and the manifest always loads.
fn fuzz_import(target: &mut ImportTarget, input: &[u8]) {
    fs::write(&target.candidate, input).expect("write candidate");
    let result = target.store.import(&target.candidate);
    let manifest = target
        .store
        .manifest()
        .unwrap_or_else(|e| panic!("the manifest no longer loads after an import: {e}"));
    let files = list_dir(&target.keys_dir);
    match result {
        Ok(info) => {
            assert!(
                manifest.get(&info.kid).is_some(),
                "imported key not in the manifest"
            );
            target.imported += 1;
        }
        Err(_) => assert_eq!(files, target.files, "a refused import changed the keys dir"),
    }
    target.files = files;
}

#[test]
fn fuzz_verifier_never_panics_and_accepts_only_issued_tokens() {
    let keys = Keys::new();
    let tokens = keys.tokens();
    let originals = tokens
        .iter()
        .map(|t| decoded_segments(t).expect("issued tokens decode"))
        .collect();
    let target = VerifyTarget {
        keys,
        validation: validation(),
        originals,
        tokens: tokens.clone(),
        outcomes: RefCell::default(),
    };
    for token in &tokens {
        let ring_ok = [&target.keys.public, &target.keys.shared]
            .iter()
            .any(|r| Verifier::verify_with::<Value>(r, token, &target.validation).is_ok());
        assert!(ring_ok, "an issued token verifies: {token}");
    }
    let mut corpus: Vec<Vec<u8>> = tokens.iter().map(|t| t.as_bytes().to_vec()).collect();
    // Headers the verifier must refuse: none, HS256 with a public kid, crit, embedded jwk.
    let kid = target.keys.signer.keys().keys()[0].kid().to_owned();
    for header in [
        json!({"alg": "none", "kid": kid}),
        json!({"alg": "HS256", "kid": kid}),
        json!({"alg": "ES256", "kid": kid, "crit": ["exp"]}),
        json!({"alg": "ES256", "jwk": {"kty": "EC"}}),
    ] {
        let header = URL_SAFE_NO_PAD.encode(header.to_string());
        let payload = tokens[0].split('.').nth(1).expect("payload");
        corpus.push(format!("{header}.{payload}.").into_bytes());
    }
    let executions = drive("verify", &corpus, 50_000, |input| {
        fuzz_verify(&target, input)
    });
    assert!(executions >= corpus.len());
    println!(
        "fuzz target verify: outcomes {:?}",
        target.outcomes.borrow()
    );
}

#[test]
fn fuzz_jwks_documents_never_panic() {
    let keys = Keys::new();
    let jwks = serde_json::to_vec(&keys.signer.keys().jwk_set()).expect("JWKS");
    let corpus: Vec<Vec<u8>> = [
        jwks,
        br#"{"keys":[]}"#.to_vec(),
        br#"{"keys":[{"kty":"EC","crv":"P-256","x":"AAAA","y":"AAAA","kid":"a"}]}"#.to_vec(),
        br#"{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB","kid":"a","use":"enc"}]}"#.to_vec(),
        br#"{"keys":[{"kty":"oct","k":"AAAA","kid":"a","alg":"HS256"},{"kty":"OKP"}]}"#.to_vec(),
        br#"{"keys":[{"kty":"EC","kid":"a"},{"kty":"EC","kid":"a"}],"extra":[1,2.5e300,null]}"#
            .to_vec(),
    ]
    .into();
    drive("jwks", &corpus, 50_000, fuzz_jwks);
}

#[test]
fn fuzz_token_request_parsing_never_panics() {
    let methods: Vec<Box<dyn ClientAuthMethod>> =
        vec![Box::new(ClientSecretBasic), Box::new(ClientSecretPost)];
    let basic = format!("Basic {}", STANDARD.encode("client%201:s%C3%A9cret"));
    let corpus: Vec<Vec<u8>> = [
        format!("{basic}\ngrant_type=client_credentials&scope=read+write"),
        "\ngrant_type=client_credentials&client_id=c&client_secret=s%20%2B".into(),
        format!("{basic}\nclient_id=c&client_secret=s"),
        "basic OmFiYw==\ngrant_type=client_credentials&audience=a&audience=b".into(),
        "Bearer abc\nclient_id=%E2%82%AC&client_secret=%ZZ".into(),
        "grant_type=client_credentials&client_id=c&client_secret=s".into(),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect();
    drive("token_request", &corpus, 50_000, |input| {
        fuzz_token_request(&methods, input)
    });
}

/// A fresh ES256 key in PKCS#8 PEM, lines of 64.
fn fresh_ec_pem() -> Vec<u8> {
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
    let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).expect("generate");
    let der = pair.to_pkcs8v1().expect("pkcs8");
    let body = STANDARD.encode(der.as_ref());
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).expect("ascii"));
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    pem.into_bytes()
}

#[test]
fn fuzz_pem_import_never_panics_nor_breaks_the_store() {
    let (tmp, keys_dir) = keys_dir_with_template();
    let mut corpus: Vec<Vec<u8>> = list_dir(&keys_dir)
        .iter()
        .filter(|name| name.ends_with(".pem"))
        .map(|name| fs::read(keys_dir.join(name)).expect("read key"))
        .collect();
    assert!(!corpus.is_empty(), "the template has PEM keys");
    corpus.push(fresh_ec_pem());
    corpus.push(fresh_ec_pem());
    corpus
        .push(b"-----BEGIN EC PRIVATE KEY-----\nMHcCAQEE\n-----END EC PRIVATE KEY-----\n".to_vec());
    let mut target = ImportTarget {
        store: KeyStore::new(&keys_dir),
        files: list_dir(&keys_dir),
        keys_dir,
        candidate: tmp.path().join("candidate.pem"),
        imported: 0,
    };
    drive("pem_import", &corpus, 1_200, |input| {
        fuzz_import(&mut target, input)
    });
    assert!(target.imported >= 1, "the fresh keys import");
    KeyStore::new(&target.keys_dir)
        .load()
        .expect("the store still loads");
}

// ---------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------

/// A random string: ASCII, controls, quotes, non-BMP, RTL, combining marks.
fn random_string(rng: &mut Rng, max_len: usize) -> String {
    let len = rng.below(max_len + 1);
    (0..len)
        .map(|_| match rng.below(6) {
            0 | 1 => char::from(b' ' + rng.below(95) as u8),
            2 => *rng.pick(&['"', '\\', '\0', '\n', '\u{7f}', '\u{2028}', '\u{feff}', '/']),
            3 => char::from_u32(0x80 + rng.below(0xD000) as u32).unwrap_or('?'),
            4 => char::from_u32(0x1F300 + rng.below(0x300) as u32).unwrap_or('?'),
            _ => *rng.pick(&['é', 'ß', 'ا', '\u{301}', '中', 'ǅ']),
        })
        .collect()
}

/// A random JSON value, nested at most `depth` deep. Numbers are integers or short
/// binary fractions, which round-trip exactly.
fn random_json(rng: &mut Rng, depth: usize) -> Value {
    match rng.below(if depth == 0 { 5 } else { 7 }) {
        0 => Value::Null,
        1 => Value::Bool(rng.chance(2)),
        2 => json!(rng.next() as i64),
        3 => json!((rng.next() % 1_000_000) as f64 / 8.0 - 50_000.0),
        4 => Value::String(random_string(rng, 24)),
        5 => Value::Array(
            (0..rng.below(4))
                .map(|_| random_json(rng, depth - 1))
                .collect(),
        ),
        _ => Value::Object(
            (0..rng.below(4))
                .map(|_| (random_string(rng, 8), random_json(rng, depth - 1)))
                .collect(),
        ),
    }
}

#[test]
fn fuzz_property_sign_then_verify_round_trips_for_every_algorithm() {
    let keys = Keys::new();
    let (mut rng, _report) = seeded("round_trip");
    let max_ttl = keys.signer.max_ttl().as_secs();
    let mut per_alg = BTreeMap::new();
    for _ in 0..240 {
        let alg = *rng.pick(&[SigningAlg::Es256, SigningAlg::Rs256, SigningAlg::Hs256]);
        let ttl = 1 + rng.next() % max_ttl;
        let mut sub = random_string(&mut rng, 16);
        if sub.is_empty() {
            sub.push('x');
        }
        let mut request = TokenRequest::new(sub.clone(), Duration::from_secs(ttl));
        request.alg = Some(alg);
        request.typ = *rng.pick(&[TokenType::Jwt, TokenType::AccessToken]);
        request.aud = (0..rng.below(4))
            .map(|_| format!("a{}", random_string(&mut rng, 10)))
            .collect();
        let mut extra = Map::new();
        for _ in 0..rng.below(6) {
            let name = random_string(&mut rng, 10);
            if !REGISTERED_CLAIMS.contains(&name.as_str()) {
                extra.insert(name, random_json(&mut rng, 3));
            }
        }
        request.extra = extra.clone();
        let issued = keys.signer.issue(&request).expect("issue");
        let validation = match request.aud.first() {
            Some(aud) => Validation::new(ISSUER, [rng.pick(&request.aud[..]).clone(), aud.clone()]),
            None => Validation::new(ISSUER, [AUDIENCE]).insecure_any_audience(),
        };
        let claims: Value = Verifier::verify_with(keys.ring(alg), &issued.token, &validation)
            .unwrap_or_else(|e| panic!("{alg} token did not verify: {e}: {}", issued.token));
        assert_eq!(claims["iss"], ISSUER);
        assert_eq!(claims["sub"], sub.as_str());
        assert_eq!(claims["exp"].as_u64(), Some(issued.expires_at));
        assert_eq!(issued.expires_at - issued.issued_at, ttl);
        match request.aud.as_slice() {
            [] => assert!(claims.get("aud").is_none()),
            [one] => assert_eq!(claims["aud"], one.as_str()),
            many => assert_eq!(claims["aud"], json!(many)),
        }
        for (name, value) in &extra {
            assert_eq!(&claims[name], value, "claim {name:?} of a {alg} token");
        }
        assert_eq!(
            claims.as_object().expect("object").len(),
            6 + usize::from(!request.aud.is_empty()) + extra.len(),
            "no claim added or lost"
        );
        *per_alg.entry(alg.to_string()).or_insert(0) += 1;
    }
    println!("property round_trip: {per_alg:?} cases");
}

#[test]
fn fuzz_property_any_single_byte_change_fails_verification() {
    let keys = Keys::new();
    let tokens = keys.tokens();
    let (mut rng, _report) = seeded("single_byte_change");
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut equivalent = 0;
    let cases = 300;
    for _ in 0..cases {
        let token = rng.pick(&tokens[..]);
        let mut bytes = token.as_bytes().to_vec();
        let at = rng.below(bytes.len());
        let old = bytes[at];
        bytes[at] = loop {
            let new = if rng.chance(4) {
                rng.next() as u8
            } else {
                *rng.pick(alphabet)
            };
            if new != old {
                break new;
            }
        };
        let changed = String::from_utf8_lossy(&bytes);
        for ring in [&keys.public, &keys.shared] {
            if Verifier::verify_with::<Value>(ring, &changed, &validation()).is_ok() {
                assert_eq!(
                    decoded_segments(&changed),
                    decoded_segments(token),
                    "byte {at} changed from {old:?} to {:?} and the token still verifies: {changed}",
                    bytes[at]
                );
                equivalent += 1;
            }
        }
    }
    println!("property single_byte_change: {cases} cases, {equivalent} accepted as the same bytes");
}

/// The members a public JWK may have, by key type.
fn public_members(kty: &str) -> &'static [&'static str] {
    match kty {
        "EC" => &["kty", "crv", "x", "y", "kid", "use", "alg"],
        "RSA" => &["kty", "n", "e", "kid", "use", "alg"],
        _ => &[],
    }
}

#[test]
fn fuzz_property_jwks_never_holds_a_private_member() {
    let (tmp, keys_dir) = keys_dir_with_template();
    let store = KeyStore::new(&keys_dir);
    let template_pems: Vec<PathBuf> = list_dir(&keys_dir)
        .iter()
        .filter(|n| n.ends_with(".pem"))
        .map(|n| keys_dir.join(n))
        .collect();
    let (mut rng, _report) = seeded("jwks_private_members");
    let private = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];
    let mut checked = 0;
    for step in 0..40 {
        match rng.below(5) {
            0 => drop(store.generate(SigningAlg::Es256, 2048)),
            1 => {
                let pem = tmp.path().join(format!("import-{step}.pem"));
                fs::write(&pem, fresh_ec_pem()).expect("write pem");
                store.import(&pem).expect("import a fresh key");
            }
            2 => drop(store.rotate(SigningAlg::Es256, rng.chance(2))),
            3 => {
                let published: Vec<String> = store
                    .manifest()
                    .expect("manifest")
                    .keys
                    .iter()
                    .filter(|k| k.state == KeyState::Next)
                    .map(|k| k.kid.clone())
                    .collect();
                if !published.is_empty() {
                    let kid: &String = rng.pick(&published[..]);
                    store.revoke(kid).expect("revoke");
                }
            }
            // Re-importing a template key (RSA or EC) is refused; the set is unchanged.
            _ => {
                let pem: &PathBuf = rng.pick(&template_pems[..]);
                assert!(store.import(pem).is_err());
            }
        }
        let set = store.load().expect("load");
        let doc = serde_json::to_value(set.jwk_set()).expect("JWKS JSON");
        let members: Vec<&String> = doc.as_object().expect("object").keys().collect();
        assert_eq!(members, ["keys"], "{doc}");
        for key in doc["keys"].as_array().expect("keys") {
            let object = key.as_object().expect("a key is an object");
            let kty = key["kty"].as_str().unwrap_or_default();
            for name in object.keys() {
                assert!(
                    !private.contains(&name.as_str()),
                    "private member {name}: {key}"
                );
                assert!(
                    public_members(kty).contains(&name.as_str()),
                    "unexpected member {name} in a {kty} key: {key}"
                );
            }
            checked += 1;
        }
    }
    println!("property jwks_private_members: 40 store steps, {checked} published keys checked");
}

/// Checks the manifest invariants at `now`: one active key for each algorithm that ever
/// had one, at most one otherwise; dead keys stay dead and unpublished; kids are unique.
fn check_manifest(
    manifest: &Manifest,
    now: u64,
    had_active: &BTreeSet<SigningAlg>,
    dead: &mut HashMap<String, KeyState>,
    step: &str,
) {
    for alg in SigningAlg::ASYMMETRIC {
        let active = manifest
            .keys
            .iter()
            .filter(|k| k.alg == alg && k.state == KeyState::Active)
            .count();
        let expected = if had_active.contains(&alg) {
            1
        } else {
            active.min(1)
        };
        assert_eq!(
            active, expected,
            "{alg} has {active} active keys after {step}"
        );
        if let Some(record) = manifest.active(alg) {
            assert!(
                record.is_published(now),
                "active key unpublished after {step}"
            );
            assert!(
                record.activated.is_some(),
                "active key without activation time"
            );
        }
    }
    let mut kids = BTreeSet::new();
    for record in &manifest.keys {
        assert!(
            kids.insert(&record.kid),
            "kid {} twice after {step}",
            record.kid
        );
        if let Some(state) = dead.get(&record.kid) {
            assert_eq!(
                record.state, *state,
                "dead key {} came back after {step}",
                record.kid
            );
        }
        match record.state {
            KeyState::Removed | KeyState::Revoked => {
                for at in [now, now + 1, now.saturating_sub(1), u64::MAX / 2] {
                    assert!(
                        !record.is_published(at),
                        "{} published after {step}",
                        record.kid
                    );
                }
                dead.insert(record.kid.clone(), record.state);
            }
            KeyState::Retired => assert!(record.remove_after.is_some()),
            KeyState::Next | KeyState::Active => assert!(record.is_published(now)),
        }
    }
}

#[test]
fn fuzz_property_key_lifecycle_keeps_one_active_key_and_never_publishes_dead_keys() {
    let (mut rng, _report) = seeded("lifecycle");
    let policy = RotationPolicy::default();
    let retention = policy.retention().as_millis() as u64;
    let delay = policy.activation_delay().as_millis() as u64;
    let cases = 200;
    let mut steps = 0;
    for _ in 0..cases {
        let mut manifest = Manifest {
            version: Manifest::VERSION,
            ..Manifest::default()
        };
        let mut now: u64 = 1_700_000_000_000 + rng.next() % 1_000_000_000;
        let mut counter = 0;
        let mut fresh = || {
            // A kid is an RFC 7638 thumbprint: 32 bytes in base64url.
            counter += 1u64;
            let mut digest = [0u8; 32];
            digest[..8].copy_from_slice(&counter.to_be_bytes());
            URL_SAFE_NO_PAD.encode(digest)
        };
        let mut had_active = BTreeSet::new();
        let mut dead = HashMap::new();
        for _ in 0..1 + rng.below(30) {
            now += match rng.below(4) {
                0 => 0,
                1 => rng.next() % 1000,
                2 => rng.next() % (2 * delay),
                _ => rng.next() % (2 * retention),
            };
            let alg = *rng.pick(&SigningAlg::ASYMMETRIC);
            let step = match rng.below(7) {
                0 => {
                    manifest.add(fresh(), alg, now);
                    "add"
                }
                1 => {
                    let force = rng.chance(2);
                    let _ = manifest.rotate(alg, now, force, fresh(), &policy);
                    "rotate"
                }
                2 => {
                    let published: Vec<String> = manifest
                        .keys
                        .iter()
                        .filter(|k| k.is_published(now))
                        .map(|k| k.kid.clone())
                        .collect();
                    if !published.is_empty() {
                        let kid = rng.pick(&published[..]).clone();
                        manifest
                            .revoke(&kid, now, Some(fresh()))
                            .expect("revoke a published kid");
                    }
                    "revoke"
                }
                3 => {
                    manifest.sweep(now);
                    "sweep"
                }
                4 => {
                    let every = rng
                        .chance(2)
                        .then(|| Duration::from_millis(rng.next() % (3 * retention)));
                    let keys: Vec<(SigningAlg, String)> = SigningAlg::ASYMMETRIC
                        .iter()
                        .map(|a| (*a, fresh()))
                        .collect();
                    manifest.apply_maintenance(now, every, &policy, &keys);
                    "apply_maintenance"
                }
                5 => {
                    let force = rng.chance(2);
                    let keys: Vec<(SigningAlg, Vec<String>)> = SigningAlg::ASYMMETRIC
                        .iter()
                        .map(|a| (*a, vec![fresh(), fresh()]))
                        .collect();
                    let _ = manifest.rotate_all(&keys, now, force, &policy);
                    "rotate_all"
                }
                _ => {
                    let json = manifest.to_json();
                    let back = Manifest::from_json(&json).expect("manifest JSON");
                    assert_eq!(back, manifest, "the manifest round-trips through JSON");
                    "to_json"
                }
            };
            for alg in SigningAlg::ASYMMETRIC {
                if manifest.active(alg).is_some() {
                    had_active.insert(alg);
                }
            }
            check_manifest(&manifest, now, &had_active, &mut dead, step);
            steps += 1;
        }
    }
    println!("property lifecycle: {cases} cases, {steps} steps");
}

#[test]
fn fuzz_the_corpus_helpers_are_deterministic_for_a_seed() {
    let corpus = vec![b"abc.def.ghi".to_vec(), b"{\"keys\":[]}".to_vec()];
    let run = || {
        let mut rng = Rng::new(42);
        (0..50)
            .map(|_| next_input(&mut rng, &corpus))
            .collect::<Vec<_>>()
    };
    assert_eq!(run(), run());
}
