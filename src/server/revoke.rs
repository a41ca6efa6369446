//! `POST /oauth2/revoke` (RFC 7009): a client revokes one of its tokens. HTTP in and out;
//! what revoking does lives in `oauth::introspection`.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};

use super::AppState;
use super::introspect::{Authenticated, authenticate};
use super::request_log::request_id;
use crate::oauth::OAuthError;
use crate::oauth::introspection::revoke as revoke_token;

/// Handles one revocation request: 200 for any token, revoked or not (RFC 7009 section
/// 2.2), once the client authenticated.
pub async fn revoke(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, OAuthError> {
    let authenticated = authenticate(&req, payload, &state).await?;
    let token = authenticated.token()?.to_owned();
    let Authenticated {
        published, client, ..
    } = authenticated;
    let client_id = client.client_id;
    // The list is a file or a database: written off the worker.
    let shared = state.clone();
    let revoked = web::block(move || {
        revoke_token(
            &token,
            &client_id,
            &published.verifying,
            published.signer.issuer().as_str(),
            &shared.revocations,
        )
        .map(|revoked| (revoked, client_id))
    })
    .await
    .map_err(|e| OAuthError::Internal(format!("revocation task: {e}")))??;
    if let (Some(entry), client_id) = &revoked {
        tracing::info!(client_id = %client_id, jti = %entry.jti, "token revoked");
        state
            .audit
            .token_revoked(&request_id(&req), client_id, &entry.jti, entry.exp);
    }
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .finish())
}
