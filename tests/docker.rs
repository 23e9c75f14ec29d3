//! Docker on Strata: Debian 13's dockerd 26 with the containerd image store, on a private
//! containerd 1.7 that has Strata as a proxy snapshotter and diff service, storage driver
//! `strata` — and, in the same test, a second dockerd on the same containerd with storage
//! driver `overlayfs`, as the reference. Everything runs without a network: the base image is
//! built in the test (a static busybox) and loaded with `docker load`.
//!
//! Checked: `docker load` (layers applied by Strata's diff service), `docker run`, a
//! multi-stage `docker build` (COPY, COPY --from, RUN steps that write, delete and replace
//! files, hard links, symlinks, owners, set-id modes, a directory replaced by a new one, a
//! fifo, many small files), `docker commit` of a running container that wrote, deleted and
//! replaced files, and a `docker save` → `docker rmi` → `docker load` round trip. Every image
//! Docker builds or commits on Strata equals, file for file (type, mode, owner, link count,
//! size, contents, symlink target, user xattrs), the same build or commit on overlayfs: both
//! are saved, their layers applied in order onto fresh Strata layers, and the trees compared.
//!
//! (The Dockerfile does not write to an inherited file that has a second hard link: overlayfs'
//! copy-up breaks the link, so the overlayfs image would hold two files where Strata, like
//! ext4, keeps one file with two names. README, "Docker".)

#![forbid(unsafe_code)]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::ctr_image::busybox_image;
use testkit::containerd::{Config, Containerd, Containerd17};
use testkit::docker::Dockerd;
use testkit::{Mount, TestDir};

const BASE: &str = "docker.io/library/stratabox:1";

const DOCKERFILE: &str = r#"FROM stratabox:1 AS base
RUN mkdir -p /work/keep /work/gone /work/opq \
 && echo one > /work/keep/f1 && echo p > /work/keep/plain && echo two > /work/gone/f2 \
 && echo o1 > /work/opq/o1 && echo o2 > /work/opq/o2 \
 && ln -s f1 /work/keep/sym && ln /work/keep/f1 /work/keep/hard \
 && chown 123:456 /work/keep/f1 && chmod 4755 /work/keep/f1 \
 && mkfifo /work/keep/fifo && rm /etc/hello

FROM base AS mid
COPY ctx /ctx
RUN rm -rf /work/gone && echo replaced >> /work/keep/plain \
 && rm -rf /work/opq && mkdir /work/opq && echo o3 > /work/opq/o3 \
 && chmod 2750 /work/opq && echo hello-again > /etc/hello
RUN i=0; while [ $i -lt 300 ]; do echo "file $i" > /work/many-$i; i=$((i+1)); done; \
    rm /work/many-7; mv /work/many-8 /work/moved

FROM stratabox:1
COPY --from=mid /work /work
COPY --from=mid /ctx /ctx2
RUN cat /work/keep/plain > /copied && ls /work/opq > /listing && rm -rf /tmp && mkdir -m 1777 /tmp
"#;

/// Write the build context: the Dockerfile and a directory of files with various modes.
fn build_context(dir: &Path) {
    fs::create_dir_all(dir.join("ctx/sub")).unwrap();
    fs::write(dir.join("Dockerfile"), DOCKERFILE).unwrap();
    fs::write(dir.join("ctx/a.txt"), b"context file\n").unwrap();
    fs::write(dir.join("ctx/sub/big"), vec![0x5au8; 300_000]).unwrap();
    fs::write(dir.join("ctx/run.sh"), b"#!/bin/sh\necho run\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir.join("ctx/run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("a.txt", dir.join("ctx/link")).unwrap();
}

/// `docker save TAG`, its layers (bottom first) written to files under `dir`.
fn saved_layers(d: &Dockerd, tag: &str, dir: &Path) -> Vec<PathBuf> {
    fs::create_dir_all(dir).unwrap();
    let tarball = dir.join("saved.tar");
    d.ok(&["save", "-o", tarball.to_str().unwrap(), tag]);
    let mut blobs: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut ar = tar::Archive::new(fs::File::open(&tarball).unwrap());
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let p = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        blobs.insert(p, data);
    }
    let json = |p: &str| -> serde_json::Value {
        serde_json::from_slice(
            blobs
                .get(p)
                .unwrap_or_else(|| panic!("{p} not in the saved tar")),
        )
        .unwrap()
    };
    let blob_path = |digest: &str| format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"));
    // index.json → (index →)* manifest.
    let mut m = json("index.json");
    loop {
        let d = m["manifests"][0]["digest"].as_str().map(str::to_string);
        match d {
            Some(d) if m["layers"].is_null() => m = json(&blob_path(&d)),
            _ => break,
        }
    }
    let layers = m["layers"].as_array().expect("manifest layers");
    layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let p = blob_path(l["digest"].as_str().unwrap());
            let out = dir.join(format!("layer-{i}"));
            fs::write(&out, &blobs[&p]).unwrap();
            out
        })
        .collect()
}

/// The file tree of image TAG of daemon `d`: its saved layers applied in order onto new
/// Strata layers `<prefix>-N`. Returns the top layer's path.
fn image_tree(m: &Mount, d: &Dockerd, tag: &str, prefix: &str, dir: &Path) -> PathBuf {
    let layers = saved_layers(d, tag, &dir.join(prefix));
    let mut parent: Option<String> = None;
    for (i, l) in layers.iter().enumerate() {
        let id = format!("{prefix}-{i}");
        let mut args = vec!["import", "--layer", &id];
        if let Some(p) = &parent {
            args.extend(["--parent", p]);
        }
        args.push(l.to_str().unwrap());
        m.cli_ok(&args);
        parent = Some(id);
    }
    m.mnt.join(parent.expect("an image with layers"))
}

fn assert_same_image(m: &Mount, ds: &Dockerd, dov: &Dockerd, tag: &str, dir: &Path) {
    let name = tag.replace([':', '/'], "-");
    let a = image_tree(m, ds, tag, &format!("{name}-strata"), dir);
    let b = image_tree(m, dov, tag, &format!("{name}-overlay"), dir);
    let sa = testkit::snapshot(&a, false);
    let sb = testkit::snapshot(&b, false);
    assert!(sa.len() > 10, "{tag}: {} entries", sa.len());
    testkit::assert_snapshots_equal(
        &format!("image {tag}: overlayfs (expected) vs Strata"),
        &sb,
        &b,
        &sa,
        &a,
        false,
    );
}

fn count_log(m: &Mount, what: &str) -> usize {
    m.stderr().lines().filter(|l| l.contains(what)).count()
}

#[test]
fn docker_on_strata_builds_the_same_images_as_on_overlayfs() {
    if let Some(why) = testkit::docker::skip_reason() {
        eprintln!("SKIP: {why}");
        return;
    }
    let bin = Containerd17::find().unwrap();
    let t = TestDir::new("docker");
    let cdir = t.join("ctrd");
    let img = t.mkfs("8G");
    let m = Mount::start_with(
        &img,
        &t.mountpoint("mnt"),
        &[
            "--containerd-address",
            cdir.join("containerd.sock").to_str().unwrap(),
        ],
    );
    let c = Containerd::start(
        &bin,
        &cdir,
        &Config {
            snapshotter: Some(m.snapshotter_socket()),
            differ: Some(m.diff_socket()),
            ..Default::default()
        },
    );
    let ds = Dockerd::start(&t.join("docker-strata"), &c.sock, "strata");
    let dov = Dockerd::start(&t.join("docker-overlay"), &c.sock, "overlayfs");
    let base = t.join("base.tar");
    fs::write(&base, busybox_image(BASE)).unwrap();

    // docker load: Strata applies the layer.
    for d in [&ds, &dov] {
        d.ok(&["load", "-i", base.to_str().unwrap()]);
    }
    assert_eq!(count_log(&m, "diff service: applied"), 1, "{}", m.stderr());
    // docker run.
    for d in [&ds, &dov] {
        let out = d.ok(&[
            "run",
            "--rm",
            "--network",
            "none",
            "stratabox:1",
            "sh",
            "-c",
            "cat /etc/hello; echo ok > /tmp/x; cat /tmp/x",
        ]);
        assert_eq!(out, "hello\nok\n", "{}", d.snapshotter);
    }

    // docker build, multi-stage, on both; the images are equal file for file.
    let ctx = t.join("context");
    build_context(&ctx);
    let diffs0 = count_log(&m, "diff service: wrote");
    for d in [&ds, &dov] {
        d.ok(&[
            "build",
            "--network",
            "none",
            "-t",
            "built:1",
            ctx.to_str().unwrap(),
        ]);
    }
    assert!(
        count_log(&m, "diff service: wrote") > diffs0,
        "the build's layers were not diffed by Strata:\n{}",
        m.stderr()
    );
    let out = ds.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "built:1",
        "sh",
        "-c",
        "cat /copied; cat /listing; stat -c '%a %u:%g %h' /work/keep/f1; ls /work | wc -l",
    ]);
    assert_eq!(out, "p\nreplaced\no3\n4755 123:456 2\n301\n", "{out}");
    let work = t.join("images");
    assert_same_image(&m, &ds, &dov, "built:1", &work);

    // docker commit of a running container that wrote, deleted and replaced files.
    let script = "mkdir /data && i=0; while [ $i -lt 500 ]; do echo $i > /data/f$i; i=$((i+1)); done; \
                  rm /etc/hello; echo new > /etc/passwd; rm -rf /tmp && mkdir /tmp && echo t > /tmp/t; \
                  ln /data/f1 /data/hard; touch /done; sleep 600";
    for d in [&ds, &dov] {
        d.ok(&[
            "run",
            "-d",
            "--name",
            "c1",
            "--network",
            "none",
            "stratabox:1",
            "sh",
            "-c",
            script,
        ]);
        let t0 = Instant::now();
        while d.docker(&["exec", "c1", "test", "-e", "/done"]).code != 0 {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "the container never finished"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        d.ok(&["commit", "c1", "committed:1"]);
        d.ok(&["rm", "-f", "c1"]);
    }
    assert_same_image(&m, &ds, &dov, "committed:1", &work);

    // docker save → rmi → load round trip on Strata.
    let saved = t.join("built.tar");
    ds.ok(&["save", "-o", saved.to_str().unwrap(), "built:1"]);
    ds.ok(&["rmi", "built:1"]);
    ds.ok(&["load", "-i", saved.to_str().unwrap()]);
    let out = ds.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "built:1",
        "cat",
        "/copied",
    ]);
    assert_eq!(out, "p\nreplaced\n");

    drop(ds);
    drop(dov);
    drop(c);
    testkit::assert_no_panic("strata with docker", &m.stderr());
    drop(m);
    testkit::assert_fsck_clean(&img, "after docker");
}
