//! The floor of a cold PullImage: fetch the manifest, the config and every
//! layer over plain HTTP, check each digest, and unpack each layer (gunzip +
//! untar) into its own directory. No metadata, no locking, no snapshots.

use std::collections::HashSet;
use std::path::Path;

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use crate::image_builder::sha256_digest;
use crate::registry::RegistryClient;

/// Fetches `repository:tag` from the registry behind `client` and unpacks its
/// layers under `dest/<index>`, except the layers whose digests are in
/// `present` (already fetched and unpacked, as for an image sharing them).
pub async fn fetch_and_unpack(
    client: &RegistryClient,
    repository: &str,
    tag: &str,
    dest: &Path,
    present: &HashSet<String>,
) -> Result<()> {
    let manifest = client.get_manifest(repository, tag).await?;
    let parsed: Value = serde_json::from_slice(&manifest.data).context("parsing manifest")?;
    let config_digest = parsed["config"]["digest"]
        .as_str()
        .context("manifest has no config")?;
    fetch_checked(client, repository, config_digest).await?;
    let layers = parsed["layers"]
        .as_array()
        .context("manifest has no layers")?;
    for (i, layer) in layers.iter().enumerate() {
        let digest = layer["digest"].as_str().context("layer without digest")?;
        if present.contains(digest) {
            continue;
        }
        let media_type = layer["mediaType"].as_str().unwrap_or_default();
        let blob = fetch_checked(client, repository, digest).await?;
        let dir = dest.join(i.to_string());
        std::fs::create_dir_all(&dir)?;
        if media_type.ends_with("gzip") {
            tar::Archive::new(flate2::read::GzDecoder::new(&blob[..])).unpack(&dir)
        } else {
            tar::Archive::new(&blob[..]).unpack(&dir)
        }
        .with_context(|| format!("unpacking {digest}"))?;
    }
    Ok(())
}

async fn fetch_checked(client: &RegistryClient, repository: &str, digest: &str) -> Result<Vec<u8>> {
    let blob = client.get_blob(repository, digest).await?;
    ensure!(
        sha256_digest(&blob) == digest,
        "blob {digest} does not match its digest"
    );
    Ok(blob)
}
