//! Device I/O on the caller's own io_uring. A thread that runs an io_uring of its own (the
//! FUSE front's io_uring queues) can take the device reads of the requests it serves: it
//! registers a [`LocalIo`] once ([`set_local_io`]), starts reads with
//! [`Engine::read_local`], submits the [`DeviceIo`]s it is handed on its ring, and completes
//! them from its own completions. A request, its disk I/O and its reply then stay on one
//! thread, with no hand-over to the engine's I/O threads and back.
//!
//! Only reads started through `read_local` go there, only those the I/O scheduler lets go at
//! once (`Sched::admit`: no other layer's requests waiting, the layer's IOPS and bandwidth
//! limits and the shared in-flight cap allow; the others queue for the engine's I/O threads
//! like everyone's), and only their first submission: I/O started from a completion, and
//! every blocking wait inside the engine (`read_sync`), use the engine's I/O threads.
//!
//! A thread with reads in flight on its ring must not simply block: a commit waits for the
//! reads of the data epoch it seals (a block it frees must not be reused under a read), and
//! the scheduler may hold another request of the same layer back until those reads end. So
//! every blocking wait in the engine goes through [`wait_recv`], which completes the thread's
//! own device I/O ([`LocalIo::reap`]) while it waits.

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use io_uring::{opcode, squeue, types};

use crate::api::ReadCb;
use crate::device::ReadDest;
use crate::engine::Engine;
use crate::node::Node;
use crate::ring::{IoBuf, IoReq, Op, Wakers};
use crate::sched::Sched;

/// Takes device I/O on a thread's own ring (see the module doc).
pub trait LocalIo {
    /// Submit `io` on this thread's ring; complete it with [`DeviceIo::complete`].
    fn submit(&self, io: DeviceIo);
    /// Wait up to `timeout` for completions of the device I/O submitted here and complete
    /// them; the ring's other completions are kept for the thread's own loop. False when none
    /// of this thread's device I/O is in flight (then nothing needs reaping).
    fn reap(&self, timeout: Duration) -> bool;
}

/// Receive from `rx`, blocking. On a thread with a [`LocalIo`], the thread's own device I/O
/// is completed while it waits (what the sender waits for may wait for that I/O).
pub(crate) fn wait_recv<T>(rx: &mpsc::Receiver<T>) -> Result<T, mpsc::RecvError> {
    let Some(local) = LOCAL.with(|l| l.borrow().clone()) else {
        return rx.recv();
    };
    loop {
        match rx.try_recv() {
            Ok(v) => return Ok(v),
            Err(mpsc::TryRecvError::Disconnected) => return Err(mpsc::RecvError),
            Err(mpsc::TryRecvError::Empty) => {}
        }
        // No new local I/O starts while this thread waits here (only `read_local` starts it),
        // so once none is in flight a plain wait is safe.
        if !local.reap(Duration::from_millis(1)) {
            return rx.recv();
        }
    }
}

thread_local! {
    static LOCAL: RefCell<Option<Rc<dyn LocalIo>>> = RefCell::new(None);
    /// Set while `read_local` runs: its device reads go to LOCAL.
    static ROUTE: Cell<bool> = const { Cell::new(false) };
}

/// Route the device reads this thread starts with [`Engine::read_local`] to `io` (None:
/// to the engine's I/O threads).
pub fn set_local_io(io: Option<Rc<dyn LocalIo>>) {
    LOCAL.with(|l| *l.borrow_mut() = io);
}

/// The local ring to hand `op` to, if this thread routes it there.
pub(crate) fn local_for(op: &Op) -> Option<Rc<dyn LocalIo>> {
    if !matches!(op, Op::Read) || !ROUTE.with(Cell::get) {
        return None;
    }
    LOCAL.with(|l| l.borrow().clone())
}

/// One device operation handed to a [`LocalIo`].
pub struct DeviceIo {
    req: IoReq,
    done_bytes: usize,
    fd: RawFd,
    inflight: Arc<AtomicU64>,
    /// The scheduler that admitted it (`Sched::admit`), told when it leaves the device;
    /// then the I/O threads are woken if requests wait (some may have waited for this one to
    /// leave the shared in-flight cap).
    sched: Arc<Sched>,
    wakers: Arc<Wakers>,
    /// When the scheduler admitted it.
    sent: Instant,
}

impl DeviceIo {
    pub(crate) fn new(
        req: IoReq,
        fd: RawFd,
        inflight: Arc<AtomicU64>,
        sched: Arc<Sched>,
        wakers: Arc<Wakers>,
    ) -> DeviceIo {
        DeviceIo {
            req,
            done_bytes: 0,
            fd,
            inflight,
            sched,
            wakers,
            sent: Instant::now(),
        }
    }

    /// The submission for what is left of this operation. The buffer it names belongs to
    /// the `DeviceIo`: keep it (unmoved is not needed: the buffer is on the heap) until its
    /// completion is handed to [`DeviceIo::complete`].
    pub fn entry(&mut self) -> squeue::Entry {
        let off = self.req.offset + self.done_bytes as u64;
        let len = (self.req.buf.len() - self.done_bytes) as u32;
        let fd = types::Fd(self.fd);
        match (&self.req.op, &mut self.req.buf) {
            (Op::Read, IoBuf::Owned(b)) => {
                let p = b[self.done_bytes..].as_mut_ptr();
                opcode::Read::new(fd, p, len).offset(off).build()
            }
            (Op::Write, b) => {
                let p = b.as_slice()[self.done_bytes..].as_ptr();
                opcode::Write::new(fd, p, len).offset(off).build()
            }
            // Nothing routes these here (reads own their buffers).
            (Op::Read, IoBuf::Shared { .. }) => opcode::Nop::new().build(),
        }
    }

    /// The completion of the last [`DeviceIo::entry`] (`res` from the CQE): `Some(self)`
    /// when a short transfer must be submitted again; otherwise the operation's callback runs
    /// here.
    pub fn complete(mut self, res: i32) -> Option<DeviceIo> {
        if res < 0 {
            self.finish(Err(io::Error::from_raw_os_error(-res)));
            return None;
        }
        self.done_bytes += res as usize;
        if res > 0 && self.done_bytes < self.req.buf.len() {
            return Some(self);
        }
        if self.done_bytes < self.req.buf.len() {
            self.finish(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "short I/O at end of device",
            )));
        } else {
            self.finish(Ok(()));
        }
        None
    }

    fn finish(self, r: io::Result<()>) {
        self.inflight.fetch_sub(1, Ordering::Relaxed);
        self.sched.done(
            self.req.class.slot,
            self.req.is_write(),
            self.req.buf.len() as u64,
        );
        if self.sched.pending() {
            self.wakers.kick();
        }
        self.req.observe_device(self.sent);
        let IoReq { buf, done, .. } = self.req;
        done(r.map(|()| buf));
    }
}

impl Engine {
    /// [`Engine::read`], with the device reads it needs submitted on this thread's
    /// [`LocalIo`] (when one is set and the device has a descriptor); `cb` then runs from
    /// that ring's completion, on this thread. With `dest`, a read that starts on a block
    /// boundary and whose blocks fit is assembled there (the device reads straight into it),
    /// and `cb` gets a slice of it.
    pub fn read_local(
        &self,
        node: Node,
        offset: u64,
        size: u32,
        dest: Option<ReadDest>,
        cb: ReadCb,
    ) {
        struct Route;
        impl Drop for Route {
            fn drop(&mut self) {
                ROUTE.with(|r| r.set(false));
            }
        }
        ROUTE.with(|r| r.set(true));
        let _route = Route;
        self.read_to(node, offset, size, dest, cb);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::{AlignedBuf, FileDevice};
    use crate::ring::Ring;
    use crate::sched::{IoClass, Policy};

    /// Keeps the device reads handed to this thread, to complete them when the test says.
    #[derive(Default)]
    struct Held(RefCell<Vec<DeviceIo>>);

    impl LocalIo for Held {
        fn submit(&self, io: DeviceIo) {
            self.0.borrow_mut().push(io);
        }
        fn reap(&self, _timeout: Duration) -> bool {
            !self.0.borrow().is_empty()
        }
    }

    fn read(slot: u32, blocks: usize, tx: &mpsc::Sender<u32>) -> IoReq {
        let tx = tx.clone();
        IoReq {
            op: Op::Read,
            offset: 0,
            buf: IoBuf::Owned(AlignedBuf::zeroed(blocks)),
            done: Box::new(move |r| {
                let _ = tx.send(if r.is_ok() { slot } else { u32::MAX });
            }),
            class: IoClass { slot, stats: None },
        }
    }

    #[test]
    fn a_request_held_back_by_a_local_read_goes_when_that_read_ends() {
        let path = std::path::PathBuf::from(format!(
            "/var/tmp/strata-local-io-{}.img",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&path);
        crate::prepare_image(&path, Some(16 << 20)).expect("image");
        let dev = Arc::new(FileDevice::open(&path).expect("O_DIRECT image"));
        let ring = Ring::start(dev, Policy::Fair).expect("ring");
        let held = Rc::new(Held::default());
        set_local_io(Some(held.clone()));
        ROUTE.with(|r| r.set(true));
        let (tx, rx) = mpsc::channel();
        // Layer 1 reads 256 KiB on this thread's ring (nothing waits: admitted), layer 2 a
        // block (a layer with nothing in flight may always send): two layers active.
        ring.submit(vec![read(1, 64, &tx)]);
        ring.submit(vec![read(2, 1, &tx)]);
        assert_eq!(
            held.0.borrow().len(),
            2,
            "both reads went on the local ring"
        );
        // Layer 1's next read, 1 MiB, would pass the shared in-flight cap: it queues for the
        // I/O threads, which may not send it before layer 1's local read ends.
        ring.submit(vec![read(1, 256, &tx)]);
        assert_eq!(held.0.borrow().len(), 2, "the third read queued");
        ROUTE.with(|r| r.set(false));
        // Let the I/O threads see it held back and go to sleep (else they may find the local
        // reads ended before they look, and this test would not test the wake-up).
        for _ in 0..60_000 {
            if ring.all_waiting() {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        // The local reads end (as their ring would report them).
        for io in held.0.take() {
            let n = io.req.buf.len() as i32;
            assert!(io.complete(n).is_none());
        }
        let mut got: Vec<u32> = (0..3)
            .map(|_| {
                rx.recv_timeout(Duration::from_secs(60))
                    .expect("every read completes (the queued one must not wait forever)")
            })
            .collect();
        got.sort();
        assert_eq!(got, vec![1, 1, 2]);
        set_local_io(None);
        drop(ring);
        let _ = std::fs::remove_file(&path);
    }
}
