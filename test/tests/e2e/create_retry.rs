//! kubelet's retry of a create that outran its deadline: the client gives up on
//! RunPodSandbox or CreateContainer while crustd still works, then sends the
//! same request again. The retry must get the object the first attempt made
//! (never a second object, never "name already in use"), and only a further
//! identical request after the retry succeeded is refused with AlreadyExists.
//! A request repeated after one that succeeded within crustd's delivery margin
//! of its deadline may get the same object back: crustd cannot tell whether
//! that answer arrived, and kubelet never repeats a create it got an answer to.
//!
//! No server can tell an answer that crossed the client's give-up on the wire
//! from one that arrived, so when a retry is refused the test reads crustd's
//! log: an OK answer given after the request's `grpc-timeout` had expired (or
//! well after the client reset the stream) is a bug; one given in time is a
//! crossing and does not count. Whether a given run hits the window depends on
//! timing, which is why the deadlines sweep around the measured duration.

use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail, ensure};
use crust_e2e::assertions::{expect_code, expect_refused_or_same};
use crust_e2e::cri::{
    ContainerConfig, ContainerState, CreateContainerRequest, PodSandboxConfig, PodSandboxState,
    RunPodSandboxRequest,
};
use crust_e2e::env::nanos_since_epoch;
use crust_e2e::{CriClient, Pod, TestEnv, cri_log, filters, run};
use tonic::{Code, Status};

/// How the first attempt is cut short.
#[derive(Debug, Clone, Copy)]
enum Deadline {
    /// A `grpc-timeout` header (tonic `Request::set_timeout`), as kubelet sends.
    Header(Duration),
    /// The client drops the call (RST_STREAM) after this long.
    Drop(Duration),
}

/// One way of timing out the first attempt, and whether the retry comes at once
/// or only after the first attempt's object shows up in a List call.
#[derive(Debug, Clone)]
struct Case {
    name: String,
    deadline: Deadline,
    retry_after_listed: bool,
}

/// Deadlines around `normal`, the time an undisturbed create takes: 1 ms (the
/// request may not even reach the handler), a sweep of `grpc-timeout` headers
/// from well before to just after the work finishes (kubelet's case: the
/// deadline passes while crustd works), and client-side give-ups with an
/// immediate and with a late retry.
fn cases(normal: Duration) -> Vec<Case> {
    let at = |percent: u32| (normal * percent / 100).max(Duration::from_millis(1));
    let mut cases = vec![Case {
        name: "header-1ms".into(),
        deadline: Deadline::Header(Duration::from_millis(1)),
        retry_after_listed: false,
    }];
    for percent in [
        30, 50, 70, 75, 80, 85, 90, 95, 100, 105, 110, 115, 120, 130, 140,
    ] {
        cases.push(Case {
            name: format!("header-{percent}pct"),
            deadline: Deadline::Header(at(percent)),
            retry_after_listed: false,
        });
    }
    cases.push(Case {
        name: "drop-30pct".into(),
        deadline: Deadline::Drop(at(30)),
        retry_after_listed: false,
    });
    cases.push(Case {
        name: "drop-30pct-late-retry".into(),
        deadline: Deadline::Drop(at(30)),
        retry_after_listed: true,
    });
    cases
}

/// The median duration of `samples`.
fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// Sends a request with `deadline`; a client-side give-up becomes DeadlineExceeded.
async fn with_deadline<T, F>(
    deadline: Deadline,
    call: impl FnOnce(tonic::Request<T>) -> F,
    request: T,
) -> Result<String, Status>
where
    F: std::future::Future<Output = Result<String, Status>>,
{
    match deadline {
        Deadline::Header(limit) => {
            let mut request = tonic::Request::new(request);
            request.set_timeout(limit);
            call(request).await
        }
        Deadline::Drop(limit) => {
            match tokio::time::timeout(limit, call(tonic::Request::new(request))).await {
                Ok(outcome) => outcome,
                Err(_) => Err(Status::deadline_exceeded("the test client gave up")),
            }
        }
    }
}

async fn run_pod_sandbox(
    cri: &CriClient,
    config: &PodSandboxConfig,
    deadline: Deadline,
) -> Result<String, Status> {
    let request = RunPodSandboxRequest {
        config: Some(config.clone()),
        runtime_handler: String::new(),
    };
    let mut client = cri.runtime.clone();
    with_deadline(
        deadline,
        |r| async move { Ok(client.run_pod_sandbox(r).await?.into_inner().pod_sandbox_id) },
        request,
    )
    .await
}

async fn create_container(
    cri: &CriClient,
    pod: &Pod,
    config: &ContainerConfig,
    deadline: Deadline,
) -> Result<String, Status> {
    let request = CreateContainerRequest {
        pod_sandbox_id: pod.id.clone(),
        config: Some(config.clone()),
        sandbox_config: Some(pod.config.clone()),
    };
    let mut client = cri.runtime.clone();
    with_deadline(
        deadline,
        |r| async move { Ok(client.create_container(r).await?.into_inner().container_id) },
        request,
    )
    .await
}

/// Whether the cut-short first attempt timed out (rather than answering).
fn timed_out(outcome: &Result<String, Status>) -> Result<bool> {
    match outcome {
        Ok(_) => Ok(false),
        Err(s) if matches!(s.code(), Code::DeadlineExceeded | Code::Cancelled) => Ok(true),
        Err(s) => bail!(
            "the cut-short first attempt failed with {:?}: {}",
            s.code(),
            s.message()
        ),
    }
}

/// crustd's successful answer to the create that made object `id`, from its
/// log: the line after `marker_prefix<id>` that logs `ok method="<method>"`.
/// Returns the answer's time (ns since the epoch) and the handler's duration.
fn answer_in_log(env: &TestEnv, marker_prefix: &str, id: &str, method: &str) -> Option<(i64, f64)> {
    let log = std::fs::read_to_string(&env.daemon.paths().log).ok()?;
    let marker = format!("{marker_prefix}{id}");
    let ok = format!("ok method=\"{method}\"");
    let line = log
        .lines()
        .skip_while(|l| !l.contains(&marker))
        .find(|l| l.contains(&ok))?;
    let at = cri_log::parse_rfc3339_nanos(line.split_whitespace().next()?).ok()?;
    let elapsed_ms = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("elapsed_ms="))?
        .parse()
        .ok()?;
    Some((at, elapsed_ms))
}

/// How long after a client's RST_STREAM an OK answer still counts as a
/// crossing rather than a bug.
const RESET_NOTICE_MS: f64 = 10.0;

/// Judges a retry refused with AlreadyExists: a bug if crustd answered the
/// first attempt after the deadline it was given (`grpc-timeout`) or well after
/// the client reset the stream; a crossing of answer and give-up otherwise.
fn judge_refused_retry(
    case: &Case,
    answer: Option<(i64, f64)>,
    gave_up_at: i64,
    refusal: &Status,
) -> Result<Outcome> {
    let refused = format!("{:?}: {}", refusal.code(), refusal.message());
    let Some((answered_at, elapsed_ms)) = answer else {
        bail!(
            "the retry after a timeout ({:?}) was refused ({refused}), and crustd's log shows no \
             answer to the first attempt",
            case.deadline
        );
    };
    let after_give_up_ms = (answered_at - gave_up_at) as f64 / 1e6;
    match case.deadline {
        Deadline::Header(limit) => {
            let limit_ms = limit.as_secs_f64() * 1000.0;
            // 0.1 ms of slack for the time between a deadline check in crustd
            // and the log line that measures the handler.
            ensure!(
                elapsed_ms <= limit_ms + 0.1,
                "crustd answered the first attempt OK after {elapsed_ms:.3} ms, past its \
                 grpc-timeout of {limit_ms:.3} ms ({after_give_up_ms:.3} ms after the client gave \
                 up), and counted the id as delivered: the retry was refused ({refused})"
            );
            Ok(Outcome::Crossed(format!(
                "crustd answered after {elapsed_ms:.3} ms, within the {limit_ms:.3} ms deadline"
            )))
        }
        Deadline::Drop(_) => {
            // crustd learns of a reset only when its connection task reads
            // the RST_STREAM frame, which on a busy 2-core machine running
            // several tests at once can take a few milliseconds.
            ensure!(
                after_give_up_ms <= RESET_NOTICE_MS,
                "crustd answered the first attempt OK {after_give_up_ms:.3} ms after the client \
                 reset the stream (handler took {elapsed_ms:.3} ms) and counted the id as \
                 delivered: the retry was refused ({refused})"
            );
            Ok(Outcome::Crossed(format!(
                "crustd answered {after_give_up_ms:.3} ms after the client gave up"
            )))
        }
    }
}

/// Ids of the sandboxes whose metadata is `config`'s.
async fn sandboxes_named(env: &TestEnv, config: &PodSandboxConfig) -> Result<Vec<String>> {
    let uid = &config.metadata.as_ref().context("no metadata")?.uid;
    let pods = env
        .cri
        .list_pod_sandbox(Some(filters::pod_labels(&[("io.kubernetes.pod.uid", uid)])))
        .await?;
    Ok(pods
        .into_iter()
        .filter(|p| p.metadata == config.metadata)
        .map(|p| p.id)
        .collect())
}

/// Ids of the containers of `pod` whose metadata is `config`'s.
async fn containers_named(
    env: &TestEnv,
    pod: &Pod,
    config: &ContainerConfig,
) -> Result<Vec<String>> {
    let listed = env
        .cri
        .list_containers(Some(filters::container_pod(&pod.id)))
        .await?;
    Ok(listed
        .into_iter()
        .filter(|c| c.metadata == config.metadata)
        .map(|c| c.id)
        .collect())
}

/// What one case found.
enum Outcome {
    /// The first attempt returned within its deadline (nothing to retry).
    InTime,
    /// The first attempt timed out and the retry got its object.
    Retried,
    /// crustd answered the first attempt within the deadline it was given, but
    /// the answer crossed the client's give-up (which no server can detect), so
    /// the retry was rightly refused.
    Crossed(String),
}

/// Collects each case's result; fails listing every failed case.
#[derive(Default)]
struct Report {
    retried: Vec<String>,
    in_time: Vec<String>,
    failures: Vec<String>,
}

impl Report {
    fn add(&mut self, case: &Case, outcome: Result<Outcome>) {
        match outcome {
            Ok(Outcome::Retried) => self.retried.push(case.name.clone()),
            Ok(Outcome::InTime) => self.in_time.push(case.name.clone()),
            Ok(Outcome::Crossed(why)) => {
                eprintln!("{}: not a retry: {why}", case.name);
                self.in_time.push(format!("{} (crossed)", case.name));
            }
            Err(e) => self.failures.push(format!("{}: {e:#}", case.name)),
        }
    }

    fn finish(&self, what: &str, normal: Duration) -> Result<()> {
        eprintln!(
            "{what}: normal duration {normal:?}; retried after a timeout: {:?}; \
             answered in time: {:?}; failed: {}",
            self.retried,
            self.in_time,
            self.failures.len()
        );
        ensure!(
            self.failures.is_empty(),
            "{what}: {} of {} cases failed:\n{}",
            self.failures.len(),
            self.failures.len() + self.retried.len() + self.in_time.len(),
            self.failures.join("\n")
        );
        ensure!(
            !self.retried.is_empty(),
            "{what}: no first attempt timed out (normal duration {normal:?}); nothing was tested"
        );
        Ok(())
    }
}

/// Polls `list` until it returns something (or 10 s pass).
async fn listed_eventually<F, Fut>(mut list: F) -> Result<Vec<String>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Vec<String>>>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = list().await?;
        if !found.is_empty() || Instant::now() >= deadline {
            return Ok(found);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn timed_out_run_pod_sandbox_retry_gets_the_first_sandbox() {
    run(
        "timed_out_run_pod_sandbox_retry_gets_the_first_sandbox",
        pod_retry,
    );
}

async fn pod_retry(env: &mut TestEnv) -> Result<()> {
    let mut samples = Vec::new();
    for i in 0..3 {
        let began = Instant::now();
        env.run_pod(&format!("retry-warmup-{i}")).await?;
        samples.push(began.elapsed());
    }
    let normal = median(samples);
    let mut report = Report::default();
    for case in cases(normal) {
        let outcome = pod_case(env, &case).await;
        report.add(&case, outcome);
    }
    report.finish("RunPodSandbox", normal)?;

    for pod in env.cri.list_pod_sandbox(None).await? {
        env.cri.stop_pod_sandbox(&pod.id).await?;
        env.cri.remove_pod_sandbox(&pod.id).await?;
    }
    env.assert_no_leaks()
}

async fn pod_case(env: &TestEnv, case: &Case) -> Result<Outcome> {
    let config = env.pod_config(&format!("retry-{}", case.name))?;
    let first = run_pod_sandbox(&env.cri, &config, case.deadline).await;
    let gave_up_at = nanos_since_epoch(SystemTime::now());
    if !timed_out(&first)? {
        // The first attempt beat its deadline: the name is claimed, unless the
        // answer came within crustd's delivery margin of the deadline.
        let id = first?;
        expect_refused_or_same(
            env.cri.run_pod_sandbox(&config).await,
            &id,
            "RunPodSandbox after one that succeeded",
        )?;
        expect_code(
            env.cri.run_pod_sandbox(&config).await,
            Code::AlreadyExists,
            "RunPodSandbox after the id was handed out",
        )?;
        ensure!(sandboxes_named(env, &config).await? == [id.as_str()]);
        return Ok(Outcome::InTime);
    }
    let listed_before_retry = if case.retry_after_listed {
        listed_eventually(|| sandboxes_named(env, &config)).await?
    } else {
        Vec::new()
    };
    let id = match env.cri.run_pod_sandbox(&config).await {
        Ok(id) => id,
        Err(s) if s.code() == Code::AlreadyExists => {
            let existing = sandboxes_named(env, &config).await?;
            let answer = match existing.as_slice() {
                [id] => answer_in_log(env, "pod sandbox ready id=", id, "RunPodSandbox"),
                _ => None,
            };
            return judge_refused_retry(case, answer, gave_up_at, &s)
                .with_context(|| format!("sandboxes with the name: {existing:?}"));
        }
        Err(s) => bail!(
            "the retry of a RunPodSandbox that timed out ({:?}) failed with {:?}: {} \
             (sandboxes with the name: before the retry {listed_before_retry:?}, now {:?})",
            case.deadline,
            s.code(),
            s.message(),
            sandboxes_named(env, &config).await?
        ),
    };
    ensure!(
        listed_before_retry.is_empty() || listed_before_retry == [id.as_str()],
        "the first attempt made {listed_before_retry:?} but the retry returned {id}"
    );
    let listed = sandboxes_named(env, &config).await?;
    ensure!(
        listed == [id.as_str()],
        "ListPodSandbox shows {listed:?} for the name, the retry returned {id}"
    );
    // Give a first attempt that is somehow still running time to finish.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let listed = sandboxes_named(env, &config).await?;
    ensure!(
        listed == [id.as_str()],
        "later, ListPodSandbox shows {listed:?} for the name (the retry returned {id})"
    );
    let status = env.cri.pod_sandbox_status(&id).await?;
    ensure!(
        status.state == PodSandboxState::SandboxReady as i32,
        "the sandbox from the retry is {}",
        status.state
    );
    expect_code(
        env.cri.run_pod_sandbox(&config).await,
        Code::AlreadyExists,
        "a third RunPodSandbox after the retry succeeded",
    )?;
    Ok(Outcome::Retried)
}

#[test]
fn timed_out_create_container_retry_gets_the_first_container() {
    run(
        "timed_out_create_container_retry_gets_the_first_container",
        container_retry,
    );
}

async fn container_retry(env: &mut TestEnv) -> Result<()> {
    let busybox = env.images.busybox.reference.clone();
    env.pull(&busybox).await?;
    let pod = env.run_pod("container-retry").await?;
    let mut samples = Vec::new();
    for i in 0..3 {
        let mut warmup = env.container_config(&pod, &format!("warmup-{i}"), &busybox)?;
        warmup.command = vec!["sleep".into(), "3600".into()];
        let began = Instant::now();
        env.create_container(&pod, &warmup).await?;
        samples.push(began.elapsed());
    }
    let normal = median(samples);
    let mut report = Report::default();
    for case in cases(normal) {
        let outcome = container_case(env, &pod, &case).await;
        report.add(&case, outcome);
    }
    report.finish("CreateContainer", normal)?;

    env.cri.stop_pod_sandbox(&pod.id).await?;
    env.cri.remove_pod_sandbox(&pod.id).await?;
    env.assert_no_leaks()
}

async fn container_case(env: &TestEnv, pod: &Pod, case: &Case) -> Result<Outcome> {
    let busybox = &env.images.busybox.reference;
    let mut config = env.container_config(pod, &format!("retry-{}", case.name), busybox)?;
    config.command = vec!["sleep".into(), "3600".into()];
    let first = create_container(&env.cri, pod, &config, case.deadline).await;
    let gave_up_at = nanos_since_epoch(SystemTime::now());
    if !timed_out(&first)? {
        let id = first?;
        expect_refused_or_same(
            env.cri
                .create_container(&pod.id, &config, &pod.config)
                .await,
            &id,
            "CreateContainer after one that succeeded",
        )?;
        expect_code(
            env.cri
                .create_container(&pod.id, &config, &pod.config)
                .await,
            Code::AlreadyExists,
            "CreateContainer after the id was handed out",
        )?;
        ensure!(containers_named(env, pod, &config).await? == [id.as_str()]);
        return Ok(Outcome::InTime);
    }
    let listed_before_retry = if case.retry_after_listed {
        listed_eventually(|| containers_named(env, pod, &config)).await?
    } else {
        Vec::new()
    };
    let id = match env
        .cri
        .create_container(&pod.id, &config, &pod.config)
        .await
    {
        Ok(id) => id,
        Err(s) if s.code() == Code::AlreadyExists => {
            let existing = containers_named(env, pod, &config).await?;
            let answer = match existing.as_slice() {
                [id] => answer_in_log(env, "container created id=", id, "CreateContainer"),
                _ => None,
            };
            return judge_refused_retry(case, answer, gave_up_at, &s)
                .with_context(|| format!("containers with the name: {existing:?}"));
        }
        Err(s) => bail!(
            "the retry of a CreateContainer that timed out ({:?}) failed with {:?}: {} \
             (containers with the name: before the retry {listed_before_retry:?}, now {:?})",
            case.deadline,
            s.code(),
            s.message(),
            containers_named(env, pod, &config).await?
        ),
    };
    ensure!(
        listed_before_retry.is_empty() || listed_before_retry == [id.as_str()],
        "the first attempt made {listed_before_retry:?} but the retry returned {id}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let listed = containers_named(env, pod, &config).await?;
    ensure!(
        listed == [id.as_str()],
        "ListContainers shows {listed:?} for the name, the retry returned {id}"
    );
    let status = env.cri.container_status(&id).await?;
    ensure!(
        status.state == ContainerState::ContainerCreated as i32,
        "the container from the retry is {}",
        status.state
    );
    expect_code(
        env.cri
            .create_container(&pod.id, &config, &pod.config)
            .await,
        Code::AlreadyExists,
        "a third CreateContainer after the retry succeeded",
    )?;
    env.cri
        .start_container(&id)
        .await
        .context("StartContainer of the container from the retry")?;
    ensure!(env.sh(&id, "echo retried").await? == "retried\n");
    Ok(Outcome::Retried)
}
