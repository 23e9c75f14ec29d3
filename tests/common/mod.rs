//! Shared helpers for Strata's integration tests: per-test directories on /var/tmp, `mkfs`,
//! a `Mount` guard that runs `strata mount` and always unmounts, `fsck`, tree snapshots, a
//! small deterministic PRNG and a fork+setuid helper.
//!
//! Every test needs root and /dev/fuse; without them it prints `SKIP: ...` and returns.
//! Set `STRATA_KEEP_TEST_DIRS=1` to keep the per-test directories (image, daemon log) after
//! the test for debugging.

#![allow(dead_code)]

pub mod oci_image;

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr};
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub const STRATA: &str = env!("CARGO_BIN_EXE_strata");

/// How long a mount may take to appear in /proc/self/mountinfo.
pub const MOUNT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the daemon may take to exit after a clean unmount (it checkpoints). This is a
/// safety net against hangs, not a performance assertion.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(120);

/// `None` when the environment can run mount tests; otherwise why not.
pub fn skip_reason() -> Option<String> {
    if unsafe { libc::geteuid() } != 0 {
        return Some("integration tests need root (they mount FUSE file systems)".into());
    }
    if !Path::new("/dev/fuse").exists() {
        return Some("/dev/fuse is missing".into());
    }
    None
}

/// Return early from a test (printing why) when it cannot run here.
#[macro_export]
macro_rules! require_root_and_fuse {
    () => {
        if let Some(why) = common::skip_reason() {
            eprintln!("SKIP: {why}");
            return;
        }
    };
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
// Running the binary
// ---------------------------------------------------------------------------------------

#[derive(Debug)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

fn status_code(st: ExitStatus) -> i32 {
    match st.code() {
        Some(c) => c,
        None => 128 + st.signal().unwrap_or(0),
    }
}

/// Run `strata ARGS...` to completion (killed after 10 minutes) and capture its output.
pub fn strata<S: AsRef<OsStr>>(args: &[S]) -> Output {
    run_with_timeout(Command::new(STRATA).args(args), Duration::from_secs(600))
}

/// Run any command to completion with a timeout, capturing stdout/stderr.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {cmd:?}: {e}"));
    // Drain pipes in threads so a chatty child cannot block.
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let to = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = so.read_to_end(&mut s);
        s
    });
    let te = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = se.read_to_end(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let st = child.wait().expect("wait");
            eprintln!("command {cmd:?} killed after {timeout:?}");
            break st;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        code: status_code(status),
        stdout: String::from_utf8_lossy(&to.join().unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&te.join().unwrap()).into_owned(),
    }
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
// Mount table
// ---------------------------------------------------------------------------------------

fn unescape_mountinfo(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One line of /proc/self/mountinfo: (mount point, fstype, source).
pub fn mount_entries() -> Vec<(PathBuf, String, String)> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut v = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        if fields.len() < 5 {
            continue;
        }
        let mp = PathBuf::from(unescape_mountinfo(fields[4]));
        let (fstype, source) = match fields.iter().position(|f| *f == "-") {
            Some(i) if i + 2 < fields.len() => {
                (fields[i + 1].to_string(), unescape_mountinfo(fields[i + 2]))
            }
            _ => (String::new(), String::new()),
        };
        v.push((mp, fstype, source));
    }
    v
}

/// (fstype, source) of the last mount at `mp`, if mounted.
pub fn mount_info(mp: &Path) -> Option<(String, String)> {
    let canon = fs::canonicalize(mp).unwrap_or_else(|_| mp.to_path_buf());
    mount_entries()
        .into_iter()
        .rfind(|(p, _, _)| *p == canon || p == mp)
        .map(|(_, t, s)| (t, s))
}

pub fn is_mounted(mp: &Path) -> bool {
    mount_info(mp).is_some()
}

pub fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = mount_entries()
        .into_iter()
        .map(|(p, _, _)| p)
        .filter(|p| p.starts_with(dir))
        .collect();
    v.sort();
    v.dedup();
    v.reverse(); // deepest first
    v
}

fn umount(mp: &Path, lazy: bool) -> bool {
    let mut c = Command::new("umount");
    if lazy {
        c.arg("-l");
    }
    c.arg(mp);
    let out = run_with_timeout(&mut c, Duration::from_secs(60));
    if out.code != 0 {
        eprintln!(
            "umount {}{}: exit {}: {}",
            if lazy { "-l " } else { "" },
            mp.display(),
            out.code,
            out.stderr.trim()
        );
    }
    out.code == 0
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
    pub fn bind_layer_root(&self) -> BindMount {
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
        BindMount { path }
    }

    /// The admin socket a test mount at `mnt` serves (beside the mount point).
    pub fn admin_socket_for(mnt: &Path) -> PathBuf {
        mnt.with_extension("admin.sock")
    }

    pub fn snapshotter_socket_for(mnt: &Path) -> PathBuf {
        mnt.with_extension("snapshotter.sock")
    }

    /// The containerd snapshotter socket of this mount.
    pub fn snapshotter_socket(&self) -> PathBuf {
        Self::snapshotter_socket_for(&self.mnt)
    }

    /// The admin socket of this mount.
    pub fn admin_socket(&self) -> PathBuf {
        Self::admin_socket_for(&self.mnt)
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
        let mut cmd = Command::new(STRATA);
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
        cmd.args(extra);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(logf.try_clone().unwrap()))
            .stderr(Stdio::from(logf));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {STRATA}: {e}"));
        let mut m = Mount {
            child: Some(child),
            mnt: mnt.to_path_buf(),
            image: image.to_path_buf(),
            log,
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

    /// Where the file tree lives. Today the mount root; when layers arrive, `<mnt>/<layer>`.
    /// The file tree tests work in: the "default" layer that mkfs creates
    /// (the mount root lists layers as directories).
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
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGKILL);
            }
            let _ = child.wait();
        }
        self.stderr()
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
        }
    }
}

// ---------------------------------------------------------------------------------------
// libc conveniences
// ---------------------------------------------------------------------------------------

pub fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path with NUL")
}

pub fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

pub fn errno_name(e: i32) -> String {
    let name = match e {
        0 => "OK",
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::EBADF => "EBADF",
        libc::EACCES => "EACCES",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::ESPIPE => "ESPIPE",
        libc::EROFS => "EROFS",
        libc::EMLINK => "EMLINK",
        libc::ERANGE => "ERANGE",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ELOOP => "ELOOP",
        libc::ENODATA => "ENODATA",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ENOTCONN => "ENOTCONN",
        libc::ETXTBSY => "ETXTBSY",
        libc::E2BIG => "E2BIG",
        libc::EUCLEAN => "EUCLEAN",
        libc::ECONNABORTED => "ECONNABORTED",
        _ => "",
    };
    if name.is_empty() {
        format!("errno {e}")
    } else {
        name.to_string()
    }
}

/// Fork; in the child drop to (uid, gid) with no supplementary groups, run `f` and exit
/// with its result (0 = success, otherwise an errno). Returns that result. `f` should only
/// make raw libc calls.
pub fn as_user<F: FnOnce() -> i32>(uid: u32, gid: u32, f: F) -> i32 {
    unsafe {
        let pid = libc::fork();
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let r = (|| {
                if libc::setgroups(0, std::ptr::null()) != 0 {
                    return 200;
                }
                if libc::setresgid(gid, gid, gid) != 0 {
                    return 201;
                }
                if libc::setresuid(uid, uid, uid) != 0 {
                    return 202;
                }
                f()
            })();
            libc::_exit(r.clamp(0, 255));
        }
        let mut status = 0;
        loop {
            let r = libc::waitpid(pid, &mut status, 0);
            if r == pid {
                break;
            }
            assert!(r >= 0 || errno() == libc::EINTR, "waitpid failed");
        }
        assert!(
            libc::WIFEXITED(status),
            "child killed by signal {}",
            libc::WTERMSIG(status)
        );
        let code = libc::WEXITSTATUS(status);
        assert!(code < 200, "child could not drop privileges (code {code})");
        code
    }
}

/// Returns 0 or errno of the last failing libc call: helper for `as_user` closures.
pub fn rc(r: libc::c_int) -> i32 {
    if r < 0 {
        errno()
    } else {
        0
    }
}

// ---------------------------------------------------------------------------------------
// Deterministic PRNG (splitmix64) and data patterns
// ---------------------------------------------------------------------------------------

#[derive(Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in 0..n (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
    /// True with probability num/den.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }
    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
}

/// `len` pseudo-random bytes determined by `seed`.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut r = Rng::new(seed);
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        v.extend_from_slice(&r.next_u64().to_le_bytes());
    }
    v.truncate(len);
    v
}

/// FNV-1a 64.
pub fn hash(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

// ---------------------------------------------------------------------------------------
// Tree snapshots
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: char,
    /// Full st_mode (type and permission bits).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u64,
    /// None for directories (their st_size is file-system specific).
    pub size: Option<u64>,
    pub rdev: u64,
    /// (length, FNV-1a) of a regular file's content.
    pub content: Option<(u64, u64)>,
    pub symlink: Option<Vec<u8>>,
    /// user.* extended attributes.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// (sec, nsec) of st_mtime, when asked for.
    pub mtime: Option<(i64, i64)>,
}

pub type Snapshot = BTreeMap<PathBuf, Entry>;

fn xattr_list(p: &CString) -> Result<Vec<Vec<u8>>, i32> {
    let mut buf = vec![0u8; 65536];
    let n =
        unsafe { libc::llistxattr(p.as_ptr(), buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    if n < 0 {
        return Err(errno());
    }
    buf.truncate(n as usize);
    let mut names: Vec<Vec<u8>> = buf
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| s.to_vec())
        .collect();
    names.sort();
    Ok(names)
}

/// user.* xattrs of `path` (not following symlinks).
pub fn user_xattrs(path: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let p = cstr(path);
    let mut m = BTreeMap::new();
    let names = match xattr_list(&p) {
        Ok(n) => n,
        Err(e) => panic!("llistxattr {}: {}", path.display(), errno_name(e)),
    };
    for name in names.into_iter().filter(|n| n.starts_with(b"user.")) {
        let cname = CString::new(name.clone()).unwrap();
        let mut buf = vec![0u8; 65536];
        let n = unsafe {
            libc::lgetxattr(
                p.as_ptr(),
                cname.as_ptr(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
            )
        };
        if n < 0 {
            panic!(
                "lgetxattr {} {}: {} (listed by llistxattr)",
                path.display(),
                String::from_utf8_lossy(&name),
                errno_name(errno())
            );
        }
        buf.truncate(n as usize);
        m.insert(name, buf);
    }
    m
}

fn file_digest(path: &Path) -> (u64, u64) {
    let mut f = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut len = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        if n == 0 {
            break;
        }
        for b in &buf[..n] {
            h ^= *b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        len += n as u64;
    }
    (len, h)
}

pub fn entry_of(path: &Path, with_mtime: bool) -> Entry {
    let md = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()));
    let ft = md.file_type();
    let kind = if ft.is_dir() {
        'd'
    } else if ft.is_file() {
        'f'
    } else if ft.is_symlink() {
        'l'
    } else if ft.is_fifo() {
        'p'
    } else if ft.is_char_device() {
        'c'
    } else if ft.is_block_device() {
        'b'
    } else {
        's'
    };
    Entry {
        kind,
        mode: md.mode(),
        uid: md.uid(),
        gid: md.gid(),
        nlink: md.nlink(),
        size: if kind == 'd' { None } else { Some(md.size()) },
        rdev: md.rdev(),
        content: if kind == 'f' {
            Some(file_digest(path))
        } else {
            None
        },
        symlink: if kind == 'l' {
            Some(fs::read_link(path).unwrap().as_os_str().as_bytes().to_vec())
        } else {
            None
        },
        xattrs: user_xattrs(path),
        mtime: if with_mtime {
            Some((md.mtime(), md.mtime_nsec()))
        } else {
            None
        },
    }
}

/// Walk `root` (not following symlinks) and describe every entry, keyed by relative path;
/// the root itself is ".".
pub fn snapshot(root: &Path, with_mtime: bool) -> Snapshot {
    let mut out = BTreeMap::new();
    out.insert(PathBuf::from("."), entry_of(root, with_mtime));
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let rd = fs::read_dir(&dir).unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display()));
        for de in rd {
            let de = de.unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display()));
            let r = rel.join(de.file_name());
            let e = entry_of(&root.join(&r), with_mtime);
            if e.kind == 'd' {
                stack.push(r.clone());
            }
            out.insert(r, e);
        }
    }
    out
}

/// Byte offset of the first difference between two files, for messages.
pub fn first_difference(a: &Path, b: &Path) -> String {
    let x = fs::read(a).unwrap_or_default();
    let y = fs::read(b).unwrap_or_default();
    match x.iter().zip(y.iter()).position(|(p, q)| p != q) {
        Some(i) => format!(
            "first differing byte at offset {i} ({:#04x} vs {:#04x}); lengths {} vs {}",
            x[i],
            y[i],
            x.len(),
            y.len()
        ),
        None => format!("common prefix equal; lengths {} vs {}", x.len(), y.len()),
    }
}

/// Assert two snapshots are equal, reporting every differing path. `root_a`/`root_b` are
/// used to locate content differences. `ignore_root_owner` skips mode/uid/gid of ".".
pub fn assert_snapshots_equal(
    what: &str,
    expected: &Snapshot,
    root_exp: &Path,
    actual: &Snapshot,
    root_act: &Path,
    ignore_root_owner: bool,
) {
    let mut problems = Vec::new();
    for (p, e) in expected {
        match actual.get(p) {
            None => problems.push(format!("{}: missing (expected {:?})", p.display(), e)),
            Some(a) => {
                let mut e = e.clone();
                let mut a = a.clone();
                if ignore_root_owner && p == Path::new(".") {
                    e.mode = 0;
                    a.mode = 0;
                    e.uid = 0;
                    a.uid = 0;
                    e.gid = 0;
                    a.gid = 0;
                    e.mtime = None;
                    a.mtime = None;
                    e.xattrs.clear();
                    a.xattrs.clear();
                }
                if e != a {
                    let mut s = format!(
                        "{}:\n    expected {:?}\n    actual   {:?}",
                        p.display(),
                        e,
                        a
                    );
                    if e.content != a.content {
                        s.push_str(&format!(
                            "\n    content: {}",
                            first_difference(&root_exp.join(p), &root_act.join(p))
                        ));
                    }
                    problems.push(s);
                }
            }
        }
    }
    for (p, a) in actual {
        if !expected.contains_key(p) {
            problems.push(format!("{}: unexpected entry {:?}", p.display(), a));
        }
    }
    if !problems.is_empty() {
        let n = problems.len();
        problems.truncate(30);
        panic!("{what}: {n} differences:\n{}", problems.join("\n"));
    }
}

/// Wait for a child process with a timeout; kill it on timeout.
pub fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().ok().flatten() {
            return Some(st);
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A bind mount made by [`Mount::bind_layer_root`]; unmounted on drop.
pub struct BindMount {
    path: PathBuf,
}

impl BindMount {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for BindMount {
    fn drop(&mut self) {
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
