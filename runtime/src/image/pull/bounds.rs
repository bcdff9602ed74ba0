//! What a pull accepts of a manifest and its config, checked before the
//! config and before the layers are fetched: pure functions of what the
//! registry declared.

use crate::image::digest::hex_of;
use crate::image::manifest::{
    DOCKER_CONFIG, ImageManifest, MAX_CONFIG_BYTES, MAX_LAYER_BYTES, MAX_LAYERS, OCI_CONFIG,
    layer_compression,
};
use crate::{Error, Result};

use super::context;

/// Refuses an image manifest that declares more than this store takes
/// ([`MAX_LAYERS`] layers, a config over [`MAX_CONFIG_BYTES`], a layer over
/// [`MAX_LAYER_BYTES`]), a config that is not an image config, a layer that
/// is not a container layer, or a malformed digest. `what` names the image
/// in messages.
pub(super) fn check_manifest(manifest: &ImageManifest, what: &str) -> Result<()> {
    if manifest.layers.len() > MAX_LAYERS {
        return Err(Error::invalid(format!(
            "{what} has {} layers; at most {MAX_LAYERS} are accepted",
            manifest.layers.len()
        )));
    }
    let config = &manifest.config;
    if config.media_type != OCI_CONFIG && config.media_type != DOCKER_CONFIG {
        return Err(Error::invalid(format!(
            "{what} is not a container image: its config has media type {:?}",
            config.media_type
        )));
    }
    hex_of(&config.digest, what)?;
    if config.size > MAX_CONFIG_BYTES {
        return Err(Error::invalid(format!(
            "{what}: the image config is {} bytes, more than the {MAX_CONFIG_BYTES} accepted",
            config.size
        )));
    }
    for layer in &manifest.layers {
        let layer_what = layer_what(&layer.digest, what);
        layer_compression(&layer.media_type).map_err(|e| context(e, &layer_what))?;
        hex_of(&layer.digest, &layer_what)?;
        if layer.size > MAX_LAYER_BYTES {
            return Err(Error::invalid(format!(
                "{layer_what}: its descriptor says it is {} bytes, more than the {MAX_LAYER_BYTES} accepted",
                layer.size
            )));
        }
    }
    Ok(())
}

/// Refuses a config whose diff ids (one per layer, bottom first) are more
/// than [`MAX_LAYERS`], do not match the manifest's layers one to one, or
/// are malformed.
pub(super) fn check_diff_ids(
    manifest: &ImageManifest,
    diff_ids: &[String],
    what: &str,
) -> Result<()> {
    if diff_ids.len() > MAX_LAYERS {
        return Err(Error::invalid(format!(
            "{what}: its config lists {} layers; at most {MAX_LAYERS} are accepted",
            diff_ids.len()
        )));
    }
    if diff_ids.len() != manifest.layers.len() {
        return Err(Error::invalid(format!(
            "{what}: the manifest lists {} layers but the config {} diff ids",
            manifest.layers.len(),
            diff_ids.len()
        )));
    }
    for (layer, diff_id) in manifest.layers.iter().zip(diff_ids) {
        hex_of(diff_id, &layer_what(&layer.digest, what))?;
    }
    Ok(())
}

/// `layer sha256:… of image "…"`, for messages.
pub(super) fn layer_what(digest: &str, what: &str) -> String {
    format!("layer {digest} of {what}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::digest::sha256_of;
    use crate::image::manifest::Descriptor;

    const GZIP_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

    fn descriptor(media_type: &str, seed: &str, size: u64) -> Descriptor {
        Descriptor {
            media_type: media_type.into(),
            digest: sha256_of(seed.as_bytes()),
            size,
            platform: None,
            urls: Vec::new(),
        }
    }

    fn manifest(layers: usize) -> ImageManifest {
        ImageManifest {
            config: descriptor(OCI_CONFIG, "config", 1000),
            layers: (0..layers)
                .map(|i| descriptor(GZIP_LAYER, &format!("layer {i}"), 100))
                .collect(),
        }
    }

    fn diff_ids(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| sha256_of(format!("diff {i}").as_bytes()))
            .collect()
    }

    /// The message of an `InvalidArgument`; anything else fails the test.
    fn refusal(result: Result<()>) -> String {
        match result {
            Err(Error::InvalidArgument(m)) => m,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    const WHAT: &str = "image \"reg.io/a:1\"";

    #[test]
    fn a_plain_manifest_passes() {
        check_manifest(&manifest(3), WHAT).unwrap();
        check_manifest(&manifest(0), WHAT).unwrap();
        check_manifest(&manifest(MAX_LAYERS), WHAT).unwrap();
        let mut docker = manifest(1);
        docker.config.media_type = DOCKER_CONFIG.into();
        docker.layers[0].media_type = "application/vnd.docker.image.rootfs.diff.tar.gzip".into();
        check_manifest(&docker, WHAT).unwrap();
    }

    #[test]
    fn too_many_layers() {
        let m = refusal(check_manifest(&manifest(MAX_LAYERS + 1), WHAT));
        assert_eq!(
            m,
            format!(
                "{WHAT} has {} layers; at most {MAX_LAYERS} are accepted",
                MAX_LAYERS + 1
            )
        );
    }

    #[test]
    fn config_must_be_an_image_config_of_bounded_size() {
        let mut m = manifest(1);
        m.config.media_type = "application/vnd.example.artifact+json".into();
        assert!(refusal(check_manifest(&m, WHAT)).contains("is not a container image"));

        let mut m = manifest(1);
        m.config.digest = "sha256:short".into();
        assert!(refusal(check_manifest(&m, WHAT)).starts_with(WHAT));

        let mut m = manifest(1);
        m.config.size = MAX_CONFIG_BYTES + 1;
        assert_eq!(
            refusal(check_manifest(&m, WHAT)),
            format!(
                "{WHAT}: the image config is {} bytes, more than the {MAX_CONFIG_BYTES} accepted",
                MAX_CONFIG_BYTES + 1
            )
        );
        m.config.size = MAX_CONFIG_BYTES;
        check_manifest(&m, WHAT).unwrap();
    }

    #[test]
    fn layers_must_be_container_layers_of_bounded_size() {
        let mut m = manifest(2);
        m.layers[1].media_type = "application/vnd.example.blob".into();
        let said = refusal(check_manifest(&m, WHAT));
        assert!(
            said.starts_with(&format!("layer {} of {WHAT}: ", m.layers[1].digest)),
            "{said}"
        );

        let mut m = manifest(2);
        m.layers[0].digest = "sha256:ABC".into();
        assert!(refusal(check_manifest(&m, WHAT)).starts_with("layer sha256:ABC of "));

        let mut m = manifest(2);
        m.layers[1].size = MAX_LAYER_BYTES + 1;
        assert_eq!(
            refusal(check_manifest(&m, WHAT)),
            format!(
                "layer {} of {WHAT}: its descriptor says it is {} bytes, more than the {MAX_LAYER_BYTES} accepted",
                m.layers[1].digest,
                MAX_LAYER_BYTES + 1
            )
        );
        m.layers[1].size = MAX_LAYER_BYTES;
        check_manifest(&m, WHAT).unwrap();
    }

    #[test]
    fn the_first_problem_is_reported() {
        let mut m = manifest(MAX_LAYERS + 1);
        m.config.media_type = "text/plain".into();
        assert!(refusal(check_manifest(&m, WHAT)).contains("layers; at most"));
    }

    #[test]
    fn diff_ids_match_the_layers_one_to_one() {
        let m = manifest(3);
        check_diff_ids(&m, &diff_ids(3), WHAT).unwrap();
        assert_eq!(
            refusal(check_diff_ids(&m, &diff_ids(2), WHAT)),
            format!("{WHAT}: the manifest lists 3 layers but the config 2 diff ids")
        );
        assert_eq!(
            refusal(check_diff_ids(&m, &diff_ids(MAX_LAYERS + 1), WHAT)),
            format!(
                "{WHAT}: its config lists {} layers; at most {MAX_LAYERS} are accepted",
                MAX_LAYERS + 1
            )
        );
        let mut bad = diff_ids(3);
        bad[2] = "md5:0".into();
        let said = refusal(check_diff_ids(&m, &bad, WHAT));
        assert!(
            said.starts_with(&format!("layer {} of {WHAT}: ", m.layers[2].digest)),
            "{said}"
        );
    }
}
