//! Reading a container's cgroup: whether the kernel's OOM killer struck in it.
//! Works on cgroup v1 (the memory controller's hierarchy) and on v2.

use std::path::{Path, PathBuf};

/// Where the cgroup hierarchies are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// True when the OOM killer killed a process in the cgroup at `cgroup_path`
/// (a cgroupfs-style path such as `/kubepods/pod1/<id>`). A missing cgroup or
/// counter reads as false.
pub fn oom_killed(cgroup_path: &str) -> bool {
    let rel = cgroup_path.trim_start_matches('/');
    let root = Path::new(CGROUP_ROOT);
    let (file, key) = if super::process::cgroup_v2_only() {
        (root.join(rel).join("memory.events"), "oom_kill")
    } else {
        (
            memory_v1(root).join(rel).join("memory.oom_control"),
            "oom_kill",
        )
    };
    std::fs::read_to_string(file)
        .ok()
        .and_then(|text| counter(&text, key))
        .is_some_and(|n| n > 0)
}

fn memory_v1(root: &Path) -> PathBuf {
    root.join("memory")
}

/// The value of `key` in a flat-keyed cgroup file ("key value" per line).
fn counter(text: &str, key: &str) -> Option<u64> {
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
        assert!(!oom_killed("/no/such/cgroup/for/crust"));
    }
}
