//! Pods with their own user namespace (`hostUsers: false`) under runc 1.1.5,
//! which cannot idmap: crust idmaps the image layers and the volumes itself.
//! Also recursive read-only mounts, which crust makes the same way.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use anyhow::{Result, ensure};
use crust_e2e::assertions::expect_code;
use crust_e2e::cri::{
    ContainerConfig, IdMapping, Mount, MountPropagation, NamespaceMode, NamespaceOption,
    PodSandboxConfig, UserNamespace,
};
use crust_e2e::pod_config::{pod_namespaces, sandbox_security_mut, security_mut};
use crust_e2e::{Pod, TestEnv, run};
use nix::mount::{MntFlags, MsFlags};
use tonic::Code;

/// Host uid and gid that root in the test pods is.
const HOST_ROOT: u32 = 1_300_000;
/// How many ids the test pods map.
const MAPPED: u32 = 65_536;

fn mapping(container_id: u32, host_id: u32, length: u32) -> IdMapping {
    IdMapping {
        container_id,
        host_id,
        length,
    }
}

fn pod_user_namespace() -> UserNamespace {
    UserNamespace {
        mode: NamespaceMode::Pod as i32,
        uids: vec![mapping(0, HOST_ROOT, MAPPED)],
        gids: vec![mapping(0, HOST_ROOT, MAPPED)],
    }
}

/// Namespace options of a user-namespaced pod, with `pid` as its PID mode.
fn userns_options(user: UserNamespace, pid: NamespaceMode) -> NamespaceOption {
    NamespaceOption {
        pid: pid as i32,
        userns_options: Some(user),
        ..pod_namespaces()
    }
}

fn userns_pod_config(
    env: &TestEnv,
    name: &str,
    options: NamespaceOption,
) -> Result<PodSandboxConfig> {
    let mut config = env.pod_config(name)?;
    sandbox_security_mut(&mut config).namespace_options = Some(options);
    Ok(config)
}

/// A sleeping busybox container of `pod` with its pod's namespace options
/// and `mounts`.
fn sleeper(env: &TestEnv, pod: &Pod, name: &str, mounts: Vec<Mount>) -> Result<ContainerConfig> {
    let mut config = env.container_config(pod, name, &env.images.busybox.reference)?;
    config.command = vec!["sleep".into(), "3600".into()];
    config.mounts = mounts;
    security_mut(&mut config).namespace_options = pod
        .config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone());
    Ok(config)
}

fn bind(container_path: &str, host: &Path, idmapped: bool) -> Mount {
    let ids = if idmapped {
        vec![mapping(0, HOST_ROOT, MAPPED)]
    } else {
        Vec::new()
    };
    Mount {
        container_path: container_path.into(),
        host_path: host.to_string_lossy().into_owned(),
        uid_mappings: ids.clone(),
        gid_mappings: ids,
        ..Default::default()
    }
}

fn owner(path: &Path) -> Result<(u32, u32)> {
    let m = std::fs::metadata(path)?;
    Ok((m.uid(), m.gid()))
}

#[test]
fn a_user_namespaced_pod_is_root_inside_and_mapped_outside() {
    run(
        "a_user_namespaced_pod_is_root_inside_and_mapped_outside",
        user_namespaced_pod,
    );
}

async fn user_namespaced_pod(env: &mut TestEnv) -> Result<()> {
    env.pull(&env.images.busybox.reference).await?;
    user_namespaced_pod_under_runc(env).await?;
    // youki 0.7's exec leaves the process in the host's user namespace, as
    // real root: crust runs no user-namespaced pod under it.
    if crust_e2e::requirements::find_program("youki").is_some() {
        let config = userns_pod_config(
            env,
            "userns-youki",
            userns_options(pod_user_namespace(), NamespaceMode::Pod),
        )?;
        let refused = env
            .cri
            .run_pod_sandbox_with_handler(&config, "youki")
            .await
            .map(drop);
        expect_code(
            refused,
            Code::FailedPrecondition,
            "a user-namespaced pod under youki",
        )?;
    }
    env.assert_no_leaks()
}

async fn user_namespaced_pod_under_runc(env: &TestEnv) -> Result<()> {
    // A pod-wide PID namespace too: its holder must live in the pod's user
    // namespace for the containers to join it.
    let config = userns_pod_config(
        env,
        "userns",
        userns_options(pod_user_namespace(), NamespaceMode::Pod),
    )?;
    let pod = env.run_pod_with(config).await?;

    let base = env.daemon.paths().base.clone();
    let (idmapped, plain) = (base.join("userns-idmapped"), base.join("userns-plain"));
    for d in [&idmapped, &plain] {
        std::fs::create_dir_all(d)?;
        std::fs::write(d.join("from-host"), "host\n")?;
    }
    // Without an idmap, the pod's root is an unprivileged host user: it
    // writes only where anyone may.
    std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o777))?;
    let id = env
        .start_container(
            &pod,
            &sleeper(
                env,
                &pod,
                "inside",
                vec![
                    bind("/idmapped", &idmapped, true),
                    bind("/plain", &plain, false),
                ],
            )?,
        )
        .await?;

    let uid_map = env.sh(&id, "cat /proc/self/uid_map").await?;
    let fields: Vec<&str> = uid_map.split_whitespace().collect();
    let want = [0, HOST_ROOT, MAPPED].map(|n| n.to_string());
    ensure!(
        fields == want,
        "uid_map inside is {uid_map:?}, expected the pod's mapping {want:?}"
    );
    let id_u = env.sh(&id, "id -u; id -g").await?;
    ensure!(
        id_u.split_whitespace().eq(["0", "0"]),
        "inside, `id -u; id -g` says {id_u:?}"
    );
    let image_owner = env.sh(&id, "stat -c %u:%g /bin /etc/passwd").await?;
    ensure!(
        image_owner.lines().all(|l| l == "0:0"),
        "image files appear owned by {image_owner:?} inside, expected root (0:0)"
    );
    let volume_owner = env
        .sh(&id, "stat -c %u:%g /idmapped/from-host /plain/from-host")
        .await?;
    ensure!(
        volume_owner.lines().eq(["0:0", "65534:65534"]),
        "a host file owned by host root appears as {volume_owner:?} (idmapped, then plain); expected 0:0 then nobody"
    );

    env.sh(
        &id,
        "echo x > /idmapped/by-root && echo x > /plain/by-root && echo x > /in-rootfs \
         && chown 1000:1000 /idmapped/by-root",
    )
    .await?;
    ensure!(
        owner(&idmapped.join("by-root"))? == (1000, 1000),
        "a file chowned to 1000 on the idmapped volume is {:?} on the host, expected 1000:1000",
        owner(&idmapped.join("by-root"))?
    );
    ensure!(
        owner(&plain.join("by-root"))? == (HOST_ROOT, HOST_ROOT),
        "a file written by root on a plain volume is {:?} on the host, expected the mapped root {HOST_ROOT}",
        owner(&plain.join("by-root"))?
    );

    // The host sees the container's init as the mapped root.
    let inside_pid: i32 = env.container_pid(&id).await?;
    let host_status = std::fs::read_to_string(format!("/proc/{inside_pid}/status"))?;
    ensure!(
        host_status.contains(&format!("Uid:\t{HOST_ROOT}\t{HOST_ROOT}")),
        "the container's init is not the mapped root on the host:\n{host_status}"
    );

    env.cri.stop_pod_sandbox(&pod.id).await?;
    env.cri.remove_pod_sandbox(&pod.id).await?;
    Ok(())
}

#[test]
fn invalid_user_namespace_requests_are_refused() {
    run(
        "invalid_user_namespace_requests_are_refused",
        invalid_user_namespaces,
    );
}

async fn invalid_user_namespaces(env: &mut TestEnv) -> Result<()> {
    let pod_ns = |user: UserNamespace| userns_options(user, NamespaceMode::Container);
    let cases: Vec<(&str, NamespaceOption)> = vec![
        (
            "two uid mappings",
            pod_ns(UserNamespace {
                uids: vec![
                    mapping(0, HOST_ROOT, 1000),
                    mapping(1000, HOST_ROOT + 5000, 1000),
                ],
                ..pod_user_namespace()
            }),
        ),
        (
            "container root unmapped",
            pod_ns(UserNamespace {
                uids: vec![mapping(1, HOST_ROOT, MAPPED)],
                gids: vec![mapping(1, HOST_ROOT, MAPPED)],
                ..pod_user_namespace()
            }),
        ),
        (
            "host root mapped in",
            pod_ns(UserNamespace {
                uids: vec![mapping(0, 0, MAPPED)],
                ..pod_user_namespace()
            }),
        ),
        (
            "no mappings",
            pod_ns(UserNamespace {
                mode: NamespaceMode::Pod as i32,
                ..Default::default()
            }),
        ),
        (
            "mode CONTAINER",
            pod_ns(UserNamespace {
                mode: NamespaceMode::Container as i32,
                ..Default::default()
            }),
        ),
        (
            "mode TARGET",
            pod_ns(UserNamespace {
                mode: NamespaceMode::Target as i32,
                ..Default::default()
            }),
        ),
        (
            "the node's network",
            NamespaceOption {
                network: NamespaceMode::Node as i32,
                ..pod_ns(pod_user_namespace())
            },
        ),
    ];
    for (what, options) in cases {
        let config = userns_pod_config(env, "bad-userns", options)?;
        expect_code(
            env.cri.run_pod_sandbox(&config).await.map(drop),
            Code::InvalidArgument,
            &format!("a user namespace with {what}"),
        )?;
    }
    ensure!(
        env.cri.list_pod_sandbox(None).await?.is_empty(),
        "a refused pod was created"
    );

    // A volume idmapped with mappings other than the pod's.
    env.pull(&env.images.busybox.reference).await?;
    let pod = env
        .run_pod_with(userns_pod_config(
            env,
            "userns-volume",
            pod_ns(pod_user_namespace()),
        )?)
        .await?;
    let dir = env.daemon.paths().base.join("userns-other-mapping");
    std::fs::create_dir_all(&dir)?;
    let mut other = bind("/data", &dir, true);
    other.uid_mappings = vec![mapping(0, HOST_ROOT + MAPPED, MAPPED)];
    let config = sleeper(env, &pod, "other-mapping", vec![other])?;
    expect_code(
        env.cri
            .create_container(&pod.id, &config, &pod.config)
            .await
            .map(drop),
        Code::InvalidArgument,
        "a volume idmapped with mappings other than the pod's",
    )?;
    ensure!(
        env.cri.list_containers(None).await?.is_empty(),
        "a refused container was created"
    );
    env.cri.stop_pod_sandbox(&pod.id).await?;
    env.cri.remove_pod_sandbox(&pod.id).await?;
    env.assert_no_leaks()
}

#[test]
fn recursive_read_only_mounts_reach_submounts() {
    run(
        "recursive_read_only_mounts_reach_submounts",
        recursive_read_only,
    );
}

async fn recursive_read_only(env: &mut TestEnv) -> Result<()> {
    env.pull(&env.images.busybox.reference).await?;
    let pod = env.run_pod("rro").await?;
    let host = env.daemon.paths().base.join("rro-volume");
    let sub = host.join("sub");
    std::fs::create_dir_all(&sub)?;
    nix::mount::mount(
        Some("tmpfs"),
        &sub,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("size=1m"),
    )?;
    let result = rro_checks(env, &pod, &host).await;
    let _ = nix::mount::umount2(&sub, MntFlags::MNT_DETACH);
    result?;
    env.cri.stop_pod_sandbox(&pod.id).await?;
    env.cri.remove_pod_sandbox(&pod.id).await?;
    env.assert_no_leaks()
}

async fn rro_checks(env: &TestEnv, pod: &Pod, host: &Path) -> Result<()> {
    let ro = |path: &str, recursive: bool| Mount {
        readonly: true,
        recursive_read_only: recursive,
        ..bind(path, host, false)
    };
    let id = env
        .start_container(
            pod,
            &sleeper(env, pod, "rro", vec![ro("/rro", true), ro("/ro", false)])?,
        )
        .await?;
    for (path, writable) in [
        ("/rro/x", false),
        ("/rro/sub/x", false),
        ("/ro/x", false),
        ("/ro/sub/x", true),
    ] {
        let touch = env.exec(&id, &["touch", path]).await?;
        ensure!(
            (touch.exit_code == 0) == writable,
            "`touch {path}` exited {} ({}); expected it to {}",
            touch.exit_code,
            touch.stderr.trim(),
            if writable { "succeed" } else { "fail" }
        );
    }

    for (what, mount, code) in [
        (
            "recursive_read_only without readonly",
            Mount {
                readonly: false,
                ..ro("/bad", true)
            },
            Code::InvalidArgument,
        ),
        (
            "recursive_read_only with host-to-container propagation",
            Mount {
                propagation: MountPropagation::PropagationHostToContainer as i32,
                ..ro("/bad", true)
            },
            Code::InvalidArgument,
        ),
    ] {
        let config = sleeper(env, pod, "bad-rro", vec![mount])?;
        expect_code(
            env.cri
                .create_container(&pod.id, &config, &pod.config)
                .await
                .map(drop),
            code,
            what,
        )?;
    }
    Ok(())
}
