#!/usr/bin/env bash
# Regenerate tests/common/cri_pb/runtime.v1.rs (the CRI client tests/cri.rs uses) from
# cri.proto here (needs protoc:
# `apt-get install protobuf-compiler`). The generated code is vendored so that ordinary builds
# need neither protoc nor prost-build.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$here/../common/cri_pb"
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
    tonic_prost_build::configure()
        .build_server(false)
        .build_transport(false)
        .out_dir("$out")
        .compile_protos(&["$here/cri.proto"], &["$here"])
        .expect("protoc");
}
RS
cargo run --quiet --manifest-path "$tmp/Cargo.toml"
echo "wrote $out"
