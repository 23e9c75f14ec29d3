//! Layers through a real mount and the real CLI: every layer is a directory under the mount
//! root; clones see their parent, changes stay in the layer that made them, committed layers
//! and views are read-only, cross-layer rename/link is EXDEV, removal returns the space, and
//! everything survives a remount.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use common::*;

fn layer(m: &Mount, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(STRATA)
        .arg("layer")
        .args(args)
        .arg("--admin-socket")
        .arg(m.admin_socket())
        .output()
        .expect("run strata layer");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !stderr.contains("panicked"),
        "strata layer panicked: {stderr}"
    );
    (out.status.code().unwrap_or(-1), stdout, stderr)
}

fn layer_ok(m: &Mount, args: &[&str]) -> String {
    let (code, out, err) = layer(m, args);
    assert_eq!(code, 0, "strata layer {args:?} failed: {err}");
    out
}

fn owned_bytes(m: &Mount, id: &str) -> u64 {
    let out = layer_ok(m, &["stat", id, "--json"]);
    let key = "\"owned_bytes\":";
    let at = out
        .find(key)
        .unwrap_or_else(|| panic!("no owned_bytes in {out}"))
        + key.len();
    out[at..]
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect::<String>()
        .parse()
        .expect("number")
}

fn free_bytes(p: &Path) -> u64 {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).expect("path");
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: statvfs writes into the struct we own; `c` is a valid C string.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut s) };
    assert_eq!(rc, 0);
    s.f_bfree * s.f_frsize
}

fn errno_of(r: std::io::Result<()>) -> i32 {
    r.expect_err("expected an error")
        .raw_os_error()
        .unwrap_or(0)
}

#[test]
fn layers_are_directories_with_copy_on_write_isolation() {
    require_root_and_fuse!();
    let t = TestDir::new("layers-mount");
    let img = t.mkfs("512M");
    let mnt = t.mountpoint("mnt");
    let m = Mount::start(&img, &mnt);
    let names: Vec<String> = fs::read_dir(&mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, vec!["default".to_string()]);

    // An image layer with a 64 MiB file, a small file and a directory.
    layer_ok(&m, &["create", "img"]);
    let base = mnt.join("img");
    assert!(
        base.is_dir(),
        "the new layer is a directory under the mount root"
    );
    let big: Vec<u8> = (0..64u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    fs::write(base.join("big"), &big).unwrap();
    fs::write(base.join("small"), b"hello").unwrap();
    fs::create_dir(base.join("dir")).unwrap();
    fs::write(base.join("dir/inner"), b"inner").unwrap();
    layer_ok(&m, &["commit", "img"]);
    assert_eq!(
        errno_of(fs::write(base.join("new"), b"x")),
        libc::EROFS,
        "committed layers are read-only"
    );

    layer_ok(&m, &["clone", "img", "c1"]);
    layer_ok(&m, &["clone", "img", "c2"]);
    layer_ok(&m, &["clone", "img", "v", "--view"]);
    let (c1, c2, v) = (mnt.join("c1"), mnt.join("c2"), mnt.join("v"));
    assert_eq!(
        fs::read(c1.join("big")).unwrap(),
        big,
        "a clone sees its parent's data"
    );

    // Changes in c1: a 4 KiB write into the inherited 64 MiB file, chmod, rename, unlink, new file.
    let before_free = free_bytes(&mnt);
    {
        use std::os::unix::fs::FileExt;
        let f = fs::OpenOptions::new()
            .write(true)
            .open(c1.join("big"))
            .unwrap();
        f.write_all_at(&[0xEE; 4096], 32 << 20).unwrap();
        f.sync_all().unwrap();
    }
    assert_eq!(
        owned_bytes(&m, "c1"),
        4096,
        "copy-on-write copies one block, not the file"
    );
    assert!(
        before_free - free_bytes(&mnt) <= 64 * 1024,
        "no copy-up of the 64 MiB file"
    );
    fs::set_permissions(c1.join("small"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::rename(c1.join("dir/inner"), c1.join("moved")).unwrap();
    fs::remove_file(c1.join("small")).ok();
    fs::write(c1.join("small"), b"rewritten").unwrap();
    fs::write(c1.join("only-in-c1"), b"c1").unwrap();

    let mut want_c1 = big.clone();
    want_c1[32 << 20..(32 << 20) + 4096].fill(0xEE);
    assert_eq!(fs::read(c1.join("big")).unwrap(), want_c1);
    for other in [&base, &c2, &v] {
        assert_eq!(
            fs::read(other.join("big")).unwrap(),
            big,
            "{}: parent/sibling/view unchanged",
            other.display()
        );
        assert_eq!(fs::read(other.join("small")).unwrap(), b"hello");
        assert!(other.join("dir/inner").exists());
        assert!(!other.join("only-in-c1").exists());
        assert_eq!(
            fs::metadata(other.join("small")).unwrap().mode() & 0o777,
            0o644
        );
    }
    assert_eq!(
        errno_of(fs::write(v.join("x"), b"x")),
        libc::EROFS,
        "views are read-only"
    );
    // Across layers: EXDEV, as across file systems.
    assert_eq!(
        errno_of(fs::rename(c1.join("moved"), c2.join("moved"))),
        libc::EXDEV
    );
    assert_eq!(
        errno_of(fs::hard_link(c1.join("moved"), c2.join("l"))),
        libc::EXDEV
    );
    // Hard links within a layer work.
    fs::hard_link(c2.join("small"), c2.join("small2")).unwrap();
    assert_eq!(fs::metadata(c2.join("small")).unwrap().nlink(), 2);

    // A parent with children cannot be removed; a leaf can, and its space comes back.
    let (code, _, err) = layer(&m, &["rm", "img"]);
    assert_ne!(code, 0);
    assert!(err.contains("children"), "{err}");
    let owned = owned_bytes(&m, "c1");
    assert_eq!(
        owned,
        3 * 4096,
        "c1 owns the copied block of big and its two new small files"
    );
    let free_with_c1 = free_bytes(&mnt);
    layer_ok(&m, &["rm", "c1"]);
    assert!(!c1.exists(), "a removed layer's directory is gone");
    // Frees are released at the next commit (at most a second).
    let mut freed = 0;
    for _ in 0..50 {
        freed = free_bytes(&mnt).saturating_sub(free_with_c1);
        if freed >= owned {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        freed >= owned,
        "removing c1 returned its {owned} bytes (freed {freed})"
    );

    // Everything survives a clean remount.
    m.stop();
    assert_fsck_clean(&img, "after layer work");
    let m = Mount::start(&img, &mnt);
    let mut names: Vec<String> = fs::read_dir(&mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, vec!["c2", "default", "img", "v"]);
    assert_eq!(fs::read(mnt.join("c2/big")).unwrap(), big);
    assert_eq!(fs::metadata(mnt.join("c2/small")).unwrap().nlink(), 2);
    let out = layer_ok(&m, &["ls"]);
    assert!(out.contains("img") && out.contains("committed"), "{out}");
    m.stop();
    assert_fsck_clean(&img, "after remount");
}

#[test]
fn other_users_cannot_walk_into_layers_through_the_mount_root() {
    require_root_and_fuse!();
    let t = TestDir::new("layers-perm");
    let img = t.mkfs("128M");
    let mnt = t.mountpoint("mnt");
    let m = Mount::start(&img, &mnt);
    fs::write(m.root().join("secret"), b"container data").unwrap();
    fs::set_permissions(m.root().join("secret"), fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(
        fs::metadata(&mnt).unwrap().mode() & 0o777,
        0o700,
        "the mount root is root-only"
    );
    let path =
        std::ffi::CString::new(m.root().join("secret").as_os_str().as_encoded_bytes()).unwrap();
    let code = as_user(65534, 65534, || {
        // SAFETY: open/close on a valid C string in the forked child.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY) };
        if fd >= 0 {
            unsafe { libc::close(fd) };
            return 0;
        }
        std::io::Error::last_os_error().raw_os_error().unwrap_or(1)
    });
    assert_eq!(
        code,
        libc::EACCES,
        "a non-root user is refused at the mount root"
    );
    // Root (the container runtime) still reaches it, and a bind mount of the layer is how
    // containers see their rootfs.
    assert_eq!(
        fs::read(m.root().join("secret")).unwrap(),
        b"container data"
    );
    m.stop();
}
