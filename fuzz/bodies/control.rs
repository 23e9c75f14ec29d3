//! Fuzz target bodies for the control plane, shared by the cargo-fuzz targets
//! (`fuzz/fuzz_targets/oci_import.rs`, `admin_request.rs`, `snapshotter.rs`) and the stable-toolchain corpus
//! driver (`control/tests/fuzz_corpus.rs`), both of which include this file with `#[path]`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use control::oci::{self, Compression};
use engine::{Caller, Device, Engine, MemDevice, Node, Options};

/// Everything observable in every layer: (path, mode, size or target, contents).
fn observe(e: &Engine) -> BTreeMap<String, (u32, Vec<u8>)> {
    fn walk(e: &Engine, dir: Node, prefix: &str, out: &mut BTreeMap<String, (u32, Vec<u8>)>) {
        for d in e.readdir(dir, 0, usize::MAX).expect("readdir") {
            if &*d.name == b"." || &*d.name == b".." {
                continue;
            }
            let key = format!("{prefix}/{}", String::from_utf8_lossy(&d.name));
            let st = e.getattr(d.ino).expect("getattr");
            let kind = st.attr.mode & libc::S_IFMT;
            let data = match kind {
                libc::S_IFREG => e.read_sync(d.ino, 0, st.attr.size as u32).expect("read"),
                libc::S_IFLNK => e.readlink(d.ino).expect("readlink").to_vec(),
                _ => Vec::new(),
            };
            out.insert(key.clone(), (st.attr.mode, data));
            if kind == libc::S_IFDIR {
                walk(e, d.ino, &key, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    for l in e.layer_list() {
        out.insert(format!("L:{}", l.id), (l.state.code() as u32, Vec::new()));
        let root = e.layer_root(&l.id).expect("root");
        walk(e, root, &l.id, &mut out);
    }
    out
}

struct ImportCtx {
    dev: Arc<MemDevice>,
    engine: Arc<Engine>,
    before: BTreeMap<String, (u32, Vec<u8>)>,
    n: AtomicU64,
}

/// One engine for the whole run: a committed parent `default` with a directory, files and an
/// absolute symlink to `/etc` (a tar writing through it would escape the layer).
fn import_ctx() -> &'static ImportCtx {
    static C: OnceLock<ImportCtx> = OnceLock::new();
    C.get_or_init(|| {
        let dev = Arc::new(MemDevice::new(128 << 20));
        engine::mkfs(dev.as_ref(), 0, 0).expect("mkfs");
        let d: Arc<dyn Device> = dev.clone();
        let engine = Engine::open(
            d,
            Options {
                cache_bytes: 1 << 20,
                stats: false,
                ..Default::default()
            },
        )
        .expect("open");
        let who = Caller { uid: 0, gid: 0 };
        let root = engine.layer_root("default").expect("root");
        let etc = engine
            .mknod(root, b"etc", libc::S_IFDIR | 0o755, 0, who, None)
            .expect("mkdir");
        let f = engine
            .mknod(etc.ino, b"passwd", libc::S_IFREG | 0o644, 0, who, None)
            .expect("create");
        engine
            .write_sync(f.ino, 0, b"root:x:0:0::/root:/bin/sh\n")
            .expect("write");
        engine
            .mknod(root, b"abs", libc::S_IFLNK | 0o777, 0, who, Some(b"/etc"))
            .expect("symlink");
        engine
            .mknod(
                root,
                b"up",
                libc::S_IFLNK | 0o777,
                0,
                who,
                Some(b"../../.."),
            )
            .expect("symlink");
        engine.layer_commit("default").expect("commit");
        let before = observe(&engine);
        ImportCtx {
            dev,
            engine,
            before,
            n: AtomicU64::new(0),
        }
    })
}

/// An OCI layer tar (plain, gzip or zstd: recognised by magic) imported as a clone of a
/// committed layer: Ok or Err, never a panic; a failed import leaves no layer; nothing outside
/// the new layer changes; the file system stays consistent.
pub fn oci_import(data: &[u8]) {
    let c = import_ctx();
    let n = c.n.fetch_add(1, Ordering::SeqCst);
    let id = format!("fz{n}");
    match oci::import(&c.engine, &id, Some("default"), data, Compression::Auto) {
        Ok(_) => {
            let st = c.engine.layer_stat(&id).expect("the imported layer exists");
            assert_eq!(st.state, engine::LayerState::Committed);
            assert_eq!(st.parent.as_deref(), Some("default"));
            c.engine
                .layer_remove(&id)
                .expect("remove the imported layer");
        }
        Err(_) => assert!(
            c.engine.layer_stat(&id).is_err(),
            "a failed import left layer {id}"
        ),
    }
    assert!(
        observe(&c.engine) == c.before,
        "an import changed something outside its layer"
    );
    if n % 64 == 0 {
        c.engine.fsync_sync().expect("fsync");
        let r = engine::fsck::check(c.dev.as_ref()).expect("fsck");
        assert!(r.is_clean(), "fsck after imports: {:?}", r.problems);
    }
}

struct AdminCtx {
    socket: PathBuf,
    _handle: control::admin::AdminHandle,
}

fn admin_ctx() -> &'static AdminCtx {
    static C: OnceLock<AdminCtx> = OnceLock::new();
    C.get_or_init(|| {
        let dev = Arc::new(MemDevice::new(64 << 20));
        engine::mkfs(dev.as_ref(), 0, 0).expect("mkfs");
        let d: Arc<dyn Device> = dev;
        let engine = Engine::open(
            d,
            Options {
                cache_bytes: 1 << 20,
                stats: false,
                ..Default::default()
            },
        )
        .expect("open");
        let dir = std::env::temp_dir().join(format!("strata-fuzz-admin-{}", std::process::id()));
        let socket = dir.join("admin.sock");
        let handle =
            control::admin::serve_admin(&socket, engine, dir.join("mnt")).expect("admin socket");
        AdminCtx {
            socket,
            _handle: handle,
        }
    })
}

/// Naive percent-decoding and lower-casing, for the filter below.
fn loosely_decoded(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut i = 0;
    while i < data.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if data[i] == b'%' {
            if let (Some(h), Some(l)) = (
                data.get(i + 1).and_then(|&c| hex(c)),
                data.get(i + 2).and_then(|&c| hex(c)),
            ) {
                out.push(((h * 16 + l) as u8).to_ascii_lowercase());
                i += 3;
                continue;
            }
        }
        out.push(data[i].to_ascii_lowercase());
        i += 1;
    }
    out
}

/// Raw bytes sent to the admin API as one request on a fresh connection: the server answers
/// valid HTTP (or closes) and keeps serving. Also the API's public pure helpers.
///
/// Import and export requests name paths on the host that the daemon opens or writes (as
/// root): inputs that could reach them (anything containing "port") are skipped.
pub fn admin_request(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = control::admin::percent_decode(s);
        let enc = control::admin::percent_encode(s);
        assert_eq!(
            control::admin::percent_decode(&enc).as_deref(),
            Ok(s),
            "percent-encoding round trip"
        );
        let _ = control::admin::unescape_mountinfo(s);
        let _ = control::admin::mount_users(s, Path::new("/mnt/strata"), "x");
    }
    let _ = control::admin::parse_response(data);
    if loosely_decoded(data).windows(4).any(|w| w == b"port") {
        return;
    }
    let c = admin_ctx();
    let mut s = UnixStream::connect(&c.socket).expect("the admin server accepts");
    let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(20)));
    let _ = s.write_all(data);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut buf = Vec::new();
    let _ = s.take(4 << 20).read_to_end(&mut buf);
    if !buf.is_empty() {
        assert!(
            control::admin::parse_response(&buf).is_some(),
            "the server's answer is not valid HTTP: {:?}",
            String::from_utf8_lossy(&buf[..buf.len().min(200)])
        );
    }
}

/// containerd's snapshotter requests, through the snapshotter's request handling
/// (`Snapshotter::call_encoded`: what the gRPC service runs, without the transport). The input
/// is a sequence of calls `[method][length][protobuf message]`, applied to a fresh engine.
/// Every failure must carry one of the gRPC codes containerd maps back to its errors; after the
/// sequence every listed snapshot can be stat'ed, the snapshotter lists exactly the layers that
/// carry its name label, and fsck is clean.
pub fn snapshotter(data: &[u8]) {
    use control::snapshotter::{api, Snapshotter, METHODS, NAME_LABEL};
    let dev = Arc::new(MemDevice::new(engine::format::MIN_DEVICE_SIZE));
    engine::mkfs(dev.as_ref(), 0, 0).expect("mkfs");
    let d: Arc<dyn Device> = dev.clone();
    let e = Engine::open(
        d,
        Options {
            cache_bytes: 1 << 20,
            ..Default::default()
        },
    )
    .expect("open");
    let s = Snapshotter::new(e.clone(), PathBuf::from("/nonexistent-strata-mount"));
    let mut i = 0;
    while i + 2 <= data.len() {
        let method = METHODS[data[i] as usize % METHODS.len()];
        let len = data[i + 1] as usize;
        i += 2;
        let body = &data[i..(i + len).min(data.len())];
        i += len;
        if let Err(st) = s.call_encoded(method, body) {
            // InvalidArgument, NotFound, AlreadyExists, ResourceExhausted (a full device),
            // FailedPrecondition.
            let code = st.code() as i32;
            assert!(
                [3, 5, 6, 8, 9].contains(&code),
                "{method}: unexpected gRPC code {:?}: {}",
                st.code(),
                st.message()
            );
        }
    }
    let listed: Vec<String> = s
        .list(api::ListSnapshotsRequest::default())
        .expect("list")
        .into_iter()
        .flat_map(|b| b.info)
        .map(|i| i.name)
        .collect();
    for n in &listed {
        s.stat(api::StatSnapshotRequest {
            key: n.clone(),
            ..Default::default()
        })
        .expect("a listed snapshot stats");
    }
    let labeled = e
        .layer_list()
        .iter()
        .filter(|l| l.labels.contains_key(NAME_LABEL))
        .count();
    assert_eq!(
        labeled,
        listed.len(),
        "snapshot layers and the list disagree"
    );
    e.shutdown().expect("shutdown");
    let report = engine::fsck::check(dev.as_ref()).expect("fsck");
    assert!(report.is_clean(), "fsck: {:?}", report.problems);
}
