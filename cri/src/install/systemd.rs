//! The host's systemd, which runs crustd once it is installed: found by its
//! `/run/systemd/system` directory (as `sd_booted` does) and driven with the
//! host's own `systemctl`, run in the host's mount namespace when the
//! installer runs in a container.

use std::time::Duration;

use anyhow::{Result, bail};
use crust_runtime::sys::host_command::HostNamespace;

use super::files::HostRoot;

/// How long one systemctl call may take (a restart waits for the unit).
const SYSTEMCTL_LIMIT: Duration = Duration::from_secs(120);

/// The unit crustd runs as.
pub const UNIT: &str = "crust.service";

/// A host that runs systemd.
pub struct Systemd {
    host: HostNamespace,
}

impl Systemd {
    /// The host's systemd; an error saying what to do on a host without it.
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
        Ok(Systemd {
            host: HostNamespace::detect()?,
        })
    }

    /// Runs `systemctl args`; an error carrying systemctl's own when it fails.
    pub fn systemctl(&self, args: &[&str]) -> Result<()> {
        let out = self.host.run("systemctl", args, SYSTEMCTL_LIMIT)?;
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
            .run("systemctl", args, SYSTEMCTL_LIMIT)
            .is_ok_and(|out| out.status.success())
    }
}
