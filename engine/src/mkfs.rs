//! Formatting a device: two superblock slots, an empty journal and a first checkpoint that
//! holds one empty, writable layer named `default`.

use std::sync::Arc;

use crate::checkpoint::write_checkpoint;
use crate::device::{write_blocks, Device};
use crate::error::{Error, Result};
use crate::format::*;
use crate::journal;
use crate::layer::Layers;
use crate::meta::*;

fn random_uuid() -> [u8; 16] {
    let mut u = [0u8; 16];
    // SAFETY: getrandom writes at most 16 bytes into `u`.
    let n = unsafe { libc::getrandom(u.as_mut_ptr() as *mut libc::c_void, 16, 0) };
    if n != 16 {
        let t = Time::now();
        u[..8].copy_from_slice(&t.sec.to_le_bytes());
        u[8..12].copy_from_slice(&t.nsec.to_le_bytes());
        u[12..16].copy_from_slice(&std::process::id().to_le_bytes());
    }
    u
}

/// Format a device.
pub fn mkfs(dev: &dyn Device, uid: u32, gid: u32) -> Result<Superblock> {
    let size = dev.size();
    if size < MIN_DEVICE_SIZE {
        return Err(Error::Unusable(format!(
            "device is {size} bytes; Strata needs at least {MIN_DEVICE_SIZE}"
        )));
    }
    let total = size / BLOCK;
    let (jblocks, data_start) = Superblock::layout(total);
    // Clear the superblocks and the first journal block so nothing old is mistaken for ours.
    write_blocks(dev, 0, &vec![0u8; 3 * BLOCK_SIZE])?;
    // A new file system holds one empty, writable layer: "default".
    let mut layers = Layers::default();
    let (mut f, mut m) = (Vec::new(), Vec::new());
    let rec = Record::LayerNew {
        slot: 1,
        id: Arc::from(DEFAULT_LAYER.as_bytes()),
        parent: None,
        state: LayerState::Active,
        owner: 1,
        created: Time::now(),
        uid,
        gid,
    };
    layers.apply(0, &rec, &mut f, &mut m)?;
    let bytes = layers.encode();
    let n = bytes.len().div_ceil(journal::CKPT_PAYLOAD) as u64;
    let (first, len, crc) = write_checkpoint(dev, &bytes, data_start, &[(data_start, n)])?;
    let uuid = random_uuid();
    let mut sb = Superblock {
        version: FORMAT_VERSION,
        generation: 1,
        total_blocks: total,
        journal_start: JOURNAL_START,
        journal_blocks: jblocks,
        data_start,
        ckpt_block: first,
        ckpt_blocks: n,
        ckpt_bytes: len,
        ckpt_crc: crc,
        replay_block: JOURNAL_START,
        replay_seq: 1,
        uuid,
        clean: true,
    };
    dev.flush().map_err(|e| Error::io("flush", 0, e))?;
    write_blocks(dev, 1, &sb.encode())?;
    sb.generation = 0;
    write_blocks(dev, 0, &sb.encode())?;
    sb.generation = 1;
    dev.flush().map_err(|e| Error::io("flush", 0, e))?;
    Ok(sb)
}

/// Name of the layer `mkfs` creates.
pub const DEFAULT_LAYER: &str = "default";
