//! The run of `strata-bench`: set every system up, prepare the inputs the selected steps
//! need, run the steps of [`suite::all`] on every system for each repeat, tear everything
//! down (also after an error or Ctrl-C) and write the reports.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::cli::{self, Args};
use crate::inputs::{self, Input, TarSpec};
use crate::report::{self, RunInfo};
use crate::results::{Results, Sink};
use crate::suite::{self, Ctx, Run, Step};
use crate::systems::{Parent, SetupOptions, System};
use crate::workloads::{Config, Detail, Workload};
use crate::{fio, fmt, host, interrupt, mounts, process, Res};

use crate::progress::log;

/// Runs everything. Ok(true): every workload ran on every system without error.
pub fn run(args: &Args) -> Res<bool> {
    let t0 = crate::progress::start();
    if !host::is_root() {
        return Err("must run as root (it mounts file systems and drops caches)".into());
    }
    let cfg = Config::new(args.quick);
    let steps = suite::select(suite::all(&cfg), &args.only);
    if steps.is_empty() {
        return Err(format!(
            "--only {:?} selects no workload",
            args.only.join(",")
        ));
    }
    let mut res = Results::new(suite::workloads(&steps), args.systems.clone());
    let uses_fio = res
        .workloads
        .iter()
        .any(|w| matches!(w.detail, Detail::Fio(_)));
    let fio_version = match fio::version() {
        Err(e) if uses_fio => return Err(e),
        v => v.unwrap_or_else(|_| "fio not used".into()),
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
    let mut info = RunInfo::new(args, &cfg, fio_version);
    log(&format!(
        "{} · {} fio file · {} s per job · {} repeat(s) · results in {}",
        info.fio_version,
        fmt::fmt_size(cfg.file_size),
        info.runtime_s,
        info.repeats,
        out.display()
    ));

    let tars = TarsDir(args.dir.join("tars"));
    tars.generate(&steps)?;

    // Every system; their guards tear them down on every way out of this function.
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

    let base = Ctx {
        cfg: &cfg,
        runtime_s: info.runtime_s,
        out: &out,
        tars: &tars.0,
        remount: info.remount,
        rep: 0,
        tag: String::new(),
    };
    let outcome = run_steps(&base, info.repeats, &steps, &mut res, &mut systems);
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
    report::write_all(&res, &info, &out)?;
    println!("\n{}", report::table(&res));
    println!(
        "results: {} ({:.0} s)",
        out.join("results.md").display(),
        info.duration_s
    );
    outcome?;
    Ok(info.failures.is_empty() && !res.has_errors())
}

/// The default results directory: bench/results/<date>, or <date>-<time> when that exists.
fn default_out() -> PathBuf {
    cli::default_results_dir("")
}

/// The tars directory, outside every system (on the same disk); deleted at the end, whatever
/// happened.
struct TarsDir(PathBuf);

impl TarsDir {
    /// Generate every tar the steps need, each once.
    fn generate(&self, steps: &[Step]) -> Res<()> {
        let specs: Vec<TarSpec> = unique(steps, |i| match i {
            Input::Tar(t) | Input::LowerTree { tar: t, .. } => Some(*t),
            Input::LowerFile { .. } => None,
        });
        if specs.is_empty() {
            return Ok(());
        }
        let t = Instant::now();
        let _ = fs::remove_dir_all(&self.0);
        fs::create_dir_all(&self.0).map_err(|e| format!("mkdir {}: {e}", self.0.display()))?;
        for spec in specs {
            spec.write(&self.0)?;
        }
        log(&format!(
            "tars generated in {:.1} s",
            t.elapsed().as_secs_f64()
        ));
        Ok(())
    }
}

impl Drop for TarsDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.0) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!("strata-bench: cannot remove {}: {e}", self.0.display());
            }
        }
    }
}

/// What `pick` takes from the steps' inputs, each once, in step order.
fn unique<T: PartialEq>(steps: &[Step], pick: impl Fn(&Input) -> Option<T>) -> Vec<T> {
    let mut v: Vec<T> = Vec::new();
    for t in steps.iter().flat_map(|s| &s.needs).filter_map(pick) {
        if !v.contains(&t) {
            v.push(t);
        }
    }
    v
}

/// Lay out the lower layer's files and extract its trees on every system, then freeze the
/// lower layers.
fn prepare_lowers(
    files: &[(&str, u64)],
    trees: &[(&'static str, TarSpec)],
    tars: &Path,
    systems: &mut [System],
) -> Res<()> {
    for sys in systems.iter_mut() {
        for &(name, size) in files {
            if sys.check_alive().is_err() {
                break;
            }
            let file = sys.lower().join(name);
            let t = Instant::now();
            let r = process::with_timeout("layout", Duration::from_secs(900), move || {
                inputs::lay_out(&file, size)
            });
            interrupt::check_interrupted()?;
            match r {
                Ok(()) => log(&format!(
                    "{}: lower layer: {name} ({}) laid out in {:.2} s",
                    sys.name(),
                    fmt::fmt_size(size),
                    t.elapsed().as_secs_f64()
                )),
                Err(e) => {
                    log(&format!("{}: {e}", sys.name()));
                    sys.mark_failed(&format!("laying out {name}: {e}"));
                }
            }
        }
        for &(dir, tar) in trees {
            if sys.check_alive().is_err() {
                break;
            }
            let (tar, dest) = (tar.path(tars), sys.lower().join(dir));
            let t = Instant::now();
            let r = inputs::extract(&tar, &dest);
            interrupt::check_interrupted()?;
            match r {
                Ok(()) => log(&format!(
                    "{}: lower layer: {} extracted into {dir}/ in {:.2} s",
                    sys.name(),
                    tar.file_name().unwrap_or_default().to_string_lossy(),
                    t.elapsed().as_secs_f64()
                )),
                Err(e) => {
                    log(&format!("{}: {e}", sys.name()));
                    sys.mark_failed(&format!("extracting into {dir}/: {e}"));
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

/// Every repeat: the container steps in one container per system, then the system steps;
/// after the last repeat, the once-per-run steps. Err only when interrupted.
fn run_steps(
    base: &Ctx,
    repeats: usize,
    steps: &[Step],
    res: &mut Results,
    systems: &mut [System],
) -> Res<()> {
    let lower_files = unique(steps, |i| match i {
        Input::LowerFile { name, size } => Some((*name, *size)),
        _ => None,
    });
    let lower_trees = unique(steps, |i| match i {
        Input::LowerTree { dir, tar } => Some((*dir, *tar)),
        _ => None,
    });
    if !lower_files.is_empty() || !lower_trees.is_empty() {
        prepare_lowers(&lower_files, &lower_trees, base.tars, systems)?;
    }
    let phase = |p: u8| -> Vec<&Step> { steps.iter().filter(|s| s.run.phase() == p).collect() };
    let (in_container, on_system, once) = (phase(0), phase(1), phase(2));

    for rep in 0..repeats {
        let ctx = Ctx {
            rep,
            tag: format!("[{}/{repeats}]", rep + 1),
            ..*base
        };
        if !in_container.is_empty() {
            let cname = format!("r{}", rep + 1);
            let trees = make_containers(&ctx, &cname, &in_container, res, systems);
            for step in &in_container {
                for (sys, tree) in systems.iter_mut().zip(&trees) {
                    if let Some(tree) = tree {
                        run_step(&ctx, step, sys, Some(tree), res)?;
                    }
                }
            }
            for sys in systems.iter_mut() {
                if let Err(e) = sys.drop_container(&cname) {
                    ctx.log(sys.name(), &e);
                    sys.mark_failed(&e);
                }
            }
        }
        for step in &on_system {
            for sys in systems.iter_mut() {
                run_step(&ctx, step, sys, None, res)?;
            }
        }
    }
    let ctx = Ctx {
        rep: repeats - 1,
        tag: String::new(),
        ..*base
    };
    for step in &once {
        for sys in systems.iter_mut() {
            run_step(&ctx, step, sys, None, res)?;
        }
    }
    Ok(())
}

/// One container per system for this repeat's container steps: a fresh upper layer
/// (overlays) or clone (Strata) over the lower layer. None where it could not be made (the
/// error is recorded for those steps).
fn make_containers(
    ctx: &Ctx,
    cname: &str,
    steps: &[&Step],
    res: &mut Results,
    systems: &mut [System],
) -> Vec<Option<PathBuf>> {
    let mut trees = Vec::new();
    for sys in systems.iter_mut() {
        if sys.check_alive().is_err() {
            trees.push(None);
            continue;
        }
        match sys.container(cname, Parent::Standard) {
            Ok((p, took)) => {
                ctx.log(
                    sys.name(),
                    &format!(
                        "container {cname} at {} ({:.2} ms)",
                        p.display(),
                        took.as_secs_f64() * 1e3
                    ),
                );
                trees.push(Some(p));
            }
            Err(e) => {
                ctx.log(sys.name(), &format!("container: {e}"));
                let e = format!("making a container: {e}");
                let mut sink = res.sink(sys.kind);
                for step in steps {
                    sink.error_all(&step.workloads, &e);
                }
                trees.push(None);
            }
        }
    }
    trees
}

/// Strata's block cache counters (hits, misses), None for other systems or when the daemon
/// does not answer.
fn cache_counters(sys: &System) -> Option<(u64, u64)> {
    let s = sys.strata_client()?.stats().ok()?;
    Some((s.daemon.cache_hits, s.daemon.cache_misses))
}

/// Record, for each of `workloads` that got a sample, the share of blocks the block cache
/// served between the counters `a` and `b`: a Strata figure of a fio row whose file the cache
/// held partly measures the cache, not the device path ext4's O_DIRECT row measures.
fn record_cache_hits(sink: &mut Sink, workloads: &[Workload], a: (u64, u64), b: (u64, u64)) {
    let (hits, misses) = (b.0.saturating_sub(a.0), b.1.saturating_sub(a.1));
    if hits + misses == 0 {
        return;
    }
    let pct = 100.0 * hits as f64 / (hits + misses) as f64;
    for w in workloads {
        if let Some(c) = sink.cell(&w.id) {
            if c.cache_hit_pct.len() < c.samples.len() {
                c.cache_hit_pct.push(pct);
            }
        }
    }
}

/// Run `step` on `sys` (in `tree`, for a container step) and record what it measured; an
/// error is recorded for each of its workloads, and one that timed out retires the system.
fn run_step(
    ctx: &Ctx,
    step: &Step,
    sys: &mut System,
    tree: Option<&Path>,
    res: &mut Results,
) -> Res<()> {
    if step.needs_layers() && !sys.kind.has_layers() {
        return Ok(());
    }
    let mut sink = res.sink(sys.kind);
    if sys.check_alive().is_err() {
        // The failure itself is reported once, under the system's name.
        let e = format!("skipped: {} failed earlier", sys.name());
        sink.error_all(&step.workloads, &e);
        return Ok(());
    }
    let r = match (&step.run, tree) {
        (Run::InContainer(f), Some(tree)) => sys.drop_caches(ctx.remount).and_then(|()| {
            let before = cache_counters(sys);
            let r = f(ctx, tree, &mut sink);
            if let (Some(a), Some(b), true) = (before, cache_counters(sys), r.is_ok()) {
                record_cache_hits(&mut sink, &step.workloads, a, b);
            }
            r
        }),
        (Run::OnSystem(f) | Run::Once(f), None) => f(ctx, sys, &mut sink),
        _ => Err(format!("step {}: no container", step.name)),
    };
    interrupt::check_interrupted()?;
    if let Err(e) = r {
        ctx.log(sys.name(), &format!("{}: {e}", step.name));
        sink.error_all(&step.workloads, &e);
    }
    if let Some(e) = sink.timed_out() {
        // A hung job means a hung file system: stop using it.
        sys.mark_failed(e);
    }
    Ok(())
}
