//! results.md: a heading, how the run was made, then per group a paragraph on what was
//! measured, its table (a column per system, ratios to ext4, Strata's goals) and its charts;
//! the errors last.

use std::fmt::Write as _;

use super::{charts, fmt_ratio, fmt_summary, RunInfo};
use crate::fmt::{fmt_size, group_thousands};
use crate::inputs::{PY_BIN, PY_STDLIB};
use crate::results::{summarize, Results};
use crate::smallfiles::PY_IMPORTS;
use crate::workloads::{Detail, Group};

/// A Markdown table with numbers right-aligned (the first column too with `first_right`);
/// None without rows.
fn md_table(head: &[String], first_right: bool, rows: &[Vec<String>]) -> Option<String> {
    if rows.is_empty() {
        return None;
    }
    let align = |i| {
        if i > 0 || first_right {
            "---:|"
        } else {
            "---|"
        }
    };
    let mut out = format!("| {} |\n|", head.join(" | "));
    out.extend((0..head.len()).map(align));
    out.push('\n');
    for row in rows {
        let _ = writeln!(out, "| {} |", row.join(" | "));
    }
    Some(out)
}

/// The Markdown table of one group: workload, one column per system, then per compared system
/// its ratio to ext4, and Strata's goal and whether it was met. None when the group is empty.
pub fn group_table(r: &Results, group: Group) -> Option<String> {
    let compared = r.compared();
    let goals = r.systems.iter().any(|s| s.is_strata());
    let mut head = vec!["workload".to_string()];
    head.extend(r.systems.iter().map(|s| s.name().to_string()));
    head.extend(compared.iter().map(|s| format!("{}/ext4", s.name())));
    if goals {
        head.extend(["strata goal".into(), "met?".into()]);
    }
    let mut rows = Vec::new();
    for (w, wl) in r.workloads.iter().enumerate() {
        if wl.group != group {
            continue;
        }
        let mut row = vec![format!("{} ({})", wl.label, wl.unit.name())];
        for (sys, c) in r.systems.iter().zip(&r.cells[w]) {
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
            row.push(wl.goal.map_or_else(|| "—".into(), |g| g.to_string()));
            row.push(match r.goal_met(w) {
                Some(true) => "met".into(),
                Some(false) => "**missed**".into(),
                None if wl.goal.is_some() => "?".into(),
                None => "".into(),
            });
        }
        rows.push(row);
    }
    md_table(&head, false, &rows)
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

/// A first column, then one per system.
fn per_system(r: &Results, first: &str) -> Vec<String> {
    let names = r.systems.iter().map(|s| s.name().to_string());
    std::iter::once(first.to_string()).chain(names).collect()
}

/// fio's median latency (p50) of the group's 4k jobs, total (submission to completion) with the
/// completion part in parentheses; with `p99`, "p50 / p99" of each.
fn latency_table(r: &Results, group: Group, p99: bool) -> Option<String> {
    let median = |v: &[f64]| {
        summarize(v).map(|s| match s.median {
            m if m < 10.0 => format!("{m:.1}"),
            m => format!("{m:.0}"),
        })
    };
    let pair = |a: &[f64], b: &[f64]| match (median(a), median(b)) {
        (Some(a), Some(b)) if p99 => Some(format!("{a} / {b}")),
        (Some(a), _) => Some(a),
        (None, _) => None,
    };
    let mut rows = Vec::new();
    for (w, wl) in r.workloads.iter().enumerate() {
        if wl.group != group || !matches!(wl.detail, Detail::Fio(j) if j.bs == "4k") {
            continue;
        }
        let mut row = vec![wl.label.clone()];
        row.extend(r.cells[w].iter().map(|c| {
            match (
                pair(&c.lat_p50_us, &c.lat_p99_us),
                pair(&c.clat_p50_us, &c.clat_p99_us),
            ) {
                (Some(t), Some(c)) => format!("{t} ({c})"),
                (None, Some(c)) => format!("({c})"),
                (Some(t), None) => t,
                (None, None) => "—".into(),
            }
        }));
        rows.push(row);
    }
    let first = if p99 {
        "latency p50 / p99, total (completion only) (µs)"
    } else {
        "latency p50, total (completion only) (µs)"
    };
    md_table(&per_system(r, first), false, &rows)
}

/// Strata's block cache during the group's jobs: the median share of the blocks read that it
/// served, for each Strata system; rows where no job read through it are left out.
fn cache_table(r: &Results, group: Group) -> Option<String> {
    let strata: Vec<usize> = (0..r.systems.len())
        .filter(|&s| r.systems[s].is_strata())
        .collect();
    let mut rows = Vec::new();
    for (w, wl) in r.workloads.iter().enumerate() {
        if wl.group != group {
            continue;
        }
        let cells: Vec<Option<f64>> = strata
            .iter()
            .map(|&s| summarize(&r.cells[w][s].cache_hit_pct).map(|m| m.median))
            .collect();
        if cells.iter().all(Option::is_none) {
            continue;
        }
        let mut row = vec![wl.label.clone()];
        row.extend(cells.iter().map(|c| match c {
            Some(p) => format!("{p:.0} %"),
            None => "—".into(),
        }));
        rows.push(row);
    }
    let head: Vec<String> = std::iter::once("blocks read served by Strata's block cache".into())
        .chain(strata.iter().map(|&s| r.systems[s].name().to_string()))
        .collect();
    md_table(&head, false, &rows)
}

/// Memory: the median sample's split into page cache and daemon RSS growth, and the total as
/// a multiple of one copy of the file.
fn memory_table(r: &Results, info: &RunInfo) -> Option<String> {
    let one = (info.cfg.image_size >> 20) as f64;
    let mut rows = Vec::new();
    for (w, wl) in r.workloads.iter().enumerate() {
        let Detail::Readers(n) = wl.detail else {
            continue;
        };
        let mut row = vec![n.to_string()];
        row.extend(r.cells[w].iter().map(|c| {
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
        }));
        rows.push(row);
    }
    md_table(&per_system(r, "readers"), true, &rows)
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
         this run: for IOPS, MiB/s and other rates higher is better, for seconds, µs and MiB \
         lower is better. Every \
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
            Group::Buffered => {
                let b = &c.buffered;
                let _ = writeln!(
                    md,
                    "In the repeat's container, caches dropped (and strata remounted) before each \
                     step. *Own* files are written in the container (strata keeps a layer's own \
                     data in the kernel page cache, with write-back); *inherited* ones are in the \
                     lower layer (strata: shared blocks, read through its block cache, each read a \
                     FUSE request). **dd**: `dd if=/dev/zero bs=4k conv=fsync` of {dd} into a new \
                     file, and with `conv=notrunc` over an inherited {dd} file (the overlays copy \
                     it up when dd opens it), MiB/s from start to fsync. **O_APPEND**: {lines} \
                     write(2) calls of 22 bytes each from the harness, the calls alone timed (a \
                     logger keeps its file open: neither the open, where the overlays copy the \
                     inherited 1 MiB log up, nor the close, where a FUSE mount writes its dirty \
                     pages back, is counted). **4-byte appends**: {tiny} write(2) calls, then the \
                     file read back with 4-byte read(2)s, the calls alone timed. **Hot reads**: fio `--ioengine=psync \
                     --direct=0 --invalidate=0 --bs=4k`, {rt} s per job, on an own {own} file \
                     and on the first {inh} of the inherited fio file (less than strata's default \
                     256 MiB block cache), each read once first. **QD1 writes**: fio \
                     `--direct=1 --iodepth=1 --ioengine=psync` random 4 KiB writes on the own \
                     file; its p50 and p99 are rows of their own. **Small files**: {small} files \
                     of 1–8 KiB, 100 to a directory, open + read + close of each, after an \
                     untimed first pass. **Git objects**: {git} files of 200 B–4 KiB into 256 \
                     fan-out directories, each written to a temporary file, closed and renamed \
                     into place, then `sync` + fsync of the directory. **Interpreter**: `{bin} -S \
                     -c '{imports}'` with `PYTHONHOME` on a copy of {lib} (with its .pyc files) \
                     in the lower layer and `PYTHONDONTWRITEBYTECODE=1`, every module checked to \
                     come from the copy; the first start after the caches were dropped, and the \
                     median of {runs} more. **tar -x**: that standard library as a tar, extracted \
                     into the container up to `sync` + fsync of the directory. Strata's goals: \
                     ≥ 0.8 of ext4 on a layer's own files, ≥ 0.5 on inherited sequential reads, \
                     ≥ 0.1 on inherited hot random reads, tar -x ≤ 1.5× ext4's time, QD1 write \
                     p50 ≤ 1.5× ext4's.\n",
                    dd = fmt_size(b.dd_size),
                    lines = group_thousands(b.log_lines as f64),
                    tiny = group_thousands(b.tiny_appends as f64),
                    rt = info.runtime_s,
                    own = fmt_size(b.hot_own_size),
                    inh = fmt_size(b.hot_inherited_size.min(c.file_size)),
                    small = group_thousands(b.small_files as f64),
                    git = group_thousands(b.git_objects as f64),
                    bin = PY_BIN,
                    imports = PY_IMPORTS,
                    lib = PY_STDLIB,
                    runs = b.python_runs,
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
            Group::Fio | Group::Buffered => {
                if let Some(lat) = latency_table(r, g, g == Group::Buffered) {
                    let _ = writeln!(md, "\n{lat}");
                }
                if let Some(cache) = cache_table(r, g) {
                    let _ = writeln!(
                        md,
                        "\nStrata's block cache during those jobs (median of the repeats). A figure \
                         whose reads it served in part measures the cache, not the device path ext4's \
                         O_DIRECT jobs always take; fio's random jobs read each block once per pass \
                         over the file, so they find it there only when a job outlasts a pass:\n\n{cache}"
                    );
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
        for (spec, _) in charts::group_specs(r, info, g) {
            let _ = writeln!(md, "![{}]({})", g.title(), spec.file);
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
