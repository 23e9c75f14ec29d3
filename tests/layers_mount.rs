//! Layers through a real mount and the real CLI: every layer is a directory under the mount
//! root; clones see their parent, changes stay in the layer that made them, committed layers
//! and views are read-only, cross-layer rename/link is EXDEV, removal returns the space, and
//! everything survives a remount.

#![forbid(unsafe_code)]

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use testkit::*;

fn owned_bytes(m: &Mount, id: &str) -> u64 {
    let out = m.cli_ok(&["layer", "stat", id, "--json"]);
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
    let s = sys::statvfs(&cstr(p)).unwrap_or_else(|e| panic!("statvfs: {}", errno_name(e)));
    s.f_bfree * s.f_frsize
}

#[test]
fn layers_are_directories_with_copy_on_write_isolation() {
    require_root_and_fuse!();
    let t = TestDir::new("layers-mount");
    let (img, m) = t.mkfs_and_mount("512M");
    let mnt = m.mnt.clone();
    let names: Vec<String> = fs::read_dir(&mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, vec!["default".to_string()]);

    // An image layer with a 64 MiB file, a small file and a directory.
    m.cli_ok(&["layer", "create", "img"]);
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
    m.cli_ok(&["layer", "commit", "img"]);
    assert_eq!(
        errno_of(fs::write(base.join("new"), b"x")),
        libc::EROFS,
        "committed layers are read-only"
    );

    m.cli_ok(&["layer", "clone", "img", "c1"]);
    m.cli_ok(&["layer", "clone", "img", "c2"]);
    m.cli_ok(&["layer", "clone", "img", "v", "--view"]);
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
    let out = m.cli(&["layer", "rm", "img"]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("children"), "{}", out.stderr);
    let owned = owned_bytes(&m, "c1");
    assert_eq!(
        owned,
        3 * 4096,
        "c1 owns the copied block of big and its two new small files"
    );
    let free_with_c1 = free_bytes(&mnt);
    m.cli_ok(&["layer", "rm", "c1"]);
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
    let out = m.cli_ok(&["layer", "ls"]);
    assert!(out.contains("img") && out.contains("committed"), "{out}");
    m.stop();
    assert_fsck_clean(&img, "after remount");
}

#[test]
fn other_users_cannot_walk_into_layers_through_the_mount_root() {
    require_root_and_fuse!();
    let t = TestDir::new("layers-perm");
    let (_img, m) = t.mkfs_and_mount("128M");
    let mnt = m.mnt.clone();
    fs::write(m.root().join("secret"), b"container data").unwrap();
    fs::set_permissions(m.root().join("secret"), fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(
        fs::metadata(&mnt).unwrap().mode() & 0o777,
        0o700,
        "the mount root is root-only"
    );
    let path = cstr(&m.root().join("secret"));
    let r = as_user(65534, 65534, || code(sys::open(&path, libc::O_RDONLY, 0)));
    assert_eq!(
        r,
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
