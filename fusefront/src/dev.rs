//! The /dev/fuse transport: worker threads each read requests from their own descriptor of
//! the connection (FUSE_DEV_IOC_CLONE) and answer through it with one writev. With io_uring
//! on, it still carries INIT, FORGET, INTERRUPT, notifications, and whatever the kernel
//! sends before the rings are ready.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::abi::{self, op};
use crate::fs::{Fs, MAX_WRITE};
use crate::request::Request;
use crate::session::{Reply, Sink};
use crate::sys;
use engine::poll::PollGate;

/// Room for the largest request: a WRITE of MAX_WRITE bytes and its headers.
pub(crate) const BUF_SIZE: usize = MAX_WRITE as usize + 4096;

/// One descriptor of the connection.
pub(crate) struct Channel {
    fd: OwnedFd,
    /// Requests read from this descriptor and not answered yet (a hand-over waits for 0).
    pub(crate) outstanding: AtomicUsize,
}

impl Channel {
    pub(crate) fn new(fd: OwnedFd) -> Channel {
        Channel {
            fd,
            outstanding: AtomicUsize::new(0),
        }
    }

    pub(crate) fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// Write a reply: the header, then the body.
    pub(crate) fn reply(&self, unique: u64, error: i32, parts: &[&[u8]]) {
        let len = abi::OUT_HEADER_SIZE + parts.iter().map(|p| p.len()).sum::<usize>();
        let h = abi::out_header(len as u32, error, unique);
        let mut all: [&[u8]; 4] = [&h, &[], &[], &[]];
        for (slot, p) in all[1..].iter_mut().zip(parts) {
            *slot = p;
        }
        match sys::writev(self.fd.as_raw_fd(), &all[..1 + parts.len().min(3)]) {
            Ok(_) => {}
            // The request was interrupted or its caller is gone (e.g. a container exiting
            // with requests in flight): routine.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => log::debug!("FUSE reply to request {unique} not sent: {e}"),
        }
    }

    /// Write a notification (a whole message, header included).
    pub(crate) fn notify(&self, msg: &[u8]) -> io::Result<()> {
        sys::writev(self.fd.as_raw_fd(), &[msg]).map(|_| ())
    }
}

/// Whether a request of this opcode is answered.
fn has_reply(opcode: u32) -> bool {
    !matches!(opcode, op::FORGET | op::BATCH_FORGET | op::INTERRUPT)
}

/// Serve requests from `chan` until the file system is unmounted, or `stop` is set (a
/// hand-over: the thread is then woken by a signal, its read returns EINTR). `after_init`
/// runs once INIT has been answered (the connection is then initialised).
pub(crate) fn worker(
    fs: Arc<Fs>,
    chan: Arc<Channel>,
    after_init: &(dyn Fn() + Sync),
    stop: &AtomicBool,
) {
    let mut buf = engine::AlignedBuf::zeroed(BUF_SIZE / 4096);
    // The kernel copies a request into `buf` in our read(2), the data through
    // get_user_pages. A page not yet in our page tables takes the slow path, which fails when
    // a fatal signal is pending, and the kernel then ends the request with EIO: a write in
    // flight when the daemon is killed (kill -9 before a takeover) would fail. Mapped pages
    // take the fast path, which does not look at signals (the ring buffers: uring.rs).
    if let Err(e) = sys::populate_write(buf.as_ptr() as u64, buf.len()) {
        log::warn!("cannot map the /dev/fuse request buffer ahead: {e}");
    }
    let fd = chan.fd.as_raw_fd();
    // After a reply, wait awake a little for the next request before blocking in read(2),
    // as the io_uring queues do (engine::poll's module doc): the client woken by the reply
    // then stays on its CPU. A request another worker takes first just leaves this one
    // blocked in its read, as without polling.
    let limit = std::time::Duration::from_micros(fs.request_poll_us().into());
    let mut gate = PollGate::new(limit);
    let mut answered = false;
    loop {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        if answered && gate.worth() {
            gate.result(engine::poll::poll_yielding(limit, || sys::readable_now(fd)));
        }
        answered = false;
        let n = match sys::read(fd, &mut buf) {
            Ok(n) => n,
            Err(e) => match e.raw_os_error() {
                // ENOENT: the request was interrupted before we read it.
                Some(libc::ENOENT) | Some(libc::EINTR) | Some(libc::EAGAIN) => continue,
                // Unmounted (or the connection aborted).
                Some(libc::ENODEV) | Some(libc::ECONNABORTED) => return,
                _ => {
                    log::error!("reading /dev/fuse failed: {e}");
                    return;
                }
            },
        };
        match Request::parse_dev(&buf[..n]) {
            Ok(req) => {
                let (unique, opcode) = (req.header.unique, req.header.opcode);
                fs.dispatch(req, Reply::new(unique, Sink::Dev(chan.clone())));
                // Answered here (not by an engine thread after device I/O, which would
                // want the CPU this poll takes).
                answered = has_reply(opcode) && chan.outstanding.load(Ordering::Relaxed) == 0;
                if opcode == op::INIT {
                    after_init();
                }
            }
            Err(bad) => {
                let h = abi::InHeader::decode(&buf[..n]);
                log::warn!("malformed FUSE request ({}): {h:?}", bad.0);
                if let Some(h) = h {
                    if has_reply(h.opcode) {
                        chan.reply(h.unique, -libc::EINVAL, &[]);
                    }
                }
            }
        }
    }
}
