//! ImageService corner cases: removing one of two tags, looking images up by
//! id and short id, ListImages filters, ImageFsInfo, and short names that
//! normalize to docker.io (looked up only, never pulled).

use anyhow::{Context, Result, ensure};
use crust_e2e::assertions::{digest_hex, expect_code};
use crust_e2e::{TestEnv, run};
use tonic::Code;

#[test]
fn remove_one_of_two_tags_keeps_the_image() {
    run("remove_one_of_two_tags_keeps_the_image", remove_one_tag);
}

async fn remove_one_tag(env: &mut TestEnv) -> Result<()> {
    let one = env.images.busybox.reference.clone();
    let latest = env.images.busybox_latest.reference.clone();
    let id = env.pull(&one).await?;
    let id_latest = env.pull(&latest).await?;
    ensure!(
        id == id_latest,
        "the two tags are one image: {id} vs {id_latest}"
    );
    let image = env
        .cri
        .image_status(&id)
        .await?
        .context("ImageStatus by id")?;
    ensure!(
        image.repo_tags.contains(&one) && image.repo_tags.contains(&latest),
        "repo_tags {:?} lack one of the two tags",
        image.repo_tags
    );

    env.cri
        .remove_image(&one)
        .await
        .context("RemoveImage by tag")?;
    ensure!(
        env.cri.image_status(&one).await?.is_none(),
        "the removed tag {one} still resolves"
    );
    let kept = env
        .cri
        .image_status(&latest)
        .await?
        .context("removing one tag removed the image under the other tag too")?;
    ensure!(kept.id == id, "{latest} now names {}", kept.id);
    ensure!(
        kept.repo_tags == [latest.as_str()],
        "repo_tags after removing {one}: {:?}",
        kept.repo_tags
    );
    let by_id = env
        .cri
        .image_status(&id)
        .await?
        .context("the image id no longer resolves although a tag remains")?;
    ensure!(by_id.repo_tags == [latest.as_str()]);
    let listed = env.cri.list_images().await?;
    let entry = listed
        .iter()
        .find(|i| i.id == id)
        .context("ListImages lost the image")?;
    ensure!(
        entry.repo_tags == [latest.as_str()],
        "ListImages shows tags {:?}",
        entry.repo_tags
    );

    // Its layers are still there: a container runs from the remaining tag.
    let pod = env.run_pod("one-tag-left").await?;
    let mut config = env.container_config(&pod, "from-latest", &latest)?;
    config.command = vec!["sleep".into(), "3600".into()];
    let cid = env.start_container(&pod, &config).await?;
    ensure!(env.sh(&cid, "echo layers-intact").await? == "layers-intact\n");
    env.cri.stop_pod_sandbox(&pod.id).await?;
    env.cri.remove_pod_sandbox(&pod.id).await?;

    // Pulling the removed tag again brings it back onto the same image.
    ensure!(env.pull(&one).await? == id);
    let both = env.cri.image_status(&id).await?.context("after re-pull")?;
    ensure!(
        both.repo_tags.contains(&one) && both.repo_tags.contains(&latest),
        "repo_tags after pulling {one} again: {:?}",
        both.repo_tags
    );

    // Removing by id removes every tag.
    env.cri
        .remove_image(&id)
        .await
        .context("RemoveImage by id")?;
    for reference in [&one, &latest, &id] {
        ensure!(
            env.cri.image_status(reference).await?.is_none(),
            "{reference} still resolves after RemoveImage by id"
        );
    }
    env.assert_no_leaks()
}

#[test]
fn image_status_by_id_prefix_and_list_filters() {
    run("image_status_by_id_prefix_and_list_filters", lookups);
}

async fn lookups(env: &mut TestEnv) -> Result<()> {
    let busybox = env.images.busybox.reference.clone();
    let layered = env.images.layered.reference.clone();
    let busybox_id = env.pull(&busybox).await?;
    let layered_id = env.pull(&layered).await?;
    ensure!(busybox_id != layered_id);
    let hex = digest_hex(&busybox_id).to_string();

    for (what, key) in [
        ("the full id", busybox_id.clone()),
        ("the id without sha256:", hex.clone()),
        ("a 12-character id prefix", hex[..12].to_string()),
        ("the repo digest", env.images.busybox.digest_reference()),
    ] {
        let image = env
            .cri
            .image_status(&key)
            .await
            .with_context(|| format!("ImageStatus by {what} ({key})"))?
            .with_context(|| format!("ImageStatus by {what} ({key}) found nothing"))?;
        ensure!(
            image.id == busybox_id,
            "ImageStatus by {what} ({key}) found {}",
            image.id
        );
    }
    // A prefix of no image is not found; an empty name is a bad request.
    let unused_prefix = (0..16u8)
        .map(|d| format!("{d:x}").repeat(12))
        .find(|p| {
            !digest_hex(&busybox_id).starts_with(p) && !digest_hex(&layered_id).starts_with(p)
        })
        .context("no unused prefix")?;
    ensure!(
        env.cri.image_status(&unused_prefix).await?.is_none(),
        "ImageStatus of the unused prefix {unused_prefix} found an image"
    );
    expect_code(
        env.cri.image_status("").await,
        Code::InvalidArgument,
        "ImageStatus of an empty name",
    )?;

    let ids = |images: Vec<crust_e2e::cri::Image>| -> Vec<String> {
        images.into_iter().map(|i| i.id).collect()
    };
    let all = ids(env.cri.list_images().await?);
    ensure!(
        all.contains(&busybox_id) && all.contains(&layered_id),
        "unfiltered ListImages: {all:?}"
    );
    for (what, filter, expected) in [
        ("by tag", busybox.clone(), vec![busybox_id.clone()]),
        (
            "by the other tag",
            layered.clone(),
            vec![layered_id.clone()],
        ),
        ("by id", layered_id.clone(), vec![layered_id.clone()]),
        (
            "by id prefix",
            hex[..12].to_string(),
            vec![busybox_id.clone()],
        ),
        ("by a missing tag", env.images.missing_tag(), vec![]),
    ] {
        let got = ids(env
            .cri
            .list_images_matching(&filter)
            .await
            .with_context(|| format!("ListImages {what}"))?);
        ensure!(
            got == expected,
            "ListImages filtered {what} ({filter}): {got:?}, expected {expected:?}"
        );
    }
    Ok(())
}

#[test]
fn image_fs_info_reports_usage() {
    run("image_fs_info_reports_usage", fs_info);
}

async fn fs_info(env: &mut TestEnv) -> Result<()> {
    env.pull(&env.images.busybox.reference).await?;
    let first = env.cri.image_fs_info().await?;
    let fs = first
        .image_filesystems
        .first()
        .context("ImageFsInfo lists no image filesystem")?;
    ensure!(fs.timestamp > 0, "timestamp {}", fs.timestamp);
    let mountpoint = fs
        .fs_id
        .as_ref()
        .map(|f| f.mountpoint.clone())
        .unwrap_or_default();
    ensure!(
        !mountpoint.is_empty() && std::path::Path::new(&mountpoint).is_dir(),
        "fs_id mountpoint {mountpoint:?} is not a directory"
    );
    let used = fs.used_bytes.as_ref().map(|v| v.value).unwrap_or_default();
    let inodes = fs.inodes_used.as_ref().map(|v| v.value).unwrap_or_default();
    ensure!(used > 0, "used_bytes {used} with an image pulled");
    ensure!(inodes > 0, "inodes_used {inodes} with an image pulled");
    let busybox_size =
        std::fs::metadata(crust_e2e::requirements::find_program("busybox").context("busybox")?)?
            .len();
    ensure!(
        used >= busybox_size,
        "used_bytes {used} is less than the busybox binary alone ({busybox_size})"
    );

    env.pull(&env.images.layered.reference).await?;
    let second = env.cri.image_fs_info().await?;
    let fs2 = second
        .image_filesystems
        .first()
        .context("no image filesystem")?;
    let inodes2 = fs2
        .inodes_used
        .as_ref()
        .map(|v| v.value)
        .unwrap_or_default();
    let used2 = fs2.used_bytes.as_ref().map(|v| v.value).unwrap_or_default();
    ensure!(
        inodes2 > inodes && used2 > used,
        "a second image with extra layers did not add usage: bytes {used} -> {used2}, inodes {inodes} -> {inodes2}"
    );
    ensure!(fs2.timestamp >= fs.timestamp);
    Ok(())
}

#[test]
fn short_names_normalize_to_docker_hub() {
    run("short_names_normalize_to_docker_hub", short_names);
}

async fn short_names(env: &mut TestEnv) -> Result<()> {
    // The local images are busybox:1.0 and busybox:latest on 127.0.0.1; the
    // short names below mean docker.io/library/busybox and must not match them.
    env.pull(&env.images.busybox.reference).await?;
    env.pull(&env.images.busybox_latest.reference).await?;
    for name in [
        "busybox",
        "busybox:1.0",
        "library/busybox",
        "docker.io/busybox:latest",
        "docker.io/library/busybox",
        "docker.io/library/busybox:1.0",
        "index.docker.io/library/busybox:latest",
    ] {
        let found = env
            .cri
            .image_status(name)
            .await
            .with_context(|| format!("ImageStatus {name}"))?;
        ensure!(
            found.is_none(),
            "ImageStatus {name:?} found the local image {:?}: short names must mean docker.io",
            found.map(|i| i.repo_tags)
        );
        let listed = env.cri.list_images_matching(name).await?;
        ensure!(listed.is_empty(), "ListImages {name:?} found {listed:?}");
        env.cri
            .remove_image(name)
            .await
            .with_context(|| format!("RemoveImage of the absent {name} must succeed"))?;
    }
    ensure!(
        env.cri
            .image_status(&env.images.busybox.reference)
            .await?
            .is_some(),
        "removing docker.io names removed the local image"
    );

    // Malformed references: refused or not found, never a crash.
    for bad in [
        "UPPER/Case:tag",
        "busybox:tag:extra",
        "busybox@sha256:short",
        "http://busybox",
        "busybox:",
        "-dash/busybox",
        "a//b",
        " ",
    ] {
        match env.cri.image_status(bad).await {
            Ok(None) => {}
            Ok(Some(image)) => anyhow::bail!("ImageStatus {bad:?} found {image:?}"),
            Err(status) => {
                ensure!(
                    status.code() == Code::InvalidArgument,
                    "ImageStatus {bad:?}: {:?} {:?} (expected InvalidArgument or nothing)",
                    status.code(),
                    status.message()
                );
                ensure!(
                    !status.message().to_lowercase().contains("panic"),
                    "ImageStatus {bad:?}: {:?}",
                    status.message()
                );
            }
        }
    }
    // PullImage of malformed references, anchored at the local registry so that
    // a lenient parser could at worst reach that registry, never docker.io.
    let registry = env.images.registry.clone();
    for bad in [
        format!("{registry}/UPPER:tag"),
        format!("{registry}/busybox:tag:extra"),
        format!("{registry}/busybox@sha256:short"),
        format!("{registry}/busybox:"),
        format!("{registry}//busybox"),
        format!("{registry}/busybox:1.0 "),
    ] {
        match env.cri.pull_image(&bad).await {
            Ok(id) => anyhow::bail!("PullImage {bad:?} succeeded with {id}"),
            Err(status) => ensure!(
                status.code() == Code::InvalidArgument
                    && !status.message().to_lowercase().contains("panic"),
                "PullImage {bad:?}: {:?} {:?} (expected InvalidArgument)",
                status.code(),
                status.message()
            ),
        }
    }
    let version = env.cri.version().await?;
    ensure!(
        version.runtime_name == "crust",
        "crustd is unwell: {version:?}"
    );
    Ok(())
}
