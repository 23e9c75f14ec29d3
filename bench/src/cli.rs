//! Command line of `strata-bench`.

use std::path::{Path, PathBuf};

use clap::builder::RangedU64ValueParser;
use clap::Parser;

use crate::systems::SystemKind;

/// fio, buffered-I/O and small-file, metadata, layer and memory-density workloads against
/// ext4, kernel overlayfs, fuse-overlayfs and Strata, on the same disk, in the same run. Run as
/// root.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "strata-bench",
    after_help = "\
A full run takes about 30 minutes on a 2-core VM: 1 GiB fio file, 5 s per fio job, 3 repeats,
buffered I/O on own and inherited files (80 MiB dd, 20,000 log lines, 300,000 4-byte appends,
hot reads of 256/128 MiB), 10,000 small files, 5,000 git objects, Python starts and tar -x of
its standard library, 20,000 files, a 14,000-entry tar, clones over 1k/10k/100k files and depth
1/10/100, 1/2/4/8 readers of a 512 MiB file. --quick is a 3-minute smoke run of everything (its
timings mean nothing). The Python workloads need python3.11 (Debian's, /usr/lib/python3.11)."
)]
pub struct Args {
    /// Smoke run: 256 MiB fio file, 1 s per fio job, 1 repeat, smaller buffered and small-file
    /// workloads (32 MiB dd, 64 MiB hot reads, 2,000 small files), 5,000 files, a 3,500-entry
    /// tar, clones over 1k/10k files and depth 1/10, readers of a 128 MiB file
    #[arg(long)]
    pub quick: bool,

    /// Results directory [default: bench/results/<date>, or <date>-<time> when that exists]
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,

    /// The systems to measure, comma-separated ("overlay" is accepted for overlayfs)
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        default_value = "ext4,overlayfs,fuse-overlayfs,strata"
    )]
    pub systems: Vec<SystemKind>,

    /// Seconds per fio job [default: 5, or 1 with --quick]
    #[arg(long, value_name = "SECONDS", value_parser = RangedU64ValueParser::<u64>::new().range(1..))]
    runtime: Option<u64>,

    /// The strata binary to mount with
    #[arg(long, value_name = "PATH", default_value_os_t = default_strata())]
    pub strata: PathBuf,

    /// Scratch directory on the host's ext4 (absolute); everything is set up below it and
    /// deleted at the end
    #[arg(long, value_name = "DIR", default_value = "/var/tmp/strata-bench", value_parser = absolute_path)]
    pub dir: PathBuf,

    /// Repeats per figure (each figure is their median) [default: 3, or 1 with --quick]
    #[arg(long, value_name = "N", value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    repeats: Option<usize>,

    /// Only the workloads whose id contains one of these comma-separated substrings: fio-,
    /// buf-, meta-, tar-, first-write, clone-, mem- (e.g. --only fio-,meta) [default: all]
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub only: Vec<String>,

    /// Size of the sparse Strata image (`strata mkfs --size`)
    #[arg(long, value_name = "SIZE", default_value = "16G")]
    pub image_size: String,

    /// Passed to `strata mount --cache-size` [default: strata's own]
    #[arg(long, value_name = "SIZE")]
    pub cache_size: Option<String>,

    /// Keep Strata mounted between jobs (its block cache stays warm); by default it is
    /// remounted before each job, as the kernel's caches are dropped
    #[arg(long)]
    pub no_remount: bool,
}

impl Args {
    /// The arguments of this process; exits with clap's message on a bad command line.
    pub fn from_env() -> Args {
        Args::parse().tidy()
    }

    /// Each system once, in the order given; no empty `--only` pattern (it would select all).
    fn tidy(mut self) -> Args {
        let mut seen = Vec::new();
        self.systems.retain(|s| {
            let new = !seen.contains(s);
            seen.push(*s);
            new
        });
        self.only.retain(|o| !o.trim().is_empty());
        self
    }

    pub fn repeats(&self) -> usize {
        self.repeats.unwrap_or(if self.quick { 1 } else { 3 })
    }

    /// Seconds per fio job.
    pub fn runtime_s(&self) -> u64 {
        self.runtime.unwrap_or(if self.quick { 1 } else { 5 })
    }

    /// Remount FUSE systems before each job so that their own caches start cold.
    pub fn remount(&self) -> bool {
        !self.no_remount
    }
}

/// A clap value parser: the path, when it is absolute.
pub fn absolute_path(s: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(s);
    if p.is_absolute() {
        Ok(p)
    } else {
        Err(format!("must be an absolute path, got {s}"))
    }
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

/// The `strata` binary of this workspace's release build (under `$CARGO_TARGET_DIR` when set):
/// the default `--strata` of the harness's binaries.
pub fn default_strata() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    target.join("release").join("strata")
}

/// The default results directory: bench/results/<date><suffix>, or <date>-<time><suffix>
/// when that exists.
pub fn default_results_dir(suffix: &str) -> PathBuf {
    let (date, time) = crate::host::local_date_time();
    let results = workspace_root().join("bench").join("results");
    let day = results.join(format!("{date}{suffix}"));
    if day.exists() {
        results.join(format!("{date}-{time}{suffix}"))
    } else {
        day
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(v: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("strata-bench").chain(v.iter().copied()))
            .map(Args::tidy)
    }

    #[test]
    fn the_command_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn defaults() {
        let a = parse(&[]).unwrap();
        assert!(!a.quick);
        assert_eq!(a.repeats(), 3);
        assert_eq!(a.runtime_s(), 5);
        assert!(a.remount());
        assert_eq!(a.systems, SystemKind::ALL.to_vec());
        assert!(a.only.is_empty());
        assert_eq!(a.dir, PathBuf::from("/var/tmp/strata-bench"));
        assert_eq!(a.image_size, "16G");
        assert!(a.strata.ends_with("release/strata"));
    }

    #[test]
    fn quick_and_values() {
        let a = parse(&[
            "--quick",
            "--systems=ext4,overlay,ext4",
            "--dir",
            "/tmp/x",
            "--only",
            "fio-,meta,",
            "--runtime=7",
            "--no-remount",
        ])
        .unwrap();
        assert_eq!(a.runtime_s(), 7);
        assert!(a.quick && !a.remount());
        assert_eq!(a.repeats(), 1);
        assert_eq!(a.systems, vec![SystemKind::Ext4, SystemKind::Overlayfs]);
        assert_eq!(a.dir, PathBuf::from("/tmp/x"));
        assert_eq!(a.only, vec!["fio-".to_string(), "meta".to_string()]);
    }

    #[test]
    fn errors() {
        assert!(parse(&["--bogus"]).is_err());
        assert!(parse(&["--systems", "zfs"]).is_err());
        assert!(parse(&["--dir", "rel"]).is_err());
        assert!(parse(&["--repeats=0"]).is_err());
        assert!(parse(&["--runtime=0"]).is_err());
    }
}
