//! The diff service's request handling against an in-memory engine, without containerd:
//! Apply onto a prepared snapshot (whiteouts and opaque directories against the parent, the
//! uncompressed digest), a failed apply puts the snapshot back as prepared, an apply
//! interrupted by a crash is undone at the next start, Diff against a view of the parent
//! equals the layer's export, lower trees that are not an ancestor's are not Strata's, and
//! garbage blobs are errors, never panics. tests/containerd_diff.rs drives the same code
//! through a real containerd.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use control::differ::{reset_interrupted_applies, Differ, Target, APPLYING_LABEL};
use control::snapshotter::api;
use control::snapshotter::{Mount, Snapshotter};
use engine::Engine;
use sha2::{Digest, Sha256};
use testkit::{mem_engine, open_mem, read_all, resolve, with_cache, Rng};

const MNT: &str = "/mnt/strata";

fn tar_of(entries: &[(&str, Option<&[u8]>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (p, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        match data {
            Some(d) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(d.len() as u64);
                b.append_data(&mut h, p, *d).unwrap();
            }
            None => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, p, &[][..]).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

fn gzip(d: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(d).unwrap();
    e.finish().unwrap()
}

fn sha(d: &[u8]) -> String {
    let h = Sha256::digest(d);
    format!(
        "sha256:{}",
        h.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

struct Setup {
    e: Arc<Engine>,
    s: Snapshotter,
    d: Differ,
}

fn setup() -> (Arc<engine::MemDevice>, Setup) {
    let (dev, e) = mem_engine(128 << 20, with_cache(1 << 20));
    let s = Snapshotter::new(e.clone(), PathBuf::from(MNT));
    let d = Differ::new(e.clone(), PathBuf::from(MNT));
    (dev, Setup { e, s, d })
}

impl Setup {
    fn prepare(&self, key: &str, parent: &str) -> Vec<Mount> {
        self.s
            .prepare(api::PrepareSnapshotRequest {
                key: key.into(),
                parent: parent.into(),
                ..Default::default()
            })
            .unwrap()
            .mounts
    }

    fn layer(&self, mounts: &[Mount]) -> String {
        match self.d.layer_of(mounts) {
            Target::Ours(l) => l,
            Target::NotOurs(why) => panic!("not ours: {why}"),
        }
    }

    fn commit(&self, key: &str, name: &str) {
        self.s
            .commit(api::CommitSnapshotRequest {
                key: key.into(),
                name: name.into(),
                ..Default::default()
            })
            .unwrap();
    }

    fn read(&self, layer: &str, path: &str) -> Option<Vec<u8>> {
        resolve(&self.e, layer, path)
            .ok()
            .map(|n| read_all(&self.e, n))
    }
}

/// A base snapshot committed as "base": a/, a/x, a/y, d/, d/old, keep.
fn base(t: &Setup) {
    let m = t.prepare("ns/1/extract-base", "");
    let l = t.layer(&m);
    let tarball = tar_of(&[
        ("a", None),
        ("a/x", Some(b"x")),
        ("a/y", Some(b"y")),
        ("d", None),
        ("d/old", Some(b"old")),
        ("keep", Some(b"keep")),
    ]);
    let r = t.d.apply(&l, &gzip(&tarball)[..]).unwrap();
    assert_eq!(r.digest, sha(&tarball));
    assert_eq!(r.size, tarball.len() as u64);
    t.commit("ns/1/extract-base", "ns/2/base");
}

#[test]
fn apply_onto_a_prepared_snapshot() {
    let (_, t) = setup();
    base(&t);
    let m = t.prepare("ns/3/extract-top", "ns/2/base");
    let l = t.layer(&m);
    assert_eq!(t.d.namespace_of(&l).as_deref(), Some("ns"));
    let top = tar_of(&[
        ("a", None),
        ("a/.wh.x", Some(b"")),
        ("d", None),
        ("d/.wh..wh..opq", Some(b"")),
        ("d/new", Some(b"new")),
        ("added", Some(b"added")),
    ]);
    // Padding after the end-of-archive blocks counts in containerd's digest.
    let mut padded = top.clone();
    padded.extend_from_slice(&[0u8; 4096]);
    let r = t.d.apply(&l, &padded[..]).unwrap();
    assert_eq!(r.digest, sha(&padded));
    assert_eq!(t.read(&l, "a/x"), None);
    assert_eq!(t.read(&l, "a/y").as_deref(), Some(&b"y"[..]));
    assert_eq!(t.read(&l, "d/old"), None);
    assert_eq!(t.read(&l, "d/new").as_deref(), Some(&b"new"[..]));
    assert_eq!(t.read(&l, "added").as_deref(), Some(&b"added"[..]));
    let info = t.e.layer_stat(&l).unwrap();
    assert!(!info.labels.contains_key(APPLYING_LABEL));
    assert_eq!(info.state, engine::LayerState::Active);
    // The parent is untouched.
    let pl = info.parent.unwrap();
    assert_eq!(t.read(&pl, "a/x").as_deref(), Some(&b"x"[..]));
    assert_eq!(t.read(&pl, "d/old").as_deref(), Some(&b"old"[..]));
}

#[test]
fn a_failed_apply_leaves_the_snapshot_as_prepared() {
    let (_, t) = setup();
    base(&t);
    let m = t.prepare("ns/3/extract-bad", "ns/2/base");
    let l = t.layer(&m);
    let labels = t.e.layer_stat(&l).unwrap().labels;
    let mut bad = tar_of(&[("first", Some(b"first")), ("keep", Some(b"changed"))]);
    bad.truncate(bad.len() - 1024 - 100);
    assert!(t.d.apply(&l, &bad[..]).is_err());
    let info = t.e.layer_stat(&l).unwrap();
    assert_eq!(info.labels, labels, "same labels, no marker");
    assert_eq!(t.read(&l, "first"), None);
    assert_eq!(t.read(&l, "keep").as_deref(), Some(&b"keep"[..]));
    // containerd still finds it under its key, and may apply again.
    let st =
        t.s.stat(api::StatSnapshotRequest {
            key: "ns/3/extract-bad".into(),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(st.info.unwrap().kind, api::Kind::Active as i32);
    let good = tar_of(&[("first", Some(b"first"))]);
    t.d.apply(&l, &good[..]).unwrap();
    assert_eq!(t.read(&l, "first").as_deref(), Some(&b"first"[..]));

    // Paths escaping the layer are refused the same way.
    let m2 = t.prepare("ns/4/extract-evil", "ns/2/base");
    let l2 = t.layer(&m2);
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(1);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.as_old_mut().name[..4].copy_from_slice(b"../x");
    h.set_cksum();
    b.append(&h, &b"x"[..]).unwrap();
    let e = t.d.apply(&l2, &b.into_inner().unwrap()[..]).unwrap_err();
    assert!(e.to_string().contains("escapes the layer"), "{e}");
}

#[test]
fn an_interrupted_apply_is_undone_at_start() {
    let (dev, t) = setup();
    base(&t);
    let m = t.prepare("ns/3/extract-crash", "ns/2/base");
    let l = t.layer(&m);
    // What a daemon that died mid-apply leaves: the marker and part of the tar.
    let mut labels = t.e.layer_stat(&l).unwrap().labels;
    let clean = labels.clone();
    labels.insert(APPLYING_LABEL.into(), "1".into());
    t.e.layer_set_labels(&l, labels).unwrap();
    control::oci::apply_into(&t.e, &l, &tar_of(&[("half", Some(b"half"))])[..]).unwrap();
    t.e.shutdown().unwrap();
    drop(t);
    let e = open_mem(&dev, with_cache(1 << 20));
    assert_eq!(reset_interrupted_applies(&e), vec![l.clone()]);
    let info = e.layer_stat(&l).unwrap();
    assert_eq!(info.labels, clean);
    assert!(resolve(&e, &l, "half").is_err());
    assert_eq!(read_all(&e, resolve(&e, &l, "keep").unwrap()), b"keep");
    assert!(reset_interrupted_applies(&e).is_empty());
}

#[test]
fn diff_against_a_view_of_the_parent_is_the_export() {
    let (_, t) = setup();
    base(&t);
    let m = t.prepare("ns/3/work", "ns/2/base");
    let l = t.layer(&m);
    t.d.apply(
        &l,
        &tar_of(&[("d", None), ("d/.wh.old", Some(b"")), ("n", Some(b"n"))])[..],
    )
    .unwrap();
    let view =
        t.s.view(api::ViewSnapshotRequest {
            key: "ns/4/view".into(),
            parent: "ns/2/base".into(),
            ..Default::default()
        })
        .unwrap()
        .mounts;
    let (left, right) = match t.d.diff_target(&view, &m) {
        Target::Ours(x) => x,
        Target::NotOurs(w) => panic!("{w}"),
    };
    let mut plain = Vec::new();
    let w = match t
        .d
        .diff(left.as_deref(), &right, false, &mut plain)
        .unwrap()
    {
        Target::Ours(w) => w,
        Target::NotOurs(w) => panic!("{w}"),
    };
    let mut export = Vec::new();
    control::oci::export(&t.e, &l, &mut export).unwrap();
    assert_eq!(plain, export);
    assert_eq!(w.digest, sha(&plain));
    assert_eq!(w.uncompressed, sha(&plain));
    // gzip: the same tar inside.
    let mut gz = Vec::new();
    let wg = match t.d.diff(left.as_deref(), &right, true, &mut gz).unwrap() {
        Target::Ours(w) => w,
        Target::NotOurs(w) => panic!("{w}"),
    };
    assert_eq!(wg.digest, sha(&gz));
    assert_eq!(wg.uncompressed, sha(&plain));
    // No lower: everything in the layer.
    let mut all = Vec::new();
    assert!(matches!(
        t.d.diff(None, &right, false, &mut all).unwrap(),
        Target::Ours(_)
    ));
    assert!(all.len() > plain.len());
    // A lower that is not an ancestor's tree (a sibling with its own changes) is not ours.
    let m2 = t.prepare("ns/5/sibling", "ns/2/base");
    let l2 = t.layer(&m2);
    t.d.apply(&l2, &tar_of(&[("s", Some(b"s"))])[..]).unwrap();
    assert!(matches!(
        t.d.diff(Some(&l2), &right, false, &mut Vec::new()).unwrap(),
        Target::NotOurs(_)
    ));
}

#[test]
fn mounts_that_are_not_strata_layers_are_not_ours() {
    let (_, t) = setup();
    base(&t);
    let m = t.prepare("ns/3/x", "ns/2/base");
    let bind = |src: &str, ty: &str| Mount {
        r#type: ty.into(),
        source: src.into(),
        target: String::new(),
        options: vec![],
    };
    for mounts in [
        vec![],
        vec![m[0].clone(), m[0].clone()],
        vec![bind("overlay", "overlay")],
        vec![bind("/mnt/strata/nope", "bind")],
        vec![bind("/mnt/strata", "bind")],
        vec![bind("/mnt/strata/default/..", "bind")],
        vec![bind("/mnt/other/default", "bind")],
        vec![bind(&m[0].source, "tmpfs")],
    ] {
        assert!(
            matches!(t.d.layer_of(&mounts), Target::NotOurs(_)),
            "{mounts:?}"
        );
    }
    // The same directory with a trailing slash is the same layer.
    assert!(matches!(
        t.d.layer_of(&[bind(&format!("{}/", m[0].source), "bind")]),
        Target::Ours(_)
    ));
    // A view or a committed layer is Strata's, but nothing can be applied onto it.
    let l = t.e.layer_stat("default").unwrap().id;
    t.e.layer_commit(&l).unwrap();
    assert!(t.d.apply(&l, &tar_of(&[])[..]).is_err());
}

#[test]
fn garbage_blobs_are_errors_and_leave_the_snapshot_as_prepared() {
    let (_, t) = setup();
    base(&t);
    let m = t.prepare("ns/3/fuzz", "ns/2/base");
    let l = t.layer(&m);
    let good = tar_of(&[("d", None), ("d/f", Some(b"data")), ("g", Some(b"g"))]);
    let mut rng = Rng::new(14);
    let before: BTreeMap<String, String> = t.e.layer_stat(&l).unwrap().labels;
    for i in 0..300 {
        let mut blob = if i % 2 == 0 {
            good.clone()
        } else {
            gzip(&good)
        };
        for _ in 0..1 + rng.next_u64() % 8 {
            let at = (rng.next_u64() as usize) % blob.len();
            blob[at] = rng.next_u64() as u8;
        }
        if rng.next_u64() % 4 == 0 {
            let n = (rng.next_u64() as usize) % blob.len();
            blob.truncate(n);
        }
        match t.d.apply(&l, &blob[..]) {
            Ok(_) => {
                // Applied: start again from a fresh snapshot.
                let st = t.e.layer_stat(&l).unwrap();
                assert!(!st.labels.contains_key(APPLYING_LABEL));
            }
            Err(_) => {
                let st = t.e.layer_stat(&l).unwrap();
                assert_eq!(st.labels, before, "case {i}");
                assert_eq!(t.read(&l, "g"), None, "case {i}: half-applied");
            }
        }
    }
    assert!(t.e.layer_stat(&l).is_ok());
}

/// A snapshot prepared with containerd's limit labels: an apply past its space or inode limit
/// fails like any other failed apply, and the layer put back keeps its limits; one within
/// them applies.
#[test]
fn an_apply_past_the_snapshots_limits_fails_and_the_limits_stay() {
    let (_, t) = setup();
    base(&t);
    let key = "ns/3/extract-limited";
    let m =
        t.s.prepare(api::PrepareSnapshotRequest {
            key: key.into(),
            parent: "ns/2/base".into(),
            labels: [
                ("containerd.io/snapshot/strata.limit.bytes", "256K"),
                ("containerd.io/snapshot/strata.limit.inodes", "8"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            ..Default::default()
        })
        .unwrap()
        .mounts;
    let l = t.layer(&m);
    let limits = |t: &Setup| t.e.layer_stat(&l).unwrap().limits;
    assert_eq!(limits(&t).bytes, Some(256 << 10));
    assert_eq!(limits(&t).inodes, Some(8));
    let labels = t.e.layer_stat(&l).unwrap().labels;

    // Space: one 1 MiB file.
    let big = vec![0x5au8; 1 << 20];
    let too_big = tar_of(&[("big", Some(&big[..]))]);
    let err =
        t.d.apply(&l, &too_big[..])
            .expect_err("over the space limit");
    assert!(
        format!("{err}").to_lowercase().contains("quota"),
        "the error says why: {err}"
    );
    assert_eq!(
        tonic::Status::from(err).code(),
        tonic::Code::ResourceExhausted
    );
    assert_eq!(t.read(&l, "big"), None);
    assert_eq!(t.e.layer_stat(&l).unwrap().labels, labels, "labels kept");
    assert_eq!(limits(&t).bytes, Some(256 << 10));

    // Inodes: twenty new files.
    let names: Vec<String> = (0..20).map(|i| format!("f{i}")).collect();
    let many: Vec<(&str, Option<&[u8]>)> = names
        .iter()
        .map(|n| (n.as_str(), Some(&b"x"[..])))
        .collect();
    let err =
        t.d.apply(&l, &tar_of(&many)[..])
            .expect_err("over the inode limit");
    assert!(
        format!("{err}").to_lowercase().contains("quota"),
        "the error says why: {err}"
    );
    assert_eq!(
        tonic::Status::from(err).code(),
        tonic::Code::ResourceExhausted
    );
    assert_eq!(t.read(&l, "f0"), None);
    assert_eq!(limits(&t).inodes, Some(8));

    // Within both: applied.
    let small = tar_of(&[("small", Some(&b"small"[..]))]);
    t.d.apply(&l, &small[..]).unwrap();
    assert_eq!(t.read(&l, "small").as_deref(), Some(&b"small"[..]));
    assert_eq!(t.read(&l, "keep").as_deref(), Some(&b"keep"[..]));
}
