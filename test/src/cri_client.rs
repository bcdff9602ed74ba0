//! A CRI v1 client over crustd's unix socket, connected the way kubelet and
//! crictl connect, with one thin method per RPC the tests use.
//!
//! Methods return `tonic::Status` errors unchanged so tests can check codes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    self as cri, ContainerConfig, ContainerFilter, ContainerStatus, ExecSyncRequest, Image,
    ImageSpec, PodSandboxConfig, PodSandboxFilter, PodSandboxStatus,
};
use tokio::net::UnixStream;
use tonic::Status;
use tonic::transport::{Channel, Endpoint, Uri};

/// Deadline for a single RPC; generous because StopContainer and ExecSync wait
/// for containers, but bounded so a hung daemon fails the test instead of CI.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(90);

/// Connected runtime and image service clients (cheap to clone).
#[derive(Clone, Debug)]
pub struct CriClient {
    /// The RuntimeService client.
    pub runtime: RuntimeServiceClient<Channel>,
    /// The ImageService client.
    pub images: ImageServiceClient<Channel>,
}

/// The result of ExecSync with its output decoded as UTF-8 (lossily).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// Captured stdout.
    pub stdout: String,
    /// Captured stderr.
    pub stderr: String,
    /// The command's exit code.
    pub exit_code: i32,
}

/// The largest message kubelet's CRI client accepts (its `maxMsgSize`).
pub const KUBELET_MAX_MESSAGE: usize = 16 << 20;

impl CriClient {
    /// Connects to the CRI socket at `socket`.
    pub async fn connect(socket: &Path) -> Result<Self> {
        let socket: PathBuf = socket.to_path_buf();
        let channel =
            Endpoint::try_from("http://[::]")?
                .connect_timeout(Duration::from_secs(5))
                .timeout(RPC_TIMEOUT)
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let socket = socket.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(socket).await?))
                    }
                }))
                .await
                .context("connecting to the CRI socket")?;
        // kubelet's limit on what it receives: a reply crust sends must fit.
        Ok(Self {
            runtime: RuntimeServiceClient::new(channel.clone())
                .max_decoding_message_size(KUBELET_MAX_MESSAGE),
            images: ImageServiceClient::new(channel).max_decoding_message_size(KUBELET_MAX_MESSAGE),
        })
    }

    /// Version.
    pub async fn version(&self) -> Result<cri::VersionResponse, Status> {
        let request = cri::VersionRequest {
            version: "v1".into(),
        };
        Ok(self.runtime.clone().version(request).await?.into_inner())
    }

    /// Status (verbose = false).
    pub async fn status(&self) -> Result<cri::StatusResponse, Status> {
        let request = cri::StatusRequest { verbose: false };
        Ok(self.runtime.clone().status(request).await?.into_inner())
    }

    /// Status with verbose = true (what `crictl info` shows).
    pub async fn status_verbose(&self) -> Result<cri::StatusResponse, Status> {
        let request = cri::StatusRequest { verbose: true };
        Ok(self.runtime.clone().status(request).await?.into_inner())
    }

    /// PullImage; returns the image_ref.
    pub async fn pull_image(&self, image: &str) -> Result<String, Status> {
        self.pull_image_with_auth(image, None).await
    }

    /// PullImage with credentials; returns the image_ref.
    pub async fn pull_image_with_auth(
        &self,
        image: &str,
        auth: Option<cri::AuthConfig>,
    ) -> Result<String, Status> {
        let request = cri::PullImageRequest {
            image: Some(image_spec(image)),
            auth,
            sandbox_config: None,
        };
        Ok(self
            .images
            .clone()
            .pull_image(request)
            .await?
            .into_inner()
            .image_ref)
    }

    /// ImageStatus; `None` when the image is not present.
    pub async fn image_status(&self, image: &str) -> Result<Option<Image>, Status> {
        let request = cri::ImageStatusRequest {
            image: Some(image_spec(image)),
            verbose: false,
        };
        Ok(self
            .images
            .clone()
            .image_status(request)
            .await?
            .into_inner()
            .image)
    }

    /// ListImages without a filter.
    pub async fn list_images(&self) -> Result<Vec<Image>, Status> {
        let request = cri::ListImagesRequest { filter: None };
        Ok(self
            .images
            .clone()
            .list_images(request)
            .await?
            .into_inner()
            .images)
    }

    /// ListImages with a filter naming `image` (a reference or an id).
    pub async fn list_images_matching(&self, image: &str) -> Result<Vec<Image>, Status> {
        let request = cri::ListImagesRequest {
            filter: Some(cri::ImageFilter {
                image: Some(image_spec(image)),
            }),
        };
        Ok(self
            .images
            .clone()
            .list_images(request)
            .await?
            .into_inner()
            .images)
    }

    /// ImageFsInfo.
    pub async fn image_fs_info(&self) -> Result<cri::ImageFsInfoResponse, Status> {
        Ok(self
            .images
            .clone()
            .image_fs_info(cri::ImageFsInfoRequest {})
            .await?
            .into_inner())
    }

    /// RemoveImage.
    pub async fn remove_image(&self, image: &str) -> Result<(), Status> {
        let request = cri::RemoveImageRequest {
            image: Some(image_spec(image)),
        };
        self.images.clone().remove_image(request).await?;
        Ok(())
    }

    /// RunPodSandbox with the default runtime handler; returns the sandbox id.
    pub async fn run_pod_sandbox(&self, config: &PodSandboxConfig) -> Result<String, Status> {
        self.run_pod_sandbox_with_handler(config, "").await
    }

    /// RunPodSandbox with runtime handler `handler`; returns the sandbox id.
    pub async fn run_pod_sandbox_with_handler(
        &self,
        config: &PodSandboxConfig,
        handler: &str,
    ) -> Result<String, Status> {
        let request = cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.into(),
        };
        Ok(self
            .runtime
            .clone()
            .run_pod_sandbox(request)
            .await?
            .into_inner()
            .pod_sandbox_id)
    }

    /// StopPodSandbox.
    pub async fn stop_pod_sandbox(&self, id: &str) -> Result<(), Status> {
        let request = cri::StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        self.runtime.clone().stop_pod_sandbox(request).await?;
        Ok(())
    }

    /// RemovePodSandbox.
    pub async fn remove_pod_sandbox(&self, id: &str) -> Result<(), Status> {
        let request = cri::RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        self.runtime.clone().remove_pod_sandbox(request).await?;
        Ok(())
    }

    /// PodSandboxStatus (not verbose); returns the status message.
    pub async fn pod_sandbox_status(&self, id: &str) -> Result<PodSandboxStatus, Status> {
        let request = cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: false,
        };
        let response = self
            .runtime
            .clone()
            .pod_sandbox_status(request)
            .await?
            .into_inner();
        response
            .status
            .ok_or_else(|| Status::internal("PodSandboxStatus returned no status"))
    }

    /// ListPodSandbox with an optional filter.
    pub async fn list_pod_sandbox(
        &self,
        filter: Option<PodSandboxFilter>,
    ) -> Result<Vec<cri::PodSandbox>, Status> {
        let request = cri::ListPodSandboxRequest { filter };
        Ok(self
            .runtime
            .clone()
            .list_pod_sandbox(request)
            .await?
            .into_inner()
            .items)
    }

    /// CreateContainer in `pod_id` (kubelet passes the pod's config along).
    pub async fn create_container(
        &self,
        pod_id: &str,
        config: &ContainerConfig,
        sandbox_config: &PodSandboxConfig,
    ) -> Result<String, Status> {
        let request = cri::CreateContainerRequest {
            pod_sandbox_id: pod_id.into(),
            config: Some(config.clone()),
            sandbox_config: Some(sandbox_config.clone()),
        };
        Ok(self
            .runtime
            .clone()
            .create_container(request)
            .await?
            .into_inner()
            .container_id)
    }

    /// StartContainer.
    pub async fn start_container(&self, id: &str) -> Result<(), Status> {
        let request = cri::StartContainerRequest {
            container_id: id.into(),
        };
        self.runtime.clone().start_container(request).await?;
        Ok(())
    }

    /// StopContainer with a grace period in seconds (0 kills at once).
    pub async fn stop_container(&self, id: &str, timeout: i64) -> Result<(), Status> {
        let request = cri::StopContainerRequest {
            container_id: id.into(),
            timeout,
        };
        self.runtime.clone().stop_container(request).await?;
        Ok(())
    }

    /// RemoveContainer.
    pub async fn remove_container(&self, id: &str) -> Result<(), Status> {
        let request = cri::RemoveContainerRequest {
            container_id: id.into(),
        };
        self.runtime.clone().remove_container(request).await?;
        Ok(())
    }

    /// UpdateContainerResources with new Linux limits.
    pub async fn update_container_resources(
        &self,
        id: &str,
        linux: cri::LinuxContainerResources,
    ) -> Result<(), Status> {
        let request = cri::UpdateContainerResourcesRequest {
            container_id: id.into(),
            linux: Some(linux),
            ..Default::default()
        };
        self.runtime
            .clone()
            .update_container_resources(request)
            .await?;
        Ok(())
    }

    /// ContainerStatus (not verbose); returns the status message.
    pub async fn container_status(&self, id: &str) -> Result<ContainerStatus, Status> {
        let request = cri::ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        };
        let response = self
            .runtime
            .clone()
            .container_status(request)
            .await?
            .into_inner();
        response
            .status
            .ok_or_else(|| Status::internal("ContainerStatus returned no status"))
    }

    /// ListContainers with an optional filter.
    pub async fn list_containers(
        &self,
        filter: Option<ContainerFilter>,
    ) -> Result<Vec<cri::Container>, Status> {
        let request = cri::ListContainersRequest { filter };
        Ok(self
            .runtime
            .clone()
            .list_containers(request)
            .await?
            .into_inner()
            .containers)
    }

    /// ContainerStatus with verbose = true; returns the status and the `info` map.
    pub async fn container_status_verbose(
        &self,
        id: &str,
    ) -> Result<(ContainerStatus, HashMap<String, String>), Status> {
        let request = cri::ContainerStatusRequest {
            container_id: id.into(),
            verbose: true,
        };
        let response = self
            .runtime
            .clone()
            .container_status(request)
            .await?
            .into_inner();
        let status = response
            .status
            .ok_or_else(|| Status::internal("ContainerStatus returned no status"))?;
        Ok((status, response.info))
    }

    /// ReopenContainerLog.
    pub async fn reopen_container_log(&self, id: &str) -> Result<(), Status> {
        let request = cri::ReopenContainerLogRequest {
            container_id: id.into(),
        };
        self.runtime.clone().reopen_container_log(request).await?;
        Ok(())
    }

    /// ExecSync of `cmd` with a timeout in seconds (0 waits forever).
    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: &[&str],
        timeout: i64,
    ) -> Result<ExecOutput, Status> {
        let request = ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout,
        };
        let response = self.runtime.clone().exec_sync(request).await?.into_inner();
        Ok(ExecOutput {
            stdout: String::from_utf8_lossy(&response.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&response.stderr).into_owned(),
            exit_code: response.exit_code,
        })
    }

    /// Exec: the streaming URL for `cmd` in container `id` with these streams.
    pub async fn exec_url(
        &self,
        id: &str,
        cmd: &[&str],
        streams: Streams,
    ) -> Result<String, Status> {
        let request = cri::ExecRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            tty: streams.tty,
            stdin: streams.stdin,
            stdout: streams.stdout,
            stderr: streams.stderr,
        };
        Ok(self.runtime.clone().exec(request).await?.into_inner().url)
    }

    /// Attach: the streaming URL for container `id`'s own stdio.
    pub async fn attach_url(&self, id: &str, streams: Streams) -> Result<String, Status> {
        let request = cri::AttachRequest {
            container_id: id.into(),
            stdin: streams.stdin,
            tty: streams.tty,
            stdout: streams.stdout,
            stderr: streams.stderr,
        };
        Ok(self.runtime.clone().attach(request).await?.into_inner().url)
    }

    /// PortForward: the streaming URL for `ports` of pod `pod_id`.
    pub async fn port_forward_url(&self, pod_id: &str, ports: &[u16]) -> Result<String, Status> {
        let request = cri::PortForwardRequest {
            pod_sandbox_id: pod_id.into(),
            port: ports.iter().map(|&p| i32::from(p)).collect(),
        };
        Ok(self
            .runtime
            .clone()
            .port_forward(request)
            .await?
            .into_inner()
            .url)
    }
}

/// Which streams an Exec or Attach request asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Streams {
    /// stdin.
    pub stdin: bool,
    /// stdout.
    pub stdout: bool,
    /// stderr.
    pub stderr: bool,
    /// A terminal.
    pub tty: bool,
}

/// An ImageSpec naming `image`, as kubelet sends it.
pub fn image_spec(image: &str) -> ImageSpec {
    ImageSpec {
        image: image.into(),
        annotations: HashMap::new(),
        user_specified_image: image.into(),
        runtime_handler: String::new(),
    }
}
