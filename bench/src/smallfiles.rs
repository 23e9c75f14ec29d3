//! Small-file workloads, beside the buffered ones ([`crate::buffered`], same group): open and
//! read of a tree of 1–8 KiB files (own and inherited), loose objects written the way git
//! writes them, an interpreter starting from a Python standard library in the lower layer,
//! and `tar -x` of that library into the container.

use std::collections::HashSet;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::buffered::{guarded, record, OWN_GOAL};
use crate::fmt::group_thousands;
use crate::inputs::{Input, SmallTree, TarSpec, PY_BIN};
use crate::meta::{durable, Timed};
use crate::rng::XorShift;
use crate::suite::{Run, Step};
use crate::workloads::{Config, Goal, Group, Unit, Workload};
use crate::{process, Res};

/// Where the small-file tree is in every system's lower layer.
pub const SMALL_DIR: &str = "small";
/// `PYTHONHOME` in the lower layer: the standard library is `py/lib/python3.11`.
pub const PY_HOME: &str = "py";

/// What the interpreter imports: about 190 modules, every one from the copy.
pub const PY_IMPORTS: &str = "import json, email.parser, http.client, xml.etree.ElementTree, \
                              asyncio, decimal, argparse, logging, unittest";

/// The steps, in run order.
pub fn steps(cfg: &Config) -> Vec<Step> {
    vec![read_step(cfg), git_step(cfg), python_step(cfg), tar_step()]
}

fn workload(id: &str, label: String, unit: Unit) -> Workload {
    Workload::new(id, label, Group::Buffered, unit)
}

const FILES: Unit = Unit::Rate("files/s");

/// open + read + close of every file of a [`SmallTree`], hot (a first pass untimed): one the
/// container writes, and the one in the lower layer. Files per second.
pub fn read_step(cfg: &Config) -> Step {
    let n = cfg.buffered.small_files;
    let files = group_thousands(n as f64);
    Step {
        name: "small-file reads".into(),
        workloads: vec![
            workload(
                "buf-smallfiles-read-own",
                format!("open+read {files} small files, own"),
                FILES,
            )
            .goal(OWN_GOAL),
            workload(
                "buf-smallfiles-read-inherited",
                format!("open+read {files} small files, inherited"),
                FILES,
            ),
        ],
        needs: vec![Input::LowerTree {
            dir: SMALL_DIR,
            tar: TarSpec::SmallFiles(n),
        }],
        run: Run::InContainer(Box::new(move |ctx, tree, sink| {
            let own = tree.join(format!("buf-small-r{}", ctx.rep + 1));
            for (id, dir, write) in [
                ("buf-smallfiles-read-own", own.clone(), true),
                ("buf-smallfiles-read-inherited", tree.join(SMALL_DIR), false),
            ] {
                if sink.wants(id) {
                    let r = guarded("small files", move || {
                        let t = SmallTree::new(n);
                        if write {
                            write_tree(&t, &dir)?;
                        }
                        read_tree(&t, &dir)?;
                        read_tree(&t, &dir)
                    });
                    record(ctx, sink, id, r, FILES)?;
                }
            }
            let _ = fs::remove_dir_all(&own);
            Ok(())
        })),
    }
}

/// Write `t` below `dir` (made fresh), then make it durable.
pub fn write_tree(t: &SmallTree, dir: &Path) -> Res<()> {
    let _ = fs::remove_dir_all(dir);
    for d in t.dirs() {
        let p = dir.join(d);
        fs::create_dir_all(&p).map_err(|e| format!("mkdir {}: {e}", p.display()))?;
    }
    for (i, (name, _)) in t.files.iter().enumerate() {
        let p = dir.join(name);
        fs::write(&p, t.bytes(i)).map_err(|e| format!("write {}: {e}", p.display()))?;
    }
    durable(dir)
}

/// Open, read to the end (16 KiB reads, as `cat` would do: the data, then end of file) and
/// close every file of `t` below `dir`: files per second. Checks the bytes read.
pub fn read_tree(t: &SmallTree, dir: &Path) -> Res<f64> {
    let mut buf = vec![0u8; 16 << 10];
    let mut bytes = 0u64;
    let start = Instant::now();
    for (name, _) in &t.files {
        let p = dir.join(name);
        let mut f = fs::File::open(&p).map_err(|e| format!("open {}: {e}", p.display()))?;
        loop {
            match std::io::Read::read(&mut f, &mut buf) {
                Ok(0) => break,
                Ok(k) => bytes += k as u64,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("read {}: {e}", p.display())),
            }
        }
    }
    let rate = t.files.len() as f64 / start.elapsed().as_secs_f64();
    if bytes != t.total() {
        return Err(format!(
            "read {bytes} bytes below {}, expected {}",
            dir.display(),
            t.total()
        ));
    }
    Ok(rate)
}

/// Loose objects as git writes them: 200 B–4 KiB each into 256 fan-out directories
/// (`00`…`ff`, made when first needed), each written to a temporary file in its directory,
/// closed and renamed into place; then `sync`. Files per second, durable.
pub fn git_step(cfg: &Config) -> Step {
    let n = cfg.buffered.git_objects;
    Step {
        name: "git objects".into(),
        workloads: vec![workload(
            "buf-git-objects-own",
            format!(
                "{} git loose objects (tmp + rename) + sync",
                group_thousands(n as f64)
            ),
            FILES,
        )
        .goal(OWN_GOAL)],
        needs: Vec::new(),
        run: Run::InContainer(Box::new(move |ctx, tree, sink| {
            let dir = tree.join(format!("buf-git-r{}", ctx.rep + 1));
            let d = dir.clone();
            let r = guarded("git objects", move || git_objects(&d, n));
            let _ = fs::remove_dir_all(&dir);
            if let Ok(t) = &r {
                ctx.log(
                    sink.system().name(),
                    &format!(
                        "git objects: {:.3} s, sync {:.3} s of that",
                        t.total_s, t.sync_s
                    ),
                );
            }
            let rate = r.map(|t| n as f64 / t.total_s);
            record(ctx, sink, "buf-git-objects-own", rate, FILES)
        })),
    }
}

/// Write `n` loose objects below `dir/objects` (made fresh, untimed), then make them durable:
/// the seconds it took, and how much of that the durability step took.
pub fn git_objects(dir: &Path, n: usize) -> Res<Timed> {
    let _ = fs::remove_dir_all(dir);
    let objects = dir.join("objects");
    fs::create_dir_all(&objects).map_err(|e| format!("mkdir {}: {e}", objects.display()))?;
    let mut data = vec![0u8; 4096 + 4096];
    XorShift::new(0x617_0B1EC7).fill(&mut data);
    let mut rng = XorShift::new(0xC0FF_EE15_600D_CAFE);
    let mut made = HashSet::new();
    let t = Instant::now();
    for i in 0..n {
        let (hi, lo) = (rng.next_u64(), rng.next_u64());
        let name = format!("{hi:016x}{lo:016x}{:08x}", i as u32);
        let size = 200 + (rng.next_u64() % (4096 - 200 + 1)) as usize;
        let off = (rng.next_u64() % 4096) as usize;
        let sub = objects.join(&name[..2]);
        if made.insert(name[..2].to_string()) {
            match fs::create_dir(&sub) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(format!("mkdir {}: {e}", sub.display())),
            }
        }
        let tmp = sub.join(format!("tmp_obj_{i:06}"));
        fs::write(&tmp, &data[off..off + size])
            .map_err(|e| format!("write {}: {e}", tmp.display()))?;
        let dest = sub.join(&name[2..]);
        fs::rename(&tmp, &dest).map_err(|e| format!("rename to {}: {e}", dest.display()))?;
    }
    let ts = Instant::now();
    durable(dir)?;
    Ok(Timed {
        total_s: t.elapsed().as_secs_f64(),
        sync_s: ts.elapsed().as_secs_f64(),
    })
}

/// `python3 -S -c 'import json, …'` with `PYTHONHOME` on the standard library in the lower
/// layer (`PYTHONDONTWRITEBYTECODE=1`: it reads the `.pyc` files there, writes nothing), run in
/// the container's root: the first start after the caches were dropped, then the median of
/// `python_runs` more. Seconds. Checks that every module came from the copy.
pub fn python_step(cfg: &Config) -> Step {
    let runs = cfg.buffered.python_runs;
    let what = "python3 start, ~190 modules";
    Step {
        name: "interpreter start".into(),
        workloads: vec![
            workload(
                "buf-python-start-cold",
                format!("{what}, first"),
                Unit::Seconds,
            ),
            workload("buf-python-start", format!("{what}, warm"), Unit::Seconds),
        ],
        needs: vec![Input::LowerTree {
            dir: "py/lib",
            tar: TarSpec::PyStdlib,
        }],
        run: Run::InContainer(Box::new(move |ctx, tree, sink| {
            let home = tree.join(PY_HOME);
            let cold = python(tree, &home, PY_IMPORTS);
            let ok = cold.is_ok();
            record(
                ctx,
                sink,
                "buf-python-start-cold",
                cold.map(|(_, s)| s),
                Unit::Seconds,
            )?;
            if !ok {
                return Ok(());
            }
            let mut times = Vec::new();
            for _ in 0..runs {
                times.push(python(tree, &home, PY_IMPORTS)?.1);
            }
            let check = format!(
                "{PY_IMPORTS}; import sys; h = sys.argv[1]; \
                 print(json.__file__); print(len(sys.modules)); \
                 print(sum(1 for m in list(sys.modules.values()) \
                 if getattr(m, '__file__', None) and not m.__file__.startswith(h)))"
            );
            let (out, _) = python(tree, &home, &format!("{check}\n"))?;
            let lines: Vec<&str> = out.lines().collect();
            match lines[..] {
                [json, modules, "0"] if json.starts_with(&*home.to_string_lossy()) => {
                    ctx.log(
                        sink.system().name(),
                        &format!("{modules} modules, json from {json}"),
                    );
                }
                _ => return Err(format!("modules not loaded from {}: {out}", home.display())),
            }
            if let Some(c) = sink.cell("buf-python-start") {
                c.samples.extend(&times);
            }
            let s = crate::results::summarize(&times).ok_or("no runs")?;
            ctx.log(
                sink.system().name(),
                &format!(
                    "buf-python-start: median {:.4} s of {} ({:.4}–{:.4})",
                    s.median, s.n, s.min, s.max
                ),
            );
            Ok(())
        })),
    }
}

/// Run [`PY_BIN`] `-S -c script home` in `cwd` with `PYTHONHOME=home`, nothing else in its
/// environment: (stdout, seconds).
fn python(cwd: &Path, home: &Path, script: &str) -> Res<(String, f64)> {
    let (out, took) = process::run_timed(
        Command::new(PY_BIN)
            .args(["-S", "-c", script])
            .arg(home)
            .current_dir(cwd)
            .env_clear()
            .env("PYTHONHOME", home)
            .env("PYTHONDONTWRITEBYTECODE", "1"),
        Duration::from_secs(120),
    )?;
    if !out.status.success() {
        return Err(format!(
            "{PY_BIN} with PYTHONHOME={}: {} {}",
            home.display(),
            out.status,
            out.stderr
                .lines()
                .rev()
                .take(3)
                .collect::<Vec<_>>()
                .join(" | ")
        ));
    }
    Ok((out.stdout, took.as_secs_f64()))
}

/// `tar -x` of the Python standard library ([`PY_STDLIB`](crate::inputs::PY_STDLIB), a real tree of small files) into
/// the container, then `sync` and an fsync of the directory, as the metadata tar step does.
/// Seconds.
pub fn tar_step() -> Step {
    Step {
        name: "tar -x stdlib".into(),
        workloads: vec![workload(
            "buf-tar-stdlib",
            "tar -x python3.11 stdlib + sync".into(),
            Unit::Seconds,
        )
        .goal(Goal::AtMost(1.5))],
        needs: vec![Input::Tar(TarSpec::PyStdlib)],
        run: Run::InContainer(Box::new(move |ctx, tree, sink| {
            let dir = tree.join(format!("buf-tar-r{}", ctx.rep + 1));
            let tar = TarSpec::PyStdlib.path(ctx.tars);
            let d = dir.clone();
            let r = guarded("tar -x", move || tar_extract(&tar, &d));
            if r.is_ok() {
                let entries = walk_count(&dir);
                ctx.log(
                    sink.system().name(),
                    &format!("{entries} entries extracted"),
                );
            }
            let _ = fs::remove_dir_all(&dir);
            if let Ok(t) = &r {
                ctx.log(
                    sink.system().name(),
                    &format!("tar -x {:.3} s, sync {:.3} s of that", t.total_s, t.sync_s),
                );
            }
            record(
                ctx,
                sink,
                "buf-tar-stdlib",
                r.map(|t| t.total_s),
                Unit::Seconds,
            )
        })),
    }
}

/// `tar -xf TAR -C DIR` into a fresh `dir`, then `durable(dir)` (timed without the 20 ms
/// polling of `meta::tar_extract`).
pub fn tar_extract(tar: &Path, dir: &Path) -> Res<Timed> {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir(dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    let (out, took) = process::run_timed(
        Command::new("tar").arg("-xf").arg(tar).arg("-C").arg(dir),
        Duration::from_secs(900),
    )?;
    if !out.status.success() {
        return Err(format!(
            "tar -xf {} -C {}: {} {}",
            tar.display(),
            dir.display(),
            out.status,
            out.stderr.lines().take(3).collect::<Vec<_>>().join(" | ")
        ));
    }
    let t = Instant::now();
    durable(dir)?;
    let sync = t.elapsed();
    Ok(Timed {
        total_s: (took + sync).as_secs_f64(),
        sync_s: sync.as_secs_f64(),
    })
}

/// Entries below `dir`, `dir` not counted.
fn walk_count(dir: &Path) -> usize {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => 1 + walk_count(&e.path()),
            _ => 1,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffered::test_dir;
    use crate::inputs::PY_STDLIB;

    #[test]
    fn small_trees_and_objects() {
        let d = test_dir("smallfiles");
        let t = SmallTree::new(230);
        write_tree(&t, &d.join("s")).unwrap();
        assert!(read_tree(&t, &d.join("s")).unwrap() > 0.0);
        fs::write(d.join("s/d001/f005.dat"), b"short").unwrap();
        assert!(read_tree(&t, &d.join("s")).is_err());

        let t = git_objects(&d.join("g"), 600).unwrap();
        assert!(t.total_s > t.sync_s && t.sync_s > 0.0);
        let objects = d.join("g/objects");
        let dirs: Vec<_> = fs::read_dir(&objects).unwrap().collect();
        assert!(dirs.len() > 200 && dirs.len() <= 256);
        let files: usize = fs::read_dir(&objects)
            .unwrap()
            .map(|e| fs::read_dir(e.unwrap().path()).unwrap().count())
            .sum();
        assert_eq!(files, 600);
        fs::remove_dir_all(&d).unwrap();
    }

    /// The interpreter loads every module from a copy of the standard library (skipped when
    /// the host has no Python 3.11).
    #[test]
    fn python_from_a_copy() {
        if !Path::new(PY_BIN).is_file() || !Path::new(PY_STDLIB).is_dir() {
            eprintln!("skipped: no {PY_BIN}");
            return;
        }
        let d = test_dir("python");
        TarSpec::PyStdlib.write(&d).unwrap();
        let home = d.join(PY_HOME);
        crate::inputs::extract(&TarSpec::PyStdlib.path(&d), &home.join("lib")).unwrap();
        let (out, s) = python(&d, &home, "import json, sys; print(json.__file__)").unwrap();
        assert!(out.trim().starts_with(&*home.to_string_lossy()), "{out}");
        assert!(s > 0.0);
        assert!(
            tar_extract(&TarSpec::PyStdlib.path(&d), &d.join("x"))
                .unwrap()
                .total_s
                > 0.0
        );
        assert!(d.join("x/python3.11/json/__init__.py").is_file());
        assert!(walk_count(&d.join("x")) > 1_000);
        fs::remove_dir_all(&d).unwrap();
    }
}
