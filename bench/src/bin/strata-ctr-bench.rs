//! strata-ctr-bench: containerd and Docker on Strata vs on containerd's overlayfs snapshotter,
//! in the same run, on the same disk: one private containerd 1.7 (Debian 13's) with Strata as
//! its proxy snapshotter and diff service (first in the diff service's list), and two private
//! dockerd 26 on it with the containerd image store, storage driver `strata` and `overlayfs`.
//!
//! Workloads (median with min–max of `--repeats`; images, containers and snapshots removed
//! between repeats):
//! - `ctr images import` of a one-layer image of 14,000 entries (140 directories of 99 small
//!   files and a static busybox; uncompressed, so decompression does not hide the file system);
//! - `docker load` of the same image;
//! - `docker build --no-cache` of a Dockerfile of four steps over many small files (COPY of a
//!   2,000-file context, a RUN writing 3,000 files, a RUN deleting and changing some, a RUN
//!   writing a tar of them), the time of the whole build;
//! - `docker commit` of a container that wrote 10,000 small files;
//! - container start: `ctr run --rm IMAGE ID /bin/echo first` and
//!   `docker run --rm IMAGE /bin/echo first`, spawn to first line.
//!
//! Writes `ctr.md` (tables) and `ctr.svg` (Strata relative to overlayfs) into `--out`.
//! Needs root, Debian 13's containerd, docker.io, docker-cli, docker-buildx (scripts/test
//! installs them), runc and /bin/busybox; the strata binary is $STRATA_BIN or the one next to
//! this. `cargo run -p bench --release --bin strata-ctr-bench -- --help`

#[path = "../../../tests/common/ctr_image.rs"]
mod ctr_image;
#[path = "../../../tests/common/oci_image.rs"]
mod oci_image;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bench::report::svg::{Bar, BarChart, Row as ChartRow};
use bench::results::{summarize, Summary};
use bench::Res;
use clap::builder::RangedU64ValueParser;
use clap::Parser;
use testkit::containerd::{Config, Containerd, Containerd17};
use testkit::docker::Dockerd;
use testkit::Mount;

const IMAGE: &str = "docker.io/library/strata-bench-14k:1";
const BASE: &str = "docker.io/library/strata-bench-box:1";

/// containerd and Docker on Strata vs overlayfs: imports, loads, builds, commits, starts.
#[derive(Parser)]
#[command(name = "strata-ctr-bench")]
struct Args {
    /// Repeats per workload and snapshotter (figures are their median, min–max)
    #[arg(long, value_name = "N", default_value_t = 3,
          value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    repeats: usize,
    /// Scratch directory for the daemons, the Strata image and the archives (deleted at the end)
    #[arg(long, value_name = "DIR", default_value = "/var/tmp/strata-ctr-bench")]
    dir: PathBuf,
    /// Where ctr.md and ctr.svg go
    #[arg(long, value_name = "DIR", default_value = "bench/results/ctr")]
    out: PathBuf,
    /// Only these workloads (comma-separated: import, load, build, commit, start)
    #[arg(long, value_name = "LIST")]
    only: Option<String>,
    /// Only write the benchmark's 14,000-entry image archive to FILE and exit
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

const DOCKERFILE: &str = r#"FROM strata-bench-box:1
COPY files /files
RUN mkdir /gen && cd /gen && i=0; while [ $i -lt 3000 ]; do echo "generated $i" > f$i; i=$((i+1)); done
RUN rm -rf /files/d0* && i=0; while [ $i -lt 500 ]; do echo more >> /gen/f$i; i=$((i+1)); done
RUN tar -cf /gen.tar /gen /files && rm -rf /gen
"#;

fn build_context(dir: &Path) {
    for d in 0..20 {
        let p = dir.join(format!("files/d{d:02}"));
        fs::create_dir_all(&p).unwrap();
        for f in 0..100 {
            fs::write(
                p.join(format!("f{f:02}")),
                format!("context {d} {f}\n").repeat(20),
            )
            .unwrap();
        }
    }
    fs::write(dir.join("Dockerfile"), DOCKERFILE).unwrap();
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

/// One measurement's samples per snapshotter.
struct Measured {
    name: &'static str,
    /// (overlayfs, strata) samples, seconds.
    samples: [Vec<f64>; 2],
}

const SNAPSHOTTERS: [&str; 2] = ["overlayfs", "strata"];

fn timed(what: &str, f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    let s = t.elapsed().as_secs_f64();
    eprintln!("  {what}: {s:.3} s");
    s
}

/// Seconds from spawning `cmd` to its first line of output, which must be `first`.
fn first_line(mut cmd: Command) -> f64 {
    let t = Instant::now();
    let mut c = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut line = String::new();
    BufReader::new(c.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let el = t.elapsed().as_secs_f64();
    let st = c.wait().unwrap();
    assert!(
        line.trim() == "first" && st.success(),
        "{cmd:?}: got {line:?}, {st}"
    );
    el
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

fn run(a: &Args) -> Res<()> {
    if let Some(why) = testkit::docker::skip_reason() {
        return Err(why);
    }
    let bin = Containerd17::find()?;
    let want = |w: &str| {
        a.only
            .as_deref()
            .is_none_or(|o| o.split(',').any(|x| x == w))
    };
    // testkit's fixtures find the strata binary through this variable.
    std::env::set_var("CARGO_BIN_EXE_strata", strata_bin());
    let _ = fs::remove_dir_all(&a.dir);
    fs::create_dir_all(&a.dir).map_err(|e| format!("{}: {e}", a.dir.display()))?;
    let cdir = a.dir.join("ctrd");
    let img = a.dir.join("strata.img");
    testkit::mkfs_at(&img, "24G");
    let mnt = a.dir.join("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let m = Mount::start_with(
        &img,
        &mnt,
        &[
            "--containerd-address",
            cdir.join("containerd.sock").to_str().unwrap(),
            "--log-level",
            "info",
        ],
    );
    let mut c = Containerd::start(
        &bin,
        &cdir,
        &Config {
            snapshotter: Some(m.snapshotter_socket()),
            differ: Some(m.diff_socket()),
            ..Default::default()
        },
    );
    c.namespace = "strata-bench".into();
    let docker = [
        Dockerd::start(&a.dir.join("docker-overlayfs"), &c.sock, "overlayfs"),
        Dockerd::start(&a.dir.join("docker-strata"), &c.sock, "strata"),
    ];
    let archive = a.dir.join("image.tar");
    fs::write(&archive, oci_image::archive(&[layer()], IMAGE, usize::MAX)).unwrap();
    let base = a.dir.join("base.tar");
    fs::write(&base, ctr_image::busybox_image(BASE)).unwrap();
    let ctx = a.dir.join("context");
    build_context(&ctx);
    let sync = || {
        let _ = Command::new("sync").status();
    };
    let mut out: Vec<Measured> = Vec::new();

    if want("import") {
        let mut m = Measured {
            name: "ctr images import, 14,000-entry layer",
            samples: [vec![], vec![]],
        };
        for (i, sn) in SNAPSHOTTERS.iter().enumerate() {
            for r in 0..a.repeats {
                sync();
                let s = timed(&format!("{sn} import {r}"), || {
                    c.ok(&[
                        "images",
                        "import",
                        "--snapshotter",
                        sn,
                        archive.to_str().unwrap(),
                    ]);
                });
                m.samples[i].push(s);
                c.ok(&["images", "rm", "--sync", IMAGE]);
            }
        }
        out.push(m);
    }
    if want("load") {
        let mut m = Measured {
            name: "docker load, 14,000-entry layer",
            samples: [vec![], vec![]],
        };
        for (i, d) in docker.iter().enumerate() {
            for r in 0..a.repeats {
                sync();
                let s = timed(&format!("{} load {r}", d.snapshotter), || {
                    d.ok(&["load", "-i", archive.to_str().unwrap()]);
                });
                m.samples[i].push(s);
                d.ok(&["rmi", "-f", IMAGE]);
            }
        }
        out.push(m);
    }
    for d in &docker {
        d.ok(&["load", "-i", base.to_str().unwrap()]);
    }
    if want("build") {
        let mut m = Measured {
            name: "docker build --no-cache, 4 steps, ~5,000 small files",
            samples: [vec![], vec![]],
        };
        for (i, d) in docker.iter().enumerate() {
            for r in 0..a.repeats {
                sync();
                let s = timed(&format!("{} build {r}", d.snapshotter), || {
                    d.ok(&[
                        "build",
                        "--no-cache",
                        "--network",
                        "none",
                        "-q",
                        "-t",
                        "bench-built:1",
                        ctx.to_str().unwrap(),
                    ]);
                });
                m.samples[i].push(s);
                d.ok(&["rmi", "-f", "bench-built:1"]);
                d.ok(&["builder", "prune", "-a", "-f"]);
            }
        }
        out.push(m);
    }
    if want("commit") {
        let mut m = Measured {
            name: "docker commit of 10,000 new files",
            samples: [vec![], vec![]],
        };
        let script =
            "mkdir /data && cd /data && i=0; while [ $i -lt 10000 ]; do echo \"file $i\" > f$i; \
                      i=$((i+1)); done; touch /done; sleep 100000";
        for (i, d) in docker.iter().enumerate() {
            for r in 0..a.repeats {
                let name = format!("bench-c{r}");
                d.ok(&[
                    "run",
                    "-d",
                    "--name",
                    &name,
                    "--network",
                    "none",
                    BASE,
                    "sh",
                    "-c",
                    script,
                ]);
                let t0 = Instant::now();
                while d.docker(&["exec", &name, "test", "-e", "/done"]).code != 0 {
                    assert!(
                        t0.elapsed() < Duration::from_secs(300),
                        "writer did not finish"
                    );
                    std::thread::sleep(Duration::from_millis(200));
                }
                sync();
                let s = timed(&format!("{} commit {r}", d.snapshotter), || {
                    d.ok(&["commit", &name, "bench-committed:1"]);
                });
                m.samples[i].push(s);
                d.ok(&["rm", "-f", &name]);
                d.ok(&["rmi", "-f", "bench-committed:1"]);
            }
        }
        out.push(m);
    }
    if want("start") {
        let mut ctr_start = Measured {
            name: "ctr run → first line",
            samples: [vec![], vec![]],
        };
        let mut docker_start = Measured {
            name: "docker run → first line",
            samples: [vec![], vec![]],
        };
        c.ok(&[
            "images",
            "import",
            "--snapshotter",
            "overlayfs",
            base.to_str().unwrap(),
        ]);
        c.ok(&[
            "images",
            "import",
            "--snapshotter",
            "strata",
            base.to_str().unwrap(),
        ]);
        for (i, sn) in SNAPSHOTTERS.iter().enumerate() {
            for r in 0..a.repeats + 2 {
                let mut cmd = Command::new(bin.ctr());
                cmd.arg("-a")
                    .arg(&c.sock)
                    .args(["-n", "strata-bench"])
                    .args([
                        "run",
                        "--rm",
                        "--snapshotter",
                        sn,
                        BASE,
                        &format!("start-{sn}-{r}"),
                        "/bin/echo",
                        "first",
                    ]);
                let s = first_line(cmd);
                eprintln!("  {sn} ctr start {r}: {s:.3} s");
                ctr_start.samples[i].push(s);
            }
        }
        for (i, d) in docker.iter().enumerate() {
            for r in 0..a.repeats + 2 {
                let mut cmd = d.cmd();
                cmd.args([
                    "run",
                    "--rm",
                    "--network",
                    "none",
                    BASE,
                    "/bin/echo",
                    "first",
                ]);
                let s = first_line(cmd);
                eprintln!("  {} docker start {r}: {s:.3} s", d.snapshotter);
                docker_start.samples[i].push(s);
            }
        }
        out.push(ctr_start);
        out.push(docker_start);
    }

    let report = report(&out, &bin.version, a.repeats);
    print!("{}", report.0);
    let _ = std::io::stdout().flush();
    fs::create_dir_all(&a.out).map_err(|e| format!("{}: {e}", a.out.display()))?;
    fs::write(a.out.join("ctr.md"), &report.0).map_err(|e| e.to_string())?;
    fs::write(a.out.join("ctr.svg"), &report.1).map_err(|e| e.to_string())?;
    eprintln!("wrote {}/ctr.md and ctr.svg", a.out.display());
    drop(docker);
    drop(c);
    // What the diff service did and how long its phases took.
    let log = m.stderr();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("diff service: "))
        .collect();
    fs::write(a.out.join("diff-service.log"), lines.join("\n") + "\n")
        .map_err(|e| e.to_string())?;
    drop(m);
    let _ = fs::remove_dir_all(&a.dir);
    Ok(())
}

fn report(ms: &[Measured], version: &str, repeats: usize) -> (String, String) {
    let sum = |s: &Summary| format!("{:.3} ({:.3}–{:.3})", s.median, s.min, s.max);
    let mut md = format!(
        "containerd {version}, dockerd {} — seconds, median (min–max) of {repeats} repeats \
         ({} for starts); ratio = Strata / overlayfs\n\n\
         | workload | overlayfs | strata | ratio |\n|---|---:|---:|---:|\n",
        dockerd_version(),
        repeats + 2
    );
    let mut rows = Vec::new();
    for m in ms {
        let (Some(o), Some(s)) = (summarize(&m.samples[0]), summarize(&m.samples[1])) else {
            continue;
        };
        let ratio = s.median / o.median;
        md.push_str(&format!(
            "| {} | {} | {} | {:.2}× |\n",
            m.name,
            sum(&o),
            sum(&s),
            ratio
        ));
        let bar = |x: &Summary| Bar {
            value: Some(x.median / o.median),
            range: Some((x.min / o.median, x.max / o.median)),
            text: format!("{:.2}× ({:.2} s)", x.median / o.median, x.median),
            tip: sum(x),
        };
        rows.push(ChartRow {
            label: m.name.to_string(),
            bars: vec![bar(&o), bar(&s)],
            goal: None,
        });
    }
    let chart = BarChart {
        title: "containerd and Docker: Strata vs overlayfs".into(),
        subtitle: "time relative to overlayfs (median, min–max whiskers); shorter is better".into(),
        series: vec![("overlayfs", "#999999"), ("strata", "#1f77b4")],
        rows,
        log: false,
        cap: Some(3.0),
        rules: vec![(1.0, "overlayfs".into())],
    };
    (md, chart.svg())
}

fn dockerd_version() -> String {
    Command::new("dockerd")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
