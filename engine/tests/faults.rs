//! Fault injection: a device that fails reads, writes or flushes on demand. The engine returns
//! the error to the caller, latches read-only after a failed write or flush (fsync never
//! reports success after data was lost), never panics, and recovers to a consistent state
//! when opened again on a healthy device.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use engine::fs::mkfs;
use engine::{Caller, Device, Engine, MemDevice, Node, Options};

#[derive(Default)]
struct Faults {
    reads: AtomicBool,
    writes: AtomicBool,
    flushes: AtomicBool,
}

/// A MemDevice with switches that make its operations fail with EIO.
struct FaultyDevice {
    inner: MemDevice,
    faults: Arc<Faults>,
}

impl Device for FaultyDevice {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if self.faults.reads.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.faults.writes.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        self.inner.write_at(buf, offset)
    }
    fn flush(&self) -> io::Result<()> {
        if self.faults.flushes.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        self.inner.flush()
    }
}

const WHO: Caller = Caller { uid: 0, gid: 0 };

fn setup() -> (Arc<FaultyDevice>, Arc<Faults>, Arc<Engine>, Node) {
    let faults = Arc::new(Faults::default());
    let dev = Arc::new(FaultyDevice {
        inner: MemDevice::new(64 << 20),
        faults: faults.clone(),
    });
    mkfs(dev.as_ref(), 0, 0).expect("mkfs");
    let d: Arc<dyn Device> = dev.clone();
    let e = Engine::open(
        d,
        Options {
            cache_bytes: 0,
            ..Default::default()
        },
    )
    .expect("open");
    let root = e.layer_root("default").expect("root");
    (dev, faults, e, root)
}

fn file(e: &Engine, root: Node, name: &str, data: &[u8]) -> Node {
    let st = e
        .mknod(root, name.as_bytes(), libc::S_IFREG | 0o644, 0, WHO, None)
        .expect("create");
    e.write_sync(st.ino, 0, data).expect("write");
    st.ino
}

/// Open the same bytes again on a healthy device: recovery works, fsck is clean, and `kept`
/// files hold their contents.
fn recover(dev: &FaultyDevice, kept: &[(&str, &[u8])]) {
    let healthy = Arc::new(MemDevice::from_bytes(dev.inner.snapshot()));
    let report = engine::fsck::check(healthy.as_ref()).expect("fsck");
    assert!(report.is_clean(), "{:?}", report.problems);
    let d: Arc<dyn Device> = healthy;
    let e = Engine::open(d, Options::default()).expect("recovery after faults");
    let root = e.layer_root("default").expect("root");
    for (name, data) in kept {
        let st = e
            .lookup(root, name.as_bytes())
            .unwrap_or_else(|err| panic!("{name} lost: {err}"));
        assert_eq!(
            &e.read_sync(st.ino, 0, 1 << 20).expect("read"),
            data,
            "{name}"
        );
    }
    e.shutdown().expect("shutdown");
}

#[test]
fn failed_write_latches_read_only_and_fsync_reports_it() {
    let (dev, faults, e, root) = setup();
    file(&e, root, "safe", b"fsynced before the fault");
    e.fsync_sync().expect("fsync");
    let f = e
        .mknod(root, b"victim", libc::S_IFREG | 0o644, 0, WHO, None)
        .expect("create");
    faults.writes.store(true, Ordering::SeqCst);
    let err = e
        .write_sync(f.ino, 0, &[7u8; 8192])
        .expect_err("write on a failing device");
    assert_eq!(err.errno(), libc::EIO, "{err}");
    assert!(e.is_poisoned());
    // Later changes are refused, and fsync does not pretend.
    let err = e
        .mknod(root, b"after", libc::S_IFREG | 0o644, 0, WHO, None)
        .expect_err("read-only now");
    assert_eq!(err.errno(), libc::EROFS);
    assert!(
        e.fsync_sync().is_err(),
        "fsync after a lost write must fail"
    );
    faults.writes.store(false, Ordering::SeqCst);
    assert!(e.fsync_sync().is_err(), "the poisoned state is latched");
    // Reads still work.
    let safe = e.lookup(root, b"safe").expect("lookup");
    assert_eq!(
        e.read_sync(safe.ino, 0, 100).expect("read"),
        b"fsynced before the fault"
    );
    assert!(
        e.shutdown().is_err(),
        "shutdown reports the earlier failure"
    );
    recover(&dev, &[("safe", b"fsynced before the fault")]);
}

#[test]
fn failed_flush_fails_fsync_and_latches() {
    let (dev, faults, e, root) = setup();
    file(&e, root, "safe", b"kept");
    e.fsync_sync().expect("fsync");
    file(&e, root, "unsure", b"not promised");
    faults.flushes.store(true, Ordering::SeqCst);
    let err = e.fsync_sync().expect_err("fsync with a failing flush");
    assert!(
        matches!(err, engine::Error::Poisoned | engine::Error::Io { .. }),
        "{err}"
    );
    faults.flushes.store(false, Ordering::SeqCst);
    assert!(
        e.fsync_sync().is_err(),
        "fsync keeps failing after a lost flush"
    );
    let err = e
        .mknod(root, b"x", libc::S_IFREG | 0o644, 0, WHO, None)
        .expect_err("read-only");
    assert_eq!(err.errno(), libc::EROFS);
    let _ = e.shutdown();
    recover(&dev, &[("safe", b"kept")]);
}

#[test]
fn failed_read_is_an_error_but_not_a_reason_to_stop() {
    let (dev, faults, e, root) = setup();
    let f = file(&e, root, "data", &[3u8; 10000]);
    e.fsync_sync().expect("fsync");
    faults.reads.store(true, Ordering::SeqCst);
    let err = e
        .read_sync(f, 0, 10000)
        .expect_err("read on a failing device");
    assert_eq!(err.errno(), libc::EIO);
    assert!(
        !e.is_poisoned(),
        "a read error does not make the file system read-only"
    );
    faults.reads.store(false, Ordering::SeqCst);
    assert_eq!(
        e.read_sync(f, 0, 10000).expect("read again"),
        vec![3u8; 10000]
    );
    file(&e, root, "more", b"still writable");
    e.fsync_sync().expect("fsync");
    e.shutdown().expect("shutdown");
    recover(&dev, &[("more", b"still writable")]);
}

#[test]
fn open_on_a_failing_device_is_an_error_not_a_panic() {
    let faults = Arc::new(Faults::default());
    let dev = Arc::new(FaultyDevice {
        inner: MemDevice::new(64 << 20),
        faults: faults.clone(),
    });
    mkfs(dev.as_ref(), 0, 0).expect("mkfs");
    faults.reads.store(true, Ordering::SeqCst);
    let d: Arc<dyn Device> = dev.clone();
    assert!(Engine::open(d, Options::default()).is_err());
    faults.reads.store(false, Ordering::SeqCst);
    faults.writes.store(true, Ordering::SeqCst);
    let d: Arc<dyn Device> = dev.clone();
    // Opening writes a checkpoint: a write failure makes the open fail cleanly.
    assert!(Engine::open(d, Options::default()).is_err());
}
