//! Runtime handlers (RuntimeClass): the same pod and container under runc
//! and youki, through a crustd restart; an unknown handler refused with the
//! names of the real ones; Status listing every handler with its features;
//! a handler whose binary is missing reported unavailable and refused.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use crust_e2e::assertions::expect_code;
use crust_e2e::cri::ContainerState;
use crust_e2e::{Pod, TestEnv, cri_log, requirements, run, wait};
use tonic::Code;

/// The handlers of the default config, each with the state root (under
/// crustd's `--state`) its OCI runtime keeps containers in.
const HANDLERS: [(&str, &str); 2] = [("runc", "runc"), ("youki", "runtimes/youki")];

/// Skips (fails under CI) when youki is not installed (`make deps-youki`).
fn youki_missing(test: &str) -> bool {
    if requirements::find_program("youki").is_some() {
        return false;
    }
    requirements::note_skip(test, "`youki` is not installed (make deps-youki)");
    true
}

#[test]
fn the_same_container_runs_under_each_handler_across_a_restart() {
    if youki_missing("handlers::the_same_container_runs_under_each_handler_across_a_restart") {
        return;
    }
    run(
        "the_same_container_runs_under_each_handler_across_a_restart",
        same_container,
    );
}

/// One pod per handler with a busybox container that logs and sleeps: it
/// runs under that handler's runtime (its state is in that root), execs and
/// logs work; crustd is restarted; then each is exec'd, stopped and removed
/// through its own handler, leaving nothing behind.
async fn same_container(env: &mut TestEnv) -> Result<()> {
    env.pull(&env.images.busybox.reference).await?;
    let mut started: Vec<(&str, Pod, String)> = Vec::new();
    for (handler, _) in HANDLERS {
        let config = env.pod_config(&format!("handler-{handler}"))?;
        let id = env
            .cri
            .run_pod_sandbox_with_handler(&config, handler)
            .await
            .with_context(|| format!("RunPodSandbox under {handler}"))?;
        let pod = Pod { id, config };
        let status = env.cri.pod_sandbox_status(&pod.id).await?;
        ensure!(
            status.runtime_handler == handler,
            "PodSandboxStatus says handler {:?}, the pod was given {handler:?}",
            status.runtime_handler
        );
        let config = env.shell_container(&pod, "app", "echo hello from $0; exec sleep 3600")?;
        let cid = env.start_container(&pod, &config).await?;
        let log = pod.log_file(&config);
        wait::until(
            "the container's log line",
            Duration::from_secs(10),
            || async {
                Ok(cri_log::read_log(&log)
                    .ok()
                    .filter(|r| r.iter().any(|r| r.content.starts_with("hello from")))
                    .map(|_| ()))
            },
        )
        .await
        .with_context(|| format!("logs under {handler}"))?;
        started.push((handler, pod, cid));
    }
    check_roots(env, &started)?;

    env.restart_daemon().await?;

    for (handler, pod, cid) in &started {
        let out = env
            .sh(cid, "echo $((6 * 7))")
            .await
            .with_context(|| format!("exec under {handler} after the restart"))?;
        ensure!(out.trim() == "42", "exec under {handler} printed {out:?}");
        env.cri.stop_container(cid, 5).await?;
        env.wait_for_state(
            cid,
            ContainerState::ContainerExited,
            Duration::from_secs(10),
        )
        .await
        .with_context(|| format!("stop under {handler}"))?;
        env.cri.remove_container(cid).await?;
        env.cri.stop_pod_sandbox(&pod.id).await?;
        env.cri.remove_pod_sandbox(&pod.id).await?;
    }
    env.assert_no_leaks()
}

/// Each container is in its own handler's state root and in no other.
fn check_roots(env: &TestEnv, started: &[(&str, Pod, String)]) -> Result<()> {
    let state = &env.daemon.paths().state;
    for (handler, _, cid) in started {
        for (other, root) in HANDLERS {
            let present = state.join(root).join(cid).exists();
            ensure!(
                present == (*handler == other),
                "container {cid} of handler {handler}: state under {root} is {}",
                if present { "present" } else { "missing" }
            );
        }
    }
    Ok(())
}

#[test]
fn status_lists_the_handlers_and_unknown_ones_are_refused() {
    run(
        "status_lists_the_handlers_and_unknown_ones_are_refused",
        status_and_unknown,
    );
}

async fn status_and_unknown(env: &mut TestEnv) -> Result<()> {
    let config = env.pod_config("handler-unknown")?;
    let refused = env.cri.run_pod_sandbox_with_handler(&config, "kata").await;
    if let Err(status) = &refused {
        for name in ["\"kata\"", "\"runc\"", "\"youki\""] {
            ensure!(
                status.message().contains(name),
                "the refusal does not name {name}: {}",
                status.message()
            );
        }
    }
    expect_code(refused, Code::NotFound, "RunPodSandbox with handler kata")?;

    let status = env.cri.status_verbose().await?;
    let names: Vec<&str> = status
        .runtime_handlers
        .iter()
        .map(|h| h.name.as_str())
        .collect();
    ensure!(
        names == ["", "runc", "youki"],
        "Status lists handlers {names:?}"
    );
    ensure!(
        status.runtime_handlers.iter().all(|h| h.features.is_some()),
        "a handler without features: {:?}",
        status.runtime_handlers
    );
    let info = status
        .info
        .get("runtimeHandlers")
        .context("verbose Status has no runtimeHandlers")?;
    let info: serde_json::Value = serde_json::from_str(info)?;
    ensure!(
        info["handlers"][0]["name"] == "" && info["handlers"][0]["handler"] == "runc",
        "the first verbose handler is not the default under \"\": {info}"
    );
    let runc = info["handlers"]
        .as_array()
        .and_then(|hs| hs.iter().find(|h| h["name"] == "runc"))
        .with_context(|| format!("no runc in {info}"))?;
    ensure!(
        runc["available"] == true
            && runc["default"] == true
            && runc["runtime"]
                .as_str()
                .is_some_and(|b| b.ends_with("runc"))
            && runc["root"].as_str().is_some_and(|r| r.ends_with("/runc"))
            && runc["features"]["userNamespaces"].is_boolean(),
        "verbose info of runc: {runc}"
    );
    Ok(())
}

#[test]
fn a_handler_that_cannot_run_is_reported_and_refused() {
    run(
        "a_handler_that_cannot_run_is_reported_and_refused",
        unavailable,
    );
}

/// A handler whose binary does not exist: crustd starts, Status lists it
/// with every feature false and says why, and a pod asking for it gets
/// FailedPrecondition naming the reason.
async fn unavailable(env: &mut TestEnv) -> Result<()> {
    env.reconfigure_tables(
        "[runtimes.runc]\nbinary = \"runc\"\n\n[runtimes.ghost]\nbinary = \"/nonexistent/ghost-runtime\"\n",
    )
    .await?;
    let status = env.cri.status_verbose().await?;
    let ghost = status
        .runtime_handlers
        .iter()
        .find(|h| h.name == "ghost")
        .with_context(|| format!("Status lacks ghost: {:?}", status.runtime_handlers))?;
    let f = ghost.features.context("ghost without features")?;
    ensure!(
        !f.recursive_read_only_mounts && !f.user_namespaces,
        "an unusable handler advertises {f:?}"
    );
    let info = status
        .info
        .get("runtimeHandlers")
        .context("verbose Status has no runtimeHandlers")?;
    ensure!(
        info.contains("/nonexistent/ghost-runtime not found")
            && info.contains("\"available\":false"),
        "verbose info does not say why ghost is unavailable: {info}"
    );

    let config = env.pod_config("handler-ghost")?;
    let refused = env.cri.run_pod_sandbox_with_handler(&config, "ghost").await;
    if let Err(status) = &refused {
        ensure!(
            status.message().contains("not found"),
            "the refusal does not say why: {}",
            status.message()
        );
    }
    expect_code(
        refused,
        Code::FailedPrecondition,
        "RunPodSandbox with ghost",
    )?;
    env.assert_no_leaks()
}
