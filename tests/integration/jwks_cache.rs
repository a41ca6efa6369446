//! JwksCache against a real local JWKS server that counts fetches: max-age, unknown-kid
//! cooldown, a down or garbage issuer, one fetch for concurrent first use, limits.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use actix_web::{App, HttpResponse, web};
use jwt_issuer::KeyStore;
use jwt_issuer::verify::{JwksCache, JwksCacheOptions, KeySetError, VerifyError};

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
    body: String,
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
            body,
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
        timeout: Duration::from_secs(2),
        ..JwksCacheOptions::default()
    }
}

fn run<F: std::future::Future>(f: F) -> F::Output {
    actix_web::rt::System::new().block_on(f)
}

#[test]
fn max_age_is_honoured() {
    let server = JwksServer::start(serve("public, max-age=1"));
    let cache = JwksCache::new(&server.url, options()).unwrap();
    run(async {
        let kid = &server.kids[0];
        cache.key(kid).await.unwrap();
        assert_eq!(server.fetches(), 1);
        for _ in 0..20 {
            cache.key(kid).await.unwrap();
        }
        assert_eq!(server.fetches(), 1, "fresh for max-age");
        actix_web::rt::time::sleep(Duration::from_millis(1100)).await;
        cache.key(kid).await.unwrap();
        assert_eq!(server.fetches(), 2, "refetched once stale");
    });
    assert!(!server.body.is_empty());
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
    let opts = JwksCacheOptions {
        max_max_age: Duration::from_millis(300),
        ..options()
    };
    let cache = JwksCache::new(&server.url, opts).unwrap();
    run(async {
        cache.key(&server.kids[0]).await.unwrap();
        actix_web::rt::time::sleep(Duration::from_millis(600)).await;
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
    let cache = JwksCache::new(&server.url, options()).unwrap();
    run(async {
        cache.key(&server.kids[0]).await.unwrap();
        for i in 0..50 {
            let err = cache.key(&format!("random-kid-{i}")).await.unwrap_err();
            assert_eq!(err, VerifyError::UnknownKey);
        }
        assert_eq!(server.fetches(), 1, "no fetch storm from random kids");
        actix_web::rt::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(
            cache.key("another-random-kid").await.unwrap_err(),
            VerifyError::UnknownKey
        );
        assert_eq!(server.fetches(), 2, "one refetch after the cooldown");
        for i in 0..20 {
            let _ = cache.key(&format!("more-{i}")).await;
        }
        assert_eq!(server.fetches(), 2);
        // Known kids never wait for anything.
        cache.key(&server.kids[1]).await.unwrap();
    });
}

#[test]
fn a_down_or_garbage_issuer_keeps_the_last_good_key_set() {
    let server = JwksServer::start(serve("max-age=0"));
    let cache = JwksCache::new(
        &server.url,
        JwksCacheOptions {
            cooldown: Duration::from_millis(200),
            ..options()
        },
    )
    .unwrap();
    run(async {
        let kid = &server.kids[0];
        cache.key(kid).await.unwrap();
        for mode in [Mode::Down, Mode::Garbage, Mode::Huge] {
            server.set(mode);
            let before = server.fetches();
            actix_web::rt::time::sleep(Duration::from_millis(250)).await;
            cache
                .key(kid)
                .await
                .expect("last good key set still serves");
            assert_eq!(server.fetches(), before + 1, "it did try");
            // Within the cooldown a failing issuer is not asked again.
            for _ in 0..10 {
                cache.key(kid).await.unwrap();
            }
            assert_eq!(server.fetches(), before + 1);
        }
        server.set(serve("max-age=0"));
        actix_web::rt::time::sleep(Duration::from_millis(250)).await;
        cache.key(kid).await.unwrap();
    });
}

#[test]
fn no_key_set_ever_fetched_is_key_set_unavailable() {
    let server = JwksServer::start(Mode::Down);
    let cache = JwksCache::new(&server.url, options()).unwrap();
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
    assert_eq!(server.fetches(), 1);
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
