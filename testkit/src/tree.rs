//! Snapshots of a directory tree (type, mode, owner, links, size, content digest, symlink
//! target, user.* xattrs, optionally mtime) and their comparison, for tests that check a tree
//! survived a remount or matches a reference.

use std::collections::BTreeMap;
use std::ffi::{CStr, CString};
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::sys::{self, cstr, errno_name};

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

fn xattr_list(p: &CStr) -> Result<Vec<Vec<u8>>, i32> {
    let mut buf = vec![0u8; 65536];
    let n = sys::llistxattr(p, &mut buf)?;
    buf.truncate(n);
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
        let n = sys::lgetxattr(&p, &cname, &mut buf).unwrap_or_else(|e| {
            panic!(
                "lgetxattr {} {}: {} (listed by llistxattr)",
                path.display(),
                String::from_utf8_lossy(&name),
                errno_name(e)
            )
        });
        buf.truncate(n);
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
