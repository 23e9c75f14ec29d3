//! Sets `cfg(strata_avx512)` when the compiler has the AVX-512 and VPCLMULQDQ intrinsics
//! (stable since Rust 1.89): the data block checksums use them (`src/crc_fold.rs`); an older
//! compiler (the workspace supports 1.85) builds the `crc32c` crate's checksum instead.

use std::process::Command;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(strata_avx512)");
    println!("cargo::rerun-if-env-changed=RUSTC");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let minor = Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|v| {
            // "rustc 1.95.0 (59807616e 2026-04-14)"
            let ver = v.split_whitespace().nth(1)?.to_owned();
            let mut parts = ver.split('.');
            let major: u32 = parts.next()?.parse().ok()?;
            let minor: u32 = parts.next()?.parse().ok()?;
            Some(if major > 1 { u32::MAX } else { minor })
        });
    if minor.is_some_and(|m| m >= 89) {
        println!("cargo::rustc-cfg=strata_avx512");
    }
}
