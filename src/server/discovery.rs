//! `GET /.well-known/openid-configuration` and `/.well-known/oauth-authorization-server`:
//! the prepared [`Metadata`](super::documents::Metadata) document.

use actix_web::http::header;
use actix_web::web::Bytes;
use actix_web::{HttpResponse, web};

use super::AppState;

/// `GET /.well-known/openid-configuration` and `/.well-known/oauth-authorization-server`.
pub async fn metadata(state: web::Data<AppState>) -> HttpResponse {
    let published = state.published.load();
    let body = Bytes::clone(&state.discovery.load());
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "application/json"))
        .insert_header((header::CACHE_CONTROL, state.jwks_cache_control(&published)))
        .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"))
        .body(body)
}
