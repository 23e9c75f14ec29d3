//! strata-bench: fio, metadata, layer and memory-density workloads against ext4, kernel
//! overlayfs, fuse-overlayfs and Strata, all on the same disk and measured in the same run;
//! writes raw fio JSON, results.json, results.md and SVG charts.
//!
//! Run as root (mounting, dropping caches). See `strata-bench --help`.

use std::process::ExitCode;

use bench::cli::Args;
use bench::{interrupt, runner};

fn main() -> ExitCode {
    let args = Args::from_env();
    interrupt::install_signal_handlers();
    match runner::run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("strata-bench: {e}");
            ExitCode::from(1)
        }
    }
}
