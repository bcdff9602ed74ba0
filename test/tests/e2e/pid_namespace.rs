//! Pods that share one PID namespace (`namespace_options.pid = POD`, the CRI
//! default), and crictl's minimal pod that sends no namespace options at all:
//! containers see each other's processes, and the pod still stops and is
//! removed without leaving a process, cgroup or mount behind.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use crust_e2e::cgroups;
use crust_e2e::cri::{
    ContainerConfig, ContainerMetadata, ContainerState, LinuxPodSandboxConfig, NamespaceMode,
    PodSandboxConfig, PodSandboxMetadata, PodSandboxState,
};
use crust_e2e::cri_client::image_spec;
use crust_e2e::env::POD_NAMESPACE;
use crust_e2e::pod_config::{namespace_options, sandbox_security_mut, security_mut};
use crust_e2e::{Pod, TestEnv, cri_log, run, unique, wait};

/// Shell loop that prints one line per process: its pid and its command line.
const LIST_PROCESSES: &str =
    "for p in /proc/[0-9]*; do echo \"${p#/proc/} $(tr '\\0' ' ' < $p/cmdline)\"; done";

/// The command lines (NULs turned into spaces, trimmed) of every process that
/// container `id` can see.
async fn visible_commands(env: &TestEnv, id: &str) -> Result<Vec<String>> {
    let out = env.sh(id, LIST_PROCESSES).await?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(_, cmd)| cmd.trim().to_string()))
        .collect())
}

/// Host pids whose command line is exactly `args`.
fn host_processes_running(args: &[&str]) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            crust_e2e::processes::cmdline(*pid)
                .is_some_and(|cmd| cmd.iter().map(String::as_str).eq(args.iter().copied()))
        })
        .collect()
}

/// A `sleep <seconds>` command line that no other test uses.
fn unique_sleep() -> Vec<String> {
    let counter: u32 = unique::suffix()
        .rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let n = 40_000 + (std::process::id() % 1000) * 100 + counter % 100;
    vec!["sleep".into(), n.to_string()]
}

/// Requires each of `ids` (containers of one pod) to see the others' processes,
/// given the command line each runs, and all to share one PID namespace that is
/// not the host's.
async fn expect_shared_pids(env: &TestEnv, ids: &[(&str, &[String])]) -> Result<()> {
    let host_pidns = std::fs::read_link("/proc/self/ns/pid")?;
    let mut links = Vec::new();
    for (id, _) in ids {
        let link = env.sh(id, "readlink /proc/self/ns/pid").await?;
        links.push(link.trim().to_string());
    }
    ensure!(
        links.iter().all(|l| *l == links[0]),
        "containers of a pod with pid POD are in different PID namespaces: {links:?}"
    );
    ensure!(
        links[0] != host_pidns.to_string_lossy(),
        "the pod's containers run in the host PID namespace ({})",
        links[0]
    );
    for (viewer, _) in ids {
        let seen = visible_commands(env, viewer).await?;
        for (other, cmd) in ids {
            let wanted = cmd.join(" ");
            ensure!(
                seen.contains(&wanted),
                "container {viewer} does not see `{wanted}` of container {other}; it sees {seen:?}"
            );
        }
        let ps = env.sh(viewer, "ps").await?;
        for (_, cmd) in ids {
            let wanted = cmd.join(" ");
            ensure!(ps.contains(&wanted), "`ps` lacks `{wanted}`:\n{ps}");
        }
    }
    Ok(())
}

/// Requires every container of `pod` to be EXITED right after StopPodSandbox.
async fn expect_all_exited(env: &TestEnv, ids: &[&str]) -> Result<()> {
    for id in ids {
        let status = env.cri.container_status(id).await?;
        ensure!(
            status.state == ContainerState::ContainerExited as i32,
            "container {id} is {} after StopPodSandbox returned",
            ContainerState::try_from(status.state)
                .map(|s| s.as_str_name())
                .unwrap_or("?")
        );
        ensure!(
            status.finished_at > 0 && status.finished_at >= status.started_at,
            "container {id}: finished_at {} started_at {}",
            status.finished_at,
            status.started_at
        );
    }
    Ok(())
}

#[test]
fn pod_pid_namespace_is_shared_by_its_containers() {
    run(
        "pod_pid_namespace_is_shared_by_its_containers",
        shared_pid_pod,
    );
}

async fn shared_pid_pod(env: &mut TestEnv) -> Result<()> {
    let busybox = env.images.busybox.reference.clone();
    env.pull(&busybox).await?;
    let mut config = env.pod_config("shared-pid")?;
    sandbox_security_mut(&mut config).namespace_options = Some(namespace_options(
        NamespaceMode::Pod,
        NamespaceMode::Pod,
        NamespaceMode::Pod,
    ));
    let pod = env.run_pod_with(config).await?;
    let cgroup_parent = pod
        .config
        .linux
        .as_ref()
        .map(|l| l.cgroup_parent.clone())
        .unwrap_or_default();

    let mut started = Vec::new();
    for name in ["alpha", "beta"] {
        let mut c = env.container_config(&pod, name, &busybox)?;
        c.command = unique_sleep();
        security_mut(&mut c).namespace_options = Some(namespace_options(
            NamespaceMode::Pod,
            NamespaceMode::Pod,
            NamespaceMode::Pod,
        ));
        let id = env.start_container(&pod, &c).await?;
        started.push((id, c.command.clone()));
    }
    let views: Vec<(&str, &[String])> = started
        .iter()
        .map(|(id, cmd)| (id.as_str(), cmd.as_slice()))
        .collect();
    expect_shared_pids(env, &views).await?;

    // A signal sent from one container reaches a process of the other.
    let beta_cmd = started[1].1.join(" ");
    let kill = format!(
        "for p in /proc/[0-9]*; do [ \"$(tr '\\0' ' ' < $p/cmdline)\" = \"{beta_cmd} \" ] && kill -TERM ${{p#/proc/}}; done; true"
    );
    env.sh(&started[0].0, &kill).await?;
    let beta = env
        .wait_for_state(
            &started[1].0,
            ContainerState::ContainerExited,
            Duration::from_secs(10),
        )
        .await
        .context("beta after alpha sent SIGTERM to its sleep")?;
    ensure!(
        beta.exit_code == 143,
        "beta killed by SIGTERM from alpha exited {}",
        beta.exit_code
    );
    ensure!(
        env.sh(&started[0].0, "echo alpha-alive").await? == "alpha-alive\n",
        "alpha did not survive beta's exit"
    );

    let ids: Vec<&str> = started.iter().map(|(id, _)| id.as_str()).collect();
    env.cri.stop_pod_sandbox(&pod.id).await?;
    expect_all_exited(env, &ids).await?;
    let status = env.cri.pod_sandbox_status(&pod.id).await?;
    ensure!(
        status.state == PodSandboxState::SandboxNotready as i32,
        "pod state {} after StopPodSandbox",
        status.state
    );
    env.cri.remove_pod_sandbox(&pod.id).await?;
    let left = env.cri.list_containers(None).await?;
    ensure!(left.is_empty(), "RemovePodSandbox left {left:?}");
    for (_, cmd) in &started {
        let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
        let pids = host_processes_running(&args);
        ensure!(
            pids.is_empty(),
            "`{}` still runs as {pids:?}",
            cmd.join(" ")
        );
    }
    expect_empty_cgroups(&cgroup_parent)?;
    env.assert_no_leaks()
}

/// Requires no process (for example a leaked pause process) in any cgroup of
/// the pod's cgroup parent tree.
fn expect_empty_cgroups(cgroup_parent: &str) -> Result<()> {
    for root in cgroups::tree_roots(cgroup_parent) {
        for dir in walk_dirs(root) {
            let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            ensure!(
                procs.trim().is_empty(),
                "processes {:?} left in cgroup {} after RemovePodSandbox",
                procs.split_whitespace().collect::<Vec<_>>(),
                dir.display()
            );
        }
    }
    Ok(())
}

fn walk_dirs(root: PathBuf) -> Vec<PathBuf> {
    let mut all = vec![root];
    let mut i = 0;
    while i < all.len() {
        if let Ok(entries) = std::fs::read_dir(&all[i]) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    all.push(entry.path());
                }
            }
        }
        i += 1;
    }
    all
}

/// The cgroup directories (every hierarchy) a container process was in, and
/// their ancestors that did not exist before the test (such as crustd's
/// default cgroup parent, used by a pod without `cgroup_parent`). On drop,
/// removes those that are left and empty, deepest first, so that the test
/// leaves nothing behind outside the harness's per-test cgroup tree.
struct CgroupGuard {
    own: Vec<PathBuf>,
    new_ancestors: Vec<PathBuf>,
}

impl CgroupGuard {
    fn of(pid: i32, existed: &[PathBuf]) -> Result<Self> {
        let mut own = Vec::new();
        let mut new_ancestors = Vec::new();
        for (_, path) in cgroups::of_process(pid)? {
            let rel = path.trim_start_matches('/');
            if rel.is_empty() {
                continue;
            }
            for h in cgroups::hierarchies() {
                let dir = h.join(rel);
                if !dir.is_dir() {
                    continue;
                }
                let mut up = dir.parent();
                while let Some(ancestor) = up {
                    if ancestor == h || existed.iter().any(|e| e == ancestor) {
                        break;
                    }
                    new_ancestors.push(ancestor.to_path_buf());
                    up = ancestor.parent();
                }
                own.push(dir);
            }
        }
        Ok(Self { own, new_ancestors })
    }

    /// Every cgroup directory below the hierarchies' roots, before the test.
    fn existing() -> Vec<PathBuf> {
        cgroups::hierarchies()
            .into_iter()
            .flat_map(walk_dirs)
            .collect()
    }

    fn remaining(&self) -> Vec<PathBuf> {
        self.own.iter().filter(|d| d.exists()).cloned().collect()
    }
}

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        for dir in self.remaining().iter().chain(&self.new_ancestors) {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

#[test]
fn minimal_pod_without_namespace_options() {
    run("minimal_pod_without_namespace_options", minimal_pod);
}

async fn minimal_pod(env: &mut TestEnv) -> Result<()> {
    let busybox = env.images.busybox.reference.clone();
    env.pull(&busybox).await?;
    // Without a cgroup_parent the pod goes under crustd's default parent,
    // outside the harness's per-test tree.
    let existed = CgroupGuard::existing();
    let name = "minimal";
    let uid = unique::pod_uid();
    let log_directory = env
        .daemon
        .paths()
        .pod_logs
        .join(format!("{POD_NAMESPACE}_{name}_{uid}"));
    std::fs::create_dir_all(&log_directory)?;
    // What `crictl runp` sends for the pod config in crictl's documentation:
    // `{"metadata": {...}, "log_directory": ..., "linux": {}}`.
    let config = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: uid.clone(),
            namespace: POD_NAMESPACE.into(),
            attempt: 1,
        }),
        log_directory: log_directory.to_string_lossy().into_owned(),
        linux: Some(LinuxPodSandboxConfig::default()),
        ..Default::default()
    };
    // No hostname either: like CRI-O, crust then gives the pod the node's name.
    let pod = env
        .run_pod_with(config)
        .await
        .context("RunPodSandbox of a minimal config")?;
    let status = env.cri.pod_sandbox_status(&pod.id).await?;
    ensure!(
        status.state == PodSandboxState::SandboxReady as i32,
        "minimal pod state {}",
        status.state
    );

    let mut started = Vec::new();
    let mut guards = Vec::new();
    for (cname, script) in [
        ("first", "echo minimal-says-hi; exec sleep 3600"),
        ("second", "exec sleep 3599"),
    ] {
        std::fs::create_dir_all(log_directory.join(cname))?;
        // What `crictl create` sends for a config with metadata, image, command
        // and log_path only.
        let c = ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: cname.into(),
                attempt: 0,
            }),
            image: Some(image_spec(&busybox)),
            command: vec!["sh".into(), "-c".into(), script.into()],
            log_path: format!("{cname}/0.log"),
            ..Default::default()
        };
        let id = env
            .start_container(&pod, &c)
            .await
            .with_context(|| format!("container {cname} without linux config"))?;
        guards.push(CgroupGuard::of(env.container_pid(&id).await?, &existed)?);
        started.push((id, c));
    }
    let first = started[0].0.clone();
    ensure!(env.sh(&first, "echo exec-ok").await? == "exec-ok\n");
    let node = nix::unistd::gethostname()?.to_string_lossy().into_owned();
    let inside = env.sh(&first, "hostname").await?;
    ensure!(
        inside.trim() == node,
        "a pod without hostname is named {inside:?} inside, the node is {node:?}"
    );

    let log = Pod::log_file(&pod, &started[0].1);
    let records = wait::until("the first log line", Duration::from_secs(10), || async {
        Ok(cri_log::read_log(&log)
            .ok()
            .filter(|r| r.iter().any(|r| r.content == "minimal-says-hi")))
    })
    .await?;
    ensure!(!records.is_empty());

    // No namespace options means the CRI default, POD, for the PID namespace too.
    let cmds: Vec<Vec<String>> = vec![
        vec!["sleep".into(), "3600".into()],
        vec!["sleep".into(), "3599".into()],
    ];
    expect_shared_pids(
        env,
        &[
            (started[0].0.as_str(), cmds[0].as_slice()),
            (started[1].0.as_str(), cmds[1].as_slice()),
        ],
    )
    .await
    .context("a pod without namespace options must share its PID namespace (CRI default POD)")?;

    let ids: Vec<&str> = started.iter().map(|(id, _)| id.as_str()).collect();
    env.cri.stop_pod_sandbox(&pod.id).await?;
    expect_all_exited(env, &ids).await?;
    env.cri.remove_pod_sandbox(&pod.id).await?;
    let left = env.cri.list_pod_sandbox(None).await?;
    ensure!(left.is_empty(), "RemovePodSandbox left {left:?}");
    for guard in &guards {
        let remaining = guard.remaining();
        ensure!(
            remaining.is_empty(),
            "container cgroups left after RemovePodSandbox: {remaining:?}"
        );
    }
    env.assert_no_leaks()
}
