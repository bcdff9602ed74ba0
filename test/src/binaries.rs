//! Locating the `crustd` and `crust-shim` binaries built by cargo.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// Paths of the crust binaries under test.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// The CRI daemon.
    pub crustd: PathBuf,
    /// The per-container shim that crustd spawns.
    pub shim: PathBuf,
}

/// Finds the binaries in `$CRUST_BIN_DIR`, or else in the cargo target directory
/// the test executable lives in (`target/<profile>/deps/<test>` → `target/<profile>`).
pub fn locate() -> Result<Binaries> {
    let dir = match std::env::var_os("CRUST_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => target_dir()?,
    };
    let crustd = dir.join("crustd");
    let shim = dir.join("crust-shim");
    for bin in [&crustd, &shim] {
        if !is_executable(bin) {
            bail!(
                "{} not found: run `cargo build --workspace` first (or set CRUST_BIN_DIR)",
                bin.display()
            );
        }
    }
    Ok(Binaries { crustd, shim })
}

fn target_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("finding the test executable")?;
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .with_context(|| format!("{} has no grandparent directory", exe.display()))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}
