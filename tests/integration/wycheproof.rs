//! Project Wycheproof vectors through the verifier's own signature check
//! (`VerifyingKey::verify`, built from a JWK as the JWKS cache builds it): every valid
//! vector accepted, every invalid one rejected; valid ECDSA vectors with a high S are
//! refused by default and accepted with the opt-out (`verify_allowing_high_s`).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jwt_issuer::SigningAlg;
use jwt_issuer::jwks::{Jwk, PublicKeyParams};
use jwt_issuer::verify::VerifyingKey;
use wycheproof::TestResult;

use crate::helpers::is_high_s;

/// Left-pads a big-endian integer (Wycheproof may add a sign byte or drop zeros) to `len`.
fn fixed(bytes: &[u8], len: usize) -> Vec<u8> {
    let trimmed: &[u8] = &bytes[bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len())..];
    assert!(trimmed.len() <= len);
    let mut out = vec![0; len - trimmed.len()];
    out.extend_from_slice(trimmed);
    out
}

#[derive(Default)]
struct Tally {
    valid: usize,
    /// Valid ECDSA signatures whose s is above n/2: refused unless high-S is allowed.
    valid_high_s: usize,
    invalid: usize,
    acceptable: usize,
}

fn check(
    name: &str,
    key: &VerifyingKey,
    tc_id: usize,
    result: TestResult,
    msg: &[u8],
    sig: &[u8],
    tally: &mut Tally,
) {
    let accepted = key.verify(msg, sig);
    let accepted_allowing_high_s = key.verify_allowing_high_s(msg, sig);
    match result {
        TestResult::Valid if key.alg() == SigningAlg::Es256 && is_high_s(sig) => {
            assert!(
                !accepted,
                "{name} tcId {tc_id}: valid high-S signature accepted by default"
            );
            assert!(
                accepted_allowing_high_s,
                "{name} tcId {tc_id}: valid high-S signature rejected with the opt-out"
            );
            tally.valid_high_s += 1;
        }
        TestResult::Valid => {
            assert!(accepted, "{name} tcId {tc_id}: valid signature rejected");
            assert!(
                accepted_allowing_high_s,
                "{name} tcId {tc_id}: valid signature rejected with the opt-out"
            );
            tally.valid += 1;
        }
        TestResult::Invalid => {
            assert!(
                !accepted && !accepted_allowing_high_s,
                "{name} tcId {tc_id}: invalid signature accepted"
            );
            tally.invalid += 1;
        }
        TestResult::Acceptable => tally.acceptable += 1,
    }
}

#[test]
fn ecdsa_p256_sha256_p1363_vectors() {
    let set =
        wycheproof::ecdsa::TestSet::load(wycheproof::ecdsa::TestName::EcdsaSecp256r1Sha256P1363)
            .unwrap();
    let mut tally = Tally::default();
    for group in &set.test_groups {
        let params = PublicKeyParams::p256(
            &fixed(&group.key.affine_x, 32),
            &fixed(&group.key.affine_y, 32),
        );
        let jwk = Jwk::new(params, SigningAlg::Es256);
        let key = VerifyingKey::from_jwk(&jwk).expect("valid P-256 key");
        for test in &group.tests {
            check(
                "ES256",
                &key,
                test.tc_id,
                test.result,
                &test.msg,
                &test.sig,
                &mut tally,
            );
        }
    }
    assert_eq!(
        tally.valid + tally.valid_high_s + tally.invalid + tally.acceptable,
        set.number_of_tests
    );
    assert!(
        tally.valid > 100 && tally.valid_high_s > 50 && tally.invalid > 50,
        "{} valid low-S, {} valid high-S, {} invalid",
        tally.valid,
        tally.valid_high_s,
        tally.invalid
    );
}

fn rsa_vectors(name: wycheproof::rsa_pkcs1_verify::TestName, bits: usize) {
    let set = wycheproof::rsa_pkcs1_verify::TestSet::load(name).unwrap();
    let mut tally = Tally::default();
    for group in &set.test_groups {
        assert_eq!(group.key_size, bits);
        let params = PublicKeyParams::rsa(&group.key.n, &group.key.e);
        let jwk = Jwk::new(params, SigningAlg::Rs256);
        let key = VerifyingKey::from_jwk(&jwk).expect("valid RSA key");
        for test in &group.tests {
            check(
                "RS256",
                &key,
                test.tc_id,
                test.result,
                &test.msg,
                &test.sig,
                &mut tally,
            );
        }
    }
    assert_eq!(
        tally.valid + tally.invalid + tally.acceptable,
        set.number_of_tests
    );
    assert!(
        tally.valid > 0 && tally.invalid > 50,
        "{} valid, {} invalid",
        tally.valid,
        tally.invalid
    );
}

#[test]
fn rsa_pkcs1_2048_sha256_vectors() {
    rsa_vectors(wycheproof::rsa_pkcs1_verify::TestName::Rsa2048Sha256, 2048);
}

#[test]
fn rsa_pkcs1_3072_sha256_vectors() {
    rsa_vectors(wycheproof::rsa_pkcs1_verify::TestName::Rsa3072Sha256, 3072);
}

#[test]
fn jwk_round_trip_keeps_wycheproof_keys_intact() {
    // The JWK form Wycheproof ships must equal ours for the same key.
    let set =
        wycheproof::ecdsa::TestSet::load(wycheproof::ecdsa::TestName::EcdsaSecp256r1Sha256P1363)
            .unwrap();
    let group = set
        .test_groups
        .iter()
        .find(|g| g.jwk.is_some())
        .expect("a group with a JWK");
    let theirs = group.jwk.as_ref().unwrap();
    let PublicKeyParams::Ec { x, y, .. } = PublicKeyParams::p256(
        &fixed(&group.key.affine_x, 32),
        &fixed(&group.key.affine_y, 32),
    ) else {
        unreachable!()
    };
    assert_eq!(
        URL_SAFE_NO_PAD.decode(x).unwrap(),
        fixed(&theirs.affine_x, 32)
    );
    assert_eq!(
        URL_SAFE_NO_PAD.decode(y).unwrap(),
        fixed(&theirs.affine_y, 32)
    );
}
