//! What the control plane needs from the host, shared by the admin API and the snapshotter:
//! root-only unix sockets (mode 0600, in a directory created 0700), the mount point as
//! /proc/self/mountinfo shows it, and which mounts use a layer's directory (a mounted layer is
//! not removed). Nothing here knows about HTTP, gRPC or the engine.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// `mp` made absolute, as /proc/self/mountinfo shows it.
pub(crate) fn absolute_mountpoint(mp: &Path) -> PathBuf {
    // Canonicalize the parent only: the mount point itself may be a FUSE mount that is not
    // serving yet, and a stat of it would wait for it.
    let abs = if mp.is_absolute() {
        mp.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(mp))
            .unwrap_or_else(|_| mp.to_path_buf())
    };
    match (abs.parent(), abs.file_name()) {
        (Some(parent), Some(name)) => std::fs::canonicalize(parent)
            .map(|p| p.join(name))
            .unwrap_or(abs),
        _ => abs,
    }
}

/// Bind the unix socket `path`, root-only: its directory is created with mode 0700 if
/// missing, and the socket gets mode 0600 before it appears at `path`. A stale socket (nobody
/// answering) is replaced; a live one, or a file that is not a socket, is an error.
pub(crate) fn bind_socket(path: &Path) -> io::Result<UnixListener> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !parent.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&parent)
            .map_err(|e| with_context(e, format!("cannot create {}", parent.display())))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!(
                        "another strata daemon is serving its admin API at {} (use --admin-socket to pick another path)",
                        path.display()
                    ),
                ));
            }
            std::fs::remove_file(path).map_err(|e| {
                with_context(
                    e,
                    format!("cannot remove the stale socket {}", path.display()),
                )
            })?;
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a socket; remove it or pick another --admin-socket",
                    path.display()
                ),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(with_context(
                e,
                format!("cannot inspect {}", path.display()),
            ))
        }
    }
    // Bind under a temporary name, make it 0600, then rename it into place: the socket is
    // never reachable at `path` with looser permissions.
    let tmp = parent.join(format!(".strata-admin.{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    match UnixListener::bind(&tmp) {
        Ok(l) => {
            let r = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
                .and_then(|()| std::fs::rename(&tmp, path));
            if let Err(e) = r {
                let _ = std::fs::remove_file(&tmp);
                return Err(with_context(e, format!("cannot set up {}", path.display())));
            }
            Ok(l)
        }
        Err(_) => {
            // E.g. the temporary name is over the 107-byte limit while `path` is not.
            let l = UnixListener::bind(path)
                .map_err(|e| with_context(e, format!("cannot bind {}", path.display())))?;
            if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
                let _ = std::fs::remove_file(path);
                return Err(with_context(e, format!("cannot chmod {}", path.display())));
            }
            Ok(l)
        }
    }
}

fn with_context(e: io::Error, what: String) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// [`mount_users`] of the mounts this process sees now (/proc/self/mountinfo).
pub(crate) fn read_mount_users(mountpoint: &Path, id: &str) -> io::Result<Vec<PathBuf>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(mount_users(&info, mountpoint, id))
}

/// Undo mountinfo's octal escapes (`\040` for a space, `\011`, `\012`, `\134`).
pub fn unescape_mountinfo(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            if let Some(oct) = b.get(i + 1..i + 4) {
                if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                    let v = oct.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
                    if let Ok(v) = u8::try_from(v) {
                        out.push(v);
                        i += 4;
                        continue;
                    }
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// The mount points (from `mountinfo`, the text of /proc/self/mountinfo) of mounts whose
/// source is the directory of layer `id` (or something inside it) in the file system mounted
/// at `mountpoint`. Empty when `mountpoint` is not mounted.
pub fn mount_users(mountinfo: &str, mountpoint: &Path, id: &str) -> Vec<PathBuf> {
    struct Entry {
        dev: String,
        root: Vec<u8>,
        point: Vec<u8>,
    }
    let entries: Vec<Entry> = mountinfo
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            if f.len() < 5 {
                return None;
            }
            Some(Entry {
                dev: f[2].to_string(),
                root: unescape_mountinfo(f[3]),
                point: unescape_mountinfo(f[4]),
            })
        })
        .collect();
    let mp = mountpoint.as_os_str().as_bytes();
    // The last entry for the mount point is the one on top.
    let Some(dev) = entries
        .iter()
        .rev()
        .find(|e| e.point == mp)
        .map(|e| e.dev.clone())
    else {
        return Vec::new();
    };
    let mut prefix = b"/".to_vec();
    prefix.extend_from_slice(id.as_bytes());
    entries
        .iter()
        .filter(|e| {
            e.dev == dev
                && (e.root == prefix
                    || (e.root.starts_with(&prefix) && e.root.get(prefix.len()) == Some(&b'/')))
        })
        .map(|e| PathBuf::from(OsStr::from_bytes(&e.point)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo() {
        let info = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 0:50 / /var/lib/strata\\040mnt rw,nosuid,nodev,relatime shared:20 - fuse.strata /img rw,user_id=0
41 22 0:50 /app /run/c1/rootfs rw shared:20 - fuse.strata /img rw
42 22 0:50 /app/etc /run/c2/etc rw shared:20 - fuse.strata /img rw
43 22 0:50 /app2 /run/c3/rootfs rw shared:20 - fuse.strata /img rw
44 22 0:51 /app /run/other rw shared:21 - fuse.other x rw
45 22 0:50 /a\\040b /run/c4\\040x rw shared:20 - fuse.strata /img rw
";
        let mp = Path::new("/var/lib/strata mnt");
        assert_eq!(
            mount_users(info, mp, "app"),
            vec![
                PathBuf::from("/run/c1/rootfs"),
                PathBuf::from("/run/c2/etc")
            ]
        );
        assert_eq!(
            mount_users(info, mp, "app2"),
            vec![PathBuf::from("/run/c3/rootfs")]
        );
        assert_eq!(
            mount_users(info, mp, "a b"),
            vec![PathBuf::from("/run/c4 x")]
        );
        assert!(mount_users(info, mp, "ap").is_empty());
        assert!(mount_users(info, Path::new("/elsewhere"), "app").is_empty());
        assert!(mount_users("garbage\n\n1 2\n", mp, "app").is_empty());
        assert_eq!(unescape_mountinfo("a\\134b\\0"), b"a\\b\\0");
        assert_eq!(unescape_mountinfo("\\"), b"\\");
    }
}
