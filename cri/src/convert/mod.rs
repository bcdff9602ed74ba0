//! Protobuf ⇄ domain conversions, one module per message family. Nothing else in
//! crustd touches both worlds.

pub mod container;
pub mod handlers;
pub mod image;
pub mod metrics;
pub mod sandbox;
pub mod stats;

use std::collections::{BTreeMap, HashMap};

use crust_runtime::sandbox::config::{IdMapping, NamespaceMode, NamespaceOptions, UserNamespace};
use crust_runtime::{Error, Result};
use k8s_cri::v1;

/// A proto map as the domain's ordered map.
pub fn to_btree(m: HashMap<String, String>) -> BTreeMap<String, String> {
    m.into_iter().collect()
}

/// A domain map as a proto map.
pub fn to_hash(m: &BTreeMap<String, String>) -> HashMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn mode_from(v: i32, what: &str) -> Result<NamespaceMode> {
    match v1::NamespaceMode::try_from(v) {
        Ok(v1::NamespaceMode::Pod) => Ok(NamespaceMode::Pod),
        Ok(v1::NamespaceMode::Container) => Ok(NamespaceMode::Container),
        Ok(v1::NamespaceMode::Node) => Ok(NamespaceMode::Node),
        Ok(v1::NamespaceMode::Target) => Ok(NamespaceMode::Target),
        Err(_) => Err(Error::invalid(format!("unknown {what} namespace mode {v}"))),
    }
}

fn mode_to(m: NamespaceMode) -> i32 {
    match m {
        NamespaceMode::Pod => v1::NamespaceMode::Pod as i32,
        NamespaceMode::Container => v1::NamespaceMode::Container as i32,
        NamespaceMode::Node => v1::NamespaceMode::Node as i32,
        NamespaceMode::Target => v1::NamespaceMode::Target as i32,
    }
}

/// CRI NamespaceOption → domain.
pub fn namespaces_from(o: Option<v1::NamespaceOption>) -> Result<NamespaceOptions> {
    let o = o.unwrap_or_default();
    Ok(NamespaceOptions {
        network: mode_from(o.network, "network")?,
        pid: mode_from(o.pid, "pid")?,
        ipc: mode_from(o.ipc, "ipc")?,
        target_id: o.target_id,
        user: o
            .userns_options
            .map(user_namespace_from)
            .transpose()?
            .flatten(),
    })
}

/// CRI UserNamespace → the pod's own user namespace (mode POD), or None for
/// the node's; CONTAINER and TARGET are refused, as the CRI says.
fn user_namespace_from(u: v1::UserNamespace) -> Result<Option<UserNamespace>> {
    match mode_from(u.mode, "user")? {
        NamespaceMode::Node if u.uids.is_empty() && u.gids.is_empty() => Ok(None),
        NamespaceMode::Node => Err(Error::invalid(
            "user namespace mode NODE takes no uid or gid mappings",
        )),
        NamespaceMode::Pod => Ok(Some(UserNamespace {
            uids: one_mapping(&u.uids, "uid")?,
            gids: one_mapping(&u.gids, "gid")?,
        })),
        other => Err(Error::invalid(format!(
            "user namespace mode {other:?} is not supported: use POD (with mappings) or NODE"
        ))),
    }
}

fn one_mapping(m: &[v1::IdMapping], what: &str) -> Result<IdMapping> {
    match m {
        [one] => Ok(id_mapping_from(one)),
        _ => Err(Error::invalid(format!(
            "a user namespace takes exactly one {what} mapping, got {}",
            m.len()
        ))),
    }
}

/// CRI IDMapping → domain.
pub fn id_mapping_from(m: &v1::IdMapping) -> IdMapping {
    IdMapping {
        inside: m.container_id,
        outside: m.host_id,
        count: m.length,
    }
}

/// Domain → CRI IDMapping.
pub fn id_mapping_to(m: &IdMapping) -> v1::IdMapping {
    v1::IdMapping {
        container_id: m.inside,
        host_id: m.outside,
        length: m.count,
    }
}

/// Domain → CRI NamespaceOption.
pub fn namespaces_to(o: &NamespaceOptions) -> v1::NamespaceOption {
    v1::NamespaceOption {
        network: mode_to(o.network),
        pid: mode_to(o.pid),
        ipc: mode_to(o.ipc),
        target_id: o.target_id.clone(),
        userns_options: o.user.as_ref().map(|u| v1::UserNamespace {
            mode: v1::NamespaceMode::Pod as i32,
            uids: vec![id_mapping_to(&u.uids)],
            gids: vec![id_mapping_to(&u.gids)],
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn userns(mode: v1::NamespaceMode, uids: usize, gids: usize) -> Option<v1::NamespaceOption> {
        let m = v1::IdMapping {
            container_id: 0,
            host_id: 100_000,
            length: 65_536,
        };
        Some(v1::NamespaceOption {
            userns_options: Some(v1::UserNamespace {
                mode: mode as i32,
                uids: vec![m; uids],
                gids: vec![m; gids],
            }),
            ..Default::default()
        })
    }

    #[test]
    fn user_namespace_modes_and_mappings() {
        let user = |o| namespaces_from(o).map(|n| n.user);
        assert_eq!(user(None).unwrap(), None);
        assert_eq!(user(userns(v1::NamespaceMode::Node, 0, 0)).unwrap(), None);
        let pod = user(userns(v1::NamespaceMode::Pod, 1, 1)).unwrap().unwrap();
        assert_eq!(pod.host_root(), (100_000, 100_000));
        let back = namespaces_to(&namespaces_from(userns(v1::NamespaceMode::Pod, 1, 1)).unwrap());
        assert_eq!(
            back.userns_options,
            userns(v1::NamespaceMode::Pod, 1, 1).unwrap().userns_options
        );
        for refused in [
            userns(v1::NamespaceMode::Container, 0, 0),
            userns(v1::NamespaceMode::Target, 0, 0),
            userns(v1::NamespaceMode::Node, 1, 1),
            userns(v1::NamespaceMode::Pod, 0, 0),
            userns(v1::NamespaceMode::Pod, 2, 1),
            userns(v1::NamespaceMode::Pod, 1, 2),
        ] {
            assert!(
                matches!(user(refused.clone()), Err(Error::InvalidArgument(_))),
                "{refused:?} was accepted"
            );
        }
    }
}
