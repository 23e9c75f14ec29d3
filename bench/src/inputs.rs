//! What is prepared once per run, before any workload: the files and trees of every system's
//! lower layer (pseudo-random data; a copy of the host's Python standard library) and the tars
//! (the tree `tar -x` extracts, the images of N empty files the clone workload puts under a
//! clone, the small-file tree, the Python standard library). Same bytes on every system; the
//! generated ones also on every run.

use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::rng::XorShift;
use crate::Res;
use crate::{interrupt, process};

/// Prepared once per run, before any container: shared by every step that names it.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// A file of pseudo-random data in every system's lower layer (what each container
    /// inherits), written before the lower layer is frozen.
    LowerFile { name: &'static str, size: u64 },
    /// A tar (generated as [`Input::Tar`] is) extracted into every system's lower layer,
    /// below the directory `dir` (made if missing), before the lower layer is frozen.
    LowerTree { dir: &'static str, tar: TarSpec },
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
    /// `small-N.tar`: N small files, see [`SmallTree`].
    SmallFiles(usize),
    /// `python-stdlib.tar`: the host's Python standard library as it is installed
    /// ([`PY_STDLIB`], with its `.pyc` files and their sources' mtimes), one directory
    /// `python3.11/`.
    PyStdlib,
}

impl TarSpec {
    /// Where it is in the tars directory `tars`.
    pub fn path(&self, tars: &Path) -> PathBuf {
        match self {
            TarSpec::Tree { .. } => tars.join("tree.tar"),
            TarSpec::EmptyFiles(n) => tars.join(format!("files-{n}.tar")),
            TarSpec::SmallFiles(n) => tars.join(format!("small-{n}.tar")),
            TarSpec::PyStdlib => tars.join("python-stdlib.tar"),
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
            TarSpec::SmallFiles(n) => SmallTree::new(n).write_tar(&self.path(tars)),
            TarSpec::PyStdlib => tar_stdlib(&self.path(tars)),
        }
    }
}

/// The Python standard library the interpreter-start and `tar -x` workloads copy (Debian's
/// `libpython3.11-stdlib`, with the `.pyc` files Debian compiles at install), and the
/// interpreter that goes with it.
pub const PY_STDLIB: &str = "/usr/lib/python3.11";
pub const PY_BIN: &str = "/usr/bin/python3.11";

/// `tar -cf TAR -C /usr/lib python3.11`: mtimes kept, so that the copies' `.pyc` files stay
/// valid (Python checks them against their sources' mtime and size).
fn tar_stdlib(tar: &Path) -> Res<()> {
    let lib = Path::new(PY_STDLIB);
    if !lib.join("os.py").is_file() || !Path::new(PY_BIN).is_file() {
        return Err(format!(
            "no Python standard library at {PY_STDLIB} or no {PY_BIN} \
             (`apt-get install python3.11`)"
        ));
    }
    let (parent, name) = (
        lib.parent().expect("absolute"),
        lib.file_name().expect("named"),
    );
    let out = process::run_captured(
        Command::new("tar")
            .arg("-cf")
            .arg(tar)
            .arg("-C")
            .arg(parent)
            .arg(name),
        Duration::from_secs(300),
    )?;
    if !out.status.success() {
        return Err(format!(
            "tar -cf {} -C {} {}: {} {}",
            tar.display(),
            parent.display(),
            name.to_string_lossy(),
            out.status,
            out.stderr.lines().take(3).collect::<Vec<_>>().join(" | ")
        ));
    }
    Ok(())
}

/// Extract `tar` below `dir` (made if missing) with the system's `tar`.
pub fn extract(tar: &Path, dir: &Path) -> Res<()> {
    fs::create_dir_all(dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    let out = process::run_captured(
        Command::new("tar").arg("-xf").arg(tar).arg("-C").arg(dir),
        Duration::from_secs(900),
    )?;
    if !out.status.success() {
        return Err(format!(
            "tar -xf {} -C {}: {} {}",
            tar.display(),
            dir.display(),
            out.status,
            out.stderr.lines().take(3).collect::<Vec<_>>().join(" | ")
        ));
    }
    Ok(())
}

/// A tree of small files: `n` files of 1–8 KiB (pseudo-random sizes and data, the same every
/// time), 100 to a directory (`d000/f000.dat`…). The small-file read workload reads it from
/// the lower layer (a tar of it, [`TarSpec::SmallFiles`]) and writes it in a container.
pub struct SmallTree {
    /// Each file: path relative to the tree, and its bytes as a range of `data`.
    pub files: Vec<(String, std::ops::Range<usize>)>,
    data: Vec<u8>,
}

impl SmallTree {
    pub const PER_DIR: usize = 100;
    pub const MIN: usize = 1024;
    pub const MAX: usize = 8192;

    pub fn new(n: usize) -> SmallTree {
        let mut data = vec![0u8; Self::MAX + 4096];
        XorShift::new(0x5EED_0F5A_11F1_1E55).fill(&mut data);
        let mut rng = XorShift::new(0x0DDB_A11C_AFE5_F00D);
        let files = (0..n)
            .map(|i| {
                let size =
                    Self::MIN + (rng.next_u64() % (Self::MAX - Self::MIN + 1) as u64) as usize;
                let off = (rng.next_u64() % 4096) as usize;
                (Self::path(i), off..off + size)
            })
            .collect();
        SmallTree { files, data }
    }

    fn path(i: usize) -> String {
        format!("d{:03}/f{:03}.dat", i / Self::PER_DIR, i % Self::PER_DIR)
    }

    /// Its directories, relative.
    pub fn dirs(&self) -> Vec<String> {
        (0..self.files.len().div_ceil(Self::PER_DIR))
            .map(|d| format!("d{d:03}"))
            .collect()
    }

    pub fn bytes(&self, i: usize) -> &[u8] {
        &self.data[self.files[i].1.clone()]
    }

    /// Total bytes of its files.
    pub fn total(&self) -> u64 {
        self.files.iter().map(|f| f.1.len() as u64).sum()
    }

    fn write_tar(&self, path: &Path) -> Res<()> {
        let f = fs::File::create(path).map_err(|e| format!("create {}: {e}", path.display()))?;
        let mut b = tar::Builder::new(BufWriter::with_capacity(1 << 20, f));
        let err = |e: std::io::Error| format!("write {}: {e}", path.display());
        for d in self.dirs() {
            let mut h = header(tar::EntryType::Directory, 0o755, 0);
            b.append_data(&mut h, format!("{d}/"), std::io::empty())
                .map_err(err)?;
        }
        for (i, (name, _)) in self.files.iter().enumerate() {
            let data = self.bytes(i);
            let mut h = header(tar::EntryType::Regular, 0o644, data.len() as u64);
            b.append_data(&mut h, name, data).map_err(err)?;
        }
        let mut w = b.into_inner().map_err(err)?;
        w.flush().map_err(err)?;
        Ok(())
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

        let t = SmallTree::new(250);
        assert_eq!(t.dirs(), ["d000", "d001", "d002"]);
        assert_eq!(t.files[101].0, "d001/f001.dat");
        assert!(t.files.iter().all(|f| (1024..=8192).contains(&f.1.len())));
        assert_eq!(t.bytes(7), SmallTree::new(250).bytes(7));
        TarSpec::SmallFiles(250).write(&dir).unwrap();
        let x = dir.join("x");
        extract(&TarSpec::SmallFiles(250).path(&dir), &x).unwrap();
        assert_eq!(fs::read(x.join("d002/f049.dat")).unwrap(), t.bytes(249));
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
