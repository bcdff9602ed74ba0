//! crustd: the crust CRI runtime daemon.

mod check;
mod config;
mod convert;
mod deadline;
mod image_service;
mod install;
mod instrument;
mod metrics;
mod runtime_service;
mod server;
mod stream;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

/// crustd serves the Kubernetes CRI (RuntimeService and ImageService) on a unix socket.
#[derive(Debug, Parser)]
#[command(name = "crustd", version, about)]
struct Cli {
    /// Configuration file; the embedded defaults apply when it does not exist.
    #[arg(long, default_value = "/etc/crust/config.toml", global = true)]
    config: PathBuf,
    /// CRI socket path (overrides `socket`).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Persistent state directory (overrides `root`).
    #[arg(long)]
    root: Option<PathBuf>,
    /// Volatile state directory (overrides `state`).
    #[arg(long)]
    state: Option<PathBuf>,
    /// Log level (overrides `log_level`; RUST_LOG wins over both).
    #[arg(long)]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Configuration helpers.
    Config {
        #[command(subcommand)]
        what: ConfigCommand,
    },
    /// Check this node for what crust needs (run it before and after
    /// install); exits non-zero when anything fails.
    Check,
    /// Install crust on a host running systemd: binaries, unit, config
    /// (kept when present); restarts crust.service when something changed.
    Install {
        #[command(flatten)]
        host: HostArgs,
        /// Then point kubelet at crust's socket (backing up its files) and
        /// restart kubelet; drain the node first.
        #[arg(long, env = "CRUST_SWITCH_KUBELET", value_parser = clap::builder::BoolishValueParser::new())]
        switch_kubelet: bool,
    },
    /// Stay until SIGTERM: the installer DaemonSet's container, which runs
    /// once its init container has installed crust.
    Wait,
    /// Remove what install added (images, state and edited configs stay);
    /// refused while kubelet still uses crust.
    Uninstall {
        #[command(flatten)]
        host: HostArgs,
    },
}

/// Where the host is and where its kubelet keeps its settings.
#[derive(Debug, clap::Args)]
struct HostArgs {
    /// The host's root directory (the DaemonSet mounts it at /host).
    #[arg(long, default_value = "/")]
    host_root: PathBuf,
    /// kubelet's KubeletConfiguration file, on the host.
    #[arg(long, default_value = "/var/lib/kubelet/config.yaml")]
    kubelet_config: PathBuf,
    /// kubeadm's kubelet flags file, on the host.
    #[arg(long, default_value = "/var/lib/kubelet/kubeadm-flags.env")]
    kubelet_flags: PathBuf,
}

impl HostArgs {
    fn options(self, switch_kubelet: bool) -> install::Options {
        install::Options {
            host_root: self.host_root,
            switch_kubelet,
            kubelet: install::kubelet::KubeletFiles {
                config: self.kubelet_config,
                flags: self.kubelet_flags,
            },
        }
    }
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the full default configuration.
    Default,
}

fn main() -> Result<()> {
    crust_runtime::sys::process::return_large_frees();
    let cli = Cli::parse();
    match cli.command {
        None => {}
        Some(Command::Config {
            what: ConfigCommand::Default,
        }) => {
            print!("{}", config::DEFAULT_CONFIG);
            return Ok(());
        }
        Some(Command::Check) => std::process::exit(check::run(&cli.config)),
        Some(Command::Install {
            host,
            switch_kubelet,
        }) => return install::install(&host.options(switch_kubelet)),
        Some(Command::Wait) => return wait_for_stop(),
        Some(Command::Uninstall { host }) => return install::uninstall(&host.options(false)),
    }
    let mut cfg = config::Config::load(&cli.config)?;
    if let Some(s) = cli.socket {
        cfg.socket = s;
    }
    if let Some(r) = cli.root {
        cfg.root = r;
    }
    if let Some(s) = cli.state {
        cfg.state = s;
    }
    if let Some(l) = cli.log_level {
        cfg.log_level = l;
    }
    init_logging(&cfg.log_level)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("crustd")
        .build()
        .context("starting the async runtime")?;
    let served = rt.block_on(server::run(cfg));
    // Work still on the blocking pool (a stop's grace period, a call
    // waiting on runc) must not keep crustd alive once it has stopped
    // serving. What it was doing is recovered at the next start, as after
    // a crash; the runc and CNI calls it was making are killed rather than
    // left to race that recovery.
    rt.shutdown_timeout(BLOCKING_DRAIN);
    crust_runtime::kill_running_helpers();
    served
}

/// Waits for SIGTERM or SIGINT, with handlers for both: as a container's
/// PID 1 it would otherwise ignore them.
fn wait_for_stop() -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("handling SIGTERM")?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        Ok(())
    })
}

/// How long crustd's exit waits for blocking work still under way.
const BLOCKING_DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

fn init_logging(level: &str) -> Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => tracing_subscriber::EnvFilter::new(v),
        _ => tracing_subscriber::EnvFilter::try_new(level)
            .with_context(|| format!("log level {level:?} is not valid"))?,
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    Ok(())
}
