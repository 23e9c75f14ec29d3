//! Ctrl-C and friends: SIGINT, SIGTERM and SIGHUP only set a flag that long steps check, so
//! that the run stops at the next check and the Drop guards unmount and delete everything.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::Res;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_sig: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// SIGINT/SIGTERM/SIGHUP only set a flag: the run stops at the next check and the Drop guards
/// unmount and delete everything. Children run in their own process groups, so a Ctrl-C in the
/// terminal reaches only us, and we decide how to stop them.
pub fn install_signal_handlers() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(sig, handler);
        }
    }
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

pub fn check_interrupted() -> Res<()> {
    if interrupted() {
        Err("interrupted".into())
    } else {
        Ok(())
    }
}
