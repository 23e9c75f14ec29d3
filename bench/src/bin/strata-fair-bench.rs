//! strata-fair-bench: can one container starve another's I/O? A quiet container (fio 4 KiB
//! random reads, psync, QD1, direct, on a file inherited from the image) is measured alone,
//! then beside a noisy one (fio 1 MiB writes, QD32, direct, io_uring, on its own file), with
//! `strata mount --io-scheduler fifo`, with `fair` at equal weights, with the quiet layer's
//! weight at 1000, and with the noisy layer capped at 200 MiB/s; then the same two jobs on
//! plain files of the file system holding the image, without Strata (what the host gives
//! them otherwise). Reports the quiet container's p50/p99 completion latency and IOPS and the
//! noisy one's MiB/s, medians with min–max (see `bench/src/fair.rs`). Run as root.
//!
//! `cargo run -p bench --release --bin strata-fair-bench -- --help`

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use bench::fair::{self, DaemonSide, Info, Outcome, Policy, Sample, Scenario, Target, SCENARIOS};
use bench::fio::{self, FioJob};
use bench::{cli, host, inputs, interrupt, mounts, process, progress, systems, Res};
use clap::builder::RangedU64ValueParser;
use clap::Parser;
use control::admin::Client;
use control::stats::Histogram;

/// The quiet container's file (in the base layer, inherited by both clones).
const QUIET_FILE_BYTES: u64 = 1 << 30;
/// The noisy container's own file.
const NOISY_FILE_BYTES: u64 = 2 << 30;
/// Seconds the noisy writer runs before the quiet run starts (its fio `--ramp_time`).
const LEAD_S: u64 = 2;

/// Whether one container can starve another's I/O: a quiet container's 4 KiB random reads
/// (p50/p99 latency, IOPS) alone, and beside a noisy container's 1 MiB direct writes at QD32
/// with `--io-scheduler fifo`, `fair` (equal weights), `fair` with the quiet layer at weight
/// 1000, `fair` with the noisy layer capped at 200 MiB/s, and weight 1000 with both on one
/// CPU; then both jobs on plain files of the host file system, without Strata. Run as root;
/// needs fio.
#[derive(Parser)]
#[command(
    name = "strata-fair-bench",
    after_help = "\
A full run takes about 8 minutes: a 4 GiB image, a 1 GiB file in the base layer, a 2 GiB file
in the noisy layer (and the same two files beside the image for the host rows), then 8
scenarios × 3 repeats of 15 s, the daemon remounted before each Strata one. --quick is one
repeat of 5 s runs (about 2 minutes). Results go to bench/results/<date>-fair/:
results.md (also printed), results.json, quiet-p99.svg, raw fio JSON and the daemon's log."
)]
struct Args {
    /// Smoke run: one repeat, 5 s per quiet run
    #[arg(long)]
    quick: bool,
    /// Runs per scenario (each figure is their median) [default: 3, or 1 with --quick]
    #[arg(long, value_name = "N", value_parser = RangedU64ValueParser::<usize>::new().range(1..))]
    repeats: Option<usize>,
    /// Seconds per quiet run [default: 15, or 5 with --quick]
    #[arg(long, value_name = "SECONDS", value_parser = RangedU64ValueParser::<u64>::new().range(1..=3600))]
    runtime: Option<u64>,
    /// The noisy container writes at random offsets rather than sequentially
    #[arg(long)]
    noisy_random: bool,
    /// The strata binary to mount with
    #[arg(long, value_name = "PATH", default_value_os_t = cli::default_strata())]
    strata: PathBuf,
    /// Scratch directory (absolute) for the image, the mount point and the admin socket;
    /// deleted at the end
    #[arg(long, value_name = "DIR", default_value = "/var/tmp/strata-fair-bench", value_parser = cli::absolute_path)]
    dir: PathBuf,
    /// Size of the sparse image (`strata mkfs --size`)
    #[arg(long, value_name = "SIZE", default_value = "4G")]
    image_size: String,
    /// Passed to `strata mount --cache-size` [default: strata's own]
    #[arg(long, value_name = "SIZE")]
    cache_size: Option<String>,
    /// Passed to `strata mount --fuse-transport` (`auto`, `io-uring`, `dev`) [default: strata's own]
    #[arg(long, value_name = "TRANSPORT")]
    fuse_transport: Option<String>,
    /// Results directory [default: bench/results/<date>-fair, or <date>-<time>-fair when that exists]
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

impl Args {
    fn repeats(&self) -> usize {
        self.repeats.unwrap_or(if self.quick { 1 } else { 3 })
    }

    fn runtime_s(&self) -> u64 {
        self.runtime.unwrap_or(if self.quick { 5 } else { 15 })
    }
}

fn log(msg: &str) {
    progress::log_as("strata-fair-bench", msg);
}

fn main() {
    let a = Args::parse();
    interrupt::install_signal_handlers();
    match run(&a) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("strata-fair-bench: {e}");
            std::process::exit(1);
        }
    }
}

/// `strata mount` of the image, as a child of ours; the Drop unmounts it, stops the daemon
/// and deletes the scratch directory, whatever happened (an error, Ctrl-C).
struct Daemon {
    bin: PathBuf,
    dir: PathBuf,
    image: PathBuf,
    mnt: PathBuf,
    sock: PathBuf,
    log: PathBuf,
    cache_size: Option<String>,
    fuse_transport: Option<String>,
    child: Option<Child>,
}

impl Daemon {
    /// The scratch directory (0700: it holds the image and the admin socket), cleared of what
    /// a killed run left, and a fresh image in it.
    fn create(a: &Args, log: PathBuf) -> Res<Daemon> {
        if !a.strata.is_file() {
            return Err(format!(
                "strata binary not found at {} (build it with `cargo build --release`, or pass --strata)",
                a.strata.display()
            ));
        }
        systems::clean_stale(&a.dir)?;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&a.dir)
            .map_err(|e| format!("mkdir {}: {e}", a.dir.display()))?;
        let d = Daemon {
            bin: a.strata.clone(),
            dir: a.dir.clone(),
            image: a.dir.join("strata.img"),
            mnt: a.dir.join("mnt"),
            sock: a.dir.join("admin.sock"),
            log,
            cache_size: a.cache_size.clone(),
            fuse_transport: a.fuse_transport.clone(),
            child: None,
        };
        fs::create_dir_all(&d.mnt).map_err(|e| format!("mkdir {}: {e}", d.mnt.display()))?;
        let out = process::run_captured(
            Command::new(&d.bin)
                .arg("mkfs")
                .arg(&d.image)
                .args(["--size", &a.image_size]),
            Duration::from_secs(120),
        )?;
        if !out.status.success() {
            return Err(format!(
                "strata mkfs {} --size {}: {}{}",
                d.image.display(),
                a.image_size,
                out.stderr.trim(),
                out.stdout.trim()
            ));
        }
        let mode = fs::metadata(&d.image)
            .map_err(|e| e.to_string())?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(format!(
                "strata mkfs left {} with mode {:o}, not 0600",
                d.image.display(),
                mode & 0o777
            ));
        }
        Ok(d)
    }

    fn mount(&mut self, policy: Policy) -> Res<()> {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("mount")
            .arg(&self.image)
            .arg(&self.mnt)
            .args(["--metrics-addr", "off", "--admin-socket"])
            .arg(&self.sock)
            .args([
                "--snapshotter-socket",
                "off",
                // Not the default /run/strata socket: another daemon on the host may hold it.
                "--diff-socket",
                "off",
                "--io-scheduler",
                policy.name(),
            ]);
        if let Some(c) = &self.cache_size {
            cmd.args(["--cache-size", c]);
        }
        if let Some(t) = &self.fuse_transport {
            cmd.args(["--fuse-transport", t]);
        }
        let child = self
            .child
            .insert(process::spawn_logged(&mut cmd, &self.log)?);
        mounts::wait_mounted(
            child,
            "strata mount",
            &self.mnt,
            &self.log,
            20,
            Duration::from_secs(60),
            Duration::from_millis(20),
        )
    }

    /// `umount`; the daemon must then exit 0 (it writes its final checkpoint).
    fn unmount(&mut self) -> Res<()> {
        let Some(child) = self.child.as_mut() else {
            return Ok(());
        };
        let out = process::run_captured(
            Command::new("umount").arg(&self.mnt),
            Duration::from_secs(120),
        )?;
        if !out.status.success() {
            return Err(format!(
                "umount {}: {}",
                self.mnt.display(),
                out.stderr.trim()
            ));
        }
        match process::wait_until(child, Instant::now() + Duration::from_secs(60), true) {
            Some(st) if st.success() => {
                self.child = None;
                Ok(())
            }
            Some(st) => {
                self.child = None;
                Err(format!(
                    "strata daemon exited with {st} after umount; last lines of {}:\n{}",
                    self.log.display(),
                    host::tail(&self.log, 20)
                ))
            }
            None => {
                interrupt::check_interrupted()?;
                Err("strata daemon still running 60 s after umount".into())
            }
        }
    }

    fn remount(&mut self, policy: Policy) -> Res<()> {
        self.unmount()?;
        self.mount(policy)
    }

    fn check_alive(&mut self) -> Res<()> {
        let Some(child) = self.child.as_mut() else {
            return Err("strata is not mounted".into());
        };
        if let Ok(Some(st)) = child.try_wait() {
            self.child = None;
            return Err(format!(
                "strata daemon exited ({st}); last lines of {}:\n{}",
                self.log.display(),
                host::tail(&self.log, 20)
            ));
        }
        if !mounts::is_mounted(&self.mnt) {
            return Err(format!("{} is no longer mounted", self.mnt.display()));
        }
        Ok(())
    }

    /// `strata --admin-socket SOCK layer ARGS…`.
    fn layer<S: AsRef<str>>(&self, args: &[S]) -> Res<()> {
        let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
        let out = process::run_captured(
            Command::new(&self.bin)
                .arg("--admin-socket")
                .arg(&self.sock)
                .arg("layer")
                .args(&args),
            Duration::from_secs(60),
        )?;
        if !out.status.success() {
            return Err(format!(
                "strata layer {}: {}{}",
                args.join(" "),
                out.stderr.trim(),
                out.stdout.trim()
            ));
        }
        Ok(())
    }

    /// The quiet layer's read latency and scheduler queueing since the daemon started.
    fn quiet_stats(&self) -> Res<DaemonSide> {
        let r = Client::new(&self.sock).stats().map_err(|e| e.to_string())?;
        let l = r
            .layers
            .iter()
            .find(|l| l.id == "quiet")
            .ok_or("no statistics for layer quiet")?;
        let us = |v: f64| v * 1e6;
        let mean = |h: &Histogram| (h.count > 0).then(|| us(h.sum_seconds / h.count as f64));
        let p99 = |h: &Histogram| h.quantile_bound(0.99).filter(|v| v.is_finite()).map(us);
        Ok(DaemonSide {
            read_p99_us: p99(&l.read_latency),
            read_mean_us: mean(&l.read_latency),
            queue_p99_us: p99(&l.io_queue_delay),
            queue_mean_us: mean(&l.io_queue_delay),
            device_p99_us: p99(&l.io_device_read),
            device_mean_us: mean(&l.io_device_read),
            noisy_device_write_p99_us: r
                .layers
                .iter()
                .find(|l| l.id == "noisy")
                .and_then(|l| p99(&l.io_device_write)),
        })
    }

    fn layer_limit(&self, id: &str, limits: Vec<String>) -> Res<()> {
        let mut args = vec!["limit".to_string(), id.to_string()];
        args.extend(limits);
        self.layer(&args)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // umount; "busy" while a killed fio's processes still exit: try again for a while.
        let deadline = Instant::now() + Duration::from_secs(15);
        while mounts::is_mounted(&self.mnt) {
            match process::run_to_end(
                Command::new("umount").arg(&self.mnt),
                Duration::from_secs(60),
            ) {
                Ok(o) if o.status.success() => break,
                Ok(o) if Instant::now() < deadline && o.stderr.contains("busy") => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                Ok(o) => {
                    eprintln!(
                        "strata-fair-bench: umount {}: {}",
                        self.mnt.display(),
                        o.stderr.trim()
                    );
                    break;
                }
                Err(e) => {
                    eprintln!("strata-fair-bench: {e}");
                    break;
                }
            }
        }
        if let Some(mut child) = self.child.take() {
            let st = match process::wait_until(
                &mut child,
                Instant::now() + Duration::from_secs(15),
                false,
            ) {
                Some(st) => Some(st),
                None => {
                    eprintln!("strata-fair-bench: strata daemon still running after umount; sending SIGTERM");
                    process::stop_child(&mut child, libc::SIGTERM, Duration::from_secs(10))
                }
            };
            match st {
                Some(st) if st.success() => {}
                Some(st) => eprintln!(
                    "strata-fair-bench: strata daemon exited with {st} at teardown (log: {})",
                    self.log.display()
                ),
                None => eprintln!(
                    "strata-fair-bench: WARNING: strata daemon (pid {}) would not die",
                    child.id()
                ),
            }
        }
        // A dead daemon leaves a dead FUSE mount: abort the connection, detach.
        if let Some(m) = mounts::find_mount(&self.mnt) {
            mounts::abort_fuse_connection(&m.dev);
            mounts::unmount(&self.mnt);
        }
        if mounts::mounts_below(&self.dir).is_empty() {
            if let Err(e) = fs::remove_dir_all(&self.dir) {
                eprintln!(
                    "strata-fair-bench: cannot remove {}: {e}",
                    self.dir.display()
                );
            }
        } else {
            eprintln!(
                "strata-fair-bench: WARNING: {} still mounted; leaving {} in place",
                self.mnt.display(),
                self.dir.display()
            );
        }
    }
}

/// The noisy container's fio job.
fn noisy_job(random: bool, ioengine: &'static str) -> FioJob {
    FioJob {
        rw: if random { "randwrite" } else { "write" },
        bs: "1M",
        iodepth: 32,
        ioengine,
        direct: true,
    }
}

const QUIET_JOB: FioJob = FioJob {
    rw: "randread",
    bs: "4k",
    iodepth: 1,
    ioengine: "psync",
    direct: true,
};

/// Write the noisy container's own file once (so that the runs rewrite it in place), with
/// io_uring, or libaio when io_uring fails; returns the engine that worked. `label` names the
/// fio output in `raw`.
fn lay_out_noisy(file: &Path, raw: &Path, label: &str) -> Res<&'static str> {
    let mut errors = Vec::new();
    for ioengine in ["io_uring", "libaio"] {
        let _ = fs::remove_file(file);
        let json = raw.join(format!("{label}-layout-{ioengine}.json"));
        let out = process::run_captured(
            Command::new("fio")
                .arg("--name=layout")
                .arg(format!("--filename={}", file.display()))
                .arg(format!("--size={NOISY_FILE_BYTES}"))
                .arg(format!("--ioengine={ioengine}"))
                .args(["--direct=1", "--rw=write", "--bs=1M", "--iodepth=32"])
                .args(["--fallocate=none", "--end_fsync=1", "--output-format=json"])
                .arg(format!("--output={}", json.display())),
            Duration::from_secs(1800),
        )?;
        let parsed = fs::read_to_string(&json)
            .map_err(|e| e.to_string())
            .and_then(|t| fio::parse(&t, true));
        match parsed {
            Ok(s) if out.status.success() => {
                log(&format!(
                    "noisy file written with {ioengine}: {:.0} MiB/s",
                    s.mib_per_sec
                ));
                return Ok(ioengine);
            }
            r => {
                let why = format!(
                    "{ioengine}: {} {} {}",
                    out.status,
                    r.err().unwrap_or_default(),
                    out.stderr.trim()
                );
                log(&format!("writing the noisy file failed with {why}"));
                errors.push(why);
            }
        }
        interrupt::check_interrupted()?;
    }
    Err(format!(
        "cannot write {} with fio: {}",
        file.display(),
        errors.join("; ")
    ))
}

/// The noisy container's fio, running in the background; killed if dropped.
struct Noisy {
    child: Child,
    json: PathBuf,
    log: PathBuf,
}

impl Noisy {
    fn start(
        job: &FioJob,
        file: &Path,
        runtime_s: u64,
        (json, log): (PathBuf, PathBuf),
        extra: &[&str],
    ) -> Res<Noisy> {
        // Runs until stopped: the runtime is only a backstop should we die.
        let mut cmd = fio::command(job, file, NOISY_FILE_BYTES, runtime_s + 120, &json);
        cmd.arg(format!("--ramp_time={LEAD_S}")).args(extra);
        let child = process::spawn_logged(&mut cmd, &log)?;
        Ok(Noisy { child, json, log })
    }

    fn check_running(&mut self) -> Res<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(st)) => Err(format!(
                "the noisy fio exited ({st}) before the quiet run ended: {}",
                host::tail(&self.log, 6).replace('\n', " | ")
            )),
            Err(e) => Err(e.to_string()),
        }
    }

    /// SIGINT: fio stops and writes its JSON; its throughput and latency.
    fn stop(mut self) -> Res<fio::FioSample> {
        self.check_running()?;
        process::signal_group(&self.child, libc::SIGINT);
        if process::wait_until(
            &mut self.child,
            Instant::now() + Duration::from_secs(60),
            false,
        )
        .is_none()
        {
            return Err("the noisy fio did not stop 60 s after SIGINT".into());
        }
        let text =
            fs::read_to_string(&self.json).map_err(|e| format!("{}: {e}", self.json.display()))?;
        fio::parse(&text, true).map_err(|e| format!("{}: {e}", self.json.display()))
    }
}

impl Drop for Noisy {
    /// Kill fio's process group and wait until all of it is gone: a job process finishing
    /// its in-flight writes to the mount would keep it busy at unmount.
    fn drop(&mut self) {
        process::stop_child(&mut self.child, libc::SIGKILL, Duration::from_secs(1));
        let pgid = self.child.id() as libc::pid_t;
        let _ = process::wait_for(
            "the noisy fio's processes",
            Duration::from_secs(30),
            Duration::from_millis(20),
            || {
                // SAFETY: kill(2) with signal 0 only checks that the group exists.
                unsafe { libc::kill(-pgid, 0) != 0 }
            },
        );
    }
}

/// Sleep `d`, unless interrupted.
fn sleep(d: Duration) -> Res<()> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        interrupt::check_interrupted()?;
        std::thread::sleep(Duration::from_millis(50).min(end - Instant::now()));
    }
    Ok(())
}

/// What [`run_scenario`] needs besides the scenario.
struct Ctx<'a> {
    a: &'a Args,
    out: &'a Path,
    noisy_engine: &'static str,
}

/// The directory of the host rows' plain files (beside the image).
fn host_dir(d: &Daemon) -> PathBuf {
    d.dir.join("host")
}

/// One run of `sc`: on Strata remount with its policy and set both layers' limits; start the
/// noisy writer (if any) and run the quiet reader.
fn run_scenario(d: &mut Daemon, c: &Ctx, sc: &Scenario, rep: usize) -> Res<Sample> {
    let (quiet_file, noisy_file) = match sc.target {
        Target::Strata => {
            d.remount(sc.policy)?;
            d.layer_limit("quiet", sc.quiet_limits())?;
            d.layer_limit("noisy", sc.noisy_limits())?;
            (
                d.mnt.join("quiet").join("big"),
                d.mnt.join("noisy").join("big"),
            )
        }
        Target::HostFs => (host_dir(d).join("quiet"), host_dir(d).join("noisy")),
    };
    let name = |who: &str| format!("raw/{}-r{}-{who}.json", sc.id, rep + 1);
    let runtime = c.a.runtime_s();
    let pin: &[&str] = if sc.same_cpu {
        &["--cpus_allowed=0"]
    } else {
        &[]
    };
    let mut noisy = if sc.noisy {
        let n = Noisy::start(
            &noisy_job(c.a.noisy_random, c.noisy_engine),
            &noisy_file,
            runtime,
            (
                c.out.join(name("noisy")),
                c.out.join("raw").join("noisy-fio.log"),
            ),
            pin,
        )?;
        Some(n)
    } else {
        None
    };
    if let Some(n) = noisy.as_mut() {
        sleep(Duration::from_secs(LEAD_S))?;
        n.check_running()?;
    }
    let q = fio::run_with(
        &QUIET_JOB,
        &quiet_file,
        QUIET_FILE_BYTES,
        runtime,
        &c.out.join(name("quiet")),
        pin,
    );
    let n = noisy.map(Noisy::stop).transpose();
    let (q, n) = (q?, n?);
    let daemon = match sc.target {
        Target::HostFs => None,
        Target::Strata => match d.quiet_stats() {
            Ok(s) => Some(s),
            Err(e) => {
                log(&format!("  cannot read the daemon's statistics: {e}"));
                None
            }
        },
    };
    let mut raw = vec![name("quiet")];
    if n.is_some() {
        raw.push(name("noisy"));
    }
    Ok(Sample {
        rep,
        quiet: q,
        daemon,
        noisy_mib_s: n.map(|n| n.mib_per_sec),
        noisy_p99_us: n.and_then(|n| n.clat_p99_us),
        raw,
    })
}

/// The default results directory: bench/results/<date>-fair, or <date>-<time>-fair.
fn default_out() -> PathBuf {
    cli::default_results_dir("-fair")
}

fn run(a: &Args) -> Res<bool> {
    let t0 = progress::start();
    if !host::is_root() {
        return Err("must run as root (it mounts Strata)".into());
    }
    let fio_version = fio::version()?;
    let out = a.out.clone().unwrap_or_else(default_out);
    fs::create_dir_all(out.join("raw")).map_err(|e| format!("mkdir {}: {e}", out.display()))?;
    let (date, time) = host::local_date_time();
    let mut info = Info {
        started: format!("{date} {}:{}", &time[..2], &time[2..4]),
        unix_time: host::unix_time(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        git_rev: host::git_rev(&cli::workspace_root()),
        kernel: host::kernel_release(),
        cpu: host::cpu_model(),
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        fio_version,
        strata_bin: a.strata.display().to_string(),
        dir: a.dir.display().to_string(),
        image_size: a.image_size.clone(),
        cache_size: a.cache_size.clone(),
        quick: a.quick,
        repeats: a.repeats(),
        runtime_s: a.runtime_s(),
        quiet_file_bytes: QUIET_FILE_BYTES,
        noisy_file_bytes: NOISY_FILE_BYTES,
        noisy_rw: noisy_job(a.noisy_random, "io_uring").rw.to_string(),
        noisy_ioengine: "—".into(),
        ..Info::default()
    };
    log(&format!(
        "{} · {} scenarios × {} repeat(s) × {} s · results in {}",
        info.fio_version,
        SCENARIOS.len(),
        info.repeats,
        info.runtime_s,
        out.display()
    ));
    let mut outcomes: Vec<Outcome> = SCENARIOS.iter().copied().map(Outcome::new).collect();
    let outcome = measure(a, &out, &mut info, &mut outcomes);
    if let Err(e) = &outcome {
        info.failures.push(e.clone());
    }
    info.duration_s = t0.elapsed().as_secs_f64();
    let w = |name: &str, text: String| {
        let p = out.join(name);
        fs::write(&p, text).map_err(|e| format!("write {}: {e}", p.display()))
    };
    let json = serde_json::to_string_pretty(&fair::to_json(&outcomes, &info))
        .map_err(|e| e.to_string())?;
    w("results.json", json + "\n")?;
    w("results.md", fair::markdown(&outcomes, &info))?;
    w("quiet-p99.svg", fair::chart(&outcomes, &info))?;
    println!(
        "\n{}\n{}",
        fair::table(&outcomes),
        fair::daemon_table(&outcomes)
    );
    println!(
        "results: {} ({:.0} s)",
        out.join("results.md").display(),
        info.duration_s
    );
    outcome?;
    Ok(outcomes.iter().all(|o| o.errors.is_empty()))
}

/// Set up, run every scenario `repeats` times (taking turns), tear down (the Daemon's Drop,
/// on every way out).
fn measure(a: &Args, out: &Path, info: &mut Info, outcomes: &mut [Outcome]) -> Res<()> {
    let mut d = Daemon::create(a, out.join("raw").join("strata.log"))?;
    d.mount(Policy::Fair)?;
    log(&format!(
        "mounted {} at {}",
        d.image.display(),
        d.mnt.display()
    ));
    d.layer(&["create", "base"])?;
    log("writing the 1 GiB file into the base layer");
    inputs::lay_out(&d.mnt.join("base").join("big"), QUIET_FILE_BYTES)?;
    d.layer(&["commit", "base"])?;
    d.layer(&["clone", "base", "quiet"])?;
    d.layer(&["clone", "base", "noisy"])?;
    log("writing the noisy container's 2 GiB file");
    let engine = lay_out_noisy(&d.mnt.join("noisy").join("big"), &out.join("raw"), "noisy")?;
    info.noisy_ioengine = engine.to_string();
    let host = host_dir(&d);
    fs::create_dir_all(&host).map_err(|e| format!("mkdir {}: {e}", host.display()))?;
    info.host_fs = mounts::fstype_of(&host).unwrap_or_default();
    log(&format!(
        "writing the host rows' files in {} ({})",
        host.display(),
        info.host_fs
    ));
    inputs::lay_out(&host.join("quiet"), QUIET_FILE_BYTES)?;
    lay_out_noisy(&host.join("noisy"), &out.join("raw"), "host-noisy")?;
    let ctx = Ctx {
        a,
        out,
        noisy_engine: engine,
    };
    for rep in 0..a.repeats() {
        for (sc, o) in SCENARIOS.iter().zip(outcomes.iter_mut()) {
            interrupt::check_interrupted()?;
            log(&format!("{} (run {}/{})", sc.label, rep + 1, a.repeats()));
            match run_scenario(&mut d, &ctx, sc, rep) {
                Ok(s) => {
                    log(&format!(
                        "  quiet {:.0} IOPS, p50 {:.0} µs, p99 {:.0} µs{}",
                        s.quiet.iops,
                        s.quiet.clat_p50_us.unwrap_or(f64::NAN),
                        s.quiet.clat_p99_us.unwrap_or(f64::NAN),
                        s.noisy_mib_s
                            .map(|n| format!("; noisy {n:.0} MiB/s"))
                            .unwrap_or_default()
                    ));
                    o.samples.push(s);
                }
                Err(e) => {
                    log(&format!("  failed: {e}"));
                    o.errors.push(e);
                    interrupt::check_interrupted()?;
                    // A dead daemon ends the run; a failed fio only this sample.
                    d.check_alive()?;
                }
            }
        }
    }
    log("tearing down");
    drop(d);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line() {
        Args::command().debug_assert();
        let a = Args::try_parse_from(["x"]).unwrap();
        assert_eq!((a.repeats(), a.runtime_s()), (3, 15));
        assert_eq!(a.dir, PathBuf::from("/var/tmp/strata-fair-bench"));
        let a = Args::try_parse_from(["x", "--quick"]).unwrap();
        assert_eq!((a.repeats(), a.runtime_s()), (1, 5));
        let a = Args::try_parse_from(["x", "--quick", "--repeats=2", "--runtime=7"]).unwrap();
        assert_eq!((a.repeats(), a.runtime_s()), (2, 7));
        assert!(Args::try_parse_from(["x", "--dir", "rel"]).is_err());
        assert!(Args::try_parse_from(["x", "--repeats=0"]).is_err());
    }
}
