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
//!
//! Ids in paths are percent-encoded. Errors are `{"error": "…"}`: 400 bad input (bad JSON,
//! unknown or missing fields, bad percent-encoding, invalid id), 404 unknown layer or path,
//! 405 wrong method, 408 request not sent within 10 s, 409 exists / busy (has children,
//! mounted, wrong state), 413 body over 1 MiB, 431 head over 16 KiB, 501 chunked bodies,
//! 503 too many connections or file system read-only after an I/O error, 507 no space.
//!
//! The server is deliberately small: one request per connection (`Connection: close`), one
//! thread per connection, at most [`MAX_CONNECTIONS`] at once (more get a 503 at once), the
//! whole request must arrive within [`READ_TIMEOUT`]. Nothing a client sends can panic the
//! daemon: parsing never unwraps client data, and a panic in a handler (an engine bug) is
//! caught and answered with a 500.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use engine::{Engine, LayerInfo, LayerState};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::host;

pub use crate::host::{mount_users, unescape_mountinfo};
pub use crate::labels::RESERVED_LABEL_PREFIX;
/// Re-exported so the CLI and tests encode and parse with the same versions.
pub use serde;
pub use serde_json;

/// Where `strata mount` serves the admin API unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/strata/strata.sock";
/// Connections served at once; more are answered 503 and closed.
pub const MAX_CONNECTIONS: usize = 64;
/// Request line plus headers.
pub const MAX_HEAD_BYTES: usize = 16 << 10;
/// Request body (`Content-Length`).
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// Time a client has to send its whole request.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Wire types
// ---------------------------------------------------------------------------------------------

/// A layer as the API shows it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    pub id: String,
    /// Engine slot (the high bits of the layer's FUSE node ids).
    pub slot: u32,
    pub parent: Option<String>,
    /// `active`, `committed` or `view`.
    pub state: String,
    pub labels: BTreeMap<String, String>,
    /// Creation time, RFC 3339 in UTC with nanoseconds.
    pub created: String,
    /// Creation time, seconds since the epoch.
    pub created_unix: i64,
    /// Bytes of blocks this layer allocated (shared blocks count for their owner only).
    pub owned_bytes: u64,
    /// Inodes owned by this layer.
    pub inodes: u64,
    /// Ancestors, nearest first.
    pub chain: Vec<String>,
    pub children: Vec<String>,
    /// The layer's directory: `<mountpoint>/<id>`.
    #[serde(default)]
    pub path: String,
}

impl Layer {
    pub fn from_info(i: &LayerInfo, mountpoint: &Path) -> Layer {
        Layer {
            id: i.id.clone(),
            slot: i.slot,
            parent: i.parent.clone(),
            state: i.state.as_str().to_string(),
            labels: i.labels.clone(),
            created: rfc3339(i.created.sec, i.created.nsec),
            created_unix: i.created.sec,
            owned_bytes: i.owned_bytes,
            inodes: i.inodes,
            chain: i.chain.clone(),
            children: i.children.clone(),
            path: mountpoint.join(&i.id).to_string_lossy().into_owned(),
        }
    }
}

/// `GET /v1/layers`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct LayerList {
    pub layers: Vec<Layer>,
}

/// The state of a new clone.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CloneState {
    Active,
    View,
}

impl From<CloneState> for LayerState {
    fn from(s: CloneState) -> LayerState {
        match s {
            CloneState::Active => LayerState::Active,
            CloneState::View => LayerState::View,
        }
    }
}

/// `POST /v1/layers`: without `parent`, an empty active base layer; with it, a clone of the
/// committed `parent` (`state` active, the default, or view).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<CloneState>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// `POST /v1/import`: apply the OCI layer tar the daemon reads from `path` (absolute) as a new
/// committed layer `layer`, a clone of committed `parent` or a base layer.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ImportRequest {
    pub layer: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    pub path: String,
    /// auto (default), none, gzip, zstd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<String>,
}

/// `POST /v1/layers/{id}/export`: write the layer's diff against its parent as an OCI layer
/// tar to `path` (absolute).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ExportRequest {
    pub path: String,
}

/// `POST /v1/layers/{id}/snapshot`: the id of the new committed parent.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRequest {
    pub id: String,
}

/// `PUT /v1/layers/{id}/labels`: the new labels (they replace the old ones).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LabelsRequest {
    pub labels: BTreeMap<String, String>,
}

/// Every error answer.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ErrorBody {
    pub error: String,
}

/// A body that must be empty or `{}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

// ---------------------------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------------------------

struct Ctx {
    engine: Arc<Engine>,
    /// The previous `GET /v1/stats`, for rates.
    rates: crate::stats::RateTracker,
    /// Absolute mount point, as /proc/self/mountinfo shows it.
    mountpoint: PathBuf,
}

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
    let ctx = Arc::new(Ctx {
        engine,
        rates: Default::default(),
        mountpoint: host::absolute_mountpoint(&mountpoint),
    });
    let listener = host::bind_socket(path)?;
    let meta = std::fs::symlink_metadata(path)?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let thread = std::thread::Builder::new()
        .name("strata-admin".into())
        .spawn(move || accept_loop(listener, ctx, stop2))?;
    Ok(AdminHandle {
        path: path.to_path_buf(),
        id: (meta.dev(), meta.ino()),
        stop,
        thread: Some(thread),
    })
}

struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn accept_loop(listener: UnixListener, ctx: Arc<Ctx>, stop: Arc<AtomicBool>) {
    let active = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let s = match conn {
            Ok(s) => s,
            Err(e) => {
                log::warn!("admin API: accept: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            reject_busy(s);
            continue;
        }
        let slot = Slot(active.clone());
        let ctx = ctx.clone();
        let spawned = std::thread::Builder::new()
            .name("strata-admin-conn".into())
            .spawn(move || {
                let _slot = slot;
                serve_conn(s, &ctx);
            });
        if let Err(e) = spawned {
            // The closure (and with it the slot and the connection) was dropped.
            log::warn!("admin API: cannot start a connection thread: {e}");
        }
    }
}

fn reject_busy(mut s: UnixStream) {
    let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
    let r = Response::error(
        503,
        format!("too many admin connections (at most {MAX_CONNECTIONS}); try again"),
    );
    let _ = r.write_to(&mut s);
}

/// An HTTP request as the router sees it.
struct Request {
    method: String,
    target: String,
    body: Vec<u8>,
}

/// An answer: a status and a JSON body (none for 204).
struct Response {
    status: u16,
    body: Vec<u8>,
    headers: Vec<(&'static str, String)>,
}

impl Response {
    fn json<T: Serialize>(status: u16, v: &T) -> Response {
        match serde_json::to_vec_pretty(v) {
            Ok(mut body) => {
                body.push(b'\n');
                Response {
                    status,
                    body,
                    headers: Vec::new(),
                }
            }
            Err(e) => Response::error(500, format!("cannot encode the answer: {e}")),
        }
    }

    fn error(status: u16, msg: impl Into<String>) -> Response {
        let mut body = serde_json::to_vec(&ErrorBody { error: msg.into() })
            .unwrap_or_else(|_| b"{\"error\":\"internal error\"}".to_vec());
        body.push(b'\n');
        Response {
            status,
            body,
            headers: Vec::new(),
        }
    }

    fn no_content() -> Response {
        Response {
            status: 204,
            body: Vec::new(),
            headers: Vec::new(),
        }
    }

    fn header(mut self, name: &'static str, value: String) -> Response {
        self.headers.push((name, value));
        self
    }

    fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        let mut out = format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        if self.status != 204 {
            out.push_str("Content-Type: application/json\r\n");
            out.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        }
        for (k, v) in &self.headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str("Connection: close\r\n\r\n");
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&self.body);
        w.write_all(&bytes)?;
        w.flush()
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        507 => "Insufficient Storage",
        _ => "Unknown",
    }
}

fn serve_conn(mut s: UnixStream, ctx: &Ctx) {
    let deadline = Instant::now() + READ_TIMEOUT;
    let _ = s.set_write_timeout(Some(READ_TIMEOUT));
    let (resp, complete) = match read_request(&mut s, deadline) {
        Ok(None) => return,
        Ok(Some(req)) => {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| dispatch(ctx, &req)));
            let r = r.unwrap_or_else(|_| {
                log::error!("admin API: panic while serving {} (a bug)", req.method);
                Response::error(
                    500,
                    "internal error while serving the request (see the daemon log)",
                )
            });
            (r, true)
        }
        Err(r) => (r, false),
    };
    if resp.status >= 500 {
        log::warn!(
            "admin API: {} {}",
            resp.status,
            String::from_utf8_lossy(&resp.body).trim()
        );
    }
    let _ = resp.write_to(&mut s);
    let _ = s.shutdown(std::net::Shutdown::Write);
    if !complete {
        // The client may still be sending; read a little of it so that it sees our answer and
        // then EOF rather than a reset.
        drain(&mut s);
    }
}

fn drain(s: &mut UnixStream) {
    let until = Instant::now() + Duration::from_millis(200);
    let mut buf = [0u8; 8192];
    let mut total = 0usize;
    while total < (4 << 20) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() || s.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => total += n,
        }
    }
}

/// Read some bytes before the deadline; a timeout is a 408, a closed or failed connection
/// is `Ok(0)`.
fn read_some(s: &mut UnixStream, buf: &mut [u8], deadline: Instant) -> Result<usize, Response> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timeout());
        }
        if s.set_read_timeout(Some(left)).is_err() {
            return Ok(0);
        }
        match s.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut =>
            {
                return Err(timeout())
            }
            Err(_) => return Ok(0),
        }
    }
}

fn timeout() -> Response {
    Response::error(
        408,
        format!(
            "the request did not arrive within {} s",
            READ_TIMEOUT.as_secs()
        ),
    )
}

/// Where the head ends: (offset of the blank line, offset of the body).
fn find_head_end(buf: &[u8], from: usize) -> Option<(usize, usize)> {
    let start = from.saturating_sub(3);
    for i in start..buf.len() {
        if buf[i] == b'\n' {
            if buf[i + 1..].starts_with(b"\r\n") {
                return Some((i + 1, i + 3));
            }
            if buf[i + 1..].starts_with(b"\n") {
                return Some((i + 1, i + 2));
            }
        }
    }
    None
}

/// Read one request. `Ok(None)`: the client closed without sending anything.
fn read_request(s: &mut UnixStream, deadline: Instant) -> Result<Option<Request>, Response> {
    let mut buf: Vec<u8> = Vec::with_capacity(2048);
    let mut chunk = [0u8; 4096];
    let (head_len, body_start) = loop {
        if let Some(e) = find_head_end(&buf, buf.len().saturating_sub(chunk.len())) {
            break e;
        }
        if buf.len() >= MAX_HEAD_BYTES {
            return Err(head_too_large());
        }
        let want = chunk.len().min(MAX_HEAD_BYTES + 4 - buf.len());
        let n = read_some(s, &mut chunk[..want], deadline)?;
        if n == 0 {
            if buf.is_empty() {
                return Ok(None);
            }
            return Err(Response::error(
                400,
                "truncated request: the connection ended before the end of the headers",
            ));
        }
        let before = buf.len();
        buf.extend_from_slice(&chunk[..n]);
        if let Some(e) = find_head_end(&buf, before) {
            break e;
        }
    };
    if body_start > MAX_HEAD_BYTES {
        return Err(head_too_large());
    }
    let head = parse_head(&buf[..head_len])?;
    let Some(len) = head.content_length else {
        if head.chunked {
            return Err(Response::error(
                501,
                "chunked request bodies are not supported; send a Content-Length",
            ));
        }
        return Ok(Some(Request {
            method: head.method,
            target: head.target,
            body: Vec::new(),
        }));
    };
    if head.chunked {
        return Err(Response::error(
            400,
            "a request may not have both Transfer-Encoding and Content-Length",
        ));
    }
    if len > MAX_BODY_BYTES as u64 {
        return Err(Response::error(
            413,
            format!("the request body of {len} bytes is over the limit of {MAX_BODY_BYTES} bytes"),
        ));
    }
    let len = len as usize;
    let mut body = buf.split_off(body_start);
    body.truncate(len);
    if head.expect_continue && body.len() < len {
        let _ = s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
    }
    while body.len() < len {
        let want = chunk.len().min(len - body.len());
        let n = read_some(s, &mut chunk[..want], deadline)?;
        if n == 0 {
            return Err(Response::error(
                400,
                format!(
                    "truncated request: the body has {} of the {len} bytes of its Content-Length",
                    body.len()
                ),
            ));
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Ok(Some(Request {
        method: head.method,
        target: head.target,
        body,
    }))
}

fn head_too_large() -> Response {
    Response::error(
        431,
        format!("the request line and headers are over the limit of {MAX_HEAD_BYTES} bytes"),
    )
}

struct Head {
    method: String,
    target: String,
    content_length: Option<u64>,
    chunked: bool,
    expect_continue: bool,
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn parse_head(head: &[u8]) -> Result<Head, Response> {
    let text = std::str::from_utf8(head)
        .map_err(|_| Response::error(400, "the request line and headers are not valid UTF-8"))?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let line = lines.next().unwrap_or("");
    let parts: Vec<&str> = line.split(' ').collect();
    let [method, target, version] = parts[..] else {
        return Err(Response::error(
            400,
            "malformed request line (expected `METHOD /path HTTP/1.1`)",
        ));
    };
    if !is_token(method) || target.is_empty() || !version.starts_with("HTTP/") {
        return Err(Response::error(
            400,
            "malformed request line (expected `METHOD /path HTTP/1.1`)",
        ));
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(Response::error(
            505,
            "only HTTP/1.0 and HTTP/1.1 are supported",
        ));
    }
    let mut h = Head {
        method: method.to_string(),
        target: target.to_string(),
        content_length: None,
        chunked: false,
        expect_continue: false,
    };
    for line in lines {
        if line.is_empty() {
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(Response::error(
                400,
                "malformed header line (expected `Name: value`)",
            ));
        };
        if !is_token(name) {
            return Err(Response::error(400, "malformed header name"));
        }
        let value = value.trim_matches(|c| c == ' ' || c == '\t');
        if name.eq_ignore_ascii_case("content-length") {
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                return Err(Response::error(400, "Content-Length is not a number"));
            }
            // Longer than u64: certainly too large.
            let n = value.parse::<u64>().unwrap_or(u64::MAX);
            if h.content_length.is_some_and(|old| old != n) {
                return Err(Response::error(400, "conflicting Content-Length headers"));
            }
            h.content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            h.chunked = true;
        } else if name.eq_ignore_ascii_case("expect") {
            h.expect_continue = value.eq_ignore_ascii_case("100-continue");
        }
    }
    Ok(h)
}

/// Decode `%XX` escapes; the result must be UTF-8.
pub fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = |c: u8| (c as char).to_digit(16);
            match (
                b.get(i + 1).and_then(|&c| hex(c)),
                b.get(i + 2).and_then(|&c| hex(c)),
            ) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                }
                _ => return Err("invalid percent-encoding in the path".to_string()),
            }
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "the path does not decode to UTF-8".to_string())
}

/// Encode everything but unreserved characters, for a path segment.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// At most `n` bytes of `s` (on a character boundary), for echoing client input.
fn clip(s: &str, n: usize) -> String {
    if s.len() <= n {
        return s.to_string();
    }
    let mut end = n;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, Response> {
    serde_json::from_slice(body)
        .map_err(|e| Response::error(400, format!("invalid request body: {e}")))
}

fn engine_error(e: engine::Error) -> Response {
    use engine::Error as E;
    let status = match &e {
        E::NotFound(_) => 404,
        E::Exists(_) => 409,
        E::Invalid(_) => 400,
        // Has children, in use, wrong state: a conflict with the layer's current state.
        E::Busy(_) => 409,
        E::NoSpace => 507,
        E::Poisoned => 503,
        E::Errno(n) => match *n {
            libc_errno::ENOENT => 404,
            libc_errno::EEXIST => 409,
            libc_errno::EINVAL | libc_errno::ENAMETOOLONG => 400,
            libc_errno::EBUSY | libc_errno::ENOTEMPTY => 409,
            libc_errno::ENOSPC => 507,
            libc_errno::EROFS => 503,
            _ => 500,
        },
        _ => 500,
    };
    Response::error(status, e.to_string())
}

/// The errno values the mapping needs (Linux numbering), to spare a libc dependency.
mod libc_errno {
    pub const ENOENT: i32 = 2;
    pub const EBUSY: i32 = 16;
    pub const EEXIST: i32 = 17;
    pub const EINVAL: i32 = 22;
    pub const ENOSPC: i32 = 28;
    pub const EROFS: i32 = 30;
    pub const ENAMETOOLONG: i32 = 36;
    pub const ENOTEMPTY: i32 = 39;
}

fn dispatch(ctx: &Ctx, req: &Request) -> Response {
    let raw_path = req.target.split(['?', '#']).next().unwrap_or("");
    let Some(rest) = raw_path.strip_prefix('/') else {
        return Response::error(400, "the request target must be a path starting with /");
    };
    let mut segs = Vec::new();
    for raw in rest.split('/') {
        match percent_decode(raw) {
            Ok(s) => segs.push(s),
            Err(e) => return Response::error(400, e),
        }
    }
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let m = req.method.as_str();
    let not_allowed = |allow: &str| {
        Response::error(
            405,
            format!("{} is not allowed here; use {allow}", clip(m, 32)),
        )
        .header("Allow", allow.to_string())
    };
    let r = match segs[..] {
        ["v1", "layers"] | ["v1", "layers", ""] => match m {
            "GET" => Ok(list(ctx)),
            "POST" => create(ctx, &req.body),
            _ => return not_allowed("GET, POST"),
        },
        ["v1", "layers", id] => match m {
            "GET" => stat(ctx, id),
            "DELETE" => remove(ctx, id),
            _ => return not_allowed("GET, DELETE"),
        },
        ["v1", "layers", id, "commit"] => match m {
            "POST" => commit(ctx, id, &req.body),
            _ => return not_allowed("POST"),
        },
        ["v1", "layers", id, "snapshot"] => match m {
            "POST" => snapshot(ctx, id, &req.body),
            _ => return not_allowed("POST"),
        },
        ["v1", "layers", id, "labels"] => match m {
            "PUT" => set_labels(ctx, id, &req.body),
            _ => return not_allowed("PUT"),
        },
        ["v1", "import"] => match m {
            "POST" => import(ctx, &req.body),
            _ => return not_allowed("POST"),
        },
        ["v1", "layers", id, "export"] => match m {
            "POST" => export(ctx, id, &req.body),
            _ => return not_allowed("POST"),
        },
        ["v1", "stats"] => match m {
            "GET" => Ok(Response::json(200, &ctx.rates.report(&ctx.engine))),
            _ => return not_allowed("GET"),
        },
        _ => {
            return Response::error(
                404,
                format!(
                    "no such endpoint: {} {} (the API is under /v1/layers)",
                    clip(m, 32),
                    clip(raw_path, 200)
                ),
            )
        }
    };
    r.unwrap_or_else(|e| e)
}

fn nonempty(id: &str) -> Result<(), Response> {
    if id.is_empty() {
        return Err(Response::error(400, "empty layer id"));
    }
    Ok(())
}

fn layer(ctx: &Ctx, status: u16, i: &LayerInfo) -> Response {
    Response::json(status, &Layer::from_info(i, &ctx.mountpoint))
}

fn list(ctx: &Ctx) -> Response {
    let layers = ctx
        .engine
        .layer_list()
        .iter()
        .map(|i| Layer::from_info(i, &ctx.mountpoint))
        .collect();
    Response::json(200, &LayerList { layers })
}

fn create(ctx: &Ctx, body: &[u8]) -> Result<Response, Response> {
    let r: CreateRequest = parse_body(body)?;
    nonempty(&r.id)?;
    unreserved(&r.labels)?;
    let info = match &r.parent {
        None => {
            if r.state == Some(CloneState::View) {
                return Err(Response::error(
                    400,
                    "a base layer (no parent) is always active; state \"view\" needs a parent",
                ));
            }
            ctx.engine.layer_create(&r.id, r.labels)
        }
        Some(parent) => {
            nonempty(parent)?;
            let state = r.state.unwrap_or(CloneState::Active).into();
            ctx.engine.layer_clone(parent, &r.id, state, r.labels)
        }
    }
    .map_err(engine_error)?;
    Ok(layer(ctx, 201, &info).header(
        "Location",
        format!("/v1/layers/{}", percent_encode(&info.id)),
    ))
}

fn stat(ctx: &Ctx, id: &str) -> Result<Response, Response> {
    nonempty(id)?;
    let info = ctx.engine.layer_stat(id).map_err(engine_error)?;
    Ok(layer(ctx, 200, &info))
}

fn commit(ctx: &Ctx, id: &str, body: &[u8]) -> Result<Response, Response> {
    nonempty(id)?;
    if !body.iter().all(u8::is_ascii_whitespace) {
        let _: Empty = parse_body(body)?;
    }
    let info = ctx.engine.layer_commit(id).map_err(engine_error)?;
    Ok(layer(ctx, 200, &info))
}

fn snapshot(ctx: &Ctx, id: &str, body: &[u8]) -> Result<Response, Response> {
    nonempty(id)?;
    let r: SnapshotRequest = parse_body(body)?;
    nonempty(&r.id)?;
    let info = ctx.engine.layer_snapshot(id, &r.id).map_err(engine_error)?;
    Ok(layer(ctx, 201, &info).header(
        "Location",
        format!("/v1/layers/{}", percent_encode(&info.id)),
    ))
}

fn absolute(path: &str) -> Result<&Path, Response> {
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(Response::error(
            400,
            format!(
                "path {:?} must be absolute (the daemon opens it)",
                clip(path, 200)
            ),
        ));
    }
    Ok(p)
}

fn import(ctx: &Ctx, body: &[u8]) -> Result<Response, Response> {
    let r: ImportRequest = parse_body(body)?;
    nonempty(&r.layer)?;
    let path = absolute(&r.path)?;
    let compression: crate::oci::Compression = r
        .compression
        .as_deref()
        .unwrap_or("auto")
        .parse()
        .map_err(|e: String| Response::error(400, e))?;
    let f = std::fs::File::open(path)
        .map_err(|e| Response::error(400, format!("cannot open {}: {e}", path.display())))?;
    let report = crate::oci::import(
        &ctx.engine,
        &r.layer,
        r.parent.as_deref(),
        std::io::BufReader::with_capacity(1 << 20, f),
        compression,
    )
    .map_err(engine_error)?;
    Ok(Response::json(201, &report).header(
        "Location",
        format!("/v1/layers/{}", percent_encode(&report.layer)),
    ))
}

fn export(ctx: &Ctx, id: &str, body: &[u8]) -> Result<Response, Response> {
    nonempty(id)?;
    let r: ExportRequest = parse_body(body)?;
    let path = absolute(&r.path)?;
    let f = std::fs::File::create(path)
        .map_err(|e| Response::error(400, format!("cannot create {}: {e}", path.display())))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
    crate::oci::export(&ctx.engine, id, &mut w).map_err(engine_error)?;
    std::io::Write::flush(&mut w)
        .map_err(|e| Response::error(500, format!("cannot write {}: {e}", path.display())))?;
    Ok(Response::json(200, &ExportRequest { path: r.path }))
}

fn unreserved(labels: &BTreeMap<String, String>) -> Result<(), Response> {
    match labels.keys().find(|k| crate::labels::is_reserved(k)) {
        Some(k) => Err(Response::error(
            400,
            format!("label {k:?}: labels under {RESERVED_LABEL_PREFIX} are reserved for Strata"),
        )),
        None => Ok(()),
    }
}

fn set_labels(ctx: &Ctx, id: &str, body: &[u8]) -> Result<Response, Response> {
    nonempty(id)?;
    let r: LabelsRequest = parse_body(body)?;
    unreserved(&r.labels)?;
    let mut labels = r.labels;
    let old = ctx.engine.layer_stat(id).map_err(engine_error)?;
    labels.extend(
        old.labels
            .into_iter()
            .filter(|(k, _)| crate::labels::is_reserved(k)),
    );
    let info = ctx
        .engine
        .layer_set_labels(id, labels)
        .map_err(engine_error)?;
    Ok(layer(ctx, 200, &info))
}

fn remove(ctx: &Ctx, id: &str) -> Result<Response, Response> {
    nonempty(id)?;
    match host::read_mount_users(&ctx.mountpoint, id) {
        Ok(users) => {
            if !users.is_empty() {
                let list: Vec<String> = users.iter().map(|p| p.display().to_string()).collect();
                return Err(Response::error(
                    409,
                    format!(
                        "layer {id:?} is mounted at {}; unmount it first",
                        list.join(", ")
                    ),
                ));
            }
        }
        Err(e) => log::warn!(
            "admin API: cannot read /proc/self/mountinfo ({e}); removing without the mount check"
        ),
    }
    ctx.engine.layer_remove(id).map_err(engine_error)?;
    Ok(Response::no_content())
}

// ---------------------------------------------------------------------------------------------
// Time
// ---------------------------------------------------------------------------------------------

/// RFC 3339 in UTC with nanoseconds, e.g. `2025-03-01T12:00:00.000000000Z`.
pub fn rfc3339(sec: i64, nsec: u32) -> String {
    let days = sec.div_euclid(86_400);
    let rem = sec.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        nsec.min(999_999_999)
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m as u32, d as u32)
}

// ---------------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------------

/// A raw answer.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Send one request and read the answer (the server closes after it).
pub fn raw_request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    timeout: Duration,
) -> io::Result<RawResponse> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: strata\r\nUser-Agent: strata-cli\r\nAccept: application/json\r\nConnection: close\r\n"
    );
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body.unwrap_or(&[]));
    // If the server answers early (an error) and closes, a failed write is not the story:
    // read its answer.
    let wrote = s.write_all(&bytes);
    let mut buf = Vec::new();
    let read = s.take(64 << 20).read_to_end(&mut buf);
    match parse_response(&buf) {
        Some(r) => Ok(r),
        None => {
            wrote?;
            read?;
            Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the daemon's answer is not valid HTTP",
            ))
        }
    }
}

/// Parse a complete HTTP response (status line, headers, `Content-Length` body).
pub fn parse_response(buf: &[u8]) -> Option<RawResponse> {
    let (head_len, body_start) = find_head_end(buf, 0)?;
    let head = std::str::from_utf8(&buf[..head_len]).ok()?;
    let mut lines = head.lines();
    let status_line = lines.next()?;
    let mut parts = status_line.split(' ');
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let status: u16 = parts.next()?.parse().ok()?;
    let mut len = None;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = Some(v.trim().parse::<usize>().ok()?);
            }
        }
    }
    let rest = &buf[body_start..];
    let body = match len {
        Some(n) if rest.len() >= n => rest[..n].to_vec(),
        Some(_) => return None,
        None => rest.to_vec(),
    };
    Some(RawResponse { status, body })
}

/// The admin API client `strata layer` uses. Errors are messages for the user.
pub struct Client {
    socket: PathBuf,
    timeout: Duration,
}

impl Client {
    pub fn new(socket: &Path) -> Client {
        Client {
            socket: socket.to_path_buf(),
            timeout: Duration::from_secs(120),
        }
    }

    /// Send a request; a 2xx answer gives its body, anything else the server's message.
    pub fn call(&self, method: &str, path: &str, body: Option<&[u8]>) -> Result<Vec<u8>, String> {
        let r = raw_request(&self.socket, method, path, body, self.timeout).map_err(|e| match e
            .kind()
        {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => format!(
                "cannot reach the strata daemon at {} (is `strata mount` running?)",
                self.socket.display()
            ),
            io::ErrorKind::PermissionDenied => format!(
                "permission denied on {} (the admin socket is root-only)",
                self.socket.display()
            ),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => format!(
                "the strata daemon at {} did not answer within {} s",
                self.socket.display(),
                self.timeout.as_secs()
            ),
            _ => format!("admin socket {}: {e}", self.socket.display()),
        })?;
        if (200..300).contains(&r.status) {
            return Ok(r.body);
        }
        Err(match serde_json::from_slice::<ErrorBody>(&r.body) {
            Ok(e) => e.error,
            Err(_) => format!(
                "the daemon answered {} {}",
                r.status,
                String::from_utf8_lossy(&r.body).trim()
            ),
        })
    }

    /// `call` with JSON in and out.
    pub fn call_json<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, String> {
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| format!("cannot encode the request: {e}"))?;
        let out = self.call(method, path, body.as_deref())?;
        serde_json::from_slice(&out).map_err(|e| format!("cannot read the daemon's answer: {e}"))
    }

    pub fn list(&self) -> Result<LayerList, String> {
        self.call_json("GET", "/v1/layers", None::<&()>)
    }

    pub fn stat(&self, id: &str) -> Result<Layer, String> {
        self.call_json("GET", &layer_path(id, ""), None::<&()>)
    }

    pub fn create(&self, req: &CreateRequest) -> Result<Layer, String> {
        self.call_json("POST", "/v1/layers", Some(req))
    }

    pub fn import(&self, req: &ImportRequest) -> Result<crate::oci::ImportReport, String> {
        self.call_json("POST", "/v1/import", Some(req))
    }

    pub fn export(&self, id: &str, path: &str) -> Result<ExportRequest, String> {
        let req = ExportRequest {
            path: path.to_string(),
        };
        self.call_json("POST", &layer_path(id, "/export"), Some(&req))
    }

    pub fn commit(&self, id: &str) -> Result<Layer, String> {
        self.call_json("POST", &layer_path(id, "/commit"), None::<&()>)
    }

    pub fn snapshot(&self, id: &str, new_parent: &str) -> Result<Layer, String> {
        let req = SnapshotRequest {
            id: new_parent.to_string(),
        };
        self.call_json("POST", &layer_path(id, "/snapshot"), Some(&req))
    }

    pub fn set_labels(&self, id: &str, labels: BTreeMap<String, String>) -> Result<Layer, String> {
        self.call_json(
            "PUT",
            &layer_path(id, "/labels"),
            Some(&LabelsRequest { labels }),
        )
    }

    pub fn stats(&self) -> Result<crate::stats::StatsReport, String> {
        self.call_json("GET", "/v1/stats", None::<&()>)
    }

    pub fn remove(&self, id: &str) -> Result<(), String> {
        self.call("DELETE", &layer_path(id, ""), None).map(|_| ())
    }
}

/// `/v1/layers/{id}{suffix}` with the id percent-encoded.
pub fn layer_path(id: &str, suffix: &str) -> String {
    format!("/v1/layers/{}{suffix}", percent_encode(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent() {
        assert_eq!(percent_decode("a%20b%2Fc").unwrap(), "a b/c");
        assert_eq!(percent_decode("sha256:abc").unwrap(), "sha256:abc");
        assert!(percent_decode("%").is_err());
        assert!(percent_decode("%2").is_err());
        assert!(percent_decode("%zz").is_err());
        assert!(percent_decode("%ff").is_err()); // not UTF-8
        let id = "sha256:ab/ é%x";
        assert_eq!(percent_decode(&percent_encode(id)).unwrap(), id);
    }

    #[test]
    fn time() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339(951_782_400, 5), "2000-02-29T00:00:00.000000005Z");
        assert_eq!(rfc3339(1_700_000_000, 0), "2023-11-14T22:13:20.000000000Z");
        assert_eq!(rfc3339(-1, 0), "1969-12-31T23:59:59.000000000Z");
        let _ = rfc3339(i64::MAX / 2, u32::MAX);
        let _ = rfc3339(i64::MIN / 2, 0);
    }

    #[test]
    fn head() {
        let h = parse_head(b"POST /v1/layers HTTP/1.1\r\nContent-Length: 12\r\nX: y\r\n")
            .ok()
            .unwrap();
        assert_eq!((h.method.as_str(), h.content_length), ("POST", Some(12)));
        for bad in [
            &b"GET /v1/layers\r\n"[..],
            b"GET  /v1/layers HTTP/1.1\r\n",
            b"GET /v1/layers HTTP/1.1\r\nContent-Length: -1\r\n",
            b"GET /v1/layers HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n",
            b"GET /v1/layers HTTP/1.1\r\nnocolon\r\n",
            b"\xff\xfe",
        ] {
            assert!(
                parse_head(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            parse_head(b"GET / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n")
                .ok()
                .unwrap()
                .content_length,
            Some(u64::MAX)
        );
        assert_eq!(
            find_head_end(b"GET / HTTP/1.1\r\n\r\nbody", 0),
            Some((16, 18))
        );
        assert_eq!(find_head_end(b"GET / HTTP/1.1\n\nbody", 0), Some((15, 16)));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n", 0), None);
    }
}
