//! `strata`: the daemon and its command-line tools.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use engine::{Engine, FileDevice, Options};

mod integrity_cli;
mod layer_cli;
mod oci_cli;
mod stats_cli;

#[derive(Parser)]
#[command(
    name = "strata",
    version,
    about = "Strata: a layer-cloning file system for container hosts",
    long_about = "Strata: a layer-cloning file system for container hosts.\n\n\
        Quick start: `strata up` creates ./strata.img (8 GiB, sparse), mounts it at ./mnt (files go in\n\
        ./mnt/default; every layer is a directory there) and serves Prometheus metrics on\n\
        127.0.0.1:9477. Stop it with Ctrl-C or `umount ./mnt`."
)]
struct Cli {
    /// Log level: error, warn, info, debug, trace.
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
    /// The daemon's admin socket (served by `mount`/`up`; used by `layer`, `stats`, `import`, `export`).
    #[arg(long, global = true, default_value = control::admin::DEFAULT_SOCKET)]
    admin_socket: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone)]
struct MountArgs {
    /// Block cache size (e.g. 256M, 1G; 0 disables the cache).
    #[arg(long, default_value = "256M")]
    cache_size: String,
    /// Prometheus endpoint address, or `off`.
    #[arg(long, default_value = "127.0.0.1:9477")]
    metrics_addr: String,
    /// FUSE worker threads reading /dev/fuse.
    #[arg(long, default_value_t = 4)]
    threads: usize,
    /// How FUSE requests reach the daemon: `io-uring` (FUSE over io_uring, one ring per CPU;
    /// Linux 6.14+, the daemon turns on the fuse module's enable_uring), `dev` (/dev/fuse), or
    /// `auto` (io-uring where the kernel offers it, else dev; the log says which).
    #[arg(long, default_value = "auto", env = "STRATA_FUSE_TRANSPORT")]
    fuse_transport: fusefront::Transport,
    /// When reads update access times: `relatime` (the first read after a change, or once a
    /// day), `strictatime` (every read) or `noatime` (never).
    #[arg(long, default_value = "relatime", value_parser = parse_atime)]
    atime: engine::Atime,
    /// Keep no per-layer statistics or latency histograms (whole-daemon counters remain).
    #[arg(long)]
    no_stats: bool,
    /// containerd proxy snapshotter socket (gRPC, containerd.services.snapshots.v1), or `off`.
    /// Register it in containerd's config as `[proxy_plugins.strata]` (see deploy/).
    #[arg(long, default_value = control::snapshotter::DEFAULT_SOCKET)]
    snapshotter_socket: String,
    /// containerd diff service socket (gRPC, containerd.services.diff.v1; containerd >= 1.7),
    /// or `off`. Register it as `[proxy_plugins.strata-diff]` with type "diff" and list it
    /// first in the diff service's `default` (see deploy/containerd.toml).
    #[arg(long, default_value = control::differ::DEFAULT_SOCKET)]
    diff_socket: String,
    /// containerd's socket: the diff service reads and writes layer blobs through its content
    /// API. `off` disables the diff service.
    #[arg(long, default_value = control::differ::DEFAULT_CONTAINERD_ADDRESS)]
    containerd_address: String,
    /// Mount an image file or device that users other than root may read or write (refused
    /// by default: anyone who can read it can read every container's data).
    #[arg(long)]
    allow_shared_image: bool,
    /// How device I/O is shared between layers: `fair` (per-layer fair queueing by weight,
    /// with the layers' IOPS and bandwidth limits) or `fifo` (arrival order, no limits).
    #[arg(long, default_value = "fair", value_parser = ["fair", "fifo"])]
    io_scheduler: String,
    /// Who holds the FUSE connection while no daemon runs, so containers pause rather than
    /// fail across a restart or crash: `systemd` (its file descriptor store; needs
    /// Type=notify and FileDescriptorStoreMax=), `keeper` (a `strata keeper` process this
    /// daemon starts), `none`, or `auto` (systemd when it runs the daemon, else keeper).
    #[arg(long, default_value = "auto", env = "STRATA_FD_HOLDER", value_parser = ["auto", "systemd", "keeper", "none"])]
    fd_holder: String,
    /// Answer a change (write, create, rename, ...) only once it is in the journal (an early
    /// chunk: written, not flushed), so a daemon that dies (kill -9, a crash) loses nothing
    /// the kernel was told and the next daemon serves the same files. Off by default: it
    /// costs a device write per synchronous change (tar -x of many small files runs several
    /// times slower). Without it a crash may lose up to a second of answered changes; a clean
    /// hand-over (SIGUSR2, `strata restart`) loses nothing either way.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set, env = "STRATA_PERSIST_REPLIES")]
    persist_replies: bool,
    /// The keeper's socket (default: the admin socket's path with `.keeper` appended).
    #[arg(long, env = "STRATA_KEEPER_SOCKET")]
    keeper_socket: Option<PathBuf>,
    /// FUSE over io_uring: microseconds a queue thread with device I/O of its own in flight and
    /// nothing else to do polls for the completion before it sleeps (0: never). A sleeping
    /// thread is woken by the disk's interrupt, which on a virtual machine whose CPU halted
    /// costs tens of microseconds per read; polling keeps the CPU awake for at most this long,
    /// yields it between looks and stops when another thread takes it
    #[arg(long, default_value_t = 100, env = "STRATA_DEVICE_POLL_US", value_parser = clap::value_parser!(u32).range(0..=10_000))]
    device_poll_us: u32,
    /// Microseconds a FUSE queue thread (io_uring) or worker (/dev/fuse) that has answered and
    /// has nothing else to do polls for the next request before it sleeps (0: never). A client making one
    /// synchronous request after another (small reads, stat, create) is otherwise moved by
    /// the kernel to the idle CPU at every reply, which on a virtual machine costs a halted
    /// CPU's wake-up per request; polling yields the CPU between looks (the client runs
    /// first) and stops for a while after polls in a row that found nothing
    #[arg(long, default_value_t = 50, env = "STRATA_REQUEST_POLL_US", value_parser = clap::value_parser!(u32).range(0..=10_000))]
    request_poll_us: u32,
}

#[derive(Subcommand)]
enum Cmd {
    /// Manage layers through the running daemon's admin API.
    Layer {
        #[command(subcommand)]
        cmd: layer_cli::LayerCmd,
    },
    /// Per-layer statistics from the running daemon: a table of layers sorted by I/O.
    Stats(stats_cli::StatsArgs),
    /// Apply an OCI layer tar (plain, gzip or zstd) as a new committed layer (offline: --image).
    Import(oci_cli::ImportArgs),
    /// Write a layer's diff against its parent as an OCI layer tar (offline: --image).
    Export(oci_cli::ExportArgs),
    /// Format an image file (created sparse if missing) or a block device.
    Mkfs {
        /// Image file or block device.
        path: PathBuf,
        /// Size of a new or resized image file (e.g. 8G). Default: 8G for a new file.
        #[arg(long)]
        size: Option<String>,
        /// Format even if PATH already holds a Strata file system.
        #[arg(long)]
        force: bool,
    },
    /// Run the daemon in the foreground: mount PATH at MOUNTPOINT until SIGINT/SIGTERM or `umount`.
    Mount {
        path: PathBuf,
        mountpoint: PathBuf,
        #[command(flatten)]
        opts: MountArgs,
    },
    /// Create ./strata.img if absent, mount it at ./mnt with metrics on 127.0.0.1:9477.
    Up {
        /// Image file to use (created and formatted if missing).
        #[arg(long, default_value = "strata.img")]
        image: PathBuf,
        /// Where to mount.
        #[arg(long, default_value = "mnt")]
        mountpoint: PathBuf,
        /// Size of a new image.
        #[arg(long, default_value = "8G")]
        size: String,
        #[command(flatten)]
        opts: MountArgs,
    },
    /// Reclaim what nothing can reach (not mounted): inodes unlinked while open when the
    /// daemon died, and the blocks they hold. Reports what it freed.
    Gc { path: PathBuf },
    /// Hold FUSE connections for daemons (started by `mount` with the keeper as fd holder;
    /// holds descriptors and nothing else).
    Keeper {
        /// Unix socket to serve.
        #[arg(long)]
        socket: PathBuf,
    },
    /// Restart the daemon without unmounting: it answers what it has read, checkpoints and
    /// hands the FUSE connection to its successor (the same command line, started again;
    /// under systemd use `systemctl kill -s USR2 strata`, and systemd starts the successor).
    Restart {
        /// Wait this long for the old daemon to exit and the new one to serve.
        #[arg(long, default_value = "60")]
        timeout_secs: u64,
    },
    /// Check every data block against its checksum and report each bad one with the layers
    /// and paths that use it: offline on an unmounted IMAGE, or online through the running
    /// daemon (in the background, with progress; --rate limits it). Exit 0 clean, 1 bad
    /// blocks found, 2 error.
    Scrub(integrity_cli::ScrubArgs),
    /// Take in the space of the daemon's image file or device after it grew (`truncate -s`,
    /// `lvextend`), without a remount. (A mount also grows to a larger device by itself.)
    Grow,
    /// Convert an image of an older on-disk format (version 1, without data checksums) to the
    /// current one, in place (not mounted). Reads every data block once to compute its
    /// checksum; a crash or Ctrl-C leaves the old image intact (run it again).
    Migrate { path: PathBuf },
    /// Check a Strata file system (not mounted). Exit 0 clean, 1 problems found, 2 error.
    Fsck {
        path: PathBuf,
        /// Repair everything fsck finds (wrong link counts, dangling entries, unreachable
        /// inodes linked as /lost+found.N, directories with two parents, mappings of blocks
        /// nobody or another layer owns, missing or stale checksums, a missing parent layer,
        /// orphaned inodes), print each change, then check again; exit 0 when the result is
        /// clean, 1 with what could not be repaired (blocks owned by two layers).
        #[arg(long)]
        repair: bool,
    },
}

struct Logger {
    level: log::LevelFilter,
}

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= self.level
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            eprintln!(
                "strata: {}: {}",
                r.level().as_str().to_lowercase(),
                r.args()
            );
        }
    }
    fn flush(&self) {}
}

fn parse_atime(s: &str) -> Result<engine::Atime, String> {
    match s {
        "relatime" => Ok(engine::Atime::Relatime),
        "strictatime" => Ok(engine::Atime::Strictatime),
        "noatime" => Ok(engine::Atime::Noatime),
        _ => Err(format!("{s:?}: use relatime, strictatime or noatime")),
    }
}

pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let num_end = lower
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(lower.len());
    let (n, unit) = lower.split_at(num_end);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("cannot read size {s:?} (use e.g. 512M, 8G)"))?;
    let mul: u64 = match unit.trim() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        u => {
            return Err(format!(
                "unknown size unit {u:?} in {s:?} (use K, M, G or T)"
            ))
        }
    };
    n.checked_mul(mul)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = cli.log_level.parse().unwrap_or(log::LevelFilter::Info);
    let _ = log::set_logger(Box::leak(Box::new(Logger { level })));
    log::set_max_level(level);
    let r = match cli.cmd {
        Cmd::Mkfs { path, size, force } => mkfs(&path, size.as_deref(), force),
        Cmd::Mount {
            path,
            mountpoint,
            opts,
        } => mount(&path, &mountpoint, &opts, &cli.admin_socket),
        Cmd::Up {
            image,
            mountpoint,
            size,
            opts,
        } => up(&image, &mountpoint, &size, &opts, &cli.admin_socket),
        Cmd::Fsck { path, repair } => return fsck(&path, repair),
        Cmd::Layer { cmd } => layer_cli::run(cmd, &cli.admin_socket),
        Cmd::Stats(a) => stats_cli::run(a, &cli.admin_socket),
        Cmd::Import(a) => oci_cli::import(a, &cli.admin_socket),
        Cmd::Export(a) => oci_cli::export(a, &cli.admin_socket),
        Cmd::Gc { path } => gc(&path),
        Cmd::Keeper { socket } => {
            fusefront::holder::run_keeper(&socket).map_err(|e| format!("keeper: {e}"))
        }
        Cmd::Restart { timeout_secs } => restart(&cli.admin_socket, timeout_secs),
        Cmd::Migrate { path } => migrate(&path),
        Cmd::Scrub(a) => return integrity_cli::scrub(a, &cli.admin_socket),
        Cmd::Grow => integrity_cli::grow(&cli.admin_socket),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strata: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn mkfs(path: &Path, size: Option<&str>, force: bool) -> Result<(), String> {
    let size = size.map(parse_size).transpose()?;
    let existed = path.exists();
    let bytes = engine::prepare_image(path, size).map_err(|e| e.to_string())?;
    let dev = FileDevice::open(path).map_err(|e| e.to_string())?;
    if existed && !force && engine::read_superblock(&dev).is_ok() {
        return Err(format!(
            "{} already holds a Strata file system; use --force to format it anyway",
            path.display()
        ));
    }
    make_private(path)?;
    let (uid, gid) = fusefront::sys::ids();
    let sb = engine::mkfs(&dev, uid, gid).map_err(|e| e.to_string())?;
    println!(
        "formatted {}: {} MiB, journal {} MiB, data from block {}",
        path.display(),
        bytes >> 20,
        (sb.journal_blocks * 4096) >> 20,
        sb.data_start
    );
    Ok(())
}

/// A new file system on an image file: only root may read or write it (block devices keep
/// their permissions; udev owns those).
fn make_private(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let m = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if m.is_file() && m.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("cannot make {} private (chmod 600): {e}", path.display()))?;
        println!(
            "{}: mode set to 0600 (it will hold every container's data)",
            path.display()
        );
    }
    Ok(())
}

/// The image holds every layer's data in the clear: refuse one that users other than root can
/// read or write (unless `allow`), and warn about group access and a directory others can
/// write (they could replace the image).
fn check_private(path: &Path, allow: bool) -> Result<(), String> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let m = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mode = m.permissions().mode() & 0o777;
    if mode & 0o006 != 0 {
        let msg = format!(
            "{} has mode {mode:04o}: every user on this host can {} it, and with it every \
             container's data. Run `chmod 600 {}` (or pass --allow-shared-image)",
            path.display(),
            if mode & 0o002 != 0 { "write" } else { "read" },
            path.display()
        );
        if !allow {
            return Err(msg);
        }
        log::warn!("{msg}; mounting anyway (--allow-shared-image)");
    } else if mode & 0o060 != 0 && m.gid() != 0 {
        log::warn!(
            "{} has mode {mode:04o}: members of group {} can reach every container's data",
            path.display(),
            m.gid()
        );
    }
    let dir = std::fs::canonicalize(path)
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf));
    if let Some(d) = dir.and_then(|d| std::fs::metadata(&d).ok().map(|m| (d, m))) {
        let dmode = d.1.permissions().mode();
        if dmode & 0o002 != 0 && dmode & 0o1000 == 0 {
            log::warn!(
                "{} is writable by every user: someone could replace the image; keep it in a \
                 directory only root can write (e.g. /var/lib/strata)",
                d.0.display()
            );
        }
    }
    Ok(())
}

fn check_mountpoint(mp: &Path) -> Result<(), String> {
    match std::fs::metadata(mp) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(format!("mount point {} is not a directory", mp.display())),
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            log::warn!(
                "{} holds the dead mount of a daemon that was killed; detaching it",
                mp.display()
            );
            fusefront::sys::detach_mount(mp)
                .map_err(|e| format!("cannot detach the dead mount at {}: {e}", mp.display()))
        }
        Err(e) => Err(format!("mount point {}: {e}", mp.display())),
    }
}

/// Where the FUSE connection is held between daemons.
enum Holder {
    Systemd,
    Keeper(fusefront::holder::KeeperLease),
    None,
}

fn keeper_socket(opts: &MountArgs, admin_socket: &Path) -> PathBuf {
    opts.keeper_socket.clone().unwrap_or_else(|| {
        let mut s = admin_socket.as_os_str().to_owned();
        s.push(".keeper");
        PathBuf::from(s)
    })
}

/// The daemon's pid file, beside the admin socket (`strata restart` reads it).
fn pid_file(admin_socket: &Path) -> PathBuf {
    let mut s = admin_socket.as_os_str().to_owned();
    s.push(".pid");
    PathBuf::from(s)
}

fn spawn_keeper(socket: &Path) -> std::io::Result<()> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe()?;
    std::process::Command::new(exe)
        .arg("keeper")
        .arg("--socket")
        .arg(socket)
        .stdin(std::process::Stdio::null())
        // Its own process group: a Ctrl-C or a kill of the daemon's group leaves it.
        .process_group(0)
        .spawn()?;
    log::info!("started a keeper on {}", socket.display());
    Ok(())
}

/// Find the connection a previous daemon left for `mp`, and the holder to give ours to.
fn find_held(
    opts: &MountArgs,
    admin_socket: &Path,
    mp: &Path,
) -> Result<(Holder, Option<fusefront::holder::Held>), String> {
    use fusefront::holder;
    let kind = match opts.fd_holder.as_str() {
        "auto" if holder::systemd_present() => "systemd",
        "auto" => "keeper",
        k => k,
    };
    let (h, held) = match kind {
        "systemd" => (Holder::Systemd, holder::systemd_take()),
        "keeper" => {
            let sock = keeper_socket(opts, admin_socket);
            match holder::keeper_take_or_start(&sock, &|| spawn_keeper(&sock)) {
                Ok(holder::Take::Busy) => {
                    return Err(format!(
                    "another daemon holds the FUSE connection at {} (keeper {}): takeover refused",
                    mp.display(),
                    sock.display()
                ))
                }
                Ok(holder::Take::Lease(l, held)) => (Holder::Keeper(l), held),
                Err(e) => {
                    log::warn!(
                        "no keeper at {} ({e}): the mount will not survive this daemon",
                        sock.display()
                    );
                    (Holder::None, None)
                }
            }
        }
        _ => (Holder::None, None),
    };
    let abs = fusefront::absolute_mountpoint(mp);
    let held = match held {
        Some(x) if x.state.mountpoint != abs => {
            log::warn!(
                "the held FUSE connection is mounted at {}, not {}: mounting anew",
                x.state.mountpoint.display(),
                abs.display()
            );
            holder::systemd_forget();
            None
        }
        Some(x) if !x.connected() => {
            log::info!("the held FUSE connection is gone (unmounted): mounting anew");
            holder::systemd_forget();
            None
        }
        x => x,
    };
    Ok((h, held))
}

fn mount(path: &Path, mp: &Path, opts: &MountArgs, admin_socket: &Path) -> Result<(), String> {
    // Absolute from here on: the held connection's state records where it is mounted, and a
    // successor (another working directory, systemd's /) compares it with its own.
    let mp = &fusefront::absolute_mountpoint(mp);
    let cache_bytes = parse_size(&opts.cache_size)?;
    let metrics: Option<SocketAddr> = match opts.metrics_addr.as_str() {
        "off" | "" => None,
        a => Some(
            a.parse()
                .map_err(|e| format!("--metrics-addr {a:?}: {e}"))?,
        ),
    };
    fusefront::sys::block_shutdown_signals()
        .map_err(|e| format!("cannot set up signal handling: {e}"))?;
    // Before anything touches the mount point: if a previous daemon left its connection
    // mounted there, a stat of it would wait for a daemon.
    let (holder, held) = find_held(opts, admin_socket, mp)?;
    let takeover = held.is_some();
    if !takeover {
        check_mountpoint(mp)?;
    }
    let dev = FileDevice::open(path).map_err(|e| e.to_string())?;
    let eng = Engine::open(
        Arc::new(dev),
        Options {
            cache_bytes,
            stats: !opts.no_stats,
            io_policy: if opts.io_scheduler == "fifo" {
                engine::IoPolicy::Fifo
            } else {
                engine::IoPolicy::Fair
            },
            takeover,
            ..Default::default()
        },
    )
    .map_err(|e| e.to_string())?;
    if let Err(e) = check_private(path, opts.allow_shared_image) {
        let _ = eng.shutdown();
        return Err(e);
    }
    // The held connection's kernel inodes are node ids of the image it was serving: another
    // image must not answer them.
    if let Some(f) = held.as_ref().and_then(|h| h.state.fsid) {
        if f != eng.fsid() {
            let _ = eng.shutdown();
            return Err(format!(
                "the FUSE connection held at {} serves another file system (fsid {f:016x}; {} is {:016x}): takeover refused. Start the daemon with that connection's image, or unmount {} (umount -l) to mount this one there",
                mp.display(),
                path.display(),
                eng.fsid(),
                mp.display()
            ));
        }
    }
    // A layer an import was filling when the previous daemon died is incomplete: drop it.
    control::oci::remove_interrupted_imports(&eng);
    // A snapshot the diff service was applying a layer onto is put back as prepared.
    control::differ::reset_interrupted_applies(&eng);
    if let Some(addr) = metrics {
        match control::serve_metrics(addr, eng.clone()) {
            Ok(a) => log::info!("metrics on http://{a}/metrics"),
            Err(e) => {
                let _ = eng.shutdown();
                return Err(format!("cannot serve metrics on {addr}: {e} (use --metrics-addr to pick another, or off)"));
            }
        }
    }
    let _admin =
        control::admin::serve_admin(admin_socket, eng.clone(), mp.to_path_buf()).map_err(|e| {
            let _ = eng.shutdown();
            format!("cannot serve the admin API: {e}")
        })?;
    let _snapshotter = match opts.snapshotter_socket.as_str() {
        "off" | "" => None,
        sock => {
            let h = control::snapshotter::serve(Path::new(sock), eng.clone(), mp.to_path_buf())
                .map_err(|e| {
                    let _ = eng.shutdown();
                    format!("cannot serve the containerd snapshotter on {sock}: {e} (use --snapshotter-socket to pick another, or off)")
                })?;
            log::info!("containerd snapshotter on {sock}");
            Some(h)
        }
    };
    let _differ = match (opts.diff_socket.as_str(), opts.containerd_address.as_str()) {
        ("off" | "", _) | (_, "off" | "") => None,
        (sock, containerd) => {
            let h = control::differ::serve(
                Path::new(sock),
                eng.clone(),
                mp.to_path_buf(),
                PathBuf::from(containerd),
            )
            .map_err(|e| {
                let _ = eng.shutdown();
                format!("cannot serve the containerd diff service on {sock}: {e} (use --diff-socket to pick another, or off)")
            })?;
            log::info!("containerd diff service on {sock} (content from {containerd})");
            Some(h)
        }
    };
    let fsname = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    // Both transports survive the daemon with a holder: /dev/fuse through FUSE_NOTIFY_RESEND,
    // io_uring through the ring buffers' memfd the holder keeps (a successor takes the
    // entries over; fusefront's uring.rs).
    let transport = opts.fuse_transport;
    let mount_opts = fusefront::MountOptions {
        fsname: fsname.to_string_lossy().into_owned(),
        threads: opts.threads,
        transport,
        atime: opts.atime,
        persist_replies: opts.persist_replies,
        device_poll_us: opts.device_poll_us,
        request_poll_us: opts.request_poll_us,
    };
    let session = match held {
        Some(h) => fusefront::Session::take_over(eng.clone(), mp, &mount_opts, h),
        None => fusefront::Session::mount(eng.clone(), mp, &mount_opts),
    };
    let mut session = match session {
        Ok(s) => s,
        Err(e) => {
            let _ = eng.shutdown();
            return Err(format!("cannot mount at {}: {e}", mp.display()));
        }
    };
    let holder = Arc::new(holder);
    {
        let holder = holder.clone();
        let sock = keeper_socket(opts, admin_socket);
        session.set_holder(Box::new(move |held| keep_connection(holder, held, sock)));
    }
    fusefront::watch_layers(&session, &eng);
    fusefront::flush_on_freeze(&eng, mp);
    let unmounter = session.unmounter();
    let stopper = session.stopper();
    let mp_owned = mp.to_path_buf();
    std::thread::Builder::new()
        .name("strata-signals".into())
        .spawn(move || loop {
            let sig = fusefront::sys::wait_for_signal();
            if sig == fusefront::sys::HANDOVER_SIGNAL {
                log::info!(
                    "signal {sig}: handing the connection at {} over",
                    mp_owned.display()
                );
                stopper.hand_over();
                return;
            }
            log::info!("signal {sig}: unmounting {}", mp_owned.display());
            if let Err(e) = unmounter.unmount() {
                log::warn!("unmount of {} failed: {e}", mp_owned.display());
            }
        })
        .map_err(|e| e.to_string())?;
    let pidf = pid_file(admin_socket);
    if let Err(e) = std::fs::write(&pidf, format!("{}\n", std::process::id())) {
        log::debug!("cannot write {}: {e}", pidf.display());
    }
    if takeover {
        log::info!(
            "serving {} at {} again (connection taken over)",
            path.display(),
            mp.display()
        );
    } else {
        log::info!("mounted {} at {}", path.display(), mp.display());
    }
    if matches!(*holder, Holder::Systemd) {
        fusefront::holder::systemd_ready(&format!("serving {}", mp.display()));
    }
    let run = session.run();
    // From here on a keeper that goes away is not replaced.
    EXITING.store(true, std::sync::atomic::Ordering::SeqCst);
    let shut = eng.shutdown();
    let _ = std::fs::remove_file(&pidf);
    match &run {
        Err(e) => log::error!("FUSE session ended with an error: {e}"),
        Ok(fusefront::RunEnd::Unmounted) => match &*holder {
            Holder::Keeper(l) => {
                let _ = l.drop_held();
            }
            Holder::Systemd => fusefront::holder::systemd_drop(),
            Holder::None => {}
        },
        Ok(fusefront::RunEnd::HandedOver) => {}
    }
    match (shut, run) {
        (Ok(()), Ok(fusefront::RunEnd::HandedOver)) => {
            log::info!(
                "handed over: checkpoint written; the connection stays mounted for the next daemon"
            );
            Ok(())
        }
        (Ok(()), _) => {
            log::info!("unmounted cleanly; checkpoint written");
            Ok(())
        }
        (Err(e), _) => Err(format!("shutdown checkpoint failed: {e}")),
    }
}

/// Set when the daemon is on its way out: the keeper watcher then lets the keeper go.
static EXITING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Give the connection's descriptors to the holder. With a keeper, a thread then watches
/// it: a keeper that dies is replaced, and given the descriptors again.
fn keep_connection(holder: Arc<Holder>, held: fusefront::holder::Held, sock: PathBuf) {
    match &*holder {
        Holder::None => {}
        Holder::Systemd => match fusefront::holder::systemd_put(&held) {
            Ok(()) => log::info!("FUSE connection in systemd's file descriptor store"),
            Err(e) => log::warn!(
                "cannot store the FUSE connection with systemd ({e}): it will not survive this daemon"
            ),
        },
        Holder::Keeper(lease) => {
            if let Err(e) = lease.put(&held) {
                log::warn!("cannot hand the FUSE connection to the keeper: {e}");
                return;
            }
            log::info!("FUSE connection held by the keeper at {}", sock.display());
            let spawned = std::thread::Builder::new()
                .name("strata-keeper".into())
                .spawn(move || {
                    let mut lease_gone = holder;
                    loop {
                        if let Holder::Keeper(l) = &*lease_gone {
                            l.wait_gone();
                        }
                        if EXITING.load(std::sync::atomic::Ordering::SeqCst) {
                            return;
                        }
                        log::warn!("the keeper is gone; starting another");
                        let fresh = loop {
                            match fusefront::holder::keeper_take_or_start(&sock, &|| {
                                spawn_keeper(&sock)
                            }) {
                                Ok(fusefront::holder::Take::Lease(l, _)) => break l,
                                Ok(fusefront::holder::Take::Busy) => {
                                    log::warn!("the new keeper says another daemon holds the lease")
                                }
                                Err(e) => log::warn!("cannot start a keeper: {e}"),
                            }
                            std::thread::sleep(std::time::Duration::from_secs(1));
                        };
                        let again = dup_held(&held);
                        match again.and_then(|h| fresh.put(&h)) {
                            Ok(()) => log::info!("FUSE connection held by a new keeper"),
                            Err(e) => log::warn!("cannot hand the FUSE connection to the new keeper: {e}"),
                        }
                        lease_gone = Arc::new(Holder::Keeper(fresh));
                    }
                });
            if let Err(e) = spawned {
                log::warn!("cannot watch the keeper: {e}");
            }
        }
    }
}

fn dup_held(h: &fusefront::holder::Held) -> std::io::Result<fusefront::holder::Held> {
    use std::os::fd::AsRawFd;
    Ok(fusefront::holder::Held {
        state: h.state.clone(),
        fds: h
            .fds
            .iter()
            .map(|f| fusefront::sys::dup(f.as_raw_fd()))
            .collect::<std::io::Result<_>>()?,
        ring: h
            .ring
            .as_ref()
            .map(|f| fusefront::sys::dup(f.as_raw_fd()))
            .transpose()?,
    })
}

/// `strata restart`: the daemon behind `admin_socket` hands over and exits; the same command
/// line is started again and takes the connection over.
fn restart(admin_socket: &Path, timeout_secs: u64) -> Result<(), String> {
    let pidf = pid_file(admin_socket);
    let pid: u32 = std::fs::read_to_string(&pidf)
        .map_err(|e| format!("no running daemon found ({}: {e})", pidf.display()))?
        .trim()
        .parse()
        .map_err(|_| format!("{} holds no pid", pidf.display()))?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map_err(|e| format!("daemon {pid} is not running ({e})"))?;
    use std::os::unix::ffi::OsStrExt;
    let args: Vec<std::ffi::OsString> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| std::ffi::OsStr::from_bytes(a).to_owned())
        .collect();
    if args.len() < 2 {
        return Err(format!("daemon {pid} has no command line to start again"));
    }
    let exe =
        std::fs::read_link(format!("/proc/{pid}/exe")).map_err(|e| format!("daemon {pid}: {e}"))?;
    // An upgraded binary replaced the file: start what is at its path now.
    let exe = PathBuf::from(
        exe.to_string_lossy()
            .trim_end_matches(" (deleted)")
            .to_string(),
    );
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_else(|_| "/".into());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(timeout_secs);
    let status = std::process::Command::new("kill")
        .arg(format!("-{}", fusefront::sys::HANDOVER_SIGNAL))
        .arg(pid.to_string())
        .status()
        .map_err(|e| format!("kill: {e}"))?;
    if !status.success() {
        return Err(format!("cannot signal daemon {pid}"));
    }
    // Gone, or a zombie: an exited daemon whose parent has not reaped it yet (or never will,
    // as a pid 1 that does not reap) has let go of everything; waiting for its /proc entry
    // to vanish would leave the mount without a daemon until then, or fail the restart.
    while process_running(pid) {
        if std::time::Instant::now() > deadline {
            return Err(format!(
                "daemon {pid} did not hand over within {timeout_secs} s"
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let child = std::process::Command::new(&exe)
        .args(&args[1..])
        .current_dir(cwd)
        .stdin(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    while std::fs::read_to_string(&pidf)
        .map(|p| p.trim() != child.id().to_string())
        .unwrap_or(true)
    {
        if std::time::Instant::now() > deadline {
            return Err(format!(
                "the new daemon ({}) is not serving after {timeout_secs} s",
                child.id()
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    println!("restarted: daemon {pid} handed over to {}", child.id());
    Ok(())
}

/// Whether `pid` exists and has not exited: a zombie whose threads are all gone has (a
/// zombie thread-group leader may still have threads closing its files).
fn process_running(pid: u32) -> bool {
    let Ok(st) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "PID (COMM) STATE ...": COMM may hold anything, so the state follows the last ')'.
    let zombie = st
        .rsplit_once(')')
        .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X']));
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0);
    !zombie || threads > 1
}

fn up(
    image: &Path,
    mp: &Path,
    size: &str,
    opts: &MountArgs,
    admin_socket: &Path,
) -> Result<(), String> {
    if !image.exists() {
        mkfs(image, Some(size), false)?;
    }
    if !mp.exists() {
        std::fs::create_dir_all(mp).map_err(|e| format!("cannot create {}: {e}", mp.display()))?;
    }
    let abs = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    println!("strata up:");
    println!("  image       {}", abs(image).display());
    println!("  mounted at  {}", abs(mp).display());
    println!(
        "  files in    {}/{}   (one directory per layer; `strata layer ls`)",
        abs(mp).display(),
        engine::DEFAULT_LAYER
    );
    println!("  admin API   {}", admin_socket.display());
    if opts.snapshotter_socket != "off" {
        println!(
            "  containerd  {}   (proxy snapshotter \"strata\"; see deploy/containerd.toml)",
            opts.snapshotter_socket
        );
        if opts.diff_socket != "off" && opts.containerd_address != "off" {
            println!(
                "  diff        {}   (proxy diff service \"strata-diff\", containerd >= 1.7)",
                opts.diff_socket
            );
        }
    }
    if opts.metrics_addr != "off" {
        println!("  metrics     http://{}/metrics", opts.metrics_addr);
    }
    println!("  stop with   Ctrl-C, or `umount {}`", abs(mp).display());
    mount(image, mp, opts, admin_socket)
}

fn fsck(path: &Path, repair: bool) -> ExitCode {
    let dev = match FileDevice::open(path) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("strata: error: {e}");
            return ExitCode::from(2);
        }
    };
    let report = match engine::fsck::check(&dev) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("strata: fsck: {e}");
            return ExitCode::from(
                if matches!(e, engine::Error::NotStrata(_) | engine::Error::Unusable(_)) {
                    2
                } else {
                    1
                },
            );
        }
    };
    println!(
        "{}: {} inodes, {} of {} blocks in use, {} journal chunk(s) to replay",
        path.display(),
        report.inodes,
        report.blocks_used,
        report.blocks_total,
        report.chunks_replayed
    );
    if report.version < engine::format::FORMAT_VERSION {
        println!(
            "format version {} (no data checksums): `strata migrate {}` converts it to version {}",
            report.version,
            path.display(),
            engine::format::FORMAT_VERSION
        );
    }
    for p in &report.problems {
        println!("problem: {p}");
    }
    for p in &report.leaks {
        println!("leak: {p} (`fsck --repair` frees it)");
    }
    if report.is_clean() && report.leaks.is_empty() {
        println!("clean");
        if !(repair && report.chunks_replayed > 0) {
            return ExitCode::SUCCESS;
        }
    } else if !repair {
        return ExitCode::from(if report.is_clean() { 0 } else { 1 });
    }
    // Repair offline (a new checkpoint), then open and close the file system once (which
    // drops the active layers' orphaned inodes) and check again.
    let r = match engine::repair::repair(&dev) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("strata: fsck: repair failed: {e}");
            return ExitCode::from(1);
        }
    };
    for m in &r.repaired {
        println!("repaired: {m}");
    }
    if r.chunks_replayed > 0 {
        println!(
            "repaired: {} journal chunk(s) replayed into a new checkpoint",
            r.chunks_replayed
        );
    }
    if !r.unrepaired.is_empty() {
        for m in &r.unrepaired {
            println!("not repaired: {m}");
        }
        eprintln!("strata: fsck: these problems cannot be repaired automatically");
        return ExitCode::from(1);
    }
    repair_by_mount(dev)
}

fn repair_by_mount(dev: FileDevice) -> ExitCode {
    match Engine::open(Arc::new(dev), Options::default()).and_then(|e| e.shutdown()) {
        Ok(()) => {
            println!("repaired: opened and closed once (orphaned inodes removed); clean");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("strata: fsck: repair failed: {e}");
            ExitCode::from(1)
        }
    }
}

fn migrate(path: &Path) -> Result<(), String> {
    let dev = FileDevice::open(path).map_err(|e| e.to_string())?;
    let r = engine::migrate(&dev).map_err(|e| e.to_string())?;
    if r.from_version == engine::format::FORMAT_VERSION {
        println!(
            "{}: already format version {}; nothing to do",
            path.display(),
            r.from_version
        );
        return Ok(());
    }
    println!(
        "{}: migrated from format version {} to {}: {} layer(s), {} journal chunk(s) replayed,          {} data block(s) ({} MiB) checksummed in {:.1} s",
        path.display(),
        r.from_version,
        engine::format::FORMAT_VERSION,
        r.layers,
        r.chunks_replayed,
        r.blocks,
        (r.blocks * engine::BLOCK) >> 20,
        r.seconds
    );
    for p in &r.problems {
        println!("note: the image has a problem fsck reports (run `strata fsck --repair`): {p}");
    }
    Ok(())
}

fn gc(path: &Path) -> Result<(), String> {
    let dev = FileDevice::open(path).map_err(|e| e.to_string())?;
    let before = engine::fsck::check(&dev).map_err(|e| e.to_string())?;
    // Opening the engine replays the journal and deletes orphaned inodes; the allocator is
    // rebuilt from what the layers reference, so nothing else can leak.
    let eng = Engine::open(Arc::new(dev), Options::default()).map_err(|e| e.to_string())?;
    let after = eng.statfs();
    let layers = eng.layer_list().len();
    eng.shutdown().map_err(|e| e.to_string())?;
    let used_after = after.blocks - after.bfree;
    println!(
        "{}: {} layer(s); {} inodes before, blocks in use {} -> {} ({} reclaimed)",
        path.display(),
        layers,
        before.inodes,
        before.blocks_used,
        used_after,
        before.blocks_used.saturating_sub(used_after)
    );
    Ok(())
}
