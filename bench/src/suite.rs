//! The benchmark suite: [`all`] lists every step in run order — the one place a new workload
//! is registered — and this module says what a step is: the workloads it measures, what it
//! needs prepared on every system, and how it runs.

use std::path::Path;

use crate::inputs::Input;
use crate::results::Sink;
use crate::systems::System;
use crate::workloads::{Config, Detail, Workload};
use crate::{buffered, fio, layers, memory, meta, progress, smallfiles, Res};

/// Every step, in run order.
///
/// To add a workload (say buffered 4 KiB writes with `dd`, on a layer's own file and on an
/// inherited one, as `buffered::dd_step` does):
/// 1. Write the measurement in a module of its own (as `buffered.rs`): a function from the
///    paths it works on to numbers, as `meta::run` and `buffered::dd` are.
/// 2. Beside it, a constructor of its [`Step`]: the [`Workload`]s it reports (id: stable, what
///    `--only` and results.json use; label, [`Group`](crate::workloads::Group),
///    [`Unit`](crate::workloads::Unit), goal); the [`Input`]s it needs (a `LowerFile` is in
///    every container's lower layer, i.e. inherited; a file the step writes in the container
///    is the layer's own); and its [`Run`], mostly `InContainer`: a closure that gets the
///    container's root and puts what it measured in the [`Sink`]. `meta::files_step` is a
///    short example. An inherited tree is an [`Input::LowerTree`] (a tar extracted into the
///    lower layer).
/// 3. Add the constructor here. Its place is its turn: container steps run first in each
///    repeat, in table order and in one container (a step that reads an inherited file must
///    come before any step that writes it there), then system steps, then once-per-run steps
///    (`order_is_run_order` checks).
/// 4. A new group also wants a title and a results.json key (`Group`), a chart
///    (`report::charts`) and a paragraph (`report::markdown`); the compiler points at each.
pub fn all(cfg: &Config) -> Vec<Step> {
    let (mut v, fio_writes): (Vec<Step>, Vec<Step>) =
        fio::steps(cfg).into_iter().partition(|s| !writes(s));
    // It reads the inherited fio file, which fio's write jobs then change in the container.
    v.push(buffered::fio_step(cfg));
    v.extend(fio_writes);
    v.push(meta::files_step(cfg));
    v.push(meta::tar_step(cfg));
    v.extend(buffered::steps(cfg));
    v.extend(smallfiles::steps(cfg));
    v.push(layers::first_write_step(cfg));
    v.extend(memory::steps(cfg));
    v.push(layers::clone_step(cfg));
    v
}

/// Whether a step runs a fio write job.
fn writes(s: &Step) -> bool {
    s.workloads
        .iter()
        .any(|w| matches!(w.detail, Detail::Fio(j) if j.is_write()))
}

/// One thing run on every system, measuring one or more workloads at once (the metadata step
/// times create, stat and unlink in one go).
pub struct Step {
    /// For log lines: "metadata", "tar -x / rm -rf", the fio job's label.
    pub name: String,
    /// What it measures (after `--only`: what was selected).
    pub workloads: Vec<Workload>,
    /// What must be prepared before the first container.
    pub needs: Vec<Input>,
    pub run: Run,
}

impl Step {
    /// Skipped on systems without layers (ext4).
    pub fn needs_layers(&self) -> bool {
        self.workloads.iter().all(|w| w.needs_layers)
    }
}

/// Where and when a step runs. An error it returns is recorded for each of its workloads on
/// that system; an error that says "timed out" also retires the system (it hangs).
pub enum Run {
    /// In every repeat, in that repeat's container on each system: a fresh upper layer
    /// (overlays) or clone (Strata) over the lower layer; ext4: the lower directory itself.
    /// The container is shared by every such step, in table order; the kernel's caches are
    /// dropped (and Strata remounted) before each. Gets the container's root.
    InContainer(ContainerFn),
    /// In every repeat, after the container steps, on each system; the step makes and drops
    /// its own containers, and drops the caches itself.
    OnSystem(SystemFn),
    /// Once, after every repeat, on each system (it repeats itself if it must).
    Once(SystemFn),
}

/// A container step's measurement: the container's root in, what it measured into the sink.
pub type ContainerFn = Box<dyn Fn(&Ctx, &Path, &mut Sink) -> Res<()>>;
/// A system step's measurement: it makes and drops its own containers on the system.
pub type SystemFn = Box<dyn Fn(&Ctx, &mut System, &mut Sink) -> Res<()>>;

impl Run {
    /// The order the runner takes them in.
    pub fn phase(&self) -> u8 {
        match self {
            Run::InContainer(_) => 0,
            Run::OnSystem(_) => 1,
            Run::Once(_) => 2,
        }
    }
}

/// What a step gets besides its system or container.
pub struct Ctx<'a> {
    pub cfg: &'a Config,
    /// Seconds per fio job.
    pub runtime_s: u64,
    /// The results directory (raw fio JSON goes below it).
    pub out: &'a Path,
    /// Where the [`Input::Tar`]s are.
    pub tars: &'a Path,
    /// Remount Strata whenever caches are dropped (`--no-remount` clears it).
    pub remount: bool,
    /// This repeat, from 0 (the last one for `Once` steps).
    pub rep: usize,
    /// "[2/3]" in per-repeat log lines; empty for `Once` steps.
    pub tag: String,
}

impl Ctx<'_> {
    /// A progress line about `system`.
    pub fn log(&self, system: &str, msg: &str) {
        let line = format!("{} {system:<14} {msg}", self.tag);
        progress::log(line.trim_start());
    }
}

/// The workloads of `steps`, in order.
pub fn workloads(steps: &[Step]) -> Vec<Workload> {
    steps.iter().flat_map(|s| s.workloads.clone()).collect()
}

/// Keep the workloads whose id contains one of `only` (all when `only` is empty), and the steps
/// that still measure something.
pub fn select(steps: Vec<Step>, only: &[String]) -> Vec<Step> {
    if only.is_empty() {
        return steps;
    }
    steps
        .into_iter()
        .filter_map(|mut s| {
            s.workloads
                .retain(|w| only.iter().any(|o| w.id.contains(o.as_str())));
            (!s.workloads.is_empty()).then_some(s)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inputs::TarSpec;
    use crate::workloads::{Goal, Group};

    fn ids(steps: &[Step]) -> Vec<String> {
        steps
            .iter()
            .flat_map(|s| s.workloads.iter().map(|w| w.id.clone()))
            .collect()
    }

    #[test]
    fn ids_unique_and_select() {
        for quick in [true, false] {
            let cfg = Config::new(quick);
            let mut all_ids = ids(&all(&cfg));
            let n = all_ids.len();
            all_ids.sort();
            all_ids.dedup();
            assert_eq!(all_ids.len(), n);
            // Ten jobs, and the median latency of the two QD1 ones.
            assert_eq!(ids(&select(all(&cfg), &["fio-".to_string()])).len(), 12);
            let meta = select(all(&cfg), &["meta".to_string()]);
            assert!(meta
                .iter()
                .flat_map(|s| &s.workloads)
                .all(|w| w.group == Group::Meta));
            let mem = select(all(&cfg), &["mem-".to_string()]);
            assert_eq!(mem.len(), 4);
            let goals = mem
                .iter()
                .flat_map(|s| &s.workloads)
                .filter(|w| w.goal.is_some());
            assert_eq!(goals.count(), 1);
            // A step keeps only the workloads selected.
            let create = select(all(&cfg), &["meta-create".to_string()]);
            assert_eq!(ids(&create), ["meta-create"]);
        }
    }

    #[test]
    fn fio_ids() {
        let ids = ids(&all(&Config::new(true)));
        for id in [
            "fio-randread-4k-qd1",
            "fio-randread-4k-qd32-libaio",
            "fio-seqread-1m-qd8",
            "fio-randwrite-4k-qd32",
            "fio-seqwrite-1m-qd8-libaio",
        ] {
            assert!(ids.iter().any(|i| i == id), "{id} in {ids:?}");
        }
    }

    #[test]
    fn buffered_ids_goals_and_place() {
        let cfg = Config::new(true);
        let buf = select(all(&cfg), &["buf-".to_string()]);
        let ids = ids(&buf);
        assert_eq!(ids.len(), 19, "{ids:?}");
        let wls: Vec<&Workload> = buf.iter().flat_map(|s| &s.workloads).collect();
        assert!(wls.iter().all(|w| w.group == Group::Buffered));
        // Every throughput figure on a layer's own files has the 0.8 goal.
        for w in &wls {
            if w.id.ends_with("-own") && w.unit.higher_is_better() && w.id != "buf-randwrite-4k-qd1"
            {
                assert_eq!(w.goal, Some(Goal::AtLeast(0.8)), "{}", w.id);
            }
        }
        let goal = |id: &str| wls.iter().find(|w| w.id == id).unwrap().goal;
        assert_eq!(
            goal("buf-seqread-4k-hot-inherited"),
            Some(Goal::AtLeast(0.5))
        );
        assert_eq!(
            goal("buf-randread-4k-hot-inherited"),
            Some(Goal::AtLeast(0.1))
        );
        assert_eq!(goal("buf-tar-stdlib"), Some(Goal::AtMost(1.5)));
        assert_eq!(goal("buf-randwrite-4k-qd1-p50"), Some(Goal::AtMost(1.5)));
        // The hot reads of the inherited fio file run before fio writes it.
        let steps = all(&cfg);
        let at = |f: &dyn Fn(&Step) -> bool| steps.iter().position(f).unwrap();
        let hot = at(&|s| {
            s.workloads
                .iter()
                .any(|w| w.id == "buf-randread-4k-hot-inherited")
        });
        let fio = |s: &Step| s.workloads[0].id.starts_with("fio-");
        assert!(at(&|s| fio(s) && !writes(s)) < hot && hot < at(&|s| fio(s) && writes(s)));
        // The interpreter and the tar step need the standard library, in the lower layer
        // and as a tar.
        let needs: Vec<&Input> = buf.iter().flat_map(|s| &s.needs).collect();
        assert!(needs.contains(&&Input::Tar(TarSpec::PyStdlib)));
        assert!(needs.contains(&&Input::LowerTree {
            dir: "py/lib",
            tar: TarSpec::PyStdlib
        }));
    }

    #[test]
    fn order_is_run_order() {
        let phases: Vec<u8> = all(&Config::new(false))
            .iter()
            .map(|s| s.run.phase())
            .collect();
        assert!(phases.windows(2).all(|w| w[0] <= w[1]), "{phases:?}");
    }

    #[test]
    fn clone_steps_need_layers_and_their_tars() {
        let steps = all(&Config::new(true));
        let clone = steps.last().unwrap();
        assert!(clone.needs_layers());
        assert_eq!(
            clone.needs,
            [
                Input::Tar(TarSpec::EmptyFiles(1_000)),
                Input::Tar(TarSpec::EmptyFiles(10_000))
            ]
        );
        assert!(!steps[0].needs_layers());
    }
}
