//! The layer plan of a pull: one job per layer of the manifest, with what
//! the pull pins and records for it. Pure: whether a layer is already
//! unpacked or its blob already stored is decided per layer under its lock
//! when the job runs (see the layers module), since a concurrent pull may
//! make it present, and only a pin keeps the collector from taking it away.

use crate::image::catalog::Pinned;
use crate::image::digest::chain_ids;
use crate::image::manifest::{ImageManifest, is_non_distributable};
use crate::image::record::ImageLayer;

use super::bounds::layer_what;

/// One layer to make present.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct LayerJob {
    pub(super) digest: String,
    pub(super) size: u64,
    pub(super) diff_id: String,
    pub(super) chain_id: String,
    /// Where else the blob may be fetched when the registry lacks it
    /// (non-distributable layers only).
    pub(super) urls: Vec<String>,
    /// `layer sha256:… of image "…"`, for messages.
    pub(super) what: String,
}

/// The layers of one image, bottom first.
#[derive(Debug)]
pub(super) struct LayerPlan {
    pub(super) jobs: Vec<LayerJob>,
}

/// Plans the layers of `manifest` whose config lists `diff_ids` (already
/// checked by [`super::bounds::check_diff_ids`]: one per layer).
pub(super) fn plan_layers(manifest: &ImageManifest, diff_ids: &[String], what: &str) -> LayerPlan {
    let chains = chain_ids(diff_ids);
    let jobs = manifest
        .layers
        .iter()
        .zip(diff_ids)
        .zip(chains)
        .map(|((layer, diff_id), chain_id)| LayerJob {
            digest: layer.digest.clone(),
            size: layer.size,
            diff_id: diff_id.clone(),
            chain_id,
            urls: if is_non_distributable(&layer.media_type) {
                layer.urls.clone()
            } else {
                Vec::new()
            },
            what: layer_what(&layer.digest, what),
        })
        .collect();
    LayerPlan { jobs }
}

impl LayerPlan {
    /// What the pull keeps from the collector: each layer's blob and snapshot.
    pub(super) fn pins(&self) -> impl Iterator<Item = Pinned> + '_ {
        self.jobs.iter().flat_map(|job| {
            [
                Pinned::Blob(job.digest.clone()),
                Pinned::Snapshot(job.chain_id.clone()),
            ]
        })
    }

    /// The layers as the image record lists them.
    pub(super) fn layers(&self) -> Vec<ImageLayer> {
        self.jobs
            .iter()
            .map(|job| ImageLayer {
                digest: job.digest.clone(),
                size: job.size,
                diff_id: job.diff_id.clone(),
                chain_id: job.chain_id.clone(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::digest::sha256_of;
    use crate::image::manifest::Descriptor;

    fn descriptor(media_type: &str, seed: &str, urls: &[&str]) -> Descriptor {
        Descriptor {
            media_type: media_type.into(),
            digest: sha256_of(seed.as_bytes()),
            size: seed.len() as u64,
            platform: None,
            urls: urls.iter().map(|u| u.to_string()).collect(),
        }
    }

    fn manifest() -> ImageManifest {
        ImageManifest {
            config: descriptor("application/vnd.oci.image.config.v1+json", "config", &[]),
            layers: vec![
                descriptor(
                    "application/vnd.oci.image.layer.v1.tar+gzip",
                    "base",
                    &["http://x/ignored"],
                ),
                descriptor(
                    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                    "foreign layer",
                    &["https://a.example/blob", "https://b.example/blob"],
                ),
                descriptor("application/vnd.oci.image.layer.v1.tar", "top", &[]),
            ],
        }
    }

    fn diff_ids() -> Vec<String> {
        ["d0", "d1", "d2"]
            .iter()
            .map(|d| sha256_of(d.as_bytes()))
            .collect()
    }

    #[test]
    fn one_job_per_layer_bottom_first_with_chain_ids() {
        let m = manifest();
        let plan = plan_layers(&m, &diff_ids(), "image \"reg.io/a:1\"");
        assert_eq!(plan.jobs.len(), 3);
        let chains = chain_ids(&diff_ids());
        for (i, job) in plan.jobs.iter().enumerate() {
            assert_eq!(job.digest, m.layers[i].digest);
            assert_eq!(job.size, m.layers[i].size);
            assert_eq!(job.diff_id, diff_ids()[i]);
            assert_eq!(job.chain_id, chains[i]);
            assert_eq!(
                job.what,
                format!("layer {} of image \"reg.io/a:1\"", m.layers[i].digest)
            );
        }
        // The bottom layer's chain id is its diff id.
        assert_eq!(plan.jobs[0].chain_id, plan.jobs[0].diff_id);
    }

    #[test]
    fn only_non_distributable_layers_keep_their_urls() {
        let plan = plan_layers(&manifest(), &diff_ids(), "image");
        assert!(plan.jobs[0].urls.is_empty());
        assert_eq!(
            plan.jobs[1].urls,
            ["https://a.example/blob", "https://b.example/blob"]
        );
        assert!(plan.jobs[2].urls.is_empty());
    }

    #[test]
    fn pins_and_records_cover_every_layer() {
        let plan = plan_layers(&manifest(), &diff_ids(), "image");
        let pins: Vec<Pinned> = plan.pins().collect();
        assert_eq!(pins.len(), 6);
        for job in &plan.jobs {
            assert!(pins.contains(&Pinned::Blob(job.digest.clone())));
            assert!(pins.contains(&Pinned::Snapshot(job.chain_id.clone())));
        }
        let layers = plan.layers();
        assert_eq!(layers.len(), 3);
        for (layer, job) in layers.iter().zip(&plan.jobs) {
            assert_eq!(
                (&layer.digest, layer.size, &layer.diff_id, &layer.chain_id),
                (&job.digest, job.size, &job.diff_id, &job.chain_id)
            );
        }
    }

    #[test]
    fn an_image_without_layers_plans_nothing() {
        let mut m = manifest();
        m.layers.clear();
        let plan = plan_layers(&m, &[], "image");
        assert!(plan.jobs.is_empty());
        assert_eq!(plan.pins().count(), 0);
    }
}
