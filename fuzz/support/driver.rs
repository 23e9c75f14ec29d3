//! The stable-toolchain fuzz driver: feeds a target body every file of its committed corpus
//! (`fuzz/corpus/<target>/`) and then a bounded number of seeded mutations of them, so
//! `cargo test` exercises the cargo-fuzz targets without nightly. Included with `#[path]` by
//! `engine/tests/fuzz_corpus.rs` and `control/tests/fuzz_corpus.rs`.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// splitmix64: seeded, deterministic.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

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
    for _ in 0..1 + rng.below(6) {
        let n = v.len();
        match rng.below(9) {
            0 if n > 0 => {
                let i = rng.below(n);
                v[i] ^= 1 << rng.below(8);
            }
            1 if n > 0 => {
                let i = rng.below(n);
                v[i] = [0, 1, 0x7f, 0x80, 0xff, 0xfe, b'/', b'.'][rng.below(8)];
            }
            2 if n > 0 => {
                let i = rng.below(n);
                v[i] = rng.next() as u8;
            }
            3 => {
                let i = rng.below(n + 1);
                let k = 1 + rng.below(16);
                for _ in 0..k {
                    v.insert(i, rng.next() as u8);
                }
            }
            4 if n > 0 => {
                let i = rng.below(n);
                let k = (1 + rng.below(32)).min(n - i);
                v.drain(i..i + k);
            }
            5 if n > 1 => {
                let a = rng.below(n);
                let k = (1 + rng.below(64)).min(n - a);
                let chunk: Vec<u8> = v[a..a + k].to_vec();
                let at = rng.below(n);
                v.splice(at..at, chunk);
            }
            6 if n > 0 => v.truncate(rng.below(n)),
            7 if !other.is_empty() => {
                let a = rng.below(other.len());
                let k = (1 + rng.below(256)).min(other.len() - a);
                let at = rng.below(n + 1);
                let end = (at + k).min(n);
                v.splice(at..end, other[a..a + k].iter().copied());
            }
            _ if n >= 4 => {
                // An interesting little-endian integer somewhere.
                let i = rng.below(n - 3);
                let x: u32 = [0, 1, u32::MAX, 0x7fff_ffff, 4096, 4064, 255, 256][rng.below(8)];
                v[i..i + 4].copy_from_slice(&x.to_le_bytes());
            }
            _ => v.push(rng.next() as u8),
        }
    }
    v.truncate(max_len);
    v
}

/// Run `body` on the corpus and then on up to `iters` mutations (at most `budget` long).
/// A panic saves the input under the target dir and fails with its path.
pub fn run(target: &str, body: fn(&[u8]), iters: usize, budget: Duration, seed: u64) -> usize {
    let seeds = corpus(target);
    assert!(!seeds.is_empty(), "empty corpus for {target}");
    let max_len = seeds.iter().map(|s| s.len()).max().unwrap_or(0) * 2 + 64;
    let check = |input: &[u8]| {
        let r = std::panic::catch_unwind(|| body(input));
        if r.is_err() {
            let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fuzz-crashes");
            let _ = std::fs::create_dir_all(&dir);
            let path = dir.join(format!("{target}-{:016x}", crc(input)));
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
        let a = &seeds[rng.below(seeds.len())];
        let b = &seeds[rng.below(seeds.len())];
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

fn crc(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, x| {
        (h ^ *x as u64).wrapping_mul(0x100_0000_01b3)
    })
}
