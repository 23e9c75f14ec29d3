//! Statistics as the control plane shows them: one [`StatsReport`] collected from the engine
//! is shown both as Prometheus text (`metrics`) and as the JSON of the admin API's
//! `GET /v1/stats`, so both show the same numbers. Rates for `GET /v1/stats` come from the
//! previous report ([`RateTracker`]).

use std::collections::{BTreeMap, HashMap};
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
    /// Inodes added to what the layer inherited (what the inode limit counts).
    #[serde(default)]
    pub inodes_added: u64,
    /// Space limit in bytes (none: unlimited).
    #[serde(default)]
    pub limit_bytes: Option<u64>,
    /// Inode limit (none: unlimited).
    #[serde(default)]
    pub limit_inodes: Option<u64>,
    /// Reads and writes in flight.
    pub inflight: u64,
    pub read_latency: Histogram,
    pub write_latency: Histogram,
    pub metadata_latency: Histogram,
    /// Time its device requests waited in the I/O scheduler.
    #[serde(default)]
    pub io_queue_delay: Histogram,
    /// Time its device reads and writes spent in the device (from when the I/O scheduler
    /// sent them to their completion).
    #[serde(default)]
    pub io_device_read: Histogram,
    #[serde(default)]
    pub io_device_write: Histogram,
    /// Seconds its requests were held back by its IOPS or bandwidth limit.
    #[serde(default)]
    pub io_throttled_seconds: f64,
    /// Data blocks its reads got from the device that did not match their checksum (the
    /// reads failed with EIO).
    #[serde(default)]
    pub checksum_errors: u64,
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
    /// Of those, early chunks (answers that wait for the journal without a flush).
    pub journal_early_commits: u64,
    pub journal_bytes: u64,
    pub checkpoints: u64,
    pub checkpoint_seconds: f64,
    pub io_errors: u64,
    /// Data blocks read from the device that did not match their checksum.
    #[serde(default)]
    pub checksum_errors: u64,
    /// Whether an online scrub is running, and the data bytes the current or last one has
    /// checked, of how many.
    #[serde(default)]
    pub scrub_running: bool,
    #[serde(default)]
    pub scrub_checked_bytes: u64,
    #[serde(default)]
    pub scrub_total_bytes: u64,
    /// Bad blocks online scrubs found since the daemon started.
    #[serde(default)]
    pub scrub_bad_blocks: u64,
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
    /// How FUSE requests reach the daemon ("io-uring" or "dev"; empty without a mount).
    #[serde(default)]
    pub fuse_transport: String,
    /// Requests the kernel sent again after this daemon took the connection over.
    pub fuse_resent_requests: u64,
    /// This daemon took over a FUSE connection a previous one left held (live restart).
    pub fuse_taken_over: bool,
    /// FUSE requests received, per opcode (LOOKUP, GETATTR, ...).
    #[serde(default)]
    pub fuse_requests: BTreeMap<String, u64>,
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
            inodes_added: i.inodes_added,
            limit_bytes: i.limits.bytes,
            limit_inodes: i.limits.inodes,
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
            r.io_queue_delay = l.io_queue_delay.snapshot().into();
            r.io_device_read = l.io_device_read.snapshot().into();
            r.io_device_write = l.io_device_write.snapshot().into();
            r.io_throttled_seconds = ld(&l.io_throttled_ns) as f64 / 1e9;
            r.checksum_errors = ld(&l.checksum_errors);
        }
        layers.push(r);
    }
    let used = s.blocks.saturating_sub(s.bfree) * bs;
    let lookups = hits + misses;
    let front = st.frontend().unwrap_or_default();
    let scrub = engine.scrub_status();
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
        journal_early_commits: ld(&c.early_commits),
        journal_bytes: ld(&c.journal_bytes),
        checkpoints: ld(&c.checkpoints),
        checkpoint_seconds: ld(&c.checkpoint_nanos) as f64 / 1e9,
        io_errors: ld(&c.io_errors),
        checksum_errors: ld(&c.checksum_errors),
        scrub_running: scrub
            .as_ref()
            .is_some_and(|x| x.state == engine::scrub::ScrubState::Running),
        scrub_checked_bytes: ld(&c.scrub_blocks) * engine::BLOCK,
        scrub_total_bytes: scrub
            .as_ref()
            .map_or(0, |x| x.report.total_blocks * engine::BLOCK),
        scrub_bad_blocks: ld(&c.scrub_bad_blocks),
        io_inflight: engine.io_inflight(),
        requests_inflight: st.inflight(),
        poisoned: engine.is_poisoned(),
        layers_by_state: by_state,
        device_read_latency: st.device_read.snapshot().into(),
        device_write_latency: st.device_write.snapshot().into(),
        checkpoint_duration: st.checkpoint.snapshot().into(),
        journal_commit_duration: st.journal_commit.snapshot().into(),
        fuse_transport: front.transport,
        fuse_resent_requests: front.resent,
        fuse_taken_over: front.taken_over,
        fuse_requests: front
            .requests
            .into_iter()
            .map(|(op, n)| (op.to_string(), n))
            .collect(),
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
    fn quantiles() {
        let h = Histogram {
            bounds: vec![0.1, 1.0],
            cumulative: vec![90, 99, 100],
            sum_seconds: 1.0,
            count: 100,
        };
        assert_eq!(h.quantile_bound(0.5), Some(0.1));
        assert_eq!(h.quantile_bound(0.99), Some(1.0));
        assert_eq!(h.quantile_bound(1.0), Some(f64::INFINITY));
    }
}
