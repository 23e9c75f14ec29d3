//! Crash replay of OCI layer imports: the engine runs on a device that logs every write and
//! flush while two layer tars are imported (a base and a child with whiteouts, an opaque
//! directory, changed files and hard links) and the result is cloned, written and removed.
//! Every flush point, random subsets of unflushed writes and torn writes are replayed (see
//! `testkit/src/replay.rs`): fsck is clean, recovery works, every other
//! layer is exactly as it was, and once an import has returned its layer is there, committed,
//! byte for byte. A crash during an import may leave that layer absent or partly imported
//! (active).

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::sync::Arc;

use control::oci::{self, Compression};
use engine::{Caller, Device, Engine, LayerState};
use testkit::pattern;
use testkit::replay::{
    mkfs_image, observe, opts, replay, Obj, Plan, Recorder, RecordingDevice, State,
};

fn tar_of(entries: &[(&str, tar::EntryType, Vec<u8>, Option<&str>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, kind, data, link) in entries {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(*kind);
        h.set_mode(if *kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(data.len() as u64);
        if let Some(l) = link {
            h.set_link_name(l).expect("link");
        }
        b.append_data(&mut h, path, &data[..]).expect("append");
    }
    b.into_inner().expect("tar")
}

/// Import as one step whose inside the workload cannot see; durable on return.
fn import(e: &Engine, r: &mut Recorder, id: &str, parent: Option<&str>, tar: &[u8]) {
    r.begin();
    r.unknown(id);
    oci::import(e, id, parent, tar, Compression::None).expect("import");
    let after = observe(e);
    // Nothing else changed; the new layer is whatever the engine now shows (checked against
    // the tar by tests/oci.rs), committed.
    let (key, pre) = (format!("L:{id}"), format!("{id}/"));
    let others = |s: &State| -> State {
        s.iter()
            .filter(|(k, _)| **k != key && !k.starts_with(&pre))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    assert_eq!(
        others(&after),
        others(&r.state),
        "import changed other layers"
    );
    assert_eq!(after.get(&key), Some(&Obj::Layer("committed")));
    r.state = after;
    r.end();
    r.durable();
}

#[test]
fn oci_import_crash_replay() {
    use tar::EntryType as T;
    let base = mkfs_image(32 << 20);
    let dev = Arc::new(RecordingDevice::new(base.clone()));
    let d: Arc<dyn Device> = dev.clone();
    let e = Engine::open(d, opts()).expect("open");
    let mut r = Recorder::new(dev, &e);

    let l1 = tar_of(&[
        ("etc/", T::Directory, vec![], None),
        ("etc/passwd", T::Regular, pattern(1, 700), None),
        ("etc/hosts", T::Regular, pattern(2, 300), None),
        ("usr/", T::Directory, vec![], None),
        ("usr/lib/", T::Directory, vec![], None),
        ("usr/lib/big.so", T::Regular, pattern(3, 150_000), None),
        ("usr/lib/small.so", T::Regular, pattern(4, 5000), None),
        ("usr/lib/link.so", T::Symlink, vec![], Some("small.so")),
        ("opt/", T::Directory, vec![], None),
        ("opt/a", T::Regular, pattern(5, 9000), None),
    ]);
    let l2 = tar_of(&[
        ("etc/", T::Directory, vec![], None),
        ("etc/.wh.hosts", T::Regular, vec![], None),
        ("etc/passwd", T::Regular, pattern(6, 900), None),
        ("etc/passwd-hard", T::Link, vec![], Some("etc/passwd")),
        ("opt/", T::Directory, vec![], None),
        ("opt/.wh..wh..opq", T::Regular, vec![], None),
        ("opt/b", T::Regular, pattern(7, 20_000), None),
        ("usr/lib/big.so", T::Regular, pattern(8, 60_000), None),
    ]);
    import(&e, &mut r, "img1", None, &l1);
    import(&e, &mut r, "img2", Some("img1"), &l2);

    // A container on top: clone, write, remove; then the images go.
    r.begin();
    e.layer_clone("img2", "ctr", LayerState::Active, BTreeMap::new())
        .expect("clone");
    r.state = observe(&e);
    r.end();
    r.durable();
    r.begin();
    let root = e.layer_root("ctr").expect("root");
    let f = e
        .mknod(
            root,
            b"log",
            libc::S_IFREG | 0o644,
            0,
            Caller::default(),
            None,
        )
        .expect("create");
    e.forget(f.ino, 1);
    e.write_sync(f.ino, 0, &pattern(9, 12_000)).expect("write");
    r.state = observe(&e);
    r.end();
    e.fsync_sync().expect("fsync");
    r.durable();
    for id in ["ctr", "img2"] {
        r.begin();
        e.layer_remove(id).expect("remove");
        r.state = observe(&e);
        r.end();
        r.durable();
    }
    import(&e, &mut r, "img3", Some("img1"), &l2);

    r.verify_model(&e);
    e.shutdown().expect("shutdown");
    let c = replay(
        "OCI layer import",
        base,
        &r,
        Plan {
            subsets: 4,
            torn: 3,
            recovery_every: 8,
            seed: 21,
        },
    );
    assert!(c.flush_points > 10);
}
