//! GetContainerEvents, as kubelet's evented PLEG reads it: the events of a
//! container's life in order, each with its pod's status and containers; an
//! exit noticed within a second without anyone asking; and subscribers that
//! do not read never holding up the lifecycle calls.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use crust_e2e::cri::{
    ContainerEventResponse, ContainerEventType, ContainerState, GetEventsRequest,
    ListContainersRequest,
};
use crust_e2e::{Pod, TestEnv, run};
use tonic::Streaming;

/// How long any one expected event may take to arrive.
const EVENT_WAIT: Duration = Duration::from_secs(15);

async fn subscribe(env: &TestEnv) -> Result<Streaming<ContainerEventResponse>> {
    Ok(env
        .cri
        .runtime
        .clone()
        .get_container_events(GetEventsRequest {})
        .await
        .context("GetContainerEvents")?
        .into_inner())
}

/// The next event about `id`, skipping events about other objects.
async fn next_about(
    events: &mut Streaming<ContainerEventResponse>,
    id: &str,
) -> Result<ContainerEventResponse> {
    let wait = async {
        loop {
            match events.message().await? {
                Some(e) if e.container_id == id => return Ok(e),
                Some(_) => continue,
                None => bail!("the event stream ended"),
            }
        }
    };
    tokio::time::timeout(EVENT_WAIT, wait)
        .await
        .with_context(|| format!("no event about {id} within {EVENT_WAIT:?}"))?
}

/// The kinds of the events about `id`, up to and including the first `last`.
async fn kinds_until(
    events: &mut Streaming<ContainerEventResponse>,
    id: &str,
    last: ContainerEventType,
) -> Result<Vec<ContainerEventType>> {
    let mut kinds = Vec::new();
    while kinds.last() != Some(&last) {
        kinds.push(kind(&next_about(events, id).await?));
    }
    Ok(kinds)
}

fn kind(e: &ContainerEventResponse) -> ContainerEventType {
    ContainerEventType::try_from(e.container_event_type)
        .unwrap_or(ContainerEventType::ContainerCreatedEvent)
}

/// Checks the event carries the pod's status and, when `state` is given,
/// container `id`'s status in that state.
fn check_event(
    e: &ContainerEventResponse,
    pod: &Pod,
    id: &str,
    state: Option<ContainerState>,
) -> Result<()> {
    let sandbox = e
        .pod_sandbox_status
        .as_ref()
        .context("event without the pod's status")?;
    ensure!(sandbox.id == pod.id, "event names pod {:?}", sandbox.id);
    ensure!(
        sandbox.metadata.as_ref().map(|m| m.uid.as_str())
            == pod.config.metadata.as_ref().map(|m| m.uid.as_str()),
        "the pod status lacks the pod's UID: {sandbox:?}"
    );
    ensure!(e.created_at > 0, "event without a time");
    let status = e.containers_statuses.iter().find(|c| c.id == id);
    match state {
        Some(state) => {
            let status = status.with_context(|| format!("event lacks {id}'s status: {e:?}"))?;
            ensure!(
                status.state == state as i32,
                "{id} is {:?} in its {:?} event",
                status.state,
                kind(e)
            );
        }
        None => ensure!(
            status.is_none(),
            "a deleted container is still listed: {e:?}"
        ),
    }
    Ok(())
}

#[test]
fn events_follow_a_containers_life() {
    run("events_follow_a_containers_life", life_events);
}

async fn life_events(env: &mut TestEnv) -> Result<()> {
    env.pull(&env.images.busybox.reference).await?;
    let mut events = subscribe(env).await?;
    // A second subscriber that never reads must not hold anything up.
    let _stalled = subscribe(env).await?;

    let pod = env.run_pod("events").await?;
    let e = next_about(&mut events, &pod.id).await?;
    ensure!(
        kind(&e) == ContainerEventType::ContainerStartedEvent,
        "a new pod sandbox is announced as started, got {:?}",
        kind(&e)
    );

    let config = env.shell_container(&pod, "sleeper", "exec sleep 3600")?;
    let id = env.create_container(&pod, &config).await?;
    let e = next_about(&mut events, &id).await?;
    ensure!(
        kind(&e) == ContainerEventType::ContainerCreatedEvent,
        "{:?}",
        kind(&e)
    );
    check_event(&e, &pod, &id, Some(ContainerState::ContainerCreated))?;

    env.cri.start_container(&id).await?;
    let e = next_about(&mut events, &id).await?;
    ensure!(
        kind(&e) == ContainerEventType::ContainerStartedEvent,
        "{:?}",
        kind(&e)
    );
    check_event(&e, &pod, &id, Some(ContainerState::ContainerRunning))?;

    env.cri.stop_container(&id, 0).await?;
    let e = next_about(&mut events, &id).await?;
    ensure!(
        kind(&e) == ContainerEventType::ContainerStoppedEvent,
        "{:?}",
        kind(&e)
    );
    check_event(&e, &pod, &id, Some(ContainerState::ContainerExited))?;

    env.cri.remove_container(&id).await?;
    let e = next_about(&mut events, &id).await?;
    ensure!(
        kind(&e) == ContainerEventType::ContainerDeletedEvent,
        "{:?}",
        kind(&e)
    );
    check_event(&e, &pod, &id, None)?;

    // Many lifecycle calls with the stalled subscriber still connected.
    for n in 0..20 {
        let config = env.shell_container(&pod, &format!("churn-{n}"), "exec sleep 3600")?;
        let id = env.create_container(&pod, &config).await?;
        env.cri.remove_container(&id).await?;
        // Removing a created container kills it first: created, stopped, deleted.
        let kinds =
            kinds_until(&mut events, &id, ContainerEventType::ContainerDeletedEvent).await?;
        ensure!(
            kinds
                == [
                    ContainerEventType::ContainerCreatedEvent,
                    ContainerEventType::ContainerStoppedEvent,
                    ContainerEventType::ContainerDeletedEvent
                ],
            "events of a created and removed container: {kinds:?}"
        );
    }

    env.cri.stop_pod_sandbox(&pod.id).await?;
    let e = next_about(&mut events, &pod.id).await?;
    ensure!(
        kind(&e) == ContainerEventType::ContainerStoppedEvent,
        "{:?}",
        kind(&e)
    );
    env.cri.remove_pod_sandbox(&pod.id).await?;
    let e = next_about(&mut events, &pod.id).await?;
    ensure!(
        kind(&e) == ContainerEventType::ContainerDeletedEvent,
        "{:?}",
        kind(&e)
    );
    env.assert_no_leaks()
}

#[test]
fn a_container_exiting_by_itself_is_announced_within_a_second() {
    run(
        "a_container_exiting_by_itself_is_announced_within_a_second",
        exit_event,
    );
}

async fn exit_event(env: &mut TestEnv) -> Result<()> {
    env.pull(&env.images.busybox.reference).await?;
    let pod = env.run_pod("exits").await?;
    let mut events = subscribe(env).await?;
    let config = env.shell_container(&pod, "short", "sleep 1; exit 3")?;
    let id = env.start_container(&pod, &config).await?;
    let stopped = loop {
        let e = next_about(&mut events, &id).await?;
        if kind(&e) == ContainerEventType::ContainerStoppedEvent {
            break e;
        }
    };
    check_event(&stopped, &pod, &id, Some(ContainerState::ContainerExited))?;
    let status = stopped
        .containers_statuses
        .iter()
        .find(|c| c.id == id)
        .context("status")?;
    ensure!(status.exit_code == 3, "exit code {}", status.exit_code);
    let delay = Duration::from_nanos(
        u64::try_from(stopped.created_at - status.finished_at).unwrap_or(u64::MAX),
    );
    ensure!(
        delay < Duration::from_secs(1),
        "the STOPPED event came {delay:?} after the container exited"
    );

    // A container that exits the moment it starts: still created, started,
    // stopped, in that order.
    let instant = env.shell_container(&pod, "instant", "exit 0")?;
    let instant = env.start_container(&pod, &instant).await?;
    let kinds = kinds_until(
        &mut events,
        &instant,
        ContainerEventType::ContainerStoppedEvent,
    )
    .await?;
    ensure!(
        kinds
            == [
                ContainerEventType::ContainerCreatedEvent,
                ContainerEventType::ContainerStartedEvent,
                ContainerEventType::ContainerStoppedEvent
            ],
        "events of a container that exits at once: {kinds:?}"
    );

    // ListContainers already knows, without a ContainerStatus call first.
    let listed = env
        .cri
        .runtime
        .clone()
        .list_containers(ListContainersRequest::default())
        .await?
        .into_inner()
        .containers;
    let c = listed
        .iter()
        .find(|c| c.id == id)
        .context("container not listed")?;
    ensure!(
        c.state == ContainerState::ContainerExited as i32,
        "ListContainers shows {:?} after the STOPPED event",
        c.state
    );

    env.cri.stop_pod_sandbox(&pod.id).await?;
    env.cri.remove_pod_sandbox(&pod.id).await?;
    env.assert_no_leaks()
}
