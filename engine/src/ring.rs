//! The I/O engine threads: each owns an io_uring ring over the O_DIRECT device, takes requests
//! over a queue (woken through an eventfd only when it sleeps), keeps in-flight operations in a `slab`, and runs
//! each request's completion on this thread (FUSE replies are sent from here). Devices
//! without a file descriptor (test backends) are served synchronously on the same thread.

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use io_uring::{opcode, types, IoUring};
use parking_lot::Mutex;
use slab::Slab;

use crate::device::{AlignedBuf, Device, FaultOp};
use crate::format::BLOCK_SIZE;

/// A finished operation hands its buffer back with the result.
pub type Done = Box<dyn FnOnce(io::Result<IoBuf>) + Send>;

pub enum Op {
    Read,
    Write,
}

/// The memory an operation reads into or writes from.
pub enum IoBuf {
    /// A buffer the operation owns (a read fills it; it comes back in the completion).
    Owned(AlignedBuf),
    /// Whole blocks `[first, first + n)` of a buffer that others may read while the device
    /// writes it (the engine's table of writes in flight serves readers from it).
    Shared {
        buf: Arc<AlignedBuf>,
        first: usize,
        n: usize,
    },
}

impl IoBuf {
    pub fn len(&self) -> usize {
        match self {
            IoBuf::Owned(b) => b.len(),
            IoBuf::Shared { n, .. } => n * BLOCK_SIZE,
        }
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        match self {
            IoBuf::Owned(b) => b,
            IoBuf::Shared { buf, first, n } => &buf[first * BLOCK_SIZE..(first + n) * BLOCK_SIZE],
        }
    }

    /// The owned buffer of a read.
    pub fn into_owned(self) -> Option<AlignedBuf> {
        match self {
            IoBuf::Owned(b) => Some(b),
            IoBuf::Shared { .. } => None,
        }
    }
}

pub struct IoReq {
    pub op: Op,
    pub offset: u64,
    pub buf: IoBuf,
    pub done: Done,
}

struct Shared {
    queue: Mutex<VecDeque<IoReq>>,
    stop: AtomicBool,
    wake_fd: RawFd,
    /// Set while the worker may block; a submitter that clears it writes the eventfd.
    waiting: AtomicBool,
    /// Operations in flight across all workers.
    inflight: Arc<AtomicU64>,
}

impl Shared {
    fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our eventfd.
        unsafe { libc::write(self.wake_fd, &one as *const u64 as *const libc::c_void, 8) };
    }

    /// Called by the worker before it blocks: true if it may block (nothing queued).
    fn about_to_wait(&self) -> bool {
        self.waiting.store(true, Ordering::SeqCst);
        if self.queue.lock().is_empty() && !self.stop.load(Ordering::SeqCst) {
            return true;
        }
        self.waiting.store(false, Ordering::SeqCst);
        false
    }
}

struct Worker {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// The I/O threads: one io_uring ring each (two by default, so completions and the FUSE
/// replies sent from them use both cores of a small host). Requests are spread round-robin.
pub struct Ring {
    workers: Vec<Worker>,
    next: AtomicUsize,
    inflight: Arc<AtomicU64>,
    /// The device, and its descriptor when it has one (then reads may also be submitted on
    /// a caller's own ring: `local_io`).
    dev: Arc<dyn Device>,
    fd: Option<RawFd>,
}

const WAKE: u64 = u64::MAX;
const RING_ENTRIES: u32 = 256;
/// I/O threads per engine.
pub const IO_THREADS: usize = 2;

impl Ring {
    pub fn start(dev: Arc<dyn Device>) -> io::Result<Ring> {
        let inflight = Arc::new(AtomicU64::new(0));
        let mut workers = Vec::new();
        // Test devices without a descriptor are served by one synchronous thread.
        let n = if dev.raw_fd().is_some() {
            IO_THREADS
        } else {
            1
        };
        for k in 0..n {
            // SAFETY: eventfd has no pointer arguments; we own the returned descriptor.
            let wake_fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
            if wake_fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let shared = Arc::new(Shared {
                queue: Mutex::new(VecDeque::new()),
                stop: AtomicBool::new(false),
                wake_fd,
                waiting: AtomicBool::new(false),
                inflight: inflight.clone(),
            });
            let ring = match dev.raw_fd() {
                Some(_) => Some(IoUring::new(RING_ENTRIES)?),
                None => None,
            };
            let s = shared.clone();
            let d = dev.clone();
            let thread = std::thread::Builder::new()
                .name(format!("strata-io{k}"))
                .spawn(move || match ring {
                    Some(r) => run_uring(s, d, r),
                    None => run_sync(s, d),
                })?;
            workers.push(Worker {
                shared,
                thread: Mutex::new(Some(thread)),
            });
        }
        Ok(Ring {
            workers,
            next: AtomicUsize::new(0),
            inflight,
            fd: dev.raw_fd(),
            dev,
        })
    }

    pub fn submit(&self, reqs: Vec<IoReq>) {
        if reqs.is_empty() {
            return;
        }
        // A thread with its own ring takes the reads it started itself (`local_io`).
        if let Some((fd, local)) = self.fd.zip(crate::local_io::local_for(&reqs[0].op)) {
            self.inflight
                .fetch_add(reqs.len() as u64, Ordering::Relaxed);
            for r in reqs {
                if let Some(e) = injected(self.dev.as_ref(), &r) {
                    self.inflight.fetch_sub(1, Ordering::Relaxed);
                    (r.done)(Err(e));
                    continue;
                }
                local.submit(crate::local_io::DeviceIo::new(r, fd, self.inflight.clone()));
            }
            return;
        }
        self.inflight
            .fetch_add(reqs.len() as u64, Ordering::Relaxed);
        let w = &self.workers[self.next.fetch_add(1, Ordering::Relaxed) % self.workers.len()];
        w.shared.queue.lock().extend(reqs);
        if w.shared.waiting.swap(false, Ordering::SeqCst) {
            w.shared.wake();
        }
    }

    /// Submit and wait (for engine-side callers that may block).
    pub fn read_sync(&self, offset: u64, buf: AlignedBuf) -> io::Result<AlignedBuf> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.submit(vec![IoReq {
            op: Op::Read,
            offset,
            buf: IoBuf::Owned(buf),
            done: Box::new(move |r| {
                let _ = tx.send(r);
            }),
        }]);
        rx.recv()
            .unwrap_or_else(|_| Err(io::Error::other("I/O thread stopped")))
            .and_then(|b| {
                b.into_owned()
                    .ok_or_else(|| io::Error::other("read into a shared buffer"))
            })
    }

    pub fn inflight(&self) -> u64 {
        self.inflight.load(Ordering::Relaxed)
    }

    pub fn stop(&self) {
        for w in &self.workers {
            w.shared.stop.store(true, Ordering::SeqCst);
            w.shared.wake();
        }
        for w in &self.workers {
            if let Some(t) = w.thread.lock().take() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        self.stop();
        for w in &self.workers {
            // SAFETY: closing the eventfd we created; the I/O thread has exited.
            unsafe { libc::close(w.shared.wake_fd) };
        }
    }
}

fn run_sync(s: Arc<Shared>, dev: Arc<dyn Device>) {
    let mut counter = [0u8; 8];
    loop {
        let batch: Vec<IoReq> = s.queue.lock().drain(..).collect();
        if batch.is_empty() {
            if s.stop.load(Ordering::SeqCst) {
                return;
            }
            if s.about_to_wait() {
                // SAFETY: reads 8 bytes into a live buffer from our eventfd (blocks until woken).
                unsafe { libc::read(s.wake_fd, counter.as_mut_ptr() as *mut libc::c_void, 8) };
                s.waiting.store(false, Ordering::SeqCst);
            }
            continue;
        }
        for mut r in batch {
            if let Some(e) = injected(dev.as_ref(), &r) {
                s.inflight.fetch_sub(1, Ordering::Relaxed);
                (r.done)(Err(e));
                continue;
            }
            let res = match (&r.op, &mut r.buf) {
                (Op::Read, IoBuf::Owned(b)) => dev.read_at(b, r.offset),
                (Op::Read, IoBuf::Shared { .. }) => {
                    Err(io::Error::other("read into a shared buffer"))
                }
                (Op::Write, b) => dev.write_at(b.as_slice(), r.offset),
            };
            s.inflight.fetch_sub(1, Ordering::Relaxed);
            (r.done)(res.map(|_| r.buf));
        }
    }
}

/// A fault the device wants this request to fail with (tests only; see `Device::inject_fault`).
fn injected(dev: &dyn Device, r: &IoReq) -> Option<io::Error> {
    let op = match r.op {
        Op::Read => FaultOp::Read,
        Op::Write => FaultOp::Write,
    };
    dev.inject_fault(op, r.offset, r.buf.len())
}

struct InFlight {
    req: IoReq,
    /// Bytes already transferred (short I/O is resubmitted for the rest).
    done_bytes: usize,
}

fn run_uring(s: Arc<Shared>, dev: Arc<dyn Device>, mut ring: IoUring) {
    let fd = types::Fd(dev.raw_fd().expect("uring path only with a descriptor"));
    let mut ops: Slab<InFlight> = Slab::new();
    // The kernel writes into this from the armed eventfd read; leaked so it outlives the ring.
    let counter: &'static mut [u8; 8] = Box::leak(Box::new([0u8; 8]));
    let mut wake_armed = false;
    let mut backlog: VecDeque<IoReq> = VecDeque::new();
    loop {
        if !wake_armed {
            let e = opcode::Read::new(types::Fd(s.wake_fd), counter.as_mut_ptr(), 8)
                .build()
                .user_data(WAKE);
            // SAFETY: `counter` is leaked ('static), so the kernel's write into it is always valid.
            if unsafe { ring.submission().push(&e) }.is_ok() {
                wake_armed = true;
            }
        }
        backlog.extend(s.queue.lock().drain(..));
        while let Some(req) = backlog.pop_front() {
            if ops.len() >= (RING_ENTRIES as usize - 1) || ring.submission().is_full() {
                backlog.push_front(req);
                break;
            }
            if let Some(e) = injected(dev.as_ref(), &req) {
                s.inflight.fetch_sub(1, Ordering::Relaxed);
                (req.done)(Err(e));
                continue;
            }
            let id = ops.insert(InFlight { req, done_bytes: 0 });
            push_op(&mut ring, fd, &mut ops, id);
        }
        if s.stop.load(Ordering::SeqCst) && ops.is_empty() && backlog.is_empty() {
            return;
        }
        // Block for a completion when the ring is full or nothing is queued; otherwise just
        // submit and go back for the queued requests.
        let must_wait = !backlog.is_empty() || (s.stop.load(Ordering::SeqCst) && !ops.is_empty());
        let wait = if must_wait || s.about_to_wait() { 1 } else { 0 };
        if let Err(e) = ring.submit_and_wait(wait) {
            if e.raw_os_error() != Some(libc::EINTR) && e.raw_os_error() != Some(libc::EBUSY) {
                log::error!("io_uring submit failed: {e}");
            }
        }
        s.waiting.store(false, Ordering::SeqCst);
        let completions: Vec<(u64, i32)> = ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        for (ud, res) in completions {
            if ud == WAKE {
                wake_armed = false;
                continue;
            }
            let id = ud as usize;
            if !ops.contains(id) {
                continue;
            }
            if res < 0 {
                let f = ops.remove(id);
                s.inflight.fetch_sub(1, Ordering::Relaxed);
                (f.req.done)(Err(io::Error::from_raw_os_error(-res)));
                continue;
            }
            let f = &mut ops[id];
            f.done_bytes += res as usize;
            if res == 0 || f.done_bytes >= f.req.buf.len() {
                let f = ops.remove(id);
                s.inflight.fetch_sub(1, Ordering::Relaxed);
                if f.done_bytes < f.req.buf.len() {
                    (f.req.done)(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "short I/O at end of device",
                    )));
                } else {
                    (f.req.done)(Ok(f.req.buf));
                }
            } else {
                push_op(&mut ring, fd, &mut ops, id);
            }
        }
    }
}

fn push_op(ring: &mut IoUring, fd: types::Fd, ops: &mut Slab<InFlight>, id: usize) {
    let f = &mut ops[id];
    let off = f.req.offset + f.done_bytes as u64;
    let len = (f.req.buf.len() - f.done_bytes) as u32;
    let entry = match (&f.req.op, &mut f.req.buf) {
        (Op::Read, IoBuf::Owned(b)) => {
            // SAFETY: pointer stays inside the owned buffer, which lives in the slab until completion.
            let p = unsafe { b.as_mut_ptr().add(f.done_bytes) };
            opcode::Read::new(fd, p, len).offset(off).build()
        }
        (Op::Read, IoBuf::Shared { .. }) => {
            // Nothing submits this (reads own their buffers); fail it like a bad request.
            opcode::Nop::new()
                .build()
                .flags(io_uring::squeue::Flags::empty())
        }
        (Op::Write, b) => {
            // SAFETY: as above: an owned buffer, or a share of one kept alive by the slab slot.
            let p = unsafe { b.as_slice().as_ptr().add(f.done_bytes) };
            opcode::Write::new(fd, p, len).offset(off).build()
        }
    }
    .user_data(id as u64);
    // SAFETY: the buffer referenced by the entry is owned by the slab slot and is not moved or
    // freed until its completion has been reaped. The queue has room: callers checked is_full
    // and kept ops below the ring size.
    if unsafe { ring.submission().push(&entry) }.is_err() {
        // Submission queue full: flush it and retry once.
        let _ = ring.submit();
        // SAFETY: as above.
        let _ = unsafe { ring.submission().push(&entry) };
    }
}
