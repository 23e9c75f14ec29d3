//! A thread that serves requests on its own io_uring (as the FUSE front's io_uring queues do)
//! and has a device read in flight there must not block forever inside the engine.
//!
//! Regression test: a write that found the device full committed to free blocks and waited
//! for that commit; the commit waited for the reads of the data epoch it sealed, among them a
//! read on the writing thread's own ring, which only that thread could complete. The daemon
//! hung under FUSE over io_uring on a nearly full image. Here a real io_uring stands in for
//! the FUSE queue's ring: the thread starts a read on it with `read_local` and, without
//! reaping it, writes more than the free space while freed blocks wait for a commit.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use engine::{mkfs, Caller, DeviceIo, Engine, FileDevice, LocalIo, Options};
use io_uring::{types, IoUring};

const WHO: Caller = Caller { uid: 0, gid: 0 };

/// The thread's own ring: device reads go on it, and are completed only when the engine
/// reaps them while it waits (the test never reaps them itself).
struct OwnRing {
    ring: RefCell<IoUring>,
    ops: RefCell<HashMap<u64, DeviceIo>>,
    next: std::cell::Cell<u64>,
}

impl LocalIo for OwnRing {
    fn submit(&self, mut io: DeviceIo) {
        let id = self.next.get();
        self.next.set(id + 1);
        let e = io.entry().user_data(id);
        self.ops.borrow_mut().insert(id, io);
        let mut ring = self.ring.borrow_mut();
        // SAFETY: the buffer the entry names belongs to the `DeviceIo`, kept in `ops` until
        // its completion.
        unsafe { ring.submission().push(&e) }.expect("submission queue has room");
    }

    fn reap(&self, timeout: Duration) -> bool {
        if self.ops.borrow().is_empty() {
            return false;
        }
        let done: Vec<(u64, i32)> = {
            let mut ring = self.ring.borrow_mut();
            let ts = types::Timespec::from(timeout);
            let _ = ring
                .submitter()
                .submit_with_args(1, &types::SubmitArgs::new().timespec(&ts));
            ring.completion()
                .map(|c| (c.user_data(), c.result()))
                .collect()
        };
        for (id, res) in done {
            let io = self.ops.borrow_mut().remove(&id);
            if let Some(again) = io.and_then(|io| io.complete(res)) {
                self.submit(again);
            }
        }
        !self.ops.borrow().is_empty()
    }
}

fn scenario(path: PathBuf) -> (engine::Result<u32>, Vec<u8>) {
    let e = Engine::open(
        Arc::new(FileDevice::open(&path).expect("O_DIRECT image")),
        Options {
            // Reads go to the device, not to the block cache.
            cache_bytes: 0,
            // No timed commit: the write's own commit is the one that matters.
            commit_interval: Duration::from_secs(3600),
            ..Default::default()
        },
    )
    .expect("open");
    let root = e.layer_root("default").expect("root");
    let b = e
        .mknod(root, b"b", libc::S_IFREG | 0o600, 0, WHO, None)
        .expect("create b");
    e.write_sync(b.ino, 0, &[b'b'; 4096]).expect("write b");
    // Fill the device with "a", commit, then delete it: its blocks wait for a commit.
    let a = e
        .mknod(root, b"a", libc::S_IFREG | 0o600, 0, WHO, None)
        .expect("create a");
    let chunk = vec![b'a'; 1 << 20];
    let mut filled = 0u64;
    while e.write_sync(a.ino, filled << 20, &chunk).is_ok() {
        filled += 1;
    }
    assert!(filled > 16, "only {filled} MiB written");
    e.fsync_sync().expect("fsync");
    e.unlink(root, b"a").expect("unlink");
    e.forget(a.ino, 1);

    let own = Rc::new(OwnRing {
        ring: RefCell::new(IoUring::new(8).expect("io_uring")),
        ops: RefCell::new(HashMap::new()),
        next: std::cell::Cell::new(0),
    });
    engine::set_local_io(Some(own.clone()));
    // A read of "b" on this thread's ring, left in flight.
    let got = Arc::new(std::sync::Mutex::new(Vec::new()));
    let g = got.clone();
    e.read_local(
        b.ino,
        0,
        4096,
        None,
        Box::new(move |r| {
            *g.lock().expect("lock") = r.expect("read b").to_vec();
        }),
    );
    assert_eq!(
        own.ops.borrow().len(),
        1,
        "the read of b went to this thread's ring"
    );
    // More than is free, less than is free once the deletion commits.
    let c = e
        .mknod(root, b"c", libc::S_IFREG | 0o600, 0, WHO, None)
        .expect("create c");
    let r = e.write_sync(c.ino, 0, &vec![b'c'; 8 << 20]);
    let read = got.lock().expect("lock").clone();
    engine::set_local_io(None);
    e.shutdown().expect("shutdown");
    (r, read)
}

#[test]
fn a_write_that_commits_for_space_completes_reads_on_the_writers_own_ring() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("local-io-wait");
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let path = dir.join("full.img");
    let _ = std::fs::remove_file(&path);
    engine::prepare_image(&path, Some(64 << 20)).expect("image");
    mkfs(&FileDevice::open(&path).expect("open"), 0, 0).expect("mkfs");
    let (tx, rx) = mpsc::channel();
    let p = path.clone();
    std::thread::spawn(move || {
        let _ = tx.send(scenario(p));
    });
    let (r, read) = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("the write finished (it hung: its commit waited for a read on its own ring)");
    assert_eq!(
        r.expect("the write fits once the deletion commits"),
        8 << 20
    );
    assert_eq!(
        read,
        vec![b'b'; 4096],
        "the read on the thread's ring completed"
    );
    let _ = std::fs::remove_file(&path);
}
