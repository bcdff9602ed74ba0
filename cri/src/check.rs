//! `crustd check`: the preflight an operator runs on a node before and after
//! installing crust. One line per fact (ok, warn or fail); any fail makes
//! the exit code non-zero.

use std::fmt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use crust_runtime::sys::preflight::{self, CgroupLayout};

use crate::config::Config;

/// How one fact bears on running crust here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// As crust needs it.
    Ok,
    /// crust runs, but something pods may ask for will not work.
    Warn,
    /// crust cannot run (or kubelet cannot use it) until this is fixed.
    Fail,
}

/// One line of the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// The verdict.
    pub verdict: Verdict,
    /// What the line is about.
    pub subject: String,
    /// What was seen, and for a warn or fail what to do.
    pub detail: String,
}

impl Finding {
    fn new(verdict: Verdict, subject: impl Into<String>, detail: impl Into<String>) -> Self {
        Finding {
            verdict,
            subject: subject.into(),
            detail: detail.into(),
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = match self.verdict {
            Verdict::Ok => "ok",
            Verdict::Warn => "warn",
            Verdict::Fail => "fail",
        };
        write!(f, "{v:<5}{:<22}{}", self.subject, self.detail)
    }
}

/// Below this much free space under the root directory, check fails.
const DISK_FAIL: u64 = 1 << 30;
/// Below this much, it warns.
const DISK_WARN: u64 = 10 << 30;

/// Runs every check against the config at `config_path` (the embedded
/// defaults when it does not exist), prints the report and returns the
/// process's exit code.
pub fn run(config_path: &Path) -> i32 {
    let (cfg, config_line) = match Config::load(config_path) {
        Ok(cfg) if config_path.exists() => (
            cfg,
            Finding::new(Verdict::Ok, "config", config_path.display().to_string()),
        ),
        Ok(cfg) => (
            cfg,
            Finding::new(
                Verdict::Ok,
                "config",
                format!(
                    "{} does not exist: the embedded defaults apply",
                    config_path.display()
                ),
            ),
        ),
        Err(e) => {
            let line = Finding::new(Verdict::Fail, "config", format!("{e:#}"));
            println!("{line}");
            return 1;
        }
    };
    let mut findings = vec![config_line];
    findings.extend(kernel());
    findings.extend(mount_features(&cfg.root));
    findings.push(cgroups());
    findings.extend(handlers(&cfg));
    findings.push(shim(&cfg));
    findings.push(network(&cfg));
    findings.push(socket(&cfg.socket));
    findings.push(oom_score_adj());
    findings.push(disk(&cfg.root));
    for f in &findings {
        println!("{f}");
    }
    let count = |v| findings.iter().filter(|f| f.verdict == v).count();
    let fails = count(Verdict::Fail);
    println!(
        "{} ok, {} warnings, {fails} failures",
        count(Verdict::Ok),
        count(Verdict::Warn)
    );
    i32::from(fails > 0)
}

/// The kernel's release and the features crust uses.
fn kernel() -> Vec<Finding> {
    use Verdict::*;
    let release = preflight::kernel_release();
    let release_line = match preflight::kernel_version(&release) {
        Some(v) if v >= (5, 12) => Finding::new(Ok, "kernel", release),
        Some(v) if v >= (5, 3) => Finding::new(
            Warn,
            "kernel",
            format!("{release}: before 5.12 there are no idmapped or recursive read-only mounts"),
        ),
        Some(_) => Finding::new(
            Fail,
            "kernel",
            format!("{release}: crust needs 5.3 or later (pidfd_open)"),
        ),
        None => Finding::new(Warn, "kernel", format!("{release}: version not understood")),
    };
    let overlay = if preflight::filesystem_listed("overlay") {
        Finding::new(Ok, "overlayfs", "in /proc/filesystems")
    } else {
        Finding::new(
            Fail,
            "overlayfs",
            "not in /proc/filesystems: load it (modprobe overlay) and add it to /etc/modules",
        )
    };
    let pidfd = match preflight::pidfd_supported() {
        Result::Ok(()) => Finding::new(Ok, "pidfd", "pidfd_open works"),
        Err(e) => Finding::new(
            Fail,
            "pidfd",
            format!("{e:#}: crust needs Linux 5.3 or later"),
        ),
    };
    let nsfs = if preflight::nsfs_supported() {
        Finding::new(Ok, "nsfs", "namespaces can be pinned by bind mounts")
    } else {
        Finding::new(
            Fail,
            "nsfs",
            "/proc/self/ns/net is not on nsfs: pod namespaces cannot be pinned",
        )
    };
    vec![release_line, overlay, pidfd, nsfs]
}

/// The mount features pods may ask for, probed where the layers live.
fn mount_features(root: &Path) -> Vec<Finding> {
    use Verdict::*;
    let idmap = match preflight::idmapped_mounts(root) {
        Result::Ok(()) => Finding::new(
            Ok,
            "idmapped mounts",
            format!("on {}", preflight::existing_ancestor(root).display()),
        ),
        Err(e) => Finding::new(
            Warn,
            "idmapped mounts",
            format!("{e:#}: pods with hostUsers: false are refused"),
        ),
    };
    let rro = if preflight::recursive_read_only_mounts() {
        Finding::new(Ok, "recursive read-only", "mount_setattr works")
    } else {
        Finding::new(
            Warn,
            "recursive read-only",
            "mount_setattr is not available: recursive read-only mounts are refused",
        )
    };
    vec![idmap, rro]
}

/// The cgroup layout, and whether the controllers kubelet's limits need are there.
fn cgroups() -> Finding {
    let (layout, controllers) = preflight::cgroup_layout();
    let layout = match layout {
        CgroupLayout::Unified => "v2 (unified)",
        CgroupLayout::Hybrid => "v1 with cgroup2 at /sys/fs/cgroup/unified (hybrid)",
        CgroupLayout::Legacy => "v1",
    };
    let has = |c: &str| controllers.iter().any(|x| x == c);
    let listed = controllers.join(" ");
    let required: Vec<&str> = ["cpu", "memory", "pids"]
        .into_iter()
        .filter(|c| !has(c))
        .collect();
    if !required.is_empty() {
        return Finding::new(
            Verdict::Fail,
            "cgroups",
            format!(
                "{layout}, controllers {listed}: no {} controller, which kubelet's limits need",
                required.join(", ")
            ),
        );
    }
    let optional: Vec<&str> = ["cpuset", "hugetlb"]
        .into_iter()
        .filter(|c| !has(c))
        .collect();
    if optional.is_empty() {
        Finding::new(
            Verdict::Ok,
            "cgroups",
            format!("{layout}, controllers {listed}"),
        )
    } else {
        Finding::new(
            Verdict::Warn,
            "cgroups",
            format!(
                "{layout}, controllers {listed}: no {}, so those limits are dropped",
                optional.join(", ")
            ),
        )
    }
}

/// Each runtime handler's binary, probed as crustd probes it at start.
fn handlers(cfg: &Config) -> Vec<Finding> {
    let mut out = Vec::new();
    for spec in cfg.handlers() {
        let default = spec.name == cfg.runtime.default_runtime;
        let subject = format!("runtime {}", spec.name);
        let probe = crust_runtime::sys::oci_probe::probe(&spec);
        out.push(match probe.usable {
            Ok(()) => Finding::new(
                Verdict::Ok,
                subject,
                format!(
                    "{}: {}{}",
                    spec.binary.display(),
                    probe.version,
                    if default { " (default)" } else { "" }
                ),
            ),
            Err(why) => Finding::new(
                if default {
                    Verdict::Fail
                } else {
                    Verdict::Warn
                },
                subject,
                if default {
                    format!("{why}; it is the default handler: no pod can run")
                } else {
                    format!("{why}; pods of this RuntimeClass are refused")
                },
            ),
        });
    }
    out
}

/// crust-shim, found as crustd finds it.
fn shim(cfg: &Config) -> Finding {
    match cfg.shim_path() {
        Ok(p) => Finding::new(Verdict::Ok, "crust-shim", p.display().to_string()),
        Err(e) => Finding::new(Verdict::Fail, "crust-shim", format!("{e:#}")),
    }
}

/// The pod network, judged by the readiness test Status reports as NetworkReady.
fn network(cfg: &Config) -> Finding {
    let scratch = std::env::temp_dir().join(format!("crustd-check-{}", std::process::id()));
    let verdict = crust_cni::Cni::new(crust_cni::Settings {
        conf_dirs: cfg.cni.conf_dirs.clone(),
        plugin_dirs: cfg.cni.plugin_dirs.clone(),
        cache_dir: scratch.clone(),
    })
    .map_err(|e| format!("{e:#}"))
    .and_then(|cni| {
        cni.status().map_err(|e| e.to_string())?;
        cni.network().map_err(|e| e.to_string())
    });
    let _ = std::fs::remove_dir_all(&scratch);
    match verdict {
        Ok(net) => Finding::new(
            Verdict::Ok,
            "cni",
            format!(
                "network {:?} from {} ({})",
                net.name,
                net.source.display(),
                (0..net.plugins.len())
                    .map(|i| net.plugin_type(i))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        Err(why) => Finding::new(
            Verdict::Fail,
            "cni",
            format!("{why}: pods cannot be networked (NetworkReady=false)"),
        ),
    }
}

/// The socket's directory (root's alone) and, after install, crustd on it.
fn socket(path: &Path) -> Finding {
    use Verdict::*;
    let dir = path.parent().unwrap_or(Path::new("/"));
    let subject = "socket";
    let meta = match std::fs::metadata(dir) {
        Result::Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Finding::new(
                Ok,
                subject,
                format!(
                    "{} does not exist yet: crustd makes it at start",
                    dir.display()
                ),
            );
        }
        Err(e) => return Finding::new(Fail, subject, format!("{}: {e}", dir.display())),
    };
    let mode = meta.permissions().mode() & 0o7777;
    if !meta.is_dir() {
        return Finding::new(
            Fail,
            subject,
            format!("{} is not a directory", dir.display()),
        );
    }
    if meta.uid() != 0 || mode & 0o022 != 0 {
        return Finding::new(
            Fail,
            subject,
            format!(
                "{} (owner uid {}, mode {mode:04o}) must be root's and writable by root alone",
                dir.display(),
                meta.uid()
            ),
        );
    }
    socket_file(path, dir, mode)
}

/// The socket itself, in a directory (of `dir_mode`) fit for it.
fn socket_file(path: &Path, dir: &Path, dir_mode: u32) -> Finding {
    use Verdict::*;
    let subject = "socket";
    match std::fs::metadata(path) {
        Result::Ok(m) if m.file_type().is_socket() => {
            let mode = m.permissions().mode() & 0o777;
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                Finding::new(
                    Ok,
                    subject,
                    format!("{} (mode {mode:04o}): crustd is serving", path.display()),
                )
            } else {
                Finding::new(
                    Warn,
                    subject,
                    format!(
                        "{}: nothing answers (crustd is not running; it replaces the socket at start)",
                        path.display()
                    ),
                )
            }
        }
        Result::Ok(_) => Finding::new(
            Fail,
            subject,
            format!("{} exists and is not a socket", path.display()),
        ),
        Err(_) => Finding::new(
            Ok,
            subject,
            format!(
                "{} (mode {dir_mode:04o}); {} is made when crustd starts",
                dir.display(),
                path.display()
            ),
        ),
    }
}

/// Whether kubelet's oom_score_adj for containers holds as asked.
fn oom_score_adj() -> Finding {
    if preflight::may_lower_oom_score_adj() {
        Finding::new(
            Verdict::Ok,
            "oom_score_adj",
            "CAP_SYS_RESOURCE held: containers get the oom_score_adj kubelet asks for",
        )
    } else {
        Finding::new(
            Verdict::Warn,
            "oom_score_adj",
            format!(
                "no CAP_SYS_RESOURCE: an oom_score_adj below crustd's own ({}) is raised to it",
                preflight::own_oom_score_adj()
            ),
        )
    }
}

/// Free space where images and writable layers go.
fn disk(root: &Path) -> Finding {
    let gib = |b: u64| b as f64 / f64::from(1u32 << 30);
    match preflight::free_space(root) {
        Ok((space, at)) => {
            let detail = format!(
                "{}: {:.1} GiB free of {:.1} GiB (on {})",
                root.display(),
                gib(space.available),
                gib(space.total),
                at.display()
            );
            let verdict = if space.available < DISK_FAIL {
                Verdict::Fail
            } else if space.available < DISK_WARN {
                Verdict::Warn
            } else {
                Verdict::Ok
            };
            Finding::new(verdict, "disk", detail)
        }
        Err(e) => Finding::new(Verdict::Fail, "disk", format!("{e:#}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_line_up() {
        let f = Finding::new(Verdict::Warn, "cgroups", "no hugetlb");
        assert_eq!(f.to_string(), format!("warn {:<22}no hugetlb", "cgroups"));
    }

    #[test]
    fn a_missing_socket_directory_is_made_at_start() {
        let f = socket(Path::new("/nonexistent-crust-check/crust.sock"));
        assert_eq!(f.verdict, Verdict::Ok, "{f}");
    }

    #[test]
    fn a_socket_path_that_is_a_file_fails() {
        let dir = std::env::temp_dir().join(format!("crust-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("crust.sock");
        std::fs::write(&file, b"").unwrap();
        let f = socket_file(&file, &dir, 0o755);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(f.verdict, Verdict::Fail, "{f}");
        assert!(f.detail.contains("is not a socket"), "{f}");
        let f = socket_file(&dir.join("absent.sock"), &dir, 0o755);
        assert_eq!(f.verdict, Verdict::Ok, "{f}");
    }
}
