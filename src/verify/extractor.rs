//! [`BearerClaims`]: an actix-web extractor that reads `Authorization: Bearer`, verifies
//! the token with the app's [`Verifier`], and answers failures as RFC 6750 section 3 says.

use std::future::Future;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{FromRequest, HttpRequest, HttpResponse, ResponseError, web};
use serde::de::DeserializeOwned;

use super::{Verifier, VerifyError};
use crate::error_body::ErrorBody;

/// Verified claims of the request's bearer token. Needs `web::Data<Verifier>` in the app.
///
/// The verifier is the innermost one: a `web::scope` (or `web::resource`) with its own
/// `app_data(web::Data<Verifier>)` verifies its routes with that one, e.g. one built
/// [`Verifier::with_introspection`] for the routes that must refuse a revoked token at
/// once, while the others verify locally with the app's. A route without a verifier of
/// its own uses the app's, so a scope that needs introspection must be given one.
///
/// ```no_run
/// use actix_web::{get, post, web, App, HttpServer};
/// use jwt_issuer::verify::{BearerClaims, Verifier};
///
/// #[get("/orders")]
/// async fn orders(claims: BearerClaims<serde_json::Value>) -> String {
///     format!("hello {}", claims.0["sub"])
/// }
///
/// #[post("")]
/// async fn refund(claims: BearerClaims<serde_json::Value>) -> String {
///     format!("refunded for {}", claims.0["sub"])
/// }
/// # fn app(verifier: Verifier, strict: Verifier) {
/// // `strict` is `verifier.with_introspection(..)`: /orders/refund refuses revoked tokens.
/// let app = App::new()
///     .app_data(web::Data::new(verifier))
///     .service(orders)
///     .service(web::scope("/orders/refund").app_data(web::Data::new(strict)).service(refund));
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct BearerClaims<T>(pub T);

/// Why a request was refused; becomes the RFC 6750 answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BearerError {
    /// No Authorization header: 401 with a bare `Bearer` challenge (RFC 6750 section 3.1).
    #[error("bearer token required")]
    Missing,
    /// An Authorization header that is not `Bearer <token>`: 400 `invalid_request`.
    #[error("malformed Authorization header")]
    Malformed,
    /// The token failed verification: 401 `invalid_token` (a token the issuer holds
    /// inactive too: "token is not active (revoked?)"); 503 when keys are unavailable
    /// (never fetched, or kept past [`JwksCacheOptions::max_stale`](super::JwksCacheOptions::max_stale)
    /// while the issuer is out of reach) or introspection is required and unavailable: not
    /// the token's fault, so no challenge.
    #[error(transparent)]
    Invalid(#[from] VerifyError),
    /// The app has no `web::Data<Verifier>`: a wiring bug, 500.
    #[error("no verifier configured")]
    NoVerifier,
}

impl ResponseError for BearerError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::Missing => StatusCode::UNAUTHORIZED,
            Self::Malformed => StatusCode::BAD_REQUEST,
            Self::Invalid(
                VerifyError::KeySetUnavailable(_) | VerifyError::IntrospectionUnavailable(_),
            ) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Invalid(_) => StatusCode::UNAUTHORIZED,
            Self::NoVerifier => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let (code, description) = match self {
            Self::Missing => (None, "a bearer token is required".to_owned()),
            Self::Malformed => (Some("invalid_request"), self.to_string()),
            // The cause of unavailable keys is for the log, not the client.
            Self::Invalid(VerifyError::KeySetUnavailable(cause)) => {
                tracing::error!(cause = %cause, "cannot verify tokens: signing keys unavailable");
                (None, "signing keys are unavailable".to_owned())
            }
            Self::Invalid(VerifyError::IntrospectionUnavailable(cause)) => {
                tracing::error!(cause = %cause, "cannot check tokens: introspection unavailable");
                (None, "token introspection is unavailable".to_owned())
            }
            Self::Invalid(e) => (Some("invalid_token"), e.to_string()),
            Self::NoVerifier => {
                tracing::error!("BearerClaims used without web::Data<Verifier> in the app");
                (None, "server misconfigured".to_owned())
            }
        };
        let mut res = HttpResponse::build(self.status_code());
        res.insert_header((header::CACHE_CONTROL, "no-store"));
        if self.status_code() == StatusCode::UNAUTHORIZED
            || self.status_code() == StatusCode::BAD_REQUEST
        {
            // RFC 6750 section 3: error_description is printable ASCII without '"' or '\'.
            let safe: String = description
                .chars()
                .filter(|c| matches!(c, ' '..='~') && *c != '"' && *c != '\\')
                .collect();
            let challenge = match code {
                Some(code) => format!("Bearer error=\"{code}\", error_description=\"{safe}\""),
                None => "Bearer".to_owned(),
            };
            if let Ok(value) = HeaderValue::from_str(&challenge) {
                res.insert_header((header::WWW_AUTHENTICATE, value));
            }
        }
        res.json(ErrorBody {
            error: code.unwrap_or(match self {
                Self::Missing => "invalid_token",
                _ => "server_error",
            }),
            error_description: &description,
        })
    }
}

impl<T: DeserializeOwned + 'static> FromRequest for BearerClaims<T> {
    type Error = BearerError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let verifier = req.app_data::<web::Data<Verifier>>().cloned();
        let token = bearer_token(req);
        Box::pin(async move {
            let verifier = verifier.ok_or(BearerError::NoVerifier)?;
            let token = token?;
            Ok(BearerClaims(verifier.verify(&token).await?))
        })
    }
}

fn bearer_token(req: &HttpRequest) -> Result<String, BearerError> {
    let mut values = req.headers().get_all(header::AUTHORIZATION);
    let Some(value) = values.next() else {
        return Err(BearerError::Missing);
    };
    if values.next().is_some() {
        return Err(BearerError::Malformed);
    }
    let value = value.to_str().map_err(|_| BearerError::Malformed)?;
    let (scheme, token) = value.split_once(' ').ok_or(BearerError::Malformed)?;
    let token = token.trim();
    // RFC 6750 section 2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
    let b64token = !token.is_empty()
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b));
    if !scheme.eq_ignore_ascii_case("bearer") || !b64token {
        return Err(BearerError::Malformed);
    }
    Ok(token.to_owned())
}
