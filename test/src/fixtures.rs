//! The images every test can pull, built from the host's `busybox-static` and
//! pushed to the shared registry once per test process (the suite is one
//! binary, so once for all of it):
//!
//! - `busybox:1.0` (and `busybox:latest`): Docker schema 2, one gzip layer with
//!   busybox and a symlink per applet, `/etc/passwd`, `/etc/group`, `Cmd: ["sh"]`.
//! - `layered:1.0`: OCI; busybox plus a plain-tar layer adding `/data/new.txt`,
//!   `/data/old/a.txt` and whiting out `/etc/group`, plus a gzip layer making
//!   `/data/old` opaque and adding `/data/old/b.txt`; `Cmd: ["sleep","3600"]`,
//!   extra env, `WorkingDir: /data`.
//! - `busybox-multi:1.0`: an OCI index with a foreign-platform manifest first
//!   and the node's busybox manifest second.

use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow, ensure};

use crate::image_builder::{
    Compression, Image, Layer, LayerBuilder, ManifestFormat, Platform, RunConfig, build_image,
    build_index,
};
use crate::registry::{Registry, RegistryClient};
use crate::requirements;

/// The `PATH` every test image sets.
pub const IMAGE_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Contents of `/data/new.txt` in the layered image.
pub const NEW_TXT: &str = "new\n";
/// Contents of `/data/old/b.txt` in the layered image.
pub const B_TXT: &str = "b\n";

/// An image pushed under a tag.
#[derive(Debug, Clone)]
pub struct PushedImage {
    /// Full reference to pull, e.g. `127.0.0.1:5000/busybox:1.0`.
    pub reference: String,
    /// `127.0.0.1:5000/busybox`: the reference without the tag.
    pub repository: String,
    /// Digest of the manifest (or index) the tag points to.
    pub digest: String,
    /// Digest of the config of the image a node of this platform runs.
    pub config_digest: String,
    /// The built image (for the multi-arch entry: the node platform's image).
    pub image: Image,
}

impl PushedImage {
    /// `repository@digest`, the digested reference of what the tag points to.
    pub fn digest_reference(&self) -> String {
        format!("{}@{}", self.repository, self.digest)
    }
}

/// All pushed test images.
#[derive(Debug)]
pub struct TestImages {
    /// `127.0.0.1:<port>`.
    pub registry: String,
    /// `busybox:1.0`.
    pub busybox: PushedImage,
    /// The same image tagged `latest`, to check tag defaulting.
    pub busybox_latest: PushedImage,
    /// `layered:1.0`.
    pub layered: PushedImage,
    /// `busybox-multi:1.0` (an index; `digest` is the index digest).
    pub multi_arch: PushedImage,
    /// Manifest digest of the foreign-platform entry of the index.
    pub multi_arch_foreign_digest: String,
}

static SHARED: OnceLock<Result<TestImages, String>> = OnceLock::new();

impl TestImages {
    /// Starts the shared registry and pushes the images, once per test process.
    pub fn shared() -> Result<&'static TestImages> {
        SHARED
            .get_or_init(|| build_and_push_in_own_runtime().map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|e| anyhow!("preparing test images: {e}"))
    }

    /// A reference to a tag of `busybox` that was never pushed.
    pub fn missing_tag(&self) -> String {
        format!("{}/busybox:does-not-exist", self.registry)
    }

    /// A reference to a repository that does not exist.
    pub fn missing_repository(&self) -> String {
        format!("{}/no-such-image:1.0", self.registry)
    }
}

/// Runs the async pushes on a private runtime in a thread of its own, so the
/// fixture can be made from any test, inside or outside an async runtime.
fn build_and_push_in_own_runtime() -> Result<TestImages> {
    std::thread::spawn(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(build_and_push())
    })
    .join()
    .map_err(|_| anyhow!("image fixture thread panicked"))?
}

async fn build_and_push() -> Result<TestImages> {
    let registry = Registry::shared()?;
    let client = RegistryClient::new(&registry.addr)?;
    let host = registry.addr.clone();
    let busybox_tar = busybox_layer()?;
    let busybox_layer = Layer::new(busybox_tar, Compression::Gzip)?;

    let busybox = build_image(
        ManifestFormat::Docker,
        Platform::node(),
        &RunConfig {
            env: vec![IMAGE_PATH.into()],
            cmd: vec!["sh".into()],
            ..RunConfig::default()
        },
        std::slice::from_ref(&busybox_layer),
    );
    client.push_image("busybox", Some("1.0"), &busybox).await?;
    client
        .push_image("busybox", Some("latest"), &busybox)
        .await?;

    let layered = build_image(
        ManifestFormat::Oci,
        Platform::node(),
        &RunConfig {
            env: vec![
                IMAGE_PATH.into(),
                "IMAGE_VAR=from-image".into(),
                "SHARED_VAR=from-image".into(),
            ],
            cmd: vec!["sleep".into(), "3600".into()],
            working_dir: Some("/data".into()),
            ..RunConfig::default()
        },
        &[
            busybox_layer.clone(),
            Layer::new(data_layer()?, Compression::None)?,
            Layer::new(opaque_layer()?, Compression::Gzip)?,
        ],
    );
    client.push_image("layered", Some("1.0"), &layered).await?;

    let foreign = build_image(
        ManifestFormat::Oci,
        Platform::foreign(),
        &RunConfig {
            env: vec![IMAGE_PATH.into()],
            cmd: vec!["sh".into()],
            ..RunConfig::default()
        },
        &[Layer::new(foreign_layer()?, Compression::Gzip)?],
    );
    let native = build_image(
        ManifestFormat::Oci,
        Platform::node(),
        &RunConfig {
            env: vec![IMAGE_PATH.into()],
            cmd: vec!["sh".into()],
            ..RunConfig::default()
        },
        &[busybox_layer],
    );
    client.push_image("busybox-multi", None, &foreign).await?;
    client.push_image("busybox-multi", None, &native).await?;
    let index = build_index(&[&foreign, &native]);
    client.push_manifest("busybox-multi", "1.0", &index).await?;

    let pushed = |repo: &str, tag: &str, digest: &str, image: &Image| PushedImage {
        reference: format!("{host}/{repo}:{tag}"),
        repository: format!("{host}/{repo}"),
        digest: digest.to_string(),
        config_digest: image.config.digest.clone(),
        image: image.clone(),
    };
    Ok(TestImages {
        registry: host.clone(),
        busybox: pushed("busybox", "1.0", &busybox.manifest.digest, &busybox),
        busybox_latest: pushed("busybox", "latest", &busybox.manifest.digest, &busybox),
        layered: pushed("layered", "1.0", &layered.manifest.digest, &layered),
        multi_arch: pushed("busybox-multi", "1.0", &index.digest, &native),
        multi_arch_foreign_digest: foreign.manifest.digest.clone(),
    })
}

/// The busybox layer: `/bin/busybox`, a symlink per applet, `/etc/passwd`,
/// `/etc/group` and the empty top-level directories a container expects.
pub fn busybox_layer() -> Result<Vec<u8>> {
    let busybox = requirements::find_program("busybox").context("busybox is not installed")?;
    let binary =
        std::fs::read(&busybox).with_context(|| format!("reading {}", busybox.display()))?;
    let list = Command::new(&busybox).arg("--list").output()?;
    ensure!(list.status.success(), "busybox --list failed");
    let applets = String::from_utf8(list.stdout)?;
    let mut layer = LayerBuilder::new();
    for (dir, mode) in [
        ("bin", 0o755),
        ("dev", 0o755),
        ("etc", 0o755),
        ("proc", 0o555),
        ("root", 0o700),
        ("sys", 0o555),
        ("tmp", 0o1777),
    ] {
        layer.dir(dir, mode)?;
    }
    layer.file("bin/busybox", 0o755, &binary)?;
    for applet in applets.lines().map(str::trim) {
        if !applet.is_empty() && applet != "busybox" && !applet.contains('/') {
            layer.symlink(&format!("bin/{applet}"), "busybox")?;
        }
    }
    layer.file(
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )?;
    layer.file("etc/group", 0o644, b"root:x:0:\nnobody:x:65534:\n")?;
    layer.finish()
}

/// Second layer of `layered`: adds `/data/new.txt` and `/data/old/a.txt`,
/// deletes `/etc/group` with a whiteout.
fn data_layer() -> Result<Vec<u8>> {
    let mut layer = LayerBuilder::new();
    layer.dir("data", 0o755)?;
    layer.file("data/new.txt", 0o644, NEW_TXT.as_bytes())?;
    layer.dir("data/old", 0o755)?;
    layer.file("data/old/a.txt", 0o644, b"a\n")?;
    layer.dir("etc", 0o755)?;
    layer.whiteout("etc/group")?;
    layer.finish()
}

/// Third layer of `layered`: makes `/data/old` opaque and adds `b.txt` to it.
fn opaque_layer() -> Result<Vec<u8>> {
    let mut layer = LayerBuilder::new();
    layer.dir("data", 0o755)?;
    layer.dir("data/old", 0o755)?;
    layer.opaque("data/old")?;
    layer.file("data/old/b.txt", 0o644, B_TXT.as_bytes())?;
    layer.finish()
}

/// The only layer of the foreign-platform image: no shell, just a marker, so a
/// runtime that picks the wrong platform cannot start a container from it.
fn foreign_layer() -> Result<Vec<u8>> {
    let mut layer = LayerBuilder::new();
    layer.file(
        "WRONG-PLATFORM",
        0o644,
        Platform::foreign().architecture.as_bytes(),
    )?;
    layer.finish()
}
