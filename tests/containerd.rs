//! Strata as a containerd proxy snapshotter, with a real containerd, ctr and runc (Debian's
//! `containerd` and `runc` packages): a private containerd (its own config, root, state and
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
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::oci_image;
use testkit::{Mount, TestDir};

const IMAGE: &str = "docker.io/library/stratatest:1";
const NS: &str = "strata-test";

/// Why this test cannot run here, if it cannot.
fn skip() -> Option<String> {
    if let Some(r) = testkit::skip_reason() {
        return Some(r);
    }
    for c in ["containerd", "ctr", "runc", "containerd-shim-runc-v2"] {
        if testkit::on_path(c).is_none() {
            return Some(format!(
                "{c} is not installed (apt-get install containerd runc)"
            ));
        }
    }
    if !Path::new("/bin/busybox").exists() {
        return Some("/bin/busybox is missing (apt-get install busybox-static)".into());
    }
    None
}

// ---------------------------------------------------------------------------------------
// The test image
// ---------------------------------------------------------------------------------------

/// The image's layers: a base with busybox, a layer with whiteouts, an opaque directory and
/// hard links, and a layer that changes one file.
fn image_layers() -> Vec<Vec<u8>> {
    let busybox = fs::read("/bin/busybox").expect("read /bin/busybox");
    let mut l1 = oci_image::LayerTar::new();
    l1.dir("bin").file("bin/busybox", &busybox, 0o755);
    for applet in ["sh", "cat", "ls", "stat", "echo", "wc"] {
        l1.link(&format!("bin/{applet}"), "busybox", tar::EntryType::Symlink);
    }
    l1.dir("etc")
        .file("etc/hello", b"hello from layer 1\n", 0o644)
        .file("etc/old", b"to be deleted\n", 0o644)
        .file("etc/hl1", b"linked\n", 0o644)
        .link("etc/hl2", "etc/hl1", tar::EntryType::Link)
        .dir("dir")
        .file("dir/a", b"a\n", 0o644)
        .file("dir/b", b"b\n", 0o644)
        .dir("tmp");
    let mut l2 = oci_image::LayerTar::new();
    l2.dir("etc")
        .file("etc/.wh.old", b"", 0o644)
        .file("etc/layer2", b"from layer 2\n", 0o644)
        .link("etc/layer2-link", "etc/layer2", tar::EntryType::Link)
        .link("etc/hello-sym", "hello", tar::EntryType::Symlink)
        .fifo("etc/pipe")
        .dir("dir")
        .file("dir/.wh..wh..opq", b"", 0o644)
        .file("dir/c", b"c\n", 0o644);
    let mut l3 = oci_image::LayerTar::new();
    l3.dir("etc")
        .file("etc/hello", b"hello from layer 3\n", 0o644);
    vec![l1.finish(), l2.finish(), l3.finish()]
}

// ---------------------------------------------------------------------------------------
// A private containerd
// ---------------------------------------------------------------------------------------

struct Containerd {
    child: Option<Child>,
    dir: PathBuf,
    sock: PathBuf,
}

impl Containerd {
    fn config(dir: &Path, snapshotter: &Path) -> PathBuf {
        let cfg = dir.join("config.toml");
        let d = dir.display();
        fs::write(
            &cfg,
            format!(
                r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[proxy_plugins]
  [proxy_plugins.strata]
    type = "snapshot"
    address = "{}"
"#,
                snapshotter.display()
            ),
        )
        .unwrap();
        cfg
    }

    fn start(dir: &Path, snapshotter: &Path) -> Containerd {
        fs::create_dir_all(dir).unwrap();
        let cfg = Self::config(dir, snapshotter);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("containerd.log"))
            .unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn containerd");
        let c = Containerd {
            child: Some(child),
            dir: dir.to_path_buf(),
            sock: dir.join("containerd.sock"),
        };
        let t = Instant::now();
        loop {
            let ok = Command::new("ctr")
                .arg("-a")
                .arg(&c.sock)
                .arg("version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return c;
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "containerd did not come up; log:\n{}",
                c.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// Run `ctr` against this containerd; returns (success, stdout, stderr).
    fn ctr(&self, args: &[&str]) -> (bool, String, String) {
        let out = testkit::run_with_timeout(
            Command::new("ctr")
                .arg("-a")
                .arg(&self.sock)
                .arg("-n")
                .arg(NS)
                .args(args),
            Duration::from_secs(120),
        );
        (out.code == 0, out.stdout, out.stderr)
    }

    fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.ctr(args);
        assert!(
            ok,
            "ctr {args:?} failed:\n{err}\n--- containerd log:\n{}",
            self.log()
        );
        out
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = testkit::sys::kill(c.id(), libc::SIGTERM);
            let t = Instant::now();
            while c.try_wait().ok().flatten().is_none() {
                if t.elapsed() > Duration::from_secs(20) {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        // Shims of this containerd (none should be left: every container runs with --rm).
        let _ = Command::new("pkill")
            .arg("-f")
            .arg(format!(
                "containerd-shim-runc-v2 .*-address {}",
                self.sock.display()
            ))
            .status();
        for m in testkit::mounts_below(&self.dir) {
            let _ = Command::new("umount").arg("-l").arg(&m).status();
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.stop();
    }
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
    let out = m.cli_ok(&["layer", "ls", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("layer ls json");
    v["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| {
            (
                l["id"].as_str().unwrap().to_string(),
                l["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

const SCRIPT: &str =
    "cat /etc/hello; ls /dir; test -e /etc/old && echo old-present || echo old-gone; \
     stat -c '%h %i' /etc/hl1 /etc/hl2; stat -c '%h' /etc/layer2; cat /etc/hello-sym; \
     test -p /etc/pipe && echo fifo; echo written > /tmp/out; cat /tmp/out";

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

fn check_run_output(out: &str) {
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines.len() >= 9, "unexpected container output:\n{out}");
    assert_eq!(lines[0], "hello from layer 3");
    // The opaque directory hides a and b; c comes from layer 2.
    assert_eq!(lines[1], "c");
    assert_eq!(lines[2], "old-gone");
    // Hard links share an inode.
    let (a, b) = (lines[3], lines[4]);
    assert!(a.starts_with("2 "), "hl1 has 2 links: {a}");
    assert_eq!(a, b, "hl1 and hl2 are one inode");
    assert_eq!(lines[5], "2", "layer2 and its link");
    assert_eq!(lines[6], "hello from layer 3", "symlink to hello");
    assert_eq!(lines[7], "fifo");
    assert_eq!(lines[8], "written");
}

#[test]
fn containerd_uses_strata_as_its_snapshotter() {
    if let Some(why) = skip() {
        eprintln!("SKIP: {why}");
        return;
    }
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
    garbage_to(&snap_sock);

    let mut c = Containerd::start(&cdir, &snap_sock);
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
    c.ok(&[
        "images",
        "import",
        "--snapshotter",
        "strata",
        archive.to_str().unwrap(),
    ]);
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
    let c = Containerd::start(&cdir, &snap_sock);
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

/// Send malformed traffic to a gRPC socket, one connection per case.
fn garbage_to(sock: &Path) {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let frame = |typ: u8, flags: u8, stream: u32, payload: &[u8]| {
        let mut f = Vec::new();
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
        f.push(typ);
        f.push(flags);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    };
    // HPACK literal header fields without indexing (no Huffman coding).
    let header = |name: &str, value: &str| {
        let mut h = vec![0x00, name.len() as u8];
        h.extend_from_slice(name.as_bytes());
        h.push(value.len() as u8);
        h.extend_from_slice(value.as_bytes());
        h
    };
    let mut rng = testkit::Rng::new(7);
    let mut cases: Vec<Vec<u8>> = Vec::new();
    for len in [1usize, 24, 100, 5000] {
        cases.push((0..len).map(|_| rng.next_u64() as u8).collect());
    }
    let mut junk = PREFACE.to_vec();
    junk.extend(frame(4, 0, 0, &[]));
    junk.extend(frame(0xee, 0xff, 1, &[1, 2, 3]));
    junk.extend(frame(1, 4, 1, &[0xff; 40]));
    cases.push(junk);
    // A well-formed call to Prepare whose message is not protobuf.
    let mut call = PREFACE.to_vec();
    call.extend(frame(4, 0, 0, &[]));
    let mut hdrs = Vec::new();
    for (k, v) in [
        (":method", "POST"),
        (":scheme", "http"),
        (
            ":path",
            "/containerd.services.snapshots.v1.Snapshots/Prepare",
        ),
        (":authority", "localhost"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ] {
        hdrs.extend(header(k, v));
    }
    call.extend(frame(1, 4, 1, &hdrs));
    let body = [0xffu8; 32];
    let mut grpc = vec![0];
    grpc.extend_from_slice(&(body.len() as u32).to_be_bytes());
    grpc.extend_from_slice(&body);
    call.extend(frame(0, 1, 1, &grpc));
    cases.push(call);
    for case in cases {
        let mut s = UnixStream::connect(sock).expect("connect to the snapshotter socket");
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let _ = s.write_all(&case);
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf);
    }
}

/// deploy/containerd.toml is a configuration containerd accepts, registering the proxy plugin
/// and making Strata CRI's snapshotter.
#[test]
fn deploy_config_parses() {
    if let Some(why) = skip() {
        eprintln!("SKIP: {why}");
        return;
    }
    let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/containerd.toml");
    let out = testkit::run_with_timeout(
        Command::new("containerd")
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
