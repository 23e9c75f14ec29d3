//! Memory density: N containers each read the same image file (buffered, whole file, at
//! once); what the host pays is the growth of the page cache (/proc/meminfo Cached + Buffers,
//! caches dropped before) plus the growth of the serving daemons' resident memory (Strata's
//! daemon, one fuse-overlayfs per container).

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::fmt::fmt_size;
use crate::inputs::Input;
use crate::suite::{Run, Step};
use crate::systems::{Parent, System};
use crate::workloads::{Config, Detail, Goal, Group, Unit, Workload};
use crate::Res;
use crate::{interrupt, process};

/// The file the readers share, in every system's lower layer.
pub const IMAGE_FILE: &str = "image.dat";

/// One step per reader count: N containers read the image file at once.
pub fn steps(cfg: &Config) -> Vec<Step> {
    let image_mib = (cfg.image_size >> 20) as f64;
    cfg.readers
        .iter()
        .map(|&n| {
            let id = format!("mem-readers-{n}");
            let label = format!(
                "memory, {n} container{} reading one {} file",
                if n == 1 { "" } else { "s" },
                fmt_size(cfg.image_size)
            );
            let goal = (n == 8).then_some(Goal::Absolute(1.2 * image_mib, "≤ 1.2× one copy"));
            Step {
                name: format!("memory, {n} readers"),
                workloads: vec![Workload::new(id.clone(), label, Group::Memory, Unit::Mib)
                    .goal(goal)
                    .detail(Detail::Readers(n))],
                needs: vec![
                    Input::LowerFile {
                        name: IMAGE_FILE,
                        size: cfg.image_size,
                    },
                    Input::LowerFile {
                        name: WARMUP_FILE,
                        size: WARMUP_SIZE,
                    },
                ],
                run: Run::OnSystem(Box::new(move |ctx, sys, sink| {
                    let tag = format!("m{}-{n}", ctx.rep + 1);
                    let size = ctx.cfg.image_size;
                    let m = measure(sys, n, &tag, IMAGE_FILE, size, ctx.remount)?;
                    ctx.log(
                        sys.name(),
                        &format!(
                            "{n} reader(s): page cache +{:.0} MiB, daemons +{:.0} MiB = {:.2}× one copy",
                            m.page_cache_mib,
                            m.daemon_rss_mib,
                            m.total() / (size >> 20) as f64
                        ),
                    );
                    if let Some(cell) = sink.cell(&id) {
                        cell.samples.push(m.total());
                        cell.mem_parts.push((m.page_cache_mib, m.daemon_rss_mib));
                    }
                    Ok(())
                })),
            }
        })
        .collect()
}

/// One measurement, MiB.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemSample {
    pub page_cache_mib: f64,
    pub daemon_rss_mib: f64,
}

impl MemSample {
    pub fn total(&self) -> f64 {
        self.page_cache_mib + self.daemon_rss_mib
    }
}

fn meminfo_kib(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(key) && l[key.len()..].starts_with(':'))
        .and_then(|l| l[key.len() + 1..].split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Cached + Buffers, KiB.
pub fn page_cache_kib() -> Res<u64> {
    let text =
        fs::read_to_string("/proc/meminfo").map_err(|e| format!("read /proc/meminfo: {e}"))?;
    let c = meminfo_kib(&text, "Cached").ok_or("/proc/meminfo: no Cached")?;
    let b = meminfo_kib(&text, "Buffers").ok_or("/proc/meminfo: no Buffers")?;
    Ok(c + b)
}

/// Sum of VmRSS of these processes, KiB (a process that is gone counts 0).
pub fn rss_kib(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|p| fs::read_to_string(format!("/proc/{p}/status")).ok())
        .filter_map(|s| meminfo_kib(&s, "VmRSS"))
        .sum()
}

/// Read `path` to the end in 128 KiB reads (what `cat` does); returns the bytes read.
fn read_all(path: &Path) -> Res<u64> {
    let mut f = fs::File::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    let mut buf = vec![0u8; 128 << 10];
    let mut n = 0u64;
    loop {
        match f.read(&mut buf) {
            Ok(0) => return Ok(n),
            Ok(k) => n += k as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read {} at {n}: {e}", path.display())),
        }
        if n % (64 << 20) == 0 && interrupt::interrupted() {
            return Err("interrupted".into());
        }
    }
}

/// The small file every container reads before the baseline is taken, so that one-time costs
/// (daemon code paths faulted in, first-open allocations) are not counted as growth.
pub const WARMUP_FILE: &str = "warmup.dat";
pub const WARMUP_SIZE: u64 = 1 << 20;

/// N containers (ext4: N readers of the one file), each reading `file` (a name in the lower
/// layer) completely, all at once. `remount`: restart Strata before measuring so that its
/// block cache starts empty, as the page cache does.
pub fn measure(
    sys: &mut System,
    n: usize,
    tag: &str,
    file: &str,
    size: u64,
    remount: bool,
) -> Res<MemSample> {
    let mut names = Vec::new();
    // Every container made is dropped, whatever happened.
    let r = (|| {
        let mut paths: Vec<PathBuf> = Vec::new();
        for i in 0..n {
            let name = format!("{tag}-{i}");
            let (p, _) = sys.container(&name, Parent::Standard)?;
            names.push(name);
            paths.push(p.join(file));
        }
        sys.drop_caches(remount)?;
        // Every container reads the warm-up file, then the host settles (right after
        // drop_caches, running programs fault their pages back in) before the baseline.
        for p in &paths {
            let w = p.with_file_name(WARMUP_FILE);
            process::with_timeout("warm-up", Duration::from_secs(120), move || read_all(&w))?;
        }
        std::thread::sleep(Duration::from_secs(1));
        let cache0 = page_cache_kib()?;
        let rss0 = rss_kib(&sys.daemon_pids());

        let readers = paths.clone();
        let total = process::with_timeout("readers", Duration::from_secs(600), move || {
            let handles: Vec<_> = readers
                .into_iter()
                .map(|p| std::thread::spawn(move || read_all(&p)))
                .collect();
            let mut total = 0;
            for h in handles {
                total += h.join().map_err(|_| "a reader panicked".to_string())??;
            }
            Ok(total)
        })?;
        if total != size * n as u64 {
            return Err(format!(
                "the readers read {total} bytes, expected {n} × {size}"
            ));
        }
        let cache1 = page_cache_kib()?;
        let rss1 = rss_kib(&sys.daemon_pids());
        Ok(MemSample {
            page_cache_mib: (cache1 as f64 - cache0 as f64) / 1024.0,
            daemon_rss_mib: (rss1 as f64 - rss0 as f64) / 1024.0,
        })
    })();
    for name in names.iter().rev() {
        if let Err(e) = sys.drop_container(name) {
            eprintln!("strata-bench: {e}");
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_parsing() {
        let t = "MemTotal:       24684000 kB\nBuffers:            1234 kB\nCached:          567890 kB\nSwapCached:            0 kB\n";
        assert_eq!(meminfo_kib(t, "Cached"), Some(567890));
        assert_eq!(meminfo_kib(t, "Buffers"), Some(1234));
        assert_eq!(meminfo_kib(t, "Nope"), None);
        assert!(page_cache_kib().unwrap() > 0);
        assert!(rss_kib(&[std::process::id()]) > 0);
        assert_eq!(rss_kib(&[u32::MAX]), 0);
    }
}
