//! Single-use assertion ids in the PostgreSQL store, through `Stores` as the server opens
//! it: replicas on one database accept an id once between them (per issuer, until it
//! expires, racing or not); expired ids are swept a bounded batch at a time; a database
//! stopped or hung refuses every id in one line within the check's limit, without blocking
//! the caller's thread, and the ids work again once it is back.
//!
//! A test that stops PostgreSQL has a cluster of its own ([`PrivateCluster`]); the others a
//! database of their own ([`TestDatabase`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jwt_issuer::Config;
use jwt_issuer::database::replay::CHECK_TIMEOUT;
use jwt_issuer::database::{DatabaseUrl, Kek, KekRing};
use jwt_issuer::oauth::replay::replay_key;
use jwt_issuer::oauth::{ReplayCache, ReplayError};
use jwt_issuer::storage::Stores;

use crate::helpers::wait_until;
use crate::pg::{PrivateCluster, TestDatabase};
use crate::pg_faults::{Proxy, port_of, with_port};

/// A password no message may show: with `-A trust` the private cluster accepts any.
const PASSWORD: &str = "pw-must-not-leak-5d1c";

/// How soon the ids work again once the database answers: new connections, and those
/// from before discarded by the pool within their own timeouts.
const RECOVERY: Duration = Duration::from_secs(15);

/// How much longer than [`CHECK_TIMEOUT`] a refusal may take (a loaded machine).
const SLACK: Duration = Duration::from_millis(1500);

#[test]
fn replicas_on_one_database_accept_an_assertion_id_once_between_them() {
    let db = TestDatabase::create();
    let kek = test_kek();
    let (one, two) = (open(&db.url, &kek), open(&db.url, &kek));
    let (a, b) = (one.replay_cache(), two.replay_cache());
    let later = now() + 60;

    assert_eq!(first_use(&*a, "svc", "j1", later), Ok(true));
    assert_eq!(
        first_use(&*b, "svc", "j1", later),
        Ok(false),
        "the other replica"
    );
    assert_eq!(
        first_use(&*a, "svc", "j1", later),
        Ok(false),
        "the same replica"
    );
    assert_eq!(
        first_use(&*one.clone().replay_cache(), "svc", "j1", later),
        Ok(false),
        "a clone of the first replica's stores"
    );
    // Ids are per issuer: another client may use the same jti.
    assert_eq!(first_use(&*b, "other", "j1", later), Ok(true));
    assert_eq!(first_use(&*a, "other", "j1", later), Ok(false));

    // An id whose expiry has passed (on the database's clock) may come again, once more.
    assert_eq!(first_use(&*a, "svc", "old", now() - 1), Ok(true));
    assert_eq!(first_use(&*b, "svc", "old", later), Ok(true));
    assert_eq!(first_use(&*a, "svc", "old", later), Ok(false));

    // Only the hashes are stored, never a jti or an issuer.
    let keys: Vec<Vec<u8>> = db
        .client()
        .query("SELECT key FROM jwt_issuer_used_jtis ORDER BY key", &[])
        .expect("read the ids")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut expected: Vec<Vec<u8>> = [("svc", "j1"), ("other", "j1"), ("svc", "old")]
        .iter()
        .map(|(issuer, jti)| replay_key(issuer, jti).to_vec())
        .collect();
    expected.sort();
    assert_eq!(keys, expected);
}

#[test]
fn replicas_racing_one_assertion_id_accept_it_exactly_once() {
    let db = TestDatabase::create();
    let kek = test_kek();
    let replicas = [open(&db.url, &kek), open(&db.url, &kek)];
    let later = now() + 60;
    for round in 0..5 {
        let jti = format!("raced-{round}");
        let answers: Vec<Result<bool, ReplayError>> = std::thread::scope(|s| {
            let racers: Vec<_> = (0..16)
                .map(|i| {
                    let cache = replicas[i % 2].replay_cache();
                    let jti = jti.as_str();
                    s.spawn(move || first_use(&*cache, "svc", jti, later))
                })
                .collect();
            racers.into_iter().map(|r| r.join().unwrap()).collect()
        });
        let accepted = answers.iter().filter(|a| **a == Ok(true)).count();
        assert_eq!(accepted, 1, "round {round}: {answers:?}");
        assert!(answers.iter().all(Result::is_ok), "{answers:?}");
    }
}

#[test]
fn expired_ids_are_swept_a_bounded_batch_at_a_time_and_unexpired_ones_kept() {
    let db = TestDatabase::create();
    let kek = test_kek();
    // Made by a first open (the migrations), then filled as by a busy past.
    drop(open(&db.url, &kek));
    db.client()
        .batch_execute(
            "INSERT INTO jwt_issuer_used_jtis (key, expires)
             SELECT sha256(i::text::bytea), now() - interval '1 hour'
             FROM generate_series(1, 1500) AS i;
             INSERT INTO jwt_issuer_used_jtis (key, expires)
             SELECT sha256(('kept' || i)::bytea), now() + interval '1 hour'
             FROM generate_series(1, 10) AS i",
        )
        .expect("fill the table");
    let count = |cond: &str| -> i64 {
        db.client()
            .query_one(
                &format!("SELECT count(*) FROM jwt_issuer_used_jtis WHERE {cond}"),
                &[],
            )
            .expect("count the ids")
            .get(0)
    };
    let stores = open(&db.url, &kek);
    let cache = stores.replay_cache();
    let later = now() + 60;

    // The first check of a process sweeps, in the background: 1,000 at most.
    assert_eq!(first_use(&*cache, "svc", "sweep-0", later), Ok(true));
    wait_until(Duration::from_secs(10), "the first sweep", || {
        count("expires < now()") == 500
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(count("expires < now()"), 500, "one batch per sweep");
    // The next sweep comes 256 checks later.
    for i in 1..256 {
        assert_eq!(
            first_use(&*cache, "svc", &format!("sweep-{i}"), later),
            Ok(true)
        );
    }
    assert_eq!(
        count("expires < now()"),
        500,
        "no sweep before the 257th check"
    );
    assert_eq!(first_use(&*cache, "svc", "sweep-256", later), Ok(true));
    wait_until(Duration::from_secs(10), "the second sweep", || {
        count("expires < now()") == 0
    });
    assert_eq!(
        count("expires >= now()"),
        10 + 257,
        "unexpired ids are kept"
    );
    assert_eq!(first_use(&*cache, "svc", "sweep-0", later), Ok(false));
}

#[test]
fn a_stopped_database_refuses_assertion_ids_within_seconds_and_they_work_again_once_it_is_back() {
    let cluster = PrivateCluster::start();
    let url = cluster
        .url()
        .replacen("postgres@", &format!("postgres:{PASSWORD}@"), 1);
    let stores = open(&url, &test_kek());
    let cache = stores.replay_cache();
    let later = now() + 60;
    assert_eq!(first_use(&*cache, "svc", "before", later), Ok(true));

    cluster.stop();
    // Neither a new id nor one used before is answered: both refused, in one line naming
    // the database without the password, well within the limit.
    for jti in ["new-1", "before", "new-2", "new-3"] {
        let started = Instant::now();
        let answer = first_use(&*cache, "svc", jti, later);
        let took = started.elapsed();
        let Err(ReplayError::Store(line)) = &answer else {
            panic!("{jti} while the database is down: {answer:?}");
        };
        assert!(took < CHECK_TIMEOUT + SLACK, "{jti} took {took:?}");
        assert!(
            line.contains(&format!("127.0.0.1:{}/postgres", port_of(&cluster.url()))),
            "{line}"
        );
        assert!(!line.contains(PASSWORD) && !line.contains('\n'), "{line}");
        eprintln!("{jti}: refused after {took:?}: {line}");
    }

    cluster.start_again();
    wait_until(RECOVERY, "ids to be answered again", || {
        first_use(&*cache, "svc", "after", later).is_ok()
    });
    // Kept across the restart; the ids refused meanwhile were never recorded.
    assert_eq!(first_use(&*cache, "svc", "before", later), Ok(false));
    assert_eq!(first_use(&*cache, "svc", "new-1", later), Ok(true));
}

#[test]
fn a_database_that_hangs_refuses_assertion_ids_within_the_limit_without_blocking_the_callers_thread()
 {
    let db = TestDatabase::create();
    let proxy = Proxy::start(port_of(&db.url));
    let stores = open(&with_port(&db.url, proxy.port), &test_kek());
    let db_name = format!(":{}/", proxy.port);
    let cache = stores.replay_cache();
    let later = now() + 60;
    assert_eq!(first_use(&*cache, "svc", "before", later), Ok(true));

    // Every connection goes silent (no reset, no answer), new ones too.
    proxy.partition();
    // The caller's thread, as an actix worker's: one thread for every task. A check that
    // blocked it would stop the ticker too.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    let ticks = Arc::new(AtomicUsize::new(0));
    for jti in ["new", "before"] {
        let started = Instant::now();
        ticks.store(0, Ordering::SeqCst);
        let counted = ticks.clone();
        let answer = runtime.block_on(async {
            let ticker = tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    counted.fetch_add(1, Ordering::SeqCst);
                }
            });
            let answer = cache.first_use("svc", jti, later).await;
            ticker.abort();
            answer
        });
        let took = started.elapsed();
        // "no answer within 3s", or the pool's own connect timeout when it comes first.
        assert!(
            matches!(&answer, Err(ReplayError::Store(line)) if line.contains(&db_name)),
            "{jti} while the database hangs: {answer:?}"
        );
        assert!(took < CHECK_TIMEOUT + SLACK, "{jti} took {took:?}");
        let ticked = ticks.load(Ordering::SeqCst);
        assert!(
            ticked >= 100,
            "the caller's thread ran {ticked} ticks of 10 ms in {took:?}"
        );
        eprintln!("{jti}: refused after {took:?}, {ticked} ticks meanwhile");
    }

    proxy.heal();
    wait_until(RECOVERY, "ids to be answered again", || {
        first_use(&*cache, "svc", "after", later).is_ok()
    });
    assert_eq!(first_use(&*cache, "svc", "before", later), Ok(false));
}

/// The stores a replica opens on `url` (its schema migrated).
fn open(url: &str, kek: &KekRing) -> Stores {
    let config = Config {
        store: Some(DatabaseUrl::new(url)),
        kek: Some(kek.clone()),
        ..Config::default()
    };
    Stores::open(&config).unwrap_or_else(|e| panic!("cannot open the store: {e}"))
}

fn test_kek() -> KekRing {
    KekRing::new(Kek::generate().0, Vec::new())
}

/// One check, awaited on a runtime without a timer: the limit is kept by the database's
/// own runtime, whatever runs the caller.
fn first_use(
    cache: &dyn ReplayCache,
    issuer: &str,
    jti: &str,
    exp: u64,
) -> Result<bool, ReplayError> {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime")
        .block_on(cache.first_use(issuer, jti, exp))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}
