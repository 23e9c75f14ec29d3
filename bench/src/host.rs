//! The host: root, caches, sync, the clock, files the report quotes.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::{process, Res};

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// sync(2): write every dirty page and inode of every file system back.
pub fn sync() {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
}

/// `sync`, then drop the page cache, dentries and inodes. Needs root.
pub fn drop_caches() -> Res<()> {
    sync();
    std::fs::write("/proc/sys/vm/drop_caches", "3")
        .map_err(|e| format!("echo 3 > /proc/sys/vm/drop_caches: {e} (run as root)"))
}

/// Local date and time as (`YYYY-MM-DD`, `HHMMSS`).
pub fn local_date_time() -> (String, String) {
    // SAFETY: time and localtime_r write only into the buffers we pass.
    unsafe {
        let t = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&t, &mut tm).is_null() {
            return ("1970-01-01".into(), "000000".into());
        }
        (
            format!(
                "{:04}-{:02}-{:02}",
                tm.tm_year + 1900,
                tm.tm_mon + 1,
                tm.tm_mday
            ),
            format!("{:02}{:02}{:02}", tm.tm_hour, tm.tm_min, tm.tm_sec),
        )
    }
}

/// Seconds since the epoch, for results.json.
pub fn unix_time() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Last `n` lines of a text file (for error messages quoting a daemon's log).
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `uname -r`.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The first "model name" of /proc/cpuinfo.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into())
}

/// `git rev-parse --short HEAD` in `dir`, if it is a checkout.
pub fn git_rev(dir: &Path) -> Option<String> {
    let out = process::run_captured(
        Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["rev-parse", "--short", "HEAD"]),
        Duration::from_secs(30),
    )
    .ok()?;
    out.status.success().then(|| out.stdout.trim().to_string())
}
