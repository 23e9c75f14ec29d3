//! Test support of the root package that is not in `testkit`: OCI image archives built in
//! memory, for tests/containerd.rs. `oci_image.rs` stays a file here because the containerd
//! benchmark (bench/src/ctr_bench.rs) includes it by path.

pub mod oci_image;
