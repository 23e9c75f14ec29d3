//! Layer workloads: the first write to a large inherited file (overlayfs copies the whole file
//! up; Strata copies one 4 KiB block), and the time to make a container layer over parents of
//! growing size and depth (systems with layers only).

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use control::admin::ImportRequest;

use crate::fmt::{fmt_size, group_thousands};
use crate::inputs::{Input, TarSpec};
use crate::results::summarize;
use crate::suite::{Run, Step};
use crate::systems::{Parent, System, SystemKind};
use crate::workloads::{Config, Goal, Group, Unit, Workload};
use crate::Res;
use crate::{fio, host, interrupt, process};

/// Open `file` read-write, write 4 KiB in its middle, fsync: milliseconds, open included
/// (that is where an overlay copies the file up).
pub fn first_write(file: &Path) -> Res<f64> {
    let t = Instant::now();
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)
        .map_err(|e| format!("open {} read-write: {e}", file.display()))?;
    let len = f
        .metadata()
        .map_err(|e| format!("stat {}: {e}", file.display()))?
        .len();
    let off = (len / 2) & !4095;
    f.write_all_at(&[0x5a; 4096], off)
        .map_err(|e| format!("write {}: {e}", file.display()))?;
    f.sync_all()
        .map_err(|e| format!("fsync {}: {e}", file.display()))?;
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

/// The first write to the inherited fio file, in a fresh container per repeat.
pub fn first_write_step(cfg: &Config) -> Step {
    let id = "first-write";
    let label = format!(
        "first 4 KiB write + fsync to an inherited {} file",
        fmt_size(cfg.file_size)
    );
    Step {
        name: "first write".into(),
        workloads: vec![Workload::new(id, label, Group::Layers, Unit::Millis)],
        needs: vec![Input::LowerFile {
            name: fio::FILE,
            size: cfg.file_size,
        }],
        run: Run::OnSystem(Box::new(move |ctx, sys, sink| {
            let cname = format!("fw{}", ctx.rep + 1);
            let r = (|| {
                let (tree, _) = sys.container(&cname, Parent::Standard)?;
                sys.drop_caches(ctx.remount)?;
                let file = tree.join(fio::FILE);
                process::with_timeout("first write", Duration::from_secs(300), move || {
                    first_write(&file)
                })
            })();
            if let Err(e) = sys.drop_container(&cname) {
                ctx.log(sys.name(), &e);
                sys.mark_failed(&e);
            }
            let ms = r?;
            ctx.log(
                sys.name(),
                &format!(
                    "first 4 KiB write + fsync to the inherited {}: {ms:.2} ms",
                    fmt_size(ctx.cfg.file_size)
                ),
            );
            sink.push(id, ms);
            Ok(())
        })),
    }
}

/// What the clone workload times: a parent holding N files, or a parent at depth D.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    Files(usize),
    Depth(usize),
}

impl Case {
    fn files(self) -> Option<usize> {
        match self {
            Case::Files(n) => Some(n),
            Case::Depth(_) => None,
        }
    }

    fn depth(self) -> Option<usize> {
        match self {
            Case::Depth(d) => Some(d),
            Case::Files(_) => None,
        }
    }

    pub fn id(self) -> String {
        match self {
            Case::Files(n) => format!("clone-files-{n}"),
            Case::Depth(d) => format!("clone-depth-{d}"),
        }
    }
}

/// Clone times over every parent size and depth of the config, once per run (each timed
/// `cfg.clone_reps` times), on the systems with layers.
pub fn clone_step(cfg: &Config) -> Step {
    let cases: Vec<Case> = (cfg.clone_sizes.iter().map(|&n| Case::Files(n)))
        .chain(cfg.clone_depths.iter().map(|&d| Case::Depth(d)))
        .collect();
    let workloads = cases
        .iter()
        .map(|&c| {
            let label = match c {
                Case::Files(n) => {
                    format!("clone over a parent of {} files", group_thousands(n as f64))
                }
                Case::Depth(d) => format!("clone of a parent at depth {d}"),
            };
            Workload::new(c.id(), label, Group::Layers, Unit::Millis)
                .goal(Goal::Absolute(1.0, "≤ 1 ms"))
                .needs_layers()
        })
        .collect();
    let mut sizes = cfg.clone_sizes.clone();
    sizes.sort();
    Step {
        name: "clone".into(),
        workloads,
        needs: sizes
            .into_iter()
            .map(|n| Input::Tar(TarSpec::EmptyFiles(n)))
            .collect(),
        run: Run::Once(Box::new(move |ctx, sys, sink| {
            let wanted: Vec<Case> = cases
                .iter()
                .copied()
                .filter(|c| sink.wants(&c.id()))
                .collect();
            let name = sys.name();
            let timed = clone_times(sys, ctx.tars, &wanted, ctx.cfg.clone_reps, &|m| {
                ctx.log(name, m)
            })?;
            for (case, r) in timed {
                let id = case.id();
                match r {
                    Ok(times) => {
                        let s = summarize(&times).expect("some times");
                        ctx.log(
                            name,
                            &format!(
                                "{id}: median {:.3} ms ({:.3}–{:.3}, {} clones)",
                                s.median, s.min, s.max, s.n
                            ),
                        );
                        if let Some(c) = sink.cell(&id) {
                            c.samples.extend(times);
                        }
                    }
                    Err(e) => {
                        ctx.log(name, &format!("{id}: {e}"));
                        sink.error(&id, &e);
                    }
                }
            }
            Ok(())
        })),
    }
}

/// Build the parents every case needs, then time `reps` containers made over each. Returns
/// per case the clone times in milliseconds (or the error of that case).
///
/// Parents: N empty files from `files-N.tar` (overlays: extracted into a directory; Strata:
/// imported as a committed layer); depth D: the smallest of those, then D − 1 layers each
/// adding one file (overlays: D lower directories; Strata: a chain of D committed layers).
pub fn clone_times(
    sys: &mut System,
    tars: &Path,
    cases: &[Case],
    reps: usize,
    log: &dyn Fn(&str),
) -> Res<Vec<(Case, Res<Vec<f64>>)>> {
    if !sys.kind.has_layers() {
        return Ok(Vec::new());
    }
    let sizes: Vec<usize> = cases.iter().filter_map(|c| c.files()).collect();
    let depths: Vec<usize> = cases.iter().filter_map(|c| c.depth()).collect();
    let smallest = *sizes.iter().min().unwrap_or(&1000);
    // Everything the cases need: the sizes asked for, and the smallest for the chain.
    let mut need: Vec<usize> = sizes.to_vec();
    if !depths.is_empty() && !need.contains(&smallest) {
        need.push(smallest);
    }
    let max_depth = depths.iter().copied().max().unwrap_or(1);
    let t = Instant::now();
    let parents = match sys.kind {
        SystemKind::Strata => strata_parents(sys, tars, &need, smallest, max_depth)?,
        _ => overlay_parents(sys, tars, &need, smallest, max_depth)?,
    };
    log(&format!(
        "clone parents built in {:.1} s",
        t.elapsed().as_secs_f64()
    ));
    // Building them dirtied a lot of ext4 metadata: write it back now, not during the clones.
    host::sync();
    std::thread::sleep(Duration::from_secs(1));
    let mut out = Vec::new();
    for &case in cases {
        let r = time_case(sys, &parents, case, reps);
        interrupt::check_interrupted()?;
        out.push((case, r));
    }
    Ok(out)
}

/// Per system: how to name a parent.
enum Parents {
    /// Overlays: files-N directories, and the chain directories (depth 2…max), all absolute.
    Dirs {
        files: Vec<(usize, PathBuf)>,
        chain: Vec<PathBuf>,
        smallest: PathBuf,
    },
    /// Strata: layer ids.
    Layers { smallest: String },
}

fn overlay_parents(
    sys: &mut System,
    tars: &Path,
    need: &[usize],
    smallest: usize,
    max_depth: usize,
) -> Res<Parents> {
    let root = sys.base().join("clone");
    fs::create_dir_all(&root).map_err(|e| format!("mkdir {}: {e}", root.display()))?;
    let mut files = Vec::new();
    for &n in need {
        let dir = root.join(format!("files-{n}"));
        crate::meta::tar_extract(
            &TarSpec::EmptyFiles(n).path(tars),
            &dir,
            Duration::from_secs(600),
        )?;
        files.push((n, dir));
    }
    let mut chain = Vec::new();
    for k in 2..=max_depth {
        let dir = root.join("chain").join(k.to_string());
        fs::create_dir_all(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        fs::write(dir.join(format!("layer-{k}")), k.to_string())
            .map_err(|e| format!("write in {}: {e}", dir.display()))?;
        chain.push(dir);
    }
    let smallest = root.join(format!("files-{smallest}"));
    Ok(Parents::Dirs {
        files,
        chain,
        smallest,
    })
}

fn strata_parents(
    sys: &mut System,
    tars: &Path,
    need: &[usize],
    smallest: usize,
    max_depth: usize,
) -> Res<Parents> {
    let client = sys.strata_client().ok_or("no strata daemon")?;
    let mnt = sys.strata_mnt().ok_or("no strata mount")?.to_path_buf();
    for &n in need {
        let tar = TarSpec::EmptyFiles(n).path(tars);
        client
            .import(&ImportRequest {
                layer: format!("files-{n}"),
                parent: None,
                path: tar.display().to_string(),
                compression: None,
            })
            .map_err(|e| format!("importing {}: {e}", tar.display()))?;
    }
    let mut prev = format!("files-{smallest}");
    for k in 2..=max_depth {
        let id = format!("chain-{k}");
        client
            .create(&control::admin::CreateRequest {
                id: id.clone(),
                parent: Some(prev.clone()),
                state: None,
                labels: Default::default(),
                limits: Default::default(),
            })
            .map_err(|e| format!("cloning {prev} as {id}: {e}"))?;
        let f = mnt.join(&id).join(format!("layer-{k}"));
        fs::write(&f, k.to_string()).map_err(|e| format!("write {}: {e}", f.display()))?;
        client
            .commit(&id)
            .map_err(|e| format!("committing {id}: {e}"))?;
        prev = id;
    }
    Ok(Parents::Layers {
        smallest: format!("files-{smallest}"),
    })
}

fn time_case(sys: &mut System, parents: &Parents, case: Case, reps: usize) -> Res<Vec<f64>> {
    let mut times = Vec::new();
    for i in 0..reps {
        let name = match case {
            Case::Files(n) => format!("clone-f{n}-{i}"),
            Case::Depth(d) => format!("clone-d{d}-{i}"),
        };
        let (path, took) = match parents {
            Parents::Dirs {
                files,
                chain,
                smallest,
            } => {
                let lowers: Vec<PathBuf> = match case {
                    Case::Files(n) => vec![files
                        .iter()
                        .find(|(k, _)| *k == n)
                        .map(|(_, d)| d.clone())
                        .ok_or("no such parent")?],
                    Case::Depth(d) => {
                        // Topmost first: chain/d … chain/2, then the base image.
                        let mut v: Vec<PathBuf> =
                            chain[..d.saturating_sub(1)].iter().rev().cloned().collect();
                        v.push(smallest.clone());
                        v
                    }
                };
                sys.container(&name, Parent::Dirs(&lowers))?
            }
            Parents::Layers { smallest } => {
                let parent = match case {
                    Case::Files(n) => format!("files-{n}"),
                    Case::Depth(1) => smallest.clone(),
                    Case::Depth(d) => format!("chain-{d}"),
                };
                sys.container(&name, Parent::Layer(&parent))?
            }
        };
        // The new container must see its parent's files.
        let probe = match case {
            Case::Files(_) | Case::Depth(1) => path.join("d00"),
            Case::Depth(d) => path.join(format!("layer-{d}")),
        };
        let seen = probe.exists();
        sys.drop_container(&name)?;
        if !seen {
            return Err(format!("{} missing in a new container", probe.display()));
        }
        times.push(took.as_secs_f64() * 1e3);
    }
    Ok(times)
}
