//! The I/O engine threads: each owns an io_uring ring over the O_DIRECT device, takes requests
//! from the scheduler (`sched`: per-layer fair queueing and limits; woken through an eventfd
//! only when it sleeps), keeps in-flight operations in a `slab`, and runs each request's
//! completion on this thread (FUSE replies are sent from here). Devices without a file
//! descriptor (test backends) are served synchronously on the same thread.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use io_uring::{opcode, types, IoUring};
use parking_lot::Mutex;
use slab::Slab;

use crate::device::{AlignedBuf, Device, FaultOp};
use crate::format::BLOCK_SIZE;
use crate::sched::{IoClass, Next, Policy, Sched};

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
    /// Whose I/O this is (the scheduler shares the device between classes).
    pub class: IoClass,
}

impl IoReq {
    pub(crate) fn is_write(&self) -> bool {
        matches!(self.op, Op::Write)
    }

    /// Record in its layer's statistics the time it spent in the device, since `sent`.
    pub(crate) fn observe_device(&self, sent: Instant) {
        if let Some(st) = &self.class.stats {
            match self.op {
                Op::Read => st.io_device_read.observe_since(sent),
                Op::Write => st.io_device_write.observe_since(sent),
            }
        }
    }

    /// This write of a shared buffer as device requests of at most `max_blocks` blocks each,
    /// in order (anything else, or a write that small already: itself). The pieces'
    /// completions are joined: the request's callback runs once, after the last piece ends,
    /// with the whole buffer, or with the first error a piece had. So whoever waits for the
    /// write (the table of writes in flight, the epoch a commit waits for) waits for all of it.
    pub(crate) fn split(self, max_blocks: usize) -> Vec<IoReq> {
        let IoReq {
            op,
            offset,
            buf,
            done,
            class,
        } = self;
        let (shared, first, n) = match (&op, buf) {
            (Op::Write, IoBuf::Shared { buf, first, n }) if max_blocks > 0 && n > max_blocks => {
                (buf, first, n)
            }
            (_, buf) => {
                return vec![IoReq {
                    op,
                    offset,
                    buf,
                    done,
                    class,
                }]
            }
        };
        struct Join {
            left: usize,
            err: Option<io::Error>,
            done: Option<Done>,
            whole: Option<IoBuf>,
        }
        let join = Arc::new(Mutex::new(Join {
            left: n.div_ceil(max_blocks),
            err: None,
            done: Some(done),
            whole: Some(IoBuf::Shared {
                buf: shared.clone(),
                first,
                n,
            }),
        }));
        (0..n)
            .step_by(max_blocks)
            .map(|k| {
                let join = join.clone();
                IoReq {
                    op: Op::Write,
                    offset: offset + (k * BLOCK_SIZE) as u64,
                    buf: IoBuf::Shared {
                        buf: shared.clone(),
                        first: first + k,
                        n: max_blocks.min(n - k),
                    },
                    class: class.clone(),
                    done: Box::new(move |r| {
                        let mut j = join.lock();
                        if let Err(e) = r {
                            j.err.get_or_insert(e);
                        }
                        j.left -= 1;
                        if j.left > 0 {
                            return;
                        }
                        let (done, whole, err) = (j.done.take(), j.whole.take(), j.err.take());
                        drop(j);
                        if let (Some(done), Some(whole)) = (done, whole) {
                            done(match err {
                                Some(e) => Err(e),
                                None => Ok(whole),
                            });
                        }
                    }),
                }
            })
            .collect()
    }
}

struct Shared {
    sched: Arc<Sched>,
    /// Bumped by every submission: a worker that saw the same value before and after deciding
    /// to sleep missed nothing.
    pushes: Arc<AtomicU64>,
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

    /// Called by the worker before it blocks: true if it may block (nothing was submitted
    /// since it last asked the scheduler, whose answer was `seen`).
    fn about_to_wait(&self, seen: u64) -> bool {
        self.waiting.store(true, Ordering::SeqCst);
        if self.pushes.load(Ordering::SeqCst) == seen && !self.stop.load(Ordering::SeqCst) {
            return true;
        }
        self.waiting.store(false, Ordering::SeqCst);
        false
    }

    /// Ask the scheduler for requests while `room` allows; returns how long to sleep at most
    /// (some class is held back by its limits) and the submission count it answered for.
    fn take(&self, room: usize, mut send: impl FnMut(IoReq)) -> (Option<Duration>, u64) {
        let seen = self.pushes.load(Ordering::SeqCst);
        let mut sent = 0;
        while sent < room {
            match self.sched.next() {
                Next::Send(r) => {
                    send(r);
                    sent += 1;
                }
                Next::Wait(d) => return (Some(d), seen),
                Next::Idle => break,
            }
        }
        (None, seen)
    }
}

struct Worker {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// Wakes the I/O threads when the scheduler may have something for them: a submission, or
/// the end of a request the scheduler counted in flight but the threads did not run (a read
/// on a caller's own ring, `local_io`: a request held back by the shared in-flight cap until
/// it ends would otherwise wait for a completion no I/O thread sees).
pub(crate) struct Wakers {
    shared: Vec<Arc<Shared>>,
    /// Bumped by every kick: a worker that saw the same value before and after deciding to
    /// sleep missed nothing.
    pushes: Arc<AtomicU64>,
    next: AtomicUsize,
}

impl Wakers {
    /// Make one sleeping worker (if any) ask the scheduler again; an awake one will anyway.
    pub(crate) fn kick(&self) {
        self.pushes.fetch_add(1, Ordering::SeqCst);
        // Wake one sleeping worker, starting from a different one each time.
        let n = self.shared.len();
        let first = self.next.fetch_add(1, Ordering::Relaxed);
        for k in 0..n {
            let w = &self.shared[(first + k) % n];
            if w.waiting.swap(false, Ordering::SeqCst) {
                w.wake();
                break;
            }
        }
    }
}

/// The I/O threads: one io_uring ring each (two by default, so completions and the FUSE
/// replies sent from them use both cores of a small host), sharing one scheduler.
pub struct Ring {
    workers: Vec<Worker>,
    sched: Arc<Sched>,
    wakers: Arc<Wakers>,
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
    pub fn start(dev: Arc<dyn Device>, policy: Policy) -> io::Result<Ring> {
        let inflight = Arc::new(AtomicU64::new(0));
        let sched = Arc::new(Sched::counting(policy, inflight.clone()));
        let pushes = Arc::new(AtomicU64::new(0));
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
                sched: sched.clone(),
                pushes: pushes.clone(),
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
        let wakers = Arc::new(Wakers {
            shared: workers.iter().map(|w| w.shared.clone()).collect(),
            pushes,
            next: AtomicUsize::new(0),
        });
        Ok(Ring {
            workers,
            sched,
            wakers,
            inflight,
            fd: dev.raw_fd(),
            dev,
        })
    }

    pub fn submit(&self, reqs: Vec<IoReq>) {
        if reqs.is_empty() {
            return;
        }
        // A thread with its own ring takes the reads it started itself (`local_io`), those
        // the scheduler lets go at once; the others queue for the I/O threads as usual.
        let reqs = match self.fd.zip(crate::local_io::local_for(&reqs[0].op)) {
            None => reqs,
            Some((fd, local)) => {
                let mut queued = Vec::new();
                for r in reqs {
                    if let Some(e) = injected(self.dev.as_ref(), &r) {
                        (r.done)(Err(e));
                    } else if self.sched.admit(&r) {
                        self.inflight.fetch_add(1, Ordering::Relaxed);
                        local.submit(crate::local_io::DeviceIo::new(
                            r,
                            fd,
                            self.inflight.clone(),
                            self.sched.clone(),
                            self.wakers.clone(),
                        ));
                    } else {
                        queued.push(r);
                    }
                }
                if queued.is_empty() {
                    return;
                }
                queued
            }
        };
        self.inflight
            .fetch_add(reqs.len() as u64, Ordering::Relaxed);
        self.sched.push(reqs);
        self.wakers.kick();
    }

    /// Every I/O thread has decided to sleep (tests: to order events against them).
    #[cfg(test)]
    pub(crate) fn all_waiting(&self) -> bool {
        self.workers
            .iter()
            .all(|w| w.shared.waiting.load(Ordering::SeqCst))
    }

    /// The scheduler (weights and limits of the layers).
    pub(crate) fn sched(&self) -> &Sched {
        &self.sched
    }

    /// Submit and wait (for engine-side callers that may block).
    pub fn read_sync(&self, offset: u64, buf: AlignedBuf) -> io::Result<AlignedBuf> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.submit(vec![IoReq {
            op: Op::Read,
            offset,
            buf: IoBuf::Owned(buf),
            class: IoClass::default(),
            done: Box::new(move |r| {
                let _ = tx.send(r);
            }),
        }]);
        crate::local_io::wait_recv(&rx)
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
        let mut batch = Vec::new();
        let (wait, seen) = s.take(usize::MAX, |r| batch.push(r));
        if batch.is_empty() {
            if s.stop.load(Ordering::SeqCst) && !s.sched.pending() {
                return;
            }
            if s.about_to_wait(seen) {
                let timeout = wait.map_or(-1, |d| d.as_millis().clamp(1, 1000) as i32);
                let mut pfd = libc::pollfd {
                    fd: s.wake_fd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd, owned by this frame.
                let n = unsafe { libc::poll(&mut pfd, 1, timeout) };
                if n > 0 {
                    // SAFETY: reads 8 bytes into a live buffer from our eventfd (readable).
                    unsafe { libc::read(s.wake_fd, counter.as_mut_ptr() as *mut libc::c_void, 8) };
                }
                s.waiting.store(false, Ordering::SeqCst);
            }
            continue;
        }
        for mut r in batch {
            let (class, write, bytes) = (r.class.slot, r.is_write(), r.buf.len() as u64);
            let sent = Instant::now();
            if let Some(e) = injected(dev.as_ref(), &r) {
                s.inflight.fetch_sub(1, Ordering::Relaxed);
                s.sched.done(class, write, bytes);
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
            s.sched.done(class, write, bytes);
            r.observe_device(sent);
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
    /// When the scheduler handed it over.
    sent: Instant,
}

fn run_uring(s: Arc<Shared>, dev: Arc<dyn Device>, mut ring: IoUring) {
    let fd = types::Fd(dev.raw_fd().expect("uring path only with a descriptor"));
    let mut ops: Slab<InFlight> = Slab::new();
    // The kernel writes into this from the armed eventfd read; leaked so it outlives the ring.
    let counter: &'static mut [u8; 8] = Box::leak(Box::new([0u8; 8]));
    let mut wake_armed = false;
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
        let sq_free = {
            let sq = ring.submission();
            sq.capacity() - sq.len()
        };
        let room = (RING_ENTRIES as usize - 1)
            .saturating_sub(ops.len())
            .min(sq_free);
        let mut fresh = Vec::new();
        let (wait, seen) = s.take(room, |r| fresh.push(r));
        let sent = Instant::now();
        for req in fresh {
            if let Some(e) = injected(dev.as_ref(), &req) {
                s.inflight.fetch_sub(1, Ordering::Relaxed);
                s.sched
                    .done(req.class.slot, req.is_write(), req.buf.len() as u64);
                (req.done)(Err(e));
                continue;
            }
            let id = ops.insert(InFlight {
                req,
                done_bytes: 0,
                sent,
            });
            push_op(&mut ring, fd, &mut ops, id);
        }
        if s.stop.load(Ordering::SeqCst) && ops.is_empty() && !s.sched.pending() {
            return;
        }
        // Block for a completion, a wake-up (new requests) or, when a layer's limits hold
        // requests back, until its tokens are due.
        let must_wait = room == 0 || (s.stop.load(Ordering::SeqCst) && !ops.is_empty());
        let block = must_wait || s.about_to_wait(seen);
        let r = match (block, wait) {
            (false, _) => ring.submit_and_wait(0),
            (true, None) => ring.submit_and_wait(1),
            (true, Some(d)) => {
                let ts = types::Timespec::new()
                    .sec(d.as_secs())
                    .nsec(d.subsec_nanos());
                let args = types::SubmitArgs::new().timespec(&ts);
                ring.submitter().submit_with_args(1, &args)
            }
        };
        if let Err(e) = r {
            let code = e.raw_os_error();
            if code != Some(libc::EINTR) && code != Some(libc::EBUSY) && code != Some(libc::ETIME) {
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
                s.sched
                    .done(f.req.class.slot, f.req.is_write(), f.req.buf.len() as u64);
                f.req.observe_device(f.sent);
                (f.req.done)(Err(io::Error::from_raw_os_error(-res)));
                continue;
            }
            let f = &mut ops[id];
            f.done_bytes += res as usize;
            if res == 0 || f.done_bytes >= f.req.buf.len() {
                let f = ops.remove(id);
                s.inflight.fetch_sub(1, Ordering::Relaxed);
                s.sched
                    .done(f.req.class.slot, f.req.is_write(), f.req.buf.len() as u64);
                f.req.observe_device(f.sent);
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
