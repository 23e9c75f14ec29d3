//! Journal chunks and checkpoint blocks: the framing that makes metadata durable.
//!
//! A journal chunk is one or more contiguous journal blocks written at once: a 32-byte header
//! (magic, block count, sequence, file-system id, payload length, CRC-32C over header and
//! payload) and a payload of encoded [`Record`]s. A chunk is valid only with the expected
//! sequence number, the file system's id and a matching CRC, so replay stops at the first
//! chunk that was not completely written.
//!
//! An *early* chunk (magic `SJNE`) is written without flushing the data under it first, for
//! replies that must survive a crash of the daemon but not yet a power loss; its payload
//! starts with the boot id it was written in. Replay takes it only when a later ordinary
//! chunk follows it (written after a flush) or when the machine has not rebooted since.

use crate::codec::{Dec, Enc};
use crate::error::{Error, Result};
use crate::format::{
    BLOCK_SIZE, BOOT_ID_LEN, CKPT_HDR, CKPT_MAGIC, JNL_HDR, JNL_MAGIC, JNL_MAGIC_EARLY,
};
use crate::meta::Record;

pub struct ChunkHeader {
    pub nblocks: u32,
    pub seq: u64,
    pub fsid: u64,
    pub payload_len: u32,
    pub crc: u32,
    /// An early chunk (its payload starts with a boot id: [`early_payload`]).
    pub early: bool,
}

/// Frame `payload` as a chunk; returns whole blocks.
pub fn encode_chunk(seq: u64, fsid: u64, payload: &[u8]) -> Vec<u8> {
    frame(JNL_MAGIC, seq, fsid, &[payload])
}

/// Frame `payload` as an early chunk written in boot `boot`.
pub fn encode_early_chunk(
    seq: u64,
    fsid: u64,
    boot: &[u8; BOOT_ID_LEN],
    payload: &[u8],
) -> Vec<u8> {
    frame(JNL_MAGIC_EARLY, seq, fsid, &[boot, payload])
}

fn frame(magic: u32, seq: u64, fsid: u64, parts: &[&[u8]]) -> Vec<u8> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let total = JNL_HDR + len;
    let nblocks = total.div_ceil(BLOCK_SIZE);
    let mut out = vec![0u8; nblocks * BLOCK_SIZE];
    let mut e = Enc::new();
    e.u32(magic);
    e.u32(nblocks as u32);
    e.u64(seq);
    e.u64(fsid);
    e.u32(len as u32);
    e.u32(0);
    out[..JNL_HDR].copy_from_slice(&e.buf);
    let mut at = JNL_HDR;
    for p in parts {
        out[at..at + p.len()].copy_from_slice(p);
        at += p.len();
    }
    let crc = crc32c::crc32c(&out[..total]);
    out[28..32].copy_from_slice(&crc.to_le_bytes());
    out
}

/// An early chunk's payload split into the boot id it was written in and its records.
/// `None` if it is too short to hold a boot id.
pub fn early_payload(payload: &[u8]) -> Option<([u8; BOOT_ID_LEN], &[u8])> {
    let boot = payload.get(..BOOT_ID_LEN)?.try_into().ok()?;
    Some((boot, &payload[BOOT_ID_LEN..]))
}

/// Parse a chunk header from the first block of a chunk. `None` if it is not a chunk header.
pub fn decode_chunk_header(block: &[u8]) -> Option<ChunkHeader> {
    let mut d = Dec::new(block, 0);
    let early = match d.u32().ok()? {
        JNL_MAGIC => false,
        JNL_MAGIC_EARLY => true,
        _ => return None,
    };
    Some(ChunkHeader {
        nblocks: d.u32().ok()?,
        seq: d.u64().ok()?,
        fsid: d.u64().ok()?,
        payload_len: d.u32().ok()?,
        crc: d.u32().ok()?,
        early,
    })
}

/// Verify a whole chunk (header block first) and return its payload.
pub fn chunk_payload(h: &ChunkHeader, blocks: &[u8]) -> Option<Vec<u8>> {
    let total = JNL_HDR + h.payload_len as usize;
    if total > blocks.len() {
        return None;
    }
    let mut hdr = blocks[..JNL_HDR].to_vec();
    hdr[28..32].fill(0);
    let mut c = crc32c::crc32c(&hdr);
    c = crc32c::crc32c_append(c, &blocks[JNL_HDR..total]);
    (c == h.crc).then(|| blocks[JNL_HDR..total].to_vec())
}

/// Records of a chunk payload, each with the slot of the layer it changes (0: a layer record).
pub fn decode_records(payload: &[u8], block: u64) -> Result<Vec<(crate::meta::Slot, Record)>> {
    decode_records_version(payload, block, crate::format::FORMAT_VERSION)
}

/// [`decode_records`] of a chunk written by format `version`.
pub fn decode_records_version(
    payload: &[u8],
    block: u64,
    version: u32,
) -> Result<Vec<(crate::meta::Slot, Record)>> {
    let mut d = Dec::new(payload, block);
    let mut out = Vec::new();
    while !d.is_empty() {
        let slot = d.u32()?;
        out.push((slot, Record::decode_version(&mut d, version)?));
    }
    Ok(out)
}

/// Append one record with its layer slot to a pending payload.
pub fn encode_record(e: &mut crate::codec::Enc, slot: crate::meta::Slot, r: &Record) {
    e.u32(slot);
    r.encode(e);
}

/// Payload bytes per checkpoint block.
pub const CKPT_PAYLOAD: usize = BLOCK_SIZE - CKPT_HDR;

/// Frame one checkpoint block: header (magic, payload bytes, generation, next block, CRC).
pub fn encode_ckpt_block(gen: u64, next: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; BLOCK_SIZE];
    let mut e = Enc::new();
    e.u32(CKPT_MAGIC);
    e.u32(payload.len() as u32);
    e.u64(gen);
    e.u64(next);
    e.u32(0);
    e.u32(0);
    out[..CKPT_HDR].copy_from_slice(&e.buf);
    out[CKPT_HDR..CKPT_HDR + payload.len()].copy_from_slice(payload);
    let crc = crc32c::crc32c(&out);
    out[24..28].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Check a checkpoint block; returns (payload, next block).
pub fn decode_ckpt_block(block: &[u8], gen: u64, blockno: u64) -> Result<(&[u8], u64)> {
    let mut d = Dec::new(block, blockno);
    if d.u32()? != CKPT_MAGIC {
        return Err(Error::corrupt(
            "checkpoint block has no checkpoint magic",
            blockno,
        ));
    }
    let used = d.u32()? as usize;
    let g = d.u64()?;
    let next = d.u64()?;
    let crc = d.u32()?;
    if used > CKPT_PAYLOAD {
        return Err(Error::corrupt(
            "checkpoint block length out of range",
            blockno,
        ));
    }
    let mut copy = block.to_vec();
    copy[24..28].fill(0);
    if crc32c::crc32c(&copy) != crc {
        return Err(Error::corrupt(
            "checkpoint block checksum mismatch",
            blockno,
        ));
    }
    if g != gen {
        return Err(Error::corrupt(
            format!("checkpoint block from generation {g}, expected {gen}"),
            blockno,
        ));
    }
    Ok((&block[CKPT_HDR..CKPT_HDR + used], next))
}
