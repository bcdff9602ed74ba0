//! Container and pod sandbox statistics as CRI messages.

use crust_runtime::stats::{ContainerStats, SandboxStats};
use crust_runtime::sys::cgroup_usage::CgroupUsage;
use crust_runtime::sys::link_stats::InterfaceCounters;
use k8s_cri::v1;

use super::{container, image, sandbox, to_hash};

/// The interface CNI plugins create in a pod, reported as its default one.
const DEFAULT_INTERFACE: &str = "eth0";

fn value(v: Option<u64>) -> Option<v1::UInt64Value> {
    v.map(|value| v1::UInt64Value { value })
}

fn cpu(timestamp: i64, usage: &CgroupUsage, nano_cores: Option<u64>) -> Option<v1::CpuUsage> {
    usage.cpu_ns.map(|ns| v1::CpuUsage {
        timestamp,
        usage_core_nano_seconds: value(Some(ns)),
        usage_nano_cores: value(nano_cores),
    })
}

fn memory(timestamp: i64, u: &CgroupUsage) -> Option<v1::MemoryUsage> {
    u.memory_bytes.map(|_| v1::MemoryUsage {
        timestamp,
        working_set_bytes: value(u.working_set_bytes),
        available_bytes: value(u.available_bytes()),
        usage_bytes: value(u.memory_bytes),
        rss_bytes: value(u.rss_bytes),
        page_faults: value(u.page_faults),
        major_page_faults: value(u.major_page_faults),
    })
}

/// ContainerStats: figures only for what the container's cgroup and layer gave.
pub fn container_stats(s: &ContainerStats) -> v1::ContainerStats {
    let c = &s.container;
    let usage = s.usage.unwrap_or_default();
    v1::ContainerStats {
        attributes: Some(v1::ContainerAttributes {
            id: c.id.clone(),
            metadata: Some(container::metadata(c)),
            labels: to_hash(&c.config.labels),
            annotations: to_hash(&c.config.annotations),
        }),
        cpu: cpu(s.timestamp, &usage, s.nano_cores),
        memory: memory(s.timestamp, &usage),
        writable_layer: s.writable_layer.as_ref().map(image::fs_usage_to),
        swap: usage.swap_bytes.map(|swap| v1::SwapUsage {
            timestamp: s.timestamp,
            swap_available_bytes: None,
            swap_usage_bytes: value(Some(swap)),
        }),
    }
}

fn interface(i: &InterfaceCounters) -> v1::NetworkInterfaceUsage {
    v1::NetworkInterfaceUsage {
        name: i.name.clone(),
        rx_bytes: value(Some(i.rx_bytes)),
        rx_errors: value(Some(i.rx_errors)),
        tx_bytes: value(Some(i.tx_bytes)),
        tx_errors: value(Some(i.tx_errors)),
    }
}

/// PodSandboxStats: the pod's cgroup (or its containers' together), its
/// interfaces (`eth0` as the default one) and each container.
pub fn sandbox_stats(s: &SandboxStats) -> v1::PodSandboxStats {
    let sb = &s.sandbox;
    let usage = s.usage.unwrap_or_default();
    let network = s.interfaces.as_ref().map(|links| v1::NetworkUsage {
        timestamp: s.timestamp,
        default_interface: links
            .iter()
            .find(|l| l.name == DEFAULT_INTERFACE)
            .map(interface),
        interfaces: links
            .iter()
            .filter(|l| l.name != DEFAULT_INTERFACE)
            .map(interface)
            .collect(),
    });
    v1::PodSandboxStats {
        attributes: Some(v1::PodSandboxAttributes {
            id: sb.id.clone(),
            metadata: Some(sandbox::metadata(&sb.config)),
            labels: to_hash(&sb.config.labels),
            annotations: to_hash(&sb.config.annotations),
        }),
        linux: Some(v1::LinuxPodSandboxStats {
            cpu: cpu(s.timestamp, &usage, s.nano_cores),
            memory: memory(s.timestamp, &usage),
            network,
            process: usage.processes.map(|n| v1::ProcessUsage {
                timestamp: s.timestamp,
                process_count: value(Some(n)),
            }),
            containers: s.containers.iter().map(container_stats).collect(),
        }),
        windows: None,
    }
}
