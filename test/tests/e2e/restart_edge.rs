//! crustd restarts in the corner cases: a container killed from the host while
//! crustd was down is found EXITED with 137; restarting again changes nothing;
//! and the lists come back with the same ids, metadata, labels and annotations.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, ensure};
use crust_e2e::assertions::expect_code;
use crust_e2e::cri::{Container, ContainerState, ContainerStatus, PodSandbox, PodSandboxStatus};
use crust_e2e::env::nanos_since_epoch;
use crust_e2e::network::tool;
use crust_e2e::processes;
use crust_e2e::{TestEnv, run, unique};
use tonic::Code;

/// Everything the List calls return, by id.
#[derive(Debug, Clone, PartialEq)]
struct Lists {
    pods: BTreeMap<String, PodSandbox>,
    containers: BTreeMap<String, Container>,
}

async fn lists(env: &TestEnv) -> Result<Lists> {
    Ok(Lists {
        pods: env
            .cri
            .list_pod_sandbox(None)
            .await?
            .into_iter()
            .map(|p| (p.id.clone(), p))
            .collect(),
        containers: env
            .cri
            .list_containers(None)
            .await?
            .into_iter()
            .map(|c| (c.id.clone(), c))
            .collect(),
    })
}

/// Every status, by id.
#[derive(Debug, Clone, PartialEq)]
struct Statuses {
    pods: BTreeMap<String, PodSandboxStatus>,
    containers: BTreeMap<String, ContainerStatus>,
}

async fn statuses(env: &TestEnv, lists: &Lists) -> Result<Statuses> {
    let mut pods = BTreeMap::new();
    for id in lists.pods.keys() {
        pods.insert(id.clone(), env.cri.pod_sandbox_status(id).await?);
    }
    let mut containers = BTreeMap::new();
    for id in lists.containers.keys() {
        containers.insert(id.clone(), env.cri.container_status(id).await?);
    }
    Ok(Statuses { pods, containers })
}

/// The keys of `map`.
fn ids<T>(map: &BTreeMap<String, T>) -> Vec<String> {
    map.keys().cloned().collect()
}

/// Requires `after` to list the same objects as `before` with the same
/// identity (metadata, labels, annotations, pod, image, creation time); states
/// are compared by the caller.
fn expect_same_identity(before: &Lists, after: &Lists, when: &str) -> Result<()> {
    ensure!(
        ids(&before.pods) == ids(&after.pods),
        "{when}: ListPodSandbox ids {:?} became {:?}",
        ids(&before.pods),
        ids(&after.pods)
    );
    ensure!(
        ids(&before.containers) == ids(&after.containers),
        "{when}: ListContainers ids {:?} became {:?}",
        ids(&before.containers),
        ids(&after.containers)
    );
    for (id, b) in &before.pods {
        let a = &after.pods[id];
        ensure!(
            a.metadata == b.metadata
                && a.labels == b.labels
                && a.annotations == b.annotations
                && a.created_at == b.created_at
                && a.runtime_handler == b.runtime_handler,
            "{when}: pod {id} changed:\nbefore {b:?}\nafter  {a:?}"
        );
    }
    for (id, b) in &before.containers {
        let a = &after.containers[id];
        ensure!(
            a.metadata == b.metadata
                && a.labels == b.labels
                && a.annotations == b.annotations
                && a.pod_sandbox_id == b.pod_sandbox_id
                && a.image == b.image
                && a.image_ref == b.image_ref
                && a.created_at == b.created_at,
            "{when}: container {id} changed:\nbefore {b:?}\nafter  {a:?}"
        );
    }
    Ok(())
}

#[test]
fn container_killed_while_crustd_is_down_and_repeated_restarts() {
    run(
        "container_killed_while_crustd_is_down_and_repeated_restarts",
        killed_while_down,
    );
}

async fn killed_while_down(env: &mut TestEnv) -> Result<()> {
    let busybox = env.images.busybox.reference.clone();
    env.pull(&busybox).await?;
    let mut config = env.pod_config("restart-edge")?;
    config
        .labels
        .insert("e2e.crust.dev/restart".into(), "edge".into());
    config.annotations.insert(
        "e2e.crust.dev/multi-line".into(),
        "line one\nline two: {\"k\": [1, 2]}".into(),
    );
    let pod = env.run_pod_with(config).await?;

    let mut keeper = env.container_config(&pod, "keeper", &busybox)?;
    keeper.command = vec!["sleep".into(), "3600".into()];
    keeper.labels.insert("role".into(), "keeper".into());
    keeper
        .annotations
        .insert("e2e.crust.dev/note".into(), "survives restarts".into());
    let keeper = env.start_container(&pod, &keeper).await?;

    let counter: u32 = unique::suffix()
        .rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let victim_seconds = (50_000 + (std::process::id() % 1000) * 10 + counter % 10).to_string();
    let mut victim = env.container_config(&pod, "victim", &busybox)?;
    victim.command = vec!["sleep".into(), victim_seconds.clone()];
    victim.labels.insert("role".into(), "victim".into());
    let victim = env.start_container(&pod, &victim).await?;

    let done = env
        .start_container(&pod, &env.shell_container(&pod, "done", "exit 3")?)
        .await?;
    env.wait_for_state(
        &done,
        ContainerState::ContainerExited,
        Duration::from_secs(30),
    )
    .await?;
    let mut idle = env.container_config(&pod, "idle", &busybox)?;
    idle.command = vec!["sleep".into(), "3600".into()];
    let idle = env.create_container(&pod, &idle).await?;

    let victim_pid = env.container_pid(&victim).await?;
    let cmdline = processes::cmdline(victim_pid).unwrap_or_default();
    ensure!(
        cmdline == ["sleep", victim_seconds.as_str()],
        "verbose ContainerStatus pid {victim_pid} runs {cmdline:?}, not the victim's sleep"
    );
    let before = lists(env).await?;
    let victim_before = env.cri.container_status(&victim).await?;

    env.kill_daemon().await?;
    ensure!(
        processes::kill_and_wait(victim_pid, Duration::from_secs(10)),
        "the victim's process {victim_pid} survived SIGKILL"
    );
    // Let the shim reap it and record the exit while crustd is down.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let restarted_at = nanos_since_epoch(SystemTime::now());
    env.restart_daemon().await?;

    let status = env.cri.container_status(&victim).await?;
    ensure!(
        status.state == ContainerState::ContainerExited as i32,
        "a container SIGKILLed while crustd was down is {} after the restart",
        ContainerState::try_from(status.state)
            .map(|s| s.as_str_name())
            .unwrap_or("?")
    );
    ensure!(
        status.exit_code == 137,
        "exit code {} (expected 137 for SIGKILL), reason {:?}",
        status.exit_code,
        status.reason
    );
    ensure!(
        status.reason == "Error",
        "reason {:?} (expected Error)",
        status.reason
    );
    ensure!(
        status.finished_at > victim_before.started_at && status.finished_at < restarted_at,
        "finished_at {} is not the time of the kill (started {}, crustd restarted {restarted_at})",
        status.finished_at,
        victim_before.started_at
    );
    ensure!(
        status.started_at == victim_before.started_at,
        "started_at changed: {} -> {}",
        victim_before.started_at,
        status.started_at
    );
    ensure!(
        env.sh(&keeper, "echo keeper-alive").await? == "keeper-alive\n",
        "the other container broke"
    );
    let exec = env.cri.exec_sync(&victim, &["true"], 5).await;
    ensure!(
        exec.is_err(),
        "ExecSync in the dead container succeeded: {exec:?}"
    );

    let after_first = lists(env).await?;
    expect_same_identity(&before, &after_first, "after the first restart")?;
    for (id, b) in &before.containers {
        let a = &after_first.containers[id];
        let expected = if *id == victim {
            ContainerState::ContainerExited as i32
        } else {
            b.state
        };
        ensure!(
            a.state == expected,
            "container {id} is {} after the restart, expected {expected}",
            a.state
        );
    }
    for (id, b) in &before.pods {
        ensure!(
            after_first.pods[id].state == b.state,
            "pod {id} state {} -> {}",
            b.state,
            after_first.pods[id].state
        );
    }
    let statuses_first = statuses(env, &after_first).await?;

    env.kill_daemon().await?;
    env.restart_daemon().await?;
    let after_second = lists(env).await?;
    ensure!(
        after_second == after_first,
        "a second restart with no changes changed the lists:\nbefore {after_first:#?}\nafter  {after_second:#?}"
    );
    let statuses_second = statuses(env, &after_second).await?;
    for (id, first) in &statuses_first.containers {
        let second = &statuses_second.containers[id];
        ensure!(
            first == second,
            "a second restart changed ContainerStatus of {id}:\nbefore {first:?}\nafter  {second:?}"
        );
    }
    for (id, first) in &statuses_first.pods {
        let second = &statuses_second.pods[id];
        ensure!(
            first == second,
            "a second restart changed PodSandboxStatus of {id}:\nbefore {first:?}\nafter  {second:?}"
        );
    }
    ensure!(env.sh(&keeper, "echo still").await? == "still\n");
    env.cri
        .start_container(&idle)
        .await
        .context("starting the created container after two restarts")?;
    ensure!(env.sh(&idle, "echo idle-now-running").await? == "idle-now-running\n");

    env.cri.stop_pod_sandbox(&pod.id).await?;
    env.cri.remove_pod_sandbox(&pod.id).await?;
    env.assert_no_leaks()
}

#[test]
fn a_start_crustd_did_not_live_to_record_is_found_running() {
    run(
        "a_start_crustd_did_not_live_to_record_is_found_running",
        unrecorded_start,
    );
}

/// runc started the container, then crustd died before recording it (the
/// window between `runc start` and the record's save): after the restart the
/// container is running, not created for good with every start failing.
async fn unrecorded_start(env: &mut TestEnv) -> Result<()> {
    env.pull(&env.images.busybox.reference).await?;
    let pod = env.run_pod("unrecorded-start").await?;
    let config = env.shell_container(&pod, "started", "exec sleep 3600")?;
    let id = env.create_container(&pod, &config).await?;
    env.kill_daemon().await?;
    let runc_root = env.daemon.paths().state.join("runc");
    tool(
        "runc",
        &["--root", &runc_root.to_string_lossy(), "start", &id],
    )?;
    env.restart_daemon().await?;

    let status = env.cri.container_status(&id).await?;
    ensure!(
        status.state == ContainerState::ContainerRunning as i32 && status.started_at > 0,
        "a container runc runs is {:?} (started_at {}) after the restart",
        status.state,
        status.started_at
    );
    expect_code(
        env.cri.start_container(&id).await,
        Code::FailedPrecondition,
        "StartContainer of the running container",
    )?;
    env.cri.stop_pod_sandbox(&pod.id).await?;
    env.cri.remove_pod_sandbox(&pod.id).await?;
    env.assert_no_leaks()
}
