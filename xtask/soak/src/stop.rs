//! Ctrl-C (SIGINT) and SIGTERM end the soak in order: the handler only
//! sets a flag; every loop of the soak checks it ([`requested`], or sleeps
//! through [`sleep`]) and returns, so the guards remove the processes and
//! namespaces as on any other failure.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    STOP.store(true, Ordering::Relaxed);
}

/// Installs the handler for SIGINT and SIGTERM.
pub fn install() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe; the cast is how signal(2) takes a handler.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
}

/// Whether the soak was asked to stop.
pub fn requested() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// Sleeps `d` in short slices; false if a stop was requested meanwhile.
pub fn sleep(d: Duration) -> bool {
    let end = Instant::now() + d;
    while !requested() {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        std::thread::sleep(left.min(Duration::from_millis(20)));
    }
    false
}
