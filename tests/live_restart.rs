//! Live restart: a process working in the mount keeps working while the daemon is handed
//! over (SIGUSR2) or killed (SIGKILL) and a new one takes the FUSE connection over from the
//! keeper. Zero errors seen by the process, every fsynced byte there afterwards, fsck clean.
//! Also: the keeper killed, a successor that fails to start, a racing second takeover.
//!
//! Prints the pause the process saw per restart (p50, max): a figure, not an assertion.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use testkit::*;

const BLOCK: usize = 4096;
/// Blocks of the data file the loop cycles over.
const DATA_BLOCKS: u64 = 256;
const MAP_LEN: usize = 64 * 1024;

/// Restarts of each kind (the issue asks for 10 and 10).
fn restarts() -> usize {
    std::env::var("STRATA_LIVE_RESTARTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
}

/// `strata mount` options with the keeper as fd holder; the keeper's socket beside the
/// mount point.
fn holder_args(mnt: &Path) -> Vec<String> {
    // The transport is STRATA_FUSE_TRANSPORT's (testkit passes it on; unset, the daemon's
    // default: io_uring where the kernel has it), unless a test names one.
    vec![
        "--fd-holder".into(),
        "keeper".into(),
        "--keeper-socket".into(),
        keeper_socket(mnt).display().to_string(),
    ]
}

fn keeper_socket(mnt: &Path) -> PathBuf {
    mnt.with_extension("keeper.sock")
}

fn start(img: &Path, mnt: &Path, extra: &[&str]) -> Mount {
    let mut args = holder_args(mnt);
    args.extend(extra.iter().map(|s| s.to_string()));
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    Mount::start_with(img, mnt, &a)
}

/// Pids of the keepers serving `socket` (from the pid file the keeper writes; never by
/// reading other processes' command lines, which blocks on a process stuck in a fault on
/// a FUSE mapping).
fn keeper_pids(socket: &Path) -> Vec<u32> {
    let mut pidf = socket.as_os_str().to_owned();
    pidf.push(".pid");
    let Ok(s) = fs::read_to_string(PathBuf::from(pidf)) else {
        return Vec::new();
    };
    let Ok(pid) = s.trim().parse::<u32>() else {
        return Vec::new();
    };
    // Alive and not a zombie.
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(st)
            if !st
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z') =>
        {
            vec![pid]
        }
        _ => Vec::new(),
    }
}

/// Kills (by pid) the keepers a test started, when the test ends however it ends. Bound
/// before the mounts, so dropped after them: by then an unmount has usually ended them.
struct KeeperReaper(PathBuf);

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

fn pattern(tag: u64, len: usize) -> Vec<u8> {
    let mut x = tag.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// What the loop saw.
#[derive(Default)]
struct Seen {
    errors: Vec<String>,
    iterations: u64,
    /// The data file's blocks (block -> tag) as of the last fsync that returned.
    durable: BTreeMap<u64, u64>,
}

/// The process in the mount: writes, reads back and verifies a data file (fsync every 8
/// iterations), an open unlinked file, an mmap'd file, and small files renamed into
/// place, until told to stop. A separate process (this test binary again, running
/// `workload_child`): a thread of the test process blocked in a fault on the mapping would
/// hold its mm lock, and the test could not fork the next daemon. It reports through files
/// in `ctl` (a host directory): `progress` (iterations), `slow` (end time and duration of
/// every operation over 1 ms, in µs), `errors`, `durable` (block and tag of the data
/// file as of the last fsync); `stop` tells it to finish.
struct Workload {
    ctl: PathBuf,
    child: std::process::Child,
}

impl Workload {
    fn start(dir: &Path, ctl: &Path) -> Workload {
        fs::create_dir_all(ctl).unwrap();
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["workload_child", "--exact", "--ignored", "--nocapture"])
            .env("LIVE_WORK_DIR", dir)
            .env("LIVE_CTL_DIR", ctl)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let w = Workload {
            ctl: ctl.to_path_buf(),
            child,
        };
        // Let it set up its files before the first restart.
        let t = Instant::now();
        while w.iterations() < 20 && t.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(10));
        }
        w
    }

    fn iterations(&self) -> u64 {
        fs::read_to_string(self.ctl.join("progress"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }
}

/// (end µs since the epoch, duration µs) of the workload's slow operations (written when it
/// finishes).
fn slow_ops(ctl: &Path) -> Vec<(u64, u64)> {
    {
        fs::read_to_string(ctl.join("slow"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (a, b) = l.split_once(' ')?;
                Some((a.parse().ok()?, b.parse().ok()?))
            })
            .collect()
    }
}

impl Workload {
    fn finish(mut self) -> Seen {
        fs::write(self.ctl.join("stop"), b"").unwrap();
        let t = Instant::now();
        while self.child.try_wait().unwrap().is_none() {
            assert!(
                t.elapsed() < Duration::from_secs(120),
                "the workload did not stop"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let errors = fs::read_to_string(self.ctl.join("errors"))
            .unwrap_or_else(|_| "the workload wrote no result\n".into());
        let durable = fs::read_to_string(self.ctl.join("durable")).unwrap_or_default();
        Seen {
            errors: errors.lines().map(str::to_string).collect(),
            iterations: self.iterations(),
            durable: durable
                .lines()
                .filter_map(|l| {
                    let (a, b) = l.split_once(' ')?;
                    Some((a.parse().ok()?, b.parse().ok()?))
                })
                .collect(),
        }
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

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The workload process (started by [`Workload::start`]; ignored when run directly).
#[test]
#[ignore]
fn workload_child() {
    let (Some(dir), Some(ctl)) = (
        std::env::var_os("LIVE_WORK_DIR"),
        std::env::var_os("LIVE_CTL_DIR"),
    ) else {
        return;
    };
    let (dir, ctl) = (PathBuf::from(dir), PathBuf::from(ctl));
    let _ = fs::create_dir_all(&dir);
    let seen = Mutex::new(Seen::default());
    let slow = Mutex::new(String::new());
    let stop_file = ctl.join("stop");
    let stop = || stop_file.exists();
    run_workload(&dir, &stop, &slow, &seen, &ctl);
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
}

fn run_workload(
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
        _ => return err("cannot create the loop's files".into()),
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
                Ok(m) if std::os::unix::fs::MetadataExt::nlink(&m) == 0 => {}
                Ok(m) => err(format!(
                    "iteration {i}: unlinked file has nlink {}",
                    std::os::unix::fs::MetadataExt::nlink(&m)
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
        let _ = fs::write(ctl.join("progress"), i.to_string());
    }
    // Last check of the data file against the model.
    for (&b, &tag) in &model {
        let mut v = vec![0u8; BLOCK];
        match data.read_exact_at(&mut v, b * BLOCK as u64) {
            Ok(()) if v == pattern(tag, BLOCK) => {}
            Ok(()) => err(format!("at the end: data block {b} wrong")),
            Err(e) => err(format!("at the end: read data block {b}: {e}")),
        }
    }
    let _ = data.sync_all();
    seen.lock().unwrap().durable = model;
    if let Err(e) = map.unmap() {
        err(format!("munmap: {}", errno_name(e)));
    }
}

fn percentile(v: &mut [u64], p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Wait until the loop has moved on after a restart.
fn wait_progress(w: &Workload, before: u64) {
    let t = Instant::now();
    while w.iterations() < before + 20 && t.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The pause of each restart: the slowest operation that ended between its start and the
/// next restart's.
fn pauses(slow: &[(u64, u64)], starts: &[u64], end: u64) -> Vec<u64> {
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

fn report(kind: &str, pauses: &mut [u64]) {
    let p50 = percentile(pauses, 0.5);
    let max = pauses.iter().copied().max().unwrap_or(0);
    println!(
        "live restart, {kind}: {} restarts, pause seen by the process p50 {:.1} ms, max {:.1} ms",
        pauses.len(),
        p50 as f64 / 1000.0,
        max as f64 / 1000.0
    );
}

#[test]
fn a_process_in_the_mount_survives_clean_and_kill9_restarts() {
    require_root_and_fuse!();
    restart_loop("live-restart", &[]);
}

#[test]
fn the_daemon_keeps_serving_when_the_keeper_dies_and_a_new_keeper_holds_the_connection() {
    require_root_and_fuse!();
    let t = TestDir::new("live-keeper");
    let img = t.mkfs("512M");
    let mnt = t.mountpoint("mnt");
    let sock = keeper_socket(&mnt);
    let _reaper = KeeperReaper(sock.clone());
    let m = start(&img, &mnt, &[]);
    fs::write(m.root().join("a"), b"before").unwrap();
    let first = keeper_pids(&sock);
    assert_eq!(first.len(), 1, "one keeper expected: {first:?}");
    sys::kill(first[0], libc::SIGKILL).unwrap();
    // The daemon keeps serving, and starts another keeper.
    fs::write(m.root().join("b"), b"while the keeper was away").unwrap();
    let t0 = Instant::now();
    let second = loop {
        let p = keeper_pids(&sock);
        if !p.is_empty() && !p.contains(&first[0]) {
            break p;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no new keeper; daemon output:\n{}",
            m.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(second.len(), 1);
    // Give it the connection's descriptors, then kill the daemon: the new keeper holds them.
    std::thread::sleep(Duration::from_millis(300));
    let mnt2 = m.mnt.clone();
    m.kill9_leave_mounted();
    let m = start(&img, &mnt2, &[]);
    assert_eq!(fs::read(m.root().join("a")).unwrap(), b"before");
    assert_eq!(
        fs::read(m.root().join("b")).unwrap(),
        b"while the keeper was away"
    );
    m.stop();
    assert_fsck_clean(&img, "after the keeper test");
}

#[test]
fn a_successor_that_fails_to_start_leaves_the_connection_held_and_the_next_one_serves() {
    require_root_and_fuse!();
    let t = TestDir::new("live-failstart");
    let img = t.mkfs("512M");
    let mnt = t.mountpoint("mnt");
    let _reaper = KeeperReaper(keeper_socket(&mnt));
    let m = start(&img, &mnt, &[]);
    fs::write(m.root().join("a"), b"kept").unwrap();
    let root = m.root();
    m.kill9_leave_mounted();
    // A process waits on the mount while no daemon serves.
    let reader = std::thread::spawn(move || fs::read(root.join("a")));
    // A successor that fails after it took the keeper's lease: its metrics port is taken.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let mut args = holder_args(&mnt);
    args.extend(["--metrics-addr".to_string(), addr]);
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    // The mount is still in the table, so `try_start` returns at once: wait for the exit.
    let f = Mount::try_start(&img, &mnt, &a);
    let failed = match f {
        Err(f) => f,
        Ok(m) => {
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(30) && !m.stderr().contains("error:") {
                std::thread::sleep(Duration::from_millis(20));
            }
            let out = m.stderr();
            m.kill9_leave_mounted();
            MountFailure {
                code: 1,
                stderr: out,
            }
        }
    };
    assert!(
        failed.stderr.contains("cannot serve metrics"),
        "expected the metrics port to fail the start; output:\n{}",
        failed.stderr
    );
    assert!(
        !reader.is_finished(),
        "the reader did not wait for a daemon"
    );
    assert!(is_mounted(&mnt), "the failed start lost the mount");
    drop(busy);
    // A successor on another image is refused: the kernel's inodes are the first image's.
    let other = t.join("other.img");
    mkfs_at(&other, "512M");
    let a: Vec<&str> = holder_args(&mnt)
        .leak()
        .iter()
        .map(String::as_str)
        .collect();
    let refused = match Mount::try_start(&other, &mnt, &a) {
        Err(f) => f.stderr,
        Ok(m) => {
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(30) && !m.stderr().contains("error:") {
                std::thread::sleep(Duration::from_millis(20));
            }
            let out = m.stderr();
            m.kill9_leave_mounted();
            out
        }
    };
    assert!(
        refused.contains("serves another file system") && refused.contains("takeover refused"),
        "a daemon on another image took the connection over; output:\n{refused}"
    );
    assert!(
        !reader.is_finished(),
        "the reader was answered by the wrong image"
    );
    assert!(is_mounted(&mnt), "the refused start lost the mount");
    let m = start(&img, &mnt, &[]);
    let got = reader.join().unwrap();
    assert_eq!(got.unwrap(), b"kept");
    m.stop();
    assert_fsck_clean(&img, "after a failed start");
    assert_fsck_clean(&other, "the other image, after its refused start");
}

#[test]
fn a_second_takeover_racing_the_first_is_refused() {
    require_root_and_fuse!();
    let t = TestDir::new("live-race");
    let img = t.mkfs("512M");
    let mnt = t.mountpoint("mnt");
    let _reaper = KeeperReaper(keeper_socket(&mnt));
    let m = start(&img, &mnt, &[]);
    fs::write(m.root().join("a"), b"one").unwrap();
    // A second daemon for the same mount while the first holds the keeper's lease.
    let mut args = holder_args(&mnt);
    args.extend([
        "--admin-socket".to_string(),
        mnt.with_extension("admin2.sock").display().to_string(),
    ]);
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = strata(
        &[
            &["mount", img.to_str().unwrap(), mnt.to_str().unwrap()][..],
            &a[..],
        ]
        .concat(),
    );
    assert_ne!(out.code, 0, "a second daemon started: {}", out.stderr);
    assert!(
        out.stderr.contains("takeover refused"),
        "expected a refusal; got:\n{}",
        out.stderr
    );
    // The first one still serves.
    assert_eq!(fs::read(m.root().join("a")).unwrap(), b"one");
    m.stop();
}

/// The FUSE transport a daemon said it serves on ("io_uring", "/dev/fuse", ...), from its
/// log: the last "FUSE transport:" line (waiting up to 5 s for one).
fn transport_of(m: &Mount) -> String {
    let t = Instant::now();
    loop {
        let said = m
            .stderr()
            .lines()
            .filter_map(|l| l.split_once("FUSE transport: ").map(|(_, t)| t.to_string()))
            .next_back();
        match said {
            Some(s) => return s,
            None if t.elapsed() < Duration::from_secs(5) => {
                std::thread::sleep(Duration::from_millis(10))
            }
            None => return "unknown (no \"FUSE transport:\" line in its log)".into(),
        }
    }
}

/// The loop: a process works in the mount while the daemon is handed over and killed with -9
/// (alternately, [`restarts`] of each) and a successor takes over each time; `extra`: more
/// `strata mount` options. Prints the transport of each daemon and the pauses per kind.
fn restart_loop(name: &str, extra: &[&str]) {
    let t = TestDir::new(name);
    let img = t.mkfs("1G");
    let mnt = t.mountpoint("mnt");
    let _reaper = KeeperReaper(keeper_socket(&mnt));
    let mut m = start(&img, &mnt, extra);
    let w = Workload::start(&m.root().join("work"), &t.join("ctl"));
    let n = restarts();
    let mut starts = Vec::new();
    let mut transports = Vec::new();
    for k in 0..2 * n {
        std::thread::sleep(Duration::from_millis(300));
        let before = w.iterations();
        transports.push(transport_of(&m));
        starts.push(now_us());
        let kind = if k % 2 == 0 {
            m.hand_over();
            "clean hand-over"
        } else {
            m.kill9_leave_mounted();
            "kill -9"
        };
        m = start(&img, &mnt, extra);
        wait_progress(&w, before);
        assert!(
            w.iterations() > before,
            "the loop made no progress after restart {k}; daemon output:\n{}",
            m.stderr()
        );
        println!(
            "restart {k} ({kind}): from a daemon on {}, to one on {}",
            transports[k],
            transport_of(&m)
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    let end = now_us();
    let seen = w.finish();
    let all = pauses(&slow_ops(&t.join("ctl")), &starts, end);
    let mut clean: Vec<u64> = all.iter().step_by(2).copied().collect();
    let mut killed: Vec<u64> = all.iter().skip(1).step_by(2).copied().collect();
    println!("transport: {}", transport_of(&m));
    report("clean hand-over (SIGUSR2)", &mut clean);
    report("kill -9", &mut killed);
    println!("loop iterations: {}", seen.iterations);
    assert!(
        seen.errors.is_empty(),
        "the process saw {} error(s):\n{}",
        seen.errors.len(),
        seen.errors.join("\n")
    );
    // The operator can tell: the stats view and the metrics say the connection was taken over.
    let stats = m.cli_ok(&["stats"]);
    assert!(
        stats.contains("connection taken over"),
        "strata stats after a takeover:\n{stats}"
    );
    let json = m.cli_ok(&["stats", "--json"]);
    assert!(json.contains("\"fuse_taken_over\": true"), "{json}");
    // Every fsynced byte is there after a clean stop and a fresh mount.
    let out = m.stop();
    assert!(!out.contains("panicked"));
    assert_fsck_clean(&img, "after live restarts");
    let m = Mount::start(&img, &mnt);
    let data = fs::File::open(m.root().join("work/data")).unwrap();
    for (&b, &tag) in &seen.durable {
        let mut v = vec![0u8; BLOCK];
        data.read_exact_at(&mut v, b * BLOCK as u64).unwrap();
        assert!(
            v == pattern(tag, BLOCK),
            "fsynced block {b} lost after the restarts"
        );
    }
    drop(data);
    m.stop();
    assert_fsck_clean(&img, "after the final check");
}

/// The same loop over FUSE over io_uring whatever STRATA_FUSE_TRANSPORT says: requests the
/// dead daemon left in its ring entries are served by the successor from the held ring
/// buffers. Skipped where the kernel has no FUSE over io_uring.
#[test]
fn a_process_in_the_mount_survives_restarts_over_io_uring() {
    require_root_and_fuse!();
    if let Err(why) = strata_fusefront_probe() {
        eprintln!("skipped: {why}");
        return;
    }
    restart_loop("live-restart-uring", &["--fuse-transport", "io-uring"]);
}

/// Whether this kernel offers FUSE over io_uring (the fuse module's enable_uring).
fn strata_fusefront_probe() -> Result<(), String> {
    match fs::read_to_string("/sys/module/fuse/parameters/enable_uring") {
        Ok(_) => Ok(()),
        Err(e) => Err(format!(
            "no FUSE over io_uring here (/sys/module/fuse/parameters/enable_uring: {e})"
        )),
    }
}
