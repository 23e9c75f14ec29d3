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
//!
//! ## Live restart
//!
//! The entries' buffers live in a memfd ([`RingBufs`]) mapped at a fixed address, and the fd
//! holder keeps it with the connection. The kernel finds a committed request by its unique
//! in the queue, not by the ring that registered the entry, and reads the reply from the
//! entry's buffer addresses in the committing process: so a successor maps the memfd at the
//! same address and looks at every entry. An entry holding a request (`fuse_in_header`,
//! opcode > 0) the dead daemon never answered is served as a resent request and committed
//! from the successor's ring, which answers it and adopts the kernel's entry; an entry
//! holding a reply (`fuse_out_header`, error <= 0) is committed as it is (the dead daemon
//! may have died before its commit reached the kernel). A commit the kernel no longer knows
//! (ENOENT: it took that reply already, and the entry was re-armed and then cancelled with
//! the dead ring) registers a fresh entry on the same buffers; so does a slot never used.
//! Requests that arrived while no entry was armed wait in the kernel's queue until an entry
//! of that queue is committed: a statfs from each CPU after the takeover makes that happen.
//!
//! A dying daemon's armed entries: the kernel ends a request it hands to an armed entry
//! whose ring task is exiting (or whose ring is being torn down) with ECANCELED, to its
//! caller. Each queue thread therefore keeps a poll of an idle ring pending
//! ([`arm_sentinel`]): its exit, clean or by SIGKILL, then cancels its own FUSE entries
//! before it counts as exiting, and requests arrive in entries that copy them into the
//! buffers, or wait in the kernel's queue. Should that poll fail (logged), the window
//! from the thread's exit to the ring's teardown is open again.
#![allow(unsafe_code)]

use std::cell::{Cell, RefCell, UnsafeCell};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use engine::poll::{Poll, PollGate};
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
/// once (more wait in the kernel, first come first served, until an entry is committed). A
/// single process submitting at queue depth 32 (fio, a database) lands on one CPU's queue:
/// with 16 it got 16. Twice that depth, so that such a writer, whose writes hold their
/// entries while the I/O scheduler holds them back (beside a reader of another layer, or past
/// its limits), still leaves a neighbour on the same CPU entries to send its reads in: with
/// 32 a quiet reader on the writer's CPU waited for one of the writer's entries, p99 100 ms.
/// Each entry's payload is 1 MiB of the memfd, touched only as far as requests and replies
/// use it.
pub const ENTRIES: usize = 64;
/// The most entries per queue a taken-over layout may have.
const MAX_ENTRIES: usize = 1024;
/// The payload buffer of an entry: the kernel wants at least max(8 KiB, max_write,
/// max_pages pages).
const PAYLOAD: usize = MAX_WRITE as usize;
const WAKE: u64 = u64::MAX;
/// user_data of the poll on [`Queue::sentinel`].
const SENTINEL: u64 = u64::MAX - 1;
/// user_data of a device operation: this bit, and its index in the queue's table.
const IO_TAG: u64 = 1 << 62;

const _: () = assert!(std::mem::size_of::<squeue::Entry128>() == 128);

/// Where the first daemon of a connection tries to map the ring buffers (the next
/// terabytes after it when something is there): high, fixed, so a successor can map them at
/// the same address.
const RING_BASE: u64 = 0x5000_0000_0000;
const RING_BASE_STEP: u64 = 1 << 40;
/// Bytes before an entry's payload: its header (288 bytes), padded to a page.
const SLOT_HEAD: usize = 4096;
/// Bytes of ring payload mapped ahead at start, for all entries together (see
/// `RingBufs::map_first_pages`).
const MAP_AHEAD_BUDGET: usize = 16 << 20;
const _: () = assert!(abi::URING_REQ_HEADER_SIZE <= SLOT_HEAD);

/// The layout of the ring entries' buffers in their memfd: queue after queue, entry after
/// entry, each a header page then the payload. Recorded in the held connection's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingLayout {
    /// Where the memfd is mapped.
    pub base: u64,
    pub queues: u32,
    pub entries: u32,
    pub payload: u32,
}

impl RingLayout {
    /// This build's layout (at `base`).
    fn ours(base: u64) -> RingLayout {
        RingLayout {
            base,
            queues: possible_cpus() as u32,
            entries: ENTRIES as u32,
            payload: PAYLOAD as u32,
        }
    }

    fn slot_len(&self) -> usize {
        SLOT_HEAD + self.payload as usize
    }

    fn len(&self) -> usize {
        self.queues as usize * self.entries as usize * self.slot_len()
    }

    fn slot(&self, qid: usize, idx: usize) -> usize {
        (qid * self.entries as usize + idx) * self.slot_len()
    }

    pub(crate) fn encode(&self) -> String {
        format!(
            "{:#x},{},{},{}",
            self.base, self.queues, self.entries, self.payload
        )
    }

    pub(crate) fn decode(s: &str) -> Option<RingLayout> {
        let mut it = s.split(',');
        let base = u64::from_str_radix(it.next()?.strip_prefix("0x")?, 16).ok()?;
        let l = RingLayout {
            base,
            queues: it.next()?.parse().ok()?,
            entries: it.next()?.parse().ok()?,
            payload: it.next()?.parse().ok()?,
        };
        it.next().is_none().then_some(l)
    }
}

/// The ring entries' buffers: a memfd mapped at a fixed address (never unmapped: the kernel
/// may write into an entry until the connection is torn down).
pub(crate) struct RingBufs {
    fd: OwnedFd,
    layout: RingLayout,
}

impl RingBufs {
    /// New, zeroed buffers for a connection's first daemon.
    pub(crate) fn create() -> io::Result<RingBufs> {
        let layout = RingLayout::ours(RING_BASE);
        let fd = sys::memfd_sized(c"strata-fuse-ring", layout.len() as u64)?;
        let mut last = None;
        for k in 0..16 {
            let base = RING_BASE + k * RING_BASE_STEP;
            match sys::map_shared_at(fd.as_raw_fd(), base, layout.len()) {
                Ok(_) => {
                    let bufs = RingBufs {
                        fd,
                        layout: RingLayout { base, ..layout },
                    };
                    bufs.map_first_pages();
                    return Ok(bufs);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(io::Error::other(format!(
            "cannot map the FUSE ring buffers at a fixed address from {RING_BASE:#x} on: {}",
            last.map_or_else(|| "?".into(), |e| e.to_string())
        )))
    }

    /// The buffers a previous daemon left (from the fd holder), mapped where it had them.
    /// Its entry count is kept (the kernel's entries point into its slots): a predecessor
    /// built with another [`ENTRIES`] is taken over with its own count.
    pub(crate) fn adopt(fd: OwnedFd, layout: RingLayout) -> io::Result<RingBufs> {
        let ours = RingLayout {
            entries: layout.entries,
            ..RingLayout::ours(layout.base)
        };
        if layout != ours || !(1..=MAX_ENTRIES).contains(&(layout.entries as usize)) {
            return Err(io::Error::other(format!(
                "the previous daemon's FUSE rings have {} queues of {} entries with {}-byte payloads; this one would have {} of {} with {}: cannot take them over",
                layout.queues, layout.entries, layout.payload, ours.queues, ours.entries, ours.payload
            )));
        }
        let size = sys::fd_size(fd.as_raw_fd())?;
        if size < layout.len() as u64 {
            return Err(io::Error::other(format!(
                "the held FUSE ring buffers are {size} bytes, not {}",
                layout.len()
            )));
        }
        sys::map_shared_at(fd.as_raw_fd(), layout.base, layout.len()).map_err(|e| {
            io::Error::other(format!(
                "cannot map the FUSE ring buffers at {:#x}, where the previous daemon had them (the kernel's ring entries point there): {e}",
                layout.base
            ))
        })?;
        let bufs = RingBufs { fd, layout };
        bufs.map_first_pages();
        bufs.map_written_pages();
        Ok(bufs)
    }

    // Why the pages the kernel writes requests into are mapped ahead: the kernel copies a
    // request into an entry from the queue thread's task work, and the payload through
    // get_user_pages. A page that is not in this process's page tables takes the slow path,
    // which fails with EINTR when the thread has a fatal signal pending — a daemon being
    // killed (kill -9, a crash) — and the kernel then ends the request with EINTR: the
    // caller's write (an msync's write-back) fails. A mapped page takes the fast path, which
    // does not look at signals. A successor maps the memfd afresh (no page mapped), so it
    // maps every page its predecessors wrote; every daemon maps each entry's header and the
    // first payload pages at once: up to 64 KiB of payload per entry (small requests, and
    // the write-back of a few dirty pages, e.g. an msync), within [`MAP_AHEAD_BUDGET`] for
    // all entries. A payload page never written before, needed by a larger request in the
    // very moment a daemon dies, can still fail it (mapping all payloads would pin queues ×
    // entries × 1 MiB). (With 4 KiB mapped per entry, a restart test's msync of a 64 KiB
    // mapping saw EINTR twice in five whole test runs of the sixth session.)

    /// Map each entry's header page and its first payload pages (see above).
    fn map_first_pages(&self) {
        let l = self.layout;
        let entries = (l.queues as usize * l.entries as usize).max(1);
        let payload = (MAP_AHEAD_BUDGET / entries).clamp(4096, 64 << 10) & !4095;
        let payload = payload.min(l.payload as usize);
        for q in 0..l.queues as usize {
            for i in 0..l.entries as usize {
                let at = l.base + l.slot(q, i) as u64;
                if let Err(e) = sys::populate_write(at, SLOT_HEAD + payload) {
                    log::warn!("FUSE ring buffers: cannot map entry {q}/{i} ahead: {e}");
                    return;
                }
            }
        }
    }

    /// Map every page of the memfd a previous daemon wrote (see above).
    fn map_written_pages(&self) {
        let l = self.layout;
        let ranges = match sys::data_ranges(self.fd.as_raw_fd(), l.len() as u64) {
            Ok(r) => r,
            Err(e) => {
                log::warn!("FUSE ring buffers: cannot list the pages in use: {e}");
                return;
            }
        };
        let mut bytes = 0u64;
        for (start, end) in ranges {
            bytes += end - start;
            if let Err(e) = sys::populate_write(l.base + start, (end - start) as usize) {
                log::warn!("FUSE ring buffers: cannot map the pages in use: {e}");
                return;
            }
        }
        log::debug!("FUSE ring buffers: {bytes} bytes in use mapped");
    }

    pub(crate) fn layout(&self) -> RingLayout {
        self.layout
    }

    pub(crate) fn dup_fd(&self) -> io::Result<OwnedFd> {
        sys::dup(self.fd.as_raw_fd())
    }

    fn header(&self, qid: usize, idx: usize) -> *mut u8 {
        (self.layout.base as usize + self.layout.slot(qid, idx)) as *mut u8
    }

    fn payload(&self, qid: usize, idx: usize) -> *mut u8 {
        (self.layout.base as usize + self.layout.slot(qid, idx) + SLOT_HEAD) as *mut u8
    }
}

/// What a previous daemon left in an entry's buffers.
#[derive(Debug, PartialEq, Eq)]
enum Left {
    /// Nothing (never used).
    Nothing,
    /// A request it did not answer.
    Request,
    /// A reply, perhaps never committed.
    Reply,
}

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
    /// The opcode of the request the kernel just handed over in this entry (0 if its header
    /// does not decode).
    fn opcode(&self) -> u32 {
        // SAFETY: the in header at the start of the header buffer; the kernel handed the
        // entry over with the completion being handled and does not write it before the
        // commit.
        let h = unsafe { std::slice::from_raw_parts(self.header, abi::URING_IN_OUT_HEADER_SIZE) };
        abi::InHeader::decode(h).map_or(0, |h| h.opcode)
    }

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
                let dst = unsafe { self.payload.add(at) };
                // A read's data already in place ([`EntryRef::read_dest`]) is not copied.
                if !std::ptr::eq(p.as_ptr(), dst) {
                    // SAFETY: as above; `copy` allows the source to lie in the payload too.
                    unsafe { std::ptr::copy(p.as_ptr(), dst, p.len()) };
                }
                at += p.len();
            }
        }
        let h = abi::out_header((abi::OUT_HEADER_SIZE + body) as u32, error, unique);
        let sz = (body as u32).to_le_bytes();
        let at = abi::URING_IN_OUT_HEADER_SIZE + abi::URING_OP_IN_OUT_SIZE + 16;
        // The error field (where the request had its opcode) goes last: a successor takes
        // the entry for a reply only once the reply is whole (see [`Entry::left`]).
        // SAFETY: all ranges are inside the 288-byte header buffer the caller owns.
        unsafe {
            std::ptr::copy_nonoverlapping(sz.as_ptr(), self.header.add(at), 4);
            std::ptr::copy_nonoverlapping(h.as_ptr(), self.header, 4);
            std::ptr::copy_nonoverlapping(h.as_ptr().add(8), self.header.add(8), 8);
            std::sync::atomic::compiler_fence(Ordering::SeqCst);
            std::ptr::copy_nonoverlapping(h.as_ptr().add(4), self.header.add(4), 4);
        }
    }

    /// The error field of the reply a previous daemon left.
    fn error_left(&self) -> i32 {
        let mut e = [0u8; 4];
        // SAFETY: bytes 4..8 of the header buffer, as in [`Entry::left`].
        unsafe { std::ptr::copy_nonoverlapping(self.header.add(4), e.as_mut_ptr(), 4) };
        i32::from_le_bytes(e)
    }

    /// What a previous daemon left in the entry.
    fn left(&self) -> (Left, u64) {
        let mut h = [0u8; 16];
        // SAFETY: the first 16 bytes of the header buffer; before the entry is registered or
        // committed by this daemon, only this thread touches it (a dead daemon's kernel
        // entry no longer writes it).
        unsafe { std::ptr::copy_nonoverlapping(self.header, h.as_mut_ptr(), 16) };
        let op_or_error = i32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        let unique = u64::from_le_bytes(h[8..16].try_into().unwrap_or([0; 8]));
        let left = if unique == 0 {
            Left::Nothing
        } else if op_or_error > 0 {
            Left::Request
        } else {
            Left::Reply
        };
        (left, unique)
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
    /// Leaked, and their buffers (in [`RingBufs`]) never unmapped: the kernel may write
    /// into an entry until the connection is torn down, which can be after this queue's
    /// thread has gone; the process ends soon after.
    entries: &'static [Entry],
    /// Entries whose reply is written, to be committed by the queue thread.
    pending: Mutex<Vec<(u16, Option<Stashed>)>>,
    wake: OwnedFd,
    /// An idle ring the queue's ring polls for as long as the queue thread lives, so that
    /// the thread's exit cancels the queue's ring entries before it counts as exiting (see
    /// [`arm_sentinel`]).
    sentinel: IoUring,
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
    /// The entry's payload buffer, for a read to assemble its data in (a device read then
    /// goes straight into it, and [`Entry::write_reply`] finds the data in place).
    pub(crate) fn read_dest(&self) -> Option<engine::ReadDest> {
        let e = &self.q.entries[self.idx as usize];
        let ptr = std::ptr::NonNull::new(e.payload)?;
        // SAFETY: the payload is PAYLOAD bytes of the mapped memfd (never unmapped), page
        // aligned (each slot is a header page then the payload, from a page-aligned base).
        // It belongs to this request until its reply is written, and the engine writes it
        // only before it calls the read's callback, which writes the reply; the kernel
        // touches it again only after the commit that follows.
        Some(unsafe { engine::ReadDest::new(ptr, PAYLOAD) })
    }

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
    bufs: Arc<RingBufs>,
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
    /// Create every queue and register its entries (after INIT has been answered); or,
    /// with `adopt`, take over the entries a previous daemon left in `bufs` (see the
    /// module's "Live restart"), then kick each CPU's queue with a statfs of `mountpoint`.
    pub(crate) fn start(
        fs: Arc<Fs>,
        dev: RawFd,
        active: Arc<Mutex<&'static str>>,
        bufs: Arc<RingBufs>,
        adopt: bool,
        mountpoint: &std::path::Path,
    ) -> io::Result<Rings> {
        let n = bufs.layout().queues as usize;
        let online = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut queues = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        let armed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for qid in 0..n {
            let q = Arc::new(Queue::new(qid as u16, dev, &bufs)?);
            let (fs, q2, active, armed) = (fs.clone(), q.clone(), active.clone(), armed.clone());
            let t = std::thread::Builder::new()
                .name(format!("strata-fuseq{qid}"))
                .spawn(move || {
                    if qid < online {
                        sys::pin_to_cpu(qid);
                    }
                    run(&fs, &q2, &active, adopt, &armed)
                })?;
            queues.push(q);
            threads.push(t);
        }
        if adopt {
            let mp = mountpoint.to_path_buf();
            std::thread::Builder::new()
                .name("strata-fusekick".into())
                .spawn(move || kick(&mp, &armed, n, online.min(n)))?;
        }
        // Reported from now on; a queue the kernel refuses sets it back to "dev".
        *active.lock() = "io-uring";
        Ok(Rings {
            queues,
            threads: Mutex::new(threads),
            bufs,
        })
    }

    /// The buffers' layout and a descriptor of them, for the fd holder.
    pub(crate) fn held_bufs(&self) -> io::Result<(RingLayout, OwnedFd)> {
        Ok((self.bufs.layout(), self.bufs.dup_fd()?))
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

    /// Ring entries per queue.
    pub(crate) fn entries(&self) -> usize {
        self.bufs.layout().entries as usize
    }
}

impl Queue {
    fn new(qid: u16, dev: RawFd, bufs: &RingBufs) -> io::Result<Queue> {
        let n = bufs.layout().entries as usize;
        // COOP_TASKRUN: completions (a request handed to an entry, a device read's end) wait
        // for the queue thread's next io_uring_enter, which comes soon, instead of an IPI
        // interrupting it where it runs (a sleeping thread is still woken).
        // TASKRUN_FLAG: the ring's flags say when such completions wait (see poll_ring).
        let ring = IoUring::<squeue::Entry128, cqueue::Entry>::builder()
            .setup_coop_taskrun()
            .setup_taskrun_flag()
            .build((n as u32 * 2 + 2).next_power_of_two())?;
        let entries: Vec<Entry> = (0..n)
            .map(|i| Entry {
                header: bufs.header(qid as usize, i),
                payload: bufs.payload(qid as usize, i),
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
            pending: Mutex::new(Vec::with_capacity(n)),
            wake: sys::eventfd()?,
            sentinel: IoUring::new(1)?,
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

    /// Queue the commit of every reply that is ready; how many.
    fn push_commits(&self) -> usize {
        let commits = std::mem::take(&mut *self.pending.lock());
        let n = commits.len();
        for (idx, stash) in commits {
            self.push(&self.commit_sqe(idx as usize, stash));
        }
        n
    }

    /// Submit what is queued without waiting; an error other than [`waited_out`] is logged
    /// (the caller goes on either way). Only the queue thread calls this.
    fn submit_now(&self) {
        if let Err(e) = self.ring.submit() {
            if !waited_out(&e) {
                log::warn!("FUSE ring {}: io_uring_enter failed: {e}", self.qid);
            }
        }
    }

    /// The completions posted so far (user_data, result). Only the queue thread calls this.
    fn completions(&self) -> Vec<(u64, i32)> {
        // SAFETY: only the queue thread reads the completion queue.
        unsafe { self.ring.completion_shared() }
            .map(|c| (c.user_data(), c.result()))
            .collect()
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

/// Within one batch of completions, the replies ready so far are committed and the device
/// reads started so far submitted after every this many (new requests and device
/// completions), not only once the whole batch is served. A client that keeps many requests
/// outstanding on one CPU (fio at QD32) otherwise falls into lockstep with its queue thread:
/// the device completes all of its reads together, the thread answers all of them, the
/// client sends all of its next ones, the thread starts all of their reads, and the device
/// sits idle while the CPU works and the CPU while the device does (traced with
/// `perf record -e io_uring:*,fuse:*`: completions in batches of 29 on average). Handed on in
/// parts, the client and the device get work while the rest of the batch is served: 4 KiB
/// random reads at QD32 from the device 5-20 % faster (bench/results/2026-12-03-commit-every).
/// A synchronous client's batches are one request: no extra system call.
const COMMIT_EVERY: usize = 4;

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
    /// Completions taken from the ring by [`LocalIo::reap`] that are not device I/O (FUSE
    /// entries, the wake-up, the sentinel): the queue's loop handles them next.
    deferred: RefCell<Vec<(u64, i32)>>,
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

    fn reap(&self, timeout: std::time::Duration) -> bool {
        if self.ops.borrow().is_empty() {
            return false;
        }
        let ts = types::Timespec::from(timeout);
        match self
            .q
            .ring
            .submitter()
            .submit_with_args(1, &types::SubmitArgs::new().timespec(&ts))
        {
            Err(e) if !waited_out(&e) => {
                log::warn!("FUSE ring {}: io_uring_enter failed: {e}", self.q.qid)
            }
            _ => {}
        }
        // This runs on the queue thread, inside a blocking wait of a request it serves.
        for (ud, res) in self.q.completions() {
            if is_device_io(ud) {
                self.complete((ud & !IO_TAG) as usize, res);
            } else {
                self.deferred.borrow_mut().push((ud, res));
            }
        }
        !self.ops.borrow().is_empty()
    }
}

/// Wait up to `limit` awake for a completion on the queue's ring (its own device I/O, or a
/// new request), as [`engine::poll`] explains; `stop_when_yielded`: stop when a yield gave
/// the CPU away (for device I/O; not when waiting for a request, whose client is the thread
/// the CPU goes to). The ring is COOP_TASKRUN: a completion waits as task work, flagged in
/// the ring's flags, for the thread's next io_uring_enter, which this makes. Submits what
/// is queued (the replies) first.
fn poll_ring(q: &Queue, limit: std::time::Duration, stop_when_yielded: bool) -> Poll {
    q.submit_now();
    let ready = || {
        // SAFETY: only the queue thread uses the completion queue; this only looks.
        if !unsafe { q.ring.completion_shared() }.is_empty() {
            return true;
        }
        // SAFETY: only the queue thread uses the submission queue; this reads its flags.
        if unsafe { q.ring.submission_shared() }.taskrun() {
            q.submit_now();
        }
        false
    };
    if stop_when_yielded {
        engine::poll::poll_for(limit, ready)
    } else {
        engine::poll::poll_yielding(limit, ready)
    }
}

/// An io_uring_enter that ended early without harm: a signal (EINTR), a full completion
/// queue (EBUSY), or the wait's timeout (ETIME). The caller just goes on.
fn waited_out(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINTR) | Some(libc::EBUSY) | Some(libc::ETIME)
    )
}

/// A completion of a device operation of [`QueueIo`] (not a FUSE entry, wake-up or sentinel).
fn is_device_io(ud: u64) -> bool {
    ud & IO_TAG != 0 && ud != WAKE && ud != SENTINEL
}

impl QueueIo {
    fn complete(&self, idx: usize, res: i32) {
        let io = self.ops.borrow_mut().try_remove(idx);
        if let Some(again) = io.and_then(|io| io.complete(res)) {
            self.submit(again);
        }
    }
}

/// Statfs of the mount from each online CPU (from a child process: see
/// [`sys::statfs_from_each_cpu`]), once every queue has armed its entries: a
/// request that reached a queue while the previous daemon's entries were cancelled waits in
/// the kernel's queue, and only an entry's commit fetches it (registering does not); the
/// statfs lands in a fresh entry, and its commit fetches what waits.
fn kick(
    mountpoint: &std::path::Path,
    armed: &std::sync::atomic::AtomicUsize,
    n: usize,
    cpus: usize,
) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while armed.load(Ordering::SeqCst) < n && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    if let Err(e) = sys::statfs_from_each_cpu(mountpoint, cpus) {
        log::warn!(
            "statfs of {} from each CPU: {e} (requests that reached a queue during the takeover may wait until another request on that CPU)",
            mountpoint.display()
        );
    }
}

/// Keep a poll of the idle [`Queue::sentinel`] ring pending on the queue's ring.
///
/// The kernel ends a request with ECANCELED when it hands it to an armed entry whose ring
/// task is exiting: a request on a dying daemon's ring would fail. A pending request on an
/// io_uring descriptor counts as "tracked" for the task, and a task that exits with one
/// cancels all its own requests first (io_uring_files_cancel in do_exit, before the task
/// is marked exiting): the FUSE entries' cancel disarms them, requests already handed to
/// them are copied into the buffers (for a successor to adopt), and later ones wait in the
/// kernel's queue. Without it, the entries stay armed until the ring is torn down after
/// the last thread's exit.
fn arm_sentinel(q: &Queue) {
    let e: squeue::Entry128 =
        opcode::PollAdd::new(types::Fd(q.sentinel.as_raw_fd()), libc::POLLIN as u32)
            .build()
            .user_data(SENTINEL)
            .into();
    q.push(&e);
}

fn run(
    fs: &Arc<Fs>,
    q: &Arc<Queue>,
    active: &Mutex<&'static str>,
    adopt: bool,
    armed: &std::sync::atomic::AtomicUsize,
) {
    CURRENT.with(|c| c.set(Arc::as_ptr(q)));
    let local = Rc::new(QueueIo {
        q: q.clone(),
        ops: RefCell::new(Slab::new()),
        deferred: RefCell::new(Vec::new()),
    });
    engine::set_local_io(Some(local.clone()));
    let counter: &'static mut [u8; 8] = Box::leak(Box::new([0u8; 8]));
    let counter_ptr = counter.as_mut_ptr();
    let mut alive = q.entries.len();
    let mut served = false;
    // Requests served whose commit has not been queued yet.
    let mut inflight = 0usize;
    let mut unanswered = Vec::new();
    let (mut replies, mut fresh) = (0, 0);
    arm_sentinel(q);
    for i in 0..q.entries.len() {
        let left = if adopt {
            q.entries[i].left().0
        } else {
            Left::Nothing
        };
        match left {
            Left::Nothing => {
                fresh += 1;
                q.push(&q.register_sqe(i));
            }
            Left::Reply => {
                replies += 1;
                let err = q.entries[i].error_left();
                if err != 0 {
                    log::info!(
                        "FUSE ring {} entry {i}: the previous daemon's reply is an error ({})",
                        q.qid,
                        io::Error::from_raw_os_error(-err)
                    );
                }
                q.push(&q.commit_sqe(i, None));
            }
            Left::Request => unanswered.push(i),
        }
    }
    if adopt {
        served = true;
        log::info!(
            "FUSE ring {}: took over {} unanswered request(s) and {replies} reply(ies) left in the previous daemon's entries; {fresh} entries registered anew",
            q.qid,
            unanswered.len()
        );
    }
    // The registrations and commits go to the kernel before the adopted requests are served
    // (whose device reads go on this ring too).
    if let Err(e) = q.ring.submit() {
        log::warn!("FUSE ring {}: io_uring_enter failed: {e}", q.qid);
    }
    armed.fetch_add(1, Ordering::SeqCst);
    for i in unanswered {
        inflight += 1;
        serve(fs, q, i, true);
    }
    let mut wake_armed = false;
    let mut stop_deadline = None;
    let mut poll = PollGate::new(std::time::Duration::from_micros(fs.device_poll_us().into()));
    let mut req_poll = PollGate::new(std::time::Duration::from_micros(
        fs.request_poll_us().into(),
    ));
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
        inflight = inflight.saturating_sub(q.push_commits());
        let stopping = q.stop.load(Ordering::SeqCst);
        if stopping {
            // Answer what was served before stopping (a successor adopts what arrives
            // meanwhile).
            let deadline = *stop_deadline.get_or_insert_with(|| {
                std::time::Instant::now() + std::time::Duration::from_secs(30)
            });
            if inflight == 0 || std::time::Instant::now() > deadline {
                let _ = q.ring.submit();
                break;
            }
        }
        if alive == 0 {
            break;
        }
        q.sleeping.store(true, Ordering::SeqCst);
        let mut want = if q.pending.lock().is_empty() && local.deferred.borrow().is_empty() {
            1
        } else {
            0
        };
        // Wait awake a little before sleeping: for its own device I/O when it has some in
        // flight, else for the client's next request (see engine::poll's module doc).
        if want == 1 && !stopping {
            let own_io = !local.ops.borrow().is_empty();
            let gate = if own_io { &mut poll } else { &mut req_poll };
            if gate.worth() {
                let got = poll_ring(q, gate.limit(), own_io);
                gate.result(got);
                if got == Poll::Got {
                    want = 0;
                }
            }
        }
        let r = if stopping {
            q.ring.submitter().submit_with_args(
                want,
                &types::SubmitArgs::new().timespec(&types::Timespec::new().nsec(10_000_000)),
            )
        } else {
            q.ring.submit_and_wait(want)
        };
        if let Err(e) = r {
            if !waited_out(&e) {
                log::error!("FUSE ring {}: io_uring_enter failed: {e}", q.qid);
                break;
            }
        }
        q.sleeping.store(false, Ordering::SeqCst);
        // Those a blocking wait took off the ring first, then the new ones.
        let mut cqes = local.deferred.take();
        cqes.extend(q.completions());
        // Writes are served after the other requests of the batch, one at a time, and between
        // two writes the replies ready so far are committed and what arrived meanwhile is
        // taken in: a large write costs a copy and a checksum of every block, and a small read
        // (another container's) must not wait behind a batch of them.
        let mut writes = std::collections::VecDeque::new();
        let mut handled = 0usize;
        loop {
            for (ud, res) in cqes.drain(..) {
                // A large batch (a client keeping many requests outstanding) is handed on in
                // parts: see COMMIT_EVERY.
                if handled == COMMIT_EVERY {
                    handled = 0;
                    inflight = inflight.saturating_sub(q.push_commits());
                    q.submit_now();
                }
                if ud == WAKE {
                    wake_armed = false;
                    continue;
                }
                if ud == SENTINEL {
                    if res < 0 && res != -libc::ECANCELED {
                        log::warn!(
                        "FUSE ring {}: poll of the sentinel ring failed ({}): a daemon that dies may fail requests on this queue with ECANCELED",
                        q.qid,
                        io::Error::from_raw_os_error(-res)
                    );
                    } else {
                        arm_sentinel(q);
                    }
                    continue;
                }
                handled += 1;
                if is_device_io(ud) {
                    local.complete((ud & !IO_TAG) as usize, res);
                    continue;
                }
                let idx = ud as usize;
                if idx >= q.entries.len() {
                    continue;
                }
                if res == -libc::ENOENT {
                    // A commit of a request the kernel no longer has: a reply a previous daemon
                    // committed before it died (its entry was re-armed and then cancelled with
                    // its ring). Arm a fresh entry on these buffers.
                    log::debug!("FUSE ring {} entry {idx}: registered anew", q.qid);
                    q.push(&q.register_sqe(idx));
                    continue;
                }
                if res < 0 {
                    // The connection is going away (ENOTCONN), or io_uring was refused for it:
                    // then the kernel keeps sending everything on /dev/fuse.
                    let going =
                        matches!(-res, libc::ENOTCONN | libc::ECONNABORTED | libc::ECANCELED);
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
                if stopping {
                    // Handed over: the request stays in the entry for the successor.
                    continue;
                }
                inflight += 1;
                if q.entries[idx].opcode() == abi::op::WRITE {
                    writes.push_back(idx);
                } else {
                    serve(fs, q, idx, false);
                }
            }
            let Some(idx) = writes.pop_front() else {
                break;
            };
            serve(fs, q, idx, false);
            if writes.is_empty() {
                break;
            }
            inflight = inflight.saturating_sub(q.push_commits());
            // Submits the commits; its return runs the task work that posts new requests.
            q.submit_now();
            cqes.extend(local.deferred.take());
            cqes.extend(q.completions());
        }
    }
    engine::set_local_io(None);
    // Device reads still in flight keep their buffers: the kernel may still write them.
    let left = local.ops.take();
    if !left.is_empty() {
        std::mem::forget(left);
    }
}

/// Parse the request in entry `idx` and dispatch it; `adopted`: a previous daemon's request
/// (it may have carried it out before it died), served like a resent one.
fn serve(fs: &Fs, q: &Arc<Queue>, idx: usize, adopted: bool) {
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
            Ok(mut req) => {
                if adopted {
                    req.header.unique |= abi::UNIQUE_RESEND;
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn held(base: u64, entries: u32, payload: u32) -> (OwnedFd, RingLayout) {
        let layout = RingLayout {
            entries,
            payload,
            ..RingLayout::ours(base)
        };
        let fd = sys::memfd_sized(c"strata-test-ring", layout.len() as u64).expect("memfd");
        (fd, layout)
    }

    #[test]
    fn a_predecessors_entry_count_is_taken_over_but_not_another_payload_size() {
        // Far from RING_BASE, so a daemon's own buffers in this process are not in the way.
        let base = RING_BASE + 32 * RING_BASE_STEP;
        let (fd, l16) = held(base, 16, PAYLOAD as u32);
        let b = RingBufs::adopt(fd, l16).expect("a 16-entry predecessor is taken over");
        assert_eq!(b.layout().entries, 16);
        assert_eq!(b.layout(), l16);
        let (fd, other) = held(base + RING_BASE_STEP, 16, PAYLOAD as u32 / 2);
        assert!(RingBufs::adopt(fd, other).is_err(), "another payload size");
    }
}
