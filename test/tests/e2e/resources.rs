//! LinuxContainerResources land where the kernel enforces them: memory and
//! CPU limits in the container's cgroup (v1 controllers or the v2 unified
//! hierarchy), even when kubelet's hugepage limits come along on a host
//! without the hugetlb controller, and oom_score_adj on the container's processes, never below
//! crustd's own (root without CAP_SYS_RESOURCE cannot lower it).
//! UpdateContainerResources changes the limits of a running container, and
//! ContainerStatus reports them, also after a restart of crustd.

use std::path::PathBuf;

use anyhow::{Context, Result, ensure};
use crust_e2e::cgroups;
use crust_e2e::cri::HugepageLimit;
use crust_e2e::pod_config::resources_mut;
use crust_e2e::{Pod, TestEnv, run};

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

async fn limits(env: &mut TestEnv) -> Result<()> {
    let busybox = env.images.busybox.reference.clone();
    env.pull(&busybox).await?;
    let pod = env.run_pod("limits").await?;
    let mut config = env.container_config(&pod, "limited", &busybox)?;
    config.command = vec!["sleep".into(), "3600".into()];
    {
        let r = resources_mut(&mut config);
        r.memory_limit_in_bytes = 64 * MIB;
        r.cpu_shares = 256;
        r.cpu_quota = 20_000;
        r.cpu_period = 100_000;
        // As kubelet sends them: a limit of 0 for every page size it knows,
        // whether or not the host has the hugetlb controller (this one has
        // not; the limits are then dropped and the others still apply).
        r.hugepage_limits = ["2MB", "1GB"]
            .into_iter()
            .map(|page_size| HugepageLimit {
                page_size: page_size.into(),
                limit: 0,
            })
            .collect();
    }
    let id = env.start_container(&pod, &config).await?;
    let pid = env.container_pid(&id).await?;
    expect_cgroup_placement(pid, &pod, &id)?;

    if cgroups::is_unified_only() {
        let (path, max) = cgroup_value(pid, "", "memory.max")?;
        ensure!(
            max == (64 * MIB).to_string(),
            "{} is {max}, expected {}",
            path.display(),
            64 * MIB
        );
        let (path, cpu_max) = cgroup_value(pid, "", "cpu.max")?;
        ensure!(
            cpu_max == "20000 100000",
            "{} is {cpu_max:?}, expected \"20000 100000\"",
            path.display()
        );
        // The runc/crun conversion of shares 256 to a weight.
        let (path, weight) = cgroup_value(pid, "", "cpu.weight")?;
        let expected = 1 + ((256 - 2) * 9999) / 262_142;
        ensure!(
            weight == expected.to_string(),
            "{} is {weight}, expected {expected} (from cpu_shares 256)",
            path.display()
        );
    } else {
        let (path, limit) = cgroup_value(pid, "memory", "memory.limit_in_bytes")?;
        ensure!(
            limit == (64 * MIB).to_string(),
            "{} is {limit}, expected {}",
            path.display(),
            64 * MIB
        );
        for (file, wanted) in [
            ("cpu.shares", "256"),
            ("cpu.cfs_quota_us", "20000"),
            ("cpu.cfs_period_us", "100000"),
        ] {
            let (path, value) = cgroup_value(pid, "cpu", file)?;
            ensure!(
                value == wanted,
                "{} is {value}, expected {wanted}",
                path.display()
            );
        }
    }
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
/// (v2) and CPU quota, with the values expected for `memory`, `shares` and
/// `quota` (period 100 ms).
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
    let mut config = env.container_config(&pod, "updated", &busybox)?;
    config.command = vec!["sleep".into(), "3600".into()];
    {
        let r = resources_mut(&mut config);
        r.memory_limit_in_bytes = 64 * MIB;
        r.cpu_shares = 256;
        r.cpu_quota = 20_000;
        r.cpu_period = 100_000;
    }
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
    let refused = env.cri.update_container_resources(&id, bad).await;
    ensure!(
        matches!(&refused, Err(s) if s.code() == tonic::Code::InvalidArgument),
        "a unified key that leaves the cgroup was not refused: {refused:?}"
    );
    let unknown = env
        .cri
        .update_container_resources("nope", new.clone())
        .await;
    ensure!(
        matches!(&unknown, Err(s) if s.code() == tonic::Code::NotFound),
        "an unknown container was not NotFound: {unknown:?}"
    );

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
    let exited = env.cri.update_container_resources(&id, new).await;
    ensure!(
        matches!(&exited, Err(s) if s.code() == tonic::Code::FailedPrecondition),
        "an exited container's update was not FailedPrecondition: {exited:?}"
    );
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
