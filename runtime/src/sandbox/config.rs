//! What a pod sandbox is asked to be: the domain form of CRI's PodSandboxConfig,
//! kept verbatim in the sandbox record (labels and annotations are returned as given).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// How a namespace is shared (CRI NamespaceMode).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum NamespaceMode {
    /// Shared by all containers of the pod.
    #[default]
    Pod,
    /// Private to one container.
    Container,
    /// The host's namespace.
    Node,
    /// Another container's namespace (`target_id`).
    Target,
}

/// Namespace choices for a sandbox or container.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceOptions {
    /// Network namespace mode (POD or NODE).
    pub network: NamespaceMode,
    /// PID namespace mode.
    pub pid: NamespaceMode,
    /// IPC namespace mode (POD or NODE).
    pub ipc: NamespaceMode,
    /// The container whose namespace a TARGET mode refers to.
    pub target_id: String,
    /// The pod's own user namespace (CRI user namespace mode POD); None is
    /// the node's.
    #[serde(default)]
    pub user: Option<UserNamespace>,
}

/// One range of ids mapped into a user namespace.
pub use crust_cni::userns::IdMapping;

/// A pod's own user namespace: the one uid range and one gid range kubelet
/// maps into it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserNamespace {
    /// The uid mapping.
    pub uids: IdMapping,
    /// The gid mapping.
    pub gids: IdMapping,
}

impl UserNamespace {
    /// The host uid and gid that root in the pod is.
    pub fn host_root(&self) -> (u32, u32) {
        (self.uids.outside, self.gids.outside)
    }

    /// Refuses mappings that leave root in the pod unmapped, reach past
    /// the largest id, or map the host's root into the pod.
    pub fn validate(&self) -> Result<()> {
        for (what, m) in [("uid", self.uids), ("gid", self.gids)] {
            let problem = if m.inside != 0 {
                Some("must start at id 0 in the pod, so that root in the container is mapped")
            } else if m.count == 0 {
                Some("maps no ids")
            } else if m.outside.checked_add(m.count - 1).is_none() {
                Some("reaches past the largest id")
            } else if m.outside == 0 {
                Some("must not map the host's root into the pod")
            } else {
                None
            };
            if let Some(problem) = problem {
                return Err(Error::invalid(format!(
                    "the user namespace's {what} mapping (container id {}, host id {}, length {}) {problem}",
                    m.inside, m.outside, m.count
                )));
            }
        }
        Ok(())
    }
}

/// DNS settings written into the pod's resolv.conf (and given to CNI plugins
/// that declare the `dns` capability).
pub use crust_cni::capabilities::Dns as DnsConfig;
/// A port the pod exposes on the host (given to the portmap plugin).
pub use crust_cni::capabilities::PortMapping;

/// The domain form of CRI's PodSandboxConfig (plus the runtime handler).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxConfig {
    /// Pod name.
    pub name: String,
    /// Pod UID.
    pub uid: String,
    /// Pod namespace.
    pub namespace: String,
    /// Attempt number.
    pub attempt: u32,
    /// Hostname inside the pod.
    pub hostname: String,
    /// Directory of the pod's container logs.
    pub log_directory: String,
    /// DNS settings; None copies the host's resolv.conf.
    pub dns: Option<DnsConfig>,
    /// Host port mappings.
    pub port_mappings: Vec<PortMapping>,
    /// Labels, returned verbatim.
    pub labels: BTreeMap<String, String>,
    /// Annotations, returned verbatim.
    pub annotations: BTreeMap<String, String>,
    /// Parent cgroup (cgroupfs syntax).
    pub cgroup_parent: String,
    /// Namespace choices.
    pub namespaces: NamespaceOptions,
    /// Pod-level sysctls.
    pub sysctls: BTreeMap<String, String>,
    /// Whether privileged containers may run in this pod.
    pub privileged: bool,
    /// The runtime handler (RuntimeClass) as asked for; empty means the default.
    pub runtime_handler: String,
    /// The SELinux label asked for the pod, if any.
    #[serde(default)]
    pub selinux: Option<crate::container::config::SelinuxLabel>,
}

impl SandboxConfig {
    /// The reserved name: `[name, namespace, uid, attempt]` as JSON, so no two
    /// distinct tuples share it.
    pub fn reserved_name(&self) -> String {
        serde_json::json!([self.name, self.namespace, self.uid, self.attempt]).to_string()
    }

    /// Checks the request before anything is created.
    pub fn validate(&self) -> Result<()> {
        if self.name.is_empty() || self.namespace.is_empty() || self.uid.is_empty() {
            return Err(Error::invalid(
                "sandbox metadata must give name, namespace and uid",
            ));
        }
        for (what, v) in [
            ("name", &self.name),
            ("namespace", &self.namespace),
            ("uid", &self.uid),
        ] {
            // '/' would leave the log and state directories; ';' and '='
            // would rewrite the CNI_ARGS built from these (a client could
            // choose the pod's IP). Kubernetes names contain none of them.
            if let Some(bad) = v
                .chars()
                .find(|c| matches!(c, '/' | '\0' | ';' | '=' | '\n'))
            {
                return Err(Error::invalid(format!(
                    "sandbox {what} {v:?} must not contain {bad:?} (nor '/', ';', '=', newline or NUL)"
                )));
            }
        }
        if !self.log_directory.is_empty() && !is_normal_absolute(&self.log_directory) {
            return Err(Error::invalid(format!(
                "log_directory {:?} must be an absolute path without '.' or '..' components",
                self.log_directory
            )));
        }
        if self.hostname.len() > 64 {
            return Err(Error::invalid(format!(
                "hostname {:?} is longer than 64 characters",
                self.hostname
            )));
        }
        // It goes into /etc/hostname, the UTS namespace and HOSTNAME=.
        if let Some(bad) = self
            .hostname
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')))
        {
            return Err(Error::invalid(format!(
                "hostname {:?} must be made of letters, digits, '-', '.' and '_' (found {bad:?})",
                self.hostname
            )));
        }
        if self.cgroup_parent.contains('\0')
            || self.cgroup_parent.split('/').any(|c| c == "." || c == "..")
        {
            return Err(Error::invalid(format!(
                "cgroup_parent {:?} must not contain '.' or '..' components or NUL",
                self.cgroup_parent
            )));
        }
        for p in &self.port_mappings {
            p.validate().map_err(Error::invalid)?;
        }
        for (name, value) in &self.sysctls {
            if value.contains('\0') || value.contains('\n') {
                return Err(Error::invalid(format!(
                    "sysctl {name}={value:?} must not contain a newline or NUL"
                )));
            }
        }
        check_metadata_size("pod sandbox", &self.labels, &self.annotations)?;
        if self.namespaces.pid == NamespaceMode::Target {
            return Err(Error::invalid("a sandbox's PID namespace cannot be TARGET"));
        }
        if let Some(user) = &self.namespaces.user {
            user.validate()?;
            for (what, mode) in [
                ("network", self.namespaces.network),
                ("ipc", self.namespaces.ipc),
                ("pid", self.namespaces.pid),
            ] {
                if mode == NamespaceMode::Node {
                    return Err(Error::invalid(format!(
                        "a pod with its own user namespace cannot use the node's {what} namespace"
                    )));
                }
            }
        }
        for (what, mode) in [
            ("network", self.namespaces.network),
            ("ipc", self.namespaces.ipc),
        ] {
            if !matches!(mode, NamespaceMode::Pod | NamespaceMode::Node) {
                return Err(Error::invalid(format!(
                    "a sandbox's {what} namespace must be POD or NODE"
                )));
            }
        }
        if let Some(dns) = &self.dns {
            for s in dns.servers.iter().chain(&dns.searches).chain(&dns.options) {
                if s.contains('\n') || s.contains('\0') {
                    return Err(Error::invalid(format!(
                        "DNS setting {s:?} must not contain a newline"
                    )));
                }
            }
        }
        Ok(())
    }

    /// True when the pod uses the node's network namespace.
    pub fn host_network(&self) -> bool {
        self.namespaces.network == NamespaceMode::Node
    }

    /// True when the pod's containers share one PID namespace.
    pub fn shared_pid(&self) -> bool {
        self.namespaces.pid == NamespaceMode::Pod
    }

    /// True when the pod uses the node's IPC namespace.
    pub fn host_ipc(&self) -> bool {
        self.namespaces.ipc == NamespaceMode::Node
    }
}

/// Most bytes of labels and annotations (keys and values) one pod or
/// container may carry. They come back in every List reply, whose sum
/// kubelet reads under a 16 MiB limit; the API server allows 256 KiB of
/// annotations per object.
pub const MAX_METADATA_BYTES: usize = 512 << 10;

/// Refuses labels and annotations that together exceed [`MAX_METADATA_BYTES`].
pub fn check_metadata_size(
    what: &str,
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
) -> Result<()> {
    let bytes: usize = labels
        .iter()
        .chain(annotations)
        .map(|(k, v)| k.len() + v.len())
        .sum();
    if bytes > MAX_METADATA_BYTES {
        return Err(Error::invalid(format!(
            "the {what}'s labels and annotations hold {bytes} bytes; at most {MAX_METADATA_BYTES} are accepted"
        )));
    }
    Ok(())
}

/// Whether `p` is absolute and has no `.`, `..` or empty components (one
/// trailing '/' aside), nor NUL.
pub(crate) fn is_normal_absolute(p: &str) -> bool {
    if p.contains('\0') {
        return false;
    }
    let Some(rest) = p.strip_prefix('/') else {
        return false;
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    rest.is_empty() || rest.split('/').all(|c| !matches!(c, "" | "." | ".."))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> SandboxConfig {
        SandboxConfig {
            name: "web".into(),
            uid: "u1".into(),
            namespace: "default".into(),
            hostname: "web".into(),
            namespaces: NamespaceOptions {
                pid: NamespaceMode::Container,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn user_namespace_mappings_are_checked() {
        let ids = |inside, outside, count| IdMapping {
            inside,
            outside,
            count,
        };
        let with = |uids: IdMapping, network| {
            let mut c = valid();
            c.namespaces.network = network;
            c.namespaces.user = Some(UserNamespace {
                uids,
                gids: ids(0, 100_000, 65_536),
            });
            c.validate()
        };
        assert!(with(ids(0, 100_000, 65_536), NamespaceMode::Pod).is_ok());
        for (bad, network) in [
            (ids(1, 100_000, 65_536), NamespaceMode::Pod),
            (ids(0, 0, 65_536), NamespaceMode::Pod),
            (ids(0, 100_000, 0), NamespaceMode::Pod),
            (ids(0, u32::MAX, 2), NamespaceMode::Pod),
            (ids(0, 100_000, 65_536), NamespaceMode::Node),
        ] {
            assert!(
                matches!(with(bad, network), Err(Error::InvalidArgument(_))),
                "{bad:?} on {network:?} was accepted"
            );
        }
    }

    #[test]
    fn validation() {
        assert!(valid().validate().is_ok());
        assert_eq!(valid().reserved_name(), r#"["web","default","u1",0]"#);
        let mut c = valid();
        c.name.clear();
        assert!(matches!(c.validate(), Err(Error::InvalidArgument(_))));
        let mut c = valid();
        c.namespaces.pid = NamespaceMode::Target;
        assert!(matches!(c.validate(), Err(Error::InvalidArgument(_))));
        let mut c = valid();
        c.hostname = "x".repeat(65);
        assert!(matches!(c.validate(), Err(Error::InvalidArgument(_))));
        for name in ["web;IP=10.0.0.9", "a=b", "x\ny"] {
            let mut c = valid();
            c.name = name.into();
            assert!(
                matches!(c.validate(), Err(Error::InvalidArgument(_))),
                "{name:?}"
            );
        }
        let mut c = valid();
        c.uid = "u;IP=1.2.3.4".into();
        assert!(matches!(c.validate(), Err(Error::InvalidArgument(_))));
        for dir in ["logs", "/var/log/../etc", "/var/./log", "/var//log", "/.."] {
            let mut c = valid();
            c.log_directory = dir.into();
            assert!(
                matches!(c.validate(), Err(Error::InvalidArgument(_))),
                "{dir:?}"
            );
        }
        for dir in ["/var/log/pods/ns_p_u", "/var/log/", "/"] {
            let mut c = valid();
            c.log_directory = dir.into();
            assert!(c.validate().is_ok(), "{dir:?}");
        }
    }
}
