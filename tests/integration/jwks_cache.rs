//! JwksCache against a real local JWKS server that counts fetches: max-age, unknown-kid
//! cooldown, a down or garbage issuer, one fetch for concurrent first use, limits.
//!
//! Timing: a test waits out a max-age or cooldown from the end of the last call (the last
//! fetch ended before it), so the next call is past it however loaded the machine. "No
//! fetch within the period" is checked against the time the calls really took: none
//! more while they took less than the period (the usual case), one more per whole period
//! on a machine so loaded that they took longer.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use actix_web::{App, HttpResponse, web};
use jwt_issuer::verify::{JwksCache, JwksCacheOptions, KeySetError, VerifyError};
use jwt_issuer::{KeySet, KeyStore};

use crate::helpers::{TestApp, TestServer, keys_dir_with_template};

/// What the fake issuer answers.
#[derive(Clone)]
enum Mode {
    Serve {
        cache_control: &'static str,
        delay: Duration,
    },
    Down,
    Garbage,
    Huge,
}

/// A fake issuer serving the template key set at `/jwks.json` as `mode` says, counting
/// fetches.
struct JwksServer {
    url: String,
    fetches: Arc<AtomicUsize>,
    mode: Arc<Mutex<Mode>>,
    /// The key set it serves, private keys included (to sign with).
    keys: KeySet,
    kids: Vec<String>,
    _server: TestServer,
}

impl JwksServer {
    fn start(mode: Mode) -> Self {
        let (_tmp, dir) = keys_dir_with_template();
        let keys = KeyStore::new(&dir).load().unwrap();
        let body = serde_json::to_string(&keys.jwk_set()).unwrap();
        let kids = keys.keys().iter().map(|k| k.kid().to_owned()).collect();
        let fetches = Arc::new(AtomicUsize::new(0));
        let mode = Arc::new(Mutex::new(mode));
        let (f, m, b) = (fetches.clone(), mode.clone(), body.clone());
        let server = TestServer::start(move || {
            let (f, m, b) = (f.clone(), m.clone(), b.clone());
            App::new().route(
                "/jwks.json",
                web::get().to(move || {
                    let (f, m, b) = (f.clone(), m.clone(), b.clone());
                    async move {
                        f.fetch_add(1, Ordering::SeqCst);
                        let mode = m.lock().unwrap().clone();
                        match mode {
                            Mode::Serve {
                                cache_control,
                                delay,
                            } => {
                                actix_web::rt::time::sleep(delay).await;
                                HttpResponse::Ok()
                                    .insert_header(("Cache-Control", cache_control))
                                    .content_type("application/json")
                                    .body(b)
                            }
                            Mode::Down => HttpResponse::ServiceUnavailable().finish(),
                            Mode::Garbage => HttpResponse::Ok().body("<html>oops</html>"),
                            Mode::Huge => HttpResponse::Ok().body(format!(
                                "{{\"keys\":[],\"pad\":\"{}\"}}",
                                "x".repeat(2 * 1024 * 1024)
                            )),
                        }
                    }
                }),
            )
        });
        Self {
            url: format!("{}/jwks.json", server.url),
            fetches,
            mode,
            keys,
            kids,
            _server: server,
        }
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    /// Asserts that the server was asked `expected` times, or at most one time more per
    /// whole `period` in `span` (the time the calls since the last expected fetch took).
    #[track_caller]
    fn assert_fetches(&self, expected: usize, span: Duration, period: Duration, what: &str) {
        let fetches = self.fetches();
        let extra = usize::try_from(span.as_nanos() / period.as_nanos()).unwrap();
        assert!(
            (expected..=expected + extra).contains(&fetches),
            "{what}: {fetches} fetches, expected {expected} (calls took {span:?})"
        );
    }
}

/// Sleeps until `period` has passed since `since`.
async fn sleep_past(since: Instant, period: Duration) {
    actix_web::rt::time::sleep((since + period).saturating_duration_since(Instant::now())).await;
}

fn serve(max_age: &'static str) -> Mode {
    Mode::Serve {
        cache_control: max_age,
        delay: Duration::ZERO,
    }
}

fn options() -> JwksCacheOptions {
    JwksCacheOptions {
        min_max_age: Duration::ZERO,
        cooldown: Duration::from_millis(500),
        // Far beyond any answer of the local server, even on a loaded machine.
        timeout: Duration::from_secs(10),
        ..JwksCacheOptions::default()
    }
}

fn run<F: std::future::Future>(f: F) -> F::Output {
    actix_web::rt::System::new().block_on(f)
}

#[test]
fn max_age_is_honoured() {
    let max_age = Duration::from_secs(1);
    let server = JwksServer::start(serve("public, max-age=1"));
    let cache = JwksCache::new(&server.url, options()).unwrap();
    run(async {
        let kid = &server.kids[0];
        let start = Instant::now();
        cache.key(kid).await.unwrap();
        assert_eq!(server.fetches(), 1);
        for _ in 0..20 {
            cache.key(kid).await.unwrap();
        }
        let end = Instant::now();
        server.assert_fetches(1, end - start, max_age, "fresh for max-age");
        let before = server.fetches();
        sleep_past(end, max_age).await;
        cache.key(kid).await.unwrap();
        assert_eq!(server.fetches(), before + 1, "refetched once stale");
        // The refetched set holds the issuer's keys: each verifies its signatures.
        for key in server.keys.keys() {
            let cached = cache.key(key.kid()).await.unwrap();
            assert_eq!(cached.alg(), key.alg());
            let signature = key.sign(b"signed by the issuer").unwrap();
            assert!(
                cached.verify(b"signed by the issuer", &signature),
                "{} does not verify its key's signature",
                key.kid()
            );
        }
    });
}

#[test]
fn max_age_is_clamped_by_floor_and_ceiling() {
    let server = JwksServer::start(serve("max-age=0"));
    let opts = JwksCacheOptions {
        min_max_age: Duration::from_secs(60),
        ..options()
    };
    let cache = JwksCache::new(&server.url, opts).unwrap();
    run(async {
        for _ in 0..10 {
            cache.key(&server.kids[0]).await.unwrap();
            actix_web::rt::time::sleep(Duration::from_millis(60)).await;
        }
    });
    assert_eq!(server.fetches(), 1, "max-age=0 is raised to the 60 s floor");

    let server = JwksServer::start(serve("max-age=86400"));
    let ceiling = Duration::from_millis(300);
    let opts = JwksCacheOptions {
        max_max_age: ceiling,
        ..options()
    };
    let cache = JwksCache::new(&server.url, opts).unwrap();
    run(async {
        cache.key(&server.kids[0]).await.unwrap();
        sleep_past(Instant::now(), ceiling).await;
        cache.key(&server.kids[0]).await.unwrap();
    });
    assert_eq!(
        server.fetches(),
        2,
        "a day of max-age is cut to the ceiling"
    );
}

#[test]
fn unknown_kids_refetch_at_most_once_per_cooldown() {
    let server = JwksServer::start(serve("max-age=3600"));
    let cooldown = options().cooldown;
    let cache = JwksCache::new(&server.url, options()).unwrap();
    run(async {
        let start = Instant::now();
        cache.key(&server.kids[0]).await.unwrap();
        for i in 0..50 {
            let err = cache.key(&format!("random-kid-{i}")).await.unwrap_err();
            assert_eq!(err, VerifyError::UnknownKey);
        }
        let end = Instant::now();
        server.assert_fetches(1, end - start, cooldown, "no fetch storm from random kids");
        let before = server.fetches();
        sleep_past(end, cooldown).await;
        let start = Instant::now();
        assert_eq!(
            cache.key("another-random-kid").await.unwrap_err(),
            VerifyError::UnknownKey
        );
        assert_eq!(
            server.fetches(),
            before + 1,
            "one refetch after the cooldown"
        );
        for i in 0..20 {
            let _ = cache.key(&format!("more-{i}")).await;
        }
        server.assert_fetches(before + 1, start.elapsed(), cooldown, "within the cooldown");
        // Known kids never wait for anything.
        cache.key(&server.kids[1]).await.unwrap();
    });
}

#[test]
fn a_down_or_garbage_issuer_keeps_the_last_good_key_set() {
    let server = JwksServer::start(serve("max-age=0"));
    let cooldown = Duration::from_millis(200);
    let cache = JwksCache::new(
        &server.url,
        JwksCacheOptions {
            cooldown,
            ..options()
        },
    )
    .unwrap();
    run(async {
        let kid = &server.kids[0];
        cache.key(kid).await.unwrap();
        let mut end = Instant::now();
        for mode in [Mode::Down, Mode::Garbage, Mode::Huge] {
            server.set(mode);
            let before = server.fetches();
            sleep_past(end, cooldown).await;
            let start = Instant::now();
            cache
                .key(kid)
                .await
                .expect("last good key set still serves");
            assert_eq!(server.fetches(), before + 1, "it did try");
            // Within the cooldown a failing issuer is not asked again.
            for _ in 0..10 {
                cache.key(kid).await.unwrap();
            }
            end = Instant::now();
            server.assert_fetches(before + 1, end - start, cooldown, "within the cooldown");
        }
        server.set(serve("max-age=0"));
        sleep_past(end, cooldown).await;
        cache.key(kid).await.unwrap();
    });
}

#[test]
fn no_key_set_ever_fetched_is_key_set_unavailable() {
    let server = JwksServer::start(Mode::Down);
    let cache = JwksCache::new(&server.url, options()).unwrap();
    let start = Instant::now();
    run(async {
        let err = cache.key("any").await.unwrap_err();
        assert!(
            matches!(
                err,
                VerifyError::KeySetUnavailable(KeySetError::Status { status: 503, .. })
            ),
            "{err:?}"
        );
        // And the down issuer is not hammered.
        for _ in 0..10 {
            assert!(matches!(
                cache.key("any").await,
                Err(VerifyError::KeySetUnavailable(_))
            ));
        }
    });
    server.assert_fetches(1, start.elapsed(), options().cooldown, "hammered");
}

#[test]
fn concurrent_first_use_makes_one_fetch() {
    let server = JwksServer::start(Mode::Serve {
        cache_control: "max-age=300",
        delay: Duration::from_millis(300),
    });
    let cache = Arc::new(JwksCache::new(&server.url, options()).unwrap());
    // Callers on several threads (as actix workers are), all at once.
    let threads: Vec<_> = (0..16)
        .map(|i| {
            let cache = cache.clone();
            let kid = server.kids[i % 2].clone();
            thread::spawn(move || run(async move { cache.key(&kid).await.map(|_| ()) }))
        })
        .collect();
    for t in threads {
        t.join().unwrap().unwrap();
    }
    assert_eq!(server.fetches(), 1);
}

#[test]
fn slow_issuers_time_out_and_huge_responses_are_refused() {
    let server = JwksServer::start(Mode::Serve {
        cache_control: "max-age=300",
        delay: Duration::from_secs(3),
    });
    let opts = JwksCacheOptions {
        timeout: Duration::from_millis(300),
        ..options()
    };
    let cache = JwksCache::new(&server.url, opts).unwrap();
    let start = Instant::now();
    let err = run(async { cache.key(&server.kids[0]).await.unwrap_err() });
    assert!(matches!(err, VerifyError::KeySetUnavailable(_)), "{err:?}");
    assert!(start.elapsed() < Duration::from_secs(2));

    let server = JwksServer::start(Mode::Huge);
    let cache = JwksCache::new(&server.url, options()).unwrap();
    let err = run(async { cache.key("x").await.unwrap_err() });
    assert!(
        matches!(
            err,
            VerifyError::KeySetUnavailable(KeySetError::TooLarge { .. })
        ),
        "{err:?}"
    );
}

#[test]
fn discovery_finds_the_jwks_and_checks_the_issuer() {
    let app = TestApp::spawn();
    let kid = app.jwks().keys[0].kid.clone();
    run(async {
        let cache = JwksCache::discover(&app.issuer, options()).await.unwrap();
        assert_eq!(
            cache.jwks_uri(),
            format!("{}/.well-known/jwks.json", app.url)
        );
        cache.key(&kid).await.unwrap();
        // The document's issuer must be exactly the one asked for.
        let other = format!("{}/", app.issuer);
        let err = JwksCache::discover(&other, options()).await.unwrap_err();
        assert!(
            matches!(
                err,
                VerifyError::KeySetUnavailable(KeySetError::IssuerMismatch { ref expected, .. })
                    if *expected == other
            ),
            "{err:?}"
        );
    });
}
