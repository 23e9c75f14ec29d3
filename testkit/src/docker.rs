//! A private Docker daemon for tests and the containerd benchmark: Debian 13's `dockerd` 26
//! with the containerd image store (`"features": {"containerd-snapshotter": true}`), on a
//! containerd the test started ([`crate::containerd::Containerd`]), with a storage driver
//! that is a containerd snapshotter (`strata` or `overlayfs`). Everything it owns is under the
//! test directory: data root, exec root, pid file, socket, the CLI's config directory; its own
//! containerd namespace; no bridge and no iptables rules (containers and builds run with
//! `--network none`). Dropping it stops dockerd (SIGTERM, SIGKILL after 30 s).
//!
//! The CLI is Debian's `/usr/bin/docker` (26, with the buildx plugin from `docker-buildx`),
//! not whatever else is first on PATH.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::process::{on_path, run_with_timeout, Output};

/// Debian's docker CLI.
pub const DOCKER_CLI: &str = "/usr/bin/docker";
const BUILDX: &str = "/usr/libexec/docker/cli-plugins/docker-buildx";

/// Why Docker cannot run here, if it cannot.
pub fn skip_reason() -> Option<String> {
    if let Err(r) = crate::containerd::Containerd17::find() {
        return Some(r);
    }
    let Some(d) = on_path("dockerd") else {
        return Some("dockerd is not installed (scripts/test installs docker.io/trixie)".into());
    };
    let out = run_with_timeout(Command::new(&d).arg("--version"), Duration::from_secs(30));
    // "Docker version 26.1.5+dfsg1, build 411e817"
    let major: u32 = out
        .stdout
        .split_whitespace()
        .nth(2)
        .and_then(|v| v.split('.').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if major < 25 {
        return Some(format!(
            "dockerd is {} (the containerd image store needs 25 or newer; scripts/test installs docker.io/trixie)",
            out.stdout.trim()
        ));
    }
    if !Path::new(DOCKER_CLI).is_file() {
        return Some(format!("{DOCKER_CLI} is missing (docker-cli/trixie)"));
    }
    if !Path::new(BUILDX).is_file() {
        return Some(format!("{BUILDX} is missing (docker-buildx/trixie)"));
    }
    None
}

pub struct Dockerd {
    child: Option<Child>,
    pub dir: PathBuf,
    pub sock: PathBuf,
    pub snapshotter: String,
}

impl Dockerd {
    /// Start dockerd with its files in `dir`, on the containerd at `containerd`, storing
    /// images and containers in containerd snapshotter `snapshotter`.
    pub fn start(dir: &Path, containerd: &Path, snapshotter: &str) -> Dockerd {
        fs::create_dir_all(dir.join("cli")).unwrap();
        let cfg = dir.join("daemon.json");
        fs::write(
            &cfg,
            format!(
                r#"{{"features":{{"containerd-snapshotter":true}},"storage-driver":"{snapshotter}"}}"#
            ),
        )
        .unwrap();
        let sock = dir.join("docker.sock");
        let log = fs::File::create(dir.join("dockerd.log")).unwrap();
        let ns = format!("moby-{snapshotter}");
        let child = Command::new("dockerd")
            .arg("--config-file")
            .arg(&cfg)
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("docker.pid"))
            .arg("-H")
            .arg(format!("unix://{}", sock.display()))
            .arg("--containerd")
            .arg(containerd)
            .args(["--containerd-namespace", &ns])
            .args(["--containerd-plugins-namespace", &format!("{ns}-plugins")])
            .args(["--bridge", "none", "--iptables=false", "--ip6tables=false"])
            .args(["--ip-forward=false", "--ip-masq=false"])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn dockerd");
        let mut d = Dockerd {
            child: Some(child),
            dir: dir.to_path_buf(),
            sock,
            snapshotter: snapshotter.to_string(),
        };
        let t = Instant::now();
        loop {
            if d.docker(&["version"]).code == 0 {
                break;
            }
            if let Some(st) = d.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("dockerd exited ({st}); log:\n{}", d.log());
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "dockerd did not come up; log:\n{}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let info = d.ok(&["info", "--format", "{{.Driver}}"]);
        assert_eq!(
            info.trim(),
            snapshotter,
            "dockerd's storage driver; log:\n{}",
            d.log()
        );
        d
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }

    /// The docker CLI against this daemon.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(DOCKER_CLI);
        c.env("DOCKER_CONFIG", self.dir.join("cli"))
            .env("DOCKER_BUILDKIT", "1")
            .env_remove("DOCKER_HOST")
            .arg("-H")
            .arg(format!("unix://{}", self.sock.display()));
        c
    }

    /// `docker ARGS` (10 minutes at most).
    pub fn docker(&self, args: &[&str]) -> Output {
        run_with_timeout(self.cmd().args(args), Duration::from_secs(600))
    }

    /// `docker ARGS`, asserting success; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert_eq!(
            out.code,
            0,
            "docker {args:?} ({}) failed:\nstdout: {}\nstderr: {}\n--- dockerd log (tail):\n{}",
            self.snapshotter,
            out.stdout,
            out.stderr,
            {
                let l = self.log();
                let lines: Vec<&str> = l.lines().collect();
                lines[lines.len().saturating_sub(30)..].join("\n")
            }
        );
        out.stdout
    }

    /// Stop dockerd: SIGTERM, SIGKILL after 30 s; unmount what it left below its directory.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = crate::sys::kill(c.id(), libc::SIGTERM);
            let t = Instant::now();
            while c.try_wait().ok().flatten().is_none() {
                if t.elapsed() > Duration::from_secs(30) {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        for m in crate::mounts_below(&self.dir).into_iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(&m).status();
        }
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        self.stop();
    }
}
