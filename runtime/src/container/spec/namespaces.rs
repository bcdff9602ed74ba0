//! Namespaces: a mount namespace of its own, the pod's network, IPC and UTS
//! namespaces, the PID namespace the request chooses, and a cgroup
//! namespace on cgroup v2 hosts.

use std::path::PathBuf;

use oci_spec::runtime::{
    LinuxIdMapping, LinuxIdMappingBuilder, LinuxNamespace, LinuxNamespaceBuilder,
    LinuxNamespaceType,
};

use super::{SpecInput, internal};
use crate::sandbox::config::{IdMapping, NamespaceMode};
use crate::{Error, Result};

fn namespace(typ: LinuxNamespaceType, path: Option<PathBuf>) -> Result<LinuxNamespace> {
    let b = LinuxNamespaceBuilder::default().typ(typ);
    match path {
        Some(p) => b.path(p).build(),
        None => b.build(),
    }
    .map_err(internal)
}

/// The container's namespaces: new ones have no path, joined ones the path
/// of the namespace they join (the pod's user namespace first of all, as
/// it owns the others).
pub(super) fn namespaces(input: &SpecInput<'_>) -> Result<Vec<LinuxNamespace>> {
    let sb = input.sandbox;
    let mut out = vec![namespace(LinuxNamespaceType::Mount, None)?];
    if let Some(p) = &sb.userns {
        out.push(namespace(LinuxNamespaceType::User, Some(p.clone()))?);
    }
    if let Some(p) = &sb.netns {
        out.push(namespace(LinuxNamespaceType::Network, Some(p.clone()))?);
    }
    if let Some(p) = &sb.ipcns {
        out.push(namespace(LinuxNamespaceType::Ipc, Some(p.clone()))?);
    }
    if let Some(p) = &sb.utsns {
        out.push(namespace(LinuxNamespaceType::Uts, Some(p.clone()))?);
    }
    match input.config.security.namespaces.pid {
        NamespaceMode::Container => out.push(namespace(LinuxNamespaceType::Pid, None)?),
        NamespaceMode::Node => {}
        NamespaceMode::Target => {
            let pid = input.target_pid.ok_or_else(|| {
                Error::invalid("PID namespace mode TARGET needs a running target container")
            })?;
            out.push(namespace(
                LinuxNamespaceType::Pid,
                Some(PathBuf::from(format!("/proc/{pid}/ns/pid"))),
            )?);
        }
        NamespaceMode::Pod => {
            let pid = sb.infra_pid.ok_or_else(|| {
                Error::invalid(
                    "the container asks for the pod's shared PID namespace, but the pod sandbox was not created with one",
                )
            })?;
            out.push(namespace(
                LinuxNamespaceType::Pid,
                Some(PathBuf::from(format!("/proc/{pid}/ns/pid"))),
            )?);
        }
    }
    if input.host.cgroups.v2 && !input.config.security.privileged {
        out.push(namespace(LinuxNamespaceType::Cgroup, None)?);
    }
    Ok(out)
}

/// The uid and gid mappings of the pod's user namespace, which runc wants
/// alongside its path (it maps the owner of what it creates for the
/// container through them).
pub(super) fn id_mappings(input: &SpecInput<'_>) -> Result<Option<[Vec<LinuxIdMapping>; 2]>> {
    let Some(user) = input.sandbox.config.namespaces.user else {
        return Ok(None);
    };
    let one = |m: IdMapping| {
        LinuxIdMappingBuilder::default()
            .container_id(m.inside)
            .host_id(m.outside)
            .size(m.count)
            .build()
            .map(|m| vec![m])
            .map_err(internal)
    };
    Ok(Some([one(user.uids)?, one(user.gids)?]))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::container::spec::fixtures::{FULL_V1, build_on, config};
    use crate::sys::cgroup::CgroupHost;

    fn namespaces_of(spec: &oci_spec::runtime::Spec) -> Vec<LinuxNamespace> {
        spec.linux().clone().unwrap().namespaces().clone().unwrap()
    }

    #[test]
    fn a_cgroup_namespace_only_on_cgroup_v2() {
        let has_cgroup_ns = |cgroups: &CgroupHost| {
            namespaces_of(&build_on(&config(), cgroups).unwrap())
                .iter()
                .any(|n| n.typ() == LinuxNamespaceType::Cgroup)
        };
        assert!(!has_cgroup_ns(&FULL_V1));
        assert!(has_cgroup_ns(&CgroupHost {
            v2: true,
            ..FULL_V1
        }));
    }

    #[test]
    fn the_pods_shared_pid_namespace_needs_its_holder() {
        let mut c = config();
        c.security.namespaces.pid = NamespaceMode::Pod;
        assert!(matches!(
            build_on(&c, &FULL_V1),
            Err(Error::InvalidArgument(_))
        ));
        c.security.namespaces.pid = NamespaceMode::Node;
        let ns = namespaces_of(&build_on(&c, &FULL_V1).unwrap());
        assert!(!ns.iter().any(|n| n.typ() == LinuxNamespaceType::Pid));
        assert_eq!(
            ns.iter()
                .find(|n| n.typ() == LinuxNamespaceType::Ipc)
                .and_then(|n| n.path().as_deref()),
            Some(Path::new("/run/crust/sandboxes/sb/ns/ipc"))
        );
    }
}
