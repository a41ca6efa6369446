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
        }
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
