//! The device I/O scheduler: every layer's I/O gets its share of the device.
//!
//! The daemon does every container's disk I/O itself, so the kernel's per-cgroup I/O controls
//! never see whose it is; this is where that decision is made instead. Requests queue per
//! class (a layer) and are handed to the io_uring threads by deficit round robin: each
//! backlogged class is visited in turn and may send as many bytes as its weight earns (a
//! class of weight 200 gets twice the bytes of one of weight 100 while both are busy). A
//! class may also be capped in operations and bytes per second (token buckets: a second's
//! worth of burst).
//!
//! The device has its own queue, and what is in it is served first come first served; so
//! while more than one class has been active in the last [`ACTIVE_WINDOW`], at most
//! [`SHARED_INFLIGHT_BYTES`] may be in the device at once — except that a class with nothing
//! in flight may always send one request. A quiet container's small read then waits behind
//! at most that much of a noisy neighbour's writes, not behind everything it queued. One
//! class alone has the whole device.
//!
//! Writes are what a read waits behind: the device serves a small read after the write data
//! already in it (and a virtual disk's host may add its own write-back to that). So while
//! another class is reading (a read queued or in flight, or sent in the last
//! [`ACTIVE_WINDOW`]), a class's writes go in pieces of at most [`SPLIT_WRITE_BYTES`] (a write
//! of one shared buffer becomes several device requests, whose completions are joined: see
//! `IoReq::split`), and at most [`READER_WRITE_INFLIGHT_BYTES`] of writes are in the device
//! at once (again, a class with nothing in flight may send one piece). Reads are not held by
//! that cap, only by the shared one. Both sizes scale with the writer's weight over the
//! reader's ([`write_limits`]): beside a reader of weight 1000 a writer of weight 100 sends
//! pieces of [`MIN_SPLIT_WRITE_BYTES`], one at a time, so a weight buys latency, not only
//! bytes (deficit round robin alone cannot give a reader of a few MiB/s anything: it never
//! uses its share of the bytes).
//!
//! A read started on a FUSE queue's own ring goes to the device from that thread when the
//! scheduler would send it at once anyway ([`Sched::admit`]); a neighbour's backlog that the
//! caps hold until its own requests end does not stop it, so the quiet layer's reads do not
//! take the detour through an I/O thread just because a writer has a queue.
//!
//! [`Policy::Fifo`] turns all of this off (one queue in arrival order), for comparison.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::format::BLOCK_SIZE;
use crate::limits::DEFAULT_WEIGHT;
use crate::meta::Slot;
use crate::ring::IoReq;
use crate::stats::LayerStats;

/// How device I/O is ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Per-layer fair queueing by weight, with the layers' IOPS and bandwidth limits.
    Fair,
    /// Arrival order, no limits (what the engine did before the scheduler).
    Fifo,
}

/// How long a class counts as active after it last sent a request.
pub const ACTIVE_WINDOW: Duration = Duration::from_millis(50);
/// Bytes in the device at once while several classes are active.
pub const SHARED_INFLIGHT_BYTES: u64 = 1 << 20;
/// While another class reads: the largest write sent to the device in one request.
pub const SPLIT_WRITE_BYTES: u64 = 64 << 10;
/// While another class reads: bytes of writes in the device at once.
pub const READER_WRITE_INFLIGHT_BYTES: u64 = 128 << 10;
/// The smallest write piece, however heavier the reader.
pub const MIN_SPLIT_WRITE_BYTES: u64 = 16 << 10;
/// Bytes a class of weight 100 earns per round.
const QUANTUM_PER_100: i64 = 256 << 10;

/// Whose a request is: the layer, and its statistics (for queueing delay and throttling).
#[derive(Clone, Default)]
pub struct IoClass {
    pub slot: Slot,
    pub stats: Option<Arc<LayerStats>>,
}

/// A class's weight and limits, as the engine last set them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ClassConf {
    pub weight: u32,
    pub iops: Option<u64>,
    pub bps: Option<u64>,
}

impl Default for ClassConf {
    fn default() -> Self {
        ClassConf {
            weight: DEFAULT_WEIGHT,
            iops: None,
            bps: None,
        }
    }
}

struct Class {
    queue: VecDeque<(IoReq, Instant)>,
    deficit: i64,
    /// Earned this round's quantum already.
    credited: bool,
    /// Requests of this class in the device.
    inflight: u32,
    /// Reads of this class queued here, and in the device.
    reads_queued: u32,
    reads_inflight: u32,
    /// When it last sent a read.
    last_read: Instant,
    ops_tokens: f64,
    byte_tokens: f64,
    refilled: Instant,
    /// Since when the head request has been held back by the class's limits.
    throttled_since: Option<Instant>,
    last_sent: Instant,
}

impl Class {
    fn new(now: Instant) -> Class {
        Class {
            queue: VecDeque::new(),
            deficit: 0,
            credited: false,
            inflight: 0,
            reads_queued: 0,
            reads_inflight: 0,
            last_read: now - ACTIVE_WINDOW * 2,
            ops_tokens: 1.0,
            byte_tokens: 0.0,
            refilled: now,
            throttled_since: None,
            last_sent: now - ACTIVE_WINDOW * 2,
        }
    }

    /// Top up the token buckets; how long until the head request may go (zero: now).
    fn wait_for_tokens(&mut self, conf: &ClassConf, cost: u64, now: Instant) -> Duration {
        let dt = now.duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        let mut wait = 0.0f64;
        if let Some(iops) = conf.iops {
            let rate = iops as f64;
            self.ops_tokens = (self.ops_tokens + dt * rate).min(rate.max(1.0));
            if self.ops_tokens < 1.0 {
                wait = wait.max((1.0 - self.ops_tokens) / rate);
            }
        }
        if let Some(bps) = conf.bps {
            let rate = bps as f64;
            // A second's worth of burst, and always room for the request at hand.
            let cap = rate.max(cost as f64);
            self.byte_tokens = (self.byte_tokens + dt * rate).min(cap);
            if self.byte_tokens < cost as f64 {
                wait = wait.max((cost as f64 - self.byte_tokens) / rate);
            }
        }
        Duration::from_secs_f64(wait)
    }

    fn pay(&mut self, conf: &ClassConf, cost: u64) {
        if conf.iops.is_some() {
            self.ops_tokens -= 1.0;
        }
        if conf.bps.is_some() {
            self.byte_tokens -= cost as f64;
        }
    }
}

/// Bytes in the device, of all classes.
#[derive(Clone, Copy, Default)]
struct InDevice {
    bytes: u64,
    /// Of which writes.
    writes: u64,
}

impl InDevice {
    /// Whether the in-flight caps hold back a request of `bytes` of a class with `inflight`
    /// requests in the device: the shared `cap`, and for a write beside a reader its class's
    /// `write_budget` ([`write_limits`]). A class with nothing in flight may always send one.
    fn holds(&self, inflight: u32, bytes: u64, cap: u64, write_budget: Option<u64>) -> bool {
        inflight > 0
            && (self.bytes + bytes > cap || write_budget.is_some_and(|b| self.writes + bytes > b))
    }

    fn add(&mut self, write: bool, bytes: u64) {
        self.bytes += bytes;
        if write {
            self.writes += bytes;
        }
    }

    fn remove(&mut self, write: bool, bytes: u64) {
        self.bytes = self.bytes.saturating_sub(bytes);
        if write {
            self.writes = self.writes.saturating_sub(bytes);
        }
    }
}

#[derive(Default)]
struct State {
    classes: HashMap<Slot, Class>,
    /// Backlogged classes, in round-robin order.
    turn: VecDeque<Slot>,
    conf: HashMap<Slot, ClassConf>,
    in_device: InDevice,
    /// Fifo policy: one queue.
    fifo: VecDeque<IoReq>,
}

impl State {
    /// A class's weight ([`DEFAULT_WEIGHT`] unless configured).
    fn weight(&self, slot: Slot) -> u32 {
        self.conf.get(&slot).map_or(DEFAULT_WEIGHT, |c| c.weight)
    }

    /// Bytes that may be in the device at once: [`SHARED_INFLIGHT_BYTES`] while more than one
    /// class is active, else no limit.
    /// `also`: a class to count as active whatever its state (one about to send).
    fn inflight_cap(&self, now: Instant, also: Option<Slot>) -> u64 {
        let active = self
            .classes
            .iter()
            .filter(|(slot, c)| {
                Some(**slot) == also
                    || !c.queue.is_empty()
                    || c.inflight > 0
                    || now - c.last_sent < ACTIVE_WINDOW
            })
            .count()
            + usize::from(also.is_some_and(|s| !self.classes.contains_key(&s)));
        if active > 1 {
            SHARED_INFLIGHT_BYTES
        } else {
            u64::MAX
        }
    }

    /// The heaviest weight of the classes other than `except` that read (a read queued or in
    /// flight, or one sent in the last [`ACTIVE_WINDOW`]), if any: their reads would wait
    /// behind the writes in the device.
    fn reader_near(&self, now: Instant, except: Slot) -> Option<u32> {
        heaviest_except(&self.top_readers(now), except)
    }

    /// The two heaviest classes that read (see [`State::reader_near`]), heaviest first: "the
    /// heaviest reader other than X" for any X, from one pass over the classes.
    fn top_readers(&self, now: Instant) -> [Option<(Slot, u32)>; 2] {
        let mut top: [Option<(Slot, u32)>; 2] = [None, None];
        for (slot, c) in &self.classes {
            if !(c.reads_queued > 0 || c.reads_inflight > 0 || now - c.last_read < ACTIVE_WINDOW) {
                continue;
            }
            let w = self.weight(*slot);
            if top[0].is_none_or(|(_, w0)| w > w0) {
                top[1] = top[0];
                top[0] = Some((*slot, w));
            } else if top[1].is_none_or(|(_, w1)| w > w1) {
                top[1] = Some((*slot, w));
            }
        }
        top
    }

    /// Whether backlogged class `slot` could send its head request now: not held by its
    /// tokens, and the in-flight caps of [`Sched::next`] have room for it (for a write beside
    /// a reader: its first piece). `reader`: the heaviest weight of the other classes that
    /// read, counting one about to send a read.
    fn could_send(&self, slot: Slot, cap: u64, reader: Option<u32>) -> bool {
        let Some(c) = self.classes.get(&slot) else {
            return false;
        };
        let Some((head, _)) = c.queue.front() else {
            return false;
        };
        if c.throttled_since.is_some() {
            return false;
        }
        let mut bytes = cost(head);
        let mut write_budget = None;
        if head.is_write() {
            if let Some(r) = reader {
                let (piece, budget) = write_limits(self.weight(slot), r);
                bytes = bytes.min(piece);
                write_budget = Some(budget);
            }
        }
        !self.in_device.holds(c.inflight, bytes, cap, write_budget)
    }

    /// Count `req` of class `c` as sent.
    fn count_sent(&mut self, slot: Slot, req: &IoReq, now: Instant) {
        self.in_device.add(req.is_write(), cost(req));
        if req.is_write() {
            return;
        }
        if let Some(c) = self.classes.get_mut(&slot) {
            c.reads_inflight += 1;
            c.last_read = now;
        }
    }
}

/// The weight of the heaviest of `top` (from [`State::top_readers`]) that is not `except`.
fn heaviest_except(top: &[Option<(Slot, u32)>; 2], except: Slot) -> Option<u32> {
    top.iter()
        .flatten()
        .find(|(s, _)| *s != except)
        .map(|(_, w)| *w)
}

/// How a class of weight `weight` writes while a class of weight `reader` reads: the largest
/// write piece, and the bytes of its writes in the device at once. At equal weights
/// [`SPLIT_WRITE_BYTES`] and [`READER_WRITE_INFLIGHT_BYTES`]; both scale with
/// `weight / reader` (a reader of weight 1000 beside a writer of 100: pieces of
/// [`MIN_SPLIT_WRITE_BYTES`], one at a time), up to [`SHARED_INFLIGHT_BYTES`].
fn write_limits(weight: u32, reader: u32) -> (u64, u64) {
    let scale = |b: u64| u128::from(b) * u128::from(weight.max(1)) / u128::from(reader.max(1));
    let block = BLOCK_SIZE as u64;
    let piece = scale(SPLIT_WRITE_BYTES).clamp(
        u128::from(MIN_SPLIT_WRITE_BYTES),
        u128::from(SHARED_INFLIGHT_BYTES),
    ) as u64
        / block
        * block;
    let budget = scale(READER_WRITE_INFLIGHT_BYTES)
        .clamp(u128::from(piece), u128::from(SHARED_INFLIGHT_BYTES)) as u64;
    (piece, budget)
}

/// What a worker should do next.
pub(crate) enum Next {
    /// Send this request to the device.
    Send(IoReq),
    /// Requests are held back by their classes' limits: ask again after this long.
    Wait(Duration),
    /// Nothing to send now (queues empty, or waiting for completions).
    Idle,
}

pub(crate) struct Sched {
    state: Mutex<State>,
    policy: Policy,
    /// The ring's count of operations in flight (submitted, not yet completed): a write
    /// split into pieces adds its extra pieces to it, since each piece completes alone.
    ops: Arc<AtomicU64>,
}

fn cost(r: &IoReq) -> u64 {
    r.buf.len() as u64
}

impl Sched {
    /// A scheduler counting split pieces only for itself (tests).
    #[cfg(test)]
    pub(crate) fn new(policy: Policy) -> Sched {
        Sched::counting(policy, Arc::new(AtomicU64::new(0)))
    }

    /// A scheduler whose split writes add their extra pieces to `ops`.
    pub(crate) fn counting(policy: Policy, ops: Arc<AtomicU64>) -> Sched {
        Sched {
            state: Mutex::new(State::default()),
            policy,
            ops,
        }
    }

    pub(crate) fn policy(&self) -> Policy {
        self.policy
    }

    /// Set the weight and limits of the classes that are not the default; the others get it.
    pub(crate) fn configure(&self, conf: HashMap<Slot, ClassConf>) {
        self.state.lock().conf = conf;
    }

    pub(crate) fn push(&self, reqs: Vec<IoReq>) {
        let now = Instant::now();
        let mut s = self.state.lock();
        if self.policy == Policy::Fifo {
            s.fifo.extend(reqs);
            return;
        }
        for r in reqs {
            let slot = r.class.slot;
            let c = s.classes.entry(slot).or_insert_with(|| Class::new(now));
            let was_idle = c.queue.is_empty();
            if !r.is_write() {
                c.reads_queued += 1;
            }
            c.queue.push_back((r, now));
            if was_idle {
                s.turn.push_back(slot);
            }
        }
    }

    /// A request of `class` (a write or a read) that cost `bytes` left the device.
    pub(crate) fn done(&self, class: Slot, write: bool, bytes: u64) {
        if self.policy == Policy::Fifo {
            return;
        }
        let mut s = self.state.lock();
        s.in_device.remove(write, bytes);
        let mut forget = false;
        if let Some(c) = s.classes.get_mut(&class) {
            c.inflight = c.inflight.saturating_sub(1);
            if !write {
                c.reads_inflight = c.reads_inflight.saturating_sub(1);
            }
            forget = c.inflight == 0
                && c.queue.is_empty()
                && c.last_sent.elapsed() > ACTIVE_WINDOW * 4
                && c.throttled_since.is_none();
        }
        if forget {
            s.classes.remove(&class);
        }
    }

    /// May `req` go to the device now, without queueing, from the thread that started it
    /// (`local_io`)? Yes when the scheduler would send it at once if it were pushed: no other
    /// class waits with a request that could go now (classes held back by their own limits,
    /// or whose head the in-flight caps hold until their own requests end, do not count:
    /// the scheduler would pass them by too), its class's limits have the tokens, and the
    /// shared in-flight cap has room. Then it counts as sent (tokens paid, in flight): report
    /// its end with [`Sched::done`]. No: push it (and an I/O thread sends it).
    pub(crate) fn admit(&self, req: &IoReq) -> bool {
        let mut s = self.state.lock();
        if self.policy == Policy::Fifo {
            return s.fifo.is_empty();
        }
        let now = Instant::now();
        let st = &mut *s;
        let slot = req.class.slot;
        let conf = st.conf.get(&slot).copied().unwrap_or_default();
        let bytes = cost(req);
        let cap = st.inflight_cap(now, Some(slot));
        let reading = (!req.is_write()).then_some(conf.weight);
        let top = st.top_readers(now);
        let others_waiting = st.turn.iter().any(|&other| {
            other != slot && st.could_send(other, cap, heaviest_except(&top, other).max(reading))
        });
        if others_waiting {
            return false;
        }
        let in_device = st.in_device;
        // Only reads come here (`local_io`); a write would be split and capped in `next`.
        let write_held = req.is_write()
            && st.reader_near(now, slot).is_some_and(|reader| {
                let (piece, budget) = write_limits(conf.weight, reader);
                bytes > piece || in_device.writes + bytes > budget
            });
        let c = st.classes.entry(slot).or_insert_with(|| Class::new(now));
        if write_held
            || !c.queue.is_empty()
            || !c.wait_for_tokens(&conf, bytes, now).is_zero()
            || in_device.holds(c.inflight, bytes, cap, None)
        {
            return false;
        }
        c.pay(&conf, bytes);
        c.inflight += 1;
        c.last_sent = now;
        if let Some(stats) = &req.class.stats {
            stats.io_queue_delay.observe_ns(0);
        }
        st.count_sent(slot, req, now);
        true
    }

    pub(crate) fn pending(&self) -> bool {
        let s = self.state.lock();
        !s.fifo.is_empty() || !s.turn.is_empty()
    }

    /// The next request to send.
    pub(crate) fn next(&self) -> Next {
        let mut s = self.state.lock();
        if self.policy == Policy::Fifo {
            return match s.fifo.pop_front() {
                Some(r) => Next::Send(r),
                None => Next::Idle,
            };
        }
        let now = Instant::now();
        let st = &mut *s;
        if st.turn.is_empty() {
            return Next::Idle;
        }
        let cap = st.inflight_cap(now, None);
        let mut wait: Option<Duration> = None;
        // Each visit either sends, or moves a class to the back (a class short of deficit
        // earns a quantum per visit), so the loop ends.
        let mut visits = st.turn.len() * 8 + 64;
        while visits > 0 {
            visits -= 1;
            let Some(&slot) = st.turn.front() else { break };
            let conf = st.conf.get(&slot).copied().unwrap_or_default();
            let Some(c) = st.classes.get_mut(&slot) else {
                st.turn.pop_front();
                continue;
            };
            if c.queue.is_empty() {
                st.turn.pop_front();
                c.deficit = 0;
                c.credited = false;
                continue;
            }
            // Writes beside a reader: in small pieces, few at a time in the device.
            let head_write = c.queue.front().is_some_and(|h| h.0.is_write());
            let limits = head_write
                .then(|| st.reader_near(now, slot))
                .flatten()
                .map(|reader| write_limits(conf.weight, reader));
            let Some(c) = st.classes.get_mut(&slot) else {
                continue;
            };
            if let Some((piece, _)) =
                limits.filter(|(piece, _)| c.queue.front().is_some_and(|h| cost(&h.0) > *piece))
            {
                if let Some((big, queued)) = c.queue.pop_front() {
                    let pieces = big.split(piece as usize / BLOCK_SIZE);
                    self.ops
                        .fetch_add(pieces.len() as u64 - 1, Ordering::Relaxed);
                    for p in pieces.into_iter().rev() {
                        c.queue.push_front((p, queued));
                    }
                }
            }
            let Some(head) = c.queue.front() else {
                continue;
            };
            let bytes = cost(&head.0);
            let held = c.wait_for_tokens(&conf, bytes, now);
            if !held.is_zero() {
                c.throttled_since.get_or_insert(now);
                wait = Some(wait.map_or(held, |w| w.min(held)));
                st.turn.rotate_left(1);
                if st.turn.iter().all(|s| {
                    st.classes
                        .get(s)
                        .is_some_and(|c| c.throttled_since.is_some())
                }) {
                    break;
                }
                continue;
            }
            if st
                .in_device
                .holds(c.inflight, bytes, cap, limits.map(|(_, budget)| budget))
            {
                // Wait for one of its requests to finish; others may go.
                st.turn.rotate_left(1);
                continue;
            }
            // Deficit round robin: a class at the front of the round earns one quantum, sends
            // while its deficit covers the next request, then goes to the back.
            if c.deficit < bytes as i64 {
                if c.credited {
                    c.credited = false;
                    st.turn.rotate_left(1);
                    continue;
                }
                // At least the head request's size: a request larger than a quantum (a read of
                // many contiguous blocks) must not wait for rounds that nothing drives.
                c.deficit += (QUANTUM_PER_100 * conf.weight as i64 / 100).max(bytes as i64);
                c.credited = true;
                if c.deficit < bytes as i64 {
                    c.credited = false;
                    st.turn.rotate_left(1);
                    continue;
                }
            }
            let Some((req, queued)) = c.queue.pop_front() else {
                continue;
            };
            if !req.is_write() {
                c.reads_queued = c.reads_queued.saturating_sub(1);
            }
            c.deficit -= bytes as i64;
            c.pay(&conf, bytes);
            c.inflight += 1;
            c.last_sent = now;
            if let Some(stats) = &req.class.stats {
                stats
                    .io_queue_delay
                    .observe_ns((now - queued).as_nanos() as u64);
                if let Some(t) = c.throttled_since.take() {
                    stats
                        .io_throttled_ns
                        .fetch_add((now - t).as_nanos() as u64, Ordering::Relaxed);
                }
            } else {
                c.throttled_since = None;
            }
            if c.queue.is_empty() {
                c.deficit = 0;
                c.credited = false;
                st.turn.pop_front();
            }
            st.count_sent(slot, &req, now);
            return Next::Send(req);
        }
        match wait {
            Some(w) => Next::Wait(w.max(Duration::from_micros(50))),
            None => Next::Idle,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::AlignedBuf;
    use crate::ring::{IoBuf, Op};

    fn req(slot: Slot, blocks: usize) -> IoReq {
        IoReq {
            op: Op::Read,
            offset: 0,
            buf: IoBuf::Owned(AlignedBuf::zeroed(blocks)),
            done: Box::new(|_| {}),
            class: IoClass { slot, stats: None },
        }
    }

    fn send(s: &Sched) -> Option<(Slot, u64)> {
        match s.next() {
            Next::Send(r) => Some((r.class.slot, cost(&r))),
            _ => None,
        }
    }

    #[test]
    fn weights_share_the_bytes_sent() {
        let s = Sched::new(Policy::Fair);
        let mut conf = HashMap::new();
        conf.insert(
            2,
            ClassConf {
                weight: 300,
                ..Default::default()
            },
        );
        s.configure(conf);
        s.push((0..400).map(|_| req(1, 16)).collect());
        s.push((0..400).map(|_| req(2, 16)).collect());
        let mut bytes = [0u64; 3];
        for _ in 0..200 {
            let (slot, b) = send(&s).expect("a request");
            bytes[slot as usize] += b;
            s.done(slot, false, b);
        }
        let ratio = bytes[2] as f64 / bytes[1] as f64;
        assert!(
            (2.5..3.5).contains(&ratio),
            "weight 300 vs 100 sent {ratio:.2}x"
        );
    }

    #[test]
    fn a_quiet_class_is_not_stuck_behind_a_noisy_ones_backlog() {
        let s = Sched::new(Policy::Fair);
        // The noisy class fills the device up to the shared cap...
        s.push((0..64).map(|_| req(1, 256)).collect());
        let mut sent = 0;
        while let Some((slot, _)) = send(&s) {
            assert_eq!(slot, 1);
            sent += 1;
        }
        assert!(sent >= 1);
        // ... and a quiet class's request goes at once, though the noisy one has 1 MiB out.
        s.push(vec![req(7, 1)]);
        assert_eq!(send(&s).map(|x| x.0), Some(7));
    }

    #[test]
    fn iops_limits_hold_requests_back() {
        let s = Sched::new(Policy::Fair);
        let mut conf = HashMap::new();
        conf.insert(
            3,
            ClassConf {
                iops: Some(10),
                ..Default::default()
            },
        );
        s.configure(conf);
        s.push((0..5).map(|_| req(3, 1)).collect());
        let (slot, b) = send(&s).expect("the first goes");
        s.done(slot, false, b);
        match s.next() {
            Next::Wait(d) => assert!(d > Duration::from_millis(50), "{d:?}"),
            _ => panic!("the second must wait for a token (10 IOPS)"),
        }
    }

    #[test]
    fn a_request_larger_than_many_quanta_still_goes() {
        let s = Sched::new(Policy::Fair);
        s.push(vec![req(1, 16 << 10)]); // 64 MiB
        assert_eq!(send(&s).map(|x| x.1), Some(64 << 20));
        // The same at the smallest weight: sent at the first ask, not after many.
        let mut conf = HashMap::new();
        conf.insert(
            2,
            ClassConf {
                weight: 1,
                ..Default::default()
            },
        );
        s.configure(conf);
        s.push(vec![req(2, 1024)]);
        assert_eq!(send(&s), Some((2, 4 << 20)));
    }

    #[test]
    fn a_local_request_goes_at_once_only_when_nothing_waits_and_limits_allow() {
        let s = Sched::new(Policy::Fair);
        let mut conf = HashMap::new();
        conf.insert(
            3,
            ClassConf {
                iops: Some(10),
                ..Default::default()
            },
        );
        s.configure(conf);
        // Nothing queued: it goes, and counts as in flight until done.
        let r = req(1, 1);
        assert!(s.admit(&r));
        s.done(1, false, cost(&r));
        // A limited class spends its token locally; the next must wait in the queue.
        assert!(s.admit(&req(3, 1)));
        assert!(!s.admit(&req(3, 1)));
        // Another class's backlog comes first.
        s.push(vec![req(2, 1)]);
        assert!(!s.admit(&req(1, 1)));
        assert_eq!(send(&s).map(|x| x.0), Some(2));
        assert!(s.admit(&req(1, 1)));
    }

    #[test]
    fn a_local_read_passes_a_backlog_the_caps_hold() {
        let (tx, _rx) = std::sync::mpsc::channel();
        let s = Sched::new(Policy::Fair);
        // Layer 7 reads; layer 1 queues 1 MiB writes beside it: two pieces go, the rest
        // waits for them.
        assert!(s.admit(&req(7, 1)));
        s.done(7, false, 4096);
        s.push(vec![write(1, 256, &tx), write(1, 256, &tx)]);
        let in_device = send_all(&s);
        assert_eq!(in_device.len(), 2);
        // Layer 1's backlog cannot go before a piece ends, so the scheduler would send a
        // read of layer 7 at once: it goes from the thread that started it.
        assert!(s.admit(&req(7, 1)));
        s.done(7, false, 4096);
        // One piece done: layer 1's next piece could go, so a read now takes its turn in
        // the queue.
        let mut in_device = VecDeque::from(in_device);
        complete(&s, in_device.pop_front().unwrap(), false);
        assert!(!s.admit(&req(7, 1)));
        // A third layer's own backlog that could go also comes first.
        let s = Sched::new(Policy::Fair);
        s.push(vec![req(2, 1)]);
        assert!(!s.admit(&req(7, 1)));
    }

    /// A write of `blocks` blocks of one shared buffer; its callback's outcome goes to `tx`
    /// (the length it was handed back, or the error).
    fn write(
        slot: Slot,
        blocks: usize,
        tx: &std::sync::mpsc::Sender<std::io::Result<usize>>,
    ) -> IoReq {
        let tx = tx.clone();
        IoReq {
            op: Op::Write,
            offset: 1 << 30,
            buf: IoBuf::Shared {
                buf: Arc::new(AlignedBuf::zeroed(blocks + 3)),
                first: 3,
                n: blocks,
            },
            done: Box::new(move |r| {
                let _ = tx.send(r.map(|b| b.len()));
            }),
            class: IoClass { slot, stats: None },
        }
    }

    /// Send everything the scheduler lets go now.
    fn send_all(s: &Sched) -> Vec<IoReq> {
        let mut out = Vec::new();
        while let Next::Send(r) = s.next() {
            out.push(r);
        }
        out
    }

    /// Complete `r` as the device would (`err`: with an error) and tell the scheduler.
    fn complete(s: &Sched, r: IoReq, err: bool) {
        s.done(r.class.slot, r.is_write(), cost(&r));
        let IoReq { buf, done, .. } = r;
        done(if err {
            Err(std::io::Error::other("injected"))
        } else {
            Ok(buf)
        });
    }

    const PIECE: usize = SPLIT_WRITE_BYTES as usize / BLOCK_SIZE;

    #[test]
    fn beside_a_reader_a_large_write_goes_in_pieces_and_few_at_a_time() {
        let (tx, rx) = std::sync::mpsc::channel();
        let s = Sched::new(Policy::Fair);
        // Layer 7 reads (one 4 KiB read sent and done: it stays a reader for a while).
        s.push(vec![req(7, 1)]);
        assert_eq!(send(&s), Some((7, 4096)));
        s.done(7, false, 4096);
        // Layer 1 writes 1 MiB: it goes as SPLIT_WRITE_BYTES pieces, at most
        // READER_WRITE_INFLIGHT_BYTES in the device.
        s.push(vec![write(1, 256, &tx)]);
        let first = send_all(&s);
        let sizes: Vec<u64> = first.iter().map(cost).collect();
        assert_eq!(
            sizes,
            vec![SPLIT_WRITE_BYTES; (READER_WRITE_INFLIGHT_BYTES / SPLIT_WRITE_BYTES) as usize]
        );
        // The pieces are the write's blocks, in order, from the same buffer.
        let mut offsets: Vec<u64> = first.iter().map(|r| r.offset).collect();
        let mut in_device: VecDeque<IoReq> = first.into();
        // A read of the reader goes at once though the write cap is full; so does one of a
        // third layer.
        s.push(vec![req(7, 1), req(8, 1)]);
        let reads = send_all(&s);
        assert_eq!(
            reads.iter().map(|r| r.class.slot).collect::<Vec<_>>(),
            [7, 8]
        );
        // One piece done: one more goes, and so on until the write is all out.
        while offsets.len() < 256 / PIECE {
            complete(&s, in_device.pop_front().expect("a piece"), false);
            assert!(rx.try_recv().is_err(), "the write ends with its last piece");
            let more = send_all(&s);
            assert_eq!(more.len(), 1);
            offsets.push(more[0].offset);
            in_device.extend(more);
        }
        // Each extra piece counts as an operation in flight of its own.
        assert_eq!(s.ops.load(Ordering::Relaxed), (256 / PIECE - 1) as u64);
        // (Pieces sent so far: all; offsets cover the write in order.)
        let want: Vec<u64> = (0..256 / PIECE)
            .map(|k| (1 << 30) + (k * PIECE * BLOCK_SIZE) as u64)
            .collect();
        assert_eq!(offsets, want);
        for p in in_device {
            complete(&s, p, false);
        }
        // The write's own callback ran once, with the whole buffer.
        assert_eq!(rx.try_recv().expect("done").expect("ok"), 1 << 20);
        assert!(rx.try_recv().is_err());
        for r in reads {
            complete(&s, r, false);
        }
    }

    #[test]
    fn beside_a_heavier_reader_writes_go_in_smaller_pieces_one_at_a_time() {
        assert_eq!(
            write_limits(100, 100),
            (SPLIT_WRITE_BYTES, READER_WRITE_INFLIGHT_BYTES)
        );
        assert_eq!(write_limits(100, 200), (32 << 10, 64 << 10));
        assert_eq!(
            write_limits(100, 1000),
            (MIN_SPLIT_WRITE_BYTES, MIN_SPLIT_WRITE_BYTES)
        );
        assert_eq!(write_limits(1, 10_000), write_limits(100, 1000));
        // A writer heavier than the reader gets more, up to the shared cap.
        assert_eq!(write_limits(1000, 100), (640 << 10, SHARED_INFLIGHT_BYTES));
        assert_eq!(
            write_limits(10_000, 1),
            (SHARED_INFLIGHT_BYTES, SHARED_INFLIGHT_BYTES)
        );

        let (tx, rx) = std::sync::mpsc::channel();
        let s = Sched::new(Policy::Fair);
        let conf = |weight| ClassConf {
            weight,
            ..ClassConf::default()
        };
        s.configure(HashMap::from([(7, conf(1000)), (1, conf(100))]));
        s.push(vec![req(7, 1)]);
        assert_eq!(send(&s), Some((7, 4096)));
        s.done(7, false, 4096);
        // Layer 1 (weight 100) writes 1 MiB beside layer 7 (weight 1000) reading: 16 KiB
        // pieces, one in the device at a time.
        s.push(vec![write(1, 256, &tx)]);
        let mut sent = 0;
        while sent < (1 << 20) {
            let now = send_all(&s);
            assert_eq!(
                now.iter().map(cost).collect::<Vec<_>>(),
                [MIN_SPLIT_WRITE_BYTES]
            );
            sent += MIN_SPLIT_WRITE_BYTES;
            for r in now {
                complete(&s, r, false);
            }
        }
        assert_eq!(rx.try_recv().expect("done").expect("ok"), 1 << 20);

        // The heaviest reader other than a class: one pass finds it for every class.
        s.configure(HashMap::from([
            (7, conf(1000)),
            (8, conf(500)),
            (9, conf(100)),
        ]));
        for slot in [7, 8, 9] {
            s.push(vec![req(slot, 1)]);
            assert_eq!(send(&s).map(|x| x.0), Some(slot));
            s.done(slot, false, 4096);
        }
        let st = s.state.lock();
        let now = Instant::now();
        assert_eq!(st.reader_near(now, 7), Some(500));
        assert_eq!(st.reader_near(now, 8), Some(1000));
        assert_eq!(st.reader_near(now, 1), Some(1000));
    }

    #[test]
    fn a_failed_piece_fails_the_write_once_after_the_last_piece() {
        let (tx, rx) = std::sync::mpsc::channel();
        let pieces = write(1, 3 * PIECE + 1, &tx).split(PIECE);
        assert_eq!(
            pieces
                .iter()
                .map(|p| p.buf.len() / BLOCK_SIZE)
                .collect::<Vec<_>>(),
            [PIECE, PIECE, PIECE, 1]
        );
        let s = Sched::new(Policy::Fair);
        for (k, p) in pieces.into_iter().enumerate() {
            assert!(rx.try_recv().is_err());
            complete(&s, p, k == 1);
        }
        assert!(rx.try_recv().expect("done once").is_err());
        assert!(rx.try_recv().is_err());
        // Reads and small writes are not split.
        assert_eq!(req(1, 256).split(PIECE).len(), 1);
        assert_eq!(write(1, PIECE, &tx).split(PIECE).len(), 1);
    }

    #[test]
    fn without_a_reader_a_write_goes_whole_and_the_cap_lifts_when_reads_stop() {
        let (tx, _rx) = std::sync::mpsc::channel();
        let s = Sched::new(Policy::Fair);
        // Alone: 1 MiB writes go whole, as many as are queued.
        s.push((0..4).map(|_| write(1, 256, &tx)).collect());
        let sent = send_all(&s);
        assert_eq!(sent.iter().map(cost).collect::<Vec<_>>(), [1 << 20; 4]);
        for r in sent {
            complete(&s, r, false);
        }
        // The layer's own reads do not hold its writes back.
        s.push(vec![req(1, 1)]);
        let r = send_all(&s);
        s.push(vec![write(1, 256, &tx)]);
        assert_eq!(send(&s).map(|x| x.1), Some(1 << 20));
        s.done(1, true, 1 << 20);
        for r in r {
            complete(&s, r, false);
        }
        // Another layer read: pieces...
        s.push(vec![req(2, 1)]);
        let r = send_all(&s);
        for r in r {
            complete(&s, r, false);
        }
        s.push(vec![write(1, 256, &tx)]);
        assert_eq!(send(&s).map(|x| x.1), Some(SPLIT_WRITE_BYTES));
        // ... until it has not read for the active window: then whole writes again.
        std::thread::sleep(ACTIVE_WINDOW * 2);
        s.push(vec![write(1, 256, &tx)]);
        let rest = send_all(&s);
        assert_eq!(rest.len(), 256 / PIECE - 1 + 1);
        assert_eq!(rest.last().map(cost), Some(1 << 20));
    }

    #[test]
    fn fifo_never_splits_or_caps_writes() {
        let (tx, _rx) = std::sync::mpsc::channel();
        let s = Sched::new(Policy::Fifo);
        s.push(vec![req(7, 1), write(1, 256, &tx), write(1, 256, &tx)]);
        let sizes: Vec<u64> = send_all(&s).iter().map(cost).collect();
        assert_eq!(sizes, [4096, 1 << 20, 1 << 20]);
    }

    #[test]
    fn fifo_keeps_arrival_order() {
        let s = Sched::new(Policy::Fifo);
        s.push(vec![req(1, 1), req(2, 1), req(1, 1)]);
        let order: Vec<Slot> = (0..3).filter_map(|_| send(&s).map(|x| x.0)).collect();
        assert_eq!(order, vec![1, 2, 1]);
        assert!(!s.pending());
    }
}
