//! containerd diff service (`containerd.services.diff.v1.Diff`, a containerd ≥ 1.7 proxy
//! plugin of type `diff`) on a unix socket, served by the daemon (`--diff-socket`).
//!
//! containerd asks every differ in its list in turn until one does not answer
//! NotImplemented, so Strata is listed first and answers only for its own layers:
//!
//! - **Apply** of a layer blob onto mounts that are one bind mount of `<mnt>/<layer>` (an
//!   active snapshot layer, as the snapshotter hands out): the blob is read from containerd's
//!   content store (its gRPC content API on `--containerd-address`), decompressed and applied
//!   inside the daemon by the OCI importer ([`crate::oci::apply_into`]: whiteouts, opaque
//!   directories, no path escaping the layer), with no FUSE round trip. The answer is the
//!   uncompressed tar's digest and size, which containerd checks against the image's diff id.
//!   While applying, the layer carries [`APPLYING_LABEL`]; if the apply fails the layer is put
//!   back as it was prepared (removed and cloned again under the same id and labels), and a
//!   layer still marked when the daemon starts (it died mid-apply) is put back the same way
//!   ([`reset_interrupted_applies`]).
//! - **Diff** (containerd's Compare) of a Strata layer (right) against an empty lower or a
//!   Strata layer whose tree is one of the right layer's ancestors (in practice a view of its
//!   parent): the changes come from the engine ([`engine::diff::diff_trees`], after the
//!   kernel's dirty pages are written back), are written as an OCI layer tar (gzip or plain,
//!   as asked) straight into containerd's content store under the request's ref, with the
//!   request's labels and `containerd.io/uncompressed`, and the blob's descriptor is the answer.
//!
//! Anything else — other mounts, several mounts, media types the importer does not know
//! (encrypted layers), payloads, zstd output — is NotImplemented, and containerd's next
//! differ (`walking`) does it. The request handling is plain synchronous code ([`Differ`]);
//! [`serve`] puts it behind tonic, moving the blob between containerd's content API and a
//! blocking worker through a bounded channel (memory stays bounded: a few 1 MiB pieces).

pub mod content;

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use engine::{Engine, LayerState};
use sha2::{Digest as _, Sha256};
use tonic::Status;

pub use crate::snapshotter::pb::containerd::services::diff::v1 as api;
use crate::snapshotter::pb::containerd::types::{Descriptor, Mount};
use crate::Error;

pub use crate::labels::APPLYING_LABEL;

/// Where the daemon serves the diff service unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/strata/containerd-diff.sock";
/// containerd's socket, where its content store is.
pub const DEFAULT_CONTAINERD_ADDRESS: &str = "/run/containerd/containerd.sock";
/// The content label containerd keeps a compressed layer's diff id in.
pub const UNCOMPRESSED_LABEL: &str = "containerd.io/uncompressed";

pub const MEDIA_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MEDIA_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const DOCKER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
const DOCKER_TAR_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Applies and diffs running at once (each holds a worker thread and a few MiB).
const MAX_JOBS: usize = 4;
/// Size of the pieces a blob moves in between the worker and containerd.
const PIECE: usize = 1 << 20;
/// gzip level of the blobs Diff writes: 1 is about three times faster than the usual 6, for
/// blobs about a tenth larger.
const GZIP_LEVEL: u32 = 1;

/// Whether containerd's applier would know how to decompress `media_type` and the importer
/// can take the result: the OCI and Docker layer types, plain, gzip or zstd (recognised by
/// their magic bytes, as containerd does). Encrypted and unknown types are not ours.
pub fn apply_media_type_supported(media_type: &str) -> bool {
    let base = media_type
        .strip_prefix("application/vnd.oci.image.layer.nondistributable.v1.tar")
        .or_else(|| media_type.strip_prefix("application/vnd.oci.image.layer.v1.tar"))
        .or_else(|| media_type.strip_prefix("application/vnd.docker.image.rootfs.foreign.diff.tar"))
        .or_else(|| media_type.strip_prefix("application/vnd.docker.image.rootfs.diff.tar"));
    matches!(base, Some("" | "+gzip" | "+zstd" | ".gzip"))
}

/// The compression Diff writes for `media_type` (empty: containerd's default, gzip); `None`
/// when Strata does not write that type.
pub fn diff_compression(media_type: &str) -> Option<(bool, &str)> {
    match media_type {
        "" => Some((true, MEDIA_TAR_GZIP)),
        MEDIA_TAR_GZIP | DOCKER_TAR_GZIP => Some((true, media_type)),
        MEDIA_TAR | DOCKER_TAR => Some((false, media_type)),
        _ => None,
    }
}

/// What a request is, for Strata: its layer, or not Strata's (NotImplemented).
#[derive(Debug)]
pub enum Target<T> {
    Ours(T),
    NotOurs(String),
}

/// A reader that hashes and counts what passes through it.
pub struct HashReader<R> {
    inner: R,
    hash: Sha256,
    count: u64,
}

impl<R: Read> HashReader<R> {
    pub fn new(inner: R) -> Self {
        HashReader {
            inner,
            hash: Sha256::new(),
            count: 0,
        }
    }

    /// `sha256:<hex>` and the byte count of what was read.
    pub fn finish(self) -> (String, u64) {
        (hex_digest(self.hash), self.count)
    }
}

impl<R: Read> Read for HashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// A writer that hashes and counts what passes through it.
pub struct HashWriter<W> {
    inner: W,
    hash: Sha256,
    count: u64,
}

impl<W: Write> HashWriter<W> {
    pub fn new(inner: W) -> Self {
        HashWriter {
            inner,
            hash: Sha256::new(),
            count: 0,
        }
    }

    pub fn finish(self) -> (W, String, u64) {
        (self.inner, hex_digest(self.hash), self.count)
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn hex_digest(h: Sha256) -> String {
    let d = h.finalize();
    let mut s = String::with_capacity(7 + 64);
    s.push_str("sha256:");
    for b in d {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// The result of an apply: the uncompressed tar's digest and size, and what it held.
#[derive(Debug)]
pub struct Applied {
    pub digest: String,
    pub size: u64,
    pub report: crate::oci::ImportReport,
}

/// The result of a diff: the blob's digest and size, and the uncompressed tar's digest.
#[derive(Debug, Clone)]
pub struct Written {
    pub digest: String,
    pub size: u64,
    pub uncompressed: String,
}

/// The request handling, without the transport: shared by the gRPC service and the tests.
pub struct Differ {
    engine: Arc<Engine>,
    mountpoint: PathBuf,
}

impl Differ {
    pub fn new(engine: Arc<Engine>, mountpoint: PathBuf) -> Differ {
        Differ {
            engine,
            mountpoint: crate::host::absolute_mountpoint(&mountpoint),
        }
    }

    /// The layer `mounts` stand for, when they are one bind mount of `<mnt>/<layer>`.
    pub fn layer_of(&self, mounts: &[Mount]) -> Target<String> {
        let [m] = mounts else {
            return Target::NotOurs(format!("{} mounts, not one bind mount", mounts.len()));
        };
        if m.r#type != "bind" && m.r#type != "rbind" {
            return Target::NotOurs(format!("a {:?} mount", m.r#type));
        }
        let src = Path::new(&m.source);
        let Some(id) = src
            .parent()
            .filter(|p| *p == self.mountpoint)
            .and_then(|_| src.file_name())
            .and_then(|n| n.to_str())
        else {
            return Target::NotOurs(format!("{} is not a Strata layer", m.source));
        };
        if self.engine.layer_stat(id).is_err() {
            return Target::NotOurs(format!("{} is not a Strata layer", m.source));
        }
        Target::Ours(id.to_string())
    }

    /// The containerd namespace snapshot layer `layer` belongs to. containerd 1.7 sends a
    /// proxy differ no namespace, but its snapshotter names every snapshot
    /// `<namespace>/<n>/<key>`, and the snapshotter keeps that name in [`NAME_LABEL`].
    ///
    /// [`NAME_LABEL`]: crate::labels::NAME_LABEL
    pub fn namespace_of(&self, layer: &str) -> Option<String> {
        let info = self.engine.layer_stat(layer).ok()?;
        let name = info.labels.get(crate::labels::NAME_LABEL)?;
        let mut parts = name.splitn(3, '/');
        let (ns, n, key) = (parts.next()?, parts.next()?, parts.next()?);
        (!ns.is_empty() && !key.is_empty() && n.parse::<u64>().is_ok()).then(|| ns.to_string())
    }

    /// Apply the layer blob `blob` (compressed or not) onto active layer `layer`. On failure
    /// the layer is put back as it was.
    pub fn apply(&self, layer: &str, blob: impl Read) -> Result<Applied, Error> {
        let info = self.engine.layer_stat(layer)?;
        let view = info
            .labels
            .get(crate::labels::KIND_LABEL)
            .map(String::as_str)
            == Some("view");
        if info.state != LayerState::Active || view || !info.children.is_empty() {
            return Err(Error::Busy(format!(
                "layer {layer} is not an active snapshot: cannot apply a layer onto it"
            )));
        }
        if info.labels.contains_key(APPLYING_LABEL) {
            return Err(Error::Busy(format!(
                "layer {layer}: another apply is running"
            )));
        }
        let mut marked = info.labels.clone();
        marked.insert(APPLYING_LABEL.into(), "1".into());
        self.engine.layer_set_labels(layer, marked)?;
        let res = (|| -> Result<Applied, Error> {
            let input = crate::oci::decompress(blob, crate::oci::Compression::Auto)?;
            let mut h = HashReader::new(input);
            let report = crate::oci::apply_into(&self.engine, layer, &mut h)?;
            // containerd's digest covers the whole stream, padding after the tar included.
            io::copy(&mut h, &mut io::sink()).map_err(|e| {
                Error::Invalid(format!("reading the layer after its end-of-archive: {e}"))
            })?;
            let (digest, size) = h.finish();
            Ok(Applied {
                digest,
                size,
                report,
            })
        })();
        match res {
            Ok(a) => {
                self.engine.layer_set_labels(layer, info.labels)?;
                Ok(a)
            }
            Err(e) => {
                log::warn!(
                    "apply onto layer {layer} failed ({e}); putting the layer back as it was"
                );
                if let Err(e2) = reset_layer(&self.engine, &info) {
                    log::error!("cannot put layer {layer} back after a failed apply: {e2}");
                }
                Err(e)
            }
        }
    }

    /// The (left, right) layers of a Diff request, or why it is not Strata's.
    pub fn diff_target(&self, left: &[Mount], right: &[Mount]) -> Target<(Option<String>, String)> {
        let r = match self.layer_of(right) {
            Target::Ours(r) => r,
            Target::NotOurs(why) => return Target::NotOurs(format!("upper: {why}")),
        };
        if left.is_empty() {
            return Target::Ours((None, r));
        }
        match self.layer_of(left) {
            Target::Ours(l) => Target::Ours((Some(l), r)),
            Target::NotOurs(why) => Target::NotOurs(format!("lower: {why}")),
        }
    }

    /// Write the changes of layer `right` against `left` (nothing: everything in `right`) as an
    /// OCI layer tar, gzip-compressed when `gzip`, to `out`. `left` must hold the tree of one
    /// of `right`'s ancestors (a view of its parent, say), else the diff is not Strata's to
    /// compute (`Ok(Target::NotOurs)`).
    pub fn diff(
        &self,
        left: Option<&str>,
        right: &str,
        gzip: bool,
        out: impl Write,
    ) -> Result<Target<Written>, Error> {
        // An active layer's files may have dirty pages in the kernel.
        let t0 = std::time::Instant::now();
        self.engine.flush_kernel_cache();
        let flushed = t0.elapsed();
        let found = self.engine.with_layers(|ls| {
            let rs = ls
                .slot_of(right.as_bytes())
                .ok_or_else(|| Error::NotFound(format!("layer {right} does not exist")))?;
            let rl = ls
                .get(rs)
                .ok_or_else(|| Error::NotFound(format!("layer {right} does not exist")))?;
            let Some(left) = left else {
                return Ok(Some((rs, rl.tree.clone(), None)));
            };
            let lt = ls
                .slot_of(left.as_bytes())
                .and_then(|s| ls.get(s))
                .map(|l| l.tree.clone())
                .ok_or_else(|| Error::NotFound(format!("layer {left} does not exist")))?;
            // The lower tree must be an ancestor's: only then do inode numbers mean the same
            // file in both trees.
            let mut a = rl.parent;
            while let Some(s) = a {
                let Some(al) = ls.get(s) else { break };
                if al.tree.inodes.diff(&lt.inodes).next().is_none() {
                    return Ok(Some((rs, rl.tree.clone(), Some(lt))));
                }
                a = al.parent;
            }
            Ok::<_, Error>(None)
        })?;
        let Some((slot, tree, base)) = found else {
            return Ok(Target::NotOurs(format!(
                "layer {} is not an ancestor's tree of layer {right}",
                left.unwrap_or("")
            )));
        };
        let changes = engine::diff::diff_trees(base.as_ref(), &tree);
        let diffed = t0.elapsed();
        let blob = HashWriter::new(out);
        let (blob, uncompressed) = if gzip {
            let gz = flate2::write::GzEncoder::new(blob, flate2::Compression::new(GZIP_LEVEL));
            let mut tarw = HashWriter::new(gz);
            crate::oci::export_changes(&self.engine, right, slot, &tree, &changes, &mut tarw)?;
            let (gz, udigest, _) = tarw.finish();
            (gz.finish().map_err(write_err)?, udigest)
        } else {
            let mut tarw = HashWriter::new(blob);
            crate::oci::export_changes(&self.engine, right, slot, &tree, &changes, &mut tarw)?;
            let (blob, udigest, _) = tarw.finish();
            (blob, udigest)
        };
        let (_, digest, size) = blob.finish();
        log::info!(
            "diff service: diff of layer {right}: {} changes; kernel write-back {:.3} s, diff {:.3} s, tar{} {:.3} s",
            changes.len(),
            flushed.as_secs_f64(),
            (diffed - flushed).as_secs_f64(),
            if gzip { "+gzip" } else { "" },
            (t0.elapsed() - diffed).as_secs_f64()
        );
        Ok(Target::Ours(Written {
            digest,
            size,
            uncompressed,
        }))
    }
}

fn write_err(e: io::Error) -> Error {
    Error::Unavailable(format!("writing the layer blob: {e}"))
}

/// Put `info`'s layer back as it was prepared: removed, then cloned again from its parent (or
/// created empty) under the same id and labels (without the apply marker).
fn reset_layer(engine: &Engine, info: &engine::LayerInfo) -> Result<(), Error> {
    let mut labels = info.labels.clone();
    labels.remove(APPLYING_LABEL);
    engine.layer_remove(&info.id)?;
    match &info.parent {
        Some(p) => engine.layer_clone(p, &info.id, LayerState::Active, labels)?,
        None => engine.layer_create(&info.id, labels)?,
    };
    Ok(())
}

/// Put back the layers an apply was filling when the previous daemon died (still marked with
/// [`APPLYING_LABEL`]): each becomes again the empty snapshot containerd prepared, so
/// containerd's retry (or its cleanup) finds it as it left it. The daemon calls this at
/// start. Returns the ids put back.
pub fn reset_interrupted_applies(engine: &Engine) -> Vec<String> {
    let mut out = Vec::new();
    for l in engine.layer_list() {
        if l.state != LayerState::Active
            || !l.children.is_empty()
            || !l.labels.contains_key(APPLYING_LABEL)
        {
            continue;
        }
        match reset_layer(engine, &l) {
            Ok(()) => {
                log::warn!(
                    "layer {}: an apply was interrupted; the snapshot is empty again",
                    l.id
                );
                out.push(l.id);
            }
            Err(e) => log::error!(
                "cannot reset layer {} after an interrupted apply: {e}",
                l.id
            ),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// gRPC
// ---------------------------------------------------------------------------------------------

/// A `Read` over pieces sent from the async side.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    cur: Vec<u8>,
    pos: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos >= self.cur.len() {
            match self.rx.blocking_recv() {
                Some(Ok(d)) => {
                    self.cur = d;
                    self.pos = 0;
                }
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// A `Write` that sends 1 MiB pieces to the async side.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<Vec<u8>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let piece = std::mem::replace(&mut self.buf, Vec::with_capacity(PIECE));
        self.tx.blocking_send(piece).map_err(|_| {
            io::Error::new(
                io::ErrorKind::BrokenPipe,
                "containerd's content store stopped taking the blob",
            )
        })
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(PIECE - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= PIECE {
            self.send()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

struct Service {
    differ: Arc<Differ>,
    containerd: PathBuf,
    jobs: Arc<tokio::sync::Semaphore>,
}

fn namespace<T>(r: &tonic::Request<T>) -> Option<String> {
    r.metadata()
        .get(content::NAMESPACE_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn not_ours(what: &str, why: &str) -> Status {
    log::debug!("diff service {what}: not Strata's ({why}); the next differ takes it");
    Status::unimplemented(format!("strata: {why}"))
}

fn unique_ref() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "strata-diff-{}-{t}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

impl Service {
    async fn apply(
        &self,
        r: tonic::Request<api::ApplyRequest>,
    ) -> Result<api::ApplyResponse, Status> {
        let ns = namespace(&r);
        let r = r.into_inner();
        let Some(desc) = r.diff else {
            return Err(Status::invalid_argument("apply without a diff descriptor"));
        };
        let layer = match self.differ.layer_of(&r.mounts) {
            Target::Ours(l) => l,
            Target::NotOurs(why) => return Err(not_ours("apply", &why)),
        };
        if !r.payloads.is_empty() {
            return Err(not_ours("apply", "stream processor payloads"));
        }
        if !apply_media_type_supported(&desc.media_type) {
            return Err(not_ours(
                "apply",
                &format!("media type {:?}", desc.media_type),
            ));
        }
        let _permit = self
            .jobs
            .acquire()
            .await
            .map_err(|_| Status::unavailable("shutting down"))?;
        let t0 = std::time::Instant::now();
        let store = content::ContentStore {
            address: self.containerd.clone(),
            namespace: ns.or_else(|| self.differ.namespace_of(&layer)),
        };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let differ = self.differ.clone();
        let layer2 = layer.clone();
        let job = tokio::task::spawn_blocking(move || {
            let reader = ChannelReader {
                rx,
                cur: Vec::new(),
                pos: 0,
            };
            differ.apply(&layer2, reader)
        });
        let read = store.read_into(&desc.digest, tx).await;
        let applied = job
            .await
            .map_err(|e| Status::internal(format!("apply worker: {e}")))?;
        // A content store error explains a failed apply better than the truncated tar it
        // caused.
        if let (Err(s), Err(_)) = (&read, &applied) {
            return Err(s.clone());
        }
        let a = applied.map_err(|e| {
            log::warn!("apply of {} onto layer {layer}: {e}", desc.digest);
            Status::from(e)
        })?;
        log::info!(
            "diff service: applied {} onto layer {layer}: {} entries, {} bytes of tar, {:.3} s",
            desc.digest,
            a.report.entries,
            a.size,
            t0.elapsed().as_secs_f64()
        );
        Ok(api::ApplyResponse {
            applied: Some(Descriptor {
                media_type: MEDIA_TAR.into(),
                digest: a.digest,
                size: a.size as i64,
                annotations: Default::default(),
            }),
        })
    }

    async fn diff(&self, r: tonic::Request<api::DiffRequest>) -> Result<api::DiffResponse, Status> {
        let ns = namespace(&r);
        let r = r.into_inner();
        let Some((gzip, media_type)) = diff_compression(&r.media_type) else {
            return Err(not_ours("diff", &format!("media type {:?}", r.media_type)));
        };
        let media_type = media_type.to_string();
        let (left, right) = match self.differ.diff_target(&r.left, &r.right) {
            Target::Ours(t) => t,
            Target::NotOurs(why) => return Err(not_ours("diff", &why)),
        };
        let _permit = self
            .jobs
            .acquire()
            .await
            .map_err(|_| Status::unavailable("shutting down"))?;
        let t0 = std::time::Instant::now();
        let store = content::ContentStore {
            address: self.containerd.clone(),
            namespace: ns.or_else(|| self.differ.namespace_of(&right)),
        };
        let reference = if r.r#ref.is_empty() {
            unique_ref()
        } else {
            r.r#ref.clone()
        };
        let (piece_tx, piece_rx) = tokio::sync::mpsc::channel(4);
        let (commit_tx, commit_rx) = tokio::sync::oneshot::channel();
        let differ = self.differ.clone();
        let mut labels: BTreeMap<String, String> = r.labels.into_iter().collect();
        let job = tokio::task::spawn_blocking(move || {
            let mut w = ChannelWriter {
                tx: piece_tx,
                buf: Vec::with_capacity(PIECE),
            };
            let res = differ
                .diff(left.as_deref(), &right, gzip, &mut w)
                .and_then(|t| {
                    w.flush().map_err(write_err)?;
                    Ok(t)
                });
            drop(w);
            let commit = match &res {
                Ok(Target::Ours(wr)) => {
                    labels.insert(UNCOMPRESSED_LABEL.into(), wr.uncompressed.clone());
                    Some(content::Commit {
                        size: wr.size,
                        digest: wr.digest.clone(),
                        labels,
                    })
                }
                _ => None,
            };
            let _ = commit_tx.send(commit);
            res
        });
        let wrote = store.write(&reference, piece_rx, commit_rx).await;
        let res = job
            .await
            .map_err(|e| Status::internal(format!("diff worker: {e}")))?;
        let written = match res {
            Ok(Target::Ours(w)) => w,
            Ok(Target::NotOurs(why)) => return Err(not_ours("diff", &why)),
            Err(e) => {
                // The content store's own error explains a broken pipe better.
                wrote?;
                return Err(e.into());
            }
        };
        wrote?;
        log::info!(
            "diff service: wrote the diff of {:?} as {} ({} bytes), {:.3} s",
            r.right.first().map(|m| m.source.as_str()),
            written.digest,
            written.size,
            t0.elapsed().as_secs_f64()
        );
        Ok(api::DiffResponse {
            diff: Some(Descriptor {
                media_type,
                digest: written.digest,
                size: written.size as i64,
                annotations: Default::default(),
            }),
        })
    }
}

#[tonic::async_trait]
impl api::diff_server::Diff for Service {
    async fn apply(
        &self,
        r: tonic::Request<api::ApplyRequest>,
    ) -> Result<tonic::Response<api::ApplyResponse>, Status> {
        Service::apply(self, r).await.map(tonic::Response::new)
    }
    async fn diff(
        &self,
        r: tonic::Request<api::DiffRequest>,
    ) -> Result<tonic::Response<api::DiffResponse>, Status> {
        Service::diff(self, r).await.map(tonic::Response::new)
    }
}

/// The running diff service; dropping it stops the server and removes the socket.
pub struct DifferHandle {
    path: PathBuf,
    stop: Arc<tokio::sync::Notify>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for DifferHandle {
    fn drop(&mut self) {
        self.stop.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Serve the diff service on unix socket `path` (mode 0600, parent created 0700) for the file
/// system mounted at `mountpoint`, reading and writing blobs through containerd's content API
/// at `containerd`.
pub fn serve(
    path: &Path,
    engine: Arc<Engine>,
    mountpoint: PathBuf,
    containerd: PathBuf,
) -> io::Result<DifferHandle> {
    let listener = crate::host::bind_socket(path)?;
    listener.set_nonblocking(true)?;
    let svc = Service {
        differ: Arc::new(Differ::new(engine, mountpoint)),
        containerd,
        jobs: Arc::new(tokio::sync::Semaphore::new(MAX_JOBS)),
    };
    let stop = Arc::new(tokio::sync::Notify::new());
    let stop2 = stop.clone();
    // Timers too: clients send grpc-timeout (Docker does), and tonic's server enforces it.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .max_blocking_threads(MAX_JOBS)
        .build()?;
    let thread = std::thread::Builder::new()
        .name("strata-differ".into())
        .spawn(move || {
            rt.block_on(async move {
                let listener = match tokio::net::UnixListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        log::error!("diff service: cannot use the socket: {e}");
                        return;
                    }
                };
                let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
                let svc = api::diff_server::DiffServer::new(svc);
                if let Err(e) = tonic::transport::Server::builder()
                    .serve_with_incoming_shutdown(svc, incoming, stop2.notified())
                    .await
                {
                    log::error!("diff service: gRPC server failed: {e}");
                }
            })
        })?;
    Ok(DifferHandle {
        path: path.to_path_buf(),
        stop,
        thread: Some(thread),
    })
}
