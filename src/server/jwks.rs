//! `GET /.well-known/jwks.json`: the prepared JWKS body, cacheable, with ETag and 304.

use actix_web::http::header::{self, HeaderMap, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};

use super::AppState;

/// Serves the JWKS serialized at start; `If-None-Match` with the current ETag gives 304.
/// A replica whose store has not answered for `--store-stale-after` answers 503 instead:
/// it cannot vouch that no key in its set was revoked meanwhile, and a verifier keeps the
/// set it has (or asks another replica) rather than caching this one's again.
pub async fn jwks(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if state.store_is_stale() {
        return HttpResponse::ServiceUnavailable()
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .insert_header((header::RETRY_AFTER, "1"))
            .json(crate::error_body::ErrorBody {
                error: "temporarily_unavailable",
                error_description: "the key store has not answered for longer than --store-stale-after: a key in this replica's set may have been revoked meanwhile",
            });
    }
    let published = state.published.load();
    let doc = &published.jwks;
    let not_modified = if_none_match_hits(req.headers(), doc.etag());
    state.metrics.observe_jwks(not_modified);
    let mut res = if not_modified {
        HttpResponse::NotModified().finish()
    } else {
        HttpResponse::Ok()
            .insert_header((header::CONTENT_TYPE, "application/json"))
            .body(doc.body().clone())
    };
    let headers = res.headers_mut();
    headers.insert(header::CACHE_CONTROL, state.jwks_cache_control(&published));
    headers.insert(header::ETAG, published.jwks_etag.clone());
    // Public keys are meant to be fetched from anywhere, browsers included.
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    res
}

/// RFC 9110 section 13.1.2: `*` or any listed tag equal under weak comparison.
fn if_none_match_hits(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|tag| tag.trim())
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append(header::IF_NONE_MATCH, HeaderValue::from_str(v).unwrap());
        }
        map
    }

    #[test]
    fn if_none_match_uses_weak_comparison_over_lists() {
        let tag = "\"abc\"";
        assert!(if_none_match_hits(&headers(&["\"abc\""]), tag));
        assert!(if_none_match_hits(&headers(&["W/\"abc\""]), tag));
        assert!(if_none_match_hits(&headers(&["\"x\", \"abc\""]), tag));
        assert!(if_none_match_hits(&headers(&["\"x\"", "\"abc\""]), tag));
        assert!(if_none_match_hits(&headers(&["*"]), tag));
        assert!(!if_none_match_hits(&headers(&["\"abcd\""]), tag));
        assert!(!if_none_match_hits(&headers(&["abc"]), tag));
        assert!(!if_none_match_hits(&headers(&[]), tag));
    }
}
