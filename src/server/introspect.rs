//! `POST /oauth2/introspect` (RFC 7662): a client allowed to introspect asks whether a token
//! is active. HTTP in and out; what a token is lives in `oauth::introspection`.

use std::sync::Arc;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};

use super::AppState;
use super::request_log::client_address;
use super::state::Published;
use super::token::read_form_body;
use crate::oauth::introspection::introspect as answer_for;
use crate::oauth::request::Form;
use crate::oauth::{Client, OAuthError};

/// Handles one introspection request.
pub async fn introspect(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, OAuthError> {
    let authenticated = authenticate(&req, payload, &state).await?;
    let Authenticated {
        published, client, ..
    } = &authenticated;
    if !client.introspect {
        return Err(OAuthError::UnauthorizedClient(
            "this client may not introspect tokens (clients add --introspect)".into(),
        ));
    }
    let token = authenticated.token()?;
    let answer = answer_for(
        token,
        &published.verifying,
        published.signer.issuer().as_str(),
        &state.revocations,
        &client.audiences,
    )?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(answer))
}

/// A request to introspection or revocation whose client authenticated: its form (the
/// credentials taken out), the key set it is judged against, and the client.
pub(super) struct Authenticated {
    pub(super) form: Form,
    pub(super) published: Arc<Published>,
    pub(super) client: Client,
}

impl Authenticated {
    /// The `token` parameter both endpoints take (RFC 7662 and RFC 7009).
    pub(super) fn token(&self) -> Result<&str, OAuthError> {
        self.form
            .get("token")
            .ok_or_else(|| OAuthError::InvalidRequest("token is missing".into()))
    }
}

/// Reads the form and authenticates the client by the token endpoint's methods and
/// limits; refused while a change of the keys or the clients is unread (it may remove the
/// caller or revoke a key).
pub(super) async fn authenticate(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
) -> Result<Authenticated, OAuthError> {
    if let Some(reason) = state.unapplied_change() {
        return Err(OAuthError::ChangeUnread(reason));
    }
    let body = read_form_body(req, payload, state.body_timeout(), state.max_body_bytes()).await?;
    let mut form = Form::parse(&body)?;
    let published = state.published.load_full();
    let clients = state.clients.load_full();
    let client = state
        .token_endpoint
        .authenticate_client(
            req.headers(),
            &mut form,
            client_address(req, state.trusted_proxies()),
            &clients,
            &published.signer,
        )
        .await?
        .clone();
    Ok(Authenticated {
        form,
        published,
        client,
    })
}
