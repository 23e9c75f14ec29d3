//! containerd proxy snapshotter: the gRPC service `containerd.services.snapshots.v1.Snapshots`
//! on a unix socket, served by the daemon (`strata mount`/`up`, `--snapshotter-socket`).
//!
//! Every containerd snapshot is a Strata layer: Prepare clones the parent (O(1)), View clones
//! it as a read-only view, Commit freezes the active layer, Remove removes it. containerd
//! names snapshots with free-form keys ("default/4/extract-… sha256:…"), which are no layer ids
//! (`/`, length), so each snapshot layer gets the id `snap-N` and carries its containerd key or
//! name in the label [`NAME_LABEL`]; that label, the update time and the kind of an empty view
//! are kept in labels hidden from containerd. Layers without [`NAME_LABEL`] (made with
//! `strata layer …`) are invisible here, so containerd's garbage collector never sees them.
//!
//! Mounts are bind mounts of `<mountpoint>/<layer-id>` (read-only for views). Usage is the
//! bytes the layer owns (kept by the engine) and the inodes it changed (a diff of the layer's
//! tree against its parent's that skips shared subtrees): no tree walk.
//!
//! The request handling ([`Snapshotter`]) is plain synchronous code over the engine; [`serve`]
//! puts it behind tonic on a single-threaded tokio runtime in its own thread.

pub mod filter;
pub mod pb;

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use engine::{Engine, LayerState, Time};
use tonic::Status;

use self::filter::Filter;
pub use self::pb::containerd::services::snapshots::v1 as api;
pub use self::pb::containerd::types::Mount;
use crate::Error;
use api::Kind;

pub use crate::labels::{KIND_LABEL, NAME_LABEL, UPDATED_LABEL};

/// Where the daemon serves the snapshotter unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/strata/containerd-snapshotter.sock";
/// Prefix of the layer ids the snapshotter makes.
pub const ID_PREFIX: &str = "snap-";
/// containerd limits a label's key and value together to 4096 bytes.
const MAX_LABEL_PAIR: usize = 4096;
/// Infos per List response message.
const LIST_BATCH: usize = 100;

/// One snapshot as containerd sees it.
#[derive(Clone, Debug)]
struct Snap {
    id: String,
    slot: u32,
    kind: Kind,
    parent: String,
    created: Time,
    updated: Time,
    labels: BTreeMap<String, String>,
}

impl Snap {
    fn info(&self, name: &str) -> api::Info {
        api::Info {
            name: name.to_string(),
            parent: self.parent.clone(),
            kind: self.kind as i32,
            created_at: Some(ts(self.created)),
            updated_at: Some(ts(self.updated)),
            labels: self.labels.clone().into_iter().collect(),
        }
    }

    fn kind_str(&self) -> &'static str {
        match self.kind {
            Kind::View => "view",
            Kind::Active => "active",
            Kind::Committed => "committed",
            Kind::Unknown => "unknown",
        }
    }
}

fn ts(t: Time) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.sec,
        nanos: t.nsec.min(999_999_999) as i32,
    }
}

fn parse_time(s: &str) -> Option<Time> {
    let n: i128 = s.parse().ok()?;
    Some(Time {
        sec: n.div_euclid(1_000_000_000) as i64,
        nsec: n.rem_euclid(1_000_000_000) as u32,
    })
}

fn time_label(t: Time) -> String {
    (i128::from(t.sec) * 1_000_000_000 + i128::from(t.nsec)).to_string()
}

fn utf8(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Keys and names are kept in a label, so they share its limit.
fn check_name(what: &str, name: &str) -> Result<(), Error> {
    if name.is_empty() || name.len() > engine::meta::MAX_LABEL {
        return Err(Error::Invalid(format!(
            "snapshot {what} must be 1 to {} bytes long (got {})",
            engine::meta::MAX_LABEL,
            name.len()
        )));
    }
    Ok(())
}

fn not_found(key: &str) -> Error {
    Error::NotFound(format!("snapshot {key:?} does not exist"))
}

/// The request handling, shared by the gRPC service and tests/fuzzing. It fails with
/// [`Error`]; the service answers with the code [`Error::grpc_code`] gives.
pub struct Snapshotter {
    engine: Arc<Engine>,
    mountpoint: PathBuf,
    /// Serialises changes: each looks up names, then changes layers.
    lock: Mutex<()>,
}

impl Snapshotter {
    pub fn new(engine: Arc<Engine>, mountpoint: PathBuf) -> Snapshotter {
        Snapshotter {
            engine,
            mountpoint,
            lock: Mutex::new(()),
        }
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every snapshot layer by containerd name, and the highest `snap-N` number in use.
    fn index(&self) -> (HashMap<String, Snap>, u64) {
        self.engine.with_layers(|ls| {
            let name_of = |slot: u32| -> Option<String> {
                ls.get(slot)?
                    .labels
                    .get(NAME_LABEL.as_bytes())
                    .map(|n| utf8(n))
            };
            let mut out = HashMap::new();
            let mut max = 0;
            for (slot, l) in &ls.map {
                if let Some(n) = std::str::from_utf8(&l.id)
                    .ok()
                    .and_then(|id| id.strip_prefix(ID_PREFIX))
                    .and_then(|n| n.parse::<u64>().ok())
                {
                    max = max.max(n);
                }
                let Some(name) = name_of(*slot) else { continue };
                let get = |k: &str| l.labels.get(k.as_bytes()).map(|v| utf8(v));
                let kind = match l.state {
                    LayerState::Committed => Kind::Committed,
                    LayerState::View => Kind::View,
                    LayerState::Active if get(KIND_LABEL).as_deref() == Some("view") => Kind::View,
                    LayerState::Active => Kind::Active,
                };
                let labels = l
                    .labels
                    .iter()
                    .map(|(k, v)| (utf8(k), utf8(v)))
                    .filter(|(k, _)| !crate::labels::is_reserved(k))
                    .collect();
                out.insert(
                    name,
                    Snap {
                        id: utf8(&l.id),
                        slot: *slot,
                        kind,
                        parent: l.parent.and_then(name_of).unwrap_or_default(),
                        created: l.created,
                        updated: get(UPDATED_LABEL)
                            .and_then(|s| parse_time(&s))
                            .unwrap_or(l.created),
                        labels,
                    },
                );
            }
            (out, max)
        })
    }

    fn find(&self, key: &str) -> Result<Snap, Error> {
        self.index().0.remove(key).ok_or_else(|| not_found(key))
    }

    fn mounts(&self, id: &str, kind: Kind) -> Vec<Mount> {
        let rw = if kind == Kind::View { "ro" } else { "rw" };
        vec![Mount {
            r#type: "bind".into(),
            source: self.mountpoint.join(id).to_string_lossy().into_owned(),
            target: String::new(),
            options: vec!["rbind".into(), rw.into()],
        }]
    }

    /// containerd's labels plus our hidden ones, checked against containerd's limit.
    fn labels(
        user: impl IntoIterator<Item = (String, String)>,
        name: &str,
        extra: &[(&str, &str)],
    ) -> Result<BTreeMap<String, String>, Error> {
        let mut out = BTreeMap::new();
        for (k, v) in user {
            if k.is_empty() {
                return Err(Error::Invalid("label keys may not be empty".into()));
            }
            if k.len() + v.len() > MAX_LABEL_PAIR {
                return Err(Error::Invalid(format!(
                    "label {k:?}: key and value together exceed {MAX_LABEL_PAIR} bytes"
                )));
            }
            if crate::labels::is_reserved(&k) {
                return Err(Error::Invalid(format!(
                    "label {k:?} is reserved for Strata"
                )));
            }
            out.insert(k, v);
        }
        // Limits asked for with containerd labels become the layer's limits.
        let limits = crate::labels::containerd_limits(&out).map_err(Error::Invalid)?;
        let named: BTreeMap<engine::Name, engine::Name> = BTreeMap::new();
        for (k, v) in limits.apply_to(&named) {
            out.insert(
                String::from_utf8_lossy(&k).into_owned(),
                String::from_utf8_lossy(&v).into_owned(),
            );
        }
        out.insert(NAME_LABEL.into(), name.into());
        out.insert(UPDATED_LABEL.into(), time_label(Time::now()));
        for (k, v) in extra {
            out.insert((*k).into(), (*v).into());
        }
        Ok(out)
    }

    fn create(
        &self,
        key: &str,
        parent: &str,
        labels: impl IntoIterator<Item = (String, String)>,
        view: bool,
    ) -> Result<Vec<Mount>, Error> {
        check_name("key", key)?;
        let _g = self.guard();
        let (idx, max) = self.index();
        if idx.contains_key(key) {
            return Err(Error::Exists(format!("snapshot {key:?} already exists")));
        }
        let id = format!("{ID_PREFIX}{}", max + 1);
        let info = if parent.is_empty() {
            let extra: &[(&str, &str)] = if view { &[(KIND_LABEL, "view")] } else { &[] };
            let labels = Self::labels(labels, key, extra)?;
            self.engine.layer_create(&id, labels)?
        } else {
            let p = idx.get(parent).ok_or_else(|| {
                Error::NotFound(format!("parent snapshot {parent:?} does not exist"))
            })?;
            if p.kind != Kind::Committed {
                return Err(Error::Invalid(format!(
                    "parent {parent:?} is not a committed snapshot"
                )));
            }
            let labels = Self::labels(labels, key, &[])?;
            let state = if view {
                LayerState::View
            } else {
                LayerState::Active
            };
            self.engine.layer_clone(&p.id, &id, state, labels)?
        };
        log::debug!("snapshotter: {key:?} is layer {}", info.id);
        let kind = if view { Kind::View } else { Kind::Active };
        Ok(self.mounts(&info.id, kind))
    }

    pub fn prepare(
        &self,
        r: api::PrepareSnapshotRequest,
    ) -> Result<api::PrepareSnapshotResponse, Error> {
        let mounts = self.create(&r.key, &r.parent, r.labels, false)?;
        Ok(api::PrepareSnapshotResponse { mounts })
    }

    pub fn view(&self, r: api::ViewSnapshotRequest) -> Result<api::ViewSnapshotResponse, Error> {
        let mounts = self.create(&r.key, &r.parent, r.labels, true)?;
        Ok(api::ViewSnapshotResponse { mounts })
    }

    pub fn mounts_of(&self, r: api::MountsRequest) -> Result<api::MountsResponse, Error> {
        let s = self.find(&r.key)?;
        if s.kind == Kind::Committed {
            return Err(Error::Busy(format!(
                "snapshot {:?} is committed; only active snapshots and views have mounts",
                r.key
            )));
        }
        Ok(api::MountsResponse {
            mounts: self.mounts(&s.id, s.kind),
        })
    }

    pub fn commit(&self, r: api::CommitSnapshotRequest) -> Result<(), Error> {
        check_name("name", &r.name)?;
        let _g = self.guard();
        let (idx, _) = self.index();
        let s = idx.get(&r.key).ok_or_else(|| not_found(&r.key))?;
        if s.kind != Kind::Active {
            return Err(Error::Busy(format!(
                "snapshot {:?} is {}, not active",
                r.key,
                s.kind_str()
            )));
        }
        if idx.contains_key(&r.name) {
            return Err(Error::Exists(format!(
                "snapshot {:?} already exists",
                r.name
            )));
        }
        // The committed snapshot takes the labels given to Commit (containerd's semantics).
        let labels = Self::labels(r.labels, &r.name, &[])?;
        self.engine.layer_commit_labeled(&s.id, Some(labels))?;
        Ok(())
    }

    pub fn remove(&self, r: api::RemoveSnapshotRequest) -> Result<(), Error> {
        let _g = self.guard();
        let s = self.find(&r.key)?;
        if let Ok(users) = crate::host::read_mount_users(&self.mountpoint, &s.id) {
            if !users.is_empty() {
                return Err(Error::Busy(format!(
                    "snapshot {:?} (layer {}) is mounted at {}",
                    r.key,
                    s.id,
                    users
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        self.engine.layer_remove(&s.id).map_err(|e| match e {
            engine::Error::Busy(_) => Error::Busy(format!(
                "snapshot {:?} has children: remove them first",
                r.key
            )),
            e => e.into(),
        })
    }

    pub fn stat(&self, r: api::StatSnapshotRequest) -> Result<api::StatSnapshotResponse, Error> {
        let s = self.find(&r.key)?;
        Ok(api::StatSnapshotResponse {
            info: Some(s.info(&r.key)),
        })
    }

    pub fn update(
        &self,
        r: api::UpdateSnapshotRequest,
    ) -> Result<api::UpdateSnapshotResponse, Error> {
        let info = r
            .info
            .ok_or_else(|| Error::Invalid("update without info".into()))?;
        let _g = self.guard();
        let s = self.find(&info.name)?;
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let mut labels = s.labels.clone();
        if paths.is_empty() {
            labels = info.labels.clone().into_iter().collect();
        }
        for p in &paths {
            if let Some(k) = p.strip_prefix("labels.") {
                match info.labels.get(k) {
                    Some(v) if !v.is_empty() => labels.insert(k.to_string(), v.clone()),
                    _ => labels.remove(k),
                };
            } else if p == "labels" {
                labels = info.labels.clone().into_iter().collect();
            } else {
                return Err(Error::Invalid(format!(
                    "cannot update {p:?} of snapshot {:?}: only labels may change",
                    info.name
                )));
            }
        }
        labels.retain(|_, v| !v.is_empty());
        let extra: &[(&str, &str)] = if s.kind == Kind::View && s.parent.is_empty() {
            &[(KIND_LABEL, "view")]
        } else {
            &[]
        };
        let all = Self::labels(labels, &info.name, extra)?;
        self.engine.layer_set_labels(&s.id, all)?;
        let s = self.find(&info.name)?;
        Ok(api::UpdateSnapshotResponse {
            info: Some(s.info(&info.name)),
        })
    }

    /// The matching snapshots, in batches of at most [`LIST_BATCH`].
    pub fn list(
        &self,
        r: api::ListSnapshotsRequest,
    ) -> Result<Vec<api::ListSnapshotsResponse>, Error> {
        let f = Filter::parse_all(&r.filters).map_err(|e| Error::Invalid(e.0))?;
        let (idx, _) = self.index();
        let mut names: Vec<&String> = idx.keys().collect();
        names.sort();
        let infos: Vec<api::Info> = names
            .into_iter()
            .filter(|n| {
                let s = &idx[*n];
                f.matches(|p| match (p.first().map(String::as_str), p.len()) {
                    (Some("name"), 1) => Some((*n).clone()),
                    (Some("parent"), 1) => Some(s.parent.clone()),
                    (Some("kind"), 1) => Some(s.kind_str().to_string()),
                    (Some("labels"), n) if n > 1 => s.labels.get(&p[1..].join(".")).cloned(),
                    _ => None,
                })
            })
            .map(|n| idx[n].info(n))
            .collect();
        Ok(infos
            .chunks(LIST_BATCH)
            .map(|c| api::ListSnapshotsResponse { info: c.to_vec() })
            .collect())
    }

    pub fn usage(&self, r: api::UsageRequest) -> Result<api::UsageResponse, Error> {
        let s = self.find(&r.key)?;
        // Clone the two trees under the lock (pointer copies), diff outside it.
        let (owned, trees) = self.engine.with_layers(|ls| {
            let Some(l) = ls.get(s.slot) else {
                return (0, None);
            };
            let p = l
                .parent
                .and_then(|p| ls.get(p))
                .map(|p| p.tree.inodes.clone());
            (l.owned, Some((p, l.tree.inodes.clone())))
        });
        let Some((parent, mine)) = trees else {
            return Err(not_found(&r.key));
        };
        let inodes = match parent {
            Some(p) => p
                .diff(&mine)
                .filter(|d| !matches!(d, imbl::ordmap::DiffItem::Remove(..)))
                .count() as u64,
            None => mine.len() as u64,
        };
        Ok(api::UsageResponse {
            size: (owned * engine::format::BLOCK) as i64,
            inodes: inodes as i64,
        })
    }

    /// Nothing to do: a removed layer's blocks are free as soon as the removal is durable.
    pub fn cleanup(&self, _r: api::CleanupRequest) -> Result<(), Error> {
        Ok(())
    }

    /// Handle one protobuf-encoded request for `method` (the gRPC method name, e.g.
    /// `Prepare`) and return the encoded response(s): what the gRPC service does, without the
    /// transport. Used by the fuzz target; a message that does not decode is InvalidArgument.
    pub fn call_encoded(&self, method: &str, body: &[u8]) -> Result<Vec<Vec<u8>>, Status> {
        use prost::Message;
        fn dec<M: Message + Default>(b: &[u8]) -> Result<M, Error> {
            M::decode(b).map_err(|e| Error::Invalid(format!("bad request: {e}")))
        }
        Ok(match method {
            "Prepare" => {
                let r = self.prepare(dec(body)?)?;
                vec![r.encode_to_vec()]
            }
            "View" => {
                let r = self.view(dec(body)?)?;
                vec![r.encode_to_vec()]
            }
            "Mounts" => {
                let r = self.mounts_of(dec(body)?)?;
                vec![r.encode_to_vec()]
            }
            "Commit" => {
                self.commit(dec(body)?)?;
                vec![Vec::new()]
            }
            "Remove" => {
                self.remove(dec(body)?)?;
                vec![Vec::new()]
            }
            "Stat" => {
                let r = self.stat(dec(body)?)?;
                vec![r.encode_to_vec()]
            }
            "Update" => {
                let r = self.update(dec(body)?)?;
                vec![r.encode_to_vec()]
            }
            "List" => self
                .list(dec(body)?)?
                .iter()
                .map(|b| b.encode_to_vec())
                .collect(),
            "Usage" => {
                let r = self.usage(dec(body)?)?;
                vec![r.encode_to_vec()]
            }
            "Cleanup" => {
                self.cleanup(dec(body)?)?;
                vec![Vec::new()]
            }
            m => return Err(Status::unimplemented(format!("no method {m:?}"))),
        })
    }
}

/// The methods of the service, in the order of the proto (for [`Snapshotter::call_encoded`]).
pub const METHODS: [&str; 10] = [
    "Prepare", "View", "Mounts", "Commit", "Remove", "Stat", "Update", "List", "Usage", "Cleanup",
];

// ---------------------------------------------------------------------------------------------
// gRPC
// ---------------------------------------------------------------------------------------------

struct Service(Arc<Snapshotter>);

type Res<T> = Result<tonic::Response<T>, Status>;

impl Service {
    /// Run a handler (on the server's one thread: a change waits for its journal commit, well
    /// under a millisecond, and containerd's calls are short).
    async fn run<T: Send + 'static>(
        &self,
        what: &'static str,
        f: impl FnOnce(&Snapshotter) -> Result<T, Error> + Send + 'static,
    ) -> Res<T> {
        let s = self.0.clone();
        let out = f(&s);
        if let Err(e) = &out {
            log::debug!("snapshotter {what}: {:?}: {}", e.grpc_code(), e.message());
        }
        out.map(tonic::Response::new).map_err(Status::from)
    }
}

#[tonic::async_trait]
impl api::snapshots_server::Snapshots for Service {
    async fn prepare(
        &self,
        r: tonic::Request<api::PrepareSnapshotRequest>,
    ) -> Res<api::PrepareSnapshotResponse> {
        self.run("prepare", move |s| s.prepare(r.into_inner()))
            .await
    }
    async fn view(
        &self,
        r: tonic::Request<api::ViewSnapshotRequest>,
    ) -> Res<api::ViewSnapshotResponse> {
        self.run("view", move |s| s.view(r.into_inner())).await
    }
    async fn mounts(&self, r: tonic::Request<api::MountsRequest>) -> Res<api::MountsResponse> {
        self.run("mounts", move |s| s.mounts_of(r.into_inner()))
            .await
    }
    async fn commit(&self, r: tonic::Request<api::CommitSnapshotRequest>) -> Res<()> {
        self.run("commit", move |s| s.commit(r.into_inner())).await
    }
    async fn remove(&self, r: tonic::Request<api::RemoveSnapshotRequest>) -> Res<()> {
        self.run("remove", move |s| s.remove(r.into_inner())).await
    }
    async fn stat(
        &self,
        r: tonic::Request<api::StatSnapshotRequest>,
    ) -> Res<api::StatSnapshotResponse> {
        self.run("stat", move |s| s.stat(r.into_inner())).await
    }
    async fn update(
        &self,
        r: tonic::Request<api::UpdateSnapshotRequest>,
    ) -> Res<api::UpdateSnapshotResponse> {
        self.run("update", move |s| s.update(r.into_inner())).await
    }
    type ListStream =
        tokio_stream::Iter<std::vec::IntoIter<Result<api::ListSnapshotsResponse, Status>>>;
    async fn list(&self, r: tonic::Request<api::ListSnapshotsRequest>) -> Res<Self::ListStream> {
        let batches = self
            .run("list", move |s| s.list(r.into_inner()))
            .await?
            .into_inner();
        Ok(tonic::Response::new(tokio_stream::iter(
            batches.into_iter().map(Ok).collect::<Vec<_>>(),
        )))
    }
    async fn usage(&self, r: tonic::Request<api::UsageRequest>) -> Res<api::UsageResponse> {
        self.run("usage", move |s| s.usage(r.into_inner())).await
    }
    async fn cleanup(&self, r: tonic::Request<api::CleanupRequest>) -> Res<()> {
        self.run("cleanup", move |s| s.cleanup(r.into_inner()))
            .await
    }
}

/// The running gRPC server; dropping it stops the server and removes the socket.
pub struct SnapshotterHandle {
    path: PathBuf,
    stop: Arc<tokio::sync::Notify>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for SnapshotterHandle {
    fn drop(&mut self) {
        self.stop.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Serve the snapshotter on unix socket `path` (mode 0600, parent created 0700) for the file
/// system mounted at `mountpoint`.
pub fn serve(
    path: &Path,
    engine: Arc<Engine>,
    mountpoint: PathBuf,
) -> io::Result<SnapshotterHandle> {
    let listener = crate::host::bind_socket(path)?;
    listener.set_nonblocking(true)?;
    let snap = Arc::new(Snapshotter::new(
        engine,
        crate::host::absolute_mountpoint(&mountpoint),
    ));
    let stop = Arc::new(tokio::sync::Notify::new());
    let stop2 = stop.clone();
    // Timers too: clients send grpc-timeout (Docker does), and tonic's server enforces it.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    let thread = std::thread::Builder::new()
        .name("strata-snapshotter".into())
        .spawn(move || {
            rt.block_on(async move {
                let listener = match tokio::net::UnixListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        log::error!("snapshotter: cannot use the socket: {e}");
                        return;
                    }
                };
                let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
                let svc = api::snapshots_server::SnapshotsServer::new(Service(snap));
                if let Err(e) = tonic::transport::Server::builder()
                    .serve_with_incoming_shutdown(svc, incoming, stop2.notified())
                    .await
                {
                    log::error!("snapshotter: gRPC server failed: {e}");
                }
            })
        })?;
    Ok(SnapshotterHandle {
        path: path.to_path_buf(),
        stop,
        thread: Some(thread),
    })
}
