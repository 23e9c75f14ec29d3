//! Layers at the engine level: isolation of every kind of change between parent, children and
//! siblings; a chain of 100 layers checked against a model, across a remount; space returned
//! by removal; crash points during layer operations.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use engine::mkfs;
use engine::{Caller, Device, Engine, LayerState, MemDevice, Node, Options, SetAttr};

const WHO: Caller = Caller { uid: 0, gid: 0 };

fn open(dev: &Arc<MemDevice>) -> Arc<Engine> {
    let d: Arc<dyn Device> = dev.clone();
    Engine::open(
        d,
        Options {
            cache_bytes: 4 << 20,
            ..Default::default()
        },
    )
    .expect("open")
}

fn fresh(size: u64) -> (Arc<MemDevice>, Arc<Engine>) {
    let dev = Arc::new(MemDevice::new(size));
    mkfs(dev.as_ref(), 0, 0).expect("mkfs");
    let e = open(&dev);
    (dev, e)
}

fn no_labels() -> BTreeMap<String, String> {
    BTreeMap::new()
}

fn root(e: &Engine, layer: &str) -> Node {
    e.layer_root(layer).expect("layer root")
}

/// Resolve a slash-separated path inside a layer.
fn walk(e: &Engine, layer: &str, path: &str) -> engine::Result<Node> {
    let mut n = root(e, layer);
    for part in path.split('/').filter(|p| !p.is_empty()) {
        let st = e.lookup(n, part.as_bytes())?;
        e.forget(st.ino, 1);
        n = st.ino;
    }
    Ok(n)
}

fn create(e: &Engine, dir: Node, name: &str, data: &[u8]) -> Node {
    let st = e
        .mknod(dir, name.as_bytes(), libc::S_IFREG | 0o644, 0, WHO, None)
        .expect("create");
    if !data.is_empty() {
        e.write_sync(st.ino, 0, data).expect("write");
    }
    e.forget(st.ino, 1);
    st.ino
}

fn read_all(e: &Engine, n: Node) -> Vec<u8> {
    let size = e.getattr(n).expect("getattr").attr.size;
    e.read_sync(n, 0, size as u32).expect("read")
}

fn pattern(seed: u32, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u32)
                .wrapping_mul(2654435761)
                .wrapping_add(seed)
                .rotate_left(7) as u8
        })
        .collect()
}

/// Everything a test can observe of a layer, for before/after comparisons.
fn observe(e: &Engine, layer: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![(String::new(), root(e, layer))];
    while let Some((path, n)) = stack.pop() {
        let mut off = 0;
        loop {
            let ents = e.readdir(n, off, 100).expect("readdir");
            if ents.is_empty() {
                break;
            }
            for d in &ents {
                off = d.offset;
                let name = String::from_utf8_lossy(&d.name).into_owned();
                if name == "." || name == ".." {
                    continue;
                }
                let p = format!("{path}/{name}");
                let st = e.getattr(d.ino).expect("getattr entry");
                let a = st.attr;
                let mut desc = format!(
                    "mode={:o} nlink={} uid={} size={} rdev={}",
                    a.mode, a.nlink, a.uid, a.size, a.rdev
                );
                let xattrs = e.listxattr(d.ino).expect("listxattr");
                for x in xattrs.split(|b| *b == 0).filter(|x| !x.is_empty()) {
                    let v = e.getxattr(d.ino, x).expect("getxattr");
                    desc.push_str(&format!(
                        " x:{}={}",
                        String::from_utf8_lossy(x),
                        String::from_utf8_lossy(&v)
                    ));
                }
                match a.mode & libc::S_IFMT {
                    libc::S_IFREG => {
                        desc.push_str(&format!(" crc={:08x}", crc(&read_all(e, d.ino))))
                    }
                    libc::S_IFLNK => desc.push_str(&format!(
                        " ->{}",
                        String::from_utf8_lossy(&e.readlink(d.ino).expect("readlink"))
                    )),
                    libc::S_IFDIR => stack.push((p.clone(), d.ino)),
                    _ => {}
                }
                out.insert(p, desc);
            }
        }
    }
    out
}

fn crc(d: &[u8]) -> u32 {
    d.iter()
        .fold(0x811c9dc5u32, |h, b| (h ^ *b as u32).wrapping_mul(16777619))
}

/// A base image with one of everything.
fn build_image(e: &Engine, layer: &str) {
    let r = root(e, layer);
    create(e, r, "data", &pattern(1, 3 * 4096 + 100));
    create(e, r, "big", &pattern(2, 64 * 4096));
    let dir = e
        .mknod(r, b"dir", libc::S_IFDIR | 0o755, 0, WHO, None)
        .expect("mkdir")
        .ino;
    create(e, dir, "inner", b"inner file");
    let f = walk(e, layer, "data").expect("data");
    e.setxattr(f, b"user.tag", b"v1", 0).expect("setxattr");
    e.mknod(r, b"link", libc::S_IFLNK | 0o777, 0, WHO, Some(b"data"))
        .expect("symlink");
    e.link(f, dir, b"hard").expect("hard link");
    e.mknod(
        r,
        b"null",
        libc::S_IFCHR | 0o666,
        libc::makedev(1, 3) as u32,
        WHO,
        None,
    )
    .expect("mknod");
    e.mknod(r, b"fifo", libc::S_IFIFO | 0o644, 0, WHO, None)
        .expect("mkfifo");
}

type Change = (&'static str, fn(&Engine, &str));

/// Every kind of change, each applied in a child layer.
fn changes() -> Vec<Change> {
    vec![
        ("data", |e, l| {
            e.write_sync(walk(e, l, "big").expect("big"), 4096 * 5 + 7, b"CHANGED")
                .expect("write");
        }),
        ("truncate", |e, l| {
            let n = walk(e, l, "data").expect("data");
            e.setattr(
                n,
                SetAttr {
                    size: Some(100),
                    ..Default::default()
                },
            )
            .expect("truncate");
        }),
        ("xattr", |e, l| {
            let n = walk(e, l, "data").expect("data");
            e.setxattr(n, b"user.tag", b"v2", 0).expect("setxattr");
            e.setxattr(n, b"user.new", b"n", 0).expect("setxattr");
        }),
        ("chmod", |e, l| {
            let n = walk(e, l, "dir/inner").expect("inner");
            e.setattr(
                n,
                SetAttr {
                    mode: Some(0o600),
                    uid: Some(1000),
                    ..Default::default()
                },
            )
            .expect("chmod");
        }),
        ("rename", |e, l| {
            let r = root(e, l);
            let d = walk(e, l, "dir").expect("dir");
            e.rename(r, b"big", d, b"moved", 0).expect("rename");
        }),
        ("unlink", |e, l| {
            e.unlink(walk(e, l, "dir").expect("dir"), b"hard")
                .expect("unlink");
            e.unlink(root(e, l), b"fifo").expect("unlink fifo");
        }),
        ("hardlink", |e, l| {
            let n = walk(e, l, "dir/inner").expect("inner");
            e.link(n, root(e, l), b"inner2").expect("link");
        }),
        ("symlink", |e, l| {
            e.unlink(root(e, l), b"link").expect("unlink symlink");
            e.mknod(
                root(e, l),
                b"link",
                libc::S_IFLNK | 0o777,
                0,
                WHO,
                Some(b"dir/inner"),
            )
            .expect("symlink");
        }),
        ("device", |e, l| {
            e.unlink(root(e, l), b"null").expect("unlink dev");
            e.mknod(
                root(e, l),
                b"null",
                libc::S_IFBLK | 0o600,
                libc::makedev(7, 0) as u32,
                WHO,
                None,
            )
            .expect("mknod");
        }),
        ("rmdir", |e, l| {
            let d = walk(e, l, "dir").expect("dir");
            e.unlink(d, b"inner").expect("unlink");
            e.unlink(d, b"hard").expect("unlink");
            e.rmdir(root(e, l), b"dir").expect("rmdir");
        }),
    ]
}

#[test]
fn parent_children_and_siblings_never_see_each_others_changes() {
    let (_dev, e) = fresh(256 << 20);
    e.layer_create("img", no_labels()).expect("create");
    build_image(&e, "img");
    e.layer_commit("img").expect("commit");
    let image = observe(&e, "img");
    for (what, change) in changes() {
        let a = format!("a-{what}");
        let b = format!("b-{what}");
        let v = format!("v-{what}");
        e.layer_clone("img", &a, LayerState::Active, no_labels())
            .expect("clone a");
        e.layer_clone("img", &b, LayerState::Active, no_labels())
            .expect("clone b");
        e.layer_clone("img", &v, LayerState::View, no_labels())
            .expect("clone view");
        assert_eq!(
            observe(&e, &a),
            image,
            "{what}: a clone starts as its parent"
        );
        change(&e, &a);
        let changed = observe(&e, &a);
        assert_ne!(
            changed, image,
            "{what}: the change is visible in the layer that made it"
        );
        assert_eq!(observe(&e, "img"), image, "{what}: parent unchanged");
        assert_eq!(observe(&e, &b), image, "{what}: sibling unchanged");
        assert_eq!(observe(&e, &v), image, "{what}: view unchanged");
        // The sibling makes the same change on its own; both see only their own.
        change(&e, &b);
        assert_eq!(observe(&e, &b), changed, "{what}: sibling's own change");
        // Views and committed layers refuse changes.
        let err = e
            .mknod(root(&e, &v), b"x", libc::S_IFREG | 0o644, 0, WHO, None)
            .expect_err("view is read-only");
        assert_eq!(err.errno(), libc::EROFS);
        let err = e
            .mknod(root(&e, "img"), b"x", libc::S_IFREG | 0o644, 0, WHO, None)
            .expect_err("committed is read-only");
        assert_eq!(err.errno(), libc::EROFS);
    }
    // Cross-layer rename and link are EXDEV.
    let a_data = walk(&e, "a-data", "data").expect("data");
    let err = e
        .rename(root(&e, "a-data"), b"data", root(&e, "b-data"), b"data2", 0)
        .expect_err("cross-layer rename");
    assert_eq!(err.errno(), libc::EXDEV);
    let err = e
        .link(a_data, root(&e, "b-data"), b"l")
        .expect_err("cross-layer link");
    assert_eq!(err.errno(), libc::EXDEV);
    e.shutdown().expect("shutdown");
}

#[test]
fn chain_of_100_layers_matches_its_model_across_remount() {
    let (dev, e) = fresh(256 << 20);
    // model: layer -> file name -> contents
    let mut models: Vec<(String, BTreeMap<String, Vec<u8>>)> = Vec::new();
    let mut model: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    e.layer_create("l0", no_labels()).expect("create");
    for i in 0..100u32 {
        let name = format!("l{i}");
        if i > 0 {
            e.layer_clone(
                &format!("l{}", i - 1),
                &name,
                LayerState::Active,
                no_labels(),
            )
            .expect("clone");
        }
        let r = root(&e, &name);
        // A new file, an overwrite inside an inherited file, an append, a delete.
        let f = format!("f{i}");
        let data = pattern(i, 1000 + (i as usize * 37) % 9000);
        create(&e, r, &f, &data);
        model.insert(f, data);
        if i >= 3 {
            let old = format!("f{}", i - 3);
            let n = walk(&e, &name, &old).expect("inherited file");
            let off = (i as usize * 13) % 900;
            e.write_sync(n, off as u64, b"overwritten")
                .expect("overwrite");
            let m = model.get_mut(&old).expect("model");
            m[off..off + 11].copy_from_slice(b"overwritten");
        }
        if i >= 5 && i % 5 == 0 {
            let victim = format!("f{}", i - 5);
            e.unlink(r, victim.as_bytes()).expect("unlink");
            model.remove(&victim);
        }
        e.layer_commit(&name).expect("commit");
        models.push((name, model.clone()));
    }
    let check = |e: &Engine, when: &str| {
        for (name, m) in &models {
            let r = root(e, name);
            let mut names = Vec::new();
            let mut off = 0;
            loop {
                let ents = e.readdir(r, off, 1000).expect("readdir");
                if ents.is_empty() {
                    break;
                }
                off = ents.last().map(|d| d.offset).unwrap_or(off);
                names.extend(
                    ents.iter()
                        .map(|d| String::from_utf8_lossy(&d.name).into_owned())
                        .filter(|n| n != "." && n != ".."),
                );
            }
            names.sort();
            let want: Vec<String> = m.keys().cloned().collect();
            assert_eq!(names, want, "{when}: files of layer {name}");
            for (f, data) in m {
                let n = walk(e, name, f).expect("file");
                assert_eq!(&read_all(e, n), data, "{when}: {name}/{f}");
            }
        }
    };
    check(&e, "live");
    let info = e.layer_stat("l99").expect("stat");
    assert_eq!(info.chain.len(), 99);
    assert_eq!(info.chain[0], "l98");
    e.shutdown().expect("shutdown");
    let report = engine::fsck::check(dev.as_ref()).expect("fsck");
    assert!(report.is_clean(), "{:?}", report.problems);
    let e = open(&dev);
    check(&e, "after remount");
    e.shutdown().expect("shutdown");
}

#[test]
fn removing_a_layer_frees_exactly_what_it_owns() {
    let (dev, e) = fresh(256 << 20);
    e.layer_create("img", no_labels()).expect("create");
    let big = create(&e, root(&e, "img"), "big", &pattern(3, 256 * 4096));
    let _ = big;
    e.layer_commit("img").expect("commit");
    e.fsync_sync().expect("sync");
    let before = e.statfs();
    e.layer_clone("img", "c", LayerState::Active, no_labels())
        .expect("clone");
    // 10 new blocks, and 3 inherited blocks rewritten (copy-on-write).
    create(&e, root(&e, "c"), "new", &pattern(4, 10 * 4096));
    let b = walk(&e, "c", "big").expect("big");
    e.write_sync(b, 4096 * 7, &pattern(5, 3 * 4096))
        .expect("cow write");
    e.fsync_sync().expect("sync");
    let during = e.statfs();
    assert_eq!(
        before.bfree - during.bfree,
        13,
        "the clone owns 10 new + 3 copied blocks"
    );
    assert_eq!(e.layer_stat("c").expect("stat").owned_bytes, 13 * 4096);
    // The parent still reads its original data.
    let parent_big = walk(&e, "img", "big").expect("parent big");
    assert_eq!(read_all(&e, parent_big), pattern(3, 256 * 4096));
    // A parent with children cannot go.
    let err = e.layer_remove("img").expect_err("parent with children");
    assert!(err.to_string().contains("children"), "{err}");
    e.layer_remove("c").expect("remove");
    e.fsync_sync().expect("sync");
    assert_eq!(
        e.statfs().bfree,
        before.bfree,
        "removal returns exactly the owned blocks"
    );
    e.layer_remove("img").expect("remove leaf parent");
    e.shutdown().expect("shutdown");
    let report = engine::fsck::check(dev.as_ref()).expect("fsck");
    assert!(report.is_clean(), "{:?}", report.problems);
}

#[test]
fn snapshot_freezes_a_running_layer_in_place() {
    let (dev, e) = fresh(128 << 20);
    let r = root(&e, "default");
    let f = create(&e, r, "log", b"first");
    let parent = e.layer_snapshot("default", "frozen").expect("snapshot");
    assert_eq!(parent.state, LayerState::Committed);
    // The running layer keeps its node ids and goes on writing; the snapshot does not change.
    e.write_sync(f, 0, b"SECOND").expect("write after snapshot");
    assert_eq!(read_all(&e, f), b"SECOND");
    assert_eq!(
        read_all(&e, walk(&e, "frozen", "log").expect("frozen log")),
        b"first"
    );
    let info = e.layer_stat("default").expect("stat");
    assert_eq!(info.parent.as_deref(), Some("frozen"));
    e.layer_clone("frozen", "from-snap", LayerState::View, no_labels())
        .expect("clone snapshot");
    assert_eq!(
        read_all(&e, walk(&e, "from-snap", "log").expect("log")),
        b"first"
    );
    let err = e.layer_remove("frozen").expect_err("has children");
    assert!(matches!(err, engine::Error::Busy(_)));
    e.shutdown().expect("shutdown");
    let report = engine::fsck::check(dev.as_ref()).expect("fsck");
    assert!(report.is_clean(), "{:?}", report.problems);
}

#[test]
fn bad_layer_requests_are_clear_errors() {
    let (_dev, e) = fresh(64 << 20);
    for bad in ["", ".", "..", "a/b", "x\ny", &"n".repeat(256)] {
        let err = e.layer_create(bad, no_labels()).expect_err("bad id");
        assert!(matches!(err, engine::Error::Invalid(_)), "{bad:?}: {err}");
    }
    assert!(matches!(
        e.layer_create("default", no_labels()),
        Err(engine::Error::Exists(_))
    ));
    assert!(matches!(
        e.layer_clone("nope", "x", LayerState::Active, no_labels()),
        Err(engine::Error::NotFound(_))
    ));
    assert!(matches!(
        e.layer_clone("default", "x", LayerState::Active, no_labels()),
        Err(engine::Error::Busy(_))
    ));
    assert!(matches!(
        e.layer_commit("nope"),
        Err(engine::Error::NotFound(_))
    ));
    e.layer_commit("default").expect("commit");
    assert!(matches!(
        e.layer_commit("default"),
        Err(engine::Error::Busy(_))
    ));
    assert!(matches!(
        e.layer_snapshot("default", "s"),
        Err(engine::Error::Busy(_))
    ));
    let id255 = "n".repeat(255);
    e.layer_clone("default", &id255, LayerState::Active, no_labels())
        .expect("255-byte id");
    e.shutdown().expect("shutdown");
}

#[test]
fn crash_during_layer_operations_recovers_consistently() {
    use std::sync::atomic::AtomicUsize;
    let (dev, e) = fresh(24 << 20);
    // Each crash image with the number of layer operations that had returned before it was
    // taken; durable[d] is what must survive once d operations have returned.
    type Images = Arc<Mutex<Vec<(usize, Vec<u8>)>>>;
    let images: Images = Arc::new(Mutex::new(Vec::new()));
    let done = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let grabber = {
        let (dev, images, stop, done) = (dev.clone(), images.clone(), stop.clone(), done.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let d = done.load(Ordering::SeqCst);
                let img = dev.snapshot();
                images.lock().expect("lock").push((d, img));
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        })
    };
    let mut committed: HashMap<String, Vec<u8>> = HashMap::new();
    let mut durable: Vec<HashMap<String, Vec<u8>>> = vec![HashMap::new()];
    let returned = |committed: &HashMap<String, Vec<u8>>,
                    durable: &mut Vec<HashMap<String, Vec<u8>>>| {
        durable.push(committed.clone());
        done.store(durable.len() - 1, Ordering::SeqCst);
        // A crash point between operations, besides those the grabber takes during them.
        let img = dev.snapshot();
        images.lock().expect("lock").push((durable.len() - 1, img));
    };
    e.layer_create("base", no_labels()).expect("create");
    create(&e, root(&e, "base"), "f", b"base");
    e.layer_commit("base").expect("commit");
    committed.insert("base".into(), b"base".to_vec());
    returned(&committed, &mut durable);
    for i in 0..60 {
        let id = format!("c{i}");
        e.layer_clone("base", &id, LayerState::Active, no_labels())
            .expect("clone");
        let data = pattern(i, 5000);
        let n = walk(&e, &id, "f").expect("f");
        e.write_sync(n, 0, &data).expect("write");
        e.layer_commit(&id).expect("commit");
        committed.insert(id.clone(), data);
        returned(&committed, &mut durable);
        if i % 3 == 2 {
            for old in [i - 1, i - 2] {
                e.layer_remove(&format!("c{old}")).expect("remove");
                committed.remove(&format!("c{old}"));
                returned(&committed, &mut durable);
            }
        }
    }
    stop.store(true, Ordering::SeqCst);
    grabber.join().expect("grabber");
    let images = std::mem::take(&mut *images.lock().expect("lock"));
    assert!(images.len() >= 100, "took {} crash images", images.len());
    eprintln!(
        "checking {} crash images taken during layer operations",
        images.len()
    );
    for (k, (d, img)) in images.into_iter().enumerate() {
        let dev = Arc::new(MemDevice::from_bytes(img));
        let report = engine::fsck::check(dev.as_ref()).expect("fsck reads crash image");
        assert!(report.is_clean(), "image {k}: {:?}", report.problems);
        let e2 = open(&dev);
        // Every layer committed before this image was taken is intact, unless a removal that
        // started later had already made it go.
        for (id, data) in &durable[d] {
            match e2.layer_stat(id) {
                Err(engine::Error::NotFound(_))
                    if durable.iter().skip(d).any(|s| !s.contains_key(id)) =>
                {
                    continue
                }
                r => {
                    let info = r.unwrap_or_else(|err| {
                        panic!("image {k} (after op {d}): layer {id} lost: {err}")
                    });
                    assert_eq!(info.state, LayerState::Committed, "image {k}: {id}");
                }
            }
            let n = walk(&e2, id, "f").expect("f");
            assert_eq!(&read_all(&e2, n), data, "image {k}: {id}/f");
        }
        e2.shutdown().expect("shutdown");
    }
    e.shutdown().expect("shutdown");
}
