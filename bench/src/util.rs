//! Small helpers: signals, child processes with deadlines, cache dropping, mountinfo, dates.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub type Res<T> = Result<T, String>;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_sig: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// SIGINT/SIGTERM/SIGHUP only set a flag: the run stops at the next check and the Drop guards
/// unmount and delete everything. Children run in their own process groups, so a Ctrl-C in the
/// terminal reaches only us, and we decide how to stop them.
pub fn install_signal_handlers() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(sig, handler);
        }
    }
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

pub fn check_interrupted() -> Res<()> {
    if interrupted() {
        Err("interrupted".into())
    } else {
        Ok(())
    }
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `sync`, then drop the page cache, dentries and inodes. Needs root.
pub fn drop_caches() -> Res<()> {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3")
        .map_err(|e| format!("echo 3 > /proc/sys/vm/drop_caches: {e} (run as root)"))
}

pub fn signal_group(child: &Child, sig: libc::c_int) {
    // Children are spawned with process_group(0): their pgid is their pid.
    // SAFETY: plain kill(2) on a process group we created.
    unsafe {
        libc::kill(-(child.id() as libc::pid_t), sig);
    }
}

/// Wait for `child` until `deadline`, polling so that a signal to us is noticed.
/// Returns None on timeout or interruption (the child is still running then).
pub fn wait_until(
    child: &mut Child,
    deadline: Instant,
    watch_interrupt: bool,
) -> Option<ExitStatus> {
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return Some(st),
            Ok(None) => {}
            Err(_) => return None,
        }
        if Instant::now() >= deadline || (watch_interrupt && interrupted()) {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stop a child (its whole process group): `first` signal, then SIGKILL after `grace`.
pub fn stop_child(child: &mut Child, first: libc::c_int, grace: Duration) -> Option<ExitStatus> {
    if let Ok(Some(st)) = child.try_wait() {
        return Some(st);
    }
    signal_group(child, first);
    if let Some(st) = wait_until(child, Instant::now() + grace, false) {
        return Some(st);
    }
    signal_group(child, libc::SIGKILL);
    wait_until(child, Instant::now() + Duration::from_secs(10), false)
}

pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Run a command to completion with a deadline, capturing its output. On timeout or
/// interruption the child's process group gets SIGINT, then SIGKILL, and an error is returned.
pub fn run_captured(cmd: &mut Command, timeout: Duration) -> Res<Output> {
    run_captured_opts(cmd, timeout, true)
}

/// Like `run_captured`, but a signal to us does not cut it short: for the teardown, which
/// must finish after a Ctrl-C.
pub fn run_to_end(cmd: &mut Command, timeout: Duration) -> Res<Output> {
    run_captured_opts(cmd, timeout, false)
}

fn run_captured_opts(cmd: &mut Command, timeout: Duration, watch_interrupt: bool) -> Res<Output> {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start {what}: {e}"))?;
    // Drain the pipes in threads so a chatty child cannot block on a full pipe.
    let out_t = drain(child.stdout.take());
    let err_t = drain(child.stderr.take());
    let status = wait_until(&mut child, Instant::now() + timeout, watch_interrupt);
    let status = match status {
        Some(st) => st,
        None => {
            stop_child(&mut child, libc::SIGINT, Duration::from_secs(5));
            let why = if interrupted() {
                "interrupted"
            } else {
                "timed out"
            };
            return Err(format!(
                "{what}: {why} after {:.0} s",
                timeout.as_secs_f64()
            ));
        }
    };
    Ok(Output {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    })
}

fn drain<R: Read + Send + 'static>(r: Option<R>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut r) = r {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            s = String::from_utf8_lossy(&buf).into_owned();
        }
        s
    })
}

/// Run `f` on a worker thread and wait at most `timeout` for it. A file system that hangs
/// leaves the worker blocked; it is abandoned (tearing the mount down unblocks it).
pub fn with_timeout<T: Send + 'static>(
    what: &str,
    timeout: Duration,
    f: impl FnOnce() -> Res<T> + Send + 'static,
) -> Res<T> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name(what.to_string())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(|e| format!("{what}: cannot spawn a thread: {e}"))?;
    let deadline = Instant::now() + timeout;
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(r) => return r,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(format!("{what}: worker panicked"))
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if interrupted() {
                    return Err(format!("{what}: interrupted"));
                }
                if Instant::now() >= deadline {
                    return Err(format!(
                        "{what}: timed out after {:.0} s",
                        timeout.as_secs_f64()
                    ));
                }
            }
        }
    }
}

/// Undo the octal escapes (`\040` for a space, …) of /proc/self/mountinfo.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            let oct = &b[i + 1..i + 4];
            if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = (oct[0] - b'0') as u32 * 64
                    + (oct[1] - b'0') as u32 * 8
                    + (oct[2] - b'0') as u32;
                if let Ok(v) = u8::try_from(v) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One mount from /proc/self/mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// `major:minor` of the mounted file system.
    pub dev: String,
    pub mount_point: PathBuf,
    pub fstype: String,
}

pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let sep = fields.iter().position(|f| *f == "-")?;
            Some(MountEntry {
                dev: fields.get(2)?.to_string(),
                mount_point: PathBuf::from(unescape_mountinfo(fields.get(4)?)),
                fstype: fields.get(sep + 1)?.to_string(),
            })
        })
        .collect()
}

/// The last mount at `path`, if any.
pub fn find_mount(path: &Path) -> Option<MountEntry> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    parse_mountinfo(&text)
        .into_iter()
        .rev()
        .find(|m| m.mount_point == path)
}

pub fn is_mounted(path: &Path) -> bool {
    find_mount(path).is_some()
}

/// The file system type (from mountinfo) that holds `path`: the longest mount-point prefix.
pub fn fstype_of(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    parse_mountinfo(&text)
        .into_iter()
        .filter(|m| path.starts_with(&m.mount_point))
        .max_by_key(|m| m.mount_point.as_os_str().len())
        .map(|m| m.fstype)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines() {
        let text = "22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
                    99 22 0:55 / /var/tmp/a\\040b rw,nosuid shared:50 - fuse /img rw,user_id=0\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].fstype, "ext4");
        assert_eq!(m[1].mount_point, PathBuf::from("/var/tmp/a b"));
        assert_eq!(m[1].dev, "0:55");
        assert_eq!(m[1].fstype, "fuse");
    }

    #[test]
    fn unescape_edge_cases() {
        assert_eq!(unescape_mountinfo("a\\134b"), "a\\b");
        assert_eq!(unescape_mountinfo("trailing\\"), "trailing\\");
        assert_eq!(unescape_mountinfo("\\04"), "\\04");
    }

    #[test]
    fn root_is_mounted() {
        assert!(is_mounted(Path::new("/")));
        assert!(fstype_of(Path::new("/proc/self")).as_deref() == Some("proc"));
    }
}
