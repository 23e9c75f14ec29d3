//! A read never puts a freed block's old contents into the block cache.
//!
//! Regression test: a read finds its blocks under the metadata lock, and fills the cache with
//! what it read unless the block was invalidated (freed) meanwhile. It used to take the
//! cache's invalidation counts after releasing the lock: an overwrite that freed the block in
//! between was then already counted, the read cached the freed block's old contents, and once
//! the block was reused a read of its new owner returned that old data (seen once in the
//! whole test command, as fsx's buffered run reading two blocks of an older write back).
//! Here readers hammer a small file while a writer overwrites its blocks and commits often,
//! so freed blocks are reused within moments; after each write the writer reads its block
//! back and must get what it wrote.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use engine::Caller;
use testkit::{mem_engine, pattern, with_cache};

const WHO: Caller = Caller { uid: 0, gid: 0 };
const BLOCK: usize = 4096;
const BLOCKS: u64 = 8;

#[test]
fn reads_racing_overwrites_never_cache_a_freed_blocks_old_contents() {
    let (_dev, e) = mem_engine(32 << 20, with_cache(8 << 20));
    let root = e.layer_root(engine::DEFAULT_LAYER).expect("root");
    let ino = e
        .mknod(root, b"f", libc::S_IFREG | 0o644, 0, WHO, None)
        .expect("create")
        .ino;
    for b in 0..BLOCKS {
        e.write_sync(ino, b * BLOCK as u64, &pattern(b, BLOCK))
            .expect("write");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2u64)
        .map(|t| {
            let (e, stop) = (e.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let b = (n * 7 + t * 3) % BLOCKS;
                    let got = e.read_sync(ino, b * BLOCK as u64, BLOCK as u32);
                    assert!(got.is_ok(), "read: {got:?}");
                }
                n
            })
        })
        .collect();
    let iterations = 20_000u64;
    let mut failure = None;
    for i in 0..iterations {
        let b = i % BLOCKS;
        let want = pattern(1_000 + i, BLOCK);
        e.write_sync(ino, b * BLOCK as u64, &want).expect("write");
        let got = e
            .read_sync(ino, b * BLOCK as u64, BLOCK as u32)
            .expect("read");
        if got != want {
            failure = Some(format!(
                "iteration {i}: block {b} read back other data than was just written to it"
            ));
            break;
        }
        if i % 16 == 15 {
            // A commit frees the blocks the overwrites replaced: the allocator hands them out
            // again soon on this small device.
            e.fsync_sync().expect("commit");
        }
    }
    stop.store(true, Ordering::Relaxed);
    let reads: u64 = readers.into_iter().map(|r| r.join().expect("reader")).sum();
    assert!(
        failure.is_none(),
        "{} ({reads} racing reads)",
        failure.unwrap()
    );
    assert!(reads > 0);
    e.shutdown().expect("shutdown");
}
