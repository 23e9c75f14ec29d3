//! strata-ctr-bench: containerd with Strata (proxy snapshotter) vs containerd's default
//! overlayfs snapshotter, in the same run, on the same disk, one private containerd serving both.
//!
//! - import: `ctr images import --snapshotter S` of a one-layer image of 14,000 entries (140
//!   directories of 99 small files, plus a static busybox), image and snapshots removed (GC)
//!   between repeats;
//! - start: time from spawning `ctr run --rm --snapshotter S IMAGE ID /bin/echo first` to its
//!   first line of output.
//!
//! Medians with min–max. Needs root, containerd, ctr, runc and /bin/busybox (busybox-static).
//! `cargo run -p bench --release --bin strata-ctr-bench -- --help`

#[path = "../../../tests/common/oci_image.rs"]
mod oci_image;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const IMAGE: &str = "docker.io/library/strata-bench-14k:1";
const NS: &str = "strata-bench";
/// How often start-up is polled.
const POLL: Duration = Duration::from_millis(50);

use bench::results::{summarize, Summary};
use bench::Res;
use bench::{mounts, process};
use clap::builder::RangedU64ValueParser;
use clap::Parser;

/// containerd with Strata (proxy snapshotter) vs its own overlayfs snapshotter, one private
/// containerd serving both: `ctr images import` of a 14,000-entry image and the time from
/// `ctr run` to the container's first line. Needs root, containerd, ctr, runc and
/// /bin/busybox (busybox-static); the strata binary is $STRATA_BIN or the one next to this.
#[derive(Parser)]
#[command(name = "strata-ctr-bench")]
struct Args {
    /// Imports and runs per snapshotter (figures are their median, min–max)
    #[arg(long, value_name = "N", default_value_t = 5,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    repeats: usize,
    /// Scratch directory for containerd, the Strata image and the image archive (deleted at the end)
    #[arg(long, value_name = "DIR", default_value = "/var/tmp/strata-ctr-bench")]
    dir: PathBuf,
    /// Only write the benchmark's image archive to FILE and exit
    #[arg(long, value_name = "FILE")]
    image_out: Option<PathBuf>,
}

/// The image's one layer: busybox and 14,000 entries.
fn layer() -> Vec<u8> {
    let busybox = fs::read("/bin/busybox").expect("/bin/busybox (apt-get install busybox-static)");
    let mut l = oci_image::LayerTar::new();
    l.dir("bin").file("bin/busybox", &busybox, 0o755);
    l.link("bin/echo", "busybox", tar::EntryType::Symlink);
    l.link("bin/sh", "busybox", tar::EntryType::Symlink);
    l.dir("data");
    let mut n = 0u32;
    for d in 0..140 {
        l.dir(&format!("data/d{d:03}"));
        for f in 0..99 {
            n = n.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let len = 64 + (n >> 16) as usize % 2000;
            let body: Vec<u8> = (0..len).map(|i| (i as u32 ^ n) as u8).collect();
            l.file(&format!("data/d{d:03}/f{f:02}"), &body, 0o644);
        }
    }
    l.finish()
}

struct Daemons {
    dir: PathBuf,
    mnt: PathBuf,
    strata: Option<Child>,
    containerd: Option<Child>,
    sock: PathBuf,
}

fn strata_bin() -> PathBuf {
    std::env::var_os("STRATA_BIN")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::current_exe()
                .ok()
                .map(|p| p.with_file_name("strata"))
        })
        .unwrap_or_else(|| PathBuf::from("strata"))
}

impl Daemons {
    fn start(dir: &Path) -> Res<Daemons> {
        let _ = fs::remove_dir_all(dir);
        fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut d = Daemons {
            dir: dir.to_path_buf(),
            mnt: dir.join("mnt"),
            strata: None,
            containerd: None,
            sock: dir.join("containerd.sock"),
        };
        let img = dir.join("strata.img");
        let st = Command::new(strata_bin())
            .args(["mkfs", "--size", "16G"])
            .arg(&img)
            .stdout(Stdio::null())
            .status()
            .map_err(|e| format!("strata mkfs: {e}"))?;
        if !st.success() {
            return Err("strata mkfs failed".into());
        }
        fs::create_dir_all(&d.mnt).map_err(|e| e.to_string())?;
        let snap = dir.join("snapshotter.sock");
        let log = fs::File::create(dir.join("strata.log")).map_err(|e| e.to_string())?;
        d.strata = Some(
            Command::new(strata_bin())
                .arg("mount")
                .arg(&img)
                .arg(&d.mnt)
                .args(["--metrics-addr", "off", "--admin-socket"])
                .arg(dir.join("admin.sock"))
                .arg("--snapshotter-socket")
                .arg(&snap)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .map_err(|e| format!("strata mount: {e}"))?,
        );
        let mnt = d.mnt.clone();
        process::wait_for("strata", Duration::from_secs(30), POLL, || {
            mounts::is_mounted(&mnt)
        })?;
        let cfg = dir.join("config.toml");
        let p = dir.display();
        fs::write(
            &cfg,
            format!(
                "version = 2\nroot = \"{p}/root\"\nstate = \"{p}/state\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{p}/containerd.sock\"\n\
                 [ttrpc]\n  address = \"{p}/containerd.sock.ttrpc\"\n\
                 [proxy_plugins]\n  [proxy_plugins.strata]\n    type = \"snapshot\"\n    address = \"{}\"\n",
                snap.display()
            ),
        )
        .map_err(|e| e.to_string())?;
        let log = fs::File::create(dir.join("containerd.log")).map_err(|e| e.to_string())?;
        d.containerd = Some(
            Command::new("containerd")
                .arg("--config")
                .arg(&cfg)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .map_err(|e| format!("containerd: {e}"))?,
        );
        let sock = d.sock.clone();
        process::wait_for("containerd", Duration::from_secs(30), POLL, || {
            Command::new("ctr")
                .arg("-a")
                .arg(&sock)
                .arg("version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        })?;
        Ok(d)
    }

    fn ctr(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ctr");
        c.arg("-a").arg(&self.sock).arg("-n").arg(NS).args(args);
        c
    }

    fn run(&self, args: &[&str]) -> Res<String> {
        let out = self
            .ctr(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("ctr: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "ctr {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Daemons {
    fn drop(&mut self) {
        if let Some(mut c) = self.containerd.take() {
            process::signal(&c, libc::SIGTERM);
            let _ = c.wait();
        }
        // containerd's leftover mounts (its overlayfs snapshots, container rootfs), deepest first.
        for m in mounts::mounts_below(&self.dir) {
            if m != self.mnt {
                let _ = Command::new("umount").arg("-l").arg(&m).status();
            }
        }
        if let Some(mut c) = self.strata.take() {
            let _ = Command::new("umount").arg(&self.mnt).status();
            let _ = c.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// One snapshotter's figures, seconds.
struct Row {
    snapshotter: &'static str,
    /// Every import, in order: the first lands on a host that has not just deleted the
    /// previous copy; later ones follow a removal (GC) of 14,000 files, which slows overlayfs
    /// on ext4 a lot. Both are reported.
    imports: Vec<f64>,
    import: Summary,
    start: Summary,
}

/// Seconds to import the image (containerd unpacks it into the snapshotter).
fn import(d: &Daemons, sn: &str, archive: &Path) -> Res<f64> {
    let t = Instant::now();
    d.run(&[
        "images",
        "import",
        "--snapshotter",
        sn,
        archive.to_str().unwrap(),
    ])?;
    Ok(t.elapsed().as_secs_f64())
}

fn remove_image(d: &Daemons, sn: &str) -> Res<()> {
    d.run(&["images", "rm", "--sync", IMAGE])?;
    let left = d.run(&["snapshots", "--snapshotter", sn, "ls"])?;
    if left.lines().count() > 1 {
        return Err(format!("GC left snapshots of {sn}:\n{left}"));
    }
    Ok(())
}

/// Seconds from spawning `ctr run` to the container's first line of output.
fn first_line(d: &Daemons, sn: &str, id: &str) -> Res<f64> {
    let t = Instant::now();
    let mut c = d
        .ctr(&[
            "run",
            "--rm",
            "--snapshotter",
            sn,
            IMAGE,
            id,
            "/bin/echo",
            "first",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("ctr run: {e}"))?;
    let mut line = String::new();
    BufReader::new(c.stdout.take().unwrap())
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let el = t.elapsed().as_secs_f64();
    let st = c.wait().map_err(|e| e.to_string())?;
    if line.trim() != "first" || !st.success() {
        let mut err = String::new();
        let _ = std::io::Read::read_to_string(&mut c.stderr.take().unwrap(), &mut err);
        return Err(format!("ctr run {sn}: got {line:?}, {st}: {err}"));
    }
    Ok(el)
}

fn main() {
    let a = Args::parse();
    if let Some(p) = &a.image_out {
        if let Err(e) = fs::write(p, oci_image::archive(&[layer()], IMAGE, usize::MAX)) {
            eprintln!("strata-ctr-bench: {}: {e}", p.display());
            std::process::exit(1);
        }
        return;
    }
    if let Err(e) = run(&a) {
        eprintln!("strata-ctr-bench: {e}");
        std::process::exit(1);
    }
}

fn run(a: &Args) -> Res<()> {
    let d = Daemons::start(&a.dir)?;
    let archive = a.dir.join("image.tar");
    fs::write(&archive, oci_image::archive(&[layer()], IMAGE, usize::MAX))
        .map_err(|e| e.to_string())?;
    let mut rows = Vec::new();
    for sn in ["overlayfs", "strata"] {
        let mut imports = Vec::new();
        let mut starts = Vec::new();
        for r in 0..a.repeats {
            if r > 0 {
                remove_image(&d, sn)?;
            }
            let _ = Command::new("sync").status();
            imports.push(import(&d, sn, &archive)?);
            eprintln!("{sn}: import {:.3} s", imports[r]);
        }
        for r in 0..a.repeats {
            starts.push(first_line(&d, sn, &format!("bench-{sn}-{r}"))?);
            eprintln!("{sn}: first line {:.3} s", starts[r]);
        }
        remove_image(&d, sn)?;
        rows.push(Row {
            snapshotter: sn,
            import: summarize(&imports).expect("at least one repeat"),
            start: summarize(&starts).expect("at least one repeat"),
            imports,
        });
    }
    let mut md = String::new();
    md.push_str(&format!(
        "containerd {} — median (min–max) of {} repeats, 14,000-entry layer\n\n",
        d.run(&["version"])?
            .lines()
            .find(|l| l.trim_start().starts_with("Version"))
            .unwrap_or("")
            .trim(),
        a.repeats
    ));
    md.push_str(
        "| snapshotter | first import (s) | every import, in order (s) | import median (min–max) | ctr run → first line (s) |\n|---|---:|---|---:|---:|\n",
    );
    let sum = |s: &Summary| format!("{:.3} ({:.3}–{:.3})", s.median, s.min, s.max);
    for r in &rows {
        let all: Vec<String> = r.imports.iter().map(|t| format!("{t:.2}")).collect();
        md.push_str(&format!(
            "| {} | {:.3} | {} | {} | {} |\n",
            r.snapshotter,
            r.imports[0],
            all.join(", "),
            sum(&r.import),
            sum(&r.start)
        ));
    }
    let (o, s) = (&rows[0], &rows[1]);
    md.push_str(&format!(
        "\nStrata / overlayfs: first import {:.2}×, import median {:.2}×, first line {:.2}×\n",
        s.imports[0] / o.imports[0],
        s.import.median / o.import.median,
        s.start.median / o.start.median
    ));
    print!("{md}");
    let _ = std::io::stdout().flush();
    Ok(())
}
