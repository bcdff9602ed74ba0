//! The files a private containerd runs from: its config (temp root and state,
//! its own sockets, runc through io.containerd.runc.v2 on cgroupfs, the pause
//! image from the local registry, a loopback-only CNI setup) and the registry
//! host config that lets it pull over plain HTTP from `127.0.0.1:<port>`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The only CNI network the peer gets, so its RunPodSandbox does netns +
/// loopback like crust.
///
/// containerd 1.6 refuses a sandbox whose CNI result has no address for
/// `eth0` ("failed to find network info for sandbox"), so the loopback plugin
/// is followed by the `static` IPAM plugin, which configures nothing and only
/// reports `127.0.0.2/8`; go-cni files an address without an interface under
/// `eth0`. That costs containerd one more plugin exec per RunPodSandbox (and
/// its built-in `cni-loopback` network one more loopback exec).
pub const LOOPBACK_CONFLIST: &str = r#"{"cniVersion":"0.4.0","name":"lo","plugins":[{"type":"loopback"},{"type":"static","ipam":{"type":"static","addresses":[{"address":"127.0.0.2/8"}]}}]}"#;
/// Where Debian's containernetworking-plugins are.
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";
/// The containerd namespace the CRI plugin uses.
pub const CRI_NAMESPACE: &str = "k8s.io";

/// Paths under one containerd's private directory.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The private directory; everything below is removed at the end.
    pub dir: PathBuf,
}

impl Layout {
    /// `root`: content, snapshots, metadata.
    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }
    /// `state`: task bundles, sandbox files, pinned netns.
    pub fn state(&self) -> PathBuf {
        self.dir.join("state")
    }
    /// The gRPC (CRI) socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }
    /// The config file.
    pub fn config(&self) -> PathBuf {
        self.dir.join("config.toml")
    }
    /// containerd's captured output.
    pub fn log(&self) -> PathBuf {
        self.dir.join("containerd.log")
    }
    /// runc's `--root` (one subdirectory per containerd namespace).
    pub fn runc_root(&self) -> PathBuf {
        self.dir.join("runc")
    }
    /// Pod log directories.
    pub fn pod_logs(&self) -> PathBuf {
        self.dir.join("pods")
    }
    /// The CNI config directory (only the loopback conflist).
    pub fn cni_conf_dir(&self) -> PathBuf {
        self.dir.join("cni")
    }
    /// The registry hosts directory (`<host:port>/hosts.toml`).
    pub fn certs_dir(&self) -> PathBuf {
        self.dir.join("certs.d")
    }
    /// `blobs/sha256` of the content store.
    pub fn content_blobs(&self) -> PathBuf {
        self.root()
            .join("io.containerd.content.v1.content")
            .join("blobs")
            .join("sha256")
    }
}

/// Writes the config, CNI and registry host files for a containerd that pulls
/// from `registry` (`127.0.0.1:<port>`) and runs `pause` as the sandbox image.
pub fn write_files(layout: &Layout, registry: &str, pause: &str, runc: &Path) -> Result<()> {
    let host_dir = layout.certs_dir().join(registry);
    for dir in [
        layout.root(),
        layout.state(),
        layout.pod_logs(),
        layout.cni_conf_dir(),
        layout.dir.join("tmp"),
        host_dir.clone(),
    ] {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let files = [
        (layout.config(), config_toml(layout, pause, runc)),
        (
            layout.cni_conf_dir().join("10-loopback.conflist"),
            LOOPBACK_CONFLIST.to_string(),
        ),
        (host_dir.join("hosts.toml"), hosts_toml(registry)),
    ];
    for (path, text) in files {
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// containerd 1.6's config (version 2 schema). `restrict_oom_score_adj` keeps
/// the pause container's -998 from failing where root lacks CAP_SYS_RESOURCE
/// (as in some sandboxes). Its log level is `info`, like
/// crustd's in the benchmark, unless `CRUST_BENCH_CONTAINERD_LOG_LEVEL` says otherwise.
pub fn config_toml(layout: &Layout, pause: &str, runc: &Path) -> String {
    let p = |path: PathBuf| path.display().to_string();
    let cri = r#"plugins."io.containerd.grpc.v1.cri""#;
    format!(
        r#"version = 2
root = "{root}"
state = "{state}"
temp = "{tmp}"
oom_score = 0

[grpc]
  address = "{socket}"

[debug]
  level = "{log_level}"

[metrics]
  address = ""

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "{opt}"
  [{cri}]
    sandbox_image = "{pause}"
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    netns_mounts_under_state_dir = true
    restrict_oom_score_adj = true
    [{cri}.containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"
      [{cri}.containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [{cri}.containerd.runtimes.runc.options]
          BinaryName = "{runc}"
          Root = "{runc_root}"
          SystemdCgroup = false
    [{cri}.cni]
      bin_dir = "{CNI_BIN_DIR}"
      conf_dir = "{cni}"
      max_conf_num = 1
    [{cri}.registry]
      config_path = "{certs}"
"#,
        root = p(layout.root()),
        state = p(layout.state()),
        tmp = p(layout.dir.join("tmp")),
        socket = p(layout.socket()),
        opt = p(layout.dir.join("opt")),
        runc = runc.display(),
        runc_root = p(layout.runc_root()),
        cni = p(layout.cni_conf_dir()),
        certs = p(layout.certs_dir()),
        log_level =
            std::env::var("CRUST_BENCH_CONTAINERD_LOG_LEVEL").unwrap_or_else(|_| "info".into()),
    )
}

/// `hosts.toml` for a plain-HTTP registry at `registry` (`host:port`).
pub fn hosts_toml(registry: &str) -> String {
    format!(
        "server = \"http://{registry}\"\n\n[host.\"http://{registry}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_points_everything_into_the_private_dir() {
        let layout = Layout {
            dir: PathBuf::from("/tmp/x"),
        };
        let text = config_toml(
            &layout,
            "127.0.0.1:5000/pause:1.0",
            Path::new("/usr/sbin/runc"),
        );
        for needle in [
            r#"root = "/tmp/x/root""#,
            r#"address = "/tmp/x/containerd.sock""#,
            r#"sandbox_image = "127.0.0.1:5000/pause:1.0""#,
            "SystemdCgroup = false",
            r#"conf_dir = "/tmp/x/cni""#,
            r#"config_path = "/tmp/x/certs.d""#,
        ] {
            assert!(text.contains(needle), "{needle} missing from\n{text}");
        }
        assert!(hosts_toml("127.0.0.1:5000").contains("server = \"http://127.0.0.1:5000\""));
    }
}
