//! `fsck --repair` (engine::repair): an image corrupted in each way fsck can find — a wrong
//! link count, a dangling directory entry, a directory with two parents, an unreachable
//! subtree, an unlinked inode frozen in a committed layer, a mapping of blocks nobody owns, a
//! mapping of another layer's blocks, a checksum kept for a block nobody owns, an owned block
//! without a checksum — is found by fsck, repaired, then fsck clean; it opens, every file
//! the corruption did not touch reads back intact, and it is still clean after a reopen.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::sync::Arc;

use engine::layer::Layers;
use engine::meta::{Content, Ino, Inode, LayerState, Name};
use engine::{Caller, Device, Engine, MemDevice, Node, Options};
use testkit::{mem_engine, pattern, read_all, resolve};

const WHO: Caller = Caller { uid: 0, gid: 0 };
const BLOCK: usize = 4096;

fn mkdir(e: &Engine, parent: Node, name: &str) -> Node {
    let st = e
        .mknod(parent, name.as_bytes(), libc::S_IFDIR | 0o755, 0, WHO, None)
        .expect("mkdir");
    e.forget(st.ino, 1);
    st.ino
}

fn create(e: &Engine, parent: Node, name: &str, data: &[u8]) -> Node {
    let st = e
        .mknod(parent, name.as_bytes(), libc::S_IFREG | 0o644, 0, WHO, None)
        .expect("create");
    e.forget(st.ino, 1);
    e.write_sync(st.ino, 0, data).expect("write");
    st.ino
}

/// default (committed): /f1, /d1/f2, /d1/d2/f3, /gone; c (active clone): /c-file, f1's
/// block 1 rewritten; s (active clone): /s-file.
fn base_image() -> Vec<u8> {
    let (dev, e) = mem_engine(64 << 20, Options::default());
    let root = e.layer_root("default").expect("root");
    create(&e, root, "f1", &pattern(1, 3 * BLOCK));
    let d1 = mkdir(&e, root, "d1");
    create(&e, d1, "f2", &pattern(2, 2 * BLOCK));
    let d2 = mkdir(&e, d1, "d2");
    create(&e, d2, "f3", &pattern(3, BLOCK));
    create(&e, root, "gone", &pattern(4, BLOCK));
    e.fsync_sync().expect("fsync");
    e.layer_commit("default").expect("commit");
    for id in ["c", "s"] {
        e.layer_clone("default", id, LayerState::Active, BTreeMap::new())
            .expect("clone");
    }
    let c = e.layer_root("c").expect("root");
    create(&e, c, "c-file", &pattern(5, 2 * BLOCK));
    let f1 = resolve(&e, "c", "f1").expect("f1");
    e.write_sync(f1, BLOCK as u64, &pattern(6, BLOCK))
        .expect("write");
    let s = e.layer_root("s").expect("root");
    create(&e, s, "s-file", &pattern(7, 2 * BLOCK));
    e.fsync_sync().expect("fsync");
    e.shutdown().expect("shutdown");
    dev.snapshot()
}

fn c_f1() -> Vec<u8> {
    let mut v = pattern(1, 3 * BLOCK);
    v[BLOCK..2 * BLOCK].copy_from_slice(&pattern(6, BLOCK));
    v
}

/// The inode at `path` in the layer named `layer`.
fn ino_of(ls: &Layers, layer: &str, path: &str) -> Ino {
    let l = ls
        .get(ls.slot_of(layer.as_bytes()).expect("layer"))
        .expect("layer");
    let mut ino = engine::format::ROOT_INO;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        ino = l
            .tree
            .get(ino)
            .and_then(|i| i.dir())
            .and_then(|d| d.get(part.as_bytes()))
            .expect("path");
    }
    ino
}

/// Change inode `ino` the same way in every layer that has it (a layer's copy of a shared
/// inode is the same value; the corruption is, too).
fn everywhere(ls: &mut Layers, ino: Ino, f: impl Fn(&mut Inode)) {
    for l in ls.map.values_mut() {
        if let Some(i) = l.tree.inodes.get_mut(&ino) {
            f(i);
        }
    }
}

fn in_layer(ls: &mut Layers, layer: &str, ino: Ino, f: impl FnOnce(&mut Inode)) {
    let slot = ls.slot_of(layer.as_bytes()).expect("layer");
    let l = ls.map.get_mut(&slot).expect("layer");
    f(l.tree.inodes.get_mut(&ino).expect("inode"));
}

fn add_entry(i: &mut Inode, name: &str, ino: Ino) {
    let Content::Dir(d) = &mut i.content else {
        panic!("not a directory")
    };
    let c = d.next_cookie.max(3);
    d.next_cookie = c + 1;
    let n: Name = name.as_bytes().into();
    d.entries.insert(n.clone(), (ino, c));
    d.by_cookie.insert(c, n);
}

fn remove_entry(i: &mut Inode, name: &str) {
    let Content::Dir(d) = &mut i.content else {
        panic!("not a directory")
    };
    if let Some((_, c)) = d.entries.remove(name.as_bytes()) {
        d.by_cookie.remove(&c);
    }
}

type Corrupt = Box<dyn Fn(&mut Layers)>;

/// Read `path` of `layer`, or None if it is not there.
fn read(e: &Engine, layer: &str, path: &str) -> Option<Vec<u8>> {
    resolve(e, layer, path).ok().map(|n| read_all(e, n))
}

#[test]
fn every_kind_of_damage_fsck_finds_is_repaired_and_the_image_mounts_clean() {
    let base = base_image();
    let clean = engine::fsck::check(&MemDevice::from_bytes(base.clone())).expect("fsck");
    assert!(clean.is_clean(), "{:?}", clean.problems);
    let root = engine::format::ROOT_INO;
    let cases: Vec<(&str, &str, Corrupt)> = vec![
        (
            "wrong link counts",
            "link count",
            Box::new(|ls| {
                let f2 = ino_of(ls, "default", "d1/f2");
                let d1 = ino_of(ls, "default", "d1");
                everywhere(ls, f2, |i| i.attr.nlink = 7);
                everywhere(ls, d1, |i| i.attr.nlink = 2);
            }),
        ),
        (
            "dangling directory entry",
            "missing inode",
            Box::new(move |ls| in_layer(ls, "c", root, |i| add_entry(i, "ghost", 99_999))),
        ),
        (
            "directory with two parents",
            "another parent",
            Box::new(move |ls| {
                let d2 = ino_of(ls, "c", "d1/d2");
                in_layer(ls, "c", root, |i| add_entry(i, "d2-again", d2));
            }),
        ),
        (
            "unreachable subtree",
            "not reachable",
            Box::new(move |ls| everywhere(ls, root, |i| remove_entry(i, "d1"))),
        ),
        (
            "unlinked inode frozen in a committed layer",
            "unlinked, committed while open",
            Box::new(move |ls| {
                let gone = ino_of(ls, "default", "gone");
                everywhere(ls, root, |i| remove_entry(i, "gone"));
                everywhere(ls, gone, |i| i.attr.nlink = 0);
            }),
        ),
        (
            "mapping of blocks nobody owns (tag outside the chain)",
            "no layer owned",
            Box::new(|ls| {
                let f = ino_of(ls, "c", "c-file");
                in_layer(ls, "c", f, |i| {
                    let Content::File(x) = &mut i.content else {
                        panic!("file")
                    };
                    let (lb, mut e) = x.iter().next().expect("extent");
                    e.owner = 4242;
                    x.0.insert(lb, e);
                });
            }),
        ),
        (
            "mapping of another layer's blocks",
            "outside its chain",
            Box::new(|ls| {
                let sf = ino_of(ls, "s", "s-file");
                let slot = ls.slot_of(b"s").expect("s");
                let Content::File(sx) = &ls.get(slot).expect("s").tree.get(sf).expect("i").content
                else {
                    panic!("file")
                };
                let (_, theirs) = sx.iter().next().expect("extent");
                let f = ino_of(ls, "c", "c-file");
                in_layer(ls, "c", f, |i| {
                    let Content::File(x) = &mut i.content else {
                        panic!("file")
                    };
                    let (lb, _) = x.iter().next().expect("extent");
                    x.0.insert(lb, theirs);
                });
            }),
        ),
        (
            "checksum kept for a block nobody owns",
            "no layer maps",
            Box::new(|ls| ls.crcs.set(15_000, &[0x1234_5678])),
        ),
        (
            "owned block without a checksum",
            "had no checksum",
            Box::new(|ls| {
                let f = ino_of(ls, "s", "s-file");
                let slot = ls.slot_of(b"s").expect("s");
                let Content::File(x) = &ls.get(slot).expect("s").tree.get(f).expect("i").content
                else {
                    panic!("file")
                };
                let (_, e) = x.iter().next().expect("extent");
                ls.crcs.clear(e.pblk, 1);
            }),
        ),
    ];
    for (what, said, corrupt) in cases {
        let dev = Arc::new(MemDevice::from_bytes(base.clone()));
        engine::repair::rewrite_for_tests(dev.as_ref(), |ls| corrupt(ls)).expect("corrupt");
        let found = engine::fsck::check(dev.as_ref()).expect("fsck");
        assert!(
            !found.is_clean() || !found.leaks.is_empty(),
            "{what}: fsck did not see it"
        );
        let r = engine::repair::repair(dev.as_ref()).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(r.written, "{what}");
        assert!(
            r.unrepaired.is_empty(),
            "{what}: not repaired: {:?} (found {:?}, repaired {:?})",
            r.unrepaired,
            found.problems,
            r.repaired
        );
        assert!(
            r.repaired.iter().any(|m| m.contains(said)),
            "{what}: {:?}",
            r.repaired
        );
        let again = engine::repair::repair(dev.as_ref()).expect("repair again");
        assert!(
            again.repaired.is_empty() && !again.written,
            "{what}: a second repair changed {:?}",
            again.repaired
        );
        let d: Arc<dyn Device> = dev.clone();
        let e = Engine::open(d, Options::default()).unwrap_or_else(|err| panic!("{what}: {err}"));
        // What the damage did not touch is intact.
        let lost_d1 = |e: &Engine, layer: &str| {
            read(e, layer, "d1/f2").or_else(|| {
                let root = e.layer_root(layer).ok()?;
                let names: Vec<String> = e
                    .readdir(root, 0, 1000)
                    .ok()?
                    .iter()
                    .map(|d| String::from_utf8_lossy(&d.name).into_owned())
                    .filter(|n| n.starts_with("lost+found."))
                    .collect();
                names
                    .iter()
                    .find_map(|n| read(e, layer, &format!("{n}/f2")))
            })
        };
        for layer in ["default", "c", "s"] {
            assert!(
                lost_d1(&e, layer) == Some(pattern(2, 2 * BLOCK)),
                "{what}: {layer}/d1/f2"
            );
        }
        assert!(
            read(&e, "default", "f1") == Some(pattern(1, 3 * BLOCK)),
            "{what}"
        );
        assert!(read(&e, "c", "f1") == Some(c_f1()), "{what}: c/f1");
        assert!(
            read(&e, "s", "s-file") == Some(pattern(7, 2 * BLOCK)),
            "{what}: s/s-file"
        );
        let c_file = read(&e, "c", "c-file").expect("c-file");
        match what {
            "mapping of blocks nobody owns (tag outside the chain)" => {
                assert!(c_file == pattern(5, 2 * BLOCK), "{what}: the data is kept")
            }
            "mapping of another layer's blocks" => {
                assert!(c_file.iter().all(|b| *b == 0), "{what}: a hole now");
            }
            _ => assert!(c_file == pattern(5, 2 * BLOCK), "{what}: c/c-file"),
        }
        // The repaired image takes writes.
        let c = e.layer_root("c").expect("root");
        create(&e, c, "after", &pattern(8, BLOCK));
        e.shutdown().expect("shutdown");
        let after = engine::fsck::check(dev.as_ref()).expect("fsck");
        assert!(
            after.is_clean(),
            "{what}: after a reopen: {:?}",
            after.problems
        );
        assert!(after.leaks.is_empty(), "{what}: {:?}", after.leaks);
    }
}

#[test]
fn a_clean_image_is_left_alone() {
    let dev = MemDevice::from_bytes(base_image());
    let r = engine::repair::repair(&dev).expect("repair");
    assert!(r.repaired.is_empty() && r.unrepaired.is_empty() && !r.written);
}

/// default (committed): /f1, /d1/f2; mid (committed clone of default): /mid-file; leaf
/// (active clone of mid): /leaf-file; other (active clone of default): /other-file.
fn chain_image() -> Vec<u8> {
    let (dev, e) = mem_engine(64 << 20, Options::default());
    let root = e.layer_root("default").expect("root");
    create(&e, root, "f1", &pattern(1, 3 * BLOCK));
    let d1 = mkdir(&e, root, "d1");
    create(&e, d1, "f2", &pattern(2, 2 * BLOCK));
    e.fsync_sync().expect("fsync");
    e.layer_commit("default").expect("commit");
    e.layer_clone("default", "mid", LayerState::Active, BTreeMap::new())
        .expect("clone");
    let mid = e.layer_root("mid").expect("root");
    let md = mkdir(&e, mid, "md");
    create(&e, md, "mid-file", &pattern(3, 2 * BLOCK));
    e.fsync_sync().expect("fsync");
    e.layer_commit("mid").expect("commit");
    e.layer_clone("mid", "leaf", LayerState::Active, BTreeMap::new())
        .expect("clone");
    let leaf = e.layer_root("leaf").expect("root");
    create(&e, leaf, "leaf-file", &pattern(4, 3 * BLOCK));
    e.layer_clone("default", "other", LayerState::Active, BTreeMap::new())
        .expect("clone");
    let other = e.layer_root("other").expect("root");
    create(&e, other, "other-file", &pattern(5, BLOCK));
    e.fsync_sync().expect("fsync");
    e.shutdown().expect("shutdown");
    dev.snapshot()
}

/// A layer whose parent is missing: the parent slot of layer `mid` in the checkpoint names
/// no layer (written below the layer structures, with valid checksums, as a bug could). The
/// engine refuses to open it, fsck names it, and the repair makes `mid` a base layer: what
/// `mid` and its child `leaf` wrote themselves is intact; what `mid` inherited from its lost
/// parent is gone (a child's tree is stored as its difference from its parent's) and each
/// entry naming it is removed; the other layers are untouched.
#[test]
fn a_layer_whose_parent_is_missing_becomes_a_base_layer() {
    let dev = Arc::new(MemDevice::from_bytes(chain_image()));
    engine::repair::rewrite_payload_for_tests(dev.as_ref(), |p| {
        // The layer entry: ... id (length u32, bytes), parent slot u32 ...
        let pat: &[u8] = b"\x03\x00\x00\x00mid";
        let at = p
            .windows(pat.len())
            .position(|w| w == pat)
            .expect("mid's entry")
            + pat.len();
        assert!(p[at..].windows(pat.len()).all(|w| w != pat), "one entry");
        assert_ne!(p[at..at + 4], [0; 4], "mid has a parent");
        p[at..at + 4].copy_from_slice(&77u32.to_le_bytes());
    })
    .expect("corrupt");
    let d: Arc<dyn Device> = dev.clone();
    let err = Engine::open(d, Options::default())
        .err()
        .expect("an image with a missing parent is refused");
    assert!(err.to_string().contains("parent 77"), "{err}");
    let found = engine::fsck::check(dev.as_ref()).expect("fsck");
    assert!(
        found
            .problems
            .iter()
            .any(|m| m.contains("layer mid") && m.contains("parent slot 77 is missing")),
        "{:?}",
        found.problems
    );
    let r = engine::repair::repair(dev.as_ref()).expect("repair");
    assert!(r.written);
    assert!(
        r.unrepaired.is_empty(),
        "not repaired: {:?} (repaired {:?})",
        r.unrepaired,
        r.repaired
    );
    assert!(
        r.repaired
            .iter()
            .any(|m| m.contains("layer mid: parent slot 77 is missing")),
        "{:?}",
        r.repaired
    );
    let again = engine::repair::repair(dev.as_ref()).expect("repair again");
    assert!(
        again.repaired.is_empty() && !again.written && again.unrepaired.is_empty(),
        "a second repair changed {:?} / {:?}",
        again.repaired,
        again.unrepaired
    );
    let d: Arc<dyn Device> = dev.clone();
    let e = Engine::open(d, Options::default()).expect("open");
    for layer in ["mid", "leaf"] {
        assert!(
            read(&e, layer, "md/mid-file") == Some(pattern(3, 2 * BLOCK)),
            "{layer}/md/mid-file"
        );
        assert!(read(&e, layer, "f1").is_none(), "{layer}/f1 was inherited");
        assert!(
            read(&e, layer, "d1/f2").is_none(),
            "{layer}/d1 was inherited"
        );
    }
    assert!(read(&e, "leaf", "leaf-file") == Some(pattern(4, 3 * BLOCK)));
    for layer in ["default", "other"] {
        assert!(
            read(&e, layer, "f1") == Some(pattern(1, 3 * BLOCK)),
            "{layer}"
        );
        assert!(
            read(&e, layer, "d1/f2") == Some(pattern(2, 2 * BLOCK)),
            "{layer}"
        );
    }
    assert!(read(&e, "other", "other-file") == Some(pattern(5, BLOCK)));
    // The repaired image takes writes, in the child and in a new clone of the new base.
    let leaf = e.layer_root("leaf").expect("root");
    create(&e, leaf, "after", &pattern(8, BLOCK));
    e.layer_clone("mid", "mid2", LayerState::Active, BTreeMap::new())
        .expect("clone of the new base");
    assert!(read(&e, "mid2", "md/mid-file") == Some(pattern(3, 2 * BLOCK)));
    e.shutdown().expect("shutdown");
    let after = engine::fsck::check(dev.as_ref()).expect("fsck");
    assert!(after.is_clean(), "after a reopen: {:?}", after.problems);
    assert!(after.leaks.is_empty(), "{:?}", after.leaks);
    let d: Arc<dyn Device> = dev.clone();
    let e = Engine::open(d, Options::default()).expect("reopen");
    assert!(read(&e, "leaf", "after") == Some(pattern(8, BLOCK)));
    e.shutdown().expect("shutdown");
}
