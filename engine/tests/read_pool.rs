//! Reads take their buffers from a pool of freed buffers that still hold what their last
//! user put there: no read may return any of it (holes read as zeros, every other block
//! holds the file's data).

use engine::{AlignedBuf, Caller, Engine, Options};
use testkit::{mem_engine, open_mem, pattern};

const WHO: Caller = Caller { uid: 0, gid: 0 };
const BLOCK: usize = 4096;

/// Fill the pool with buffers of 1..=8 blocks full of 0xAA.
fn dirty_pool() {
    for n in 1..=8 {
        let bufs: Vec<AlignedBuf> = (0..8)
            .map(|_| {
                let mut b = AlignedBuf::zeroed(n);
                b.fill(0xAA);
                b
            })
            .collect();
        drop(bufs);
    }
}

fn check(e: &Engine, node: engine::Node, a: &[u8], b: &[u8], what: &str) {
    for (off, len) in [
        (0, 8 * BLOCK),
        (BLOCK, 2 * BLOCK),
        (100, 3 * BLOCK),
        (0, BLOCK),
    ] {
        dirty_pool();
        let got = e.read_sync(node, off as u64, len as u32).expect("read");
        let mut want = vec![0u8; 8 * BLOCK];
        want[..BLOCK].copy_from_slice(a);
        want[5 * BLOCK..6 * BLOCK].copy_from_slice(b);
        assert!(
            got == want[off..off + len],
            "{what}: read of {len} bytes at {off} returned bytes that are neither the file's data nor zeros"
        );
    }
}

#[test]
fn reads_from_pooled_buffers_return_only_the_files_data_and_zeros() {
    for cache in [0u64, 8 << 20] {
        let opts = || Options {
            cache_bytes: cache,
            ..Default::default()
        };
        let (dev, e) = mem_engine(64 << 20, opts());
        let root = e.layer_root(engine::DEFAULT_LAYER).expect("root");
        let st = e
            .mknod(root, b"sparse", libc::S_IFREG | 0o644, 0, WHO, None)
            .expect("create");
        let (a, b) = (pattern(1, BLOCK), pattern(2, BLOCK));
        // Blocks 0 and 5 written; 1-4 and 6-7 holes (the size covers 8 blocks).
        e.write_sync(st.ino, 0, &a).expect("write");
        e.write_sync(st.ino, 5 * BLOCK as u64, &b).expect("write");
        e.write_sync(st.ino, 8 * BLOCK as u64 - 1, &[0])
            .expect("write");
        let ino = st.ino;
        check(&e, ino, &a, &b, "in flight or cached");
        e.shutdown().expect("shutdown");
        drop(e);
        // From the device, then (with a cache) from the cache.
        let e = open_mem(&dev, opts());
        check(&e, ino, &a, &b, "from the device");
        check(&e, ino, &a, &b, "again");
        e.shutdown().expect("shutdown");
    }
}

#[test]
fn a_zeroed_buffer_taken_from_the_pool_is_zeroed() {
    for _ in 0..4 {
        dirty_pool();
        for n in 1..=8 {
            let bufs: Vec<AlignedBuf> = (0..8).map(|_| AlignedBuf::zeroed(n)).collect();
            assert!(bufs
                .iter()
                .all(|b| b.len() == n * BLOCK && b.iter().all(|&x| x == 0)));
        }
    }
}
