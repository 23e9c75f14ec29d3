//! Strata as a containerd proxy snapshotter on containerd 1.6 (Debian 12's, which has no diff
//! proxy: containerd unpacks layers through the FUSE mount), with ctr and runc: a private
//! containerd (its own config, root, state and
//! socket under the test directory, CRI off) registers the daemon's snapshotter socket as
//! `[proxy_plugins.strata]`. The test builds a three-layer OCI image in the test (a static
//! busybox, whiteouts, an opaque directory, hard links, a symlink, a fifo), imports it with
//! `ctr images import --snapshotter strata`, runs containers from it, drives prepare / commit /
//! view / label / usage / remove through `ctr snapshots`, restarts containerd and Strata, and
//! lets containerd's garbage collector remove the image's snapshots.

#![forbid(unsafe_code)]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::ctr_image::{check_run_output, image_layers, IMAGE, SCRIPT};
use common::{grpc_garbage, oci_image};
use testkit::containerd::{Binaries, Config, Containerd, Containerd16};
use testkit::{Mount, TestDir};

/// containerd 1.6, or why this test cannot run here.
fn skip() -> Result<Binaries, String> {
    Containerd16::find()
}

fn start(bin: &Binaries, dir: &Path, snap: &Path) -> Containerd {
    Containerd::start(
        bin,
        dir,
        &Config {
            snapshotter: Some(snap.to_path_buf()),
            ..Default::default()
        },
    )
}

/// Snapshot names and kinds as `ctr snapshots ls` prints them.
fn ctr_snapshots(c: &Containerd) -> BTreeMap<String, String> {
    c.ok(&["snapshots", "--snapshotter", "strata", "ls"])
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 2).then(|| (f[0].to_string(), f[f.len() - 1].to_string()))
        })
        .collect()
}

/// Layer ids and states from `strata layer ls --json`.
fn strata_layers(m: &Mount) -> BTreeMap<String, String> {
    m.layers()
        .into_iter()
        .map(|(id, l)| (id, l["state"].as_str().unwrap().to_string()))
        .collect()
}

/// `ctr run --rm` of SCRIPT in a container `id` of the test image on Strata, checking what it
/// prints.
fn run_script(c: &Containerd, id: &str) {
    let out = c.ok(&[
        "run",
        "--rm",
        "--snapshotter",
        "strata",
        IMAGE,
        id,
        "/bin/sh",
        "-c",
        SCRIPT,
    ]);
    check_run_output(&out);
}

#[test]
fn containerd_uses_strata_as_its_snapshotter() {
    let bin = match skip() {
        Ok(b) => b,
        Err(why) => {
            eprintln!("SKIP: {why}");
            return;
        }
    };
    eprintln!("containerd {}", bin.version);
    let t = TestDir::new("containerd");
    let img = t.mkfs("8G");
    let mnt = t.mountpoint("mnt");
    let archive = t.join("image.tar");
    fs::write(&archive, oci_image::archive(&image_layers(), IMAGE, 1)).unwrap();
    let cdir = t.join("ctrd");

    let m = Mount::start(&img, &mnt);
    let snap_sock = m.snapshotter_socket();
    // The snapshotter socket is root's alone.
    let md = fs::metadata(&snap_sock).expect("snapshotter socket");
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&md), 0);
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&md.permissions()) & 0o777,
        0o600
    );
    // A layer made outside containerd: never listed, never collected.
    m.cli_ok(&["layer", "create", "outside"]);

    // Garbage on the snapshotter socket (random bytes, an HTTP/2 preface followed by junk
    // frames, a gRPC call with a corrupt message) costs the sender its connection, nothing else.
    grpc_garbage::garbage_to(
        &snap_sock,
        "/containerd.services.snapshots.v1.Snapshots/Prepare",
        &[],
    );

    let mut c = start(&bin, &cdir, &snap_sock);
    let plugins = c.ok(&["plugins", "ls"]);
    assert!(
        plugins
            .lines()
            .any(|l| l.contains("io.containerd.snapshotter.v1")
                && l.contains("strata")
                && l.trim_end().ends_with("ok")),
        "strata plugin not ok:\n{plugins}"
    );

    // Import: containerd unpacks each layer into a snapshot it prepared on Strata.
    c.import("strata", &archive);
    let snaps = ctr_snapshots(&c);
    assert_eq!(snaps.len(), 3, "three committed layers: {snaps:?}");
    assert!(snaps.values().all(|k| k == "Committed"), "{snaps:?}");
    let layers = strata_layers(&m);
    let snap_layers: Vec<_> = layers.keys().filter(|k| k.starts_with("snap-")).collect();
    assert_eq!(snap_layers.len(), 3, "{layers:?}");
    assert!(layers.contains_key("outside"));
    // The base layer holds busybox byte for byte.
    let busybox = fs::read("/bin/busybox").unwrap();
    assert!(
        snap_layers
            .iter()
            .any(|l| fs::read(mnt.join(l).join("bin/busybox")).ok().as_ref() == Some(&busybox)),
        "no layer holds /bin/busybox"
    );

    // Run a container: the root file system is a Strata layer cloned from the image's top.
    run_script(&c, "run1");
    // --rm removed the container's snapshot.
    assert_eq!(ctr_snapshots(&c).len(), 3);

    // A container that stays: its snapshot is an active layer with the container's label and
    // owns what it wrote.
    c.ok(&[
        "containers",
        "create",
        "--snapshotter",
        "strata",
        IMAGE,
        "keep1",
        "/bin/sh",
    ]);
    let snaps = ctr_snapshots(&c);
    assert_eq!(
        snaps.get("keep1").map(String::as_str),
        Some("Active"),
        "{snaps:?}"
    );
    let mounts = c.ok(&[
        "snapshots",
        "--snapshotter",
        "strata",
        "mounts",
        "/x",
        "keep1",
    ]);
    assert!(
        mounts.contains("mount -t bind") && mounts.contains(&mnt.display().to_string()),
        "mounts: {mounts}"
    );
    let id = mounts
        .split_whitespace()
        .find(|w| w.starts_with(mnt.to_str().unwrap()))
        .and_then(|w| w.rsplit('/').next())
        .unwrap()
        .to_string();
    fs::write(mnt.join(&id).join("tmp/data"), vec![1u8; 3 * 4096]).unwrap();
    let usage = c.ok(&["snapshots", "--snapshotter", "strata", "usage", "keep1"]);
    assert!(
        usage.contains("12.0 KiB") || usage.contains("12 KiB") || usage.contains("12.29 kB"),
        "usage of keep1: {usage}"
    );
    c.ok(&["containers", "rm", "keep1"]);
    assert!(!ctr_snapshots(&c).contains_key("keep1"));

    // Snapshots by hand: prepare on the image's top layer, commit, view, label, remove.
    let parent = {
        // The top of the chain is the committed snapshot that is no other's parent.
        let info = c.ok(&["snapshots", "--snapshotter", "strata", "ls"]);
        let rows: Vec<Vec<String>> = info
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().map(String::from).collect())
            .collect();
        let parents: Vec<&String> = rows
            .iter()
            .filter(|r| r.len() == 3)
            .map(|r| &r[1])
            .collect();
        rows.iter()
            .map(|r| r[0].clone())
            .find(|n| !parents.contains(&n))
            .expect("top layer")
    };
    c.ok(&[
        "snapshots",
        "--snapshotter",
        "strata",
        "prepare",
        "work",
        &parent,
    ]);
    let (ok, _, err) = c.ctr(&[
        "snapshots",
        "--snapshotter",
        "strata",
        "prepare",
        "work",
        &parent,
    ]);
    assert!(!ok && err.contains("already exists"), "{err}");
    c.ok(&[
        "snapshots",
        "--snapshotter",
        "strata",
        "commit",
        "mine",
        "work",
    ]);
    // `ctr snapshots view` sets no gc.root label (prepare and commit do), and the commit
    // above schedules containerd's garbage collector, which may remove an unlabeled view
    // before the test gets to it: label it, and make it again if the collector was first.
    for attempt in 0.. {
        c.ok(&[
            "snapshots",
            "--snapshotter",
            "strata",
            "view",
            "look",
            "mine",
        ]);
        let (labeled, _, _) = c.ctr(&[
            "snapshots",
            "--snapshotter",
            "strata",
            "label",
            "look",
            "containerd.io/gc.root=test",
        ]);
        let (kept, _, _) = c.ctr(&["snapshots", "--snapshotter", "strata", "info", "look"]);
        if labeled && kept {
            break;
        }
        assert!(attempt < 5, "the view keeps disappearing");
    }
    c.ok(&[
        "snapshots",
        "--snapshotter",
        "strata",
        "label",
        "mine",
        "team=storage",
    ]);
    let info = c.ok(&["snapshots", "--snapshotter", "strata", "info", "mine"]);
    assert!(info.contains("\"team\": \"storage\""), "{info}");
    assert!(info.contains("Committed"), "{info}");
    let (ok, _, _) = c.ctr(&["snapshots", "--snapshotter", "strata", "rm", "mine"]);
    assert!(!ok, "a parent of a view must not be removable");
    c.ok(&["snapshots", "--snapshotter", "strata", "rm", "look"]);
    c.ok(&["snapshots", "--snapshotter", "strata", "rm", "mine"]);
    assert_eq!(ctr_snapshots(&c).len(), 3);

    // Restart Strata under a running containerd (an upgrade): containerd reconnects to the
    // socket by itself and sees the same snapshots.
    let before = ctr_snapshots(&c);
    let _ = m.stop();
    let m = Mount::start(&img, &mnt);
    let t0 = Instant::now();
    loop {
        let (ok, out, _) = c.ctr(&["snapshots", "--snapshotter", "strata", "ls"]);
        if ok && out.lines().count() == before.len() + 1 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "containerd did not reconnect to Strata: {out}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(ctr_snapshots(&c), before);

    // Restart containerd and Strata: every committed layer is still there, byte for byte,
    // and containers run again.
    c.stop();
    drop(c);
    let _ = m.stop();
    testkit::assert_fsck_clean(&img, "after containerd use");
    let m = Mount::start(&img, &mnt);
    let c = start(&bin, &cdir, &snap_sock);
    assert_eq!(ctr_snapshots(&c), before);
    run_script(&c, "run2");

    // containerd's garbage collector removes the image's snapshots once the image is gone;
    // the layer made outside containerd stays.
    c.ok(&["images", "rm", "--sync", IMAGE]);
    let t0 = Instant::now();
    while !ctr_snapshots(&c).is_empty() && t0.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        ctr_snapshots(&c).is_empty(),
        "GC left {:?}",
        ctr_snapshots(&c)
    );
    let layers = strata_layers(&m);
    assert_eq!(
        layers.keys().cloned().collect::<Vec<_>>(),
        vec!["default".to_string(), "outside".to_string()],
        "{layers:?}"
    );
    drop(c);
    testkit::assert_no_panic("strata with containerd", &m.stderr());
    drop(m);
    testkit::assert_fsck_clean(&img, "after GC");
}

/// deploy/containerd-1.6.toml is a configuration containerd 1.6 accepts, registering the proxy plugin
/// and making Strata CRI's snapshotter.
#[test]
fn deploy_config_parses() {
    let bin = match skip() {
        Ok(b) => b,
        Err(why) => {
            eprintln!("SKIP: {why}");
            return;
        }
    };
    let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/containerd-1.6.toml");
    let out = testkit::run_with_timeout(
        Command::new(bin.containerd())
            .arg("--config")
            .arg(&cfg)
            .args(["config", "dump"]),
        Duration::from_secs(60),
    );
    assert_eq!(out.code, 0, "containerd config dump: {}", out.stderr);
    assert!(
        out.stdout.contains("[proxy_plugins.strata]"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains(&format!(
            "address = \"{}\"",
            control::snapshotter::DEFAULT_SOCKET
        )),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("snapshotter = \"strata\""),
        "{}",
        out.stdout
    );
}
