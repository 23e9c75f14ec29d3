//! The dispatcher: each request becomes one engine call, the same for every transport.
//! Engine errors become errno here ([`crate::errno`]); replies for reads, writes and fsync
//! are sent from the engine's completion.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use engine::{Atime, CacheMode, Caller, Engine, KillPriv, SetAttr, Stat, Time, WriteTimes};

use crate::abi::{self, fattr, fopen, init, FuseAttr};
use crate::reply::{self, DirBuf};
use crate::request::{forget_items, Op, Request, SetattrIn};
use crate::session::{OpCounters, Reply};

/// How long the kernel may cache entries and attributes inside a layer. Everything in a
/// layer changes through this mount, so the kernel's copy stays right; long TTLs spare a
/// round trip per stat.
pub const TTL: Duration = Duration::from_secs(60);
/// Entries of the mount root (layers come and go through the admin API, not the kernel).
pub const ROOT_TTL: Duration = Duration::from_secs(1);
/// Largest write the kernel sends us (and largest read it asks for).
pub const MAX_WRITE: u32 = 1 << 20;
const GEN: u64 = 0;

fn ttl(node: u64) -> Duration {
    if engine::split(node).0 == 0 {
        ROOT_TTL
    } else {
        TTL
    }
}

/// The mode of a new node: the type bits as given (a regular file when none), permissions
/// less the umask.
fn node_mode(mode: u32, umask: u32) -> u32 {
    let kind = match mode & libc::S_IFMT {
        0 => libc::S_IFREG,
        k => k,
    };
    kind | (mode & 0o7777 & !umask)
}

fn time(sec: u64, nsec: u32) -> Time {
    Time {
        sec: sec as i64,
        nsec: nsec.min(999_999_999),
    }
}

/// The offset of a directory entry as the kernel sees it: see [`Fs::dir_window`].
fn dir_offset(end: u64, cookie: u64) -> u64 {
    if end < 1 << 31 && cookie < 1 << 32 {
        end << 32 | cookie
    } else {
        cookie
    }
}

/// A resent unlink, rmdir or rename whose name is gone: the previous daemon carried it out
/// (its change reached the journal, its answer did not reach the kernel).
fn resent_done(resent: bool, r: engine::Result<()>) -> engine::Result<()> {
    match r {
        Err(e) if resent && e.errno() == libc::ENOENT => Ok(()),
        r => r,
    }
}

/// Whether a request changes what the journal records (its reply waits for the journal
/// with `persist_replies`).
fn changes(op: &Op<'_>) -> bool {
    match op {
        // The kernel writing back a file's times (write-back cache: MTIME and CTIME, after
        // writes it already answered) does not wait: a crash loses at most that time
        // update, never data or a name. Every other attribute change does.
        Op::Setattr(a) => {
            let times_only =
                abi::fattr::MTIME | abi::fattr::CTIME | abi::fattr::FH | abi::fattr::LOCKOWNER;
            a.valid & !times_only != 0
        }
        Op::Symlink { .. }
        | Op::Mknod { .. }
        | Op::Mkdir { .. }
        | Op::Unlink { .. }
        | Op::Rmdir { .. }
        | Op::Rename { .. }
        | Op::Link { .. }
        | Op::Write { .. }
        | Op::Setxattr { .. }
        | Op::Removexattr { .. }
        | Op::Create { .. }
        | Op::Fallocate { .. }
        | Op::CopyFileRange { .. }
        | Op::Tmpfile { .. } => true,
        Op::Open { flags, .. } => *flags as i32 & libc::O_TRUNC != 0,
        _ => false,
    }
}

/// What INIT agreed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Proto {
    pub minor: u32,
    /// The capabilities both sides have.
    pub flags: u64,
    /// The kernel resends requests in flight on FUSE_NOTIFY_RESEND (FUSE_HAS_RESEND).
    pub resend: bool,
}

/// Capabilities we ask for (the kernel grants those it has).
const WANT: u64 = init::ASYNC_READ
    | init::BIG_WRITES
    | init::MAX_PAGES
    | init::WRITEBACK_CACHE
    // We clear set-user-id, set-group-id and file capabilities on write, truncate and chown
    // (the kernel passes FATTR_KILL_SUIDGID / FUSE_WRITE_KILL_SUIDGID when the caller lacks
    // CAP_FSETID); in return the kernel marks inodes S_NOSEC and stops asking for
    // security.capability before every write.
    | init::HANDLE_KILLPRIV_V2
    | init::DIRECT_IO_ALLOW_MMAP
    | init::DO_READDIRPLUS
    | init::READDIRPLUS_AUTO
    | init::PARALLEL_DIROPS
    | init::ASYNC_DIO
    // Round trips the kernel lets us save: symlink targets cached in its page cache (they
    // never change); O_TRUNC handled in OPEN (no SETATTR after it); no OPENDIR/RELEASEDIR
    // (answered ENOSYS once, see `Op::Opendir`).
    | init::CACHE_SYMLINKS
    | init::ATOMIC_O_TRUNC
    | init::NO_OPENDIR_SUPPORT
    // File handles (name_to_handle_at / open_by_handle_at, NFS re-export, CRIU): node ids
    // stay valid while the layer exists, across remounts, and we answer LOOKUP of "." and
    // ".." for a node the kernel has forgotten.
    | init::EXPORT_SUPPORT
    | init::INIT_EXT;

/// The file system as the kernel sees it: one engine, one mount.
pub struct Fs {
    engine: Arc<Engine>,
    counters: Arc<OpCounters>,
    proto: OnceLock<Proto>,
    /// Ask for FUSE_OVER_IO_URING at INIT.
    want_uring: AtomicBool,
    /// When reads update access times.
    atime: Atime,
    /// Answer changes only once they are in the journal (see [`Reply::after_persist`]).
    persist_replies: AtomicBool,
    /// How long an io_uring queue thread waits for its own device I/O awake (polling)
    /// before it sleeps, in microseconds; 0: never.
    device_poll_us: std::sync::atomic::AtomicU32,
    /// How long a queue thread or /dev/fuse worker that has answered polls for the next
    /// request before it sleeps, in microseconds; 0: never.
    request_poll_us: std::sync::atomic::AtomicU32,
}

impl Fs {
    pub fn new(engine: Arc<Engine>, counters: Arc<OpCounters>, atime: Atime) -> Fs {
        Fs {
            engine,
            counters,
            proto: OnceLock::new(),
            want_uring: AtomicBool::new(false),
            atime,
            persist_replies: AtomicBool::new(false),
            device_poll_us: std::sync::atomic::AtomicU32::new(0),
            request_poll_us: std::sync::atomic::AtomicU32::new(0),
        }
    }

    /// A read of `node`: its access time as the mount's policy says (a failure to record
    /// it fails nothing).
    fn accessed(&self, node: u64) {
        if let Err(e) = self.engine.accessed(node, self.atime) {
            log::debug!("access time of node {node:#x} not updated: {e}");
        }
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    pub fn counters(&self) -> &Arc<OpCounters> {
        &self.counters
    }

    /// What INIT agreed, once it has been answered.
    pub fn proto(&self) -> Option<Proto> {
        self.proto.get().copied()
    }

    /// A connection taken over from a previous daemon: INIT was answered by it, and this
    /// is what it agreed (see [`crate::holder`]).
    pub(crate) fn adopt_proto(&self, p: Proto) {
        let _ = self.proto.set(p);
    }

    pub(crate) fn set_persist_replies(&self, on: bool) {
        self.persist_replies.store(on, Ordering::Relaxed);
    }

    pub(crate) fn set_device_poll_us(&self, us: u32) {
        self.device_poll_us.store(us, Ordering::Relaxed);
    }

    pub(crate) fn device_poll_us(&self) -> u32 {
        self.device_poll_us.load(Ordering::Relaxed)
    }

    pub(crate) fn set_request_poll_us(&self, us: u32) {
        self.request_poll_us.store(us, Ordering::Relaxed);
    }

    pub(crate) fn request_poll_us(&self) -> u32 {
        self.request_poll_us.load(Ordering::Relaxed)
    }

    pub(crate) fn set_want_uring(&self, on: bool) {
        self.want_uring.store(on, Ordering::Relaxed);
    }

    /// A resent mknod, mkdir or symlink whose name exists: the previous daemon made it;
    /// answer with what is there.
    fn resent_made(
        &self,
        resent: bool,
        parent: u64,
        name: &[u8],
        r: engine::Result<Stat>,
    ) -> engine::Result<Stat> {
        match r {
            Err(e) if resent && e.errno() == libc::EEXIST => self.engine.lookup(parent, name),
            r => r,
        }
    }

    fn entry(&self, r: engine::Result<Stat>, reply: Reply) {
        match r {
            Ok(st) => reply.ok(&reply::entry(st.ino, GEN, TTL, &reply::attr(&st))),
            Err(e) => reply.error(crate::errno(&e)),
        }
    }

    fn empty(r: engine::Result<()>, reply: Reply) {
        match r {
            Ok(()) => reply.ok(&[]),
            Err(e) => reply.error(crate::errno(&e)),
        }
    }

    /// How a regular file is opened: into the kernel page cache, or past it to the engine.
    fn open_flags(&self, node: u64, write: bool) -> engine::Result<u32> {
        Ok(match self.engine.cache_mode(node, write)? {
            CacheMode::Kernel => fopen::KEEP_CACHE,
            // KEEP_CACHE here too: an open without it would drop (after writing back) the
            // pages a writer of the same file has cached; direct reads and writes flush and
            // invalidate the range they touch themselves.
            CacheMode::Engine => {
                fopen::DIRECT_IO | fopen::PARALLEL_DIRECT_WRITES | fopen::KEEP_CACHE
            }
        })
    }

    /// Answer one request.
    pub fn dispatch(&self, req: Request<'_>, reply: Reply) {
        let h = req.header;
        self.counters.count(h.opcode);
        let node = h.nodeid;
        let caller = Caller {
            uid: h.uid,
            gid: h.gid,
        };
        let e = &self.engine;
        // A request a previous daemon read and may have carried out before it died
        // (FUSE_NOTIFY_RESEND after a takeover).
        let resent = h.unique & abi::UNIQUE_RESEND != 0;
        if resent {
            self.counters.count_resent();
        }
        let reply = if self.persist_replies.load(Ordering::Relaxed) && changes(&req.op) {
            reply.after_persist(e.clone())
        } else {
            reply
        };
        match req.op {
            Op::Init {
                major,
                minor,
                max_readahead,
                flags,
            } => self.init(major, minor, max_readahead, flags, reply),
            Op::Destroy => reply.ok(&[]),
            // Lookups of "." and ".." come from file handles the kernel decodes after it
            // forgot the node (FUSE_EXPORT_SUPPORT).
            Op::Lookup { name: b"." } => match e.getattr(node) {
                Ok(st) => {
                    e.inc_ref(st.ino, 1);
                    reply.ok(&reply::entry(st.ino, GEN, ttl(node), &reply::attr(&st)))
                }
                Err(err) => reply.error(crate::errno(&err)),
            },
            Op::Lookup { name: b".." } => match e.lookup_parent(node) {
                Ok(st) => reply.ok(&reply::entry(st.ino, GEN, ttl(st.ino), &reply::attr(&st))),
                Err(err) => reply.error(crate::errno(&err)),
            },
            Op::Lookup { name } => match e.lookup(node, name) {
                Ok(st) => reply.ok(&reply::entry(st.ino, GEN, ttl(node), &reply::attr(&st))),
                // Inside a layer, names change only through this mount, so the kernel may keep
                // a negative entry: a stat-then-create (tar, containerd's applier, cp) then
                // costs one LOOKUP instead of two. Not at the mount root, where layers come and
                // go through the admin API.
                Err(err) if err.errno() == libc::ENOENT && engine::split(node).0 != 0 => {
                    reply.ok(&reply::entry(0, 0, TTL, &FuseAttr::default()))
                }
                Err(err) => reply.error(crate::errno(&err)),
            },
            Op::Forget { nlookup } => {
                e.forget(node, nlookup);
                reply.none()
            }
            Op::BatchForget { items } => {
                for (n, k) in forget_items(items) {
                    e.forget(n, k);
                }
                reply.none()
            }
            Op::Interrupt { .. } => reply.none(),
            Op::Getattr { .. } => match e.getattr(node) {
                Ok(st) => reply.ok(&reply::attr_out(ttl(st.ino), &reply::attr(&st))),
                Err(err) => reply.error(crate::errno(&err)),
            },
            Op::Setattr(s) => self.setattr(node, s, reply),
            Op::Readlink => match e.readlink(node) {
                Ok(t) => reply.ok(&t),
                Err(err) => reply.error(crate::errno(&err)),
            },
            Op::Mknod {
                mode,
                rdev,
                umask,
                name,
            } => self.entry(
                self.resent_made(
                    resent,
                    node,
                    name,
                    e.mknod(node, name, node_mode(mode, umask), rdev, caller, None),
                ),
                reply,
            ),
            Op::Mkdir { mode, umask, name } => {
                let mode = node_mode(libc::S_IFDIR | (mode & 0o7777), umask);
                let r = e.mknod(node, name, mode, 0, caller, None);
                self.entry(self.resent_made(resent, node, name, r), reply)
            }
            Op::Unlink { name } => Self::empty(resent_done(resent, e.unlink(node, name)), reply),
            Op::Rmdir { name } => Self::empty(resent_done(resent, e.rmdir(node, name)), reply),
            Op::Symlink { name, target } => {
                let r = e.mknod(node, name, libc::S_IFLNK | 0o777, 0, caller, Some(target));
                self.entry(self.resent_made(resent, node, name, r), reply)
            }
            Op::Rename {
                newdir,
                flags,
                name,
                newname,
            } => Self::empty(
                resent_done(resent, e.rename(node, name, newdir, newname, flags)),
                reply,
            ),
            // The kernel refuses links to unlinked files itself, except to O_TMPFILE files.
            Op::Link { oldnodeid, name } => {
                self.entry(e.link_from_kernel(oldnodeid, node, name), reply)
            }
            Op::Open { flags, open_flags } => self.open(node, flags as i32, open_flags, reply),
            Op::Read { offset, size, .. } => {
                self.accessed(node);
                // On an io_uring queue its device reads go on that queue's ring, and read
                // straight into the ring entry's payload buffer, the reply's body.
                let dest = reply.read_dest();
                e.read_local(
                    node,
                    offset,
                    size,
                    dest,
                    Box::new(move |r| match r {
                        Ok(d) => reply.ok(d),
                        Err(err) => reply.error(crate::errno(&err)),
                    }),
                )
            }
            Op::Write {
                offset,
                write_flags,
                data,
                ..
            } => {
                // A write drops file capabilities, and set-user-id / set-group-id when the
                // kernel says the writer lacks CAP_FSETID (FUSE_HANDLE_KILLPRIV_V2 leaves
                // both to us).
                let kill = KillPriv {
                    suid_sgid: write_flags & abi::WRITE_KILL_SUIDGID != 0,
                    caps: true,
                };
                // A page the kernel's write-back cache sends: the kernel keeps the file's
                // times and sends them itself (a setattr that may come before this page).
                let times = if write_flags & abi::WRITE_CACHE != 0 {
                    WriteTimes::Kernel
                } else {
                    WriteTimes::Set
                };
                e.write(
                    node,
                    offset,
                    data,
                    kill,
                    times,
                    Box::new(move |r| match r {
                        Ok(n) => reply.ok(&reply::write(n)),
                        Err(err) => reply.error(crate::errno(&err)),
                    }),
                )
            }
            Op::Statfs => reply.ok(&reply::statfs(&e.statfs())),
            // flush is not implemented: the kernel then stops sending it (one round trip less
            // per close). It still writes the file's dirty pages back at close.
            Op::Flush => reply.error(libc::ENOSYS),
            Op::Release { .. } | Op::Releasedir => reply.ok(&[]),
            Op::Fsync { .. } | Op::Fsyncdir { .. } => {
                e.fsync(Box::new(move |r| Self::empty(r, reply)))
            }
            // Directory handles carry nothing (a listing's state is in its offsets, see
            // `dir_window`): where the kernel can do without OPENDIR and RELEASEDIR, ENOSYS
            // tells it to stop sending them.
            Op::Opendir { .. } if self.has(init::NO_OPENDIR_SUPPORT) => reply.error(libc::ENOSYS),
            Op::Opendir { .. } => match e.getattr(node) {
                Ok(st) if st.attr.is_dir() => reply.ok(&reply::open(0, 0)),
                Ok(_) => reply.error(libc::ENOTDIR),
                Err(err) => reply.error(crate::errno(&err)),
            },
            Op::Readdir { offset, size, .. } => self.readdir(node, offset, size, reply),
            Op::Readdirplus { offset, size, .. } => self.readdirplus(node, offset, size, reply),
            Op::Setxattr { flags, name, value } => {
                Self::empty(e.setxattr(node, name, value, flags as i32), reply)
            }
            // security.capability is asked before every write by an unprivileged writer; it is
            // answered from memory like every other attribute.
            Op::Getxattr { size, name } => {
                Self::xattr(e.getxattr(node, name).map(|v| v.to_vec()), size, reply)
            }
            Op::Listxattr { size } => Self::xattr(e.listxattr(node), size, reply),
            Op::Removexattr { name } => Self::empty(e.removexattr(node, name), reply),
            Op::Access { .. } => Self::empty(e.getattr(node).map(|_| ()), reply),
            Op::Create {
                mode, umask, name, ..
            } => {
                let r = e.mknod(node, name, node_mode(mode, umask), 0, caller, None);
                let r = self.resent_made(resent, node, name, r);
                match r.and_then(|st| Ok((st, self.open_flags(st.ino, true)?))) {
                    Ok((st, f)) => reply.ok2(
                        &reply::entry(st.ino, GEN, TTL, &reply::attr(&st)),
                        &reply::open(0, f),
                    ),
                    Err(err) => reply.error(crate::errno(&err)),
                }
            }
            Op::Fallocate {
                offset,
                length,
                mode,
                ..
            } => Self::empty(e.fallocate(node, offset, length, mode as i32), reply),
            // lseek (SEEK_DATA / SEEK_HOLE) is not implemented: the kernel then answers it
            // itself from its own size (all data, a hole at EOF). The engine's answer would
            // miss the dirty pages the kernel's write-back cache has not sent yet.
            Op::Lseek { .. } => reply.error(libc::ENOSYS),
            Op::CopyFileRange {
                off_in,
                nodeid_out,
                off_out,
                len,
                wide,
            } => {
                let len = if wide {
                    len
                } else {
                    len.min(u32::MAX as u64 / 2)
                };
                match e.copy_file_range(node, off_in, nodeid_out, off_out, len) {
                    Ok(n) if wide => reply.ok(&n.to_le_bytes()),
                    Ok(n) => reply.ok(&reply::write(n as u32)),
                    Err(err) => reply.error(crate::errno(&err)),
                }
            }
            // O_TMPFILE: a file with no name, opened like a new one.
            Op::Tmpfile { mode, umask, .. } => {
                let r = e.tmpfile(node, node_mode(mode, umask), caller);
                match r.and_then(|st| Ok((st, self.open_flags(st.ino, true)?))) {
                    Ok((st, f)) => reply.ok2(
                        &reply::entry(st.ino, GEN, TTL, &reply::attr(&st)),
                        &reply::open(0, f),
                    ),
                    Err(err) => reply.error(crate::errno(&err)),
                }
            }
            Op::Syncfs | Op::Other => reply.error(libc::ENOSYS),
        }
    }

    fn init(&self, major: u32, minor: u32, max_readahead: u32, flags: u64, reply: Reply) {
        if major != abi::KERNEL_VERSION {
            // A newer major: answer with ours and wait for the kernel to ask again; an older
            // one we cannot speak.
            if major > abi::KERNEL_VERSION {
                let out = abi::InitOut {
                    major: abi::KERNEL_VERSION,
                    minor: abi::KERNEL_MINOR_VERSION,
                    ..Default::default()
                };
                let mut v = Vec::new();
                out.encode(&mut v);
                return reply.ok(&v);
            }
            log::error!(
                "the kernel speaks FUSE {major}.{minor}; Strata needs 7.{}",
                abi::MIN_MINOR_VERSION
            );
            return reply.error(libc::EPROTO);
        }
        if minor < abi::MIN_MINOR_VERSION {
            log::error!(
                "the kernel speaks FUSE 7.{minor}; Strata needs 7.{} (Linux 5.10) or newer",
                abi::MIN_MINOR_VERSION
            );
            return reply.error(libc::EPROTO);
        }
        let mut want = WANT;
        if self.want_uring.load(Ordering::Relaxed) {
            want |= init::OVER_IO_URING;
        }
        let granted = flags & want;
        for (bit, name) in [
            (init::WRITEBACK_CACHE, "FUSE_WRITEBACK_CACHE"),
            (init::HANDLE_KILLPRIV_V2, "FUSE_HANDLE_KILLPRIV_V2"),
            (init::DIRECT_IO_ALLOW_MMAP, "FUSE_DIRECT_IO_ALLOW_MMAP"),
            (init::OVER_IO_URING, "FUSE_OVER_IO_URING"),
        ] {
            if want & bit != 0 && granted & bit == 0 {
                log::debug!("kernel lacks FUSE capability {name}");
            }
        }
        let minor = minor.min(abi::KERNEL_MINOR_VERSION);
        let _ = self.proto.set(Proto {
            minor,
            flags: granted,
            resend: flags & init::HAS_RESEND != 0,
        });
        let out = abi::InitOut {
            major: abi::KERNEL_VERSION,
            minor,
            max_readahead,
            flags: granted,
            max_background: 128,
            congestion_threshold: 96,
            max_write: MAX_WRITE,
            time_gran: 1,
            max_pages: (MAX_WRITE / 4096) as u16,
        };
        let mut v = Vec::with_capacity(abi::INIT_OUT_SIZE);
        out.encode(&mut v);
        reply.ok(&v)
    }

    fn setattr(&self, node: u64, s: SetattrIn, reply: Reply) {
        let v = s.valid;
        let has = |bit: u32| v & bit != 0;
        let pick = |set: u32, now: u32, t: (u64, u32)| {
            if has(now) {
                Some(Time::now())
            } else if has(set) {
                Some(time(t.0, t.1))
            } else {
                None
            }
        };
        let uid = has(fattr::UID).then_some(s.uid);
        let gid = has(fattr::GID).then_some(s.gid);
        let size = has(fattr::SIZE).then_some(s.size);
        let a = SetAttr {
            mode: has(fattr::MODE).then_some(s.mode),
            uid,
            gid,
            size,
            atime: pick(fattr::ATIME, fattr::ATIME_NOW, s.atime),
            mtime: pick(fattr::MTIME, fattr::MTIME_NOW, s.mtime),
            ctime: has(fattr::CTIME).then(|| time(s.ctime.0, s.ctime.1)),
            // With FUSE_HANDLE_KILLPRIV_V2 this is ours, as the VFS does it: the kernel says
            // when set-user-id / set-group-id go (a chown of a non-directory; a truncation by
            // a caller without CAP_FSETID); a chown or truncation drops file capabilities.
            kill: KillPriv {
                suid_sgid: has(fattr::KILL_SUIDGID),
                caps: uid.is_some() || gid.is_some() || size.is_some(),
            },
        };
        match self.engine.setattr(node, a) {
            Ok(st) => reply.ok(&reply::attr_out(ttl(st.ino), &reply::attr(&st))),
            Err(err) => reply.error(crate::errno(&err)),
        }
    }

    fn xattr(r: engine::Result<Vec<u8>>, size: u32, reply: Reply) {
        match r {
            Ok(v) if size == 0 => reply.ok(&reply::xattr_size(v.len() as u32)),
            Ok(v) if v.len() > size as usize => reply.error(libc::ERANGE),
            Ok(v) => reply.ok(&v),
            Err(err) => reply.error(crate::errno(&err)),
        }
    }

    fn readdir(&self, node: u64, offset: u64, size: u32, reply: Reply) {
        if offset == 0 {
            self.accessed(node);
        }
        let (start, end) = match self.dir_window(node, offset) {
            Ok(w) => w,
            Err(err) => return reply.error(crate::errno(&err)),
        };
        match self.engine.readdir(node, start, 1024) {
            Ok(entries) => {
                let mut b = DirBuf::new(size);
                for d in entries {
                    if d.offset >= end || !b.add(d.ino, dir_offset(end, d.offset), d.kind, &d.name)
                    {
                        break;
                    }
                }
                reply.ok(&b.into_bytes())
            }
            Err(err) => reply.error(crate::errno(&err)),
        }
    }

    /// Where a listing resumes and where it ends. The offsets we hand out carry the end of
    /// the listing they belong to (the directory's next cookie when the reader started at
    /// offset 0) in their high 32 bits and the engine's entry cookie in the low 32: entries
    /// that stay put keep their cookies, so none is returned twice or skipped, and entries
    /// created or renamed after the start (new cookies, at or past the end) cannot keep a
    /// reader going for ever. Offsets without an end (the mount root, huge cookies) list to
    /// the end.
    fn dir_window(&self, node: u64, offset: u64) -> engine::Result<(u64, u64)> {
        Ok(if offset == 0 {
            (0, self.engine.readdir_end(node)?)
        } else if offset >> 32 != 0 {
            (offset & 0xffff_ffff, offset >> 32)
        } else {
            (offset, u64::MAX)
        })
    }

    fn open(&self, node: u64, flags: i32, open_flags: u32, reply: Reply) {
        let write = flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        // FUSE_ATOMIC_O_TRUNC: the truncation is ours, with the kill-priv the kernel asks for
        // (FUSE_OPEN_KILL_SUIDGID: the opener lacks CAP_FSETID).
        if flags & libc::O_TRUNC != 0 && self.has(init::ATOMIC_O_TRUNC) {
            let now = Time::now();
            let t = SetAttr {
                size: Some(0),
                mtime: Some(now),
                ctime: Some(now),
                kill: KillPriv {
                    suid_sgid: open_flags & abi::OPEN_KILL_SUIDGID != 0,
                    caps: true,
                },
                ..Default::default()
            };
            if let Err(err) = self.engine.setattr(node, t) {
                return reply.error(crate::errno(&err));
            }
        }
        // Opened for reading: its access time, as a read would set it. Reads served from
        // the kernel's page cache never reach us, and the kernel keeps the access time it
        // sets for them only until it asks for the attributes again.
        if !write {
            self.accessed(node);
        }
        match self.open_flags(node, write) {
            Ok(f) => reply.ok(&reply::open(0, f)),
            Err(err) => reply.error(crate::errno(&err)),
        }
    }

    /// Whether INIT agreed on `flag`.
    fn has(&self, flag: u64) -> bool {
        self.proto.get().is_some_and(|p| p.flags & flag != 0)
    }

    fn readdirplus(&self, node: u64, offset: u64, size: u32, reply: Reply) {
        let e = &self.engine;
        if offset == 0 {
            self.accessed(node);
        }
        let (start, end) = match self.dir_window(node, offset) {
            Ok(w) => w,
            Err(err) => return reply.error(crate::errno(&err)),
        };
        match e.readdir(node, start, 1024) {
            Ok(entries) => {
                let mut b = DirBuf::new(size);
                for d in entries {
                    if d.offset >= end {
                        break;
                    }
                    let dot = d.name[..] == *b"." || d.name[..] == *b"..";
                    let st = if dot {
                        e.getattr(node)
                    } else {
                        e.getattr(d.ino)
                    };
                    let Ok(st) = st else { continue };
                    let mut a = reply::attr(&st);
                    a.ino = d.ino;
                    // The kernel counts a lookup for every entry but "." and "..", whose
                    // node ids it ignores.
                    let id = if dot { 0 } else { d.ino };
                    if !b.add_plus(id, ttl(node), &a, dir_offset(end, d.offset), &d.name) {
                        break;
                    }
                    if !dot {
                        e.inc_ref(d.ino, 1);
                    }
                }
                reply.ok(&b.into_bytes())
            }
            Err(err) => reply.error(crate::errno(&err)),
        }
    }
}
