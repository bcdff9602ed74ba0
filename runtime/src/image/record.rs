//! Image records and container leases: what the store remembers, one JSON
//! file per object, written atomically (`meta/images/<id hex>.json`,
//! `meta/leases/<container id>.json`).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::manifest::RunConfig;
use crate::fsutil;
use crate::{Error, Result};

/// A pulled image.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Image {
    /// `sha256:<hex>` of the image config.
    pub id: String,
    /// Normalized tag references: `docker.io/library/busybox:latest`.
    pub repo_tags: Vec<String>,
    /// Digest references: `docker.io/library/busybox@sha256:<manifest digest>`,
    /// the digest being that of the manifest (or index) the pull resolved.
    pub repo_digests: Vec<String>,
    /// Compressed layer sizes plus the config size, in bytes.
    pub size: u64,
    /// The runtime defaults from the image config.
    pub config: ImageConfig,
    /// The layers, bottom first.
    pub layers: Vec<ImageLayer>,
    /// `sha256:<hex>` of each platform-specific image manifest this image
    /// was pulled through (differently compressed copies in different
    /// repositories have different manifests but the same config).
    pub manifest_digests: Vec<String>,
    /// When the image was last pulled, in nanoseconds since the epoch.
    pub pulled_at: i64,
}

/// One layer of an image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageLayer {
    /// `sha256:<hex>` of the compressed blob.
    pub digest: String,
    /// Size of the compressed blob in bytes.
    pub size: u64,
    /// `sha256:<hex>` of the uncompressed tar.
    pub diff_id: String,
    /// Chain id: names this layer with everything below it; keys its snapshot.
    pub chain_id: String,
}

/// The image config's runtime defaults (its `config` section).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ImageConfig {
    /// Default user (`User`), e.g. `1000:1000` or `nobody`.
    pub user: String,
    /// Default environment (`Env`), `NAME=value` each.
    pub env: Vec<String>,
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `WorkingDir`.
    pub working_dir: String,
    /// `StopSignal`, e.g. `SIGTERM`; empty when unset.
    pub stop_signal: String,
    /// `Labels`.
    pub labels: BTreeMap<String, String>,
    /// Mount points of `Volumes`, sorted.
    pub volumes: Vec<String>,
    /// `ExposedPorts`, e.g. `80/tcp`, sorted.
    pub exposed_ports: Vec<String>,
    /// The config JSON as pulled, for verbose ImageStatus.
    pub raw: String,
}

impl ImageConfig {
    /// Builds the record's config from the parsed `config` section and the raw JSON.
    pub(crate) fn from_parts(run: Option<RunConfig>, raw: String) -> ImageConfig {
        let run = run.unwrap_or_default();
        let mut volumes: Vec<String> = run.volumes.unwrap_or_default().into_keys().collect();
        volumes.sort();
        let mut exposed_ports: Vec<String> =
            run.exposed_ports.unwrap_or_default().into_keys().collect();
        exposed_ports.sort();
        ImageConfig {
            user: run.user.unwrap_or_default(),
            env: run.env.unwrap_or_default(),
            entrypoint: run.entrypoint.unwrap_or_default(),
            cmd: run.cmd.unwrap_or_default(),
            working_dir: run.working_dir.unwrap_or_default(),
            stop_signal: run.stop_signal.unwrap_or_default(),
            labels: run.labels.unwrap_or_default(),
            volumes,
            exposed_ports,
            raw,
        }
    }
}

impl Image {
    /// Whether the image still has a name; an image without any is deleted.
    pub(crate) fn is_named(&self) -> bool {
        !self.repo_tags.is_empty() || !self.repo_digests.is_empty()
    }

    /// Every blob the image needs kept: manifests, config, layers.
    pub(crate) fn blobs(&self) -> impl Iterator<Item = &str> {
        let top = self
            .repo_digests
            .iter()
            .filter_map(|r| r.rsplit_once('@').map(|(_, d)| d));
        std::iter::once(self.id.as_str())
            .chain(self.manifest_digests.iter().map(String::as_str))
            .chain(top)
            .chain(self.layers.iter().map(|l| l.digest.as_str()))
    }
}

/// What a container holds: the snapshots of the image it was created from.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Lease {
    /// The image the container was created from (for people reading the file).
    pub(crate) image_id: String,
    /// Chain ids of the snapshots held.
    pub(crate) chain_ids: Vec<String>,
}

/// The files of image records and leases.
#[derive(Debug)]
pub(crate) struct MetaFiles {
    images: PathBuf,
    leases: PathBuf,
}

impl MetaFiles {
    /// Opens (creating) `meta/images` and `meta/leases` under `meta`.
    pub(crate) fn open(meta: &Path) -> Result<MetaFiles> {
        let images = meta.join("images");
        let leases = meta.join("leases");
        for d in [&images, &leases] {
            fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        Ok(MetaFiles { images, leases })
    }

    /// Loads every image record; unreadable ones are logged and skipped.
    pub(crate) fn load_images(&self) -> Result<Vec<Image>> {
        load_all(&self.images)
    }

    /// Loads every lease, keyed by container id.
    pub(crate) fn load_leases(&self) -> Result<Vec<(String, Lease)>> {
        let mut out = Vec::new();
        for (name, lease) in load_named::<Lease>(&self.leases)? {
            out.push((name, lease));
        }
        Ok(out)
    }

    /// Writes an image record.
    pub(crate) fn save_image(&self, image: &Image) -> Result<()> {
        let hex = super::digest::hex_of(&image.id, "image id")?;
        let data = serde_json::to_vec_pretty(image).context("encoding an image record")?;
        Ok(fsutil::write_atomic(
            &self.images.join(format!("{hex}.json")),
            &data,
        )?)
    }

    /// Deletes an image record.
    pub(crate) fn delete_image(&self, id: &str) -> Result<()> {
        let hex = super::digest::hex_of(id, "image id")?;
        fsutil::remove_file_if_exists(&self.images.join(format!("{hex}.json")))?;
        Ok(fsutil::sync_dir(&self.images)?)
    }

    /// Writes a lease.
    pub(crate) fn save_lease(&self, container_id: &str, lease: &Lease) -> Result<()> {
        let data = serde_json::to_vec_pretty(lease).context("encoding a lease")?;
        Ok(fsutil::write_atomic(
            &self.lease_path(container_id)?,
            &data,
        )?)
    }

    /// Deletes a lease.
    pub(crate) fn delete_lease(&self, container_id: &str) -> Result<()> {
        fsutil::remove_file_if_exists(&self.lease_path(container_id)?)?;
        Ok(fsutil::sync_dir(&self.leases)?)
    }

    fn lease_path(&self, container_id: &str) -> Result<PathBuf> {
        check_container_id(container_id)?;
        Ok(self.leases.join(format!("{container_id}.json")))
    }
}

/// A container id must be usable as a file name.
fn check_container_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "container id {id:?} must be 1 to 128 letters, digits, '-', '_' or '.'"
        )))
    }
}

fn load_all<T: for<'de> Deserialize<'de>>(dir: &Path) -> Result<Vec<T>> {
    Ok(load_named(dir)?.into_iter().map(|(_, v)| v).collect())
}

/// Loads `<name>.json` files; removes temp files a crash left behind.
fn load_named<T: for<'de> Deserialize<'de>>(dir: &Path) -> Result<Vec<(String, T)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            fsutil::remove_file_if_exists(&path)?;
            continue;
        }
        let Some(stem) = name.strip_suffix(".json") else {
            continue;
        };
        let parsed = fs::read(&path)
            .map_err(anyhow::Error::from)
            .and_then(|data| Ok(serde_json::from_slice::<T>(&data)?));
        match parsed {
            Ok(v) => out.push((stem.to_string(), v)),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable record")
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids() {
        assert!(check_container_id(&"a".repeat(64)).is_ok());
        for bad in ["", "../x", "a/b", ".hidden", "x y"] {
            assert!(check_container_id(bad).is_err(), "{bad}");
        }
    }
}
