//! A downstream API that trusts jwt-issuer's access tokens: one public route, one route
//! that needs a valid token with the `read` scope, verified locally, and `POST
//! /orders/refund`, which also needs the issuer to hold the token active (RFC 7662
//! introspection), so that a revoked token stops there at once rather than at its `exp`.
//! `GET /orders/dpop` takes DPoP-bound tokens only (RFC 9449): `Authorization: DPoP
//! <token>` with a `DPoP` proof made by the key the token is bound to, for this request.
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
//! (default `orders-api`), `BIND` (default `127.0.0.1:9090`), and for `/orders/refund` this
//! service's own client at the issuer, one allowed to introspect:
//! `INTROSPECTION_CLIENT_ID` and `INTROSPECTION_CLIENT_SECRET` (from the environment only,
//! never a flag, which `ps` would show). Without them `/orders/refund` answers 503: it
//! never falls back to local verification alone. `PUBLIC_URL` (default
//! `http://{BIND}`) is this service's URL as clients see it, which DPoP proofs name.

use std::sync::Arc;

use actix_web::{App, HttpResponse, HttpServer, get, post, web};
use jwt_issuer::secret::ClientSecret;
use jwt_issuer::verify::{
    BearerClaims, Introspection, IntrospectionOptions, JwksCache, JwksCacheOptions, Validation,
    Verifier,
};
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

/// Mounted under `/orders/refund` with a verifier of its own that introspects: a refund
/// must not be made with a token revoked since it was issued.
#[post("")]
async fn refund(BearerClaims(claims): BearerClaims<AccessClaims>) -> HttpResponse {
    if !claims.scope.split(' ').any(|s| s == "write") {
        return HttpResponse::Forbidden()
            .insert_header((
                "WWW-Authenticate",
                "Bearer error=\"insufficient_scope\", scope=\"write\"",
            ))
            .json(serde_json::json!({"error": "insufficient_scope"}));
    }
    HttpResponse::Ok().json(serde_json::json!({
        "refunded": 1,
        "served_to": claims.sub,
        "client_id": claims.client_id,
    }))
}

/// Mounted under `/orders/dpop` with a verifier that requires DPoP: a copied token is of
/// no use here without the key it is bound to.
#[get("")]
async fn dpop_orders(BearerClaims(claims): BearerClaims<AccessClaims>) -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({
        "orders": [{"id": 1, "item": "coffee"}],
        "served_to": claims.sub,
        "client_id": claims.client_id,
        "sender_constrained": true,
    }))
}

/// `/orders/refund` when no introspection client is configured: refused, never served
/// by the app's local-only verifier.
async fn refund_unconfigured() -> HttpResponse {
    HttpResponse::ServiceUnavailable().json(serde_json::json!({
        "error": "server_error",
        "error_description": "token introspection is not configured",
    }))
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let env =
        |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_owned());
    let issuer = env("ISSUER", "http://127.0.0.1:8080");
    let audience = env("AUDIENCE", "orders-api");
    let bind = env("BIND", "127.0.0.1:9090");
    let public_url = env("PUBLIC_URL", &format!("http://{bind}"));

    // Discovery gives the JWKS URL; the cache follows the issuer's Cache-Control and
    // refetches on a new kid (after a cooldown), so key rotation needs no restart here.
    let keys = Arc::new(
        JwksCache::discover(&issuer, JwksCacheOptions::default())
            .await
            .map_err(std::io::Error::other)?,
    );
    let validation = Validation::new(issuer.clone(), [audience.clone()]).with_typ("at+jwt");
    let verifier = Verifier::remote(keys, validation);

    // The same keys and rules, plus "not revoked": answers are cached (30 s for active,
    // until exp for inactive), so a refund costs at most one call per token per 30 s.
    let strict = match (
        std::env::var("INTROSPECTION_CLIENT_ID"),
        std::env::var("INTROSPECTION_CLIENT_SECRET"),
    ) {
        (Ok(client_id), Ok(secret)) => {
            let introspection = Introspection::discover(
                &issuer,
                client_id,
                ClientSecret::new(secret),
                IntrospectionOptions::default(),
            )
            .await
            .map_err(std::io::Error::other)?;
            println!("/orders/refund introspects at {}", introspection.endpoint());
            Some(web::Data::new(
                verifier.clone().with_introspection(Arc::new(introspection)),
            ))
        }
        _ => {
            println!(
                "/orders/refund answers 503: set INTROSPECTION_CLIENT_ID and INTROSPECTION_CLIENT_SECRET"
            );
            None
        }
    };
    // Proofs name the URL the client called: this service's public one, not what a
    // request's Host or X-Forwarded-* headers claim.
    let verifier = verifier.with_base_url(public_url);
    let dpop_only = web::Data::new(verifier.clone().require_dpop());
    let verifier = web::Data::new(verifier);

    println!("downstream_service on http://{bind} (issuer {issuer}, audience {audience})");
    HttpServer::new(move || {
        // Each route uses the innermost verifier: the scope's own for /orders/refund.
        let refunds = match &strict {
            Some(strict) => web::scope("/orders/refund")
                .app_data(strict.clone())
                .service(refund),
            None => web::scope("/orders/refund").default_service(web::to(refund_unconfigured)),
        };
        App::new()
            .app_data(verifier.clone())
            .service(public)
            .service(orders)
            .service(refunds)
            .service(
                web::scope("/orders/dpop")
                    .app_data(dpop_only.clone())
                    .service(dpop_orders),
            )
    })
    .bind(&bind)?
    .run()
    .await
}
