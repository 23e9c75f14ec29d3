//! # strata-engine
//!
//! The Strata file system itself: on-disk format ([`format`], documented in
//! `engine/docs/format.md`), device I/O through an io_uring ring over an O_DIRECT file
//! descriptor ([`device`], [`ring`]), in-memory metadata in persistent maps ([`meta`]), the
//! journal and checkpoints that make it durable ([`journal`], [`fs`]), the block cache
//! ([`cache`]) and the checker ([`fsck`]).
//!
//! It is not a FUSE server, an HTTP server or a gRPC server: `fusefront` and `control` adapt
//! it to those. Nothing in here panics on bad input; every failure is an [`Error`].
#![deny(clippy::undocumented_unsafe_blocks)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod alloc;
pub mod cache;
pub mod codec;
pub mod device;
pub mod diff;
pub mod error;
pub mod format;
pub mod fs;
pub mod fsck;
pub mod journal;
pub mod layer;
pub mod meta;
pub mod ring;
pub mod stats;
pub mod sys;

pub use device::{Device, FaultOp, FileDevice, MemDevice};
pub use error::{Error, Result};
pub use format::Time;
pub use fs::{
    node_of, split, Caller, DirEntry, Engine, LayerInfo, Node, Options, SetAttr, Stat, StatFs,
    DEFAULT_LAYER, MOUNT_ROOT,
};
pub use meta::{Attr, Ino, LayerState, Name, Slot};
