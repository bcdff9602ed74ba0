//! Building OCI and Docker schema 2 images in memory: tar layers (gzip or
//! plain), image configs, manifests and OCI indexes, each as a digest-named blob.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::Result;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Docker schema 2 manifest media type.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker image config media type.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker gzip layer media type.
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Docker uncompressed layer media type.
pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
/// OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index media type.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config media type.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI gzip layer media type.
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// OCI uncompressed layer media type.
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// Modification time stamped on every tar entry, so images are reproducible.
const MTIME: u64 = 1_700_000_000;
/// The `created` time of images built without an [`ImageMeta`] (= [`MTIME`]).
const CREATED: &str = "2023-11-14T22:13:20Z";

/// Returns `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Content-addressed bytes with a media type: a layer, config, manifest or index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    /// Media type, as used in descriptors and the manifest Content-Type.
    pub media_type: String,
    /// `sha256:<hex>` of `data`.
    pub digest: String,
    /// The bytes.
    pub data: Vec<u8>,
}

impl Blob {
    /// Wraps `data`, computing its digest.
    pub fn new(media_type: &str, data: Vec<u8>) -> Self {
        Self {
            media_type: media_type.to_string(),
            digest: sha256_digest(&data),
            data,
        }
    }

    /// The OCI descriptor (`mediaType`, `size`, `digest`) of this blob.
    pub fn descriptor(&self) -> Value {
        json!({ "mediaType": self.media_type, "size": self.data.len(), "digest": self.digest })
    }
}

/// Writes a layer tarball entry by entry (owner root, fixed mtime).
pub struct LayerBuilder {
    tar: tar::Builder<Vec<u8>>,
    mtime: u64,
}

impl Default for LayerBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl LayerBuilder {
    /// Starts an empty layer.
    pub fn new() -> Self {
        Self::with_mtime(MTIME)
    }

    /// Starts an empty layer whose entries all carry modification time
    /// `mtime` (seconds since the epoch).
    pub fn with_mtime(mtime: u64) -> Self {
        Self {
            tar: tar::Builder::new(Vec::new()),
            mtime,
        }
    }

    /// Adds a directory `path` (relative, e.g. `tmp`) with permission bits `mode`.
    pub fn dir(&mut self, path: &str, mode: u32) -> Result<&mut Self> {
        let mut header = header(tar::EntryType::Directory, mode, 0, self.mtime);
        self.tar.append_data(&mut header, path, std::io::empty())?;
        Ok(self)
    }

    /// Adds a regular file `path` holding `contents`.
    pub fn file(&mut self, path: &str, mode: u32, contents: &[u8]) -> Result<&mut Self> {
        let mut header = header(
            tar::EntryType::Regular,
            mode,
            contents.len() as u64,
            self.mtime,
        );
        self.tar.append_data(&mut header, path, contents)?;
        Ok(self)
    }

    /// Adds a symbolic link `path` pointing to `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> Result<&mut Self> {
        let mut header = header(tar::EntryType::Symlink, 0o777, 0, self.mtime);
        self.tar.append_link(&mut header, path, target)?;
        Ok(self)
    }

    /// Adds a hard link `path` to the file `target` (an earlier entry's path).
    pub fn hardlink(&mut self, path: &str, target: &str) -> Result<&mut Self> {
        let mut header = header(tar::EntryType::Link, 0o755, 0, self.mtime);
        self.tar.append_link(&mut header, path, target)?;
        Ok(self)
    }

    /// Adds the whiteout that deletes `path` (`dir/.wh.name`) from lower layers.
    pub fn whiteout(&mut self, path: &str) -> Result<&mut Self> {
        let (parent, name) = path.rsplit_once('/').map_or(("", path), |(p, n)| (p, n));
        let entry = if parent.is_empty() {
            format!(".wh.{name}")
        } else {
            format!("{parent}/.wh.{name}")
        };
        self.file(&entry, 0o644, b"")
    }

    /// Adds the opaque marker (`dir/.wh..wh..opq`) that hides the lower layers'
    /// contents of directory `dir`.
    pub fn opaque(&mut self, dir: &str) -> Result<&mut Self> {
        self.file(&format!("{dir}/.wh..wh..opq"), 0o644, b"")
    }

    /// Finishes the tarball and returns its bytes.
    pub fn finish(self) -> Result<Vec<u8>> {
        Ok(self.tar.into_inner()?)
    }
}

fn header(kind: tar::EntryType, mode: u32, size: u64, mtime: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(size);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(mtime);
    header
}

/// How a layer blob is stored in the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// `tar+gzip`.
    Gzip,
    /// A plain tar.
    None,
}

/// A layer ready to push: the blob bytes and the digest of the uncompressed tar.
#[derive(Debug, Clone)]
pub struct Layer {
    /// The bytes as stored in the registry (compressed or not).
    pub data: Vec<u8>,
    /// How `data` is compressed.
    pub compression: Compression,
    /// `sha256` of the uncompressed tar (the config's `rootfs.diff_ids` entry).
    pub diff_id: String,
}

impl Layer {
    /// Makes a layer from an uncompressed tarball (gzip at the fastest level).
    pub fn new(tar: Vec<u8>, compression: Compression) -> Result<Self> {
        match compression {
            Compression::None => Ok(Self {
                diff_id: sha256_digest(&tar),
                data: tar,
                compression,
            }),
            Compression::Gzip => Self::gzip(tar, flate2::Compression::fast()),
        }
    }

    /// Makes a gzip layer from an uncompressed tarball at compression
    /// `level`. The gzip header has no name and mtime 0, so the same tar
    /// always gives the same blob.
    pub fn gzip(tar: Vec<u8>, level: flate2::Compression) -> Result<Self> {
        let diff_id = sha256_digest(&tar);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), level);
        gz.write_all(&tar)?;
        Ok(Self {
            data: gz.finish()?,
            compression: Compression::Gzip,
            diff_id,
        })
    }
}

/// Manifest flavour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestFormat {
    /// Docker image manifest v2, schema 2.
    Docker,
    /// OCI image manifest v1.
    Oci,
}

/// An OS/architecture pair, in GOOS/GOARCH spelling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// e.g. `linux`.
    pub os: String,
    /// e.g. `amd64`, `arm64`.
    pub architecture: String,
}

impl Platform {
    /// The platform of the machine the tests run on.
    pub fn node() -> Self {
        Self::linux(goarch(std::env::consts::ARCH))
    }

    /// A platform this machine is not: `arm64`, or `amd64` on an arm64 node.
    pub fn foreign() -> Self {
        if Self::node().architecture == "arm64" {
            Self::linux("amd64")
        } else {
            Self::linux("arm64")
        }
    }

    fn linux(architecture: &str) -> Self {
        Self {
            os: "linux".into(),
            architecture: architecture.into(),
        }
    }
}

/// Maps a Rust target architecture to its GOARCH name.
fn goarch(rust_arch: &str) -> &str {
    match rust_arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    }
}

/// The runtime part of an image config (`config` in the JSON).
#[derive(Debug, Clone, Default)]
pub struct RunConfig {
    /// `Env`: `KEY=value` entries.
    pub env: Vec<String>,
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `WorkingDir`, if any.
    pub working_dir: Option<String>,
    /// `User` (`uid`, `name`, `uid:gid`, `name:group`), if any.
    pub user: Option<String>,
    /// `StopSignal` (e.g. `SIGQUIT`), if any.
    pub stop_signal: Option<String>,
    /// `Labels`.
    pub labels: BTreeMap<String, String>,
}

/// What an image says about its making: the config's `created` time and
/// `history` entries, and the manifest's annotations.
#[derive(Debug, Clone)]
pub struct ImageMeta {
    /// The config's `created` (and each history entry's), RFC 3339.
    pub created: String,
    /// Each history entry's `created_by`.
    pub created_by: String,
    /// The manifest's `annotations` (none when empty).
    pub annotations: BTreeMap<String, String>,
}

impl Default for ImageMeta {
    fn default() -> Self {
        Self {
            created: CREATED.into(),
            created_by: "crust-e2e image builder".into(),
            annotations: BTreeMap::new(),
        }
    }
}

/// A built image: manifest, config and layer blobs.
#[derive(Debug, Clone)]
pub struct Image {
    /// The manifest blob (its digest is the image's manifest digest).
    pub manifest: Blob,
    /// The config blob (its digest is what runtimes call the image id).
    pub config: Blob,
    /// Layer blobs, bottom first.
    pub layers: Vec<Blob>,
    /// The image's platform.
    pub platform: Platform,
}

/// Assembles an image of `layers` (bottom first) with the given config.
pub fn build_image(
    format: ManifestFormat,
    platform: Platform,
    run: &RunConfig,
    layers: &[Layer],
) -> Image {
    build_image_with(format, platform, run, layers, &ImageMeta::default())
}

/// Assembles an image of `layers` (bottom first) with the given config,
/// creation time, history and manifest annotations.
pub fn build_image_with(
    format: ManifestFormat,
    platform: Platform,
    run: &RunConfig,
    layers: &[Layer],
    meta: &ImageMeta,
) -> Image {
    let mut config = serde_json::Map::new();
    if !run.env.is_empty() {
        config.insert("Env".into(), json!(run.env));
    }
    if !run.entrypoint.is_empty() {
        config.insert("Entrypoint".into(), json!(run.entrypoint));
    }
    if !run.cmd.is_empty() {
        config.insert("Cmd".into(), json!(run.cmd));
    }
    if let Some(dir) = &run.working_dir {
        config.insert("WorkingDir".into(), json!(dir));
    }
    if let Some(user) = &run.user {
        config.insert("User".into(), json!(user));
    }
    if let Some(signal) = &run.stop_signal {
        config.insert("StopSignal".into(), json!(signal));
    }
    if !run.labels.is_empty() {
        config.insert("Labels".into(), json!(run.labels));
    }
    let history: Vec<Value> = layers
        .iter()
        .map(|_| json!({ "created": meta.created, "created_by": meta.created_by }))
        .collect();
    let config_json = json!({
        "architecture": platform.architecture,
        "os": platform.os,
        "created": meta.created,
        "config": config,
        "rootfs": { "type": "layers", "diff_ids": layers.iter().map(|l| &l.diff_id).collect::<Vec<_>>() },
        "history": history,
    });
    let (manifest_type, config_type) = match format {
        ManifestFormat::Docker => (DOCKER_MANIFEST, DOCKER_CONFIG),
        ManifestFormat::Oci => (OCI_MANIFEST, OCI_CONFIG),
    };
    let config = Blob::new(config_type, config_json.to_string().into_bytes());
    let layers: Vec<Blob> = layers
        .iter()
        .map(|l| Blob::new(layer_media_type(format, l.compression), l.data.clone()))
        .collect();
    let mut manifest_json = json!({
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": config.descriptor(),
        "layers": layers.iter().map(Blob::descriptor).collect::<Vec<_>>(),
    });
    if !meta.annotations.is_empty() {
        manifest_json["annotations"] = json!(meta.annotations);
    }
    Image {
        manifest: Blob::new(manifest_type, manifest_json.to_string().into_bytes()),
        config,
        layers,
        platform,
    }
}

fn layer_media_type(format: ManifestFormat, compression: Compression) -> &'static str {
    match (format, compression) {
        (ManifestFormat::Docker, Compression::Gzip) => DOCKER_LAYER_GZIP,
        (ManifestFormat::Docker, Compression::None) => DOCKER_LAYER_TAR,
        (ManifestFormat::Oci, Compression::Gzip) => OCI_LAYER_GZIP,
        (ManifestFormat::Oci, Compression::None) => OCI_LAYER_TAR,
    }
}

/// Builds an OCI image index listing `images` in the given order, each with its
/// platform.
pub fn build_index(images: &[&Image]) -> Blob {
    let manifests: Vec<Value> = images
        .iter()
        .map(|image| {
            let mut descriptor = image.manifest.descriptor();
            descriptor["platform"] =
                json!({ "architecture": image.platform.architecture, "os": image.platform.os });
            descriptor
        })
        .collect();
    let index = json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests });
    Blob::new(OCI_INDEX, index.to_string().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(tar: &[u8]) -> Vec<(String, tar::EntryType, u32)> {
        let mut archive = tar::Archive::new(tar);
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    h.entry_type(),
                    h.mode().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn layer_entries_and_whiteouts() {
        let mut b = LayerBuilder::new();
        b.dir("tmp", 0o1777).unwrap();
        b.file("data/x", 0o644, b"x").unwrap();
        b.symlink("bin/sh", "busybox").unwrap();
        b.whiteout("etc/group").unwrap();
        b.opaque("data/old").unwrap();
        let got = entries(&b.finish().unwrap());
        assert_eq!(got[0], ("tmp".into(), tar::EntryType::Directory, 0o1777));
        assert_eq!(got[1].0, "data/x");
        assert_eq!(got[2], ("bin/sh".into(), tar::EntryType::Symlink, 0o777));
        assert_eq!(got[3].0, "etc/.wh.group");
        assert_eq!(got[4].0, "data/old/.wh..wh..opq");
    }

    #[test]
    fn gzip_layer_keeps_uncompressed_diff_id() {
        let tar = LayerBuilder::new().finish().unwrap();
        let layer = Layer::new(tar.clone(), Compression::Gzip).unwrap();
        assert_eq!(layer.diff_id, sha256_digest(&tar));
        assert_ne!(layer.data, tar);
        let mut plain = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::GzDecoder::new(&layer.data[..]),
            &mut plain,
        )
        .unwrap();
        assert_eq!(plain, tar);
    }

    #[test]
    fn manifest_references_config_and_layers() {
        let layer = Layer::new(LayerBuilder::new().finish().unwrap(), Compression::None).unwrap();
        let run = RunConfig {
            cmd: vec!["sh".into()],
            ..RunConfig::default()
        };
        let image = build_image(
            ManifestFormat::Oci,
            Platform::node(),
            &run,
            std::slice::from_ref(&layer),
        );
        let manifest: Value = serde_json::from_slice(&image.manifest.data).unwrap();
        assert_eq!(manifest["config"]["digest"], image.config.digest);
        assert_eq!(manifest["layers"][0]["mediaType"], OCI_LAYER_TAR);
        let config: Value = serde_json::from_slice(&image.config.data).unwrap();
        assert_eq!(config["rootfs"]["diff_ids"][0], layer.diff_id);
        assert_eq!(config["config"]["Cmd"][0], "sh");
        let index: Value = serde_json::from_slice(&build_index(&[&image]).data).unwrap();
        assert_eq!(index["manifests"][0]["digest"], image.manifest.digest);
        assert_eq!(index["manifests"][0]["platform"]["os"], "linux");
    }
}
