//! The key lifecycle as data: the manifest (`keys.json`) that records every key's state and
//! times, the timing rules derived from the configuration, and the transitions (rotate,
//! revoke, sweep) as pure functions of the manifest and the clock, so they are tested
//! without a disk and applied to disk in one atomic manifest write.
//!
//! States: `next` (published, not signing) -> `active` (signing) -> `retired` (published,
//! not signing) -> `removed`; `revoked` leaves the JWKS at once.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::SigningAlg;
use crate::ttl::TOKEN_TTL_CEILING;

/// Milliseconds since the Unix epoch.
pub type Millis = u64;

/// The timing rules, derived from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotationPolicy {
    /// The JWKS `Cache-Control: max-age`: how long a verifier may hold an old key set.
    pub jwks_max_age: Duration,
    /// The longest token lifetime anything may issue.
    pub max_token_ttl: Duration,
    /// Clock skew and reload slack added to both waits.
    pub leeway: Duration,
}

impl Default for RotationPolicy {
    fn default() -> Self {
        Self {
            jwks_max_age: Self::DEFAULT_JWKS_MAX_AGE,
            max_token_ttl: TOKEN_TTL_CEILING,
            leeway: Self::DEFAULT_LEEWAY,
        }
    }
}

impl RotationPolicy {
    /// Default JWKS `Cache-Control: max-age` (5 min).
    pub const DEFAULT_JWKS_MAX_AGE: Duration = Duration::from_secs(300);
    /// Longest JWKS max-age accepted: a day is already long for verifiers to miss a new key.
    pub const MAX_JWKS_MAX_AGE: Duration = Duration::from_secs(86_400);
    /// Default slack on every lifecycle wait (60 s).
    pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(60);

    /// How long a key is published before it may sign: every cache that could hold the
    /// key set from before its publication has expired by then.
    pub fn activation_delay(&self) -> Duration {
        self.jwks_max_age + self.leeway
    }

    /// How long a retired key stays published: every token it signed has expired and
    /// every cache has seen its last JWKS with the key by then.
    pub fn retention(&self) -> Duration {
        self.max_token_ttl + self.jwks_max_age + self.leeway
    }
}

/// Where a key is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyState {
    /// Published, not yet signing.
    Next,
    /// Signing (one per algorithm).
    Active,
    /// Published, no longer signing, until `remove_after`.
    Retired,
    /// Gone from the JWKS after its retention; file deleted.
    Removed,
    /// Gone from the JWKS at once (compromise); file deleted.
    Revoked,
}

impl KeyState {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Next => "next",
            Self::Active => "active",
            Self::Retired => "retired",
            Self::Removed => "removed",
            Self::Revoked => "revoked",
        }
    }
}

/// One key in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// RFC 7638 thumbprint; the key file is `<kid>.pem`.
    pub kid: String,
    /// Its algorithm.
    pub alg: SigningAlg,
    /// Its state.
    pub state: KeyState,
    /// When the key was created or imported.
    #[serde(with = "rfc3339")]
    pub created: Millis,
    /// When it entered the JWKS.
    #[serde(with = "rfc3339")]
    pub published: Millis,
    /// When it started signing.
    #[serde(default, with = "rfc3339_opt", skip_serializing_if = "Option::is_none")]
    pub activated: Option<Millis>,
    /// When it stopped signing.
    #[serde(default, with = "rfc3339_opt", skip_serializing_if = "Option::is_none")]
    pub retired: Option<Millis>,
    /// When it leaves the JWKS (retired keys).
    #[serde(default, with = "rfc3339_opt", skip_serializing_if = "Option::is_none")]
    pub remove_after: Option<Millis>,
    /// When it was removed or revoked.
    #[serde(default, with = "rfc3339_opt", skip_serializing_if = "Option::is_none")]
    pub removed: Option<Millis>,
    /// Where the private key is held when the store does not hold it: a PKCS#11 URI
    /// (RFC 7512) of a key generated in an HSM. `None`: the store holds it (the PEM file,
    /// the database row).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
}

impl KeyRecord {
    /// A key entering the store now in `state`.
    pub fn new(kid: String, alg: SigningAlg, state: KeyState, now: Millis) -> Self {
        Self {
            kid,
            alg,
            state,
            created: now,
            published: now,
            activated: (state == KeyState::Active).then_some(now),
            retired: None,
            remove_after: None,
            removed: None,
            uri: None,
        }
    }

    /// Whether the key is in the JWKS at `now`.
    pub fn is_published(&self, now: Millis) -> bool {
        match self.state {
            KeyState::Next | KeyState::Active => true,
            KeyState::Retired => self.remove_after.is_none_or(|t| now < t),
            KeyState::Removed | KeyState::Revoked => false,
        }
    }

    /// When a next key may start signing.
    pub fn signs_from(&self, policy: &RotationPolicy) -> Millis {
        self.published + millis(policy.activation_delay())
    }

    fn retire(&mut self, now: Millis, policy: &RotationPolicy) {
        self.state = KeyState::Retired;
        self.retired = Some(now);
        self.remove_after = Some(now + millis(policy.retention()));
    }
}

/// The manifest: every key the store has ever held, removed ones as tombstones so a
/// leftover file is never mistaken for a new key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version, 1.
    pub version: u32,
    /// The keys.
    pub keys: Vec<KeyRecord>,
}

/// What [`Manifest::maintenance`] decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Maintenance {
    /// Some retired key is past its time.
    pub sweep: bool,
    /// Algorithms with an active key and no next key: publish one.
    pub publish_next: Vec<SigningAlg>,
    /// Algorithms due for an automatic rotation.
    pub rotate: Vec<SigningAlg>,
}

impl Maintenance {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        !self.sweep && self.publish_next.is_empty() && self.rotate.is_empty()
    }

    /// The algorithms that need a freshly created key.
    pub fn needs_key(&self) -> Vec<SigningAlg> {
        self.publish_next
            .iter()
            .chain(&self.rotate)
            .copied()
            .collect()
    }
}

/// A refused or partial lifecycle step, explained (what to do next is the caller's to say).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LifecycleError {
    /// No active key to rotate away from.
    #[error("no active {0} key to rotate")]
    NoActiveKey(SigningAlg),
    /// No next key was published; one has been now.
    #[error(
        "no next {alg} key was published, so nothing could take over without breaking cached JWKS; published {kid} now, it may sign from {signs_from} (the JWKS max-age plus leeway)"
    )]
    PublishedNext {
        /// The algorithm.
        alg: SigningAlg,
        /// The key published now.
        kid: String,
        /// When it may sign (RFC 3339).
        signs_from: String,
    },
    /// The next key is too young.
    #[error(
        "next {alg} key {kid} has been published for {published_for} but may sign only after {wait} (the JWKS max-age plus leeway), at {signs_from}"
    )]
    NextTooYoung {
        /// The algorithm.
        alg: SigningAlg,
        /// The next key.
        kid: String,
        /// How long it has been published.
        published_for: String,
        /// The required wait.
        wait: String,
        /// When it may sign (RFC 3339).
        signs_from: String,
    },
    /// No such key.
    #[error("no published key {0}")]
    UnknownKid(String),
}

/// What a rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotated {
    /// The algorithm.
    pub alg: SigningAlg,
    /// The key that signs now.
    pub activated: String,
    /// The key that stopped signing.
    pub retired: String,
    /// When the retired key leaves the JWKS.
    pub retired_until: Millis,
    /// The next key published by the rotation, to sign at the one after.
    pub next: Option<String>,
}

impl Manifest {
    /// The manifest format this code reads and writes.
    pub const VERSION: u32 = 1;

    /// Parses a stored manifest and checks what the types cannot: the version, and at most
    /// one active key per algorithm.
    ///
    /// # Errors
    /// What is wrong, in one line.
    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        let manifest: Manifest = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if manifest.version != Self::VERSION {
            return Err(format!("unsupported version {}", manifest.version));
        }
        manifest.check()?;
        Ok(manifest)
    }

    /// What every stored manifest must hold, whatever stores it: kids that are RFC 7638
    /// thumbprints, and at most one active key per algorithm.
    ///
    /// # Errors
    /// What is wrong, in one line.
    pub fn check(&self) -> Result<(), String> {
        let manifest = self;
        // Kids name files: only an RFC 7638 thumbprint (43 base64url characters) is one,
        // so no entry can point outside the store ("../victim").
        if let Some(bad) = manifest.keys.iter().find(|k| !is_thumbprint(&k.kid)) {
            return Err(format!(
                "kid {:?} is not an RFC 7638 thumbprint",
                bad.kid.chars().take(64).collect::<String>()
            ));
        }
        for alg in SigningAlg::ASYMMETRIC {
            let active = manifest
                .keys
                .iter()
                .filter(|k| k.alg == alg && k.state == KeyState::Active)
                .count();
            if active > 1 {
                return Err(format!("more than one active {alg} key"));
            }
        }
        Ok(())
    }

    /// The stored form: pretty JSON with a final newline, at [`Manifest::VERSION`].
    pub fn to_json(&self) -> Vec<u8> {
        let mut json = serde_json::to_vec_pretty(&Manifest {
            version: Self::VERSION,
            keys: self.keys.clone(),
        })
        // Strings, numbers and enums always serialize.
        .unwrap_or_default();
        json.push(b'\n');
        json
    }

    /// The active key of `alg`.
    pub fn active(&self, alg: SigningAlg) -> Option<&KeyRecord> {
        self.keys
            .iter()
            .find(|k| k.alg == alg && k.state == KeyState::Active)
    }

    /// The oldest next key of `alg`.
    pub fn oldest_next(&self, alg: SigningAlg) -> Option<&KeyRecord> {
        self.keys
            .iter()
            .filter(|k| k.alg == alg && k.state == KeyState::Next)
            .min_by_key(|k| (k.published, k.kid.clone()))
    }

    /// A record by kid.
    pub fn get(&self, kid: &str) -> Option<&KeyRecord> {
        self.keys.iter().find(|k| k.kid == kid)
    }

    /// Adds a key: active when it is the first of its algorithm, next otherwise.
    pub fn add(&mut self, kid: String, alg: SigningAlg, now: Millis) -> KeyState {
        let state = if self.active(alg).is_some() {
            KeyState::Next
        } else {
            KeyState::Active
        };
        self.keys.push(KeyRecord::new(kid, alg, state, now));
        state
    }

    /// Promotes the oldest next key of `alg` to active and retires the active one. Without
    /// `force`, the next key must have been published for the activation delay.
    /// `new_next` is the kid of a freshly generated key to publish as next (it was
    /// written to disk by the caller); without one and without a next key, the step
    /// only publishes it.
    ///
    /// # Errors
    /// [`LifecycleError`] explaining what to do; the manifest may then hold a newly
    /// published next key (the caller writes it either way).
    pub fn rotate(
        &mut self,
        alg: SigningAlg,
        now: Millis,
        force: bool,
        new_next: String,
        policy: &RotationPolicy,
    ) -> Result<Rotated, LifecycleError> {
        let active = self
            .active(alg)
            .ok_or(LifecycleError::NoActiveKey(alg))?
            .kid
            .clone();
        let candidate = match self.oldest_next(alg) {
            Some(next) => next.clone(),
            None if force => {
                // Nothing pre-published: the new key signs at once.
                self.keys
                    .push(KeyRecord::new(new_next, alg, KeyState::Next, now));
                return self.rotate(alg, now, true, String::new(), policy);
            }
            None => {
                let record = KeyRecord::new(new_next.clone(), alg, KeyState::Next, now);
                let signs_from = rfc3339::format(record.signs_from(policy));
                self.keys.push(record);
                return Err(LifecycleError::PublishedNext {
                    alg,
                    kid: new_next,
                    signs_from,
                });
            }
        };
        let signs_from = candidate.signs_from(policy);
        if !force && now < signs_from {
            return Err(LifecycleError::NextTooYoung {
                alg,
                kid: candidate.kid,
                published_for: human(now.saturating_sub(candidate.published)),
                wait: human(millis(policy.activation_delay())),
                signs_from: rfc3339::format(signs_from),
            });
        }
        for key in &mut self.keys {
            if key.kid == active {
                key.retire(now, policy);
            } else if key.kid == candidate.kid {
                key.state = KeyState::Active;
                key.activated = Some(now);
            }
        }
        let next = (!new_next.is_empty()).then(|| {
            self.keys
                .push(KeyRecord::new(new_next.clone(), alg, KeyState::Next, now));
            new_next
        });
        Ok(Rotated {
            alg,
            activated: candidate.kid,
            retired: active,
            retired_until: now + millis(policy.retention()),
            next,
        })
    }

    /// Rotates several algorithms as one step: all of them, or none. `fresh` holds, per
    /// algorithm, the kids of freshly created keys: the first becomes the next key; with
    /// `force` and no next key, the second signs at once. Rotating all or none keeps the
    /// algorithms' keys in step, so one command rotates every algorithm each time.
    ///
    /// # Errors
    /// Every algorithm's refusal; the manifest then holds only the next keys published
    /// for algorithms that had none.
    pub fn rotate_all(
        &mut self,
        fresh: &[(SigningAlg, Vec<String>)],
        now: Millis,
        force: bool,
        policy: &RotationPolicy,
    ) -> Result<Vec<Rotated>, Vec<LifecycleError>> {
        let mut trial = self.clone();
        let mut rotated = Vec::new();
        let mut refused = Vec::new();
        for (alg, kids) in fresh {
            let Some(first) = kids.first() else {
                continue;
            };
            if let Some(signs_now) = kids.get(1)
                && force
                && trial.oldest_next(*alg).is_none()
            {
                trial
                    .keys
                    .push(KeyRecord::new(signs_now.clone(), *alg, KeyState::Next, now));
            }
            match trial.rotate(*alg, now, force, first.clone(), policy) {
                Ok(r) => rotated.push(r),
                Err(e) => refused.push(e),
            }
        }
        if refused.is_empty() {
            *self = trial;
            return Ok(rotated);
        }
        // Nothing rotates, but algorithms without a next key get one now, so the next
        // attempt can succeed for all of them.
        for e in &refused {
            if let LifecycleError::PublishedNext { alg, kid, .. } = e {
                self.keys
                    .push(KeyRecord::new(kid.clone(), *alg, KeyState::Next, now));
            }
        }
        Err(refused)
    }

    /// Revokes a key: it leaves the JWKS at once. A revoked active key is replaced by the
    /// oldest next key, or by `replacement` (a fresh key the caller wrote) when there is
    /// none. Returns the kid that signs for the algorithm now, if it changed.
    ///
    /// # Errors
    /// [`LifecycleError::UnknownKid`].
    pub fn revoke(
        &mut self,
        kid: &str,
        now: Millis,
        replacement: Option<String>,
    ) -> Result<Option<String>, LifecycleError> {
        let record = self
            .keys
            .iter()
            .find(|k| k.kid == kid && k.is_published(now))
            .ok_or_else(|| LifecycleError::UnknownKid(kid.to_owned()))?
            .clone();
        let mut new_active = None;
        if record.state == KeyState::Active {
            let successor = match (self.oldest_next(record.alg), replacement) {
                (Some(next), _) => Some(next.kid.clone()),
                (None, Some(replacement)) => {
                    self.keys.push(KeyRecord::new(
                        replacement.clone(),
                        record.alg,
                        KeyState::Next,
                        now,
                    ));
                    Some(replacement)
                }
                // No key could be made: the algorithm has no signing key until one is
                // generated (its tokens are refused), which beats signing with this one.
                (None, None) => None,
            };
            for key in &mut self.keys {
                if Some(&key.kid) == successor.as_ref() {
                    key.state = KeyState::Active;
                    key.activated = Some(now);
                }
            }
            new_active = successor;
        }
        for key in &mut self.keys {
            if key.kid == kid {
                key.state = KeyState::Revoked;
                key.removed = Some(now);
            }
        }
        Ok(new_active)
    }

    /// Marks retired keys past their time as removed; returns their kids.
    pub fn sweep(&mut self, now: Millis) -> Vec<String> {
        let mut removed = Vec::new();
        for key in &mut self.keys {
            if key.state == KeyState::Retired && !key.is_published(now) {
                key.state = KeyState::Removed;
                key.removed = Some(now);
                removed.push(key.kid.clone());
            }
        }
        removed
    }

    /// What the periodic duties of a server must do at `now`: remove retired keys past
    /// their time and, with `rotate_every`, publish missing next keys and rotate the
    /// algorithms that are due (the active key has signed for `every` and a next key is
    /// old enough). A pure decision: [`Manifest::apply_maintenance`] carries it out.
    pub fn maintenance(
        &self,
        now: Millis,
        rotate_every: Option<Duration>,
        policy: &RotationPolicy,
    ) -> Maintenance {
        let sweep = self
            .keys
            .iter()
            .any(|k| k.state == KeyState::Retired && !k.is_published(now));
        let Some(every) = rotate_every else {
            return Maintenance {
                sweep,
                ..Maintenance::default()
            };
        };
        let mut publish_next = Vec::new();
        let mut rotate = Vec::new();
        for alg in SigningAlg::ASYMMETRIC {
            let Some(active) = self.active(alg) else {
                continue;
            };
            match self.oldest_next(alg) {
                None => publish_next.push(alg),
                Some(next) => {
                    let since = active.activated.unwrap_or(active.published);
                    if now >= since + millis(every) && now >= next.signs_from(policy) {
                        rotate.push(alg);
                    }
                }
            }
        }
        Maintenance {
            sweep,
            publish_next,
            rotate,
        }
    }

    /// Carries out [`Manifest::maintenance`] as decided at `now` on this manifest, with
    /// `fresh` keys (alg, kid) for the algorithms that need one; a fresh key whose
    /// algorithm needs none is left out. Returns what was done, for the log.
    pub fn apply_maintenance(
        &mut self,
        now: Millis,
        rotate_every: Option<Duration>,
        policy: &RotationPolicy,
        fresh: &[(SigningAlg, String)],
    ) -> Vec<String> {
        let plan = self.maintenance(now, rotate_every, policy);
        let mut done: Vec<String> = self
            .sweep(now)
            .into_iter()
            .map(|kid| format!("removed retired key {kid}"))
            .collect();
        for (alg, kid) in fresh {
            if plan.publish_next.contains(alg) {
                self.keys
                    .push(KeyRecord::new(kid.clone(), *alg, KeyState::Next, now));
                done.push(format!("published next {alg} key {kid}"));
            } else if plan.rotate.contains(alg) {
                match self.rotate(*alg, now, false, kid.clone(), policy) {
                    Ok(r) => done.push(format!(
                        "rotated {alg}: {} signs, {} retired, next {kid}",
                        r.activated, r.retired
                    )),
                    Err(e) => done.push(format!("rotation of {alg} skipped: {e}")),
                }
            }
        }
        done
    }

    /// The next time the published set changes by itself (a retired key leaving), or an
    /// automatic rotation publishes a key.
    pub fn next_change(&self, now: Millis, rotate_every: Option<Duration>) -> Option<Millis> {
        let removals = self
            .keys
            .iter()
            .filter(|k| k.state == KeyState::Retired)
            .filter_map(|k| k.remove_after)
            .filter(|&t| t > now);
        let rotations = rotate_every.into_iter().flat_map(|every| {
            SigningAlg::ASYMMETRIC.into_iter().filter_map(move |alg| {
                self.active(alg)
                    .map(|a| a.activated.unwrap_or(a.published) + millis(every))
            })
        });
        let rotations = rotations.filter(|&t| t > now);
        removals.chain(rotations).min()
    }
}

/// Whether `kid` has the form of an RFC 7638 SHA-256 thumbprint: 43 base64url characters.
pub fn is_thumbprint(kid: &str) -> bool {
    kid.len() == 43
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A duration in milliseconds.
pub fn millis(d: Duration) -> Millis {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn human(ms: Millis) -> String {
    humantime::format_duration(Duration::from_secs(ms / 1000)).to_string()
}

/// RFC 3339 timestamps with milliseconds, UTC.
pub mod rfc3339 {
    use std::time::{Duration, UNIX_EPOCH};

    use serde::{Deserialize, Deserializer, Serializer};

    use super::Millis;

    /// Formats milliseconds since the epoch.
    pub fn format(ms: Millis) -> String {
        humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
    }

    /// Parses an RFC 3339 timestamp.
    ///
    /// # Errors
    /// When it is not one.
    pub fn parse(s: &str) -> Result<Millis, String> {
        let t = humantime::parse_rfc3339_weak(s).map_err(|e| e.to_string())?;
        let d = t.duration_since(UNIX_EPOCH).map_err(|e| e.to_string())?;
        Ok(super::millis(d))
    }

    pub(crate) fn serialize<S: Serializer>(ms: &Millis, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*ms))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Millis, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map_err(serde::de::Error::custom)
    }
}

mod rfc3339_opt {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::{Millis, rfc3339};

    pub(crate) fn serialize<S: Serializer>(ms: &Option<Millis>, s: S) -> Result<S::Ok, S::Error> {
        match ms {
            Some(ms) => s.serialize_str(&rfc3339::format(*ms)),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Millis>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| rfc3339::parse(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Millis = 1000;

    fn policy() -> RotationPolicy {
        RotationPolicy {
            jwks_max_age: Duration::from_secs(300),
            max_token_ttl: Duration::from_secs(3600),
            leeway: Duration::from_secs(60),
        }
    }

    fn store() -> Manifest {
        let mut m = Manifest {
            version: 1,
            keys: vec![],
        };
        assert_eq!(m.add("a1".into(), SigningAlg::Es256, 0), KeyState::Active);
        m
    }

    #[test]
    fn first_key_of_an_algorithm_is_active_later_ones_are_next() {
        let mut m = store();
        assert_eq!(m.add("a2".into(), SigningAlg::Es256, S), KeyState::Next);
        assert_eq!(m.add("r1".into(), SigningAlg::Rs256, S), KeyState::Active);
    }

    #[test]
    fn rotation_waits_for_the_activation_delay() {
        let p = policy();
        let mut m = store();
        // No next key: one is published, nothing is promoted.
        let err = m
            .rotate(SigningAlg::Es256, 10 * S, false, "n1".into(), &p)
            .unwrap_err();
        assert!(matches!(err, LifecycleError::PublishedNext { .. }), "{err}");
        assert_eq!(m.active(SigningAlg::Es256).unwrap().kid, "a1");
        assert_eq!(m.oldest_next(SigningAlg::Es256).unwrap().kid, "n1");
        // Too young: refused with the time it may sign.
        let err = m
            .rotate(SigningAlg::Es256, 100 * S, false, "n2".into(), &p)
            .unwrap_err();
        assert!(matches!(err, LifecycleError::NextTooYoung { .. }), "{err}");
        assert!(
            m.get("n2").is_none(),
            "a refused rotation publishes nothing more"
        );
        // Old enough: promoted; the old key retires for ttl + max-age + leeway.
        let at = 10 * S + millis(p.activation_delay());
        let done = m
            .rotate(SigningAlg::Es256, at, false, "n2".into(), &p)
            .unwrap();
        assert_eq!(
            (done.activated.as_str(), done.retired.as_str()),
            ("n1", "a1")
        );
        let old = m.get("a1").unwrap();
        assert_eq!(old.state, KeyState::Retired);
        assert_eq!(old.remove_after, Some(at + (3600 + 300 + 60) * S));
        assert_eq!(m.get("n2").unwrap().state, KeyState::Next);
    }

    #[test]
    fn forced_rotation_switches_at_once_and_keeps_the_old_key_published() {
        let p = policy();
        let mut m = store();
        let done = m
            .rotate(SigningAlg::Es256, 5 * S, true, "n1".into(), &p)
            .unwrap();
        assert_eq!(done.activated, "n1");
        assert!(m.get("a1").unwrap().is_published(5 * S));
        assert_eq!(m.get("a1").unwrap().state, KeyState::Retired);
    }

    #[test]
    fn retired_keys_leave_after_their_time_and_revoked_at_once() {
        let p = policy();
        let mut m = store();
        m.rotate(SigningAlg::Es256, 0, true, "n1".into(), &p)
            .unwrap();
        let until = m.get("a1").unwrap().remove_after.unwrap();
        assert_eq!(m.next_change(0, None), Some(until));
        assert!(m.sweep(until - 1).is_empty());
        assert_eq!(m.sweep(until), ["a1"]);
        assert!(!m.get("a1").unwrap().is_published(until));

        let successor = m.revoke("n1", until, Some("fresh".into())).unwrap();
        assert_eq!(successor.as_deref(), Some("fresh"));
        assert_eq!(m.get("n1").unwrap().state, KeyState::Revoked);
        assert_eq!(m.active(SigningAlg::Es256).unwrap().kid, "fresh");
        assert!(
            m.revoke("n1", until, Some("x".into())).is_err(),
            "revoked twice"
        );
    }

    #[test]
    fn automatic_rotation_is_due_after_the_period_with_a_ready_next_key() {
        let p = policy();
        let mut m = store();
        let every = Duration::from_secs(86_400);
        let plan = m.maintenance(0, Some(every), &p);
        assert_eq!(plan.publish_next, [SigningAlg::Es256]);
        assert!(
            m.maintenance(0, None, &p).is_empty(),
            "manual rotation only"
        );
        m.add("n1".into(), SigningAlg::Es256, 0);
        assert!(m.maintenance(86_399 * S, Some(every), &p).is_empty());
        assert_eq!(
            m.maintenance(86_400 * S, Some(every), &p).rotate,
            [SigningAlg::Es256]
        );
        assert_eq!(m.next_change(0, Some(every)), Some(86_400 * S));
    }

    #[test]
    fn maintenance_rotates_with_the_fresh_key_and_sweeps_retired_ones() {
        let p = policy();
        let mut m = store();
        let every = Duration::from_secs(86_400);
        m.add("n1".into(), SigningAlg::Es256, 0);
        let at = 86_400 * S;
        let plan = m.maintenance(at, Some(every), &p);
        assert_eq!(plan.needs_key(), [SigningAlg::Es256]);
        let done = m.apply_maintenance(
            at,
            Some(every),
            &p,
            &[
                (SigningAlg::Es256, "n2".into()),
                (SigningAlg::Rs256, "unused".into()),
            ],
        );
        assert_eq!(done.len(), 1, "{done:?}");
        assert_eq!(m.active(SigningAlg::Es256).unwrap().kid, "n1");
        assert_eq!(m.oldest_next(SigningAlg::Es256).unwrap().kid, "n2");
        assert!(
            m.get("unused").is_none(),
            "a key nobody needs is not recorded"
        );
        let gone = m.get("a1").unwrap().remove_after.unwrap();
        assert!(m.maintenance(gone, None, &p).sweep);
        let done = m.apply_maintenance(gone, None, &p, &[]);
        assert_eq!(done, ["removed retired key a1"]);
        assert!(m.maintenance(gone, None, &p).is_empty());
    }

    #[test]
    fn stored_manifests_are_checked_beyond_their_types() {
        let kid = |c: char| c.to_string().repeat(43);
        let mut m = Manifest::default();
        m.add(kid('a'), SigningAlg::Es256, 0);
        assert_eq!(Manifest::from_json(&m.to_json()).unwrap().keys, m.keys);
        m.keys.push(KeyRecord::new(
            kid('b'),
            SigningAlg::Es256,
            KeyState::Active,
            0,
        ));
        let err = Manifest::from_json(&m.to_json()).unwrap_err();
        assert!(err.contains("more than one active ES256"), "{err}");
        let err = Manifest::from_json(br#"{"version":2,"keys":[]}"#).unwrap_err();
        assert!(err.contains("unsupported version 2"), "{err}");
        // A kid names a file: anything but a thumbprint is refused, a path above all.
        for bad in [
            "../victim",
            "a1",
            &format!("{}/", kid('c')[..42].to_owned()),
        ] {
            let mut m = Manifest::default();
            m.add(bad.to_owned(), SigningAlg::Es256, 0);
            let err = Manifest::from_json(&m.to_json()).unwrap_err();
            assert!(err.contains("not an RFC 7638 thumbprint"), "{bad}: {err}");
        }
    }

    #[test]
    fn manifest_round_trips_with_readable_times() {
        let mut m = store();
        m.rotate(
            SigningAlg::Es256,
            1_795_656_514_123,
            true,
            "n1".into(),
            &policy(),
        )
        .unwrap();
        let json = serde_json::to_string(&m).unwrap();
        assert!(json.contains("2026-11-26T"), "{json}");
        assert_eq!(serde_json::from_str::<Manifest>(&json).unwrap(), m);
    }

    #[test]
    fn rotating_several_algorithms_is_all_or_none() {
        let p = policy();
        let mut m = store();
        m.add("r1".into(), SigningAlg::Rs256, 0);
        let fresh = |a: &str, r: &str| {
            vec![
                (SigningAlg::Es256, vec![a.to_owned()]),
                (SigningAlg::Rs256, vec![r.to_owned()]),
            ]
        };
        // No next keys: nothing rotates, each algorithm gets one.
        let err = m.rotate_all(&fresh("e1", "r2"), 0, false, &p).unwrap_err();
        assert_eq!(err.len(), 2);
        assert_eq!(m.oldest_next(SigningAlg::Es256).unwrap().kid, "e1");
        assert_eq!(m.oldest_next(SigningAlg::Rs256).unwrap().kid, "r2");
        // One ready, one too young: neither rotates, so they stay in step.
        let delay = millis(p.activation_delay());
        m.keys.iter_mut().find(|k| k.kid == "r2").unwrap().published = S;
        let err = m
            .rotate_all(&fresh("e2", "r3"), delay, false, &p)
            .unwrap_err();
        assert!(
            matches!(err[..], [LifecycleError::NextTooYoung { .. }]),
            "{err:?}"
        );
        assert_eq!(m.active(SigningAlg::Es256).unwrap().kid, "a1");
        assert!(m.get("e2").is_none() && m.get("r3").is_none());
        // Both ready: both rotate, each leaving a next key.
        let done = m
            .rotate_all(&fresh("e2", "r3"), delay + S, false, &p)
            .unwrap();
        assert_eq!(done.len(), 2);
        assert_eq!(m.active(SigningAlg::Es256).unwrap().kid, "e1");
        assert_eq!(m.active(SigningAlg::Rs256).unwrap().kid, "r2");
        assert_eq!(done[0].next.as_deref(), Some("e2"));
        // Forced without next keys: the second fresh key signs, the first is the next.
        let mut bare = store();
        let done = bare
            .rotate_all(
                &[(SigningAlg::Es256, vec!["n".into(), "now".into()])],
                0,
                true,
                &p,
            )
            .unwrap();
        assert_eq!(done[0].activated, "now");
        assert_eq!(bare.oldest_next(SigningAlg::Es256).unwrap().kid, "n");
    }
}
