//! The snapshotter's request handling against an in-memory engine: containerd's semantics
//! (active vs committed, keys vs names, parent chains, labels, filters) and the gRPC codes
//! containerd maps back to its errors. tests/containerd.rs drives the same code through a
//! real containerd.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use control::snapshotter::api::{self, Kind};
use control::snapshotter::{Snapshotter, NAME_LABEL};
use engine::mkfs;
use engine::{Caller, Device, Engine, LayerState, MemDevice, Options};
use tonic::Code;

fn setup() -> (Arc<Engine>, Snapshotter) {
    let dev = Arc::new(MemDevice::new(64 << 20));
    mkfs(dev.as_ref(), 0, 0).expect("mkfs");
    let d: Arc<dyn Device> = dev;
    let e = Engine::open(
        d,
        Options {
            cache_bytes: 1 << 20,
            ..Default::default()
        },
    )
    .expect("open");
    let s = Snapshotter::new(e.clone(), PathBuf::from("/mnt/strata"));
    (e, s)
}

fn labels(kv: &[(&str, &str)]) -> HashMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn prepare(
    s: &Snapshotter,
    key: &str,
    parent: &str,
) -> Result<Vec<control::snapshotter::Mount>, control::Error> {
    s.prepare(api::PrepareSnapshotRequest {
        key: key.into(),
        parent: parent.into(),
        ..Default::default()
    })
    .map(|r| r.mounts)
}

fn commit(s: &Snapshotter, name: &str, key: &str) -> Result<(), control::Error> {
    s.commit(api::CommitSnapshotRequest {
        name: name.into(),
        key: key.into(),
        ..Default::default()
    })
}

fn stat(s: &Snapshotter, key: &str) -> Result<api::Info, control::Error> {
    s.stat(api::StatSnapshotRequest {
        key: key.into(),
        ..Default::default()
    })
    .map(|r| r.info.expect("info"))
}

fn remove(s: &Snapshotter, key: &str) -> Result<(), control::Error> {
    s.remove(api::RemoveSnapshotRequest {
        key: key.into(),
        ..Default::default()
    })
}

fn list(s: &Snapshotter, filters: &[&str]) -> Result<Vec<String>, control::Error> {
    let r = s.list(api::ListSnapshotsRequest {
        filters: filters.iter().map(|f| f.to_string()).collect(),
        ..Default::default()
    })?;
    Ok(r.into_iter().flat_map(|b| b.info).map(|i| i.name).collect())
}

/// The gRPC code the service answers the error with.
fn code<T: std::fmt::Debug>(r: Result<T, control::Error>) -> Code {
    tonic::Status::from(r.expect_err("must fail")).code()
}

const ROOT: Caller = Caller { uid: 0, gid: 0 };

#[test]
fn lifecycle_with_containerd_semantics() {
    let (e, s) = setup();
    // A base layer: prepare with no parent, write, commit under a name.
    let m = prepare(&s, "default/1/extract-1 sha256:aaa", "").expect("prepare");
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].r#type, "bind");
    assert!(m[0].source.starts_with("/mnt/strata/snap-"), "{:?}", m[0]);
    assert_eq!(m[0].options, vec!["rbind", "rw"]);
    let id = m[0].source.rsplit('/').next().unwrap().to_string();
    let root = e.layer_root(&id).unwrap();
    let f = e
        .mknod(root, b"hello", libc::S_IFREG | 0o644, 0, ROOT, None)
        .expect("create");
    e.write_sync(f.ino, 0, b"layer one").unwrap();

    let info = stat(&s, "default/1/extract-1 sha256:aaa").unwrap();
    assert_eq!(info.kind, Kind::Active as i32);
    assert_eq!(info.parent, "");
    assert!(
        info.labels.is_empty(),
        "hidden labels leak: {:?}",
        info.labels
    );

    s.commit(api::CommitSnapshotRequest {
        name: "default/2/sha256:aaa".into(),
        key: "default/1/extract-1 sha256:aaa".into(),
        labels: labels(&[("containerd.io/snapshot.ref", "sha256:aaa")]),
        ..Default::default()
    })
    .expect("commit");
    // The key is gone; the name is committed, with the commit's labels.
    assert_eq!(
        code(stat(&s, "default/1/extract-1 sha256:aaa")),
        Code::NotFound
    );
    let info = stat(&s, "default/2/sha256:aaa").unwrap();
    assert_eq!(info.kind, Kind::Committed as i32);
    assert_eq!(
        info.labels,
        labels(&[("containerd.io/snapshot.ref", "sha256:aaa")])
    );
    assert_eq!(e.layer_stat(&id).unwrap().state, LayerState::Committed);

    // A container on top: active, parent chain, sees the parent's file; a view is read-only.
    let m = prepare(&s, "default/3/ctr1", "default/2/sha256:aaa").unwrap();
    let cid = m[0].source.rsplit('/').next().unwrap().to_string();
    let croot = e.layer_root(&cid).unwrap();
    let hello = e.lookup(croot, b"hello").expect("inherited file");
    assert_eq!(e.read_sync(hello.ino, 0, 100).unwrap(), b"layer one");
    let info = stat(&s, "default/3/ctr1").unwrap();
    assert_eq!(info.parent, "default/2/sha256:aaa");
    let v = s
        .view(api::ViewSnapshotRequest {
            key: "default/4/view".into(),
            parent: "default/2/sha256:aaa".into(),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(v.mounts[0].options, vec!["rbind", "ro"]);
    assert_eq!(stat(&s, "default/4/view").unwrap().kind, Kind::View as i32);
    let m2 = s
        .mounts_of(api::MountsRequest {
            key: "default/3/ctr1".into(),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(m2.mounts, m);

    // Usage: what the active layer changed (one new 4 KiB block, two changed inodes: the
    // root directory and the new file).
    let before = s
        .usage(api::UsageRequest {
            key: "default/3/ctr1".into(),
            ..Default::default()
        })
        .unwrap();
    assert_eq!((before.size, before.inodes), (0, 0));
    let g = e
        .mknod(croot, b"new", libc::S_IFREG | 0o644, 0, ROOT, None)
        .unwrap();
    e.write_sync(g.ino, 0, &[7u8; 4096]).unwrap();
    let after = s
        .usage(api::UsageRequest {
            key: "default/3/ctr1".into(),
            ..Default::default()
        })
        .unwrap();
    assert_eq!((after.size, after.inodes), (4096, 2));

    // The container label of the statistics comes from the key.
    let li = e.layer_stat(&cid).unwrap();
    assert_eq!(
        li.labels.get(NAME_LABEL).map(String::as_str),
        Some("default/3/ctr1")
    );
    assert_eq!(
        control::stats::container_of(li.state, &li.labels).as_deref(),
        Some("ctr1")
    );

    // List and filters.
    assert_eq!(
        list(&s, &[]).unwrap(),
        vec!["default/2/sha256:aaa", "default/3/ctr1", "default/4/view"]
    );
    assert_eq!(
        list(&s, &["kind==committed"]).unwrap(),
        vec!["default/2/sha256:aaa"]
    );
    assert_eq!(
        list(&s, &["kind==view", "kind==active"]).unwrap(),
        vec!["default/3/ctr1", "default/4/view"]
    );
    assert_eq!(
        list(&s, &[r#"labels."containerd.io/snapshot.ref"==sha256:aaa"#]).unwrap(),
        vec!["default/2/sha256:aaa"]
    );
    assert_eq!(
        list(&s, &["parent==default/2/sha256:aaa,name~=ctr"]).unwrap(),
        vec!["default/3/ctr1"]
    );
    assert_eq!(code(list(&s, &["kind=="])), Code::InvalidArgument);

    // Layers made outside containerd are not listed (containerd's GC would delete them).
    e.layer_create("mine", Default::default()).unwrap();
    assert_eq!(list(&s, &[]).unwrap().len(), 3);
    assert_eq!(code(stat(&s, "mine")), Code::NotFound);

    // Remove: a parent with children is refused; leaves go; then the parent.
    assert_eq!(
        code(remove(&s, "default/2/sha256:aaa")),
        Code::FailedPrecondition
    );
    remove(&s, "default/3/ctr1").unwrap();
    remove(&s, "default/4/view").unwrap();
    remove(&s, "default/2/sha256:aaa").unwrap();
    assert_eq!(list(&s, &[]).unwrap(), Vec::<String>::new());
    assert!(e.layer_stat(&cid).is_err());
    assert!(e.layer_stat("mine").is_ok());
}

#[test]
fn error_codes() {
    let (_e, s) = setup();
    prepare(&s, "a", "").unwrap();
    assert_eq!(code(prepare(&s, "a", "")), Code::AlreadyExists);
    assert_eq!(code(prepare(&s, "", "")), Code::InvalidArgument);
    assert_eq!(code(prepare(&s, "b", "missing")), Code::NotFound);
    // An active parent is not a parent.
    assert_eq!(code(prepare(&s, "b", "a")), Code::InvalidArgument);
    assert_eq!(code(commit(&s, "n", "missing")), Code::NotFound);
    assert_eq!(code(commit(&s, "", "a")), Code::InvalidArgument);
    commit(&s, "n", "a").unwrap();
    // Committing a committed snapshot, or onto an existing name.
    assert_eq!(code(commit(&s, "n2", "n")), Code::FailedPrecondition);
    prepare(&s, "c", "n").unwrap();
    assert_eq!(code(commit(&s, "n", "c")), Code::AlreadyExists);
    assert_eq!(code(prepare(&s, "n", "")), Code::AlreadyExists);
    // A view cannot be committed.
    s.view(api::ViewSnapshotRequest {
        key: "v".into(),
        parent: "n".into(),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(code(commit(&s, "n3", "v")), Code::FailedPrecondition);
    assert_eq!(
        code(s.mounts_of(api::MountsRequest {
            key: "n".into(),
            ..Default::default()
        })),
        Code::FailedPrecondition
    );
    assert_eq!(code(remove(&s, "missing")), Code::NotFound);
    assert_eq!(code(stat(&s, "missing")), Code::NotFound);
    assert_eq!(
        code(s.usage(api::UsageRequest {
            key: "missing".into(),
            ..Default::default()
        })),
        Code::NotFound
    );
    // Labels: containerd's 4096-byte limit, and Strata's own keys are reserved.
    let big = "x".repeat(4097);
    assert_eq!(
        code(s.prepare(api::PrepareSnapshotRequest {
            key: "d".into(),
            labels: labels(&[("k", &big)]),
            ..Default::default()
        })),
        Code::InvalidArgument
    );
    assert_eq!(
        code(s.prepare(api::PrepareSnapshotRequest {
            key: "d".into(),
            labels: labels(&[(NAME_LABEL, "evil")]),
            ..Default::default()
        })),
        Code::InvalidArgument
    );
    assert_eq!(
        code(s.prepare(api::PrepareSnapshotRequest {
            key: "d".into(),
            labels: labels(&[(control::oci::IMPORTING_LABEL, "1")]),
            ..Default::default()
        })),
        Code::InvalidArgument
    );
    // A key of 4,000 bytes with slashes is fine (it is a label, not a layer id); one over
    // 4096 bytes is refused.
    let long = "k/".repeat(2000);
    prepare(&s, &long, "n").unwrap();
    assert_eq!(stat(&s, &long).unwrap().name, long);
    assert_eq!(
        code(prepare(&s, &"k".repeat(4097), "n")),
        Code::InvalidArgument
    );
    assert_eq!(
        code(commit(&s, &"k".repeat(4097), "c")),
        Code::InvalidArgument
    );
    // Nothing above left a half-made snapshot.
    assert_eq!(list(&s, &[]).unwrap().len(), 4);
}

#[test]
fn update_labels() {
    let (_e, s) = setup();
    s.prepare(api::PrepareSnapshotRequest {
        key: "a".into(),
        labels: labels(&[("one", "1"), ("two", "2")]),
        ..Default::default()
    })
    .unwrap();
    let t0 = stat(&s, "a").unwrap().updated_at.unwrap();
    let upd = |paths: &[&str], kv: &[(&str, &str)]| {
        s.update(api::UpdateSnapshotRequest {
            info: Some(api::Info {
                name: "a".into(),
                labels: labels(kv),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: paths.iter().map(|p| p.to_string()).collect(),
            }),
            ..Default::default()
        })
        .map(|r| r.info.unwrap())
    };
    // One label set, one removed, the rest kept.
    let i = upd(&["labels.two", "labels.three"], &[("three", "3")]).unwrap();
    assert_eq!(i.labels, labels(&[("one", "1"), ("three", "3")]));
    let t1 = i.updated_at.unwrap();
    assert!((t1.seconds, t1.nanos) >= (t0.seconds, t0.nanos));
    // "labels" replaces all; so does an empty mask.
    let i = upd(&["labels"], &[("x", "y")]).unwrap();
    assert_eq!(i.labels, labels(&[("x", "y")]));
    let i = upd(&[], &[("z", "1")]).unwrap();
    assert_eq!(i.labels, labels(&[("z", "1")]));
    // Immutable fields.
    for p in ["name", "parent", "kind", "created_at"] {
        assert_eq!(code(upd(&[p], &[])), Code::InvalidArgument, "{p}");
    }
    assert_eq!(stat(&s, "a").unwrap().labels, labels(&[("z", "1")]));
    assert_eq!(
        code(s.update(api::UpdateSnapshotRequest::default())),
        Code::InvalidArgument
    );
}

#[test]
fn survives_reopen() {
    let dev = Arc::new(MemDevice::new(64 << 20));
    mkfs(dev.as_ref(), 0, 0).expect("mkfs");
    {
        let d: Arc<dyn Device> = dev.clone();
        let e = Engine::open(d, Options::default()).unwrap();
        let s = Snapshotter::new(e.clone(), PathBuf::from("/m"));
        prepare(&s, "k1", "").unwrap();
        commit(&s, "base", "k1").unwrap();
        prepare(&s, "ctr", "base").unwrap();
        s.view(api::ViewSnapshotRequest {
            key: "empty-view".into(),
            ..Default::default()
        })
        .unwrap();
        e.shutdown().unwrap();
    }
    let d: Arc<dyn Device> = dev;
    let e = Engine::open(d, Options::default()).unwrap();
    let s = Snapshotter::new(e, PathBuf::from("/m"));
    assert_eq!(list(&s, &[]).unwrap(), vec!["base", "ctr", "empty-view"]);
    assert_eq!(stat(&s, "ctr").unwrap().parent, "base");
    assert_eq!(stat(&s, "empty-view").unwrap().kind, Kind::View as i32);
    // New ids continue after the highest in use.
    let m = prepare(&s, "k2", "base").unwrap();
    assert!(m[0].source.ends_with("/snap-4"), "{:?}", m[0].source);
}

/// The encoded-request entry point (what the gRPC service and the fuzz target use): requests
/// round-trip through protobuf, undecodable bytes are InvalidArgument, unknown methods
/// Unimplemented, and random bytes for every method never panic or corrupt the engine.
#[test]
fn encoded_requests() {
    use prost::Message;
    let (e, s) = setup();
    let req = api::PrepareSnapshotRequest {
        key: "k".into(),
        ..Default::default()
    };
    let out = s.call_encoded("Prepare", &req.encode_to_vec()).unwrap();
    let resp = api::PrepareSnapshotResponse::decode(&out[0][..]).unwrap();
    assert_eq!(resp.mounts.len(), 1);
    assert_eq!(
        s.call_encoded("Prepare", &[0xff, 0xff, 0xff])
            .unwrap_err()
            .code(),
        Code::InvalidArgument
    );
    assert_eq!(
        s.call_encoded("Nope", &[]).unwrap_err().code(),
        Code::Unimplemented
    );
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..20_000 {
        let len = i % 64;
        let body: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let m = control::snapshotter::METHODS[i % control::snapshotter::METHODS.len()];
        let _ = s.call_encoded(m, &body);
    }
    // Whatever was made is consistent: every listed snapshot stats, the engine checks clean.
    let names = list(&s, &[]).unwrap();
    for n in &names {
        stat(&s, n).unwrap();
    }
    e.shutdown().unwrap();
}
