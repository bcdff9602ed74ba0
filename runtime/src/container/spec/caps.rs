//! Capabilities: containerd's default set, CRI's add/drop (with "ALL"),
//! ambient capabilities, and the rule that nothing outside the runtime's own
//! bounding set can be granted.

use std::collections::HashSet;
use std::str::FromStr;

use oci_spec::runtime::{Capability, LinuxCapabilities, LinuxCapabilitiesBuilder};

use super::internal;
use crate::container::config::ContainerConfig;
use crate::{Error, Result};

/// containerd's default capability set.
const DEFAULT_CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// Every capability, in kernel bit order (CAP_CHOWN is bit 0). A privileged
/// container or an "ALL" gets those the runtime's bounding set holds.
const ALL_CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// The process's capability sets for `cfg` under the runtime's bounding set
/// `bounding_set`, and the container's bounding set (which seccomp's
/// runtime/default profile looks at).
pub(super) fn process_capabilities(
    cfg: &ContainerConfig,
    bounding_set: u64,
) -> Result<(LinuxCapabilities, HashSet<Capability>)> {
    let caps = capabilities(cfg, bounding_set)?;
    let ambient = cap_set(&cfg.security.add_ambient_capabilities)?;
    check_grantable(&ambient, bounding_set)?;
    let mut inheritable = HashSet::new();
    inheritable.extend(ambient.iter().copied());
    let mut bounding = caps;
    bounding.extend(ambient.iter().copied());
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(bounding.clone())
        .effective(bounding.clone())
        .permitted(bounding.clone())
        .inheritable(inheritable)
        .ambient(ambient)
        .build()
        .map_err(internal)?;
    Ok((capabilities, bounding))
}

fn parse_cap(name: &str) -> Result<Capability> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    Capability::from_str(bare).map_err(|_| Error::invalid(format!("unknown capability {name:?}")))
}

fn cap_set(names: &[String]) -> Result<HashSet<Capability>> {
    names.iter().map(|n| parse_cap(n)).collect()
}

/// The capabilities in the bounding set `bounding`.
fn all_caps(bounding: u64) -> HashSet<Capability> {
    ALL_CAPABILITIES
        .iter()
        .enumerate()
        .filter(|(bit, _)| bounding & (1u64 << bit) != 0)
        .filter_map(|(_, n)| Capability::from_str(n).ok())
        .collect()
}

/// Refuses to grant a capability the runtime does not hold itself.
fn check_grantable(caps: &HashSet<Capability>, bounding: u64) -> Result<()> {
    let held = all_caps(bounding);
    let mut missing: Vec<String> = caps.difference(&held).map(|c| c.to_string()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    missing.sort();
    Err(Error::invalid(format!(
        "capabilities {} are not in the runtime's own bounding set, so no container can hold them",
        missing.join(", ")
    )))
}

fn is_all(names: &[String]) -> bool {
    names.iter().any(|n| n.eq_ignore_ascii_case("ALL"))
}

/// containerd's order: the defaults; all of them for an added "ALL"; none for a
/// dropped "ALL"; then the named additions; then the named drops.
fn capabilities(cfg: &ContainerConfig, bounding: u64) -> Result<HashSet<Capability>> {
    let sec = &cfg.security;
    let held = all_caps(bounding);
    if sec.privileged {
        return Ok(held);
    }
    let named = |names: &[String]| -> Result<HashSet<Capability>> {
        let wanted: Vec<String> = names
            .iter()
            .filter(|n| !is_all(std::slice::from_ref(n)))
            .cloned()
            .collect();
        cap_set(&wanted)
    };
    let mut caps: HashSet<Capability> = DEFAULT_CAPABILITIES
        .iter()
        .filter_map(|n| Capability::from_str(n).ok())
        .filter(|c| held.contains(c))
        .collect();
    if is_all(&sec.add_capabilities) {
        caps = held.clone();
    }
    if is_all(&sec.drop_capabilities) {
        caps.clear();
    }
    let added = named(&sec.add_capabilities)?;
    check_grantable(&added, bounding)?;
    caps.extend(added);
    for c in named(&sec.drop_capabilities)? {
        caps.remove(&c);
    }
    Ok(caps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::spec::fixtures::{BOUNDING_SET, config};

    /// A bounding set of exactly `caps`.
    fn bounding_of(caps: &[Capability]) -> u64 {
        ALL_CAPABILITIES
            .iter()
            .enumerate()
            .filter(|(_, n)| caps.contains(&Capability::from_str(n).unwrap()))
            .fold(0, |mask, (bit, _)| mask | 1u64 << bit)
    }

    #[test]
    fn capability_all_follows_containerd_order() {
        let bounding = BOUNDING_SET;
        let mut c = config();
        c.security.add_capabilities = vec!["ALL".into()];
        c.security.drop_capabilities = vec!["CHOWN".into()];
        let caps = capabilities(&c, bounding).unwrap();
        assert!(caps.contains(&Capability::SysAdmin));
        assert!(!caps.contains(&Capability::Chown));
        assert!(!caps.contains(&Capability::SysResource));

        c.security.add_capabilities = vec!["net_admin".into()];
        c.security.drop_capabilities = vec!["ALL".into()];
        let caps = capabilities(&c, bounding).unwrap();
        assert_eq!(caps, HashSet::from([Capability::NetAdmin]));

        c.security.add_capabilities = vec!["SYS_RESOURCE".into()];
        assert!(matches!(
            capabilities(&c, bounding),
            Err(Error::InvalidArgument(_))
        ));

        c.security.privileged = true;
        let caps = capabilities(&c, bounding).unwrap();
        assert!(caps.contains(&Capability::SysAdmin));
        assert!(!caps.contains(&Capability::SysResource));
    }

    #[test]
    fn a_privileged_container_gets_exactly_the_bounding_set() {
        let held = [Capability::Chown, Capability::NetAdmin, Capability::Bpf];
        let mut c = config();
        c.security.privileged = true;
        let caps = capabilities(&c, bounding_of(&held)).unwrap();
        assert_eq!(caps, HashSet::from(held));
        assert!(capabilities(&c, 0).unwrap().is_empty());
    }

    #[test]
    fn defaults_outside_the_bounding_set_are_left_out() {
        let held = [Capability::Chown, Capability::Kill, Capability::SysAdmin];
        let caps = capabilities(&config(), bounding_of(&held)).unwrap();
        assert_eq!(caps, HashSet::from([Capability::Chown, Capability::Kill]));
    }

    #[test]
    fn ambient_capabilities_are_inheritable_and_must_be_held() {
        let held = [Capability::Chown, Capability::NetBindService];
        let mut c = config();
        c.security.drop_capabilities = vec!["ALL".into()];
        c.security.add_ambient_capabilities = vec!["CAP_NET_BIND_SERVICE".into()];
        let (caps, bounding) = process_capabilities(&c, bounding_of(&held)).unwrap();
        let only = HashSet::from([Capability::NetBindService]);
        assert_eq!(bounding, only);
        assert_eq!(caps.ambient().as_ref(), Some(&only));
        assert_eq!(caps.inheritable().as_ref(), Some(&only));
        assert_eq!(caps.effective().as_ref(), Some(&only));

        c.security.add_ambient_capabilities = vec!["NET_ADMIN".into()];
        let err = process_capabilities(&c, bounding_of(&held)).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(m) if m.contains("NET_ADMIN")));
    }
}
