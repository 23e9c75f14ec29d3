//! # strata-engine
//!
//! The Strata file system itself, without FUSE, HTTP or gRPC (`fusefront` and `control` adapt
//! it to those). Nothing in here panics on bad input; every failure is an [`Error`].
//!
//! A request goes one way through these modules, never back up:
//!
//! - [`Engine`] (`engine.rs`): what an open file system holds; open (recovery) and shutdown.
//! - The operations: `namespace.rs` (lookup, create, link, unlink, rename, readdir,
//!   attributes, xattrs, statfs), `data.rs` (read, write with copy-on-write, fallocate,
//!   copy_file_range, SEEK_DATA/HOLE), `layer_ops.rs` (create, clone, commit, snapshot, remove),
//!   `commit.rs` (fsync, group commit, the commit thread), `checkpoint.rs`,
//!   `kernel_cache.rs` (what the kernel page cache may hold; flushing it).
//!   Metadata changes go through a `Txn` (`txn.rs`) that applies journal records.
//! - The data model: [`meta`] (inodes, extents with ownership tags, directories, journal
//!   records), [`layer`] (layers and their checkpoint encoding), `node.rs` (node ids).
//! - On disk: [`format`] (superblock, documented in `engine/docs/format.md`), [`journal`]
//!   (chunk and checkpoint-block framing), `mkfs.rs`, `recovery.rs` (superblock, checkpoint,
//!   journal replay), [`fsck`], `migrate.rs` (version 1 images to the current format).
//! - Below: `alloc.rs` (free space), `cache.rs` (the block cache shared by every layer),
//!   `inflight.rs` (data writes the device has not finished), `ring.rs` (io_uring
//!   threads), `local_io.rs` (device reads on a caller's own io_uring), `device.rs` (O_DIRECT file or block device, aligned
//!   buffers, fault injection), `poison.rs` (read-only after a failed write).
//! - Beside: [`stats`] (per-layer and daemon statistics), [`diff`] (what a layer changed,
//!   for OCI export).
#![deny(clippy::undocumented_unsafe_blocks)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod alloc;
mod api;
mod cache;
mod checkpoint;
mod commit;
mod data;
mod device;
mod engine;
mod error;
mod inflight;
mod kernel_cache;
mod layer_ops;
mod limits;
mod local_io;
mod migrate;
mod mkfs;
mod namespace;
mod node;
mod poison;
mod recovery;
pub mod repair;
mod ring;
mod sched;
pub mod scrub;
mod txn;

// The data model and the on-disk structures: public because `Engine::with_layers` hands out
// `Layers`, and the fuzz targets decode journal chunks, checkpoints and superblocks directly.
pub mod codec;
pub mod crc;
mod crc_fold;
pub mod format;
pub mod journal;
pub mod layer;
pub mod meta;
pub mod poll;

pub mod diff;
pub mod fsck;
pub mod stats;

pub use api::{
    Caller, Cb, Counters, DirEntry, KillPriv, Options, ReadCb, SetAttr, Stat, StatFs, WriteTimes,
};
pub use data::MAX_FILE_SIZE;
pub use device::{prepare_image, AlignedBuf, Device, FaultOp, FileDevice, MemDevice, ReadDest};
pub use engine::{Engine, GrowReport, LayerListener};
pub use error::{Error, Result};
pub use format::{Time, BLOCK, BLOCK_SIZE, MIN_DEVICE_SIZE};
pub use kernel_cache::{CacheMode, KernelFlush, WRITEBACK_RESERVE};
pub use layer_ops::LayerInfo;
pub use limits::{
    Limits, DEFAULT_WEIGHT, IO_WEIGHT, LIMIT_BPS, LIMIT_BYTES, LIMIT_INODES, LIMIT_IOPS,
};
pub use local_io::{set_local_io, DeviceIo, LocalIo};
pub use meta::{Attr, Ino, LayerState, Name, Slot};
pub use migrate::{migrate, MigrateReport};
pub use mkfs::{mkfs, DEFAULT_LAYER};
pub use namespace::Atime;
pub use node::{node_of, split, Node, MOUNT_ROOT};
pub use recovery::{load, read_superblock, Loaded};
pub use sched::Policy as IoPolicy;
