//! The overlays as systems under test: a container is a kernel overlayfs mount or a
//! fuse-overlayfs daemon over lower directories, with its own upper and work directories.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use super::Container;
use crate::Res;
use crate::{mounts, process};

/// `lowerdir=…,upperdir=…,workdir=…` with paths relative to `base` (the mount runs there):
/// a hundred lower directories stay well inside the one page the kernel takes for options.
pub(super) fn overlay_options(base: &Path, lowers: &[PathBuf], cdir: &Path) -> String {
    let rel = |p: &Path| -> String {
        p.strip_prefix(base)
            .map(|r| r.display().to_string())
            .unwrap_or_else(|_| p.display().to_string())
    };
    let lower: Vec<String> = lowers.iter().map(|d| rel(d)).collect();
    format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        rel(&cdir.join("u")),
        rel(&cdir.join("w"))
    )
}

/// mount(2) a kernel overlay at `target`; the relative paths in `opts` are resolved from
/// `base` (the process's working directory is changed for the call and restored).
pub(super) fn mount_overlay(base: &Path, opts: &str, target: &Path) -> Res<()> {
    let c_target = CString::new(target.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    let c_opts = CString::new(opts).map_err(|e| e.to_string())?;
    let cwd = std::env::current_dir().ok();
    std::env::set_current_dir(base).map_err(|e| format!("chdir {}: {e}", base.display()))?;
    // SAFETY: NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            c"overlay".as_ptr(),
            c_target.as_ptr(),
            c"overlay".as_ptr(),
            0,
            c_opts.as_ptr().cast(),
        )
    };
    let err = std::io::Error::last_os_error();
    if let Some(cwd) = cwd {
        let _ = std::env::set_current_dir(cwd);
    }
    if rc != 0 {
        return Err(format!(
            "mount -t overlay -o {opts} {}: {err}",
            target.display()
        ));
    }
    Ok(())
}

/// Start `fuse-overlayfs -f -o OPTS MERGED` in `base`, in its own process group.
pub(super) fn spawn_fuse_overlayfs(
    base: &Path,
    opts: &str,
    merged: &Path,
    log_dir: &Path,
) -> Res<Child> {
    process::spawn_logged(
        Command::new("fuse-overlayfs")
            .arg("-f")
            .arg("-o")
            .arg(opts)
            .arg(merged)
            .current_dir(base),
        &log_dir.join("fuse-overlayfs.log"),
    )
}

/// Ready when the merged dir shows in mountinfo (polled often: the wait is part of the
/// container's clone time).
pub(super) fn wait_fuse_overlayfs(c: &mut Container, log_dir: &Path) -> Res<()> {
    mounts::wait_mounted(
        c.child.as_mut().expect("spawned"),
        "fuse-overlayfs",
        &c.path,
        &log_dir.join("fuse-overlayfs.log"),
        10,
        Duration::from_secs(30),
        Duration::from_micros(200),
    )
}

/// `fuse-overlayfs --version`: its line naming itself (an error if it is not installed).
pub fn fuse_overlayfs_version() -> Res<String> {
    let out = process::run_captured(
        Command::new("fuse-overlayfs").arg("--version"),
        Duration::from_secs(30),
    )
    .map_err(|e| format!("{e} (is it installed? `apt-get install fuse-overlayfs`)"))?;
    if !out.status.success() {
        return Err(format!(
            "fuse-overlayfs --version failed: {}",
            out.stderr.trim()
        ));
    }
    let text = format!("{}\n{}", out.stdout, out.stderr);
    let line = text.lines().find(|l| l.contains("fuse-overlayfs"));
    Ok(line.unwrap_or("fuse-overlayfs").trim().to_string())
}
