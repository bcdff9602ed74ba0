//! What a pod sandbox asks of CNI: the attachment (who the pod is, its ports,
//! bandwidth, DNS, pod CIDR, cgroup) and its namespaced sysctls; and the mapping
//! of CNI errors to the runtime's.

use std::path::Path;

use crust_cni::Attachment;
use crust_cni::capabilities::{Bandwidth, Capabilities, parse_rate};
use crust_cni::nsfs::{Kind, sysctl_kind};

use super::config::SandboxConfig;
use crate::{Error, Result};

/// kubelet's annotation for the pod's ingress bandwidth limit.
const INGRESS_BANDWIDTH: &str = "kubernetes.io/ingress-bandwidth";
/// kubelet's annotation for the pod's egress bandwidth limit.
const EGRESS_BANDWIDTH: &str = "kubernetes.io/egress-bandwidth";

/// The CNI attachment of sandbox `id`.
pub fn attachment(
    id: &str,
    cfg: &SandboxConfig,
    netns: &Path,
    pod_cidr: &str,
) -> Result<Attachment> {
    Ok(Attachment {
        container_id: id.to_string(),
        netns: netns.to_path_buf(),
        pod_name: cfg.name.clone(),
        pod_namespace: cfg.namespace.clone(),
        pod_uid: cfg.uid.clone(),
        capabilities: Capabilities {
            port_mappings: cfg
                .port_mappings
                .iter()
                .filter(|p| p.host_port > 0)
                .cloned()
                .collect(),
            bandwidth: bandwidth(cfg)?,
            dns: cfg.dns.clone(),
            ip_ranges: if pod_cidr.is_empty() {
                Vec::new()
            } else {
                pod_cidr.split(',').map(|s| s.trim().to_string()).collect()
            },
            cgroup_path: cfg.cgroup_parent.clone(),
        },
    })
}

/// The bandwidth kubelet accepts: 1 kbit/s to 1 Pbit/s.
const MIN_RATE: u64 = 1_000;
const MAX_RATE: u64 = 1_000_000_000_000_000;

fn bandwidth(cfg: &SandboxConfig) -> Result<Option<Bandwidth>> {
    let rate = |key: &str| -> Result<u64> {
        match cfg.annotations.get(key) {
            None => Ok(0),
            Some(v) => parse_rate(v)
                .filter(|r| (MIN_RATE..=MAX_RATE).contains(r))
                .ok_or_else(|| {
                    Error::invalid(format!(
                        "annotation {key}={v:?} is not a bandwidth between 1k and 1P (use a quantity such as 10M)"
                    ))
                }),
        }
    };
    let (ingress_rate, egress_rate) = (rate(INGRESS_BANDWIDTH)?, rate(EGRESS_BANDWIDTH)?);
    Ok((ingress_rate > 0 || egress_rate > 0).then_some(Bandwidth {
        ingress_rate,
        egress_rate,
    }))
}

/// The pod's sysctls, each checked to belong to a namespace the pod owns.
pub fn pod_sysctls(cfg: &SandboxConfig) -> Result<Vec<(String, String)>> {
    cfg.sysctls
        .iter()
        .map(|(name, value)| {
            let owned = match sysctl_kind(name) {
                Some(Kind::Net) => !cfg.host_network(),
                Some(Kind::Ipc) => !cfg.host_ipc(),
                _ => {
                    return Err(Error::invalid(format!(
                        "sysctl {name} is not namespaced; a pod cannot set it"
                    )));
                }
            };
            if !owned {
                return Err(Error::invalid(format!(
                    "sysctl {name} cannot be set in a pod that uses the node's namespace for it"
                )));
            }
            if crust_cni::nsfs::sysctl_path(name).is_none() || value.contains('\n') {
                return Err(Error::invalid(format!(
                    "sysctl {name}={value:?} is not valid"
                )));
            }
            Ok((name.clone(), value.clone()))
        })
        .collect()
}

/// A CNI failure as the runtime reports it.
pub fn net_error(e: crust_cni::Error) -> Error {
    match e {
        crust_cni::Error::NotReady(m) => {
            Error::FailedPrecondition(format!("the pod network is not ready: {m}"))
        }
        other => Error::Internal(anyhow::Error::new(other).context("setting up the pod network")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotations_and_sysctls() {
        let mut cfg = SandboxConfig::default();
        cfg.annotations
            .insert(INGRESS_BANDWIDTH.into(), "10M".into());
        let att = attachment("id", &cfg, Path::new("/x"), "10.1.0.0/24").unwrap();
        assert_eq!(att.capabilities.bandwidth.unwrap().ingress_rate, 10_000_000);
        assert_eq!(att.capabilities.ip_ranges, vec!["10.1.0.0/24"]);
        cfg.annotations
            .insert(EGRESS_BANDWIDTH.into(), "lots".into());
        assert!(matches!(
            attachment("id", &cfg, Path::new("/x"), ""),
            Err(Error::InvalidArgument(_))
        ));
        for out_of_range in ["2000P", "999"] {
            cfg.annotations
                .insert(EGRESS_BANDWIDTH.into(), out_of_range.into());
            assert!(
                matches!(
                    attachment("id", &cfg, Path::new("/x"), ""),
                    Err(Error::InvalidArgument(_))
                ),
                "{out_of_range}"
            );
        }

        let mut cfg = SandboxConfig::default();
        cfg.sysctls
            .insert("net.ipv4.ip_unprivileged_port_start".into(), "0".into());
        assert_eq!(pod_sysctls(&cfg).unwrap().len(), 1);
        cfg.sysctls.insert("vm.swappiness".into(), "1".into());
        assert!(pod_sysctls(&cfg).is_err());
    }
}
