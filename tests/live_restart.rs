//! Live restart: a process working in the mount keeps working while the daemon is handed
//! over (SIGUSR2) or killed (SIGKILL) and a new one takes the FUSE connection over from the
//! keeper. Zero errors seen by the process, every fsynced byte there afterwards, fsck clean.
//! Also: the keeper killed, a successor that fails to start, a racing second takeover.
//!
//! Prints the pause the process saw per restart (p50, max): a figure, not an assertion.
//!
//! The process in the mount is testkit::live's workload (writes, reads back and verifies a
//! data file with an fsync every 8 iterations, an open unlinked file, an mmap'd file, and
//! small files renamed into place) in a separate process, this test binary again as
//! `workload_child`: a thread of the test process blocked in a fault on the mapping would
//! hold its mm lock, and the test could not fork the next daemon. Keepers' pids come from
//! their pid file, never from /proc/PID/cmdline, which blocks on a process stuck in a fault
//! on a FUSE mapping.

#![forbid(unsafe_code)]

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use testkit::live::{
    check_durable, holder_args, iterations, keeper_pids, keeper_socket, now_us, pauses, report,
    restarts, slow_ops, spawn_workload, start_with_keeper, wait_iterations, workload_from_env,
    KeeperReaper,
};
use testkit::*;

/// The workload process (started by [`spawn_workload`]; ignored when run directly).
#[test]
#[ignore]
fn workload_child() {
    workload_from_env();
}

#[test]
fn a_process_in_the_mount_survives_clean_and_kill9_restarts() {
    require_root_and_fuse!();
    restart_loop("live-restart", &["--fuse-transport", "dev"]);
}

#[test]
fn the_daemon_keeps_serving_when_the_keeper_dies_and_a_new_keeper_holds_the_connection() {
    require_root_and_fuse!();
    let t = TestDir::new("live-keeper");
    let img = t.mkfs("512M");
    let mnt = t.mountpoint("mnt");
    let sock = keeper_socket(&mnt);
    let _reaper = KeeperReaper(sock.clone());
    let m = start_with_keeper(&img, &mnt, &[]);
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
    let m = start_with_keeper(&img, &mnt2, &[]);
    assert_eq!(fs::read(m.root().join("a")).unwrap(), b"before");
    assert_eq!(
        fs::read(m.root().join("b")).unwrap(),
        b"while the keeper was away"
    );
    m.stop();
    assert_fsck_clean(&img, "after the keeper test");
}

/// `strata mount IMAGE MNT` with the keeper as fd holder and `extra` options, for a start
/// that fails: its output. The mount is still in the table, so the start returns at once:
/// wait (30 s at most) for the error in its output, then kill it.
fn failed_start(img: &Path, mnt: &Path, extra: &[&str]) -> String {
    let mut args = holder_args(mnt);
    args.extend(extra.iter().map(|s| s.to_string()));
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    match Mount::try_start(img, mnt, &a) {
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
    }
}

#[test]
fn a_successor_that_fails_to_start_leaves_the_connection_held_and_the_next_one_serves() {
    require_root_and_fuse!();
    let t = TestDir::new("live-failstart");
    let img = t.mkfs("512M");
    let mnt = t.mountpoint("mnt");
    let _reaper = KeeperReaper(keeper_socket(&mnt));
    let m = start_with_keeper(&img, &mnt, &[]);
    fs::write(m.root().join("a"), b"kept").unwrap();
    let root = m.root();
    m.kill9_leave_mounted();
    // A process waits on the mount while no daemon serves.
    let reader = std::thread::spawn(move || fs::read(root.join("a")));
    // A successor that fails after it took the keeper's lease: its metrics port is taken.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let failed = failed_start(&img, &mnt, &["--metrics-addr", &addr]);
    assert!(
        failed.contains("cannot serve metrics"),
        "expected the metrics port to fail the start; output:\n{failed}"
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
    let refused = failed_start(&other, &mnt, &[]);
    assert!(
        refused.contains("serves another file system") && refused.contains("takeover refused"),
        "a daemon on another image took the connection over; output:\n{refused}"
    );
    assert!(
        !reader.is_finished(),
        "the reader was answered by the wrong image"
    );
    assert!(is_mounted(&mnt), "the refused start lost the mount");
    let m = start_with_keeper(&img, &mnt, &[]);
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
    let m = start_with_keeper(&img, &mnt, &[]);
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
    let mut m = start_with_keeper(&img, &mnt, extra);
    let ctl = t.join("ctl");
    let w = spawn_workload(&m.root().join("work"), &ctl);
    // Let it set up its files before the first restart.
    wait_iterations(&ctl, 20, Duration::from_secs(30));
    let n = restarts();
    let mut starts = Vec::new();
    let mut transports = Vec::new();
    for k in 0..2 * n {
        std::thread::sleep(Duration::from_millis(300));
        let before = iterations(&ctl);
        transports.push(transport_of(&m));
        starts.push(now_us());
        let kind = if k % 2 == 0 {
            m.hand_over();
            "clean hand-over"
        } else {
            m.kill9_leave_mounted();
            "kill -9"
        };
        m = start_with_keeper(&img, &mnt, extra);
        // Wait until the loop has moved on after the restart.
        wait_iterations(&ctl, before + 20, Duration::from_secs(60));
        assert!(
            iterations(&ctl) > before,
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
    let all = pauses(&slow_ops(&ctl), &starts, end);
    let mut clean: Vec<u64> = all.iter().step_by(2).copied().collect();
    let mut killed: Vec<u64> = all.iter().skip(1).step_by(2).copied().collect();
    println!("transport: {}", transport_of(&m));
    report("the process", "clean hand-over (SIGUSR2)", &mut clean);
    report("the process", "kill -9", &mut killed);
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
    check_durable(&m.root().join("work/data"), &seen);
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

/// A writer for [`large_writes_in_flight_when_the_daemon_is_killed_do_not_fail`]: O_DIRECT
/// 1 MiB writes over the first 64 MiB of `WRITER_FILE`, round and round, until killed; each
/// failed write appends a line to `WRITER_ERRORS` (ignored when run directly).
#[test]
#[ignore]
fn direct_writer_child() {
    use std::io::Write;
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let (Some(file), Some(errors)) = (
        std::env::var_os("WRITER_FILE"),
        std::env::var_os("WRITER_ERRORS"),
    ) else {
        return;
    };
    let f = fs::OpenOptions::new()
        .create(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&file)
        .expect("open the file to write");
    const MIB: usize = 1 << 20;
    let mut mem = vec![0u8; 2 * MIB];
    let at = mem.as_ptr().align_offset(4096);
    let buf = &mut mem[at..at + MIB];
    for i in 0u64.. {
        buf[..8].copy_from_slice(&i.to_le_bytes());
        if let Err(e) = f.write_all_at(buf, (i % 64) * MIB as u64) {
            let mut log = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&errors)
                .expect("error log");
            let _ = writeln!(log, "write {i}: {e}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The kernel copies a request into the daemon's memory (over io_uring into a ring buffer,
/// from the queue thread; over /dev/fuse into the buffer of its read(2)); for a daemon being
/// killed that copy failed wherever the page was not mapped in the daemon yet (every page,
/// in a successor or a fresh buffer), and the caller's write failed (EINTR over io_uring,
/// EIO over /dev/fuse). Writers of 1 MiB (the whole payload) keep writing while daemons that
/// just took over are killed, again and again: no write may fail.
#[test]
fn large_writes_in_flight_when_the_daemon_is_killed_do_not_fail() {
    require_root_and_fuse!();
    let t = TestDir::new("live-kill-writes");
    let img = t.mkfs("1G");
    let mnt = t.mountpoint("mnt");
    let _reaper = KeeperReaper(keeper_socket(&mnt));
    let extra: &[&str] = &[];
    let mut m = start_with_keeper(&img, &mnt, extra);
    let errors = t.join("writer-errors");
    let mut writers: Vec<std::process::Child> = (0..3)
        .map(|k| {
            std::process::Command::new(std::env::current_exe().unwrap())
                .args(["direct_writer_child", "--exact", "--ignored", "--nocapture"])
                .env("WRITER_FILE", m.root().join(format!("w{k}")))
                .env("WRITER_ERRORS", &errors)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    struct Reap<'a>(&'a mut Vec<std::process::Child>);
    impl Drop for Reap<'_> {
        fn drop(&mut self) {
            for c in self.0.iter_mut() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
    let reap = Reap(&mut writers);
    std::thread::sleep(Duration::from_millis(500));
    let transport = transport_of(&m);
    let kills = 12;
    for k in 0..kills {
        // Soon after the takeover: the successor has served only a few writes.
        std::thread::sleep(Duration::from_millis(if k % 2 == 0 { 40 } else { 250 }));
        if k % 2 == 1 {
            // A busy host: the daemon's threads at the lowest priority and every CPU busy,
            // so a queue thread woken for a request is often killed before it ran.
            if let Some(pid) = m.pid() {
                for task in fs::read_dir(format!("/proc/{pid}/task"))
                    .into_iter()
                    .flatten()
                {
                    let tid = task.unwrap().file_name();
                    let _ = std::process::Command::new("renice")
                        .args(["-n", "19", "-p"])
                        .arg(&tid)
                        .stdout(std::process::Stdio::null())
                        .stderr(std::process::Stdio::null())
                        .status();
                }
            }
            let busy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
            let hogs: Vec<_> = (0..4)
                .map(|_| {
                    let busy = busy.clone();
                    std::thread::spawn(move || {
                        while busy.load(std::sync::atomic::Ordering::Relaxed) {
                            std::hint::spin_loop();
                        }
                    })
                })
                .collect();
            std::thread::sleep(Duration::from_millis(200));
            m.kill9_leave_mounted();
            busy.store(false, std::sync::atomic::Ordering::Relaxed);
            for h in hogs {
                let _ = h.join();
            }
        } else {
            m.kill9_leave_mounted();
        }
        m = start_with_keeper(&img, &mnt, extra);
    }
    std::thread::sleep(Duration::from_millis(500));
    drop(reap);
    let seen = fs::read_to_string(&errors).unwrap_or_default();
    let written: u64 = (0..3)
        .map(|k| fs::metadata(m.root().join(format!("w{k}"))).map_or(0, |m| m.len()))
        .sum();
    println!("transport: {transport}; {kills} kill -9 restarts; files {written} bytes");
    assert!(
        seen.is_empty(),
        "writes failed across kill -9 restarts (transport {transport}):\n{seen}"
    );
    let out = m.stop();
    assert!(!out.contains("panicked"));
    assert_fsck_clean(&img, "after the kill -9 restarts");
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
