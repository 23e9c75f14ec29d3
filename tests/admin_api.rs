//! The admin API against a real engine on an in-memory device, through raw unix-socket
//! clients: every endpoint's answers and errors, garbage that must get a 4xx and leave the
//! server serving, the connection limit, the socket's permissions, and the `strata layer`
//! CLI end to end (the binary talking to the in-process server). No FUSE, no root needed
//! (one test also checks the "layer is mounted" refusal with real bind mounts when root).

#![forbid(unsafe_code)]

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use control::admin::{self, serde_json, serde_json::Value, AdminHandle};
use engine::{Engine, Options};
use testkit::{assert_no_panic, mem_engine, strata, MountGuard, Rng, TestDir};

fn new_engine() -> Arc<Engine> {
    mem_engine(64 << 20, Options::default()).1
}

struct Server {
    handle: Option<AdminHandle>,
    sock: PathBuf,
    mnt: PathBuf,
    engine: Arc<Engine>,
    tmp: TestDir,
}

impl Server {
    fn start(name: &str) -> Server {
        let tmp = TestDir::new(&format!("admin-{name}"));
        // A directory that does not exist yet: serve_admin creates it 0700.
        let sock = tmp.join("run").join("strata.sock");
        let mnt = tmp.join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        let eng = new_engine();
        let handle = admin::serve_admin(&sock, eng.clone(), mnt.clone()).unwrap();
        Server {
            handle: Some(handle),
            sock,
            mnt,
            engine: eng,
            tmp,
        }
    }

    /// One request; the answer's status and JSON body (Null when empty).
    fn req(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let r = admin::raw_request(
            &self.sock,
            method,
            path,
            body.map(str::as_bytes),
            Duration::from_secs(30),
        )
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let v = if r.body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&r.body).unwrap_or_else(|e| {
                panic!(
                    "{method} {path}: answer is not JSON ({e}): {:?}",
                    String::from_utf8_lossy(&r.body)
                )
            })
        };
        (r.status, v)
    }

    /// Expect `status`; returns the body.
    fn expect(&self, status: u16, method: &str, path: &str, body: Option<&str>) -> Value {
        let (s, v) = self.req(method, path, body);
        assert_eq!(s, status, "{method} {path} {body:?}: answer {v}");
        if status >= 400 {
            assert!(
                v["error"].as_str().is_some_and(|m| !m.is_empty()),
                "{method} {path}: error answer without a message: {v}"
            );
        }
        v
    }

    /// Expect one of `statuses` (engine details decide between them).
    fn expect_any(&self, statuses: &[u16], method: &str, path: &str, body: Option<&str>) -> Value {
        let (s, v) = self.req(method, path, body);
        assert!(
            statuses.contains(&s),
            "{method} {path} {body:?}: answer {s} {v}, expected one of {statuses:?}"
        );
        assert!(v["error"].is_string(), "{method} {path}: {v}");
        v
    }

    fn assert_alive(&self) {
        let v = self.expect(200, "GET", "/v1/layers", None);
        assert!(v["layers"].is_array(), "{v}");
    }
}

/// Send raw bytes on a new connection, close our side, read whatever comes back.
fn raw(sock: &Path, bytes: &[u8]) -> Vec<u8> {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    // The server may answer early (413, 431) and stop reading: a failed write is fine.
    let _ = s.write_all(bytes);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            // A reset after the answer (unread input on the server side) ends the answer.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("reading the answer to {:?}: {e}", clip(bytes)),
        }
    }
    out
}

fn clip(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(&b[..b.len().min(120)]).into_owned();
    if b.len() > 120 {
        format!("{s}… ({} bytes)", b.len())
    } else {
        s
    }
}

/// Send raw bytes; the answer must be a well-formed HTTP error with a JSON message, with
/// a status in `statuses`.
fn raw_expect(sock: &Path, bytes: &[u8], statuses: &[u16]) -> String {
    let out = raw(sock, bytes);
    let r = admin::parse_response(&out).unwrap_or_else(|| {
        panic!(
            "request {:?}: no valid HTTP answer: {:?}",
            clip(bytes),
            clip(&out)
        )
    });
    assert!(
        statuses.contains(&r.status),
        "request {:?}: status {} ({}), expected {statuses:?}",
        clip(bytes),
        r.status,
        String::from_utf8_lossy(&r.body)
    );
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    v["error"].as_str().unwrap_or("").to_string()
}

fn post(path: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[test]
fn socket_permissions_and_lifecycle() {
    let srv = Server::start("perm");
    let meta = std::fs::metadata(&srv.sock).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "socket mode");
    let dir = srv.sock.parent().unwrap();
    assert_eq!(
        std::fs::metadata(dir).unwrap().permissions().mode() & 0o777,
        0o700,
        "socket directory mode"
    );
    // No temporary socket left behind.
    let names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("strata.sock")]);
    srv.assert_alive();

    // A second server on a live socket is refused; the first keeps serving.
    let e = admin::serve_admin(&srv.sock, new_engine(), srv.mnt.clone())
        .err()
        .expect("a second server on a live socket must fail");
    assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse, "{e}");
    srv.assert_alive();

    // A file that is not a socket is not removed.
    let plain = srv.tmp.join("plain");
    std::fs::write(&plain, b"keep me").unwrap();
    assert!(admin::serve_admin(&plain, new_engine(), srv.mnt.clone()).is_err());
    assert_eq!(std::fs::read(&plain).unwrap(), b"keep me");

    // Stopping removes the socket.
    let mut srv = srv;
    srv.handle.take().unwrap().stop();
    assert!(!srv.sock.exists(), "socket left after stop");

    // A stale socket (nobody listening) is replaced.
    let stale = srv.tmp.join("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    let h = admin::serve_admin(&stale, new_engine(), srv.mnt.clone()).unwrap();
    let r = admin::raw_request(&stale, "GET", "/v1/layers", None, Duration::from_secs(10)).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        std::fs::metadata(&stale).unwrap().permissions().mode() & 0o777,
        0o600
    );
    drop(h);
    assert!(!stale.exists(), "socket left after drop");
}

#[test]
fn endpoints_happy_path() {
    let srv = Server::start("happy");
    let v = srv.expect(200, "GET", "/v1/layers", None);
    let initial = v["layers"].as_array().unwrap().len();

    // Create a base layer with labels.
    let base = srv.expect(
        201,
        "POST",
        "/v1/layers",
        Some(r#"{"id":"base","labels":{"org.example/k":"v","empty":""}}"#),
    );
    assert_eq!(base["id"], "base");
    assert_eq!(base["state"], "active");
    assert_eq!(base["parent"], Value::Null);
    assert_eq!(base["labels"]["org.example/k"], "v");
    assert_eq!(base["labels"]["empty"], "");
    assert_eq!(base["chain"], serde_json::json!([]));
    assert!(base["slot"].is_u64() && base["owned_bytes"].is_u64() && base["inodes"].is_u64());
    let created = base["created"].as_str().unwrap();
    assert!(
        created.len() == 30 && created.ends_with('Z') && created.as_bytes()[10] == b'T',
        "created {created:?}"
    );
    assert!(base["created_unix"].as_i64().unwrap() > 1_600_000_000);
    assert_eq!(
        base["path"].as_str().unwrap(),
        srv.mnt.join("base").to_str().unwrap()
    );

    // Stat, list.
    let st = srv.expect(200, "GET", "/v1/layers/base", None);
    assert_eq!(st["id"], "base");
    assert_eq!(st["labels"], base["labels"]);
    let v = srv.expect(200, "GET", "/v1/layers", None);
    let ids: Vec<&str> = v["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), initial + 1);
    assert!(ids.contains(&"base"));

    // Commit (with no body, and an empty object on another layer below).
    let c = srv.expect(200, "POST", "/v1/layers/base/commit", None);
    assert_eq!(c["state"], "committed");

    // Clone: active (default), explicit active, view.
    let a = srv.expect(
        201,
        "POST",
        "/v1/layers",
        Some(r#"{"id":"app","parent":"base","labels":{"container":"c1"}}"#),
    );
    assert_eq!(a["state"], "active");
    assert_eq!(a["parent"], "base");
    assert_eq!(a["chain"], serde_json::json!(["base"]));
    assert_eq!(a["labels"]["container"], "c1");
    let a2 = srv.expect(
        201,
        "POST",
        "/v1/layers",
        Some(r#"{"id":"app2","parent":"base","state":"active"}"#),
    );
    assert_eq!(a2["state"], "active");
    let view = srv.expect(
        201,
        "POST",
        "/v1/layers",
        Some(r#"{"id":"ro","parent":"base","state":"view"}"#),
    );
    assert_eq!(view["state"], "view");
    let st = srv.expect(200, "GET", "/v1/layers/base", None);
    let mut kids: Vec<&str> = st["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    kids.sort();
    assert_eq!(kids, ["app", "app2", "ro"]);

    // Snapshot the running app into a new committed parent.
    let snap = srv.expect(
        201,
        "POST",
        "/v1/layers/app/snapshot",
        Some(r#"{"id":"app-snap"}"#),
    );
    assert_eq!(snap["id"], "app-snap");
    assert_eq!(snap["state"], "committed");
    assert_eq!(snap["parent"], "base");
    let st = srv.expect(200, "GET", "/v1/layers/app", None);
    assert_eq!(st["state"], "active");
    assert_eq!(st["parent"], "app-snap");
    assert_eq!(st["chain"], serde_json::json!(["app-snap", "base"]));
    // The snapshot can be cloned.
    srv.expect(
        201,
        "POST",
        "/v1/layers",
        Some(r#"{"id":"app-copy","parent":"app-snap"}"#),
    );

    // Labels replace.
    let l = srv.expect(
        200,
        "PUT",
        "/v1/layers/app/labels",
        Some(r#"{"labels":{"new":"1"}}"#),
    );
    assert_eq!(l["labels"], serde_json::json!({"new": "1"}));
    let st = srv.expect(200, "GET", "/v1/layers/app", None);
    assert_eq!(st["labels"], serde_json::json!({"new": "1"}));
    srv.expect(
        200,
        "PUT",
        "/v1/layers/app/labels",
        Some(r#"{"labels":{}}"#),
    );

    // Commit with an explicit empty object.
    let c = srv.expect(200, "POST", "/v1/layers/app2/commit", Some("{}"));
    assert_eq!(c["state"], "committed");

    // Ids with characters that need percent-encoding (containerd keys, chain ids).
    for id in [
        "sha256:0123abcd",
        "default/7/key with space",
        "ünï-cødé ✓",
        "a%b?c#d",
    ] {
        if id.contains('/') {
            continue; // `/` is not allowed in a layer id
        }
        let body = serde_json::json!({ "id": id }).to_string();
        let v = srv.expect(201, "POST", "/v1/layers", Some(&body));
        assert_eq!(v["id"], id);
        let p = admin::layer_path(id, "");
        let v = srv.expect(200, "GET", &p, None);
        assert_eq!(v["id"], id);
        srv.expect(200, "POST", &admin::layer_path(id, "/commit"), None);
        srv.expect(204, "DELETE", &p, None);
        srv.expect(404, "GET", &p, None);
    }
    // Lower-case escapes and a query string are fine.
    srv.expect(201, "POST", "/v1/layers", Some(r#"{"id":"x y"}"#));
    srv.expect(200, "GET", "/v1/layers/x%20y?verbose=1", None);
    srv.expect(200, "GET", "/v1/layers/x%20y", None);

    // Remove leaves first, then parents.
    for id in ["ro", "app-copy", "app", "app-snap", "app2", "base", "x y"] {
        let (s, v) = srv.req("DELETE", &admin::layer_path(id, ""), None);
        assert_eq!(s, 204, "DELETE {id}: {v}");
        assert_eq!(v, Value::Null);
        srv.expect(404, "GET", &admin::layer_path(id, ""), None);
    }
    let v = srv.expect(200, "GET", "/v1/layers", None);
    assert_eq!(v["layers"].as_array().unwrap().len(), initial);
}

#[test]
fn endpoint_errors() {
    let srv = Server::start("errors");
    srv.expect(201, "POST", "/v1/layers", Some(r#"{"id":"base"}"#));

    // Unknown paths and methods.
    srv.expect(404, "GET", "/", None);
    srv.expect(404, "GET", "/v1", None);
    srv.expect(404, "GET", "/v2/layers", None);
    srv.expect(404, "GET", "/v1/layers/base/nope", None);
    srv.expect(404, "GET", "/v1/layers/base/commit/x", None);
    srv.expect(404, "GET", "/metrics", None);
    for (m, p) in [
        ("PUT", "/v1/layers"),
        ("DELETE", "/v1/layers"),
        ("POST", "/v1/layers/base"),
        ("PUT", "/v1/layers/base"),
        ("GET", "/v1/layers/base/commit"),
        ("DELETE", "/v1/layers/base/snapshot"),
        ("POST", "/v1/layers/base/labels"),
        ("PATCH", "/v1/layers/base"),
    ] {
        srv.expect(405, m, p, None);
    }
    let r = raw(&srv.sock, b"PUT /v1/layers HTTP/1.1\r\n\r\n");
    let text = String::from_utf8_lossy(&r);
    assert!(text.contains("\r\nAllow: GET, POST\r\n"), "{text}");

    // Not found.
    srv.expect(404, "GET", "/v1/layers/nope", None);
    srv.expect(404, "DELETE", "/v1/layers/nope", None);
    srv.expect(404, "POST", "/v1/layers/nope/commit", None);
    srv.expect(
        404,
        "POST",
        "/v1/layers/nope/snapshot",
        Some(r#"{"id":"s"}"#),
    );
    srv.expect(
        404,
        "PUT",
        "/v1/layers/nope/labels",
        Some(r#"{"labels":{}}"#),
    );
    srv.expect(
        404,
        "POST",
        "/v1/layers",
        Some(r#"{"id":"c","parent":"nope"}"#),
    );

    // Exists.
    srv.expect(409, "POST", "/v1/layers", Some(r#"{"id":"base"}"#));

    // Wrong state: clone of an active layer, snapshot/commit of a committed one.
    srv.expect_any(
        &[400, 409],
        "POST",
        "/v1/layers",
        Some(r#"{"id":"c","parent":"base"}"#),
    );
    srv.expect(200, "POST", "/v1/layers/base/commit", None);
    srv.expect_any(&[400, 409], "POST", "/v1/layers/base/commit", None);
    srv.expect_any(
        &[400, 409],
        "POST",
        "/v1/layers/base/snapshot",
        Some(r#"{"id":"s"}"#),
    );
    srv.expect(
        201,
        "POST",
        "/v1/layers",
        Some(r#"{"id":"child","parent":"base"}"#),
    );
    // Snapshot onto an existing id.
    srv.expect(
        409,
        "POST",
        "/v1/layers/child/snapshot",
        Some(r#"{"id":"base"}"#),
    );
    // Has children.
    let v = srv.expect(409, "DELETE", "/v1/layers/base", None);
    eprintln!("remove with children: {v}");
    srv.expect(200, "GET", "/v1/layers/base", None);

    // Invalid ids.
    for body in [
        r#"{"id":""}"#,
        r#"{"id":"a/b"}"#,
        r#"{"id":".."}"#,
        r#"{"id":"/"}"#,
        r#"{"id":"c","parent":""}"#,
    ] {
        srv.expect(400, "POST", "/v1/layers", Some(body));
    }
    srv.expect(
        400,
        "POST",
        "/v1/layers/child/snapshot",
        Some(r#"{"id":""}"#),
    );
    srv.expect(
        400,
        "POST",
        "/v1/layers/child/snapshot",
        Some(r#"{"id":"x/y"}"#),
    );
    srv.expect_any(&[400, 404], "GET", "/v1/layers/a%2Fb", None);
    srv.expect_any(&[400, 404], "GET", "/v1/layers/..", None);
    srv.expect(400, "POST", "/v1/layers//commit", None);
    srv.expect_any(&[400, 404], "GET", "/v1/layers/%2F", None);

    // Bad bodies.
    for (method, path, body) in [
        ("POST", "/v1/layers", ""),
        ("POST", "/v1/layers", "{"),
        ("POST", "/v1/layers", "null"),
        ("POST", "/v1/layers", "[]"),
        ("POST", "/v1/layers", "{}"),
        ("POST", "/v1/layers", r#"{"id":1}"#),
        ("POST", "/v1/layers", r#"{"id":null}"#),
        ("POST", "/v1/layers", r#"{"id":"x","extra":1}"#),
        ("POST", "/v1/layers", r#"{"id":"x","state":"committed"}"#),
        ("POST", "/v1/layers", r#"{"id":"x","state":"ACTIVE"}"#),
        ("POST", "/v1/layers", r#"{"id":"x","state":"view"}"#),
        ("POST", "/v1/layers", r#"{"id":"x","labels":{"a":1}}"#),
        ("POST", "/v1/layers", r#"{"id":"x","labels":[]}"#),
        ("POST", "/v1/layers", r#"{"id":"x","labels":null}"#),
        ("POST", "/v1/layers", r#"{"id":"x","id":"y"}"#),
        ("POST", "/v1/layers", r#"{"id":"x"} trailing"#),
        ("POST", "/v1/layers", "\u{0}\u{1}"),
        ("POST", "/v1/layers/child/commit", r#"{"force":true}"#),
        ("POST", "/v1/layers/child/commit", "nope"),
        ("POST", "/v1/layers/child/snapshot", ""),
        ("POST", "/v1/layers/child/snapshot", "{}"),
        ("POST", "/v1/layers/child/snapshot", r#"{"id":5}"#),
        ("POST", "/v1/layers/child/snapshot", r#"{"id":"s","x":1}"#),
        ("PUT", "/v1/layers/child/labels", ""),
        ("PUT", "/v1/layers/child/labels", r#"{"a":"b"}"#),
        ("PUT", "/v1/layers/child/labels", r#"{"labels":"a=b"}"#),
    ] {
        let v = srv.expect(400, method, path, Some(body));
        let msg = v["error"].as_str().unwrap();
        if body == r#"{"id":"x","extra":1}"# {
            assert!(msg.contains("unknown field"), "{msg}");
        }
        if body == "{}" && path == "/v1/layers" {
            assert!(msg.contains("missing field"), "{msg}");
        }
    }
    // None of those created anything.
    srv.expect(404, "GET", "/v1/layers/x", None);
    srv.expect(404, "GET", "/v1/layers/s", None);

    // Invalid percent-encoding.
    for p in [
        "/v1/layers/%",
        "/v1/layers/%2",
        "/v1/layers/%zz",
        "/v1/layers/a%g0",
        "/v1/layers/%ff%fe",
        "/v1/layers/%C3",
        "/v1/layers/child/commit%",
    ] {
        let v = srv.expect(400, "GET", p, None);
        assert!(
            v["error"].as_str().unwrap().contains("percent")
                || v["error"].as_str().unwrap().contains("UTF-8")
        );
    }

    srv.assert_alive();
}

#[test]
fn garbage_never_stops_the_server() {
    let srv = Server::start("garbage");
    srv.expect(201, "POST", "/v1/layers", Some(r#"{"id":"keep"}"#));
    let sock = srv.sock.clone();

    // A client that sends half a request and waits: 408 after the read timeout. Runs while
    // the rest goes on.
    let slow = {
        let sock = sock.clone();
        std::thread::spawn(move || {
            let mut s = UnixStream::connect(&sock).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            s.write_all(b"GET /v1/layers HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            let t = Instant::now();
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out);
            let r = admin::parse_response(&out).expect("an answer to a slow client");
            (r.status, t.elapsed())
        })
    };

    // Connect and close without a byte; connect, send nothing, half-close.
    drop(UnixStream::connect(&sock).unwrap());
    assert!(raw(&sock, b"").is_empty());

    // Random bytes.
    let mut rng = Rng::new(0x5eed_1234_abcd_ef01);
    for i in 0..200 {
        let len = match i % 4 {
            0 => rng.index(16) + 1,
            1 => rng.index(512) + 1,
            2 => rng.index(8192) + 1,
            _ => rng.index(40_000) + 1,
        };
        let mut bytes = rng.bytes(len);
        if i % 5 == 0 {
            // Random bytes after a plausible start, and random bytes with a blank line.
            let mut b = b"POST /v1/layers HTTP/1.1\r\nContent-Length: 20\r\n\r\n".to_vec();
            b.extend_from_slice(&bytes);
            bytes = b;
        } else if i % 5 == 1 {
            bytes.extend_from_slice(b"\r\n\r\n");
        }
        let out = raw(&sock, &bytes);
        let r = admin::parse_response(&out)
            .unwrap_or_else(|| panic!("random request {i}: no HTTP answer: {:?}", clip(&out)));
        assert!(
            (400..=599).contains(&r.status) && r.status != 500,
            "random request {i}: status {} {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
    }

    // Every truncation of a valid request.
    let full = post("/v1/layers", r#"{"id":"trunc","labels":{"a":"b"}}"#);
    for cut in 1..full.len() {
        raw_expect(&sock, &full[..cut], &[400]);
    }
    srv.expect(404, "GET", "/v1/layers/trunc", None);
    // A body longer than its Content-Length: the extra is ignored.
    let mut long = post("/v1/layers", r#"{"id":"extra"}"#);
    long.extend_from_slice(b"GARBAGE");
    let out = raw(&sock, &long);
    assert_eq!(admin::parse_response(&out).unwrap().status, 201);

    // Malformed heads.
    for (req, st) in [
        (&b"\r\n\r\n"[..], &[400][..]),
        (b"GET\r\n\r\n", &[400]),
        (b"GET /v1/layers\r\n\r\n", &[400]),
        (b"GET /v1/layers HTTP/2.0\r\n\r\n", &[505]),
        (b"GET /v1/layers FTP/1.0\r\n\r\n", &[400]),
        (b"GET  /v1/layers HTTP/1.1\r\n\r\n", &[400]),
        (b"G(T /v1/layers HTTP/1.1\r\n\r\n", &[400]),
        (b"GET v1/layers HTTP/1.1\r\n\r\n", &[400]),
        (b"GET * HTTP/1.1\r\n\r\n", &[400]),
        (b"GET /v1/layers HTTP/1.1\r\nno colon\r\n\r\n", &[400]),
        (b"GET /v1/layers HTTP/1.1\r\nBad Name: x\r\n\r\n", &[400]),
        (b"GET /v1/\xff\xfe HTTP/1.1\r\n\r\n", &[400]),
        (b"GET /v1/layers HTTP/1.1\r\nX: \xc3\x28\r\n\r\n", &[400]),
        (b"FOO /v1/layers HTTP/1.1\r\n\r\n", &[405]),
        (b"get /v1/layers HTTP/1.1\r\n\r\n", &[405]),
        (
            b"POST /v1/layers HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            &[501],
        ),
        (
            b"POST /v1/layers HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n{}\n",
            &[400],
        ),
        (b"POST /v1/layers HTTP/1.1\r\nContent-Length: -1\r\n\r\n", &[400]),
        (b"POST /v1/layers HTTP/1.1\r\nContent-Length: abc\r\n\r\n", &[400]),
        (b"POST /v1/layers HTTP/1.1\r\nContent-Length: 1e3\r\n\r\n", &[400]),
        (b"POST /v1/layers HTTP/1.1\r\nContent-Length:\r\n\r\n", &[400]),
        (
            b"POST /v1/layers HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
            &[400],
        ),
        // Bare LF line ends are tolerated.
        (b"GET /v1/layers/nope HTTP/1.1\n\n", &[404]),
    ] {
        raw_expect(&sock, req, st);
    }

    // Huge heads: one long header, many headers, a long request line.
    let mut big = b"GET /v1/layers HTTP/1.1\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 20_000));
    big.extend_from_slice(b"\r\n\r\n");
    raw_expect(&sock, &big, &[431]);
    let mut many = b"GET /v1/layers HTTP/1.1\r\n".to_vec();
    for i in 0..3000 {
        many.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    raw_expect(&sock, &many, &[431]);
    let mut line = b"GET /v1/layers/".to_vec();
    line.extend(std::iter::repeat_n(b'a', 17_000));
    line.extend_from_slice(b" HTTP/1.1\r\n\r\n");
    raw_expect(&sock, &line, &[431]);
    // Megabytes without any line end.
    let endless = vec![b'A'; 3 << 20];
    raw_expect(&sock, &endless, &[431]);
    // Just under the limit is fine.
    let mut fits = b"GET /v1/layers/nope HTTP/1.1\r\nX-Big: ".to_vec();
    fits.extend(std::iter::repeat_n(b'a', 16_000));
    fits.extend_from_slice(b"\r\n\r\n");
    raw_expect(&sock, &fits, &[404]);

    // Huge Content-Length: refused before reading.
    for cl in [
        "1048577",
        "4294967296",
        "18446744073709551615",
        "99999999999999999999999999",
    ] {
        let req = format!("POST /v1/layers HTTP/1.1\r\nContent-Length: {cl}\r\n\r\n{{}}");
        raw_expect(&sock, req.as_bytes(), &[413]);
    }
    // A body over the limit actually sent.
    let body = vec![b' '; (1 << 20) + 10];
    let mut req = format!(
        "POST /v1/layers HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    raw_expect(&sock, &req, &[413]);
    // Exactly the limit: read, then refused as JSON.
    let mut body = vec![b' '; 1 << 20];
    body[0] = b'[';
    let mut req = format!(
        "POST /v1/layers HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    raw_expect(&sock, &req, &[400]);

    // Invalid JSON, wrong types, deep nesting (no stack overflow).
    let deep = "[".repeat(200_000);
    let deep_obj = r#"{"id":"#.to_string() + &"{\"a\":".repeat(50_000);
    let mut deep_labels = r#"{"id":"x","labels":"#.to_string();
    deep_labels.push_str(&"[".repeat(100_000));
    for body in [
        "{",
        "}",
        "\"id\"",
        "1e999999",
        r#"{"id":"x","parent":7}"#,
        r#"{"id":"x","state":true}"#,
        r#"{"id":["x"]}"#,
        r#"{"id":"\ud800"}"#,
        r#"{"id":"x\u0000y"}"#,
        deep.as_str(),
        deep_obj.as_str(),
        deep_labels.as_str(),
    ] {
        raw_expect(&sock, &post("/v1/layers", body), &[400]);
    }
    raw_expect(&sock, &post("/v1/layers/keep/snapshot", &deep), &[400]);
    raw_expect(&sock, &post("/v1/layers/keep/commit", &deep), &[400]);

    // Invalid percent-encoding in every position.
    for p in [
        "/v1/layers/%",
        "/%zz/layers",
        "/v1/%ZZ",
        "/v1/layers/keep/%C0%80",
    ] {
        raw_expect(
            &sock,
            format!("GET {p} HTTP/1.1\r\n\r\n").as_bytes(),
            &[400],
        );
    }

    // 10,000-byte ids in bodies and paths.
    let long_id = "L".repeat(10_000);
    let body = serde_json::json!({ "id": long_id }).to_string();
    raw_expect(&sock, &post("/v1/layers", &body), &[400]);
    let body = serde_json::json!({ "id": "ok-child", "parent": long_id }).to_string();
    raw_expect(&sock, &post("/v1/layers", &body), &[400, 404]);
    let body = serde_json::json!({ "id": long_id }).to_string();
    raw_expect(&sock, &post("/v1/layers/keep/snapshot", &body), &[400, 409]);
    for (m, suffix) in [("GET", ""), ("DELETE", ""), ("POST", "/commit")] {
        let p = admin::layer_path(&long_id, suffix);
        raw_expect(
            &sock,
            format!("{m} {p} HTTP/1.1\r\n\r\n").as_bytes(),
            &[400, 404],
        );
    }
    let multibyte = "é".repeat(5_000);
    let body = serde_json::json!({ "id": multibyte, "labels": { multibyte.clone(): multibyte } })
        .to_string();
    raw_expect(&sock, &post("/v1/layers", &body), &[400]);
    let p = admin::layer_path(&"%".repeat(3_000), "");
    raw_expect(
        &sock,
        format!("GET {p} HTTP/1.1\r\n\r\n").as_bytes(),
        &[400, 404],
    );

    // Labels: many and large (but within the body limit) are the engine's call; the server
    // must answer either way.
    let labels: serde_json::Map<String, Value> = (0..2000)
        .map(|i| (format!("k{i}"), Value::String("v".repeat(100))))
        .collect();
    let body = serde_json::json!({ "labels": labels }).to_string();
    let out = raw(
        &sock,
        format!(
            "PUT /v1/layers/keep/labels HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    let st = admin::parse_response(&out).unwrap().status;
    assert!(st == 200 || (400..500).contains(&st), "big labels: {st}");

    let (status, waited) = slow.join().unwrap();
    assert_eq!(status, 408, "slow client");
    assert!(
        waited >= Duration::from_secs(8) && waited < Duration::from_secs(20),
        "slow client answered after {waited:?}"
    );

    // Still serving, with its state intact.
    srv.assert_alive();
    let v = srv.expect(200, "GET", "/v1/layers/keep", None);
    assert_eq!(v["id"], "keep");
    srv.expect(204, "DELETE", "/v1/layers/extra", None);
}

/// Labels under `strata.io/` belong to Strata (the containerd snapshotter's names, the import
/// marker): clients cannot set them, and replacing a layer's labels keeps them.
#[test]
fn reserved_labels() {
    let srv = Server::start("reserved");
    srv.expect(
        400,
        "POST",
        "/v1/layers",
        Some(r#"{"id":"x","labels":{"strata.io/importing":"1"}}"#),
    );
    srv.expect(404, "GET", "/v1/layers/x", None);
    let mut labels = std::collections::BTreeMap::new();
    labels.insert(
        control::snapshotter::NAME_LABEL.to_string(),
        "default/1/k".to_string(),
    );
    srv.engine.layer_create("snap-1", labels).unwrap();
    srv.expect(
        400,
        "PUT",
        "/v1/layers/snap-1/labels",
        Some(r#"{"labels":{"strata.io/snapshotter.name":"stolen"}}"#),
    );
    let l = srv.expect(
        200,
        "PUT",
        "/v1/layers/snap-1/labels",
        Some(r#"{"labels":{"team":"a"}}"#),
    );
    assert_eq!(l["labels"]["team"], "a");
    assert_eq!(l["labels"][control::snapshotter::NAME_LABEL], "default/1/k");
}

#[test]
fn connection_limit() {
    let srv = Server::start("limit");
    // Idle connections hold their slots; the ones past the limit are told 503 at once.
    let mut idle = Vec::new();
    for _ in 0..admin::MAX_CONNECTIONS {
        idle.push(UnixStream::connect(&srv.sock).unwrap());
    }
    // Give the accept loop time to hand them to their threads.
    std::thread::sleep(Duration::from_millis(300));
    let mut rejected = 0;
    for _ in 0..10 {
        let mut s = UnixStream::connect(&srv.sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let r = admin::parse_response(&out).expect("an answer past the limit");
        assert_eq!(r.status, 503);
        rejected += 1;
    }
    assert_eq!(rejected, 10);
    // One of the idle connections can still be used.
    let mut s = idle.pop().unwrap();
    s.write_all(b"GET /v1/layers HTTP/1.1\r\n\r\n").unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    assert_eq!(admin::parse_response(&out).unwrap().status, 200);
    drop(idle);
    // Slots come back once the idle clients go.
    let t = Instant::now();
    loop {
        let r = admin::raw_request(&srv.sock, "GET", "/v1/layers", None, Duration::from_secs(5))
            .unwrap();
        if r.status == 200 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "slots not released");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Many clients at once, all served.
    let threads: Vec<_> = (0..32)
        .map(|i| {
            let sock = srv.sock.clone();
            std::thread::spawn(move || {
                let body = format!(r#"{{"id":"par{i}"}}"#);
                let r = admin::raw_request(
                    &sock,
                    "POST",
                    "/v1/layers",
                    Some(body.as_bytes()),
                    Duration::from_secs(30),
                )
                .unwrap();
                r.status
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), 201);
    }
    let v = srv.expect(200, "GET", "/v1/layers", None);
    assert!(v["layers"].as_array().unwrap().len() >= 32);
}

#[test]
fn client_errors() {
    let tmp = TestDir::new("admin-client");
    let missing = tmp.join("missing.sock");
    let c = admin::Client::new(&missing);
    let e = c.list().unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "cannot reach the strata daemon at {} (is `strata mount` running?)",
            missing.display()
        )
    );
    // A stale socket file with nobody listening.
    let stale = tmp.join("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    let e = admin::Client::new(&stale).list().unwrap_err().to_string();
    assert!(e.starts_with("cannot reach the strata daemon"), "{e}");

    let srv = Server::start("client");
    let c = admin::Client::new(&srv.sock);
    let e = c.stat("nope").unwrap_err().to_string();
    assert!(!e.is_empty() && !e.contains('{'), "{e}");
    let l = c
        .create(&admin::CreateRequest {
            id: "base".into(),
            parent: None,
            state: None,
            labels: [("k".to_string(), "v".to_string())].into(),
            limits: Default::default(),
        })
        .unwrap();
    assert_eq!(l.state, "active");
    assert_eq!(c.commit("base").unwrap().state, "committed");
    let v = c
        .create(&admin::CreateRequest {
            id: "v".into(),
            parent: Some("base".into()),
            state: Some(admin::CloneState::View),
            labels: Default::default(),
            limits: Default::default(),
        })
        .unwrap();
    assert_eq!(v.state, "view");
    assert_eq!(v.chain, vec!["base".to_string()]);
    let e = c.remove("base").unwrap_err().to_string();
    assert!(!e.is_empty(), "{e}");
    c.remove("v").unwrap();
    c.remove("base").unwrap();
    assert!(c.list().unwrap().layers.iter().all(|l| l.id != "base"));
}

/// Run the `strata` binary's `layer` commands against the in-process server.
/// (The socket option goes before the subcommand here: the other tests put it after.)
fn cli(sock: &Path, args: &[&str]) -> (i32, String, String) {
    let mut all: Vec<&OsStr> = vec![OsStr::new("--admin-socket"), sock.as_os_str()];
    all.push(OsStr::new("layer"));
    all.extend(args.iter().map(OsStr::new));
    let out = strata(&all);
    assert_no_panic(&format!("strata layer {args:?}"), &out.stderr);
    (out.code, out.stdout, out.stderr)
}

fn cli_ok(sock: &Path, args: &[&str]) -> String {
    let (code, out, err) = cli(sock, args);
    assert_eq!(code, 0, "strata layer {args:?}: {err}");
    out
}

#[test]
fn layer_cli() {
    let srv = Server::start("cli");
    let s = &srv.sock;
    let initial = srv.expect(200, "GET", "/v1/layers", None)["layers"]
        .as_array()
        .unwrap()
        .len();
    let out = cli_ok(s, &["create", "base", "--label", "a=b", "--label", "c=d=e"]);
    assert!(out.contains("base") && out.contains("active"), "{out}");
    let j: Value = serde_json::from_str(&cli_ok(s, &["stat", "base", "--json"])).unwrap();
    assert_eq!(j["labels"], serde_json::json!({"a": "b", "c": "d=e"}));
    cli_ok(s, &["commit", "base"]);
    let j: Value = serde_json::from_str(&cli_ok(s, &["clone", "base", "app", "--json"])).unwrap();
    assert_eq!(j["state"], "active");
    assert_eq!(j["parent"], "base");
    let out = cli_ok(s, &["clone", "base", "ro", "--view"]);
    assert!(out.contains("view"), "{out}");
    let j: Value =
        serde_json::from_str(&cli_ok(s, &["snapshot", "app", "app-snap", "--json"])).unwrap();
    assert_eq!(j["id"], "app-snap");
    assert_eq!(j["state"], "committed");

    let out = cli_ok(s, &["stat", "app"]);
    for want in [
        "id:",
        "state:",
        "parent:",
        "chain:",
        "owned:",
        "inodes:",
        "created:",
        "app-snap -> base",
    ] {
        assert!(out.contains(want), "stat output lacks {want:?}:\n{out}");
    }

    let out = cli_ok(s, &["ls"]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("ID"), "{out}");
    for h in ["STATE", "PARENT", "OWNED", "INODES", "CREATED"] {
        assert!(lines[0].contains(h), "{out}");
    }
    assert_eq!(lines.len(), initial + 5, "{out}");
    // Aligned: the STATE column starts at the same offset on every line.
    let col = lines[0].find("STATE").unwrap();
    for l in &lines[1..] {
        let state = &l[col..];
        assert!(
            ["active", "committed", "view"]
                .iter()
                .any(|s| state.starts_with(s)),
            "misaligned: {l:?}\n{out}"
        );
    }
    let j: Value = serde_json::from_str(&cli_ok(s, &["ls", "--json"])).unwrap();
    assert_eq!(j["layers"].as_array().unwrap().len(), initial + 4);

    // Errors: the daemon's message, non-zero exit.
    let (code, _, err) = cli(s, &["rm", "base"]);
    assert_ne!(code, 0);
    assert!(err.starts_with("strata: error: "), "{err}");
    let (code, _, err) = cli(s, &["stat", "nope"]);
    assert_ne!(code, 0);
    assert!(
        err.starts_with("strata: error: ") && err.lines().count() == 1,
        "{err}"
    );
    let (code, _, err) = cli(s, &["create", "x", "--label", "novalue"]);
    assert_ne!(code, 0);
    assert!(err.contains("KEY=VALUE"), "{err}");

    let out = cli_ok(s, &["rm", "ro"]);
    assert!(out.contains("removed"), "{out}");
    let j: Value = serde_json::from_str(&cli_ok(s, &["rm", "app", "--json"])).unwrap();
    assert_eq!(j["removed"], true);

    // No daemon.
    let missing = srv.tmp.join("none.sock");
    let (code, _, err) = cli(&missing, &["ls"]);
    assert_ne!(code, 0);
    assert_eq!(
        err.trim(),
        format!(
            "strata: error: cannot reach the strata daemon at {} (is `strata mount` running?)",
            missing.display()
        )
    );
}

/// The "layer is mounted" refusal, with a tmpfs standing in for the FUSE mount and a bind
/// mount of `<mnt>/<id>` standing in for a container's rootfs. Needs root; skipped otherwise.
#[test]
fn remove_refused_while_mounted() {
    let srv = Server::start("mounted");
    let run = |args: &[&str]| {
        Command::new(args[0])
            .args(&args[1..])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    let mnt = srv.mnt.to_str().unwrap().to_string();
    if !run(&["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", &mnt]) {
        eprintln!("skipped: cannot mount a tmpfs (needs root)");
        return;
    }
    let _tmpfs = MountGuard::new(&mnt);
    let id = "app layer";
    let layer_dir = srv.mnt.join(id);
    std::fs::create_dir_all(layer_dir.join("etc")).unwrap();
    let target = srv.tmp.join("container rootfs");
    let target2 = srv.tmp.join("etc-only");
    std::fs::create_dir_all(&target).unwrap();
    std::fs::create_dir_all(&target2).unwrap();
    std::fs::create_dir_all(srv.mnt.join("app")).unwrap();
    srv.expect(201, "POST", "/v1/layers", Some(r#"{"id":"app layer"}"#));
    srv.expect(201, "POST", "/v1/layers", Some(r#"{"id":"app"}"#));

    assert!(run(&[
        "mount",
        "--bind",
        layer_dir.to_str().unwrap(),
        target.to_str().unwrap()
    ]));
    let bind = MountGuard::new(&target);
    let p = admin::layer_path(id, "");
    let v = srv.expect(409, "DELETE", &p, None);
    let msg = v["error"].as_str().unwrap();
    assert!(msg.contains(target.to_str().unwrap()), "{msg}");
    // A layer whose name is a prefix of the mounted one's is not affected.
    srv.expect(204, "DELETE", "/v1/layers/app", None);

    assert!(bind.unmount());
    // A subdirectory of the layer mounted elsewhere counts too.
    assert!(run(&[
        "mount",
        "--bind",
        layer_dir.join("etc").to_str().unwrap(),
        target2.to_str().unwrap()
    ]));
    let bind = MountGuard::new(&target2);
    srv.expect(409, "DELETE", &p, None);
    assert!(bind.unmount());

    srv.expect(204, "DELETE", &p, None);
    srv.expect(404, "GET", &p, None);
}

#[test]
fn scrub_and_grow_endpoints() {
    let srv = Server::start("scrub");
    srv.expect(404, "GET", "/v1/scrub", None);
    srv.expect(404, "DELETE", "/v1/scrub", None);
    for body in [
        r#"{"rate_bytes_per_second":0}"#,
        r#"{"rate_bytes_per_second":-1}"#,
        r#"{"rate_bytes_per_second":"fast"}"#,
        r#"{"rate":1}"#,
        "{",
    ] {
        srv.expect(400, "POST", "/v1/scrub", Some(body));
    }
    srv.expect(405, "PUT", "/v1/scrub", None);
    srv.expect(405, "GET", "/v1/grow", None);
    srv.expect(400, "POST", "/v1/grow", Some(r#"{"size":1}"#));
    // An empty file system: the scrub is done at once, clean.
    let v = srv.expect(202, "POST", "/v1/scrub", None);
    assert!(v["state"] == "running" || v["state"] == "done", "{v}");
    srv.engine.scrub_wait();
    let v = srv.expect(200, "GET", "/v1/scrub", None);
    assert_eq!(v["state"], "done", "{v}");
    assert_eq!(v["bad_blocks"], 0, "{v}");
    assert_eq!(v["progress"], 1.0, "{v}");
    // 4 KiB/s over a megabyte: still running when the second one is asked for.
    let root = srv.engine.layer_root("default").unwrap();
    let st = srv
        .engine
        .mknod(
            root,
            b"f",
            libc::S_IFREG | 0o644,
            0,
            engine::Caller { uid: 0, gid: 0 },
            None,
        )
        .unwrap();
    srv.engine
        .write_sync(st.ino, 0, &testkit::pattern(1, 1 << 20))
        .unwrap();
    srv.engine.forget(st.ino, 1);
    srv.engine.fsync_sync().unwrap();
    let v = srv.expect(
        202,
        "POST",
        "/v1/scrub",
        Some(r#"{"rate_bytes_per_second":4096}"#),
    );
    assert_eq!(v["rate_limit_bytes_per_second"], 4096, "{v}");
    srv.expect(409, "POST", "/v1/scrub", None);
    let v = srv.expect(200, "DELETE", "/v1/scrub", None);
    assert_eq!(v["state"], "cancelled", "{v}");
    // The in-memory device did not grow.
    let v = srv.expect(200, "POST", "/v1/grow", None);
    assert_eq!(v["old_bytes"], v["new_bytes"], "{v}");
}
