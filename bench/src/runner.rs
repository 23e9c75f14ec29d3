//! The run of `strata-bench`: set every system up, lay out the lower layers, run the workloads
//! for each repeat, tear everything down and write the reports.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::cli::{self, Args};
use crate::results::{self, Results};
use crate::systems::{Parent, SetupOptions, System};
use crate::workloads::{self, Config, Kind, MetaPhase, Unit};
use crate::Res;
use crate::{fio, layers, memory, meta, report, tarball};
use crate::{host, interrupt, mounts, process};

/// When the run started, for the elapsed time in every log line.
static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

fn log(msg: &str) {
    let t = START.get_or_init(Instant::now).elapsed().as_secs_f64();
    eprintln!("strata-bench [{t:6.1} s]: {msg}");
}

/// The default results directory: bench/results/<date>, or <date>-<time> when that exists.
fn default_out() -> PathBuf {
    let (date, time) = host::local_date_time();
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

/// Deletes the generated tars at the end, whatever happened.
struct TarsDir(PathBuf);

impl Drop for TarsDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.0) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!("strata-bench: cannot remove {}: {e}", self.0.display());
            }
        }
    }
}

/// Which workload families were selected.
#[derive(Debug, Clone, Copy, Default)]
struct Selected {
    fio: bool,
    meta: bool,
    tar: bool,
    first_write: bool,
    memory: bool,
    clone: bool,
}

impl Selected {
    fn of(res: &Results) -> Selected {
        let mut s = Selected::default();
        for w in &res.workloads {
            match w.kind {
                Kind::Fio(_) => s.fio = true,
                Kind::Meta(_) => s.meta = true,
                Kind::Tar(_) => s.tar = true,
                Kind::FirstWrite => s.first_write = true,
                Kind::Memory(_) => s.memory = true,
                Kind::CloneFiles(_) | Kind::CloneDepth(_) => s.clone = true,
            }
        }
        s
    }
}

/// Fixed per run.
struct Plan<'a> {
    args: &'a Args,
    cfg: &'a Config,
    sel: Selected,
    runtime_s: u64,
    out: &'a Path,
    /// The generated tars (tree.tar, files-N.tar).
    tars: &'a Path,
}

const FIO_FILE: &str = "fio.dat";
const IMAGE_FILE: &str = "image.dat";

/// Runs everything. Ok(true): every workload ran on every system without error.
pub fn run(args: &Args) -> Res<bool> {
    let t0 = *START.get_or_init(Instant::now);
    if !host::is_root() {
        return Err("must run as root (it mounts file systems and drops caches)".into());
    }
    let cfg = Config::new(args.quick);
    let runtime_s = args.runtime_s();
    let wl = workloads::select(workloads::all(&cfg), &args.only);
    if wl.is_empty() {
        return Err(format!(
            "--only {:?} selects no workload",
            args.only.join(",")
        ));
    }
    let mut res = Results::new(wl, args.systems.clone());
    let sel = Selected::of(&res);
    let fio_version = if sel.fio {
        fio::version()?
    } else {
        fio::version().unwrap_or_else(|_| "fio not used".into())
    };

    let out = args.out.clone().unwrap_or_else(default_out);
    fs::create_dir_all(out.join("raw")).map_err(|e| format!("mkdir {}: {e}", out.display()))?;
    fs::create_dir_all(&args.dir).map_err(|e| format!("mkdir {}: {e}", args.dir.display()))?;
    match mounts::fstype_of(&args.dir) {
        Some(t) if t == "ext4" => {}
        other => log(&format!(
            "WARNING: {} is on {}, not ext4: the ext4 baseline is not what it claims",
            args.dir.display(),
            other.as_deref().unwrap_or("an unknown file system")
        )),
    }
    let (date, time) = host::local_date_time();
    let mut info = report::RunInfo {
        started: format!("{date} {}:{}", &time[..2], &time[2..4]),
        unix_time: host::unix_time(),
        quick: args.quick,
        repeats: args.repeats(),
        cfg: cfg.clone(),
        runtime_s,
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
        remount: args.remount(),
        git_rev: git_rev(),
        peers: peer_versions(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        duration_s: 0.0,
        failures: Vec::new(),
    };
    log(&format!(
        "{} · {} fio file · {} s per job · {} repeat(s) · results in {}",
        info.fio_version,
        workloads::fmt_size(cfg.file_size),
        runtime_s,
        args.repeats(),
        out.display()
    ));

    // The tars, generated once, outside every system (on the same disk).
    let tars = TarsDir(args.dir.join("tars"));
    if sel.tar || sel.clone {
        let t = Instant::now();
        let _ = fs::remove_dir_all(&tars.0);
        fs::create_dir_all(&tars.0).map_err(|e| format!("mkdir {}: {e}", tars.0.display()))?;
        if sel.tar {
            tarball::write_tree(
                &tars.0.join("tree.tar"),
                cfg.tar_dirs,
                cfg.tar_files_per_dir,
                cfg.tar_bytes,
            )?;
        }
        if sel.clone {
            let mut sizes = cfg.clone_sizes.clone();
            sizes.sort();
            for n in sizes {
                tarball::write_empty_files(&layers::files_tar(&tars.0, n), n)?;
            }
        }
        log(&format!(
            "tars generated in {:.1} s",
            t.elapsed().as_secs_f64()
        ));
    }

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
                log(&format!(
                    "{} ready, lower layer at {}",
                    kind.name(),
                    s.lower().display()
                ));
                systems.push(s);
            }
            Err(e) => {
                log(&format!("{} setup failed: {e}", kind.name()));
                info.failures
                    .push((kind.name().to_string(), format!("setup failed: {e}")));
            }
        }
        if interrupt::interrupted() {
            break;
        }
    }
    if systems.is_empty() {
        return Err("no system could be set up".into());
    }

    let plan = Plan {
        args,
        cfg: &cfg,
        sel,
        runtime_s,
        out: &out,
        tars: &tars.0,
    };
    let outcome = run_workloads(&plan, &mut res, &mut systems);
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
    drop(tars);
    let _ = fs::remove_dir(&args.dir); // only if empty: nothing of anyone else's goes

    info.duration_s = t0.elapsed().as_secs_f64();
    write_reports(&res, &info, &out)?;
    println!("\n{}", report::table(&res));
    println!(
        "results: {} ({:.0} s)",
        out.join("results.md").display(),
        info.duration_s
    );
    outcome?;
    Ok(info.failures.is_empty() && !res.has_errors())
}

/// `fuse-overlayfs --version`'s first line, for the report.
fn peer_versions() -> Vec<String> {
    let mut v = Vec::new();
    if let Ok(o) = process::run_captured(
        Command::new("fuse-overlayfs").arg("--version"),
        Duration::from_secs(10),
    ) {
        if let Some(l) = o
            .stdout
            .lines()
            .chain(o.stderr.lines())
            .find(|l| l.contains("fuse-overlayfs"))
        {
            v.push(l.trim().to_string());
        }
    }
    v
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
    for (name, svg) in report::charts(res, info) {
        w(&name, svg)?;
    }
    Ok(())
}

/// The error noted for a workload skipped because its system had failed (the failure itself is
/// reported once, under the system's name).
fn skipped(sys: &System) -> String {
    format!("skipped: {} failed earlier", sys.name())
}

/// Record an error for every selected workload of `kinds` on `sys`.
fn error_all(res: &mut Results, sys: &System, pred: impl Fn(Kind) -> bool, e: &str) {
    let ids: Vec<String> = res
        .workloads
        .iter()
        .filter(|w| pred(w.kind))
        .map(|w| w.id.clone())
        .collect();
    for id in ids {
        res.cell_mut(&id, sys.kind).errors.push(e.to_string());
    }
}

/// Lay out the lower layer's files on every system, then freeze the lower layers.
fn prepare_lowers(plan: &Plan, systems: &mut [System]) -> Res<()> {
    let mut files: Vec<(&str, u64)> = Vec::new();
    if plan.sel.fio || plan.sel.first_write {
        files.push((FIO_FILE, plan.cfg.file_size));
    }
    if plan.sel.memory {
        files.push((IMAGE_FILE, plan.cfg.image_size));
        files.push((memory::WARMUP_FILE, memory::WARMUP_SIZE));
    }
    for sys in systems.iter_mut() {
        for &(name, size) in &files {
            if sys.check_alive().is_err() {
                break;
            }
            let file = sys.lower().join(name);
            let t = Instant::now();
            let r = process::with_timeout("layout", Duration::from_secs(900), move || {
                fio::lay_out(&file, size)
            });
            interrupt::check_interrupted()?;
            match r {
                Ok(()) => log(&format!(
                    "{}: lower layer: {name} ({}) laid out in {:.2} s",
                    sys.name(),
                    workloads::fmt_size(size),
                    t.elapsed().as_secs_f64()
                )),
                Err(e) => {
                    log(&format!("{}: {e}", sys.name()));
                    sys.mark_failed(&format!("laying out {name}: {e}"));
                }
            }
        }
        if sys.check_alive().is_ok() {
            if let Err(e) = sys.freeze() {
                sys.mark_failed(&e);
            }
        }
    }
    Ok(())
}

fn run_workloads(plan: &Plan, res: &mut Results, systems: &mut [System]) -> Res<()> {
    let args = plan.args;
    let sel = plan.sel;
    if sel.fio || sel.first_write || sel.memory {
        prepare_lowers(plan, systems)?;
    }
    let fio_jobs: Vec<(String, String, workloads::FioJob, Unit)> = res
        .workloads
        .iter()
        .filter_map(|w| match w.kind {
            Kind::Fio(j) => Some((w.id.clone(), w.label.clone(), j, w.unit)),
            _ => None,
        })
        .collect();
    let readers: Vec<usize> = res
        .workloads
        .iter()
        .filter_map(|w| match w.kind {
            Kind::Memory(n) => Some(n),
            _ => None,
        })
        .collect();

    for rep in 0..args.repeats() {
        let tag = format!("[{}/{}]", rep + 1, args.repeats());
        // One container per system for this repeat's fio, metadata and tar workloads:
        // a fresh upper layer (overlays) or clone (Strata) over the lower layer.
        if sel.fio || sel.meta || sel.tar {
            let mut trees: Vec<Option<PathBuf>> = Vec::new();
            let cname = format!("r{}", rep + 1);
            for sys in systems.iter_mut() {
                let t = match sys.check_alive() {
                    Err(_) => None,
                    Ok(()) => match sys.container(&cname, Parent::Standard) {
                        Ok((p, took)) => {
                            log(&format!(
                                "{tag} {}: container {cname} at {} ({:.2} ms)",
                                sys.name(),
                                p.display(),
                                took.as_secs_f64() * 1e3
                            ));
                            Some(p)
                        }
                        Err(e) => {
                            log(&format!("{tag} {}: container: {e}", sys.name()));
                            let e = format!("making a container: {e}");
                            error_all(
                                res,
                                sys,
                                |k| matches!(k, Kind::Fio(_) | Kind::Meta(_) | Kind::Tar(_)),
                                &e,
                            );
                            None
                        }
                    },
                };
                trees.push(t);
            }
            run_fio(plan, res, systems, &trees, &fio_jobs, rep, &tag)?;
            if sel.meta {
                run_meta(plan, res, systems, &trees, rep, &tag)?;
            }
            if sel.tar {
                run_tar(plan, res, systems, &trees, rep, &tag)?;
            }
            for sys in systems.iter_mut() {
                if let Err(e) = sys.drop_container(&cname) {
                    log(&format!("{tag} {}: {e}", sys.name()));
                    sys.mark_failed(&e);
                }
            }
        }
        if sel.first_write {
            run_first_write(plan, res, systems, rep, &tag)?;
        }
        for &n in &readers {
            for sys in systems.iter_mut() {
                let id = format!("mem-readers-{n}");
                if sys.check_alive().is_err() {
                    res.cell_mut(&id, sys.kind).errors.push(skipped(sys));
                    continue;
                }
                let r = memory::measure(
                    sys,
                    n,
                    &format!("m{}-{n}", rep + 1),
                    IMAGE_FILE,
                    plan.cfg.image_size,
                    args.remount(),
                );
                interrupt::check_interrupted()?;
                let cell = res.cell_mut(&id, sys.kind);
                match r {
                    Ok(m) => {
                        log(&format!(
                            "{tag} {:<14} {n} reader(s): page cache +{:.0} MiB, daemons +{:.0} MiB = {:.2}× one copy",
                            sys.name(),
                            m.page_cache_mib,
                            m.daemon_rss_mib,
                            m.total() / (plan.cfg.image_size >> 20) as f64
                        ));
                        cell.samples.push(m.total());
                        cell.mem_parts.push((m.page_cache_mib, m.daemon_rss_mib));
                    }
                    Err(e) => {
                        log(&format!("{tag} {} memory, {n} readers: {e}", sys.name()));
                        cell.errors.push(e.clone());
                        if e.contains("timed out") {
                            sys.mark_failed(&e);
                        }
                    }
                }
            }
        }
    }
    if sel.clone {
        run_clone(plan, res, systems)?;
    }
    Ok(())
}

fn run_fio(
    plan: &Plan,
    res: &mut Results,
    systems: &mut [System],
    trees: &[Option<PathBuf>],
    fio_jobs: &[(String, String, workloads::FioJob, Unit)],
    rep: usize,
    tag: &str,
) -> Res<()> {
    for (id, label, job, unit) in fio_jobs {
        for (sys, tree) in systems.iter_mut().zip(trees) {
            let Some(tree) = tree else { continue };
            if sys.check_alive().is_err() {
                res.cell_mut(id, sys.kind).errors.push(skipped(sys));
                continue;
            }
            if let Err(e) = sys.drop_caches(plan.args.remount()) {
                log(&format!("{tag} {}: {e}", sys.name()));
                res.cell_mut(id, sys.kind).errors.push(e);
                continue;
            }
            let raw = fio::raw_path(plan.out, sys.name(), id, rep);
            fs::create_dir_all(raw.parent().expect("has a parent")).map_err(|e| e.to_string())?;
            let r = fio::run(
                job,
                &tree.join(FIO_FILE),
                plan.cfg.file_size,
                plan.runtime_s,
                &raw,
            );
            interrupt::check_interrupted()?;
            let cell = res.cell_mut(id, sys.kind);
            match r {
                Ok(s) => {
                    let v = if *unit == Unit::MibPerSec {
                        s.mib_per_sec
                    } else {
                        s.iops
                    };
                    log(&format!(
                        "{tag} {:<14} {label}: {} {}{}",
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
                    cell.raw.push(
                        raw.strip_prefix(plan.out)
                            .unwrap_or(&raw)
                            .display()
                            .to_string(),
                    );
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
    Ok(())
}

fn run_meta(
    plan: &Plan,
    res: &mut Results,
    systems: &mut [System],
    trees: &[Option<PathBuf>],
    rep: usize,
    tag: &str,
) -> Res<()> {
    let meta_files = plan.cfg.meta_files;
    let is_meta = |k: Kind| matches!(k, Kind::Meta(_));
    for (sys, tree) in systems.iter_mut().zip(trees) {
        let Some(tree) = tree else { continue };
        if sys.check_alive().is_err() {
            let e = skipped(sys);
            error_all(res, sys, is_meta, &e);
            continue;
        }
        if let Err(e) = sys.drop_caches(plan.args.remount()) {
            log(&format!("{tag} {}: {e}", sys.name()));
            error_all(res, sys, is_meta, &e);
            continue;
        }
        let dir = tree.join(format!("meta-r{}", rep + 1));
        let r = process::with_timeout("metadata", Duration::from_secs(900), move || {
            meta::run(&dir, meta_files)
        });
        interrupt::check_interrupted()?;
        match r {
            Ok(t) => {
                log(&format!(
                    "{tag} {:<14} {} files: create {:.3} s, stat {:.4} s, unlink {:.3} s",
                    sys.name(),
                    workloads::group_thousands(meta_files as f64),
                    t.create_s,
                    t.stat_s,
                    t.unlink_s
                ));
                for (id, phase) in [
                    ("meta-create", MetaPhase::Create),
                    ("meta-stat", MetaPhase::Stat),
                    ("meta-unlink", MetaPhase::Unlink),
                ] {
                    if !res.has_workload(id) {
                        continue;
                    }
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
                error_all(res, sys, is_meta, &e);
                if e.contains("timed out") {
                    sys.mark_failed(&e);
                }
            }
        }
    }
    Ok(())
}

fn run_tar(
    plan: &Plan,
    res: &mut Results,
    systems: &mut [System],
    trees: &[Option<PathBuf>],
    rep: usize,
    tag: &str,
) -> Res<()> {
    let tar = plan.tars.join("tree.tar");
    let is_tar = |k: Kind| matches!(k, Kind::Tar(_));
    let timeout = Duration::from_secs(900);
    for (sys, tree) in systems.iter_mut().zip(trees) {
        let Some(tree) = tree else { continue };
        if sys.check_alive().is_err() {
            let e = skipped(sys);
            error_all(res, sys, is_tar, &e);
            continue;
        }
        if let Err(e) = sys.drop_caches(plan.args.remount()) {
            log(&format!("{tag} {}: {e}", sys.name()));
            error_all(res, sys, is_tar, &e);
            continue;
        }
        let dir = tree.join(format!("tar-r{}", rep + 1));
        let x = meta::tar_extract(&tar, &dir, timeout);
        interrupt::check_interrupted()?;
        let x = match x {
            Ok(s) => s,
            Err(e) => {
                log(&format!("{tag} {} tar -x: {e}", sys.name()));
                error_all(res, sys, is_tar, &e);
                if e.contains("timed out") {
                    sys.mark_failed(&e);
                }
                continue;
            }
        };
        let rm = meta::tar_remove(&dir, timeout);
        interrupt::check_interrupted()?;
        if res.has_workload("tar-extract") {
            res.cell_mut("tar-extract", sys.kind)
                .samples
                .push(x.total_s);
        }
        match rm {
            Ok(r) => {
                log(&format!(
                    "{tag} {:<14} tar -x {:.3} s, rm -rf {:.3} s (each with sync: {:.3} s, {:.3} s of that)",
                    sys.name(),
                    x.total_s,
                    r.total_s,
                    x.sync_s,
                    r.sync_s
                ));
                if res.has_workload("tar-rm") {
                    res.cell_mut("tar-rm", sys.kind).samples.push(r.total_s);
                }
            }
            Err(e) => {
                log(&format!("{tag} {} rm -rf: {e}", sys.name()));
                if res.has_workload("tar-rm") {
                    res.cell_mut("tar-rm", sys.kind).errors.push(e.clone());
                }
                if e.contains("timed out") {
                    sys.mark_failed(&e);
                }
            }
        }
    }
    Ok(())
}

fn run_first_write(
    plan: &Plan,
    res: &mut Results,
    systems: &mut [System],
    rep: usize,
    tag: &str,
) -> Res<()> {
    let id = "first-write";
    let cname = format!("fw{}", rep + 1);
    for sys in systems.iter_mut() {
        if sys.check_alive().is_err() {
            res.cell_mut(id, sys.kind).errors.push(skipped(sys));
            continue;
        }
        let r = (|| {
            let (tree, _) = sys.container(&cname, Parent::Standard)?;
            sys.drop_caches(plan.args.remount())?;
            let file = tree.join(FIO_FILE);
            process::with_timeout("first write", Duration::from_secs(300), move || {
                layers::first_write(&file)
            })
        })();
        let dropped = sys.drop_container(&cname);
        interrupt::check_interrupted()?;
        let cell = res.cell_mut(id, sys.kind);
        match r {
            Ok(ms) => {
                log(&format!(
                    "{tag} {:<14} first 4 KiB write + fsync to the inherited {}: {ms:.2} ms",
                    sys.name(),
                    workloads::fmt_size(plan.cfg.file_size)
                ));
                cell.samples.push(ms);
            }
            Err(e) => {
                log(&format!("{tag} {} first write: {e}", sys.name()));
                cell.errors.push(e.clone());
                if e.contains("timed out") {
                    sys.mark_failed(&e);
                }
            }
        }
        if let Err(e) = dropped {
            log(&format!("{tag} {}: {e}", sys.name()));
            sys.mark_failed(&e);
        }
    }
    Ok(())
}

fn run_clone(plan: &Plan, res: &mut Results, systems: &mut [System]) -> Res<()> {
    let sizes: Vec<usize> = res
        .workloads
        .iter()
        .filter_map(|w| match w.kind {
            Kind::CloneFiles(n) => Some(n),
            _ => None,
        })
        .collect();
    let depths: Vec<usize> = res
        .workloads
        .iter()
        .filter_map(|w| match w.kind {
            Kind::CloneDepth(d) => Some(d),
            _ => None,
        })
        .collect();
    let id_of = |c: layers::Case| match c {
        layers::Case::Files(n) => format!("clone-files-{n}"),
        layers::Case::Depth(d) => format!("clone-depth-{d}"),
    };
    for sys in systems.iter_mut() {
        if !sys.kind.has_layers() {
            continue;
        }
        if sys.check_alive().is_err() {
            let e = skipped(sys);
            error_all(
                res,
                sys,
                |k| matches!(k, Kind::CloneFiles(_) | Kind::CloneDepth(_)),
                &e,
            );
            continue;
        }
        let r = layers::clone_times(sys, plan.tars, &sizes, &depths, plan.cfg.clone_reps, &|m| {
            log(m)
        });
        interrupt::check_interrupted()?;
        match r {
            Ok(cases) => {
                for (case, r) in cases {
                    let id = id_of(case);
                    match r {
                        Ok(times) => {
                            let s = results::summarize(&times).expect("some times");
                            log(&format!(
                                "{:<14} {id}: median {:.3} ms ({:.3}–{:.3}, {} clones)",
                                sys.name(),
                                s.median,
                                s.min,
                                s.max,
                                s.n
                            ));
                            res.cell_mut(&id, sys.kind).samples.extend(times);
                        }
                        Err(e) => {
                            log(&format!("{} {id}: {e}", sys.name()));
                            res.cell_mut(&id, sys.kind).errors.push(e);
                        }
                    }
                }
            }
            Err(e) => {
                log(&format!("{} clone: {e}", sys.name()));
                error_all(
                    res,
                    sys,
                    |k| matches!(k, Kind::CloneFiles(_) | Kind::CloneDepth(_)),
                    &e,
                );
            }
        }
    }
    Ok(())
}
