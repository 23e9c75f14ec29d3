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
    /// How device I/O is shared between layers.
    pub io_policy: crate::sched::Policy,
    /// The kernel already knows this file system: a new daemon took over a FUSE connection
    /// a previous one served (live restart). Files unlinked while open are kept (the kernel
    /// may still hold them; it FORGETs them when it lets go), and which nodes the kernel
    /// holds, and how often, is unknown: a FORGET of a node this engine never handed out
    /// means the kernel dropped it.
    pub takeover: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            cache_bytes: 256 << 20,
            commit_interval: Duration::from_secs(1),
            stats: true,
            write_buffer_bytes: 64 << 20,
            io_policy: crate::sched::Policy::Fair,
            takeover: false,
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
    /// What the change clears besides (see [`KillPriv`]).
    pub kill: KillPriv,
}

/// What a write, truncate or chown through the mount clears, as the kernel's VFS does (with
/// FUSE_HANDLE_KILLPRIV_V2 the kernel leaves it to the file system): set-user-id, and
/// set-group-id when group execute is set; file capabilities (`security.capability`).
/// Engine-internal callers (the OCI importer) clear nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KillPriv {
    pub suid_sgid: bool,
    pub caps: bool,
}

impl KillPriv {
    /// Clear nothing.
    pub const NONE: KillPriv = KillPriv {
        suid_sgid: false,
        caps: false,
    };
}

/// Who keeps a file's mtime and ctime when it is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteTimes {
    /// The write sets them to now.
    Set,
    /// The kernel keeps them (its write-back cache): it sends them with a setattr of its own,
    /// which a page written back after it must not overwrite.
    Kernel,
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
    /// Of those, early chunks (written without a flush for `persist` callers).
    pub early_commits: AtomicU64,
    pub journal_bytes: AtomicU64,
    pub checkpoints: AtomicU64,
    pub checkpoint_nanos: AtomicU64,
    pub io_errors: AtomicU64,
    /// Inherited blocks replaced by copy-on-write.
    pub cow_blocks: AtomicU64,
    /// Data blocks read from the device that did not match their checksum.
    pub checksum_errors: AtomicU64,
    /// Data blocks the current or last online scrub checked.
    pub scrub_blocks: AtomicU64,
    /// Bad blocks online scrubs found.
    pub scrub_bad_blocks: AtomicU64,
}
/// Completion of an operation that finishes on an I/O thread.
pub type Cb<T> = Box<dyn FnOnce(Result<T>) + Send>;
/// Completion of a read: the bytes, borrowed from the I/O buffer.
pub type ReadCb = Box<dyn FnOnce(Result<&[u8]>) + Send>;
