//! What is measured: a workload (id, label, group, unit, Strata's goal), and the sizes of a
//! run. How each is run is declared beside its code and listed in [`crate::suite`].

use std::fmt;

use crate::fio::FioJob;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Iops,
    MibPerSec,
    Seconds,
    Millis,
    /// Memory, MiB.
    Mib,
    /// Latency, microseconds (less is better).
    Micros,
    /// Operations per second, named by what is counted ("writes/s", "files/s"): more is
    /// better.
    Rate(&'static str),
}

impl Unit {
    pub fn name(self) -> &'static str {
        match self {
            Unit::Iops => "IOPS",
            Unit::MibPerSec => "MiB/s",
            Unit::Seconds => "s",
            Unit::Millis => "ms",
            Unit::Mib => "MiB",
            Unit::Micros => "µs",
            Unit::Rate(name) => name,
        }
    }

    /// Throughput: more is better. Time and memory: less is better.
    pub fn higher_is_better(self) -> bool {
        matches!(self, Unit::Iops | Unit::MibPerSec | Unit::Rate(_))
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

/// Workloads are reported, and plotted, in these groups (in this order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Group {
    Fio,
    Buffered,
    Meta,
    Layers,
    Memory,
}

impl Group {
    pub const ALL: [Group; 5] = [
        Group::Fio,
        Group::Buffered,
        Group::Meta,
        Group::Layers,
        Group::Memory,
    ];

    /// The heading of its table.
    pub fn title(self) -> &'static str {
        match self {
            Group::Fio => "fio (direct=1, the file read from the lower layer)",
            Group::Buffered => "Buffered I/O and small files (own and inherited files)",
            Group::Meta => "Metadata",
            Group::Layers => "Layers: clone and first write",
            Group::Memory => "Memory density",
        }
    }

    /// Its name in results.json.
    pub fn key(self) -> &'static str {
        match self {
            Group::Fio => "fio",
            Group::Buffered => "buffered",
            Group::Meta => "metadata",
            Group::Layers => "layers",
            Group::Memory => "memory",
        }
    }
}

/// What the report shows of a workload beyond its samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detail {
    None,
    /// The fio job (results.json; 4k jobs get a latency table).
    Fio(FioJob),
    /// Memory density with this many readers (the memory table's rows).
    Readers(usize),
}

/// One figure per system: what is measured, in what unit, and Strata's goal for it.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Stable identifier: results.json keys, raw file names, `--only`.
    pub id: String,
    pub label: String,
    pub group: Group,
    pub unit: Unit,
    pub goal: Option<Goal>,
    pub detail: Detail,
    /// Measured only on systems with layers (ext4 shows "n/a").
    pub needs_layers: bool,
}

impl Workload {
    pub fn new(id: impl Into<String>, label: impl Into<String>, group: Group, unit: Unit) -> Self {
        Workload {
            id: id.into(),
            label: label.into(),
            group,
            unit,
            goal: None,
            detail: Detail::None,
            needs_layers: false,
        }
    }

    pub fn goal(mut self, goal: impl Into<Option<Goal>>) -> Self {
        self.goal = goal.into();
        self
    }

    pub fn detail(mut self, detail: Detail) -> Self {
        self.detail = detail;
        self
    }

    pub fn needs_layers(mut self) -> Self {
        self.needs_layers = true;
        self
    }
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
    /// The buffered and small-file workloads' sizes.
    pub buffered: Buffered,
}

/// Sizes of the buffered-I/O and small-file workloads ([`crate::buffered`],
/// [`crate::smallfiles`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Buffered {
    /// `dd bs=4k`: bytes written to a new file, and over an inherited file of this size.
    pub dd_size: u64,
    /// 22-byte O_APPEND writes per file (own and inherited).
    pub log_lines: usize,
    /// 4-byte appends, then as many 4-byte reads.
    pub tiny_appends: usize,
    /// The file a container writes and then reads hot with fio (also the QD1 write file).
    pub hot_own_size: u64,
    /// How much of the inherited fio file the hot fio reads cover: it must fit in Strata's
    /// block cache (256 MiB by default) with room to spare, or "hot" would not be hot.
    pub hot_inherited_size: u64,
    /// Small files (1–8 KiB) read, own and inherited.
    pub small_files: usize,
    /// Interpreter starts timed after the first (cold) one.
    pub python_runs: usize,
    /// Loose objects written the way git writes them.
    pub git_objects: usize,
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
                buffered: Buffered {
                    dd_size: 32 << 20,
                    log_lines: 10_000,
                    tiny_appends: 30_000,
                    hot_own_size: 64 << 20,
                    hot_inherited_size: 64 << 20,
                    small_files: 2_000,
                    python_runs: 5,
                    git_objects: 1_000,
                },
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
                buffered: Buffered {
                    dd_size: 80 << 20,
                    log_lines: 20_000,
                    tiny_appends: 300_000,
                    hot_own_size: 256 << 20,
                    hot_inherited_size: 128 << 20,
                    small_files: 10_000,
                    python_runs: 10,
                    git_objects: 5_000,
                },
            }
        }
    }

    pub fn tar_entries(&self) -> usize {
        self.tar_dirs * (self.tar_files_per_dir + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn tar_entries() {
        assert_eq!(Config::new(false).tar_entries(), 14_000);
    }
}
