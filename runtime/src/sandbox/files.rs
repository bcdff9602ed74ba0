//! The files every container of a pod shares: /etc/hostname, /etc/hosts and
//! /etc/resolv.conf.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result};

use super::config::{DnsConfig, SandboxConfig};

const DEFAULT_HOSTS: &str = "127.0.0.1\tlocalhost\n\
::1\tlocalhost ip6-localhost ip6-loopback\n\
fe00::0\tip6-localnet\n\
ff00::0\tip6-mcastprefix\n\
ff02::1\tip6-allnodes\n\
ff02::2\tip6-allrouters\n";

/// The pod's hostname: the configured one, else the node's.
pub fn effective_hostname(cfg: &SandboxConfig) -> Result<String> {
    if !cfg.hostname.is_empty() {
        return Ok(cfg.hostname.clone());
    }
    Ok(nix::unistd::gethostname()
        .context("reading the node's hostname")?
        .to_string_lossy()
        .into_owned())
}

/// Writes hostname, hosts and resolv.conf for the pod into `dir`.
pub fn write_all(dir: &Path, cfg: &SandboxConfig, hostname: &str) -> Result<()> {
    write(&dir.join("hostname"), &format!("{hostname}\n"))?;

    let hosts = if cfg.host_network() {
        host_file("/etc/hosts").unwrap_or_else(|| DEFAULT_HOSTS.to_string())
    } else {
        DEFAULT_HOSTS.to_string()
    };
    write(&dir.join("hosts"), &hosts)?;

    let resolv = match &cfg.dns {
        Some(dns) => resolv_conf(dns),
        None => host_file("/etc/resolv.conf").unwrap_or_default(),
    };
    write(&dir.join("resolv.conf"), &resolv)
}

/// Largest host file copied into a pod.
const MAX_HOST_FILE: u64 = 1 << 20;

/// A host file the pod gets a copy of; `None` when it is missing, not a
/// regular file or larger than [`MAX_HOST_FILE`].
fn host_file(path: &str) -> Option<String> {
    let file = crate::fsutil::open_nonblocking(Path::new(path), false).ok()?;
    match crate::fsutil::read_regular_capped(file, MAX_HOST_FILE) {
        Ok(data) => Some(String::from_utf8_lossy(&data).into_owned()),
        Err(why) => {
            tracing::warn!(path, "the host file {why}; pods do not get a copy");
            None
        }
    }
}

fn write(path: &Path, content: &str) -> Result<()> {
    fs::write(path, content).with_context(|| format!("writing {}", path.display()))
}

/// resolv.conf text for a CRI DNSConfig.
pub fn resolv_conf(dns: &DnsConfig) -> String {
    let mut out = String::new();
    if !dns.searches.is_empty() {
        out.push_str(&format!("search {}\n", dns.searches.join(" ")));
    }
    for s in &dns.servers {
        out.push_str(&format!("nameserver {s}\n"));
    }
    if !dns.options.is_empty() {
        out.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_format() {
        let dns = DnsConfig {
            servers: vec!["10.0.0.10".into(), "10.0.0.11".into()],
            searches: vec![
                "default.svc.cluster.local".into(),
                "svc.cluster.local".into(),
            ],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(
            resolv_conf(&dns),
            "search default.svc.cluster.local svc.cluster.local\n\
             nameserver 10.0.0.10\nnameserver 10.0.0.11\noptions ndots:5\n"
        );
    }
}
