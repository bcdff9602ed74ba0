//! The cAdvisor-compatible metric set that kubelet serves on
//! `/metrics/cadvisor` from ListMetricDescriptors and ListPodSandboxMetrics
//! when its `PodAndContainerStatsFromCRI` feature is on.
//!
//! kubelet reads the descriptors once, at its start, and turns each sample
//! into a Prometheus series of the descriptor's name with the label keys in
//! the descriptor's order; it adds no labels of its own, drops a sample
//! whose label values do not match the keys one for one, and needs every
//! value set. So: one static list, every sample built from it, names and
//! help as cAdvisor writes them, and the pod, namespace and container
//! labels dashboards expect carried by crust itself. The CRI values are
//! integers: seconds are whole seconds.

use crust_runtime::container::Container;
use crust_runtime::stats::{ContainerStats, SandboxStats};
use crust_runtime::sys::link_stats::InterfaceCounters;
use k8s_cri::v1;

/// Labels of every series, in this order.
const BASE_LABELS: [&str; 5] = ["id", "image", "namespace", "pod", "container"];

/// The `container` label of pod-level series, as cAdvisor names the pod's
/// infrastructure container.
const POD_CONTAINER: &str = "POD";

/// One metric of the set.
struct Def {
    name: &'static str,
    help: &'static str,
    /// Labels after [`BASE_LABELS`].
    extra: &'static [&'static str],
    gauge: bool,
}

const fn counter(name: &'static str, help: &'static str, extra: &'static [&'static str]) -> Def {
    Def {
        name,
        help,
        extra,
        gauge: false,
    }
}

const fn gauge(name: &'static str, help: &'static str) -> Def {
    Def {
        name,
        help,
        extra: &[],
        gauge: true,
    }
}

const CPU_USAGE: Def = counter(
    "container_cpu_usage_seconds_total",
    "Cumulative cpu time consumed in seconds.",
    &["cpu"],
);
const MEMORY_USAGE: Def = gauge(
    "container_memory_usage_bytes",
    "Current memory usage in bytes, including all memory regardless of when it was accessed",
);
const MEMORY_WORKING_SET: Def = gauge(
    "container_memory_working_set_bytes",
    "Current working set in bytes.",
);
const MEMORY_RSS: Def = gauge("container_memory_rss", "Size of RSS in bytes.");
const MEMORY_SWAP: Def = gauge("container_memory_swap", "Container swap usage in bytes.");
const MEMORY_FAILURES: Def = counter(
    "container_memory_failures_total",
    "Cumulative count of memory allocation failures.",
    &["failure_type", "scope"],
);
const OOM_EVENTS: Def = counter(
    "container_oom_events_total",
    "Count of out of memory events observed for the container",
    &[],
);
const MEMORY_LIMIT: Def = gauge(
    "container_spec_memory_limit_bytes",
    "Memory limit for the container.",
);
const FS_USAGE: Def = gauge(
    "container_fs_usage_bytes",
    "Number of bytes that are consumed by the container on this filesystem.",
);
const PROCESSES: Def = gauge(
    "container_processes",
    "Number of processes running inside the container.",
);
const START_TIME: Def = gauge(
    "container_start_time_seconds",
    "Start time of the container since unix epoch in seconds.",
);
const LAST_SEEN: Def = gauge(
    "container_last_seen",
    "Last time a container was seen by the exporter",
);
const RX_BYTES: Def = counter(
    "container_network_receive_bytes_total",
    "Cumulative count of bytes received",
    &["interface"],
);
const RX_PACKETS: Def = counter(
    "container_network_receive_packets_total",
    "Cumulative count of packets received",
    &["interface"],
);
const RX_DROPPED: Def = counter(
    "container_network_receive_packets_dropped_total",
    "Cumulative count of packets dropped while receiving",
    &["interface"],
);
const RX_ERRORS: Def = counter(
    "container_network_receive_errors_total",
    "Cumulative count of errors encountered while receiving",
    &["interface"],
);
const TX_BYTES: Def = counter(
    "container_network_transmit_bytes_total",
    "Cumulative count of bytes transmitted",
    &["interface"],
);
const TX_PACKETS: Def = counter(
    "container_network_transmit_packets_total",
    "Cumulative count of packets transmitted",
    &["interface"],
);
const TX_DROPPED: Def = counter(
    "container_network_transmit_packets_dropped_total",
    "Cumulative count of packets dropped while transmitting",
    &["interface"],
);
const TX_ERRORS: Def = counter(
    "container_network_transmit_errors_total",
    "Cumulative count of errors encountered while transmitting",
    &["interface"],
);

/// Every metric crust reports: the descriptors kubelet reads at its start.
const ALL: [&Def; 20] = [
    &CPU_USAGE,
    &MEMORY_USAGE,
    &MEMORY_WORKING_SET,
    &MEMORY_RSS,
    &MEMORY_SWAP,
    &MEMORY_FAILURES,
    &OOM_EVENTS,
    &MEMORY_LIMIT,
    &FS_USAGE,
    &PROCESSES,
    &START_TIME,
    &LAST_SEEN,
    &RX_BYTES,
    &RX_PACKETS,
    &RX_DROPPED,
    &RX_ERRORS,
    &TX_BYTES,
    &TX_PACKETS,
    &TX_DROPPED,
    &TX_ERRORS,
];

/// ListMetricDescriptors: the whole set, the same on every call.
pub fn descriptors() -> Vec<v1::MetricDescriptor> {
    ALL.iter()
        .map(|d| v1::MetricDescriptor {
            name: d.name.to_string(),
            help: d.help.to_string(),
            label_keys: BASE_LABELS
                .iter()
                .chain(d.extra)
                .map(|k| k.to_string())
                .collect(),
        })
        .collect()
}

/// Builds the samples of one series family with fixed base label values.
struct Samples {
    base: Vec<String>,
    out: Vec<v1::Metric>,
}

impl Samples {
    fn new(base: [&str; 5]) -> Samples {
        Samples {
            base: base.iter().map(|v| v.to_string()).collect(),
            out: Vec::new(),
        }
    }

    /// One sample of `def` with values for its extra labels; nothing when
    /// the value is unknown.
    fn add(&mut self, def: &Def, extra: &[&str], value: Option<u64>) {
        let Some(value) = value else {
            return;
        };
        debug_assert_eq!(extra.len(), def.extra.len(), "{}", def.name);
        let mut label_values = self.base.clone();
        label_values.extend(extra.iter().map(|v| v.to_string()));
        self.out.push(v1::Metric {
            name: def.name.to_string(),
            timestamp: 0,
            metric_type: if def.gauge {
                v1::MetricType::Gauge
            } else {
                v1::MetricType::Counter
            } as i32,
            label_values,
            value: Some(v1::UInt64Value { value }),
        });
    }
}

/// Whole seconds of a nanosecond figure.
fn seconds(ns: i64) -> u64 {
    u64::try_from(ns / 1_000_000_000).unwrap_or(0)
}

fn container_metrics(pod: &SandboxStats, s: &ContainerStats, now_s: u64) -> v1::ContainerMetrics {
    let c: &Container = &s.container;
    let cfg = &pod.sandbox.config;
    let mut m = Samples::new([
        &c.id,
        &c.image_name,
        &cfg.namespace,
        &cfg.name,
        &c.config.name,
    ]);
    let u = s.usage.unwrap_or_default();
    m.add(
        &CPU_USAGE,
        &["total"],
        u.cpu_ns.map(|ns| ns / 1_000_000_000),
    );
    m.add(&MEMORY_USAGE, &[], u.memory_bytes);
    m.add(&MEMORY_WORKING_SET, &[], u.working_set_bytes);
    m.add(&MEMORY_RSS, &[], u.rss_bytes);
    m.add(&MEMORY_SWAP, &[], u.swap_bytes);
    m.add(&MEMORY_FAILURES, &["pgfault", "container"], u.page_faults);
    m.add(
        &MEMORY_FAILURES,
        &["pgmajfault", "container"],
        u.major_page_faults,
    );
    m.add(&OOM_EVENTS, &[], u.oom_kills);
    if s.usage.is_some() {
        m.add(&MEMORY_LIMIT, &[], Some(u.memory_limit_bytes.unwrap_or(0)));
    }
    m.add(
        &FS_USAGE,
        &[],
        s.writable_layer.as_ref().map(|l| l.used_bytes),
    );
    m.add(&PROCESSES, &[], u.processes);
    m.add(&START_TIME, &[], Some(seconds(c.created_at)));
    m.add(&LAST_SEEN, &[], Some(now_s));
    v1::ContainerMetrics {
        container_id: c.id.clone(),
        metrics: m.out,
    }
}

fn interface_metrics(m: &mut Samples, i: &InterfaceCounters) {
    let name = [i.name.as_str()];
    for (def, value) in [
        (&RX_BYTES, i.rx_bytes),
        (&RX_PACKETS, i.rx_packets),
        (&RX_DROPPED, i.rx_dropped),
        (&RX_ERRORS, i.rx_errors),
        (&TX_BYTES, i.tx_bytes),
        (&TX_PACKETS, i.tx_packets),
        (&TX_DROPPED, i.tx_dropped),
        (&TX_ERRORS, i.tx_errors),
    ] {
        m.add(def, &name, Some(value));
    }
}

/// One pod's metrics: its interfaces at pod level, the rest for each
/// running container.
pub fn pod_metrics(s: &SandboxStats) -> v1::PodSandboxMetrics {
    let now_s = seconds(crust_runtime::clock::now_ns());
    let cfg = &s.sandbox.config;
    let mut pod = Samples::new([&s.sandbox.id, "", &cfg.namespace, &cfg.name, POD_CONTAINER]);
    for i in s.interfaces.iter().flatten() {
        interface_metrics(&mut pod, i);
    }
    v1::PodSandboxMetrics {
        pod_sandbox_id: s.sandbox.id.clone(),
        metrics: pod.out,
        container_metrics: s
            .containers
            .iter()
            .filter(|c| c.usage.is_some())
            .map(|c| container_metrics(s, c, now_s))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_are_unique_valid_prometheus_names() {
        let all = descriptors();
        let mut names: Vec<&str> = all.iter().map(|d| d.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), all.len(), "duplicate names");
        let valid = |s: &str| {
            !s.is_empty()
                && !s.starts_with(|c: char| c.is_ascii_digit())
                && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        };
        for d in &all {
            assert!(valid(&d.name), "{}", d.name);
            assert!(!d.help.is_empty(), "{}", d.name);
            let mut keys = d.label_keys.clone();
            keys.sort();
            keys.dedup();
            assert_eq!(keys.len(), d.label_keys.len(), "{}", d.name);
            assert!(d.label_keys.iter().all(|k| valid(k)), "{}", d.name);
        }
    }
}
