//! Pod networking through CNI with Debian's reference plugins (bridge,
//! host-local, portmap, loopback) on a private bridge and subnet per test, and
//! with scripted plugins where a test must see exactly what crustd sends:
//! pod-to-pod, pod-to-host and hostPort traffic, DNS, dual stack, host-network
//! pods, NetworkReady following the config directory, CNI 0.3.1 to 1.1.0,
//! runtimeConfig and CNI_ARGS, plugin errors, and pod sysctls.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use crust_e2e::assertions::expect_code;
use crust_e2e::cri::{NamespaceMode, StatusRequest, UpdateRuntimeConfigRequest};
use crust_e2e::fake_cni::FakePlugin;
use crust_e2e::network::{
    REFERENCE_PLUGINS, TestNetwork, attachment_records, install_conflist, loopback_plugin, pod_ips,
    portmap_plugin, tcp_exchange, tcp_host_port, tool,
};
use crust_e2e::pod_config::{
    DNS_OPTIONS, DNS_SEARCHES, DNS_SERVERS, namespace_options, sandbox_security_mut,
};
use crust_e2e::{Pod, TestEnv, run, wait};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

/// The port pod servers listen on.
const SERVER_PORT: i32 = 8080;

/// A busybox container `name` in `pod` that just sleeps.
async fn sleeper(env: &TestEnv, pod: &Pod, name: &str) -> Result<String> {
    let config = env.shell_container(pod, name, "exec sleep 3600")?;
    env.start_container(pod, &config).await
}

/// A busybox container in `pod` answering every TCP connection on
/// [`SERVER_PORT`] with `reply`.
async fn server(env: &TestEnv, pod: &Pod, reply: &str) -> Result<String> {
    let script = format!("while true; do echo {reply} | nc -l -p {SERVER_PORT}; done");
    let config = env.shell_container(pod, "server", &script)?;
    env.start_container(pod, &config).await
}

/// From container `client`: sends `message` to `addr` with busybox nc, retrying
/// for about ten seconds until something answers; returns the answer.
async fn nc_from_pod(
    env: &TestEnv,
    client: &str,
    addr: &str,
    port: u16,
    message: &str,
) -> Result<String> {
    let script = format!(
        "for i in $(seq 50); do r=$(echo {message} | nc -w 2 {addr} {port}) && [ -n \"$r\" ] && echo \"$r\" && exit 0; sleep 0.2; done; exit 1"
    );
    env.sh(client, &script)
        .await
        .with_context(|| format!("pod could not reach {addr} port {port}"))
}

/// The pod's single IPv4 address, checked to lie in `net`'s subnet.
async fn ipv4_in(env: &TestEnv, net: &TestNetwork, pod: &Pod) -> Result<String> {
    let ips = pod_ips(env, &pod.id).await?;
    let prefix = format!("10.243.{}.", net.index);
    ensure!(
        ips.len() == 1 && ips[0].starts_with(&prefix),
        "pod {} should have one address in {}, has {ips:?}",
        pod.id,
        net.subnet
    );
    Ok(ips[0].clone())
}

async fn remove_pods(env: &TestEnv, pods: &[&Pod]) -> Result<()> {
    for pod in pods {
        env.cri.stop_pod_sandbox(&pod.id).await?;
        env.cri.remove_pod_sandbox(&pod.id).await?;
    }
    Ok(())
}

/// Requires that neither crustd nor the network left anything behind.
fn expect_clean(env: &TestEnv, net: &TestNetwork) -> Result<()> {
    let left = net.leftovers()?;
    ensure!(left.is_empty(), "the pod network left behind: {left:#?}");
    let records = attachment_records(env);
    ensure!(records.is_empty(), "attachment records left: {records:?}");
    env.assert_no_leaks()
}

#[test]
fn pods_reach_each_other_the_host_and_host_ports() {
    run(
        "pods_reach_each_other_the_host_and_host_ports",
        bridge_traffic,
    );
}

async fn bridge_traffic(env: &mut TestEnv) -> Result<()> {
    let net = TestNetwork::claim(env)?;
    net.install(&net.standard_conflist("1.0.0"))?;
    env.pull(&env.images.busybox.reference).await?;

    let mut config = env.pod_config("server")?;
    config.port_mappings = vec![tcp_host_port(SERVER_PORT, net.host_port)];
    let server_pod = env.run_pod_with(config).await?;
    let client_pod = env.run_pod("client").await?;
    let server_ip = ipv4_in(env, &net, &server_pod).await?;
    let client_ip = ipv4_in(env, &net, &client_pod).await?;
    ensure!(server_ip != client_ip, "both pods got {server_ip}");
    server(env, &server_pod, "pong").await?;
    let client = sleeper(env, &client_pod, "client").await?;

    let eth0 = env.sh(&client, "ip -o -4 addr show eth0").await?;
    ensure!(
        eth0.contains(&format!("inet {client_ip}/24")),
        "eth0 in the pod does not carry {client_ip}/24:\n{eth0}"
    );

    // Pod to pod, across the bridge.
    let answer = nc_from_pod(env, &client, &server_ip, SERVER_PORT as u16, "ping").await?;
    ensure!(answer.trim() == "pong", "pod-to-pod answer {answer:?}");

    // Pod to a listener of the host, on the bridge's address.
    let listener = tokio::net::TcpListener::bind((net.gateway, 0)).await?;
    let port = listener.local_addr()?.port();
    let host_side = tokio::spawn(async move {
        let (mut stream, peer) = listener.accept().await?;
        let mut got = String::new();
        stream.read_to_string(&mut got).await?;
        stream.write_all(b"hello-pod\n").await?;
        stream.shutdown().await?;
        anyhow::Ok((got, peer))
    });
    let answer = nc_from_pod(env, &client, &net.gateway.to_string(), port, "ping-host").await?;
    ensure!(
        answer.trim() == "hello-pod",
        "host listener answered {answer:?}"
    );
    let (got, peer) = tokio::time::timeout(Duration::from_secs(10), host_side)
        .await
        .context("the host listener saw no connection")???;
    ensure!(got == "ping-host\n", "the host listener got {got:?}");
    ensure!(
        peer.ip().to_string() == client_ip,
        "the connection came from {peer}, not the pod's {client_ip}"
    );

    // Host to pod through the hostPort mapping, on the bridge's address.
    let rules = net.nat_rules()?;
    ensure!(
        rules.iter().any(|r| r.contains(&server_pod.id)),
        "portmap installed no rule for the server pod: {rules:#?}"
    );
    let reply = tcp_exchange(
        SocketAddr::new(IpAddr::V4(net.gateway), net.host_port),
        "ping-port\n",
        Duration::from_secs(15),
    )
    .await?;
    ensure!(reply.trim() == "pong", "hostPort answer {reply:?}");

    // The pod's DNS config is its resolv.conf.
    env.expect_pod_dns(&client).await?;

    remove_pods(env, &[&server_pod, &client_pod]).await?;
    expect_clean(env, &net)
}

#[test]
fn dual_stack_pod_reports_both_addresses() {
    run("dual_stack_pod_reports_both_addresses", dual_stack);
}

async fn dual_stack(env: &mut TestEnv) -> Result<()> {
    let net = TestNetwork::claim(env)?;
    let bridge = net.bridge_plugin(vec![vec![net.ipv4_range()], vec![net.ipv6_range()]]);
    net.install(&net.conflist("1.0.0", vec![bridge, loopback_plugin()]))?;
    env.pull(&env.images.busybox.reference).await?;
    let pod = env.run_pod("dual").await?;
    let ips = pod_ips(env, &pod.id).await?;
    let parsed: Vec<IpAddr> = ips
        .iter()
        .map(|ip| ip.parse().with_context(|| format!("{ip:?} is not an IP")))
        .collect::<Result<_>>()?;
    ensure!(
        parsed.len() == 2
            && parsed[0]
                .to_string()
                .starts_with(&format!("10.243.{}.", net.index))
            && parsed[1].is_ipv6()
            && parsed[1]
                .to_string()
                .starts_with(&format!("fd43:7275:7374:{:x}:", net.index)),
        "PodSandboxStatus should give the IPv4 address as ip and the IPv6 one in additional_ips: {ips:?}"
    );
    let client = sleeper(env, &pod, "probe").await?;
    let addrs = env.sh(&client, "ip -o addr show eth0").await?;
    for ip in &ips {
        ensure!(addrs.contains(ip.as_str()), "eth0 lacks {ip}:\n{addrs}");
    }

    // The pod reaches the host over IPv6 too (the bridge's address may still
    // be tentative for a moment).
    let listener = wait::until(
        "the bridge's IPv6 address",
        Duration::from_secs(10),
        || async { Ok(tokio::net::TcpListener::bind((net.gateway6, 0)).await.ok()) },
    )
    .await?;
    let port = listener.local_addr()?.port();
    let host_side = tokio::spawn(async move {
        let (mut stream, peer) = listener.accept().await?;
        let mut got = String::new();
        stream.read_to_string(&mut got).await?;
        stream.write_all(b"hello-v6\n").await?;
        anyhow::Ok(peer)
    });
    let answer = nc_from_pod(env, &client, &net.gateway6.to_string(), port, "ping6").await?;
    ensure!(
        answer.trim() == "hello-v6",
        "IPv6 host listener answered {answer:?}"
    );
    let peer = tokio::time::timeout(Duration::from_secs(10), host_side).await???;
    ensure!(peer.ip() == parsed[1], "IPv6 connection came from {peer}");

    remove_pods(env, &[&pod]).await?;
    expect_clean(env, &net)
}

#[test]
fn host_network_pod_sees_host_interfaces_and_runs_no_cni() {
    run(
        "host_network_pod_sees_host_interfaces_and_runs_no_cni",
        host_network,
    );
}

async fn host_network(env: &mut TestEnv) -> Result<()> {
    let result = json!({
        "cniVersion": "1.0.0",
        "ips": [{"address": "198.51.100.7/24"}],
    });
    let plugin = FakePlugin::install(env, "crust-e2e-probe", &result)?;
    let paths = env.daemon.paths().clone();
    install_conflist(
        &paths.net_d,
        "10-probe",
        &json!({"cniVersion": "1.0.0", "name": "probe", "plugins": [{"type": plugin.name}]}),
    )?;
    env.pull(&env.images.busybox.reference).await?;

    let mut config = env.pod_config("hostnet")?;
    sandbox_security_mut(&mut config).namespace_options = Some(namespace_options(
        NamespaceMode::Node,
        NamespaceMode::Container,
        NamespaceMode::Pod,
    ));
    let pod = env.run_pod_with(config).await?;
    let mut container = env.shell_container(&pod, "probe", "exec sleep 3600")?;
    crust_e2e::pod_config::security_mut(&mut container).namespace_options =
        Some(namespace_options(
            NamespaceMode::Node,
            NamespaceMode::Container,
            NamespaceMode::Pod,
        ));
    let id = env.start_container(&pod, &container).await?;

    let host_net = std::fs::read_link("/proc/self/ns/net")?;
    let pod_net = env.sh(&id, "readlink /proc/self/ns/net").await?;
    ensure!(
        pod_net.trim() == host_net.to_string_lossy(),
        "a host-network pod is in {pod_net:?}, not the host's {host_net:?}"
    );
    let route = tool("ip", &["route", "show", "default"])?;
    let uplink = route
        .split_whitespace()
        .skip_while(|w| *w != "dev")
        .nth(1)
        .context("the host has no default route")?
        .to_string();
    let links = env.sh(&id, "ip -o link").await?;
    ensure!(
        links.contains(&format!(": {uplink}:")),
        "the pod does not see the host's {uplink}:\n{links}"
    );
    ensure!(
        pod_ips(env, &pod.id).await?.is_empty(),
        "a host-network pod reports pod IPs"
    );
    let calls = plugin.calls()?;
    ensure!(calls.is_empty(), "a host-network pod ran CNI: {calls:#?}");
    ensure!(
        attachment_records(env).is_empty(),
        "a host-network pod has an attachment record"
    );

    // The same network does run for an ordinary pod.
    let pod_net = env.run_pod("podnet").await?;
    ensure!(
        pod_ips(env, &pod_net.id).await? == vec!["198.51.100.7".to_string()],
        "the ordinary pod did not get the plugin's address"
    );
    ensure!(
        plugin.calls_of("ADD")?.len() == 1,
        "the ordinary pod's ADD was not seen"
    );
    remove_pods(env, &[&pod, &pod_net]).await?;
    ensure!(
        plugin.calls_of("DEL")?.len() == 1,
        "no DEL for the ordinary pod"
    );
    env.assert_no_leaks()
}

#[test]
fn network_ready_follows_the_config_directory() {
    run("network_ready_follows_the_config_directory", network_ready);
}

/// Status's NetworkReady condition: (status, reason, message).
async fn network_condition(env: &TestEnv) -> Result<(bool, String, String)> {
    let status = env.cri.status().await?.status.unwrap_or_default();
    let c = status
        .conditions
        .into_iter()
        .find(|c| c.r#type == "NetworkReady")
        .context("Status has no NetworkReady condition")?;
    Ok((c.status, c.reason, c.message))
}

/// What `crictl info` shows: the effective config, the CNI network in use
/// with its file and readiness, and the runtime handlers, each JSON.
async fn verbose_status_names_the_network(env: &TestEnv, net: &TestNetwork) -> Result<()> {
    let info = env
        .cri
        .runtime
        .clone()
        .status(StatusRequest { verbose: true })
        .await?
        .into_inner()
        .info;
    let json = |key: &str| -> Result<Value> {
        let text = info
            .get(key)
            .with_context(|| format!("verbose Status lacks {key:?}: {info:?}"))?;
        serde_json::from_str(text).with_context(|| format!("{key} is not JSON: {text}"))
    };
    let config = json("config")?;
    ensure!(
        config["cni"]["conf_dirs"].is_array(),
        "the config lacks the CNI directories: {config}"
    );
    let cni = json("cniconfig")?;
    let wanted = net.standard_conflist("1.0.0");
    ensure!(
        cni["ready"] == true
            && cni["network"]["name"] == wanted["name"]
            && cni["network"]["source"]
                .as_str()
                .is_some_and(|s| s.ends_with(".conflist"))
            && cni["network"]["plugins"].as_array().map(Vec::len) == Some(3),
        "cniconfig does not describe the installed network {}: {cni}",
        wanted["name"]
    );
    let handlers = json("runtimeHandlers")?;
    ensure!(
        handlers["handlers"][0]["name"] == "" && handlers["handlers"][0]["runtime"].is_string(),
        "runtimeHandlers: {handlers}"
    );
    Ok(())
}

async fn expect_not_ready(env: &TestEnv, wanted: &[&str]) -> Result<()> {
    let (ready, reason, message) = network_condition(env).await?;
    ensure!(
        !ready && reason == "NetworkPluginNotReady",
        "NetworkReady should be false with NetworkPluginNotReady, is {ready} {reason:?}: {message}"
    );
    for w in wanted {
        ensure!(
            message.contains(w),
            "NetworkReady's message {message:?} does not say {w:?}"
        );
    }
    Ok(())
}

async fn network_ready(env: &mut TestEnv) -> Result<()> {
    let net_d = env.daemon.paths().net_d.clone();
    std::fs::remove_file(net_d.join(crust_e2e::daemon::LOOPBACK_NETWORK_FILE))?;
    env.reconfigure("").await?;
    env.pull(&env.images.busybox.reference).await?;
    let net_d_text = net_d.to_string_lossy().into_owned();
    expect_not_ready(env, &["no CNI network config", &net_d_text]).await?;

    let refused = env.run_pod("too-early").await;
    let status = match refused {
        Ok(pod) => bail!(
            "RunPodSandbox without a network config succeeded: {}",
            pod.id
        ),
        Err(e) => e
            .downcast::<tonic::Status>()
            .context("RunPodSandbox failed without a gRPC status")?,
    };
    ensure!(
        status.code() == Code::FailedPrecondition && status.message().contains("not ready"),
        "RunPodSandbox without a network: {:?} {}",
        status.code(),
        status.message()
    );
    let mut config = env.pod_config("hostnet")?;
    sandbox_security_mut(&mut config).namespace_options = Some(namespace_options(
        NamespaceMode::Node,
        NamespaceMode::Container,
        NamespaceMode::Pod,
    ));
    let hostnet = env.run_pod_with(config).await?;

    // A file that is not a usable network, or names a plugin nobody installed.
    let broken = net_d.join("05-broken.conflist");
    std::fs::write(&broken, "{ not json")?;
    expect_not_ready(env, &["05-broken.conflist", "not valid JSON"]).await?;
    std::fs::remove_file(&broken)?;
    install_conflist(
        &net_d,
        "05-missing",
        &json!({"cniVersion": "1.0.0", "name": "m", "plugins": [{"type": "crust-e2e-not-installed"}]}),
    )?;
    expect_not_ready(env, &["crust-e2e-not-installed", "not installed"]).await?;
    std::fs::remove_file(net_d.join("05-missing.conflist"))?;

    // A real network appears: NetworkReady flips without a restart.
    let net = TestNetwork::claim(env)?;
    net.install(&net.standard_conflist("1.0.0"))?;
    let (ready, reason, message) = network_condition(env).await?;
    ensure!(
        ready,
        "NetworkReady stayed false after a config appeared: {reason} {message}"
    );
    verbose_status_names_the_network(env, &net).await?;
    let pod = env.run_pod("on-time").await?;
    ipv4_in(env, &net, &pod).await?;

    remove_pods(env, &[&pod, &hostnet]).await?;
    expect_clean(env, &net)
}

#[test]
fn reference_plugins_speak_cni_0_3_1_0_4_0_and_1_0_0() {
    run(
        "reference_plugins_speak_cni_0_3_1_0_4_0_and_1_0_0",
        reference_versions,
    );
}

async fn reference_versions(env: &mut TestEnv) -> Result<()> {
    let net = TestNetwork::claim(env)?;
    env.pull(&env.images.busybox.reference).await?;
    for version in ["0.3.1", "0.4.0", "1.0.0"] {
        net.install(&net.standard_conflist(version))?;
        let mut config = env.pod_config(&format!("v{}", version.replace('.', "")))?;
        config.port_mappings = vec![tcp_host_port(SERVER_PORT, net.host_port)];
        let pod = env.run_pod_with(config).await?;
        let ip = ipv4_in(env, &net, &pod).await.context(version)?;
        let owners: Vec<String> = net.reservations().into_iter().map(|(_, o)| o).collect();
        ensure!(
            owners == vec![pod.id.clone()],
            "CNI {version}: reservations {owners:?}"
        );
        let record = std::fs::read_to_string(
            env.daemon
                .paths()
                .root
                .join("cni")
                .join(format!("{}.json", pod.id)),
        )
        .with_context(|| format!("CNI {version}: no attachment record"))?;
        let record: Value = serde_json::from_str(&record)?;
        ensure!(
            record["network"]["cniVersion"] == version && record["result"]["cniVersion"] == version,
            "CNI {version}: the record holds {record}"
        );
        let id = server(env, &pod, &format!("pong-{version}")).await?;
        let eth0 = env.sh(&id, "ip -o -4 addr show eth0").await?;
        ensure!(
            eth0.contains(&ip),
            "CNI {version}: eth0 lacks {ip}:\n{eth0}"
        );
        let reply = tcp_exchange(
            SocketAddr::new(IpAddr::V4(net.gateway), net.host_port),
            "ping\n",
            Duration::from_secs(15),
        )
        .await
        .with_context(|| format!("CNI {version}: hostPort"))?;
        ensure!(
            reply.trim() == format!("pong-{version}"),
            "CNI {version}: hostPort answered {reply:?}"
        );
        remove_pods(env, &[&pod]).await?;
        expect_clean(env, &net).with_context(|| format!("after the CNI {version} pod"))?;
    }
    Ok(())
}

#[test]
fn cni_1_1_0_status_prev_result_runtime_config_and_args() {
    run(
        "cni_1_1_0_status_prev_result_runtime_config_and_args",
        scripted_1_1_0,
    );
}

async fn scripted_1_1_0(env: &mut TestEnv) -> Result<()> {
    let first_result = json!({
        "cniVersion": "1.1.0",
        "interfaces": [{"name": "eth0"}],
        "ips": [{"address": "198.51.100.7/24", "interface": 0}],
    });
    let second_result = json!({
        "cniVersion": "1.1.0",
        "interfaces": [{"name": "eth0"}],
        "ips": [
            {"address": "198.51.100.8/24", "interface": 0},
            {"address": "2001:db8::8/64", "interface": 0}
        ],
    });
    let first = FakePlugin::install(env, "crust-e2e-first", &first_result)?;
    let second = FakePlugin::install(env, "crust-e2e-second", &second_result)?;
    let paths = env.daemon.paths().clone();
    install_conflist(
        &paths.net_d,
        "10-scripted",
        &json!({
            "cniVersion": "1.1.0",
            "name": "scripted",
            "plugins": [
                {"type": first.name, "flavour": "first"},
                {"type": second.name, "capabilities": {
                    "portMappings": true, "bandwidth": true, "dns": true,
                    "ipRanges": true, "cgroupPath": true, "notACapability": true
                }}
            ]
        }),
    )?;

    // STATUS drives NetworkReady.
    let (ready, reason, message) = network_condition(env).await?;
    ensure!(
        ready,
        "NetworkReady false with working plugins: {reason} {message}"
    );
    for plugin in [&first, &second] {
        let status = plugin.calls_of("STATUS")?;
        let call = status
            .last()
            .with_context(|| format!("{} got no STATUS", plugin.name))?;
        ensure!(
            call.stdin["cniVersion"] == "1.1.0" && call.stdin["name"] == "scripted",
            "STATUS config: {}",
            call.stdin
        );
    }
    second.set_status_failing(true)?;
    expect_not_ready(env, &["switched off by the test"]).await?;
    second.set_status_failing(false)?;
    let (ready, _, message) = network_condition(env).await?;
    ensure!(
        ready,
        "NetworkReady stayed false after STATUS recovered: {message}"
    );

    // runtimeConfig inputs: the pod CIDR, ports, bandwidth, DNS, cgroup.
    let pod_cidr = "10.244.7.0/24";
    env.cri
        .runtime
        .clone()
        .update_runtime_config(UpdateRuntimeConfigRequest {
            runtime_config: Some(crust_e2e::cri::RuntimeConfig {
                network_config: Some(crust_e2e::cri::NetworkConfig {
                    pod_cidr: pod_cidr.into(),
                }),
            }),
        })
        .await?;
    let mut config = env.pod_config("scripted")?;
    config.port_mappings = vec![
        tcp_host_port(80, 30080),
        crust_e2e::cri::PortMapping {
            protocol: crust_e2e::cri::Protocol::Udp as i32,
            container_port: 53,
            host_port: 0,
            host_ip: String::new(),
        },
    ];
    config
        .annotations
        .insert("kubernetes.io/ingress-bandwidth".into(), "10M".into());
    config
        .annotations
        .insert("kubernetes.io/egress-bandwidth".into(), "1Mi".into());
    let pod = env.run_pod_with(config.clone()).await?;
    let meta = config.metadata.clone().unwrap_or_default();
    let cgroup_parent = config.linux.clone().unwrap_or_default().cgroup_parent;

    ensure!(
        pod_ips(env, &pod.id).await? == vec!["198.51.100.8".to_string(), "2001:db8::8".to_string()],
        "the pod's IPs do not come from the last plugin's result: {:?}",
        pod_ips(env, &pod.id).await?
    );
    let add1 = first.calls_of("ADD")?;
    let add2 = second.calls_of("ADD")?;
    ensure!(
        add1.len() == 1 && add2.len() == 1,
        "ADD calls: {add1:#?} {add2:#?}"
    );
    let (add1, add2) = (&add1[0], &add2[0]);
    let args = format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
        meta.namespace, meta.name, pod.id, meta.uid
    );
    for call in [add1, add2] {
        ensure!(
            call.var("CNI_CONTAINERID") == pod.id,
            "CNI_CONTAINERID {:?}",
            call.var("CNI_CONTAINERID")
        );
        ensure!(
            call.var("CNI_IFNAME") == "eth0",
            "CNI_IFNAME {:?}",
            call.var("CNI_IFNAME")
        );
        ensure!(
            call.var("CNI_ARGS") == args,
            "CNI_ARGS {:?}, wanted {args:?}",
            call.var("CNI_ARGS")
        );
        ensure!(
            call.var("CNI_NETNS").ends_with("/net") && call.var("CNI_NETNS").contains(&pod.id),
            "CNI_NETNS {:?}",
            call.var("CNI_NETNS")
        );
        let cni_path = call.var("CNI_PATH");
        ensure!(
            cni_path.split(':').any(|d| d == REFERENCE_PLUGINS)
                && cni_path
                    .split(':')
                    .any(|d| d == paths.cni_bin.to_string_lossy()),
            "CNI_PATH {cni_path:?}"
        );
        ensure!(call.stdin["cniVersion"] == "1.1.0" && call.stdin["name"] == "scripted");
    }
    ensure!(
        add1.stdin.get("prevResult").is_none() && add1.stdin.get("runtimeConfig").is_none(),
        "the first plugin got a prevResult or a runtimeConfig it did not ask for: {}",
        add1.stdin
    );
    ensure!(
        add1.stdin["flavour"] == "first",
        "the plugin's own keys are lost: {}",
        add1.stdin
    );
    ensure!(
        add2.stdin["prevResult"] == first_result,
        "the second plugin's prevResult is not the first's result: {}",
        add2.stdin
    );
    let rc = &add2.stdin["runtimeConfig"];
    let expected = json!({
        "portMappings": [{"hostPort": 30080, "containerPort": 80, "protocol": "tcp", "hostIP": ""}],
        "dns": {
            "servers": DNS_SERVERS,
            "searches": DNS_SEARCHES,
            "options": DNS_OPTIONS,
        },
        "ipRanges": [[{"subnet": pod_cidr}]],
        "cgroupPath": cgroup_parent,
    });
    for key in ["portMappings", "dns", "ipRanges", "cgroupPath"] {
        ensure!(
            rc[key] == expected[key],
            "runtimeConfig.{key} is {}, wanted {}",
            rc[key],
            expected[key]
        );
    }
    ensure!(
        rc["bandwidth"]["ingressRate"] == 10_000_000 && rc["bandwidth"]["egressRate"] == 1_048_576,
        "runtimeConfig.bandwidth is {}",
        rc["bandwidth"]
    );
    ensure!(
        rc.get("notACapability").is_none(),
        "runtimeConfig has an unknown capability: {rc}"
    );

    // A restarted crustd still knows the pod CIDR kubelet set (kubelet sends
    // it again only when it changes).
    env.restart_daemon().await?;
    let later = env.run_pod("after-restart").await?;
    let add = second.calls_of("ADD")?;
    let add = add.last().context("no ADD after the restart")?;
    ensure!(
        add.var("CNI_CONTAINERID") == later.id
            && add.stdin["runtimeConfig"]["ipRanges"] == expected["ipRanges"],
        "after a restart, ADD lost the pod CIDR: {}",
        add.stdin
    );

    // DEL after the restart runs the chain backwards with the config, args
    // and final result ADD had, though the config file is gone by now.
    std::fs::remove_file(paths.net_d.join("10-scripted.conflist"))?;
    env.cri.stop_pod_sandbox(&pod.id).await?;
    let del1 = first.calls_of("DEL")?;
    let del2 = second.calls_of("DEL")?;
    ensure!(
        del1.len() == 1 && del2.len() == 1,
        "DEL calls: {del1:#?} {del2:#?}"
    );
    ensure!(
        del2[0].stamp < del1[0].stamp,
        "DEL did not run the chain in reverse"
    );
    for call in [&del1[0], &del2[0]] {
        ensure!(
            call.stdin["prevResult"] == second_result && call.var("CNI_ARGS") == args,
            "DEL config: {} args {:?}",
            call.stdin,
            call.var("CNI_ARGS")
        );
    }
    ensure!(
        del2[0].stdin["runtimeConfig"]["portMappings"] == expected["portMappings"],
        "DEL lacks the runtimeConfig of ADD: {}",
        del2[0].stdin
    );
    ensure!(
        del1[0].stdin["name"] == "scripted" && del1[0].stdin["flavour"] == "first",
        "DEL did not get the config ADD used: {}",
        del1[0].stdin
    );
    env.cri.remove_pod_sandbox(&pod.id).await?;
    remove_pods(env, &[&later]).await?;
    ensure!(attachment_records(env).is_empty(), "attachment record left");

    let bad = env
        .cri
        .runtime
        .clone()
        .update_runtime_config(UpdateRuntimeConfigRequest {
            runtime_config: Some(crust_e2e::cri::RuntimeConfig {
                network_config: Some(crust_e2e::cri::NetworkConfig {
                    pod_cidr: "10.244.7.0/99".into(),
                }),
            }),
        })
        .await;
    expect_code(
        bad,
        Code::InvalidArgument,
        "UpdateRuntimeConfig with a bad CIDR",
    )?;
    env.assert_no_leaks()
}

#[test]
fn bandwidth_annotations_shape_the_pod_with_the_reference_plugin() {
    run(
        "bandwidth_annotations_shape_the_pod_with_the_reference_plugin",
        bandwidth,
    );
}

async fn bandwidth(env: &mut TestEnv) -> Result<()> {
    let net = TestNetwork::claim(env)?;
    net.install(&net.conflist(
        "1.0.0",
        vec![
            net.bridge_plugin(vec![vec![net.ipv4_range()]]),
            json!({"type": "bandwidth", "capabilities": {"bandwidth": true}}),
            loopback_plugin(),
        ],
    ))?;
    let mut config = env.pod_config("shaped")?;
    config
        .annotations
        .insert("kubernetes.io/ingress-bandwidth".into(), "10M".into());
    config
        .annotations
        .insert("kubernetes.io/egress-bandwidth".into(), "2M".into());
    let pod = env.run_pod_with(config).await?;
    let veths = net.veths()?;
    ensure!(veths.len() == 1, "veths on the bridge: {veths:?}");
    let ingress = tool("tc", &["qdisc", "show", "dev", &veths[0]])?;
    ensure!(
        ingress.contains("tbf") && ingress.contains("rate 10Mbit"),
        "the pod's ingress is not shaped to 10Mbit:\n{ingress}"
    );
    let ifb = ifb_links()?;
    ensure!(
        ifb.len() == 1,
        "the bandwidth plugin made no egress device: {ifb:?}"
    );
    let egress = tool("tc", &["qdisc", "show", "dev", &ifb[0]])?;
    ensure!(
        egress.contains("rate 2Mbit"),
        "the pod's egress is not shaped to 2Mbit:\n{egress}"
    );
    remove_pods(env, &[&pod]).await?;
    ensure!(
        ifb_links()?.is_empty(),
        "the egress device outlived the pod"
    );
    expect_clean(env, &net)
}

/// The bandwidth plugin's egress devices (`bwp<hash>`) on the host.
fn ifb_links() -> Result<Vec<String>> {
    Ok(tool("ip", &["-o", "link"])?
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .filter(|name| name.starts_with("bwp"))
        .map(String::from)
        .collect())
}

#[test]
fn plugin_errors_reach_the_caller_and_leave_nothing() {
    run(
        "plugin_errors_reach_the_caller_and_leave_nothing",
        plugin_error,
    );
}

async fn plugin_error(env: &mut TestEnv) -> Result<()> {
    let net = TestNetwork::claim(env)?;
    let bridge = net.bridge_plugin(vec![vec![net.single_address_range()]]);
    net.install(&net.conflist("1.0.0", vec![bridge, portmap_plugin(), loopback_plugin()]))?;
    let first = env.run_pod("only").await?;
    ensure!(
        pod_ips(env, &first.id).await? == vec![net.address(2).to_string()],
        "the first pod should get the range's one address"
    );
    let veths_before = net.veths()?;
    let state = env.daemon.paths().state.join("sandboxes");
    let dirs_before = std::fs::read_dir(&state)?.count();

    let mut config = env.pod_config("second")?;
    config.port_mappings = vec![tcp_host_port(SERVER_PORT, net.host_port)];
    let refused = env.cri.run_pod_sandbox(&config).await;
    let status = match refused {
        Ok(id) => bail!("a second pod got an address from a one-address range: {id}"),
        Err(s) => s,
    };
    let message = status.message();
    ensure!(
        message.contains("CNI plugin bridge failed ADD (code 999)")
            && message.contains("no IP addresses available in range set"),
        "the gRPC error does not carry the plugin's code and message: {:?} {message}",
        status.code()
    );

    let pods = env.cri.list_pod_sandbox(None).await?;
    ensure!(pods.len() == 1, "the failed pod is listed: {pods:#?}");
    ensure!(
        net.veths()? == veths_before,
        "the failed pod left a veth: {:?}",
        net.veths()?
    );
    let owners: Vec<String> = net.reservations().into_iter().map(|(_, o)| o).collect();
    ensure!(
        owners == vec![first.id.clone()],
        "reservations after the failure: {owners:?}"
    );
    ensure!(
        attachment_records(env) == vec![first.id.clone()],
        "attachment records after the failure: {:?}",
        attachment_records(env)
    );
    ensure!(
        std::fs::read_dir(&state)?.count() == dirs_before,
        "the failed pod left its sandbox directory (and netns pin)"
    );
    let nsfs: Vec<_> = crust_e2e::mountinfo::mounts_under(&state)?
        .into_iter()
        .filter(|m| m.fs_type == "nsfs" && !m.mount_point.starts_with(state.join(&first.id)))
        .collect();
    ensure!(nsfs.is_empty(), "namespace pins left: {nsfs:#?}");
    let rules = net.nat_rules()?;
    ensure!(
        rules.is_empty(),
        "portmap rules for a pod that never started: {rules:#?}"
    );

    // The address is free again once the first pod is gone.
    remove_pods(env, &[&first]).await?;
    let again = env.cri.run_pod_sandbox(&config).await?;
    ensure!(
        pod_ips(env, &again).await? == vec![net.address(2).to_string()],
        "the freed address was not handed out again"
    );
    env.cri.stop_pod_sandbox(&again).await?;
    env.cri.remove_pod_sandbox(&again).await?;
    expect_clean(env, &net)
}

#[test]
fn pod_sysctls_apply_inside_the_pod_only() {
    run("pod_sysctls_apply_inside_the_pod_only", pod_sysctls);
}

async fn pod_sysctls(env: &mut TestEnv) -> Result<()> {
    const PORT_START: &str = "/proc/sys/net/ipv4/ip_unprivileged_port_start";
    const MSGMAX: &str = "/proc/sys/kernel/msgmax";
    let host_port_start = std::fs::read_to_string(PORT_START)?;
    let host_msgmax = std::fs::read_to_string(MSGMAX)?;
    env.pull(&env.images.busybox.reference).await?;

    let mut config = env.pod_config("sysctls")?;
    let linux = config.linux.get_or_insert_with(Default::default);
    linux
        .sysctls
        .insert("net.ipv4.ip_unprivileged_port_start".into(), "0".into());
    linux.sysctls.insert("kernel.msgmax".into(), "12345".into());
    let pod = env.run_pod_with(config).await?;
    let id = sleeper(env, &pod, "probe").await?;
    let inside = env.sh(&id, &format!("cat {PORT_START} {MSGMAX}")).await?;
    ensure!(
        inside.split_whitespace().collect::<Vec<_>>() == ["0", "12345"],
        "the pod's sysctls are not applied inside it: {inside:?}"
    );
    ensure!(
        std::fs::read_to_string(PORT_START)? == host_port_start
            && std::fs::read_to_string(MSGMAX)? == host_msgmax,
        "a pod sysctl changed the host"
    );

    let before = env.cri.list_pod_sandbox(None).await?.len();
    let mut config = env.pod_config("node-wide")?;
    config
        .linux
        .get_or_insert_with(Default::default)
        .sysctls
        .insert("vm.swappiness".into(), "1".into());
    expect_code(
        env.cri.run_pod_sandbox(&config).await,
        Code::InvalidArgument,
        "a non-namespaced sysctl",
    )?;
    let mut config = env.pod_config("hostnet-sysctl")?;
    sandbox_security_mut(&mut config).namespace_options = Some(namespace_options(
        NamespaceMode::Node,
        NamespaceMode::Container,
        NamespaceMode::Pod,
    ));
    config
        .linux
        .get_or_insert_with(Default::default)
        .sysctls
        .insert("net.ipv4.ip_unprivileged_port_start".into(), "0".into());
    expect_code(
        env.cri.run_pod_sandbox(&config).await,
        Code::InvalidArgument,
        "a net.* sysctl in a host-network pod",
    )?;
    ensure!(
        env.cri.list_pod_sandbox(None).await?.len() == before,
        "a refused pod was created"
    );
    ensure!(
        std::fs::read_to_string(PORT_START)? == host_port_start,
        "the host's port start changed"
    );

    remove_pods(env, &[&pod]).await?;
    env.assert_no_leaks()
}

#[test]
fn the_shipped_network_config_networks_a_pod() {
    run("the_shipped_network_config_networks_a_pod", shipped_network);
}

/// `manifests/cni/10-crust.conflist`, the network `make run` installs on a
/// machine that has none, with this test's bridge, subnet and host-local
/// directory in place of crust0 and 10.85.0.0/16 (so the test stays off
/// the real ones): a pod on it answers a ping from the host.
async fn shipped_network(env: &mut TestEnv) -> Result<()> {
    let net = TestNetwork::claim(env)?;
    let shipped = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../manifests/cni/10-crust.conflist"
    );
    let mut conflist: Value = serde_json::from_str(&std::fs::read_to_string(shipped)?)?;
    conflist["name"] = json!(net.name);
    let bridge = &mut conflist["plugins"][0];
    ensure!(
        bridge["type"] == "bridge",
        "the shipped chain does not start with bridge"
    );
    bridge["bridge"] = json!(net.bridge);
    // Masquerading would add NAT rules on this host for a subnet no one
    // else uses; the chain is the shipped one otherwise.
    bridge["ipMasq"] = json!(false);
    bridge["ipam"]["ranges"] = json!([[net.ipv4_range()]]);
    bridge["ipam"]["dataDir"] = json!(net.data_dir);
    net.install(&conflist)?;

    let pod = env.run_pod("shipped-network").await?;
    let ip = pod_ips(env, &pod.id)
        .await?
        .into_iter()
        .next()
        .context("the pod got no IP")?;
    let ping = tool("ping", &["-c", "1", "-W", "5", &ip])?;
    ensure!(ping.contains("1 received"), "ping {ip}: {ping}");
    remove_pods(env, &[&pod]).await?;
    expect_clean(env, &net)
}
