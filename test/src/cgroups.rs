//! The cgroup trees a test makes (via `linux.cgroup_parent`), in every hierarchy:
//! cgroup v1 controllers, the hybrid `unified` mount, or a pure v2 host.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::mountinfo;

/// Mount points of all cgroup (v1) and cgroup2 hierarchies visible to this process.
pub fn hierarchies() -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = mountinfo::read()
        .unwrap_or_default()
        .into_iter()
        .filter(|m| m.fs_type == "cgroup" || m.fs_type == "cgroup2")
        .map(|m| m.mount_point)
        .collect();
    found.sort();
    found.dedup();
    found
}

/// The directories of `cgroup_parent` (a cgroupfs path such as `/crust-e2e-1-2`)
/// that exist, one per hierarchy.
pub fn tree_roots(cgroup_parent: &str) -> Vec<PathBuf> {
    let relative = cgroup_parent.trim_start_matches('/');
    if relative.is_empty() {
        return Vec::new();
    }
    hierarchies()
        .into_iter()
        .map(|h| h.join(relative))
        .filter(|p| p.is_dir())
        .collect()
}

/// Cgroup directories at least `min_depth` levels below `cgroup_parent`, in any
/// hierarchy (depth 1 = direct children).
pub fn descendants(cgroup_parent: &str, min_depth: usize) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for root in tree_roots(cgroup_parent) {
        found.extend(subdirs_deepest_first(&root).into_iter().filter(|dir| {
            dir.strip_prefix(&root)
                .is_ok_and(|rel| rel.components().count() >= min_depth)
        }));
    }
    found
}

/// Removes `cgroup_parent` and everything below it in every hierarchy, deepest
/// first. A cgroup that still holds processes after retries has them killed: a
/// test-unique cgroup only ever holds processes the test started. Returns a
/// description of what could not be removed.
pub fn remove_tree(cgroup_parent: &str) -> Vec<String> {
    let mut problems = Vec::new();
    for root in tree_roots(cgroup_parent) {
        for dir in subdirs_deepest_first(&root) {
            if let Err(e) = remove_one(&dir) {
                problems.push(format!("cgroup {}: {e}", dir.display()));
            }
        }
    }
    problems
}

/// `root` and every directory below it, deepest first.
fn subdirs_deepest_first(root: &Path) -> Vec<PathBuf> {
    let mut all = vec![root.to_path_buf()];
    let mut i = 0;
    while i < all.len() {
        if let Ok(entries) = std::fs::read_dir(&all[i]) {
            for entry in entries.flatten() {
                if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    all.push(entry.path());
                }
            }
        }
        i += 1;
    }
    all.reverse();
    all
}

fn remove_one(dir: &Path) -> std::io::Result<()> {
    let mut last = None;
    for attempt in 0..30 {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => last = Some(e),
        }
        if attempt == 10 {
            kill_members(dir);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("rmdir failed")))
}

/// SIGKILLs the processes still in `dir` (a cgroup of this test's own tree).
fn kill_members(dir: &Path) {
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        eprintln!(
            "crust-e2e: killing leaked process {pid} in cgroup {}",
            dir.display()
        );
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// The cgroups of process `pid` from `/proc/<pid>/cgroup`: pairs of the
/// controller list (`memory`, `cpu,cpuacct`, `name=systemd`; empty for the v2
/// unified hierarchy) and the cgroup path.
pub fn of_process(pid: i32) -> std::io::Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let _id = parts.next()?;
            let controllers = parts.next()?.to_string();
            let path = parts.next()?.to_string();
            Some((controllers, path))
        })
        .collect())
}

/// Whether the host runs the pure cgroup v2 layout (cgroup2 at /sys/fs/cgroup).
pub fn is_unified_only() -> bool {
    mountinfo::read()
        .unwrap_or_default()
        .iter()
        .any(|m| m.fs_type == "cgroup2" && m.mount_point == Path::new("/sys/fs/cgroup"))
}

/// The host path of `file` in the cgroup of process `pid` for v1 controller
/// `controller` (e.g. `memory`, `cpu`), or in its v2 cgroup when `controller`
/// is empty. Tries every mounted hierarchy and returns the first that has the file.
pub fn process_file(pid: i32, controller: &str, file: &str) -> Option<PathBuf> {
    let cgroups = of_process(pid).ok()?;
    let path = cgroups.iter().find_map(|(controllers, path)| {
        let matches = if controller.is_empty() {
            controllers.is_empty()
        } else {
            controllers.split(',').any(|c| c == controller)
        };
        matches.then(|| path.trim_start_matches('/').to_string())
    })?;
    hierarchies()
        .into_iter()
        .map(|h| h.join(&path).join(file))
        .find(|candidate| candidate.is_file())
}
