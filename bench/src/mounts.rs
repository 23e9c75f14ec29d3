//! The mount table (/proc/self/mountinfo) and the mount operations the harness needs:
//! what is mounted where, unmounting (lazily when it must), aborting a dead FUSE connection.

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use crate::{host, interrupt, Res};

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

/// The mounts of this process's namespace, in mount order (empty if mountinfo cannot be read).
pub fn mount_table() -> Vec<MountEntry> {
    parse_mountinfo(&fs::read_to_string("/proc/self/mountinfo").unwrap_or_default())
}

/// The last mount at `path`, if any.
pub fn find_mount(path: &Path) -> Option<MountEntry> {
    mount_table()
        .into_iter()
        .rev()
        .find(|m| m.mount_point == path)
}

pub fn is_mounted(path: &Path) -> bool {
    find_mount(path).is_some()
}

/// The file system type (from mountinfo) that holds `path`: the longest mount-point prefix.
pub fn fstype_of(path: &Path) -> Option<String> {
    mount_table()
        .into_iter()
        .filter(|m| path.starts_with(&m.mount_point))
        .max_by_key(|m| m.mount_point.as_os_str().len())
        .map(|m| m.fstype)
}

/// Mount points at or below `base`, deepest first.
pub fn mounts_below(base: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = mount_table()
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|p| p.starts_with(base))
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    v.dedup();
    v
}

/// Wait until `path` shows in the mount table, polling every `poll`. `daemon` is the process
/// that mounts it (its output appended to `log`): its exit ends the wait with the log's last
/// `log_lines` lines; so does `timeout`, and Ctrl-C.
pub fn wait_mounted(
    daemon: &mut Child,
    name: &str,
    path: &Path,
    log: &Path,
    log_lines: usize,
    timeout: Duration,
    poll: Duration,
) -> Res<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if is_mounted(path) {
            return Ok(());
        }
        if let Ok(Some(st)) = daemon.try_wait() {
            return Err(format!(
                "{name} exited before mounting ({st}); last lines of {}:\n{}",
                log.display(),
                host::tail(log, log_lines)
            ));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{name}: {} not mounted after {:.0} s; last lines of {}:\n{}",
                path.display(),
                timeout.as_secs_f64(),
                log.display(),
                host::tail(log, log_lines)
            ));
        }
        interrupt::check_interrupted()?;
        std::thread::sleep(poll);
    }
}

/// umount(2), falling back to a lazy detach.
pub fn unmount(p: &Path) {
    let Ok(c) = CString::new(p.as_os_str().as_bytes()) else {
        return;
    };
    // SAFETY: a NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), 0) } != 0 && is_mounted(p) {
        // SAFETY: as above.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

/// Write to /sys/fs/fuse/connections/<dev>/abort, where <dev> is the kernel's dev_t of the
/// mount (major << 20 | minor). Best effort: fusectl may not be mounted.
pub fn abort_fuse_connection(dev: &str) {
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
