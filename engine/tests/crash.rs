//! Crash consistency at the engine level: the device image is copied at many points during a
//! workload (what `kill -9` or a power cut leaves, as the in-memory device has no cache), and
//! each copy must recover to a consistent tree that holds every file whose fsync returned.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::sync::Arc;

use engine::mkfs;
use engine::{Caller, Device, Engine, MemDevice, Options};
use testkit::{mkfs_mem, open_mem, pattern, with_cache};

/// The root directory of the layer mkfs creates.
const ROOT: u64 = 1 << 40 | 1;

/// The block cache every engine in this file runs with.
const CACHE: u64 = 1 << 20;

fn check_image(image: Vec<u8>, durable: &BTreeMap<String, Vec<u8>>) {
    let dev = Arc::new(MemDevice::from_bytes(image));
    let report = engine::fsck::check(dev.as_ref()).expect("fsck reads the crashed image");
    assert!(
        report.is_clean(),
        "fsck problems after crash: {:?}",
        report.problems
    );
    let e = open_mem(&dev, with_cache(CACHE));
    for (name, want) in durable {
        let st = e
            .lookup(ROOT, name.as_bytes())
            .unwrap_or_else(|err| panic!("fsynced {name} lost: {err}"));
        let got = e
            .read_sync(st.ino, 0, want.len() as u32 + 10)
            .expect("read back");
        assert_eq!(&got, want, "contents of fsynced {name}");
    }
    e.shutdown().expect("clean shutdown after recovery");
    let report = engine::fsck::check(dev.as_ref()).expect("fsck after remount");
    assert!(
        report.is_clean(),
        "fsck problems after recovery and clean unmount: {:?}",
        report.problems
    );
}

#[test]
fn every_crash_point_recovers_with_fsynced_files_intact() {
    let dev = mkfs_mem(64 << 20);
    let e = open_mem(&dev, with_cache(CACHE));
    let who = Caller { uid: 0, gid: 0 };
    let mut durable: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut crash_images = 0;
    for i in 0..120u32 {
        let name = format!("f{i}");
        let len = 1 + (i as usize * 1237) % 20000;
        let data = pattern(i.into(), len);
        let st = e
            .mknod(ROOT, name.as_bytes(), libc::S_IFREG | 0o644, 0, who, None)
            .expect("create");
        e.write_sync(st.ino, 0, &data).expect("write");
        // Replace-by-rename idiom on every third file.
        if i % 3 == 0 {
            let tmp = format!("t{i}");
            let st2 = e
                .mknod(ROOT, tmp.as_bytes(), libc::S_IFREG | 0o644, 0, who, None)
                .expect("create tmp");
            e.write_sync(st2.ino, 0, &data).expect("write tmp");
            e.fsync_sync().expect("fsync tmp");
            e.rename(ROOT, tmp.as_bytes(), ROOT, name.as_bytes(), 0)
                .expect("rename over");
        }
        // A crash before the fsync: the file may or may not be there, earlier ones must be.
        if i % 7 == 0 {
            check_image(dev.snapshot(), &durable);
            crash_images += 1;
        }
        e.fsync_sync().expect("fsync");
        durable.insert(name.clone(), data);
        // Unlink some older files (after their fsync they are no longer promised).
        if i % 5 == 4 {
            let old = format!("f{}", i - 4);
            e.unlink(ROOT, old.as_bytes()).expect("unlink");
            durable.remove(&old);
            e.fsync_sync().expect("fsync unlink");
        }
        if i % 11 == 0 {
            check_image(dev.snapshot(), &durable);
            crash_images += 1;
        }
        if i == 60 {
            e.checkpoint().expect("checkpoint");
        }
    }
    assert!(crash_images > 20);
    e.shutdown().expect("shutdown");
    check_image(dev.snapshot(), &durable);
}

#[test]
fn full_device_gives_enospc_and_keeps_what_was_written() {
    let dev = mkfs_mem(32 << 20);
    let e = open_mem(&dev, with_cache(CACHE));
    let who = Caller { uid: 0, gid: 0 };
    let keep = e
        .mknod(ROOT, b"keep", libc::S_IFREG | 0o644, 0, who, None)
        .expect("create");
    e.write_sync(keep.ino, 0, &pattern(1, 100_000))
        .expect("write");
    e.fsync_sync().expect("fsync");
    let big = e
        .mknod(ROOT, b"big", libc::S_IFREG | 0o644, 0, who, None)
        .expect("create");
    let chunk = vec![0xabu8; 1 << 20];
    let mut off = 0u64;
    let err = loop {
        match e.write_sync(big.ino, off, &chunk) {
            Ok(n) => off += n as u64,
            Err(err) => break err,
        }
        assert!(off < 64 << 20, "never ran out of space");
    };
    assert_eq!(err.errno(), libc::ENOSPC, "error was {err}");
    // Freeing space makes room again.
    e.unlink(ROOT, b"big").expect("unlink");
    // The creation counted as a kernel reference; dropping it deletes the unlinked file.
    e.forget(big.ino, 1);
    let again = e
        .mknod(ROOT, b"again", libc::S_IFREG | 0o644, 0, who, None)
        .expect("create after ENOSPC");
    e.write_sync(again.ino, 0, &chunk)
        .expect("write after freeing");
    e.shutdown().expect("shutdown on a nearly full device");
    let mut durable = BTreeMap::new();
    durable.insert("keep".to_string(), pattern(1, 100_000));
    check_image(dev.snapshot(), &durable);
}

#[test]
fn garbage_images_are_errors_not_panics() {
    for fill in [0u8, 0xff, 0x5a] {
        let dev = Arc::new(MemDevice::from_bytes(vec![fill; 16 << 20]));
        let d: Arc<dyn Device> = dev;
        assert!(Engine::open(d, Options::default()).is_err());
    }
    // A good image with its checkpoint damaged.
    let dev = Arc::new(MemDevice::new(32 << 20));
    let sb = mkfs(dev.as_ref(), 0, 0).expect("mkfs");
    let mut img = dev.snapshot();
    let at = (sb.ckpt_block * 4096 + 100) as usize;
    img[at] ^= 0xff;
    let d: Arc<dyn Device> = Arc::new(MemDevice::from_bytes(img));
    let err = Engine::open(d, Options::default())
        .err()
        .expect("corrupt checkpoint refused");
    assert!(err.to_string().contains("checksum"), "{err}");
}

/// Persist an engine's pending changes as `--persist-replies` does before an answer.
fn persist(e: &Engine) {
    let (tx, rx) = std::sync::mpsc::channel();
    e.persist(Box::new(move |r| {
        let _ = tx.send(r);
    }));
    rx.recv().expect("answered").expect("persist");
}

/// Early journal chunks (written for `persist` without a flush, on a device with a boot id):
/// a daemon that dies keeps every persisted change in the same boot; after a reboot the
/// changes since the last flush are gone and the rest is intact (a file unlinked by an early
/// chunk is back whole); an fsync makes everything before it hold in any boot. (That blocks
/// an early chunk frees are not reused before a flush is checked by tests/replay.rs's
/// `persisted_changes_with_early_chunks`, which fails if they are.)
#[test]
fn early_chunks_survive_a_daemon_crash_and_drop_cleanly_after_a_reboot() {
    const BOOT: [u8; 16] = [1; 16];
    const OTHER: [u8; 16] = [2; 16];
    let who = Caller { uid: 0, gid: 0 };
    let dev =
        Arc::new(MemDevice::from_bytes(testkit::mkfs_mem(64 << 20).snapshot()).with_boot_id(BOOT));
    // No timed commit in between: only the test's fsyncs flush.
    let quiet = Options {
        commit_interval: std::time::Duration::from_secs(3600),
        ..with_cache(CACHE)
    };
    let e = open_mem(&dev, quiet);
    let make = |name: &str, data: &[u8]| {
        let st = e
            .mknod(ROOT, name.as_bytes(), libc::S_IFREG | 0o644, 0, who, None)
            .expect("create");
        e.write_sync(st.ino, 0, data).expect("write");
        e.forget(st.ino, 1);
    };
    let old = pattern(1, 64 << 10);
    make("old", &old);
    e.fsync_sync().expect("fsync");
    // Persisted, not flushed: "old" unlinked (its blocks freed), "new" written.
    e.unlink(ROOT, b"old").expect("unlink");
    persist(&e);
    let new = pattern(2, 64 << 10);
    make("new", &new);
    persist(&e);
    let early = e
        .counters()
        .early_commits
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(early >= 2, "persist wrote {early} early chunks");
    let crashed = dev.snapshot();

    let look = |image: Vec<u8>, boot: Option<[u8; 16]>| {
        let mut d = MemDevice::from_bytes(image);
        if let Some(b) = boot {
            d = d.with_boot_id(b);
        }
        let d = Arc::new(d);
        let e = open_mem(&d, with_cache(CACHE));
        let read = |name: &str| {
            e.lookup(ROOT, name.as_bytes())
                .ok()
                .map(|st| e.read_sync(st.ino, 0, 1 << 20).expect("read"))
        };
        let r = (read("old"), read("new"));
        e.shutdown().expect("shutdown");
        let report = engine::fsck::check(d.as_ref()).expect("fsck");
        assert!(report.is_clean(), "fsck: {:?}", report.problems);
        r
    };
    // The daemon died; same boot: every persisted change is there.
    assert_eq!(look(crashed.clone(), Some(BOOT)), (None, Some(new.clone())));
    // Rebooted (or a device without the guarantee): back to the last flush, "old" whole.
    assert_eq!(
        look(crashed.clone(), Some(OTHER)),
        (Some(old.clone()), None)
    );
    assert_eq!(look(crashed, None), (Some(old), None));
    // An fsync vouches for the early chunks before it, in any boot.
    e.fsync_sync().expect("fsync");
    assert_eq!(look(dev.snapshot(), Some(OTHER)), (None, Some(new)));
    e.shutdown().expect("shutdown");
}
