//! The admin API's client: [`Client`] is what `strata layer`, `strata stats`, `strata import`
//! and the benchmarks use; [`raw_request`] and [`parse_response`] are its bytes-level pieces,
//! which the tests also use to send what a well-behaved client would not.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::http::{find_head_end, percent_encode};
use super::json::{
    CreateRequest, ErrorBody, ExportRequest, ImportRequest, LabelsRequest, Layer, LayerList,
    LimitsBody, SnapshotRequest,
};
use crate::Error;

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

/// The admin API client `strata layer` uses. An error's message is for the user; its kind is
/// the daemon's (from the answer's status), or [`Error::Unavailable`] when the daemon could not
/// be reached.
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
    pub fn call(&self, method: &str, path: &str, body: Option<&[u8]>) -> Result<Vec<u8>, Error> {
        let r = raw_request(&self.socket, method, path, body, self.timeout)
            .map_err(|e| Error::Unavailable(self.unreachable(&e)))?;
        if (200..300).contains(&r.status) {
            return Ok(r.body);
        }
        let message = match serde_json::from_slice::<ErrorBody>(&r.body) {
            Ok(e) => e.error,
            Err(_) => format!(
                "the daemon answered {} {}",
                r.status,
                String::from_utf8_lossy(&r.body).trim()
            ),
        };
        Err(Error::from_http(r.status, message))
    }

    /// Why the daemon could not be reached, for the user.
    fn unreachable(&self, e: &io::Error) -> String {
        match e.kind() {
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
        }
    }

    /// `call` with JSON in and out.
    pub fn call_json<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, Error> {
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| Error::Internal(format!("cannot encode the request: {e}")))?;
        let out = self.call(method, path, body.as_deref())?;
        serde_json::from_slice(&out)
            .map_err(|e| Error::Internal(format!("cannot read the daemon's answer: {e}")))
    }

    pub fn list(&self) -> Result<LayerList, Error> {
        self.call_json("GET", "/v1/layers", None::<&()>)
    }

    pub fn stat(&self, id: &str) -> Result<Layer, Error> {
        self.call_json("GET", &layer_path(id, ""), None::<&()>)
    }

    pub fn create(&self, req: &CreateRequest) -> Result<Layer, Error> {
        self.call_json("POST", "/v1/layers", Some(req))
    }

    pub fn import(&self, req: &ImportRequest) -> Result<crate::oci::ImportReport, Error> {
        self.call_json("POST", "/v1/import", Some(req))
    }

    pub fn export(&self, id: &str, path: &str) -> Result<ExportRequest, Error> {
        let req = ExportRequest {
            path: path.to_string(),
        };
        self.call_json("POST", &layer_path(id, "/export"), Some(&req))
    }

    pub fn commit(&self, id: &str) -> Result<Layer, Error> {
        self.call_json("POST", &layer_path(id, "/commit"), None::<&()>)
    }

    pub fn snapshot(&self, id: &str, new_parent: &str) -> Result<Layer, Error> {
        let req = SnapshotRequest {
            id: new_parent.to_string(),
        };
        self.call_json("POST", &layer_path(id, "/snapshot"), Some(&req))
    }

    pub fn set_limits(&self, id: &str, limits: &LimitsBody) -> Result<Layer, Error> {
        self.call_json("PUT", &layer_path(id, "/limits"), Some(limits))
    }

    pub fn set_labels(&self, id: &str, labels: BTreeMap<String, String>) -> Result<Layer, Error> {
        self.call_json(
            "PUT",
            &layer_path(id, "/labels"),
            Some(&LabelsRequest { labels }),
        )
    }

    pub fn stats(&self) -> Result<crate::stats::StatsReport, Error> {
        self.call_json("GET", "/v1/stats", None::<&()>)
    }

    pub fn scrub_start(&self, req: &super::ScrubRequest) -> Result<super::ScrubStatusBody, Error> {
        self.call_json("POST", "/v1/scrub", Some(req))
    }

    pub fn scrub_status(&self) -> Result<super::ScrubStatusBody, Error> {
        self.call_json("GET", "/v1/scrub", None::<&()>)
    }

    pub fn scrub_cancel(&self) -> Result<super::ScrubStatusBody, Error> {
        self.call_json("DELETE", "/v1/scrub", None::<&()>)
    }

    pub fn grow(&self) -> Result<super::GrowBody, Error> {
        self.call_json("POST", "/v1/grow", None::<&()>)
    }

    pub fn remove(&self, id: &str) -> Result<(), Error> {
        self.call("DELETE", &layer_path(id, ""), None).map(|_| ())
    }
}

/// `/v1/layers/{id}{suffix}` with the id percent-encoded.
pub fn layer_path(id: &str, suffix: &str) -> String {
    format!("/v1/layers/{}{suffix}", percent_encode(id))
}
