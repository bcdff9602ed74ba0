//! Image handling seen from containers: layer whiteouts and opaque directories,
//! image config (Env, WorkingDir, Cmd) against container config, multi-arch
//! indexes, idempotent pulls, missing images, and removing an image in use.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use crust_e2e::assertions::{digest_hex, expect_code};
use crust_e2e::cri::ContainerState;
use crust_e2e::fixtures::{B_TXT, IMAGE_PATH, NEW_TXT};
use crust_e2e::pod_config::env_var;
use crust_e2e::{TestEnv, run};
use tonic::Code;

/// `/proc/1/<file>` of container `id`, split at NULs.
async fn proc1(env: &TestEnv, id: &str, file: &str) -> Result<Vec<String>> {
    let raw = env.sh(id, &format!("cat /proc/1/{file}")).await?;
    Ok(raw
        .split('\0')
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect())
}

#[test]
fn layered_image_whiteouts_opaque_env_and_workdir() {
    run(
        "layered_image_whiteouts_opaque_env_and_workdir",
        layered_image,
    );
}

async fn layered_image(env: &mut TestEnv) -> Result<()> {
    let layered = env.images.layered.reference.clone();
    env.pull(&layered).await?;
    let pod = env.run_pod("layered").await?;
    let mut config = env.container_config(&pod, "layered", &layered)?;
    config.envs = vec![
        env_var("SHARED_VAR", "from-config"),
        env_var("CONFIG_ONLY", "yes"),
    ];
    let id = env.start_container(&pod, &config).await?;

    let group = env.exec(&id, &["test", "-e", "/etc/group"]).await?;
    ensure!(
        group.exit_code == 1,
        "/etc/group survived its whiteout (test -e exited {})",
        group.exit_code
    );
    let etc = env.sh(&id, "ls -a /etc").await?;
    ensure!(
        !etc.contains(".wh."),
        "whiteout marker visible in /etc: {etc:?}"
    );
    ensure!(
        etc.contains("passwd"),
        "/etc/passwd from the lower layer is missing: {etc:?}"
    );
    ensure!(
        env.sh(&id, "cat /data/new.txt").await? == NEW_TXT,
        "/data/new.txt"
    );
    let a = env.exec(&id, &["test", "-e", "/data/old/a.txt"]).await?;
    ensure!(
        a.exit_code == 1,
        "/data/old/a.txt survived the opaque directory"
    );
    ensure!(
        env.sh(&id, "cat /data/old/b.txt").await? == B_TXT,
        "/data/old/b.txt"
    );
    let old = env.sh(&id, "ls -A /data/old").await?;
    ensure!(old == "b.txt\n", "/data/old holds {old:?}");

    ensure!(
        env.sh(&id, "pwd").await? == "/data\n",
        "exec does not start in WorkingDir"
    );
    let cwd = env.sh(&id, "readlink /proc/1/cwd").await?;
    ensure!(
        cwd == "/data\n",
        "the container process runs in {cwd:?}, not WorkingDir /data"
    );
    let cmdline = proc1(env, &id, "cmdline").await?;
    ensure!(
        cmdline == ["sleep", "3600"],
        "image Cmd not used: {cmdline:?}"
    );

    let environ = proc1(env, &id, "environ").await?;
    for wanted in [
        IMAGE_PATH,
        "IMAGE_VAR=from-image",
        "SHARED_VAR=from-config",
        "CONFIG_ONLY=yes",
    ] {
        ensure!(
            environ.iter().any(|e| e == wanted),
            "{wanted} missing from {environ:?}"
        );
    }
    ensure!(
        !environ.iter().any(|e| e == "SHARED_VAR=from-image"),
        "image env not overridden by config env: {environ:?}"
    );
    ensure!(
        env.sh(&id, "echo $IMAGE_VAR").await? == "from-image\n",
        "exec env lacks IMAGE_VAR"
    );

    env.cri.stop_pod_sandbox(&pod.id).await?;
    env.cri.remove_pod_sandbox(&pod.id).await?;
    env.assert_no_leaks()
}

/// A container config overriding the layered image's `Cmd ["sleep","3600"]`
/// (it has no Entrypoint, so pid 1 must run exactly `command` + `args`).
struct Override {
    name: &'static str,
    command: &'static [&'static str],
    args: &'static [&'static str],
    working_dir: Option<&'static str>,
}

#[test]
fn command_and_args_override_image_config() {
    run("command_and_args_override_image_config", command_and_args);
}

async fn command_and_args(env: &mut TestEnv) -> Result<()> {
    let layered = env.images.layered.reference.clone();
    env.pull(&layered).await?;
    let pod = env.run_pod("overrides").await?;
    let cases = [
        Override {
            name: "args-only",
            command: &[],
            args: &["sleep", "3601"],
            working_dir: None,
        },
        Override {
            name: "command-and-args",
            command: &["sleep"],
            args: &["3602"],
            working_dir: None,
        },
        Override {
            name: "command-only",
            command: &["sleep", "3603"],
            args: &[],
            working_dir: Some("/tmp"),
        },
    ];
    for case in cases {
        let mut config = env.container_config(&pod, case.name, &layered)?;
        config.command = case.command.iter().map(|s| s.to_string()).collect();
        config.args = case.args.iter().map(|s| s.to_string()).collect();
        config.working_dir = case.working_dir.unwrap_or_default().into();
        let id = env.start_container(&pod, &config).await?;
        let cmdline = proc1(env, &id, "cmdline").await?;
        let expected: Vec<&str> = case.command.iter().chain(case.args).copied().collect();
        ensure!(
            cmdline == expected,
            "{}: pid 1 runs {cmdline:?}, expected {expected:?}",
            case.name
        );
        let cwd = env.sh(&id, "readlink /proc/1/cwd").await?;
        let wanted = case.working_dir.unwrap_or("/data");
        ensure!(
            cwd.trim() == wanted,
            "{}: cwd {cwd:?}, expected {wanted}",
            case.name
        );
    }
    env.cri.stop_pod_sandbox(&pod.id).await?;
    env.cri.remove_pod_sandbox(&pod.id).await?;
    env.assert_no_leaks()
}

#[test]
fn multi_arch_index_pulls_node_platform() {
    run("multi_arch_index_pulls_node_platform", multi_arch);
}

async fn multi_arch(env: &mut TestEnv) -> Result<()> {
    let multi = &env.images.multi_arch;
    let image_ref = env.pull(&multi.reference).await?;
    let image = env
        .cri
        .image_status(&multi.reference)
        .await?
        .context("no image after pull")?;
    ensure!(image.id == image_ref);
    ensure!(
        image.id.ends_with(digest_hex(&multi.config_digest)),
        "pulled {} but the node platform's config is {}",
        image.id,
        multi.config_digest
    );
    ensure!(
        image.repo_digests.contains(&multi.digest_reference()),
        "repo_digests {:?} lack the index digest {}",
        image.repo_digests,
        multi.digest_reference()
    );
    let pod = env.run_pod("multi").await?;
    let mut config = env.container_config(&pod, "native", &multi.reference)?;
    config.command = vec!["sleep".into(), "3600".into()];
    let id = env.start_container(&pod, &config).await?;
    ensure!(env.sh(&id, "echo native").await? == "native\n");
    let wrong = env.exec(&id, &["test", "-e", "/WRONG-PLATFORM"]).await?;
    ensure!(
        wrong.exit_code == 1,
        "the foreign platform's layer was unpacked"
    );
    env.cri.stop_pod_sandbox(&pod.id).await?;
    env.cri.remove_pod_sandbox(&pod.id).await?;
    env.assert_no_leaks()
}

#[test]
fn pull_is_idempotent_and_missing_images_are_not_found() {
    run("pull_is_idempotent_and_missing_images_are_not_found", pulls);
}

async fn pulls(env: &mut TestEnv) -> Result<()> {
    let busybox = &env.images.busybox;
    let first = env.pull(&busybox.reference).await?;
    let second = env.pull(&busybox.reference).await?;
    ensure!(first == second, "pulling twice gave {first} then {second}");
    let images = env.cri.list_images().await?;
    let matching: Vec<_> = images.iter().filter(|i| i.id == first).collect();
    ensure!(
        matching.len() == 1,
        "ListImages after two pulls: {images:?}"
    );
    let tags = &matching[0].repo_tags;
    ensure!(
        tags.iter().filter(|t| **t == busybox.reference).count() == 1,
        "repo_tags after two pulls: {tags:?}"
    );

    let untagged = env.images.busybox_latest.repository.clone();
    let latest = env.pull(&untagged).await?;
    ensure!(
        latest == first,
        "{untagged} (latest) is the same image, got {latest}"
    );
    let image = env
        .cri
        .image_status(&untagged)
        .await?
        .context("ImageStatus of an untagged name")?;
    ensure!(
        image
            .repo_tags
            .contains(&env.images.busybox_latest.reference),
        "repo_tags {:?} lack the normalized {}",
        image.repo_tags,
        env.images.busybox_latest.reference
    );
    ensure!(
        image.repo_tags.contains(&busybox.reference),
        "the 1.0 tag was lost: {:?}",
        image.repo_tags
    );

    let by_digest = env.pull(&busybox.digest_reference()).await?;
    ensure!(by_digest == first, "pull by digest gave {by_digest}");
    let images = env.cri.list_images().await?;
    ensure!(
        images.iter().filter(|i| i.id == first).count() == 1,
        "duplicate images: {images:?}"
    );

    let missing_tag = env.images.missing_tag();
    expect_code(
        env.cri.pull_image(&missing_tag).await,
        Code::NotFound,
        "pull of a missing tag",
    )?;
    let missing_repo = env.images.missing_repository();
    expect_code(
        env.cri.pull_image(&missing_repo).await,
        Code::NotFound,
        "pull of a missing repository",
    )?;
    ensure!(
        env.cri.image_status(&missing_tag).await?.is_none(),
        "ImageStatus of a missing tag"
    );
    Ok(())
}

#[test]
fn remove_image_in_use_keeps_container_running() {
    run("remove_image_in_use_keeps_container_running", remove_in_use);
}

async fn remove_in_use(env: &mut TestEnv) -> Result<()> {
    let busybox = env.images.busybox.reference.clone();
    env.pull(&busybox).await?;
    let pod = env.run_pod("in-use").await?;
    let mut config = env.container_config(&pod, "user", &busybox)?;
    config.command = vec!["sleep".into(), "3600".into()];
    let id = env.start_container(&pod, &config).await?;

    env.cri
        .remove_image(&busybox)
        .await
        .context("RemoveImage of an image in use")?;
    ensure!(
        env.cri.image_status(&busybox).await?.is_none(),
        "image still listed after RemoveImage"
    );
    let status = env.cri.container_status(&id).await?;
    ensure!(
        status.state == ContainerState::ContainerRunning as i32,
        "container state {}",
        status.state
    );
    ensure!(
        env.sh(&id, "cat /etc/passwd | head -1")
            .await?
            .starts_with("root:"),
        "rootfs broken"
    );
    ensure!(env.sh(&id, "echo alive").await? == "alive\n");

    let mut another = env.container_config(&pod, "late", &busybox)?;
    another.command = vec!["sleep".into(), "3600".into()];
    expect_code(
        env.cri
            .create_container(&pod.id, &another, &pod.config)
            .await,
        Code::NotFound,
        "CreateContainer from a removed image",
    )?;
    env.cri.stop_container(&id, 0).await?;
    let stopped = env
        .wait_for_state(
            &id,
            ContainerState::ContainerExited,
            Duration::from_secs(10),
        )
        .await?;
    ensure!(stopped.exit_code == 137, "exit code {}", stopped.exit_code);
    env.cri.remove_container(&id).await?;
    env.pull(&busybox)
        .await
        .context("pulling the removed image again")?;
    let again = env.start_container(&pod, &another).await?;
    ensure!(env.sh(&again, "echo back").await? == "back\n");
    env.cri.stop_pod_sandbox(&pod.id).await?;
    env.cri.remove_pod_sandbox(&pod.id).await?;
    env.assert_no_leaks()
}
