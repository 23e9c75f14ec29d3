//! The file systems under test, each set up in its own directory under `--dir` and torn down
//! by a Drop guard, whatever happened in between.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{self, Res};

/// Every system the harness knows. Only `Ext4` and `Strata` are implemented; the overlays
/// are hooks for later (kernel overlayfs and fuse-overlayfs over an ext4 lower layer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SystemKind {
    /// A plain directory on the host's ext4 root file system: the baseline ratios refer to.
    Ext4,
    /// `strata mkfs` an image file next to the ext4 directory, `strata mount` it.
    Strata,
    /// Kernel overlayfs (not implemented yet).
    Overlayfs,
    /// fuse-overlayfs (not implemented yet).
    FuseOverlayfs,
}

impl SystemKind {
    pub fn name(self) -> &'static str {
        match self {
            SystemKind::Ext4 => "ext4",
            SystemKind::Strata => "strata",
            SystemKind::Overlayfs => "overlayfs",
            SystemKind::FuseOverlayfs => "fuse-overlayfs",
        }
    }

    pub fn parse(s: &str) -> Res<Self> {
        match s {
            "ext4" => Ok(SystemKind::Ext4),
            "strata" => Ok(SystemKind::Strata),
            "overlayfs" | "overlay" => Ok(SystemKind::Overlayfs),
            "fuse-overlayfs" => Ok(SystemKind::FuseOverlayfs),
            other => Err(format!(
                "unknown system {other:?} (known: ext4, strata, overlayfs, fuse-overlayfs)"
            )),
        }
    }

    pub fn implemented(self) -> bool {
        matches!(self, SystemKind::Ext4 | SystemKind::Strata)
    }
}

/// How to set a system up.
pub struct SetupOptions<'a> {
    /// Scratch directory on the host's ext4 (`--dir`).
    pub dir: &'a Path,
    pub strata_bin: &'a Path,
    pub image_size: &'a str,
    pub cache_size: Option<&'a str>,
    /// Where the daemon's stdout/stderr go.
    pub log_dir: &'a Path,
}

/// A system that is set up and ready for workloads. Dropping it unmounts, stops the daemon
/// and deletes everything it created.
pub struct System {
    pub kind: SystemKind,
    /// `<dir>/<name>`: everything this system created lives below it; removed on drop.
    base: PathBuf,
    /// Where workloads put their files.
    tree: PathBuf,
    daemon: Option<StrataDaemon>,
    /// Set when the system stopped working (daemon died, a job hung): skip it from then on.
    pub failed: Option<String>,
}

impl System {
    pub fn setup(kind: SystemKind, opts: &SetupOptions) -> Res<System> {
        if !kind.implemented() {
            return Err(format!("{}: not implemented yet", kind.name()));
        }
        let base = opts.dir.join(kind.name());
        clean_stale(&base)?;
        fs::create_dir_all(&base).map_err(|e| format!("mkdir {}: {e}", base.display()))?;
        // From here on the guard owns `base`: an early return below still cleans up.
        let mut sys = System {
            kind,
            tree: base.clone(),
            base,
            daemon: None,
            failed: None,
        };
        match kind {
            SystemKind::Ext4 => {
                sys.tree = sys.base.join("tree");
                fs::create_dir_all(&sys.tree)
                    .map_err(|e| format!("mkdir {}: {e}", sys.tree.display()))?;
            }
            SystemKind::Strata => {
                let daemon = StrataDaemon::start(&sys.base, opts)?;
                sys.tree = strata_tree(&daemon.mnt);
                sys.daemon = Some(daemon);
            }
            SystemKind::Overlayfs | SystemKind::FuseOverlayfs => unreachable!("checked above"),
        }
        Ok(sys)
    }

    pub fn name(&self) -> &'static str {
        self.kind.name()
    }

    /// The directory the workloads use.
    pub fn tree(&self) -> &Path {
        &self.tree
    }

    /// Err when the system can no longer be used (its daemon exited or the mount vanished).
    pub fn check_alive(&mut self) -> Res<()> {
        if let Some(why) = &self.failed {
            return Err(why.clone());
        }
        if let Some(d) = &mut self.daemon {
            if let Err(e) = d.check_alive() {
                self.failed = Some(e.clone());
                return Err(e);
            }
        }
        Ok(())
    }

    /// Before each job: drop the kernel's caches and, with `remount`, restart a FUSE daemon
    /// so that its own block cache is cold too (drop_caches cannot reach it).
    pub fn drop_caches(&mut self, remount: bool) -> Res<()> {
        if let (true, Some(d)) = (remount, &mut self.daemon) {
            if let Err(e) = d.remount() {
                let e = format!("remounting: {e}");
                self.mark_failed(&e);
                return Err(e);
            }
        }
        util::drop_caches()
    }

    pub fn mark_failed(&mut self, why: &str) {
        if self.failed.is_none() {
            self.failed = Some(why.to_string());
        }
    }
}

impl Drop for System {
    fn drop(&mut self) {
        let still_mounted = match self.daemon.take() {
            Some(mut d) => d.teardown(),
            None => false,
        };
        if still_mounted {
            eprintln!(
                "strata-bench: WARNING: {} is still mounted; leaving {} in place",
                self.tree.display(),
                self.base.display()
            );
            return;
        }
        if let Err(e) = fs::remove_dir_all(&self.base) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!(
                    "strata-bench: WARNING: cannot remove {}: {e}",
                    self.base.display()
                );
            }
        }
    }
}

/// The file tree inside a Strata mount: the "default" layer that `strata mkfs` creates (the
/// mount root lists layers as directories).
pub fn strata_tree(mnt: &Path) -> PathBuf {
    mnt.join("default")
}

/// Remove what an earlier, killed run may have left in `base`, unmounting first. Refuses to
/// delete anything below a mount point that will not go away.
fn clean_stale(base: &Path) -> Res<()> {
    if !base.exists() {
        return Ok(());
    }
    let mnt = base.join("mnt");
    if util::is_mounted(&mnt) {
        eprintln!(
            "strata-bench: unmounting a stale mount at {}",
            mnt.display()
        );
        let _ = util::run_to_end(Command::new("umount").arg(&mnt), Duration::from_secs(30));
        if util::is_mounted(&mnt) {
            let _ = util::run_to_end(
                Command::new("umount").arg("-l").arg(&mnt),
                Duration::from_secs(30),
            );
        }
        if util::is_mounted(&mnt) {
            return Err(format!(
                "{} is mounted and will not unmount; clean up by hand",
                mnt.display()
            ));
        }
    }
    fs::remove_dir_all(base).map_err(|e| format!("cannot remove stale {}: {e}", base.display()))
}

/// A running `strata mount` and the image it serves.
struct StrataDaemon {
    child: Child,
    bin: PathBuf,
    cache_size: Option<String>,
    image: PathBuf,
    mnt: PathBuf,
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
    fn start(base: &Path, opts: &SetupOptions) -> Res<StrataDaemon> {
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

        let out = util::run_captured(
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
        let cache_size = opts.cache_size.map(str::to_string);
        let child = spawn_mount(bin, &image, &mnt, cache_size.as_deref(), &log)?;
        let mut d = StrataDaemon {
            child,
            bin: bin.to_path_buf(),
            cache_size,
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
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if util::is_mounted(&self.mnt) {
                return Ok(());
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                self.exited = Some(st.to_string());
                return Err(format!(
                    "strata mount exited before mounting ({st}); last lines of {}:\n{}",
                    self.log.display(),
                    util::tail(&self.log, 20)
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "strata mount: {} not mounted after 60 s; last lines of {}:\n{}",
                    self.mnt.display(),
                    self.log.display(),
                    util::tail(&self.log, 20)
                ));
            }
            util::check_interrupted()?;
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Unmount and remount: the daemon's block cache starts cold, as the page cache does after
    /// drop_caches. Also checks that a clean unmount exits 0 and the image mounts again.
    fn remount(&mut self) -> Res<()> {
        self.check_alive()?;
        let out = util::run_captured(
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
        match util::wait_until(
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
                    util::tail(&self.log, 20)
                ));
            }
            None => {
                util::check_interrupted()?;
                return Err("strata daemon still running 60 s after umount".into());
            }
        }
        self.child = spawn_mount(
            &self.bin,
            &self.image,
            &self.mnt,
            self.cache_size.as_deref(),
            &self.log,
        )?;
        self.wait_ready()
    }

    fn check_alive(&mut self) -> Res<()> {
        if let Some(st) = &self.exited {
            return Err(format!("strata daemon exited ({st})"));
        }
        if let Ok(Some(st)) = self.child.try_wait() {
            self.exited = Some(st.to_string());
            return Err(format!(
                "strata daemon exited ({st}); last lines of {}:\n{}",
                self.log.display(),
                util::tail(&self.log, 20)
            ));
        }
        if !util::is_mounted(&self.mnt) {
            return Err(format!("{} is no longer mounted", self.mnt.display()));
        }
        Ok(())
    }

    /// Unmount, stop the daemon, delete the image. Returns true if the mount point is still
    /// mounted at the end (then nothing below it is deleted).
    fn teardown(&mut self) -> bool {
        if let Some(still) = self.torn_down {
            return still;
        }
        let still = self.teardown_once();
        self.torn_down = Some(still);
        still
    }

    fn teardown_once(&mut self) -> bool {
        // 1. The normal way: umount; the daemon then exits 0 by itself.
        if util::is_mounted(&self.mnt) {
            match util::run_to_end(
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
        let status = match util::wait_until(
            &mut self.child,
            Instant::now() + Duration::from_secs(15),
            false,
        ) {
            Some(st) => Some(st),
            None => {
                eprintln!(
                    "strata-bench: strata daemon still running after umount; sending SIGTERM"
                );
                util::stop_child(&mut self.child, libc::SIGTERM, Duration::from_secs(10))
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
        if let Some(m) = util::find_mount(&self.mnt) {
            abort_fuse_connection(&m.dev);
            let _ = util::run_to_end(
                Command::new("umount").arg("-l").arg(&self.mnt),
                Duration::from_secs(30),
            );
        }
        let still = util::is_mounted(&self.mnt);
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

/// Start `strata mount IMAGE MNT` in its own process group, output appended to `log`.
fn spawn_mount(
    bin: &Path,
    image: &Path,
    mnt: &Path,
    cache_size: Option<&str>,
    log: &Path,
) -> Res<Child> {
    let logf = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("cannot open {}: {e}", log.display()))?;
    let logf2 = logf.try_clone().map_err(|e| format!("dup log: {e}"))?;
    let mut cmd = Command::new(bin);
    cmd.arg("mount").arg(image).arg(mnt);
    cmd.arg("--admin-socket")
        .arg(mnt.with_extension("admin.sock"));
    if let Some(c) = cache_size {
        cmd.arg("--cache-size").arg(c);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(logf))
        .stderr(Stdio::from(logf2))
        // Own process group: a Ctrl-C in the terminal must not kill the daemon under a
        // mounted file system; the guard stops it in order.
        .process_group(0);
    cmd.spawn()
        .map_err(|e| format!("cannot start {} mount: {e}", bin.display()))
}

/// Write to /sys/fs/fuse/connections/<dev>/abort, where <dev> is the kernel's dev_t of the
/// mount (major << 20 | minor). Best effort: fusectl may not be mounted.
fn abort_fuse_connection(dev: &str) {
    let Some((maj, min)) = dev.split_once(':') else {
        return;
    };
    let (Ok(maj), Ok(min)) = (maj.parse::<u64>(), min.parse::<u64>()) else {
        return;
    };
    let path = PathBuf::from(format!(
        "/sys/fs/fuse/connections/{}/abort",
        (maj << 20) | min
    ));
    if path.exists() {
        let _ = fs::write(&path, "1");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for k in [
            SystemKind::Ext4,
            SystemKind::Strata,
            SystemKind::Overlayfs,
            SystemKind::FuseOverlayfs,
        ] {
            assert_eq!(SystemKind::parse(k.name()).unwrap(), k);
        }
        assert!(!SystemKind::Overlayfs.implemented());
    }

    #[test]
    fn ext4_setup_and_teardown() {
        let dir = std::env::temp_dir().join(format!("strata-bench-test-{}", std::process::id()));
        let opts = SetupOptions {
            dir: &dir,
            strata_bin: Path::new("/nonexistent"),
            image_size: "1G",
            cache_size: None,
            log_dir: &dir,
        };
        let base;
        {
            let sys = System::setup(SystemKind::Ext4, &opts).unwrap();
            base = sys.base.clone();
            fs::write(sys.tree().join("f"), b"x").unwrap();
            assert!(sys.tree().starts_with(&dir));
        }
        assert!(!base.exists(), "the guard removes its directory");
        assert!(
            System::setup(SystemKind::Strata, &opts).is_err(),
            "missing binary is an error"
        );
        assert!(!dir.join("strata").exists(), "a failed setup cleans up too");
        let _ = fs::remove_dir_all(&dir);
    }
}
