//! What a container is asked to be: the domain form of CRI's ContainerConfig.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::sandbox::config::NamespaceOptions;
use crate::{Error, Result};

/// Mount propagation (CRI MountPropagation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Propagation {
    /// rprivate.
    #[default]
    Private,
    /// rslave: host mounts appear in the container.
    HostToContainer,
    /// rshared: both ways.
    Bidirectional,
}

/// A host path mounted into the container.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// Path inside the container.
    pub container_path: String,
    /// Path on the host.
    pub host_path: String,
    /// Read-only mount.
    pub readonly: bool,
    /// Recursive read-only mount.
    pub recursive_read_only: bool,
    /// SELinux relabel request (no SELinux here; kept to echo it back).
    pub selinux_relabel: bool,
    /// Propagation mode.
    pub propagation: Propagation,
    /// Set when the mount is an OCI image volume (not supported yet).
    pub image: String,
}

/// A host device made available in the container.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// Path inside the container.
    pub container_path: String,
    /// Path on the host.
    pub host_path: String,
    /// cgroup permissions: some of "rwm".
    pub permissions: String,
}

/// Linux resource limits (CRI LinuxContainerResources); zero means unset.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// CFS period (µs).
    pub cpu_period: i64,
    /// CFS quota (µs).
    pub cpu_quota: i64,
    /// CPU shares.
    pub cpu_shares: i64,
    /// Memory limit in bytes.
    pub memory_limit_in_bytes: i64,
    /// OOM score adjustment.
    pub oom_score_adj: i64,
    /// cpuset.cpus.
    pub cpuset_cpus: String,
    /// cpuset.mems.
    pub cpuset_mems: String,
    /// Hugepage limits: page size ("2MB") to bytes.
    pub hugepage_limits: Vec<(String, u64)>,
    /// cgroup v2 unified keys.
    pub unified: BTreeMap<String, String>,
    /// Memory+swap limit in bytes.
    pub memory_swap_limit_in_bytes: i64,
}

/// A security profile choice (seccomp or AppArmor).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Profile {
    /// No profile requested: unconfined (the CRI default).
    #[default]
    Unset,
    /// The runtime's default profile.
    RuntimeDefault,
    /// No confinement.
    Unconfined,
    /// A profile on the node (seccomp: absolute path of a JSON profile).
    Localhost(String),
}

/// The container's security settings (CRI LinuxContainerSecurityContext).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityContext {
    /// Capabilities to add ("NET_ADMIN" or "CAP_NET_ADMIN", or "ALL").
    pub add_capabilities: Vec<String>,
    /// Capabilities to drop.
    pub drop_capabilities: Vec<String>,
    /// Ambient capabilities to add.
    pub add_ambient_capabilities: Vec<String>,
    /// Privileged container.
    pub privileged: bool,
    /// Namespace choices.
    pub namespaces: NamespaceOptions,
    /// UID to run as.
    pub run_as_user: Option<i64>,
    /// GID to run as.
    pub run_as_group: Option<i64>,
    /// User name to run as (resolved in the image's /etc/passwd).
    pub run_as_username: String,
    /// Read-only root filesystem.
    pub readonly_rootfs: bool,
    /// Supplemental groups.
    pub supplemental_groups: Vec<i64>,
    /// Strict supplemental groups policy (image groups are not merged).
    pub supplemental_groups_strict: bool,
    /// Set no_new_privs.
    pub no_new_privs: bool,
    /// Paths to mask; None means crust's defaults.
    pub masked_paths: Option<Vec<String>>,
    /// Paths to make read-only; None means crust's defaults.
    pub readonly_paths: Option<Vec<String>>,
    /// Seccomp profile.
    pub seccomp: Profile,
    /// AppArmor profile.
    pub apparmor: Profile,
}

/// The domain form of CRI's ContainerConfig.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerConfig {
    /// Container name within the pod.
    pub name: String,
    /// Attempt number.
    pub attempt: u32,
    /// Image reference or id, as kubelet gives it.
    pub image: String,
    /// Image annotations, echoed back.
    pub image_annotations: BTreeMap<String, String>,
    /// The image as the user typed it, if kubelet passed it.
    pub user_specified_image: String,
    /// Entrypoint override.
    pub command: Vec<String>,
    /// Arguments override.
    pub args: Vec<String>,
    /// Working directory override.
    pub working_dir: String,
    /// Environment, in order.
    pub envs: Vec<(String, String)>,
    /// Host mounts.
    pub mounts: Vec<Mount>,
    /// Host devices.
    pub devices: Vec<Device>,
    /// Labels, returned verbatim.
    pub labels: BTreeMap<String, String>,
    /// Annotations, returned verbatim.
    pub annotations: BTreeMap<String, String>,
    /// Log path relative to the sandbox's log directory.
    pub log_path: String,
    /// Keep stdin open.
    pub stdin: bool,
    /// Close stdin after the first attach.
    pub stdin_once: bool,
    /// Allocate a terminal.
    pub tty: bool,
    /// Resource limits.
    pub resources: Resources,
    /// Security settings.
    pub security: SecurityContext,
    /// CDI device names (not supported yet).
    pub cdi_devices: Vec<String>,
}

impl ContainerConfig {
    /// Checks the request before anything is created.
    pub fn validate(&self) -> Result<()> {
        if self.name.is_empty() {
            return Err(Error::invalid("container metadata must give a name"));
        }
        if self.name.contains('/') || self.name.contains('\0') {
            return Err(Error::invalid(format!(
                "container name {:?} must not contain '/' or NUL",
                self.name
            )));
        }
        if self.image.is_empty() {
            return Err(Error::invalid("container config must name an image"));
        }
        if self.log_path.starts_with('/') || self.log_path.split('/').any(|c| c == "..") {
            return Err(Error::invalid(format!(
                "log_path {:?} must be relative to the pod's log directory and stay inside it",
                self.log_path
            )));
        }
        for m in &self.mounts {
            if !m.container_path.starts_with('/') {
                return Err(Error::invalid(format!(
                    "mount container_path {:?} must be absolute",
                    m.container_path
                )));
            }
            if !m.image.is_empty() {
                return Err(Error::Unimplemented(
                    "image volume mounts are not supported by crust yet".into(),
                ));
            }
            if m.host_path.is_empty() {
                return Err(Error::invalid(format!(
                    "mount at {:?} has no host_path",
                    m.container_path
                )));
            }
            // A relative host path would resolve against wherever runc runs.
            if !m.host_path.starts_with('/') {
                return Err(Error::invalid(format!(
                    "mount host_path {:?} (at {:?}) must be absolute",
                    m.host_path, m.container_path
                )));
            }
            if m.recursive_read_only && (!m.readonly || m.propagation != Propagation::Private) {
                return Err(Error::invalid(format!(
                    "recursive read-only mount at {:?} must also be readonly with private propagation",
                    m.container_path
                )));
            }
        }
        for d in &self.devices {
            if !d.container_path.starts_with('/') || !d.host_path.starts_with('/') {
                return Err(Error::invalid(format!(
                    "device paths must be absolute: {:?} -> {:?}",
                    d.host_path, d.container_path
                )));
            }
            if d.permissions.chars().any(|c| !"rwm".contains(c)) {
                return Err(Error::invalid(format!(
                    "device permissions {:?} must be made of r, w and m",
                    d.permissions
                )));
            }
        }
        if !self.cdi_devices.is_empty() {
            return Err(Error::Unimplemented(
                "CDI devices are not supported by crust yet".into(),
            ));
        }
        if self.security.run_as_group.is_some()
            && self.security.run_as_user.is_none()
            && self.security.run_as_username.is_empty()
        {
            return Err(Error::invalid(
                "run_as_group requires run_as_user or run_as_username",
            ));
        }
        if self.security.run_as_user.is_some() && !self.security.run_as_username.is_empty() {
            return Err(Error::invalid(
                "give only one of run_as_user and run_as_username",
            ));
        }
        for (k, _) in &self.envs {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(Error::invalid(format!(
                    "environment variable name {k:?} is not valid"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_mount(host_path: &str) -> ContainerConfig {
        ContainerConfig {
            name: "c".into(),
            image: "busybox".into(),
            mounts: vec![Mount {
                container_path: "/data".into(),
                host_path: host_path.into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn mount_host_paths_must_be_absolute() {
        assert!(
            with_mount("/var/lib/kubelet/pods/x/volumes/data")
                .validate()
                .is_ok()
        );
        for bad in ["", "data", "../../etc", "./x"] {
            assert!(
                matches!(with_mount(bad).validate(), Err(Error::InvalidArgument(_))),
                "{bad:?}"
            );
        }
    }
}
