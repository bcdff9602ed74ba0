//! The benchmark's knobs, from the command line or the environment.
//!
//! `crust-bench [--n N] [--pulls N] [--big-pulls N] [--json PATH] [--no-containerd]`,
//! or `CRUST_BENCH_N`, `CRUST_BENCH_PULLS`, `CRUST_BENCH_BIG_PULLS`,
//! `CRUST_BENCH_JSON`, `CRUST_BENCH_NO_CONTAINERD=1`, `CRUST_BENCH_MARKDOWN`. Flags win over the
//! environment.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

/// Default number of pods (and containers) per runtime.
pub const DEFAULT_N: usize = 30;
/// Default number of cold pulls of each image per runtime.
pub const DEFAULT_PULLS: usize = 15;
/// Default number of rounds of the big-image pulls per runtime.
pub const DEFAULT_BIG_PULLS: usize = 5;

/// What to run and where to write the report.
#[derive(Debug, Clone)]
pub struct Options {
    /// Pods started per runtime (each with one `sleep` container), all kept
    /// running until the last one has started.
    pub n: usize,
    /// Cold pulls of each image per runtime.
    pub pulls: usize,
    /// Rounds of the big-image case (a cold pull of the first big image, then
    /// the second sharing 4 of its 5 layers) per runtime; 0 skips the case.
    pub big_pulls: usize,
    /// Where the JSON report goes.
    pub json: PathBuf,
    /// Whether to run containerd as the peer.
    pub containerd: bool,
    /// Where `BENCHMARKS.md` goes, if anywhere (`CRUST_BENCH_MARKDOWN`).
    pub markdown: Option<PathBuf>,
}

impl Options {
    /// Reads the environment, then the command-line flags.
    pub fn parse() -> Result<Self> {
        let mut options = Self {
            n: env_number("CRUST_BENCH_N")?.unwrap_or(DEFAULT_N),
            pulls: env_number("CRUST_BENCH_PULLS")?.unwrap_or(DEFAULT_PULLS),
            big_pulls: env_number("CRUST_BENCH_BIG_PULLS")?.unwrap_or(DEFAULT_BIG_PULLS),
            json: std::env::var_os("CRUST_BENCH_JSON")
                .map(PathBuf::from)
                .unwrap_or_else(default_json_path),
            containerd: std::env::var_os("CRUST_BENCH_NO_CONTAINERD").is_none(),
            markdown: std::env::var_os("CRUST_BENCH_MARKDOWN").map(PathBuf::from),
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--n" => options.n = number(&arg, args.next())?,
                "--pulls" => options.pulls = number(&arg, args.next())?,
                "--big-pulls" => options.big_pulls = number(&arg, args.next())?,
                "--json" => {
                    options.json = PathBuf::from(args.next().context("--json needs a path")?)
                }
                "--no-containerd" => options.containerd = false,
                "-h" | "--help" => {
                    println!(
                        "usage: crust-bench [--n N] [--pulls N] [--big-pulls N] [--json PATH] [--no-containerd]"
                    );
                    std::process::exit(0);
                }
                other => bail!("unknown argument {other:?} (try --help)"),
            }
        }
        if options.n == 0 || options.pulls == 0 {
            bail!("--n and --pulls must be at least 1");
        }
        Ok(options)
    }
}

/// `<workspace>/target/crust-bench/report.json`.
fn default_json_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target")
        .join("crust-bench")
        .join("report.json")
}

fn env_number(key: &str) -> Result<Option<usize>> {
    match std::env::var(key) {
        Ok(v) => Ok(Some(
            v.trim()
                .parse()
                .with_context(|| format!("{key}={v:?} is not a number"))?,
        )),
        Err(_) => Ok(None),
    }
}

fn number(flag: &str, value: Option<String>) -> Result<usize> {
    let value = value.with_context(|| format!("{flag} needs a number"))?;
    value
        .parse()
        .with_context(|| format!("{flag} {value:?} is not a number"))
}
