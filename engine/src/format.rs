//! On-disk format constants and the superblock. See `engine/docs/format.md`.

use crate::codec::{Dec, Enc};
use crate::error::{Error, Result};

pub const BLOCK_SIZE: usize = 4096;
pub const BLOCK: u64 = BLOCK_SIZE as u64;
pub const MAGIC: &[u8; 8] = b"STRATAFS";
/// The format this engine writes. Version 1 (before data checksums) is still read, by
/// `strata migrate` only.
pub const FORMAT_VERSION: u32 = 2;
/// The oldest format `strata migrate` converts.
pub const OLDEST_VERSION: u32 = 1;
/// Superblock slots live in blocks 0 and 1.
pub const SB_SLOTS: [u64; 2] = [0, 1];
pub const JOURNAL_START: u64 = 2;
/// Smallest device accepted by mkfs.
pub const MIN_DEVICE_SIZE: u64 = 16 << 20;
pub const CKPT_MAGIC: u32 = 0x5054_4B43; // "CKTP"
pub const JNL_MAGIC: u32 = 0x4C4E_4A53; // "SJNL"
/// An *early* journal chunk: written before the data under its records was flushed (see
/// format.md, "Early chunks"). Its payload starts with the boot id it was written in.
pub const JNL_MAGIC_EARLY: u32 = 0x454E_4A53; // "SJNE"
/// Bytes of boot id at the start of an early chunk's payload.
pub const BOOT_ID_LEN: usize = 16;
/// Bytes of header at the start of every checkpoint block.
pub const CKPT_HDR: usize = 32;
/// Bytes of header at the start of a journal chunk.
pub const JNL_HDR: usize = 32;
pub const MAX_NAME: usize = 255;
pub const ROOT_INO: u64 = 1;

/// The superblock: where everything else is, and which checkpoint is current.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    pub version: u32,
    pub generation: u64,
    pub total_blocks: u64,
    pub journal_start: u64,
    pub journal_blocks: u64,
    pub data_start: u64,
    /// First block of the checkpoint chain.
    pub ckpt_block: u64,
    pub ckpt_blocks: u64,
    pub ckpt_bytes: u64,
    pub ckpt_crc: u32,
    /// Journal block where replay begins and the sequence number the first chunk must carry.
    pub replay_block: u64,
    pub replay_seq: u64,
    pub uuid: [u8; 16],
    /// Set by a clean unmount; cleared when mounted.
    pub clean: bool,
}

impl Superblock {
    /// The file system id journal chunks carry (the first half of the uuid).
    pub fn fsid(&self) -> u64 {
        u64::from_le_bytes(self.uuid[..8].try_into().unwrap_or([0; 8]))
    }

    /// Journal size for a device: 1/32 of it, between 1 MiB and 128 MiB.
    pub fn layout(total_blocks: u64) -> (u64, u64) {
        let jbytes = (total_blocks * BLOCK / 32).clamp(1 << 20, 128 << 20);
        let jblocks = jbytes / BLOCK;
        (jblocks, JOURNAL_START + jblocks)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::new();
        e.buf.extend_from_slice(MAGIC);
        e.u32(self.version);
        e.u32(BLOCK_SIZE as u32);
        e.u64(self.generation);
        e.u64(self.total_blocks);
        e.u64(self.journal_start);
        e.u64(self.journal_blocks);
        e.u64(self.data_start);
        e.u64(self.ckpt_block);
        e.u64(self.ckpt_blocks);
        e.u64(self.ckpt_bytes);
        e.u32(self.ckpt_crc);
        e.u64(self.replay_block);
        e.u64(self.replay_seq);
        e.buf.extend_from_slice(&self.uuid);
        e.u8(self.clean as u8);
        let crc = crc32c::crc32c(&e.buf);
        e.u32(crc);
        let mut out = e.buf;
        out.resize(BLOCK_SIZE, 0);
        out
    }

    pub fn decode(block: &[u8], blockno: u64) -> Result<Self> {
        if block.len() < 8 || &block[..8] != MAGIC {
            return Err(Error::NotStrata(format!(
                "no Strata magic in superblock slot at block {blockno}"
            )));
        }
        let mut d = Dec::new(&block[8..], blockno);
        let version = d.u32()?;
        if !(OLDEST_VERSION..=FORMAT_VERSION).contains(&version) {
            return Err(Error::NotStrata(format!(
                "format version {version} at block {blockno}; this strata reads versions {OLDEST_VERSION} to {FORMAT_VERSION}"
            )));
        }
        let bs = d.u32()?;
        if bs as usize != BLOCK_SIZE {
            return Err(Error::corrupt(format!("block size {bs}"), blockno));
        }
        let sb = Superblock {
            version,
            generation: d.u64()?,
            total_blocks: d.u64()?,
            journal_start: d.u64()?,
            journal_blocks: d.u64()?,
            data_start: d.u64()?,
            ckpt_block: d.u64()?,
            ckpt_blocks: d.u64()?,
            ckpt_bytes: d.u64()?,
            ckpt_crc: d.u32()?,
            replay_block: d.u64()?,
            replay_seq: d.u64()?,
            uuid: {
                let mut u = [0u8; 16];
                for b in u.iter_mut() {
                    *b = d.u8()?;
                }
                u
            },
            clean: d.u8()? != 0,
        };
        let body_len = block.len() - d.remaining();
        let crc = d.u32()?;
        if crc32c::crc32c(&block[..body_len]) != crc {
            return Err(Error::corrupt("superblock checksum mismatch", blockno));
        }
        sb.validate(blockno)?;
        Ok(sb)
    }

    fn validate(&self, blockno: u64) -> Result<()> {
        let bad = |what: &str| Err(Error::corrupt(format!("superblock: {what}"), blockno));
        // Sizes are checked before any arithmetic on them, so that a hostile superblock (one
        // with a valid checksum) cannot overflow a computation or make recovery allocate
        // what it says (found by the `image` fuzz target).
        if self.total_blocks > u64::MAX / BLOCK {
            return bad("device size");
        }
        if self.journal_start != JOURNAL_START
            || self.journal_blocks == 0
            || self.journal_blocks >= self.total_blocks
        {
            return bad("journal region");
        }
        if self.data_start != self.journal_start + self.journal_blocks
            || self.data_start >= self.total_blocks
        {
            return bad("data region");
        }
        let payload = (BLOCK_SIZE - CKPT_HDR) as u64;
        if self.ckpt_blocks > self.total_blocks - self.data_start
            || self.ckpt_bytes > self.ckpt_blocks * payload
        {
            return bad("checkpoint size");
        }
        let jend = self.journal_start + self.journal_blocks;
        if self.replay_block < self.journal_start || self.replay_block >= jend {
            return bad("journal replay position");
        }
        if self.ckpt_blocks > 0
            && (self.ckpt_block < self.data_start || self.ckpt_block >= self.total_blocks)
        {
            return bad("checkpoint position");
        }
        Ok(())
    }
}

/// A time stamp: seconds and nanoseconds since the epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Time {
    pub sec: i64,
    pub nsec: u32,
}

impl Time {
    pub fn now() -> Time {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes into the timespec we own.
        unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
        Time {
            sec: ts.tv_sec,
            nsec: ts.tv_nsec as u32,
        }
    }
}
