//! Buffered I/O through the kernel page cache (FUSE write-back cache) stays correct: what a
//! reader sees, what a frozen or exported layer holds, what survives a crash.
//!
//! - A reader racing an O_DIRECT appender only ever sees bytes written to that file (it used
//!   to see reused blocks' old contents: another file's freed data).
//! - Writes through a shared mmap and through write() on one file lose nothing.
//! - Writes not yet written back by the kernel are in a layer when it is committed,
//!   snapshotted or exported.
//! - The page cache stays coherent across truncate, fallocate, copy_file_range, mixed
//!   O_DIRECT and buffered opens, and copy-on-write of an inherited file.
//! - A buffered writer that never calls fsync, killed with the daemon (kill -9), may lose
//!   recent writes but never finds, after recovery, data in its file that nobody wrote there.

#![forbid(unsafe_code)]

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use testkit::sys::{self, AlignedBuf, Mapping};
use testkit::*;

const BLOCK: usize = 4096;

fn layer_ok(m: &Mount, args: &[&str]) -> String {
    let mut all = vec!["layer"];
    all.extend_from_slice(args);
    m.cli_ok(&all)
}

/// A 4 KiB-aligned buffer of `len` bytes of `fill` (for O_DIRECT).
fn aligned(len: usize, fill: u8) -> AlignedBuf {
    let mut b = AlignedBuf::new(len);
    b.as_mut_slice().fill(fill);
    b
}

/// Fill the free space with a file of `fill`, delete it and let the frees commit, so new
/// files get blocks that held that data.
fn leave_old_data(dir: &Path, fill: u8, mib: usize) {
    let p = dir.join("old-data");
    let chunk = vec![fill; 1 << 20];
    let mut f = File::create(&p).expect("create old-data");
    for _ in 0..mib {
        if f.write_all(&chunk).is_err() {
            break;
        }
    }
    let _ = f.sync_all();
    drop(f);
    fs::remove_file(&p).expect("remove old-data");
    // The removal, then the release of its blocks, each commit with an fsync.
    for _ in 0..2 {
        File::open(dir).expect("dir").sync_all().expect("fsync dir");
    }
}

#[test]
fn reader_racing_an_o_direct_appender_reads_only_written_bytes() {
    require_root_and_fuse!();
    let t = TestDir::new("buffered-race");
    let img = t.mkfs("512M");
    let mnt = t.mountpoint("mnt");
    let m = Mount::start(&img, &mnt);
    let root = m.root();
    leave_old_data(&root, b'X', 400);
    let path = root.join("log");
    for direct_reader in [false, true] {
        let _ = fs::remove_file(&path);
        let w = OpenOptions::new()
            .create(true)
            .append(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
            .expect("open O_DIRECT appender");
        let done = Arc::new(AtomicBool::new(false));
        let writer = {
            let done = done.clone();
            std::thread::spawn(move || {
                let a = aligned(BLOCK, b'a');
                for _ in 0..4096 {
                    (&w).write_all(a.as_slice()).expect("append");
                }
                done.store(true, Ordering::SeqCst);
            })
        };
        let r = OpenOptions::new()
            .read(true)
            .custom_flags(if direct_reader { libc::O_DIRECT } else { 0 })
            .open(&path)
            .expect("open reader");
        let mut buf = aligned(BLOCK, 0);
        let mut seen = 0u64;
        loop {
            let finished = done.load(Ordering::SeqCst);
            let size = r.metadata().expect("fstat").len();
            while seen + BLOCK as u64 <= size {
                let n = r.read_at(buf.as_mut_slice(), seen).expect("read");
                if n == 0 {
                    break;
                }
                if let Some(bad) = buf.as_slice()[..n]
                    .iter()
                    .position(|&b| b != b'a' && b != 0)
                {
                    panic!(
                        "{} reader: byte {} reads {:?}, which nobody wrote to this file",
                        if direct_reader {
                            "O_DIRECT"
                        } else {
                            "buffered"
                        },
                        seen + bad as u64,
                        buf.as_slice()[bad] as char
                    );
                }
                seen += n as u64;
            }
            if finished && seen >= r.metadata().expect("fstat").len() {
                break;
            }
        }
        writer.join().expect("writer");
        assert_eq!(
            fs::read(&path).expect("read back"),
            vec![b'a'; 4096 * BLOCK]
        );
    }
    m.stop();
    assert_fsck_clean(&img, "after the append race");
}

#[test]
fn writes_through_mmap_and_write_on_one_file_lose_nothing() {
    require_root_and_fuse!();
    let t = TestDir::new("buffered-mmap");
    let img = t.mkfs("1G");
    let mnt = t.mountpoint("mnt");
    let m = Mount::start(&img, &mnt);
    let path = m.root().join("shared");
    const WORDS: usize = 64 * 1024; // 256 KiB of u32
    for round in 0..4u32 {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .expect("open");
        f.set_len((WORDS * 4) as u64).expect("size");
        let mut map =
            Mapping::shared(&f, WORDS * 4, libc::PROT_READ | libc::PROT_WRITE, 0).expect("mmap");
        let value = move |i: usize| (round << 24) | i as u32 | 1;
        // Odd words through pwrite (another thread), even words through the mapping, at the
        // same time, on the same pages.
        let writer = {
            let f = f.try_clone().expect("dup");
            std::thread::spawn(move || {
                for i in (1..WORDS).step_by(2) {
                    f.write_at(&value(i).to_ne_bytes(), (i * 4) as u64)
                        .expect("pwrite");
                }
            })
        };
        for i in (0..WORDS).step_by(2) {
            map.write(i * 4, &value(i).to_ne_bytes());
        }
        writer.join().expect("writer");
        map.msync(libc::MS_SYNC).expect("msync");
        map.unmap().expect("munmap");
        f.sync_all().expect("fsync");
        drop(f);
        for (what, data) in [
            ("read back", fs::read(&path).expect("read")),
            ("read back O_DIRECT", {
                let f = OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_DIRECT)
                    .open(&path)
                    .expect("open O_DIRECT");
                let mut b = aligned(WORDS * 4, 0);
                let n = f.read_at(b.as_mut_slice(), 0).expect("read");
                b.as_slice()[..n].to_vec()
            }),
        ] {
            assert_eq!(data.len(), WORDS * 4, "{what}");
            for i in 0..WORDS {
                let got = u32::from_ne_bytes(data[i * 4..i * 4 + 4].try_into().unwrap());
                assert_eq!(
                    got,
                    value(i),
                    "round {round}, {what}: word {i} ({}) lost",
                    if i % 2 == 0 { "mmap" } else { "write()" }
                );
            }
        }
    }
    m.stop();
}

#[test]
fn unsynced_writes_are_in_the_layer_when_it_is_frozen_or_exported() {
    require_root_and_fuse!();
    let t = TestDir::new("buffered-freeze");
    let img = t.mkfs("512M");
    let mnt = t.mountpoint("mnt");
    let m = Mount::start(&img, &mnt);
    let data = |i: u64| pattern(i, 300_000);
    // Commit: written (no fsync, files still open) and then frozen.
    layer_ok(&m, &["create", "c1"]);
    let mut open_files = Vec::new();
    for i in 0..20u64 {
        let mut f = File::create(mnt.join("c1").join(format!("f{i}"))).expect("create");
        f.write_all(&data(i)).expect("write");
        open_files.push(f);
    }
    layer_ok(&m, &["commit", "c1"]);
    drop(open_files);
    layer_ok(&m, &["clone", "c1", "c1-child"]);
    for i in 0..20u64 {
        assert_eq!(
            fs::read(mnt.join("c1-child").join(format!("f{i}"))).expect("read in clone"),
            data(i),
            "f{i} in a clone of the committed layer"
        );
    }
    // Snapshot of a running layer: what it wrote so far goes into the new parent.
    layer_ok(&m, &["clone", "c1", "run"]);
    let mut f = File::create(mnt.join("run").join("state")).expect("create");
    f.write_all(b"before the snapshot").expect("write");
    layer_ok(&m, &["snapshot", "run", "frozen"]);
    f.write_all(b", after").expect("write on");
    drop(f);
    layer_ok(&m, &["clone", "frozen", "view-of-frozen", "--view"]);
    assert_eq!(
        fs::read(mnt.join("view-of-frozen").join("state")).expect("read"),
        b"before the snapshot"
    );
    assert_eq!(
        fs::read(mnt.join("run").join("state")).expect("read"),
        b"before the snapshot, after"
    );
    // Export of an active layer with unwritten pages.
    let mut g = File::create(mnt.join("run").join("exported")).expect("create");
    g.write_all(&data(99)).expect("write");
    let tar = t.join("run.tar");
    m.cli_ok(&["export", "run", "-o", tar.to_str().expect("utf-8 path")]);
    drop(g);
    let mut ar = tar::Archive::new(File::open(&tar).expect("tar"));
    let mut found = false;
    for e in ar.entries().expect("entries") {
        let mut e = e.expect("entry");
        if e.path().expect("path").to_string_lossy() == "exported" {
            let mut v = Vec::new();
            e.read_to_end(&mut v).expect("read entry");
            assert_eq!(v, data(99), "exported file");
            found = true;
        }
    }
    assert!(found, "the unsynced file is in the export");
    m.stop();
    assert_fsck_clean(&img, "after freezing layers with dirty pages");
}

#[test]
fn page_cache_stays_coherent() {
    require_root_and_fuse!();
    let t = TestDir::new("buffered-coherent");
    let img = t.mkfs("512M");
    let mnt = t.mountpoint("mnt");
    let m = Mount::start(&img, &mnt);
    let r = m.root();

    // Truncate down and up: the cut-off bytes read as zeros.
    let p = r.join("trunc");
    fs::write(&p, pattern(1, 50_000)).expect("write");
    let f = OpenOptions::new().write(true).open(&p).expect("open");
    f.set_len(10_000).expect("truncate down");
    f.set_len(50_000).expect("truncate up");
    drop(f);
    let mut want = pattern(1, 10_000);
    want.resize(50_000, 0);
    assert_eq!(fs::read(&p).expect("read"), want, "truncate down and up");

    // fallocate punch hole and zero range on cached, unsynced data.
    let p = r.join("falloc");
    fs::write(&p, pattern(2, 64 * 1024)).expect("write");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&p)
        .expect("open");
    sys::fallocate(
        &f,
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        5000,
        20_000,
    )
    .expect("punch hole");
    sys::fallocate(&f, libc::FALLOC_FL_ZERO_RANGE, 40_000, 3000).expect("zero range");
    let mut want = pattern(2, 64 * 1024);
    want[5000..25_000].fill(0);
    want[40_000..43_000].fill(0);
    assert_eq!(fs::read(&p).expect("read"), want, "punch hole, zero range");
    drop(f);

    // copy_file_range from a file whose pages are not written back yet.
    let src = r.join("cfr-src");
    fs::write(&src, pattern(3, 200_000)).expect("write");
    let dst = r.join("cfr-dst");
    let s = File::open(&src).expect("open src");
    let d = File::create(&dst).expect("create dst");
    let (mut off_in, mut off_out) = (0i64, 0i64);
    while off_out < 200_000 {
        let n = sys::copy_file_range(&s, &mut off_in, &d, &mut off_out, 200_000)
            .expect("copy_file_range");
        assert!(n > 0, "copy_file_range made no progress");
    }
    drop(d);
    assert_eq!(fs::read(&dst).expect("read"), pattern(3, 200_000), "copy");

    // Mixed O_DIRECT and buffered opens of one file.
    let p = r.join("mixed");
    fs::write(&p, vec![1u8; 64 * 1024]).expect("write");
    let direct = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&p)
        .expect("open O_DIRECT");
    let mut b = aligned(8192, 0);
    direct.read_at(b.as_mut_slice(), 8192).expect("direct read");
    assert!(
        b.as_slice().iter().all(|&x| x == 1),
        "O_DIRECT read of unsynced buffered data"
    );
    b.as_mut_slice().fill(2);
    direct.write_at(b.as_slice(), 16384).expect("direct write");
    let mut want = vec![1u8; 64 * 1024];
    want[16384..16384 + 8192].fill(2);
    assert_eq!(
        fs::read(&p).expect("read"),
        want,
        "buffered read after O_DIRECT write"
    );
    let buffered = OpenOptions::new().write(true).open(&p).expect("open");
    buffered
        .write_at(&[3u8; 100], 16400)
        .expect("buffered write");
    want[16400..16500].fill(3);
    direct
        .read_at(b.as_mut_slice(), 16384)
        .expect("direct read");
    assert_eq!(
        b.as_slice(),
        &want[16384..16384 + 8192],
        "O_DIRECT read after a buffered write"
    );
    drop((direct, buffered, s));

    // An inherited file written in a clone (copy-on-write of single blocks), read back in
    // both layers, with the parent's copy untouched.
    fs::write(r.join("inherited"), pattern(4, 1 << 20)).expect("write");
    layer_ok(&m, &["commit", "default"]);
    layer_ok(&m, &["clone", "default", "c"]);
    let cpath = mnt.join("c").join("inherited");
    // Read it first (through the engine: shared data), then write into it.
    assert_eq!(fs::read(&cpath).expect("read"), pattern(4, 1 << 20));
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&cpath)
        .expect("open rw");
    f.write_at(b"changed in the clone", 300_000).expect("write");
    let mut want = pattern(4, 1 << 20);
    want[300_000..300_020].copy_from_slice(b"changed in the clone");
    assert_eq!(fs::read(&cpath).expect("read"), want, "clone's copy");
    drop(f);
    assert_eq!(
        fs::read(mnt.join("c").join("inherited")).expect("read"),
        want,
        "clone's copy after close"
    );
    assert_eq!(
        fs::read(r.join("inherited")).expect("read"),
        pattern(4, 1 << 20),
        "the committed parent is unchanged"
    );
    m.stop();
    // Everything again after a remount (from the device).
    let m = Mount::start(&img, &mnt);
    assert_eq!(
        fs::read(mnt.join("c").join("inherited")).expect("read"),
        want
    );
    assert_eq!(
        fs::read(mnt.join("default").join("cfr-dst")).expect("read"),
        pattern(3, 200_000)
    );
    m.stop();
    assert_fsck_clean(&img, "after the coherence checks");
}

/// One 4 KiB block as the crash writer writes it: 20-byte units of file, block and
/// generation, then a marker.
fn crash_block(file: u32, block: u32, gen: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(BLOCK);
    while b.len() < BLOCK {
        b.extend_from_slice(&file.to_le_bytes());
        b.extend_from_slice(&block.to_le_bytes());
        b.extend_from_slice(&gen.to_le_bytes());
        b.extend_from_slice(b"crash-w!");
    }
    b.truncate(BLOCK);
    b
}

#[test]
fn buffered_writer_killed_never_finds_foreign_data_after_recovery() {
    require_root_and_fuse!();
    let t = TestDir::new("buffered-crash");
    let img = t.mkfs("1G");
    let mnt = t.mountpoint("mnt");
    for round in 0..3u32 {
        let mut m = Mount::start(&img, &mnt);
        let root = m.root();
        if round == 0 {
            leave_old_data(&root, b'Z', 700);
        }
        // Writers rewrite random blocks of their files, never calling fsync, until the
        // daemon is killed under them.
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..3u32)
            .map(|w| {
                let stop = stop.clone();
                let path = root.join(format!("w{w}"));
                std::thread::spawn(move || {
                    let Ok(f) = OpenOptions::new()
                        .create(true)
                        .truncate(false)
                        .write(true)
                        .open(&path)
                    else {
                        return;
                    };
                    let mut rng = Rng::new(0x5eed + w as u64 + round as u64 * 100);
                    let mut gen = round * 1_000_000;
                    while !stop.load(Ordering::SeqCst) {
                        let block = rng.below(4096) as u32;
                        gen += 1;
                        if f.write_at(&crash_block(w, block, gen), block as u64 * BLOCK as u64)
                            .is_err()
                        {
                            return;
                        }
                    }
                })
            })
            .collect();
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(1500) {
            std::thread::sleep(Duration::from_millis(50));
        }
        m.kill9();
        stop.store(true, Ordering::SeqCst);
        for w in writers {
            let _ = w.join();
        }
        m.unmount_dead();
        drop(m);
        assert_fsck_clean(&img, &format!("after kill -9 in round {round}"));
        let m = Mount::start(&img, &mnt);
        for w in 0..3u32 {
            let Ok(data) = fs::read(m.root().join(format!("w{w}"))) else {
                continue;
            };
            assert_eq!(data.len() % BLOCK, 0, "w{w}: size {}", data.len());
            for (i, blk) in data.chunks(BLOCK).enumerate() {
                // The kernel may write a page back while the writer is copying a new version
                // into it (no stable pages), so after a crash a block may mix two of its own
                // versions, or a version and the zeros it replaced, split at any byte. What it
                // may never hold: anything else (another file's data, another block's, the
                // freed 'Z' data). Every byte is the file's, block's or marker's byte, or zero;
                // the generation bytes may be any version's.
                let want = crash_block(w, i as u32, 0);
                let bad = (0..BLOCK).find(|&k| {
                    let gen_byte = (8..12).contains(&(k % 20));
                    !gen_byte && blk[k] != want[k] && blk[k] != 0
                });
                assert!(
                    bad.is_none(),
                    "round {round}: block {i} of w{w} holds data nobody wrote there, from \
                     byte {bad:?}: {:?}",
                    String::from_utf8_lossy(
                        &blk[bad.unwrap_or(0)..][..32.min(BLOCK - bad.unwrap_or(0))]
                    )
                );
            }
        }
        m.stop();
    }
}
