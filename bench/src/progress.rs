//! Progress lines on stderr, each with the seconds since the run started.

use std::sync::OnceLock;
use std::time::Instant;

static START: OnceLock<Instant> = OnceLock::new();

/// When the run started (the first call to this or to [`log`]).
pub fn start() -> Instant {
    *START.get_or_init(Instant::now)
}

pub fn log(msg: &str) {
    log_as("strata-bench", msg);
}

/// A progress line of another of the bench's programs.
pub fn log_as(program: &str, msg: &str) {
    let t = start().elapsed().as_secs_f64();
    eprintln!("{program} [{t:6.1} s]: {msg}");
}
