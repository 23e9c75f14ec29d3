//! Concurrency stress: worker threads each writing in their own layer while the main thread
//! clones, snapshots and removes layers and forces checkpoints. Bounded in time (a deadlock
//! fails the test instead of hanging it); afterwards every worker's files match its model,
//! fsck is clean, and a reopen shows the same.

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use engine::mkfs;
use engine::{Caller, Device, Engine, LayerState, MemDevice, Node, Options};

const WHO: Caller = Caller { uid: 0, gid: 0 };

fn rng(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

fn lookup(e: &Engine, dir: Node, name: &str) -> Option<Node> {
    let st = e.lookup(dir, name.as_bytes()).ok()?;
    e.forget(st.ino, 1);
    Some(st.ino)
}

/// One worker: random creates, overwrites, appends, renames and unlinks in its own layer.
fn worker(
    e: Arc<Engine>,
    layer: String,
    seed: u64,
    ops: usize,
    mut model: BTreeMap<String, Vec<u8>>,
) -> BTreeMap<String, Vec<u8>> {
    let mut s = seed;
    let root = e.layer_root(&layer).expect("layer root");
    for i in 0..ops {
        let name = format!("f{}", rng(&mut s) % 24);
        match rng(&mut s) % 10 {
            0..=3 => {
                let len = (rng(&mut s) % 20_000) as usize;
                let off = (rng(&mut s) % 8192) as usize;
                let byte = (i % 251) as u8;
                let node = match lookup(&e, root, &name) {
                    Some(n) => n,
                    None => {
                        let st = e
                            .mknod(root, name.as_bytes(), libc::S_IFREG | 0o644, 0, WHO, None)
                            .expect("create");
                        e.forget(st.ino, 1);
                        model.insert(name.clone(), Vec::new());
                        st.ino
                    }
                };
                let data = vec![byte; len];
                e.write_sync(node, off as u64, &data).expect("write");
                let m = model.entry(name.clone()).or_default();
                if m.len() < off + len {
                    m.resize(off + len, 0);
                }
                m[off..off + len].copy_from_slice(&data);
            }
            4 | 5 => {
                if let Some(node) = lookup(&e, root, &name) {
                    let want = &model[&name];
                    let got = e.read_sync(node, 0, want.len() as u32 + 1).expect("read");
                    assert_eq!(&got, want, "{layer}/{name} at op {i}");
                }
            }
            6 => {
                let to = format!("f{}", rng(&mut s) % 24);
                if model.contains_key(&name) && to != name {
                    e.rename(root, name.as_bytes(), root, to.as_bytes(), 0)
                        .expect("rename");
                    let v = model.remove(&name).expect("model");
                    model.insert(to, v);
                }
            }
            7 => {
                if model.remove(&name).is_some() {
                    e.unlink(root, name.as_bytes()).expect("unlink");
                }
            }
            8 => {
                if let Some(node) = lookup(&e, root, &name) {
                    let size = rng(&mut s) % 30_000;
                    e.setattr(
                        node,
                        engine::SetAttr {
                            size: Some(size),
                            ..Default::default()
                        },
                    )
                    .expect("truncate");
                    model
                        .get_mut(&name)
                        .expect("model")
                        .resize(size as usize, 0);
                }
            }
            _ => e.fsync_sync().expect("fsync"),
        }
    }
    model
}

fn check(e: &Engine, layer: &str, model: &BTreeMap<String, Vec<u8>>) {
    let root = e.layer_root(layer).expect("layer root");
    for (name, want) in model {
        let node = lookup(e, root, name).unwrap_or_else(|| panic!("{layer}/{name} missing"));
        assert_eq!(
            &e.read_sync(node, 0, want.len() as u32 + 1).expect("read"),
            want,
            "{layer}/{name}"
        );
    }
    let names = e.readdir(root, 0, 1000).expect("readdir").len() - 2;
    assert_eq!(names, model.len(), "{layer}: no extra files");
}

/// The device under a stress run: opened for the run, then again for the checks after it.
type Open = Arc<dyn Fn() -> Arc<dyn Device> + Send + Sync>;

#[test]
fn workers_in_many_layers_while_layers_come_and_go() {
    let dev = Arc::new(MemDevice::new(256 << 20));
    mkfs(dev.as_ref(), 0, 0).expect("mkfs");
    let open: Open = Arc::new(move || -> Arc<dyn Device> { dev.clone() });
    stress(open, 8000);
}

/// The same on an O_DIRECT image file, so data I/O goes through the io_uring threads (two
/// rings, completions on both) instead of the synchronous test path.
#[test]
fn workers_in_many_layers_on_io_uring() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("stress-uring");
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let path = dir.join("stress.img");
    let _ = std::fs::remove_file(&path);
    engine::prepare_image(&path, Some(256 << 20)).expect("image");
    mkfs(&engine::FileDevice::open(&path).expect("open"), 0, 0).expect("mkfs");
    let open: Open = Arc::new(move || -> Arc<dyn Device> {
        Arc::new(engine::FileDevice::open(&path).expect("O_DIRECT image"))
    });
    stress(open, 8000);
}

fn stress(open: Open, ops: usize) {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let d = open();
        let e = Engine::open(
            d,
            Options {
                cache_bytes: 2 << 20,
                commit_interval: Duration::from_millis(50),
                ..Default::default()
            },
        )
        .expect("open");
        e.layer_create("img", BTreeMap::new()).expect("create");
        let img = e.layer_root("img").expect("root");
        for k in 0..24 {
            let st = e
                .mknod(
                    img,
                    format!("f{k}").as_bytes(),
                    libc::S_IFREG | 0o644,
                    0,
                    WHO,
                    None,
                )
                .expect("create");
            e.write_sync(st.ino, 0, &vec![k as u8; 5000])
                .expect("write");
            e.forget(st.ino, 1);
        }
        e.layer_commit("img").expect("commit");
        let base: BTreeMap<String, Vec<u8>> = (0..24)
            .map(|k| (format!("f{k}"), vec![k as u8; 5000]))
            .collect();
        let workers: Vec<_> = (0..4)
            .map(|w| {
                let id = format!("w{w}");
                e.layer_clone("img", &id, LayerState::Active, BTreeMap::new())
                    .expect("clone");
                let e = e.clone();
                let base = base.clone();
                // The worker starts from the image's files, which its layer inherits.
                std::thread::spawn(move || {
                    let model = worker(e, id.clone(), 0x9E37_79B9 + w as u64, ops, base);
                    (id, model)
                })
            })
            .collect();
        // Meanwhile: clones, views, snapshots of a worker's layer, removals, checkpoints.
        let mut n = 0;
        while workers.iter().any(|w| !w.is_finished()) {
            let id = format!("tmp{n}");
            e.layer_clone(
                "img",
                &id,
                if n % 2 == 0 {
                    LayerState::Active
                } else {
                    LayerState::View
                },
                BTreeMap::new(),
            )
            .expect("clone during load");
            if n % 5 == 0 {
                e.layer_snapshot(&format!("w{}", n % 4), &format!("snap{n}"))
                    .expect("snapshot during load");
            }
            if n % 3 == 0 {
                e.checkpoint().expect("checkpoint during load");
            }
            e.layer_remove(&id).expect("remove during load");
            n += 1;
        }
        let mut models = Vec::new();
        for w in workers {
            models.push(w.join().expect("worker"));
        }
        for (id, model) in &models {
            check(&e, id, model);
        }
        e.shutdown().expect("shutdown");
        // Release the device (an image file is locked while open).
        drop(e);
        let dev = open();
        let report = engine::fsck::check(dev.as_ref()).expect("fsck");
        assert!(report.is_clean(), "{:?}", report.problems);
        let e = Engine::open(dev, Options::default()).expect("reopen");
        for (id, model) in &models {
            check(&e, id, model);
        }
        e.shutdown().expect("shutdown");
        tx.send(n).expect("report");
    });
    let rounds = rx
        .recv_timeout(Duration::from_secs(300))
        .expect("stress test finished in time (no deadlock)");
    eprintln!("{rounds} rounds of clone/snapshot/checkpoint/remove ran during the load");
    assert!(rounds > 0, "layer operations ran during the load");
}
