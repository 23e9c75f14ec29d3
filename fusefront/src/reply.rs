//! Reply bodies: the structures the kernel expects after the `fuse_out_header`, encoded
//! little-endian. The body is the same on both transports; only where the header goes
//! differs (see [`crate::session::Reply`]).

use std::time::Duration;

use engine::{Stat, StatFs, Time};

use crate::abi::{self, FuseAttr, Put};

/// Seconds and nanoseconds of a TTL.
fn ttl_parts(ttl: Duration) -> (u64, u32) {
    (ttl.as_secs(), ttl.subsec_nanos())
}

/// A time as `fuse_attr` carries it (seconds as u64: negative times wrap, as the kernel reads
/// them back as s64).
fn time_parts(t: Time) -> (u64, u32) {
    (t.sec as u64, t.nsec)
}

/// `fuse_attr` of an engine stat.
pub fn attr(st: &Stat) -> FuseAttr {
    let a = &st.attr;
    let (atime, atimensec) = time_parts(a.atime);
    let (mtime, mtimensec) = time_parts(a.mtime);
    let (ctime, ctimensec) = time_parts(a.ctime);
    FuseAttr {
        ino: st.ino,
        size: a.size,
        blocks: st.blocks,
        atime,
        mtime,
        ctime,
        atimensec,
        mtimensec,
        ctimensec,
        mode: a.mode,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: 4096,
        flags: 0,
    }
}

/// `fuse_entry_out`: node id 0 with a TTL is a negative entry.
pub fn put_entry(out: &mut Vec<u8>, nodeid: u64, generation: u64, ttl: Duration, a: &FuseAttr) {
    let (s, ns) = ttl_parts(ttl);
    out.put_u64(nodeid);
    out.put_u64(generation);
    out.put_u64(s);
    out.put_u64(s);
    out.put_u32(ns);
    out.put_u32(ns);
    a.encode(out);
}

pub fn entry(nodeid: u64, generation: u64, ttl: Duration, a: &FuseAttr) -> Vec<u8> {
    let mut v = Vec::with_capacity(abi::ENTRY_OUT_SIZE + abi::OPEN_OUT_SIZE);
    put_entry(&mut v, nodeid, generation, ttl, a);
    v
}

/// `fuse_attr_out`.
pub fn attr_out(ttl: Duration, a: &FuseAttr) -> Vec<u8> {
    let (s, ns) = ttl_parts(ttl);
    let mut v = Vec::with_capacity(abi::ATTR_OUT_SIZE);
    v.put_u64(s);
    v.put_u32(ns);
    v.put_u32(0);
    a.encode(&mut v);
    v
}

/// `fuse_open_out`.
pub fn put_open(out: &mut Vec<u8>, fh: u64, open_flags: u32) {
    out.put_u64(fh);
    out.put_u32(open_flags);
    out.put_i32(0);
}

pub fn open(fh: u64, open_flags: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(abi::OPEN_OUT_SIZE);
    put_open(&mut v, fh, open_flags);
    v
}

/// `fuse_write_out`.
pub fn write(size: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(abi::WRITE_OUT_SIZE);
    v.put_u32(size);
    v.put_u32(0);
    v
}

/// `fuse_getxattr_out` (the size a getxattr or listxattr with size 0 asks for).
pub fn xattr_size(size: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(abi::GETXATTR_OUT_SIZE);
    v.put_u32(size);
    v.put_u32(0);
    v
}

/// `fuse_lseek_out`.
pub fn lseek(offset: u64) -> Vec<u8> {
    offset.to_le_bytes().to_vec()
}

/// `fuse_statfs_out`.
pub fn statfs(s: &StatFs) -> Vec<u8> {
    let mut v = Vec::with_capacity(abi::STATFS_OUT_SIZE);
    v.put_u64(s.blocks);
    v.put_u64(s.bfree);
    v.put_u64(s.bavail);
    v.put_u64(s.files);
    v.put_u64(s.ffree);
    v.put_u32(s.bsize);
    v.put_u32(s.namelen);
    v.put_u32(s.bsize); // frsize
    v.put_u32(0);
    v.put_zeros(24);
    v
}

/// The directory entry type (`DT_*`) of a mode.
pub fn dtype(mode: u32) -> u32 {
    (mode & libc::S_IFMT) >> 12
}

/// A READDIR or READDIRPLUS reply being filled, never past the size the kernel asked for.
pub struct DirBuf {
    buf: Vec<u8>,
    max: usize,
}

impl DirBuf {
    pub fn new(max: u32) -> DirBuf {
        let max = max as usize;
        DirBuf {
            buf: Vec::with_capacity(max.min(64 << 10)),
            max,
        }
    }

    fn put_dirent(&mut self, ino: u64, off: u64, kind: u32, name: &[u8]) {
        self.buf.put_u64(ino);
        self.buf.put_u64(off);
        self.buf.put_u32(name.len() as u32);
        self.buf.put_u32(kind);
        self.buf.extend_from_slice(name);
        let pad = self.buf.len().next_multiple_of(8) - self.buf.len();
        self.buf.put_zeros(pad);
    }

    /// Add a `fuse_dirent`; false (nothing added) when it does not fit.
    pub fn add(&mut self, ino: u64, off: u64, mode: u32, name: &[u8]) -> bool {
        let size = (abi::DIRENT_SIZE + name.len()).next_multiple_of(8);
        if self.buf.len() + size > self.max {
            return false;
        }
        self.put_dirent(ino, off, dtype(mode), name);
        true
    }

    /// Whether a `fuse_direntplus` of this name would fit.
    pub fn fits_plus(&self, name: &[u8]) -> bool {
        let size = (abi::DIRENTPLUS_SIZE + name.len()).next_multiple_of(8);
        self.buf.len() + size <= self.max
    }

    /// Add a `fuse_direntplus`; false (nothing added) when it does not fit. Node id 0 leaves
    /// the entry out of the kernel's cache (no lookup counted).
    pub fn add_plus(
        &mut self,
        nodeid: u64,
        ttl: Duration,
        a: &FuseAttr,
        off: u64,
        name: &[u8],
    ) -> bool {
        if !self.fits_plus(name) {
            return false;
        }
        put_entry(&mut self.buf, nodeid, 0, ttl, a);
        self.put_dirent(a.ino, off, dtype(a.mode), name);
        true
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
}

/// A notification (`unique` 0, the code in `error`): the whole message, header included.
pub fn notify_inval_entry(parent: u64, name: &[u8]) -> Vec<u8> {
    let len = abi::OUT_HEADER_SIZE + abi::NOTIFY_INVAL_ENTRY_OUT_SIZE + name.len() + 1;
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(&abi::out_header(len as u32, abi::notify::INVAL_ENTRY, 0));
    v.put_u64(parent);
    v.put_u32(name.len() as u32);
    v.put_u32(0);
    v.extend_from_slice(name);
    v.push(0);
    v
}

/// FUSE_NOTIFY_RESEND: the kernel queues again every request a daemon read and did not
/// answer (since Linux 6.9; they come back with [`abi::UNIQUE_RESEND`] set in `unique`).
pub fn notify_resend() -> Vec<u8> {
    abi::out_header(abi::OUT_HEADER_SIZE as u32, abi::notify::RESEND, 0).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        let a = FuseAttr::default();
        assert_eq!(
            entry(1, 0, Duration::from_secs(1), &a).len(),
            abi::ENTRY_OUT_SIZE
        );
        assert_eq!(attr_out(Duration::ZERO, &a).len(), abi::ATTR_OUT_SIZE);
        assert_eq!(open(0, 0).len(), abi::OPEN_OUT_SIZE);
        let s = StatFs {
            blocks: 1,
            bfree: 1,
            bavail: 1,
            files: 1,
            ffree: 1,
            bsize: 4096,
            namelen: 255,
        };
        assert_eq!(statfs(&s).len(), abi::STATFS_OUT_SIZE);
    }

    #[test]
    fn dirbuf_stops_at_the_limit() {
        let mut d = DirBuf::new(64);
        assert!(d.add(1, 1, libc::S_IFDIR, b"."));
        assert!(d.add(1, 2, libc::S_IFDIR, b".."));
        assert!(!d.add(5, 3, libc::S_IFREG, b"a-name-too-long-to-fit"));
        let b = d.into_bytes();
        assert_eq!(b.len(), 64);
        assert_eq!(u32::from_le_bytes(b[20..24].try_into().unwrap()), 4);
    }
}
