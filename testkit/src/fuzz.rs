//! The stable-toolchain fuzz driver: feeds a target body every file of its committed corpus
//! (`fuzz/corpus/<target>/`) and then a bounded number of seeded mutations of them, so
//! `cargo test` exercises the cargo-fuzz targets without nightly. Used by
//! `engine/tests/fuzz_corpus.rs` and `control/tests/fuzz_corpus.rs`; the target bodies live in
//! `fuzz/bodies/` (shared with the cargo-fuzz crate, outside the workspace).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::Rng;

/// `fuzz/corpus/<target>/` of this repository.
pub fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

pub fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = corpus_dir(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| std::fs::read(p).expect("corpus file"))
        .collect()
}

/// One libFuzzer-style mutation round: a few of bit flips, interesting bytes, inserts,
/// deletes, duplicated ranges, truncation and splices with another input.
pub fn mutate(rng: &mut Rng, input: &[u8], other: &[u8], max_len: usize) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..1 + rng.index(6) {
        let n = v.len();
        match rng.index(9) {
            0 if n > 0 => {
                let i = rng.index(n);
                v[i] ^= 1 << rng.index(8);
            }
            1 if n > 0 => {
                let i = rng.index(n);
                v[i] = [0, 1, 0x7f, 0x80, 0xff, 0xfe, b'/', b'.'][rng.index(8)];
            }
            2 if n > 0 => {
                let i = rng.index(n);
                v[i] = rng.next_u64() as u8;
            }
            3 => {
                let i = rng.index(n + 1);
                let k = 1 + rng.index(16);
                for _ in 0..k {
                    v.insert(i, rng.next_u64() as u8);
                }
            }
            4 if n > 0 => {
                let i = rng.index(n);
                let k = (1 + rng.index(32)).min(n - i);
                v.drain(i..i + k);
            }
            5 if n > 1 => {
                let a = rng.index(n);
                let k = (1 + rng.index(64)).min(n - a);
                let chunk: Vec<u8> = v[a..a + k].to_vec();
                let at = rng.index(n);
                v.splice(at..at, chunk);
            }
            6 if n > 0 => v.truncate(rng.index(n)),
            7 if !other.is_empty() => {
                let a = rng.index(other.len());
                let k = (1 + rng.index(256)).min(other.len() - a);
                let at = rng.index(n + 1);
                let end = (at + k).min(n);
                v.splice(at..end, other[a..a + k].iter().copied());
            }
            _ if n >= 4 => {
                // An interesting little-endian integer somewhere.
                let i = rng.index(n - 3);
                let x: u32 = [0, 1, u32::MAX, 0x7fff_ffff, 4096, 4064, 255, 256][rng.index(8)];
                v[i..i + 4].copy_from_slice(&x.to_le_bytes());
            }
            _ => v.push(rng.next_u64() as u8),
        }
    }
    v.truncate(max_len);
    v
}

/// Run `body` on the corpus and then on up to `iters` mutations (at most `budget` long).
/// A panic saves the input in `crashes/fuzz-crashes/` (callers pass the target directory's
/// `CARGO_TARGET_TMPDIR`) and fails with its path.
pub fn run(
    target: &str,
    body: fn(&[u8]),
    iters: usize,
    budget: Duration,
    seed: u64,
    crashes: &Path,
) -> usize {
    let seeds = corpus(target);
    assert!(!seeds.is_empty(), "empty corpus for {target}");
    let max_len = seeds.iter().map(|s| s.len()).max().unwrap_or(0) * 2 + 64;
    let check = |input: &[u8]| {
        let r = std::panic::catch_unwind(|| body(input));
        if r.is_err() {
            let dir = crashes.join("fuzz-crashes");
            let _ = std::fs::create_dir_all(&dir);
            let path = dir.join(format!("{target}-{:016x}", crate::hash(input)));
            let _ = std::fs::write(&path, input);
            panic!(
                "fuzz target {target} panicked; input saved to {} (add it to fuzz/corpus/{target}/ once fixed)",
                path.display()
            );
        }
    };
    for s in &seeds {
        check(s);
    }
    let mut rng = Rng(seed);
    let start = Instant::now();
    let mut n = seeds.len();
    for _ in 0..iters {
        if start.elapsed() > budget {
            break;
        }
        let a = &seeds[rng.index(seeds.len())];
        let b = &seeds[rng.index(seeds.len())];
        let input = mutate(&mut rng, a, b, max_len);
        check(&input);
        n += 1;
    }
    eprintln!(
        "fuzz corpus driver {target}: {} corpus inputs + {} mutations in {:.1?}",
        seeds.len(),
        n - seeds.len(),
        start.elapsed()
    );
    n
}
