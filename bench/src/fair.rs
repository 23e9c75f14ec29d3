//! `strata-fair-bench`'s scenarios and report: can one container starve another's I/O?
//!
//! A *quiet* container (4 KiB random reads at QD1 on an inherited file) runs alone, then beside
//! a *noisy* one (1 MiB direct writes at QD32 on its own file) under each I/O scheduler
//! setting of `strata mount` and `strata layer limit` (once with both on one CPU), and the same
//! pair on plain files of the host's file system for reference. The figures are the quiet container's
//! completion latency (p50, p99) and IOPS, and the noisy one's MiB/s; the goal is the quiet
//! p99 with fair queueing within 2× of its p99 alone. The run itself (the daemon, fio) is in
//! `src/bin/strata-fair-bench.rs`; this module is what it measures and how it is reported:
//! results.md, results.json and `quiet-p99.svg` (drawn with [`crate::report::svg`]).

use std::fmt::Write as _;

use serde_json::{json, Value};

use crate::fio::FioSample;
use crate::fmt::group_thousands;
use crate::report::svg::{Bar, BarChart, Row};
use crate::results::{summarize, Summary};

/// The goal: quiet p99 with fair queueing at most this many times its p99 alone.
pub const GOAL_P99_VS_ALONE: f64 = 2.0;

/// `strata mount --io-scheduler`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    Fair,
    Fifo,
}

impl Policy {
    pub fn name(self) -> &'static str {
        match self {
            Policy::Fair => "fair",
            Policy::Fifo => "fifo",
        }
    }
}

/// Where the two containers' files are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Two clones of a committed layer on the Strata mount.
    Strata,
    /// Plain files on the file system that holds the image (ext4 on the bench machine), with
    /// no I/O control: what the host gives the two without Strata, in the same run.
    HostFs,
}

/// One setting the quiet container is measured in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scenario {
    /// For file names and results.json.
    pub id: &'static str,
    pub label: &'static str,
    pub target: Target,
    /// The daemon's `--io-scheduler` (Strata only).
    pub policy: Policy,
    /// Whether the noisy container writes during the quiet run.
    pub noisy: bool,
    /// `strata layer limit quiet --io-weight`, else the default (100).
    pub quiet_weight: Option<u32>,
    /// `strata layer limit noisy --limit-bps`, else none.
    pub noisy_bps: Option<&'static str>,
    /// Both fio jobs pinned to CPU 0 (`--cpus_allowed=0`): the kernel then sends both
    /// containers' requests to the same FUSE queue.
    pub same_cpu: bool,
}

impl Scenario {
    /// Whether the goal (p99 ≤ 2× alone) applies: fair queueing with a noisy neighbour.
    pub fn has_goal(&self) -> bool {
        self.target == Target::Strata && self.noisy && self.policy == Policy::Fair
    }

    /// `strata layer limit quiet` arguments after the id (none: limits removed).
    pub fn quiet_limits(&self) -> Vec<String> {
        self.quiet_weight
            .map(|w| vec!["--io-weight".to_string(), w.to_string()])
            .unwrap_or_default()
    }

    /// `strata layer limit noisy` arguments after the id.
    pub fn noisy_limits(&self) -> Vec<String> {
        self.noisy_bps
            .map(|b| vec!["--limit-bps".to_string(), b.to_string()])
            .unwrap_or_default()
    }
}

/// Every scenario, in run order; each is compared with the first alone on its target.
pub const SCENARIOS: [Scenario; 8] = [
    Scenario {
        id: "alone",
        label: "a. quiet alone (fair)",
        target: Target::Strata,
        policy: Policy::Fair,
        noisy: false,
        quiet_weight: None,
        noisy_bps: None,
        same_cpu: false,
    },
    Scenario {
        id: "fifo",
        label: "b. + noisy, fifo (no fair queueing)",
        target: Target::Strata,
        policy: Policy::Fifo,
        noisy: true,
        quiet_weight: None,
        noisy_bps: None,
        same_cpu: false,
    },
    Scenario {
        id: "fair",
        label: "c. + noisy, fair, equal weights",
        target: Target::Strata,
        policy: Policy::Fair,
        noisy: true,
        quiet_weight: None,
        noisy_bps: None,
        same_cpu: false,
    },
    Scenario {
        id: "fair-weighted",
        label: "d. + noisy, fair, quiet weight 1000",
        target: Target::Strata,
        policy: Policy::Fair,
        noisy: true,
        quiet_weight: Some(1000),
        noisy_bps: None,
        same_cpu: false,
    },
    Scenario {
        id: "fair-capped",
        label: "e. + noisy, fair, noisy capped at 200M/s",
        target: Target::Strata,
        policy: Policy::Fair,
        noisy: true,
        quiet_weight: None,
        noisy_bps: Some("200M"),
        same_cpu: false,
    },
    Scenario {
        id: "fair-weighted-same-cpu",
        label: "f. + noisy on the quiet one's CPU, fair, quiet weight 1000",
        target: Target::Strata,
        policy: Policy::Fair,
        noisy: true,
        quiet_weight: Some(1000),
        noisy_bps: None,
        same_cpu: true,
    },
    Scenario {
        id: "host-alone",
        label: "g. host file system: quiet alone",
        target: Target::HostFs,
        policy: Policy::Fifo,
        noisy: false,
        quiet_weight: None,
        noisy_bps: None,
        same_cpu: false,
    },
    Scenario {
        id: "host-noisy",
        label: "h. host file system: + noisy (no I/O control)",
        target: Target::HostFs,
        policy: Policy::Fifo,
        noisy: true,
        quiet_weight: None,
        noisy_bps: None,
        same_cpu: false,
    },
];

/// The quiet layer's reads as the daemon saw them over one run (its own histograms, from
/// `GET /v1/stats`; the daemon is remounted before each run, so they cover that run): where
/// fio's latency is far above these, the reads waited before the engine had them (the
/// kernel's FUSE queue, the daemon's worker threads).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct DaemonSide {
    /// Engine read latency: upper bound of the bucket holding the 99th percentile (µs).
    pub read_p99_us: Option<f64>,
    pub read_mean_us: Option<f64>,
    /// Time its device requests waited in the I/O scheduler: p99 bucket bound and mean (µs).
    pub queue_p99_us: Option<f64>,
    pub queue_mean_us: Option<f64>,
    /// Time its device reads spent in the device, from when the scheduler sent them to their
    /// completion: p99 bucket bound and mean (µs). None: the daemon does not report it (a
    /// daemon from before `strata_layer_io_device_seconds`).
    pub device_p99_us: Option<f64>,
    pub device_mean_us: Option<f64>,
    /// The noisy layer's device writes: p99 bucket bound (µs).
    pub noisy_device_write_p99_us: Option<f64>,
}

/// One run of a scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub rep: usize,
    pub quiet: FioSample,
    /// None: the daemon's statistics could not be read.
    pub daemon: Option<DaemonSide>,
    /// The noisy container's write throughput over the quiet run (None: it did not run).
    pub noisy_mib_s: Option<f64>,
    /// Its fio job's completion latency p99 (µs), for the record.
    pub noisy_p99_us: Option<f64>,
    /// fio JSON files, relative to the results directory.
    pub raw: Vec<String>,
}

/// Everything measured for one scenario.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub scenario: Scenario,
    pub samples: Vec<Sample>,
    pub errors: Vec<String>,
}

impl Outcome {
    pub fn new(scenario: Scenario) -> Outcome {
        Outcome {
            scenario,
            samples: Vec::new(),
            errors: Vec::new(),
        }
    }

    fn summary(&self, f: impl Fn(&Sample) -> Option<f64>) -> Option<Summary> {
        summarize(&self.samples.iter().filter_map(f).collect::<Vec<_>>())
    }

    pub fn quiet_iops(&self) -> Option<Summary> {
        self.summary(|s| Some(s.quiet.iops))
    }

    pub fn quiet_p50(&self) -> Option<Summary> {
        self.summary(|s| s.quiet.clat_p50_us)
    }

    pub fn quiet_p99(&self) -> Option<Summary> {
        self.summary(|s| s.quiet.clat_p99_us)
    }

    pub fn noisy_mib_s(&self) -> Option<Summary> {
        self.summary(|s| s.noisy_mib_s)
    }

    fn daemon(&self, f: fn(&DaemonSide) -> Option<f64>) -> Option<Summary> {
        self.summary(|s| s.daemon.as_ref().and_then(f))
    }
}

/// How the run was made, for the report.
#[derive(Debug, Clone, Default)]
pub struct Info {
    pub started: String,
    pub unix_time: u64,
    pub duration_s: f64,
    pub command: String,
    pub git_rev: Option<String>,
    pub kernel: String,
    pub cpu: String,
    pub cores: usize,
    pub fio_version: String,
    pub strata_bin: String,
    pub dir: String,
    pub image_size: String,
    pub cache_size: Option<String>,
    pub quick: bool,
    pub repeats: usize,
    /// Seconds of each quiet run.
    pub runtime_s: u64,
    pub quiet_file_bytes: u64,
    pub noisy_file_bytes: u64,
    /// `write` or `randwrite`.
    pub noisy_rw: String,
    /// io_uring, or libaio where io_uring failed.
    pub noisy_ioengine: String,
    /// The type of the file system holding the image (`mounts::fstype_of`), for the host rows.
    pub host_fs: String,
    /// Errors outside a scenario (setup, the daemon).
    pub failures: Vec<String>,
}

/// The scenario that scenario `i` is compared with: the first without the noisy one on its target.
pub fn alone_of(outcomes: &[Outcome], i: usize) -> Option<usize> {
    let target = outcomes.get(i)?.scenario.target;
    outcomes
        .iter()
        .position(|o| o.scenario.target == target && !o.scenario.noisy)
}

/// The quiet p99 of a scenario over its p99 alone (medians), when both were measured.
pub fn p99_vs_alone(outcomes: &[Outcome], i: usize) -> Option<f64> {
    let alone = outcomes.get(alone_of(outcomes, i)?)?.quiet_p99()?.median;
    let p99 = outcomes.get(i)?.quiet_p99()?.median;
    (alone > 0.0).then(|| p99 / alone)
}

/// Whether scenario `i` met the goal (None: no goal, or not measured).
pub fn goal_met(outcomes: &[Outcome], i: usize) -> Option<bool> {
    if !outcomes.get(i)?.scenario.has_goal() {
        return None;
    }
    p99_vs_alone(outcomes, i).map(|r| r <= GOAL_P99_VS_ALONE)
}

/// Microseconds: one decimal below 10, else whole and grouped.
fn us(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.1}")
    } else {
        group_thousands(v)
    }
}

/// "median (min–max)", or the median alone for one sample; "—" without any.
fn cell(s: Option<Summary>, f: fn(f64) -> String) -> String {
    match s {
        Some(s) if s.n > 1 => format!("{} ({}–{})", f(s.median), f(s.min), f(s.max)),
        Some(s) => f(s.median),
        None => "—".into(),
    }
}

/// The results table (also printed at the end of the run).
pub fn table(outcomes: &[Outcome]) -> String {
    let mut out = String::from(
        "| scenario | quiet IOPS | quiet p50 (µs) | quiet p99 (µs) | p99 / alone | noisy MiB/s | goal: p99 ≤ 2× alone |\n\
         |---|---:|---:|---:|---:|---:|---|\n",
    );
    for (i, o) in outcomes.iter().enumerate() {
        let failed = |s: String| {
            if o.samples.is_empty() && !o.errors.is_empty() {
                "error".to_string()
            } else {
                s
            }
        };
        let ratio = match p99_vs_alone(outcomes, i) {
            Some(_) if alone_of(outcomes, i) == Some(i) => "1.00×".to_string(),
            Some(r) => format!("{r:.2}×"),
            None => "—".into(),
        };
        let noisy = if o.scenario.noisy {
            failed(cell(o.noisy_mib_s(), group_thousands))
        } else {
            "(not running)".into()
        };
        let goal = match goal_met(outcomes, i) {
            Some(true) => "met",
            Some(false) => "**missed**",
            None if o.scenario.has_goal() => "?",
            None => "",
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {ratio} | {noisy} | {goal} |",
            o.scenario.label,
            failed(cell(o.quiet_iops(), group_thousands)),
            failed(cell(o.quiet_p50(), us)),
            failed(cell(o.quiet_p99(), us)),
        );
    }
    out
}

/// Where the quiet reads waited: fio's p99 beside the daemon's own view of the same reads.
pub fn daemon_table(outcomes: &[Outcome]) -> String {
    let mut out = String::from(
        "| scenario | fio clat p99 (µs) | engine read p99 ≤ (µs) | scheduler queue p99 ≤ (µs) | device read p99 ≤ (µs) | engine read mean (µs) | scheduler queue mean (µs) | device read mean (µs) | noisy device write p99 ≤ (µs) |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for o in outcomes {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            o.scenario.label,
            cell(o.quiet_p99(), us),
            cell(o.daemon(|d| d.read_p99_us), us),
            cell(o.daemon(|d| d.queue_p99_us), us),
            cell(o.daemon(|d| d.device_p99_us), us),
            cell(o.daemon(|d| d.read_mean_us), us),
            cell(o.daemon(|d| d.queue_mean_us), us),
            cell(o.daemon(|d| d.device_mean_us), us),
            cell(o.daemon(|d| d.noisy_device_write_p99_us), us),
        );
    }
    out
}

/// results.md: how the run was made, the table, the chart, the errors.
pub fn markdown(outcomes: &[Outcome], info: &Info) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Strata fairness benchmark — {}\n", info.started);
    let _ = writeln!(
        md,
        "{} · kernel {} · {} × {} · {} · git {} · {:.0} s\n\n`{}`\n",
        info.fio_version,
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
        "One Strata image ({}, under {}{}) with a committed base layer holding a {} file of \
         random data, and two clones of it: **quiet** runs fio 4 KiB random reads \
         (`--ioengine=psync --direct=1 --iodepth=1`) on the inherited file for {} s; **noisy** \
         runs fio 1 MiB {} writes (`--ioengine={} --direct=1 --iodepth=32`) on its own {} file \
         (written beforehand, so rewritten in place), started 2 s before the quiet run \
         (`--ramp_time=2`) and stopped when it ends. The daemon is remounted before every run \
         (`--io-scheduler` as the scenario says; its block cache starts cold) and both layers' \
         limits are set (`strata layer limit`) before it. Each figure is the median of {} \
         run{}{}; the scenarios take turns, so a change in the host's load reaches all of them. \
         Latencies are fio's completion latency (clat) percentiles. The goal: with fair \
         queueing, the quiet container's p99 at most {GOAL_P99_VS_ALONE}× its p99 alone. \
         The host rows run the same two fio jobs on plain files of the file system that \
         holds the image ({}), without Strata and without any I/O control (the disk's own \
         block scheduler): what the machine gives the two containers otherwise, in the same \
         run; their ratio is to the host's own quiet run alone. In row f both jobs run on CPU 0 \
         (`--cpus_allowed=0`), so the kernel hands both containers' requests to the same FUSE \
         queue of the daemon.\n",
        info.image_size,
        info.dir,
        info.cache_size
            .as_deref()
            .map(|c| format!(", `--cache-size {c}`"))
            .unwrap_or_default(),
        crate::fmt::fmt_size(info.quiet_file_bytes),
        info.runtime_s,
        if info.noisy_rw == "randwrite" {
            "random"
        } else {
            "sequential"
        },
        info.noisy_ioengine,
        crate::fmt::fmt_size(info.noisy_file_bytes),
        info.repeats,
        if info.repeats == 1 { "" } else { "s" },
        if info.repeats > 1 {
            " (min–max in parentheses)"
        } else {
            ""
        },
        if info.host_fs.is_empty() {
            "type unknown"
        } else {
            &info.host_fs
        },
    );
    md.push_str(&table(outcomes));
    md.push_str("\n![quiet p99 per scenario](quiet-p99.svg)\n");
    md.push_str(
        "\n## Where the quiet reads waited\n\n\
         The daemon's own histograms of the quiet layer over each run (`GET /v1/stats`): the \
         engine's read latency (from when the engine has the FUSE read to its reply), the \
         time its device requests waited in the I/O scheduler, and the time its device reads \
         spent in the device (from when the scheduler sent them to their completion: behind \
         the writes already there; `strata_layer_io_device_seconds`, — for a daemon without \
         it); the last column is the noisy layer's device writes. p99s are the upper bounds of \
         the histogram buckets holding them (…, 250, 500, 1,000, 2,500, 5,000, 10,000, 25,000, \
         50,000, 100,000, 250,000 µs, …). Where fio's p99 is far above the engine's, the reads \
         waited before the engine had them: in the kernel's FUSE queue or for a daemon worker \
         thread, where no scheduler of the daemon's can reorder them. With fifo there is no \
         scheduler queue (nothing is recorded).\n\n",
    );
    md.push_str(&daemon_table(outcomes));
    let errors: Vec<String> = info
        .failures
        .iter()
        .cloned()
        .chain(outcomes.iter().flat_map(|o| {
            o.errors
                .iter()
                .map(move |e| format!("{}: {e}", o.scenario.label))
        }))
        .collect();
    if !errors.is_empty() {
        md.push_str("\n## Errors\n\n");
        for e in errors {
            let _ = writeln!(md, "- {}", e.replace('\n', " "));
        }
    }
    md
}

fn summary_json(s: Option<Summary>) -> Value {
    match s {
        Some(s) => json!({"median": s.median, "min": s.min, "max": s.max, "n": s.n}),
        None => Value::Null,
    }
}

/// results.json: how the run was made, and per scenario every sample and the summaries.
pub fn to_json(outcomes: &[Outcome], info: &Info) -> Value {
    let scenarios: Vec<Value> = outcomes
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let sc = &o.scenario;
            json!({
                "id": sc.id,
                "label": sc.label,
                "target": match sc.target {
                    Target::Strata => "strata",
                    Target::HostFs => "host-fs",
                },
                "io_scheduler": (sc.target == Target::Strata).then(|| sc.policy.name()),
                "noisy": sc.noisy,
                "quiet_io_weight": sc.quiet_weight,
                "noisy_limit_bps": sc.noisy_bps,
                "same_cpu": sc.same_cpu,
                "samples": o.samples.iter().map(|s| json!({
                    "rep": s.rep + 1,
                    "quiet_iops": s.quiet.iops,
                    "quiet_clat_p50_us": s.quiet.clat_p50_us,
                    "quiet_clat_p99_us": s.quiet.clat_p99_us,
                    "noisy_mib_s": s.noisy_mib_s,
                    "noisy_clat_p99_us": s.noisy_p99_us,
                    "quiet_engine_read_p99_bound_us": s.daemon.and_then(|d| d.read_p99_us),
                    "quiet_engine_read_mean_us": s.daemon.and_then(|d| d.read_mean_us),
                    "quiet_sched_queue_p99_bound_us": s.daemon.and_then(|d| d.queue_p99_us),
                    "quiet_sched_queue_mean_us": s.daemon.and_then(|d| d.queue_mean_us),
                    "quiet_device_read_p99_bound_us": s.daemon.and_then(|d| d.device_p99_us),
                    "quiet_device_read_mean_us": s.daemon.and_then(|d| d.device_mean_us),
                    "noisy_device_write_p99_bound_us": s.daemon.and_then(|d| d.noisy_device_write_p99_us),
                    "raw": s.raw,
                })).collect::<Vec<_>>(),
                "quiet_iops": summary_json(o.quiet_iops()),
                "quiet_clat_p50_us": summary_json(o.quiet_p50()),
                "quiet_clat_p99_us": summary_json(o.quiet_p99()),
                "noisy_mib_s": summary_json(o.noisy_mib_s()),
                "p99_vs_alone": p99_vs_alone(outcomes, i),
                "goal": sc.has_goal().then(|| format!("p99 ≤ {GOAL_P99_VS_ALONE}× alone")),
                "goal_met": goal_met(outcomes, i),
                "errors": o.errors,
            })
        })
        .collect();
    json!({
        "started": info.started,
        "unix_time": info.unix_time,
        "duration_s": info.duration_s,
        "command": info.command,
        "git_rev": info.git_rev,
        "config": {
            "quick": info.quick,
            "repeats": info.repeats,
            "runtime_s": info.runtime_s,
            "image_size": info.image_size,
            "cache_size": info.cache_size,
            "dir": info.dir,
            "host_fs": info.host_fs,
            "quiet": {"rw": "randread", "bs": "4k", "iodepth": 1, "ioengine": "psync", "direct": true,
                      "file_bytes": info.quiet_file_bytes, "file": "inherited"},
            "noisy": {"rw": info.noisy_rw, "bs": "1M", "iodepth": 32, "ioengine": info.noisy_ioengine,
                      "direct": true, "file_bytes": info.noisy_file_bytes, "file": "own",
                      "ramp_time_s": 2},
        },
        "host": {
            "fio": info.fio_version,
            "kernel": info.kernel,
            "cpu": info.cpu,
            "cores": info.cores,
        },
        "strata_bin": info.strata_bin,
        "failures": info.failures,
        "scenarios": scenarios,
    })
}

/// `quiet-p99.svg`: the quiet container's p99 per scenario (median, min–max whisker), a
/// dashed line at 2× its p99 alone; log scale when the bars span more than 20×.
pub fn chart(outcomes: &[Outcome], info: &Info) -> String {
    let rows: Vec<Row> = outcomes
        .iter()
        .map(|o| {
            let bar = match o.quiet_p99() {
                Some(s) => {
                    let noisy = o
                        .noisy_mib_s()
                        .map(|n| format!(" · noisy {} MiB/s", group_thousands(n.median)))
                        .unwrap_or_default();
                    Bar {
                        value: Some(s.median),
                        range: (s.n > 1).then_some((s.min, s.max)),
                        text: format!("{} µs{noisy}", us(s.median)),
                        tip: format!("{}: p99 {} µs", o.scenario.label, cell(Some(s), us)),
                    }
                }
                None => Bar {
                    value: None,
                    range: None,
                    text: if o.errors.is_empty() {
                        "not run".into()
                    } else {
                        "error".into()
                    },
                    tip: String::new(),
                },
            };
            Row {
                label: o.scenario.label.to_string(),
                bars: vec![bar],
                goal: None,
            }
        })
        .collect();
    let vals: Vec<f64> = outcomes
        .iter()
        .filter_map(|o| o.quiet_p99())
        .flat_map(|s| [s.min, s.max])
        .filter(|v| *v > 0.0)
        .collect();
    let (lo, hi) = vals.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
        (lo.min(*v), hi.max(*v))
    });
    let log = hi / lo > 20.0;
    let rules = alone_of(outcomes, 0)
        .and_then(|i| outcomes[i].quiet_p99())
        .map(|s| {
            vec![(
                GOAL_P99_VS_ALONE * s.median,
                format!("{GOAL_P99_VS_ALONE}× alone"),
            )]
        })
        .unwrap_or_default();
    BarChart {
        title: "Quiet container's 4k random-read p99 beside a noisy writer (µs, lower is better)"
            .into(),
        subtitle: format!(
            "fio psync QD1 direct=1, {} s per run, noisy: 1M {} QD32{}; bar = median, whisker = min–max; dashed: the goal{}",
            info.runtime_s,
            info.noisy_rw,
            if info.repeats > 1 {
                format!(", {} runs", info.repeats)
            } else {
                String::new()
            },
            if log { "; log scale" } else { "" }
        ),
        series: vec![("quiet p99", "#2b6cb0")],
        rows,
        log,
        cap: None,
        rules,
    }
    .svg()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(rep: usize, p99: f64, noisy: Option<f64>) -> Sample {
        Sample {
            rep,
            quiet: FioSample {
                iops: 5000.0 + rep as f64,
                mib_per_sec: 20.0,
                clat_p50_us: Some(p99 / 3.0),
                clat_p99_us: Some(p99),
                lat_p50_us: None,
                lat_p99_us: None,
            },
            daemon: Some(DaemonSide {
                read_p99_us: Some(250.0),
                read_mean_us: Some(120.4),
                queue_p99_us: None,
                queue_mean_us: Some(3.3),
                device_p99_us: Some(500.0),
                device_mean_us: Some(80.0),
                noisy_device_write_p99_us: None,
            }),
            noisy_mib_s: noisy,
            noisy_p99_us: noisy.map(|_| 40_000.0),
            raw: vec![format!("raw/x-r{}-quiet.json", rep + 1)],
        }
    }

    fn outcomes() -> Vec<Outcome> {
        let p99s: [&[f64]; 8] = [
            &[300.0, 280.0, 320.0],
            &[9000.0, 12000.0, 8000.0],
            &[500.0, 450.0, 700.0],
            &[400.0],
            &[],
            &[900.0],
            &[100.0],
            &[5000.0],
        ];
        SCENARIOS
            .iter()
            .zip(p99s)
            .map(|(sc, v)| {
                let mut o = Outcome::new(*sc);
                for (rep, p) in v.iter().enumerate() {
                    o.samples
                        .push(sample(rep, *p, sc.noisy.then_some(900.0 + rep as f64)));
                }
                if v.is_empty() {
                    o.errors.push("fio failed\nsecond line".into());
                }
                o
            })
            .collect()
    }

    #[test]
    fn scenarios_and_goals() {
        assert_eq!(SCENARIOS[0].id, "alone");
        assert!(!SCENARIOS[0].has_goal() && !SCENARIOS[1].has_goal());
        assert!(SCENARIOS[2..6].iter().all(Scenario::has_goal));
        assert!(!SCENARIOS[6].has_goal() && !SCENARIOS[7].has_goal());
        assert!(SCENARIOS[5].same_cpu && SCENARIOS.iter().filter(|s| s.same_cpu).count() == 1);
        assert_eq!(SCENARIOS[3].quiet_limits(), ["--io-weight", "1000"]);
        assert!(SCENARIOS[3].noisy_limits().is_empty());
        assert_eq!(SCENARIOS[4].noisy_limits(), ["--limit-bps", "200M"]);
        let o = outcomes();
        assert_eq!(p99_vs_alone(&o, 1), Some(30.0));
        assert_eq!(goal_met(&o, 1), None);
        assert_eq!(goal_met(&o, 2), Some(true));
        assert!((p99_vs_alone(&o, 2).unwrap() - 500.0 / 300.0).abs() < 1e-12);
        assert_eq!(goal_met(&o, 4), None);
        // The host rows are compared with the host alone.
        assert_eq!((alone_of(&o, 7), alone_of(&o, 5)), (Some(6), Some(0)));
        assert_eq!(p99_vs_alone(&o, 7), Some(50.0));
        assert_eq!(goal_met(&o, 7), None);
        assert_eq!(goal_met(&o, 5), Some(false));
    }

    #[test]
    fn table_rows() {
        let t = table(&outcomes());
        assert!(t.contains("| a. quiet alone (fair) | 5,001 (5,000–5,002) | 100 (93–107) | 300 (280–320) | 1.00× | (not running) |  |"), "{t}");
        assert!(t.contains("| b. + noisy, fifo (no fair queueing) | 5,001 (5,000–5,002) | 3,000 (2,667–4,000) | 9,000 (8,000–12,000) | 30.00× | 901 (900–902) |  |"), "{t}");
        assert!(t.contains("| 1.67× | 901 (900–902) | met |"), "{t}");
        assert!(t.contains(
            "| d. + noisy, fair, quiet weight 1000 | 5,000 | 133 | 400 | 1.33× | 900 | met |"
        ));
        assert!(t.contains(
            "| e. + noisy, fair, noisy capped at 200M/s | error | error | error | — | error | ? |"
        ));
        assert!(t.contains("| f. + noisy on the quiet one's CPU, fair, quiet weight 1000 | 5,000 | 300 | 900 | 3.00× | 900 | **missed** |"), "{t}");
        assert!(t.contains("| g. host file system: quiet alone | 5,000 | 33 | 100 | 1.00× | (not running) |  |"), "{t}");
        assert!(t.contains("| h. host file system: + noisy (no I/O control) | 5,000 | 1,667 | 5,000 | 50.00× | 900 |  |"), "{t}");
    }

    #[test]
    fn report_files() {
        let o = outcomes();
        let info = Info {
            runtime_s: 15,
            repeats: 3,
            noisy_rw: "write".into(),
            noisy_ioengine: "io_uring".into(),
            host_fs: "ext4".into(),
            quiet_file_bytes: 1 << 30,
            noisy_file_bytes: 2 << 30,
            ..Info::default()
        };
        let md = markdown(&o, &info);
        assert!(md.contains("![quiet p99 per scenario](quiet-p99.svg)"));
        assert!(md.contains("## Errors") && md.contains("fio failed second line"));
        assert!(md.contains("on its own 2 GiB file"));
        assert!(md.contains("holds the image (ext4)"));
        assert!(md.contains(
            "| a. quiet alone (fair) | 300 (280–320) | 250 (250–250) | — | 500 (500–500) | 120 (120–120) | 3.3 (3.3–3.3) | 80 (80–80) | — |"
        ), "{md}");
        assert!(md.contains(
            "| e. + noisy, fair, noisy capped at 200M/s | — | — | — | — | — | — | — | — |"
        ));
        let v = to_json(&o, &info);
        assert_eq!(v["scenarios"][2]["goal_met"], true);
        assert_eq!(v["scenarios"][1]["p99_vs_alone"], 30.0);
        assert_eq!(v["scenarios"][0]["quiet_clat_p99_us"]["median"], 300.0);
        assert_eq!(v["scenarios"][4]["samples"].as_array().unwrap().len(), 0);
        assert_eq!(v["config"]["noisy"]["ioengine"], "io_uring");
        assert_eq!(v["scenarios"][7]["target"], "host-fs");
        assert_eq!(v["scenarios"][7]["io_scheduler"], Value::Null);
        assert_eq!(v["scenarios"][5]["same_cpu"], true);
        assert_eq!(v["scenarios"][1]["io_scheduler"], "fifo");
        assert_eq!(
            v["scenarios"][0]["samples"][0]["quiet_engine_read_mean_us"],
            120.4
        );
        assert_eq!(
            v["scenarios"][0]["samples"][0]["quiet_device_read_mean_us"],
            80.0
        );
        let svg = chart(&o, &info);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
        assert!(svg.contains("log scale"), "12,000 / 280 > 20");
        assert!(svg.contains("2× alone") && svg.contains(">error<"));
        assert!(svg.contains("9,000 µs · noisy 901 MiB/s"));
    }
}
