//! What is prepared once per run, before any workload: the files of every system's lower layer
//! (pseudo-random data) and the tars (the tree `tar -x` extracts, the images of N empty files
//! the clone workload puts under a clone). Same bytes on every run and every system.

use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::interrupt;
use crate::rng::XorShift;
use crate::Res;

/// Prepared once per run, before any container: shared by every step that names it.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// A file of pseudo-random data in every system's lower layer (what each container
    /// inherits), written before the lower layer is frozen.
    LowerFile { name: &'static str, size: u64 },
    /// A tar generated into the tars directory, outside every system (same disk).
    Tar(TarSpec),
}

/// A deterministic tar.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TarSpec {
    /// `tree.tar`: see [`write_tree`].
    Tree {
        dirs: usize,
        files_per_dir: usize,
        bytes: u64,
    },
    /// `files-N.tar`: see [`write_empty_files`].
    EmptyFiles(usize),
}

impl TarSpec {
    /// Where it is in the tars directory `tars`.
    pub fn path(&self, tars: &Path) -> PathBuf {
        match self {
            TarSpec::Tree { .. } => tars.join("tree.tar"),
            TarSpec::EmptyFiles(n) => tars.join(format!("files-{n}.tar")),
        }
    }

    /// Generate it into `tars`.
    pub fn write(&self, tars: &Path) -> Res<()> {
        match *self {
            TarSpec::Tree {
                dirs,
                files_per_dir,
                bytes,
            } => write_tree(&self.path(tars), dirs, files_per_dir, bytes),
            TarSpec::EmptyFiles(n) => write_empty_files(&self.path(tars), n),
        }
    }
}

/// Write `size` bytes of pseudo-random data to `path` (1 MiB writes), then fsync. Random so that
/// nothing can compress or deduplicate it; the same bytes for every system.
pub fn lay_out(path: &Path, size: u64) -> Res<()> {
    const CHUNK: usize = 1 << 20;
    let _ = fs::remove_file(path);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| format!("create {}: {e}", path.display()))?;
    let mut buf = vec![0u8; CHUNK];
    let mut rng = XorShift::new(0x9E37_79B9_7F4A_7C15);
    let mut written = 0u64;
    while written < size {
        interrupt::check_interrupted()?;
        rng.fill(&mut buf);
        let n = (size - written).min(CHUNK as u64) as usize;
        f.write_all(&buf[..n])
            .map_err(|e| format!("write {} at {written}: {e}", path.display()))?;
        written += n as u64;
    }
    f.sync_all()
        .map_err(|e| format!("fsync {}: {e}", path.display()))?;
    Ok(())
}

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

    #[test]
    fn layout_writes_random_data() {
        let dir = std::env::temp_dir().join(format!("strata-bench-layout-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let f = dir.join("lower.dat");
        lay_out(&f, 3 << 20 | 123).unwrap();
        let data = fs::read(&f).unwrap();
        assert_eq!(data.len(), 3 << 20 | 123);
        assert_ne!(&data[..4096], &data[1 << 20..(1 << 20) + 4096]);
        fs::remove_dir_all(&dir).unwrap();
    }
}
