//! `crustd install` and `crustd uninstall`: put crust on a host (the
//! installer DaemonSet runs it with the host's root at `/host`; an operator
//! may run it by hand with `--host-root /`) and take it off again.
//!
//! Install checks the host first (systemd, a valid config, the default OCI
//! runtime, CNI plugins) and writes nothing unless all hold. It then copies
//! crustd and crust-shim (from beside the running crustd), the systemd unit,
//! and the config and crictl.yaml where there are none, each only when it
//! differs; and (re)starts crust.service only when something changed. A
//! restart leaves containers running: the unit kills crustd alone, and the
//! shims carry on. Uninstall removes what install added and leaves images,
//! state, edited configs and other runtimes alone.

pub mod files;
pub mod kubelet;
pub mod systemd;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::config::{Config, DEFAULT_CONFIG};
use files::{HostRoot, Outcome};
use kubelet::KubeletFiles;
use systemd::{Systemd, UNIT};

/// Where install puts crustd and crust-shim on the host.
const BIN_DIR: &str = "/usr/local/bin";
/// The unit file's place on the host.
const UNIT_PATH: &str = "/etc/systemd/system/crust.service";
/// The config file's place on the host (the unit's `--config`).
const CONFIG_PATH: &str = "/etc/crust/config.toml";
/// crictl's config file on the host.
const CRICTL_PATH: &str = "/etc/crictl.yaml";
/// The systemd unit crustd runs under.
pub const UNIT_TEXT: &str = include_str!("../../../manifests/crust.service");
/// Present from the moment install writes files until crust.service has
/// been restarted on them (in the host's /run, so a reboot clears it).
const RESTART_PENDING: &str = "/run/crust.restart-pending";
/// The binaries install copies, from beside the running crustd.
const BINARIES: [&str; 2] = ["crustd", "crust-shim"];

/// What `crustd install` and `crustd uninstall` are asked to do.
#[derive(Clone, Debug)]
pub struct Options {
    /// The host's root directory.
    pub host_root: PathBuf,
    /// Point kubelet at crust once it serves (install only).
    pub switch_kubelet: bool,
    /// kubelet's files on the host: the ones to switch, and those that must
    /// not point at crust any more when it is uninstalled.
    pub kubelet: KubeletFiles,
}

/// Installs crust on the host at `opts.host_root`.
pub fn install(opts: &Options) -> Result<()> {
    let host = HostRoot::new(&opts.host_root)?;
    let systemd = Systemd::on(&host)?;
    let config_path = host.path(CONFIG_PATH);
    let existing_config = read_optional(&config_path)?;
    let cfg = match &existing_config {
        Some(text) => Config::parse(text).with_context(|| {
            format!(
                "the host's {CONFIG_PATH} is not a valid crust config; fix it or move it away \
                 (nothing was installed)"
            )
        })?,
        None => Config::default(),
    };
    check_host(&host, &cfg)?;
    let sources = binaries()?;

    // Until crust.service runs what is written below, a restart is owed: a
    // run cut short after writing leaves this mark for the next one.
    let pending = host.path(RESTART_PENDING);
    let owed = pending.exists();
    files::write_atomically(&pending, b"", 0o644)?;
    let mut changed = false;
    for (name, source) in &sources {
        let content =
            std::fs::read(source).with_context(|| format!("reading {}", source.display()))?;
        let target = Path::new(BIN_DIR).join(name);
        let outcome = files::put(&host.path(&target), &content, 0o755)?;
        report(&target, outcome);
        changed |= outcome.changed();
    }
    let unit = files::put(&host.path(UNIT_PATH), UNIT_TEXT.as_bytes(), 0o644)?;
    report(Path::new(UNIT_PATH), unit);
    let config = files::put_if_absent(&config_path, DEFAULT_CONFIG.as_bytes(), 0o644)?;
    report(Path::new(CONFIG_PATH), config);
    let crictl = files::put_if_absent(
        &host.path(CRICTL_PATH),
        crictl_yaml(&cfg.socket).as_bytes(),
        0o644,
    )?;
    report(Path::new(CRICTL_PATH), crictl);
    changed |= unit.changed() || config.changed();

    if unit.changed() || owed {
        systemd.systemctl(&["daemon-reload"])?;
    }
    if unit.changed() || owed || !systemd.query(&["is-enabled", "--quiet", UNIT]) {
        systemd.systemctl(&["enable", UNIT])?;
    }
    let socket = host.path(&cfg.socket);
    if changed || owed {
        systemd.systemctl(&["restart", UNIT])?;
        wait_serving(&socket)?;
        println!("restarted {UNIT}: running containers carry on under their shims");
    } else if !systemd.query(&["is-active", "--quiet", UNIT]) {
        systemd.systemctl(&["start", UNIT])?;
        wait_serving(&socket)?;
        println!("started {UNIT}");
    } else {
        println!("crust is installed and running: nothing to change");
    }
    files::remove(&pending)?;

    if opts.switch_kubelet {
        kubelet::switch(
            &host,
            &opts.kubelet,
            &kubelet::endpoint(&cfg.socket),
            &cfg.socket,
            &systemd,
        )?;
    }
    Ok(())
}

/// Removes what install added from the host at `opts.host_root`.
pub fn uninstall(opts: &Options) -> Result<()> {
    let host = HostRoot::new(&opts.host_root)?;
    let systemd = Systemd::on(&host)?;
    let config_path = host.path(CONFIG_PATH);
    let existing_config = read_optional(&config_path)?;
    let cfg = existing_config
        .as_deref()
        .and_then(|t| Config::parse(t).ok())
        .unwrap_or_default();
    let endpoint = kubelet::endpoint(&cfg.socket);
    if kubelet::uses(&host, &opts.kubelet, &endpoint) {
        bail!(
            "kubelet still uses crust ({endpoint} in {} or {}): drain the node, point kubelet \
             back at its former runtime (the files' {} copies) and restart kubelet first; \
             nothing was removed",
            opts.kubelet.config.display(),
            opts.kubelet.flags.display(),
            kubelet::BACKUP_SUFFIX
        );
    }
    let pods = pod_records(&host, &cfg);
    if pods > 0 {
        bail!(
            "crust still has {pods} pods; with crustd gone nothing could stop them. Remove \
             them first (`crictl --runtime-endpoint {endpoint} rmp -fa`); nothing was removed"
        );
    }
    if host.path(UNIT_PATH).exists() {
        systemd.systemctl(&["disable", "--now", UNIT])?;
        println!("stopped and disabled {UNIT}");
    }
    let mut removed_unit = false;
    for target in [UNIT_PATH]
        .into_iter()
        .map(PathBuf::from)
        .chain(BINARIES.iter().map(|b| Path::new(BIN_DIR).join(b)))
    {
        if files::remove(&host.path(&target))? {
            println!("removed {}", target.display());
            removed_unit |= target == Path::new(UNIT_PATH);
        }
    }
    if removed_unit {
        systemd.systemctl(&["daemon-reload"])?;
    }
    files::remove(&host.path(RESTART_PENDING))?;
    remove_if_ours(
        &host.path(CONFIG_PATH),
        DEFAULT_CONFIG,
        CONFIG_PATH,
        existing_config.as_deref(),
    )?;
    let crictl = read_optional(&host.path(CRICTL_PATH))?;
    remove_if_ours(
        &host.path(CRICTL_PATH),
        &crictl_yaml(&cfg.socket),
        CRICTL_PATH,
        crictl.as_deref(),
    )?;
    let _ = std::fs::remove_dir(host.path("/etc/crust"));
    println!(
        "left alone: {} and {} (images and state), other runtimes",
        cfg.root.display(),
        cfg.state.display()
    );
    Ok(())
}

/// How many pods crust keeps records of on the host.
fn pod_records(host: &HostRoot, cfg: &Config) -> usize {
    std::fs::read_dir(host.path(crust_runtime::runtime::sandbox_records_dir(&cfg.root)))
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                .count()
        })
        .unwrap_or(0)
}

/// How long install waits for crust's socket to answer after a (re)start.
const SERVING_WAIT: Duration = Duration::from_secs(60);

/// Waits until crust's socket (`socket`, as seen from here) accepts
/// connections: a crustd that cannot start on this host (a binary its
/// libraries cannot run, a config it refuses) fails the install.
pub fn wait_serving(socket: &Path) -> Result<()> {
    let start = Instant::now();
    loop {
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            return Ok(());
        }
        if start.elapsed() > SERVING_WAIT {
            bail!(
                "crust is not serving on {} {}s after its start: see `journalctl -u crust` and \
                 `crustd check` on the host",
                socket.display(),
                SERVING_WAIT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Checks what crust needs of the host, before anything is written.
fn check_host(host: &HostRoot, cfg: &Config) -> Result<()> {
    for (name, handler) in &cfg.runtimes {
        if host_has(host, &handler.binary) {
            continue;
        }
        if *name == cfg.runtime.default_runtime {
            bail!(
                "the default OCI runtime {name:?} ({:?}) is not installed on the host: install it \
                 (on Debian, `apt-get install runc`) or set runtimes.{name}.binary in \
                 {CONFIG_PATH}; nothing was installed",
                handler.binary
            );
        }
        println!(
            "warning: runtime handler {name:?} ({:?}) is not installed on the host: pods of its \
             RuntimeClass will be refused",
            handler.binary
        );
    }
    let has_plugins =
        cfg.cni.plugin_dirs.iter().any(|d| {
            std::fs::read_dir(host.path(d)).is_ok_and(|mut entries| entries.next().is_some())
        });
    if !has_plugins {
        bail!(
            "no CNI plugins on the host in {}: install your pod network's plugins (on Debian, \
             `apt-get install containernetworking-plugins`) or set cni.plugin_dirs in \
             {CONFIG_PATH}; nothing was installed",
            list(&cfg.cni.plugin_dirs)
        );
    }
    Ok(())
}

/// Whether the host has `binary` (a path, or a name looked up in the
/// host's usual binary directories).
fn host_has(host: &HostRoot, binary: &str) -> bool {
    if binary.contains('/') {
        return host.path(binary).is_file();
    }
    crust_runtime::sys::host_command::find_program(&host.path("/"), binary).is_some()
}

/// crustd and crust-shim beside the running crustd.
fn binaries() -> Result<Vec<(&'static str, PathBuf)>> {
    let exe = std::env::current_exe().context("locating crustd")?;
    BINARIES
        .iter()
        .map(|name| {
            let p = exe.with_file_name(name);
            if !p.is_file() {
                bail!("{name} not found beside crustd at {}", p.display());
            }
            Ok((*name, p))
        })
        .collect()
}

/// crictl's config pointing at crust's socket.
fn crictl_yaml(socket: &Path) -> String {
    let endpoint = kubelet::endpoint(socket);
    format!(
        "# Written by crustd install: point crictl at crust.\n\
         runtime-endpoint: {endpoint}\n\
         image-endpoint: {endpoint}\n\
         timeout: 10\n"
    )
}

/// Removes the file at `path` (the host's `shown`) when it holds what
/// install writes; a file someone changed is kept.
fn remove_if_ours(path: &Path, ours: &str, shown: &str, current: Option<&str>) -> Result<()> {
    match current {
        Some(text) if text == ours => {
            files::remove(path)?;
            println!("removed {shown}");
        }
        Some(_) => println!("kept {shown}: it was changed after install"),
        None => {}
    }
    Ok(())
}

fn read_optional(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn report(target: &Path, outcome: Outcome) {
    let what = match outcome {
        Outcome::Created => "installed",
        Outcome::Replaced => "replaced",
        Outcome::Unchanged => "unchanged",
        Outcome::Kept => "kept the existing",
    };
    println!("{what} {}", target.display());
}

fn list(dirs: &[PathBuf]) -> String {
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
