//! A private containerd for tests and the containerd benchmark: its own config, root, state
//! and socket under a test directory (never the host's), Strata registered as a proxy
//! snapshotter (`strata`) and, on containerd ≥ 1.7, as a proxy diff service (`strata-diff`,
//! first in the diff service's list), the CRI plugin on or off. Dropping it stops containerd,
//! the shims it started and unmounts what it left below its directory.
//!
//! Which containerd: [`Containerd17`] is Debian 13's `containerd` (1.7, installed by
//! scripts/test from the trixie suite), [`Containerd16`] is Debian 12's 1.6.20, which
//! scripts/test unpacks from its .deb into [`CONTAINERD16_DIR`] (both cannot be installed as
//! packages at once). Each `find` says why it is not there, for the test's SKIP line.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::process::{on_path, run_with_timeout};

/// Where scripts/test unpacks Debian 12's containerd 1.6 (`usr/bin/containerd`, `ctr`, shims).
pub const CONTAINERD16_DIR: &str = "/opt/strata-test/containerd-1.6.20";

/// A containerd installation: the directory of `containerd`, `ctr` and the runc shim.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub dir: PathBuf,
    /// `1.6.20~ds1`, ...
    pub version: String,
}

impl Binaries {
    pub fn containerd(&self) -> PathBuf {
        self.dir.join("containerd")
    }
    pub fn ctr(&self) -> PathBuf {
        self.dir.join("ctr")
    }
    /// Whether containerd can use a proxy diff service (≥ 1.7).
    pub fn has_diff_proxy(&self) -> bool {
        !self.version.starts_with("1.6") && !self.version.starts_with("1.5")
    }

    fn at(dir: &Path) -> Result<Binaries, String> {
        let c = dir.join("containerd");
        if !c.is_file() {
            return Err(format!("{} is not there", c.display()));
        }
        for b in ["ctr", "containerd-shim-runc-v2"] {
            if !dir.join(b).is_file() {
                return Err(format!("{} is not there", dir.join(b).display()));
            }
        }
        let out = run_with_timeout(Command::new(&c).arg("--version"), Duration::from_secs(30));
        // "containerd github.com/containerd/containerd 1.7.24~ds1 1.7.24~ds1-6+deb13u1"
        let version = out
            .stdout
            .split_whitespace()
            .nth(2)
            .ok_or_else(|| format!("{} --version: {}", c.display(), out.stdout))?
            .to_string();
        Ok(Binaries {
            dir: dir.to_path_buf(),
            version,
        })
    }
}

fn common_reason() -> Option<String> {
    if let Some(r) = crate::skip_reason() {
        return Some(r);
    }
    if on_path("runc").is_none() {
        return Some("runc is not installed (apt-get install runc)".into());
    }
    if !Path::new("/bin/busybox").exists() {
        return Some("/bin/busybox is missing (apt-get install busybox-static)".into());
    }
    None
}

/// Debian 13's containerd 1.7 (or newer), from PATH.
pub struct Containerd17;

impl Containerd17 {
    pub fn find() -> Result<Binaries, String> {
        if let Some(r) = common_reason() {
            return Err(r);
        }
        let c = on_path("containerd")
            .ok_or("containerd is not installed (scripts/test installs containerd/trixie, 1.7)")?;
        let b = Binaries::at(c.parent().unwrap())?;
        if !b.has_diff_proxy() {
            return Err(format!(
                "containerd {} is older than 1.7 (scripts/test installs containerd/trixie)",
                b.version
            ));
        }
        Ok(b)
    }
}

/// Debian 12's containerd 1.6: unpacked in [`CONTAINERD16_DIR`], else from PATH if that one
/// is 1.6.
pub struct Containerd16;

impl Containerd16 {
    pub fn find() -> Result<Binaries, String> {
        if let Some(r) = common_reason() {
            return Err(r);
        }
        let dir = std::env::var_os("STRATA_CONTAINERD16_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(CONTAINERD16_DIR));
        if let Ok(b) = Binaries::at(&dir.join("usr/bin")) {
            return Ok(b);
        }
        if let Some(c) = on_path("containerd") {
            if let Ok(b) = Binaries::at(c.parent().unwrap()) {
                if b.version.starts_with("1.6") {
                    return Ok(b);
                }
            }
        }
        Err(format!(
            "containerd 1.6 is neither in {}/usr/bin nor on PATH (scripts/test unpacks Debian 12's containerd .deb there)",
            dir.display()
        ))
    }
}

/// The binaries `find` gave (their version printed), or None after printing why the test
/// skips: `let Some(bin) = or_skip(Containerd17::find()) else { return };`.
pub fn or_skip(found: Result<Binaries, String>) -> Option<Binaries> {
    match found {
        Ok(b) => {
            eprintln!("containerd {}", b.version);
            Some(b)
        }
        Err(why) => {
            eprintln!("SKIP: {why}");
            None
        }
    }
}

/// What the private containerd is configured with.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// Strata's snapshotter socket (`[proxy_plugins.strata]`).
    pub snapshotter: Option<PathBuf>,
    /// Strata's diff service socket (`[proxy_plugins.strata-diff]`, first differ).
    pub differ: Option<PathBuf>,
    /// Keep the CRI plugin, with this snapshotter (and sandbox image).
    pub cri: Option<Cri>,
    /// Extra TOML appended to the config.
    pub extra: String,
}

#[derive(Clone, Debug)]
pub struct Cri {
    pub snapshotter: String,
    pub sandbox_image: String,
}

/// A running private containerd.
pub struct Containerd {
    child: Option<Child>,
    pub dir: PathBuf,
    pub sock: PathBuf,
    pub bin: Binaries,
    pub namespace: String,
}

impl Containerd {
    fn write_config(dir: &Path, cfg: &Config) -> PathBuf {
        let path = dir.join("config.toml");
        let d = dir.display();
        let mut disabled = vec![
            "io.containerd.snapshotter.v1.aufs",
            "io.containerd.snapshotter.v1.btrfs",
            "io.containerd.snapshotter.v1.zfs",
            "io.containerd.snapshotter.v1.devmapper",
        ];
        if cfg.cri.is_none() {
            disabled.push("io.containerd.grpc.v1.cri");
        }
        let mut s = format!(
            "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\ndisabled_plugins = [{}]\n\
             [grpc]\n  address = \"{d}/containerd.sock\"\n[ttrpc]\n  address = \"{d}/containerd.sock.ttrpc\"\n",
            disabled
                .iter()
                .map(|p| format!("\"{p}\""))
                .collect::<Vec<_>>()
                .join(", ")
        );
        s.push_str("[proxy_plugins]\n");
        if let Some(sn) = &cfg.snapshotter {
            s.push_str(&format!(
                "  [proxy_plugins.strata]\n    type = \"snapshot\"\n    address = \"{}\"\n",
                sn.display()
            ));
        }
        if let Some(df) = &cfg.differ {
            s.push_str(&format!(
                "  [proxy_plugins.strata-diff]\n    type = \"diff\"\n    address = \"{}\"\n\
                 [plugins.\"io.containerd.service.v1.diff-service\"]\n  default = [\"strata-diff\", \"walking\"]\n",
                df.display()
            ));
        }
        // restrict_oom_score_adj: the CRI gives sandboxes an OOM score of -998, which needs
        // CAP_SYS_RESOURCE; test machines (and CI's) may run without it.
        if let Some(cri) = &cfg.cri {
            s.push_str(&format!(
                "[plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"{}\"\n  disable_apparmor = true\n  \
                 restrict_oom_score_adj = true\n  \
                 [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n    snapshotter = \"{}\"\n    \
                 default_runtime_name = \"runc\"\n    \
                 [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n      runtime_type = \"io.containerd.runc.v2\"\n  \
                 [plugins.\"io.containerd.grpc.v1.cri\".cni]\n    bin_dir = \"{d}/cni-bin\"\n    conf_dir = \"{d}/cni-conf\"\n",
                cri.sandbox_image, cri.snapshotter
            ));
        }
        s.push_str(&cfg.extra);
        fs::write(&path, s).unwrap();
        path
    }

    /// Start containerd `bin` with its files under `dir` and wait until it answers.
    pub fn start(bin: &Binaries, dir: &Path, cfg: &Config) -> Containerd {
        fs::create_dir_all(dir).unwrap();
        let path = Self::write_config(dir, cfg);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("containerd.log"))
            .unwrap();
        // The shims are found on PATH: this installation's first.
        let env_path = format!(
            "{}:{}",
            bin.dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let child = Command::new(bin.containerd())
            .arg("--config")
            .arg(&path)
            .env("PATH", env_path)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn containerd");
        let mut c = Containerd {
            child: Some(child),
            dir: dir.to_path_buf(),
            sock: dir.join("containerd.sock"),
            bin: bin.clone(),
            namespace: "strata-test".into(),
        };
        let t = Instant::now();
        loop {
            let ok = Command::new(bin.ctr())
                .arg("-a")
                .arg(&c.sock)
                .arg("version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return c;
            }
            if let Some(st) = c.child.as_mut().and_then(|ch| ch.try_wait().ok().flatten()) {
                panic!("containerd exited ({st}); log:\n{}", c.log());
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "containerd did not come up; log:\n{}",
                c.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// `ctr images import --snapshotter SNAPSHOTTER ARCHIVE`, which must succeed; its output.
    pub fn import(&self, snapshotter: &str, archive: &Path) -> String {
        self.ok(&[
            "images",
            "import",
            "--snapshotter",
            snapshotter,
            archive.to_str().expect("archive path is UTF-8"),
        ])
    }

    /// Run `ctr` against this containerd in its namespace; (success, stdout, stderr).
    pub fn ctr(&self, args: &[&str]) -> (bool, String, String) {
        let out = run_with_timeout(
            Command::new(self.bin.ctr())
                .arg("-a")
                .arg(&self.sock)
                .arg("-n")
                .arg(&self.namespace)
                .args(args),
            Duration::from_secs(300),
        );
        (out.code == 0, out.stdout, out.stderr)
    }

    /// `ctr ARGS`, asserting success; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.ctr(args);
        assert!(
            ok,
            "ctr {args:?} failed:\n{err}\n--- containerd log (tail):\n{}",
            {
                let l = self.log();
                let lines: Vec<&str> = l.lines().collect();
                lines[lines.len().saturating_sub(30)..].join("\n")
            }
        );
        out
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Stop containerd (SIGTERM, SIGKILL after 20 s), the shims it started, and unmount what
    /// it left below its directory.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = crate::sys::kill(c.id(), libc::SIGTERM);
            let t = Instant::now();
            while c.try_wait().ok().flatten().is_none() {
                if t.elapsed() > Duration::from_secs(20) {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        // Shims of this containerd (by the socket path only this containerd has).
        for pid in pids_with_arg("containerd-shim", &self.sock.display().to_string()) {
            let _ = crate::sys::kill(pid, libc::SIGKILL);
        }
        for m in crate::mounts_below(&self.dir).into_iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(&m).status();
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Processes whose program name contains `program` and whose command line has `arg` as one
/// of its arguments (from /proc).
pub fn pids_with_arg(program: &str, arg: &str) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        let Ok(cmd) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let mut args = cmd.split(|b| *b == 0);
        let prog = args.next().unwrap_or_default();
        if !String::from_utf8_lossy(prog).contains(program) {
            continue;
        }
        if args.any(|a| a == arg.as_bytes()) {
            out.push(pid);
        }
    }
    out
}
