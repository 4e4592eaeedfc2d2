//! A small blocking client of the CRI (v1) over containerd's socket: the calls kubelet makes, for
//! tests that play kubelet. Each call runs on the client's own current-thread tokio runtime with a
//! deadline, so a test never hangs on a wedged containerd; errors are the `tonic::Status`.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use containerd_snapshots::tonic::{self, transport::Channel, Status};

pub use cri::ContainerState;

pub struct Cri {
    rt: tokio::runtime::Runtime,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    timeout: Duration,
}

pub type Result<T> = std::result::Result<T, Status>;

/// A host-network pod (no CNI needed): network, pid and ipc namespaces as kubelet asks for
/// `hostNetwork: true` with the others private to the pod.
pub fn pod_config(name: &str, log_dir: &Path) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata { name: name.into(), uid: format!("uid-{name}"), namespace: "rcx".into(), attempt: 0 }),
        hostname: String::new(),
        log_directory: log_dir.display().to_string(),
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(host_network()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Host network; pid and ipc namespaces private to the pod (kubelet's `hostNetwork: true`).
fn host_network() -> cri::NamespaceOption {
    cri::NamespaceOption {
        network: cri::NamespaceMode::Node as i32,
        pid: cri::NamespaceMode::Pod as i32,
        ipc: cri::NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// A container of `image` running `command`, logging to `log_path` (relative to the pod's log
/// directory, as kubelet sets it: `NAME/0.log`).
pub fn container_config(name: &str, image: &str, command: &[&str], log_path: &str) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata { name: name.into(), attempt: 0 }),
        image: Some(cri::ImageSpec { image: image.into(), annotations: HashMap::new() }),
        command: command.iter().map(|s| s.to_string()).collect(),
        log_path: log_path.into(),
        linux: Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                namespace_options: Some(host_network()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

impl Cri {
    /// Connect to the CRI on containerd's socket `socket`, retrying up to `secs` seconds.
    pub fn connect_within(socket: &Path, secs: u64) -> std::result::Result<Cri, String> {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        loop {
            match Cri::connect(socket) {
                Ok(c) => return Ok(c),
                Err(e) if std::time::Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    fn connect(socket: &Path) -> std::result::Result<Cri, String> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| format!("tokio runtime: {e}"))?;
        let path = socket.to_path_buf();
        let channel = rt
            .block_on(async {
                // The URI is a placeholder: the connector dials the unix socket.
                let endpoint = tonic::transport::Endpoint::try_from("http://[::]:50051").map_err(|e| e.to_string())?;
                let connect = endpoint
                    .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| tokio::net::UnixStream::connect(path.clone())));
                match tokio::time::timeout(Duration::from_secs(30), connect).await {
                    Ok(r) => r.map_err(|e| format!("{e:?}")),
                    Err(_) => Err("timed out after 30 s".to_string()),
                }
            })
            .map_err(|e| format!("connecting to {}: {e}", socket.display()))?;
        let mut c = Cri {
            rt,
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
            timeout: Duration::from_secs(300),
        };
        // The socket answers before the CRI service is registered: Version is the readiness.
        c.version().map_err(|e| format!("CRI Version on {}: {e}", socket.display()))?;
        Ok(c)
    }

    fn call<T, F>(&mut self, fut: F) -> Result<T>
    where
        F: std::future::Future<Output = std::result::Result<tonic::Response<T>, Status>>,
    {
        let t = self.timeout;
        self.rt.block_on(async move {
            match tokio::time::timeout(t, fut).await {
                Ok(r) => r.map(tonic::Response::into_inner),
                Err(_) => Err(Status::deadline_exceeded(format!("no answer within {} s", t.as_secs()))),
            }
        })
    }

    pub fn version(&mut self) -> Result<cri::VersionResponse> {
        let mut c = self.runtime.clone();
        self.call(async move { c.version(cri::VersionRequest { version: "v1".into() }).await })
    }

    /// PullImage; the image reference containerd resolved (its id, `sha256:...`).
    pub fn pull_image(&mut self, image: &str, pod: Option<cri::PodSandboxConfig>) -> Result<String> {
        let mut c = self.images.clone();
        let req = cri::PullImageRequest { image: Some(spec(image)), auth: None, sandbox_config: pod };
        Ok(self.call(async move { c.pull_image(req).await })?.image_ref)
    }

    pub fn image_status(&mut self, image: &str) -> Result<Option<cri::Image>> {
        let mut c = self.images.clone();
        let req = cri::ImageStatusRequest { image: Some(spec(image)), verbose: false };
        Ok(self.call(async move { c.image_status(req).await })?.image)
    }

    pub fn list_images(&mut self) -> Result<Vec<cri::Image>> {
        let mut c = self.images.clone();
        Ok(self.call(async move { c.list_images(cri::ListImagesRequest { filter: None }).await })?.images)
    }

    pub fn image_fs_info(&mut self) -> Result<Vec<cri::FilesystemUsage>> {
        let mut c = self.images.clone();
        Ok(self.call(async move { c.image_fs_info(cri::ImageFsInfoRequest {}).await })?.image_filesystems)
    }

    pub fn remove_image(&mut self, image: &str) -> Result<()> {
        let mut c = self.images.clone();
        let req = cri::RemoveImageRequest { image: Some(spec(image)) };
        self.call(async move { c.remove_image(req).await }).map(|_| ())
    }

    /// RunPodSandbox; the pod's id.
    pub fn run_pod(&mut self, config: &cri::PodSandboxConfig) -> Result<String> {
        let mut c = self.runtime.clone();
        let req = cri::RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: String::new() };
        Ok(self.call(async move { c.run_pod_sandbox(req).await })?.pod_sandbox_id)
    }

    pub fn stop_pod(&mut self, id: &str) -> Result<()> {
        let mut c = self.runtime.clone();
        let req = cri::StopPodSandboxRequest { pod_sandbox_id: id.into() };
        self.call(async move { c.stop_pod_sandbox(req).await }).map(|_| ())
    }

    pub fn remove_pod(&mut self, id: &str) -> Result<()> {
        let mut c = self.runtime.clone();
        let req = cri::RemovePodSandboxRequest { pod_sandbox_id: id.into() };
        self.call(async move { c.remove_pod_sandbox(req).await }).map(|_| ())
    }

    pub fn list_pods(&mut self) -> Result<Vec<cri::PodSandbox>> {
        let mut c = self.runtime.clone();
        Ok(self.call(async move { c.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None }).await })?.items)
    }

    /// CreateContainer in pod `pod` (made with `pod_config`); the container's id.
    pub fn create_container(&mut self, pod: &str, config: cri::ContainerConfig, pod_config: &cri::PodSandboxConfig) -> Result<String> {
        let mut c = self.runtime.clone();
        let req = cri::CreateContainerRequest { pod_sandbox_id: pod.into(), config: Some(config), sandbox_config: Some(pod_config.clone()) };
        Ok(self.call(async move { c.create_container(req).await })?.container_id)
    }

    pub fn start_container(&mut self, id: &str) -> Result<()> {
        let mut c = self.runtime.clone();
        let req = cri::StartContainerRequest { container_id: id.into() };
        self.call(async move { c.start_container(req).await }).map(|_| ())
    }

    /// StopContainer: SIGTERM, then SIGKILL after `grace_secs`.
    pub fn stop_container(&mut self, id: &str, grace_secs: i64) -> Result<()> {
        let mut c = self.runtime.clone();
        let req = cri::StopContainerRequest { container_id: id.into(), timeout: grace_secs };
        self.call(async move { c.stop_container(req).await }).map(|_| ())
    }

    pub fn remove_container(&mut self, id: &str) -> Result<()> {
        let mut c = self.runtime.clone();
        let req = cri::RemoveContainerRequest { container_id: id.into() };
        self.call(async move { c.remove_container(req).await }).map(|_| ())
    }

    pub fn container_status(&mut self, id: &str) -> Result<cri::ContainerStatus> {
        let mut c = self.runtime.clone();
        let req = cri::ContainerStatusRequest { container_id: id.into(), verbose: false };
        self.call(async move { c.container_status(req).await })?
            .status
            .ok_or_else(|| Status::internal(format!("ContainerStatus of {id}: no status in the answer")))
    }

    /// The container's state, polled until it is `want` (panics after `secs` seconds).
    pub fn wait_state(&mut self, id: &str, want: ContainerState, secs: u64) -> cri::ContainerStatus {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let st = self.container_status(id).unwrap_or_else(|e| panic!("ContainerStatus {id}: {e}"));
            if st.state == want as i32 {
                return st;
            }
            assert!(std::time::Instant::now() < deadline, "container {id} not {want:?} after {secs} s: {st:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn container_stats(&mut self, id: &str) -> Result<cri::ContainerStats> {
        let mut c = self.runtime.clone();
        let req = cri::ContainerStatsRequest { container_id: id.into() };
        self.call(async move { c.container_stats(req).await })?
            .stats
            .ok_or_else(|| Status::internal(format!("ContainerStats of {id}: no stats in the answer")))
    }

    pub fn list_containers(&mut self) -> Result<Vec<cri::Container>> {
        let mut c = self.runtime.clone();
        Ok(self.call(async move { c.list_containers(cri::ListContainersRequest { filter: None }).await })?.containers)
    }

    /// ExecSync `cmd` in container `id`: (exit code, stdout, stderr).
    pub fn exec_sync(&mut self, id: &str, cmd: &[&str], timeout_secs: i64) -> Result<(i32, String, String)> {
        let mut c = self.runtime.clone();
        let req = cri::ExecSyncRequest { container_id: id.into(), cmd: cmd.iter().map(|s| s.to_string()).collect(), timeout: timeout_secs };
        let r = self.call(async move { c.exec_sync(req).await })?;
        Ok((r.exit_code, String::from_utf8_lossy(&r.stdout).into_owned(), String::from_utf8_lossy(&r.stderr).into_owned()))
    }
}

fn spec(image: &str) -> cri::ImageSpec {
    cri::ImageSpec { image: image.into(), annotations: HashMap::new() }
}
