//! Private pod networks for end-to-end tests: a bridge and subnets claimed per
//! test (`crust<n>` with 10.243.<n>.0/24 and fd43:7275:7374:<n>::/64), conflists
//! for Debian's reference plugins (bridge, host-local, portmap, loopback), probes
//! of the host state a network leaves behind (veths on the bridge, host-local
//! reservations, portmap's NAT rules) and a Drop guard that removes all of it,
//! touching nothing the test did not create.
//!
//! The bridge plugin with `isGateway` switches on the host's IP forwarding; the
//! guard puts the values it found back once the last test network of the
//! process is gone.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::TestEnv;
use crate::cleanup::{cri_remove_everything, run_bounded};
use crate::requirements::find_program;

/// The CNI plugin directory of Debian's `containernetworking-plugins`.
pub const REFERENCE_PLUGINS: &str = "/usr/lib/cni";

/// How long one `ip` or `iptables` command may take.
const TOOL_LIMIT: Duration = Duration::from_secs(20);

/// Sysctls the bridge plugin turns on for a gateway bridge, restored at the end.
const FORWARDING_SYSCTLS: [&str; 2] = [
    "/proc/sys/net/ipv4/ip_forward",
    "/proc/sys/net/ipv6/conf/all/forwarding",
];

/// Test networks alive in this process, the forwarding sysctls found before
/// the first of them was claimed, and whether portmap's shared NAT chains
/// existed then.
static FORWARDING: Mutex<HostState> = Mutex::new(HostState {
    networks: 0,
    sysctls: Vec::new(),
    portmap_chains_existed: true,
});

/// What the test networks change on the host, to put back at the end.
struct HostState {
    networks: usize,
    sysctls: Vec<(PathBuf, String)>,
    portmap_chains_existed: bool,
}

/// The shared NAT scaffolding portmap creates on first use and never removes:
/// the jumps into its chains (as `iptables -D` arguments), then the chains.
const PORTMAP_JUMPS: [&[&str]; 3] = [
    &[
        "PREROUTING",
        "-m",
        "addrtype",
        "--dst-type",
        "LOCAL",
        "-j",
        "CNI-HOSTPORT-DNAT",
    ],
    &[
        "OUTPUT",
        "-m",
        "addrtype",
        "--dst-type",
        "LOCAL",
        "-j",
        "CNI-HOSTPORT-DNAT",
    ],
    &[
        "POSTROUTING",
        "-m",
        "comment",
        "--comment",
        "CNI portfwd requiring masquerade",
        "-j",
        "CNI-HOSTPORT-MASQ",
    ],
];
const PORTMAP_CHAINS: [&str; 3] = [
    "CNI-HOSTPORT-DNAT",
    "CNI-HOSTPORT-MASQ",
    "CNI-HOSTPORT-SETMARK",
];

fn nat(args: &[&str]) -> bool {
    std::process::Command::new("iptables")
        .args(["-w", "-t", "nat"])
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Removes portmap's shared chains, if they hold no per-pod rule any more.
fn remove_portmap_scaffolding() -> Vec<String> {
    let dnat = std::process::Command::new("iptables")
        .args(["-w", "-t", "nat", "-S", "CNI-HOSTPORT-DNAT"])
        .output();
    let rules = match dnat {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("-A "))
            .count(),
        _ => return Vec::new(),
    };
    if rules > 0 {
        return vec![format!(
            "CNI-HOSTPORT-DNAT still holds {rules} rules; portmap chains kept"
        )];
    }
    for jump in PORTMAP_JUMPS {
        let mut args = vec!["-D"];
        args.extend_from_slice(jump);
        while nat(&args) {}
    }
    let mut problems = Vec::new();
    for chain in PORTMAP_CHAINS {
        if !(nat(&["-F", chain]) && nat(&["-X", chain])) {
            problems.push(format!("could not remove the NAT chain {chain}"));
        }
    }
    problems
}

/// One test's private network: its bridge, subnets, host-local data dir and
/// the conflist it installs in crustd's `net.d`.
#[derive(Debug)]
pub struct TestNetwork {
    /// The number that makes bridge, subnets and names unique (1..=250).
    pub index: u8,
    /// The bridge's name, `crust<n>`.
    pub bridge: String,
    /// The CNI network's name, `crust-e2e-net<n>`.
    pub name: String,
    /// The IPv4 subnet, `10.243.<n>.0/24`.
    pub subnet: String,
    /// The bridge's IPv4 address, `10.243.<n>.1`.
    pub gateway: Ipv4Addr,
    /// The IPv6 ULA subnet, `fd43:7275:7374:<n>::/64`.
    pub subnet6: String,
    /// The bridge's IPv6 address.
    pub gateway6: Ipv6Addr,
    /// host-local's `dataDir` (inside the test's directory).
    pub data_dir: PathBuf,
    /// A host port no other test network uses (31000 + n).
    pub host_port: u16,
    net_d: PathBuf,
    socket: PathBuf,
}

/// Fails with a clear message when iptables (which portmap needs) is missing.
pub fn require_iptables() -> Result<()> {
    for tool in ["iptables", "iptables-save", "iptables-restore", "ip"] {
        if find_program(tool).is_none() {
            bail!(
                "`{tool}` is not installed; the CNI tests need iptables and iproute2 \
                 (`make test` installs the Makefile's RUN_PKGS, or apt-get install iptables iproute2)"
            );
        }
    }
    Ok(())
}

/// Runs a host tool and returns its output; fails with what it printed.
pub fn tool(program: &str, args: &[&str]) -> Result<String> {
    let path = find_program(program).with_context(|| format!("`{program}` is not installed"))?;
    run_bounded(Command::new(path).args(args), TOOL_LIMIT)
        .with_context(|| format!("{program} {}", args.join(" ")))
}

impl TestNetwork {
    /// Claims a free index for `env`'s test: creates bridge `crust<n>` (which
    /// fails if another test or process holds it) for a subnet no host
    /// interface or route uses.
    pub fn claim(env: &TestEnv) -> Result<TestNetwork> {
        require_iptables()?;
        let host = format!(
            "{}\n{}\n{}",
            tool("ip", &["-o", "addr"])?,
            tool("ip", &["route"])?,
            tool("ip", &["-6", "route"])?
        );
        let start = std::process::id() as usize % 250;
        for i in 0..250 {
            let n = ((start + i) % 250 + 1) as u8;
            let bridge = format!("crust{n}");
            if host.contains(&format!("10.243.{n}."))
                || host.contains(&format!("fd43:7275:7374:{n:x}:"))
            {
                continue;
            }
            if tool("ip", &["link", "add", &bridge, "type", "bridge"]).is_err() {
                continue;
            }
            acquire_forwarding();
            let paths = env.daemon.paths();
            return Ok(TestNetwork {
                index: n,
                name: format!("crust-e2e-net{n}"),
                subnet: format!("10.243.{n}.0/24"),
                gateway: Ipv4Addr::new(10, 243, n, 1),
                subnet6: format!("fd43:7275:7374:{n:x}::/64"),
                gateway6: Ipv6Addr::new(0xfd43, 0x7275, 0x7374, n.into(), 0, 0, 0, 1),
                data_dir: paths.base.join(format!("host-local-{n}")),
                host_port: 31000 + u16::from(n),
                net_d: paths.net_d.clone(),
                socket: paths.socket.clone(),
                bridge,
            });
        }
        bail!(
            "no free test network: bridges crust1..crust250 all exist or their subnets are in use"
        )
    }

    /// The `n`-th address of the IPv4 subnet (1 is the gateway).
    pub fn address(&self, n: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 243, self.index, n)
    }

    /// A host-local range covering the IPv4 subnet.
    pub fn ipv4_range(&self) -> Value {
        json!({"subnet": self.subnet, "gateway": self.gateway.to_string()})
    }

    /// A host-local range holding exactly one address (`.2`).
    pub fn single_address_range(&self) -> Value {
        json!({
            "subnet": self.subnet,
            "rangeStart": self.address(2).to_string(),
            "rangeEnd": self.address(2).to_string(),
            "gateway": self.gateway.to_string(),
        })
    }

    /// A host-local range covering the IPv6 subnet.
    pub fn ipv6_range(&self) -> Value {
        json!({"subnet": self.subnet6, "gateway": self.gateway6.to_string()})
    }

    /// The bridge plugin on this test's bridge, with host-local handing out
    /// addresses from `ranges` (each a range set, e.g. `[net.ipv4_range()]`).
    /// The bridge is the pods' gateway; nothing is masqueraded.
    pub fn bridge_plugin(&self, ranges: Vec<Vec<Value>>) -> Value {
        json!({
            "type": "bridge",
            "bridge": self.bridge,
            "isGateway": true,
            "ipMasq": false,
            "hairpinMode": false,
            "ipam": {
                "type": "host-local",
                "dataDir": self.data_dir,
                "ranges": ranges,
            },
        })
    }

    /// A conflist named after this network with `plugins`, at CNI `version`.
    pub fn conflist(&self, version: &str, plugins: Vec<Value>) -> Value {
        json!({"cniVersion": version, "name": self.name, "plugins": plugins})
    }

    /// bridge (IPv4) + portmap + loopback at CNI `version`.
    pub fn standard_conflist(&self, version: &str) -> Value {
        self.conflist(
            version,
            vec![
                self.bridge_plugin(vec![vec![self.ipv4_range()]]),
                portmap_plugin(),
                loopback_plugin(),
            ],
        )
    }

    /// Installs `conflist` as crustd's network: written next to the file and
    /// renamed into place as `net.d/10-<name>.conflist`, which sorts before the
    /// harness's loopback network.
    pub fn install(&self, conflist: &Value) -> Result<PathBuf> {
        install_conflist(&self.net_d, &format!("10-{}", self.name), conflist)
    }

    /// Links enslaved to the bridge (the host ends of pod veths).
    pub fn veths(&self) -> Result<Vec<String>> {
        let out = tool("ip", &["-o", "link", "show", "master", &self.bridge])?;
        Ok(out
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|name| name.split('@').next().unwrap_or(name).to_string())
            .collect())
    }

    /// host-local's reservations: (address, owning container id).
    pub fn reservations(&self) -> Vec<(String, String)> {
        let dir = self.data_dir.join(&self.name);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                if name == "lock" || name.starts_with("last_reserved_ip") {
                    return None;
                }
                let owner = std::fs::read_to_string(e.path()).unwrap_or_default();
                Some((name, owner.lines().next().unwrap_or("").to_string()))
            })
            .collect()
    }

    /// NAT rules (iptables and ip6tables) that belong to this network: naming
    /// it in a comment or one of its subnets.
    pub fn nat_rules(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for save in ["iptables-save", "ip6tables-save"] {
            if save == "ip6tables-save" && find_program(save).is_none() {
                continue;
            }
            let text = tool(save, &["-t", "nat"])?;
            out.extend(
                text.lines()
                    .filter(|l| l.starts_with("-A ") && self.owns_rule(l))
                    .map(String::from),
            );
        }
        Ok(out)
    }

    /// Lines of `iptables-save` and `ip6tables-save` (all tables) that mention
    /// any of `needles` (pod ids, pod IPs).
    pub fn iptables_lines_mentioning(&self, needles: &[String]) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for save in ["iptables-save", "ip6tables-save"] {
            if save == "ip6tables-save" && find_program(save).is_none() {
                continue;
            }
            let text = tool(save, &[])?;
            out.extend(
                text.lines()
                    .filter(|l| {
                        needles
                            .iter()
                            .any(|n| !n.is_empty() && l.contains(n.as_str()))
                    })
                    .map(String::from),
            );
        }
        Ok(out)
    }

    fn owns_rule(&self, line: &str) -> bool {
        owns_rule(&self.name, self.index, line)
    }

    /// Everything of this network left on the host: veths, reservations and
    /// NAT rules (empty when every pod on it was torn down properly).
    pub fn leftovers(&self) -> Result<Vec<String>> {
        let mut out: Vec<String> = self
            .veths()?
            .into_iter()
            .map(|v| format!("veth {v} on {}", self.bridge))
            .collect();
        out.extend(
            self.reservations()
                .into_iter()
                .map(|(ip, owner)| format!("host-local reservation {ip} for {owner}")),
        );
        out.extend(
            self.nat_rules()?
                .into_iter()
                .map(|r| format!("NAT rule {r}")),
        );
        Ok(out)
    }

    /// Removes this network's NAT rules and the per-pod chains they jump to,
    /// with `iptables-restore --noflush`. Returns what failed.
    fn remove_nat_rules(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (save, restore) in [
            ("iptables-save", "iptables-restore"),
            ("ip6tables-save", "ip6tables-restore"),
        ] {
            if find_program(save).is_none() || find_program(restore).is_none() {
                continue;
            }
            let text = match tool(save, &["-t", "nat"]) {
                Ok(t) => t,
                Err(e) => {
                    problems.push(format!("{e:#}"));
                    continue;
                }
            };
            let Some(script) = nat_cleanup_script(&self.name, self.index, &text) else {
                continue;
            };
            if let Err(e) = restore_nat(restore, &script) {
                problems.push(format!("{restore}: {e:#}\n{script}"));
            }
        }
        problems
    }
}

impl Drop for TestNetwork {
    fn drop(&mut self) {
        let mut problems = Vec::new();
        // Pods first, while crustd can still DEL them the proper way.
        if self.socket.exists() {
            let _ = cri_remove_everything(&self.socket, Duration::from_secs(30));
        }
        problems.extend(self.remove_nat_rules());
        match self.veths() {
            Ok(veths) => {
                for v in veths {
                    if let Err(e) = tool("ip", &["link", "del", &v]) {
                        problems.push(format!("{e:#}"));
                    }
                }
            }
            Err(e) => problems.push(format!("{e:#}")),
        }
        if let Err(e) = tool("ip", &["link", "del", &self.bridge]) {
            problems.push(format!("{e:#}"));
        }
        let _ = std::fs::remove_file(self.net_d.join(format!("10-{}.conflist", self.name)));
        if let Err(e) = std::fs::remove_dir_all(&self.data_dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            problems.push(format!("removing {}: {e}", self.data_dir.display()));
        }
        problems.extend(release_forwarding());
        if !problems.is_empty() {
            eprintln!(
                "crust-e2e: cleanup of network {} had problems: {problems:#?}",
                self.name
            );
        }
    }
}

/// The portmap plugin, declaring the `portMappings` capability.
pub fn portmap_plugin() -> Value {
    json!({"type": "portmap", "capabilities": {"portMappings": true}})
}

/// The loopback plugin.
pub fn loopback_plugin() -> Value {
    json!({"type": "loopback"})
}

/// Writes `conflist` to `<net_d>/<stem>.conflist` atomically (a temp file that
/// crustd ignores, then a rename).
pub fn install_conflist(net_d: &Path, stem: &str, conflist: &Value) -> Result<PathBuf> {
    let path = net_d.join(format!("{stem}.conflist"));
    let tmp = net_d.join(format!(".{stem}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec_pretty(conflist)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(path)
}

fn restore_nat(restore: &str, script: &str) -> Result<()> {
    use std::io::Write;
    use std::process::Stdio;
    let path = find_program(restore).with_context(|| format!("`{restore}` is not installed"))?;
    let mut child = Command::new(path)
        .arg("--noflush")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Records the forwarding sysctls when the first test network of the process
/// is claimed.
fn acquire_forwarding() {
    let mut state = FORWARDING.lock().unwrap_or_else(|p| p.into_inner());
    if state.networks == 0 {
        state.sysctls = FORWARDING_SYSCTLS
            .iter()
            .filter_map(|p| {
                let v = std::fs::read_to_string(p).ok()?;
                Some((PathBuf::from(p), v.trim().to_string()))
            })
            .collect();
        state.portmap_chains_existed = nat(&["-S", "CNI-HOSTPORT-DNAT"]);
    }
    state.networks += 1;
}

/// Puts the forwarding sysctls back, and removes portmap's NAT chains if the
/// tests created them, when the last test network is gone.
fn release_forwarding() -> Vec<String> {
    let mut state = FORWARDING.lock().unwrap_or_else(|p| p.into_inner());
    state.networks = state.networks.saturating_sub(1);
    if state.networks > 0 {
        return Vec::new();
    }
    let mut problems = Vec::new();
    if !state.portmap_chains_existed {
        problems.extend(remove_portmap_scaffolding());
        state.portmap_chains_existed = true;
    }
    for (path, value) in std::mem::take(&mut state.sysctls) {
        let now = std::fs::read_to_string(&path).unwrap_or_default();
        if now.trim() != value
            && let Err(e) = std::fs::write(&path, &value)
        {
            problems.push(format!("restoring {} to {value}: {e}", path.display()));
        }
    }
    problems
}

/// Everything torn-down pods on `net` may have left: the network's veths,
/// reservations and NAT rules, crustd's attachment records, and its mounts,
/// bundles, shims and cgroups.
pub fn pod_leftovers(env: &TestEnv, net: &TestNetwork) -> Result<Vec<String>> {
    let mut left = net.leftovers()?;
    left.extend(
        attachment_records(env)
            .into_iter()
            .map(|id| format!("attachment record of {id}")),
    );
    left.extend(env.daemon.leaks());
    Ok(left)
}

/// Ids of the pods crustd holds a CNI attachment record for (`<root>/cni`).
pub fn attachment_records(env: &TestEnv) -> Vec<String> {
    let dir = env.daemon.paths().root.join("cni");
    std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_str()?
                        .strip_suffix(".json")
                        .map(String::from)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A TCP hostPort mapping as kubelet sends it.
pub fn tcp_host_port(container_port: i32, host_port: u16) -> crate::cri::PortMapping {
    crate::cri::PortMapping {
        protocol: crate::cri::Protocol::Tcp as i32,
        container_port,
        host_port: host_port.into(),
        host_ip: String::new(),
    }
}

/// The pod's addresses from PodSandboxStatus: the primary one, then the
/// additional ones.
pub async fn pod_ips(env: &TestEnv, pod_id: &str) -> Result<Vec<String>> {
    let status = env
        .cri
        .pod_sandbox_status(pod_id)
        .await
        .context("PodSandboxStatus")?;
    let network = status.network.unwrap_or_default();
    Ok(std::iter::once(network.ip)
        .filter(|ip| !ip.is_empty())
        .chain(network.additional_ips.into_iter().map(|ip| ip.ip))
        .collect())
}

/// Connects to `addr` (retrying refused or unreachable attempts for up to
/// `limit`), sends `message`, half-closes and returns everything the server
/// sent until it closed.
pub async fn tcp_exchange(
    addr: std::net::SocketAddr,
    message: &str,
    limit: Duration,
) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let deadline = std::time::Instant::now() + limit;
    loop {
        let attempt = async {
            let mut stream = tokio::net::TcpStream::connect(addr).await?;
            stream.write_all(message.as_bytes()).await?;
            stream.shutdown().await?;
            let mut reply = String::new();
            stream.read_to_string(&mut reply).await?;
            anyhow::Ok(reply)
        };
        match tokio::time::timeout(Duration::from_secs(5), attempt).await {
            Ok(Ok(reply)) if !reply.is_empty() => return Ok(reply),
            Ok(Ok(_)) => {}
            Ok(Err(e)) if std::time::Instant::now() >= deadline => {
                return Err(e.context(format!("no TCP exchange with {addr} within {limit:?}")));
            }
            Err(_) if std::time::Instant::now() >= deadline => {
                bail!("{addr} did not answer within {limit:?}")
            }
            _ => {}
        }
        if std::time::Instant::now() >= deadline {
            bail!("{addr} only ever closed without a reply within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether an `iptables-save` rule belongs to network `name` (index `index`):
/// it names the network in a comment (portmap's `dnat name: "<name>"`) or
/// mentions one of its subnets.
fn owns_rule(name: &str, index: u8, line: &str) -> bool {
    line.contains(&format!("{name}\\\""))
        || line.contains(&format!("10.243.{index}."))
        || line.contains(&format!("fd43:7275:7374:{index:x}:"))
}

/// The `iptables-restore --noflush` input that deletes the rules of network
/// `name` (index `index`) from `saved` (an `iptables-save -t nat` dump) and
/// the per-pod chains they jump to, or None when it has none.
fn nat_cleanup_script(name: &str, index: u8, saved: &str) -> Option<String> {
    let rules: Vec<&str> = saved
        .lines()
        .filter(|l| l.starts_with("-A ") && owns_rule(name, index, l))
        .collect();
    if rules.is_empty() {
        return None;
    }
    let chain_of = |l: &str| l.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut own_chains: Vec<String> = Vec::new();
    for rule in &rules {
        let words: Vec<&str> = rule.split_whitespace().collect();
        if let Some(target) = words.windows(2).find(|w| w[0] == "-j").map(|w| w[1])
            && (target.starts_with("CNI-DN-") || target.starts_with("CNI-SN-"))
        {
            own_chains.push(target.to_string());
        }
        let chain = chain_of(rule);
        if chain.starts_with("CNI-DN-") || chain.starts_with("CNI-SN-") {
            own_chains.push(chain);
        }
    }
    own_chains.sort();
    own_chains.dedup();
    let mut script = String::from("*nat\n");
    for rule in &rules {
        if !own_chains.contains(&chain_of(rule)) {
            script.push_str(&format!("-D {}\n", &rule[3..]));
        }
    }
    for chain in &own_chains {
        script.push_str(&format!("-F {chain}\n-X {chain}\n"));
    }
    script.push_str("COMMIT\n");
    Some(script)
}

/// A free TCP port on 127.0.0.1 (free when asked; the server that gets it
/// binds it soon after).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAVED: &str = r#"*nat
:CNI-HOSTPORT-DNAT - [0:0]
:CNI-DN-0123456789abcdef01234 - [0:0]
:CNI-DN-fedcba9876543210fedcb - [0:0]
-A OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \"crust-e2e-net7\" id: \"abc\"" -m multiport --dports 31007 -j CNI-DN-0123456789abcdef01234
-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \"crust-e2e-net70\" id: \"def\"" -m multiport --dports 31070 -j CNI-DN-fedcba9876543210fedcb
-A CNI-DN-0123456789abcdef01234 -s 10.243.7.0/24 -p tcp -m tcp --dport 31007 -j CNI-HOSTPORT-SETMARK
-A CNI-DN-0123456789abcdef01234 -s 127.0.0.1/32 -p tcp -m tcp --dport 31007 -j CNI-HOSTPORT-SETMARK
-A CNI-DN-0123456789abcdef01234 -p tcp -m tcp --dport 31007 -j DNAT --to-destination 10.243.7.2:8080
-A CNI-DN-fedcba9876543210fedcb -p tcp -m tcp --dport 31070 -j DNAT --to-destination 10.243.70.2:8080
COMMIT
"#;

    #[test]
    fn cleanup_script_removes_only_the_networks_rules_and_chains() {
        let script = nat_cleanup_script("crust-e2e-net7", 7, SAVED).unwrap();
        assert_eq!(
            script,
            "*nat\n\
             -D CNI-HOSTPORT-DNAT -p tcp -m comment --comment \"dnat name: \\\"crust-e2e-net7\\\" id: \\\"abc\\\"\" -m multiport --dports 31007 -j CNI-DN-0123456789abcdef01234\n\
             -F CNI-DN-0123456789abcdef01234\n\
             -X CNI-DN-0123456789abcdef01234\n\
             COMMIT\n"
        );
        assert_eq!(nat_cleanup_script("crust-e2e-net8", 8, SAVED), None);
    }
}
