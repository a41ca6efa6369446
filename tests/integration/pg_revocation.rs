//! Revoked tokens (RFC 7009) in the PostgreSQL store, through `Stores` as the server opens
//! it: a revocation at one replica reaches another's snapshot once its version moves
//! (moving the revoked counter alone, with a NOTIFY); revoking twice is no change; expired
//! ids are never loaded and are swept a bounded batch at a time; a full list refuses new
//! ids; a counter that goes back fails every load until a restart; a database stopped
//! fails revocations in one line without the password and leaves the snapshot reporting
//! an unread change until it is back.
//!
//! A test that stops PostgreSQL has a cluster of its own ([`PrivateCluster`]); the others a
//! database of their own ([`TestDatabase`]).

use std::time::{Duration, Instant};

use jwt_issuer::Config;
use jwt_issuer::database::{DatabaseUrl, Kek, KekRing};
use jwt_issuer::oauth::revocation::{
    MAX_REVOKED, RevocationBackend, RevocationError, Revocations, Revoked,
};
use jwt_issuer::storage::Stores;
use postgres::fallible_iterator::FallibleIterator as _;

use crate::helpers::{unix_now, wait_until};
use crate::pg::{PrivateCluster, TestDatabase};
use crate::pg_faults::port_of;

/// A password no message may show: with `-A trust` the private cluster accepts any.
const PASSWORD: &str = "pw-must-not-leak-81c7";

/// How long a replica may take to see another's revocation in its version: it polls the
/// counters on every call, so at once, give or take a loaded machine.
const PROPAGATION: Duration = Duration::from_secs(5);

/// How long a call may take to fail while the database is down: a refused connection, or
/// the pool's connect timeout (3 s), well within a call's limit (10 s).
const REFUSAL: Duration = Duration::from_secs(10);

/// How soon the list is read again once the database answers.
const RECOVERY: Duration = Duration::from_secs(15);

#[test]
fn a_revocation_at_one_replica_reaches_another_once_its_version_moves_and_twice_is_no_change() {
    let db = TestDatabase::create();
    let kek = test_kek();
    let (one, two) = (open(&db.url, &kek), open(&db.url, &kek));
    let (a, b) = (
        Revocations::new(one.revocations()),
        Revocations::new(two.revocations()),
    );
    let backend = two.revocations();
    assert_eq!(backend.version(), None, "never revoked anything");
    assert_eq!(b.contains("t1"), Ok(false));
    let counters = || -> (i64, i64, i64) {
        let row = db
            .client()
            .query_one(
                "SELECT keys, clients, revoked FROM jwt_issuer_versions",
                &[],
            )
            .expect("read the counters");
        (row.get(0), row.get(1), row.get(2))
    };
    let (keys, clients, revoked) = counters();
    let mut listener = db.client();
    listener
        .batch_execute("LISTEN jwt_issuer_changes")
        .expect("listen");

    let exp = unix_now() + 60;
    a.revoke(entry("t1", exp)).expect("revoke t1");
    assert_eq!(a.contains("t1"), Ok(true), "the revoking replica at once");
    let seen = wait_for_version(&*backend, None);
    assert_eq!(b.reload(false), None);
    assert_eq!(
        b.contains("t1"),
        Ok(true),
        "the other replica after its reload"
    );
    assert_eq!(b.len(), 1);
    // Its own counter moved, the keys' and clients' did not: they are not reloaded for it.
    assert_eq!(counters(), (keys, clients, revoked + 1));
    let notified = listener
        .notifications()
        .timeout_iter(PROPAGATION)
        .next()
        .expect("read the notifications")
        .expect("a NOTIFY for the revocation");
    assert_eq!(notified.payload(), "jwt_issuer_revoked");

    // The same id again, from either replica: fine, and no change at all.
    a.revoke(entry("t1", exp)).expect("revoke t1 again");
    b.revoke(entry("t1", exp))
        .expect("revoke t1 at the other replica");
    assert_eq!(counters(), (keys, clients, revoked + 1), "no change");
    assert_eq!(backend.version(), seen);
    let rows: Vec<(String, i64)> = db
        .client()
        .query(
            "SELECT jti, extract(epoch FROM expires)::bigint FROM jwt_issuer_revoked",
            &[],
        )
        .expect("read the list")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(rows, [("t1".to_owned(), i64::try_from(exp).unwrap())]);
    assert_eq!(
        backend.load().expect("load"),
        [entry("t1", exp)],
        "the exp comes back as stored"
    );

    // An id stored with an earlier expiry (by hand, or a jti seen again) is kept until the
    // later one: never left to expire while its token is still valid.
    db.client()
        .execute(
            "INSERT INTO jwt_issuer_revoked VALUES ('again', now() - interval '1 minute')",
            &[],
        )
        .expect("insert an expired row");
    a.revoke(entry("again", exp)).expect("revoke again");
    wait_for_version(&*backend, seen);
    assert_eq!(b.reload(false), None);
    assert_eq!(b.contains("again"), Ok(true));
}

#[test]
fn expired_revoked_ids_are_never_loaded() {
    let db = TestDatabase::create();
    let kek = test_kek();
    let (one, two) = (open(&db.url, &kek), open(&db.url, &kek));
    let now = unix_now();
    let a = Revocations::new(one.revocations());
    a.revoke(entry("live", now + 60)).expect("revoke live");
    a.revoke(entry("old", now - 600))
        .expect("revoke an expired one");
    // Expired on the database's clock, whatever this machine's says: long ago, and a
    // second ago (kept five minutes for clocks that disagree).
    db.client()
        .batch_execute(
            "INSERT INTO jwt_issuer_revoked VALUES ('stale', now() - interval '10 minutes');
             INSERT INTO jwt_issuer_revoked VALUES ('just', now() - interval '1 second')",
        )
        .expect("insert expired rows");
    let b = Revocations::new(two.revocations());
    assert_eq!(b.unread_change(), None);
    assert_eq!(b.contains("live"), Ok(true));
    assert_eq!(
        b.contains("just"),
        Ok(true),
        "kept past expiry for the clocks"
    );
    assert_eq!(b.contains("old"), Ok(false));
    assert_eq!(b.contains("stale"), Ok(false));
    let mut loaded: Vec<String> = two
        .revocations()
        .load()
        .expect("load")
        .into_iter()
        .map(|r| r.jti)
        .collect();
    loaded.sort();
    assert_eq!(loaded, ["just", "live"]);
}

#[test]
fn expired_revoked_ids_are_swept_a_bounded_batch_at_a_time_and_unexpired_ones_kept() {
    let db = TestDatabase::create();
    let kek = test_kek();
    // Made by a first open (the migrations), then filled as by a busy past.
    drop(open(&db.url, &kek));
    db.client()
        .batch_execute(
            "INSERT INTO jwt_issuer_revoked (jti, expires)
             SELECT 'expired-' || i, now() - interval '1 hour' FROM generate_series(1, 1500) AS i;
             INSERT INTO jwt_issuer_revoked (jti, expires)
             SELECT 'kept-' || i, now() + interval '1 hour' FROM generate_series(1, 10) AS i",
        )
        .expect("fill the table");
    let count = |cond: &str| -> i64 {
        db.client()
            .query_one(
                &format!("SELECT count(*) FROM jwt_issuer_revoked WHERE {cond}"),
                &[],
            )
            .expect("count the ids")
            .get(0)
    };
    let stores = open(&db.url, &kek);
    let list = stores.revocations();
    let exp = unix_now() + 60;

    // The first revocation of a process sweeps, in its transaction: 1,000 at most.
    list.revoke(entry("r-0", exp)).expect("revoke");
    assert_eq!(count("expires <= now()"), 500, "one batch per sweep");
    // (Rows are swept five minutes past their expiry; these expired an hour ago.)
    // The next sweep comes 64 revocations later.
    for i in 1..64 {
        list.revoke(entry(&format!("r-{i}"), exp)).expect("revoke");
    }
    assert_eq!(count("expires <= now()"), 500, "no sweep before the 65th");
    list.revoke(entry("r-64", exp)).expect("revoke");
    assert_eq!(count("expires <= now()"), 0);
    assert_eq!(count("expires > now()"), 10 + 65, "unexpired ids are kept");
    assert_eq!(list.load().expect("load").len(), 10 + 65);
}

#[test]
fn a_full_revocation_list_refuses_new_ids_and_still_takes_those_it_holds() {
    let db = TestDatabase::create();
    let kek = test_kek();
    drop(open(&db.url, &kek));
    // One short of full, and expired ids beside them, which do not count.
    let unexpired = i64::try_from(MAX_REVOKED).unwrap() - 1;
    db.client()
        .execute(
            "INSERT INTO jwt_issuer_revoked (jti, expires)
             SELECT 'filled-' || i, now() + interval '1 hour' FROM generate_series(1, $1::bigint) AS i",
            &[&unexpired],
        )
        .expect("fill the table");
    db.client()
        .batch_execute(
            "INSERT INTO jwt_issuer_revoked (jti, expires)
             SELECT 'expired-' || i, now() - interval '1 hour' FROM generate_series(1, 5) AS i",
        )
        .expect("add expired ids");
    let stores = open(&db.url, &kek);
    let list = stores.revocations();
    let exp = unix_now() + 60;
    list.revoke(entry("last", exp))
        .expect("the last free place is taken");
    let version = list.version();
    match list.revoke(entry("one-too-many", exp)) {
        Err(RevocationError::Full(n)) => assert_eq!(n, MAX_REVOKED),
        other => panic!("a full list took another id: {other:?}"),
    }
    assert_eq!(list.version(), version, "nothing changed");
    // An id it holds is revoked already: no change, no refusal.
    list.revoke(entry("last", exp))
        .expect("an id already revoked");
    list.revoke(entry("filled-7", unix_now() + 60))
        .expect("an id already revoked");
    let stored: i64 = db
        .client()
        .query_one(
            "SELECT count(*) FROM jwt_issuer_revoked WHERE jti = 'one-too-many'",
            &[],
        )
        .expect("count")
        .get(0);
    assert_eq!(stored, 0);
}

#[test]
fn a_stopped_database_fails_revocations_in_one_line_and_the_snapshot_reports_an_unread_change() {
    let cluster = PrivateCluster::start();
    let url = cluster
        .url()
        .replacen("postgres@", &format!("postgres:{PASSWORD}@"), 1);
    let stores = open(&url, &test_kek());
    let backend = stores.revocations();
    let revocations = Revocations::new(backend.clone());
    let exp = unix_now() + 60;
    revocations
        .revoke(entry("before", exp))
        .expect("revoke before the stop");
    let name = format!("127.0.0.1:{}/postgres", port_of(&cluster.url()));

    cluster.stop();
    let one_line = |what: &str, error: &RevocationError, took: Duration| {
        let line = error.to_string();
        assert!(
            matches!(error, RevocationError::Database { .. }),
            "{what}: {error:?}"
        );
        assert!(line.contains(&name), "{what}: {line}");
        assert!(
            !line.contains(PASSWORD) && !line.contains("postgres@") && !line.contains('\n'),
            "{what}: {line}"
        );
        assert!(took < REFUSAL, "{what} took {took:?}");
        eprintln!("{what}: failed after {took:?}: {line}");
    };
    let started = Instant::now();
    let error = revocations
        .revoke(entry("during", exp))
        .expect_err("a revocation while the database is down");
    one_line("revoke", &error, started.elapsed());
    assert_eq!(
        revocations.contains("during"),
        Ok(false),
        "not in the snapshot: it was not stored"
    );
    let started = Instant::now();
    let error = backend
        .load()
        .expect_err("a load while the database is down");
    one_line("load", &error, started.elapsed());

    // A forced read (as at a start, or a SIGHUP) fails: nothing may be said not revoked.
    let reason = revocations.reload(true).expect("the failed read's reason");
    assert!(
        reason.contains(&name) && !reason.contains(PASSWORD),
        "{reason}"
    );
    for jti in ["before", "during", "unknown"] {
        assert!(
            revocations.contains(jti).is_err(),
            "{jti} answered while the list cannot be read"
        );
    }
    assert!(revocations.unread_change().is_some());
    // Still failing on an unforced reload: the change stays unread.
    assert!(revocations.reload(false).is_some());
    assert!(revocations.contains("unknown").is_err());

    cluster.start_again();
    wait_until(RECOVERY, "the list to be read again", || {
        revocations.reload(false).is_none()
    });
    assert_eq!(revocations.unread_change(), None);
    assert_eq!(revocations.contains("before"), Ok(true));
    assert_eq!(revocations.contains("during"), Ok(false));
    revocations
        .revoke(entry("after", exp))
        .expect("revoke once the database is back");
}

#[test]
fn a_revoked_counter_that_goes_back_fails_every_load_until_a_restart() {
    let db = TestDatabase::create();
    let kek = test_kek();
    let (one, writer) = (open(&db.url, &kek), open(&db.url, &kek));
    let backend = one.revocations();
    let exp = unix_now() + 60;
    writer
        .revocations()
        .revoke(entry("a", exp))
        .expect("revoke a");
    writer
        .revocations()
        .revoke(entry("b", exp))
        .expect("revoke b");
    assert_eq!(backend.load().expect("load").len(), 2);
    // An older copy of the database, as after a restore: its list may miss revocations.
    db.client()
        .execute("UPDATE jwt_issuer_versions SET revoked = revoked - 1", &[])
        .expect("move the counter back");
    let went_back = |what: &str| {
        let error = backend.load().expect_err(what);
        assert!(error.to_string().contains("went back"), "{what}: {error}");
    };
    went_back("a load of an older copy");
    // The counter climbs past where it was (other replicas write on): still refused.
    for jti in ["c", "d", "e"] {
        writer
            .revocations()
            .revoke(entry(jti, exp))
            .expect("revoke");
    }
    went_back("a load once the counter climbed back");
    let revocations = Revocations::new(backend.clone());
    assert!(revocations.unread_change().is_some());
    assert!(revocations.contains("a").is_err());
    // A restart takes the database as it is.
    let restarted = open(&db.url, &kek);
    assert_eq!(restarted.revocations().load().expect("load").len(), 5);
}

/// Waits until `backend`'s version is no longer `before`; the new one.
#[track_caller]
fn wait_for_version(
    backend: &dyn RevocationBackend,
    before: Option<jwt_issuer::store::StoreVersion>,
) -> Option<jwt_issuer::store::StoreVersion> {
    let mut now = backend.version();
    wait_until(PROPAGATION, "the revocation list's version to move", || {
        now = backend.version();
        now != before
    });
    now
}

fn entry(jti: &str, exp: u64) -> Revoked {
    Revoked {
        jti: jti.to_owned(),
        exp,
    }
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
