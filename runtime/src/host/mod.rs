//! The host seam: everything the runtime asks of the world outside its own
//! files — runc, mounts, the shim, pinned namespaces, CNI, cgroup files and
//! the clock — as a few traits bundled in one [`Host`] handed to
//! [`crate::Runtime::open`].
//!
//! crustd runs on [`Host::real`], whose parts live in `sys/` and the CNI
//! crate; the lifecycle's unit tests run on a recording fake that can fail
//! any call, so create, start, stop, remove, their rollbacks and restart
//! recovery are tested without root in milliseconds.

#[cfg(test)]
pub(crate) mod fake;
pub mod handlers;
mod real;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use anyhow::Result;
use crust_cni::config::NetworkList;
use crust_cni::nsfs::PinRequest;
use crust_cni::{Attachment, PodNetwork};
use crust_shim_protocol::{ExitRecord, control};

use crate::container::config::ContainerConfig;
use crate::container::spec::HostFacts;
use crate::sandbox::Sandbox;
pub use crate::sys::bind::BindMount;
pub use crate::sys::cgroup::CgroupHost;
pub use crate::sys::cgroup_usage::UsageReader;
pub use crate::sys::runc::RuncStatus;
pub use handlers::{Handler, HandlerSpec, Handlers, Probe};

/// The outside world of one runtime.
#[derive(Clone)]
pub struct Host {
    /// The OCI runtimes, one per runtime handler.
    pub handlers: Arc<Handlers>,
    /// Mounting and unmounting.
    pub mounts: Arc<dyn Mounts>,
    /// crust-shim: the container supervisor and the PID namespace holder.
    pub shim: Arc<dyn Shim>,
    /// Pinned pod namespaces.
    pub namespaces: Arc<dyn Namespaces>,
    /// The pod network (CNI).
    pub network: Arc<dyn Network>,
    /// What cgroups used (statistics, OOM kills).
    pub cgroups: Arc<dyn UsageReader>,
    /// Wall-clock time for records and events.
    pub clock: Arc<dyn Clock>,
    /// What the machine offers containers (privileges, cgroup controllers,
    /// devices, the files a request names).
    pub facts: Arc<dyn Facts>,
}

impl Host {
    /// The real machine: the OCI runtimes of `opts.handlers` (each probed
    /// once) and crust-shim at the paths in `opts`, the kernel's mounts and
    /// namespaces, the CNI plugins `opts.cni` names, cgroupfs and the
    /// system clock.
    pub fn real(opts: &crate::Options) -> Result<Host> {
        real::host(opts)
    }

    /// The OCI runtime of handler `name` (an existing object's).
    pub fn runtime(&self, name: &str) -> Result<Arc<dyn Runc>> {
        self.handlers.runc(name).cloned()
    }
}

/// The OCI runtime's commands (`runc create` is the shim's own).
pub trait Runc: Send + Sync {
    /// Lets a created container's process run.
    fn start(&self, id: &str) -> Result<()>;
    /// Sends `signal` to the container's init; false when it is already
    /// stopped or gone.
    fn kill(&self, id: &str, signal: i32) -> Result<bool>;
    /// Removes the container's state and cgroup, killing what is left; an
    /// unknown container is fine.
    fn delete(&self, id: &str) -> Result<()>;
    /// What the OCI runtime thinks of the container.
    fn status(&self, id: &str) -> Result<RuncStatus>;
    /// Ids of every container the OCI runtime knows.
    fn list(&self) -> Result<Vec<String>>;
    /// Applies new cgroup limits (an OCI `LinuxResources` as JSON) to a
    /// created or running container.
    fn update(&self, id: &str, resources: &[u8]) -> Result<()>;
    /// Starts a process in a running container (`runc exec`), with the
    /// stdio the caller made.
    fn spawn_exec(&self, exec: ExecCommand<'_>) -> std::io::Result<tokio::process::Child>;
}

/// One `runc exec`.
pub struct ExecCommand<'a> {
    /// The container.
    pub id: &'a str,
    /// The command and its arguments.
    pub cmd: &'a [String],
    /// Where runc writes the process's host pid, to kill it by.
    pub pid_file: &'a Path,
    /// Where runc logs its own errors (JSON), if anywhere.
    pub log: Option<&'a Path>,
    /// Run it on the terminal that `stdin`/`stdout`/`stderr` are.
    pub tty: bool,
    /// The process's stdin.
    pub stdin: Stdio,
    /// The process's stdout.
    pub stdout: Stdio,
    /// The process's stderr.
    pub stderr: Stdio,
}

/// The mounts the runtime makes and takes down.
pub trait Mounts: Send + Sync {
    /// Mounts an overlay of `lower` (topmost first) with a writable
    /// `upper`/`work` on `target`.
    fn overlay(&self, lower: &[PathBuf], upper: &Path, work: &Path, target: &Path) -> Result<()>;
    /// Attaches on `target` a private copy of the mount tree at `source`,
    /// idmapped or read-only as `how` says (see [`BindMount`]).
    fn bind(&self, source: &Path, target: &Path, how: &BindMount) -> Result<()>;
    /// Mounts a pod's `/dev/shm` tmpfs of `size_bytes`.
    fn shm_tmpfs(&self, target: &Path, size_bytes: u64) -> Result<()>;
    /// Unmounts `target` (every mount stacked on it); not mounted is fine.
    fn unmount(&self, target: &Path) -> Result<()>;
    /// Mount points at or below `prefix`, deepest first.
    fn mounts_under(&self, prefix: &Path) -> Result<Vec<PathBuf>>;
}

/// What to start a container's shim with.
pub struct Launch<'a> {
    /// Container id.
    pub id: &'a str,
    /// The OCI runtime the shim runs `create` with (the pod's handler).
    pub runtime: &'a HandlerSpec,
    /// Bundle directory with config.json and the mounted rootfs.
    pub bundle: &'a Path,
    /// CRI log file, if any.
    pub log_path: Option<&'a Path>,
    /// Allocate a terminal.
    pub tty: bool,
    /// Keep the container's stdin open for attach clients.
    pub stdin: bool,
    /// Close that stdin when the first attached client detaches.
    pub stdin_once: bool,
}

/// A created container: its init pid and its shim's pid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Created {
    /// The container's init process.
    pub pid: i32,
    /// The shim supervising it.
    pub shim_pid: i32,
}

/// Why a container's create failed.
#[derive(Debug)]
pub enum CreateError {
    /// runc refused the container; the text is runc's error.
    Runc(String),
    /// The shim could not be run or did not report.
    Shim(anyhow::Error),
}

/// crust-shim, as crustd drives it.
pub trait Shim: Send + Sync {
    /// Starts a detached shim that runs `runc create` for the container and
    /// waits for its report.
    fn launch(&self, launch: &Launch<'_>) -> std::result::Result<Created, CreateError>;
    /// Kills the process group of a shim started in `bundle` whose create
    /// was abandoned; a shim that is gone is fine.
    fn kill_abandoned(&self, bundle: &Path);
    /// The exit the shim recorded in `bundle`, once the container exited.
    fn read_exit(&self, bundle: &Path) -> Option<ExitRecord>;
    /// True while the container shim with `pid` lives.
    fn alive(&self, pid: i32) -> bool;
    /// Sends one control request to the shim of `bundle`.
    fn control(&self, bundle: &Path, request: control::Request) -> Result<()>;
    /// Starts the process holding a pod's shared PID namespace, made in
    /// the user namespace pinned at `userns` when given; its pid.
    fn start_pid_holder(&self, userns: Option<&Path>) -> Result<i32>;
    /// Kills that holder (and every process in its namespace) and waits
    /// for it to be gone; gone already is fine.
    fn stop_pid_holder(&self, pid: i32) -> Result<()>;
    /// True while that holder lives.
    fn pid_holder_alive(&self, pid: i32) -> bool;
}

/// A pod's namespaces, pinned on files.
pub trait Namespaces: Send + Sync {
    /// Creates the namespaces `req` asks for (hostname and sysctls set)
    /// and pins them; nothing stays pinned on failure.
    fn pin_new(&self, req: PinRequest) -> Result<()>;
    /// Unpins a namespace and removes its file; gone already is fine.
    fn unpin(&self, path: &Path) -> Result<()>;
    /// True while `path` pins a live namespace.
    fn is_pinned(&self, path: &Path) -> bool;
}

/// The pod network.
pub trait Network: Send + Sync {
    /// The network new pods get, or why there is none.
    fn network(&self) -> crust_cni::Result<Arc<NetworkList>>;
    /// Whether pods can be networked now.
    fn status(&self) -> crust_cni::Result<()>;
    /// Attaches a pod (CNI ADD); a partial attachment is recorded for DEL.
    fn add(&self, att: &Attachment) -> crust_cni::Result<PodNetwork>;
    /// Detaches a pod (CNI DEL); not attached is fine.
    fn del(&self, id: &str) -> crust_cni::Result<()>;
    /// Checks a pod's attachment (CNI CHECK).
    fn check(&self, id: &str) -> crust_cni::Result<()>;
    /// Ids of every recorded attachment.
    fn attached_ids(&self) -> Vec<String>;
}

/// What the machine offers containers, read where the spec builder needs it.
pub trait Facts: Send + Sync {
    /// What the host's cgroups can enforce; read once, at start.
    fn cgroups(&self) -> CgroupHost;
    /// Whether SELinux is enabled, so a pod's label can apply.
    fn selinux(&self) -> bool;
    /// The mount features the kernel offers containers; read once, at start.
    fn mount_features(&self) -> MountFeatures;
    /// What building the spec of `config` in `sandbox` needs to know of the
    /// machine; `cgroups` is what [`Facts::cgroups`] found.
    fn for_container(
        &self,
        cgroups: &CgroupHost,
        config: &ContainerConfig,
        sandbox: &Sandbox,
    ) -> HostFacts;
}

/// Mount features of the kernel, as a runtime handler advertises them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MountFeatures {
    /// Read-only mounts can be made read-only recursively.
    pub recursive_read_only_mounts: bool,
    /// Pods can run in user namespaces.
    pub user_namespaces: bool,
}

/// Wall-clock time.
pub trait Clock: Send + Sync {
    /// Now, in nanoseconds since the Unix epoch.
    fn now_ns(&self) -> i64;
}
