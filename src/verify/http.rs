//! The HTTP rules of every request the verifying side makes (key sets, discovery
//! documents, introspection): redirects are never followed, each request has a timeout,
//! only a 200 with a JSON Content-Type is read, and only up to a size limit. Text taken
//! from an answer is bounded and made printable before it goes into an error.
//!
//! Shared by [`JwksCache`](super::JwksCache) and [`Introspection`](super::Introspection);
//! failures are [`KeySetError`]s, whose variants name what went wrong with any such request.

use std::net::IpAddr;
use std::time::Duration;

use reqwest::{StatusCode, Url, header};

use super::KeySetError;

/// The HTTP client of the verifying side: no redirects, `timeout` from connect to last byte.
pub(super) fn client(timeout: Duration) -> Result<reqwest::Client, KeySetError> {
    reqwest::Client::builder()
        // A redirect is an answer, not a key set (or an introspection answer): following
        // one would let an open redirect on the issuer's host point us at anyone's keys
        // (issue 10), or send our client credentials there.
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .user_agent(concat!("jwt-issuer/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| KeySetError::Client(e.to_string()))
}

/// GET `url` and read the answer as [`read_json`] does.
pub(super) async fn get_json(
    client: &reqwest::Client,
    url: &str,
    limit: usize,
) -> Result<(Vec<u8>, Option<Duration>), KeySetError> {
    let res = client
        .get(url)
        .send()
        .await
        .map_err(|e| request_failed(url, e))?;
    read_json(url, res, limit).await
}

/// An HTTP client's error for a request to `url`, as the [`KeySetError`] it means.
pub(super) fn request_failed(url: &str, e: reqwest::Error) -> KeySetError {
    // The only request-building input is the URL: reqwest's "builder error" means it is
    // not one it can fetch.
    if e.is_builder() {
        KeySetError::Invalid {
            url: url.to_owned(),
            reason: "not an http:// or https:// URL".to_owned(),
        }
    } else if e.is_timeout() {
        KeySetError::Timeout {
            url: url.to_owned(),
        }
    } else {
        KeySetError::Unreachable {
            url: url.to_owned(),
            reason: e.to_string(),
        }
    }
}

/// The body of `res` (the answer from `url`) and its max-age, read up to `limit` bytes.
/// Only a 200 with a JSON Content-Type is read: a redirect, another status or another
/// type is refused.
pub(super) async fn read_json(
    url: &str,
    mut res: reqwest::Response,
    limit: usize,
) -> Result<(Vec<u8>, Option<Duration>), KeySetError> {
    let too_large = || KeySetError::TooLarge {
        url: url.to_owned(),
        limit,
    };
    let status = res.status();
    if status.is_redirection() {
        return Err(KeySetError::Redirected {
            url: url.to_owned(),
            status: status.as_u16(),
            location: res
                .headers()
                .get(header::LOCATION)
                .map(|v| printable(&String::from_utf8_lossy(v.as_bytes())))
                .unwrap_or_default(),
        });
    }
    if status != StatusCode::OK {
        return Err(KeySetError::Status {
            url: url.to_owned(),
            status: status.as_u16(),
        });
    }
    if res.content_length().is_some_and(|len| len > limit as u64) {
        return Err(too_large());
    }
    let content_type = res
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    if !content_type.as_deref().is_some_and(is_json) {
        return Err(KeySetError::NotJson {
            url: url.to_owned(),
            content_type: content_type.as_deref().map(printable),
        });
    }
    let max_age = res
        .headers()
        .get(header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_max_age);
    let mut body = Vec::new();
    while let Some(chunk) = res.chunk().await.map_err(|e| request_failed(url, e))? {
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, max_age))
}

/// `issuer`'s discovery document and its URL: `/.well-known/openid-configuration`, else
/// `/.well-known/oauth-authorization-server`, whose `issuer` must be exactly `issuer`
/// (RFC 8414 section 3.3). The caller takes the endpoint it needs from it and checks it
/// with [`endpoint_refusal`].
pub(super) async fn discovery_document(
    client: &reqwest::Client,
    issuer: &str,
    limit: usize,
) -> Result<(String, serde_json::Value), KeySetError> {
    // Discovery starts from the issuer's URL (RFC 8414 section 3): `auth.example.com`
    // is answered with the URL meant, not with an HTTP client's error.
    if let Err(e) = crate::Issuer::parse(issuer) {
        return Err(KeySetError::Invalid {
            url: printable(issuer),
            reason: e.to_string(),
        });
    }
    let base = issuer.trim_end_matches('/');
    let mut last_error = KeySetError::NotFetched;
    for path in [
        "/.well-known/openid-configuration",
        "/.well-known/oauth-authorization-server",
    ] {
        let url = format!("{base}{path}");
        match get_json(client, &url, limit).await {
            Ok((body, _)) => {
                let doc: serde_json::Value =
                    serde_json::from_slice(&body).map_err(|e| KeySetError::Invalid {
                        url: url.clone(),
                        reason: format!("not JSON: {e}"),
                    })?;
                let published = doc.get("issuer").and_then(|v| v.as_str());
                if published != Some(issuer) {
                    return Err(KeySetError::IssuerMismatch {
                        url,
                        expected: issuer.to_owned(),
                        published: published.unwrap_or_default().chars().take(256).collect(),
                    });
                }
                return Ok((url, doc));
            }
            // A 404 at the second path says less than what the first one answered
            // (a redirect, a timeout).
            Err(e) => {
                if matches!(
                    last_error,
                    KeySetError::NotFetched | KeySetError::Status { status: 404, .. }
                ) {
                    last_error = e;
                }
            }
        }
    }
    Err(last_error)
}

/// Why an endpoint named by `issuer`'s discovery document (`jwks_uri`,
/// `introspection_endpoint`) may not be used, or `None` when it may: https (or http when
/// issuer and endpoint are both on loopback hosts, for tests and local development), on
/// the issuer's origin unless `allow_foreign`.
pub(super) fn endpoint_refusal(
    issuer: &str,
    endpoint: &str,
    allow_foreign: bool,
) -> Option<&'static str> {
    let Ok(endpoint) = Url::parse(endpoint) else {
        return Some("not an absolute URL");
    };
    let Ok(issuer) = Url::parse(issuer) else {
        return Some("the issuer is not an absolute URL");
    };
    let local = issuer.scheme() == "http" && is_loopback(&issuer) && is_loopback(&endpoint);
    match endpoint.scheme() {
        "https" => {}
        "http" if local => {}
        _ => return Some("not https"),
    }
    if !allow_foreign && endpoint.origin() != issuer.origin() {
        return Some("not on the issuer's origin (scheme, host and port)");
    }
    None
}

/// How much of a text from the network an error repeats.
pub(super) const PRINTABLE_CHARS: usize = 256;

/// Text from the network made fit for a log line or a terminal: at most
/// [`PRINTABLE_CHARS`] characters, control characters replaced.
pub(super) fn printable(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(PRINTABLE_CHARS)
        .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
        .collect();
    if text.chars().nth(PRINTABLE_CHARS).is_some() {
        out.push('…');
    }
    out
}

/// True for a host on this machine: 127.0.0.0/8, ::1, `localhost`.
fn is_loopback(url: &Url) -> bool {
    match url.host_str() {
        Some(host) if host.eq_ignore_ascii_case("localhost") => true,
        Some(host) => host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

/// True for a JSON media type: `application/json` or `application/<anything>+json`
/// (RFC 6839 section 3.1; `application/jwk-set+json`, RFC 7517 section 8.5), any
/// parameters, any case.
fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    let subtype = subtype.to_ascii_lowercase();
    kind.eq_ignore_ascii_case("application")
        && (subtype == "json" || (subtype.len() > "+json".len() && subtype.ends_with("+json")))
}

/// `max-age=N` from a Cache-Control value; `no-store`/`no-cache` count as 0.
fn parse_max_age(value: &str) -> Option<Duration> {
    let mut max_age = None;
    for directive in value.split(',').map(str::trim) {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-store" || lower == "no-cache" {
            return Some(Duration::ZERO);
        }
        if let Some(n) = lower.strip_prefix("max-age=") {
            max_age = n.trim_matches('"').parse().ok().map(Duration::from_secs);
        }
    }
    max_age
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_parsing() {
        assert_eq!(
            parse_max_age("public, max-age=300"),
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            parse_max_age("max-age=\"60\""),
            Some(Duration::from_secs(60))
        );
        assert_eq!(parse_max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(parse_max_age("public"), None);
        assert_eq!(parse_max_age("max-age=abc"), None);
    }

    #[test]
    fn a_discovered_endpoint_must_be_https_on_the_issuers_origin() {
        let refusal = |issuer, endpoint| endpoint_refusal(issuer, endpoint, false);
        let iss = "https://auth.example.com";
        for ok in [
            "https://auth.example.com/.well-known/jwks.json",
            "https://auth.example.com:443/keys",
            "https://AUTH.example.com/keys",
        ] {
            assert_eq!(refusal(iss, ok), None, "{ok}");
        }
        assert_eq!(
            refusal(
                "https://auth.example.com/realms/a",
                "https://auth.example.com/k"
            ),
            None,
            "the origin, not the path"
        );
        let foreign = Some("not on the issuer's origin (scheme, host and port)");
        for (endpoint, why) in [
            ("http://auth.example.com/keys", Some("not https")),
            ("https://auth.example.com:8443/keys", foreign),
            ("https://cdn.example.com/keys", foreign),
            ("https://auth.example.com.evil.com/keys", foreign),
            ("https://evil.com/auth.example.com/keys", foreign),
            ("//auth.example.com/keys", Some("not an absolute URL")),
            ("/keys", Some("not an absolute URL")),
            ("file:///etc/keys.json", Some("not https")),
            ("ftp://auth.example.com/keys", Some("not https")),
        ] {
            assert_eq!(refusal(iss, endpoint), why, "{endpoint}");
        }
        // http only from a loopback issuer, to a loopback host, same origin.
        for (issuer, endpoint) in [
            (
                "http://127.0.0.1:8080",
                "http://127.0.0.1:8080/.well-known/jwks.json",
            ),
            ("http://127.1.2.3:8080", "http://127.1.2.3:8080/k"),
            ("http://[::1]:8080", "http://[::1]:8080/k"),
            ("http://localhost:8080", "http://LocalHost:8080/k"),
        ] {
            assert_eq!(refusal(issuer, endpoint), None, "{issuer} {endpoint}");
        }
        assert_eq!(
            refusal("http://auth.internal", "http://auth.internal/k"),
            Some("not https")
        );
        assert_eq!(
            refusal("http://127.0.0.1:8080", "http://127.0.0.1:9090/k"),
            foreign
        );
        assert_eq!(
            refusal("http://127.0.0.1:8080", "http://localhost:8080/k"),
            foreign
        );
    }

    #[test]
    fn the_opt_out_accepts_another_origin_but_still_wants_https() {
        let allowed = |issuer, endpoint| endpoint_refusal(issuer, endpoint, true);
        assert_eq!(
            allowed("https://auth.example.com", "https://cdn.example.net/keys"),
            None
        );
        assert_eq!(
            allowed("http://127.0.0.1:8080", "http://127.0.0.1:9090/k"),
            None
        );
        for (issuer, endpoint) in [
            ("https://auth.example.com", "http://cdn.example.net/keys"),
            ("https://auth.example.com", "http://127.0.0.1/keys"),
            ("http://127.0.0.1:8080", "http://cdn.example.net/keys"),
        ] {
            assert_eq!(
                allowed(issuer, endpoint),
                Some("not https"),
                "{issuer} {endpoint}"
            );
        }
    }

    #[test]
    fn json_content_types() {
        for json in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON;charset=UTF-8",
            "application/jwk-set+json",
            "application/jwk-set+json; charset=utf-8",
            " application/json ",
        ] {
            assert!(is_json(json), "{json}");
        }
        for other in [
            "",
            "text/html",
            "text/plain; charset=utf-8",
            "text/json",
            "application/octet-stream",
            "application/jsonp",
            "application/javascript",
            "application/+json",
            "application/json-seq",
            "application/token-introspection+jwt",
            "json",
            "application/x-json-stream",
            "multipart/related; type=application/json",
        ] {
            assert!(!is_json(other), "{other}");
        }
    }

    #[test]
    fn text_from_the_network_is_bounded_and_printable() {
        assert_eq!(printable("a\nb\x1b[31m"), "a\u{FFFD}b\u{FFFD}[31m");
        let long = "k".repeat(10_000);
        assert_eq!(printable(&long).chars().count(), PRINTABLE_CHARS + 1);
        assert_eq!(
            printable(&"k".repeat(PRINTABLE_CHARS)),
            "k".repeat(PRINTABLE_CHARS)
        );
    }
}
