//! Bad input must give a clear error (non-zero exit, a message on stderr, never a panic):
//! garbage images, truncated images, corrupt superblocks, a full device, read-only images,
//! directories without O_DIRECT, a second mount of the same image, over-long names.

#![forbid(unsafe_code)]

use std::ffi::{CString, OsStr};
use std::fs;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use testkit::*;

/// Error output must be present, short, and not a panic.
fn assert_clear_error(what: &str, stderr: &str) {
    assert_no_panic(what, stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        !lines.is_empty(),
        "{what}: failed without any message on stderr"
    );
    assert!(
        !stderr.contains("RUST_BACKTRACE") && !stderr.contains("stack backtrace"),
        "{what}: error output looks like a crash:\n{stderr}"
    );
    let last = lines.last().unwrap();
    assert!(
        last.len() < 500,
        "{what}: the error line is not one clear line:\n{stderr}"
    );
}

/// Mounting must fail (the daemon exits non-zero before mounting) with a clear error.
fn expect_mount_failure(img: &Path, mnt: &Path, what: &str) -> String {
    match Mount::try_start(img, mnt, &[]) {
        Ok(m) => {
            drop(m);
            panic!("{what}: strata mount succeeded; expected a clear error");
        }
        Err(f) => {
            assert_ne!(f.code, 0, "{what}: exit code 0 without a mount");
            assert_clear_error(what, &f.stderr);
            assert!(!is_mounted(mnt), "{what}: left a mount behind");
            eprintln!("{what}: exit {}: {}", f.code, f.stderr.trim());
            f.stderr
        }
    }
}

fn write_random(path: &Path, len: usize, seed: u64) {
    let mut f = fs::File::create(path).unwrap();
    f.write_all(&pattern(seed, len)).unwrap();
    f.sync_all().unwrap();
}

#[test]
fn random_bytes_image() {
    require_root_and_fuse!();
    let td = TestDir::new("random");
    let img = td.image();
    write_random(&img, 16 << 20, 1);
    let mnt = td.mountpoint("mnt");
    let err = expect_mount_failure(&img, &mnt, "mount of random bytes");
    assert!(
        err.to_lowercase().contains("not a strata image"),
        "mount of random bytes should say it is not a Strata image:\n{err}"
    );
    let (code, out) = fsck(&img);
    assert_eq!(
        code, 2,
        "fsck of random bytes: expected exit 2 (error), got {code}:\n{out}"
    );
    // The image is not modified by either.
    assert_eq!(
        fs::read(&img).unwrap(),
        pattern(1, 16 << 20),
        "mount/fsck wrote to a non-Strata file"
    );
}

#[test]
fn zero_length_image() {
    require_root_and_fuse!();
    let td = TestDir::new("zero");
    let img = td.image();
    fs::File::create(&img).unwrap();
    let mnt = td.mountpoint("mnt");
    expect_mount_failure(&img, &mnt, "mount of a zero-length file");
    let (code, out) = fsck(&img);
    assert_eq!(
        code, 2,
        "fsck of a zero-length file: expected exit 2, got {code}:\n{out}"
    );
}

#[test]
fn truncated_image() {
    require_root_and_fuse!();
    let td = TestDir::new("trunc");
    let (img, m) = td.mkfs_and_mount("256M");
    let mnt = m.mnt.clone();
    for i in 0..20 {
        fs::write(m.root().join(format!("f{i}")), pattern(i, 1 << 20)).unwrap();
    }
    m.stop();
    let len = fs::metadata(&img).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    expect_mount_failure(&img, &mnt, "mount of an image truncated to half");
    let (code, out) = fsck(&img);
    assert_ne!(
        code, 0,
        "fsck of a truncated image must not say clean:\n{out}"
    );
}

#[test]
fn nonexistent_image_and_mountpoint() {
    require_root_and_fuse!();
    let td = TestDir::new("noent");
    let mnt = td.mountpoint("mnt");
    expect_mount_failure(&td.join("no-such-image"), &mnt, "mount of a missing image");
    let img = td.mkfs("64M");
    expect_mount_failure(
        &img,
        &td.join("no-such-dir"),
        "mount on a missing mountpoint",
    );
    let out = strata(&["fsck", td.join("no-such-image").to_str().unwrap()]);
    assert_eq!(
        out.code, 2,
        "fsck of a missing file: exit {}:\n{}",
        out.code, out.stderr
    );
    assert_clear_error("fsck of a missing file", &out.stderr);
    let out = strata(&[
        "mkfs",
        td.join("img2").to_str().unwrap(),
        "--size",
        "banana",
    ]);
    assert_ne!(out.code, 0, "mkfs --size banana succeeded");
    assert_clear_error("mkfs --size banana", &out.stderr);
}

/// Flip bytes 8..64 of a 4 KiB block (past a magic number, inside any header checksum).
fn corrupt_block(img: &Path, block: u64) {
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(img)
        .unwrap();
    let mut buf = vec![0u8; 4096];
    f.read_exact_at(&mut buf, block * 4096).unwrap();
    for b in &mut buf[8..64] {
        *b ^= 0x5a;
    }
    f.write_all_at(&buf, block * 4096).unwrap();
    f.sync_all().unwrap();
}

/// An image whose two superblock slots both describe the same tree: write, stop, mount,
/// stop (two checkpoints, no change in between).
fn image_with_two_checkpoints(td: &TestDir) -> (PathBuf, PathBuf) {
    let img = td.mkfs("128M");
    let mnt = td.mountpoint("mnt");
    let m = Mount::start(&img, &mnt);
    fs::write(m.root().join("survivor"), pattern(3, 100_000)).unwrap();
    m.stop();
    let m = Mount::start(&img, &mnt);
    m.stop();
    assert_fsck_clean(&img, "before corrupting");
    (img, mnt)
}

#[test]
fn superblock_both_slots_corrupt() {
    require_root_and_fuse!();
    let td = TestDir::new("sb-both");
    let (img, mnt) = image_with_two_checkpoints(&td);
    corrupt_block(&img, 0);
    corrupt_block(&img, 1);
    expect_mount_failure(&img, &mnt, "mount with both superblock slots corrupt");
    let (code, out) = fsck(&img);
    assert_ne!(
        code, 0,
        "fsck with both superblocks corrupt must not say clean:\n{out}"
    );
}

#[test]
fn superblock_slot_a_corrupt_mounts_via_b() {
    require_root_and_fuse!();
    let td = TestDir::new("sb-a");
    let (img, mnt) = image_with_two_checkpoints(&td);
    corrupt_block(&img, 0);
    let m = match Mount::try_start(&img, &mnt, &[]) {
        Ok(m) => m,
        Err(f) => panic!(
            "mount with only superblock slot A (block 0) corrupt must fall back to slot B; exit {}:\n{}",
            f.code, f.stderr
        ),
    };
    assert_eq!(
        fs::read(m.root().join("survivor")).unwrap(),
        pattern(3, 100_000),
        "file after slot-B recovery"
    );
    fs::write(m.root().join("after"), b"new").unwrap();
    let out = m.stop();
    assert_no_panic("daemon", &out);
    let (code, report) = fsck(&img);
    eprintln!("fsck after recovering through slot B and a clean stop: exit {code}\n{report}");
    let m = Mount::start(&img, &mnt);
    assert_eq!(fs::read(m.root().join("after")).unwrap(), b"new");
    m.stop();
}

#[test]
fn full_device_enospc() {
    require_root_and_fuse!();
    let td = TestDir::new("full");
    let (img, m) = td.mkfs_and_mount("64M");
    let mnt = m.mnt.clone();
    let r = m.root();
    // Files that are fsynced before the device fills.
    for i in 0..3u64 {
        let f = fs::File::create(r.join(format!("keep{i}"))).unwrap();
        f.write_all_at(&pattern(100 + i, 1 << 20), 0).unwrap();
        f.sync_all().unwrap();
    }
    // Fill it.
    let f = fs::File::create(r.join("filler")).unwrap();
    let chunk = pattern(7, 1 << 20);
    let mut off = 0u64;
    let err = loop {
        match f.write_at(&chunk, off) {
            Ok(0) => panic!("write returned 0 at offset {off}"),
            Ok(n) => off += n as u64,
            Err(e) => break e,
        }
        if off > (256 << 20) {
            panic!("wrote {off} bytes to a 64 MiB image without an error");
        }
    };
    assert_eq!(
        err.raw_os_error(),
        Some(libc::ENOSPC),
        "filling a 64 MiB image: expected ENOSPC after {off} bytes, got {err}"
    );
    eprintln!("ENOSPC after {} MiB", off >> 20);
    // fsync of the filler may fail too, but only with ENOSPC (never EIO).
    if let Err(e) = f.sync_all() {
        assert_eq!(
            e.raw_os_error(),
            Some(libc::ENOSPC),
            "fsync after ENOSPC: {e}"
        );
    }
    drop(f);
    // New files: ENOSPC or success, never something else.
    match fs::write(r.join("late"), pattern(9, 1 << 20)) {
        Ok(()) => {}
        Err(e) => assert_eq!(
            e.raw_os_error(),
            Some(libc::ENOSPC),
            "write of a new file when full: {e}"
        ),
    }
    for i in 0..3u64 {
        assert_eq!(
            fs::read(r.join(format!("keep{i}"))).unwrap(),
            pattern(100 + i, 1 << 20),
            "keep{i} while full"
        );
    }
    m.stop();
    assert_fsck_clean(&img, "after filling the device");
    let m = Mount::start(&img, &mnt);
    for i in 0..3u64 {
        assert_eq!(
            fs::read(m.root().join(format!("keep{i}"))).unwrap(),
            pattern(100 + i, 1 << 20),
            "keep{i} after remount"
        );
    }
    // The filler holds what was acknowledged, as a prefix.
    let filler = fs::read(m.root().join("filler")).unwrap();
    assert!(
        filler.len() as u64 <= off + (1 << 20),
        "filler grew beyond what was written"
    );
    for (i, c) in filler.chunks(1 << 20).enumerate() {
        assert_eq!(c, &chunk[..c.len()], "filler chunk {i} corrupt");
    }
    // Deleting frees space for later (after a checkpoint at the latest).
    fs::remove_file(m.root().join("filler")).unwrap();
    m.stop();
    assert_fsck_clean(&img, "after deleting the filler");
    let m = Mount::start(&img, &mnt);
    fs::write(m.root().join("again"), pattern(10, 8 << 20))
        .expect("write after freeing space and a remount");
    m.stop();
}

/// Runs `chattr ARGS` and reports success.
fn chattr(args: &[&OsStr]) -> bool {
    Command::new("chattr")
        .args(args)
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

struct Immutable(PathBuf);
impl Drop for Immutable {
    fn drop(&mut self) {
        chattr(&[OsStr::new("-i"), self.0.as_os_str()]);
    }
}

#[test]
fn read_only_image_immutable() {
    require_root_and_fuse!();
    let td = TestDir::new("ro-chattr");
    let img = td.mkfs("64M");
    let mnt = td.mountpoint("mnt");
    if !chattr(&[OsStr::new("+i"), img.as_os_str()]) {
        eprintln!("SKIP: chattr +i is not supported here");
        return;
    }
    let _guard = Immutable(img.clone());
    // Root cannot open an immutable file for writing.
    assert!(
        fs::OpenOptions::new().write(true).open(&img).is_err(),
        "chattr +i did not make the image read-only"
    );
    expect_mount_failure(&img, &mnt, "mount of an immutable (read-only) image");
}

struct Loop(String);
impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

#[test]
fn read_only_loop_device() {
    require_root_and_fuse!();
    let td = TestDir::new("ro-loop");
    let img = td.mkfs("64M");
    let mnt = td.mountpoint("mnt");
    let out = Command::new("losetup")
        .args(["-r", "-f", "--show"])
        .arg(&img)
        .output();
    let dev = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        Ok(o) => {
            eprintln!(
                "SKIP: losetup -r failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            return;
        }
        Err(e) => {
            eprintln!("SKIP: losetup not available: {e}");
            return;
        }
    };
    let _guard = Loop(dev.clone());
    expect_mount_failure(Path::new(&dev), &mnt, "mount of a read-only loop device");
}

fn refuses_o_direct(dir: &Path) -> bool {
    let c = cstr(&dir.join("probe"));
    let r = sys::open(&c, libc::O_CREAT | libc::O_RDWR | libc::O_DIRECT, 0o644);
    let refused = matches!(r, Err(libc::EINVAL));
    drop(r);
    let _ = fs::remove_file(dir.join("probe"));
    refused
}

/// A small file system without O_DIRECT under the test dir (unmounted when the guard drops).
/// tmpfs refuses O_DIRECT only before Linux 6.6; on newer kernels tmpfs accepts it, so fall
/// back to ramfs.
fn mount_no_direct_fs(td: &TestDir) -> Option<(MountGuard, &'static str)> {
    for fstype in ["tmpfs", "ramfs"] {
        let dir = td.mountpoint(fstype);
        let mut c = Command::new("mount");
        c.args(["-t", fstype]);
        if fstype == "tmpfs" {
            c.args(["-o", "size=200M"]);
        }
        let ok = c
            .arg(fstype)
            .arg(&dir)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            eprintln!("cannot mount {fstype}");
            continue;
        }
        let guard = MountGuard::new(dir.clone());
        if refuses_o_direct(&dir) {
            return Some((guard, fstype));
        }
        eprintln!("NOTE: {fstype} accepts O_DIRECT on this kernel; trying the next candidate");
    }
    None
}

#[test]
fn image_without_o_direct() {
    require_root_and_fuse!();
    let td = TestDir::new("nodirect");
    let Some((fsdir, fstype)) = mount_no_direct_fs(&td) else {
        eprintln!("SKIP: no file system without O_DIRECT available (tmpfs and ramfs both accept it or cannot be mounted)");
        return;
    };
    eprintln!("using {fstype} as the file system without O_DIRECT");
    let mnt = td.mountpoint("mnt");
    // A valid image copied onto it: mount must name O_DIRECT.
    let good = td.mkfs("64M");
    let copy = fsdir.path().join("copied.img");
    let st = Command::new("cp")
        .arg("--sparse=always")
        .arg(&good)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(st.success(), "cp image to {fstype}");
    let err = expect_mount_failure(&copy, &mnt, &format!("mount of an image on {fstype}"));
    assert!(
        err.contains("O_DIRECT"),
        "the error must mention O_DIRECT:\n{err}"
    );
    // mkfs directly there: either it refuses (naming O_DIRECT) or the mount does.
    let img = fsdir.path().join("made.img");
    let out = strata(&[
        OsStr::new("mkfs"),
        img.as_os_str(),
        OsStr::new("--size"),
        OsStr::new("64M"),
    ]);
    assert_no_panic("mkfs on a file system without O_DIRECT", &out.stderr);
    if out.code != 0 {
        assert_clear_error("mkfs without O_DIRECT", &out.stderr);
        assert!(
            out.stderr.contains("O_DIRECT"),
            "mkfs error must mention O_DIRECT:\n{}",
            out.stderr
        );
    } else {
        let err = expect_mount_failure(&img, &mnt, &format!("mount of an image made on {fstype}"));
        assert!(
            err.contains("O_DIRECT"),
            "the error must mention O_DIRECT:\n{err}"
        );
    }
}

#[test]
fn second_mount_refused() {
    require_root_and_fuse!();
    let td = TestDir::new("double");
    let img = td.mkfs("128M");
    let m = Mount::start(&img, &td.mountpoint("mnt1"));
    fs::write(m.root().join("before"), b"1").unwrap();
    let err = expect_mount_failure(
        &img,
        &td.mountpoint("mnt2"),
        "second mount of a mounted image",
    );
    eprintln!("second mount: {err}");
    // The first mount is unharmed.
    fs::write(m.root().join("after"), b"2").unwrap();
    assert_eq!(fs::read(m.root().join("before")).unwrap(), b"1");
    // fsck of a mounted image must not "repair" it either; it may refuse or report.
    let (code, _) = fsck(&img);
    eprintln!("fsck while mounted: exit {code}");
    m.stop();
    assert_fsck_clean(&img, "after the refused second mount");
    let m = Mount::start(&img, &td.mountpoint("mnt1"));
    assert_eq!(fs::read(m.root().join("after")).unwrap(), b"2");
    m.stop();
}

#[test]
fn name_too_long() {
    require_root_and_fuse!();
    let td = TestDir::new("names");
    let img = td.mkfs("128M");
    let m = Mount::start(&img, &td.mountpoint("mnt"));
    let r = m.root();
    let ok = "a".repeat(255);
    let long = "b".repeat(256);
    fs::create_dir(r.join("d")).unwrap();
    for dir in [r.clone(), r.join("d")] {
        // 255 bytes: fine for every kind of entry
        fs::write(dir.join(&ok), b"255").unwrap();
        assert_eq!(fs::read(dir.join(&ok)).unwrap(), b"255");
        fs::create_dir(dir.join(format!("{}d", &ok[..254]))).unwrap();
        std::os::unix::fs::symlink("target", dir.join(format!("{}l", &ok[..254]))).unwrap();
        fs::hard_link(dir.join(&ok), dir.join(format!("{}h", &ok[..254]))).unwrap();
        let names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.contains(&ok), "255-byte name missing from readdir");

        // 256 bytes: ENAMETOOLONG everywhere
        let p = dir.join(&long);
        let e = libc::ENAMETOOLONG;
        assert_eq!(
            errno_of(fs::write(&p, b"x")),
            e,
            "create with a 256-byte name"
        );
        assert_eq!(
            errno_of(fs::create_dir(&p)),
            e,
            "mkdir with a 256-byte name"
        );
        assert_eq!(
            errno_of(std::os::unix::fs::symlink("t", &p)),
            e,
            "symlink with a 256-byte name"
        );
        assert_eq!(
            errno_of(fs::hard_link(dir.join(&ok), &p)),
            e,
            "link to a 256-byte name"
        );
        assert_eq!(
            errno_of(fs::rename(dir.join(&ok), &p)),
            e,
            "rename to a 256-byte name"
        );
        assert_eq!(
            errno_of(fs::symlink_metadata(&p)),
            e,
            "lstat of a 256-byte name"
        );
        assert_eq!(
            errno_of(fs::remove_file(&p)),
            e,
            "unlink of a 256-byte name"
        );
        assert_eq!(
            sys::mknod(&cstr(&p), libc::S_IFIFO | 0o644, 0),
            Err(e),
            "mknod with a 256-byte name"
        );
        assert!(
            dir.join(&ok).exists(),
            "the failed rename removed the source"
        );
    }
    // xattr names: up to 255 bytes including the prefix; longer is ERANGE (VFS)
    let f = cstr(&r.join(&ok));
    let name = CString::new(format!("user.{}", "n".repeat(250))).unwrap();
    if let Err(e) = sys::setxattr(&f, &name, b"v", 0) {
        panic!("setxattr with a 255-byte name: {}", errno_name(e));
    }
    let name = CString::new(format!("user.{}", "n".repeat(251))).unwrap();
    assert_eq!(
        sys::setxattr(&f, &name, b"v", 0),
        Err(libc::ERANGE),
        "setxattr with a 256-byte name"
    );
    // survives remount
    m.stop();
    let m = Mount::start(&img, &td.join("mnt"));
    assert_eq!(fs::read(m.root().join(&ok)).unwrap(), b"255");
    m.stop();
    assert_fsck_clean(&img, "after long names");
}
