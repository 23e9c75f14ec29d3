//! Write-log crash replay, shared by `engine/tests/replay.rs` and the control crate's OCI
//! import replay test (`control/tests/replay_import.rs`).
//!
//! A [`RecordingDevice`] logs every write (offset + bytes) and every flush, in the order the
//! device sees them. A workload runs an [`Engine`] on it and keeps a [`Recorder`]: every
//! logical state the file system passed through (layers, directories, file contents), the
//! log position at which each operation started, and which state each returned fsync (or
//! layer operation) made durable. [`replay`] then rebuilds crash images from the log: for
//! every flush point, the mkfs image plus every write before it; between two flushes, seeded
//! random subsets of the writes not yet flushed; and torn writes (only the first 512·n bytes
//! of one 4 KiB block of a write). Each image must pass fsck, recover with `Engine::open`,
//! and satisfy the oracle:
//!
//! * the tree (layers, their states, every path and its type) equals one the workload had,
//!   no older than the last durable state before the crash point;
//! * every file's size is one the file had, and every 4 KiB block (512-byte sector when a
//!   write was torn) holds data that block had at some point in that range of states, so a
//!   file whose fsync returned and was not changed again is there byte for byte, and no file
//!   holds data it never had.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use engine::mkfs;
use engine::{Device, Engine, Node, Options};

use crate::Rng;

pub const BLOCK: usize = 4096;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Clone)]
pub enum Entry {
    Write { off: u64, data: Arc<[u8]> },
    Flush,
}

struct RecInner {
    data: Vec<u8>,
    log: Vec<Entry>,
}

/// A device over an in-memory image that logs every write and flush in order.
pub struct RecordingDevice {
    inner: Mutex<RecInner>,
    boot: Option<[u8; 16]>,
}

impl RecordingDevice {
    pub fn new(base: Vec<u8>) -> Self {
        RecordingDevice {
            inner: Mutex::new(RecInner {
                data: base,
                log: Vec::new(),
            }),
            boot: None,
        }
    }
    /// Report `boot` as the boot id (the engine then writes early journal chunks for
    /// `persist`). Crash images are replayed without one: a power loss, another boot.
    pub fn with_boot_id(mut self, boot: [u8; 16]) -> Self {
        self.boot = Some(boot);
        self
    }
    pub fn log_len(&self) -> usize {
        lock(&self.inner).log.len()
    }
    pub fn log(&self) -> Vec<Entry> {
        lock(&self.inner).log.clone()
    }
}

impl Device for RecordingDevice {
    fn size(&self) -> u64 {
        lock(&self.inner).data.len() as u64
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let d = lock(&self.inner);
        let o = offset as usize;
        if o + buf.len() > d.data.len() {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        buf.copy_from_slice(&d.data[o..o + buf.len()]);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut d = lock(&self.inner);
        let o = offset as usize;
        if o + buf.len() > d.data.len() {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        d.data[o..o + buf.len()].copy_from_slice(buf);
        d.log.push(Entry::Write {
            off: offset,
            data: Arc::from(buf),
        });
        Ok(())
    }
    fn boot_id(&self) -> Option<[u8; 16]> {
        self.boot
    }
    fn flush(&self) -> io::Result<()> {
        lock(&self.inner).log.push(Entry::Flush);
        Ok(())
    }
}

/// Changed 4 KiB blocks over a shared base image: cloning one costs a pointer per block.
#[derive(Clone, Default)]
pub struct Blocks(HashMap<u64, Arc<[u8]>>);

impl Blocks {
    fn apply_write(&mut self, off: u64, data: &[u8]) {
        for (i, b) in data.chunks(BLOCK).enumerate() {
            self.0.insert(off / BLOCK as u64 + i as u64, Arc::from(b));
        }
    }
    /// The first `bytes` bytes of block `blk` replaced by `data` (a torn write).
    fn apply_partial(&mut self, base: &[u8], blk: u64, data: &[u8]) {
        let mut b: Vec<u8> = match self.0.get(&blk) {
            Some(x) => x.to_vec(),
            None => base[blk as usize * BLOCK..(blk as usize + 1) * BLOCK].to_vec(),
        };
        b[..data.len()].copy_from_slice(data);
        self.0.insert(blk, Arc::from(b));
    }
}

/// A crash image: the base image plus changed blocks. Recovery writes go to the overlay.
pub struct ImageDevice {
    base: Arc<Vec<u8>>,
    blocks: Mutex<Blocks>,
    /// What recovery wrote and flushed, in order.
    log: Mutex<Vec<Entry>>,
}

impl ImageDevice {
    pub fn new(base: Arc<Vec<u8>>, blocks: Blocks) -> Self {
        ImageDevice {
            base,
            blocks: Mutex::new(blocks),
            log: Mutex::new(Vec::new()),
        }
    }
}

impl Device for ImageDevice {
    fn size(&self) -> u64 {
        self.base.len() as u64
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if offset as usize + buf.len() > self.base.len() {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        let m = lock(&self.blocks);
        for (i, out) in buf.chunks_mut(BLOCK).enumerate() {
            let blk = offset / BLOCK as u64 + i as u64;
            match m.0.get(&blk) {
                Some(b) => out.copy_from_slice(&b[..out.len()]),
                None => {
                    let s = blk as usize * BLOCK;
                    out.copy_from_slice(&self.base[s..s + out.len()]);
                }
            }
        }
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if offset as usize + buf.len() > self.base.len() {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        lock(&self.blocks).apply_write(offset, buf);
        lock(&self.log).push(Entry::Write {
            off: offset,
            data: Arc::from(buf),
        });
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        lock(&self.log).push(Entry::Flush);
        Ok(())
    }
}

/// One object of the observable state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Obj {
    /// A layer and its state ("active", "committed", "view"); key `L:<id>`.
    Layer(&'static str),
    /// A directory; key `<layer>/<path>`.
    Dir,
    /// A regular file and its contents; key `<layer>/<path>`.
    File(Vec<u8>),
    /// A symlink and its target.
    Symlink(Vec<u8>),
    /// Anything else (device, fifo, socket), by mode.
    Other(u32),
}

pub type State = BTreeMap<String, Obj>;

/// Everything the oracle compares, read through the engine's public API.
pub fn observe(e: &Engine) -> State {
    let mut s = State::new();
    for l in e.layer_list() {
        s.insert(format!("L:{}", l.id), Obj::Layer(l.state.as_str()));
        let root = e.layer_root(&l.id).expect("layer root");
        walk(e, root, &l.id, &mut s);
    }
    s
}

fn walk(e: &Engine, dir: Node, prefix: &str, s: &mut State) {
    let entries = e.readdir(dir, 0, usize::MAX).expect("readdir");
    for d in entries {
        if &*d.name == b"." || &*d.name == b".." {
            continue;
        }
        let key = format!("{prefix}/{}", String::from_utf8_lossy(&d.name));
        let st = e.getattr(d.ino).expect("getattr");
        let kind = st.attr.mode & libc::S_IFMT;
        if kind == libc::S_IFDIR {
            s.insert(key.clone(), Obj::Dir);
            walk(e, d.ino, &key, s);
        } else if kind == libc::S_IFREG {
            let data = if st.attr.size == 0 {
                Vec::new()
            } else {
                e.read_sync(d.ino, 0, st.attr.size as u32).expect("read")
            };
            assert_eq!(data.len() as u64, st.attr.size, "{key}: short read");
            s.insert(key, Obj::File(data));
        } else if kind == libc::S_IFLNK {
            s.insert(
                key,
                Obj::Symlink(e.readlink(d.ino).expect("readlink").to_vec()),
            );
        } else {
            s.insert(key, Obj::Other(st.attr.mode));
        }
    }
}

struct Hist {
    /// Log length when the operation that produced this state started.
    start: usize,
    state: State,
    /// A layer whose contents are unknown in this state (an OCI import in progress: any
    /// state of that layer, or its absence, is one that existed).
    unknown: Option<String>,
}

/// What a workload did: the states it passed through and which of them were made durable.
pub struct Recorder {
    pub dev: Arc<RecordingDevice>,
    pub state: State,
    hist: Vec<Hist>,
    /// (log length when an fsync or layer operation returned, history index it made durable).
    marks: Vec<(usize, usize)>,
    start: usize,
}

impl Recorder {
    /// Start recording on a freshly opened engine (whose current state is durable).
    pub fn new(dev: Arc<RecordingDevice>, e: &Engine) -> Self {
        let state = observe(e);
        Recorder {
            hist: vec![Hist {
                start: 0,
                state: state.clone(),
                unknown: None,
            }],
            marks: vec![(0, 0)],
            state,
            start: dev.log_len(),
            dev,
        }
    }
    /// Call before each engine operation.
    pub fn begin(&mut self) {
        self.start = self.dev.log_len();
    }
    /// Call after each engine operation, with `self.state` updated to what it did.
    pub fn end(&mut self) {
        self.hist.push(Hist {
            start: self.start,
            state: self.state.clone(),
            unknown: None,
        });
    }
    /// Call after `begin` and before an operation that builds layer `layer` in steps the
    /// workload cannot see (an OCI import): until the next state, that layer may be absent
    /// or in any state; everything else must be as in `self.state`.
    pub fn unknown(&mut self, layer: &str) {
        self.hist.push(Hist {
            start: self.start,
            state: self.state.clone(),
            unknown: Some(layer.to_string()),
        });
    }
    /// Call after an fsync (or a layer operation, durable on return) returned Ok.
    pub fn durable(&mut self) {
        self.marks.push((self.dev.log_len(), self.hist.len() - 1));
    }
    /// The model agrees with what the engine shows (guards the oracle itself).
    pub fn verify_model(&self, e: &Engine) {
        assert_eq!(
            observe(e),
            self.state,
            "workload model differs from the engine"
        );
    }
    pub fn states(&self) -> usize {
        self.hist.len()
    }
    pub fn marks(&self) -> usize {
        self.marks.len()
    }
}

/// Fresh formatted image of `size` bytes.
pub fn mkfs_image(size: u64) -> Vec<u8> {
    let dev = engine::MemDevice::new(size);
    mkfs(&dev, 0, 0).expect("mkfs");
    dev.snapshot()
}

pub fn opts() -> Options {
    Options {
        cache_bytes: 1 << 20,
        // Only the workload's fsyncs commit: the log is deterministic.
        commit_interval: Duration::from_secs(3600),
        stats: false,
        ..Default::default()
    }
}

/// How many crash images to build around each flush point.
#[derive(Clone, Copy)]
pub struct Plan {
    /// Random subsets of the unflushed writes after each flush point.
    pub subsets: usize,
    /// Torn-write images after each flush point.
    pub torn: usize,
    /// Every this many crash images, also crash the recovery itself: replay the writes
    /// recovery made at each of its flush points (0: never).
    pub recovery_every: usize,
    pub seed: u64,
}

#[derive(Default, Debug)]
pub struct Counts {
    pub flush_points: usize,
    pub prefix_images: usize,
    pub subset_images: usize,
    pub torn_images: usize,
    /// Images of a crash during the recovery of a crash image.
    pub recovery_images: usize,
}

impl Counts {
    pub fn total(&self) -> usize {
        self.prefix_images + self.subset_images + self.torn_images + self.recovery_images
    }
}

/// Replay the recorded log onto `base` at every flush point and check every image.
pub fn replay(name: &str, base: Vec<u8>, rec: &Recorder, plan: Plan) -> Counts {
    replay_log(name, base, rec, &rec.dev.log(), plan)
}

/// One flush-point window of a log: the writes between flush `floor - 1` and the next one.
fn window_end(log: &[Entry], floor: usize) -> usize {
    log[floor..]
        .iter()
        .position(|e| matches!(e, Entry::Flush))
        .map(|p| floor + p)
        .unwrap_or(log.len())
}

/// `img` plus a random subset of the writes `log[from..to]`.
fn with_subset(
    rng: &mut Rng,
    img: &Blocks,
    log: &[Entry],
    from: usize,
    to: usize,
) -> (Blocks, usize) {
    let mut img = img.clone();
    let mut q = from;
    for (i, e) in log.iter().enumerate().take(to).skip(from) {
        if rng.below(2) == 0 {
            if let Entry::Write { off, data } = e {
                img.apply_write(*off, data);
                q = i + 1;
            }
        }
    }
    (img, q)
}

/// `img` plus a random subset of the writes in `log[from..w]` and write `w` torn: a random
/// subset of its blocks before block `tb`, and the first 512·n bytes of block `tb`.
fn with_torn(
    rng: &mut Rng,
    base: &[u8],
    img: &Blocks,
    log: &[Entry],
    from: usize,
    w: usize,
) -> Blocks {
    let (mut img, _) = with_subset(rng, img, log, from, w);
    if let Entry::Write { off, data } = &log[w] {
        let nblk = data.len() / BLOCK;
        let tb = rng.below(nblk as u64) as usize;
        for b in 0..tb {
            if rng.below(2) == 0 {
                img.apply_write(*off + (b * BLOCK) as u64, &data[b * BLOCK..(b + 1) * BLOCK]);
            }
        }
        let keep = 512 * (1 + rng.below(7) as usize);
        img.apply_partial(
            base,
            *off / BLOCK as u64 + tb as u64,
            &data[tb * BLOCK..tb * BLOCK + keep],
        );
    }
    img
}

struct Run<'a> {
    name: &'a str,
    base: Arc<Vec<u8>>,
    rec: &'a Recorder,
    shapes: Vec<Shape>,
    plan: Plan,
    rng: Rng,
    counts: Counts,
    images: usize,
}

impl Run<'_> {
    /// Check one crash image (and, now and then, crashes during its recovery).
    fn image(&mut self, img: Blocks, p: usize, q: usize, granule: usize, kind: &str) {
        self.images += 1;
        let sample = self.plan.recovery_every > 0 && self.images % self.plan.recovery_every == 0;
        let keep = sample.then(|| img.clone());
        let what = format!("{}: {kind} image at log position {p}..{q}", self.name);
        let rlog = check(
            &what,
            &self.base,
            img,
            self.rec,
            &self.shapes,
            p,
            q,
            granule,
        );
        if let Some(img) = keep {
            self.recovery_crashes(img, &rlog, p, q, granule, kind);
        }
    }

    /// The writes recovery (open, then a clean shutdown) made on `img`, replayed at each of
    /// its flush points, with one random subset and one torn write after each: every such
    /// image must recover to the same promises as `img`.
    fn recovery_crashes(
        &mut self,
        img: Blocks,
        rlog: &[Entry],
        p: usize,
        q: usize,
        granule: usize,
        kind: &str,
    ) {
        let mut durable = img;
        let mut floor = 0;
        loop {
            let end = window_end(rlog, floor);
            let what = |k: &str| {
                format!(
                    "{}: crash during recovery of a {kind} image at log position {p}..{q}, {k} at recovery write {floor}",
                    self.name
                )
            };
            check(
                &what("prefix"),
                &self.base,
                durable.clone(),
                self.rec,
                &self.shapes,
                p,
                q,
                granule,
            );
            self.counts.recovery_images += 1;
            if end > floor {
                let (img, _) = with_subset(&mut self.rng, &durable, rlog, floor, end);
                check(
                    &what("subset"),
                    &self.base,
                    img,
                    self.rec,
                    &self.shapes,
                    p,
                    q,
                    granule,
                );
                let w = floor + self.rng.below((end - floor) as u64) as usize;
                let img = with_torn(&mut self.rng, &self.base, &durable, rlog, floor, w);
                check(
                    &what("torn"),
                    &self.base,
                    img,
                    self.rec,
                    &self.shapes,
                    p,
                    q,
                    512,
                );
                self.counts.recovery_images += 2;
            }
            if end >= rlog.len() {
                break;
            }
            for e in &rlog[floor..end] {
                if let Entry::Write { off, data } = e {
                    durable.apply_write(*off, data);
                }
            }
            floor = end + 1;
        }
    }
}

/// [`replay`] of a given log (a test of the oracle itself replays a doctored one).
pub fn replay_log(name: &str, base: Vec<u8>, rec: &Recorder, log: &[Entry], plan: Plan) -> Counts {
    let mut run = Run {
        name,
        base: Arc::new(base),
        rec,
        shapes: rec.hist.iter().map(|h| shape(&h.state)).collect(),
        plan,
        rng: Rng(plan.seed),
        counts: Counts::default(),
        images: 0,
    };
    let mut durable = Blocks::default();
    // Window starts: 0 (before the first flush) and just after every flush.
    let mut floor = 0usize;
    loop {
        let end = window_end(log, floor);
        run.counts.flush_points += 1;
        // Exactly the flushed prefix.
        run.image(durable.clone(), floor, floor, 4096, "prefix");
        run.counts.prefix_images += 1;
        if end > floor {
            for _ in 0..plan.subsets {
                let (img, q) = with_subset(&mut run.rng, &durable, log, floor, end);
                run.image(img, floor, q, 4096, "subset");
                run.counts.subset_images += 1;
            }
            for _ in 0..plan.torn {
                let w = floor + run.rng.below((end - floor) as u64) as usize;
                let img = with_torn(&mut run.rng, &run.base, &durable, log, floor, w);
                run.image(img, floor, w + 1, 512, "torn");
                run.counts.torn_images += 1;
            }
        }
        if end >= log.len() {
            break;
        }
        for e in &log[floor..end] {
            if let Entry::Write { off, data } = e {
                durable.apply_write(*off, data);
            }
        }
        floor = end + 1;
    }
    // The whole log (everything flushed or not) is the state at the end.
    let mut all = durable;
    for e in &log[floor.min(log.len())..] {
        if let Entry::Write { off, data } = e {
            all.apply_write(*off, data);
        }
    }
    run.image(all, log.len(), log.len(), 4096, "end");
    run.counts.prefix_images += 1;
    let counts = run.counts;
    eprintln!(
        "replay {name}: {} log entries, {} flush points, {} crash images ({} flushed prefixes, {} random subsets, {} torn writes, {} crashes during recovery), {} states, {} durability marks",
        log.len(),
        counts.flush_points,
        counts.total(),
        counts.prefix_images,
        counts.subset_images,
        counts.torn_images,
        counts.recovery_images,
        rec.hist.len(),
        rec.marks.len()
    );
    counts
}

/// A state without file contents: the tree and the layers.
type Shape = Vec<(String, Option<Obj>)>;

fn shape(s: &State) -> Shape {
    s.iter()
        .map(|(k, v)| {
            (
                k.clone(),
                match v {
                    Obj::File(_) => None,
                    o => Some(o.clone()),
                },
            )
        })
        .collect()
}

/// A shape without layer `l` and its tree.
fn without(s: &Shape, l: &str) -> Shape {
    let (key, pre) = (format!("L:{l}"), format!("{l}/"));
    s.iter()
        .filter(|(k, _)| *k != key && !k.starts_with(&pre))
        .cloned()
        .collect()
}

/// `p`: every log entry before it is on the image; `q`: no entry at or after it is.
/// Returns the writes and flushes recovery and the clean shutdown made.
#[allow(clippy::too_many_arguments)]
fn check(
    what: &str,
    base: &Arc<Vec<u8>>,
    img: Blocks,
    rec: &Recorder,
    shapes: &[Shape],
    p: usize,
    q: usize,
    granule: usize,
) -> Vec<Entry> {
    let dev = Arc::new(ImageDevice::new(base.clone(), img));
    let report = engine::fsck::check(dev.as_ref())
        .unwrap_or_else(|e| panic!("{what}: fsck cannot read the image: {e}"));
    assert!(
        report.is_clean(),
        "{what}: fsck problems: {:?}",
        report.problems
    );
    let d: Arc<dyn Device> = dev.clone();
    let e = Engine::open(d, opts()).unwrap_or_else(|err| panic!("{what}: recovery failed: {err}"));
    let got = observe(&e);
    // The durable floor: the newest state whose fsync returned before the crash point.
    let floor = rec
        .marks
        .iter()
        .rev()
        .find(|(len, _)| *len <= p)
        .map(|(_, h)| *h)
        .unwrap_or(0);
    // The newest state any of whose writes can be on the image.
    let top = rec
        .hist
        .iter()
        .rposition(|h| h.start < q)
        .unwrap_or(0)
        .max(floor);
    let range = &rec.hist[floor..=top];
    let got_shape = shape(&got);
    let matches = |j: usize| match &rec.hist[j].unknown {
        None => shapes[j] == got_shape,
        Some(l) => without(&shapes[j], l) == without(&got_shape, l),
    };
    if !(floor..=top).any(matches) {
        let want = &shapes[floor];
        let missing: Vec<_> = want.iter().filter(|x| !got_shape.contains(x)).collect();
        let extra: Vec<_> = got_shape.iter().filter(|x| !want.contains(x)).collect();
        panic!(
            "{what}: the recovered tree is not one that existed between states {floor} and {top}; \
             against the durable state: missing {missing:?}, extra {extra:?}"
        );
    }
    let unknown: Vec<String> = range
        .iter()
        .filter_map(|h| h.unknown.as_ref().map(|l| format!("{l}/")))
        .collect();
    for (key, obj) in &got {
        let Obj::File(data) = obj else { continue };
        if unknown.iter().any(|u| key.starts_with(u)) {
            continue;
        }
        let versions: Vec<&Vec<u8>> = range
            .iter()
            .filter_map(|h| match h.state.get(key) {
                Some(Obj::File(v)) => Some(v),
                _ => None,
            })
            .collect();
        if let Err(why) = plausible(data, &versions, granule) {
            panic!(
                "{what}: {key}: {why} (size {}, {} allowed versions with sizes {:?})",
                data.len(),
                versions.len(),
                versions.iter().map(|v| v.len()).collect::<Vec<_>>()
            );
        }
    }
    e.shutdown()
        .unwrap_or_else(|err| panic!("{what}: shutdown after recovery: {err}"));
    let report = engine::fsck::check(dev.as_ref()).expect("fsck after recovery");
    assert!(
        report.is_clean(),
        "{what}: fsck problems after recovery and clean shutdown: {:?}",
        report.problems
    );
    let log = lock(&dev.log).clone();
    log
}

/// `got` has the size of one of `versions`, and each `granule` of it holds what that range of
/// the file held in one of them (zero past a version's end within its last block).
pub fn plausible(got: &[u8], versions: &[&Vec<u8>], granule: usize) -> Result<(), String> {
    if !versions.iter().any(|v| v.len() == got.len()) {
        return Err("its size is not one the file ever had".into());
    }
    for (i, g) in got.chunks(granule).enumerate() {
        let s = i * granule;
        let ok = versions.iter().any(|v| {
            if v.len() <= s {
                return false;
            }
            let vb = &v[s..(s + g.len()).min(v.len())];
            g[..vb.len()] == *vb && g[vb.len()..].iter().all(|b| *b == 0)
        });
        if !ok {
            return Err(format!(
                "bytes {s}..{} hold data the file never had there",
                s + g.len()
            ));
        }
    }
    Ok(())
}
