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

/// Workloads are reported, and plotted, in these groups (in this order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Group {
    Fio,
    Meta,
    Layers,
    Memory,
}

impl Group {
    pub const ALL: [Group; 4] = [Group::Fio, Group::Meta, Group::Layers, Group::Memory];

    /// The heading of its table.
    pub fn title(self) -> &'static str {
        match self {
            Group::Fio => "fio (direct=1, the file read from the lower layer)",
            Group::Meta => "Metadata",
            Group::Layers => "Layers: clone and first write",
            Group::Memory => "Memory density",
        }
    }

    /// Its name in results.json.
    pub fn key(self) -> &'static str {
        match self {
            Group::Fio => "fio",
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
