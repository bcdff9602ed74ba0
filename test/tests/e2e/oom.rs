//! A container killed by the kernel's OOM killer for exceeding its memory limit
//! reports reason OOMKilled (exit code 137), as kubelet expects.

use std::time::Duration;

use anyhow::{Result, ensure};
use crust_e2e::cri::ContainerState;
use crust_e2e::pod_config::resources_mut;
use crust_e2e::{TestEnv, run};

#[test]
fn out_of_memory_is_reported_as_oomkilled() {
    run("out_of_memory_is_reported_as_oomkilled", oom_killed);
}

async fn oom_killed(env: &mut TestEnv) -> Result<()> {
    env.pull(&env.images.busybox.reference).await?;
    let pod = env.run_pod("hungry").await?;
    // dd's 256 MiB buffer is filled from /dev/zero: far past a 32 MiB limit.
    let mut config = env.shell_container(
        &pod,
        "hungry",
        "dd if=/dev/zero of=/dev/null bs=256M count=1",
    )?;
    resources_mut(&mut config).memory_limit_in_bytes = 32 << 20;
    let id = env.start_container(&pod, &config).await?;
    let status = env
        .wait_for_state(
            &id,
            ContainerState::ContainerExited,
            Duration::from_secs(60),
        )
        .await?;
    ensure!(
        status.exit_code == 137 && status.reason == "OOMKilled",
        "expected 137/OOMKilled, got {}/{:?}",
        status.exit_code,
        status.reason
    );

    let calm = env.shell_container(&pod, "calm", "exit 137")?;
    let calm_id = env.start_container(&pod, &calm).await?;
    let status = env
        .wait_for_state(
            &calm_id,
            ContainerState::ContainerExited,
            Duration::from_secs(60),
        )
        .await?;
    ensure!(
        status.exit_code == 137 && status.reason == "Error",
        "a plain exit 137 must be Error, got {}/{:?}",
        status.exit_code,
        status.reason
    );
    env.cri.stop_pod_sandbox(&pod.id).await?;
    env.cri.remove_pod_sandbox(&pod.id).await?;
    env.assert_no_leaks()
}
