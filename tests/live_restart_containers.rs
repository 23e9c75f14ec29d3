//! Live restart with real containers (issue 15's headline test), and `strata restart`.
//!
//! `a_container_survives_clean_and_kill9_restarts`: a private containerd 1.7 (Strata's
//! snapshotter and diff service registered as proxy plugins) imports an image made in
//! the test — this test binary and the libraries it links — and `ctr run`s a container on
//! Strata (started with the keeper as fd holder) whose process is this binary's
//! `workload_child`: a loop of writes, fsyncs, reads and verification in its root file
//! system, with an open unlinked file and an mmap'd file, reporting through a bind-mounted
//! host directory outside the mount. Then 10 clean hand-overs (SIGUSR2) and 10 kill -9, each
//! followed by a new daemon taking the connection over; after each, the loop goes on, the
//! task is running and `ctr snapshots --snapshotter strata ls` works. Asserted: zero errors
//! seen in the container, the task exited cleanly, fsck clean, and every fsynced byte of the
//! container's data file is in its layer after a fresh mount. Printed: the pause the
//! container saw per kind (p50, max), a figure, not an assertion.
//!
//! `strata_restart_hands_over_while_a_process_works_in_the_mount`: the CLI command
//! (`strata restart --admin-socket …`), twice, exits 0 and says which daemon handed over to
//! which, the mount keeps serving, the admin API (`strata stats`, `strata layer ls`) answers
//! from the successor, a process working in the mount sees no error, every fsynced byte is
//! there after a fresh mount, fsck clean. The first time, the daemon's parent (the test)
//! reaps it only after `strata restart` returns, so it is a zombie meanwhile (as under a
//! parent or a pid 1 that does not reap; `strata restart` used to wait for its /proc entry
//! to vanish, and failed after 60 s with the mount left without a daemon); the second time
//! the daemon is the successor the first `strata restart` started, whose parent is gone.
//!
//! The workload runs as a separate process (a container's, or this binary again): a process
//! blocked in a fault on a FUSE mapping must not be the one that forks the next daemon.

#![forbid(unsafe_code)]

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::oci_image;
use testkit::containerd::{Binaries, Config, Containerd, Containerd17};
use testkit::live::{
    check_durable, iterations, keeper_socket, now_us, pauses, report, restarts, slow_ops,
    spawn_workload, start_with_keeper, stop_workload, wait_iterations, workload_from_env,
    AdoptedDaemon, KeeperReaper,
};
use testkit::*;

const IMAGE: &str = "docker.io/library/strata-live:1";
const CONTAINER: &str = "live1";

/// The workload (started in a container, or by [`spawn_workload`]; ignored when run
/// directly): [`workload_from_env`].
#[test]
#[ignore]
fn workload_child() {
    workload_from_env();
}

/// containerd 1.7 (Strata's snapshotter and diff service, as deployed), or why it does not
/// run here.
fn containerd_or_skip() -> Option<Binaries> {
    testkit::containerd::or_skip(Containerd17::find())
}

/// An image whose one layer holds this test binary as /bin/live (its default command runs
/// `workload_child`) and the shared libraries it links, at the paths `ldd` gives.
fn live_image() -> Vec<u8> {
    let exe = std::env::current_exe().unwrap();
    let ldd = run_with_timeout(Command::new("ldd").arg(&exe), Duration::from_secs(60));
    assert_eq!(ldd.code, 0, "ldd {}: {}", exe.display(), ldd.stderr);
    let libs: Vec<&str> = ldd
        .stdout
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .collect();
    assert!(
        libs.iter().any(|l| l.contains("ld-linux")),
        "no dynamic loader in ldd's output:\n{}",
        ldd.stdout
    );
    let mut l = oci_image::LayerTar::new();
    let mut dirs = std::collections::BTreeSet::new();
    for d in ["bin", "dev", "proc", "sys", "tmp", "etc", "ctl", "work"] {
        l.dir(d);
        dirs.insert(d.to_string());
    }
    l.file("bin/live", &fs::read(&exe).unwrap(), 0o755);
    for lib in libs {
        let rel = lib.trim_start_matches('/');
        let mut acc = String::new();
        let parts: Vec<&str> = rel.split('/').collect();
        for p in &parts[..parts.len() - 1] {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(p);
            if dirs.insert(acc.clone()) {
                l.dir(&acc);
            }
        }
        // The library's bytes (ldd names symlinks; fs::read follows them).
        l.file(rel, &fs::read(lib).unwrap(), 0o755);
    }
    oci_image::archive_with_cmd(
        &[l.finish()],
        IMAGE,
        usize::MAX,
        &[
            "/bin/live",
            "workload_child",
            "--exact",
            "--ignored",
            "--nocapture",
        ],
    )
}

/// The daemon's extra options: its diff service reads blobs from this containerd.
fn daemon_args(cdir: &Path) -> Vec<String> {
    vec![
        "--containerd-address".into(),
        cdir.join("containerd.sock").display().to_string(),
    ]
}

/// The task's status in `ctr task ls` (RUNNING, STOPPED, …), if it has one.
fn task_status(c: &Containerd, id: &str) -> Option<String> {
    let (ok, out, _) = c.ctr(&["task", "ls"]);
    if !ok {
        return None;
    }
    out.lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.first() == Some(&id))
        .and_then(|f| f.last().map(|s| s.to_string()))
}

/// Kills and deletes the container when the test ends however it ends (bound after the
/// containerd and the mount, so dropped before them).
struct ContainerGuard<'a> {
    c: &'a Containerd,
    id: &'static str,
}

impl Drop for ContainerGuard<'_> {
    fn drop(&mut self) {
        if task_status(self.c, self.id).is_some() {
            let _ = self.c.ctr(&["task", "kill", "-s", "SIGKILL", self.id]);
            let t = Instant::now();
            while task_status(self.c, self.id).as_deref() == Some("RUNNING")
                && t.elapsed() < Duration::from_secs(20)
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.c.ctr(&["task", "delete", "-f", self.id]);
        }
        let _ = self.c.ctr(&["containers", "delete", self.id]);
    }
}

/// `ctr snapshots --snapshotter strata ls` until it works and lists `key` (containerd
/// reconnects to the snapshotter by itself); how long that took.
fn snapshotter_answers(c: &Containerd, key: &str) -> Duration {
    let t = Instant::now();
    loop {
        let (ok, out, err) = c.ctr(&["snapshots", "--snapshotter", "strata", "ls"]);
        if ok
            && out
                .lines()
                .any(|l| l.split_whitespace().next() == Some(key))
        {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "containerd cannot list Strata's snapshots 30 s after a restart (ok={ok}):\n{out}{err}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The Strata layer `ctr snapshots mounts` binds for `key` (`<mnt>/<layer>`).
fn layer_of(c: &Containerd, key: &str, mnt: &Path) -> String {
    let out = c.ok(&["snapshots", "--snapshotter", "strata", "mounts", "/x", key]);
    let src = out
        .split_whitespace()
        .find(|w| w.starts_with(mnt.to_str().unwrap()))
        .unwrap_or_else(|| panic!("no mount source under {} in {out:?}", mnt.display()));
    src.rsplit('/').next().unwrap().to_string()
}

#[test]
fn a_container_survives_clean_and_kill9_restarts() {
    let Some(bin) = containerd_or_skip() else {
        return;
    };
    let t = TestDir::new("live-ctr");
    let img = t.mkfs("4G");
    let mnt = t.mountpoint("mnt");
    let cdir = t.join("ctrd");
    let ctl = t.plain_dir("ctl");
    let task_log = t.join("task.log");
    let _reaper = KeeperReaper(keeper_socket(&mnt));
    let extra = daemon_args(&cdir);
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let mut m = start_with_keeper(&img, &mnt, &extra);
    let c = Containerd::start(
        &bin,
        &cdir,
        &Config {
            snapshotter: Some(m.snapshotter_socket()),
            differ: Some(m.diff_socket()),
            ..Default::default()
        },
    );
    let archive = t.join("image.tar");
    fs::write(&archive, live_image()).unwrap();
    c.import("strata", &archive);
    let task_tail = || {
        let s = fs::read_to_string(&task_log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    };
    let _container = ContainerGuard {
        c: &c,
        id: CONTAINER,
    };
    c.ok(&[
        "run",
        "--detach",
        "--snapshotter",
        "strata",
        "--log-uri",
        &format!("file://{}", task_log.display()),
        "--env",
        "LIVE_WORK_DIR=/work",
        "--env",
        "LIVE_CTL_DIR=/ctl",
        "--mount",
        &format!("type=bind,src={},dst=/ctl,options=rbind:rw", ctl.display()),
        IMAGE,
        CONTAINER,
    ]);
    assert!(
        wait_iterations(&ctl, 20, Duration::from_secs(60)),
        "the container's loop did not start; task {:?}, its output:\n{}",
        task_status(&c, CONTAINER),
        task_tail()
    );
    let layer = layer_of(&c, CONTAINER, &mnt);
    // The loop works in the container's layer, on Strata.
    assert!(
        mnt.join(&layer).join("work/data").is_file(),
        "no work/data in layer {layer}"
    );

    let n = restarts();
    let mut starts = Vec::new();
    let mut reconnects = Vec::new();
    for k in 0..2 * n {
        std::thread::sleep(Duration::from_millis(300));
        let before = iterations(&ctl);
        starts.push(now_us());
        if k < n {
            m.hand_over();
        } else {
            m.kill9_leave_mounted();
        }
        m = start_with_keeper(&img, &mnt, &extra);
        assert!(
            wait_iterations(&ctl, before + 20, Duration::from_secs(60)),
            "the container's loop made no progress after restart {k} ({} iterations); task {:?}; daemon output:\n{}\ntask output:\n{}",
            iterations(&ctl),
            task_status(&c, CONTAINER),
            m.stderr(),
            task_tail()
        );
        assert_eq!(
            task_status(&c, CONTAINER).as_deref(),
            Some("RUNNING"),
            "after restart {k}"
        );
        reconnects.push(snapshotter_answers(&c, CONTAINER));
    }
    std::thread::sleep(Duration::from_millis(300));
    let end = now_us();
    let seen = stop_workload(&ctl, Duration::from_secs(120)).unwrap_or_else(|| {
        panic!(
            "the container's loop did not finish; task output:\n{}",
            task_tail()
        )
    });
    let t0 = Instant::now();
    while task_status(&c, CONTAINER).as_deref() != Some("STOPPED") {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the task did not stop: {:?}",
            task_status(&c, CONTAINER)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let task_out = fs::read_to_string(&task_log).unwrap_or_default();
    let all = pauses(&slow_ops(&ctl), &starts, end);
    println!(
        "pause per restart (ms): {:?}",
        all.iter().map(|us| us / 1000).collect::<Vec<_>>()
    );
    let (clean, killed) = all.split_at(n);
    report(
        "the container",
        "clean hand-over (SIGUSR2)",
        &mut clean.to_vec(),
    );
    report("the container", "kill -9", &mut killed.to_vec());
    let rmax = reconnects.iter().max().copied().unwrap_or_default();
    println!(
        "containerd listed Strata's snapshots again at most {:.0} ms after a new daemon started; container loop iterations: {}",
        rmax.as_secs_f64() * 1000.0,
        seen.iterations
    );
    assert!(
        seen.errors.is_empty(),
        "the container saw {} error(s):\n{}",
        seen.errors.len(),
        seen.errors.join("\n")
    );
    assert!(
        task_out.contains("test result: ok. 1 passed"),
        "the container's process did not end cleanly; its output:\n{task_out}"
    );
    c.ok(&["task", "delete", CONTAINER]);

    // The container's snapshot stays (the container is not deleted yet). Stop Strata, fsck,
    // and find every fsynced byte in the container's layer after a fresh mount.
    let out = m.stop();
    assert_no_panic("strata mount", &out);
    assert_fsck_clean(&img, "after the container's live restarts");
    let m = Mount::start_with(&img, &mnt, &extra);
    check_durable(&mnt.join(&layer).join("work/data"), &seen);
    // containerd talks to this daemon too: it removes the container and its snapshot.
    snapshotter_answers(&c, CONTAINER);
    c.ok(&["containers", "delete", CONTAINER]);
    let (ok, snaps, err) = c.ctr(&["snapshots", "--snapshotter", "strata", "ls"]);
    assert!(ok, "{err}");
    assert!(
        !snaps
            .lines()
            .any(|l| l.split_whitespace().next() == Some(CONTAINER)),
        "the container's snapshot is still there:\n{snaps}"
    );
    m.stop();
    assert_fsck_clean(&img, "after the final check");
}

/// `strata restart --admin-socket SOCK` to completion (2 minutes at most), its stdout in
/// `out` and its stderr — which the successor it starts inherits, with its stdout — in
/// `log`; then reaps `m`'s daemon (10 s at most). Meanwhile that daemon, once exited, stays
/// a zombie, as under a parent (or a pid 1) that does not reap: `strata restart` must not
/// wait for it to vanish. Its exit code, and the exit code of `m`'s daemon.
fn strata_restart(
    sock: &Path,
    out: &Path,
    log: &Path,
    m: Option<&mut Mount>,
) -> (i32, Option<i32>) {
    let o = fs::File::create(out).unwrap();
    let e = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut child = Command::new(strata_bin())
        .arg("restart")
        .arg("--admin-socket")
        .arg(sock)
        .stdin(Stdio::null())
        .stdout(Stdio::from(o))
        .stderr(Stdio::from(e))
        .spawn()
        .unwrap();
    let t = Instant::now();
    let code = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break status_code(st);
        }
        if t.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "strata restart did not finish in 2 minutes; its output:\n{}",
                fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let mut reaped = None;
    if let Some(m) = m {
        let t = Instant::now();
        while reaped.is_none() && t.elapsed() < Duration::from_secs(10) {
            reaped = m.reap_handed_over();
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    (code, reaped)
}

#[test]
fn strata_restart_hands_over_while_a_process_works_in_the_mount() {
    require_root_and_fuse!();
    let t = TestDir::new("live-cli");
    let img = t.mkfs("1G");
    let mnt = t.mountpoint("mnt");
    let sock = Mount::admin_socket_for(&mnt);
    let log = t.join("successor.log");
    let ctl = t.plain_dir("ctl");
    let _reaper = KeeperReaper(keeper_socket(&mnt));
    // Bound before the first daemon's guard: unmounts and ends whichever daemon serves last.
    let adopted = AdoptedDaemon::new(&mnt, &sock, &log);
    let mut m = start_with_keeper(&img, &mnt, &[]);
    let first = m.pid().unwrap();
    // The daemon serves (and wrote its pid file) once the admin API answers.
    let t0 = Instant::now();
    while adopted.pid() != Some(first) {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no pid file naming daemon {first}; output:\n{}",
            m.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    m.cli_ok(&["stats"]);
    let w = spawn_workload(&m.root().join("work"), &ctl);
    assert!(
        wait_iterations(&ctl, 20, Duration::from_secs(30)),
        "the workload did not start"
    );

    let mut starts = Vec::new();
    let mut took = Vec::new();
    let mut old = first;
    for k in 0..2 {
        std::thread::sleep(Duration::from_millis(300));
        let before = iterations(&ctl);
        starts.push(now_us());
        let out = t.join(&format!("restart{k}.out"));
        // The first daemon's parent (the test) reaps it only after `strata restart` returns;
        // the second daemon's parent (the first `strata restart`) is gone: pid 1 reaps it
        // whenever it does (here: every few seconds).
        let t1 = Instant::now();
        let (code, exited) = strata_restart(&sock, &out, &log, (k == 0).then_some(&mut m));
        took.push(t1.elapsed());
        let stdout = fs::read_to_string(&out).unwrap_or_default();
        assert_eq!(
            code,
            0,
            "strata restart {k} failed; stdout:\n{stdout}\nstderr and successor output:\n{}",
            adopted.output()
        );
        let new = adopted
            .pid()
            .expect("no daemon serves after strata restart");
        assert_ne!(new, old);
        assert!(
            stdout.contains(&format!("restarted: daemon {old} handed over to {new}")),
            "strata restart {k} printed:\n{stdout}"
        );
        if k == 0 {
            // The first daemon (the test's child) exited 0 after handing over.
            assert_eq!(exited, Some(0), "daemon output:\n{}", m.stderr());
            assert_no_panic("the first daemon", &m.stderr());
        }
        old = new;
        // The mount keeps serving the process in it ...
        assert!(
            wait_iterations(&ctl, before + 20, Duration::from_secs(60)),
            "the workload made no progress after strata restart {k}; successor output:\n{}",
            adopted.output()
        );
        assert!(is_mounted(&mnt));
        // ... and the admin API answers from the successor.
        let stats = m.cli_ok(&["stats"]);
        assert!(!stats.is_empty());
        let layers = m.cli_ok(&["layer", "ls"]);
        assert!(layers.contains("default"), "layer ls:\n{layers}");
    }
    let succ = adopted.output();
    assert_eq!(
        succ.matches("connection taken over").count(),
        2,
        "successor output:\n{succ}"
    );
    std::thread::sleep(Duration::from_millis(300));
    let end = now_us();
    let seen = w.finish();
    let mut all = pauses(&slow_ops(&ctl), &starts, end);
    println!("pause per strata restart (µs): {all:?}; strata restart took {took:?}");
    report("the process", "strata restart", &mut all);
    assert!(
        seen.errors.is_empty(),
        "the process saw {} error(s):\n{}",
        seen.errors.len(),
        seen.errors.join("\n")
    );
    adopted.stop();
    drop(m);
    assert_fsck_clean(&img, "after strata restart");
    let m = Mount::start(&img, &mnt);
    check_durable(&m.root().join("work/data"), &seen);
    m.stop();
    assert_fsck_clean(&img, "after the final check");
}
