//! The engine: metadata operations under one lock, data I/O through the ring, durability
//! through the commit thread (journal group commit and checkpoints), recovery at open.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::alloc::Allocator;
use crate::cache::BlockCache;
use crate::codec::Enc;
use crate::device::{AlignedBuf, Device};
use crate::error::{errno, Error, Result};
use crate::format::*;
use crate::journal;
use crate::layer::{Layer, Layers};
use crate::meta::*;
use crate::ring::{IoReq, Op, Ring};

/// Options for opening an engine.
#[derive(Clone, Debug)]
pub struct Options {
    /// Block cache size in bytes.
    pub cache_bytes: u64,
    /// Interval of the background journal commit.
    pub commit_interval: Duration,
    /// Keep per-layer statistics and latency histograms (see [`crate::stats`]).
    pub stats: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            cache_bytes: 256 << 20,
            commit_interval: Duration::from_secs(1),
            stats: true,
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

struct Meta {
    layers: Layers,
    alloc: Allocator,
    /// Encoded records not yet in the journal.
    pending: Enc,
    /// Nodes whose attributes changed without a record (mtime of in-place writes).
    dirty: HashSet<Node>,
    /// Kernel references (FUSE lookup counts) per inode: an unlinked inode lives until they are gone.
    refs: HashMap<Node, u64>,
    /// Which data-write epoch new allocating writes belong to.
    epoch: usize,
}

struct JournalPos {
    sb: Superblock,
    /// Next journal block to write and the sequence number it gets.
    pos: u64,
    seq: u64,
    /// Journal blocks written since the checkpoint.
    used: u64,
    /// Blocks of the current checkpoint (freed when the next one is durable).
    ckpt_blocks: Vec<u64>,
}

struct CommitQueue {
    waiters: Vec<Box<dyn FnOnce(Result<()>) + Send>>,
    stop: bool,
}

struct Inner {
    dev: Arc<dyn Device>,
    ring: Ring,
    cache: BlockCache,
    meta: Mutex<Meta>,
    jpos: Mutex<JournalPos>,
    fsid: u64,
    poisoned: AtomicBool,
    /// Allocating data writes in flight per epoch; a commit waits for its epoch to drain.
    data_inflight: [AtomicU64; 2],
    data_cv: (Mutex<()>, Condvar),
    commitq: Mutex<CommitQueue>,
    commit_cv: Condvar,
    /// Per-inode lock serialising changes of a file's block map.
    file_locks: Mutex<HashMap<Node, Arc<Mutex<()>>>>,
    opts: Options,
    pub counters: Counters,
    stats: crate::stats::Stats,
    /// When this engine started (times of the mount root).
    started: Time,
    /// Told the id of every layer that goes away (the FUSE front drops the kernel's entry).
    layer_listener: Mutex<Option<LayerListener>>,
}

/// Called with the id of a layer that was removed.
pub type LayerListener = Box<dyn Fn(&str) + Send + Sync>;

/// A mounted Strata file system.
pub struct Engine {
    inner: Arc<Inner>,
    commit_thread: Mutex<Option<JoinHandle<()>>>,
}

type Cb<T> = Box<dyn FnOnce(Result<T>) + Send>;
/// Completion of a read: the bytes, borrowed from the I/O buffer.
pub type ReadCb = Box<dyn FnOnce(Result<&[u8]>) + Send>;

fn fsid_of(uuid: &[u8; 16]) -> u64 {
    u64::from_le_bytes(uuid[..8].try_into().unwrap_or([0; 8]))
}

fn random_uuid() -> [u8; 16] {
    let mut u = [0u8; 16];
    // SAFETY: getrandom writes at most 16 bytes into `u`.
    let n = unsafe { libc::getrandom(u.as_mut_ptr() as *mut libc::c_void, 16, 0) };
    if n != 16 {
        let t = Time::now();
        u[..8].copy_from_slice(&t.sec.to_le_bytes());
        u[8..12].copy_from_slice(&t.nsec.to_le_bytes());
        u[12..16].copy_from_slice(&std::process::id().to_le_bytes());
    }
    u
}

fn read_blocks(dev: &dyn Device, block: u64, n: u64) -> Result<AlignedBuf> {
    let mut buf = AlignedBuf::zeroed(n as usize);
    dev.read_at(&mut buf, block * BLOCK)
        .map_err(|e| Error::io("read", block * BLOCK, e))?;
    Ok(buf)
}

fn write_blocks(dev: &dyn Device, block: u64, data: &[u8]) -> Result<()> {
    let mut buf = AlignedBuf::zeroed(data.len().div_ceil(BLOCK_SIZE));
    buf[..data.len()].copy_from_slice(data);
    dev.write_at(&buf, block * BLOCK)
        .map_err(|e| Error::io("write", block * BLOCK, e))
}

/// Write a checkpoint of `tree` into newly allocated blocks. Returns (first block, block list, bytes, crc).
fn write_checkpoint(
    dev: &dyn Device,
    tree_bytes: &[u8],
    gen: u64,
    runs: &[(u64, u64)],
) -> Result<(u64, u64, u32)> {
    let blocks: Vec<u64> = runs.iter().flat_map(|(b, n)| *b..*b + *n).collect();
    let chunks: Vec<&[u8]> = tree_bytes.chunks(journal::CKPT_PAYLOAD).collect();
    let nchunks = chunks.len().max(1);
    if blocks.len() < nchunks {
        return Err(Error::NoSpace);
    }
    let mut encoded = Vec::with_capacity(nchunks);
    for i in 0..nchunks {
        let next = if i + 1 < nchunks { blocks[i + 1] } else { 0 };
        let payload = chunks.get(i).copied().unwrap_or(&[]);
        encoded.push(journal::encode_ckpt_block(gen, next, payload));
    }
    // One write per physically contiguous run.
    let mut i = 0;
    while i < nchunks {
        let mut j = i + 1;
        while j < nchunks && blocks[j] == blocks[j - 1] + 1 {
            j += 1;
        }
        let data: Vec<u8> = encoded[i..j].concat();
        write_blocks(dev, blocks[i], &data)?;
        i = j;
    }
    Ok((
        blocks[0],
        tree_bytes.len() as u64,
        crc32c::crc32c(tree_bytes),
    ))
}

fn read_checkpoint(dev: &dyn Device, sb: &Superblock) -> Result<(Layers, Vec<u64>)> {
    // The superblock's sizes were validated, and the device is at least total_blocks long;
    // cap the reservation anyway (the chain itself is read block by block).
    let mut bytes = Vec::with_capacity((sb.ckpt_bytes as usize).min(64 << 20));
    let mut blocks = Vec::new();
    let mut b = sb.ckpt_block;
    for _ in 0..sb.ckpt_blocks {
        if b < sb.data_start || b >= sb.total_blocks {
            return Err(Error::corrupt(
                format!("checkpoint chain points outside the data region ({b})"),
                b,
            ));
        }
        let buf = read_blocks(dev, b, 1)?;
        let (payload, next) = journal::decode_ckpt_block(&buf, sb.generation_of_ckpt(), b)?;
        bytes.extend_from_slice(payload);
        blocks.push(b);
        b = next;
    }
    if bytes.len() as u64 != sb.ckpt_bytes || crc32c::crc32c(&bytes) != sb.ckpt_crc {
        return Err(Error::corrupt(
            "checkpoint contents do not match the superblock's length and checksum",
            sb.ckpt_block,
        ));
    }
    Ok((Layers::decode(&bytes, sb.ckpt_block)?, blocks))
}

impl Superblock {
    /// Checkpoint blocks carry the generation of the superblock that first pointed at them,
    /// which is stored in the superblock's ckpt_crc companion: we use the checkpoint's own
    /// block number as its identity, so the generation written into checkpoint blocks is the
    /// first block number (stable across superblock rewrites).
    fn generation_of_ckpt(&self) -> u64 {
        self.ckpt_block
    }
}

/// Read both superblock slots and return the newest valid one.
pub fn read_superblock(dev: &dyn Device) -> Result<Superblock> {
    if dev.size() < 2 * BLOCK {
        return Err(Error::NotStrata(format!(
            "device is only {} bytes",
            dev.size()
        )));
    }
    let buf = read_blocks(dev, 0, 2)?;
    let a = Superblock::decode(&buf[..BLOCK_SIZE], 0);
    let b = Superblock::decode(&buf[BLOCK_SIZE..], 1);
    let sb = match (a, b) {
        (Ok(a), Ok(b)) => {
            if a.generation >= b.generation {
                a
            } else {
                b
            }
        }
        (Ok(a), Err(e)) | (Err(e), Ok(a)) => {
            log::warn!("one superblock slot is unusable ({e}); using the other");
            a
        }
        (Err(Error::NotStrata(_)), Err(Error::NotStrata(w))) => return Err(Error::NotStrata(w)),
        (Err(e), Err(_)) => return Err(e),
    };
    if sb.total_blocks.saturating_mul(BLOCK) > dev.size() {
        return Err(Error::Unusable(format!(
            "the image is truncated: the file system needs {} bytes, the device has {}",
            sb.total_blocks.saturating_mul(BLOCK),
            dev.size()
        )));
    }
    Ok(sb)
}

/// Format a device.
pub fn mkfs(dev: &dyn Device, uid: u32, gid: u32) -> Result<Superblock> {
    let size = dev.size();
    if size < MIN_DEVICE_SIZE {
        return Err(Error::Unusable(format!(
            "device is {size} bytes; Strata needs at least {MIN_DEVICE_SIZE}"
        )));
    }
    let total = size / BLOCK;
    let (jblocks, data_start) = Superblock::layout(total);
    // Clear the superblocks and the first journal block so nothing old is mistaken for ours.
    write_blocks(dev, 0, &vec![0u8; 3 * BLOCK_SIZE])?;
    // A new file system holds one empty, writable layer: "default".
    let mut layers = Layers::default();
    let (mut f, mut m) = (Vec::new(), Vec::new());
    let rec = Record::LayerNew {
        slot: 1,
        id: Arc::from(DEFAULT_LAYER.as_bytes()),
        parent: None,
        state: LayerState::Active,
        owner: 1,
        created: Time::now(),
        uid,
        gid,
    };
    layers.apply(0, &rec, &mut f, &mut m)?;
    let bytes = layers.encode();
    let n = bytes.len().div_ceil(journal::CKPT_PAYLOAD) as u64;
    let (first, len, crc) = write_checkpoint(dev, &bytes, data_start, &[(data_start, n)])?;
    let uuid = random_uuid();
    let mut sb = Superblock {
        version: FORMAT_VERSION,
        generation: 1,
        total_blocks: total,
        journal_start: JOURNAL_START,
        journal_blocks: jblocks,
        data_start,
        ckpt_block: first,
        ckpt_blocks: n,
        ckpt_bytes: len,
        ckpt_crc: crc,
        replay_block: JOURNAL_START,
        replay_seq: 1,
        uuid,
        clean: true,
    };
    dev.flush().map_err(|e| Error::io("flush", 0, e))?;
    write_blocks(dev, 1, &sb.encode())?;
    sb.generation = 0;
    write_blocks(dev, 0, &sb.encode())?;
    sb.generation = 1;
    dev.flush().map_err(|e| Error::io("flush", 0, e))?;
    Ok(sb)
}

/// Name of the layer `mkfs` creates.
pub const DEFAULT_LAYER: &str = "default";
/// Writes of at least this many blocks whose pieces on the device average fewer than
/// [`RELOCATE_MIN_RUN`] blocks are written to new contiguous blocks (see `plan_write`).
const RELOCATE_MIN_BLOCKS: u64 = 16;
const RELOCATE_MIN_RUN: u64 = 8;

/// State loaded from disk: the layers after checkpoint + journal replay.
pub struct Loaded {
    pub sb: Superblock,
    pub layers: Layers,
    pub alloc: Allocator,
    pub ckpt_blocks: Vec<u64>,
    /// Where the journal continues.
    pub pos: u64,
    pub seq: u64,
    pub used: u64,
    pub chunks_replayed: u64,
    /// Problems that do not stop a mount but fsck reports (blocks owned twice, ...).
    pub problems: Vec<String>,
}

/// Mark `[b, b+n)` in use for `who` (a layer or a journal chunk): outside the data region is
/// corruption; a block already in use is a problem fsck reports.
fn claim(
    alloc: &mut Allocator,
    sb: &Superblock,
    b: u64,
    n: u64,
    problems: &mut Vec<String>,
    who: impl Fn() -> String,
) -> Result<()> {
    if b < sb.data_start || b.saturating_add(n) > sb.total_blocks {
        return Err(Error::corrupt(
            format!("{} maps blocks outside the data region", who()),
            b,
        ));
    }
    let dup = alloc.mark_used(b, n);
    if dup > 0 {
        problems.push(format!("{}: {dup} block(s) at {b} are owned twice", who()));
    }
    Ok(())
}

/// Recovery: newest valid superblock, its checkpoint, then the journal until the first bad chunk.
pub fn load(dev: &dyn Device) -> Result<Loaded> {
    let sb = read_superblock(dev)?;
    let fsid = fsid_of(&sb.uuid);
    let (mut layers, ckpt_blocks) = read_checkpoint(dev, &sb)?;
    let mut alloc = Allocator::new(sb.data_start, sb.total_blocks);
    let mut problems = Vec::new();
    for b in &ckpt_blocks {
        alloc.mark_used(*b, 1);
    }
    for slot in layers.topo_order() {
        for (pblk, len) in layers.owned_extents(slot) {
            claim(&mut alloc, &sb, pblk, len, &mut problems, || {
                format!("layer slot {slot}")
            })?;
        }
    }
    let jstart = sb.journal_start;
    let jend = sb.journal_start + sb.journal_blocks;
    let mut pos = sb.replay_block;
    let mut seq = sb.replay_seq;
    let mut used = 0u64;
    let mut replayed = 0u64;
    loop {
        let mut found = None;
        for cand in [pos, jstart] {
            let hdr = read_blocks(dev, cand, 1)?;
            if let Some(h) = journal::decode_chunk_header(&hdr) {
                if h.seq == seq
                    && h.fsid == fsid
                    && h.nblocks >= 1
                    && cand + h.nblocks as u64 <= jend
                {
                    found = Some((cand, h));
                    break;
                }
            }
        }
        let Some((at, h)) = found else { break };
        let blocks = read_blocks(dev, at, h.nblocks as u64)?;
        let Some(payload) = journal::chunk_payload(&h, &blocks) else {
            break;
        };
        let recs = journal::decode_records(&payload, at)?;
        // Allocation follows each record in order: a block mapped and freed again within one
        // chunk must end up free.
        for (slot, r) in &recs {
            let (mut freed, mut mapped) = (Vec::new(), Vec::new());
            layers.apply(*slot, r, &mut freed, &mut mapped)?;
            for (b, n) in freed {
                alloc.release(b, n);
            }
            for (b, n) in mapped {
                claim(&mut alloc, &sb, b, n, &mut problems, || {
                    format!("journal chunk {seq}")
                })?;
            }
        }
        if at != pos {
            used += jend - pos;
        }
        used += h.nblocks as u64;
        pos = at + h.nblocks as u64;
        if pos >= jend {
            pos = jstart;
        }
        seq += 1;
        replayed += 1;
    }
    Ok(Loaded {
        sb,
        layers,
        alloc,
        ckpt_blocks,
        pos,
        seq,
        used,
        chunks_replayed: replayed,
        problems,
    })
}

fn sectors(attr: &Attr, i: &Inode) -> u64 {
    match i.extents() {
        Some(x) => x.blocks() * (BLOCK / 512),
        None if attr.is_dir() => BLOCK / 512,
        None => 0,
    }
}

fn check_name(name: &[u8]) -> Result<()> {
    if name.len() > MAX_NAME {
        return Err(errno(libc::ENAMETOOLONG));
    }
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0)
    {
        return Err(errno(libc::EINVAL));
    }
    Ok(())
}

/// A FUSE node id: layer slot in the high bits, inode number in the low 40.
pub type Node = u64;
const INO_BITS: u32 = 40;
/// The mount root, which lists the layers.
pub const MOUNT_ROOT: Node = 1;

pub fn node_of(slot: Slot, ino: Ino) -> Node {
    ((slot as u64) << INO_BITS) | ino
}

pub fn split(node: Node) -> (Slot, Ino) {
    ((node >> INO_BITS) as Slot, node & ((1 << INO_BITS) - 1))
}

fn tree_of(m: &Meta, slot: Slot) -> Result<&Tree> {
    m.layers
        .get(slot)
        .map(|l| &l.tree)
        .ok_or(errno(libc::ENOENT))
}

/// A metadata transaction in one layer: records are applied as they are added.
struct Txn<'a> {
    m: &'a mut Meta,
    slot: Slot,
    freed: Vec<(u64, u64)>,
}

impl Txn<'_> {
    fn rec(&mut self, r: Record) -> Result<()> {
        let mut mapped = Vec::new();
        self.m
            .layers
            .apply(self.slot, &r, &mut self.freed, &mut mapped)?;
        journal::encode_record(&mut self.m.pending, self.slot, &r);
        Ok(())
    }
    fn layer(&self) -> Result<&Layer> {
        self.m.layers.get(self.slot).ok_or(errno(libc::ENOENT))
    }
    fn node(&self, ino: Ino) -> Node {
        node_of(self.slot, ino)
    }
    fn inode(&self, ino: Ino) -> Result<&Inode> {
        self.layer()?.tree.get(ino).ok_or(errno(libc::ENOENT))
    }
    fn attr(&self, ino: Ino) -> Result<Attr> {
        Ok(self.inode(ino)?.attr)
    }
    fn set_attr(&mut self, ino: Ino, attr: Attr) -> Result<()> {
        let n = self.node(ino);
        self.m.dirty.remove(&n);
        self.rec(Record::SetAttr { ino, attr })
    }
    fn dir(&self, ino: Ino) -> Result<&Dir> {
        let i = self.inode(ino)?;
        i.dir().ok_or(errno(libc::ENOTDIR))
    }
    fn stat(&self, ino: Ino) -> Result<Stat> {
        let i = self.inode(ino)?;
        Ok(Stat {
            ino: self.node(ino),
            attr: i.attr,
            blocks: sectors(&i.attr, i),
        })
    }
    fn take_ref(&mut self, ino: Ino) {
        let n = self.node(ino);
        *self.m.refs.entry(n).or_insert(0) += 1;
    }
    /// Drop a link to `ino` (the directory entry is already gone).
    fn drop_link(&mut self, ino: Ino, now: Time) -> Result<()> {
        let mut a = self.attr(ino)?;
        if a.is_dir() {
            a.nlink = 0;
        } else {
            a.nlink = a.nlink.saturating_sub(1);
        }
        a.ctime = now;
        let n = self.node(ino);
        if a.nlink == 0 && !self.m.refs.contains_key(&n) {
            self.m.dirty.remove(&n);
            self.rec(Record::DelInode { ino })
        } else {
            self.set_attr(ino, a)
        }
    }
    /// An inode's metadata changed (ctime only).
    fn touch_ctime(&mut self, ino: Ino, now: Time) -> Result<()> {
        let mut a = self.attr(ino)?;
        a.ctime = now;
        self.set_attr(ino, a)
    }
    fn touch_dir(&mut self, dir: Ino, now: Time, nlink_delta: i32) -> Result<()> {
        let mut a = self.attr(dir)?;
        a.mtime = now;
        a.ctime = now;
        a.nlink = (a.nlink as i64 + nlink_delta as i64).max(0) as u32;
        self.set_attr(dir, a)
    }
}

/// What the admin API and the CLI see of a layer.
#[derive(Clone, Debug)]
pub struct LayerInfo {
    pub id: String,
    pub slot: u32,
    pub parent: Option<String>,
    pub state: LayerState,
    pub labels: BTreeMap<String, String>,
    pub created: Time,
    pub owned_bytes: u64,
    pub inodes: u64,
    /// Parent ids, nearest first.
    pub chain: Vec<String>,
    pub children: Vec<String>,
}

fn lossy(n: &[u8]) -> String {
    String::from_utf8_lossy(n).into_owned()
}

fn layer_info(ls: &Layers, slot: Slot) -> Result<LayerInfo> {
    let l = ls
        .get(slot)
        .ok_or_else(|| Error::NotFound(format!("no layer in slot {slot}")))?;
    let mut chain = Vec::new();
    let mut p = l.parent;
    while let Some(ps) = p {
        let Some(pl) = ls.get(ps) else { break };
        chain.push(lossy(&pl.id));
        p = pl.parent;
        if chain.len() > ls.map.len() {
            break;
        }
    }
    Ok(LayerInfo {
        id: lossy(&l.id),
        slot,
        parent: l.parent.and_then(|p| ls.get(p)).map(|p| lossy(&p.id)),
        state: l.state,
        labels: l.labels.iter().map(|(k, v)| (lossy(k), lossy(v))).collect(),
        created: l.created,
        owned_bytes: l.owned * BLOCK,
        inodes: l.tree.inodes.len() as u64,
        chain,
        children: ls
            .children(slot)
            .into_iter()
            .filter_map(|c| ls.get(c))
            .map(|c| lossy(&c.id))
            .collect(),
    })
}

fn label_list(labels: &BTreeMap<String, String>) -> Result<Vec<(Name, Name)>> {
    if labels.len() > crate::meta::MAX_LABELS {
        return Err(Error::Invalid(format!(
            "at most {} labels",
            crate::meta::MAX_LABELS
        )));
    }
    labels
        .iter()
        .map(|(k, v)| {
            if k.is_empty() || k.len() > crate::meta::MAX_LABEL || v.len() > crate::meta::MAX_LABEL
            {
                return Err(Error::Invalid(format!(
                    "label keys must be 1 to {0} bytes, values at most {0}",
                    crate::meta::MAX_LABEL
                )));
            }
            Ok((Arc::from(k.as_bytes()), Arc::from(v.as_bytes())))
        })
        .collect()
}

impl Engine {
    /// Open (recover) a Strata file system on `dev`.
    pub fn open(dev: Arc<dyn Device>, opts: Options) -> Result<Arc<Engine>> {
        let l = load(dev.as_ref())?;
        if !l.problems.is_empty() {
            return Err(Error::corrupt(
                format!("{} (run `strata fsck`)", l.problems.join("; ")),
                l.sb.ckpt_block,
            ));
        }
        let fsid = fsid_of(&l.sb.uuid);
        let ring = Ring::start(dev.clone())
            .map_err(|e| Error::Unusable(format!("cannot start io_uring: {e}")))?;
        let meta = Meta {
            layers: l.layers,
            alloc: l.alloc,
            pending: Enc::new(),
            dirty: HashSet::new(),
            refs: HashMap::new(),
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
            }),
            fsid,
            poisoned: AtomicBool::new(false),
            data_inflight: [AtomicU64::new(0), AtomicU64::new(0)],
            data_cv: (Mutex::new(()), Condvar::new()),
            commitq: Mutex::new(CommitQueue {
                waiters: Vec::new(),
                stop: false,
            }),
            commit_cv: Condvar::new(),
            file_locks: Mutex::new(HashMap::new()),
            opts,
            counters: Counters::default(),
            started: Time::now(),
            layer_listener: Mutex::new(None),
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
        // Mark the file system in use and compact the journal into a fresh checkpoint.
        inner.checkpoint(false)?;
        let engine = Arc::new(Engine {
            inner: inner.clone(),
            commit_thread: Mutex::new(None),
        });
        let t = std::thread::Builder::new()
            .name("strata-commit".into())
            .spawn(move || inner.commit_loop())
            .map_err(|e| Error::Unusable(format!("cannot start commit thread: {e}")))?;
        *engine.commit_thread.lock() = Some(t);
        Ok(engine)
    }

    /// Clean shutdown: final checkpoint marked clean, threads stopped.
    pub fn shutdown(&self) -> Result<()> {
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
        let r = if self.inner.poisoned.load(Ordering::SeqCst) {
            Err(Error::Poisoned)
        } else {
            self.inner.checkpoint(true)
        };
        self.inner.ring.stop();
        r
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
        self.inner.poisoned.load(Ordering::SeqCst)
    }

    /// Run a metadata change in the layer of `node`. Only active layers change; the mount root
    /// never does.
    fn change<T>(&self, node: Node, f: impl FnOnce(&mut Txn, Ino) -> Result<T>) -> Result<T> {
        if self.inner.poisoned.load(Ordering::SeqCst) {
            return Err(Error::Poisoned);
        }
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

    fn release_later(&self, m: &mut Meta, freed: Vec<(u64, u64)>) {
        for (b, n) in freed {
            self.inner.cache.invalidate(b, n);
            m.alloc.defer_free(b, n);
        }
    }

    /// Read-only access to the tree holding `node`.
    fn with_tree<T>(&self, node: Node, f: impl FnOnce(&Tree, Ino) -> Result<T>) -> Result<T> {
        let (slot, ino) = split(node);
        let m = self.inner.meta.lock();
        f(tree_of(&m, slot)?, ino)
    }

    fn root_stat(&self, m: &Meta) -> Stat {
        let t = self.inner.started;
        // Root only: other users reach a layer only through a bind mount of it (as a
        // container does), never by walking into other containers' layers from here.
        let attr = Attr {
            mode: S_IFDIR | 0o700,
            nlink: 2 + m.layers.map.len() as u32,
            atime: t,
            mtime: t,
            ctime: t,
            btime: t,
            ..Default::default()
        };
        Stat {
            ino: MOUNT_ROOT,
            attr,
            blocks: 0,
        }
    }

    pub fn getattr(&self, node: Node) -> Result<Stat> {
        let (slot, ino) = split(node);
        let m = self.inner.meta.lock();
        if slot == 0 {
            return if ino == ROOT_INO {
                Ok(self.root_stat(&m))
            } else {
                Err(errno(libc::ENOENT))
            };
        }
        let i = tree_of(&m, slot)?.get(ino).ok_or(errno(libc::ENOENT))?;
        Ok(Stat {
            ino: node,
            attr: i.attr,
            blocks: sectors(&i.attr, i),
        })
    }

    /// Look up `name` in `parent`. A successful lookup counts as one kernel reference to the
    /// inode (see [`Engine::forget`]). In the mount root, names are layer ids.
    pub fn lookup(&self, parent: Node, name: &[u8]) -> Result<Stat> {
        if name.len() > MAX_NAME {
            return Err(errno(libc::ENAMETOOLONG));
        }
        let (slot, pino) = split(parent);
        let mut m = self.inner.meta.lock();
        let node = if slot == 0 {
            let ls = m.layers.slot_of(name).ok_or(errno(libc::ENOENT))?;
            node_of(ls, ROOT_INO)
        } else {
            let t = tree_of(&m, slot)?;
            let d = t
                .get(pino)
                .ok_or(errno(libc::ENOENT))?
                .dir()
                .ok_or(errno(libc::ENOTDIR))?;
            match name {
                b"." => parent,
                _ => node_of(slot, d.get(name).ok_or(errno(libc::ENOENT))?),
            }
        };
        let (s2, ino) = split(node);
        let i = tree_of(&m, s2)?.get(ino).ok_or(errno(libc::ENOENT))?;
        let st = Stat {
            ino: node,
            attr: i.attr,
            blocks: sectors(&i.attr, i),
        };
        *m.refs.entry(node).or_insert(0) += 1;
        Ok(st)
    }

    pub fn readlink(&self, node: Node) -> Result<Name> {
        self.with_tree(node, |t, ino| {
            match &t.get(ino).ok_or(errno(libc::ENOENT))?.content {
                Content::Symlink(s) => Ok(s.clone()),
                _ => Err(errno(libc::EINVAL)),
            }
        })
    }

    /// Create a node of any type (regular, dir, symlink, device, fifo, socket). The new entry
    /// counts as one kernel reference, like a lookup.
    pub fn mknod(
        &self,
        parent: Node,
        name: &[u8],
        mode: u32,
        rdev: u32,
        who: Caller,
        symlink: Option<&[u8]>,
    ) -> Result<Stat> {
        let _op = self.inner.stats.meta_op(
            parent,
            crate::stats::MetaOp::of_mode(mode, symlink.is_some()),
        );
        check_name(name)?;
        if let Some(t) = symlink {
            if t.len() > MAX_SYMLINK || t.is_empty() {
                return Err(errno(if t.is_empty() {
                    libc::ENOENT
                } else {
                    libc::ENAMETOOLONG
                }));
            }
        }
        self.change(parent, |t, parent| {
            let pattr = t.attr(parent)?;
            let d = t.dir(parent)?;
            if pattr.nlink == 0 {
                return Err(errno(libc::ENOENT));
            }
            if d.get(name).is_some() {
                return Err(errno(libc::EEXIST));
            }
            let now = Time::now();
            let mut mode = mode;
            let mut gid = who.gid;
            if pattr.mode & libc::S_ISGID != 0 {
                gid = pattr.gid;
                if mode & S_IFMT == S_IFDIR {
                    mode |= libc::S_ISGID;
                }
            }
            let is_dir = mode & S_IFMT == S_IFDIR;
            let attr = Attr {
                mode,
                uid: who.uid,
                gid,
                nlink: if is_dir { 2 } else { 1 },
                size: symlink.map(|s| s.len() as u64).unwrap_or(0),
                atime: now,
                mtime: now,
                ctime: now,
                btime: now,
                rdev,
                flags: 0,
            };
            let ino = t.layer()?.tree.next_ino;
            t.rec(Record::NewInode {
                ino,
                attr,
                symlink: symlink.map(Arc::from),
            })?;
            t.rec(Record::Link {
                dir: parent,
                name: Arc::from(name),
                ino,
            })?;
            t.touch_dir(parent, now, if is_dir { 1 } else { 0 })?;
            t.take_ref(ino);
            t.stat(ino)
        })
    }

    pub fn link(&self, node: Node, parent: Node, name: &[u8]) -> Result<Stat> {
        let _op = self.inner.stats.meta_op(parent, crate::stats::MetaOp::Link);
        check_name(name)?;
        if split(node).0 != split(parent).0 {
            return Err(errno(libc::EXDEV));
        }
        let ino = split(node).1;
        self.change(parent, |t, parent| {
            let mut a = t.attr(ino)?;
            if a.is_dir() {
                return Err(errno(libc::EPERM));
            }
            if a.nlink == 0 {
                return Err(errno(libc::ENOENT));
            }
            if t.dir(parent)?.get(name).is_some() {
                return Err(errno(libc::EEXIST));
            }
            if a.nlink >= 65000 {
                return Err(errno(libc::EMLINK));
            }
            let now = Time::now();
            t.rec(Record::Link {
                dir: parent,
                name: Arc::from(name),
                ino,
            })?;
            a.nlink += 1;
            a.ctime = now;
            t.set_attr(ino, a)?;
            t.touch_dir(parent, now, 0)?;
            t.take_ref(ino);
            t.stat(ino)
        })
    }

    pub fn unlink(&self, parent: Node, name: &[u8]) -> Result<()> {
        let _op = self
            .inner
            .stats
            .meta_op(parent, crate::stats::MetaOp::Unlink);
        if name.len() > MAX_NAME {
            return Err(errno(libc::ENAMETOOLONG));
        }
        self.change(parent, |t, parent| {
            let ino = t.dir(parent)?.get(name).ok_or(errno(libc::ENOENT))?;
            if t.attr(ino)?.is_dir() {
                return Err(errno(libc::EISDIR));
            }
            let now = Time::now();
            t.rec(Record::Unlink {
                dir: parent,
                name: Arc::from(name),
            })?;
            t.drop_link(ino, now)?;
            t.touch_dir(parent, now, 0)
        })
    }

    pub fn rmdir(&self, parent: Node, name: &[u8]) -> Result<()> {
        let _op = self
            .inner
            .stats
            .meta_op(parent, crate::stats::MetaOp::Rmdir);
        if name.len() > MAX_NAME {
            return Err(errno(libc::ENAMETOOLONG));
        }
        if name == b"." {
            return Err(errno(libc::EINVAL));
        }
        if name == b".." {
            return Err(errno(libc::ENOTEMPTY));
        }
        self.change(parent, |t, parent| {
            let ino = t.dir(parent)?.get(name).ok_or(errno(libc::ENOENT))?;
            let d = t.dir(ino)?;
            if !d.is_empty() {
                return Err(errno(libc::ENOTEMPTY));
            }
            let now = Time::now();
            t.rec(Record::Unlink {
                dir: parent,
                name: Arc::from(name),
            })?;
            t.drop_link(ino, now)?;
            t.touch_dir(parent, now, -1)
        })
    }

    /// rename(2) with RENAME_NOREPLACE / RENAME_EXCHANGE. Across layers: EXDEV.
    pub fn rename(
        &self,
        opn: Node,
        oname: &[u8],
        npn: Node,
        nname: &[u8],
        flags: u32,
    ) -> Result<()> {
        let _op = self.inner.stats.meta_op(opn, crate::stats::MetaOp::Rename);
        check_name(nname)?;
        if oname.len() > MAX_NAME {
            return Err(errno(libc::ENAMETOOLONG));
        }
        let noreplace = flags & libc::RENAME_NOREPLACE != 0;
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        if flags & !(libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE) != 0 || (noreplace && exchange)
        {
            return Err(errno(libc::EINVAL));
        }
        if split(opn).0 != split(npn).0 {
            return Err(errno(libc::EXDEV));
        }
        let np = split(npn).1;
        self.change(opn, |t, op| {
            let src = t.dir(op)?.get(oname).ok_or(errno(libc::ENOENT))?;
            let dst = t.dir(np)?.get(nname);
            let sattr = t.attr(src)?;
            let now = Time::now();
            let (oname_a, nname_a): (Name, Name) = (Arc::from(oname), Arc::from(nname));
            // A directory may not move below itself.
            if sattr.is_dir() && op != np && Self::is_ancestor(t, src, np)? {
                return Err(errno(libc::EINVAL));
            }
            if exchange {
                let dst = dst.ok_or(errno(libc::ENOENT))?;
                let dattr = t.attr(dst)?;
                if dattr.is_dir() && op != np && Self::is_ancestor(t, dst, op)? {
                    return Err(errno(libc::EINVAL));
                }
                t.rec(Record::Link {
                    dir: op,
                    name: oname_a,
                    ino: dst,
                })?;
                t.rec(Record::Link {
                    dir: np,
                    name: nname_a,
                    ino: src,
                })?;
                if op != np && sattr.is_dir() != dattr.is_dir() {
                    let d = if sattr.is_dir() { 1 } else { -1 };
                    t.touch_dir(op, now, -d)?;
                    t.touch_dir(np, now, d)?;
                } else {
                    t.touch_dir(op, now, 0)?;
                    if op != np {
                        t.touch_dir(np, now, 0)?;
                    }
                }
                for i in [src, dst] {
                    t.touch_ctime(i, now)?;
                }
                return Ok(());
            }
            if let Some(dst) = dst {
                if noreplace {
                    return Err(errno(libc::EEXIST));
                }
                if dst == src {
                    return Ok(());
                }
                let dattr = t.attr(dst)?;
                match (sattr.is_dir(), dattr.is_dir()) {
                    (true, false) => return Err(errno(libc::ENOTDIR)),
                    (false, true) => return Err(errno(libc::EISDIR)),
                    (true, true) if !t.dir(dst)?.is_empty() => return Err(errno(libc::ENOTEMPTY)),
                    _ => {}
                }
                t.rec(Record::Unlink {
                    dir: np,
                    name: nname_a.clone(),
                })?;
                t.drop_link(dst, now)?;
                if dattr.is_dir() {
                    t.touch_dir(np, now, -1)?;
                }
            }
            t.rec(Record::Unlink {
                dir: op,
                name: oname_a,
            })?;
            t.rec(Record::Link {
                dir: np,
                name: nname_a,
                ino: src,
            })?;
            let d = if sattr.is_dir() { 1 } else { 0 };
            t.touch_dir(op, now, -d)?;
            t.touch_dir(np, now, d)?;
            t.touch_ctime(src, now)
        })
    }

    fn is_ancestor(t: &Txn, a: Ino, mut b: Ino) -> Result<bool> {
        // Walk from b up to the layer root by searching parents (directories have one parent).
        let tree = &t.layer()?.tree;
        let mut guard = 0;
        while b != ROOT_INO && guard < 100_000 {
            if b == a {
                return Ok(true);
            }
            let parent = tree.inodes.iter().find_map(|(pino, i)| match i.dir() {
                Some(d) if d.entries.values().any(|(c, _)| *c == b) => Some(*pino),
                _ => None,
            });
            match parent {
                Some(p) => b = p,
                None => return Ok(false),
            }
            guard += 1;
        }
        Ok(b == a)
    }

    pub fn readdir(&self, node: Node, offset: u64, max: usize) -> Result<Vec<DirEntry>> {
        let (slot, ino) = split(node);
        let m = self.inner.meta.lock();
        let mut out = Vec::new();
        if offset < 1 {
            out.push(DirEntry {
                name: Arc::from(&b"."[..]),
                ino: node,
                kind: S_IFDIR,
                offset: 1,
            });
        }
        if offset < 2 {
            out.push(DirEntry {
                name: Arc::from(&b".."[..]),
                ino: node,
                kind: S_IFDIR,
                offset: 2,
            });
        }
        if slot == 0 {
            if ino != ROOT_INO {
                return Err(errno(libc::ENOENT));
            }
            // The mount root: one directory per layer, resumable by slot.
            for (s, l) in m.layers.map.range(offset.saturating_sub(2) as Slot..) {
                if out.len() >= max {
                    break;
                }
                out.push(DirEntry {
                    name: l.id.clone(),
                    ino: node_of(*s, ROOT_INO),
                    kind: S_IFDIR,
                    offset: *s as u64 + 3,
                });
            }
            return Ok(out);
        }
        let tree = tree_of(&m, slot)?;
        let i = tree.get(ino).ok_or(errno(libc::ENOENT))?;
        let d = i.dir().ok_or(errno(libc::ENOTDIR))?;
        for (c, name) in d.by_cookie.range(offset.max(2) + 1..) {
            if out.len() >= max {
                break;
            }
            let Some(&(child, _)) = d.entries.get(name) else {
                continue;
            };
            let kind = tree.get(child).map(|c| c.attr.kind()).unwrap_or(S_IFREG);
            out.push(DirEntry {
                name: name.clone(),
                ino: node_of(slot, child),
                kind,
                offset: *c,
            });
        }
        Ok(out)
    }

    pub fn setattr(&self, node: Node, s: SetAttr) -> Result<Stat> {
        let _op = self
            .inner
            .stats
            .meta_op(node, crate::stats::MetaOp::Setattr);
        let _fl = s.size.map(|_| self.file_lock(node));
        let _g = _fl.as_ref().map(|l| l.lock());
        if let Some(size) = s.size {
            // Bytes past EOF in the last block are kept zero on disk: zero the tail of the new
            // last block first (through the write path, so an inherited block is copied).
            let cur = self.getattr(node)?;
            if cur.attr.is_reg() && size < cur.attr.size && size % BLOCK != 0 {
                let end = (size / BLOCK + 1) * BLOCK;
                let end = end.min(cur.attr.size);
                if self.is_mapped(node, size / BLOCK)? && end > size {
                    self.write_locked(node, size, &vec![0u8; (end - size) as usize])?;
                }
            }
        }
        self.change(node, |t, ino| {
            let mut a = t.attr(ino)?;
            let now = Time::now();
            if let Some(mode) = s.mode {
                a.mode = (a.mode & S_IFMT) | (mode & 0o7777);
            }
            if let Some(uid) = s.uid {
                a.uid = uid;
            }
            if let Some(gid) = s.gid {
                a.gid = gid;
            }
            if s.kill_suidgid {
                a.mode &= !libc::S_ISUID;
                if a.mode & 0o010 != 0 {
                    a.mode &= !libc::S_ISGID;
                }
            }
            if let Some(size) = s.size {
                if a.is_dir() {
                    return Err(errno(libc::EISDIR));
                }
                if !a.is_reg() {
                    return Err(errno(libc::EINVAL));
                }
                if size > MAX_FILE_SIZE {
                    return Err(errno(libc::EFBIG));
                }
                if size < a.size {
                    let first_gone = size.div_ceil(BLOCK);
                    t.rec(Record::Unmap {
                        ino,
                        lblk: first_gone,
                        len: u64::MAX - first_gone,
                    })?;
                }
                a.size = size;
                a.mtime = now;
            }
            if let Some(x) = s.atime {
                a.atime = x;
            }
            if let Some(x) = s.mtime {
                a.mtime = x;
            }
            a.ctime = s.ctime.unwrap_or(now);
            t.set_attr(ino, a)?;
            t.stat(ino)
        })
    }

    /// Whether logical block `lblk` of a file has a block behind it.
    fn is_mapped(&self, node: Node, lblk: u64) -> Result<bool> {
        self.with_tree(node, |t, ino| {
            Ok(t.get(ino)
                .and_then(|i| i.extents())
                .and_then(|x| x.lookup(lblk))
                .is_some())
        })
    }

    fn file_lock(&self, node: Node) -> Arc<Mutex<()>> {
        self.inner
            .file_locks
            .lock()
            .entry(node)
            .or_default()
            .clone()
    }

    fn read_block_sync(&self, pblk: u64) -> Result<AlignedBuf> {
        let mut buf = AlignedBuf::zeroed(1);
        if self.inner.cache.get(pblk, &mut buf) {
            return Ok(buf);
        }
        self.inner
            .ring
            .run_sync(Op::Read, pblk * BLOCK, buf)
            .map_err(|e| self.inner.io_failed("read", pblk, e, false))
    }

    /// The kernel took `n` more references to `node` (a lookup, create or readdirplus entry).
    pub fn inc_ref(&self, node: Node, n: u64) {
        *self.inner.meta.lock().refs.entry(node).or_insert(0) += n;
    }

    /// The kernel dropped `n` references (FUSE forget). An unlinked inode with no references
    /// left is deleted.
    pub fn forget(&self, node: Node, n: u64) {
        let delete = {
            let mut m = self.inner.meta.lock();
            let Some(c) = m.refs.get_mut(&node) else {
                return;
            };
            *c = c.saturating_sub(n);
            if *c > 0 {
                return;
            }
            m.refs.remove(&node);
            let (slot, ino) = split(node);
            matches!(m.layers.get(slot), Some(l) if l.state == LayerState::Active
                && matches!(l.tree.get(ino), Some(i) if i.attr.nlink == 0 && ino != ROOT_INO))
        };
        if delete {
            let r = self.change(node, |t, ino| {
                let n = t.node(ino);
                if matches!(t.inode(ino), Ok(i) if i.attr.nlink == 0) && !t.m.refs.contains_key(&n)
                {
                    t.m.dirty.remove(&n);
                    t.rec(Record::DelInode { ino })?;
                }
                Ok(())
            });
            if let Err(e) = r {
                log::warn!("could not delete unlinked inode {node}: {e}");
            }
            self.inner.file_locks.lock().remove(&node);
        }
    }

    pub fn statfs(&self) -> StatFs {
        let m = self.inner.meta.lock();
        let files: u64 = m
            .layers
            .map
            .values()
            .map(|l| l.tree.inodes.len() as u64)
            .sum();
        StatFs {
            blocks: m.alloc.total(),
            bfree: m.alloc.free(),
            bavail: m.alloc.available(),
            files: files + m.alloc.available(),
            ffree: m.alloc.available(),
            bsize: BLOCK_SIZE as u32,
            namelen: MAX_NAME as u32,
        }
    }

    pub fn getxattr(&self, node: Node, name: &[u8]) -> Result<Name> {
        if split(node).0 == 0 {
            return Err(errno(libc::ENODATA));
        }
        self.with_tree(node, |t, ino| {
            let i = t.get(ino).ok_or(errno(libc::ENOENT))?;
            i.xattrs.get(name).cloned().ok_or(errno(libc::ENODATA))
        })
    }

    pub fn listxattr(&self, node: Node) -> Result<Vec<u8>> {
        if split(node).0 == 0 {
            return Ok(Vec::new());
        }
        self.with_tree(node, |t, ino| {
            let i = t.get(ino).ok_or(errno(libc::ENOENT))?;
            let mut out = Vec::new();
            for k in i.xattrs.keys() {
                out.extend_from_slice(k);
                out.push(0);
            }
            Ok(out)
        })
    }

    pub fn setxattr(&self, node: Node, name: &[u8], value: &[u8], flags: i32) -> Result<()> {
        let _op = self
            .inner
            .stats
            .meta_op(node, crate::stats::MetaOp::Setxattr);
        if name.is_empty() || name.len() > MAX_NAME {
            return Err(errno(libc::ERANGE));
        }
        if value.len() > MAX_XATTR_VALUE {
            return Err(errno(libc::E2BIG));
        }
        if name.starts_with(b"system.") {
            return Err(errno(libc::EOPNOTSUPP));
        }
        self.change(node, |t, ino| {
            let exists = t.inode(ino)?.xattrs.contains_key(name);
            if flags & libc::XATTR_CREATE != 0 && exists {
                return Err(errno(libc::EEXIST));
            }
            if flags & libc::XATTR_REPLACE != 0 && !exists {
                return Err(errno(libc::ENODATA));
            }
            t.rec(Record::SetXattr {
                ino,
                name: Arc::from(name),
                value: Arc::from(value),
            })?;
            t.touch_ctime(ino, Time::now())
        })
    }

    pub fn removexattr(&self, node: Node, name: &[u8]) -> Result<()> {
        let _op = self
            .inner
            .stats
            .meta_op(node, crate::stats::MetaOp::Removexattr);
        self.change(node, |t, ino| {
            if !t.inode(ino)?.xattrs.contains_key(name) {
                return Err(errno(libc::ENODATA));
            }
            t.rec(Record::RmXattr {
                ino,
                name: Arc::from(name),
            })?;
            t.touch_ctime(ino, Time::now())
        })
    }

    /// SEEK_DATA / SEEK_HOLE.
    pub fn lseek(&self, node: Node, offset: u64, whence: i32) -> Result<u64> {
        self.with_tree(node, |t, ino| {
            let i = t.get(ino).ok_or(errno(libc::ENOENT))?;
            let size = i.attr.size;
            if offset >= size {
                return Err(errno(libc::ENXIO));
            }
            let x = i.extents().ok_or(errno(libc::EINVAL))?;
            let nblk = size.div_ceil(BLOCK);
            let start = offset / BLOCK;
            for r in x.runs(start, nblk - start) {
                let at = (r.lblk * BLOCK).max(offset);
                match (whence, r.pblk) {
                    (libc::SEEK_DATA, Some(_)) => return Ok(at),
                    (libc::SEEK_HOLE, None) => return Ok(at.min(size)),
                    _ => {}
                }
            }
            match whence {
                libc::SEEK_DATA => Err(errno(libc::ENXIO)),
                libc::SEEK_HOLE => Ok(size),
                _ => Err(errno(libc::EINVAL)),
            }
        })
    }

    /// Apply layer records built by `f` (under the metadata lock), then make them durable.
    fn layer_change<T>(&self, f: impl FnOnce(&Meta) -> Result<(Vec<Record>, T)>) -> Result<T> {
        if self.inner.poisoned.load(Ordering::SeqCst) {
            return Err(Error::Poisoned);
        }
        let out = {
            let mut m = self.inner.meta.lock();
            let (recs, out) = f(&m)?;
            let mut freed = Vec::new();
            for r in &recs {
                let mut mapped = Vec::new();
                m.layers.apply(0, r, &mut freed, &mut mapped)?;
                journal::encode_record(&mut m.pending, 0, r);
            }
            self.inner.stats.sync(m.layers.map.keys().copied());
            self.release_later(&mut m, freed);
            out
        };
        self.fsync_sync()?;
        Ok(out)
    }

    fn slot_named(m: &Meta, id: &str) -> Result<Slot> {
        m.layers
            .slot_of(id.as_bytes())
            .ok_or_else(|| Error::NotFound(format!("layer {id:?} does not exist")))
    }

    fn check_new_id(m: &Meta, id: &str) -> Result<()> {
        crate::layer::check_id(id.as_bytes())?;
        if m.layers.slot_of(id.as_bytes()).is_some() {
            return Err(Error::Exists(format!("layer {id:?} already exists")));
        }
        if m.layers.next_slot as u64 >= (1 << (64 - INO_BITS)) - 1 {
            return Err(Error::Busy("no free layer slots".into()));
        }
        Ok(())
    }

    /// A new, empty, active base layer.
    pub fn layer_create(&self, id: &str, labels: BTreeMap<String, String>) -> Result<LayerInfo> {
        let labels = label_list(&labels)?;
        let (uid, gid) = crate::sys::ids();
        let slot = self.layer_change(|m| {
            Self::check_new_id(m, id)?;
            let slot = m.layers.next_slot.max(1);
            let owner = m.layers.next_owner.max(1);
            let created = Time::now();
            let id: Name = Arc::from(id.as_bytes());
            let mut recs = vec![Record::LayerNew {
                slot,
                id,
                parent: None,
                state: LayerState::Active,
                owner,
                created,
                uid,
                gid,
            }];
            if !labels.is_empty() {
                recs.push(Record::LayerLabels { slot, labels });
            }
            Ok((recs, slot))
        })?;
        self.layer_info_slot(slot)
    }

    /// A new active or view layer sharing the whole tree of committed layer `parent`: O(1).
    pub fn layer_clone(
        &self,
        parent: &str,
        id: &str,
        state: LayerState,
        labels: BTreeMap<String, String>,
    ) -> Result<LayerInfo> {
        if state == LayerState::Committed {
            return Err(Error::Invalid("a clone is active or a view".into()));
        }
        let labels = label_list(&labels)?;
        let slot = self.layer_change(|m| {
            let p = Self::slot_named(m, parent)?;
            if m.layers.get(p).map(|l| l.state) != Some(LayerState::Committed) {
                return Err(Error::Busy(format!(
                    "layer {parent:?} is not committed; only committed layers can be cloned"
                )));
            }
            Self::check_new_id(m, id)?;
            let slot = m.layers.next_slot.max(1);
            let owner = m.layers.next_owner.max(1);
            let id: Name = Arc::from(id.as_bytes());
            let mut recs = vec![Record::LayerNew {
                slot,
                id,
                parent: Some(p),
                state,
                owner,
                created: Time::now(),
                uid: 0,
                gid: 0,
            }];
            if !labels.is_empty() {
                recs.push(Record::LayerLabels { slot, labels });
            }
            Ok((recs, slot))
        })?;
        self.layer_info_slot(slot)
    }

    /// Freeze an active layer: it becomes committed and may have children.
    pub fn layer_commit(&self, id: &str) -> Result<LayerInfo> {
        self.layer_commit_labeled(id, None)
    }

    /// [`Engine::layer_commit`], replacing the layer's labels in the same journal commit when
    /// `labels` is given (the containerd snapshotter renames a key to its committed name this
    /// way: a crash leaves either the active key or the committed name, never a mix).
    pub fn layer_commit_labeled(
        &self,
        id: &str,
        labels: Option<BTreeMap<String, String>>,
    ) -> Result<LayerInfo> {
        let labels = labels.as_ref().map(label_list).transpose()?;
        let slot = self.layer_change(|m| {
            let s = Self::slot_named(m, id)?;
            match m.layers.get(s).map(|l| l.state) {
                Some(LayerState::Active) => {}
                Some(st) => {
                    return Err(Error::Busy(format!(
                        "layer {id:?} is {}, not active",
                        st.as_str()
                    )))
                }
                None => return Err(Error::NotFound(format!("layer {id:?} does not exist"))),
            }
            let mut recs = vec![Record::LayerState {
                slot: s,
                state: LayerState::Committed,
            }];
            if let Some(labels) = labels {
                recs.push(Record::LayerLabels { slot: s, labels });
            }
            Ok((recs, s))
        })?;
        self.layer_info_slot(slot)
    }

    /// Freeze the current state of active layer `id` into a new committed layer `new_parent`
    /// (which takes its place in the chain), in O(1); `id` stays active on top of it.
    pub fn layer_snapshot(&self, id: &str, new_parent: &str) -> Result<LayerInfo> {
        let slot = self.layer_change(|m| {
            let s = Self::slot_named(m, id)?;
            if m.layers.get(s).map(|l| l.state) != Some(LayerState::Active) {
                return Err(Error::Busy(format!("layer {id:?} is not active")));
            }
            Self::check_new_id(m, new_parent)?;
            let new_slot = m.layers.next_slot.max(1);
            let new_owner = m.layers.next_owner.max(1);
            let rec = Record::LayerSnapshot {
                slot: s,
                new_slot,
                new_id: Arc::from(new_parent.as_bytes()),
                new_owner,
                created: Time::now(),
            };
            Ok((vec![rec], new_slot))
        })?;
        self.layer_info_slot(slot)
    }

    /// Be told when a layer is removed (at most one listener).
    pub fn set_layer_listener(&self, f: LayerListener) {
        *self.inner.layer_listener.lock() = Some(f);
    }

    /// Remove a leaf layer; the blocks it owns return to the free pool.
    pub fn layer_remove(&self, id: &str) -> Result<()> {
        self.layer_change(|m| {
            let s = Self::slot_named(m, id)?;
            let kids = m.layers.children(s);
            if !kids.is_empty() {
                let names: Vec<String> = kids
                    .iter()
                    .filter_map(|k| m.layers.get(*k))
                    .map(|l| lossy(&l.id))
                    .collect();
                return Err(Error::Busy(format!(
                    "layer {id:?} has children: {}",
                    names.join(", ")
                )));
            }
            Ok((vec![Record::LayerRemove { slot: s }], ()))
        })?;
        if let Some(f) = self.inner.layer_listener.lock().as_ref() {
            f(id);
        }
        Ok(())
    }

    pub fn layer_set_labels(
        &self,
        id: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<LayerInfo> {
        let labels = label_list(&labels)?;
        let slot = self.layer_change(|m| {
            let s = Self::slot_named(m, id)?;
            Ok((vec![Record::LayerLabels { slot: s, labels }], s))
        })?;
        self.layer_info_slot(slot)
    }

    pub fn layer_list(&self) -> Vec<LayerInfo> {
        let m = self.inner.meta.lock();
        m.layers
            .map
            .keys()
            .filter_map(|s| layer_info(&m.layers, *s).ok())
            .collect()
    }

    pub fn layer_stat(&self, id: &str) -> Result<LayerInfo> {
        let m = self.inner.meta.lock();
        layer_info(&m.layers, Self::slot_named(&m, id)?)
    }

    fn layer_info_slot(&self, slot: Slot) -> Result<LayerInfo> {
        let m = self.inner.meta.lock();
        layer_info(&m.layers, slot)
    }

    /// Read-only access to every layer (under the metadata lock: keep `f` short; clone the
    /// trees, which costs a pointer copy, to work on them outside).
    pub fn with_layers<R>(&self, f: impl FnOnce(&Layers) -> R) -> R {
        f(&self.inner.meta.lock().layers)
    }

    /// The node of a layer's root directory.
    pub fn layer_root(&self, id: &str) -> Result<Node> {
        let m = self.inner.meta.lock();
        Ok(node_of(Self::slot_named(&m, id)?, ROOT_INO))
    }

    /// Read up to `size` bytes at `offset`; `cb` runs on the I/O thread (or here on a cache hit).
    pub fn read(&self, node: Node, offset: u64, size: u32, cb: ReadCb) {
        let (cb, lstats) = self.inner.stats.track_read(node, cb);
        let plan = self.with_tree(node, |t, ino| {
            let i = t.get(ino).ok_or(errno(libc::ENOENT))?;
            if i.attr.is_dir() {
                return Err(errno(libc::EISDIR));
            }
            let x = i.extents().ok_or(errno(libc::EINVAL))?;
            let fsize = i.attr.size;
            if offset >= fsize || size == 0 {
                return Ok(None);
            }
            let end = (offset + size as u64).min(fsize);
            let b0 = offset / BLOCK;
            let b1 = end.div_ceil(BLOCK);
            Ok(Some((x.runs(b0, b1 - b0), b0, end)))
        });
        let (runs, b0, end) = match plan {
            Err(e) => return cb(Err(e)),
            Ok(None) => return cb(Ok(&[])),
            Ok(Some(p)) => p,
        };
        let c = &self.inner.counters;
        c.read_ops.fetch_add(1, Ordering::Relaxed);
        c.read_bytes.fetch_add(end - offset, Ordering::Relaxed);
        let nblocks = (end.div_ceil(BLOCK) - b0) as usize;
        // Streaming reads bypass the cache (they would only evict what small reads share).
        let fill = end - offset <= crate::cache::FILL_MAX_BYTES;
        let skip = (offset - b0 * BLOCK) as usize;
        let len = (end - offset) as usize;
        // Blocks still to fetch from the device: (index in buffer, physical block, count).
        let mut out = AlignedBuf::zeroed(nblocks);
        let mut fetch: Vec<(usize, u64, usize)> = Vec::new();
        let mapped: u64 = runs
            .iter()
            .filter(|r| r.pblk.is_some())
            .map(|r| r.len)
            .sum();
        for r in runs {
            let Some(p) = r.pblk else { continue };
            for k in 0..r.len {
                let idx = (r.lblk - b0 + k) as usize;
                let pb = p + k;
                if fill
                    && self
                        .inner
                        .cache
                        .get(pb, &mut out[idx * BLOCK_SIZE..(idx + 1) * BLOCK_SIZE])
                {
                    continue;
                }
                match fetch.last_mut() {
                    Some(f) if f.0 + f.2 == idx && f.1 + f.2 as u64 == pb => f.2 += 1,
                    _ => fetch.push((idx, pb, 1)),
                }
            }
        }
        if let Some(l) = &lstats {
            let missed: u64 = fetch.iter().map(|f| f.2 as u64).sum();
            l.cache_hits.fetch_add(mapped - missed, Ordering::Relaxed);
            l.cache_misses.fetch_add(missed, Ordering::Relaxed);
        }
        if fetch.is_empty() {
            return cb(Ok(&out[skip..skip + len]));
        }
        // Fast path: one device read covering the whole request, reply from its buffer.
        let inner = self.inner.clone();
        let t_dev = self.inner.stats.device_start();
        if fetch.len() == 1 && fetch[0].0 == 0 && fetch[0].2 == nblocks {
            let pb = fetch[0].1;
            let epochs: Vec<u64> = (0..if fill { nblocks as u64 } else { 0 })
                .map(|k| inner.cache.epoch(pb + k))
                .collect();
            self.inner.ring.submit(vec![IoReq {
                op: Op::Read,
                offset: pb * BLOCK,
                buf: out,
                done: Box::new(move |r| match r {
                    Ok(buf) => {
                        inner.stats.device_done(false, t_dev);
                        for (k, ep) in epochs.iter().enumerate() {
                            inner.cache.fill(
                                pb + k as u64,
                                &buf[k * BLOCK_SIZE..(k + 1) * BLOCK_SIZE],
                                *ep,
                            );
                        }
                        cb(Ok(&buf[skip..skip + len]))
                    }
                    Err(e) => cb(Err(inner.io_failed("read", pb, e, false))),
                }),
            }]);
            return;
        }
        struct Gather {
            out: AlignedBuf,
            left: usize,
            err: Option<Error>,
            cb: Option<ReadCb>,
        }
        let g = Arc::new(Mutex::new(Gather {
            out,
            left: fetch.len(),
            err: None,
            cb: Some(cb),
        }));
        let reqs = fetch
            .into_iter()
            .map(|(idx, pb, n)| {
                let g = g.clone();
                let inner = inner.clone();
                let epochs: Vec<u64> = (0..if fill { n as u64 } else { 0 })
                    .map(|k| inner.cache.epoch(pb + k))
                    .collect();
                IoReq {
                    op: Op::Read,
                    offset: pb * BLOCK,
                    buf: AlignedBuf::zeroed(n),
                    done: Box::new(move |r| {
                        let mut g = g.lock();
                        match r {
                            Ok(buf) => {
                                inner.stats.device_done(false, t_dev);
                                for (k, ep) in epochs.iter().enumerate() {
                                    inner.cache.fill(
                                        pb + k as u64,
                                        &buf[k * BLOCK_SIZE..(k + 1) * BLOCK_SIZE],
                                        *ep,
                                    );
                                }
                                g.out[idx * BLOCK_SIZE..(idx + n) * BLOCK_SIZE]
                                    .copy_from_slice(&buf);
                            }
                            Err(e) => g.err = Some(inner.io_failed("read", pb, e, false)),
                        }
                        g.left -= 1;
                        if g.left == 0 {
                            let cb = g.cb.take();
                            if let Some(cb) = cb {
                                match g.err.take() {
                                    Some(e) => cb(Err(e)),
                                    None => cb(Ok(&g.out[skip..skip + len])),
                                }
                            }
                        }
                    }),
                }
            })
            .collect();
        self.inner.ring.submit(reqs);
    }

    /// Write `data` at `offset`; `cb` gets the byte count when the data is on the device.
    pub fn write(&self, node: Node, offset: u64, data: &[u8], kill_suidgid: bool, cb: Cb<u32>) {
        let cb = self.inner.stats.track_write(node, cb);
        self.write_impl(node, offset, data, kill_suidgid, cb, true)
    }

    /// Blocking write by a caller that already holds the file's lock.
    fn write_locked(&self, node: Node, offset: u64, data: &[u8]) -> Result<u32> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let cb: Cb<u32> = Box::new(move |r| {
            let _ = tx.send(r);
        });
        self.write_impl(node, offset, data, false, cb, false);
        rx.recv().unwrap_or(Err(Error::Poisoned))
    }

    fn write_impl(
        &self,
        node: Node,
        offset: u64,
        data: &[u8],
        kill_suidgid: bool,
        cb: Cb<u32>,
        take_lock: bool,
    ) {
        if data.is_empty() {
            cb(Ok(0));
            return;
        }
        let end = offset.saturating_add(data.len() as u64);
        if end > MAX_FILE_SIZE {
            cb(Err(errno(libc::EFBIG)));
            return;
        }
        let lock = self.file_lock(node);
        let guard = take_lock.then(|| lock.lock());
        let b0 = offset / BLOCK;
        let b1 = end.div_ceil(BLOCK);
        let n = (b1 - b0) as usize;
        // Edge blocks only partly covered by the write need their old contents.
        let head_partial = offset % BLOCK != 0;
        let tail_partial = end % BLOCK != 0;
        let edges = self.with_tree(node, |t, ino| {
            let i = t.get(ino).ok_or(errno(libc::ENOENT))?;
            let x = i.extents().ok_or(errno(if i.attr.is_dir() {
                libc::EISDIR
            } else {
                libc::EINVAL
            }))?;
            let mut v = Vec::new();
            if head_partial {
                v.push((0usize, x.lookup(b0)));
            }
            if tail_partial && (n > 1 || !head_partial) {
                v.push((n - 1, x.lookup(b1 - 1)));
            }
            Ok(v)
        });
        let edges = match edges {
            Ok(e) => e,
            Err(e) => {
                cb(Err(e));
                return;
            }
        };
        let mut buf = AlignedBuf::zeroed(n);
        for (idx, p) in edges {
            if let Some(p) = p {
                match self.read_block_sync(p) {
                    Ok(old) => buf[idx * BLOCK_SIZE..(idx + 1) * BLOCK_SIZE].copy_from_slice(&old),
                    Err(e) => {
                        cb(Err(e));
                        return;
                    }
                }
            }
        }
        let skip = (offset - b0 * BLOCK) as usize;
        buf[skip..skip + data.len()].copy_from_slice(data);
        // Map holes to new blocks, update size and times, all under the metadata lock. When
        // the device is full but blocks are waiting for a commit to be freed, commit once and
        // retry.
        let mut plan = self.plan_write(node, b0, n, end, kill_suidgid);
        if matches!(plan, Err(Error::NoSpace))
            && self.inner.meta.lock().alloc.pending() > 0
            && self.fsync_sync().is_ok()
        {
            plan = self.plan_write(node, b0, n, end, kill_suidgid);
        }
        let (phys, epoch) = match plan {
            Ok(p) => p,
            Err(e) => {
                cb(Err(e));
                return;
            }
        };
        self.submit_write(phys, epoch, b0, buf, data.len(), guard, cb);
    }

    /// Under the metadata lock: give new blocks to the holes of `[b0, b0+n)` and to blocks
    /// this layer does not own (copy-on-write), append their records, update size and times.
    /// Returns the physical pieces to write and the data epoch.
    #[allow(clippy::type_complexity)]
    fn plan_write(
        &self,
        node: Node,
        b0: u64,
        n: usize,
        end: u64,
        kill_suidgid: bool,
    ) -> Result<(Vec<(u64, u64, u64)>, Option<usize>)> {
        self.change(node, |t, ino| {
            let epoch = t.m.epoch;
            let owner = t.layer()?.owner;
            let i = t.inode(ino)?;
            let mut a = i.attr;
            let x = i.extents().ok_or(errno(libc::EINVAL))?;
            let runs = x.runs(b0, n as u64);
            // A large write over blocks scattered on the device (what small copy-on-write
            // writes leave behind) would go out as many small device writes: it goes to new,
            // contiguous blocks instead, and the layer's old blocks are freed when the
            // remapping commits (the mapping records free them, as for any overwrite).
            let relocate =
                n as u64 >= RELOCATE_MIN_BLOCKS && runs.len() as u64 * RELOCATE_MIN_RUN > n as u64;
            let fresh = |r: &Run| relocate || r.pblk.is_none() || r.owner != owner;
            let need: u64 = runs.iter().filter(|r| fresh(r)).map(|r| r.len).sum();
            let mut phys: Vec<(u64, u64, u64)> = Vec::new(); // (logical, physical, len)
            let allocating = need > 0;
            if allocating {
                let hint = x.lookup(b0.saturating_sub(1)).map(|p| p + 1);
                let mut got =
                    t.m.alloc
                        .alloc(need, hint)
                        .ok_or(Error::NoSpace)?
                        .into_iter();
                let mut cur = got.next();
                for r in runs {
                    if !fresh(&r) {
                        phys.push((r.lblk, r.pblk.unwrap_or(0), r.len));
                        continue;
                    }
                    let mut l = r.lblk;
                    let mut left = r.len;
                    while left > 0 {
                        let Some((pb, pn)) = cur.as_mut() else {
                            return Err(Error::NoSpace);
                        };
                        let take = left.min(*pn);
                        phys.push((l, *pb, take));
                        t.rec(Record::Map {
                            ino,
                            lblk: l,
                            pblk: *pb,
                            len: take,
                            owner,
                        })?;
                        *pb += take;
                        *pn -= take;
                        l += take;
                        left -= take;
                        if *pn == 0 {
                            cur = got.next();
                        }
                    }
                    if r.pblk.is_some() && r.owner != owner {
                        self.inner.stats.cow(t.slot, r.len);
                        self.inner
                            .counters
                            .cow_blocks
                            .fetch_add(r.len, Ordering::Relaxed);
                    }
                }
            } else {
                phys = runs
                    .into_iter()
                    .map(|r| (r.lblk, r.pblk.unwrap_or(0), r.len))
                    .collect();
            }
            let now = Time::now();
            a.mtime = now;
            a.ctime = now;
            if kill_suidgid {
                a.mode &= !libc::S_ISUID;
                if a.mode & 0o010 != 0 {
                    a.mode &= !libc::S_ISGID;
                }
            }
            if end > a.size || allocating || kill_suidgid {
                a.size = a.size.max(end);
                t.set_attr(ino, a)?;
            } else {
                // In-place overwrite: the new times are journaled at the next commit.
                let slot = t.slot;
                let l = t.m.layers.map.get_mut(&slot).ok_or(errno(libc::ENOENT))?;
                l.tree.inodes.get_mut(&ino).ok_or(errno(libc::ENOENT))?.attr = a;
                t.m.dirty.insert(node);
            }
            // Every data write belongs to the epoch it was planned in: a commit waits for its
            // epoch's writes before the blocks it frees can be reused (so an in-place write
            // still in flight never lands on a block that changed hands), and allocating
            // writes are on the device before the records that map them.
            self.inner.data_inflight[epoch].fetch_add(1, Ordering::SeqCst);
            Ok((phys, Some(epoch)))
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn submit_write(
        &self,
        phys: Vec<(u64, u64, u64)>,
        epoch: Option<usize>,
        b0: u64,
        buf: AlignedBuf,
        data_len: usize,
        guard: Option<parking_lot::MutexGuard<'_, ()>>,
        cb: Cb<u32>,
    ) {
        // Merge physically contiguous pieces into device writes.
        let mut ios: Vec<(usize, u64, usize)> = Vec::new();
        for (l, p, len) in phys {
            let idx = (l - b0) as usize;
            match ios.last_mut() {
                Some(io) if io.0 + io.2 == idx && io.1 + io.2 as u64 == p => io.2 += len as usize,
                _ => ios.push((idx, p, len as usize)),
            }
        }
        for (idx, p, len) in &ios {
            for k in 0..*len {
                let i = idx + k;
                self.inner
                    .cache
                    .write(p + k as u64, &buf[i * BLOCK_SIZE..(i + 1) * BLOCK_SIZE]);
            }
        }
        drop(guard);
        let c = &self.inner.counters;
        c.write_ops.fetch_add(1, Ordering::Relaxed);
        c.write_bytes.fetch_add(data_len as u64, Ordering::Relaxed);
        let total = data_len as u32;
        let inner = self.inner.clone();
        let t_dev = self.inner.stats.device_start();
        let finish = move |res: Result<()>| {
            if let Some(e) = epoch {
                inner.data_inflight[e].fetch_sub(1, Ordering::SeqCst);
                let _l = inner.data_cv.0.lock();
                inner.data_cv.1.notify_all();
            }
            cb(res.map(|_| total));
        };
        if ios.len() == 1 {
            let (_, p, _) = ios[0];
            let inner = self.inner.clone();
            self.inner.ring.submit(vec![IoReq {
                op: Op::Write,
                offset: p * BLOCK,
                buf,
                done: Box::new(move |r| {
                    inner.stats.device_done(true, t_dev);
                    finish(
                        r.map(|_| ())
                            .map_err(|e| inner.io_failed("write", p, e, true)),
                    )
                }),
            }]);
            return;
        }
        struct Join {
            left: usize,
            err: Option<Error>,
            finish: Option<Box<dyn FnOnce(Result<()>) + Send>>,
        }
        let j = Arc::new(Mutex::new(Join {
            left: ios.len(),
            err: None,
            finish: Some(Box::new(finish)),
        }));
        let reqs = ios
            .into_iter()
            .map(|(idx, p, len)| {
                let mut b = AlignedBuf::zeroed(len);
                b.copy_from_slice(&buf[idx * BLOCK_SIZE..(idx + len) * BLOCK_SIZE]);
                let j = j.clone();
                let inner = self.inner.clone();
                IoReq {
                    op: Op::Write,
                    offset: p * BLOCK,
                    buf: b,
                    done: Box::new(move |r| {
                        inner.stats.device_done(true, t_dev);
                        let mut j = j.lock();
                        if let Err(e) = r {
                            j.err = Some(inner.io_failed("write", p, e, true));
                        }
                        j.left -= 1;
                        if j.left == 0 {
                            let e = j.err.take();
                            if let Some(f) = j.finish.take() {
                                drop(j);
                                f(match e {
                                    Some(e) => Err(e),
                                    None => Ok(()),
                                });
                            }
                        }
                    }),
                }
            })
            .collect();
        self.inner.ring.submit(reqs);
    }

    /// Blocking write helper (copy_file_range, fallocate).
    pub fn write_sync(&self, node: Node, offset: u64, data: &[u8]) -> Result<u32> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.write(
            node,
            offset,
            data,
            false,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.recv().unwrap_or(Err(Error::Poisoned))
    }

    /// Blocking read helper.
    pub fn read_sync(&self, node: Node, offset: u64, size: u32) -> Result<Vec<u8>> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.read(
            node,
            offset,
            size,
            Box::new(move |r| {
                let _ = tx.send(r.map(|d| d.to_vec()));
            }),
        );
        rx.recv().unwrap_or(Err(Error::Poisoned))
    }

    pub fn copy_file_range(
        &self,
        ino_in: Node,
        off_in: u64,
        ino_out: Node,
        off_out: u64,
        len: u64,
    ) -> Result<u64> {
        let mut done = 0u64;
        while done < len {
            let chunk = (len - done).min(1 << 20) as u32;
            let data = self.read_sync(ino_in, off_in + done, chunk)?;
            if data.is_empty() {
                break;
            }
            self.write_sync(ino_out, off_out + done, &data)?;
            done += data.len() as u64;
            if data.len() < chunk as usize {
                break;
            }
        }
        Ok(done)
    }

    /// fallocate: mode 0 / KEEP_SIZE allocate (zeroed), PUNCH_HOLE|KEEP_SIZE, ZERO_RANGE.
    pub fn fallocate(&self, node: Node, offset: u64, len: u64, mode: i32) -> Result<()> {
        let _op = self
            .inner
            .stats
            .meta_op(node, crate::stats::MetaOp::Fallocate);
        let keep = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let punch = mode & libc::FALLOC_FL_PUNCH_HOLE != 0;
        let zero = mode & libc::FALLOC_FL_ZERO_RANGE != 0;
        if mode
            & !(libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE)
            != 0
        {
            return Err(errno(libc::EOPNOTSUPP));
        }
        if punch && !keep {
            return Err(errno(libc::EOPNOTSUPP));
        }
        if len == 0 {
            return Err(errno(libc::EINVAL));
        }
        let end = offset.checked_add(len).ok_or(errno(libc::EFBIG))?;
        if end > MAX_FILE_SIZE {
            return Err(errno(libc::EFBIG));
        }
        let st = self.getattr(node)?;
        if !st.attr.is_reg() {
            return Err(errno(if st.attr.is_dir() {
                libc::EISDIR
            } else {
                libc::ENODEV
            }));
        }
        if punch || zero {
            let size = st.attr.size;
            let pend = if punch { end.min(size) } else { end };
            if offset < pend {
                self.zero_range(node, offset, pend)?;
            }
            if zero && !keep && end > size {
                self.setattr(
                    node,
                    SetAttr {
                        size: Some(end),
                        ..Default::default()
                    },
                )?;
            }
            return Ok(());
        }
        // Allocate: write zeros into holes only.
        let holes: Vec<(u64, u64)> = self.with_tree(node, |t, ino| {
            let i = t.get(ino).ok_or(errno(libc::ENOENT))?;
            let x = i.extents().ok_or(errno(libc::EINVAL))?;
            let b0 = offset / BLOCK;
            let b1 = end.div_ceil(BLOCK);
            Ok(x.runs(b0, b1 - b0)
                .into_iter()
                .filter(|r| r.pblk.is_none())
                .map(|r| (r.lblk, r.len))
                .collect())
        })?;
        let needed: u64 = holes.iter().map(|h| h.1).sum();
        if needed > self.statfs().bavail {
            return Err(Error::NoSpace);
        }
        let size = st.attr.size;
        for (l, n) in holes {
            let mut pos = l * BLOCK;
            let hend = (l + n) * BLOCK;
            while pos < hend {
                let chunk = (hend - pos).min(1 << 20);
                let zeros = vec![0u8; chunk as usize];
                self.write_sync(node, pos, &zeros)?;
                pos += chunk;
            }
        }
        // write_sync extended the size to whole blocks; set the size fallocate asks for.
        let new_size = if keep { size } else { size.max(end) };
        let cur = self.getattr(node)?.attr.size;
        if cur != new_size {
            self.setattr_size_keep_blocks(node, new_size)?;
        }
        Ok(())
    }

    /// Set i_size without unmapping blocks past it (fallocate KEEP_SIZE).
    fn setattr_size_keep_blocks(&self, node: Node, size: u64) -> Result<()> {
        self.change(node, |t, ino| {
            let mut a = t.attr(ino)?;
            a.size = size;
            a.ctime = Time::now();
            t.set_attr(ino, a)
        })
    }

    /// Make `[start, end)` read as zeros: whole blocks unmapped, partial ones rewritten.
    fn zero_range(&self, node: Node, start: u64, end: u64) -> Result<()> {
        let b_first_full = start.div_ceil(BLOCK);
        let b_end_full = end / BLOCK;
        if b_first_full < b_end_full {
            let lock = self.file_lock(node);
            let _g = lock.lock();
            self.change(node, |t, ino| {
                t.rec(Record::Unmap {
                    ino,
                    lblk: b_first_full,
                    len: b_end_full - b_first_full,
                })?;
                let mut a = t.attr(ino)?;
                let now = Time::now();
                a.mtime = now;
                a.ctime = now;
                t.set_attr(ino, a)
            })?;
        }
        // Partial edges: write zeros where data exists.
        let mut edges = Vec::new();
        if start % BLOCK != 0 {
            edges.push((start, (start.div_ceil(BLOCK) * BLOCK).min(end)));
        }
        if end % BLOCK != 0 && (end / BLOCK * BLOCK) >= start && end / BLOCK != start / BLOCK {
            edges.push((end / BLOCK * BLOCK, end));
        } else if end % BLOCK != 0 && start % BLOCK == 0 && end / BLOCK == start / BLOCK {
            edges.push((start, end));
        }
        for (s, e) in edges {
            if self.is_mapped(node, s / BLOCK)? && e > s {
                let size = self.getattr(node)?.attr.size;
                let e2 = e.min(size.max(s));
                if e2 > s {
                    self.write_sync(node, s, &vec![0u8; (e2 - s) as usize])?;
                }
            }
        }
        Ok(())
    }

    /// fsync/fdatasync: `cb` runs when everything written so far (data and metadata) is durable.
    pub fn fsync(&self, cb: Cb<()>) {
        if self.inner.poisoned.load(Ordering::SeqCst) {
            return cb(Err(Error::Poisoned));
        }
        let mut q = self.inner.commitq.lock();
        if q.stop {
            drop(q);
            return cb(self.inner.commit());
        }
        q.waiters.push(cb);
        drop(q);
        self.inner.commit_cv.notify_one();
    }

    pub fn fsync_sync(&self) -> Result<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.fsync(Box::new(move |r| {
            let _ = tx.send(r);
        }));
        rx.recv().unwrap_or(Err(Error::Poisoned))
    }

    /// Force a checkpoint now.
    pub fn checkpoint(&self) -> Result<()> {
        self.inner.checkpoint(false)
    }
}

/// Largest file: 2^40 blocks is beyond any device; cap at 8 EiB / 4 KiB blocks sensible for u64 math.
pub const MAX_FILE_SIZE: u64 = 1 << 50;

impl Inner {
    fn io_failed(&self, op: &'static str, pblk: u64, e: std::io::Error, poison: bool) -> Error {
        self.counters.io_errors.fetch_add(1, Ordering::Relaxed);
        if poison && !self.poisoned.swap(true, Ordering::SeqCst) {
            log::error!(
                "device {op} failed at block {pblk}: {e}; the file system is now read-only"
            );
        } else if !poison {
            log::error!("device {op} failed at block {pblk}: {e}");
        }
        Error::io(op, pblk * BLOCK, e)
    }

    fn poison(&self, e: Error) -> Error {
        if !self.poisoned.swap(true, Ordering::SeqCst) {
            log::error!("{e}; the file system is now read-only");
        }
        e
    }

    fn commit_loop(self: Arc<Self>) {
        loop {
            let waiters = {
                let mut q = self.commitq.lock();
                if q.waiters.is_empty() && !q.stop {
                    self.commit_cv.wait_for(&mut q, self.opts.commit_interval);
                }
                if q.stop && q.waiters.is_empty() {
                    return;
                }
                std::mem::take(&mut q.waiters)
            };
            let r = self.commit();
            for w in waiters {
                w(match &r {
                    Ok(()) => Ok(()),
                    Err(_) => Err(Error::Poisoned),
                });
            }
            if r.is_ok() {
                let half = { self.jpos.lock().sb.journal_blocks / 2 };
                let used = self.jpos.lock().used;
                if used > half {
                    if let Err(e) = self.checkpoint(false) {
                        log::error!("checkpoint failed: {e}");
                    }
                }
            }
        }
    }

    /// Take pending records and frees, flip the data epoch; wait for the old epoch's data.
    fn seal(&self, snapshot: bool) -> (Vec<u8>, Vec<(u64, u64)>, Option<Layers>) {
        let (bytes, frees, tree, epoch) = {
            let mut m = self.meta.lock();
            let dirty: Vec<Node> = m.dirty.drain().collect();
            for node in dirty {
                let (slot, ino) = split(node);
                if let Some(i) = m.layers.get(slot).and_then(|l| l.tree.get(ino)) {
                    let rec = Record::SetAttr { ino, attr: i.attr };
                    journal::encode_record(&mut m.pending, slot, &rec);
                }
            }
            let bytes = std::mem::take(&mut m.pending.buf);
            let frees = m.alloc.take_pending();
            let tree = snapshot.then(|| m.layers.clone());
            let e = m.epoch;
            m.epoch ^= 1;
            (bytes, frees, tree, e)
        };
        let mut l = self.data_cv.0.lock();
        while self.data_inflight[epoch].load(Ordering::SeqCst) > 0 {
            self.data_cv.1.wait_for(&mut l, Duration::from_millis(50));
        }
        (bytes, frees, tree)
    }

    /// Group commit: data flushed, then the journal chunk, then flushed again.
    fn commit(&self) -> Result<()> {
        if self.poisoned.load(Ordering::SeqCst) {
            return Err(Error::Poisoned);
        }
        let t_commit = Instant::now();
        let (bytes, frees, _) = self.seal(false);
        self.dev
            .flush()
            .map_err(|e| self.poison(Error::io("flush", 0, e)))?;
        if !bytes.is_empty() {
            let mut j = self.jpos.lock();
            let chunk = journal::encode_chunk(j.seq, self.fsid, &bytes);
            let nb = (chunk.len() / BLOCK_SIZE) as u64;
            let jend = j.sb.journal_start + j.sb.journal_blocks;
            let mut at = j.pos;
            let mut wasted = 0;
            if at + nb > jend {
                wasted = jend - at;
                at = j.sb.journal_start;
            }
            if j.used + wasted + nb + 1 > j.sb.journal_blocks {
                // No room: a checkpoint makes these records durable instead.
                drop(j);
                self.meta.lock().alloc_return(frees);
                return self.checkpoint(false);
            }
            write_blocks(self.dev.as_ref(), at, &chunk).map_err(|e| self.poison(e))?;
            self.dev
                .flush()
                .map_err(|e| self.poison(Error::io("flush", 0, e)))?;
            j.pos = at + nb;
            if j.pos >= jend {
                j.pos = j.sb.journal_start;
            }
            j.seq += 1;
            j.used += wasted + nb;
            self.counters
                .journal_commits
                .fetch_add(1, Ordering::Relaxed);
            self.counters
                .journal_bytes
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            self.stats.journal_commit.observe_since(t_commit);
        }
        let mut m = self.meta.lock();
        for (b, n) in frees {
            m.alloc.release(b, n);
        }
        Ok(())
    }

    /// Write the whole tree to new blocks and flip the superblock to it.
    fn checkpoint(&self, clean: bool) -> Result<()> {
        if self.poisoned.load(Ordering::SeqCst) {
            return Err(Error::Poisoned);
        }
        let t0 = Instant::now();
        let (_, frees, tree) = self.seal(true);
        let Some(tree) = tree else { return Ok(()) };
        let bytes = tree.encode();
        let n = bytes.len().div_ceil(journal::CKPT_PAYLOAD).max(1) as u64;
        let runs = {
            let mut m = self.meta.lock();
            m.alloc.alloc_any(n, None)
        };
        let Some(runs) = runs else {
            self.meta.lock().alloc_return(frees);
            return Err(self.poison(Error::NoSpace));
        };
        let first = runs[0].0;
        let res = (|| -> Result<Vec<u64>> {
            let (first, len, crc) = write_checkpoint(self.dev.as_ref(), &bytes, first, &runs)?;
            self.dev.flush().map_err(|e| Error::io("flush", 0, e))?;
            let mut j = self.jpos.lock();
            let mut sb = j.sb.clone();
            sb.generation += 1;
            sb.ckpt_block = first;
            sb.ckpt_blocks = n;
            sb.ckpt_bytes = len;
            sb.ckpt_crc = crc;
            sb.replay_block = j.pos;
            sb.replay_seq = j.seq;
            sb.clean = clean;
            let slot = SB_SLOTS[(sb.generation % 2) as usize];
            write_blocks(self.dev.as_ref(), slot, &sb.encode())?;
            self.dev.flush().map_err(|e| Error::io("flush", 0, e))?;
            j.sb = sb;
            j.used = 0;
            let new_blocks: Vec<u64> = runs.iter().flat_map(|(b, n)| *b..*b + *n).collect();
            Ok(std::mem::replace(&mut j.ckpt_blocks, new_blocks))
        })();
        match res {
            Ok(old_blocks) => {
                let mut m = self.meta.lock();
                for b in old_blocks {
                    m.alloc.release(b, 1);
                }
                for (b, n) in frees {
                    m.alloc.release(b, n);
                }
                // Room for the next checkpoint: twice this one, plus what half a journal of
                // records can add to it.
                let jb = self.jpos.lock().sb.journal_blocks;
                m.alloc.set_reserve(2 * n + jb / 2 + 64);
                self.counters.checkpoints.fetch_add(1, Ordering::Relaxed);
                self.stats.checkpoint.observe_since(t0);
                self.counters
                    .checkpoint_nanos
                    .fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => Err(self.poison(e)),
        }
    }
}

impl Meta {
    /// Put frees taken by a seal back (the commit that took them did not happen).
    fn alloc_return(&mut self, frees: Vec<(u64, u64)>) {
        for (b, n) in frees {
            self.alloc.defer_free(b, n);
        }
    }
}
