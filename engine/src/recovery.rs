//! Recovery: the newest valid superblock, its checkpoint, then the journal replayed until the
//! first chunk that does not check out. Used at every open (after a clean shutdown there is
//! nothing to replay) and by fsck.

use crate::alloc::Allocator;
use crate::checkpoint::read_checkpoint;
use crate::device::{read_blocks, Device};
use crate::error::{Error, Result};
use crate::format::*;
use crate::journal;
use crate::layer::Layers;

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
    load_with(dev, false)
}

/// [`load`] for fsck and repair: a checkpoint layer whose parent is missing is kept (see
/// [`Layers::decode_salvage`]) instead of failing the load. Its blocks are not claimed (it
/// is not reached from a base layer); `repair` claims them once it is a base layer.
pub fn load_salvage(dev: &dyn Device) -> Result<Loaded> {
    load_with(dev, true)
}

fn load_with(dev: &dyn Device, salvage: bool) -> Result<Loaded> {
    let sb = read_superblock(dev)?;
    let fsid = sb.fsid();
    let (mut layers, ckpt_blocks) = read_checkpoint(dev, &sb, salvage)?;
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
        let recs = journal::decode_records_version(&payload, at, sb.version)?;
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
