//! What a container sees inside its pod: hostname, DNS and hosts files,
//! /dev/shm, loopback, shared and private namespaces; its log file in the CRI
//! format; and ExecSync's timeout.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use crust_e2e::assertions::expect_code;
use crust_e2e::cri::ContainerState;
use crust_e2e::cri_log::{self, Stream};
use crust_e2e::env::nanos_since_epoch;
use crust_e2e::{Pod, TestEnv, run, wait};
use tonic::Code;

/// Starts a busybox container `name` in `pod` that just sleeps.
async fn sleeper(env: &TestEnv, pod: &Pod, name: &str) -> Result<String> {
    let mut config = env.container_config(pod, name, &env.images.busybox.reference)?;
    config.command = vec!["sleep".into(), "3600".into()];
    env.start_container(pod, &config).await
}

#[test]
fn pod_hostname_dns_hosts_shm_and_loopback() {
    run(
        "pod_hostname_dns_hosts_shm_and_loopback",
        pod_files_and_network,
    );
}

async fn pod_files_and_network(env: &mut TestEnv) -> Result<()> {
    env.pull(&env.images.busybox.reference).await?;
    let mut config = env.pod_config("files")?;
    config.hostname = "e2e-hostname".into();
    let pod = env.run_pod_with(config).await?;
    let id = sleeper(env, &pod, "probe").await?;

    let hostname = env.sh(&id, "hostname").await?;
    ensure!(hostname.trim() == "e2e-hostname", "hostname {hostname:?}");
    let etc_hostname = env.sh(&id, "cat /etc/hostname").await?;
    ensure!(
        etc_hostname.trim() == "e2e-hostname",
        "/etc/hostname {etc_hostname:?}"
    );

    env.expect_pod_dns(&id).await?;

    let hosts = env.sh(&id, "cat /etc/hosts").await?;
    ensure!(
        hosts.contains("localhost"),
        "/etc/hosts has no localhost entry:\n{hosts}"
    );

    let mounts = env.sh(&id, "cat /proc/mounts").await?;
    let shm = mounts
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("/dev/shm"))
        .with_context(|| format!("/dev/shm is not a mount:\n{mounts}"))?;
    ensure!(
        shm.split_whitespace().nth(2) == Some("tmpfs"),
        "/dev/shm is not tmpfs: {shm}"
    );
    let written = env
        .sh(&id, "echo shm-ok > /dev/shm/probe && cat /dev/shm/probe")
        .await?;
    ensure!(written == "shm-ok\n", "/dev/shm not writable: {written:?}");

    let lo_addr = env.sh(&id, "ip addr show lo").await?;
    ensure!(
        lo_addr.contains("inet 127.0.0.1/8"),
        "lo has no 127.0.0.1:\n{lo_addr}"
    );
    let lo_link = env.sh(&id, "ip link show lo").await?;
    let flags = lo_link.split(['<', '>']).nth(1).unwrap_or_default();
    ensure!(
        flags.split(',').any(|f| f == "UP"),
        "lo is not up:\n{lo_link}"
    );

    let host_net = std::fs::read_link("/proc/self/ns/net")?;
    let pod_net = env.sh(&id, "readlink /proc/self/ns/net").await?;
    ensure!(
        pod_net.trim() != host_net.to_string_lossy(),
        "the pod shares the host network namespace ({pod_net:?})"
    );

    env.cri.stop_pod_sandbox(&pod.id).await?;
    env.cri.remove_pod_sandbox(&pod.id).await?;
    env.assert_no_leaks()
}

#[test]
fn containers_share_pod_namespaces_but_not_pid() {
    run(
        "containers_share_pod_namespaces_but_not_pid",
        shared_namespaces,
    );
}

async fn shared_namespaces(env: &mut TestEnv) -> Result<()> {
    env.pull(&env.images.busybox.reference).await?;
    let pod = env.run_pod("shared").await?;
    let first = sleeper(env, &pod, "first").await?;
    let second = sleeper(env, &pod, "second").await?;
    let mut namespaces: Vec<HashMap<String, String>> = Vec::new();
    for id in [&first, &second] {
        let mut links = HashMap::new();
        for ns in ["net", "ipc", "uts", "pid"] {
            let link = env.sh(id, &format!("readlink /proc/self/ns/{ns}")).await?;
            links.insert(ns.to_string(), link.trim().to_string());
        }
        namespaces.push(links);
    }
    for ns in ["net", "ipc", "uts"] {
        ensure!(
            namespaces[0][ns] == namespaces[1][ns],
            "{ns} namespace differs between containers of one pod: {} vs {}",
            namespaces[0][ns],
            namespaces[1][ns]
        );
    }
    ensure!(
        namespaces[0]["pid"] != namespaces[1]["pid"],
        "pid namespace shared although the pod asked for CONTAINER: {}",
        namespaces[0]["pid"]
    );
    let init = env.sh(&first, "cat /proc/1/cmdline").await?;
    ensure!(
        init == "sleep\u{0}3600\u{0}",
        "pid 1 of a container is {init:?}"
    );

    env.sh(&first, "echo from-first > /dev/shm/shared").await?;
    let read = env.sh(&second, "cat /dev/shm/shared").await?;
    ensure!(
        read == "from-first\n",
        "/dev/shm is not shared in the pod: {read:?}"
    );

    env.cri.stop_pod_sandbox(&pod.id).await?;
    env.cri.remove_pod_sandbox(&pod.id).await?;
    env.assert_no_leaks()
}

#[test]
fn container_logs_use_cri_format() {
    run("container_logs_use_cri_format", cri_format_logs);
}

async fn cri_format_logs(env: &mut TestEnv) -> Result<()> {
    env.pull(&env.images.busybox.reference).await?;
    let pod = env.run_pod("logs").await?;
    let config = env.shell_container(&pod, "talker", "echo out1; echo err1 >&2; printf partial")?;
    let before = env.started_nanos();
    let id = env.start_container(&pod, &config).await?;
    let status = env
        .wait_for_state(
            &id,
            ContainerState::ContainerExited,
            Duration::from_secs(30),
        )
        .await?;
    ensure!(status.exit_code == 0, "talker exited {}", status.exit_code);
    let path = pod.log_file(&config);
    ensure!(
        status.log_path == path.to_string_lossy(),
        "log_path {:?}",
        status.log_path
    );

    let records = wait::until("all three log records", Duration::from_secs(10), || async {
        let records = match cri_log::read_log(&path) {
            Ok(records) => records,
            Err(_) if !path.exists() => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok((records.len() >= 3).then_some(records))
    })
    .await?;
    let after = nanos_since_epoch(std::time::SystemTime::now());
    let raw = std::fs::read_to_string(&path)?;
    let has = |stream: Stream, content: &str| {
        records
            .iter()
            .any(|r| r.stream == stream && r.content == content)
    };
    ensure!(
        records
            .iter()
            .any(|r| r.stream == Stream::Stdout && !r.partial && r.content == "out1"),
        "no `stdout F out1` record:\n{raw}"
    );
    ensure!(
        records
            .iter()
            .any(|r| r.stream == Stream::Stderr && !r.partial && r.content == "err1"),
        "no `stderr F err1` record:\n{raw}"
    );
    ensure!(
        has(Stream::Stdout, "partial"),
        "no record of the unterminated `partial`:\n{raw}"
    );
    ensure!(records.len() == 3, "expected exactly 3 records:\n{raw}");
    for r in &records {
        ensure!(
            r.timestamp_nanos >= before - 5_000_000_000
                && r.timestamp_nanos <= after + 5_000_000_000,
            "timestamp {} outside the test's run [{before}, {after}]:\n{raw}",
            r.timestamp_nanos
        );
    }

    env.cri.stop_pod_sandbox(&pod.id).await?;
    env.cri.remove_pod_sandbox(&pod.id).await?;
    env.assert_no_leaks()
}

#[test]
fn exec_sync_honours_timeout() {
    run("exec_sync_honours_timeout", exec_timeout);
}

async fn exec_timeout(env: &mut TestEnv) -> Result<()> {
    env.pull(&env.images.busybox.reference).await?;
    let pod = env.run_pod("exec-timeout").await?;
    let id = sleeper(env, &pod, "target").await?;

    let quick = env.cri.exec_sync(&id, &["sleep", "1"], 5).await?;
    ensure!(
        quick.exit_code == 0,
        "sleep 1 with timeout 5 exited {}",
        quick.exit_code
    );

    let began = Instant::now();
    let outcome = env.cri.exec_sync(&id, &["sleep", "10"], 1).await;
    let took = began.elapsed();
    expect_code(
        outcome,
        Code::DeadlineExceeded,
        "ExecSync sleep 10 with timeout 1",
    )?;
    ensure!(
        took < Duration::from_secs(6),
        "ExecSync with timeout 1 returned after {took:?}"
    );

    let list = "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done";
    wait::until(
        "the timed-out exec to be killed",
        Duration::from_secs(5),
        || async {
            let procs = env.sh(&id, list).await?;
            Ok((!procs.lines().any(|l| l.trim() == "sleep 10")).then_some(()))
        },
    )
    .await?;

    let still = env.sh(&id, "echo still-works").await?;
    ensure!(still == "still-works\n");
    env.cri.stop_pod_sandbox(&pod.id).await?;
    env.cri.remove_pod_sandbox(&pod.id).await?;
    env.assert_no_leaks()
}
