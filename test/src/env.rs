//! The per-test environment ([`TestEnv`]) and the test runner ([`run`]) that
//! skips, bounds and cleans up every end-to-end test.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, ensure};
use k8s_cri::v1::{ContainerConfig, ContainerState, ContainerStatus, PodSandboxConfig};

use crate::cri_client::{CriClient, ExecOutput};
use crate::daemon::{Daemon, STARTUP_LIMIT};
use crate::fixtures::TestImages;
use crate::{binaries, pod_config, requirements, unique, wait};

/// Default bound on one test's body; `CRUST_E2E_TEST_TIMEOUT` (seconds) overrides.
pub const DEFAULT_TEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Namespace of every test pod.
pub const POD_NAMESPACE: &str = "crust-e2e";

/// One test's world: its own crustd, a connected CRI client and the shared images.
#[derive(Debug)]
pub struct TestEnv {
    /// The test's name.
    pub name: String,
    /// CRI client connected to this test's crustd.
    pub cri: CriClient,
    /// This test's crustd.
    pub daemon: Daemon,
    /// The images pushed to the shared registry.
    pub images: &'static TestImages,
    /// When the test started.
    pub started: SystemTime,
}

/// A pod sandbox created by the test, with the config it was created from.
#[derive(Debug, Clone)]
pub struct Pod {
    /// The sandbox id RunPodSandbox returned.
    pub id: String,
    /// The config (kubelet passes it again to CreateContainer).
    pub config: PodSandboxConfig,
}

impl Pod {
    /// The pod's log directory on the host.
    pub fn log_directory(&self) -> PathBuf {
        PathBuf::from(&self.config.log_directory)
    }

    /// The host path of the log of the container made from `config`.
    pub fn log_file(&self, config: &ContainerConfig) -> PathBuf {
        self.log_directory().join(&config.log_path)
    }
}

impl TestEnv {
    /// Starts crustd for test `name` and connects to it.
    pub async fn start(name: &str, images: &'static TestImages) -> Result<Self> {
        let daemon = Daemon::start(name).await?;
        let cri = CriClient::connect(&daemon.paths().socket).await?;
        Ok(Self {
            name: name.to_string(),
            cri,
            daemon,
            images,
            started: SystemTime::now(),
        })
    }

    /// Restarts this test's crustd with `image_keys` in its `[image]` config
    /// table, and reconnects.
    pub async fn reconfigure(&mut self, image_keys: &str) -> Result<()> {
        self.daemon.reconfigure(image_keys).await?;
        self.cri = CriClient::connect(&self.daemon.paths().socket).await?;
        Ok(())
    }

    /// Restarts this test's crustd with `stream_keys` in its `[stream]` config
    /// table, and reconnects.
    pub async fn reconfigure_stream(&mut self, stream_keys: &str) -> Result<()> {
        self.daemon.reconfigure_stream(stream_keys).await?;
        self.cri = CriClient::connect(&self.daemon.paths().socket).await?;
        Ok(())
    }

    /// Restarts this test's crustd with whole TOML `tables` added to its
    /// config, and reconnects.
    pub async fn reconfigure_tables(&mut self, tables: &str) -> Result<()> {
        self.daemon.reconfigure_tables(tables).await?;
        self.cri = CriClient::connect(&self.daemon.paths().socket).await?;
        Ok(())
    }

    /// A kubelet-like config for a new pod `name` (unique uid, fresh log
    /// directory, this test's cgroup parent).
    pub fn pod_config(&self, name: &str) -> Result<PodSandboxConfig> {
        let uid = unique::pod_uid();
        let log_directory = self
            .daemon
            .paths()
            .pod_logs
            .join(format!("{POD_NAMESPACE}_{name}_{uid}"));
        std::fs::create_dir_all(&log_directory)?;
        let cgroup_parent = format!("{}/pod{uid}", self.daemon.cgroup_parent());
        Ok(pod_config::pod_sandbox_config(
            name,
            POD_NAMESPACE,
            &uid,
            &log_directory,
            &cgroup_parent,
        ))
    }

    /// Runs a pod sandbox from `config`.
    pub async fn run_pod_with(&self, config: PodSandboxConfig) -> Result<Pod> {
        let id = self
            .cri
            .run_pod_sandbox(&config)
            .await
            .context("RunPodSandbox")?;
        Ok(Pod { id, config })
    }

    /// Runs a pod sandbox named `name` with the default test config.
    pub async fn run_pod(&self, name: &str) -> Result<Pod> {
        self.run_pod_with(self.pod_config(name)?).await
    }

    /// A kubelet-like config for container `name` of `pod` running `image`;
    /// makes its log subdirectory as kubelet does.
    pub fn container_config(&self, pod: &Pod, name: &str, image: &str) -> Result<ContainerConfig> {
        std::fs::create_dir_all(pod.log_directory().join(name))?;
        Ok(pod_config::container_config(&pod.config, name, image))
    }

    /// A container config for `name` running busybox with `sh -c <script>`.
    pub fn shell_container(&self, pod: &Pod, name: &str, script: &str) -> Result<ContainerConfig> {
        let mut config = self.container_config(pod, name, &self.images.busybox.reference)?;
        config.command = vec!["sh".into(), "-c".into(), script.into()];
        Ok(config)
    }

    /// Pulls `image`, returning the image_ref.
    pub async fn pull(&self, image: &str) -> Result<String> {
        self.cri
            .pull_image(image)
            .await
            .with_context(|| format!("PullImage {image}"))
    }

    /// CreateContainer in `pod`.
    pub async fn create_container(&self, pod: &Pod, config: &ContainerConfig) -> Result<String> {
        self.cri
            .create_container(&pod.id, config, &pod.config)
            .await
            .with_context(|| format!("CreateContainer {}", container_name(config)))
    }

    /// CreateContainer and StartContainer; returns the container id.
    pub async fn start_container(&self, pod: &Pod, config: &ContainerConfig) -> Result<String> {
        let id = self.create_container(pod, config).await?;
        self.cri
            .start_container(&id)
            .await
            .with_context(|| format!("StartContainer {}", container_name(config)))?;
        Ok(id)
    }

    /// Pulls busybox, runs pod `pod_name` and starts in it container
    /// `container` running `sh -c <script>`; returns the pod and the
    /// container's id.
    pub async fn shell_pod(
        &self,
        pod_name: &str,
        container: &str,
        script: &str,
    ) -> Result<(Pod, String)> {
        self.pull(&self.images.busybox.reference).await?;
        let pod = self.run_pod(pod_name).await?;
        let config = self.shell_container(&pod, container, script)?;
        let id = self.start_container(&pod, &config).await?;
        Ok((pod, id))
    }

    /// ExecSync `cmd` in container `id` (no timeout), whatever its exit code.
    pub async fn exec(&self, id: &str, cmd: &[&str]) -> Result<ExecOutput> {
        self.cri
            .exec_sync(id, cmd, 0)
            .await
            .with_context(|| format!("ExecSync {cmd:?}"))
    }

    /// Requires that container `id`'s `/etc/resolv.conf` holds the DNS
    /// config [`pod_config::pod_sandbox_config`] gives pods: its
    /// nameservers, searches and options.
    pub async fn expect_pod_dns(&self, id: &str) -> Result<()> {
        use pod_config::{DNS_OPTIONS, DNS_SEARCHES, DNS_SERVERS};
        let resolv = self.sh(id, "cat /etc/resolv.conf").await?;
        let lines: Vec<Vec<&str>> = resolv
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        for server in DNS_SERVERS {
            ensure!(
                lines.contains(&vec!["nameserver", server]),
                "resolv.conf lacks nameserver {server}:\n{resolv}"
            );
        }
        let search: Vec<&str> = ["search"].into_iter().chain(DNS_SEARCHES).collect();
        ensure!(
            lines.contains(&search),
            "resolv.conf lacks `search {DNS_SEARCHES:?}`:\n{resolv}"
        );
        let options: Vec<&str> = ["options"].into_iter().chain(DNS_OPTIONS).collect();
        ensure!(
            lines.contains(&options),
            "resolv.conf lacks `options {DNS_OPTIONS:?}`:\n{resolv}"
        );
        Ok(())
    }

    /// Runs `sh -c <script>` in container `id`, requires exit code 0 and
    /// returns stdout.
    pub async fn sh(&self, id: &str, script: &str) -> Result<String> {
        let out = self.exec(id, &["sh", "-c", script]).await?;
        ensure!(
            out.exit_code == 0,
            "`{script}` exited {} (stdout {:?}, stderr {:?})",
            out.exit_code,
            out.stdout,
            out.stderr
        );
        Ok(out.stdout)
    }

    /// Polls ContainerStatus until the container reaches `state`.
    pub async fn wait_for_state(
        &self,
        id: &str,
        state: ContainerState,
        limit: Duration,
    ) -> Result<ContainerStatus> {
        let what = format!("container {id} to be {}", state.as_str_name());
        wait::until(&what, limit, || async {
            let status = self.cri.container_status(id).await?;
            Ok((status.state == state as i32).then_some(status))
        })
        .await
    }

    /// The host pid of container `id`'s init process, from the `pid` field of
    /// the verbose ContainerStatus info (0 or missing is an error).
    pub async fn container_pid(&self, id: &str) -> Result<i32> {
        let (_, info) = self
            .cri
            .container_status_verbose(id)
            .await
            .context("verbose ContainerStatus")?;
        let raw = info
            .get("info")
            .ok_or_else(|| anyhow!("verbose ContainerStatus has no `info`: {info:?}"))?;
        let parsed: serde_json::Value =
            serde_json::from_str(raw).with_context(|| format!("info is not JSON: {raw}"))?;
        let pid = parsed["pid"].as_i64().unwrap_or_default();
        ensure!(pid > 0, "verbose info has no pid: {raw}");
        Ok(pid as i32)
    }

    /// SIGKILLs crustd (containers and shims keep running).
    pub async fn kill_daemon(&mut self) -> Result<()> {
        self.daemon.kill_9().await
    }

    /// Starts crustd again on the same state and reconnects the client.
    pub async fn restart_daemon(&mut self) -> Result<()> {
        self.daemon.restart().await?;
        self.cri = CriClient::connect(&self.daemon.paths().socket).await?;
        Ok(())
    }

    /// Fails, listing them, if crustd left mounts, bundles, runc state, shims or
    /// container cgroups behind (call once every pod has been removed).
    pub fn assert_no_leaks(&self) -> Result<()> {
        let leaks = self.daemon.leaks();
        ensure!(leaks.is_empty(), "crustd left resources behind: {leaks:#?}");
        Ok(())
    }

    /// Nanoseconds since the epoch at which the test started.
    pub fn started_nanos(&self) -> i64 {
        nanos_since_epoch(self.started)
    }
}

/// Nanoseconds since the Unix epoch of `time`.
pub fn nanos_since_epoch(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or_default()
}

fn container_name(config: &ContainerConfig) -> String {
    config
        .metadata
        .as_ref()
        .map(|m| m.name.clone())
        .unwrap_or_default()
}

/// Runs end-to-end test `name` with [`DEFAULT_TEST_TIMEOUT`] (see [`run_with_timeout`]).
pub fn run(name: &str, test: impl AsyncFnOnce(&mut TestEnv) -> Result<()>) {
    let limit = std::env::var("CRUST_E2E_TEST_TIMEOUT")
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_TEST_TIMEOUT);
    run_with_timeout(name, limit, test)
}

/// Runs end-to-end test `name`: skips it with a note when the host cannot run
/// it, prepares the shared images, starts a private crustd, runs `test` bounded
/// by `limit`, and always cleans up. Panics (failing the test) on error or
/// timeout, after printing the tail of crustd's log.
pub fn run_with_timeout(
    name: &str,
    limit: Duration,
    test: impl AsyncFnOnce(&mut TestEnv) -> Result<()>,
) {
    if let Some(reason) = requirements::skip_reason() {
        requirements::note_skip(name, &reason);
        return;
    }
    if let Err(e) = binaries::locate() {
        panic!("{name}: {e:#}");
    }
    let images = TestImages::shared().unwrap_or_else(|e| panic!("{name}: {e:#}"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("building a tokio runtime");
    let outcome: Result<()> = runtime.block_on(async {
        let mut env = tokio::time::timeout(STARTUP_LIMIT * 2, TestEnv::start(name, images))
            .await
            .map_err(|_| anyhow!("starting crustd took longer than {:?}", STARTUP_LIMIT * 2))??;
        let outcome = match tokio::time::timeout(limit, test(&mut env)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(anyhow!("test timed out after {limit:?}")),
        };
        if outcome.is_err() {
            env.daemon.mark_failed();
        }
        drop(env);
        outcome
    });
    runtime.shutdown_timeout(Duration::from_secs(5));
    if let Err(e) = outcome {
        panic!("{name} failed: {e:?}");
    }
}
