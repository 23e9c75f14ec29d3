//! results.json, results.md (the tables printed at the end) and hand-written SVG charts (no
//! plotting crate: plotters needs a font stack to lay out text, an SVG needs none).

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use serde_json::{json, Map, Value};

use crate::cli::{self, Args};
use crate::fmt::{fmt_size, group_thousands};
use crate::host;
use crate::results::{summarize, Results, Summary};
use crate::systems::{overlay, SystemKind};
use crate::workloads::{Config, Detail, Group, Unit};
use crate::Res;

/// How the run was made, for the report headers.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub started: String,
    pub unix_time: u64,
    pub quick: bool,
    pub repeats: usize,
    pub cfg: Config,
    pub runtime_s: u64,
    pub fio_version: String,
    pub kernel: String,
    pub cpu: String,
    pub cores: usize,
    pub dir: String,
    pub strata_bin: String,
    pub remount: bool,
    pub git_rev: Option<String>,
    /// Versions of the peers (fuse-overlayfs).
    pub peers: Vec<String>,
    /// The command line that made the run.
    pub command: String,
    pub duration_s: f64,
    /// Systems that could not be set up or failed midway, with the reason.
    pub failures: Vec<(String, String)>,
}

impl RunInfo {
    /// What can be known before the run: the command line, the sizes, the host.
    pub fn new(args: &Args, cfg: &Config, fio_version: String) -> RunInfo {
        let (date, time) = host::local_date_time();
        RunInfo {
            started: format!("{date} {}:{}", &time[..2], &time[2..4]),
            unix_time: host::unix_time(),
            quick: args.quick,
            repeats: args.repeats(),
            cfg: cfg.clone(),
            runtime_s: args.runtime_s(),
            fio_version,
            kernel: host::kernel_release(),
            cpu: host::cpu_model(),
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            dir: args.dir.display().to_string(),
            strata_bin: args.strata.display().to_string(),
            remount: args.remount(),
            git_rev: host::git_rev(&cli::workspace_root()),
            peers: overlay::fuse_overlayfs_version().into_iter().collect(),
            command: std::env::args().collect::<Vec<_>>().join(" "),
            duration_s: 0.0,
            failures: Vec::new(),
        }
    }
}

/// results.json, results.md and every chart, into `out`.
pub fn write_all(res: &Results, info: &RunInfo, out: &Path) -> Res<()> {
    let json = serde_json::to_string_pretty(&to_json(res, info)).map_err(|e| e.to_string())?;
    let w = |name: &str, text: String| {
        let p = out.join(name);
        fs::write(&p, text).map_err(|e| format!("write {}: {e}", p.display()))
    };
    w("results.json", json + "\n")?;
    w("results.md", markdown(res, info))?;
    for (name, svg) in charts(res, info) {
        w(&name, svg)?;
    }
    Ok(())
}

fn fmt_value(v: f64, unit: Unit) -> String {
    match unit {
        Unit::Iops | Unit::MibPerSec | Unit::Mib => group_thousands(v),
        Unit::Seconds => {
            if v < 0.1 {
                format!("{v:.4}")
            } else {
                format!("{v:.3}")
            }
        }
        Unit::Millis => {
            if v < 10.0 {
                format!("{v:.3}")
            } else {
                group_thousands(v)
            }
        }
    }
}

fn fmt_summary(s: &Summary, unit: Unit) -> String {
    if s.n > 1 {
        format!(
            "{} ({}–{})",
            fmt_value(s.median, unit),
            fmt_value(s.min, unit),
            fmt_value(s.max, unit)
        )
    } else {
        fmt_value(s.median, unit)
    }
}

/// A ratio to ext4: plain for throughput, "N×" for time and memory.
fn fmt_ratio(ratio: f64, unit: Unit) -> String {
    if unit.higher_is_better() {
        format!("{ratio:.2}")
    } else if ratio >= 10.0 {
        format!("{ratio:.0}×")
    } else {
        format!("{ratio:.2}×")
    }
}

fn summary_json(s: Option<Summary>) -> Value {
    match s {
        Some(s) => json!({"median": s.median, "min": s.min, "max": s.max, "n": s.n}),
        None => Value::Null,
    }
}

pub fn to_json(r: &Results, info: &RunInfo) -> Value {
    let workloads: Vec<Value> = r
        .workloads
        .iter()
        .enumerate()
        .map(|(w, wl)| {
            let mut systems = Map::new();
            for (s, sys) in r.systems.iter().enumerate() {
                let c = &r.cells[w][s];
                let mut o = json!({
                    "samples": c.samples,
                    "summary": summary_json(c.summary()),
                    "errors": c.errors,
                });
                if matches!(wl.detail, Detail::Fio(_)) {
                    o["clat_p50_us"] = json!(c.clat_p50_us);
                    o["clat_p50_us_median"] = json!(summarize(&c.clat_p50_us).map(|s| s.median));
                    o["raw"] = json!(c.raw);
                }
                if matches!(wl.detail, Detail::Readers(_)) {
                    o["page_cache_mib"] =
                        json!(c.mem_parts.iter().map(|p| p.0).collect::<Vec<_>>());
                    o["daemon_rss_mib"] =
                        json!(c.mem_parts.iter().map(|p| p.1).collect::<Vec<_>>());
                }
                systems.insert(sys.name().to_string(), o);
            }
            let mut ratios = Map::new();
            for sys in r.compared() {
                if let Some(c) = r.compare(w, sys) {
                    ratios.insert(
                        sys.name().to_string(),
                        json!({"ratio": c.ratio, "speed": c.speed}),
                    );
                }
            }
            let fio = match wl.detail {
                Detail::Fio(j) => {
                    json!({"rw": j.rw, "bs": j.bs, "iodepth": j.iodepth, "ioengine": j.ioengine})
                }
                _ => Value::Null,
            };
            json!({
                "id": wl.id,
                "label": wl.label,
                "group": wl.group.key(),
                "unit": wl.unit.name(),
                "higher_is_better": wl.unit.higher_is_better(),
                "goal": wl.goal.map(|g| g.to_string()),
                "strata_goal_met": r.goal_met(w),
                "fio": fio,
                "systems": systems,
                "vs_ext4": ratios,
            })
        })
        .collect();
    let c = &info.cfg;
    json!({
        "started": info.started,
        "unix_time": info.unix_time,
        "duration_s": info.duration_s,
        "command": info.command,
        "config": {
            "quick": info.quick,
            "repeats": info.repeats,
            "file_size_bytes": c.file_size,
            "image_size_bytes": c.image_size,
            "fio_runtime_s": info.runtime_s,
            "meta_files": c.meta_files,
            "tar_entries": c.tar_entries(),
            "tar_bytes": c.tar_bytes,
            "clone_sizes": c.clone_sizes,
            "clone_depths": c.clone_depths,
            "clone_reps": c.clone_reps,
            "readers": c.readers,
            "direct": true,
            "dir": info.dir,
            "remount_before_each_job": info.remount,
            "systems": r.systems.iter().map(|s| s.name()).collect::<Vec<_>>(),
        },
        "host": {
            "fio": info.fio_version,
            "peers": info.peers,
            "kernel": info.kernel,
            "cpu": info.cpu,
            "cores": info.cores,
        },
        "strata_bin": info.strata_bin,
        "git_rev": info.git_rev,
        "failures": info.failures.iter().map(|(s, e)| json!({"system": s, "error": e})).collect::<Vec<_>>(),
        "workloads": workloads,
    })
}

/// The Markdown table of one group: workload, one column per system, then per compared system
/// its ratio to ext4, and Strata's goal and whether it was met. None when the group is empty.
pub fn group_table(r: &Results, group: Group) -> Option<String> {
    let rows: Vec<usize> = (0..r.workloads.len())
        .filter(|&w| r.workloads[w].group == group)
        .collect();
    if rows.is_empty() {
        return None;
    }
    let compared = r.compared();
    let mut head = vec!["workload".to_string()];
    head.extend(r.systems.iter().map(|s| s.name().to_string()));
    for s in &compared {
        head.push(format!("{}/ext4", s.name()));
    }
    let goals = r.systems.contains(&SystemKind::Strata);
    if goals {
        head.push("strata goal".into());
        head.push("met?".into());
    }
    let mut out = String::new();
    let _ = writeln!(out, "| {} |", head.join(" | "));
    let _ = writeln!(
        out,
        "|{}",
        head.iter()
            .enumerate()
            .map(|(i, _)| if i == 0 { "---|" } else { "---:|" })
            .collect::<String>()
    );
    for w in rows {
        let wl = &r.workloads[w];
        let mut row = vec![format!("{} ({})", wl.label, wl.unit.name())];
        for (s, sys) in r.systems.iter().enumerate() {
            let c = &r.cells[w][s];
            row.push(match c.summary() {
                Some(sum) => {
                    let failed = if c.errors.is_empty() { "" } else { " ⚠" };
                    format!("{}{failed}", fmt_summary(&sum, wl.unit))
                }
                None if !c.errors.is_empty() => "error".into(),
                None if !sys.has_layers() && wl.needs_layers => "n/a".into(),
                None => "—".into(),
            });
        }
        for s in &compared {
            row.push(match r.compare(w, *s) {
                Some(c) => fmt_ratio(c.ratio, wl.unit),
                None => "—".into(),
            });
        }
        if goals {
            row.push(wl.goal.map(|g| g.to_string()).unwrap_or_else(|| "—".into()));
            row.push(match r.goal_met(w) {
                Some(true) => "met".into(),
                Some(false) => "**missed**".into(),
                None if wl.goal.is_some() => "?".into(),
                None => "".into(),
            });
        }
        let _ = writeln!(out, "| {} |", row.join(" | "));
    }
    Some(out)
}

/// Every group's table, each under a heading (what the run prints at the end).
pub fn table(r: &Results) -> String {
    let mut out = String::new();
    for g in Group::ALL {
        if let Some(t) = group_table(r, g) {
            let _ = writeln!(out, "### {}\n\n{t}", g.title());
        }
    }
    out
}

fn latency_table(r: &Results) -> Option<String> {
    let mut rows = String::new();
    for (w, wl) in r.workloads.iter().enumerate() {
        if !matches!(wl.detail, Detail::Fio(j) if j.bs == "4k") {
            continue;
        }
        let vals: Vec<String> = r
            .systems
            .iter()
            .enumerate()
            .map(|(s, _)| match summarize(&r.cells[w][s].clat_p50_us) {
                Some(x) => format!("{:.0}", x.median),
                None => "—".into(),
            })
            .collect();
        let _ = writeln!(rows, "| {} | {} |", wl.label, vals.join(" | "));
    }
    if rows.is_empty() {
        return None;
    }
    let names: Vec<&str> = r.systems.iter().map(|s| s.name()).collect();
    Some(format!(
        "| completion latency p50 (µs) | {} |\n|---|{}\n{rows}",
        names.join(" | "),
        "---:|".repeat(names.len())
    ))
}

/// Memory: the median sample's split into page cache and daemon RSS growth, and the total as
/// a multiple of one copy of the file.
fn memory_table(r: &Results, info: &RunInfo) -> Option<String> {
    let one = (info.cfg.image_size >> 20) as f64;
    let mut rows = String::new();
    for (w, wl) in r.workloads.iter().enumerate() {
        let Detail::Readers(n) = wl.detail else {
            continue;
        };
        let vals: Vec<String> = r
            .systems
            .iter()
            .enumerate()
            .map(|(s, _)| {
                let c = &r.cells[w][s];
                let Some(sum) = c.summary() else {
                    return "—".into();
                };
                // The sample nearest the median, for its split.
                let i = (0..c.samples.len())
                    .min_by(|&a, &b| {
                        (c.samples[a] - sum.median)
                            .abs()
                            .total_cmp(&(c.samples[b] - sum.median).abs())
                    })
                    .expect("has samples");
                match c.mem_parts.get(i) {
                    Some((pc, rss)) => format!("{:.2}× ({pc:.0} + {rss:.0})", sum.median / one),
                    None => format!("{:.2}×", sum.median / one),
                }
            })
            .collect();
        let _ = writeln!(rows, "| {n} | {} |", vals.join(" | "));
    }
    if rows.is_empty() {
        return None;
    }
    let names: Vec<&str> = r.systems.iter().map(|s| s.name()).collect();
    Some(format!(
        "| readers | {} |\n|---:|{}\n{rows}",
        names.join(" | "),
        "---:|".repeat(names.len())
    ))
}

pub fn markdown(r: &Results, info: &RunInfo) -> String {
    let c = &info.cfg;
    let mut md = String::new();
    let _ = writeln!(md, "# Strata benchmark — {}\n", info.started);
    let _ = writeln!(
        md,
        "{} · {} · kernel {} · {} × {} · {} · git {} · {:.0} s\n\n`{}`\n",
        info.fio_version,
        if info.peers.is_empty() {
            "fuse-overlayfs: not found".to_string()
        } else {
            info.peers.join(", ")
        },
        info.kernel,
        info.cores,
        info.cpu,
        if info.quick { "--quick" } else { "full run" },
        info.git_rev.as_deref().unwrap_or("(none)"),
        info.duration_s,
        info.command,
    );
    let _ = writeln!(
        md,
        "Each figure is the median of {} run{}{}. Ratios are system / ext4 of the medians, measured in \
         this run: for IOPS and MiB/s higher is better, for seconds and MiB lower is better. Every \
         system lives under {} on the same disk: ext4 is a plain directory there (the physical \
         limit, no layers); kernel overlayfs and fuse-overlayfs have a lower directory there and, per \
         container, an upper and a work directory; strata is an image file there, {}. The files \
         the workloads read (the {} fio file, the {} image file) were written once into the lower \
         layer (strata: a committed layer) and are read through a container made over it (strata: \
         a clone), as a container sees its image.\n",
        info.repeats,
        if info.repeats == 1 { "" } else { "s" },
        if info.repeats > 1 {
            " (min–max in parentheses; for clones, over the clones timed)"
        } else {
            ""
        },
        info.dir,
        if info.remount {
            "remounted before each job so that its block cache starts cold, as the page cache does after drop_caches"
        } else {
            "kept mounted between jobs (--no-remount: its block cache stays warm)"
        },
        fmt_size(c.file_size),
        fmt_size(c.image_size),
    );
    for g in Group::ALL {
        let Some(t) = group_table(r, g) else { continue };
        let _ = writeln!(md, "## {}\n", g.title());
        match g {
            Group::Fio => {
                let _ = writeln!(
                    md,
                    "fio {} s per job, one job, caches dropped before each, jobs in the order \
                     shown, in one container per repeat. † The first write job in the container \
                     is the first to open the inherited file for writing: the overlays copy the \
                     whole file up then, inside that job's time (what a container sees; the \
                     first-write row below times the copy-up alone); the later write jobs find \
                     it copied. Strata copies nothing (4 KiB copy-on-write). The libaio rows carry \
                     the same goals as their io_uring counterparts.\n",
                    info.runtime_s
                );
            }
            Group::Meta => {
                let _ = writeln!(
                    md,
                    "In a container of each system. {} empty files in one directory (stat warm, \
                     right after create). The tar holds {} directories of {} files ({} of \
                     pseudo-random data), made by this harness the same way every time and \
                     extracted with the system's `tar`; tar -x and rm -rf are each timed up to \
                     `sync` plus an fsync of the directory (a FUSE file system gets no syncfs; \
                     the fsync makes Strata commit its journal), so everything is on disk on \
                     every system.\n",
                    group_thousands(c.meta_files as f64),
                    c.tar_dirs,
                    c.tar_files_per_dir,
                    fmt_size(c.tar_bytes),
                );
            }
            Group::Layers => {
                let _ = writeln!(
                    md,
                    "First write: open the inherited {} file read-write in a new container, write \
                     4 KiB in its middle, fsync (ext4: the file itself). Clone: making a container \
                     over a parent of N empty files, or over a parent at depth D (D stacked lower \
                     directories; strata: a chain of D committed layers each adding a file), \
                     median of {} clones: for the overlays mkdir of upper/work/merged plus \
                     mount(2) (fuse-overlayfs: until its mount appears), for strata the admin API's \
                     clone request over its unix socket, which returns when the clone is durable.\n",
                    fmt_size(c.file_size),
                    c.clone_reps
                );
            }
            Group::Memory => {
                let _ = writeln!(
                    md,
                    "N containers (ext4: N readers of the one file; overlays: N mounts over one \
                     lower directory; strata: N clones of one layer) read the same {} file at \
                     once, buffered, 128 KiB at a time, after caches were dropped. Memory is the \
                     growth of the page cache (Cached + Buffers in /proc/meminfo) plus the growth \
                     of the serving daemons' RSS (strata's daemon; one fuse-overlayfs per mount). \
                     One copy is {} MiB. Other activity on the host adds noise.\n",
                    fmt_size(c.image_size),
                    c.image_size >> 20
                );
            }
        }
        md.push_str(&t);
        match g {
            Group::Fio => {
                if let Some(lat) = latency_table(r) {
                    let _ = writeln!(md, "\n{lat}");
                }
            }
            Group::Memory => {
                if let Some(m) = memory_table(r, info) {
                    let _ = writeln!(
                        md,
                        "\nAs multiples of one copy (page cache + daemon RSS, MiB, of the median run):\n\n{m}"
                    );
                }
            }
            _ => {}
        }
        md.push('\n');
        for (file, _) in group_charts(r, info, g) {
            let _ = writeln!(md, "![{}]({file})", g.title());
        }
        md.push('\n');
    }
    let errors: Vec<String> = r
        .workloads
        .iter()
        .enumerate()
        .flat_map(|(w, wl)| {
            r.systems.iter().enumerate().flat_map(move |(s, sys)| {
                r.cells[w][s]
                    .errors
                    .iter()
                    .map(move |e| format!("- {} on {}: {}", wl.id, sys.name(), one_line(e)))
            })
        })
        .collect();
    if !info.failures.is_empty() || !errors.is_empty() {
        md.push_str("## Errors\n\n");
        for (s, e) in &info.failures {
            let _ = writeln!(md, "- {s}: {}", one_line(e));
        }
        for e in errors {
            let _ = writeln!(md, "{e}");
        }
        md.push('\n');
    }
    let _ = writeln!(
        md,
        "Raw fio JSON: `raw/<system>/<workload>-r<N>.json`; daemon logs: `raw/strata.log`, \
         `raw/fuse-overlayfs.log`; everything in `results.json`. Overview chart: `ratios.svg`."
    );
    md
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One colour per system, the same in every chart.
fn color(s: SystemKind) -> &'static str {
    match s {
        SystemKind::Ext4 => "#718096",
        SystemKind::Overlayfs => "#dd6b20",
        SystemKind::FuseOverlayfs => "#38a169",
        SystemKind::Strata => "#2b6cb0",
    }
}

/// Every chart with data: (file name, SVG).
pub fn charts(r: &Results, info: &RunInfo) -> Vec<(String, String)> {
    let mut v = Vec::new();
    if !r.compared().is_empty() {
        v.push(("ratios.svg".to_string(), svg(r)));
    }
    for g in Group::ALL {
        v.extend(group_charts(r, info, g));
    }
    v
}

/// The charts of one group (fio has two: IOPS and MiB/s).
fn group_charts(r: &Results, info: &RunInfo, g: Group) -> Vec<(String, String)> {
    let pick = |pred: &dyn Fn(Group, Unit) -> bool| -> Vec<usize> {
        (0..r.workloads.len())
            .filter(|&w| pred(r.workloads[w].group, r.workloads[w].unit))
            .filter(|&w| r.cells[w].iter().any(|c| c.summary().is_some()))
            .collect()
    };
    let mut v = Vec::new();
    match g {
        Group::Fio => {
            let iops = pick(&|g, u| g == Group::Fio && u == Unit::Iops);
            if !iops.is_empty() {
                v.push((
                    "fio-iops.svg".into(),
                    bar_chart(
                        r,
                        &iops,
                        "fio 4k random I/O (IOPS, higher is better)",
                        &format!(
                            "direct=1, {} s per job; bar = median, whisker = min–max",
                            info.runtime_s
                        ),
                        false,
                    ),
                ));
            }
            let bw = pick(&|g, u| g == Group::Fio && u == Unit::MibPerSec);
            if !bw.is_empty() {
                v.push((
                    "fio-throughput.svg".into(),
                    bar_chart(
                        r,
                        &bw,
                        "fio 1M sequential I/O (MiB/s, higher is better)",
                        &format!(
                            "direct=1, {} s per job; bar = median, whisker = min–max",
                            info.runtime_s
                        ),
                        false,
                    ),
                ));
            }
        }
        Group::Meta => {
            let w = pick(&|g, _| g == Group::Meta);
            if !w.is_empty() {
                v.push((
                    "metadata.svg".into(),
                    bar_chart(
                        r,
                        &w,
                        "Metadata (seconds, log scale, lower is better)",
                        "bar = median, whisker = min–max",
                        true,
                    ),
                ));
            }
        }
        Group::Layers => {
            let w = pick(&|g, _| g == Group::Layers);
            if !w.is_empty() {
                v.push((
                    "layers.svg".into(),
                    bar_chart(
                        r,
                        &w,
                        "Layers: clone and first write (ms, log scale, lower is better)",
                        "bar = median, whisker = min–max; red tick = Strata's goal",
                        true,
                    ),
                ));
            }
        }
        Group::Memory => {
            let w = pick(&|g, _| g == Group::Memory);
            if !w.is_empty() {
                v.push(("memory.svg".into(), memory_chart(r, info, &w)));
            }
        }
    }
    v
}

/// A "nice" upper bound for a linear axis and its tick step.
fn nice_axis(max: f64) -> (f64, f64) {
    let max = if max > 0.0 { max } else { 1.0 };
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    ((max / step).ceil() * step, step)
}

fn fmt_tick(v: f64) -> String {
    if v >= 1000.0 {
        group_thousands(v)
    } else if v >= 1.0 {
        format!("{}", (v * 100.0).round() / 100.0)
    } else {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// Horizontal grouped bars: one group per workload (`rows`), one bar per system with data
/// (median) and a min–max whisker; the value printed after it. A red tick marks Strata's
/// absolute goal where there is one.
fn bar_chart(r: &Results, rows: &[usize], title: &str, subtitle: &str, log: bool) -> String {
    let systems: Vec<(usize, SystemKind)> = r.systems.iter().copied().enumerate().collect();
    let label_w = 330.0;
    let plot_w = 440.0;
    let value_w = 110.0;
    let bar_h = 13.0;
    let group_gap = 12.0;
    let top = 76.0;
    let group_h = bar_h * systems.len().max(1) as f64 + group_gap;
    let bottom = top + group_h * rows.len() as f64;
    let height = bottom + 34.0;
    let width = label_w + plot_w + value_w;

    let mut lo = f64::INFINITY;
    let mut hi: f64 = 0.0;
    for &w in rows {
        for &(s, _) in &systems {
            if let Some(x) = r.cells[w][s].summary() {
                hi = hi.max(x.max);
                if x.min > 0.0 {
                    lo = lo.min(x.min);
                }
            }
        }
        if let Some(crate::workloads::Goal::Absolute(g, _)) = r.workloads[w].goal {
            hi = hi.max(g);
            lo = lo.min(g);
        }
    }
    if !lo.is_finite() {
        lo = 1.0;
    }
    let (x, ticks): (Box<dyn Fn(f64) -> f64>, Vec<f64>) = if log {
        let l0 = lo.log10().floor();
        let l1 = hi.max(lo * 10.0).log10().ceil().max(l0 + 1.0);
        let f = move |v: f64| {
            let v = v.max(10f64.powf(l0));
            label_w + plot_w * ((v.log10() - l0) / (l1 - l0)).clamp(0.0, 1.0)
        };
        let ticks = (l0 as i32..=l1 as i32).map(|e| 10f64.powi(e)).collect();
        (Box::new(f), ticks)
    } else {
        let (max, step) = nice_axis(hi);
        let f = move |v: f64| label_w + plot_w * (v / max).clamp(0.0, 1.0);
        let n = (max / step).round() as usize;
        (Box::new(f), (0..=n).map(|i| i as f64 * step).collect())
    };

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="10" y="20" font-size="15" font-weight="bold">{}</text>"#,
        xml_escape(title)
    );
    let _ = writeln!(
        s,
        r##"<text x="10" y="38" fill="#555">{}</text>"##,
        xml_escape(subtitle)
    );
    legend(
        &mut s,
        &systems.iter().map(|p| p.1).collect::<Vec<_>>(),
        10.0,
        58.0,
    );
    for t in &ticks {
        let _ = writeln!(
            s,
            r##"<line x1="{0:.1}" y1="{top:.1}" x2="{0:.1}" y2="{bottom:.1}" stroke="#e2e2e2"/><text x="{0:.1}" y="{1:.1}" text-anchor="middle" fill="#555">{2}</text>"##,
            x(*t),
            bottom + 15.0,
            fmt_tick(*t)
        );
    }
    for (i, &w) in rows.iter().enumerate() {
        let wl = &r.workloads[w];
        let y0 = top + group_h * i as f64;
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            label_w - 8.0,
            y0 + (group_h - group_gap) / 2.0 + 4.0,
            xml_escape(&wl.label)
        );
        for (j, &(si, sys)) in systems.iter().enumerate() {
            let y = y0 + bar_h * j as f64;
            let c = &r.cells[w][si];
            match c.summary() {
                Some(sum) => {
                    let x0 = x(0.0);
                    let xm = x(sum.median);
                    let _ = writeln!(
                        s,
                        r##"<rect x="{x0:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{}: {} {}</title></rect>"##,
                        y + 1.0,
                        (xm - x0).max(0.5),
                        bar_h - 2.0,
                        color(sys),
                        sys.name(),
                        fmt_summary(&sum, wl.unit),
                        wl.unit.name()
                    );
                    if sum.n > 1 {
                        let ym = y + bar_h / 2.0;
                        let _ = writeln!(
                            s,
                            r##"<line x1="{:.1}" y1="{ym:.1}" x2="{:.1}" y2="{ym:.1}" stroke="#222"/><line x1="{0:.1}" y1="{2:.1}" x2="{0:.1}" y2="{3:.1}" stroke="#222"/><line x1="{1:.1}" y1="{2:.1}" x2="{1:.1}" y2="{3:.1}" stroke="#222"/>"##,
                            x(sum.min),
                            x(sum.max),
                            ym - 3.0,
                            ym + 3.0
                        );
                    }
                    let _ = writeln!(
                        s,
                        r##"<text x="{:.1}" y="{:.1}" fill="#333" font-size="10">{}</text>"##,
                        x(sum.max).max(xm) + 4.0,
                        y + bar_h - 3.0,
                        fmt_value(sum.median, wl.unit)
                    );
                }
                None => {
                    let why = if !c.errors.is_empty() { "error" } else { "n/a" };
                    let _ = writeln!(
                        s,
                        r##"<text x="{:.1}" y="{:.1}" fill="#a0aec0" font-size="10">{} {why}</text>"##,
                        label_w + 4.0,
                        y + bar_h - 3.0,
                        sys.name()
                    );
                }
            }
        }
        if let (Some(crate::workloads::Goal::Absolute(g, _)), true) =
            (wl.goal, r.systems.contains(&SystemKind::Strata))
        {
            let gx = x(g);
            let _ = writeln!(
                s,
                r##"<line x1="{gx:.1}" y1="{:.1}" x2="{gx:.1}" y2="{:.1}" stroke="#e53e3e" stroke-width="2"/>"##,
                y0 - 2.0,
                y0 + group_h - group_gap + 2.0
            );
        }
    }
    let _ = writeln!(
        s,
        r##"<line x1="{label_w:.1}" y1="{top:.1}" x2="{label_w:.1}" y2="{bottom:.1}" stroke="#333"/>"##
    );
    s.push_str("</svg>\n");
    s
}

fn legend(s: &mut String, systems: &[SystemKind], x0: f64, y: f64) {
    let mut lx = x0;
    for sys in systems {
        let _ = writeln!(
            s,
            r#"<rect x="{lx:.1}" y="{:.1}" width="10" height="10" fill="{}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            y - 9.0,
            color(*sys),
            lx + 14.0,
            y,
            sys.name()
        );
        lx += 30.0 + 7.0 * sys.name().len() as f64;
    }
}

/// Memory vs number of readers: one line per system (median, min–max whiskers), a dashed
/// line at one copy of the file and a red one at Strata's goal (1.2 copies).
fn memory_chart(r: &Results, info: &RunInfo, rows: &[usize]) -> String {
    let one = (info.cfg.image_size >> 20) as f64;
    let (left, right, top, plot_h) = (70.0, 150.0, 70.0, 300.0);
    let plot_w = 520.0;
    let width = left + plot_w + right;
    let height = top + plot_h + 50.0;
    let bottom = top + plot_h;
    let mut hi = 1.3 * one;
    for &w in rows {
        for c in &r.cells[w] {
            if let Some(s) = c.summary() {
                hi = hi.max(s.max);
            }
        }
    }
    let (max, step) = nice_axis(hi * 1.05);
    let y = |v: f64| bottom - plot_h * (v.max(0.0) / max).min(1.0);
    let n = rows.len();
    let x = |i: usize| left + plot_w * (i as f64 + 0.5) / n as f64;

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="10" y="20" font-size="15" font-weight="bold">Memory for N containers reading one {} file (MiB, lower is better)</text>"#,
        fmt_size(info.cfg.image_size)
    );
    let _ = writeln!(
        s,
        r##"<text x="10" y="38" fill="#555">page cache growth + daemon RSS growth; dashed: one copy; red: Strata's goal (1.2 copies at 8)</text>"##
    );
    let mut v = 0.0;
    while v <= max + 1e-9 {
        let _ = writeln!(
            s,
            r##"<line x1="{left:.1}" y1="{0:.1}" x2="{1:.1}" y2="{0:.1}" stroke="#e2e2e2"/><text x="{2:.1}" y="{3:.1}" text-anchor="end" fill="#555">{4}</text>"##,
            y(v),
            left + plot_w,
            left - 6.0,
            y(v) + 4.0,
            group_thousands(v)
        );
        v += step;
    }
    for (i, &w) in rows.iter().enumerate() {
        let label = match r.workloads[w].detail {
            Detail::Readers(k) => k.to_string(),
            _ => "?".into(),
        };
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#555">{label}</text>"##,
            x(i),
            bottom + 16.0
        );
    }
    let _ = writeln!(
        s,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle">containers (N)</text>"##,
        left + plot_w / 2.0,
        bottom + 36.0
    );
    let _ = writeln!(
        s,
        r##"<line x1="{left:.1}" y1="{0:.1}" x2="{1:.1}" y2="{0:.1}" stroke="#333" stroke-dasharray="5 4"/><text x="{2:.1}" y="{3:.1}" fill="#333" font-size="11">one copy</text>"##,
        y(one),
        left + plot_w,
        left + 6.0,
        y(one) + 13.0
    );
    if r.systems.contains(&SystemKind::Strata) {
        let _ = writeln!(
            s,
            r##"<line x1="{left:.1}" y1="{0:.1}" x2="{1:.1}" y2="{0:.1}" stroke="#e53e3e" stroke-dasharray="2 3"/><text x="{2:.1}" y="{3:.1}" fill="#e53e3e" font-size="11">goal: 1.2 copies</text>"##,
            y(1.2 * one),
            left + plot_w,
            left + 6.0,
            y(1.2 * one) - 4.0
        );
    }
    let mut end_labels: Vec<(f64, SystemKind, f64)> = Vec::new();
    for (si, sys) in r.systems.iter().enumerate() {
        let pts: Vec<(f64, Summary)> = rows
            .iter()
            .enumerate()
            .filter_map(|(i, &w)| r.cells[w][si].summary().map(|s| (x(i), s)))
            .collect();
        if pts.is_empty() {
            continue;
        }
        let path: Vec<String> = pts
            .iter()
            .map(|(px, sm)| format!("{px:.1},{:.1}", y(sm.median)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"/>"#,
            path.join(" "),
            color(*sys)
        );
        for (px, sm) in &pts {
            let _ = writeln!(
                s,
                r#"<circle cx="{px:.1}" cy="{:.1}" r="3.5" fill="{}"><title>{}: {:.0} MiB ({:.2}× one copy)</title></circle>"#,
                y(sm.median),
                color(*sys),
                sys.name(),
                sm.median,
                sm.median / one
            );
            if sm.n > 1 {
                let _ = writeln!(
                    s,
                    r#"<line x1="{px:.1}" y1="{:.1}" x2="{px:.1}" y2="{:.1}" stroke="{}"/>"#,
                    y(sm.min),
                    y(sm.max),
                    color(*sys)
                );
            }
        }
        if let Some((_, sm)) = pts.last() {
            end_labels.push((y(sm.median), *sys, sm.median / one));
        }
    }
    // Labels at the right end of the lines, pushed apart so that equal values stay legible.
    end_labels.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut last = f64::NEG_INFINITY;
    for (ly, sys, copies) in end_labels {
        let ly = ly.max(last + 13.0);
        last = ly;
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" fill="{}" font-size="11">{} {copies:.2}×</text>"#,
            left + plot_w + 8.0,
            ly + 4.0,
            color(sys),
            sys.name()
        );
    }
    legend(&mut s, &r.systems, left, 58.0);
    let _ = writeln!(
        s,
        r##"<line x1="{left:.1}" y1="{top:.1}" x2="{left:.1}" y2="{bottom:.1}" stroke="#333"/><line x1="{left:.1}" y1="{bottom:.1}" x2="{0:.1}" y2="{bottom:.1}" stroke="#333"/>"##,
        left + plot_w
    );
    s.push_str("</svg>\n");
    s
}

/// Horizontal bars: each compared system's speed relative to ext4 per workload (1.0 = ext4,
/// higher is better; for timed workloads ext4 time / system time), a dashed line at 1.0 and
/// a red tick at Strata's goal.
pub fn svg(r: &Results) -> String {
    let compared = r.compared();
    let rows: Vec<usize> = (0..r.workloads.len())
        .filter(|&w| compared.iter().any(|s| r.compare(w, *s).is_some()))
        .collect();
    let label_w = 330.0;
    let plot_w = 440.0;
    let bar_h = 14.0;
    let group_gap = 10.0;
    let top = 76.0;
    let group_h = bar_h * compared.len().max(1) as f64 + group_gap;
    let height = top + group_h * rows.len() as f64 + 40.0;
    let width = label_w + plot_w + 70.0;

    let mut max = 1.2f64;
    for &w in &rows {
        for s in &compared {
            if let Some(c) = r.compare(w, *s) {
                max = max.max(c.speed * 1.05);
            }
        }
        if let Some(g) = r.workloads[w].goal.and_then(|g| g.as_speed()) {
            max = max.max(g * 1.05);
        }
    }
    // Round up to a multiple of 0.2; beyond 3 the bars are cut at the edge (values printed).
    let max = ((max * 5.0).ceil() / 5.0).min(3.0);
    let x = |v: f64| label_w + plot_w * (v / max).min(1.0);

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="10" y="20" font-size="15" font-weight="bold">Relative to ext4 (1.0 = ext4, higher is better)</text>"#
    );
    let _ = writeln!(
        s,
        r##"<text x="10" y="38" fill="#555">time and memory plotted as ext4 / system; red tick = Strata's goal; axis cut at {max:.1}</text>"##
    );
    legend(&mut s, &compared, 10.0, 58.0);
    // Grid and axis labels every 0.2 (every 0.5 when the scale is wide, 1 when wider).
    let step = if max > 2.0 { 0.5 } else { 0.2 };
    let bottom = height - 30.0;
    let mut v = 0.0;
    while v <= max + 1e-9 {
        let _ = writeln!(
            s,
            r##"<line x1="{0:.1}" y1="{top:.1}" x2="{0:.1}" y2="{bottom:.1}" stroke="#e2e2e2"/><text x="{0:.1}" y="{1:.1}" text-anchor="middle" fill="#555">{v:.1}</text>"##,
            x(v),
            bottom + 15.0
        );
        v += step;
    }
    for (i, &w) in rows.iter().enumerate() {
        let wl = &r.workloads[w];
        let y0 = top + group_h * i as f64;
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            label_w - 8.0,
            y0 + (group_h - group_gap) / 2.0 + 4.0,
            xml_escape(&wl.label)
        );
        for (j, sys) in compared.iter().enumerate() {
            let y = y0 + bar_h * j as f64;
            match r.compare(w, *sys) {
                Some(c) => {
                    let _ = writeln!(
                        s,
                        r##"<rect x="{label_w:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{}: {:.3}</title></rect><text x="{:.1}" y="{:.1}" fill="#333" font-size="10">{:.2}</text>"##,
                        y + 1.0,
                        (x(c.speed) - label_w).max(0.5),
                        bar_h - 2.0,
                        color(*sys),
                        sys.name(),
                        c.speed,
                        x(c.speed) + 4.0,
                        y + bar_h - 3.0,
                        c.speed
                    );
                }
                None => {
                    let _ = writeln!(
                        s,
                        r##"<text x="{:.1}" y="{:.1}" fill="#c53030" font-size="10">{} no data</text>"##,
                        label_w + 4.0,
                        y + bar_h - 3.0,
                        sys.name()
                    );
                }
            }
        }
        if let (Some(g), true) = (
            wl.goal.and_then(|g| g.as_speed()),
            compared.contains(&SystemKind::Strata),
        ) {
            let gx = x(g);
            let _ = writeln!(
                s,
                r##"<line x1="{gx:.1}" y1="{:.1}" x2="{gx:.1}" y2="{:.1}" stroke="#e53e3e" stroke-width="2"/>"##,
                y0 - 2.0,
                y0 + group_h - group_gap + 2.0
            );
        }
    }
    let _ = writeln!(
        s,
        r##"<line x1="{0:.1}" y1="{top:.1}" x2="{0:.1}" y2="{bottom:.1}" stroke="#333" stroke-dasharray="4 3"/>"##,
        x(1.0)
    );
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::suite;

    fn sample() -> Results {
        let mut r = Results::new(
            suite::workloads(&suite::all(&Config::new(false))),
            SystemKind::ALL.to_vec(),
        );
        r.cell_mut("fio-randread-4k-qd32", SystemKind::Ext4).samples =
            vec![58900.0, 57000.0, 60000.0];
        r.cell_mut("fio-randread-4k-qd32", SystemKind::Strata)
            .samples = vec![45000.0, 44000.0, 46000.0];
        r.cell_mut("fio-randread-4k-qd32", SystemKind::Overlayfs)
            .samples = vec![53000.0];
        r.cell_mut("meta-create", SystemKind::Ext4).samples = vec![0.57];
        r.cell_mut("meta-create", SystemKind::Strata).samples = vec![2.0];
        r.cell_mut("meta-create", SystemKind::FuseOverlayfs).samples = vec![15.0, 19.0, 14.0];
        r.cell_mut("fio-seqwrite-1m-qd8", SystemKind::Strata).errors = vec!["boom\nline 2".into()];
        r.cell_mut("clone-files-100000", SystemKind::Strata).samples = vec![0.3, 0.25, 0.4];
        r.cell_mut("clone-files-100000", SystemKind::Overlayfs)
            .samples = vec![0.2];
        r.cell_mut("clone-depth-100", SystemKind::Strata).samples = vec![1.3];
        for (n, e, s) in [(1, 512.0, 100.0), (8, 512.0, 256.0)] {
            let id = format!("mem-readers-{n}");
            r.cell_mut(&id, SystemKind::Ext4).samples = vec![e];
            r.cell_mut(&id, SystemKind::Ext4).mem_parts = vec![(e, 0.0)];
            r.cell_mut(&id, SystemKind::Strata).samples = vec![s];
            r.cell_mut(&id, SystemKind::Strata).mem_parts = vec![(2.0, s - 2.0)];
            r.cell_mut(&id, SystemKind::FuseOverlayfs).samples = vec![512.0 * (n as f64 + 1.0)];
        }
        r
    }

    fn info() -> RunInfo {
        RunInfo {
            started: "2026-01-01 00:00".into(),
            unix_time: 0,
            quick: false,
            repeats: 3,
            cfg: Config::new(false),
            runtime_s: 5,
            fio_version: "fio-3.33".into(),
            kernel: "6".into(),
            cpu: "cpu".into(),
            cores: 2,
            dir: "/var/tmp/strata-bench".into(),
            strata_bin: "strata".into(),
            remount: true,
            git_rev: None,
            peers: vec!["fuse-overlayfs: version 1.10".into()],
            command: "strata-bench".into(),
            duration_s: 1.0,
            failures: vec![],
        }
    }

    #[test]
    fn table_rows() {
        let t = table(&sample());
        assert!(t.contains("| workload | ext4 | overlayfs | fuse-overlayfs | strata | overlayfs/ext4 | fuse-overlayfs/ext4 | strata/ext4 | strata goal | met? |"), "{t}");
        assert!(t.contains("| 4k randread QD32 io_uring (IOPS) | 58,900 (57,000–60,000) | 53,000 | — | 45,000 (44,000–46,000) | 0.90 | — | 0.76 | ≥ 0.7 | met |"), "{t}");
        assert!(
            t.contains("| create 20,000 empty files (s) | 0.570 | — | 15.000 (14.000–19.000) | 2.000 | — | 26× | 3.51× | ≤ 3× time | **missed** |"),
            "{t}"
        );
        assert!(
            t.contains(
                "| 1M seqwrite QD8 io_uring (MiB/s) | — | — | — | error | — | — | — | ≥ 0.7 | ? |"
            ),
            "{t}"
        );
        assert!(t.contains("| clone over a parent of 100,000 files (ms) | n/a | 0.200 | — | 0.300 (0.250–0.400) | — | — | — | ≤ 1 ms | met |"), "{t}");
        assert!(t.contains("| clone of a parent at depth 100 (ms) | n/a | — | — | 1.300 | — | — | — | ≤ 1 ms | **missed** |"), "{t}");
        assert!(t.contains("| memory, 8 containers reading one 512 MiB file (MiB) | 512 | — | 4,608 | 256 | — | 9.00× | 0.50× | ≤ 1.2× one copy | met |"), "{t}");
    }

    #[test]
    fn svgs_are_well_formed_enough() {
        let charts = charts(&sample(), &info());
        let names: Vec<&str> = charts.iter().map(|c| c.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "ratios.svg",
                "fio-iops.svg",
                "metadata.svg",
                "layers.svg",
                "memory.svg"
            ]
        );
        for (name, s) in &charts {
            assert!(
                s.starts_with("<svg") && s.trim_end().ends_with("</svg>"),
                "{name}"
            );
            assert_eq!(s.matches("<svg").count(), 1);
            assert!(!s.contains("NaN") && !s.contains("inf"), "{name}: {s}");
            if let Some(dir) = std::env::var_os("STRATA_BENCH_SVG_SAMPLE") {
                std::fs::write(std::path::Path::new(&dir).join(name), s).unwrap();
            }
        }
        assert!(charts[0].1.contains("no data"));
    }

    #[test]
    fn json_and_markdown() {
        let v = to_json(&sample(), &info());
        let w = v["workloads"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["id"] == "fio-randread-4k-qd32")
            .unwrap();
        assert!(
            (w["vs_ext4"]["strata"]["ratio"].as_f64().unwrap() - 45000.0 / 58900.0).abs() < 1e-9
        );
        assert_eq!(w["strata_goal_met"], true);
        assert_eq!(w["group"], "fio");
        let md = markdown(&sample(), &info());
        assert!(md.contains("## Errors") && md.contains("boom line 2"));
        assert!(md.contains("![Memory density](memory.svg)"));
        assert!(
            md.contains("| 8 | 1.00× (512 + 0) | — | 9.00× | 0.50× (2 + 254) |"),
            "{md}"
        );
    }
}
