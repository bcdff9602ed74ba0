//! The ImageService as kubelet and crictl use it: references by tag, digest,
//! tag@digest and id; a second tag or a digest of a present image fetching
//! nothing again; ImageStatus (user, pinned, verbose info); ListImages
//! filters; RemoveImage by tag, digest and id with the garbage collection of
//! what nothing references, held back while a container uses the layers;
//! ImageFsInfo for the image store and the writable layers.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use crust_e2e::assertions::{digest_hex, expect_code};
use crust_e2e::cri::{self, ContainerState, FilesystemUsage};
use crust_e2e::fake_registry::FakeRegistry;
use crust_e2e::fixtures::{B_TXT, NEW_TXT, PushedImage};
use crust_e2e::image_builder::{Blob, DOCKER_CONFIG, DOCKER_MANIFEST, Image, sha256_digest};
use crust_e2e::registry::RegistryClient;
use crust_e2e::{TestEnv, run, wait};
use serde_json::Value;
use tonic::Code;

/// crustd re-walks the writable layers at most this often (cri's
/// `WRITABLE_LAYERS_MAX_AGE`), plus slack.
const WRITABLE_LAYERS_REFRESH: Duration = Duration::from_secs(15);

/// A fake registry front forwarding to the shared registry, so the test sees
/// every request crustd makes.
async fn counting_front(env: &TestEnv) -> Result<FakeRegistry> {
    FakeRegistry::start(Some(env.images.registry.clone())).await
}

/// Paths of the `GET .../blobs/...` requests the front saw.
fn blob_gets(front: &FakeRegistry) -> Vec<String> {
    front
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path.contains("/blobs/"))
        .map(|r| r.path)
        .collect()
}

/// `<root>/content/blobs/sha256/<hex>` exists.
fn has_blob(env: &TestEnv, digest: &str) -> bool {
    env.daemon
        .paths()
        .root
        .join("content/blobs/sha256")
        .join(digest_hex(digest))
        .exists()
}

/// The entries of `dir` (none if it does not exist).
fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The committed snapshot directory of chain id `chain`, if there is one.
fn snapshot_dir(env: &TestEnv, chain: &str) -> Option<PathBuf> {
    let snapshots = env.daemon.paths().root.join("snapshots");
    let link = snapshots.join("by-chain").join(digest_hex(chain));
    // The index entry is a symlink `../<n>`.
    let target = std::fs::read_link(link).ok()?;
    let dir = snapshots.join(target.file_name()?);
    dir.is_dir().then_some(dir)
}

/// Chain ids of `diff_ids`, bottom first (OCI image spec).
fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for diff in diff_ids {
        let next = match out.last() {
            None => diff.clone(),
            Some(parent) => sha256_digest(format!("{parent} {diff}").as_bytes()),
        };
        out.push(next);
    }
    out
}

/// The diff ids in an image's config.
fn diff_ids(image: &Image) -> Result<Vec<String>> {
    let config: Value = serde_json::from_slice(&image.config.data)?;
    config["rootfs"]["diff_ids"]
        .as_array()
        .context("config without diff_ids")?
        .iter()
        .map(|d| d.as_str().map(String::from).context("diff id"))
        .collect()
}

/// Bytes (st_blocks × 512) and inodes under `dirs`, hardlinks once: what
/// ImageFsInfo must report.
fn disk_use(dirs: &[PathBuf]) -> Result<(u64, u64)> {
    let mut seen = HashSet::new();
    let (mut bytes, mut inodes) = (0, 0);
    let mut stack: Vec<PathBuf> = dirs.to_vec();
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path)
            .with_context(|| format!("inspecting {}", path.display()))?;
        if seen.insert((meta.dev(), meta.ino())) {
            bytes += meta.blocks() * 512;
            inodes += 1;
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                stack.push(entry?.path());
            }
        }
    }
    Ok((bytes, inodes))
}

fn used(fs: &FilesystemUsage) -> (u64, u64) {
    (
        fs.used_bytes.as_ref().map(|v| v.value).unwrap_or_default(),
        fs.inodes_used.as_ref().map(|v| v.value).unwrap_or_default(),
    )
}

fn mountpoint(fs: &FilesystemUsage) -> String {
    fs.fs_id
        .as_ref()
        .map(|f| f.mountpoint.clone())
        .unwrap_or_default()
}

/// ImageFsInfo's image and container filesystems (exactly one of each).
async fn fs_info(env: &TestEnv) -> Result<(FilesystemUsage, FilesystemUsage)> {
    let info = env.cri.image_fs_info().await.context("ImageFsInfo")?;
    ensure!(
        info.image_filesystems.len() == 1 && info.container_filesystems.len() == 1,
        "ImageFsInfo: expected one image and one container filesystem, got {info:?}"
    );
    Ok((
        info.image_filesystems[0].clone(),
        info.container_filesystems[0].clone(),
    ))
}

/// ImageStatus with verbose = true: the image and its parsed `info` JSON.
async fn status_verbose(env: &TestEnv, image: &str) -> Result<(cri::Image, Value)> {
    let response = env
        .cri
        .images
        .clone()
        .image_status(cri::ImageStatusRequest {
            image: Some(cri::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            verbose: true,
        })
        .await
        .with_context(|| format!("verbose ImageStatus {image}"))?
        .into_inner();
    let found = response
        .image
        .with_context(|| format!("verbose ImageStatus {image} found nothing"))?;
    let raw = response
        .info
        .get("info")
        .with_context(|| format!("verbose ImageStatus has no `info`: {:?}", response.info))?;
    let info = serde_json::from_str(raw).with_context(|| format!("info is not JSON: {raw}"))?;
    Ok((found, info))
}

/// `image` with `User` set to `user` in its config (a new image id).
fn with_user(image: &Image, user: &str) -> Result<Image> {
    let mut config: Value = serde_json::from_slice(&image.config.data)?;
    config["config"]["User"] = Value::String(user.into());
    let config = Blob::new(DOCKER_CONFIG, serde_json::to_vec(&config)?);
    let mut manifest: Value = serde_json::from_slice(&image.manifest.data)?;
    manifest["config"] = config.descriptor();
    Ok(Image {
        manifest: Blob::new(DOCKER_MANIFEST, serde_json::to_vec(&manifest)?),
        config,
        layers: image.layers.clone(),
        platform: image.platform.clone(),
    })
}

#[test]
fn second_tag_and_digest_pulls_share_everything() {
    run("second_tag_and_digest_pulls_share_everything", shared_pulls);
}

async fn shared_pulls(env: &mut TestEnv) -> Result<()> {
    let front = counting_front(env).await?;
    let host = front.host();
    let busybox: &PushedImage = &env.images.busybox;
    let layered: &PushedImage = &env.images.layered;
    let repo = format!("{host}/busybox");
    let one = format!("{repo}:1.0");
    let latest = format!("{repo}:latest");
    let by_digest = format!("{repo}@{}", busybox.digest);

    let id = env.pull(&one).await?;
    ensure!(
        id == busybox.config_digest,
        "PullImage returned {id}, not the image id (config digest) {}",
        busybox.config_digest
    );
    let first: HashSet<String> = blob_gets(&front).into_iter().collect();
    let wanted: HashSet<String> = [
        &busybox.image.config.digest,
        &busybox.image.layers[0].digest,
    ]
    .iter()
    .map(|d| format!("/v2/busybox/blobs/{d}"))
    .collect();
    ensure!(
        first == wanted,
        "a cold pull fetched blobs {first:?}, expected {wanted:?}"
    );

    // Another tag of the same image: only its manifest is fetched.
    front.clear_requests();
    ensure!(env.pull(&latest).await? == id, "{latest} is the same image");
    let again = blob_gets(&front);
    ensure!(
        again.is_empty(),
        "pulling a second tag of a present image fetched blobs again: {again:?}"
    );
    ensure!(
        front
            .requests()
            .iter()
            .all(|r| r.path.ends_with("/manifests/latest") || r.path == "/v2/"),
        "a second tag needs only its manifest: {:?}",
        front.requests()
    );

    // By digest, or by tag@digest, a present image needs no request at all.
    front.clear_requests();
    for reference in [
        by_digest.clone(),
        format!("{repo}:1.0@{}", busybox.digest),
        format!("{repo}:other-tag@{}", busybox.digest),
    ] {
        ensure!(
            env.pull(&reference).await? == id,
            "PullImage {reference} gave another image"
        );
    }
    ensure!(
        front.requests().is_empty(),
        "pulls by digest of a present image went to the registry: {:?}",
        front.requests()
    );

    let image = env
        .cri
        .image_status(&id)
        .await?
        .context("ImageStatus by id")?;
    let tags: HashSet<&str> = image.repo_tags.iter().map(String::as_str).collect();
    ensure!(
        tags == HashSet::from([one.as_str(), latest.as_str()]),
        "repo_tags {:?}: a tag next to a digest is not recorded, the two pulled tags are",
        image.repo_tags
    );
    ensure!(
        image.repo_digests == [by_digest.as_str()],
        "repo_digests {:?}",
        image.repo_digests
    );
    ensure!(image.size > 0, "size {}", image.size);
    ensure!(
        image.spec.as_ref().map(|s| s.image.as_str()) == Some(id.as_str()),
        "spec {:?}",
        image.spec
    );

    // Every name finds it, in ImageStatus and as a ListImages filter.
    let hex = digest_hex(&id).to_string();
    for name in [
        one.clone(),
        latest.clone(),
        repo.clone(),
        by_digest.clone(),
        format!("{repo}:1.0@{}", busybox.digest),
        format!("{repo}:no-such-tag@{}", busybox.digest),
        id.clone(),
        hex.clone(),
        hex[..12].to_string(),
        format!("sha256:{}", &hex[..12]),
    ] {
        let found = env
            .cri
            .image_status(&name)
            .await
            .with_context(|| format!("ImageStatus {name}"))?;
        ensure!(
            found.as_ref().map(|i| i.id.as_str()) == Some(id.as_str()),
            "ImageStatus {name} found {found:?}"
        );
        let listed: Vec<String> = env
            .cri
            .list_images_matching(&name)
            .await
            .with_context(|| format!("ListImages {name}"))?
            .into_iter()
            .map(|i| i.id)
            .collect();
        ensure!(listed == [id.clone()], "ListImages {name}: {listed:?}");
    }
    for absent in [
        format!("{repo}:2.0"),
        format!("{host}/other@{}", busybox.digest),
        format!("{repo}@{}", layered.digest),
    ] {
        ensure!(
            env.cri.image_status(&absent).await?.is_none(),
            "ImageStatus {absent} found an image"
        );
        ensure!(
            env.cri.list_images_matching(&absent).await?.is_empty(),
            "ListImages {absent} found an image"
        );
    }

    // An image sharing a layer with a present one fetches only its own blobs.
    front.clear_requests();
    let layered_id = env.pull(&format!("{host}/layered:1.0")).await?;
    ensure!(layered_id == layered.config_digest);
    let fetched: HashSet<String> = blob_gets(&front).into_iter().collect();
    let own: HashSet<String> = layered
        .image
        .layers
        .iter()
        .skip(1)
        .chain([&layered.image.config])
        .map(|b| format!("/v2/layered/blobs/{}", b.digest))
        .collect();
    ensure!(
        layered.image.layers[0].digest == busybox.image.layers[0].digest,
        "the fixture's layered image no longer starts with the busybox layer"
    );
    ensure!(
        fetched == own,
        "pulling an image that shares the busybox layer fetched {fetched:?}, expected only {own:?}"
    );
    let all: Vec<String> = env
        .cri
        .list_images()
        .await?
        .into_iter()
        .map(|i| i.id)
        .collect();
    ensure!(
        all.len() == 2 && all.contains(&id) && all.contains(&layered_id),
        "ListImages: {all:?}"
    );
    Ok(())
}

#[test]
fn remove_by_tag_digest_and_id_collects_what_nothing_uses() {
    run(
        "remove_by_tag_digest_and_id_collects_what_nothing_uses",
        removals,
    );
}

async fn removals(env: &mut TestEnv) -> Result<()> {
    let busybox = env.images.busybox.clone();
    let layered = env.images.layered.clone();
    let latest = env.images.busybox_latest.reference.clone();
    let id = env.pull(&busybox.reference).await?;
    env.pull(&latest).await?;
    let layered_id = env.pull(&layered.reference).await?;
    let by_chain = env.daemon.paths().root.join("snapshots/by-chain");
    let busybox_chain = chain_ids(&diff_ids(&busybox.image)?);
    let layered_chains = chain_ids(&diff_ids(&layered.image)?);
    ensure!(busybox_chain[0] == layered_chains[0], "shared bottom layer");
    ensure!(
        entries(&by_chain).len() == 3,
        "snapshots: {:?}",
        entries(&by_chain)
    );

    // One tag of two: the image stays, with its other tag and its digest.
    env.cri.remove_image(&busybox.reference).await?;
    ensure!(env.cri.image_status(&busybox.reference).await?.is_none());
    let kept = env
        .cri
        .image_status(&latest)
        .await?
        .context("removing one of two tags removed the image")?;
    ensure!(kept.id == id && kept.repo_tags == [latest.as_str()]);
    ensure!(kept.repo_digests == [busybox.digest_reference()]);
    ensure!(has_blob(env, &busybox.config_digest) && has_blob(env, &busybox.digest));

    // By digest reference: the image goes with all its names. Its config and
    // manifest go; the layer stays, the layered image uses it.
    env.cri.remove_image(&busybox.digest_reference()).await?;
    for name in [&latest, &id, &busybox.digest_reference()] {
        ensure!(
            env.cri.image_status(name).await?.is_none(),
            "{name} still resolves after RemoveImage by digest"
        );
    }
    ensure!(
        !has_blob(env, &busybox.config_digest) && !has_blob(env, &busybox.digest),
        "the removed image's config or manifest blob is still stored"
    );
    ensure!(
        has_blob(env, &busybox.image.layers[0].digest),
        "a layer another image uses was collected"
    );
    ensure!(snapshot_dir(env, &busybox_chain[0]).is_some());
    ensure!(env.cri.image_status(&layered_id).await?.is_some());

    // Pulled again under both tags, then removed by a short id: every name goes.
    env.pull(&busybox.reference).await?;
    env.pull(&latest).await?;
    let short = digest_hex(&id)[..12].to_string();
    env.cri
        .remove_image(&short)
        .await
        .context("RemoveImage by short id")?;
    for name in [&busybox.reference, &latest, &id] {
        ensure!(
            env.cri.image_status(name).await?.is_none(),
            "{name} still resolves after RemoveImage by id"
        );
    }

    // The last image, by its untagged name's normal form: everything goes.
    env.cri
        .remove_image(&layered.reference)
        .await
        .context("RemoveImage layered")?;
    ensure!(env.cri.list_images().await?.is_empty());
    let root = &env.daemon.paths().root;
    let blobs = entries(&root.join("content/blobs/sha256"));
    ensure!(blobs.is_empty(), "blobs left: {blobs:?}");
    ensure!(
        entries(&by_chain).is_empty(),
        "snapshots left: {:?}",
        entries(&by_chain)
    );
    ensure!(
        entries(&root.join("snapshots")) == ["by-chain"],
        "snapshot directories left: {:?}",
        entries(&root.join("snapshots"))
    );
    // Absent is fine, in every form.
    for name in [&layered.reference, &layered_id, &short] {
        env.cri
            .remove_image(name)
            .await
            .with_context(|| format!("RemoveImage of the absent {name}"))?;
    }
    expect_code(
        env.cri.remove_image("").await,
        Code::InvalidArgument,
        "RemoveImage without a name",
    )?;
    env.assert_no_leaks()
}

#[test]
fn image_status_user_pinned_and_verbose_info() {
    run("image_status_user_pinned_and_verbose_info", status_fields);
}

async fn status_fields(env: &mut TestEnv) -> Result<()> {
    let registry = RegistryClient::new(&env.images.registry)?;
    let base = &env.images.busybox.image;
    let cases: [(&str, &str, Option<i64>, &str); 5] = [
        ("user-none", "", None, ""),
        ("user-uid", "1000", Some(1000), ""),
        ("user-uid-gid", "1000:1000", Some(1000), ""),
        ("user-name", "app", None, "app"),
        ("user-name-group", "app:staff", None, "app"),
    ];
    let mut ids = Vec::new();
    for (repo, user, uid, username) in cases {
        let image = with_user(base, user)?;
        registry.push_image(repo, Some("1"), &image).await?;
        let reference = format!("{}/{repo}:1", env.images.registry);
        let id = env.pull(&reference).await?;
        ensure!(id == image.config.digest);
        let status = env
            .cri
            .image_status(&reference)
            .await?
            .context("ImageStatus after pull")?;
        ensure!(
            status.uid.as_ref().map(|u| u.value) == uid && status.username == username,
            "User {user:?}: uid {:?}, username {:?}; expected {uid:?} and {username:?}",
            status.uid,
            status.username
        );
        ensure!(
            !status.pinned,
            "{reference} is pinned without configuration"
        );
        ids.push((reference, id, image));
    }

    // Verbose info: JSON with the image config and the chain ids.
    let layered = env.images.layered.clone();
    env.pull(&layered.reference).await?;
    let (image, info) = status_verbose(env, &layered.reference).await?;
    let chains = chain_ids(&diff_ids(&layered.image)?);
    let top = chains.last().context("no layers")?;
    ensure!(
        info["chainID"] == top.as_str(),
        "chainID {} (expected {top})",
        info["chainID"]
    );
    let config: Value = serde_json::from_slice(&layered.image.config.data)?;
    ensure!(
        info["imageSpec"] == config,
        "imageSpec {} is not the pulled config {config}",
        info["imageSpec"]
    );
    ensure!(info["id"] == image.id.as_str());
    let layers = info["layers"].as_array().context("layers")?;
    ensure!(layers.len() == 3, "layers {layers:?}");
    for ((layer, chain), blob) in layers.iter().zip(&chains).zip(&layered.image.layers) {
        ensure!(layer["chainID"] == chain.as_str() && layer["digest"] == blob.digest.as_str());
    }
    let plain = env
        .cri
        .images
        .clone()
        .image_status(cri::ImageStatusRequest {
            image: Some(cri::ImageSpec {
                image: layered.reference.clone(),
                ..Default::default()
            }),
            verbose: false,
        })
        .await?
        .into_inner();
    ensure!(
        plain.info.is_empty(),
        "info without verbose: {:?}",
        plain.info
    );

    // Pinned: by tag, by digest reference and by id, after a restart with
    // `pinned_images` set.
    let (by_tag, by_digest, by_id) = (&ids[3], &ids[1], &ids[2]);
    let digest_ref = format!(
        "{}/user-uid@{}",
        env.images.registry, by_digest.2.manifest.digest
    );
    env.reconfigure(&format!(
        "pinned_images = [\"{}\", \"{digest_ref}\", \"{}\"]",
        by_tag.0, by_id.1
    ))
    .await?;
    let pinned_ids: HashSet<&str> = [&by_tag.1, &by_digest.1, &by_id.1]
        .into_iter()
        .map(String::as_str)
        .collect();
    for (reference, id, _) in &ids {
        let status = env
            .cri
            .image_status(reference)
            .await?
            .with_context(|| format!("{reference} after the restart"))?;
        let want = pinned_ids.contains(id.as_str());
        ensure!(
            status.pinned == want,
            "{reference}: pinned {} (expected {want})",
            status.pinned
        );
    }
    for listed in env.cri.list_images().await? {
        ensure!(
            listed.pinned == pinned_ids.contains(listed.id.as_str()),
            "ListImages: {} pinned {}",
            listed.id,
            listed.pinned
        );
    }
    let (_, info) = status_verbose(env, &by_tag.0).await?;
    ensure!(
        info["pinned"] == true,
        "verbose info pinned {}",
        info["pinned"]
    );
    // Pinned is a recommendation: RemoveImage still removes.
    env.cri.remove_image(&by_tag.0).await?;
    ensure!(env.cri.image_status(&by_tag.0).await?.is_none());
    Ok(())
}

#[test]
fn image_fs_info_counts_images_and_writable_layers() {
    run("image_fs_info_counts_images_and_writable_layers", fs_usage);
}

async fn fs_usage(env: &mut TestEnv) -> Result<()> {
    let root = env.daemon.paths().root.clone();
    let store_dirs = [root.join("content"), root.join("snapshots")];
    let (image_fs, container_fs) = fs_info(env).await?;
    ensure!(
        mountpoint(&image_fs) == root.join("snapshots").to_string_lossy(),
        "image filesystem mountpoint {:?}",
        mountpoint(&image_fs)
    );
    ensure!(
        mountpoint(&container_fs) == root.join("containers").to_string_lossy(),
        "container filesystem mountpoint {:?}",
        mountpoint(&container_fs)
    );
    ensure!(image_fs.timestamp > 0 && container_fs.timestamp > 0);
    ensure!(
        used(&image_fs) == disk_use(&store_dirs)?,
        "empty store: ImageFsInfo {:?}, on disk {:?}",
        used(&image_fs),
        disk_use(&store_dirs)?
    );

    // A pull shows at once, exactly; so does a removal.
    let layered = env.images.layered.clone();
    env.pull(&layered.reference).await?;
    let (after_pull, _) = fs_info(env).await?;
    let on_disk = disk_use(&store_dirs)?;
    ensure!(
        used(&after_pull) == on_disk,
        "after a pull: ImageFsInfo {:?}, on disk {on_disk:?}",
        used(&after_pull)
    );
    let blob_bytes: u64 = layered
        .image
        .layers
        .iter()
        .map(|l| l.data.len() as u64)
        .sum();
    ensure!(
        used(&after_pull).0 >= used(&image_fs).0 + blob_bytes,
        "a pull of {blob_bytes} compressed bytes added only {} bytes",
        used(&after_pull).0 - used(&image_fs).0
    );
    ensure!(after_pull.timestamp > image_fs.timestamp);
    // Asked again (committed snapshots come from memory now): the same.
    let (again, _) = fs_info(env).await?;
    ensure!(used(&again) == on_disk, "second call {:?}", used(&again));

    // A container's writable layer shows in the container filesystem, within
    // one refresh period.
    let pod = env.run_pod("fs-usage").await?;
    let mut config = env.container_config(&pod, "writer", &layered.reference)?;
    config.command = vec!["sleep".into(), "3600".into()];
    let id = env.start_container(&pod, &config).await?;
    let (_, before) = fs_info(env).await?;
    let (before_bytes, _) = used(&before);
    const WRITTEN: u64 = 8 << 20;
    env.sh(
        &id,
        "dd if=/dev/zero of=/written bs=1048576 count=8 2>/dev/null && sync",
    )
    .await?;
    let grown = wait::until(
        "the written file in ImageFsInfo's container filesystem",
        WRITABLE_LAYERS_REFRESH,
        || async {
            let (_, c) = fs_info(env).await?;
            Ok((used(&c).0 >= before_bytes + WRITTEN).then_some(c))
        },
    )
    .await?;
    ensure!(grown.timestamp > before.timestamp);
    // The walk is reused: calls in a row report the same collection time.
    let mut stamps = Vec::new();
    for _ in 0..3 {
        stamps.push(fs_info(env).await?.1.timestamp);
    }
    ensure!(
        stamps.windows(2).any(|w| w[0] == w[1]),
        "every ImageFsInfo walked the writable layers again: {stamps:?}"
    );
    // The image filesystem did not change with the container's writes.
    ensure!(used(&fs_info(env).await?.0) == on_disk);

    env.cri.stop_pod_sandbox(&pod.id).await?;
    env.cri.remove_pod_sandbox(&pod.id).await?;
    wait::until(
        "the removed container's layer to leave ImageFsInfo",
        WRITABLE_LAYERS_REFRESH,
        || async {
            let (_, c) = fs_info(env).await?;
            Ok((used(&c).0 < before_bytes + WRITTEN).then_some(()))
        },
    )
    .await?;

    env.cri.remove_image(&layered.reference).await?;
    let (removed, _) = fs_info(env).await?;
    let on_disk = disk_use(&store_dirs)?;
    ensure!(
        used(&removed) == on_disk,
        "after RemoveImage: ImageFsInfo {:?}, on disk {on_disk:?}",
        used(&removed)
    );
    ensure!(
        used(&removed).0 + blob_bytes <= used(&after_pull).0,
        "RemoveImage freed too little: {:?} -> {:?}",
        used(&after_pull),
        used(&removed)
    );
    env.assert_no_leaks()
}

#[test]
fn removed_image_stays_for_its_containers_until_they_go() {
    run(
        "removed_image_stays_for_its_containers_until_they_go",
        held_by_containers,
    );
}

async fn held_by_containers(env: &mut TestEnv) -> Result<()> {
    let layered = env.images.layered.clone();
    let id = env.pull(&layered.reference).await?;
    let chains = chain_ids(&diff_ids(&layered.image)?);
    let dirs: Vec<PathBuf> = chains
        .iter()
        .map(|c| snapshot_dir(env, c).with_context(|| format!("no snapshot for {c}")))
        .collect::<Result<_>>()?;

    let pod = env.run_pod("held").await?;
    let mut first = env.container_config(&pod, "started-before", &layered.reference)?;
    first.command = vec!["sleep".into(), "3600".into()];
    let started = env.start_container(&pod, &first).await?;
    let mut second = env.container_config(&pod, "started-after", &layered.reference)?;
    second.command = vec!["sleep".into(), "3600".into()];
    let created = env.create_container(&pod, &second).await?;

    env.cri
        .remove_image(&layered.reference)
        .await
        .context("RemoveImage of an image two containers use")?;
    ensure!(env.cri.image_status(&id).await?.is_none());
    ensure!(
        !env.cri.list_images().await?.iter().any(|i| i.id == id),
        "ListImages still shows the removed image"
    );
    for blob in layered.image.layers.iter().chain([&layered.image.config]) {
        ensure!(
            !has_blob(env, &blob.digest),
            "blob {} of the removed image is still stored",
            blob.digest
        );
    }
    for dir in &dirs {
        ensure!(
            dir.is_dir(),
            "{} went while containers use it",
            dir.display()
        );
    }

    // The container created before the removal still starts and runs.
    env.cri
        .start_container(&created)
        .await
        .context("StartContainer after its image was removed")?;
    for cid in [&started, &created] {
        ensure!(env.sh(cid, "cat /data/new.txt").await? == NEW_TXT);
        ensure!(env.sh(cid, "cat /data/old/b.txt").await? == B_TXT);
    }
    let mut late = env.container_config(&pod, "created-after", &layered.reference)?;
    late.command = vec!["sleep".into(), "3600".into()];
    expect_code(
        env.cri.create_container(&pod.id, &late, &pod.config).await,
        Code::NotFound,
        "CreateContainer from the removed image",
    )?;

    // One container gone: the other still holds every layer.
    env.cri.stop_container(&started, 0).await?;
    env.cri.remove_container(&started).await?;
    for dir in &dirs {
        ensure!(
            dir.is_dir(),
            "{} went while a container uses it",
            dir.display()
        );
    }
    ensure!(env.sh(&created, "echo still-here").await? == "still-here\n");

    // The last one gone: the snapshots are collected.
    env.cri.stop_container(&created, 0).await?;
    let status = env
        .wait_for_state(
            &created,
            ContainerState::ContainerExited,
            Duration::from_secs(10),
        )
        .await?;
    ensure!(status.exit_code == 137, "exit code {}", status.exit_code);
    env.cri.remove_container(&created).await?;
    for dir in &dirs {
        ensure!(
            !dir.exists(),
            "{} is still on disk after the last container using it was removed",
            dir.display()
        );
    }
    let root = &env.daemon.paths().root;
    ensure!(
        entries(&root.join("snapshots")) == ["by-chain"],
        "snapshot directories left: {:?}",
        entries(&root.join("snapshots"))
    );
    ensure!(entries(&root.join("meta/leases")).is_empty());
    env.cri.stop_pod_sandbox(&pod.id).await?;
    env.cri.remove_pod_sandbox(&pod.id).await?;
    env.assert_no_leaks()
}

#[test]
fn holds_of_containers_lost_in_a_crash_are_released_at_start() {
    run(
        "holds_of_containers_lost_in_a_crash_are_released_at_start",
        stale_holds,
    );
}

async fn stale_holds(env: &mut TestEnv) -> Result<()> {
    let busybox = env.images.busybox.clone();
    let id = env.pull(&busybox.reference).await?;
    let chain = chain_ids(&diff_ids(&busybox.image)?)
        .pop()
        .context("no layer")?;
    let dir = snapshot_dir(env, &chain).context("no snapshot")?;
    // What crustd leaves when killed between taking a container's hold on the
    // image and recording the container: a lease nobody will release.
    env.kill_daemon().await?;
    let lease = env
        .daemon
        .paths()
        .root
        .join("meta/leases")
        .join(format!("{}.json", "0123456789abcdef".repeat(4)));
    std::fs::write(
        &lease,
        serde_json::json!({"image_id": id, "chain_ids": [chain]}).to_string(),
    )?;
    env.restart_daemon().await?;
    ensure!(!lease.exists(), "the stale lease survived the restart");
    env.cri.remove_image(&busybox.reference).await?;
    if dir.exists() {
        bail!(
            "{} was kept for a container that does not exist",
            dir.display()
        );
    }
    Ok(())
}
