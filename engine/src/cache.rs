//! The block cache: file data cached once, keyed by physical block, shared by every file and
//! every layer. Reads of up to [`FILL_MAX_BYTES`] fill it; larger (streaming) reads bypass it,
//! as O_DIRECT bypasses a page cache. Bounded; CLOCK eviction per shard. It holds only blocks
//! whose checksum was verified, and a block leaves it when it is freed (a mapped block is
//! never written again).
//!
//! A read must not put back a block freed since it looked the block up: once the block is
//! reused, the stale copy would be returned for the new data. Blocks are freed (and
//! invalidated here) only under the metadata lock, so a read takes [`BlockCache::epochs`]
//! under that lock, where it finds its blocks, and [`BlockCache::fill`] refuses a block whose
//! shard was invalidated since. (Taken after the lock was released, the snapshot could already
//! include an invalidation of the read's own block: that read then cached a freed block's old
//! contents, which later reads of the block's next owner got — stale data from an older write,
//! seen once by fsx.)

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::format::BLOCK_SIZE;

const SHARDS: usize = 16;
/// Largest read request whose blocks are put into the cache.
pub const FILL_MAX_BYTES: u64 = 128 << 10;

struct Entry {
    data: Box<[u8]>,
    referenced: bool,
}

#[derive(Default)]
struct Shard {
    map: HashMap<u64, Entry>,
    clock: VecDeque<u64>,
}

/// Each shard's invalidation count at one moment (see [`BlockCache::epochs`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Epochs([u64; SHARDS]);

pub struct BlockCache {
    shards: Vec<Mutex<Shard>>,
    /// Per shard, bumped (under the shard's lock) by every invalidation in it.
    epochs: Vec<AtomicU64>,
    per_shard: usize,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
}

impl BlockCache {
    pub fn new(bytes: u64) -> Self {
        let blocks = (bytes / BLOCK_SIZE as u64) as usize;
        BlockCache {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            epochs: (0..SHARDS).map(|_| AtomicU64::new(0)).collect(),
            per_shard: blocks / SHARDS,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn shard_index(pblk: u64) -> usize {
        (pblk as usize) % SHARDS
    }

    fn shard(&self, pblk: u64) -> &Mutex<Shard> {
        &self.shards[Self::shard_index(pblk)]
    }

    pub fn enabled(&self) -> bool {
        self.per_shard > 0
    }

    /// Copy block `pblk` into `out` if cached.
    pub fn get(&self, pblk: u64, out: &mut [u8]) -> bool {
        if !self.enabled() {
            return false;
        }
        let mut s = self.shard(pblk).lock();
        match s.map.get_mut(&pblk) {
            Some(e) => {
                e.referenced = true;
                out.copy_from_slice(&e.data[..out.len()]);
                self.hits.fetch_add(1, Ordering::Relaxed);
                true
            }
            None => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// What to pass to [`BlockCache::fill`]: taken by a read under the metadata lock, in the
    /// same hold that found its blocks (see the module's doc).
    pub fn epochs(&self) -> Epochs {
        Epochs(std::array::from_fn(|i| {
            self.epochs[i].load(Ordering::Acquire)
        }))
    }

    /// Insert what a read returned (and verified), unless a block of the shard was
    /// invalidated since `epochs` was taken.
    pub fn fill(&self, pblk: u64, data: &[u8], epochs: &Epochs) {
        if !self.enabled() {
            return;
        }
        let i = Self::shard_index(pblk);
        let mut s = self.shards[i].lock();
        if self.epochs[i].load(Ordering::Relaxed) != epochs.0[i] || s.map.contains_key(&pblk) {
            return;
        }
        self.insert_locked(&mut s, pblk, data);
    }

    /// [`BlockCache::fill`] each block of `buf` (read from `pblk` on) that `good` says passed
    /// its checksum.
    pub fn fill_verified(&self, pblk: u64, buf: &[u8], good: &[bool], epochs: &Epochs) {
        for (k, block) in buf.chunks(BLOCK_SIZE).enumerate() {
            if good[k] {
                self.fill(pblk + k as u64, block, epochs);
            }
        }
    }

    /// Forget blocks (freed or rewritten elsewhere).
    pub fn invalidate(&self, pblk: u64, n: u64) {
        if !self.enabled() {
            return;
        }
        for b in pblk..pblk + n {
            let i = Self::shard_index(b);
            let mut s = self.shards[i].lock();
            self.epochs[i].fetch_add(1, Ordering::Release);
            s.map.remove(&b);
        }
    }

    fn insert_locked(&self, s: &mut Shard, pblk: u64, data: &[u8]) {
        if s.clock.len() > 2 * self.per_shard + 64 {
            // Drop keys of entries that were invalidated, and duplicates.
            let mut seen = std::collections::HashSet::new();
            let map = &s.map;
            s.clock.retain(|k| map.contains_key(k) && seen.insert(*k));
        }
        let mut recycled: Option<Box<[u8]>> = None;
        while s.map.len() >= self.per_shard {
            let Some(victim) = s.clock.pop_front() else {
                break;
            };
            match s.map.get_mut(&victim) {
                Some(e) if e.referenced => {
                    e.referenced = false;
                    s.clock.push_back(victim);
                }
                Some(_) => {
                    recycled = s.map.remove(&victim).map(|e| e.data);
                }
                None => {}
            }
        }
        // Reuse the evicted block's buffer: no allocation per fill once the cache is full.
        let mut d = recycled.unwrap_or_else(|| vec![0u8; BLOCK_SIZE].into_boxed_slice());
        d[..data.len()].copy_from_slice(data);
        d[data.len()..].fill(0);
        s.map.insert(
            pblk,
            Entry {
                data: d,
                referenced: false,
            },
        );
        s.clock.push_back(pblk);
    }

    pub fn len_bytes(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.lock().map.len() as u64)
            .sum::<u64>()
            * BLOCK_SIZE as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(byte: u8) -> Vec<u8> {
        vec![byte; BLOCK_SIZE]
    }

    #[test]
    fn a_fill_after_an_invalidation_since_the_epochs_were_taken_is_refused() {
        let c = BlockCache::new(1 << 20);
        let mut out = block(0);
        // A read found block 7 mapped and took the epochs; then the block was freed.
        let before = c.epochs();
        c.invalidate(7, 1);
        c.fill(7, &block(0xAA), &before);
        assert!(
            !c.get(7, &mut out),
            "the freed block's old contents must not be cached"
        );
        // A read that started after the invalidation fills.
        let after = c.epochs();
        c.fill(7, &block(0xBB), &after);
        assert!(c.get(7, &mut out));
        assert_eq!(out, block(0xBB));
        // An invalidation elsewhere in the same shard refuses the fill too (a shard's count is
        // shared by its blocks); one in another shard does not.
        let e = c.epochs();
        c.invalidate(8 + SHARDS as u64, 1);
        c.fill(8, &block(1), &e);
        assert!(!c.get(8, &mut out));
        let e = c.epochs();
        c.invalidate(10, 1);
        c.fill(9, &block(2), &e);
        assert!(c.get(9, &mut out));
        assert_eq!(out, block(2));
    }

    #[test]
    fn invalidation_removes_a_cached_block() {
        let c = BlockCache::new(1 << 20);
        c.fill(3, &block(5), &c.epochs());
        let mut out = block(0);
        assert!(c.get(3, &mut out));
        c.invalidate(3, 1);
        assert!(!c.get(3, &mut out));
    }
}
