//! Pod sandboxes: pinned network, IPC and UTS namespaces, the pod's hostname,
//! hosts and resolv.conf files and its `/dev/shm`, with no pause container.

pub mod config;
pub mod files;
mod lifecycle;
pub mod network;
pub mod pidns;
mod port_forward;

pub use self::lifecycle::SandboxFilter;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use self::config::SandboxConfig;

/// CRI's PodSandboxState.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SandboxState {
    /// Namespaces are pinned and containers may run.
    Ready,
    /// Stopped (or its namespaces were lost, e.g. by a reboot).
    NotReady,
}

/// A pod sandbox as recorded on disk.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Sandbox {
    /// 64-hex id.
    pub id: String,
    /// The config it was created with.
    pub config: SandboxConfig,
    /// Creation time, ns since the epoch.
    pub created_at: i64,
    /// The runtime handler its containers run under (the config's
    /// `runtime_handler` resolved: never empty).
    #[serde(default = "crate::host::handlers::legacy_handler")]
    pub handler: String,
    /// Ready or not.
    pub state: SandboxState,
    /// The sandbox's state directory (namespaces, files, shm).
    pub dir: PathBuf,
    /// Pinned network namespace; None for host network.
    pub netns: Option<PathBuf>,
    /// Pinned IPC namespace; None for host IPC.
    pub ipcns: Option<PathBuf>,
    /// Pinned UTS namespace; None for host network (which implies host UTS).
    pub utsns: Option<PathBuf>,
    /// Pinned user namespace, owner of the pod's other namespaces; None for
    /// a pod in the node's user namespace.
    #[serde(default)]
    pub userns: Option<PathBuf>,
    /// What containers get as /dev/shm.
    pub shm: PathBuf,
    /// The hostname inside the pod: the configured one, or the node's when the
    /// config gives none (as CRI-O does).
    #[serde(default)]
    pub hostname: String,
    /// The pod's IP addresses from CNI, primary first; empty for host network.
    #[serde(default)]
    pub ips: Vec<String>,
    /// Whether `shm` is a tmpfs this sandbox mounted.
    pub shm_mounted: bool,
    /// Host pid of the process holding the pod-wide PID namespace, for pods whose
    /// containers share one.
    #[serde(default)]
    pub infra_pid: Option<i32>,
    /// Undo steps a failed create could not take: retried by StopPodSandbox,
    /// RemovePodSandbox and the periodic sweep.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owed: Vec<crate::cleanup::Step>,
    /// Kept only to be cleaned up (a create that failed half-way, or a
    /// record crustd could not read): it holds no name, so kubelet's next
    /// RunPodSandbox of the same pod makes a new sandbox.
    #[serde(default)]
    pub leftover: bool,
}

impl Sandbox {
    /// The files its own namespaces are pinned on (the user namespace,
    /// which owns the others, last).
    pub fn pinned_namespaces(&self) -> impl Iterator<Item = &PathBuf> {
        [&self.netns, &self.utsns, &self.ipcns, &self.userns]
            .into_iter()
            .flatten()
    }

    /// The file bind-mounted as /etc/hostname.
    pub fn hostname_file(&self) -> PathBuf {
        self.dir.join("hostname")
    }

    /// The file bind-mounted as /etc/hosts.
    pub fn hosts_file(&self) -> PathBuf {
        self.dir.join("hosts")
    }

    /// The file bind-mounted as /etc/resolv.conf.
    pub fn resolv_file(&self) -> PathBuf {
        self.dir.join("resolv.conf")
    }
}
