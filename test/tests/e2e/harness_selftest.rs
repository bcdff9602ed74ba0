//! Checks of the harness itself that need no crustd: the registry starts, the
//! test images push, and what comes back from the registry is what was built.

use std::io::Read;

use anyhow::{Context, Result, ensure};
use crust_e2e::TestImages;
use crust_e2e::image_builder::{OCI_INDEX, Platform, sha256_digest};
use crust_e2e::registry::{Registry, RegistryClient};
use crust_e2e::requirements;
use serde_json::Value;

/// Runs `check` on a private runtime after preparing the shared images, or
/// notes why it is skipped.
fn with_images(
    name: &str,
    check: impl AsyncFnOnce(&'static TestImages, RegistryClient) -> Result<()>,
) {
    if let Some(reason) = requirements::skip_reason() {
        requirements::note_skip(name, &reason);
        return;
    }
    let images = TestImages::shared().expect("preparing test images");
    let client =
        RegistryClient::new(&Registry::shared().expect("registry").addr).expect("registry client");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime
        .block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(60), check(images, client))
                .await
                .context("timed out")?
        })
        .unwrap_or_else(|e| panic!("{name}: {e:?}"));
}

fn layer_paths(gzip: bool, data: &[u8]) -> Result<Vec<(String, tar::EntryType)>> {
    let mut tar_bytes = Vec::new();
    if gzip {
        flate2::read::GzDecoder::new(data).read_to_end(&mut tar_bytes)?;
    } else {
        tar_bytes = data.to_vec();
    }
    let mut archive = tar::Archive::new(&tar_bytes[..]);
    let mut paths = Vec::new();
    for entry in archive.entries()? {
        let entry = entry?;
        paths.push((
            entry.path()?.to_string_lossy().into_owned(),
            entry.header().entry_type(),
        ));
    }
    Ok(paths)
}

#[test]
fn registry_serves_pushed_busybox() {
    with_images("registry_serves_pushed_busybox", async |images, client| {
        let fetched = client.get_manifest("busybox", "1.0").await?;
        ensure!(
            fetched.digest == images.busybox.digest,
            "digest {} != {}",
            fetched.digest,
            images.busybox.digest
        );
        ensure!(
            fetched.data == images.busybox.image.manifest.data,
            "manifest bytes differ"
        );
        ensure!(
            fetched
                .media_type
                .starts_with("application/vnd.docker.distribution.manifest.v2+json")
        );
        ensure!(sha256_digest(&fetched.data) == fetched.digest);

        let manifest: Value = serde_json::from_slice(&fetched.data)?;
        let config_digest = manifest["config"]["digest"]
            .as_str()
            .context("config digest")?;
        let config: Value =
            serde_json::from_slice(&client.get_blob("busybox", config_digest).await?)?;
        ensure!(config["architecture"] == Platform::node().architecture.as_str());
        ensure!(config["os"] == "linux");
        ensure!(config["config"]["Cmd"] == serde_json::json!(["sh"]));
        ensure!(
            config["config"]["Env"][0]
                .as_str()
                .is_some_and(|e| e.starts_with("PATH="))
        );

        let layer_digest = manifest["layers"][0]["digest"]
            .as_str()
            .context("layer digest")?;
        let layer = client.get_blob("busybox", layer_digest).await?;
        ensure!(
            sha256_digest(&layer) == layer_digest,
            "layer digest mismatch"
        );
        let mut tar_bytes = Vec::new();
        flate2::read::GzDecoder::new(&layer[..]).read_to_end(&mut tar_bytes)?;
        ensure!(
            config["rootfs"]["diff_ids"][0] == sha256_digest(&tar_bytes).as_str(),
            "diff_id mismatch"
        );
        let paths = layer_paths(true, &layer)?;
        for wanted in [
            "bin/busybox",
            "bin/sh",
            "bin/sleep",
            "etc/passwd",
            "etc/group",
            "tmp",
        ] {
            ensure!(
                paths.iter().any(|(p, _)| p == wanted),
                "busybox layer lacks {wanted}"
            );
        }
        ensure!(
            paths
                .iter()
                .any(|(p, t)| p == "bin/sh" && *t == tar::EntryType::Symlink)
        );

        let latest = client.get_manifest("busybox", "latest").await?;
        ensure!(latest.digest == images.busybox.digest);
        ensure!(client.manifest_status("busybox", "does-not-exist").await? == 404);
        ensure!(client.manifest_status("no-such-image", "1.0").await? == 404);
        Ok(())
    });
}

#[test]
fn registry_serves_layered_image_with_whiteouts() {
    with_images(
        "registry_serves_layered_image_with_whiteouts",
        async |images, client| {
            let fetched = client.get_manifest("layered", "1.0").await?;
            ensure!(fetched.digest == images.layered.digest);
            let manifest: Value = serde_json::from_slice(&fetched.data)?;
            ensure!(manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json");
            let layers = manifest["layers"].as_array().context("layers")?;
            ensure!(layers.len() == 3, "layered has {} layers", layers.len());
            ensure!(layers[1]["mediaType"] == "application/vnd.oci.image.layer.v1.tar");
            let second = client
                .get_blob("layered", layers[1]["digest"].as_str().unwrap_or_default())
                .await?;
            let paths = layer_paths(false, &second)?;
            ensure!(
                paths.iter().any(|(p, _)| p == "etc/.wh.group"),
                "no whiteout in {paths:?}"
            );
            ensure!(paths.iter().any(|(p, _)| p == "data/new.txt"));
            let third = client
                .get_blob("layered", layers[2]["digest"].as_str().unwrap_or_default())
                .await?;
            let paths = layer_paths(true, &third)?;
            ensure!(
                paths.iter().any(|(p, _)| p == "data/old/.wh..wh..opq"),
                "no opaque marker in {paths:?}"
            );
            let config: Value = serde_json::from_slice(
                &client
                    .get_blob("layered", &images.layered.config_digest)
                    .await?,
            )?;
            ensure!(config["config"]["WorkingDir"] == "/data");
            ensure!(config["config"]["Cmd"] == serde_json::json!(["sleep", "3600"]));
            ensure!(config["rootfs"]["diff_ids"].as_array().map(Vec::len) == Some(3));
            Ok(())
        },
    );
}

#[test]
fn registry_serves_multi_arch_index() {
    with_images(
        "registry_serves_multi_arch_index",
        async |images, client| {
            let fetched = client.get_manifest("busybox-multi", "1.0").await?;
            ensure!(fetched.digest == images.multi_arch.digest);
            ensure!(
                fetched.media_type.starts_with(OCI_INDEX),
                "index served as {}",
                fetched.media_type
            );
            let index: Value = serde_json::from_slice(&fetched.data)?;
            let entries = index["manifests"].as_array().context("manifests")?;
            ensure!(entries.len() == 2);
            ensure!(
                entries[0]["platform"]["architecture"] == Platform::foreign().architecture.as_str()
            );
            ensure!(entries[0]["digest"] == images.multi_arch_foreign_digest.as_str());
            ensure!(
                entries[1]["platform"]["architecture"] == Platform::node().architecture.as_str()
            );
            ensure!(entries[1]["digest"] == images.multi_arch.image.manifest.digest.as_str());
            for entry in entries {
                let digest = entry["digest"].as_str().unwrap_or_default();
                let by_digest = client.get_manifest("busybox-multi", digest).await?;
                ensure!(by_digest.digest == digest);
            }
            Ok(())
        },
    );
}
