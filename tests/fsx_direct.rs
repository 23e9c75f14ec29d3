//! An fsx-style random file exerciser with O_DIRECT and io_uring modes (xfstests' fsx `-Z`
//! and `-U`), written here because the installed fsx-rs has neither mode.
//!
//! One file on a fresh Strata mount, an in-memory model of its expected content and size
//! (at most 8 MiB), and a seeded stream of operations weighted like fsx: write, read (checked
//! against the model), mapped read (mmap, checked, including the zeroed tail of the EOF page),
//! truncate (grow and shrink), fallocate punch hole, zero range (with and without
//! KEEP_SIZE), fallocate mode 0 (extends the size), copy_file_range within the file
//! (non-overlapping ranges), fsync/fdatasync and close/reopen. st_size is checked after
//! every operation.
//!
//! Modes (one test each):
//! * `fsx_odirect`: the file is opened with O_DIRECT; reads, writes and size changes use
//!   4 KiB-aligned offsets and lengths from 4 KiB-aligned buffers (punch hole and KEEP_SIZE
//!   zero range stay unaligned: they don't move EOF).
//! * `fsx_io_uring`: as above, but reads and writes go through an io_uring ring, including
//!   batches of 2..=8 operations in flight at once to non-overlapping ranges.
//! * `fsx_buffered_unaligned`: plain pread/pwrite (no O_DIRECT) at arbitrary offsets and
//!   lengths.
//!
//! Any mismatch panics with the last 30 operations, the first differing byte and expected vs
//! actual bytes. At the end the whole file is compared with the model, the mount is stopped,
//! fsck must be clean, and after a remount the file is compared again.
//!
//! Env: `STRATA_FSX_OPS` (default 100000 per mode), `STRATA_FSX_SEED` (default per mode).

#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Instant;

use testkit::sys::{self, AlignedBuf};
use testkit::uring::{Ring, RingOp};
use testkit::*;

const BLK: u64 = 4096;
const MAX_FILE: u64 = 8 << 20;
const MAX_OP: u64 = 256 << 10;
const LOG_KEEP: usize = 30;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|s| s.trim().parse().ok())
}

/// An errno as std describes it ("Invalid argument (os error 22)").
fn os_err(e: i32) -> String {
    std::io::Error::from_raw_os_error(e).to_string()
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Direct,
    Uring,
    Buffered,
}

impl Mode {
    fn aligned(self) -> bool {
        self != Mode::Buffered
    }
    fn name(self) -> &'static str {
        match self {
            Mode::Direct => "odirect",
            Mode::Uring => "io_uring",
            Mode::Buffered => "buffered",
        }
    }
}

/// The byte operation `opno` writes at file offset `pos`: identifies the writer (mod 256)
/// and catches data landing at the wrong offset.
fn pat_byte(opno: u64, pos: u64) -> u8 {
    (opno as u8).wrapping_add((pos % 251) as u8)
}

fn fill(buf: &mut [u8], opno: u64, off: u64) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = pat_byte(opno, off + i as u64);
    }
}

fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// One operation of the weighted table.
type OpFn = fn(&mut Fsx);

#[derive(Default, Debug)]
struct Counts {
    read: u64,
    write: u64,
    batch: u64,
    batch_ios: u64,
    mapread: u64,
    truncate: u64,
    punch: u64,
    zero: u64,
    falloc: u64,
    copy: u64,
    fsync: u64,
    reopen: u64,
    skipped: u64,
}

struct Fsx {
    mode: Mode,
    seed: u64,
    path: PathBuf,
    cpath: CString,
    fd: Option<OwnedFd>,
    model: Vec<u8>,
    rng: Rng,
    opno: u64,
    log: VecDeque<String>,
    ring: Option<Ring>,
    counts: Counts,
}

impl Fsx {
    fn open_flags(&self) -> libc::c_int {
        let mut f = libc::O_RDWR | libc::O_CREAT | libc::O_CLOEXEC;
        if self.mode.aligned() {
            f |= libc::O_DIRECT;
        }
        f
    }

    fn open(&mut self) {
        let fd = match sys::open(&self.cpath, self.open_flags(), 0o644) {
            Ok(fd) => fd,
            Err(e) => self.fail(
                "open",
                format!("open {}: {}", self.path.display(), os_err(e)),
            ),
        };
        if self.mode.aligned() {
            let fl = sys::getfl(&fd).unwrap_or(-1);
            if fl < 0 || fl & libc::O_DIRECT == 0 {
                self.fail(
                    "open",
                    format!("O_DIRECT is not set on the descriptor (flags {fl:#o})"),
                );
            }
        }
        self.fd = Some(fd);
    }

    fn close(&mut self) {
        if let Some(fd) = self.fd.take() {
            if let Err(e) = sys::close(fd) {
                self.fail("close", os_err(e));
            }
        }
    }

    /// The open file.
    fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_ref().expect("file is open").as_fd()
    }

    fn size(&self) -> u64 {
        self.model.len() as u64
    }

    fn logop(&mut self, s: String) {
        if self.log.len() == LOG_KEEP {
            self.log.pop_front();
        }
        self.log.push_back(format!("#{} {}", self.opno, s));
    }

    fn fail(&self, what: &str, detail: String) -> ! {
        let log: Vec<&str> = self.log.iter().map(|s| s.as_str()).collect();
        let msg = format!(
            "fsx {} FAILED: seed {} op #{} ({}): {}\nmodel size {:#x}\nlast {} operations (oldest first):\n  {}\n(reproduce: STRATA_FSX_SEED={} STRATA_FSX_OPS={})",
            self.mode.name(),
            self.seed,
            self.opno,
            what,
            detail,
            self.size(),
            log.len(),
            log.join("\n  "),
            self.seed,
            self.opno + 1,
        );
        panic!("{msg}");
    }

    /// Compare `got` with the model at file offset `off`; on mismatch, fail with details.
    /// `reread` re-reads the range (by some other path) to tell transient from persistent.
    fn check(&self, what: &str, off: u64, got: &[u8], reread: Option<Vec<u8>>) {
        let exp = &self.model[off as usize..off as usize + got.len()];
        if exp == got {
            return;
        }
        let i = exp.iter().zip(got).position(|(a, b)| a != b).unwrap();
        let ndiff = exp.iter().zip(got).filter(|(a, b)| a != b).count();
        let last = exp.iter().zip(got).rposition(|(a, b)| a != b).unwrap();
        let j = (i + 16).min(got.len());
        let g = got[i];
        let mut d = format!(
            "data mismatch: first differing byte at file offset {:#x} (buffer index {:#x}), last at file offset {:#x}; {} bytes differ of {:#x} read at {:#x}\n  expected: {}\n  got:      {}\n  got byte {:#04x} would have been written by an op with opno % 256 == {} (zero may be a hole)",
            off + i as u64,
            i,
            off + last as u64,
            ndiff,
            got.len(),
            off,
            hex(&exp[i..j]),
            hex(&got[i..j]),
            g,
            g.wrapping_sub(((off + i as u64) % 251) as u8),
        );
        if let Some(r) = reread {
            if r.len() == got.len() {
                let rd = r.iter().zip(exp).filter(|(a, b)| a != b).count();
                d.push_str(&format!(
                    "\n  re-read with pread: {} bytes differ from the model; {}",
                    rd,
                    if r == got {
                        "same as the failed read (persistent)"
                    } else {
                        "differs from the failed read"
                    }
                ));
            } else {
                d.push_str(&format!(
                    "\n  re-read with pread returned {} bytes",
                    r.len()
                ));
            }
        }
        self.fail(what, d);
    }

    fn check_size(&self, what: &str) {
        let st = sys::fstat(self.fd())
            .unwrap_or_else(|e| self.fail(what, format!("fstat: {}", os_err(e))));
        if st.st_size as u64 != self.size() {
            self.fail(
                what,
                format!(
                    "st_size is {:#x}, model size {:#x}",
                    st.st_size,
                    self.size()
                ),
            );
        }
    }

    /// pread everything asked for (looping on short reads until EOF), into an aligned buffer.
    fn pread_full(&self, off: u64, len: u64) -> Result<Vec<u8>, String> {
        let mut buf = AlignedBuf::new(len as usize);
        let mut done = 0u64;
        while done < len {
            let n = sys::pread(
                self.fd(),
                &mut buf.as_mut_slice()[done as usize..],
                (off + done) as libc::off_t,
            )
            .map_err(os_err)?;
            if n == 0 {
                break;
            }
            done += n as u64;
            if self.mode.aligned() && done % BLK != 0 {
                break; // O_DIRECT short read: EOF
            }
        }
        Ok(buf.as_slice()[..done as usize].to_vec())
    }

    // ---------------------------------------------------------------------------------
    // Random ranges
    // ---------------------------------------------------------------------------------

    /// Random offset in [0, n) (aligned in aligned modes). n > 0.
    fn rand_off(&mut self, n: u64) -> u64 {
        if self.mode.aligned() {
            self.rng.below((n - 1) / BLK + 1) * BLK
        } else {
            self.rng.below(n)
        }
    }

    /// Random length in [1, max] (aligned: [BLK, max] in BLK units). max >= 1 (>= BLK).
    fn rand_len(&mut self, max: u64) -> u64 {
        if self.mode.aligned() {
            self.rng.range(1, max / BLK) * BLK
        } else {
            self.rng.range(1, max)
        }
    }

    fn rand_op_len(&mut self, max: u64) -> u64 {
        // Bias towards small operations like fsx's uniform-in-maxoplen, with some tiny ones.
        let m = if self.rng.chance(1, 4) {
            (BLK * 2).min(max)
        } else {
            max
        };
        self.rand_len(m)
    }

    /// A read range: mostly inside the file, sometimes straddling EOF. None if empty file.
    fn read_range(&mut self) -> Option<(u64, u64)> {
        let size = self.size();
        if size == 0 {
            return None;
        }
        let off = self.rand_off(size);
        let max = if self.rng.chance(1, 10) {
            MAX_OP
        } else {
            MAX_OP.min(size - off)
        };
        let max = if self.mode.aligned() {
            max.max(BLK)
        } else {
            max
        };
        Some((off, self.rand_op_len(max)))
    }

    fn write_range(&mut self) -> (u64, u64) {
        let off = self.rand_off(MAX_FILE);
        let len = self.rand_op_len(MAX_OP.min(MAX_FILE - off));
        (off, len)
    }

    // ---------------------------------------------------------------------------------
    // Model updates
    // ---------------------------------------------------------------------------------

    fn model_write(&mut self, off: u64, data: &[u8]) {
        let end = off as usize + data.len();
        if end > self.model.len() {
            self.model.resize(end, 0);
        }
        self.model[off as usize..end].copy_from_slice(data);
    }

    fn model_zero(&mut self, off: u64, end: u64) {
        let end = end.min(self.size());
        if off < end {
            self.model[off as usize..end as usize].fill(0);
        }
    }

    /// Bytes a read of [off, off+len) should return.
    fn expect_count(&self, off: u64, len: u64) -> u64 {
        if off >= self.size() {
            0
        } else {
            len.min(self.size() - off)
        }
    }

    // ---------------------------------------------------------------------------------
    // io_uring
    // ---------------------------------------------------------------------------------

    /// Submit all `ops` at once and wait for all of them; returns each op's cqe result.
    fn ring_submit(&mut self, ops: &mut [RingOp]) -> Vec<i32> {
        let fd = self.fd.as_ref().expect("file is open");
        match self.ring.as_mut().expect("ring").run(fd, ops) {
            Ok(res) => res,
            Err(e) => self.fail("io_uring", e.to_string()),
        }
    }

    // ---------------------------------------------------------------------------------
    // Operations
    // ---------------------------------------------------------------------------------

    fn op_write(&mut self) {
        let (off, len) = self.write_range();
        let mut buf = AlignedBuf::new(len as usize);
        fill(buf.as_mut_slice(), self.opno, off);
        let via = if self.mode == Mode::Uring {
            "uring "
        } else {
            ""
        };
        self.logop(format!(
            "{via}write {off:#x} thru {:#x} (len {len:#x}) size {:#x}",
            off + len - 1,
            self.size()
        ));
        let n: i64 = if self.mode == Mode::Uring {
            let mut ops = [RingOp {
                write: true,
                off,
                buf,
            }];
            let r = self.ring_submit(&mut ops)[0] as i64;
            buf = ops.into_iter().next().unwrap().buf;
            r
        } else {
            match sys::pwrite(self.fd(), buf.as_slice(), off as libc::off_t) {
                Ok(n) => n as i64,
                Err(e) => -(e as i64),
            }
        };
        if n < 0 {
            let e = std::io::Error::from_raw_os_error(-n as i32);
            self.fail("write", format!("write {off:#x}+{len:#x} failed: {e}"));
        }
        if n as u64 != len {
            self.fail(
                "write",
                format!("short write: {n:#x} of {len:#x} at {off:#x}"),
            );
        }
        self.model_write(off, buf.as_slice());
        self.counts.write += 1;
    }

    fn op_read(&mut self) {
        let Some((off, len)) = self.read_range() else {
            self.logop("skip read: empty file".into());
            self.counts.skipped += 1;
            return;
        };
        let via = if self.mode == Mode::Uring {
            "uring "
        } else {
            ""
        };
        self.logop(format!(
            "{via}read {off:#x} thru {:#x} (len {len:#x}) size {:#x}",
            off + len - 1,
            self.size()
        ));
        let want = self.expect_count(off, len);
        let mut buf = AlignedBuf::new(len as usize);
        let n: i64 = if self.mode == Mode::Uring {
            let mut ops = [RingOp {
                write: false,
                off,
                buf,
            }];
            let r = self.ring_submit(&mut ops)[0] as i64;
            buf = ops.into_iter().next().unwrap().buf;
            if r < 0 {
                let e = std::io::Error::from_raw_os_error(-r as i32);
                self.fail("read", format!("uring read {off:#x}+{len:#x} failed: {e}"));
            }
            r
        } else {
            // pread may legitimately return short reads; loop like fsx does.
            match self.pread_full(off, len) {
                Ok(v) => {
                    buf.as_mut_slice()[..v.len()].copy_from_slice(&v);
                    v.len() as i64
                }
                Err(e) => self.fail("read", format!("pread {off:#x}+{len:#x} failed: {e}")),
            }
        };
        if n as u64 != want {
            self.fail(
                "read",
                format!(
                    "read {off:#x}+{len:#x} returned {n:#x} bytes, expected {want:#x} (model size {:#x})",
                    self.size()
                ),
            );
        }
        let got = &buf.as_slice()[..n as usize];
        if self.model[off as usize..(off + want) as usize] != *got {
            let again = self.pread_full(off, want).ok();
            self.check("read", off, got, again);
        }
        self.counts.read += 1;
    }

    /// Several reads and writes in flight at once to non-overlapping ranges.
    fn op_batch(&mut self) {
        let k = self.rng.range(2, 8) as usize;
        let size = self.size();
        let mut ranges: Vec<(bool, u64, u64)> = Vec::new();
        for _ in 0..k {
            for _try in 0..20 {
                let write = size == 0 || self.rng.chance(1, 2);
                let (off, len) = if write {
                    let off = self.rand_off(MAX_FILE);
                    (off, self.rand_op_len((MAX_OP / 2).min(MAX_FILE - off)))
                } else {
                    // Reads stay inside the pre-batch size: concurrent extending writes
                    // must not make their result ambiguous.
                    let off = self.rand_off(size);
                    (off, self.rand_op_len((MAX_OP / 2).min(size - off)))
                };
                if ranges
                    .iter()
                    .all(|&(_, o, l)| off + len <= o || o + l <= off)
                {
                    ranges.push((write, off, len));
                    break;
                }
            }
        }
        let desc: Vec<String> = ranges
            .iter()
            .map(|&(w, o, l)| format!("{}{o:#x}+{l:#x}", if w { "W" } else { "R" }))
            .collect();
        self.logop(format!(
            "uring batch of {} in flight: {} size {:#x}",
            ranges.len(),
            desc.join(" "),
            size
        ));
        let mut ops: Vec<RingOp> = ranges
            .iter()
            .map(|&(write, off, len)| {
                let mut buf = AlignedBuf::new(len as usize);
                if write {
                    fill(buf.as_mut_slice(), self.opno, off);
                }
                RingOp { write, off, buf }
            })
            .collect();
        let res = self.ring_submit(&mut ops);
        // Reads first, against the model (unchanged in their ranges by the batch's writes).
        for (op, &r) in ops.iter().zip(&res) {
            let len = op.buf.len() as i64;
            let kind = if op.write { "write" } else { "read" };
            if r < 0 {
                let e = std::io::Error::from_raw_os_error(-r);
                self.fail(
                    "uring batch",
                    format!("{kind} {:#x}+{len:#x} failed: {e}", op.off),
                );
            }
            if r as i64 != len {
                self.fail(
                    "uring batch",
                    format!(
                        "{kind} {:#x}+{len:#x}: result {r:#x}, expected {len:#x}",
                        op.off
                    ),
                );
            }
            if !op.write
                && self.model[op.off as usize..op.off as usize + op.buf.len()] != *op.buf.as_slice()
            {
                let again = self.pread_full(op.off, len as u64).ok();
                self.check("uring batch read", op.off, op.buf.as_slice(), again);
            }
        }
        for op in ops.iter().filter(|o| o.write) {
            self.model_write(op.off, op.buf.as_slice());
        }
        self.counts.batch += 1;
        self.counts.batch_ios += ops.len() as u64;
    }

    fn op_mapread(&mut self) {
        let size = self.size();
        if size == 0 {
            self.logop("skip mapread: empty file".into());
            self.counts.skipped += 1;
            return;
        }
        let off = self.rng.below(size);
        let len = self.rng.range(1, MAX_OP.min(size - off));
        let end = off + len;
        let pg = off & !(BLK - 1);
        // When the range reaches the page holding EOF, map that whole page and check that
        // the part past EOF reads as zeros (fsx's check_eofpage).
        let eof_page = (end - 1) / BLK == (size - 1) / BLK && size % BLK != 0;
        let map_end = if eof_page {
            end.next_multiple_of(BLK)
        } else {
            end
        };
        self.logop(format!(
            "mapread {off:#x} thru {:#x} (len {len:#x}) size {size:#x}{}",
            end - 1,
            if eof_page { " +eofpage" } else { "" }
        ));
        let mlen = (map_end - pg) as usize;
        let all = match sys::Mapping::shared(self.fd(), mlen, libc::PROT_READ, pg as libc::off_t) {
            Ok(map) => map.read(),
            Err(e) => self.fail("mapread", format!("mmap {pg:#x}+{mlen:#x}: {}", os_err(e))),
        };
        let got = &all[(off - pg) as usize..(end - pg) as usize];
        if self.model[off as usize..end as usize] != *got {
            let again = self.pread_full_any(off, len);
            self.check("mapread", off, got, again);
        }
        if eof_page {
            let tail = &all[(size - pg) as usize..];
            if let Some(i) = tail.iter().position(|&b| b != 0) {
                self.fail(
                    "mapread",
                    format!(
                        "mapped page past EOF not zero: byte at file offset {:#x} is {:#04x} (EOF {size:#x}); tail: {}",
                        size + i as u64,
                        tail[i],
                        hex(&tail[i..(i + 16).min(tail.len())])
                    ),
                );
            }
        }
        self.counts.mapread += 1;
    }

    /// Re-read for diagnostics, unaligned ranges allowed (widened for O_DIRECT).
    fn pread_full_any(&self, off: u64, len: u64) -> Option<Vec<u8>> {
        let a = off & !(BLK - 1);
        let e = (off + len).next_multiple_of(BLK);
        let v = self.pread_full(a, e - a).ok()?;
        let s = (off - a) as usize;
        v.get(s..s + len as usize).map(|x| x.to_vec())
    }

    fn op_truncate(&mut self) {
        let new = if self.mode.aligned() {
            self.rng.below(MAX_FILE / BLK + 1) * BLK
        } else {
            self.rng.below(MAX_FILE + 1)
        };
        self.logop(format!(
            "truncate {} from {:#x} to {new:#x}",
            if new >= self.size() { "up" } else { "down" },
            self.size()
        ));
        if let Err(e) = sys::ftruncate(self.fd(), new as libc::off_t) {
            self.fail("truncate", format!("ftruncate {new:#x}: {}", os_err(e)));
        }
        self.model.resize(new as usize, 0);
        self.counts.truncate += 1;
    }

    fn fallocate(&self, what: &str, mode: libc::c_int, off: u64, len: u64) {
        if let Err(e) = sys::fallocate(self.fd(), mode, off as libc::off_t, len as libc::off_t) {
            self.fail(
                what,
                format!("fallocate mode {mode:#x} {off:#x}+{len:#x}: {}", os_err(e)),
            );
        }
    }

    fn op_punch(&mut self) {
        let size = self.size();
        if size == 0 {
            self.logop("skip punch_hole: empty file".into());
            self.counts.skipped += 1;
            return;
        }
        // Unaligned in every mode (KEEP_SIZE: EOF does not move); may extend past EOF.
        let off = self.rng.below(size);
        let len = self.rng.range(1, MAX_OP);
        self.logop(format!(
            "punch_hole {off:#x} thru {:#x} (len {len:#x}) size {size:#x}",
            off + len - 1
        ));
        self.fallocate(
            "punch_hole",
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off,
            len,
        );
        self.model_zero(off, off + len);
        self.counts.punch += 1;
    }

    fn op_zero(&mut self) {
        let size = self.size();
        let keep = self.rng.chance(1, 2);
        let (off, len) = if keep {
            if size == 0 {
                self.logop("skip zero_range: empty file".into());
                self.counts.skipped += 1;
                return;
            }
            let off = self.rng.below(size);
            (off, self.rng.range(1, MAX_OP))
        } else {
            // May move EOF: aligned in aligned modes.
            let off = self.rand_off(MAX_FILE);
            (off, self.rand_len(MAX_OP.min(MAX_FILE - off)))
        };
        self.logop(format!(
            "zero_range{} {off:#x} thru {:#x} (len {len:#x}) size {size:#x}",
            if keep { " keep_size" } else { "" },
            off + len - 1
        ));
        let mut mode = libc::FALLOC_FL_ZERO_RANGE;
        if keep {
            mode |= libc::FALLOC_FL_KEEP_SIZE;
        }
        self.fallocate("zero_range", mode, off, len);
        if !keep && off + len > size {
            self.model.resize((off + len) as usize, 0);
        }
        self.model_zero(off, off + len);
        self.counts.zero += 1;
    }

    fn op_falloc(&mut self) {
        let off = self.rand_off(MAX_FILE);
        let len = self.rand_len(MAX_OP.min(MAX_FILE - off));
        self.logop(format!(
            "fallocate {off:#x} thru {:#x} (len {len:#x}) size {:#x}",
            off + len - 1,
            self.size()
        ));
        self.fallocate("fallocate", 0, off, len);
        if off + len > self.size() {
            self.model.resize((off + len) as usize, 0);
        }
        self.counts.falloc += 1;
    }

    fn op_copy(&mut self) {
        let size = self.size();
        if size == 0 {
            self.logop("skip copy_range: empty file".into());
            self.counts.skipped += 1;
            return;
        }
        let src = self.rand_off(size);
        let len = self.rand_op_len(MAX_OP.min(size - src));
        let mut dst = None;
        for _ in 0..20 {
            let d = self.rand_off(MAX_FILE - len + 1);
            if d + len <= src || src + len <= d {
                dst = Some(d);
                break;
            }
        }
        let Some(dst) = dst else {
            self.logop(format!(
                "skip copy_range {src:#x}+{len:#x}: no disjoint target"
            ));
            self.counts.skipped += 1;
            return;
        };
        self.logop(format!(
            "copy_range {src:#x} thru {:#x} (len {len:#x}) to {dst:#x} thru {:#x} size {size:#x}",
            src + len - 1,
            dst + len - 1
        ));
        let mut done = 0u64;
        while done < len {
            let mut oi = (src + done) as libc::loff_t;
            let mut oo = (dst + done) as libc::loff_t;
            let n = sys::copy_file_range(
                self.fd(),
                &mut oi,
                self.fd(),
                &mut oo,
                (len - done) as usize,
            )
            .unwrap_or_else(|e| {
                self.fail(
                    "copy_range",
                    format!("copy_file_range after {done:#x} bytes: {}", os_err(e)),
                )
            });
            if n == 0 {
                self.fail(
                    "copy_range",
                    format!("copy_file_range returned 0 after {done:#x} of {len:#x} bytes"),
                );
            }
            done += n as u64;
        }
        let data = self.model[src as usize..(src + len) as usize].to_vec();
        self.model_write(dst, &data);
        self.counts.copy += 1;
    }

    fn op_fsync(&mut self) {
        let data = self.rng.chance(1, 2);
        self.logop(if data { "fdatasync" } else { "fsync" }.into());
        let r = if data {
            sys::fdatasync(self.fd())
        } else {
            sys::fsync(self.fd())
        };
        if let Err(e) = r {
            self.fail("fsync", os_err(e));
        }
        self.counts.fsync += 1;
    }

    fn op_reopen(&mut self) {
        self.logop("close/open".into());
        self.close();
        self.open();
        self.counts.reopen += 1;
    }

    fn step(&mut self) {
        // Weights roughly like fsx's defaults.
        let uring = self.mode == Mode::Uring;
        let table: &[(u64, OpFn)] = &[
            (10, Fsx::op_read),
            (10, Fsx::op_write),
            (if uring { 6 } else { 0 }, Fsx::op_batch),
            (4, Fsx::op_mapread),
            (2, Fsx::op_truncate),
            (1, Fsx::op_punch),
            (1, Fsx::op_zero),
            (1, Fsx::op_falloc),
            (2, Fsx::op_copy),
            (1, Fsx::op_fsync),
            (1, Fsx::op_reopen),
        ];
        let total: u64 = table.iter().map(|t| t.0).sum();
        let mut r = self.rng.below(total);
        for &(w, f) in table {
            if r < w {
                f(self);
                break;
            }
            r -= w;
        }
        self.check_size("after op");
    }

    /// Whole file through a fresh buffered descriptor, compared with the model.
    fn compare_whole(&self, path: &Path, when: &str) {
        let got = std::fs::read(path)
            .unwrap_or_else(|e| self.fail(when, format!("read {}: {e}", path.display())));
        if got.len() != self.model.len() {
            self.fail(
                when,
                format!(
                    "whole-file read returned {:#x} bytes, model size {:#x}",
                    got.len(),
                    self.size()
                ),
            );
        }
        self.check(when, 0, &got, None);
    }
}

fn run(mode: Mode, default_seed: u64) {
    let ops = env_u64("STRATA_FSX_OPS").unwrap_or(100_000);
    let seed = env_u64("STRATA_FSX_SEED").unwrap_or(default_seed);
    let ring = if mode == Mode::Uring {
        match Ring::new(32) {
            Ok(r) => Some(r),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENOSYS) | Some(libc::EPERM) | Some(libc::EACCES)
                ) =>
            {
                eprintln!("SKIP: io_uring is not available here: {e}");
                return;
            }
            Err(e) => panic!("io_uring_setup: {e}"),
        }
    } else {
        None
    };
    let td = TestDir::new(&format!("fsxd-{}", mode.name()));
    let (img, m) = td.mkfs_and_mount("512M");
    let mnt = m.mnt.clone();
    let path = m.root().join(format!("fsx-{}.dat", mode.name()));
    eprintln!(
        "fsx {}: seed {seed}, {ops} ops, max file {MAX_FILE:#x}, max op {MAX_OP:#x}, file {}",
        mode.name(),
        path.display()
    );
    let mut f = Fsx {
        mode,
        seed,
        cpath: cstr(&path),
        path: path.clone(),
        fd: None,
        model: Vec::new(),
        rng: Rng::new(seed),
        opno: 0,
        log: VecDeque::new(),
        ring,
        counts: Counts::default(),
    };
    f.open();
    let t0 = Instant::now();
    for n in 1..=ops {
        f.opno = n;
        f.step();
        if n % 20_000 == 0 {
            eprintln!(
                "  {n} ops, {:.1} s, size {:#x}",
                t0.elapsed().as_secs_f64(),
                f.size()
            );
        }
    }
    let elapsed = t0.elapsed();
    eprintln!(
        "fsx {}: {ops} ops in {:.1} s ({:.0} ops/s); {:?}",
        mode.name(),
        elapsed.as_secs_f64(),
        ops as f64 / elapsed.as_secs_f64().max(1e-9),
        f.counts
    );
    f.opno = ops + 1;
    f.logop("final whole-file compare".into());
    f.compare_whole(&path, "final compare");
    f.close();
    f.ring = None;
    let daemon = m.stop();
    assert_no_panic("daemon", &daemon);
    assert_fsck_clean(&img, &format!("after fsx {}", mode.name()));
    let m = Mount::start(&img, &mnt);
    f.logop("remount, whole-file compare".into());
    f.compare_whole(&path, "compare after remount");
    let daemon = m.stop();
    assert_no_panic("daemon (remount)", &daemon);
    assert_fsck_clean(&img, &format!("after fsx {} remount", mode.name()));
    eprintln!(
        "fsx {}: passed ({:.1} s of operations, {:.1} s total)",
        mode.name(),
        elapsed.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
}

#[test]
fn fsx_odirect() {
    require_root_and_fuse!();
    run(Mode::Direct, 11);
}

#[test]
fn fsx_io_uring() {
    require_root_and_fuse!();
    run(Mode::Uring, 12);
}

#[test]
fn fsx_buffered_unaligned() {
    require_root_and_fuse!();
    run(Mode::Buffered, 13);
}
