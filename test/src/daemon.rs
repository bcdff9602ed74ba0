//! The crustd child process of one test: private root, state dir, socket and
//! config in a temporary directory, its output captured to a log file, and a
//! Drop guard that removes everything it made even when the test failed.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use crate::binaries::{self, Binaries};
use crate::cri_client::CriClient;
use crate::{cgroups, cleanup, processes, requirements, unique};

/// How long crustd may take to serve its socket after being started.
pub const STARTUP_LIMIT: Duration = Duration::from_secs(30);
/// crustd's `--log-level` (an EnvFilter directive) unless `CRUST_E2E_LOG_LEVEL`
/// says otherwise: crust's own debug output without the HTTP/2 frame noise.
pub const DEFAULT_LOG_LEVEL: &str =
    "debug,h2=info,hyper=info,hyper_util=info,tower=info,tonic=info";
/// How many lines of the crustd log are printed when a test fails.
const LOG_TAIL_LINES: usize = 80;

/// Where one test's crustd keeps everything.
#[derive(Debug, Clone)]
pub struct DaemonPaths {
    /// The test's temporary directory; everything below is removed at the end.
    pub base: PathBuf,
    /// `--root`: images, metadata, container upper dirs.
    pub root: PathBuf,
    /// `--state`: runc root, bundles, pinned namespaces.
    pub state: PathBuf,
    /// `--socket`: the CRI unix socket.
    pub socket: PathBuf,
    /// `--config`: written by the harness, so no host config leaks in.
    pub config: PathBuf,
    /// The `[image] config_path` directory (registry hosts.toml files).
    pub certs_d: PathBuf,
    /// The `[cni] conf_dirs` directory; starts with a loopback-only network.
    pub net_d: PathBuf,
    /// A `[cni] plugin_dirs` entry of the test's own (searched after the
    /// system ones), for plugins a test scripts itself; starts empty.
    pub cni_bin: PathBuf,
    /// crustd's captured stdout and stderr, across restarts.
    pub log: PathBuf,
    /// Where the test's pods get their log directories (like /var/log/pods).
    pub pod_logs: PathBuf,
}

impl DaemonPaths {
    fn new(base: PathBuf) -> Self {
        Self {
            root: base.join("root"),
            state: base.join("state"),
            socket: base.join("crust.sock"),
            config: base.join("config.toml"),
            certs_d: base.join("certs.d"),
            net_d: base.join("net.d"),
            cni_bin: base.join("cni-bin"),
            log: base.join("crustd.log"),
            pod_logs: base.join("pods"),
            base,
        }
    }
}

/// A running (or deliberately killed) crustd owned by one test.
#[derive(Debug)]
pub struct Daemon {
    paths: DaemonPaths,
    binaries: Binaries,
    cgroup_parent: String,
    child: Option<Child>,
    starts: u32,
    failed: bool,
}

impl Daemon {
    /// Makes a fresh temporary directory for test `name`, starts crustd in it
    /// and waits until it answers CRI calls.
    pub async fn start(name: &str) -> Result<Self> {
        let binaries = binaries::locate()?;
        let suffix = unique::suffix();
        let base_parent = std::env::var_os("CRUST_E2E_TMPDIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let base = base_parent.join(format!("crust-e2e-{suffix}-{}", unique::slug(name, 24)));
        let paths = DaemonPaths::new(base);
        for dir in [
            &paths.base,
            &paths.root,
            &paths.state,
            &paths.pod_logs,
            &paths.certs_d,
            &paths.net_d,
            &paths.cni_bin,
        ] {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(paths.net_d.join(LOOPBACK_NETWORK_FILE), LOOPBACK_NETWORK)
            .context("writing the default CNI network")?;
        let cgroup_parent = format!("/crust-e2e-{suffix}");
        write_config(&paths, &cgroup_parent, "", "", "")?;
        let mut daemon = Self {
            paths,
            binaries,
            cgroup_parent,
            child: None,
            starts: 0,
            failed: false,
        };
        daemon.launch().await?;
        Ok(daemon)
    }

    /// The daemon's directories and socket.
    pub fn paths(&self) -> &DaemonPaths {
        &self.paths
    }

    /// The cgroupfs path under which this test's pods put their cgroups.
    pub fn cgroup_parent(&self) -> &str {
        &self.cgroup_parent
    }

    /// The crustd pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Returns whether crustd is running (reaping it if it exited).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => {
                self.child = None;
                false
            }
            None => false,
        }
    }

    /// SIGKILLs crustd and reaps it, leaving its shims, containers and state behind.
    pub async fn kill_9(&mut self) -> Result<()> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| anyhow!("crustd is not running"))?;
        child.kill().context("SIGKILL crustd")?;
        let status = child.wait()?;
        self.log_marker(&format!("crustd killed with SIGKILL ({status})"));
        Ok(())
    }

    /// Starts crustd again on the same root, state and socket (SIGKILLing the
    /// running one first, if any) and waits until it answers.
    pub async fn restart(&mut self) -> Result<()> {
        if self.is_running() {
            self.kill_9().await?;
        }
        self.launch().await
    }

    /// Rewrites crustd's config with `image_keys` (TOML lines for the `[image]`
    /// table, e.g. `pinned_images = ["..."]`) and restarts it on the same state.
    pub async fn reconfigure(&mut self, image_keys: &str) -> Result<()> {
        write_config(&self.paths, &self.cgroup_parent, image_keys, "", "")?;
        self.restart().await
    }

    /// Rewrites crustd's config with `stream_keys` (TOML lines for the
    /// `[stream]` table) and restarts it on the same state.
    pub async fn reconfigure_stream(&mut self, stream_keys: &str) -> Result<()> {
        write_config(&self.paths, &self.cgroup_parent, "", stream_keys, "")?;
        self.restart().await
    }

    /// Rewrites crustd's config with `tables` (whole TOML tables such as
    /// `[metrics]`) added, and restarts it on the same state.
    pub async fn reconfigure_tables(&mut self, tables: &str) -> Result<()> {
        write_config(&self.paths, &self.cgroup_parent, "", "", tables)?;
        self.restart().await
    }

    /// Marks the test as failed: the log tail is printed and the log kept at
    /// [`cleanup::kept_log_path`] when the guard is dropped.
    pub fn mark_failed(&mut self) {
        self.failed = true;
    }

    /// The last `lines` lines of crustd's output.
    pub fn log_tail(&self, lines: usize) -> String {
        processes::log_tail(&self.paths.log, lines)
    }

    /// What crustd failed to clean up after itself: mounts, bundles, runc state,
    /// shims, container cgroups. Empty once every pod has been removed properly.
    pub fn leaks(&self) -> Vec<String> {
        cleanup::leak_report(&self.paths.base, &self.paths.state, &self.cgroup_parent)
    }

    async fn launch(&mut self) -> Result<()> {
        self.starts += 1;
        self.log_marker(&format!("starting crustd (start #{})", self.starts));
        let log = OpenOptions::new()
            .append(true)
            .create(true)
            .open(&self.paths.log)?;
        let level =
            std::env::var("CRUST_E2E_LOG_LEVEL").unwrap_or_else(|_| DEFAULT_LOG_LEVEL.into());
        let child = Command::new(&self.binaries.crustd)
            .arg("--config")
            .arg(&self.paths.config)
            .arg("--socket")
            .arg(&self.paths.socket)
            .arg("--root")
            .arg(&self.paths.root)
            .arg("--state")
            .arg(&self.paths.state)
            .args(["--log-level", &level])
            .env("PATH", requirements::child_path())
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .env("RUST_BACKTRACE", "1")
            .env("NO_PROXY", "127.0.0.1,localhost")
            .env("no_proxy", "127.0.0.1,localhost")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawning {}", self.binaries.crustd.display()))?;
        self.child = Some(child);
        self.wait_until_serving().await
    }

    /// Waits until the socket accepts connections and Version succeeds (crustd
    /// answers Unavailable while it recovers state after a restart).
    async fn wait_until_serving(&mut self) -> Result<()> {
        let deadline = Instant::now() + STARTUP_LIMIT;
        let mut last = String::from("socket not created yet");
        loop {
            if !self.is_running() {
                bail!(
                    "crustd exited before serving {}; last {LOG_TAIL_LINES} log lines:\n{}",
                    self.paths.socket.display(),
                    self.log_tail(LOG_TAIL_LINES)
                );
            }
            if self.paths.socket.exists() {
                let attempt = tokio::time::timeout(Duration::from_secs(3), async {
                    CriClient::connect(&self.paths.socket)
                        .await?
                        .version()
                        .await
                        .map_err(anyhow::Error::from)
                });
                match attempt.await {
                    Ok(Ok(_)) => return Ok(()),
                    Ok(Err(e)) => last = format!("{e:#}"),
                    Err(_) => last = "Version did not answer within 3s".into(),
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "crustd did not serve CRI on {} within {STARTUP_LIMIT:?} (last: {last}); log tail:\n{}",
                    self.paths.socket.display(),
                    self.log_tail(LOG_TAIL_LINES)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops crustd: SIGTERM, up to 5 s to exit, then SIGKILL; always reaps it.
    fn stop_process(&mut self) {
        if let Some(child) = self.child.take() {
            processes::stop_child(child, Duration::from_secs(5));
        }
    }

    fn log_marker(&self, what: &str) {
        if let Ok(mut log) = OpenOptions::new()
            .append(true)
            .create(true)
            .open(&self.paths.log)
        {
            let _ = writeln!(log, "----- crust-e2e: {what} -----");
        }
    }

    fn report_failure(&self) {
        let kept = cleanup::kept_log_path(&self.paths.base);
        if let Some(dir) = kept.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let _ = std::fs::copy(&self.paths.log, &kept);
        eprintln!(
            "===== crustd log tail ({}; full log kept at {}) =====\n{}\n===== end of crustd log =====",
            self.paths.base.display(),
            kept.display(),
            self.log_tail(LOG_TAIL_LINES)
        );
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let failed = self.failed || std::thread::panicking();
        if failed {
            self.report_failure();
        }
        let mut problems = Vec::new();
        if self.is_running() {
            problems.extend(cleanup::cri_remove_everything(
                &self.paths.socket,
                Duration::from_secs(30),
            ));
        }
        self.stop_process();
        let leaks = self.leaks();
        if !leaks.is_empty() {
            eprintln!("crust-e2e: crustd left behind (cleaning up): {leaks:#?}");
        }
        problems.extend(cleanup::kill_leftover_containers(
            &self.paths.base,
            &self.paths.state,
        ));
        if std::env::var_os("CRUST_E2E_KEEP").is_some() {
            problems.extend(cleanup::unmount_all_under(&self.paths.base));
            eprintln!(
                "crust-e2e: keeping {} (CRUST_E2E_KEEP)",
                self.paths.base.display()
            );
        } else {
            problems.extend(cleanup::remove_dir_when_unmounted(&self.paths.base));
        }
        problems.extend(cgroups::remove_tree(&self.cgroup_parent));
        if !problems.is_empty() {
            eprintln!(
                "crust-e2e: cleanup of {} had problems: {problems:#?}",
                self.paths.base.display()
            );
        }
    }
}

/// File name of the default test network in `net_d`.
pub const LOOPBACK_NETWORK_FILE: &str = "99-loopback.conflist";

/// The network every test pod gets unless the test writes another config that
/// sorts first: loopback only, so pods need no bridge or addresses.
const LOOPBACK_NETWORK: &str =
    r#"{"cniVersion":"1.0.0","name":"crust-e2e-lo","plugins":[{"type":"loopback"}]}"#;

/// Writes the test's crustd config: registry hosts and CNI networks from the
/// test's own directories (never the host's /etc/crust/certs.d or
/// /etc/cni/net.d), Debian's CNI plugins and the test's own, the test's
/// cgroup tree for pods that name no cgroup parent, plus `image_keys`.
/// Seconds an exec/attach/port-forward URL of a test's crustd stays valid
/// (short, so the expiry test need not wait a minute).
pub const STREAM_TOKEN_TIMEOUT_S: u64 = 5;

/// Writes crustd's config: the test's directories, plus `image_keys` and
/// `stream_keys` in their tables and whole `extra_tables` at the end.
fn write_config(
    paths: &DaemonPaths,
    cgroup_parent: &str,
    image_keys: &str,
    stream_keys: &str,
    extra_tables: &str,
) -> Result<()> {
    let text = format!(
        "[image]\nconfig_path = {:?}\n{image_keys}\n\n[cni]\nconf_dirs = [{:?}]\nplugin_dirs = [\"/usr/lib/cni\", \"/opt/cni/bin\", {:?}]\n\n[runtime]\ncgroup_parent = {cgroup_parent:?}\n\n[stream]\ntoken_timeout = {STREAM_TOKEN_TIMEOUT_S}\n{stream_keys}\n\n{extra_tables}\n",
        paths.certs_d.to_string_lossy(),
        paths.net_d.to_string_lossy(),
        paths.cni_bin.to_string_lossy()
    );
    std::fs::write(&paths.config, text)
        .with_context(|| format!("writing {}", paths.config.display()))
}
