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
pub mod reply;
pub mod request;
mod session;
#[allow(unsafe_code)]
pub mod sys;
mod uring;

use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use engine::{Engine, Error};
use parking_lot::Mutex;

pub use fs::{Fs, Proto, MAX_WRITE, ROOT_TTL, TTL};
pub use session::{OpCounters, Reply};
pub use uring::{enable_in_kernel as enable_uring_in_kernel, possible_cpus};

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
}

/// A mounted file system and the threads that serve it.
pub struct Session {
    fs: Arc<Fs>,
    mountpoint: PathBuf,
    main: Arc<dev::Channel>,
    threads: usize,
    use_uring: bool,
    /// The transport requests travel on now ("dev" until the rings are registered).
    active: Arc<Mutex<&'static str>>,
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
        let counters = Arc::new(OpCounters::default());
        let fs = Arc::new(Fs::new(engine.clone(), counters.clone(), opts.atime));
        fs.set_want_uring(use_uring);
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
        let active: Arc<Mutex<&'static str>> = Arc::new(Mutex::new("dev"));
        let (a, c) = (active.clone(), counters);
        engine
            .stats()
            .set_frontend(Box::new(move || engine::stats::FrontendReport {
                transport: a.lock().to_string(),
                requests: c.snapshot(),
            }));
        Ok(Session {
            fs,
            mountpoint: mountpoint.to_path_buf(),
            main: Arc::new(dev::Channel::new(fd)),
            threads: opts.threads.max(1),
            use_uring,
            active,
        })
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

    /// Serve requests until the file system is unmounted.
    pub fn run(self) -> io::Result<()> {
        let rings: Arc<OnceLock<uring::Rings>> = Arc::new(OnceLock::new());
        let after_init = {
            let (fs, rings, main, active) = (
                self.fs.clone(),
                rings.clone(),
                self.main.clone(),
                self.active.clone(),
            );
            let use_uring = self.use_uring;
            move || {
                if !use_uring || rings.get().is_some() {
                    return;
                }
                let granted = fs
                    .proto()
                    .is_some_and(|p| p.flags & abi::init::OVER_IO_URING != 0);
                if !granted {
                    log::warn!("FUSE transport: /dev/fuse (the kernel did not agree to FUSE over io_uring at INIT)");
                    return;
                }
                match uring::Rings::start(fs.clone(), main.fd().as_raw_fd(), active.clone()) {
                    Ok(r) => {
                        log::info!(
                            "FUSE transport: io_uring, {} queues of {} entries",
                            r.queues(),
                            uring::ENTRIES
                        );
                        let _ = rings.set(r);
                    }
                    Err(e) => log::warn!(
                        "FUSE transport: /dev/fuse (io_uring rings could not be set up: {e})"
                    ),
                }
            }
        };
        let after_init: Arc<dyn Fn() + Send + Sync> = Arc::new(after_init);
        let mut workers = Vec::new();
        for k in 1..self.threads {
            let chan = Arc::new(dev::Channel::new(sys::clone_fuse_fd(self.main.fd())?));
            let (fs, hook) = (self.fs.clone(), after_init.clone());
            workers.push(
                std::thread::Builder::new()
                    .name(format!("strata-fuse{k}"))
                    .spawn(move || dev::worker(fs, chan, &*hook))?,
            );
        }
        dev::worker(self.fs.clone(), self.main.clone(), &*after_init);
        for w in workers {
            let _ = w.join();
        }
        if let Some(r) = rings.get() {
            r.stop();
        }
        Ok(())
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
