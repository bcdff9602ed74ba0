//! `make conformance`, part two: a standalone kubelet (from `../shared/tools`,
//! named by `CRUST_KUBELET`) runs static pods on crustd, the way a node runs
//! them. kubelet's own view is the judge: its read-only `/pods`, the logs it
//! serves, and its error lines, every one of which must have a known cause.
//! Ignored by `make test`; `make conformance` runs it.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use crust_e2e::conformance::images::BUSYBOX;
use crust_e2e::conformance::kubelet::Kubelet;
use crust_e2e::conformance::{self, KUBELET_ENV};
use crust_e2e::network::TestNetwork;
use crust_e2e::prometheus;
use crust_e2e::{TestEnv, run_with_timeout, wait};
use serde_json::{Value, json};

/// How long the whole test may take.
const LIMIT: Duration = Duration::from_secs(8 * 60);
/// The web server image (crust-workload's nginx stand-in on :80).
const NGINX: &str = "registry.k8s.io/e2e-test-images/nginx:1.14-2";
/// How long pods may take to be running and ready as kubelet sees them.
const PODS_UP: Duration = Duration::from_secs(120);
/// How long kubelet may take to remove deleted pods from crust (its
/// container garbage collection runs once a minute).
const PODS_GONE: Duration = Duration::from_secs(150);
/// How long kubelet's summary may take to show a running pod.
const STATS_UP: Duration = Duration::from_secs(60);

/// A kubelet error line that does not come from a wrong crust answer: the
/// texts that identify it, and why it is there.
struct Tolerated {
    needles: &'static [&'static str],
    why: &'static str,
}

/// Every kubelet error line must match one of these; any other fails the test.
const TOLERATED_ERRORS: &[Tolerated] = &[
    Tolerated {
        needles: &["Failed to set rlimit on max file handles"],
        why: "this machine: root lacks CAP_SYS_RESOURCE, so kubelet cannot raise its open-file limit (any runtime)",
    },
    Tolerated {
        needles: &[
            "Failed to ensure process in container with oom score",
            "failed to find pid namespace of init process",
        ],
        why: "this machine: kubelet cannot read PID 1's namespace here (any runtime)",
    },
    Tolerated {
        needles: &[
            "Skipping pod synchronization",
            "pleg has yet to be successful",
        ],
        why: "kubelet's first second: its pod lifecycle event generator has not listed the runtime yet (any runtime)",
    },
    Tolerated {
        needles: &[
            "Image garbage collection failed once",
            "invalid capacity 0 on image filesystem",
        ],
        why: "kubelet's first image GC runs before cAdvisor has filesystem data (\"unable to find data in memory cache\"; any runtime)",
    },
    Tolerated {
        needles: &[
            "failed to check if we have separate container filesystem",
            "no imagefs label for configured runtime",
        ],
        why: "kubelet asks cAdvisor for an image-filesystem label it only has for CRI-O (containerd gets the same)",
    },
    Tolerated {
        needles: &["CrashLoopBackOff", "pod=\"default/retry-"],
        why: "the retry pod exits 3 on purpose, so kubelet backs off restarting it",
    },
];

/// Whether a kubelet error line is one of [`TOLERATED_ERRORS`], or kubelet
/// asking about a container its own garbage collection removed just before
/// (crustd's log records the removal; NotFound is the right answer).
fn explain(line: &str, crustd_log: &str) -> Option<&'static str> {
    if let Some(t) = TOLERATED_ERRORS
        .iter()
        .find(|t| t.needles.iter().all(|n| line.contains(n)))
    {
        return Some(t.why);
    }
    let was_removed = |id: &str| crustd_log.contains(&format!("container removed id={id}"));
    // The same NotFound, as kubelet's container GC reports it when it raced
    // the pod worker removing the same container.
    let id = if line.contains("ContainerStatus from runtime service failed") {
        quoted_value(line, "containerID=")
    } else if line.contains("Failed to remove container") {
        escaped_quoted_value(line, "failed to get container status ")
    } else {
        None
    };
    let removed = line.contains("code = NotFound") && id.is_some_and(was_removed);
    removed.then_some(
        "kubelet asked about a container its garbage collection had removed; NotFound is right",
    )
}

/// The value of `key\"value\"` inside a quoted klog field.
fn escaped_quoted_value<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let rest = &line[line.find(key)? + key.len()..];
    rest.strip_prefix("\\\"")?.split("\\\"").next()
}

/// The value of `key="value"` in a klog line.
fn quoted_value<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let rest = &line[line.find(key)? + key.len()..];
    rest.strip_prefix('"')?.split('"').next()
}

#[test]
#[ignore = "needs kubelet from ../shared/tools: run by `make conformance`"]
fn kubelet_runs_static_pods() {
    run_with_timeout("kubelet_runs_static_pods", LIMIT, static_pods);
}

async fn static_pods(env: &mut TestEnv) -> Result<()> {
    let binary = conformance::tool(KUBELET_ENV)?;
    conformance::serve_images(env).await?;
    let network = TestNetwork::claim(env)?;
    network.install(&network.standard_conflist("1.0.0"))?;
    let kubelet = Kubelet::start(
        &binary,
        &env.daemon.paths().socket,
        &env.daemon.paths().base.join("kubelet"),
    )?;
    let outcome = run_pods(env, &kubelet, network.host_port).await;
    if outcome.is_err() {
        let kept = std::env::temp_dir().join("crust-kubelet.log");
        let _ = std::fs::copy(&kubelet.log, &kept);
        eprintln!(
            "===== kubelet log tail (whole log kept at {}) =====\n{}\n===== end of kubelet log =====",
            kept.display(),
            kubelet.log_tail(60)
        );
    }
    outcome
}

async fn run_pods(env: &TestEnv, kubelet: &Kubelet, host_port: u16) -> Result<()> {
    wait::until("kubelet to be healthy", Duration::from_secs(60), || async {
        if !kubelet.is_running() {
            bail!("kubelet exited:\n{}", kubelet.log_tail(40));
        }
        Ok(kubelet.healthy().await.then_some(()))
    })
    .await?;

    kubelet.add_static_pod("web", &web_pod(host_port))?;
    kubelet.add_static_pod("retry", &retry_pod())?;
    kubelet.add_static_pod("pair", &pair_pod())?;

    let pods = wait::until("kubelet to run every pod", PODS_UP, || async {
        let pods = kubelet.pods().await?;
        let up = |name: &str| {
            pod_named(&pods, name).is_some_and(|p| all_ready(p) || restarted(p, "fail") >= 2)
        };
        Ok((up("web") && up("pair") && up("retry")).then_some(pods))
    })
    .await?;

    let web = pod_named(&pods, "web").context("web pod")?;
    check_web(env, kubelet, web, host_port).await?;
    let pair = pod_named(&pods, "pair").context("pair pod")?;
    check_pair(kubelet, pair).await?;
    let retry = pod_named(&pods, "retry").context("retry pod")?;
    check_retry(kubelet, retry).await?;
    check_stats(kubelet, pod_name(web)).await?;

    kubelet.remove_static_pods()?;
    wait::until(
        "kubelet to remove every pod from crust",
        PODS_GONE,
        || async {
            let sandboxes = env.cri.list_pod_sandbox(None).await?;
            let containers = env.cri.list_containers(None).await?;
            Ok((sandboxes.is_empty() && containers.is_empty()).then_some(()))
        },
    )
    .await?;

    let crustd_log = std::fs::read_to_string(&env.daemon.paths().log).unwrap_or_default();
    ensure!(
        crustd_log.contains("method=\"GetContainerEvents\""),
        "kubelet (with EventedPLEG) never subscribed to crust's container events"
    );
    let mut unexplained = Vec::new();
    let mut tolerated: BTreeMap<&str, (usize, String)> = BTreeMap::new();
    for line in kubelet.error_lines() {
        match explain(&line, &crustd_log) {
            Some(why) => tolerated.entry(why).or_insert((0, line)).0 += 1,
            None => unexplained.push(line),
        }
    }
    for (why, (count, first)) in &tolerated {
        println!("kubelet: {count} tolerated error lines: {why}\n  first: {first}");
    }
    ensure!(
        unexplained.is_empty(),
        "kubelet logged {} error lines with no known cause:\n{}",
        unexplained.len(),
        unexplained.join("\n")
    );
    Ok(())
}

/// nginx with a hostPort, HTTP readiness and exec liveness probes, env from
/// values and fieldRefs, a command override and an emptyDir.
fn web_pod(host_port: u16) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "terminationGracePeriodSeconds": 5,
            "containers": [{
                "name": "nginx",
                "image": NGINX,
                "command": ["sh", "-c", "env | sort; echo up > /cache/state; exec nginx -g 'daemon off;'"],
                "env": [
                    {"name": "GREETING", "value": "hello from crust"},
                    {"name": "MY_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "MY_POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                ],
                "ports": [{"containerPort": 80, "hostPort": host_port, "protocol": "TCP"}],
                "readinessProbe": {"httpGet": {"path": "/", "port": 80}, "periodSeconds": 1},
                "livenessProbe": {
                    "exec": {"command": ["sh", "-c", "test -s /var/run/nginx.pid && test -s /cache/state"]},
                    "periodSeconds": 2,
                },
                "volumeMounts": [{"name": "cache", "mountPath": "/cache"}],
            }],
            "volumes": [{"name": "cache", "emptyDir": {}}],
        },
    })
}

/// A container that exits 3 every time; kubelet restarts it with back-off.
fn retry_pod() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "retry", "namespace": "default"},
        "spec": {
            "restartPolicy": "OnFailure",
            "terminationGracePeriodSeconds": 2,
            "containers": [{
                "name": "fail",
                "image": BUSYBOX,
                "command": ["sh", "-c", "echo attempt at $(date +%s); exit 3"],
            }],
        },
    })
}

/// Two containers sharing an emptyDir, the writer running as uid 1000.
fn pair_pod() -> Value {
    let shared = json!([{"name": "shared", "mountPath": "/shared"}]);
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "pair", "namespace": "default"},
        "spec": {
            "terminationGracePeriodSeconds": 2,
            "containers": [
                {
                    "name": "writer",
                    "image": BUSYBOX,
                    "securityContext": {"runAsUser": 1000},
                    "command": ["sh", "-c", "id -u > /shared/uid && echo wrote; exec sleep 3600"],
                    "volumeMounts": shared,
                },
                {
                    "name": "reader",
                    "image": BUSYBOX,
                    "command": ["sh", "-c", "until [ -s /shared/uid ]; do sleep 0.2; done; echo writer uid $(cat /shared/uid); exec sleep 3600"],
                    "volumeMounts": shared,
                },
            ],
            "volumes": [{"name": "shared", "emptyDir": {}}],
        },
    })
}

/// The pod kubelet runs from manifest `name` (static pods are named
/// `<name>-<node name>`).
fn pod_named<'a>(pods: &'a [Value], name: &str) -> Option<&'a Value> {
    pods.iter().find(|p| {
        p["metadata"]["name"]
            .as_str()
            .is_some_and(|n| n.starts_with(&format!("{name}-")))
    })
}

fn container_statuses(pod: &Value) -> &[Value] {
    pod["status"]["containerStatuses"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
}

fn container_status<'a>(pod: &'a Value, name: &str) -> Option<&'a Value> {
    container_statuses(pod).iter().find(|c| c["name"] == name)
}

/// Every container of the pod is running and ready.
fn all_ready(pod: &Value) -> bool {
    let statuses = container_statuses(pod);
    !statuses.is_empty()
        && statuses
            .iter()
            .all(|c| c["ready"] == true && c["state"]["running"].is_object())
}

/// How often kubelet restarted container `name`.
fn restarted(pod: &Value, name: &str) -> u64 {
    container_status(pod, name)
        .and_then(|c| c["restartCount"].as_u64())
        .unwrap_or(0)
}

fn pod_name(pod: &Value) -> &str {
    pod["metadata"]["name"].as_str().unwrap_or_default()
}

/// The web pod: reachable on its hostPort, its env from values and
/// fieldRefs, its image shown as named.
async fn check_web(env: &TestEnv, kubelet: &Kubelet, pod: &Value, host_port: u16) -> Result<()> {
    let nginx = container_status(pod, "nginx").context("nginx has no status")?;
    ensure!(
        nginx["image"] == NGINX,
        "kubelet shows nginx's image as {} instead of {NGINX}",
        nginx["image"]
    );
    let image_id = nginx["imageID"].as_str().unwrap_or_default();
    ensure!(
        image_id.contains("e2e-test-images/nginx@sha256:"),
        "kubelet shows nginx's imageID as {image_id:?}, not the digested reference"
    );
    let pod_ip = pod["status"]["podIP"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    ensure!(
        !pod_ip.is_empty(),
        "kubelet shows no pod IP for web: {}",
        pod["status"]
    );

    let log = kubelet
        .container_log("default", pod_name(pod), "nginx", false)
        .await?;
    for wanted in [
        "GREETING=hello from crust".to_string(),
        format!("MY_POD_NAME={}", pod_name(pod)),
        format!("MY_POD_IP={pod_ip}"),
    ] {
        ensure!(
            log.lines().any(|l| l == wanted),
            "nginx's log (as kubelet serves it) lacks {wanted:?}:\n{log}"
        );
    }

    let page = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()?
        .get(format!("http://127.0.0.1:{host_port}/"))
        .send()
        .await
        .with_context(|| format!("GET the web pod through hostPort {host_port}"))?;
    ensure!(
        page.status().is_success(),
        "hostPort {host_port} answered {}",
        page.status()
    );
    let sandboxes = env.cri.list_pod_sandbox(None).await?;
    ensure!(
        sandboxes.len() == 3,
        "crust runs {} pod sandboxes for kubelet's 3 pods",
        sandboxes.len()
    );
    Ok(())
}

/// kubelet's summary API and `/metrics/cadvisor`, both made from crust's
/// stats and metrics RPCs (PodAndContainerStatsFromCRI): the web pod's nginx
/// has CPU and memory figures, the pod has its interface's counters, and its
/// working set is a series labelled with its pod and container.
async fn check_stats(kubelet: &Kubelet, web: &str) -> Result<()> {
    let pod = wait::until(
        "kubelet's summary to show the web pod",
        STATS_UP,
        || async {
            let summary: Value = serde_json::from_str(&kubelet.read_only("/stats/summary").await?)
                .context("kubelet's /stats/summary is not JSON")?;
            let pods = summary["pods"].as_array().cloned().unwrap_or_default();
            Ok(pods.into_iter().find(|p| {
                p["podRef"]["name"] == web
                    && p["containers"]
                        .as_array()
                        .is_some_and(|cs| cs.iter().any(|c| c["name"] == "nginx"))
            }))
        },
    )
    .await?;
    let nginx = pod["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == "nginx"))
        .context("nginx in the summary")?;
    let positive = |v: &Value| v.as_u64().is_some_and(|n| n > 0);
    ensure!(
        positive(&nginx["cpu"]["usageCoreNanoSeconds"])
            && positive(&nginx["memory"]["workingSetBytes"])
            && nginx["rootfs"]["usedBytes"].is_u64(),
        "kubelet's summary of nginx lacks CPU, memory or rootfs figures: {nginx}"
    );
    ensure!(
        positive(&pod["network"]["rxBytes"]),
        "kubelet's summary of the web pod has no received bytes: {}",
        pod["network"]
    );

    let text = kubelet.read_only("/metrics/cadvisor").await?;
    let metrics = prometheus::parse(&text).context("kubelet's /metrics/cadvisor")?;
    let working_set = metrics.value(
        "container_memory_working_set_bytes",
        &[
            ("pod", web),
            ("namespace", "default"),
            ("container", "nginx"),
        ],
    );
    ensure!(
        working_set.is_some_and(|v| v > 0.0),
        "kubelet's /metrics/cadvisor has no working set for nginx in {web}"
    );
    ensure!(
        metrics
            .value(
                "container_network_receive_bytes_total",
                &[("pod", web), ("interface", "eth0")]
            )
            .is_some_and(|v| v > 0.0),
        "kubelet's /metrics/cadvisor has no eth0 counters for {web}"
    );
    Ok(())
}

/// The pair pod: the reader saw the file the writer (uid 1000) made.
async fn check_pair(kubelet: &Kubelet, pod: &Value) -> Result<()> {
    let log = kubelet
        .container_log("default", pod_name(pod), "reader", false)
        .await?;
    ensure!(
        log.contains("writer uid 1000"),
        "the reader did not see the writer's file: {log:?}"
    );
    let log = kubelet
        .container_log("default", pod_name(pod), "writer", false)
        .await?;
    ensure!(log.contains("wrote"), "the writer's log: {log:?}");
    Ok(())
}

/// The retry pod: restarted by kubelet, its last exit 3, and the log of
/// its latest attempt served.
async fn check_retry(kubelet: &Kubelet, pod: &Value) -> Result<()> {
    let fail = container_status(pod, "fail").context("fail has no status")?;
    let last = &fail["lastState"]["terminated"];
    ensure!(
        last["exitCode"] == 3 && last["reason"] == "Error",
        "the last attempt of fail should have exited 3 with reason Error: {fail}"
    );
    let log = kubelet
        .container_log("default", pod_name(pod), "fail", false)
        .await?;
    ensure!(
        log.contains("attempt at"),
        "kubelet serves no log of fail's latest attempt: {log:?}"
    );
    Ok(())
}

#[test]
fn kubelet_error_lines_are_explained_or_not() {
    let removed = "E1128 07:26:26.977 1 log.go:32] \"ContainerStatus from runtime service failed\" err=\"rpc error: code = NotFound desc = container \\\"abc\\\" not found\" containerID=\"abc\"";
    assert!(explain(removed, "INFO container removed id=abc").is_some());
    assert!(explain(removed, "INFO container removed id=other").is_none());
    let gc = r#"E1128 11:33:31.576867   31087 kuberuntime_gc.go:150] "Failed to remove container" err="failed to get container status \"abc\": rpc error: code = NotFound desc = container \"abc\" not found" containerID="abc""#;
    assert!(explain(gc, "INFO container removed id=abc").is_some());
    assert!(explain(gc, "INFO container removed id=other").is_none());
    let rlimit = "E1128 1 kubelet.go:1] \"Failed to set rlimit on max file handles\" err=\"operation not permitted\"";
    assert!(explain(rlimit, "").is_some());
    let wrong = "E1128 1 log.go:32] \"CreateContainer in sandbox from runtime service failed\" err=\"rpc error: code = Unknown\"";
    assert!(explain(wrong, "").is_none());
    assert_eq!(
        quoted_value("a containerID=\"x1\" b", "containerID="),
        Some("x1")
    );
}
