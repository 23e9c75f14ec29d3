//! Block allocator: an in-memory bitmap over the data region, rebuilt at mount from the
//! metadata (every mapped extent and the current checkpoint's blocks are in use). Blocks
//! freed by a change are held back until the journal record that frees them is durable.

/// Bitmap allocator over blocks `[start, end)`.
#[derive(Clone)]
pub struct Allocator {
    start: u64,
    end: u64,
    bits: Vec<u64>,
    free: u64,
    cursor: u64,
    /// Freed since the last durable journal commit: not reusable yet.
    pending: Vec<(u64, u64)>,
    /// Blocks in `pending`.
    pending_blocks: u64,
    /// Blocks taken from `pending` by a commit under way ([`Allocator::take_pending`]),
    /// free once it is durable ([`Allocator::release_sealed`]) or pending again.
    sealed: u64,
    /// Blocks kept back from data allocations so a checkpoint can always be written.
    reserve: u64,
}

impl Allocator {
    pub fn new(start: u64, end: u64) -> Self {
        let n = end.saturating_sub(start);
        Allocator {
            start,
            end,
            bits: vec![0; n.div_ceil(64) as usize],
            free: n,
            cursor: 0,
            pending: Vec::new(),
            pending_blocks: 0,
            sealed: 0,
            reserve: 0,
        }
    }

    pub fn total(&self) -> u64 {
        self.end - self.start
    }
    pub fn free(&self) -> u64 {
        self.free
    }
    /// Free blocks that data may use (free minus the checkpoint reserve).
    pub fn available(&self) -> u64 {
        self.free.saturating_sub(self.reserve)
    }
    pub fn set_reserve(&mut self, blocks: u64) {
        self.reserve = blocks.min(self.total() / 2);
    }
    /// Blocks freed by records not yet committed.
    pub fn pending(&self) -> u64 {
        self.pending_blocks
    }
    /// Blocks that will be free once the commits under way and the next one are durable.
    pub fn coming(&self) -> u64 {
        self.pending_blocks + self.sealed
    }
    pub fn range(&self) -> (u64, u64) {
        (self.start, self.end)
    }

    /// The region now ends at `end` (the device grew): the new blocks are free.
    pub fn grow(&mut self, end: u64) {
        if end <= self.end {
            return;
        }
        let n = end - self.start;
        self.bits.resize(n.div_ceil(64) as usize, 0);
        self.free += end - self.end;
        self.end = end;
    }

    pub fn is_used(&self, b: u64) -> bool {
        if b < self.start || b >= self.end {
            return false;
        }
        let i = b - self.start;
        self.bits[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    fn set(&mut self, b: u64, used: bool) -> bool {
        let i = b - self.start;
        let w = &mut self.bits[(i / 64) as usize];
        let m = 1u64 << (i % 64);
        let was = *w & m != 0;
        if used {
            *w |= m;
        } else {
            *w &= !m;
        }
        was
    }

    /// Mark `[b, b+n)` in use. Returns how many of them were already in use.
    pub fn mark_used(&mut self, b: u64, n: u64) -> u64 {
        let mut dup = 0;
        for x in b..b + n {
            if x < self.start || x >= self.end {
                dup += 1;
                continue;
            }
            if self.set(x, true) {
                dup += 1;
            } else {
                self.free -= 1;
            }
        }
        dup
    }

    /// Free `[b, b+n)` now (recovery and released pending frees).
    pub fn release(&mut self, b: u64, n: u64) {
        for x in b..b + n {
            if x >= self.start && x < self.end && self.set(x, false) {
                self.free += 1;
            }
        }
    }

    /// Free later: after the record that frees them is durable.
    pub fn defer_free(&mut self, b: u64, n: u64) {
        if n > 0 {
            self.pending.push((b, n));
            self.pending_blocks += n;
        }
    }

    /// Take the deferred frees (to be released once the current journal commit is durable,
    /// with [`Allocator::release_sealed`], or deferred again if it is not made).
    pub fn take_pending(&mut self) -> Vec<(u64, u64)> {
        self.sealed += self.pending_blocks;
        self.pending_blocks = 0;
        std::mem::take(&mut self.pending)
    }

    /// The commit that took `frees` is durable: they are free now.
    pub fn release_sealed(&mut self, frees: Vec<(u64, u64)>) {
        for (b, n) in frees {
            self.sealed = self.sealed.saturating_sub(n);
            self.release(b, n);
        }
    }

    /// The commit that took `frees` was not made: they wait for the next one.
    pub fn defer_sealed(&mut self, frees: Vec<(u64, u64)>) {
        for (b, n) in frees {
            self.sealed = self.sealed.saturating_sub(n);
            self.defer_free(b, n);
        }
    }

    /// Allocate `n` blocks for data, as few runs as possible, starting near `hint` (a block
    /// number). Fails rather than dip into the checkpoint reserve.
    pub fn alloc(&mut self, n: u64, hint: Option<u64>) -> Option<Vec<(u64, u64)>> {
        if n > self.available() {
            return None;
        }
        self.alloc_any(n, hint)
    }

    /// Allocate from all free blocks, the reserve included (checkpoints).
    pub fn alloc_any(&mut self, n: u64, hint: Option<u64>) -> Option<Vec<(u64, u64)>> {
        if n > self.free {
            return None;
        }
        let total = self.total();
        let mut pos = match hint {
            Some(h) if h >= self.start && h < self.end => h - self.start,
            _ => self.cursor,
        };
        let mut out: Vec<(u64, u64)> = Vec::new();
        let mut need = n;
        let mut scanned = 0u64;
        while need > 0 && scanned < total {
            if pos >= total {
                pos = 0;
            }
            let w = self.bits[(pos / 64) as usize];
            if w == u64::MAX && pos % 64 == 0 {
                pos += 64;
                scanned += 64;
                continue;
            }
            if w & (1 << (pos % 64)) == 0 {
                let b = self.start + pos;
                self.set(b, true);
                self.free -= 1;
                need -= 1;
                match out.last_mut() {
                    Some(last) if last.0 + last.1 == b => last.1 += 1,
                    _ => out.push((b, 1)),
                }
            }
            pos += 1;
            scanned += 1;
        }
        self.cursor = pos % total.max(1);
        if need > 0 {
            for (b, l) in out {
                self.release(b, l);
            }
            return None;
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_and_free_round_trip() {
        let mut a = Allocator::new(10, 1000);
        let r = a.alloc(100, None).unwrap();
        assert_eq!(r, vec![(10, 100)]);
        assert_eq!(a.free(), 890);
        a.defer_free(20, 10);
        assert_eq!(a.free(), 890);
        for (b, n) in a.take_pending() {
            a.release(b, n);
        }
        assert_eq!(a.free(), 900);
        assert!(a.alloc(901, None).is_none());
        assert_eq!(a.free(), 900);
        let r = a.alloc(900, None).unwrap();
        assert_eq!(r.iter().map(|x| x.1).sum::<u64>(), 900);
        assert_eq!(a.free(), 0);
        a.grow(1100);
        assert_eq!((a.total(), a.free()), (1090, 100));
        assert_eq!(a.alloc(100, None), Some(vec![(1000, 100)]));
        assert!(a.alloc(1, None).is_none());
    }
}
