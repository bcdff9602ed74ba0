//! CRI container config + image config → OCI runtime spec, with containerd's
//! defaults: mounts, capabilities, masked and read-only paths, the pod's
//! namespaces and files.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use oci_spec::runtime::{
    Arch, Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDevice,
    LinuxDeviceBuilder, LinuxDeviceCgroup, LinuxDeviceCgroupBuilder, LinuxDeviceType,
    LinuxHugepageLimitBuilder, LinuxMemoryBuilder, LinuxNamespace, LinuxNamespaceBuilder,
    LinuxNamespaceType, LinuxResourcesBuilder, LinuxSeccomp, LinuxSeccompAction,
    LinuxSeccompBuilder, LinuxSyscallBuilder, Mount, MountBuilder, ProcessBuilder, RootBuilder,
    Spec, SpecBuilder, UserBuilder,
};

use super::ResolvedUser;
use super::config::{ContainerConfig, Profile, Propagation};
use crate::image::ImageConfig;
use crate::sandbox::Sandbox;
use crate::sandbox::config::NamespaceMode;
use crate::sys::cgroup::CgroupHost;
use crate::{Error, Result};

/// PATH for images that set none.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// containerd's default capability set.
const DEFAULT_CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// Every capability, in kernel bit order (CAP_CHOWN is bit 0). A privileged
/// container or an "ALL" gets those the runtime's bounding set holds.
const ALL_CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Paths masked in a non-privileged container unless the request lists its own.
const DEFAULT_MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths read-only in a non-privileged container unless the request lists its own.
const DEFAULT_READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// System calls the runtime/default seccomp profile refuses with EPERM. The list
/// follows what Docker's default profile never allows an unprivileged container;
/// the ones that need CAP_SYS_ADMIN are allowed when the container holds it.
const SECCOMP_BLOCKED: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "get_kernel_syms",
    "get_mempolicy",
    "init_module",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mbind",
    "move_pages",
    "nfsservctl",
    "open_by_handle_at",
    "perf_event_open",
    "process_vm_readv",
    "process_vm_writev",
    "query_module",
    "quotactl",
    "reboot",
    "request_key",
    "set_mempolicy",
    "settimeofday",
    "stime",
    "swapoff",
    "swapon",
    "sysfs",
    "_sysctl",
    "uselib",
    "userfaultfd",
    "ustat",
    "vm86",
    "vm86old",
];

/// Blocked by runtime/default unless the container holds CAP_SYS_ADMIN.
const SECCOMP_BLOCKED_WITHOUT_SYS_ADMIN: &[&str] = &[
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "mount",
    "mount_setattr",
    "move_mount",
    "name_to_handle_at",
    "open_tree",
    "pivot_root",
    "setns",
    "umount",
    "umount2",
    "unshare",
];

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
    /// What the host's cgroups can enforce: limits of controllers it lacks
    /// are left out.
    pub cgroups: &'a CgroupHost,
    /// Lowest oom_score_adj the runtime may give (its own, without CAP_SYS_RESOURCE).
    pub min_oom_score_adj: Option<i64>,
    /// cgroup parent when the pod names none.
    pub default_cgroup_parent: &'a str,
    /// The runtime's capability bounding set (bit mask): nothing outside it can
    /// be granted.
    pub bounding_set: u64,
    /// Whether the host enforces AppArmor (a Localhost profile can apply).
    pub apparmor: bool,
}

/// The AppArmor profile the process runs under: a Localhost profile (one
/// already loaded on the node) by name; none for a privileged container or
/// when no profile was asked for. A Localhost profile on a host without
/// AppArmor is refused rather than ignored.
fn apparmor_profile(input: &SpecInput<'_>) -> Result<Option<String>> {
    let sec = &input.config.security;
    match &sec.apparmor {
        Profile::Localhost(name) if !sec.privileged => {
            if !input.apparmor {
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
    let hostname = if sb.config.host_network() {
        String::new()
    } else if sb.hostname.is_empty() {
        sb.config.hostname.clone()
    } else {
        sb.hostname.clone()
    };
    let env_hostname = if hostname.is_empty() {
        std::fs::read_to_string(sb.hostname_file())
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    } else {
        hostname.clone()
    };

    let caps = capabilities(cfg, input.bounding_set)?;
    let ambient = cap_set(&sec.add_ambient_capabilities)?;
    check_grantable(&ambient, input.bounding_set)?;
    let mut inheritable = HashSet::new();
    inheritable.extend(ambient.iter().copied());
    let mut bounding = caps.clone();
    bounding.extend(ambient.iter().copied());
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(bounding.clone())
        .effective(bounding.clone())
        .permitted(bounding.clone())
        .inheritable(inheritable)
        .ambient(ambient)
        .build()
        .map_err(internal)?;

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
    if cfg.resources.oom_score_adj != 0 || input.min_oom_score_adj.is_some() {
        let mut adj = cfg.resources.oom_score_adj;
        if let Some(min) = input.min_oom_score_adj {
            adj = adj.max(min);
        }
        process.set_oom_score_adj(Some(adj.clamp(-1000, 1000) as i32));
    }

    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces(input)?)
        .resources(resources(input)?)
        .cgroups_path(cgroups_path(input))
        .build()
        .map_err(internal)?;
    if !sec.privileged {
        linux.set_masked_paths(Some(sec.masked_paths.clone().unwrap_or_else(|| {
            DEFAULT_MASKED_PATHS.iter().map(|s| s.to_string()).collect()
        })));
        linux.set_readonly_paths(Some(sec.readonly_paths.clone().unwrap_or_else(|| {
            DEFAULT_READONLY_PATHS
                .iter()
                .map(|s| s.to_string())
                .collect()
        })));
    } else {
        linux.set_masked_paths(None);
        linux.set_readonly_paths(None);
    }
    let mut devices = device_nodes(cfg)?;
    if sec.privileged {
        devices.extend(host_devices());
    }
    linux.set_devices(if devices.is_empty() {
        None
    } else {
        Some(devices)
    });
    linux.set_seccomp(seccomp(sec.privileged, &sec.seccomp, &bounding)?);
    if let Some(p) = rootfs_propagation(cfg) {
        linux.set_rootfs_propagation(Some(p.to_string()));
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
        .mounts(mounts(input)?)
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

fn internal(e: impl std::fmt::Display) -> Error {
    Error::internal(format!("building the OCI spec: {e}"))
}

fn parse_cap(name: &str) -> Result<Capability> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    Capability::from_str(bare).map_err(|_| Error::invalid(format!("unknown capability {name:?}")))
}

fn cap_set(names: &[String]) -> Result<HashSet<Capability>> {
    names.iter().map(|n| parse_cap(n)).collect()
}

/// The capabilities in the bounding set `bounding`.
fn all_caps(bounding: u64) -> HashSet<Capability> {
    ALL_CAPABILITIES
        .iter()
        .enumerate()
        .filter(|(bit, _)| bounding & (1u64 << bit) != 0)
        .filter_map(|(_, n)| Capability::from_str(n).ok())
        .collect()
}

/// Refuses to grant a capability the runtime does not hold itself.
fn check_grantable(caps: &HashSet<Capability>, bounding: u64) -> Result<()> {
    let held = all_caps(bounding);
    let mut missing: Vec<String> = caps.difference(&held).map(|c| c.to_string()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    missing.sort();
    Err(Error::invalid(format!(
        "capabilities {} are not in the runtime's own bounding set, so no container can hold them",
        missing.join(", ")
    )))
}

fn is_all(names: &[String]) -> bool {
    names.iter().any(|n| n.eq_ignore_ascii_case("ALL"))
}

/// containerd's order: the defaults; all of them for an added "ALL"; none for a
/// dropped "ALL"; then the named additions; then the named drops.
fn capabilities(cfg: &ContainerConfig, bounding: u64) -> Result<HashSet<Capability>> {
    let sec = &cfg.security;
    let held = all_caps(bounding);
    if sec.privileged {
        return Ok(held);
    }
    let named = |names: &[String]| -> Result<HashSet<Capability>> {
        let wanted: Vec<String> = names
            .iter()
            .filter(|n| !is_all(std::slice::from_ref(n)))
            .cloned()
            .collect();
        cap_set(&wanted)
    };
    let mut caps: HashSet<Capability> = DEFAULT_CAPABILITIES
        .iter()
        .filter_map(|n| Capability::from_str(n).ok())
        .filter(|c| held.contains(c))
        .collect();
    if is_all(&sec.add_capabilities) {
        caps = held.clone();
    }
    if is_all(&sec.drop_capabilities) {
        caps.clear();
    }
    let added = named(&sec.add_capabilities)?;
    check_grantable(&added, bounding)?;
    caps.extend(added);
    for c in named(&sec.drop_capabilities)? {
        caps.remove(&c);
    }
    Ok(caps)
}

fn namespace(typ: LinuxNamespaceType, path: Option<PathBuf>) -> Result<LinuxNamespace> {
    let b = LinuxNamespaceBuilder::default().typ(typ);
    match path {
        Some(p) => b.path(p).build(),
        None => b.build(),
    }
    .map_err(internal)
}

fn namespaces(input: &SpecInput<'_>) -> Result<Vec<LinuxNamespace>> {
    let sb = input.sandbox;
    let mut out = vec![namespace(LinuxNamespaceType::Mount, None)?];
    if let Some(p) = &sb.netns {
        out.push(namespace(LinuxNamespaceType::Network, Some(p.clone()))?);
    }
    if let Some(p) = &sb.ipcns {
        out.push(namespace(LinuxNamespaceType::Ipc, Some(p.clone()))?);
    }
    if let Some(p) = &sb.utsns {
        out.push(namespace(LinuxNamespaceType::Uts, Some(p.clone()))?);
    }
    match input.config.security.namespaces.pid {
        NamespaceMode::Container => out.push(namespace(LinuxNamespaceType::Pid, None)?),
        NamespaceMode::Node => {}
        NamespaceMode::Target => {
            let pid = input.target_pid.ok_or_else(|| {
                Error::invalid("PID namespace mode TARGET needs a running target container")
            })?;
            out.push(namespace(
                LinuxNamespaceType::Pid,
                Some(PathBuf::from(format!("/proc/{pid}/ns/pid"))),
            )?);
        }
        NamespaceMode::Pod => {
            let pid = sb.infra_pid.ok_or_else(|| {
                Error::invalid(
                    "the container asks for the pod's shared PID namespace, but the pod sandbox was not created with one",
                )
            })?;
            out.push(namespace(
                LinuxNamespaceType::Pid,
                Some(PathBuf::from(format!("/proc/{pid}/ns/pid"))),
            )?);
        }
    }
    if input.cgroups.v2 && !input.config.security.privileged {
        out.push(namespace(LinuxNamespaceType::Cgroup, None)?);
    }
    Ok(out)
}

fn cgroups_path(input: &SpecInput<'_>) -> PathBuf {
    let parent = if input.sandbox.config.cgroup_parent.is_empty() {
        input.default_cgroup_parent
    } else {
        input.sandbox.config.cgroup_parent.as_str()
    };
    let parent = if parent.starts_with('/') {
        parent.to_string()
    } else {
        format!("/{parent}")
    };
    Path::new(&parent).join(input.id)
}

fn resources(input: &SpecInput<'_>) -> Result<oci_spec::runtime::LinuxResources> {
    let r = &input.config.resources;
    let host = input.cgroups;
    let sec = &input.config.security;
    let mut cpu = LinuxCpuBuilder::default();
    if host.cpu {
        if r.cpu_shares > 0 {
            cpu = cpu.shares(r.cpu_shares as u64);
        }
        if r.cpu_quota != 0 {
            cpu = cpu.quota(r.cpu_quota);
        }
        if r.cpu_period > 0 {
            cpu = cpu.period(r.cpu_period as u64);
        }
    }
    if host.cpuset {
        if !r.cpuset_cpus.is_empty() {
            cpu = cpu.cpus(r.cpuset_cpus.clone());
        }
        if !r.cpuset_mems.is_empty() {
            cpu = cpu.mems(r.cpuset_mems.clone());
        }
    }
    let mut memory = LinuxMemoryBuilder::default();
    if host.memory && r.memory_limit_in_bytes > 0 {
        memory = memory.limit(r.memory_limit_in_bytes);
    }
    if host.memory_swap && r.memory_swap_limit_in_bytes > 0 {
        memory = memory.swap(r.memory_swap_limit_in_bytes);
    }
    let mut device_rules: Vec<LinuxDeviceCgroup> = vec![
        LinuxDeviceCgroupBuilder::default()
            .allow(sec.privileged)
            .access("rwm")
            .build()
            .map_err(internal)?,
    ];
    if !sec.privileged {
        for d in device_nodes(input.config)? {
            let perms = input
                .config
                .devices
                .iter()
                .find(|cd| Path::new(&cd.container_path) == d.path())
                .map_or("rwm".to_string(), |cd| {
                    if cd.permissions.is_empty() {
                        "rwm".to_string()
                    } else {
                        cd.permissions.clone()
                    }
                });
            device_rules.push(
                LinuxDeviceCgroupBuilder::default()
                    .allow(true)
                    .typ(d.typ())
                    .major(d.major())
                    .minor(d.minor())
                    .access(perms)
                    .build()
                    .map_err(internal)?,
            );
        }
    }
    let hugepages = r
        .hugepage_limits
        .iter()
        .filter(|_| host.hugetlb)
        .map(|(size, limit)| {
            LinuxHugepageLimitBuilder::default()
                .page_size(size.clone())
                .limit(i64::try_from(*limit).unwrap_or(i64::MAX))
                .build()
                .map_err(internal)
        })
        .collect::<Result<Vec<_>>>()?;
    let mut b = LinuxResourcesBuilder::default()
        .cpu(cpu.build().map_err(internal)?)
        .memory(memory.build().map_err(internal)?)
        .devices(device_rules);
    if !hugepages.is_empty() {
        b = b.hugepage_limits(hugepages);
    }
    if host.v2 && !r.unified.is_empty() {
        b = b.unified(r.unified.clone().into_iter().collect::<HashMap<_, _>>());
    }
    b.build().map_err(internal)
}

fn device_nodes(cfg: &ContainerConfig) -> Result<Vec<LinuxDevice>> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut out = Vec::new();
    for d in &cfg.devices {
        let meta = std::fs::metadata(&d.host_path)
            .map_err(|e| Error::invalid(format!("device {:?} is not usable: {e}", d.host_path)))?;
        let typ = if meta.file_type().is_char_device() {
            LinuxDeviceType::C
        } else if meta.file_type().is_block_device() {
            LinuxDeviceType::B
        } else {
            return Err(Error::invalid(format!(
                "{:?} is not a device node",
                d.host_path
            )));
        };
        let rdev = meta.rdev();
        out.push(
            LinuxDeviceBuilder::default()
                .path(PathBuf::from(&d.container_path))
                .typ(typ)
                .major(nix::sys::stat::major(rdev) as i64)
                .minor(nix::sys::stat::minor(rdev) as i64)
                .file_mode(meta.mode() & 0o777)
                .uid(meta.uid())
                .gid(meta.gid())
                .build()
                .map_err(internal)?,
        );
    }
    Ok(out)
}

/// Every device node under the host's /dev, for privileged containers.
fn host_devices() -> Vec<LinuxDevice> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::from("/dev")];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            let ft = meta.file_type();
            if ft.is_dir() {
                let skip = ["/dev/pts", "/dev/shm", "/dev/mqueue", "/dev/fd"];
                if !skip.iter().any(|s| path == Path::new(s)) {
                    stack.push(path);
                }
                continue;
            }
            let typ = if ft.is_char_device() {
                LinuxDeviceType::C
            } else if ft.is_block_device() {
                LinuxDeviceType::B
            } else {
                continue;
            };
            if path == Path::new("/dev/console") || path == Path::new("/dev/ptmx") {
                continue;
            }
            let rdev = meta.rdev();
            if let Ok(d) = LinuxDeviceBuilder::default()
                .path(path)
                .typ(typ)
                .major(nix::sys::stat::major(rdev) as i64)
                .minor(nix::sys::stat::minor(rdev) as i64)
                .file_mode(meta.mode() & 0o777)
                .uid(meta.uid())
                .gid(meta.gid())
                .build()
            {
                out.push(d);
            }
        }
    }
    out
}

/// Largest seccomp profile read (the runtime/default one is about 20 KiB).
const MAX_SECCOMP_PROFILE: u64 = 1 << 20;

fn seccomp(
    privileged: bool,
    profile: &Profile,
    caps: &HashSet<Capability>,
) -> Result<Option<LinuxSeccomp>> {
    if privileged {
        return Ok(None);
    }
    match profile {
        Profile::Unset | Profile::Unconfined => Ok(None),
        Profile::RuntimeDefault => {
            let mut names: Vec<String> = SECCOMP_BLOCKED.iter().map(|s| s.to_string()).collect();
            if !caps.contains(&Capability::SysAdmin) {
                names.extend(
                    SECCOMP_BLOCKED_WITHOUT_SYS_ADMIN
                        .iter()
                        .map(|s| s.to_string()),
                );
            }
            let rule = LinuxSyscallBuilder::default()
                .names(names)
                .action(LinuxSeccompAction::ScmpActErrno)
                .errno_ret(libc::EPERM as u32)
                .build()
                .map_err(internal)?;
            let arches = match std::env::consts::ARCH {
                "x86_64" => vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32],
                "aarch64" => vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm],
                _ => vec![Arch::ScmpArchNative],
            };
            Ok(Some(
                LinuxSeccompBuilder::default()
                    .default_action(LinuxSeccompAction::ScmpActAllow)
                    .architectures(arches)
                    .syscalls(vec![rule])
                    .build()
                    .map_err(internal)?,
            ))
        }
        Profile::Localhost(path) => {
            if !path.starts_with('/') {
                return Err(Error::invalid(format!(
                    "seccomp profile path {path:?} must be absolute"
                )));
            }
            let file = crate::fsutil::open_nonblocking(Path::new(path), false).map_err(|e| {
                Error::invalid(format!("cannot read seccomp profile {path:?}: {e}"))
            })?;
            let data = crate::fsutil::read_regular_capped(file, MAX_SECCOMP_PROFILE)
                .map_err(|why| Error::invalid(format!("seccomp profile {path:?} {why}")))?;
            let profile: LinuxSeccomp = serde_json::from_slice(&data).map_err(|e| {
                Error::invalid(format!("seccomp profile {path:?} is not valid: {e}"))
            })?;
            Ok(Some(profile))
        }
    }
}

fn rootfs_propagation(cfg: &ContainerConfig) -> Option<&'static str> {
    if cfg
        .mounts
        .iter()
        .any(|m| m.propagation == Propagation::Bidirectional)
    {
        Some("rshared")
    } else if cfg
        .mounts
        .iter()
        .any(|m| m.propagation == Propagation::HostToContainer)
    {
        Some("rslave")
    } else {
        None
    }
}

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Result<Mount> {
    MountBuilder::default()
        .destination(PathBuf::from(dest))
        .typ(typ.to_string())
        .source(PathBuf::from(source))
        .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()
        .map_err(internal)
}

fn mounts(input: &SpecInput<'_>) -> Result<Vec<Mount>> {
    let cfg = input.config;
    let sb = input.sandbox;
    let privileged = cfg.security.privileged;
    let ro = if privileged { "rw" } else { "ro" };
    let requested: HashSet<PathBuf> = cfg
        .mounts
        .iter()
        .map(|m| normalize(&m.container_path))
        .collect();
    let mut out = Vec::new();
    let mut add = |m: Mount| {
        if !requested.contains(&normalize(&m.destination().to_string_lossy())) {
            out.push(m);
        }
    };
    add(mount(
        "/proc",
        "proc",
        "proc",
        &["nosuid", "noexec", "nodev"],
    )?);
    add(mount(
        "/dev",
        "tmpfs",
        "tmpfs",
        &["nosuid", "strictatime", "mode=755", "size=65536k"],
    )?);
    add(mount(
        "/dev/pts",
        "devpts",
        "devpts",
        &[
            "nosuid",
            "noexec",
            "newinstance",
            "ptmxmode=0666",
            "mode=0620",
            "gid=5",
        ],
    )?);
    add(mount(
        "/dev/mqueue",
        "mqueue",
        "mqueue",
        &["nosuid", "noexec", "nodev"],
    )?);
    add(mount(
        "/sys",
        "sysfs",
        "sysfs",
        &["nosuid", "noexec", "nodev", ro],
    )?);
    add(mount(
        "/sys/fs/cgroup",
        "cgroup",
        "cgroup",
        &["nosuid", "noexec", "nodev", "relatime", ro],
    )?);
    let files_mode = if cfg.security.readonly_rootfs {
        "ro"
    } else {
        "rw"
    };
    for (dest, src) in [
        ("/etc/hostname", sb.hostname_file()),
        ("/etc/hosts", sb.hosts_file()),
        ("/etc/resolv.conf", sb.resolv_file()),
    ] {
        add(mount(
            dest,
            "bind",
            &src.to_string_lossy(),
            &["rbind", "rprivate", files_mode],
        )?);
    }
    add(mount(
        "/dev/shm",
        "bind",
        &sb.shm.to_string_lossy(),
        &["rbind", "rprivate", "rw"],
    )?);
    for m in &cfg.mounts {
        let host = std::fs::canonicalize(&m.host_path).map_err(|e| {
            Error::invalid(format!(
                "host path {:?} of the mount at {:?} is not usable: {e}",
                m.host_path, m.container_path
            ))
        })?;
        let mut options = vec!["rbind"];
        options.push(match m.propagation {
            Propagation::Private => "rprivate",
            Propagation::HostToContainer => "rslave",
            Propagation::Bidirectional => "rshared",
        });
        options.push(if m.readonly { "ro" } else { "rw" });
        if m.recursive_read_only {
            options.push("rro");
        }
        out.push(mount(
            &m.container_path,
            "bind",
            &host.to_string_lossy(),
            &options,
        )?);
    }
    Ok(out)
}

fn normalize(p: &str) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in Path::new(p).components() {
        if let std::path::Component::Normal(n) = c {
            out.push(n);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::config::{Mount as CriMount, SecurityContext};
    use crate::sandbox::SandboxState;
    use crate::sandbox::config::{NamespaceOptions, SandboxConfig};

    fn sandbox() -> Sandbox {
        Sandbox {
            id: "sb".into(),
            config: SandboxConfig {
                name: "pod".into(),
                uid: "u".into(),
                namespace: "ns".into(),
                hostname: "podhost".into(),
                ..Default::default()
            },
            created_at: 1,
            state: SandboxState::Ready,
            dir: "/run/crust/sandboxes/sb".into(),
            netns: Some("/run/crust/sandboxes/sb/ns/net".into()),
            ipcns: Some("/run/crust/sandboxes/sb/ns/ipc".into()),
            utsns: Some("/run/crust/sandboxes/sb/ns/uts".into()),
            hostname: "podhost".into(),
            ips: Vec::new(),
            shm: "/run/crust/sandboxes/sb/shm".into(),
            shm_mounted: true,
            infra_pid: None,
        }
    }

    fn config() -> ContainerConfig {
        ContainerConfig {
            name: "c".into(),
            image: "img".into(),
            security: SecurityContext {
                namespaces: NamespaceOptions {
                    pid: NamespaceMode::Container,
                    ..Default::default()
                },
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn image() -> ImageConfig {
        ImageConfig {
            entrypoint: vec!["/entry".into()],
            cmd: vec!["default-arg".into()],
            env: vec!["PATH=/bin".into(), "A=image".into()],
            working_dir: "/work".into(),
            ..Default::default()
        }
    }

    /// A v1 host with every controller.
    const FULL_V1: CgroupHost = CgroupHost {
        v2: false,
        cpu: true,
        cpuset: true,
        memory: true,
        memory_swap: true,
        hugetlb: true,
    };

    fn build_with(cfg: &ContainerConfig) -> Result<Spec> {
        build_on(cfg, &FULL_V1)
    }

    fn build_on(cfg: &ContainerConfig, cgroups: &CgroupHost) -> Result<Spec> {
        build_on_host(cfg, cgroups, false)
    }

    fn build_on_host(cfg: &ContainerConfig, cgroups: &CgroupHost, apparmor: bool) -> Result<Spec> {
        let sb = sandbox();
        let img = image();
        let user = ResolvedUser::default();
        build(&SpecInput {
            id: "cid",
            config: cfg,
            sandbox: &sb,
            image: &img,
            image_name: "img",
            user: &user,
            rootfs: Path::new("/run/crust/containers/cid/rootfs"),
            target_pid: None,
            cgroups,
            min_oom_score_adj: Some(0),
            default_cgroup_parent: "/crust",
            bounding_set: (1u64 << 41) - 1 - (1u64 << 24),
            apparmor,
        })
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
    fn cri_mount_replaces_default_and_caps_change() {
        let mut c = config();
        let dir = std::env::temp_dir();
        c.mounts = vec![CriMount {
            container_path: "/etc/hosts".into(),
            host_path: dir.to_string_lossy().into_owned(),
            readonly: true,
            ..Default::default()
        }];
        c.security.add_capabilities = vec!["NET_ADMIN".into()];
        c.security.drop_capabilities = vec!["CAP_CHOWN".into()];
        let spec = build_with(&c).unwrap();
        let hosts: Vec<_> = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .filter(|m| m.destination() == Path::new("/etc/hosts"))
            .collect();
        assert_eq!(hosts.len(), 1);
        assert!(
            hosts[0]
                .options()
                .as_ref()
                .unwrap()
                .contains(&"ro".to_string())
        );
        let caps = spec
            .process()
            .as_ref()
            .unwrap()
            .capabilities()
            .as_ref()
            .unwrap()
            .clone();
        assert!(
            caps.bounding()
                .as_ref()
                .unwrap()
                .contains(&Capability::NetAdmin)
        );
        assert!(
            !caps
                .bounding()
                .as_ref()
                .unwrap()
                .contains(&Capability::Chown)
        );

        c.security.add_capabilities = vec!["NOT_A_CAP".into()];
        assert!(matches!(build_with(&c), Err(Error::InvalidArgument(_))));
    }

    #[test]
    fn capability_all_follows_containerd_order() {
        let bounding = (1u64 << 41) - 1 - (1u64 << 24);
        let mut c = config();
        c.security.add_capabilities = vec!["ALL".into()];
        c.security.drop_capabilities = vec!["CHOWN".into()];
        let caps = capabilities(&c, bounding).unwrap();
        assert!(caps.contains(&Capability::SysAdmin));
        assert!(!caps.contains(&Capability::Chown));
        assert!(!caps.contains(&Capability::SysResource));

        c.security.add_capabilities = vec!["net_admin".into()];
        c.security.drop_capabilities = vec!["ALL".into()];
        let caps = capabilities(&c, bounding).unwrap();
        assert_eq!(caps, HashSet::from([Capability::NetAdmin]));

        c.security.add_capabilities = vec!["SYS_RESOURCE".into()];
        assert!(matches!(
            capabilities(&c, bounding),
            Err(Error::InvalidArgument(_))
        ));

        c.security.privileged = true;
        let caps = capabilities(&c, bounding).unwrap();
        assert!(caps.contains(&Capability::SysAdmin));
        assert!(!caps.contains(&Capability::SysResource));
    }

    #[test]
    fn privileged_needs_privileged_pod() {
        let mut c = config();
        c.security.privileged = true;
        assert!(matches!(build_with(&c), Err(Error::InvalidArgument(_))));
    }

    #[test]
    fn limits_of_missing_controllers_are_dropped() {
        let mut c = config();
        c.resources.hugepage_limits = vec![("2MB".into(), 0), ("1GB".into(), 0)];
        c.resources.memory_limit_in_bytes = 64 << 20;
        c.resources.memory_swap_limit_in_bytes = 64 << 20;
        c.resources.cpu_shares = 512;
        c.resources.unified = [("memory.high".to_string(), "1000000".to_string())].into();
        let resources = |spec: &Spec| spec.linux().clone().unwrap().resources().clone().unwrap();

        let full = resources(&build_with(&c).unwrap());
        assert_eq!(full.hugepage_limits().as_ref().map(Vec::len), Some(2));
        assert_eq!(full.memory().as_ref().unwrap().swap(), Some(64 << 20));
        assert!(full.unified().is_none(), "unified keys are for v2 hosts");

        let no_hugetlb_no_swap = CgroupHost {
            hugetlb: false,
            memory_swap: false,
            ..FULL_V1
        };
        let r = resources(&build_on(&c, &no_hugetlb_no_swap).unwrap());
        assert!(r.hugepage_limits().is_none());
        let memory = r.memory().unwrap();
        assert_eq!((memory.limit(), memory.swap()), (Some(64 << 20), None));
        assert_eq!(r.cpu().as_ref().unwrap().shares(), Some(512));

        let v2 = CgroupHost {
            v2: true,
            ..FULL_V1
        };
        let r = resources(&build_on(&c, &v2).unwrap());
        assert_eq!(r.unified().as_ref().map(|u| u.len()), Some(1));
    }
}
