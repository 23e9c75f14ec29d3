//! # strata-fusefront
//!
//! The FUSE front of Strata: the kernel's protocol, written from its ABI header, two
//! transports, and the dispatcher onto the engine. It is not a general FUSE library: it
//! speaks what Strata needs and nothing else.
//!
//! - [`abi`]: opcodes, flags and structure layouts of include/uapi/linux/fuse.h, encoded and
//!   decoded field by field, little-endian, with the kernel's sizes pinned by tests.
//! - [`request`]: a message parsed into an [`request::Op`] that borrows names and data from
//!   the buffer it came in; lengths are checked, bad input is an error, never a panic.
//! - [`reply`]: the reply bodies (entries, attributes, directory listings, ...).
//! - `fs.rs` ([`Fs`]): each request becomes one engine call; engine errors become errno here
//!   and only here ([`errno`]); replies for reads, writes and fsync are sent from the
//!   engine's completion (no FUSE thread waits for the disk).
//! - Transports: `dev.rs` (/dev/fuse: worker threads, each with its own cloned descriptor)
//!   and `uring.rs` (FUSE over io_uring: one ring per possible CPU, each request answered and
//!   the next fetched with one COMMIT_AND_FETCH). [`Transport::Auto`] uses io_uring where
//!   the kernel offers it and /dev/fuse otherwise; INIT, FORGET, INTERRUPT and
//!   notifications always use /dev/fuse.
//!
//! Node ids are the engine's (`slot << 40 | inode`; the mount root, which lists the layers,
//! is 1). The kernel's write-back cache is on (FUSE_WRITEBACK_CACHE): a regular file is
//! opened either into the kernel page cache (data only its layer can see, and every file
//! opened for writing: FOPEN_KEEP_CACHE) or with FOPEN_DIRECT_IO (data other layers share,
//! cached once in the engine's block cache; FUSE_DIRECT_IO_ALLOW_MMAP keeps mmap and exec
//! working). The engine decides which (`Engine::cache_mode`). Before a layer is frozen or
//! exported the engine asks for the kernel's dirty pages: [`flush_on_freeze`] answers with a
//! `syncfs` of the mount.
//!
//! Unsafe code lives in [`sys`] (system calls) and `uring.rs` (ring submission and the
//! entries' buffers), every block with a `// SAFETY:` comment.
#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod abi;
mod dev;
mod fs;
pub mod holder;
pub mod reply;
pub mod request;
mod session;
#[allow(unsafe_code)]
pub mod sys;
mod uring;

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use engine::{Engine, Error};
use parking_lot::Mutex;

pub use fs::{Fs, Proto, MAX_WRITE, ROOT_TTL, TTL};
pub use session::{OpCounters, Reply};
pub use uring::{enable_in_kernel as enable_uring_in_kernel, possible_cpus, RingLayout};

/// The one place engine errors become errno.
pub fn errno(e: &Error) -> i32 {
    e.errno()
}

/// How requests reach the daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// io_uring where the kernel offers it, else /dev/fuse (said in the log).
    Auto,
    /// FUSE over io_uring; refused where the kernel lacks it.
    IoUring,
    /// read(2)/writev(2) on /dev/fuse.
    Dev,
}

impl std::str::FromStr for Transport {
    type Err = String;
    fn from_str(s: &str) -> Result<Transport, String> {
        match s {
            "auto" => Ok(Transport::Auto),
            "io-uring" | "io_uring" | "uring" => Ok(Transport::IoUring),
            "dev" | "dev-fuse" => Ok(Transport::Dev),
            _ => Err(format!(
                "unknown FUSE transport {s:?} (use auto, io-uring or dev)"
            )),
        }
    }
}

/// How to mount.
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// What mount tables show as the device.
    pub fsname: String,
    /// /dev/fuse worker threads.
    pub threads: usize,
    pub transport: Transport,
    /// When reads update access times (relatime by default).
    pub atime: engine::Atime,
    /// Answer a change only once the engine has written it to its journal (not flushed):
    /// a daemon killed with -9 then loses nothing the kernel was told, and a successor
    /// taking the connection over sees what the kernel sees. Costs a journal write per
    /// batch of changes.
    pub persist_replies: bool,
    /// FUSE over io_uring: how long (µs) a queue thread whose request waits for the device
    /// polls for the completion before it sleeps (0: it sleeps at once). See uring.rs's
    /// `poll_ring`.
    pub device_poll_us: u32,
    /// How long (µs) a queue thread (io_uring) or worker (/dev/fuse) that has answered polls
    /// for the next request before it sleeps (0: it sleeps at once). See engine::poll's
    /// module doc.
    pub request_poll_us: u32,
}

/// A mounted file system and the threads that serve it.
pub struct Session {
    fs: Arc<Fs>,
    mountpoint: PathBuf,
    main: Arc<dev::Channel>,
    /// The workers' descriptors (clones of `main`), taken by [`Session::run`].
    clones: Vec<OwnedFd>,
    use_uring: bool,
    /// The connection was taken over from a previous daemon (no INIT will come).
    taken_over: bool,
    /// The transport requests travel on now ("dev" until the rings are registered).
    active: Arc<Mutex<&'static str>>,
    /// The ring buffers a previous daemon left (taken over with the connection).
    ring_bufs: Option<Arc<uring::RingBufs>>,
    stop: Arc<AtomicBool>,
    holder: Option<HolderHook>,
}

/// Called with the connection's descriptors once they are worth keeping (after INIT, or
/// at the start of a taken-over session), to hand them to a holder ([`holder`]).
pub type HolderHook = Box<dyn FnOnce(holder::Held) + Send>;

/// How [`Session::run`] ended.
#[derive(Debug, PartialEq, Eq)]
pub enum RunEnd {
    /// The file system was unmounted (or the connection aborted).
    Unmounted,
    /// [`Stopper::hand_over`] stopped it: every request read was answered, the connection
    /// stays mounted, held for a successor.
    HandedOver,
}

fn make_fs(engine: &Arc<Engine>, opts: &MountOptions, use_uring: bool) -> Arc<Fs> {
    let counters = Arc::new(OpCounters::default());
    let fs = Arc::new(Fs::new(engine.clone(), counters, opts.atime));
    fs.set_want_uring(use_uring);
    fs.set_persist_replies(opts.persist_replies);
    fs.set_device_poll_us(opts.device_poll_us);
    fs.set_request_poll_us(opts.request_poll_us);
    fs
}

fn report_frontend(engine: &Engine, fs: &Fs, active: &Arc<Mutex<&'static str>>, taken_over: bool) {
    let (a, c) = (active.clone(), fs.counters().clone());
    engine
        .stats()
        .set_frontend(Box::new(move || engine::stats::FrontendReport {
            transport: a.lock().to_string(),
            requests: c.snapshot(),
            resent: c.resent(),
            taken_over,
        }));
}

impl Session {
    /// Open /dev/fuse and mount it at `mountpoint` (as root: no fusermount). Serve it with
    /// [`Session::run`].
    pub fn mount(
        engine: Arc<Engine>,
        mountpoint: &Path,
        opts: &MountOptions,
    ) -> io::Result<Session> {
        let use_uring = match opts.transport {
            Transport::Dev => false,
            Transport::IoUring => {
                uring::enable_in_kernel().map_err(io::Error::other)?;
                true
            }
            Transport::Auto => match uring::enable_in_kernel() {
                Ok(()) => true,
                Err(why) => {
                    log::info!("FUSE transport: /dev/fuse ({why})");
                    false
                }
            },
        };
        let fs = make_fs(&engine, opts, use_uring);
        let fd = sys::open_fuse_device()?;
        let (uid, gid) = sys::ids();
        let data =
            format!("rootmode=40000,user_id={uid},group_id={gid},default_permissions,allow_other");
        let flags = match opts.atime {
            engine::Atime::Relatime => libc::MS_RELATIME,
            engine::Atime::Strictatime => libc::MS_STRICTATIME,
            engine::Atime::Noatime => libc::MS_NOATIME,
        };
        sys::mount_fuse(&opts.fsname, mountpoint, fd.as_raw_fd(), flags, &data)?;
        // Clones only of a mounted connection (the kernel refuses them before).
        let mut clones = Vec::new();
        for _ in 1..opts.threads.max(1) {
            clones.push(sys::clone_fuse_fd(&fd)?);
        }
        let active: Arc<Mutex<&'static str>> = Arc::new(Mutex::new("dev"));
        report_frontend(&engine, &fs, &active, false);
        Ok(Session {
            fs,
            mountpoint: mountpoint.to_path_buf(),
            main: Arc::new(dev::Channel::new(fd)),
            clones,
            use_uring,
            taken_over: false,
            active,
            ring_bufs: None,
            stop: Arc::new(AtomicBool::new(false)),
            holder: None,
        })
    }

    /// Serve a connection a previous daemon left mounted at `mountpoint` (its descriptors
    /// from a holder): no mount, no INIT (the kernel answered it to the previous daemon;
    /// `held.state` says what was agreed). [`Session::run`] asks the kernel to resend the
    /// requests the previous daemon had read and not answered (FUSE_NOTIFY_RESEND).
    pub fn take_over(
        engine: Arc<Engine>,
        mountpoint: &Path,
        opts: &MountOptions,
        held: holder::Held,
    ) -> io::Result<Session> {
        let holder::Held { state, fds, ring } = held;
        let use_uring = state.uring;
        let mut ring_bufs = None;
        if use_uring {
            uring::enable_in_kernel().map_err(io::Error::other)?;
            // Before anything else is mapped: the buffers must go where the kernel's ring
            // entries point.
            let (Some(layout), Some(fd)) = (state.ring, ring) else {
                return Err(io::Error::other(
                    "the held connection uses FUSE over io_uring but its ring buffers were not kept (a daemon from before live restart over io_uring): cannot take it over",
                ));
            };
            ring_bufs = Some(Arc::new(uring::RingBufs::adopt(fd, layout)?));
        }
        let fs = make_fs(&engine, opts, use_uring);
        fs.adopt_proto(state.proto);
        let mut fds = fds.into_iter();
        let main = fds
            .next()
            .ok_or_else(|| io::Error::other("no session descriptor held"))?;
        let mut clones: Vec<OwnedFd> = fds.collect();
        while clones.len() + 1 < opts.threads.max(1) {
            clones.push(sys::clone_fuse_fd(&main)?);
        }
        let active: Arc<Mutex<&'static str>> = Arc::new(Mutex::new("dev"));
        report_frontend(&engine, &fs, &active, true);
        Ok(Session {
            fs,
            mountpoint: mountpoint.to_path_buf(),
            main: Arc::new(dev::Channel::new(main)),
            clones,
            use_uring,
            taken_over: true,
            active,
            ring_bufs,
            stop: Arc::new(AtomicBool::new(false)),
            holder: None,
        })
    }

    /// Hand the connection's descriptors to `hook` once they are worth keeping.
    pub fn set_holder(&mut self, hook: HolderHook) {
        self.holder = Some(hook);
    }

    /// The request counters per opcode.
    pub fn counters(&self) -> Arc<OpCounters> {
        self.fs.counters().clone()
    }

    /// Sends notifications to the kernel.
    pub fn notifier(&self) -> Notifier {
        Notifier {
            chan: self.main.clone(),
        }
    }

    /// Unmounts this session's mount (from another thread; [`Session::run`] then returns).
    pub fn unmounter(&self) -> Unmounter {
        Unmounter {
            mountpoint: self.mountpoint.clone(),
        }
    }

    /// Stops this session for a hand-over (from another thread).
    pub fn stopper(&self) -> Stopper {
        Stopper {
            stop: self.stop.clone(),
        }
    }

    /// Serve requests until the file system is unmounted or handed over.
    pub fn run(mut self) -> io::Result<RunEnd> {
        sys::install_wakeup_handler(sys::WAKEUP_SIGNAL)?;
        let rings: Arc<OnceLock<uring::Rings>> = Arc::new(OnceLock::new());
        let holder = Arc::new(Mutex::new(self.holder.take()));
        let all_fds: Vec<OwnedFd> = std::iter::once(self.main.fd())
            .chain(self.clones.iter())
            .map(|f| sys::dup(f.as_raw_fd()))
            .collect::<io::Result<_>>()?;
        let all_fds = Arc::new(Mutex::new(Some(all_fds)));
        let after_init = {
            let (fs, rings, main, active) = (
                self.fs.clone(),
                rings.clone(),
                self.main.clone(),
                self.active.clone(),
            );
            let (use_uring, mountpoint) = (self.use_uring, self.mountpoint.clone());
            let (taken_over, ring_bufs) = (self.taken_over, self.ring_bufs.take());
            let said = std::sync::Once::new();
            move || {
                let start_rings = use_uring && rings.get().is_none();
                let granted = fs
                    .proto()
                    .is_some_and(|p| p.flags & abi::init::OVER_IO_URING != 0);
                if !use_uring {
                    said.call_once(|| {
                        log::info!(
                            "FUSE transport: /dev/fuse{}",
                            if taken_over { " (taken over)" } else { "" }
                        )
                    });
                }
                if start_rings && !granted {
                    log::warn!("FUSE transport: /dev/fuse (the kernel did not agree to FUSE over io_uring at INIT)");
                } else if start_rings {
                    let bufs = match &ring_bufs {
                        Some(b) => Ok(b.clone()),
                        None => uring::RingBufs::create().map(Arc::new),
                    };
                    let adopt = taken_over && ring_bufs.is_some();
                    let kick = absolute_mountpoint(&mountpoint);
                    match bufs.and_then(|b| {
                        uring::Rings::start(
                            fs.clone(),
                            main.fd().as_raw_fd(),
                            active.clone(),
                            b,
                            adopt,
                            &kick,
                        )
                    }) {
                        Ok(r) => {
                            log::info!(
                                "FUSE transport: io_uring, {} queues of {} entries{}",
                                r.queues(),
                                r.entries(),
                                if adopt { " (taken over)" } else { "" }
                            );
                            let _ = rings.set(r);
                        }
                        Err(e) => log::warn!(
                            "FUSE transport: /dev/fuse (io_uring rings could not be set up: {e})"
                        ),
                    }
                }
                // The connection is worth keeping now: give it to the holder (once).
                let hook = holder.lock().take();
                let fds = all_fds.lock().take();
                if let (Some(hook), Some(fds), Some(proto)) = (hook, fds, fs.proto()) {
                    let bufs = match rings.get().map(|r| r.held_bufs()).transpose() {
                        Ok(b) => b,
                        Err(e) => {
                            log::error!("cannot keep the FUSE ring buffers for a successor: {e}");
                            None
                        }
                    };
                    hook(holder::Held {
                        state: holder::ConnState {
                            proto,
                            uring: rings.get().is_some(),
                            ring: bufs.as_ref().map(|b| b.0),
                            mountpoint: mountpoint.clone(),
                            fsid: Some(fs.engine().fsid()),
                        },
                        fds,
                        ring: bufs.map(|b| b.1),
                    });
                }
            }
        };
        let after_init: Arc<dyn Fn() + Send + Sync> = Arc::new(after_init);
        let mut chans = vec![self.main.clone()];
        for fd in self.clones.drain(..) {
            chans.push(Arc::new(dev::Channel::new(fd)));
        }
        let mut workers = Vec::new();
        for (k, chan) in chans.iter().enumerate() {
            let (fs, hook, stop, chan) = (
                self.fs.clone(),
                after_init.clone(),
                self.stop.clone(),
                chan.clone(),
            );
            workers.push(
                std::thread::Builder::new()
                    .name(format!("strata-fuse{k}"))
                    .spawn(move || dev::worker(fs, chan, &*hook, &stop))?,
            );
        }
        if self.taken_over {
            // No INIT comes: start the rings and hand the descriptors on now, then ask for
            // the requests the previous daemon read and never answered.
            after_init();
            let resend = self.fs.proto().is_some_and(|p| p.resend);
            if resend {
                match self.main.notify(&reply::notify_resend()) {
                    Ok(()) => log::info!("took over the FUSE connection; asked the kernel to resend requests in flight"),
                    Err(e) => log::warn!("FUSE_NOTIFY_RESEND failed: {e}; requests the previous daemon had read are lost"),
                }
            } else {
                log::warn!("took over the FUSE connection; this kernel cannot resend requests in flight (FUSE_HAS_RESEND, Linux 6.9)");
            }
        }
        use std::os::unix::thread::JoinHandleExt;
        while !workers.iter().all(|w| w.is_finished()) {
            if self.stop.load(Ordering::SeqCst) {
                // Workers blocked in read(2) return EINTR; busy ones see the flag after the
                // request in hand.
                for w in workers.iter().filter(|w| !w.is_finished()) {
                    sys::signal_thread(w.as_pthread_t(), sys::WAKEUP_SIGNAL);
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            } else {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        for w in workers {
            let _ = w.join();
        }
        let handed_over = self.stop.load(Ordering::SeqCst);
        if handed_over {
            // Replies still on their way from the engine (reads, writes, fsync).
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while chans
                .iter()
                .any(|c| c.outstanding.load(Ordering::SeqCst) > 0)
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        if let Some(r) = rings.get() {
            r.stop();
        }
        Ok(if handed_over {
            RunEnd::HandedOver
        } else {
            RunEnd::Unmounted
        })
    }
}

/// Stops a session for a hand-over: its workers stop reading requests, those read are
/// answered, and [`Session::run`] returns [`RunEnd::HandedOver`] with the connection still
/// mounted.
#[derive(Clone)]
pub struct Stopper {
    stop: Arc<AtomicBool>,
}

impl Stopper {
    pub fn hand_over(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Sends notifications (FUSE_NOTIFY_*) on the connection.
#[derive(Clone)]
pub struct Notifier {
    chan: Arc<dev::Channel>,
}

impl Notifier {
    /// Drop the kernel's cached entry `name` of directory `parent`.
    pub fn inval_entry(&self, parent: u64, name: &[u8]) -> io::Result<()> {
        self.chan.notify(&reply::notify_inval_entry(parent, name))
    }
}

/// Unmounts a session's mount.
pub struct Unmounter {
    mountpoint: PathBuf,
}

impl Unmounter {
    /// umount(2); when the mount is busy, detach it (MNT_DETACH).
    pub fn unmount(&self) -> io::Result<()> {
        match sys::unmount(&self.mountpoint) {
            Ok(()) => Ok(()),
            Err(e) => {
                log::warn!(
                    "unmount of {} failed ({e}); detaching",
                    self.mountpoint.display()
                );
                sys::detach_mount(&self.mountpoint)
            }
        }
    }
}

/// Drop the kernel's cached entry of a layer's directory when the layer is removed, so
/// `<mnt>/<id>` disappears at once rather than when its entry expires.
pub fn watch_layers(session: &Session, engine: &Engine) {
    let notifier = session.notifier();
    engine.set_layer_listener(Box::new(move |id| {
        if let Err(e) = notifier.inval_entry(engine::MOUNT_ROOT, id.as_bytes()) {
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
    let mp = absolute_mountpoint(mountpoint);
    engine.set_kernel_flush(Box::new(move || {
        if let Err(e) = sys::syncfs(&mp) {
            log::warn!(
                "could not write back the kernel's cached pages (syncfs {}): {e}",
                mp.display()
            );
        }
    }));
}

/// `mp` made absolute with its parent canonicalized, never touching `mp` itself: it may be
/// a FUSE mount nobody serves yet (a held connection before its takeover), and a stat of it
/// would wait for a daemon.
pub fn absolute_mountpoint(mp: &Path) -> PathBuf {
    let abs = std::path::absolute(mp).unwrap_or_else(|_| mp.to_path_buf());
    match (abs.parent(), abs.file_name()) {
        (Some(parent), Some(name)) => std::fs::canonicalize(parent)
            .map(|p| p.join(name))
            .unwrap_or(abs),
        _ => abs,
    }
}
