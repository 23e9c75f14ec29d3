//! Waiting awake: a thread that has device I/O of its own in flight and nothing else to do
//! may poll for its completion for a short while instead of sleeping; a FUSE queue thread
//! that has just answered may poll for its client's next request.
//!
//! A thread asleep in io_uring_enter is woken by the disk's interrupt; on a virtual machine
//! whose CPU halted meanwhile that wake-up alone costs tens of microseconds (measured on the
//! 2-vCPU test VM: a 4 KiB O_DIRECT read at QD1 took 77 µs from a thread on the CPU the disk
//! does not interrupt, 44 µs polling). Polling yields the CPU between looks and stops as soon
//! as a yield gave the CPU to another thread, so it only takes time nobody else wants; a
//! [`PollGate`] stops it for a while after polls that ran out or were interrupted.
//! Used by the FUSE io_uring queues (their device reads). Tried and dropped for the engine's
//! own I/O threads (which serve /dev/fuse): no gain at QD1 there, where a request also waits
//! for a /dev/fuse worker's wake-up, and 1 MiB sequential reads 12-16 % slower
//! (bench/results/2026-12-02-device-poll/engine-threads/).
//!
//! After a reply, the wake-up of the client that waits for it is the kernel's to place: a
//! CPU that is idle is preferred to the replying thread's busy one, so a client making
//! synchronous requests one after another (a 4 KiB read, a stat, a create) moves to the
//! other CPU on every reply, and each move wakes a halted CPU (40-57 µs on the test VM, by
//! `perf sched timehist`). A queue thread that polls for the next request after its reply
//! keeps its CPU from halting, so the client's next wake-up finds no idle CPU and stays
//! where it was, and the thread sees the request without a wake-up of its own. Measured on
//! the 2-vCPU VM, hot 4 KiB reads of an inherited file at QD1 (fio psync): 23,000-25,000
//! per second without, 70,000-80,000 with a 50 µs poll (as fast as with fio pinned to one
//! CPU), and less daemon CPU per request (14.8 µs without, 11.5 with). The yield between
//! looks gives the CPU to whoever wants it, the client first; a poll counts as missed only
//! when the limit passes, and misses in a row stop it for a while ([`PollGate`]), so a
//! client that pauses longer than the limit costs at most a few polls.

use std::time::{Duration, Instant};

/// How a poll ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Poll {
    /// What was waited for is there.
    Got,
    /// The limit passed first.
    Missed,
    /// Another thread wanted the CPU.
    Contended,
}

/// A sched_yield that took this long may have given the CPU to another thread: whether it
/// did is then asked of the kernel ([`switches`]). A long yield alone is no proof on a
/// virtual machine: an interrupt, or the host running something else on this vCPU, makes
/// one take tens of microseconds with no other thread of the guest wanting the CPU (on the
/// 2-vCPU test VM, 13 % of the queue threads' polls for a QD1 read ended so, and each
/// stopped polling for the next [`PollGate::YIELD_BACKOFF`] waits).
const YIELDED: Duration = Duration::from_micros(10);

/// How many times the kernel took this thread off the CPU for another thread without it
/// sleeping (a sched_yield that ran someone else counts; one that found nobody does not).
fn switches() -> i64 {
    // SAFETY: an all-zero rusage is valid; getrusage writes only into it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` outlives the call; RUSAGE_THREAD asks for the calling thread's counts.
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) } != 0 {
        return -1;
    }
    ru.ru_nivcsw
}

/// Call `ready` until it says yes (then [`Poll::Got`]), `limit` passes, or a yield between
/// two calls gave the CPU away.
pub fn poll_for(limit: Duration, ready: impl FnMut() -> bool) -> Poll {
    poll(limit, true, ready)
}

/// Call `ready` until it says yes or `limit` passes, yielding between calls, also when a
/// yield gave the CPU away: for a wait whose answer comes from the thread the CPU is given
/// to (a FUSE queue thread waiting for its client's next request, see the module doc).
pub fn poll_yielding(limit: Duration, ready: impl FnMut() -> bool) -> Poll {
    poll(limit, false, ready)
}

fn poll(limit: Duration, stop_when_yielded: bool, mut ready: impl FnMut() -> bool) -> Poll {
    let start = Instant::now();
    // This thread's switches before its first yield (not needed for poll_yielding).
    let mut seen = None;
    loop {
        if ready() {
            return Poll::Got;
        }
        if start.elapsed() >= limit {
            return Poll::Missed;
        }
        if stop_when_yielded && seen.is_none() {
            seen = Some(switches());
        }
        let before = Instant::now();
        // SAFETY: sched_yield has no arguments and cannot fail in a way that matters here.
        unsafe { libc::sched_yield() };
        if stop_when_yielded && before.elapsed() >= YIELDED {
            let now = switches();
            if now < 0 || Some(now) != seen {
                return Poll::Contended;
            }
        }
    }
}

/// When a thread polls: for at most `limit` each time. After a poll that another thread
/// interrupted (the CPU is wanted) it sleeps at once for its next
/// [`PollGate::YIELD_BACKOFF`] waits; after [`PollGate::MISSES`] polls in a row that ran out
/// (a device slower than the limit), for its next [`PollGate::BACKOFF`]; then it tries again.
#[derive(Debug)]
pub struct PollGate {
    limit: Duration,
    missed: u32,
    skip: u32,
}

impl PollGate {
    pub const MISSES: u32 = 8;
    pub const BACKOFF: u32 = 256;
    /// Waits without polling after a poll another thread interrupted: short, as a host's
    /// own threads (kernel workers, the daemon's commit thread) take a CPU now and then.
    pub const YIELD_BACKOFF: u32 = 16;

    /// `limit` zero: never poll.
    pub fn new(limit: Duration) -> PollGate {
        PollGate {
            limit,
            missed: 0,
            skip: 0,
        }
    }

    pub fn limit(&self) -> Duration {
        self.limit
    }

    /// Whether to poll this time.
    pub fn worth(&mut self) -> bool {
        if self.limit.is_zero() {
            return false;
        }
        if self.skip > 0 {
            self.skip -= 1;
            return false;
        }
        true
    }

    /// How the poll went.
    pub fn result(&mut self, how: Poll) {
        match how {
            Poll::Got => self.missed = 0,
            Poll::Missed => {
                self.missed += 1;
                if self.missed >= Self::MISSES {
                    self.missed = 0;
                    self.skip = Self::BACKOFF;
                }
            }
            Poll::Contended => {
                self.missed = 0;
                self.skip = Self::YIELD_BACKOFF;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polling_backs_off_after_misses_in_a_row_or_a_contended_cpu_and_comes_back() {
        let mut off = PollGate::new(Duration::ZERO);
        assert!(!off.worth(), "a limit of 0 never polls");
        let mut g = PollGate::new(Duration::from_micros(100));
        // Misses short of the row do not stop it; a hit starts the count again.
        for _ in 0..PollGate::MISSES - 1 {
            assert!(g.worth());
            g.result(Poll::Missed);
        }
        assert!(g.worth());
        g.result(Poll::Got);
        for _ in 0..PollGate::MISSES {
            assert!(g.worth());
            g.result(Poll::Missed);
        }
        // A device slower than the limit: sleep at once for a while.
        for _ in 0..PollGate::BACKOFF {
            assert!(!g.worth());
        }
        assert!(g.worth(), "polls again after the back-off");
        // Another thread wanted the CPU: one such poll is enough to stop for a while.
        g.result(Poll::Contended);
        for _ in 0..PollGate::YIELD_BACKOFF {
            assert!(!g.worth());
        }
        assert!(g.worth());
    }

    #[test]
    fn poll_for_returns_what_it_saw() {
        type PollFn = fn(Duration, &mut dyn FnMut() -> bool) -> Poll;
        let both: [PollFn; 2] = [|l, r| poll_for(l, r), |l, r| poll_yielding(l, r)];
        for poll in both {
            let mut n = 0;
            let mut third = || {
                n += 1;
                n == 3
            };
            assert_eq!(poll(Duration::from_secs(5), &mut third), Poll::Got);
        }
        let p = poll_for(Duration::from_micros(50), || false);
        assert!(matches!(p, Poll::Missed | Poll::Contended), "{p:?}");
        // A thread on the same CPU that takes it at each yield does not end the poll (as it
        // ends poll_for's): only the limit does.
        let pin = |cpu: usize| {
            // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET stays within it.
            let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
            // SAFETY: `cpu` is below CPU_SETSIZE (a CPU number the kernel gave).
            unsafe { libc::CPU_SET(cpu, &mut set) };
            // SAFETY: the set lives across the call; 0 is the calling thread.
            unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) }
        };
        // SAFETY: no arguments.
        let cpu = unsafe { libc::sched_getcpu() }.max(0) as usize;
        // SAFETY: as above; the old mask is restored at the end.
        let mut old: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: the set lives across the call; 0 is the calling thread.
        unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&old), &mut old) };
        assert_eq!(pin(cpu), 0);
        let hog = std::thread::spawn(move || {
            let t = Instant::now();
            while t.elapsed() < Duration::from_millis(200) {
                std::hint::spin_loop();
            }
        });
        let t = Instant::now();
        assert_eq!(
            poll_yielding(Duration::from_millis(5), || false),
            Poll::Missed
        );
        assert!(t.elapsed() >= Duration::from_millis(5));
        // poll_for stops as soon as a yield ran the other thread (its switches went up).
        let t = Instant::now();
        assert_eq!(poll_for(Duration::from_secs(2), || false), Poll::Contended);
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        hog.join().expect("hog");
        // SAFETY: as above.
        unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&old), &old) };
    }
}
