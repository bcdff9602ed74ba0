//! CRI RuntimeService: thin handlers that convert, call the runtime and convert back.

use std::pin::Pin;
use std::sync::Arc;

use crust_runtime::container::{AttachRequest, ContainerFilter, ExecRequest};
use crust_runtime::sandbox::{SandboxFilter, SandboxState};
use crust_runtime::{Error, Runtime};
use k8s_cri::v1;
use k8s_cri::v1::runtime_service_server;
use tonic::{Request, Response, Status};

use crate::config::Config;
use crate::convert::{self, container, metrics, sandbox, stats};
use crate::instrument::{deadline, off_thread, rpc, unimplemented};
use crate::stream::StreamServer;
use crate::stream::tokens::Pending;

/// The CRI API version crust implements.
const API_VERSION: &str = "v1";

/// The RuntimeService implementation.
pub struct RuntimeService {
    runtime: Arc<Runtime>,
    config: Arc<Config>,
    streams: Arc<StreamServer>,
}

impl RuntimeService {
    /// Serves `runtime`; `config` is reported by verbose Status; Exec, Attach
    /// and PortForward hand out URLs on `streams`.
    pub fn new(runtime: Arc<Runtime>, config: Arc<Config>, streams: Arc<StreamServer>) -> Self {
        RuntimeService {
            runtime,
            config,
            streams,
        }
    }

    /// What `crictl info` shows beside the conditions: the effective config,
    /// the CNI network in use and whether it is ready, and the runtime
    /// handlers, each as a JSON document.
    async fn verbose_status(
        &self,
        network: &v1::RuntimeCondition,
    ) -> crust_runtime::Result<std::collections::HashMap<String, String>> {
        let runtime = self.runtime.clone();
        let net = off_thread(move || runtime.network_config()).await?;
        let cni = serde_json::json!({
            "confDirs": self.config.cni.conf_dirs,
            "pluginDirs": self.config.cni.plugin_dirs,
            "network": net,
            "ready": network.status,
            "reason": network.reason,
            "message": network.message,
        });
        let default = self.runtime.handlers().default_name();
        let handlers: Vec<_> = convert::handlers::listed(&self.runtime)
            .into_iter()
            .map(|(name, h)| {
                let f = self.runtime.handler_features(h);
                serde_json::json!({
                    "name": name,
                    "handler": h.spec.name,
                    "default": h.spec.name == default,
                    "runtime": h.spec.binary,
                    "root": h.spec.root,
                    "options": h.spec.options,
                    "available": h.probe.usable.is_ok(),
                    "unavailableReason": h.probe.usable.as_ref().err(),
                    "version": h.probe.version,
                    "ociVersionMax": h.probe.features.as_ref().and_then(|f| f.get("ociVersionMax")),
                    "features": {
                        "recursiveReadOnlyMounts": f.recursive_read_only_mounts,
                        "userNamespaces": f.user_namespaces,
                    },
                    "userNamespacesUnavailableReason": h.probe.user_namespaces.as_ref().err(),
                })
            })
            .collect();
        Ok([
            ("config".to_string(), json_text(&*self.config)),
            ("cniconfig".to_string(), json_text(&cni)),
            // An object, not a bare list: crictl shows only objects as JSON.
            (
                "runtimeHandlers".to_string(),
                json_text(&serde_json::json!({ "handlers": handlers })),
            ),
        ]
        .into_iter()
        .collect())
    }

    /// A URL on the streaming server for `req`.
    fn stream_url(&self, req: Pending) -> crust_runtime::Result<String> {
        self.streams.url(req).ok_or_else(|| {
            Error::ResourceExhausted(
                "too many exec, attach and port-forward URLs are waiting for their clients; retry shortly".into(),
            )
        })
    }
}

type Reply<T> = Result<Response<T>, Status>;

/// `v` as a JSON document for verbose answers.
fn json_text<T: serde::Serialize + ?Sized>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

#[tonic::async_trait]
impl runtime_service_server::RuntimeService for RuntimeService {
    async fn version(&self, _req: Request<v1::VersionRequest>) -> Reply<v1::VersionResponse> {
        rpc("Version", async {
            Ok(v1::VersionResponse {
                version: "0.1.0".into(),
                runtime_name: "crust".into(),
                runtime_version: env!("CARGO_PKG_VERSION").into(),
                runtime_api_version: API_VERSION.into(),
            })
        })
        .await
    }

    async fn run_pod_sandbox(
        &self,
        req: Request<v1::RunPodSandboxRequest>,
    ) -> Reply<v1::RunPodSandboxResponse> {
        rpc("RunPodSandbox", async {
            let deadline = deadline(&req);
            let cfg = sandbox::config_from(req.into_inner())?;
            let id = self.runtime.run_sandbox(cfg, deadline).await?;
            Ok(v1::RunPodSandboxResponse { pod_sandbox_id: id })
        })
        .await
    }

    async fn stop_pod_sandbox(
        &self,
        req: Request<v1::StopPodSandboxRequest>,
    ) -> Reply<v1::StopPodSandboxResponse> {
        rpc("StopPodSandbox", async {
            self.runtime
                .stop_sandbox(&req.into_inner().pod_sandbox_id)
                .await?;
            Ok(v1::StopPodSandboxResponse {})
        })
        .await
    }

    async fn remove_pod_sandbox(
        &self,
        req: Request<v1::RemovePodSandboxRequest>,
    ) -> Reply<v1::RemovePodSandboxResponse> {
        rpc("RemovePodSandbox", async {
            self.runtime
                .remove_sandbox(&req.into_inner().pod_sandbox_id)
                .await?;
            Ok(v1::RemovePodSandboxResponse {})
        })
        .await
    }

    async fn pod_sandbox_status(
        &self,
        req: Request<v1::PodSandboxStatusRequest>,
    ) -> Reply<v1::PodSandboxStatusResponse> {
        rpc("PodSandboxStatus", async {
            let req = req.into_inner();
            let sb = self.runtime.sandbox_status(&req.pod_sandbox_id)?;
            let containers = self.runtime.list_containers(&ContainerFilter {
                sandbox_id: sb.id.clone(),
                ..Default::default()
            });
            Ok(v1::PodSandboxStatusResponse {
                status: Some(sandbox::status(&sb)),
                info: if req.verbose {
                    sandbox::verbose_info(&sb)
                } else {
                    Default::default()
                },
                containers_statuses: containers.iter().map(container::status).collect(),
                timestamp: crust_runtime::clock::now_ns(),
            })
        })
        .await
    }

    async fn list_pod_sandbox(
        &self,
        req: Request<v1::ListPodSandboxRequest>,
    ) -> Reply<v1::ListPodSandboxResponse> {
        rpc("ListPodSandbox", async {
            let f = req.into_inner().filter.unwrap_or_default();
            let filter = SandboxFilter {
                id: f.id,
                state: f.state.map(|s| sandbox::state_from(s.state)).transpose()?,
                labels: convert::to_btree(f.label_selector),
            };
            let items = self.runtime.list_sandboxes(&filter);
            Ok(v1::ListPodSandboxResponse {
                items: items.iter().map(sandbox::list_item).collect(),
            })
        })
        .await
    }

    async fn create_container(
        &self,
        req: Request<v1::CreateContainerRequest>,
    ) -> Reply<v1::CreateContainerResponse> {
        rpc("CreateContainer", async {
            let deadline = deadline(&req);
            let req = req.into_inner();
            let cfg = container::config_from(
                req.config
                    .ok_or_else(|| Error::invalid("CreateContainer needs a config"))?,
            )?;
            let id = self
                .runtime
                .create_container(&req.pod_sandbox_id, cfg, deadline)
                .await?;
            Ok(v1::CreateContainerResponse { container_id: id })
        })
        .await
    }

    async fn start_container(
        &self,
        req: Request<v1::StartContainerRequest>,
    ) -> Reply<v1::StartContainerResponse> {
        rpc("StartContainer", async {
            self.runtime
                .start_container(&req.into_inner().container_id)
                .await?;
            Ok(v1::StartContainerResponse {})
        })
        .await
    }

    async fn stop_container(
        &self,
        req: Request<v1::StopContainerRequest>,
    ) -> Reply<v1::StopContainerResponse> {
        rpc("StopContainer", async {
            let req = req.into_inner();
            self.runtime
                .stop_container(&req.container_id, req.timeout)
                .await?;
            Ok(v1::StopContainerResponse {})
        })
        .await
    }

    async fn remove_container(
        &self,
        req: Request<v1::RemoveContainerRequest>,
    ) -> Reply<v1::RemoveContainerResponse> {
        rpc("RemoveContainer", async {
            self.runtime
                .remove_container(&req.into_inner().container_id)
                .await?;
            Ok(v1::RemoveContainerResponse {})
        })
        .await
    }

    async fn list_containers(
        &self,
        req: Request<v1::ListContainersRequest>,
    ) -> Reply<v1::ListContainersResponse> {
        rpc("ListContainers", async {
            let f = req.into_inner().filter.unwrap_or_default();
            let filter = ContainerFilter {
                id: f.id,
                state: f
                    .state
                    .map(|s| container::state_from(s.state))
                    .transpose()?,
                sandbox_id: f.pod_sandbox_id,
                labels: convert::to_btree(f.label_selector),
            };
            let runtime = self.runtime.clone();
            let items = off_thread(move || runtime.list_containers(&filter)).await?;
            Ok(v1::ListContainersResponse {
                containers: items.iter().map(container::list_item).collect(),
            })
        })
        .await
    }

    async fn container_status(
        &self,
        req: Request<v1::ContainerStatusRequest>,
    ) -> Reply<v1::ContainerStatusResponse> {
        rpc("ContainerStatus", async {
            let req = req.into_inner();
            let runtime = self.runtime.clone();
            let id = req.container_id.clone();
            let c = off_thread(move || runtime.container_status(&id)).await??;
            Ok(v1::ContainerStatusResponse {
                status: Some(container::status(&c)),
                info: if req.verbose {
                    container::verbose_info(&c)
                } else {
                    Default::default()
                },
            })
        })
        .await
    }

    async fn update_container_resources(
        &self,
        req: Request<v1::UpdateContainerResourcesRequest>,
    ) -> Reply<v1::UpdateContainerResourcesResponse> {
        rpc("UpdateContainerResources", async {
            let req = req.into_inner();
            match req.linux {
                Some(linux) => {
                    self.runtime
                        .update_container_resources(
                            &req.container_id,
                            container::resources_from(linux),
                        )
                        .await?
                }
                // Nothing for a Linux container to change.
                None => {
                    self.runtime.container_status(&req.container_id)?;
                }
            }
            Ok(v1::UpdateContainerResourcesResponse {})
        })
        .await
    }

    async fn reopen_container_log(
        &self,
        req: Request<v1::ReopenContainerLogRequest>,
    ) -> Reply<v1::ReopenContainerLogResponse> {
        rpc("ReopenContainerLog", async {
            self.runtime
                .reopen_container_log(&req.into_inner().container_id)
                .await?;
            Ok(v1::ReopenContainerLogResponse {})
        })
        .await
    }

    async fn exec_sync(&self, req: Request<v1::ExecSyncRequest>) -> Reply<v1::ExecSyncResponse> {
        rpc("ExecSync", async {
            let req = req.into_inner();
            let out = self
                .runtime
                .exec_sync(&req.container_id, req.cmd, req.timeout)
                .await?;
            Ok(v1::ExecSyncResponse {
                stdout: out.stdout,
                stderr: out.stderr,
                exit_code: out.exit_code,
            })
        })
        .await
    }

    async fn exec(&self, req: Request<v1::ExecRequest>) -> Reply<v1::ExecResponse> {
        rpc("Exec", async {
            let req = req.into_inner();
            let exec = ExecRequest {
                cmd: req.cmd,
                tty: req.tty,
                stdin: req.stdin,
                stdout: req.stdout,
                stderr: req.stderr,
            };
            let container_id = self.runtime.check_exec(&req.container_id, &exec).await?;
            let url = self.stream_url(Pending::Exec {
                container_id,
                req: exec,
            })?;
            Ok(v1::ExecResponse { url })
        })
        .await
    }

    async fn attach(&self, req: Request<v1::AttachRequest>) -> Reply<v1::AttachResponse> {
        rpc("Attach", async {
            let req = req.into_inner();
            if req.tty && req.stderr {
                return Err(Error::invalid(
                    "tty and stderr cannot both be set: a terminal has one output stream",
                ));
            }
            let attach = AttachRequest {
                stdin: req.stdin,
                stdout: req.stdout,
                stderr: req.stderr,
            };
            let (container_id, stdin_once) = self
                .runtime
                .check_attach(&req.container_id, &attach)
                .await?;
            let url = self.stream_url(Pending::Attach {
                container_id,
                req: attach,
                tty: req.tty,
                stdin_once,
            })?;
            Ok(v1::AttachResponse { url })
        })
        .await
    }

    async fn port_forward(
        &self,
        req: Request<v1::PortForwardRequest>,
    ) -> Reply<v1::PortForwardResponse> {
        rpc("PortForward", async {
            let req = req.into_inner();
            let ports = req
                .port
                .iter()
                .map(|&p| {
                    u16::try_from(p).ok().filter(|&p| p > 0).ok_or_else(|| {
                        Error::invalid(format!(
                            "port {p} cannot be forwarded: a port is a number from 1 to 65535"
                        ))
                    })
                })
                .collect::<crust_runtime::Result<Vec<u16>>>()?;
            let sandbox_id = self.runtime.check_port_forward(&req.pod_sandbox_id)?;
            let url = self.stream_url(Pending::PortForward { sandbox_id, ports })?;
            Ok(v1::PortForwardResponse { url })
        })
        .await
    }

    async fn container_stats(
        &self,
        req: Request<v1::ContainerStatsRequest>,
    ) -> Reply<v1::ContainerStatsResponse> {
        rpc("ContainerStats", async {
            let id = req.into_inner().container_id;
            let runtime = self.runtime.clone();
            let s = off_thread(move || runtime.container_stats(&id)).await??;
            Ok(v1::ContainerStatsResponse {
                stats: Some(stats::container_stats(&s)),
            })
        })
        .await
    }

    async fn list_container_stats(
        &self,
        req: Request<v1::ListContainerStatsRequest>,
    ) -> Reply<v1::ListContainerStatsResponse> {
        rpc("ListContainerStats", async {
            let f = req.into_inner().filter.unwrap_or_default();
            let filter = ContainerFilter {
                id: f.id,
                state: None,
                sandbox_id: f.pod_sandbox_id,
                labels: convert::to_btree(f.label_selector),
            };
            let runtime = self.runtime.clone();
            let all = off_thread(move || runtime.list_container_stats(&filter)).await??;
            Ok(v1::ListContainerStatsResponse {
                stats: all.iter().map(stats::container_stats).collect(),
            })
        })
        .await
    }

    async fn pod_sandbox_stats(
        &self,
        req: Request<v1::PodSandboxStatsRequest>,
    ) -> Reply<v1::PodSandboxStatsResponse> {
        rpc("PodSandboxStats", async {
            let id = req.into_inner().pod_sandbox_id;
            let runtime = self.runtime.clone();
            let s = off_thread(move || runtime.sandbox_stats(&id)).await??;
            Ok(v1::PodSandboxStatsResponse {
                stats: Some(stats::sandbox_stats(&s)),
            })
        })
        .await
    }

    async fn list_pod_sandbox_stats(
        &self,
        req: Request<v1::ListPodSandboxStatsRequest>,
    ) -> Reply<v1::ListPodSandboxStatsResponse> {
        rpc("ListPodSandboxStats", async {
            let f = req.into_inner().filter.unwrap_or_default();
            let filter = SandboxFilter {
                id: f.id,
                state: None,
                labels: convert::to_btree(f.label_selector),
            };
            let runtime = self.runtime.clone();
            let all = off_thread(move || runtime.list_sandbox_stats(&filter)).await??;
            Ok(v1::ListPodSandboxStatsResponse {
                stats: all.iter().map(stats::sandbox_stats).collect(),
            })
        })
        .await
    }

    async fn update_runtime_config(
        &self,
        req: Request<v1::UpdateRuntimeConfigRequest>,
    ) -> Reply<v1::UpdateRuntimeConfigResponse> {
        rpc("UpdateRuntimeConfig", async {
            let cidr = req
                .into_inner()
                .runtime_config
                .and_then(|c| c.network_config)
                .map(|n| n.pod_cidr)
                .unwrap_or_default();
            self.runtime.set_pod_cidr(&cidr)?;
            Ok(v1::UpdateRuntimeConfigResponse {})
        })
        .await
    }

    async fn status(&self, req: Request<v1::StatusRequest>) -> Reply<v1::StatusResponse> {
        rpc("Status", async {
            let runtime = self.runtime.clone();
            let network = off_thread(move || runtime.network_status()).await?;
            let (network_ready, reason, message) = match network {
                Ok(()) => (true, String::new(), String::new()),
                Err(why) => (false, "NetworkPluginNotReady".to_string(), why),
            };
            let conditions = vec![
                v1::RuntimeCondition {
                    r#type: "RuntimeReady".into(),
                    status: true,
                    reason: String::new(),
                    message: String::new(),
                },
                v1::RuntimeCondition {
                    r#type: "NetworkReady".into(),
                    status: network_ready,
                    reason,
                    message,
                },
            ];
            let handlers = convert::handlers::runtime_handlers(&self.runtime);
            let info = if req.into_inner().verbose {
                let network = conditions[1].clone();
                self.verbose_status(&network).await?
            } else {
                Default::default()
            };
            Ok(v1::StatusResponse {
                status: Some(v1::RuntimeStatus { conditions }),
                info,
                runtime_handlers: handlers,
                features: Some(v1::RuntimeFeatures {
                    supplemental_groups_policy: true,
                }),
            })
        })
        .await
    }

    async fn checkpoint_container(
        &self,
        _req: Request<v1::CheckpointContainerRequest>,
    ) -> Reply<v1::CheckpointContainerResponse> {
        Err(unimplemented("CheckpointContainer"))
    }

    type GetContainerEventsStream = Pin<
        Box<dyn tokio_stream::Stream<Item = Result<v1::ContainerEventResponse, Status>> + Send>,
    >;

    async fn get_container_events(
        &self,
        _req: Request<v1::GetEventsRequest>,
    ) -> Reply<Self::GetContainerEventsStream> {
        rpc("GetContainerEvents", async {
            let subscription = self.runtime.subscribe_events();
            let events = futures_util::stream::unfold(Some(subscription), |state| async move {
                let mut sub = state?;
                match sub.next().await {
                    Some(event) => Some((Ok(container::event(&event)), Some(sub))),
                    None if sub.lagged() => Some((
                        Err(Status::resource_exhausted(format!(
                            "this event stream fell {} events behind and was closed; subscribe again and relist",
                            crust_runtime::events::QUEUE
                        ))),
                        None,
                    )),
                    None => None,
                }
            });
            Ok(Box::pin(events) as Self::GetContainerEventsStream)
        })
        .await
    }

    async fn list_metric_descriptors(
        &self,
        _req: Request<v1::ListMetricDescriptorsRequest>,
    ) -> Reply<v1::ListMetricDescriptorsResponse> {
        rpc("ListMetricDescriptors", async {
            Ok(v1::ListMetricDescriptorsResponse {
                descriptors: metrics::descriptors(),
            })
        })
        .await
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _req: Request<v1::ListPodSandboxMetricsRequest>,
    ) -> Reply<v1::ListPodSandboxMetricsResponse> {
        rpc("ListPodSandboxMetrics", async {
            let filter = SandboxFilter {
                state: Some(SandboxState::Ready),
                ..Default::default()
            };
            let runtime = self.runtime.clone();
            let all = off_thread(move || runtime.list_sandbox_stats(&filter)).await??;
            Ok(v1::ListPodSandboxMetricsResponse {
                pod_metrics: all.iter().map(metrics::pod_metrics).collect(),
            })
        })
        .await
    }

    async fn runtime_config(
        &self,
        _req: Request<v1::RuntimeConfigRequest>,
    ) -> Reply<v1::RuntimeConfigResponse> {
        rpc("RuntimeConfig", async {
            Ok(v1::RuntimeConfigResponse {
                linux: Some(v1::LinuxRuntimeConfiguration {
                    cgroup_driver: v1::CgroupDriver::Cgroupfs as i32,
                }),
            })
        })
        .await
    }
}
