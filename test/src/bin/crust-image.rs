//! `crust-image`: builds the installer image (`make image`) from release
//! binaries as an OCI image layout directory, without Docker; see
//! `crust_e2e::installer_image`. Push it with
//! `skopeo copy oci:<out>:<version> docker://<registry>/crust:<version>`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use crust_e2e::installer_image::{self, Inputs};

/// Builds crust's installer image as an OCI image layout.
#[derive(Debug, Parser)]
#[command(name = "crust-image", about)]
struct Args {
    /// Directory holding the crustd and crust-shim to ship.
    #[arg(long)]
    bin_dir: PathBuf,
    /// The image's version, also its tag in the layout.
    #[arg(long)]
    version: String,
    /// The OCI layout directory to write (a layout there is replaced).
    #[arg(long)]
    out: PathBuf,
    /// The repository's manifests/ directory (for crust.service).
    #[arg(long, default_value_os_t = installer_image::default_manifests_dir())]
    manifests: PathBuf,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("crust-image: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<()> {
    let inputs = Inputs {
        manifests_dir: args.manifests,
        ..Inputs::new(&args.bin_dir, &args.version)?
    };
    let image = installer_image::build_layout(&inputs, &args.out)?;
    let size: usize = image.layers.iter().map(|l| l.data.len()).sum();
    println!(
        "wrote oci:{}:{} (manifest {}, config {}, layer {:.1} MiB)",
        args.out.display(),
        inputs.version,
        image.manifest.digest,
        image.config.digest,
        size as f64 / (1024.0 * 1024.0)
    );
    Ok(())
}
