//! The fio workloads: one step per job (4k random and 1M sequential reads and writes, io_uring
//! and libaio, `direct=1`) on the file every container inherits; run a job (also the buffered
//! ones of [`crate::buffered`]), read its JSON.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::fmt::group_thousands;
use crate::inputs::Input;
use crate::process;
use crate::results::Sink;
use crate::suite::{Ctx, Run, Step};
use crate::workloads::{Config, Detail, Goal, Group, Unit, Workload};
use crate::Res;

/// The file the jobs read and write, in every system's lower layer (also the large inherited
/// file of the first-write workload).
pub const FILE: &str = "fio.dat";

/// One fio job (the other options are common to all, see [`command`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FioJob {
    pub rw: &'static str,
    pub bs: &'static str,
    pub iodepth: u32,
    pub ioengine: &'static str,
    /// O_DIRECT (`--direct=1`); else through the page cache, which fio must not empty
    /// before the job (`--direct=0 --invalidate=0`).
    pub direct: bool,
}

impl FioJob {
    pub fn is_write(&self) -> bool {
        self.rw.contains("write")
    }
}

/// Every job, in run order: reads before writes, so reads see the freshly laid-out file rather
/// than one fragmented by the write jobs (a copy-on-write file system cares).
pub fn steps(cfg: &Config) -> Vec<Step> {
    let mut v = Vec::new();
    for (rw, bs, iodepth, unit, goal) in [
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
        for ioengine in ["io_uring", "libaio"] {
            let job = FioJob {
                rw: match rw {
                    "seqread" => "read",
                    "seqwrite" => "write",
                    other => other,
                },
                bs,
                iodepth,
                ioengine,
                direct: true,
            };
            let id = format!(
                "fio-{rw}-{}-qd{iodepth}{}",
                bs.to_lowercase(),
                if ioengine == "libaio" { "-libaio" } else { "" }
            );
            let mut label = format!("{bs} {rw} QD{iodepth} {ioengine}");
            if rw == "randwrite" && ioengine == "io_uring" {
                // The first write job in a container: the overlays copy the file up in it.
                label.push_str(" †");
            }
            // At QD1 the latency is the figure: its median, total (see FioSample::lat_p50_us).
            let p50 = (iodepth == 1).then(|| {
                Workload::new(
                    format!("{id}-p50"),
                    format!("{label}, p50 latency"),
                    Group::Fio,
                    Unit::Micros,
                )
                .goal(Some(Goal::AtMost(1.5)))
            });
            let w = Workload::new(id, label, Group::Fio, unit)
                .goal(goal)
                .detail(Detail::Fio(job));
            v.push(Step {
                name: w.label.clone(),
                needs: vec![Input::LowerFile {
                    name: FILE,
                    size: cfg.file_size,
                }],
                run: Run::InContainer(Box::new({
                    let (w, p50) = (w.clone(), p50.clone());
                    move |ctx, tree, sink| {
                        let file = tree.join(FILE);
                        let s = measure(ctx, &job, &w, &file, ctx.cfg.file_size, sink)?;
                        if let Some(p50) = &p50 {
                            match s.lat_p50_us {
                                Some(l) => sink.push(&p50.id, l),
                                None => sink.error(&p50.id, "fio reported no total latency"),
                            }
                        }
                        Ok(())
                    }
                })),
                workloads: std::iter::once(w).chain(p50).collect(),
            });
        }
    }
    v
}

/// Run `job` on the first `size` bytes of `file` for `ctx.runtime_s` seconds; its JSON goes to
/// `raw/`. Records the figure in `w`'s unit and the completion latencies in `w`'s cell, and
/// returns what fio measured.
pub fn measure(
    ctx: &Ctx,
    job: &FioJob,
    w: &Workload,
    file: &Path,
    size: u64,
    sink: &mut Sink,
) -> Res<FioSample> {
    let raw = raw_path(ctx.out, sink.system().name(), &w.id, ctx.rep);
    fs::create_dir_all(raw.parent().expect("has a parent")).map_err(|e| e.to_string())?;
    let s = run(job, file, size, ctx.runtime_s, &raw)?;
    let v = if w.unit == Unit::MibPerSec {
        s.mib_per_sec
    } else {
        s.iops
    };
    ctx.log(
        sink.system().name(),
        &format!(
            "{}: {} {}{}",
            w.label,
            group_thousands(v),
            w.unit.name(),
            s.lat_p50_us
                .or(s.clat_p50_us)
                .map(|l| format!(", p50 {l:.0} µs"))
                .unwrap_or_default()
        ),
    );
    if let Some(cell) = sink.cell(&w.id) {
        cell.samples.push(v);
        cell.clat_p50_us.extend(s.clat_p50_us);
        cell.clat_p99_us.extend(s.clat_p99_us);
        cell.lat_p50_us.extend(s.lat_p50_us);
        cell.lat_p99_us.extend(s.lat_p99_us);
        cell.raw.push(
            raw.strip_prefix(ctx.out)
                .unwrap_or(&raw)
                .display()
                .to_string(),
        );
    }
    Ok(s)
}

/// What one fio run measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FioSample {
    pub iops: f64,
    pub mib_per_sec: f64,
    /// Completion latency, median, microseconds.
    pub clat_p50_us: Option<f64>,
    /// Completion latency, 99th percentile, microseconds.
    pub clat_p99_us: Option<f64>,
    /// Total latency (submission to completion: what the application waits), median,
    /// microseconds. fio's completion latency leaves out the submission, which for ext4's
    /// O_DIRECT holds the device submission itself (block layer, the virtio doorbell), and
    /// for a FUSE file system only the hand-over of the request (its device I/O is in the
    /// completion part): only the total compares like with like.
    pub lat_p50_us: Option<f64>,
    /// Total latency, 99th percentile, microseconds.
    pub lat_p99_us: Option<f64>,
}

pub fn version() -> Res<String> {
    let out = process::run_captured(
        Command::new("fio").arg("--version"),
        Duration::from_secs(30),
    )
    .map_err(|e| format!("{e} (is fio installed? `apt-get install fio`)"))?;
    if !out.status.success() {
        return Err(format!("fio --version failed: {}", out.stderr.trim()));
    }
    Ok(out.stdout.trim().to_string())
}

/// The fio command line for `job` (the BASELINES.md one; `direct=0` jobs also keep the page
/// cache as it is), JSON to `json_out`.
pub fn command(job: &FioJob, file: &Path, size: u64, runtime_s: u64, json_out: &Path) -> Command {
    let mut c = Command::new("fio");
    c.arg("--name=J")
        .arg(format!("--filename={}", file.display()))
        .arg(format!("--size={size}"))
        .arg(format!("--ioengine={}", job.ioengine))
        .arg(format!("--direct={}", u8::from(job.direct)))
        .arg(format!("--rw={}", job.rw))
        .arg(format!("--bs={}", job.bs))
        .arg(format!("--iodepth={}", job.iodepth))
        .args((!job.direct).then_some("--invalidate=0"))
        .arg("--numjobs=1")
        .arg("--group_reporting")
        .arg(format!("--runtime={runtime_s}"))
        .arg("--time_based")
        // Percentiles of the whole latency (submission to completion) too, not only of the
        // completion part: see FioSample::lat_p50_us.
        .arg("--lat_percentiles=1")
        // The file is laid out beforehand; never let fio extend or rewrite it.
        .arg("--fallocate=none")
        .arg("--output-format=json")
        .arg(format!("--output={}", json_out.display()));
    c
}

/// Run one job and parse its result. The raw JSON stays in `json_out`.
pub fn run(
    job: &FioJob,
    file: &Path,
    size: u64,
    runtime_s: u64,
    json_out: &Path,
) -> Res<FioSample> {
    run_with(job, file, size, runtime_s, json_out, &[])
}

/// [`run`] with more fio options (`--cpus_allowed=0`).
pub fn run_with(
    job: &FioJob,
    file: &Path,
    size: u64,
    runtime_s: u64,
    json_out: &Path,
    extra: &[&str],
) -> Res<FioSample> {
    let mut cmd = command(job, file, size, runtime_s, json_out);
    cmd.args(extra);
    // A job that hangs (a stuck FUSE request) must not hang the harness.
    let timeout = Duration::from_secs(runtime_s + 120);
    let out = process::run_captured(&mut cmd, timeout)?;
    let text = fs::read_to_string(json_out).unwrap_or_default();
    if !out.status.success() {
        return Err(format!(
            "fio {} {} QD{} {}{} failed ({}): {}",
            job.rw,
            job.bs,
            job.iodepth,
            job.ioengine,
            if job.direct { "" } else { " buffered" },
            out.status,
            first_lines(&format!("{}\n{}", out.stderr.trim(), out.stdout.trim()), 6)
        ));
    }
    parse(&text, job.is_write()).map_err(|e| format!("{}: {e}", json_out.display()))
}

fn first_lines(s: &str, n: usize) -> String {
    s.lines()
        .filter(|l| !l.trim().is_empty())
        .take(n)
        .collect::<Vec<_>>()
        .join(" | ")
}

/// Parse fio's JSON output (anything fio printed before the first `{` is skipped).
pub fn parse(text: &str, write: bool) -> Res<FioSample> {
    let start = text.find('{').ok_or("no JSON in fio output")?;
    let v: Value =
        serde_json::from_str(&text[start..]).map_err(|e| format!("bad fio JSON: {e}"))?;
    let job = v
        .get("jobs")
        .and_then(|j| j.get(0))
        .ok_or("fio JSON has no jobs")?;
    let err = job.get("error").and_then(Value::as_i64).unwrap_or(0);
    if err != 0 {
        return Err(format!(
            "fio job error {err} ({})",
            std::io::Error::from_raw_os_error(err as i32)
        ));
    }
    let side = job
        .get(if write { "write" } else { "read" })
        .ok_or("fio JSON: no read/write section")?;
    let iops = side
        .get("iops")
        .and_then(Value::as_f64)
        .ok_or("fio JSON: no iops")?;
    let bw = side
        .get("bw_bytes")
        .and_then(Value::as_f64)
        .ok_or("fio JSON: no bw_bytes")?;
    let pct = |what: &str, pct: &str| {
        side.get(what)
            .and_then(|c| c.get("percentile"))
            .and_then(|p| p.get(pct))
            .and_then(Value::as_f64)
            .map(|ns| ns / 1000.0)
    };
    let io_bytes = side.get("io_bytes").and_then(Value::as_f64).unwrap_or(0.0);
    if io_bytes <= 0.0 {
        return Err("fio did no I/O".into());
    }
    Ok(FioSample {
        iops,
        mib_per_sec: bw / (1024.0 * 1024.0),
        clat_p50_us: pct("clat_ns", "50.000000"),
        clat_p99_us: pct("clat_ns", "99.000000"),
        lat_p50_us: pct("lat_ns", "50.000000"),
        lat_p99_us: pct("lat_ns", "99.000000"),
    })
}

/// `<out>/raw/<system>/<workload>-r<rep>.json`
pub fn raw_path(out: &Path, system: &str, workload: &str, rep: usize) -> PathBuf {
    out.join("raw")
        .join(system)
        .join(format!("{workload}-r{}.json", rep + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"note: a line fio printed first
{
  "fio version" : "fio-3.33",
  "jobs" : [ { "jobname" : "J", "error" : 0,
      "read" : { "io_bytes" : 887427072, "bw_bytes" : 443491790, "iops" : 108274.362819,
                 "clat_ns" : { "percentile" : { "50.000000" : 268288, "99.000000" : 1003520 } } },
      "write" : { "io_bytes" : 0, "bw_bytes" : 0, "iops" : 0.0 } } ]
}"#;

    #[test]
    fn parse_read() {
        let s = parse(SAMPLE, false).unwrap();
        assert!((s.iops - 108274.362819).abs() < 1e-6);
        assert!((s.mib_per_sec - 443491790.0 / 1048576.0).abs() < 1e-9);
        assert_eq!(s.clat_p50_us, Some(268.288));
        assert_eq!(s.clat_p99_us, Some(1003.52));
    }

    #[test]
    fn parse_write_without_io_is_an_error() {
        assert!(parse(SAMPLE, true).is_err());
        assert!(parse("garbage", false).is_err());
        assert!(parse(r#"{"jobs":[{"error":5}]}"#, false)
            .unwrap_err()
            .contains("error 5"));
    }
}
