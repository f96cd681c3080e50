//! The one way deckhand takes a `std::sync::Mutex`.
//!
//! A mutex is poisoned when a thread panicked while holding it. deckhand's
//! critical sections are short and never `.await`; nearly all are one read
//! or one update of a map, a set or a value, which a panic cannot leave
//! half done. The exception is the embedded memory store, which runs a
//! whole housekeeping call under its lock: a panic there is a failed
//! invariant of a store that serves demos and tests only. Carrying on keeps
//! one panicking task (logged where it happens) from taking every other
//! task that shares the lock down with it.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, ignoring poisoning (see the module doc for why that is safe).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_still_yields_its_value() {
        let m = std::sync::Arc::new(Mutex::new(7));
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let _guard = m2.lock().expect("not poisoned yet");
            panic!("poison it");
        })
        .join();
        assert!(m.is_poisoned());
        assert_eq!(*lock(&m), 7);
    }
}
