//! `make conformance`: the real clients in front of crustd. critest (the CRI
//! validation suite) runs against a crustd whose registries are mirrored to
//! the loopback registry holding offline builds of critest's images; a
//! standalone kubelet runs static pods on a crustd. Both clients come from
//! `../shared/tools` (unpacked by the Makefile), found through
//! [`CRITEST_ENV`] and [`KUBELET_ENV`].

pub mod critest;
pub mod images;
pub mod kubelet;
pub mod programs;
pub mod sysv_shm;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};

use crate::registry::RegistryClient;
use crate::{TestEnv, binaries};

/// Environment variable naming the critest binary.
pub const CRITEST_ENV: &str = "CRUST_CRITEST";
/// Environment variable naming the crictl binary.
pub const CRICTL_ENV: &str = "CRUST_CRICTL";
/// Environment variable naming the kubelet binary.
pub const KUBELET_ENV: &str = "CRUST_KUBELET";

/// The client binary named by environment variable `var`.
pub fn tool(var: &str) -> Result<PathBuf> {
    let path = std::env::var_os(var).map(PathBuf::from).with_context(|| {
        format!("{var} is not set: it names a client from ../shared/tools (`make conformance` unpacks them and sets it)")
    })?;
    ensure!(path.is_file(), "{var}={} is not a file", path.display());
    Ok(path)
}

/// Writes a `hosts.toml` for each of [`images::MIRRORED_HOSTS`] under
/// `certs_d` that sends its pulls to the plain-HTTP registry at `registry`
/// (`127.0.0.1:port`), keeping the image path.
pub fn mirror_to(certs_d: &Path, registry: &str) -> Result<()> {
    for host in images::MIRRORED_HOSTS {
        let dir = certs_d.join(host);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(
            dir.join("hosts.toml"),
            format!("server = \"http://{registry}\"\n"),
        )
        .with_context(|| format!("writing {}/hosts.toml", dir.display()))?;
    }
    Ok(())
}

/// The references of critest's images, once they are in the shared registry.
static PUSHED: tokio::sync::OnceCell<Vec<String>> = tokio::sync::OnceCell::const_new();

/// Builds critest's images and pushes them to the shared test registry (once
/// per test process: the first conformance test does it, the others find them
/// there), and points `env`'s crustd at it for the registries they name.
pub async fn serve_images(env: &TestEnv) -> Result<()> {
    let pushed = PUSHED
        .get_or_try_init(|| async {
            let bin_dir = binaries::locate()?
                .crustd
                .parent()
                .context("crustd has no directory")?
                .to_path_buf();
            let parts = images::ImageParts::locate(&bin_dir)?;
            let client = RegistryClient::new(&env.images.registry)?;
            images::push_all(&client, &parts).await
        })
        .await?;
    eprintln!(
        "{}: {} images in {}",
        env.name,
        pushed.len(),
        env.images.registry
    );
    mirror_to(&env.daemon.paths().certs_d, &env.images.registry)
}
