//! What every store (keys, clients) has in common, whatever holds it: the version token a
//! running server polls to see that something changed.

use std::fmt;

/// An opaque token that changes whenever a store's content changes: a file's (inode, size,
/// mtime) for the keys dir, a row version for a database. Equal tokens mean "nothing to
/// reload"; different ones mean "load again".
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StoreVersion(String);

impl StoreVersion {
    /// A version from any text that changes with the content.
    pub fn new(version: impl Into<String>) -> Self {
        Self(version.into())
    }
}

impl fmt::Display for StoreVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
