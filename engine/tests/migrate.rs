//! Format version 1 (before data checksums) to version 2.
//!
//! `data/v1-image.blocks` is a 16 MiB image written by the engine of commit 306f28d (format
//! version 1): a committed layer `default` (files `a`, `dir/b`, symlink `s`) and an active
//! clone `c` that rewrote a block of `a` and added `c-only`, left as a crash image (the
//! clone's changes only in the journal). The file holds the image's size, then each non-zero
//! block as (block number u64, 4096 bytes).
//!
//! The engine refuses to mount it and names `strata migrate`; [`engine::migrate`] converts it
//! (journal replayed, every data block checksummed) and the result mounts with every file as
//! it was, fsck clean. A crash at every flush point of the migration (and random subsets and
//! torn writes between) leaves an image that is still version 1 and migrates, or migrated.

#![forbid(unsafe_code)]

use std::sync::Arc;

use engine::{Device, Engine, MemDevice};
use testkit::replay::{opts, Entry, RecordingDevice};
use testkit::{read_all, resolve, Rng};

const BLOCK: usize = 4096;

fn v1_image() -> Vec<u8> {
    let raw = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/v1-image.blocks"
    ))
    .expect("fixture");
    let size = u64::from_le_bytes(raw[..8].try_into().expect("8 bytes")) as usize;
    let mut img = vec![0u8; size];
    for rec in raw[8..].chunks(8 + BLOCK) {
        let b = u64::from_le_bytes(rec[..8].try_into().expect("8 bytes")) as usize;
        img[b * BLOCK..(b + 1) * BLOCK].copy_from_slice(&rec[8..]);
    }
    img
}

/// The generator's file contents.
fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[0] ^ seed ^ ((i / 4096) as u8))
        .collect()
}

/// Every file of the fixture holds what the generator wrote.
fn check_files(e: &Engine, what: &str) {
    let file = |layer: &str, path: &str| {
        let n =
            resolve(e, layer, path).unwrap_or_else(|err| panic!("{what}: {layer}/{path}: {err}"));
        read_all(e, n)
    };
    assert!(
        file("default", "a") == pattern(1, 8000),
        "{what}: default/a"
    );
    assert!(
        file("default", "dir/b") == pattern(2, 100 << 10),
        "{what}: default/dir/b"
    );
    let mut ca = pattern(1, 4096);
    ca.extend(pattern(3, 4096));
    assert!(file("c", "a") == ca, "{what}: c/a");
    assert!(
        file("c", "dir/b") == pattern(2, 100 << 10),
        "{what}: c/dir/b"
    );
    assert!(file("c", "c-only") == pattern(4, 12345), "{what}: c/c-only");
    let s = resolve(e, "default", "s").expect("symlink");
    assert_eq!(
        &*e.readlink(s).expect("readlink"),
        b"dir/b",
        "{what}: symlink"
    );
}

#[test]
fn a_version_1_image_is_refused_then_migrated_with_every_file_intact() {
    let dev = Arc::new(MemDevice::from_bytes(v1_image()));
    let d: Arc<dyn Device> = dev.clone();
    match Engine::open(d, opts()) {
        Ok(_) => panic!("a version 1 image must not mount"),
        Err(err) => {
            let msg = err.to_string();
            assert!(
                msg.contains("version 1") && msg.contains("strata migrate"),
                "{msg}"
            );
        }
    }
    let before = engine::fsck::check(dev.as_ref()).expect("fsck reads version 1");
    assert_eq!(before.version, 1);
    assert!(before.is_clean(), "{:?}", before.problems);
    let r = engine::migrate(dev.as_ref()).expect("migrate");
    assert_eq!(r.from_version, 1);
    assert!(
        r.chunks_replayed >= 1,
        "the clone's changes were in the journal"
    );
    assert!(
        r.blocks >= 2 + 25 + 1 + 4,
        "{} blocks checksummed",
        r.blocks
    );
    let after = engine::fsck::check(dev.as_ref()).expect("fsck");
    assert_eq!(after.version, 2);
    assert!(after.is_clean(), "{:?}", after.problems);
    let d: Arc<dyn Device> = dev.clone();
    let e = Engine::open(d, opts()).expect("the migrated image mounts");
    check_files(&e, "migrated");
    // Writes after the migration are checksummed like any other.
    let croot = e.layer_root("c").expect("root");
    let st = e.lookup(croot, b"c-only").expect("lookup");
    e.write_sync(st.ino, 100, b"new").expect("write");
    e.fsync_sync().expect("fsync");
    e.shutdown().expect("shutdown");
    let again = engine::migrate(dev.as_ref()).expect("migrate again");
    assert_eq!(again.from_version, 2, "a migrated image is left alone");
    let d: Arc<dyn Device> = dev.clone();
    let e = Engine::open(d, opts()).expect("reopen");
    let n = resolve(&e, "c", "c-only").expect("c-only");
    let mut want = pattern(4, 12345);
    want[100..103].copy_from_slice(b"new");
    assert!(read_all(&e, n) == want);
    e.shutdown().expect("shutdown");
}

#[test]
fn a_crash_during_migration_leaves_the_old_image_or_the_migrated_one() {
    let base = v1_image();
    let rec = Arc::new(RecordingDevice::new(base.clone()));
    engine::migrate(rec.as_ref()).expect("migrate");
    let log = rec.log();
    let flushes: Vec<usize> = log
        .iter()
        .enumerate()
        .filter(|(_, e)| matches!(e, Entry::Flush))
        .map(|(i, _)| i)
        .collect();
    assert!(
        flushes.len() >= 2,
        "migration flushes the checkpoint, then the superblock"
    );
    let mut rng = Rng::new(16);
    let mut images = 0;
    let mut migrated = 0;
    // A crash image: every write before `upto`, then each write in `upto..until` with
    // probability 1/2 (torn to its first 512·k bytes when `torn`).
    let image = |upto: usize, until: usize, torn: bool, rng: &mut Rng| {
        let mut img = base.clone();
        for (i, e) in log.iter().enumerate().take(until) {
            let Entry::Write { off, data } = e else {
                continue;
            };
            let keep = if i < upto {
                data.len()
            } else if !rng.chance(1, 2) {
                continue;
            } else if torn {
                (512 * (1 + rng.below(8) as usize)).min(data.len())
            } else {
                data.len()
            };
            let o = *off as usize;
            img[o..o + keep].copy_from_slice(&data[..keep]);
        }
        img
    };
    let mut windows = vec![0];
    windows.extend(flushes.iter().map(|f| f + 1));
    for (k, &start) in windows.iter().enumerate() {
        let end = flushes.get(k).copied().unwrap_or(log.len());
        for variant in 0..5 {
            let img = match variant {
                0 => image(start, start, false, &mut rng),
                1 | 2 => image(start, end, false, &mut rng),
                _ => image(start, end, true, &mut rng),
            };
            let what = format!("crash image {variant} after flush {k}");
            let dev = Arc::new(MemDevice::from_bytes(img));
            let version = engine::read_superblock(dev.as_ref())
                .unwrap_or_else(|err| panic!("{what}: {err}"))
                .version;
            if version == 2 {
                migrated += 1;
            }
            // Either way, migrate (again) and everything is there.
            engine::migrate(dev.as_ref()).unwrap_or_else(|err| panic!("{what}: migrate: {err}"));
            let report = engine::fsck::check(dev.as_ref()).expect("fsck");
            assert!(report.is_clean(), "{what}: {:?}", report.problems);
            let d: Arc<dyn Device> = dev.clone();
            let e = Engine::open(d, opts()).unwrap_or_else(|err| panic!("{what}: open: {err}"));
            check_files(&e, &what);
            e.shutdown().expect("shutdown");
            images += 1;
        }
    }
    assert!(
        migrated > 0 && migrated < images,
        "{migrated} of {images} images were migrated"
    );
}
