//! Deterministic tar files: the tree `tar -x` extracts, and the images of N empty files the
//! clone-by-size workload puts under a clone. Same bytes on every run and every system.

use std::fs;
use std::io::{BufWriter, Write};
use std::path::Path;

use crate::interrupt;
use crate::rng::XorShift;
use crate::Res;

/// Fixed mtime (2026-01-01) so that the archive is the same every time.
const MTIME: u64 = 1_767_225_600;

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(MTIME);
    h.set_uid(0);
    h.set_gid(0);
    h
}

/// The sizes of the tree's files: pseudo-random, uniform in 0..2×mean, summing to about
/// `total` (exactly what they are is fixed by the seed).
fn file_sizes(n: usize, total: u64) -> Vec<u64> {
    let mean = total / n.max(1) as u64;
    let mut rng = XorShift::new(0x1234_5678_9ABC_DEF1);
    (0..n)
        .map(|_| {
            if mean == 0 {
                0
            } else {
                rng.next_u64() % (2 * mean)
            }
        })
        .collect()
}

/// A tree of `dirs` directories (`d000/`…) each holding `files` regular files of pseudo-random
/// sizes (about `total` bytes in all, pseudo-random data): `dirs × (files + 1)` entries.
pub fn write_tree(path: &Path, dirs: usize, files: usize, total: u64) -> Res<()> {
    let f = fs::File::create(path).map_err(|e| format!("create {}: {e}", path.display()))?;
    let mut b = tar::Builder::new(BufWriter::with_capacity(1 << 20, f));
    let sizes = file_sizes(dirs * files, total);
    let max = sizes.iter().copied().max().unwrap_or(0) as usize;
    // One buffer of random bytes; each file takes a window of it at a different offset.
    let mut data = vec![0u8; max + 4096];
    XorShift::new(0x9E37_79B9_7F4A_7C15).fill(&mut data);
    let err = |e: std::io::Error| format!("write {}: {e}", path.display());
    for d in 0..dirs {
        interrupt::check_interrupted()?;
        let mut h = header(tar::EntryType::Directory, 0o755, 0);
        b.append_data(&mut h, format!("d{d:03}/"), std::io::empty())
            .map_err(err)?;
        for i in 0..files {
            let k = d * files + i;
            let size = sizes[k] as usize;
            let off = (k * 4093) % 4096;
            let mut h = header(tar::EntryType::Regular, 0o644, size as u64);
            b.append_data(
                &mut h,
                format!("d{d:03}/f{i:03}.dat"),
                &data[off..off + size],
            )
            .map_err(err)?;
        }
    }
    let mut w = b.into_inner().map_err(err)?;
    w.flush().map_err(err)?;
    Ok(())
}

/// `n` empty files spread over 100 directories (`d00/f000000`…): an image whose size is its
/// file count.
pub fn write_empty_files(path: &Path, n: usize) -> Res<()> {
    let f = fs::File::create(path).map_err(|e| format!("create {}: {e}", path.display()))?;
    let mut b = tar::Builder::new(BufWriter::with_capacity(1 << 20, f));
    let err = |e: std::io::Error| format!("write {}: {e}", path.display());
    let ndirs = 100.min(n.max(1));
    for d in 0..ndirs {
        let mut h = header(tar::EntryType::Directory, 0o755, 0);
        b.append_data(&mut h, format!("d{d:02}/"), std::io::empty())
            .map_err(err)?;
    }
    for i in 0..n {
        if i % 10_000 == 0 {
            interrupt::check_interrupted()?;
        }
        let mut h = header(tar::EntryType::Regular, 0o644, 0);
        b.append_data(
            &mut h,
            format!("d{:02}/f{i:06}", i % ndirs),
            std::io::empty(),
        )
        .map_err(err)?;
    }
    let mut w = b.into_inner().map_err(err)?;
    w.flush().map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_complete() {
        let dir = std::env::temp_dir().join(format!("strata-bench-tar-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join("a.tar"), dir.join("b.tar"));
        write_tree(&a, 3, 5, 100_000).unwrap();
        write_tree(&b, 3, 5, 100_000).unwrap();
        assert_eq!(fs::read(&a).unwrap(), fs::read(&b).unwrap());
        let mut ar = tar::Archive::new(fs::File::open(&a).unwrap());
        let mut entries = 0;
        let mut bytes = 0;
        for e in ar.entries().unwrap() {
            let e = e.unwrap();
            entries += 1;
            bytes += e.header().size().unwrap();
        }
        assert_eq!(entries, 3 * 6);
        assert!((50_000..150_000).contains(&bytes), "{bytes}");

        write_empty_files(&a, 250).unwrap();
        let mut ar = tar::Archive::new(fs::File::open(&a).unwrap());
        assert_eq!(ar.entries().unwrap().count(), 100 + 250);
        fs::remove_dir_all(&dir).unwrap();
    }
}
