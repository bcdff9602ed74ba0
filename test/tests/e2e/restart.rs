//! crustd can be killed with SIGKILL at any moment: after a restart every
//! container is found in its true state, including one that exited while
//! crustd was down, and everything can still be stopped and removed.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use crust_e2e::cri::{ContainerState, PodSandboxState};
use crust_e2e::env::nanos_since_epoch;
use crust_e2e::{TestEnv, run};

#[test]
fn containers_survive_daemon_kill_and_restart() {
    run(
        "containers_survive_daemon_kill_and_restart",
        survive_restart,
    );
}

async fn survive_restart(env: &mut TestEnv) -> Result<()> {
    let busybox = env.images.busybox.reference.clone();
    env.pull(&busybox).await?;
    let pod = env.run_pod("restart").await?;

    let mut runner = env.container_config(&pod, "runner", &busybox)?;
    runner.command = vec!["sleep".into(), "3600".into()];
    let runner = env.start_container(&pod, &runner).await?;
    let exited = env
        .start_container(&pod, &env.shell_container(&pod, "exited", "exit 5")?)
        .await?;
    let exited_before = env
        .wait_for_state(
            &exited,
            ContainerState::ContainerExited,
            Duration::from_secs(30),
        )
        .await?;
    ensure!(
        exited_before.exit_code == 5,
        "exit code before restart {}",
        exited_before.exit_code
    );
    let mut idle = env.container_config(&pod, "idle", &busybox)?;
    idle.command = vec!["sleep".into(), "3600".into()];
    let idle = env.create_container(&pod, &idle).await?;
    let late = env
        .start_container(&pod, &env.shell_container(&pod, "late", "sleep 2; exit 9")?)
        .await?;
    let late_started = Instant::now();
    let runner_before = env.cri.container_status(&runner).await?;
    let late_before = env.cri.container_status(&late).await?;
    ensure!(
        late_before.state == ContainerState::ContainerRunning as i32,
        "`late` must still run when crustd is killed (state {})",
        late_before.state
    );

    env.kill_daemon().await?;
    let remaining = Duration::from_secs(4).saturating_sub(late_started.elapsed());
    tokio::time::sleep(remaining).await;
    let restarted_at = nanos_since_epoch(std::time::SystemTime::now());
    env.restart_daemon().await?;

    let runner_after = env.cri.container_status(&runner).await?;
    ensure!(
        runner_after.state == ContainerState::ContainerRunning as i32,
        "running container is {} after restart",
        runner_after.state
    );
    ensure!(
        runner_after.started_at == runner_before.started_at,
        "started_at changed across restart"
    );
    ensure!(
        env.sh(&runner, "echo still-here").await? == "still-here\n",
        "ExecSync after restart"
    );

    let exited_after = env.cri.container_status(&exited).await?;
    ensure!(
        exited_after.state == ContainerState::ContainerExited as i32
            && exited_after.exit_code == 5
            && exited_after.reason == "Error",
        "exited container after restart: state {} code {} reason {:?}",
        exited_after.state,
        exited_after.exit_code,
        exited_after.reason
    );
    ensure!(
        exited_after.finished_at == exited_before.finished_at,
        "finished_at changed across restart"
    );

    let late_after = env.cri.container_status(&late).await?;
    ensure!(
        late_after.state == ContainerState::ContainerExited as i32 && late_after.exit_code == 9,
        "container that exited while crustd was down: state {} code {}",
        late_after.state,
        late_after.exit_code
    );
    ensure!(
        late_after.finished_at > late_after.started_at && late_after.finished_at < restarted_at,
        "finished_at {} is not the real exit time (started {}, crustd restarted {restarted_at})",
        late_after.finished_at,
        late_after.started_at
    );

    let idle_after = env.cri.container_status(&idle).await?;
    ensure!(
        idle_after.state == ContainerState::ContainerCreated as i32,
        "created container is {}",
        idle_after.state
    );
    env.cri
        .start_container(&idle)
        .await
        .context("StartContainer after restart")?;
    ensure!(env.sh(&idle, "echo started-late").await? == "started-late\n");

    let pod_after = env.cri.pod_sandbox_status(&pod.id).await?;
    ensure!(
        pod_after.state == PodSandboxState::SandboxReady as i32,
        "pod state {} after restart",
        pod_after.state
    );
    ensure!(
        env.cri.list_containers(None).await?.len() == 4,
        "containers lost across restart"
    );
    ensure!(
        env.cri.image_status(&busybox).await?.is_some(),
        "image lost across restart"
    );

    for id in [&runner, &exited, &idle, &late] {
        env.cri
            .stop_container(id, 0)
            .await
            .with_context(|| format!("StopContainer {id}"))?;
        env.cri
            .remove_container(id)
            .await
            .with_context(|| format!("RemoveContainer {id}"))?;
    }
    env.cri.stop_pod_sandbox(&pod.id).await?;
    env.cri.remove_pod_sandbox(&pod.id).await?;
    env.assert_no_leaks()?;

    env.kill_daemon().await?;
    env.restart_daemon().await?;
    ensure!(
        env.cri.list_containers(None).await?.is_empty(),
        "removed containers came back"
    );
    ensure!(
        env.cri.list_pod_sandbox(None).await?.is_empty(),
        "removed pod came back"
    );
    Ok(())
}
