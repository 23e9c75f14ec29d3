//! POSIX behaviour a user meets that Strata once got wrong, through a real mount (on the FUSE
//! transport `STRATA_FUSE_TRANSPORT` names): O_TMPFILE and linking it; access times under
//! relatime, strictatime and noatime; file handles (`name_to_handle_at`, `open_by_handle_at`)
//! after the kernel forgot the inode and after a remount; a directory listing that another
//! process renames entries in while it is read.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use testkit::sys::{self, FileHandle};
use testkit::*;

/// Make the kernel forget cached dentries and inodes (not the daemon's state).
fn drop_kernel_caches() {
    fs::write("/proc/sys/vm/drop_caches", "3").expect("write /proc/sys/vm/drop_caches");
}

#[test]
fn o_tmpfile_is_nameless_until_linked() {
    require_root_and_fuse!();
    let td = TestDir::new("tmpfile");
    let (img, m) = td.mkfs_and_mount("256M");
    let dir = m.root().join("d");
    fs::create_dir(&dir).unwrap();
    let fd = sys::open(&cstr(&dir), libc::O_TMPFILE | libc::O_RDWR, 0o640)
        .unwrap_or_else(|e| panic!("open(O_TMPFILE): {}", errno_name(e)));
    let data = pattern(11, 10_000);
    assert_eq!(sys::pwrite(&fd, &data, 0), Ok(data.len()));
    let st = sys::fstat(&fd).unwrap();
    assert_eq!(st.st_nlink, 0, "an O_TMPFILE file has no name");
    assert_eq!(st.st_mode & 0o7777, 0o640);
    assert_eq!(st.st_mode & libc::S_IFMT, libc::S_IFREG);
    assert_eq!(
        fs::read_dir(&dir).unwrap().count(),
        0,
        "an O_TMPFILE file shows in no listing"
    );
    let named = dir.join("named");
    sys::link_fd(&fd, &cstr(&named))
        .unwrap_or_else(|e| panic!("linkat(AT_EMPTY_PATH): {}", errno_name(e)));
    assert_eq!(sys::fstat(&fd).unwrap().st_nlink, 1);
    assert_eq!(fs::read(&named).unwrap(), data);
    drop(fd);

    // O_EXCL: never linkable (the kernel refuses).
    let fd = sys::open(
        &cstr(&dir),
        libc::O_TMPFILE | libc::O_EXCL | libc::O_RDWR,
        0o600,
    )
    .unwrap();
    assert_eq!(
        sys::link_fd(&fd, &cstr(&dir.join("never"))),
        Err(libc::ENOENT)
    );
    drop(fd);

    // A temporary file never linked leaves no name behind.
    let fd = sys::open(&cstr(&dir), libc::O_TMPFILE | libc::O_RDWR, 0o600).unwrap();
    assert_eq!(sys::pwrite(&fd, &pattern(3, 1 << 20), 0), Ok(1 << 20));
    drop(fd);
    assert_eq!(
        fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect::<Vec<_>>(),
        vec!["named"]
    );

    m.stop();
    assert_fsck_clean(&img, "after O_TMPFILE files");
    let m = Mount::start(&img, &td.join("mnt"));
    assert_eq!(fs::read(m.root().join("d/named")).unwrap(), data);
}

fn atime_of(p: &Path) -> i64 {
    fs::metadata(p).unwrap().atime()
}

/// Set atime and mtime to `secs` seconds ago.
fn age(p: &Path, secs: i64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let t = libc::timespec {
        tv_sec: now - secs,
        tv_nsec: 0,
    };
    sys::utimensat(&cstr(p), Some(&[t, t]), 0).unwrap();
}

fn read_through_daemon(p: &Path) {
    drop_kernel_caches();
    let _ = fs::read(p).unwrap();
}

#[test]
fn reads_update_atime_as_the_mount_option_says() {
    require_root_and_fuse!();
    for (option, first_read, second_read) in [
        // relatime: the first read after a change, then not again within a day
        ("relatime", true, false),
        ("strictatime", true, true),
        ("noatime", false, false),
    ] {
        let td = TestDir::new(&format!("atime-{option}"));
        let img = td.mkfs("256M");
        let mnt = td.mountpoint("mnt");
        let m = Mount::start_with(&img, &mnt, &["--atime", option]);
        let f = m.root().join("f");
        fs::write(&f, b"0123456789").unwrap();
        fs::create_dir(m.root().join("dir")).unwrap();

        // atime == mtime (an hour ago): relatime updates on the next read.
        age(&f, 3600);
        let t0 = atime_of(&f);
        read_through_daemon(&f);
        let t1 = atime_of(&f);
        assert_eq!(
            t1 > t0,
            first_read,
            "{option}: first read: atime {t0} -> {t1}"
        );

        // atime now after mtime: relatime leaves it, strictatime moves it.
        std::thread::sleep(Duration::from_millis(1100));
        read_through_daemon(&f);
        let t2 = atime_of(&f);
        assert_eq!(
            t2 > t1,
            second_read,
            "{option}: second read: atime {t1} -> {t2}"
        );

        // A directory listing is a read of the directory.
        let d = m.root().join("dir");
        age(&d, 3600);
        let d0 = atime_of(&d);
        drop_kernel_caches();
        let _ = fs::read_dir(&d).unwrap().count();
        let d1 = atime_of(&d);
        assert_eq!(
            d1 > d0,
            option != "noatime",
            "{option}: readdir: atime {d0} -> {d1}"
        );

        // The access time is durable like every other attribute.
        m.stop();
        let m = Mount::start(&img, &mnt);
        assert_eq!(
            atime_of(&m.root().join("f")),
            t2,
            "{option}: atime after remount"
        );
    }
}

#[test]
fn reading_inherited_files_leaves_the_layer_diff_empty() {
    require_root_and_fuse!();
    let td = TestDir::new("atime-diff");
    let (_img, m) = td.mkfs_and_mount("256M");
    m.cli_ok(&["layer", "create", "img"]);
    fs::create_dir(m.mnt.join("img/dir")).unwrap();
    fs::write(m.mnt.join("img/dir/f"), b"image file").unwrap();
    m.cli_ok(&["layer", "commit", "img"]);
    m.cli_ok(&["layer", "clone", "img", "ctr"]);
    let f = m.mnt.join("ctr/dir/f");
    let before = atime_of(&f);
    std::thread::sleep(Duration::from_millis(1100));
    read_through_daemon(&f);
    let _ = fs::read_dir(m.mnt.join("ctr/dir")).unwrap().count();
    assert!(
        atime_of(&f) > before,
        "a read of an inherited file sets its atime in the layer"
    );
    assert_eq!(
        atime_of(&m.mnt.join("img/dir/f")),
        before,
        "the committed layer keeps its own"
    );
    // An access time is not a change an OCI layer carries: the diff stays empty.
    let tar = td.join("ctr.tar");
    m.cli_ok(&["export", "ctr", "-o", tar.to_str().unwrap()]);
    let out = std::process::Command::new("tar")
        .arg("-tf")
        .arg(&tar)
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        !listed.contains("dir/f"),
        "a read file exported as changed:\n{listed}"
    );
}

fn mount_fd(m: &Mount) -> std::os::fd::OwnedFd {
    sys::open(&cstr(&m.mnt), libc::O_RDONLY | libc::O_DIRECTORY, 0).unwrap()
}

fn read_fd(fd: &std::os::fd::OwnedFd, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len + 1];
    let n = sys::pread(fd, &mut b, 0).unwrap();
    b.truncate(n);
    b
}

/// Whether the kernel may still hold an inode in its cache.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Cached {
    Maybe,
    No,
}

#[test]
fn file_handles_survive_forgotten_inodes_and_remounts() {
    require_root_and_fuse!();
    let td = TestDir::new("handles");
    let (img, m) = td.mkfs_and_mount("256M");
    let dir = m.root().join("a/b");
    fs::create_dir_all(&dir).unwrap();
    let f = dir.join("file");
    let data = pattern(21, 5000);
    fs::write(&f, &data).unwrap();
    fs::hard_link(&f, m.root().join("a/link")).unwrap();
    let gone = m.root().join("gone");
    fs::write(&gone, b"x").unwrap();

    let hf: FileHandle = sys::name_to_handle(&cstr(&f))
        .unwrap_or_else(|e| panic!("name_to_handle_at: {}", errno_name(e)));
    let hd = sys::name_to_handle(&cstr(&dir)).unwrap();
    let hg = sys::name_to_handle(&cstr(&gone)).unwrap();
    fs::remove_file(&gone).unwrap();

    let check = |m: &Mount, when: &str, cached: Cached| {
        let mfd = mount_fd(m);
        let fd = sys::open_by_handle(&mfd, &hf, libc::O_RDONLY)
            .unwrap_or_else(|e| panic!("{when}: open_by_handle_at(file): {}", errno_name(e)));
        assert_eq!(read_fd(&fd, data.len()), data, "{when}: file contents");
        drop(fd);
        let fd = sys::open_by_handle(&mfd, &hd, libc::O_RDONLY | libc::O_DIRECTORY)
            .unwrap_or_else(|e| panic!("{when}: open_by_handle_at(dir): {}", errno_name(e)));
        let st = sys::fstat(&fd).unwrap();
        assert_eq!(st.st_mode & libc::S_IFMT, libc::S_IFDIR, "{when}");
        let inner = sys::openat(&fd, c"file", libc::O_RDONLY, 0).unwrap();
        assert_eq!(
            read_fd(&inner, data.len()),
            data,
            "{when}: openat below the handle"
        );
        // (While the kernel still caches the removed file's inode, e.g. until the release
        // of its last open, it answers from that; once it asks us, the answer is ESTALE.)
        if cached == Cached::No {
            assert_eq!(
                sys::open_by_handle(&mfd, &hg, libc::O_RDONLY).err(),
                Some(libc::ESTALE),
                "{when}: the handle of a removed file"
            );
        }
    };
    check(&m, "with the inode cached", Cached::Maybe);
    drop_kernel_caches();
    check(&m, "after the kernel dropped its caches", Cached::No);
    m.stop();
    let m = Mount::start(&img, &td.join("mnt"));
    check(&m, "after a remount", Cached::No);
    assert_eq!(
        sys::name_to_handle(&cstr(&f)).unwrap().bytes,
        hf.bytes,
        "a file's handle is the same after a remount"
    );
}

#[test]
fn readdir_under_renames_returns_each_entry_that_stays_once() {
    require_root_and_fuse!();
    let td = TestDir::new("readdir-renames");
    let (_img, m) = td.mkfs_and_mount("1G");
    let dir = m.root().join("big");
    fs::create_dir(&dir).unwrap();
    const STAY: usize = 14_000;
    const MOVING: usize = 1_000;
    for i in 0..STAY {
        fs::write(dir.join(format!("stay-{i:05}")), b"").unwrap();
    }
    for i in 0..MOVING {
        fs::write(dir.join(format!("move-{i:04}-a")), b"").unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let renamer = {
        let (dir, stop) = (dir.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut renames = 0u64;
            let mut gen = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let (from, to) = if gen % 2 == 0 { ("a", "b") } else { ("b", "a") };
                for i in 0..MOVING {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let _ = fs::rename(
                        dir.join(format!("move-{i:04}-{from}")),
                        dir.join(format!("move-{i:04}-{to}")),
                    );
                    renames += 1;
                }
                gen += 1;
            }
            renames
        })
    };
    let reader = {
        let dir = dir.clone();
        std::thread::spawn(move || {
            let mut passes = Vec::new();
            let t = Instant::now();
            while passes.len() < 3 || t.elapsed() < Duration::from_secs(2) {
                let names: Vec<String> = fs::read_dir(&dir)
                    .unwrap()
                    .map(|e| e.unwrap().file_name().into_string().unwrap())
                    .collect();
                passes.push(names);
                if passes.len() >= 10 {
                    break;
                }
            }
            passes
        })
    };
    // A reader that loops for ever fails here rather than hanging the suite.
    let deadline = Instant::now() + Duration::from_secs(300);
    while !reader.is_finished() {
        assert!(Instant::now() < deadline, "readdir did not finish in 300 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    let passes = reader.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    let renames = renamer.join().unwrap();
    assert!(renames > 0, "the renamer ran");
    for (k, names) in passes.iter().enumerate() {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for n in names {
            *seen.entry(n.as_str()).or_default() += 1;
        }
        let twice: Vec<_> = seen.iter().filter(|(_, c)| **c > 1).collect();
        assert!(twice.is_empty(), "pass {k}: names listed twice: {twice:?}");
        let stay = names.iter().filter(|n| n.starts_with("stay-")).count();
        assert_eq!(stay, STAY, "pass {k}: every entry that stays put, once");
        assert!(
            names.len() <= STAY + MOVING,
            "pass {k}: {} entries from a directory that never held more than {}",
            names.len(),
            STAY + MOVING
        );
    }
    eprintln!(
        "{} passes of {} entries each while {renames} renames ran",
        passes.len(),
        passes.iter().map(|p| p.len()).max().unwrap_or(0)
    );
}
