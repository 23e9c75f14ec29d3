//! Live restart with systemd's file descriptor store as the fd holder, against a stand-in
//! systemd (this VM has no systemd as PID 1). It implements what the daemon uses of the
//! protocol, as systemd does (sd_notify(3), sd_listen_fds(3), systemd.service(5), and
//! src/core/manager.c / service.c):
//!
//! - a SOCK_DGRAM unix socket with SO_PASSCRED; a message without credentials, one over
//!   4096 bytes (NOTIFY_BUFFER_MAX) or one with a NUL inside is ignored; with
//!   `NotifyAccess=main` (deploy/strata.service) only the main pid's messages count;
//! - `FDSTORE=1`: each passed descriptor is stored under `FDNAME=` (else "stored"), unless
//!   the store already holds the same open file (kcmp) or is full (FileDescriptorStoreMax=64,
//!   the rest closed); a name may be held by several entries; the store is a list
//!   newest-first (LIST_PREPEND), which is the order of LISTEN_FDS at the next start;
//! - `FDSTOREREMOVE=1` + `FDNAME=`: every entry of that name is closed;
//! - descriptors sent without `FDSTORE=1` are closed;
//! - a stored descriptor that polls POLLERR/POLLHUP is dropped (no `FDPOLL=0` here);
//! - `READY=1`;
//! - the next start: the stored descriptors at 3.. (inheritable), `LISTEN_FDS`,
//!   `LISTEN_FDNAMES` (colon-separated, store order), `LISTEN_PID` = the new process, the same
//!   `NOTIFY_SOCKET`; no `LISTEN_*` when the store is empty.
//!
//! The daemon (`--fd-holder auto`, NOTIFY_SOCKET set) is handed over (SIGUSR2, exit 0) and
//! killed (-9), 3 times each, and started again each time, while a process works in the
//! mount with its files open. Asserted: zero errors in that process, its data there (live
//! and after a fresh mount), the log says the connection was taken over (over io_uring: the
//! ring buffers too), the store held the connection after every message from the first
//! store on (a daemon killed at any moment leaves it to its successor), the final unmount
//! empties the store (the daemon's FDSTOREREMOVE; the memfds poll no error, so only that
//! removes them), nothing the stand-in refused or ignored, fsck clean. Both transports; the
//! io_uring run uses an abstract notify socket (`@name`, which sd_notify(3) documents), the
//! /dev/fuse run a path (what systemd itself uses, /run/systemd/notify) and relative image
//! and mount paths (`strata mount image mnt` in the test directory).

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use testkit::*;

const BLOCK: usize = 4096;
const DATA_BLOCKS: u64 = 64;
/// Hand-overs, and kills, of the daemon per test.
const ROUNDS: usize = 3;
/// systemd's NOTIFY_BUFFER_MAX (PIPE_BUF).
const NOTIFY_BUFFER_MAX: usize = 4096;
/// deploy/strata.service's FileDescriptorStoreMax=.
const FD_STORE_MAX: usize = 64;

// ---------------------------------------------------------------------------------------
// The stand-in systemd
// ---------------------------------------------------------------------------------------

struct Stored {
    name: String,
    fd: OwnedFd,
    /// Who stored it.
    pid: u32,
}

#[derive(Default)]
struct Manager {
    main_pid: Option<u32>,
    /// Newest first, as systemd's fd_store list.
    store: Vec<Stored>,
    /// READY=1 from the current main pid.
    ready: bool,
    /// (pid, name, entries removed) per FDSTOREREMOVE.
    removed: Vec<(u32, String, usize)>,
    /// What systemd would have logged a warning for (or ignored): must stay empty.
    refused: Vec<String>,
    /// Every message, for a failing test's output.
    log: Vec<String>,
    /// While set (`Some(uring)`), the store must hold the connection after every message:
    /// the state, a /dev/fuse descriptor and (io_uring) the ring buffers. A daemon killed at
    /// any moment must leave its successor something to take over.
    must_hold: Option<bool>,
    /// Messages after which it did not.
    gaps: Vec<String>,
    /// When the last message came.
    last_message: Option<Instant>,
}

/// systemd's fdname_is_valid(): ASCII, no control characters, no ':', at most 255 bytes.
fn fdname_is_valid(s: &str) -> bool {
    s.len() <= 255 && s.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b':')
}

impl Manager {
    fn names(&self) -> Vec<String> {
        self.store.iter().map(|s| s.name.clone()).collect()
    }

    fn handle(&mut self, d: testkit::sdnotify::Datagram) {
        self.last_message = Some(Instant::now());
        let text = String::from_utf8_lossy(&d.bytes).into_owned();
        self.log
            .push(format!("pid {:?}, {} fds: {:?}", d.pid, d.fds.len(), text));
        let Some(pid) = d.pid.filter(|&p| p > 0) else {
            self.refused
                .push(format!("message without valid credentials: {text:?}"));
            return;
        };
        if d.truncated || d.bytes.len() > NOTIFY_BUFFER_MAX {
            self.refused
                .push(format!("message from {pid} exceeded the maximum size"));
            return;
        }
        if d.bytes.len() > 1 && d.bytes[..d.bytes.len() - 1].contains(&0) {
            self.refused
                .push(format!("message from {pid} with embedded NUL bytes"));
            return;
        }
        // NotifyAccess=main.
        if self.main_pid != Some(pid) {
            self.refused.push(format!(
                "message from {pid}, not the main pid {:?} (NotifyAccess=main): {text:?}",
                self.main_pid
            ));
            return;
        }
        let text = text.trim_end_matches('\0');
        let tags: Vec<&str> = text.split('\n').filter(|t| !t.is_empty()).collect();
        let fdname = tags.iter().find_map(|t| t.strip_prefix("FDNAME="));
        let mut fds = d.fds;
        if tags.contains(&"READY=1") {
            self.ready = true;
        }
        if tags.contains(&"FDSTOREREMOVE=1") {
            match fdname {
                Some(n) if fdname_is_valid(n) => {
                    let before = self.store.len();
                    self.store.retain(|s| s.name != n);
                    self.removed
                        .push((pid, n.to_string(), before - self.store.len()));
                }
                _ => self
                    .refused
                    .push("FDSTOREREMOVE=1 without a valid FDNAME=".into()),
            }
        }
        if tags.contains(&"FDSTORE=1") {
            let name = match fdname {
                Some(n) if fdname_is_valid(n) => n,
                Some(n) => {
                    self.refused.push(format!("invalid FDNAME={n:?}"));
                    "stored"
                }
                None => "stored",
            };
            for fd in fds.drain(..) {
                if self.store.len() >= FD_STORE_MAX {
                    self.refused.push(format!(
                        "cannot store more fds than FileDescriptorStoreMax={FD_STORE_MAX} ({name})"
                    ));
                    break;
                }
                let dup = self.store.iter().any(|s| {
                    testkit::sdnotify::same_file(&s.fd, &fd)
                        .expect("kcmp (systemd's same_fd) failed")
                });
                if !dup {
                    self.store.insert(
                        0,
                        Stored {
                            name: name.to_string(),
                            fd,
                            pid,
                        },
                    );
                }
            }
        }
        if !fds.is_empty() {
            self.refused.push(format!(
                "{} extra fds without FDSTORE=1 (closed): {text:?}",
                fds.len()
            ));
        }
    }

    /// `name (pid that stored it)`, store order.
    fn entries(&self) -> Vec<String> {
        self.store
            .iter()
            .map(|s| format!("{} ({})", s.name, s.pid))
            .collect()
    }

    fn holds_connection(&self, uring: bool) -> bool {
        let has = |p: &str| self.store.iter().any(|s| s.name.starts_with(p));
        has("strata-state") && has("strata-fuse") && (!uring || has("strata-ring"))
    }

    /// systemd watches stored descriptors for EPOLLHUP/EPOLLERR and drops them.
    fn drop_errored(&mut self) {
        let before = self.names();
        self.store
            .retain(|s| !testkit::sdnotify::poll_err_hup(&s.fd));
        if self.store.len() != before.len() {
            let after = self.names();
            self.log.push(format!(
                "POLLERR/POLLHUP: dropped {:?}",
                before
                    .iter()
                    .filter(|n| !after.contains(n))
                    .collect::<Vec<_>>()
            ));
        }
    }
}

struct FakeSystemd {
    /// NOTIFY_SOCKET as systemd writes it: a path, or "@name" for an abstract socket.
    notify_socket: String,
    m: Arc<Mutex<Manager>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeSystemd {
    /// Listen on `notify_socket` (a path, or "@name").
    fn start(notify_socket: &str) -> FakeSystemd {
        let sock = match notify_socket.strip_prefix('@') {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let a =
                    std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
                UnixDatagram::bind_addr(&a).unwrap()
            }
            None => {
                let _ = fs::remove_file(notify_socket);
                UnixDatagram::bind(notify_socket).unwrap()
            }
        };
        testkit::sdnotify::set_passcred(&sock).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let m = Arc::new(Mutex::new(Manager::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (m, stop) = (m.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    // One more byte than NOTIFY_BUFFER_MAX, as systemd reads.
                    match testkit::sdnotify::recv_datagram(&sock, NOTIFY_BUFFER_MAX + 1) {
                        Ok(d) => {
                            let mut m = m.lock().unwrap_or_else(|e| e.into_inner());
                            m.handle(d);
                            if let Some(uring) = m.must_hold {
                                if !m.holds_connection(uring) {
                                    let g = format!(
                                        "after {} the store holds only {:?}",
                                        m.log.last().unwrap(),
                                        m.names()
                                    );
                                    m.gaps.push(g);
                                }
                            }
                        }
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                            ) => {}
                        Err(e) => panic!("recvmsg on the notify socket: {e}"),
                    }
                    m.lock().unwrap_or_else(|e| e.into_inner()).drop_errored();
                }
            })
        };
        FakeSystemd {
            notify_socket: notify_socket.to_string(),
            m,
            stop,
            thread: Some(thread),
        }
    }

    fn names(&self) -> Vec<String> {
        self.m.lock().unwrap_or_else(|e| e.into_inner()).names()
    }

    /// Start `strata ARGS` as systemd starts a service's main process: the store's
    /// descriptors at 3.. with LISTEN_FDS, LISTEN_FDNAMES and LISTEN_PID, NOTIFY_SOCKET; the
    /// new process is the main pid from its first instruction on.
    fn start_service(&self, args: &[OsString], cwd: &Path, log: &Path) -> Daemon {
        // Held across the spawn: no message is looked at before the main pid is known.
        let mut m = self.m.lock().unwrap_or_else(|e| e.into_inner());
        let fds: Vec<OwnedFd> = m.store.iter().map(|s| s.fd.try_clone().unwrap()).collect();
        let names = m.names().join(":");
        let logf = fs::File::create(log).unwrap();
        let mut cmd = Command::new("/bin/sh");
        // LISTEN_PID is the pid systemd forked, which then execs the service: here the shell
        // that execs strata.
        let script = if fds.is_empty() {
            r#"exec "$0" "$@""#
        } else {
            r#"LISTEN_PID=$$; export LISTEN_PID; exec "$0" "$@""#
        };
        cmd.current_dir(cwd)
            .arg("-c")
            .arg(script)
            .arg(strata_bin())
            .args(args)
            .env("NOTIFY_SOCKET", &self.notify_socket)
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_FDNAMES")
            .env_remove("STRATA_FD_HOLDER")
            .stdin(Stdio::null())
            .stdout(Stdio::from(logf.try_clone().unwrap()))
            .stderr(Stdio::from(logf));
        if !fds.is_empty() {
            cmd.env("LISTEN_FDS", fds.len().to_string())
                .env("LISTEN_FDNAMES", &names);
        }
        let child = testkit::sdnotify::spawn_with_fds(&mut cmd, &fds).expect("spawn strata");
        m.main_pid = Some(child.id());
        m.ready = false;
        m.log.push(format!(
            "started {} with LISTEN_FDS={} LISTEN_FDNAMES={names}",
            child.id(),
            fds.len()
        ));
        Daemon {
            child: Some(child),
            log: log.to_path_buf(),
        }
    }

    /// Wait for READY=1 from the main pid (panics with the daemon's log if it exits first).
    fn wait_ready(&self, d: &mut Daemon) {
        let t = Instant::now();
        while !self.m.lock().unwrap_or_else(|e| e.into_inner()).ready {
            if let Some(st) = d.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "daemon exited ({st}) before READY=1; log:\n{}\nnotify messages:\n{}",
                    d.output(),
                    self.m
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .log
                        .join("\n")
                );
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "no READY=1 within 30 s; log:\n{}",
                d.output()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Wait until the daemon has stored its connection: the log says so (every message is
    /// sent), no message came for 100 ms (every message is read), and the store then holds
    /// exactly `strata-state`, `strata-fuse0..` and (io_uring) `strata-ring`, each once.
    /// Returns the names (store order).
    fn wait_stored(&self, d: &Daemon, uring: bool) -> Vec<String> {
        let t = Instant::now();
        while !d
            .output()
            .contains("FUSE connection in systemd's file descriptor store")
        {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "the daemon did not store its connection; log:\n{}",
                d.output()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        loop {
            {
                let m = self.m.lock().unwrap_or_else(|e| e.into_inner());
                let names = m.names();
                let fuse = names
                    .iter()
                    .filter(|n| n.starts_with("strata-fuse"))
                    .count();
                let mut want: Vec<String> = vec!["strata-state".into()];
                want.extend((0..fuse).map(|k| format!("strata-fuse{k}")));
                if uring {
                    want.push("strata-ring".into());
                }
                let mut sorted = names.clone();
                sorted.sort();
                want.sort();
                let quiet = m
                    .last_message
                    .is_some_and(|l| l.elapsed() > Duration::from_millis(100));
                if quiet && fuse > 0 && sorted == want {
                    return names;
                }
                assert!(
                    t.elapsed() < Duration::from_secs(30),
                    "the store holds {names:?} (want {want:?}); messages:\n{}",
                    m.log.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for FakeSystemd {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if !self.notify_socket.starts_with('@') {
            let _ = fs::remove_file(&self.notify_socket);
        }
    }
}

/// A daemon the stand-in started. Dropped while running (a failed test): SIGKILL.
struct Daemon {
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    fn output(&self) -> String {
        fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let mut c = self.child.take().unwrap();
        match wait_child(&mut c, timeout) {
            Some(st) => st,
            None => {
                let _ = c.kill();
                let _ = c.wait();
                panic!(
                    "daemon did not exit within {timeout:?}; log:\n{}",
                    self.output()
                );
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            if std::thread::panicking() {
                eprintln!(
                    "---- daemon log {} ----\n{}",
                    self.log.display(),
                    self.output()
                );
            }
        }
    }
}

/// Unmounts (lazily if need be) whatever is still mounted at its path when the test ends
/// (mounts stacked there too: a successor that mounted anew over a held connection).
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        for _ in 0..4 {
            if !is_mounted(&self.0) {
                return;
            }
            if !umount(&self.0, false) {
                umount(&self.0, true);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The process in the mount
// ---------------------------------------------------------------------------------------

fn tag_bytes(tag: u64, len: usize) -> Vec<u8> {
    testkit::pattern(tag, len)
}

/// The workload (a separate process: this test binary running `sd_workload_child`): writes
/// 4 KiB blocks of a data file it keeps open and reads each back, fsync every 8 iterations,
/// an open unlinked file, small files written and renamed into place. Reports through `ctl`
/// (a host directory): `progress`, and when told to `stop`: `errors`, `model` (block, tag).
struct Workload {
    ctl: PathBuf,
    child: Child,
}

impl Workload {
    fn start(dir: &Path, ctl: &Path) -> Workload {
        fs::create_dir_all(ctl).unwrap();
        let child = Command::new(std::env::current_exe().unwrap())
            .args(["sd_workload_child", "--exact", "--ignored", "--nocapture"])
            .env("SD_WORK_DIR", dir)
            .env("SD_CTL_DIR", ctl)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let w = Workload {
            ctl: ctl.to_path_buf(),
            child,
        };
        w.wait_for(20);
        w
    }

    fn iterations(&self) -> u64 {
        testkit::live::iterations(&self.ctl)
    }

    /// Wait until it has done `more` iterations beyond now.
    fn wait_for(&self, more: u64) {
        let target = self.iterations() + more;
        let t = Instant::now();
        while self.iterations() < target {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "the workload made no progress ({} of {target} iterations); errors: {:?}",
                self.iterations(),
                fs::read_to_string(self.ctl.join("errors")).ok()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stop it: (errors, model of the data file).
    fn finish(mut self) -> (Vec<String>, BTreeMap<u64, u64>) {
        fs::write(self.ctl.join("stop"), b"").unwrap();
        assert!(
            wait_child(&mut self.child, Duration::from_secs(120)).is_some(),
            "the workload did not stop"
        );
        let errors = fs::read_to_string(self.ctl.join("errors"))
            .unwrap_or_else(|_| "the workload wrote no result\n".into());
        let model = fs::read_to_string(self.ctl.join("model")).unwrap_or_default();
        (
            errors.lines().map(str::to_string).collect(),
            model
                .lines()
                .filter_map(|l| {
                    let (a, b) = l.split_once(' ')?;
                    Some((a.parse().ok()?, b.parse().ok()?))
                })
                .collect(),
        )
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The workload process (started by [`Workload::start`]; does nothing when run directly).
#[test]
#[ignore]
fn sd_workload_child() {
    let (Some(dir), Some(ctl)) = (
        std::env::var_os("SD_WORK_DIR"),
        std::env::var_os("SD_CTL_DIR"),
    ) else {
        return;
    };
    let (dir, ctl) = (PathBuf::from(dir), PathBuf::from(ctl));
    let mut errors: Vec<String> = Vec::new();
    let mut model: BTreeMap<u64, u64> = BTreeMap::new();
    let run = |errors: &mut Vec<String>, model: &mut BTreeMap<u64, u64>| -> std::io::Result<()> {
        fs::create_dir_all(&dir)?;
        let open = |p: &Path| {
            fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(p)
        };
        let data = open(&dir.join("data"))?;
        let orphan = open(&dir.join("orphan"))?;
        fs::remove_file(dir.join("orphan"))?;
        let mut orphan_model: BTreeMap<u64, u64> = BTreeMap::new();
        let mut i: u64 = 0;
        while !ctl.join("stop").exists() {
            i += 1;
            let mut err = |e: String| {
                if errors.len() < 50 {
                    errors.push(format!("iteration {i}: {e}"));
                }
            };
            let blk = (i * 7) % DATA_BLOCKS;
            let buf = tag_bytes(i, BLOCK);
            match data.write_all_at(&buf, blk * BLOCK as u64) {
                Ok(()) => {
                    model.insert(blk, i);
                }
                Err(e) => err(format!("write data block {blk}: {e}")),
            }
            let mut back = vec![0u8; BLOCK];
            match data.read_exact_at(&mut back, blk * BLOCK as u64) {
                Ok(()) if back == buf => {}
                Ok(()) => err(format!("data block {blk} reads back wrong")),
                Err(e) => err(format!("read data block {blk}: {e}")),
            }
            if i % 8 == 0 {
                if let Err(e) = data.sync_all() {
                    err(format!("fsync data: {e}"));
                }
            }
            let ob = i % 8;
            match orphan.write_all_at(&tag_bytes(i ^ 0xabcd, BLOCK), ob * BLOCK as u64) {
                Ok(()) => {
                    orphan_model.insert(ob, i ^ 0xabcd);
                }
                Err(e) => err(format!("write unlinked file: {e}")),
            }
            if i % 5 == 0 {
                for (&b, &tag) in &orphan_model {
                    let mut v = vec![0u8; BLOCK];
                    match orphan.read_exact_at(&mut v, b * BLOCK as u64) {
                        Ok(()) if v == tag_bytes(tag, BLOCK) => {}
                        Ok(()) => err(format!("unlinked file block {b} reads back wrong")),
                        Err(e) => err(format!("read unlinked file: {e}")),
                    }
                }
            }
            if i % 4 == 0 {
                let tmp = dir.join(format!("f.tmp{}", i % 3));
                let dst = dir.join(format!("f{}", i % 10));
                let body = tag_bytes(i, 100 + (i % 900) as usize);
                match fs::write(&tmp, &body)
                    .and_then(|_| fs::rename(&tmp, &dst))
                    .and_then(|_| fs::read(&dst))
                {
                    Ok(v) if v == body => {}
                    Ok(_) => err(format!("{} reads back wrong", dst.display())),
                    Err(e) => err(format!("small file {}: {e}", dst.display())),
                }
            }
            testkit::live::report_progress(&ctl, i);
        }
        Ok(())
    };
    if let Err(e) = run(&mut errors, &mut model) {
        errors.push(format!("set-up: {e}"));
    }
    let m: String = model.iter().map(|(b, t)| format!("{b} {t}\n")).collect();
    let _ = fs::write(ctl.join("model"), m);
    let e: String = errors.iter().map(|e| format!("{e}\n")).collect();
    let _ = fs::write(ctl.join("errors"), e);
}

/// The data file holds what the workload last wrote to each block.
fn check_data(data: &Path, model: &BTreeMap<u64, u64>, when: &str) {
    let f = fs::File::open(data).unwrap();
    for (&b, &tag) in model {
        let mut v = vec![0u8; BLOCK];
        f.read_exact_at(&mut v, b * BLOCK as u64).unwrap();
        assert!(
            v == tag_bytes(tag, BLOCK),
            "{when}: data block {b} is not iteration {tag}'s"
        );
    }
}

// ---------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------

/// `relative`: `strata mount image mnt` in the test directory (as with a unit's
/// WorkingDirectory=), else absolute paths.
fn restarts_under_systemd(
    transport: &str,
    notify_socket: &dyn Fn(&TestDir) -> String,
    relative: bool,
) {
    let uring = transport == "io-uring";
    let t = TestDir::new(&format!("sd-{transport}"));
    let img = t.mkfs("512M");
    let mnt = t.mountpoint("mnt");
    let _unmount = Unmount(mnt.clone());
    let sd = FakeSystemd::start(&notify_socket(&t));
    let args: Vec<OsString> = [
        OsString::from("mount"),
        if relative {
            "image".into()
        } else {
            img.clone().into()
        },
        if relative {
            "mnt".into()
        } else {
            mnt.clone().into()
        },
        "--fd-holder".into(),
        "auto".into(),
        "--persist-replies".into(),
        "true".into(),
        "--fuse-transport".into(),
        transport.into(),
        "--metrics-addr".into(),
        "off".into(),
        "--admin-socket".into(),
        Mount::admin_socket_for(&mnt).into(),
        "--snapshotter-socket".into(),
        Mount::snapshotter_socket_for(&mnt).into(),
        "--diff-socket".into(),
        Mount::diff_socket_for(&mnt).into(),
    ]
    .into();
    let mut d = sd.start_service(&args, &t.path, &t.join("strata-0.log"));
    sd.wait_ready(&mut d);
    assert!(is_mounted(&mnt), "READY=1 before the mount is there");
    let first = sd.wait_stored(&d, uring);
    sd.m.lock().unwrap_or_else(|e| e.into_inner()).must_hold = Some(uring);
    let fuse_fds = first
        .iter()
        .filter(|n| n.starts_with("strata-fuse"))
        .count();
    let root = mnt.join("default");
    fs::write(root.join("before"), b"written before the restarts").unwrap();
    let w = Workload::start(&root.join("work"), &t.join("ctl"));
    assert!(
        d.output().contains(if uring {
            "FUSE transport: io_uring"
        } else {
            "FUSE transport: /dev/fuse"
        }),
        "not on {transport}; log:\n{}",
        d.output()
    );
    for k in 0..2 * ROUNDS {
        let kind = if k % 2 == 0 {
            "hand-over (SIGUSR2)"
        } else {
            "kill -9"
        };
        let names_before = sd.names();
        if k % 2 == 0 {
            sys::kill(d.pid(), libc::SIGUSR2).unwrap();
            let st = d.wait_exit(Duration::from_secs(60));
            assert!(st.success(), "{kind}: exit {st}; log:\n{}", d.output());
            assert!(d.output().contains("handed over"), "{}", d.output());
        } else {
            sys::kill(d.pid(), libc::SIGKILL).unwrap();
            d.wait_exit(Duration::from_secs(10));
        }
        // What the successor is given: what was stored (the store drops nothing on exit).
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(sd.names(), names_before, "{kind}: the store changed");
        d = sd.start_service(&args, &t.path, &t.join(&format!("strata-{}.log", k + 1)));
        sd.wait_ready(&mut d);
        let names = sd.wait_stored(&d, uring);
        assert_eq!(
            names
                .iter()
                .filter(|n| n.starts_with("strata-fuse"))
                .count(),
            fuse_fds,
            "{kind}: the successor stored another number of FUSE descriptors: {names:?}"
        );
        let out = d.output();
        assert!(
            out.contains("(connection taken over)"),
            "{kind}: the successor did not take the connection over; log:\n{out}"
        );
        if uring {
            assert!(
                out.contains("FUSE transport: io_uring") && out.contains("(taken over)"),
                "{kind}: the io_uring entries were not taken over; log:\n{out}"
            );
        }
        assert!(!out.contains("mounting anew"), "{kind}: {out}");
        w.wait_for(20);
        eprintln!(
            "{transport}: {kind}: taken over by {}; the store: {:?}",
            d.pid(),
            sd.m.lock().unwrap_or_else(|e| e.into_inner()).entries()
        );
    }
    let (errors, model) = w.finish();
    assert!(
        errors.is_empty(),
        "the process in the mount saw errors: {errors:#?}"
    );
    check_data(&root.join("work/data"), &model, "live");
    assert_eq!(
        fs::read(root.join("before")).unwrap(),
        b"written before the restarts"
    );
    fs::write(root.join("after"), b"written after the restarts").unwrap();
    assert_eq!(
        fs::read(root.join("after")).unwrap(),
        b"written after the restarts"
    );

    // The final unmount: the daemon exits 0 and lets systemd's store go.
    {
        let mut m = sd.m.lock().unwrap_or_else(|e| e.into_inner());
        m.must_hold = None;
        assert!(
            m.gaps.is_empty(),
            "the store did not hold the connection at every moment (a daemon killed then would have lost it): {:#?}",
            m.gaps
        );
    }
    let final_pid = d.pid();
    assert!(umount(&mnt, false), "umount {}", mnt.display());
    let st = d.wait_exit(STOP_TIMEOUT);
    assert!(st.success(), "exit {st} after umount; log:\n{}", d.output());
    let t0 = Instant::now();
    while !sd.names().is_empty() && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    {
        let m = sd.m.lock().unwrap_or_else(|e| e.into_inner());
        assert!(
            m.store.is_empty(),
            "the store still holds {:?} after the unmount; messages:\n{}",
            m.names(),
            m.log.join("\n")
        );
        // The memfds poll no error: only the daemon's FDSTOREREMOVE lets them go.
        for name in ["strata-state"]
            .into_iter()
            .chain(uring.then_some("strata-ring"))
        {
            assert!(
                m.removed
                    .iter()
                    .any(|(p, n, c)| *p == final_pid && n == name && *c == 1),
                "the final daemon did not remove {name}: {:?}",
                m.removed
            );
        }
        assert!(
            m.refused.is_empty(),
            "systemd would have refused or ignored: {:#?}\nmessages:\n{}",
            m.refused,
            m.log.join("\n")
        );
    }
    assert_fsck_clean(&img, "after the restarts under systemd");
    // A fresh mount (no holder) has the data.
    let m = Mount::start(&img, &mnt);
    check_data(&m.root().join("work/data"), &model, "after a fresh mount");
    assert_eq!(
        fs::read(m.root().join("after")).unwrap(),
        b"written after the restarts"
    );
    m.stop();
}

#[test]
fn restarts_under_systemd_over_dev_fuse() {
    require_root_and_fuse!();
    restarts_under_systemd(
        "dev",
        &|t| t.join("notify.sock").display().to_string(),
        true,
    );
}

#[test]
fn restarts_under_systemd_over_io_uring() {
    require_root_and_fuse!();
    if fs::read_to_string("/sys/module/fuse/parameters/enable_uring")
        .map(|s| s.trim() != "Y")
        .unwrap_or(true)
    {
        eprintln!("SKIP: no FUSE over io_uring here (/sys/module/fuse/parameters/enable_uring)");
        return;
    }
    restarts_under_systemd(
        "io-uring",
        &|_| format!("@strata-test-notify-{}", std::process::id()),
        false,
    );
}
