//! # strata-fusefront
//!
//! A thin `fuser` adapter: each FUSE request becomes one engine call, engine errors become
//! errno here and only here ([`errno`]), and replies for reads, writes and fsync are sent from
//! the engine's completion (the FUSE thread never waits for the disk on those paths).
//!
//! Node ids are the engine's (`slot << 40 | inode`; the mount root, which lists the layers, is
//! 1). The kernel's write-back cache is on (FUSE_WRITEBACK_CACHE): a regular file is opened
//! either into the kernel page cache (data only its layer can see, and every file opened for
//! writing: FOPEN_KEEP_CACHE, everything in a layer changes through this mount) or with
//! FOPEN_DIRECT_IO (data other layers share, cached once in the engine's block cache;
//! FUSE_DIRECT_IO_ALLOW_MMAP keeps mmap and exec working). The engine decides which
//! (`Engine::cache_mode`). Before a layer is frozen or exported the engine asks for the
//! kernel's dirty pages: [`flush_on_freeze`] answers with a `syncfs` of the mount.
//!
//! [`sys`] holds the daemon's few system calls outside FUSE (signals, unmounting a dead
//! mount): the only unsafe code of this crate.
#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

#[allow(unsafe_code)]
pub mod sys;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use engine::{CacheMode, Caller, Engine, Error, KillPriv, SetAttr, Stat, Time, WriteTimes};
use fuser::{
    Config, CopyFileRangeFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, MountOption, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, Session, SessionACL, TimeOrNow,
    WriteFlags,
};

/// How long the kernel may cache entries and attributes inside a layer. Everything in a
/// layer changes through this mount, so the kernel's copy stays right; long TTLs spare a
/// round trip per stat.
const TTL: Duration = Duration::from_secs(60);
/// Entries of the mount root (layers come and go through the admin API, not the kernel).
const ROOT_TTL: Duration = Duration::from_secs(1);

fn ttl(node: u64) -> &'static Duration {
    if engine::split(node).0 == 0 {
        &ROOT_TTL
    } else {
        &TTL
    }
}
const GEN: Generation = Generation(0);
/// Largest write the kernel sends us.
pub const MAX_WRITE: u32 = 1 << 20;

/// The one place engine errors become errno.
pub fn errno(e: &Error) -> Errno {
    Errno::from_i32(e.errno())
}

fn kind(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

fn systime(t: Time) -> SystemTime {
    if t.sec >= 0 {
        UNIX_EPOCH + Duration::new(t.sec as u64, t.nsec)
    } else {
        UNIX_EPOCH - Duration::from_secs(t.sec.unsigned_abs()) + Duration::from_nanos(t.nsec as u64)
    }
}

fn from_systime(t: SystemTime) -> Time {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => Time {
            sec: d.as_secs() as i64,
            nsec: d.subsec_nanos(),
        },
        Err(e) => {
            let d = e.duration();
            let mut sec = -(d.as_secs() as i64);
            let mut nsec = d.subsec_nanos();
            if nsec > 0 {
                sec -= 1;
                nsec = 1_000_000_000 - nsec;
            }
            Time { sec, nsec }
        }
    }
}

fn time_or_now(t: TimeOrNow) -> Time {
    match t {
        TimeOrNow::Now => Time::now(),
        TimeOrNow::SpecificTime(s) => from_systime(s),
    }
}

fn attr(st: &Stat) -> FileAttr {
    let a = &st.attr;
    FileAttr {
        ino: INodeNo(st.ino),
        size: a.size,
        blocks: st.blocks,
        atime: systime(a.atime),
        mtime: systime(a.mtime),
        ctime: systime(a.ctime),
        crtime: systime(a.btime),
        kind: kind(a.mode),
        perm: (a.mode & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: 4096,
        flags: 0,
    }
}

/// A lookup reply with node id 0: "no such name", cached by the kernel for the entry TTL.
fn negative_attr() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: SystemTime::UNIX_EPOCH,
        mtime: SystemTime::UNIX_EPOCH,
        ctime: SystemTime::UNIX_EPOCH,
        crtime: SystemTime::UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
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

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
    }
}

/// The FUSE file system over one engine.
pub struct StrataFs {
    engine: Arc<Engine>,
}

impl StrataFs {
    pub fn new(engine: Arc<Engine>) -> Self {
        StrataFs { engine }
    }

    fn entry(&self, r: engine::Result<Stat>, reply: ReplyEntry) {
        match r {
            Ok(st) => reply.entry(&TTL, &attr(&st), GEN),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn empty(r: engine::Result<()>, reply: ReplyEmpty) {
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    /// How a regular file is opened: into the kernel page cache, or past it to the engine.
    fn open_flags(&self, node: u64, write: bool) -> engine::Result<FopenFlags> {
        Ok(match self.engine.cache_mode(node, write)? {
            CacheMode::Kernel => FopenFlags::FOPEN_KEEP_CACHE,
            // KEEP_CACHE here too: an open without it would drop (after writing back) the
            // pages a writer of the same file has cached; direct reads and writes flush and
            // invalidate the range they touch themselves.
            CacheMode::Engine => {
                FopenFlags::FOPEN_DIRECT_IO
                    | FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES
                    | FopenFlags::FOPEN_KEEP_CACHE
            }
        })
    }
}

impl Filesystem for StrataFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(MAX_WRITE);
        let _ = config.set_max_background(128);
        let _ = config.set_congestion_threshold(96);
        for cap in [
            InitFlags::FUSE_WRITEBACK_CACHE,
            // We clear set-user-id, set-group-id and file capabilities on write, truncate and
            // chown; in return the kernel marks inodes S_NOSEC and stops asking for
            // security.capability before every write.
            InitFlags::FUSE_HANDLE_KILLPRIV_V2,
            InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP,
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_ASYNC_DIO,
        ] {
            if let Err(missing) = config.add_capabilities(cap) {
                log::debug!("kernel lacks FUSE capability {missing:?}");
            }
        }
        Ok(())
    }

    fn destroy(&mut self) {}

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.engine.lookup(parent.0, name.as_bytes()) {
            Ok(st) => reply.entry(ttl(parent.0), &attr(&st), GEN),
            // Inside a layer, names change only through this mount, so the kernel may keep a
            // negative entry: a stat-then-create (tar, containerd's applier, cp) then costs
            // one LOOKUP instead of two. Not at the mount root, where layers come and go
            // through the admin API.
            Err(e) if e.errno() == libc::ENOENT && engine::split(parent.0).0 != 0 => {
                reply.entry(&TTL, &negative_attr(), GEN)
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.engine.forget(ino.0, nlookup)
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.engine.getattr(ino.0) {
            Ok(st) => reply.attr(ttl(st.ino), &attr(&st)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let s = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(time_or_now),
            mtime: mtime.map(time_or_now),
            ctime: ctime.map(from_systime),
            // With FUSE_HANDLE_KILLPRIV_V2 this is ours, as the VFS does it: a chown clears
            // set-user-id (set-group-id when group execute is set) whoever asks, a truncation
            // when the caller lacks CAP_FSETID (fuser does not pass the kernel's flag on: a
            // caller other than root stands for it); both drop file capabilities.
            kill: KillPriv {
                suid_sgid: uid.is_some() || gid.is_some() || (size.is_some() && req.uid() != 0),
                caps: uid.is_some() || gid.is_some() || size.is_some(),
            },
        };
        match self.engine.setattr(ino.0, s) {
            Ok(st) => reply.attr(ttl(st.ino), &attr(&st)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.engine.readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let mode = node_mode(mode, umask);
        self.entry(
            self.engine
                .mknod(parent.0, name.as_bytes(), mode, rdev, caller(req), None),
            reply,
        )
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let mode = node_mode(libc::S_IFDIR | (mode & 0o7777), umask);
        self.entry(
            self.engine
                .mknod(parent.0, name.as_bytes(), mode, 0, caller(req), None),
            reply,
        )
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        Self::empty(self.engine.unlink(parent.0, name.as_bytes()), reply)
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        Self::empty(self.engine.rmdir(parent.0, name.as_bytes()), reply)
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let t = target.as_os_str().as_bytes();
        self.entry(
            self.engine.mknod(
                parent.0,
                link_name.as_bytes(),
                libc::S_IFLNK | 0o777,
                0,
                caller(req),
                Some(t),
            ),
            reply,
        )
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        Self::empty(
            self.engine.rename(
                parent.0,
                name.as_bytes(),
                newparent.0,
                newname.as_bytes(),
                flags.bits(),
            ),
            reply,
        )
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        self.entry(
            self.engine.link(ino.0, newparent.0, newname.as_bytes()),
            reply,
        )
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let write = flags.0 & libc::O_ACCMODE != libc::O_RDONLY || flags.0 & libc::O_TRUNC != 0;
        match self.open_flags(ino.0, write) {
            Ok(f) => reply.opened(FileHandle(0), f),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.engine.read(
            ino.0,
            offset,
            size,
            Box::new(move |r| match r {
                Ok(d) => reply.data(d),
                Err(e) => reply.error(errno(&e)),
            }),
        )
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        // A write drops file capabilities, and set-user-id / set-group-id when the kernel says
        // the writer lacks CAP_FSETID (FUSE_HANDLE_KILLPRIV_V2 leaves both to us).
        let kill = KillPriv {
            suid_sgid: write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID),
            caps: true,
        };
        // A page the kernel's write-back cache sends: the kernel keeps the file's times and
        // sends them itself (a setattr that may come before this page).
        let times = if write_flags.contains(WriteFlags::FUSE_WRITE_CACHE) {
            WriteTimes::Kernel
        } else {
            WriteTimes::Set
        };
        self.engine.write(
            ino.0,
            offset,
            data,
            kill,
            times,
            Box::new(move |r| match r {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(errno(&e)),
            }),
        )
    }

    // flush is not implemented: the kernel then stops sending it (one round trip less per
    // close). It still writes the file's dirty pages back at close (as WRITE requests).

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok()
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.engine.fsync(Box::new(move |r| Self::empty(r, reply)))
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.engine.getattr(ino.0) {
            Ok(st) if st.attr.is_dir() => reply.opened(FileHandle(0), FopenFlags::empty()),
            Ok(_) => reply.error(Errno::ENOTDIR),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        match self.engine.readdir(ino.0, offset, 1024) {
            Ok(entries) => {
                for e in entries {
                    if reply.add(
                        INodeNo(e.ino),
                        e.offset,
                        kind(e.kind),
                        OsStr::from_bytes(&e.name),
                    ) {
                        break;
                    }
                }
                reply.ok()
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        match self.engine.readdir(ino.0, offset, 1024) {
            Ok(entries) => {
                for e in entries {
                    let st = match &e.name[..] {
                        b"." | b".." => self.engine.getattr(ino.0),
                        _ => self.engine.getattr(e.ino),
                    };
                    let Ok(st) = st else { continue };
                    let full = reply.add(
                        INodeNo(e.ino),
                        e.offset,
                        OsStr::from_bytes(&e.name),
                        ttl(ino.0),
                        &attr(&st),
                        GEN,
                    );
                    if full {
                        break;
                    }
                    // The kernel counts a lookup for every entry but "." and "..".
                    if e.name[..] != *b"." && e.name[..] != *b".." {
                        self.engine.inc_ref(e.ino, 1);
                    }
                }
                reply.ok()
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.engine.fsync(Box::new(move |r| Self::empty(r, reply)))
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = self.engine.statfs();
        reply.statfs(
            s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.bsize,
        )
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        Self::empty(
            self.engine.setxattr(ino.0, name.as_bytes(), value, flags),
            reply,
        )
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        // security.capability is asked before every write by an unprivileged writer; it is
        // answered from memory like every other attribute.
        match self.engine.getxattr(ino.0, name.as_bytes()) {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) if v.len() > size as usize => reply.error(Errno::ERANGE),
            Ok(v) => reply.data(&v),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.engine.listxattr(ino.0) {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) if v.len() > size as usize => reply.error(Errno::ERANGE),
            Ok(v) => reply.data(&v),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        Self::empty(self.engine.removexattr(ino.0, name.as_bytes()), reply)
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        Self::empty(self.engine.getattr(ino.0).map(|_| ()), reply)
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let mode = node_mode(mode, umask);
        let r = self
            .engine
            .mknod(parent.0, name.as_bytes(), mode, 0, caller(req), None);
        match r.and_then(|st| Ok((st, self.open_flags(st.ino, true)?))) {
            Ok((st, f)) => reply.created(&TTL, &attr(&st), GEN, FileHandle(0), f),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        Self::empty(self.engine.fallocate(ino.0, offset, length, mode), reply)
    }

    // lseek (SEEK_DATA / SEEK_HOLE) is not implemented: the kernel then answers it itself
    // from its own size (all data, a hole at EOF). The engine's answer would miss the dirty
    // pages the kernel's write-back cache has not sent yet (the kernel does not flush before
    // asking), and report data the kernel holds as a hole.

    fn copy_file_range(
        &self,
        _req: &Request,
        ino_in: INodeNo,
        _fh_in: FileHandle,
        offset_in: u64,
        ino_out: INodeNo,
        _fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        let len = len.min(u32::MAX as u64 / 2);
        match self
            .engine
            .copy_file_range(ino_in.0, offset_in, ino_out.0, offset_out, len)
        {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(errno(&e)),
        }
    }
}

/// Mount options Strata uses: the device as fsname, no subtype, root-style options.
pub fn config(fsname: &str, threads: usize) -> Config {
    let mut c = Config::default();
    c.mount_options = vec![
        MountOption::FSName(fsname.to_string()),
        MountOption::DefaultPermissions,
        MountOption::Suid,
        MountOption::Dev,
        MountOption::RW,
        MountOption::Exec,
        MountOption::Async,
    ];
    c.acl = SessionACL::All;
    c.n_threads = Some(threads.max(1));
    c.clone_fd = true;
    c
}

/// Drop the kernel's cached entry of a layer's directory when the layer is removed, so
/// `<mnt>/<id>` disappears at once rather than when its entry expires.
pub fn watch_layers(session: &Session<StrataFs>, engine: &Engine) {
    let notifier = session.notifier();
    engine.set_layer_listener(Box::new(move |id| {
        if let Err(e) = notifier.inval_entry(INodeNo(engine::MOUNT_ROOT), OsStr::new(id)) {
            if e.raw_os_error() != Some(libc::ENOENT) {
                log::debug!("could not drop the kernel's entry for layer {id}: {e}");
            }
        }
    }));
}

/// Let the engine get the kernel's dirty pages back before it freezes or exports a layer: a
/// `syncfs` of the mount (from the admin or snapshotter thread that asks; the FUSE threads
/// serve the writes it causes).
pub fn flush_on_freeze(engine: &Engine, mountpoint: &Path) {
    let mp = std::fs::canonicalize(mountpoint).unwrap_or_else(|_| mountpoint.to_path_buf());
    engine.set_kernel_flush(Box::new(move || {
        if let Err(e) = sys::syncfs(&mp) {
            log::warn!(
                "could not write back the kernel's cached pages (syncfs {}): {e}",
                mp.display()
            );
        }
    }));
}

/// Create the FUSE session (mounts). Run it with `Session::run`.
pub fn session(
    engine: Arc<Engine>,
    mountpoint: &Path,
    fsname: &str,
    threads: usize,
) -> std::io::Result<Session<StrataFs>> {
    Session::new(StrataFs::new(engine), mountpoint, &config(fsname, threads))
}
