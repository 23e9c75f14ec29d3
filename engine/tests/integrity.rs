//! Data integrity on an in-memory device: corruption injected into data blocks (a flipped
//! bit, a zeroed block, a torn block, two blocks swapped) is detected on every read (EIO,
//! counted; never the bad data, not even from the cache on a second read) and by the offline
//! and online scrub, which name every layer and path that maps each bad block; and online
//! grow: a device that grows is taken in by `Engine::grow` (or at the next open), the new
//! space is usable and durable, and a crash at any flush point of a grow leaves a file system
//! of the old size or the new one, fsck clean, with every fsynced file intact.

#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use engine::scrub::{scrub_offline, ScrubOptions, ScrubState};
use engine::{Caller, Device, Engine, LayerState, MemDevice, Node, Options};
use testkit::replay::{Entry, RecordingDevice};
use testkit::{mem_engine, open_mem, pattern, read_all, resolve};

const WHO: Caller = Caller { uid: 0, gid: 0 };
const BLOCK: usize = 4096;

fn create(e: &Engine, layer: &str, name: &str, data: &[u8]) -> Node {
    let root = e.layer_root(layer).expect("root");
    let st = e
        .mknod(root, name.as_bytes(), libc::S_IFREG | 0o644, 0, WHO, None)
        .expect("create");
    e.forget(st.ino, 1);
    let mut off = 0;
    while off < data.len() {
        let end = (off + (1 << 20)).min(data.len());
        e.write_sync(st.ino, off as u64, &data[off..end])
            .expect("write");
        off = end;
    }
    st.ino
}

/// The physical block holding `want` (a 4 KiB block of unique content) in image `img`.
fn find_block(img: &[u8], want: &[u8]) -> usize {
    let hits: Vec<usize> = img
        .chunks(BLOCK)
        .enumerate()
        .filter(|(_, b)| *b == want)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(hits.len(), 1, "the block is on the device exactly once");
    hits[0]
}

/// Read file `n` block by block: the blocks that fail with EIO, and every other block's data
/// checked against `want`.
fn eio_blocks(e: &Engine, n: Node, want: &[u8], what: &str) -> BTreeSet<usize> {
    let mut bad = BTreeSet::new();
    for (i, w) in want.chunks(BLOCK).enumerate() {
        match e.read_sync(n, (i * BLOCK) as u64, BLOCK as u32) {
            Ok(d) => assert!(d == w, "{what}: block {i} returned wrong data"),
            Err(err) => {
                assert_eq!(err.errno(), libc::EIO, "{what}: block {i}: {err}");
                bad.insert(i);
            }
        }
    }
    bad
}

#[test]
fn corrupt_data_blocks_get_eio_on_every_read_and_scrub_names_their_layers_and_paths() {
    let (dev, e) = mem_engine(64 << 20, Options::default());
    let files: Vec<(&str, Vec<u8>)> = ["bit", "zeroed", "torn", "swapped", "clean"]
        .iter()
        .enumerate()
        .map(|(i, n)| (*n, pattern(100 + i as u64, 4 * BLOCK)))
        .collect();
    for (name, data) in &files {
        create(&e, "default", name, data);
    }
    e.fsync_sync().expect("fsync");
    let r = e.scrub_start(ScrubOptions::default()).expect("scrub");
    assert_eq!(r.state, ScrubState::Running);
    let st = e.scrub_wait().expect("status");
    assert_eq!(st.state, ScrubState::Done);
    assert!(st.report.is_clean(), "{:?}", st.report.bad);
    assert_eq!(
        st.report.checked_blocks, 20,
        "every mapped data block checked"
    );
    // A clone shares the committed files: a bad block is reported with both users.
    e.layer_commit("default").expect("commit");
    e.layer_clone("default", "c", LayerState::Active, BTreeMap::new())
        .expect("clone");
    e.shutdown().expect("shutdown");
    drop(e);

    let mut img = dev.snapshot();
    let at = |name: &str, i: usize| {
        let data = &files.iter().find(|f| f.0 == name).expect("file").1;
        find_block(&img, &data[i * BLOCK..(i + 1) * BLOCK])
    };
    let (bit, zeroed, torn) = (at("bit", 1), at("zeroed", 2), at("torn", 0));
    let (s0, s3) = (at("swapped", 0), at("swapped", 3));
    img[bit * BLOCK + 1234] ^= 0x10;
    img[zeroed * BLOCK..(zeroed + 1) * BLOCK].fill(0);
    // Torn: only the first 1 KiB of the block reached the device, the rest is stale.
    img[torn * BLOCK + 1024..(torn + 1) * BLOCK].copy_from_slice(&pattern(7, BLOCK - 1024));
    for k in 0..BLOCK {
        img.swap(s0 * BLOCK + k, s3 * BLOCK + k);
    }
    let bad_pblks: BTreeSet<u64> = [bit, zeroed, torn, s0, s3]
        .iter()
        .map(|b| *b as u64)
        .collect();

    // Offline scrub of the image.
    let off = scrub_offline(
        Arc::new(MemDevice::from_bytes(img.clone())),
        ScrubOptions::default(),
    )
    .expect("offline scrub");
    assert_eq!(off.bad_count, 5);
    assert_eq!(off.checked_blocks, 20);
    let found: BTreeSet<u64> = off.bad.iter().map(|b| b.pblk).collect();
    assert_eq!(found, bad_pblks);
    let bb = off.bad.iter().find(|b| b.pblk == bit as u64).expect("bit");
    let mut users: Vec<(String, String, u64)> = bb
        .users
        .iter()
        .map(|u| (u.layer.clone(), u.path.clone(), u.lblk))
        .collect();
    users.sort();
    assert_eq!(
        users,
        vec![
            ("c".to_string(), "/bit".to_string(), 1),
            ("default".to_string(), "/bit".to_string(), 1)
        ]
    );
    assert!(bb.expected.is_some() && bb.got.is_some() && bb.expected != bb.got);

    // Every read of a bad block fails, twice (nothing bad is cached), through both layers;
    // every other block reads back intact.
    let dev = Arc::new(MemDevice::from_bytes(img));
    let e = open_mem(&dev, Options::default());
    let want_bad: BTreeMap<&str, BTreeSet<usize>> = [
        ("bit", [1].into()),
        ("zeroed", [2].into()),
        ("torn", [0].into()),
        ("swapped", [0, 3].into()),
        ("clean", BTreeSet::new()),
    ]
    .into();
    for round in 0..2 {
        for layer in ["default", "c"] {
            for (name, data) in &files {
                let n = resolve(&e, layer, name).expect("resolve");
                let what = format!("{layer}/{name}, round {round}");
                assert_eq!(eio_blocks(&e, n, data, &what), want_bad[name], "{what}");
                if want_bad[name].is_empty() {
                    assert!(read_all(&e, n) == *data, "{what}");
                } else {
                    let err = e
                        .read_sync(n, 0, (4 * BLOCK) as u32)
                        .expect_err("a read over a bad block fails whole");
                    assert_eq!(err.errno(), libc::EIO);
                }
            }
        }
    }
    let errors = e.counters().checksum_errors.load(Ordering::Relaxed);
    assert!(errors >= 20, "{errors} checksum errors counted");

    // Online scrub finds the same blocks and names their users.
    e.scrub_start(ScrubOptions {
        rate_bytes: Some(1 << 30),
    })
    .expect("online scrub");
    let st = e.scrub_wait().expect("status");
    assert_eq!(st.state, ScrubState::Done);
    assert_eq!(st.report.bad_count, 5);
    let found: BTreeSet<u64> = st.report.bad.iter().map(|b| b.pblk).collect();
    assert_eq!(found, bad_pblks);
    for b in &st.report.bad {
        assert_eq!(b.users.len(), 2, "block {}: {:?}", b.pblk, b.users);
    }
    assert_eq!(e.counters().scrub_bad_blocks.load(Ordering::Relaxed), 5);
    // A bad block rewritten is good again (every write goes to new blocks).
    let n = resolve(&e, "c", "bit").expect("resolve");
    let data = pattern(9, BLOCK);
    e.write_sync(n, BLOCK as u64, &data).expect("rewrite");
    assert!(e.read_sync(n, BLOCK as u64, BLOCK as u32).expect("read") == data);
    e.shutdown().expect("shutdown");
}

#[test]
fn a_running_scrub_refuses_a_second_is_cancelled_and_stops_at_shutdown() {
    let (_dev, e) = mem_engine(64 << 20, Options::default());
    create(&e, "default", "big", &pattern(1, 8 << 20));
    e.fsync_sync().expect("fsync");
    // 4 KiB/s: this scrub cannot finish before it is cancelled.
    e.scrub_start(ScrubOptions {
        rate_bytes: Some(4096),
    })
    .expect("scrub");
    let again = e.scrub_start(ScrubOptions::default());
    assert!(again.is_err(), "a second scrub while one runs is refused");
    e.scrub_cancel();
    let st = e.scrub_status().expect("status");
    assert_eq!(st.state, ScrubState::Cancelled);
    assert!(st.report.checked_blocks < st.report.total_blocks);
    // Shutdown stops a running scrub too.
    e.scrub_start(ScrubOptions {
        rate_bytes: Some(4096),
    })
    .expect("scrub");
    e.shutdown().expect("shutdown with a scrub running");
}

/// A device whose visible size can grow (as an image file does under `truncate -s`) over a
/// recording device holding the larger image.
struct Growable {
    rec: Arc<RecordingDevice>,
    size: AtomicU64,
}

impl Device for Growable {
    fn size(&self) -> u64 {
        self.size.load(Ordering::SeqCst)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if offset + buf.len() as u64 > self.size() {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        self.rec.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if offset + buf.len() as u64 > self.size() {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        self.rec.write_at(buf, offset)
    }
    fn flush(&self) -> io::Result<()> {
        self.rec.flush()
    }
}

const OLD: u64 = 32 << 20;
const NEW: u64 = 96 << 20;

#[test]
fn a_device_that_grows_is_taken_in_online_and_at_open_and_survives_a_crash_at_any_point() {
    let base = testkit::mkfs_mem(OLD).snapshot();
    let mut padded = base.clone();
    padded.resize(NEW as usize, 0);
    let rec = Arc::new(RecordingDevice::new(padded.clone()));
    let dev = Arc::new(Growable {
        rec: rec.clone(),
        size: AtomicU64::new(OLD),
    });
    let d: Arc<dyn Device> = dev.clone();
    let e = Engine::open(d, Options::default()).expect("open");
    let before = e.statfs();
    let a = pattern(1, 16 << 20);
    create(&e, "default", "a", &a);
    e.fsync_sync().expect("fsync");
    // Not grown yet: nothing to do.
    let r = e.grow().expect("grow");
    assert_eq!((r.old_bytes, r.new_bytes), (OLD, OLD));
    let b = pattern(2, 40 << 20);
    assert!(
        e.statfs().bfree * (BLOCK as u64) < b.len() as u64,
        "b does not fit before the grow"
    );
    let grow_at = rec.log_len();

    dev.size.store(NEW, Ordering::SeqCst);
    let r = e.grow().expect("grow");
    assert_eq!((r.old_bytes, r.new_bytes), (OLD, NEW));
    let after = e.statfs();
    assert_eq!(
        after.blocks - before.blocks,
        (NEW - OLD) / BLOCK as u64,
        "statfs shows the new blocks"
    );
    create(&e, "default", "b", &b);
    e.fsync_sync().expect("fsync");
    let b_durable = rec.log_len();
    assert!(read_all(&e, resolve(&e, "default", "b").expect("b")) == b);
    e.shutdown().expect("shutdown");
    let sb = engine::read_superblock(rec.as_ref()).expect("superblock");
    assert_eq!(sb.total_blocks * BLOCK as u64, NEW);

    // A crash at every flush point from the grow on: the old size or the new one, fsck
    // clean, `a` intact, `b` intact once its fsync returned; opening takes in the device's
    // full size either way.
    let log = rec.log();
    let mut img = base.clone();
    img.resize(NEW as usize, 0);
    let (mut old_size, mut new_size) = (0, 0);
    for (i, entry) in log.iter().enumerate() {
        if let Entry::Write { off, data } = entry {
            img[*off as usize..*off as usize + data.len()].copy_from_slice(data);
            continue;
        }
        if i < grow_at {
            continue;
        }
        let what = format!("crash at log entry {i} (grow at {grow_at})");
        let cdev = Arc::new(MemDevice::from_bytes(img.clone()));
        let total = engine::read_superblock(cdev.as_ref())
            .unwrap_or_else(|err| panic!("{what}: {err}"))
            .total_blocks
            * BLOCK as u64;
        match total {
            OLD => old_size += 1,
            NEW => new_size += 1,
            t => panic!("{what}: size {t}"),
        }
        let report = engine::fsck::check(cdev.as_ref()).expect("fsck");
        assert!(report.is_clean(), "{what}: {:?}", report.problems);
        let e = open_mem(&cdev, Options::default());
        assert_eq!(
            e.statfs().blocks,
            after.blocks,
            "{what}: open grows to the device"
        );
        assert!(
            read_all(&e, resolve(&e, "default", "a").expect("a")) == a,
            "{what}: a"
        );
        if i >= b_durable {
            assert!(
                read_all(&e, resolve(&e, "default", "b").expect("b")) == b,
                "{what}: b"
            );
        }
        e.shutdown().expect("shutdown");
        let report = engine::fsck::check(cdev.as_ref()).expect("fsck");
        assert!(report.is_clean(), "{what}, reopened: {:?}", report.problems);
    }
    assert!(
        old_size > 0 && new_size > 0,
        "{old_size} old, {new_size} new"
    );
    drop(padded);
}
