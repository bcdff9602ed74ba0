//! Container and pod sandbox statistics for kubelet's stats provider, the
//! summary API and `crictl stats`: what each cgroup used, how fast it burns
//! CPU, what its writable layer holds, and what the pod's interfaces carried.

mod cpu_rate;

use std::sync::Arc;
use std::time::Duration;

use crate::container::{Container, ContainerFilter};
use crate::image::{FsUsage, LayersUsage, WritableLayers};
use crate::runtime::Runtime;
use crate::sandbox::{Sandbox, SandboxFilter, SandboxState};
use crate::sys::cgroup_usage::{CgroupUsage, UsageReader};
use crate::sys::link_stats::{self, InterfaceCounters};
use crate::{Result, clock};

use self::cpu_rate::CpuRates;

/// How long one walk of the containers' writable layers answers ImageFsInfo
/// and container stats. containerd refreshes its snapshot usage every 10 s
/// too; kubelet's eviction manager asks about that often, and its stats and
/// image GC in between.
pub const WRITABLE_LAYERS_MAX_AGE: Duration = Duration::from_secs(10);

/// What the statistics keep between calls: the cgroup reader chosen for this
/// host, the last CPU samples, and the cached walk of the writable layers.
pub(crate) struct StatsState {
    reader: Arc<dyn UsageReader>,
    cpu: CpuRates,
    layers: Arc<WritableLayers>,
}

impl StatsState {
    /// State for a runtime whose writable layers live under `layers_dir`.
    pub(crate) fn new(layers_dir: std::path::PathBuf, reader: Arc<dyn UsageReader>) -> StatsState {
        StatsState {
            reader,
            cpu: CpuRates::default(),
            layers: Arc::new(WritableLayers::new(layers_dir, WRITABLE_LAYERS_MAX_AGE)),
        }
    }
}

/// One container's figures.
#[derive(Clone, Debug)]
pub struct ContainerStats {
    /// The container (its id, metadata, labels and annotations).
    pub container: Container,
    /// When the figures were read, ns since the epoch.
    pub timestamp: i64,
    /// What its cgroup used; `None` when it has no cgroup (not created by
    /// runc yet, or already gone).
    pub usage: Option<CgroupUsage>,
    /// CPU use since the previous sample, in nanocores.
    pub nano_cores: Option<u64>,
    /// Its writable layer; `None` when it has none on disk.
    pub writable_layer: Option<FsUsage>,
}

/// One pod sandbox's figures.
#[derive(Clone, Debug)]
pub struct SandboxStats {
    /// The sandbox (its id, metadata, labels and annotations).
    pub sandbox: Sandbox,
    /// When the figures were read, ns since the epoch.
    pub timestamp: i64,
    /// What the pod used: its own cgroup when it has one, else the sum of its
    /// containers' cgroups; `None` when there is neither.
    pub usage: Option<CgroupUsage>,
    /// CPU use since the previous sample, in nanocores.
    pub nano_cores: Option<u64>,
    /// The counters of the pod's interfaces (`lo` left out); `None` for host
    /// network and sandboxes that are not ready.
    pub interfaces: Option<Vec<InterfaceCounters>>,
    /// Each of its containers.
    pub containers: Vec<ContainerStats>,
}

impl Runtime {
    /// The cached walk of the containers' writable layers, shared by
    /// ImageFsInfo and the container stats.
    pub fn writable_layers(&self) -> &Arc<WritableLayers> {
        &self.stats.layers
    }

    /// Whether the kernel's OOM killer killed a process in the cgroup at
    /// `cgroup_path`; a missing cgroup or counter reads as false.
    pub(crate) fn oom_killed(&self, cgroup_path: &str) -> bool {
        self.stats
            .reader
            .oom_kills(cgroup_path)
            .is_some_and(|n| n > 0)
    }

    /// ContainerStats: the figures of one container, by id or unique prefix.
    pub fn container_stats(&self, id: &str) -> Result<ContainerStats> {
        let c = self.container_status(id)?;
        let layers = self.stats.layers.usage()?;
        Ok(self.stats_of(c, &layers))
    }

    /// ListContainerStats: the figures of every container the filter
    /// matches, in every state.
    pub fn list_container_stats(&self, filter: &ContainerFilter) -> Result<Vec<ContainerStats>> {
        let containers = self.list_containers(filter);
        let layers = self.stats.layers.usage()?;
        let out = containers
            .into_iter()
            .map(|c| self.stats_of(c, &layers))
            .collect();
        self.forget_stale_samples();
        Ok(out)
    }

    /// PodSandboxStats: the figures of one pod sandbox, by id or unique prefix.
    pub fn sandbox_stats(&self, id: &str) -> Result<SandboxStats> {
        let sb = self.sandbox_status(id)?;
        let mut all = self.sandboxes_stats(vec![sb])?;
        all.pop()
            .ok_or_else(|| crate::Error::internal("no statistics for the pod sandbox"))
    }

    /// ListPodSandboxStats: the figures of every pod sandbox the filter
    /// matches, ready or not.
    pub fn list_sandbox_stats(&self, filter: &SandboxFilter) -> Result<Vec<SandboxStats>> {
        let out = self.sandboxes_stats(self.list_sandboxes(filter))?;
        self.forget_stale_samples();
        Ok(out)
    }

    fn sandboxes_stats(&self, sandboxes: Vec<Sandbox>) -> Result<Vec<SandboxStats>> {
        let layers = self.stats.layers.usage()?;
        let networked: Vec<_> = sandboxes
            .iter()
            .filter(|sb| sb.state == SandboxState::Ready)
            .filter_map(|sb| sb.netns.clone().map(|ns| (sb.id.clone(), ns)))
            .collect();
        let paths: Vec<_> = networked.iter().map(|(_, ns)| ns.clone()).collect();
        let mut interfaces: std::collections::HashMap<String, Vec<InterfaceCounters>> =
            Default::default();
        for ((id, _), read) in networked.into_iter().zip(link_stats::read_each(&paths)) {
            match read {
                Ok(links) => {
                    interfaces.insert(id, links);
                }
                Err(e) => {
                    tracing::debug!(%id, error = %e, "could not read the pod's interface counters");
                }
            }
        }
        Ok(sandboxes
            .into_iter()
            .map(|sb| {
                let containers: Vec<ContainerStats> = self
                    .list_containers(&ContainerFilter {
                        sandbox_id: sb.id.clone(),
                        ..Default::default()
                    })
                    .into_iter()
                    .map(|c| self.stats_of(c, &layers))
                    .collect();
                let timestamp = clock::now_ns();
                let usage = match pod_cgroup(&sb.config.cgroup_parent, &sb.config.uid) {
                    Some(path) => self.stats.reader.read(&path),
                    None => sum(containers.iter().filter_map(|c| c.usage)),
                };
                let nano_cores = usage
                    .and_then(|u| u.cpu_ns)
                    .and_then(|ns| self.stats.cpu.rate(&sb.id, ns, timestamp));
                SandboxStats {
                    interfaces: interfaces.remove(&sb.id),
                    sandbox: sb,
                    timestamp,
                    usage,
                    nano_cores,
                    containers,
                }
            })
            .collect())
    }

    fn stats_of(&self, c: Container, layers: &LayersUsage) -> ContainerStats {
        let timestamp = clock::now_ns();
        let usage = (!c.cgroup_path.is_empty())
            .then(|| self.stats.reader.read(&c.cgroup_path))
            .flatten();
        let nano_cores = usage
            .and_then(|u| u.cpu_ns)
            .and_then(|ns| self.stats.cpu.rate(&c.id, ns, timestamp));
        ContainerStats {
            writable_layer: layers.by_container.get(&c.id).cloned(),
            container: c,
            timestamp,
            usage,
            nano_cores,
        }
    }

    /// Drops the CPU samples of containers and sandboxes that are gone.
    fn forget_stale_samples(&self) {
        let containers = self.containers.read().unwrap_or_else(|p| p.into_inner());
        let sandboxes = self.sandboxes.read().unwrap_or_else(|p| p.into_inner());
        self.stats
            .cpu
            .retain(|id| containers.contains_key(id) || sandboxes.contains_key(id));
    }
}

/// The pod's own cgroup: its cgroup parent when kubelet made one for the pod
/// (kubelet names pod cgroups after the pod's UID: `pod<uid>`, or
/// `…-pod<uid_with_underscores>.slice` under systemd). A parent shared by
/// several pods (crust's default, `/` without kubelet's QoS cgroups) is not.
fn pod_cgroup(cgroup_parent: &str, uid: &str) -> Option<String> {
    let parent = cgroup_parent.trim_end_matches('/');
    if uid.is_empty() {
        return None;
    }
    let last = parent.rsplit('/').next()?;
    (last.contains(uid) || last.contains(&uid.replace('-', "_"))).then(|| parent.to_string())
}

/// The sum of several cgroups' usage; a figure is present when any of them
/// has it. The sum has no memory limit.
fn sum(usages: impl Iterator<Item = CgroupUsage>) -> Option<CgroupUsage> {
    let add = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) => Some(a.saturating_add(b)),
        (a, b) => a.or(b),
    };
    usages
        .map(|u| CgroupUsage {
            memory_limit_bytes: None,
            ..u
        })
        .reduce(|a, b| CgroupUsage {
            cpu_ns: add(a.cpu_ns, b.cpu_ns),
            memory_bytes: add(a.memory_bytes, b.memory_bytes),
            working_set_bytes: add(a.working_set_bytes, b.working_set_bytes),
            rss_bytes: add(a.rss_bytes, b.rss_bytes),
            memory_limit_bytes: None,
            page_faults: add(a.page_faults, b.page_faults),
            major_page_faults: add(a.major_page_faults, b.major_page_faults),
            swap_bytes: add(a.swap_bytes, b.swap_bytes),
            processes: add(a.processes, b.processes),
            oom_kills: add(a.oom_kills, b.oom_kills),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_cgroups_are_named_after_the_pod() {
        for (parent, own) in [
            ("/kubepods/burstable/pod1a2b-3c", true),
            ("/kubepods.slice/kubepods-burstable-pod1a2b_3c.slice", true),
            ("/kubepods/burstable/pod1a2b-3c/", true),
            ("/crust", false),
            ("/", false),
            ("", false),
        ] {
            assert_eq!(pod_cgroup(parent, "1a2b-3c").is_some(), own, "{parent}");
        }
    }

    #[test]
    fn sums_containers() {
        let a = CgroupUsage {
            cpu_ns: Some(5),
            memory_bytes: Some(10),
            memory_limit_bytes: Some(100),
            processes: Some(1),
            ..Default::default()
        };
        let b = CgroupUsage {
            cpu_ns: Some(7),
            memory_bytes: None,
            processes: Some(2),
            ..Default::default()
        };
        let s = sum([a, b].into_iter()).unwrap();
        assert_eq!(
            (s.cpu_ns, s.memory_bytes, s.processes),
            (Some(12), Some(10), Some(3))
        );
        assert_eq!(s.memory_limit_bytes, None);
        assert_eq!(sum(std::iter::empty()), None);
    }
}
