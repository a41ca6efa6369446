//! The verifier against the attacks of RFC 8725 section 2 and known JWT library CVEs:
//! each forged token is rejected, for the right reason.

use std::sync::{Arc, OnceLock};

use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jwt_issuer::verify::{JwksCache, JwksCacheOptions, KeyRing, Validation, Verifier, VerifyError};
use jwt_issuer::{KeySet, KeyStore, SigningAlg, SigningKey};
use rsa::pkcs8::{EncodePublicKey, LineEnding};
use serde_json::{Value, json};

use crate::helpers::{
    TestApp, is_high_s, keys_dir_with_template, new_client, segment_json, signature_of, unix_now,
    with_negated_s,
};

const ISS: &str = "https://issuer.example";

struct Keys {
    published: KeySet,
    attacker: KeySet,
    ring: KeyRing,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let (tmp, dir) = keys_dir_with_template();
        let published = KeyStore::new(&dir).load().unwrap();
        let attacker_dir = tmp.path().join("attacker");
        let (attacker, _) = KeyStore::new(&attacker_dir).load_or_init().unwrap();
        let (ring, rejected) = KeyRing::from_jwk_set(&published.jwk_set());
        assert!(rejected.is_empty());
        std::mem::forget(tmp);
        Keys {
            published,
            attacker,
            ring,
        }
    })
}

fn key(set: &KeySet, alg: SigningAlg) -> &Arc<SigningKey> {
    set.active(alg).unwrap()
}

fn claims() -> Value {
    let now = unix_now();
    json!({"iss": ISS, "sub": "svc", "aud": "api", "exp": now + 300, "iat": now, "nbf": now, "jti": "j"})
}

fn b64(v: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(v)
}

/// A token with exactly this header and these claims, signed by `sign`.
fn forge(header: &Value, claims: &Value, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let sig = sign(input.as_bytes());
    format!("{input}.{}", b64(&sig))
}

fn signed_by(key: &SigningKey, header: &Value, claims: &Value) -> String {
    forge(header, claims, |m| key.sign(m).unwrap())
}

fn header_for(key: &SigningKey) -> Value {
    json!({"alg": key.alg().as_str(), "kid": key.kid(), "typ": "JWT"})
}

fn verify(token: &str) -> Result<Value, VerifyError> {
    Verifier::verify_with(&keys().ring, token, &Validation::new(ISS, ["api"]))
}

fn es() -> &'static Arc<SigningKey> {
    key(&keys().published, SigningAlg::Es256)
}

fn rs() -> &'static Arc<SigningKey> {
    key(&keys().published, SigningAlg::Rs256)
}

#[test]
fn genuine_es256_and_rs256_tokens_verify() {
    for k in [es(), rs()] {
        let claims = verify(&signed_by(k, &header_for(k), &claims())).unwrap();
        assert_eq!(claims["sub"], "svc");
    }
}

#[test]
fn alg_none_in_any_casing_is_rejected() {
    for alg in ["none", "None", "NONE", "nOnE"] {
        let header = json!({"alg": alg, "kid": es().kid(), "typ": "JWT"});
        let unsigned = forge(&header, &claims(), |_| Vec::new());
        assert!(
            matches!(verify(&unsigned), Err(VerifyError::Malformed(_))),
            "{alg} unsigned"
        );
        let with_junk = forge(&header, &claims(), |_| b"x".to_vec());
        assert_eq!(
            verify(&with_junk).unwrap_err(),
            VerifyError::AlgorithmNotAllowed,
            "{alg}"
        );
    }
}

fn hs256(secret: &[u8]) -> impl Fn(&[u8]) -> Vec<u8> {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    move |m| hmac::sign(&key, m).as_ref().to_vec()
}

#[test]
fn hs256_signed_with_the_public_key_pem_is_rejected() {
    // The classic RS/HS confusion: the attacker uses the published public key as the secret.
    let jwk = rs().jwk();
    let jwt_issuer::jwks::PublicKeyParams::Rsa { n, e } = &jwk.params else {
        unreachable!()
    };
    let public = rsa::RsaPublicKey::new(
        rsa::BigUint::from_bytes_be(&URL_SAFE_NO_PAD.decode(n).unwrap()),
        rsa::BigUint::from_bytes_be(&URL_SAFE_NO_PAD.decode(e).unwrap()),
    )
    .unwrap();
    let pem = public.to_public_key_pem(LineEnding::LF).unwrap();
    for kid in [rs().kid(), es().kid()] {
        let header = json!({"alg": "HS256", "kid": kid, "typ": "JWT"});
        let token = forge(&header, &claims(), hs256(pem.as_bytes()));
        assert_eq!(
            verify(&token).unwrap_err(),
            VerifyError::AlgorithmNotAllowed
        );
    }
}

#[test]
fn hs256_signed_with_the_jwk_json_is_rejected() {
    for k in [rs(), es()] {
        let secret = serde_json::to_vec(k.jwk()).unwrap();
        let header = json!({"alg": "HS256", "kid": k.kid(), "typ": "JWT"});
        assert_eq!(
            verify(&forge(&header, &claims(), hs256(&secret))).unwrap_err(),
            VerifyError::AlgorithmNotAllowed
        );
    }
}

#[test]
fn ecdsa_signature_with_r_and_s_zero_is_rejected() {
    // CVE-2022-21449 ("psychic signatures"): r = s = 0 verified in some Java releases.
    let token = forge(&header_for(es()), &claims(), |_| vec![0; 64]);
    assert_eq!(verify(&token).unwrap_err(), VerifyError::BadSignature);
}

fn der_integer(bytes: &[u8]) -> Vec<u8> {
    let trimmed: Vec<u8> = bytes.iter().copied().skip_while(|&b| b == 0).collect();
    let mut value = if trimmed.first().is_some_and(|&b| b & 0x80 != 0) {
        vec![0]
    } else {
        vec![]
    };
    value.extend(trimmed);
    let mut out = vec![0x02, value.len() as u8];
    out.extend(value);
    out
}

#[test]
fn der_encoded_ecdsa_signature_is_rejected() {
    // JWS ES256 is the 64-byte r||s form (RFC 7518 section 3.4); the ASN.1 DER form of the
    // same valid signature must not be accepted.
    let token = forge(&header_for(es()), &claims(), |m| {
        let raw = es().sign(m).unwrap();
        let mut body = der_integer(&raw[..32]);
        body.extend(der_integer(&raw[32..]));
        let mut der = vec![0x30, body.len() as u8];
        der.extend(body);
        der
    });
    assert_eq!(verify(&token).unwrap_err(), VerifyError::BadSignature);
}

#[test]
fn a_server_token_with_s_replaced_by_n_minus_s_is_refused_as_high_s_unless_allowed() {
    // ECDSA malleability: (r, n - s) verifies wherever (r, s) does. The issuer signs low-S
    // only, so the twin of its token is high-S and refused; a replay cache keyed on the
    // token's bytes would otherwise see two different tokens.
    let (app, [client]) =
        TestApp::spawn_with_clients([new_client("svc", &["read"], &["api"])], |_| {});
    let token = app.token_for(&client);
    assert_eq!(segment_json(&token, 0)["alg"], "ES256");
    assert!(
        !is_high_s(&signature_of(&token)),
        "the issuer signed high-S"
    );
    let twin = with_negated_s(&token);
    assert!(is_high_s(&signature_of(&twin)));
    let verifier = || {
        let cache = JwksCache::new(
            format!("{}/.well-known/jwks.json", app.url),
            JwksCacheOptions::default(),
        )
        .unwrap();
        Verifier::remote(cache, Validation::new(&app.issuer, ["api"]))
    };
    actix_web::rt::System::new().block_on(async {
        let strict = verifier();
        let claims: Value = strict.verify(&token).await.expect("the issuer's token");
        assert_eq!(claims["sub"], client.id.as_str());
        let err = strict.verify::<Value>(&twin).await.unwrap_err();
        assert_eq!(err, VerifyError::HighS);
        assert_eq!(
            err.to_string(),
            "non-canonical ES256 signature: high-S (s > n/2)"
        );
        // The opt-out, for issuers whose library does not normalize: both encodings pass.
        let lenient = verifier().allow_high_s();
        assert_eq!(lenient.verify::<Value>(&twin).await.unwrap(), claims);
        assert_eq!(lenient.verify::<Value>(&token).await.unwrap(), claims);
    });
}

#[test]
fn signature_from_another_key_with_the_same_kid_is_rejected() {
    for alg in [SigningAlg::Es256, SigningAlg::Rs256] {
        let real = key(&keys().published, alg);
        let attacker = key(&keys().attacker, alg);
        let token = signed_by(attacker, &header_for(real), &claims());
        assert_eq!(
            verify(&token).unwrap_err(),
            VerifyError::BadSignature,
            "{alg}"
        );
    }
}

#[test]
fn tampered_payload_is_rejected() {
    let token = signed_by(es(), &header_for(es()), &claims());
    let parts: Vec<&str> = token.split('.').collect();
    let mut evil = claims();
    evil["sub"] = "admin".into();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(evil.to_string().as_bytes()),
        parts[2]
    );
    assert_eq!(verify(&tampered).unwrap_err(), VerifyError::BadSignature);
}

#[test]
fn stripped_signature_and_wrong_segment_counts_are_rejected() {
    let token = signed_by(es(), &header_for(es()), &claims());
    let (input, sig) = token.rsplit_once('.').unwrap();
    for bad in [
        format!("{input}."),
        input.to_owned(),
        format!("{token}.{sig}"),
        format!("{input}.{sig}.."),
        token.split('.').next().unwrap().to_owned(),
        String::new(),
        "...".to_owned(),
    ] {
        assert!(
            matches!(verify(&bad), Err(VerifyError::Malformed(_))),
            "{bad:?}: {:?}",
            verify(&bad)
        );
    }
}

#[test]
fn expired_tokens_are_rejected_beyond_the_leeway() {
    let mut c = claims();
    c["exp"] = (unix_now() - 120).into();
    assert_eq!(
        verify(&signed_by(es(), &header_for(es()), &c)).unwrap_err(),
        VerifyError::Expired
    );
    c["exp"] = (unix_now() - 30).into();
    assert!(
        verify(&signed_by(es(), &header_for(es()), &c)).is_ok(),
        "inside the 60 s leeway"
    );
}

#[test]
fn tokens_not_yet_valid_are_rejected() {
    let mut c = claims();
    c["nbf"] = (unix_now() + 600).into();
    assert_eq!(
        verify(&signed_by(es(), &header_for(es()), &c)).unwrap_err(),
        VerifyError::NotYetValid
    );
}

#[test]
fn wrong_issuer_and_wrong_audience_are_rejected() {
    let mut c = claims();
    c["iss"] = "https://evil.example".into();
    assert_eq!(
        verify(&signed_by(es(), &header_for(es()), &c)).unwrap_err(),
        VerifyError::WrongIssuer
    );
    let mut c = claims();
    c["aud"] = "other-api".into();
    assert_eq!(
        verify(&signed_by(es(), &header_for(es()), &c)).unwrap_err(),
        VerifyError::WrongAudience
    );
    c["aud"] = json!(["other-api", "api"]);
    assert!(
        verify(&signed_by(es(), &header_for(es()), &c)).is_ok(),
        "an array holding our audience"
    );
    c["aud"] = json!(["other-api"]);
    assert_eq!(
        verify(&signed_by(es(), &header_for(es()), &c)).unwrap_err(),
        VerifyError::WrongAudience
    );
}

#[test]
fn missing_required_claims_are_rejected() {
    for claim in ["exp", "iss", "aud"] {
        let mut c = claims();
        c.as_object_mut().unwrap().remove(claim);
        assert_eq!(
            verify(&signed_by(es(), &header_for(es()), &c)).unwrap_err(),
            VerifyError::MissingClaim(claim.into())
        );
    }
    let mut c = claims();
    c["exp"] = "tomorrow".into();
    assert_eq!(
        verify(&signed_by(es(), &header_for(es()), &c)).unwrap_err(),
        VerifyError::MissingClaim("exp".into())
    );
}

#[test]
fn unknown_crit_header_is_rejected() {
    let mut header = header_for(es());
    header["crit"] = json!(["http://example.invalid/ext"]);
    header["http://example.invalid/ext"] = true.into();
    assert_eq!(
        verify(&signed_by(es(), &header, &claims())).unwrap_err(),
        VerifyError::CritUnsupported
    );
}

#[test]
fn embedded_jwk_jku_and_x5u_headers_never_supply_the_key() {
    let attacker = key(&keys().attacker, SigningAlg::Es256);
    let attacker_jwk = serde_json::to_value(attacker.jwk()).unwrap();
    for (name, value) in [
        ("jwk", attacker_jwk.clone()),
        ("jku", json!("https://attacker.example/jwks.json")),
        ("x5u", json!("https://attacker.example/cert.pem")),
        (
            "x5c",
            json!(["MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"]),
        ),
    ] {
        // Pointing at the attacker's key by its own kid: unknown to us.
        let mut header = header_for(attacker);
        header[name] = value.clone();
        assert_eq!(
            verify(&signed_by(attacker, &header, &claims())).unwrap_err(),
            VerifyError::UnknownKey,
            "{name}"
        );
        // Borrowing our kid: the pinned key rejects the attacker's signature.
        let mut header = header_for(es());
        header[name] = value;
        assert_eq!(
            verify(&signed_by(attacker, &header, &claims())).unwrap_err(),
            VerifyError::BadSignature,
            "{name}"
        );
    }
}

#[test]
fn header_alg_must_match_the_keys_alg() {
    // RS256 claimed for the EC key, ES256 for the RSA key, PS256 for the RSA key.
    for (k, alg) in [
        (es(), "RS256"),
        (rs(), "ES256"),
        (rs(), "PS256"),
        (es(), "ES384"),
    ] {
        let header = json!({"alg": alg, "kid": k.kid(), "typ": "JWT"});
        assert_eq!(
            verify(&signed_by(k, &header, &claims())).unwrap_err(),
            VerifyError::AlgorithmNotAllowed,
            "{alg}"
        );
    }
}

#[test]
fn oversized_tokens_are_rejected_before_parsing() {
    let mut c = claims();
    c["padding"] = "x".repeat(9000).into();
    assert_eq!(
        verify(&signed_by(es(), &header_for(es()), &c)).unwrap_err(),
        VerifyError::TooLarge(8192)
    );
    // Rejected by size even when it is not a JWT at all.
    assert_eq!(
        verify(&"a".repeat(100_000)).unwrap_err(),
        VerifyError::TooLarge(8192)
    );
}

#[test]
fn typ_is_checked_when_configured() {
    let validation = Validation::new(ISS, ["api"]).with_typ("at+jwt");
    let check = |typ: Option<&str>| {
        let mut header = header_for(es());
        match typ {
            Some(t) => header["typ"] = t.into(),
            None => {
                header.as_object_mut().unwrap().remove("typ");
            }
        }
        Verifier::verify_with::<Value>(
            &keys().ring,
            &signed_by(es(), &header, &claims()),
            &validation,
        )
    };
    assert!(check(Some("at+jwt")).is_ok());
    assert!(check(Some("application/at+JWT")).is_ok());
    assert_eq!(check(Some("JWT")).unwrap_err(), VerifyError::WrongType);
    assert_eq!(check(None).unwrap_err(), VerifyError::WrongType);
    // The expected value may carry the media type prefix too.
    let prefixed = Validation::new(ISS, ["api"]).with_typ("application/at+jwt");
    let mut header = header_for(es());
    header["typ"] = "at+jwt".into();
    assert!(
        Verifier::verify_with::<Value>(
            &keys().ring,
            &signed_by(es(), &header, &claims()),
            &prefixed
        )
        .is_ok()
    );
}

#[test]
fn garbage_headers_and_payloads_are_malformed() {
    let sig = b64(&[1; 64]);
    for bad in [
        format!(
            "{}.{}.{sig}",
            b64(b"not json"),
            b64(claims().to_string().as_bytes())
        ),
        format!("{}.{}.{sig}", b64(b"[1,2]"), b64(b"{}")),
        format!("%%%.{}.{sig}", b64(b"{}")),
        format!("{}.{}.{sig}", b64(br#"{"alg":"ES256"}"#), b64(b"{}")),
    ] {
        assert!(
            matches!(verify(&bad), Err(VerifyError::Malformed(_))),
            "{bad}: {:?}",
            verify(&bad)
        );
    }
}

#[test]
fn jwks_entries_without_use_are_kept_and_enc_keys_are_not() {
    let mut set = serde_json::to_value(keys().published.jwk_set()).unwrap();
    for key in set["keys"].as_array_mut().unwrap() {
        key.as_object_mut().unwrap().remove("use");
    }
    let ring = KeyRing::from_json(set.to_string().as_bytes()).unwrap();
    assert_eq!(ring.len(), 2, "RFC 7517: use is optional");
    for key in set["keys"].as_array_mut().unwrap() {
        key["use"] = "enc".into();
    }
    assert!(
        KeyRing::from_json(set.to_string().as_bytes())
            .unwrap()
            .is_empty()
    );
    let mut enc = es().jwk().clone();
    enc.use_ = "enc".into();
    assert!(jwt_issuer::verify::VerifyingKey::from_jwk(&enc).is_err());
}
