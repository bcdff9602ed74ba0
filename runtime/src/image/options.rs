//! How the image store pulls, as crustd's `[image]` configuration sets it.

use std::path::PathBuf;
use std::time::Duration;

/// Pull settings.
#[derive(Clone, Debug)]
pub struct ImageOptions {
    /// Per-registry host configuration in containerd's layout:
    /// `<config_path>/<host>/hosts.toml`.
    pub config_path: PathBuf,
    /// A transfer that receives nothing for this long fails.
    pub progress_timeout: Duration,
    /// Layers one pull downloads at the same time.
    pub max_concurrent_downloads: usize,
    /// References of images reported as pinned (kubelet's image GC leaves
    /// them alone).
    pub pinned_images: Vec<String>,
}

impl Default for ImageOptions {
    fn default() -> Self {
        ImageOptions {
            config_path: PathBuf::from("/etc/crust/certs.d"),
            progress_timeout: Duration::from_secs(60),
            max_concurrent_downloads: 3,
            pinned_images: Vec::new(),
        }
    }
}
