//! The workloads, their units and Strata's goals (relative to ext4, or absolute).

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Iops,
    MibPerSec,
    Seconds,
    Millis,
    /// Memory, MiB.
    Mib,
}

impl Unit {
    pub fn name(self) -> &'static str {
        match self {
            Unit::Iops => "IOPS",
            Unit::MibPerSec => "MiB/s",
            Unit::Seconds => "s",
            Unit::Millis => "ms",
            Unit::Mib => "MiB",
        }
    }

    /// Throughput: more is better. Time and memory: less is better.
    pub fn higher_is_better(self) -> bool {
        matches!(self, Unit::Iops | Unit::MibPerSec)
    }
}

/// A goal for Strata.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Goal {
    /// Throughput ratio strata / ext4 at least this.
    AtLeast(f64),
    /// Time ratio strata / ext4 at most this.
    AtMost(f64),
    /// Strata's median at most this, in the workload's unit, whatever ext4 did; with the text
    /// shown in the table.
    Absolute(f64, &'static str),
}

impl Goal {
    /// Whether the goal is met, given Strata's median and its ratio to ext4 (if ext4 ran).
    pub fn met(self, value: f64, ratio: Option<f64>) -> Option<bool> {
        match self {
            Goal::AtLeast(g) => ratio.map(|r| r >= g),
            Goal::AtMost(g) => ratio.map(|r| r <= g),
            Goal::Absolute(max, _) => Some(value <= max),
        }
    }

    /// A ratio goal as a "higher is better" speed ratio, for the relative chart.
    pub fn as_speed(self) -> Option<f64> {
        match self {
            Goal::AtLeast(g) => Some(g),
            Goal::AtMost(g) => Some(1.0 / g),
            Goal::Absolute(..) => None,
        }
    }
}

impl fmt::Display for Goal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Goal::AtLeast(g) => write!(f, "≥ {g}"),
            Goal::AtMost(g) => write!(f, "≤ {g}× time"),
            Goal::Absolute(_, text) => write!(f, "{text}"),
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
pub enum TarPhase {
    /// `tar -xf` into the container, then sync.
    Extract,
    /// `rm -rf` of the extracted tree, then sync.
    Remove,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Fio(FioJob),
    Meta(MetaPhase),
    Tar(TarPhase),
    /// Open the inherited fio file read-write in a fresh container, write 4 KiB, fsync.
    FirstWrite,
    /// N containers each reading the same image file: page cache + daemon RSS growth.
    Memory(usize),
    /// Clone (a new container layer) over a parent holding this many files.
    CloneFiles(usize),
    /// Clone of a parent at this depth (1 = a base layer).
    CloneDepth(usize),
}

/// Workloads are reported, and plotted, in these groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Group {
    Fio,
    Meta,
    Layers,
    Memory,
}

impl Group {
    pub const ALL: [Group; 4] = [Group::Fio, Group::Meta, Group::Layers, Group::Memory];

    pub fn title(self) -> &'static str {
        match self {
            Group::Fio => "fio (direct=1, the file read from the lower layer)",
            Group::Meta => "Metadata",
            Group::Layers => "Layers: clone and first write",
            Group::Memory => "Memory density",
        }
    }
}

impl Kind {
    pub fn group(self) -> Group {
        match self {
            Kind::Fio(_) => Group::Fio,
            Kind::Meta(_) | Kind::Tar(_) => Group::Meta,
            Kind::FirstWrite | Kind::CloneFiles(_) | Kind::CloneDepth(_) => Group::Layers,
            Kind::Memory(_) => Group::Memory,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Workload {
    /// Stable identifier: file names, results.json keys, `--only`.
    pub id: String,
    pub label: String,
    pub kind: Kind,
    pub unit: Unit,
    pub goal: Option<Goal>,
}

/// The sizes of a run (`--quick` makes everything smaller).
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The fio file (also the large inherited file of the first-write workload), bytes.
    pub file_size: u64,
    /// The file the memory-density readers share, bytes.
    pub image_size: u64,
    pub meta_files: usize,
    /// Directories and files per directory of the tar -x tree (entries = dirs × (files + 1)).
    pub tar_dirs: usize,
    pub tar_files_per_dir: usize,
    /// Bytes of file data in the tar -x tree (spread over its files).
    pub tar_bytes: u64,
    pub clone_sizes: Vec<usize>,
    pub clone_depths: Vec<usize>,
    /// Clones timed per size and depth.
    pub clone_reps: usize,
    pub readers: Vec<usize>,
}

impl Config {
    pub fn new(quick: bool) -> Config {
        if quick {
            Config {
                file_size: 256 << 20,
                image_size: 128 << 20,
                meta_files: 5_000,
                tar_dirs: 35,
                tar_files_per_dir: 99,
                tar_bytes: 32 << 20,
                clone_sizes: vec![1_000, 10_000],
                clone_depths: vec![1, 10],
                clone_reps: 5,
                readers: vec![1, 2, 4, 8],
            }
        } else {
            Config {
                file_size: 1 << 30,
                image_size: 512 << 20,
                meta_files: 20_000,
                tar_dirs: 140,
                tar_files_per_dir: 99,
                tar_bytes: 240 << 20,
                clone_sizes: vec![1_000, 10_000, 100_000],
                clone_depths: vec![1, 10, 100],
                clone_reps: 11,
                readers: vec![1, 2, 4, 8],
            }
        }
    }

    pub fn tar_entries(&self) -> usize {
        self.tar_dirs * (self.tar_files_per_dir + 1)
    }
}

/// "1 GiB", "256 MiB".
pub fn fmt_size(bytes: u64) -> String {
    if bytes >= 1 << 30 && bytes % (1 << 30) == 0 {
        format!("{} GiB", bytes >> 30)
    } else {
        format!("{} MiB", bytes >> 20)
    }
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
pub fn all(cfg: &Config) -> Vec<Workload> {
    let files = group_thousands(cfg.meta_files as f64);
    let w = |id: &str, label: &str, kind, unit, goal| Workload {
        id: id.to_string(),
        label: label.to_string(),
        kind,
        unit,
        goal,
    };
    let mut v = Vec::new();
    for (rw, bs, qd, unit, goal) in [
        ("randread", "4k", 1, Unit::Iops, None),
        ("randread", "4k", 32, Unit::Iops, Some(Goal::AtLeast(0.7))),
        (
            "seqread",
            "1M",
            8,
            Unit::MibPerSec,
            Some(Goal::AtLeast(0.7)),
        ),
        ("randwrite", "4k", 32, Unit::Iops, Some(Goal::AtLeast(0.5))),
        (
            "seqwrite",
            "1M",
            8,
            Unit::MibPerSec,
            Some(Goal::AtLeast(0.7)),
        ),
    ] {
        let fio_rw = match rw {
            "seqread" => "read",
            "seqwrite" => "write",
            other => other,
        };
        for engine in ["io_uring", "libaio"] {
            let id = format!(
                "fio-{rw}-{}-qd{qd}{}",
                bs.to_lowercase(),
                if engine == "libaio" { "-libaio" } else { "" }
            );
            let mut label = format!("{bs} {rw} QD{qd} {engine}");
            if rw == "randwrite" && engine == "io_uring" {
                // The first write job in a container: the overlays copy the file up in it.
                label.push_str(" †");
            }
            v.push(w(&id, &label, fio(fio_rw, bs, qd, engine), unit, goal));
        }
    }
    v.push(w(
        "meta-create",
        &format!("create {files} empty files"),
        Kind::Meta(MetaPhase::Create),
        Unit::Seconds,
        Some(Goal::AtMost(3.0)),
    ));
    v.push(w(
        "meta-stat",
        &format!("stat {files} files"),
        Kind::Meta(MetaPhase::Stat),
        Unit::Seconds,
        None,
    ));
    v.push(w(
        "meta-unlink",
        &format!("unlink {files} files"),
        Kind::Meta(MetaPhase::Unlink),
        Unit::Seconds,
        None,
    ));
    let entries = group_thousands(cfg.tar_entries() as f64);
    v.push(w(
        "tar-extract",
        &format!(
            "tar -x of {entries} entries ({}) + sync",
            fmt_size(cfg.tar_bytes)
        ),
        Kind::Tar(TarPhase::Extract),
        Unit::Seconds,
        None,
    ));
    v.push(w(
        "tar-rm",
        &format!("rm -rf of those {entries} entries + sync"),
        Kind::Tar(TarPhase::Remove),
        Unit::Seconds,
        None,
    ));
    v.push(w(
        "first-write",
        &format!(
            "first 4 KiB write + fsync to an inherited {} file",
            fmt_size(cfg.file_size)
        ),
        Kind::FirstWrite,
        Unit::Millis,
        None,
    ));
    for &n in &cfg.clone_sizes {
        v.push(w(
            &format!("clone-files-{n}"),
            &format!("clone over a parent of {} files", group_thousands(n as f64)),
            Kind::CloneFiles(n),
            Unit::Millis,
            Some(Goal::Absolute(1.0, "≤ 1 ms")),
        ));
    }
    for &d in &cfg.clone_depths {
        v.push(w(
            &format!("clone-depth-{d}"),
            &format!("clone of a parent at depth {d}"),
            Kind::CloneDepth(d),
            Unit::Millis,
            Some(Goal::Absolute(1.0, "≤ 1 ms")),
        ));
    }
    let image_mib = (cfg.image_size >> 20) as f64;
    for &n in &cfg.readers {
        let goal = (n == 8).then_some(Goal::Absolute(1.2 * image_mib, "≤ 1.2× one copy"));
        v.push(w(
            &format!("mem-readers-{n}"),
            &format!(
                "memory, {n} container{} reading one {} file",
                if n == 1 { "" } else { "s" },
                fmt_size(cfg.image_size)
            ),
            Kind::Memory(n),
            Unit::Mib,
            goal,
        ));
    }
    v
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
        assert_eq!(Goal::AtLeast(0.7).met(1.0, Some(0.7)), Some(true));
        assert_eq!(Goal::AtLeast(0.7).met(1.0, Some(0.69)), Some(false));
        assert_eq!(Goal::AtLeast(0.7).met(1.0, None), None);
        assert_eq!(Goal::AtMost(3.0).met(1.0, Some(2.9)), Some(true));
        assert_eq!(Goal::AtMost(3.0).met(1.0, Some(3.1)), Some(false));
        assert_eq!(Goal::Absolute(1.0, "").met(0.4, None), Some(true));
        assert_eq!(Goal::Absolute(1.0, "").met(1.4, Some(0.1)), Some(false));
        assert!((Goal::AtMost(4.0).as_speed().unwrap() - 0.25).abs() < 1e-12);
    }

    #[test]
    fn ids_unique_and_select() {
        for quick in [true, false] {
            let cfg = Config::new(quick);
            let all = all(&cfg);
            let mut ids: Vec<_> = all.iter().map(|w| w.id.clone()).collect();
            ids.sort();
            ids.dedup();
            assert_eq!(ids.len(), all.len());
            let fio = select(all.clone(), &["fio-".to_string()]);
            assert_eq!(fio.len(), 10);
            assert!(select(all.clone(), &["meta".to_string()])
                .iter()
                .all(|w| matches!(w.kind, Kind::Meta(_))));
            let mem = select(all, &["mem-".to_string()]);
            assert_eq!(mem.len(), 4);
            assert_eq!(mem.iter().filter(|w| w.goal.is_some()).count(), 1);
        }
        assert_eq!(Config::new(false).tar_entries(), 14_000);
    }

    #[test]
    fn fio_ids() {
        let all = all(&Config::new(true));
        let ids: Vec<&str> = all.iter().map(|w| w.id.as_str()).collect();
        for id in [
            "fio-randread-4k-qd1",
            "fio-randread-4k-qd32-libaio",
            "fio-seqread-1m-qd8",
            "fio-randwrite-4k-qd32",
            "fio-seqwrite-1m-qd8-libaio",
        ] {
            assert!(ids.contains(&id), "{id} in {ids:?}");
        }
    }
}
