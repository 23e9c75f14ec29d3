//! Per-layer space and inode limits: a layer at its limit gets EDQUOT within one 4 KiB block
//! of it, nothing already written is lost, other layers are unaffected, and the limits
//! survive reopening (clean and after a crash).

#![forbid(unsafe_code)]

use std::collections::BTreeMap;

use engine::{Caller, Engine, KillPriv, LayerState, Limits, Node, Options, WriteTimes};
use testkit::{mem_engine, open_mem, pattern, read_all};

const WHO: Caller = Caller { uid: 0, gid: 0 };
const BLOCK: u64 = 4096;

fn file(e: &Engine, layer: &str, name: &str) -> Node {
    let root = e.layer_root(layer).expect("root");
    let st = e
        .mknod(root, name.as_bytes(), libc::S_IFREG | 0o644, 0, WHO, None)
        .expect("create");
    e.forget(st.ino, 1);
    st.ino
}

fn limit_bytes(e: &Engine, layer: &str, bytes: u64) {
    e.layer_set_limits(
        layer,
        Limits {
            bytes: Some(bytes),
            ..Default::default()
        },
    )
    .expect("set limit");
}

fn owned(e: &Engine, layer: &str) -> u64 {
    e.layer_stat(layer).expect("stat").owned_bytes
}

/// A blocking write that can come back short (the engine's write callback).
fn write(e: &Engine, node: Node, off: u64, data: &[u8]) -> engine::Result<u32> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    e.write(
        node,
        off,
        data,
        KillPriv::NONE,
        WriteTimes::Set,
        Box::new(move |r| {
            let _ = tx.send(r);
        }),
    );
    rx.recv().expect("write answered")
}

/// Append `chunk`-sized pieces until an error; returns (bytes written, the error's errno).
fn fill(e: &Engine, node: Node, chunk: usize) -> (u64, i32) {
    let data = pattern(9, chunk);
    let mut off = 0u64;
    loop {
        match write(e, node, off, &data) {
            Ok(0) => panic!("write of {chunk} bytes at {off} wrote nothing"),
            Ok(n) => off += n as u64,
            Err(err) => return (off, err.errno()),
        }
        assert!(off < 1 << 30, "no limit hit after 1 GiB");
    }
}

#[test]
fn a_full_layer_gets_edquot_within_one_block_and_keeps_what_it_wrote() {
    let (_dev, e) = mem_engine(256 << 20, Options::default());
    e.layer_create("free", BTreeMap::new()).expect("create");
    limit_bytes(&e, "default", 8 << 20);
    for chunk in [1 << 20, 10_000, 4096, 777] {
        let f = file(&e, "default", &format!("f{chunk}"));
        let (written, err) = fill(&e, f, chunk);
        assert_eq!(err, libc::EDQUOT, "chunk {chunk}");
        let used = owned(&e, "default");
        assert!(used <= 8 << 20, "owns {used} bytes past the 8 MiB limit");
        assert!(
            used + BLOCK >= 8 << 20,
            "chunk {chunk}: EDQUOT with {} bytes still free under the limit",
            (8u64 << 20) - used
        );
        // What was written reads back.
        let got = read_all(&e, f);
        assert_eq!(got.len() as u64, written);
        let unit = pattern(9, chunk);
        for (i, piece) in got.chunks(chunk).enumerate() {
            assert_eq!(piece, &unit[..piece.len()], "chunk {chunk}, piece {i}");
        }
        // Overwriting what the layer owns needs no new space.
        assert_eq!(
            write(&e, f, 0, &unit[..chunk.min(4096)]).expect("rewrite") as usize,
            chunk.min(4096)
        );
        // Another layer is not affected.
        let g = file(&e, "free", &format!("g{chunk}"));
        assert_eq!(
            write(&e, g, 0, &[7u8; 1 << 20]).expect("other layer"),
            1 << 20
        );
        // Free the space again for the next round.
        let root = e.layer_root("default").expect("root");
        e.unlink(root, format!("f{chunk}").as_bytes())
            .expect("unlink");
        assert!(
            owned(&e, "default") < BLOCK,
            "the unlink gives the space back"
        );
    }
    e.shutdown().expect("shutdown");
}

#[test]
fn copy_on_write_links_fallocate_truncate_and_live_changes() {
    let (dev, e) = mem_engine(256 << 20, Options::default());
    // A committed parent with a 4 MiB file; a clone limited to 1 MiB.
    let big = file(&e, "default", "big");
    e.write_sync(big, 0, &pattern(1, 4 << 20))
        .expect("write big");
    e.layer_commit("default").expect("commit");
    e.layer_clone(
        "default",
        "c",
        LayerState::Active,
        [(engine::LIMIT_BYTES.to_string(), (1u64 << 20).to_string())]
            .into_iter()
            .collect(),
    )
    .expect("clone with a limit");
    let big_c = testkit::resolve(&e, "c", "big").expect("big in clone");
    // Rewriting inherited blocks copies them: they count, one block at a time.
    for b in 0..256u64 {
        e.write_sync(big_c, b * BLOCK, &[b as u8; 4096])
            .unwrap_or_else(|err| panic!("copy-on-write of block {b} under the limit: {err}"));
    }
    let err = e
        .write_sync(big_c, 256 * BLOCK, &[1u8; 4096])
        .expect_err("257th block");
    assert_eq!(err.errno(), libc::EDQUOT);
    // ... but rewriting a block it already copied does not.
    e.write_sync(big_c, 0, &[9u8; 4096])
        .expect("rewrite an owned block");
    // A hard link takes no space.
    let root = e.layer_root("c").expect("root");
    e.link(big_c, root, b"big-link").expect("link");
    // fallocate past the limit: EDQUOT, nothing allocated.
    let f = file(&e, "c", "prealloc");
    let before = owned(&e, "c");
    let err = e
        .fallocate(f, 0, 2 << 20, 0)
        .expect_err("fallocate past the limit");
    assert_eq!(err.errno(), libc::EDQUOT);
    assert_eq!(owned(&e, "c"), before);
    // Raise it live: writes go on.
    e.layer_set_limits(
        "c",
        Limits {
            bytes: Some(3 << 20),
            ..Default::default()
        },
    )
    .expect("raise");
    e.fallocate(f, 0, 1 << 20, 0)
        .expect("fallocate under the raised limit");
    // Lower it below what the layer owns: the next allocation fails, nothing is lost.
    e.layer_set_limits(
        "c",
        Limits {
            bytes: Some(1 << 20),
            ..Default::default()
        },
    )
    .expect("lower");
    let err = e
        .write_sync(f, 2 << 20, &[1u8; 4096])
        .expect_err("over the lowered limit");
    assert_eq!(err.errno(), libc::EDQUOT);
    assert_eq!(e.read_sync(big_c, 0, 4096).expect("read"), vec![9u8; 4096]);
    // Truncation frees, and the space is usable again.
    e.setattr(
        f,
        engine::SetAttr {
            size: Some(0),
            ..Default::default()
        },
    )
    .expect("truncate");
    e.setattr(
        big_c,
        engine::SetAttr {
            size: Some(0),
            ..Default::default()
        },
    )
    .expect("truncate big");
    e.write_sync(f, 0, &[2u8; 8192])
        .expect("write after freeing");
    // The limit and the data survive a clean reopen.
    e.shutdown().expect("shutdown");
    drop(e);
    let e = open_mem(&dev, Options::default());
    assert_eq!(e.layer_stat("c").expect("stat").limits.bytes, Some(1 << 20));
    let f = testkit::resolve(&e, "c", "prealloc").expect("prealloc");
    assert_eq!(read_all(&e, f), vec![2u8; 8192]);
    e.shutdown().expect("shutdown");
}

#[test]
fn inode_limit_counts_what_the_layer_adds() {
    let (_dev, e) = mem_engine(64 << 20, Options::default());
    for i in 0..10 {
        file(&e, "default", &format!("inherited{i}"));
    }
    e.layer_commit("default").expect("commit");
    e.layer_clone(
        "default",
        "c",
        LayerState::Active,
        [(engine::LIMIT_INODES.to_string(), "5".to_string())]
            .into_iter()
            .collect(),
    )
    .expect("clone");
    let root = e.layer_root("c").expect("root");
    for i in 0..5 {
        file(&e, "c", &format!("new{i}"));
    }
    let err = e
        .mknod(root, b"one-more", libc::S_IFDIR | 0o755, 0, WHO, None)
        .expect_err("sixth inode");
    assert_eq!(err.errno(), libc::EDQUOT);
    let info = e.layer_stat("c").expect("stat");
    assert_eq!(info.inodes_added, 5);
    // Removing one makes room for one.
    e.unlink(root, b"new0").expect("unlink");
    file(&e, "c", "replacement");
    // Renames and links do not count.
    e.rename(root, b"replacement", root, b"renamed", 0)
        .expect("rename");
    let n = testkit::resolve(&e, "c", "renamed").expect("renamed");
    e.link(n, root, b"linked").expect("link");
    e.shutdown().expect("shutdown");
}

#[test]
fn limits_survive_a_crash_at_the_limit() {
    let (dev, e) = mem_engine(128 << 20, Options::default());
    limit_bytes(&e, "default", 2 << 20);
    let f = file(&e, "default", "f");
    let (written, err) = fill(&e, f, 100_000);
    assert_eq!(err, libc::EDQUOT);
    e.fsync_sync().expect("fsync");
    // What a crash leaves: the device as it is now, no clean shutdown.
    let crashed = std::sync::Arc::new(engine::MemDevice::from_bytes(dev.snapshot()));
    drop(e);
    let report = engine::fsck::check(crashed.as_ref()).expect("fsck");
    assert!(report.is_clean(), "{:?}", report.problems);
    let e = open_mem(&crashed, Options::default());
    let info = e.layer_stat("default").expect("stat");
    assert_eq!(info.limits.bytes, Some(2 << 20));
    assert!(info.owned_bytes <= 2 << 20);
    let f = testkit::resolve(&e, "default", "f").expect("f");
    assert_eq!(e.getattr(f).expect("getattr").attr.size, written);
    let err = e
        .write_sync(f, written, &[1u8; 8192])
        .expect_err("still full");
    assert_eq!(err.errno(), libc::EDQUOT);
    e.shutdown().expect("shutdown");
}
