//! PodSandboxConfig and ContainerConfig shaped the way kubelet fills them in.

use std::collections::HashMap;
use std::path::Path;

use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, DnsConfig, KeyValue, LinuxContainerConfig,
    LinuxContainerResources, LinuxContainerSecurityContext, LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption, PodSandboxConfig,
    PodSandboxMetadata,
};

use crate::cri_client::image_spec;

/// DNS servers every test pod is configured with.
pub const DNS_SERVERS: [&str; 2] = ["10.96.0.10", "10.96.0.11"];
/// DNS search domains every test pod is configured with.
pub const DNS_SEARCHES: [&str; 2] = ["e2e.svc.cluster.local", "svc.cluster.local"];
/// resolv.conf options every test pod is configured with.
pub const DNS_OPTIONS: [&str; 2] = ["ndots:5", "timeout:2"];

/// Paths kubelet asks the runtime to mask (its default `ProcMount`).
pub const MASKED_PATHS: [&str; 11] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
/// Paths kubelet asks the runtime to make read-only.
pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Builds a `HashMap<String, String>` from pairs.
pub fn string_map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// An environment variable for `ContainerConfig.envs`.
pub fn env_var(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: value.into(),
    }
}

/// Namespace options kubelet sends for an ordinary pod: pod network and IPC,
/// a PID namespace per container.
pub fn pod_namespaces() -> NamespaceOption {
    NamespaceOption {
        network: NamespaceMode::Pod as i32,
        pid: NamespaceMode::Container as i32,
        ipc: NamespaceMode::Pod as i32,
        target_id: String::new(),
        userns_options: None,
    }
}

/// A pod config like kubelet's for pod `namespace/name` with `uid`.
///
/// `log_directory` must exist (kubelet makes `/var/log/pods/<ns>_<name>_<uid>`);
/// `cgroup_parent` is a cgroupfs path owned by the test.
pub fn pod_sandbox_config(
    name: &str,
    namespace: &str,
    uid: &str,
    log_directory: &Path,
    cgroup_parent: &str,
) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: uid.into(),
            namespace: namespace.into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: log_directory.to_string_lossy().into_owned(),
        dns_config: Some(DnsConfig {
            servers: DNS_SERVERS.map(String::from).to_vec(),
            searches: DNS_SEARCHES.map(String::from).to_vec(),
            options: DNS_OPTIONS.map(String::from).to_vec(),
        }),
        port_mappings: Vec::new(),
        labels: string_map(&[
            ("io.kubernetes.pod.name", name),
            ("io.kubernetes.pod.namespace", namespace),
            ("io.kubernetes.pod.uid", uid),
            ("app", name),
        ]),
        annotations: string_map(&[
            ("kubernetes.io/config.source", "api"),
            (
                "kubernetes.io/config.seen",
                "2024-01-01T00:00:00.000000000Z",
            ),
            (
                "e2e.crust.dev/free-text",
                "annotations are opaque: {\"json\": true}",
            ),
        ]),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: cgroup_parent.into(),
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(pod_namespaces()),
                ..Default::default()
            }),
            sysctls: HashMap::new(),
            overhead: None,
            resources: None,
        }),
        windows: None,
    }
}

/// A container config like kubelet's for container `name` of `pod`, running
/// `image` with the image's own entrypoint and command (set `command`/`args` to
/// override). The log goes to `<name>/0.log` under the pod's log directory; the
/// caller must create the `<name>` directory, as kubelet does.
pub fn container_config(pod: &PodSandboxConfig, name: &str, image: &str) -> ContainerConfig {
    let meta = pod.metadata.clone().unwrap_or_default();
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(image_spec(image)),
        log_path: format!("{name}/0.log"),
        labels: string_map(&[
            ("io.kubernetes.container.name", name),
            ("io.kubernetes.pod.name", &meta.name),
            ("io.kubernetes.pod.namespace", &meta.namespace),
            ("io.kubernetes.pod.uid", &meta.uid),
        ]),
        annotations: string_map(&[
            ("io.kubernetes.container.restartCount", "0"),
            (
                "io.kubernetes.container.terminationMessagePath",
                "/dev/termination-log",
            ),
            ("io.kubernetes.container.terminationMessagePolicy", "File"),
        ]),
        linux: Some(LinuxContainerConfig {
            resources: Some(LinuxContainerResources {
                cpu_period: 100_000,
                cpu_quota: 50_000,
                cpu_shares: 102,
                memory_limit_in_bytes: 128 * 1024 * 1024,
                oom_score_adj: 999,
                ..Default::default()
            }),
            security_context: Some(LinuxContainerSecurityContext {
                namespace_options: Some(pod_namespaces()),
                masked_paths: MASKED_PATHS.map(String::from).to_vec(),
                readonly_paths: READONLY_PATHS.map(String::from).to_vec(),
                ..Default::default()
            }),
        }),
        ..Default::default()
    }
}

/// Namespace options with the given modes for network, PID and IPC.
pub fn namespace_options(
    network: NamespaceMode,
    pid: NamespaceMode,
    ipc: NamespaceMode,
) -> NamespaceOption {
    NamespaceOption {
        network: network as i32,
        pid: pid as i32,
        ipc: ipc as i32,
        target_id: String::new(),
        userns_options: None,
    }
}

/// The pod's Linux security context, created empty if the config has none.
pub fn sandbox_security_mut(config: &mut PodSandboxConfig) -> &mut LinuxSandboxSecurityContext {
    config
        .linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
}

/// The container's Linux security context, created empty if the config has none.
pub fn security_mut(config: &mut ContainerConfig) -> &mut LinuxContainerSecurityContext {
    config
        .linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
}

/// The container's Linux resources, created empty if the config has none.
pub fn resources_mut(config: &mut ContainerConfig) -> &mut LinuxContainerResources {
    config
        .linux
        .get_or_insert_with(Default::default)
        .resources
        .get_or_insert_with(Default::default)
}
