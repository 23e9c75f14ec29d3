//! Strata's benchmark harness, shared by its four binaries:
//!
//! - `strata-bench` ([`runner`]): fio, buffered-I/O and small-file, metadata, tar, layer and
//!   memory-density workloads on ext4, kernel overlayfs, fuse-overlayfs and Strata, on the same
//!   disk, in the same run; results.json, results.md and SVG charts.
//! - `strata-layer-bench`: the engine's layer costs, without FUSE.
//! - `strata-ctr-bench`: containerd with Strata vs its overlayfs snapshotter.
//! - `strata-fair-bench` ([`fair`]): whether a noisy container can starve a quiet one's I/O,
//!   under each `--io-scheduler` setting and layer I/O limit.
//!
//! It measures; it asserts nothing about speed (tests live in `tests/`, not here).
//!
//! | module | what |
//! |---|---|
//! | [`suite`] | every step in run order (where a workload is registered), and what a step is |
//! | [`workloads`] | what a workload is (id, label, group, unit, goal), the sizes of a run |
//! | [`fio`], [`buffered`], [`smallfiles`], [`meta`], [`layers`], [`memory`] | the workloads, each with its steps |
//! | [`inputs`] | files and tars prepared once per run |
//! | [`systems`] | ext4, overlayfs, fuse-overlayfs and Strata: set up, containers, teardown |
//! | [`runner`] | the run: systems up, steps on each, teardown, report |
//! | [`results`] | samples per workload and system, medians, ratios to ext4, goals |
//! | [`report`] | results.json, results.md and the SVG charts |
//! | [`cli`] | `strata-bench`'s command line |
//! | [`fair`] | `strata-fair-bench`'s scenarios, results.md, results.json and chart |
//! | [`process`], [`mounts`], [`host`], [`interrupt`], [`progress`], [`rng`], [`fmt`] | helpers: child processes with deadlines, the mount table, the host, Ctrl-C, log lines, test data, numbers |

pub mod buffered;
pub mod cli;
pub mod fair;
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
pub mod smallfiles;
pub mod suite;
pub mod systems;
pub mod workloads;

/// Errors are messages for the log and the report: every step says what it was doing.
pub type Res<T> = Result<T, String>;
