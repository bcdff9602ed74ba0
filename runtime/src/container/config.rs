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
    /// Idmap the mount with these mappings (those of the pod's user
    /// namespace): files owned by id N on the host appear owned by the id
    /// that maps to N in the pod.
    #[serde(default)]
    pub idmap: Option<crate::sandbox::config::UserNamespace>,
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

impl Resources {
    /// Checks limits before they are applied (at create, and by
    /// UpdateContainerResources).
    pub fn validate(&self) -> Result<()> {
        for (page_size, limit) in &self.hugepage_limits {
            if !is_page_size(page_size) || i64::try_from(*limit).is_err() {
                return Err(Error::invalid(format!(
                    "hugepage limit {page_size:?} = {limit} must name a page size such as 2MB and a limit below 2^63"
                )));
            }
        }
        // Each key names a file in the container's cgroup directory.
        for (key, value) in &self.unified {
            if key.is_empty()
                || key.starts_with('.')
                || key.contains(['/', '\0'])
                || value.contains(['\0', '\n'])
            {
                return Err(Error::invalid(format!(
                    "unified cgroup setting {key:?} = {value:?} must name a file of the cgroup (such as memory.high) and a one-line value"
                )));
            }
        }
        Ok(())
    }
}

/// An SELinux label asked for (CRI's SELinuxOption); empty parts take the
/// container defaults where SELinux is enabled.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SelinuxLabel {
    /// SELinux user.
    pub user: String,
    /// SELinux role.
    pub role: String,
    /// SELinux type.
    pub typ: String,
    /// MLS level.
    pub level: String,
}

impl SelinuxLabel {
    /// The label of CRI's four fields; `None` when all are empty (nothing
    /// was asked for).
    pub fn of(user: String, role: String, typ: String, level: String) -> Option<SelinuxLabel> {
        let l = SelinuxLabel {
            user,
            role,
            typ,
            level,
        };
        (l != SelinuxLabel::default()).then_some(l)
    }
}

impl std::fmt::Display for SelinuxLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}:{}", self.user, self.role, self.typ, self.level)
    }
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
    /// The SELinux label asked for, if any.
    #[serde(default)]
    pub selinux: Option<SelinuxLabel>,
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
        if !self.log_path.is_empty()
            && self
                .log_path
                .split('/')
                .any(|c| matches!(c, "" | "." | "..") || c.contains('\0'))
        {
            return Err(Error::invalid(format!(
                "log_path {:?} must be a file path relative to the pod's log directory, without '.', '..' or empty components",
                self.log_path
            )));
        }
        self.check_strings()?;
        self.check_sizes()?;
        self.check_ids()?;

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
            if m.recursive_read_only && !m.readonly {
                return Err(Error::invalid(format!(
                    "the mount at {:?} asks for recursive_read_only but is not readonly",
                    m.container_path
                )));
            }
            for (asked, what) in [
                (m.recursive_read_only, "a recursive read-only"),
                (m.idmap.is_some(), "an idmapped"),
            ] {
                if asked && m.propagation != Propagation::Private {
                    return Err(Error::invalid(format!(
                        "the mount at {:?} is {what} mount, which needs private propagation, not {:?}",
                        m.container_path, m.propagation
                    )));
                }
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

    /// Refuses NUL in every string that becomes an argument, an environment
    /// entry or a path: the kernel cannot take one, and the failure would
    /// come late (at start) and read as the runtime's fault.
    fn check_strings(&self) -> Result<()> {
        let strings = self
            .command
            .iter()
            .chain(&self.args)
            .chain(self.envs.iter().map(|(_, v)| v))
            .chain([&self.image, &self.working_dir])
            .chain(
                self.mounts
                    .iter()
                    .flat_map(|m| [&m.container_path, &m.host_path]),
            )
            .chain(
                self.devices
                    .iter()
                    .flat_map(|d| [&d.container_path, &d.host_path]),
            );
        for v in strings {
            if v.contains('\0') {
                return Err(Error::invalid(format!(
                    "{v:?} contains a NUL byte, which no command, environment or path may hold"
                )));
            }
        }
        Ok(())
    }

    /// Bounds what one container may carry, so no request makes crust keep
    /// or return without bound.
    fn check_sizes(&self) -> Result<()> {
        crate::sandbox::config::check_metadata_size("container", &self.labels, &self.annotations)?;
        let argv_env: usize = self
            .command
            .iter()
            .chain(&self.args)
            .map(String::len)
            .chain(self.envs.iter().map(|(k, v)| k.len() + v.len()))
            .sum();
        if argv_env > MAX_ARGV_ENV_BYTES {
            return Err(Error::invalid(format!(
                "the command, arguments and environment hold {argv_env} bytes; at most {MAX_ARGV_ENV_BYTES} are accepted"
            )));
        }
        for (what, n) in [
            ("mounts", self.mounts.len()),
            ("devices", self.devices.len()),
        ] {
            if n > MAX_MOUNTS_OR_DEVICES {
                return Err(Error::invalid(format!(
                    "{n} {what} asked for; at most {MAX_MOUNTS_OR_DEVICES} are accepted"
                )));
            }
        }
        self.resources.validate()
    }

    /// User and group ids in Kubernetes' range (0 to 2^31-1); larger ones
    /// include (uid_t)-1, which means "no change" to the kernel.
    fn check_ids(&self) -> Result<()> {
        let sec = &self.security;
        let ids = sec
            .run_as_user
            .iter()
            .chain(&sec.run_as_group)
            .chain(&sec.supplemental_groups);
        for id in ids {
            if !(0..=i64::from(i32::MAX)).contains(id) {
                return Err(Error::invalid(format!(
                    "user or group id {id} is outside 0..={}",
                    i32::MAX
                )));
            }
        }
        Ok(())
    }
}

/// Most bytes of command, arguments and environment one container may
/// carry; Linux's exec takes far less with the default stack limit.
const MAX_ARGV_ENV_BYTES: usize = 8 << 20;

/// Most mounts, and most devices, one container may ask for.
const MAX_MOUNTS_OR_DEVICES: usize = 1024;

/// A hugepage size as kubelet writes it: digits and a unit ("2MB", "1GB").
fn is_page_size(s: &str) -> bool {
    let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &s[digits.len()..];
    !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && matches!(unit, "B" | "KB" | "MB" | "GB" | "TB" | "PB")
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
