//! The workloads, their units and Strata's goals relative to ext4.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Iops,
    MibPerSec,
    Seconds,
}

impl Unit {
    pub fn name(self) -> &'static str {
        match self {
            Unit::Iops => "IOPS",
            Unit::MibPerSec => "MiB/s",
            Unit::Seconds => "s",
        }
    }

    /// Throughput: more is better. Time: less is better.
    pub fn higher_is_better(self) -> bool {
        !matches!(self, Unit::Seconds)
    }
}

/// A goal on the ratio strata / ext4 of the medians.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Goal {
    /// Throughput ratio at least this.
    AtLeast(f64),
    /// Time ratio at most this.
    AtMost(f64),
}

impl Goal {
    pub fn met(self, ratio: f64) -> bool {
        match self {
            Goal::AtLeast(g) => ratio >= g,
            Goal::AtMost(g) => ratio <= g,
        }
    }

    /// The goal as a "higher is better" speed ratio, for the chart.
    pub fn as_speed(self) -> f64 {
        match self {
            Goal::AtLeast(g) => g,
            Goal::AtMost(g) => 1.0 / g,
        }
    }
}

impl fmt::Display for Goal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Goal::AtLeast(g) => write!(f, "≥ {g}"),
            Goal::AtMost(g) => write!(f, "≤ {g}× time"),
        }
    }
}

/// One fio job (the other options are common to all, see `fio.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FioJob {
    pub rw: &'static str,
    pub bs: &'static str,
    pub iodepth: u32,
    pub ioengine: &'static str,
}

impl FioJob {
    pub fn is_write(&self) -> bool {
        self.rw.contains("write")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaPhase {
    Create,
    Stat,
    Unlink,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Fio(FioJob),
    Meta(MetaPhase),
}

#[derive(Debug, Clone)]
pub struct Workload {
    /// Stable identifier: file names, results.json keys, `--only`.
    pub id: &'static str,
    pub label: String,
    pub kind: Kind,
    pub unit: Unit,
    pub goal: Option<Goal>,
}

const fn fio(rw: &'static str, bs: &'static str, iodepth: u32, ioengine: &'static str) -> Kind {
    Kind::Fio(FioJob {
        rw,
        bs,
        iodepth,
        ioengine,
    })
}

/// All workloads in run order: reads before writes, so reads see the freshly laid-out file
/// rather than one fragmented by the write jobs (a copy-on-write file system cares).
pub fn all(meta_files: usize) -> Vec<Workload> {
    let files = group_thousands(meta_files as f64);
    let w = |id, label: &str, kind, unit, goal| Workload {
        id,
        label: label.to_string(),
        kind,
        unit,
        goal,
    };
    vec![
        w(
            "fio-randread-4k-qd1",
            "4k randread QD1",
            fio("randread", "4k", 1, "io_uring"),
            Unit::Iops,
            None,
        ),
        w(
            "fio-randread-4k-qd32",
            "4k randread QD32",
            fio("randread", "4k", 32, "io_uring"),
            Unit::Iops,
            Some(Goal::AtLeast(0.7)),
        ),
        w(
            "fio-randread-4k-qd32-libaio",
            "4k randread QD32 (libaio)",
            fio("randread", "4k", 32, "libaio"),
            Unit::Iops,
            Some(Goal::AtLeast(0.7)),
        ),
        w(
            "fio-seqread-1m-qd8",
            "1M seqread QD8",
            fio("read", "1M", 8, "io_uring"),
            Unit::MibPerSec,
            Some(Goal::AtLeast(0.7)),
        ),
        w(
            "fio-randwrite-4k-qd32",
            "4k randwrite QD32",
            fio("randwrite", "4k", 32, "io_uring"),
            Unit::Iops,
            Some(Goal::AtLeast(0.5)),
        ),
        w(
            "fio-randwrite-4k-qd32-libaio",
            "4k randwrite QD32 (libaio)",
            fio("randwrite", "4k", 32, "libaio"),
            Unit::Iops,
            Some(Goal::AtLeast(0.5)),
        ),
        w(
            "fio-seqwrite-1m-qd8",
            "1M seqwrite QD8",
            fio("write", "1M", 8, "io_uring"),
            Unit::MibPerSec,
            Some(Goal::AtLeast(0.7)),
        ),
        w(
            "meta-create",
            &format!("create {files} empty files"),
            Kind::Meta(MetaPhase::Create),
            Unit::Seconds,
            Some(Goal::AtMost(3.0)),
        ),
        w(
            "meta-stat",
            &format!("stat {files} files"),
            Kind::Meta(MetaPhase::Stat),
            Unit::Seconds,
            None,
        ),
        w(
            "meta-unlink",
            &format!("unlink {files} files"),
            Kind::Meta(MetaPhase::Unlink),
            Unit::Seconds,
            None,
        ),
    ]
}

/// Keep the workloads whose id contains one of `only` (all when `only` is empty).
pub fn select(all: Vec<Workload>, only: &[String]) -> Vec<Workload> {
    if only.is_empty() {
        return all;
    }
    all.into_iter()
        .filter(|w| only.iter().any(|o| w.id.contains(o.as_str())))
        .collect()
}

/// 20000 -> "20,000"; fractions are rounded.
pub fn group_thousands(v: f64) -> String {
    let neg = v < 0.0;
    let digits = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if neg {
        format!("-{out}")
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands() {
        assert_eq!(group_thousands(0.0), "0");
        assert_eq!(group_thousands(999.4), "999");
        assert_eq!(group_thousands(1000.0), "1,000");
        assert_eq!(group_thousands(58900.0), "58,900");
        assert_eq!(group_thousands(1234567.0), "1,234,567");
    }

    #[test]
    fn goals() {
        assert!(Goal::AtLeast(0.7).met(0.7));
        assert!(!Goal::AtLeast(0.7).met(0.69));
        assert!(Goal::AtMost(3.0).met(2.9));
        assert!(!Goal::AtMost(3.0).met(3.1));
        assert!((Goal::AtMost(4.0).as_speed() - 0.25).abs() < 1e-12);
    }

    #[test]
    fn ids_unique_and_select() {
        let all = all(20_000);
        let mut ids: Vec<_> = all.iter().map(|w| w.id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), all.len());
        let fio = select(all.clone(), &["fio-".to_string()]);
        assert_eq!(fio.len(), 7);
        assert!(select(all, &["meta".to_string()])
            .iter()
            .all(|w| matches!(w.kind, Kind::Meta(_))));
    }
}
