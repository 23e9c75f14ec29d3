//! Data checksums: the CRC-32C of every mapped 4 KiB data block, by physical block.
//!
//! Every data write goes to blocks no durable metadata points to (copy-on-write, see
//! `data.rs`), so a physical block's contents never change while a mapping of it exists: one
//! checksum per physical block serves every layer and every file that shares the block. The
//! checksums reach the disk in the journal's `Map` records and in a section of each
//! checkpoint (format version 2, `engine/docs/format.md`). In memory they live in a
//! persistent map of 1024-block pages (a clone — what a checkpoint takes — is one pointer
//! copy), set by `Map` records and cleared when the block is freed, so the table holds
//! exactly the blocks that are mapped somewhere.

use std::fmt;
use std::sync::Arc;

use imbl::OrdMap;

use crate::codec::{Dec, Enc};
use crate::error::{Error, Result};

/// Blocks per page of the table.
const PAGE: u64 = 1024;
const WORDS: usize = (PAGE / 64) as usize;

/// The checksum of one 4 KiB block.
pub fn block_crc(data: &[u8]) -> u32 {
    crate::crc_fold::crc32c_append(0, data).unwrap_or_else(|| crc32c::crc32c(data))
}

/// The checksum of each 4 KiB block of `data` just read from the device (so in memory, not
/// in the CPU's cache): the next block is prefetched while one is checksummed (from memory
/// 34 GB/s instead of 21; for data already in the cache, as right after a copy, that would
/// cost: use [`block_crc`] there).
pub fn read_block_crcs(data: &[u8]) -> impl Iterator<Item = u32> + '_ {
    let mut blocks = data.chunks(crate::format::BLOCK_SIZE).peekable();
    std::iter::from_fn(move || {
        let b = blocks.next()?;
        if let Some(next) = blocks.peek() {
            crate::crc_fold::prefetch(next);
        }
        Some(block_crc(b))
    })
}

/// The checksum of every 4 KiB block of `data` just read from the device (migrate, repair).
pub fn block_crcs(data: &[u8]) -> Vec<u32> {
    read_block_crcs(data).collect()
}

#[derive(Clone)]
struct Page {
    present: [u64; WORDS],
    crc: [u32; PAGE as usize],
    count: u32,
}

impl Page {
    fn new() -> Page {
        Page {
            present: [0; WORDS],
            crc: [0; PAGE as usize],
            count: 0,
        }
    }
    fn has(&self, i: usize) -> bool {
        self.present[i / 64] & (1 << (i % 64)) != 0
    }
}

/// The checksum of every mapped data block, by physical block number.
#[derive(Clone, Default)]
pub struct Crcs {
    pages: OrdMap<u64, Arc<Page>>,
    len: u64,
}

impl fmt::Debug for Crcs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Crcs({} blocks)", self.len)
    }
}

impl PartialEq for Crcs {
    fn eq(&self, other: &Self) -> bool {
        self.len == other.len && self.runs() == other.runs()
    }
}

impl Crcs {
    /// Blocks that have a checksum.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The checksum of block `pblk`, if it has one.
    pub fn get(&self, pblk: u64) -> Option<u32> {
        let p = self.pages.get(&(pblk / PAGE))?;
        let i = (pblk % PAGE) as usize;
        p.has(i).then(|| p.crc[i])
    }

    /// The checksums of `[pblk, pblk + n)`, appended to `out`.
    pub fn get_run(&self, pblk: u64, n: u64, out: &mut Vec<Option<u32>>) {
        let mut b = pblk;
        let end = pblk + n;
        while b < end {
            let page_end = ((b / PAGE) + 1) * PAGE;
            let stop = page_end.min(end);
            match self.pages.get(&(b / PAGE)) {
                Some(p) => {
                    for x in b..stop {
                        let i = (x % PAGE) as usize;
                        out.push(p.has(i).then(|| p.crc[i]));
                    }
                }
                None => out.extend(std::iter::repeat_n(None, (stop - b) as usize)),
            }
            b = stop;
        }
    }

    /// Set the checksums of `[pblk, pblk + crcs.len())`.
    pub fn set(&mut self, pblk: u64, crcs: &[u32]) {
        let mut k = 0usize;
        while k < crcs.len() {
            let b = pblk + k as u64;
            let key = b / PAGE;
            let first = (b % PAGE) as usize;
            let take = (PAGE as usize - first).min(crcs.len() - k);
            let page = self
                .pages
                .entry(key)
                .or_insert_with(|| Arc::new(Page::new()));
            let p = Arc::make_mut(page);
            for (j, c) in crcs[k..k + take].iter().enumerate() {
                let i = first + j;
                if !p.has(i) {
                    p.present[i / 64] |= 1 << (i % 64);
                    p.count += 1;
                    self.len += 1;
                }
                p.crc[i] = *c;
            }
            k += take;
        }
    }

    /// Forget the checksums of `[pblk, pblk + n)` (the blocks were freed).
    pub fn clear(&mut self, pblk: u64, n: u64) {
        let mut b = pblk;
        let end = pblk.saturating_add(n);
        while b < end {
            let key = b / PAGE;
            let stop = ((key + 1) * PAGE).min(end);
            let mut empty = false;
            if let Some(page) = self.pages.get_mut(&key) {
                let any = (b..stop).any(|x| page.has((x % PAGE) as usize));
                if any {
                    let p = Arc::make_mut(page);
                    for x in b..stop {
                        let i = (x % PAGE) as usize;
                        if p.has(i) {
                            p.present[i / 64] &= !(1 << (i % 64));
                            p.count -= 1;
                            self.len -= 1;
                        }
                    }
                    empty = p.count == 0;
                }
            }
            if empty {
                self.pages.remove(&key);
            }
            b = stop;
        }
    }

    /// Runs of consecutive blocks with checksums: (first block, their checksums).
    pub fn runs(&self) -> Vec<(u64, Vec<u32>)> {
        let mut out: Vec<(u64, Vec<u32>)> = Vec::new();
        for (key, p) in self.pages.iter() {
            for i in 0..PAGE as usize {
                if !p.has(i) {
                    continue;
                }
                let b = key * PAGE + i as u64;
                match out.last_mut() {
                    Some((s, v)) if *s + v.len() as u64 == b => v.push(p.crc[i]),
                    _ => out.push((b, vec![p.crc[i]])),
                }
            }
        }
        out
    }

    /// The checkpoint section: `run count u64`, then each run `first block u64, count u64,
    /// count × crc u32`.
    pub fn encode(&self, e: &mut Enc) {
        let runs = self.runs();
        e.u64(runs.len() as u64);
        for (b, v) in runs {
            e.u64(b);
            e.u64(v.len() as u64);
            for c in v {
                e.u32(c);
            }
        }
    }

    pub fn decode(d: &mut Dec) -> Result<Crcs> {
        let mut t = Crcs::default();
        let n = d.u64()?;
        for _ in 0..n {
            let b = d.u64()?;
            let len = d.u64()?;
            if len == 0 || len > d.remaining() as u64 / 4 || b.checked_add(len).is_none() {
                return Err(Error::corrupt("checksum run length out of range", d.block));
            }
            if t.get(b).is_some() {
                return Err(Error::corrupt(
                    format!("checksum of block {b} listed twice"),
                    d.block,
                ));
            }
            let mut v = Vec::with_capacity(len as usize);
            for _ in 0..len {
                v.push(d.u32()?);
            }
            t.set(b, &v);
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_get_clear_across_pages() {
        let mut t = Crcs::default();
        let v: Vec<u32> = (0..3000).collect();
        t.set(1000, &v);
        assert_eq!(t.len(), 3000);
        assert_eq!(t.get(999), None);
        assert_eq!(t.get(1000), Some(0));
        assert_eq!(t.get(3999), Some(2999));
        assert_eq!(t.get(4000), None);
        let snap = t.clone();
        t.clear(1500, 2000);
        assert_eq!(t.len(), 1000);
        assert_eq!(t.get(1499), Some(499));
        assert_eq!(t.get(1500), None);
        assert_eq!(t.get(3500), Some(2500));
        // The clone is unchanged (pages are copied on write).
        assert_eq!(snap.get(2000), Some(1000));
        assert_eq!(snap.len(), 3000);
        let mut got = Vec::new();
        t.get_run(1498, 4, &mut got);
        assert_eq!(got, vec![Some(498), Some(499), None, None]);
        assert_eq!(
            t.runs()
                .iter()
                .map(|(b, v)| (*b, v.len()))
                .collect::<Vec<_>>(),
            vec![(1000, 500), (3500, 500)]
        );
        let mut e = Enc::new();
        t.encode(&mut e);
        let back = Crcs::decode(&mut Dec::new(&e.buf, 0)).expect("decode");
        assert!(back == t);
        t.clear(0, 10_000);
        assert!(t.is_empty());
        assert!(t.pages.is_empty());
    }

    #[test]
    fn decoding_garbage_is_an_error() {
        let mut e = Enc::new();
        e.u64(1);
        e.u64(5);
        e.u64(1 << 40);
        assert!(Crcs::decode(&mut Dec::new(&e.buf, 0)).is_err());
    }

    /// How fast this machine checksums 4 KiB blocks, from memory (64 MiB) and from the CPU's
    /// cache (256 KiB, as right after a write's copy) (`cargo test --release -p strata-engine
    /// --lib crc_speed -- --ignored --nocapture`).
    #[test]
    #[ignore]
    fn crc_speed() {
        for (what, size, passes) in [("memory", 64usize << 20, 4), ("cache", 256 << 10, 1024)] {
            let buf: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
            let each = |f: fn(&[u8]) -> u32| buf.chunks(4096).fold(0, |x, b| x ^ f(b));
            let prefetched = || read_block_crcs(&buf).fold(0, |x, c| x ^ c);
            let ways: [(&str, &dyn Fn() -> u32); 3] = [
                ("block_crc", &|| each(block_crc)),
                ("crc32c crate", &|| each(crc32c::crc32c)),
                ("read_block_crcs (the next block prefetched)", &prefetched),
            ];
            for (name, all) in ways {
                let t = std::time::Instant::now();
                let mut x = 0u32;
                for _ in 0..passes {
                    x ^= all();
                }
                let s = t.elapsed().as_secs_f64();
                eprintln!(
                    "{name}, 4 KiB blocks from {what}: {:.2} GB/s ({x})",
                    (passes * size) as f64 / s / 1e9
                );
            }
        }
    }
}
