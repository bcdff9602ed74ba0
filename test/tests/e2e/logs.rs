//! Container logs beyond plain pipes: a TTY container's output in the CRI log
//! format, and ReopenContainerLog after kubelet rotated a log file.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use crust_e2e::assertions::expect_code;
use crust_e2e::cri::ContainerState;
use crust_e2e::cri_log::{self, LogRecord, Stream};
use crust_e2e::{TestEnv, run, unique, wait};
use tonic::Code;

#[test]
fn tty_container_logs_lines_without_carriage_returns() {
    run(
        "tty_container_logs_lines_without_carriage_returns",
        tty_container,
    );
}

async fn tty_container(env: &mut TestEnv) -> Result<()> {
    env.pull(&env.images.busybox.reference).await?;
    let pod = env.run_pod("tty").await?;
    let mut config = env.shell_container(
        &pod,
        "tty",
        "echo hello-tty; [ -t 1 ] && echo stdout-is-a-tty; exit 4",
    )?;
    config.tty = true;
    config.stdin = false;
    let id = env.start_container(&pod, &config).await?;
    let status = env
        .wait_for_state(
            &id,
            ContainerState::ContainerExited,
            Duration::from_secs(30),
        )
        .await?;
    ensure!(
        status.exit_code == 4,
        "tty container exited {} (expected 4), reason {:?}",
        status.exit_code,
        status.reason
    );
    let path = pod.log_file(&config);
    let records = wait::until("two tty log records", Duration::from_secs(10), || async {
        Ok(cri_log::read_log(&path)
            .ok()
            .filter(|records| records.len() >= 2))
    })
    .await
    .with_context(|| {
        format!(
            "log so far: {:?}",
            std::fs::read(&path).map(|b| String::from_utf8_lossy(&b).into_owned())
        )
    })?;
    let raw = std::fs::read(&path)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    ensure!(
        !raw.contains(&b'\r'),
        "the tty log keeps carriage returns: {text:?}"
    );
    let lines: Vec<LogRecord> = text
        .split('\n')
        .filter(|l| !l.is_empty())
        .map(cri_log::parse_record)
        .collect::<Result<_>>()?;
    ensure!(lines == records, "log parses differently by \\n: {text:?}");
    for wanted in ["hello-tty", "stdout-is-a-tty"] {
        ensure!(
            records
                .iter()
                .any(|r| r.stream == Stream::Stdout && !r.partial && r.content == wanted),
            "no `stdout F {wanted}` record in {text:?}"
        );
    }
    ensure!(
        records.len() == 2,
        "expected exactly two records (the tty's output), got {text:?}"
    );

    env.cri.stop_pod_sandbox(&pod.id).await?;
    env.cri.remove_pod_sandbox(&pod.id).await?;
    env.assert_no_leaks()
}

/// The tick numbers (`tick-<n>` records on stdout) in the log at `path`.
/// Only complete lines count: the last one may still be being written.
fn ticks(path: &Path) -> Result<Vec<u64>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    let records: Vec<LogRecord> = complete
        .lines()
        .map(cri_log::parse_record)
        .collect::<Result<_>>()?;
    records
        .iter()
        .map(|r| {
            ensure!(
                r.stream == Stream::Stdout && !r.partial,
                "unexpected record {r:?} in {}",
                path.display()
            );
            r.content
                .strip_prefix("tick-")
                .and_then(|n| n.parse().ok())
                .with_context(|| format!("unexpected record {r:?} in {}", path.display()))
        })
        .collect()
}

#[test]
fn reopen_container_log_after_rotation() {
    run("reopen_container_log_after_rotation", reopen_log);
}

async fn reopen_log(env: &mut TestEnv) -> Result<()> {
    env.pull(&env.images.busybox.reference).await?;
    let pod = env.run_pod("reopen").await?;
    let config = env.shell_container(
        &pod,
        "ticker",
        "i=0; while true; do echo tick-$i; i=$((i+1)); sleep 0.2; done",
    )?;
    let id = env.start_container(&pod, &config).await?;
    let log = pod.log_file(&config);
    wait::until("three ticks", Duration::from_secs(10), || async {
        Ok((log.exists() && ticks(&log)?.len() >= 3).then_some(()))
    })
    .await?;

    let rotated = log.with_extension("log.1");
    std::fs::rename(&log, &rotated)?;
    env.cri
        .reopen_container_log(&id)
        .await
        .context("ReopenContainerLog of a running container")?;
    ensure!(
        log.exists(),
        "ReopenContainerLog returned but {} was not created",
        log.display()
    );
    let old_ticks = ticks(&rotated)?;
    let old_size = std::fs::metadata(&rotated)?.len();
    let last_old = *old_ticks.last().context("rotated log is empty")?;
    let new_ticks = wait::until(
        "fresh ticks in the reopened log",
        Duration::from_secs(10),
        || async {
            let t = ticks(&log)?;
            Ok((t.len() >= 3).then_some(t))
        },
    )
    .await?;
    ensure!(
        new_ticks[0] > last_old,
        "the new log starts at tick {} but the rotated one ended at {last_old}",
        new_ticks[0]
    );
    ensure!(
        std::fs::metadata(&rotated)?.len() == old_size,
        "the rotated log kept growing after ReopenContainerLog"
    );
    let all: Vec<u64> = old_ticks.iter().chain(&new_ticks).copied().collect();
    let expected: Vec<u64> = (0..all.len() as u64).collect();
    ensure!(
        all == expected,
        "ticks lost or duplicated across the rotation: old {old_ticks:?}, new {new_ticks:?}"
    );

    // Reopening twice without a rotation in between is harmless.
    env.cri
        .reopen_container_log(&id)
        .await
        .context("second ReopenContainerLog")?;
    let before = ticks(&log)?.len();
    wait::until(
        "ticks to continue after a second reopen",
        Duration::from_secs(10),
        || async { Ok((ticks(&log)?.len() > before + 1).then_some(())) },
    )
    .await?;

    env.cri.stop_container(&id, 0).await?;
    env.wait_for_state(
        &id,
        ContainerState::ContainerExited,
        Duration::from_secs(10),
    )
    .await?;
    let rotated_again = log.with_extension("log.2");
    std::fs::rename(&log, &rotated_again)?;
    let outcome = env.cri.reopen_container_log(&id).await;
    if let Err(status) = &outcome {
        ensure!(
            !status.message().is_empty(),
            "ReopenContainerLog of an exited container failed without a message"
        );
    }
    expect_code(
        outcome,
        Code::FailedPrecondition,
        "ReopenContainerLog of an exited container",
    )?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    ensure!(
        !log.exists(),
        "ReopenContainerLog failed but created {} (the CRI forbids it)",
        log.display()
    );
    expect_code(
        env.cri.reopen_container_log(&unique::unknown_id()).await,
        Code::NotFound,
        "ReopenContainerLog of an unknown container",
    )?;

    env.cri.stop_pod_sandbox(&pod.id).await?;
    env.cri.remove_pod_sandbox(&pod.id).await?;
    env.assert_no_leaks()
}

#[test]
fn failed_create_leaves_no_log_file() {
    run("failed_create_leaves_no_log_file", failed_create);
}

/// kubelet numbers a container's attempts by the files in its log directory,
/// so a CreateContainer that fails (here: runc cannot find the program) must
/// not leave the log file behind; the next attempt then succeeds and logs.
async fn failed_create(env: &mut TestEnv) -> Result<()> {
    env.pull(&env.images.busybox.reference).await?;
    let pod = env.run_pod("failed-create").await?;
    let mut config = env.container_config(&pod, "app", &env.images.busybox.reference)?;
    config.command = vec!["/no/such/program".into()];
    let log_dir = pod.log_file(&config);
    let log_dir = log_dir.parent().context("log path has no directory")?;
    expect_code(
        env.cri
            .create_container(&pod.id, &config, &pod.config)
            .await,
        Code::FailedPrecondition,
        "CreateContainer of a program the image lacks",
    )?;
    let left: Vec<_> = std::fs::read_dir(log_dir)?
        .flatten()
        .map(|e| e.file_name())
        .collect();
    ensure!(
        left.is_empty(),
        "the failed create left {left:?} in {}",
        log_dir.display()
    );

    config.command = vec!["echo".into(), "second attempt".into()];
    if let Some(metadata) = config.metadata.as_mut() {
        metadata.attempt = 1;
    }
    config.log_path = "app/1.log".into();
    let id = env.start_container(&pod, &config).await?;
    env.wait_for_state(
        &id,
        ContainerState::ContainerExited,
        Duration::from_secs(30),
    )
    .await?;
    let records = cri_log::read_log(&pod.log_file(&config))?;
    ensure!(
        records.iter().any(|r| r.content == "second attempt"),
        "the second attempt's log: {records:?}"
    );
    Ok(())
}
