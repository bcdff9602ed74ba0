//! Devices: the nodes a request names (looked up on the host beforehand),
//! every host device for a privileged container, and the device cgroup
//! rules that go with them.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxDevice, LinuxDeviceCgroup, LinuxDeviceCgroupBuilder};

use super::{HostFacts, internal};
use crate::container::config::ContainerConfig;
use crate::{Error, Result};

/// What the host holds at a path a request names as a device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostDevice {
    /// A character or block device node; its path is the host path.
    Node(LinuxDevice),
    /// Something that is not a device node.
    NotADevice,
    /// Nothing usable: the system's reason.
    Unusable(String),
}

/// The device nodes the container gets: those the request names, then,
/// for a privileged container, every one under the host's /dev.
pub(super) fn devices(cfg: &ContainerConfig, host: &HostFacts) -> Result<Vec<LinuxDevice>> {
    let mut devices = requested(cfg, host)?;
    if cfg.security.privileged {
        devices.extend(host.host_devices.iter().cloned());
    }
    Ok(devices)
}

/// The device cgroup rules: everything allowed for a privileged container;
/// otherwise everything denied but the nodes the request names, each with
/// its permissions ("rwm" when it gives none).
pub(super) fn cgroup_rules(
    cfg: &ContainerConfig,
    host: &HostFacts,
) -> Result<Vec<LinuxDeviceCgroup>> {
    let privileged = cfg.security.privileged;
    let mut rules = vec![
        LinuxDeviceCgroupBuilder::default()
            .allow(privileged)
            .access("rwm")
            .build()
            .map_err(internal)?,
    ];
    if privileged {
        return Ok(rules);
    }
    for d in requested(cfg, host)? {
        let perms = cfg
            .devices
            .iter()
            .find(|cd| Path::new(&cd.container_path) == d.path())
            .map_or("rwm".to_string(), |cd| {
                if cd.permissions.is_empty() {
                    "rwm".to_string()
                } else {
                    cd.permissions.clone()
                }
            });
        rules.push(
            LinuxDeviceCgroupBuilder::default()
                .allow(true)
                .typ(d.typ())
                .major(d.major())
                .minor(d.minor())
                .access(perms)
                .build()
                .map_err(internal)?,
        );
    }
    Ok(rules)
}

/// The nodes the request names, at their container paths.
fn requested(cfg: &ContainerConfig, host: &HostFacts) -> Result<Vec<LinuxDevice>> {
    cfg.devices
        .iter()
        .map(|d| match host.requested_devices.get(&d.host_path) {
            Some(HostDevice::Node(node)) => {
                let mut node = node.clone();
                node.set_path(PathBuf::from(&d.container_path));
                Ok(node)
            }
            Some(HostDevice::NotADevice) => Err(Error::invalid(format!(
                "{:?} is not a device node",
                d.host_path
            ))),
            Some(HostDevice::Unusable(e)) => Err(Error::invalid(format!(
                "device {:?} is not usable: {e}",
                d.host_path
            ))),
            None => Err(Error::invalid(format!(
                "device {:?} is not usable: it was not looked up on the host",
                d.host_path
            ))),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use oci_spec::runtime::{LinuxDeviceBuilder, LinuxDeviceType};

    use super::*;
    use crate::container::config::Device;
    use crate::container::spec::fixtures::{build_facts, config, facts, privileged_pod};

    fn node(path: &str, typ: LinuxDeviceType, major: i64, minor: i64) -> LinuxDevice {
        LinuxDeviceBuilder::default()
            .path(PathBuf::from(path))
            .typ(typ)
            .major(major)
            .minor(minor)
            .file_mode(0o666u32)
            .uid(0u32)
            .gid(0u32)
            .build()
            .unwrap()
    }

    fn device(container: &str, host: &str, permissions: &str) -> Device {
        Device {
            container_path: container.into(),
            host_path: host.into(),
            permissions: permissions.into(),
        }
    }

    #[test]
    fn requested_nodes_appear_at_their_container_paths_with_their_rules() {
        let mut c = config();
        c.devices = vec![
            device("/dev/xnull", "/dev/null", "rw"),
            device("/dev/disk0", "/dev/sda", ""),
        ];
        let mut host = facts();
        host.requested_devices = [
            (
                "/dev/null".to_string(),
                HostDevice::Node(node("/dev/null", LinuxDeviceType::C, 1, 3)),
            ),
            (
                "/dev/sda".to_string(),
                HostDevice::Node(node("/dev/sda", LinuxDeviceType::B, 8, 0)),
            ),
        ]
        .into();
        host.host_devices = vec![node("/dev/kmsg", LinuxDeviceType::C, 1, 11)];
        let nodes = devices(&c, &host).unwrap();
        assert_eq!(
            nodes,
            vec![
                node("/dev/xnull", LinuxDeviceType::C, 1, 3),
                node("/dev/disk0", LinuxDeviceType::B, 8, 0)
            ],
            "only a privileged container gets the host's devices"
        );
        let rules = cgroup_rules(&c, &host).unwrap();
        let summary: Vec<_> = rules
            .iter()
            .map(|r| (r.allow(), r.major(), r.minor(), r.access().clone()))
            .collect();
        assert_eq!(
            summary,
            vec![
                (false, None, None, Some("rwm".to_string())),
                (true, Some(1), Some(3), Some("rw".to_string())),
                (true, Some(8), Some(0), Some("rwm".to_string())),
            ]
        );
    }

    #[test]
    fn a_privileged_container_gets_every_host_device_and_all_access() {
        let mut c = config();
        c.security.privileged = true;
        c.devices = vec![device("/dev/xnull", "/dev/null", "r")];
        let mut host = facts();
        host.requested_devices = [(
            "/dev/null".to_string(),
            HostDevice::Node(node("/dev/null", LinuxDeviceType::C, 1, 3)),
        )]
        .into();
        host.host_devices = vec![
            node("/dev/kmsg", LinuxDeviceType::C, 1, 11),
            node("/dev/sda", LinuxDeviceType::B, 8, 0),
        ];
        let spec = build_facts(&c, &privileged_pod(), &host).unwrap();
        let linux = spec.linux().as_ref().unwrap();
        assert_eq!(
            linux.devices().as_ref().unwrap(),
            &vec![
                node("/dev/xnull", LinuxDeviceType::C, 1, 3),
                node("/dev/kmsg", LinuxDeviceType::C, 1, 11),
                node("/dev/sda", LinuxDeviceType::B, 8, 0),
            ]
        );
        let rules = linux
            .resources()
            .as_ref()
            .unwrap()
            .devices()
            .clone()
            .unwrap();
        assert_eq!(rules.len(), 1);
        assert!(rules[0].allow());
    }

    #[test]
    fn a_device_that_is_not_one_is_refused() {
        let mut c = config();
        c.devices = vec![
            device("/dev/a", "/etc/passwd", ""),
            device("/dev/b", "/dev/gone", ""),
        ];
        let mut host = facts();
        let invalid = |host: &HostFacts| match devices(&c, host) {
            Err(Error::InvalidArgument(m)) => m,
            other => panic!("expected InvalidArgument, got {other:?}"),
        };
        assert!(invalid(&host).contains("not looked up"));
        host.requested_devices
            .insert("/etc/passwd".into(), HostDevice::NotADevice);
        assert_eq!(invalid(&host), "\"/etc/passwd\" is not a device node");
        host.requested_devices.insert(
            "/etc/passwd".into(),
            HostDevice::Node(node("/etc/passwd", LinuxDeviceType::C, 1, 1)),
        );
        host.requested_devices.insert(
            "/dev/gone".into(),
            HostDevice::Unusable("No such file".into()),
        );
        assert_eq!(
            invalid(&host),
            "device \"/dev/gone\" is not usable: No such file"
        );
        assert!(matches!(
            cgroup_rules(&c, &host),
            Err(Error::InvalidArgument(_))
        ));
    }
}
