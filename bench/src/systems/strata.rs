//! Strata as a system under test: `strata mkfs` an image file, `strata mount` it as a daemon
//! of ours (admin socket next to the mount point), remount it to empty its block cache, and
//! tear it down whatever state it is in (a dead daemon leaves a dead FUSE mount).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use control::admin::Client;

use super::SetupOptions;
use crate::Res;
use crate::{host, interrupt, mounts, process};

/// A running `strata mount` and the image it serves.
pub(super) struct StrataDaemon {
    pub(super) child: Child,
    bin: PathBuf,
    /// Options after `mount IMAGE MNT`.
    mount_args: Vec<String>,
    image: PathBuf,
    pub(super) mnt: PathBuf,
    log: PathBuf,
    exited: Option<String>,
    /// Set by `teardown`: (done, still mounted).
    torn_down: Option<bool>,
}

impl Drop for StrataDaemon {
    fn drop(&mut self) {
        // Error paths in `start` drop a half-started daemon: stop it too.
        self.teardown();
    }
}

impl StrataDaemon {
    pub(super) fn start(
        base: &Path,
        opts: &SetupOptions,
        transport: Option<&str>,
    ) -> Res<StrataDaemon> {
        let bin = opts.strata_bin;
        if !bin.is_file() {
            return Err(format!(
                "strata binary not found at {} (build it with `cargo build --release`, or pass --strata)",
                bin.display()
            ));
        }
        let image = base.join("strata.img");
        let mnt = base.join("mnt");
        fs::create_dir_all(&mnt).map_err(|e| format!("mkdir {}: {e}", mnt.display()))?;

        let out = process::run_captured(
            Command::new(bin)
                .arg("mkfs")
                .arg(&image)
                .arg("--size")
                .arg(opts.image_size),
            Duration::from_secs(120),
        )?;
        if !out.status.success() {
            let _ = fs::remove_file(&image);
            return Err(format!(
                "strata mkfs {} --size {} failed ({}): {}{}",
                image.display(),
                opts.image_size,
                out.status,
                out.stderr.trim(),
                out.stdout.trim()
            ));
        }

        let log = opts.log_dir.join("strata.log");
        let mut mount_args = mount_args(bin, &mnt, opts.cache_size);
        if let Some(t) = transport {
            mount_args.extend(["--fuse-transport".into(), t.to_string()]);
        }
        let child = spawn_mount(bin, &image, &mnt, &mount_args, &log)?;
        let mut d = StrataDaemon {
            child,
            bin: bin.to_path_buf(),
            mount_args,
            image,
            mnt,
            log,
            exited: None,
            torn_down: None,
        };
        d.wait_ready()?;
        Ok(d)
    }

    /// Ready when the mount point shows up in /proc/self/mountinfo.
    fn wait_ready(&mut self) -> Res<()> {
        let r = mounts::wait_mounted(
            &mut self.child,
            "strata mount",
            &self.mnt,
            &self.log,
            20,
            Duration::from_secs(60),
            Duration::from_millis(20),
        );
        if let Ok(Some(st)) = self.child.try_wait() {
            self.exited = Some(st.to_string());
        }
        r
    }

    /// Unmount and remount: the daemon's block cache starts cold, as the page cache does after
    /// drop_caches. Also checks that a clean unmount exits 0 and the image mounts again.
    pub(super) fn remount(&mut self) -> Res<()> {
        self.check_alive()?;
        let out = process::run_captured(
            Command::new("umount").arg(&self.mnt),
            Duration::from_secs(120),
        )?;
        if !out.status.success() {
            return Err(format!(
                "umount {}: {}",
                self.mnt.display(),
                out.stderr.trim()
            ));
        }
        match process::wait_until(
            &mut self.child,
            Instant::now() + Duration::from_secs(60),
            true,
        ) {
            Some(st) if st.success() => {}
            Some(st) => {
                self.exited = Some(st.to_string());
                return Err(format!(
                    "strata daemon exited with {st} after umount; last lines of {}:\n{}",
                    self.log.display(),
                    host::tail(&self.log, 20)
                ));
            }
            None => {
                interrupt::check_interrupted()?;
                return Err("strata daemon still running 60 s after umount".into());
            }
        }
        self.child = spawn_mount(
            &self.bin,
            &self.image,
            &self.mnt,
            &self.mount_args,
            &self.log,
        )?;
        self.wait_ready()
    }

    /// The admin API client for this daemon's socket.
    pub(super) fn client(&self) -> Client {
        Client::new(&admin_socket(&self.mnt))
    }

    pub(super) fn check_alive(&mut self) -> Res<()> {
        if let Some(st) = &self.exited {
            return Err(format!("strata daemon exited ({st})"));
        }
        if let Ok(Some(st)) = self.child.try_wait() {
            self.exited = Some(st.to_string());
            return Err(format!(
                "strata daemon exited ({st}); last lines of {}:\n{}",
                self.log.display(),
                host::tail(&self.log, 20)
            ));
        }
        if !mounts::is_mounted(&self.mnt) {
            return Err(format!("{} is no longer mounted", self.mnt.display()));
        }
        Ok(())
    }

    /// Unmount, stop the daemon, delete the image. Returns true if the mount point is still
    /// mounted at the end (then nothing below it is deleted).
    pub(super) fn teardown(&mut self) -> bool {
        if let Some(still) = self.torn_down {
            return still;
        }
        let still = self.teardown_once();
        self.torn_down = Some(still);
        still
    }

    fn teardown_once(&mut self) -> bool {
        // 1. The normal way: umount; the daemon then exits 0 by itself.
        if mounts::is_mounted(&self.mnt) {
            match process::run_to_end(
                Command::new("umount").arg(&self.mnt),
                Duration::from_secs(60),
            ) {
                Ok(o) if o.status.success() => {}
                Ok(o) => eprintln!(
                    "strata-bench: umount {}: {}",
                    self.mnt.display(),
                    o.stderr.trim()
                ),
                Err(e) => eprintln!("strata-bench: {e}"),
            }
        }
        // 2. Wait for the daemon; SIGTERM, then SIGKILL if it lingers.
        let status = match process::wait_until(
            &mut self.child,
            Instant::now() + Duration::from_secs(15),
            false,
        ) {
            Some(st) => Some(st),
            None => {
                eprintln!(
                    "strata-bench: strata daemon still running after umount; sending SIGTERM"
                );
                process::stop_child(&mut self.child, libc::SIGTERM, Duration::from_secs(10))
            }
        };
        match status {
            Some(st) if st.success() || self.exited.is_some() => {}
            Some(st) => eprintln!(
                "strata-bench: strata daemon exited with {st} at teardown (log: {})",
                self.log.display()
            ),
            None => eprintln!(
                "strata-bench: WARNING: strata daemon (pid {}) would not die",
                self.child.id()
            ),
        }
        // 3. A dead daemon leaves a dead mount ("Transport endpoint is not connected"):
        //    abort the FUSE connection if fusectl is there, then detach lazily.
        if let Some(m) = mounts::find_mount(&self.mnt) {
            mounts::abort_fuse_connection(&m.dev);
            let _ = process::run_to_end(
                Command::new("umount").arg("-l").arg(&self.mnt),
                Duration::from_secs(30),
            );
        }
        let still = mounts::is_mounted(&self.mnt);
        if !still {
            if let Err(e) = fs::remove_file(&self.image) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    eprintln!("strata-bench: cannot remove {}: {e}", self.image.display());
                }
            }
        }
        still
    }
}

/// The daemon's admin socket: next to its mount point.
fn admin_socket(mnt: &Path) -> PathBuf {
    mnt.with_extension("admin.sock")
}

/// `strata mount` options: the admin socket next to the mount point; no Prometheus endpoint,
/// no containerd snapshotter or diff socket (their default addresses may be taken by another
/// daemon on this host; those options only where the binary has them).
fn mount_args(bin: &Path, mnt: &Path, cache_size: Option<&str>) -> Vec<String> {
    let mut v: Vec<String> = vec![
        "--admin-socket".into(),
        admin_socket(mnt).display().to_string(),
        "--metrics-addr".into(),
        "off".into(),
    ];
    let help = process::run_captured(
        Command::new(bin).args(["mount", "--help"]),
        Duration::from_secs(30),
    )
    .map(|o| o.stdout + &o.stderr)
    .unwrap_or_default();
    if help.contains("--snapshotter-socket") {
        v.extend(["--snapshotter-socket".into(), "off".into()]);
    }
    if help.contains("--diff-socket") {
        v.extend(["--diff-socket".into(), "off".into()]);
    }
    if let Some(c) = cache_size {
        v.extend(["--cache-size".into(), c.to_string()]);
    }
    v
}

/// Start `strata mount IMAGE MNT` in its own process group, output appended to `log`.
fn spawn_mount(
    bin: &Path,
    image: &Path,
    mnt: &Path,
    mount_args: &[String],
    log: &Path,
) -> Res<Child> {
    // Own process group (spawn_logged): a Ctrl-C in the terminal must not kill the daemon
    // under a mounted file system; the guard stops it in order.
    process::spawn_logged(
        Command::new(bin)
            .arg("mount")
            .arg(image)
            .arg(mnt)
            .args(mount_args),
        log,
    )
}
