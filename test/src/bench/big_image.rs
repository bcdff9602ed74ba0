//! The big-image pull case: two OCI images of [`LAYERS`] gzip layers holding
//! [`LAYER_BYTES`] of random bytes each (about 100 MiB an image, which gzip
//! cannot shrink), pushed to the local registry. The second shares its
//! bottom four layers with the first, so pulling it after the first fetches
//! and unpacks one layer: the "layers shared" case.

use std::collections::HashSet;

use anyhow::{Context, Result};

use crate::fixtures::TestImages;
use crate::image_builder::{
    Compression, Layer, LayerBuilder, ManifestFormat, Platform, RunConfig, build_image,
};
use crate::registry::RegistryClient;

/// Layers per image.
pub const LAYERS: usize = 5;
/// Random bytes per layer (in [`FILES_PER_LAYER`] files).
pub const LAYER_BYTES: usize = 20 << 20;
/// Files each layer's bytes are split into.
const FILES_PER_LAYER: usize = 4;
/// The repository both images are pushed to.
pub const REPOSITORY: &str = "bench-big";

/// One pushed big image, as the pulls need it (the bytes are not kept).
#[derive(Debug, Clone)]
pub struct BigImage {
    /// `127.0.0.1:<port>/bench-big:<tag>`.
    pub reference: String,
    /// The tag.
    pub tag: String,
    /// Digests of the layer blobs, bottom first.
    pub layers: Vec<String>,
    /// Bytes of the compressed layers together.
    pub compressed_bytes: u64,
}

/// The two big images.
#[derive(Debug, Clone)]
pub struct BigImages {
    /// `127.0.0.1:<port>` of the registry holding them.
    pub registry: String,
    /// The first image (`cold`).
    pub first: BigImage,
    /// The second image, sharing the bottom `LAYERS - 1` layers of the first.
    pub second: BigImage,
}

impl BigImages {
    /// Builds both images and pushes them to the registry of `images`.
    pub async fn push(images: &TestImages) -> Result<BigImages> {
        let client = RegistryClient::new(&images.registry)?;
        let mut random = XorShift::new(0x9e37_79b9_7f4a_7c15);
        let mut layers = Vec::with_capacity(LAYERS + 1);
        for i in 0..=LAYERS {
            layers.push(random_layer(&mut random, i)?);
        }
        let run = RunConfig {
            cmd: vec!["true".into()],
            ..RunConfig::default()
        };
        let first_stack = layers[..LAYERS].to_vec();
        let second_stack = [&layers[..LAYERS - 1], &layers[LAYERS..]].concat();
        drop(layers);
        let mut pushed = Vec::new();
        for (tag, stack) in [("1", first_stack), ("2", second_stack)] {
            let image = build_image(ManifestFormat::Oci, Platform::node(), &run, &stack);
            client
                .push_image(REPOSITORY, Some(tag), &image)
                .await
                .with_context(|| format!("pushing {REPOSITORY}:{tag}"))?;
            pushed.push(BigImage {
                reference: format!("{}/{REPOSITORY}:{tag}", images.registry),
                tag: tag.to_string(),
                layers: image.layers.iter().map(|l| l.digest.clone()).collect(),
                compressed_bytes: image.layers.iter().map(|l| l.data.len() as u64).sum(),
            });
        }
        let second = pushed.pop().context("second image")?;
        let first = pushed.pop().context("first image")?;
        Ok(BigImages {
            registry: images.registry.clone(),
            first,
            second,
        })
    }

    /// Layer digests of the first image, which the second's pull finds present.
    pub fn shared_layers(&self) -> HashSet<String> {
        self.first.layers.iter().cloned().collect()
    }

    /// A line for the report saying what the images are.
    pub fn describe(&self) -> String {
        format!(
            "big images: {REPOSITORY}:1, {} layers of {} MiB random bytes each (gzip, {:.1} MiB compressed); {REPOSITORY}:2 shares the bottom {} layers",
            LAYERS,
            LAYER_BYTES >> 20,
            self.first.compressed_bytes as f64 / (1 << 20) as f64,
            LAYERS - 1
        )
    }
}

/// A layer of `FILES_PER_LAYER` files of random bytes under `/big<index>/`.
fn random_layer(random: &mut XorShift, index: usize) -> Result<Layer> {
    let mut builder = LayerBuilder::new();
    let dir = format!("big{index}");
    builder.dir(&dir, 0o755)?;
    let mut data = vec![0u8; LAYER_BYTES / FILES_PER_LAYER];
    for file in 0..FILES_PER_LAYER {
        random.fill(&mut data);
        builder.file(&format!("{dir}/{file}.bin"), 0o644, &data)?;
    }
    Layer::new(builder.finish()?, Compression::Gzip)
}

/// xorshift64*: fast, reproducible bytes no compressor can shrink.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let bytes = self.next().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_bytes_do_not_compress() {
        let mut random = XorShift::new(1);
        let mut data = vec![0u8; 1 << 16];
        random.fill(&mut data);
        let layer = Layer::new(data.clone(), Compression::Gzip).unwrap();
        assert!(layer.data.len() as f64 > data.len() as f64 * 0.99);
        let mut again = XorShift::new(1);
        let mut same = vec![0u8; 1 << 16];
        again.fill(&mut same);
        assert_eq!(data, same);
    }
}
