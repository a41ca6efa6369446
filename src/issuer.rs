//! The issuer identifier (RFC 8414 section 2): the `iss` of every token and the `issuer` of
//! discovery, parsed once so nothing downstream checks it again.

use std::fmt;
use std::net::SocketAddr;

/// An `http://` or `https://` URL with a host and without query, fragment or whitespace.
/// Verifiers compare it byte for byte with the token's `iss`, so it is kept as written.
///
/// ```
/// use jwt_issuer::Issuer;
/// let issuer = Issuer::parse("https://auth.example.com").unwrap();
/// assert_eq!(issuer.as_str(), "https://auth.example.com");
/// assert!(Issuer::parse("auth.example.com").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Issuer(String);

/// A string that cannot be an issuer. Its message shows the URL meant when only the
/// scheme is missing (`auth.example.com`: `e.g. "https://auth.example.com"`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("issuer '{}' must be an http:// or https:// URL, {}", .0, requirement(.0))]
pub struct InvalidIssuer(pub String);

impl Issuer {
    /// Checks and wraps an issuer URL.
    ///
    /// # Errors
    /// [`InvalidIssuer`] for anything but an http(s) URL with a host, no query, no
    /// fragment and no whitespace.
    pub fn parse(issuer: &str) -> Result<Self, InvalidIssuer> {
        let host = issuer
            .strip_prefix("https://")
            .or_else(|| issuer.strip_prefix("http://"));
        match host {
            Some(h)
                if !h.is_empty()
                    && !h.starts_with('/')
                    && !issuer.contains(['?', '#'])
                    && !issuer.contains(char::is_whitespace) =>
            {
                Ok(Self(issuer.to_owned()))
            }
            _ => Err(InvalidIssuer(issuer.to_owned())),
        }
    }

    /// `http://` plus the bind address as written; a port 0 is replaced by the bound port
    /// when known, so a server and `token issue` with the same flags agree on the issuer.
    ///
    /// # Errors
    /// [`InvalidIssuer`] when the bind address makes no URL (`--bind ""`).
    pub fn for_bind(bind: &str, bound: Option<SocketAddr>) -> Result<Self, InvalidIssuer> {
        match bound {
            Some(addr) if bind.ends_with(":0") => Self::parse(&format!("http://{addr}")),
            _ => Self::parse(&format!("http://{bind}")),
        }
    }

    /// The URL as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The URL of an endpoint of this issuer: the issuer without a trailing slash, plus
    /// `path`, so a service behind a proxy advertises the URLs its clients use.
    pub fn endpoint(&self, path: &str) -> String {
        format!("{}{path}", self.0.trim_end_matches('/'))
    }
}

/// The rest of [`InvalidIssuer`]'s message: the URL to write when the scheme is all that
/// is missing, else what else the URL must be.
fn requirement(issuer: &str) -> String {
    match Issuer::parse(&format!("https://{issuer}")) {
        Ok(url) if !issuer.contains("://") => format!("e.g. \"{url}\""),
        _ => "with a host and without query, fragment or spaces".to_owned(),
    }
}

impl fmt::Display for Issuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for Issuer {
    type Err = InvalidIssuer;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl AsRef<str> for Issuer {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issuer_must_be_an_http_url() {
        for ok in [
            "http://127.0.0.1:8080",
            "https://auth.example.com",
            "https://a.example/tenant",
        ] {
            assert_eq!(Issuer::parse(ok).unwrap().as_str(), ok);
        }
        for bad in [
            "",
            "auth.example.com",
            "ftp://x",
            "https://",
            "https:///x",
            "https://a?b",
            "https://a#b",
            "https://a b",
        ] {
            assert_eq!(
                Issuer::parse(bad),
                Err(InvalidIssuer(bad.to_owned())),
                "{bad}"
            );
        }
    }

    #[test]
    fn an_issuer_without_a_scheme_is_shown_with_one() {
        assert_eq!(
            InvalidIssuer("auth.example.com".into()).to_string(),
            "issuer 'auth.example.com' must be an http:// or https:// URL, e.g. \"https://auth.example.com\""
        );
        assert_eq!(
            InvalidIssuer("auth.example.com/tenant".into()).to_string(),
            "issuer 'auth.example.com/tenant' must be an http:// or https:// URL, e.g. \"https://auth.example.com/tenant\""
        );
        // Nothing to suggest when more than the scheme is wrong.
        for bad in ["", "ftp://x", "https://a?b", "a b", "a?b", "/path"] {
            let message = InvalidIssuer(bad.into()).to_string();
            assert!(
                message.ends_with("URL, with a host and without query, fragment or spaces"),
                "{bad}: {message}"
            );
        }
    }

    #[test]
    fn default_issuer_follows_the_bind_address() {
        let bound: SocketAddr = "127.0.0.1:41234".parse().unwrap();
        let of = |bind| Issuer::for_bind(bind, Some(bound)).unwrap();
        assert_eq!(of("127.0.0.1:8080").as_str(), "http://127.0.0.1:8080");
        assert_eq!(of("127.0.0.1:0").as_str(), "http://127.0.0.1:41234");
        assert_eq!(
            Issuer::for_bind("127.0.0.1:0", None).unwrap().as_str(),
            "http://127.0.0.1:0"
        );
    }

    #[test]
    fn endpoints_hang_off_the_issuer_without_a_double_slash() {
        let issuer = Issuer::parse("https://a.example/tenant/").unwrap();
        assert_eq!(issuer.endpoint("/x"), "https://a.example/tenant/x");
    }
}
