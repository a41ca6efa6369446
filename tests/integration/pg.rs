//! Real PostgreSQL for the Postgres store's tests: a database of the test's own on the server
//! at DATABASE_URL (.ci/run starts one), or a private cluster for a test that stops and
//! restarts the server under a running service. A test never skips for want of a server: it
//! fails, saying what to do.

use std::env;
use std::error::Error;
use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{SystemTime, UNIX_EPOCH};

use postgres::{Client, NoTls};
use tempfile::TempDir;

/// A database of the test's own, created on the server at DATABASE_URL and dropped (with
/// whatever sessions still use it) when this goes.
pub struct TestDatabase {
    /// DATABASE_URL with its database replaced by this one.
    pub url: String,
    name: String,
}

impl TestDatabase {
    /// Creates an empty database; panics when DATABASE_URL is unset or does not answer.
    pub fn create() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        // pid and counter keep concurrent tests and test binaries apart; the time suffix keeps
        // a later run apart from what a killed run (its Drop never ran) left under its pid.
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!(
            "jwt_issuer_t_{}_{}_{nanos:x}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let admin = admin_url();
        if let Err(e) = admin_execute(&admin, format!("CREATE DATABASE {name}")) {
            // Not the URL itself: it may hold a password.
            panic!("cannot create a test database on the server at DATABASE_URL: {e}");
        }
        let url = with_database(&admin, &name);
        Self { url, name }
    }

    /// A connection to this database, to set up or inspect rows. Synchronous: it runs its own
    /// runtime, so call it from a plain `#[test]`, not inside an async one.
    pub fn client(&self) -> Client {
        Client::connect(&self.url, NoTls)
            .unwrap_or_else(|e| panic!("cannot connect to {}: {}", self.url, chain(&e)))
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // FORCE ends the sessions a pool of the service under test may still hold open.
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        if let Err(e) = admin_execute(&admin_url_or_empty(), sql) {
            eprintln!("warning: test database {} left behind: {e}", self.name);
        }
    }
}

/// A PostgreSQL cluster of the test's own in a temp dir, on a free 127.0.0.1 port, for tests
/// that stop and start the server; stopped (immediate) and deleted when this goes.
pub struct PrivateCluster {
    dir: TempDir,
    bin: PathBuf,
    /// The OS user that runs the binaries when we are root (initdb and postgres refuse root).
    user: Option<String>,
    port: u16,
}

impl PrivateCluster {
    /// initdb (trust auth, superuser `postgres`) and start; panics naming what is missing.
    pub fn start() -> Self {
        let bin = server_bin();
        let user = rustix::process::geteuid().is_root().then(|| {
            env::var("JWT_ISSUER_TEST_PG_USER")
                .ok()
                .filter(|u| !u.is_empty())
                .unwrap_or_else(|| "postgres".to_owned())
        });
        let dir = TempDir::new().expect("temp dir for a private PostgreSQL cluster");
        if let Some(user) = &user {
            check(
                "chown",
                Command::new("chown")
                    .arg(format!("{user}:"))
                    .arg(dir.path()),
            );
        }
        let mut cluster = Self {
            dir,
            bin,
            user,
            port: 0,
        };
        check(
            "initdb",
            cluster
                .command("initdb")
                .arg("-D")
                .arg(cluster.data())
                .args(["-U", "postgres", "-A", "trust"])
                .args(["--no-sync", "-E", "UTF8", "--locale=C"]),
        );
        // Throwaway data: durability off, for speed; TCP on loopback, the socket in our dir.
        let settings = format!(
            "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 100\n\
             listen_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n",
            cluster.dir.path().display()
        );
        fs::OpenOptions::new()
            .append(true)
            .open(cluster.data().join("postgresql.conf"))
            .and_then(|mut conf| conf.write_all(settings.as_bytes()))
            .expect("append to postgresql.conf");
        // The free port is bound by postgres a moment after we release it: another test may
        // take it in between, so a failed start tries another.
        for attempt in 1..=3 {
            cluster.port = free_port();
            match cluster.pg_ctl_start() {
                Ok(()) => return cluster,
                Err(e) if attempt == 3 => panic!("private PostgreSQL cluster did not start: {e}"),
                Err(_) => {}
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server (fast: sessions are ended, the data is kept) and waits until it is down.
    pub fn stop(&self) {
        check(
            "pg_ctl stop",
            self.command("pg_ctl")
                .arg("-D")
                .arg(self.data())
                .args(["-m", "fast", "-w", "stop"]),
        );
    }

    /// Starts the stopped server again: same data, same port.
    pub fn start_again(&self) {
        if let Err(e) = self.pg_ctl_start() {
            panic!("private PostgreSQL cluster did not start again: {e}");
        }
    }

    /// Serves TLS with this certificate and key (PEM) from now on: both written into the
    /// data dir (the key 0600, owned by the server's user, as PostgreSQL requires), `ssl`
    /// turned on, and the server restarted.
    pub fn enable_tls(&self, cert_pem: &str, key_pem: &str) {
        use std::os::unix::fs::PermissionsExt;
        for (name, pem, mode) in [
            ("server.crt", cert_pem, 0o644),
            ("server.key", key_pem, 0o600),
        ] {
            let path = self.data().join(name);
            fs::write(&path, pem).expect("write the server's TLS file");
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
            if let Some(user) = &self.user {
                check(
                    "chown",
                    Command::new("chown").arg(format!("{user}:")).arg(&path),
                );
            }
        }
        fs::OpenOptions::new()
            .append(true)
            .open(self.data().join("postgresql.conf"))
            .and_then(|mut conf| conf.write_all(b"ssl = on\n"))
            .expect("append to postgresql.conf");
        self.restart();
    }

    /// `stop` then `start_again`.
    pub fn restart(&self) {
        self.stop();
        self.start_again();
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A server binary, run as `user` when we are root, from a directory that user can read.
    fn command(&self, program: &str) -> Command {
        let mut command = match &self.user {
            Some(user) => {
                let mut runuser = Command::new("runuser");
                runuser.args(["-u", user, "--"]).arg(self.bin.join(program));
                runuser
            }
            None => Command::new(self.bin.join(program)),
        };
        command.current_dir(self.dir.path());
        command
    }

    /// pg_ctl start, waiting until the server accepts connections; Err holds the log's tail.
    fn pg_ctl_start(&self) -> Result<(), String> {
        let log = self.dir.path().join("log");
        let output = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(&log)
            .args(["-o", &format!("-p {}", self.port), "-w", "start"])
            .output()
            .map_err(|e| format!("cannot run pg_ctl: {e}"))?;
        if output.status.success() {
            return Ok(());
        }
        let log = fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(10).collect();
        Err(format!(
            "{}\n{}",
            describe(&output),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ))
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        // Immediate: the data goes with the temp dir, no shutdown checkpoint is worth waiting
        // for. Best effort (it may be stopped already); the TempDir is removed after this.
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

/// DATABASE_URL, or a panic saying how to get a server.
fn admin_url() -> String {
    match env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "the PostgreSQL tests need a server: run .ci/run (it starts one), or set \
             DATABASE_URL=postgres://USER@HOST:PORT/DB"
        ),
    }
}

/// For Drop, which must not panic: an empty URL fails to connect, and that is reported.
fn admin_url_or_empty() -> String {
    env::var("DATABASE_URL").unwrap_or_default()
}

/// Runs one statement on its own connection, on a thread of its own: the sync client starts a
/// runtime, which panics inside another (a Drop may run in an async test).
fn admin_execute(url: &str, sql: String) -> Result<(), String> {
    let url = url.to_owned();
    thread::spawn(move || {
        let mut client = Client::connect(&url, NoTls).map_err(|e| chain(&e))?;
        client.batch_execute(&sql).map_err(|e| chain(&e))
    })
    .join()
    .unwrap_or_else(|_| Err("the admin connection's thread panicked".to_owned()))
}

/// `url` with its database (path) replaced by `db`, query kept; a key=value string gets a
/// `dbname` that overrides any earlier one.
fn with_database(url: &str, db: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return format!("{url} dbname={db}");
    };
    let (scheme, rest) = url.split_at(scheme_end);
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let query = tail.find('?').map_or("", |i| &tail[i..]);
    format!("{scheme}{authority}/{db}{query}")
}

/// The directory holding initdb and pg_ctl: JWT_ISSUER_TEST_PG_BIN (.ci/postgres.sh sets it),
/// else the newest Debian server, else /usr/local/bin.
fn server_bin() -> PathBuf {
    let has_tools = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(dir) = env::var_os("JWT_ISSUER_TEST_PG_BIN").filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        assert!(
            has_tools(&dir),
            "JWT_ISSUER_TEST_PG_BIN={} has no initdb and pg_ctl",
            dir.display()
        );
        return dir;
    }
    // Newest major version first: compare the version directory's name as a number.
    let mut debian: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse().ok()?;
            Some((major, e.path().join("bin")))
        })
        .collect();
    debian.sort();
    debian
        .into_iter()
        .rev()
        .map(|(_, dir)| dir)
        .chain([PathBuf::from("/usr/local/bin")])
        .find(|dir| has_tools(dir))
        .unwrap_or_else(|| {
            panic!(
                "the private-cluster PostgreSQL tests need the server binaries (initdb, pg_ctl): \
                 none in /usr/lib/postgresql/*/bin or /usr/local/bin; install Debian's postgresql, \
                 set JWT_ISSUER_TEST_PG_BIN, or run .ci/run (it does both)"
            )
        })
}

/// A port that was free a moment ago on 127.0.0.1.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// Runs `command`, panicking with its output when it fails.
fn check(what: &str, command: &mut Command) {
    match command.output() {
        Ok(output) if output.status.success() => {}
        Ok(output) => panic!("{what} failed: {}", describe(&output)),
        Err(e) => panic!("cannot run {what} ({:?}): {e}", command.get_program()),
    }
}

/// An error with its causes: postgres::Error's own message is only the kind ("error
/// connecting to server"), the cause says why ("Connection refused").
fn chain(e: &dyn Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    text
}

fn describe(output: &Output) -> String {
    format!(
        "{}\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn test_databases_are_distinct_usable_and_dropped() {
    let a = TestDatabase::create();
    let b = TestDatabase::create();
    assert_ne!(a.url, b.url);
    a.client()
        .batch_execute("CREATE TABLE t (x int); INSERT INTO t VALUES (1)")
        .expect("write to the first database");
    let count: i64 = a
        .client()
        .query_one("SELECT count(*) FROM t", &[])
        .expect("read it back")
        .get(0);
    assert_eq!(count, 1);
    assert!(
        b.client().query("SELECT * FROM t", &[]).is_err(),
        "the second database must not see the first one's table"
    );

    let name = a.name.clone();
    let mut admin = Client::connect(&admin_url(), NoTls).expect("admin connection");
    let exists = |admin: &mut Client| -> bool {
        admin
            .query_one(
                "SELECT count(*) FROM pg_database WHERE datname = $1",
                &[&name],
            )
            .expect("query pg_database")
            .get::<_, i64>(0)
            == 1
    };
    assert!(exists(&mut admin));
    // A session still open on it (as a service's pool would hold) does not keep it alive.
    let _open = a.client();
    drop(a);
    assert!(!exists(&mut admin), "dropping a TestDatabase drops {name}");
}

#[test]
fn private_cluster_keeps_its_data_across_stop_and_start() {
    let cluster = PrivateCluster::start();
    let mut client = Client::connect(&cluster.url(), NoTls).expect("connect");
    client
        .batch_execute("SELECT 1; CREATE TABLE kept (x int); INSERT INTO kept VALUES (7)")
        .expect("write before the stop");

    cluster.stop();
    assert!(
        Client::connect(&cluster.url(), NoTls).is_err(),
        "a stopped cluster must refuse connections"
    );
    cluster.start_again();
    let mut client = Client::connect(&cluster.url(), NoTls).expect("connect after start_again");
    let x: i32 = client
        .query_one("SELECT x FROM kept", &[])
        .expect("the table survives")
        .get(0);
    assert_eq!(x, 7);

    cluster.restart();
    assert!(client.is_valid(std::time::Duration::from_secs(2)).is_err());
    let mut client = Client::connect(&cluster.url(), NoTls).expect("connect after restart");
    client.query_one("SELECT 1", &[]).expect("select 1");
}

#[test]
fn with_database_replaces_only_the_path() {
    let cases = [
        ("postgres://u@h:5/postgres", "postgres://u@h:5/db"),
        ("postgres://u@h:5", "postgres://u@h:5/db"),
        ("postgres://u@h:5/", "postgres://u@h:5/db"),
        (
            "postgresql://u:p@h/x?sslmode=disable&application_name=t",
            "postgresql://u:p@h/db?sslmode=disable&application_name=t",
        ),
        (
            "postgres://u@h?connect_timeout=5",
            "postgres://u@h/db?connect_timeout=5",
        ),
        ("host=h user=u dbname=x", "host=h user=u dbname=x dbname=db"),
    ];
    for (url, expected) in cases {
        assert_eq!(with_database(url, "db"), expected, "{url}");
    }
}
