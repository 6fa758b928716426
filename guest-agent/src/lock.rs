//! A mutex lock that survives a panicked holder: the agent's tables stay usable.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, taking over the data if a holder panicked.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
