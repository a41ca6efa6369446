//! The PostgreSQL store through the real binary: a KEK missing, malformed or wrong is
//! refused in one line; a ciphertext moved or altered never serves; `store rewrap`,
//! `store import` and `store export` keep kids, states and tokens; a version 1 or 2 schema
//! is migrated keeping its rows and counters; a newer schema and a keys table emptied by
//! hand fail closed.
//! Each test has a database of its own.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use jwt_issuer::JwkSet;
use jwt_issuer::database::{Kek, SCHEMA_VERSION, kek::MAKE_KEK};
use tempfile::TempDir;

use crate::helpers::{
    Output, PATIENCE, ServeProcess, TestClient, issue_token, keys_dir_with_template, list_dir,
    mode, run_cli, run_cli_with_env, verify_with_jwks, wait_until,
};
use crate::pg::TestDatabase;

/// The issuer of the tokens `token issue` signs here.
const ISSUER: &str = "https://issuer.test";

/// A KEK: its base64 text (what JWT_ISSUER_KEK holds) and its id.
struct TestKek {
    text: String,
    id: String,
}

impl TestKek {
    fn generate() -> Self {
        let (kek, text) = Kek::generate();
        Self {
            text: text.to_string(),
            id: kek.id().to_owned(),
        }
    }
}

/// A database of the test's own, the KEK its keys are sealed under, and a keys dir the
/// binary is pointed at (the PostgreSQL store never uses it).
struct PgStore {
    db: TestDatabase,
    kek: TestKek,
    dir: PathBuf,
    tmp: TempDir,
}

impl PgStore {
    fn new() -> Self {
        let tmp = TempDir::new().expect("temp dir");
        Self {
            db: TestDatabase::create(),
            kek: TestKek::generate(),
            dir: tmp.path().join("unused-keys"),
            tmp,
        }
    }

    /// As [`PgStore::new`], holding the template keys (ES256 and RS256, both active): an
    /// import, which generates no RSA key.
    fn with_template_keys() -> (Self, TempDir) {
        let store = Self::new();
        let (tmp, keys) = keys_dir_with_template();
        store.ok(&["store", "import", "--from-keys-dir", keys.to_str().unwrap()]);
        (store, tmp)
    }

    /// The binary on this store with its KEK.
    fn run(&self, args: &[&str]) -> Output {
        self.run_with_kek(args, &[("JWT_ISSUER_KEK", self.kek.text.as_str())])
    }

    /// The binary on this store with `kek_env` (KEK variables) instead of its KEK.
    fn run_with_kek(&self, args: &[&str], kek_env: &[(&str, &str)]) -> Output {
        let mut env = vec![("JWT_ISSUER_STORE", self.db.url.as_str())];
        env.extend_from_slice(kek_env);
        run_cli_with_env(&self.dir, args, &env)
    }

    /// [`PgStore::run`], which must succeed; its stdout.
    #[track_caller]
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_eq!(out.code, Some(0), "{args:?}: {}", out.stderr);
        out.stdout
    }

    /// `serve` on this store with `kek_env`.
    fn serve_with_kek(&self, kek_env: &[(&str, &str)]) -> ServeProcess {
        let mut env = vec![("JWT_ISSUER_STORE", self.db.url.as_str())];
        env.extend_from_slice(kek_env);
        ServeProcess::start_with_env(&self.dir, &[], &env)
    }

    /// `serve` on this store with its KEK.
    fn serve(&self) -> ServeProcess {
        self.serve_with_kek(&[("JWT_ISSUER_KEK", self.kek.text.as_str())])
    }

    /// Registers `id`; the client with its secret.
    fn add_client(&self, id: &str) -> TestClient {
        TestClient::new(id, self.ok(&["clients", "add", id]).trim())
    }

    /// One column of every key row, in the store's order.
    fn column(&self, sql: &str) -> Vec<String> {
        self.db
            .client()
            .query(sql, &[])
            .expect("query the keys")
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    /// Every key row in full, and the change counters: what "nothing changed" compares.
    fn snapshot(&self) -> Vec<String> {
        self.column(
            "SELECT k::text FROM jwt_issuer_keys k
             UNION ALL SELECT c::text FROM jwt_issuer_clients c
             UNION ALL SELECT v::text FROM jwt_issuer_versions v
             ORDER BY 1",
        )
    }

    /// The kid of the key of `alg` in `state`.
    fn kid(&self, alg: &str, state: &str) -> String {
        let mut kids = self
            .db
            .client()
            .query(
                "SELECT kid FROM jwt_issuer_keys WHERE alg = $1 AND state = $2",
                &[&alg, &state],
            )
            .expect("query the keys");
        assert_eq!(kids.len(), 1, "one {state} {alg} key");
        kids.remove(0).get(0)
    }
}

/// Fails unless the command failed with exactly one line on stderr, naming no secret and
/// no key material; that line.
#[track_caller]
fn one_line_refusal(out: &Output, secrets: &[&str]) -> String {
    assert_ne!(out.code, Some(0), "succeeded: {}{}", out.stdout, out.stderr);
    assert_eq!(out.code, Some(1), "not an orderly exit: {}", out.stderr);
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {}", out.stderr);
    assert!(lines[0].starts_with("error: "), "{}", out.stderr);
    for secret in secrets {
        assert!(
            !out.stderr.contains(secret),
            "secret printed: {}",
            out.stderr
        );
    }
    assert!(!out.stderr.contains("PRIVATE KEY"), "{}", out.stderr);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    lines[0].to_owned()
}

fn published_kids(jwks: &JwkSet) -> Vec<String> {
    let mut kids: Vec<String> = jwks.keys.iter().map(|k| k.kid.clone()).collect();
    kids.sort();
    kids
}

fn jwks_of(server: &ServeProcess) -> JwkSet {
    let res = server.get("/.well-known/jwks.json");
    assert_eq!(res.status, 200, "{}", res.body);
    serde_json::from_str(&res.body).expect("JWKS parses")
}

/// A token for `client` from `server`, checked against the server's own JWKS.
#[track_caller]
fn served_token_verifies(server: &ServeProcess, client: &TestClient) -> String {
    let token = server.token_for(client);
    if let Err(e) = verify_with_jwks(&jwks_of(server), &token, &server.url, None) {
        panic!("a token of {} does not verify: {e}", server.url);
    }
    token
}

#[test]
fn serve_without_a_usable_kek_refuses_in_one_line_that_says_how_to_make_one() {
    let store = PgStore::new();
    let short = "c2hvcnQtYnV0LWJhc2U2NA=="; // 18 bytes
    let not_base64 = "kek?not*base64";
    let file = store.tmp.path().join("kek");
    fs::write(&file, "Zm9vYmFy-is-not-a-kek\n").unwrap();
    fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
    // A good KEK in a file others may read: refused as a key file would be.
    let open = store.tmp.path().join("open-kek");
    fs::write(&open, store.kek.text.as_str()).unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o644)).unwrap();
    // (case, KEK variables, the fix the line names)
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str);
    let cases: [Case; 5] = [
        ("none", vec![], MAKE_KEK),
        ("short", vec![("JWT_ISSUER_KEK", short)], MAKE_KEK),
        ("not base64", vec![("JWT_ISSUER_KEK", not_base64)], MAKE_KEK),
        (
            "bad file",
            vec![("JWT_ISSUER_KEK_FILE", file.to_str().unwrap())],
            MAKE_KEK,
        ),
        (
            "open file",
            vec![("JWT_ISSUER_KEK_FILE", open.to_str().unwrap())],
            "chmod 600",
        ),
    ];
    for (case, env, fix) in cases {
        let out = store.run_with_kek(&["serve", "--bind", "127.0.0.1:0"], &env);
        let line = one_line_refusal(
            &out,
            &[short, not_base64, "Zm9vYmFy", store.kek.text.as_str()],
        );
        assert!(line.contains(fix), "{case}: {line}");
        assert!(line.contains("JWT_ISSUER_KEK"), "{case}: {line}");
    }
    // Refused before the database was touched: no schema was made.
    let tables = store.column(
        "SELECT table_name::text FROM information_schema.tables WHERE table_name LIKE 'jwt_issuer%'",
    );
    assert!(tables.is_empty(), "{tables:?}");
}

#[test]
fn a_wrong_kek_is_refused_in_one_line_naming_both_kek_ids_and_writes_nothing() {
    let store = PgStore::new();
    store.ok(&["keys", "generate", "--alg", "ES256"]);
    let other = TestKek::generate();
    let before = store.snapshot();
    let wrong = [("JWT_ISSUER_KEK", other.text.as_str())];

    let out = store.run_with_kek(&["serve", "--bind", "127.0.0.1:0"], &wrong);
    let line = one_line_refusal(&out, &[store.kek.text.as_str(), other.text.as_str()]);
    assert!(
        line.contains(&store.kek.id) && line.contains(&other.id),
        "{line}"
    );
    assert!(line.contains("store rewrap"), "{line}");
    // Nor does a change seal a key under a KEK the other replicas lack.
    let out = store.run_with_kek(&["keys", "generate", "--alg", "ES256"], &wrong);
    one_line_refusal(&out, &[store.kek.text.as_str(), other.text.as_str()]);
    assert_eq!(store.snapshot(), before);
    // The right KEK as the previous one opens the store (as `store rewrap` needs).
    let rewrapping = [
        ("JWT_ISSUER_KEK", other.text.as_str()),
        ("JWT_ISSUER_KEK_PREVIOUS", store.kek.text.as_str()),
    ];
    let out = store.run_with_kek(&["keys", "list"], &rewrapping);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
}

#[test]
fn a_ciphertext_moved_to_another_row_or_altered_never_signs_or_publishes() {
    let (store, _keys) = PgStore::with_template_keys();
    store.ok(&["keys", "generate", "--alg", "ES256"]);
    let active = store.kid("ES256", "active");
    let next = store.kid("ES256", "next");
    // The active key's sealed private key copied onto the next key's row.
    store
        .db
        .client()
        .execute(
            "UPDATE jwt_issuer_keys n SET kek_id = a.kek_id, nonce = a.nonce, ciphertext = a.ciphertext
             FROM jwt_issuer_keys a WHERE a.kid = $1 AND n.kid = $2",
            &[&active, &next],
        )
        .unwrap();

    let server = store.serve();
    let mut log = Vec::new();
    server.read_log_until(&mut log, PATIENCE, "the moved key left out", |lines| {
        lines.iter().any(|l| {
            l.contains("KEY LEFT OUT")
                && l.contains(&next)
                && l.contains("moved from another key's row")
        })
    });
    let health = server.get("/healthz").json();
    assert_eq!(health["broken_keys"][0]["kid"], next.as_str(), "{health}");
    let jwks = jwks_of(&server);
    assert!(!published_kids(&jwks).contains(&next));
    // The active key's public values are published once, under its own kid.
    let active_jwk = jwks.find(&active).expect("the active key is published");
    let twins = jwks
        .keys
        .iter()
        .filter(|k| k.params == active_jwk.params)
        .count();
    assert_eq!(twins, 1, "{jwks:?}");
    drop(server);

    // One byte of the active key's ciphertext flipped: it does not sign, whoever asks.
    store
        .db
        .client()
        .execute(
            "UPDATE jwt_issuer_keys SET ciphertext = set_byte(ciphertext, 10, get_byte(ciphertext, 10) # 1)
             WHERE kid = $1",
            &[&active],
        )
        .unwrap();
    let out = store.run(&[
        "token", "issue", "--sub", "s", "--alg", "ES256", "--issuer", ISSUER,
    ]);
    let line = one_line_refusal(&out, &[store.kek.text.as_str()]);
    assert!(line.contains(&active) && line.contains("altered"), "{line}");
    let out = store.run(&["serve", "--bind", "127.0.0.1:0"]);
    assert_ne!(out.code, Some(0), "started: {}", out.stderr);
    assert!(
        out.stderr.contains(&active) && out.stderr.contains("altered"),
        "{}",
        out.stderr
    );
    // The RS256 key is untouched and still signs.
    store.ok(&[
        "token", "issue", "--sub", "s", "--alg", "RS256", "--issuer", ISSUER,
    ]);
}

#[test]
fn rewrap_reseals_every_key_under_the_new_kek_and_tokens_keep_verifying() {
    let (store, _keys) = PgStore::with_template_keys();
    let client = store.add_client("svc");
    let kids = store.column("SELECT kid FROM jwt_issuer_keys ORDER BY kid");
    let before_rewrap = issue_token_on(&store, &[("JWT_ISSUER_KEK", store.kek.text.as_str())]);
    let new = TestKek::generate();

    // The new KEK alone cannot open the keys to re-seal them: refused, nothing changed.
    let before = store.snapshot();
    let out = store.run_with_kek(
        &["store", "rewrap"],
        &[("JWT_ISSUER_KEK", new.text.as_str())],
    );
    let line = one_line_refusal(&out, &[store.kek.text.as_str(), new.text.as_str()]);
    assert!(
        line.contains(&store.kek.id) && line.contains(&new.id),
        "{line}"
    );
    assert_eq!(store.snapshot(), before);

    let rewrapping = [
        ("JWT_ISSUER_KEK", new.text.as_str()),
        ("JWT_ISSUER_KEK_PREVIOUS", store.kek.text.as_str()),
    ];
    let out = store.run_with_kek(&["store", "rewrap"], &rewrapping);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stdout
            .contains(&format!("re-sealed {} keys under {}", kids.len(), new.id)),
        "{}",
        out.stdout
    );
    assert_eq!(
        store.column("SELECT DISTINCT kek_id FROM jwt_issuer_keys"),
        [new.id.as_str()]
    );
    let only_new = [("JWT_ISSUER_KEK", new.text.as_str())];
    let status = store.run_with_kek(&["store", "status"], &only_new);
    assert_eq!(status.code, Some(0), "{}", status.stderr);
    assert!(
        status
            .stdout
            .contains(&format!("sealed   {} {}", new.id, kids.len())),
        "{}",
        status.stdout
    );
    // The old KEK is now the wrong one.
    let out = store.run(&["keys", "list"]);
    one_line_refusal(&out, &[store.kek.text.as_str(), new.text.as_str()]);

    let server = store.serve_with_kek(&only_new);
    let jwks = jwks_of(&server);
    assert_eq!(published_kids(&jwks), kids);
    served_token_verifies(&server, &client);
    verify_with_jwks(&jwks, &before_rewrap, ISSUER, None).expect("a token from before verifies");
    let after = issue_token_on(&store, &only_new);
    verify_with_jwks(&jwks, &after, ISSUER, None).expect("an offline token verifies");
}

/// `token issue` (ES256) on the store with `kek_env`.
fn issue_token_on(store: &PgStore, kek_env: &[(&str, &str)]) -> String {
    let out = store.run_with_kek(
        &["token", "issue", "--sub", "s", "--issuer", ISSUER],
        kek_env,
    );
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    out.stdout.trim().to_owned()
}

#[test]
fn import_and_export_keep_kids_states_times_clients_and_tokens() {
    let (tmp, dir) = keys_dir_with_template();
    let out = run_cli(&dir, &["keys", "rotate", "--now"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let out = run_cli(&dir, &["clients", "add", "svc"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let client = TestClient::new("svc", out.stdout.trim());
    let token = issue_token(&dir, &["--sub", "s", "--issuer", ISSUER]);
    let listed = run_cli(&dir, &["keys", "list"]).stdout;
    for state in ["next", "active", "retired"] {
        assert!(listed.contains(state), "{listed}");
    }

    let store = PgStore::new();
    let import = ["store", "import", "--from-keys-dir", dir.to_str().unwrap()];
    let out = store.run(&import);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(!out.stderr.contains("revoked"), "{}", out.stderr);
    assert_eq!(store.ok(&["keys", "list"]), listed);
    let server = store.serve();
    let jwks = jwks_of(&server);
    verify_with_jwks(&jwks, &token, ISSUER, None).expect("the keys dir's token verifies");
    served_token_verifies(&server, &client);

    // The same import again (a retry after one that stopped between keys and clients):
    // nothing to do, nothing changed.
    let before = store.snapshot();
    let again = store.ok(&import);
    assert!(again.contains("copied 0 keys and 0 clients"), "{again}");
    assert_eq!(store.snapshot(), before);
    // Another keys dir into a database that holds keys: refused, nothing changed.
    let other = tmp.path().join("other-keys");
    assert_eq!(
        run_cli(&other, &["keys", "generate", "--alg", "ES256"]).code,
        Some(0)
    );
    let out = store.run(&[
        "store",
        "import",
        "--from-keys-dir",
        other.to_str().unwrap(),
    ]);
    assert_ne!(out.code, Some(0), "{}", out.stdout);
    assert!(out.stderr.contains("already holds keys"), "{}", out.stderr);
    assert_eq!(store.snapshot(), before);

    // Revoked tokens are not copied: the export says how many are left behind.
    store
        .db
        .client()
        .batch_execute(
            "INSERT INTO jwt_issuer_revoked VALUES ('revoked-1', now() + interval '1 hour'),
                 ('expired-1', now() - interval '1 hour')",
        )
        .unwrap();
    let new_dir = tmp.path().join("exported");
    let out = store.run(&[
        "store",
        "export",
        "--to-keys-dir",
        new_dir.to_str().unwrap(),
    ]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("warning: 1 revoked tokens not expired yet were not copied"),
        "{}",
        out.stderr
    );
    assert!(!list_dir(&new_dir).contains(&"revoked.json".to_owned()));
    assert_eq!(run_cli(&new_dir, &["keys", "list"]).stdout, listed);
    for name in list_dir(&new_dir).iter().filter(|n| n.ends_with(".pem")) {
        assert_eq!(mode(&new_dir.join(name)), 0o600, "{name}");
    }
    let exported = ServeProcess::start(&new_dir, &[]);
    assert_eq!(jwks_of(&exported), jwks);
    served_token_verifies(&exported, &client);
    drop(exported);

    // Back into the keys dir it came from, which holds the same keys and clients: nothing
    // to do. Into one that holds other keys: refused, the dir untouched.
    let files = dir_contents(&dir);
    let same = store.ok(&["store", "export", "--to-keys-dir", dir.to_str().unwrap()]);
    assert!(same.contains("copied 0 keys and 0 clients"), "{same}");
    assert_eq!(dir_contents(&dir), files);
    let files = dir_contents(&other);
    let out = store.run(&["store", "export", "--to-keys-dir", other.to_str().unwrap()]);
    assert_ne!(out.code, Some(0), "{}", out.stdout);
    assert_eq!(dir_contents(&other), files);
}

/// Every file of `dir` with its bytes, lock files aside.
fn dir_contents(dir: &Path) -> Vec<(String, Vec<u8>)> {
    list_dir(dir)
        .into_iter()
        .filter(|name| !name.ends_with(".lock"))
        .map(|name| {
            let bytes = fs::read(dir.join(&name)).unwrap();
            (name, bytes)
        })
        .collect()
}

#[test]
fn a_schema_newer_than_the_binary_is_refused_in_one_line_naming_both_versions() {
    let store = PgStore::new();
    store.ok(&["store", "status"]);
    store
        .db
        .client()
        .execute("INSERT INTO jwt_issuer_schema (version) VALUES (99)", &[])
        .unwrap();
    let out = store.run(&["serve", "--bind", "127.0.0.1:0"]);
    let line = one_line_refusal(&out, &[store.kek.text.as_str()]);
    assert!(
        line.contains("version 99") && line.contains(&format!("({SCHEMA_VERSION})")),
        "{line}"
    );
}

#[test]
fn a_version_1_database_migrates_to_the_current_version_keeping_every_row() {
    migrates_keeping_every_row(1);
}

#[test]
fn a_version_2_database_migrates_to_the_current_version_keeping_every_row_and_counter() {
    migrates_keeping_every_row(2);
}

#[test]
fn a_version_3_database_migrates_to_the_current_version_keeping_every_row() {
    migrates_keeping_every_row(3);
}

/// SQL that undoes each migration (version 2, 3, ...), leaving the database as the
/// jwt-issuer before it did.
const UNDO: &[&str] = &[
    // Version 2: the used assertion ids.
    "DROP TABLE jwt_issuer_used_jtis;",
    // Version 3: the revoked tokens, their counter, and the trigger function as version 1
    // made it.
    "DROP TABLE jwt_issuer_revoked;
     ALTER TABLE jwt_issuer_versions DROP COLUMN revoked;
     CREATE OR REPLACE FUNCTION jwt_issuer_changed() RETURNS trigger LANGUAGE plpgsql AS $$
     BEGIN
         IF TG_TABLE_NAME = 'jwt_issuer_keys' THEN
             UPDATE jwt_issuer_versions SET keys = keys + 1;
         ELSE
             UPDATE jwt_issuer_versions SET clients = clients + 1;
         END IF;
         PERFORM pg_notify('jwt_issuer_changes', TG_TABLE_NAME);
         RETURN NULL;
     END
     $$;",
    // Version 4: keys held in a vault.
    "ALTER TABLE jwt_issuer_keys DROP COLUMN uri;",
];

/// A store taken back to schema `version` as an older jwt-issuer leaves it, with rows in
/// each of its tables, migrates on the next start: every row and counter kept, each later
/// version recorded once, each table's trigger moving its own counter.
fn migrates_keeping_every_row(version: usize) {
    assert_eq!(
        usize::try_from(SCHEMA_VERSION).unwrap(),
        UNDO.len() + 1,
        "a later migration: undo it here too"
    );
    let (store, _keys) = PgStore::with_template_keys();
    let client = store.add_client("svc");
    let mut sql: String = UNDO[version - 1..].iter().rev().copied().collect();
    sql.push_str(&format!(
        "DELETE FROM jwt_issuer_schema WHERE version > {version};
         INSERT INTO jwt_issuer_auth_failures VALUES ('a-subject', now(), 3);"
    ));
    if version >= 2 {
        sql.push_str(
            "INSERT INTO jwt_issuer_used_jtis VALUES (sha256('id'), now() + interval '1 hour');",
        );
    }
    store.db.client().batch_execute(&sql).unwrap();
    let rows = || {
        // The keys' columns of version 1 (a later version adds columns, empty for them).
        let mut query = "SELECT (kid, position, alg, state, created, published, activated,
                 retired, remove_after, removed, kek_id, nonce, ciphertext)::text
                 FROM jwt_issuer_keys k
             UNION ALL SELECT c::text FROM jwt_issuer_clients c
             UNION ALL SELECT format('counters keys %s clients %s', keys, clients)
                 FROM jwt_issuer_versions
             UNION ALL SELECT f::text FROM jwt_issuer_auth_failures f
             UNION ALL SELECT 'schema ' || version FROM jwt_issuer_schema"
            .to_owned();
        if version >= 2 {
            query.push_str(" UNION ALL SELECT u::text FROM jwt_issuer_used_jtis u");
        }
        let mut rows = store.column(&query);
        rows.sort();
        rows
    };
    let before = rows();
    let status = store.ok(&["store", "status"]);
    assert!(
        status.contains(&format!("schema   {SCHEMA_VERSION}")) && status.contains("revoked  0"),
        "{status}"
    );
    let mut expected = before.clone();
    expected.extend((version + 1..=UNDO.len() + 1).map(|v| format!("schema {v}")));
    expected.sort();
    assert_eq!(
        rows(),
        expected,
        "every row kept, the later versions recorded"
    );
    let indexes = |table: &str| {
        store.column(&format!(
            "SELECT indexdef::text FROM pg_indexes WHERE tablename = '{table}' ORDER BY indexname"
        ))
    };
    assert_eq!(
        indexes("jwt_issuer_used_jtis"),
        [
            "CREATE INDEX jwt_issuer_used_jtis_expires ON public.jwt_issuer_used_jtis USING btree (expires)",
            "CREATE UNIQUE INDEX jwt_issuer_used_jtis_pkey ON public.jwt_issuer_used_jtis USING btree (key)",
        ]
    );
    assert_eq!(
        indexes("jwt_issuer_revoked"),
        [
            "CREATE INDEX jwt_issuer_revoked_expires ON public.jwt_issuer_revoked USING btree (expires)",
            "CREATE UNIQUE INDEX jwt_issuer_revoked_pkey ON public.jwt_issuer_revoked USING btree (jti)",
        ]
    );
    // Each table's statements move its own counter, whoever writes.
    let counters = || {
        let row = store
            .db
            .client()
            .query_one(
                "SELECT keys, clients, revoked FROM jwt_issuer_versions",
                &[],
            )
            .unwrap();
        (
            row.get::<_, i64>(0),
            row.get::<_, i64>(1),
            row.get::<_, i64>(2),
        )
    };
    let (keys, clients, revoked) = counters();
    assert_eq!(revoked, 0);
    for (sql, moved) in [
        ("UPDATE jwt_issuer_keys SET position = position", (1, 0, 0)),
        ("UPDATE jwt_issuer_clients SET entry = entry", (0, 1, 0)),
        (
            "INSERT INTO jwt_issuer_revoked VALUES ('jti-1', now() + interval '1 hour')",
            (0, 0, 1),
        ),
    ] {
        let before = counters();
        store.db.client().batch_execute(sql).unwrap();
        let after = counters();
        assert_eq!(
            (after.0 - before.0, after.1 - before.1, after.2 - before.2),
            moved,
            "{sql}"
        );
    }
    assert!(counters().0 == keys + 1 && counters().1 == clients + 1);
    // Applied once: a second start finds nothing to do.
    let server = store.serve();
    served_token_verifies(&server, &client);
    let all: Vec<String> = (1..=UNDO.len() + 1).map(|v| v.to_string()).collect();
    assert_eq!(
        store.column("SELECT version::text FROM jwt_issuer_schema ORDER BY version"),
        all
    );
}

#[test]
fn a_keys_table_emptied_by_hand_stops_issuance_and_is_never_refilled() {
    let (store, _keys) = PgStore::with_template_keys();
    let client = store.add_client("svc");
    let server = store.serve();
    let jwks = jwks_of(&server);
    served_token_verifies(&server, &client);
    // The first ticks record the version served (as in fail_closed.rs).
    std::thread::sleep(jwt_issuer::server::RELOAD_INTERVAL * 2);

    store
        .db
        .client()
        .execute("DELETE FROM jwt_issuer_keys", &[])
        .unwrap();
    wait_until(PATIENCE, "token requests to be refused", || {
        server.token_response(&client, &[]).status == 503
    });
    for _ in 0..3 {
        let res = server.token_response(&client, &[]);
        assert_eq!(res.status, 503, "{}", res.body);
        assert!(res.body.contains("cannot be read"), "{}", res.body);
        let ready = server.get("/readyz");
        assert_eq!(ready.status, 503, "{}", ready.body);
        assert_eq!(jwks_of(&server), jwks, "the last key set stays published");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let mut log = Vec::new();
    server.read_log_until(&mut log, PATIENCE, "the failed reload", |lines| {
        lines.iter().any(|l| {
            l.contains("KEY STORE CHANGED BUT CANNOT BE READ")
                && l.contains("deleted outside jwt-issuer")
        })
    });
    drop(server);

    let out = store.run(&["serve", "--bind", "127.0.0.1:0"]);
    let line = one_line_refusal(&out, &[store.kek.text.as_str()]);
    assert!(line.contains("deleted outside jwt-issuer"), "{line}");
    assert!(store.column("SELECT kid FROM jwt_issuer_keys").is_empty());
}

#[test]
fn a_client_deleted_with_sql_stops_getting_tokens_within_seconds() {
    let (store, _keys) = PgStore::with_template_keys();
    let gone = store.add_client("gone");
    let kept = store.add_client("kept");
    let server = store.serve();
    served_token_verifies(&server, &gone);
    // An operator's SQL, not a `clients remove`: the table's trigger moves the counter.
    store
        .db
        .client()
        .execute(
            "DELETE FROM jwt_issuer_clients WHERE client_id = 'gone'",
            &[],
        )
        .unwrap();
    let started = std::time::Instant::now();
    wait_until(PATIENCE, "the deleted client to be refused", || {
        server.token_response(&gone, &[]).status == 401
    });
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "the deletion took {:?} to reach the server",
        started.elapsed()
    );
    served_token_verifies(&server, &kept);
}

#[test]
fn change_counters_that_go_back_are_never_taken_up_again_until_a_restart() {
    let (store, _keys) = PgStore::with_template_keys();
    let client = store.add_client("svc");
    let env = [
        ("JWT_ISSUER_STORE", store.db.url.as_str()),
        ("JWT_ISSUER_KEK", store.kek.text.as_str()),
    ];
    let server = ServeProcess::start_with_env(&store.dir, &["--store-stale-after", "5s"], &env);
    served_token_verifies(&server, &client);
    std::thread::sleep(jwt_issuer::server::RELOAD_INTERVAL * 2);
    // An older copy of the database, as after a restore: the counters are lower.
    store
        .db
        .client()
        .execute("UPDATE jwt_issuer_versions SET keys = keys - 1", &[])
        .unwrap();
    wait_until(PATIENCE, "the replica to stop signing", || {
        server.token_response(&client, &[]).status == 503
    });
    // The counters climb past where they were (other processes write on): still refused.
    store.ok(&["keys", "generate", "--alg", "ES256"]);
    store.ok(&["keys", "generate", "--alg", "ES256"]);
    std::thread::sleep(jwt_issuer::server::RELOAD_INTERVAL * 3);
    assert_eq!(server.token_response(&client, &[]).status, 503);
    assert_eq!(server.get("/readyz").status, 503);
    let mut log = Vec::new();
    server.read_log_to_now(&mut log);
    assert!(
        log.iter().any(|l| l.contains("change counters went back")),
        "{log:?}"
    );
    drop(server);
    // A restart takes the database as it is.
    let restarted = ServeProcess::start_with_env(&store.dir, &["--store-stale-after", "5s"], &env);
    served_token_verifies(&restarted, &client);
}
