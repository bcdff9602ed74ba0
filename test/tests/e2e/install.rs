//! Installing crust on a node: `crustd install` and `crustd uninstall` into a
//! temporary host root whose crust socket leads to a real crustd, with a
//! stub `systemctl` that records its calls (`CRUST_INSTALL_SYSTEMCTL`: no
//! test can reach a real systemd); the kubelet switch on kubeadm's sample
//! files; `crustd wait`; `crustd check` on this machine and its fail cases.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, Result, bail, ensure};
use crust_e2e::{TestEnv, binaries, requirements, run, unique};

/// The files install adds to a host, with their modes.
const INSTALLED: [(&str, u32); 5] = [
    ("etc/crictl.yaml", 0o644),
    ("etc/crust/config.toml", 0o644),
    ("etc/systemd/system/crust.service", 0o644),
    ("usr/local/bin/crust-shim", 0o755),
    ("usr/local/bin/crustd", 0o755),
];

/// What a host root holds before install: systemd's marker, runc, a CNI
/// plugin and some state of an earlier crust.
const HOST_FILES: [(&str, &str); 3] = [
    ("usr/sbin/runc", "#!/bin/sh\n"),
    ("opt/cni/bin/loopback", "#!/bin/sh\n"),
    ("var/lib/crust/content/keep", "an image blob\n"),
];

/// The host's crust socket, a link to the test's crustd.
const SOCKET: &str = "run/crust/crust.sock";

/// kubeadm's KubeletConfiguration, as `kubeadm init` writes it.
const KUBELET_CONFIG: &str = "\
apiVersion: kubelet.config.k8s.io/v1beta1
authentication:
  anonymous:
    enabled: false
  webhook:
    cacheTTL: 0s
    enabled: true
cgroupDriver: systemd
clusterDNS:
- 10.96.0.10
clusterDomain: cluster.local
containerRuntimeEndpoint: unix:///var/run/containerd/containerd.sock
kind: KubeletConfiguration
rotateCertificates: true
staticPodPath: /etc/kubernetes/manifests
";

/// kubeadm's flags file.
const KUBEADM_FLAGS: &str = "KUBELET_KUBEADM_ARGS=\"--container-runtime-endpoint=unix:///var/run/containerd/containerd.sock --pod-infra-container-image=registry.k8s.io/pause:3.10\"\n";

/// A temporary host root, the crust binaries install copies (debug info
/// stripped: a debug crustd is some 200 MB) and the stub systemctl.
struct Host {
    base: PathBuf,
    root: PathBuf,
    bin: PathBuf,
    stubs: PathBuf,
}

impl Host {
    fn new(name: &str) -> Result<Host> {
        let base = std::env::temp_dir().join(format!("crust-install-{name}-{}", unique::suffix()));
        let root = base.join("root");
        let bin = base.join("bin");
        let stubs = base.join("stubs");
        let host = Host {
            base,
            root,
            bin,
            stubs,
        };
        std::fs::create_dir_all(host.root.join("run/systemd/system"))?;
        for (path, content) in HOST_FILES {
            write(&host.root.join(path), content, 0o755)?;
        }
        std::fs::create_dir_all(&host.bin)?;
        let built = binaries::locate()?;
        for (from, name) in [(&built.crustd, "crustd"), (&built.shim, "crust-shim")] {
            let out = Command::new("objcopy")
                .arg("--strip-debug")
                .arg(from)
                .arg(host.bin.join(name))
                .output()
                .context("running objcopy (binutils)")?;
            ensure!(
                out.status.success(),
                "objcopy {}: {}",
                from.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        write(
            &host.stubs.join("systemctl"),
            &format!(
                "#!/bin/sh\necho \"$*\" >> {}\n",
                host.base.join("systemctl.log").display()
            ),
            0o755,
        )?;
        Ok(host)
    }

    /// Runs `crustd <args> --host-root <root>` with the stub as systemctl.
    fn crustd(&self, args: &[&str], env: &[(&str, &str)]) -> Result<Output> {
        Command::new(self.bin.join("crustd"))
            .args(args)
            .arg("--host-root")
            .arg(&self.root)
            .env("PATH", requirements::child_path())
            .env("CRUST_INSTALL_SYSTEMCTL", self.stubs.join("systemctl"))
            .envs(env.iter().copied())
            .output()
            .context("running crustd")
    }

    /// Makes the host's crust socket lead to `env`'s crustd, as if
    /// crust.service had started: install waits for it after a (re)start.
    fn serve_with(&self, env: &TestEnv) -> Result<()> {
        let socket = self.root.join("run/crust/crust.sock");
        std::fs::create_dir_all(socket.parent().context("parent")?)?;
        std::os::unix::fs::symlink(&env.daemon.paths().socket, &socket)?;
        Ok(())
    }

    /// Runs crustd and fails unless it succeeded; its stdout.
    fn ok(&self, args: &[&str], env: &[(&str, &str)]) -> Result<String> {
        let out = self.crustd(args, env)?;
        ensure!(
            out.status.success(),
            "crustd {args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs crustd and fails unless it failed; its stderr.
    fn refused(&self, args: &[&str]) -> Result<String> {
        let out = self.crustd(args, &[])?;
        ensure!(
            !out.status.success(),
            "crustd {args:?} succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        Ok(String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// The systemctl calls since the last look.
    fn calls(&self) -> Vec<String> {
        let log = self.base.join("systemctl.log");
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let _ = std::fs::remove_file(&log);
        text.lines().map(str::to_string).collect()
    }

    /// Every file under the host root, by path.
    fn files(&self) -> Result<BTreeMap<String, FileState>> {
        let mut out = BTreeMap::new();
        let mut dirs = vec![self.root.clone()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir)? {
                let path = entry?.path();
                let meta = std::fs::symlink_metadata(&path)?;
                if meta.is_dir() {
                    dirs.push(path);
                    continue;
                }
                let rel = path.strip_prefix(&self.root)?.display().to_string();
                let content = if meta.file_type().is_file() {
                    std::fs::read(&path)?
                } else {
                    Vec::new()
                };
                out.insert(
                    rel,
                    (
                        meta.ino(),
                        meta.mtime_nsec() + meta.mtime() * 1_000_000_000,
                        meta.permissions().mode() & 0o7777,
                        content,
                    ),
                );
            }
        }
        Ok(out)
    }

    /// The files install added, by path, with their modes and content.
    fn added(&self) -> Result<BTreeMap<String, (u32, Vec<u8>)>> {
        Ok(self
            .files()?
            .into_iter()
            .filter(|(p, _)| !HOST_FILES.iter().any(|(h, _)| h == p) && p != SOCKET)
            .map(|(p, (_, _, mode, content))| (p, (mode, content)))
            .collect())
    }

    /// What install writes, as a map like [`Host::added`].
    fn expected(&self) -> Result<BTreeMap<String, (u32, Vec<u8>)>> {
        let manifests = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests");
        let default_config = Command::new(self.bin.join("crustd"))
            .args(["config", "default"])
            .output()?
            .stdout;
        let crictl = b"# Written by crustd install: point crictl at crust.\n\
            runtime-endpoint: unix:///run/crust/crust.sock\n\
            image-endpoint: unix:///run/crust/crust.sock\n\
            timeout: 10\n"
            .to_vec();
        let content = |path: &str| -> Result<Vec<u8>> {
            Ok(match path {
                "etc/crictl.yaml" => crictl.clone(),
                "etc/crust/config.toml" => default_config.clone(),
                "etc/systemd/system/crust.service" => {
                    std::fs::read(manifests.join("crust.service"))?
                }
                p => std::fs::read(self.bin.join(Path::new(p).file_name().context("name")?))?,
            })
        };
        INSTALLED
            .iter()
            .map(|(p, mode)| Ok((p.to_string(), (*mode, content(p)?))))
            .collect()
    }
}

/// One file's inode, mtime in nanoseconds, mode and content: any write
/// changes one of them.
type FileState = (u64, i64, u32, Vec<u8>);

impl Drop for Host {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

fn write(path: &Path, content: &str, mode: u32) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, content)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Skips (fails under CI) where the end-to-end tests cannot run.
fn cannot_run(test: &str) -> bool {
    match requirements::skip_reason() {
        Some(reason) => {
            requirements::note_skip(test, &reason);
            true
        }
        None => false,
    }
}

/// Runs a test body that needs no crustd, failing the test on error.
fn check(test: &str, body: impl FnOnce() -> Result<()>) {
    if cannot_run(test) {
        return;
    }
    if let Err(e) = body() {
        panic!("{test} failed: {e:?}");
    }
}

/// The calls of a run that finds crust installed and running.
const NOTHING_TO_DO: [&str; 3] = [
    "--version",
    "is-enabled --quiet crust.service",
    "is-active --quiet crust.service",
];

#[test]
fn install_is_idempotent_upgrades_and_uninstalls_cleanly() {
    run(
        "install_is_idempotent_upgrades_and_uninstalls_cleanly",
        install_lifecycle,
    );
}

/// A first install writes exactly the expected files and enables and
/// restarts the unit; a second changes nothing; a run cut short (its mark
/// left) is finished by the next; a changed binary (an upgrade) is replaced
/// by rename and restarts crustd without reloading systemd; uninstall is
/// refused while crust has pods, then removes what install added and
/// nothing else, twice.
async fn install_lifecycle(env: &mut TestEnv) -> Result<()> {
    let host = Host::new("lifecycle")?;
    host.serve_with(env)?;
    host.ok(&["install"], &[])?;
    ensure!(
        host.added()? == host.expected()?,
        "install wrote {:?}, expected {:?}",
        host.added()?.keys().collect::<Vec<_>>(),
        INSTALLED
    );
    ensure_calls(
        &host,
        &[
            "--version",
            "daemon-reload",
            "enable crust.service",
            "restart crust.service",
        ],
    )?;

    let before = host.files()?;
    let out = host.ok(&["install"], &[])?;
    ensure!(
        host.files()? == before,
        "a second install changed files:\n{out}"
    );
    ensure_calls(&host, &NOTHING_TO_DO)?;

    write(&host.root.join("run/crust.restart-pending"), "", 0o644)?;
    host.ok(&["install"], &[])?;
    ensure_calls(
        &host,
        &[
            "--version",
            "daemon-reload",
            "enable crust.service",
            "restart crust.service",
        ],
    )?;
    ensure!(
        !host.root.join("run/crust.restart-pending").exists(),
        "the restart owed was made, but its mark is left"
    );

    let shim = host.root.join("usr/local/bin/crust-shim");
    write(&shim, "an older crust-shim\n", 0o755)?;
    let old_inode = std::fs::metadata(&shim)?.ino();
    let out = host.ok(&["install"], &[])?;
    ensure!(
        out.contains("replaced /usr/local/bin/crust-shim"),
        "upgrade said:\n{out}"
    );
    ensure!(
        host.added()? == host.expected()?,
        "the upgrade did not restore the files"
    );
    ensure!(
        std::fs::metadata(&shim)?.ino() != old_inode,
        "crust-shim was rewritten in place, under any shim still running it"
    );
    ensure_calls(
        &host,
        &[
            "--version",
            "is-enabled --quiet crust.service",
            "restart crust.service",
        ],
    )?;

    let record = host.root.join("var/lib/crust/meta/sandboxes/pod.json");
    write(&record, "{}", 0o644)?;
    let before = host.files()?;
    let err = host.refused(&["uninstall"])?;
    ensure!(
        err.contains("crust still has 1 pods") && err.contains("nothing was removed"),
        "uninstall with a pod: {err}"
    );
    ensure!(host.files()? == before, "a refused uninstall changed files");
    ensure_calls(&host, &["--version"])?;
    std::fs::remove_dir_all(host.root.join("var/lib/crust/meta"))?;

    host.ok(&["uninstall"], &[])?;
    ensure_calls(
        &host,
        &["--version", "disable --now crust.service", "daemon-reload"],
    )?;
    ensure!(
        host.added()?.is_empty(),
        "uninstall left {:?}",
        host.added()?.keys().collect::<Vec<_>>()
    );
    let kept: BTreeSet<String> = host.files()?.into_keys().collect();
    let own: BTreeSet<String> = HOST_FILES
        .iter()
        .map(|(p, _)| p.to_string())
        .chain([SOCKET.to_string()])
        .collect();
    ensure!(
        kept == own,
        "uninstall touched the host's own files: {kept:?}"
    );
    ensure!(
        !host.root.join("etc/crust").exists(),
        "/etc/crust is left empty"
    );
    let before = host.files()?;
    host.ok(&["uninstall"], &[])?;
    ensure!(host.files()? == before, "a second uninstall changed files");
    ensure_calls(&host, &["--version"])?;
    Ok(())
}

#[test]
fn an_existing_config_is_kept_and_a_bad_one_refused() {
    run(
        "an_existing_config_is_kept_and_a_bad_one_refused",
        existing_config,
    );
}

/// An operator's config survives install and uninstall; an invalid one makes
/// install refuse before writing anything.
async fn existing_config(env: &mut TestEnv) -> Result<()> {
    let host = Host::new("config")?;
    host.serve_with(env)?;
    let config = host.root.join("etc/crust/config.toml");
    write(&config, "socket = \"relative.sock\"\n", 0o644)?;
    let before = host.files()?;
    let err = host.refused(&["install"])?;
    ensure!(
        err.contains("/etc/crust/config.toml is not a valid crust config")
            && err.contains("socket must be an absolute path"),
        "refusal: {err}"
    );
    ensure!(host.files()? == before, "a refused install wrote files");
    ensure_calls(&host, &["--version"])?;

    let mine = "log_level = \"debug\"\n";
    write(&config, mine, 0o600)?;
    let out = host.ok(&["install"], &[])?;
    ensure!(
        out.contains("kept the existing /etc/crust/config.toml"),
        "install said:\n{out}"
    );
    ensure!(
        std::fs::read_to_string(&config)? == mine,
        "the config was changed"
    );
    host.calls();
    let out = host.ok(&["uninstall"], &[])?;
    ensure!(
        std::fs::read_to_string(&config)? == mine,
        "uninstall removed the operator's config:\n{out}"
    );
    ensure!(
        out.contains("kept /etc/crust/config.toml"),
        "uninstall said:\n{out}"
    );
    Ok(())
}

#[test]
fn install_refuses_hosts_it_cannot_serve() {
    check(
        "install::install_refuses_hosts_it_cannot_serve",
        refused_hosts,
    );
}

/// No systemd, a systemctl that cannot run, no runc, no CNI plugins: each is
/// refused with what to do, and nothing is written.
fn refused_hosts() -> Result<()> {
    let cases: [(&str, &str, &str, &[&str]); 4] = [
        (
            "run/systemd/system",
            "the host does not run systemd",
            "no-systemd",
            &[],
        ),
        (
            "stubs/systemctl",
            "cannot run the host's systemctl",
            "no-systemctl",
            &[],
        ),
        (
            "usr/sbin/runc",
            "apt-get install runc",
            "no-runc",
            &["--version"],
        ),
        (
            "opt/cni/bin/loopback",
            "apt-get install containernetworking-plugins",
            "no-cni",
            &["--version"],
        ),
    ];
    for (missing, says, name, calls) in cases {
        let host = Host::new(name)?;
        let path = match missing.strip_prefix("stubs/") {
            Some(stub) => host.stubs.join(stub),
            None => host.root.join(missing),
        };
        if path.is_dir() {
            std::fs::remove_dir(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
        let before = host.files()?;
        let err = host.refused(&["install"])?;
        ensure!(
            err.contains(says) && err.contains("nothing was installed"),
            "without {missing}: {err}"
        );
        ensure!(
            host.files()? == before,
            "without {missing}, files were written"
        );
        ensure_calls(&host, calls)?;
    }
    Ok(())
}

#[test]
fn switching_kubelet_rewrites_its_files_once_with_a_backup() {
    run(
        "switching_kubelet_rewrites_its_files_once_with_a_backup",
        switch_kubelet,
    );
}

/// With crust serving, `CRUST_SWITCH_KUBELET=true` points kubeadm's config
/// and flags file at it, keeps the originals, and restarts kubelet; a
/// second run (the installer pod, now on crust) changes nothing. Uninstall
/// is refused until kubelet is pointed back.
async fn switch_kubelet(env: &mut TestEnv) -> Result<()> {
    let host = Host::new("kubelet")?;
    host.serve_with(env)?;
    let config = host.root.join("var/lib/kubelet/config.yaml");
    let flags = host.root.join("var/lib/kubelet/kubeadm-flags.env");
    write(&config, KUBELET_CONFIG, 0o644)?;
    write(&flags, KUBEADM_FLAGS, 0o644)?;

    let switch = [("CRUST_SWITCH_KUBELET", "true")];
    let out = host.ok(&["install"], &switch)?;
    let crust = "unix:///run/crust/crust.sock";
    let containerd = "unix:///var/run/containerd/containerd.sock";
    ensure!(
        std::fs::read_to_string(&config)? == KUBELET_CONFIG.replace(containerd, crust),
        "config.yaml is now:\n{}",
        std::fs::read_to_string(&config)?
    );
    ensure!(
        std::fs::read_to_string(&flags)? == KUBEADM_FLAGS.replace(containerd, crust),
        "kubeadm-flags.env is now:\n{}",
        std::fs::read_to_string(&flags)?
    );
    for (file, original) in [(&config, KUBELET_CONFIG), (&flags, KUBEADM_FLAGS)] {
        let backup = PathBuf::from(format!("{}.before-crust", file.display()));
        ensure!(
            std::fs::read_to_string(&backup)? == original,
            "{} does not hold the original",
            backup.display()
        );
    }
    let calls = host.calls();
    ensure!(
        calls.last().map(String::as_str) == Some("restart kubelet.service"),
        "systemctl calls: {calls:?}\n{out}"
    );

    let before = host.files()?;
    let out = host.ok(&["install"], &switch)?;
    ensure!(
        out.contains("kubelet already uses crust"),
        "second run said:\n{out}"
    );
    ensure!(host.files()? == before, "the second switch changed files");
    ensure_calls(&host, &NOTHING_TO_DO)?;

    let err = host.refused(&["uninstall"])?;
    ensure!(err.contains("kubelet still uses crust"), "uninstall: {err}");
    ensure!(host.files()? == before, "a refused uninstall changed files");
    for file in [&config, &flags] {
        std::fs::rename(format!("{}.before-crust", file.display()), file)?;
    }
    host.ok(&["uninstall"], &[])?;
    ensure!(
        std::fs::read_to_string(&config)? == KUBELET_CONFIG,
        "kubelet's config is not the original after uninstall"
    );
    Ok(())
}

#[test]
fn wait_stays_until_sigterm() {
    check("install::wait_stays_until_sigterm", wait_until_sigterm);
}

/// `crustd wait`, the DaemonSet's container once its init container has
/// installed crust: it stays, and exits 0 on SIGTERM.
fn wait_until_sigterm() -> Result<()> {
    let bins = binaries::locate()?;
    let mut child = Command::new(&bins.crustd).arg("wait").spawn()?;
    std::thread::sleep(std::time::Duration::from_millis(500));
    if let Some(status) = child.try_wait()? {
        bail!("crustd wait did not stay: it exited ({status})");
    }
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id())?);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
    let status = child.wait()?;
    ensure!(status.success(), "crustd wait ended {status} on SIGTERM");
    Ok(())
}

/// Fails unless the stub recorded exactly `expected` since the last look.
fn ensure_calls(host: &Host, expected: &[&str]) -> Result<()> {
    let calls = host.calls();
    if calls != expected {
        bail!("systemctl was called with {calls:?}, expected {expected:?}");
    }
    Ok(())
}

#[test]
fn check_passes_here_with_the_shipped_network() {
    check(
        "install::check_passes_here_with_the_shipped_network",
        check_passes,
    );
}

/// `crustd check` with the shipped network config: no fail line, exit 0,
/// a line for every fact.
fn check_passes() -> Result<()> {
    let host = Host::new("check")?;
    let conf = host.base.join("net.d");
    std::fs::create_dir_all(&conf)?;
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/cni/10-crust.conflist"),
        conf.join("10-crust.conflist"),
    )?;
    let config = host.base.join("config.toml");
    write(
        &config,
        &format!(
            "root = \"{}\"\nstate = \"{}\"\nsocket = \"{}\"\n[cni]\nconf_dirs = [\"{}\"]\n",
            host.base.join("lib").display(),
            host.base.join("run").display(),
            host.base.join("run/crust.sock").display(),
            conf.display()
        ),
        0o644,
    )?;
    let out = check_output(&host, &config)?;
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("crustd check:\n{text}");
    ensure!(out.status.success(), "crustd check failed:\n{text}");
    for subject in [
        "kernel",
        "overlayfs",
        "pidfd",
        "nsfs",
        "idmapped mounts",
        "cgroups",
        "runtime runc",
        "crust-shim",
        "cni",
        "socket",
        "oom_score_adj",
        "disk",
    ] {
        ensure!(
            text.lines().any(|l| {
                let l = l.trim_start_matches("ok").trim_start_matches("warn");
                l.trim_start().starts_with(subject)
            }),
            "no ok or warn line for {subject}:\n{text}"
        );
    }
    ensure!(
        text.contains("network \"crust\""),
        "the network line does not name the shipped network:\n{text}"
    );
    Ok(())
}

#[test]
fn check_fails_without_runc_or_a_network() {
    check(
        "install::check_fails_without_runc_or_a_network",
        check_fails,
    );
}

/// A runc that is nowhere and an empty network config directory: both fail
/// lines, and the exit code says so.
fn check_fails() -> Result<()> {
    let host = Host::new("check-fails")?;
    let conf = host.base.join("empty-net.d");
    std::fs::create_dir_all(&conf)?;
    let config = host.base.join("config.toml");
    write(
        &config,
        &format!(
            "root = \"{}\"\n[cni]\nconf_dirs = [\"{}\"]\n[runtimes.runc]\nbinary = \"crust-test-no-such-runc\"\n",
            host.base.join("lib").display(),
            conf.display()
        ),
        0o644,
    )?;
    let out = check_output(&host, &config)?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(!out.status.success(), "crustd check passed:\n{text}");
    for (start, says) in [
        ("fail runtime runc", "crust-test-no-such-runc not found"),
        ("fail cni", "no CNI network config"),
    ] {
        ensure!(
            text.lines()
                .any(|l| l.starts_with(start) && l.contains(says)),
            "no line {start:?} saying {says:?}:\n{text}"
        );
    }
    Ok(())
}

fn check_output(host: &Host, config: &Path) -> Result<Output> {
    Command::new(host.bin.join("crustd"))
        .arg("--config")
        .arg(config)
        .arg("check")
        .env("PATH", requirements::child_path())
        .output()
        .context("running crustd check")
}
