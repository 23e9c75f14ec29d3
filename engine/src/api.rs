//! What callers pass to the engine and get back: open options, attributes, directory
//! entries, statfs, the whole-daemon counters and the completion callback types.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use crate::error::Result;
use crate::format::Time;
use crate::meta::{Attr, Ino, Name};

/// Options for opening an engine.
#[derive(Clone, Debug)]
pub struct Options {
    /// Block cache size in bytes.
    pub cache_bytes: u64,
    /// Interval of the background journal commit.
    pub commit_interval: Duration,
    /// Keep per-layer statistics and latency histograms (see [`crate::stats`]).
    pub stats: bool,
    /// Data writes are answered before the device finishes them while fewer than this many
    /// bytes wait for it (fsync still waits for all of them); past it, a write is answered
    /// when its data is on the device.
    pub write_buffer_bytes: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            cache_bytes: 256 << 20,
            commit_interval: Duration::from_secs(1),
            stats: true,
            write_buffer_bytes: 64 << 20,
        }
    }
}

/// What getattr and friends return.
#[derive(Clone, Copy, Debug)]
pub struct Stat {
    pub ino: Ino,
    pub attr: Attr,
    /// 512-byte sectors allocated.
    pub blocks: u64,
}

/// Attribute changes for setattr. `None` leaves a field alone.
#[derive(Clone, Copy, Debug, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<Time>,
    pub mtime: Option<Time>,
    pub ctime: Option<Time>,
    /// Clear set-user-id and set-group-id (as a write by an unprivileged user does).
    pub kill_suidgid: bool,
}

/// Who is asking (for ownership of new files).
#[derive(Clone, Copy, Debug, Default)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

#[derive(Clone, Debug)]
pub struct DirEntry {
    pub name: Name,
    pub ino: Ino,
    pub kind: u32,
    /// Cookie to resume after this entry.
    pub offset: u64,
}

#[derive(Clone, Copy, Debug)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
}

/// Counters for the metrics endpoint.
#[derive(Default)]
pub struct Counters {
    pub read_ops: AtomicU64,
    pub read_bytes: AtomicU64,
    pub write_ops: AtomicU64,
    pub write_bytes: AtomicU64,
    pub journal_commits: AtomicU64,
    pub journal_bytes: AtomicU64,
    pub checkpoints: AtomicU64,
    pub checkpoint_nanos: AtomicU64,
    pub io_errors: AtomicU64,
    /// Inherited blocks replaced by copy-on-write.
    pub cow_blocks: AtomicU64,
}
/// Completion of an operation that finishes on an I/O thread.
pub type Cb<T> = Box<dyn FnOnce(Result<T>) + Send>;
/// Completion of a read: the bytes, borrowed from the I/O buffer.
pub type ReadCb = Box<dyn FnOnce(Result<&[u8]>) + Send>;
