//! Persistence: a clean stop + remount keeps everything; a SIGKILL of the daemon loses
//! nothing whose fsync returned, and leaves an image that fsck calls clean.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use testkit::*;

fn setxattr(p: &Path, name: &str, value: &[u8]) {
    let n = CString::new(name).unwrap();
    if let Err(e) = sys::lsetxattr(&cstr(p), &n, value, 0) {
        panic!("setxattr {} {name}: {}", p.display(), errno_name(e));
    }
}

/// A tree with a bit of everything.
fn build_tree(r: &Path) {
    fs::create_dir_all(r.join("a/b/c")).unwrap();
    fs::create_dir(r.join("empty")).unwrap();
    for (i, size) in [0usize, 1, 4095, 4096, 4097, 65536, 1 << 20, (3 << 20) + 17]
        .iter()
        .enumerate()
    {
        fs::write(r.join(format!("a/file{i}")), pattern(i as u64, *size)).unwrap();
    }
    // many small files in one directory
    for i in 0..300 {
        fs::write(r.join(format!("a/b/small{i:03}")), format!("file {i}\n")).unwrap();
    }
    // a sparse file with a hole in the middle
    let f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(r.join("a/sparse"))
        .unwrap();
    f.write_all_at(b"head", 0).unwrap();
    f.write_all_at(b"tail", 10 << 20).unwrap();
    drop(f);
    // a long name
    fs::write(r.join("n".repeat(255)), b"long name").unwrap();
    // symlinks, hard links, a fifo
    std::os::unix::fs::symlink("a/file3", r.join("link-rel")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", r.join("link-dangling")).unwrap();
    std::os::unix::fs::symlink("t".repeat(1000), r.join("link-long")).unwrap();
    fs::hard_link(r.join("a/file2"), r.join("a/b/c/hard")).unwrap();
    let fifo = cstr(&r.join("fifo"));
    assert_eq!(sys::mknod(&fifo, libc::S_IFIFO | 0o640, 0), Ok(()));
    // xattrs on a file and a directory, including an empty and a large value
    setxattr(&r.join("a/file1"), "user.one", b"1");
    setxattr(&r.join("a/file1"), "user.empty", b"");
    setxattr(&r.join("a/file1"), "user.big", &pattern(99, 3000));
    setxattr(&r.join("a/b"), "user.dir", b"directory attr");
    // modes, owners, times
    fs::set_permissions(r.join("a/file4"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::set_permissions(r.join("a/file5"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(r.join("empty"), fs::Permissions::from_mode(0o1777)).unwrap();
    std::os::unix::fs::chown(r.join("a/file6"), Some(1234), Some(5678)).unwrap();
    std::os::unix::fs::lchown(r.join("link-rel"), Some(42), Some(43)).unwrap();
    let c = cstr(&r.join("a/file7"));
    let ts = [
        libc::timespec {
            tv_sec: 1_000_000_000,
            tv_nsec: 123_456_789,
        },
        libc::timespec {
            tv_sec: 1_234_567_890,
            tv_nsec: 987_654_321,
        },
    ];
    assert_eq!(sys::utimensat(&c, Some(&ts), 0), Ok(()));
    // a rename and an unlink, so the journal holds more than creates
    fs::write(r.join("a/tmp"), b"to be renamed").unwrap();
    fs::rename(r.join("a/tmp"), r.join("a/b/renamed")).unwrap();
    fs::write(r.join("gone"), b"x").unwrap();
    fs::remove_file(r.join("gone")).unwrap();
}

#[test]
fn clean_stop_and_remount() {
    require_root_and_fuse!();
    let td = TestDir::new("persist");
    let (img, m) = td.mkfs_and_mount("512M");
    let mnt = m.mnt.clone();
    build_tree(&m.root());
    let before = snapshot(&m.root(), true);
    m.stop();
    assert_fsck_clean(&img, "after a clean stop");

    for round in 1..=2 {
        let m = Mount::start(&img, &mnt);
        let after = snapshot(&m.root(), true);
        assert_snapshots_equal(
            &format!("remount {round} (expected = before stop, actual = after remount)"),
            &before,
            &m.root(),
            &after,
            &m.root(),
            false,
        );
        // content check beyond the hash, for one file
        assert_eq!(
            fs::read(m.root().join("a/file6")).unwrap(),
            pattern(6, 1 << 20)
        );
        m.stop();
        assert_fsck_clean(&img, &format!("after remount {round}"));
    }
}

/// Changes made after a remount (on top of a checkpoint) persist too, and deletions stick.
#[test]
fn changes_after_remount_persist() {
    require_root_and_fuse!();
    let td = TestDir::new("persist2");
    let (img, m) = td.mkfs_and_mount("512M");
    let mnt = m.mnt.clone();
    build_tree(&m.root());
    m.stop();
    let m = Mount::start(&img, &mnt);
    let r = m.root();
    fs::remove_dir_all(r.join("a/b")).unwrap();
    fs::write(r.join("a/file0"), b"rewritten").unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(r.join("a/file6"))
        .unwrap()
        .set_len(5000)
        .unwrap();
    fs::rename(r.join("a"), r.join("z")).unwrap();
    setxattr(&r.join("z/file1"), "user.one", b"changed");
    let before = snapshot(&r, true);
    m.stop();
    assert_fsck_clean(&img, "after the second session");
    let m = Mount::start(&img, &mnt);
    let after = snapshot(&m.root(), true);
    assert_snapshots_equal(
        "second remount",
        &before,
        &m.root(),
        &after,
        &m.root(),
        false,
    );
    assert!(!m.root().join("a").exists());
    m.stop();
}

// ---------------------------------------------------------------------------------------
// kill -9
// ---------------------------------------------------------------------------------------

/// What the writer knows to be durable: path -> (seed, length) of its content.
type Durable = Arc<Mutex<BTreeMap<PathBuf, (u64, usize)>>>;

fn openat(dir: &OwnedFd, rel: &str, flags: i32) -> Result<OwnedFd, i32> {
    let c = CString::new(rel).unwrap();
    sys::openat(dir, &c, flags | libc::O_CLOEXEC, 0o644)
}

fn write_all(fd: &OwnedFd, data: &[u8], mut off: u64, rng: &mut Rng) -> Result<(), i32> {
    let mut done = 0;
    while done < data.len() {
        let chunk = (rng.range(1, 200_000) as usize).min(data.len() - done);
        let n = sys::pwrite(fd, &data[done..done + chunk], off as i64)?;
        done += n;
        off += n as u64;
    }
    Ok(())
}

/// Creates files, writes them, fsyncs them; records each file whose fsync returned 0. Never
/// touches a recorded file again. Runs until `stop` or until the mount dies.
fn writer(
    root: Arc<OwnedFd>,
    round: u32,
    seed: u64,
    durable: Durable,
    stop: Arc<AtomicBool>,
) -> String {
    let mut rng = Rng::new(seed);
    let dir = format!("r{round}");
    let c = CString::new(dir.clone()).unwrap();
    if let Err(e) = sys::mkdirat(&*root, &c, 0o755) {
        return format!("mkdir {dir}: {}", errno_name(e));
    }
    for i in 0u64.. {
        if stop.load(Ordering::SeqCst) {
            return "stopped".into();
        }
        let rel = format!("{dir}/f{i:05}");
        let fd = match openat(&root, &rel, libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY) {
            Ok(fd) => fd,
            Err(e) => return format!("create {rel}: {}", errno_name(e)),
        };
        let len = match rng.below(4) {
            0 => rng.below(4096) as usize,
            1 => 4096 * rng.range(1, 16) as usize,
            _ => rng.below(600_000) as usize,
        };
        let cseed = rng.next_u64();
        let data = pattern(cseed, len);
        // fsync on the file alone: Strata's fsync makes the journal records up to it
        // durable, including this file's create (DESIGN.md), so no directory fsync.
        let r = write_all(&fd, &data, 0, &mut rng).and_then(|_| sys::fsync(&fd));
        drop(fd);
        match r {
            Ok(()) => {
                durable
                    .lock()
                    .unwrap()
                    .insert(PathBuf::from(&rel), (cseed, len));
            }
            Err(e) => return format!("write/fsync {rel}: {}", errno_name(e)),
        }
    }
    unreachable!()
}

/// Unsynced churn next to the writer: overwrites, renames, unlinks, truncates, xattrs.
fn churn(root: Arc<OwnedFd>, round: u32, seed: u64, stop: Arc<AtomicBool>) -> String {
    let mut rng = Rng::new(seed);
    let dir = format!("churn{round}");
    let c = CString::new(dir.clone()).unwrap();
    if let Err(e) = sys::mkdirat(&*root, &c, 0o755) {
        return format!("mkdir {dir}: {}", errno_name(e));
    }
    let root = &*root;
    loop {
        if stop.load(Ordering::SeqCst) {
            return "stopped".into();
        }
        let a = format!("{dir}/{}", rng.below(20));
        let b = CString::new(format!("{dir}/{}", rng.below(20))).unwrap();
        let ca = CString::new(a.clone()).unwrap();
        let r = match rng.below(5) {
            0 | 1 => openat(root, &a, libc::O_CREAT | libc::O_WRONLY).and_then(|fd| {
                let d = pattern(rng.next_u64(), rng.below(300_000) as usize);
                write_all(&fd, &d, rng.below(1 << 20), &mut rng)
            }),
            2 => sys::renameat(root, &ca, root, &b),
            3 => sys::unlinkat(root, &ca, 0),
            _ => openat(root, &a, libc::O_WRONLY).and_then(|fd| {
                let r = sys::ftruncate(&fd, rng.below(1 << 20) as i64);
                let n = CString::new("user.churn").unwrap();
                let _ = sys::fsetxattr(&fd, &n, b"v", 0);
                r
            }),
        };
        if let Err(e) = r {
            if e == libc::ENOTCONN || e == libc::ECONNABORTED || e == libc::EIO || e == libc::ENODEV
            {
                return format!("stopped by {}", errno_name(e));
            }
        }
    }
}

fn verify_durable(root: &Path, durable: &BTreeMap<PathBuf, (u64, usize)>, when: &str) {
    let mut bad = Vec::new();
    for (rel, (seed, len)) in durable {
        let p = root.join(rel);
        match fs::read(&p) {
            Err(e) => bad.push(format!("{}: {e}", rel.display())),
            Ok(data) => {
                let want = pattern(*seed, *len);
                if data != want {
                    let pos = data.iter().zip(want.iter()).position(|(a, b)| a != b);
                    bad.push(format!(
                        "{}: content differs (len {} vs expected {}, first difference at {:?})",
                        rel.display(),
                        data.len(),
                        len,
                        pos
                    ));
                }
            }
        }
    }
    if !bad.is_empty() {
        let n = bad.len();
        bad.truncate(20);
        panic!(
            "{when}: {n} of {} fsynced files lost or wrong:\n{}",
            durable.len(),
            bad.join("\n")
        );
    }
}

#[test]
fn kill9_during_writes_keeps_fsynced_data() {
    require_root_and_fuse!();
    let td = TestDir::new("kill9");
    let img = td.mkfs("2G");
    let mnt = td.mountpoint("mnt");
    let durable: Durable = Arc::new(Mutex::new(BTreeMap::new()));
    let rounds = 4u32;
    let mut rng = Rng::new(0x6b696c6c39);
    let mut fsck_failures: Vec<String> = Vec::new();

    for round in 0..rounds {
        let mut m = Mount::start(&img, &mnt);
        // Everything from earlier rounds must still be there.
        verify_durable(
            &m.root(),
            &durable.lock().unwrap(),
            &format!("start of round {round}"),
        );

        let root = m.root();
        let root_fd = Arc::new(
            sys::open(
                &cstr(&root),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
                0,
            )
            .unwrap_or_else(|e| panic!("open mount root: {}", errno_name(e))),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let before = durable.lock().unwrap().len();
        let w = {
            let (r, d, s, seed) = (
                root_fd.clone(),
                durable.clone(),
                stop.clone(),
                rng.next_u64(),
            );
            std::thread::spawn(move || writer(r, round, seed, d, s))
        };
        // STRATA_KILL9_NO_CHURN=1 runs the fsync writer alone (to narrow down a failure).
        let no_churn = std::env::var_os("STRATA_KILL9_NO_CHURN").is_some();
        let c = {
            let (r, s, seed) = (root_fd.clone(), stop.clone(), rng.next_u64());
            std::thread::spawn(move || {
                if no_churn {
                    "disabled".to_string()
                } else {
                    churn(r, round, seed, s)
                }
            })
        };
        // Wait until a few fsyncs have returned (or the writer gave up), then a random delay.
        let t0 = Instant::now();
        while durable.lock().unwrap().len() < before + 3
            && !w.is_finished()
            && t0.elapsed() < Duration::from_secs(60)
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(rng.range(50, 1500)));
        let early = w.is_finished();
        let out = m.kill9();
        assert_no_panic("daemon before SIGKILL", &out);
        // I/O against the dead mount now fails; stop the threads before detaching the mount
        // so nothing lands in the bare mountpoint directory.
        stop.store(true, Ordering::SeqCst);
        let wres = w.join().expect("writer thread panicked");
        let cres = c.join().expect("churn thread panicked");
        drop(root_fd);
        m.unmount_dead();
        drop(m);
        let after = durable.lock().unwrap().len();
        eprintln!(
            "round {round}: {} files fsynced this round; writer: {wres}; churn: {cres}",
            after - before
        );
        assert!(
            !early,
            "round {round}: the writer stopped before the kill: {wres}\ndaemon output:\n{out}"
        );
        assert!(
            after >= before + 3,
            "round {round}: fewer than 3 fsyncs returned in 60 s (writer: {wres})"
        );

        // Keep going after an fsck complaint so the report also says whether data survived.
        let (code, report) = fsck(&img);
        if code != 0 {
            let head: Vec<&str> = report.lines().take(15).collect();
            fsck_failures.push(format!(
                "round {round}: fsck after kill -9 exited {code}:\n{}",
                head.join("\n")
            ));
        }
    }

    let m = Mount::start(&img, &mnt);
    verify_durable(&m.root(), &durable.lock().unwrap(), "after the last crash");
    // The file system still works after all that.
    fs::write(m.root().join("after"), b"still writable").unwrap();
    m.stop();
    assert!(
        fsck_failures.is_empty(),
        "fsck after kill -9 was not clean (the data checks passed):\n{}",
        fsck_failures.join("\n")
    );
    assert_fsck_clean(&img, "at the end");
    let m = Mount::start(&img, &mnt);
    verify_durable(
        &m.root(),
        &durable.lock().unwrap(),
        "after the final clean remount",
    );
    assert_eq!(fs::read(m.root().join("after")).unwrap(), b"still writable");
    m.stop();
}
