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

/// Where the journal ends: the next chunk's block and sequence, and blocks used since the
/// checkpoint.
#[derive(Clone, Copy)]
struct JournalEnd {
    pos: u64,
    seq: u64,
    used: u64,
}

/// Apply one chunk's records (read at journal block `at`) to the tree and the allocator.
fn apply_chunk(
    layers: &mut Layers,
    alloc: &mut Allocator,
    sb: &Superblock,
    payload: &[u8],
    at: u64,
    problems: &mut Vec<String>,
) -> Result<()> {
    let recs = journal::decode_records_version(payload, at, sb.version)?;
    // Allocation follows each record in order: a block mapped and freed again within one
    // chunk must end up free.
    for (slot, r) in &recs {
        let (mut freed, mut mapped) = (Vec::new(), Vec::new());
        layers.apply(*slot, r, &mut freed, &mut mapped)?;
        for (b, n) in freed {
            alloc.release(b, n);
        }
        for (b, n) in mapped {
            claim(alloc, sb, b, n, problems, || format!("journal block {at}"))?;
        }
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
    let boot = dev.boot_id();
    // Where the journal ends so far (after the last chunk taken) and where the scan is.
    let mut end = JournalEnd {
        pos: sb.replay_block,
        seq: sb.replay_seq,
        used: 0,
    };
    let mut scan = end;
    let mut replayed = 0u64;
    // Early chunks read but not yet taken: a later ordinary chunk vouches for them (it was
    // written after a flush), or, at the end, the boot they were written in is this one.
    let mut early: Vec<(u64, JournalEnd, Vec<u8>)> = Vec::new();
    loop {
        let mut found = None;
        for cand in [scan.pos, jstart] {
            let hdr = read_blocks(dev, cand, 1)?;
            if let Some(h) = journal::decode_chunk_header(&hdr) {
                if h.seq == scan.seq
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
        if at != scan.pos {
            scan.used += jend - scan.pos;
        }
        scan.used += h.nblocks as u64;
        scan.pos = at + h.nblocks as u64;
        if scan.pos >= jend {
            scan.pos = jstart;
        }
        scan.seq += 1;
        if h.early {
            if journal::early_payload(&payload).is_none() {
                break;
            }
            early.push((at, scan, payload));
            continue;
        }
        for (at, _, p) in std::mem::take(&mut early) {
            let Some((_, recs)) = journal::early_payload(&p) else {
                break;
            };
            apply_chunk(&mut layers, &mut alloc, &sb, recs, at, &mut problems)?;
            replayed += 1;
        }
        apply_chunk(&mut layers, &mut alloc, &sb, &payload, at, &mut problems)?;
        end = scan;
        replayed += 1;
    }
    // The journal ends in early chunks no ordinary chunk vouches for: take those of this boot
    // (the device has every write completed before them), up to the first of another boot
    // (a reboot, perhaps a power loss: the data under it may never have reached the disk).
    for (at, after, p) in early {
        let Some((b, recs)) = journal::early_payload(&p) else {
            break;
        };
        if Some(b) != boot {
            break;
        }
        apply_chunk(&mut layers, &mut alloc, &sb, recs, at, &mut problems)?;
        end = after;
        replayed += 1;
    }
    let (pos, seq, used) = (end.pos, end.seq, end.used);
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
