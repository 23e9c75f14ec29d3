//! The system calls tests make directly, as safe functions: each is the libc call of the same
//! name with its result turned into `Result<_, errno>` (`Err` holds the errno the call set),
//! so tests compare errno values without touching raw pointers. Descriptors are `OwnedFd`s
//! (closed on drop, or by [`close`] when its result matters). Also privilege dropping in a
//! child process ([`as_user`]), file mappings ([`Mapping`]) and 4 KiB-aligned buffers for
//! O_DIRECT ([`AlignedBuf`]).
//!
//! This module and `uring` hold all the unsafe code of the tests.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// A system call's result: `Err` is the errno it set.
pub type SysResult<T> = Result<T, i32>;

/// The calling thread's errno.
pub fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// The errno of a failed std I/O call; 0 when it succeeded.
pub fn errno_of<T>(r: std::io::Result<T>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

/// 0 for success, else the errno: what [`as_user`] closures return.
pub fn code<T>(r: SysResult<T>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e,
    }
}

/// The symbolic name of an errno value ("OK" for 0).
pub fn errno_name(e: i32) -> String {
    let name = match e {
        0 => "OK",
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::EBADF => "EBADF",
        libc::EACCES => "EACCES",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::ESPIPE => "ESPIPE",
        libc::EROFS => "EROFS",
        libc::EMLINK => "EMLINK",
        libc::ERANGE => "ERANGE",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ELOOP => "ELOOP",
        libc::ENODATA => "ENODATA",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ENOTCONN => "ENOTCONN",
        libc::ETXTBSY => "ETXTBSY",
        libc::E2BIG => "E2BIG",
        libc::EUCLEAN => "EUCLEAN",
        libc::ECONNABORTED => "ECONNABORTED",
        _ => "",
    };
    if name.is_empty() {
        format!("errno {e}")
    } else {
        name.to_string()
    }
}

/// A path as a C string.
pub fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path with NUL")
}

/// `r` as a result: Err(errno) when negative.
fn check(r: libc::c_int) -> SysResult<()> {
    if r < 0 {
        Err(errno())
    } else {
        Ok(())
    }
}

/// A byte count (or offset) as a result: Err(errno) when negative.
fn check_len(r: isize) -> SysResult<usize> {
    if r < 0 {
        Err(errno())
    } else {
        Ok(r as usize)
    }
}

fn raw(fd: &impl AsFd) -> libc::c_int {
    fd.as_fd().as_raw_fd()
}

pub fn geteuid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Send signal `sig` to process `pid`.
pub fn kill(pid: u32, sig: i32) -> SysResult<()> {
    // SAFETY: kill takes plain integers; a wrong pid is an error (ESRCH), not memory unsafety.
    check(unsafe { libc::kill(pid as libc::pid_t, sig) })
}

/// Fork; in the child drop to (uid, gid) with no supplementary groups, run `f` and exit with
/// its result (0 = success, otherwise an errno). Returns that result. `f` runs in a forked
/// copy of a multi-threaded process: it should only make system calls (the functions of this
/// module), and allocate nothing.
pub fn as_user<F: FnOnce() -> i32>(uid: u32, gid: u32, f: F) -> i32 {
    // SAFETY: fork has no memory-safety preconditions; the child runs only `f` (documented to
    // make only system calls) and the async-signal-safe calls below, then `_exit`s without
    // running destructors or atexit handlers that could touch state copied mid-update.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let r = (|| {
            // SAFETY: a null list with count 0 is the documented way to clear the groups.
            if unsafe { libc::setgroups(0, std::ptr::null()) } != 0 {
                return 200;
            }
            // SAFETY: plain integer arguments.
            if unsafe { libc::setresgid(gid, gid, gid) } != 0 {
                return 201;
            }
            // SAFETY: plain integer arguments.
            if unsafe { libc::setresuid(uid, uid, uid) } != 0 {
                return 202;
            }
            f()
        })();
        // SAFETY: ends the forked child at once, as a child of fork must (no unwinding into
        // the parent's copied stack).
        unsafe { libc::_exit(r.clamp(0, 255)) };
    }
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid place for waitpid to store the child's status.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            break;
        }
        assert!(r >= 0 || errno() == libc::EINTR, "waitpid failed");
    }
    assert!(
        libc::WIFEXITED(status),
        "child killed by signal {}",
        libc::WTERMSIG(status)
    );
    let code = libc::WEXITSTATUS(status);
    assert!(code < 200, "child could not drop privileges (code {code})");
    code
}

// ---------------------------------------------------------------------------------------
// Paths
// ---------------------------------------------------------------------------------------

pub fn open(path: &CStr, flags: i32, mode: u32) -> SysResult<OwnedFd> {
    // SAFETY: `path` is a valid C string for the duration of the call.
    let fd = unsafe { libc::open(path.as_ptr(), flags, mode as libc::c_uint) };
    if fd < 0 {
        return Err(errno());
    }
    // SAFETY: open returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A file handle from `name_to_handle_at(2)`: its type and bytes, and the mount id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileHandle {
    pub handle_type: i32,
    pub bytes: Vec<u8>,
    pub mount_id: i32,
}

/// `name_to_handle_at(AT_FDCWD, path, ..., 0)`.
pub fn name_to_handle(path: &CStr) -> SysResult<FileHandle> {
    // struct file_handle: u32 handle_bytes, i32 handle_type, then up to MAX_HANDLE_SZ bytes.
    let mut buf = [0u32; 2 + 128 / 4];
    buf[0] = 128;
    let mut mount_id: libc::c_int = 0;
    // SAFETY: `buf` is a struct file_handle with room for 128 handle bytes (as handle_bytes
    // says); `path` is NUL-terminated; the kernel writes only inside both.
    let r = unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            libc::AT_FDCWD,
            path.as_ptr(),
            buf.as_mut_ptr(),
            &mut mount_id as *mut libc::c_int,
            0,
        )
    };
    if r < 0 {
        return Err(errno());
    }
    let n = (buf[0] as usize).min(128);
    let bytes: Vec<u8> = buf[2..]
        .iter()
        .flat_map(|w| w.to_ne_bytes())
        .take(n)
        .collect();
    Ok(FileHandle {
        handle_type: buf[1] as i32,
        bytes,
        mount_id,
    })
}

/// `open_by_handle_at(mount_fd, handle, flags)` (needs CAP_DAC_READ_SEARCH).
pub fn open_by_handle(mount_fd: impl AsFd, h: &FileHandle, flags: i32) -> SysResult<OwnedFd> {
    let mut buf = [0u32; 2 + 128 / 4];
    let n = h.bytes.len().min(128);
    buf[0] = n as u32;
    buf[1] = h.handle_type as u32;
    for (i, c) in h.bytes[..n].chunks(4).enumerate() {
        let mut w = [0u8; 4];
        w[..c.len()].copy_from_slice(c);
        buf[2 + i] = u32::from_ne_bytes(w);
    }
    // SAFETY: `buf` is a valid struct file_handle the kernel only reads.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount_fd.as_fd().as_raw_fd(),
            buf.as_mut_ptr(),
            flags,
        )
    };
    if fd < 0 {
        return Err(errno());
    }
    // SAFETY: a new descriptor, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `linkat(fd, "", AT_FDCWD, path, AT_EMPTY_PATH)`: give an open file (an O_TMPFILE one) a
/// name.
pub fn link_fd(fd: impl AsFd, path: &CStr) -> SysResult<()> {
    // SAFETY: the empty path and `path` are NUL-terminated; no buffers are written.
    let r = unsafe {
        libc::linkat(
            fd.as_fd().as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    if r != 0 {
        return Err(errno());
    }
    Ok(())
}

pub fn mknod(path: &CStr, mode: u32, dev: u64) -> SysResult<()> {
    // SAFETY: `path` is a valid C string.
    check(unsafe { libc::mknod(path.as_ptr(), mode, dev) })
}

pub fn truncate(path: &CStr, len: i64) -> SysResult<()> {
    // SAFETY: `path` is a valid C string.
    check(unsafe { libc::truncate(path.as_ptr(), len) })
}

pub fn mkdir(path: &CStr, mode: u32) -> SysResult<()> {
    // SAFETY: `path` is a valid C string.
    check(unsafe { libc::mkdir(path.as_ptr(), mode) })
}

pub fn rmdir(path: &CStr) -> SysResult<()> {
    // SAFETY: `path` is a valid C string.
    check(unsafe { libc::rmdir(path.as_ptr()) })
}

pub fn unlink(path: &CStr) -> SysResult<()> {
    // SAFETY: `path` is a valid C string.
    check(unsafe { libc::unlink(path.as_ptr()) })
}

pub fn rename(from: &CStr, to: &CStr) -> SysResult<()> {
    // SAFETY: both are valid C strings.
    check(unsafe { libc::rename(from.as_ptr(), to.as_ptr()) })
}

/// renameat2 relative to the working directory (AT_FDCWD), with RENAME_* `flags`.
pub fn renameat2(from: &CStr, to: &CStr, flags: u32) -> SysResult<()> {
    // SAFETY: both are valid C strings.
    check(unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            flags,
        )
    })
}

pub fn link(from: &CStr, to: &CStr) -> SysResult<()> {
    // SAFETY: both are valid C strings.
    check(unsafe { libc::link(from.as_ptr(), to.as_ptr()) })
}

pub fn symlink(target: &CStr, path: &CStr) -> SysResult<()> {
    // SAFETY: both are valid C strings.
    check(unsafe { libc::symlink(target.as_ptr(), path.as_ptr()) })
}

/// The link target, read into `buf`; its length.
pub fn readlink(path: &CStr, buf: &mut [u8]) -> SysResult<usize> {
    // SAFETY: `path` is a valid C string; readlink writes at most `buf.len()` bytes to `buf`.
    check_len(unsafe {
        libc::readlink(
            path.as_ptr(),
            buf.as_mut_ptr() as *mut libc::c_char,
            buf.len(),
        )
    })
}

pub fn chmod(path: &CStr, mode: u32) -> SysResult<()> {
    // SAFETY: `path` is a valid C string.
    check(unsafe { libc::chmod(path.as_ptr(), mode) })
}

/// fchownat relative to the working directory (AT_FDCWD), with AT_* `flags`.
pub fn fchownat(path: &CStr, uid: u32, gid: u32, flags: i32) -> SysResult<()> {
    // SAFETY: `path` is a valid C string.
    check(unsafe { libc::fchownat(libc::AT_FDCWD, path.as_ptr(), uid, gid, flags) })
}

/// utimensat relative to the working directory; `None` sets both times to now.
pub fn utimensat(path: &CStr, times: Option<&[libc::timespec; 2]>, flags: i32) -> SysResult<()> {
    let t = times.map_or(std::ptr::null(), |t| t.as_ptr());
    // SAFETY: `path` is a valid C string; `t` is null or points at two timespecs.
    check(unsafe { libc::utimensat(libc::AT_FDCWD, path.as_ptr(), t, flags) })
}

pub fn stat(path: &CStr) -> SysResult<libc::stat> {
    // SAFETY: an all-zero stat is a valid value of this plain C struct.
    let mut s: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a valid C string; `s` is a stat stat() may fill.
    check(unsafe { libc::stat(path.as_ptr(), &mut s) })?;
    Ok(s)
}

pub fn lstat(path: &CStr) -> SysResult<libc::stat> {
    // SAFETY: an all-zero stat is a valid value of this plain C struct.
    let mut s: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a valid C string; `s` is a stat lstat() may fill.
    check(unsafe { libc::lstat(path.as_ptr(), &mut s) })?;
    Ok(s)
}

pub fn statvfs(path: &CStr) -> SysResult<libc::statvfs> {
    // SAFETY: an all-zero statvfs is a valid value of this plain C struct.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a valid C string; `s` is a statvfs statvfs() may fill.
    check(unsafe { libc::statvfs(path.as_ptr(), &mut s) })?;
    Ok(s)
}

// ---------------------------------------------------------------------------------------
// Extended attributes
// ---------------------------------------------------------------------------------------

pub fn setxattr(path: &CStr, name: &CStr, value: &[u8], flags: i32) -> SysResult<()> {
    // SAFETY: valid C strings; the kernel reads `value.len()` bytes of `value`.
    check(unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr() as *const libc::c_void,
            value.len(),
            flags,
        )
    })
}

pub fn lsetxattr(path: &CStr, name: &CStr, value: &[u8], flags: i32) -> SysResult<()> {
    // SAFETY: valid C strings; the kernel reads `value.len()` bytes of `value`.
    check(unsafe {
        libc::lsetxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr() as *const libc::c_void,
            value.len(),
            flags,
        )
    })
}

pub fn fsetxattr(fd: impl AsFd, name: &CStr, value: &[u8], flags: i32) -> SysResult<()> {
    // SAFETY: a valid C string; the kernel reads `value.len()` bytes of `value`.
    check(unsafe {
        libc::fsetxattr(
            raw(&fd),
            name.as_ptr(),
            value.as_ptr() as *const libc::c_void,
            value.len(),
            flags,
        )
    })
}

/// The value's length; with an empty `buf` the call asks for the size (a null buffer).
pub fn getxattr(path: &CStr, name: &CStr, buf: &mut [u8]) -> SysResult<usize> {
    let ptr = buf_ptr(buf);
    // SAFETY: valid C strings; `ptr` is null with size 0 or `buf`, of `buf.len()` bytes.
    check_len(unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), ptr, buf.len()) })
}

/// [`getxattr`] without following a final symlink.
pub fn lgetxattr(path: &CStr, name: &CStr, buf: &mut [u8]) -> SysResult<usize> {
    let ptr = buf_ptr(buf);
    // SAFETY: valid C strings; `ptr` is null with size 0 or `buf`, of `buf.len()` bytes.
    check_len(unsafe { libc::lgetxattr(path.as_ptr(), name.as_ptr(), ptr, buf.len()) })
}

fn buf_ptr(buf: &mut [u8]) -> *mut libc::c_void {
    if buf.is_empty() {
        std::ptr::null_mut()
    } else {
        buf.as_mut_ptr() as *mut libc::c_void
    }
}

/// The NUL-separated names, into `buf`; their total length.
pub fn listxattr(path: &CStr, buf: &mut [u8]) -> SysResult<usize> {
    // SAFETY: a valid C string; the kernel writes at most `buf.len()` bytes to `buf`.
    check_len(unsafe {
        libc::listxattr(
            path.as_ptr(),
            buf.as_mut_ptr() as *mut libc::c_char,
            buf.len(),
        )
    })
}

/// [`listxattr`] without following a final symlink.
pub fn llistxattr(path: &CStr, buf: &mut [u8]) -> SysResult<usize> {
    // SAFETY: a valid C string; the kernel writes at most `buf.len()` bytes to `buf`.
    check_len(unsafe {
        libc::llistxattr(
            path.as_ptr(),
            buf.as_mut_ptr() as *mut libc::c_char,
            buf.len(),
        )
    })
}

pub fn removexattr(path: &CStr, name: &CStr) -> SysResult<()> {
    // SAFETY: valid C strings.
    check(unsafe { libc::removexattr(path.as_ptr(), name.as_ptr()) })
}

pub fn lremovexattr(path: &CStr, name: &CStr) -> SysResult<()> {
    // SAFETY: valid C strings.
    check(unsafe { libc::lremovexattr(path.as_ptr(), name.as_ptr()) })
}

// ---------------------------------------------------------------------------------------
// Descriptors
// ---------------------------------------------------------------------------------------

/// Close `fd`, reporting what close(2) said (dropping an `OwnedFd` ignores it).
pub fn close(fd: OwnedFd) -> SysResult<()> {
    // SAFETY: `fd` is ours (moved in) and closed exactly once here.
    check(unsafe { libc::close(fd.into_raw_fd()) })
}

pub fn openat(dir: impl AsFd, path: &CStr, flags: i32, mode: u32) -> SysResult<OwnedFd> {
    // SAFETY: `path` is a valid C string; `dir` is an open descriptor.
    let fd = unsafe { libc::openat(raw(&dir), path.as_ptr(), flags, mode as libc::c_uint) };
    if fd < 0 {
        return Err(errno());
    }
    // SAFETY: openat returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn mkdirat(dir: impl AsFd, path: &CStr, mode: u32) -> SysResult<()> {
    // SAFETY: `path` is a valid C string; `dir` is an open descriptor.
    check(unsafe { libc::mkdirat(raw(&dir), path.as_ptr(), mode) })
}

pub fn renameat(dir: impl AsFd, from: &CStr, to_dir: impl AsFd, to: &CStr) -> SysResult<()> {
    // SAFETY: valid C strings; open descriptors.
    check(unsafe { libc::renameat(raw(&dir), from.as_ptr(), raw(&to_dir), to.as_ptr()) })
}

pub fn unlinkat(dir: impl AsFd, path: &CStr, flags: i32) -> SysResult<()> {
    // SAFETY: a valid C string; an open descriptor.
    check(unsafe { libc::unlinkat(raw(&dir), path.as_ptr(), flags) })
}

/// Bytes read into `buf` at file offset `off`.
pub fn pread(fd: impl AsFd, buf: &mut [u8], off: i64) -> SysResult<usize> {
    // SAFETY: the kernel writes at most `buf.len()` bytes to `buf`.
    check_len(unsafe {
        libc::pread(
            raw(&fd),
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len(),
            off,
        )
    })
}

/// Bytes of `buf` written at file offset `off`.
pub fn pwrite(fd: impl AsFd, buf: &[u8], off: i64) -> SysResult<usize> {
    // SAFETY: the kernel reads at most `buf.len()` bytes of `buf`.
    check_len(unsafe {
        libc::pwrite(
            raw(&fd),
            buf.as_ptr() as *const libc::c_void,
            buf.len(),
            off,
        )
    })
}

pub fn ftruncate(fd: impl AsFd, len: i64) -> SysResult<()> {
    // SAFETY: integer arguments on an open descriptor.
    check(unsafe { libc::ftruncate(raw(&fd), len) })
}

pub fn fstat(fd: impl AsFd) -> SysResult<libc::stat> {
    // SAFETY: an all-zero stat is a valid value of this plain C struct.
    let mut s: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `s` is a stat fstat() may fill.
    check(unsafe { libc::fstat(raw(&fd), &mut s) })?;
    Ok(s)
}

pub fn fsync(fd: impl AsFd) -> SysResult<()> {
    // SAFETY: an open descriptor.
    check(unsafe { libc::fsync(raw(&fd)) })
}

pub fn fdatasync(fd: impl AsFd) -> SysResult<()> {
    // SAFETY: an open descriptor.
    check(unsafe { libc::fdatasync(raw(&fd)) })
}

pub fn fallocate(fd: impl AsFd, mode: i32, off: i64, len: i64) -> SysResult<()> {
    // SAFETY: integer arguments on an open descriptor.
    check(unsafe { libc::fallocate(raw(&fd), mode, off, len) })
}

/// The new offset.
pub fn lseek(fd: impl AsFd, off: i64, whence: i32) -> SysResult<i64> {
    // SAFETY: integer arguments on an open descriptor.
    let r = unsafe { libc::lseek(raw(&fd), off, whence) };
    if r < 0 {
        Err(errno())
    } else {
        Ok(r)
    }
}

/// Bytes copied; `off_in` and `off_out` advance by that many.
pub fn copy_file_range(
    fd_in: impl AsFd,
    off_in: &mut i64,
    fd_out: impl AsFd,
    off_out: &mut i64,
    len: usize,
) -> SysResult<usize> {
    // SAFETY: the offsets are valid places the kernel updates; no buffers are involved.
    check_len(unsafe { libc::copy_file_range(raw(&fd_in), off_in, raw(&fd_out), off_out, len, 0) })
}

/// fcntl(F_GETFL): the descriptor's status flags.
pub fn getfl(fd: impl AsFd) -> SysResult<i32> {
    // SAFETY: F_GETFL takes no argument pointer.
    let r = unsafe { libc::fcntl(raw(&fd), libc::F_GETFL) };
    if r < 0 {
        Err(errno())
    } else {
        Ok(r)
    }
}

// ---------------------------------------------------------------------------------------
// Memory
// ---------------------------------------------------------------------------------------

/// A MAP_SHARED mapping of part of a file, unmapped on drop (or by [`Mapping::unmap`]). Its
/// bytes are only ever copied in or out, never lent as references, since the file may change
/// underneath.
pub struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
    writable: bool,
}

impl Mapping {
    /// mmap(NULL, len, prot, MAP_SHARED, fd, offset). `len` > 0.
    pub fn shared(fd: impl AsFd, len: usize, prot: i32, offset: i64) -> SysResult<Mapping> {
        assert!(len > 0, "empty mapping");
        // SAFETY: a fresh mapping chosen by the kernel (no address hint) aliases nothing of
        // ours; integer arguments otherwise.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                raw(&fd),
                offset,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(errno());
        }
        Ok(Mapping {
            ptr,
            len,
            writable: prot & libc::PROT_WRITE != 0,
        })
    }

    /// A copy of the mapped bytes.
    pub fn read(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.len];
        // SAFETY: the mapping is readable for `len` bytes until it is unmapped (by us, later);
        // `v` is a distinct allocation of `len` bytes.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr as *const u8, v.as_mut_ptr(), self.len) };
        v
    }

    /// Copy `data` into the mapping at `at`.
    pub fn write(&mut self, at: usize, data: &[u8]) {
        assert!(self.writable, "mapping is not writable");
        assert!(at + data.len() <= self.len, "write past the mapping");
        // SAFETY: the range is inside the writable mapping (checked above), which does not
        // overlap `data` (a Rust allocation).
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), (self.ptr as *mut u8).add(at), data.len())
        };
    }

    pub fn msync(&self, flags: i32) -> SysResult<()> {
        // SAFETY: exactly our mapping.
        check(unsafe { libc::msync(self.ptr, self.len, flags) })
    }

    /// munmap, reporting its result.
    pub fn unmap(self) -> SysResult<()> {
        let me = std::mem::ManuallyDrop::new(self);
        // SAFETY: exactly our mapping, unmapped once (Drop does not run).
        check(unsafe { libc::munmap(me.ptr, me.len) })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: exactly our mapping, unmapped once.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// A zeroed heap buffer aligned to 4096 bytes (for O_DIRECT and io_uring).
pub struct AlignedBuf {
    ptr: *mut u8,
    len: usize,
    layout: Layout,
}

impl AlignedBuf {
    pub const ALIGN: usize = 4096;

    pub fn new(len: usize) -> AlignedBuf {
        let cap = len.max(1).next_multiple_of(Self::ALIGN);
        let layout = Layout::from_size_align(cap, Self::ALIGN).expect("layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "out of memory");
        AlignedBuf { ptr, len, layout }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` is a live, zero-initialised allocation of at least `len` bytes, and
        // the borrow of `self` keeps it alive and unaliased by writers.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, borrowed mutably through `self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    /// The start of the buffer, for the kernel (io_uring).
    pub(crate) fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout, freed once.
        unsafe { dealloc(self.ptr, self.layout) }
    }
}
