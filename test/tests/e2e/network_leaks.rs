//! Nothing of a pod's network outlives the pod: after many create/stop/remove
//! cycles, and after crustd was SIGKILLed between CNI ADD and recording the
//! sandbox, there is no netns pin, veth, host-local reservation, portmap rule
//! or attachment record left.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use crust_e2e::fake_cni::SlowPlugin;
use crust_e2e::network::{
    TestNetwork, attachment_records, loopback_plugin, pod_ips, pod_leftovers, portmap_plugin,
    tcp_host_port,
};
use crust_e2e::{TestEnv, run, wait};

/// Create/stop/remove cycles of the leak test.
const CYCLES: usize = 50;

/// How long the slow plugin holds ADD.
const SLOW_SECONDS: u32 = 3;

/// Needles that find a pod's rules in `iptables-save`: its id, and its
/// addresses as iptables prints them (`10.243.7.5/32`, `10.243.7.5:8080`).
fn needles(ids: &[String], ips: &[String]) -> Vec<String> {
    ids.iter()
        .cloned()
        .chain(
            ips.iter()
                .flat_map(|ip| [format!("{ip}/"), format!("{ip}:")]),
        )
        .collect()
}

/// Everything of the pods `ids` (with addresses `ips`) still on the host.
fn leftovers(
    env: &TestEnv,
    net: &TestNetwork,
    ids: &[String],
    ips: &[String],
) -> Result<Vec<String>> {
    let mut left = pod_leftovers(env, net)?;
    left.extend(
        net.iptables_lines_mentioning(&needles(ids, ips))?
            .into_iter()
            .map(|l| format!("iptables: {l}")),
    );
    Ok(left)
}

#[test]
fn fifty_pod_cycles_leave_no_network_state() {
    run("fifty_pod_cycles_leave_no_network_state", pod_cycles);
}

async fn pod_cycles(env: &mut TestEnv) -> Result<()> {
    let net = TestNetwork::claim(env)?;
    net.install(&net.standard_conflist("1.0.0"))?;
    let mut ids = Vec::new();
    let mut ips = Vec::new();
    let (mut run_time, mut stop_time, mut remove_time) =
        (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let started = Instant::now();
    for cycle in 0..CYCLES {
        let mut config = env.pod_config(&format!("cycle{cycle}"))?;
        config.port_mappings = vec![tcp_host_port(8080, net.host_port)];
        let t = Instant::now();
        let id = env
            .cri
            .run_pod_sandbox(&config)
            .await
            .with_context(|| format!("RunPodSandbox in cycle {cycle}"))?;
        run_time += t.elapsed();
        let pod_ip = pod_ips(env, &id).await?;
        ensure!(pod_ip.len() == 1, "cycle {cycle}: pod IPs {pod_ip:?}");
        if cycle == 0 {
            // The pod really holds what the check below must not find.
            let rules =
                net.iptables_lines_mentioning(&needles(std::slice::from_ref(&id), &pod_ip))?;
            ensure!(
                !rules.is_empty()
                    && net.veths()?.len() == 1
                    && net.reservations().len() == 1
                    && attachment_records(env) == vec![id.clone()],
                "a running pod should have a portmap rule, a veth, a reservation and a record"
            );
        }
        let t = Instant::now();
        env.cri.stop_pod_sandbox(&id).await?;
        stop_time += t.elapsed();
        let t = Instant::now();
        env.cri.remove_pod_sandbox(&id).await?;
        remove_time += t.elapsed();
        ids.push(id);
        ips.extend(pod_ip);
    }
    let total = started.elapsed();
    eprintln!(
        "{CYCLES} pod cycles in {total:.2?}: RunPodSandbox {:.0?}, StopPodSandbox {:.0?}, RemovePodSandbox {:.0?} on average",
        run_time / CYCLES as u32,
        stop_time / CYCLES as u32,
        remove_time / CYCLES as u32
    );
    let left = leftovers(env, &net, &ids, &ips)?;
    ensure!(
        left.is_empty(),
        "{CYCLES} pod cycles left behind: {left:#?}"
    );
    Ok(())
}

#[test]
fn crustd_killed_between_add_and_record_cleans_up_on_restart() {
    run(
        "crustd_killed_between_add_and_record_cleans_up_on_restart",
        killed_mid_add,
    );
}

async fn killed_mid_add(env: &mut TestEnv) -> Result<()> {
    let net = TestNetwork::claim(env)?;
    let slow = SlowPlugin::install(env, "crust-e2e-slow", SLOW_SECONDS)?;
    net.install(&net.conflist(
        "1.0.0",
        vec![
            net.bridge_plugin(vec![vec![net.ipv4_range()]]),
            portmap_plugin(),
            serde_json::json!({"type": slow.name}),
            loopback_plugin(),
        ],
    ))?;
    let mut config = env.pod_config("interrupted")?;
    config.port_mappings = vec![tcp_host_port(8080, net.host_port)];

    let cri = env.cri.clone();
    let request = config.clone();
    let in_flight = tokio::spawn(async move { cri.run_pod_sandbox(&request).await });
    let id = wait::until("the slow plugin's ADD", Duration::from_secs(20), || async {
        Ok(slow.started().into_iter().next())
    })
    .await?;

    // crustd is inside ADD: the address, veth, port rule and record exist, the
    // sandbox is not recorded yet.
    let reserved: Vec<(String, String)> = net.reservations();
    ensure!(
        reserved.len() == 1 && reserved[0].1 == id,
        "no reservation for the pod being added: {reserved:?}"
    );
    let ip = reserved[0].0.clone();
    let held = net.iptables_lines_mentioning(&needles(
        std::slice::from_ref(&id),
        std::slice::from_ref(&ip),
    ))?;
    ensure!(
        !held.is_empty(),
        "portmap's rules for the pod are not there yet"
    );
    ensure!(net.veths()?.len() == 1, "no veth for the pod being added");
    ensure!(
        attachment_records(env) == vec![id.clone()],
        "no attachment record before ADD"
    );
    let pin = env
        .daemon
        .paths()
        .state
        .join("sandboxes")
        .join(&id)
        .join("ns")
        .join("net");
    ensure!(
        crust_e2e::mountinfo::mounts_under(&pin)?
            .iter()
            .any(|m| m.fs_type == "nsfs"),
        "the pod's netns is not pinned at {}",
        pin.display()
    );

    env.kill_daemon().await?;
    match tokio::time::timeout(Duration::from_secs(10), in_flight).await {
        Ok(Ok(Err(_))) => {}
        Ok(Ok(Ok(id))) => bail!("RunPodSandbox succeeded although crustd was killed: {id}"),
        other => bail!("the interrupted RunPodSandbox did not end: {other:?}"),
    }
    env.restart_daemon().await?;

    let left = leftovers(
        env,
        &net,
        std::slice::from_ref(&id),
        std::slice::from_ref(&ip),
    )?;
    ensure!(
        left.is_empty(),
        "after the restart, the interrupted pod left: {left:#?}"
    );
    ensure!(
        env.cri.list_pod_sandbox(None).await?.is_empty(),
        "the interrupted pod is listed"
    );
    // The orphaned plugin finishes its sleep; nothing comes back after it.
    wait::until(
        "the orphaned slow plugin",
        Duration::from_secs(15),
        || async { Ok(slow.done().contains(&id).then_some(())) },
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let left = leftovers(
        env,
        &net,
        std::slice::from_ref(&id),
        std::slice::from_ref(&ip),
    )?;
    ensure!(left.is_empty(), "after the orphaned ADD ended: {left:#?}");

    // The pod's name is free: kubelet's retry creates it for real.
    let again = env.cri.run_pod_sandbox(&config).await?;
    ensure!(again != id, "the retry got the interrupted pod's id");
    let again_ips = pod_ips(env, &again).await?;
    env.cri.stop_pod_sandbox(&again).await?;
    env.cri.remove_pod_sandbox(&again).await?;
    let ids = [id, again];
    let ips: Vec<String> = std::iter::once(ip).chain(again_ips).collect();
    let left = leftovers(env, &net, &ids, &ips)?;
    ensure!(left.is_empty(), "the retried pod left: {left:#?}");
    Ok(())
}
