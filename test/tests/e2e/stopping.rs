//! StopContainer: the grace period is honoured for a container that ignores
//! SIGTERM, a container that handles it stops at once, and timeout 0 kills.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use crust_e2e::cri::ContainerState;
use crust_e2e::{TestEnv, run, wait};

#[test]
fn stop_container_honours_grace_period() {
    run("stop_container_honours_grace_period", stop_grace_period);
}

async fn stop_grace_period(env: &mut TestEnv) -> Result<()> {
    env.pull(&env.images.busybox.reference).await?;
    let pod = env.run_pod("stopper").await?;
    let loop_body = "touch /tmp/ready; while true; do sleep 1; done";
    let stubborn = env
        .start_container(
            &pod,
            &env.shell_container(&pod, "stubborn", &format!("trap '' TERM; {loop_body}"))?,
        )
        .await?;
    let polite = env
        .start_container(
            &pod,
            &env.shell_container(&pod, "polite", &format!("trap 'exit 0' TERM; {loop_body}"))?,
        )
        .await?;
    let doomed = env
        .start_container(
            &pod,
            &env.shell_container(&pod, "doomed", &format!("trap '' TERM; {loop_body}"))?,
        )
        .await?;
    for id in [&stubborn, &polite, &doomed] {
        wait::until(
            "the TERM trap to be installed",
            Duration::from_secs(20),
            || async {
                Ok(
                    (env.exec(id, &["test", "-f", "/tmp/ready"]).await?.exit_code == 0)
                        .then_some(()),
                )
            },
        )
        .await?;
    }

    let began = Instant::now();
    env.cri.stop_container(&stubborn, 2).await?;
    let took = began.elapsed();
    ensure!(
        took >= Duration::from_secs(2),
        "StopContainer(timeout 2) of a TERM-ignoring container took {took:?}"
    );
    ensure!(
        took < Duration::from_secs(10),
        "StopContainer(timeout 2) took {took:?}"
    );
    expect_exit(env, &stubborn, 137, "Error").await?;

    let began = Instant::now();
    env.cri.stop_container(&polite, 10).await?;
    let took = began.elapsed();
    ensure!(
        took < Duration::from_secs(5),
        "StopContainer of a TERM-handling container took {took:?}"
    );
    expect_exit(env, &polite, 0, "Completed").await?;

    let began = Instant::now();
    env.cri.stop_container(&doomed, 0).await?;
    let took = began.elapsed();
    ensure!(
        took < Duration::from_millis(1900),
        "StopContainer(timeout 0) took {took:?}"
    );
    expect_exit(env, &doomed, 137, "Error").await?;

    env.cri.stop_pod_sandbox(&pod.id).await?;
    env.cri.remove_pod_sandbox(&pod.id).await?;
    env.assert_no_leaks()
}

async fn expect_exit(env: &TestEnv, id: &str, code: i32, reason: &str) -> Result<()> {
    let status = env.cri.container_status(id).await?;
    ensure!(
        status.state == ContainerState::ContainerExited as i32,
        "state {} right after StopContainer returned",
        status.state
    );
    ensure!(
        status.exit_code == code && status.reason == reason,
        "exit_code {} reason {:?}, expected {code} {reason:?}",
        status.exit_code,
        status.reason
    );
    ensure!(status.finished_at >= status.started_at && status.finished_at > 0);
    Ok(())
}
