//! The one way this crate takes a `Mutex`.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `mutex`, taking over a lock poisoned by a panic: every critical section here is a
/// few operations on plain data (maps, counters, handles, a buffer) that a panic elsewhere
/// cannot leave half-changed, and a service must not stop serving for it.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
