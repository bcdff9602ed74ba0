//! The reference point for the big-image pulls: `skopeo copy` of the same
//! images from the same registry. skopeo fetches every blob, checks its digest
//! and writes it to disk, but unpacks nothing and records no image: less work
//! than a PullImage, the same network and hashing.
//!
//! Cold: `skopeo copy docker://<registry>/bench-big:1 dir:<tmp>` into an empty
//! directory. Layers shared: `dir:` keeps one image per directory, so the
//! second image is copied into an `oci:` layout that already holds the first
//! (skopeo then fetches only the one missing layer).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::big_image::BigImages;
use super::machine;
use super::metrics as m;
use super::options::Options;
use super::results::{Outcome, RunResult};
use crate::{requirements, unique};

/// The column's name.
pub const SKOPEO: &str = "skopeo";
/// Longest one copy may take.
const COPY_LIMIT: Duration = Duration::from_secs(120);

/// Times `skopeo copy` of the big images, or says why it could not.
pub async fn run(big: Option<&BigImages>, options: &Options) -> RunResult {
    let mut result = RunResult::new(SKOPEO);
    let Some(big) = big else {
        result.outcome = Outcome::Unavailable("the big-image case did not run".into());
        return result;
    };
    let Some(program) = requirements::find_program("skopeo") else {
        result.outcome = Outcome::Unavailable(
            "skopeo is not installed (`make bench` installs Debian's skopeo)".into(),
        );
        return result;
    };
    result.version = machine::tool_version("skopeo").unwrap_or_default();
    let dir = std::env::temp_dir().join(format!("crust-bench-skopeo-{}", unique::suffix()));
    let outcome = copies(&program, &dir, big, options, &mut result).await;
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = outcome {
        result.fail(&e);
    }
    result.note(
        "skopeo copy: fetch + digest check + write each blob (no decompression, no unpack); cold into an empty dir:, shared into an oci: layout holding the first image",
    );
    result
}

async fn copies(
    program: &Path,
    dir: &Path,
    big: &BigImages,
    options: &Options,
    result: &mut RunResult,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let source = |tag: &str| {
        format!(
            "docker://{}/{}:{tag}",
            big.registry,
            super::big_image::REPOSITORY
        )
    };
    for round in 0..=options.big_pulls {
        let cold = dir.join(format!("cold-{round}"));
        let started = Instant::now();
        copy(
            program,
            &source(&big.first.tag),
            &format!("dir:{}", cold.display()),
        )
        .await?;
        let elapsed = started.elapsed();
        remove(&cold)?;

        let layout = dir.join(format!("layout-{round}"));
        let oci = |tag: &str| format!("oci:{}:{tag}", layout.display());
        copy(program, &source(&big.first.tag), &oci("first")).await?;
        let started = Instant::now();
        copy(program, &source(&big.second.tag), &oci("second")).await?;
        let shared = started.elapsed();
        remove(&layout)?;
        if round > 0 {
            result.samples(m::PULL_BIG_COLD).push(elapsed);
            result.samples(m::PULL_BIG_SHARED).push(shared);
        }
    }
    Ok(())
}

fn remove(dir: &PathBuf) -> Result<()> {
    std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))
}

/// One `skopeo copy` over plain HTTP, without a signature policy file.
async fn copy(program: &Path, source: &str, destination: &str) -> Result<()> {
    let mut command = tokio::process::Command::new(program);
    command
        .args([
            "--insecure-policy",
            "copy",
            "--quiet",
            "--src-tls-verify=false",
        ])
        .arg(source)
        .arg(destination)
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(COPY_LIMIT, command.output())
        .await
        .map_err(|_| anyhow::anyhow!("skopeo copy {source} took longer than {COPY_LIMIT:?}"))?
        .with_context(|| format!("running {}", program.display()))?;
    if !output.status.success() {
        bail!(
            "skopeo copy {source} {destination}: {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}
