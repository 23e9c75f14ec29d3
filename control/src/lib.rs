//! # strata-control
//!
//! Strata's control plane: the Prometheus endpoint (`/metrics`, text format) with the
//! engine's whole-daemon counters, and the admin API (JSON over HTTP on a unix socket, see
//! [`admin`]). The containerd snapshotter and per-layer statistics come with the layer work.
//! No engine logic lives here.
#![forbid(unsafe_code)]

pub mod admin;

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use engine::Engine;

/// Render the metrics in Prometheus text exposition format.
pub fn render(engine: &Engine) -> String {
    let c = engine.counters();
    let s = engine.statfs();
    let (hits, misses, cached) = engine.cache_stats();
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: f64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    let ld = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed) as f64;
    metric(
        "strata_read_ops_total",
        "counter",
        "Read requests served.",
        ld(&c.read_ops),
    );
    metric(
        "strata_read_bytes_total",
        "counter",
        "Bytes read by clients.",
        ld(&c.read_bytes),
    );
    metric(
        "strata_write_ops_total",
        "counter",
        "Write requests served.",
        ld(&c.write_ops),
    );
    metric(
        "strata_write_bytes_total",
        "counter",
        "Bytes written by clients.",
        ld(&c.write_bytes),
    );
    metric(
        "strata_journal_commits_total",
        "counter",
        "Journal chunks made durable.",
        ld(&c.journal_commits),
    );
    metric(
        "strata_journal_bytes_total",
        "counter",
        "Bytes written to the journal.",
        ld(&c.journal_bytes),
    );
    metric(
        "strata_checkpoints_total",
        "counter",
        "Checkpoints written.",
        ld(&c.checkpoints),
    );
    metric(
        "strata_checkpoint_seconds_total",
        "counter",
        "Time spent writing checkpoints.",
        ld(&c.checkpoint_nanos) / 1e9,
    );
    metric(
        "strata_io_errors_total",
        "counter",
        "Device I/O errors.",
        ld(&c.io_errors),
    );
    let bs = s.bsize as f64;
    metric(
        "strata_device_size_bytes",
        "gauge",
        "Data region size.",
        s.blocks as f64 * bs,
    );
    metric(
        "strata_device_free_bytes",
        "gauge",
        "Free space.",
        s.bfree as f64 * bs,
    );
    metric(
        "strata_device_used_bytes",
        "gauge",
        "Used space.",
        (s.blocks - s.bfree) as f64 * bs,
    );
    metric(
        "strata_inodes",
        "gauge",
        "Inodes in use.",
        (s.files - s.ffree) as f64,
    );
    metric(
        "strata_cache_hits_total",
        "counter",
        "Block cache hits.",
        hits as f64,
    );
    metric(
        "strata_cache_misses_total",
        "counter",
        "Block cache misses.",
        misses as f64,
    );
    metric(
        "strata_cache_bytes",
        "gauge",
        "Bytes held in the block cache.",
        cached as f64,
    );
    metric(
        "strata_io_inflight",
        "gauge",
        "Device operations in flight.",
        engine.io_inflight() as f64,
    );
    metric(
        "strata_poisoned",
        "gauge",
        "1 when an I/O error made the file system read-only.",
        engine.is_poisoned() as u8 as f64,
    );
    out
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
