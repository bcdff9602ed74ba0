//! Crafted images for hostile-input and format tests.
//!
//! - [`RawTar`] writes tar entries header by header, so names the `tar`
//!   crate refuses to write (`..`, absolute paths) survive as they are.
//! - [`CraftedLayer`] compresses a tar as gzip, zstd or not at all;
//!   [`CraftedImage`] wraps layers into an OCI image whose manifest, config
//!   and served blobs a test then edits freely, and serves it through a
//!   [`FakeRegistry`].
//! - [`store_leftovers`] and [`Canary`] check what a failed pull left behind:
//!   nothing half-written in crustd's image store, nothing touched outside;
//!   [`expect_pull_refused`] puts it together for one case.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};

use crate::TestEnv;
use crate::fake_registry::{FakeRegistry, Reply};
use crate::fixtures::IMAGE_PATH;
use crate::image_builder::{
    Blob, OCI_CONFIG, OCI_LAYER_GZIP, OCI_LAYER_TAR, OCI_MANIFEST, Platform,
};
use crate::registry::RegistryClient;
use crate::unique;

/// OCI zstd layer media type.
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// OCI non-distributable gzip layer media type.
pub const OCI_NONDIST_GZIP: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
/// OCI non-distributable zstd layer media type.
pub const OCI_NONDIST_ZSTD: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd";
/// Docker foreign gzip layer media type.
pub const DOCKER_FOREIGN_GZIP: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";

/// Modification time of every crafted entry.
const MTIME: u64 = 1_700_000_000;

/// A tar written entry by entry with the names exactly as given.
#[derive(Debug, Default)]
pub struct RawTar {
    out: Vec<u8>,
}

impl RawTar {
    /// Starts an empty tar.
    pub fn new() -> Self {
        Self::default()
    }

    fn header(name: &str, kind: tar::EntryType, size: u64, mode: u32) -> Result<tar::Header> {
        let mut header = tar::Header::new_gnu();
        let field = &mut header.as_old_mut().name;
        ensure!(
            name.len() <= field.len(),
            "tar name {name:?} is longer than {} bytes",
            field.len()
        );
        field.fill(0);
        field[..name.len()].copy_from_slice(name.as_bytes());
        header.set_entry_type(kind);
        header.set_size(size);
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(MTIME);
        Ok(header)
    }

    fn push(&mut self, mut header: tar::Header, data: &[u8]) -> &mut Self {
        header.set_cksum();
        self.out.extend_from_slice(header.as_bytes());
        self.out.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.out.extend(std::iter::repeat_n(0u8, pad));
        self
    }

    /// A directory entry.
    pub fn dir(&mut self, name: &str, mode: u32) -> Result<&mut Self> {
        let h = Self::header(name, tar::EntryType::Directory, 0, mode)?;
        Ok(self.push(h, b""))
    }

    /// A regular file entry.
    pub fn file(&mut self, name: &str, data: &[u8], mode: u32) -> Result<&mut Self> {
        let h = Self::header(name, tar::EntryType::Regular, data.len() as u64, mode)?;
        Ok(self.push(h, data))
    }

    /// A FIFO entry.
    pub fn fifo(&mut self, name: &str, mode: u32) -> Result<&mut Self> {
        let h = Self::header(name, tar::EntryType::Fifo, 0, mode)?;
        Ok(self.push(h, b""))
    }

    /// A symlink entry `name -> target`.
    pub fn symlink(&mut self, name: &str, target: &str) -> Result<&mut Self> {
        self.link(tar::EntryType::Symlink, name, target)
    }

    /// A hardlink entry `name` to `target`.
    pub fn hardlink(&mut self, name: &str, target: &str) -> Result<&mut Self> {
        self.link(tar::EntryType::Link, name, target)
    }

    fn link(&mut self, kind: tar::EntryType, name: &str, target: &str) -> Result<&mut Self> {
        let mut h = Self::header(name, kind, 0, 0o777)?;
        let field = &mut h.as_old_mut().linkname;
        ensure!(
            target.len() <= field.len(),
            "link target {target:?} is too long"
        );
        field.fill(0);
        field[..target.len()].copy_from_slice(target.as_bytes());
        Ok(self.push(h, b""))
    }

    /// The tar with its end-of-archive blocks.
    pub fn finish(&self) -> Vec<u8> {
        let mut out = self.out.clone();
        out.extend(std::iter::repeat_n(0u8, 1024));
        out
    }
}

/// How a crafted layer blob is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerFormat {
    /// A plain tar.
    Tar,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

impl LayerFormat {
    /// The OCI media type of a layer in this format.
    pub fn media_type(self) -> &'static str {
        match self {
            LayerFormat::Tar => OCI_LAYER_TAR,
            LayerFormat::Gzip => OCI_LAYER_GZIP,
            LayerFormat::Zstd => OCI_LAYER_ZSTD,
        }
    }
}

/// Compresses `tar` into `format`.
pub fn compress(tar: &[u8], format: LayerFormat) -> Result<Vec<u8>> {
    Ok(match format {
        LayerFormat::Tar => tar.to_vec(),
        LayerFormat::Gzip => {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(tar)?;
            gz.finish()?
        }
        LayerFormat::Zstd => zstd::encode_all(tar, 3)?,
    })
}

/// A layer blob with what its descriptor and the config say about it.
#[derive(Debug, Clone)]
pub struct CraftedLayer {
    /// Descriptor media type.
    pub media_type: String,
    /// The blob.
    pub data: Vec<u8>,
    /// The config's diff id for it.
    pub diff_id: String,
    /// Descriptor `urls`.
    pub urls: Vec<String>,
}

impl CraftedLayer {
    /// A layer of `tar` stored as `format`.
    pub fn new(tar: &[u8], format: LayerFormat) -> Result<Self> {
        Ok(CraftedLayer {
            media_type: format.media_type().to_string(),
            data: compress(tar, format)?,
            diff_id: crate::image_builder::sha256_digest(tar),
            urls: Vec::new(),
        })
    }

    /// The blob's digest.
    pub fn digest(&self) -> String {
        crate::image_builder::sha256_digest(&self.data)
    }

    fn descriptor(&self) -> Value {
        let mut d = json!({
            "mediaType": self.media_type,
            "digest": self.digest(),
            "size": self.data.len(),
        });
        if !self.urls.is_empty() {
            d["urls"] = json!(self.urls);
        }
        d
    }
}

/// An OCI image under construction: the manifest JSON, the config bytes
/// and the blobs to serve by digest, each free to be made wrong.
#[derive(Debug, Clone)]
pub struct CraftedImage {
    /// The manifest as JSON; [`CraftedImage::manifest_blob`] serializes it.
    pub manifest: Value,
    /// The manifest's Content-Type.
    pub manifest_type: String,
    /// The config blob's bytes (also in `blobs`).
    pub config: Vec<u8>,
    /// What the registry serves at `/blobs/<digest>`.
    pub blobs: BTreeMap<String, Vec<u8>>,
}

impl CraftedImage {
    /// A valid image of `layers` for the node's platform, `Cmd: ["sh"]`.
    pub fn new(layers: &[CraftedLayer]) -> Self {
        let platform = Platform::node();
        let config = json!({
            "architecture": platform.architecture,
            "os": platform.os,
            "config": {"Env": [IMAGE_PATH], "Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| &l.diff_id).collect::<Vec<_>>()},
        });
        let config = config.to_string().into_bytes();
        let config_digest = crate::image_builder::sha256_digest(&config);
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config.len()},
            "layers": layers.iter().map(CraftedLayer::descriptor).collect::<Vec<_>>(),
        });
        let mut blobs: BTreeMap<String, Vec<u8>> = layers
            .iter()
            .map(|l| (l.digest(), l.data.clone()))
            .collect();
        blobs.insert(config_digest, config.clone());
        CraftedImage {
            manifest,
            manifest_type: OCI_MANIFEST.to_string(),
            config,
            blobs,
        }
    }

    /// Replaces the config with `config` (and its descriptor in the manifest).
    pub fn set_config(&mut self, config: &Value) {
        let old = self.config_digest();
        self.blobs.remove(&old);
        self.config = config.to_string().into_bytes();
        let digest = crate::image_builder::sha256_digest(&self.config);
        self.manifest["config"]["digest"] = json!(digest);
        self.manifest["config"]["size"] = json!(self.config.len());
        self.blobs.insert(digest, self.config.clone());
    }

    /// The config as JSON.
    pub fn config_json(&self) -> Result<Value> {
        serde_json::from_slice(&self.config).context("the crafted config is not JSON")
    }

    /// The config digest (the image id).
    pub fn config_digest(&self) -> String {
        crate::image_builder::sha256_digest(&self.config)
    }

    /// The manifest as served.
    pub fn manifest_blob(&self) -> Blob {
        Blob::new(&self.manifest_type, self.manifest.to_string().into_bytes())
    }

    /// Pushes the blobs (except those in `skip`) and the manifest as
    /// `repo:tag` to a real registry.
    pub async fn push(
        &self,
        client: &RegistryClient,
        repo: &str,
        tag: &str,
        skip: &[String],
    ) -> Result<()> {
        for (digest, data) in &self.blobs {
            if !skip.contains(digest) {
                client.push_blob(repo, data, digest).await?;
            }
        }
        client.push_manifest(repo, tag, &self.manifest_blob()).await
    }

    /// Routes `repo:tag`, the manifest by digest and every blob on `fake`.
    pub fn serve(&self, fake: &FakeRegistry, repo: &str, tag: &str) {
        let manifest = self.manifest_blob();
        for reference in [tag, manifest.digest.as_str()] {
            fake.route(
                "GET",
                &format!("/v2/{repo}/manifests/{reference}"),
                Reply::ok(&manifest.media_type, manifest.data.clone())
                    .header("Docker-Content-Digest", &manifest.digest),
            );
        }
        for (digest, data) in &self.blobs {
            fake.route(
                "GET",
                &format!("/v2/{repo}/blobs/{digest}"),
                Reply::ok("application/octet-stream", data.clone()),
            );
        }
    }
}

/// What a pull left half-written in the image store under crustd's `root`:
/// ingest files, snapshot directories without an index entry, index
/// entries without a directory. Empty when the store is clean.
pub fn store_leftovers(root: &Path) -> Result<Vec<String>> {
    let mut found = Vec::new();
    let ingest = root.join("content/ingest");
    if ingest.exists() {
        for entry in std::fs::read_dir(&ingest)? {
            found.push(format!("ingest file {}", entry?.path().display()));
        }
    }
    let snapshots = root.join("snapshots");
    let index = snapshots.join("by-chain");
    let mut indexed = Vec::new();
    if index.exists() {
        for entry in std::fs::read_dir(&index)? {
            let link = entry?.path();
            let target = std::fs::read_link(&link)
                .with_context(|| format!("reading the index entry {}", link.display()))?;
            let dir = index.join(&target);
            if !dir.is_dir() {
                found.push(format!(
                    "index entry {} points to the missing {}",
                    link.display(),
                    target.display()
                ));
            }
            if let Some(name) = target.file_name() {
                indexed.push(name.to_owned());
            }
        }
    }
    if snapshots.exists() {
        for entry in std::fs::read_dir(&snapshots)? {
            let name = entry?.file_name();
            if name != "by-chain" && !indexed.contains(&name) {
                found.push(format!(
                    "snapshot directory {} has no index entry",
                    snapshots.join(&name).display()
                ));
            }
        }
    }
    Ok(found)
}

/// Fails if [`store_leftovers`] finds anything; `what` names the case.
pub fn expect_clean_store(root: &Path, what: &str) -> Result<()> {
    let left = store_leftovers(root)?;
    ensure!(
        left.is_empty(),
        "{what}: the image store holds half-written things: {left:#?}"
    );
    Ok(())
}

/// Pulls `reference` and requires it to fail with `code` and a message
/// holding every one of `needles`; then requires the store to be clean and
/// the image absent. `what` names the case in failures. Returns the message.
pub async fn expect_pull_refused(
    env: &TestEnv,
    reference: &str,
    code: tonic::Code,
    needles: &[&str],
    what: &str,
) -> Result<String> {
    let message = match env.cri.pull_image(reference).await {
        Ok(id) => anyhow::bail!("{what}: PullImage {reference} succeeded with {id}"),
        Err(status) => {
            ensure!(
                status.code() == code,
                "{what}: PullImage {reference}: expected {code:?}, got {:?}: {}",
                status.code(),
                status.message()
            );
            status.message().to_string()
        }
    };
    eprintln!("{what}: {code:?}: {message}");
    for needle in needles {
        ensure!(
            message.contains(needle),
            "{what}: the error {message:?} does not mention {needle:?}"
        );
    }
    expect_clean_store(&env.daemon.paths().root, what)?;
    ensure!(
        env.cri.image_status(reference).await?.is_none(),
        "{what}: ImageStatus finds {reference} after the failed pull"
    );
    Ok(message)
}

/// A directory outside crustd's root that hostile layers aim at: a file
/// `canary` and a subdirectory `sub`, compared with their first state by
/// [`Canary::check`]. Removed on drop.
#[derive(Debug)]
pub struct Canary {
    /// The directory (absolute).
    pub dir: PathBuf,
    state: Vec<EntryState>,
}

/// Name, mode, link count, mtime (seconds, nanoseconds) and content (or
/// entry count, for a directory) of one entry of the canary directory.
type EntryState = (String, u32, u64, (i64, i64), Vec<u8>);

/// Contents of the canary file.
const CANARY_TEXT: &[u8] = b"canary: untouched\n";

impl Canary {
    /// Makes a fresh canary directory.
    pub fn new(tag: &str) -> Result<Self> {
        let parent = std::env::var_os("CRUST_E2E_TMPDIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let dir = parent.join(format!("crust-canary-{tag}-{}", unique::suffix()));
        std::fs::create_dir_all(dir.join("sub"))
            .with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join("canary"), CANARY_TEXT)?;
        let mut canary = Canary {
            dir,
            state: Vec::new(),
        };
        canary.state = canary.snapshot()?;
        Ok(canary)
    }

    /// The canary file.
    pub fn file(&self) -> PathBuf {
        self.dir.join("canary")
    }

    /// The directory without its leading `/`, for names inside a layer.
    pub fn relative(&self) -> String {
        self.dir
            .display()
            .to_string()
            .trim_start_matches('/')
            .to_string()
    }

    fn snapshot(&self) -> Result<Vec<EntryState>> {
        let mut out = Vec::new();
        let top = std::fs::symlink_metadata(&self.dir)?;
        out.push((
            ".".to_string(),
            top.mode(),
            top.nlink(),
            (top.mtime(), top.mtime_nsec()),
            Vec::new(),
        ));
        let mut entries: Vec<_> = std::fs::read_dir(&self.dir)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let m = std::fs::symlink_metadata(entry.path())?;
            let content = if m.is_file() {
                std::fs::read(entry.path())?
            } else {
                std::fs::read_dir(entry.path())
                    .map(|d| d.count().to_string().into_bytes())
                    .unwrap_or_default()
            };
            out.push((
                entry.file_name().to_string_lossy().into_owned(),
                m.mode(),
                m.nlink(),
                (m.mtime(), m.mtime_nsec()),
                content,
            ));
        }
        Ok(out)
    }

    /// Fails if anything in the canary directory changed; `what` names the case.
    pub fn check(&self, what: &str) -> Result<()> {
        ensure!(
            !has_xattr(&self.dir, "trusted.overlay.opaque")?,
            "{what}: the canary directory {} was marked opaque",
            self.dir.display()
        );
        let now = self.snapshot()?;
        ensure!(
            now == self.state,
            "{what}: the canary directory {} changed: {:?} became {:?}",
            self.dir.display(),
            self.state
                .iter()
                .map(|(n, m, l, t, _)| (n, m, l, t))
                .collect::<Vec<_>>(),
            now.iter()
                .map(|(n, m, l, t, _)| (n, m, l, t))
                .collect::<Vec<_>>()
        );
        Ok(())
    }
}

/// Whether `path` (not followed if a symlink) carries the xattr `name`.
fn has_xattr(path: &Path, name: &str) -> Result<bool> {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let n = std::ffi::CString::new(name)?;
    // SAFETY: NUL-terminated strings that outlive the call; a null buffer of
    // length 0 asks only for the value's size.
    let rc = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) };
    if rc >= 0 {
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::ENODATA) | Some(libc::ENOTSUP) => Ok(false),
        _ => Err(anyhow::Error::new(err).context(format!("reading xattrs of {}", path.display()))),
    }
}

impl Drop for Canary {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_names_survive() {
        let mut t = RawTar::new();
        t.file("../escape", b"x", 0o644).unwrap();
        t.file("/abs", b"y", 0o644).unwrap();
        t.symlink("evil", "/").unwrap();
        let tar = t.finish();
        assert_eq!(tar.len() % 512, 0);
        let mut archive = tar::Archive::new(&tar[..]);
        let names: Vec<Vec<u8>> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path_bytes().into_owned())
            .collect();
        assert_eq!(
            names,
            vec![b"../escape".to_vec(), b"/abs".to_vec(), b"evil".to_vec()]
        );
        assert!(RawTar::new().file(&"x".repeat(101), b"", 0o644).is_err());
    }

    #[test]
    fn crafted_image_is_consistent() {
        let layer = CraftedLayer::new(&RawTar::new().finish(), LayerFormat::Zstd).unwrap();
        let mut image = CraftedImage::new(std::slice::from_ref(&layer));
        assert_eq!(image.manifest["layers"][0]["mediaType"], OCI_LAYER_ZSTD);
        assert!(image.blobs.contains_key(&layer.digest()));
        let mut config = image.config_json().unwrap();
        config["rootfs"]["diff_ids"] = json!([]);
        image.set_config(&config);
        assert_eq!(image.manifest["config"]["digest"], image.config_digest());
        assert_eq!(image.blobs.len(), 2);
        assert_eq!(
            zstd::decode_all(&layer.data[..]).unwrap(),
            RawTar::new().finish()
        );
    }
}
