//! OCI layer tar import and export (`control::oci`) at the engine level on a memory device (no
//! root needed): a two-layer image with every entry kind, whiteouts, an opaque directory,
//! hard links and a sparse file; every layer's content checked; export of each layer compared
//! with the source tar and re-imported into a second engine (round trip); malicious and broken
//! tars refused with no layer left behind; and the `strata import`/`export` commands on an
//! image file.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;

use control::oci::{self, Compression};
use engine::mkfs;
use engine::{Device, Engine, Error, MemDevice, Node, Options, Stat};

// ---------------------------------------------------------------------------------------
// Building tars
// ---------------------------------------------------------------------------------------

#[derive(Clone)]
enum Kind {
    Dir,
    File(Vec<u8>),
    Sym(String),
    Hard(String),
    Char(u32, u32),
    Block(u32, u32),
    Fifo,
}

#[derive(Clone)]
struct Ent {
    path: String,
    kind: Kind,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    xattrs: Vec<(String, Vec<u8>)>,
}

fn ent(path: &str, kind: Kind, mode: u32, mtime: u64) -> Ent {
    Ent {
        path: path.into(),
        kind,
        mode,
        uid: 0,
        gid: 0,
        mtime,
        xattrs: Vec::new(),
    }
}

fn dir(path: &str, mode: u32, mtime: u64) -> Ent {
    ent(path, Kind::Dir, mode, mtime)
}

fn file(path: &str, data: &[u8], mode: u32, mtime: u64) -> Ent {
    ent(path, Kind::File(data.to_vec()), mode, mtime)
}

fn hard(path: &str, target: &str) -> Ent {
    ent(path, Kind::Hard(target.into()), 0o644, 0)
}

fn whiteout(path: &str) -> Ent {
    file(path, b"", 0o644, 0)
}

fn build(ents: &[Ent]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in ents {
        if !e.xattrs.is_empty() {
            b.append_pax_extensions(
                e.xattrs
                    .iter()
                    .map(|(k, v)| (format!("SCHILY.xattr.{k}"), v.clone()))
                    .collect::<Vec<_>>()
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_slice())),
            )
            .unwrap();
        }
        let mut h = tar::Header::new_gnu();
        h.set_mode(e.mode);
        h.set_uid(e.uid);
        h.set_gid(e.gid);
        h.set_mtime(e.mtime);
        h.set_size(0);
        match &e.kind {
            Kind::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                b.append_data(&mut h, format!("{}/", e.path), std::io::empty())
                    .unwrap();
            }
            Kind::File(d) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(d.len() as u64);
                b.append_data(&mut h, &e.path, d.as_slice()).unwrap();
            }
            Kind::Sym(t) => {
                h.set_entry_type(tar::EntryType::Symlink);
                b.append_link(&mut h, &e.path, t).unwrap();
            }
            Kind::Hard(t) => {
                h.set_entry_type(tar::EntryType::Link);
                b.append_link(&mut h, &e.path, t).unwrap();
            }
            Kind::Char(ma, mi) | Kind::Block(ma, mi) => {
                h.set_entry_type(if matches!(e.kind, Kind::Char(..)) {
                    tar::EntryType::Char
                } else {
                    tar::EntryType::Block
                });
                h.set_device_major(*ma).unwrap();
                h.set_device_minor(*mi).unwrap();
                b.append_data(&mut h, &e.path, std::io::empty()).unwrap();
            }
            Kind::Fifo => {
                h.set_entry_type(tar::EntryType::Fifo);
                b.append_data(&mut h, &e.path, std::io::empty()).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

/// A tar entry as compared: kind, mode, owner, mtime, data, link target, device, xattrs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sum {
    kind: char,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    data: Vec<u8>,
    link: Vec<u8>,
    dev: (u32, u32),
    xattrs: BTreeMap<String, Vec<u8>>,
}

fn summarize(tar_bytes: &[u8]) -> BTreeMap<String, Sum> {
    let mut out = BTreeMap::new();
    let mut ar = tar::Archive::new(tar_bytes);
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let mut xattrs = BTreeMap::new();
        if let Some(px) = e.pax_extensions().unwrap() {
            for r in px {
                let r = r.unwrap();
                if let Some(k) = r.key().unwrap().strip_prefix("SCHILY.xattr.") {
                    xattrs.insert(k.to_string(), r.value_bytes().to_vec());
                }
            }
        }
        let path = String::from_utf8(e.path_bytes().to_vec()).unwrap();
        let path = path.trim_end_matches('/').to_string();
        let h = e.header().clone();
        let kind = match h.entry_type() {
            tar::EntryType::Directory => 'd',
            tar::EntryType::Regular => 'f',
            tar::EntryType::Symlink => 'l',
            tar::EntryType::Link => 'h',
            tar::EntryType::Char => 'c',
            tar::EntryType::Block => 'b',
            tar::EntryType::Fifo => 'p',
            t => panic!("unexpected entry type {t:?}"),
        };
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data).unwrap();
        let link = e.link_name_bytes().map(|l| l.to_vec()).unwrap_or_default();
        let dev = if matches!(kind, 'c' | 'b') {
            (
                h.device_major().unwrap().unwrap(),
                h.device_minor().unwrap().unwrap(),
            )
        } else {
            (0, 0)
        };
        // A hard link entry carries no attributes of its own.
        let s = if kind == 'h' {
            Sum {
                kind,
                mode: 0,
                uid: 0,
                gid: 0,
                mtime: 0,
                data,
                link,
                dev,
                xattrs,
            }
        } else {
            Sum {
                kind,
                mode: h.mode().unwrap() & 0o7777,
                uid: h.uid().unwrap(),
                gid: h.gid().unwrap(),
                mtime: if path.contains(".wh.") {
                    0
                } else {
                    h.mtime().unwrap()
                },
                data,
                link,
                dev,
                xattrs,
            }
        };
        assert!(out.insert(path.clone(), s).is_none(), "duplicate {path}");
    }
    out
}

// ---------------------------------------------------------------------------------------
// The test image
// ---------------------------------------------------------------------------------------

const CAP: &[u8] = &[
    0x01, 0x00, 0x00, 0x02, 0x00, 0x04, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];
const SPARSE_SIZE: usize = (8 << 20) + 100;

fn sparse_data() -> Vec<u8> {
    let mut v = vec![0u8; SPARSE_SIZE];
    v[..4096].fill(b'A');
    v[4 << 20..(4 << 20) + 4096].fill(b'B');
    v[8 << 20..].fill(b'C');
    v
}

/// 3 MiB and a bit of non-zero pseudo-random bytes (written in 1 MiB chunks).
fn blob() -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..(3 << 20) + 777)
        .map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (x >> 24) as u8 | 1
        })
        .collect()
}

fn long_name() -> String {
    format!("home/u/{}", "x".repeat(200))
}

fn base_entries() -> Vec<Ent> {
    let mut tool = file("usr/bin/tool", b"#!/bin/sh\necho tool\n", 0o4755, 1001);
    tool.xattrs = vec![
        ("security.capability".into(), CAP.to_vec()),
        ("user.note".into(), b"hello".to_vec()),
    ];
    let mut home_u = dir("home/u", 0o2750, 1002);
    home_u.uid = 1000;
    home_u.gid = 1000;
    let mut f = file("home/u/f", b"user data\n", 0o640, 1234567);
    f.uid = 1000;
    f.gid = 1001;
    vec![
        dir("etc", 0o755, 1000),
        file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n", 0o644, 1000),
        dir("usr", 0o755, 1000),
        dir("usr/bin", 0o755, 1000),
        tool,
        hard("usr/bin/tool2", "usr/bin/tool"),
        ent("usr/bin/link", Kind::Sym("tool".into()), 0o777, 1003),
        dir("usr/lib", 0o755, 1000),
        ent("lib", Kind::Sym("usr/lib".into()), 0o777, 1003),
        dir("tmp", 0o1777, 1000),
        dir("opt", 0o755, 1000),
        file("opt/a", b"a\n", 0o644, 1000),
        dir("opt/sub", 0o755, 1000),
        file("opt/sub/b", b"b\n", 0o644, 1000),
        dir("data", 0o755, 1000),
        file("data/old", b"old\n", 0o644, 1000),
        file("data/keep", b"keep\n", 0o644, 1000),
        dir("dev", 0o755, 1000),
        ent("dev/null", Kind::Char(1, 3), 0o666, 1000),
        ent("dev/sda", Kind::Block(8, 0), 0o660, 1000),
        ent("dev/fifo", Kind::Fifo, 0o644, 1000),
        dir("home", 0o755, 1000),
        home_u,
        f,
        file(&long_name(), b"long\n", 0o644, 1000),
        file("big.img", &sparse_data(), 0o600, 1005),
        file("usr/lib/blob", &blob(), 0o644, 1006),
    ]
}

const PASSWD2: &[u8] = b"root:x:0:0::/root:/bin/bash\nu:x:1000:1000::/home/u:/bin/sh\n";

fn l2_entries() -> Vec<Ent> {
    vec![
        dir("data", 0o755, 2000),
        whiteout("data/.wh.old"),
        dir("etc", 0o755, 2002),
        file("etc/passwd", PASSWD2, 0o600, 2003),
        hard("etc/passwd2", "etc/passwd"),
        dir("opt", 0o700, 2001),
        whiteout("opt/.wh..wh..opq"),
        file("opt/new", b"new\n", 0o644, 2004),
        dir("usr", 0o755, 1000),
        dir("usr/bin", 0o755, 1000),
        hard("usr/bin/tool3", "usr/bin/tool"),
    ]
}

// ---------------------------------------------------------------------------------------
// Engine helpers
// ---------------------------------------------------------------------------------------

fn fresh() -> Arc<Engine> {
    let dev = Arc::new(MemDevice::new(512 << 20));
    mkfs(dev.as_ref(), 0, 0).expect("mkfs");
    let d: Arc<dyn Device> = dev;
    Engine::open(
        d,
        Options {
            cache_bytes: 8 << 20,
            ..Default::default()
        },
    )
    .expect("open")
}

/// Stat of `path` in `layer` (None when missing); the lookup references are given back.
fn stat(e: &Engine, layer: &str, path: &str) -> Option<Stat> {
    let mut node = e.layer_root(layer).unwrap();
    let mut st = e.getattr(node).unwrap();
    let mut taken: Vec<Node> = Vec::new();
    let mut found = true;
    for c in path.split('/').filter(|c| !c.is_empty()) {
        match e.lookup(node, c.as_bytes()) {
            Ok(s) => {
                taken.push(s.ino);
                node = s.ino;
                st = s;
            }
            Err(_) => {
                found = false;
                break;
            }
        }
    }
    for n in taken {
        e.forget(n, 1);
    }
    found.then_some(st)
}

fn must(e: &Engine, layer: &str, path: &str) -> Stat {
    stat(e, layer, path).unwrap_or_else(|| panic!("{layer}:{path} missing"))
}

fn read_all(e: &Engine, st: &Stat) -> Vec<u8> {
    let mut out = Vec::new();
    while (out.len() as u64) < st.attr.size {
        let d = e
            .read_sync(st.ino, out.len() as u64, 1 << 20)
            .expect("read");
        assert!(!d.is_empty());
        out.extend_from_slice(&d);
    }
    out
}

fn xattrs(e: &Engine, node: Node) -> BTreeMap<String, Vec<u8>> {
    let list = e.listxattr(node).unwrap();
    list.split(|b| *b == 0)
        .filter(|k| !k.is_empty())
        .map(|k| {
            (
                String::from_utf8(k.to_vec()).unwrap(),
                e.getxattr(node, k).unwrap().to_vec(),
            )
        })
        .collect()
}

/// Everything observable in a layer (but ctime/atime and inode numbers), by path.
fn snapshot(e: &Engine, layer: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let root = e.layer_root(layer).unwrap();
    let mut stack = vec![(String::new(), root)];
    while let Some((p, node)) = stack.pop() {
        let mut off = 0;
        loop {
            let ents = e.readdir(node, off, 100).unwrap();
            if ents.is_empty() {
                break;
            }
            for d in ents {
                off = d.offset;
                if &*d.name == b"." || &*d.name == b".." {
                    continue;
                }
                let name = String::from_utf8(d.name.to_vec()).unwrap();
                let path = if p.is_empty() {
                    name.clone()
                } else {
                    format!("{p}/{name}")
                };
                let st = e.lookup(node, name.as_bytes()).unwrap();
                let a = st.attr;
                let content = if a.is_reg() {
                    let data = read_all(e, &st);
                    format!(
                        "{} bytes fnv {:x}",
                        data.len(),
                        data.iter().fold(0xcbf29ce484222325u64, |h, b| {
                            (h ^ *b as u64).wrapping_mul(0x100000001b3)
                        })
                    )
                } else if a.mode & libc::S_IFMT == libc::S_IFLNK {
                    String::from_utf8_lossy(&e.readlink(st.ino).unwrap()).into_owned()
                } else {
                    String::new()
                };
                out.insert(
                    path.clone(),
                    format!(
                        "mode {:o} uid {} gid {} nlink {} mtime {}.{:09} rdev {} {} xattrs {:?}",
                        a.mode,
                        a.uid,
                        a.gid,
                        a.nlink,
                        a.mtime.sec,
                        a.mtime.nsec,
                        a.rdev,
                        content,
                        xattrs(e, st.ino)
                    ),
                );
                if a.is_dir() {
                    stack.push((path, st.ino));
                }
                e.forget(st.ino, 1);
            }
        }
    }
    out
}

/// Inodes reachable from a layer's root (hard links counted once), root included.
fn reachable(e: &Engine, layer: &str) -> u64 {
    let root = e.layer_root(layer).unwrap();
    let mut seen = std::collections::HashSet::from([root]);
    let mut stack = vec![root];
    while let Some(node) = stack.pop() {
        let mut off = 0;
        loop {
            let ents = e.readdir(node, off, 100).unwrap();
            if ents.is_empty() {
                break;
            }
            for d in ents {
                off = d.offset;
                if &*d.name == b"." || &*d.name == b".." {
                    continue;
                }
                if seen.insert(d.ino) && d.kind == libc::S_IFDIR {
                    stack.push(d.ino);
                }
            }
        }
    }
    seen.len() as u64
}

fn import(e: &Engine, layer: &str, parent: Option<&str>, tar: &[u8]) -> oci::ImportReport {
    oci::import(e, layer, parent, tar, Compression::Auto)
        .unwrap_or_else(|err| panic!("import of {layer} failed: {err}"))
}

fn export(e: &Engine, layer: &str) -> Vec<u8> {
    let mut v = Vec::new();
    oci::export(e, layer, &mut v).unwrap_or_else(|err| panic!("export of {layer}: {err}"));
    v
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut g = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    g.write_all(data).unwrap();
    g.finish().unwrap()
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

fn check_base(e: &Engine, layer: &str) {
    let passwd = must(e, layer, "etc/passwd");
    assert_eq!(read_all(e, &passwd), b"root:x:0:0::/root:/bin/sh\n");
    assert_eq!(passwd.attr.mode, libc::S_IFREG | 0o644);
    assert_eq!(passwd.attr.mtime.sec, 1000);

    let tool = must(e, layer, "usr/bin/tool");
    assert_eq!(tool.attr.mode, libc::S_IFREG | 0o4755, "setuid kept");
    assert_eq!(tool.attr.nlink, 2);
    assert_eq!(tool.attr.mtime.sec, 1001);
    let x = xattrs(e, tool.ino);
    assert_eq!(x.get("security.capability").map(|v| &v[..]), Some(CAP));
    assert_eq!(x.get("user.note").map(|v| &v[..]), Some(&b"hello"[..]));
    let tool2 = must(e, layer, "usr/bin/tool2");
    assert_eq!(tool2.ino, tool.ino, "hard link shares the inode");

    let link = must(e, layer, "usr/bin/link");
    assert_eq!(link.attr.mode & libc::S_IFMT, libc::S_IFLNK);
    assert_eq!(&*e.readlink(link.ino).unwrap(), b"tool");
    assert_eq!(link.attr.mtime.sec, 1003);
    let lib = must(e, layer, "lib");
    assert_eq!(&*e.readlink(lib.ino).unwrap(), b"usr/lib");

    assert_eq!(must(e, layer, "tmp").attr.mode, libc::S_IFDIR | 0o1777);
    let home_u = must(e, layer, "home/u");
    assert_eq!(home_u.attr.mode, libc::S_IFDIR | 0o2750);
    assert_eq!((home_u.attr.uid, home_u.attr.gid), (1000, 1000));
    assert_eq!(home_u.attr.mtime.sec, 1002, "directory mtime restored");
    let f = must(e, layer, "home/u/f");
    assert_eq!((f.attr.uid, f.attr.gid), (1000, 1001));
    assert_eq!(f.attr.mode, libc::S_IFREG | 0o640);
    assert_eq!(f.attr.mtime.sec, 1234567);
    assert_eq!(read_all(e, &must(e, layer, &long_name())), b"long\n");

    let null = must(e, layer, "dev/null");
    assert_eq!(null.attr.mode, libc::S_IFCHR | 0o666);
    assert_eq!(null.attr.rdev, (1 << 8) | 3);
    let sda = must(e, layer, "dev/sda");
    assert_eq!(sda.attr.mode, libc::S_IFBLK | 0o660);
    assert_eq!(sda.attr.rdev, 8 << 8);
    assert_eq!(must(e, layer, "dev/fifo").attr.mode, libc::S_IFIFO | 0o644);

    let big = must(e, layer, "big.img");
    assert_eq!(big.attr.size, SPARSE_SIZE as u64);
    assert!(
        big.blocks * 512 <= 3 * 4096,
        "sparse file holds {} bytes of blocks",
        big.blocks * 512
    );
    assert!(read_all(e, &big) == sparse_data(), "sparse file content");
    let blob_st = must(e, layer, "usr/lib/blob");
    assert!(read_all(e, &blob_st) == blob(), "large file content");
    for p in ["opt/a", "opt/sub/b", "data/old", "data/keep"] {
        must(e, layer, p);
    }
}

#[test]
fn multi_layer_import_export_round_trip() {
    let e = fresh();
    let base_tar = build(&base_entries());
    let l2_tar = build(&l2_entries());
    let r = import(&e, "base", None, &gzip(&base_tar));
    assert_eq!(r.hardlinks, 1);
    assert!(r.bytes_sparse >= (8 << 20) - 8192, "{r:?}");
    import(&e, "l2", Some("base"), &l2_tar);
    assert_eq!(
        e.layer_stat("base").unwrap().state,
        engine::LayerState::Committed
    );
    assert_eq!(
        e.layer_stat("l2").unwrap().state,
        engine::LayerState::Committed
    );

    check_base(&e, "base");

    // Layer 2: whiteout, opaque dir, modified file, new hard links.
    assert!(stat(&e, "l2", "data/old").is_none());
    must(&e, "l2", "data/keep");
    assert!(stat(&e, "l2", "opt/a").is_none());
    assert!(stat(&e, "l2", "opt/sub").is_none());
    assert_eq!(read_all(&e, &must(&e, "l2", "opt/new")), b"new\n");
    assert_eq!(must(&e, "l2", "opt").attr.mode, libc::S_IFDIR | 0o700);
    assert_eq!(must(&e, "l2", "opt").attr.mtime.sec, 2001);
    let p = must(&e, "l2", "etc/passwd");
    assert_eq!(read_all(&e, &p), PASSWD2);
    assert_eq!(p.attr.nlink, 2);
    assert_eq!(p.attr.mode, libc::S_IFREG | 0o600);
    assert_eq!(must(&e, "l2", "etc/passwd2").ino, p.ino);
    assert_eq!(must(&e, "l2", "usr/bin/tool").attr.nlink, 3);
    assert_eq!(
        must(&e, "l2", "usr/bin/tool3").ino,
        must(&e, "l2", "usr/bin/tool").ino
    );
    // The parent is untouched.
    check_base(&e, "base");
    // Every reference the import took was given back: nothing unlinked is kept.
    for l in ["base", "l2"] {
        assert_eq!(e.layer_stat(l).unwrap().inodes, reachable(&e, l), "{l}");
    }

    // Export of the base layer equals the source tar.
    let base_out = export(&e, "base");
    assert_eq!(summarize(&base_out), summarize(&base_tar));

    // Export of layer 2: the source's entries, plus the other paths of the inode that gained a
    // link; deletions as whiteouts (the opaque dir's removed entries one by one).
    let got = summarize(&export(&e, "l2"));
    let want = summarize(&l2_tar);
    let mut extra: Vec<&String> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    extra.sort();
    assert_eq!(
        extra,
        vec!["opt/.wh.a", "opt/.wh.sub", "usr/bin/tool", "usr/bin/tool2"],
        "{:?}",
        got.keys().collect::<Vec<_>>()
    );
    for (k, v) in &want {
        if k == "opt/.wh..wh..opq" {
            continue;
        }
        assert_eq!(got.get(k), Some(v), "exported {k}");
    }
    let src = summarize(&base_tar);
    assert_eq!(got["usr/bin/tool"], src["usr/bin/tool"]);
    assert_eq!(got["usr/bin/tool2"].link, b"usr/bin/tool");
    assert!(!want.contains_key("opt/.wh.a"));

    // Round trip: the exported tars rebuild the same layers in another engine.
    let e2 = fresh();
    import(&e2, "base", None, &base_out);
    import(&e2, "l2", Some("base"), &export(&e, "l2"));
    assert_eq!(snapshot(&e2, "base"), snapshot(&e, "base"));
    assert_eq!(snapshot(&e2, "l2"), snapshot(&e, "l2"));
    check_base(&e2, "base");

    // A layer with nothing changed exports an empty tar.
    e.layer_clone("l2", "empty", engine::LayerState::Active, BTreeMap::new())
        .unwrap();
    assert!(summarize(&export(&e, "empty")).is_empty());
    e.shutdown().unwrap();
    e2.shutdown().unwrap();
}

#[test]
fn diff_reports_changes_from_the_engine() {
    use engine::diff::ChangeKind::*;
    let e = fresh();
    import(&e, "base", None, &build(&base_entries()));
    import(&e, "l2", Some("base"), &build(&l2_entries()));
    let d = engine::diff::layer_diff(&e, "l2").unwrap();
    let m: BTreeMap<String, engine::diff::ChangeKind> = d
        .iter()
        .map(|c| (String::from_utf8(c.path.clone()).unwrap(), c.kind))
        .collect();
    assert_eq!(m.get("data/old"), Some(&Deleted));
    assert_eq!(m.get("opt/a"), Some(&Deleted));
    assert_eq!(m.get("opt/new"), Some(&Added));
    assert_eq!(m.get("etc/passwd"), Some(&Added));
    assert_eq!(m.get("usr/bin/tool"), Some(&Modified));
    assert!(!m.contains_key("data/keep"));
    assert!(!m.contains_key("big.img"));
    // A replaced directory is opaque.
    e.layer_clone("l2", "l3", engine::LayerState::Active, BTreeMap::new())
        .unwrap();
    let root = e.layer_root("l3").unwrap();
    let data = e.lookup(root, b"data").unwrap();
    e.unlink(data.ino, b"keep").unwrap();
    e.forget(data.ino, 1);
    e.rmdir(root, b"data").unwrap();
    let who = engine::Caller { uid: 0, gid: 0 };
    let nd = e
        .mknod(root, b"data", libc::S_IFDIR | 0o755, 0, who, None)
        .unwrap();
    e.forget(nd.ino, 1);
    let d = engine::diff::layer_diff(&e, "l3").unwrap();
    assert_eq!(
        d.iter()
            .map(|c| (String::from_utf8(c.path.clone()).unwrap(), c.kind))
            .collect::<Vec<_>>(),
        vec![("data".to_string(), OpaqueDir)]
    );
    let l3_tar = export(&e, "l3");
    let t = summarize(&l3_tar);
    assert!(t.contains_key("data/.wh..wh..opq"), "{t:?}");
    // Round trip of all three, sub-second mtimes (PAX) included.
    let e2 = fresh();
    import(&e2, "base", None, &export(&e, "base"));
    import(&e2, "l2", Some("base"), &export(&e, "l2"));
    import(&e2, "l3", Some("l2"), &l3_tar);
    assert_ne!(must(&e, "l3", "data").attr.mtime.nsec, 0);
    for l in ["base", "l2", "l3"] {
        assert_eq!(snapshot(&e2, l), snapshot(&e, l), "{l}");
    }
    e2.shutdown().unwrap();
    e.shutdown().unwrap();
}

/// A header with a raw name (the tar crate's builder refuses `..` and absolute paths).
fn raw(name: &[u8], ty: tar::EntryType, data: &[u8], link: &[u8]) -> (tar::Header, Vec<u8>) {
    let mut h = tar::Header::new_old();
    {
        let o = h.as_old_mut();
        o.name[..name.len()].copy_from_slice(name);
        o.linkname[..link.len()].copy_from_slice(link);
    }
    h.set_entry_type(ty);
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_cksum();
    (h, data.to_vec())
}

fn raw_tar(entries: &[(tar::Header, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (h, d) in entries {
        b.append(h, d.as_slice()).unwrap();
    }
    b.into_inner().unwrap()
}

fn refused(e: &Engine, parent: Option<&str>, tar: &[u8], c: Compression, want: &str) {
    let r = oci::import(e, "bad", parent, tar, c);
    match r {
        Ok(rep) => panic!("import accepted ({rep:?}); wanted an error with {want:?}"),
        Err(err) => {
            let msg = err.to_string();
            assert!(
                msg.contains(want),
                "error {msg:?} does not mention {want:?}"
            );
            assert!(matches!(err, Error::Invalid(_)), "{err:?}");
        }
    }
    assert!(
        matches!(e.layer_stat("bad"), Err(Error::NotFound(_))),
        "the half-built layer is gone"
    );
    let ids: Vec<String> = e.layer_list().into_iter().map(|l| l.id).collect();
    assert!(!ids.contains(&"bad".to_string()), "{ids:?}");
}

#[test]
fn malicious_and_broken_tars_are_refused() {
    use tar::EntryType as T;
    let e = fresh();
    import(&e, "base", None, &build(&base_entries()));
    let before = snapshot(&e, "base");
    for parent in [None, Some("base")] {
        let t = raw_tar(&[raw(b"/etc/shadow", T::Regular, b"x", b"")]);
        refused(&e, parent, &t, Compression::Auto, "absolute");
        let t = raw_tar(&[raw(b"../escape", T::Regular, b"x", b"")]);
        refused(&e, parent, &t, Compression::Auto, "escapes");
        let t = raw_tar(&[
            raw(b"a/", T::Directory, b"", b""),
            raw(b"a/../../escape", T::Regular, b"x", b""),
        ]);
        refused(&e, parent, &t, Compression::Auto, "escapes");
        // A symlink, then a write through it.
        let t = raw_tar(&[
            raw(b"evil", T::Symlink, b"", b"/etc"),
            raw(b"evil/passwd", T::Regular, b"x", b""),
        ]);
        refused(&e, parent, &t, Compression::Auto, "symlink");
        let t = raw_tar(&[
            raw(b"up", T::Symlink, b"", b".."),
            raw(b"up/x/", T::Directory, b"", b""),
        ]);
        refused(&e, parent, &t, Compression::Auto, "symlink");
        // Hard links out of the layer or to nothing.
        let t = raw_tar(&[raw(b"h", T::Link, b"", b"../outside")]);
        refused(&e, parent, &t, Compression::Auto, "escapes");
        let t = raw_tar(&[raw(b"h", T::Link, b"", b"/etc/passwd")]);
        refused(&e, parent, &t, Compression::Auto, "absolute");
        let t = raw_tar(&[raw(b"h", T::Link, b"", b"missing")]);
        refused(&e, parent, &t, Compression::Auto, "does not exist");
        // A name over 255 bytes.
        let mut b = tar::Builder::new(Vec::new());
        let long = format!("d/{}", "n".repeat(300));
        b.append_pax_extensions([("path", long.as_bytes())])
            .unwrap();
        let (h, d) = raw(b"short", T::Regular, b"x", b"");
        b.append(&h, d.as_slice()).unwrap();
        refused(
            &e,
            parent,
            &b.into_inner().unwrap(),
            Compression::Auto,
            "255",
        );
        // Truncated inside file data, and at an entry boundary.
        let good = build(&[dir("d", 0o755, 1), file("d/f", &[7u8; 10000], 0o644, 1)]);
        refused(
            &e,
            parent,
            &good[..512 * 3 + 5000],
            Compression::Auto,
            "truncated",
        );
        refused(
            &e,
            parent,
            &good[..good.len() - 1024],
            Compression::Auto,
            "truncated",
        );
        refused(&e, parent, &good[..700], Compression::Auto, "tar");
        refused(&e, parent, b"", Compression::Auto, "truncated");
        // Garbage, plain and compressed.
        let mut x: u64 = 0x1234_5678;
        let garbage: Vec<u8> = (0..5000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        refused(&e, parent, &garbage, Compression::Auto, "tar");
        let mut gz = vec![0x1f, 0x8b, 8, 0];
        gz.extend_from_slice(&garbage);
        refused(&e, parent, &gz, Compression::Auto, "tar");
        refused(&e, parent, &garbage, Compression::Gzip, "tar");
        refused(&e, parent, &garbage, Compression::Zstd, "zstd");
        let mut gzt = gzip(&good);
        let n = gzt.len();
        gzt.truncate(n / 2);
        refused(&e, parent, &gzt, Compression::Auto, "tar");
        // Writing through an inherited symlink (`lib` -> usr/lib in the base).
        if parent.is_some() {
            let t = raw_tar(&[raw(b"lib/x", T::Regular, b"x", b"")]);
            refused(&e, parent, &t, Compression::Auto, "symlink");
            let t = raw_tar(&[raw(b"lib/.wh.x", T::Regular, b"", b"")]);
            refused(&e, parent, &t, Compression::Auto, "symlink");
        }
    }
    // Random corruption of a good tar: refused or applied, never a panic, never a layer left
    // behind on error.
    let good = build(&base_entries()[..8]);
    let mut x: u64 = 0xdead_beef;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..300 {
        let mut t = good.clone();
        for _ in 0..1 + next() % 4 {
            let at = (next() % 4096) as usize % t.len();
            t[at] = next() as u8;
        }
        if i % 3 == 0 {
            let n = (next() as usize) % t.len();
            t.truncate(n);
        }
        match oci::import(&e, "fuzz", Some("base"), t.as_slice(), Compression::Auto) {
            Ok(_) => e.layer_remove("fuzz").unwrap(),
            Err(_) => assert!(matches!(e.layer_stat("fuzz"), Err(Error::NotFound(_)))),
        }
    }
    assert_eq!(snapshot(&e, "base"), before, "the parent is unchanged");
    // `..` that stays inside is fine.
    let t = raw_tar(&[
        raw(b"a/", T::Directory, b"", b""),
        raw(b"a/../b", T::Regular, b"ok", b""),
        // Whiteouts where there is nothing: no-ops that create nothing.
        raw(b"nowhere/deeper/.wh.x", T::Regular, b"", b""),
        raw(b"nowhere/.wh..wh..opq", T::Regular, b"", b""),
        raw(b".wh.missing", T::Regular, b"", b""),
    ]);
    let r = import(&e, "fine", Some("base"), &t);
    assert_eq!((r.whiteouts, r.opaque_dirs), (2, 1));
    assert_eq!(read_all(&e, &must(&e, "fine", "b")), b"ok");
    assert!(stat(&e, "fine", "nowhere").is_none());
    e.shutdown().unwrap();
}

/// A crash in the middle of an import leaves a partly filled active layer; at the next start
/// it is removed (the daemon and the offline CLI do this), so nothing half-imported stays
/// and the same import can be retried.
#[test]
fn interrupted_import_is_removed_at_start() {
    struct CrashAt<'a> {
        data: &'a [u8],
        pos: usize,
        at: usize,
        dev: Arc<MemDevice>,
        image: &'a mut Option<Vec<u8>>,
    }
    impl std::io::Read for CrashAt<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.pos >= self.at && self.image.is_none() {
                // What a power cut would leave here.
                *self.image = Some(self.dev.snapshot());
            }
            let n = buf.len().min(self.data.len() - self.pos).min(4096);
            buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }
    let tar = build(&base_entries());
    let dev = Arc::new(MemDevice::new(256 << 20));
    mkfs(dev.as_ref(), 0, 0).unwrap();
    let d: Arc<dyn Device> = dev.clone();
    let e = Engine::open(d, Options::default()).unwrap();
    let mut image = None;
    let r = oci::import(
        &e,
        "img",
        None,
        CrashAt {
            data: &tar,
            pos: 0,
            at: tar.len() / 2,
            dev: dev.clone(),
            image: &mut image,
        },
        Compression::None,
    );
    r.expect("the import itself succeeds");
    e.shutdown().unwrap();

    let crashed = Arc::new(MemDevice::from_bytes(
        image.expect("image taken mid-import"),
    ));
    let d: Arc<dyn Device> = crashed.clone();
    let e = Engine::open(d, Options::default()).expect("recovery");
    let l = e
        .layer_stat("img")
        .expect("the half-imported layer is there after recovery");
    assert_eq!(l.state, engine::LayerState::Active);
    assert!(l.labels.contains_key(oci::IMPORTING_LABEL));
    assert_eq!(oci::remove_interrupted_imports(&e), vec!["img".to_string()]);
    assert!(e.layer_stat("img").is_err());
    // A finished import carries no marker and is never removed.
    import(&e, "img", None, &tar);
    check_base(&e, "img");
    assert!(!e
        .layer_stat("img")
        .unwrap()
        .labels
        .contains_key(oci::IMPORTING_LABEL));
    assert!(oci::remove_interrupted_imports(&e).is_empty());
    e.shutdown().unwrap();
    let report = engine::fsck::check(crashed.as_ref()).unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
}

#[test]
fn zstd_input() {
    let base_tar = build(&base_entries());
    let zst = match std::process::Command::new("zstd")
        .args(["-q", "-c", "-3"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
    {
        Ok(mut c) => {
            let mut stdin = c.stdin.take().unwrap();
            let data = base_tar.clone();
            let w = std::thread::spawn(move || stdin.write_all(&data));
            let out = c.wait_with_output().unwrap();
            w.join().unwrap().unwrap();
            assert!(out.status.success());
            out.stdout
        }
        Err(err) => {
            eprintln!("SKIP: no zstd tool to make the test input ({err})");
            return;
        }
    };
    let e = fresh();
    import(&e, "base", None, &zst);
    check_base(&e, "base");
    oci::import(&e, "z2", None, zst.as_slice(), Compression::Zstd).unwrap();
    check_base(&e, "z2");
    e.shutdown().unwrap();
}

#[test]
fn cli_import_export_on_an_image() {
    let td = common::TestDir::new("oci-cli");
    let img = td.mkfs("256M");
    let base_tar = build(&base_entries());
    let tgz = td.join("base.tar.gz");
    std::fs::write(&tgz, gzip(&base_tar)).unwrap();
    let l2 = td.join("l2.tar");
    std::fs::write(&l2, build(&l2_entries())).unwrap();
    let imgs = img.to_str().unwrap();
    let run = |args: &[&str]| {
        let out = common::strata(args);
        common::assert_no_panic("strata", &out.stderr);
        out
    };
    let out = run(&[
        "import",
        "--image",
        imgs,
        "--layer",
        "base",
        tgz.to_str().unwrap(),
    ]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("imported layer \"base\""),
        "{}",
        out.stdout
    );
    let out = run(&[
        "import",
        "--image",
        imgs,
        "--layer",
        "l2",
        "--parent",
        "base",
        l2.to_str().unwrap(),
    ]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let bad = td.join("bad.tar");
    std::fs::write(
        &bad,
        raw_tar(&[raw(b"/abs", tar::EntryType::Regular, b"x", b"")]),
    )
    .unwrap();
    let out = run(&[
        "import",
        "--image",
        imgs,
        "--layer",
        "bad",
        "--parent",
        "l2",
        bad.to_str().unwrap(),
    ]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("absolute"), "{}", out.stderr);
    let o = td.join("base.out.tar");
    let out = run(&["export", "base", "--image", imgs, "-o", o.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(summarize(&std::fs::read(&o).unwrap()), summarize(&base_tar));
    let out = run(&["export", "bad", "--image", imgs, "-o", o.to_str().unwrap()]);
    assert_ne!(out.code, 0, "the refused layer does not exist");
    common::assert_fsck_clean(&img, "after import/export");
}

#[test]
fn import_and_export_through_the_running_daemon() {
    if unsafe { libc::geteuid() } != 0 || !std::path::Path::new("/dev/fuse").exists() {
        eprintln!("SKIP: needs root and /dev/fuse");
        return;
    }
    let td = common::TestDir::new("oci-daemon");
    let img = td.mkfs("256M");
    let mnt = td.mountpoint("mnt");
    let m = common::Mount::start(&img, &mnt);
    let sock = m.admin_socket();
    let socks = sock.to_str().unwrap();
    let base_tar = build(&base_entries());
    let tar_path = td.join("base.tar");
    std::fs::write(&tar_path, &base_tar).unwrap();
    let run = |args: &[&str]| {
        let out = common::strata(args);
        common::assert_no_panic("strata", &out.stderr);
        out
    };
    let out = run(&[
        "import",
        "--admin-socket",
        socks,
        "--layer",
        "base",
        tar_path.to_str().unwrap(),
    ]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("imported layer \"base\""),
        "{}",
        out.stdout
    );
    // The new committed layer is a directory of the mount at once.
    assert_eq!(
        std::fs::read(mnt.join("base/usr/lib/blob"))
            .ok()
            .map(|d| d.len()),
        Some(blob().len())
    );
    let o = td.join("out.tar");
    let out = run(&[
        "export",
        "base",
        "--admin-socket",
        socks,
        "-o",
        o.to_str().unwrap(),
    ]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(summarize(&std::fs::read(&o).unwrap()), summarize(&base_tar));
    // A refused tar leaves no layer behind, and the daemon keeps serving.
    let bad = td.join("bad.tar");
    std::fs::write(
        &bad,
        raw_tar(&[raw(b"../escape", tar::EntryType::Regular, b"x", b"")]),
    )
    .unwrap();
    let out = run(&[
        "import",
        "--admin-socket",
        socks,
        "--layer",
        "bad",
        "--parent",
        "base",
        bad.to_str().unwrap(),
    ]);
    assert_ne!(out.code, 0);
    assert!(!mnt.join("bad").exists());
    let out = run(&["layer", "ls", "--admin-socket", socks]);
    assert!(
        out.stdout.contains("base") && !out.stdout.contains("bad"),
        "{}",
        out.stdout
    );
    m.stop();
    common::assert_fsck_clean(&img, "after import/export through the daemon");
}
