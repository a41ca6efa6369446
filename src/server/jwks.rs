//! `GET /.well-known/jwks.json`: the prepared JWKS body, cacheable, with ETag and 304.

use actix_web::http::header::{self, HeaderMap, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};

use actix_web::web::Bytes;
use aws_lc_rs::digest;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::AppState;
use crate::jwks::JwkSet;

/// A JWKS serialized once, with its strong ETag, ready to be served as is.
#[derive(Debug, Clone)]
pub struct JwksDocument {
    body: Bytes,
    etag: String,
}

impl JwksDocument {
    /// Serializes `set` and derives the ETag from the bytes, so the tag changes exactly
    /// when the published key set does.
    pub fn new(set: &JwkSet) -> Self {
        // Serializing these types cannot fail: every field is a string or a unit enum.
        let body = serde_json::to_vec(set).unwrap_or_else(|_| b"{\"keys\":[]}".to_vec());
        let hash = digest::digest(&digest::SHA256, &body);
        let etag = format!("\"{}\"", URL_SAFE_NO_PAD.encode(&hash.as_ref()[..16]));
        Self {
            body: body.into(),
            etag,
        }
    }

    /// The JSON bytes.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The quoted strong entity tag.
    pub fn etag(&self) -> &str {
        &self.etag
    }
}

/// Serves the JWKS serialized at start; `If-None-Match` with the current ETag gives 304.
pub async fn jwks(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
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
    use crate::SigningAlg;
    use crate::jwks::{Jwk, PublicKeyParams};

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

    #[test]
    fn etag_follows_the_key_set() {
        let a = JwkSet {
            keys: vec![Jwk::new(
                PublicKeyParams::p256(&[1; 32], &[2; 32]),
                SigningAlg::Es256,
            )],
        };
        let b = JwkSet {
            keys: vec![Jwk::new(
                PublicKeyParams::p256(&[3; 32], &[2; 32]),
                SigningAlg::Es256,
            )],
        };
        assert_eq!(
            JwksDocument::new(&a).etag(),
            JwksDocument::new(&a.clone()).etag()
        );
        assert_ne!(JwksDocument::new(&a).etag(), JwksDocument::new(&b).etag());
    }
}
