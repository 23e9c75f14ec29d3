//! The block cache: file data cached once, keyed by physical block, shared by every file and
//! every layer. Reads of up to [`FILL_MAX_BYTES`] fill it; larger (streaming) reads bypass it,
//! as O_DIRECT bypasses a page cache. Bounded; CLOCK eviction per shard. It holds only blocks whose checksum was verified, and
//! a block leaves it when it is freed (a mapped block is never written again); a read that
//! raced with that does not insert.

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
    /// Bumped by every invalidation in this shard.
    epoch: u64,
}

pub struct BlockCache {
    shards: Vec<Mutex<Shard>>,
    per_shard: usize,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
}

impl BlockCache {
    pub fn new(bytes: u64) -> Self {
        let blocks = (bytes / BLOCK_SIZE as u64) as usize;
        BlockCache {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: blocks / SHARDS,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn shard(&self, pblk: u64) -> &Mutex<Shard> {
        &self.shards[(pblk as usize) % SHARDS]
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

    /// The epoch to pass to [`BlockCache::fill`] for a read about to be issued.
    pub fn epoch(&self, pblk: u64) -> u64 {
        self.shard(pblk).lock().epoch
    }

    /// Insert what a read returned (and verified), unless a block of the shard was
    /// invalidated since `epoch`.
    pub fn fill(&self, pblk: u64, data: &[u8], epoch: u64) {
        if !self.enabled() {
            return;
        }
        let mut s = self.shard(pblk).lock();
        if s.epoch != epoch || s.map.contains_key(&pblk) {
            return;
        }
        self.insert_locked(&mut s, pblk, data);
    }

    /// Forget blocks (freed or rewritten elsewhere).
    pub fn invalidate(&self, pblk: u64, n: u64) {
        if !self.enabled() {
            return;
        }
        for b in pblk..pblk + n {
            let mut s = self.shard(b).lock();
            s.epoch += 1;
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
