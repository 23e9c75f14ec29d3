//! Metadata workload: create N empty files in one directory, stat them all, unlink them all,
//! each phase timed with std::fs.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::util::{self, Res};

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
        if util::interrupted() {
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
        if util::interrupted() {
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
}
