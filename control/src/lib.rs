//! # strata-control
//!
//! Strata's control plane: how the outside world reaches the engine. No engine logic lives
//! here, and nothing here knows FUSE.
//!
//! - [`metrics`]: the Prometheus endpoint (`/metrics`, text format) with the engine's
//!   per-layer and whole-daemon statistics, which [`stats`] collects (`GET /v1/stats` of the
//!   admin API has the same numbers as JSON).
//! - [`admin`]: the admin API, JSON over HTTP/1.1 on a root-only unix socket, and its
//!   [`admin::Client`] (`strata layer`, `strata stats`): a small HTTP server, the routes and
//!   their handlers, the JSON bodies.
//! - [`snapshotter`]: the containerd proxy snapshotter (gRPC).
//! - [`differ`]: the containerd diff service (gRPC; Apply and Diff of Strata layers inside the
//!   daemon, blobs through containerd's content API).
//! - [`oci`]: OCI layer tars, import and export.
//!
//! What those share has its own module, so none of them imports another: [`Error`] (what
//! failed; one function maps it to an HTTP status, one to a gRPC code), [`labels`] (the label
//! keys Strata reserves), [`host`] (root-only sockets, /proc/self/mountinfo).
#![forbid(unsafe_code)]

pub mod admin;
pub mod differ;
mod error;
pub mod host;
pub mod labels;
pub mod metrics;
pub mod oci;
pub mod snapshotter;
pub mod stats;

pub use error::Error;
pub use metrics::{render, serve_metrics};
