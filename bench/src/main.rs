//! strata-bench: run fio and metadata workloads against ext4 and Strata, measured in the same
//! run, and write raw fio JSON, results.json, results.md and an SVG chart of the ratios.
//!
//! Run as root (mounting, dropping caches). See `strata-bench --help`.

mod cli;
mod fio;
mod meta;
mod report;
mod results;
mod systems;
mod util;
mod workloads;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use cli::{Args, Parsed};
use results::Results;
use systems::{SetupOptions, System};
use util::Res;
use workloads::{Kind, MetaPhase, Unit};

fn main() -> ExitCode {
    let args = match cli::parse(std::env::args().skip(1)) {
        Ok(Parsed::Run(a)) => a,
        Ok(Parsed::Help) => {
            print!("{}", cli::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("strata-bench: {e}");
            return ExitCode::from(2);
        }
    };
    util::install_signal_handlers();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("strata-bench: {e}");
            ExitCode::from(1)
        }
    }
}

fn log(msg: &str) {
    eprintln!("strata-bench: {msg}");
}

/// The default results directory: bench/results/<date>, or <date>-<time> when that exists.
fn default_out() -> PathBuf {
    let (date, time) = util::local_date_time();
    let results = cli::workspace_root().join("bench").join("results");
    let day = results.join(&date);
    if day.exists() {
        results.join(format!("{date}-{time}"))
    } else {
        day
    }
}

fn first_line_of(path: &str, key: &str) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

fn git_rev() -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(cli::workspace_root())
        .args(["rev-parse", "--short", "HEAD"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Runs everything. Ok(true): every workload ran on every system without error.
fn run(args: &Args) -> Res<bool> {
    let t0 = Instant::now();
    if !util::is_root() {
        return Err("must run as root (it mounts file systems and drops caches)".into());
    }
    if let Some(k) = args.systems.iter().find(|k| !k.implemented()) {
        return Err(format!("system {} is not implemented yet", k.name()));
    }
    let fio_version = fio::version()?;

    let file_size: u64 = if args.quick { 256 << 20 } else { 1 << 30 };
    let runtime_s: u64 = if args.quick { 3 } else { 10 };
    let meta_files: usize = if args.quick { 5_000 } else { 20_000 };
    let wl = workloads::select(workloads::all(meta_files), &args.only);
    if wl.is_empty() {
        return Err(format!(
            "--only {:?} selects no workload",
            args.only.join(",")
        ));
    }
    let any_fio = wl.iter().any(|w| matches!(w.kind, Kind::Fio(_)));
    let any_meta = wl.iter().any(|w| matches!(w.kind, Kind::Meta(_)));

    let out = args.out.clone().unwrap_or_else(default_out);
    fs::create_dir_all(out.join("raw")).map_err(|e| format!("mkdir {}: {e}", out.display()))?;
    fs::create_dir_all(&args.dir).map_err(|e| format!("mkdir {}: {e}", args.dir.display()))?;
    match util::fstype_of(&args.dir) {
        Some(t) if t == "ext4" => {}
        other => log(&format!(
            "WARNING: {} is on {}, not ext4: the ext4 baseline is not what it claims",
            args.dir.display(),
            other.as_deref().unwrap_or("an unknown file system")
        )),
    }
    let (date, time) = util::local_date_time();
    let mut info = report::RunInfo {
        started: format!("{date} {}:{}", &time[..2], &time[2..4]),
        unix_time: util::unix_time(),
        quick: args.quick,
        repeats: args.repeats,
        file_size,
        runtime_s,
        meta_files,
        fio_version,
        kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
        cpu: first_line_of("/proc/cpuinfo", "model name").unwrap_or_else(|| "unknown CPU".into()),
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        dir: args.dir.display().to_string(),
        strata_bin: args.strata.display().to_string(),
        remount: args.remount,
        git_rev: git_rev(),
        duration_s: 0.0,
        failures: Vec::new(),
    };
    log(&format!(
        "{} · {} file · {} s per job · {} repeat(s) · results in {}",
        info.fio_version,
        if args.quick { "256 MiB" } else { "1 GiB" },
        runtime_s,
        args.repeats,
        out.display()
    ));

    let mut res = Results::new(wl, args.systems.clone());

    // Set up every system; the guards tear them down on every way out of this function.
    let opts = SetupOptions {
        dir: &args.dir,
        strata_bin: &args.strata,
        image_size: &args.image_size,
        cache_size: args.cache_size.as_deref(),
        log_dir: &out.join("raw"),
    };
    let mut systems: Vec<System> = Vec::new();
    for &kind in &args.systems {
        log(&format!("setting up {}", kind.name()));
        match System::setup(kind, &opts) {
            Ok(s) => {
                log(&format!("{} ready at {}", kind.name(), s.tree().display()));
                systems.push(s);
            }
            Err(e) => {
                log(&format!("{} setup failed: {e}", kind.name()));
                info.failures
                    .push((kind.name().to_string(), format!("setup failed: {e}")));
            }
        }
        if util::interrupted() {
            break;
        }
    }
    if systems.is_empty() {
        return Err("no system could be set up".into());
    }

    let outcome = run_workloads(
        args,
        &mut res,
        &mut systems,
        &out,
        file_size,
        runtime_s,
        meta_files,
        any_fio,
        any_meta,
    );
    for s in &systems {
        if let Some(why) = &s.failed {
            info.failures.push((s.name().to_string(), why.clone()));
        }
    }
    if let Err(e) = &outcome {
        info.failures.push(("run".into(), e.clone()));
    }

    log("tearing down");
    drop(systems);
    let _ = fs::remove_dir(&args.dir); // only if empty: nothing of anyone else's goes

    info.duration_s = t0.elapsed().as_secs_f64();
    write_reports(&res, &info, &out)?;
    println!("\n{}", report::table(&res));
    println!("results: {}", out.join("results.md").display());
    outcome?;
    Ok(info.failures.is_empty() && !res.has_errors())
}

fn write_reports(res: &Results, info: &report::RunInfo, out: &Path) -> Res<()> {
    let json =
        serde_json::to_string_pretty(&report::to_json(res, info)).map_err(|e| e.to_string())?;
    let w = |name: &str, text: String| {
        let p = out.join(name);
        fs::write(&p, text).map_err(|e| format!("write {}: {e}", p.display()))
    };
    w("results.json", json + "\n")?;
    w("results.md", report::markdown(res, info))?;
    w("ratios.svg", report::svg(res))?;
    Ok(())
}

/// The error noted for a workload skipped because its system had failed (the failure itself is
/// reported once, under the system's name).
fn skipped(sys: &System) -> String {
    format!("skipped: {} failed earlier", sys.name())
}

#[allow(clippy::too_many_arguments)]
fn run_workloads(
    args: &Args,
    res: &mut Results,
    systems: &mut [System],
    out: &Path,
    file_size: u64,
    runtime_s: u64,
    meta_files: usize,
    any_fio: bool,
    any_meta: bool,
) -> Res<()> {
    let fio_jobs: Vec<(&'static str, String, workloads::FioJob, Unit)> = res
        .workloads
        .iter()
        .filter_map(|w| match w.kind {
            Kind::Fio(j) => Some((w.id, w.label.clone(), j, w.unit)),
            Kind::Meta(_) => None,
        })
        .collect();
    let meta_selected: Vec<(&'static str, MetaPhase)> = res
        .workloads
        .iter()
        .filter_map(|w| match w.kind {
            Kind::Meta(p) => Some((w.id, p)),
            Kind::Fio(_) => None,
        })
        .collect();

    for rep in 0..args.repeats {
        let tag = format!("[{}/{}]", rep + 1, args.repeats);
        if any_fio {
            // A fresh file per repeat, so every repeat's reads see the same unfragmented layout.
            for sys in systems.iter_mut() {
                if sys.check_alive().is_err() {
                    continue;
                }
                let file = sys.tree().join("fio.dat");
                log(&format!(
                    "{tag} {}: laying out {} MiB",
                    sys.name(),
                    file_size >> 20
                ));
                let t = Instant::now();
                let r = util::with_timeout("layout", Duration::from_secs(600), move || {
                    fio::lay_out(&file, file_size)
                });
                util::check_interrupted()?;
                match r {
                    Ok(()) => log(&format!(
                        "{tag} {}: laid out in {:.2} s",
                        sys.name(),
                        t.elapsed().as_secs_f64()
                    )),
                    Err(e) => {
                        log(&format!("{tag} {}: {e}", sys.name()));
                        sys.mark_failed(&format!("laying out the fio file: {e}"));
                    }
                }
            }
            for (id, label, job, unit) in &fio_jobs {
                for sys in systems.iter_mut() {
                    if sys.check_alive().is_err() {
                        res.cell_mut(id, sys.kind).errors.push(skipped(sys));
                        continue;
                    }
                    if let Err(e) = sys.drop_caches(args.remount) {
                        log(&format!("{tag} {}: {e}", sys.name()));
                        res.cell_mut(id, sys.kind).errors.push(e);
                        continue;
                    }
                    let raw = fio::raw_path(out, sys.name(), id, rep);
                    fs::create_dir_all(raw.parent().expect("has a parent"))
                        .map_err(|e| e.to_string())?;
                    let r = fio::run(job, &sys.tree().join("fio.dat"), file_size, runtime_s, &raw);
                    util::check_interrupted()?;
                    let cell = res.cell_mut(id, sys.kind);
                    match r {
                        Ok(s) => {
                            let v = if *unit == Unit::MibPerSec {
                                s.mib_per_sec
                            } else {
                                s.iops
                            };
                            log(&format!(
                                "{tag} {:<7} {label}: {} {}{}",
                                sys.name(),
                                workloads::group_thousands(v),
                                unit.name(),
                                s.clat_p50_us
                                    .map(|l| format!(", p50 {l:.0} µs"))
                                    .unwrap_or_default()
                            ));
                            cell.samples.push(v);
                            if let Some(l) = s.clat_p50_us {
                                cell.clat_p50_us.push(l);
                            }
                            cell.raw
                                .push(raw.strip_prefix(out).unwrap_or(&raw).display().to_string());
                        }
                        Err(e) => {
                            log(&format!("{tag} {} {label}: {e}", sys.name()));
                            cell.errors.push(e.clone());
                            // A hung job means a hung file system: stop using it.
                            if e.contains("timed out") {
                                sys.mark_failed(&e);
                            }
                        }
                    }
                }
            }
            for sys in systems.iter_mut() {
                if sys.check_alive().is_ok() {
                    let _ = fs::remove_file(sys.tree().join("fio.dat"));
                }
            }
        }
        if any_meta {
            for sys in systems.iter_mut() {
                if sys.check_alive().is_err() {
                    for (id, _) in &meta_selected {
                        res.cell_mut(id, sys.kind).errors.push(skipped(sys));
                    }
                    continue;
                }
                if let Err(e) = sys.drop_caches(args.remount) {
                    log(&format!("{tag} {}: {e}", sys.name()));
                    for (id, _) in &meta_selected {
                        res.cell_mut(id, sys.kind).errors.push(e.clone());
                    }
                    continue;
                }
                let dir = sys.tree().join(format!("meta-r{}", rep + 1));
                let r = util::with_timeout("metadata", Duration::from_secs(900), move || {
                    meta::run(&dir, meta_files)
                });
                util::check_interrupted()?;
                match r {
                    Ok(t) => {
                        log(&format!(
                            "{tag} {:<7} {} files: create {:.3} s, stat {:.4} s, unlink {:.3} s",
                            sys.name(),
                            workloads::group_thousands(meta_files as f64),
                            t.create_s,
                            t.stat_s,
                            t.unlink_s
                        ));
                        for (id, phase) in &meta_selected {
                            let v = match phase {
                                MetaPhase::Create => t.create_s,
                                MetaPhase::Stat => t.stat_s,
                                MetaPhase::Unlink => t.unlink_s,
                            };
                            res.cell_mut(id, sys.kind).samples.push(v);
                        }
                    }
                    Err(e) => {
                        log(&format!("{tag} {} metadata: {e}", sys.name()));
                        for (id, _) in &meta_selected {
                            res.cell_mut(id, sys.kind).errors.push(e.clone());
                        }
                        if e.contains("timed out") {
                            sys.mark_failed(&e);
                        }
                    }
                }
            }
        }
    }
    Ok(())
}
