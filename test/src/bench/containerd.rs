//! The peer column: Debian's containerd (1.6, CRI plugin) as a child process on
//! a private directory and socket, driven through the same CRI workload.
//!
//! Its shims put their sockets in `/run/containerd/s/` whatever the state dir
//! is; the guard removes the ones that appeared during the run.
//!
//! Debugging knobs: `CRUST_BENCH_CONTAINERD_LOG_LEVEL` (default `info`), and
//! `CRUST_BENCH_RUNC`, a runc binary (or wrapper script) for containerd to use.
//! On a failure containerd's log is kept next to the JSON report.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use super::big_image::BigImages;
use super::containerd_config::{self, CRI_NAMESPACE, Layout};
use super::machine;
use super::options::Options;
use super::pause_image;
use super::pods::PodFactory;
use super::results::{Outcome, RunResult};
use super::workload::{self, CriTarget};
use crate::fixtures::TestImages;
use crate::{CriClient, cgroups, cleanup, mountinfo, processes, requirements, unique};

/// The shim binary containerd runs per pod.
pub const SHIM_PROGRAM: &str = "containerd-shim-runc-v2";
/// Where containerd 1.6 shims put their sockets, whatever the state dir.
const SHIM_SOCKET_DIR: &str = "/run/containerd/s";
/// How long containerd may take to serve CRI with its network ready.
const STARTUP_LIMIT: Duration = Duration::from_secs(30);

/// Runs the workload against a private containerd, or says why it could not.
pub async fn run(images: &TestImages, big: Option<&BigImages>, options: &Options) -> RunResult {
    let mut result = RunResult::new("containerd");
    let Some(program) = requirements::find_program("containerd") else {
        result.outcome = Outcome::Unavailable(
            "containerd is not installed (`make bench` installs Debian's containerd)".into(),
        );
        return result;
    };
    result.version = machine::tool_version("containerd").unwrap_or_default();
    let started = async {
        let pause = pause_image::push(images).await?;
        Containerd::start(&program, images, &pause).await
    };
    let mut daemon = match started.await {
        Ok(d) => d,
        Err(e) => {
            result.outcome = Outcome::Unavailable(format!("could not start containerd: {e:#}"));
            return result;
        }
    };
    let outcome = drive(&daemon, images, big, options, &mut result).await;
    result.note(
        "containerd's CreateContainer only records the container and prepares its snapshot; its runc create runs in StartContainer, so compare CreateContainer+StartContainer",
    );
    result.note(
        "CNI: loopback, then the `static` IPAM plugin reporting 127.0.0.2 for eth0 (containerd 1.6 refuses a pod without an eth0 address); containerd adds its own loopback network, so 3 plugin execs per pod",
    );
    match outcome {
        Ok(()) => {
            let leaks = daemon.leaks();
            if !leaks.is_empty() {
                result.note(format!(
                    "containerd left behind after every pod was removed: {leaks:?}"
                ));
            }
        }
        Err(e) => {
            let kept = options.json.with_file_name("containerd.log");
            match std::fs::copy(daemon.layout.log(), &kept) {
                Ok(_) => result.note(format!("containerd's log kept at {}", kept.display())),
                Err(e) => result.note(format!("could not keep containerd's log: {e}")),
            }
            result.fail(&e);
        }
    }
    daemon.stop();
    result
}

async fn drive(
    daemon: &Containerd,
    images: &TestImages,
    big: Option<&BigImages>,
    options: &Options,
    result: &mut RunResult,
) -> Result<()> {
    let pause = format!(
        "{}/{}:{}",
        images.registry,
        pause_image::PAUSE_REPOSITORY,
        pause_image::PAUSE_TAG
    );
    let target = CriTarget {
        cri: CriClient::connect(&daemon.layout.socket()).await?,
        daemon_pid: daemon.pid().context("containerd is not running")?,
        pods: PodFactory {
            log_base: daemon.layout.pod_logs(),
            cgroup_parent: daemon.cgroup_parent.clone(),
        },
        shim_program: SHIM_PROGRAM,
        shim_scope: daemon.layout.dir.clone(),
        content_blobs: daemon.layout.content_blobs(),
    };
    // The sandbox image is pulled before anything is timed, as on a node.
    target
        .cri
        .pull_image(&pause)
        .await
        .with_context(|| format!("PullImage {pause}"))?;
    workload::run(&target, images, big, options, result).await
}

/// A running private containerd; dropping it cleans up after it.
#[derive(Debug)]
pub struct Containerd {
    /// Its private directory and the paths below it.
    pub layout: Layout,
    /// cgroupfs parent of the benchmark's pods.
    pub cgroup_parent: String,
    child: Option<Child>,
    shim_sockets_before: BTreeSet<OsString>,
    run_dir_existed: bool,
}

impl Containerd {
    /// Writes the config and starts containerd; returns once CRI answers and
    /// reports both the runtime and the network ready.
    pub async fn start(program: &Path, images: &TestImages, pause: &str) -> Result<Self> {
        let suffix = unique::suffix();
        let layout = Layout {
            dir: std::env::temp_dir().join(format!("crust-bench-containerd-{suffix}")),
        };
        let runc = std::env::var_os("CRUST_BENCH_RUNC")
            .map(std::path::PathBuf::from)
            .or_else(|| requirements::find_program("runc"))
            .context("runc is not installed")?;
        let mut daemon = Self {
            cgroup_parent: format!("/crust-bench-containerd-{suffix}"),
            child: None,
            shim_sockets_before: dir_entries(Path::new(SHIM_SOCKET_DIR)),
            run_dir_existed: Path::new("/run/containerd").exists(),
            layout,
        };
        containerd_config::write_files(&daemon.layout, &images.registry, pause, &runc)?;
        let log = File::create(daemon.layout.log())?;
        let mut command = Command::new(program);
        command
            .arg("--config")
            .arg(daemon.layout.config())
            .env("PATH", requirements::child_path())
            .env("NO_PROXY", "127.0.0.1,localhost")
            .env("no_proxy", "127.0.0.1,localhost")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: prctl is async-signal-safe; containerd gets SIGKILL if the
        // benchmark (whose main thread spawns it) dies without cleaning up.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        daemon.child = Some(
            command
                .spawn()
                .with_context(|| format!("spawning {}", program.display()))?,
        );
        daemon.wait_until_ready().await?;
        Ok(daemon)
    }

    /// The containerd pid, while it runs.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    /// The last `lines` lines of containerd's output.
    pub fn log_tail(&self, lines: usize) -> String {
        crate::processes::log_tail(&self.layout.log(), lines)
    }

    /// What containerd still holds once every pod is removed: mounts, shims,
    /// runc containers and container cgroups.
    pub fn leaks(&self) -> Vec<String> {
        let mut leaks: Vec<String> = mountinfo::mounts_under(&self.layout.dir)
            .unwrap_or_default()
            .into_iter()
            .map(|m| format!("mount {} ({})", m.mount_point.display(), m.fs_type))
            .collect();
        for pid in processes::find_program_using(SHIM_PROGRAM, &self.layout.dir) {
            leaks.push(format!("{SHIM_PROGRAM} process {pid}"));
        }
        for id in runc_containers(&self.layout.runc_root().join(CRI_NAMESPACE)) {
            leaks.push(format!("runc container {id}"));
        }
        for dir in cgroups::descendants(&self.cgroup_parent, 2) {
            leaks.push(format!("cgroup {}", dir.display()));
        }
        leaks
    }

    async fn wait_until_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + STARTUP_LIMIT;
        let mut last = String::from("socket not created yet");
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                bail!(
                    "containerd exited ({status}) before serving CRI; log tail:\n{}",
                    self.log_tail(30)
                );
            }
            if self.layout.socket().exists() {
                match self.probe().await {
                    Ok(()) => return Ok(()),
                    Err(e) => last = format!("{e:#}"),
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "containerd did not get ready within {STARTUP_LIMIT:?} (last: {last}); log tail:\n{}",
                    self.log_tail(30)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn probe(&self) -> Result<()> {
        let cri = tokio::time::timeout(
            Duration::from_secs(3),
            CriClient::connect(&self.layout.socket()),
        )
        .await
        .map_err(|_| anyhow!("connect timed out"))??;
        let status = cri.status().await?;
        let conditions = status.status.map(|s| s.conditions).unwrap_or_default();
        let not_ready: Vec<String> = conditions
            .iter()
            .filter(|c| !c.status)
            .map(|c| format!("{} ({}: {})", c.r#type, c.reason, c.message))
            .collect();
        if conditions.is_empty() || !not_ready.is_empty() {
            bail!("not ready: {not_ready:?}");
        }
        Ok(())
    }

    /// Removes every pod through CRI, stops containerd, and cleans up whatever
    /// is left: shims, runc containers, mounts, the directory, the cgroups and
    /// the shim sockets it made in `/run/containerd/s`. Idempotent.
    pub fn stop(&mut self) {
        let mut problems = Vec::new();
        if self.child.is_some() {
            problems.extend(cleanup::cri_remove_everything(
                &self.layout.socket(),
                Duration::from_secs(60),
            ));
        }
        self.stop_process();
        for pid in processes::find_program_using(SHIM_PROGRAM, &self.layout.dir) {
            if !processes::kill_and_wait(pid, Duration::from_secs(5)) {
                problems.push(format!("{SHIM_PROGRAM} {pid} survived SIGKILL"));
            }
        }
        let runc_root = self.layout.runc_root().join(CRI_NAMESPACE);
        for id in runc_containers(&runc_root) {
            let runc = requirements::find_program("runc").unwrap_or_else(|| "runc".into());
            if let Err(e) = cleanup::run_bounded(
                Command::new(runc)
                    .arg("--root")
                    .arg(&runc_root)
                    .args(["delete", "-f", &id]),
                Duration::from_secs(15),
            ) {
                problems.push(format!("runc delete -f {id}: {e}"));
            }
        }
        problems.extend(cleanup::remove_dir_when_unmounted(&self.layout.dir));
        problems.extend(cgroups::remove_tree(&self.cgroup_parent));
        problems.extend(self.remove_shim_sockets());
        if !problems.is_empty() {
            eprintln!("crust-bench: containerd cleanup had problems: {problems:#?}");
        }
    }

    /// SIGTERM, up to 10 s to exit, then SIGKILL; always reaps.
    fn stop_process(&mut self) {
        if let Some(child) = self.child.take() {
            processes::stop_child(child, Duration::from_secs(10));
        }
    }

    /// Removes the shim sockets that appeared in `/run/containerd/s` during the
    /// run, and the directories if this run created them and they are empty.
    fn remove_shim_sockets(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let dir = Path::new(SHIM_SOCKET_DIR);
        for name in dir_entries(dir).difference(&self.shim_sockets_before) {
            let path = dir.join(name);
            if let Err(e) = std::fs::remove_file(&path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                problems.push(format!("remove {}: {e}", path.display()));
            }
        }
        if !self.run_dir_existed {
            let _ = std::fs::remove_dir(dir);
            let _ = std::fs::remove_dir("/run/containerd");
        }
        problems
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if self.child.is_some() || self.layout.dir.exists() {
            self.stop();
        }
    }
}

/// Names in `dir` (empty if it does not exist).
fn dir_entries(dir: &Path) -> BTreeSet<OsString> {
    std::fs::read_dir(dir)
        .map(|entries| entries.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default()
}

/// Container ids with runc state under `runc_root`.
fn runc_containers(runc_root: &Path) -> Vec<String> {
    dir_entries(runc_root)
        .into_iter()
        .filter(|n| runc_root.join(n).is_dir())
        .filter_map(|n| n.into_string().ok())
        .collect()
}
