//! Keys that are not jwt-issuer's: a client's own (`private_key_jwt`) or an external
//! issuer's (a Kubernetes service-account issuer, a CI's OIDC provider), signing JWTs the
//! way other libraries do, and a little server publishing their JWKS.

use std::sync::{Arc, Mutex, OnceLock};

use actix_web::{App, web};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _, RSA_PKCS1_SHA256, RSA_PSS_SHA256,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jwt_issuer::SigningAlg;
use jwt_issuer::jwks::{Jwk, PublicKeyParams};
use serde_json::{Value, json};

use crate::helpers::TestServer;

/// A signing key held by someone other than the server.
pub enum ExternalKey {
    Es256(EcdsaKeyPair, Jwk),
    Rs256(Arc<RsaKeyPair>, Jwk),
    Ps256(Arc<RsaKeyPair>, Jwk),
}

impl ExternalKey {
    /// A fresh P-256 key.
    pub fn es256() -> Self {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
        let point = pair.public_key().as_ref().to_vec();
        let jwk = Jwk::new(
            PublicKeyParams::p256(&point[1..33], &point[33..65]),
            SigningAlg::Es256,
        );
        Self::Es256(pair, jwk)
    }

    /// An RSA-2048 key, made once per test binary (a fresh one is not the point).
    pub fn rs256() -> Self {
        static PAIR: OnceLock<Arc<RsaKeyPair>> = OnceLock::new();
        let pair = PAIR
            .get_or_init(|| Arc::new(RsaKeyPair::generate(KeySize::Rsa2048).unwrap()))
            .clone();
        let public = pair.public_key();
        let jwk = Jwk::new(
            PublicKeyParams::rsa(
                public.modulus().big_endian_without_leading_zero(),
                public.exponent().big_endian_without_leading_zero(),
            ),
            SigningAlg::Rs256,
        );
        Self::Rs256(pair, jwk)
    }

    /// The RSA key of [`ExternalKey::rs256`], published for PS256 (under its own kid).
    pub fn ps256() -> Self {
        let Self::Rs256(pair, jwk) = Self::rs256() else {
            unreachable!("rs256() makes an RSA key")
        };
        let mut jwk = Jwk {
            alg: SigningAlg::Ps256,
            ..jwk
        };
        jwk.kid = format!("{}-ps256", jwk.kid);
        Self::Ps256(pair, jwk)
    }

    /// Its public JWK (kid: the RFC 7638 thumbprint).
    pub fn jwk(&self) -> &Jwk {
        match self {
            Self::Es256(_, jwk) | Self::Rs256(_, jwk) | Self::Ps256(_, jwk) => jwk,
        }
    }

    /// Its kid.
    pub fn kid(&self) -> &str {
        &self.jwk().kid
    }

    /// Its algorithm's name.
    pub fn alg(&self) -> &'static str {
        match self {
            Self::Es256(..) => "ES256",
            Self::Rs256(..) => "RS256",
            Self::Ps256(..) => "PS256",
        }
    }

    /// A JWKS document of these keys' public halves.
    pub fn jwks(keys: &[&ExternalKey]) -> Value {
        json!({ "keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>() })
    }

    /// A compact JWS of `claims` with header `{alg, kid}` plus `header` members (a
    /// `null` member removes one), signed by this key.
    pub fn sign(&self, header: Value, claims: &Value) -> String {
        let mut full = json!({"alg": self.alg(), "kid": self.kid()});
        for (name, value) in header.as_object().cloned().unwrap_or_default() {
            if value.is_null() {
                full.as_object_mut().unwrap().remove(&name);
            } else {
                full[name] = value;
            }
        }
        let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
        let input = format!("{}.{}", b64(&full), b64(claims));
        let rng = SystemRandom::new();
        let signature = match self {
            Self::Es256(pair, _) => pair.sign(&rng, input.as_bytes()).unwrap().as_ref().to_vec(),
            Self::Rs256(pair, _) | Self::Ps256(pair, _) => {
                let padding = match self {
                    Self::Ps256(..) => &RSA_PSS_SHA256 as &dyn aws_lc_rs::signature::RsaEncoding,
                    _ => &RSA_PKCS1_SHA256,
                };
                let mut sig = vec![0; pair.public_modulus_len()];
                pair.sign(padding, &rng, input.as_bytes(), &mut sig)
                    .unwrap();
                sig
            }
        };
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }
}

/// Serves a JWKS at `/jwks.json` that the test can change, counting fetches.
pub struct KeyHost {
    /// `http://127.0.0.1:PORT/jwks.json`
    pub url: String,
    /// `http://127.0.0.1:PORT`
    pub origin: String,
    body: Arc<Mutex<(Value, usize)>>,
    _server: TestServer,
}

impl KeyHost {
    /// Serves `jwks` (and a discovery document naming `origin` as issuer).
    pub fn start(jwks: Value) -> Self {
        let body = Arc::new(Mutex::new((jwks, 0)));
        let shared = body.clone();
        let server = TestServer::start(move || {
            let jwks = shared.clone();
            App::new()
                .route(
                    "/jwks.json",
                    web::get().to(move || {
                        let jwks = jwks.clone();
                        async move {
                            let mut served = jwks.lock().unwrap();
                            served.1 += 1;
                            actix_web::HttpResponse::Ok()
                                .insert_header(("Cache-Control", "max-age=300"))
                                .json(&served.0)
                        }
                    }),
                )
                .route(
                    "/.well-known/openid-configuration",
                    web::get().to(|req: actix_web::HttpRequest| async move {
                        let origin = format!("http://{}", req.connection_info().host());
                        actix_web::HttpResponse::Ok().json(json!({
                            "issuer": origin,
                            "jwks_uri": format!("{origin}/jwks.json"),
                        }))
                    }),
                )
        });
        Self {
            url: format!("{}/jwks.json", server.url),
            origin: server.url.clone(),
            body,
            _server: server,
        }
    }

    /// Serves `jwks` from now on.
    pub fn set(&self, jwks: Value) {
        self.body.lock().unwrap().0 = jwks;
    }

    /// How many times the JWKS was fetched.
    pub fn fetches(&self) -> usize {
        self.body.lock().unwrap().1
    }
}
