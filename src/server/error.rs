//! JSON error bodies for HTTP, in the OAuth 2.0 shape `{error, error_description}`.

pub use crate::error_body::ErrorBody;
use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use actix_web::http::header::{self, CacheControl, CacheDirective};

/// 404 for every path the service does not serve.
pub async fn not_found() -> HttpResponse {
    json_error(
        StatusCode::NOT_FOUND,
        "not_found",
        "no resource at this path",
    )
}

/// 405 for a known path with a method it does not take; `allow` lists the methods it does.
pub fn method_not_allowed(allow: &'static str) -> HttpResponse {
    let mut res = json_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this resource does not accept that method",
    );
    res.headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static(allow));
    res
}

/// A JSON error response with `Cache-Control: no-store`.
pub fn json_error(status: StatusCode, error: &str, description: &str) -> HttpResponse {
    HttpResponse::build(status)
        .insert_header(CacheControl(vec![CacheDirective::NoStore]))
        .json(ErrorBody {
            error,
            error_description: description,
        })
}
