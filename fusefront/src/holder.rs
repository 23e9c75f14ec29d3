//! Live restart: the FUSE connection outlives the daemon.
//!
//! The kernel keeps a FUSE connection for as long as one descriptor of it is open. A holder
//! other than the daemon keeps them all (the session descriptor and every worker's clone,
//! so requests a dead daemon had read are still in a processing queue the kernel can
//! resend), plus a memfd with what INIT agreed ([`ConnState`]): a successor takes them over
//! without a new INIT, which the kernel would never send on a live connection.
//!
//! Two holders:
//! - **systemd's file descriptor store** (`FDSTORE=1` on the notify socket; given back at
//!   the next start in `LISTEN_FDS`/`LISTEN_FDNAMES`) where systemd runs the daemon;
//! - **the keeper**, `strata keeper`: a process that holds descriptors and nothing else,
//!   reached on a SOCK_SEQPACKET unix socket. A daemon connects and sends `TAKE`; the keeper
//!   answers `BUSY` (another daemon holds the lease: a racing takeover is refused), `NONE`,
//!   or `HELD` with the descriptors. That connection is the daemon's lease for as long as it
//!   lives; on it the daemon `PUT`s its descriptors (`OK`), or `DROP`s them when it
//!   unmounts (the keeper then exits). The keeper also lets go of a connection the kernel
//!   has aborted or unmounted (POLLERR on the session descriptor).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::fs::Proto;
use crate::sys;

/// What a successor needs besides the descriptors: the protocol INIT agreed, and which
/// transport carried requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnState {
    pub proto: Proto,
    /// Requests travel on io_uring queues (a successor must register its own rings: once a
    /// connection's rings are ready the kernel sends every request to them).
    pub uring: bool,
    /// Where the ring entries' buffers are mapped and how they are laid out (the memfd is
    /// [`Held::ring`]): a successor maps them at the same address and takes the entries over.
    pub ring: Option<crate::RingLayout>,
    /// Where the connection is mounted.
    pub mountpoint: PathBuf,
    /// The id of the file system served on it ([`engine::Engine::fsid`]): a successor on
    /// another image must not serve the kernel's node ids. `None` in a state that did not say.
    pub fsid: Option<u64>,
}

const STATE_MAGIC: &str = "strata-fuse-state 1";

impl ConnState {
    pub fn encode(&self) -> Vec<u8> {
        let ring = self
            .ring
            .map(|r| format!("ring={}\n", r.encode()))
            .unwrap_or_default();
        let fsid = self.fsid.map(|f| format!("fsid={f}\n")).unwrap_or_default();
        format!(
            "{STATE_MAGIC}\nminor={}\nflags={}\nresend={}\nuring={}\n{ring}{fsid}mountpoint={}\n",
            self.proto.minor,
            self.proto.flags,
            self.proto.resend as u8,
            self.uring as u8,
            self.mountpoint.display()
        )
        .into_bytes()
    }

    /// `None` for anything that is not a state this version wrote.
    pub fn decode(b: &[u8]) -> Option<ConnState> {
        let s = std::str::from_utf8(b).ok()?;
        let mut lines = s.lines();
        if lines.next()? != STATE_MAGIC {
            return None;
        }
        let (mut minor, mut flags, mut resend, mut uring, mut mp) = (None, None, None, None, None);
        let (mut ring, mut fsid) = (None, None);
        for l in lines {
            let (k, v) = l.split_once('=')?;
            match k {
                "minor" => minor = v.parse().ok(),
                "flags" => flags = v.parse().ok(),
                "resend" => resend = Some(v == "1"),
                "uring" => uring = Some(v == "1"),
                "ring" => ring = Some(crate::RingLayout::decode(v)?),
                "mountpoint" => mp = Some(PathBuf::from(v)),
                "fsid" => fsid = Some(v.parse().ok()?),
                _ => {}
            }
        }
        Some(ConnState {
            proto: Proto {
                minor: minor?,
                flags: flags?,
                resend: resend?,
            },
            uring: uring?,
            ring,
            mountpoint: mp?,
            fsid,
        })
    }
}

/// A connection's descriptors: the session descriptor first, then the workers' clones;
/// and the memfd of its io_uring entries' buffers (when it uses io_uring).
pub struct Held {
    pub state: ConnState,
    pub fds: Vec<OwnedFd>,
    pub ring: Option<OwnedFd>,
}

impl Held {
    /// Whether the kernel still has this connection (not aborted, not unmounted).
    pub fn connected(&self) -> bool {
        self.fds
            .first()
            .is_some_and(|f| sys::fuse_connected(f.as_raw_fd()))
    }

    /// The message that carries it: a memfd with the state, then the descriptors, then the
    /// ring buffers' memfd (when the state names one).
    fn to_fds(&self) -> io::Result<(OwnedFd, Vec<RawFd>)> {
        let m = sys::memfd_with(c"strata-fuse-state", &self.state.encode())?;
        let mut v = vec![m.as_raw_fd()];
        v.extend(self.fds.iter().map(|f| f.as_raw_fd()));
        if let (Some(_), Some(r)) = (self.state.ring, &self.ring) {
            v.push(r.as_raw_fd());
        }
        Ok((m, v))
    }

    fn from_fds(mut fds: Vec<OwnedFd>) -> io::Result<Held> {
        if fds.len() < 2 {
            return Err(io::Error::other("fewer than two descriptors held"));
        }
        let state_fd = fds.remove(0);
        let b = sys::read_fd_at0(state_fd.as_raw_fd(), 4096)?;
        let state = ConnState::decode(&b)
            .ok_or_else(|| io::Error::other("the held connection's state is unreadable"))?;
        let ring = match state.ring {
            Some(_) if fds.len() >= 2 => fds.pop(),
            Some(_) => return Err(io::Error::other("the held ring buffers are missing")),
            None => None,
        };
        Ok(Held { state, fds, ring })
    }
}

// ---------------------------------------------------------------------------------------
// The keeper
// ---------------------------------------------------------------------------------------

const MSG_MAX: usize = 256;

/// Where the keeper serving `socket` writes its pid (`<socket>.pid`).
pub fn pid_file_of(socket: &Path) -> PathBuf {
    let mut s = socket.as_os_str().to_owned();
    s.push(".pid");
    PathBuf::from(s)
}

/// Run the keeper on `socket` until the connection it holds is dropped or gone (and no
/// daemon holds the lease), or nothing was ever put in its hands.
pub fn run_keeper(socket: &Path) -> io::Result<()> {
    sys::unblock_shutdown_signals();
    if let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
    }
    let listen = sys::seqpacket_listen(socket)?;
    let pidfile = pid_file_of(socket);
    let _ = std::fs::write(&pidfile, format!("{}\n", std::process::id()));
    let mut held: Option<Vec<OwnedFd>> = None;
    let mut lease: Option<OwnedFd> = None;
    let mut buf = [0u8; MSG_MAX];
    let started = Instant::now();
    log::info!("keeper: holding FUSE connections on {}", socket.display());
    let done = |why: &str| {
        log::info!("keeper: exiting ({why})");
        let _ = std::fs::remove_file(socket);
        let _ = std::fs::remove_file(&pidfile);
        Ok(())
    };
    loop {
        let mut pfds = vec![(listen.as_raw_fd(), libc::POLLIN)];
        if let Some(l) = &lease {
            pfds.push((l.as_raw_fd(), libc::POLLIN));
        }
        // The session descriptor (first after the state memfd), watched for errors only.
        let fuse = held.as_ref().and_then(|h| h.get(1)).map(|f| f.as_raw_fd());
        if let Some(f) = fuse {
            pfds.push((f, 0));
        }
        // Nothing held and no daemon after a minute: nothing to keep.
        let timeout = if held.is_none() && lease.is_none() {
            10_000
        } else {
            -1
        };
        let rev = match sys::poll(&pfds, timeout) {
            Ok(r) => r,
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => return Err(e),
        };
        if held.is_none() && lease.is_none() && started.elapsed() > Duration::from_secs(60) {
            return done("no connection to hold");
        }
        let mut i = 1;
        if lease.is_some() {
            if rev[i] != 0 {
                let fd = lease.as_ref().map(|l| l.as_raw_fd()).unwrap_or(-1);
                match sys::recv_with_fds(fd, &mut buf) {
                    Ok((0, _)) | Err(_) => {
                        lease = None;
                        if held.is_none() {
                            return done("the daemon left and nothing is held");
                        }
                        log::info!("keeper: the daemon is gone; holding its connection");
                    }
                    Ok((n, fds)) => match &buf[..n] {
                        b"PUT" if fds.len() >= 2 => {
                            held = Some(fds);
                            let _ = sys::send_with_fds(fd, None, b"OK", &[]);
                        }
                        b"DROP" => {
                            let _ = sys::send_with_fds(fd, None, b"OK", &[]);
                            return done("the daemon unmounted");
                        }
                        _ => {
                            let _ = sys::send_with_fds(fd, None, b"ERR", &[]);
                        }
                    },
                }
            }
            i += 1;
        }
        if fuse.is_some() && rev[i] & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
            held = None;
            log::info!("keeper: the held FUSE connection is gone (unmounted or aborted)");
            if lease.is_none() {
                return done("nothing left to hold");
            }
        }
        if rev[0] & libc::POLLIN != 0 {
            let c = match sys::accept(listen.as_raw_fd()) {
                Ok(c) => c,
                Err(_) => continue,
            };
            // A client that says nothing within a second is dropped.
            if !matches!(sys::poll(&[(c.as_raw_fd(), libc::POLLIN)], 1000), Ok(r) if r[0] != 0) {
                continue;
            }
            let n = match sys::recv_with_fds(c.as_raw_fd(), &mut buf) {
                Ok((n, _)) => n,
                Err(_) => continue,
            };
            if &buf[..n] != b"TAKE" {
                let _ = sys::send_with_fds(c.as_raw_fd(), None, b"ERR", &[]);
                continue;
            }
            if lease.is_some() {
                let _ = sys::send_with_fds(c.as_raw_fd(), None, b"BUSY", &[]);
                continue;
            }
            let r = match &held {
                Some(fds) => {
                    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
                    sys::send_with_fds(c.as_raw_fd(), None, b"HELD", &raw)
                }
                None => sys::send_with_fds(c.as_raw_fd(), None, b"NONE", &[]),
            };
            if r.is_ok() {
                lease = Some(c);
            }
        }
    }
}

/// What a starting daemon got from the keeper.
pub enum Take {
    /// Another daemon holds the lease.
    Busy,
    /// The lease, and the connection held for it (if any).
    Lease(KeeperLease, Option<Held>),
}

/// A daemon's lease at the keeper: the connection it `PUT`s on.
pub struct KeeperLease {
    sock: OwnedFd,
}

/// Connect to the keeper at `socket` and ask for the lease.
pub fn keeper_take(socket: &Path) -> io::Result<Take> {
    let sock = sys::seqpacket_connect(socket)?;
    sys::send_with_fds(sock.as_raw_fd(), None, b"TAKE", &[])?;
    let mut buf = [0u8; MSG_MAX];
    let (n, fds) = sys::recv_with_fds(sock.as_raw_fd(), &mut buf)?;
    match &buf[..n] {
        b"BUSY" => Ok(Take::Busy),
        b"NONE" => Ok(Take::Lease(KeeperLease { sock }, None)),
        b"HELD" => {
            let held = match Held::from_fds(fds) {
                Ok(h) => Some(h),
                Err(e) => {
                    log::warn!("the keeper's connection cannot be used ({e}); mounting anew");
                    None
                }
            };
            Ok(Take::Lease(KeeperLease { sock }, held))
        }
        other => Err(io::Error::other(format!(
            "unexpected answer from the keeper: {:?}",
            String::from_utf8_lossy(other)
        ))),
    }
}

impl KeeperLease {
    fn call(&self, what: &[u8], fds: &[RawFd]) -> io::Result<()> {
        sys::send_with_fds(self.sock.as_raw_fd(), None, what, fds)?;
        let mut buf = [0u8; MSG_MAX];
        let (n, _) = sys::recv_with_fds(self.sock.as_raw_fd(), &mut buf)?;
        if &buf[..n] != b"OK" {
            return Err(io::Error::other("the keeper refused"));
        }
        Ok(())
    }

    /// Hand the keeper this connection's descriptors (replacing what it held).
    pub fn put(&self, held: &Held) -> io::Result<()> {
        let (_memfd, fds) = held.to_fds()?;
        self.call(b"PUT", &fds)
    }

    /// The connection was unmounted: the keeper lets it go and exits (no answer awaited:
    /// a thread may be in [`KeeperLease::wait_gone`] on the same socket).
    pub fn drop_held(&self) -> io::Result<()> {
        sys::send_with_fds(self.sock.as_raw_fd(), None, b"DROP", &[])
    }

    /// Block until the keeper goes away (killed, or exited).
    pub fn wait_gone(&self) {
        let mut buf = [0u8; MSG_MAX];
        loop {
            match sys::poll(&[(self.sock.as_raw_fd(), libc::POLLIN)], -1) {
                Ok(r) if r[0] & (libc::POLLHUP | libc::POLLERR) != 0 => return,
                Ok(r) if r[0] & libc::POLLIN != 0 => {
                    match sys::recv_with_fds(self.sock.as_raw_fd(), &mut buf) {
                        Ok((0, _)) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(_) => return,
            }
        }
    }
}

/// Connect to the keeper, starting it with `spawn` when none answers (waiting up to 5 s
/// for its socket).
pub fn keeper_take_or_start(socket: &Path, spawn: &dyn Fn() -> io::Result<()>) -> io::Result<Take> {
    match keeper_take(socket) {
        Ok(t) => return Ok(t),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOENT) | Some(libc::ECONNREFUSED)
            ) => {}
        Err(e) => return Err(e),
    }
    spawn()?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match keeper_take(socket) {
            Ok(t) => return Ok(t),
            Err(e) if Instant::now() < deadline => {
                log::debug!("waiting for the keeper: {e}");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e),
        }
    }
}

// ---------------------------------------------------------------------------------------
// systemd's file descriptor store
// ---------------------------------------------------------------------------------------

/// Names of the descriptors in systemd's store.
const FDNAME_STATE: &str = "strata-state";
const FDNAME_FUSE: &str = "strata-fuse";
const FDNAME_RING: &str = "strata-ring";

/// Whether systemd runs this daemon with a notify socket (Type=notify or NotifyAccess).
pub fn systemd_present() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

/// The connection systemd passed in `LISTEN_FDS` (names from `LISTEN_FDNAMES`), if any;
/// other passed descriptors are closed.
pub fn systemd_take() -> Option<Held> {
    let pid: u32 = std::env::var("LISTEN_PID").ok()?.parse().ok()?;
    if pid != std::process::id() {
        return None;
    }
    let n: i32 = std::env::var("LISTEN_FDS").ok()?.parse().ok()?;
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    let names: Vec<&str> = names.split(':').collect();
    let (mut state, mut fuse, mut ring) = (None, Vec::new(), None);
    for i in 0..n.clamp(0, 1024) {
        let Some(fd) = sys::adopt_inherited_fd(3 + i) else {
            continue;
        };
        match names.get(i as usize).copied() {
            Some(FDNAME_STATE) => state = Some(fd),
            Some(FDNAME_RING) => ring = Some(fd),
            Some(name) if name.starts_with(FDNAME_FUSE) => {
                let k: usize = name[FDNAME_FUSE.len()..].parse().unwrap_or(usize::MAX);
                fuse.push((k, fd));
            }
            _ => drop(fd),
        }
    }
    fuse.sort_by_key(|(k, _)| *k);
    let mut fds = vec![state?];
    fds.extend(fuse.into_iter().map(|(_, f)| f));
    fds.extend(ring);
    match Held::from_fds(fds) {
        Ok(h) => {
            *lock_from_store() = Some(h.state.clone());
            Some(h)
        }
        Err(e) => {
            log::warn!("the connection systemd held cannot be used ({e}); mounting anew");
            None
        }
    }
}

fn sd_notify(msg: &str, fds: &[RawFd]) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let path =
        std::env::var_os("NOTIFY_SOCKET").ok_or_else(|| io::Error::other("no NOTIFY_SOCKET"))?;
    // A datagram socket: connectionless, one message per notification.
    let sock = sys::dgram_socket()?;
    sys::send_with_fds(sock.as_raw_fd(), Some(path.as_bytes()), msg.as_bytes(), fds)
}

/// The state of the connection systemd passed at this start: its store still holds that
/// connection (it passed copies of its descriptors and kept them).
static FROM_STORE: std::sync::Mutex<Option<ConnState>> = std::sync::Mutex::new(None);

fn lock_from_store() -> std::sync::MutexGuard<'static, Option<ConnState>> {
    FROM_STORE.lock().unwrap_or_else(|e| e.into_inner())
}

/// The connection systemd passed is not the one this daemon serves (gone, or mounted
/// elsewhere): [`systemd_put`] replaces what the store holds.
pub fn systemd_forget() {
    *lock_from_store() = None;
}

/// Put this connection's descriptors in systemd's store (replacing what it held).
///
/// The store must hold the connection at every moment: a daemon killed between removing
/// its entries and storing them again would take the last descriptors with it (the kernel
/// aborts a connection whose descriptors are all closed). So a connection taken over from
/// the store is only stored again, nothing removed: systemd drops a descriptor it holds
/// already (the same open file) and adds new ones (more workers than before). Only a new
/// connection replaces what the store held (nothing anyone waits on).
pub fn systemd_put(held: &Held) -> io::Result<()> {
    if lock_from_store().take().as_ref() == Some(&held.state) {
        return store_connection(held);
    }
    let (memfd, _) = held.to_fds()?;
    sd_notify(&format!("FDSTOREREMOVE=1\nFDNAME={FDNAME_STATE}"), &[])?;
    sd_notify(&format!("FDSTOREREMOVE=1\nFDNAME={FDNAME_RING}"), &[])?;
    for k in 0..crate::sys::MAX_FDS {
        sd_notify(&format!("FDSTOREREMOVE=1\nFDNAME={FDNAME_FUSE}{k}"), &[])?;
    }
    sd_notify(
        &format!("FDSTORE=1\nFDNAME={FDNAME_STATE}"),
        &[memfd.as_raw_fd()],
    )?;
    store_connection(held)
}

/// Store the connection's session and worker descriptors, and its ring buffers' memfd when
/// it has one, in systemd's store.
fn store_connection(held: &Held) -> io::Result<()> {
    for (k, f) in held.fds.iter().enumerate() {
        sd_notify(
            &format!("FDSTORE=1\nFDNAME={FDNAME_FUSE}{k}"),
            &[f.as_raw_fd()],
        )?;
    }
    if let (Some(_), Some(r)) = (held.state.ring, &held.ring) {
        sd_notify(
            &format!("FDSTORE=1\nFDNAME={FDNAME_RING}"),
            &[r.as_raw_fd()],
        )?;
    }
    Ok(())
}

/// Tell systemd the daemon is serving (Type=notify).
pub fn systemd_ready(status: &str) {
    if let Err(e) = sd_notify(&format!("READY=1\nSTATUS={status}"), &[]) {
        log::debug!("sd_notify READY: {e}");
    }
}

/// The connection was unmounted: systemd lets go of its descriptors.
pub fn systemd_drop() {
    let _ = sd_notify(&format!("FDSTOREREMOVE=1\nFDNAME={FDNAME_STATE}"), &[]);
    let _ = sd_notify(&format!("FDSTOREREMOVE=1\nFDNAME={FDNAME_RING}"), &[]);
    for k in 0..crate::sys::MAX_FDS {
        let _ = sd_notify(&format!("FDSTOREREMOVE=1\nFDNAME={FDNAME_FUSE}{k}"), &[]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_garbage_is_refused() {
        let s = ConnState {
            proto: Proto {
                minor: 44,
                flags: 0x1234_5678_9abc,
                resend: true,
            },
            uring: false,
            ring: None,
            mountpoint: PathBuf::from("/var/lib/strata/mnt"),
            fsid: Some(0x0123_4567_89ab_cdef),
        };
        assert_eq!(ConnState::decode(&s.encode()), Some(s.clone()));
        let no_fsid = ConnState {
            fsid: None,
            ..s.clone()
        };
        assert_eq!(ConnState::decode(&no_fsid.encode()), Some(no_fsid));
        let u = ConnState {
            uring: true,
            ring: Some(crate::RingLayout {
                base: 0x5000_0000_0000,
                queues: 2,
                entries: 16,
                payload: 1 << 20,
            }),
            ..s
        };
        assert_eq!(ConnState::decode(&u.encode()), Some(u));
        assert_eq!(ConnState::decode(b""), None);
        assert_eq!(ConnState::decode(b"strata-fuse-state 1\nminor=x\n"), None);
        assert_eq!(ConnState::decode(&[0xff, 0xfe, 0]), None);
    }
}
