//! The catalogue of metric keys, in the order the report prints them, with the
//! label and unit each is shown with.

/// Whether a metric is a latency (p50/p99 in ms) or a memory figure (KiB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Repeated timings, shown as p50 and p99 in milliseconds.
    Latency,
    /// One figure in KiB, shown in MiB.
    Memory,
}

/// One row (two for latencies) of the report.
#[derive(Debug, Clone, Copy)]
pub struct MetricDef {
    /// The key results are stored under.
    pub key: &'static str,
    /// What the row is called in the table.
    pub label: &'static str,
    /// Latency or memory.
    pub kind: Kind,
}

const fn latency(key: &'static str, label: &'static str) -> MetricDef {
    MetricDef {
        key,
        label,
        kind: Kind::Latency,
    }
}

const fn memory(key: &'static str, label: &'static str) -> MetricDef {
    MetricDef {
        key,
        label,
        kind: Kind::Memory,
    }
}

/// Cold PullImage of the one-layer busybox image.
pub const PULL_BUSYBOX: &str = "pull_busybox_cold";
/// Cold PullImage of the three-layer `layered` image.
pub const PULL_LAYERED: &str = "pull_layered_cold";
/// Cold PullImage of the first big image (5 layers, about 100 MiB of random bytes).
pub const PULL_BIG_COLD: &str = "pull_big_cold";
/// PullImage of the second big image with 4 of its 5 layers present.
pub const PULL_BIG_SHARED: &str = "pull_big_shared";
/// RunPodSandbox.
pub const RUN_POD: &str = "run_pod_sandbox";
/// CreateContainer alone.
pub const CREATE: &str = "create_container";
/// StartContainer alone.
pub const START: &str = "start_container";
/// CreateContainer + StartContainer.
pub const CREATE_START: &str = "create_start_container";
/// StopContainer(timeout 0) + RemoveContainer.
pub const STOP_REMOVE_CONTAINER: &str = "stop_remove_container";
/// StopContainer(timeout 0) alone.
pub const STOP_CONTAINER: &str = "stop_container";
/// RemoveContainer alone, right after its StopContainer.
pub const REMOVE_CONTAINER: &str = "remove_container";
/// StopPodSandbox + RemovePodSandbox.
pub const STOP_REMOVE_POD: &str = "stop_remove_pod_sandbox";
/// Floor only: `ip netns add` + `ip -n <ns> link set lo up`.
pub const IP_NETNS_ADD: &str = "ip_netns_add_lo_up";
/// Floor only: `ip netns del`.
pub const IP_NETNS_DEL: &str = "ip_netns_del";

/// Daemon VmRSS right after it started serving.
pub const DAEMON_RSS_IDLE: &str = "daemon_rss_idle";
/// Daemon Pss right after it started serving.
pub const DAEMON_PSS_IDLE: &str = "daemon_pss_idle";
/// Daemon USS right after it started serving.
pub const DAEMON_USS_IDLE: &str = "daemon_uss_idle";
/// Daemon VmRSS after the pulls and the warm-up round, before the N pods.
pub const DAEMON_RSS_WARM: &str = "daemon_rss_warm";
/// Daemon Pss after the pulls and the warm-up round, before the N pods.
pub const DAEMON_PSS_WARM: &str = "daemon_pss_warm";
/// Daemon USS after the pulls and the warm-up round, before the N pods.
pub const DAEMON_USS_WARM: &str = "daemon_uss_warm";
/// Daemon VmRSS with all N pods running.
pub const DAEMON_RSS_RUNNING: &str = "daemon_rss_running";
/// Daemon Pss with all N pods running.
pub const DAEMON_PSS_RUNNING: &str = "daemon_pss_running";
/// Daemon USS with all N pods running.
pub const DAEMON_USS_RUNNING: &str = "daemon_uss_running";
/// Daemon VmRSS after every pod was removed.
pub const DAEMON_RSS_AFTER: &str = "daemon_rss_after";
/// Daemon Pss after every pod was removed.
pub const DAEMON_PSS_AFTER: &str = "daemon_pss_after";
/// Daemon USS after every pod was removed.
pub const DAEMON_USS_AFTER: &str = "daemon_uss_after";
/// Daemon VmRSS after the big-image pulls (and their removal).
pub const DAEMON_RSS_AFTER_BIG: &str = "daemon_rss_after_big_pulls";
/// (daemon RSS with N running - after warm-up) / N.
pub const DAEMON_RSS_PER_POD: &str = "daemon_rss_growth_per_pod";
/// Per running container: total shim VmRSS / workload containers.
pub const PER_CONTAINER_RSS: &str = "per_container_rss";
/// Per running container: total shim Pss / workload containers.
pub const PER_CONTAINER_PSS: &str = "per_container_pss";
/// Per running container: total shim USS / workload containers.
pub const PER_CONTAINER_USS: &str = "per_container_uss";
/// Per pod: shims plus pod infrastructure processes (pause) (VmRSS).
pub const PER_POD_RSS: &str = "per_pod_rss";
/// ExecSync of `true` in a running container.
pub const EXEC_SYNC: &str = "exec_sync_true";
/// Exec of `true` streamed over SPDY: the Exec RPC, the upgrade, and the
/// session until its exit status arrives.
pub const EXEC_STREAMED: &str = "exec_streamed_true";
/// Per pod: shims plus pod infrastructure processes (pause) (Pss).
pub const PER_POD_PSS: &str = "per_pod_pss";
/// ListContainerStats with the N workload containers running.
pub const LIST_CONTAINER_STATS: &str = "list_container_stats";
/// ListPodSandboxStats with the N workload pods running.
pub const LIST_POD_STATS: &str = "list_pod_sandbox_stats";
/// ListContainers (no filter) with the N workload containers running.
pub const LIST_CONTAINERS: &str = "list_containers";
/// ListPodSandbox (no filter) with the N workload pods running.
pub const LIST_PODS: &str = "list_pod_sandbox";
/// ContainerStatus of one of the N running containers.
pub const CONTAINER_STATUS: &str = "container_status";
/// PodSandboxStatus of one of the N running pods.
pub const POD_STATUS: &str = "pod_sandbox_status";

/// Every metric, in report order.
pub const ALL: &[MetricDef] = &[
    latency(RUN_POD, "RunPodSandbox"),
    latency(CREATE_START, "CreateContainer+StartContainer"),
    latency(CREATE, "  CreateContainer"),
    latency(START, "  StartContainer"),
    latency(STOP_REMOVE_CONTAINER, "StopContainer(0)+RemoveContainer"),
    latency(STOP_CONTAINER, "  StopContainer(0)"),
    latency(REMOVE_CONTAINER, "  RemoveContainer"),
    latency(STOP_REMOVE_POD, "StopPodSandbox+RemovePodSandbox"),
    latency(EXEC_SYNC, "ExecSync true"),
    latency(EXEC_STREAMED, "Exec true, streamed (SPDY, to exit status)"),
    latency(
        LIST_CONTAINER_STATS,
        "ListContainerStats, N containers running",
    ),
    latency(LIST_POD_STATS, "ListPodSandboxStats, N pods running"),
    latency(LIST_CONTAINERS, "ListContainers, N containers running"),
    latency(LIST_PODS, "ListPodSandbox, N pods running"),
    latency(CONTAINER_STATUS, "ContainerStatus, N containers running"),
    latency(POD_STATUS, "PodSandboxStatus, N pods running"),
    latency(PULL_BUSYBOX, "PullImage busybox, cold (1 layer)"),
    latency(PULL_LAYERED, "PullImage layered, cold (3 layers)"),
    latency(PULL_BIG_COLD, "PullImage big, cold (5 layers, 100 MiB)"),
    latency(PULL_BIG_SHARED, "PullImage big, 4 of 5 layers present"),
    latency(IP_NETNS_ADD, "ip netns add + lo up (floor alt.)"),
    latency(IP_NETNS_DEL, "ip netns del (floor alt.)"),
    memory(DAEMON_RSS_IDLE, "daemon RSS, idle after start"),
    memory(DAEMON_PSS_IDLE, "daemon PSS, idle after start"),
    memory(DAEMON_RSS_WARM, "daemon RSS, after pulls + warm-up"),
    memory(DAEMON_PSS_WARM, "daemon PSS, after pulls + warm-up"),
    memory(DAEMON_RSS_RUNNING, "daemon RSS, N pods running"),
    memory(DAEMON_PSS_RUNNING, "daemon PSS, N pods running"),
    memory(DAEMON_RSS_AFTER, "daemon RSS, after the runs"),
    memory(DAEMON_PSS_AFTER, "daemon PSS, after the runs"),
    memory(DAEMON_RSS_AFTER_BIG, "daemon RSS, after the big pulls"),
    memory(DAEMON_RSS_PER_POD, "daemon RSS growth per running pod"),
    memory(PER_CONTAINER_RSS, "per-container RSS (shim)"),
    memory(PER_CONTAINER_PSS, "per-container PSS (shim)"),
    memory(PER_CONTAINER_USS, "per-container USS (shim)"),
    memory(PER_POD_RSS, "per-pod RSS (shim + pause)"),
    memory(PER_POD_PSS, "per-pod PSS (shim + pause)"),
];
