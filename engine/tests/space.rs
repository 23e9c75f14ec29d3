//! Overwriting never runs out of space while the file system is mostly free.
//!
//! Regression test: an overwrite gets new blocks and frees the old ones once its record
//! commits (every second, or at fsync). Writers overwriting files faster than a second's
//! worth of free space got ENOSPC on an image 80 % free: the write that found no free block
//! committed once and retried once, and other writers took the freed blocks first.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine::{Caller, Options};
use testkit::mem_engine;

const WHO: Caller = Caller { uid: 0, gid: 0 };
const MIB: u64 = 1 << 20;

#[test]
fn writers_overwriting_small_files_on_a_mostly_free_image_never_get_enospc() {
    let (_dev, e) = mem_engine(
        256 * MIB,
        Options {
            cache_bytes: 0,
            ..Default::default()
        },
    );
    let root = e.layer_root("default").expect("root");
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..3)
        .map(|k| {
            let e = e.clone();
            let stop = stop.clone();
            let node = e
                .mknod(
                    root,
                    format!("w{k}").as_bytes(),
                    libc::S_IFREG | 0o644,
                    0,
                    WHO,
                    None,
                )
                .expect("create")
                .ino;
            std::thread::spawn(move || {
                let chunk = vec![k as u8; MIB as usize];
                let mut errors = Vec::new();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    // 16 MiB per file: 48 MiB live on a 256 MiB image.
                    if let Err(err) = e.write_sync(node, (i % 16) * MIB, &chunk) {
                        errors.push(format!("writer {k}, write {i}: {err}"));
                        if errors.len() > 5 {
                            break;
                        }
                    }
                    i += 1;
                }
                (i, errors)
            })
        })
        .collect();
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(4) {
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    let mut errors = Vec::new();
    for w in writers {
        let (n, mut errs) = w.join().expect("writer");
        total += n;
        errors.append(&mut errs);
    }
    println!("{total} MiB overwritten in 4 s by 3 writers");
    assert!(
        total > 3 * 256,
        "the writers wrote only {total} MiB: too little to test"
    );
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    e.shutdown().expect("shutdown");
}
