//! The host's cgroups: which controllers can enforce a container's limits
//! (read once at start). Works on cgroup v1 (including the hybrid layout with
//! cgroup2 beside the v1 hierarchies) and on pure v2.

use std::path::{Path, PathBuf};

/// Where the cgroup hierarchies are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// What the host's cgroups can enforce: kubelet asks for limits of every
/// kind (hugepage limits for each page size it knows, for instance), and a
/// limit for a controller the host lacks would make runc refuse the
/// container, so such limits are dropped, as the CRI expects of a runtime.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupHost {
    /// Only the unified (v2) hierarchy is in use.
    pub v2: bool,
    /// CPU shares, quota and period (`cpu`).
    pub cpu: bool,
    /// CPU and memory-node pinning (`cpuset`).
    pub cpuset: bool,
    /// Memory limits (`memory`).
    pub memory: bool,
    /// Memory+swap limits (swap accounting of the memory controller).
    pub memory_swap: bool,
    /// Hugepage limits (`hugetlb`).
    pub hugetlb: bool,
}

impl CgroupHost {
    /// Reads the host: `/sys/fs/cgroup/cgroup.controllers` on a v2 host, else
    /// the v1 hierarchies mounted under `/sys/fs/cgroup`.
    pub fn detect() -> Self {
        let root = Path::new(CGROUP_ROOT);
        if super::process::cgroup_v2_only() {
            let controllers =
                std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
            Self::from_v2(&controllers, v2_swap_accounting(root))
        } else {
            Self::from_v1(
                |name| root.join(name).join("cgroup.procs").exists(),
                memory_v1(root).join("memory.memsw.limit_in_bytes").exists(),
            )
        }
    }

    /// A v2 host whose root `cgroup.controllers` reads `controllers`.
    fn from_v2(controllers: &str, swap_accounting: bool) -> Self {
        let has = |name: &str| controllers.split_whitespace().any(|c| c == name);
        Self {
            v2: true,
            cpu: has("cpu"),
            cpuset: has("cpuset"),
            memory: has("memory"),
            memory_swap: has("memory") && swap_accounting,
            hugetlb: has("hugetlb"),
        }
    }

    /// A v1 host on which `mounted(name)` tells whether controller `name`'s
    /// hierarchy is mounted.
    fn from_v1(mounted: impl Fn(&str) -> bool, memsw: bool) -> Self {
        Self {
            v2: false,
            cpu: mounted("cpu"),
            cpuset: mounted("cpuset"),
            memory: mounted("memory"),
            memory_swap: mounted("memory") && memsw,
            hugetlb: mounted("hugetlb"),
        }
    }

    /// The controllers this host lacks, each with the request fields that
    /// are dropped because of it.
    pub fn missing(&self) -> Vec<(&'static str, &'static str)> {
        [
            (self.cpu, "cpu", "CPU shares, quota and period"),
            (self.cpuset, "cpuset", "cpuset CPUs and memory nodes"),
            (self.memory, "memory", "memory limits"),
            (
                self.memory_swap || !self.memory,
                "memory swap accounting",
                "memory+swap limits",
            ),
            (self.hugetlb, "hugetlb", "hugepage limits"),
            (
                self.v2,
                "the unified hierarchy",
                "unified (cgroup v2) settings",
            ),
        ]
        .into_iter()
        .filter(|(present, _, _)| !present)
        .map(|(_, name, fields)| (name, fields))
        .collect()
    }
}

/// Swap accounting on a v2 host: `memory.swap.max` exists in every non-root
/// cgroup when it is on; crustd's own cgroup tells (the root has none of
/// these files, so a crustd in the root cgroup assumes it is on).
fn v2_swap_accounting(root: &Path) -> bool {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let path = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or("/")
        .trim_start_matches('/');
    path.is_empty() || root.join(path).join("memory.swap.max").exists()
}

fn memory_v1(root: &Path) -> PathBuf {
    root.join("memory")
}

/// The value of `key` in a flat-keyed cgroup file ("key value" per line).
pub(crate) fn counter(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_counters() {
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        assert_eq!(counter(v1, "oom_kill"), Some(2));
        let v2 = "low 0\nhigh 0\nmax 3\noom 1\noom_kill 0\n";
        assert_eq!(counter(v2, "oom_kill"), Some(0));
        assert_eq!(counter(v2, "missing"), None);
    }

    #[test]
    fn missing_controllers() {
        let hybrid = CgroupHost::from_v1(|name| name != "hugetlb", true);
        assert!(!hybrid.hugetlb && hybrid.memory_swap && !hybrid.v2);
        assert_eq!(
            hybrid.missing(),
            vec![
                ("hugetlb", "hugepage limits"),
                ("the unified hierarchy", "unified (cgroup v2) settings")
            ]
        );
        let v2 = CgroupHost::from_v2("cpuset cpu io memory hugetlb pids rdma misc", true);
        assert!(v2.missing().is_empty());
        let bare = CgroupHost::from_v2("cpu io pids", false);
        assert_eq!(
            bare.missing().iter().map(|m| m.0).collect::<Vec<_>>(),
            vec!["cpuset", "memory", "hugetlb"]
        );
    }
}
