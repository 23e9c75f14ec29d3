//! Statistics as the control plane shows them: one [`StatsReport`] collected from the engine
//! is rendered both as Prometheus text ([`crate::render`]) and as the JSON of the admin API's
//! `GET /v1/stats`, so both show the same numbers.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use engine::stats::{errno_name, HistogramSnapshot};
use engine::{Engine, LayerState};
use serde::{Deserialize, Serialize};

pub use crate::labels::CONTAINERD_KEY_LABEL;

/// A latency histogram: cumulative counts per upper bound, then `+Inf`.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    pub bounds: Vec<f64>,
    /// Cumulative counts: one per bound, then the `+Inf` bucket (equal to `count`).
    pub cumulative: Vec<u64>,
    pub sum_seconds: f64,
    pub count: u64,
}

impl From<HistogramSnapshot> for Histogram {
    fn from(h: HistogramSnapshot) -> Self {
        Histogram {
            bounds: h.bounds,
            cumulative: h.cumulative,
            sum_seconds: h.sum_seconds,
            count: h.count,
        }
    }
}

impl Histogram {
    /// The upper bound of the bucket holding quantile `q` (0..1), or `None` if empty.
    pub fn quantile_bound(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let want = (q * self.count as f64).ceil().max(1.0) as u64;
        self.cumulative
            .iter()
            .position(|c| *c >= want)
            .map(|i| self.bounds.get(i).copied().unwrap_or(f64::INFINITY))
    }

    /// The samples added since `prev` (same buckets).
    pub fn since(&self, prev: &Histogram) -> Histogram {
        if prev.bounds != self.bounds {
            return self.clone();
        }
        Histogram {
            bounds: self.bounds.clone(),
            cumulative: self
                .cumulative
                .iter()
                .zip(&prev.cumulative)
                .map(|(a, b)| a.saturating_sub(*b))
                .collect(),
            sum_seconds: (self.sum_seconds - prev.sum_seconds).max(0.0),
            count: self.count.saturating_sub(prev.count),
        }
    }
}

/// Per-second rates of a layer over `StatsReport::interval_seconds`.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct Rates {
    pub read_ops_per_second: f64,
    pub read_bytes_per_second: f64,
    pub write_ops_per_second: f64,
    pub write_bytes_per_second: f64,
    pub metadata_ops_per_second: f64,
    /// Upper bound of the bucket holding the 99th percentile of reads and writes in the
    /// interval (seconds), if there were any.
    pub read_p99_seconds: Option<f64>,
    pub write_p99_seconds: Option<f64>,
}

/// One layer's statistics.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct LayerStatsReport {
    pub id: String,
    pub slot: u32,
    /// `active`, `committed` or `view`.
    pub state: String,
    pub parent: Option<String>,
    /// For active layers: the container id (last segment of the containerd snapshot key).
    pub container: Option<String>,
    pub read_ops: u64,
    pub read_bytes: u64,
    pub write_ops: u64,
    pub write_bytes: u64,
    /// Metadata operations by kind (create, mkdir, unlink, rename, setattr, ...).
    pub metadata_ops: BTreeMap<String, u64>,
    /// Failed operations by errno name.
    pub errors: BTreeMap<String, u64>,
    /// Inherited blocks replaced by copy-on-write.
    pub cow_blocks: u64,
    /// Blocks of this layer's reads served by the block cache / read from the device.
    pub cache_hits: u64,
    pub cache_misses: u64,
    /// Bytes of blocks this layer allocated (exclusive).
    pub owned_bytes: u64,
    /// Bytes its files reference that belong to ancestors (inherited, shared).
    pub shared_bytes: u64,
    pub inodes: u64,
    /// Reads and writes in flight.
    pub inflight: u64,
    pub read_latency: Histogram,
    pub write_latency: Histogram,
    pub metadata_latency: Histogram,
    pub rates: Rates,
}

impl LayerStatsReport {
    pub fn io_bytes(&self) -> u64 {
        self.read_bytes + self.write_bytes
    }
    pub fn metadata_total(&self) -> u64 {
        self.metadata_ops.values().sum()
    }
}

/// Whole-daemon statistics.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct DaemonStats {
    pub device_size_bytes: u64,
    pub device_used_bytes: u64,
    pub device_free_bytes: u64,
    pub inodes: u64,
    pub read_ops: u64,
    pub read_bytes: u64,
    pub write_ops: u64,
    pub write_bytes: u64,
    pub cow_blocks: u64,
    pub cache_bytes: u64,
    pub cache_capacity_bytes: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    /// Hits over lookups since start (0 when there were none).
    pub cache_hit_ratio: f64,
    pub journal_commits: u64,
    pub journal_bytes: u64,
    pub checkpoints: u64,
    pub checkpoint_seconds: f64,
    pub io_errors: u64,
    /// Device operations in the io_uring.
    pub io_inflight: u64,
    /// Client reads and writes in the engine (FUSE requests awaiting their reply).
    pub requests_inflight: u64,
    pub poisoned: bool,
    pub layers_by_state: BTreeMap<String, u64>,
    pub device_read_latency: Histogram,
    pub device_write_latency: Histogram,
    pub checkpoint_duration: Histogram,
    pub journal_commit_duration: Histogram,
}

/// The answer of `GET /v1/stats`.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq)]
pub struct StatsReport {
    /// Seconds since the epoch when collected.
    pub time_unix: f64,
    /// Whether per-layer statistics are kept (the daemon runs without `--no-stats`).
    pub enabled: bool,
    /// Window of the `rates` (seconds since the previous call, or a short sampling window).
    pub interval_seconds: f64,
    pub daemon: DaemonStats,
    pub layers: Vec<LayerStatsReport>,
}

/// The container id of an active layer, from its containerd snapshot key (the label a user
/// set, or the key the snapshotter keeps).
pub fn container_of(state: LayerState, labels: &BTreeMap<String, String>) -> Option<String> {
    if state != LayerState::Active {
        return None;
    }
    let key = labels
        .get(CONTAINERD_KEY_LABEL)
        .or_else(|| labels.get(crate::labels::NAME_LABEL))?;
    let last = key.rsplit('/').next()?;
    (!last.is_empty()).then(|| last.to_string())
}

/// Collect every number (without rates).
pub fn collect(engine: &Engine) -> StatsReport {
    let c = engine.counters();
    let s = engine.statfs();
    let (hits, misses, cached) = engine.cache_stats();
    let st = engine.stats();
    let ld = |a: &std::sync::atomic::AtomicU64| a.load(Relaxed);
    let bs = s.bsize as u64;
    let infos = engine.layer_list();
    let referenced = engine.layer_referenced_bytes();
    let per: HashMap<u32, _> = st.layers().into_iter().collect();
    let mut by_state: BTreeMap<String, u64> = ["active", "committed", "view"]
        .iter()
        .map(|s| (s.to_string(), 0))
        .collect();
    let mut layers = Vec::with_capacity(infos.len());
    for i in &infos {
        *by_state.entry(i.state.as_str().to_string()).or_default() += 1;
        let mut r = LayerStatsReport {
            id: i.id.clone(),
            slot: i.slot,
            state: i.state.as_str().to_string(),
            parent: i.parent.clone(),
            container: container_of(i.state, &i.labels),
            owned_bytes: i.owned_bytes,
            shared_bytes: referenced
                .get(&i.slot)
                .map(|r| r.saturating_sub(i.owned_bytes))
                .unwrap_or(0),
            inodes: i.inodes,
            ..Default::default()
        };
        if let Some(l) = per.get(&i.slot) {
            r.read_ops = ld(&l.read_ops);
            r.read_bytes = ld(&l.read_bytes);
            r.write_ops = ld(&l.write_ops);
            r.write_bytes = ld(&l.write_bytes);
            r.cow_blocks = ld(&l.cow_blocks);
            r.cache_hits = ld(&l.cache_hits);
            r.cache_misses = ld(&l.cache_misses);
            r.inflight = ld(&l.inflight);
            r.metadata_ops = l
                .meta_ops()
                .into_iter()
                .map(|(op, n)| (op.as_str().to_string(), n))
                .collect();
            r.errors = l
                .errors()
                .into_iter()
                .map(|(e, n)| (errno_name(e), n))
                .collect();
            r.read_latency = l.read_latency.snapshot().into();
            r.write_latency = l.write_latency.snapshot().into();
            r.metadata_latency = l.meta_latency.snapshot().into();
        }
        layers.push(r);
    }
    let used = s.blocks.saturating_sub(s.bfree) * bs;
    let lookups = hits + misses;
    let daemon = DaemonStats {
        device_size_bytes: s.blocks * bs,
        device_used_bytes: used,
        device_free_bytes: s.bfree * bs,
        inodes: s.files.saturating_sub(s.ffree),
        read_ops: ld(&c.read_ops),
        read_bytes: ld(&c.read_bytes),
        write_ops: ld(&c.write_ops),
        write_bytes: ld(&c.write_bytes),
        cow_blocks: ld(&c.cow_blocks),
        cache_bytes: cached,
        cache_capacity_bytes: engine.cache_capacity(),
        cache_hits: hits,
        cache_misses: misses,
        cache_hit_ratio: if lookups == 0 {
            0.0
        } else {
            hits as f64 / lookups as f64
        },
        journal_commits: ld(&c.journal_commits),
        journal_bytes: ld(&c.journal_bytes),
        checkpoints: ld(&c.checkpoints),
        checkpoint_seconds: ld(&c.checkpoint_nanos) as f64 / 1e9,
        io_errors: ld(&c.io_errors),
        io_inflight: engine.io_inflight(),
        requests_inflight: st.inflight(),
        poisoned: engine.is_poisoned(),
        layers_by_state: by_state,
        device_read_latency: st.device_read.snapshot().into(),
        device_write_latency: st.device_write.snapshot().into(),
        checkpoint_duration: st.checkpoint.snapshot().into(),
        journal_commit_duration: st.journal_commit.snapshot().into(),
    };
    StatsReport {
        time_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0),
        enabled: st.enabled(),
        interval_seconds: 0.0,
        daemon,
        layers,
    }
}

/// Fill `now.layers[..].rates` from an earlier report of the same daemon.
pub fn compute_rates(now: &mut StatsReport, prev: &StatsReport) {
    let dt = now.time_unix - prev.time_unix;
    if dt <= 0.0 {
        return;
    }
    now.interval_seconds = dt;
    let before: HashMap<(&str, u32), &LayerStatsReport> = prev
        .layers
        .iter()
        .map(|l| ((l.id.as_str(), l.slot), l))
        .collect();
    for l in &mut now.layers {
        let zero = LayerStatsReport::default();
        let p = before
            .get(&(l.id.as_str(), l.slot))
            .copied()
            .unwrap_or(&zero);
        let rate = |a: u64, b: u64| a.saturating_sub(b) as f64 / dt;
        l.rates = Rates {
            read_ops_per_second: rate(l.read_ops, p.read_ops),
            read_bytes_per_second: rate(l.read_bytes, p.read_bytes),
            write_ops_per_second: rate(l.write_ops, p.write_ops),
            write_bytes_per_second: rate(l.write_bytes, p.write_bytes),
            metadata_ops_per_second: rate(l.metadata_total(), p.metadata_total()),
            read_p99_seconds: l.read_latency.since(&p.read_latency).quantile_bound(0.99),
            write_p99_seconds: l.write_latency.since(&p.write_latency).quantile_bound(0.99),
        };
    }
}

/// Remembers the previous report so `GET /v1/stats` can give rates since the last call.
#[derive(Default)]
pub struct RateTracker {
    prev: std::sync::Mutex<Option<(Instant, StatsReport)>>,
}

/// How far back a previous call may be to serve as the base of the rates.
const MAX_RATE_AGE: Duration = Duration::from_secs(60);
/// How long to sample when there is no recent previous call.
pub const SAMPLE_WINDOW: Duration = Duration::from_millis(500);

impl RateTracker {
    /// A report with rates: since the previous call if it was between 0.2 s and a minute ago,
    /// else over a [`SAMPLE_WINDOW`] sampled now.
    pub fn report(&self, engine: &Engine) -> StatsReport {
        let prev = {
            let g = self.prev.lock().unwrap_or_else(|e| e.into_inner());
            g.as_ref()
                .filter(|(t, _)| {
                    t.elapsed() >= Duration::from_millis(200) && t.elapsed() <= MAX_RATE_AGE
                })
                .map(|(_, r)| r.clone())
        };
        let prev = match prev {
            Some(p) => p,
            None => {
                let p = collect(engine);
                std::thread::sleep(SAMPLE_WINDOW);
                p
            }
        };
        let mut now = collect(engine);
        compute_rates(&mut now, &prev);
        *self.prev.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), now.clone()));
        now
    }
}

// ---------------------------------------------------------------------------------------------
// Prometheus text
// ---------------------------------------------------------------------------------------------

/// Escape a label value for the text format.
pub fn escape_label(v: &str) -> String {
    let mut o = String::with_capacity(v.len());
    for ch in v.chars() {
        match ch {
            '\\' => o.push_str("\\\\"),
            '"' => o.push_str("\\\""),
            '\n' => o.push_str("\\n"),
            c => o.push(c),
        }
    }
    o
}

fn fmt_f64(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else {
        format!("{v}")
    }
}

/// A metric family being written: HELP and TYPE once, then its samples.
struct Family<'a> {
    out: &'a mut String,
    name: &'static str,
}

impl<'a> Family<'a> {
    fn new(out: &'a mut String, name: &'static str, kind: &str, help: &str) -> Family<'a> {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        Family { out, name }
    }

    fn sample(&mut self, labels: &str, v: f64) {
        let n = self.name;
        if labels.is_empty() {
            let _ = writeln!(self.out, "{n} {}", fmt_f64(v));
        } else {
            let _ = writeln!(self.out, "{n}{{{labels}}} {}", fmt_f64(v));
        }
    }

    fn histogram(&mut self, labels: &str, h: &Histogram) {
        let n = self.name;
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, c) in h.cumulative.iter().enumerate() {
            let le = h
                .bounds
                .get(i)
                .map(|b| fmt_f64(*b))
                .unwrap_or_else(|| "+Inf".into());
            let _ = writeln!(self.out, "{n}_bucket{{{labels}{sep}le=\"{le}\"}} {c}");
        }
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(self.out, "{n}_sum{braces} {}", fmt_f64(h.sum_seconds));
        let _ = writeln!(self.out, "{n}_count{braces} {}", h.count);
    }
}

fn layer_labels(l: &LayerStatsReport) -> String {
    let mut s = format!("layer=\"{}\"", escape_label(&l.id));
    if let Some(c) = &l.container {
        let _ = write!(s, ",container=\"{}\"", escape_label(c));
    }
    s
}

fn with(base: &str, extra: &str) -> String {
    format!("{base},{extra}")
}

/// Render a report in the Prometheus text exposition format (0.0.4).
pub fn render_report(r: &StatsReport) -> String {
    let mut out = String::with_capacity(8192 + r.layers.len() * 6000);
    let d = &r.daemon;
    let ls: Vec<(String, &LayerStatsReport)> =
        r.layers.iter().map(|l| (layer_labels(l), l)).collect();
    let o = &mut out;

    // Client I/O per layer (whole daemon: sum over layers). Without per-layer statistics the
    // same families carry the daemon totals, unlabelled.
    type Get = fn(&LayerStatsReport) -> u64;
    let io: [(&'static str, &str, Get, u64); 5] = [
        (
            "strata_read_ops_total",
            "Read requests served, per layer.",
            |l| l.read_ops,
            d.read_ops,
        ),
        (
            "strata_read_bytes_total",
            "Bytes returned to readers, per layer.",
            |l| l.read_bytes,
            d.read_bytes,
        ),
        (
            "strata_write_ops_total",
            "Write requests completed, per layer.",
            |l| l.write_ops,
            d.write_ops,
        ),
        (
            "strata_write_bytes_total",
            "Bytes written by clients (acknowledged), per layer.",
            |l| l.write_bytes,
            d.write_bytes,
        ),
        (
            "strata_cow_blocks_total",
            "Inherited blocks replaced by copy-on-write, per layer.",
            |l| l.cow_blocks,
            d.cow_blocks,
        ),
    ];
    for (name, help, get, total) in io {
        let mut f = Family::new(o, name, "counter", help);
        if r.enabled {
            for (lab, l) in &ls {
                f.sample(lab, get(l) as f64);
            }
        } else {
            f.sample("", total as f64);
        }
    }
    if r.enabled {
        let mut f = Family::new(
            o,
            "strata_metadata_ops_total",
            "counter",
            "Metadata operations by kind, per layer.",
        );
        for (lab, l) in &ls {
            for (op, n) in &l.metadata_ops {
                f.sample(&with(lab, &format!("op=\"{op}\"")), *n as f64);
            }
        }
        let mut f = Family::new(
            o,
            "strata_errors_total",
            "counter",
            "Failed operations by errno, per layer.",
        );
        for (lab, l) in &ls {
            for (e, n) in &l.errors {
                f.sample(&with(lab, &format!("errno=\"{e}\"")), *n as f64);
            }
        }
        let mut f = Family::new(
            o,
            "strata_layer_cache_hits_total",
            "counter",
            "Blocks of the layer's reads served by the block cache.",
        );
        for (lab, l) in &ls {
            f.sample(lab, l.cache_hits as f64);
        }
        let mut f = Family::new(
            o,
            "strata_layer_cache_misses_total",
            "counter",
            "Blocks of the layer's reads fetched from the device.",
        );
        for (lab, l) in &ls {
            f.sample(lab, l.cache_misses as f64);
        }
        let mut f = Family::new(
            o,
            "strata_layer_requests_inflight",
            "gauge",
            "Reads and writes of the layer in flight.",
        );
        for (lab, l) in &ls {
            f.sample(lab, l.inflight as f64);
        }
        let mut f = Family::new(
            o,
            "strata_op_duration_seconds",
            "histogram",
            "Latency of file operations from request to reply, per layer and op (read, write, metadata).",
        );
        for (lab, l) in &ls {
            for (op, h) in [
                ("read", &l.read_latency),
                ("write", &l.write_latency),
                ("metadata", &l.metadata_latency),
            ] {
                f.histogram(&with(lab, &format!("op=\"{op}\"")), h);
            }
        }
    }
    type GetG = fn(&LayerStatsReport) -> f64;
    let gauges: [(&'static str, &str, GetG); 3] = [
        (
            "strata_layer_owned_bytes",
            "Bytes of blocks the layer allocated (exclusive to it).",
            |l| l.owned_bytes as f64,
        ),
        (
            "strata_layer_shared_bytes",
            "Bytes the layer's files reference that belong to its ancestors (inherited, shared).",
            |l| l.shared_bytes as f64,
        ),
        ("strata_layer_inodes", "Inodes in the layer.", |l| {
            l.inodes as f64
        }),
    ];
    for (name, help, get) in gauges {
        let mut f = Family::new(o, name, "gauge", help);
        for (lab, l) in &ls {
            f.sample(lab, get(l));
        }
    }
    let mut f = Family::new(
        o,
        "strata_layer_info",
        "gauge",
        "Always 1: a layer's state and parent.",
    );
    for (lab, l) in &ls {
        let mut x = with(lab, &format!("state=\"{}\"", l.state));
        if let Some(p) = &l.parent {
            x = with(&x, &format!("parent=\"{}\"", escape_label(p)));
        }
        f.sample(&x, 1.0);
    }
    let mut f = Family::new(o, "strata_layers", "gauge", "Layers by state.");
    for (s, n) in &d.layers_by_state {
        f.sample(&format!("state=\"{s}\""), *n as f64);
    }

    // Whole daemon.
    let scalars: [(&'static str, &str, &str, f64); 18] = [
        (
            "strata_journal_commits_total",
            "counter",
            "Journal chunks made durable.",
            d.journal_commits as f64,
        ),
        (
            "strata_journal_bytes_total",
            "counter",
            "Bytes written to the journal.",
            d.journal_bytes as f64,
        ),
        (
            "strata_checkpoints_total",
            "counter",
            "Checkpoints written.",
            d.checkpoints as f64,
        ),
        (
            "strata_checkpoint_seconds_total",
            "counter",
            "Time spent writing checkpoints.",
            d.checkpoint_seconds,
        ),
        (
            "strata_io_errors_total",
            "counter",
            "Device I/O errors.",
            d.io_errors as f64,
        ),
        (
            "strata_device_size_bytes",
            "gauge",
            "Data region size.",
            d.device_size_bytes as f64,
        ),
        (
            "strata_device_free_bytes",
            "gauge",
            "Free space.",
            d.device_free_bytes as f64,
        ),
        (
            "strata_device_used_bytes",
            "gauge",
            "Used space.",
            d.device_used_bytes as f64,
        ),
        (
            "strata_inodes",
            "gauge",
            "Inodes in use (all layers).",
            d.inodes as f64,
        ),
        (
            "strata_cache_hits_total",
            "counter",
            "Block cache hits.",
            d.cache_hits as f64,
        ),
        (
            "strata_cache_misses_total",
            "counter",
            "Block cache misses.",
            d.cache_misses as f64,
        ),
        (
            "strata_cache_bytes",
            "gauge",
            "Bytes held in the block cache.",
            d.cache_bytes as f64,
        ),
        (
            "strata_cache_capacity_bytes",
            "gauge",
            "Block cache capacity.",
            d.cache_capacity_bytes as f64,
        ),
        (
            "strata_cache_hit_ratio",
            "gauge",
            "Block cache hits over lookups since start (for a windowed ratio use the _total counters).",
            d.cache_hit_ratio,
        ),
        (
            "strata_io_inflight",
            "gauge",
            "Device operations in flight in the io_uring.",
            d.io_inflight as f64,
        ),
        (
            "strata_requests_inflight",
            "gauge",
            "Client (FUSE) reads and writes in flight in the engine.",
            d.requests_inflight as f64,
        ),
        (
            "strata_poisoned",
            "gauge",
            "1 when an I/O error made the file system read-only.",
            d.poisoned as u8 as f64,
        ),
        (
            "strata_stats_enabled",
            "gauge",
            "1 when per-layer statistics are kept (0 with --no-stats).",
            r.enabled as u8 as f64,
        ),
    ];
    for (name, kind, help, v) in scalars.iter() {
        Family::new(o, name, kind, help).sample("", *v);
    }
    if r.enabled {
        let mut f = Family::new(
            o,
            "strata_device_io_duration_seconds",
            "histogram",
            "Latency of device reads and writes of file data through the io_uring.",
        );
        f.histogram("op=\"read\"", &d.device_read_latency);
        f.histogram("op=\"write\"", &d.device_write_latency);
        Family::new(
            o,
            "strata_checkpoint_duration_seconds",
            "histogram",
            "Time to write a checkpoint.",
        )
        .histogram("", &d.checkpoint_duration);
        Family::new(
            o,
            "strata_journal_commit_duration_seconds",
            "histogram",
            "Time of a journal group commit that wrote records (data flush, chunk write, flush).",
        )
        .histogram("", &d.journal_commit_duration);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_label() {
        let mut l = BTreeMap::new();
        assert_eq!(container_of(LayerState::Active, &l), None);
        l.insert(CONTAINERD_KEY_LABEL.to_string(), "k8s.io/42/abc123".into());
        assert_eq!(
            container_of(LayerState::Active, &l).as_deref(),
            Some("abc123")
        );
        assert_eq!(container_of(LayerState::Committed, &l), None);
    }

    #[test]
    fn quantiles_and_escape() {
        let h = Histogram {
            bounds: vec![0.1, 1.0],
            cumulative: vec![90, 99, 100],
            sum_seconds: 1.0,
            count: 100,
        };
        assert_eq!(h.quantile_bound(0.5), Some(0.1));
        assert_eq!(h.quantile_bound(0.99), Some(1.0));
        assert_eq!(h.quantile_bound(1.0), Some(f64::INFINITY));
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
