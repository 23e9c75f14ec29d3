//! POSIX behaviour of a Strata mount, checked against the host file system.
//!
//! `model_seed_*`: a seeded random sequence of a few thousand operations is applied to a plain
//! directory under /var/tmp (the reference, ext4 on CI) and to the root of a Strata mount.
//! Return values, errno, file contents, stat fields (type+mode, nlink, size, uid, gid, rdev;
//! not inode numbers, not times except after an explicit utimensat), readdir sets, user.*
//! xattrs and symlink targets must agree. On a mismatch the test prints the seed, the
//! operation number and the recent operations. Override with STRATA_MODEL_SEED=N and
//! STRATA_MODEL_OPS=N (run `model_seed_env`).
//!
//! The other tests check specific rules: setgid inheritance, sticky directories, hard link
//! and directory link counts, an open unlinked file, a sparse file at 1 GiB, mmap, exec.

#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::ffi::CString;
use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use testkit::*;

// ---------------------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    Open {
        path: String,
        flags: i32,
        mode: u32,
    },
    Close {
        h: usize,
    },
    Pwrite {
        h: usize,
        off: u64,
        len: usize,
        seed: u64,
    },
    Pread {
        h: usize,
        off: u64,
        len: usize,
    },
    Ftruncate {
        h: usize,
        len: u64,
    },
    Fstat {
        h: usize,
    },
    Fsync {
        h: usize,
        data_only: bool,
    },
    Fallocate {
        h: usize,
        mode: i32,
        off: u64,
        len: u64,
    },
    Lseek {
        h: usize,
        off: u64,
        whence: i32,
    },
    CopyRange {
        hin: usize,
        off_in: u64,
        hout: usize,
        off_out: u64,
        len: usize,
    },
    Truncate {
        path: String,
        len: u64,
    },
    Mkdir {
        path: String,
        mode: u32,
    },
    Rmdir {
        path: String,
    },
    Unlink {
        path: String,
    },
    Rename {
        from: String,
        to: String,
        flags: u32,
    },
    Link {
        from: String,
        to: String,
    },
    Symlink {
        target: String,
        path: String,
    },
    Readlink {
        path: String,
    },
    Chmod {
        path: String,
        mode: u32,
    },
    Chown {
        path: String,
        uid: u32,
        gid: u32,
        nofollow: bool,
    },
    Utimens {
        path: String,
        times: Option<[(i64, i64); 2]>,
        nofollow: bool,
    },
    Mkfifo {
        path: String,
        mode: u32,
    },
    Setxattr {
        path: String,
        name: String,
        seed: u64,
        len: usize,
        flags: i32,
        nofollow: bool,
    },
    Getxattr {
        path: String,
        name: String,
        size: usize,
        nofollow: bool,
    },
    Listxattr {
        path: String,
        nofollow: bool,
    },
    Removexattr {
        path: String,
        name: String,
        nofollow: bool,
    },
    Stat {
        path: String,
        nofollow: bool,
    },
    Readdir {
        path: String,
    },
}

/// Short form of an op for logs (long names abbreviated).
fn show(op: &Op) -> String {
    let s = format!("{op:?}");
    let long = "x".repeat(255);
    let toolong = "y".repeat(256);
    s.replace(&toolong, "<256 y>").replace(&long, "<255 x>")
}

#[derive(Debug, Clone, PartialEq)]
struct St {
    mode: u32,
    nlink: u64,
    uid: u32,
    gid: u32,
    size: Option<u64>,
    rdev: u64,
}

#[derive(Clone, PartialEq)]
enum Val {
    Unit,
    Int(i64),
    Bytes(Vec<u8>),
    Stat(St),
    Names(Vec<Vec<u8>>),
    Times((i64, i64), (i64, i64)),
    /// A result that breaks a rule on its own (e.g. lseek out of range).
    Invalid(String),
}

impl std::fmt::Debug for Val {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Val::Unit => write!(f, "ok"),
            Val::Int(i) => write!(f, "{i}"),
            Val::Bytes(b) if b.len() <= 32 => write!(f, "bytes{:?}", b),
            Val::Bytes(b) => write!(f, "bytes(len {}, fnv {:016x})", b.len(), hash(b)),
            Val::Stat(s) => write!(f, "{s:?}"),
            Val::Names(n) => {
                let v: Vec<String> = n
                    .iter()
                    .map(|x| String::from_utf8_lossy(x).into_owned())
                    .collect();
                write!(f, "{v:?}")
            }
            Val::Times(a, m) => write!(f, "atime {a:?} mtime {m:?}"),
            Val::Invalid(s) => write!(f, "INVALID: {s}"),
        }
    }
}

type Outcome = Result<Val, i32>;

fn fmt_outcome(o: &Outcome) -> String {
    match o {
        Ok(v) => format!("{v:?}"),
        Err(e) => errno_name(*e),
    }
}

struct Side {
    base: PathBuf,
    /// Open handles (closed when dropped).
    fds: Vec<OwnedFd>,
}

impl Side {
    fn p(&self, rel: &str) -> CString {
        let mut b = self.base.as_os_str().as_bytes().to_vec();
        b.push(b'/');
        b.extend_from_slice(rel.as_bytes());
        CString::new(b).unwrap()
    }
}

#[allow(clippy::unnecessary_cast)] // st_nlink/st_rdev widths differ between targets
fn st_of(s: &libc::stat) -> St {
    let is_dir = s.st_mode & libc::S_IFMT == libc::S_IFDIR;
    St {
        mode: s.st_mode,
        nlink: s.st_nlink as u64,
        uid: s.st_uid,
        gid: s.st_gid,
        size: if is_dir { None } else { Some(s.st_size as u64) },
        rdev: s.st_rdev as u64,
    }
}

fn unit(r: sys::SysResult<()>) -> Outcome {
    r.map(|_| Val::Unit)
}

fn exec(op: &Op, side: &mut Side) -> Outcome {
    match op {
        Op::Open { path, flags, mode } => {
            let fd = sys::open(&side.p(path), *flags, *mode)?;
            side.fds.push(fd);
            Ok(Val::Unit)
        }
        Op::Close { h } => unit(sys::close(side.fds.remove(*h))),
        Op::Pwrite { h, off, len, seed } => {
            let data = pattern(*seed, *len);
            sys::pwrite(&side.fds[*h], &data, *off as i64).map(|n| Val::Int(n as i64))
        }
        Op::Pread { h, off, len } => {
            let mut buf = vec![0u8; *len];
            let n = sys::pread(&side.fds[*h], &mut buf, *off as i64)?;
            buf.truncate(n);
            Ok(Val::Bytes(buf))
        }
        Op::Ftruncate { h, len } => unit(sys::ftruncate(&side.fds[*h], *len as i64)),
        Op::Fstat { h } => sys::fstat(&side.fds[*h]).map(|s| Val::Stat(st_of(&s))),
        Op::Fsync { h, data_only } => {
            let fd = &side.fds[*h];
            unit(if *data_only {
                sys::fdatasync(fd)
            } else {
                sys::fsync(fd)
            })
        }
        Op::Fallocate { h, mode, off, len } => unit(sys::fallocate(
            &side.fds[*h],
            *mode,
            *off as i64,
            *len as i64,
        )),
        Op::Lseek { h, off, whence } => {
            let fd = &side.fds[*h];
            let r = sys::lseek(fd, *off as i64, *whence);
            let size = match sys::fstat(fd) {
                // SEEK_DATA/SEEK_HOLE only mean something for regular files.
                Ok(s) if s.st_mode & libc::S_IFMT != libc::S_IFREG => return Ok(Val::Unit),
                Ok(s) => s.st_size as u64,
                Err(e) => return Err(e),
            };
            // Bytes [from, to) must read as zeros (a claimed hole must not hide data).
            // (Read through a fresh O_RDONLY descriptor: the handle may be write-only.)
            let zeros = |from: u64, to: u64| -> bool {
                if to <= from {
                    return true;
                }
                let raw = fd.as_raw_fd();
                let proc_path = CString::new(format!("/proc/self/fd/{raw}")).unwrap();
                let rfd = sys::open(&proc_path, libc::O_RDONLY | libc::O_CLOEXEC, 0)
                    .unwrap_or_else(|e| panic!("reopen {raw} for reading: {}", errno_name(e)));
                let mut buf = vec![0u8; (to - from) as usize];
                let n = sys::pread(&rfd, &mut buf, from as i64);
                drop(rfd);
                let n =
                    n.unwrap_or_else(|e| panic!("pread for the lseek check: {}", errno_name(e)));
                buf[..n].iter().all(|b| *b == 0)
            };
            let what = if *whence == libc::SEEK_DATA {
                "SEEK_DATA"
            } else {
                "SEEK_HOLE"
            };
            if *off >= size {
                // Beyond EOF both must be ENXIO.
                return r.map(Val::Int);
            }
            let r = match r {
                Err(e) if *whence == libc::SEEK_DATA && e == libc::ENXIO => {
                    // "no data after off": only right if the rest reads as zeros
                    return if zeros(*off, size) {
                        Ok(Val::Unit)
                    } else {
                        Ok(Val::Invalid(format!(
                            "SEEK_DATA from {off} gave ENXIO but [{off}, {size}) holds data"
                        )))
                    };
                }
                Err(e) => return Err(e),
                Ok(r) => r as u64,
            };
            let ok = if *whence == libc::SEEK_DATA {
                r >= *off && r < size
            } else {
                r >= *off && r <= size
            };
            if ok && *whence == libc::SEEK_DATA && !zeros(*off, r) {
                Ok(Val::Invalid(format!(
                    "SEEK_DATA from {off} skipped data before {r}"
                )))
            } else if ok {
                Ok(Val::Unit)
            } else {
                Ok(Val::Invalid(format!(
                    "{what} from {off} returned {r} with size {size}"
                )))
            }
        }
        Op::CopyRange {
            hin,
            off_in,
            hout,
            off_out,
            len,
        } => {
            let mut oi = *off_in as i64;
            let mut oo = *off_out as i64;
            sys::copy_file_range(&side.fds[*hin], &mut oi, &side.fds[*hout], &mut oo, *len)
                .map(|n| Val::Int(n as i64))
        }
        Op::Truncate { path, len } => unit(sys::truncate(&side.p(path), *len as i64)),
        Op::Mkdir { path, mode } => unit(sys::mkdir(&side.p(path), *mode)),
        Op::Rmdir { path } => unit(sys::rmdir(&side.p(path))),
        Op::Unlink { path } => unit(sys::unlink(&side.p(path))),
        Op::Rename { from, to, flags } => unit(sys::renameat2(&side.p(from), &side.p(to), *flags)),
        Op::Link { from, to } => unit(sys::link(&side.p(from), &side.p(to))),
        Op::Symlink { target, path } => {
            let t = CString::new(target.as_bytes()).unwrap();
            unit(sys::symlink(&t, &side.p(path)))
        }
        Op::Readlink { path } => {
            let mut buf = vec![0u8; 4096];
            let n = sys::readlink(&side.p(path), &mut buf)?;
            buf.truncate(n);
            Ok(Val::Bytes(buf))
        }
        Op::Chmod { path, mode } => unit(sys::chmod(&side.p(path), *mode)),
        Op::Chown {
            path,
            uid,
            gid,
            nofollow,
        } => {
            let f = if *nofollow {
                libc::AT_SYMLINK_NOFOLLOW
            } else {
                0
            };
            unit(sys::fchownat(&side.p(path), *uid, *gid, f))
        }
        Op::Utimens {
            path,
            times,
            nofollow,
        } => {
            let f = if *nofollow {
                libc::AT_SYMLINK_NOFOLLOW
            } else {
                0
            };
            let p = side.p(path);
            match times {
                None => unit(sys::utimensat(&p, None, f)),
                Some(t) => {
                    let ts = [
                        libc::timespec {
                            tv_sec: t[0].0,
                            tv_nsec: t[0].1,
                        },
                        libc::timespec {
                            tv_sec: t[1].0,
                            tv_nsec: t[1].1,
                        },
                    ];
                    sys::utimensat(&p, Some(&ts), f)?;
                    let s = if *nofollow {
                        sys::lstat(&p)
                    } else {
                        sys::stat(&p)
                    }?;
                    Ok(Val::Times(
                        (s.st_atime, s.st_atime_nsec),
                        (s.st_mtime, s.st_mtime_nsec),
                    ))
                }
            }
        }
        Op::Mkfifo { path, mode } => unit(sys::mknod(&side.p(path), libc::S_IFIFO | *mode, 0)),
        Op::Setxattr {
            path,
            name,
            seed,
            len,
            flags,
            nofollow,
        } => {
            let v = pattern(*seed, *len);
            let n = CString::new(name.as_bytes()).unwrap();
            let p = side.p(path);
            unit(if *nofollow {
                sys::lsetxattr(&p, &n, &v, *flags)
            } else {
                sys::setxattr(&p, &n, &v, *flags)
            })
        }
        Op::Getxattr {
            path,
            name,
            size,
            nofollow,
        } => {
            let n = CString::new(name.as_bytes()).unwrap();
            let p = side.p(path);
            // A size of 0 asks for the value's length (a null buffer).
            let mut buf = vec![0u8; *size];
            let r = if *nofollow {
                sys::lgetxattr(&p, &n, &mut buf)
            } else {
                sys::getxattr(&p, &n, &mut buf)
            }?;
            if *size == 0 {
                return Ok(Val::Int(r as i64));
            }
            buf.truncate(r);
            Ok(Val::Bytes(buf))
        }
        Op::Listxattr { path, nofollow } => {
            let p = side.p(path);
            let mut buf = vec![0u8; 65536];
            let r = if *nofollow {
                sys::llistxattr(&p, &mut buf)
            } else {
                sys::listxattr(&p, &mut buf)
            }?;
            buf.truncate(r);
            let mut names: Vec<Vec<u8>> = buf
                .split(|b| *b == 0)
                .filter(|s| s.starts_with(b"user."))
                .map(|s| s.to_vec())
                .collect();
            names.sort();
            Ok(Val::Names(names))
        }
        Op::Removexattr {
            path,
            name,
            nofollow,
        } => {
            let n = CString::new(name.as_bytes()).unwrap();
            let p = side.p(path);
            unit(if *nofollow {
                sys::lremovexattr(&p, &n)
            } else {
                sys::removexattr(&p, &n)
            })
        }
        Op::Stat { path, nofollow } => {
            let p = side.p(path);
            if *nofollow {
                sys::lstat(&p)
            } else {
                sys::stat(&p)
            }
            .map(|s| Val::Stat(st_of(&s)))
        }
        Op::Readdir { path } => {
            let full = side.base.join(path);
            match fs::read_dir(&full) {
                Err(e) => Err(e.raw_os_error().unwrap_or(libc::EIO)),
                Ok(rd) => {
                    let mut names = Vec::new();
                    for de in rd {
                        match de {
                            Ok(de) => names.push(de.file_name().as_bytes().to_vec()),
                            Err(e) => return Err(e.raw_os_error().unwrap_or(libc::EIO)),
                        }
                    }
                    names.sort();
                    Ok(Val::Names(names))
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Generation
// ---------------------------------------------------------------------------------------

struct Gen {
    rng: Rng,
    long: String,
    toolong: String,
}

const MODES: &[u32] = &[
    0o644, 0o600, 0o755, 0o777, 0o640, 0o000, 0o4755, 0o2755, 0o1777, 0o2644, 0o6711,
];
const XNAMES: &[&str] = &["user.a", "user.b", "user.mime_type", "user.c"];

impl Gen {
    fn name(&mut self) -> String {
        let r = self.rng.below(100);
        if r < 5 {
            self.long.clone()
        } else if r < 7 {
            self.toolong.clone()
        } else {
            self.rng.pick(&["a", "b", "c", "d", "e", "f"]).to_string()
        }
    }

    /// A path: usually one that exists in the reference tree, sometimes a fresh one.
    fn path(&mut self, existing: &[(String, bool)]) -> String {
        if !existing.is_empty() && self.rng.chance(65, 100) {
            return self.rng.pick(existing).0.clone();
        }
        self.new_path(existing)
    }

    /// A (probably) new name inside an existing directory (or a random depth path).
    fn new_path(&mut self, existing: &[(String, bool)]) -> String {
        let dirs: Vec<&String> = existing
            .iter()
            .filter(|(_, d)| *d)
            .map(|(p, _)| p)
            .collect();
        let r = self.rng.below(100);
        if r < 10 {
            // random nested path, often through things that do not exist or are not dirs
            let depth = self.rng.range(1, 3);
            let v: Vec<String> = (0..depth).map(|_| self.name()).collect();
            return v.join("/");
        }
        if dirs.is_empty() || r < 40 {
            return self.name();
        }
        let d = (*self.rng.pick(&dirs)).clone();
        format!("{d}/{}", self.name())
    }

    fn mode(&mut self) -> u32 {
        *self.rng.pick(MODES)
    }

    fn offset(&mut self) -> u64 {
        match self.rng.below(6) {
            0 => 0,
            1 => self.rng.below(8192),
            2 => 4096 * self.rng.below(64),
            3 => 4096 * self.rng.range(1, 64) - 1,
            4 => self.rng.below(1 << 20),
            _ => self.rng.below(4 << 20),
        }
    }

    fn length(&mut self) -> usize {
        match self.rng.below(5) {
            0 => self.rng.below(16) as usize,
            1 => self.rng.below(5000) as usize,
            2 => 4096 * self.rng.range(1, 4) as usize,
            3 => self.rng.below(70000) as usize,
            _ => self.rng.below(300_000) as usize,
        }
    }

    fn target(&mut self, existing: &[(String, bool)]) -> String {
        // Relative targets without "..": whatever they resolve to stays inside the tree.
        let r = self.rng.below(10);
        if r < 5 && !existing.is_empty() {
            self.rng.pick(existing).0.clone()
        } else if r < 6 {
            String::new()
        } else if r < 7 {
            self.long.clone()
        } else {
            let depth = self.rng.range(1, 2);
            let v: Vec<String> = (0..depth)
                .map(|_| self.rng.pick(&["a", "b", "c", "nonexistent"]).to_string())
                .collect();
            v.join("/")
        }
    }

    fn op(&mut self, existing: &[(String, bool)], handles: usize) -> Op {
        let r = self.rng.below(1000);
        let h = |g: &mut Gen| g.rng.below(handles as u64) as usize;
        let handle_op = r < 420;
        if handle_op && (handles == 0 || (handles < 8 && self.rng.chance(1, 6))) {
            return self.open(existing);
        }
        if handle_op && handles >= 8 && self.rng.chance(1, 3) {
            return Op::Close { h: h(self) };
        }
        match r {
            0..=29 => Op::Close { h: h(self) },
            30..=129 => Op::Pwrite {
                h: h(self),
                off: self.offset(),
                len: self.length(),
                seed: self.rng.next_u64(),
            },
            130..=209 => Op::Pread {
                h: h(self),
                off: self.offset(),
                len: self.length(),
            },
            210..=239 => Op::Ftruncate {
                h: h(self),
                len: self.offset(),
            },
            240..=289 => Op::Fstat { h: h(self) },
            290..=309 => Op::Fsync {
                h: h(self),
                data_only: self.rng.chance(1, 2),
            },
            310..=349 => {
                let mode = *self.rng.pick(&[
                    0,
                    libc::FALLOC_FL_KEEP_SIZE,
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                ]);
                Op::Fallocate {
                    h: h(self),
                    mode,
                    off: self.offset(),
                    len: self.length().max(1) as u64,
                }
            }
            350..=369 => Op::Lseek {
                h: h(self),
                off: self.offset(),
                whence: if self.rng.chance(1, 2) {
                    libc::SEEK_DATA
                } else {
                    libc::SEEK_HOLE
                },
            },
            370..=419 => Op::CopyRange {
                hin: h(self),
                off_in: self.offset(),
                hout: h(self),
                off_out: self.offset(),
                len: self.length(),
            },
            420..=449 => Op::Truncate {
                path: self.path(existing),
                len: self.offset(),
            },
            450..=509 => Op::Mkdir {
                path: self.new_path(existing),
                mode: self.mode(),
            },
            510..=539 => Op::Rmdir {
                path: self.path(existing),
            },
            540..=579 => Op::Unlink {
                path: self.path(existing),
            },
            580..=639 => {
                let flags = match self.rng.below(10) {
                    0..=6 => 0,
                    7 | 8 => libc::RENAME_NOREPLACE,
                    _ => libc::RENAME_EXCHANGE,
                };
                let from = self.path(existing);
                let to = if self.rng.chance(1, 2) {
                    self.path(existing)
                } else {
                    self.new_path(existing)
                };
                Op::Rename { from, to, flags }
            }
            640..=669 => Op::Link {
                from: self.path(existing),
                to: self.new_path(existing),
            },
            670..=699 => Op::Symlink {
                target: self.target(existing),
                path: self.new_path(existing),
            },
            700..=714 => Op::Readlink {
                path: self.path(existing),
            },
            715..=744 => Op::Chmod {
                path: self.path(existing),
                mode: self.mode(),
            },
            745..=769 => {
                let ids = [0u32, 1000, 2000, u32::MAX];
                Op::Chown {
                    path: self.path(existing),
                    uid: *self.rng.pick(&ids),
                    gid: *self.rng.pick(&ids),
                    nofollow: self.rng.chance(1, 3),
                }
            }
            770..=789 => {
                let times = if self.rng.chance(1, 4) {
                    None
                } else {
                    Some([
                        (
                            self.rng.below(2_000_000_000) as i64,
                            self.rng.below(1_000_000_000) as i64,
                        ),
                        (
                            self.rng.below(2_000_000_000) as i64,
                            self.rng.below(1_000_000_000) as i64,
                        ),
                    ])
                };
                Op::Utimens {
                    path: self.path(existing),
                    times,
                    nofollow: self.rng.chance(1, 3),
                }
            }
            790..=804 => Op::Mkfifo {
                path: self.new_path(existing),
                mode: *self.rng.pick(&[0o644, 0o600]),
            },
            805..=849 => {
                // ext4 keeps all xattrs of an inode in one 4 KiB block: stay well below that.
                let len = if self.rng.chance(1, 20) {
                    700
                } else {
                    self.rng.below(300) as usize
                };
                Op::Setxattr {
                    path: self.path(existing),
                    name: self.rng.pick(XNAMES).to_string(),
                    seed: self.rng.next_u64(),
                    len,
                    flags: *self
                        .rng
                        .pick(&[0, 0, libc::XATTR_CREATE, libc::XATTR_REPLACE]),
                    nofollow: self.rng.chance(1, 4),
                }
            }
            850..=879 => Op::Getxattr {
                path: self.path(existing),
                name: self.rng.pick(XNAMES).to_string(),
                size: *self.rng.pick(&[0usize, 1, 8192, 8192]),
                nofollow: self.rng.chance(1, 4),
            },
            880..=899 => Op::Listxattr {
                path: self.path(existing),
                nofollow: self.rng.chance(1, 4),
            },
            900..=919 => Op::Removexattr {
                path: self.path(existing),
                name: self.rng.pick(XNAMES).to_string(),
                nofollow: self.rng.chance(1, 4),
            },
            920..=969 => Op::Stat {
                path: self.path(existing),
                nofollow: self.rng.chance(1, 2),
            },
            _ => Op::Readdir {
                path: self.path(existing),
            },
        }
    }

    fn open(&mut self, existing: &[(String, bool)]) -> Op {
        let acc = *self
            .rng
            .pick(&[libc::O_RDONLY, libc::O_WRONLY, libc::O_RDWR, libc::O_RDWR]);
        let mut flags = acc | libc::O_NONBLOCK | libc::O_CLOEXEC;
        if self.rng.chance(1, 2) {
            flags |= libc::O_CREAT;
            if self.rng.chance(1, 8) {
                flags |= libc::O_EXCL;
            }
        }
        if self.rng.chance(1, 10) {
            flags |= libc::O_TRUNC;
        }
        if self.rng.chance(1, 20) {
            flags |= libc::O_DIRECTORY;
        }
        if self.rng.chance(1, 20) {
            flags |= libc::O_NOFOLLOW;
        }
        let path = if flags & libc::O_CREAT != 0 && self.rng.chance(1, 2) {
            self.new_path(existing)
        } else {
            self.path(existing)
        };
        Op::Open {
            path,
            flags,
            mode: self.mode(),
        }
    }
}

/// All entries below `base`, sorted, as (relative path, is_dir).
fn list_tree(base: &Path) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        let dir = if rel.is_empty() {
            base.to_path_buf()
        } else {
            base.join(&rel)
        };
        let Ok(rd) = fs::read_dir(&dir) else { continue };
        for de in rd.flatten() {
            let name = de.file_name().to_string_lossy().into_owned();
            let r = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let is_dir = de.file_type().map(|t| t.is_dir()).unwrap_or(false);
            if is_dir {
                stack.push(r.clone());
            }
            out.push((r, is_dir));
        }
    }
    out.sort();
    out
}

/// Errno pairs POSIX leaves to the implementation.
fn normalize(op: &Op, o: Outcome) -> Outcome {
    match (op, o) {
        // rmdir / rename onto a non-empty directory: ENOTEMPTY or EEXIST.
        (Op::Rmdir { .. } | Op::Rename { .. }, Err(libc::EEXIST)) => Err(libc::ENOTEMPTY),
        (_, o) => o,
    }
}

fn run_model(seed: u64, nops: usize) {
    let td = TestDir::new(&format!("model{seed}"));
    let (img, mut mount) = td.mkfs_and_mount("1G");
    let refdir = td.plain_dir("ref");
    let mnt = mount.mnt.clone();
    let b = run_ops(seed, nops, &refdir, &mount.root());

    // Persistence of the final state: clean stop, fsck, remount, compare again.
    let sa = snapshot(&refdir, false);
    drop(b);
    mount.stop();
    assert_fsck_clean(&img, &format!("seed {seed}: after the model run"));
    mount = Mount::start(&img, &mnt);
    let sb = snapshot(&mount.root(), false);
    assert_snapshots_equal(
        &format!("seed {seed}: after remount (expected = ext4 reference, actual = strata)"),
        &sa,
        &refdir,
        &sb,
        &mount.root(),
        true,
    );
    mount.stop();
}

/// Apply `nops` random operations to both trees, comparing as we go. Returns side B (its
/// handles are all closed).
fn run_ops(seed: u64, nops: usize, base_a: &Path, base_b: &Path) -> Side {
    let mut gen = Gen {
        rng: Rng::new(seed),
        long: "x".repeat(255),
        toolong: "y".repeat(256),
    };
    let mut a = Side {
        base: base_a.to_path_buf(),
        fds: Vec::new(),
    };
    let mut b = Side {
        base: base_b.to_path_buf(),
        fds: Vec::new(),
    };
    let mut recent: VecDeque<String> = VecDeque::new();
    let mut stats: std::collections::BTreeMap<&'static str, (u32, u32)> = Default::default();

    let compare_trees = |when: &str, a: &Side, b: &Side| {
        let sa = snapshot(&a.base, false);
        let sb = snapshot(&b.base, false);
        assert_snapshots_equal(
            &format!(
                "seed {seed}: tree comparison {when} (expected = ext4 reference, actual = strata)"
            ),
            &sa,
            &a.base,
            &sb,
            &b.base,
            true,
        );
    };

    for i in 0..nops {
        let existing = list_tree(&a.base);
        let op = gen.op(&existing, a.fds.len());
        let ra = normalize(&op, exec(&op, &mut a));
        let rb = normalize(&op, exec(&op, &mut b));
        let kind: &'static str = match &op {
            Op::Open { .. } => "open",
            Op::Close { .. } => "close",
            Op::Pwrite { .. } => "pwrite",
            Op::Pread { .. } => "pread",
            Op::Ftruncate { .. } => "ftruncate",
            Op::Fstat { .. } => "fstat",
            Op::Fsync { .. } => "fsync",
            Op::Fallocate { .. } => "fallocate",
            Op::Lseek { .. } => "lseek",
            Op::CopyRange { .. } => "copy_file_range",
            Op::Truncate { .. } => "truncate",
            Op::Mkdir { .. } => "mkdir",
            Op::Rmdir { .. } => "rmdir",
            Op::Unlink { .. } => "unlink",
            Op::Rename { .. } => "rename",
            Op::Link { .. } => "link",
            Op::Symlink { .. } => "symlink",
            Op::Readlink { .. } => "readlink",
            Op::Chmod { .. } => "chmod",
            Op::Chown { .. } => "chown",
            Op::Utimens { .. } => "utimensat",
            Op::Mkfifo { .. } => "mkfifo",
            Op::Setxattr { .. } => "setxattr",
            Op::Getxattr { .. } => "getxattr",
            Op::Listxattr { .. } => "listxattr",
            Op::Removexattr { .. } => "removexattr",
            Op::Stat { .. } => "stat",
            Op::Readdir { .. } => "readdir",
        };
        let e = stats.entry(kind).or_default();
        if ra.is_ok() {
            e.0 += 1;
        } else {
            e.1 += 1;
        }
        let line = format!(
            "#{i}: {} -> ref {} / strata {}",
            show(&op),
            fmt_outcome(&ra),
            fmt_outcome(&rb)
        );
        if ra != rb || matches!(ra, Ok(Val::Invalid(_))) || matches!(rb, Ok(Val::Invalid(_))) {
            let mut extra = String::new();
            if let (Ok(Val::Bytes(x)), Ok(Val::Bytes(y))) = (&ra, &rb) {
                let pos = x.iter().zip(y.iter()).position(|(p, q)| p != q);
                extra = format!(
                    "\n  bytes: ref len {} strata len {}, first difference at {:?}",
                    x.len(),
                    y.len(),
                    pos
                );
            }
            let hist: Vec<String> = recent.iter().cloned().collect();
            panic!(
                "seed {seed}: mismatch at op #{i}\n  op: {}\n  ref (ext4): {}\n  strata:     {}{extra}\n  open handles: {}\nrecent ops:\n{}\n(reproduce: STRATA_MODEL_SEED={seed} STRATA_MODEL_OPS={} cargo test --test posix_model model_seed_env)",
                show(&op),
                fmt_outcome(&ra),
                fmt_outcome(&rb),
                a.fds.len(),
                hist.join("\n"),
                i + 1
            );
        }
        recent.push_back(line);
        if recent.len() > 25 {
            recent.pop_front();
        }
        if i % 97 == 96 {
            compare_trees(&format!("after op #{i}"), &a, &b);
        }
    }

    eprintln!("seed {seed}: {nops} ops, per kind (ok, err): {stats:?}");
    // Every kind of operation must have succeeded at least once, else the test is too weak.
    for k in [
        "open",
        "pwrite",
        "pread",
        "mkdir",
        "rename",
        "link",
        "symlink",
        "setxattr",
        "fallocate",
        "copy_file_range",
    ] {
        let (ok, _) = stats.get(k).copied().unwrap_or_default();
        assert!(
            ok > 0 || nops < 1000,
            "seed {seed}: no successful {k} in {nops} ops (generator too weak)"
        );
    }

    // Close everything and compare the whole tree.
    while !a.fds.is_empty() {
        let op = Op::Close { h: 0 };
        let ra = exec(&op, &mut a);
        let rb = exec(&op, &mut b);
        assert_eq!(
            fmt_outcome(&ra),
            fmt_outcome(&rb),
            "seed {seed}: final close"
        );
    }
    compare_trees("at the end", &a, &b);
    b
}

/// The model against itself (two plain directories on the host): checks the generator and
/// the comparison are deterministic. Needs no mount.
#[test]
fn model_selftest_host_vs_host() {
    if geteuid() != 0 {
        eprintln!("SKIP: needs root (chown)");
        return;
    }
    let td = TestDir::new("model-self");
    let _ = run_ops(42, nops().min(1500), &td.plain_dir("a"), &td.plain_dir("b"));
}

fn nops() -> usize {
    std::env::var("STRATA_MODEL_OPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4000)
}

#[test]
fn model_seed_1() {
    require_root_and_fuse!();
    run_model(1, nops());
}

#[test]
fn model_seed_2() {
    require_root_and_fuse!();
    run_model(2, nops());
}

#[test]
fn model_seed_3() {
    require_root_and_fuse!();
    run_model(0xdead_beef, nops());
}

#[test]
fn model_seed_4() {
    require_root_and_fuse!();
    run_model(20250101, nops());
}

/// Reproduce one seed: STRATA_MODEL_SEED=N [STRATA_MODEL_OPS=M].
#[test]
fn model_seed_env() {
    require_root_and_fuse!();
    let Some(seed) = std::env::var("STRATA_MODEL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    else {
        eprintln!("SKIP: set STRATA_MODEL_SEED to run one seed");
        return;
    };
    run_model(seed, nops());
}

// ---------------------------------------------------------------------------------------
// Explicit rules
// ---------------------------------------------------------------------------------------

fn lstat(p: &Path) -> fs::Metadata {
    fs::symlink_metadata(p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()))
}

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
}

fn chown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(p, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", p.display()));
}

#[test]
fn mount_table_entry() {
    require_root_and_fuse!();
    let td = TestDir::new("mtab");
    let (img, m) = td.mkfs_and_mount("256M");
    let (fstype, source) = mount_info(&m.mnt).expect("mounted");
    assert_eq!(fstype, "fuse", "fstype (subtype must be empty)");
    assert_eq!(
        source,
        img.display().to_string(),
        "fsname must be the image path"
    );
    let opts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = opts
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(m.mnt.to_str().unwrap()))
        .unwrap()
        .to_string();
    assert!(line.contains("allow_other"), "allow_other missing: {line}");
    assert!(
        line.contains("default_permissions"),
        "default_permissions missing: {line}"
    );
    m.stop();
}

/// Runs the setgid scenario under `base` and returns what it observed.
fn setgid_scenario(base: &Path) -> Vec<String> {
    let mut obs = Vec::new();
    let d = base.join("sg");
    fs::create_dir(&d).unwrap();
    chown(&d, 0, 2000);
    chmod(&d, 0o2777);
    // root creates a file, a dir, a symlink, a fifo
    fs::write(d.join("file"), b"x").unwrap();
    fs::create_dir(d.join("sub")).unwrap();
    std::os::unix::fs::symlink("file", d.join("link")).unwrap();
    let fifo = cstr(&d.join("fifo"));
    assert_eq!(
        sys::mknod(&fifo, libc::S_IFIFO | 0o644, 0),
        Ok(()),
        "mknod fifo"
    );
    for n in ["file", "sub", "link", "fifo"] {
        let m = lstat(&d.join(n));
        obs.push(format!(
            "{n}: gid {} setgid {}",
            m.gid(),
            m.mode() & 0o2000 != 0
        ));
    }
    // a nested directory inherits again
    fs::create_dir(d.join("sub/deeper")).unwrap();
    let m = lstat(&d.join("sub/deeper"));
    obs.push(format!(
        "sub/deeper: gid {} setgid {}",
        m.gid(),
        m.mode() & 0o2000 != 0
    ));
    // a non-member creates a file asking for S_ISGID: gid is inherited, S_ISGID dropped
    let p = cstr(&d.join("user_file"));
    let r = as_user(1001, 1001, || {
        code(sys::open(&p, libc::O_CREAT | libc::O_WRONLY, 0o2755))
    });
    obs.push(format!("user create: {}", errno_name(r)));
    let m = lstat(&d.join("user_file"));
    obs.push(format!(
        "user_file: uid {} gid {} mode {:o}",
        m.uid(),
        m.gid(),
        m.mode() & 0o7777
    ));
    // the owner (not in group 2000) chmods g+s: silently cleared
    let r = as_user(1001, 1001, || code(sys::chmod(&p, 0o2755)));
    let m = lstat(&d.join("user_file"));
    obs.push(format!(
        "user chmod g+s: {} mode {:o}",
        errno_name(r),
        m.mode() & 0o7777
    ));
    // the directory without setgid: new entries get the creator's gid
    chmod(&d, 0o0777);
    fs::write(d.join("plain"), b"").unwrap();
    obs.push(format!("plain: gid {}", lstat(&d.join("plain")).gid()));
    obs
}

#[test]
fn setgid_directory_inheritance() {
    require_root_and_fuse!();
    let td = TestDir::new("setgid");
    let (_img, m) = td.mkfs_and_mount("256M");
    let reference = setgid_scenario(&td.plain_dir("ref"));
    // Unprivileged users reach a layer the way a container does: through a bind mount of it
    // (the mount root itself is root-only).
    let view = m.bind_layer_root();
    let strata = setgid_scenario(view.path());
    drop(view);
    let expected = vec![
        "file: gid 2000 setgid false",
        "sub: gid 2000 setgid true",
        "link: gid 2000 setgid false",
        "fifo: gid 2000 setgid false",
        "sub/deeper: gid 2000 setgid true",
        "user create: OK",
        "user_file: uid 1001 gid 2000 mode 755",
        "user chmod g+s: OK mode 755",
        "plain: gid 0",
    ];
    assert_eq!(
        reference, expected,
        "reference file system disagrees with the expected rules (test bug?)"
    );
    assert_eq!(strata, expected, "setgid inheritance on strata");
    m.stop();
}

fn sticky_scenario(base: &Path) -> Vec<String> {
    let mut obs = Vec::new();
    let s = base.join("sticky");
    fs::create_dir(&s).unwrap();
    chmod(&s, 0o1777);
    let f1 = cstr(&s.join("f1"));
    let f1x = cstr(&s.join("f1x"));
    let f2 = cstr(&s.join("f2"));
    let create = |p: &CString| code(sys::open(p, libc::O_CREAT | libc::O_WRONLY, 0o666));
    obs.push(format!(
        "1001 create f1: {}",
        errno_name(as_user(1001, 1001, || create(&f1)))
    ));
    obs.push(format!(
        "1002 unlink f1: {}",
        errno_name(as_user(1002, 1002, || code(sys::unlink(&f1))))
    ));
    obs.push(format!(
        "1002 rename f1: {}",
        errno_name(as_user(1002, 1002, || code(sys::rename(&f1, &f1x))))
    ));
    obs.push(format!(
        "1002 create f2: {}",
        errno_name(as_user(1002, 1002, || create(&f2)))
    ));
    obs.push(format!(
        "1002 rename f2 over f1: {}",
        errno_name(as_user(1002, 1002, || code(sys::rename(&f2, &f1))))
    ));
    obs.push(format!(
        "1002 unlink f2: {}",
        errno_name(as_user(1002, 1002, || code(sys::unlink(&f2))))
    ));
    obs.push(format!(
        "1001 unlink f1: {}",
        errno_name(as_user(1001, 1001, || code(sys::unlink(&f1))))
    ));
    // the directory's owner may delete others' files
    let o = base.join("owned");
    fs::create_dir(&o).unwrap();
    chown(&o, 1002, 1002);
    chmod(&o, 0o1777);
    let h = cstr(&o.join("h"));
    obs.push(format!(
        "1001 create owned/h: {}",
        errno_name(as_user(1001, 1001, || create(&h)))
    ));
    obs.push(format!(
        "1002 (dir owner) unlink owned/h: {}",
        errno_name(as_user(1002, 1002, || code(sys::unlink(&h))))
    ));
    // without the sticky bit anyone with write permission may delete
    let p = base.join("open");
    fs::create_dir(&p).unwrap();
    chmod(&p, 0o0777);
    let g = cstr(&p.join("g"));
    obs.push(format!(
        "1001 create open/g: {}",
        errno_name(as_user(1001, 1001, || create(&g)))
    ));
    obs.push(format!(
        "1002 unlink open/g: {}",
        errno_name(as_user(1002, 1002, || code(sys::unlink(&g))))
    ));
    // and without write permission nobody but root may
    chmod(&p, 0o0755);
    // (The path is made here: the forked child only makes system calls.)
    let g2 = cstr(&p.join("g2"));
    obs.push(format!(
        "1001 create open/g2: {}",
        errno_name(as_user(1001, 1001, || create(&g2)))
    ));
    obs
}

#[test]
fn sticky_bit_rules() {
    require_root_and_fuse!();
    let td = TestDir::new("sticky");
    let (_img, m) = td.mkfs_and_mount("256M");
    let expected = vec![
        "1001 create f1: OK",
        "1002 unlink f1: EPERM",
        "1002 rename f1: EPERM",
        "1002 create f2: OK",
        "1002 rename f2 over f1: EPERM",
        "1002 unlink f2: OK",
        "1001 unlink f1: OK",
        "1001 create owned/h: OK",
        "1002 (dir owner) unlink owned/h: OK",
        "1001 create open/g: OK",
        "1002 unlink open/g: OK",
        "1001 create open/g2: EACCES",
    ];
    let reference = sticky_scenario(&td.plain_dir("ref"));
    assert_eq!(
        reference, expected,
        "reference file system disagrees with the expected rules (test bug?)"
    );
    let view = m.bind_layer_root();
    let strata = sticky_scenario(view.path());
    drop(view);
    assert_eq!(strata, expected, "sticky directory rules on strata");
    m.stop();
}

#[test]
fn hard_link_counts() {
    require_root_and_fuse!();
    let td = TestDir::new("hardlinks");
    let (_img, m) = td.mkfs_and_mount("256M");
    let r = m.root();
    fs::create_dir(r.join("sub")).unwrap();
    fs::write(r.join("f"), b"hello").unwrap();
    fs::hard_link(r.join("f"), r.join("g")).unwrap();
    fs::hard_link(r.join("f"), r.join("sub/h")).unwrap();
    for n in ["f", "g", "sub/h"] {
        assert_eq!(lstat(&r.join(n)).nlink(), 3, "nlink of {n} after two links");
    }
    let ino = lstat(&r.join("f")).ino();
    assert_eq!(lstat(&r.join("sub/h")).ino(), ino, "links share the inode");
    fs::remove_file(r.join("g")).unwrap();
    assert_eq!(lstat(&r.join("f")).nlink(), 2, "nlink after unlink");
    // rename over another file drops that file and keeps our count
    fs::write(r.join("other"), b"other").unwrap();
    fs::rename(r.join("sub/h"), r.join("other")).unwrap();
    assert_eq!(
        lstat(&r.join("f")).nlink(),
        2,
        "nlink after rename over another file"
    );
    assert_eq!(fs::read(r.join("other")).unwrap(), b"hello");
    // rename between two links of the same inode: a no-op, both names stay
    fs::rename(r.join("f"), r.join("other")).unwrap();
    assert!(
        r.join("f").exists(),
        "rename of a hard link onto itself must leave both names"
    );
    assert_eq!(lstat(&r.join("f")).nlink(), 2);
    // a write through one name shows through the other
    fs::write(r.join("other"), b"changed").unwrap();
    assert_eq!(fs::read(r.join("f")).unwrap(), b"changed");
    // fstat on an fd after the last name is gone: nlink 0
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(r.join("f"))
        .unwrap();
    fs::remove_file(r.join("f")).unwrap();
    assert_eq!(f.metadata().unwrap().nlink(), 1);
    fs::remove_file(r.join("other")).unwrap();
    assert_eq!(
        f.metadata().unwrap().nlink(),
        0,
        "fstat of an open unlinked file"
    );
    drop(f);
    // hard link to a directory: EPERM
    let e = fs::hard_link(r.join("sub"), r.join("sublink")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EPERM), "link() to a directory");
    m.stop();
}

#[test]
fn directory_nlink() {
    require_root_and_fuse!();
    let td = TestDir::new("dirnlink");
    let (_img, m) = td.mkfs_and_mount("256M");
    let r = m.root();
    let root0 = lstat(&r).nlink();
    fs::create_dir(r.join("d")).unwrap();
    assert_eq!(lstat(&r.join("d")).nlink(), 2, "new directory");
    assert_eq!(lstat(&r).nlink(), root0 + 1, "parent after mkdir");
    fs::create_dir(r.join("d/x")).unwrap();
    fs::create_dir(r.join("d/y")).unwrap();
    fs::write(r.join("d/file"), b"").unwrap();
    assert_eq!(
        lstat(&r.join("d")).nlink(),
        4,
        "two subdirectories (files do not count)"
    );
    fs::remove_dir(r.join("d/x")).unwrap();
    assert_eq!(lstat(&r.join("d")).nlink(), 3, "after rmdir");
    fs::rename(r.join("d/y"), r.join("y")).unwrap();
    assert_eq!(
        lstat(&r.join("d")).nlink(),
        2,
        "old parent after moving a subdir out"
    );
    assert_eq!(
        lstat(&r).nlink(),
        root0 + 2,
        "new parent after moving a subdir in"
    );
    // rename a directory over an empty directory
    fs::create_dir(r.join("d/z")).unwrap();
    fs::rename(r.join("y"), r.join("d/z")).unwrap();
    assert_eq!(
        lstat(&r.join("d")).nlink(),
        3,
        "after rename over an empty dir"
    );
    assert_eq!(lstat(&r).nlink(), root0 + 1);
    // RENAME_EXCHANGE of a dir and a file across directories
    fs::write(r.join("f"), b"").unwrap();
    let a = cstr(&r.join("f"));
    let b = cstr(&r.join("d/z"));
    if let Err(e) = sys::renameat2(&a, &b, libc::RENAME_EXCHANGE) {
        panic!("RENAME_EXCHANGE: {}", errno_name(e));
    }
    assert!(lstat(&r.join("f")).is_dir());
    assert_eq!(
        lstat(&r.join("d")).nlink(),
        2,
        "d after exchanging its subdir for a file"
    );
    assert_eq!(
        lstat(&r).nlink(),
        root0 + 2,
        "root after receiving a dir by exchange"
    );
    // rmdir of a non-empty directory
    fs::write(r.join("d/file2"), b"").unwrap();
    let e = fs::remove_dir(r.join("d")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOTEMPTY), "rmdir non-empty");
    m.stop();
}

#[test]
fn open_unlinked_file() {
    require_root_and_fuse!();
    let td = TestDir::new("unlinked");
    let (_img, m) = td.mkfs_and_mount("256M");
    let r = m.root();
    let p = r.join("tmp");
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&pattern(7, 100_000), 0).unwrap();
    fs::remove_file(&p).unwrap();
    assert!(
        fs::symlink_metadata(&p).is_err(),
        "name still visible after unlink"
    );
    let md = f.metadata().unwrap();
    assert_eq!(md.nlink(), 0, "fstat nlink of an open unlinked file");
    assert_eq!(md.len(), 100_000);
    // still readable and writable
    f.write_all_at(b"more", 100_000).unwrap();
    let mut buf = vec![0u8; 100_004];
    f.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf[..100_000], &pattern(7, 100_000)[..]);
    assert_eq!(&buf[100_000..], b"more");
    f.sync_all().unwrap();
    drop(f);
    assert_eq!(
        fs::read_dir(&r).unwrap().count(),
        0,
        "root not empty after the unlinked file was closed"
    );
    m.stop();
}

#[test]
fn sparse_file_at_1gib() {
    require_root_and_fuse!();
    let td = TestDir::new("sparse");
    let (img, m) = td.mkfs_and_mount("256M");
    let p = m.root().join("sparse");
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    use std::os::unix::fs::FileExt;
    let gib = 1u64 << 30;
    let data = pattern(11, 4096);
    f.write_all_at(&data, gib).unwrap();
    f.sync_all().unwrap();
    let md = f.metadata().unwrap();
    assert_eq!(md.len(), gib + 4096, "size");
    assert!(
        md.blocks() <= 1024,
        "st_blocks {} (512-byte units) for one written 4 KiB block: not sparse",
        md.blocks()
    );
    let mut buf = vec![1u8; 65536];
    for off in [0u64, 4096, 512 << 20, gib - 65536] {
        f.read_exact_at(&mut buf, off).unwrap();
        assert!(
            buf.iter().all(|b| *b == 0),
            "hole at {off} does not read as zeros"
        );
    }
    let mut back = vec![0u8; 4096];
    f.read_exact_at(&mut back, gib).unwrap();
    assert_eq!(back, data, "data at 1 GiB");
    drop(f);
    let _ = img;
    m.stop();
}

#[test]
fn mmap_write_read() {
    require_root_and_fuse!();
    let td = TestDir::new("mmap");
    let (img, m) = td.mkfs_and_mount("256M");
    let p = m.root().join("mapped");
    let len = 1usize << 20;
    let data = pattern(5, len);
    let c = cstr(&p);
    let fd = sys::open(&c, libc::O_RDWR | libc::O_CREAT, 0o644)
        .unwrap_or_else(|e| panic!("open: {}", errno_name(e)));
    assert_eq!(sys::ftruncate(&fd, len as i64), Ok(()), "ftruncate");
    let mut map = sys::Mapping::shared(&fd, len, libc::PROT_READ | libc::PROT_WRITE, 0)
        .unwrap_or_else(|e| panic!("mmap(MAP_SHARED, RW) on strata: {}", errno_name(e)));
    map.write(0, &data);
    if let Err(e) = map.msync(libc::MS_SYNC) {
        panic!("msync: {}", errno_name(e));
    }
    assert_eq!(map.unmap(), Ok(()));
    drop(fd);
    assert!(
        fs::read(&p).unwrap() == data,
        "read() after mmap write: {}",
        "content differs"
    );
    // write through write(), read through a fresh read-only mapping
    let data2 = pattern(6, len);
    fs::write(&p, &data2).unwrap();
    let fd = sys::open(&cstr(&p), libc::O_RDONLY, 0)
        .unwrap_or_else(|e| panic!("open: {}", errno_name(e)));
    let map = sys::Mapping::shared(&fd, len, libc::PROT_READ, 0)
        .unwrap_or_else(|e| panic!("mmap(PROT_READ): {}", errno_name(e)));
    assert!(
        map.read() == data2,
        "mmap read after write() sees stale or wrong data"
    );
    drop(map);
    drop(fd);
    // and the mmap-written content survives a remount
    m.stop();
    let m = Mount::start(&img, &td.join("mnt"));
    assert!(
        fs::read(m.root().join("mapped")).unwrap() == data2,
        "content after remount"
    );
    m.stop();
}

/// Run an executable just written. ETXTBSY means another test thread forked while the file
/// was open for writing and its child still holds that descriptor until it execs (a race of
/// any multithreaded program, not of the file system): try again for a moment.
fn run_fresh_executable(path: &Path) -> std::process::Output {
    for _ in 0..100 {
        match Command::new(path).output() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            r => return r.unwrap_or_else(|e| panic!("exec {}: {e}", path.display())),
        }
    }
    panic!("exec {}: still ETXTBSY after 2 s", path.display())
}

#[test]
fn exec_copied_binary() {
    require_root_and_fuse!();
    let td = TestDir::new("exec");
    let (_img, m) = td.mkfs_and_mount("256M");
    let r = m.root();
    fs::create_dir(r.join("bin")).unwrap();
    let t = r.join("bin/true");
    fs::copy("/bin/true", &t).unwrap();
    chmod(&t, 0o755);
    assert_eq!(
        fs::read(&t).unwrap(),
        fs::read("/bin/true").unwrap(),
        "copied binary differs"
    );
    let st = run_fresh_executable(&t).status;
    assert!(st.success(), "{} exited with {st}", t.display());
    // a script with a shebang, and an executable the caller may not run
    let s = r.join("bin/script");
    fs::write(&s, b"#!/bin/sh\necho strata-ok\n").unwrap();
    chmod(&s, 0o755);
    let out = run_fresh_executable(&s);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "strata-ok\n");
    chmod(&t, 0o644);
    let e = Command::new(&t).status().unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EACCES), "exec without x bit");
    m.stop();
}

/// The kernel may keep using an inode after its last name is gone (an open FIFO has no FUSE
/// open handle; a file replaced by rename may be open): the inode must live until FORGET.
#[test]
fn open_inode_outlives_its_last_name() {
    require_root_and_fuse!();
    let td = TestDir::new("outlive");
    let (_img, m) = td.mkfs_and_mount("256M");
    let r = m.root();
    // a regular file replaced by rename while open
    fs::write(r.join("victim"), b"old content").unwrap();
    fs::write(r.join("new"), b"new content").unwrap();
    let f = fs::File::open(r.join("victim")).unwrap();
    fs::rename(r.join("new"), r.join("victim")).unwrap();
    let md = f
        .metadata()
        .unwrap_or_else(|e| panic!("fstat of a file replaced by rename while open: {e}"));
    assert_eq!(md.nlink(), 0, "nlink of an open file replaced by rename");
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 11];
    f.read_exact_at(&mut buf, 0)
        .expect("read of an open file replaced by rename");
    assert_eq!(&buf, b"old content");
    assert_eq!(fs::read(r.join("victim")).unwrap(), b"new content");
    drop(f);
    // a FIFO unlinked while open
    let p = cstr(&r.join("fifo"));
    assert_eq!(sys::mknod(&p, libc::S_IFIFO | 0o644, 0), Ok(()));
    let fd = sys::open(&p, libc::O_RDWR | libc::O_NONBLOCK, 0)
        .unwrap_or_else(|e| panic!("open fifo: {}", errno_name(e)));
    assert_eq!(sys::unlink(&p), Ok(()));
    let st = sys::fstat(&fd);
    drop(fd);
    let st = st.unwrap_or_else(|e| panic!("fstat of an open unlinked FIFO: {}", errno_name(e)));
    assert_eq!(st.st_nlink, 0, "nlink of an open unlinked FIFO");
    m.stop();
}
