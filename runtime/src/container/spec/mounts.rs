//! Mounts: the default filesystems, the pod's shared files and /dev/shm, the
//! request's bind mounts (host paths resolved beforehand), rootfs
//! propagation, and the masked and read-only paths.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{Mount, MountBuilder};

use super::{SpecInput, internal};
use crate::container::config::{ContainerConfig, Propagation, SecurityContext};
use crate::{Error, Result};

/// Paths masked in a non-privileged container unless the request lists its own.
const DEFAULT_MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths read-only in a non-privileged container unless the request lists its own.
const DEFAULT_READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The paths masked in the container: none when privileged, else the
/// request's or the defaults.
pub(super) fn masked_paths(sec: &SecurityContext) -> Option<Vec<String>> {
    (!sec.privileged).then(|| {
        sec.masked_paths
            .clone()
            .unwrap_or_else(|| DEFAULT_MASKED_PATHS.iter().map(|s| s.to_string()).collect())
    })
}

/// The paths read-only in the container: none when privileged, else the
/// request's or the defaults.
pub(super) fn readonly_paths(sec: &SecurityContext) -> Option<Vec<String>> {
    (!sec.privileged).then(|| {
        sec.readonly_paths.clone().unwrap_or_else(|| {
            DEFAULT_READONLY_PATHS
                .iter()
                .map(|s| s.to_string())
                .collect()
        })
    })
}

/// The root's propagation: rshared when a mount is bidirectional, rslave
/// when one receives host mounts, else the runtime's default.
pub(super) fn rootfs_propagation(cfg: &ContainerConfig) -> Option<&'static str> {
    if cfg
        .mounts
        .iter()
        .any(|m| m.propagation == Propagation::Bidirectional)
    {
        Some("rshared")
    } else if cfg
        .mounts
        .iter()
        .any(|m| m.propagation == Propagation::HostToContainer)
    {
        Some("rslave")
    } else {
        None
    }
}

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Result<Mount> {
    MountBuilder::default()
        .destination(PathBuf::from(dest))
        .typ(typ.to_string())
        .source(PathBuf::from(source))
        .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()
        .map_err(internal)
}

/// The container's mounts: the defaults the request does not replace, then
/// the request's own.
pub(super) fn mounts(input: &SpecInput<'_>) -> Result<Vec<Mount>> {
    let cfg = input.config;
    let sb = input.sandbox;
    let privileged = cfg.security.privileged;
    let ro = if privileged { "rw" } else { "ro" };
    let requested: HashSet<PathBuf> = cfg
        .mounts
        .iter()
        .map(|m| normalize(&m.container_path))
        .collect();
    let mut out = Vec::new();
    let mut add = |m: Mount| {
        if !requested.contains(&normalize(&m.destination().to_string_lossy())) {
            out.push(m);
        }
    };
    add(mount(
        "/proc",
        "proc",
        "proc",
        &["nosuid", "noexec", "nodev"],
    )?);
    add(mount(
        "/dev",
        "tmpfs",
        "tmpfs",
        &["nosuid", "strictatime", "mode=755", "size=65536k"],
    )?);
    add(mount(
        "/dev/pts",
        "devpts",
        "devpts",
        &[
            "nosuid",
            "noexec",
            "newinstance",
            "ptmxmode=0666",
            "mode=0620",
            "gid=5",
        ],
    )?);
    add(mount(
        "/dev/mqueue",
        "mqueue",
        "mqueue",
        &["nosuid", "noexec", "nodev"],
    )?);
    add(mount(
        "/sys",
        "sysfs",
        "sysfs",
        &["nosuid", "noexec", "nodev", ro],
    )?);
    add(mount(
        "/sys/fs/cgroup",
        "cgroup",
        "cgroup",
        &["nosuid", "noexec", "nodev", "relatime", ro],
    )?);
    let files_mode = if cfg.security.readonly_rootfs {
        "ro"
    } else {
        "rw"
    };
    for (dest, src) in [
        ("/etc/hostname", sb.hostname_file()),
        ("/etc/hosts", sb.hosts_file()),
        ("/etc/resolv.conf", sb.resolv_file()),
    ] {
        add(mount(
            dest,
            "bind",
            &src.to_string_lossy(),
            &["rbind", "rprivate", files_mode],
        )?);
    }
    add(mount(
        "/dev/shm",
        "bind",
        &sb.shm.to_string_lossy(),
        &["rbind", "rprivate", "rw"],
    )?);
    for (i, m) in cfg.mounts.iter().enumerate() {
        let host = match input.host.mount_sources.get(&m.host_path) {
            Some(Ok(resolved)) => input.staged_mounts.get(&i).unwrap_or(resolved),
            Some(Err(e)) => return Err(unusable(m, e)),
            None => return Err(unusable(m, "it was not looked up on the host")),
        };
        let mut options = vec!["rbind"];
        options.push(match m.propagation {
            Propagation::Private => "rprivate",
            Propagation::HostToContainer => "rslave",
            Propagation::Bidirectional => "rshared",
        });
        options.push(if m.readonly { "ro" } else { "rw" });
        out.push(mount(
            &m.container_path,
            "bind",
            &host.to_string_lossy(),
            &options,
        )?);
    }
    Ok(out)
}

fn unusable(m: &crate::container::config::Mount, why: &str) -> Error {
    Error::invalid(format!(
        "host path {:?} of the mount at {:?} is not usable: {why}",
        m.host_path, m.container_path
    ))
}

fn normalize(p: &str) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in Path::new(p).components() {
        if let std::path::Component::Normal(n) = c {
            out.push(n);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use oci_spec::runtime::Capability;

    use super::*;
    use crate::container::config::Mount as CriMount;
    use crate::container::spec::fixtures::{build_facts, build_with, config, facts, sandbox};

    #[test]
    fn cri_mount_replaces_default_and_caps_change() {
        let mut c = config();
        c.mounts = vec![CriMount {
            container_path: "/etc/hosts".into(),
            host_path: "/srv/hosts".into(),
            readonly: true,
            ..Default::default()
        }];
        c.security.add_capabilities = vec!["NET_ADMIN".into()];
        c.security.drop_capabilities = vec!["CAP_CHOWN".into()];
        let spec = build_with(&c).unwrap();
        let hosts: Vec<_> = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .filter(|m| m.destination() == Path::new("/etc/hosts"))
            .collect();
        assert_eq!(hosts.len(), 1);
        assert!(
            hosts[0]
                .options()
                .as_ref()
                .unwrap()
                .contains(&"ro".to_string())
        );
        let caps = spec
            .process()
            .as_ref()
            .unwrap()
            .capabilities()
            .as_ref()
            .unwrap()
            .clone();
        assert!(
            caps.bounding()
                .as_ref()
                .unwrap()
                .contains(&Capability::NetAdmin)
        );
        assert!(
            !caps
                .bounding()
                .as_ref()
                .unwrap()
                .contains(&Capability::Chown)
        );

        c.security.add_capabilities = vec!["NOT_A_CAP".into()];
        assert!(matches!(build_with(&c), Err(Error::InvalidArgument(_))));
    }

    #[test]
    fn a_bind_mount_uses_the_resolved_host_path() {
        let mut c = config();
        c.mounts = vec![CriMount {
            container_path: "/data/".into(),
            host_path: "/srv/link".into(),
            readonly: true,
            propagation: Propagation::HostToContainer,
            ..Default::default()
        }];
        let mut host = facts();
        host.mount_sources
            .insert("/srv/link".into(), Ok(PathBuf::from("/srv/real")));
        let spec = build_facts(&c, &sandbox(), &host).unwrap();
        let data = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.destination() == Path::new("/data/"))
            .unwrap()
            .clone();
        assert_eq!(data.source().as_deref(), Some(Path::new("/srv/real")));
        assert_eq!(
            data.options().as_deref(),
            Some(&["rbind", "rslave", "ro"].map(String::from)[..])
        );
        assert_eq!(
            spec.linux()
                .as_ref()
                .unwrap()
                .rootfs_propagation()
                .as_deref(),
            Some("rslave")
        );

        host.mount_sources
            .insert("/srv/link".into(), Err("No such file".into()));
        let err = build_facts(&c, &sandbox(), &host).unwrap_err();
        assert!(matches!(
            err,
            Error::InvalidArgument(m) if m == "host path \"/srv/link\" of the mount at \"/data/\" is not usable: No such file"
        ));
    }

    #[test]
    fn privileged_containers_have_nothing_masked() {
        let mut c = config();
        assert!(
            masked_paths(&c.security)
                .unwrap()
                .contains(&"/proc/kcore".into())
        );
        assert!(
            readonly_paths(&c.security)
                .unwrap()
                .contains(&"/proc/sys".into())
        );
        c.security.readonly_paths = Some(Vec::new());
        assert_eq!(readonly_paths(&c.security), Some(Vec::new()));
        c.security.privileged = true;
        assert_eq!(masked_paths(&c.security), None);
        assert_eq!(readonly_paths(&c.security), None);
    }
}
