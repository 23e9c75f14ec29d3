//! The file systems under test, each set up in its own directory under `--dir` and torn down
//! by a Drop guard, whatever happened in between (an error, a panic, Ctrl-C).
//!
//! Every system has a *lower layer*, written once (the fio file and the image file the
//! memory-density readers share), and *containers* made from it, where the workloads run:
//!
//! | system | lower layer | a container |
//! |---|---|---|
//! | ext4 | `<base>/tree` | the same directory (no layers: the physical limit) |
//! | overlayfs | `<base>/lower` | `mount -t overlay` with its own upper and work dirs under `<base>/c/<name>` |
//! | fuse-overlayfs | `<base>/lower` | a `fuse-overlayfs` daemon per container, same layout |
//! | strata | layer `base`, committed once written | a layer cloned from it, `<mnt>/<name>` |

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use control::admin::{Client, CreateRequest};

use strata::StrataDaemon;

pub mod overlay;
mod strata;

use crate::Res;
use crate::{host, mounts, process};

/// Every system the harness knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum)]
pub enum SystemKind {
    /// A plain directory on the host's ext4 root file system: the baseline ratios refer to.
    Ext4,
    /// Kernel overlayfs over an ext4 lower directory (what Docker and containerd use).
    #[value(alias = "overlay")]
    Overlayfs,
    /// fuse-overlayfs over an ext4 lower directory (rootless containers, Podman).
    FuseOverlayfs,
    /// `strata mkfs` an image file next to the ext4 directory, `strata mount` it.
    Strata,
}

impl SystemKind {
    pub const ALL: [SystemKind; 4] = [
        SystemKind::Ext4,
        SystemKind::Overlayfs,
        SystemKind::FuseOverlayfs,
        SystemKind::Strata,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SystemKind::Ext4 => "ext4",
            SystemKind::Strata => "strata",
            SystemKind::Overlayfs => "overlayfs",
            SystemKind::FuseOverlayfs => "fuse-overlayfs",
        }
    }

    /// Whether containers are separate layers (everything but ext4).
    pub fn has_layers(self) -> bool {
        self != SystemKind::Ext4
    }
}

/// How to set a system up.
pub struct SetupOptions<'a> {
    /// Scratch directory on the host's ext4 (`--dir`).
    pub dir: &'a Path,
    pub strata_bin: &'a Path,
    pub image_size: &'a str,
    pub cache_size: Option<&'a str>,
    /// Where the daemons' stdout/stderr go.
    pub log_dir: &'a Path,
}

/// What a new container is made from.
#[derive(Debug, Clone, Copy)]
pub enum Parent<'a> {
    /// The system's own lower layer (the fio and image files); Strata's layer is committed
    /// first if it is not yet.
    Standard,
    /// Overlays: these lower directories, topmost first (all below the system's base dir).
    Dirs(&'a [PathBuf]),
    /// Strata: this committed layer.
    Layer(&'a str),
}

/// The Strata layer holding the lower files.
const STRATA_BASE_LAYER: &str = "base";

/// A live container.
struct Container {
    name: String,
    /// Where workloads run.
    path: PathBuf,
    /// Overlays: `<base>/c/<name>` holding `u` (upper), `w` (work) and `m` (merged, mounted);
    /// removed with the container.
    dir: Option<PathBuf>,
    /// fuse-overlayfs: its daemon, in the foreground, in its own process group.
    child: Option<Child>,
    /// Strata: the layer id.
    layer: Option<String>,
}

/// A system that is set up and ready for workloads. Dropping it unmounts every container,
/// stops the daemons and deletes everything it created.
pub struct System {
    pub kind: SystemKind,
    /// `<dir>/<name>`: everything this system created lives below it; removed on drop.
    base: PathBuf,
    /// Where the lower-layer files are written (before `freeze`).
    lower: PathBuf,
    daemon: Option<StrataDaemon>,
    containers: Vec<Container>,
    frozen: bool,
    log_dir: PathBuf,
    /// Set when the system stopped working (daemon died, a job hung): skip it from then on.
    pub failed: Option<String>,
}

impl System {
    pub fn setup(kind: SystemKind, opts: &SetupOptions) -> Res<System> {
        let base = opts.dir.join(kind.name());
        clean_stale(&base)?;
        fs::create_dir_all(&base).map_err(|e| format!("mkdir {}: {e}", base.display()))?;
        // From here on the guard owns `base`: an early return below still cleans up.
        let mut sys = System {
            kind,
            lower: base.clone(),
            base,
            daemon: None,
            containers: Vec::new(),
            frozen: false,
            log_dir: opts.log_dir.to_path_buf(),
            failed: None,
        };
        match kind {
            SystemKind::Ext4 => {
                sys.lower = sys.base.join("tree");
                mkdir(&sys.lower)?;
            }
            SystemKind::Overlayfs => {
                if !fs::read_to_string("/proc/filesystems")
                    .unwrap_or_default()
                    .contains("overlay")
                {
                    // Loading the module is the kernel's business: try once.
                    let _ = process::run_captured(
                        Command::new("modprobe").arg("overlay"),
                        Duration::from_secs(30),
                    );
                }
                sys.lower = sys.base.join("lower");
                mkdir(&sys.lower)?;
            }
            SystemKind::FuseOverlayfs => {
                overlay::fuse_overlayfs_version()?;
                sys.lower = sys.base.join("lower");
                mkdir(&sys.lower)?;
            }
            SystemKind::Strata => {
                let daemon = StrataDaemon::start(&sys.base, opts)?;
                let mnt = daemon.mnt.clone();
                let client = daemon.client();
                sys.daemon = Some(daemon);
                client
                    .create(&CreateRequest {
                        id: STRATA_BASE_LAYER.into(),
                        parent: None,
                        state: None,
                        labels: BTreeMap::new(),
                        limits: Default::default(),
                    })
                    .map_err(|e| format!("creating layer {STRATA_BASE_LAYER}: {e}"))?;
                sys.lower = mnt.join(STRATA_BASE_LAYER);
                // A new layer's directory shows in the mount root at once, or nearly.
                let lower = sys.lower.clone();
                process::wait_for(
                    &format!("{}", lower.display()),
                    Duration::from_secs(10),
                    Duration::from_millis(20),
                    || lower.is_dir(),
                )?;
            }
        }
        Ok(sys)
    }

    pub fn name(&self) -> &'static str {
        self.kind.name()
    }

    /// Where the lower-layer files go. Write them before the first container.
    pub fn lower(&self) -> &Path {
        &self.lower
    }

    /// The system's own scratch directory on ext4 (for extra lower directories).
    pub fn base(&self) -> &Path {
        &self.base
    }

    /// Strata's admin API client.
    pub fn strata_client(&self) -> Option<Client> {
        self.daemon.as_ref().map(StrataDaemon::client)
    }

    /// Strata's mount point.
    pub fn strata_mnt(&self) -> Option<&Path> {
        self.daemon.as_ref().map(|d| d.mnt.as_path())
    }

    /// No more writes to the lower layer: Strata commits its base layer (a layer with
    /// children must be committed). The overlays' lower dirs stay plain directories.
    pub fn freeze(&mut self) -> Res<()> {
        if self.frozen {
            return Ok(());
        }
        if let Some(d) = &self.daemon {
            d.client()
                .commit(STRATA_BASE_LAYER)
                .map_err(|e| format!("committing layer {STRATA_BASE_LAYER}: {e}"))?;
        }
        self.frozen = true;
        Ok(())
    }

    /// Make a container `name` over `parent`. Returns where workloads run and how long
    /// making it took (the clone: mkdir + mount for the overlays, the admin API's clone
    /// request for Strata; zero for ext4, which has no layers).
    pub fn container(&mut self, name: &str, parent: Parent) -> Res<(PathBuf, Duration)> {
        self.check_alive()?;
        if self.containers.iter().any(|c| c.name == name) {
            return Err(format!("container {name} exists already"));
        }
        match self.kind {
            SystemKind::Ext4 => match parent {
                Parent::Standard => Ok((self.lower.clone(), Duration::ZERO)),
                _ => Err("ext4 has no layers".into()),
            },
            SystemKind::Overlayfs | SystemKind::FuseOverlayfs => {
                let standard = [self.lower.clone()];
                let dirs: &[PathBuf] = match parent {
                    Parent::Standard => &standard,
                    Parent::Dirs(d) => d,
                    Parent::Layer(_) => return Err("overlays take directories".into()),
                };
                let cdir = self.base.join("c").join(name);
                if cdir.exists() {
                    fs::remove_dir_all(&cdir)
                        .map_err(|e| format!("cannot remove {}: {e}", cdir.display()))?;
                }
                mkdir(&cdir)?;
                let merged = cdir.join("m");
                let mut c = Container {
                    name: name.to_string(),
                    path: merged.clone(),
                    dir: Some(cdir.clone()),
                    child: None,
                    layer: None,
                };
                let t = Instant::now();
                // cdir itself is made before the clock starts: it stands for the snapshotter's
                // own directory of the container.
                for d in ["u", "w", "m"] {
                    fs::create_dir(cdir.join(d))
                        .map_err(|e| format!("mkdir {}: {e}", cdir.join(d).display()))?;
                }
                let opts = overlay::overlay_options(&self.base, dirs, &cdir);
                let r = if self.kind == SystemKind::Overlayfs {
                    overlay::mount_overlay(&self.base, &opts, &merged)
                } else {
                    match overlay::spawn_fuse_overlayfs(&self.base, &opts, &merged, &self.log_dir) {
                        Ok(child) => {
                            c.child = Some(child);
                            overlay::wait_fuse_overlayfs(&mut c, &self.log_dir)
                        }
                        Err(e) => Err(e),
                    }
                };
                let took = t.elapsed();
                // Registered even on failure, so that the teardown sees whatever is left.
                self.containers.push(c);
                if let Err(e) = r {
                    let _ = self.drop_container(name);
                    return Err(e);
                }
                Ok((merged, took))
            }
            SystemKind::Strata => {
                let parent = match parent {
                    Parent::Standard => {
                        self.freeze()?;
                        STRATA_BASE_LAYER
                    }
                    Parent::Layer(l) => l,
                    Parent::Dirs(_) => return Err("Strata clones layers".into()),
                };
                let d = self.daemon.as_ref().expect("strata has a daemon");
                let client = d.client();
                let req = CreateRequest {
                    id: name.to_string(),
                    parent: Some(parent.to_string()),
                    state: None,
                    labels: BTreeMap::new(),
                    limits: Default::default(),
                };
                let t = Instant::now();
                client
                    .create(&req)
                    .map_err(|e| format!("cloning layer {parent} as {name}: {e}"))?;
                let took = t.elapsed();
                let path = d.mnt.join(name);
                self.containers.push(Container {
                    name: name.to_string(),
                    path: path.clone(),
                    dir: None,
                    child: None,
                    layer: Some(name.to_string()),
                });
                Ok((path, took))
            }
        }
    }

    /// Unmount and delete a container (Strata: remove its layer).
    pub fn drop_container(&mut self, name: &str) -> Res<()> {
        let Some(i) = self.containers.iter().position(|c| c.name == name) else {
            return Ok(());
        };
        let mut c = self.containers.remove(i);
        let client = self.strata_client();
        match teardown_container(&mut c, client.as_ref(), &self.log_dir) {
            Ok(()) => Ok(()),
            Err(e) => {
                // Keep it for the final teardown to try again.
                self.containers.push(c);
                Err(e)
            }
        }
    }

    /// The processes serving this system (Strata's daemon, one fuse-overlayfs per container):
    /// their memory counts towards the system's.
    pub fn daemon_pids(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.daemon.iter().map(|d| d.child.id()).collect();
        v.extend(
            self.containers
                .iter()
                .filter_map(|c| c.child.as_ref().map(Child::id)),
        );
        v
    }

    /// Err when the system can no longer be used (its daemon exited or the mount vanished).
    pub fn check_alive(&mut self) -> Res<()> {
        if let Some(why) = &self.failed {
            return Err(why.clone());
        }
        if let Some(d) = &mut self.daemon {
            if let Err(e) = d.check_alive() {
                self.failed = Some(e.clone());
                return Err(e);
            }
        }
        for c in &mut self.containers {
            if let Some(ch) = &mut c.child {
                if let Ok(Some(st)) = ch.try_wait() {
                    let e = format!(
                        "fuse-overlayfs of container {} exited ({st}); last lines of {}:\n{}",
                        c.name,
                        self.log_dir.join("fuse-overlayfs.log").display(),
                        host::tail(&self.log_dir.join("fuse-overlayfs.log"), 10)
                    );
                    self.failed = Some(e.clone());
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Before each job: drop the kernel's caches and, with `remount`, restart a FUSE daemon
    /// that keeps a cache of its own (Strata's block cache: drop_caches cannot reach it).
    /// fuse-overlayfs caches nothing itself (its data sits in the page cache).
    pub fn drop_caches(&mut self, remount: bool) -> Res<()> {
        if let (true, Some(d)) = (remount, &mut self.daemon) {
            if let Err(e) = d.remount() {
                let e = format!("remounting: {e}");
                self.mark_failed(&e);
                return Err(e);
            }
        }
        host::drop_caches()
    }

    pub fn mark_failed(&mut self, why: &str) {
        if self.failed.is_none() {
            self.failed = Some(why.to_string());
        }
    }
}

impl Drop for System {
    fn drop(&mut self) {
        let client = self.strata_client();
        while let Some(mut c) = self.containers.pop() {
            if let Err(e) = teardown_container(&mut c, client.as_ref(), &self.log_dir) {
                eprintln!("strata-bench: {e}");
            }
        }
        if let Some(mut d) = self.daemon.take() {
            d.teardown();
        }
        let left = mounts::mounts_below(&self.base);
        if !left.is_empty() {
            eprintln!(
                "strata-bench: WARNING: {} still mounted; leaving {} in place",
                left.iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                self.base.display()
            );
            return;
        }
        if let Err(e) = fs::remove_dir_all(&self.base) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!(
                    "strata-bench: WARNING: cannot remove {}: {e}",
                    self.base.display()
                );
            }
        }
    }
}

fn mkdir(p: &Path) -> Res<()> {
    fs::create_dir_all(p).map_err(|e| format!("mkdir {}: {e}", p.display()))
}

/// Unmount a container, stop its daemon, delete its directories (Strata: remove its layer).
/// Must finish after Ctrl-C: nothing here watches the interrupt flag.
fn teardown_container(c: &mut Container, client: Option<&Client>, log_dir: &Path) -> Res<()> {
    if let Some(layer) = &c.layer {
        if let Some(client) = client {
            client
                .remove(layer)
                .map_err(|e| format!("removing layer {layer}: {e}"))?;
        }
        return Ok(());
    }
    if mounts::is_mounted(&c.path) {
        mounts::unmount(&c.path);
    }
    if let Some(child) = &mut c.child {
        let st = process::wait_until(child, Instant::now() + Duration::from_secs(10), false)
            .or_else(|| process::stop_child(child, libc::SIGTERM, Duration::from_secs(5)));
        if st.is_none() {
            eprintln!(
                "strata-bench: WARNING: fuse-overlayfs (pid {}) would not die",
                child.id()
            );
        }
        if let Some(m) = mounts::find_mount(&c.path) {
            mounts::abort_fuse_connection(&m.dev);
            mounts::unmount(&c.path);
        }
    }
    if mounts::is_mounted(&c.path) {
        return Err(format!(
            "{} is still mounted (log: {})",
            c.path.display(),
            log_dir.display()
        ));
    }
    if let Some(dir) = &c.dir {
        if let Err(e) = fs::remove_dir_all(dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(format!("cannot remove {}: {e}", dir.display()));
            }
        }
    }
    Ok(())
}

/// Remove what an earlier, killed run may have left in `base`, unmounting everything below
/// it first (FUSE mounts whose daemon died are aborted). Refuses to delete anything below a
/// mount point that will not go away.
pub fn clean_stale(base: &Path) -> Res<()> {
    if !base.exists() {
        return Ok(());
    }
    for m in mounts::mounts_below(base) {
        eprintln!("strata-bench: unmounting a stale mount at {}", m.display());
        if let Some(e) = mounts::find_mount(&m) {
            if e.fstype.starts_with("fuse") {
                let _ =
                    process::run_to_end(Command::new("umount").arg(&m), Duration::from_secs(30));
                if mounts::is_mounted(&m) {
                    mounts::abort_fuse_connection(&e.dev);
                }
            }
        }
        mounts::unmount(&m);
    }
    let left = mounts::mounts_below(base);
    if !left.is_empty() {
        return Err(format!(
            "{} mounted and will not unmount; clean up by hand",
            left.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    fs::remove_dir_all(base).map_err(|e| format!("cannot remove stale {}: {e}", base.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for k in [
            SystemKind::Ext4,
            SystemKind::Strata,
            SystemKind::Overlayfs,
            SystemKind::FuseOverlayfs,
        ] {
            let v = clap::ValueEnum::to_possible_value(&k).unwrap();
            assert_eq!(v.get_name(), k.name());
        }
        assert!(!SystemKind::Ext4.has_layers() && SystemKind::Strata.has_layers());
    }

    /// Everything under `dir`; no strata binary.
    fn test_options(dir: &Path) -> SetupOptions<'_> {
        SetupOptions {
            dir,
            strata_bin: Path::new("/nonexistent"),
            image_size: "1G",
            cache_size: None,
            log_dir: dir,
        }
    }

    #[test]
    fn ext4_setup_and_teardown() {
        let dir = std::env::temp_dir().join(format!("strata-bench-test-{}", std::process::id()));
        let opts = test_options(&dir);
        let base;
        {
            let mut sys = System::setup(SystemKind::Ext4, &opts).unwrap();
            let (p, _) = sys.container("c1", Parent::Standard).unwrap();
            assert_eq!(p, sys.lower());
            assert!(sys.container("c2", Parent::Layer("x")).is_err());
            base = sys.base.clone();
            fs::write(sys.lower().join("f"), b"x").unwrap();
            assert!(sys.lower().starts_with(&dir));
        }
        assert!(!base.exists(), "the guard removes its directory");
        assert!(
            System::setup(SystemKind::Strata, &opts).is_err(),
            "missing binary is an error"
        );
        assert!(!dir.join("strata").exists(), "a failed setup cleans up too");
        let _ = fs::remove_dir_all(&dir);
    }

    /// Overlay containers see the lower layer, write to their own upper dir, and everything
    /// is unmounted and deleted by the guard. Needs root (and fuse-overlayfs for that half).
    #[test]
    fn overlay_containers() {
        if !host::is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let dir = std::env::temp_dir().join(format!("strata-bench-ovl-{}", std::process::id()));
        let opts = test_options(&dir);
        fs::create_dir_all(&dir).unwrap();
        for kind in [SystemKind::Overlayfs, SystemKind::FuseOverlayfs] {
            let mut sys = match System::setup(kind, &opts) {
                Ok(s) => s,
                Err(e) if kind == SystemKind::FuseOverlayfs => {
                    eprintln!("skipped fuse-overlayfs: {e}");
                    continue;
                }
                Err(e) => panic!("{e}"),
            };
            let base = sys.base.clone();
            fs::write(sys.lower().join("f"), b"lower").unwrap();
            let (a, _) = sys.container("a", Parent::Standard).unwrap();
            let (b, _) = sys.container("b", Parent::Standard).unwrap();
            assert_eq!(fs::read(a.join("f")).unwrap(), b"lower");
            fs::write(a.join("f"), b"changed in a").unwrap();
            assert_eq!(fs::read(b.join("f")).unwrap(), b"lower", "{kind:?}");
            assert_eq!(fs::read(sys.lower().join("f")).unwrap(), b"lower");
            if kind == SystemKind::FuseOverlayfs {
                assert_eq!(sys.daemon_pids().len(), 2);
            }
            // Two lower dirs, topmost first.
            let l2 = base.join("l2");
            fs::create_dir_all(&l2).unwrap();
            fs::write(l2.join("g"), b"top").unwrap();
            let lowers = [l2.clone(), sys.lower().to_path_buf()];
            let (c, _) = sys.container("c", Parent::Dirs(&lowers)).unwrap();
            assert_eq!(fs::read(c.join("g")).unwrap(), b"top");
            assert_eq!(fs::read(c.join("f")).unwrap(), b"lower");
            sys.drop_container("a").unwrap();
            assert!(!mounts::is_mounted(&a));
            drop(sys);
            assert!(!mounts::is_mounted(&b) && !mounts::is_mounted(&c));
            assert!(!base.exists(), "{kind:?}: the guard removes its directory");
        }
        let _ = fs::remove_dir_all(&dir);
    }
}
