//! results.json, results.md (the table printed at the end) and a hand-made SVG bar chart.

use std::fmt::Write as _;

use serde_json::{json, Map, Value};

use crate::results::{Results, Summary};
use crate::systems::SystemKind;
use crate::workloads::{group_thousands, Unit};

/// How the run was made, for the report headers.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub started: String,
    pub unix_time: u64,
    pub quick: bool,
    pub repeats: usize,
    pub file_size: u64,
    pub runtime_s: u64,
    pub meta_files: usize,
    pub fio_version: String,
    pub kernel: String,
    pub cpu: String,
    pub cores: usize,
    pub dir: String,
    pub strata_bin: String,
    pub remount: bool,
    pub git_rev: Option<String>,
    pub duration_s: f64,
    /// Systems that could not be set up or failed midway, with the reason.
    pub failures: Vec<(String, String)>,
}

fn fmt_value(v: f64, unit: Unit) -> String {
    match unit {
        Unit::Iops | Unit::MibPerSec => group_thousands(v),
        Unit::Seconds => {
            if v < 0.1 {
                format!("{v:.4}")
            } else {
                format!("{v:.3}")
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

fn fmt_size(bytes: u64) -> String {
    if bytes % (1 << 30) == 0 {
        format!("{} GiB", bytes >> 30)
    } else {
        format!("{} MiB", bytes >> 20)
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
                systems.insert(
                    sys.name().to_string(),
                    json!({
                        "samples": c.samples,
                        "summary": summary_json(c.summary()),
                        "clat_p50_us": c.clat_p50_us,
                        "clat_p50_us_median": crate::results::summarize(&c.clat_p50_us).map(|s| s.median),
                        "raw": c.raw,
                        "errors": c.errors,
                    }),
                );
            }
            let mut ratios = Map::new();
            for sys in r.compared() {
                if let Some(c) = r.compare(w, sys) {
                    ratios.insert(
                        sys.name().to_string(),
                        json!({"ratio": c.ratio, "speed": c.speed, "goal_met": c.met}),
                    );
                }
            }
            let fio = match wl.kind {
                crate::workloads::Kind::Fio(j) => {
                    json!({"rw": j.rw, "bs": j.bs, "iodepth": j.iodepth, "ioengine": j.ioengine})
                }
                crate::workloads::Kind::Meta(_) => Value::Null,
            };
            json!({
                "id": wl.id,
                "label": wl.label,
                "unit": wl.unit.name(),
                "higher_is_better": wl.unit.higher_is_better(),
                "goal": wl.goal.map(|g| g.to_string()),
                "fio": fio,
                "systems": systems,
                "vs_ext4": ratios,
            })
        })
        .collect();
    json!({
        "started": info.started,
        "unix_time": info.unix_time,
        "duration_s": info.duration_s,
        "config": {
            "quick": info.quick,
            "repeats": info.repeats,
            "file_size_bytes": info.file_size,
            "fio_runtime_s": info.runtime_s,
            "meta_files": info.meta_files,
            "direct": true,
            "dir": info.dir,
            "remount_before_each_job": info.remount,
            "systems": r.systems.iter().map(|s| s.name()).collect::<Vec<_>>(),
        },
        "host": {
            "fio": info.fio_version,
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

/// The Markdown table: workload, one column per system, then per compared system its ratio,
/// and Strata's goal and whether it was met.
pub fn table(r: &Results) -> String {
    let compared = r.compared();
    let mut head = vec!["workload".to_string()];
    head.extend(r.systems.iter().map(|s| s.name().to_string()));
    for s in &compared {
        head.push(if compared.len() == 1 {
            "ratio".to_string()
        } else {
            format!("{}/ext4", s.name())
        });
    }
    let goals = r.systems.contains(&SystemKind::Strata) && r.systems.contains(&SystemKind::Ext4);
    if goals {
        head.push("goal".into());
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
    for (w, wl) in r.workloads.iter().enumerate() {
        let mut row = vec![format!("{} ({})", wl.label, wl.unit.name())];
        for (s, _) in r.systems.iter().enumerate() {
            let c = &r.cells[w][s];
            row.push(match c.summary() {
                Some(sum) => {
                    let failed = if c.errors.is_empty() { "" } else { " ⚠" };
                    format!("{}{failed}", fmt_summary(&sum, wl.unit))
                }
                None if !c.errors.is_empty() => "error".into(),
                None => "—".into(),
            });
        }
        for s in &compared {
            row.push(match r.compare(w, *s) {
                Some(c) => format!("{:.2}", c.ratio),
                None => "—".into(),
            });
        }
        if goals {
            row.push(wl.goal.map(|g| g.to_string()).unwrap_or_else(|| "—".into()));
            row.push(match r.compare(w, SystemKind::Strata).and_then(|c| c.met) {
                Some(true) => "yes".into(),
                Some(false) => "**no**".into(),
                None if wl.goal.is_some() => "?".into(),
                None => "".into(),
            });
        }
        let _ = writeln!(out, "| {} |", row.join(" | "));
    }
    out
}

fn latency_table(r: &Results) -> Option<String> {
    let mut rows = String::new();
    for (w, wl) in r.workloads.iter().enumerate() {
        if !matches!(wl.kind, crate::workloads::Kind::Fio(j) if j.bs == "4k") {
            continue;
        }
        let vals: Vec<String> = r
            .systems
            .iter()
            .enumerate()
            .map(
                |(s, _)| match crate::results::summarize(&r.cells[w][s].clat_p50_us) {
                    Some(x) => format!("{:.0}", x.median),
                    None => "—".into(),
                },
            )
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

pub fn markdown(r: &Results, info: &RunInfo) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Strata benchmark — {}\n", info.started);
    let _ = writeln!(
        md,
        "{} · kernel {} · {} × {} · {} file, {} s per job, direct=1, one job, caches dropped before each job · \
         {} empty files for metadata · {} · git {}\n",
        info.fio_version,
        info.kernel,
        info.cores,
        info.cpu,
        fmt_size(info.file_size),
        info.runtime_s,
        group_thousands(info.meta_files as f64),
        if info.quick { "--quick" } else { "full run" },
        info.git_rev.as_deref().unwrap_or("(none)"),
    );
    let _ = writeln!(
        md,
        "Each figure is the median of {} run{}{}. Ratios are strata / ext4 of the medians, measured in this \
         run: for IOPS and MiB/s higher is better, for seconds lower is better. ext4 is a directory on the \
         host's root file system under {}; strata is an image file in the same tree, {}. The libaio \
         rows carry the same goals as their io_uring counterparts.\n",
        info.repeats,
        if info.repeats == 1 { "" } else { "s" },
        if info.repeats > 1 { " (min–max in parentheses)" } else { "" },
        info.dir,
        if info.remount {
            "remounted before each job so that its block cache starts cold"
        } else {
            "kept mounted between jobs (--no-remount: its block cache stays warm)"
        },
    );
    md.push_str(&table(r));
    if let Some(lat) = latency_table(r) {
        md.push('\n');
        md.push_str(&lat);
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
        md.push_str("\n## Errors\n\n");
        for (s, e) in &info.failures {
            let _ = writeln!(md, "- {s}: {}", one_line(e));
        }
        for e in errors {
            let _ = writeln!(md, "{e}");
        }
    }
    let _ = writeln!(
        md,
        "\nRaw fio JSON: `raw/<system>/<workload>-r<N>.json`; daemon log: `raw/strata.log`. Chart: `ratios.svg`."
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

const COLORS: [&str; 4] = ["#2b6cb0", "#dd6b20", "#38a169", "#805ad5"];

/// Horizontal bars: each compared system's speed relative to ext4 per workload (1.0 = ext4,
/// higher is better; for timed workloads ext4 time / system time), a dashed line at 1.0 and
/// a red tick at Strata's goal.
pub fn svg(r: &Results) -> String {
    let compared = r.compared();
    let label_w = 260.0;
    let plot_w = 440.0;
    let bar_h = 16.0;
    let group_gap = 10.0;
    let top = 58.0;
    let group_h = bar_h * compared.len().max(1) as f64 + group_gap;
    let height = top + group_h * r.workloads.len() as f64 + 40.0;
    let width = label_w + plot_w + 70.0;

    let mut max = 1.2f64;
    for w in 0..r.workloads.len() {
        for s in &compared {
            if let Some(c) = r.compare(w, *s) {
                max = max.max(c.speed * 1.05);
            }
        }
        if let Some(g) = r.workloads[w].goal {
            max = max.max(g.as_speed() * 1.05);
        }
    }
    let max = (max * 5.0).ceil() / 5.0; // round up to a multiple of 0.2
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
        r##"<text x="10" y="38" fill="#555">timed workloads plotted as ext4 time / system time; red tick = Strata's goal</text>"##
    );
    // Grid and axis labels every 0.2 (every 0.5 when the scale is wide).
    let step = if max > 3.0 { 0.5 } else { 0.2 };
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
    for (w, wl) in r.workloads.iter().enumerate() {
        let y0 = top + group_h * w as f64;
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            label_w - 8.0,
            y0 + (group_h - group_gap) / 2.0 + 4.0,
            xml_escape(&wl.label)
        );
        for (i, sys) in compared.iter().enumerate() {
            let y = y0 + bar_h * i as f64;
            let color = COLORS[i % COLORS.len()];
            match r.compare(w, *sys) {
                Some(c) => {
                    let _ = writeln!(
                        s,
                        r##"<rect x="{label_w:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{color}"><title>{}: {:.3}</title></rect><text x="{:.1}" y="{:.1}" fill="#333">{:.2}</text>"##,
                        y + 1.0,
                        (x(c.speed) - label_w).max(0.5),
                        bar_h - 2.0,
                        sys.name(),
                        c.speed,
                        x(c.speed) + 4.0,
                        y + bar_h - 4.0,
                        c.speed
                    );
                }
                None => {
                    let _ = writeln!(
                        s,
                        r##"<text x="{:.1}" y="{:.1}" fill="#c53030">no data</text>"##,
                        label_w + 4.0,
                        y + bar_h - 4.0
                    );
                }
            }
        }
        if let (Some(g), true) = (wl.goal, compared.contains(&SystemKind::Strata)) {
            let gx = x(g.as_speed());
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
    // Legend.
    for (i, sys) in compared.iter().enumerate() {
        let lx = label_w + plot_w - 120.0 * (compared.len() - i) as f64 + 60.0;
        let _ = writeln!(
            s,
            r#"<rect x="{lx:.1}" y="44" width="10" height="10" fill="{}"/><text x="{:.1}" y="53">{}</text>"#,
            COLORS[i % COLORS.len()],
            lx + 14.0,
            sys.name()
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workloads;

    fn sample() -> Results {
        let mut r = Results::new(
            workloads::all(20_000),
            vec![SystemKind::Ext4, SystemKind::Strata],
        );
        r.cell_mut("fio-randread-4k-qd32", SystemKind::Ext4).samples =
            vec![58900.0, 57000.0, 60000.0];
        r.cell_mut("fio-randread-4k-qd32", SystemKind::Strata)
            .samples = vec![45000.0, 44000.0, 46000.0];
        r.cell_mut("meta-create", SystemKind::Ext4).samples = vec![0.57];
        r.cell_mut("meta-create", SystemKind::Strata).samples = vec![2.0];
        r.cell_mut("fio-seqwrite-1m-qd8", SystemKind::Strata).errors = vec!["boom\nline 2".into()];
        r
    }

    #[test]
    fn table_rows() {
        let t = table(&sample());
        assert!(t.starts_with("| workload | ext4 | strata | ratio | goal | met? |"));
        assert!(t.contains("| 4k randread QD32 (IOPS) | 58,900 (57,000–60,000) | 45,000 (44,000–46,000) | 0.76 | ≥ 0.7 | yes |"), "{t}");
        assert!(
            t.contains(
                "| create 20,000 empty files (s) | 0.570 | 2.000 | 3.51 | ≤ 3× time | **no** |"
            ),
            "{t}"
        );
        assert!(
            t.contains("| 1M seqwrite QD8 (MiB/s) | — | error | — | ≥ 0.7 | ? |"),
            "{t}"
        );
    }

    #[test]
    fn svg_is_well_formed_enough() {
        let s = svg(&sample());
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
        assert_eq!(s.matches("<svg").count(), 1);
        assert!(s.contains("no data"));
        if let Some(p) = std::env::var_os("STRATA_BENCH_SVG_SAMPLE") {
            std::fs::write(p, &s).unwrap();
        }
    }

    #[test]
    fn json_has_ratios() {
        let info = RunInfo {
            started: "2026-01-01 00:00".into(),
            unix_time: 0,
            quick: true,
            repeats: 1,
            file_size: 256 << 20,
            runtime_s: 3,
            meta_files: 5000,
            fio_version: "fio-3.33".into(),
            kernel: "6".into(),
            cpu: "cpu".into(),
            cores: 2,
            dir: "/var/tmp/strata-bench".into(),
            strata_bin: "strata".into(),
            remount: true,
            git_rev: None,
            duration_s: 1.0,
            failures: vec![],
        };
        let v = to_json(&sample(), &info);
        let w = v["workloads"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["id"] == "fio-randread-4k-qd32")
            .unwrap();
        assert!(
            (w["vs_ext4"]["strata"]["ratio"].as_f64().unwrap() - 45000.0 / 58900.0).abs() < 1e-9
        );
        assert_eq!(w["vs_ext4"]["strata"]["goal_met"], true);
        let md = markdown(&sample(), &info);
        assert!(md.contains("## Errors") && md.contains("boom line 2"));
    }
}
