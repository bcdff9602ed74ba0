//! CRI container config + image config → OCI runtime spec, with containerd's
//! defaults: mounts, capabilities, masked and read-only paths, the pod's
//! namespaces and files. Building reads nothing from the machine: what it
//! needs to know of the host comes in as [`HostFacts`], which
//! `crate::sys::facts::probe` reads on a real host and tests make by hand.
//! This module holds the input, [`build`], the process's arguments and
//! environment, and the helpers its parts share.

mod caps;
mod devices;
#[cfg(test)]
mod fixtures;
mod mounts;
mod namespaces;
mod resources;
mod seccomp;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    LinuxBuilder, LinuxDevice, ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};

pub use self::devices::HostDevice;
pub use self::resources::limits;
pub use self::seccomp::ProfileFile;
use super::ResolvedUser;
use super::config::{ContainerConfig, Profile};
use crate::image::ImageConfig;
use crate::sandbox::Sandbox;
use crate::sys::cgroup::CgroupHost;
use crate::{Error, Result};

/// PATH for images that set none.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What the spec builder needs to know about the machine, gathered before
/// it runs: the runtime's own privileges, AppArmor, the cgroup controllers,
/// the host's device nodes, and what is at the paths the request names.
#[derive(Clone, Debug)]
pub struct HostFacts {
    /// The runtime's capability bounding set (bit mask, CAP_CHOWN is bit 0):
    /// nothing outside it can be granted.
    pub bounding_set: u64,
    /// Whether the host enforces AppArmor (a Localhost profile can apply).
    pub apparmor: bool,
    /// Whether SELinux is enabled on the host (a label can apply).
    pub selinux: bool,
    /// Lowest oom_score_adj the runtime may give: its own when it lacks
    /// CAP_SYS_RESOURCE; `None` when it holds it.
    pub min_oom_score_adj: Option<i64>,
    /// What the host's cgroups can enforce: limits of controllers it lacks
    /// are left out.
    pub cgroups: CgroupHost,
    /// Every device node under the host's /dev, which a privileged container
    /// gets; left empty for an unprivileged one.
    pub host_devices: Vec<LinuxDevice>,
    /// What is at each host path the request names as a device.
    pub requested_devices: HashMap<String, HostDevice>,
    /// Each bind mount's host path with its symlinks resolved, or the
    /// system's reason why it cannot be.
    pub mount_sources: HashMap<String, Result<PathBuf, String>>,
    /// The Localhost seccomp profile the request names, as read; `None`
    /// when none is needed (no such profile, a privileged container, or a
    /// relative path, which is refused unread).
    pub seccomp_profile: Option<ProfileFile>,
    /// The pod's hostname file, trimmed: the HOSTNAME of a container whose
    /// pod gives it no hostname (host network). Empty otherwise, or when
    /// the file cannot be read.
    pub hostname_file: String,
}

/// Everything the spec is made from.
pub struct SpecInput<'a> {
    /// Container id.
    pub id: &'a str,
    /// The CRI config.
    pub config: &'a ContainerConfig,
    /// The pod.
    pub sandbox: &'a Sandbox,
    /// The image's config.
    pub image: &'a ImageConfig,
    /// The image's name, for annotations.
    pub image_name: &'a str,
    /// Resolved user.
    pub user: &'a ResolvedUser,
    /// The mounted root filesystem.
    pub rootfs: &'a Path,
    /// Init pid of the TARGET container, when the PID namespace mode is TARGET.
    pub target_pid: Option<i32>,
    /// What the spec needs to know about the machine.
    pub host: &'a HostFacts,
    /// The prepared copies (idmapped or recursively read-only) that stand
    /// in for the sources of the request's mounts, by the mount's index.
    pub staged_mounts: &'a BTreeMap<usize, PathBuf>,
    /// cgroup parent when the pod names none.
    pub default_cgroup_parent: &'a str,
}

/// The hostname a container of `sb` gets: none on the host network (it
/// keeps the node's), else the pod's.
pub(crate) fn pod_hostname(sb: &Sandbox) -> String {
    if sb.config.host_network() {
        String::new()
    } else if sb.hostname.is_empty() {
        sb.config.hostname.clone()
    } else {
        sb.hostname.clone()
    }
}

/// The AppArmor profile the process runs under: a Localhost profile (one
/// already loaded on the node) by name; none for a privileged container or
/// when no profile was asked for. A Localhost profile on a host without
/// AppArmor is refused rather than ignored.
fn apparmor_profile(input: &SpecInput<'_>) -> Result<Option<String>> {
    let sec = &input.config.security;
    match &sec.apparmor {
        Profile::Localhost(name) if !sec.privileged => {
            if !input.host.apparmor {
                return Err(Error::invalid(format!(
                    "AppArmor profile {name:?} was asked for, but AppArmor is not enabled on this host"
                )));
            }
            if name.is_empty() {
                return Err(Error::invalid("an AppArmor Localhost profile needs a name"));
            }
            Ok(Some(name.clone()))
        }
        _ => Ok(None),
    }
}

/// The SELinux labels of the process and of its files, when a label was
/// asked for: the parts given, the usual container defaults
/// (`system_u:system_r:container_t:s0`, files `container_file_t`) for the
/// others. Asked for on a host without SELinux, it is refused rather than
/// ignored.
fn selinux_labels(input: &SpecInput<'_>) -> Result<Option<(String, String)>> {
    let Some(l) = &input.config.security.selinux else {
        return Ok(None);
    };
    if !input.host.selinux {
        return Err(Error::invalid(format!(
            "selinux_options {l} were asked for, but SELinux is not enabled on this host"
        )));
    }
    let or = |v: &str, default: &str| {
        if v.is_empty() {
            default.to_string()
        } else {
            v.to_string()
        }
    };
    let (user, level) = (or(&l.user, "system_u"), or(&l.level, "s0"));
    let process = format!(
        "{user}:{}:{}:{level}",
        or(&l.role, "system_r"),
        or(&l.typ, "container_t")
    );
    Ok(Some((
        process,
        format!("{user}:object_r:container_file_t:{level}"),
    )))
}

/// The process arguments kubelet expects: `command` replaces the image's
/// entrypoint (and then the image's Cmd is dropped), `args` replace its Cmd.
pub fn process_args(config: &ContainerConfig, image: &ImageConfig) -> Result<Vec<String>> {
    let mut args = if config.command.is_empty() {
        image.entrypoint.clone()
    } else {
        config.command.clone()
    };
    if !config.args.is_empty() {
        args.extend(config.args.iter().cloned());
    } else if config.command.is_empty() {
        args.extend(image.cmd.iter().cloned());
    }
    if args.is_empty() {
        return Err(Error::invalid(
            "no command specified: neither the container config nor the image gives one",
        ));
    }
    Ok(args)
}

/// The environment: PATH default, the image's, HOSTNAME, then the config's; a later
/// value replaces an earlier one with the same name in place.
pub fn environment(config: &ContainerConfig, image: &ImageConfig, hostname: &str) -> Vec<String> {
    let mut order: Vec<String> = Vec::new();
    let mut values: HashMap<String, String> = HashMap::new();
    let mut set = |entry: String| {
        let key = entry
            .split_once('=')
            .map_or(entry.as_str(), |(k, _)| k)
            .to_string();
        if !values.contains_key(&key) {
            order.push(key.clone());
        }
        values.insert(key, entry);
    };
    if !image.env.iter().any(|e| e.starts_with("PATH=")) {
        set(DEFAULT_PATH.to_string());
    }
    for e in &image.env {
        set(e.clone());
    }
    if !hostname.is_empty() {
        set(format!("HOSTNAME={hostname}"));
    }
    for (k, v) in &config.envs {
        set(format!("{k}={v}"));
    }
    order
        .into_iter()
        .filter_map(|k| values.remove(&k))
        .collect()
}

/// Builds the OCI runtime spec.
pub fn build(input: &SpecInput<'_>) -> Result<Spec> {
    let cfg = input.config;
    let sec = &cfg.security;
    let sb = input.sandbox;
    if sec.privileged && !sb.config.privileged {
        return Err(Error::invalid(
            "a privileged container needs a pod sandbox created with privileged = true",
        ));
    }
    let hostname = pod_hostname(sb);
    let env_hostname = if hostname.is_empty() {
        input.host.hostname_file.clone()
    } else {
        hostname.clone()
    };

    let (capabilities, bounding) = caps::process_capabilities(cfg, input.host.bounding_set)?;

    let cwd = if !cfg.working_dir.is_empty() {
        cfg.working_dir.clone()
    } else if !input.image.working_dir.is_empty() {
        input.image.working_dir.clone()
    } else {
        "/".to_string()
    };
    if !cwd.starts_with('/') {
        return Err(Error::invalid(format!(
            "working directory {cwd:?} must be absolute"
        )));
    }
    let user = UserBuilder::default()
        .uid(input.user.uid)
        .gid(input.user.gid)
        .additional_gids(input.user.additional_gids.clone())
        .build()
        .map_err(internal)?;
    let mut process = ProcessBuilder::default()
        .terminal(cfg.tty)
        .user(user)
        .args(process_args(cfg, input.image)?)
        .env(environment(cfg, input.image, &env_hostname))
        .cwd(cwd)
        .capabilities(capabilities)
        .no_new_privileges(sec.no_new_privs)
        .build()
        .map_err(internal)?;
    process.set_rlimits(None);
    process.set_apparmor_profile(apparmor_profile(input)?);
    let selinux = selinux_labels(input)?;
    if let Some((process_label, _)) = &selinux {
        process.set_selinux_label(Some(process_label.clone()));
    }
    if let Some(adj) =
        resources::oom_score_adj(cfg.resources.oom_score_adj, input.host.min_oom_score_adj)
    {
        process.set_oom_score_adj(Some(adj));
    }

    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces::namespaces(input)?)
        .resources(resources::resources(input)?)
        .cgroups_path(resources::cgroups_path(input))
        .build()
        .map_err(internal)?;
    if let Some([uids, gids]) = namespaces::id_mappings(input)? {
        linux.set_uid_mappings(Some(uids));
        linux.set_gid_mappings(Some(gids));
    }
    linux.set_masked_paths(mounts::masked_paths(sec));
    linux.set_readonly_paths(mounts::readonly_paths(sec));
    let devices = devices::devices(cfg, input.host)?;
    linux.set_devices(if devices.is_empty() {
        None
    } else {
        Some(devices)
    });
    linux.set_seccomp(seccomp::seccomp(
        sec.privileged,
        &sec.seccomp,
        &bounding,
        input.host.seccomp_profile.as_ref(),
    )?);
    if let Some(p) = mounts::rootfs_propagation(cfg) {
        linux.set_rootfs_propagation(Some(p.to_string()));
    }
    if let Some((_, mount_label)) = selinux {
        linux.set_mount_label(Some(mount_label));
    }

    let root = RootBuilder::default()
        .path(input.rootfs.to_path_buf())
        .readonly(sec.readonly_rootfs)
        .build()
        .map_err(internal)?;
    let mut annotations = HashMap::new();
    annotations.insert(
        "io.kubernetes.cri.container-type".into(),
        "container".into(),
    );
    annotations.insert("io.kubernetes.cri.container-name".into(), cfg.name.clone());
    annotations.insert("io.kubernetes.cri.sandbox-id".into(), sb.id.clone());
    annotations.insert(
        "io.kubernetes.cri.sandbox-name".into(),
        sb.config.name.clone(),
    );
    annotations.insert(
        "io.kubernetes.cri.sandbox-namespace".into(),
        sb.config.namespace.clone(),
    );
    annotations.insert(
        "io.kubernetes.cri.sandbox-uid".into(),
        sb.config.uid.clone(),
    );
    annotations.insert(
        "io.kubernetes.cri.image-name".into(),
        input.image_name.to_string(),
    );

    let mut spec = SpecBuilder::default()
        .version("1.0.2-dev")
        .root(root)
        .process(process)
        .mounts(mounts::mounts(input)?)
        .linux(linux)
        .annotations(annotations)
        .build()
        .map_err(internal)?;
    spec.set_hostname(if hostname.is_empty() {
        None
    } else {
        Some(hostname)
    });
    Ok(spec)
}

/// An internal error while assembling the spec (a builder refused a value).
fn internal(e: impl std::fmt::Display) -> Error {
    Error::internal(format!("building the OCI spec: {e}"))
}

#[cfg(test)]
mod tests {
    use oci_spec::runtime::{Capability, LinuxNamespaceType};

    use super::fixtures::{
        FULL_V1, build_facts, build_on_host, build_with, config, facts, image, sandbox,
    };
    use super::*;
    use crate::sandbox::config::NamespaceMode;

    #[test]
    fn an_selinux_label_applies_only_where_selinux_does() {
        let mut c = config();
        c.security.selinux = Some(crate::container::config::SelinuxLabel {
            level: "s0:c1,c2".into(),
            ..Default::default()
        });
        let mut host = facts();
        assert!(matches!(
            build_facts(&c, &sandbox(), &host),
            Err(Error::InvalidArgument(m)) if m.contains("SELinux is not enabled")
        ));
        host.selinux = true;
        let spec = build_facts(&c, &sandbox(), &host).unwrap();
        assert_eq!(
            spec.process().as_ref().unwrap().selinux_label().as_deref(),
            Some("system_u:system_r:container_t:s0:c1,c2")
        );
        assert_eq!(
            spec.linux().as_ref().unwrap().mount_label().as_deref(),
            Some("system_u:object_r:container_file_t:s0:c1,c2")
        );
        c.security.selinux = None;
        let spec = build_facts(&c, &sandbox(), &facts()).unwrap();
        assert_eq!(spec.process().as_ref().unwrap().selinux_label(), &None);
    }

    #[test]
    fn a_localhost_apparmor_profile_applies_only_where_apparmor_does() {
        let mut c = config();
        c.security.apparmor = Profile::Localhost("k8s-deny-write".into());
        let profile = |cfg: &ContainerConfig, apparmor| {
            build_on_host(cfg, &FULL_V1, apparmor).map(|s| {
                s.process()
                    .as_ref()
                    .and_then(|p| p.apparmor_profile().clone())
            })
        };
        assert_eq!(
            profile(&c, true).unwrap().as_deref(),
            Some("k8s-deny-write")
        );
        assert!(matches!(profile(&c, false), Err(Error::InvalidArgument(_))));
        c.security.apparmor = Profile::RuntimeDefault;
        assert_eq!(profile(&c, false).unwrap(), None);
    }

    #[test]
    fn command_and_args_merge_like_kubelet() {
        let img = image();
        let mut c = config();
        assert_eq!(
            process_args(&c, &img).unwrap(),
            vec!["/entry", "default-arg"]
        );
        c.args = vec!["x".into()];
        assert_eq!(process_args(&c, &img).unwrap(), vec!["/entry", "x"]);
        c.command = vec!["/bin/sh".into()];
        c.args.clear();
        assert_eq!(process_args(&c, &img).unwrap(), vec!["/bin/sh"]);
        let empty = ImageConfig::default();
        let c = config();
        assert!(process_args(&c, &empty).is_err());
    }

    #[test]
    fn env_order_and_override() {
        let mut c = config();
        c.envs = vec![("A".into(), "config".into()), ("B".into(), "b".into())];
        assert_eq!(
            environment(&c, &image(), "h"),
            vec!["PATH=/bin", "A=config", "HOSTNAME=h", "B=b"]
        );
        let env = environment(&config(), &ImageConfig::default(), "");
        assert_eq!(env, vec![DEFAULT_PATH]);
    }

    #[test]
    fn spec_has_pod_namespaces_files_and_defaults() {
        let spec = build_with(&config()).unwrap();
        let linux = spec.linux().as_ref().unwrap();
        let ns = linux.namespaces().as_ref().unwrap();
        let net = ns
            .iter()
            .find(|n| n.typ() == LinuxNamespaceType::Network)
            .unwrap();
        assert_eq!(
            net.path().as_ref().unwrap(),
            Path::new("/run/crust/sandboxes/sb/ns/net")
        );
        assert!(
            ns.iter()
                .any(|n| n.typ() == LinuxNamespaceType::Pid && n.path().is_none())
        );
        assert_eq!(
            linux.cgroups_path().as_ref().unwrap(),
            Path::new("/crust/cid")
        );
        assert!(
            linux
                .masked_paths()
                .as_ref()
                .unwrap()
                .contains(&"/proc/kcore".to_string())
        );
        let mounts = spec.mounts().as_ref().unwrap();
        assert!(
            mounts
                .iter()
                .any(|m| m.destination() == Path::new("/etc/resolv.conf"))
        );
        assert_eq!(spec.hostname().as_deref(), Some("podhost"));
        let p = spec.process().as_ref().unwrap();
        assert_eq!(p.cwd(), Path::new("/work"));
        assert_eq!(p.oom_score_adj(), Some(0));
        let caps = p.capabilities().as_ref().unwrap();
        assert!(
            caps.bounding()
                .as_ref()
                .unwrap()
                .contains(&Capability::Chown)
        );
        assert!(
            !caps
                .bounding()
                .as_ref()
                .unwrap()
                .contains(&Capability::SysAdmin)
        );
    }

    #[test]
    fn privileged_needs_privileged_pod() {
        let mut c = config();
        c.security.privileged = true;
        assert!(matches!(build_with(&c), Err(Error::InvalidArgument(_))));
    }

    #[test]
    fn a_host_network_container_keeps_the_nodes_hostname() {
        let mut sb = sandbox();
        sb.config.namespaces.network = NamespaceMode::Node;
        sb.netns = None;
        let mut host = facts();
        host.hostname_file = "node-7".into();
        let spec = build_facts(&config(), &sb, &host).unwrap();
        assert_eq!(spec.hostname(), &None);
        let env = spec.process().as_ref().unwrap().env().clone().unwrap();
        assert!(env.contains(&"HOSTNAME=node-7".to_string()));
        assert_eq!(pod_hostname(&sb), "");
        assert_eq!(pod_hostname(&sandbox()), "podhost");
    }
}
