//! Memory use of processes, read from `/proc/<pid>/status` (VmRSS) and
//! `/proc/<pid>/smaps_rollup` (Pss, and the private pages that make up USS).

use anyhow::{Context, Result};

/// One process's memory, in KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessMemory {
    /// Resident set size (`VmRSS`): every page mapped, shared ones in full.
    pub rss_kib: f64,
    /// Proportional set size: shared pages divided among their users.
    pub pss_kib: f64,
    /// Unique set size: pages only this process maps (private clean + dirty).
    pub uss_kib: f64,
}

impl ProcessMemory {
    /// Reads the memory of `pid`.
    pub fn of(pid: i32) -> Result<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("reading /proc/{pid}/status"))?;
        let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
            .with_context(|| format!("reading /proc/{pid}/smaps_rollup"))?;
        Ok(Self {
            rss_kib: field_kib(&status, "VmRSS").unwrap_or_default(),
            pss_kib: field_kib(&rollup, "Pss").unwrap_or_default(),
            uss_kib: field_kib(&rollup, "Private_Clean").unwrap_or_default()
                + field_kib(&rollup, "Private_Dirty").unwrap_or_default(),
        })
    }

    /// The resident memory of `pid` in MiB.
    pub fn rss_mib(pid: u32) -> Result<f64> {
        Ok(Self::of(pid as i32)?.rss_kib / 1024.0)
    }

    /// The sum of several processes' memory (e.g. a shim and a pause process).
    pub fn sum(items: impl IntoIterator<Item = ProcessMemory>) -> Self {
        items.into_iter().fold(Self::default(), |acc, m| Self {
            rss_kib: acc.rss_kib + m.rss_kib,
            pss_kib: acc.pss_kib + m.pss_kib,
            uss_kib: acc.uss_kib + m.uss_kib,
        })
    }

    /// The average of several measurements; `None` when there are none.
    pub fn mean(items: &[ProcessMemory]) -> Option<Self> {
        if items.is_empty() {
            return None;
        }
        let total = Self::sum(items.iter().copied());
        let n = items.len() as f64;
        Some(Self {
            rss_kib: total.rss_kib / n,
            pss_kib: total.pss_kib / n,
            uss_kib: total.uss_kib / n,
        })
    }
}

/// Reads the `<key>:   <n> kB` line of a `/proc` file, in KiB.
pub fn field_kib(text: &str, key: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Pids of the processes in the cgroup `cgroup_path` (a cgroupfs path such as
/// `/parent/pod<uid>/<id>`), read from the first hierarchy that has it.
pub fn cgroup_pids(cgroup_path: &str) -> Vec<i32> {
    crate::cgroups::tree_roots(cgroup_path)
        .into_iter()
        .find_map(|dir| std::fs::read_to_string(dir.join("cgroup.procs")).ok())
        .map(|text| text.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_kib_fields() {
        let text = "Rss:                1234 kB\nPss:                 567 kB\nPss_Anon:  1 kB\n";
        assert_eq!(field_kib(text, "Pss"), Some(567.0));
        assert_eq!(field_kib(text, "Rss"), Some(1234.0));
        assert_eq!(field_kib(text, "Swap"), None);
    }

    #[test]
    fn own_process_has_memory() {
        let me = ProcessMemory::of(std::process::id() as i32).unwrap();
        assert!(me.rss_kib > 0.0 && me.pss_kib > 0.0 && me.uss_kib > 0.0);
    }

    #[test]
    fn mean_of_two() {
        let a = ProcessMemory {
            rss_kib: 2.0,
            pss_kib: 4.0,
            uss_kib: 6.0,
        };
        let m = ProcessMemory::mean(&[a, ProcessMemory::default()]).unwrap();
        assert_eq!(m.pss_kib, 2.0);
        assert!(ProcessMemory::mean(&[]).is_none());
    }
}
