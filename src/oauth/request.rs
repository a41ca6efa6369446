//! The form body of token requests, parsed strictly: repeated parameters, bad
//! percent-encoding and non-UTF-8 are errors.

use std::collections::HashMap;

use super::OAuthError;

/// Largest token request body accepted (larger: 413).
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// The decoded form parameters; each name at most once, empty values dropped (RFC 6749
/// section 3.1: "parameters sent without a value MUST be treated as if they were omitted").
#[derive(Default)]
pub struct Form {
    params: HashMap<String, String>,
}

impl std::fmt::Debug for Form {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names only: a value may be a credential.
        let mut names: Vec<&str> = self.params.keys().map(String::as_str).collect();
        names.sort_unstable();
        f.debug_struct("Form").field("params", &names).finish()
    }
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

    /// Removes a parameter: client authentication takes its credentials out, so they live
    /// in one place only (a zeroized secret) and never reach a grant handler.
    pub fn take(&mut self, name: &str) -> Option<String> {
        self.params.remove(name)
    }
}

/// Strict application/x-www-form-urlencoded decoding: '+' is a space, '%' must start two
/// hex digits, and the result must be UTF-8.
pub(crate) fn form_decode(input: &[u8]) -> Result<String, OAuthError> {
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

/// A value from the network made safe to echo in an error or a log line: bounded, without
/// control characters (no forged log lines).
pub(crate) fn printable(s: &str) -> String {
    // Printable ASCII as is; everything else (controls, line and paragraph separators,
    // bidi overrides) escaped, so nothing from a request can shape a log line.
    let mut out = String::new();
    for c in s.chars().take(64) {
        if (' '..='~').contains(&c) {
            out.push(c);
        } else {
            out.extend(c.escape_unicode());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn values_echoed_from_a_request_cannot_shape_a_log_line() {
        let forged = "x\n2026-11-26T00:00:00Z  INFO forged\u{2028}\u{202e}\u{1b}[31m";
        let shown = printable(forged);
        assert!(shown.bytes().all(|b| (0x20..0x7f).contains(&b)), "{shown}");
        assert!(
            shown.contains("\\u{a}") && shown.contains("\\u{202e}"),
            "{shown}"
        );
        assert_eq!(printable(&"a".repeat(100)).len(), 64);
    }
}
