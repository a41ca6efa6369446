//! Parsing of token requests: the form body (strictly: repeated parameters, bad
//! percent-encoding and non-UTF-8 are errors) and client authentication (RFC 6749
//! section 2.3.1: HTTP Basic with form-urlencoded id and secret, or client_secret_post).

use std::collections::HashMap;

use actix_web::http::header::{self, HeaderMap};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::OAuthError;
use crate::secret::ClientSecret;

/// Largest token request body accepted (larger: 413).
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// The decoded form parameters; each name at most once, empty values dropped (RFC 6749
/// section 3.1: "parameters sent without a value MUST be treated as if they were omitted").
#[derive(Debug, Default)]
pub struct Form {
    params: HashMap<String, String>,
}

impl Form {
    /// Parses an `application/x-www-form-urlencoded` body.
    ///
    /// # Errors
    /// `invalid_request` for a repeated parameter, bad percent-encoding or non-UTF-8.
    pub fn parse(body: &[u8]) -> Result<Self, OAuthError> {
        let mut params = HashMap::new();
        for pair in body.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
            let (name, value) = match pair.iter().position(|&b| b == b'=') {
                Some(i) => (&pair[..i], &pair[i + 1..]),
                None => (pair, &b""[..]),
            };
            let name = form_decode(name)?;
            let value = form_decode(value)?;
            if params.contains_key(&name) {
                return Err(OAuthError::InvalidRequest(format!(
                    "parameter '{}' is repeated",
                    printable(&name)
                )));
            }
            params.insert(name, value);
        }
        params.retain(|_, v| !v.is_empty());
        Ok(Self { params })
    }

    /// A parameter's value, if present and non-empty.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }

    /// Removes a parameter (used for credentials, so they live in one place only).
    pub fn take(&mut self, name: &str) -> Option<String> {
        self.params.remove(name)
    }
}

/// How the client authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// `client_secret_basic`.
    Basic,
    /// `client_secret_post`.
    Post,
}

/// A client's claimed identity and secret.
#[derive(Debug)]
pub struct Credentials {
    /// The method used.
    pub method: AuthMethod,
    /// The claimed client id.
    pub client_id: String,
    /// The presented secret.
    pub secret: ClientSecret,
}

/// Reads client credentials from the Authorization header or the form, never both.
///
/// # Errors
/// `invalid_request` for two methods at once or a malformed Basic header;
/// `invalid_client` when no credentials are sent or another scheme is used.
pub fn credentials(headers: &HeaderMap, form: &mut Form) -> Result<Credentials, OAuthError> {
    let post_id = form.take("client_id");
    let post_secret = form.take("client_secret").map(ClientSecret::new);
    let authorization = headers.get(header::AUTHORIZATION);
    match (authorization, post_id, post_secret) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => Err(OAuthError::InvalidRequest(
            "use one client authentication method, not both".into(),
        )),
        (Some(value), None, None) => {
            let value = value
                .to_str()
                .map_err(|_| OAuthError::InvalidRequest("malformed Authorization header".into()))?;
            let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
            if !scheme.eq_ignore_ascii_case("basic") {
                return Err(OAuthError::InvalidClient { basic: true });
            }
            parse_basic(rest.trim())
        }
        (None, Some(client_id), Some(secret)) => Ok(Credentials {
            method: AuthMethod::Post,
            client_id,
            secret,
        }),
        (None, Some(_), None) => Err(OAuthError::InvalidClient { basic: false }),
        (None, None, _) => Err(OAuthError::InvalidClient { basic: true }),
    }
}

fn parse_basic(encoded: &str) -> Result<Credentials, OAuthError> {
    let malformed = || OAuthError::InvalidRequest("malformed Basic credentials".into());
    let decoded = STANDARD.decode(encoded).map_err(|_| malformed())?;
    let decoded = zeroize::Zeroizing::new(decoded);
    let colon = decoded
        .iter()
        .position(|&b| b == b':')
        .ok_or_else(malformed)?;
    // RFC 6749 section 2.3.1: id and secret are form-urlencoded before Basic encoding.
    let client_id = form_decode(&decoded[..colon]).map_err(|_| malformed())?;
    let secret = form_decode(&decoded[colon + 1..]).map_err(|_| malformed())?;
    if client_id.is_empty() {
        return Err(OAuthError::InvalidClient { basic: true });
    }
    Ok(Credentials {
        method: AuthMethod::Basic,
        client_id,
        secret: ClientSecret::new(secret),
    })
}

/// Strict application/x-www-form-urlencoded decoding: '+' is a space, '%' must start two
/// hex digits, and the result must be UTF-8.
fn form_decode(input: &[u8]) -> Result<String, OAuthError> {
    let malformed = |what: &str| OAuthError::InvalidRequest(format!("malformed form body: {what}"));
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = input
                    .get(i + 1..i + 3)
                    .ok_or_else(|| malformed("truncated percent-escape"))?;
                let hi = hex_value(hex[0]).ok_or_else(|| malformed("bad percent-escape"))?;
                let lo = hex_value(hex[1]).ok_or_else(|| malformed("bad percent-escape"))?;
                out.push(hi << 4 | lo);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| malformed("not UTF-8"))
}

fn hex_value(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// A parameter name made safe to echo in an error (bounded, printable).
fn printable(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::HeaderValue;

    #[test]
    fn form_decoding_is_strict() {
        let form = Form::parse(b"a=1+2&b=%C3%A9&empty=&c").unwrap();
        assert_eq!(form.get("a"), Some("1 2"));
        assert_eq!(form.get("b"), Some("é"));
        assert_eq!(form.get("empty"), None);
        assert_eq!(form.get("c"), None);
        for bad in [
            &b"a=%zz"[..],
            b"a=%4",
            b"a=%ff",
            b"a=\xff",
            b"a=1&a=2",
            b"a=&a=2",
        ] {
            assert_eq!(
                Form::parse(bad).unwrap_err().code(),
                "invalid_request",
                "{bad:?}"
            );
        }
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

    #[test]
    fn basic_credentials_are_form_decoded() {
        let creds = credentials(&basic("svc%3Aa+b%25:s%2Bcr%3At"), &mut Form::default()).unwrap();
        assert_eq!(creds.method, AuthMethod::Basic);
        assert_eq!(creds.client_id, "svc:a b%");
        assert_eq!(creds.secret.expose_secret(), "s+cr:t");
    }

    #[test]
    fn two_methods_at_once_are_refused() {
        let mut form = Form::parse(b"client_id=a&client_secret=b").unwrap();
        let err = credentials(&basic("a:b"), &mut form).unwrap_err();
        assert_eq!(err.code(), "invalid_request");
    }

    #[test]
    fn missing_or_foreign_credentials_are_invalid_client() {
        assert_eq!(
            credentials(&HeaderMap::new(), &mut Form::default())
                .unwrap_err()
                .code(),
            "invalid_client"
        );
        let mut bearer = HeaderMap::new();
        bearer.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(
            credentials(&bearer, &mut Form::default())
                .unwrap_err()
                .code(),
            "invalid_client"
        );
        let mut no_secret = Form::parse(b"client_id=a").unwrap();
        assert_eq!(
            credentials(&HeaderMap::new(), &mut no_secret)
                .unwrap_err()
                .code(),
            "invalid_client"
        );
        assert_eq!(
            credentials(&basic("nocolon"), &mut Form::default())
                .unwrap_err()
                .code(),
            "invalid_request"
        );
    }
}
