//! FUSE round trips, counted by the daemon (`strata stats --json`: `daemon.fuse_requests`,
//! the same numbers as the `strata_fuse_requests_total` metric): the requests the kernel can
//! do without are not sent (cached symlink targets, no OPENDIR/RELEASEDIR, no FLUSH; O_TRUNC
//! inside OPEN), and the requests per file of `tar -x`, of creating and of unlinking
//! files are printed (run with `--nocapture` to see the tables; they are reported, not
//! asserted beyond what the kernel promises). And the queue threads' polling for the next
//! request (`--request-poll-us`) serves the same with any limit and stops when idle.

#![forbid(unsafe_code)]

use std::fs;
use std::path::Path;
use std::process::Command;

use testkit::requests::{delta, fuse_requests as requests, table};
use testkit::*;

fn sync() {
    assert!(Command::new("sync").status().unwrap().success());
}

/// A tree of `dirs` directories of `files` small files and one symlink each.
fn make_tar(dir: &Path, dirs: usize, files: usize) -> (std::path::PathBuf, u64) {
    let src = dir.join("src");
    let mut entries = 0u64;
    for d in 0..dirs {
        let p = src.join(format!("d{d:03}"));
        fs::create_dir_all(&p).unwrap();
        entries += 1;
        for f in 0..files {
            fs::write(
                p.join(format!("f{f:04}")),
                pattern((d * files + f) as u64, 1 + (f * 37) % 8192),
            )
            .unwrap();
            entries += 1;
        }
        std::os::unix::fs::symlink("f0000", p.join("link")).unwrap();
        entries += 1;
    }
    let tar = dir.join("tree.tar");
    let st = Command::new("tar")
        .arg("-cf")
        .arg(&tar)
        .arg("-C")
        .arg(&src)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success(), "tar -cf");
    (tar, entries)
}

#[test]
fn requests_per_file_of_tar_create_and_unlink() {
    require_root_and_fuse!();
    let td = TestDir::new("round-trips");
    let (tar, entries) = make_tar(&td.path, 20, 100);
    let (_img, m) = td.mkfs_and_mount("1G");
    let x = m.root().join("x");
    fs::create_dir(&x).unwrap();

    let before = requests(&m);
    let st = Command::new("tar")
        .arg("-xf")
        .arg(&tar)
        .arg("-C")
        .arg(&x)
        .status()
        .unwrap();
    assert!(st.success(), "tar -xf");
    sync();
    let tar_x = delta(&before, &requests(&m));

    let dir = m.root().join("many");
    fs::create_dir(&dir).unwrap();
    const N: u64 = 2000;
    let before = requests(&m);
    for i in 0..N {
        drop(
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(dir.join(format!("f{i}")))
                .unwrap(),
        );
    }
    let create = delta(&before, &requests(&m));
    let before = requests(&m);
    for i in 0..N {
        fs::remove_file(dir.join(format!("f{i}"))).unwrap();
    }
    let unlink = delta(&before, &requests(&m));

    let transport = m.cli_ok(&["stats", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&transport).unwrap();
    eprintln!(
        "FUSE transport: {}\n{}{}{}",
        v["daemon"]["fuse_transport"],
        table("tar -x + sync", &tar_x, entries),
        table("create (open O_CREAT|O_EXCL, close)", &create, N),
        table("unlink", &unlink, N)
    );
    // The transport asked for is the one in use (and says so).
    if let Some(t) = testkit::fuse_transport().filter(|t| t != "auto") {
        assert_eq!(
            v["daemon"]["fuse_transport"],
            t.as_str(),
            "transport in use"
        );
    }
    // What the kernel lets us skip, it skips (the mount's first OPENDIR is answered ENOSYS,
    // after which the kernel sends none).
    assert!(tar_x.get("OPENDIR").copied().unwrap_or(0) <= 1, "{tar_x:?}");
    for op in ["RELEASEDIR", "ACCESS", "READLINK"] {
        assert_eq!(tar_x.get(op), None, "tar -x sent {op}");
    }
    assert!(
        create.get("CREATE").copied().unwrap_or(0) >= N,
        "one CREATE per file"
    );
}

#[test]
fn requests_the_kernel_can_do_without_are_not_sent() {
    require_root_and_fuse!();
    let td = TestDir::new("round-trips-skip");
    let (_img, m) = td.mkfs_and_mount("256M");
    let r = m.root();
    fs::create_dir(r.join("d")).unwrap();
    for i in 0..10 {
        fs::write(r.join(format!("d/f{i}")), b"data").unwrap();
    }
    std::os::unix::fs::symlink("d/f0", r.join("s")).unwrap();

    // Symlink targets: cached by the kernel after the first READLINK (FUSE_CACHE_SYMLINKS).
    let before = requests(&m);
    for _ in 0..5 {
        assert_eq!(fs::read_link(r.join("s")).unwrap(), Path::new("d/f0"));
    }
    let d = delta(&before, &requests(&m));
    assert!(
        d.get("READLINK").copied().unwrap_or(0) <= 1,
        "READLINK per readlink: {d:?}"
    );

    // Directory listings: no OPENDIR / RELEASEDIR (the first OPENDIR is answered ENOSYS,
    // and the kernel sends none after it).
    let _ = fs::read_dir(&r).unwrap().count();
    let before = requests(&m);
    for _ in 0..5 {
        assert_eq!(fs::read_dir(r.join("d")).unwrap().count(), 10);
    }
    let d = delta(&before, &requests(&m));
    assert_eq!(d.get("OPENDIR"), None, "{d:?}");
    assert_eq!(d.get("RELEASEDIR"), None, "{d:?}");

    // open(O_TRUNC): the truncation travels in the OPEN (FUSE_ATOMIC_O_TRUNC). The one
    // SETATTR left per open is the kernel writing back the times it set (write-back cache)
    // when the file is closed; without ATOMIC_O_TRUNC the truncation is that SETATTR.
    let before = requests(&m);
    for i in 0..10 {
        let p = r.join(format!("d/f{i}"));
        drop(
            fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(&p)
                .unwrap(),
        );
        assert_eq!(fs::metadata(&p).unwrap().len(), 0, "truncated by open");
    }
    let d = delta(&before, &requests(&m));
    assert!(
        d.get("SETATTR").copied().unwrap_or(0) <= 10,
        "O_TRUNC sent more than one SETATTR per open: {d:?}"
    );
    assert!(d.get("OPEN").copied().unwrap_or(0) >= 10, "{d:?}");
    // FLUSH is answered ENOSYS once, then never sent again.
    assert!(d.get("FLUSH").copied().unwrap_or(0) <= 1, "{d:?}");
}

/// CPU time (user + system, in clock ticks) the process has used so far.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    // The fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// Synchronous requests one after another (create, write, stat, read back, unlink), as a
/// queue thread that polls for the next request after each reply serves them
/// (`--request-poll-us`; on /dev/fuse the option changes nothing): the same results with
/// polling off, at its default and with a long limit, and a daemon left idle afterwards
/// stops polling (it polls only right after a reply, and stops after polls that found
/// nothing), so an idle second costs it next to no CPU.
#[test]
fn polling_for_the_next_request_serves_the_same_and_stops_when_idle() {
    require_root_and_fuse!();
    for limit in ["0", "50", "5000"] {
        let td = TestDir::new("request-poll");
        let img = td.mkfs("1G");
        let m = Mount::start_with(&img, &td.mountpoint("mnt"), &["--request-poll-us", limit]);
        let dir = m.root().join("d");
        fs::create_dir(&dir).unwrap();
        for i in 0..300u32 {
            let p = dir.join(format!("f{i}"));
            fs::write(&p, i.to_le_bytes().repeat(i as usize % 64 + 1)).unwrap();
            assert_eq!(fs::metadata(&p).unwrap().len(), 4 * (i as u64 % 64 + 1));
        }
        for i in 0..300u32 {
            let p = dir.join(format!("f{i}"));
            assert_eq!(
                fs::read(&p).unwrap(),
                i.to_le_bytes().repeat(i as usize % 64 + 1),
                "limit {limit}: file {i}"
            );
            if i % 2 == 0 {
                fs::remove_file(&p).unwrap();
            }
        }
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 150, "limit {limit}");
        // Idle: the last polls end (at most a few limits after the last reply), then no
        // thread is awake. Measured over 2 s after 0.5 s; a thread polling all along would
        // use about 2 s of CPU.
        std::thread::sleep(std::time::Duration::from_millis(500));
        let pid = m.pid().expect("daemon pid");
        let before = cpu_ticks(pid);
        std::thread::sleep(std::time::Duration::from_secs(2));
        let used = cpu_ticks(pid) - before;
        // Ticks are 1/100 s on Linux: at most 0.4 s of the 2 s.
        assert!(
            used <= 40,
            "limit {limit}: an idle daemon used {used} ticks of CPU in 2 s"
        );
    }
}
