//! Kubelet-like pod and container configs for the benchmark workload, under a
//! log directory and cgroup parent the benchmark owns.

use std::path::PathBuf;

use anyhow::{Context, Result};
use k8s_cri::v1::{ContainerConfig, PodSandboxConfig};

use crate::{pod_config, unique};

/// Namespace of every benchmark pod.
pub const POD_NAMESPACE: &str = "crust-bench";
/// What every benchmark container runs.
pub const SLEEP_COMMAND: [&str; 2] = ["sleep", "3600"];

/// Makes pod and container configs for one runtime's run.
#[derive(Debug, Clone)]
pub struct PodFactory {
    /// Parent of the pods' log directories (like `/var/log/pods`).
    pub log_base: PathBuf,
    /// cgroupfs parent owned by the benchmark; each pod gets `<this>/pod<uid>`.
    pub cgroup_parent: String,
}

impl PodFactory {
    /// A pod config named `name` with a fresh uid and log directory.
    pub fn pod(&self, name: &str) -> Result<PodSandboxConfig> {
        let uid = unique::pod_uid();
        let log_directory = self.log_base.join(format!("{POD_NAMESPACE}_{name}_{uid}"));
        std::fs::create_dir_all(&log_directory)
            .with_context(|| format!("creating {}", log_directory.display()))?;
        Ok(pod_config::pod_sandbox_config(
            name,
            POD_NAMESPACE,
            &uid,
            &log_directory,
            &format!("{}/pod{uid}", self.cgroup_parent),
        ))
    }

    /// A container config running `sleep 3600` from `image` in `pod`; makes its
    /// log subdirectory as kubelet does.
    pub fn sleep_container(&self, pod: &PodSandboxConfig, image: &str) -> Result<ContainerConfig> {
        let name = "sleep";
        let dir = PathBuf::from(&pod.log_directory).join(name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut config = pod_config::container_config(pod, name, image);
        config.command = SLEEP_COMMAND.map(String::from).to_vec();
        Ok(config)
    }
}

/// The cgroupfs path of a pod's sandbox (pause) container under its cgroup
/// parent, where runtimes that run one put it: `<pod parent>/<sandbox id>`.
pub fn sandbox_cgroup(pod: &PodSandboxConfig, sandbox_id: &str) -> String {
    let parent = pod
        .linux
        .as_ref()
        .map(|l| l.cgroup_parent.clone())
        .unwrap_or_default();
    format!("{parent}/{sandbox_id}")
}
