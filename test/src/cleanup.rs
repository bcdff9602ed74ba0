//! Tearing down what a test's crustd made, in the order the daemon guard uses:
//! CRI first (best effort), then leftover shims and runc containers, then mounts,
//! directories and cgroups. Every step reports problems instead of failing, so
//! one stuck resource never stops the rest from being cleaned.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::cri_client::CriClient;
use crate::{cgroups, mountinfo, processes, requirements};

/// Stops and removes every container and sandbox crustd knows, through CRI, in a
/// thread of its own (so it works from Drop, inside or outside a tokio runtime).
/// Bounded by `limit`; returns what failed.
pub fn cri_remove_everything(socket: &Path, limit: Duration) -> Vec<String> {
    let socket = socket.to_path_buf();
    let worker = std::thread::spawn(move || -> Vec<String> {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => return vec![format!("tokio runtime: {e}")],
        };
        runtime.block_on(async move {
            match tokio::time::timeout(limit, remove_everything(&socket)).await {
                Ok(problems) => problems,
                Err(_) => vec![format!("CRI cleanup did not finish within {limit:?}")],
            }
        })
    });
    worker
        .join()
        .unwrap_or_else(|_| vec!["CRI cleanup thread panicked".to_string()])
}

async fn remove_everything(socket: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    let cri = match CriClient::connect(socket).await {
        Ok(c) => c,
        Err(e) => return vec![format!("connect for cleanup: {e:#}")],
    };
    match cri.list_containers(None).await {
        Ok(containers) => {
            for c in containers {
                if let Err(e) = cri.stop_container(&c.id, 0).await {
                    problems.push(format!("StopContainer {}: {e}", c.id));
                }
                if let Err(e) = cri.remove_container(&c.id).await {
                    problems.push(format!("RemoveContainer {}: {e}", c.id));
                }
            }
        }
        Err(e) => problems.push(format!("ListContainers: {e}")),
    }
    match cri.list_pod_sandbox(None).await {
        Ok(pods) => {
            for p in pods {
                if let Err(e) = cri.stop_pod_sandbox(&p.id).await {
                    problems.push(format!("StopPodSandbox {}: {e}", p.id));
                }
                if let Err(e) = cri.remove_pod_sandbox(&p.id).await {
                    problems.push(format!("RemovePodSandbox {}: {e}", p.id));
                }
            }
        }
        Err(e) => problems.push(format!("ListPodSandbox: {e}")),
    }
    problems
}

/// The OCI runtimes' state roots under `state`, with the binary of each:
/// runc's `<state>/runc`, and `<state>/runtimes/<name>` of every other
/// handler of the default config (whose binary is called as it is).
pub fn oci_roots(state: &Path) -> Vec<(String, PathBuf)> {
    let others = state.join("runtimes");
    std::iter::once(("runc".to_string(), state.join("runc")))
        .chain(
            dir_names(&others)
                .into_iter()
                .map(|name| (name.clone(), others.join(name))),
        )
        .collect()
}

/// Ids of containers that still have a bundle under `<state>/containers` or
/// state under an OCI runtime's root (see [`oci_roots`]).
pub fn leftover_container_ids(state: &Path) -> Vec<String> {
    let mut ids: Vec<String> = dir_names(&state.join("containers"))
        .into_iter()
        .chain(
            oci_roots(state)
                .iter()
                .flat_map(|(_, root)| dir_names(root)),
        )
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// Kills leftover shims (from each bundle's `shim.pid`, and any `crust-shim`
/// whose command line or cwd points into `base`), then deletes (`delete -f`)
/// every leftover container with the OCI runtime whose root holds it.
/// Returns what failed.
pub fn kill_leftover_containers(base: &Path, state: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    let mut shims: Vec<i32> = dir_names(&state.join("containers"))
        .iter()
        .filter_map(|id| {
            let text = std::fs::read_to_string(state.join("containers").join(id).join("shim.pid"));
            text.ok()?.trim().parse().ok()
        })
        .filter(|pid| processes::runs_program(*pid, "crust-shim"))
        .collect();
    shims.extend(processes::find_program_using("crust-shim", base));
    shims.sort();
    shims.dedup();
    for pid in shims {
        if !processes::kill_and_wait(pid, Duration::from_secs(5)) {
            problems.push(format!("crust-shim {pid} survived SIGKILL"));
        }
    }
    for (binary, root) in oci_roots(state) {
        for id in dir_names(&root) {
            if let Err(e) = run_bounded(
                Command::new(
                    requirements::find_program(&binary).unwrap_or_else(|| binary.clone().into()),
                )
                .arg("--root")
                .arg(&root)
                .args(["delete", "-f", &id]),
                Duration::from_secs(15),
            ) {
                problems.push(format!("{binary} delete -f {id}: {e}"));
            }
        }
    }
    problems
}

/// Unmounts (lazily, deepest first) every mount at or below `dir`. Returns the
/// mount points that are still there afterwards.
pub fn unmount_all_under(dir: &Path) -> Vec<String> {
    for _ in 0..5 {
        let mounts = mountinfo::mounts_under(dir).unwrap_or_default();
        if mounts.is_empty() {
            return Vec::new();
        }
        for m in mounts {
            let _ = nix::mount::umount2(&m.mount_point, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    mountinfo::mounts_under(dir)
        .unwrap_or_default()
        .into_iter()
        .map(|m| {
            format!(
                "mount {} ({}) could not be unmounted",
                m.mount_point.display(),
                m.fs_type
            )
        })
        .collect()
}

/// Removes `dir` recursively, but only once nothing is mounted below it (so the
/// removal can never reach into a filesystem that is not the test's own).
pub fn remove_dir_when_unmounted(dir: &Path) -> Vec<String> {
    if !dir.exists() {
        return Vec::new();
    }
    let mounted = unmount_all_under(dir);
    if !mounted.is_empty() {
        return mounted
            .into_iter()
            .chain([format!("left {} in place", dir.display())])
            .collect();
    }
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Vec::new(),
        Err(e) => vec![format!("remove {}: {e}", dir.display())],
    }
}

/// What a test's daemon left behind that it should have cleaned itself: mounts
/// under `base`, bundles and runc state under `state`, live shims, and
/// container cgroups below the test's `cgroup_root` (whose direct children are
/// the pods' cgroup parents, which belong to kubelet, i.e. the test).
pub fn leak_report(base: &Path, state: &Path, cgroup_root: &str) -> Vec<String> {
    let mut leaks: Vec<String> = mountinfo::mounts_under(base)
        .unwrap_or_default()
        .into_iter()
        .map(|m| format!("mount {} ({})", m.mount_point.display(), m.fs_type))
        .collect();
    let dirs = [state.join("containers"), state.join("sandboxes")]
        .into_iter()
        .chain(oci_roots(state).into_iter().map(|(_, root)| root));
    for dir in dirs {
        for name in dir_names(&dir) {
            leaks.push(format!("{}/{name}", dir.display()));
        }
    }
    for pid in processes::find_program_using("crust-shim", base) {
        leaks.push(format!("crust-shim process {pid}"));
    }
    for dir in cgroups::descendants(cgroup_root, 2) {
        leaks.push(format!("cgroup {}", dir.display()));
    }
    leaks
}

/// Names of the entries of `dir` (empty if it does not exist).
fn dir_names(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Runs `command` to completion, killing it if it takes longer than `limit`.
pub fn run_bounded(command: &mut Command, limit: Duration) -> anyhow::Result<String> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait()?.is_some() {
            let output = child.wait_with_output()?;
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            anyhow::ensure!(
                output.status.success(),
                "{}: {}",
                output.status,
                text.trim()
            );
            return Ok(text);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Where a failed test's crustd log is kept after its directory is removed:
/// `<parent of base>/crust-e2e-logs/<base name>.log`.
pub fn kept_log_path(base: &Path) -> PathBuf {
    let name = base
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "crust-e2e".into());
    base.with_file_name("crust-e2e-logs")
        .join(format!("{name}.log"))
}
