//! Live-restart test support (tests/live_restart.rs, tests/live_restart_containers.rs):
//! Strata started with the keeper as fd holder, the keepers' pids (from their pid file), a
//! guard for a daemon this test did not start (the successor `strata restart` starts), and
//! the workload loop that runs in the mount and reports through files in a host directory,
//! with what it saw read back and the pauses per restart.
//!
//! The workload runs as a separate process ([`spawn_workload`]: the test binary again, or a
//! container's process), never as a thread of the test: a thread blocked in a fault on a FUSE
//! mapping while no daemon serves holds its process's mm lock, so the test process could not
//! fork the successor daemon (a deadlock).
//!
//! Pids come from pid files, never from other processes' command lines: reading
//! /proc/PID/cmdline of a process stuck in a fault on a FUSE mapping blocks.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::strata::{assert_no_panic, Mount, STOP_TIMEOUT};
use crate::{errno_name, is_mounted, pattern, sys, umount, wait_child};

pub const BLOCK: usize = 4096;
/// Blocks of the data file the loop cycles over.
pub const DATA_BLOCKS: u64 = 256;
pub const MAP_LEN: usize = 64 * 1024;

/// Restarts of each kind (the issue asks for 10 and 10): `STRATA_LIVE_RESTARTS`, else 10.
pub fn restarts() -> usize {
    std::env::var("STRATA_LIVE_RESTARTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
}

/// `strata mount` options with the keeper as fd holder; the keeper's socket beside the
/// mount point. The transport is STRATA_FUSE_TRANSPORT's (testkit passes it on; unset, the
/// daemon's default: io_uring where the kernel has it), unless a test names one: both
/// transports survive restarts.
pub fn holder_args(mnt: &Path) -> Vec<String> {
    vec![
        "--fd-holder".into(),
        "keeper".into(),
        "--keeper-socket".into(),
        keeper_socket(mnt).display().to_string(),
        // kill -9 must lose nothing a process was told (off by default: it costs a device
        // write per synchronous change).
        "--persist-replies".into(),
        "true".into(),
    ]
}

pub fn keeper_socket(mnt: &Path) -> PathBuf {
    mnt.with_extension("keeper.sock")
}

/// `strata mount IMAGE MNT` with the keeper as fd holder and `extra` options. When the mount
/// is already in the table (a takeover) this returns at once, before the daemon serves.
pub fn start_with_keeper(img: &Path, mnt: &Path, extra: &[&str]) -> Mount {
    let mut args = holder_args(mnt);
    args.extend(extra.iter().map(|s| s.to_string()));
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    Mount::start_with(img, mnt, &a)
}

/// The pid in `file` if that process is alive and not a zombie.
pub fn live_pid_in(file: &Path) -> Option<u32> {
    let pid: u32 = fs::read_to_string(file).ok()?.trim().parse().ok()?;
    pid_alive(pid).then_some(pid)
}

/// Whether `pid` exists and is not a zombie (a daemon whose parent is gone may stay one).
pub fn pid_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(st) => !st
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Pids of the keepers serving `socket` (from the pid file the keeper writes).
pub fn keeper_pids(socket: &Path) -> Vec<u32> {
    live_pid_in(&with_suffix(socket, ".pid"))
        .into_iter()
        .collect()
}

/// Kills (by pid) the keepers a test started, when the test ends however it ends. Bound
/// before the mounts, so dropped after them: by then an unmount has usually ended them.
pub struct KeeperReaper(pub PathBuf);

impl Drop for KeeperReaper {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(3);
        while !keeper_pids(&self.0).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        for pid in keeper_pids(&self.0) {
            eprintln!("killing keeper {pid} left behind");
            let _ = sys::kill(pid, libc::SIGKILL);
        }
    }
}

/// The daemon serving `mnt` that the test did not start itself (the successor `strata
/// restart` started), found through the admin socket's pid file. Dropping the guard (also
/// during a panic) unmounts and waits for that daemon (SIGKILL after 10 s).
pub struct AdoptedDaemon {
    pub mnt: PathBuf,
    pid_file: PathBuf,
    /// Where its output goes (the `strata restart` log it inherited).
    pub log: PathBuf,
}

impl AdoptedDaemon {
    pub fn new(mnt: &Path, admin_socket: &Path, log: &Path) -> AdoptedDaemon {
        AdoptedDaemon {
            mnt: mnt.to_path_buf(),
            pid_file: with_suffix(admin_socket, ".pid"),
            log: log.to_path_buf(),
        }
    }

    /// The daemon's pid, if it runs.
    pub fn pid(&self) -> Option<u32> {
        live_pid_in(&self.pid_file)
    }

    pub fn output(&self) -> String {
        fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Clean stop: `umount MNT`, then the daemon must exit (its exit status belongs to
    /// whoever reaps it) without panicking. Returns its output.
    pub fn stop(self) -> String {
        let pid = self.pid();
        let mut ok = false;
        for _ in 0..50 {
            if !is_mounted(&self.mnt) {
                break;
            }
            if umount(&self.mnt, false) {
                ok = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        assert!(
            ok || !is_mounted(&self.mnt),
            "umount {} kept failing",
            self.mnt.display()
        );
        if let Some(pid) = pid {
            let t = Instant::now();
            while pid_alive(pid) {
                assert!(
                    t.elapsed() < STOP_TIMEOUT,
                    "daemon {pid} did not exit within {STOP_TIMEOUT:?} after umount; output:\n{}",
                    self.output()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let out = self.output();
        assert_no_panic("strata mount (adopted daemon, stop)", &out);
        out
    }
}

impl Drop for AdoptedDaemon {
    fn drop(&mut self) {
        let pid = self.pid();
        if is_mounted(&self.mnt) && !umount(&self.mnt, false) {
            umount(&self.mnt, true);
        }
        if let Some(pid) = pid {
            let t = Instant::now();
            while pid_alive(pid) && t.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(20));
            }
            if pid_alive(pid) {
                eprintln!("daemon {pid} still running 10 s after umount: SIGKILL");
                let _ = sys::kill(pid, libc::SIGKILL);
            }
        }
    }
}

pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------
// The workload
// ---------------------------------------------------------------------------------------

/// What the loop saw.
#[derive(Default, Debug)]
pub struct Seen {
    pub errors: Vec<String>,
    pub iterations: u64,
    /// The data file's blocks (block -> tag) as of the last fsync that returned.
    pub durable: BTreeMap<u64, u64>,
}

/// The workload loop, in `dir` (a directory in the mount), reporting through files in `ctl`
/// (a host directory outside the mount): `progress` (iterations so far), and when it ends
/// `slow` (end time and duration of every operation over 1 ms, in µs since the epoch),
/// `durable` (block and tag of the data file as of the last fsync), `errors` (one line each),
/// then `done`. It stops when `ctl/stop` appears or after `max` (a safety net).
///
/// Each iteration writes a block of a data file and reads it back (fsync every 8
/// iterations), writes an open unlinked file (all of it read back and its nlink checked every
/// 5), stores through a shared mapping of a file and reads it back (msync and read(2) every
/// 16), and writes a small file renamed into place and reads it (every 4).
///
/// Run it in a process that never forks the daemon ([`spawn_workload`], or a container's):
/// a thread blocked in a fault on the mapping holds its process's mm lock, so that process
/// could not fork.
pub fn run_workload(dir: &Path, ctl: &Path, max: Duration) {
    let _ = fs::create_dir_all(dir);
    let seen = Mutex::new(Seen::default());
    let slow = Mutex::new(String::new());
    let stop_file = ctl.join("stop");
    let t0 = Instant::now();
    let stop = || stop_file.exists() || t0.elapsed() > max;
    workload_loop(dir, &stop, &slow, &seen, ctl);
    let s = seen.lock().unwrap();
    let _ = fs::write(ctl.join("slow"), slow.lock().unwrap().as_bytes());
    let durable: String = s
        .durable
        .iter()
        .map(|(b, t)| format!("{b} {t}\n"))
        .collect();
    let _ = fs::write(ctl.join("durable"), durable);
    let errors: String = s.errors.iter().map(|e| format!("{e}\n")).collect();
    let _ = fs::write(ctl.join("errors"), errors);
    let _ = fs::write(ctl.join("done"), s.iterations.to_string());
}

/// The body of a test binary's ignored `workload_child` test (what [`spawn_workload`] or a
/// container runs): [`run_workload`] in `$LIVE_WORK_DIR`, reporting to `$LIVE_CTL_DIR`; run
/// directly (neither set), nothing.
pub fn workload_from_env() {
    let (Some(dir), Some(ctl)) = (
        std::env::var_os("LIVE_WORK_DIR"),
        std::env::var_os("LIVE_CTL_DIR"),
    ) else {
        return;
    };
    // A safety net: the test tells it to stop long before.
    run_workload(
        Path::new(&dir),
        Path::new(&ctl),
        Duration::from_secs(30 * 60),
    );
}

/// The test binary again as its `workload_child` test (which calls [`workload_from_env`]),
/// working in `dir`, reporting to `ctl` (created if need be).
pub fn spawn_workload(dir: &Path, ctl: &Path) -> WorkloadProcess {
    fs::create_dir_all(ctl).unwrap();
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["workload_child", "--exact", "--ignored", "--nocapture"])
        .env("LIVE_WORK_DIR", dir)
        .env("LIVE_CTL_DIR", ctl)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    WorkloadProcess {
        child,
        ctl: ctl.to_path_buf(),
    }
}

/// The workload process [`spawn_workload`] started; killed if the test ends before it does.
pub struct WorkloadProcess {
    pub child: Child,
    pub ctl: PathBuf,
}

impl WorkloadProcess {
    /// Tell it to stop; its results once it wrote them (2 minutes at most) and exited
    /// successfully (30 s more at most).
    pub fn finish(mut self) -> Seen {
        let seen =
            stop_workload(&self.ctl, Duration::from_secs(120)).expect("the workload did not stop");
        let st = wait_child(&mut self.child, Duration::from_secs(30));
        assert!(
            st.is_some_and(|s| s.success()),
            "the workload process did not exit cleanly: {st:?}"
        );
        seen
    }
}

impl Drop for WorkloadProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            // Not forever: with no daemon serving, it cannot exit until the keeper (killed
            // by the KeeperReaper, last) lets go of the connection.
            let t = Instant::now();
            while self.child.try_wait().ok().flatten().is_none()
                && t.elapsed() < Duration::from_secs(10)
            {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

fn workload_loop(
    dir: &Path,
    stop: &dyn Fn() -> bool,
    slow: &Mutex<String>,
    seen: &Mutex<Seen>,
    ctl: &Path,
) {
    let err = |what: String| {
        let mut s = seen.lock().unwrap();
        if s.errors.len() < 50 {
            s.errors.push(what);
        }
    };
    let timed = |t: Instant| {
        let us = t.elapsed().as_micros() as u64;
        if us > 1000 {
            slow.lock()
                .unwrap()
                .push_str(&format!("{} {us}\n", now_us()));
        }
    };
    let open_rw = |p: &Path| {
        fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(p)
    };
    let (data, orphan, mapped) = match (
        open_rw(&dir.join("data")),
        open_rw(&dir.join("orphan")),
        open_rw(&dir.join("mapped")),
    ) {
        (Ok(a), Ok(b), Ok(c)) => (a, b, c),
        (a, b, c) => {
            return err(format!(
                "cannot create the loop's files: {:?} {:?} {:?}",
                a.err(),
                b.err(),
                c.err()
            ))
        }
    };
    if let Err(e) = fs::remove_file(dir.join("orphan")) {
        return err(format!("unlink orphan: {e}"));
    }
    if let Err(e) = mapped.set_len(MAP_LEN as u64) {
        return err(format!("ftruncate mapped: {e}"));
    }
    let mut map =
        match sys::Mapping::shared(&mapped, MAP_LEN, libc::PROT_READ | libc::PROT_WRITE, 0) {
            Ok(m) => m,
            Err(e) => return err(format!("mmap: {}", errno_name(e))),
        };
    let mut model: BTreeMap<u64, u64> = BTreeMap::new();
    let mut orphan_model: BTreeMap<u64, u64> = BTreeMap::new();
    let mut map_model = vec![0u8; MAP_LEN];
    let mut i: u64 = 0;
    while !stop() {
        i += 1;
        // The data file: write a block, read it back.
        let blk = (i * 7) % DATA_BLOCKS;
        let buf = pattern(i, BLOCK);
        let t = Instant::now();
        if let Err(e) = data.write_all_at(&buf, blk * BLOCK as u64) {
            err(format!("iteration {i}: write data block {blk}: {e}"));
        }
        timed(t);
        model.insert(blk, i);
        let mut back = vec![0u8; BLOCK];
        let t = Instant::now();
        match data.read_exact_at(&mut back, blk * BLOCK as u64) {
            Ok(()) if back == buf => {}
            Ok(()) => err(format!("iteration {i}: data block {blk} reads back wrong")),
            Err(e) => err(format!("iteration {i}: read data block {blk}: {e}")),
        }
        timed(t);
        if i % 8 == 0 {
            let t = Instant::now();
            match data.sync_all() {
                Ok(()) => seen.lock().unwrap().durable = model.clone(),
                Err(e) => err(format!("iteration {i}: fsync data: {e}")),
            }
            timed(t);
        }
        // The open unlinked file.
        let ob = i % 16;
        let obuf = pattern(i ^ 0xabcd, BLOCK);
        let t = Instant::now();
        if let Err(e) = orphan.write_all_at(&obuf, ob * BLOCK as u64) {
            err(format!("iteration {i}: write unlinked file: {e}"));
        }
        orphan_model.insert(ob, i ^ 0xabcd);
        if i % 5 == 0 {
            // Every block written so far still reads back.
            for (&b, &tag) in &orphan_model {
                let mut v = vec![0u8; BLOCK];
                match orphan.read_exact_at(&mut v, b * BLOCK as u64) {
                    Ok(()) if v == pattern(tag, BLOCK) => {}
                    Ok(()) => err(format!("iteration {i}: unlinked file block {b} wrong")),
                    Err(e) => err(format!("iteration {i}: read unlinked file: {e}")),
                }
            }
            match orphan.metadata() {
                Ok(m) if m.nlink() == 0 => {}
                Ok(m) => err(format!(
                    "iteration {i}: unlinked file has nlink {}",
                    m.nlink()
                )),
                Err(e) => err(format!("iteration {i}: fstat unlinked file: {e}")),
            }
        }
        timed(t);
        // The mmap'd file: store through the mapping, read back through it and, after an
        // msync, through read(2).
        let at = ((i * 131) as usize * 16) % MAP_LEN;
        let mbuf = pattern(i ^ 0x5a5a, 16);
        let t = Instant::now();
        map.write(at, &mbuf);
        map_model[at..at + 16].copy_from_slice(&mbuf);
        if map.read() != map_model {
            err(format!("iteration {i}: mapping reads back wrong"));
        }
        if i % 16 == 0 {
            if let Err(e) = map.msync(libc::MS_SYNC) {
                err(format!("iteration {i}: msync: {}", errno_name(e)));
            }
            let mut v = vec![0u8; MAP_LEN];
            match mapped.read_exact_at(&mut v, 0) {
                Ok(()) if v == map_model => {}
                Ok(()) => err(format!("iteration {i}: mapped file reads back wrong")),
                Err(e) => err(format!("iteration {i}: read mapped file: {e}")),
            }
        }
        timed(t);
        // A small file written and renamed into place, then read.
        if i % 4 == 0 {
            let t = Instant::now();
            let tmp = dir.join(format!("f.tmp{}", i % 3));
            let dst = dir.join(format!("f{}", i % 10));
            let body = pattern(i, 100 + (i % 900) as usize);
            let r = fs::write(&tmp, &body)
                .and_then(|_| fs::rename(&tmp, &dst))
                .and_then(|_| fs::read(&dst));
            match r {
                Ok(v) if v == body => {}
                Ok(_) => err(format!("iteration {i}: {} reads back wrong", dst.display())),
                Err(e) => err(format!("iteration {i}: small file {}: {e}", dst.display())),
            }
            timed(t);
        }
        seen.lock().unwrap().iterations = i;
        report_progress(ctl, i);
    }
    // Last check of the data file against the model, and of the mapping through read(2).
    for (&b, &tag) in &model {
        let mut v = vec![0u8; BLOCK];
        match data.read_exact_at(&mut v, b * BLOCK as u64) {
            Ok(()) if v == pattern(tag, BLOCK) => {}
            Ok(()) => err(format!("at the end: data block {b} wrong")),
            Err(e) => err(format!("at the end: read data block {b}: {e}")),
        }
    }
    match data.sync_all() {
        Ok(()) => seen.lock().unwrap().durable = model,
        Err(e) => err(format!("at the end: fsync data: {e}")),
    }
    if let Err(e) = map.msync(libc::MS_SYNC) {
        err(format!("at the end: msync: {}", errno_name(e)));
    }
    let mut v = vec![0u8; MAP_LEN];
    match mapped.read_exact_at(&mut v, 0) {
        Ok(()) if v == map_model => {}
        Ok(()) => err("at the end: mapped file reads back wrong".into()),
        Err(e) => err(format!("at the end: read mapped file: {e}")),
    }
    if let Err(e) = map.unmap() {
        err(format!("munmap: {}", errno_name(e)));
    }
}

/// Say the workload has done `i` iterations: `ctl/progress`, replaced whole (a rename), so a
/// reader never sees it empty or half written (which read as no progress at all).
pub fn report_progress(ctl: &Path, i: u64) {
    let tmp = ctl.join("progress.tmp");
    if fs::write(&tmp, i.to_string()).is_ok() {
        let _ = fs::rename(&tmp, ctl.join("progress"));
    }
}

/// Iterations the workload reporting to `ctl` has done so far.
pub fn iterations(ctl: &Path) -> u64 {
    fs::read_to_string(ctl.join("progress"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Wait (up to `timeout`) until the workload reporting to `ctl` has done `n` iterations.
pub fn wait_iterations(ctl: &Path, n: u64, timeout: Duration) -> bool {
    let t = Instant::now();
    while iterations(ctl) < n {
        if t.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

/// Tell the workload reporting to `ctl` to stop, and wait (up to `timeout`) for its results.
pub fn stop_workload(ctl: &Path, timeout: Duration) -> Option<Seen> {
    fs::write(ctl.join("stop"), b"").unwrap();
    let t = Instant::now();
    while !ctl.join("done").exists() {
        if t.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(read_seen(ctl))
}

/// What a finished workload wrote to `ctl`.
pub fn read_seen(ctl: &Path) -> Seen {
    let errors = fs::read_to_string(ctl.join("errors"))
        .unwrap_or_else(|_| "the workload wrote no result\n".into());
    Seen {
        errors: errors.lines().map(str::to_string).collect(),
        iterations: iterations(ctl),
        durable: pairs(&fs::read_to_string(ctl.join("durable")).unwrap_or_default())
            .into_iter()
            .collect(),
    }
}

fn pairs(s: &str) -> Vec<(u64, u64)> {
    s.lines()
        .filter_map(|l| {
            let (a, b) = l.split_once(' ')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .collect()
}

/// (end µs since the epoch, duration µs) of the workload's slow operations (written when it
/// finishes).
pub fn slow_ops(ctl: &Path) -> Vec<(u64, u64)> {
    pairs(&fs::read_to_string(ctl.join("slow")).unwrap_or_default())
}

/// Every fsynced block of the workload's data file `data` holds what was written.
pub fn check_durable(data: &Path, seen: &Seen) {
    let f = fs::File::open(data)
        .unwrap_or_else(|e| panic!("open {} after the restarts: {e}", data.display()));
    assert!(!seen.durable.is_empty(), "the workload fsynced nothing");
    for (&b, &tag) in &seen.durable {
        let mut v = vec![0u8; BLOCK];
        f.read_exact_at(&mut v, b * BLOCK as u64).unwrap();
        assert!(
            v == pattern(tag, BLOCK),
            "fsynced block {b} of {} lost after the restarts",
            data.display()
        );
    }
}

pub fn percentile(v: &mut [u64], p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// The pause of each restart: the slowest operation that ended between its start and the
/// next restart's (`end` for the last).
pub fn pauses(slow: &[(u64, u64)], starts: &[u64], end: u64) -> Vec<u64> {
    (0..starts.len())
        .map(|k| {
            let hi = starts.get(k + 1).copied().unwrap_or(end);
            slow.iter()
                .filter(|(e, _)| *e >= starts[k] && *e < hi)
                .map(|(_, d)| *d)
                .max()
                .unwrap_or(0)
        })
        .collect()
}

/// Print "WHO, KIND: N restarts, pause seen by WHO p50 …, max …" and return (p50, max) µs.
pub fn report(who: &str, kind: &str, pauses: &mut [u64]) -> (u64, u64) {
    let p50 = percentile(pauses, 0.5);
    let max = pauses.iter().copied().max().unwrap_or(0);
    println!(
        "live restart, {kind}: {} restarts, pause seen by {who} p50 {:.1} ms, max {:.1} ms",
        pauses.len(),
        p50 as f64 / 1000.0,
        max as f64 / 1000.0
    );
    (p50, max)
}
