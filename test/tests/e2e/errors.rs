//! Bad requests get the gRPC codes the DESIGN promises: InvalidArgument for a
//! malformed request, NotFound for unknown ids and images, Unimplemented for
//! RPCs crust does not serve yet.

use anyhow::{Result, bail};
use crust_e2e::assertions::expect_code;
use crust_e2e::cri::{
    AttachRequest, CheckpointContainerRequest, ContainerStatsRequest, PodSandboxStatsRequest,
    PortForwardRequest, RunPodSandboxRequest, UpdateContainerResourcesRequest,
};
use crust_e2e::{CriClient, TestEnv, run, unique};
use tonic::{Code, Status};

/// RPCs crust does not serve yet; move one out of this list when it lands.
const UNIMPLEMENTED: [&str; 1] = ["CheckpointContainer"];

#[test]
fn bad_requests_get_the_right_codes() {
    run("bad_requests_get_the_right_codes", error_codes);
}

async fn error_codes(env: &mut TestEnv) -> Result<()> {
    let cri = env.cri.clone();

    let mut no_metadata = env.pod_config("no-metadata")?;
    no_metadata.metadata = None;
    expect_code(
        cri.run_pod_sandbox(&no_metadata).await,
        Code::InvalidArgument,
        "RunPodSandbox without metadata",
    )?;
    let no_config = cri
        .runtime
        .clone()
        .run_pod_sandbox(RunPodSandboxRequest::default())
        .await;
    expect_code(
        no_config.map(drop),
        Code::InvalidArgument,
        "RunPodSandbox without config",
    )?;

    let unknown = unique::unknown_id();
    expect_code(
        cri.start_container(&unknown).await,
        Code::NotFound,
        "StartContainer of an unknown id",
    )?;
    expect_code(
        cri.exec_sync(&unknown, &["true"], 5).await,
        Code::NotFound,
        "ExecSync in an unknown container",
    )?;

    let pod = env.run_pod("errors").await?;
    let missing_image = env.container_config(&pod, "missing-image", &env.images.missing_tag())?;
    expect_code(
        cri.create_container(&pod.id, &missing_image, &pod.config)
            .await,
        Code::NotFound,
        "CreateContainer with an image that was never pulled",
    )?;

    let busybox = env.images.busybox.reference.clone();
    env.pull(&busybox).await?;
    let orphan = env.container_config(&pod, "orphan", &busybox)?;
    expect_code(
        cri.create_container(&unique::unknown_id(), &orphan, &pod.config)
            .await,
        Code::NotFound,
        "CreateContainer in an unknown sandbox",
    )?;

    let mut sleeper = env.container_config(&pod, "sleeper", &busybox)?;
    sleeper.command = vec!["sleep".into(), "3600".into()];
    let id = env.start_container(&pod, &sleeper).await?;
    for rpc in UNIMPLEMENTED {
        expect_code(
            call(&cri, rpc, &pod.id, &id).await?,
            Code::Unimplemented,
            rpc,
        )?;
    }

    for rpc in [
        "Attach",
        "PortForward",
        "ContainerStats",
        "PodSandboxStats",
        "UpdateContainerResources",
    ] {
        expect_code(
            call(&cri, rpc, &unique::unknown_id(), &unique::unknown_id()).await?,
            Code::NotFound,
            &format!("{rpc} for an unknown id"),
        )?;
    }

    cri.stop_pod_sandbox(&pod.id).await?;
    cri.remove_pod_sandbox(&pod.id).await?;
    env.assert_no_leaks()
}

/// Calls RPC `rpc` with a valid request about pod `pod_id` / container `id`.
async fn call(cri: &CriClient, rpc: &str, pod_id: &str, id: &str) -> Result<Result<(), Status>> {
    let mut runtime = cri.runtime.clone();
    let outcome = match rpc {
        "Attach" => {
            let request = AttachRequest {
                container_id: id.into(),
                stdout: true,
                stderr: true,
                ..Default::default()
            };
            runtime.attach(request).await.map(drop)
        }
        "PortForward" => {
            let request = PortForwardRequest {
                pod_sandbox_id: pod_id.into(),
                port: vec![8080],
            };
            runtime.port_forward(request).await.map(drop)
        }
        "ContainerStats" => {
            let request = ContainerStatsRequest {
                container_id: id.into(),
            };
            runtime.container_stats(request).await.map(drop)
        }
        "PodSandboxStats" => {
            let request = PodSandboxStatsRequest {
                pod_sandbox_id: pod_id.into(),
            };
            runtime.pod_sandbox_stats(request).await.map(drop)
        }
        "CheckpointContainer" => {
            let request = CheckpointContainerRequest {
                container_id: id.into(),
                location: "/tmp/crust-e2e-checkpoint.tar".into(),
                timeout: 10,
            };
            runtime.checkpoint_container(request).await.map(drop)
        }
        "UpdateContainerResources" => {
            let request = UpdateContainerResourcesRequest {
                container_id: id.into(),
                ..Default::default()
            };
            runtime.update_container_resources(request).await.map(drop)
        }
        other => bail!("no request written for {other}"),
    };
    Ok(outcome)
}
