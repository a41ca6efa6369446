//! [`BearerClaims`]: an actix-web extractor that reads `Authorization: Bearer` (or `DPoP`
//! with a `DPoP` proof header, RFC 9449 section 7), verifies the token with the app's
//! [`Verifier`], and answers failures as RFC 6750 section 3 (RFC 9449 section 7.1) says.

use std::future::Future;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{FromRequest, HttpRequest, HttpResponse, ResponseError, web};
use serde::de::DeserializeOwned;

use super::dpop::{DPOP_ALGS, DpopError};
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
///
/// DPoP (RFC 9449): a token bound to a key (`cnf.jkt`) is accepted as `Authorization: DPoP
/// <token>` with exactly one `DPoP` proof header made for this request's method and URL,
/// [`Verifier::verify_dpop`] checking it; sent as `Bearer` it is refused, and so is an
/// unbound token sent as `DPoP`. The URL is the verifier's
/// [`base_url`](Verifier::with_base_url) and the request's path; without one, the scheme
/// and host actix sees (`ConnectionInfo`, which believes `Forwarded` and `X-Forwarded-*`
/// headers): behind a proxy, set the base URL. A verifier built
/// [`Verifier::require_dpop`] refuses the `Bearer` scheme on its routes.
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
    /// No Authorization header on a route whose verifier requires DPoP: 401 with a bare
    /// `DPoP algs="ES256 RS256 PS256"` challenge (RFC 9449 section 7.1).
    #[error("DPoP-bound token required")]
    MissingDpop,
    /// A request with the `DPoP` scheme was refused: 401 with a `DPoP` challenge,
    /// `invalid_dpop_proof` for the proof ([`VerifyError::InvalidDpopProof`]) and
    /// `invalid_token` for the token; 503 as for [`BearerError::Invalid`] when the keys,
    /// introspection or the replay cache are unavailable.
    #[error(transparent)]
    InvalidDpop(VerifyError),
}

impl ResponseError for BearerError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::Missing => StatusCode::UNAUTHORIZED,
            Self::Malformed => StatusCode::BAD_REQUEST,
            Self::Invalid(e) | Self::InvalidDpop(e) if unavailable(e) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Invalid(_) | Self::InvalidDpop(_) | Self::MissingDpop => StatusCode::UNAUTHORIZED,
            Self::NoVerifier => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let (code, description) = match self {
            Self::Missing => (None, "a bearer token is required".to_owned()),
            Self::MissingDpop => (None, "a DPoP-bound token is required".to_owned()),
            Self::Malformed => (Some("invalid_request"), self.to_string()),
            // The cause of unavailable keys is for the log, not the client.
            Self::Invalid(VerifyError::KeySetUnavailable(cause))
            | Self::InvalidDpop(VerifyError::KeySetUnavailable(cause)) => {
                tracing::error!(cause = %cause, "cannot verify tokens: signing keys unavailable");
                (None, "signing keys are unavailable".to_owned())
            }
            Self::Invalid(VerifyError::IntrospectionUnavailable(cause))
            | Self::InvalidDpop(VerifyError::IntrospectionUnavailable(cause)) => {
                tracing::error!(cause = %cause, "cannot check tokens: introspection unavailable");
                (None, "token introspection is unavailable".to_owned())
            }
            Self::InvalidDpop(e @ VerifyError::DpopReplayCacheFull(_)) => {
                tracing::error!(cause = %e, "cannot accept DPoP proofs: replay cache full");
                (None, "DPoP proofs cannot be checked for replay".to_owned())
            }
            Self::InvalidDpop(e @ VerifyError::InvalidDpopProof(_)) => {
                (Some("invalid_dpop_proof"), e.to_string())
            }
            Self::Invalid(e) | Self::InvalidDpop(e) => (Some("invalid_token"), e.to_string()),
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
            let challenge = match (code, self.dpop_challenge()) {
                (Some(code), false) => {
                    format!("Bearer error=\"{code}\", error_description=\"{safe}\"")
                }
                (None, false) => "Bearer".to_owned(),
                (Some(code), true) => format!(
                    "DPoP error=\"{code}\", error_description=\"{safe}\", algs=\"{}\"",
                    DPOP_ALGS.join(" ")
                ),
                (None, true) => format!("DPoP algs=\"{}\"", DPOP_ALGS.join(" ")),
            };
            if let Ok(value) = HeaderValue::from_str(&challenge) {
                res.insert_header((header::WWW_AUTHENTICATE, value));
            }
        }
        res.json(ErrorBody {
            error: code.unwrap_or(match self {
                Self::Missing | Self::MissingDpop => "invalid_token",
                _ => "server_error",
            }),
            error_description: &description,
        })
    }
}

impl BearerError {
    /// Whether the answer is a `DPoP` challenge (RFC 9449 section 7.1) rather than a
    /// `Bearer` one: for a request with the DPoP scheme, and for a bound token (or any
    /// token, on a route requiring DPoP) sent as a bearer token, to say what is expected.
    fn dpop_challenge(&self) -> bool {
        matches!(
            self,
            Self::MissingDpop
                | Self::InvalidDpop(_)
                | Self::Invalid(
                    VerifyError::DpopBound | VerifyError::DpopRequired | VerifyError::NotDpopBound
                )
        )
    }
}

/// Not the token's fault: no challenge, 503.
fn unavailable(e: &VerifyError) -> bool {
    matches!(
        e,
        VerifyError::KeySetUnavailable(_)
            | VerifyError::IntrospectionUnavailable(_)
            | VerifyError::DpopReplayCacheFull(_)
    )
}

impl<T: DeserializeOwned + 'static> FromRequest for BearerClaims<T> {
    type Error = BearerError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let verifier = req.app_data::<web::Data<Verifier>>().cloned();
        let presented = presented_token(req);
        let proof = dpop_proof(req);
        let method = req.method().as_str().to_owned();
        let url = verifier.as_ref().map(|v| request_url(req, v));
        Box::pin(async move {
            let verifier = verifier.ok_or(BearerError::NoVerifier)?;
            match presented {
                Err(BearerError::Missing) if verifier.requires_dpop() => {
                    Err(BearerError::MissingDpop)
                }
                Err(e) => Err(e),
                Ok((Scheme::Bearer, _)) if verifier.requires_dpop() => {
                    Err(BearerError::Invalid(VerifyError::DpopRequired))
                }
                Ok((Scheme::Bearer, token)) => Ok(BearerClaims(verifier.verify(&token).await?)),
                Ok((Scheme::Dpop, token)) => {
                    let proof = proof.map_err(BearerError::InvalidDpop)?;
                    let url = url.unwrap_or_default();
                    verifier
                        .verify_dpop(&token, &proof, &method, &url)
                        .await
                        .map(BearerClaims)
                        .map_err(BearerError::InvalidDpop)
                }
            }
        })
    }
}

/// The Authorization scheme a token came with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Bearer,
    Dpop,
}

/// The URL a proof must name: the configured base URL, else what the request says of its
/// scheme and host (see [`BearerClaims`] on proxies), then its path.
fn request_url(req: &HttpRequest, verifier: &Verifier) -> String {
    let path = req.uri().path();
    match verifier.base_url() {
        Some(base) => format!("{base}{path}"),
        None => {
            let info = req.connection_info();
            format!("{}://{}{path}", info.scheme(), info.host())
        }
    }
}

/// The one `DPoP` header's value (RFC 9449 section 7.1: exactly one).
fn dpop_proof(req: &HttpRequest) -> Result<String, VerifyError> {
    let mut values = req.headers().get_all("dpop");
    let refused = |why: &str| VerifyError::InvalidDpopProof(DpopError(why.to_owned()));
    match (values.next(), values.next()) {
        (Some(value), None) => value
            .to_str()
            .map(str::to_owned)
            .map_err(|_| refused("the DPoP header is not ASCII")),
        (None, _) => Err(refused("a DPoP header is required with the DPoP scheme")),
        (Some(_), Some(_)) => Err(refused("send exactly one DPoP header")),
    }
}

fn presented_token(req: &HttpRequest) -> Result<(Scheme, String), BearerError> {
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
    let scheme = if scheme.eq_ignore_ascii_case("bearer") {
        Scheme::Bearer
    } else if scheme.eq_ignore_ascii_case("dpop") {
        // RFC 9449 section 7.1: the same token68 syntax as Bearer.
        Scheme::Dpop
    } else {
        return Err(BearerError::Malformed);
    };
    if !b64token {
        return Err(BearerError::Malformed);
    }
    Ok((scheme, token.to_owned()))
}
