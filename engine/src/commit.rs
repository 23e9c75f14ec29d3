//! Durability: fsync waiters queue here and the commit thread serves them all with one group
//! commit (data flushed, the pending records written as one journal chunk, flushed again);
//! without fsync it commits every `commit_interval`, and writes a checkpoint when half the
//! journal is used.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::api::Cb;
use crate::checkpoint::CheckpointKind;
use crate::device::write_blocks;
use crate::engine::{CommitQueue, Engine, Inner, Meta};
use crate::error::{Error, Result};
use crate::format::*;
use crate::journal;
use crate::layer::Layers;
use crate::meta::Record;
use crate::node::{split, Node};

/// What a seal takes besides the pending records and frees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Seal {
    RecordsOnly,
    /// Also a copy of every layer (O(1): persistent maps), for a checkpoint.
    WithSnapshot,
}

impl Engine {
    /// fsync/fdatasync: `cb` runs when everything written so far (data and metadata) is durable.
    pub fn fsync(&self, cb: Cb<()>) {
        self.queue_for_commit(cb, |q| &mut q.waiters)
    }

    /// `cb` runs when every change made so far is written to the journal, so a daemon that
    /// dies (kill -9) loses none of it; not flushed, so a power loss may (fsync for that).
    /// Concurrent callers share one journal write, as fsync callers do.
    pub fn persist(&self, cb: Cb<()>) {
        self.queue_for_commit(cb, |q| &mut q.written)
    }

    /// Queue `cb` in the commit queue's list `list` for the commit thread's next commit (at
    /// once, on this thread, once the thread has stopped).
    fn queue_for_commit(&self, cb: Cb<()>, list: fn(&mut CommitQueue) -> &mut Vec<Cb<()>>) {
        if self.inner.poison.is_set() {
            return cb(Err(Error::Poisoned));
        }
        let mut q = self.inner.commitq.lock();
        if q.stop {
            drop(q);
            return cb(self.inner.commit());
        }
        list(&mut q).push(cb);
        drop(q);
        self.inner.commit_cv.notify_one();
    }

    pub fn fsync_sync(&self) -> Result<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.fsync(Box::new(move |r| {
            let _ = tx.send(r);
        }));
        crate::local_io::wait_recv(&rx).unwrap_or(Err(Error::Poisoned))
    }

    /// Force a checkpoint now.
    pub fn checkpoint(&self) -> Result<()> {
        self.inner.checkpoint(CheckpointKind::InUse)
    }
}

/// If the commit thread dies by a panic, latch the file system read-only and answer every
/// queued fsync with the error: no caller waits for a commit that will never come.
struct CommitThreadGuard<'a>(&'a Inner);

impl Drop for CommitThreadGuard<'_> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        self.0
            .poison
            .latch(Error::Unusable("the commit thread panicked".into()));
        let waiters = {
            let mut q = self.0.commitq.lock();
            q.stop = true;
            let mut all = std::mem::take(&mut q.waiters);
            all.append(&mut q.written);
            all
        };
        for w in waiters {
            w(Err(Error::Poisoned));
        }
    }
}

impl Inner {
    pub(crate) fn commit_loop(self: Arc<Self>) {
        let _guard = CommitThreadGuard(&self);
        loop {
            let (waiters, written) = {
                let mut q = self.commitq.lock();
                if q.waiters.is_empty() && q.written.is_empty() && !q.stop && !q.soon {
                    self.commit_cv.wait_for(&mut q, self.opts.commit_interval);
                }
                q.soon = false;
                if q.stop && q.waiters.is_empty() && q.written.is_empty() {
                    return;
                }
                (
                    std::mem::take(&mut q.waiters),
                    std::mem::take(&mut q.written),
                )
            };
            // Only `persist` callers: the records need writing, not the trailing flush.
            let flush = !waiters.is_empty() || written.is_empty();
            let r = self.commit_with(flush);
            for w in waiters.into_iter().chain(written) {
                w(match &r {
                    Ok(()) => Ok(()),
                    Err(_) => Err(Error::Poisoned),
                });
            }
            if r.is_ok() {
                let half = { self.jpos.lock().sb.journal_blocks / 2 };
                let used = self.jpos.lock().used;
                if used > half {
                    if let Err(e) = self.checkpoint(CheckpointKind::InUse) {
                        log::error!("checkpoint failed: {e}");
                    }
                }
            }
        }
    }

    /// Ask the commit thread for a commit now (not waiting for it): writers are using up the
    /// free blocks faster than the interval's commits give back those they free.
    pub(crate) fn commit_soon(&self) {
        self.commitq.lock().soon = true;
        self.commit_cv.notify_one();
    }

    /// Take pending records and frees, flip the data epoch; wait for the old epoch's data.
    pub(crate) fn seal(&self, what: Seal) -> (Vec<u8>, Vec<(u64, u64)>, Option<Layers>) {
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
            let tree = (what == Seal::WithSnapshot).then(|| m.layers.clone());
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
    pub(crate) fn commit(&self) -> Result<()> {
        self.commit_with(true)
    }

    /// A group commit. Without `flush_after` (only [`Engine::persist`] callers: a daemon
    /// crash must not lose the records, a power loss may) and on a device that keeps
    /// completed writes for the rest of the boot ([`Device::boot_id`]), the chunk is an
    /// *early* one: written after the data under it completed but without any flush, and
    /// its frees are held until a flushing commit (format.md, "Early chunks"). Otherwise the
    /// data is flushed first, then the chunk is written, then flushed again if asked.
    pub(crate) fn commit_with(&self, flush_after: bool) -> Result<()> {
        self.poison.check()?;
        let t_commit = Instant::now();
        let (bytes, frees, _) = self.seal(Seal::RecordsOnly);
        // A data write of the sealed epoch failed: its records must not become durable.
        self.poison.check()?;
        if bytes.is_empty() && !flush_after {
            // Nothing to write, and no one asked for durability.
            self.meta.lock().alloc_return(frees);
            return Ok(());
        }
        let early = match (flush_after, self.dev.boot_id()) {
            (false, Some(boot)) => Some(boot),
            _ => None,
        };
        if early.is_none() {
            self.dev
                .flush()
                .map_err(|e| self.poison.latch(Error::io("flush", 0, e)))?;
        }
        let mut j = self.jpos.lock();
        // Early chunks at the journal's end are vouched for by the next ordinary chunk (the
        // flush above made them and their data durable), even one without records.
        if !bytes.is_empty() || (early.is_none() && j.early_tail) {
            let chunk = match &early {
                Some(boot) => journal::encode_early_chunk(j.seq, self.fsid, boot, &bytes),
                None => journal::encode_chunk(j.seq, self.fsid, &bytes),
            };
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
                return self.checkpoint(CheckpointKind::InUse);
            }
            if early.is_some() {
                self.dev
                    .write_cached(&chunk, at * BLOCK_SIZE as u64)
                    .map_err(|e| {
                        self.poison
                            .latch(Error::io("journal write", at * BLOCK_SIZE as u64, e))
                    })?;
            } else {
                write_blocks(self.dev.as_ref(), at, &chunk).map_err(|e| self.poison.latch(e))?;
            }
            if flush_after {
                self.dev
                    .flush()
                    .map_err(|e| self.poison.latch(Error::io("flush", 0, e)))?;
            }
            j.pos = at + nb;
            if j.pos >= jend {
                j.pos = j.sb.journal_start;
            }
            j.seq += 1;
            j.used += wasted + nb;
            j.early_tail = early.is_some();
            self.counters
                .journal_commits
                .fetch_add(1, Ordering::Relaxed);
            self.counters
                .journal_bytes
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            if early.is_some() {
                self.counters.early_commits.fetch_add(1, Ordering::Relaxed);
            }
            self.stats.journal_commit.observe_since(t_commit);
        }
        drop(j);
        let mut m = self.meta.lock();
        if early.is_some() {
            // Not reusable before a flush: a power loss may drop the early chunk, and the
            // blocks would then still belong to the files it freed them from.
            m.alloc_return(frees);
        } else {
            m.alloc.release_sealed(frees);
        }
        Ok(())
    }
}

impl Meta {
    /// Put frees taken by a seal back (the commit that took them did not happen).
    pub(crate) fn alloc_return(&mut self, frees: Vec<(u64, u64)>) {
        self.alloc.defer_sealed(frees);
    }
}
