//! # strata-control
//!
//! Strata's control plane: the Prometheus endpoint (`/metrics`, text format) with the
//! engine's per-layer and whole-daemon statistics ([`stats`]), and the admin API (JSON over
//! HTTP on a unix socket, see [`admin`]; `GET /v1/stats` has the same numbers as JSON), the
//! containerd proxy snapshotter ([`snapshotter`], gRPC) and OCI layer tars ([`oci`]).
//! No engine logic lives here.
#![forbid(unsafe_code)]

pub mod admin;
mod error;
pub mod host;
pub mod labels;
pub mod oci;
pub mod snapshotter;
pub mod stats;

pub use error::Error;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use engine::Engine;

/// Render the metrics in Prometheus text exposition format: per layer (labels `layer`, and
/// `container` for active layers) and for the whole daemon. See [`stats::render_report`].
pub fn render(engine: &Engine) -> String {
    stats::render_report(&stats::collect(engine))
}

/// Serve `/metrics` on `addr` from a background thread.
pub fn serve_metrics(addr: SocketAddr, engine: Arc<Engine>) -> std::io::Result<SocketAddr> {
    let l = TcpListener::bind(addr)?;
    let local = l.local_addr()?;
    std::thread::Builder::new()
        .name("strata-metrics".into())
        .spawn(move || {
            for conn in l.incoming() {
                match conn {
                    Ok(s) => {
                        if let Err(e) = handle(s, &engine) {
                            log::debug!("metrics connection: {e}");
                        }
                    }
                    Err(e) => log::warn!("metrics accept: {e}"),
                }
            }
        })?;
    Ok(local)
}

fn handle(mut s: TcpStream, engine: &Engine) -> std::io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut r = BufReader::new(s.try_clone()?);
    let mut line = String::new();
    r.by_ref().take(8192).read_line(&mut line)?;
    // Drain headers.
    loop {
        let mut h = String::new();
        if r.by_ref().take(8192).read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, ctype, body) = match (method, path) {
        ("GET", "/metrics") => ("200 OK", "text/plain; version=0.0.4", render(engine)),
        ("GET", _) => (
            "404 Not Found",
            "text/plain",
            "not found; try /metrics\n".to_string(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "only GET\n".to_string(),
        ),
    };
    write!(s, "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
}
