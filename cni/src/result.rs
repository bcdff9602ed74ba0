//! CNI results (spec 0.3.0 to 1.1.0 share the shape crust reads): the pod's
//! addresses, primary first.

use std::net::IpAddr;

use serde_json::Value;

/// The addresses in a result's `ips`, IPv4 before IPv6, in result order
/// otherwise; prefixes are dropped.
pub fn pod_ips(result: &Value) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = result
        .get("ips")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(|ip| ip.get("address").and_then(Value::as_str))
                .filter_map(|cidr| cidr.split('/').next()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    ips.sort_by_key(|ip| ip.is_ipv6());
    ips
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_addresses_v4_first() {
        let r = serde_json::json!({
            "cniVersion": "1.0.0",
            "ips": [
                {"address": "fd00::5/64", "interface": 0},
                {"address": "10.22.0.5/24", "gateway": "10.22.0.1", "interface": 0}
            ]
        });
        let ips = pod_ips(&r);
        assert_eq!(
            ips,
            vec![
                "10.22.0.5".parse::<IpAddr>().unwrap(),
                "fd00::5".parse().unwrap()
            ]
        );
        assert!(pod_ips(&Value::Null).is_empty());
    }
}
