//! Runtime capabilities: what the runtime passes to plugins that declare them,
//! as `runtimeConfig` (portMappings, bandwidth, dns, ipRanges, cgroupPath).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A host port forwarded into the pod (the portmap plugin's input).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    /// Port on the host.
    pub host_port: i32,
    /// Port in the pod.
    pub container_port: i32,
    /// "tcp", "udp" or "sctp".
    pub protocol: String,
    /// Host address to bind; empty for all.
    pub host_ip: String,
}

impl PortMapping {
    /// Checks the ports, protocol and host address, so a bad one is refused
    /// before any plugin runs rather than failing inside the portmap plugin.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if !(1..=65535).contains(&self.container_port) {
            return Err(format!(
                "port mapping container_port {} must be between 1 and 65535",
                self.container_port
            ));
        }
        if !(0..=65535).contains(&self.host_port) {
            return Err(format!(
                "port mapping host_port {} must be between 0 (none) and 65535",
                self.host_port
            ));
        }
        if !matches!(self.protocol.as_str(), "tcp" | "udp" | "sctp") {
            return Err(format!(
                "port mapping protocol {:?} must be tcp, udp or sctp",
                self.protocol
            ));
        }
        if !self.host_ip.is_empty() && self.host_ip.parse::<std::net::IpAddr>().is_err() {
            return Err(format!(
                "port mapping host_ip {:?} is not an IP address",
                self.host_ip
            ));
        }
        Ok(())
    }
}

/// Traffic shaping (the bandwidth plugin's input), in bits per second.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bandwidth {
    /// Ingress rate; 0 for none.
    pub ingress_rate: u64,
    /// Egress rate; 0 for none.
    pub egress_rate: u64,
}

/// DNS settings for plugins that configure them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    /// Name servers.
    pub servers: Vec<String>,
    /// Search domains.
    pub searches: Vec<String>,
    /// resolv.conf options.
    pub options: Vec<String>,
}

/// Everything the runtime knows that a plugin may ask for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// Host ports (only mappings with a host port).
    pub port_mappings: Vec<PortMapping>,
    /// Bandwidth limits from the pod's annotations.
    pub bandwidth: Option<Bandwidth>,
    /// The pod's DNS config.
    pub dns: Option<Dns>,
    /// Pod CIDRs (from UpdateRuntimeConfig).
    pub ip_ranges: Vec<String>,
    /// The pod's cgroup parent.
    pub cgroup_path: String,
}

/// Burst kubelet-style limits get: effectively unlimited, as containerd passes.
const UNLIMITED_BURST: u64 = u32::MAX as u64;

impl Capabilities {
    /// The `runtimeConfig` for a plugin declaring `declared`.
    pub fn runtime_config(&self, declared: &[String]) -> Map<String, Value> {
        let mut out = Map::new();
        for cap in declared {
            match cap.as_str() {
                "portMappings" if !self.port_mappings.is_empty() => {
                    let v: Vec<Value> = self
                        .port_mappings
                        .iter()
                        .map(|p| {
                            serde_json::json!({
                                "hostPort": p.host_port,
                                "containerPort": p.container_port,
                                "protocol": p.protocol,
                                "hostIP": p.host_ip,
                            })
                        })
                        .collect();
                    out.insert(cap.clone(), Value::Array(v));
                }
                "bandwidth" => {
                    if let Some(b) = &self.bandwidth {
                        let mut m = Map::new();
                        if b.ingress_rate > 0 {
                            m.insert("ingressRate".into(), b.ingress_rate.into());
                            m.insert("ingressBurst".into(), UNLIMITED_BURST.into());
                        }
                        if b.egress_rate > 0 {
                            m.insert("egressRate".into(), b.egress_rate.into());
                            m.insert("egressBurst".into(), UNLIMITED_BURST.into());
                        }
                        if !m.is_empty() {
                            out.insert(cap.clone(), Value::Object(m));
                        }
                    }
                }
                "dns" => {
                    if let Some(d) = &self.dns {
                        out.insert(
                            cap.clone(),
                            serde_json::json!({
                                "servers": d.servers,
                                "searches": d.searches,
                                "options": d.options,
                            }),
                        );
                    }
                }
                "ipRanges" if !self.ip_ranges.is_empty() => {
                    let ranges: Vec<Value> = self
                        .ip_ranges
                        .iter()
                        .map(|r| serde_json::json!([{ "subnet": r }]))
                        .collect();
                    out.insert(cap.clone(), Value::Array(ranges));
                }
                "cgroupPath" if !self.cgroup_path.is_empty() => {
                    out.insert(cap.clone(), Value::String(self.cgroup_path.clone()));
                }
                _ => {}
            }
        }
        out
    }
}

/// Parses a Kubernetes quantity as bits per second ("10M" = 10^7, "1Gi" = 2^30,
/// "500k"); None when it is not one.
pub fn parse_rate(q: &str) -> Option<u64> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    if split == 0 {
        return None;
    }
    let (num, unit) = q.split_at(split);
    let value: f64 = num.parse().ok()?;
    let mult: f64 = match unit {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024f64.powi(4),
        _ => return None,
    };
    let bits = value * mult;
    (bits.is_finite() && bits >= 1.0).then_some(bits as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_config_only_for_declared_and_present() {
        let caps = Capabilities {
            port_mappings: vec![PortMapping {
                host_port: 8080,
                container_port: 80,
                protocol: "tcp".into(),
                host_ip: String::new(),
            }],
            bandwidth: Some(Bandwidth {
                ingress_rate: 10_000_000,
                egress_rate: 0,
            }),
            ip_ranges: vec!["10.244.1.0/24".into()],
            ..Default::default()
        };
        let rc = caps.runtime_config(&["portMappings".into(), "bandwidth".into(), "dns".into()]);
        assert_eq!(rc["portMappings"][0]["hostPort"], 8080);
        assert_eq!(rc["bandwidth"]["ingressRate"], 10_000_000);
        assert!(rc["bandwidth"].get("egressRate").is_none());
        assert!(!rc.contains_key("dns"));
        let rc = caps.runtime_config(&["ipRanges".into(), "cgroupPath".into()]);
        assert_eq!(rc["ipRanges"][0][0]["subnet"], "10.244.1.0/24");
        assert!(!rc.contains_key("cgroupPath"));
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("10M"), Some(10_000_000));
        assert_eq!(parse_rate("1Mi"), Some(1_048_576));
        assert_eq!(parse_rate("500k"), Some(500_000));
        assert_eq!(parse_rate("2"), Some(2));
        assert_eq!(parse_rate("10X"), None);
        assert_eq!(parse_rate(""), None);
        assert_eq!(parse_rate("M"), None);
    }
}
