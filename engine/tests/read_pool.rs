//! Reads take their buffers from a pool of freed buffers that still hold what their last
//! user put there: no read may return any of it (holes read as zeros, every other block
//! holds the file's data).

use engine::{AlignedBuf, Caller, Engine, Options};
use testkit::{mem_engine, open_mem, pattern, with_cache};

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
        let (dev, e) = mem_engine(64 << 20, with_cache(cache));
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
        let e = open_mem(&dev, with_cache(cache));
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

/// Writes take their buffers from the same pool without zeroing them: a write that covers
/// part of a block (at the head, the tail, both, past the end of the file, into a hole) must
/// leave the rest of the block as it was (the old data, or zeros), never a pooled buffer's
/// leftovers.
#[test]
fn partial_writes_from_pooled_buffers_keep_only_the_files_data_and_zeros() {
    let (_dev, e) = mem_engine(
        64 << 20,
        Options {
            cache_bytes: 0,
            ..Default::default()
        },
    );
    let root = e.layer_root(engine::DEFAULT_LAYER).expect("root");
    let node = e
        .mknod(root, b"f", libc::S_IFREG | 0o644, 0, WHO, None)
        .expect("create")
        .ino;
    let mut model: Vec<u8> = Vec::new();
    // (offset, length): inside one block, across a boundary, a hole's middle, past the end
    // of the file, whole blocks with ragged ends, an append.
    let writes: [(usize, usize); 8] = [
        (100, 10),
        (4000, 200),
        (5 * BLOCK + 7, 3),
        (9 * BLOCK - 1, 2),
        (BLOCK + 1, 3 * BLOCK - 2),
        (12 * BLOCK + 300, 5000),
        (2 * BLOCK, BLOCK),
        (0, 1),
    ];
    for (k, (off, len)) in writes.into_iter().enumerate() {
        dirty_pool();
        let data = pattern(10 + k as u64, len);
        e.write_sync(node, off as u64, &data).expect("write");
        if model.len() < off + len {
            model.resize(off + len, 0);
        }
        model[off..off + len].copy_from_slice(&data);
        dirty_pool();
        let got = e.read_sync(node, 0, model.len() as u32).expect("read");
        assert!(
            got == model,
            "after write {k} ({len} bytes at {off}) the file holds bytes nobody wrote"
        );
    }
    e.shutdown().expect("shutdown");
}
