//! The system calls a test's stand-in for systemd needs (tests/live_restart_systemd.rs): the
//! manager's side of the notify socket (`SO_PASSCRED`, `recvmsg` with `SCM_RIGHTS` and
//! `SCM_CREDENTIALS`), `kcmp` to tell whether two descriptors are the same open file (how
//! systemd drops duplicates from a file descriptor store), `poll` for the `POLLERR`/`POLLHUP`
//! that make systemd drop a stored descriptor, and starting a process with descriptors at
//! 3, 4, … as systemd passes `LISTEN_FDS`.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};

/// At most this many descriptors are read from one message (systemd's NOTIFY_FD_MAX).
pub const NOTIFY_FD_MAX: usize = 768;

/// Ask the kernel to attach the sender's credentials to every message received on `sock`
/// (systemd sets it on its notify socket; without it messages carry no pid).
pub fn set_passcred(sock: impl AsFd) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: setsockopt reads `one` (a live c_int of the size passed) and nothing else.
    let r = unsafe {
        libc::setsockopt(
            sock.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PASSCRED,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One datagram as a service manager reads it.
pub struct Datagram {
    pub bytes: Vec<u8>,
    /// Descriptors passed with `SCM_RIGHTS` (close-on-exec).
    pub fds: Vec<OwnedFd>,
    /// The sender's pid from `SCM_CREDENTIALS`, if the message carried credentials.
    pub pid: Option<u32>,
    /// The message or its control data did not fit (MSG_TRUNC / MSG_CTRUNC).
    pub truncated: bool,
}

/// `recvmsg` one datagram of up to `max` bytes from `sock` (blocking, or up to the socket's
/// receive timeout: then `WouldBlock`).
pub fn recv_datagram(sock: impl AsFd, max: usize) -> io::Result<Datagram> {
    let mut buf = vec![0u8; max];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe {
        libc::CMSG_SPACE(std::mem::size_of::<libc::ucred>() as u32) as usize
            + libc::CMSG_SPACE((std::mem::size_of::<RawFd>() * NOTIFY_FD_MAX) as u32) as usize
    };
    let mut cbuf = vec![0u64; space.div_ceil(8)];
    // SAFETY: msghdr is plain data; all zeroes is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = space as _;
    // SAFETY: the kernel writes at most `max` bytes and `space` control bytes into live,
    // suitably aligned buffers that `msg` points at.
    let n = unsafe {
        libc::recvmsg(
            sock.as_fd().as_raw_fd(),
            &mut msg,
            libc::MSG_CMSG_CLOEXEC | libc::MSG_TRUNC,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let (mut fds, mut pid) = (Vec::new(), None);
    // SAFETY: the CMSG_* macros walk the control buffer the kernel filled, within
    // msg_controllen; each SCM_RIGHTS payload holds descriptors now owned by this process,
    // and an SCM_CREDENTIALS payload one struct ucred (read unaligned).
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            let data = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let p = libc::CMSG_DATA(c) as *const RawFd;
                for i in 0..data / std::mem::size_of::<RawFd>() {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(p.add(i))));
                }
            } else if (*c).cmsg_level == libc::SOL_SOCKET
                && (*c).cmsg_type == libc::SCM_CREDENTIALS
                && data == std::mem::size_of::<libc::ucred>()
            {
                let u = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::ucred);
                pid = Some(u.pid as u32);
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    let n = n as usize;
    let truncated = n > max || msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0;
    buf.truncate(n.min(max));
    Ok(Datagram {
        bytes: buf,
        fds,
        pid,
        truncated,
    })
}

/// Whether `a` and `b` are the same open file description (`kcmp(KCMP_FILE)`, what systemd's
/// `same_fd()` asks first).
pub fn same_file(a: impl AsFd, b: impl AsFd) -> io::Result<bool> {
    const KCMP_FILE: libc::c_long = 0;
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() } as libc::c_long;
    // SAFETY: kcmp takes plain integers and dereferences nothing.
    let r = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            me,
            me,
            KCMP_FILE,
            a.as_fd().as_raw_fd() as libc::c_long,
            b.as_fd().as_raw_fd() as libc::c_long,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r == 0)
}

/// Whether `fd` reports POLLERR or POLLHUP (polled for nothing else, as systemd watches its
/// stored descriptors).
pub fn poll_err_hup(fd: impl AsFd) -> bool {
    let mut p = libc::pollfd {
        fd: fd.as_fd().as_raw_fd(),
        events: 0,
        revents: 0,
    };
    // SAFETY: poll reads and writes one live pollfd.
    let r = unsafe { libc::poll(&mut p, 1, 0) };
    r > 0 && p.revents & (libc::POLLERR | libc::POLLHUP) != 0
}

/// Spawn `cmd` with `fds` at descriptors 3, 4, … in the child (inheritable, as systemd
/// passes `LISTEN_FDS`); nothing else of this process leaks (everything else is close-on-exec,
/// `fds` themselves stay so in this process).
pub fn spawn_with_fds(cmd: &mut Command, fds: &[OwnedFd]) -> io::Result<Child> {
    let n = fds.len() as libc::c_int;
    // Copies above the target range, so no dup2 in the child overwrites a source not yet moved.
    let high: Vec<OwnedFd> = fds
        .iter()
        .map(|f| {
            // SAFETY: fcntl(F_DUPFD_CLOEXEC) takes no pointers; we own the result.
            let d = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3 + n + 16) };
            if d < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: just created, owned by nobody else.
            Ok(unsafe { OwnedFd::from_raw_fd(d) })
        })
        .collect::<io::Result<_>>()?;
    let raw: Vec<RawFd> = high.iter().map(|f| f.as_raw_fd()).collect();
    // SAFETY: the hook runs in the forked child before exec and only calls dup2 (async-signal
    // safe) on descriptors that are open there (inherited copies of `high`); it allocates
    // nothing (`raw` was built before the fork). dup2 leaves the new descriptor inheritable.
    unsafe {
        cmd.pre_exec(move || {
            for (i, &s) in raw.iter().enumerate() {
                if libc::dup2(s, 3 + i as libc::c_int) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn();
    drop(high);
    child
}
