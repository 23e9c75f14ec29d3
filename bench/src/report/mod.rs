//! The report of a run: results.json (every sample), results.md (the tables, also printed at
//! the end) and the SVG charts, all written into the results directory.
//!
//! | file | what |
//! |---|---|
//! | [`json`] | results.json |
//! | [`markdown`] | results.md: a table per group, latency and memory tables, errors |
//! | [`charts`] | which charts, and their bars |
//! | [`svg`] | the bar-chart renderer every chart uses |

use std::fs;
use std::path::Path;

use crate::cli::{self, Args};
use crate::fmt::group_thousands;
use crate::host;
use crate::results::{Results, Summary};
use crate::systems::overlay;
use crate::workloads::{Config, Unit};
use crate::Res;

pub mod charts;
pub mod json;
pub mod markdown;
pub mod svg;

pub use charts::charts;
pub use json::to_json;
pub use markdown::{markdown, table};

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

pub(crate) fn fmt_value(v: f64, unit: Unit) -> String {
    match unit {
        Unit::Iops | Unit::MibPerSec | Unit::Mib | Unit::Rate(_) => group_thousands(v),
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
        Unit::Micros => {
            if v < 10.0 {
                format!("{v:.1}")
            } else {
                group_thousands(v)
            }
        }
    }
}

pub(crate) fn fmt_summary(s: &Summary, unit: Unit) -> String {
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
pub(crate) fn fmt_ratio(ratio: f64, unit: Unit) -> String {
    if unit.higher_is_better() {
        format!("{ratio:.2}")
    } else if ratio >= 10.0 {
        format!("{ratio:.0}×")
    } else {
        format!("{ratio:.2}×")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::suite;
    use crate::systems::SystemKind;

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
        for (sys, iops, p50, p99) in [
            (SystemKind::Ext4, 400_000.0, 2.0, 5.0),
            (SystemKind::Strata, 100_000.0, 9.0, 30.0),
        ] {
            let c = r.cell_mut("buf-randread-4k-hot-inherited", sys);
            c.samples = vec![iops];
            c.clat_p50_us = vec![p50];
            c.clat_p99_us = vec![p99];
        }
        r.cell_mut("fio-randread-4k-qd32", SystemKind::Strata)
            .cache_hit_pct = vec![0.0, 12.5, 3.0];
        r.cell_mut("buf-randwrite-4k-qd1-p50", SystemKind::Ext4)
            .samples = vec![80.0];
        r.cell_mut("buf-randwrite-4k-qd1-p50", SystemKind::Strata)
            .samples = vec![110.0];
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
                "buffered.svg",
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
        let buffered = &charts[2].1;
        assert!(buffered.contains("hot 4k randread psync, inherited 128 MiB"));
        assert!(
            !buffered.contains("dd bs=4k"),
            "rows without data are left out"
        );
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
        assert_eq!(
            w["systems"]["strata"]["cache_hit_pct"],
            serde_json::json!([0.0, 12.5, 3.0])
        );
        assert!(w["systems"]["ext4"].get("cache_hit_pct").is_none());
        let md = markdown(&sample(), &info());
        assert!(md.contains("## Errors") && md.contains("boom line 2"));
        assert!(md.contains("![Memory density](memory.svg)"));
        assert!(
            md.contains(
                "| blocks read served by Strata's block cache | strata |\n\
                 |---|---:|\n\
                 | 4k randread QD32 io_uring | 3 % |\n\n"
            ),
            "only rows with a share, the median of the repeats: {md}"
        );
        assert!(md.contains(
            "| latency p50, total (completion only) (µs) | ext4 | overlayfs | fuse-overlayfs | strata |\n\
             |---|---:|---:|---:|---:|\n\
             | 4k randread QD1 io_uring | — | — | — | — |\n"
        ));
        assert!(
            md.contains("| readers | ext4 | overlayfs | fuse-overlayfs | strata |\n|---:|---:|")
        );
        assert!(
            md.contains("![Buffered I/O and small files (own and inherited files)](buffered.svg)")
        );
        assert!(
            md.contains(
                "| hot 4k randread psync, inherited 128 MiB | (2.0 / 5.0) | — | — | (9.0 / 30) |"
            ),
            "{md}"
        );
        assert!(md.contains("| 4k randwrite QD1 direct, p50 (µs) | 80 | — | — | 110 | — | — | 1.38× | ≤ 1.5× time | met |"), "{md}");
        assert!(
            md.contains("| 8 | 1.00× (512 + 0) | — | 9.00× | 0.50× (2 + 254) |"),
            "{md}"
        );
    }
}
