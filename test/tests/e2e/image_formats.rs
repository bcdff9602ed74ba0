//! What a pull accepts: zstd layers, non-distributable (foreign) layers
//! fetched from their descriptor's URLs when the registry lacks them,
//! multi-platform indexes resolved to the node, and concurrent pulls that
//! share their downloads.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use crust_e2e::crafted::{
    CraftedImage, CraftedLayer, DOCKER_FOREIGN_GZIP, LayerFormat, OCI_NONDIST_GZIP,
    OCI_NONDIST_ZSTD, RawTar, expect_clean_store, expect_pull_refused,
};
use crust_e2e::fake_registry::{FakeRegistry, Reply};
use crust_e2e::fixtures::busybox_layer;
use crust_e2e::image_builder::{
    DOCKER_CONFIG, DOCKER_LAYER_GZIP, DOCKER_MANIFEST, OCI_INDEX, Platform, sha256_digest,
};
use crust_e2e::registry::RegistryClient;
use crust_e2e::{Pod, TestEnv, run};
use serde_json::json;
use tonic::Code;

/// A layer holding one file `name` with `content`.
fn file_tar(name: &str, content: &[u8]) -> Result<Vec<u8>> {
    Ok(RawTar::new().file(name, content, 0o644)?.finish())
}

/// Runs a container from `image` in a new pod and returns `cat <path>` in it.
async fn cat_in(env: &TestEnv, image: &str, pod_name: &str, path: &str) -> Result<(Pod, String)> {
    let pod = env.run_pod(pod_name).await?;
    let mut config = env.container_config(&pod, "reader", image)?;
    config.command = vec!["sleep".into(), "3600".into()];
    let id = env.start_container(&pod, &config).await?;
    let out = env.sh(&id, &format!("cat {path}")).await?;
    Ok((pod, out))
}

/// Pushes the blobs of `image` but those in `skip` to the registry, and
/// serves its manifest as `repo:1` from `front`, which forwards everything
/// else to the registry. (docker-registry refuses manifests with layer URLs
/// unless configured to allow them.) Returns the reference to pull.
async fn publish(
    client: &RegistryClient,
    front: &FakeRegistry,
    repo: &str,
    image: &CraftedImage,
    skip: &[String],
) -> Result<String> {
    for (digest, data) in &image.blobs {
        if !skip.contains(digest) {
            client.push_blob(repo, data, digest).await?;
        }
    }
    let manifest = image.manifest_blob();
    front.route(
        "GET",
        &format!("/v2/{repo}/manifests/1"),
        Reply::ok(&manifest.media_type, manifest.data.clone()),
    );
    Ok(format!("{}/{repo}:1", front.host()))
}

async fn remove_pod(env: &TestEnv, pod: &Pod) -> Result<()> {
    env.cri.stop_pod_sandbox(&pod.id).await?;
    env.cri.remove_pod_sandbox(&pod.id).await?;
    Ok(())
}

#[test]
fn zstd_layers_pull_and_run() {
    run("zstd_layers_pull_and_run", zstd_layers);
}

async fn zstd_layers(env: &mut TestEnv) -> Result<()> {
    let busybox = CraftedLayer::new(&busybox_layer()?, LayerFormat::Zstd)?;
    let gzip = CraftedLayer::new(&file_tar("gzip.txt", b"gzip\n")?, LayerFormat::Gzip)?;
    let zstd = CraftedLayer::new(&file_tar("zstd.txt", b"zstd\n")?, LayerFormat::Zstd)?;
    let image = CraftedImage::new(&[busybox, gzip, zstd]);
    let client = RegistryClient::new(&env.images.registry)?;
    image.push(&client, "formats/zstd", "1", &[]).await?;
    let reference = format!("{}/formats/zstd:1", env.images.registry);

    let id = env.pull(&reference).await?;
    ensure!(id == image.config_digest(), "pulled {id}");
    let (pod, out) = cat_in(env, &reference, "zstd", "/zstd.txt /gzip.txt").await?;
    ensure!(out == "zstd\ngzip\n", "the zstd image holds {out:?}");
    remove_pod(env, &pod).await?;
    expect_clean_store(&env.daemon.paths().root, "after the zstd pull")
}

#[test]
fn non_distributable_layers_come_from_their_urls() {
    run(
        "non_distributable_layers_come_from_their_urls",
        non_distributable,
    );
}

async fn non_distributable(env: &mut TestEnv) -> Result<()> {
    let registry = env.images.registry.clone();
    let client = RegistryClient::new(&registry)?;
    let front = FakeRegistry::start(Some(registry.clone())).await?;
    let urls = FakeRegistry::start(None).await?;
    let url_of = |digest: &str| format!("http://{}/layers/{digest}", urls.host());
    let serve_at_url = |layer: &CraftedLayer, data: Vec<u8>| {
        urls.route(
            "GET",
            &format!("/layers/{}", layer.digest()),
            Reply::ok("application/octet-stream", data),
        );
    };
    let url_gets = |layer: &CraftedLayer| {
        urls.requests()
            .iter()
            .filter(|r| r.path == format!("/layers/{}", layer.digest()))
            .count()
    };
    let busybox = CraftedLayer::new(&busybox_layer()?, LayerFormat::Gzip)?;

    // OCI: a non-distributable zstd layer the registry does not hold.
    let mut oci = CraftedLayer::new(&file_tar("foreign.txt", b"oci\n")?, LayerFormat::Zstd)?;
    oci.media_type = OCI_NONDIST_ZSTD.into();
    oci.urls = vec![url_of(&oci.digest())];
    serve_at_url(&oci, oci.data.clone());
    let image = CraftedImage::new(&[busybox.clone(), oci.clone()]);
    let reference = publish(&client, &front, "formats/nondist", &image, &[oci.digest()]).await?;
    env.pull(&reference).await?;
    ensure!(
        url_gets(&oci) == 1,
        "the layer was fetched {} times from its URL",
        url_gets(&oci)
    );
    let asked_registry = front
        .requests()
        .iter()
        .any(|r| r.path == format!("/v2/formats/nondist/blobs/{}", oci.digest()));
    ensure!(
        asked_registry,
        "the registry was not asked for the layer first"
    );
    let (pod, out) = cat_in(env, &reference, "nondist", "/foreign.txt").await?;
    ensure!(out == "oci\n", "/foreign.txt holds {out:?}");
    remove_pod(env, &pod).await?;

    // Docker: a foreign gzip layer in a schema 2 manifest; a URL that is
    // not http(s) is skipped for the next.
    let mut docker_layer =
        CraftedLayer::new(&file_tar("foreign.txt", b"docker\n")?, LayerFormat::Gzip)?;
    docker_layer.media_type = DOCKER_FOREIGN_GZIP.into();
    docker_layer.urls = vec![
        "ftp://example.invalid/not-this-one".into(),
        url_of(&docker_layer.digest()),
    ];
    serve_at_url(&docker_layer, docker_layer.data.clone());
    let mut docker_base = busybox.clone();
    docker_base.media_type = DOCKER_LAYER_GZIP.into();
    let mut docker = CraftedImage::new(&[docker_base, docker_layer.clone()]);
    docker.manifest_type = DOCKER_MANIFEST.into();
    docker.manifest["mediaType"] = json!(DOCKER_MANIFEST);
    docker.manifest["config"]["mediaType"] = json!(DOCKER_CONFIG);
    let reference = publish(
        &client,
        &front,
        "formats/foreign",
        &docker,
        &[docker_layer.digest()],
    )
    .await?;
    env.pull(&reference).await?;
    let (pod, out) = cat_in(env, &reference, "foreign", "/foreign.txt").await?;
    ensure!(out == "docker\n", "/foreign.txt holds {out:?}");
    remove_pod(env, &pod).await?;

    // A non-distributable layer the registry does hold comes from the registry.
    let mut held = CraftedLayer::new(&file_tar("held.txt", b"held\n")?, LayerFormat::Gzip)?;
    held.media_type = OCI_NONDIST_GZIP.into();
    held.urls = vec![url_of(&held.digest())];
    let image = CraftedImage::new(&[busybox.clone(), held.clone()]);
    let reference = publish(&client, &front, "formats/held", &image, &[]).await?;
    env.pull(&reference).await?;
    ensure!(
        url_gets(&held) == 0,
        "the URL was asked for a layer the registry has"
    );

    // A URL that serves other bytes (same size) is caught by the digest.
    let mut bad = CraftedLayer::new(&file_tar("bad.txt", b"good\n")?, LayerFormat::Tar)?;
    bad.media_type = "application/vnd.oci.image.layer.nondistributable.v1.tar".into();
    bad.urls = vec![url_of(&bad.digest())];
    let mut forged = bad.data.clone();
    let at = forged
        .windows(5)
        .position(|w| w == b"good\n")
        .context("content not in the tar")?;
    forged[at] = b'f';
    serve_at_url(&bad, forged);
    let image = CraftedImage::new(&[busybox.clone(), bad.clone()]);
    let reference = publish(&client, &front, "formats/bad-url", &image, &[bad.digest()]).await?;
    expect_pull_refused(
        env,
        &reference,
        Code::InvalidArgument,
        &["does not match its digest", &bad.digest()],
        "URL serving other bytes",
    )
    .await?;

    // URLs that are not http(s) are never used.
    let mut local = CraftedLayer::new(&file_tar("x", b"x")?, LayerFormat::Gzip)?;
    local.media_type = OCI_NONDIST_GZIP.into();
    local.urls = vec![
        "file:///etc/passwd".into(),
        "gopher://example.invalid/x".into(),
    ];
    let image = CraftedImage::new(&[busybox.clone(), local.clone()]);
    let reference = publish(
        &client,
        &front,
        "formats/file-url",
        &image,
        &[local.digest()],
    )
    .await?;
    expect_pull_refused(
        env,
        &reference,
        Code::NotFound,
        &[
            "\"file\" is not http or https",
            "\"gopher\"",
            &local.digest(),
        ],
        "URLs that are not http(s)",
    )
    .await?;
    Ok(())
}

#[test]
fn platform_is_chosen_by_os_architecture_and_variant() {
    run(
        "platform_is_chosen_by_os_architecture_and_variant",
        platforms,
    );
}

async fn platforms(env: &mut TestEnv) -> Result<()> {
    let front = FakeRegistry::start(Some(env.images.registry.clone())).await?;
    let node = Platform::node().architecture;
    let native = env.images.busybox.image.manifest.clone();
    let absent = |n: u8| sha256_digest(&[n]);
    let entry = |digest: &str, size: usize, platform: serde_json::Value| json!({"mediaType": native.media_type, "digest": digest, "size": size, "platform": platform});
    let index = json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [
            entry(&absent(1), 100, json!({"os": "windows", "architecture": node, "os.version": "10.0.20348.2227"})),
            entry(&absent(2), 100, json!({"os": "linux", "architecture": "arm", "variant": "v7"})),
            entry(&absent(3), 100, json!({"os": "linux", "architecture": "s390x"})),
            entry(&native.digest, native.data.len(), json!({"os": "linux", "architecture": node, "os.version": "6.1", "os.features": ["ignored"]})),
        ],
    });
    front.route(
        "GET",
        "/v2/busybox/manifests/multi",
        Reply::ok(OCI_INDEX, index.to_string()),
    );
    let reference = format!("{}/busybox:multi", front.host());
    let id = env.pull(&reference).await?;
    ensure!(
        id == env.images.busybox.config_digest,
        "the index resolved to {id}"
    );
    let asked: Vec<String> = front
        .requests()
        .into_iter()
        .map(|r| r.path)
        .filter(|p| p.contains("/manifests/sha256:"))
        .collect();
    ensure!(
        asked == [format!("/v2/busybox/manifests/{}", native.digest)],
        "manifests fetched by digest: {asked:?}"
    );

    let foreign = Platform::foreign().architecture;
    let none = json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [
            entry(&absent(4), 100, json!({"os": "linux", "architecture": foreign, "variant": "v8"})),
            entry(&absent(5), 100, json!({"os": "linux", "architecture": "s390x"})),
            entry(&absent(6), 100, json!({"os": "windows", "architecture": node})),
        ],
    });
    front.route(
        "GET",
        "/v2/busybox/manifests/none",
        Reply::ok(OCI_INDEX, none.to_string()),
    );
    let listed = format!("linux/{foreign}/v8, linux/s390x, windows/{node}");
    expect_pull_refused(
        env,
        &format!("{}/busybox:none", front.host()),
        Code::NotFound,
        &["has no manifest for linux/", &listed],
        "index without the node's platform",
    )
    .await?;
    Ok(())
}

#[test]
fn concurrent_pulls_share_downloads() {
    run("concurrent_pulls_share_downloads", sharing);
}

async fn sharing(env: &mut TestEnv) -> Result<()> {
    let fake = FakeRegistry::start(None).await?;
    let layer = |name: &str, seed: u8| -> Result<CraftedLayer> {
        let content: Vec<u8> = (0..(1usize << 20))
            .map(|i| (i as u8).wrapping_mul(seed).wrapping_add(seed))
            .collect();
        CraftedLayer::new(&file_tar(name, &content)?, LayerFormat::Gzip)
    };
    let shared = layer("shared", 3)?;
    let shared2 = layer("shared2", 5)?;
    let images = [
        (
            "sharing/a",
            CraftedImage::new(&[shared.clone(), layer("a", 7)?]),
        ),
        (
            "sharing/b",
            CraftedImage::new(&[shared.clone(), layer("b", 11)?]),
        ),
        (
            "sharing/c",
            CraftedImage::new(&[shared2.clone(), layer("c", 13)?]),
        ),
        (
            "sharing/d",
            CraftedImage::new(&[shared2.clone(), layer("d", 17)?]),
        ),
    ];
    for (repo, image) in &images {
        image.serve(&fake, repo, "1");
        // Slow blobs keep concurrent pulls in flight together.
        for (digest, data) in &image.blobs {
            fake.route(
                "GET",
                &format!("/v2/{repo}/blobs/{digest}"),
                Reply {
                    delay: Duration::from_millis(400),
                    ..Reply::ok("application/octet-stream", data.clone())
                },
            );
        }
    }
    let host = fake.host();
    let reference = |repo: &str| format!("{host}/{repo}:1");
    let gets = |digest: &str| {
        fake.requests()
            .iter()
            .filter(|r| r.method == "GET" && r.path.ends_with(&format!("/blobs/{digest}")))
            .count()
    };

    // The same image twice at once: every blob is fetched once.
    let a = reference("sharing/a");
    let (a1, a2) = tokio::join!(env.cri.pull_image(&a), env.cri.pull_image(&a));
    let (a1, a2) = (a1?, a2?);
    ensure!(a1 == a2, "the two pulls gave {a1} and {a2}");
    for digest in images[0].1.blobs.keys() {
        let n = gets(digest);
        ensure!(n == 1, "blob {digest} of sharing/a was fetched {n} times");
    }

    // Another image on the same base layer does not fetch it again.
    env.pull(&reference("sharing/b")).await?;
    ensure!(
        gets(&shared.digest()) == 1,
        "the shared layer was fetched again for sharing/b"
    );
    for digest in images[1].1.blobs.keys().filter(|d| **d != shared.digest()) {
        ensure!(gets(digest) == 1, "blob {digest} of sharing/b");
    }

    // Two images sharing a layer, pulled at once: the layer is fetched once.
    let (c, d) = (reference("sharing/c"), reference("sharing/d"));
    let (c, d) = tokio::join!(env.cri.pull_image(&c), env.cri.pull_image(&d));
    c?;
    d?;
    let n = gets(&shared2.digest());
    ensure!(
        n == 1,
        "the layer shared by sharing/c and sharing/d was fetched {n} times"
    );
    let listed = env.cri.list_images().await?;
    ensure!(listed.len() == 4, "{} images listed", listed.len());
    expect_clean_store(&env.daemon.paths().root, "after the shared pulls")
}
