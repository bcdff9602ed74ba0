//! The container security context and user settings of ContainerConfig:
//! run_as_user/group, supplemental groups, run_as_username, readonly_rootfs,
//! host-path mounts, capabilities, privileged, env, working_dir, and pods on
//! the node's network.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{Context, Result, ensure};
use crust_e2e::assertions::expect_code;
use crust_e2e::cri::{Capability, Int64Value, Mount, NamespaceMode, SeLinuxOption};
use crust_e2e::pod_config::{env_var, namespace_options, sandbox_security_mut, security_mut};
use crust_e2e::{Pod, TestEnv, run};
use tonic::Code;

/// The value of field `name` (e.g. `Uid`, `CapEff`) in `/proc/1/status` of
/// container `id`.
async fn init_status_field(env: &TestEnv, id: &str, name: &str) -> Result<String> {
    let status = env.sh(id, "cat /proc/1/status").await?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .map(|v| v.trim().to_string())
        .with_context(|| format!("no {name} in /proc/1/status:\n{status}"))
}

/// The numbers of a `/proc/<pid>/status` id line (`Uid:`, `Gid:`, `Groups:`).
fn numbers(field: &str) -> Vec<i64> {
    field
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect()
}

/// A busybox container `name` in `pod` that sleeps; `adjust` edits its config.
async fn sleeper_with(
    env: &TestEnv,
    pod: &Pod,
    name: &str,
    adjust: impl FnOnce(&mut crust_e2e::cri::ContainerConfig),
) -> Result<String> {
    let mut config = env.container_config(pod, name, &env.images.busybox.reference)?;
    config.command = vec!["sleep".into(), "3600".into()];
    adjust(&mut config);
    env.start_container(pod, &config).await
}

#[test]
fn run_as_user_group_and_username() {
    run("run_as_user_group_and_username", users_and_groups);
}

async fn users_and_groups(env: &mut TestEnv) -> Result<()> {
    let busybox = env.images.busybox.reference.clone();
    env.pull(&busybox).await?;
    let pod = env.run_pod("users").await?;

    let numeric = sleeper_with(env, &pod, "numeric", |c| {
        let sec = security_mut(c);
        sec.run_as_user = Some(Int64Value { value: 1000 });
        sec.run_as_group = Some(Int64Value { value: 1000 });
        sec.supplemental_groups = vec![2000, 3000];
    })
    .await?;
    let uid = numbers(&init_status_field(env, &numeric, "Uid").await?);
    let gid = numbers(&init_status_field(env, &numeric, "Gid").await?);
    let groups = numbers(&init_status_field(env, &numeric, "Groups").await?);
    ensure!(
        uid.iter().all(|u| *u == 1000),
        "pid 1 runs with uids {uid:?}, expected 1000"
    );
    ensure!(
        gid.iter().all(|g| *g == 1000),
        "pid 1 runs with gids {gid:?}, expected 1000"
    );
    for wanted in [2000, 3000] {
        ensure!(
            groups.contains(&wanted),
            "supplemental group {wanted} missing from pid 1's groups {groups:?}"
        );
    }
    ensure!(
        !groups.contains(&0),
        "pid 1 keeps root's group 0 in {groups:?}"
    );
    let id_u = env.sh(&numeric, "id -u").await?;
    let id_g = env.sh(&numeric, "id -g").await?;
    let id_groups = env.sh(&numeric, "id -G").await?;
    ensure!(
        id_u.trim() == "1000" && id_g.trim() == "1000",
        "ExecSync runs as uid {id_u:?} gid {id_g:?}, not the container's user 1000:1000"
    );
    let exec_groups: Vec<&str> = id_groups.split_whitespace().collect();
    ensure!(
        exec_groups.contains(&"2000") && exec_groups.contains(&"3000"),
        "ExecSync's groups {exec_groups:?} lack the supplemental groups 2000 and 3000"
    );
    let id = env.sh(&numeric, "id").await?;
    ensure!(
        id.contains("uid=1000") && id.contains("gid=1000"),
        "`id` shows {id:?}"
    );

    let named = sleeper_with(env, &pod, "named", |c| {
        security_mut(c).run_as_username = "nobody".into();
    })
    .await?;
    let uid = numbers(&init_status_field(env, &named, "Uid").await?);
    let gid = numbers(&init_status_field(env, &named, "Gid").await?);
    ensure!(
        uid.iter().all(|u| *u == 65534) && gid.iter().all(|g| *g == 65534),
        "run_as_username nobody: pid 1 runs with uids {uid:?} gids {gid:?}, expected 65534 \
         from the image's /etc/passwd"
    );
    let whoami = env.sh(&named, "whoami").await?;
    ensure!(whoami.trim() == "nobody", "whoami says {whoami:?}");

    let mut ghost = env.container_config(&pod, "ghost", &busybox)?;
    ghost.command = vec!["sleep".into(), "3600".into()];
    security_mut(&mut ghost).run_as_username = "no-such-user".into();
    let outcome = env.cri.create_container(&pod.id, &ghost, &pod.config).await;
    if let Err(status) = &outcome {
        ensure!(
            status.message().contains("no-such-user"),
            "the error does not name the missing user: {:?}",
            status.message()
        );
    }
    expect_code(
        outcome,
        Code::InvalidArgument,
        "CreateContainer with a run_as_username missing from the image",
    )?;

    let mut group_only = env.container_config(&pod, "group-only", &busybox)?;
    group_only.command = vec!["sleep".into(), "3600".into()];
    security_mut(&mut group_only).run_as_group = Some(Int64Value { value: 1000 });
    expect_code(
        env.cri
            .create_container(&pod.id, &group_only, &pod.config)
            .await,
        Code::InvalidArgument,
        "CreateContainer with run_as_group but neither run_as_user nor run_as_username",
    )?;

    let listed = env.cri.list_containers(None).await?;
    ensure!(
        listed.len() == 2,
        "refused creates left containers behind: {listed:?}"
    );
    env.cri.stop_pod_sandbox(&pod.id).await?;
    env.cri.remove_pod_sandbox(&pod.id).await?;
    env.assert_no_leaks()
}

#[test]
fn readonly_rootfs_and_host_path_mounts() {
    run("readonly_rootfs_and_host_path_mounts", readonly_and_mounts);
}

async fn readonly_and_mounts(env: &mut TestEnv) -> Result<()> {
    let busybox = env.images.busybox.reference.clone();
    env.pull(&busybox).await?;
    let pod = env.run_pod("mounts").await?;

    let host_dir = env.daemon.paths().base.join("host-volume");
    std::fs::create_dir_all(&host_dir)?;
    std::fs::write(host_dir.join("from-host.txt"), "host-content\n")?;
    let mount = |container_path: &str, host: &Path, readonly: bool| Mount {
        container_path: container_path.into(),
        host_path: host.to_string_lossy().into_owned(),
        readonly,
        ..Default::default()
    };

    let id = sleeper_with(env, &pod, "readonly", |c| {
        security_mut(c).readonly_rootfs = true;
        c.mounts = vec![
            mount("/ro", &host_dir, true),
            mount("/rw", &host_dir, false),
        ];
    })
    .await?;

    for path in ["/x", "/tmp/x", "/etc/x"] {
        let touch = env.exec(&id, &["touch", path]).await?;
        ensure!(
            touch.exit_code != 0,
            "readonly_rootfs: `touch {path}` succeeded"
        );
        ensure!(
            touch.stderr.contains("Read-only file system"),
            "readonly_rootfs: `touch {path}` failed for another reason: {touch:?}"
        );
    }
    env.sh(&id, "echo shm > /dev/shm/x && cat /dev/shm/x")
        .await
        .context("/dev/shm must stay writable with readonly_rootfs")?;

    for dir in ["/ro", "/rw"] {
        let content = env.sh(&id, &format!("cat {dir}/from-host.txt")).await?;
        ensure!(
            content == "host-content\n",
            "{dir}/from-host.txt reads {content:?}"
        );
    }
    let ro_write = env
        .exec(&id, &["sh", "-c", "echo nope > /ro/written.txt"])
        .await?;
    ensure!(
        ro_write.exit_code != 0,
        "writing into the readonly mount /ro succeeded"
    );
    ensure!(
        !host_dir.join("written.txt").exists(),
        "the write through the readonly mount reached the host"
    );
    env.sh(&id, "echo from-container > /rw/written.txt")
        .await
        .context("writing into the read-write mount /rw")?;
    let on_host = std::fs::read_to_string(host_dir.join("written.txt"))?;
    ensure!(
        on_host == "from-container\n",
        "host sees {on_host:?} after the container wrote /rw/written.txt"
    );
    let mounts = env.sh(&id, "cat /proc/mounts").await?;
    for (dir, opt) in [("/ro", "ro"), ("/rw", "rw")] {
        let line = mounts
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(dir))
            .with_context(|| format!("{dir} is not a mount:\n{mounts}"))?;
        let options = line.split_whitespace().nth(3).unwrap_or_default();
        ensure!(
            options.split(',').any(|o| o == opt),
            "{dir} is mounted with {options}, expected {opt}"
        );
    }

    let mut missing = env.container_config(&pod, "missing-host-path", &busybox)?;
    missing.command = vec!["sleep".into(), "3600".into()];
    let absent = env.daemon.paths().base.join("does-not-exist");
    missing.mounts = vec![mount("/data", &absent, false)];
    let outcome = env
        .cri
        .create_container(&pod.id, &missing, &pod.config)
        .await;
    if let Err(status) = &outcome {
        ensure!(
            status.message().contains("does-not-exist"),
            "the error does not name the missing host path: {:?}",
            status.message()
        );
    }
    expect_code(
        outcome,
        Code::InvalidArgument,
        "CreateContainer with a missing host path",
    )?;
    ensure!(
        !absent.exists(),
        "CreateContainer created the missing host path {}",
        absent.display()
    );

    env.cri.stop_pod_sandbox(&pod.id).await?;
    env.cri.remove_pod_sandbox(&pod.id).await?;
    ensure!(
        host_dir.join("from-host.txt").exists(),
        "removing the pod deleted the host directory's contents"
    );
    env.assert_no_leaks()
}

/// Capability numbers (linux/capability.h) the test uses.
const CAP_CHOWN: u32 = 0;
const CAP_KILL: u32 = 5;
const CAP_NET_BIND_SERVICE: u32 = 10;
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_TIME: u32 = 25;

fn cap_set(hex: &str) -> Result<BTreeSet<u32>> {
    let bits = u64::from_str_radix(hex.trim(), 16).with_context(|| format!("bad mask {hex:?}"))?;
    Ok((0..64).filter(|b| bits & (1 << b) != 0).collect())
}

#[test]
fn capabilities_and_privileged() {
    run("capabilities_and_privileged", capabilities);
}

async fn capabilities(env: &mut TestEnv) -> Result<()> {
    let busybox = env.images.busybox.reference.clone();
    env.pull(&busybox).await?;
    let pod = env.run_pod("caps").await?;

    let plain = sleeper_with(env, &pod, "default-caps", |_| {}).await?;
    let default_caps = cap_set(&init_status_field(env, &plain, "CapEff").await?)?;
    ensure!(
        default_caps.contains(&CAP_CHOWN) && default_caps.contains(&CAP_KILL),
        "the default set lacks CHOWN or KILL: {default_caps:?}"
    );
    ensure!(
        !default_caps.contains(&CAP_NET_ADMIN) && !default_caps.contains(&CAP_SYS_TIME),
        "the default set already has NET_ADMIN or SYS_TIME: {default_caps:?}"
    );

    let adjusted = sleeper_with(env, &pod, "adjusted-caps", |c| {
        security_mut(c).capabilities = Some(Capability {
            add_capabilities: vec!["NET_ADMIN".into(), "CAP_SYS_TIME".into()],
            drop_capabilities: vec!["CHOWN".into(), "KILL".into()],
            add_ambient_capabilities: Vec::new(),
        });
    })
    .await?;
    let got = cap_set(&init_status_field(env, &adjusted, "CapEff").await?)?;
    let mut expected = default_caps.clone();
    expected.extend([CAP_NET_ADMIN, CAP_SYS_TIME]);
    expected.remove(&CAP_CHOWN);
    expected.remove(&CAP_KILL);
    ensure!(
        got == expected,
        "add NET_ADMIN,SYS_TIME drop CHOWN,KILL: CapEff has {got:?}, expected {expected:?}"
    );
    let bounding = cap_set(&init_status_field(env, &adjusted, "CapBnd").await?)?;
    ensure!(
        !bounding.contains(&CAP_CHOWN),
        "a dropped capability stays in the bounding set: {bounding:?}"
    );
    let chown = env.exec(&adjusted, &["chown", "1:1", "/tmp"]).await?;
    ensure!(chown.exit_code != 0, "chown works without CAP_CHOWN");

    let minimal = sleeper_with(env, &pod, "drop-all", |c| {
        security_mut(c).capabilities = Some(Capability {
            add_capabilities: vec!["NET_BIND_SERVICE".into()],
            drop_capabilities: vec!["ALL".into()],
            add_ambient_capabilities: Vec::new(),
        });
    })
    .await?;
    let got = cap_set(&init_status_field(env, &minimal, "CapEff").await?)?;
    ensure!(
        got == BTreeSet::from([CAP_NET_BIND_SERVICE]),
        "drop ALL add NET_BIND_SERVICE: CapEff has {got:?}"
    );

    let mut privileged = env.container_config(&pod, "privileged", &busybox)?;
    privileged.command = vec!["sleep".into(), "3600".into()];
    security_mut(&mut privileged).privileged = true;
    expect_code(
        env.cri
            .create_container(&pod.id, &privileged, &pod.config)
            .await,
        Code::InvalidArgument,
        "a privileged container in a pod that is not privileged",
    )?;

    // The positive case: a privileged pod may run a privileged container, which
    // gets every capability crustd itself has.
    let mut config = env.pod_config("privileged-pod")?;
    sandbox_security_mut(&mut config).privileged = true;
    let privileged_pod = env.run_pod_with(config).await?;
    let mut config = env.container_config(&privileged_pod, "privileged", &busybox)?;
    config.command = vec!["sleep".into(), "3600".into()];
    security_mut(&mut config).privileged = true;
    let id = env.start_container(&privileged_pod, &config).await?;
    let got = cap_set(&init_status_field(env, &id, "CapEff").await?)?;
    let own = std::fs::read_to_string("/proc/self/status")?;
    let own_bounding = own
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .context("no CapBnd")?;
    let ours = cap_set(own_bounding)?;
    ensure!(
        got == ours,
        "a privileged container's CapEff {got:?} differs from the host's bounding set {ours:?}"
    );

    for p in [&pod, &privileged_pod] {
        env.cri.stop_pod_sandbox(&p.id).await?;
        env.cri.remove_pod_sandbox(&p.id).await?;
    }
    env.assert_no_leaks()
}

#[test]
fn env_and_working_dir_from_config() {
    run("env_and_working_dir_from_config", env_and_workdir);
}

async fn env_and_workdir(env: &mut TestEnv) -> Result<()> {
    env.pull(&env.images.busybox.reference).await?;
    let pod = env.run_pod("env-workdir").await?;
    let id = sleeper_with(env, &pod, "configured", |c| {
        c.envs = vec![
            env_var("PLAIN", "value"),
            env_var("WITH_SPACES", "a b  c"),
            env_var("WITH_EQUALS", "k=v=w"),
            env_var("EMPTY", ""),
        ];
        c.working_dir = "/etc".into();
    })
    .await?;
    let environ = env.sh(&id, "cat /proc/1/environ").await?;
    let vars: Vec<&str> = environ.split('\0').filter(|v| !v.is_empty()).collect();
    for wanted in [
        "PLAIN=value",
        "WITH_SPACES=a b  c",
        "WITH_EQUALS=k=v=w",
        "EMPTY=",
    ] {
        ensure!(
            vars.contains(&wanted),
            "{wanted:?} missing from pid 1's environment {vars:?}"
        );
    }
    let echoed = env
        .sh(&id, "printf '%s|' \"$WITH_SPACES\" \"$WITH_EQUALS\"")
        .await?;
    ensure!(
        echoed == "a b  c|k=v=w|",
        "ExecSync sees the config env as {echoed:?}"
    );
    let cwd = env.sh(&id, "readlink /proc/1/cwd").await?;
    ensure!(cwd.trim() == "/etc", "pid 1 runs in {cwd:?}, not /etc");
    let pwd = env.sh(&id, "pwd").await?;
    ensure!(pwd.trim() == "/etc", "ExecSync runs in {pwd:?}, not /etc");

    env.cri.stop_pod_sandbox(&pod.id).await?;
    env.cri.remove_pod_sandbox(&pod.id).await?;
    env.assert_no_leaks()
}

/// Interface names listed in a `/proc/net/dev` text.
fn interfaces(proc_net_dev: &str) -> BTreeSet<String> {
    proc_net_dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split_once(':').map(|(name, _)| name.trim().to_string()))
        .collect()
}

#[test]
fn host_network_pod_sees_node_hostname_and_interfaces() {
    run(
        "host_network_pod_sees_node_hostname_and_interfaces",
        host_network,
    );
}

async fn host_network(env: &mut TestEnv) -> Result<()> {
    env.pull(&env.images.busybox.reference).await?;
    let mut config = env.pod_config("host-network")?;
    // kubelet leaves the hostname empty for pods on the node's network.
    config.hostname = String::new();
    config.dns_config = None;
    sandbox_security_mut(&mut config).namespace_options = Some(namespace_options(
        NamespaceMode::Node,
        NamespaceMode::Container,
        NamespaceMode::Pod,
    ));
    let pod = env.run_pod_with(config).await?;
    let id = sleeper_with(env, &pod, "on-host", |c| {
        security_mut(c).namespace_options = Some(namespace_options(
            NamespaceMode::Node,
            NamespaceMode::Container,
            NamespaceMode::Pod,
        ));
    })
    .await?;

    let node = nix::unistd::gethostname()?
        .into_string()
        .map_err(|h| anyhow::anyhow!("hostname {h:?} is not UTF-8"))?;
    let inside = env.sh(&id, "hostname").await?;
    ensure!(
        inside.trim() == node,
        "hostname in a host-network pod is {inside:?}, the node's is {node:?}"
    );

    let host_net = std::fs::read_link("/proc/self/ns/net")?;
    let pod_net = env.sh(&id, "readlink /proc/1/ns/net").await?;
    ensure!(
        pod_net.trim() == host_net.to_string_lossy(),
        "the host-network pod is in {pod_net:?}, the node in {host_net:?}"
    );
    // Read the node's list before and after, in case something else on the
    // machine adds or removes an interface meanwhile.
    let before = interfaces(&std::fs::read_to_string("/proc/net/dev")?);
    let seen = interfaces(&env.sh(&id, "cat /proc/net/dev").await?);
    let after = interfaces(&std::fs::read_to_string("/proc/net/dev")?);
    ensure!(
        seen == before || seen == after,
        "interfaces inside {seen:?} differ from the node's {after:?}"
    );
    let status = env.cri.pod_sandbox_status(&pod.id).await?;
    let options = status
        .linux
        .and_then(|l| l.namespaces)
        .and_then(|n| n.options);
    if let Some(options) = options {
        ensure!(
            options.network == NamespaceMode::Node as i32,
            "PodSandboxStatus reports network namespace mode {}",
            options.network
        );
    }

    env.cri.stop_pod_sandbox(&pod.id).await?;
    env.cri.remove_pod_sandbox(&pod.id).await?;
    let lo_up = std::fs::read_to_string("/sys/class/net/lo/operstate").unwrap_or_default();
    ensure!(
        lo_up.trim() != "down",
        "removing a host-network pod took the node's loopback down"
    );
    env.assert_no_leaks()
}

#[test]
fn selinux_labels_are_refused_on_a_host_without_selinux() {
    run(
        "selinux_labels_are_refused_on_a_host_without_selinux",
        selinux_refused,
    );
}

async fn selinux_refused(env: &mut TestEnv) -> Result<()> {
    if Path::new("/sys/fs/selinux/enforce").exists() {
        crust_e2e::requirements::note_skip(
            "selinux_labels_are_refused_on_a_host_without_selinux",
            "SELinux is enabled on this host, where labels apply",
        );
        return Ok(());
    }
    let label = SeLinuxOption {
        level: "s0:c1,c2".into(),
        ..Default::default()
    };
    let mut config = env.pod_config("selinux")?;
    sandbox_security_mut(&mut config).selinux_options = Some(label.clone());
    let refused = env.cri.run_pod_sandbox(&config).await.map(drop);
    expect_code(
        refused,
        Code::InvalidArgument,
        "a pod with an SELinux label",
    )?;
    ensure!(
        env.cri.list_pod_sandbox(None).await?.is_empty(),
        "a refused pod was created"
    );

    env.pull(&env.images.busybox.reference).await?;
    let pod = env.run_pod("selinux").await?;
    let mut container = env.container_config(&pod, "labelled", &env.images.busybox.reference)?;
    container.command = vec!["sleep".into(), "3600".into()];
    security_mut(&mut container).selinux_options = Some(label);
    let refused = env
        .cri
        .create_container(&pod.id, &container, &pod.config)
        .await
        .map(drop);
    expect_code(
        refused,
        Code::InvalidArgument,
        "a container with an SELinux label",
    )?;
    ensure!(
        env.cri.list_containers(None).await?.is_empty(),
        "a refused container was created"
    );
    env.cri.stop_pod_sandbox(&pod.id).await?;
    env.cri.remove_pod_sandbox(&pod.id).await?;
    env.assert_no_leaks()
}
