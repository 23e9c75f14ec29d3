//! Statistics: per layer (kept in an `Arc<LayerStats>` per layer slot, created when the layer
//! appears and dropped when it goes, so a removed layer's series disappear) and for the whole
//! daemon (device latency, checkpoints, journal commits).
//!
//! Everything on the I/O path is a relaxed atomic add: the handle of a layer is looked up once
//! per request (a read lock on a map that only layer creation and removal write), latency
//! histograms have fixed buckets (one add per bucket hit, one for the sum; the count is the sum
//! of the buckets). Nothing here allocates per sample, so memory does not grow between scrapes.
//! `control` turns these numbers into Prometheus text and JSON.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::RwLock;

use crate::api::ReadCb;
use crate::error::{Error, Result};
use crate::meta::Slot;
use crate::node::split;

/// Upper bounds (seconds) of the latency buckets of file operations and device I/O.
pub const LATENCY_BUCKETS: [f64; 18] = [
    0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005,
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
/// Upper bounds (seconds) of the checkpoint and journal commit duration buckets.
pub const SLOW_BUCKETS: [f64; 12] = [
    0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// A histogram with fixed buckets (Prometheus `le` semantics: a sample lands in the first
/// bucket whose bound is at least the sample).
pub struct Histogram {
    bounds: &'static [f64],
    bounds_ns: Box<[u64]>,
    /// Per-bucket counts (not cumulative); the last one is `+Inf`.
    counts: Box<[AtomicU64]>,
    sum_ns: AtomicU64,
}

/// A point-in-time copy of a [`Histogram`].
#[derive(Clone, Debug, Default)]
pub struct HistogramSnapshot {
    /// Bucket upper bounds in seconds (without `+Inf`).
    pub bounds: Vec<f64>,
    /// Cumulative counts, one per bound, then the `+Inf` bucket (= count).
    pub cumulative: Vec<u64>,
    pub sum_seconds: f64,
    pub count: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            bounds_ns: bounds.iter().map(|b| (b * 1e9).round() as u64).collect(),
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
        }
    }

    pub fn observe_ns(&self, ns: u64) {
        let i = self.bounds_ns.partition_point(|b| *b < ns);
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(ns, Relaxed);
    }

    pub fn observe_since(&self, t0: Instant) {
        self.observe_ns(t0.elapsed().as_nanos() as u64);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut acc = 0;
        let cumulative: Vec<u64> = self
            .counts
            .iter()
            .map(|c| {
                acc += c.load(Relaxed);
                acc
            })
            .collect();
        HistogramSnapshot {
            bounds: self.bounds.to_vec(),
            count: acc,
            cumulative,
            sum_seconds: self.sum_ns.load(Relaxed) as f64 / 1e9,
        }
    }
}

/// Metadata operations counted per kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetaOp {
    Create,
    Mkdir,
    Mknod,
    Symlink,
    Link,
    Unlink,
    Rmdir,
    Rename,
    Setattr,
    Setxattr,
    Removexattr,
    Fallocate,
}

impl MetaOp {
    pub const ALL: [MetaOp; 12] = [
        MetaOp::Create,
        MetaOp::Mkdir,
        MetaOp::Mknod,
        MetaOp::Symlink,
        MetaOp::Link,
        MetaOp::Unlink,
        MetaOp::Rmdir,
        MetaOp::Rename,
        MetaOp::Setattr,
        MetaOp::Setxattr,
        MetaOp::Removexattr,
        MetaOp::Fallocate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MetaOp::Create => "create",
            MetaOp::Mkdir => "mkdir",
            MetaOp::Mknod => "mknod",
            MetaOp::Symlink => "symlink",
            MetaOp::Link => "link",
            MetaOp::Unlink => "unlink",
            MetaOp::Rmdir => "rmdir",
            MetaOp::Rename => "rename",
            MetaOp::Setattr => "setattr",
            MetaOp::Setxattr => "setxattr",
            MetaOp::Removexattr => "removexattr",
            MetaOp::Fallocate => "fallocate",
        }
    }

    /// The kind of a `mknod` call by its mode.
    pub fn of_mode(mode: u32, symlink: bool) -> MetaOp {
        match mode & libc::S_IFMT {
            _ if symlink => MetaOp::Symlink,
            libc::S_IFREG => MetaOp::Create,
            libc::S_IFDIR => MetaOp::Mkdir,
            libc::S_IFLNK => MetaOp::Symlink,
            _ => MetaOp::Mknod,
        }
    }
}

/// Errno values counted individually; larger ones share the last slot.
pub const MAX_ERRNO: usize = 134;

/// The symbolic name of an errno value (`ENOENT`), or `E<number>`.
pub fn errno_name(e: usize) -> String {
    let n = match e as i32 {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::E2BIG => "E2BIG",
        libc::EBADF => "EBADF",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENODEV => "ENODEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::EMLINK => "EMLINK",
        libc::ERANGE => "ERANGE",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ENODATA => "ENODATA",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EUCLEAN => "EUCLEAN",
        libc::EDQUOT => "EDQUOT",
        libc::ENOSYS => "ENOSYS",
        libc::EAGAIN => "EAGAIN",
        libc::EINTR => "EINTR",
        _ => return format!("E{e}"),
    };
    n.to_string()
}

/// The statistics of one layer.
pub struct LayerStats {
    pub read_ops: AtomicU64,
    pub read_bytes: AtomicU64,
    pub write_ops: AtomicU64,
    pub write_bytes: AtomicU64,
    /// Inherited blocks replaced by copy-on-write in this layer.
    pub cow_blocks: AtomicU64,
    /// Blocks of this layer's reads served by the block cache / fetched from the device.
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    /// Reads and writes of this layer in flight (from the request to its reply).
    pub inflight: AtomicU64,
    pub meta_ops: [AtomicU64; MetaOp::ALL.len()],
    /// Failed operations by errno (index `MAX_ERRNO` collects the rest).
    pub errors: [AtomicU64; MAX_ERRNO + 1],
    pub read_latency: Histogram,
    pub write_latency: Histogram,
    pub meta_latency: Histogram,
    /// Time this layer's device requests waited in the I/O scheduler (fair queue, limits).
    pub io_queue_delay: Histogram,
    /// Time its device reads and writes spent in the device: from when the scheduler sent
    /// them to their completion (a read waits there behind the writes sent before it).
    pub io_device_read: Histogram,
    pub io_device_write: Histogram,
    /// Time its requests were held back by its IOPS or bandwidth limit.
    pub io_throttled_ns: AtomicU64,
    /// Data blocks its reads got from the device that did not match their checksum.
    pub checksum_errors: AtomicU64,
}

impl Default for LayerStats {
    fn default() -> Self {
        LayerStats {
            read_ops: AtomicU64::new(0),
            read_bytes: AtomicU64::new(0),
            write_ops: AtomicU64::new(0),
            write_bytes: AtomicU64::new(0),
            cow_blocks: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
            cache_misses: AtomicU64::new(0),
            inflight: AtomicU64::new(0),
            meta_ops: std::array::from_fn(|_| AtomicU64::new(0)),
            errors: std::array::from_fn(|_| AtomicU64::new(0)),
            read_latency: Histogram::new(&LATENCY_BUCKETS),
            write_latency: Histogram::new(&LATENCY_BUCKETS),
            meta_latency: Histogram::new(&LATENCY_BUCKETS),
            io_queue_delay: Histogram::new(&LATENCY_BUCKETS),
            io_device_read: Histogram::new(&LATENCY_BUCKETS),
            io_device_write: Histogram::new(&LATENCY_BUCKETS),
            io_throttled_ns: AtomicU64::new(0),
            checksum_errors: AtomicU64::new(0),
        }
    }
}

impl LayerStats {
    pub fn error(&self, errno: i32) {
        let i = (errno.max(0) as usize).min(MAX_ERRNO);
        self.errors[i].fetch_add(1, Relaxed);
    }

    /// Errors so far: (errno, count), non-zero only.
    pub fn errors(&self) -> Vec<(usize, u64)> {
        self.errors
            .iter()
            .enumerate()
            .map(|(i, c)| (i, c.load(Relaxed)))
            .filter(|(_, c)| *c > 0)
            .collect()
    }

    pub fn meta_ops(&self) -> Vec<(MetaOp, u64)> {
        MetaOp::ALL
            .iter()
            .map(|op| (*op, self.meta_ops[*op as usize].load(Relaxed)))
            .collect()
    }
}

/// Times one metadata operation of a layer (counted when made, timed until dropped).
pub struct MetaGuard(Option<(Arc<LayerStats>, Instant)>);

impl Drop for MetaGuard {
    fn drop(&mut self) {
        if let Some((l, t0)) = &self.0 {
            l.meta_latency.observe_since(*t0);
        }
    }
}

/// Slots are small unique integers: hash them as themselves (SipHash would cost more than
/// the rest of the per-request accounting).
#[derive(Default)]
pub struct SlotHasher(u64);

impl std::hash::Hasher for SlotHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | *b as u64;
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = n as u64;
    }
}

type SlotMap<V> = HashMap<Slot, V, std::hash::BuildHasherDefault<SlotHasher>>;

/// Statistics of the whole engine.
pub struct Stats {
    enabled: bool,
    layers: RwLock<SlotMap<Arc<LayerStats>>>,
    pub device_read: Histogram,
    pub device_write: Histogram,
    pub checkpoint: Histogram,
    pub journal_commit: Histogram,
    /// Bytes referenced per layer (owned + inherited), recomputed at most every few seconds.
    pub(crate) referenced: parking_lot::Mutex<Option<(Instant, HashMap<Slot, u64>)>>,
    /// What the FUSE front reports about itself (see [`Stats::set_frontend`]).
    frontend: parking_lot::Mutex<Option<FrontendSource>>,
}

/// What the FUSE front says about itself: the transport requests travel on, and requests
/// received per opcode. The front owns these numbers; the engine only passes them on to
/// whoever renders statistics.
#[derive(Clone, Debug, Default)]
pub struct FrontendReport {
    pub transport: String,
    /// (opcode name, requests received).
    pub requests: Vec<(&'static str, u64)>,
    /// Requests the kernel sent again after a takeover (FUSE_NOTIFY_RESEND).
    pub resent: u64,
    /// This daemon took over a connection a previous daemon left held (live restart).
    pub taken_over: bool,
}

/// Produces a [`FrontendReport`] on demand.
pub type FrontendSource = Box<dyn Fn() -> FrontendReport + Send + Sync>;

impl Stats {
    pub fn new(enabled: bool) -> Stats {
        Stats {
            enabled,
            layers: RwLock::new(SlotMap::default()),
            device_read: Histogram::new(&LATENCY_BUCKETS),
            device_write: Histogram::new(&LATENCY_BUCKETS),
            checkpoint: Histogram::new(&SLOW_BUCKETS),
            journal_commit: Histogram::new(&SLOW_BUCKETS),
            referenced: parking_lot::Mutex::new(None),
            frontend: parking_lot::Mutex::new(None),
        }
    }

    /// Set where the FUSE front's report comes from (the mounted daemon's front end).
    pub fn set_frontend(&self, f: FrontendSource) {
        *self.frontend.lock() = Some(f);
    }

    /// The FUSE front's report, when a front end is mounted.
    pub fn frontend(&self) -> Option<FrontendReport> {
        self.frontend.lock().as_ref().map(|f| f())
    }

    /// Whether per-layer and latency statistics are kept (`--no-stats` turns them off).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The statistics of layer `slot`, if it exists and statistics are on.
    pub fn layer(&self, slot: Slot) -> Option<Arc<LayerStats>> {
        if !self.enabled || slot == 0 {
            return None;
        }
        self.layers.read().get(&slot).cloned()
    }

    /// Every layer's statistics, by slot.
    pub fn layers(&self) -> Vec<(Slot, Arc<LayerStats>)> {
        let mut v: Vec<_> = self
            .layers
            .read()
            .iter()
            .map(|(s, l)| (*s, l.clone()))
            .collect();
        v.sort_by_key(|x| x.0);
        v
    }

    /// Make the registry hold exactly the layers in `live`: new ones start at zero, removed
    /// ones are dropped (with them, their series).
    pub(crate) fn sync(&self, live: impl Iterator<Item = Slot>) {
        if !self.enabled {
            return;
        }
        *self.referenced.lock() = None;
        let mut m = self.layers.write();
        let keep: std::collections::HashSet<Slot> = live.collect();
        m.retain(|s, _| keep.contains(s));
        for s in keep {
            m.entry(s).or_default();
        }
    }

    /// Count and time a metadata operation on the layer of `node`.
    pub(crate) fn meta_op(&self, node: u64, op: MetaOp) -> MetaGuard {
        MetaGuard(self.layer(split(node).0).map(|l| {
            l.meta_ops[op as usize].fetch_add(1, Relaxed);
            (l, Instant::now())
        }))
    }

    pub(crate) fn error(&self, slot: Slot, errno: i32) {
        if let Some(l) = self.layer(slot) {
            l.error(errno);
        }
    }

    pub(crate) fn cow(&self, slot: Slot, blocks: u64) {
        if let Some(l) = self.layer(slot) {
            l.cow_blocks.fetch_add(blocks, Relaxed);
        }
    }

    /// Wrap the completion of a read of `node`: counts the op, the bytes returned, errors and
    /// the latency before the reply goes out.
    pub(crate) fn track_read(&self, node: u64, cb: ReadCb) -> (ReadCb, Option<Arc<LayerStats>>) {
        let Some(l) = self.layer(split(node).0) else {
            return (cb, None);
        };
        l.inflight.fetch_add(1, Relaxed);
        let t0 = Instant::now();
        let l2 = l.clone();
        let cb: ReadCb = Box::new(move |r: Result<&[u8]>| {
            match &r {
                Ok(d) => {
                    l2.read_ops.fetch_add(1, Relaxed);
                    l2.read_bytes.fetch_add(d.len() as u64, Relaxed);
                }
                Err(e) => l2.error(e.errno()),
            }
            l2.read_latency.observe_since(t0);
            l2.inflight.fetch_sub(1, Relaxed);
            cb(r)
        });
        (cb, Some(l))
    }

    /// Wrap the completion of a write to `node` (bytes counted as acknowledged). Errors other
    /// than device errors are counted where they arise (in the metadata transaction).
    #[allow(clippy::type_complexity)]
    pub(crate) fn track_write(
        &self,
        node: u64,
        cb: Box<dyn FnOnce(Result<u32>) + Send>,
    ) -> Box<dyn FnOnce(Result<u32>) + Send> {
        let Some(l) = self.layer(split(node).0) else {
            return cb;
        };
        l.inflight.fetch_add(1, Relaxed);
        let t0 = Instant::now();
        Box::new(move |r: Result<u32>| {
            match &r {
                Ok(n) => {
                    l.write_ops.fetch_add(1, Relaxed);
                    l.write_bytes.fetch_add(*n as u64, Relaxed);
                }
                Err(e @ Error::Io { .. }) => l.error(e.errno()),
                Err(_) => {}
            }
            l.write_latency.observe_since(t0);
            l.inflight.fetch_sub(1, Relaxed);
            cb(r)
        })
    }

    /// A start time for device latency, when statistics are on.
    pub(crate) fn device_start(&self) -> Option<Instant> {
        self.enabled.then(Instant::now)
    }

    pub(crate) fn device_done(&self, write: bool, t0: Option<Instant>) {
        if let Some(t0) = t0 {
            if write {
                self.device_write.observe_since(t0)
            } else {
                self.device_read.observe_since(t0)
            }
        }
    }

    /// Reads and writes in flight over all layers.
    pub fn inflight(&self) -> u64 {
        self.layers
            .read()
            .values()
            .map(|l| l.inflight.load(Relaxed))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets() {
        let h = Histogram::new(&LATENCY_BUCKETS);
        h.observe_ns(5_000); // exactly on the first bound
        h.observe_ns(5_001);
        h.observe_ns(10_000_000_000); // +Inf
        let s = h.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.cumulative[0], 1);
        assert_eq!(s.cumulative[1], 2);
        assert_eq!(s.cumulative[LATENCY_BUCKETS.len() - 1], 2);
        assert_eq!(*s.cumulative.last().unwrap(), 3);
        assert!((s.sum_seconds - 10.000_010_001).abs() < 1e-9);
    }

    #[test]
    fn registry_follows_layers() {
        let s = Stats::new(true);
        s.sync([1, 2].into_iter());
        assert!(s.layer(1).is_some() && s.layer(2).is_some());
        s.layer(2).unwrap().write_bytes.fetch_add(7, Relaxed);
        s.sync([2, 3].into_iter());
        assert!(s.layer(1).is_none());
        assert_eq!(s.layer(2).unwrap().write_bytes.load(Relaxed), 7);
        assert!(s.layer(3).is_some());
        assert!(s.layer(0).is_none());
        let off = Stats::new(false);
        off.sync([1].into_iter());
        assert!(off.layer(1).is_none());
    }
}
