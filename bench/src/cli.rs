//! Command line of `strata-bench` (hand-parsed: a handful of flags needs no parser crate).

use std::path::{Path, PathBuf};

use crate::systems::SystemKind;

pub const USAGE: &str = "\
strata-bench: fio, metadata, layer and memory-density workloads against ext4, kernel
overlayfs, fuse-overlayfs and Strata, on the same disk, in the same run

USAGE:
    strata-bench [OPTIONS]

    Full run (about 20 minutes on a 2-core VM): 1 GiB fio file, 5 s per fio job, 3 repeats,
    20,000 files, a 14,000-entry tar, clones over 1k/10k/100k files and depth 1/10/100,
    1/2/4/8 readers of a 512 MiB file. --quick: a 2-minute smoke run of everything.

OPTIONS:
    --quick               256 MiB fio file, 1 s per fio job, 1 repeat, 5,000 files, a
                          3,500-entry tar, clones over 1k/10k files and depth 1/10, readers
                          of a 128 MiB file
    --out DIR             results directory [default: bench/results/<date>]
    --systems LIST        comma-separated: ext4,overlayfs,fuse-overlayfs,strata
                          [default: all four]
    --runtime SECONDS     per fio job [default: 5, or 1 with --quick]
    --strata PATH         the strata binary [default: target/release/strata]
    --dir DIR             scratch directory on the host's ext4 [default: /var/tmp/strata-bench]
    --repeats N           repeats per figure [default: 3, or 1 with --quick]
    --only LIST           comma-separated substrings of workload ids to run: fio-, meta-,
                          tar-, first-write, clone-, mem- (e.g. --only fio-,meta)
    --image-size SIZE     size of the sparse Strata image, passed to `strata mkfs --size`
                          [default: 16G]
    --cache-size SIZE     passed to `strata mount --cache-size` [default: strata's own]
    --no-remount          keep Strata mounted between jobs (its block cache stays warm);
                          by default it is remounted before each job, as caches are dropped
    -h, --help            this text
";

#[derive(Debug, Clone)]
pub struct Args {
    pub quick: bool,
    pub out: Option<PathBuf>,
    pub systems: Vec<SystemKind>,
    pub strata: PathBuf,
    pub dir: PathBuf,
    pub repeats: usize,
    /// Seconds per fio job (None: the default for the mode).
    pub runtime: Option<u64>,
    pub only: Vec<String>,
    pub image_size: String,
    pub cache_size: Option<String>,
    /// Remount FUSE systems before each job so that their own caches start cold.
    pub remount: bool,
}

/// What `parse` decided: run with these arguments, or print the help and stop.
pub enum Parsed {
    Run(Args),
    Help,
}

/// The workspace root: the parent of this crate's manifest directory when it still exists
/// (running from a checkout), else the current directory.
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    match manifest.parent() {
        Some(root) if root.join("Cargo.toml").is_file() => root.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn default_strata() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    target.join("release").join("strata")
}

pub fn parse<I: IntoIterator<Item = String>>(argv: I) -> Result<Parsed, String> {
    let mut quick = false;
    let mut out = None;
    let mut systems = SystemKind::ALL.to_vec();
    let mut runtime = None;
    let mut strata = default_strata();
    let mut dir = PathBuf::from("/var/tmp/strata-bench");
    let mut repeats = None;
    let mut only = Vec::new();
    let mut image_size = "16G".to_string();
    let mut cache_size = None;
    let mut remount = true;

    let mut it = argv.into_iter();
    while let Some(arg) = it.next() {
        // Accept both `--flag value` and `--flag=value`.
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| -> Result<String, String> {
            match inline.clone() {
                Some(v) => Ok(v),
                None => it.next().ok_or_else(|| format!("{name} needs a value")),
            }
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(Parsed::Help),
            "--quick" => quick = true,
            "--out" => out = Some(PathBuf::from(value("--out")?)),
            "--systems" => {
                systems = value("--systems")?
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(SystemKind::parse)
                    .collect::<Result<Vec<_>, _>>()?;
                systems.dedup();
                if systems.is_empty() {
                    return Err("--systems: empty list".into());
                }
            }
            "--strata" => strata = PathBuf::from(value("--strata")?),
            "--dir" => dir = PathBuf::from(value("--dir")?),
            "--repeats" => {
                let v = value("--repeats")?;
                let n: usize = v
                    .parse()
                    .map_err(|_| format!("--repeats: bad number {v:?}"))?;
                if n == 0 {
                    return Err("--repeats must be at least 1".into());
                }
                repeats = Some(n);
            }
            "--runtime" => {
                let v = value("--runtime")?;
                let n: u64 = v
                    .parse()
                    .map_err(|_| format!("--runtime: bad number {v:?}"))?;
                if n == 0 {
                    return Err("--runtime must be at least 1".into());
                }
                runtime = Some(n);
            }
            "--only" => {
                only = value("--only")?
                    .split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            }
            "--image-size" => image_size = value("--image-size")?,
            "--cache-size" => cache_size = Some(value("--cache-size")?),
            "--no-remount" => remount = false,
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    if !dir.is_absolute() {
        return Err(format!(
            "--dir must be an absolute path, got {}",
            dir.display()
        ));
    }
    Ok(Parsed::Run(Args {
        quick,
        out,
        systems,
        strata,
        dir,
        repeats: repeats.unwrap_or(if quick { 1 } else { 3 }),
        runtime,
        only,
        image_size,
        cache_size,
        remount,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Args {
        match parse(v.iter().map(|s| s.to_string())).unwrap() {
            Parsed::Run(a) => a,
            Parsed::Help => panic!("help"),
        }
    }

    #[test]
    fn defaults() {
        let a = args(&[]);
        assert!(!a.quick);
        assert_eq!(a.repeats, 3);
        assert_eq!(a.systems, SystemKind::ALL.to_vec());
        assert_eq!(a.runtime, None);
        assert!(a.strata.ends_with("release/strata"));
    }

    #[test]
    fn quick_and_values() {
        let a = args(&[
            "--quick",
            "--systems=ext4",
            "--dir",
            "/tmp/x",
            "--only",
            "fio-,meta",
            "--runtime=7",
        ]);
        assert_eq!(a.runtime, Some(7));
        assert!(a.quick);
        assert_eq!(a.repeats, 1);
        assert_eq!(a.systems, vec![SystemKind::Ext4]);
        assert_eq!(a.dir, PathBuf::from("/tmp/x"));
        assert_eq!(a.only, vec!["fio-".to_string(), "meta".to_string()]);
    }

    #[test]
    fn errors() {
        assert!(parse(["--bogus".to_string()]).is_err());
        assert!(parse(["--systems".to_string(), "zfs".to_string()]).is_err());
        assert!(parse(["--dir".to_string(), "rel".to_string()]).is_err());
        assert!(parse(["--repeats=0".to_string()]).is_err());
    }
}
