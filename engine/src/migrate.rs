//! `strata migrate`: convert a version 1 image (no data checksums) to the current format.
//!
//! The image is recovered as version 1 (its journal replayed), every mapped data block is read
//! once to compute its checksum (the data of a version 1 image is taken as it is: there is
//! nothing to check it against), and a current-version checkpoint and superblock are written.
//! The superblock flip is the commit point, so a crash at any moment leaves either the
//! version 1 image as it was (run the command again) or the migrated one.

use std::time::Instant;

use crate::checkpoint::write_offline;
use crate::crc::block_crcs;
use crate::device::{read_blocks, Device};
use crate::error::Result;
use crate::format::{BLOCK, FORMAT_VERSION};
use crate::recovery::load;

/// What a migration did.
#[derive(Debug, Default)]
pub struct MigrateReport {
    /// The version the image had.
    pub from_version: u32,
    /// Data blocks read and checksummed.
    pub blocks: u64,
    pub layers: usize,
    /// Journal chunks of the old image replayed into the new checkpoint.
    pub chunks_replayed: u64,
    pub seconds: f64,
    /// Problems the old image has (fsck's words); they are carried over, for `fsck --repair`.
    pub problems: Vec<String>,
}

/// Largest read while computing checksums.
const CHUNK_BLOCKS: u64 = 256;

/// Convert the image on `dev` to the current format (nothing to do if it is current).
pub fn migrate(dev: &dyn Device) -> Result<MigrateReport> {
    let t0 = Instant::now();
    let mut l = load(dev)?;
    let mut r = MigrateReport {
        from_version: l.sb.version,
        layers: l.layers.map.len(),
        chunks_replayed: l.chunks_replayed,
        problems: l.problems.clone(),
        ..Default::default()
    };
    if l.sb.version == FORMAT_VERSION {
        return Ok(r);
    }
    // Every block some layer owns, once (a block belongs to exactly one layer), in order.
    let mut extents: Vec<(u64, u64)> = l
        .layers
        .topo_order()
        .into_iter()
        .flat_map(|s| l.layers.owned_extents(s))
        .collect();
    extents.sort_unstable();
    for (b, n) in extents {
        let mut at = b;
        while at < b + n {
            let k = (b + n - at).min(CHUNK_BLOCKS);
            let buf = read_blocks(dev, at, k)?;
            l.layers.crcs.set(at, &block_crcs(&buf));
            at += k;
            r.blocks += k;
        }
    }
    let mut sb = l.sb.clone();
    sb.version = FORMAT_VERSION;
    write_offline(dev, &sb, &l.layers, &mut l.alloc, (l.pos, l.seq))?;
    r.seconds = t0.elapsed().as_secs_f64();
    log::info!(
        "migrated a version {} image: {} data blocks ({} MiB) checksummed in {:.1} s",
        r.from_version,
        r.blocks,
        (r.blocks * BLOCK) >> 20,
        r.seconds
    );
    Ok(r)
}
