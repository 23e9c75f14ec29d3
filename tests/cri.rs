//! Kubernetes' path without a kubelet: containerd 1.7's CRI plugin with `snapshotter =
//! "strata"` (and Strata's diff service first in containerd's list), driven through the CRI
//! gRPC API (runtime.v1) as the kubelet drives it: Version, RunPodSandbox with host
//! networking (the sandbox image imported locally: there is no network here),
//! CreateContainer, StartContainer, ExecSync, StopContainer, RemoveContainer,
//! StopPodSandbox, RemovePodSandbox, ImageStatus, RemoveImage, then containerd's garbage
//! collector removes the image's snapshots, and with them Strata's layers.
//!
//! The client is tonic code generated from a trimmed copy of the CRI proto
//! (tests/proto/cri.proto, vendored in tests/common/cri_pb) over the diff service's unix-socket
//! HTTP/2 channel; Debian has no crictl.

#![forbid(unsafe_code)]

mod common;

#[allow(clippy::all, clippy::pedantic, dead_code)]
mod cri {
    include!("common/cri_pb/runtime.v1.rs");
}

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use common::ctr_image::busybox_image_with_cmd;
use control::differ::content::UdsChannel;
use cri::image_service_client::ImageServiceClient;
use cri::runtime_service_client::RuntimeServiceClient;
use testkit::containerd::{Config, Containerd, Containerd17, Cri};
use testkit::{Mount, TestDir};

const PAUSE: &str = "registry.k8s.io/pause:strata-test";
const APP: &str = "docker.io/library/strata-app:1";

/// A blocking CRI client (one tokio runtime, a connection per call).
struct CriClient {
    rt: tokio::runtime::Runtime,
    sock: std::path::PathBuf,
}

impl CriClient {
    fn new(sock: &Path) -> CriClient {
        CriClient {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            sock: sock.to_path_buf(),
        }
    }

    fn runtime<T>(
        &self,
        f: impl AsyncFnOnce(
            RuntimeServiceClient<UdsChannel>,
        ) -> Result<tonic::Response<T>, tonic::Status>,
    ) -> Result<T, tonic::Status> {
        self.rt.block_on(async {
            let ch = UdsChannel::connect(&self.sock)
                .await
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            let c = RuntimeServiceClient::with_origin(ch, "http://containerd".parse().unwrap());
            f(c).await.map(tonic::Response::into_inner)
        })
    }

    fn image<T>(
        &self,
        f: impl AsyncFnOnce(ImageServiceClient<UdsChannel>) -> Result<tonic::Response<T>, tonic::Status>,
    ) -> Result<T, tonic::Status> {
        self.rt.block_on(async {
            let ch = UdsChannel::connect(&self.sock)
                .await
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            let c = ImageServiceClient::with_origin(ch, "http://containerd".parse().unwrap());
            f(c).await.map(tonic::Response::into_inner)
        })
    }

    fn exec(&self, id: &str, cmd: &[&str]) -> cri::ExecSyncResponse {
        let req = cri::ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: 30,
        };
        self.runtime(async |mut c| c.exec_sync(req).await)
            .unwrap_or_else(|e| panic!("ExecSync {cmd:?}: {e}"))
    }
}

fn host_network() -> cri::NamespaceOption {
    cri::NamespaceOption {
        network: cri::NamespaceMode::Node as i32,
        pid: cri::NamespaceMode::Container as i32,
        ipc: cri::NamespaceMode::Pod as i32,
        target_id: String::new(),
    }
}

#[test]
fn cri_runs_pods_on_strata() {
    let Some(bin) = testkit::containerd::or_skip(Containerd17::find()) else {
        return;
    };
    let t = TestDir::new("cri");
    let cdir = t.join("ctrd");
    let img = t.mkfs("8G");
    let m = Mount::start_with(
        &img,
        &t.mountpoint("mnt"),
        &[
            "--containerd-address",
            cdir.join("containerd.sock").to_str().unwrap(),
        ],
    );
    let mut c = Containerd::start(
        &bin,
        &cdir,
        &Config {
            snapshotter: Some(m.snapshotter_socket()),
            differ: Some(m.diff_socket()),
            cri: Some(Cri {
                snapshotter: "strata".into(),
                sandbox_image: PAUSE.into(),
            }),
            ..Default::default()
        },
    );
    // CRI's images live in containerd's k8s.io namespace: import them there, onto Strata.
    c.namespace = "k8s.io".into();
    let pause = t.join("pause.tar");
    fs::write(
        &pause,
        busybox_image_with_cmd(PAUSE, &["/bin/sleep", "2147483647"]),
    )
    .unwrap();
    let app = t.join("app.tar");
    fs::write(&app, busybox_image_with_cmd(APP, &["/bin/sh"])).unwrap();
    for f in [&pause, &app] {
        c.ok(&[
            "images",
            "import",
            "--snapshotter",
            "strata",
            f.to_str().unwrap(),
        ]);
    }
    let applied = m
        .stderr()
        .lines()
        .filter(|l| l.contains("diff service: applied"))
        .count();
    assert_eq!(
        applied,
        1,
        "one layer (both images share it): {}",
        m.stderr()
    );

    let cri = CriClient::new(&c.sock);
    let v = cri
        .runtime(async |mut c| {
            c.version(cri::VersionRequest {
                version: "v1".into(),
            })
            .await
        })
        .expect("CRI Version");
    assert_eq!(v.runtime_name, "containerd");
    assert_eq!(v.runtime_api_version, "v1");
    // The CRI plugin sees the imported image.
    let st = cri
        .image(async |mut c| {
            c.image_status(cri::ImageStatusRequest {
                image: Some(cri::ImageSpec {
                    image: APP.into(),
                    ..Default::default()
                }),
                verbose: false,
            })
            .await
        })
        .unwrap();
    assert!(st.image.is_some(), "CRI does not see {APP}");

    let logs = t.join("pod-logs");
    fs::create_dir_all(&logs).unwrap();
    let sandbox_config = cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: "pod1".into(),
            uid: "uid-pod1".into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        // With host networking the kubelet leaves the hostname to the host.
        hostname: String::new(),
        log_directory: logs.to_str().unwrap().into(),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: String::new(),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(host_network()),
                readonly_rootfs: false,
                privileged: false,
            }),
        }),
        ..Default::default()
    };
    let sc = sandbox_config.clone();
    let pod = cri
        .runtime(async |mut c| {
            c.run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(sc),
                runtime_handler: String::new(),
            })
            .await
        })
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", c.log()))
        .pod_sandbox_id;

    let sc = sandbox_config.clone();
    let pod2 = pod.clone();
    let ctr = cri
        .runtime(async |mut c| {
            c.create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod2,
                config: Some(cri::ContainerConfig {
                    metadata: Some(cri::ContainerMetadata {
                        name: "app".into(),
                        attempt: 0,
                    }),
                    image: Some(cri::ImageSpec {
                        image: APP.into(),
                        ..Default::default()
                    }),
                    command: vec![
                        "/bin/sh".into(),
                        "-c".into(),
                        "echo started > /tmp/started; exec sleep 100000".into(),
                    ],
                    log_path: "app.log".into(),
                    linux: Some(cri::LinuxContainerConfig {
                        security_context: Some(cri::LinuxContainerSecurityContext {
                            privileged: false,
                            namespace_options: Some(host_network()),
                            readonly_rootfs: false,
                        }),
                    }),
                    ..Default::default()
                }),
                sandbox_config: Some(sc),
            })
            .await
        })
        .unwrap_or_else(|e| panic!("CreateContainer: {e}\n{}", c.log()))
        .container_id;
    let id = ctr.clone();
    cri.runtime(async |mut c| {
        c.start_container(cri::StartContainerRequest { container_id: id })
            .await
    })
    .unwrap_or_else(|e| panic!("StartContainer: {e}\n{}", c.log()));
    let t0 = Instant::now();
    while cri.exec(&ctr, &["cat", "/tmp/started"]).exit_code != 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the container never started"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let r = cri.exec(
        &ctr,
        &[
            "sh",
            "-c",
            "cat /etc/hello; echo data > /tmp/x; cat /tmp/x; hostname",
        ],
    );
    assert_eq!(r.exit_code, 0, "{}", String::from_utf8_lossy(&r.stderr));
    let out = String::from_utf8_lossy(&r.stdout).into_owned();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(&lines[..2], &["hello", "data"], "{out}");
    // The container's root file system is an active Strata layer that owns what it wrote.
    let snaps = c.ok(&["snapshots", "--snapshotter", "strata", "ls"]);
    assert!(snaps.contains("Active"), "{snaps}");
    let during: Vec<String> = m.layers().into_keys().collect();
    assert!(
        during.len() >= 4,
        "base, image layer, sandbox, container: {during:?}"
    );

    // Tear down as the kubelet does.
    let id = ctr.clone();
    cri.runtime(async |mut c| {
        c.stop_container(cri::StopContainerRequest {
            container_id: id,
            timeout: 5,
        })
        .await
    })
    .unwrap();
    let id = ctr.clone();
    cri.runtime(async |mut c| {
        c.remove_container(cri::RemoveContainerRequest { container_id: id })
            .await
    })
    .unwrap();
    let p = pod.clone();
    cri.runtime(async |mut c| {
        c.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: p })
            .await
    })
    .unwrap();
    let p = pod.clone();
    cri.runtime(async |mut c| {
        c.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: p })
            .await
    })
    .unwrap();

    // Remove both images: containerd's garbage collector removes their snapshots, and Strata's
    // layers go with them.
    for image in [APP, PAUSE] {
        cri.image(async |mut c| {
            c.remove_image(cri::RemoveImageRequest {
                image: Some(cri::ImageSpec {
                    image: image.into(),
                    ..Default::default()
                }),
            })
            .await
        })
        .unwrap_or_else(|e| panic!("RemoveImage {image}: {e}"));
    }
    let t0 = Instant::now();
    loop {
        let left: Vec<String> = m
            .layers()
            .into_keys()
            .filter(|l| l.starts_with("snap-"))
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "containerd's GC left Strata layers {left:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    c.stop();
    drop(c);
    testkit::assert_no_panic("strata with CRI", &m.stderr());
    drop(m);
    testkit::assert_fsck_clean(&img, "after CRI");
}
