//! Layer workloads: the first write to a large inherited file (overlayfs copies the whole file
//! up; Strata copies one 4 KiB block), and the time to make a container layer over parents of
//! growing size and depth.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use control::admin::ImportRequest;

use crate::systems::{Parent, System, SystemKind};
use crate::Res;
use crate::{host, interrupt};

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

/// What the clone workload times: a parent holding N files, or a parent at depth D.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    Files(usize),
    Depth(usize),
}

/// The tar of N empty files in `tars`.
pub fn files_tar(tars: &Path, n: usize) -> PathBuf {
    tars.join(format!("files-{n}.tar"))
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
    sizes: &[usize],
    depths: &[usize],
    reps: usize,
    log: &dyn Fn(&str),
) -> Res<Vec<(Case, Res<Vec<f64>>)>> {
    if !sys.kind.has_layers() {
        return Ok(Vec::new());
    }
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
        "{}: clone parents built in {:.1} s",
        sys.name(),
        t.elapsed().as_secs_f64()
    ));
    // Building them dirtied a lot of ext4 metadata: write it back now, not during the clones.
    host::sync();
    std::thread::sleep(Duration::from_secs(1));
    let mut out = Vec::new();
    let cases = sizes
        .iter()
        .map(|&n| Case::Files(n))
        .chain(depths.iter().map(|&d| Case::Depth(d)));
    for case in cases {
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
        crate::meta::tar_extract(&files_tar(tars, n), &dir, Duration::from_secs(600))?;
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
        let tar = files_tar(tars, n);
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
