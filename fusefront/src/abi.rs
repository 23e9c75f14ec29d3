//! The kernel's FUSE ABI (include/uapi/linux/fuse.h, protocol 7.45), as much of it as Strata
//! speaks: opcodes, flags, and the fixed-size structures with their sizes and little-endian
//! field layout. Structures are decoded from and encoded to byte slices field by field (no
//! transmutes): [`Le`] reads with bounds checks, [`Put`] appends.
//!
//! The sizes are the kernel's; `tests` below pins each one.

/// Protocol major version.
pub const KERNEL_VERSION: u32 = 7;
/// The newest minor version we speak (the kernel and we use the smaller of the two).
pub const KERNEL_MINOR_VERSION: u32 = 45;
/// The oldest minor version we accept: 7.31 (Linux 5.10) has every structure at its present
/// size and FUSE_HANDLE_KILLPRIV_V2 follows in 7.33.
pub const MIN_MINOR_VERSION: u32 = 31;
/// The node id of the mount root.
pub const ROOT_ID: u64 = 1;

/// Opcodes (`enum fuse_opcode`).
pub mod op {
    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
    pub const GETATTR: u32 = 3;
    pub const SETATTR: u32 = 4;
    pub const READLINK: u32 = 5;
    pub const SYMLINK: u32 = 6;
    pub const MKNOD: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const UNLINK: u32 = 10;
    pub const RMDIR: u32 = 11;
    pub const RENAME: u32 = 12;
    pub const LINK: u32 = 13;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const FSYNC: u32 = 20;
    pub const SETXATTR: u32 = 21;
    pub const GETXATTR: u32 = 22;
    pub const LISTXATTR: u32 = 23;
    pub const REMOVEXATTR: u32 = 24;
    pub const FLUSH: u32 = 25;
    pub const INIT: u32 = 26;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const FSYNCDIR: u32 = 30;
    pub const GETLK: u32 = 31;
    pub const SETLK: u32 = 32;
    pub const SETLKW: u32 = 33;
    pub const ACCESS: u32 = 34;
    pub const CREATE: u32 = 35;
    pub const INTERRUPT: u32 = 36;
    pub const BMAP: u32 = 37;
    pub const DESTROY: u32 = 38;
    pub const IOCTL: u32 = 39;
    pub const POLL: u32 = 40;
    pub const NOTIFY_REPLY: u32 = 41;
    pub const BATCH_FORGET: u32 = 42;
    pub const FALLOCATE: u32 = 43;
    pub const READDIRPLUS: u32 = 44;
    pub const RENAME2: u32 = 45;
    pub const LSEEK: u32 = 46;
    pub const COPY_FILE_RANGE: u32 = 47;
    pub const SETUPMAPPING: u32 = 48;
    pub const REMOVEMAPPING: u32 = 49;
    pub const SYNCFS: u32 = 50;
    pub const TMPFILE: u32 = 51;
    pub const STATX: u32 = 52;
    pub const COPY_FILE_RANGE_64: u32 = 53;
    /// One past the largest opcode we count (the per-opcode counters are an array).
    pub const COUNT: usize = 54;
}

/// The opcode's name as the header spells it (without `FUSE_`), for logs and metrics.
pub fn op_name(opcode: u32) -> &'static str {
    const NAMES: [&str; op::COUNT] = [
        "UNKNOWN",
        "LOOKUP",
        "FORGET",
        "GETATTR",
        "SETATTR",
        "READLINK",
        "SYMLINK",
        "UNKNOWN",
        "MKNOD",
        "MKDIR",
        "UNLINK",
        "RMDIR",
        "RENAME",
        "LINK",
        "OPEN",
        "READ",
        "WRITE",
        "STATFS",
        "RELEASE",
        "UNKNOWN",
        "FSYNC",
        "SETXATTR",
        "GETXATTR",
        "LISTXATTR",
        "REMOVEXATTR",
        "FLUSH",
        "INIT",
        "OPENDIR",
        "READDIR",
        "RELEASEDIR",
        "FSYNCDIR",
        "GETLK",
        "SETLK",
        "SETLKW",
        "ACCESS",
        "CREATE",
        "INTERRUPT",
        "BMAP",
        "DESTROY",
        "IOCTL",
        "POLL",
        "NOTIFY_REPLY",
        "BATCH_FORGET",
        "FALLOCATE",
        "READDIRPLUS",
        "RENAME2",
        "LSEEK",
        "COPY_FILE_RANGE",
        "SETUPMAPPING",
        "REMOVEMAPPING",
        "SYNCFS",
        "TMPFILE",
        "STATX",
        "COPY_FILE_RANGE_64",
    ];
    NAMES.get(opcode as usize).copied().unwrap_or("UNKNOWN")
}

/// INIT flags (`flags | flags2 << 32`).
pub mod init {
    pub const ASYNC_READ: u64 = 1 << 0;
    pub const POSIX_LOCKS: u64 = 1 << 1;
    pub const ATOMIC_O_TRUNC: u64 = 1 << 3;
    pub const EXPORT_SUPPORT: u64 = 1 << 4;
    pub const BIG_WRITES: u64 = 1 << 5;
    pub const DONT_MASK: u64 = 1 << 6;
    pub const FLOCK_LOCKS: u64 = 1 << 10;
    pub const AUTO_INVAL_DATA: u64 = 1 << 12;
    pub const DO_READDIRPLUS: u64 = 1 << 13;
    pub const READDIRPLUS_AUTO: u64 = 1 << 14;
    pub const ASYNC_DIO: u64 = 1 << 15;
    pub const WRITEBACK_CACHE: u64 = 1 << 16;
    pub const NO_OPEN_SUPPORT: u64 = 1 << 17;
    pub const PARALLEL_DIROPS: u64 = 1 << 18;
    pub const HANDLE_KILLPRIV: u64 = 1 << 19;
    pub const POSIX_ACL: u64 = 1 << 20;
    pub const ABORT_ERROR: u64 = 1 << 21;
    pub const MAX_PAGES: u64 = 1 << 22;
    pub const CACHE_SYMLINKS: u64 = 1 << 23;
    pub const NO_OPENDIR_SUPPORT: u64 = 1 << 24;
    pub const EXPLICIT_INVAL_DATA: u64 = 1 << 25;
    pub const HANDLE_KILLPRIV_V2: u64 = 1 << 28;
    pub const SETXATTR_EXT: u64 = 1 << 29;
    pub const INIT_EXT: u64 = 1 << 30;
    pub const CREATE_SUPP_GROUP: u64 = 1 << 34;
    pub const HAS_EXPIRE_ONLY: u64 = 1 << 35;
    pub const DIRECT_IO_ALLOW_MMAP: u64 = 1 << 36;
    pub const NO_EXPORT_SUPPORT: u64 = 1 << 38;
    pub const HAS_RESEND: u64 = 1 << 39;
    pub const OVER_IO_URING: u64 = 1 << 41;
}

/// `fuse_open_out.open_flags`.
pub mod fopen {
    pub const DIRECT_IO: u32 = 1 << 0;
    pub const KEEP_CACHE: u32 = 1 << 1;
    pub const CACHE_DIR: u32 = 1 << 3;
    pub const NOFLUSH: u32 = 1 << 5;
    pub const PARALLEL_DIRECT_WRITES: u32 = 1 << 6;
}

/// `fuse_setattr_in.valid`.
pub mod fattr {
    pub const MODE: u32 = 1 << 0;
    pub const UID: u32 = 1 << 1;
    pub const GID: u32 = 1 << 2;
    pub const SIZE: u32 = 1 << 3;
    pub const ATIME: u32 = 1 << 4;
    pub const MTIME: u32 = 1 << 5;
    pub const FH: u32 = 1 << 6;
    pub const ATIME_NOW: u32 = 1 << 7;
    pub const MTIME_NOW: u32 = 1 << 8;
    pub const LOCKOWNER: u32 = 1 << 9;
    pub const CTIME: u32 = 1 << 10;
    pub const KILL_SUIDGID: u32 = 1 << 11;
}

/// `fuse_write_in.write_flags`.
pub const WRITE_CACHE: u32 = 1 << 0;
pub const WRITE_KILL_SUIDGID: u32 = 1 << 2;
/// `fuse_open_in.open_flags` / `fuse_create_in.open_flags`.
pub const OPEN_KILL_SUIDGID: u32 = 1 << 0;
/// `fuse_fsync_in.fsync_flags`.
pub const FSYNC_FDATASYNC: u32 = 1 << 0;
/// `fuse_in_header.unique` of a request the kernel sends again (FUSE_HAS_RESEND).
pub const UNIQUE_RESEND: u64 = 1 << 63;
/// Extension type of the supplementary groups (`fuse_supp_groups`).
pub const EXT_GROUPS: u32 = 32;

/// Notification codes (`enum fuse_notify_code`), sent as the `error` of a reply with unique 0.
pub mod notify {
    pub const INVAL_INODE: i32 = 2;
    pub const INVAL_ENTRY: i32 = 3;
    pub const DELETE: i32 = 6;
    pub const RESEND: i32 = 7;
}

/// io_uring commands (`enum fuse_uring_cmd`).
pub const IO_URING_CMD_REGISTER: u32 = 1;
pub const IO_URING_CMD_COMMIT_AND_FETCH: u32 = 2;
/// `FUSE_DEV_IOC_CLONE`: `_IOR(229, 0, uint32_t)`.
pub const DEV_IOC_CLONE: u64 = (2 << 30) | (4 << 16) | (229 << 8);

// Sizes of the structures (the kernel's `sizeof`).
pub const IN_HEADER_SIZE: usize = 40;
pub const OUT_HEADER_SIZE: usize = 16;
pub const ATTR_SIZE: usize = 88;
pub const ENTRY_OUT_SIZE: usize = 40 + ATTR_SIZE;
pub const ATTR_OUT_SIZE: usize = 16 + ATTR_SIZE;
pub const OPEN_OUT_SIZE: usize = 16;
pub const WRITE_OUT_SIZE: usize = 8;
pub const STATFS_OUT_SIZE: usize = 80;
pub const GETXATTR_OUT_SIZE: usize = 8;
pub const INIT_IN_SIZE: usize = 64;
pub const INIT_OUT_SIZE: usize = 64;
pub const DIRENT_SIZE: usize = 24;
pub const DIRENTPLUS_SIZE: usize = ENTRY_OUT_SIZE + DIRENT_SIZE;
pub const NOTIFY_INVAL_ENTRY_OUT_SIZE: usize = 16;
pub const NOTIFY_INVAL_INODE_OUT_SIZE: usize = 24;
pub const NOTIFY_DELETE_OUT_SIZE: usize = 24;
pub const LSEEK_OUT_SIZE: usize = 8;
/// io_uring: the header buffer of a ring entry (`struct fuse_uring_req_header`): the in/out
/// header area, the per-opcode header area, and `fuse_uring_ent_in_out`.
pub const URING_IN_OUT_HEADER_SIZE: usize = 128;
pub const URING_OP_IN_OUT_SIZE: usize = 128;
pub const URING_ENT_IN_OUT_SIZE: usize = 32;
pub const URING_REQ_HEADER_SIZE: usize =
    URING_IN_OUT_HEADER_SIZE + URING_OP_IN_OUT_SIZE + URING_ENT_IN_OUT_SIZE;
/// The smallest read buffer the kernel accepts on /dev/fuse, and payload of a ring entry.
pub const MIN_READ_BUFFER: usize = 8192;

/// The size of the first, fixed-size argument of a request (`in_args[0]`), which io_uring
/// puts into the per-opcode header area and /dev/fuse in front of the rest; 0 for opcodes
/// whose first argument is a name or nothing.
pub fn arg0_size(opcode: u32, minor: u32) -> usize {
    match opcode {
        op::GETATTR => 16,
        op::SETATTR => 88,
        op::MKNOD => 16,
        op::MKDIR => 8,
        op::RENAME => 8,
        op::RENAME2 => 16,
        op::LINK => 8,
        op::OPEN | op::OPENDIR => 8,
        op::CREATE | op::TMPFILE => 16,
        op::READ | op::READDIR | op::READDIRPLUS => 40,
        op::WRITE => 40,
        op::RELEASE | op::RELEASEDIR => 24,
        op::FLUSH => 24,
        op::FSYNC | op::FSYNCDIR => 16,
        // The extended header only when FUSE_SETXATTR_EXT was agreed; [`crate::request`]
        // is told which.
        op::SETXATTR => 8,
        op::GETXATTR | op::LISTXATTR => 8,
        op::ACCESS => 8,
        op::INIT => {
            if minor >= 36 {
                INIT_IN_SIZE
            } else {
                16
            }
        }
        op::INTERRUPT => 8,
        op::FORGET => 8,
        op::BATCH_FORGET => 8,
        op::FALLOCATE => 32,
        op::LSEEK => 24,
        op::COPY_FILE_RANGE | op::COPY_FILE_RANGE_64 => 56,
        op::SYNCFS => 8,
        op::STATX => 24,
        op::GETLK | op::SETLK | op::SETLKW => 48,
        op::BMAP => 16,
        op::POLL => 24,
        op::IOCTL => 32,
        _ => 0,
    }
}

/// Reads little-endian fields from a byte slice, front to back; every read is bounds-checked
/// and a short slice yields `None`.
#[derive(Clone, Copy)]
pub struct Le<'a> {
    buf: &'a [u8],
}

impl<'a> Le<'a> {
    pub fn new(buf: &'a [u8]) -> Le<'a> {
        Le { buf }
    }

    pub fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Some(a)
    }

    pub fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.bytes(2)?.try_into().ok()?))
    }

    pub fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.bytes(4)?.try_into().ok()?))
    }

    pub fn i32(&mut self) -> Option<i32> {
        Some(i32::from_le_bytes(self.bytes(4)?.try_into().ok()?))
    }

    pub fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.bytes(8)?.try_into().ok()?))
    }

    pub fn skip(&mut self, n: usize) -> Option<()> {
        self.bytes(n).map(|_| ())
    }

    /// Whatever is left.
    pub fn rest(self) -> &'a [u8] {
        self.buf
    }
}

/// Appends little-endian fields to a buffer.
pub trait Put {
    fn put_u16(&mut self, v: u16);
    fn put_u32(&mut self, v: u32);
    fn put_i32(&mut self, v: i32);
    fn put_u64(&mut self, v: u64);
    fn put_zeros(&mut self, n: usize);
}

impl Put for Vec<u8> {
    fn put_u16(&mut self, v: u16) {
        self.extend_from_slice(&v.to_le_bytes())
    }
    fn put_u32(&mut self, v: u32) {
        self.extend_from_slice(&v.to_le_bytes())
    }
    fn put_i32(&mut self, v: i32) {
        self.extend_from_slice(&v.to_le_bytes())
    }
    fn put_u64(&mut self, v: u64) {
        self.extend_from_slice(&v.to_le_bytes())
    }
    fn put_zeros(&mut self, n: usize) {
        self.resize(self.len() + n, 0)
    }
}

/// `struct fuse_in_header`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InHeader {
    pub len: u32,
    pub opcode: u32,
    pub unique: u64,
    pub nodeid: u64,
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
    /// Length of the extensions at the end of the request, in 8-byte units.
    pub total_extlen: u16,
}

impl InHeader {
    pub fn decode(b: &[u8]) -> Option<InHeader> {
        let mut r = Le::new(b);
        let h = InHeader {
            len: r.u32()?,
            opcode: r.u32()?,
            unique: r.u64()?,
            nodeid: r.u64()?,
            uid: r.u32()?,
            gid: r.u32()?,
            pid: r.u32()?,
            total_extlen: r.u16()?,
        };
        r.u16()?;
        Some(h)
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        out.put_u32(self.len);
        out.put_u32(self.opcode);
        out.put_u64(self.unique);
        out.put_u64(self.nodeid);
        out.put_u32(self.uid);
        out.put_u32(self.gid);
        out.put_u32(self.pid);
        out.put_u16(self.total_extlen);
        out.put_u16(0);
    }
}

/// `struct fuse_out_header`: `len` counts the header too; `error` is a negative errno (or a
/// notification code when `unique` is 0).
pub fn out_header(len: u32, error: i32, unique: u64) -> [u8; OUT_HEADER_SIZE] {
    let mut h = [0u8; OUT_HEADER_SIZE];
    h[0..4].copy_from_slice(&len.to_le_bytes());
    h[4..8].copy_from_slice(&error.to_le_bytes());
    h[8..16].copy_from_slice(&unique.to_le_bytes());
    h
}

/// `struct fuse_attr`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FuseAttr {
    pub ino: u64,
    pub size: u64,
    pub blocks: u64,
    pub atime: u64,
    pub mtime: u64,
    pub ctime: u64,
    pub atimensec: u32,
    pub mtimensec: u32,
    pub ctimensec: u32,
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub blksize: u32,
    pub flags: u32,
}

impl FuseAttr {
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.put_u64(self.ino);
        out.put_u64(self.size);
        out.put_u64(self.blocks);
        out.put_u64(self.atime);
        out.put_u64(self.mtime);
        out.put_u64(self.ctime);
        out.put_u32(self.atimensec);
        out.put_u32(self.mtimensec);
        out.put_u32(self.ctimensec);
        out.put_u32(self.mode);
        out.put_u32(self.nlink);
        out.put_u32(self.uid);
        out.put_u32(self.gid);
        out.put_u32(self.rdev);
        out.put_u32(self.blksize);
        out.put_u32(self.flags);
    }

    pub fn decode(b: &[u8]) -> Option<FuseAttr> {
        let mut r = Le::new(b);
        Some(FuseAttr {
            ino: r.u64()?,
            size: r.u64()?,
            blocks: r.u64()?,
            atime: r.u64()?,
            mtime: r.u64()?,
            ctime: r.u64()?,
            atimensec: r.u32()?,
            mtimensec: r.u32()?,
            ctimensec: r.u32()?,
            mode: r.u32()?,
            nlink: r.u32()?,
            uid: r.u32()?,
            gid: r.u32()?,
            rdev: r.u32()?,
            blksize: r.u32()?,
            flags: r.u32()?,
        })
    }
}

/// `struct fuse_init_out`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InitOut {
    pub major: u32,
    pub minor: u32,
    pub max_readahead: u32,
    /// Both flag words (`flags` and `flags2`).
    pub flags: u64,
    pub max_background: u16,
    pub congestion_threshold: u16,
    pub max_write: u32,
    pub time_gran: u32,
    pub max_pages: u16,
}

impl InitOut {
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.put_u32(self.major);
        out.put_u32(self.minor);
        out.put_u32(self.max_readahead);
        out.put_u32(self.flags as u32);
        out.put_u16(self.max_background);
        out.put_u16(self.congestion_threshold);
        out.put_u32(self.max_write);
        out.put_u32(self.time_gran);
        out.put_u16(self.max_pages);
        out.put_u16(0); // map_alignment
        out.put_u32((self.flags >> 32) as u32);
        out.put_u32(0); // max_stack_depth
        out.put_u16(0); // request_timeout
        out.put_zeros(INIT_OUT_SIZE - (out.len() - start));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structure_sizes_match_the_kernel() {
        let mut v = Vec::new();
        InHeader::default().encode(&mut v);
        assert_eq!(v.len(), IN_HEADER_SIZE);
        let mut v = Vec::new();
        FuseAttr::default().encode(&mut v);
        assert_eq!(v.len(), ATTR_SIZE);
        let mut v = Vec::new();
        InitOut::default().encode(&mut v);
        assert_eq!(v.len(), INIT_OUT_SIZE);
        assert_eq!(ENTRY_OUT_SIZE, 128);
        assert_eq!(ATTR_OUT_SIZE, 104);
        assert_eq!(DIRENTPLUS_SIZE, 152);
        assert_eq!(URING_REQ_HEADER_SIZE, 288);
        // _IOR(229, 0, uint32_t)
        assert_eq!(DEV_IOC_CLONE, 0x8004_e500);
    }

    #[test]
    fn header_round_trip_and_short_input() {
        let h = InHeader {
            len: 99,
            opcode: op::LOOKUP,
            unique: 7,
            nodeid: 1 << 41,
            uid: 1000,
            gid: 100,
            pid: 42,
            total_extlen: 2,
        };
        let mut v = Vec::new();
        h.encode(&mut v);
        assert_eq!(InHeader::decode(&v), Some(h));
        for n in 0..v.len() {
            assert_eq!(InHeader::decode(&v[..n]), None);
        }
        let mut a = Vec::new();
        let at = FuseAttr {
            ino: 5,
            mode: 0o100644,
            ..Default::default()
        };
        at.encode(&mut a);
        assert_eq!(FuseAttr::decode(&a), Some(at));
    }

    #[test]
    fn names() {
        assert_eq!(op_name(op::LOOKUP), "LOOKUP");
        assert_eq!(op_name(op::COPY_FILE_RANGE_64), "COPY_FILE_RANGE_64");
        assert_eq!(op_name(op::READDIRPLUS), "READDIRPLUS");
        assert_eq!(op_name(10_000), "UNKNOWN");
    }
}
