//! Fault injection: a device that fails reads, writes or flushes on demand. The engine returns
//! the error to the caller, latches read-only after a failed write or flush (fsync never
//! reports success after data was lost), never panics, and recovers to a consistent state
//! when opened again on a healthy device.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use engine::mkfs;
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
    setup_with(Options::default().write_buffer_bytes)
}

/// `write_buffer_bytes` 0: every write is answered when the device finished it (its error
/// reaches the writer); otherwise writes are answered before (the error reaches fsync).
fn setup_with(write_buffer_bytes: u64) -> (Arc<FaultyDevice>, Arc<Faults>, Arc<Engine>, Node) {
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
            write_buffer_bytes,
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
    for buffered in [false, true] {
        failed_write_latches(buffered);
    }
}

fn failed_write_latches(buffered: bool) {
    let (dev, faults, e, root) = setup_with(if buffered { 64 << 20 } else { 0 });
    file(&e, root, "safe", b"fsynced before the fault");
    e.fsync_sync().expect("fsync");
    let f = e
        .mknod(root, b"victim", libc::S_IFREG | 0o644, 0, WHO, None)
        .expect("create");
    faults.writes.store(true, Ordering::SeqCst);
    match e.write_sync(f.ino, 0, &[7u8; 8192]) {
        Err(err) => assert_eq!(err.errno(), libc::EIO, "{err}"),
        // Answered before the device failed it: fsync reports the loss.
        Ok(_) => assert!(
            buffered,
            "an unbuffered write must report the device's error"
        ),
    }
    assert!(
        e.fsync_sync().is_err(),
        "fsync after a lost write must fail"
    );
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

// ---------------------------------------------------------------------------------------
// Faults through the real io_uring path: an O_DIRECT image file (FileDevice) wrapped by a
// device that passes its descriptor on, so data reads and writes go through io_uring, and
// answers `Device::inject_fault` (asked by the I/O threads before each submission) and its own
// read_at/write_at/flush (the journal, checkpoint and superblock path) with chosen errors.

mod uring {
    use std::io;
    use std::os::fd::RawFd;
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
    use std::sync::Arc;

    use engine::mkfs;
    use engine::{Caller, Device, Engine, FaultOp, FileDevice, Node, Options};

    const WHO: Caller = Caller { uid: 0, gid: 0 };
    const NEVER: u64 = u64::MAX;

    /// Faults injected by every test in this file (printed for the report).
    static INJECTED: AtomicU64 = AtomicU64::new(0);

    /// Which operations fail: the n-th write or flush (counted from 1 since the plan was
    /// armed), or every read of one block; with which errno.
    struct Plan {
        writes: AtomicU64,
        fail_write: AtomicU64,
        flushes: AtomicU64,
        fail_flush: AtomicU64,
        fail_read_block: AtomicU64,
        errno: AtomicI32,
        /// Faults that hit requests on the io_uring path / on the direct path.
        via_uring: AtomicU64,
        via_direct: AtomicU64,
    }

    impl Plan {
        fn new() -> Arc<Plan> {
            Arc::new(Plan {
                writes: AtomicU64::new(0),
                fail_write: AtomicU64::new(NEVER),
                flushes: AtomicU64::new(0),
                fail_flush: AtomicU64::new(NEVER),
                fail_read_block: AtomicU64::new(NEVER),
                errno: AtomicI32::new(libc::EIO),
                via_uring: AtomicU64::new(0),
                via_direct: AtomicU64::new(0),
            })
        }
        fn fail_nth_write(&self, n: u64, errno: i32) {
            self.errno.store(errno, Ordering::SeqCst);
            self.writes.store(0, Ordering::SeqCst);
            self.fail_write.store(n, Ordering::SeqCst);
        }
        fn fail_nth_flush(&self, n: u64) {
            self.errno.store(libc::EIO, Ordering::SeqCst);
            self.flushes.store(0, Ordering::SeqCst);
            self.fail_flush.store(n, Ordering::SeqCst);
        }
        fn fail_reads_of(&self, block: u64) {
            self.errno.store(libc::EIO, Ordering::SeqCst);
            self.fail_read_block.store(block, Ordering::SeqCst);
        }
        fn heal(&self) {
            self.fail_write.store(NEVER, Ordering::SeqCst);
            self.fail_flush.store(NEVER, Ordering::SeqCst);
            self.fail_read_block.store(NEVER, Ordering::SeqCst);
        }
        fn injected(&self) -> u64 {
            self.via_uring.load(Ordering::SeqCst) + self.via_direct.load(Ordering::SeqCst)
        }
        fn decide(&self, op: FaultOp, offset: u64, len: usize, uring: bool) -> Option<io::Error> {
            let hit = match op {
                FaultOp::Write => {
                    self.writes.fetch_add(1, Ordering::SeqCst) + 1
                        == self.fail_write.load(Ordering::SeqCst)
                }
                FaultOp::Read => {
                    let b = self.fail_read_block.load(Ordering::SeqCst);
                    b != NEVER && b >= offset / 4096 && b < (offset + len as u64) / 4096
                }
            };
            if !hit {
                return None;
            }
            INJECTED.fetch_add(1, Ordering::SeqCst);
            if uring {
                self.via_uring.fetch_add(1, Ordering::SeqCst);
            } else {
                self.via_direct.fetch_add(1, Ordering::SeqCst);
            }
            Some(io::Error::from_raw_os_error(
                self.errno.load(Ordering::SeqCst),
            ))
        }
    }

    struct FaultyFile {
        inner: FileDevice,
        plan: Arc<Plan>,
    }

    impl Device for FaultyFile {
        fn size(&self) -> u64 {
            self.inner.size()
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
            if let Some(e) = self.plan.decide(FaultOp::Read, offset, buf.len(), false) {
                return Err(e);
            }
            self.inner.read_at(buf, offset)
        }
        fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
            if let Some(e) = self.plan.decide(FaultOp::Write, offset, buf.len(), false) {
                return Err(e);
            }
            self.inner.write_at(buf, offset)
        }
        fn flush(&self) -> io::Result<()> {
            let n = self.plan.flushes.fetch_add(1, Ordering::SeqCst) + 1;
            if n == self.plan.fail_flush.load(Ordering::SeqCst) {
                INJECTED.fetch_add(1, Ordering::SeqCst);
                self.plan.via_direct.fetch_add(1, Ordering::SeqCst);
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            self.inner.flush()
        }
        fn raw_fd(&self) -> Option<RawFd> {
            self.inner.raw_fd()
        }
        fn inject_fault(&self, op: FaultOp, offset: u64, len: usize) -> Option<io::Error> {
            self.plan.decide(op, offset, len, true)
        }
    }

    /// A fresh image file in the target directory (ext4 here, which takes O_DIRECT).
    fn image(name: &str) -> PathBuf {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("faults-uring");
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let path = dir.join(format!("{name}.img"));
        let _ = std::fs::remove_file(&path);
        engine::prepare_image(&path, Some(32 << 20)).expect("image");
        let dev = FileDevice::open(&path).expect("O_DIRECT image");
        mkfs(&dev, 0, 0).expect("mkfs");
        path
    }

    fn opts() -> Options {
        Options {
            cache_bytes: 0,
            ..Default::default()
        }
    }

    fn open(path: &Path) -> (Arc<Engine>, Arc<Plan>) {
        open_with(path, opts())
    }

    fn open_with(path: &Path, opts: Options) -> (Arc<Engine>, Arc<Plan>) {
        let plan = Plan::new();
        let dev = FaultyFile {
            inner: FileDevice::open(path).expect("open image"),
            plan: plan.clone(),
        };
        assert!(
            dev.raw_fd().is_some(),
            "the io_uring path needs the descriptor"
        );
        let d: Arc<dyn Device> = Arc::new(dev);
        (Engine::open(d, opts).expect("open"), plan)
    }

    fn create(e: &Engine, name: &str, data: &[u8]) -> engine::Result<Node> {
        let root = e.layer_root("default")?;
        let st = e.mknod(root, name.as_bytes(), libc::S_IFREG | 0o644, 0, WHO, None)?;
        e.forget(st.ino, 1);
        e.write_sync(st.ino, 0, data)?;
        Ok(st.ino)
    }

    fn data(i: usize, len: usize) -> Vec<u8> {
        (0..len)
            .map(|k| (k * 7 + i * 13 + k / 4096) as u8)
            .collect()
    }

    /// The image, opened again on a healthy device: fsck clean, recovery works, every file in
    /// `kept` holds its contents.
    fn recover(path: &Path, kept: &[(String, Vec<u8>)]) {
        let dev = FileDevice::open(path).expect("reopen");
        let report = engine::fsck::check(&dev).expect("fsck");
        assert!(report.is_clean(), "{:?}", report.problems);
        let d: Arc<dyn Device> = Arc::new(dev);
        let e = Engine::open(d, opts()).expect("recovery after faults");
        let root = e.layer_root("default").expect("root");
        for (name, want) in kept {
            let st = e
                .lookup(root, name.as_bytes())
                .unwrap_or_else(|err| panic!("fsynced {name} lost: {err}"));
            e.forget(st.ino, 1);
            let got = e
                .read_sync(st.ino, 0, want.len() as u32 + 100)
                .expect("read");
            assert!(&got == want, "fsynced {name} differs after recovery");
        }
        e.shutdown().expect("shutdown");
        drop(e);
        let report = engine::fsck::check(&FileDevice::open(path).expect("reopen")).expect("fsck");
        assert!(report.is_clean(), "{:?}", report.problems);
    }

    fn report(test: &str) {
        eprintln!(
            "{test}: {} faults injected by the io_uring tests so far",
            INJECTED.load(Ordering::SeqCst)
        );
    }

    /// After a lost write or flush: read-only, fsync keeps failing, shutdown says so.
    fn assert_latched(e: &Engine) {
        assert!(
            e.is_poisoned(),
            "a lost write or flush must latch read-only"
        );
        let root = e.layer_root("default").expect("root");
        let err = e
            .mknod(root, b"after", libc::S_IFREG | 0o644, 0, WHO, None)
            .expect_err("read-only");
        assert_eq!(err.errno(), libc::EROFS);
        assert!(
            e.fsync_sync().is_err(),
            "fsync after a lost write must fail"
        );
        assert!(e.fsync_sync().is_err(), "and keep failing");
        assert!(e.shutdown().is_err(), "shutdown reports the failure");
    }

    #[test]
    fn uring_read_error_is_returned_and_not_latched() {
        let path = image("read");
        let (e, plan) = open(&path);
        let a = create(&e, "a", &data(1, 20000)).expect("a");
        let b = create(&e, "b", &data(2, 20000)).expect("b");
        e.fsync_sync().expect("fsync");
        let (slot, ino) = engine::split(a);
        let pblk = e
            .with_layers(|l| {
                l.get(slot)
                    .and_then(|l| l.tree.get(ino))
                    .and_then(|i| i.extents())
                    .and_then(|x| x.lookup(2))
            })
            .expect("block 2 of a is mapped");
        plan.fail_reads_of(pblk);
        let err = e.read_sync(a, 0, 20000).expect_err("read of the bad block");
        assert_eq!(err.errno(), libc::EIO, "{err}");
        // Only that block is bad: the rest of a, and b, read fine.
        assert_eq!(e.read_sync(a, 0, 8192).expect("blocks 0-1"), data(1, 8192));
        assert_eq!(e.read_sync(b, 0, 20000).expect("b"), data(2, 20000));
        assert!(
            plan.via_uring.load(Ordering::SeqCst) >= 1,
            "fault went through io_uring"
        );
        assert!(!e.is_poisoned(), "a read error does not latch read-only");
        plan.heal();
        assert_eq!(e.read_sync(a, 0, 20000).expect("healed"), data(1, 20000));
        create(&e, "c", b"still writable").expect("write after a read error");
        e.fsync_sync().expect("fsync");
        e.shutdown().expect("shutdown");
        drop(e);
        recover(
            &path,
            &[
                ("a".into(), data(1, 20000)),
                ("c".into(), b"still writable".to_vec()),
            ],
        );
        report("read error");
    }

    #[test]
    fn uring_write_error_latches_and_fsync_fails() {
        // Unbuffered (answered when on the device) and buffered (answered before).
        for (errno, buffer) in [
            (libc::EIO, 0),
            (libc::ENOSPC, 0),
            (libc::EIO, 64 << 20),
            (libc::ENOSPC, 64 << 20),
        ] {
            let path = image(&format!("write-{errno}-{buffer}"));
            let (e, plan) = open_with(
                &path,
                Options {
                    write_buffer_bytes: buffer,
                    ..opts()
                },
            );
            create(&e, "safe", &data(3, 10000)).expect("safe");
            e.fsync_sync().expect("fsync");
            let root = e.layer_root("default").expect("root");
            let st = e
                .mknod(root, b"victim", libc::S_IFREG | 0o644, 0, WHO, None)
                .expect("create");
            plan.fail_nth_write(1, errno);
            match e.write_sync(st.ino, 0, &data(4, 16384)) {
                Err(err) => assert_eq!(
                    err.errno(),
                    errno,
                    "the device's errno reaches the caller: {err}"
                ),
                // Answered before the device failed it: fsync reports the loss.
                Ok(_) => {
                    assert!(buffer > 0, "an unbuffered write reports the device's error");
                    assert!(e.fsync_sync().is_err(), "fsync after a lost write");
                }
            }
            assert_eq!(plan.via_uring.load(Ordering::SeqCst), 1, "via io_uring");
            plan.heal();
            assert_latched(&e);
            drop(e);
            recover(&path, &[("safe".into(), data(3, 10000))]);
        }
        report("write error");
    }

    #[test]
    fn failed_flush_latches() {
        let path = image("flush");
        let (e, plan) = open(&path);
        create(&e, "safe", &data(5, 5000)).expect("safe");
        e.fsync_sync().expect("fsync");
        create(&e, "unsure", &data(6, 5000)).expect("unsure");
        plan.fail_nth_flush(1);
        assert!(e.fsync_sync().is_err(), "fsync with a failing flush");
        plan.heal();
        assert_latched(&e);
        drop(e);
        recover(&path, &[("safe".into(), data(5, 5000))]);
        report("flush error");
    }

    /// A fixed workload with the n-th write (either path) or the n-th flush failing, for
    /// every n the workload reaches: the failing operation returns an error, the engine
    /// latches read-only, never panics, and the image recovers with every file whose fsync
    /// returned intact.
    #[test]
    fn every_write_and_flush_point_fails_cleanly() {
        let (mut points, mut uring) = (0, 0);
        for kind in ["write", "write-enospc", "flush"] {
            for n in 1.. {
                let path = image(&format!("sweep-{kind}"));
                let (e, plan) = open(&path);
                match kind {
                    "write" => plan.fail_nth_write(n, libc::EIO),
                    "write-enospc" => plan.fail_nth_write(n, libc::ENOSPC),
                    _ => plan.fail_nth_flush(n),
                }
                let mut durable: Vec<(String, Vec<u8>)> = Vec::new();
                let mut failed = false;
                for i in 0..6 {
                    let name = format!("f{i}");
                    let d = data(i, 3000 + i * 4000);
                    if create(&e, &name, &d).is_err() || e.fsync_sync().is_err() {
                        failed = true;
                        break;
                    }
                    durable.push((name, d));
                    if i == 3 && e.checkpoint().is_err() {
                        failed = true;
                        break;
                    }
                }
                plan.heal();
                if !failed {
                    // n is past the last write/flush of the workload: done with this kind.
                    assert_eq!(plan.injected(), 0);
                    e.shutdown().expect("shutdown");
                    break;
                }
                assert_eq!(plan.injected(), 1, "{kind} {n}");
                uring += plan.via_uring.load(Ordering::SeqCst);
                assert_latched(&e);
                drop(e);
                recover(&path, &durable);
                points += 1;
            }
        }
        eprintln!(
            "fault sweep: {points} failure points ({uring} on the io_uring path); {} faults injected by this file's io_uring tests so far",
            INJECTED.load(Ordering::SeqCst)
        );
        assert!(points > 30);
        assert!(uring >= 8, "data writes failed on the io_uring path");
    }

    /// Reads failing during recovery make the open fail (no panic); the image is unharmed.
    #[test]
    fn read_errors_during_recovery_are_errors() {
        let path = image("recovery-read");
        let (e, _) = open(&path);
        for i in 0..4 {
            create(&e, &format!("f{i}"), &data(i, 9000)).expect("create");
            e.fsync_sync().expect("fsync");
        }
        // What a crash leaves (journal records to replay, no clean flag): a copy of the image
        // taken while the engine runs (everything was fsynced, with O_DIRECT).
        let crashed = path.with_extension("crashed");
        std::fs::copy(&path, &crashed).expect("copy image");
        e.shutdown().expect("shutdown");
        drop(e);
        let path = crashed;
        let kept: Vec<(String, Vec<u8>)> =
            (0..4).map(|i| (format!("f{i}"), data(i, 9000))).collect();
        let sb = engine::read_superblock(&FileDevice::open(&path).expect("open")).expect("sb");
        let round = path.with_extension("round");
        let mut failures = 0;
        // Both superblock slots, the journal's first chunks, the checkpoint.
        for block in [0, 1, 2, 3, 4, sb.ckpt_block] {
            std::fs::copy(&path, &round).expect("copy image");
            let plan = Plan::new();
            plan.fail_reads_of(block);
            let dev = FaultyFile {
                inner: FileDevice::open(&round).expect("open image"),
                plan: plan.clone(),
            };
            let d: Arc<dyn Device> = Arc::new(dev);
            match Engine::open(d, opts()) {
                Err(err) => {
                    assert_eq!(plan.injected(), 1, "block {block}: {err}");
                    failures += 1;
                }
                Ok(e) => {
                    // A block recovery did not need to read.
                    assert_eq!(
                        plan.injected(),
                        0,
                        "block {block}: a failed read was ignored"
                    );
                    e.shutdown().expect("shutdown");
                }
            }
        }
        assert!(
            failures >= 4,
            "superblock, journal and checkpoint reads fail the open"
        );
        recover(&path, &kept);
        report("recovery read errors");
    }
}
