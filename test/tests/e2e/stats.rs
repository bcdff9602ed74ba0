//! Container and pod sandbox statistics compared with what the containers
//! did: memory they touched, CPU they burned, files they wrote to their
//! writable layer, and bytes they sent between two pods over a real CNI
//! bridge. Read from this machine's cgroups.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use crust_e2e::cri::{
    ContainerStats, ContainerStatsFilter, ContainerStatsRequest, ListContainerStatsRequest,
    ListMetricDescriptorsRequest, ListPodSandboxMetricsRequest, ListPodSandboxStatsRequest,
    PodSandboxStats, PodSandboxStatsFilter, PodSandboxStatsRequest,
};
use crust_e2e::network::{TestNetwork, pod_ips};
use crust_e2e::{Pod, TestEnv, run, wait};

const MIB: u64 = 1 << 20;

/// Long enough for the cached walk of the writable layers (10 s) to expire.
const LAYER_WAIT: Duration = Duration::from_secs(20);

async fn container_stats(env: &TestEnv, id: &str) -> Result<ContainerStats> {
    let reply = env
        .cri
        .runtime
        .clone()
        .container_stats(ContainerStatsRequest {
            container_id: id.into(),
        })
        .await
        .context("ContainerStats")?;
    reply
        .into_inner()
        .stats
        .context("ContainerStats without stats")
}

async fn pod_stats(env: &TestEnv, id: &str) -> Result<PodSandboxStats> {
    let reply = env
        .cri
        .runtime
        .clone()
        .pod_sandbox_stats(PodSandboxStatsRequest {
            pod_sandbox_id: id.into(),
        })
        .await
        .context("PodSandboxStats")?;
    reply
        .into_inner()
        .stats
        .context("PodSandboxStats without stats")
}

/// The CPU rate of container `id` over about two seconds, in nanocores.
async fn cpu_rate(env: &TestEnv, id: &str) -> Result<u64> {
    container_stats(env, id).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stats = container_stats(env, id).await?;
    let cpu = stats.cpu.context("no CPU figures")?;
    ensure!(cpu.timestamp > 0, "CPU figures without a timestamp");
    ensure!(
        cpu.usage_core_nano_seconds.is_some(),
        "no cumulative CPU time"
    );
    Ok(cpu
        .usage_nano_cores
        .context("no usage_nano_cores on the second sample")?
        .value)
}

#[test]
fn container_stats_follow_what_containers_do() {
    run(
        "container_stats_follow_what_containers_do",
        container_figures,
    );
}

async fn container_figures(env: &mut TestEnv) -> Result<()> {
    env.pull(&env.images.busybox.reference).await?;
    let pod = env.run_pod("stats").await?;
    // dd holds its 64 MiB buffer, filled from /dev/zero, while blocked writing
    // it into a pipe nobody reads.
    let hog = env.shell_container(&pod, "hog", "dd if=/dev/zero bs=64M count=1 | sleep 3600")?;
    let hog = env.start_container(&pod, &hog).await?;
    let busy = env.shell_container(&pod, "busy", "while :; do :; done")?;
    let busy = env.start_container(&pod, &busy).await?;
    let idle = env.shell_container(&pod, "idle", "exec sleep 3600")?;
    let idle = env.start_container(&pod, &idle).await?;
    let created = env.shell_container(&pod, "created", "exec sleep 3600")?;
    let created = env.create_container(&pod, &created).await?;

    let working_set = wait::until(
        "the hog's working set to reach 64 MiB",
        Duration::from_secs(20),
        || async {
            let stats = container_stats(env, &hog).await?;
            let memory = stats.memory.context("no memory figures")?;
            let ws = memory.working_set_bytes.map_or(0, |v| v.value);
            Ok((ws >= 64 * MIB).then_some(memory))
        },
    )
    .await?;
    let usage = working_set.usage_bytes.context("no usage_bytes")?.value;
    ensure!(
        usage >= 64 * MIB,
        "usage {usage} is below the 64 MiB touched"
    );
    ensure!(
        working_set.rss_bytes.map_or(0, |v| v.value) >= 60 * MIB,
        "rss should hold most of dd's buffer: {working_set:?}"
    );
    ensure!(
        working_set.page_faults.map_or(0, |v| v.value) > 0,
        "page faults missing: {working_set:?}"
    );

    let busy_rate = cpu_rate(env, &busy).await?;
    ensure!(
        (400_000_000..=1_300_000_000).contains(&busy_rate),
        "a busy loop should use about one core, got {busy_rate} nanocores"
    );
    let idle_rate = cpu_rate(env, &idle).await?;
    ensure!(
        idle_rate < 50_000_000,
        "a sleeping container should use next to no CPU, got {idle_rate} nanocores"
    );

    // A 10 MiB file in the writable layer shows in its usage.
    let before = container_stats(env, &idle)
        .await?
        .writable_layer
        .context("no writable layer figures")?;
    ensure!(
        !before
            .fs_id
            .as_ref()
            .map_or("", |f| f.mountpoint.as_str())
            .is_empty(),
        "the writable layer names no filesystem: {before:?}"
    );
    env.sh(&idle, "head -c 10485760 /dev/zero > /ten-mib")
        .await?;
    let before_bytes = before.used_bytes.map_or(0, |v| v.value);
    wait::until(
        "the 10 MiB file to show in the writable layer",
        LAYER_WAIT,
        || async {
            let layer = container_stats(env, &idle)
                .await?
                .writable_layer
                .context("no writable layer figures")?;
            let bytes = layer.used_bytes.map_or(0, |v| v.value);
            let inodes = layer.inodes_used.map_or(0, |v| v.value);
            Ok((bytes >= before_bytes + 10 * MIB && inodes > 0).then_some(()))
        },
    )
    .await?;

    // Every container of every state is listed; the filters narrow it.
    let all = list_container_stats(env, ContainerStatsFilter::default()).await?;
    for id in [&hog, &busy, &idle, &created] {
        ensure!(
            all.iter().any(|s| attributes_id(s) == id.as_str()),
            "ListContainerStats lacks {id}"
        );
    }
    let created_stats = all
        .iter()
        .find(|s| attributes_id(s) == created.as_str())
        .context("created container")?;
    ensure!(
        created_stats
            .attributes
            .as_ref()
            .and_then(|a| a.metadata.as_ref())
            .is_some_and(|m| m.name == "created"),
        "attributes carry the metadata: {created_stats:?}"
    );
    let one = list_container_stats(
        env,
        ContainerStatsFilter {
            id: busy.clone(),
            ..Default::default()
        },
    )
    .await?;
    ensure!(
        one.len() == 1 && attributes_id(&one[0]) == busy,
        "filter by id: {one:?}"
    );
    let by_label = list_container_stats(
        env,
        ContainerStatsFilter {
            pod_sandbox_id: pod.id.clone(),
            label_selector: [(
                "io.kubernetes.container.name".to_string(),
                "idle".to_string(),
            )]
            .into(),
            ..Default::default()
        },
    )
    .await?;
    ensure!(
        by_label.len() == 1 && attributes_id(&by_label[0]) == idle,
        "filter by pod and label: {by_label:?}"
    );

    // The pod adds its containers up and counts their processes.
    let pod_figures = pod_stats(env, &pod.id).await?;
    let linux = pod_figures.linux.context("no linux pod stats")?;
    ensure!(
        linux.containers.len() == 4,
        "pod stats should hold its four containers, has {}",
        linux.containers.len()
    );
    let pod_memory = linux
        .memory
        .and_then(|m| m.working_set_bytes)
        .map_or(0, |v| v.value);
    ensure!(
        pod_memory >= 64 * MIB,
        "the pod's working set {pod_memory} lacks the hog's 64 MiB"
    );
    let processes = linux
        .process
        .and_then(|p| p.process_count)
        .map_or(0, |v| v.value);
    ensure!(
        processes >= 4,
        "the pod runs at least four processes, stats say {processes}"
    );
    ensure!(
        linux.cpu.and_then(|c| c.usage_core_nano_seconds).is_some(),
        "pod CPU time missing"
    );

    check_pod_metrics(env, &pod, &hog).await?;

    env.cri.stop_pod_sandbox(&pod.id).await?;
    env.cri.remove_pod_sandbox(&pod.id).await?;
    env.assert_no_leaks()
}

/// ListPodSandboxMetrics as kubelet turns it into `/metrics/cadvisor`: every
/// sample named by a descriptor, with one label value per key and a value;
/// the hog's working set among them, labelled with its pod and name.
async fn check_pod_metrics(env: &TestEnv, pod: &Pod, hog: &str) -> Result<()> {
    let mut runtime = env.cri.runtime.clone();
    let descriptors = runtime
        .list_metric_descriptors(ListMetricDescriptorsRequest {})
        .await
        .context("ListMetricDescriptors")?
        .into_inner()
        .descriptors;
    let keys: HashMap<&str, &[String]> = descriptors
        .iter()
        .map(|d| (d.name.as_str(), d.label_keys.as_slice()))
        .collect();
    let all = runtime
        .list_pod_sandbox_metrics(ListPodSandboxMetricsRequest {})
        .await
        .context("ListPodSandboxMetrics")?
        .into_inner()
        .pod_metrics;
    let ours = all
        .iter()
        .find(|p| p.pod_sandbox_id == pod.id)
        .context("ListPodSandboxMetrics lacks the pod")?;
    let samples = ours
        .metrics
        .iter()
        .chain(ours.container_metrics.iter().flat_map(|c| c.metrics.iter()));
    let mut seen = HashSet::new();
    for m in samples {
        let keys = keys
            .get(m.name.as_str())
            .with_context(|| format!("{} has no descriptor", m.name))?;
        ensure!(
            keys.len() == m.label_values.len(),
            "{}: keys {keys:?}, values {:?}",
            m.name,
            m.label_values
        );
        ensure!(m.value.is_some(), "{} without a value", m.name);
        ensure!(
            seen.insert((m.name.clone(), m.label_values.clone())),
            "{} {:?} twice",
            m.name,
            m.label_values
        );
    }
    let hog_metrics = ours
        .container_metrics
        .iter()
        .find(|c| c.container_id == hog)
        .context("no metrics for the hog")?;
    let working_set = hog_metrics
        .metrics
        .iter()
        .find(|m| m.name == "container_memory_working_set_bytes")
        .context("no working set metric")?;
    let keys = keys["container_memory_working_set_bytes"];
    let label = |key: &str| {
        keys.iter()
            .position(|k| k == key)
            .map(|i| working_set.label_values[i].as_str())
    };
    let meta = pod.config.metadata.as_ref().context("pod metadata")?;
    ensure!(
        label("pod") == Some(meta.name.as_str())
            && label("namespace") == Some(meta.namespace.as_str())
            && label("container") == Some("hog")
            && label("id") == Some(hog),
        "labels of the hog's working set: {keys:?} = {:?}",
        working_set.label_values
    );
    let value = working_set.value.as_ref().map_or(0, |v| v.value);
    ensure!(value >= 64 * MIB, "working set metric {value}");
    Ok(())
}

fn attributes_id(s: &ContainerStats) -> &str {
    s.attributes.as_ref().map_or("", |a| a.id.as_str())
}

async fn list_container_stats(
    env: &TestEnv,
    filter: ContainerStatsFilter,
) -> Result<Vec<ContainerStats>> {
    Ok(env
        .cri
        .runtime
        .clone()
        .list_container_stats(ListContainerStatsRequest {
            filter: Some(filter),
        })
        .await
        .context("ListContainerStats")?
        .into_inner()
        .stats)
}

/// The `eth0` counters (rx, tx bytes) of `pod`.
async fn eth0_bytes(env: &TestEnv, pod: &Pod) -> Result<(u64, u64)> {
    let stats = pod_stats(env, &pod.id).await?;
    let network = stats
        .linux
        .and_then(|l| l.network)
        .context("pod stats without network figures")?;
    ensure!(network.timestamp > 0, "network figures without a timestamp");
    let eth0 = network.default_interface.context("no default interface")?;
    ensure!(eth0.name == "eth0", "default interface {:?}", eth0.name);
    ensure!(
        network.interfaces.iter().all(|i| i.name != "lo"),
        "lo is not a pod interface: {:?}",
        network.interfaces
    );
    Ok((
        eth0.rx_bytes.map_or(0, |v| v.value),
        eth0.tx_bytes.map_or(0, |v| v.value),
    ))
}

#[test]
fn pod_interface_counters_carry_the_traffic_between_pods() {
    run(
        "pod_interface_counters_carry_the_traffic_between_pods",
        interface_counters,
    );
}

async fn interface_counters(env: &mut TestEnv) -> Result<()> {
    let net = TestNetwork::claim(env)?;
    net.install(&net.standard_conflist("1.0.0"))?;
    env.pull(&env.images.busybox.reference).await?;
    let server_pod = env.run_pod("receiver").await?;
    let client_pod = env.run_pod("sender").await?;
    let server_ip = pod_ips(env, &server_pod.id)
        .await?
        .into_iter()
        .next()
        .context("the receiving pod has no IP")?;
    // busybox nc stops reading the network once its stdin ends: the
    // listener's stdin stays open.
    let server = env.shell_container(
        &server_pod,
        "sink",
        "while true; do sleep 3600 | nc -l -p 8080 > /dev/null; done",
    )?;
    env.start_container(&server_pod, &server).await?;
    let client = env.shell_container(&client_pod, "source", "exec sleep 3600")?;
    let client = env.start_container(&client_pod, &client).await?;

    let (server_rx, _) = eth0_bytes(env, &server_pod).await?;
    let (_, client_tx) = eth0_bytes(env, &client_pod).await?;
    let script = format!(
        "for i in $(seq 50); do head -c 4194304 /dev/zero | nc -w 2 {server_ip} 8080 && exit 0; sleep 0.2; done; exit 1"
    );
    env.sh(&client, &script)
        .await
        .context("sending 4 MiB to the other pod")?;
    // The sender's nc may end while the kernel still delivers what it wrote.
    wait::until(
        "both pods' counters to carry the 4 MiB",
        Duration::from_secs(10),
        || async {
            let (server_rx_after, _) = eth0_bytes(env, &server_pod).await?;
            let (_, client_tx_after) = eth0_bytes(env, &client_pod).await?;
            Ok(
                (server_rx_after >= server_rx + 4 * MIB && client_tx_after >= client_tx + 4 * MIB)
                    .then_some(()),
            )
        },
    )
    .await?;

    let listed = env
        .cri
        .runtime
        .clone()
        .list_pod_sandbox_stats(ListPodSandboxStatsRequest {
            filter: Some(PodSandboxStatsFilter {
                id: server_pod.id.clone(),
                ..Default::default()
            }),
        })
        .await
        .context("ListPodSandboxStats")?
        .into_inner()
        .stats;
    ensure!(
        listed.len() == 1
            && listed[0].attributes.as_ref().map(|a| a.id.as_str()) == Some(&server_pod.id),
        "ListPodSandboxStats filtered by id: {listed:?}"
    );

    for pod in [&server_pod, &client_pod] {
        env.cri.stop_pod_sandbox(&pod.id).await?;
        env.cri.remove_pod_sandbox(&pod.id).await?;
    }
    env.assert_no_leaks()
}
