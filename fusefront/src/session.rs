//! What the transports share: [`Reply`] (sent exactly once, from whatever thread finishes the
//! request — a FUSE thread, an engine completion), the per-opcode request counters, and the
//! negotiated protocol.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use crate::abi::{self, op};
use crate::dev;
use crate::uring;

/// Where a reply goes: back down the /dev/fuse descriptor the request came from, or into the
/// io_uring entry that carried it (then committed, which fetches the next request).
pub(crate) enum Sink {
    Dev(Arc<dev::Channel>),
    Uring(uring::EntryRef),
}

impl Sink {
    fn send(self, unique: u64, error: i32, parts: &[&[u8]]) {
        match self {
            Sink::Dev(c) => c.reply(unique, error, parts),
            Sink::Uring(e) => e.reply(unique, error, parts),
        }
    }
}

/// The answer to one request. Dropping it unanswered answers EIO, so a request is never
/// left waiting.
pub struct Reply {
    unique: u64,
    sink: Option<Sink>,
    /// Send a success only once the change is in the journal ([`Reply::after_persist`]).
    persist: Option<Arc<engine::Engine>>,
}

/// Send on `s`; the request is then no longer outstanding on its descriptor.
fn finish(s: Sink, unique: u64, error: i32, parts: &[&[u8]]) {
    let chan = match &s {
        Sink::Dev(c) => Some(c.clone()),
        Sink::Uring(_) => None,
    };
    s.send(unique, error, parts);
    if let Some(c) = chan {
        c.outstanding.fetch_sub(1, Relaxed);
    }
}

impl Reply {
    pub(crate) fn new(unique: u64, sink: Sink) -> Reply {
        if let Sink::Dev(c) = &sink {
            c.outstanding.fetch_add(1, Relaxed);
        }
        Reply {
            unique,
            sink: Some(sink),
            persist: None,
        }
    }

    /// Answer success only when the engine has written the change to its journal: a daemon
    /// killed after answering loses nothing the kernel was told (see `--persist-replies`).
    pub(crate) fn after_persist(mut self, engine: Arc<engine::Engine>) -> Reply {
        self.persist = Some(engine);
        self
    }

    fn send(&mut self, error: i32, parts: &[&[u8]]) {
        let Some(s) = self.sink.take() else {
            return;
        };
        match self.persist.take() {
            Some(e) if error == 0 => {
                let body: Vec<u8> = parts.concat();
                let unique = self.unique;
                e.persist(Box::new(move |r| match r {
                    Ok(()) => finish(s, unique, 0, &[&body]),
                    Err(_) => finish(s, unique, -libc::EIO, &[]),
                }));
            }
            _ => finish(s, self.unique, error, parts),
        }
    }

    /// Memory a read may assemble its data in for this reply: the ring entry's payload
    /// buffer (the reply then leaves from there without a copy); None on /dev/fuse.
    pub(crate) fn read_dest(&self) -> Option<engine::ReadDest> {
        match &self.sink {
            Some(Sink::Uring(e)) if self.persist.is_none() => e.read_dest(),
            _ => None,
        }
    }

    /// Success with this body.
    pub fn ok(mut self, body: &[u8]) {
        self.send(0, &[body])
    }

    /// Success with a body in two pieces (e.g. `fuse_entry_out` then `fuse_open_out`).
    pub fn ok2(mut self, a: &[u8], b: &[u8]) {
        self.send(0, &[a, b])
    }

    /// Failure with a (positive) errno.
    pub fn error(mut self, errno: i32) {
        let e = if errno > 0 && errno < 4096 {
            errno
        } else {
            libc::EIO
        };
        self.send(-e, &[])
    }

    /// A request that takes no reply (FORGET, INTERRUPT): release what carried it. On
    /// /dev/fuse nothing is written; an io_uring entry is never given such a request.
    pub fn none(mut self) {
        if let Some(Sink::Dev(c)) = self.sink.take() {
            c.outstanding.fetch_sub(1, Relaxed);
        }
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        if self.sink.is_some() {
            self.send(-libc::EIO, &[]);
        }
    }
}

/// Requests received, per opcode (index: opcode; the last slot counts unknown opcodes).
pub struct OpCounters {
    by_op: [AtomicU64; op::COUNT + 1],
    /// Requests the kernel sent again after a takeover (FUSE_NOTIFY_RESEND).
    resent: AtomicU64,
}

impl Default for OpCounters {
    fn default() -> Self {
        OpCounters {
            by_op: std::array::from_fn(|_| AtomicU64::new(0)),
            resent: AtomicU64::new(0),
        }
    }
}

impl OpCounters {
    pub fn count(&self, opcode: u32) {
        let i = (opcode as usize).min(op::COUNT);
        self.by_op[i].fetch_add(1, Relaxed);
    }

    pub fn count_resent(&self) {
        self.resent.fetch_add(1, Relaxed);
    }

    pub fn resent(&self) -> u64 {
        self.resent.load(Relaxed)
    }

    /// (opcode name, requests) of every opcode seen at least once.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        self.by_op
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let n = c.load(Relaxed);
                (n > 0).then(|| (abi::op_name(i as u32), n))
            })
            .collect()
    }

    /// Requests of one opcode.
    pub fn get(&self, opcode: u32) -> u64 {
        self.by_op[(opcode as usize).min(op::COUNT)].load(Relaxed)
    }
}
