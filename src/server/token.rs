//! `POST /oauth2/token`: the client credentials grant (RFC 6749 section 4.4) issuing JWT
//! access tokens (RFC 9068).

use std::net::IpAddr;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Serialize;
use serde_json::{Map, Value};

use super::AppState;
use crate::oauth::OAuthError;
use crate::oauth::grant::{self, Requested};
use crate::oauth::request::{self, Form, MAX_BODY_BYTES};
use crate::sign::{IssuedToken, TokenRequest, TokenType};

/// The successful response of RFC 6749 section 5.1.
#[derive(Debug, Serialize)]
struct TokenResponse<'a> {
    access_token: &'a str,
    token_type: &'static str,
    expires_in: u64,
    scope: &'a str,
}

/// Handles one token request; every outcome is logged (client id, outcome, jti or error),
/// never a secret or a token.
pub async fn token(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, OAuthError> {
    let addr = req.peer_addr().map(|a| a.ip());
    let mut client_id = None;
    let result = issue(&req, payload, &state, addr, &mut client_id).await;
    // Ids come from the network: bounded, and escaped so they cannot forge log lines.
    let client = client_id.as_deref().unwrap_or("-");
    let client = client[..client.floor_char_boundary(128)].escape_debug();
    match &result {
        Ok((issued, scope)) => {
            state.metrics.observe_token(Ok(issued.alg.as_str()));
            tracing::info!(client_id = %client, outcome = "issued", jti = %issued.jti, kid = %issued.kid, alg = %issued.alg, scope = %scope, "token");
        }
        Err(err) => {
            state.metrics.observe_token(Err(err.code()));
            tracing::warn!(client_id = %client, peer = ?addr, outcome = "refused", error = err.code(), reason = %err, "token");
        }
    }
    let (issued, scope) = result?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::PRAGMA, "no-cache"))
        .json(TokenResponse {
            access_token: &issued.token,
            token_type: "Bearer",
            expires_in: issued.expires_at - issued.issued_at,
            scope: &scope,
        }))
}

async fn issue(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    addr: Option<IpAddr>,
    client_id: &mut Option<String>,
) -> Result<(IssuedToken, String), OAuthError> {
    let mut form = read_form(req, payload).await?;
    match form.get("grant_type") {
        None => return Err(OAuthError::InvalidRequest("grant_type is missing".into())),
        Some("client_credentials") => {}
        Some(other) => {
            return Err(OAuthError::UnsupportedGrantType(
                other.chars().take(64).collect(),
            ));
        }
    }
    let creds = request::credentials(req.headers(), &mut form)?;
    *client_id = Some(creds.client_id.clone());
    let basic = creds.method == request::AuthMethod::Basic;
    // An id no client can have is refused before the limiter, so junk ids (up to the body
    // size) never take space in its tables.
    if !crate::oauth::clients::is_valid_client_id(&creds.client_id) {
        return Err(OAuthError::InvalidClient { basic });
    }
    state
        .limiter
        .check(&creds.client_id, addr)
        .map_err(|retry_after| OAuthError::TooManyAttempts { retry_after })?;
    let clients = state.clients.load();
    let Some(client) = clients.authenticate(&creds.client_id, &creds.secret) else {
        state.limiter.record_failure(&creds.client_id, addr);
        return Err(OAuthError::InvalidClient { basic });
    };
    let requested = Requested {
        scope: form.get("scope"),
        audience: form.get("audience"),
        resource: form.get("resource"),
    };
    let published = state.published.load();
    let grant = grant::resolve(
        client,
        requested,
        published.signer.issuer(),
        state.token_ttl,
    )?;
    let scope = grant.scopes.join(" ");
    let mut extra = Map::new();
    extra.insert("client_id".into(), Value::String(client.client_id.clone()));
    if !scope.is_empty() {
        extra.insert("scope".into(), Value::String(scope.clone()));
    }
    let request = TokenRequest {
        sub: client.client_id.clone(),
        aud: vec![grant.audience],
        ttl: grant.ttl,
        alg: grant.alg,
        typ: TokenType::AccessToken,
        extra,
    };
    let issued = published
        .signer
        .issue(&request)
        .map_err(|e| OAuthError::Internal(e.to_string()))?;
    Ok((issued, scope))
}

/// Reads and parses the form body: right content type, at most [`MAX_BODY_BYTES`].
async fn read_form(req: &HttpRequest, payload: web::Payload) -> Result<Form, OAuthError> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::trim);
    if !content_type.is_some_and(|ct| ct.eq_ignore_ascii_case("application/x-www-form-urlencoded"))
    {
        return Err(OAuthError::InvalidRequest(
            "Content-Type must be application/x-www-form-urlencoded".into(),
        ));
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > MAX_BODY_BYTES as u64) {
        return Err(OAuthError::PayloadTooLarge(MAX_BODY_BYTES));
    }
    let body = payload
        .to_bytes_limited(MAX_BODY_BYTES)
        .await
        .map_err(|_| OAuthError::PayloadTooLarge(MAX_BODY_BYTES))?
        .map_err(|_| OAuthError::InvalidRequest("the request body could not be read".into()))?;
    Form::parse(&body)
}
