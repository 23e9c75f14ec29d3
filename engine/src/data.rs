//! File contents: read (block cache, then the device through the ring, every device block
//! checked against its checksum), write (always to new blocks: copy-on-write of inherited
//! blocks and of the layer's own, so a block's checksum never changes while it is mapped),
//! copy_file_range, fallocate, SEEK_DATA/SEEK_HOLE.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::api::{Cb, KillPriv, ReadCb, SetAttr, WriteTimes};
use crate::crc::{block_crc, read_block_crcs};
use crate::device::{AlignedBuf, ReadDest};
use crate::engine::{tree_of, Engine, Inner};
use crate::error::{errno, Error, Result};
use crate::format::*;
use crate::limits::Limits;
use crate::meta::*;
use crate::node::{split, Node};
use crate::ring::{IoBuf, IoReq, Op};
use crate::sched::IoClass;
use crate::stats::LayerStats;
use crate::txn::CAPS_XATTR;

/// Largest file size: 1 PiB (2^50 bytes, 2^38 blocks), beyond any device, and small enough
/// that offset arithmetic in bytes never overflows a u64.
pub const MAX_FILE_SIZE: u64 = 1 << 50;

/// Whether a write takes the file's lock or runs under one its caller holds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FileLock {
    Take,
    Held,
}

/// Where a planned write goes.
struct WritePlan {
    /// Device writes: (first block index in the write's buffer, physical block, blocks).
    ios: Vec<(usize, u64, usize)>,
    /// The data epoch the write belongs to (a commit waits for its epoch's writes).
    epoch: EpochToken,
    /// Whose I/O it is (for the scheduler).
    class: IoClass,
}

/// What planning a write found.
enum Planned {
    Ready(WritePlan),
    /// Only the first this-many blocks fit under the layer's space limit.
    Shorten(u64),
}

/// Where the blocks of a read came from, to name them when one fails its checksum.
struct ReadCtx {
    inner: Arc<Inner>,
    slot: Slot,
    ino: Ino,
    /// Logical block of index 0 of the read's buffer.
    b0: u64,
    /// The expected checksum of each block of the read (None: a hole, or no checksum).
    crcs: Vec<Option<u32>>,
    stats: Option<Arc<LayerStats>>,
}

impl ReadCtx {
    /// Check `buf`, read from the device at physical block `pblk` into the read's blocks
    /// `idx..`, against the checksums. Every bad block is counted and logged; the first one
    /// is the error. `good[k]` says whether block `k` of `buf` passed (the cache takes only
    /// those).
    fn verify(&self, buf: &[u8], idx: usize, pblk: u64, good: &mut Vec<bool>) -> Result<()> {
        let mut err = None;
        good.clear();
        for (k, got) in read_block_crcs(buf).enumerate() {
            let want = self.crcs.get(idx + k).copied().flatten();
            let ok = want == Some(got);
            good.push(ok);
            if !ok {
                let e = self.inner.checksum_failed(
                    self.slot,
                    self.ino,
                    self.b0 + (idx + k) as u64,
                    pblk + k as u64,
                    want,
                    got,
                    self.stats.as_deref(),
                );
                err.get_or_insert(e);
            }
        }
        err.map_or(Ok(()), Err)
    }
}

/// Membership of a read or write in a data epoch: a commit that seals the epoch waits until
/// every member is done (dropped), so blocks it frees are never reused under an I/O that
/// still addresses them.
pub(crate) struct EpochToken {
    inner: Arc<Inner>,
    epoch: usize,
}

impl EpochToken {
    /// Join `epoch` (call under the metadata lock, where the epoch is read).
    pub(crate) fn join(inner: &Arc<Inner>, epoch: usize) -> EpochToken {
        inner.data_inflight[epoch].fetch_add(1, Ordering::SeqCst);
        EpochToken {
            inner: inner.clone(),
            epoch,
        }
    }
}

impl Drop for EpochToken {
    fn drop(&mut self) {
        self.inner.data_inflight[self.epoch].fetch_sub(1, Ordering::SeqCst);
        let _l = self.inner.data_cv.0.lock();
        self.inner.data_cv.1.notify_all();
    }
}

impl Engine {
    /// Whether logical block `lblk` of a file has a block behind it.
    pub(crate) fn is_mapped(&self, node: Node, lblk: u64) -> Result<bool> {
        self.with_tree(node, |t, ino| {
            Ok(t.get(ino)
                .and_then(|i| i.extents())
                .and_then(|x| x.lookup(lblk))
                .is_some())
        })
    }

    pub(crate) fn file_lock(&self, node: Node) -> Arc<Mutex<()>> {
        self.inner
            .file_locks
            .lock()
            .entry(node)
            .or_default()
            .clone()
    }

    /// Blocks the layer of `node` may still allocate under its space limit.
    pub(crate) fn quota_room(&self, node: Node) -> Result<u64> {
        let m = self.inner.meta.lock();
        let l = m.layers.get(split(node).0).ok_or(errno(libc::ENOENT))?;
        Ok(Limits::of(&l.labels)
            .bytes
            .map(|b| (b / BLOCK).saturating_sub(l.owned))
            .unwrap_or(u64::MAX))
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

    /// Read up to `size` bytes at `offset`; `cb` runs on the I/O thread (or here when every
    /// block came from memory). A block's newest contents come from the writes still in
    /// flight, then the block cache (both hold only data that was written or verified), then
    /// the device, where every block is checked against its checksum before it reaches the
    /// cache or the reply: a mismatch fails the read with EIO.
    pub fn read(&self, node: Node, offset: u64, size: u32, cb: ReadCb) {
        self.read_to(node, offset, size, None, cb)
    }

    /// [`Engine::read`], assembling the data in `dest` when the read starts on a block
    /// boundary and its blocks fit (`cb` then gets a slice of `dest`).
    pub(crate) fn read_to(
        &self,
        node: Node,
        offset: u64,
        size: u32,
        dest: Option<ReadDest>,
        cb: ReadCb,
    ) {
        let (cb, lstats) = self.inner.stats.track_read(node, cb);
        let (slot, ino) = split(node);
        // Plan under the metadata lock, and join the current data epoch there: a commit that
        // frees a block this read maps waits for the read before the block can be reused.
        let plan = {
            let m = self.inner.meta.lock();
            (|| {
                let i = tree_of(&m, slot)?.get(ino).ok_or(errno(libc::ENOENT))?;
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
                let runs = x.runs(b0, b1 - b0);
                let mut crcs = Vec::with_capacity((b1 - b0) as usize);
                for r in &runs {
                    match r.pblk {
                        Some(p) => m.layers.crcs.get_run(p, r.len, &mut crcs),
                        None => crcs.extend(std::iter::repeat_n(None, r.len as usize)),
                    }
                }
                let token = EpochToken::join(&self.inner, m.epoch);
                // Under the lock that found the blocks: a block freed from here on (its
                // invalidation happens under this lock too) is not put in the cache by this
                // read (see the cache module's doc).
                let epochs = self.inner.cache.epochs();
                Ok(Some((runs, crcs, b0, end, token, epochs)))
            })()
        };
        let (runs, crcs, b0, end, token, epochs) = match plan {
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
        // The caller's memory (`dest`), or a pooled buffer (no allocation per read); every
        // block of it is written below: a hole's zeros, a write in flight, a cached block, or
        // the device's data (or the read fails), so nothing a previous user left in it
        // reaches the reply.
        let mut out = match dest.filter(|_| skip == 0).and_then(|d| d.buf(nblocks)) {
            Some(b) => b,
            None => AlignedBuf::recycled(nblocks),
        };
        let mut fetch: Vec<(usize, u64, usize)> = Vec::new();
        let (mut mapped, mut from_memory) = (0u64, 0u64);
        for r in runs {
            let at = ((r.lblk - b0) as usize) * BLOCK_SIZE;
            let Some(p) = r.pblk else {
                out[at..at + r.len as usize * BLOCK_SIZE].fill(0);
                continue;
            };
            mapped += r.len;
            let pending = self.inner.inflight.copy_out(
                p,
                r.len,
                &mut out[at..at + r.len as usize * BLOCK_SIZE],
            );
            for k in 0..r.len {
                let idx = (r.lblk - b0 + k) as usize;
                let pb = p + k;
                if pending[k as usize] {
                    from_memory += 1;
                    continue;
                }
                if fill
                    && self
                        .inner
                        .cache
                        .get(pb, &mut out[idx * BLOCK_SIZE..(idx + 1) * BLOCK_SIZE])
                {
                    from_memory += 1;
                    continue;
                }
                match fetch.last_mut() {
                    Some(f) if f.0 + f.2 == idx && f.1 + f.2 as u64 == pb => f.2 += 1,
                    _ => fetch.push((idx, pb, 1)),
                }
            }
        }
        if let Some(l) = &lstats {
            l.cache_hits.fetch_add(from_memory, Ordering::Relaxed);
            l.cache_misses
                .fetch_add(mapped - from_memory, Ordering::Relaxed);
        }
        if fetch.is_empty() {
            drop(token);
            return cb(Ok(&out[skip..skip + len]));
        }
        let class = IoClass {
            slot,
            stats: lstats.clone(),
        };
        let inner = self.inner.clone();
        let ctx = Arc::new(ReadCtx {
            inner: inner.clone(),
            slot,
            ino,
            b0,
            crcs,
            stats: lstats,
        });
        let t_dev = self.inner.stats.device_start();
        // Fast path: one device read covering the whole request, reply from its buffer.
        if fetch.len() == 1 && fetch[0].0 == 0 && fetch[0].2 == nblocks {
            let pb = fetch[0].1;
            self.inner.ring.submit(vec![IoReq {
                op: Op::Read,
                offset: pb * BLOCK,
                buf: IoBuf::Owned(out),
                class,
                done: Box::new(move |r| {
                    drop(token);
                    match r.map(IoBuf::into_owned) {
                        Ok(Some(buf)) => {
                            inner.stats.device_done(false, t_dev);
                            let mut good = Vec::new();
                            let v = ctx.verify(&buf, 0, pb, &mut good);
                            if fill {
                                inner.cache.fill_verified(pb, &buf, &good, &epochs);
                            }
                            match v {
                                Ok(()) => cb(Ok(&buf[skip..skip + len])),
                                Err(e) => cb(Err(e)),
                            }
                        }
                        Ok(None) => cb(Err(errno(libc::EIO))),
                        Err(e) => cb(Err(inner.io_failed("read", pb, e, false))),
                    }
                }),
            }]);
            return;
        }
        struct Gather {
            out: AlignedBuf,
            left: usize,
            err: Option<Error>,
            cb: Option<ReadCb>,
            _token: EpochToken,
        }
        let g = Arc::new(Mutex::new(Gather {
            out,
            left: fetch.len(),
            err: None,
            cb: Some(cb),
            _token: token,
        }));
        let reqs = fetch
            .into_iter()
            .map(|(idx, pb, n)| {
                let g = g.clone();
                let inner = inner.clone();
                let ctx = ctx.clone();
                IoReq {
                    op: Op::Read,
                    offset: pb * BLOCK,
                    buf: IoBuf::Owned(AlignedBuf::recycled(n)),
                    class: class.clone(),
                    done: Box::new(move |r| {
                        // Checksums outside the lock: the pieces are checked in parallel.
                        let r = r.map(IoBuf::into_owned);
                        let mut good = Vec::new();
                        let v = match &r {
                            Ok(Some(buf)) => ctx.verify(buf, idx, pb, &mut good),
                            _ => Ok(()),
                        };
                        let mut g = g.lock();
                        match r {
                            Ok(Some(buf)) => {
                                inner.stats.device_done(false, t_dev);
                                if fill {
                                    inner.cache.fill_verified(pb, &buf, &good, &epochs);
                                }
                                match v {
                                    Ok(()) => g.out[idx * BLOCK_SIZE..(idx + n) * BLOCK_SIZE]
                                        .copy_from_slice(&buf),
                                    Err(e) => {
                                        g.err.get_or_insert(e);
                                    }
                                }
                            }
                            Ok(None) => g.err = Some(errno(libc::EIO)),
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

    /// Write `data` at `offset`. `cb` gets the byte count once the data is in the engine's
    /// table of writes in flight (readers see it from then on), or, when more than
    /// `Options::write_buffer_bytes` wait for the device, once it is on the device. Durability
    /// is fsync's: it waits for every write answered before it.
    pub fn write(
        &self,
        node: Node,
        offset: u64,
        data: &[u8],
        kill: KillPriv,
        times: WriteTimes,
        cb: Cb<u32>,
    ) {
        let cb = self.inner.stats.track_write(node, cb);
        self.write_impl(node, offset, data, (kill, times), cb, FileLock::Take)
    }

    /// Blocking write by a caller that already holds the file's lock.
    pub(crate) fn write_locked(&self, node: Node, offset: u64, data: &[u8]) -> Result<u32> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let cb: Cb<u32> = Box::new(move |r| {
            let _ = tx.send(r);
        });
        self.write_impl(
            node,
            offset,
            data,
            (KillPriv::NONE, WriteTimes::Set),
            cb,
            FileLock::Held,
        );
        crate::local_io::wait_recv(&rx).unwrap_or(Err(Error::Poisoned))
    }

    fn write_impl(
        &self,
        node: Node,
        offset: u64,
        data: &[u8],
        (kill, times): (KillPriv, WriteTimes),
        cb: Cb<u32>,
        lock_mode: FileLock,
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
        let guard = (lock_mode == FileLock::Take).then(|| lock.lock());
        let b0 = offset / BLOCK;
        let b1 = end.div_ceil(BLOCK);
        let n = (b1 - b0) as usize;
        // A block only partly covered by the write keeps its other bytes: read them first,
        // unless they all lie at or past end-of-file (zero on disk, and zero in `buf`), as
        // for an append.
        let head_partial = offset % BLOCK != 0;
        let tail_partial = end % BLOCK != 0;
        let (slot, ino) = split(node);
        let edges = {
            let m = self.inner.meta.lock();
            (|| {
                let i = tree_of(&m, slot)?.get(ino).ok_or(errno(libc::ENOENT))?;
                let x = i.extents().ok_or(errno(if i.attr.is_dir() {
                    libc::EISDIR
                } else {
                    libc::EINVAL
                }))?;
                let size = i.attr.size;
                let at = |l: u64| x.lookup(l).map(|p| (p, m.layers.crcs.get(p)));
                let mut v = Vec::new();
                if head_partial && b0 * BLOCK < size {
                    v.push((0usize, at(b0)));
                }
                if tail_partial && (n > 1 || v.is_empty()) && end < size {
                    v.push((n - 1, at(b1 - 1)));
                }
                Ok(v)
            })()
        };
        let edges = match edges {
            Ok(e) => e,
            Err(e) => {
                cb(Err(e));
                return;
            }
        };
        // Only the first and the last block can be partly covered by the write: what it does
        // not cover there is the block's current contents (read below) or zeros. Every other
        // byte is the caller's, so the buffer need not be zeroed first.
        let mut buf = AlignedBuf::recycled(n);
        if head_partial {
            buf[..BLOCK_SIZE].fill(0);
        }
        if tail_partial {
            buf[(n - 1) * BLOCK_SIZE..].fill(0);
        }
        for (idx, p) in edges {
            if let Some((p, crc)) = p {
                let at = (slot, ino, b0 + idx as u64);
                if let Err(e) = self.read_block_into(
                    p,
                    crc,
                    at,
                    &mut buf[idx * BLOCK_SIZE..(idx + 1) * BLOCK_SIZE],
                ) {
                    cb(Err(e));
                    return;
                }
            }
        }
        let skip = (offset - b0 * BLOCK) as usize;
        // The data, and the checksum of every block (computed before the metadata lock is
        // taken), block by block: each block is checksummed while it is still in the cache.
        let crcs = copy_with_crcs(&mut buf, skip, data);
        let buf = Arc::new(buf);
        // Map the range to new blocks, update size and times, all under the metadata lock.
        // When the device is full but blocks are waiting for a commit to be freed, commit
        // and retry (other writers may take the blocks a commit frees first: a few times).
        let mut commits = 0;
        let plan = loop {
            match self.plan_write(node, b0, n, end, (kill, times), &buf, &crcs) {
                Ok(Planned::Ready(p)) => break Ok(p),
                Ok(Planned::Shorten(blocks)) => {
                    // Write what fits (under the file lock we hold), as a short write.
                    let len = (blocks * BLOCK - skip as u64).min(data.len() as u64) as usize;
                    self.write_impl(
                        node,
                        offset,
                        &data[..len],
                        (kill, times),
                        cb,
                        FileLock::Held,
                    );
                    return;
                }
                Err(Error::NoSpace)
                    if commits < 8
                        && self.inner.meta.lock().alloc.coming() > 0
                        && self.fsync_sync().is_ok() =>
                {
                    commits += 1
                }
                Err(e) => break Err(e),
            }
        };
        match plan {
            Ok(p) => self.submit_write(p, buf, data.len(), guard, cb),
            Err(e) => cb(Err(e)),
        }
    }

    /// The newest contents of one mapped block (the edge of a partial write): from a write in
    /// flight or the cache (verified there), else from the device, checked against `crc`.
    /// `at` (layer slot, inode, logical block) names the block if it fails.
    fn read_block_into(
        &self,
        pblk: u64,
        crc: Option<u32>,
        at: (Slot, Ino, u64),
        out: &mut [u8],
    ) -> Result<()> {
        if self.inner.inflight.copy_out(pblk, 1, out)[0] || self.inner.cache.get(pblk, out) {
            return Ok(());
        }
        let buf = self
            .inner
            .ring
            .read_sync(pblk * BLOCK, AlignedBuf::zeroed(1))
            .map_err(|e| self.inner.io_failed("read", pblk, e, false))?;
        let got = block_crc(&buf);
        if crc != Some(got) {
            let stats = self.inner.stats.layer(at.0);
            return Err(self.inner.checksum_failed(
                at.0,
                at.1,
                at.2,
                pblk,
                crc,
                got,
                stats.as_deref(),
            ));
        }
        out.copy_from_slice(&buf);
        Ok(())
    }

    /// Under the metadata lock: give every block of `[b0, b0+n)` a new block on the device
    /// (holes, inherited blocks and the layer's own alike: a mapped block is never written
    /// again, so its checksum stays true until it is freed), append the `Map` records with
    /// their checksums (which free the layer's old blocks once they commit), update size and
    /// times, and enter the blocks in the table of writes in flight before the new mapping is
    /// visible.
    #[allow(clippy::too_many_arguments)]
    fn plan_write(
        &self,
        node: Node,
        b0: u64,
        n: usize,
        end: u64,
        (kill, times): (KillPriv, WriteTimes),
        buf: &Arc<AlignedBuf>,
        crcs: &[u32],
    ) -> Result<Planned> {
        self.change(node, |t, ino| {
            let epoch = t.m.epoch;
            let owner = t.layer()?.owner;
            let i = t.inode(ino)?;
            let mut a = i.attr;
            let x = i.extents().ok_or(errno(libc::EINVAL))?;
            let runs = x.runs(b0, n as u64);
            // Blocks the layer comes to own in addition to what it owns (holes and inherited
            // blocks; replacing its own blocks frees as many as it takes).
            let grows = |r: &Run| r.pblk.is_none() || r.owner != owner;
            let net: u64 = runs.iter().filter(|r| grows(r)).map(|r| r.len).sum();
            // The layer's space limit: a write that needs more new blocks than are left is
            // cut to the part that fits (a short write; the next one gets EDQUOT).
            let quota = Limits::of(&t.layer()?.labels).bytes.map(|b| b / BLOCK);
            if let Some(max) = quota {
                let room = max.saturating_sub(t.layer()?.owned);
                if net > room {
                    let (mut fit, mut used) = (0u64, 0u64);
                    for r in &runs {
                        if grows(r) {
                            if used + r.len > room {
                                fit += room - used;
                                break;
                            }
                            used += r.len;
                        }
                        fit += r.len;
                    }
                    return if fit == 0 {
                        Err(errno(libc::EDQUOT))
                    } else {
                        Ok(Planned::Shorten(fit))
                    };
                }
            }
            for r in &runs {
                if r.pblk.is_some() && r.owner != owner {
                    self.inner.stats.cow(t.slot, r.len);
                    self.inner
                        .counters
                        .cow_blocks
                        .fetch_add(r.len, Ordering::Relaxed);
                }
            }
            // New blocks next to where the block before the range now lives, so a file
            // written or rewritten in order stays contiguous.
            let hint = x.lookup(b0.saturating_sub(1)).map(|p| p + 1);
            let got = t.m.alloc.alloc(n as u64, hint).ok_or(Error::NoSpace)?;
            if t.m.alloc.pending() > t.m.alloc.available() {
                // The next commit would double the free space: do not wait a whole interval.
                self.inner.commit_soon();
            }
            let mut ios: Vec<(usize, u64, usize)> = Vec::new(); // (index in buf, physical, len)
            let mut idx = 0usize;
            for (pb, pn) in got {
                let k = pn as usize;
                t.rec(Record::Map {
                    ino,
                    lblk: b0 + idx as u64,
                    pblk: pb,
                    len: pn,
                    owner,
                    crcs: crcs[idx..idx + k].to_vec(),
                })?;
                ios.push((idx, pb, k));
                idx += k;
            }
            let set_times = times == WriteTimes::Set;
            if set_times {
                let now = Time::now();
                a.mtime = now;
                a.ctime = now;
            }
            let kill_suidgid = kill.suid_sgid && a.mode & (libc::S_ISUID | libc::S_ISGID) != 0;
            if kill_suidgid {
                a.mode &= !libc::S_ISUID;
                if a.mode & 0o010 != 0 {
                    a.mode &= !libc::S_ISGID;
                }
            }
            let had_caps = kill.caps && t.inode(ino)?.xattrs.contains_key(CAPS_XATTR);
            if had_caps {
                t.drop_capabilities(ino)?;
            }
            if end > a.size || net > 0 || kill_suidgid || had_caps {
                a.size = a.size.max(end);
                t.set_attr(ino, a)?;
            } else if set_times {
                // An overwrite: the new times are journaled at the next commit.
                let slot = t.slot;
                let l = t.m.layers.map.get_mut(&slot).ok_or(errno(libc::ENOENT))?;
                l.tree.inodes.get_mut(&ino).ok_or(errno(libc::ENOENT))?.attr = a;
                t.m.dirty.insert(node);
            }
            // Enter the blocks in the table of writes in flight while the lock still hides
            // the new mapping.
            for &(idx, p, len) in &ios {
                self.inner.inflight.insert(p, len as u64, buf.clone(), idx);
            }
            // Every data write belongs to the epoch it was planned in: a commit waits for its
            // epoch's writes, so the blocks are on the device before the records that map
            // them, and blocks it frees are never reused under a write still in flight.
            Ok(Planned::Ready(WritePlan {
                ios,
                epoch: EpochToken::join(&self.inner, epoch),
                class: IoClass {
                    slot: t.slot,
                    stats: self.inner.stats.layer(t.slot),
                },
            }))
        })
    }

    fn submit_write(
        &self,
        plan: WritePlan,
        buf: Arc<AlignedBuf>,
        data_len: usize,
        guard: Option<parking_lot::MutexGuard<'_, ()>>,
        cb: Cb<u32>,
    ) {
        // The blocks are new (never cached: a freed block leaves the cache when it is freed).
        let WritePlan { ios, epoch, class } = plan;
        drop(guard);
        let c = &self.inner.counters;
        c.write_ops.fetch_add(1, Ordering::Relaxed);
        c.write_bytes.fetch_add(data_len as u64, Ordering::Relaxed);
        let total = data_len as u32;
        // Answer now unless too much already waits for the device (then the completion
        // answers, which holds a writer faster than the disk back).
        let early = !self
            .inner
            .inflight
            .over_limit(self.inner.opts.write_buffer_bytes);
        let mut cb = Some(cb);
        let late_cb = if early { None } else { cb.take() };
        let inner = self.inner.clone();
        let t_dev = self.inner.stats.device_start();
        struct Join {
            left: usize,
            err: Option<Error>,
            cb: Option<Cb<u32>>,
            _epoch: EpochToken,
        }
        let j = Arc::new(Mutex::new(Join {
            left: ios.len(),
            err: None,
            cb: late_cb,
            _epoch: epoch,
        }));
        let reqs = ios
            .into_iter()
            .map(|(idx, p, len)| {
                let j = j.clone();
                let inner = inner.clone();
                IoReq {
                    op: Op::Write,
                    offset: p * BLOCK,
                    buf: IoBuf::Shared {
                        buf: buf.clone(),
                        first: idx,
                        n: len,
                    },
                    class: class.clone(),
                    done: Box::new(move |r| {
                        inner.stats.device_done(true, t_dev);
                        // A failed write latches the file system read-only: fsync reports it.
                        let r = r.map_err(|e| inner.io_failed("write", p, e, true));
                        inner.inflight.remove(p);
                        let mut j = j.lock();
                        if let Err(e) = r {
                            j.err = Some(e);
                        }
                        j.left -= 1;
                        if j.left == 0 {
                            let e = j.err.take();
                            let cb = j.cb.take();
                            drop(j);
                            if let Some(cb) = cb {
                                cb(match e {
                                    Some(e) => Err(e),
                                    None => Ok(total),
                                });
                            }
                        }
                    }),
                }
            })
            .collect();
        self.inner.ring.submit(reqs);
        if let Some(cb) = cb {
            cb(Ok(total));
        }
    }

    /// Blocking write helper (copy_file_range, fallocate).
    pub fn write_sync(&self, node: Node, offset: u64, data: &[u8]) -> Result<u32> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.write(
            node,
            offset,
            data,
            KillPriv::NONE,
            WriteTimes::Set,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        crate::local_io::wait_recv(&rx).unwrap_or(Err(Error::Poisoned))
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
        crate::local_io::wait_recv(&rx).unwrap_or(Err(Error::Poisoned))
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
        if needed > self.quota_room(node)? {
            return Err(errno(libc::EDQUOT));
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
}

/// Copy `data` into `buf` at byte `skip`, and return the checksum of each of `buf`'s blocks,
/// computing each one right after its block is complete.
fn copy_with_crcs(buf: &mut [u8], skip: usize, data: &[u8]) -> Vec<u32> {
    let end = skip + data.len();
    buf.chunks_mut(BLOCK_SIZE)
        .enumerate()
        .map(|(i, block)| {
            let lo = i * BLOCK_SIZE;
            let (s, e) = (lo.max(skip), (lo + BLOCK_SIZE).min(end));
            if s < e {
                block[s - lo..e - lo].copy_from_slice(&data[s - skip..e - skip]);
            }
            block_crc(block)
        })
        .collect()
}
