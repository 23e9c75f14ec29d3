//! Command line of `strata-bench` (hand-parsed: a handful of flags needs no parser crate).

use std::path::{Path, PathBuf};

use crate::systems::SystemKind;

pub const USAGE: &str = "\
strata-bench: fio and metadata workloads against ext4 and Strata

USAGE:
    strata-bench [OPTIONS]

OPTIONS:
    --quick               256 MiB file, 3 s per fio job, 1 repeat, 5,000 files
    --out DIR             results directory [default: bench/results/<date>]
    --systems LIST        comma-separated: ext4,strata (overlayfs, fuse-overlayfs: not yet)
                          [default: ext4,strata]
    --strata PATH         the strata binary [default: target/release/strata]
    --dir DIR             scratch directory on the host's ext4 [default: /var/tmp/strata-bench]
    --repeats N           repeats per figure [default: 3, or 1 with --quick]
    --only LIST           comma-separated substrings of workload ids to run (e.g. fio-,meta)
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
    let mut systems = vec![SystemKind::Ext4, SystemKind::Strata];
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
        assert_eq!(a.systems, vec![SystemKind::Ext4, SystemKind::Strata]);
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
        ]);
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
