//! Checkpoints: the whole metadata image (every layer and tree) written to fresh blocks as a
//! chain of checksummed blocks, then one of the two superblock slots flipped to it. Writing
//! one compacts the journal; the previous checkpoint's blocks are freed once the new one is
//! durable.

use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::commit::Seal;
use crate::device::{read_blocks, write_blocks, Device};
use crate::engine::Inner;
use crate::error::{Error, Result};
use crate::format::*;
use crate::journal;
use crate::layer::Layers;

/// What a checkpoint says about the file system.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CheckpointKind {
    /// Mounted: the next open must treat it as possibly crashed.
    InUse,
    /// The final checkpoint of a clean shutdown.
    Clean,
}

/// Write a checkpoint of `tree` into newly allocated blocks. Returns (first block, block list, bytes, crc).
pub(crate) fn write_checkpoint(
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

pub(crate) fn read_checkpoint(
    dev: &dyn Device,
    sb: &Superblock,
    salvage: bool,
) -> Result<(Layers, Vec<u64>)> {
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
        let (payload, next) = journal::decode_ckpt_block(&buf, sb.ckpt_identity(), b)?;
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
    let layers = if salvage {
        Layers::decode_salvage(&bytes, sb.ckpt_block, sb.version)?
    } else {
        Layers::decode_version(&bytes, sb.ckpt_block, sb.version)?
    };
    Ok((layers, blocks))
}

/// Write a checkpoint of `layers` outside a running engine (migration, fsck repair, offline
/// grow) and make it current: the checkpoint goes to blocks `alloc` has free, is flushed,
/// then the superblock `sb` (with the next generation, this checkpoint, `total_blocks` and
/// `version` as given, journal replay from `pos`/`seq`) goes to its slot and is flushed. A
/// crash before that last flush leaves the previous superblock and checkpoint in force.
pub(crate) fn write_offline(
    dev: &dyn Device,
    sb: &Superblock,
    layers: &Layers,
    alloc: &mut crate::alloc::Allocator,
    pos_seq: (u64, u64),
) -> Result<Superblock> {
    write_offline_bytes(dev, sb, &layers.encode(), alloc, pos_seq)
}

/// [`write_offline`] of an encoded checkpoint payload.
pub(crate) fn write_offline_bytes(
    dev: &dyn Device,
    sb: &Superblock,
    bytes: &[u8],
    alloc: &mut crate::alloc::Allocator,
    (pos, seq): (u64, u64),
) -> Result<Superblock> {
    let n = bytes.len().div_ceil(journal::CKPT_PAYLOAD).max(1) as u64;
    let runs = alloc.alloc_any(n, None).ok_or(Error::NoSpace)?;
    let (first, len, crc) = write_checkpoint(dev, bytes, runs[0].0, &runs)?;
    dev.flush().map_err(|e| Error::io("flush", 0, e))?;
    let mut new = sb.clone();
    new.generation += 1;
    new.ckpt_block = first;
    new.ckpt_blocks = n;
    new.ckpt_bytes = len;
    new.ckpt_crc = crc;
    new.replay_block = pos;
    new.replay_seq = seq;
    new.clean = true;
    let slot = SB_SLOTS[(new.generation % 2) as usize];
    write_blocks(dev, slot, &new.encode())?;
    dev.flush().map_err(|e| Error::io("flush", 0, e))?;
    Ok(new)
}

impl Superblock {
    /// The identity every block of a checkpoint chain carries: the number of the chain's
    /// first block (format.md, "Checkpoint blocks"). A block left over from an older
    /// checkpoint at the same place in the chain carries another identity and is refused.
    fn ckpt_identity(&self) -> u64 {
        self.ckpt_block
    }
}

impl Inner {
    /// Write the whole tree to new blocks and flip the superblock to it.
    pub(crate) fn checkpoint(&self, kind: CheckpointKind) -> Result<()> {
        self.checkpoint_grow(kind, None)
    }

    /// A checkpoint whose superblock also says the file system is `grow_to` blocks long (the
    /// device grew). The checkpoint goes to blocks inside the old size; the allocator gets the
    /// new blocks only once the superblock that declares them is durable, so no record can
    /// map a block past the end of the durable file system.
    pub(crate) fn checkpoint_grow(&self, kind: CheckpointKind, grow_to: Option<u64>) -> Result<()> {
        self.poison.check()?;
        let t0 = Instant::now();
        let (_, frees, tree) = self.seal(Seal::WithSnapshot);
        // A data write of the sealed epoch failed: what maps it must not become durable.
        self.poison.check()?;
        let Some(tree) = tree else { return Ok(()) };
        let bytes = tree.encode();
        let n = bytes.len().div_ceil(journal::CKPT_PAYLOAD).max(1) as u64;
        let runs = {
            let mut m = self.meta.lock();
            m.alloc.alloc_any(n, None)
        };
        let Some(runs) = runs else {
            self.meta.lock().alloc_return(frees);
            return Err(self.poison.latch(Error::NoSpace));
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
            sb.clean = kind == CheckpointKind::Clean;
            if let Some(total) = grow_to {
                sb.total_blocks = sb.total_blocks.max(total);
            }
            let slot = SB_SLOTS[(sb.generation % 2) as usize];
            write_blocks(self.dev.as_ref(), slot, &sb.encode())?;
            self.dev.flush().map_err(|e| Error::io("flush", 0, e))?;
            j.sb = sb;
            j.used = 0;
            j.early_tail = false;
            let new_blocks: Vec<u64> = runs.iter().flat_map(|(b, n)| *b..*b + *n).collect();
            Ok(std::mem::replace(&mut j.ckpt_blocks, new_blocks))
        })();
        match res {
            Ok(old_blocks) => {
                let mut m = self.meta.lock();
                if grow_to.is_some() {
                    let total = self.jpos.lock().sb.total_blocks;
                    m.alloc.grow(total);
                }
                for b in old_blocks {
                    m.alloc.release(b, 1);
                }
                m.alloc.release_sealed(frees);
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
            Err(e) => Err(self.poison.latch(e)),
        }
    }
}
