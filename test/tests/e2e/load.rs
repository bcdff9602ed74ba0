//! Load: 100 pods, each with a running container, created by 10 concurrent
//! clients over a real CNI bridge on this 2-core machine, then all removed
//! the same way: no error, nothing left (netns, veth, IP reservations,
//! attachment records, mounts, shims, cgroups, directories), and crustd's
//! memory measured at the peak and after. The soak (ignored; `make soak`)
//! repeats rounds of it while crustd is killed with SIGKILL at a random
//! moment and restarted, and checks the same.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use crust_e2e::bench::memory::ProcessMemory;
use crust_e2e::cri::{ContainerConfig, ContainerFilter, ContainerState, PodSandboxConfig};
use crust_e2e::network::{TestNetwork, pod_leftovers};
use crust_e2e::{CriClient, Pod, TestEnv, run_with_timeout};
use tonic::Code;

/// Concurrent clients.
const CLIENTS: usize = 10;
/// Pods each client makes.
const PODS_PER_CLIENT: usize = 10;

#[test]
fn a_hundred_pods_from_ten_clients_come_and_go_cleanly() {
    run_with_timeout(
        "a_hundred_pods_from_ten_clients_come_and_go_cleanly",
        Duration::from_secs(600),
        hundred_pods,
    );
}

/// For each of [`CLIENTS`] clients, `per_client` pod configs named after
/// `prefix`, each with a container that sleeps.
fn sleeper_pods(
    env: &TestEnv,
    prefix: &str,
    per_client: usize,
) -> Result<Vec<Vec<(PodSandboxConfig, ContainerConfig)>>> {
    let mut work = Vec::new();
    for client in 0..CLIENTS {
        let mut mine = Vec::new();
        for n in 0..per_client {
            let pod = Pod {
                id: String::new(),
                config: env.pod_config(&format!("{prefix}-{client}-{n}"))?,
            };
            let container = env.shell_container(&pod, "sleeper", "exec sleep 3600")?;
            mine.push((pod.config, container));
        }
        work.push(mine);
    }
    Ok(work)
}

async fn hundred_pods(env: &mut TestEnv) -> Result<()> {
    let net = TestNetwork::claim(env)?;
    net.install(&net.standard_conflist("1.0.0"))?;
    env.pull(&env.images.busybox.reference).await?;
    let pid = env.daemon.pid().context("crustd's pid")?;
    let before = ProcessMemory::rss_mib(pid)?;

    // Every config first (they make log directories), then the clients.
    let work = sleeper_pods(env, "load", PODS_PER_CLIENT)?;
    let socket = env.daemon.paths().socket.clone();
    let started = Instant::now();
    let mut clients = Vec::new();
    for mine in work {
        let cri = CriClient::connect(&socket).await?;
        clients.push(tokio::spawn(async move {
            let mut made = Vec::new();
            for (config, container) in mine {
                let pod = cri
                    .run_pod_sandbox(&config)
                    .await
                    .context("RunPodSandbox")?;
                let id = cri
                    .create_container(&pod, &container, &config)
                    .await
                    .context("CreateContainer")?;
                cri.start_container(&id).await.context("StartContainer")?;
                made.push(pod);
            }
            anyhow::Ok(made)
        }));
    }
    let mut peak = before;
    while clients.iter().any(|c| !c.is_finished()) {
        peak = peak.max(ProcessMemory::rss_mib(pid)?);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut pods = Vec::new();
    for c in clients {
        pods.extend(c.await??);
    }
    let up = started.elapsed();
    peak = peak.max(ProcessMemory::rss_mib(pid)?);

    let sandboxes = env.cri.list_pod_sandbox(None).await?;
    let containers = env.cri.list_containers(None).await?;
    let running = containers
        .iter()
        .filter(|c| c.state == ContainerState::ContainerRunning as i32)
        .count();
    ensure!(
        sandboxes.len() == CLIENTS * PODS_PER_CLIENT && running == CLIENTS * PODS_PER_CLIENT,
        "{} sandboxes and {running} running containers for {} pods",
        sandboxes.len(),
        CLIENTS * PODS_PER_CLIENT
    );
    ensure!(
        net.reservations().len() == pods.len() && net.veths()?.len() == pods.len(),
        "each pod should hold one address and one veth"
    );

    let started = Instant::now();
    let mut clients = Vec::new();
    for chunk in pods.chunks(PODS_PER_CLIENT) {
        let cri = CriClient::connect(&socket).await?;
        let chunk = chunk.to_vec();
        clients.push(tokio::spawn(async move {
            for id in chunk {
                cri.stop_pod_sandbox(&id).await.context("StopPodSandbox")?;
                cri.remove_pod_sandbox(&id)
                    .await
                    .context("RemovePodSandbox")?;
            }
            anyhow::Ok(())
        }));
    }
    for c in clients {
        c.await??;
    }
    let down = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = ProcessMemory::rss_mib(pid)?;
    println!(
        "{} pods by {CLIENTS} clients: up in {up:.1?}, down in {down:.1?}; crustd RSS {before:.1} MiB before, {peak:.1} MiB at the peak, {after:.1} MiB after",
        pods.len()
    );

    let left = pod_leftovers(env, &net)?;
    ensure!(left.is_empty(), "100 pods left behind: {left:#?}");
    env.assert_no_leaks()
}

/// Environment variable with the number of soak rounds (`make soak`'s
/// `SOAK_ROUNDS`).
const SOAK_ROUNDS_ENV: &str = "CRUST_SOAK_ROUNDS";

/// Pods per soak round, made by [`CLIENTS`] clients.
const SOAK_PODS: usize = 30;

#[test]
#[ignore = "long: run by `make soak`"]
fn soak_with_crustd_killed_at_random() {
    let rounds: u64 = std::env::var(SOAK_ROUNDS_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    run_with_timeout(
        "soak_with_crustd_killed_at_random",
        Duration::from_secs(120 * rounds + 60),
        async move |env: &mut TestEnv| soak(env, rounds).await,
    );
}

/// A pseudo-random number below `n`, from the clock (no seed to keep).
fn random_below(n: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    u64::from(nanos) % n.max(1)
}

/// Makes `config`'s pod with a running container as kubelet would through
/// crustd being killed: each step is retried on a fresh connection while
/// crustd is down, and a step that had already been done before the kill
/// (AlreadyExists) is picked up where it got.
async fn make_pod_through_kills(
    socket: &std::path::Path,
    config: &PodSandboxConfig,
    container: &ContainerConfig,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        match make_pod_once(socket, config, container).await {
            Ok(()) => return Ok(()),
            // crustd is down or restarting: the next attempt picks up.
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.context("making a pod while crustd was killed")),
        }
    }
}

async fn make_pod_once(
    socket: &std::path::Path,
    config: &PodSandboxConfig,
    container: &ContainerConfig,
) -> Result<()> {
    let cri = CriClient::connect(socket).await?;
    let uid = config
        .metadata
        .as_ref()
        .map(|m| m.uid.clone())
        .unwrap_or_default();
    let pod = match cri.run_pod_sandbox(config).await {
        Ok(id) => id,
        Err(s) if s.code() == Code::AlreadyExists => cri
            .list_pod_sandbox(None)
            .await?
            .into_iter()
            .find(|p| p.metadata.as_ref().is_some_and(|m| m.uid == uid))
            .map(|p| p.id)
            .context("AlreadyExists for a pod that is not listed")?,
        Err(s) => return Err(s.into()),
    };
    let id = match cri.create_container(&pod, container, config).await {
        Ok(id) => id,
        Err(s) if s.code() == Code::AlreadyExists => cri
            .list_containers(Some(ContainerFilter {
                pod_sandbox_id: pod.clone(),
                ..Default::default()
            }))
            .await?
            .into_iter()
            .next()
            .map(|c| c.id)
            .context("AlreadyExists for a container that is not listed")?,
        Err(s) => return Err(s.into()),
    };
    let state = cri.container_status(&id).await?.state;
    if state == ContainerState::ContainerCreated as i32 {
        cri.start_container(&id).await?;
    }
    Ok(())
}

async fn soak(env: &mut TestEnv, rounds: u64) -> Result<()> {
    let net = TestNetwork::claim(env)?;
    net.install(&net.standard_conflist("1.0.0"))?;
    env.pull(&env.images.busybox.reference).await?;
    for round in 0..rounds {
        let socket = env.daemon.paths().socket.clone();
        let mut clients = Vec::new();
        for mine in sleeper_pods(env, &format!("soak-{round}"), SOAK_PODS / CLIENTS)? {
            let socket = socket.clone();
            clients.push(tokio::spawn(async move {
                for (config, container) in mine {
                    make_pod_through_kills(&socket, &config, &container).await?;
                }
                anyhow::Ok(())
            }));
        }
        let kill_after = Duration::from_millis(200 + random_below(2500));
        tokio::time::sleep(kill_after).await;
        env.kill_daemon().await?;
        env.restart_daemon().await?;
        for c in clients {
            c.await??;
        }
        let pid = env.daemon.pid().context("crustd's pid")?;
        let up = env.cri.list_pod_sandbox(None).await?;
        let rss = ProcessMemory::rss_mib(pid)?;
        for sandbox in &up {
            env.cri.stop_pod_sandbox(&sandbox.id).await?;
            env.cri.remove_pod_sandbox(&sandbox.id).await?;
        }
        let left = pod_leftovers(env, &net)?;
        println!(
            "soak round {round}: crustd killed after {kill_after:.1?}; {} pods up, crustd RSS {rss:.1} MiB; {} left after removal",
            up.len(),
            left.len()
        );
        ensure!(left.is_empty(), "soak round {round} left behind: {left:#?}");
    }
    env.assert_no_leaks()
}
