//! The Prometheus endpoint: `/metrics` over plain HTTP on a TCP address (127.0.0.1 by
//! default), and the text exposition format (0.0.4) of a [`StatsReport`]: per layer (labels
//! `layer`, and `container` for active layers) and for the whole daemon, counters with
//! `_total`, base units, real histograms. The numbers come from [`crate::stats`].

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use engine::Engine;

use crate::stats::{self, Histogram, LayerStatsReport, StatsReport};

/// Render the metrics in Prometheus text exposition format: per layer (labels `layer`, and
/// `container` for active layers) and for the whole daemon. See [`render_report`].
pub fn render(engine: &Engine) -> String {
    render_report(&stats::collect(engine))
}

/// Serve `/metrics` on `addr` from a background thread.
pub fn serve_metrics(addr: SocketAddr, engine: Arc<Engine>) -> std::io::Result<SocketAddr> {
    let l = TcpListener::bind(addr)?;
    let local = l.local_addr()?;
    std::thread::Builder::new()
        .name("strata-metrics".into())
        .spawn(move || {
            for conn in l.incoming() {
                match conn {
                    Ok(s) => {
                        if let Err(e) = handle(s, &engine) {
                            log::debug!("metrics connection: {e}");
                        }
                    }
                    Err(e) => log::warn!("metrics accept: {e}"),
                }
            }
        })?;
    Ok(local)
}

fn handle(mut s: TcpStream, engine: &Engine) -> std::io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut r = BufReader::new(s.try_clone()?);
    let mut line = String::new();
    r.by_ref().take(8192).read_line(&mut line)?;
    // Drain headers.
    loop {
        let mut h = String::new();
        if r.by_ref().take(8192).read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, ctype, body) = match (method, path) {
        ("GET", "/metrics") => ("200 OK", "text/plain; version=0.0.4", render(engine)),
        ("GET", _) => (
            "404 Not Found",
            "text/plain",
            "not found; try /metrics\n".to_string(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "only GET\n".to_string(),
        ),
    };
    write!(s, "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
}

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
    let io: [(&'static str, &str, Get, u64); 6] = [
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
        (
            "strata_checksum_errors_total",
            "Data blocks read from the device that did not match their checksum (the read got EIO), per layer.",
            |l| l.checksum_errors,
            d.checksum_errors,
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
    let mut f = Family::new(
        o,
        "strata_layer_io_queue_seconds",
        "histogram",
        "Time the layer's device requests waited in the I/O scheduler (fair queue by weight, IOPS and bandwidth limits).",
    );
    for (lab, l) in &ls {
        f.histogram(lab, &l.io_queue_delay);
    }
    let mut f = Family::new(
        o,
        "strata_layer_io_device_seconds",
        "histogram",
        "Time the layer's device requests spent in the device, from when the I/O scheduler sent them to their completion.",
    );
    for (lab, l) in &ls {
        for (op, h) in [("read", &l.io_device_read), ("write", &l.io_device_write)] {
            f.histogram(&with(lab, &format!("op=\"{op}\"")), h);
        }
    }
    let mut f = Family::new(
        o,
        "strata_layer_io_throttled_seconds_total",
        "counter",
        "Time the layer's device requests were held back by its IOPS or bandwidth limit.",
    );
    for (lab, l) in &ls {
        f.sample(lab, l.io_throttled_seconds);
    }
    type GetG = fn(&LayerStatsReport) -> f64;
    let gauges: [(&'static str, &str, GetG); 4] = [
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
        (
            "strata_layer_inodes_added",
            "Inodes the layer added to what it inherited (what its inode limit counts).",
            |l| l.inodes_added as f64,
        ),
    ];
    for (name, help, get) in gauges {
        let mut f = Family::new(o, name, "gauge", help);
        for (lab, l) in &ls {
            f.sample(lab, get(l));
        }
    }
    // Limits only for the layers that have one (no series for "unlimited").
    type GetL = fn(&LayerStatsReport) -> Option<u64>;
    let limits: [(&'static str, &str, GetL); 2] = [
        (
            "strata_layer_limit_bytes",
            "The layer's space limit in bytes (compare strata_layer_owned_bytes); absent when unlimited.",
            |l| l.limit_bytes,
        ),
        (
            "strata_layer_limit_inodes",
            "The layer's inode limit (compare strata_layer_inodes_added); absent when unlimited.",
            |l| l.limit_inodes,
        ),
    ];
    for (name, help, get) in limits {
        let mut f = Family::new(o, name, "gauge", help);
        for (lab, l) in &ls {
            if let Some(v) = get(l) {
                f.sample(lab, v as f64);
            }
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
    let scalars: [(&'static str, &str, &str, f64); 23] = [
        (
            "strata_journal_commits_total",
            "counter",
            "Journal chunks made durable.",
            d.journal_commits as f64,
        ),
        (
            "strata_journal_early_commits_total",
            "counter",
            "Of the journal chunks, early ones: written without a flush so that answers survive a daemon crash (--persist-replies); a later flushing commit makes them durable.",
            d.journal_early_commits as f64,
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
            "strata_scrub_running",
            "gauge",
            "1 while an online scrub (strata scrub, POST /v1/scrub) runs.",
            d.scrub_running as u8 as f64,
        ),
        (
            "strata_scrub_checked_bytes",
            "gauge",
            "Data bytes the running or last online scrub has checked.",
            d.scrub_checked_bytes as f64,
        ),
        (
            "strata_scrub_total_bytes",
            "gauge",
            "Data bytes the running or last online scrub has to check.",
            d.scrub_total_bytes as f64,
        ),
        (
            "strata_scrub_bad_blocks_total",
            "counter",
            "Data blocks online scrubs found not matching their checksum.",
            d.scrub_bad_blocks as f64,
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
    if !d.fuse_transport.is_empty() {
        Family::new(
            o,
            "strata_fuse_transport_info",
            "gauge",
            "1, labelled with the transport FUSE requests travel on (io-uring or dev).",
        )
        .sample(
            &format!("transport=\"{}\"", escape_label(&d.fuse_transport)),
            1.0,
        );
        let mut f = Family::new(
            o,
            "strata_fuse_requests_total",
            "counter",
            "FUSE requests received from the kernel, per opcode.",
        );
        for (op, n) in &d.fuse_requests {
            f.sample(&format!("opcode=\"{}\"", escape_label(op)), *n as f64);
        }
        Family::new(
            o,
            "strata_fuse_taken_over",
            "gauge",
            "1 when this daemon took over a FUSE connection a previous daemon left held (live restart), 0 when it mounted.",
        )
        .sample("", d.fuse_taken_over as u8 as f64);
        Family::new(
            o,
            "strata_fuse_resent_requests_total",
            "counter",
            "Requests the kernel sent again after the takeover: the previous daemon had read them and not answered (FUSE_NOTIFY_RESEND).",
        )
        .sample("", d.fuse_resent_requests as f64);
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
    fn escape() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
