//! [`KeySet`]: the published keys at one moment, immutable and shared by every request.

use std::sync::Arc;
use std::time::Duration;

use super::lifecycle::{KeyState, Manifest, Millis};
use super::material::SigningKey;
use crate::SigningAlg;
use crate::jwks::JwkSet;

/// The published keys at one moment: immutable, shared by every request.
#[derive(Debug, Default, Clone)]
pub struct KeySet {
    /// Ordered by algorithm, then active, next, retired.
    keys: Vec<Arc<SigningKey>>,
    manifest: Manifest,
    loaded_at: Millis,
    broken: Vec<BrokenKey>,
}

/// A key the manifest publishes that could not be loaded (an unreadable or too-open file,
/// material the backend no longer has): left out of the set, neither published nor
/// signing, and reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenKey {
    /// Its kid.
    pub kid: String,
    /// Its algorithm.
    pub alg: SigningAlg,
    /// Its state in the manifest.
    pub state: KeyState,
    /// Why it could not be loaded.
    pub reason: String,
}

impl KeySet {
    pub(crate) fn new(
        mut keys: Vec<Arc<SigningKey>>,
        manifest: Manifest,
        loaded_at: Millis,
    ) -> Self {
        // Active first, so a verifier that takes the first key of an algorithm gets the one
        // that signs.
        let state = |kid: &str| {
            manifest.get(kid).map(|r| match r.state {
                KeyState::Active => 0,
                KeyState::Next => 1,
                _ => 2,
            })
        };
        keys.sort_by(|a, b| {
            (a.alg(), state(a.kid()), a.kid()).cmp(&(b.alg(), state(b.kid()), b.kid()))
        });
        Self {
            keys,
            manifest,
            loaded_at,
            broken: Vec::new(),
        }
    }

    pub(crate) fn with_broken(mut self, broken: Vec<BrokenKey>) -> Self {
        self.broken = broken;
        self
    }

    /// The keys the manifest publishes that could not be loaded, and why.
    pub fn broken(&self) -> &[BrokenKey] {
        &self.broken
    }

    /// True when no key is published.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Every published key.
    pub fn keys(&self) -> &[Arc<SigningKey>] {
        &self.keys
    }

    /// The key that signs for `alg`.
    pub fn active(&self, alg: SigningAlg) -> Option<&Arc<SigningKey>> {
        let kid = &self.manifest.active(alg)?.kid;
        self.find(kid)
    }

    /// The published key with this kid.
    pub fn find(&self, kid: &str) -> Option<&Arc<SigningKey>> {
        self.keys.iter().find(|k| k.kid() == kid)
    }

    /// The algorithms some key signs with now.
    pub fn algorithms(&self) -> Vec<SigningAlg> {
        SigningAlg::ASYMMETRIC
            .into_iter()
            .filter(|&alg| self.active(alg).is_some())
            .collect()
    }

    /// The public keys, as published.
    pub fn jwk_set(&self) -> JwkSet {
        JwkSet {
            keys: self.keys.iter().map(|k| k.jwk().clone()).collect(),
        }
    }

    /// The manifest this set was loaded from (every key's state and times).
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// When the published set changes by itself next (see [`Manifest::next_change`]).
    pub fn next_change(&self, rotate_every: Option<Duration>) -> Option<Millis> {
        self.manifest.next_change(self.loaded_at, rotate_every)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwks::{Jwk, PublicKeyParams};
    use crate::keys::lifecycle::KeyRecord;
    use crate::keys::{SignatureBackend, SignatureFailed};

    /// Selection never signs: a public JWK is all a key set needs to order and find keys.
    struct NeverSigns;

    impl SignatureBackend for NeverSigns {
        fn sign(&self, _: &[u8]) -> Result<Vec<u8>, SignatureFailed> {
            Err(SignatureFailed("not in this test".into()))
        }
    }

    /// A key of `alg` with a distinct public part (and so a distinct kid) per `seed`.
    fn key(alg: SigningAlg, seed: u8) -> Arc<SigningKey> {
        let params = match alg {
            SigningAlg::Rs256 => PublicKeyParams::rsa(&[seed; 256], &[1, 0, 1]),
            _ => PublicKeyParams::p256(&[seed; 32], &[seed; 32]),
        };
        Arc::new(SigningKey::from_backend(
            Jwk::new(params, alg),
            format!("test:{seed}"),
            Box::new(NeverSigns),
        ))
    }

    fn record(key: &SigningKey, state: KeyState) -> KeyRecord {
        KeyRecord::new(key.kid().to_owned(), key.alg(), state, 0)
    }

    fn states(set: &KeySet) -> Vec<(SigningAlg, KeyState)> {
        set.keys()
            .iter()
            .map(|k| (k.alg(), set.manifest().get(k.kid()).unwrap().state))
            .collect()
    }

    #[test]
    fn keys_are_listed_by_algorithm_with_the_active_key_first() {
        let es_retired = key(SigningAlg::Es256, 1);
        let es_next = key(SigningAlg::Es256, 2);
        let es_active = key(SigningAlg::Es256, 3);
        let rs_next = key(SigningAlg::Rs256, 4);
        let rs_active = key(SigningAlg::Rs256, 5);
        let manifest = Manifest {
            version: Manifest::VERSION,
            keys: vec![
                record(&es_retired, KeyState::Retired),
                record(&es_next, KeyState::Next),
                record(&es_active, KeyState::Active),
                record(&rs_next, KeyState::Next),
                record(&rs_active, KeyState::Active),
            ],
        };
        // Loaded in the least helpful order.
        let loaded = vec![
            rs_next.clone(),
            es_retired.clone(),
            es_next.clone(),
            rs_active.clone(),
            es_active.clone(),
        ];
        let set = KeySet::new(loaded, manifest, 0);
        assert_eq!(
            states(&set),
            [
                (SigningAlg::Es256, KeyState::Active),
                (SigningAlg::Es256, KeyState::Next),
                (SigningAlg::Es256, KeyState::Retired),
                (SigningAlg::Rs256, KeyState::Active),
                (SigningAlg::Rs256, KeyState::Next),
            ]
        );
        // The JWKS keeps that order: a verifier taking the first key of an alg gets the signer.
        let published: Vec<String> = set.jwk_set().keys.into_iter().map(|j| j.kid).collect();
        let listed: Vec<String> = set.keys().iter().map(|k| k.kid().to_owned()).collect();
        assert_eq!(published, listed);
        assert_eq!(published[0], es_active.kid());
        assert_eq!(published[3], rs_active.kid());
    }

    #[test]
    fn active_returns_the_key_the_manifest_marks_active() {
        let older = key(SigningAlg::Es256, 1);
        let active = key(SigningAlg::Es256, 2);
        let manifest = Manifest {
            version: Manifest::VERSION,
            keys: vec![
                record(&older, KeyState::Next),
                record(&active, KeyState::Active),
            ],
        };
        let set = KeySet::new(vec![older.clone(), active.clone()], manifest, 0);
        assert_eq!(set.active(SigningAlg::Es256).unwrap().kid(), active.kid());
        assert!(set.active(SigningAlg::Rs256).is_none());
        assert_eq!(set.find(older.kid()).unwrap().kid(), older.kid());
        assert!(set.find("no-such-kid").is_none());
    }

    #[test]
    fn a_manifest_active_key_that_was_not_loaded_is_not_active() {
        let active = key(SigningAlg::Es256, 1);
        let next = key(SigningAlg::Es256, 2);
        let manifest = Manifest {
            version: Manifest::VERSION,
            keys: vec![
                record(&active, KeyState::Active),
                record(&next, KeyState::Next),
            ],
        };
        let set = KeySet::new(vec![next], manifest, 0);
        assert!(
            set.active(SigningAlg::Es256).is_none(),
            "a next key never signs in place of a missing active key"
        );
        assert!(set.algorithms().is_empty());
    }

    #[test]
    fn algorithms_lists_only_algorithms_with_an_active_key() {
        let es_next = key(SigningAlg::Es256, 1);
        let es_retired = key(SigningAlg::Es256, 2);
        let rs_active = key(SigningAlg::Rs256, 3);
        let manifest = Manifest {
            version: Manifest::VERSION,
            keys: vec![
                record(&es_next, KeyState::Next),
                record(&es_retired, KeyState::Retired),
                record(&rs_active, KeyState::Active),
            ],
        };
        let set = KeySet::new(vec![es_next, es_retired, rs_active], manifest, 0);
        assert_eq!(set.algorithms(), [SigningAlg::Rs256]);
        assert_eq!(
            set.keys().len(),
            3,
            "next and retired keys are still published"
        );

        let empty = KeySet::default();
        assert!(empty.is_empty());
        assert!(empty.algorithms().is_empty());
    }
}
