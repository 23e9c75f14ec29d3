//! Data integrity through real mounts and the CLI: a bit flipped in an image file's data
//! block is found by `strata scrub IMAGE` (offline) and `strata scrub` (online, through the
//! daemon), each naming the layer and path; reads of that block get EIO and are counted in
//! `strata stats`; bad `strata scrub` arguments are refused without a panic. An image file
//! grown with `truncate -s` while mounted is taken in by `strata grow` (statfs shows it, a
//! file that did not fit before fits), and at the next mount when it grew while unmounted.
//! `strata fsck --repair` fixes an image file damaged offline, which then mounts with its
//! files; so does an image whose checkpoint names a missing parent layer. A loop device grown under a mount (`losetup -c`, as `lvextend` grows a volume) is
//! taken in by `strata grow`.

#![forbid(unsafe_code)]

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;

use testkit::*;

const BLOCK: usize = 4096;

/// The block of image `img` holding `want` (unique content), found by reading the image.
fn find_block(img: &Path, want: &[u8]) -> u64 {
    let data = fs::read(img).expect("read image");
    let hits: Vec<usize> = data
        .chunks(BLOCK)
        .enumerate()
        .filter(|(_, b)| *b == want)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(hits.len(), 1, "the block is in the image exactly once");
    hits[0] as u64
}

fn flip_bit(img: &Path, block: u64, byte: u64) {
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(img)
        .expect("open image");
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, block * BLOCK as u64 + byte)
        .expect("read");
    b[0] ^= 0x04;
    f.write_all_at(&b, block * BLOCK as u64 + byte)
        .expect("write");
    f.sync_all().expect("sync");
}

fn stats(m: &Mount) -> serde_json::Value {
    serde_json::from_str(&m.cli_ok(&["stats", "--json"])).expect("stats JSON")
}

/// Bytes of the file system mounted at `p`, as statfs reports them.
fn fs_bytes(p: &Path) -> u64 {
    let s = sys::statvfs(&cstr(p)).expect("statvfs");
    s.f_blocks as u64 * s.f_frsize as u64
}

#[test]
fn a_flipped_bit_in_the_image_is_found_by_both_scrubs_and_every_read_gets_eio() {
    require_root_and_fuse!();
    let td = TestDir::new("integrity");
    let (img, m) = td.mkfs_and_mount("64M");
    let mnt = m.mnt.clone();
    let a = pattern(1, 1 << 20);
    let b = pattern(2, 64 << 10);
    fs::create_dir(m.root().join("dir")).expect("mkdir");
    fs::write(m.root().join("dir/a.bin"), &a).expect("write a");
    fs::write(m.root().join("b.bin"), &b).expect("write b");
    m.stop();

    let out = strata(&["scrub", img.to_str().expect("path")]);
    assert_no_panic("scrub", &out.stderr);
    assert_eq!(out.code, 0, "clean image: {}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("clean"), "{}", out.stdout);

    let bad = find_block(&img, &a[5 * BLOCK..6 * BLOCK]);
    flip_bit(&img, bad, 777);

    let out = strata(&["scrub", img.to_str().expect("path")]);
    assert_no_panic("scrub", &out.stderr);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains(&format!("bad block {bad}:"))
            && out.stdout.contains("default:/dir/a.bin")
            && out.stdout.contains("logical block 5"),
        "{}",
        out.stdout
    );

    let m = Mount::start(&img, &mnt);
    for _ in 0..2 {
        let err = fs::read(m.root().join("dir/a.bin")).expect_err("a.bin has a bad block");
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    }
    // The blocks around it read fine.
    let f = fs::File::open(m.root().join("dir/a.bin")).expect("open");
    let mut head = vec![0u8; 5 * BLOCK];
    f.read_exact_at(&mut head, 0).expect("blocks 0-4");
    assert!(head == a[..5 * BLOCK]);
    let mut tail = vec![0u8; BLOCK];
    f.read_exact_at(&mut tail, 6 * BLOCK as u64)
        .expect("block 6");
    assert!(tail == a[6 * BLOCK..7 * BLOCK]);
    drop(f);
    assert!(fs::read(m.root().join("b.bin")).expect("b") == b);
    let s = stats(&m);
    let errors = s["daemon"]["checksum_errors"].as_u64().expect("counter");
    assert!(errors >= 2, "{errors} checksum errors counted");
    let layer = s["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .find(|l| l["id"] == "default")
        .expect("default layer");
    assert!(
        layer["checksum_errors"].as_u64().unwrap_or(0) >= 2,
        "{layer}"
    );

    // Online: the daemon's scrub finds the same block.
    let out = m.cli(&["scrub"]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains(&format!("bad block {bad}:")) && out.stdout.contains("/dir/a.bin"),
        "{}",
        out.stdout
    );
    let out = m.cli(&["scrub", "--status", "--json"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    let st: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!(st["state"], "done");
    assert_eq!(st["bad_blocks"], 1);
    assert_eq!(st["bad"][0]["block"], bad);
    assert_eq!(stats(&m)["daemon"]["scrub_bad_blocks"], 1);
    let out = m.cli(&["scrub", "--rate", "10G", "--no-wait"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    // Bad arguments: an error, never a panic (cli() checks).
    for args in [
        &["scrub", "--rate", "0"][..],
        &["scrub", "--rate", "fast"],
        &["scrub", "/nonexistent/image"],
        &["scrub", "--status", "--cancel"],
    ] {
        let out = m.cli(args);
        assert_ne!(out.code, 0, "{args:?}: {}", out.stdout);
    }

    // Rewritten, the file is whole again and the bad block is no longer used.
    fs::write(m.root().join("dir/a.bin"), &a).expect("rewrite");
    assert!(fs::read(m.root().join("dir/a.bin")).expect("a") == a);
    m.stop();
    assert_fsck_clean(&img, "after the rewrite");
    let out = strata(&["scrub", img.to_str().expect("path")]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
}

#[test]
fn an_image_grown_while_mounted_is_taken_in_by_strata_grow_and_at_mount() {
    require_root_and_fuse!();
    let td = TestDir::new("grow");
    let (img, m) = td.mkfs_and_mount("64M");
    let mnt = m.mnt.clone();
    let before = fs_bytes(&m.root());
    let dev_before = stats(&m)["daemon"]["device_size_bytes"]
        .as_u64()
        .expect("size");
    let out = m.cli_ok(&["grow"]);
    assert!(out.contains("nothing to do"), "{out}");

    fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .expect("open image")
        .set_len(160 << 20)
        .expect("truncate -s 160M");
    let out = m.cli_ok(&["grow"]);
    assert!(out.contains("grown from"), "{out}");
    let after = fs_bytes(&m.root());
    assert_eq!(after - before, 96 << 20, "statfs: {before} -> {after}");
    assert_eq!(
        stats(&m)["daemon"]["device_size_bytes"].as_u64(),
        Some(dev_before + (96 << 20)),
        "the metrics show the new size"
    );
    // 100 MiB did not fit in 64 MiB.
    let big = pattern(3, 100 << 20);
    fs::write(m.root().join("big"), &big).expect("a file that needs the new space");
    m.stop();
    assert_fsck_clean(&img, "after an online grow");

    // Grown while not mounted: the mount takes it in.
    fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .expect("open image")
        .set_len(224 << 20)
        .expect("truncate -s 224M");
    let m = Mount::start(&img, &mnt);
    assert_eq!(fs_bytes(&m.root()) - after, 64 << 20);
    assert!(fs::read(m.root().join("big")).expect("big") == big);
    m.stop();
    assert_fsck_clean(&img, "after a grow at mount");
}

#[test]
fn fsck_repair_fixes_a_damaged_image_file_which_then_mounts_with_its_files() {
    require_root_and_fuse!();
    let td = TestDir::new("repair");
    let (img, m) = td.mkfs_and_mount("64M");
    let mnt = m.mnt.clone();
    fs::create_dir(m.root().join("d")).expect("mkdir");
    fs::write(m.root().join("d/f"), pattern(1, 10_000)).expect("write");
    fs::write(m.root().join("x"), pattern(2, 5_000)).expect("write");
    m.stop();
    // Damage: /d unreachable (its entry gone), a wrong link count on /x.
    {
        let dev = engine::FileDevice::open(&img).expect("open image");
        engine::repair::rewrite_for_tests(&dev, |ls| {
            let slot = ls.slot_of(b"default").expect("default");
            let t = &mut ls.map.get_mut(&slot).expect("layer").tree;
            let root = engine::format::ROOT_INO;
            let Some(engine::meta::Content::Dir(d)) =
                t.inodes.get_mut(&root).map(|i| &mut i.content)
            else {
                panic!("root is a directory")
            };
            let x = d.get(b"x").expect("x");
            let (_, c) = d.entries.remove(&b"d"[..]).expect("d");
            d.by_cookie.remove(&c);
            t.inodes.get_mut(&x).expect("x").attr.nlink = 3;
        })
        .expect("damage");
    }
    let (code, out) = fsck(&img);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("not reachable") && out.contains("nlink 3"),
        "{out}"
    );
    let out = strata(&["fsck", "--repair", img.to_str().expect("path")]);
    assert_no_panic("fsck --repair", &out.stderr);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("repaired: layer default: inode")
            && out.stdout.contains("linked as /lost+found.")
            && out.stdout.contains("link count 3 set to 1"),
        "{}",
        out.stdout
    );
    assert_fsck_clean(&img, "after fsck --repair");
    let m = Mount::start(&img, &mnt);
    let lost: Vec<_> = fs::read_dir(m.root())
        .expect("readdir")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
        .filter(|n| n.starts_with("lost+found."))
        .collect();
    assert_eq!(lost.len(), 1, "{lost:?}");
    assert!(fs::read(m.root().join(&lost[0]).join("f")).expect("f") == pattern(1, 10_000));
    assert!(fs::read(m.root().join("x")).expect("x") == pattern(2, 5_000));
    m.stop();
    assert_fsck_clean(&img, "after the mount");
}

#[test]
fn fsck_repair_makes_a_layer_whose_parent_is_missing_a_base_layer_which_then_mounts() {
    require_root_and_fuse!();
    let td = TestDir::new("repair-parent");
    let (img, m) = td.mkfs_and_mount("64M");
    let mnt = m.mnt.clone();
    m.cli_ok(&["layer", "create", "img"]);
    fs::write(mnt.join("img/inherited"), pattern(1, 9_000)).expect("write");
    m.cli_ok(&["layer", "commit", "img"]);
    m.cli_ok(&["layer", "clone", "img", "mid"]);
    fs::create_dir(mnt.join("mid/md")).expect("mkdir");
    fs::write(mnt.join("mid/md/own"), pattern(2, 10_000)).expect("write");
    m.cli_ok(&["layer", "commit", "mid"]);
    m.cli_ok(&["layer", "clone", "mid", "leaf"]);
    fs::write(mnt.join("leaf/leaf-file"), pattern(3, 5_000)).expect("write");
    m.stop();
    // Damage: the parent slot of `mid` in the checkpoint names no layer (checksums valid).
    {
        let dev = engine::FileDevice::open(&img).expect("open image");
        engine::repair::rewrite_payload_for_tests(&dev, |p| {
            let pat: &[u8] = b"\x03\x00\x00\x00mid";
            let at = p
                .windows(pat.len())
                .position(|w| w == pat)
                .expect("mid's entry")
                + pat.len();
            p[at..at + 4].copy_from_slice(&77u32.to_le_bytes());
        })
        .expect("damage");
    }
    let (code, out) = fsck(&img);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("parent slot 77 is missing"), "{out}");
    let out = strata(&["fsck", "--repair", img.to_str().expect("path")]);
    assert_no_panic("fsck --repair", &out.stderr);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .contains("layer mid: parent slot 77 is missing; it is now a base layer"),
        "{}",
        out.stdout
    );
    assert_fsck_clean(&img, "after fsck --repair");
    let m = Mount::start(&img, &mnt);
    for layer in ["mid", "leaf"] {
        assert!(
            fs::read(mnt.join(layer).join("md/own")).expect("own") == pattern(2, 10_000),
            "{layer}"
        );
        assert!(!mnt.join(layer).join("inherited").exists(), "{layer}");
    }
    assert!(fs::read(mnt.join("leaf/leaf-file")).expect("leaf-file") == pattern(3, 5_000));
    assert!(fs::read(mnt.join("img/inherited")).expect("inherited") == pattern(1, 9_000));
    fs::write(mnt.join("leaf/after"), pattern(4, 3_000)).expect("write after the repair");
    m.stop();
    assert_fsck_clean(&img, "after the mount");
}

/// A loop device over a file, detached when dropped.
struct Loop(String);

impl Loop {
    fn attach(file: &Path) -> Option<Loop> {
        let out = std::process::Command::new("losetup")
            .args(["-f", "--show"])
            .arg(file)
            .output()
            .ok()?;
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (out.status.success() && dev.starts_with("/dev/loop")).then_some(Loop(dev))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .args(["-d", &self.0])
            .status();
    }
}

#[test]
fn a_block_device_that_grows_while_mounted_is_taken_in_by_strata_grow() {
    require_root_and_fuse!();
    let td = TestDir::new("grow-blk");
    let file = td.join("backing");
    fs::File::create(&file)
        .and_then(|f| f.set_len(64 << 20))
        .expect("backing file");
    let Some(lo) = Loop::attach(&file) else {
        eprintln!("skipped: no loop device (losetup -f failed)");
        return;
    };
    let out = strata(&["mkfs", &lo.0]);
    assert_eq!(out.code, 0, "mkfs {}: {}", lo.0, out.stderr);
    let m = Mount::start(Path::new(&lo.0), &td.mountpoint("mnt"));
    let before = fs_bytes(&m.root());
    fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .expect("backing file")
        .set_len(160 << 20)
        .expect("grow the backing file");
    // What `lvextend` does to a logical volume: the block device's size changes.
    let st = std::process::Command::new("losetup")
        .args(["-c", &lo.0])
        .status()
        .expect("losetup -c");
    assert!(st.success(), "losetup -c {}", lo.0);
    let out = m.cli_ok(&["grow"]);
    assert!(out.contains("grown from 64M to 160M"), "{out}");
    assert_eq!(fs_bytes(&m.root()) - before, 96 << 20);
    let big = pattern(4, 100 << 20);
    fs::write(m.root().join("big"), &big).expect("a file that needs the new space");
    m.stop();
    let (code, out) = fsck(Path::new(&lo.0));
    assert_eq!(code, 0, "{out}");
}
