//! fio jobs: lay the data file out, run one job, read its JSON.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::rng::XorShift;
use crate::workloads::FioJob;
use crate::Res;
use crate::{interrupt, process};

/// What one fio run measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FioSample {
    pub iops: f64,
    pub mib_per_sec: f64,
    /// Completion latency, median, microseconds.
    pub clat_p50_us: Option<f64>,
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

/// Write `size` bytes of pseudo-random data to `path` (1 MiB writes), then fsync. Random so that
/// nothing can compress or deduplicate it; the same bytes for every system.
pub fn lay_out(path: &Path, size: u64) -> Res<()> {
    const CHUNK: usize = 1 << 20;
    let _ = fs::remove_file(path);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| format!("create {}: {e}", path.display()))?;
    let mut buf = vec![0u8; CHUNK];
    let mut rng = XorShift::new(0x9E37_79B9_7F4A_7C15);
    let mut written = 0u64;
    while written < size {
        interrupt::check_interrupted()?;
        rng.fill(&mut buf);
        let n = (size - written).min(CHUNK as u64) as usize;
        f.write_all(&buf[..n])
            .map_err(|e| format!("write {} at {written}: {e}", path.display()))?;
        written += n as u64;
    }
    f.sync_all()
        .map_err(|e| format!("fsync {}: {e}", path.display()))?;
    Ok(())
}

/// The fio command line for `job` (the BASELINES.md one), JSON to `json_out`.
pub fn command(job: &FioJob, file: &Path, size: u64, runtime_s: u64, json_out: &Path) -> Command {
    let mut c = Command::new("fio");
    c.arg("--name=J")
        .arg(format!("--filename={}", file.display()))
        .arg(format!("--size={size}"))
        .arg(format!("--ioengine={}", job.ioengine))
        .arg("--direct=1")
        .arg(format!("--rw={}", job.rw))
        .arg(format!("--bs={}", job.bs))
        .arg(format!("--iodepth={}", job.iodepth))
        .arg("--numjobs=1")
        .arg("--group_reporting")
        .arg(format!("--runtime={runtime_s}"))
        .arg("--time_based")
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
    let mut cmd = command(job, file, size, runtime_s, json_out);
    // A job that hangs (a stuck FUSE request) must not hang the harness.
    let timeout = Duration::from_secs(runtime_s + 120);
    let out = process::run_captured(&mut cmd, timeout)?;
    let text = fs::read_to_string(json_out).unwrap_or_default();
    if !out.status.success() {
        return Err(format!(
            "fio {} {} QD{} {} failed ({}): {}",
            job.rw,
            job.bs,
            job.iodepth,
            job.ioengine,
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
    let clat = side
        .get("clat_ns")
        .and_then(|c| c.get("percentile"))
        .and_then(|p| p.get("50.000000"))
        .and_then(Value::as_f64)
        .map(|ns| ns / 1000.0);
    let io_bytes = side.get("io_bytes").and_then(Value::as_f64).unwrap_or(0.0);
    if io_bytes <= 0.0 {
        return Err("fio did no I/O".into());
    }
    Ok(FioSample {
        iops,
        mib_per_sec: bw / (1024.0 * 1024.0),
        clat_p50_us: clat,
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
                 "clat_ns" : { "percentile" : { "50.000000" : 268288 } } },
      "write" : { "io_bytes" : 0, "bw_bytes" : 0, "iops" : 0.0 } } ]
}"#;

    #[test]
    fn parse_read() {
        let s = parse(SAMPLE, false).unwrap();
        assert!((s.iops - 108274.362819).abs() < 1e-6);
        assert!((s.mib_per_sec - 443491790.0 / 1048576.0).abs() < 1e-9);
        assert_eq!(s.clat_p50_us, Some(268.288));
    }

    #[test]
    fn parse_write_without_io_is_an_error() {
        assert!(parse(SAMPLE, true).is_err());
        assert!(parse("garbage", false).is_err());
        assert!(parse(r#"{"jobs":[{"error":5}]}"#, false)
            .unwrap_err()
            .contains("error 5"));
    }

    #[test]
    fn layout_writes_random_data() {
        let dir = std::env::temp_dir().join(format!("strata-bench-layout-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let f = dir.join("fio.dat");
        lay_out(&f, 3 << 20 | 123).unwrap();
        let data = fs::read(&f).unwrap();
        assert_eq!(data.len(), 3 << 20 | 123);
        assert_ne!(&data[..4096], &data[1 << 20..(1 << 20) + 4096]);
        fs::remove_dir_all(&dir).unwrap();
    }
}
