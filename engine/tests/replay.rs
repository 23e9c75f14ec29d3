//! Crash replay at every flush point: each workload runs on a device that logs every write
//! and flush; every prefix of the log up to each flush, seeded random subsets of the writes
//! between two flushes, and torn 4 KiB writes are replayed onto the mkfs image, and each image
//! must pass fsck, recover, and hold every fsynced byte, only data its files really had, and a
//! tree that existed (see `testkit/src/replay.rs`).
//!
//! Run with `cargo test --release -p strata-engine --test replay -- --nocapture` to see how
//! many crash images each workload checked.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::sync::Arc;

use engine::{Caller, Device, Engine, LayerState, Node};
use testkit::replay::{
    mkfs_image, opts, replay, replay_log, Counts, Entry, Obj, Plan, Recorder, RecordingDevice,
};
use testkit::{resolve, Rng};

const WHO: Caller = Caller { uid: 0, gid: 0 };
const SIZE: u64 = 32 << 20;

/// An engine on a recording device, and the model of what it holds.
struct W {
    e: Arc<Engine>,
    r: Recorder,
}

impl W {
    fn start() -> (W, Vec<u8>) {
        Self::start_on(RecordingDevice::new)
    }

    /// On a device that reports a boot id: `persist` writes early journal chunks.
    fn start_with_boot() -> (W, Vec<u8>) {
        Self::start_on(|base| RecordingDevice::new(base).with_boot_id([7; 16]))
    }

    fn start_on(make: impl FnOnce(Vec<u8>) -> RecordingDevice) -> (W, Vec<u8>) {
        let base = mkfs_image(SIZE);
        let dev = Arc::new(make(base.clone()));
        let d: Arc<dyn Device> = dev.clone();
        let e = Engine::open(d, opts()).expect("open");
        let r = Recorder::new(dev, &e);
        (W { e, r }, base)
    }

    fn node(&self, layer: &str, path: &str) -> Node {
        resolve(&self.e, layer, path).unwrap_or_else(|e| panic!("{layer}/{path}: {e}"))
    }

    fn parent_and_name<'a>(&self, layer: &str, path: &'a str) -> (Node, &'a str) {
        match path.rsplit_once('/') {
            Some((dir, name)) => (self.node(layer, dir), name),
            None => (self.e.layer_root(layer).expect("root"), path),
        }
    }

    fn mkdir(&mut self, layer: &str, path: &str) {
        self.r.begin();
        let (p, name) = self.parent_and_name(layer, path);
        let st = self
            .e
            .mknod(p, name.as_bytes(), libc::S_IFDIR | 0o755, 0, WHO, None)
            .expect("mkdir");
        self.e.forget(st.ino, 1);
        self.r.state.insert(format!("{layer}/{path}"), Obj::Dir);
        self.r.end();
    }

    /// Create an empty file, then write `data` into it (two states, as the engine has them).
    fn create(&mut self, layer: &str, path: &str, data: &[u8]) {
        self.r.begin();
        let (p, name) = self.parent_and_name(layer, path);
        let st = self
            .e
            .mknod(p, name.as_bytes(), libc::S_IFREG | 0o644, 0, WHO, None)
            .expect("create");
        self.e.forget(st.ino, 1);
        self.r
            .state
            .insert(format!("{layer}/{path}"), Obj::File(Vec::new()));
        self.r.end();
        if !data.is_empty() {
            self.write(layer, path, 0, data);
        }
    }

    fn write(&mut self, layer: &str, path: &str, off: usize, data: &[u8]) {
        self.r.begin();
        let n = self.node(layer, path);
        let w = self.e.write_sync(n, off as u64, data).expect("write");
        assert_eq!(w as usize, data.len());
        let key = format!("{layer}/{path}");
        let Some(Obj::File(v)) = self.r.state.get_mut(&key) else {
            panic!("{key} is not a file in the model")
        };
        if v.len() < off + data.len() {
            v.resize(off + data.len(), 0);
        }
        v[off..off + data.len()].copy_from_slice(data);
        self.r.end();
    }

    fn unlink(&mut self, layer: &str, path: &str) {
        self.r.begin();
        let (p, name) = self.parent_and_name(layer, path);
        self.e.unlink(p, name.as_bytes()).expect("unlink");
        self.r.state.remove(&format!("{layer}/{path}"));
        self.r.end();
    }

    fn rename(&mut self, layer: &str, from: &str, to: &str) {
        self.r.begin();
        let (p1, n1) = self.parent_and_name(layer, from);
        let (p2, n2) = self.parent_and_name(layer, to);
        self.e
            .rename(p1, n1.as_bytes(), p2, n2.as_bytes(), 0)
            .expect("rename");
        let obj = self
            .r
            .state
            .remove(&format!("{layer}/{from}"))
            .expect("renamed file in the model");
        self.r.state.insert(format!("{layer}/{to}"), obj);
        self.r.end();
    }

    fn fsync(&mut self) {
        self.e.fsync_sync().expect("fsync");
        self.r.durable();
    }

    /// What `--persist-replies` does before answering: the records written (an early chunk
    /// on a device with a boot id), not made durable.
    fn persist(&mut self) {
        let (tx, rx) = std::sync::mpsc::channel();
        self.e.persist(Box::new(move |r| {
            let _ = tx.send(r);
        }));
        rx.recv().expect("persist answered").expect("persist");
    }

    fn checkpoint(&mut self) {
        self.r.begin();
        self.e.checkpoint().expect("checkpoint");
        self.r.end();
        self.r.durable();
    }

    fn copy_tree(&mut self, from: &str, to: &str) {
        let pre = format!("{from}/");
        let copies: Vec<(String, Obj)> = self
            .r
            .state
            .range(pre.clone()..)
            .take_while(|(k, _)| k.starts_with(&pre))
            .map(|(k, v)| (format!("{to}/{}", &k[pre.len()..]), v.clone()))
            .collect();
        self.r.state.extend(copies);
    }

    /// Layer operations are durable when they return.
    fn clone_layer(&mut self, parent: &str, id: &str, state: LayerState) {
        self.r.begin();
        self.e
            .layer_clone(parent, id, state, BTreeMap::new())
            .expect("clone");
        self.r
            .state
            .insert(format!("L:{id}"), Obj::Layer(state.as_str()));
        self.copy_tree(parent, id);
        self.r.end();
        self.r.durable();
    }

    fn create_layer(&mut self, id: &str) {
        self.r.begin();
        self.e
            .layer_create(id, BTreeMap::new())
            .expect("layer create");
        self.r.state.insert(format!("L:{id}"), Obj::Layer("active"));
        self.r.end();
        self.r.durable();
    }

    fn commit_layer(&mut self, id: &str) {
        self.r.begin();
        self.e.layer_commit(id).expect("commit");
        self.r
            .state
            .insert(format!("L:{id}"), Obj::Layer("committed"));
        self.r.end();
        self.r.durable();
    }

    fn snapshot_layer(&mut self, id: &str, new_parent: &str) {
        self.r.begin();
        self.e.layer_snapshot(id, new_parent).expect("snapshot");
        self.r
            .state
            .insert(format!("L:{new_parent}"), Obj::Layer("committed"));
        self.copy_tree(id, new_parent);
        self.r.end();
        self.r.durable();
    }

    fn remove_layer(&mut self, id: &str) {
        self.r.begin();
        self.e.layer_remove(id).expect("remove");
        let pre = format!("{id}/");
        self.r
            .state
            .retain(|k, _| k != &format!("L:{id}") && !k.starts_with(&pre));
        self.r.end();
        self.r.durable();
    }

    fn finish(self, name: &str, base: Vec<u8>, plan: Plan) -> Counts {
        self.r.verify_model(&self.e);
        self.e.shutdown().expect("shutdown");
        let c = replay(name, base, &self.r, plan);
        assert!(c.flush_points > 10, "{name}: too few flush points");
        c
    }
}

fn plan(seed: u64) -> Plan {
    Plan {
        subsets: 4,
        torn: 3,
        recovery_every: 8,
        seed,
    }
}

/// The oracle is not vacuous: the same workload replayed from a log whose flushes before
/// journal writes were dropped (what an engine that wrote its journal before its data was
/// durable would produce) must fail the check.
#[test]
fn oracle_catches_a_missing_flush() {
    let (mut w, base) = W::start();
    let mut rng = Rng(6);
    for i in 0..8 {
        w.create("default", &format!("f{i}"), &rng.bytes(5000 + i * 1000));
        w.fsync();
    }
    w.r.verify_model(&w.e);
    w.e.shutdown().expect("shutdown");
    let mut log = w.r.dev.log();
    // Replace (not remove: log positions must stay) every flush that precedes a journal
    // write (blocks 2..258 on this 32 MiB image: a 1 MiB journal ring).
    for i in 0..log.len() - 1 {
        let journal =
            matches!(&log[i + 1], Entry::Write { off, .. } if (2..258).contains(&(off / 4096)));
        if matches!(log[i], Entry::Flush) && journal {
            log[i] = Entry::Write {
                off: 0,
                data: Arc::from(&[][..]),
            };
        }
    }
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        replay_log("doctored log", base, &w.r, &log, plan(16))
    }));
    assert!(r.is_err(), "the oracle accepted a log with missing flushes");
}

/// Changes answered after `persist` (early journal chunks, no flush), with frees among them
/// and an fsync now and then: a power loss (every crash image is replayed in another boot)
/// drops the early chunks after the last flush, never reuses a block an early chunk freed,
/// and never loses an fsynced byte.
#[test]
fn persisted_changes_with_early_chunks() {
    let (mut w, base) = W::start_with_boot();
    let mut rng = Rng(9);
    w.mkdir("default", "d");
    w.fsync();
    for i in 0..60 {
        let path = format!("d/f{}", i % 12);
        if i >= 12 && i % 3 == 0 {
            // A file goes (its blocks freed by an early chunk), a new one takes blocks.
            w.unlink("default", &format!("d/f{}", (i + 5) % 12));
            w.persist();
            w.create("default", &format!("d/f{}", (i + 5) % 12), &rng.bytes(9000));
        } else if i >= 12 {
            w.write("default", &path, (i % 4) * 4096, &rng.bytes(6000));
        } else {
            w.create("default", &path, &rng.bytes(3000 + i * 500));
        }
        w.persist();
        if i % 9 == 8 {
            w.fsync();
        }
    }
    let early =
        w.e.counters()
            .early_commits
            .load(std::sync::atomic::Ordering::Relaxed);
    assert!(early > 20, "only {early} early chunks written");
    let c = w.finish("persisted_changes_with_early_chunks", base, plan(21));
    eprintln!("persisted_changes_with_early_chunks: {c:?}");
}

#[test]
fn small_file_creates_with_fsync() {
    let (mut w, base) = W::start();
    let mut rng = Rng(1);
    w.mkdir("default", "d0");
    w.mkdir("default", "d1");
    w.fsync();
    // Enough commits to wrap the journal ring and trigger automatic checkpoints.
    for i in 0..240 {
        let path = format!("d{}/f{i}", i % 2);
        let len = 1 + rng.below(9000) as usize;
        w.create("default", &path, &rng.bytes(len));
        // Every fourth file is left unsynced until the next one.
        if i % 4 != 3 {
            w.fsync();
        }
        if i % 6 == 5 {
            w.unlink("default", &format!("d{}/f{}", (i - 3) % 2, i - 3));
            w.fsync();
        }
        if i == 18 {
            w.checkpoint();
        }
    }
    let ckpts =
        w.e.counters()
            .checkpoints
            .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        ckpts > 2,
        "the journal never filled up: {ckpts} checkpoints"
    );
    // Many flush points: fewer images around each.
    w.finish(
        "small-file creates",
        base,
        Plan {
            subsets: 2,
            torn: 2,
            recovery_every: 8,
            seed: 11,
        },
    );
}

#[test]
fn rename_over_existing_files() {
    let (mut w, base) = W::start();
    let mut rng = Rng(2);
    for t in 0..3 {
        let len = 100 + rng.below(6000) as usize;
        w.create("default", &format!("target{t}"), &rng.bytes(len));
    }
    w.fsync();
    for i in 0..24 {
        // The atomic-replace idiom: write a temporary file, fsync it, rename it over the
        // target, fsync again (the last step is skipped now and then).
        let len = 1 + rng.below(10000) as usize;
        w.create("default", "tmp", &rng.bytes(len));
        w.fsync();
        w.rename("default", "tmp", &format!("target{}", i % 3));
        if i % 5 != 4 {
            w.fsync();
        }
        if i == 12 {
            w.checkpoint();
        }
    }
    w.fsync();
    w.finish("rename over existing", base, plan(12));
}

#[test]
fn appends_with_fsync() {
    let (mut w, base) = W::start();
    let mut rng = Rng(3);
    let mut sizes = [0usize; 3];
    for f in 0..3 {
        w.create("default", &format!("log{f}"), &[]);
    }
    w.fsync();
    for i in 0..45 {
        let f = (rng.below(3)) as usize;
        let len = 1 + rng.below(7000) as usize;
        let data = rng.bytes(len);
        w.write("default", &format!("log{f}"), sizes[f], &data);
        sizes[f] += len;
        if i % 3 != 2 {
            w.fsync();
        }
        if i == 25 {
            w.checkpoint();
        }
    }
    w.fsync();
    w.finish("appends", base, plan(13));
}

#[test]
fn random_overwrites_with_fsync() {
    let (mut w, base) = W::start();
    let mut rng = Rng(4);
    const LEN: usize = 48 * 1024;
    for f in 0..2 {
        w.create("default", &format!("data{f}"), &rng.bytes(LEN));
    }
    w.fsync();
    for i in 0..36 {
        for _ in 0..1 + rng.below(3) {
            let f = rng.below(2);
            let len = 1 + rng.below(9000) as usize;
            let off = rng.below((LEN - len) as u64) as usize;
            w.write("default", &format!("data{f}"), off, &rng.bytes(len));
        }
        if i % 4 != 3 {
            w.fsync();
        }
        if i == 20 {
            w.checkpoint();
        }
    }
    w.fsync();
    w.finish("random overwrites", base, plan(14));
}

#[test]
fn layer_clone_commit_remove() {
    let (mut w, base) = W::start();
    let mut rng = Rng(5);
    w.mkdir("default", "etc");
    w.create("default", "etc/conf", &rng.bytes(5000));
    w.create("default", "big", &rng.bytes(20000));
    w.fsync();
    w.commit_layer("default");
    w.clone_layer("default", "c1", LayerState::Active);
    w.clone_layer("default", "c2", LayerState::Active);
    w.clone_layer("default", "v1", LayerState::View);
    // Copy-on-write of inherited files in both siblings.
    w.write("c1", "big", 4096, &rng.bytes(6000));
    w.create("c1", "new", &rng.bytes(3000));
    w.fsync();
    w.write("c2", "big", 100, &rng.bytes(300));
    w.unlink("c2", "etc/conf");
    w.fsync();
    w.commit_layer("c1");
    w.clone_layer("c1", "c3", LayerState::Active);
    w.remove_layer("c2");
    // Blocks freed by the removal may now be reused.
    w.create("c3", "after-rm", &rng.bytes(12000));
    w.write("c3", "new", 0, &rng.bytes(3000));
    w.fsync();
    w.snapshot_layer("c3", "s3");
    w.write("c3", "after-rm", 8000, &rng.bytes(5000));
    w.fsync();
    w.checkpoint();
    w.create_layer("b2");
    w.create("b2", "solo", &rng.bytes(9000));
    w.fsync();
    w.remove_layer("v1");
    w.remove_layer("c3");
    w.create("b2", "solo2", &rng.bytes(4000));
    w.remove_layer("b2");
    w.clone_layer("s3", "c4", LayerState::Active);
    w.write("c4", "big", 0, &rng.bytes(9000));
    w.fsync();
    w.remove_layer("c4");
    w.remove_layer("s3");
    w.clone_layer("c1", "c5", LayerState::Active);
    w.create("c5", "x", &rng.bytes(100));
    w.fsync();
    w.finish("layer clone/commit/remove", base, plan(15));
}
