//! OCI image archives built in memory (an OCI image layout as a tar, what `ctr images import`
//! reads), shared by tests/containerd.rs and the containerd benchmark (bench/src/ctr_bench.rs
//! includes this file).
#![allow(dead_code)]

use std::io::Write;
use std::process::{Command, Stdio};

/// Hex SHA-256 (coreutils' sha256sum: no hashing crate in the build for tests).
pub fn sha256(data: &[u8]) -> String {
    let mut c = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum");
    c.stdin.take().unwrap().write_all(data).unwrap();
    let out = c.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

pub struct LayerTar(tar::Builder<Vec<u8>>);

impl LayerTar {
    pub fn new() -> LayerTar {
        LayerTar(tar::Builder::new(Vec::new()))
    }
    pub fn header(path: &str, t: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_path(path).unwrap();
        h.set_entry_type(t);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h
    }
    pub fn dir(&mut self, p: &str) -> &mut Self {
        let mut h = Self::header(p, tar::EntryType::Directory, 0o755, 0);
        self.0.append_data(&mut h, p, &[][..]).unwrap();
        self
    }
    pub fn file(&mut self, p: &str, data: &[u8], mode: u32) -> &mut Self {
        let mut h = Self::header(p, tar::EntryType::Regular, mode, data.len() as u64);
        self.0.append_data(&mut h, p, data).unwrap();
        self
    }
    pub fn link(&mut self, p: &str, target: &str, t: tar::EntryType) -> &mut Self {
        let mut h = Self::header(p, t, 0o777, 0);
        self.0.append_link(&mut h, p, target).unwrap();
        self
    }
    pub fn fifo(&mut self, p: &str) -> &mut Self {
        let mut h = Self::header(p, tar::EntryType::Fifo, 0o644, 0);
        self.0.append_data(&mut h, p, &[][..]).unwrap();
        self
    }
    pub fn finish(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// An OCI image layout as a tar named `name`, with `layers` (uncompressed tars, bottom first);
/// layer number `gzip_layer` is stored gzip-compressed, the others plain.
pub fn archive(layers: &[Vec<u8>], name: &str, gzip_layer: usize) -> Vec<u8> {
    archive_with_cmd(layers, name, gzip_layer, &["/bin/sh"])
}

/// [`archive`] with the image's default command `cmd`.
pub fn archive_with_cmd(
    layers: &[Vec<u8>],
    name: &str,
    gzip_layer: usize,
    cmd: &[&str],
) -> Vec<u8> {
    let mut blobs: Vec<(String, Vec<u8>)> = Vec::new();
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        diff_ids.push(format!("\"sha256:{}\"", sha256(l)));
        let (blob, mt) = if i == gzip_layer {
            (gzip(l), "application/vnd.oci.image.layer.v1.tar+gzip")
        } else {
            (l.clone(), "application/vnd.oci.image.layer.v1.tar")
        };
        let d = sha256(&blob);
        descs.push(format!(
            r#"{{"mediaType":"{mt}","digest":"sha256:{d}","size":{}}}"#,
            blob.len()
        ));
        blobs.push((d, blob));
    }
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{"Env":["PATH=/bin"],"Cmd":[{}]}},"rootfs":{{"type":"layers","diff_ids":[{}]}}}}"#,
        cmd.iter()
            .map(|c| format!("\"{c}\""))
            .collect::<Vec<_>>()
            .join(","),
        diff_ids.join(",")
    );
    let cd = sha256(config.as_bytes());
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{cd}","size":{}}},"layers":[{}]}}"#,
        config.len(),
        descs.join(",")
    );
    let md = sha256(manifest.as_bytes());
    let index = format!(
        r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{md}","size":{},"platform":{{"architecture":"amd64","os":"linux"}},"annotations":{{"io.containerd.image.name":"{name}","org.opencontainers.image.ref.name":"1"}}}}]}}"#,
        manifest.len()
    );
    blobs.push((cd, config.into_bytes()));
    blobs.push((md, manifest.into_bytes()));
    let mut t = LayerTar::new();
    t.file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#, 0o644)
        .file("index.json", index.as_bytes(), 0o644)
        .dir("blobs")
        .dir("blobs/sha256");
    for (d, b) in &blobs {
        t.file(&format!("blobs/sha256/{d}"), b, 0o644);
    }
    t.finish()
}
