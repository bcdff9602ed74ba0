//! Resources: CPU, cpuset, memory, hugepage and unified cgroup limits (those
//! of controllers the host lacks left out), the container's cgroup path,
//! and its oom_score_adj.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxHugepageLimitBuilder, LinuxMemoryBuilder, LinuxResources,
    LinuxResourcesBuilder,
};

use super::{SpecInput, devices, internal};
use crate::Result;
use crate::container::config::Resources;
use crate::sys::cgroup::CgroupHost;

/// The container's cgroup limits and device rules.
pub(super) fn resources(input: &SpecInput<'_>) -> Result<LinuxResources> {
    let mut res = limits(&input.config.resources, &input.host.cgroups)?;
    res.set_devices(Some(devices::cgroup_rules(input.config, input.host)?));
    Ok(res)
}

/// The cgroup limits of `r` that the host's controllers (`host`) can
/// enforce: what a container is created with, and what
/// UpdateContainerResources applies.
pub fn limits(r: &Resources, host: &CgroupHost) -> Result<LinuxResources> {
    let mut cpu = LinuxCpuBuilder::default();
    if host.cpu {
        if r.cpu_shares > 0 {
            cpu = cpu.shares(r.cpu_shares as u64);
        }
        if r.cpu_quota != 0 {
            cpu = cpu.quota(r.cpu_quota);
        }
        if r.cpu_period > 0 {
            cpu = cpu.period(r.cpu_period as u64);
        }
    }
    if host.cpuset {
        if !r.cpuset_cpus.is_empty() {
            cpu = cpu.cpus(r.cpuset_cpus.clone());
        }
        if !r.cpuset_mems.is_empty() {
            cpu = cpu.mems(r.cpuset_mems.clone());
        }
    }
    let mut memory = LinuxMemoryBuilder::default();
    if host.memory && r.memory_limit_in_bytes > 0 {
        memory = memory.limit(r.memory_limit_in_bytes);
    }
    if host.memory_swap && r.memory_swap_limit_in_bytes > 0 {
        memory = memory.swap(r.memory_swap_limit_in_bytes);
    }
    let hugepages = r
        .hugepage_limits
        .iter()
        .filter(|_| host.hugetlb)
        .map(|(size, limit)| {
            LinuxHugepageLimitBuilder::default()
                .page_size(size.clone())
                .limit(i64::try_from(*limit).unwrap_or(i64::MAX))
                .build()
                .map_err(internal)
        })
        .collect::<Result<Vec<_>>>()?;
    let mut b = LinuxResourcesBuilder::default()
        .cpu(cpu.build().map_err(internal)?)
        .memory(memory.build().map_err(internal)?);
    if !hugepages.is_empty() {
        b = b.hugepage_limits(hugepages);
    }
    if host.v2 && !r.unified.is_empty() {
        b = b.unified(r.unified.clone().into_iter().collect::<HashMap<_, _>>());
    }
    b.build().map_err(internal)
}

/// The container's cgroup: `<parent>/<id>`, the parent being the pod's or,
/// when it names none, the runtime's default.
pub(super) fn cgroups_path(input: &SpecInput<'_>) -> PathBuf {
    let parent = if input.sandbox.config.cgroup_parent.is_empty() {
        input.default_cgroup_parent
    } else {
        input.sandbox.config.cgroup_parent.as_str()
    };
    let parent = if parent.starts_with('/') {
        parent.to_string()
    } else {
        format!("/{parent}")
    };
    Path::new(&parent).join(input.id)
}

/// The process's oom_score_adj: the requested one, raised to the lowest the
/// runtime may give (`min`), within -1000..=1000; unset when neither is.
pub(super) fn oom_score_adj(requested: i64, min: Option<i64>) -> Option<i32> {
    if requested == 0 && min.is_none() {
        return None;
    }
    let mut adj = requested;
    if let Some(min) = min {
        adj = adj.max(min);
    }
    Some(adj.clamp(-1000, 1000) as i32)
}

#[cfg(test)]
mod tests {
    use oci_spec::runtime::Spec;

    use super::*;
    use crate::container::spec::fixtures::{
        FULL_V1, build_facts, build_on, build_with, config, facts, sandbox,
    };
    use crate::sys::cgroup::CgroupHost;

    #[test]
    fn limits_of_missing_controllers_are_dropped() {
        let mut c = config();
        c.resources.hugepage_limits = vec![("2MB".into(), 0), ("1GB".into(), 0)];
        c.resources.memory_limit_in_bytes = 64 << 20;
        c.resources.memory_swap_limit_in_bytes = 64 << 20;
        c.resources.cpu_shares = 512;
        c.resources.unified = [("memory.high".to_string(), "1000000".to_string())].into();
        let resources = |spec: &Spec| spec.linux().clone().unwrap().resources().clone().unwrap();

        let full = resources(&build_with(&c).unwrap());
        assert_eq!(full.hugepage_limits().as_ref().map(Vec::len), Some(2));
        assert_eq!(full.memory().as_ref().unwrap().swap(), Some(64 << 20));
        assert!(full.unified().is_none(), "unified keys are for v2 hosts");

        let no_hugetlb_no_swap = CgroupHost {
            hugetlb: false,
            memory_swap: false,
            ..FULL_V1
        };
        let r = resources(&build_on(&c, &no_hugetlb_no_swap).unwrap());
        assert!(r.hugepage_limits().is_none());
        let memory = r.memory().unwrap();
        assert_eq!((memory.limit(), memory.swap()), (Some(64 << 20), None));
        assert_eq!(r.cpu().as_ref().unwrap().shares(), Some(512));

        let v2 = CgroupHost {
            v2: true,
            ..FULL_V1
        };
        let r = resources(&build_on(&c, &v2).unwrap());
        assert_eq!(r.unified().as_ref().map(|u| u.len()), Some(1));
    }

    #[test]
    fn oom_score_adj_is_raised_to_the_runtimes_own() {
        assert_eq!(oom_score_adj(0, None), None);
        assert_eq!(oom_score_adj(0, Some(0)), Some(0));
        assert_eq!(oom_score_adj(-900, Some(-500)), Some(-500));
        assert_eq!(oom_score_adj(-900, None), Some(-900));
        assert_eq!(oom_score_adj(5000, Some(-999)), Some(1000));
        assert_eq!(oom_score_adj(-5000, None), Some(-1000));
    }

    #[test]
    fn the_cgroup_is_under_the_pods_parent_or_the_default() {
        let cgroups_path = |sb: &crate::sandbox::Sandbox| {
            let spec = build_facts(&config(), sb, &facts()).unwrap();
            spec.linux().as_ref().unwrap().cgroups_path().clone()
        };
        assert_eq!(
            cgroups_path(&sandbox()).as_deref(),
            Some(Path::new("/crust/cid"))
        );
        let mut sb = sandbox();
        sb.config.cgroup_parent = "kubepods/burstable".into();
        assert_eq!(
            cgroups_path(&sb).as_deref(),
            Some(Path::new("/kubepods/burstable/cid"))
        );
    }

    #[test]
    fn the_runtimes_own_oom_score_adj_applies_to_the_process() {
        let mut c = config();
        c.resources.oom_score_adj = -900;
        let mut host = facts();
        host.min_oom_score_adj = Some(-100);
        let spec = build_facts(&c, &sandbox(), &host).unwrap();
        assert_eq!(spec.process().as_ref().unwrap().oom_score_adj(), Some(-100));
        host.min_oom_score_adj = None;
        let spec = build_facts(&c, &sandbox(), &host).unwrap();
        assert_eq!(spec.process().as_ref().unwrap().oom_score_adj(), Some(-900));
    }
}
