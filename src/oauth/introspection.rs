//! What a token is now, for the introspection endpoint (RFC 7662) and the revocation
//! endpoint (RFC 7009): verified against the keys published at this moment (a token of a
//! removed or revoked key is not active), then checked against the revocation list.

use std::time::Duration;

use serde_json::{Map, Value};

use super::OAuthError;
use super::revocation::{Revocations, Revoked};
use crate::verify::{KeyRing, Validation, Verifier};

/// A token this server issued, verified now.
#[derive(Debug, Clone)]
pub struct Verified {
    /// Its claims.
    pub claims: Map<String, Value>,
}

impl Verified {
    /// The token's `jti`, if it has one.
    pub fn jti(&self) -> Option<&str> {
        self.claims.get("jti").and_then(Value::as_str)
    }

    /// The client it was issued to (`client_id`, RFC 9068).
    pub fn client_id(&self) -> Option<&str> {
        self.claims.get("client_id").and_then(Value::as_str)
    }

    /// Its `exp`.
    pub fn exp(&self) -> Option<u64> {
        self.claims.get("exp").and_then(Value::as_u64)
    }
}

/// `token` verified as one of this server's: signed by a key published now (`keys`,
/// the HS256 secret included), `iss` this issuer, not expired (no leeway: RFC 7662 asks
/// whether it is active now). `None` for anything else.
pub fn verify_own(token: &str, keys: &KeyRing, issuer: &str) -> Option<Verified> {
    let mut validation = Validation::new(issuer, Vec::<String>::new()).insecure_any_audience();
    validation.leeway = Duration::ZERO;
    Verifier::verify_with::<Map<String, Value>>(keys, token, &validation)
        .ok()
        .map(|claims| Verified { claims })
}

/// The RFC 7662 answer about `token`: `{"active": false}`, or its claims with
/// `active: true` and `token_type`.
///
/// # Errors
/// `temporarily_unavailable` while a change of the revocation list cannot be read (it
/// may revoke this token): never `active: true` unchecked.
pub fn introspect(
    token: &str,
    keys: &KeyRing,
    issuer: &str,
    revocations: &Revocations,
    audiences: &[String],
) -> Result<Map<String, Value>, OAuthError> {
    let inactive = || Map::from_iter([("active".to_owned(), Value::Bool(false))]);
    let Some(verified) = verify_own(token, keys, issuer) else {
        return Ok(inactive());
    };
    // RFC 7662 section 4: whether the token may be used at the resource server asking. A
    // client registered with audiences speaks for those; one without, for all (a gateway).
    if !audiences.is_empty() {
        let holds = |v: &Value| v.as_str().is_some_and(|a| audiences.iter().any(|x| x == a));
        let meant = match verified.claims.get("aud") {
            Some(Value::Array(list)) => list.iter().any(holds),
            Some(v) => holds(v),
            None => false,
        };
        if !meant {
            return Ok(inactive());
        }
    }
    if let Some(jti) = verified.jti() {
        let revoked = revocations
            .contains(jti)
            .map_err(|e| OAuthError::StoreUnavailable(format!("the revocation list: {e}")))?;
        if revoked {
            return Ok(inactive());
        }
    }
    let mut answer = Map::with_capacity(verified.claims.len() + 2);
    answer.insert("active".into(), Value::Bool(true));
    // A token bound to a key (RFC 9449 section 6.2) is presented as DPoP.
    let bound = verified
        .claims
        .get("cnf")
        .is_some_and(|cnf| cnf.get("jkt").is_some());
    answer.insert(
        "token_type".into(),
        if bound { "DPoP" } else { "Bearer" }.into(),
    );
    for (name, value) in verified.claims {
        answer.entry(name).or_insert(value);
    }
    Ok(answer)
}

/// What revoking `token` for `client_id` does (RFC 7009 section 2.1): a token of this
/// server issued to that client and not expired yet is listed until its `exp`; anything
/// else (not ours, another client's, expired, without a jti) is left alone, and the answer
/// is the same 200 (section 2.2). Returns what was revoked, if anything.
///
/// # Errors
/// `temporarily_unavailable` when the list cannot be written (nothing is revoked; the
/// client may retry).
pub fn revoke(
    token: &str,
    client_id: &str,
    keys: &KeyRing,
    issuer: &str,
    revocations: &Revocations,
) -> Result<Option<Revoked>, OAuthError> {
    let Some(verified) = verify_own(token, keys, issuer) else {
        return Ok(None);
    };
    let (Some(jti), Some(exp)) = (verified.jti(), verified.exp()) else {
        return Ok(None);
    };
    if verified.client_id() != Some(client_id) {
        return Ok(None);
    }
    let entry = Revoked {
        jti: jti.to_owned(),
        exp,
    };
    revocations.revoke(entry.clone()).map_err(|e| {
        OAuthError::StoreUnavailable(format!("cannot revoke: {}", crate::report::Report(&e)))
    })?;
    Ok(Some(entry))
}
