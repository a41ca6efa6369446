//! The key store on disk: first start, modes, restart, refusals, imports.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use aws_lc_rs::encoding::{AsDer, EcPrivateKeyRfc5915Der};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair};
use jwt_issuer::{KeyStore, SigningAlg};
use rsa::pkcs1::{EncodeRsaPrivateKey, LineEnding};
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey};
use tempfile::TempDir;

use crate::helpers::{
    ServeProcess, active_kid, key_states, keys_dir_with_template, list_dir, mode, run_cli,
};

fn pem(tag: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(tag, der.to_vec()))
}

fn rsa_key(bits: usize) -> rsa::RsaPrivateKey {
    rsa::RsaPrivateKey::new(&mut rand_core::OsRng, bits).expect("rsa key")
}

#[test]
fn first_start_generates_es256_and_rs256_keys_privately_and_atomically() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("nested/keys");
    let (keys, generated) = KeyStore::new(&dir).load_or_init().unwrap();
    assert_eq!(generated.len(), 2);
    assert!(keys.active(SigningAlg::Es256).is_some());
    let rsa = keys.active(SigningAlg::Rs256).unwrap();
    assert_eq!(rsa.rsa_bits(), Some(2048));

    assert_eq!(mode(&dir), 0o700, "keys dir is created 0700");
    let names = list_dir(&dir);
    assert!(
        names.iter().all(|n| !n.starts_with(".tmp")),
        "temp files left behind: {names:?}"
    );
    assert_eq!(
        names.iter().filter(|n| n.ends_with(".pem")).count(),
        2,
        "{names:?}"
    );
    assert_eq!(mode(&dir.join("keys.json")), 0o600);
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("keys.json")).unwrap()).unwrap();
    for key in keys.keys() {
        let pem_file = dir.join(format!("{}.pem", key.kid()));
        assert_eq!(mode(&pem_file), 0o600);
        let text = fs::read_to_string(&pem_file).unwrap();
        assert!(
            text.starts_with("-----BEGIN PRIVATE KEY-----\n"),
            "PKCS#8 PEM"
        );
        let record = manifest["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["kid"] == key.kid())
            .expect("recorded in the manifest");
        assert_eq!(record["alg"], key.alg().as_str());
        assert_eq!(record["state"], "active");
    }
}

#[test]
fn first_start_in_an_existing_empty_dir_generates_keys() {
    let tmp = TempDir::new().unwrap();
    fs::write(tmp.path().join("README.md"), "keys live here").unwrap();
    let (keys, generated) = KeyStore::new(tmp.path()).load_or_init().unwrap();
    assert_eq!(generated.len(), 2);
    assert_eq!(keys.keys().len(), 2);
}

#[test]
fn restart_keeps_the_same_kids() {
    let (_tmp, dir) = keys_dir_with_template();
    let store = KeyStore::new(&dir);
    let first: Vec<String> = store
        .load_or_init()
        .unwrap()
        .0
        .keys()
        .iter()
        .map(|k| k.kid().to_owned())
        .collect();
    let (again, generated) = store.load_or_init().unwrap();
    assert!(generated.is_empty());
    let second: Vec<String> = again.keys().iter().map(|k| k.kid().to_owned()).collect();
    assert_eq!(first, second);
}

#[test]
fn restarted_binary_publishes_the_same_jwks() {
    let (_tmp, dir) = keys_dir_with_template();
    let first = ServeProcess::start(&dir, &[]);
    let jwks1 = first.get("/.well-known/jwks.json");
    drop(first);
    let second = ServeProcess::start(&dir, &[]);
    let jwks2 = second.get("/.well-known/jwks.json");
    assert_eq!(jwks1.body, jwks2.body);
    assert_eq!(jwks1.header("etag"), jwks2.header("etag"));
}

#[test]
fn group_or_world_accessible_key_refuses_start_and_says_how_to_fix() {
    for bad_mode in [0o640, 0o604, 0o620, 0o644] {
        let (_tmp, dir) = keys_dir_with_template();
        // The default algorithm's active key: the server cannot sign what it is asked
        // to by default, so it does not start.
        let kid = active_kid(&dir, SigningAlg::Es256);
        let victim = dir.join(format!("{kid}.pem"));
        fs::set_permissions(&victim, fs::Permissions::from_mode(bad_mode)).unwrap();
        let out = run_cli(&dir, &["serve", "--bind", "127.0.0.1:0"]);
        assert_ne!(out.code, Some(0));
        let last = out.stderr.lines().last().unwrap_or_default();
        assert!(last.contains(&victim.display().to_string()), "{last}");
        assert!(last.contains("too open"), "{last}");
        assert!(last.contains("chmod 600"), "{last}");
        // The library never uses the key, whoever calls it, and says why.
        let keys = KeyStore::new(&dir).load().unwrap();
        assert!(keys.find(&kid).is_none());
        assert!(keys.broken()[0].reason.contains("too open"));
    }
}

#[test]
fn owner_only_modes_stricter_than_0600_are_accepted() {
    let (_tmp, dir) = keys_dir_with_template();
    for name in list_dir(&dir).into_iter().filter(|n| n.ends_with(".pem")) {
        fs::set_permissions(dir.join(name), fs::Permissions::from_mode(0o400)).unwrap();
    }
    assert_eq!(KeyStore::new(&dir).load().unwrap().keys().len(), 2);
}

#[test]
fn generated_rsa_sizes_are_honoured() {
    let tmp = TempDir::new().unwrap();
    let store = KeyStore::new(tmp.path());
    let info = store.generate(SigningAlg::Rs256, 3072).unwrap();
    let keys = store.load().unwrap();
    assert_eq!(keys.find(&info.kid).unwrap().rsa_bits(), Some(3072));
    assert!(store.generate(SigningAlg::Rs256, 1024).is_err());
}

#[test]
fn a_generated_key_is_published_as_next_and_signs_only_after_rotation() {
    let (_tmp, dir) = keys_dir_with_template();
    let store = KeyStore::new(&dir);
    let before = active_kid(&dir, SigningAlg::Es256);
    let info = store.generate(SigningAlg::Es256, 0).unwrap();
    assert_eq!(info.state, jwt_issuer::keys::KeyState::Next);
    let keys = store.load().unwrap();
    assert_eq!(
        keys.active(SigningAlg::Es256).unwrap().kid(),
        before,
        "the active key still signs"
    );
    assert!(keys.find(&info.kid).is_some(), "the new key is published");
    store.rotate(SigningAlg::Es256, true).unwrap();
    let keys = store.load().unwrap();
    assert_eq!(keys.active(SigningAlg::Es256).unwrap().kid(), info.kid);
    assert!(
        keys.find(&before).is_some(),
        "the retired key stays published"
    );
}

/// Imports `contents` through the CLI and returns (exit code, stderr, keys dir listing).
fn import(contents: &[u8]) -> (Option<i32>, String, Vec<String>, Vec<String>) {
    let (tmp, dir) = keys_dir_with_template();
    let before = list_dir(&dir);
    let file = tmp.path().join("operator key.pem");
    fs::write(&file, contents).unwrap();
    let out = run_cli(&dir, &["keys", "import", file.to_str().unwrap()]);
    let after = list_dir(&dir);
    if out.code != Some(0) {
        assert_eq!(out.stderr.lines().count(), 1, "one line: {}", out.stderr);
        assert!(
            out.stderr.contains("operator key.pem"),
            "names the file: {}",
            out.stderr
        );
    }
    (out.code, out.stderr, before, after)
}

fn assert_refused(contents: &[u8], reason: &str) {
    let (code, stderr, before, after) = import(contents);
    assert_ne!(code, Some(0), "accepted: expected refusal with {reason}");
    assert!(stderr.contains(reason), "expected {reason:?} in {stderr:?}");
    assert_eq!(before, after, "nothing written on refusal");
    assert!(
        !stderr.contains("PRIVATE KEY-----"),
        "no key material in errors"
    );
}

#[test]
fn import_refuses_rsa_under_2048_bits() {
    let weak = rsa_key(1024);
    assert_refused(
        weak.to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes(),
        "1024 bits is too weak",
    );
    assert_refused(
        weak.to_pkcs1_pem(LineEnding::LF).unwrap().as_bytes(),
        "1024 bits is too weak",
    );
}

#[test]
fn import_refuses_other_curves_in_pkcs8_and_sec1() {
    let rng = SystemRandom::new();
    let p384 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &rng).unwrap();
    assert_refused(pem("PRIVATE KEY", p384.as_ref()).as_bytes(), "curve P-384");
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, p384.as_ref()).unwrap();
    let sec1: EcPrivateKeyRfc5915Der = pair.private_key().as_der().unwrap();
    assert_refused(
        pem("EC PRIVATE KEY", sec1.as_ref()).as_bytes(),
        "curve P-384",
    );
}

#[test]
fn import_refuses_other_key_types() {
    let ed = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
    assert_refused(
        pem("PRIVATE KEY", ed.as_ref()).as_bytes(),
        "unsupported key type Ed25519",
    );
}

#[test]
fn import_refuses_public_only_pem() {
    let public = rsa_key(2048)
        .to_public_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    assert_refused(public.as_bytes(), "only public material (PUBLIC KEY)");
    assert_refused(
        pem("CERTIFICATE", &[0x30, 0x03, 0x02, 0x01, 0x01]).as_bytes(),
        "only public material (CERTIFICATE)",
    );
}

#[test]
fn import_refuses_encrypted_pem() {
    assert_refused(
        pem("ENCRYPTED PRIVATE KEY", &[0x30, 0x00]).as_bytes(),
        "is encrypted",
    );
    let legacy = "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00112233445566778899AABBCCDDEEFF\n\nMAA=\n-----END RSA PRIVATE KEY-----\n";
    assert_refused(legacy.as_bytes(), "is encrypted");
}

#[test]
fn import_refuses_garbage() {
    assert_refused(b"hello, this is not a key\n", "not a PEM file");
    assert_refused(&[0xff, 0x00, 0x13, 0x37, 0x80], "not a PEM file");
    assert_refused(b"", "not a PEM file");
    assert_refused(
        pem("PRIVATE KEY", b"\x30\x82garbage").as_bytes(),
        "malformed PRIVATE KEY",
    );
    assert_refused(
        pem("EC PRIVATE KEY", b"\x01\x02").as_bytes(),
        "malformed EC PRIVATE KEY",
    );
}

#[test]
fn import_refuses_two_keys_in_one_file() {
    let a = p256::SecretKey::random(&mut rand_core::OsRng)
        .to_pkcs8_pem(LineEnding::LF)
        .unwrap();
    let b = p256::SecretKey::random(&mut rand_core::OsRng)
        .to_pkcs8_pem(LineEnding::LF)
        .unwrap();
    assert_refused(
        format!("{}{}", *a, *b).as_bytes(),
        "more than one private key",
    );
}

#[test]
fn import_refuses_a_missing_file() {
    let (_tmp, dir) = keys_dir_with_template();
    let out = run_cli(&dir, &["keys", "import", "/no/such/key.pem"]);
    assert_ne!(out.code, Some(0));
    assert_eq!(out.stderr.lines().count(), 1);
    assert!(out.stderr.contains("/no/such/key.pem"));
}

fn assert_imported(contents: &[u8], alg: &str) {
    let (tmp, dir) = keys_dir_with_template();
    let file = tmp.path().join("import.pem");
    fs::write(&file, contents).unwrap();
    let out = run_cli(&dir, &["keys", "import", file.to_str().unwrap()]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stdout.contains(alg), "{}", out.stdout);
    let keys = KeyStore::new(&dir).load().unwrap();
    assert_eq!(keys.keys().len(), 3);
    let stored = keys
        .keys()
        .iter()
        .find(|k| out.stdout.contains(k.kid()))
        .expect("imported kid");
    assert_eq!(stored.alg().as_str(), alg);
    assert_eq!(mode(Path::new(stored.location())), 0o600);
    let text = fs::read_to_string(stored.location()).unwrap();
    assert!(
        text.starts_with("-----BEGIN PRIVATE KEY-----"),
        "stored as PKCS#8"
    );
    assert!(list_dir(&dir).iter().all(|n| !n.starts_with(".tmp")));
    assert!(
        out.stdout.contains("next"),
        "imported into a store with an active key: next: {}",
        out.stdout
    );

    // The same key again is refused, nothing rewritten.
    let again = run_cli(&dir, &["keys", "import", file.to_str().unwrap()]);
    assert_ne!(again.code, Some(0));
    assert!(
        again.stderr.contains("already in the store"),
        "{}",
        again.stderr
    );
}

#[test]
fn import_accepts_pkcs8_pkcs1_and_sec1() {
    let rsa = rsa_key(2048);
    assert_imported(
        rsa.to_pkcs1_pem(LineEnding::LF).unwrap().as_bytes(),
        "RS256",
    );
    assert_imported(
        rsa_key(2048)
            .to_pkcs8_pem(LineEnding::LF)
            .unwrap()
            .as_bytes(),
        "RS256",
    );
    let ec = p256::SecretKey::random(&mut rand_core::OsRng);
    assert_imported(ec.to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes(), "ES256");
    // openssl ecparam -genkey: an EC PARAMETERS block, then the SEC1 key.
    let sec1 = format!(
        "-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n{}",
        pem(
            "EC PRIVATE KEY",
            &p256::SecretKey::random(&mut rand_core::OsRng)
                .to_sec1_der()
                .unwrap()
        )
    );
    assert_imported(sec1.as_bytes(), "ES256");
}

#[test]
fn key_files_without_a_manifest_are_adopted_newest_active() {
    // An operator's own directory of PEM files (or a crash before the first manifest).
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path().join("keys");
    fs::create_dir(&dir).unwrap();
    let mut kids = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    let now = std::time::SystemTime::now();
    // "Newest" is the file's modification time: set it, an hour and a minute ago (writes
    // a few ms apart may share a coarse file-system timestamp).
    for (name, age) in [("old.pem", 3600), ("new.pem", 60)] {
        let ec = p256::SecretKey::random(&mut rand_core::OsRng);
        let file = dir.join(name);
        fs::write(&file, ec.to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes()).unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
        fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(now - std::time::Duration::from_secs(age))
            .unwrap();
        let loaded = KeyStore::new(&dir).load().unwrap();
        kids.push(loaded.keys().len());
        let kid = loaded
            .keys()
            .iter()
            .map(|k| k.kid().to_owned())
            .find(|kid| !seen.contains(kid))
            .expect("the new file's key is read");
        seen.push(kid);
    }
    let [old_kid, new_kid] = [&seen[0], &seen[1]];
    let (keys, generated) = KeyStore::new(&dir).load_or_init().unwrap();
    assert!(
        generated.is_empty(),
        "existing keys are used, none generated"
    );
    assert_eq!(keys.keys().len(), 2);
    let active = keys.active(SigningAlg::Es256).unwrap();
    assert_eq!(active.kid(), new_kid, "the newest file's key signs");
    assert!(
        keys.find(old_kid).is_some(),
        "the older key stays published"
    );
    assert!(
        active
            .location()
            .ends_with(&format!("{}.pem", active.kid())),
        "renamed to <kid>.pem"
    );
    assert!(!dir.join("old.pem").exists() && !dir.join("new.pem").exists());
    assert!(dir.join("keys.json").exists());
    assert_eq!(kids, [1, 2]);
}

#[test]
fn a_key_file_dropped_into_a_managed_store_is_adopted_as_next_by_the_next_change() {
    let (_tmp, dir) = keys_dir_with_template();
    let ec = p256::SecretKey::random(&mut rand_core::OsRng);
    let file = dir.join("operator.pem");
    fs::write(&file, ec.to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes()).unwrap();
    fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
    let store = KeyStore::new(&dir);
    assert_eq!(
        store.load().unwrap().keys().len(),
        2,
        "not published before the store adopts it"
    );
    store.generate(SigningAlg::Rs256, 2048).unwrap();
    assert_eq!(
        key_states(&dir, SigningAlg::Es256),
        [
            jwt_issuer::keys::KeyState::Active,
            jwt_issuer::keys::KeyState::Next
        ]
    );
    assert_eq!(store.load().unwrap().keys().len(), 4);
}

#[test]
fn a_corrupt_key_is_left_out_named_and_the_others_load() {
    let (_tmp, dir) = keys_dir_with_template();
    let kid = active_kid(&dir, SigningAlg::Rs256);
    let victim = dir.join(format!("{kid}.pem"));
    fs::write(
        &victim,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let keys = KeyStore::new(&dir).load().unwrap();
    assert!(keys.find(&kid).is_none() && keys.active(SigningAlg::Rs256).is_none());
    assert!(
        keys.active(SigningAlg::Es256).is_some(),
        "the good key loads"
    );
    let broken = keys.broken();
    assert_eq!(broken.len(), 1, "{broken:?}");
    assert_eq!(broken[0].kid, kid);
    assert!(
        broken[0].reason.contains(&victim.display().to_string()),
        "{broken:?}"
    );
}

#[test]
fn temp_files_of_interrupted_writes_are_ignored() {
    let (_tmp, dir) = keys_dir_with_template();
    let partial = dir.join(".tmp-abc123");
    fs::write(&partial, "-----BEGIN PRIVATE KEY-----\nMII").unwrap();
    fs::set_permissions(&partial, fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(KeyStore::new(&dir).load().unwrap().keys().len(), 2);
}
