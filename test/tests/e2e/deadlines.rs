//! Client deadlines: an RPC whose `grpc-timeout` passes before crustd is done
//! answers DeadlineExceeded (never Cancelled or Unknown), as the CRI expects
//! and critest checks; a call within its deadline is answered normally, and
//! a pull cut short by its deadline leaves nothing that stops the next one.
//! The calls go over `raw_grpc`, which does not enforce deadlines itself, so
//! the code seen is crustd's.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use crust_e2e::cri::{ImageSpec, PullImageRequest, VersionRequest};
use crust_e2e::fake_registry::{FakeRegistry, Reply};
use crust_e2e::registry::RegistryClient;
use crust_e2e::{TestEnv, raw_grpc, run};
use tonic::Code;

#[test]
fn passing_deadlines_answer_deadline_exceeded() {
    run("passing_deadlines_answer_deadline_exceeded", deadlines);
}

async fn deadlines(env: &mut TestEnv) -> Result<()> {
    let layer = &env.images.busybox.image.layers[0];
    let data = RegistryClient::new(&env.images.registry)?
        .get_blob("busybox", &layer.digest)
        .await?;
    let slow = FakeRegistry::start(Some(env.images.registry.clone())).await?;
    let mut stalled = Reply::ok("application/octet-stream", data);
    stalled.delay = Duration::from_secs(5);
    slow.route(
        "GET",
        &format!("/v2/busybox/blobs/{}", layer.digest),
        stalled,
    );
    let image = format!("{}/busybox:1.0", slow.host());

    let (mut runtime, mut images) = raw_grpc::connect(&env.daemon.paths().socket).await?;
    let mut version = tonic::Request::new(VersionRequest::default());
    version.set_timeout(Duration::from_secs(10));
    ensure!(
        runtime.version(version).await?.into_inner().runtime_name == "crust",
        "Version within its deadline"
    );

    for limit in [
        Duration::from_millis(1),
        Duration::from_millis(50),
        Duration::from_millis(300),
    ] {
        for _ in 0..3 {
            let mut request = tonic::Request::new(PullImageRequest {
                image: Some(ImageSpec {
                    image: image.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            });
            request.set_timeout(limit);
            let started = Instant::now();
            let outcome = images.pull_image(request).await;
            let took = started.elapsed();
            let status = match outcome {
                Ok(_) => anyhow::bail!("PullImage with a {limit:?} deadline succeeded"),
                Err(status) => status,
            };
            ensure!(
                status.code() == Code::DeadlineExceeded,
                "PullImage with a {limit:?} deadline answered {:?}: {}",
                status.code(),
                status.message()
            );
            ensure!(
                took < limit + Duration::from_secs(2),
                "DeadlineExceeded came {took:?} after a {limit:?} deadline"
            );
        }
    }
    ensure!(
        env.cri.image_status(&image).await?.is_none(),
        "a pull cut short by its deadline left an image behind"
    );

    // The slow blob, given time, arrives: the cut-short pulls did not wedge it.
    env.pull(&image).await?;
    ensure!(env.cri.image_status(&image).await?.is_some());
    Ok(())
}
