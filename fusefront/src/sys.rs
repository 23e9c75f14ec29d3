//! Small process-level helpers the daemon needs (signals, detaching a dead mount), kept here
//! so the binary and the other crates stay free of unsafe code. (They lived in the engine,
//! which has no business with signals or mounts.)

use std::ffi::CString;
use std::io;
use std::path::Path;

/// Block SIGINT, SIGTERM and SIGHUP in this thread and every thread it starts later, so
/// [`wait_for_signal`] can take them synchronously.
pub fn block_shutdown_signals() -> io::Result<()> {
    let set = shutdown_set();
    // SAFETY: pthread_sigmask reads the initialised set and writes nothing we pass.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

fn shutdown_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t owned by this frame.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
    }
    set
}

/// Wait for one of the blocked shutdown signals; returns its number.
pub fn wait_for_signal() -> i32 {
    let set = shutdown_set();
    let mut sig: libc::c_int = 0;
    // SAFETY: sigwait reads the set and writes the signal number into `sig`.
    unsafe { libc::sigwait(&set, &mut sig) };
    sig
}

/// Detach whatever is mounted at `path` (MNT_DETACH), e.g. the dead FUSE mount left by a
/// killed daemon ("Transport endpoint is not connected").
pub fn detach_mount(path: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Unmount `path` normally (as `umount` does).
pub fn unmount(path: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: as above.
    let rc = unsafe { libc::umount2(c.as_ptr(), 0) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Real user and group of this process.
pub fn ids() -> (u32, u32) {
    // SAFETY: getuid/getgid cannot fail and take no pointers.
    unsafe { (libc::getuid(), libc::getgid()) }
}

/// syncfs(2) on the file system mounted at `path`: write back its dirty pages and wait.
pub fn syncfs(path: &Path) -> io::Result<()> {
    let dir = std::fs::File::open(path)?;
    use std::os::fd::AsRawFd;
    // SAFETY: syncfs takes a descriptor we own for the duration of the call.
    let rc = unsafe { libc::syncfs(dir.as_raw_fd()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// /dev/fuse and mount(2)
// ---------------------------------------------------------------------------------------

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Open /dev/fuse for a new connection.
pub(crate) fn open_fuse_device() -> io::Result<OwnedFd> {
    let path = c"/dev/fuse";
    // SAFETY: `path` is a valid NUL-terminated string; we own the returned descriptor.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Another descriptor on the same FUSE connection (FUSE_DEV_IOC_CLONE): requests read from
/// it are answered through it, so each worker thread has its own processing queue.
pub(crate) fn clone_fuse_fd(session: &OwnedFd) -> io::Result<OwnedFd> {
    let fd = open_fuse_device()?;
    let mut src: u32 = session.as_raw_fd() as u32;
    // SAFETY: the ioctl reads one u32 (the session descriptor) from a live local.
    let rc = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            crate::abi::DEV_IOC_CLONE as _,
            &mut src as *mut u32,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// mount(2) of a FUSE file system served through `fd`: `source` is what mount tables show
/// as the device (fsname), `flags` the MS_* flags (atime policy), `data` the FUSE options
/// besides `fd=`.
pub(crate) fn mount_fuse(
    source: &str,
    target: &Path,
    fd: RawFd,
    flags: libc::c_ulong,
    data: &str,
) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let inval = |_| io::Error::from_raw_os_error(libc::EINVAL);
    let src = CString::new(source).map_err(inval)?;
    let tgt = CString::new(target.as_os_str().as_bytes()).map_err(inval)?;
    let fstype = c"fuse";
    let opts = CString::new(format!("fd={fd},{data}")).map_err(inval)?;
    // SAFETY: every pointer is a valid NUL-terminated string that outlives the call.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            fstype.as_ptr(),
            flags,
            opts.as_ptr() as *const libc::c_void,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// read(2) into `buf`.
pub(crate) fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the kernel writes at most buf.len() bytes into the live buffer.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// writev(2) of `parts` (at most 8) as one message.
pub(crate) fn writev(fd: RawFd, parts: &[&[u8]]) -> io::Result<usize> {
    let mut iov = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; 8];
    let n = parts.len().min(8);
    for (v, p) in iov.iter_mut().zip(parts) {
        v.iov_base = p.as_ptr() as *mut libc::c_void;
        v.iov_len = p.len();
    }
    // SAFETY: the first `n` iovecs point into live slices the kernel only reads.
    let r = unsafe { libc::writev(fd, iov.as_ptr(), n as libc::c_int) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r as usize)
}

/// Run the calling thread on `cpu` only (best effort).
pub(crate) fn pin_to_cpu(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; CPU_ZERO/CPU_SET write inside it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// A new eventfd (for waking a thread that sleeps in io_uring).
pub(crate) fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd takes no pointers; we own the returned descriptor.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: just created, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Add one to an eventfd.
pub(crate) fn eventfd_signal(fd: RawFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live u64.
    unsafe { libc::write(fd, &one as *const u64 as *const libc::c_void, 8) };
}
