//! A description of the machine the figures were taken on.

use std::process::Command;

use serde_json::{Value, json};

use crate::requirements;

/// What the report says about the machine.
#[derive(Debug, Clone)]
pub struct Machine {
    /// CPUs this process may use.
    pub cpus: usize,
    /// The CPU model name from `/proc/cpuinfo`.
    pub cpu_model: String,
    /// `uname -r`.
    pub kernel: String,
    /// Total memory in MiB.
    pub memory_mib: u64,
    /// First line of `runc --version`.
    pub runc: String,
    /// `containerd --version`, if installed.
    pub containerd: Option<String>,
    /// `v1`, `hybrid` (v1 plus the unified v2 mount) or `v2`.
    pub cgroups: String,
    /// `/proc/loadavg` when the benchmark started.
    pub load_at_start: String,
}

impl Machine {
    /// Looks the machine over.
    pub fn describe() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Self {
            cpus: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            cpu_model: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
                .unwrap_or_else(|| "unknown".into()),
            kernel: nix::sys::utsname::uname()
                .map(|u| u.release().to_string_lossy().into_owned())
                .unwrap_or_else(|_| "unknown".into()),
            memory_mib: super::memory::field_kib(&meminfo, "MemTotal")
                .map(|kib| (kib / 1024.0) as u64)
                .unwrap_or_default(),
            runc: tool_version("runc").unwrap_or_else(|| "not found".into()),
            containerd: tool_version("containerd"),
            cgroups: cgroup_layout(),
            load_at_start: load_average(),
        }
    }

    /// The description as JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "cpus": self.cpus,
            "cpu_model": self.cpu_model,
            "kernel": self.kernel,
            "memory_mib": self.memory_mib,
            "runc": self.runc,
            "containerd": self.containerd,
            "cgroups": self.cgroups,
            "load_at_start": self.load_at_start,
        })
    }
}

/// `/proc/loadavg`, trimmed.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// First line of `<tool> --version`.
pub fn tool_version(tool: &str) -> Option<String> {
    let path = requirements::find_program(tool)?;
    let out = Command::new(path).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().next().map(|l| l.trim().to_string())
}

fn cgroup_layout() -> String {
    let hierarchies = crate::cgroups::hierarchies();
    let v1 = hierarchies
        .iter()
        .any(|h| h.starts_with("/sys/fs/cgroup/memory"));
    let unified = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    match (v1, unified) {
        (true, _) if hierarchies.iter().any(|h| h.ends_with("unified")) => "v1 (hybrid)".into(),
        (true, _) => "v1".into(),
        (false, true) => "v2".into(),
        _ => "unknown".into(),
    }
}
