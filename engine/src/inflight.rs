//! Data writes the device has not finished yet, by physical block.
//!
//! A write is answered as soon as its data is copied here and submitted (unless too much is
//! already in flight, see [`Inflight::over_limit`]); durability is what fsync waits for (the
//! commit waits for every data write of its epoch). Until the device confirms a write, this
//! table is where its blocks' current contents are: a reader that finds a block mapped looks
//! here first, so it can never read what the block held before (another file's freed data),
//! and a read-modify-write of a partly covered block starts from the newest contents.
//!
//! A block has at most one write in flight: every write goes to newly allocated blocks, and
//! blocks are reused only after the commit that freed them, which waited for their writes.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::device::AlignedBuf;
use crate::format::BLOCK_SIZE;

struct Entry {
    /// Blocks in this run.
    n: u64,
    buf: Arc<AlignedBuf>,
    /// Block index in `buf` of the run's first block.
    first: usize,
}

#[derive(Default)]
pub(crate) struct Inflight {
    /// First physical block of a run → the run. Runs never overlap.
    runs: Mutex<BTreeMap<u64, Entry>>,
    /// Runs in the table (a reader skips the lock when it is zero).
    count: AtomicU64,
    /// Bytes in the table.
    bytes: AtomicU64,
}

impl Inflight {
    /// Register `[pblk, pblk + n)` as being written from blocks `first..` of `buf`.
    pub(crate) fn insert(&self, pblk: u64, n: u64, buf: Arc<AlignedBuf>, first: usize) {
        self.runs.lock().insert(pblk, Entry { n, buf, first });
        self.count.fetch_add(1, Ordering::SeqCst);
        self.bytes
            .fetch_add(n * BLOCK_SIZE as u64, Ordering::Relaxed);
    }

    /// The device finished the run that starts at `pblk`.
    pub(crate) fn remove(&self, pblk: u64) {
        let mut runs = self.runs.lock();
        if let Some(e) = runs.remove(&pblk) {
            self.count.fetch_sub(1, Ordering::SeqCst);
            self.bytes
                .fetch_sub(e.n * BLOCK_SIZE as u64, Ordering::Relaxed);
        }
        drop(runs);
    }

    /// More than `limit` bytes are waiting for the device: the next write should be answered
    /// only when its own data is on the device (back-pressure on a writer faster than the disk).
    pub(crate) fn over_limit(&self, limit: u64) -> bool {
        self.bytes.load(Ordering::Relaxed) > limit
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.count.load(Ordering::SeqCst) == 0
    }

    /// Copy the in-flight contents of blocks `[pblk, pblk + n)` into `out` (block `k` of the
    /// range into `out[k * 4096..]`); returns which blocks were copied.
    pub(crate) fn copy_out(&self, pblk: u64, n: u64, out: &mut [u8]) -> Vec<bool> {
        let mut got = vec![false; n as usize];
        if self.is_empty() {
            return got;
        }
        let runs = self.runs.lock();
        // The run that starts at or before `pblk`, and every run starting inside the range.
        let start = runs
            .range(..=pblk)
            .next_back()
            .map(|(k, _)| *k)
            .unwrap_or(pblk);
        for (&p, e) in runs.range(start..pblk + n) {
            let lo = p.max(pblk);
            let hi = (p + e.n).min(pblk + n);
            for b in lo..hi {
                let src = e.first + (b - p) as usize;
                let dst = (b - pblk) as usize;
                out[dst * BLOCK_SIZE..(dst + 1) * BLOCK_SIZE]
                    .copy_from_slice(&e.buf[src * BLOCK_SIZE..(src + 1) * BLOCK_SIZE]);
                got[dst] = true;
            }
        }
        got
    }

    fn overlaps(runs: &BTreeMap<u64, Entry>, pblk: u64, n: u64) -> bool {
        if let Some((p, e)) = runs.range(..=pblk).next_back() {
            if p + e.n > pblk {
                return true;
            }
        }
        runs.range(pblk..pblk + n).next().is_some()
    }

    /// Whether any of `ranges` (physical block, count) is in flight.
    pub(crate) fn any_in_flight(&self, ranges: &[(u64, u64)]) -> bool {
        if self.is_empty() {
            return false;
        }
        let runs = self.runs.lock();
        ranges.iter().any(|&(p, n)| Self::overlaps(&runs, p, n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buf(blocks: usize, fill: u8) -> Arc<AlignedBuf> {
        let mut b = AlignedBuf::zeroed(blocks);
        b.fill(fill);
        Arc::new(b)
    }

    #[test]
    fn copy_out_finds_runs_that_start_before_and_inside_the_range() {
        let t = Inflight::default();
        t.insert(10, 3, buf(4, 1), 1); // blocks 10, 11, 12
        t.insert(14, 1, buf(1, 2), 0); // block 14
        let mut out = vec![0u8; 4 * BLOCK_SIZE];
        let got = t.copy_out(11, 4, &mut out); // 11..15
        assert_eq!(got, vec![true, true, false, true]);
        assert!(out[..2 * BLOCK_SIZE].iter().all(|&b| b == 1));
        assert!(out[2 * BLOCK_SIZE..3 * BLOCK_SIZE].iter().all(|&b| b == 0));
        assert!(out[3 * BLOCK_SIZE..].iter().all(|&b| b == 2));
        assert!(t.any_in_flight(&[(12, 1)]));
        assert!(!t.any_in_flight(&[(13, 1)]));
        t.remove(10);
        assert!(!t.any_in_flight(&[(11, 2)]));
        t.remove(14);
        assert!(t.is_empty());
        assert!(!t.over_limit(0));
    }
}
