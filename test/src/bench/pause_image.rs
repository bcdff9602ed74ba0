//! The sandbox ("pause") image containerd's CRI plugin runs in every pod, built
//! from the host's busybox and pushed to the benchmark's registry.
//!
//! Its one layer differs from the busybox test image's, so the two share no
//! content and removing busybox still makes its next pull cold.

use anyhow::{Context, Result};

use crate::fixtures::TestImages;
use crate::image_builder::{
    Compression, Layer, LayerBuilder, ManifestFormat, Platform, RunConfig, build_image,
};
use crate::registry::RegistryClient;
use crate::requirements;

/// Repository and tag the pause image is pushed under.
pub const PAUSE_REPOSITORY: &str = "crust-bench-pause";
/// Tag of the pause image.
pub const PAUSE_TAG: &str = "1.0";

/// Builds and pushes the pause image; returns its reference.
pub async fn push(images: &TestImages) -> Result<String> {
    let busybox = requirements::find_program("busybox").context("busybox is not installed")?;
    let binary =
        std::fs::read(&busybox).with_context(|| format!("reading {}", busybox.display()))?;
    let mut layer = LayerBuilder::new();
    for dir in ["bin", "dev", "etc", "proc", "sys"] {
        layer.dir(dir, 0o755)?;
    }
    layer.file("bin/busybox", 0o755, &binary)?;
    layer.symlink("bin/sleep", "busybox")?;
    let image = build_image(
        ManifestFormat::Docker,
        Platform::node(),
        &RunConfig {
            entrypoint: vec!["/bin/sleep".into(), "2147483647".into()],
            ..RunConfig::default()
        },
        &[Layer::new(layer.finish()?, Compression::Gzip)?],
    );
    RegistryClient::new(&images.registry)?
        .push_image(PAUSE_REPOSITORY, Some(PAUSE_TAG), &image)
        .await
        .context("pushing the pause image")?;
    Ok(format!(
        "{}/{PAUSE_REPOSITORY}:{PAUSE_TAG}",
        images.registry
    ))
}
