//! Metadata workloads: create N empty files in one directory, stat them all, unlink them all,
//! each phase timed with std::fs; `tar -x` of a tree and `rm -rf` of it, each followed by the
//! same durability step on every system. Both run in the repeat's container.

use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::fmt::{fmt_size, group_thousands};
use crate::inputs::{Input, TarSpec};
use crate::suite::{Run, Step};
use crate::workloads::{Config, Goal, Group, Unit, Workload};
use crate::Res;
use crate::{host, interrupt, process};

/// create, stat and unlink of `cfg.meta_files` files, timed in one go.
pub fn files_step(cfg: &Config) -> Step {
    let n = cfg.meta_files;
    let files = group_thousands(n as f64);
    let w = |id, label: String| Workload::new(id, label, Group::Meta, Unit::Seconds);
    Step {
        name: "metadata".into(),
        workloads: vec![
            w("meta-create", format!("create {files} empty files")).goal(Goal::AtMost(3.0)),
            w("meta-stat", format!("stat {files} files")),
            w("meta-unlink", format!("unlink {files} files")),
        ],
        needs: Vec::new(),
        run: Run::InContainer(Box::new(move |ctx, tree, sink| {
            let dir = tree.join(format!("meta-r{}", ctx.rep + 1));
            let t =
                process::with_timeout("metadata", Duration::from_secs(900), move || run(&dir, n))?;
            ctx.log(
                sink.system().name(),
                &format!(
                    "{} files: create {:.3} s, stat {:.4} s, unlink {:.3} s",
                    group_thousands(n as f64),
                    t.create_s,
                    t.stat_s,
                    t.unlink_s
                ),
            );
            sink.push("meta-create", t.create_s);
            sink.push("meta-stat", t.stat_s);
            sink.push("meta-unlink", t.unlink_s);
            Ok(())
        })),
    }
}

/// `tar -x` of the tree into the container, then `rm -rf` of it, each up to durable.
pub fn tar_step(cfg: &Config) -> Step {
    let entries = group_thousands(cfg.tar_entries() as f64);
    let tar = TarSpec::Tree {
        dirs: cfg.tar_dirs,
        files_per_dir: cfg.tar_files_per_dir,
        bytes: cfg.tar_bytes,
    };
    let w = |id, label: String| Workload::new(id, label, Group::Meta, Unit::Seconds);
    Step {
        name: "tar -x / rm -rf".into(),
        workloads: vec![
            w(
                "tar-extract",
                format!(
                    "tar -x of {entries} entries ({}) + sync",
                    fmt_size(cfg.tar_bytes)
                ),
            ),
            w(
                "tar-rm",
                format!("rm -rf of those {entries} entries + sync"),
            ),
        ],
        needs: vec![Input::Tar(tar)],
        run: Run::InContainer(Box::new(move |ctx, tree, sink| {
            let timeout = Duration::from_secs(900);
            let dir = tree.join(format!("tar-r{}", ctx.rep + 1));
            let x = tar_extract(&tar.path(ctx.tars), &dir, timeout)?;
            let rm = tar_remove(&dir, timeout);
            interrupt::check_interrupted()?;
            sink.push("tar-extract", x.total_s);
            let system = sink.system().name();
            match rm {
                Ok(r) => {
                    ctx.log(
                        system,
                        &format!(
                            "tar -x {:.3} s, rm -rf {:.3} s (each with sync: {:.3} s, {:.3} s of that)",
                            x.total_s, r.total_s, x.sync_s, r.sync_s
                        ),
                    );
                    sink.push("tar-rm", r.total_s);
                }
                Err(e) => {
                    ctx.log(system, &format!("rm -rf: {e}"));
                    sink.error("tar-rm", &e);
                }
            }
            Ok(())
        })),
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MetaTimes {
    pub create_s: f64,
    pub stat_s: f64,
    pub unlink_s: f64,
}

fn names(dir: &Path, n: usize) -> Vec<PathBuf> {
    (0..n).map(|i| dir.join(format!("f{i:06}"))).collect()
}

/// Run the three phases in a fresh directory `dir` (removed afterwards). Stat runs warm, right
/// after create, as in BASELINES.md.
pub fn run(dir: &Path, n: usize) -> Res<MetaTimes> {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir(dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    let files = names(dir, n);

    let t = Instant::now();
    for p in &files {
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(p)
            .map_err(|e| format!("create {}: {e}", p.display()))?;
        if interrupt::interrupted() {
            return Err("interrupted".into());
        }
    }
    let create_s = t.elapsed().as_secs_f64();

    let t = Instant::now();
    for p in &files {
        let m = fs::symlink_metadata(p).map_err(|e| format!("stat {}: {e}", p.display()))?;
        if m.len() != 0 || !m.is_file() {
            return Err(format!(
                "stat {}: expected an empty regular file, got {m:?}",
                p.display()
            ));
        }
    }
    let stat_s = t.elapsed().as_secs_f64();

    let t = Instant::now();
    for p in &files {
        fs::remove_file(p).map_err(|e| format!("unlink {}: {e}", p.display()))?;
        if interrupt::interrupted() {
            return Err("interrupted".into());
        }
    }
    let unlink_s = t.elapsed().as_secs_f64();

    let left = fs::read_dir(dir)
        .map_err(|e| format!("readdir {}: {e}", dir.display()))?
        .count();
    if left != 0 {
        return Err(format!(
            "{left} entries left in {} after unlinking all",
            dir.display()
        ));
    }
    fs::remove_dir(dir).map_err(|e| format!("rmdir {}: {e}", dir.display()))?;
    Ok(MetaTimes {
        create_s,
        stat_s,
        unlink_s,
    })
}

/// Make everything written so far under `dir` durable, the same way on every system:
/// sync(2) (ext4, and the overlays' upper directories on it), then fsync of `dir` itself.
/// A FUSE file system gets no syncfs from the kernel (only virtiofs does); the fsync of a
/// directory reaches the daemon, and Strata's commits its journal, which covers every
/// earlier change. Errors that mean "not supported" are ignored.
pub fn durable(dir: &Path) -> Res<()> {
    host::sync();
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(dir)
        .map_err(|e| format!("open {}: {e}", dir.display()))?;
    match f.sync_all() {
        Ok(()) => Ok(()),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) => Ok(()),
        Err(e) => Err(format!("fsync {}: {e}", dir.display())),
    }
}

/// Seconds for a timed step, and how much of that the final `durable` took.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timed {
    pub total_s: f64,
    pub sync_s: f64,
}

/// `tar -xf TAR -C DIR` into a fresh `dir`, then `durable(dir)`.
pub fn tar_extract(tar: &Path, dir: &Path, timeout: Duration) -> Res<Timed> {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir(dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    let t = Instant::now();
    let out = process::run_captured(
        Command::new("tar").arg("-xf").arg(tar).arg("-C").arg(dir),
        timeout,
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
    let ts = Instant::now();
    durable(dir)?;
    Ok(Timed {
        total_s: t.elapsed().as_secs_f64(),
        sync_s: ts.elapsed().as_secs_f64(),
    })
}

/// `rm -rf DIR`, then `durable` on its parent.
pub fn tar_remove(dir: &Path, timeout: Duration) -> Res<Timed> {
    let parent = dir.parent().ok_or("no parent")?;
    let t = Instant::now();
    let out = process::run_captured(Command::new("rm").arg("-rf").arg(dir), timeout)?;
    if !out.status.success() {
        return Err(format!(
            "rm -rf {}: {} {}",
            dir.display(),
            out.status,
            out.stderr.lines().take(3).collect::<Vec<_>>().join(" | ")
        ));
    }
    let ts = Instant::now();
    durable(parent)?;
    let took = Timed {
        total_s: t.elapsed().as_secs_f64(),
        sync_s: ts.elapsed().as_secs_f64(),
    };
    if dir.exists() {
        return Err(format!("{} still exists after rm -rf", dir.display()));
    }
    Ok(took)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_on_tmp() {
        let dir = std::env::temp_dir().join(format!("strata-bench-meta-{}", std::process::id()));
        let t = run(&dir, 200).unwrap();
        assert!(t.create_s > 0.0 && t.stat_s > 0.0 && t.unlink_s > 0.0);
        assert!(!dir.exists());
    }

    #[test]
    fn tar_round_trip() {
        let dir = std::env::temp_dir().join(format!("strata-bench-tarx-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let tar = dir.join("t.tar");
        crate::inputs::write_tree(&tar, 2, 3, 10_000).unwrap();
        let x = dir.join("x");
        tar_extract(&tar, &x, Duration::from_secs(60)).unwrap();
        assert!(x.join("d001/f002.dat").is_file());
        tar_remove(&x, Duration::from_secs(60)).unwrap();
        assert!(!x.exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
