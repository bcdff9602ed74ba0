//! Hostile requests and images crust must survive without hanging, panicking
//! or touching what is not its own: FIFOs and devices where crust reads a
//! file, durations that would overflow, CNI arguments smuggled in pod names,
//! log paths that leave the pod's directory or follow a planted symlink, and
//! a socket that must never exist with a looser mode.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use crust_e2e::assertions::expect_code;
use crust_e2e::bench::memory::ProcessMemory;
use crust_e2e::crafted::{CraftedImage, CraftedLayer, LayerFormat, RawTar};
use crust_e2e::cri::{
    ContainerConfig, ContainerState, ExecSyncRequest, HugepageLimit, Int64Value,
    LinuxPodSandboxConfig, Mount, PodSandboxConfig, PortMapping, SecurityProfile,
    StartContainerRequest, StopContainerRequest, security_profile,
};
use crust_e2e::cri_client::KUBELET_MAX_MESSAGE;
use crust_e2e::fake_registry::FakeRegistry;
use crust_e2e::pod_config::{env_var, resources_mut, security_mut, string_map};
use crust_e2e::{Pod, TestEnv, run, unique, wait};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tonic::Code;

/// How long a refusal may take: it must never block.
const PROMPT: Duration = Duration::from_secs(10);

#[test]
fn fifos_and_devices_where_crust_reads_a_file_are_refused_at_once() {
    run(
        "fifos_and_devices_where_crust_reads_a_file_are_refused_at_once",
        special_files,
    );
}

async fn special_files(env: &mut TestEnv) -> Result<()> {
    // An image whose /etc/passwd is a FIFO.
    let fake = FakeRegistry::start(None).await?;
    let tar = RawTar::new()
        .dir("etc", 0o755)?
        .fifo("etc/passwd", 0o644)?
        .file("etc/group", b"root:x:0:\n", 0o644)?
        .finish();
    let layer = CraftedLayer::new(&tar, LayerFormat::Gzip)?;
    CraftedImage::new(std::slice::from_ref(&layer)).serve(&fake, "hostile/fifo-passwd", "1");
    let reference = format!("{}/hostile/fifo-passwd:1", fake.host());
    env.pull(&reference).await?;
    let pod = env.run_pod("fifo").await?;
    let mut config = env.container_config(&pod, "fifo", &reference)?;
    config.command = vec!["/bin/true".into()];
    let created = tokio::time::timeout(
        PROMPT,
        env.cri.create_container(&pod.id, &config, &pod.config),
    )
    .await
    .context("CreateContainer blocked on the image's FIFO /etc/passwd")?;
    expect_code(
        created.map(drop),
        Code::FailedPrecondition,
        "a FIFO /etc/passwd",
    )?;

    // Seccomp profiles that are a FIFO or a device.
    env.pull(&env.images.busybox.reference).await?;
    let dir = env.daemon.paths().base.join("profiles");
    std::fs::create_dir_all(&dir)?;
    let fifo = dir.join("fifo.json");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))?;
    for (n, path) in [fifo.display().to_string(), "/dev/zero".to_string()]
        .iter()
        .enumerate()
    {
        let mut config = env.shell_container(&pod, &format!("seccomp-{n}"), "exec sleep 3600")?;
        security_mut(&mut config).seccomp = Some(SecurityProfile {
            profile_type: security_profile::ProfileType::Localhost as i32,
            localhost_ref: path.clone(),
        });
        let created = tokio::time::timeout(
            PROMPT,
            env.cri.create_container(&pod.id, &config, &pod.config),
        )
        .await
        .with_context(|| format!("CreateContainer blocked on the seccomp profile {path}"))?;
        expect_code(
            created.map(drop),
            Code::InvalidArgument,
            &format!("seccomp profile {path}"),
        )?;
    }

    // The pod is not wedged: it stops and goes.
    tokio::time::timeout(PROMPT, env.cri.stop_pod_sandbox(&pod.id))
        .await
        .context("StopPodSandbox hung")??;
    env.cri.remove_pod_sandbox(&pod.id).await?;
    env.cri.remove_image(&reference).await?;
    env.assert_no_leaks()
}

#[test]
fn a_stop_with_the_longest_timeout_neither_panics_nor_overflows() {
    run(
        "a_stop_with_the_longest_timeout_neither_panics_nor_overflows",
        longest_stop,
    );
}

async fn longest_stop(env: &mut TestEnv) -> Result<()> {
    let (pod, id) = env
        .shell_pod(
            "longest-stop",
            "polite",
            "trap 'exit 0' TERM; while true; do sleep 0.1; done",
        )
        .await?;
    tokio::time::timeout(
        Duration::from_secs(30),
        env.cri.stop_container(&id, i64::MAX),
    )
    .await
    .context("StopContainer(i64::MAX) did not return after SIGTERM")??;
    let status = env.cri.container_status(&id).await?;
    ensure!(
        status.state == ContainerState::ContainerExited as i32,
        "the container is {:?} after StopContainer(i64::MAX)",
        status.state
    );
    // crustd is still serving, and the container can be removed.
    env.cri.version().await?;
    env.cri.remove_container(&id).await?;
    env.cri.stop_pod_sandbox(&pod.id).await?;
    env.cri.remove_pod_sandbox(&pod.id).await?;
    env.assert_no_leaks()
}

/// A container script that ignores SIGTERM.
const STUBBORN: &str = "trap '' TERM; while true; do sleep 0.1; done";

#[test]
fn a_forced_stop_takes_over_an_abandoned_one() {
    run("a_forced_stop_takes_over_an_abandoned_one", forced_stop);
}

async fn forced_stop(env: &mut TestEnv) -> Result<()> {
    let (pod, id) = env.shell_pod("forced-stop", "stubborn", STUBBORN).await?;
    // A stop with a long grace period whose client gives up after a second
    // (crustd carries on with it).
    let mut runtime = env.cri.runtime.clone();
    let mut abandoned = tonic::Request::new(StopContainerRequest {
        container_id: id.clone(),
        timeout: 120,
    });
    abandoned.set_timeout(Duration::from_secs(1));
    let gave_up = runtime.stop_container(abandoned).await;
    ensure!(
        gave_up.is_err(),
        "a container ignoring SIGTERM stopped within a second"
    );
    // kubelet's force delete: stop again with no grace period.
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), env.cri.stop_container(&id, 0))
        .await
        .context("StopContainer(0) waited behind the abandoned stop")??;
    let took = started.elapsed();
    ensure!(
        took < Duration::from_secs(2),
        "StopContainer(0) took {took:?} with an abandoned stop under way"
    );
    let status = env.cri.container_status(&id).await?;
    ensure!(
        status.state == ContainerState::ContainerExited as i32 && status.exit_code == 137,
        "after the forced stop the container is {:?} with exit code {}",
        status.state,
        status.exit_code
    );
    tokio::time::timeout(Duration::from_secs(10), env.cri.remove_pod_sandbox(&pod.id))
        .await
        .context("RemovePodSandbox waited behind the abandoned stop")??;
    env.assert_no_leaks()
}

#[test]
fn concurrent_large_exec_syncs_stay_bounded() {
    run("concurrent_large_exec_syncs_stay_bounded", exec_flood);
}

async fn exec_flood(env: &mut TestEnv) -> Result<()> {
    let (pod, id) = env
        .shell_pod("exec-flood", "target", "exec sleep 3600")
        .await?;
    let pid = env.daemon.pid().context("crustd's pid")?;
    env.cri.exec_sync(&id, &["true"], 10).await?;
    let base = ProcessMemory::rss_mib(pid)?;

    // 32 clients at once, each asking for 64 MB of output (four times what
    // one reply may carry).
    let calls: Vec<_> = (0..32)
        .map(|_| {
            let cri = env.cri.clone();
            let id = id.clone();
            tokio::spawn(async move {
                cri.exec_sync(&id, &["head", "-c", "64000000", "/dev/zero"], 120)
                    .await
            })
        })
        .collect();
    let mut peak = base;
    while calls.iter().any(|c| !c.is_finished()) {
        peak = peak.max(ProcessMemory::rss_mib(pid)?);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for call in calls {
        let out = call.await?.context("a large ExecSync failed")?;
        ensure!(
            out.exit_code == 0 && !out.stdout.is_empty() && out.stdout.len() < KUBELET_MAX_MESSAGE,
            "a large ExecSync gave exit {} and {} bytes",
            out.exit_code,
            out.stdout.len()
        );
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = ProcessMemory::rss_mib(pid)?;
    println!(
        "crustd RSS: {base:.1} MiB before, {peak:.1} MiB at peak, {after:.1} MiB after 32 ExecSyncs of 64 MB"
    );
    ensure!(
        peak - base < 200.0,
        "crustd grew from {base:.1} to {peak:.1} MiB serving 32 large ExecSyncs"
    );
    ensure!(
        after - base < 24.0,
        "crustd kept {:.1} MiB after the large ExecSyncs ({base:.1} → {after:.1})",
        after - base
    );

    // An ExecSync whose client gives up: its process is killed and reaped.
    let mut runtime = env.cri.runtime.clone();
    let mut abandoned = tonic::Request::new(ExecSyncRequest {
        container_id: id.clone(),
        cmd: vec!["sleep".into(), "301".into()],
        timeout: 0,
    });
    abandoned.set_timeout(Duration::from_secs(1));
    ensure!(
        runtime.exec_sync(abandoned).await.is_err(),
        "sleep 301 finished within a second"
    );
    wait::until(
        "the abandoned exec's process to go",
        Duration::from_secs(10),
        || async {
            let ps = env.sh(&id, "ps -o args").await?;
            Ok((!ps.contains("sleep 301")).then_some(()))
        },
    )
    .await?;

    env.cri.stop_pod_sandbox(&pod.id).await?;
    env.cri.remove_pod_sandbox(&pod.id).await?;
    env.assert_no_leaks()
}

#[test]
fn names_and_paths_that_would_escape_are_refused() {
    run(
        "names_and_paths_that_would_escape_are_refused",
        escaping_names,
    );
}

async fn escaping_names(env: &mut TestEnv) -> Result<()> {
    // CNI_ARGS are `;`-separated `KEY=value` pairs built from these.
    for (field, value) in [
        ("name", "web;IP=10.243.0.99"),
        ("namespace", "default;K8S_POD_NAME=other"),
        ("uid", "u=1"),
    ] {
        let mut config = env.pod_config("cni-args")?;
        let meta = config.metadata.as_mut().context("metadata")?;
        match field {
            "name" => meta.name = value.into(),
            "namespace" => meta.namespace = value.into(),
            _ => meta.uid = value.into(),
        }
        expect_code(
            env.cri.run_pod_sandbox(&config).await.map(drop),
            Code::InvalidArgument,
            &format!("pod {field} {value:?}"),
        )?;
    }
    for dir in ["relative/logs", "/var/log/pods/../../../etc", "/tmp/./x"] {
        let mut config = env.pod_config("log-dir")?;
        config.log_directory = dir.into();
        expect_code(
            env.cri.run_pod_sandbox(&config).await.map(drop),
            Code::InvalidArgument,
            &format!("log_directory {dir:?}"),
        )?;
    }
    ensure!(
        env.cri.list_pod_sandbox(None).await?.is_empty(),
        "a refused pod was created"
    );

    // A symlink planted where the container's log goes is not followed.
    env.pull(&env.images.busybox.reference).await?;
    let pod = env.run_pod("planted").await?;
    let config = env.shell_container(&pod, "planted", "echo written; exec sleep 3600")?;
    let log = pod.log_file(&config);
    let target = env
        .daemon
        .paths()
        .base
        .join(format!("target-{}", unique::suffix()));
    std::os::unix::fs::symlink(&target, &log)?;
    expect_create_refused(
        env,
        &pod,
        &config,
        Code::InvalidArgument,
        "a symlink at the log path",
    )
    .await?;
    ensure!(!target.exists(), "crust wrote through the planted symlink");
    // A relative host path would resolve wherever runc happens to run.
    let mut relative = env.shell_container(&pod, "relative", "exec sleep 3600")?;
    relative.mounts = vec![Mount {
        container_path: "/data".into(),
        host_path: "../../etc".into(),
        ..Default::default()
    }];
    expect_create_refused(
        env,
        &pod,
        &relative,
        Code::InvalidArgument,
        "a relative mount host_path",
    )
    .await?;
    ensure!(
        env.cri.list_containers(None).await?.is_empty(),
        "the refused container was created"
    );
    std::fs::remove_file(&log)?;
    env.cri.stop_pod_sandbox(&pod.id).await?;
    env.cri.remove_pod_sandbox(&pod.id).await?;
    env.assert_no_leaks()
}

#[test]
fn names_that_join_alike_stay_apart() {
    run("names_that_join_alike_stay_apart", colliding_names);
}

async fn colliding_names(env: &mut TestEnv) -> Result<()> {
    env.pull(&env.images.busybox.reference).await?;
    // Joined with '_', container "a_p" of pod n/u/1 and container "a" of pod
    // p/n/u_1 are both "a_p_n_u_1_0".
    let mut pods = Vec::new();
    for (container, (name, namespace, uid)) in [("a_p", ("n", "u", "1")), ("a", ("p", "n", "u_1"))]
    {
        let mut config = env.pod_config("collide")?;
        let meta = config.metadata.as_mut().context("metadata")?;
        meta.name = name.into();
        meta.namespace = namespace.into();
        meta.uid = uid.into();
        let pod = env.run_pod_with(config).await?;
        let mut c = env.shell_container(&pod, container, "exec sleep 3600")?;
        c.metadata.as_mut().context("container metadata")?.name = container.into();
        let id = env
            .cri
            .create_container(&pod.id, &c, &pod.config)
            .await
            .with_context(|| {
                format!("CreateContainer {container} in pod {name}/{namespace}/{uid}")
            })?;
        pods.push((pod, id));
    }
    ensure!(
        pods[0].1 != pods[1].1,
        "both pods got container {}",
        pods[0].1
    );
    for (pod, id) in &pods {
        let status = env.cri.container_status(id).await?;
        let listed = env.cri.list_containers(None).await?;
        ensure!(
            listed
                .iter()
                .any(|c| c.id == *id && c.pod_sandbox_id == pod.id),
            "container {id} is not listed in its own pod {}: {status:?}",
            pod.id
        );
    }
    for (pod, _) in &pods {
        env.cri.stop_pod_sandbox(&pod.id).await?;
        env.cri.remove_pod_sandbox(&pod.id).await?;
    }
    env.assert_no_leaks()
}

#[test]
fn the_socket_appears_with_its_final_mode() {
    run("the_socket_appears_with_its_final_mode", socket_mode);
}

async fn socket_mode(env: &mut TestEnv) -> Result<()> {
    let socket = env.daemon.paths().socket.clone();
    let dir = socket.parent().context("socket directory")?.to_path_buf();
    let name = socket.file_name().context("socket name")?.to_os_string();
    let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)?;
    inotify.add_watch(&dir, AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO)?;
    env.restart_daemon().await?;
    let events = inotify.read_events().context("reading inotify events")?;
    let about: Vec<_> = events
        .iter()
        .filter(|e| e.name.as_deref() == Some(name.as_os_str()))
        .map(|e| e.mask)
        .collect();
    // Created elsewhere and renamed into place: never bound at its path with
    // the umask's mode, not even for an instant.
    ensure!(
        !about.is_empty() && about.iter().all(|m| !m.contains(AddWatchFlags::IN_CREATE)),
        "the socket was created in place (events {about:?}), so it existed before its mode was set"
    );
    let mode = std::fs::symlink_metadata(&socket)?.permissions().mode() & 0o777;
    ensure!(mode == 0o660, "the socket's mode is {mode:o}, not 660");
    Ok(())
}

#[test]
fn odd_field_values_are_refused_before_anything_is_made() {
    run(
        "odd_field_values_are_refused_before_anything_is_made",
        odd_values,
    );
}

/// One way to spoil a pod's config, and what it is called in a failure.
type PodSpoiler = (&'static str, fn(&mut PodSandboxConfig));
/// One way to spoil a container's config.
type ContainerSpoiler = (&'static str, Code, fn(&mut ContainerConfig));

async fn odd_values(env: &mut TestEnv) -> Result<()> {
    let pods: [PodSpoiler; 9] = [
        ("a hostname with a newline", |c| {
            c.hostname = "web\nx".into()
        }),
        ("a hostname with a space", |c| c.hostname = "web x".into()),
        ("a cgroup parent that climbs", |c| {
            linux_mut(c).cgroup_parent = "/../../tmp/escape".into()
        }),
        ("container port 0", |c| {
            c.port_mappings = vec![port(0, 8080, 0, "")]
        }),
        ("host port 70000", |c| {
            c.port_mappings = vec![port(80, 70000, 0, "")]
        }),
        ("an unknown protocol", |c| {
            c.port_mappings = vec![port(80, 8080, 7, "")]
        }),
        ("a host_ip that is no address", |c| {
            c.port_mappings = vec![port(80, 8080, 0, "local host")]
        }),
        ("a sysctl the kernel does not have", |c| {
            linux_mut(c).sysctls = string_map(&[("net.ipv4.no_such_sysctl", "1")])
        }),
        ("600 KiB of annotations", |c| {
            c.annotations.insert("big".into(), "x".repeat(600 << 10));
        }),
    ];
    for (what, spoil) in pods {
        let mut config = env.pod_config("odd")?;
        spoil(&mut config);
        expect_code(
            env.cri.run_pod_sandbox(&config).await.map(drop),
            Code::InvalidArgument,
            what,
        )?;
    }
    ensure!(
        env.cri.list_pod_sandbox(None).await?.is_empty(),
        "a refused pod was created"
    );
    env.assert_no_leaks()?;

    env.pull(&env.images.busybox.reference).await?;
    let pod = env.run_pod("odd-containers").await?;
    // Refused on a host without AppArmor; on one with it, the profile is
    // applied, and runc refuses one that is not loaded.
    let apparmor_refusal = if std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .is_ok_and(|v| v.trim() == "Y")
    {
        Code::FailedPrecondition
    } else {
        Code::InvalidArgument
    };
    let containers: [ContainerSpoiler; 9] = [
        ("a NUL in the command", Code::InvalidArgument, |c| {
            c.command = vec!["sh\0".into()]
        }),
        ("a log path ending in '/'", Code::InvalidArgument, |c| {
            c.log_path = "odd/".into()
        }),
        ("a log path with '.'", Code::InvalidArgument, |c| {
            c.log_path = "odd/./0.log".into()
        }),
        ("uid (uid_t)-1", Code::InvalidArgument, |c| {
            security_mut(c).run_as_user = Some(Int64Value { value: 4294967295 })
        }),
        (
            "a negative supplemental group",
            Code::InvalidArgument,
            |c| security_mut(c).supplemental_groups = vec![-1],
        ),
        ("a hugepage limit above 2^63", Code::InvalidArgument, |c| {
            resources_mut(c).hugepage_limits = vec![HugepageLimit {
                page_size: "2MB".into(),
                limit: u64::MAX,
            }]
        }),
        ("seccomp profile type 7", Code::InvalidArgument, |c| {
            security_mut(c).seccomp = Some(SecurityProfile {
                profile_type: 7,
                localhost_ref: String::new(),
            })
        }),
        ("an AppArmor profile", apparmor_refusal, |c| {
            security_mut(c).apparmor = Some(SecurityProfile {
                profile_type: security_profile::ProfileType::Localhost as i32,
                localhost_ref: "k8s-deny-write".into(),
            })
        }),
        ("9 MiB of environment", Code::InvalidArgument, |c| {
            c.envs = vec![env_var("BIG", &"x".repeat(9 << 20))]
        }),
    ];
    for (what, code, spoil) in containers {
        let mut config = env.shell_container(&pod, "odd", "exec sleep 3600")?;
        spoil(&mut config);
        expect_create_refused(env, &pod, &config, code, what).await?;
    }
    ensure!(
        env.cri.list_containers(None).await?.is_empty(),
        "a refused container was created"
    );

    // A create that fails late takes back the log directories it made.
    let mut late = env.shell_container(&pod, "late", "exec sleep 3600")?;
    late.command = vec!["/no/such/binary".into()];
    late.log_path = "late/a/b/0.log".into();
    expect_create_refused(
        env,
        &pod,
        &late,
        Code::FailedPrecondition,
        "a command that does not exist",
    )
    .await?;
    let made = pod.log_directory().join("late/a");
    ensure!(!made.exists(), "{} was left behind", made.display());

    let running = env
        .start_container(
            &pod,
            &env.shell_container(&pod, "sleeper", "exec sleep 3600")?,
        )
        .await?;
    expect_code(
        env.cri
            .exec_sync(&running, &["ec\0ho", "x"], 10)
            .await
            .map(drop),
        Code::InvalidArgument,
        "a NUL in an exec argument",
    )?;
    env.cri.stop_pod_sandbox(&pod.id).await?;
    env.cri.remove_pod_sandbox(&pod.id).await?;
    env.assert_no_leaks()
}

fn linux_mut(config: &mut PodSandboxConfig) -> &mut LinuxPodSandboxConfig {
    config.linux.get_or_insert_with(Default::default)
}

fn port(container_port: i32, host_port: i32, protocol: i32, host_ip: &str) -> PortMapping {
    PortMapping {
        protocol,
        container_port,
        host_port,
        host_ip: host_ip.into(),
    }
}

#[test]
fn calls_piling_up_on_a_busy_container_hold_no_threads() {
    run(
        "calls_piling_up_on_a_busy_container_hold_no_threads",
        pile_up,
    );
}

/// More calls than tokio's blocking pool has threads (512).
const PILED_CALLS: usize = 600;

/// A pod whose container ignores SIGTERM, with a StopContainer of 600 s
/// under way on it (holding its lifecycle lock): the pod, the container's
/// id and the stop's task.
async fn stubborn_being_stopped(
    env: &TestEnv,
    name: &str,
) -> Result<(
    Pod,
    String,
    tokio::task::JoinHandle<Result<(), tonic::Status>>,
)> {
    let (pod, id) = env.shell_pod(name, "stubborn", STUBBORN).await?;
    let mut runtime = env.cri.runtime.clone();
    let long_stop = StopContainerRequest {
        container_id: id.clone(),
        timeout: 600,
    };
    let stopping = tokio::spawn(async move { runtime.stop_container(long_stop).await.map(drop) });
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok((pod, id, stopping))
}

async fn pile_up(env: &mut TestEnv) -> Result<()> {
    let (pod, id, stopping) = stubborn_being_stopped(env, "pile-up").await?;

    // Calls that queue behind it, each given up by its client at 200 ms.
    let (runtime, _) = crust_e2e::raw_grpc::connect(&env.daemon.paths().socket).await?;
    let calls = (0..PILED_CALLS).map(|_| {
        let mut runtime = runtime.clone();
        let mut request = tonic::Request::new(StartContainerRequest {
            container_id: id.clone(),
        });
        request.set_timeout(Duration::from_millis(200));
        async move { runtime.start_container(request).await }
    });
    let answers = futures_util::future::join_all(calls).await;
    let timed_out = answers
        .iter()
        .filter(|a| matches!(a, Err(s) if s.code() == Code::DeadlineExceeded))
        .count();
    ensure!(
        timed_out == PILED_CALLS,
        "{timed_out} of {PILED_CALLS} queued StartContainers answered DeadlineExceeded"
    );

    // crustd still answers everything else, and can still kill the container.
    tokio::time::timeout(Duration::from_secs(5), env.cri.list_containers(None))
        .await
        .context("ListContainers stalled behind the abandoned calls")??;
    tokio::time::timeout(Duration::from_secs(5), env.cri.stop_container(&id, 0))
        .await
        .context("StopContainer(0) stalled behind the abandoned calls")??;
    stopping.abort();
    env.cri.stop_pod_sandbox(&pod.id).await?;
    env.cri.remove_pod_sandbox(&pod.id).await?;
    env.assert_no_leaks()
}

#[test]
fn crustd_exits_on_sigterm_with_a_long_stop_under_way() {
    run(
        "crustd_exits_on_sigterm_with_a_long_stop_under_way",
        sigterm_mid_stop,
    );
}

async fn sigterm_mid_stop(env: &mut TestEnv) -> Result<()> {
    let (pod, id, stopping) = stubborn_being_stopped(env, "sigterm").await?;

    let pid = env.daemon.pid().context("crustd is not running")?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid)?),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    // Ten seconds for the RPCs in flight, two for the blocking work.
    let started = Instant::now();
    while env.daemon.is_running() {
        ensure!(
            started.elapsed() < Duration::from_secs(20),
            "crustd still runs 20 s after SIGTERM, waiting on a stop's grace period"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stopping.abort();

    env.restart_daemon().await?;
    env.cri.stop_container(&id, 0).await?;
    env.cri.stop_pod_sandbox(&pod.id).await?;
    env.cri.remove_pod_sandbox(&pod.id).await?;
    env.assert_no_leaks()
}

/// Expects CreateContainer of `config` in `pod` to be refused with `code`.
async fn expect_create_refused(
    env: &TestEnv,
    pod: &Pod,
    config: &ContainerConfig,
    code: Code,
    what: &str,
) -> Result<()> {
    let created = env.cri.create_container(&pod.id, config, &pod.config).await;
    expect_code(created.map(drop), code, what)
}
