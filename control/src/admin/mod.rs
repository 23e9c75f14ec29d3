//! The admin API: JSON over HTTP/1.1 on a unix socket (root-only, mode 0600). `strata layer …`
//! is its client.
//!
//! | method | path | body | answer |
//! | --- | --- | --- | --- |
//! | GET | `/v1/layers` | | 200 `{"layers": [Layer…]}` |
//! | POST | `/v1/layers` | [`CreateRequest`] | 201 [`Layer`] (create a base layer, or clone `parent`) |
//! | GET | `/v1/layers/{id}` | | 200 [`Layer`] |
//! | DELETE | `/v1/layers/{id}` | | 204 (409 while it has children or is mounted) |
//! | POST | `/v1/layers/{id}/commit` | none or `{}` | 200 [`Layer`] |
//! | POST | `/v1/layers/{id}/snapshot` | [`SnapshotRequest`] | 201 [`Layer`] of the new parent |
//! | PUT | `/v1/layers/{id}/labels` | [`LabelsRequest`] | 200 [`Layer`] |
//! | POST | `/v1/import` | [`ImportRequest`] | 201 [`crate::oci::ImportReport`] |
//! | POST | `/v1/layers/{id}/export` | [`ExportRequest`] | 200 [`ExportRequest`] |
//! | GET | `/v1/stats` | | 200 [`crate::stats::StatsReport`] (rates since the previous call, or over 0.5 s) |
//! | POST | `/v1/scrub` | [`ScrubRequest`] (optional) | 202 [`ScrubStatusBody`]: a scrub of every data block starts in the background (409 while one runs) |
//! | GET | `/v1/scrub` | | 200 [`ScrubStatusBody`] of the running or last scrub (404: none yet) |
//! | DELETE | `/v1/scrub` | | 200 [`ScrubStatusBody`]: the running scrub stopped (404: none) |
//! | POST | `/v1/grow` | none or `{}` | 200 [`GrowBody`]: the device's new size taken in |
//!
//! Ids in paths are percent-encoded. Errors are `{"error": "…"}`: 400 bad input (bad JSON,
//! unknown or missing fields, bad percent-encoding, invalid id), 404 unknown layer or path,
//! 405 wrong method, 408 request not sent within 10 s, 409 exists / busy (has children,
//! mounted, wrong state), 413 body over 1 MiB, 431 head over 16 KiB, 501 chunked bodies,
//! 503 too many connections or file system read-only after an I/O error, 507 no space.
//!
//! Where things are: `http` is the small HTTP/1.1 server and its limits ([`MAX_CONNECTIONS`],
//! [`READ_TIMEOUT`], [`MAX_HEAD_BYTES`], [`MAX_BODY_BYTES`]); `routes` maps each method and
//! path to its handler; `json` holds the bodies above; `client` is the [`Client`] the CLI uses.
//! This file starts and stops the server ([`serve_admin`], [`AdminHandle`]).

mod client;
mod http;
mod json;
mod routes;

use std::io;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use engine::Engine;

pub use self::client::{layer_path, parse_response, raw_request, Client, RawResponse};
pub use self::http::{
    percent_decode, percent_encode, MAX_BODY_BYTES, MAX_CONNECTIONS, MAX_HEAD_BYTES, READ_TIMEOUT,
};
pub use self::json::{
    rfc3339, BadBlockBody, BlockUserBody, CloneState, CreateRequest, ErrorBody, ExportRequest,
    GrowBody, ImportRequest, LabelsRequest, Layer, LayerList, LimitsBody, ScrubRequest,
    ScrubStatusBody, SnapshotRequest,
};
use crate::host;
pub use crate::host::{mount_users, unescape_mountinfo};
pub use crate::labels::RESERVED_LABEL_PREFIX;
/// Re-exported so the CLI and tests encode and parse with the same versions.
pub use serde;
pub use serde_json;

/// Where `strata mount` serves the admin API unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/strata/strata.sock";

/// The running admin server. Dropping it (or [`AdminHandle::stop`]) stops accepting and
/// removes the socket file; requests already being served finish on their own threads.
pub struct AdminHandle {
    path: PathBuf,
    id: (u64, u64),
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl AdminHandle {
    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stop serving and remove the socket.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn ours(&self) -> bool {
        std::fs::symlink_metadata(&self.path)
            .map(|m| (m.dev(), m.ino()) == self.id)
            .unwrap_or(false)
    }

    fn shutdown(&mut self) {
        let ours = self.ours();
        if let Some(t) = self.thread.take() {
            self.stop.store(true, Ordering::SeqCst);
            // Wake the accept loop. If the path is no longer our socket, the thread stays
            // parked in accept; it holds nothing but the listener.
            if ours && UnixStream::connect(&self.path).is_ok() {
                let _ = t.join();
            }
        }
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Drop for AdminHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Serve the admin API on the unix socket `path` for `engine`, whose file system is mounted
/// at `mountpoint` (used for layer paths and to refuse removing a mounted layer).
///
/// The socket's directory is created with mode 0700 if missing; the socket gets mode 0600
/// before it appears at `path`. A stale socket (nobody answering) is replaced; a live one,
/// or a file that is not a socket, is an error.
pub fn serve_admin(
    path: &Path,
    engine: Arc<Engine>,
    mountpoint: PathBuf,
) -> io::Result<AdminHandle> {
    let ctx = routes::Ctx {
        engine,
        rates: Default::default(),
        mountpoint: host::absolute_mountpoint(&mountpoint),
    };
    let handler = Arc::new(move |req: &http::Request| routes::dispatch(&ctx, req));
    let listener = host::bind_socket(path)?;
    let meta = std::fs::symlink_metadata(path)?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let thread = std::thread::Builder::new()
        .name("strata-admin".into())
        .spawn(move || http::accept_loop(listener, handler, stop2))?;
    Ok(AdminHandle {
        path: path.to_path_buf(),
        id: (meta.dev(), meta.ino()),
        stop,
        thread: Some(thread),
    })
}
