//! The latched read-only state. After a failed device write or flush the engine cannot know
//! what reached the device, so it refuses every later change and every fsync reports the
//! failure instead of pretending (redb's `PreviousIo`, fjall's poison). One place latches it,
//! logs it once, and answers whether it is set.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, Result};

#[derive(Default)]
pub(crate) struct Poison {
    latched: AtomicBool,
}

impl Poison {
    /// `Err(Poisoned)` once latched.
    pub(crate) fn check(&self) -> Result<()> {
        if self.is_set() {
            Err(Error::Poisoned)
        } else {
            Ok(())
        }
    }

    pub(crate) fn is_set(&self) -> bool {
        self.latched.load(Ordering::SeqCst)
    }

    /// Latch the state because of `e` (logged the first time only); returns `e`.
    pub(crate) fn latch(&self, e: Error) -> Error {
        if !self.latched.swap(true, Ordering::SeqCst) {
            log::error!("{e}; the file system is now read-only");
        }
        e
    }
}
