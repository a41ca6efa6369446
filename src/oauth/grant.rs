//! Grant types as a table of handlers ([`GrantHandler`]), and the rules of the client
//! credentials grant (RFC 6749 section 4.4): which scopes and which audience a client gets,
//! given what it asked for and what it is registered with.

use std::time::Duration;

use serde_json::{Map, Value};

use super::OAuthError;
use super::clients::{Client, is_scope_token};
use super::federation::{
    FederatedSubject, JWT_BEARER, TOKEN_EXCHANGE, TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_ID_TOKEN,
    TOKEN_TYPE_JWT,
};
use super::request::{Form, printable};
use crate::sign::{TokenRequest, TokenType};
use crate::{Issuer, SigningAlg};

/// What every grant needs besides the client and the request.
#[derive(Debug, Clone, Copy)]
pub struct GrantContext<'a> {
    /// The issuer (the audience of clients registered without one).
    pub issuer: &'a Issuer,
    /// Lifetime of tokens for clients without their own.
    pub default_ttl: Duration,
    /// The external identity of a federation grant's presented token, verified.
    pub federated: Option<&'a FederatedSubject>,
}

/// A token to sign, and the scope to report in the response.
#[derive(Debug, Clone)]
pub struct Granted {
    /// What the signer puts in the token.
    pub request: TokenRequest,
    /// The granted scopes, space-separated (empty: none).
    pub scope: String,
    /// RFC 8693's `issued_token_type`, for token exchange.
    pub issued_token_type: Option<&'static str>,
}

/// One grant type of the token endpoint.
pub trait GrantHandler: Send + Sync {
    /// The `grant_type` value, as discovery lists it.
    fn grant_type(&self) -> &'static str;

    /// The token this grant presents in place of client credentials (RFC 7523's
    /// `assertion`, RFC 8693's `subject_token`): the endpoint verifies it against the
    /// trusted issuers and finds the client it stands for. `None` (the default): the
    /// client authenticates.
    ///
    /// # Errors
    /// `invalid_request` for a missing or unsupported parameter.
    fn presented_token<'f>(&self, form: &'f Form) -> Result<Option<&'f str>, OAuthError> {
        let _ = form;
        Ok(None)
    }

    /// What an authenticated `client` gets for the request's parameters.
    ///
    /// # Errors
    /// The RFC 6749 section 5.2 error that refuses the request.
    fn grant(
        &self,
        context: GrantContext<'_>,
        client: &Client,
        form: &Form,
    ) -> Result<Granted, OAuthError>;
}

/// `client_credentials` (RFC 6749 section 4.4): a JWT access token (RFC 9068) about the
/// client itself.
#[derive(Debug, Default)]
pub struct ClientCredentials;

impl GrantHandler for ClientCredentials {
    fn grant_type(&self) -> &'static str {
        "client_credentials"
    }

    fn grant(
        &self,
        context: GrantContext<'_>,
        client: &Client,
        form: &Form,
    ) -> Result<Granted, OAuthError> {
        let grant = resolve_requested(client, context, form)?;
        Ok(access_token(client, &grant, context.federated))
    }
}

/// The JWT bearer grant (RFC 7523 section 2.1): a JWT from a trusted issuer in
/// `assertion` stands for the client its subject maps to.
#[derive(Debug, Default)]
pub struct JwtBearer;

impl GrantHandler for JwtBearer {
    fn grant_type(&self) -> &'static str {
        JWT_BEARER
    }

    fn presented_token<'f>(&self, form: &'f Form) -> Result<Option<&'f str>, OAuthError> {
        form.get("assertion")
            .map(Some)
            .ok_or_else(|| OAuthError::InvalidRequest("assertion is missing".into()))
    }

    fn grant(
        &self,
        context: GrantContext<'_>,
        client: &Client,
        form: &Form,
    ) -> Result<Granted, OAuthError> {
        federated_grant(context, client, form, None)
    }
}

/// Token exchange (RFC 8693): a JWT from a trusted issuer in `subject_token` is
/// exchanged for an access token of the client its subject maps to.
#[derive(Debug, Default)]
pub struct TokenExchange;

impl GrantHandler for TokenExchange {
    fn grant_type(&self) -> &'static str {
        TOKEN_EXCHANGE
    }

    fn presented_token<'f>(&self, form: &'f Form) -> Result<Option<&'f str>, OAuthError> {
        let token = form
            .get("subject_token")
            .ok_or_else(|| OAuthError::InvalidRequest("subject_token is missing".into()))?;
        match form.get("subject_token_type") {
            Some(TOKEN_TYPE_JWT | TOKEN_TYPE_ID_TOKEN) => {}
            Some(other) => {
                return Err(OAuthError::InvalidRequest(format!(
                    "subject_token_type '{}' is not supported; use {TOKEN_TYPE_JWT}",
                    printable(other)
                )));
            }
            None => {
                return Err(OAuthError::InvalidRequest(format!(
                    "subject_token_type is missing; use {TOKEN_TYPE_JWT}"
                )));
            }
        }
        if let Some(wanted) = form.get("requested_token_type")
            && wanted != TOKEN_TYPE_ACCESS_TOKEN
            && wanted != TOKEN_TYPE_JWT
        {
            return Err(OAuthError::InvalidRequest(format!(
                "requested_token_type '{}' is not supported; this server issues {TOKEN_TYPE_ACCESS_TOKEN}",
                printable(wanted)
            )));
        }
        // Delegation (an actor acting for the subject) is not offered: refused rather than
        // ignored, so nobody believes an actor was checked.
        if form.get("actor_token").is_some() || form.get("actor_token_type").is_some() {
            return Err(OAuthError::InvalidRequest(
                "actor_token is not supported".into(),
            ));
        }
        Ok(Some(token))
    }

    fn grant(
        &self,
        context: GrantContext<'_>,
        client: &Client,
        form: &Form,
    ) -> Result<Granted, OAuthError> {
        federated_grant(context, client, form, Some(TOKEN_TYPE_ACCESS_TOKEN))
    }
}

/// The rules of both federation grants: the client's scopes, audiences and lifetime, as
/// for client credentials, and a token that never outlives the presented one.
fn federated_grant(
    context: GrantContext<'_>,
    client: &Client,
    form: &Form,
    issued_token_type: Option<&'static str>,
) -> Result<Granted, OAuthError> {
    let federated = context.federated.ok_or_else(|| {
        OAuthError::Internal("a federation grant reached its handler unverified".into())
    })?;
    let grant = resolve_requested(client, context, form)?;
    if federated.expires_at <= crate::time::unix_now() {
        return Err(OAuthError::InvalidGrant(
            "the presented token has expired".into(),
        ));
    }
    let mut granted = access_token(client, &grant, Some(federated));
    granted.issued_token_type = issued_token_type;
    Ok(granted)
}

/// [`resolve`] with the request's `scope`, `audience` and `resource`.
fn resolve_requested(
    client: &Client,
    context: GrantContext<'_>,
    form: &Form,
) -> Result<Grant, OAuthError> {
    let requested = Requested {
        scope: form.get("scope"),
        audience: form.get("audience"),
        resource: form.get("resource"),
    };
    resolve(
        client,
        requested,
        context.issuer.as_str(),
        context.default_ttl,
    )
}

/// The access token of `client` for `grant` (RFC 9068): `client_id`, `scope`, the
/// client's static claims, and for a federation grant `act` naming the external identity
/// and an `exp` no later than the presented token's.
fn access_token(client: &Client, grant: &Grant, federated: Option<&FederatedSubject>) -> Granted {
    {
        let scope = grant.scopes.join(" ");
        // RFC 9068 section 2.2: client_id always, scope when any was granted.
        let mut extra = Map::new();
        extra.insert("client_id".into(), Value::String(client.client_id.clone()));
        if !scope.is_empty() {
            extra.insert("scope".into(), Value::String(scope.clone()));
        }
        // The client's static claims; none of them can be one set above (checked when
        // the client is registered and again when the registry is loaded).
        for (name, value) in &client.claims {
            extra.entry(name.clone()).or_insert_with(|| value.clone());
        }
        // RFC 8693 section 4.1: the party acting as the client, by issuer and subject.
        if let Some(f) = federated {
            extra.insert(
                "act".into(),
                serde_json::json!({"iss": f.issuer, "sub": f.subject}),
            );
        }
        Granted {
            request: TokenRequest {
                sub: client.client_id.clone(),
                aud: vec![grant.audience.clone()],
                ttl: grant.ttl,
                alg: grant.alg,
                typ: TokenType::AccessToken,
                extra,
                not_after: federated.map(|f| f.expires_at),
            },
            scope,
            issued_token_type: None,
        }
    }
}

/// What a client credentials request is granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Granted scopes, in request order (or registration order by default), no duplicates.
    pub scopes: Vec<String>,
    /// The token's one audience.
    pub audience: String,
    /// Signing algorithm, `None` for the server default.
    pub alg: Option<SigningAlg>,
    /// Token lifetime.
    pub ttl: Duration,
}

/// The parameters of a token request that shape the grant.
#[derive(Debug, Clone, Copy, Default)]
pub struct Requested<'a> {
    /// `scope`: space-separated.
    pub scope: Option<&'a str>,
    /// `audience`.
    pub audience: Option<&'a str>,
    /// `resource` (RFC 8707), treated as the audience.
    pub resource: Option<&'a str>,
}

/// Applies the rules: scopes must be a subset of the client's (default: all of them);
/// the audience must be one of the client's (default: its first; a client without
/// audiences gets tokens for the issuer itself).
///
/// # Errors
/// `invalid_scope`, `invalid_target`, or `invalid_request` when `audience` and `resource`
/// disagree.
pub fn resolve(
    client: &Client,
    requested: Requested<'_>,
    issuer: &str,
    default_ttl: Duration,
) -> Result<Grant, OAuthError> {
    let scopes = match requested.scope {
        None => client.scopes.clone(),
        Some(scope) => {
            let mut granted: Vec<String> = Vec::new();
            for token in scope.split(' ').filter(|s| !s.is_empty()) {
                if !is_scope_token(token) {
                    return Err(OAuthError::InvalidScope("scope is malformed".into()));
                }
                if !client.scopes.iter().any(|s| s == token) {
                    return Err(OAuthError::InvalidScope(format!(
                        "scope '{token}' is not allowed for this client"
                    )));
                }
                if !granted.iter().any(|s| s == token) {
                    granted.push(token.to_owned());
                }
            }
            granted
        }
    };
    let wanted = match (requested.audience, requested.resource) {
        (Some(a), Some(r)) if a != r => {
            return Err(OAuthError::InvalidRequest(
                "audience and resource name different targets; send one".into(),
            ));
        }
        (a, r) => a.or(r),
    };
    let allowed: Vec<&str> = if client.audiences.is_empty() {
        vec![issuer]
    } else {
        client.audiences.iter().map(String::as_str).collect()
    };
    let audience = match wanted {
        None => allowed[0].to_owned(),
        Some(w) if allowed.contains(&w) => w.to_owned(),
        Some(_) => {
            return Err(OAuthError::InvalidTarget(
                "the requested audience is not allowed for this client".into(),
            ));
        }
    };
    Ok(Grant {
        scopes,
        audience,
        alg: client.alg,
        ttl: client.ttl_secs.map_or(default_ttl, Duration::from_secs),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(scopes: &[&str], audiences: &[&str]) -> Client {
        Client {
            client_id: "svc".into(),
            credential: super::super::clients::Credential::Secret {
                secret_hash: String::new(),
            },
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            audiences: audiences.iter().map(|s| s.to_string()).collect(),
            alg: None,
            ttl_secs: None,
            claims: serde_json::Map::new(),
            introspect: false,
            dpop_bound: false,
            created: 0,
        }
    }

    const TTL: Duration = Duration::from_secs(900);

    #[test]
    fn a_clients_static_claims_go_into_its_tokens_beside_client_id_and_scope() {
        let mut client = client(&["read"], &[]);
        client.claims.insert("tenant".into(), Value::from("acme"));
        client
            .claims
            .insert("roles".into(), serde_json::json!(["a", "b"]));
        let context = GrantContext {
            issuer: &crate::Issuer::parse("https://issuer.example").unwrap(),
            default_ttl: Duration::from_secs(60),
            federated: None,
        };
        let granted = ClientCredentials
            .grant(
                context,
                &client,
                &Form::parse(b"grant_type=client_credentials").unwrap(),
            )
            .unwrap();
        let extra = &granted.request.extra;
        assert_eq!(extra["client_id"], "svc");
        assert_eq!(extra["scope"], "read");
        assert_eq!(extra["tenant"], "acme");
        assert_eq!(extra["roles"], serde_json::json!(["a", "b"]));
    }

    #[test]
    fn scopes_default_to_all_and_requests_must_be_subsets() {
        let c = client(&["read", "write"], &["api"]);
        let all = resolve(&c, Requested::default(), "iss", TTL).unwrap();
        assert_eq!(all.scopes, ["read", "write"]);
        let some = resolve(
            &c,
            Requested {
                scope: Some("write  write read"),
                ..Default::default()
            },
            "iss",
            TTL,
        )
        .unwrap();
        assert_eq!(some.scopes, ["write", "read"]);
        let err = resolve(
            &c,
            Requested {
                scope: Some("read admin"),
                ..Default::default()
            },
            "iss",
            TTL,
        )
        .unwrap_err();
        assert_eq!(err.code(), "invalid_scope");
        let err = resolve(
            &c,
            Requested {
                scope: Some("re\"ad"),
                ..Default::default()
            },
            "iss",
            TTL,
        )
        .unwrap_err();
        assert_eq!(err.code(), "invalid_scope");
    }

    #[test]
    fn audience_defaults_to_the_first_and_must_be_registered() {
        let c = client(&[], &["orders", "billing"]);
        assert_eq!(
            resolve(&c, Requested::default(), "iss", TTL)
                .unwrap()
                .audience,
            "orders"
        );
        let billing = Requested {
            resource: Some("billing"),
            ..Default::default()
        };
        assert_eq!(
            resolve(&c, billing, "iss", TTL).unwrap().audience,
            "billing"
        );
        let other = Requested {
            audience: Some("other"),
            ..Default::default()
        };
        assert_eq!(
            resolve(&c, other, "iss", TTL).unwrap_err().code(),
            "invalid_target"
        );
        let both = Requested {
            audience: Some("orders"),
            resource: Some("billing"),
            ..Default::default()
        };
        assert_eq!(
            resolve(&c, both, "iss", TTL).unwrap_err().code(),
            "invalid_request"
        );
    }

    #[test]
    fn a_client_without_audiences_gets_the_issuer() {
        let c = client(&[], &[]);
        assert_eq!(
            resolve(&c, Requested::default(), "https://iss", TTL)
                .unwrap()
                .audience,
            "https://iss"
        );
    }
}
