//! One line for an error and its causes, for logs and answers that must say why.

use std::error::Error;
use std::fmt;

/// Displays an error followed by each of its sources, joined by `": "`; the library's
/// error messages never repeat their source, so nothing is printed twice.
///
/// ```
/// use jwt_issuer::report::Report;
/// let err = std::io::Error::other("disk on fire");
/// assert_eq!(Report(&err).to_string(), "disk on fire");
/// ```
pub struct Report<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}
