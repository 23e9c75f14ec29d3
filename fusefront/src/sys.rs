//! Small process-level helpers the daemon needs (signals, detaching a dead mount), kept here
//! so the binary and the other crates stay free of unsafe code. (They lived in the engine,
//! which has no business with signals or mounts.)

use std::ffi::CString;
use std::io;
use std::path::Path;

/// Block SIGINT, SIGTERM, SIGHUP and [`HANDOVER_SIGNAL`] in this thread and every thread it starts later, so
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

/// Undo [`block_shutdown_signals`] (inherited across exec: the keeper a daemon starts must
/// die of SIGTERM like any process).
pub fn unblock_shutdown_signals() {
    let set = shutdown_set();
    // SAFETY: as in `block_shutdown_signals`.
    unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
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
        libc::sigaddset(&mut set, HANDOVER_SIGNAL);
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

// ---------------------------------------------------------------------------------------
// Passing descriptors (live restart): SOCK_SEQPACKET unix sockets with SCM_RIGHTS, memfd,
// poll, and systemd's notify socket.
// ---------------------------------------------------------------------------------------

/// The most descriptors one message carries.
pub const MAX_FDS: usize = 64;

fn sockaddr_un(path: &[u8]) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
    let mut sa: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    sa.sun_family = libc::AF_UNIX as libc::sa_family_t;
    if path.is_empty() || path.len() >= sa.sun_path.len() {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    for (d, s) in sa.sun_path.iter_mut().zip(path) {
        *d = *s as libc::c_char;
    }
    // An abstract socket ("@name", as systemd writes NOTIFY_SOCKET) starts with a NUL byte.
    if path[0] == b'@' {
        sa.sun_path[0] = 0;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + path.len();
    Ok((sa, len as libc::socklen_t))
}

fn socket(kind: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: socket takes no pointers; we own the returned descriptor.
    let fd = unsafe { libc::socket(libc::AF_UNIX, kind | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: just created, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A listening SOCK_SEQPACKET unix socket at `path` (mode 0600; an old socket file is
/// replaced).
pub fn seqpacket_listen(path: &Path) -> io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let fd = socket(libc::SOCK_SEQPACKET)?;
    let (sa, len) = sockaddr_un(path.as_os_str().as_bytes())?;
    let _ = std::fs::remove_file(path);
    // SAFETY: `sa` is a valid sockaddr_un of `len` bytes for the duration of the call.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &sa as *const _ as *const libc::sockaddr,
            len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    // SAFETY: listen takes no pointers.
    if unsafe { libc::listen(fd.as_raw_fd(), 16) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Connect to the SOCK_SEQPACKET unix socket at `path`.
pub fn seqpacket_connect(path: &Path) -> io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt;
    let fd = socket(libc::SOCK_SEQPACKET)?;
    let (sa, len) = sockaddr_un(path.as_os_str().as_bytes())?;
    // SAFETY: as in `seqpacket_listen`.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            &sa as *const _ as *const libc::sockaddr,
            len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Accept one connection.
pub fn accept(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: null address pointers are allowed; we own the returned descriptor.
    let c = unsafe {
        libc::accept4(
            fd,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    };
    if c < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: just accepted, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(c) })
}

/// Send `bytes` and `fds` (at most [`MAX_FDS`]) as one message; `to` names a datagram
/// destination (systemd's notify socket), `None` a connected socket.
pub fn send_with_fds(
    sock: RawFd,
    to: Option<&[u8]>,
    bytes: &[u8],
    fds: &[RawFd],
) -> io::Result<()> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    let space = cmsg_space(fds.len());
    let mut cbuf = vec![0u64; space.div_ceil(8)];
    // SAFETY: msghdr is plain data; all zeroes is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    let addr = to.map(sockaddr_un).transpose()?;
    if let Some((sa, len)) = &addr {
        msg.msg_name = sa as *const _ as *mut libc::c_void;
        msg.msg_namelen = *len;
    }
    if !fds.is_empty() {
        msg.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = space as _;
        // SAFETY: msg_control points at `space` zeroed, 8-byte aligned bytes, room for one
        // header and `fds.len()` descriptors (CMSG_SPACE); CMSG_FIRSTHDR/CMSG_DATA stay
        // inside it.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of_val(fds) as u32) as _;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr(),
                libc::CMSG_DATA(c) as *mut RawFd,
                fds.len(),
            );
        }
    }
    // SAFETY: every pointer in `msg` refers to live locals for the duration of the call.
    let r = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn cmsg_space(n: usize) -> usize {
    // SAFETY: CMSG_SPACE is arithmetic.
    unsafe { libc::CMSG_SPACE((n * std::mem::size_of::<RawFd>()) as u32) as usize }
}

/// Receive one message into `buf`: its length (0 at end of stream) and the descriptors it
/// carried.
pub fn recv_with_fds(sock: RawFd, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    let space = cmsg_space(MAX_FDS);
    let mut cbuf = vec![0u64; space.div_ceil(8)];
    // SAFETY: msghdr is plain data; all zeroes is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = space as _;
    // SAFETY: the kernel writes at most buf.len() bytes and `space` control bytes into live
    // buffers.
    let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    // SAFETY: the CMSG_* macros walk the control buffer the kernel filled, within
    // msg_controllen; each SCM_RIGHTS payload holds descriptors now owned by this process.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let p = libc::CMSG_DATA(c) as *const RawFd;
                for i in 0..data / std::mem::size_of::<RawFd>() {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(p.add(i))));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::other("descriptors truncated"));
    }
    Ok((n as usize, fds))
}

/// poll(2) of `fds` (descriptor, events) for up to `timeout_ms` (-1: forever); the
/// returned events per descriptor.
pub fn poll(fds: &[(RawFd, i16)], timeout_ms: i32) -> io::Result<Vec<i16>> {
    let mut p: Vec<libc::pollfd> = fds
        .iter()
        .map(|&(fd, events)| libc::pollfd {
            fd,
            events,
            revents: 0,
        })
        .collect();
    // SAFETY: `p` is a live array of `p.len()` pollfd structures.
    let r = unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, timeout_ms) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(p.iter().map(|x| x.revents).collect())
}

/// Whether a read of `fd` would find something now (poll(2) with no wait; also true when
/// it would fail at once, so a caller's read reports why).
pub fn readable_now(fd: RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one live pollfd; a zero timeout does not wait.
    let r = unsafe { libc::poll(&mut p, 1, 0) };
    r != 0
}

/// Whether the FUSE connection behind `fd` is still up (the kernel reports POLLERR on
/// /dev/fuse once it is aborted or unmounted).
pub fn fuse_connected(fd: RawFd) -> bool {
    match poll(&[(fd, 0)], 0) {
        Ok(r) => r[0] & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) == 0,
        Err(_) => false,
    }
}

/// A sealed-size memfd holding `bytes` (the state kept beside the FUSE descriptors).
pub fn memfd_with(name: &std::ffi::CStr, bytes: &[u8]) -> io::Result<OwnedFd> {
    // SAFETY: `name` is NUL-terminated; we own the returned descriptor.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: just created, owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut f = std::fs::File::from(fd);
    use std::io::Write;
    f.write_all(bytes)?;
    Ok(f.into())
}

/// The whole content of a file descriptor read from offset 0 (at most `max` bytes).
pub fn read_fd_at0(fd: RawFd, max: usize) -> io::Result<Vec<u8>> {
    let mut v = vec![0u8; max];
    // SAFETY: the kernel writes at most `max` bytes into the live buffer.
    let n = unsafe { libc::pread(fd, v.as_mut_ptr() as *mut libc::c_void, max, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    v.truncate(n as usize);
    Ok(v)
}

/// Duplicate a descriptor (close-on-exec).
pub fn dup(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) takes no pointers; we own the result.
    let d = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if d < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: just created, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(d) })
}

/// Take ownership of a descriptor this process inherited (systemd's LISTEN_FDS), marking it
/// close-on-exec. `None` when `fd` is not open.
pub fn adopt_inherited_fd(fd: RawFd) -> Option<OwnedFd> {
    // SAFETY: fcntl on an arbitrary number only reports EBADF when it is not open.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return None;
    }
    // SAFETY: as above; sets FD_CLOEXEC on a descriptor we now own.
    unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) };
    // SAFETY: systemd passed this descriptor to this process alone; nothing else owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// An unbound unix datagram socket (for systemd's notify socket).
pub fn dgram_socket() -> io::Result<OwnedFd> {
    socket(libc::SOCK_DGRAM)
}

extern "C" fn wakeup_handler(_: libc::c_int) {}

/// Install a handler that does nothing for `sig`, without SA_RESTART: a thread blocked in
/// read(2) that gets `sig` returns EINTR (how FUSE workers are told to stop).
pub(crate) fn install_wakeup_handler(sig: libc::c_int) -> io::Result<()> {
    // SAFETY: sigaction is plain data; all zeroes is a valid value, filled in below.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = wakeup_handler as *const () as libc::sighandler_t;
    sa.sa_flags = 0;
    // SAFETY: sa_mask lives in `sa`; sigaction reads `sa` and writes nothing we pass.
    let rc = unsafe {
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(sig, &sa, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Send `sig` to a thread of this process that has not been joined yet.
pub(crate) fn signal_thread(t: libc::pthread_t, sig: libc::c_int) {
    // SAFETY: the caller holds the thread's unjoined JoinHandle, so `t` names a live (or
    // exited, not yet reaped) thread.
    unsafe { libc::pthread_kill(t, sig) };
}

/// The signal that wakes FUSE workers for a hand-over.
pub(crate) const WAKEUP_SIGNAL: libc::c_int = libc::SIGUSR1;
/// The signal that asks the daemon to hand its connection over and exit (`strata restart`).
pub const HANDOVER_SIGNAL: libc::c_int = libc::SIGUSR2;

/// A new, empty (zero-filled) memfd of `len` bytes.
pub fn memfd_sized(name: &std::ffi::CStr, len: u64) -> io::Result<OwnedFd> {
    // SAFETY: `name` is NUL-terminated; we own the returned descriptor.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: just created, owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    std::fs::File::from(fd.try_clone()?).set_len(len)?;
    Ok(fd)
}

/// The size of the file behind a descriptor.
pub fn fd_size(fd: RawFd) -> io::Result<u64> {
    // SAFETY: fstat writes into the zeroed struct we pass.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.st_size as u64)
}

/// Map `len` bytes of `fd` shared, read-write, at exactly `addr` (MAP_FIXED_NOREPLACE: an
/// error, EEXIST, when something is mapped there already). The mapping is never unmapped.
pub fn map_shared_at(fd: RawFd, addr: u64, len: usize) -> io::Result<*mut u8> {
    // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping, so no memory this
    // process uses changes; the result is checked below.
    let p = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_FIXED_NOREPLACE,
            fd,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    if p as u64 != addr {
        // A kernel older than 4.17 takes the flag for a hint.
        // SAFETY: `p` is the mapping just made, of `len` bytes, used by nobody.
        unsafe { libc::munmap(p, len) };
        return Err(io::Error::from_raw_os_error(libc::EEXIST));
    }
    Ok(p as *mut u8)
}

/// Map every page of `[addr, addr+len)` (page-aligned) present and writable in this
/// process's page tables now (MADV_POPULATE_WRITE), allocating what is missing (a file's
/// holes, anonymous memory never touched).
pub fn populate_write(addr: u64, len: usize) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    // SAFETY: madvise only faults the pages of a range this process mapped; it changes no
    // contents (missing pages read as zeros, as before).
    if unsafe { libc::madvise(addr as *mut libc::c_void, len, libc::MADV_POPULATE_WRITE) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The byte ranges of the file behind `fd`, within its first `len` bytes, that hold pages
/// (SEEK_DATA / SEEK_HOLE; for a memfd, the pages that were ever written).
pub fn data_ranges(fd: RawFd, len: u64) -> io::Result<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    let mut at = 0u64;
    while at < len {
        // SAFETY: lseek on a descriptor we hold; no memory is passed.
        let start = unsafe { libc::lseek(fd, at as libc::off_t, libc::SEEK_DATA) };
        if start < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break;
            }
            return Err(e);
        }
        let start = start as u64;
        if start >= len {
            break;
        }
        // SAFETY: as above.
        let end = unsafe { libc::lseek(fd, start as libc::off_t, libc::SEEK_HOLE) };
        if end < 0 {
            return Err(io::Error::last_os_error());
        }
        let end = (end as u64).min(len);
        out.push((start, end));
        at = end;
    }
    Ok(out)
}

/// statfs(2) of `path` once from each of CPUs `0..cpus` (the results unused: the calls
/// themselves are what matter), made by a child process, which this waits for.
///
/// Not from a thread of ours: a statfs of our own mount waits for our own answer, and a
/// killed process ends only once all its threads have; a thread blocked in it keeps a daemon
/// killed at that moment from ending, and whoever starts the successor that would answer
/// (systemd, an operator, a test) waits for that end first. The child holds no descriptor
/// of ours, and if we die it waits for the successor's answer on its own.
pub fn statfs_from_each_cpu(path: &Path, cpus: usize) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: after fork the child makes only system calls that neither allocate nor take
    // locks (close_range, sched_setaffinity, statfs), on memory prepared before the fork,
    // then _exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: as above; `st` is plain data on the child's stack, `c` NUL-terminated.
        unsafe {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            let mut st: libc::statfs = std::mem::zeroed();
            for cpu in 0..cpus {
                pin_to_cpu(cpu);
                libc::statfs(c.as_ptr(), &mut st);
            }
            libc::_exit(0);
        }
    }
    let mut status = 0;
    loop {
        // SAFETY: waitpid writes the status into the integer we pass.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid || (r < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR)) {
            return Ok(());
        }
    }
}
