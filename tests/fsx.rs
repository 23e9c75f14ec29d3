//! fsx (asomers' fsx-rs, `cargo install fsx`) against a file in a Strata mount: at least
//! 100,000 random operations per run, every read checked against fsx's in-memory model.
//!
//! fsx-rs 0.3 has no flag or config setting for O_DIRECT and no io_uring mode: it always
//! opens the file with plain read/write. So:
//! * `fsx_buffered`: every operation fsx-rs knows (pread/pwrite, mmap read and write with
//!   msync, truncate, fsync, fdatasync, posix_fallocate, punch hole, sendfile,
//!   copy_file_range, close/open, msync(MS_INVALIDATE)), unaligned sizes.
//! * `fsx_direct_aligned`: the same, restricted to 4 KiB-aligned offsets and sizes, the shape
//!   of O_DIRECT traffic. It is NOT opened with O_DIRECT (fsx-rs cannot); note that Strata
//!   opens regular files with FOPEN_DIRECT_IO by default, so even "buffered" fsx I/O goes
//!   straight to the daemon without the page cache. Real O_DIRECT and io_uring coverage is
//!   in tests/fio_verify.rs.
//!
//! Skipped (with a message) when `fsx` is not on PATH (nor in ~/.cargo/bin).

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use testkit::*;

const OPS: u64 = 100_000;

/// `fsx` on PATH, else where `cargo install` put it.
fn find_fsx() -> Option<PathBuf> {
    on_path("fsx").or_else(|| {
        let p = PathBuf::from(std::env::var_os("HOME")?).join(".cargo/bin/fsx");
        p.is_file().then_some(p)
    })
}

const ALL_WEIGHTS: &str = r#"
[weights]
close_open = 1
read = 10
write = 10
mapread = 5
mapwrite = 5
invalidate = 1
truncate = 2
fsync = 1
fdatasync = 1
posix_fallocate = 1
punch_hole = 1
sendfile = 1
posix_fadvise = 1
copy_file_range = 2
"#;

fn run_fsx(name: &str, config: &str, seed: u64) {
    let Some(fsx) = find_fsx() else {
        eprintln!("SKIP: `fsx` not found on PATH; install it with `cargo install fsx --locked`");
        return;
    };
    let td = TestDir::new(&format!("fsx-{name}"));
    let (img, m) = td.mkfs_and_mount("512M");
    let conf = td.join("fsx.toml");
    std::fs::write(&conf, config).unwrap();
    let artifacts = td.plain_dir("artifacts");
    let file = m.root().join(format!("fsx-{name}.dat"));
    let mut cmd = Command::new(&fsx);
    cmd.arg("-N")
        .arg(OPS.to_string())
        .arg("-S")
        .arg(seed.to_string())
        .arg("-f")
        .arg(&conf)
        .arg("-P")
        .arg(&artifacts)
        .arg(&file)
        .current_dir(&td.path);
    let out = run_with_timeout(&mut cmd, Duration::from_secs(1800));
    let tail = |s: &str| {
        let l: Vec<&str> = s.lines().collect();
        l[l.len().saturating_sub(60)..].join("\n")
    };
    assert_eq!(
        out.code,
        0,
        "fsx ({name}, seed {seed}, {OPS} ops) failed with exit {}\nstdout:\n{}\nstderr (last 60 lines):\n{}",
        out.code,
        tail(&out.stdout),
        tail(&out.stderr)
    );
    let daemon = m.stop();
    assert_no_panic("daemon", &daemon);
    assert_fsck_clean(&img, &format!("after fsx {name}"));
}

#[test]
fn fsx_buffered() {
    require_root_and_fuse!();
    eprintln!("note: fsx-rs has no O_DIRECT or io_uring mode; see tests/fio_verify.rs for those");
    let config =
        format!("flen = 4194304\n[opsize]\nmax = 262144\nmin = 0\nalign = 1\n{ALL_WEIGHTS}");
    run_fsx("buffered", &config, 1);
}

#[test]
fn fsx_direct_aligned() {
    require_root_and_fuse!();
    eprintln!("note: fsx-rs cannot open with O_DIRECT; this run uses 4 KiB-aligned I/O only (see header comment)");
    let config =
        format!("flen = 8388608\n[opsize]\nmax = 262144\nmin = 4096\nalign = 4096\n{ALL_WEIGHTS}");
    run_fsx("aligned", &config, 2);
}
