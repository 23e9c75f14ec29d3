//! Scrub: read every mapped data block once and check it against its checksum.
//!
//! The blocks to check are the ones some layer owns (every mapped block is owned by exactly
//! one layer, so a block shared by a thousand layers is read once), sorted by physical block
//! and read in large pieces (up to [`PIECE_BLOCKS`], small gaps read through) with several
//! reads in flight through the io_uring threads, which also compute the checksums. A block
//! that does not match (or cannot be read) is reported with every layer and path that maps it.
//!
//! Offline ([`scrub_offline`], `strata scrub IMAGE`) it works on a recovered image. Online
//! ([`crate::Engine::scrub_start`], `POST /v1/scrub`) it runs in a background thread at a
//! rate limit, beside the file system's own I/O: the blocks to check come from a snapshot of
//! the layers taken at the start (O(1)), and each piece is pinned before it is read — under
//! the metadata lock its blocks' current checksums are taken (a block freed since the start
//! is skipped, one reused since is checked against its new checksum), blocks whose new data
//! is still on its way to the device are skipped, and the read joins the current data epoch,
//! so no block can be freed and reused under it. A mismatch found this way is real.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::crc::block_crc;
use crate::data::EpochToken;
use crate::device::{AlignedBuf, Device};
use crate::engine::{Engine, Inner};
use crate::error::{Error, Result};
use crate::format::{Time, BLOCK, BLOCK_SIZE, ROOT_INO};
use crate::layer::Layers;
use crate::meta::{Content, Ino, Slot, Tree};
use crate::ring::{IoBuf, IoReq, Op, Ring};
use crate::sched::IoClass;

/// Largest read (1 MiB).
pub const PIECE_BLOCKS: u64 = 256;
/// Unmapped blocks between two runs that are read through rather than split the read.
const GAP_BLOCKS: u64 = 16;
/// Reads in flight at once.
const QUEUE: usize = 16;
/// The scheduler class of scrub reads (not a layer's: the fair queue shares the device
/// between it and the layers).
const SCRUB_CLASS: Slot = Slot::MAX;
/// Most bad blocks a report lists (all are counted).
pub const MAX_LISTED: usize = 1000;

/// How to scrub.
#[derive(Clone, Copy, Debug, Default)]
pub struct ScrubOptions {
    /// Bytes per second at most (None: as fast as the device goes).
    pub rate_bytes: Option<u64>,
}

/// A layer and file that maps a bad block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockUser {
    pub layer: String,
    /// The path in the layer (`/dir/file`), or `(inode N, not linked)`.
    pub path: String,
    pub ino: Ino,
    /// Logical block of the file.
    pub lblk: u64,
}

/// A block that failed its check.
#[derive(Clone, Debug)]
pub struct BadBlock {
    pub pblk: u64,
    /// The recorded checksum (None: the block has none).
    pub expected: Option<u32>,
    /// The checksum of what the device returned (None: the read failed).
    pub got: Option<u32>,
    pub users: Vec<BlockUser>,
}

/// What a scrub found (so far, while it runs).
#[derive(Clone, Debug, Default)]
pub struct ScrubReport {
    /// Data blocks to check.
    pub total_blocks: u64,
    /// Data blocks checked.
    pub checked_blocks: u64,
    /// Blocks freed or rewritten while an online scrub ran, so not checked.
    pub skipped_blocks: u64,
    /// Bad blocks found (all of them).
    pub bad_count: u64,
    /// The first [`MAX_LISTED`] bad blocks, with the layers and paths that map them (filled
    /// in when the scrub finishes).
    pub bad: Vec<BadBlock>,
    /// Bytes read from the device (gaps included).
    pub read_bytes: u64,
    pub seconds: f64,
    pub rate_bytes: Option<u64>,
}

impl ScrubReport {
    pub fn is_clean(&self) -> bool {
        self.bad_count == 0
    }
    /// Bytes of data checked per second.
    pub fn throughput(&self) -> f64 {
        if self.seconds > 0.0 {
            (self.checked_blocks * BLOCK) as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// Where an online scrub is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScrubState {
    Running,
    Done,
    Cancelled,
    Failed,
}

impl ScrubState {
    pub fn as_str(self) -> &'static str {
        match self {
            ScrubState::Running => "running",
            ScrubState::Done => "done",
            ScrubState::Cancelled => "cancelled",
            ScrubState::Failed => "failed",
        }
    }
}

/// The current or last online scrub.
#[derive(Clone, Debug)]
pub struct ScrubStatus {
    pub state: ScrubState,
    pub started: Time,
    pub finished: Option<Time>,
    pub report: ScrubReport,
    /// Why it failed.
    pub error: Option<String>,
}

/// The engine's online scrub: its status and the thread running it.
#[derive(Default)]
pub(crate) struct Scrubber {
    pub(crate) status: Mutex<Option<ScrubStatus>>,
    pub(crate) cancel: AtomicBool,
    pub(crate) thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// One read: blocks `[pblk, pblk + n)`, of which the runs `check` (offset in the read,
/// blocks) are mapped; gaps between them are read and ignored.
struct Piece {
    pblk: u64,
    n: u64,
    check: Vec<(u64, u64)>,
}

impl Piece {
    /// Offsets of the blocks to check.
    fn offsets(&self) -> impl Iterator<Item = u64> + '_ {
        self.check.iter().flat_map(|(o, n)| *o..*o + *n)
    }
}

/// The blocks to check, as reads: every block owned by a layer, once, in order.
fn pieces(layers: &Layers) -> (Vec<Piece>, u64) {
    let mut ext: Vec<(u64, u64)> = layers
        .topo_order()
        .into_iter()
        .flat_map(|s| layers.owned_extents(s))
        .collect();
    ext.sort_unstable();
    let mut out: Vec<Piece> = Vec::new();
    let mut total = 0;
    for (mut b, n) in ext {
        let end = b + n;
        if let Some(p) = out.last() {
            // A block owned twice (fsck reports it) is checked once.
            b = b.max(p.pblk + p.n);
        }
        while b < end {
            let joined = match out.last_mut() {
                Some(p) if b - (p.pblk + p.n) <= GAP_BLOCKS && b - p.pblk < PIECE_BLOCKS => {
                    let k = (end - b).min(PIECE_BLOCKS - (b - p.pblk));
                    p.check.push((b - p.pblk, k));
                    p.n = b + k - p.pblk;
                    k
                }
                _ => 0,
            };
            let k = if joined > 0 {
                joined
            } else {
                let k = (end - b).min(PIECE_BLOCKS);
                out.push(Piece {
                    pblk: b,
                    n: k,
                    check: vec![(0, k)],
                });
                k
            };
            total += k;
            b += k;
        }
    }
    (out, total)
}

/// A bad block found by a read: (block, expected, got).
type Found = (u64, Option<u32>, Option<u32>);

/// The result of one read, sent back to the scrub loop.
struct Done {
    checked: u64,
    skipped: u64,
    bytes: u64,
    bad: Vec<Found>,
}

/// What the scrub loop needs from its surroundings: the pinned checksums of a piece.
trait Pin {
    /// The current checksums of `p`'s blocks to check (None: skip it), and a guard that
    /// keeps them from being reused until dropped.
    fn pin(&self, p: &Piece) -> (Vec<Option<Option<u32>>>, Option<EpochToken>);
}

/// Offline: the recovered layers are all there is.
struct Offline<'a>(&'a Layers);

impl Pin for Offline<'_> {
    fn pin(&self, p: &Piece) -> (Vec<Option<Option<u32>>>, Option<EpochToken>) {
        let v = p
            .offsets()
            .map(|k| Some(self.0.crcs.get(p.pblk + k)))
            .collect();
        (v, None)
    }
}

/// Online: see the module comment.
struct Online<'a>(&'a Arc<Inner>);

impl Pin for Online<'_> {
    fn pin(&self, p: &Piece) -> (Vec<Option<Option<u32>>>, Option<EpochToken>) {
        let m = self.0.meta.lock();
        let v = p
            .offsets()
            .map(|k| {
                let b = p.pblk + k;
                match m.layers.crcs.get(b) {
                    // Freed since the scrub started (a mapped block without a checksum is
                    // what fsck and the offline scrub report).
                    None => None,
                    // Its new data is on its way to the device.
                    Some(_) if self.0.inflight.any_in_flight(&[(b, 1)]) => None,
                    c => Some(c),
                }
            })
            .collect();
        let token = EpochToken::join(self.0, m.epoch);
        (v, Some(token))
    }
}

/// Read and check every piece. `progress` sees the report after each read; `cancel` stops it.
fn run(
    ring: &Ring,
    pin: &dyn Pin,
    list: Vec<Piece>,
    total: u64,
    opts: ScrubOptions,
    cancel: &AtomicBool,
    mut progress: impl FnMut(&ScrubReport),
) -> ScrubReport {
    let t0 = Instant::now();
    let mut r = ScrubReport {
        total_blocks: total,
        rate_bytes: opts.rate_bytes,
        ..Default::default()
    };
    let (tx, rx) = mpsc::channel::<Done>();
    let mut inflight = 0usize;
    // Token bucket of the rate limit: a tenth of a second of burst.
    let mut tokens = 0f64;
    let mut refilled = Instant::now();
    let mut absorb = |d: Done, r: &mut ScrubReport| {
        r.checked_blocks += d.checked;
        r.skipped_blocks += d.skipped;
        r.read_bytes += d.bytes;
        for (b, e, g) in d.bad {
            r.bad_count += 1;
            if r.bad.len() < MAX_LISTED {
                r.bad.push(BadBlock {
                    pblk: b,
                    expected: e,
                    got: g,
                    users: Vec::new(),
                });
            }
        }
        r.seconds = t0.elapsed().as_secs_f64();
        progress(r);
    };
    for p in list {
        if cancel.load(Ordering::Relaxed) {
            break;
        }
        if let Some(rate) = opts.rate_bytes {
            let cost = (p.n * BLOCK) as f64;
            loop {
                let now = Instant::now();
                let rate = rate.max(BLOCK) as f64;
                tokens = (tokens + now.duration_since(refilled).as_secs_f64() * rate)
                    .min((rate / 10.0).max(cost));
                refilled = now;
                if tokens >= cost {
                    tokens -= cost;
                    break;
                }
                let wait = Duration::from_secs_f64((cost - tokens) / rate);
                std::thread::sleep(wait.min(Duration::from_millis(100)));
                if cancel.load(Ordering::Relaxed) {
                    break;
                }
            }
        }
        while inflight >= QUEUE {
            match rx.recv() {
                Ok(d) => {
                    inflight -= 1;
                    absorb(d, &mut r);
                }
                Err(_) => break,
            }
        }
        let (want, token) = pin.pin(&p);
        let skipped = want.iter().filter(|w| w.is_none()).count() as u64;
        if skipped == want.len() as u64 {
            absorb(
                Done {
                    checked: 0,
                    skipped,
                    bytes: 0,
                    bad: Vec::new(),
                },
                &mut r,
            );
            continue;
        }
        let tx = tx.clone();
        let check: Vec<u64> = p.offsets().collect();
        let (pblk, n) = (p.pblk, p.n);
        inflight += 1;
        ring.submit(vec![IoReq {
            op: Op::Read,
            offset: pblk * BLOCK,
            buf: IoBuf::Owned(AlignedBuf::zeroed(n as usize)),
            class: IoClass {
                slot: SCRUB_CLASS,
                stats: None,
            },
            done: Box::new(move |res| {
                let _token = token;
                let mut d = Done {
                    checked: 0,
                    skipped,
                    bytes: n * BLOCK,
                    bad: Vec::new(),
                };
                let buf = res.ok().and_then(IoBuf::into_owned);
                for (k, w) in check.iter().zip(want) {
                    let Some(want) = w else { continue };
                    d.checked += 1;
                    let got = buf.as_ref().map(|b| {
                        block_crc(&b[*k as usize * BLOCK_SIZE..(*k as usize + 1) * BLOCK_SIZE])
                    });
                    if got.is_none() || got != want {
                        d.bad.push((pblk + k, want, got));
                    }
                }
                let _ = tx.send(d);
            }),
        }]);
    }
    drop(tx);
    while inflight > 0 {
        match rx.recv() {
            Ok(d) => {
                inflight -= 1;
                absorb(d, &mut r);
            }
            Err(_) => break,
        }
    }
    r.seconds = t0.elapsed().as_secs_f64();
    r.bad.sort_by_key(|b| b.pblk);
    r
}

/// Who maps each of `bad`: every layer, file and logical block, with the file's path.
fn name_users(layers: &Layers, bad: &mut [BadBlock]) {
    if bad.is_empty() {
        return;
    }
    let set: BTreeSet<u64> = bad.iter().map(|b| b.pblk).collect();
    let mut found: BTreeMap<u64, Vec<BlockUser>> = BTreeMap::new();
    for l in layers.map.values() {
        let layer = String::from_utf8_lossy(&l.id).into_owned();
        let mut hits: Vec<(u64, Ino, u64)> = Vec::new();
        for (ino, i) in l.tree.inodes.iter() {
            let Content::File(x) = &i.content else {
                continue;
            };
            for (lb, e) in x.iter() {
                for p in set.range(e.pblk..e.pblk + e.len) {
                    hits.push((*p, *ino, lb + (p - e.pblk)));
                }
            }
        }
        if hits.is_empty() {
            continue;
        }
        let paths = paths_of(&l.tree, hits.iter().map(|h| h.1).collect());
        for (p, ino, lblk) in hits {
            let path = paths
                .get(&ino)
                .cloned()
                .unwrap_or_else(|| format!("(inode {ino}, not linked)"));
            found.entry(p).or_default().push(BlockUser {
                layer: layer.clone(),
                path,
                ino,
                lblk,
            });
        }
    }
    for b in bad.iter_mut() {
        b.users = found.remove(&b.pblk).unwrap_or_default();
    }
}

/// A path of each of `want` in tree `t` (the first found, walking from the root).
fn paths_of(t: &Tree, want: BTreeSet<Ino>) -> HashMap<Ino, String> {
    let mut out = HashMap::new();
    let mut stack: Vec<(Ino, String)> = vec![(ROOT_INO, String::new())];
    let mut seen = BTreeSet::new();
    while let Some((dir, path)) = stack.pop() {
        if !seen.insert(dir) || out.len() == want.len() {
            continue;
        }
        let Some(d) = t.get(dir).and_then(|i| i.dir()) else {
            continue;
        };
        for (name, (child, _)) in d.entries.iter() {
            let p = format!("{path}/{}", String::from_utf8_lossy(name));
            if want.contains(child) {
                out.entry(*child).or_insert_with(|| p.clone());
            }
            if t.get(*child).is_some_and(|c| c.attr.is_dir()) {
                stack.push((*child, p));
            }
        }
    }
    out
}

/// Scrub an unmounted image: recover it (as fsck does, without writing), then check every
/// mapped data block.
pub fn scrub_offline(dev: Arc<dyn Device>, opts: ScrubOptions) -> Result<ScrubReport> {
    let l = crate::recovery::load(dev.as_ref())?;
    if l.sb.version < crate::format::FORMAT_VERSION {
        return Err(Error::Unusable(format!(
            "format version {} has no data checksums; run `strata migrate` first",
            l.sb.version
        )));
    }
    let (list, total) = pieces(&l.layers);
    let ring = Ring::start(dev, crate::sched::Policy::Fifo)
        .map_err(|e| Error::Unusable(format!("cannot start io_uring: {e}")))?;
    let cancel = AtomicBool::new(false);
    let mut r = run(
        &ring,
        &Offline(&l.layers),
        list,
        total,
        opts,
        &cancel,
        |_| {},
    );
    ring.stop();
    name_users(&l.layers, &mut r.bad);
    Ok(r)
}

impl Engine {
    /// Start a scrub of every mapped data block in a background thread (at most `rate_bytes`
    /// per second). Refused while one runs. Its progress and result: [`Engine::scrub_status`].
    pub fn scrub_start(&self, opts: ScrubOptions) -> Result<ScrubStatus> {
        self.inner.poison.check()?;
        let s = &self.inner.scrub;
        let mut th = s.thread.lock();
        if matches!(&*s.status.lock(), Some(st) if st.state == ScrubState::Running) {
            return Err(Error::Busy("a scrub is already running".into()));
        }
        if let Some(t) = th.take() {
            let _ = t.join();
        }
        let layers = self.inner.meta.lock().layers.clone();
        let status = ScrubStatus {
            state: ScrubState::Running,
            started: Time::now(),
            finished: None,
            report: ScrubReport {
                rate_bytes: opts.rate_bytes,
                ..Default::default()
            },
            error: None,
        };
        *s.status.lock() = Some(status.clone());
        s.cancel.store(false, Ordering::SeqCst);
        let inner = self.inner.clone();
        let t = std::thread::Builder::new()
            .name("strata-scrub".into())
            .spawn(move || {
                let (list, total) = pieces(&layers);
                let sc = &inner.scrub;
                let set = |r: &ScrubReport| {
                    if let Some(st) = sc.status.lock().as_mut() {
                        st.report = r.clone();
                    }
                };
                let mut r = run(
                    &inner.ring,
                    &Online(&inner),
                    list,
                    total,
                    opts,
                    &sc.cancel,
                    |r| {
                        inner
                            .counters
                            .scrub_blocks
                            .store(r.checked_blocks, Ordering::Relaxed);
                        set(r)
                    },
                );
                name_users(&layers, &mut r.bad);
                inner
                    .counters
                    .scrub_bad_blocks
                    .fetch_add(r.bad_count, Ordering::Relaxed);
                for b in &r.bad {
                    log::error!(
                        "scrub: data block {} does not match its checksum (used by {})",
                        b.pblk,
                        describe_users(&b.users)
                    );
                }
                let cancelled = sc.cancel.load(Ordering::SeqCst);
                log::info!(
                    "scrub {}: {} of {} data blocks checked, {} bad, {} skipped, {:.0} MB/s",
                    if cancelled { "cancelled" } else { "done" },
                    r.checked_blocks,
                    r.total_blocks,
                    r.bad_count,
                    r.skipped_blocks,
                    r.throughput() / 1e6
                );
                if let Some(st) = sc.status.lock().as_mut() {
                    st.report = r;
                    st.finished = Some(Time::now());
                    st.state = if cancelled {
                        ScrubState::Cancelled
                    } else {
                        ScrubState::Done
                    };
                }
            })
            .map_err(|e| Error::Unusable(format!("cannot start the scrub thread: {e}")))?;
        *th = Some(t);
        Ok(status)
    }

    /// The running or last scrub (None: none since the daemon started).
    pub fn scrub_status(&self) -> Option<ScrubStatus> {
        self.inner.scrub.status.lock().clone()
    }

    /// Stop a running scrub (it reports what it checked so far); waits for it.
    pub fn scrub_cancel(&self) {
        self.inner.scrub.stop();
    }

    /// Run a scrub to the end in this thread (tests, and the CLI's `--wait`).
    pub fn scrub_wait(&self) -> Option<ScrubStatus> {
        let t = self.inner.scrub.thread.lock().take();
        if let Some(t) = t {
            let _ = t.join();
        }
        self.scrub_status()
    }
}

impl Scrubber {
    /// Cancel a running scrub and wait for its thread (shutdown does this first).
    pub(crate) fn stop(&self) {
        self.cancel.store(true, Ordering::SeqCst);
        let t = self.thread.lock().take();
        if let Some(t) = t {
            let _ = t.join();
        }
    }
}

/// `layer:path (inode N, logical block L), ...` for a log line or the CLI.
pub fn describe_users(users: &[BlockUser]) -> String {
    if users.is_empty() {
        return "no file".into();
    }
    users
        .iter()
        .map(|u| {
            format!(
                "{}:{} (inode {}, logical block {})",
                u.layer, u.path, u.ino, u.lblk
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}
