//! A standalone kubelet (no API server) in front of a test's crustd: static
//! pods from a manifest directory, its read-only API for what it thinks of
//! them, its authenticated API (anonymous, allow-all, loopback only) for
//! container logs, and its error lines.
//!
//! kubelet changes the host whatever its root directory: it sets kernel
//! parameters at start, makes `/var/lib/kubelet/device-plugins/kubelet.sock`
//! and links pod logs into `/var/log/containers`; and it mounts its root
//! directory onto itself. [`Kubelet`] notes what was there before and puts
//! it back when dropped.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};

use crate::network::free_port;
use crate::processes;

/// Kernel parameters kubelet sets at start (its `setupKernelTunables`).
const KERNEL_TUNABLES: [&str; 6] = [
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
];
/// Where kubelet's device plugin manager puts its socket, whatever its root.
const DEVICE_PLUGINS: &str = "/var/lib/kubelet/device-plugins";
/// Where kubelet links every container's log.
const CONTAINER_LOG_LINKS: &str = "/var/log/containers";

/// The ports a kubelet serves on 127.0.0.1.
#[derive(Debug, Clone, Copy)]
pub struct KubeletPorts {
    /// The authenticated API (TLS; anonymous access allowed here).
    pub api: u16,
    /// The read-only API (`/pods`).
    pub read_only: u16,
    /// `/healthz`.
    pub healthz: u16,
}

/// A running kubelet and the host state it changed.
#[derive(Debug)]
pub struct Kubelet {
    child: Mutex<Option<Child>>,
    /// Directory of kubelet's root, config, certificates and log.
    pub dir: PathBuf,
    /// The static pod manifest directory.
    pub manifests: PathBuf,
    /// Where kubelet keeps pod logs (its `podLogsDir`).
    pub pod_logs: PathBuf,
    /// kubelet's stderr.
    pub log: PathBuf,
    /// Its ports.
    pub ports: KubeletPorts,
    host: HostState,
    http: reqwest::Client,
}

/// What kubelet may change on the host, as it was before it started.
#[derive(Debug)]
struct HostState {
    tunables: Vec<(String, String)>,
    device_plugins_existed: bool,
    var_lib_kubelet_existed: bool,
    log_links_dir_existed: bool,
}

impl HostState {
    fn save() -> Self {
        Self {
            tunables: KERNEL_TUNABLES
                .iter()
                .filter_map(|t| {
                    let value = std::fs::read_to_string(format!("/proc/sys/{t}")).ok()?;
                    Some((t.to_string(), value.trim().to_string()))
                })
                .collect(),
            device_plugins_existed: Path::new(DEVICE_PLUGINS).exists(),
            var_lib_kubelet_existed: Path::new("/var/lib/kubelet").exists(),
            log_links_dir_existed: Path::new(CONTAINER_LOG_LINKS).exists(),
        }
    }

    /// Puts the host back; `pod_logs` is the directory whose links are ours.
    fn restore(&self, pod_logs: &Path) -> Vec<String> {
        let mut problems = Vec::new();
        for (tunable, value) in &self.tunables {
            let path = format!("/proc/sys/{tunable}");
            let now = std::fs::read_to_string(&path).unwrap_or_default();
            if now.trim() != value
                && let Err(e) = std::fs::write(&path, value)
            {
                problems.push(format!("restoring {path} to {value}: {e}"));
            }
        }
        let socket = Path::new(DEVICE_PLUGINS).join("kubelet.sock");
        if let Err(e) = std::fs::remove_file(&socket)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            problems.push(format!("removing {}: {e}", socket.display()));
        }
        if !self.var_lib_kubelet_existed {
            problems.extend(remove_tree("/var/lib/kubelet"));
        } else if !self.device_plugins_existed {
            problems.extend(remove_tree(DEVICE_PLUGINS));
        }
        problems.extend(remove_links_into(Path::new(CONTAINER_LOG_LINKS), pod_logs));
        if !self.log_links_dir_existed {
            let _ = std::fs::remove_dir(CONTAINER_LOG_LINKS);
        }
        problems
    }
}

fn remove_tree(dir: &str) -> Vec<String> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            vec![format!("removing {dir}: {e}")]
        }
        _ => Vec::new(),
    }
}

/// Removes the symlinks in `dir` that point below `target`.
fn remove_links_into(dir: &Path, target: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| std::fs::read_link(e.path()).is_ok_and(|to| to.starts_with(target)))
        .filter_map(|e| {
            std::fs::remove_file(e.path())
                .err()
                .map(|err| format!("removing {}: {err}", e.path().display()))
        })
        .collect()
}

impl Kubelet {
    /// Starts `binary` under `dir` against the CRI socket `socket`.
    pub fn start(binary: &Path, socket: &Path, dir: &Path) -> Result<Self> {
        let manifests = dir.join("manifests");
        let pod_logs = dir.join("pods");
        let root = dir.join("root");
        for d in [&manifests, &pod_logs, &root] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        let ports = KubeletPorts {
            api: free_port()?,
            read_only: free_port()?,
            healthz: free_port()?,
        };
        let endpoint = format!("unix://{}", socket.display());
        let config = json!({
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": "127.0.0.1",
            "port": ports.api,
            "readOnlyPort": ports.read_only,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": ports.healthz,
            "authentication": {"anonymous": {"enabled": true}, "webhook": {"enabled": false}},
            "authorization": {"mode": "AlwaysAllow"},
            "cgroupDriver": "cgroupfs",
            "cgroupsPerQOS": false,
            "enforceNodeAllocatable": [],
            "failSwapOn": false,
            "oomScoreAdj": 0,
            "staticPodPath": manifests,
            "fileCheckFrequency": "1s",
            "containerRuntimeEndpoint": endpoint,
            "imageServiceEndpoint": endpoint,
            "podLogsDir": pod_logs,
            "makeIPTablesUtilChains": false,
            // The customer's reading of crust's stats, metrics and events:
            // pod and container stats, /metrics/cadvisor and the pod
            // lifecycle all from the CRI.
            "featureGates": {"PodAndContainerStatsFromCRI": true, "EventedPLEG": true},
            // kubelet now sees real disk figures from crust's stats; the host
            // disk this kubelet shares with builds may be more than 85% full,
            // which must neither evict the test's pods nor collect its images.
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "nodefs.inodesFree": "1%",
                "imagefs.available": "1%",
                "imagefs.inodesFree": "1%",
            },
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
        });
        let config_path = dir.join("kubelet-config.json");
        std::fs::write(&config_path, serde_json::to_vec_pretty(&config)?)?;
        let log = dir.join("kubelet.log");
        let out = File::create(&log)?;
        let host = HostState::save();
        let child = Command::new(binary)
            .arg(format!("--config={}", config_path.display()))
            .arg(format!("--root-dir={}", root.display()))
            .arg(format!("--cert-dir={}", dir.join("pki").display()))
            .arg("--v=2")
            .env("PATH", crate::requirements::child_path())
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .danger_accept_invalid_certs(true)
            .timeout(Duration::from_secs(10))
            .build()?;
        Ok(Self {
            child: Mutex::new(Some(child)),
            dir: dir.to_path_buf(),
            manifests,
            pod_logs,
            log,
            ports,
            host,
            http,
        })
    }

    /// Whether kubelet still runs.
    pub fn is_running(&self) -> bool {
        self.child
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Whether kubelet's `/healthz` answers `ok`.
    pub async fn healthy(&self) -> bool {
        let url = format!("http://127.0.0.1:{}/healthz", self.ports.healthz);
        match self.http.get(url).send().await {
            Ok(r) => r.text().await.is_ok_and(|t| t.trim() == "ok"),
            Err(_) => false,
        }
    }

    /// The pods kubelet runs, with their status, from its read-only `/pods`.
    pub async fn pods(&self) -> Result<Vec<Value>> {
        let body = self.read_only("/pods").await?;
        let list: Value = serde_json::from_str(&body).context("kubelet's /pods is not JSON")?;
        Ok(list["items"].as_array().cloned().unwrap_or_default())
    }

    /// GET `path` (`/stats/summary`, `/metrics/cadvisor`...) on kubelet's
    /// read-only port.
    pub async fn read_only(&self, path: &str) -> Result<String> {
        let url = format!("http://127.0.0.1:{}{path}", self.ports.read_only);
        let response = self.http.get(url).send().await?;
        let status = response.status();
        let body = response.text().await?;
        ensure!(status.is_success(), "kubelet's {path}: {status} {body}");
        Ok(body)
    }

    /// The log of `container` in pod `namespace/pod` as kubelet serves it
    /// (`previous`: the attempt before the current one).
    pub async fn container_log(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        previous: bool,
    ) -> Result<String> {
        let url = format!(
            "https://127.0.0.1:{}/containerLogs/{namespace}/{pod}/{container}?previous={previous}",
            self.ports.api
        );
        let response = self.http.get(url).send().await?;
        let status = response.status();
        let body = response.text().await?;
        ensure!(
            status.is_success(),
            "kubelet's log of {namespace}/{pod}/{container}: {status} {body}"
        );
        Ok(body)
    }

    /// Writes pod `manifest` as `<name>.json` in the static pod directory.
    pub fn add_static_pod(&self, name: &str, manifest: &Value) -> Result<()> {
        let tmp = self.manifests.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, serde_json::to_vec_pretty(manifest)?)?;
        std::fs::rename(&tmp, self.manifests.join(format!("{name}.json")))?;
        Ok(())
    }

    /// Removes every static pod manifest.
    pub fn remove_static_pods(&self) -> Result<()> {
        for entry in std::fs::read_dir(&self.manifests)? {
            std::fs::remove_file(entry?.path())?;
        }
        Ok(())
    }

    /// kubelet's error lines so far (klog's `E` severity).
    pub fn error_lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| is_error_line(l))
            .map(String::from)
            .collect()
    }

    /// The last `n` lines of kubelet's log.
    pub fn log_tail(&self, n: usize) -> String {
        processes::log_tail(&self.log, n)
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        let child = self.child.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(child) = child {
            processes::stop_child(child, Duration::from_secs(10));
        }
        // kubelet bind-mounts its root directory onto itself (to make it shared).
        let mut problems = crate::cleanup::unmount_all_under(&self.dir);
        problems.extend(self.host.restore(&self.pod_logs));
        if !problems.is_empty() {
            eprintln!("crust-e2e: restoring the host after kubelet: {problems:#?}");
        }
    }
}

/// klog's error lines: `E` then the date, `E1128 07:16:07.731234 ...`.
pub fn is_error_line(line: &str) -> bool {
    let mut chars = line.chars();
    chars.next() == Some('E') && chars.take(4).all(|c| c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn klog_error_lines() {
        assert!(is_error_line(
            "E1128 07:16:07.731234   12345 kubelet.go:1] \"boom\""
        ));
        assert!(!is_error_line(
            "I1128 07:16:07.731234   12345 kubelet.go:1] \"fine\""
        ));
        assert!(!is_error_line("Error: something"));
    }
}
