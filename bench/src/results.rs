//! Samples gathered during the run, and their summaries (median, min, max, ratios, goals).

use crate::systems::SystemKind;
use crate::workloads::Workload;

/// Median, min and max of a set of samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

pub fn summarize(samples: &[f64]) -> Option<Summary> {
    let mut v: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some(Summary {
        median,
        min: v[0],
        max: v[n - 1],
        n,
    })
}

/// Everything measured for one (workload, system).
#[derive(Debug, Clone, Default)]
pub struct Cell {
    pub samples: Vec<f64>,
    /// fio completion latency p50 per sample (µs), when fio reported it.
    pub clat_p50_us: Vec<f64>,
    /// fio completion latency p99 per sample (µs), when fio reported it.
    pub clat_p99_us: Vec<f64>,
    /// fio total latency (submission to completion) p50 per sample (µs).
    pub lat_p50_us: Vec<f64>,
    /// fio total latency p99 per sample (µs).
    pub lat_p99_us: Vec<f64>,
    /// Raw fio JSON files, relative to the results directory.
    pub raw: Vec<String>,
    /// Memory workloads: (page cache growth, daemon RSS growth) in MiB per sample.
    pub mem_parts: Vec<(f64, f64)>,
    /// Strata, steps run in a container: the share (%) of the blocks the step read that
    /// Strata's block cache served, per sample (from the daemon's hit and miss counters).
    pub cache_hit_pct: Vec<f64>,
    pub errors: Vec<String>,
}

impl Cell {
    pub fn summary(&self) -> Option<Summary> {
        summarize(&self.samples)
    }
}

pub struct Results {
    pub workloads: Vec<Workload>,
    pub systems: Vec<SystemKind>,
    /// `cells[w][s]` for `workloads[w]` on `systems[s]`.
    pub cells: Vec<Vec<Cell>>,
}

/// A non-baseline system's standing on one workload.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Comparison {
    /// median(system) / median(ext4): a throughput ratio, or a time (memory) ratio.
    pub ratio: f64,
    /// Always "higher is better": the throughput ratio, or ext4 time / system time.
    pub speed: f64,
}

impl Results {
    /// Rows in group order (each group's in the order given), a column per system.
    pub fn new(mut workloads: Vec<Workload>, systems: Vec<SystemKind>) -> Self {
        workloads.sort_by_key(|w| w.group);
        let cells = workloads
            .iter()
            .map(|_| systems.iter().map(|_| Cell::default()).collect())
            .collect();
        Results {
            workloads,
            systems,
            cells,
        }
    }

    /// Where a step records what it measured on `system`.
    pub fn sink(&mut self, system: SystemKind) -> Sink<'_> {
        Sink {
            res: self,
            system,
            timed_out: None,
        }
    }

    pub fn cell_mut(&mut self, workload_id: &str, system: SystemKind) -> &mut Cell {
        let w = self
            .workloads
            .iter()
            .position(|w| w.id == workload_id)
            .expect("known workload");
        let s = self
            .systems
            .iter()
            .position(|s| *s == system)
            .expect("known system");
        &mut self.cells[w][s]
    }

    pub fn cell(&self, w: usize, system: SystemKind) -> Option<&Cell> {
        let s = self.systems.iter().position(|s| *s == system)?;
        Some(&self.cells[w][s])
    }

    /// Systems compared against ext4 (all but ext4, when ext4 ran).
    pub fn compared(&self) -> Vec<SystemKind> {
        if !self.systems.contains(&SystemKind::Ext4) {
            return Vec::new();
        }
        self.systems
            .iter()
            .copied()
            .filter(|s| *s != SystemKind::Ext4)
            .collect()
    }

    pub fn compare(&self, w: usize, system: SystemKind) -> Option<Comparison> {
        let base = self.cell(w, SystemKind::Ext4)?.summary()?.median;
        let val = self.cell(w, system)?.summary()?.median;
        if base <= 0.0 || val <= 0.0 {
            return None;
        }
        let wl = &self.workloads[w];
        let ratio = val / base;
        let speed = if wl.unit.higher_is_better() {
            ratio
        } else {
            base / val
        };
        Some(Comparison { ratio, speed })
    }

    /// The Strata system goals are judged on: the first one measured (the default transport,
    /// else the first transport given).
    pub fn goal_system(&self) -> Option<SystemKind> {
        self.systems.iter().copied().find(|s| s.is_strata())
    }

    /// Whether Strata met the workload's goal (None: no goal, or no data to tell).
    pub fn goal_met(&self, w: usize) -> Option<bool> {
        let goal = self.workloads[w].goal?;
        let sys = self.goal_system()?;
        let val = self.cell(w, sys)?.summary()?.median;
        goal.met(val, self.compare(w, sys).map(|c| c.ratio))
    }

    pub fn has_errors(&self) -> bool {
        self.cells.iter().flatten().any(|c| !c.errors.is_empty())
    }
}

/// What a step measured on one system goes here. Workloads that were not selected are
/// ignored, so a step may record all it measures.
pub struct Sink<'a> {
    res: &'a mut Results,
    system: SystemKind,
    timed_out: Option<String>,
}

impl Sink<'_> {
    pub fn system(&self) -> SystemKind {
        self.system
    }

    /// Whether workload `id` was selected.
    pub fn wants(&self, id: &str) -> bool {
        self.res.workloads.iter().any(|w| w.id == id)
    }

    /// The cell of workload `id` on this system; None when it was not selected.
    pub fn cell(&mut self, id: &str) -> Option<&mut Cell> {
        if !self.wants(id) {
            return None;
        }
        Some(self.res.cell_mut(id, self.system))
    }

    pub fn push(&mut self, id: &str, sample: f64) {
        if let Some(c) = self.cell(id) {
            c.samples.push(sample);
        }
    }

    pub fn error(&mut self, id: &str, e: &str) {
        if e.contains("timed out") {
            self.timed_out.get_or_insert_with(|| e.to_string());
        }
        if let Some(c) = self.cell(id) {
            c.errors.push(e.to_string());
        }
    }

    pub fn error_all(&mut self, workloads: &[Workload], e: &str) {
        for w in workloads {
            self.error(&w.id, e);
        }
    }

    /// The first error recorded that says the system hung.
    pub fn timed_out(&self) -> Option<&str> {
        self.timed_out.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{suite, workloads};

    #[test]
    fn medians() {
        assert_eq!(summarize(&[]), None);
        let s = summarize(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        assert_eq!(summarize(&[4.0, 1.0, 2.0, 3.0]).unwrap().median, 2.5);
        assert_eq!(summarize(&[f64::NAN, 5.0]).unwrap().median, 5.0);
    }

    #[test]
    fn ratios_and_goals() {
        let wl = suite::workloads(&suite::all(&workloads::Config::new(true)));
        let mut r = Results::new(wl, vec![SystemKind::Ext4, SystemKind::Strata]);
        r.cell_mut("fio-randread-4k-qd32", SystemKind::Ext4).samples = vec![100.0, 110.0, 90.0];
        r.cell_mut("fio-randread-4k-qd32", SystemKind::Strata)
            .samples = vec![60.0];
        r.cell_mut("meta-create", SystemKind::Ext4).samples = vec![1.0];
        r.cell_mut("meta-create", SystemKind::Strata).samples = vec![2.0];
        let w = r
            .workloads
            .iter()
            .position(|w| w.id == "fio-randread-4k-qd32")
            .unwrap();
        let c = r.compare(w, SystemKind::Strata).unwrap();
        assert!((c.ratio - 0.6).abs() < 1e-12);
        assert_eq!(r.goal_met(w), Some(false));
        let m = r
            .workloads
            .iter()
            .position(|w| w.id == "meta-create")
            .unwrap();
        let c = r.compare(m, SystemKind::Strata).unwrap();
        assert_eq!((c.ratio, c.speed), (2.0, 0.5));
        assert_eq!(r.goal_met(m), Some(true));
        r.cell_mut("clone-files-1000", SystemKind::Strata).samples = vec![0.4, 0.5, 3.0];
        let c = r
            .workloads
            .iter()
            .position(|w| w.id == "clone-files-1000")
            .unwrap();
        assert_eq!(r.compare(c, SystemKind::Strata), None, "no ext4 figure");
        assert_eq!(r.goal_met(c), Some(true), "absolute goal on the median");
        assert_eq!(r.compare(0, SystemKind::Strata), None);
    }
}
