//! The floor's containers: bare runc on a busybox rootfs directory, with a
//! config from `runc spec` adjusted to match what the CRI runtimes run
//! (non-terminal `sleep 3600`, new pid/net/ipc/uts/mount namespaces, the same
//! resources as the benchmark's container config, a cgroup under a parent the
//! benchmark owns).

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use nix::errno::Errno;
use nix::sys::wait::waitpid;
use nix::unistd::Pid;
use serde_json::{Value, json};

use crate::{fixtures, processes, requirements};

/// A directory of runc bundles sharing one rootfs, and the runc root they run in.
#[derive(Debug)]
pub struct RuncBundles {
    dir: PathBuf,
    runc: PathBuf,
    runc_root: PathBuf,
    cgroup_parent: String,
    template: Value,
    log: PathBuf,
}

impl RuncBundles {
    /// Unpacks the busybox layer into `<dir>/rootfs` and makes the config
    /// template with `runc spec`.
    pub fn prepare(dir: &Path, cgroup_parent: &str) -> Result<Self> {
        let runc = requirements::find_program("runc").context("runc is not installed")?;
        let rootfs = dir.join("rootfs");
        let runc_root = dir.join("runc");
        let spec_dir = dir.join("spec");
        for d in [&rootfs, &runc_root, &spec_dir, &dir.join("bundles")] {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        let layer = fixtures::busybox_layer()?;
        tar::Archive::new(&layer[..])
            .unpack(&rootfs)
            .context("unpacking the busybox layer")?;
        let out = Command::new(&runc)
            .arg("spec")
            .arg("--bundle")
            .arg(&spec_dir)
            .output()
            .context("running runc spec")?;
        ensure!(
            out.status.success(),
            "runc spec failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read_to_string(spec_dir.join("config.json"))?;
        let mut template: Value = serde_json::from_str(&text).context("parsing runc spec")?;
        adjust(&mut template, &rootfs);
        Ok(Self {
            dir: dir.to_path_buf(),
            runc,
            runc_root,
            cgroup_parent: cgroup_parent.to_string(),
            template,
            log: dir.join("runc.log"),
        })
    }

    /// Writes the bundle of container `id` (its own config, the shared rootfs).
    pub fn write(&self, id: &str) -> Result<PathBuf> {
        let bundle = self.dir.join("bundles").join(id);
        std::fs::create_dir_all(&bundle)?;
        let mut config = self.template.clone();
        config["linux"]["cgroupsPath"] = json!(format!("{}/{id}", self.cgroup_parent));
        config["hostname"] = json!(id);
        std::fs::write(bundle.join("config.json"), config.to_string())?;
        Ok(bundle)
    }

    /// `runc create` of the bundle written for `id`.
    pub fn create(&self, id: &str) -> Result<()> {
        let bundle = self.dir.join("bundles").join(id);
        self.runc(&[
            "create",
            "--bundle",
            &bundle.to_string_lossy(),
            "--pid-file",
            &bundle.join("init.pid").to_string_lossy(),
            id,
        ])
    }

    /// `runc start`.
    pub fn start(&self, id: &str) -> Result<()> {
        self.runc(&["start", id])
    }

    /// What a shim does to stop a container: `runc kill KILL`, then wait
    /// for the init process to exit (the benchmark is its subreaper).
    pub fn kill_wait(&self, id: &str) -> Result<()> {
        let pid_file = self.dir.join("bundles").join(id).join("init.pid");
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .with_context(|| format!("reading {}", pid_file.display()))?
            .trim()
            .parse()
            .context("parsing init.pid")?;
        self.runc(&["kill", id, "KILL"])?;
        reap(pid)
    }

    /// `runc delete` of a container that has exited.
    pub fn delete(&self, id: &str) -> Result<()> {
        self.runc(&["delete", id])
    }

    /// `runc delete -f` of every container still in the runc root.
    pub fn delete_all(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let ids: Vec<String> = std::fs::read_dir(&self.runc_root)
            .map(|e| {
                e.flatten()
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
        for id in ids {
            if let Err(e) = self.runc(&["delete", "-f", &id]) {
                problems.push(format!("runc delete -f {id}: {e:#}"));
            }
        }
        problems
    }

    fn runc(&self, args: &[&str]) -> Result<()> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let status = Command::new(&self.runc)
            .arg("--root")
            .arg(&self.runc_root)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .status()
            .with_context(|| format!("running runc {}", args.join(" ")))?;
        if !status.success() {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(5).collect();
            bail!("runc {} failed ({status}): {:?}", args.join(" "), tail);
        }
        Ok(())
    }
}

/// Waits for `pid` to exit: reaps it if it is our child, else polls until it
/// is gone or a zombie (up to 10 s).
fn reap(pid: i32) -> Result<()> {
    match waitpid(Pid::from_raw(pid), None) {
        Ok(_) => Ok(()),
        Err(Errno::ECHILD) => {
            let deadline = Instant::now() + Duration::from_secs(10);
            while processes::is_alive(pid) {
                ensure!(Instant::now() < deadline, "pid {pid} did not exit");
                std::thread::sleep(Duration::from_millis(1));
            }
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("waiting for pid {pid}")),
    }
}

/// Adjusts `runc spec`'s default to the benchmark's container: non-terminal
/// `sleep 3600`, writable rootfs at `rootfs`, the resources and OOM score of
/// the benchmark's ContainerConfig.
fn adjust(spec: &mut Value, rootfs: &Path) {
    spec["process"]["terminal"] = json!(false);
    spec["process"]["args"] = json!(["sleep", "3600"]);
    spec["process"]["oomScoreAdj"] = json!(999);
    spec["root"] = json!({ "path": rootfs, "readonly": false });
    spec["linux"]["resources"]["memory"] = json!({ "limit": 128 * 1024 * 1024 });
    spec["linux"]["resources"]["cpu"] =
        json!({ "shares": 102, "quota": 50_000, "period": 100_000 });
}
