//! The engine object: what an open file system holds (metadata under one lock, the journal
//! position, the ring, the cache, the commit queue), opening (recovery, then the commit
//! thread) and clean shutdown, and the helpers every operation goes through (`change` for a
//! metadata transaction in one layer, `with_tree` for a read). The operations themselves live
//! in `namespace` (names and attributes), `data` (file contents), `layer_ops` (layers) and
//! `commit` (fsync, group commit, checkpoints).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::alloc::Allocator;
use crate::api::{Counters, Options};
use crate::cache::BlockCache;
use crate::checkpoint::CheckpointKind;
use crate::codec::Enc;
use crate::device::Device;
use crate::error::{errno, Error, Result};
use crate::format::{Superblock, Time, BLOCK, ROOT_INO};
use crate::inflight::Inflight;
use crate::kernel_cache::KernelFlush;
use crate::layer::Layers;
use crate::meta::*;
use crate::node::{split, Node};
use crate::poison::Poison;
use crate::recovery::load;
use crate::ring::Ring;
use crate::txn::Txn;

pub(crate) struct Meta {
    pub(crate) layers: Layers,
    pub(crate) alloc: Allocator,
    /// Encoded records not yet in the journal.
    pub(crate) pending: Enc,
    /// Nodes whose attributes changed without a record (mtime of in-place writes).
    pub(crate) dirty: HashSet<Node>,
    /// Kernel references (FUSE lookup counts) per inode: an unlinked inode lives until they are gone.
    pub(crate) refs: HashMap<Node, u64>,
    /// `refs` may lack references the kernel holds (the connection was taken over from a
    /// previous daemon, [`Options::takeover`]): an inode that loses its last link without
    /// a known reference is kept until the kernel forgets it.
    pub(crate) refs_unknown: bool,
    /// Which data-write epoch new allocating writes belong to.
    pub(crate) epoch: usize,
}

pub(crate) struct JournalPos {
    pub(crate) sb: Superblock,
    /// Next journal block to write and the sequence number it gets.
    pub(crate) pos: u64,
    pub(crate) seq: u64,
    /// Journal blocks written since the checkpoint.
    pub(crate) used: u64,
    /// Blocks of the current checkpoint (freed when the next one is durable).
    pub(crate) ckpt_blocks: Vec<u64>,
    /// The journal ends in early chunks (format.md, "Early chunks"): the next flushing
    /// commit writes an ordinary chunk after them even with no records, to vouch for them.
    pub(crate) early_tail: bool,
}

pub(crate) struct CommitQueue {
    pub(crate) waiters: Vec<Box<dyn FnOnce(Result<()>) + Send>>,
    /// Waiting for their records to be written, not flushed ([`Engine::persist`]).
    pub(crate) written: Vec<Box<dyn FnOnce(Result<()>) + Send>>,
    pub(crate) stop: bool,
    /// Commit now rather than at the interval: blocks waiting to be freed outnumber the free
    /// ones ([`Inner::commit_soon`]).
    pub(crate) soon: bool,
}

pub(crate) struct Inner {
    pub(crate) dev: Arc<dyn Device>,
    pub(crate) ring: Ring,
    pub(crate) cache: BlockCache,
    pub(crate) meta: Mutex<Meta>,
    pub(crate) jpos: Mutex<JournalPos>,
    pub(crate) fsid: u64,
    pub(crate) poison: Poison,
    /// Allocating data writes in flight per epoch; a commit waits for its epoch to drain.
    pub(crate) data_inflight: [AtomicU64; 2],
    pub(crate) data_cv: (Mutex<()>, Condvar),
    /// Data writes the device has not finished (readers are served from here).
    pub(crate) inflight: Inflight,
    pub(crate) commitq: Mutex<CommitQueue>,
    pub(crate) commit_cv: Condvar,
    /// Per-inode lock serialising changes of a file's block map.
    pub(crate) file_locks: Mutex<HashMap<Node, Arc<Mutex<()>>>>,
    pub(crate) opts: Options,
    pub(crate) counters: Counters,
    pub(crate) stats: crate::stats::Stats,
    /// When this engine started (times of the mount root).
    pub(crate) started: Time,
    /// Told the id of every layer that goes away (the FUSE front drops the kernel's entry).
    pub(crate) layer_listener: Mutex<Option<LayerListener>>,
    /// Writes the kernel's dirty pages back (see `kernel_cache`).
    pub(crate) kernel_flush: Mutex<Option<KernelFlush>>,
    /// The online scrub (`scrub.rs`).
    pub(crate) scrub: crate::scrub::Scrubber,
    /// One grow at a time.
    pub(crate) grow_lock: Mutex<()>,
}

/// Called with the id of a layer that was removed.
pub type LayerListener = Box<dyn Fn(&str) + Send + Sync>;

/// A mounted Strata file system.
pub struct Engine {
    pub(crate) inner: Arc<Inner>,
    pub(crate) commit_thread: Mutex<Option<JoinHandle<()>>>,
}

pub(crate) fn tree_of(m: &Meta, slot: Slot) -> Result<&Tree> {
    m.layers
        .get(slot)
        .map(|l| &l.tree)
        .ok_or(errno(libc::ENOENT))
}

impl Engine {
    /// Open (recover) a Strata file system on `dev`.
    pub fn open(dev: Arc<dyn Device>, opts: Options) -> Result<Arc<Engine>> {
        let l = load(dev.as_ref())?;
        if l.sb.version < crate::format::FORMAT_VERSION {
            return Err(Error::Unusable(format!(
                "this image has on-disk format version {} (without data checksums); this strata                  mounts version {}. Convert it once with `strata migrate IMAGE` (it reads every                  data block to compute its checksum), then mount it",
                l.sb.version,
                crate::format::FORMAT_VERSION
            )));
        }
        if !l.problems.is_empty() {
            return Err(Error::corrupt(
                format!("{} (run `strata fsck`)", l.problems.join("; ")),
                l.sb.ckpt_block,
            ));
        }
        let fsid = l.sb.fsid();
        let ring = Ring::start(dev.clone(), opts.io_policy)
            .map_err(|e| Error::Unusable(format!("cannot start io_uring: {e}")))?;
        let meta = Meta {
            layers: l.layers,
            alloc: l.alloc,
            pending: Enc::new(),
            dirty: HashSet::new(),
            refs: HashMap::new(),
            refs_unknown: opts.takeover,
            epoch: 0,
        };
        let replayed = l.chunks_replayed;
        let inner = Arc::new(Inner {
            cache: BlockCache::new(opts.cache_bytes),
            stats: crate::stats::Stats::new(opts.stats),
            dev,
            ring,
            meta: Mutex::new(meta),
            jpos: Mutex::new(JournalPos {
                sb: l.sb,
                pos: l.pos,
                seq: l.seq,
                used: l.used,
                ckpt_blocks: l.ckpt_blocks,
                early_tail: false,
            }),
            fsid,
            poison: Poison::default(),
            data_inflight: [AtomicU64::new(0), AtomicU64::new(0)],
            data_cv: (Mutex::new(()), Condvar::new()),
            inflight: Inflight::default(),
            commitq: Mutex::new(CommitQueue {
                waiters: Vec::new(),
                written: Vec::new(),
                stop: false,
                soon: false,
            }),
            commit_cv: Condvar::new(),
            file_locks: Mutex::new(HashMap::new()),
            opts,
            counters: Counters::default(),
            started: Time::now(),
            layer_listener: Mutex::new(None),
            kernel_flush: Mutex::new(None),
            scrub: Default::default(),
            grow_lock: Mutex::new(()),
        });
        // Files unlinked while open when the last session ended (active layers only: a frozen
        // layer's tree is shared by its children).
        {
            let mut m = inner.meta.lock();
            inner.stats.sync(m.layers.map.keys().copied());
            let orphans: Vec<(Slot, Ino)> = m
                .layers
                .map
                .iter()
                .filter(|_| !inner.opts.takeover)
                .filter(|(_, l)| l.state == LayerState::Active)
                .flat_map(|(s, l)| {
                    l.tree
                        .inodes
                        .iter()
                        .filter(|(i, n)| **i != ROOT_INO && n.attr.nlink == 0)
                        .map(move |(i, _)| (*s, *i))
                })
                .collect();
            let mut freed = Vec::new();
            for (slot, ino) in &orphans {
                let mut t = Txn {
                    m: &mut m,
                    slot: *slot,
                    freed: Vec::new(),
                };
                t.rec(Record::DelInode { ino: *ino })?;
                freed.append(&mut t.freed);
            }
            for (b, n) in freed {
                m.alloc.defer_free(b, n);
            }
            if !orphans.is_empty() {
                log::info!(
                    "removed {} orphaned inode(s) left by the previous session",
                    orphans.len()
                );
            }
        }
        if replayed > 0 {
            log::info!("replayed {replayed} journal chunk(s)");
        }
        // Mark the file system in use and compact the journal into a fresh checkpoint; a device
        // that grew while the file system was not mounted is taken in by the same checkpoint.
        let grow_to = inner.grown_device()?;
        inner.checkpoint_grow(CheckpointKind::InUse, grow_to)?;
        let engine = Arc::new(Engine {
            inner: inner.clone(),
            commit_thread: Mutex::new(None),
        });
        {
            let m = inner.meta.lock();
            engine.configure_io(&m.layers);
        }
        let t = std::thread::Builder::new()
            .name("strata-commit".into())
            .spawn(move || inner.commit_loop())
            .map_err(|e| Error::Unusable(format!("cannot start commit thread: {e}")))?;
        *engine.commit_thread.lock() = Some(t);
        Ok(engine)
    }

    /// Clean shutdown: final checkpoint marked clean, threads stopped.
    pub fn shutdown(&self) -> Result<()> {
        self.inner.scrub.stop();
        let t = self.commit_thread.lock().take();
        if let Some(t) = t {
            self.inner.commitq.lock().stop = true;
            self.inner.commit_cv.notify_all();
            let _ = t.join();
        } else {
            return Ok(());
        }
        // Wait for data writes to land.
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.inner.ring.inflight() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let r = if self.inner.poison.is_set() {
            Err(Error::Poisoned)
        } else {
            self.inner.checkpoint(CheckpointKind::Clean)
        };
        self.inner.ring.stop();
        r
    }

    /// The file system's id (the first 8 bytes of its UUID; stamped into journal chunks).
    pub fn fsid(&self) -> u64 {
        self.inner.fsid
    }

    pub fn counters(&self) -> &Counters {
        &self.inner.counters
    }

    pub fn cache_stats(&self) -> (u64, u64, u64) {
        let c = &self.inner.cache;
        (
            c.hits.load(Ordering::Relaxed),
            c.misses.load(Ordering::Relaxed),
            c.len_bytes(),
        )
    }

    /// Per-layer and whole-daemon statistics.
    pub fn stats(&self) -> &crate::stats::Stats {
        &self.inner.stats
    }

    /// Block cache capacity in bytes.
    pub fn cache_capacity(&self) -> u64 {
        self.inner.opts.cache_bytes
    }

    /// Bytes each layer's files reference (owned plus inherited), by slot. The trees are
    /// cloned (O(1)) under the lock and walked outside it; results are reused for 10 s.
    pub fn layer_referenced_bytes(&self) -> HashMap<Slot, u64> {
        let mut cache = self.inner.stats.referenced.lock();
        if let Some((t, v)) = cache.as_ref() {
            if t.elapsed() < Duration::from_secs(10) {
                return v.clone();
            }
        }
        let trees: Vec<(Slot, Tree)> = {
            let m = self.inner.meta.lock();
            m.layers
                .map
                .iter()
                .map(|(s, l)| (*s, l.tree.clone()))
                .collect()
        };
        let v: HashMap<Slot, u64> = trees
            .iter()
            .map(|(s, t)| {
                let blocks: u64 = t
                    .inodes
                    .values()
                    .filter_map(|i| i.extents())
                    .map(|x| x.blocks())
                    .sum();
                (*s, blocks * BLOCK)
            })
            .collect();
        *cache = Some((Instant::now(), v.clone()));
        v
    }

    pub fn io_inflight(&self) -> u64 {
        self.inner.ring.inflight()
    }

    pub fn is_poisoned(&self) -> bool {
        self.inner.poison.is_set()
    }

    /// Run a metadata change in the layer of `node`. Only active layers change; the mount root
    /// never does.
    pub(crate) fn change<T>(
        &self,
        node: Node,
        f: impl FnOnce(&mut Txn, Ino) -> Result<T>,
    ) -> Result<T> {
        self.inner.poison.check()?;
        let (slot, ino) = split(node);
        if slot == 0 {
            return Err(errno(libc::EPERM));
        }
        let mut m = self.inner.meta.lock();
        match m.layers.get(slot) {
            None => return Err(errno(libc::ENOENT)),
            Some(l) if l.state != LayerState::Active => return Err(errno(libc::EROFS)),
            Some(_) => {}
        }
        let mut t = Txn {
            m: &mut m,
            slot,
            freed: Vec::new(),
        };
        let r = f(&mut t, ino);
        let freed = std::mem::take(&mut t.freed);
        self.release_later(&mut m, freed);
        if let Err(e) = &r {
            self.inner.stats.error(slot, e.errno());
        }
        r
    }

    pub(crate) fn release_later(&self, m: &mut Meta, freed: Vec<(u64, u64)>) {
        for (b, n) in freed {
            self.inner.cache.invalidate(b, n);
            m.alloc.defer_free(b, n);
        }
    }

    /// Read-only access to the tree holding `node`.
    pub(crate) fn with_tree<T>(
        &self,
        node: Node,
        f: impl FnOnce(&Tree, Ino) -> Result<T>,
    ) -> Result<T> {
        let (slot, ino) = split(node);
        let m = self.inner.meta.lock();
        f(tree_of(&m, slot)?, ino)
    }
}

/// What a grow did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrowReport {
    /// File system size before and after, in bytes.
    pub old_bytes: u64,
    pub new_bytes: u64,
}

impl Engine {
    /// Take in the space of a device that grew while mounted (`truncate -s`, `lvextend`):
    /// the size is read again, and a checkpoint whose superblock declares the new size is
    /// written; once it is durable the new blocks are free space (statfs and the metrics show
    /// it). A crash leaves the old size or the new one. Nothing to do (the same sizes in the
    /// report) when the device did not grow.
    pub fn grow(&self) -> Result<GrowReport> {
        self.inner.poison.check()?;
        let _one = self.inner.grow_lock.lock();
        let old = self.inner.jpos.lock().sb.total_blocks;
        let Some(new) = self.inner.grown_device()? else {
            return Ok(GrowReport {
                old_bytes: old * BLOCK,
                new_bytes: old * BLOCK,
            });
        };
        self.inner
            .checkpoint_grow(CheckpointKind::InUse, Some(new))?;
        let now = self.inner.jpos.lock().sb.total_blocks;
        log::info!(
            "grew the file system from {} MiB to {} MiB",
            (old * BLOCK) >> 20,
            (now * BLOCK) >> 20
        );
        Ok(GrowReport {
            old_bytes: old * BLOCK,
            new_bytes: now * BLOCK,
        })
    }
}

impl Inner {
    /// The device's size in blocks if it is now larger than the file system.
    pub(crate) fn grown_device(&self) -> Result<Option<u64>> {
        let size = self
            .dev
            .refresh_size()
            .map_err(|e| Error::io("stat", 0, e))?;
        let total = self.jpos.lock().sb.total_blocks;
        let blocks = size / BLOCK;
        Ok((blocks > total).then(|| {
            log::info!(
                "the device is {} MiB, the file system {} MiB: growing it",
                size >> 20,
                (total * BLOCK) >> 20
            );
            blocks
        }))
    }

    /// A data block read from the device does not match its checksum (`want` is None when
    /// the block has none): count it for the layer and the daemon, log where it is, and
    /// return the error the reader gets (EIO). Nothing is latched: other blocks still read.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn checksum_failed(
        &self,
        slot: Slot,
        ino: Ino,
        lblk: u64,
        pblk: u64,
        want: Option<u32>,
        got: u32,
        stats: Option<&crate::stats::LayerStats>,
    ) -> Error {
        self.counters
            .checksum_errors
            .fetch_add(1, Ordering::Relaxed);
        if let Some(l) = stats {
            l.checksum_errors.fetch_add(1, Ordering::Relaxed);
        }
        let layer = self
            .meta
            .lock()
            .layers
            .get(slot)
            .map(|l| String::from_utf8_lossy(&l.id).into_owned())
            .unwrap_or_else(|| format!("slot {slot}"));
        let want = want.map_or("none".to_string(), |c| format!("{c:08x}"));
        log::error!(
            "data checksum mismatch: layer {layer:?} inode {ino} logical block {lblk} physical              block {pblk}: expected crc {want}, the device returned data with crc {got:08x};              the read fails with EIO (run `strata scrub` to find every bad block)"
        );
        Error::Checksum { block: pblk }
    }

    /// A device I/O failed: count it, log it, and latch read-only when it was a write.
    pub(crate) fn io_failed(
        &self,
        op: &'static str,
        pblk: u64,
        e: std::io::Error,
        poison: bool,
    ) -> Error {
        self.counters.io_errors.fetch_add(1, Ordering::Relaxed);
        let err = Error::io(op, pblk * BLOCK, e);
        if poison {
            self.poison.latch(err)
        } else {
            log::error!("{err}");
            err
        }
    }
}
