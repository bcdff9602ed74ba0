//! What a cgroup has used (CPU time, memory, page faults, swap, processes),
//! read from cgroupfs for container and pod statistics: one reader per cgroup
//! version behind one interface, chosen once at start.

use std::path::{Path, PathBuf};

use super::cgroup::counter;

/// Where the cgroup hierarchies are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// A v1 memory limit at or above this means "no limit" (the kernel reports
/// the largest page-aligned signed value).
const V1_UNLIMITED: u64 = 1 << 62;

/// One cgroup's usage; a figure its cgroup files do not give is `None`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupUsage {
    /// CPU time used, in nanoseconds, since the cgroup was made.
    pub cpu_ns: Option<u64>,
    /// Memory in use, page cache included.
    pub memory_bytes: Option<u64>,
    /// Memory in use minus inactive file pages, as kubelet's eviction counts it.
    pub working_set_bytes: Option<u64>,
    /// Anonymous memory (and swap cache).
    pub rss_bytes: Option<u64>,
    /// The memory limit, when there is one.
    pub memory_limit_bytes: Option<u64>,
    /// Page faults.
    pub page_faults: Option<u64>,
    /// Major page faults.
    pub major_page_faults: Option<u64>,
    /// Swap in use.
    pub swap_bytes: Option<u64>,
    /// Processes (tasks) in the cgroup.
    pub processes: Option<u64>,
    /// Processes the kernel's OOM killer killed in the cgroup.
    pub oom_kills: Option<u64>,
}

impl CgroupUsage {
    /// Memory a limited cgroup can still use before the limit: the limit
    /// minus the working set; `None` without a limit.
    pub fn available_bytes(&self) -> Option<u64> {
        Some(
            self.memory_limit_bytes?
                .saturating_sub(self.working_set_bytes?),
        )
    }
}

/// Reads a cgroup's usage by its cgroupfs path (`/crust/pod1/<id>`); `None`
/// when the cgroup does not exist (any more).
pub trait UsageReader: Send + Sync {
    /// The usage of the cgroup at `cgroup_path`.
    fn read(&self, cgroup_path: &str) -> Option<CgroupUsage>;

    /// Only the processes the OOM killer killed there (a container's exit
    /// reason needs no more).
    fn oom_kills(&self, cgroup_path: &str) -> Option<u64>;
}

/// The reader for this host's cgroups.
pub fn host_reader() -> Box<dyn UsageReader> {
    let root = PathBuf::from(CGROUP_ROOT);
    if super::process::cgroup_v2_only() {
        Box::new(V2 { root })
    } else {
        Box::new(V1 { root })
    }
}

/// cgroup v1: one hierarchy per controller (`cpuacct`, `memory`, `pids`).
pub struct V1 {
    /// Where the hierarchies are mounted.
    pub root: PathBuf,
}

/// cgroup v2: the unified hierarchy.
pub struct V2 {
    /// Where it is mounted.
    pub root: PathBuf,
}

fn read(dir: &Path, file: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(file)).ok()
}

fn number(dir: &Path, file: &str) -> Option<u64> {
    read(dir, file)?.trim().parse().ok()
}

/// Usage minus inactive file pages, never below zero.
fn working_set(usage: Option<u64>, inactive_file: Option<u64>) -> Option<u64> {
    Some(usage?.saturating_sub(inactive_file.unwrap_or(0)))
}

impl UsageReader for V1 {
    fn read(&self, cgroup_path: &str) -> Option<CgroupUsage> {
        let rel = cgroup_path.trim_start_matches('/');
        let memory = self.root.join("memory").join(rel);
        let cpu = self.root.join("cpuacct").join(rel);
        if !memory.is_dir() && !cpu.is_dir() {
            return None;
        }
        let stat = read(&memory, "memory.stat").unwrap_or_default();
        // The total_ figures include descendant cgroups (a pod's containers).
        let stat_of =
            |key: &str| counter(&stat, &format!("total_{key}")).or_else(|| counter(&stat, key));
        let usage = number(&memory, "memory.usage_in_bytes");
        let swap = match (number(&memory, "memory.memsw.usage_in_bytes"), usage) {
            (Some(both), Some(mem)) => Some(both.saturating_sub(mem)),
            _ => stat_of("swap"),
        };
        Some(CgroupUsage {
            cpu_ns: number(&cpu, "cpuacct.usage"),
            memory_bytes: usage,
            working_set_bytes: working_set(usage, stat_of("inactive_file")),
            rss_bytes: stat_of("rss"),
            memory_limit_bytes: number(&memory, "memory.limit_in_bytes")
                .filter(|&l| l < V1_UNLIMITED),
            page_faults: stat_of("pgfault"),
            major_page_faults: stat_of("pgmajfault"),
            swap_bytes: swap,
            processes: number(&self.root.join("pids").join(rel), "pids.current"),
            oom_kills: self.oom_kills(cgroup_path),
        })
    }

    fn oom_kills(&self, cgroup_path: &str) -> Option<u64> {
        let memory = self
            .root
            .join("memory")
            .join(cgroup_path.trim_start_matches('/'));
        counter(&read(&memory, "memory.oom_control")?, "oom_kill")
    }
}

impl UsageReader for V2 {
    fn read(&self, cgroup_path: &str) -> Option<CgroupUsage> {
        let dir = self.root.join(cgroup_path.trim_start_matches('/'));
        if !dir.is_dir() {
            return None;
        }
        let stat = read(&dir, "memory.stat").unwrap_or_default();
        let usage = number(&dir, "memory.current");
        let cpu = read(&dir, "cpu.stat").and_then(|s| counter(&s, "usage_usec"));
        Some(CgroupUsage {
            cpu_ns: cpu.map(|us| us.saturating_mul(1000)),
            memory_bytes: usage,
            working_set_bytes: working_set(usage, counter(&stat, "inactive_file")),
            rss_bytes: counter(&stat, "anon"),
            memory_limit_bytes: read(&dir, "memory.max").and_then(|m| m.trim().parse().ok()),
            page_faults: counter(&stat, "pgfault"),
            major_page_faults: counter(&stat, "pgmajfault"),
            swap_bytes: number(&dir, "memory.swap.current"),
            processes: number(&dir, "pids.current"),
            oom_kills: self.oom_kills(cgroup_path),
        })
    }

    fn oom_kills(&self, cgroup_path: &str) -> Option<u64> {
        let dir = self.root.join(cgroup_path.trim_start_matches('/'));
        counter(&read(&dir, "memory.events")?, "oom_kill")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory tree for captured cgroup files.
    fn tree(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("crust-cgroup-usage-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn put(dir: &Path, file: &str, text: &str) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(file), text).unwrap();
    }

    #[test]
    fn v2_reads_captured_files() {
        let root = tree("v2");
        let cg = root.join("crust/pod/c1");
        put(
            &cg,
            "cpu.stat",
            "usage_usec 1500000\nuser_usec 1000000\nsystem_usec 500000\n",
        );
        put(&cg, "memory.current", "73400320\n");
        // In the kernel's format, with the figures of a container that touched
        // 64 MiB (abbreviated: the reader ignores the other keys).
        put(
            &cg,
            "memory.stat",
            "anon 67633152\nfile 5242880\nkernel 524288\nactive_anon 67633152\ninactive_anon 0\n\
             active_file 1048576\ninactive_file 4194304\npgfault 16950\npgmajfault 3\n",
        );
        put(&cg, "memory.max", "134217728\n");
        put(&cg, "memory.swap.current", "0\n");
        put(&cg, "pids.current", "2\n");
        put(
            &cg,
            "memory.events",
            "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\noom_group_kill 0\n",
        );
        let u = V2 { root: root.clone() }.read("/crust/pod/c1").unwrap();
        assert_eq!(u.cpu_ns, Some(1_500_000_000));
        assert_eq!(u.memory_bytes, Some(73_400_320));
        assert_eq!(u.working_set_bytes, Some(73_400_320 - 4_194_304));
        assert_eq!(u.rss_bytes, Some(67_633_152));
        assert_eq!(u.memory_limit_bytes, Some(134_217_728));
        assert_eq!(
            u.available_bytes(),
            Some(134_217_728 - (73_400_320 - 4_194_304))
        );
        assert_eq!(
            (u.page_faults, u.major_page_faults),
            (Some(16_950), Some(3))
        );
        assert_eq!((u.swap_bytes, u.processes), (Some(0), Some(2)));
        assert_eq!(u.oom_kills, Some(1));

        // No limit, and a cgroup that is gone.
        put(&cg, "memory.max", "max\n");
        let u = V2 { root: root.clone() }.read("crust/pod/c1").unwrap();
        assert_eq!((u.memory_limit_bytes, u.available_bytes()), (None, None));
        assert_eq!(V2 { root: root.clone() }.read("/crust/pod/gone"), None);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn v1_reads_captured_files() {
        let root = tree("v1");
        let mem = root.join("memory/crust/pod/c1");
        put(
            &root.join("cpuacct/crust/pod/c1"),
            "cpuacct.usage",
            "2500000000\n",
        );
        put(&mem, "memory.usage_in_bytes", "10485760\n");
        put(&mem, "memory.memsw.usage_in_bytes", "11534336\n");
        put(&mem, "memory.limit_in_bytes", "9223372036854771712\n");
        put(
            &mem,
            "memory.stat",
            "cache 2097152\nrss 8388608\npgfault 900\npgmajfault 1\ninactive_file 1048576\n\
             total_cache 2097152\ntotal_rss 8388608\ntotal_pgfault 1200\ntotal_pgmajfault 2\n\
             total_inactive_file 2097152\ntotal_swap 1048576\n",
        );
        put(&root.join("pids/crust/pod/c1"), "pids.current", "3\n");
        put(
            &mem,
            "memory.oom_control",
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        );
        let u = V1 { root: root.clone() }.read("/crust/pod/c1").unwrap();
        assert_eq!(u.cpu_ns, Some(2_500_000_000));
        assert_eq!(u.memory_bytes, Some(10_485_760));
        assert_eq!(u.working_set_bytes, Some(10_485_760 - 2_097_152));
        assert_eq!(u.rss_bytes, Some(8_388_608));
        assert_eq!(
            u.memory_limit_bytes, None,
            "the kernel's huge value means no limit"
        );
        assert_eq!((u.page_faults, u.major_page_faults), (Some(1200), Some(2)));
        assert_eq!(u.swap_bytes, Some(1_048_576));
        assert_eq!(u.processes, Some(3));
        assert_eq!(u.oom_kills, Some(2));
        assert_eq!(V1 { root: root.clone() }.read("/crust/pod/gone"), None);
        assert_eq!(V1 { root: root.clone() }.oom_kills("/crust/pod/gone"), None);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn reads_this_hosts_own_cgroup() {
        // The reader chosen for this host reads the root cgroup's figures.
        let u = host_reader().read("/").expect("the root cgroup exists");
        assert!(u.memory_bytes.is_some() || u.cpu_ns.is_some(), "{u:?}");
    }
}
