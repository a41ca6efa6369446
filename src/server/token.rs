//! `POST /oauth2/token`: HTTP in, [`TokenEndpoint`](crate::oauth::TokenEndpoint) call, HTTP
//! out. The OAuth flow itself lives in `oauth/`.

use std::net::IpAddr;
use std::sync::Arc;

use actix_web::http::header;
use actix_web::{HttpMessage as _, HttpRequest, HttpResponse, web};

use super::AppState;
use super::request_log::{TokenLog, client_address, request_id};
use crate::audit::{AuditLog, TokenIssued, TokenRefused};
use crate::oauth::{Issued, NamedClient, OAuthError, TokenCall, TokenOutcome};

/// Handles one token request.
pub async fn token(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, OAuthError> {
    let peer = client_address(&req, state.trusted_proxies());
    // Fail closed: an unread change may revoke the key or the secret this would use. Asked
    // again once the body is in, which may take up to the request timeout.
    let unread = || state.unapplied_change().map(OAuthError::ChangeUnread);
    let body = match unread() {
        Some(err) => Err(err),
        None => read_form_body(&req, payload, state.body_timeout(), state.max_body_bytes())
            .await
            .and_then(|body| unread().map_or(Ok(body), Err)),
    };
    let TokenOutcome { result, client } = match body {
        Ok(body) => {
            let mut proofs = req.headers().get_all("dpop");
            let dpop = match (proofs.next(), proofs.next()) {
                (None, _) => Ok(None),
                (Some(one), None) => one.to_str().map(Some).map_err(|_| ()),
                (Some(_), Some(_)) => Err(()),
            };
            let call = TokenCall {
                headers: req.headers(),
                body: &body,
                peer,
                dpop,
            };
            // Owned snapshots: verifying an assertion may wait for its client's keys.
            let published = state.published.load_full();
            let clients = state.clients.load_full();
            let outcome = state
                .token_endpoint
                .token(call, &clients, &published.signer)
                .await;
            // A change applied while the request waited (a client's keys, the replay
            // check) may have removed the client or revoked the key: a token made from the
            // older snapshots that the newer ones would not make is dropped, never handed
            // out. (A rotation meanwhile is fine: the key that signed stays published.)
            let (keys_now, clients_now) = (state.published.load(), state.clients.load());
            let outdated = |issued: &Issued| {
                let key_gone = !Arc::ptr_eq(&published, &keys_now)
                    && issued.token.alg.is_asymmetric()
                    && keys_now.signer.keys().find(&issued.token.kid).is_none();
                let client_changed = !Arc::ptr_eq(&clients, &clients_now)
                    && clients_now.get(&issued.client_id) != clients.get(&issued.client_id);
                key_gone || client_changed || unread().is_some()
            };
            match outcome {
                TokenOutcome {
                    result: Ok(issued),
                    client,
                } if outdated(&issued) => TokenOutcome {
                    result: Err(OAuthError::ChangeUnread(
                        "the keys or the clients changed while the request was checked",
                    )),
                    client,
                },
                outcome => outcome,
            }
        }
        Err(err) => TokenOutcome {
            result: Err(err),
            client: NamedClient::None,
        },
    };
    let result = audit(&state.audit, &req, peer, result, &client).await;
    req.extensions_mut().insert(TokenLog::new(&result, &client));
    state.metrics.observe_token(match &result {
        Ok(issued) => Ok(issued.token.alg.as_str()),
        Err(err) => Err(err.code()),
    });
    let issued = result?;
    state
        .metrics
        .observe_issued(&issued.client_id, issued.token.alg, &issued.token.kid);
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::PRAGMA, "no-cache"))
        .json(issued.response()))
}

/// Records the outcome in the audit log. An issued token is handed out only once its line
/// is on disk (fail closed); a refusal's line is queued.
async fn audit(
    audit: &AuditLog,
    req: &HttpRequest,
    source: Option<IpAddr>,
    result: Result<Issued, OAuthError>,
    client: &NamedClient,
) -> Result<Issued, OAuthError> {
    if !audit.is_enabled() {
        return result;
    }
    let request_id = request_id(req);
    match result {
        Ok(issued) => {
            let t = &issued.token;
            let recorded = audit
                .token_issued(TokenIssued {
                    request_id: &request_id,
                    client_id: &issued.client_id,
                    kid: &t.kid,
                    alg: t.alg.as_str(),
                    jti: &t.jti,
                    aud: &issued.aud,
                    scope: &issued.scope,
                    exp: t.expires_at,
                    source,
                    act: issued
                        .federated
                        .as_ref()
                        .map(|f| (f.issuer.as_str(), f.subject.as_str())),
                })
                .await;
            recorded
                .map(|()| issued)
                .map_err(|_| OAuthError::AuditUnavailable)
        }
        Err(err) => {
            audit.token_refused(TokenRefused {
                request_id: &request_id,
                client_id: client.registered(),
                error: err.code(),
                source,
            });
            Err(err)
        }
    }
}

/// The body of a form post: the right content type, at most `limit` bytes.
pub(super) async fn read_form_body(
    req: &HttpRequest,
    payload: web::Payload,
    deadline: std::time::Duration,
    limit: usize,
) -> Result<web::Bytes, OAuthError> {
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
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(OAuthError::PayloadTooLarge(limit));
    }
    // The whole body within a deadline: a client that announces a body and sends it a
    // byte at a time (or never) must not hold a connection and a worker for ever.
    actix_web::rt::time::timeout(deadline, payload.to_bytes_limited(limit))
        .await
        .map_err(|_| OAuthError::BodyTimeout(deadline))?
        .map_err(|_| OAuthError::PayloadTooLarge(limit))?
        .map_err(|_| OAuthError::InvalidRequest("the request body could not be read".into()))
}
