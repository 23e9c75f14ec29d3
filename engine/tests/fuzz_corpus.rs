//! The engine's fuzz targets (`fuzz/`, cargo-fuzz on nightly) run on the stable toolchain:
//! each target body gets the committed corpus in `fuzz/corpus/<target>/` and a few thousand
//! seeded mutations of it, bounded in time. The bodies are shared with the cargo-fuzz
//! targets (`fuzz/bodies/engine.rs`).

#[path = "../../fuzz/bodies/engine.rs"]
mod bodies;
#[path = "../../fuzz/support/driver.rs"]
mod driver;

use std::time::Duration;

const ITERS: usize = 100_000;
const BUDGET: Duration = Duration::from_secs(3);

#[test]
fn fuzz_superblock_corpus() {
    driver::run("superblock", bodies::superblock, ITERS, BUDGET, 1);
}

#[test]
fn fuzz_journal_corpus() {
    driver::run("journal", bodies::journal, ITERS, BUDGET, 2);
}

#[test]
fn fuzz_checkpoint_corpus() {
    driver::run("checkpoint", bodies::checkpoint, ITERS, BUDGET, 3);
}

#[test]
fn fuzz_image_corpus() {
    driver::run("image", bodies::image, ITERS, BUDGET, 4);
}

/// Writes the seed corpus from a real file system (run by hand after a format change:
/// `cargo test --release -p strata-engine --test fuzz_corpus -- --ignored write_seed_corpus`).
#[test]
#[ignore]
fn write_seed_corpus() {
    use std::sync::Arc;

    use engine::{Caller, Device, Engine, MemDevice, Options};
    let put = |target: &str, name: &str, data: &[u8]| {
        let dir = driver::corpus_dir(target);
        std::fs::create_dir_all(&dir).expect("corpus dir");
        std::fs::write(dir.join(name), data).expect("write seed");
    };
    let dev = Arc::new(MemDevice::new(engine::format::MIN_DEVICE_SIZE));
    let sb = engine::mkfs(dev.as_ref(), 0, 0).expect("mkfs");
    let img = dev.snapshot();
    put("superblock", "mkfs-slot-b", &img[4096..4096 + 121]);
    put("superblock", "mkfs-slot-a", &img[..121]);
    put("superblock", "empty", b"");
    let ck = sb.ckpt_block as usize * 4096;
    let used = u32::from_le_bytes(img[ck + 4..ck + 8].try_into().expect("4 bytes")) as usize;
    put("checkpoint", "mkfs-block", &img[ck..ck + 4096]);
    put("checkpoint", "mkfs-payload", &img[ck + 32..ck + 32 + used]);
    // A richer tree: files, a directory, a symlink, xattrs, a clone with changes.
    let d: Arc<dyn Device> = dev.clone();
    let e = Engine::open(d, Options::default()).expect("open");
    let who = Caller { uid: 0, gid: 0 };
    let root = e.layer_root("default").expect("root");
    let dir = e
        .mknod(root, b"d", libc::S_IFDIR | 0o755, 0, who, None)
        .expect("mkdir");
    let f = e
        .mknod(dir.ino, b"f", libc::S_IFREG | 0o644, 0, who, None)
        .expect("create");
    e.write_sync(f.ino, 0, &[7u8; 9000]).expect("write");
    e.setxattr(f.ino, b"user.k", b"v", 0).expect("xattr");
    e.mknod(root, b"s", libc::S_IFLNK | 0o777, 0, who, Some(b"d/f"))
        .expect("symlink");
    e.fsync_sync().expect("fsync");
    // The journal now holds the chunk of those changes.
    let jimg = dev.snapshot();
    let loaded = engine::load(dev.as_ref()).expect("load");
    let jb = loaded.sb.replay_block as usize * 4096;
    let h = engine::journal::decode_chunk_header(&jimg[jb..jb + 4096]).expect("a chunk");
    let payload = engine::journal::chunk_payload(&h, &jimg[jb..jb + 4096 * h.nblocks as usize])
        .expect("payload");
    put("journal", "records", &payload);
    put(
        "journal",
        "chunk",
        &jimg[jb..jb + 32 + h.payload_len as usize],
    );
    e.layer_commit("default").expect("commit");
    e.layer_clone(
        "default",
        "c",
        engine::LayerState::Active,
        Default::default(),
    )
    .expect("clone");
    let croot = e.layer_root("c").expect("root");
    e.unlink(croot, b"s").expect("unlink");
    e.fsync_sync().expect("fsync");
    e.checkpoint().expect("checkpoint");
    let layers = e.with_layers(|l| l.encode());
    put("checkpoint", "two-layers", &layers);
    e.shutdown().expect("shutdown");
    // Image patches: selector, offset, bytes (see bodies::image).
    put("image", "sb-a-fix-gen", &[0x80, 16, 0, 9, 0, 0, 0]);
    put("image", "sb-b-raw", &[1, 56, 0, 1, 2, 3]);
    put(
        "image",
        "journal-fix-payload",
        &[0x82, 40, 0, 1, 0, 0, 0, 6],
    );
    put("image", "journal-raw", &[3, 0, 0, 0x53, 0x4a, 0x4e, 0x4c]);
    put("image", "ckpt-fix", &[0x86, 40, 0, 2, 0, 0, 0]);
}
