//! Strata's containerd diff service with a real containerd 1.7 (Debian 13's, from the trixie
//! suite), ctr and runc: a private containerd registers the daemon's snapshotter as
//! `[proxy_plugins.strata]` and its diff service as `[proxy_plugins.strata-diff]`, first in
//! the diff service's list, so that containerd's unpacker (`ctr images import`, pulls) applies
//! layers onto Strata snapshots through Strata, and `ctr snapshots diff` (what `docker commit`
//! and image builds do) gets a layer's changes from the engine.
//!
//! Checked: every layer of the test image is applied by Strata (the daemon logs each apply;
//! containerd accepted the uncompressed digests it returned as the image's diff ids), a
//! container runs on it and sees what the layers say; the same image on containerd's overlayfs
//! snapshotter goes to the next differ (NotImplemented from Strata) and runs the same; a
//! snapshot changed in every way (new, changed, deleted files, a replaced directory, links,
//! xattrs, owners) diffed by Strata and, on overlayfs, by containerd's walking differ gives two
//! blobs that apply to the same tree, the live layer's; the blob's `containerd.io/uncompressed`
//! label is its tar's digest; a layer blob with a path escaping the layer fails the import and
//! leaves nothing behind; garbage on the diff socket costs nothing; and with the daemon down,
//! what containerd does (see README, "While the daemon is down").

#![forbid(unsafe_code)]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::ctr_image::{check_run_output, image_layers, IMAGE, SCRIPT};
use common::{grpc_garbage, oci_image};
use testkit::containerd::{Binaries, Config, Containerd, Containerd17};
use testkit::{Mount, TestDir};

fn bin_or_skip() -> Option<Binaries> {
    testkit::containerd::or_skip(Containerd17::find())
}

/// Strata mounted with its diff service pointed at the containerd that will run in `cdir`.
fn mount_for(t: &TestDir, cdir: &Path) -> (PathBuf, Mount) {
    let img = t.mkfs("8G");
    let mnt = t.mountpoint("mnt");
    let sock = cdir.join("containerd.sock");
    let m = Mount::start_with(
        &img,
        &mnt,
        &["--containerd-address", sock.to_str().unwrap()],
    );
    (img, m)
}

fn start(bin: &Binaries, cdir: &Path, m: &Mount) -> Containerd {
    Containerd::start(
        bin,
        cdir,
        &Config {
            snapshotter: Some(m.snapshotter_socket()),
            differ: Some(m.diff_socket()),
            ..Default::default()
        },
    )
}

/// Snapshot rows of `ctr snapshots ls`: name → (parent, kind).
fn snapshots(c: &Containerd, sn: &str) -> BTreeMap<String, (String, String)> {
    c.ok(&["snapshots", "--snapshotter", sn, "ls"])
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f.len() {
                3 => Some((f[0].into(), (f[1].into(), f[2].into()))),
                2 => Some((f[0].into(), (String::new(), f[1].into()))),
                _ => None,
            }
        })
        .collect()
}

/// The committed snapshot that is no other's parent.
fn top_of(s: &BTreeMap<String, (String, String)>) -> String {
    let parents: Vec<&String> = s.values().map(|(p, _)| p).collect();
    s.iter()
        .filter(|(_, (_, k))| k == "Committed")
        .map(|(n, _)| n)
        .find(|n| !parents.contains(n))
        .expect("a top layer")
        .clone()
}

fn applies_logged(m: &Mount) -> usize {
    m.stderr()
        .lines()
        .filter(|l| l.contains("diff service: applied"))
        .count()
}

fn diffs_logged(m: &Mount) -> usize {
    m.stderr()
        .lines()
        .filter(|l| l.contains("diff service: wrote"))
        .count()
}

/// The mount source (a path) `ctr snapshots mounts` gives for `key`.
fn bind_source(c: &Containerd, sn: &str, key: &str) -> String {
    let out = c.ok(&["snapshots", "--snapshotter", sn, "mounts", "/x", key]);
    out.split_whitespace()
        .skip_while(|w| *w != "-t")
        .nth(2)
        .unwrap_or_else(|| panic!("no mount source in {out:?}"))
        .to_string()
}

/// Change `root` in every way a layer can: new, changed and deleted files, a replaced
/// directory (opaque), a new directory tree, a symlink, a hard link, an xattr, an owner,
/// a mode.
fn change_tree(root: &Path) {
    let w = |p: &str, d: &[u8]| fs::write(root.join(p), d).unwrap();
    w("etc/new", b"new file\n");
    w("etc/hello", b"changed hello\n");
    fs::remove_file(root.join("etc/layer2-link")).unwrap();
    fs::remove_file(root.join("etc/pipe")).unwrap();
    // `dir` is replaced by a new directory: its old entries must not come back.
    fs::remove_dir_all(root.join("dir")).unwrap();
    fs::create_dir(root.join("dir")).unwrap();
    w("dir/d", b"d\n");
    fs::create_dir_all(root.join("newdir/sub")).unwrap();
    w("newdir/sub/f", &vec![7u8; 70_000]);
    std::os::unix::fs::symlink("../etc/new", root.join("newdir/sym")).unwrap();
    fs::hard_link(root.join("etc/new"), root.join("newdir/hard")).unwrap();
    let st = Command::new("setfattr")
        .args(["-n", "user.strata", "-v", "xattr-value"])
        .arg(root.join("etc/new"))
        .status()
        .expect("setfattr (apt-get install attr)");
    assert!(st.success());
    std::os::unix::fs::chown(root.join("newdir/sub/f"), Some(1000), Some(1001)).unwrap();
    // (Not a hard-linked file: overlayfs' copy-up breaks the link.)
    fs::set_permissions(
        root.join("tmp"),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .unwrap();
}

/// `ctr snapshots diff --keep [--media-type M] KEY` (which writes the blob to stdout):
/// the blob's digest and its tar (gunzipped when it is gzip).
fn ctr_diff(c: &Containerd, sn: &str, key: &str, media: Option<&str>) -> (String, Vec<u8>) {
    let path = c.dir.join("blob");
    let mut cmd = Command::new(c.bin.ctr());
    cmd.arg("-a")
        .arg(&c.sock)
        .arg("-n")
        .arg(&c.namespace)
        .args(["snapshots", "--snapshotter", sn, "diff", "--keep"]);
    if let Some(m) = media {
        cmd.args(["--media-type", m]);
    }
    let out = cmd
        .arg(key)
        .stdout(fs::File::create(&path).unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ctr snapshots diff {key}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let raw = fs::read(&path).unwrap();
    let digest = format!("sha256:{}", oci_image::sha256(&raw));
    let tar = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .unwrap();
        out
    } else {
        raw
    };
    (digest, tar)
}

/// Labels of content DIGEST, from `ctr content ls`.
fn content_labels(c: &Containerd, digest: &str) -> String {
    c.ok(&["content", "ls"])
        .lines()
        .find(|l| l.starts_with(digest))
        .unwrap_or_else(|| panic!("{digest} not in the content store"))
        .to_string()
}

#[test]
fn containerd17_applies_and_diffs_layers_through_strata() {
    let Some(bin) = bin_or_skip() else { return };
    let t = TestDir::new("ctrdiff");
    let cdir = t.join("ctrd");
    let (img, m) = mount_for(&t, &cdir);
    let mnt = m.mnt.clone();
    let archive = t.join("image.tar");
    fs::write(&archive, oci_image::archive(&image_layers(), IMAGE, 1)).unwrap();

    // The diff socket is root's alone, and garbage on it costs the sender its connection.
    let diff_sock = m.diff_socket();
    let md = fs::metadata(&diff_sock).expect("diff socket");
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&md.permissions()) & 0o777,
        0o600
    );
    grpc_garbage::garbage_to(&diff_sock, "/containerd.services.diff.v1.Diff/Apply", &[]);
    grpc_garbage::garbage_to(&diff_sock, "/containerd.services.diff.v1.Diff/Diff", &[]);

    let c = start(&bin, &cdir, &m);
    let plugins = c.ok(&["plugins", "ls"]);
    assert!(
        plugins
            .lines()
            .any(|l| l.contains("io.containerd.differ.v1")
                && l.contains("strata-diff")
                && l.trim_end().ends_with("ok")),
        "strata-diff plugin not ok:\n{plugins}"
    );

    // Import: every layer is applied by Strata, and containerd accepts the digests.
    c.import("strata", &archive);
    assert_eq!(applies_logged(&m), 3, "{}", m.stderr());
    let snaps = snapshots(&c, "strata");
    assert_eq!(snaps.len(), 3, "{snaps:?}");
    assert!(snaps.values().all(|(_, k)| k == "Committed"), "{snaps:?}");
    let run = |c: &Containerd, sn: &str, id: &str| {
        let out = c.ok(&[
            "run",
            "--rm",
            "--snapshotter",
            sn,
            IMAGE,
            id,
            "/bin/sh",
            "-c",
            SCRIPT,
        ]);
        check_run_output(&out);
    };
    run(&c, "strata", "run1");
    // No layer carries the apply marker.
    for (id, l) in m.layers() {
        assert!(
            l["labels"].get(control::labels::APPLYING_LABEL).is_none(),
            "{id}: {l}"
        );
    }

    // The same image on overlayfs: Strata says NotImplemented, the walking differ applies.
    c.import("overlayfs", &archive);
    assert_eq!(applies_logged(&m), 3, "overlayfs layers are not Strata's");
    run(&c, "overlayfs", "run2");

    // A snapshot changed in every way, diffed by Strata ...
    let top = top_of(&snaps);
    c.ok(&[
        "snapshots",
        "--snapshotter",
        "strata",
        "prepare",
        "work",
        &top,
    ]);
    let src = bind_source(&c, "strata", "work");
    assert!(src.starts_with(mnt.to_str().unwrap()), "{src}");
    change_tree(Path::new(&src));
    let (d_strata, tar_strata) = ctr_diff(&c, "strata", "work", None);
    assert_eq!(diffs_logged(&m), 1, "{}", m.stderr());
    assert!(m.stderr().contains(&d_strata), "{}", m.stderr());
    let labels = content_labels(&c, &d_strata);
    assert!(
        labels.contains(&format!(
            "containerd.io/uncompressed=sha256:{}",
            oci_image::sha256(&tar_strata)
        )),
        "{labels}"
    );
    // ... and the same changes on overlayfs, diffed by containerd's walking differ.
    let otop = top_of(&snapshots(&c, "overlayfs"));
    c.ok(&[
        "snapshots",
        "--snapshotter",
        "overlayfs",
        "prepare",
        "work",
        &otop,
    ]);
    let omnt = t.mountpoint("overlay-work");
    let cmdline = c.ok(&[
        "snapshots",
        "--snapshotter",
        "overlayfs",
        "mounts",
        omnt.to_str().unwrap(),
        "work",
    ]);
    let st = Command::new("sh")
        .arg("-c")
        .arg(cmdline.trim())
        .status()
        .unwrap();
    assert!(st.success(), "{cmdline}");
    {
        let _g = testkit::MountGuard::new(&omnt);
        change_tree(&omnt);
    }
    let (_, tar_walk) = ctr_diff(&c, "overlayfs", "work", None);
    assert_eq!(diffs_logged(&m), 1, "overlayfs diffs are not Strata's");

    // Both blobs, applied onto the image's top layer, give the live layer's tree.
    let top_layer = {
        let ls = m.layers();
        ls.iter()
            .find(|(_, l)| {
                // containerd names it `<namespace>/<n>/<name>`.
                l["labels"][control::labels::NAME_LABEL]
                    .as_str()
                    .is_some_and(|n| n.ends_with(&format!("/{top}")))
            })
            .map(|(id, _)| id.clone())
            .expect("the top snapshot's layer")
    };
    for (name, tar) in [("from-strata", &tar_strata), ("from-walking", &tar_walk)] {
        let f = t.join(&format!("{name}.tar"));
        fs::write(&f, tar).unwrap();
        m.cli_ok(&[
            "import",
            "--layer",
            name,
            "--parent",
            &top_layer,
            f.to_str().unwrap(),
        ]);
    }
    let (pa, pb) = (mnt.join("from-strata"), mnt.join("from-walking"));
    let live = testkit::snapshot(Path::new(&src), false);
    let a = testkit::snapshot(&pa, false);
    let mut b = testkit::snapshot(&pb, false);
    // containerd's walking differ keeps only security.capability of a file's xattrs; Strata
    // keeps them all (checked against the live layer above).
    let mut a_noxattr = a.clone();
    for e in a_noxattr.values_mut().chain(b.values_mut()) {
        e.xattrs.clear();
    }
    testkit::assert_snapshots_equal(
        "Strata's diff applied vs the live layer",
        &live,
        Path::new(&src),
        &a,
        &pa,
        false,
    );
    testkit::assert_snapshots_equal(
        "walking diff vs Strata's diff",
        &b,
        &pb,
        &a_noxattr,
        &pa,
        false,
    );
    // Strata's blob says `dir` was replaced with an opaque marker.
    let names = tar_names(&tar_strata);
    assert!(names.contains(&"dir/.wh..wh..opq".to_string()), "{names:?}");
    assert!(
        names.contains(&"etc/.wh.layer2-link".to_string()),
        "{names:?}"
    );
    m.cli_ok(&["layer", "rm", "from-strata"]);
    m.cli_ok(&["layer", "rm", "from-walking"]);

    // An uncompressed diff, as asked.
    let (d_plain, plain) = ctr_diff(
        &c,
        "strata",
        "work",
        Some("application/vnd.oci.image.layer.v1.tar"),
    );
    assert!(m.stderr().contains(&d_plain), "{}", m.stderr());
    assert_eq!(
        tar_names(&plain),
        tar_names(&tar_strata),
        "plain and gzip diffs"
    );
    // Commit the changed snapshot; containerd's GC may take the blobs once unreferenced.
    c.ok(&[
        "snapshots",
        "--snapshotter",
        "strata",
        "commit",
        "work-done",
        "work",
    ]);

    // A layer whose tar escapes the layer: the import fails with Strata's error and leaves no
    // snapshot and no half-applied layer.
    let before: Vec<String> = m.layers().into_keys().collect();
    let mut evil = oci_image::LayerTar::new();
    evil.file("ok", b"fine\n", 0o644);
    let mut evil = evil.finish();
    evil.truncate(evil.len() - 1024);
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(5);
    h.set_mode(0o644);
    // tar's set_path refuses "..": write the name bytes directly.
    h.as_old_mut().name[..9].copy_from_slice(b"../escape");
    h.set_cksum();
    b.append(&h, &b"evil\n"[..]).unwrap();
    evil.extend(b.into_inner().unwrap());
    let bad = t.join("bad.tar");
    fs::write(
        &bad,
        oci_image::archive(&[evil], "docker.io/library/bad:1", 9),
    )
    .unwrap();
    let (ok, _, err) = c.ctr(&[
        "images",
        "import",
        "--snapshotter",
        "strata",
        bad.to_str().unwrap(),
    ]);
    assert!(!ok, "a layer escaping its root was applied");
    assert!(err.contains("escapes the layer"), "{err}");
    // containerd removes the snapshot it prepared (its garbage collector removes the layer
    // soon after); until then the layer is as prepared: empty, unmarked.
    let t0 = std::time::Instant::now();
    loop {
        let ls = m.layers();
        let extra: Vec<&String> = ls.keys().filter(|k| !before.contains(k)).collect();
        if extra.is_empty() {
            break;
        }
        for id in &extra {
            assert!(
                ls[*id]["labels"]
                    .get(control::labels::APPLYING_LABEL)
                    .is_none(),
                "{}",
                ls[*id]
            );
            assert!(!mnt.join(id).join("ok").exists(), "half-applied layer {id}");
        }
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(30),
            "a failed apply left layers behind: {extra:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(!t.join("escape").exists() && !mnt.join("escape").exists());

    // Garbage again, now with well-formed requests naming Strata's layers and containerd's
    // real socket: errors, never a crash.
    let some_layer = format!("{}/{}", mnt.display(), top_layer);
    grpc_garbage::garbage_to(
        &diff_sock,
        "/containerd.services.diff.v1.Diff/Apply",
        &apply_requests(&some_layer),
    );
    grpc_garbage::garbage_to(
        &diff_sock,
        "/containerd.services.diff.v1.Diff/Diff",
        &diff_requests(&some_layer, &format!("{}/default", mnt.display())),
    );
    run(&c, "strata", "run3");

    // Restart containerd and Strata: everything is still there.
    drop(c);
    let _ = m.stop();
    testkit::assert_fsck_clean(&img, "after the diff service's work");
    let m = Mount::start_with(
        &img,
        &mnt,
        &[
            "--containerd-address",
            cdir.join("containerd.sock").to_str().unwrap(),
        ],
    );
    let c = start(&bin, &cdir, &m);
    run(&c, "strata", "run4");
    c.ok(&["images", "rm", "--sync", IMAGE]);
    drop(c);
    testkit::assert_no_panic("strata with containerd 1.7", &m.stderr());
    drop(m);
    testkit::assert_fsck_clean(&img, "at the end");
}

fn tar_names(tar: &[u8]) -> Vec<String> {
    let mut a = tar::Archive::new(tar);
    let mut v: Vec<String> = a
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            String::from_utf8_lossy(&e.path_bytes())
                .trim_end_matches('/')
                .to_string()
        })
        .collect();
    v.sort();
    v
}

// Hand-encoded protobuf (field numbers of diff.proto), so the test needs no gRPC client.
fn pb_bytes(field: u32, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    let mut key = (field << 3 | 2) as u64;
    loop {
        let b = (key & 0x7f) as u8;
        key >>= 7;
        if key == 0 {
            v.push(b);
            break;
        }
        v.push(b | 0x80);
    }
    let mut len = data.len() as u64;
    loop {
        let b = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            v.push(b);
            break;
        }
        v.push(b | 0x80);
    }
    v.extend_from_slice(data);
    v
}

fn mount_msg(ty: &str, src: &str, opts: &[&str]) -> Vec<u8> {
    let mut m = pb_bytes(1, ty.as_bytes());
    m.extend(pb_bytes(2, src.as_bytes()));
    for o in opts {
        m.extend(pb_bytes(4, o.as_bytes()));
    }
    m
}

fn desc_msg(media: &str, digest: &str) -> Vec<u8> {
    let mut d = pb_bytes(1, media.as_bytes());
    d.extend(pb_bytes(2, digest.as_bytes()));
    d
}

fn apply_requests(layer: &str) -> Vec<Vec<u8>> {
    let mut v = Vec::new();
    let mounts = [
        mount_msg("bind", layer, &["rbind", "rw"]),
        mount_msg("bind", "/nonexistent/x", &[]),
        mount_msg("overlay", "overlay", &["lowerdir=/a"]),
        mount_msg("bind", &format!("{layer}/../../x"), &[]),
    ];
    let descs = [
        desc_msg("application/vnd.oci.image.layer.v1.tar+gzip", "sha256:00"),
        desc_msg("application/vnd.oci.image.layer.v1.tar", "not a digest"),
        desc_msg("application/x-junk", ""),
        vec![0xff, 0xff],
    ];
    for m in &mounts {
        for d in &descs {
            let mut r = pb_bytes(1, d);
            r.extend(pb_bytes(2, m));
            v.push(r);
        }
        // No descriptor.
        v.push(pb_bytes(2, m));
        // Two mounts.
        let mut r = pb_bytes(1, &descs[0]);
        r.extend(pb_bytes(2, m));
        r.extend(pb_bytes(2, m));
        v.push(r);
    }
    v
}

fn diff_requests(right: &str, left: &str) -> Vec<Vec<u8>> {
    let mut v = Vec::new();
    for media in ["", "application/vnd.oci.image.layer.v1.tar", "x/y"] {
        for (l, r) in [
            (Some(left), right),
            (None, right),
            (Some(right), left),
            (Some("/nonexistent"), right),
        ] {
            let mut req = Vec::new();
            if let Some(l) = l {
                req.extend(pb_bytes(1, &mount_msg("bind", l, &["ro"])));
            }
            req.extend(pb_bytes(2, &mount_msg("bind", r, &["rw"])));
            req.extend(pb_bytes(3, media.as_bytes()));
            v.push(req);
        }
    }
    v
}

/// While the daemon is down: what containerd does with the snapshotter and the diff service
/// gone (README, "While the daemon is down"), and that it needs no restart afterwards.
#[test]
fn containerd17_while_strata_is_down() {
    let Some(bin) = bin_or_skip() else { return };
    let t = TestDir::new("ctrdown");
    let cdir = t.join("ctrd");
    let (img, m) = mount_for(&t, &cdir);
    let c = start(&bin, &cdir, &m);
    let one = t.join("one.tar");
    fs::write(&one, oci_image::archive(&image_layers(), IMAGE, 1)).unwrap();
    // An image with a layer of its own (not unpacked yet on either snapshotter).
    let mut other = oci_image::LayerTar::new();
    other.file("other", b"another image\n", 0o644);
    let two = t.join("two.tar");
    fs::write(
        &two,
        oci_image::archive(&[other.finish()], "docker.io/library/other:1", 0),
    )
    .unwrap();
    c.import("overlayfs", &one);
    c.import("strata", &one);

    let _ = m.stop();
    // Unpacking anything fails while the diff service, first in containerd's list, is down:
    // containerd stops at a differ that is unavailable instead of trying the next one.
    let (ok, _, err) = c.ctr(&[
        "images",
        "import",
        "--snapshotter",
        "overlayfs",
        two.to_str().unwrap(),
    ]);
    eprintln!("overlayfs import with Strata down: ok={ok} {err}");
    assert!(!ok, "an unpack succeeded although the first differ is down");
    assert!(
        err.contains("connection refused")
            || err.contains("no such file")
            || err.contains("Unavailable")
            || err.contains("unavailable"),
        "{err}"
    );
    // Containers of images already unpacked on overlayfs still run.
    let out = c.ok(&[
        "run",
        "--rm",
        "--snapshotter",
        "overlayfs",
        IMAGE,
        "down1",
        "/bin/sh",
        "-c",
        SCRIPT,
    ]);
    check_run_output(&out);
    // Strata's snapshots are unavailable.
    let (ok, _, err) = c.ctr(&["snapshots", "--snapshotter", "strata", "ls"]);
    eprintln!("strata snapshots with Strata down: ok={ok} {err}");
    assert!(!ok);

    // Back up: containerd reconnects to both sockets by itself.
    let m = Mount::start_with(
        &img,
        &m_mnt(&t),
        &[
            "--containerd-address",
            cdir.join("containerd.sock").to_str().unwrap(),
        ],
    );
    let t0 = std::time::Instant::now();
    loop {
        let (ok, _, err) = c.ctr(&[
            "images",
            "import",
            "--snapshotter",
            "overlayfs",
            two.to_str().unwrap(),
        ]);
        if ok {
            break;
        }
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(60),
            "containerd did not reconnect to the diff service: {err}"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    // (gRPC's reconnect back-off may keep the snapshotter's connection down a little longer.)
    let t0 = std::time::Instant::now();
    while !c.ctr(&["snapshots", "--snapshotter", "strata", "ls"]).0 {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(180),
            "containerd did not reconnect to the snapshotter"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    eprintln!("reconnected after {:?}", t0.elapsed());
    let out = c.ok(&[
        "run",
        "--rm",
        "--snapshotter",
        "strata",
        IMAGE,
        "up1",
        "/bin/sh",
        "-c",
        SCRIPT,
    ]);
    check_run_output(&out);
    c.import("strata", &two);
    drop(c);
    testkit::assert_no_panic("strata", &m.stderr());
    drop(m);
    testkit::assert_fsck_clean(&img, "after the outage");
}

fn m_mnt(t: &TestDir) -> PathBuf {
    t.join("mnt")
}

/// deploy/: containerd.toml is a configuration containerd 1.7 accepts with both proxy plugins,
/// Strata first among the differs and the CRI on Strata; strata-node-setup.sh (what the
/// DaemonSet runs) configures scratch copies of typical node configurations so that
/// containerd accepts them, and a second run changes nothing; the DaemonSet carries the same
/// script; docker-daemon.json asks for the containerd image store on Strata.
#[test]
fn deploy_files_work_with_containerd17() {
    let Some(bin) = bin_or_skip() else { return };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let dump = |cfg: &Path| -> String {
        let out = testkit::run_with_timeout(
            Command::new(bin.containerd())
                .arg("--config")
                .arg(cfg)
                .args(["config", "dump"]),
            std::time::Duration::from_secs(60),
        );
        assert_eq!(
            out.code,
            0,
            "containerd config dump {}: {}",
            cfg.display(),
            out.stderr
        );
        out.stdout
    };
    let check = |d: &str, what: &str| {
        for want in [
            "[proxy_plugins.strata]",
            "[proxy_plugins.strata-diff]",
            "type = \"diff\"",
            "address = \"/run/strata/containerd-diff.sock\"",
            "address = \"/run/strata/containerd-snapshotter.sock\"",
            "default = [\"strata-diff\", \"walking\"]",
            "snapshotter = \"strata\"",
        ] {
            assert!(d.contains(want), "{what}: no {want:?} in\n{d}");
        }
    };
    check(
        &dump(&root.join("containerd.toml")),
        "deploy/containerd.toml",
    );

    let t = TestDir::new("deploy");
    let script = root.join("kubernetes/strata-node-setup.sh");
    let other = t.join("other.toml");
    fs::write(&other, "version = 2\n").unwrap();
    let configs = [
        "version = 2\n".to_string(),
        "version = 2\nroot = \"/var/lib/containerd\"\n\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  \
         snapshotter = \"overlayfs\"\n  default_runtime_name = \"runc\"\n\n\
         [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n"
            .to_string(),
        format!(
            "version = 2\nimports = [\"{}\"]\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  \
             default_runtime_name = \"runc\"\n",
            other.display()
        ),
    ];
    for (i, cfg) in configs.iter().enumerate() {
        let dir = t.join(&format!("node{i}"));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.toml");
        fs::write(&path, cfg).unwrap();
        let run = || {
            let out = testkit::run_with_timeout(
                Command::new("sh")
                    .arg(&script)
                    .env("CONTAINERD_CONFIG", &path)
                    .env("CONTAINERD_DROPIN", dir.join("conf.d/strata.toml"))
                    .env("HOST", "")
                    .env("RESTART", "none")
                    .env(
                        "PATH",
                        format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", bin.dir.display()),
                    ),
                std::time::Duration::from_secs(60),
            );
            assert_eq!(out.code, 0, "node{i}: {}", out.stderr);
            out.stderr
        };
        let first = run();
        assert!(first.contains("restart it to apply"), "node{i}: {first}");
        check(&dump(&path), &format!("node{i}"));
        let again = run();
        assert!(again.contains("nothing changed"), "node{i}: {again}");
    }
    // The DaemonSet's ConfigMap holds the same script.
    let yaml = fs::read_to_string(root.join("kubernetes/strata-daemonset.yaml")).unwrap();
    let embedded: String = yaml
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("strata-node-setup.sh: |"))
        .skip(1)
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    assert_eq!(
        embedded.trim_end(),
        fs::read_to_string(&script).unwrap().trim_end(),
        "strata-daemonset.yaml's ConfigMap differs from strata-node-setup.sh"
    );
    // Docker's daemon.json: the containerd image store on Strata (what tests/docker.rs runs).
    let dj: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(root.join("docker-daemon.json")).unwrap())
            .unwrap();
    assert_eq!(dj["features"]["containerd-snapshotter"], true);
    assert_eq!(dj["storage-driver"], "strata");
}
