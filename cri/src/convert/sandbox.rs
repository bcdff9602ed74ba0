//! PodSandbox messages.

use crust_runtime::sandbox::config::{DnsConfig, PortMapping, SandboxConfig};
use crust_runtime::sandbox::{Sandbox, SandboxState};
use crust_runtime::{Error, Result};
use k8s_cri::v1;

use super::{namespaces_from, namespaces_to, to_btree, to_hash};

/// RunPodSandboxRequest → domain config.
pub fn config_from(req: v1::RunPodSandboxRequest) -> Result<SandboxConfig> {
    let c = req
        .config
        .ok_or_else(|| Error::invalid("RunPodSandbox needs a config"))?;
    let meta = c
        .metadata
        .ok_or_else(|| Error::invalid("the sandbox config needs metadata"))?;
    let linux = c.linux.unwrap_or_default();
    let sec = linux.security_context.unwrap_or_default();
    Ok(SandboxConfig {
        name: meta.name,
        uid: meta.uid,
        namespace: meta.namespace,
        attempt: meta.attempt,
        hostname: c.hostname,
        log_directory: c.log_directory,
        dns: c.dns_config.map(|d| DnsConfig {
            servers: d.servers,
            searches: d.searches,
            options: d.options,
        }),
        port_mappings: c
            .port_mappings
            .into_iter()
            .map(|p| {
                let protocol = match v1::Protocol::try_from(p.protocol) {
                    Ok(v1::Protocol::Tcp) => "tcp",
                    Ok(v1::Protocol::Udp) => "udp",
                    Ok(v1::Protocol::Sctp) => "sctp",
                    Err(_) => {
                        return Err(Error::invalid(format!(
                            "port mapping protocol {} is not TCP, UDP or SCTP",
                            p.protocol
                        )));
                    }
                };
                Ok(PortMapping {
                    protocol: protocol.to_string(),
                    container_port: p.container_port,
                    host_port: p.host_port,
                    host_ip: p.host_ip,
                })
            })
            .collect::<Result<_>>()?,
        labels: to_btree(c.labels),
        annotations: to_btree(c.annotations),
        cgroup_parent: linux.cgroup_parent,
        namespaces: namespaces_from(sec.namespace_options)?,
        sysctls: to_btree(linux.sysctls),
        privileged: sec.privileged,
        runtime_handler: req.runtime_handler,
        selinux: sec.selinux_options.and_then(|o| {
            crust_runtime::container::config::SelinuxLabel::of(o.user, o.role, o.r#type, o.level)
        }),
    })
}

/// The pod's name, UID, namespace and attempt.
pub fn metadata(c: &SandboxConfig) -> v1::PodSandboxMetadata {
    v1::PodSandboxMetadata {
        name: c.name.clone(),
        uid: c.uid.clone(),
        namespace: c.namespace.clone(),
        attempt: c.attempt,
    }
}

/// Domain state → CRI state.
pub fn state_to(s: SandboxState) -> i32 {
    match s {
        SandboxState::Ready => v1::PodSandboxState::SandboxReady as i32,
        SandboxState::NotReady => v1::PodSandboxState::SandboxNotready as i32,
    }
}

/// CRI state → domain state.
pub fn state_from(v: i32) -> Result<SandboxState> {
    match v1::PodSandboxState::try_from(v) {
        Ok(v1::PodSandboxState::SandboxReady) => Ok(SandboxState::Ready),
        Ok(v1::PodSandboxState::SandboxNotready) => Ok(SandboxState::NotReady),
        Err(_) => Err(Error::invalid(format!("unknown sandbox state {v}"))),
    }
}

/// A list entry.
pub fn list_item(s: &Sandbox) -> v1::PodSandbox {
    v1::PodSandbox {
        id: s.id.clone(),
        metadata: Some(metadata(&s.config)),
        state: state_to(s.state),
        created_at: s.created_at,
        labels: to_hash(&s.config.labels),
        annotations: to_hash(&s.config.annotations),
        runtime_handler: s.config.runtime_handler.clone(),
    }
}

/// PodSandboxStatus.
pub fn status(s: &Sandbox) -> v1::PodSandboxStatus {
    v1::PodSandboxStatus {
        id: s.id.clone(),
        metadata: Some(metadata(&s.config)),
        state: state_to(s.state),
        created_at: s.created_at,
        network: Some(v1::PodSandboxNetworkStatus {
            ip: s.ips.first().cloned().unwrap_or_default(),
            additional_ips: s
                .ips
                .iter()
                .skip(1)
                .map(|ip| v1::PodIp { ip: ip.clone() })
                .collect(),
        }),
        linux: Some(v1::LinuxPodSandboxStatus {
            namespaces: Some(v1::Namespace {
                options: Some(namespaces_to(&s.config.namespaces)),
            }),
        }),
        labels: to_hash(&s.config.labels),
        annotations: to_hash(&s.config.annotations),
        runtime_handler: s.config.runtime_handler.clone(),
    }
}

/// The verbose `info` of PodSandboxStatus: where the sandbox's pieces live.
pub fn verbose_info(s: &Sandbox) -> std::collections::HashMap<String, String> {
    let info = serde_json::json!({
        "sandboxDir": s.dir,
        "netns": s.netns,
        "ipcns": s.ipcns,
        "utsns": s.utsns,
        "shm": s.shm,
        "hostname": s.config.hostname,
        "cgroupParent": s.config.cgroup_parent,
    });
    [("info".to_string(), info.to_string())]
        .into_iter()
        .collect()
}
