//! The control plane's fuzz targets (`fuzz/`, cargo-fuzz on nightly) run on the stable
//! toolchain: each target body gets the committed corpus in `fuzz/corpus/<target>/` and
//! seeded mutations of it, bounded in count and time. The bodies are shared with the
//! cargo-fuzz targets (`fuzz/bodies/control.rs`).

#![forbid(unsafe_code)]

// Included by path, not a dependency: the fuzz crate is outside the workspace (its own lock
// file, nightly cargo-fuzz) and builds the same file into its targets.
#[path = "../../fuzz/bodies/control.rs"]
mod bodies;

use std::path::Path;
use std::time::Duration;

use testkit::fuzz;

/// Where an input that makes a target panic is saved (`<target dir>/tmp/fuzz-crashes/`).
const CRASHES: &str = env!("CARGO_TARGET_TMPDIR");

#[test]
fn fuzz_oci_import_corpus() {
    fuzz::run(
        "oci_import",
        bodies::oci_import,
        20_000,
        Duration::from_secs(4),
        1,
        Path::new(CRASHES),
    );
}

#[test]
fn fuzz_admin_request_corpus() {
    fuzz::run(
        "admin_request",
        bodies::admin_request,
        20_000,
        Duration::from_secs(4),
        2,
        Path::new(CRASHES),
    );
}

#[test]
fn fuzz_snapshotter_corpus() {
    fuzz::run(
        "snapshotter",
        bodies::snapshotter,
        5_000,
        Duration::from_secs(4),
        3,
        Path::new(CRASHES),
    );
}

/// Writes the seed corpus (run by hand:
/// `cargo test --release -p strata-control --test fuzz_corpus -- --ignored write_seed_corpus`).
#[test]
#[ignore]
fn write_seed_corpus() {
    use std::io::Write;
    let put = |target: &str, name: &str, data: &[u8]| {
        let dir = fuzz::corpus_dir(target);
        std::fs::create_dir_all(&dir).expect("corpus dir");
        std::fs::write(dir.join(name), data).expect("write seed");
    };
    let tar_of = |entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]| -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1_700_000_000);
            h.set_size(data.len() as u64);
            if let Some(l) = link {
                h.set_link_name(l).expect("link name");
            }
            // Raw path bytes: the seeds include names the builder would refuse.
            let name = path.as_bytes();
            h.as_old_mut().name[..name.len()].copy_from_slice(name);
            h.set_cksum();
            b.append(&h, *data).expect("append");
        }
        b.into_inner().expect("tar")
    };
    use tar::EntryType as T;
    let simple = tar_of(&[
        ("bin/", T::Directory, b"", None),
        ("bin/sh", T::Regular, b"#!/bin/true\n", None),
        ("bin/ln", T::Link, b"", Some("bin/sh")),
        ("bin/s", T::Symlink, b"", Some("sh")),
        ("etc/.wh.passwd", T::Regular, b"", None),
        ("etc/.wh..wh..opq", T::Regular, b"", None),
    ]);
    put("oci_import", "simple.tar", &simple);
    put(
        "oci_import",
        "escape-dotdot.tar",
        &tar_of(&[("../x", T::Regular, b"out", None)]),
    );
    put(
        "oci_import",
        "escape-symlink.tar",
        &tar_of(&[("abs/shadow", T::Regular, b"out", None)]),
    );
    put(
        "oci_import",
        "escape-hardlink.tar",
        &tar_of(&[("h", T::Link, b"", Some("../../etc/shadow"))]),
    );
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&simple).expect("gzip");
    put("oci_import", "simple.tar.gz", &gz.finish().expect("gzip"));
    put(
        "admin_request",
        "get-layers",
        b"GET /v1/layers HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    put(
        "admin_request",
        "create",
        b"POST /v1/layers HTTP/1.1\r\nContent-Length: 30\r\n\r\n{\"id\":\"a%2Fb\",\"state\":\"view\"}",
    );
    put(
        "admin_request",
        "labels",
        b"PUT /v1/layers/default/labels HTTP/1.1\r\nContent-Length: 24\r\n\r\n{\"labels\":{\"k\":\"v\"}}   ",
    );
    put(
        "admin_request",
        "delete",
        b"DELETE /v1/layers/nope HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
    );
}
