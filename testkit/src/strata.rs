//! The `strata` binary under test and the fixtures around it: per-test directories on
//! /var/tmp ([`TestDir`]), `strata mkfs` and `strata fsck`, the [`Mount`] guard that runs
//! `strata mount` with its own image, mount point and admin/snapshotter sockets and always
//! unmounts (also when the test fails), and [`MountGuard`] for the other mounts a test makes
//! (bind mounts of a layer, a tmpfs).
//!
//! Mount tests need root and /dev/fuse; without them `require_root_and_fuse!()` prints
//! `SKIP: ...` and returns. Set `STRATA_KEEP_TEST_DIRS=1` to keep the per-test directories
//! (image, daemon log) after the test for debugging.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::{is_mounted, mount_info, mounts_below, run_with_timeout, status_code, umount, Output};

/// How long a mount may take to appear in /proc/self/mountinfo.
pub const MOUNT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the daemon may take to exit after a clean unmount (it checkpoints). This is a
/// safety net against hangs, not a performance assertion.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(120);

/// The `strata` binary cargo built for the running integration test: `CARGO_BIN_EXE_strata`
/// (set at run time by recent cargo), else `strata` beside the test's `deps/` directory
/// (`target/<profile>/strata`; cargo builds a package's binaries before its integration tests).
pub fn strata_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let bin = std::env::var_os("CARGO_BIN_EXE_strata")
            .map(PathBuf::from)
            .or_else(|| {
                let exe = std::env::current_exe().ok()?;
                Some(exe.parent()?.parent()?.join("strata"))
            })
            .expect("cannot locate the strata binary");
        assert!(
            bin.is_file(),
            "{} is not there: run the tests of the root package (`cargo test --release`), which builds it",
            bin.display()
        );
        bin
    })
}

/// The FUSE transport mount tests ask for: `STRATA_FUSE_TRANSPORT` (`io-uring`, `dev` or
/// `auto`), passed to `strata mount` as `--fuse-transport`; unset, the daemon's default.
pub fn fuse_transport() -> Option<String> {
    std::env::var("STRATA_FUSE_TRANSPORT")
        .ok()
        .filter(|t| !t.is_empty())
}

/// `None` when the environment can run mount tests; otherwise why not.
pub fn skip_reason() -> Option<String> {
    if crate::geteuid() != 0 {
        return Some("integration tests need root (they mount FUSE file systems)".into());
    }
    if !Path::new("/dev/fuse").exists() {
        return Some("/dev/fuse is missing".into());
    }
    None
}

/// Return early from a test (printing why) when it cannot mount here.
#[macro_export]
macro_rules! require_root_and_fuse {
    () => {
        if let Some(why) = $crate::skip_reason() {
            eprintln!("SKIP: {why}");
            return;
        }
    };
}

// ---------------------------------------------------------------------------------------
// Running the binary
// ---------------------------------------------------------------------------------------

/// Run `strata ARGS...` to completion (killed after 10 minutes) and capture its output.
pub fn strata<S: AsRef<OsStr>>(args: &[S]) -> Output {
    run_with_timeout(
        Command::new(strata_bin()).args(args),
        Duration::from_secs(600),
    )
}

pub fn assert_no_panic(what: &str, stderr: &str) {
    assert!(
        !stderr.contains("panicked"),
        "{what}: the strata process panicked; stderr:\n{stderr}"
    );
}

/// `strata mkfs PATH --size SIZE`, asserting success.
pub fn mkfs_at(img: &Path, size: &str) {
    let out = strata(&[
        OsStr::new("mkfs"),
        img.as_os_str(),
        OsStr::new("--size"),
        OsStr::new(size),
    ]);
    assert_no_panic("mkfs", &out.stderr);
    assert_eq!(
        out.code,
        0,
        "strata mkfs {} --size {size} failed (exit {}):\nstdout: {}\nstderr: {}",
        img.display(),
        out.code,
        out.stdout,
        out.stderr
    );
}

/// `strata fsck PATH` -> (exit code, stdout). stderr is echoed to the test log; a panic
/// fails the test.
pub fn fsck(img: &Path) -> (i32, String) {
    let out = strata(&[OsStr::new("fsck"), img.as_os_str()]);
    if !out.stderr.is_empty() {
        eprintln!("fsck stderr: {}", out.stderr);
    }
    assert_no_panic("fsck", &out.stderr);
    (out.code, out.stdout)
}

/// fsck must report a clean image (exit 0).
pub fn assert_fsck_clean(img: &Path, when: &str) {
    let out = strata(&[OsStr::new("fsck"), img.as_os_str()]);
    assert_no_panic("fsck", &out.stderr);
    assert_eq!(
        out.code, 0,
        "fsck {when}: expected clean (exit 0), got exit {}\nstdout:\n{}\nstderr:\n{}",
        out.code, out.stdout, out.stderr
    );
}

// ---------------------------------------------------------------------------------------
// Per-test directory
// ---------------------------------------------------------------------------------------

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A fresh directory under /var/tmp (ext4/xfs on most hosts, not tmpfs: the image needs
/// O_DIRECT). Removed on drop unless something is still mounted below it.
pub struct TestDir {
    pub path: PathBuf,
}

impl TestDir {
    pub fn new(name: &str) -> TestDir {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let path = PathBuf::from(format!(
            "/var/tmp/strata-test-{}-{}-{}",
            name,
            std::process::id(),
            n
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("create test dir");
        TestDir { path }
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.path.join(p)
    }

    /// `<dir>/image`, the default image path.
    pub fn image(&self) -> PathBuf {
        self.join("image")
    }

    /// Run `strata mkfs <dir>/image --size SIZE` and return the image path.
    pub fn mkfs(&self, size: &str) -> PathBuf {
        let img = self.image();
        mkfs_at(&img, size);
        img
    }

    /// Create (if needed) and return `<dir>/<name>` for use as a mount point.
    pub fn mountpoint(&self, name: &str) -> PathBuf {
        let p = self.join(name);
        fs::create_dir_all(&p).expect("create mountpoint");
        p
    }

    /// Create (if needed) and return a plain directory on the same (host) file system.
    pub fn plain_dir(&self, name: &str) -> PathBuf {
        self.mountpoint(name)
    }

    /// The usual start of a mount test: `strata mkfs <dir>/image --size SIZE`, mounted at
    /// `<dir>/mnt`. Returns the image path and the mount. (Bound after the `TestDir`, the
    /// mount is dropped, so unmounted, before the directory.)
    pub fn mkfs_and_mount(&self, size: &str) -> (PathBuf, Mount) {
        let img = self.mkfs(size);
        let m = Mount::start(&img, &self.mountpoint("mnt"));
        (img, m)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        // Never recurse into something still mounted (a wedged FUSE mount would hang us,
        // a live one would be wiped).
        for m in mounts_below(&self.path) {
            let _ = Command::new("umount").arg("-l").arg(&m).status();
        }
        if !mounts_below(&self.path).is_empty() {
            eprintln!(
                "NOTE: leaving {} in place: still mounted below it",
                self.path.display()
            );
            return;
        }
        if std::env::var_os("STRATA_KEEP_TEST_DIRS").is_some() {
            eprintln!("NOTE: keeping {}", self.path.display());
            return;
        }
        let _ = fs::remove_dir_all(&self.path);
    }
}

// ---------------------------------------------------------------------------------------
// The mount guard
// ---------------------------------------------------------------------------------------

/// A running `strata mount` daemon. Dropping it (also during a panic) unmounts (falling back
/// to `umount -l`), waits for the daemon (SIGKILL after 10 s) and leaves no mount behind.
pub struct Mount {
    child: Option<Child>,
    pub mnt: PathBuf,
    pub image: PathBuf,
    log: PathBuf,
    /// The daemon handed the mount to a successor (live restart): leave it mounted.
    handed_over: bool,
}

/// A mount that failed to come up.
#[derive(Debug)]
pub struct MountFailure {
    pub code: i32,
    pub stderr: String,
}

static LOGN: AtomicUsize = AtomicUsize::new(0);

impl Mount {
    /// Mount `image` at `mnt` (default options), panicking with the daemon's stderr if it
    /// does not come up.
    pub fn start(image: &Path, mnt: &Path) -> Mount {
        Self::start_with(image, mnt, &[])
    }

    pub fn start_with(image: &Path, mnt: &Path, extra: &[&str]) -> Mount {
        match Self::try_start(image, mnt, extra) {
            Ok(m) => m,
            Err(f) => panic!(
                "strata mount {} {} failed (exit {}); stderr:\n{}",
                image.display(),
                mnt.display(),
                f.code,
                f.stderr
            ),
        }
    }

    /// Bind-mount the test layer's root elsewhere, as a container runtime does for a
    /// container's rootfs; unprivileged users reach it there (the mount root is root-only).
    /// Unmounted when the guard drops.
    pub fn bind_layer_root(&self) -> MountGuard {
        let path = self.mnt.with_extension("rootfs");
        fs::create_dir_all(&path).expect("create bind mount point");
        let st = Command::new("mount")
            .arg("--bind")
            .arg(self.root())
            .arg(&path)
            .status()
            .expect("run mount --bind");
        assert!(
            st.success(),
            "mount --bind {} {}",
            self.root().display(),
            path.display()
        );
        MountGuard::new(path)
    }

    /// The admin socket a test mount at `mnt` serves (beside the mount point).
    pub fn admin_socket_for(mnt: &Path) -> PathBuf {
        mnt.with_extension("admin.sock")
    }

    pub fn snapshotter_socket_for(mnt: &Path) -> PathBuf {
        mnt.with_extension("snapshotter.sock")
    }

    pub fn diff_socket_for(mnt: &Path) -> PathBuf {
        mnt.with_extension("diff.sock")
    }

    /// The containerd diff service socket of this mount (served when the daemon was given a
    /// `--containerd-address`; the default points at the host's containerd).
    pub fn diff_socket(&self) -> PathBuf {
        Self::diff_socket_for(&self.mnt)
    }

    /// The containerd snapshotter socket of this mount.
    pub fn snapshotter_socket(&self) -> PathBuf {
        Self::snapshotter_socket_for(&self.mnt)
    }

    /// The admin socket of this mount.
    pub fn admin_socket(&self) -> PathBuf {
        Self::admin_socket_for(&self.mnt)
    }

    /// `strata ARGS... --admin-socket <this mount's socket>` (e.g. `layer ls`, `stats`); a
    /// panic of the CLI fails the test.
    pub fn cli(&self, args: &[&str]) -> Output {
        let sock = self.admin_socket();
        let mut all: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        all.extend([OsStr::new("--admin-socket"), sock.as_os_str()]);
        let out = strata(&all);
        assert_no_panic(&format!("strata {args:?}"), &out.stderr);
        out
    }

    /// [`cli`](Self::cli), asserting success; its stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert_eq!(out.code, 0, "strata {args:?} failed: {}", out.stderr);
        out.stdout
    }

    /// Layers of `strata layer ls --json`: id → the layer's JSON object (state, labels, …).
    pub fn layers(&self) -> std::collections::BTreeMap<String, serde_json::Value> {
        let out = self.cli_ok(&["layer", "ls", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("layer ls json");
        v["layers"]
            .as_array()
            .expect("layers")
            .iter()
            .map(|l| (l["id"].as_str().expect("layer id").to_string(), l.clone()))
            .collect()
    }

    /// Spawn `strata mount` and wait until the mount shows up in /proc/self/mountinfo, or the
    /// daemon exits (-> Err with its exit code and stderr).
    pub fn try_start(image: &Path, mnt: &Path, extra: &[&str]) -> Result<Mount, MountFailure> {
        let dir = mnt.parent().unwrap_or(Path::new("/var/tmp"));
        let log = dir.join(format!(
            "strata-mount-{}.log",
            LOGN.fetch_add(1, Ordering::SeqCst)
        ));
        let logf = File::create(&log).expect("create daemon log");
        let mut cmd = Command::new(strata_bin());
        cmd.arg("mount").arg(image).arg(mnt);
        // Parallel tests must not fight over the metrics port.
        if !extra.iter().any(|a| a.starts_with("--metrics-addr")) {
            cmd.args(["--metrics-addr", "off"]);
        }
        // ... nor over the admin socket.
        if !extra.iter().any(|a| a.starts_with("--admin-socket")) {
            cmd.arg("--admin-socket").arg(Self::admin_socket_for(mnt));
        }
        // ... nor over the containerd snapshotter socket.
        if !extra.iter().any(|a| a.starts_with("--snapshotter-socket")) {
            cmd.arg("--snapshotter-socket")
                .arg(Self::snapshotter_socket_for(mnt));
        }
        // ... nor over the containerd diff service socket.
        if !extra.iter().any(|a| a.starts_with("--diff-socket")) {
            cmd.arg("--diff-socket").arg(Self::diff_socket_for(mnt));
        }
        // The FUSE transport under test (scripts/test runs the mount tests on both).
        if let Some(t) = fuse_transport() {
            if !extra.iter().any(|a| a.starts_with("--fuse-transport")) {
                cmd.arg("--fuse-transport").arg(t);
            }
        }
        // No fd holder unless the test asks for one (tests/live_restart.rs): other tests
        // kill daemons to see what a crash leaves.
        if !extra.iter().any(|a| a.starts_with("--fd-holder")) {
            cmd.args(["--fd-holder", "none"]);
        }
        cmd.args(extra);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(logf.try_clone().unwrap()))
            .stderr(Stdio::from(logf));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", strata_bin().display()));
        let mut m = Mount {
            child: Some(child),
            mnt: mnt.to_path_buf(),
            image: image.to_path_buf(),
            log,
            handed_over: false,
        };
        let start = Instant::now();
        loop {
            if let Some((fstype, _)) = mount_info(mnt) {
                if fstype.starts_with("fuse") {
                    return Ok(m);
                }
            }
            if let Some(st) = m.child.as_mut().unwrap().try_wait().expect("try_wait") {
                m.child = None;
                return Err(MountFailure {
                    code: status_code(st),
                    stderr: m.stderr(),
                });
            }
            if start.elapsed() > MOUNT_TIMEOUT {
                let stderr = m.stderr();
                drop(m);
                panic!(
                    "strata mount did not appear in /proc/self/mountinfo within {MOUNT_TIMEOUT:?}; stderr:\n{stderr}"
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The file tree tests work in: the "default" layer that mkfs creates (the mount root
    /// lists layers as directories).
    pub fn root(&self) -> PathBuf {
        self.mnt.join("default")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Everything the daemon printed so far (stdout and stderr).
    pub fn stderr(&self) -> String {
        fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Clean stop: `umount MOUNTPOINT`, wait for the daemon to checkpoint and exit; assert it
    /// exited 0 without panicking. Returns its output.
    pub fn stop(mut self) -> String {
        let mut ok = false;
        for _ in 0..50 {
            if !is_mounted(&self.mnt) {
                break;
            }
            if umount(&self.mnt, false) {
                ok = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let mnt = self.mnt.clone();
        assert!(
            ok || !is_mounted(&mnt),
            "umount {} kept failing",
            mnt.display()
        );
        let mut child = self.child.take().expect("daemon already gone");
        let start = Instant::now();
        let status = loop {
            if let Some(st) = child.try_wait().expect("try_wait") {
                break Some(st);
            }
            if start.elapsed() > STOP_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let out = self.stderr();
        assert_no_panic("strata mount (stop)", &out);
        let status = status.unwrap_or_else(|| {
            panic!("daemon did not exit within {STOP_TIMEOUT:?} after umount; output:\n{out}")
        });
        assert!(
            status.success(),
            "daemon exited with {} after a clean umount (expected 0); output:\n{out}",
            status_code(status)
        );
        out
    }

    /// SIGKILL the daemon and reap it. The (now dead) mount stays in the mount table until
    /// `unmount_dead()` or drop, so callers can first stop their own I/O against it.
    pub fn kill9(&mut self) -> String {
        if let Some(mut child) = self.child.take() {
            let _ = crate::sys::kill(child.id(), libc::SIGKILL);
            let _ = child.wait();
        }
        self.stderr()
    }

    /// Live restart: SIGUSR2 makes the daemon answer what it read, checkpoint and exit,
    /// leaving the mount to a successor (whose own `Mount` then owns it). Asserts it exited
    /// 0 within a minute; returns its output.
    pub fn hand_over(mut self) -> String {
        self.handed_over = true;
        let mut child = self.child.take().expect("daemon already gone");
        let _ = crate::sys::kill(child.id(), libc::SIGUSR2);
        let start = Instant::now();
        let status = loop {
            if let Some(st) = child.try_wait().expect("try_wait") {
                break st;
            }
            if start.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "daemon did not hand over within 60 s; output:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let out = self.stderr();
        assert_no_panic("strata mount (hand-over)", &out);
        assert!(
            status.success(),
            "daemon exited with {} after a hand-over; output:\n{out}",
            status_code(status)
        );
        out
    }

    /// SIGKILL the daemon, leaving its mount to a successor that takes the connection over
    /// from the fd holder (live restart).
    pub fn kill9_leave_mounted(mut self) -> String {
        self.handed_over = true;
        self.kill9()
    }

    /// After `kill9`: detach the dead mount (`umount -l`).
    pub fn unmount_dead(&mut self) {
        if is_mounted(&self.mnt) && !umount(&self.mnt, false) {
            umount(&self.mnt, true);
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.handed_over {
            return;
        }
        let panicking = std::thread::panicking();
        if is_mounted(&self.mnt) && !umount(&self.mnt, false) {
            umount(&self.mnt, true);
        }
        if let Some(mut child) = self.child.take() {
            let start = Instant::now();
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) => {}
                }
                if start.elapsed() > Duration::from_secs(10) {
                    eprintln!(
                        "daemon for {} still running 10 s after umount: SIGKILL",
                        self.mnt.display()
                    );
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if is_mounted(&self.mnt) {
            umount(&self.mnt, true);
        }
        if panicking {
            let out = self.stderr();
            let tail: String = {
                let lines: Vec<&str> = out.lines().collect();
                lines[lines.len().saturating_sub(40)..].join("\n")
            };
            eprintln!(
                "---- daemon output for {} (last 40 lines) ----\n{tail}\n----",
                self.mnt.display()
            );
            // Successors of a live restart write to the same log: their warnings, errors and
            // the error replies they took over from a predecessor, from the whole log.
            let notable: Vec<&str> = out
                .lines()
                .filter(|l| {
                    l.contains(": warn:")
                        || l.contains(": error:")
                        || l.contains("reply is an error")
                })
                .take(100)
                .collect();
            if !notable.is_empty() {
                eprintln!(
                    "---- warnings, errors and error replies taken over in that log (at most 100) ----\n{}\n----",
                    notable.join("\n")
                );
            }
        }
    }
}

/// A mount a test made (a bind mount, a tmpfs, ...): `umount PATH` on drop, falling back to
/// `umount -l`, also when the test fails.
pub struct MountGuard {
    path: PathBuf,
    armed: bool,
}

impl MountGuard {
    pub fn new(path: impl Into<PathBuf>) -> MountGuard {
        MountGuard {
            path: path.into(),
            armed: true,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `umount PATH` now; whether it succeeded (the guard does nothing more either way).
    pub fn unmount(mut self) -> bool {
        self.armed = false;
        Command::new("umount")
            .arg(&self.path)
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let ok = Command::new("umount")
            .arg(&self.path)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

impl Mount {
    /// Live restart by someone else (`strata restart` signals the daemon and starts its
    /// successor): reap the daemon if it has exited — without a parent that reaps it, it
    /// would stay a zombie, and `strata restart` waits for its /proc entry to go — and leave
    /// the mount to the successor. Its exit code once it has exited, else `None`.
    pub fn reap_handed_over(&mut self) -> Option<i32> {
        let child = self.child.as_mut()?;
        let st = child.try_wait().expect("try_wait")?;
        self.child = None;
        self.handed_over = true;
        Some(status_code(st))
    }
}
