//! Which charts the report draws: per group, each system's values (fio: IOPS and MiB/s apart)
//! or, for a group of mixed units (buffered I/O), each system relative to ext4; and
//! `ratios.svg`, every workload relative to ext4. All are [`BarChart`]s.

use super::svg::{Bar, BarChart, Row};
use super::{fmt_summary, fmt_value, RunInfo};
use crate::fmt::fmt_size;
use crate::results::Results;
use crate::systems::SystemKind;
use crate::workloads::{Goal, Group, Unit};

/// A chart of a group's workloads (those in `unit`, when given).
pub struct Spec {
    pub file: &'static str,
    title: String,
    unit: Option<Unit>,
    log: bool,
    /// Each compared system relative to ext4, rather than every system's values.
    relative: bool,
}

/// Each group's charts; a new group gets its chart here.
fn specs(g: Group, info: &RunInfo) -> Vec<Spec> {
    let spec = |file, title: &str, unit, log| Spec {
        file,
        title: title.to_string(),
        unit,
        log,
        relative: false,
    };
    let (iops, mibs) = (Some(Unit::Iops), Some(Unit::MibPerSec));
    match g {
        Group::Fio => vec![
            spec(
                "fio-iops.svg",
                "fio 4k random I/O (IOPS, higher is better)",
                iops,
                false,
            ),
            spec(
                "fio-throughput.svg",
                "fio 1M sequential I/O (MiB/s, higher is better)",
                mibs,
                false,
            ),
        ],
        Group::Buffered => vec![Spec {
            relative: true,
            ..spec(
                "buffered.svg",
                "Buffered I/O and small files relative to ext4 (1.0 = ext4, higher is better)",
                None,
                false,
            )
        }],
        Group::Meta => vec![spec(
            "metadata.svg",
            "Metadata (seconds, log scale, lower is better)",
            None,
            true,
        )],
        Group::Layers => vec![spec(
            "layers.svg",
            "Layers: clone and first write (ms, log scale, lower is better)",
            None,
            true,
        )],
        Group::Memory => {
            let size = fmt_size(info.cfg.image_size);
            let title =
                format!("Memory for N containers reading one {size} file (MiB, lower is better)");
            vec![spec("memory.svg", &title, None, false)]
        }
    }
}

/// A group's charts that have data, with their rows (workload indices).
pub fn group_specs(r: &Results, info: &RunInfo, g: Group) -> Vec<(Spec, Vec<usize>)> {
    specs(g, info)
        .into_iter()
        .map(|spec| {
            let rows = (0..r.workloads.len())
                .filter(|&w| r.workloads[w].group == g)
                .filter(|&w| spec.unit.is_none_or(|u| u == r.workloads[w].unit))
                .filter(|&w| {
                    if spec.relative {
                        compared(r, w)
                    } else {
                        r.cells[w].iter().any(|c| c.summary().is_some())
                    }
                })
                .collect();
            (spec, rows)
        })
        .filter(|(_, rows): &(Spec, Vec<usize>)| !rows.is_empty())
        .collect()
}

/// Every chart with data: (file name, SVG).
pub fn charts(r: &Results, info: &RunInfo) -> Vec<(String, String)> {
    let mut v = Vec::new();
    let all: Vec<usize> = (0..r.workloads.len()).filter(|&w| compared(r, w)).collect();
    if !all.is_empty() {
        let title = "Relative to ext4 (1.0 = ext4, higher is better)";
        v.push(("ratios.svg".to_string(), ratios(r, &all, title).svg()));
    }
    for g in Group::ALL {
        for (spec, rows) in group_specs(r, info, g) {
            let chart = if spec.relative {
                ratios(r, &rows, &spec.title)
            } else {
                values(r, info, g, &spec, &rows)
            };
            v.push((spec.file.to_string(), chart.svg()));
        }
    }
    v
}

/// Whether some system has a ratio to ext4 for workload `w`.
fn compared(r: &Results, w: usize) -> bool {
    r.compared().iter().any(|s| r.compare(w, *s).is_some())
}

/// One colour per system, the same in every chart.
fn series(systems: &[SystemKind]) -> Vec<(&'static str, &'static str)> {
    let color = |s: SystemKind| match s {
        SystemKind::Ext4 => "#718096",
        SystemKind::Overlayfs => "#dd6b20",
        SystemKind::FuseOverlayfs => "#38a169",
        SystemKind::Strata => "#2b6cb0",
        SystemKind::StrataDev => "#805ad5",
        SystemKind::StrataUring => "#2c5282",
    };
    systems.iter().map(|&s| (s.name(), color(s))).collect()
}

/// Medians with min–max whiskers, a bar per system; Strata's absolute goals as ticks; memory
/// also in copies of the file, with a line at one copy.
fn values(r: &Results, info: &RunInfo, g: Group, spec: &Spec, rows: &[usize]) -> BarChart {
    let strata = r.systems.iter().any(|s| s.is_strata());
    let one = (info.cfg.image_size >> 20) as f64;
    let rows: Vec<Row> = rows
        .iter()
        .map(|&w| {
            let wl = &r.workloads[w];
            let bars = r
                .systems
                .iter()
                .zip(&r.cells[w])
                .map(|(sys, c)| match c.summary() {
                    Some(s) => Bar {
                        value: Some(s.median),
                        range: (s.n > 1).then_some((s.min, s.max)),
                        text: match g {
                            Group::Memory => {
                                format!("{} ({:.2}×)", fmt_value(s.median, wl.unit), s.median / one)
                            }
                            _ => fmt_value(s.median, wl.unit),
                        },
                        tip: format!(
                            "{}: {} {}",
                            sys.name(),
                            fmt_summary(&s, wl.unit),
                            wl.unit.name()
                        ),
                    },
                    None => missing(sys, if c.errors.is_empty() { "n/a" } else { "error" }),
                });
            let goal = match wl.goal {
                Some(Goal::Absolute(g, _)) if strata => Some(g),
                _ => None,
            };
            Row {
                label: wl.label.clone(),
                bars: bars.collect(),
                goal,
            }
        })
        .collect();
    let mut notes = vec!["bar = median, whisker = min–max"];
    let mut rules = Vec::new();
    let fio = format!("direct=1, {} s per job", info.runtime_s);
    match g {
        Group::Fio => notes.insert(0, &fio),
        Group::Memory => {
            notes.insert(0, "page cache growth + daemon RSS growth");
            notes.push("dashed: one copy");
            rules.push((one, "one copy".to_string()));
        }
        Group::Meta | Group::Layers | Group::Buffered => {}
    }
    if rows.iter().any(|r| r.goal.is_some()) {
        notes.push("red tick = Strata's goal");
    }
    BarChart {
        title: spec.title.clone(),
        subtitle: notes.join("; "),
        series: series(&r.systems),
        rows,
        log: spec.log,
        cap: None,
        rules,
    }
}

fn missing(sys: &SystemKind, why: &str) -> Bar {
    Bar {
        value: None,
        range: None,
        text: format!("{} {why}", sys.name()),
        tip: String::new(),
    }
}

/// Each compared system's speed relative to ext4 on workloads `rows` (1.0 = ext4, higher is
/// better; time, latency and memory as ext4's / the system's), Strata's ratio goals as
/// ticks, cut at 3.
fn ratios(r: &Results, rows: &[usize], title: &str) -> BarChart {
    let compared = r.compared();
    let strata = compared.iter().any(|s| s.is_strata());
    let rows = rows
        .iter()
        .map(|&w| {
            let bars = compared.iter().map(|sys| match r.compare(w, *sys) {
                Some(c) => Bar {
                    value: Some(c.speed),
                    range: None,
                    text: format!("{:.2}", c.speed),
                    tip: format!("{}: {:.3}", sys.name(), c.speed),
                },
                None => missing(sys, "no data"),
            });
            let wl = &r.workloads[w];
            let goal = wl.goal.and_then(|g| g.as_speed()).filter(|_| strata);
            Row {
                label: wl.label.clone(),
                bars: bars.collect(),
                goal,
            }
        })
        .collect();
    BarChart {
        title: title.into(),
        subtitle: "time, latency and memory plotted as ext4 / system; red tick = Strata's goal; bars past 3 are cut".into(),
        series: series(&compared),
        rows,
        log: false,
        cap: Some(3.0),
        rules: vec![(1.0, "ext4".into())],
    }
}
