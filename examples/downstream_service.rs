//! A downstream API that trusts jwt-issuer's access tokens: one public route, one route
//! that needs a valid token with the `read` scope.
//!
//! ```sh
//! cargo run --release -- serve &                       # the issuer, on 127.0.0.1:8080
//! SECRET=$(cargo run -q --release -- clients add orders-svc --scope read --audience orders-api)
//! cargo run --release --example downstream_service &   # this API, on 127.0.0.1:9090
//! TOKEN=$(curl -s -u "orders-svc:$SECRET" -d grant_type=client_credentials \
//!   http://127.0.0.1:8080/oauth2/token | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
//! curl -s http://127.0.0.1:9090/orders -H "Authorization: Bearer $TOKEN"
//! ```
//!
//! Settings from the environment: `ISSUER` (default `http://127.0.0.1:8080`), `AUDIENCE`
//! (default `orders-api`), `BIND` (default `127.0.0.1:9090`).

use actix_web::{App, HttpResponse, HttpServer, get, web};
use jwt_issuer::verify::{BearerClaims, JwksCache, JwksCacheOptions, Validation, Verifier};
use serde::Deserialize;

/// The claims this API reads from an RFC 9068 access token.
#[derive(Debug, Deserialize)]
struct AccessClaims {
    sub: String,
    client_id: String,
    #[serde(default)]
    scope: String,
}

#[get("/public")]
async fn public() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"message": "anyone may read this"}))
}

#[get("/orders")]
async fn orders(BearerClaims(claims): BearerClaims<AccessClaims>) -> HttpResponse {
    if !claims.scope.split(' ').any(|s| s == "read") {
        // RFC 6750 section 3.1: a valid token without the needed scope.
        return HttpResponse::Forbidden()
            .insert_header((
                "WWW-Authenticate",
                "Bearer error=\"insufficient_scope\", scope=\"read\"",
            ))
            .json(serde_json::json!({"error": "insufficient_scope"}));
    }
    HttpResponse::Ok().json(serde_json::json!({
        "orders": [{"id": 1, "item": "coffee"}],
        "served_to": claims.sub,
        "client_id": claims.client_id,
    }))
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let env =
        |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_owned());
    let issuer = env("ISSUER", "http://127.0.0.1:8080");
    let audience = env("AUDIENCE", "orders-api");
    let bind = env("BIND", "127.0.0.1:9090");

    // Discovery gives the JWKS URL; the cache follows the issuer's Cache-Control and
    // refetches on a new kid (after a cooldown), so key rotation needs no restart here.
    let keys = JwksCache::discover(&issuer, JwksCacheOptions::default())
        .await
        .map_err(std::io::Error::other)?;
    let validation = Validation::new(issuer.clone(), [audience.clone()]).with_typ("at+jwt");
    let verifier = web::Data::new(Verifier::remote(keys, validation));

    println!("downstream_service on http://{bind} (issuer {issuer}, audience {audience})");
    HttpServer::new(move || {
        App::new()
            .app_data(verifier.clone())
            .service(public)
            .service(orders)
    })
    .bind(&bind)?
    .run()
    .await
}
