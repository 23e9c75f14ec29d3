//! The admin API's HTTP/1.1 server, deliberately small: one request per connection
//! (`Connection: close`), one thread per connection, at most [`MAX_CONNECTIONS`] at once (more
//! get a 503 at once), the whole request must arrive within [`READ_TIMEOUT`], its head within
//! [`MAX_HEAD_BYTES`] (else 431) and its body within [`MAX_BODY_BYTES`] (else 413). Nothing a
//! client sends can panic the daemon: parsing never unwraps client data, and a panic in a
//! handler (an engine bug) is caught and answered with a 500.
//!
//! It knows nothing of layers: [`accept_loop`] hands each complete [`Request`] to a handler and
//! writes the [`Response`] it returns; requests that do not parse are answered here. Also the
//! percent-encoding of path segments, which the client shares.

use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::json::ErrorBody;
use crate::Error;

/// Connections served at once; more are answered 503 and closed.
pub const MAX_CONNECTIONS: usize = 64;
/// Request line plus headers.
pub const MAX_HEAD_BYTES: usize = 16 << 10;
/// Request body (`Content-Length`).
pub const MAX_BODY_BYTES: usize = 1 << 20;
/// Time a client has to send its whole request.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Accept connections on `listener` until `stop` is set (and one more connection wakes the
/// loop), serving each on its own thread: `handler` answers every complete request.
pub(super) fn accept_loop<H>(listener: UnixListener, handler: Arc<H>, stop: Arc<AtomicBool>)
where
    H: Fn(&Request) -> Response + Send + Sync + 'static,
{
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
        let handler = handler.clone();
        let spawned = std::thread::Builder::new()
            .name("strata-admin-conn".into())
            .spawn(move || {
                let _slot = slot;
                serve_conn(s, &*handler);
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
pub(super) struct Request {
    pub(super) method: String,
    pub(super) target: String,
    pub(super) body: Vec<u8>,
}

/// An answer: a status and a JSON body (none for 204).
pub(super) struct Response {
    status: u16,
    body: Vec<u8>,
    headers: Vec<(&'static str, String)>,
}

impl Response {
    pub(super) fn json<T: Serialize>(status: u16, v: &T) -> Response {
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

    pub(super) fn error(status: u16, msg: impl Into<String>) -> Response {
        let mut body = serde_json::to_vec(&ErrorBody { error: msg.into() })
            .unwrap_or_else(|_| b"{\"error\":\"internal error\"}".to_vec());
        body.push(b'\n');
        Response {
            status,
            body,
            headers: Vec::new(),
        }
    }

    pub(super) fn no_content() -> Response {
        Response {
            status: 204,
            body: Vec::new(),
            headers: Vec::new(),
        }
    }

    pub(super) fn header(mut self, name: &'static str, value: String) -> Response {
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

/// A failed request's answer: the status [`Error::http_status`] gives, the message as the body.
impl From<Error> for Response {
    fn from(e: Error) -> Response {
        Response::error(e.http_status(), e.message())
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

fn serve_conn(mut s: UnixStream, handler: &impl Fn(&Request) -> Response) {
    let deadline = Instant::now() + READ_TIMEOUT;
    let _ = s.set_write_timeout(Some(READ_TIMEOUT));
    let (resp, complete) = match read_request(&mut s, deadline) {
        Ok(None) => return,
        Ok(Some(req)) => {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler(&req)));
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
pub(super) fn find_head_end(buf: &[u8], from: usize) -> Option<(usize, usize)> {
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
pub fn percent_decode(s: &str) -> Result<String, Error> {
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
                _ => {
                    return Err(Error::Invalid(
                        "invalid percent-encoding in the path".into(),
                    ))
                }
            }
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| Error::Invalid("the path does not decode to UTF-8".into()))
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
