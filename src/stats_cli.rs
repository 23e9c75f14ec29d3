//! `strata stats`: per-layer statistics from the admin API's `GET /v1/stats`, as a table of
//! layers sorted by I/O (`--watch` refreshes it like `top`), or as JSON.

use std::path::Path;
use std::time::Duration;

use control::admin::{serde_json, Client};
use control::stats::StatsReport;

use crate::layer_cli::human_bytes;

#[derive(clap::Args, Debug)]
pub struct StatsArgs {
    /// Refresh every INTERVAL seconds (default 2) until interrupted, like `top`.
    #[arg(long, short = 'w')]
    watch: bool,
    /// Seconds between refreshes with --watch.
    #[arg(long, default_value_t = 2.0)]
    interval: f64,
    /// Print the daemon's JSON answer.
    #[arg(long)]
    json: bool,
    /// Show at most N layers (the busiest).
    #[arg(long, short = 'n')]
    top: Option<usize>,
}

pub fn run(a: StatsArgs, socket: &Path) -> Result<(), String> {
    let c = Client::new(socket);
    if !a.watch {
        let r = c.stats()?;
        if a.json {
            let s = serde_json::to_string_pretty(&r).map_err(|e| e.to_string())?;
            println!("{s}");
        } else {
            print!("{}", table(&r, a.top));
        }
        return Ok(());
    }
    let every = Duration::from_secs_f64(a.interval.clamp(0.2, 3600.0));
    loop {
        let r = c.stats()?;
        if a.json {
            println!("{}", serde_json::to_string(&r).map_err(|e| e.to_string())?);
        } else {
            // Clear the screen and home the cursor, as top does.
            print!("\x1b[H\x1b[2J{}", table(&r, a.top));
        }
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        std::thread::sleep(every);
    }
}

fn rate_bytes(v: f64) -> String {
    format!("{}/s", human_bytes(v.round() as u64))
}

fn ms(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(x) if x.is_infinite() => ">2.5s".into(),
        Some(x) if x < 0.001 => format!("{:.0}us", x * 1e6),
        Some(x) => format!("{:.1}ms", x * 1e3),
    }
}

/// The table: one line per layer, busiest (bytes per second, then total bytes) first.
pub fn table(r: &StatsReport, top: Option<usize>) -> String {
    let d = &r.daemon;
    let mut out = String::new();
    out.push_str(&format!(
        "device {} used of {} ({} free) | cache {} of {}, hit ratio {:.1}% | journal {} commits, {} | checkpoints {} | io errors {}{}\n",
        human_bytes(d.device_used_bytes),
        human_bytes(d.device_size_bytes),
        human_bytes(d.device_free_bytes),
        human_bytes(d.cache_bytes),
        human_bytes(d.cache_capacity_bytes),
        d.cache_hit_ratio * 100.0,
        d.journal_commits,
        human_bytes(d.journal_bytes),
        d.checkpoints,
        d.io_errors,
        if d.poisoned { " | READ-ONLY after I/O error" } else { "" },
    ));
    let states: Vec<String> = d
        .layers_by_state
        .iter()
        .map(|(s, n)| format!("{n} {s}"))
        .collect();
    out.push_str(&format!(
        "layers: {} | FUSE over {} ({} requests{}) | in flight: {} requests, {} device ops | rates over {:.1}s{}\n\n",
        states.join(", "),
        if d.fuse_transport.is_empty() { "-" } else { d.fuse_transport.as_str() },
        d.fuse_requests.values().sum::<u64>(),
        if d.fuse_taken_over {
            format!("; connection taken over, {} resent", d.fuse_resent_requests)
        } else {
            String::new()
        },
        d.requests_inflight,
        d.io_inflight,
        r.interval_seconds,
        if r.enabled {
            ""
        } else {
            " | per-layer statistics off (--no-stats)"
        }
    ));
    let mut ls: Vec<_> = r.layers.iter().collect();
    ls.sort_by(|a, b| {
        let ra = a.rates.read_bytes_per_second + a.rates.write_bytes_per_second;
        let rb = b.rates.read_bytes_per_second + b.rates.write_bytes_per_second;
        rb.total_cmp(&ra)
            .then(b.io_bytes().cmp(&a.io_bytes()))
            .then(a.id.cmp(&b.id))
    });
    if let Some(n) = top {
        ls.truncate(n);
    }
    let header = [
        "LAYER",
        "CONTAINER",
        "STATE",
        "R/s",
        "W/s",
        "READ/s",
        "WRITE/s",
        "META/s",
        "R-P99",
        "W-P99",
        "READ",
        "WRITTEN",
        "OWNED",
        "SHARED",
        "INODES",
        "COW",
        "ERRS",
    ];
    let rows: Vec<Vec<String>> = ls
        .iter()
        .map(|l| {
            vec![
                l.id.clone(),
                l.container.clone().unwrap_or_else(|| "-".into()),
                l.state.clone(),
                format!("{:.0}", l.rates.read_ops_per_second),
                format!("{:.0}", l.rates.write_ops_per_second),
                rate_bytes(l.rates.read_bytes_per_second),
                rate_bytes(l.rates.write_bytes_per_second),
                format!("{:.0}", l.rates.metadata_ops_per_second),
                ms(l.rates.read_p99_seconds),
                ms(l.rates.write_p99_seconds),
                human_bytes(l.read_bytes),
                human_bytes(l.write_bytes),
                match l.limit_bytes {
                    // Space used of the limit, e.g. "1.2G/2.0G".
                    Some(max) => format!("{}/{}", human_bytes(l.owned_bytes), human_bytes(max)),
                    None => human_bytes(l.owned_bytes),
                },
                human_bytes(l.shared_bytes),
                match l.limit_inodes {
                    Some(max) => format!("{} (+{}/{max})", l.inodes, l.inodes_added),
                    None => l.inodes.to_string(),
                },
                l.cow_blocks.to_string(),
                l.errors.values().sum::<u64>().to_string(),
            ]
        })
        .collect();
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i < 3 {
                s.push_str(&format!("{c:<width$}  ", width = w[i]));
            } else {
                s.push_str(&format!("{c:>width$}  ", width = w[i]));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    out.push_str(&line(header.iter().map(|s| s.to_string()).collect()));
    for r in rows {
        out.push_str(&line(r));
    }
    if ls.is_empty() {
        out.push_str("(no layers)\n");
    }
    out
}
