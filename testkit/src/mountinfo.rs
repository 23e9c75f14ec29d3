//! The mount table as tests see it (/proc/self/mountinfo), and unmounting.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::run_with_timeout;

/// A mountinfo field with its `\ooo` escapes (space, tab, newline, backslash) decoded.
pub fn unescape(s: &str) -> String {
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

/// Every line of /proc/self/mountinfo: (mount point, fstype, source).
pub fn mount_entries() -> Vec<(PathBuf, String, String)> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut v = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        if fields.len() < 5 {
            continue;
        }
        let mp = PathBuf::from(unescape(fields[4]));
        let (fstype, source) = match fields.iter().position(|f| *f == "-") {
            Some(i) if i + 2 < fields.len() => (fields[i + 1].to_string(), unescape(fields[i + 2])),
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

/// Mount points at or below `dir`, deepest first.
pub fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = mount_entries()
        .into_iter()
        .map(|(p, _, _)| p)
        .filter(|p| p.starts_with(dir))
        .collect();
    v.sort();
    v.dedup();
    v.reverse();
    v
}

/// `umount [-l] MP` (a minute at most); reports failures on stderr and returns success.
pub fn umount(mp: &Path, lazy: bool) -> bool {
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

#[cfg(test)]
mod tests {
    use super::unescape;

    #[test]
    fn unescape_octal_escapes() {
        assert_eq!(
            unescape(r"/var/tmp/a\040b\011c\012d\134e"),
            "/var/tmp/a b\tc\nd\\e"
        );
        assert_eq!(unescape(r"no\escape\04"), r"no\escape\04");
        assert_eq!(unescape(r"\999"), r"\999");
    }
}
