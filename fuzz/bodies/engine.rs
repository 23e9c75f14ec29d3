//! Fuzz target bodies for the engine's decoders, shared by the cargo-fuzz targets
//! (`fuzz/fuzz_targets/*.rs`) and the stable-toolchain corpus driver
//! (`engine/tests/fuzz_corpus.rs`), both of which include this file with `#[path]`.
//!
//! Every body must return normally for every input: a decoder returns an error, never
//! panics. Beyond that, each checks an invariant: what decodes re-encodes to something that
//! decodes to the same thing.
#![allow(dead_code)]

use std::io;
use std::sync::{Arc, Mutex, OnceLock};

use engine::format::{Superblock, BLOCK_SIZE};
use engine::layer::Layers;
use engine::{journal, Device};

/// Superblock slot decoding.
pub fn superblock(data: &[u8]) {
    let Ok(sb) = Superblock::decode(data, 0) else {
        return;
    };
    let again = Superblock::decode(&sb.encode(), 0).expect("an encoded superblock decodes");
    assert_eq!(again.encode(), sb.encode(), "superblock round trip");
    // Layout arithmetic on hostile numbers must not overflow-panic either.
    let _ = Superblock::layout(sb.total_blocks % (1 << 50));
}

/// The file system mkfs leaves: the base for record application.
fn base_layers() -> &'static Layers {
    static L: OnceLock<Layers> = OnceLock::new();
    L.get_or_init(|| {
        let dev = engine::MemDevice::new(engine::format::MIN_DEVICE_SIZE);
        engine::mkfs(&dev, 0, 0).expect("mkfs");
        engine::load(&dev).expect("load").layers
    })
}

/// Re-encoding a set of layers and decoding it gives the same encoding (a checkpoint of
/// whatever replay accepted can be written and read back).
fn layers_round_trip(l: &Layers) {
    let enc = l.encode();
    let back = match Layers::decode(&enc, 0) {
        Ok(b) => b,
        Err(e) => panic!("a checkpoint the engine would write does not decode: {e}"),
    };
    assert!(back.encode() == enc, "checkpoint round trip differs");
    for s in back.topo_order() {
        let _ = back.owned_extents(s);
    }
}

/// Journal chunk framing and records, then the records applied to the mkfs tree as replay
/// would apply them.
pub fn journal(data: &[u8]) {
    if let Some(h) = journal::decode_chunk_header(data) {
        let _ = journal::chunk_payload(&h, data);
    }
    let Ok(recs) = journal::decode_records(data, 0) else {
        return;
    };
    let mut enc = engine::codec::Enc::new();
    for (slot, r) in &recs {
        journal::encode_record(&mut enc, *slot, r);
    }
    let again = journal::decode_records(&enc.buf, 0).expect("encoded records decode");
    assert!(again == recs, "record round trip differs");
    let mut layers = base_layers().clone();
    for (slot, r) in &recs {
        let (mut freed, mut mapped) = (Vec::new(), Vec::new());
        if layers.apply(*slot, r, &mut freed, &mut mapped).is_err() {
            // Replay stops the mount here; what was applied so far must still be sound.
            break;
        }
    }
    layers_round_trip(&layers);
}

/// Checkpoint block framing and the checkpoint payload (every layer and its tree).
pub fn checkpoint(data: &[u8]) {
    // The generation the block is checked against comes from the input too, so the fuzzer
    // can get past that check.
    let gen = data
        .get(8..16)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
        .unwrap_or(0);
    let _ = journal::decode_ckpt_block(data, gen, 7);
    if let Ok(l) = Layers::decode(data, 0) {
        layers_round_trip(&l);
    }
    // What fsck and repair read: a layer whose parent is missing is kept.
    let _ = Layers::decode_salvage(data, 0, engine::format::FORMAT_VERSION);
}

/// A base image with a checkpoint and journal chunks to replay (a crash image).
fn base_image() -> &'static (Vec<u8>, Superblock) {
    static I: OnceLock<(Vec<u8>, Superblock)> = OnceLock::new();
    I.get_or_init(|| {
        let dev = Arc::new(engine::MemDevice::new(engine::format::MIN_DEVICE_SIZE));
        engine::mkfs(dev.as_ref(), 0, 0).expect("mkfs");
        let d: Arc<dyn Device> = dev.clone();
        let e = engine::Engine::open(
            d,
            engine::Options {
                cache_bytes: 0,
                stats: false,
                ..Default::default()
            },
        )
        .expect("open");
        let root = e.layer_root("default").expect("root");
        let who = engine::Caller { uid: 0, gid: 0 };
        let dir = e
            .mknod(root, b"dir", libc::S_IFDIR | 0o755, 0, who, None)
            .expect("mkdir");
        for (i, name) in [&b"a"[..], b"b", b"c"].iter().enumerate() {
            let f = e
                .mknod(dir.ino, name, libc::S_IFREG | 0o644, 0, who, None)
                .expect("create");
            e.write_sync(f.ino, 0, &vec![i as u8 + 1; 5000 * (i + 1)])
                .expect("write");
            e.fsync_sync().expect("fsync");
        }
        e.mknod(root, b"l", libc::S_IFLNK | 0o777, 0, who, Some(b"dir/a"))
            .expect("symlink");
        e.layer_commit("default").expect("commit");
        e.layer_clone(
            "default",
            "c",
            engine::LayerState::Active,
            Default::default(),
        )
        .expect("clone");
        // No shutdown: the journal holds chunks to replay.
        let img = dev.snapshot();
        let sb = engine::read_superblock(dev.as_ref()).expect("sb");
        let _ = e.shutdown();
        (img, sb)
    })
}

/// Changed blocks over the shared base image.
struct Overlay {
    base: &'static [u8],
    blocks: Mutex<std::collections::HashMap<u64, Vec<u8>>>,
}

impl Device for Overlay {
    fn size(&self) -> u64 {
        self.base.len() as u64
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if offset as usize + buf.len() > self.base.len() {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        let m = self.blocks.lock().unwrap_or_else(|p| p.into_inner());
        for (i, out) in buf.chunks_mut(BLOCK_SIZE).enumerate() {
            let b = offset / BLOCK_SIZE as u64 + i as u64;
            match m.get(&b) {
                Some(x) => out.copy_from_slice(&x[..out.len()]),
                None => {
                    let s = b as usize * BLOCK_SIZE;
                    out.copy_from_slice(&self.base[s..s + out.len()]);
                }
            }
        }
        Ok(())
    }
    fn write_at(&self, _buf: &[u8], _offset: u64) -> io::Result<()> {
        Err(io::Error::from_raw_os_error(libc::EROFS))
    }
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
}

/// A whole image with one metadata block patched, then recovery (`fs::load`) and fsck.
///
/// Input: byte 0 picks the block (bits 0-2: superblock A, superblock B, journal blocks 0-3,
/// checkpoint block) and whether to fix up the structure's checksum afterwards (bit 7), so
/// the fuzzer reaches past the CRC checks; bytes 1-2 are the offset in the block; the rest is
/// written there.
pub fn image(data: &[u8]) {
    if data.len() < 3 {
        return;
    }
    let (img, sb) = base_image();
    let block = match data[0] & 7 {
        0 => 0,
        1 => 1,
        k @ 2..=5 => sb.journal_start + (sb.replay_block - sb.journal_start) + (k as u64 - 2),
        _ => sb.ckpt_block,
    };
    let off = u16::from_le_bytes([data[1], data[2]]) as usize % BLOCK_SIZE;
    let s = block as usize * BLOCK_SIZE;
    let mut b = img[s..s + BLOCK_SIZE].to_vec();
    let n = (data.len() - 3).min(BLOCK_SIZE - off);
    b[off..off + n].copy_from_slice(&data[3..3 + n]);
    let mut blocks = std::collections::HashMap::new();
    if data[0] & 0x80 != 0 {
        if block < 2 {
            // Superblock: CRC-32C of bytes 0..117 at 117.
            let c = crc32c::crc32c(&b[..117]);
            b[117..121].copy_from_slice(&c.to_le_bytes());
        } else if block == sb.ckpt_block {
            // Checkpoint block CRC, then the superblock's length and CRC of the payload.
            b[24..28].fill(0);
            let c = crc32c::crc32c(&b);
            b[24..28].copy_from_slice(&c.to_le_bytes());
            let used = u32::from_le_bytes(b[4..8].try_into().unwrap_or([0; 4])) as usize;
            if sb.ckpt_blocks == 1 && used <= journal::CKPT_PAYLOAD {
                let payload = &b[32..32 + used];
                let mut nsb = sb.clone();
                nsb.ckpt_bytes = used as u64;
                nsb.ckpt_crc = crc32c::crc32c(payload);
                let enc = nsb.encode();
                blocks.insert(nsb.generation % 2, enc);
            }
        } else {
            // Journal chunk: CRC over header (CRC field zero) and payload.
            let len = 32 + u32::from_le_bytes(b[24..28].try_into().unwrap_or([0; 4])) as usize;
            if len <= BLOCK_SIZE {
                b[28..32].fill(0);
                let c = crc32c::crc32c(&b[..len]);
                b[28..32].copy_from_slice(&c.to_le_bytes());
            }
        }
    }
    blocks.insert(block, b);
    let dev = Overlay {
        base: img,
        blocks: Mutex::new(blocks),
    };
    let _ = engine::load(&dev);
    let _ = engine::fsck::check(&dev);
}
