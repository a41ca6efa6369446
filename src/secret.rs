//! Secret newtypes: redacted `Debug`, zeroized on drop, no `Display` or `Serialize`.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Bytes of entropy in a generated client secret (256 bits).
pub const CLIENT_SECRET_BYTES: usize = 32;

/// A client secret as presented or generated; only its hash is ever stored.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct ClientSecret(String);

impl ClientSecret {
    /// A new secret: 256 bits from the OS CSPRNG (through aws-lc's DRBG), base64url.
    pub fn generate() -> Self {
        let mut bytes = [0u8; CLIENT_SECRET_BYTES];
        // Only fails without any OS entropy source, where no key could exist either.
        if aws_lc_rs::rand::fill(&mut bytes).is_err() {
            unreachable!("no system randomness");
        }
        let secret = Self(URL_SAFE_NO_PAD.encode(bytes));
        bytes.zeroize();
        secret
    }

    /// Wraps a secret received from a client.
    pub fn new(secret: String) -> Self {
        Self(secret)
    }

    /// The secret itself: for hashing, and for printing once when it is created.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientSecret(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_carry_256_bits_and_never_print() {
        let a = ClientSecret::generate();
        let b = ClientSecret::generate();
        assert_eq!(a.expose_secret().len(), 43);
        assert_ne!(a.expose_secret(), b.expose_secret());
        assert_eq!(format!("{a:?}"), "ClientSecret(..)");
    }
}
