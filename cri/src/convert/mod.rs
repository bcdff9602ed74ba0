//! Protobuf ⇄ domain conversions, one module per message family. Nothing else in
//! crustd touches both worlds.

pub mod container;
pub mod handlers;
pub mod image;
pub mod metrics;
pub mod sandbox;
pub mod stats;

use std::collections::{BTreeMap, HashMap};

use crust_runtime::sandbox::config::{NamespaceMode, NamespaceOptions};
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
    let user_namespace = o.userns_options.as_ref().is_some_and(|u| {
        mode_from(u.mode, "user").ok() == Some(NamespaceMode::Pod)
            && (!u.uids.is_empty() || !u.gids.is_empty())
    });
    Ok(NamespaceOptions {
        network: mode_from(o.network, "network")?,
        pid: mode_from(o.pid, "pid")?,
        ipc: mode_from(o.ipc, "ipc")?,
        target_id: o.target_id,
        user_namespace,
    })
}

/// Domain → CRI NamespaceOption.
pub fn namespaces_to(o: &NamespaceOptions) -> v1::NamespaceOption {
    v1::NamespaceOption {
        network: mode_to(o.network),
        pid: mode_to(o.pid),
        ipc: mode_to(o.ipc),
        target_id: o.target_id.clone(),
        userns_options: None,
    }
}
