#!/usr/bin/env bash
# Regenerate control/src/snapshotter/pb/*.rs (the snapshot and diff services Strata serves,
# the content service it calls) from the .proto files here (needs protoc:
# `apt-get install protobuf-compiler`). The generated code is vendored so that ordinary builds
# need neither protoc nor prost-build.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$here/../src/snapshotter/pb"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/src"
cat > "$tmp/Cargo.toml" <<TOML
[package]
name = "strata-protogen"
version = "0.0.0"
edition = "2021"
[dependencies]
tonic-prost-build = "0.14"
[workspace]
TOML
cat > "$tmp/src/main.rs" <<RS
fn main() {
    // Served by Strata: the snapshotter and the diff service.
    tonic_prost_build::configure()
        .build_client(false)
        .out_dir("$out")
        .compile_protos(
            &["$here/containerd/snapshots.proto", "$here/containerd/diff.proto"],
            &["$here"],
        )
        .expect("protoc");
    // Used by Strata as a client: containerd's content store and leases.
    tonic_prost_build::configure()
        .build_server(false)
        .build_transport(false)
        .out_dir("$out")
        .compile_protos(
            &["$here/containerd/content.proto", "$here/containerd/leases.proto"],
            &["$here"],
        )
        .expect("protoc");
}
RS
cargo run --quiet --manifest-path "$tmp/Cargo.toml"
echo "wrote $out"
