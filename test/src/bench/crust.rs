//! The crust column: crustd started by the harness's [`Daemon`] on a private
//! root, state dir and socket, driven through the CRI workload.

use anyhow::{Context, Result};

use super::big_image::BigImages;
use super::options::Options;
use super::pods::PodFactory;
use super::results::RunResult;
use super::workload::{self, CriTarget};
use crate::daemon::Daemon;
use crate::fixtures::TestImages;
use crate::{CriClient, binaries};

/// Runs the workload against a fresh crustd; the daemon guard then removes
/// every pod through CRI, stops crustd and removes what is left on disk.
pub async fn run(images: &TestImages, big: Option<&BigImages>, options: &Options) -> RunResult {
    let mut result = RunResult::new("crust");
    if let Err(e) = run_inner(images, big, options, &mut result).await {
        result.fail(&e);
    }
    result
}

async fn run_inner(
    images: &TestImages,
    big: Option<&BigImages>,
    options: &Options,
    result: &mut RunResult,
) -> Result<()> {
    let binaries = binaries::locate()?;
    result.version = format!("crustd from {}", binaries.crustd.display());
    let mut daemon = Daemon::start("bench").await.context("starting crustd")?;
    let outcome = drive(&daemon, images, big, options, result).await;
    if outcome.is_ok() {
        let leaks = daemon.leaks();
        if !leaks.is_empty() {
            result.note(format!(
                "crustd left behind after every pod was removed: {leaks:?}"
            ));
        }
    } else {
        daemon.mark_failed();
    }
    drop(daemon);
    outcome
}

async fn drive(
    daemon: &Daemon,
    images: &TestImages,
    big: Option<&BigImages>,
    options: &Options,
    result: &mut RunResult,
) -> Result<()> {
    let paths = daemon.paths();
    let pid = daemon.pid().context("crustd is not running")? as i32;
    let target = CriTarget {
        cri: CriClient::connect(&paths.socket).await?,
        daemon_pid: pid,
        pods: PodFactory {
            log_base: paths.pod_logs.clone(),
            cgroup_parent: daemon.cgroup_parent().to_string(),
        },
        shim_program: "crust-shim",
        shim_scope: paths.base.clone(),
        content_blobs: paths.root.join("content").join("blobs").join("sha256"),
    };
    if let Ok(v) = target.cri.version().await {
        result.version = format!("{} {}", v.runtime_name, v.runtime_version);
    }
    workload::run(&target, images, big, options, result).await
}
