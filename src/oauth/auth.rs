//! Client authentication at the token endpoint, as a set of methods (RFC 6749 section
//! 2.3.1; names from the RFC 7591 registry). Each method reads its own credentials from
//! the request; a request must use exactly one.

use actix_web::http::header::{self, HeaderMap};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::OAuthError;
use super::assertion::{CLIENT_ASSERTION_TYPE, unverified_client_id};
use super::clients::Proof;
use super::request::{Form, form_decode, printable};
use crate::secret::ClientSecret;

/// A client's claimed identity and its proof, as one method read them.
#[derive(Debug)]
pub struct Presented {
    /// The method's RFC 7591 name.
    pub method: &'static str,
    /// The claimed client id.
    pub client_id: String,
    /// What proves it.
    pub proof: Proof,
}

/// One way for a client to authenticate.
pub trait ClientAuthMethod: Send + Sync {
    /// The RFC 7591 name, as discovery lists it.
    fn name(&self) -> &'static str;

    /// `None` when the request does not use this method; otherwise what it presented (its
    /// parameters taken out of the form), or why that cannot be used.
    fn presented(
        &self,
        headers: &HeaderMap,
        form: &mut Form,
    ) -> Option<Result<Presented, OAuthError>>;
}

/// `client_secret_basic`: HTTP Basic, id and secret form-urlencoded before the Base64
/// step (RFC 6749 section 2.3.1).
#[derive(Debug, Default)]
pub struct ClientSecretBasic;

/// `client_secret_post`: `client_id` and `client_secret` in the form body.
#[derive(Debug, Default)]
pub struct ClientSecretPost;

impl ClientAuthMethod for ClientSecretBasic {
    fn name(&self) -> &'static str {
        "client_secret_basic"
    }

    fn presented(
        &self,
        headers: &HeaderMap,
        _: &mut Form,
    ) -> Option<Result<Presented, OAuthError>> {
        let value = headers.get(header::AUTHORIZATION)?;
        // Several Authorization headers: which one counts cannot be told; refused.
        if headers.get_all(header::AUTHORIZATION).nth(1).is_some() {
            return Some(Err(OAuthError::InvalidRequest(
                "send one Authorization header".into(),
            )));
        }
        Some(
            value
                .to_str()
                .map_err(|_| OAuthError::InvalidRequest("malformed Authorization header".into()))
                .and_then(parse_basic),
        )
    }
}

impl ClientAuthMethod for ClientSecretPost {
    fn name(&self) -> &'static str {
        "client_secret_post"
    }

    fn presented(&self, _: &HeaderMap, form: &mut Form) -> Option<Result<Presented, OAuthError>> {
        // A `client_id` beside an assertion belongs to private_key_jwt.
        if form.get("client_secret").is_none() && form.get("client_assertion").is_some() {
            return None;
        }
        let secret = form.take("client_secret").map(ClientSecret::new);
        match (form.take("client_id"), secret) {
            (None, None) => None,
            (Some(client_id), Some(secret)) => Some(Ok(Presented {
                method: self.name(),
                client_id,
                proof: Proof::Secret(secret),
            })),
            (Some(_), None) => Some(Err(OAuthError::InvalidClient { basic: false })),
            // A secret without an id: answered as no credentials at all (with the Basic
            // challenge), as RFC 6749 section 2.3.1 prefers Basic.
            (None, Some(_)) => Some(Err(OAuthError::InvalidClient { basic: true })),
        }
    }
}

/// `private_key_jwt`: a JWT the client signed with its private key, in
/// `client_assertion` with `client_assertion_type` (RFC 7523 section 2.2). Verified by
/// the token endpoint ([`super::assertion::ClientAssertions`]); here only read.
#[derive(Debug, Default)]
pub struct PrivateKeyJwt;

impl ClientAuthMethod for PrivateKeyJwt {
    fn name(&self) -> &'static str {
        "private_key_jwt"
    }

    fn presented(&self, _: &HeaderMap, form: &mut Form) -> Option<Result<Presented, OAuthError>> {
        let kind = form.take("client_assertion_type");
        let assertion = form.take("client_assertion");
        let (kind, assertion) = match (kind, assertion) {
            (None, None) => return None,
            (Some(kind), Some(assertion)) => (kind, assertion),
            (Some(_), None) => {
                return Some(Err(OAuthError::InvalidRequest(
                    "client_assertion is missing".into(),
                )));
            }
            (None, Some(_)) => {
                return Some(Err(OAuthError::InvalidRequest(format!(
                    "client_assertion_type is missing; use {CLIENT_ASSERTION_TYPE}"
                ))));
            }
        };
        if kind != CLIENT_ASSERTION_TYPE {
            return Some(Err(OAuthError::InvalidRequest(format!(
                "client_assertion_type '{}' is not supported; use {CLIENT_ASSERTION_TYPE}",
                printable(&kind)
            ))));
        }
        // RFC 7523 section 3: `client_id` is optional; when sent it names the client, and
        // the assertion must be about that client (checked when it is verified).
        let client_id = match form
            .take("client_id")
            .or_else(|| unverified_client_id(&assertion))
        {
            Some(id) => id,
            None => {
                return Some(Err(OAuthError::InvalidClientAssertion(
                    "the assertion names no client: sub is missing".into(),
                )));
            }
        };
        Some(Ok(Presented {
            method: self.name(),
            client_id,
            proof: Proof::Assertion(assertion),
        }))
    }
}

/// What the request presents, by the one method it uses.
///
/// # Errors
/// `invalid_request` for two methods at once or a malformed credential; `invalid_client`
/// (with a Basic challenge) when there are no credentials at all.
pub fn authenticate_request(
    methods: &[Box<dyn ClientAuthMethod>],
    headers: &HeaderMap,
    form: &mut Form,
) -> Result<Presented, OAuthError> {
    let mut used = methods.iter().filter_map(|m| m.presented(headers, form));
    match (used.next(), used.next()) {
        (Some(one), None) => one,
        (Some(_), Some(_)) => Err(OAuthError::InvalidRequest(
            "use one client authentication method, not both".into(),
        )),
        (None, _) => Err(OAuthError::InvalidClient { basic: true }),
    }
}

fn parse_basic(value: &str) -> Result<Presented, OAuthError> {
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(OAuthError::InvalidClient { basic: true });
    }
    let malformed = || OAuthError::InvalidRequest("malformed Basic credentials".into());
    let decoded = zeroize::Zeroizing::new(STANDARD.decode(rest.trim()).map_err(|_| malformed())?);
    let colon = decoded
        .iter()
        .position(|&b| b == b':')
        .ok_or_else(malformed)?;
    let client_id = form_decode(&decoded[..colon]).map_err(|_| malformed())?;
    let secret = form_decode(&decoded[colon + 1..]).map_err(|_| malformed())?;
    if client_id.is_empty() {
        return Err(OAuthError::InvalidClient { basic: true });
    }
    Ok(Presented {
        method: "client_secret_basic",
        client_id,
        proof: Proof::Secret(ClientSecret::new(secret)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::HeaderValue;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    fn methods() -> Vec<Box<dyn ClientAuthMethod>> {
        vec![
            Box::new(ClientSecretBasic),
            Box::new(ClientSecretPost),
            Box::new(PrivateKeyJwt),
        ]
    }

    fn basic(user_pass: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let value = format!("Basic {}", STANDARD.encode(user_pass));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&value).unwrap(),
        );
        headers
    }

    fn code(headers: &HeaderMap, mut form: Form) -> &'static str {
        authenticate_request(&methods(), headers, &mut form)
            .unwrap_err()
            .code()
    }

    #[test]
    fn basic_credentials_are_form_decoded() {
        let presented = authenticate_request(
            &methods(),
            &basic("svc%3Aa+b%25:s%2Bcr%3At"),
            &mut Form::default(),
        )
        .unwrap();
        assert_eq!(presented.method, "client_secret_basic");
        assert_eq!(presented.client_id, "svc:a b%");
        let Proof::Secret(secret) = presented.proof else {
            panic!("a secret was presented")
        };
        assert_eq!(secret.expose_secret(), "s+cr:t");
    }

    #[test]
    fn post_credentials_come_from_the_form() {
        let mut form = Form::parse(b"client_id=svc&client_secret=s&scope=x").unwrap();
        let presented = authenticate_request(&methods(), &HeaderMap::new(), &mut form).unwrap();
        assert_eq!(presented.method, "client_secret_post");
        assert_eq!(presented.client_id, "svc");
        assert_eq!(form.get("client_secret"), None, "the secret left the form");
        assert_eq!(form.get("scope"), Some("x"));
        assert!(
            !format!("{form:?}").contains("x\""),
            "Debug shows names only"
        );
    }

    #[test]
    fn two_methods_at_once_are_refused() {
        let form = Form::parse(b"client_id=a&client_secret=b").unwrap();
        assert_eq!(code(&basic("a:b"), form), "invalid_request");
        let id_only = Form::parse(b"client_id=a").unwrap();
        assert_eq!(code(&basic("a:b"), id_only), "invalid_request");
    }

    #[test]
    fn missing_or_foreign_credentials_are_invalid_client() {
        let challenge = authenticate_request(&methods(), &HeaderMap::new(), &mut Form::default());
        assert!(matches!(
            challenge,
            Err(OAuthError::InvalidClient { basic: true })
        ));
        let mut bearer = HeaderMap::new();
        bearer.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(code(&bearer, Form::default()), "invalid_client");
        let mut secret_only = Form::parse(b"client_secret=s").unwrap();
        assert!(matches!(
            authenticate_request(&methods(), &HeaderMap::new(), &mut secret_only),
            Err(OAuthError::InvalidClient { basic: true })
        ));
        let no_secret = Form::parse(b"client_id=a").unwrap();
        assert_eq!(code(&HeaderMap::new(), no_secret), "invalid_client");
        assert_eq!(code(&basic("nocolon"), Form::default()), "invalid_request");
        assert_eq!(code(&basic(":secret"), Form::default()), "invalid_client");
    }

    #[test]
    fn several_authorization_headers_are_refused() {
        let mut headers = basic("a:b");
        headers.append(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic Ym9ndXM="),
        );
        assert_eq!(code(&headers, Form::default()), "invalid_request");
    }

    /// An unsigned JWT whose payload is `claims`: only the client id is read here.
    fn assertion(claims: &str) -> String {
        format!(
            "eyJhbGciOiJFUzI1NiJ9.{}.c2ln",
            URL_SAFE_NO_PAD.encode(claims)
        )
    }

    #[test]
    fn an_assertion_names_its_client_by_client_id_or_sub() {
        let body = |extra: &str| {
            let jwt = assertion(r#"{"iss":"svc","sub":"svc"}"#);
            format!(
                "client_assertion_type={}&client_assertion={jwt}{extra}",
                CLIENT_ASSERTION_TYPE.replace(':', "%3A")
            )
        };
        let mut form = Form::parse(body("").as_bytes()).unwrap();
        let presented = authenticate_request(&methods(), &HeaderMap::new(), &mut form).unwrap();
        assert_eq!(
            (presented.method, presented.client_id.as_str()),
            ("private_key_jwt", "svc")
        );
        assert!(matches!(presented.proof, Proof::Assertion(_)));
        assert_eq!(form.get("client_assertion"), None);

        // client_id beside the assertion is private_key_jwt's, not client_secret_post's.
        let mut form = Form::parse(body("&client_id=other").as_bytes()).unwrap();
        let presented = authenticate_request(&methods(), &HeaderMap::new(), &mut form).unwrap();
        assert_eq!(presented.client_id, "other");

        // With a secret too: two methods.
        let form = Form::parse(body("&client_id=svc&client_secret=s").as_bytes()).unwrap();
        assert_eq!(code(&HeaderMap::new(), form), "invalid_request");
        let form = Form::parse(body("").as_bytes()).unwrap();
        assert_eq!(code(&basic("svc:s"), form), "invalid_request");
    }

    #[test]
    fn a_malformed_assertion_request_says_what_is_wrong() {
        let jwt = assertion("{}");
        let cases = [
            (format!("client_assertion={jwt}"), "invalid_request"),
            ("client_assertion_type=x".to_owned(), "invalid_request"),
            (
                format!("client_assertion_type=x&client_assertion={jwt}"),
                "invalid_request",
            ),
            (
                format!(
                    "client_assertion_type={}&client_assertion={jwt}",
                    CLIENT_ASSERTION_TYPE
                ),
                "invalid_client",
            ),
        ];
        for (body, expected) in cases {
            let form = Form::parse(body.as_bytes()).unwrap();
            assert_eq!(code(&HeaderMap::new(), form), expected, "{body}");
        }
    }
}
