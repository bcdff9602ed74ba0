//! The CRI lifecycle of pods and containers, driven like kubelet drives it:
//! the full sequence from Version to RemoveImage, and containers that exit on
//! their own.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use crust_e2e::assertions::{digest_hex, expect_code, expect_full_id, expect_superset};
use crust_e2e::cri::{ContainerFilter, ContainerState, PodSandboxState};
use crust_e2e::fixtures::IMAGE_PATH;
use crust_e2e::pod_config::env_var;
use crust_e2e::{TestEnv, filters, mountinfo, run, unique, wait};
use tonic::Code;

#[test]
fn full_pod_and_container_lifecycle() {
    run("full_pod_and_container_lifecycle", full_lifecycle);
}

async fn full_lifecycle(env: &mut TestEnv) -> Result<()> {
    let cri = env.cri.clone();
    let busybox = &env.images.busybox;

    let version = cri.version().await?;
    ensure!(
        version.runtime_name == "crust",
        "runtime_name {:?}",
        version.runtime_name
    );
    ensure!(
        version.runtime_api_version == "v1",
        "runtime_api_version {:?}",
        version.runtime_api_version
    );
    ensure!(!version.runtime_version.is_empty(), "empty runtime_version");

    let conditions = cri
        .status()
        .await?
        .status
        .context("Status without status")?
        .conditions;
    let runtime_ready = conditions
        .iter()
        .find(|c| c.r#type == "RuntimeReady")
        .context("no RuntimeReady condition")?;
    ensure!(
        runtime_ready.status,
        "RuntimeReady is false: {runtime_ready:?}"
    );
    let network_ready = conditions
        .iter()
        .find(|c| c.r#type == "NetworkReady")
        .context("no NetworkReady condition")?;
    if !network_ready.status {
        ensure!(
            !network_ready.reason.is_empty() && !network_ready.message.is_empty(),
            "NetworkReady false without reason and message: {network_ready:?}"
        );
    }

    let image_ref = env.pull(&busybox.reference).await?;
    let image = cri
        .image_status(&busybox.reference)
        .await?
        .context("ImageStatus after PullImage has no image")?;
    ensure!(
        image.id == image_ref,
        "PullImage returned {image_ref}, ImageStatus id {}",
        image.id
    );
    ensure!(
        image.id.ends_with(digest_hex(&busybox.config_digest)),
        "image id {} is not the config digest {}",
        image.id,
        busybox.config_digest
    );
    ensure!(
        image.repo_tags.contains(&busybox.reference),
        "repo_tags {:?}",
        image.repo_tags
    );
    ensure!(
        image.repo_digests.contains(&busybox.digest_reference()),
        "repo_digests {:?} lack {}",
        image.repo_digests,
        busybox.digest_reference()
    );
    ensure!(image.size > 0, "image size is 0");
    let by_id = cri
        .image_status(&image.id)
        .await?
        .context("ImageStatus by id")?;
    ensure!(by_id.id == image.id);
    let listed = cri.list_images().await?;
    ensure!(
        listed
            .iter()
            .any(|i| i.id == image.id && i.repo_tags.contains(&busybox.reference)),
        "ListImages lacks the pulled image: {listed:?}"
    );

    let mut pod_config = env.pod_config("lifecycle")?;
    pod_config.labels.insert("tier".into(), "e2e".into());
    let pod = env.run_pod_with(pod_config).await?;
    expect_full_id(&pod.id, "RunPodSandbox")?;
    let status = cri.pod_sandbox_status(&pod.id).await?;
    ensure!(status.id == pod.id);
    ensure!(
        status.state == PodSandboxState::SandboxReady as i32,
        "pod state {}",
        status.state
    );
    ensure!(
        status.metadata == pod.config.metadata,
        "pod metadata {:?}",
        status.metadata
    );
    ensure!(
        status.created_at > 0,
        "pod created_at {}",
        status.created_at
    );
    expect_superset(&status.labels, &pod.config.labels, "pod labels")?;
    ensure!(
        status.annotations == pod.config.annotations,
        "pod annotations {:?}",
        status.annotations
    );
    expect_code(
        cri.run_pod_sandbox(&pod.config).await,
        Code::AlreadyExists,
        "second RunPodSandbox with the same metadata",
    )?;

    let mut main = env.container_config(&pod, "main", &busybox.reference)?;
    main.command = vec![
        "sh".into(),
        "-c".into(),
        "echo started; exec sleep 3600".into(),
    ];
    main.envs = vec![env_var("CONFIG_VAR", "from-config")];
    main.labels.insert("app".into(), "one".into());
    main.labels.insert("tier".into(), "e2e".into());
    main.annotations
        .insert("e2e.crust.dev/note".into(), "round trip, untouched".into());
    let main_id = env.create_container(&pod, &main).await?;
    expect_full_id(&main_id, "CreateContainer")?;
    let created = cri.container_status(&main_id).await?;
    ensure!(
        created.state == ContainerState::ContainerCreated as i32,
        "state {}",
        created.state
    );
    ensure!(
        created.created_at > 0 && created.started_at == 0 && created.finished_at == 0,
        "{created:?}"
    );
    cri.start_container(&main_id).await?;
    let running = cri.container_status(&main_id).await?;
    ensure!(
        running.state == ContainerState::ContainerRunning as i32,
        "state {}",
        running.state
    );
    ensure!(running.id == main_id);
    ensure!(
        running.started_at > 0 && running.started_at >= running.created_at,
        "{running:?}"
    );
    ensure!(
        running.finished_at == 0,
        "finished_at set on a running container"
    );
    ensure!(
        running.metadata == main.metadata,
        "metadata {:?}",
        running.metadata
    );
    let shown_image = running
        .image
        .as_ref()
        .map(|i| i.image.clone())
        .unwrap_or_default();
    ensure!(
        shown_image == busybox.reference,
        "status image {shown_image:?}, expected the name the client gave, {}",
        busybox.reference
    );
    ensure!(
        running.image_ref == busybox.digest_reference(),
        "status image_ref {:?}, expected {}",
        running.image_ref,
        busybox.digest_reference()
    );
    ensure!(
        running.image_id == image.id,
        "status image_id {:?}",
        running.image_id
    );
    let log_file = pod.log_file(&main);
    ensure!(
        running.log_path == log_file.to_string_lossy(),
        "log_path {:?}, expected {}",
        running.log_path,
        log_file.display()
    );
    expect_superset(&running.labels, &main.labels, "container labels")?;
    ensure!(
        running.annotations == main.annotations,
        "annotations {:?}",
        running.annotations
    );

    let mut sidecar = env.container_config(&pod, "sidecar", &busybox.reference)?;
    sidecar.command = vec!["sleep".into(), "3600".into()];
    sidecar.labels.insert("app".into(), "two".into());
    sidecar.labels.insert("tier".into(), "e2e".into());
    let sidecar_id = env.create_container(&pod, &sidecar).await?;

    check_list_containers(env, &pod.id, &main_id, &sidecar_id).await?;
    check_list_pod_sandbox(env, &pod.id).await?;

    let short = cri
        .container_status(&main_id[..12])
        .await
        .context("ContainerStatus by short id")?;
    ensure!(short.id == main_id, "short id resolved to {}", short.id);
    let short_pod = cri
        .pod_sandbox_status(&pod.id[..12])
        .await
        .context("PodSandboxStatus by short id")?;
    ensure!(short_pod.id == pod.id);

    check_exec_sync(env, &main_id).await?;

    cri.stop_container(&main_id, 1).await?;
    let stopped = cri.container_status(&main_id).await?;
    ensure!(
        stopped.state == ContainerState::ContainerExited as i32,
        "state after stop {}",
        stopped.state
    );
    ensure!(stopped.finished_at >= stopped.started_at, "{stopped:?}");
    cri.stop_container(&main_id, 1)
        .await
        .context("second StopContainer")?;
    for id in [&main_id, &sidecar_id] {
        cri.remove_container(id).await?;
        expect_code(
            cri.container_status(id).await,
            Code::NotFound,
            "ContainerStatus after remove",
        )?;
        cri.remove_container(id)
            .await
            .context("RemoveContainer of a removed container")?;
        cri.stop_container(id, 0)
            .await
            .context("StopContainer of a removed container")?;
    }
    let left = cri
        .list_containers(Some(filters::container_pod(&pod.id)))
        .await?;
    ensure!(left.is_empty(), "containers left in the pod: {left:?}");

    cri.stop_pod_sandbox(&pod.id).await?;
    let not_ready = cri.pod_sandbox_status(&pod.id).await?;
    ensure!(
        not_ready.state == PodSandboxState::SandboxNotready as i32,
        "state after stop {}",
        not_ready.state
    );
    cri.stop_pod_sandbox(&pod.id)
        .await
        .context("second StopPodSandbox")?;
    cri.remove_pod_sandbox(&pod.id).await?;
    expect_code(
        cri.pod_sandbox_status(&pod.id).await,
        Code::NotFound,
        "PodSandboxStatus after remove",
    )?;
    cri.stop_pod_sandbox(&pod.id)
        .await
        .context("StopPodSandbox of a removed pod")?;
    cri.remove_pod_sandbox(&pod.id)
        .await
        .context("RemovePodSandbox of a removed pod")?;

    let again = env
        .run_pod_with(pod.config.clone())
        .await
        .context("reusing a released pod name")?;
    cri.stop_pod_sandbox(&again.id).await?;
    cri.remove_pod_sandbox(&again.id).await?;

    let unknown = unique::unknown_id();
    expect_code(
        cri.container_status(&unknown).await,
        Code::NotFound,
        "ContainerStatus of an unknown id",
    )?;
    expect_code(
        cri.pod_sandbox_status(&unknown).await,
        Code::NotFound,
        "PodSandboxStatus of an unknown id",
    )?;
    cri.stop_container(&unknown, 0)
        .await
        .context("StopContainer of an unknown id")?;
    cri.remove_container(&unknown)
        .await
        .context("RemoveContainer of an unknown id")?;
    cri.stop_pod_sandbox(&unknown)
        .await
        .context("StopPodSandbox of an unknown id")?;
    cri.remove_pod_sandbox(&unknown)
        .await
        .context("RemovePodSandbox of an unknown id")?;

    env.assert_no_leaks()?;

    cri.remove_image(&busybox.reference).await?;
    ensure!(
        cri.image_status(&busybox.reference).await?.is_none(),
        "image still present after RemoveImage"
    );
    ensure!(
        cri.image_status(&image.id).await?.is_none(),
        "image id still resolves after RemoveImage"
    );
    cri.remove_image(&busybox.reference)
        .await
        .context("second RemoveImage")?;
    let listed = cri.list_images().await?;
    ensure!(
        !listed.iter().any(|i| i.id == image.id),
        "ListImages still lists the removed image"
    );
    Ok(())
}

async fn check_list_containers(
    env: &TestEnv,
    pod_id: &str,
    main_id: &str,
    sidecar_id: &str,
) -> Result<()> {
    let cri = &env.cri;
    let all = cri.list_containers(None).await?;
    ensure!(all.len() == 2, "unfiltered ListContainers: {all:?}");
    for c in &all {
        ensure!(
            c.pod_sandbox_id == pod_id,
            "container {} in pod {}",
            c.id,
            c.pod_sandbox_id
        );
        ensure!(
            c.created_at > 0 && !c.image_ref.is_empty() && c.image.is_some(),
            "{c:?}"
        );
    }
    let main = all
        .iter()
        .find(|c| c.id == main_id)
        .context("main not listed")?;
    ensure!(main.state == ContainerState::ContainerRunning as i32);
    let sidecar = all
        .iter()
        .find(|c| c.id == sidecar_id)
        .context("sidecar not listed")?;
    ensure!(sidecar.state == ContainerState::ContainerCreated as i32);

    let running_in_pod = ContainerFilter {
        state: filters::container_state(ContainerState::ContainerRunning).state,
        ..filters::container_pod(pod_id)
    };
    let cases = [
        ("by id", filters::container_id(main_id), vec![main_id]),
        (
            "running",
            filters::container_state(ContainerState::ContainerRunning),
            vec![main_id],
        ),
        (
            "created",
            filters::container_state(ContainerState::ContainerCreated),
            vec![sidecar_id],
        ),
        (
            "exited",
            filters::container_state(ContainerState::ContainerExited),
            vec![],
        ),
        (
            "by pod",
            filters::container_pod(pod_id),
            vec![main_id, sidecar_id],
        ),
        (
            "other pod",
            filters::container_pod(&unique::unknown_id()),
            vec![],
        ),
        (
            "app=one",
            filters::container_labels(&[("app", "one")]),
            vec![main_id],
        ),
        (
            "tier=e2e",
            filters::container_labels(&[("tier", "e2e")]),
            vec![main_id, sidecar_id],
        ),
        (
            "tier=e2e,app=two",
            filters::container_labels(&[("tier", "e2e"), ("app", "two")]),
            vec![sidecar_id],
        ),
        (
            "tier=e2e,app=nope",
            filters::container_labels(&[("tier", "e2e"), ("app", "nope")]),
            vec![],
        ),
        ("pod and running", running_in_pod, vec![main_id]),
    ];
    for (what, filter, expected) in cases {
        let mut got: Vec<String> = cri
            .list_containers(Some(filter))
            .await?
            .into_iter()
            .map(|c| c.id)
            .collect();
        got.sort();
        let mut expected: Vec<String> = expected.into_iter().map(String::from).collect();
        expected.sort();
        ensure!(
            got == expected,
            "ListContainers {what}: got {got:?}, expected {expected:?}"
        );
    }
    Ok(())
}

async fn check_list_pod_sandbox(env: &TestEnv, pod_id: &str) -> Result<()> {
    let cri = &env.cri;
    let all = cri.list_pod_sandbox(None).await?;
    let listed = all
        .iter()
        .find(|p| p.id == pod_id)
        .context("pod missing from ListPodSandbox")?;
    ensure!(
        listed.created_at > 0 && listed.metadata.is_some(),
        "{listed:?}"
    );
    ensure!(listed.state == PodSandboxState::SandboxReady as i32);
    let cases = [
        ("by id", filters::pod_id(pod_id), true),
        ("other id", filters::pod_id(&unique::unknown_id()), false),
        (
            "ready",
            filters::pod_state(PodSandboxState::SandboxReady),
            true,
        ),
        (
            "not ready",
            filters::pod_state(PodSandboxState::SandboxNotready),
            false,
        ),
        (
            "labels match",
            filters::pod_labels(&[("tier", "e2e"), ("app", "lifecycle")]),
            true,
        ),
        (
            "labels differ",
            filters::pod_labels(&[("tier", "e2e"), ("app", "other")]),
            false,
        ),
    ];
    for (what, filter, expected) in cases {
        let got = cri.list_pod_sandbox(Some(filter)).await?;
        let found = got.iter().any(|p| p.id == pod_id);
        ensure!(
            found == expected,
            "ListPodSandbox {what}: found={found}, expected {expected}: {got:?}"
        );
        if expected {
            ensure!(got.len() == 1, "ListPodSandbox {what}: {} items", got.len());
        }
    }
    Ok(())
}

async fn check_exec_sync(env: &TestEnv, id: &str) -> Result<()> {
    let echo = env.exec(id, &["echo", "hello"]).await?;
    ensure!(
        echo.stdout == "hello\n" && echo.stderr.is_empty() && echo.exit_code == 0,
        "{echo:?}"
    );
    let seven = env.exec(id, &["sh", "-c", "exit 7"]).await?;
    ensure!(seven.exit_code == 7, "exit code {}", seven.exit_code);
    let stderr = env.exec(id, &["sh", "-c", "echo to-stderr >&2"]).await?;
    ensure!(
        stderr.stderr == "to-stderr\n" && stderr.stdout.is_empty(),
        "{stderr:?}"
    );
    let path = env.sh(id, "echo $PATH").await?;
    ensure!(
        path.trim() == IMAGE_PATH.trim_start_matches("PATH="),
        "PATH in exec: {path:?}"
    );
    let config_var = env.sh(id, "echo $CONFIG_VAR").await?;
    ensure!(
        config_var == "from-config\n",
        "CONFIG_VAR in exec: {config_var:?}"
    );
    Ok(())
}

#[test]
fn containers_that_exit_report_code_and_reason() {
    run(
        "containers_that_exit_report_code_and_reason",
        exits_on_its_own,
    );
}

async fn exits_on_its_own(env: &mut TestEnv) -> Result<()> {
    env.pull(&env.images.busybox.reference).await?;
    let pod = env.run_pod("exits").await?;
    let ok = env
        .start_container(&pod, &env.shell_container(&pod, "ok", "exit 0")?)
        .await?;
    let three = env
        .start_container(&pod, &env.shell_container(&pod, "three", "exit 3")?)
        .await?;
    for (id, code, reason) in [(&ok, 0, "Completed"), (&three, 3, "Error")] {
        let status = env
            .wait_for_state(id, ContainerState::ContainerExited, Duration::from_secs(30))
            .await?;
        ensure!(
            status.exit_code == code,
            "exit_code {} (expected {code})",
            status.exit_code
        );
        ensure!(
            status.reason == reason,
            "reason {:?} (expected {reason})",
            status.reason
        );
        ensure!(status.started_at > 0, "started_at {}", status.started_at);
        ensure!(
            status.finished_at >= status.started_at,
            "finished_at {} < started_at {}",
            status.finished_at,
            status.started_at
        );
        ensure!(
            status.created_at <= status.started_at,
            "created_at after started_at"
        );
    }
    let exited = env
        .cri
        .list_containers(Some(filters::container_state(
            ContainerState::ContainerExited,
        )))
        .await?;
    ensure!(exited.len() == 2, "ListContainers EXITED: {exited:?}");

    env.cri.stop_pod_sandbox(&pod.id).await?;
    env.cri.remove_pod_sandbox(&pod.id).await?;
    let left = env.cri.list_containers(None).await?;
    ensure!(
        left.is_empty(),
        "RemovePodSandbox left its containers: {left:?}"
    );
    env.assert_no_leaks()
}

#[test]
fn exited_containers_are_settled_early_and_removed_through_the_trash() {
    run(
        "exited_containers_are_settled_early_and_removed_through_the_trash",
        settled_and_trashed,
    );
}

/// A container that exits on its own is deleted from runc and its rootfs
/// unmounted in the background, before any RemoveContainer, while its
/// status keeps its exit; RemoveContainer then moves its bundle and
/// writable layer into the trash, which empties itself, and a crustd
/// restart empties what a previous one left there.
async fn settled_and_trashed(env: &mut TestEnv) -> Result<()> {
    env.pull(&env.images.busybox.reference).await?;
    let pod = env.run_pod("settled").await?;
    let id = env
        .start_container(&pod, &env.shell_container(&pod, "three", "exit 3")?)
        .await?;
    env.wait_for_state(
        &id,
        ContainerState::ContainerExited,
        Duration::from_secs(30),
    )
    .await?;
    let paths = env.daemon.paths().clone();
    let runc_state = paths.state.join("runc").join(&id);
    let bundle = paths.state.join("containers").join(&id);
    let rootfs = bundle.join("rootfs");
    wait::until(
        "runc's state and the rootfs mount of the exited container to go",
        Duration::from_secs(10),
        || async {
            let mounted = mountinfo::read()?.iter().any(|m| m.mount_point == rootfs);
            Ok((!runc_state.exists() && !mounted).then_some(()))
        },
    )
    .await?;
    let status = env.cri.container_status(&id).await?;
    ensure!(
        status.state == ContainerState::ContainerExited as i32 && status.exit_code == 3,
        "after settling, the status is {status:?}"
    );

    env.cri.remove_container(&id).await?;
    let layer = paths.root.join("containers").join(&id);
    ensure!(
        !bundle.exists() && !layer.exists(),
        "RemoveContainer left the bundle or the writable layer"
    );
    let trash = [paths.state.join("trash"), paths.root.join("trash")];
    let empty = |dirs: &[std::path::PathBuf]| -> Result<bool> {
        for dir in dirs {
            if std::fs::read_dir(dir)?.next().is_some() {
                return Ok(false);
            }
        }
        Ok(true)
    };
    wait::until("the trash to empty", Duration::from_secs(10), || async {
        Ok(empty(&trash)?.then_some(()))
    })
    .await?;

    let left = trash[1].join("left-by-a-crash.1234");
    std::fs::create_dir_all(left.join("upper/etc"))?;
    std::fs::write(left.join("upper/etc/file"), "x")?;
    env.restart_daemon().await?;
    wait::until(
        "the restarted crustd to empty the trash",
        Duration::from_secs(10),
        || async { Ok(empty(&trash)?.then_some(())) },
    )
    .await?;

    env.cri.stop_pod_sandbox(&pod.id).await?;
    env.cri.remove_pod_sandbox(&pod.id).await?;
    env.assert_no_leaks()
}

#[test]
fn container_status_names_the_image_as_the_user_did() {
    run(
        "container_status_names_the_image_as_the_user_did",
        image_as_named,
    );
}

/// kubelet creates containers from the image id and passes the name the pod
/// spec used as `user_specified_image`; ContainerStatus shows that name (what
/// `kubectl describe` prints), `image_ref` the digested reference and
/// `image_id` the id. Without a user-specified name, an id shows as the
/// image's tag.
async fn image_as_named(env: &mut TestEnv) -> Result<()> {
    let busybox = env.images.busybox.clone();
    let id = env.pull(&busybox.reference).await?;
    let pod = env.run_pod("image-names").await?;
    for (name, user_specified, shown) in [
        (
            "kubelet",
            busybox.reference.as_str(),
            busybox.reference.as_str(),
        ),
        ("by-id", "", busybox.reference.as_str()),
    ] {
        let mut config = env.container_config(&pod, name, &id)?;
        config.command = vec!["true".into()];
        if let Some(image) = config.image.as_mut() {
            image.user_specified_image = user_specified.into();
        }
        let container = env.create_container(&pod, &config).await?;
        let status = env.cri.container_status(&container).await?;
        let image = status.image.clone().unwrap_or_default();
        ensure!(
            image.image == shown,
            "{name}: ContainerStatus shows the image as {:?}, expected {shown:?}",
            image.image
        );
        ensure!(
            status.image_ref == busybox.digest_reference() && status.image_id == id,
            "{name}: image_ref {:?}, image_id {:?}",
            status.image_ref,
            status.image_id
        );
    }
    Ok(())
}
