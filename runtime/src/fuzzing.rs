//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing` only):
//! the parsers of what registries, image layers and operators hand crust,
//! reachable from outside the crate without making them public API.

use std::path::Path;

/// Image reference parsing.
pub fn reference(s: &str) {
    let _ = crate::image::Reference::parse(s);
}

/// Manifest and index parsing, under each content type a registry may send.
pub fn manifest(bytes: &[u8]) {
    for content_type in [
        None,
        Some("application/vnd.oci.image.manifest.v1+json"),
        Some("application/vnd.oci.image.index.v1+json"),
        Some("application/vnd.docker.distribution.manifest.v2+json"),
        Some("application/vnd.docker.distribution.manifest.list.v2+json"),
    ] {
        let _ = crate::image::manifest::parse_manifest(bytes, content_type, "fuzzed manifest");
    }
}

/// Image config parsing.
pub fn config(bytes: &[u8]) {
    let _ = crate::image::manifest::parse_config(bytes, "fuzzed config");
}

/// hosts.toml parsing.
pub fn hosts_toml(text: &str) {
    let _ = crate::image::hosts::parse(
        text,
        Path::new("/nonexistent/certs.d/registry"),
        "registry.example:5000",
    );
}

/// The layer tar walker: unpacks `blob` (an uncompressed tar) into `dest`,
/// which must be an empty directory the caller removes afterwards.
pub fn layer_tar(blob: &[u8], dest: &Path) {
    let _ = crate::image::unpack::unpack_layer(blob, dest, 64 << 20);
}
