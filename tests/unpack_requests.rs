//! FUSE requests per file of containerd's unpack (issue 13 asks for them beside `tar -x`'s,
//! which tests/round_trips.rs counts), counted by the daemon (`strata stats --json`:
//! `daemon.fuse_requests`) around `ctr images import` of a one-layer image of 2,040 entries
//! (20 directories of 100 files of 1 B–8 KiB and a symlink each, the shape of
//! round_trips.rs' tar):
//!
//! - containerd 1.7 with Strata's diff service: the layer is applied inside the daemon, so
//!   the unpack sends next to no FUSE requests — asserted (fewer than one per 20 entries).
//! - containerd 1.6 (no diff proxy): containerd's own applier writes the files through the
//!   FUSE mount; its requests per file are printed (run with `--nocapture`) and bounded by
//!   what the kernel sends for such a file (see round_trips.rs): a regression that adds a
//!   round trip per file fails.
//!
//! Either half is skipped (and says why) where its containerd is missing.

#![forbid(unsafe_code)]

mod common;

use std::fs;

use common::oci_image;
use testkit::containerd::{or_skip, Binaries, Config, Containerd, Containerd16, Containerd17};
use testkit::requests::{delta, fuse_requests as requests, table, Counts};
use testkit::{pattern, Mount, TestDir};

const IMAGE: &str = "docker.io/library/stratamany:1";
const DIRS: usize = 20;
const FILES: usize = 100;

/// What file `f` of directory `d` holds: 1 B–8 KiB.
fn file_data(d: usize, f: usize) -> Vec<u8> {
    pattern((d * FILES + f) as u64, 1 + (f * 37) % 8192)
}

/// The image's one layer, and its number of entries (directories, files, symlinks).
fn many_files_layer() -> (Vec<u8>, u64) {
    let mut l = oci_image::LayerTar::new();
    let mut entries = 0;
    for d in 0..DIRS {
        let dir = format!("d{d:03}");
        l.dir(&dir);
        entries += 1;
        for f in 0..FILES {
            l.file(&format!("{dir}/f{f:04}"), &file_data(d, f), 0o644);
            entries += 1;
        }
        l.link(&format!("{dir}/link"), "f0000", tar::EntryType::Symlink);
        entries += 1;
    }
    (l.finish(), entries)
}

/// Imports the image into a private containerd on `m` and returns the FUSE requests the
/// import caused and the layer's number of entries; checks that one file of the layer reads
/// back whole.
fn import(bin: &Binaries, t: &TestDir, m: &Mount, differ: bool) -> (Counts, u64) {
    let archive = t.join("many.tar");
    let (layer, entries) = many_files_layer();
    fs::write(&archive, oci_image::archive(&[layer], IMAGE, 1)).unwrap();
    let mut c = Containerd::start(
        bin,
        &t.join("ctrd"),
        &Config {
            snapshotter: Some(m.snapshotter_socket()),
            differ: differ.then(|| m.diff_socket()),
            ..Default::default()
        },
    );
    let before = requests(m);
    c.import("strata", &archive);
    let d = delta(&before, &requests(m));
    // The unpacked layer holds the files (read through the mount, after counting).
    let layer = m
        .layers()
        .into_keys()
        .find(|id| id.starts_with("snap-"))
        .expect("a layer of the imported snapshot");
    let f = m.mnt.join(&layer).join("d007/f0042");
    assert_eq!(fs::read(&f).unwrap(), file_data(7, 42), "{}", f.display());
    c.stop();
    (d, entries)
}

#[test]
fn containerd17_unpacks_inside_the_daemon_without_fuse_requests() {
    let Some(bin) = or_skip(Containerd17::find()) else {
        return;
    };
    let t = TestDir::new("unpack-req-17");
    let img = t.mkfs("2G");
    let mnt = t.mountpoint("mnt");
    let sock = t.join("ctrd").join("containerd.sock");
    let m = Mount::start_with(
        &img,
        &mnt,
        &["--containerd-address", sock.to_str().unwrap()],
    );
    let (d, entries) = import(&bin, &t, &m, true);
    eprintln!(
        "{}",
        table("containerd 1.7 import, Strata's diff service", &d, entries)
    );
    assert!(
        m.stderr().contains("diff service: applied"),
        "the diff service did not apply the layer:\n{}",
        m.stderr()
    );
    let total: u64 = d.values().sum();
    assert!(
        total * 20 < entries,
        "the unpack went through the FUSE mount: {total} requests for {entries} entries {d:?}"
    );
}

#[test]
fn containerd16_unpack_requests_per_file_stay_what_the_kernel_sends() {
    let Some(bin) = or_skip(Containerd16::find()) else {
        return;
    };
    let t = TestDir::new("unpack-req-16");
    let img = t.mkfs("2G");
    let mnt = t.mountpoint("mnt");
    let m = Mount::start(&img, &mnt);
    let (d, entries) = import(&bin, &t, &m, false);
    eprintln!(
        "{}",
        table("containerd 1.6 import, through the FUSE mount", &d, entries)
    );
    let per = |op: &str| d.get(op).copied().unwrap_or(0) as f64 / entries as f64;
    let total: u64 = d.values().sum();
    // Each file is created (and written) once through the mount.
    assert!(
        per("CREATE") >= 0.95,
        "containerd 1.6 did not unpack through the mount: {d:?}"
    );
    // What the kernel sends per file (round_trips.rs: 10.9 for tar -x) and a margin for
    // containerd's own walk; a round trip more per file than that is a regression.
    assert!(
        (total as f64) < 13.0 * entries as f64,
        "{total} requests for {entries} entries: {d:?}"
    );
    for op in ["RELEASEDIR", "READLINK", "ACCESS"] {
        assert_eq!(d.get(op), None, "the unpack sent {op}: {d:?}");
    }
}
