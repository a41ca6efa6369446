//! One log line per HTTP request (`request`, at info): request id, method, route (the
//! bounded label, never the raw path), status, latency in ms, the client's address and, on
//! the token endpoint, the outcome (client id, jti or error). It is the only line a token
//! request makes: formatting and writing a line is a measurable part of a token's cost, so
//! the endpoint's own line was folded into this one.
//!
//! Every response carries `X-Request-Id`: the client's own when it sent a usable one (1 to
//! [`MAX_REQUEST_ID`] visible ASCII characters), otherwise one made here (128 random bits,
//! hex), so a client can quote it and an operator find the line and the audit entry.

use std::future::{Future, Ready, ready};
use std::net::IpAddr;
use std::pin::Pin;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform, forward_ready};
use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::{HttpMessage as _, HttpRequest, web};

use super::{AppState, ROUTES};
use crate::oauth::{Issued, NamedClient, OAuthError};

/// The request id header, read and answered.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The longest request id taken from a client.
pub const MAX_REQUEST_ID: usize = 128;

/// The middleware: `App::new().wrap(RequestLog)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestLog;

/// The request's id, in the request's extensions for handlers (the audit log records it).
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// What the token endpoint came to, left in the request's extensions for its log line.
#[derive(Debug, Clone)]
pub struct TokenLog {
    client_id: Option<String>,
    issued: Option<(String, String, &'static str, String)>,
    error: Option<(&'static str, String)>,
    /// The external issuer and subject of a federation grant's presented token.
    act: Option<(String, String)>,
}

impl TokenLog {
    /// The log's view of a token request: the client as it may be shown, and the token's
    /// jti, kid, alg and scope or the error.
    pub fn new(result: &Result<Issued, OAuthError>, client: &NamedClient) -> Self {
        // Registered ids are bounded and plain; the bound and escape are a second fence.
        let client_id = client
            .for_log()
            .map(|id| id[..id.floor_char_boundary(128)].escape_debug().to_string());
        // Verified, but another issuer's strings: bounded and escaped.
        let shown = |s: &str| s[..s.floor_char_boundary(256)].escape_debug().to_string();
        match result {
            Ok(issued) => Self {
                act: issued
                    .federated
                    .as_ref()
                    .map(|f| (shown(&f.issuer), shown(&f.subject))),
                client_id,
                issued: Some((
                    issued.token.jti.clone(),
                    issued.token.kid.clone(),
                    issued.token.alg.as_str(),
                    issued.scope.clone(),
                )),
                error: None,
            },
            Err(err) => Self {
                act: None,
                client_id,
                issued: None,
                error: Some((err.code(), err.detail())),
            },
        }
    }
}

/// The request's id as the middleware set it; `-` in an app without the middleware.
pub fn request_id(req: &HttpRequest) -> String {
    req.extensions()
        .get::<RequestId>()
        .map_or_else(|| "-".to_owned(), |id| id.0.clone())
}

/// The client's address: the TCP peer, unless the peer is a trusted proxy; then the
/// right-most address in `X-Forwarded-For` that is not itself a trusted proxy (entries
/// left of it could be written by the client).
pub fn client_address(req: &HttpRequest, trusted: &[IpAddr]) -> Option<IpAddr> {
    // An IPv4 client of a dual-stack listener arrives as ::ffff:a.b.c.d.
    let peer = req.peer_addr().map(|a| a.ip().to_canonical())?;
    if !trusted.contains(&peer) {
        return Some(peer);
    }
    let forwarded = req
        .headers()
        .get_all("x-forwarded-for")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    for entry in forwarded.iter().rev() {
        match entry.parse::<IpAddr>().map(|ip| ip.to_canonical()) {
            Ok(ip) if trusted.contains(&ip) => continue,
            Ok(ip) => return Some(ip),
            // Garbage where an address should be: the proxy's own address counts.
            Err(_) => return Some(peer),
        }
    }
    Some(peer)
}

impl<S, B> Transform<S, ServiceRequest> for RequestLog
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<B>;
    type Error = actix_web::Error;
    type Transform = RequestLogService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(RequestLogService { service }))
    }
}

/// [`RequestLog`] around a service.
pub struct RequestLogService<S> {
    service: S,
}

impl<S, B> Service<ServiceRequest> for RequestLogService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<B>;
    type Error = actix_web::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>>>>;

    forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        let started = Instant::now();
        let id = given_request_id(req.headers()).unwrap_or_else(new_request_id);
        req.extensions_mut().insert(RequestId(id.clone()));
        // Taken now: the request cannot be held across the call (the router needs it alone).
        let seen = Seen {
            method: req.method().clone(),
            route: route_label(req.path()),
            peer: client_address(
                req.request(),
                req.app_data::<web::Data<AppState>>()
                    .map_or(&[], |s| s.trusted_proxies()),
            ),
        };
        let fut = self.service.call(req);
        Box::pin(async move {
            let mut res = match fut.await {
                Ok(res) => res,
                Err(err) => {
                    // Handlers' errors are responses by now; this is a middleware's.
                    let status = err.as_response_error().status_code();
                    log_request(&seen, &id, status, None, started);
                    return Err(err);
                }
            };
            log_request(
                &seen,
                &id,
                res.status(),
                res.request().extensions().get::<TokenLog>(),
                started,
            );
            // Visible ASCII only (checked or made so): always a valid header value.
            if let Ok(value) = HeaderValue::from_str(&id) {
                res.headers_mut()
                    .insert(HeaderName::from_static(REQUEST_ID_HEADER), value);
            }
            Ok(res)
        })
    }
}

/// What the line says of the request, taken before it is handled.
struct Seen {
    method: Method,
    route: &'static str,
    peer: Option<IpAddr>,
}

/// The client's request id, when it is one to keep: 1 to [`MAX_REQUEST_ID`] visible ASCII
/// characters (no spaces or control characters, which could split or forge log lines).
fn given_request_id(headers: &HeaderMap) -> Option<String> {
    let mut values = headers.get_all(REQUEST_ID_HEADER);
    let value = values.next()?;
    // Two ids: neither is believed.
    if values.next().is_some() {
        return None;
    }
    let bytes = value.as_bytes();
    let usable = !bytes.is_empty()
        && bytes.len() <= MAX_REQUEST_ID
        && bytes.iter().all(|b| b.is_ascii_graphic());
    usable.then(|| String::from_utf8_lossy(bytes).into_owned())
}

/// A fresh request id: 128 random bits, hex.
fn new_request_id() -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut bytes = [0u8; 16];
    // The system's generator does not fail on a running system; all zeros would still be
    // a valid (if useless) id.
    let _ = aws_lc_rs::rand::fill(&mut bytes);
    let mut hex = String::with_capacity(32);
    for b in bytes {
        hex.push(char::from(HEX[usize::from(b >> 4)]));
        hex.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    hex
}

/// The fixed path the request was for, or `unmatched` (the series and the log stay
/// bounded whatever paths clients send).
fn route_label(path: &str) -> &'static str {
    ROUTES
        .iter()
        .find(|r| **r == path)
        .copied()
        .unwrap_or("unmatched")
}

/// The request's one line: at info; a refused token request at warn, an internal error
/// (500) at error.
fn log_request(
    seen: &Seen,
    id: &str,
    status: StatusCode,
    token: Option<&TokenLog>,
    started: Instant,
) {
    // Microsecond resolution is plenty; fewer digits keep the line short.
    let latency_ms = (started.elapsed().as_secs_f64() * 1_000_000.0).round() / 1000.0;
    let peer = seen.peer.map(tracing::field::display);
    let client_id = token.and_then(|t| t.client_id.as_deref());
    let outcome = token.map(|t| {
        if t.issued.is_some() {
            "issued"
        } else {
            "refused"
        }
    });
    let issued = token.and_then(|t| t.issued.as_ref());
    let error = token.and_then(|t| t.error.as_ref());
    let act = token.and_then(|t| t.act.as_ref());
    macro_rules! line {
        ($level:ident) => {
            tracing::$level!(
                request_id = id,
                method = %seen.method,
                route = seen.route,
                status = status.as_u16(),
                latency_ms,
                peer,
                client_id,
                outcome,
                jti = issued.map(|i| i.0.as_str()),
                kid = issued.map(|i| i.1.as_str()),
                alg = issued.map(|i| i.2),
                scope = issued.map(|i| i.3.as_str()),
                act_iss = act.map(|a| a.0.as_str()),
                act_sub = act.map(|a| a.1.as_str()),
                error = error.map(|e| e.0),
                reason = error.map(|e| e.1.as_str()),
                "request"
            )
        };
    }
    // A fault the server cannot serve through (a broken key, an unread store change, the
    // audit log) is logged once at error by what noticed it; its refusals are warnings.
    if status == StatusCode::INTERNAL_SERVER_ERROR {
        line!(error);
    } else if error.is_some() {
        line!(warn);
    } else {
        line!(info);
    }
}

#[cfg(test)]
mod tests {
    use actix_web::http::header::HeaderValue;

    use super::*;

    fn with_id(values: &[&[u8]]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(
                HeaderName::from_static(REQUEST_ID_HEADER),
                HeaderValue::from_bytes(value).unwrap(),
            );
        }
        headers
    }

    #[test]
    fn a_usable_request_id_is_kept_and_anything_else_replaced() {
        assert_eq!(
            given_request_id(&with_id(&[b"abc-123_X.y/z"])).as_deref(),
            Some("abc-123_X.y/z")
        );
        let longest = "a".repeat(MAX_REQUEST_ID);
        assert_eq!(
            given_request_id(&with_id(&[longest.as_bytes()])),
            Some(longest.clone())
        );
        for bad in [
            &b""[..],
            &b"has space"[..],
            &b"tab\there"[..],
            &b"caf\xc3\xa9"[..],
            "a".repeat(MAX_REQUEST_ID + 1).as_bytes(),
        ] {
            assert_eq!(given_request_id(&with_id(&[bad])), None, "{bad:?}");
        }
        assert_eq!(given_request_id(&with_id(&[b"a", b"b"])), None);
        assert_eq!(given_request_id(&HeaderMap::new()), None);
    }

    #[test]
    fn made_request_ids_are_128_random_bits_in_hex() {
        let (a, b) = (new_request_id(), new_request_id());
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn routes_are_labelled_by_their_fixed_path_only() {
        assert_eq!(route_label("/oauth2/token"), "/oauth2/token");
        assert_eq!(route_label("/oauth2/token/x"), "unmatched");
        assert_eq!(route_label("/etc/passwd"), "unmatched");
    }
}
