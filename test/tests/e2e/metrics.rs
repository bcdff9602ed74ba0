//! crustd's own `/metrics`: the text parses as Prometheus exposition (with
//! the test crate's own parser), and its figures move with what is done
//! through the CRI.

use anyhow::{Context, Result, ensure};
use crust_e2e::cri::{ContainerStatusRequest, VersionRequest};
use crust_e2e::network::free_port;
use crust_e2e::prometheus::{self, Exposition};
use crust_e2e::{TestEnv, run, unique};

async fn scrape(url: &str) -> Result<Exposition> {
    let reply = reqwest::get(url).await.context("GET /metrics")?;
    ensure!(
        reply.status() == 200,
        "GET /metrics answered {}",
        reply.status()
    );
    let text = reply.text().await?;
    prometheus::parse(&text).with_context(|| format!("parsing /metrics:\n{text}"))
}

fn value(e: &Exposition, name: &str, labels: &[(&str, &str)]) -> f64 {
    e.value(name, labels).unwrap_or(0.0)
}

#[test]
fn metrics_parse_and_follow_the_cri() {
    run("metrics_parse_and_follow_the_cri", metrics);
}

async fn metrics(env: &mut TestEnv) -> Result<()> {
    let port = free_port()?;
    env.reconfigure_tables(&format!("[metrics]\naddress = \"127.0.0.1:{port}\"\n"))
        .await?;
    let url = format!("http://127.0.0.1:{port}/metrics");
    let before = scrape(&url).await?;

    let mut runtime = env.cri.runtime.clone();
    for _ in 0..3 {
        runtime.version(VersionRequest::default()).await?;
    }
    let missing = runtime
        .container_status(ContainerStatusRequest {
            container_id: unique::unknown_id(),
            verbose: false,
        })
        .await;
    ensure!(
        missing.is_err(),
        "ContainerStatus of an unknown id succeeded"
    );
    env.pull(&env.images.busybox.reference).await?;
    let pod = env.run_pod("metrics").await?;
    let config = env.shell_container(&pod, "sleeper", "exec sleep 3600")?;
    env.start_container(&pod, &config).await?;

    let after = scrape(&url).await?;
    let version = [("method", "Version")];
    ensure!(
        value(&after, "crust_grpc_requests_total", &version)
            >= value(&before, "crust_grpc_requests_total", &version) + 3.0,
        "three Version calls are not counted"
    );
    ensure!(
        value(
            &after,
            "crust_grpc_request_duration_seconds_count",
            &version
        ) >= 3.0,
        "Version latencies are not observed"
    );
    let not_found = [("method", "ContainerStatus"), ("code", "NotFound")];
    ensure!(
        value(&after, "crust_grpc_errors_total", &not_found)
            >= value(&before, "crust_grpc_errors_total", &not_found) + 1.0,
        "the NotFound of ContainerStatus is not counted"
    );
    ensure!(
        value(&after, "crust_image_pulled_layers_total", &[]) >= 1.0
            && value(&after, "crust_image_pulled_bytes_total", &[]) > 0.0,
        "the pull is not counted"
    );
    ensure!(
        value(&after, "crust_sandboxes", &[("state", "ready")]) == 1.0
            && value(&after, "crust_containers", &[("state", "running")]) == 1.0
            && value(&after, "crust_shims_running", &[]) == 1.0,
        "objects by state: sandboxes {:?}, containers {:?}, shims {:?}",
        after.value("crust_sandboxes", &[("state", "ready")]),
        after.value("crust_containers", &[("state", "running")]),
        after.value("crust_shims_running", &[])
    );
    ensure!(
        value(&after, "process_resident_memory_bytes", &[]) > 1_000_000.0
            && value(&after, "process_open_fds", &[]) > 3.0,
        "crustd's own memory and fds are missing"
    );
    let other = reqwest::get(format!("http://127.0.0.1:{port}/other")).await?;
    ensure!(other.status() == 404, "/other answered {}", other.status());

    env.cri.stop_pod_sandbox(&pod.id).await?;
    env.cri.remove_pod_sandbox(&pod.id).await?;
    env.assert_no_leaks()
}
