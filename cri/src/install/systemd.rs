//! The host's systemd, which runs crustd once it is installed: found by its
//! `/run/systemd/system` directory (as `sd_booted` does) and driven with the
//! host's own `systemctl`, run in the host's mount namespace when the
//! installer runs in a container.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use crust_runtime::sys::host_command::HostNamespace;

use super::files::HostRoot;

/// How long one systemctl call may take (a restart waits for the unit).
const SYSTEMCTL_LIMIT: Duration = Duration::from_secs(120);

/// The unit crustd runs as.
pub const UNIT: &str = "crust.service";

/// Names a systemctl to run here instead of the host's. The end-to-end
/// tests set it to a stub that records its calls, so that no test can
/// reach a real systemd whatever namespace it runs in.
const SYSTEMCTL_OVERRIDE: &str = "CRUST_INSTALL_SYSTEMCTL";

/// A host that runs systemd, with a systemctl this process can run.
pub struct Systemd {
    host: HostNamespace,
    program: String,
}

impl Systemd {
    /// The host's systemd, checked before anything is written: the host
    /// runs it, and its systemctl runs from here. An error says what to do.
    pub fn on(root: &HostRoot) -> Result<Systemd> {
        let marker = root.path("/run/systemd/system");
        if !marker.is_dir() {
            bail!(
                "the host does not run systemd ({} is missing), and crustd install only \
                 installs a systemd unit; nothing was installed. On this host, copy crustd and \
                 crust-shim to /usr/local/bin and run `crustd --config /etc/crust/config.toml` \
                 under its init system (see manifests/crust.service for the settings it needs)",
                marker.display()
            );
        }
        let systemd = match std::env::var(SYSTEMCTL_OVERRIDE) {
            Ok(program) if !program.is_empty() => Systemd {
                host: HostNamespace::here(),
                program,
            },
            _ => Systemd {
                host: HostNamespace::detect()?,
                program: "systemctl".into(),
            },
        };
        systemd
            .systemctl(&["--version"])
            .context("cannot run the host's systemctl; nothing was installed")?;
        Ok(systemd)
    }

    /// Runs `systemctl args`; an error carrying systemctl's own when it fails.
    pub fn systemctl(&self, args: &[&str]) -> Result<()> {
        let out = self.host.run(&self.program, args, SYSTEMCTL_LIMIT)?;
        if !out.status.success() {
            bail!(
                "systemctl {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// Whether `systemctl args` (a query such as `is-active`) succeeds.
    pub fn query(&self, args: &[&str]) -> bool {
        self.host
            .run(&self.program, args, SYSTEMCTL_LIMIT)
            .is_ok_and(|out| out.status.success())
    }
}
