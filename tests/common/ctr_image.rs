//! The test image of the containerd tests (tests/containerd.rs on containerd 1.6,
//! tests/containerd_diff.rs on 1.7 with the diff service): three layers with a static
//! busybox, whiteouts, an opaque directory, hard links, a symlink and a fifo, and the script a
//! container runs to show them.
#![allow(dead_code)]

use std::fs;

use super::oci_image;

pub const IMAGE: &str = "docker.io/library/stratatest:1";

/// The image's layers: a base with busybox, a layer with whiteouts, an opaque directory and
/// hard links, and a layer that changes one file.
pub fn image_layers() -> Vec<Vec<u8>> {
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

pub const SCRIPT: &str =
    "cat /etc/hello; ls /dir; test -e /etc/old && echo old-present || echo old-gone; \
     stat -c '%h %i' /etc/hl1 /etc/hl2; stat -c '%h' /etc/layer2; cat /etc/hello-sym; \
     test -p /etc/pipe && echo fifo; echo written > /tmp/out; cat /tmp/out";

/// What SCRIPT prints in a container of the test image.
pub fn check_run_output(out: &str) {
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

/// A one-layer image for Docker: a static busybox with every applet it has as a symlink in
/// /bin, and /etc/hello, /tmp.
pub fn busybox_image(name: &str) -> Vec<u8> {
    busybox_image_with_cmd(name, &["/bin/sh"])
}

/// [`busybox_image`] whose default command is `cmd`.
pub fn busybox_image_with_cmd(name: &str, cmd: &[&str]) -> Vec<u8> {
    let busybox = fs::read("/bin/busybox").expect("read /bin/busybox");
    let out = std::process::Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .expect("busybox --list");
    let mut l = oci_image::LayerTar::new();
    l.dir("bin").file("bin/busybox", &busybox, 0o755);
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        let applet = applet.trim();
        if applet.is_empty() || applet == "busybox" {
            continue;
        }
        l.link(&format!("bin/{applet}"), "busybox", tar::EntryType::Symlink);
    }
    l.dir("etc")
        .file("etc/hello", b"hello\n", 0o644)
        .file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", 0o644)
        .file("etc/group", b"root:x:0:\n", 0o644)
        .dir("tmp")
        .dir("root");
    oci_image::archive_with_cmd(&[l.finish()], name, 0, cmd)
}
