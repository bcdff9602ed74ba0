//! Manifests, indexes and image configs as registries serve them, in both the
//! OCI and the Docker schema 2 dialects (their JSON shapes are the same).

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;

use crate::{Error, Result};

/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker manifest list.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker schema 2 image manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// Media types of the deprecated Docker schema 1 manifests (`v1+json`,
/// `v1+prettyjws`) start with this.
const DOCKER_SCHEMA1_PREFIX: &str = "application/vnd.docker.distribution.manifest.v1+";

/// The `Accept` header of manifest requests: every kind this store understands.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// Largest manifest or index this store reads; real ones are a few KiB.
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// Largest image config this store reads; real ones are a few KiB, rarely 1 MiB.
pub const MAX_CONFIG_BYTES: u64 = 8 << 20;
/// Most layers an image may have. Docker refuses to build more than 125,
/// and overlayfs's mount options (one `lowerdir=` path per layer) must fit
/// in a page, which holds about 130 of this store's snapshot paths.
pub const MAX_LAYERS: usize = 128;
/// Largest layer blob this store downloads. The biggest layers seen in the
/// wild (machine-learning images) are tens of GiB; a descriptor claiming
/// more than this is taken for a lie rather than a disk-filling download.
pub const MAX_LAYER_BYTES: u64 = 256 << 30;

/// How a layer blob is compressed, from its media type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerCompression {
    /// A plain tar.
    None,
    /// A gzip-compressed tar.
    Gzip,
    /// A zstd-compressed tar.
    Zstd,
}

/// Maps a layer media type to its compression; anything that is not a
/// container layer is [`Error::InvalidArgument`]. (The unpacker goes by the
/// blob's first bytes in the end, so a layer mislabelled gzip still works.)
pub fn layer_compression(media_type: &str) -> Result<LayerCompression> {
    match media_type {
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Ok(LayerCompression::Gzip),
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar"
        | "application/vnd.docker.image.rootfs.diff.tar"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar" => Ok(LayerCompression::None),
        "application/vnd.oci.image.layer.v1.tar+zstd"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => {
            Ok(LayerCompression::Zstd)
        }
        other => Err(Error::invalid(format!(
            "layer media type {other:?} is not a container image layer"
        ))),
    }
}

/// Whether a layer of this media type is non-distributable (OCI) or foreign
/// (Docker): registries may lack it, and its descriptor's `urls` say where
/// else it may be fetched.
pub fn is_non_distributable(media_type: &str) -> bool {
    media_type.starts_with("application/vnd.oci.image.layer.nondistributable.")
        || media_type.starts_with("application/vnd.docker.image.rootfs.foreign.")
}

/// A content descriptor: what a manifest says about a blob it points to.
#[derive(Clone, Debug, Deserialize)]
pub struct Descriptor {
    /// Media type of the blob.
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    /// `sha256:<hex>` of the blob.
    pub digest: String,
    /// Size of the blob in bytes.
    pub size: u64,
    /// Platform of an index entry.
    #[serde(default)]
    pub platform: Option<PlatformSpec>,
    /// Other places the blob may be fetched from (non-distributable layers).
    #[serde(default)]
    pub urls: Vec<String>,
}

/// The platform of an index entry. `os.version` and `os.features` (Windows
/// details) are not read: they play no part on linux.
#[derive(Clone, Debug, Deserialize)]
pub struct PlatformSpec {
    /// Operating system.
    #[serde(default)]
    pub os: String,
    /// CPU architecture.
    #[serde(default)]
    pub architecture: String,
    /// CPU variant.
    #[serde(default)]
    pub variant: Option<String>,
}

/// An image index or Docker manifest list.
#[derive(Clone, Debug, Deserialize)]
pub struct Index {
    /// The per-platform manifests.
    pub manifests: Vec<Descriptor>,
}

/// An image manifest: one config and the layers, bottom first.
#[derive(Clone, Debug, Deserialize)]
pub struct ImageManifest {
    /// The image config blob.
    pub config: Descriptor,
    /// The layer blobs, bottom layer first.
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

/// A parsed manifest of either kind.
#[derive(Clone, Debug)]
pub enum Manifest {
    /// A multi-platform index.
    Index(Index),
    /// A single-platform image manifest.
    Image(ImageManifest),
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "schemaVersion", default)]
    schema_version: Option<i64>,
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
    #[serde(default)]
    config: Option<serde_json::Value>,
}

/// Parses manifest bytes; `content_type` is the registry's `Content-Type`,
/// used when the JSON does not name its own media type.
pub fn parse_manifest(bytes: &[u8], content_type: Option<&str>, what: &str) -> Result<Manifest> {
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| Error::invalid(format!("{what}: manifest is not JSON: {e}")))?;
    let envelope: Envelope = serde_json::from_value(value).map_err(|e| {
        Error::invalid(format!(
            "{what}: manifest is JSON but not a manifest or index: {e}"
        ))
    })?;
    let header_type = content_type
        .map(|c| c.split(';').next().unwrap_or("").trim())
        .filter(|c| !c.is_empty() && *c != "application/json" && *c != "application/octet-stream");
    let schema1 = |t: &str| t.starts_with(DOCKER_SCHEMA1_PREFIX);
    if envelope.schema_version == Some(1)
        || envelope.media_type.as_deref().is_some_and(schema1)
        || header_type.is_some_and(schema1)
    {
        return Err(Error::Unimplemented(format!(
            "{what}: Docker schema 1 manifests are deprecated and not supported; push the image again with a current tool (it then gets a schema 2 or OCI manifest)"
        )));
    }
    let media_type = match (envelope.media_type.as_deref(), header_type) {
        (Some(t), _) if !t.is_empty() => t.to_string(),
        (_, Some(t)) => t.to_string(),
        _ if envelope.manifests.is_some() => OCI_INDEX.to_string(),
        _ if envelope.config.is_some() => OCI_MANIFEST.to_string(),
        _ => String::new(),
    };
    let parse_err =
        |e: serde_json::Error| Error::invalid(format!("{what}: malformed {media_type}: {e}"));
    match media_type.as_str() {
        OCI_INDEX | DOCKER_MANIFEST_LIST => Ok(Manifest::Index(
            serde_json::from_slice(bytes).map_err(parse_err)?,
        )),
        OCI_MANIFEST | DOCKER_MANIFEST => Ok(Manifest::Image(
            serde_json::from_slice(bytes).map_err(parse_err)?,
        )),
        "" => Err(Error::invalid(format!(
            "{what}: manifest names no media type"
        ))),
        other => Err(Error::invalid(format!(
            "{what}: manifest media type {other:?} is not an image manifest or index"
        ))),
    }
}

/// The parts of an image config this store uses.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ConfigFile {
    /// The runtime defaults of the image.
    #[serde(default)]
    pub config: Option<RunConfig>,
    /// The layer diff ids.
    pub rootfs: RootFs,
}

/// The `rootfs` section of an image config.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct RootFs {
    /// sha256 of each uncompressed layer tar, bottom first.
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

/// The `config` section of an image config (Docker's capitalized names).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    /// Default user.
    #[serde(default)]
    pub user: Option<String>,
    /// Default environment.
    #[serde(default)]
    pub env: Option<Vec<String>>,
    /// Default entrypoint.
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    /// Default arguments.
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    /// Default working directory.
    #[serde(default)]
    pub working_dir: Option<String>,
    /// Signal that stops the container.
    #[serde(default)]
    pub stop_signal: Option<String>,
    /// Image labels.
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    /// Volume mount points (keys only).
    #[serde(default)]
    pub volumes: Option<HashMap<String, serde_json::Value>>,
    /// Exposed ports (keys only).
    #[serde(default)]
    pub exposed_ports: Option<HashMap<String, serde_json::Value>>,
}

/// Parses an image config blob.
pub fn parse_config(bytes: &[u8], what: &str) -> Result<ConfigFile> {
    serde_json::from_slice(bytes)
        .map_err(|e| Error::invalid(format!("{what}: image config is not valid JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognizes_manifest_kinds() {
        let index = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;
        assert!(matches!(
            parse_manifest(index, None, "x"),
            Ok(Manifest::Index(_))
        ));
        let list = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert!(matches!(
            parse_manifest(list, Some(DOCKER_MANIFEST_LIST), "x"),
            Ok(Manifest::Index(_))
        ));
        let bare = br#"{"schemaVersion":2,"config":{"mediaType":"a","digest":"sha256:00","size":1},"layers":[]}"#;
        assert!(matches!(
            parse_manifest(bare, Some("application/json"), "x"),
            Ok(Manifest::Image(_))
        ));
        assert!(matches!(
            parse_manifest(b"<html>", None, "x"),
            Err(Error::InvalidArgument(_))
        ));
        let unknown =
            br#"{"schemaVersion":2,"mediaType":"application/vnd.cncf.helm.chart","config":{}}"#;
        assert!(matches!(
            parse_manifest(unknown, None, "x"),
            Err(Error::InvalidArgument(_))
        ));
        let v1 = br#"{"schemaVersion":1,"fsLayers":[]}"#;
        assert!(matches!(
            parse_manifest(v1, None, "x"),
            Err(Error::Unimplemented(m)) if m.contains("schema 1")
        ));
        let signed = br#"{"fsLayers":[],"signatures":[]}"#;
        assert!(matches!(
            parse_manifest(
                signed,
                Some("application/vnd.docker.distribution.manifest.v1+prettyjws"),
                "x"
            ),
            Err(Error::Unimplemented(_))
        ));
        assert!(matches!(
            parse_manifest(b"[1,2]", None, "x"),
            Err(Error::InvalidArgument(m)) if m.contains("not a manifest")
        ));
        assert!(matches!(
            parse_manifest(br#"{"schemaVersion":2}"#, None, "x"),
            Err(Error::InvalidArgument(m)) if m.contains("no media type")
        ));
    }

    #[test]
    fn layer_media_types() {
        assert_eq!(
            layer_compression("application/vnd.docker.image.rootfs.diff.tar.gzip").unwrap(),
            LayerCompression::Gzip
        );
        assert_eq!(
            layer_compression("application/vnd.oci.image.layer.v1.tar").unwrap(),
            LayerCompression::None
        );
        assert_eq!(
            layer_compression("application/vnd.oci.image.layer.v1.tar+zstd").unwrap(),
            LayerCompression::Zstd
        );
        assert_eq!(
            layer_compression("application/vnd.oci.image.layer.nondistributable.v1.tar+zstd")
                .unwrap(),
            LayerCompression::Zstd
        );
        assert!(is_non_distributable(
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        ));
        assert!(is_non_distributable(
            "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
        ));
        assert!(!is_non_distributable(
            "application/vnd.oci.image.layer.v1.tar+gzip"
        ));
        assert!(matches!(
            layer_compression("text/plain"),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn descriptors_keep_urls_and_ignore_windows_fields() {
        let index = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:00","size":1,
             "platform":{"os":"windows","architecture":"amd64","os.version":"10.0.17763.1","os.features":["win32k"]},
             "urls":["https://example.invalid/x"],"annotations":{"a":"b"}}]}"#;
        let Ok(Manifest::Index(index)) = parse_manifest(index, None, "x") else {
            panic!("not an index");
        };
        let d = &index.manifests[0];
        assert_eq!(d.urls, vec!["https://example.invalid/x"]);
        assert_eq!(d.platform.as_ref().unwrap().os, "windows");
    }

    #[test]
    fn config_with_nulls() {
        let c = parse_config(
            br#"{"config":{"Env":null,"Cmd":["sh"],"Volumes":{"/data":{}},"ExposedPorts":{"80/tcp":{}}},"rootfs":{"type":"layers","diff_ids":["sha256:aa"]}}"#,
            "x",
        )
        .unwrap();
        let rc = c.config.unwrap();
        assert_eq!(rc.cmd.unwrap(), vec!["sh"]);
        assert!(rc.env.is_none());
        assert_eq!(c.rootfs.diff_ids.len(), 1);
    }
}
