//! A read never returns data that was not written to that file.
//!
//! Regression test: a write publishes its new mapping and size under the metadata lock, and
//! its data reaches the device later. A reader racing an appending writer (reading each new
//! block as soon as the size covers it) used to read the block from the device before the
//! data got there, and returned the block's previous contents: another file's freed data.
//! Here the device is first filled with a file of 'X', which is deleted (its blocks are then
//! reused by the appender); the reader must only ever see 'a' or zeros.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use engine::{mkfs, Caller, Engine, FileDevice, Options};

const WHO: Caller = Caller { uid: 0, gid: 0 };
const CHUNK: usize = 64 << 10;

#[test]
fn reader_racing_an_appender_never_sees_old_contents_of_reused_blocks() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("stale-data");
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let path = dir.join("stale.img");
    let _ = std::fs::remove_file(&path);
    engine::prepare_image(&path, Some(160 << 20)).expect("image");
    mkfs(&FileDevice::open(&path).expect("open"), 0, 0).expect("mkfs");
    let e = Engine::open(
        Arc::new(FileDevice::open(&path).expect("O_DIRECT image")),
        Options {
            // No block cache: it must not be what hides (or causes) the race.
            cache_bytes: 0,
            commit_interval: Duration::from_millis(20),
            ..Default::default()
        },
    )
    .expect("open");
    let root = e.layer_root("default").expect("root");

    // Old data everywhere: a file of 'X' filling the device, deleted, its frees committed.
    let old = e
        .mknod(root, b"old", libc::S_IFREG | 0o600, 0, WHO, None)
        .expect("create old");
    let xs = vec![b'X'; 1 << 20];
    let mut filled = 0u64;
    while e.write_sync(old.ino, filled << 20, &xs).is_ok() {
        filled += 1;
        if filled % 16 == 0 {
            e.fsync_sync().expect("fsync");
        }
    }
    assert!(
        filled > 64,
        "only {filled} MiB written before the device was full"
    );
    e.fsync_sync().expect("fsync");
    e.unlink(root, b"old").expect("unlink");
    e.forget(old.ino, 1);
    e.fsync_sync().expect("commit the unlink");
    e.fsync_sync().expect("and the frees");

    let log = e
        .mknod(root, b"log", libc::S_IFREG | 0o600, 0, WHO, None)
        .expect("create log");
    let rounds = 3;
    for round in 0..rounds {
        let done = Arc::new(AtomicBool::new(false));
        let writer = {
            let e = e.clone();
            let done = done.clone();
            std::thread::spawn(move || {
                let a = vec![b'a'; CHUNK];
                let base = (round * 256 * CHUNK) as u64;
                for i in 0..256u64 {
                    e.write_sync(log.ino, base + i * CHUNK as u64, &a)
                        .expect("append");
                }
                done.store(true, Ordering::SeqCst);
            })
        };
        let mut seen = (round * 256 * CHUNK) as u64;
        let mut reads = 0u64;
        loop {
            let finished = done.load(Ordering::SeqCst);
            let size = e.getattr(log.ino).expect("getattr").attr.size;
            while seen < size {
                let n = (size - seen).min(CHUNK as u64) as u32;
                let got = e.read_sync(log.ino, seen, n).expect("read");
                reads += 1;
                if let Some(bad) = got.iter().position(|&b| b != b'a' && b != 0) {
                    panic!(
                        "round {round}: byte {} of the file reads {:?}, which nobody wrote there \
                         (after {reads} reads)",
                        seen + bad as u64,
                        got[bad] as char
                    );
                }
                seen += got.len() as u64;
            }
            if finished && seen >= e.getattr(log.ino).expect("getattr").attr.size {
                break;
            }
        }
        writer.join().expect("writer");
    }
    e.fsync_sync().expect("fsync");
    // What is there at the end is exactly what was written.
    let size = e.getattr(log.ino).expect("getattr").attr.size;
    assert_eq!(size, (rounds * 256 * CHUNK) as u64);
    let all = e.read_sync(log.ino, 0, size as u32).expect("read all");
    assert!(all.iter().all(|&b| b == b'a'));
    e.shutdown().expect("shutdown");
    let _ = std::fs::remove_file(&path);
}
