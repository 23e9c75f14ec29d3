//! Strata's benchmark harness, shared by its three binaries:
//!
//! - `strata-bench` ([`runner`]): fio, metadata, tar, layer and memory-density workloads on
//!   ext4, kernel overlayfs, fuse-overlayfs and Strata, on the same disk, in the same run;
//!   results.json, results.md and SVG charts.
//! - `strata-layer-bench`: the engine's layer costs, without FUSE.
//! - `strata-ctr-bench`: containerd with Strata vs its overlayfs snapshotter.
//!
//! It measures; it asserts nothing about speed (tests live in `tests/`, not here).

pub mod cli;
pub mod fio;
pub mod fmt;
pub mod host;
pub mod inputs;
pub mod interrupt;
pub mod layers;
pub mod memory;
pub mod meta;
pub mod mounts;
pub mod process;
pub mod progress;
pub mod report;
pub mod results;
pub mod rng;
pub mod runner;
pub mod suite;
pub mod systems;
pub mod workloads;

/// Errors are messages for the log and the report: every step says what it was doing.
pub type Res<T> = Result<T, String>;
