//! TLS to PostgreSQL (`sslmode=require`): the server's certificate is checked against
//! `--store-ca-file` (or the system's roots) and its name, and a certificate that does not
//! check out stops the start in one line, never falls back to plain text. On a private
//! cluster with `ssl = on`.

use tempfile::TempDir;

use crate::helpers::{ServeProcess, run_cli_with_env};
use crate::pg::PrivateCluster;

/// A self-signed certificate for `names` and its key, as PEM.
fn certificate(names: &[&str]) -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("key");
    let params =
        rcgen::CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
            .expect("params");
    let cert = params.self_signed(&key).expect("self-signed");
    (cert.pem(), key.serialize_pem())
}

#[test]
fn sslmode_require_connects_over_tls_checking_the_server_and_never_falls_back() {
    let cluster = PrivateCluster::start();
    let (cert, key) = certificate(&["127.0.0.1", "localhost"]);
    cluster.enable_tls(&cert, &key);
    let tmp = TempDir::new().unwrap();
    let ca = tmp.path().join("ca.pem");
    std::fs::write(&ca, &cert).unwrap();
    let (other, _) = certificate(&["db.elsewhere.example"]);
    let other_ca = tmp.path().join("other-ca.pem");
    std::fs::write(&other_ca, &other).unwrap();
    let kek = jwt_issuer::database::Kek::generate().1;
    let url = format!("{}?sslmode=require", cluster.url());
    let env = |ca: Option<&std::path::Path>| {
        let mut env = vec![
            ("JWT_ISSUER_STORE", url.clone()),
            ("JWT_ISSUER_KEK", kek.to_string()),
        ];
        if let Some(ca) = ca {
            env.push(("JWT_ISSUER_STORE_CA_FILE", ca.display().to_string()));
        }
        env
    };
    let keys = tmp.path().join("keys");

    // The right CA: the server starts, and PostgreSQL sees its connections encrypted.
    let right = env(Some(&ca));
    let pairs: Vec<(&str, &str)> = right.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let server = ServeProcess::start_with_env(&keys, &[], &pairs);
    assert_eq!(server.get("/readyz").status, 200);
    let mut admin = postgres::Client::connect(&cluster.url(), postgres::NoTls).unwrap();
    let encrypted: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid)
             WHERE application_name = 'jwt-issuer' AND ssl",
            &[],
        )
        .unwrap()
        .get(0);
    let plain: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid)
             WHERE application_name = 'jwt-issuer' AND NOT ssl",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(encrypted >= 1, "no TLS connection from jwt-issuer");
    assert_eq!(plain, 0, "a plain connection from jwt-issuer");
    drop(server);

    // A CA that did not sign the server's certificate, or none of ours (the system's roots):
    // refused in one line, nothing served.
    for (what, env) in [
        ("another CA", env(Some(&other_ca))),
        ("the system's roots", env(None)),
    ] {
        let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let out = run_cli_with_env(&keys, &["keys", "list"], &pairs);
        assert_ne!(out.code, Some(0), "{what}: {}", out.stdout);
        let lines: Vec<&str> = out.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{what}: {}", out.stderr);
        assert!(
            lines[0].contains("cannot open the store") && lines[0].contains("127.0.0.1"),
            "{what}: {}",
            lines[0]
        );
    }
}
