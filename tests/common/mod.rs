//! Test support of the root package that is not in `testkit`: OCI image archives built in
//! memory, and the containerd tests' image (`ctr_image`). `oci_image.rs` stays a file here because the containerd
//! benchmark (bench/src/ctr_bench.rs) includes it by path.

pub mod ctr_image;
pub mod grpc_garbage;
pub mod oci_image;
