//! Strata's test support, shared by the integration tests of the root package (`tests/`), the
//! engine (`engine/tests/`) and the control plane (`control/tests/`). It exists so that set-up
//! is written once: in-memory engines, write-log crash replay, the stable fuzz corpus driver
//! and one seeded random number generator.
//!
//! | module | what |
//! |---|---|
//! | [`rng`] | [`Rng`] (splitmix64), [`pattern`] bytes, [`hash`] (FNV-1a) |
//! | [`mem`] | in-memory engines: [`mkfs_mem`], [`open_mem`], [`mem_engine`], [`read_all`], [`resolve`] |
//! | [`replay`] | write-log crash replay (engine and OCI import replay tests) |
//! | [`fuzz`] | the fuzz targets' corpus and seeded mutations on the stable toolchain |

#![forbid(unsafe_code)]

pub mod fuzz;
pub mod mem;
pub mod replay;
pub mod rng;

pub use mem::{mem_engine, mkfs_mem, open_mem, read_all, resolve, with_cache};
pub use rng::{hash, pattern, Rng};
