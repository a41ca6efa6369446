//! `/metrics` against the real server: every series is there and moves with requests,
//! key state follows a rotation, a reload failure shows, the text parses as Prometheus
//! exposition format, and no label carries a string a client sent.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use jwt_issuer::SigningAlg;
use jwt_issuer::keys::MANIFEST_FILE;

use crate::helpers::{
    PATIENCE, ServeProcess, TestApp, TestClient, active_kid, basic_auth, keys_dir_with_template,
    new_client, request, run_cli, send, unix_now, wait_for, wait_until,
};

/// Every series the server exports (histograms by their family name).
const SERIES: [&str; 17] = [
    "jwt_issuer_http_requests_total",
    "jwt_issuer_http_request_duration_seconds",
    "jwt_issuer_jwks_responses_total",
    "jwt_issuer_keys_loaded",
    "jwt_issuer_keys_broken",
    "jwt_issuer_clients",
    "jwt_issuer_token_requests_total",
    "jwt_issuer_tokens_issued_total",
    "jwt_issuer_reload_failures_total",
    "jwt_issuer_reloads_total",
    "jwt_issuer_last_successful_reload_timestamp_seconds",
    "jwt_issuer_store_change_unread",
    "jwt_issuer_connections_refused_total",
    "jwt_issuer_key_state",
    "jwt_issuer_key_created_timestamp_seconds",
    "jwt_issuer_key_activated_timestamp_seconds",
    "jwt_issuer_key_rotation_period_seconds",
];

#[test]
fn every_series_exists_and_moves_with_token_and_jwks_requests() {
    let (app, [client]) = TestApp::spawn_with_clients([new_client("svc", &[], &["api"])], |_| {});
    let kid = active_kid(&app.keys_dir, SigningAlg::Es256);
    let issued = |m: &Scrape| {
        m.get(
            "jwt_issuer_tokens_issued_total",
            &issued_labels("svc", &kid),
        )
    };
    let token_count =
        |m: &Scrape| m.get("jwt_issuer_http_request_duration_seconds_count", &TOKEN_200);
    let jwks_count =
        |m: &Scrape| m.get("jwt_issuer_http_request_duration_seconds_count", &JWKS_200);

    app.token_for(&client);
    app.jwks();
    let first = scrape(&app.url);
    for name in SERIES {
        assert!(
            first.families.contains_key(name),
            "no {name} in\n{}",
            first.text
        );
    }
    assert_eq!(issued(&first), Some(1.0), "{}", first.text);
    assert_eq!(token_count(&first), Some(1.0), "{}", first.text);
    assert_eq!(jwks_count(&first), Some(1.0), "{}", first.text);
    assert_eq!(
        first.families["jwt_issuer_http_request_duration_seconds"],
        "histogram"
    );
    assert_eq!(
        first.get(
            "jwt_issuer_key_state",
            &[("alg", "ES256"), ("kid", &kid), ("state", "active")]
        ),
        Some(1.0),
        "{}",
        first.text
    );
    let activated = first
        .get(
            "jwt_issuer_key_activated_timestamp_seconds",
            &[("alg", "ES256"), ("kid", &kid)],
        )
        .expect("the active key's activation time");
    assert!(
        activated > 1e9 && activated <= unix_now() as f64 + 1.0,
        "{activated}"
    );
    for store in ["keys", "clients"] {
        let at = first
            .get(
                "jwt_issuer_last_successful_reload_timestamp_seconds",
                &[("store", store)],
            )
            .expect("a reload time per store");
        assert!((unix_now() as f64 - at).abs() < 10.0, "{store}: {at}");
    }

    app.token_for(&client);
    app.jwks();
    app.jwks();
    let second = scrape(&app.url);
    assert_eq!(issued(&second), Some(2.0), "{}", second.text);
    assert_eq!(token_count(&second), Some(2.0), "{}", second.text);
    assert_eq!(jwks_count(&second), Some(3.0), "{}", second.text);
    // The buckets are cumulative and end with every request.
    let buckets: Vec<f64> = second
        .samples
        .iter()
        .filter(|s| {
            s.name == "jwt_issuer_http_request_duration_seconds_bucket"
                && s.labels.get("route").map(String::as_str) == Some("/.well-known/jwks.json")
                && s.labels.get("status").map(String::as_str) == Some("200")
        })
        .map(|s| s.value)
        .collect();
    assert_eq!(buckets.len(), 14, "13 bounds and +Inf: {buckets:?}");
    assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
    assert_eq!(buckets.last(), Some(&3.0));
}

#[test]
fn key_state_and_age_follow_a_rotation() {
    let (_tmp, dir) = keys_dir_with_template();
    let server = ServeProcess::start(&dir, &[]);
    let old = active_kid(&dir, SigningAlg::Es256);
    let before = scrape(&server.url);
    assert_eq!(
        before.get("jwt_issuer_key_state", &key_labels(&old, "active")),
        Some(1.0),
        "{}",
        before.text
    );
    let changed_before = before
        .get(
            "jwt_issuer_reloads_total",
            &[("outcome", "changed"), ("store", "keys")],
        )
        .expect("reloads_total{changed}");
    let rotated_at = unix_now();

    let out = run_cli(&dir, &["keys", "rotate", "--alg", "ES256", "--now"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let new = active_kid(&dir, SigningAlg::Es256);
    assert_ne!(new, old);

    let after = wait_for(PATIENCE, "the new key's series", || {
        let m = scrape(&server.url);
        if m.get("jwt_issuer_key_state", &key_labels(&new, "active")) == Some(1.0) {
            Ok(m)
        } else {
            Err(m.text)
        }
    });
    assert_eq!(
        after.get("jwt_issuer_key_state", &key_labels(&old, "retired")),
        Some(1.0),
        "{}",
        after.text
    );
    // One series per key: the old key's `active` series is gone.
    assert_eq!(
        after.get("jwt_issuer_key_state", &key_labels(&old, "active")),
        None,
        "{}",
        after.text
    );
    let states: Vec<&str> = after
        .samples
        .iter()
        .filter(|s| s.name == "jwt_issuer_key_state" && s.labels["alg"] == "ES256")
        .map(|s| s.labels["state"].as_str())
        .collect();
    assert_eq!(
        states.iter().filter(|s| **s == "active").count(),
        1,
        "{states:?}"
    );
    let activated = after
        .get(
            "jwt_issuer_key_activated_timestamp_seconds",
            &[("alg", "ES256"), ("kid", &new)],
        )
        .expect("the new key's activation time");
    assert!(
        activated + 1.0 >= rotated_at as f64,
        "{activated} < {rotated_at}"
    );
    let changed_after = after
        .get(
            "jwt_issuer_reloads_total",
            &[("outcome", "changed"), ("store", "keys")],
        )
        .expect("reloads_total{changed}");
    assert!(changed_after > changed_before, "{}", after.text);
}

#[test]
fn automatic_rotation_shows_its_period_and_a_next_key_per_algorithm() {
    let (_tmp, dir) = keys_dir_with_template();
    let manual = ServeProcess::start(&dir, &[]);
    let text = scrape(&manual.url);
    assert_eq!(
        text.get("jwt_issuer_key_rotation_period_seconds", &[]),
        Some(0.0),
        "{}",
        text.text
    );
    drop(manual);
    let server = ServeProcess::start(&dir, &["--rotate-every", "1d"]);
    // Maintenance publishes a next key for each algorithm with an active key at once.
    let m = wait_for(PATIENCE, "a next key per algorithm", || {
        let m = scrape(&server.url);
        let next: Vec<&str> = m
            .samples
            .iter()
            .filter(|s| s.name == "jwt_issuer_key_state" && s.labels["state"] == "next")
            .map(|s| s.labels["alg"].as_str())
            .collect();
        if next == ["ES256", "RS256"] {
            Ok(m)
        } else {
            Err(m.text)
        }
    });
    assert_eq!(
        m.get("jwt_issuer_key_rotation_period_seconds", &[]),
        Some(86_400.0),
        "{}",
        m.text
    );
}

#[test]
fn a_failing_reload_moves_the_reload_series_and_stops_the_reload_clock() {
    let (_tmp, dir) = keys_dir_with_template();
    let server = ServeProcess::start(&dir, &[]);
    let failed = |m: &Scrape| {
        m.get(
            "jwt_issuer_reloads_total",
            &[("outcome", "failed"), ("store", "keys")],
        )
        .expect("reloads_total{failed}")
    };
    let failures = |m: &Scrape| {
        m.get("jwt_issuer_reload_failures_total", &[("store", "keys")])
            .expect("reload_failures_total")
    };
    let last = |m: &Scrape| {
        m.get(
            "jwt_issuer_last_successful_reload_timestamp_seconds",
            &[("store", "keys")],
        )
        .expect("last successful reload")
    };
    let before = scrape(&server.url);
    assert_eq!(failed(&before), 0.0, "{}", before.text);

    let manifest = dir.join(MANIFEST_FILE);
    let good = fs::read(&manifest).unwrap();
    // Replaced whole (a rename), so no reload reads a half-written file.
    let garbled = dir.join("manifest.garbled");
    fs::write(&garbled, b"{ not json").unwrap();
    fs::rename(&garbled, &manifest).unwrap();
    let failing = wait_for(PATIENCE, "a failed reload", || {
        let m = scrape(&server.url);
        if failed(&m) > 0.0 { Ok(m) } else { Err(m.text) }
    });
    assert!(failures(&failing) > 0.0, "{}", failing.text);
    // While reloads fail, the clock of the last success stands still (alerts use its age):
    // compared between two scrapes that both follow failed reloads.
    wait_until(PATIENCE, "more failed reloads", || {
        failed(&scrape(&server.url)) > failed(&failing)
    });
    let broken = scrape(&server.url);
    wait_until(PATIENCE, "more failed reloads still", || {
        failed(&scrape(&server.url)) > failed(&broken)
    });
    let stalled = scrape(&server.url);
    assert_eq!(last(&stalled), last(&broken), "{}", stalled.text);

    fs::write(&manifest, good).unwrap();
    wait_until(PATIENCE, "a successful reload", || {
        last(&scrape(&server.url)) > last(&broken)
    });
    let healed = scrape(&server.url);
    assert_eq!(
        healed.get("jwt_issuer_store_change_unread", &[("store", "keys")]),
        Some(0.0),
        "{}",
        healed.text
    );
}

#[test]
fn removed_clients_lose_their_issued_series() {
    let (app, [keep, drop]) = TestApp::spawn_with_clients(
        [
            new_client("keep", &[], &["api"]),
            new_client("drop", &[], &["api"]),
        ],
        |_| {},
    );
    app.token_for(&keep);
    app.token_for(&drop);
    let text = scrape(&app.url).text;
    assert!(text.contains("client_id=\"drop\""), "{text}");
    let out = run_cli(&app.keys_dir, &["clients", "remove", "drop"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    wait_until(PATIENCE, "the removed client's series to go", || {
        !scrape(&app.url).text.contains("client_id=\"drop\"")
    });
    assert!(scrape(&app.url).text.contains("client_id=\"keep\""));
}

#[test]
fn no_label_carries_a_string_the_client_sent() {
    let (app, [client, idle]) = TestApp::spawn_with_clients(
        [
            new_client("svc", &["read"], &["api"]),
            // Registered, but never authenticates: its id must not show either.
            new_client("idle-marker", &[], &["api"]),
        ],
        |_| {},
    );
    let marker = "zqmark";
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    let token = |body: &str, headers: &[(&str, &str)]| {
        let mut all = form.to_vec();
        all.extend_from_slice(headers);
        send(
            "POST",
            &format!("{}/oauth2/token", app.url),
            &all,
            Some(body.as_bytes()),
        )
    };
    let unknown = TestClient::new(&format!("{marker}-id"), &format!("{marker}-secret"));
    let wrong = TestClient::new(&idle.id, &format!("{marker}-secret"));
    let basic = basic_auth(&format!("{marker}-basic"), "x");
    let responses = [
        // Unknown ids, by Basic and in the body; a registered id with a wrong secret.
        app.token_response(&unknown, &[]).status,
        app.token_response(&wrong, &[]).status,
        token(
            &format!("grant_type=client_credentials&client_id={marker}-post&client_secret=x"),
            &[],
        )
        .status,
        // Junk in every field a request has.
        token(
            &format!("grant_type={marker}-grant"),
            &[("Authorization", &basic)],
        )
        .status,
        app.token_response(&client, &[("scope", &format!("{marker}-scope"))])
            .status,
        app.token_response(&client, &[("audience", &format!("{marker}-aud"))])
            .status,
        token(
            "grant_type=client_credentials",
            &[
                ("Authorization", &client.basic_auth()),
                ("X-Forwarded-For", &format!("{marker}-xff")),
                ("User-Agent", &format!("{marker}-agent")),
            ],
        )
        .status,
        request("GET", &format!("{}/{marker}-path?{marker}=q", app.url), &[]).status,
        request("DELETE", &format!("{}/.well-known/jwks.json", app.url), &[]).status,
        request(
            "GET",
            &format!("{}/.well-known/jwks.json", app.url),
            &[("If-None-Match", &format!("\"{marker}-etag\""))],
        )
        .status,
    ];
    assert!(responses.contains(&200), "{responses:?}");
    assert!(responses.contains(&401), "{responses:?}");
    let metrics = scrape(&app.url);
    assert!(!metrics.text.contains(marker), "{}", metrics.text);
    assert!(!metrics.text.contains(&idle.id), "{}", metrics.text);
    // Every label value is one the server chose.
    for sample in &metrics.samples {
        for (name, value) in &sample.labels {
            let known = match name.as_str() {
                "client_id" => value == "svc",
                "route" => value == "unmatched" || ROUTES.contains(&value.as_str()),
                "status" => value.len() == 3 && value.bytes().all(|b| b.is_ascii_digit()),
                "le" => value == "+Inf" || value.parse::<f64>().is_ok(),
                "kid" => value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                _ => value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_'),
            };
            assert!(known, "{name}={value:?} in {sample:?}");
        }
    }
}

#[test]
fn the_output_is_prometheus_text() {
    let (app, [client]) = TestApp::spawn_with_clients([new_client("svc", &[], &["api"])], |_| {});
    app.token_for(&client);
    app.jwks();
    let res = app.get("/metrics");
    assert_eq!(
        res.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    // `scrape` fails on any line that is not a comment or `name{labels} value`.
    let metrics = parse(&res.body);
    assert!(metrics.samples.len() > SERIES.len(), "{}", res.body);
    for name in metrics.families.keys() {
        assert!(name.starts_with("jwt_issuer_"), "{name}");
    }
    for (name, kind) in &metrics.families {
        if kind == "counter" {
            assert!(name.ends_with("_total"), "{name}");
        }
    }
}

#[test]
fn the_key_alert_rules_use_only_series_and_label_values_the_server_serves() {
    let rules = key_alert_rules();
    assert!(rules.len() >= 5, "{rules:?}");
    // A server with a value in every family the rules use: automatic rotation (a next
    // key), an issued token, a refused one, a JWKS 200 and 304.
    let (_tmp, dir) = keys_dir_with_template();
    let added = run_cli(&dir, &["clients", "add", "alerts"]);
    assert_eq!(added.code, Some(0), "{}", added.stderr);
    let client = TestClient::new("alerts", added.stdout.trim());
    let server = ServeProcess::start(&dir, &["--rotate-every", "1d"]);
    server.token_for(&client);
    assert_eq!(
        server
            .token_response(&TestClient::new("alerts", "wrong"), &[])
            .status,
        401
    );
    let jwks = server.get("/.well-known/jwks.json");
    let url = format!("{}/.well-known/jwks.json", server.url);
    let etag = jwks.header("etag").expect("etag");
    assert_eq!(request("GET", &url, &[("If-None-Match", etag)]).status, 304);
    let served = wait_for(PATIENCE, "a next key", || {
        let m = scrape(&server.url);
        let next = m
            .samples
            .iter()
            .any(|s| s.name == "jwt_issuer_key_state" && s.labels["state"] == "next");
        if next { Ok(m) } else { Err(m.text) }
    });
    for (alert, expr) in &rules {
        let selectors = selectors(expr);
        assert!(!selectors.is_empty(), "{alert}: no metric in {expr}");
        for (metric, matchers) in selectors {
            let family: Vec<&Sample> = served.samples.iter().filter(|s| s.name == metric).collect();
            assert!(
                !family.is_empty(),
                "{alert}: {metric} is not served:\n{}",
                served.text
            );
            for (label, op, value) in &matchers {
                // Each value a matcher names (`=`, or an alternative of `=~`) is served.
                let values: Vec<&str> = match op.as_str() {
                    "=" => vec![value.as_str()],
                    "=~" => value.split('|').collect(),
                    _ => panic!("{alert}: unexpected matcher {label}{op}{value:?}"),
                };
                for value in values {
                    assert!(
                        family
                            .iter()
                            .any(|s| s.labels.get(label).map(String::as_str) == Some(value)),
                        "{alert}: no {metric}{{{label}=\"{value}\"}} in\n{}",
                        served.text
                    );
                }
            }
        }
    }
}

/// Each alert's name and expression in deploy/prometheus/alerts-keys.yaml.
fn key_alert_rules() -> Vec<(String, String)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus/alerts-keys.yaml");
    let text = fs::read_to_string(&path).expect("read alerts-keys.yaml");
    let docs = yaml_rust2::YamlLoader::load_from_str(&text).expect("alerts-keys.yaml parses");
    docs[0]["groups"]
        .as_vec()
        .expect("groups")
        .iter()
        .flat_map(|group| group["rules"].as_vec().expect("rules"))
        .map(|rule| {
            let alert = rule["alert"].as_str().expect("alert");
            (
                alert.to_owned(),
                rule["expr"].as_str().expect("expr").to_owned(),
            )
        })
        .collect()
}

/// A PromQL label matcher: label, operator, value.
type Matcher = (String, String, String);

/// The `jwt_issuer_*` metrics an expression names, with their matchers (label, op, value).
fn selectors(expr: &str) -> Vec<(String, Vec<Matcher>)> {
    let mut found = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("jwt_issuer_") {
        rest = &rest[at..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        let metric = rest[..end].to_owned();
        rest = &rest[end..];
        let mut matchers = Vec::new();
        if let Some(inner) = rest.strip_prefix('{') {
            let close = inner.find('}').expect("a closing brace");
            for matcher in inner[..close].split(',').map(str::trim) {
                let op_at = matcher.find(['=', '!']).expect("an operator");
                let op_len = if matcher[op_at + 1..].starts_with(['=', '~']) {
                    2
                } else {
                    1
                };
                let value = matcher[op_at + op_len..].trim().trim_matches('"');
                matchers.push((
                    matcher[..op_at].trim().to_owned(),
                    matcher[op_at..op_at + op_len].to_owned(),
                    value.to_owned(),
                ));
            }
            rest = &inner[close..];
        }
        found.push((metric, matchers));
    }
    found
}

/// The routes the server labels requests with.
const ROUTES: [&str; 7] = [
    "/.well-known/jwks.json",
    "/.well-known/openid-configuration",
    "/.well-known/oauth-authorization-server",
    "/oauth2/token",
    "/healthz",
    "/readyz",
    "/metrics",
];

const TOKEN_200: [(&str, &str); 2] = [("route", "/oauth2/token"), ("status", "200")];
const JWKS_200: [(&str, &str); 2] = [("route", "/.well-known/jwks.json"), ("status", "200")];

fn issued_labels<'a>(client: &'a str, kid: &'a str) -> [(&'a str, &'a str); 3] {
    [("alg", "ES256"), ("client_id", client), ("kid", kid)]
}

fn key_labels<'a>(kid: &'a str, state: &'a str) -> [(&'a str, &'a str); 3] {
    [("alg", "ES256"), ("kid", kid), ("state", state)]
}

/// One sample line.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed scrape.
struct Scrape {
    text: String,
    /// Family name -> `# TYPE`.
    families: BTreeMap<String, String>,
    samples: Vec<Sample>,
}

impl Scrape {
    /// The value of the sample with exactly these labels.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.name == name
                    && s.labels.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
    }
}

fn scrape(url: &str) -> Scrape {
    let res = request("GET", &format!("{url}/metrics"), &[]);
    assert_eq!(res.status, 200, "{}", res.body);
    parse(&res.body)
}

/// Parses text exposition format 0.0.4, failing the test on any malformed line: comments
/// are `# HELP name text` or `# TYPE name kind`, samples `name{label="value",...} value`,
/// and every sample belongs to a family with a `# TYPE`.
fn parse(text: &str) -> Scrape {
    let mut families = BTreeMap::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(comment) = line.strip_prefix("# ") {
            let mut parts = comment.splitn(3, ' ');
            let (keyword, name, rest) = (parts.next(), parts.next(), parts.next());
            let name = name
                .filter(|n| is_name(n))
                .unwrap_or_else(|| panic!("{line}"));
            match keyword {
                Some("HELP") => assert!(rest.is_some_and(|h| !h.is_empty()), "{line}"),
                Some("TYPE") => {
                    let kind = rest.unwrap_or_default();
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                        "{line}"
                    );
                    families.insert(name.to_owned(), kind.to_owned());
                }
                _ => panic!("unexpected comment: {line}"),
            }
            continue;
        }
        assert!(!line.is_empty(), "empty line in\n{text}");
        samples.push(parse_sample(line));
    }
    for sample in &samples {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                let base = sample.name.strip_suffix(suffix)?;
                (families.get(base).map(String::as_str) == Some("histogram")).then_some(base)
            })
            .unwrap_or(&sample.name);
        assert!(families.contains_key(family), "no # TYPE for {sample:?}");
    }
    Scrape {
        text: text.to_owned(),
        families,
        samples,
    }
}

fn parse_sample(line: &str) -> Sample {
    let bad = || -> ! { panic!("not `name{{labels}} value`: {line:?}") };
    let name_end = line.find(['{', ' ']).unwrap_or_else(|| bad());
    let name = &line[..name_end];
    if !is_name(name) {
        bad();
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(mut inner) = rest.strip_prefix('{') {
        loop {
            if let Some(after) = inner.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = inner.find("=\"").unwrap_or_else(|| bad());
            let label = &inner[..eq];
            if !is_name(label) {
                bad();
            }
            let mut value = String::new();
            let mut chars = inner[eq + 2..].char_indices();
            let end = loop {
                match chars.next() {
                    Some((i, '"')) => break eq + 2 + i + 1,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c @ ('\\' | '"'))) => value.push(c),
                        _ => bad(),
                    },
                    Some((_, c)) => value.push(c),
                    None => bad(),
                }
            };
            if labels.insert(label.to_owned(), value).is_some() {
                bad();
            }
            inner = &inner[end..];
            inner = inner.strip_prefix(',').unwrap_or(inner);
        }
    }
    let value = rest.strip_prefix(' ').unwrap_or_else(|| bad());
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse::<f64>().unwrap_or_else(|_| bad()),
    };
    Sample {
        name: name.to_owned(),
        labels,
        value,
    }
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`.
fn is_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_' || b == b':')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}
