//! Token lifetimes: the one ceiling and the one range check that the signer, the
//! configuration, the client registry and the CLI share.

use std::time::Duration;

/// The longest lifetime any token may have, whatever the configuration (24 h). The
/// configured maximum (`max_token_ttl`) may only be shorter.
pub const TOKEN_TTL_CEILING: Duration = Duration::from_secs(24 * 3600);

/// A lifetime outside 1 s to the allowed maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "ttl {} is out of range: it must be between 1s and {}",
    humantime::format_duration(*.ttl),
    humantime::format_duration(*.max)
)]
pub struct TtlOutOfRange {
    /// The refused lifetime.
    pub ttl: Duration,
    /// The maximum that applied.
    pub max: Duration,
}

/// Checks that `ttl` is between 1 s and `max` (itself capped at [`TOKEN_TTL_CEILING`]).
///
/// ```
/// use std::time::Duration;
/// use jwt_issuer::ttl::{check_ttl, TOKEN_TTL_CEILING};
/// assert!(check_ttl(Duration::from_secs(900), TOKEN_TTL_CEILING).is_ok());
/// assert!(check_ttl(Duration::ZERO, TOKEN_TTL_CEILING).is_err());
/// ```
///
/// # Errors
/// [`TtlOutOfRange`].
pub fn check_ttl(ttl: Duration, max: Duration) -> Result<(), TtlOutOfRange> {
    let max = max.min(TOKEN_TTL_CEILING);
    if ttl < Duration::from_secs(1) || ttl > max {
        return Err(TtlOutOfRange { ttl, max });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configured_maximum_never_exceeds_the_ceiling() {
        let two_days = TOKEN_TTL_CEILING * 2;
        let err = check_ttl(two_days, two_days).unwrap_err();
        assert_eq!(err.max, TOKEN_TTL_CEILING);
        assert!(check_ttl(TOKEN_TTL_CEILING, TOKEN_TTL_CEILING).is_ok());
        let hour = Duration::from_secs(3600);
        assert!(check_ttl(hour + Duration::from_secs(1), hour).is_err());
        assert!(check_ttl(Duration::from_millis(999), hour).is_err());
    }
}
