//! The io_uring transport (FUSE over io_uring, Linux ≥ 6.14; the kernel's
//! Documentation/filesystems/fuse/fuse-io-uring.rst). The kernel keeps one queue per
//! possible CPU and hands a request to the queue of the CPU its caller runs on. Each queue
//! here is a thread pinned to that CPU with its own SQE128 ring over the /dev/fuse
//! descriptor; it registers [`ENTRIES`] ring entries (FUSE_IO_URING_CMD_REGISTER: a header
//! buffer and a payload buffer each), and every request that arrives in an entry is
//! answered, and the entry handed back for the next one, by one
//! FUSE_IO_URING_CMD_COMMIT_AND_FETCH.
//!
//! A reply is written into its entry by whoever finishes the request: the queue thread
//! itself (metadata, answered inline, committed in the same `io_uring_enter` that waits for
//! the next request), or an engine completion (writes, fsync), which queues the commit and
//! wakes the queue thread through an eventfd only when it sleeps. Reads that need the device
//! are submitted on the queue's own ring (`engine::LocalIo`): the request, its disk reads and
//! its reply stay on one thread and one ring, with no hand-over to another thread.
//!
//! FORGET, INTERRUPT and notifications stay on /dev/fuse ([`crate::dev`]).
#![allow(unsafe_code)]

use std::cell::{Cell, RefCell, UnsafeCell};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use engine::{DeviceIo, LocalIo};
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use parking_lot::Mutex;
use slab::Slab;

use crate::abi;
use crate::fs::{Fs, MAX_WRITE};
use crate::request::Request;
use crate::session::{Reply, Sink};
use crate::sys;

/// Ring entries registered per queue: requests one CPU's callers can have in the daemon at
/// once (more wait in the kernel until an entry is committed).
pub const ENTRIES: usize = 16;
/// The payload buffer of an entry: the kernel wants at least max(8 KiB, max_write,
/// max_pages pages).
const PAYLOAD: usize = MAX_WRITE as usize;
const WAKE: u64 = u64::MAX;
/// user_data of a device operation: this bit, and its index in the queue's table.
const IO_TAG: u64 = 1 << 62;

const _: () = assert!(std::mem::size_of::<squeue::Entry128>() == 128);

/// The memory of one ring entry (leaked: see [`Queue::entries`]). The kernel writes a
/// request into it, and reads the reply from it after the commit; in between the queue
/// thread parses the request, and its one [`Reply`] writes the answer.
struct Entry {
    header: *mut u8,
    payload: *mut u8,
    iov: UnsafeCell<[libc::iovec; 2]>,
    /// Set while the queue thread dispatches a request that borrows the entry's buffers (a
    /// name, write data): a reply sent meanwhile is stashed and copied in afterwards.
    borrowed: AtomicBool,
}

// SAFETY: an entry is touched by one party at a time: the kernel between REGISTER/COMMIT and
// the completion that hands it a request, then the queue thread while it parses the request,
// then the request's single `Reply` (on whatever thread) until it queues the commit; while
// the dispatch borrows the buffers (`borrowed`), the reply does not write them.
unsafe impl Sync for Entry {}
// SAFETY: as above; the pointers are to leaked heap buffers.
unsafe impl Send for Entry {}

impl Entry {
    /// Write a reply into the entry's header and payload areas.
    ///
    /// # Safety
    /// The caller owns the entry (its request's reply) and nothing borrows its buffers.
    unsafe fn write_reply(&self, unique: u64, mut error: i32, parts: &[&[u8]]) {
        let mut body: usize = parts.iter().map(|p| p.len()).sum();
        if body > PAYLOAD {
            log::error!("FUSE reply of {body} bytes does not fit a ring entry");
            error = -libc::EIO;
            body = 0;
        } else {
            let mut at = 0;
            for p in parts {
                // SAFETY: at + p.len() <= body <= PAYLOAD, inside the payload buffer, which
                // the caller owns.
                unsafe { std::ptr::copy_nonoverlapping(p.as_ptr(), self.payload.add(at), p.len()) };
                at += p.len();
            }
        }
        let h = abi::out_header((abi::OUT_HEADER_SIZE + body) as u32, error, unique);
        let sz = (body as u32).to_le_bytes();
        let at = abi::URING_IN_OUT_HEADER_SIZE + abi::URING_OP_IN_OUT_SIZE + 16;
        // SAFETY: both ranges are inside the 288-byte header buffer the caller owns.
        unsafe {
            std::ptr::copy_nonoverlapping(h.as_ptr(), self.header, h.len());
            std::ptr::copy_nonoverlapping(sz.as_ptr(), self.header.add(at), 4);
        }
    }
}

/// A reply sent while its request still borrowed the entry.
struct Stashed {
    unique: u64,
    error: i32,
    body: Vec<u8>,
}

/// One queue: a ring, its entries, and the commits waiting to be submitted.
pub(crate) struct Queue {
    qid: u16,
    ring: IoUring<squeue::Entry128, cqueue::Entry>,
    dev: RawFd,
    /// Leaked: the kernel may write into an entry until the connection is torn down, which
    /// can be after this queue's thread has gone; the process ends soon after.
    entries: &'static [Entry],
    /// Entries whose reply is written, to be committed by the queue thread.
    pending: Mutex<Vec<(u16, Option<Stashed>)>>,
    wake: OwnedFd,
    /// Set while the queue thread may block in io_uring_enter.
    sleeping: AtomicBool,
    stop: AtomicBool,
}

thread_local! {
    /// The queue whose thread this is (null elsewhere).
    static CURRENT: Cell<*const Queue> = const { Cell::new(std::ptr::null()) };
}

/// A request's entry, held by its [`Reply`].
pub(crate) struct EntryRef {
    q: Arc<Queue>,
    idx: u16,
}

impl EntryRef {
    /// Write the reply into the entry (or stash it while the dispatch still borrows the
    /// entry), then have it committed.
    pub(crate) fn reply(self, unique: u64, error: i32, parts: &[&[u8]]) {
        let q = &self.q;
        let e = &q.entries[self.idx as usize];
        let stash = if e.borrowed.load(Ordering::Acquire) {
            Some(Stashed {
                unique,
                error,
                body: parts.concat(),
            })
        } else {
            // SAFETY: this Reply owns the entry and the dispatch no longer borrows it.
            unsafe { e.write_reply(unique, error, parts) };
            None
        };
        q.pending.lock().push((self.idx, stash));
        let here = CURRENT.with(|c| std::ptr::eq(c.get(), Arc::as_ptr(q)));
        if !here && q.sleeping.swap(false, Ordering::SeqCst) {
            sys::eventfd_signal(q.wake.as_raw_fd());
        }
    }
}

/// The io_uring queues of one connection.
pub(crate) struct Rings {
    queues: Vec<Arc<Queue>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// Number of possible CPUs (the kernel's queue count): /sys/devices/system/cpu/possible.
pub fn possible_cpus() -> usize {
    let s = std::fs::read_to_string("/sys/devices/system/cpu/possible").unwrap_or_default();
    let max = s
        .trim()
        .split(',')
        .filter_map(|r| r.rsplit('-').next()?.parse::<usize>().ok())
        .max();
    match max {
        Some(m) => m + 1,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    }
}

const ENABLE_PARAM: &str = "/sys/module/fuse/parameters/enable_uring";

/// Whether this kernel can do FUSE over io_uring: the `fuse` module's `enable_uring`
/// parameter exists, and is on or could be turned on (as root).
pub fn enable_in_kernel() -> Result<(), String> {
    match std::fs::read_to_string(ENABLE_PARAM) {
        Err(_) => Err(format!(
            "the kernel has no FUSE over io_uring ({ENABLE_PARAM} is missing: Linux 6.14 or newer with CONFIG_FUSE_IO_URING)"
        )),
        Ok(v) if v.trim() == "Y" || v.trim() == "1" => Ok(()),
        Ok(_) => std::fs::write(ENABLE_PARAM, "Y").map_err(|e| {
            format!("FUSE over io_uring is off in this kernel and could not be turned on ({ENABLE_PARAM}: {e})")
        }),
    }
}

impl Rings {
    /// Create every queue and register its entries (after INIT has been answered).
    pub(crate) fn start(
        fs: Arc<Fs>,
        dev: RawFd,
        active: Arc<Mutex<&'static str>>,
    ) -> io::Result<Rings> {
        let n = possible_cpus();
        let online = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut queues = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        for qid in 0..n {
            let q = Arc::new(Queue::new(qid as u16, dev)?);
            let (fs, q2, active) = (fs.clone(), q.clone(), active.clone());
            let t = std::thread::Builder::new()
                .name(format!("strata-fuseq{qid}"))
                .spawn(move || {
                    if qid < online {
                        sys::pin_to_cpu(qid);
                    }
                    run(&fs, &q2, &active)
                })?;
            queues.push(q);
            threads.push(t);
        }
        // Reported from now on; a queue the kernel refuses sets it back to "dev".
        *active.lock() = "io-uring";
        Ok(Rings {
            queues,
            threads: Mutex::new(threads),
        })
    }

    /// Stop the queue threads (the connection is gone) and wait for them.
    pub(crate) fn stop(&self) {
        for q in &self.queues {
            q.stop.store(true, Ordering::SeqCst);
            sys::eventfd_signal(q.wake.as_raw_fd());
        }
        for t in self.threads.lock().drain(..) {
            let _ = t.join();
        }
    }

    pub(crate) fn queues(&self) -> usize {
        self.queues.len()
    }
}

impl Queue {
    fn new(qid: u16, dev: RawFd) -> io::Result<Queue> {
        let ring = IoUring::<squeue::Entry128, cqueue::Entry>::builder()
            .build((ENTRIES as u32 * 2 + 2).next_power_of_two())?;
        let entries: Vec<Entry> = (0..ENTRIES)
            .map(|_| Entry {
                header: Box::leak(vec![0u8; abi::URING_REQ_HEADER_SIZE].into_boxed_slice())
                    .as_mut_ptr(),
                payload: Box::leak(vec![0u8; PAYLOAD].into_boxed_slice()).as_mut_ptr(),
                borrowed: AtomicBool::new(false),
                iov: UnsafeCell::new(
                    [libc::iovec {
                        iov_base: std::ptr::null_mut(),
                        iov_len: 0,
                    }; 2],
                ),
            })
            .collect();
        Ok(Queue {
            qid,
            ring,
            dev,
            entries: Vec::leak(entries),
            pending: Mutex::new(Vec::with_capacity(ENTRIES)),
            wake: sys::eventfd()?,
            sleeping: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        })
    }

    /// The 80-byte command area: `struct fuse_uring_cmd_req`.
    fn cmd(&self, commit_id: u64) -> [u8; 80] {
        let mut c = [0u8; 80];
        c[8..16].copy_from_slice(&commit_id.to_le_bytes());
        c[16..18].copy_from_slice(&self.qid.to_le_bytes());
        c
    }

    fn register_sqe(&self, idx: usize) -> squeue::Entry128 {
        let e = &self.entries[idx];
        // SAFETY: before registration only the queue thread touches the entry.
        let iov = unsafe { &mut *e.iov.get() };
        iov[0] = libc::iovec {
            iov_base: e.header as *mut libc::c_void,
            iov_len: abi::URING_REQ_HEADER_SIZE,
        };
        iov[1] = libc::iovec {
            iov_base: e.payload as *mut libc::c_void,
            iov_len: PAYLOAD,
        };
        let sqe = opcode::UringCmd80::new(types::Fd(self.dev), abi::IO_URING_CMD_REGISTER)
            .cmd(self.cmd(0))
            .addr(Some(iov.as_ptr() as u64))
            .build()
            .user_data(idx as u64);
        with_len(sqe, 2)
    }

    fn commit_sqe(&self, idx: usize, stash: Option<Stashed>) -> squeue::Entry128 {
        let e = &self.entries[idx];
        if let Some(s) = stash {
            // SAFETY: the reply was queued and the dispatch has returned: the queue thread
            // owns the entry until it submits this commit.
            unsafe { e.write_reply(s.unique, s.error, &[&s.body]) };
        }
        let mut u = [0u8; 8];
        // SAFETY: bytes 8..16 of the header buffer (the out header's unique), owned as above.
        unsafe { std::ptr::copy_nonoverlapping(e.header.add(8), u.as_mut_ptr(), 8) };
        let unique = u64::from_le_bytes(u);
        opcode::UringCmd80::new(types::Fd(self.dev), abi::IO_URING_CMD_COMMIT_AND_FETCH)
            .cmd(self.cmd(unique))
            .build()
            .user_data(idx as u64)
    }

    fn push(&self, sqe: &squeue::Entry128) {
        // SAFETY: only the queue thread uses the submission queue. Every buffer an entry
        // names outlives the operation: ring entries' iovecs, headers and payloads and the
        // eventfd counter are leaked; a device read's buffer belongs to its `DeviceIo`, kept
        // in the queue's table until the completion (and leaked if the thread ends first).
        let mut sq = unsafe { self.ring.submission_shared() };
        // SAFETY: as above.
        if unsafe { sq.push(sqe) }.is_err() {
            drop(sq);
            let _ = self.ring.submit();
            // SAFETY: as above.
            let mut sq = unsafe { self.ring.submission_shared() };
            // SAFETY: as above.
            if unsafe { sq.push(sqe) }.is_err() {
                log::error!("FUSE ring {} submission queue full", self.qid);
            }
        }
    }
}

/// Set the `len` field of an SQE (the io-uring crate's UringCmd80 has no setter; FUSE
/// registration needs len = 2, the iovec count).
fn with_len(sqe: squeue::Entry128, len: u32) -> squeue::Entry128 {
    // SAFETY: Entry128 is `repr(C)` over the kernel's 128-byte SQE (size asserted above), plain
    // data with no invalid bit patterns; `len` is the u32 at byte offset 24 of
    // `struct io_uring_sqe`.
    let mut raw: [u8; 128] = unsafe { std::mem::transmute(sqe) };
    raw[24..28].copy_from_slice(&len.to_le_bytes());
    // SAFETY: as above.
    unsafe { std::mem::transmute::<[u8; 128], squeue::Entry128>(raw) }
}

/// The device reads of the requests a queue serves, on the queue's ring.
struct QueueIo {
    q: Arc<Queue>,
    ops: RefCell<Slab<DeviceIo>>,
}

impl LocalIo for QueueIo {
    fn submit(&self, io: DeviceIo) {
        let e = {
            let mut ops = self.ops.borrow_mut();
            let idx = ops.insert(io);
            ops[idx].entry().user_data(IO_TAG | idx as u64)
        };
        self.q.push(&e.into());
    }
}

impl QueueIo {
    fn complete(&self, idx: usize, res: i32) {
        let io = self.ops.borrow_mut().try_remove(idx);
        if let Some(again) = io.and_then(|io| io.complete(res)) {
            self.submit(again);
        }
    }
}

fn run(fs: &Arc<Fs>, q: &Arc<Queue>, active: &Mutex<&'static str>) {
    CURRENT.with(|c| c.set(Arc::as_ptr(q)));
    let local = Rc::new(QueueIo {
        q: q.clone(),
        ops: RefCell::new(Slab::new()),
    });
    engine::set_local_io(Some(local.clone()));
    let counter: &'static mut [u8; 8] = Box::leak(Box::new([0u8; 8]));
    let counter_ptr = counter.as_mut_ptr();
    for i in 0..ENTRIES {
        q.push(&q.register_sqe(i));
    }
    let mut alive = ENTRIES;
    let mut served = false;
    let mut wake_armed = false;
    loop {
        if !wake_armed {
            let e: squeue::Entry128 =
                opcode::Read::new(types::Fd(q.wake.as_raw_fd()), counter_ptr, 8)
                    .build()
                    .user_data(WAKE)
                    .into();
            q.push(&e);
            wake_armed = true;
        }
        let commits = std::mem::take(&mut *q.pending.lock());
        for (idx, stash) in commits {
            q.push(&q.commit_sqe(idx as usize, stash));
        }
        if q.stop.load(Ordering::SeqCst) || alive == 0 {
            break;
        }
        q.sleeping.store(true, Ordering::SeqCst);
        let want = if q.pending.lock().is_empty() { 1 } else { 0 };
        match q.ring.submit_and_wait(want) {
            Ok(_) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR) | Some(libc::EBUSY)) => {}
            Err(e) => {
                log::error!("FUSE ring {}: io_uring_enter failed: {e}", q.qid);
                break;
            }
        }
        q.sleeping.store(false, Ordering::SeqCst);
        // SAFETY: only the queue thread reads the completion queue.
        let cqes: Vec<(u64, i32)> = unsafe { q.ring.completion_shared() }
            .map(|c| (c.user_data(), c.result()))
            .collect();
        for (ud, res) in cqes {
            if ud == WAKE {
                wake_armed = false;
                continue;
            }
            if ud & IO_TAG != 0 && ud != WAKE {
                local.complete((ud & !IO_TAG) as usize, res);
                continue;
            }
            let idx = ud as usize;
            if idx >= ENTRIES {
                continue;
            }
            if res < 0 {
                // The connection is going away (ENOTCONN), or io_uring was refused for it:
                // then the kernel keeps sending everything on /dev/fuse.
                let going = matches!(-res, libc::ENOTCONN | libc::ECONNABORTED | libc::ECANCELED);
                if !going && !served {
                    let mut a = active.lock();
                    if *a != "dev" {
                        *a = "dev";
                        log::warn!(
                            "FUSE transport: /dev/fuse (the kernel refused the io_uring queues: {})",
                            io::Error::from_raw_os_error(-res)
                        );
                    }
                } else if !going {
                    log::warn!(
                        "FUSE ring {} entry {idx}: {}",
                        q.qid,
                        io::Error::from_raw_os_error(-res)
                    );
                }
                alive -= 1;
                continue;
            }
            served = true;
            serve(fs, q, idx);
        }
    }
    engine::set_local_io(None);
    // Device reads still in flight keep their buffers: the kernel may still write them.
    let left = local.ops.take();
    if !left.is_empty() {
        std::mem::forget(left);
    }
}

/// Parse the request in entry `idx` and dispatch it.
fn serve(fs: &Fs, q: &Arc<Queue>, idx: usize) {
    let e = &q.entries[idx];
    e.borrowed.store(true, Ordering::Release);
    {
        // SAFETY: the kernel handed the entry to us with this completion; until the dispatch
        // returns (`borrowed` cleared below), a reply does not write it, and the kernel does
        // not touch it before the commit.
        let header = unsafe { std::slice::from_raw_parts(e.header, abi::URING_REQ_HEADER_SIZE) };
        let in_out = &header[..abi::URING_IN_OUT_HEADER_SIZE];
        let op_in = &header[abi::URING_IN_OUT_HEADER_SIZE
            ..abi::URING_IN_OUT_HEADER_SIZE + abi::URING_OP_IN_OUT_SIZE];
        let ent = &header[abi::URING_IN_OUT_HEADER_SIZE + abi::URING_OP_IN_OUT_SIZE..];
        let payload_sz = u32::from_le_bytes(ent[16..20].try_into().unwrap_or([0; 4])) as usize;
        // SAFETY: as above; payload_sz is clamped to the buffer.
        let payload = unsafe { std::slice::from_raw_parts(e.payload, payload_sz.min(PAYLOAD)) };
        let unique = abi::InHeader::decode(in_out).map_or(0, |h| h.unique);
        let reply = Reply::new(
            unique,
            Sink::Uring(EntryRef {
                q: q.clone(),
                idx: idx as u16,
            }),
        );
        match Request::parse_parts(in_out, op_in, payload) {
            Ok(req) => {
                // A request that keeps no reference into the entry (a read, getattr, ...)
                // may have its reply written straight in, even from inside the dispatch.
                if !req.op.borrows_buffer() {
                    e.borrowed.store(false, Ordering::Release);
                }
                fs.dispatch(req, reply)
            }
            Err(bad) => {
                log::warn!("malformed FUSE request on ring {} ({})", q.qid, bad.0);
                reply.error(libc::EINVAL)
            }
        }
    }
    e.borrowed.store(false, Ordering::Release);
}
