//! The measured CRI workload, the same for every runtime behind a CRI socket:
//! idle memory, cold pulls, a warm-up round, N pods each with a `sleep`
//! container kept running, memory at steady state, teardown of them all, and
//! last the big-image pulls (cold, then with 4 of 5 layers present).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use k8s_cri::v1::{
    ContainerState, ListContainerStatsRequest, ListPodSandboxStatsRequest, PodSandboxConfig,
};

use super::big_image::{BigImage, BigImages};
use super::memory::{self, ProcessMemory};
use super::metrics as m;
use super::options::Options;
use super::pods::{self, PodFactory};
use super::results::RunResult;
use crate::fixtures::{PushedImage, TestImages};
use crate::{CriClient, processes, streaming};

/// How long the daemon is left alone before its memory is read.
pub const SETTLE: Duration = Duration::from_secs(2);

/// Recorded ExecSync and streamed execs.
const EXECS: usize = 100;

/// Recorded calls of each list-stats RPC.
const STATS_CALLS: usize = 50;

/// A CRI runtime under test, as the workload sees it.
#[derive(Debug, Clone)]
pub struct CriTarget {
    /// Client connected to the runtime's CRI socket.
    pub cri: CriClient,
    /// Pid of the daemon serving the socket.
    pub daemon_pid: i32,
    /// Makes pod configs under the runtime's log dir and cgroup parent.
    pub pods: PodFactory,
    /// Program name of the runtime's per-container (or per-pod) shim.
    pub shim_program: &'static str,
    /// Directory the runtime's shims are tied to (in argv or cwd).
    pub shim_scope: PathBuf,
    /// The content store's `blobs/sha256` directory, to check pulls are cold.
    pub content_blobs: PathBuf,
}

/// One running pod of the workload.
struct RunningPod {
    sandbox_id: String,
    container_id: String,
    config: PodSandboxConfig,
}

/// Runs the whole workload against `target`, recording into `result`. On an
/// error, the pods made so far are left for the caller's CRI cleanup.
pub async fn run(
    target: &CriTarget,
    images: &TestImages,
    big: Option<&BigImages>,
    options: &Options,
    result: &mut RunResult,
) -> Result<()> {
    tokio::time::sleep(SETTLE).await;
    let idle = ProcessMemory::of(target.daemon_pid).context("daemon memory, idle")?;
    result.process_memory(
        [m::DAEMON_RSS_IDLE, m::DAEMON_PSS_IDLE, m::DAEMON_USS_IDLE],
        idle,
    );

    cold_pulls(target, images, options, result).await?;
    let busybox = &images.busybox.reference;
    target
        .cri
        .pull_image(busybox)
        .await
        .with_context(|| format!("PullImage {busybox}"))?;

    // Warm-up: one full round, not recorded.
    let warm = start_pod(target, "warmup", busybox, None).await?;
    stop_pod(target, &warm, None).await?;
    tokio::time::sleep(SETTLE).await;
    let warmed = ProcessMemory::of(target.daemon_pid).context("daemon memory, warm")?;
    result.process_memory(
        [m::DAEMON_RSS_WARM, m::DAEMON_PSS_WARM, m::DAEMON_USS_WARM],
        warmed,
    );

    let mut running = Vec::with_capacity(options.n);
    for i in 0..options.n {
        let pod = start_pod(target, &format!("bench-{i}"), busybox, Some(&mut *result)).await?;
        running.push(pod);
    }

    tokio::time::sleep(SETTLE).await;
    steady_state(target, &running, warmed, result).await?;
    if let Some(pod) = running.first() {
        exec_latency(target, &pod.container_id, result).await?;
    }
    stats_latency(target, running.len(), result).await?;
    listing_latency(target, &running, result).await?;

    for pod in &running {
        stop_pod(target, pod, Some(&mut *result)).await?;
    }
    tokio::time::sleep(SETTLE).await;
    let after = ProcessMemory::of(target.daemon_pid).context("daemon memory, after")?;
    result.process_memory(
        [
            m::DAEMON_RSS_AFTER,
            m::DAEMON_PSS_AFTER,
            m::DAEMON_USS_AFTER,
        ],
        after,
    );
    if let Some(big) = big {
        big_pulls(target, big, options, result).await?;
        tokio::time::sleep(SETTLE).await;
        let after_big =
            ProcessMemory::of(target.daemon_pid).context("daemon memory, after big pulls")?;
        result.memory(m::DAEMON_RSS_AFTER_BIG, after_big.rss_kib);
    }
    Ok(())
}

/// `options.big_pulls` rounds (after one unrecorded round) of: remove both
/// big images, pull the first (cold), pull the second (4 of its 5 layers
/// present). Both are removed at the end.
async fn big_pulls(
    target: &CriTarget,
    big: &BigImages,
    options: &Options,
    result: &mut RunResult,
) -> Result<()> {
    let mut warm_seen = false;
    for round in 0..=options.big_pulls {
        remove_big(target, &big.first).await?;
        remove_big(target, &big.second).await?;
        if !warm_seen && has_any_blob(target, &big.first.layers) {
            warm_seen = true;
            result.note(
                "a big layer was still in the content store after RemoveImage: big pulls were not fully cold",
            );
        }
        let started = Instant::now();
        pull_big(target, &big.first).await?;
        let cold = started.elapsed();
        let started = Instant::now();
        pull_big(target, &big.second).await?;
        let shared = started.elapsed();
        if round > 0 {
            result.samples(m::PULL_BIG_COLD).push(cold);
            result.samples(m::PULL_BIG_SHARED).push(shared);
        }
    }
    remove_big(target, &big.first).await?;
    remove_big(target, &big.second).await
}

async fn pull_big(target: &CriTarget, image: &BigImage) -> Result<()> {
    target
        .cri
        .pull_image(&image.reference)
        .await
        .with_context(|| format!("PullImage {}", image.reference))?;
    Ok(())
}

async fn remove_big(target: &CriTarget, image: &BigImage) -> Result<()> {
    target
        .cri
        .remove_image(&image.reference)
        .await
        .with_context(|| format!("RemoveImage {}", image.reference))
}

fn has_any_blob(target: &CriTarget, digests: &[String]) -> bool {
    digests.iter().any(|d| {
        target
            .content_blobs
            .join(d.trim_start_matches("sha256:"))
            .exists()
    })
}

/// Pulls busybox and then the layered image `options.pulls` times each (after
/// one unrecorded round), removing both before every pull so it starts cold.
async fn cold_pulls(
    target: &CriTarget,
    images: &TestImages,
    options: &Options,
    result: &mut RunResult,
) -> Result<()> {
    let mut warm_seen = false;
    for round in 0..=options.pulls {
        for (key, image) in [
            (m::PULL_BUSYBOX, &images.busybox),
            (m::PULL_LAYERED, &images.layered),
        ] {
            remove_image(target, &images.busybox).await?;
            remove_image(target, &images.layered).await?;
            if !warm_seen && has_any_layer(target, image) {
                warm_seen = true;
                result.note(format!(
                    "a layer of {} was still in the content store after RemoveImage: pulls were not fully cold",
                    image.reference
                ));
            }
            let started = Instant::now();
            target
                .cri
                .pull_image(&image.reference)
                .await
                .with_context(|| format!("PullImage {}", image.reference))?;
            if round > 0 {
                result.samples(key).push(started.elapsed());
            }
        }
    }
    remove_image(target, &images.layered).await
}

async fn remove_image(target: &CriTarget, image: &PushedImage) -> Result<()> {
    target
        .cri
        .remove_image(&image.reference)
        .await
        .with_context(|| format!("RemoveImage {}", image.reference))
}

fn has_any_layer(target: &CriTarget, image: &PushedImage) -> bool {
    image.image.layers.iter().any(|layer| {
        let hex = layer.digest.trim_start_matches("sha256:");
        target.content_blobs.join(hex).exists()
    })
}

/// ExecSync and streamed execs of `true` in one container, [`EXECS`] of each
/// after one unrecorded of each.
async fn exec_latency(
    target: &CriTarget,
    container_id: &str,
    result: &mut RunResult,
) -> Result<()> {
    let output = crate::Streams {
        stdout: true,
        stderr: true,
        ..crate::Streams::default()
    };
    for i in 0..=EXECS {
        let started = Instant::now();
        let out = target
            .cri
            .exec_sync(container_id, &["true"], 0)
            .await
            .context("ExecSync true")?;
        let took = started.elapsed();
        anyhow::ensure!(out.exit_code == 0, "ExecSync true exited {}", out.exit_code);
        if i > 0 {
            result.samples(m::EXEC_SYNC).push(took);
        }
    }
    for i in 0..=EXECS {
        let started = Instant::now();
        let url = target
            .cri
            .exec_url(container_id, &["true"], output)
            .await
            .context("Exec true")?;
        let session = streaming::remote_command(
            &url,
            streaming::Transport::Spdy,
            streaming::StreamOptions::output(),
        )
        .await?;
        let outcome = session.finish(Duration::from_secs(30)).await?;
        let took = started.elapsed();
        anyhow::ensure!(
            outcome.exit_code.unwrap_or(0) == 0 && outcome.error.is_none(),
            "streamed exec of true: {outcome:?}"
        );
        if i > 0 {
            result.samples(m::EXEC_STREAMED).push(took);
        }
    }
    Ok(())
}

/// ListContainerStats and ListPodSandboxStats with the workload running,
/// each checked to cover the `running` pods.
async fn stats_latency(target: &CriTarget, running: usize, result: &mut RunResult) -> Result<()> {
    let rt = target.cri.runtime.clone();
    timed_listing(m::LIST_CONTAINER_STATS, running, result, || {
        let mut rt = rt.clone();
        async move {
            let reply = rt
                .list_container_stats(ListContainerStatsRequest::default())
                .await?;
            Ok(reply.into_inner().stats.len())
        }
    })
    .await?;
    timed_listing(m::LIST_POD_STATS, running, result, || {
        let mut rt = rt.clone();
        async move {
            let reply = rt
                .list_pod_sandbox_stats(ListPodSandboxStatsRequest::default())
                .await?;
            Ok(reply.into_inner().stats.len())
        }
    })
    .await
}

/// What kubelet asks every second in steady state, with the workload
/// running: ListContainers, ListPodSandbox (each covering the `running`
/// pods), and the status of one container and one pod.
async fn listing_latency(
    target: &CriTarget,
    running: &[RunningPod],
    result: &mut RunResult,
) -> Result<()> {
    let Some(one) = running.first() else {
        return Ok(());
    };
    let cri = &target.cri;
    timed_listing(m::LIST_CONTAINERS, running.len(), result, || async {
        Ok(cri.list_containers(None).await?.len())
    })
    .await?;
    timed_listing(m::LIST_PODS, running.len(), result, || async {
        Ok(cri.list_pod_sandbox(None).await?.len())
    })
    .await?;
    timed_listing(m::CONTAINER_STATUS, 1, result, || async {
        cri.container_status(&one.container_id).await?;
        Ok(1)
    })
    .await?;
    timed_listing(m::POD_STATUS, 1, result, || async {
        cri.pod_sandbox_status(&one.sandbox_id).await?;
        Ok(1)
    })
    .await
}

/// Times [`STATS_CALLS`] calls of `list` (after one unrecorded) into `key`,
/// each of which must list at least `running` items.
async fn timed_listing<F, Fut>(
    key: &'static str,
    running: usize,
    result: &mut RunResult,
    mut list: F,
) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<usize>>,
{
    for i in 0..=STATS_CALLS {
        let started = Instant::now();
        let listed = list().await.with_context(|| key.to_string())?;
        let took = started.elapsed();
        anyhow::ensure!(listed >= running, "{key} listed {listed} of {running}");
        if i > 0 {
            result.samples(key).push(took);
        }
    }
    Ok(())
}

/// RunPodSandbox, then CreateContainer and StartContainer of a `sleep`
/// container, timing each into `result` if given.
async fn start_pod(
    target: &CriTarget,
    name: &str,
    image: &str,
    result: Option<&mut RunResult>,
) -> Result<RunningPod> {
    let config = target.pods.pod(name)?;
    let started = Instant::now();
    let sandbox_id = target
        .cri
        .run_pod_sandbox(&config)
        .await
        .with_context(|| format!("RunPodSandbox {name}"))?;
    let ran = started.elapsed();
    let container = target.pods.sleep_container(&config, image)?;
    let started = Instant::now();
    let container_id = target
        .cri
        .create_container(&sandbox_id, &container, &config)
        .await
        .with_context(|| format!("CreateContainer in {name}"))?;
    let created = started.elapsed();
    let started = Instant::now();
    target
        .cri
        .start_container(&container_id)
        .await
        .with_context(|| format!("StartContainer in {name}"))?;
    let start = started.elapsed();
    if let Some(result) = result {
        result.samples(m::RUN_POD).push(ran);
        result.samples(m::CREATE).push(created);
        result.samples(m::START).push(start);
        result.samples(m::CREATE_START).push(created + start);
    }
    Ok(RunningPod {
        sandbox_id,
        container_id,
        config,
    })
}

/// StopContainer(0)+RemoveContainer, then StopPodSandbox+RemovePodSandbox.
async fn stop_pod(
    target: &CriTarget,
    pod: &RunningPod,
    result: Option<&mut RunResult>,
) -> Result<()> {
    let started = Instant::now();
    target
        .cri
        .stop_container(&pod.container_id, 0)
        .await
        .context("StopContainer")?;
    let stopped = started.elapsed();
    target
        .cri
        .remove_container(&pod.container_id)
        .await
        .context("RemoveContainer")?;
    let container = started.elapsed();
    let started = Instant::now();
    target
        .cri
        .stop_pod_sandbox(&pod.sandbox_id)
        .await
        .context("StopPodSandbox")?;
    target
        .cri
        .remove_pod_sandbox(&pod.sandbox_id)
        .await
        .context("RemovePodSandbox")?;
    let sandbox = started.elapsed();
    if let Some(result) = result {
        result.samples(m::STOP_REMOVE_CONTAINER).push(container);
        result.samples(m::STOP_CONTAINER).push(stopped);
        result
            .samples(m::REMOVE_CONTAINER)
            .push(container - stopped);
        result.samples(m::STOP_REMOVE_POD).push(sandbox);
    }
    Ok(())
}

/// Reads the daemon's, the shims' and the pod infrastructure processes' memory
/// with every pod running, and checks every container is running.
async fn steady_state(
    target: &CriTarget,
    running: &[RunningPod],
    warmed: ProcessMemory,
    result: &mut RunResult,
) -> Result<()> {
    let n = running.len();
    let mut not_running = 0;
    for pod in running {
        let status = target
            .cri
            .container_status(&pod.container_id)
            .await
            .context("ContainerStatus")?;
        if status.state != ContainerState::ContainerRunning as i32 {
            not_running += 1;
        }
    }
    if not_running > 0 {
        result.note(format!(
            "{not_running} of {n} containers were not running at steady state"
        ));
    }

    let daemon = ProcessMemory::of(target.daemon_pid).context("daemon memory, running")?;
    result.process_memory(
        [
            m::DAEMON_RSS_RUNNING,
            m::DAEMON_PSS_RUNNING,
            m::DAEMON_USS_RUNNING,
        ],
        daemon,
    );
    result.memory(
        m::DAEMON_RSS_PER_POD,
        (daemon.rss_kib - warmed.rss_kib) / n as f64,
    );

    let shim_pids = processes::find_program_using(target.shim_program, &target.shim_scope);
    let shims: Vec<ProcessMemory> = shim_pids
        .iter()
        .filter_map(|pid| ProcessMemory::of(*pid).ok())
        .collect();
    let shim_total = ProcessMemory::sum(shims.iter().copied());
    result.note(format!(
        "{} {} processes for {n} running containers in {n} pods",
        shims.len(),
        target.shim_program
    ));
    let infra: Vec<ProcessMemory> = running
        .iter()
        .flat_map(|pod| memory::cgroup_pids(&pods::sandbox_cgroup(&pod.config, &pod.sandbox_id)))
        .filter_map(|pid| ProcessMemory::of(pid).ok())
        .collect();
    if !infra.is_empty() {
        let mean = ProcessMemory::mean(&infra).unwrap_or_default();
        result.note(format!(
            "{} pod infrastructure (pause) processes, {:.0} KiB RSS / {:.0} KiB PSS each",
            infra.len(),
            mean.rss_kib,
            mean.pss_kib
        ));
    }
    let infra_total = ProcessMemory::sum(infra);
    let per = |total: f64| total / n as f64;
    result.memory(m::PER_CONTAINER_RSS, per(shim_total.rss_kib));
    result.memory(m::PER_CONTAINER_PSS, per(shim_total.pss_kib));
    result.memory(m::PER_CONTAINER_USS, per(shim_total.uss_kib));
    result.memory(
        m::PER_POD_RSS,
        per(shim_total.rss_kib + infra_total.rss_kib),
    );
    result.memory(
        m::PER_POD_PSS,
        per(shim_total.pss_kib + infra_total.pss_kib),
    );
    Ok(())
}
