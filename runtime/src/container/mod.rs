//! Containers: each one an overlay root filesystem, an OCI bundle and a detached
//! crust-shim that runs it through runc.

mod attach;
pub mod config;
mod exec;
pub(crate) mod exit_watch;
mod lifecycle;
pub(crate) mod settle;
pub mod spec;
mod staging;
mod stop;
mod update;
pub mod user;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use self::attach::{AttachInput, AttachOutput, AttachRequest, AttachStream};
use self::config::ContainerConfig;
pub(crate) use self::exec::ExecLimits;
pub use self::exec::{
    ExecOutput, ExecProcess, ExecReader, ExecRequest, ExecWriter, LARGE_OUTPUTS,
    MAX_CONCURRENT_EXEC_SYNCS, MAX_REPLY_OUTPUT, SMALL_OUTPUT,
};
pub use self::lifecycle::ContainerFilter;
use crate::sandbox::config::SandboxConfig;

/// CRI's ContainerState.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerState {
    /// Created, not started.
    Created,
    /// Started and not yet exited.
    Running,
    /// Its process has exited.
    Exited,
    /// The runtime lost track of it.
    Unknown,
}

/// The user the container's first process runs as.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedUser {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary group ids.
    pub additional_gids: Vec<u32>,
}

/// A container as recorded on disk.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Container {
    /// 64-hex id.
    pub id: String,
    /// Its pod sandbox.
    pub sandbox_id: String,
    /// The config it was created with.
    pub config: ContainerConfig,
    /// The image id ("sha256:...").
    pub image_id: String,
    /// Digested reference of the image (repo digest, else the id).
    pub image_ref: String,
    /// The image as people name it (see ContainerStatus.image); empty in
    /// records written before crust kept it.
    #[serde(default)]
    pub image_name: String,
    /// Creation time (ns).
    pub created_at: i64,
    /// Start time (ns), 0 before start.
    pub started_at: i64,
    /// Exit time (ns), 0 before exit.
    pub finished_at: i64,
    /// Exit code, meaningful once exited.
    pub exit_code: i32,
    /// CamelCase reason once exited: Completed, Error.
    pub reason: String,
    /// Human-readable detail.
    pub message: String,
    /// Lifecycle state.
    pub state: ContainerState,
    /// The container's init pid (host pid namespace).
    pub pid: i32,
    /// The supervising shim's pid.
    pub shim_pid: i32,
    /// Full path of the CRI log file; empty when the pod has no log directory.
    pub log_path: String,
    /// Who the first process runs as.
    pub user: ResolvedUser,
    /// Stop signal number.
    pub stop_signal: i32,
    /// The bundle directory (config.json, rootfs, shim files).
    pub bundle: PathBuf,
    /// The runtime handler it runs under: its pod's; empty when unknown (a
    /// record that could not be read).
    #[serde(default = "crate::host::handlers::legacy_handler")]
    pub handler: String,
    /// The container's cgroup (cgroupfs path), where OOM kills are counted.
    #[serde(default)]
    pub cgroup_path: String,
    /// Undo steps a failed create could not take: retried by StopContainer,
    /// RemoveContainer and the periodic sweep.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owed: Vec<crate::cleanup::Step>,
    /// Kept only to be cleaned up (a create that failed half-way, or a
    /// record crustd could not read): it holds no name, so kubelet's next
    /// create of the same name makes a new container.
    #[serde(default)]
    pub leftover: bool,
}

/// The reserved name of a container: its name, its pod's name, namespace and
/// uid, and its attempt, as a JSON array, so that no two distinct tuples
/// share a name (joined with `_`, `a_p` in pod `n/u/1` and `a` in `p/n/u_1`
/// would).
pub fn reserved_name(c: &ContainerConfig, pod: &SandboxConfig) -> String {
    serde_json::json!([c.name, pod.name, pod.namespace, pod.uid, c.attempt]).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_names_do_not_collide() {
        let container = |name: &str| ContainerConfig {
            name: name.into(),
            attempt: 0,
            ..Default::default()
        };
        let pod = |name: &str, namespace: &str, uid: &str| SandboxConfig {
            name: name.into(),
            namespace: namespace.into(),
            uid: uid.into(),
            ..Default::default()
        };
        let one = reserved_name(&container("a_p"), &pod("n", "u", "1"));
        let two = reserved_name(&container("a"), &pod("p", "n", "u_1"));
        assert_ne!(one, two);
        let mut other_attempt = container("a");
        other_attempt.attempt = 1;
        assert_ne!(
            reserved_name(&container("a"), &pod("p", "n", "u")),
            reserved_name(&other_attempt, &pod("p", "n", "u"))
        );
    }
}
