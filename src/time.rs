//! Wall-clock helpers shared by the key store and the signer.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch (0 for a clock set before 1970, which no token can use anyway).
pub(crate) fn unix_now() -> u64 {
    unix_seconds(SystemTime::now())
}

/// A time as whole seconds since the Unix epoch.
pub(crate) fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

/// A time as milliseconds since the Unix epoch.
#[cfg(feature = "issuer")]
pub(crate) fn unix_millis(t: SystemTime) -> u64 {
    u64::try_from(
        t.duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_millis(),
    )
    .unwrap_or(u64::MAX)
}

/// Now, in milliseconds since the Unix epoch.
#[cfg(feature = "issuer")]
pub(crate) fn now_ms() -> u64 {
    unix_millis(SystemTime::now())
}
