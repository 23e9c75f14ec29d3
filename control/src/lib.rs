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
pub mod metrics;
pub mod oci;
pub mod snapshotter;
pub mod stats;

pub use error::Error;
pub use metrics::{render, serve_metrics};
