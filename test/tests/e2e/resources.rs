//! LinuxContainerResources land where the kernel enforces them: memory and
//! CPU limits in the container's cgroup (v1 controllers or the v2 unified
//! hierarchy), even when kubelet's hugepage limits come along on a host
//! without the hugetlb controller, and oom_score_adj on the container's processes, never below
//! crustd's own (root without CAP_SYS_RESOURCE cannot lower it).
//! UpdateContainerResources changes the limits of a running container, and
//! ContainerStatus reports them, also after a restart of crustd.

use std::path::PathBuf;

use anyhow::{Context, Result, ensure};
use crust_e2e::assertions::expect_code;
use crust_e2e::cgroups;
use crust_e2e::cri::{ContainerConfig, HugepageLimit};
use crust_e2e::pod_config::resources_mut;
use crust_e2e::{Pod, TestEnv, run};
use tonic::Code;

const MIB: i64 = 1024 * 1024;

/// Reads `file` of the cgroup of host process `pid` in v1 controller
/// `controller` (or the v2 cgroup when `controller` is empty), trimmed.
fn cgroup_value(pid: i32, controller: &str, file: &str) -> Result<(PathBuf, String)> {
    let path = cgroups::process_file(pid, controller, file).with_context(|| {
        format!(
            "no {file} for pid {pid} (controller {controller:?}); its cgroups: {:?}",
            cgroups::of_process(pid)
        )
    })?;
    let value =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok((path, value.trim().to_string()))
}

/// Requires every cgroup of `pid` to lie below the pod's cgroup parent and to
/// name the container.
fn expect_cgroup_placement(pid: i32, pod: &Pod, container_id: &str) -> Result<()> {
    let parent = pod
        .config
        .linux
        .as_ref()
        .map(|l| l.cgroup_parent.clone())
        .unwrap_or_default();
    for (controllers, path) in cgroups::of_process(pid)? {
        if controllers.starts_with("name=") {
            continue;
        }
        ensure!(
            path.starts_with(&format!("{parent}/")),
            "cgroup {path} ({controllers}) of the container is not below the pod's cgroup parent {parent}"
        );
        ensure!(
            path.contains(container_id),
            "cgroup {path} ({controllers}) does not name container {container_id}"
        );
    }
    Ok(())
}

#[test]
fn memory_and_cpu_limits_land_in_the_cgroup() {
    run("memory_and_cpu_limits_land_in_the_cgroup", limits);
}

/// A busybox `sleep` container with a 64 MiB memory limit, 256 CPU shares
/// and a quota of 20 ms per 100 ms.
fn limited_sleeper(env: &TestEnv, pod: &Pod, name: &str) -> Result<ContainerConfig> {
    let mut config = env.container_config(pod, name, &env.images.busybox.reference)?;
    config.command = vec!["sleep".into(), "3600".into()];
    let r = resources_mut(&mut config);
    r.memory_limit_in_bytes = 64 * MIB;
    r.cpu_shares = 256;
    r.cpu_quota = 20_000;
    r.cpu_period = 100_000;
    Ok(config)
}

async fn limits(env: &mut TestEnv) -> Result<()> {
    let busybox = env.images.busybox.reference.clone();
    env.pull(&busybox).await?;
    let pod = env.run_pod("limits").await?;
    let mut config = limited_sleeper(env, &pod, "limited")?;
    // As kubelet sends them: a limit of 0 for every page size it knows,
    // whether or not the host has the hugetlb controller (this one has
    // not; the limits are then dropped and the others still apply).
    resources_mut(&mut config).hugepage_limits = ["2MB", "1GB"]
        .into_iter()
        .map(|page_size| HugepageLimit {
            page_size: page_size.into(),
            limit: 0,
        })
        .collect();
    let id = env.start_container(&pod, &config).await?;
    let pid = env.container_pid(&id).await?;
    expect_cgroup_placement(pid, &pod, &id)?;
    expect_limits(pid, 64 * MIB, 256, 20_000)?;
    env.cri.stop_pod_sandbox(&pod.id).await?;
    env.cri.remove_pod_sandbox(&pod.id).await?;
    env.assert_no_leaks()
}

#[test]
fn updated_resources_land_in_the_cgroup_and_survive_a_restart() {
    run(
        "updated_resources_land_in_the_cgroup_and_survive_a_restart",
        update,
    );
}

/// The cgroup files that show a memory limit, CPU shares (v1) or weight
/// (v2, as runc converts shares) and CPU quota and period, with the values
/// expected for `memory`, `shares` and `quota` (period 100 ms).
fn limit_files(memory: i64, shares: u64, quota: i64) -> Vec<(&'static str, &'static str, String)> {
    if cgroups::is_unified_only() {
        vec![
            ("", "memory.max", memory.to_string()),
            ("", "cpu.max", format!("{quota} 100000")),
            (
                "",
                "cpu.weight",
                (1 + ((shares - 2) * 9999) / 262_142).to_string(),
            ),
        ]
    } else {
        vec![
            ("memory", "memory.limit_in_bytes", memory.to_string()),
            ("cpu", "cpu.shares", shares.to_string()),
            ("cpu", "cpu.cfs_quota_us", quota.to_string()),
            ("cpu", "cpu.cfs_period_us", "100000".to_string()),
        ]
    }
}

fn expect_limits(pid: i32, memory: i64, shares: u64, quota: i64) -> Result<()> {
    for (controller, file, wanted) in limit_files(memory, shares, quota) {
        let (path, value) = cgroup_value(pid, controller, file)?;
        ensure!(
            value == wanted,
            "{} is {value}, expected {wanted}",
            path.display()
        );
    }
    Ok(())
}

async fn update(env: &mut TestEnv) -> Result<()> {
    let busybox = env.images.busybox.reference.clone();
    env.pull(&busybox).await?;
    let pod = env.run_pod("update").await?;
    let mut config = limited_sleeper(env, &pod, "updated")?;
    let id = env.start_container(&pod, &config).await?;
    let pid = env.container_pid(&id).await?;
    expect_limits(pid, 64 * MIB, 256, 20_000)?;

    let mut new = resources_mut(&mut config).clone();
    new.memory_limit_in_bytes = 96 * MIB;
    new.cpu_shares = 512;
    new.cpu_quota = 50_000;
    env.cri.update_container_resources(&id, new.clone()).await?;
    expect_limits(pid, 96 * MIB, 512, 50_000)?;

    let mut bad = new.clone();
    bad.unified.insert("../../escape".into(), "1".into());
    expect_code(
        env.cri.update_container_resources(&id, bad).await,
        Code::InvalidArgument,
        "a unified key that leaves the cgroup",
    )?;
    expect_code(
        env.cri
            .update_container_resources("nope", new.clone())
            .await,
        Code::NotFound,
        "UpdateContainerResources of an unknown container",
    )?;

    env.restart_daemon().await?;
    let status = env.cri.container_status(&id).await?;
    let reported = status
        .resources
        .and_then(|r| r.linux)
        .context("ContainerStatus carries no Linux resources")?;
    ensure!(
        reported.memory_limit_in_bytes == 96 * MIB
            && reported.cpu_shares == 512
            && reported.cpu_quota == 50_000,
        "after a restart ContainerStatus reports {reported:?}"
    );
    expect_limits(pid, 96 * MIB, 512, 50_000)?;

    env.cri.stop_container(&id, 0).await?;
    expect_code(
        env.cri.update_container_resources(&id, new).await,
        Code::FailedPrecondition,
        "UpdateContainerResources of an exited container",
    )?;
    env.cri.stop_pod_sandbox(&pod.id).await?;
    env.cri.remove_pod_sandbox(&pod.id).await?;
    env.assert_no_leaks()
}

#[test]
fn oom_score_adj_is_applied_but_never_below_crustd() {
    run("oom_score_adj_is_applied_but_never_below_crustd", oom_score);
}

async fn oom_score(env: &mut TestEnv) -> Result<()> {
    let busybox = env.images.busybox.reference.clone();
    env.pull(&busybox).await?;
    let crustd = env.daemon.pid().context("crustd is not running")?;
    let own: i64 = std::fs::read_to_string(format!("/proc/{crustd}/oom_score_adj"))?
        .trim()
        .parse()?;
    let pod = env.run_pod("oom-score").await?;
    for (name, requested) in [("low", -998), ("mid", 500), ("zero", 0), ("max", 1000)] {
        let mut config = env.container_config(&pod, name, &busybox)?;
        config.command = vec!["sleep".into(), "3600".into()];
        resources_mut(&mut config).oom_score_adj = requested;
        let id = env
            .start_container(&pod, &config)
            .await
            .with_context(|| format!("oom_score_adj {requested} must not fail the container"))?;
        let expected = requested.max(own);
        let seen = env.sh(&id, "cat /proc/1/oom_score_adj").await?;
        ensure!(
            seen.trim() == expected.to_string(),
            "oom_score_adj {requested} (crustd's own {own}): pid 1 has {seen:?}, expected {expected}"
        );
        let exec_seen = env.sh(&id, "cat /proc/self/oom_score_adj").await?;
        ensure!(
            exec_seen.trim() == expected.to_string(),
            "oom_score_adj {requested}: an exec'd process has {exec_seen:?}, expected {expected}"
        );
        let pid = env.container_pid(&id).await?;
        let from_host = std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj"))?;
        ensure!(
            from_host.trim() == expected.to_string(),
            "oom_score_adj {requested}: /proc/{pid}/oom_score_adj on the host is {from_host:?}"
        );
    }
    env.cri.stop_pod_sandbox(&pod.id).await?;
    env.cri.remove_pod_sandbox(&pod.id).await?;
    env.assert_no_leaks()
}
