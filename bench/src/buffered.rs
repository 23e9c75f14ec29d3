//! Buffered I/O workloads, on a layer's own files (written in the container) and on inherited
//! ones (in the lower layer), through the page cache as applications do it: `dd bs=4k` writes
//! up to an fsync, 22-byte O_APPEND log lines, 4-byte appends read back 4 bytes at a time, and
//! fio's hot 4 KiB reads (`psync`, `direct=0`, the file read once first); beside them fio's
//! QD1 synchronous 4 KiB O_DIRECT writes, for their latency. The small-file workloads are in
//! [`crate::smallfiles`].
//!
//! The write loops are Rust calling write(2) and read(2) directly, one call per record, so
//! that nothing but the system calls is timed.

use std::fs;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::fio::{self, FioJob};
use crate::fmt::{fmt_size, group_thousands};
use crate::inputs::{self, Input};
use crate::results::Sink;
use crate::suite::{Ctx, Run, Step};
use crate::workloads::{Config, Detail, Goal, Group, Unit, Workload};
use crate::Res;
use crate::{interrupt, process};

/// The inherited file `dd` overwrites, in every system's lower layer.
pub const DD_FILE: &str = "dd.dat";
/// The inherited log file the inherited appends go to (a size that is not a multiple of the
/// page: the first append shares its last page with inherited data).
pub const LOG_FILE: &str = "app.log";
pub const LOG_SIZE: u64 = (1 << 20) + 123;
/// Bytes per log line.
pub const LINE: usize = 22;

/// Strata's goal on its own files, for every buffered workload: throughput ratio to ext4.
pub const OWN_GOAL: Goal = Goal::AtLeast(0.8);

/// The steps that change no inherited file the fio workloads use, in run order (the hot fio
/// reads of the inherited fio file are [`fio_step`], run before fio's write jobs).
pub fn steps(cfg: &Config) -> Vec<Step> {
    vec![dd_step(cfg), log_step(cfg), tiny_step(cfg)]
}

fn workload(id: &str, label: String, unit: Unit) -> Workload {
    Workload::new(id, label, Group::Buffered, unit)
}

/// Record a figure measured for workload `id` (with a log line), or its error; Err only when
/// interrupted.
pub(crate) fn record(ctx: &Ctx, sink: &mut Sink, id: &str, r: Res<f64>, unit: Unit) -> Res<()> {
    interrupt::check_interrupted()?;
    let system = sink.system().name();
    match r {
        Ok(v) => {
            let shown = match unit {
                Unit::Seconds => format!("{v:.4}"),
                _ => group_thousands(v),
            };
            ctx.log(system, &format!("{id}: {shown} {}", unit.name()));
            sink.push(id, v);
        }
        Err(e) => {
            ctx.log(system, &format!("{id}: {e}"));
            sink.error(id, &e);
        }
    }
    Ok(())
}

/// Run `f` on a worker thread (a hung file system must not hang the harness).
pub(crate) fn guarded<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> Res<T> + Send + 'static,
) -> Res<T> {
    process::with_timeout(what, Duration::from_secs(900), f)
}

/// `dd bs=4k` of `cfg.buffered.dd_size` bytes up to an fsync (`conv=fsync`): into a new file,
/// and over the inherited [`DD_FILE`] in place (`conv=notrunc`; the overlays copy it up when
/// dd opens it). MiB/s, open to fsync.
pub fn dd_step(cfg: &Config) -> Step {
    let size = cfg.buffered.dd_size;
    let s = fmt_size(size);
    Step {
        name: "dd bs=4k".into(),
        workloads: vec![
            workload(
                "buf-dd-4k-own",
                format!("dd bs=4k {s} + fsync, new file"),
                Unit::MibPerSec,
            )
            .goal(OWN_GOAL),
            workload(
                "buf-dd-4k-inherited",
                format!("dd bs=4k {s} + fsync, over inherited file"),
                Unit::MibPerSec,
            ),
        ],
        needs: vec![Input::LowerFile {
            name: DD_FILE,
            size,
        }],
        run: Run::InContainer(Box::new(move |ctx, tree, sink| {
            let own = tree.join(format!("buf-dd-r{}.dat", ctx.rep + 1));
            for (id, file, notrunc) in [
                ("buf-dd-4k-own", own.clone(), false),
                ("buf-dd-4k-inherited", tree.join(DD_FILE), true),
            ] {
                if sink.wants(id) {
                    let r = dd(&file, size, notrunc);
                    record(ctx, sink, id, r, Unit::MibPerSec)?;
                }
            }
            let _ = fs::remove_file(&own);
            Ok(())
        })),
    }
}

/// `dd if=/dev/zero of=FILE bs=4k count=… conv=fsync[,notrunc]`: MiB/s. No file system here
/// compresses or skips zeros.
pub fn dd(file: &Path, size: u64, notrunc: bool) -> Res<f64> {
    let conv = if notrunc { "fsync,notrunc" } else { "fsync" };
    let (out, took) = process::run_timed(
        Command::new("dd")
            .arg("if=/dev/zero")
            .arg(format!("of={}", file.display()))
            .arg("bs=4k")
            .arg(format!("count={}", size / 4096))
            .arg(format!("conv={conv}"))
            .arg("status=none"),
        Duration::from_secs(900),
    )?;
    if !out.status.success() {
        return Err(format!(
            "dd of={}: {} {}",
            file.display(),
            out.status,
            out.stderr.trim()
        ));
    }
    let len = fs::metadata(file)
        .map_err(|e| format!("stat {}: {e}", file.display()))?
        .len();
    if len < size / 4096 * 4096 {
        return Err(format!("{} is {len} bytes after dd", file.display()));
    }
    Ok((size / 4096 * 4096) as f64 / (1 << 20) as f64 / took.as_secs_f64())
}

/// 22-byte log lines, one write(2) each on an O_APPEND descriptor: to a new file and to the
/// inherited [`LOG_FILE`]. Writes per second of the write(2) calls alone: a logger keeps its
/// file open, so neither the open (where an overlay copies an inherited file up; the
/// first-write workload times that) nor the close (where a FUSE mount writes its dirty pages
/// back) is counted.
pub fn log_step(cfg: &Config) -> Step {
    let n = cfg.buffered.log_lines;
    let lines = group_thousands(n as f64);
    Step {
        name: "O_APPEND log lines".into(),
        workloads: vec![
            workload(
                "buf-append-22b-own",
                format!("{lines} × 22 B O_APPEND writes, new file"),
                Unit::Rate("writes/s"),
            )
            .goal(OWN_GOAL),
            workload(
                "buf-append-22b-inherited",
                format!("{lines} × 22 B O_APPEND writes, inherited log"),
                Unit::Rate("writes/s"),
            ),
        ],
        needs: vec![Input::LowerFile {
            name: LOG_FILE,
            size: LOG_SIZE,
        }],
        run: Run::InContainer(Box::new(move |ctx, tree, sink| {
            let own = tree.join(format!("buf-log-r{}.log", ctx.rep + 1));
            for (id, file, new) in [
                ("buf-append-22b-own", own.clone(), true),
                ("buf-append-22b-inherited", tree.join(LOG_FILE), false),
            ] {
                if sink.wants(id) {
                    let r = guarded("appends", move || append_lines(&file, n, new));
                    record(ctx, sink, id, r, Unit::Rate("writes/s"))?;
                }
            }
            let _ = fs::remove_file(&own);
            Ok(())
        })),
    }
}

/// `n` distinct 22-byte lines, back to back.
fn log_lines(n: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(n * LINE);
    for i in 0..n {
        v.extend_from_slice(format!("bench log line {:06}\n", i % 1_000_000).as_bytes());
    }
    debug_assert_eq!(v.len(), n * LINE);
    v
}

/// Open `file` O_APPEND (`new`: creating it), write `n` log lines one write(2) each, close:
/// writes per second of the write(2) calls.
pub fn append_lines(file: &Path, n: usize, new: bool) -> Res<f64> {
    let data = log_lines(n);
    let f = fs::OpenOptions::new()
        .append(true)
        .create_new(new)
        .open(file)
        .map_err(|e| format!("open {} O_APPEND: {e}", file.display()))?;
    let t = Instant::now();
    write_calls(&f, &data, LINE).map_err(|e| format!("write {}: {e}", file.display()))?;
    let took = t.elapsed();
    drop(f);
    Ok(n as f64 / took.as_secs_f64())
}

/// One write(2) per `len` bytes of `data`, on `f`.
fn write_calls(f: &fs::File, data: &[u8], len: usize) -> Res<()> {
    let fd = f.as_raw_fd();
    for chunk in data.chunks(len) {
        // SAFETY: write(2) from a live slice of chunk.len() bytes on an fd `f` keeps open.
        let r = unsafe { libc::write(fd, chunk.as_ptr().cast(), chunk.len()) };
        if r != chunk.len() as isize {
            return Err(if r < 0 {
                std::io::Error::last_os_error().to_string()
            } else {
                format!("short write: {r} of {} bytes", chunk.len())
            });
        }
    }
    Ok(())
}

/// 4-byte appends to a new file, one write(2) each, then the file read back with 4-byte
/// read(2)s: operations per second of each phase's system calls (open and close not timed).
pub fn tiny_step(cfg: &Config) -> Step {
    let n = cfg.buffered.tiny_appends;
    let ops = group_thousands(n as f64);
    Step {
        name: "4-byte appends".into(),
        workloads: vec![
            workload(
                "buf-append-4b-own",
                format!("{ops} × 4 B appends, new file"),
                Unit::Rate("ops/s"),
            )
            .goal(OWN_GOAL),
            workload(
                "buf-readback-4b-own",
                format!("{ops} × 4 B reads of them back"),
                Unit::Rate("ops/s"),
            )
            .goal(OWN_GOAL),
        ],
        needs: Vec::new(),
        run: Run::InContainer(Box::new(move |ctx, tree, sink| {
            let file = tree.join(format!("buf-tiny-r{}.dat", ctx.rep + 1));
            let f = file.clone();
            let r = guarded("4-byte appends", move || tiny(&f, n));
            let _ = fs::remove_file(&file);
            let (append, read) = match r {
                Ok((a, b)) => (Ok(a), Ok(b)),
                Err(e) => (Err(e.clone()), Err(e)),
            };
            record(ctx, sink, "buf-append-4b-own", append, Unit::Rate("ops/s"))?;
            record(ctx, sink, "buf-readback-4b-own", read, Unit::Rate("ops/s"))
        })),
    }
}

/// `n` 4-byte appends to a new `file`, then `n` 4-byte reads of it from the start: (appends
/// per second, reads per second).
pub fn tiny(file: &Path, n: usize) -> Res<(f64, f64)> {
    let data: Vec<u8> = b"tiny".repeat(n);
    let f = fs::OpenOptions::new()
        .append(true)
        .create_new(true)
        .open(file)
        .map_err(|e| format!("create {}: {e}", file.display()))?;
    let t = Instant::now();
    write_calls(&f, &data, 4).map_err(|e| format!("write {}: {e}", file.display()))?;
    let appends = n as f64 / t.elapsed().as_secs_f64();
    drop(f);

    let f = fs::File::open(file).map_err(|e| format!("open {}: {e}", file.display()))?;
    let fd = f.as_raw_fd();
    let t = Instant::now();
    let mut buf = [0u8; 4];
    let (mut calls, mut bytes) = (0usize, 0usize);
    loop {
        // SAFETY: read(2) into a live 4-byte buffer on an fd `f` keeps open.
        let r = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            return Err(format!("read {} at {bytes}: {e}", file.display()));
        }
        if r == 0 {
            break;
        }
        calls += 1;
        bytes += r as usize;
    }
    let reads = calls as f64 / t.elapsed().as_secs_f64();
    drop(f);
    if bytes != data.len() || calls != n {
        return Err(format!(
            "read back {bytes} bytes in {calls} reads, expected {} in {n}",
            data.len()
        ));
    }
    Ok((appends, reads))
}

/// Which file a hot-read job reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// A file the container wrote (`hot_own_size`).
    Own,
    /// The first `hot_inherited_size` bytes of the inherited fio file.
    Inherited,
}

/// fio's 4 KiB reads through the page cache (`psync`, `direct=0`, `invalidate=0`) of a file
/// read once first (hot): random and sequential, on an own file and on the inherited fio file;
/// then 4 KiB random O_DIRECT writes at QD1 (`psync`) on the own file, with their latency.
///
/// It reads the inherited fio file as the lower layer holds it, so it runs before fio's write
/// jobs (which write it in the container).
pub fn fio_step(cfg: &Config) -> Step {
    let b = &cfg.buffered;
    let (own_size, inh_size) = (b.hot_own_size, b.hot_inherited_size.min(cfg.file_size));
    let hot = |rw| FioJob {
        rw,
        bs: "4k",
        iodepth: 1,
        ioengine: "psync",
        direct: false,
    };
    let qd1 = FioJob {
        rw: "randwrite",
        bs: "4k",
        iodepth: 1,
        ioengine: "psync",
        direct: true,
    };
    let own = format!("own {}", fmt_size(own_size));
    let inh = format!("inherited {}", fmt_size(inh_size));
    let reads: Vec<(Workload, FioJob, Side)> = [
        ("randread", "rand", Side::Own, OWN_GOAL),
        ("read", "seq", Side::Own, OWN_GOAL),
        ("randread", "rand", Side::Inherited, Goal::AtLeast(0.1)),
        ("read", "seq", Side::Inherited, Goal::AtLeast(0.5)),
    ]
    .into_iter()
    .map(|(rw, kind, side, goal)| {
        let (suffix, what) = match side {
            Side::Own => ("own", &own),
            Side::Inherited => ("inherited", &inh),
        };
        let job = hot(rw);
        let w = workload(
            &format!("buf-{kind}read-4k-hot-{suffix}"),
            format!("hot 4k {kind}read psync, {what}"),
            Unit::Iops,
        )
        .goal(goal)
        .detail(Detail::Fio(job));
        (w, job, side)
    })
    .collect();
    let write = workload(
        "buf-randwrite-4k-qd1",
        format!("4k randwrite QD1 direct, {own}"),
        Unit::Iops,
    )
    .detail(Detail::Fio(qd1));
    let (p50, p99) = ("buf-randwrite-4k-qd1-p50", "buf-randwrite-4k-qd1-p99");
    let mut workloads: Vec<Workload> = reads.iter().map(|r| r.0.clone()).collect();
    workloads.extend([
        write.clone(),
        workload(p50, "4k randwrite QD1 direct, p50".into(), Unit::Micros).goal(Goal::AtMost(1.5)),
        workload(p99, "4k randwrite QD1 direct, p99".into(), Unit::Micros),
    ]);
    Step {
        name: "fio hot reads, QD1 writes".into(),
        workloads,
        needs: vec![Input::LowerFile {
            name: fio::FILE,
            size: cfg.file_size,
        }],
        run: Run::InContainer(Box::new(move |ctx, tree, sink| {
            let own = tree.join(format!("buf-hot-r{}.dat", ctx.rep + 1));
            let wants_write = [&write.id, p50, p99].iter().any(|id| sink.wants(id));
            let wanted: Vec<Side> = [Side::Own, Side::Inherited]
                .into_iter()
                .filter(|&side| reads.iter().any(|r| r.2 == side && sink.wants(&r.0.id)))
                .collect();
            let r = (|| {
                if wanted.contains(&Side::Own) || wants_write {
                    let f = own.clone();
                    guarded("layout", move || inputs::lay_out(&f, own_size))?;
                }
                for &side in &wanted {
                    let (file, size) = match side {
                        Side::Own => (own.clone(), own_size),
                        Side::Inherited => (tree.join(fio::FILE), inh_size),
                    };
                    let f = file.clone();
                    guarded("read", move || read_prefix(&f, size))?;
                    for (w, job, _) in reads.iter().filter(|r| r.2 == side) {
                        if !sink.wants(&w.id) {
                            continue;
                        }
                        if let Err(e) = fio::measure(ctx, job, w, &file, size, sink) {
                            ctx.log(sink.system().name(), &format!("{}: {e}", w.id));
                            sink.error(&w.id, &e);
                        }
                        interrupt::check_interrupted()?;
                    }
                }
                if wants_write {
                    let s = fio::measure(ctx, &qd1, &write, &own, own_size, sink);
                    let lat = |p: fn(&fio::FioSample) -> Option<f64>| match &s {
                        Ok(s) => p(s).ok_or_else(|| "fio reported no percentiles".to_string()),
                        Err(e) => Err(e.clone()),
                    };
                    if let Err(e) = &s {
                        sink.error(&write.id, e);
                    }
                    record(ctx, sink, p50, lat(|s| s.clat_p50_us), Unit::Micros)?;
                    record(ctx, sink, p99, lat(|s| s.clat_p99_us), Unit::Micros)?;
                }
                Ok(())
            })();
            let _ = fs::remove_file(&own);
            r
        })),
    }
}

/// Read the first `size` bytes of `path` (128 KiB reads), into the caches.
pub fn read_prefix(path: &Path, size: u64) -> Res<()> {
    let mut f = fs::File::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    let mut buf = vec![0u8; 128 << 10];
    let mut n = 0u64;
    while n < size {
        let want = buf.len().min((size - n) as usize);
        match f.read(&mut buf[..want]) {
            Ok(0) => return Err(format!("{} ends at {n}, before {size}", path.display())),
            Ok(k) => n += k as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read {} at {n}: {e}", path.display())),
        }
    }
    Ok(())
}

/// A scratch directory for the tests.
#[cfg(test)]
pub(crate) fn test_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("strata-bench-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_and_reads_back() {
        let d = test_dir("buffered");
        let log = d.join("a.log");
        fs::write(&log, b"old\n").unwrap();
        assert!(append_lines(&log, 100, false).unwrap() > 0.0);
        let text = fs::read_to_string(&log).unwrap();
        assert_eq!(text.len(), 4 + 100 * LINE);
        assert!(text.starts_with("old\nbench log line 000000\n"));
        assert!(append_lines(&log, 1, true).is_err(), "own means new");

        let (a, r) = tiny(&d.join("t"), 1000).unwrap();
        assert!(a > 0.0 && r > 0.0);
        assert_eq!(fs::read(d.join("t")).unwrap().len(), 4000);

        let f = d.join("dd");
        assert!(dd(&f, 1 << 20, false).unwrap() > 0.0);
        assert_eq!(fs::metadata(&f).unwrap().len(), 1 << 20);
        fs::write(&f, vec![1u8; 3 << 20]).unwrap();
        dd(&f, 1 << 20, true).unwrap();
        assert_eq!(fs::metadata(&f).unwrap().len(), 3 << 20, "notrunc");
        read_prefix(&f, 2 << 20).unwrap();
        assert!(read_prefix(&f, 4 << 20).is_err());
        fs::remove_dir_all(&d).unwrap();
    }
}
