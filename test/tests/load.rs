//! Load: 100 pods, each with a running container, created by 10 concurrent
//! clients over a real CNI bridge on this 2-core machine, then all removed
//! the same way: no error, nothing left (netns, veth, IP reservations,
//! attachment records, mounts, shims, cgroups, directories), and crustd's
//! memory measured at the peak and after.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use crust_e2e::bench::memory::ProcessMemory;
use crust_e2e::cri::ContainerState;
use crust_e2e::network::{TestNetwork, attachment_records};
use crust_e2e::{CriClient, Pod, TestEnv, run_with_timeout};

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

fn rss_mib(pid: u32) -> Result<f64> {
    Ok(ProcessMemory::of(pid as i32)?.rss_kib / 1024.0)
}

async fn hundred_pods(env: &mut TestEnv) -> Result<()> {
    let net = TestNetwork::claim(env)?;
    net.install(&net.standard_conflist("1.0.0"))?;
    env.pull(&env.images.busybox.reference).await?;
    let pid = env.daemon.pid().context("crustd's pid")?;
    let before = rss_mib(pid)?;

    // Every config first (they make log directories), then the clients.
    let mut work = Vec::new();
    for client in 0..CLIENTS {
        let mut mine = Vec::new();
        for n in 0..PODS_PER_CLIENT {
            let config = env.pod_config(&format!("load-{client}-{n}"))?;
            let pod = Pod {
                id: String::new(),
                config,
            };
            let container = env.shell_container(&pod, "sleeper", "exec sleep 3600")?;
            mine.push((pod.config, container));
        }
        work.push(mine);
    }
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
        peak = peak.max(rss_mib(pid)?);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut pods = Vec::new();
    for c in clients {
        pods.extend(c.await??);
    }
    let up = started.elapsed();
    peak = peak.max(rss_mib(pid)?);

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
    let after = rss_mib(pid)?;
    println!(
        "{} pods by {CLIENTS} clients: up in {up:.1?}, down in {down:.1?}; crustd RSS {before:.1} MiB before, {peak:.1} MiB at the peak, {after:.1} MiB after",
        pods.len()
    );

    let mut left = net.leftovers()?;
    left.extend(
        attachment_records(env)
            .into_iter()
            .map(|id| format!("attachment record of {id}")),
    );
    ensure!(left.is_empty(), "100 pods left behind: {left:#?}");
    env.assert_no_leaks()
}
