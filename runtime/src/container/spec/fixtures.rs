//! Test fixtures shared by the spec builder's unit tests: a pod, a
//! container config, an image config and hand-made host facts.

use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;

use super::{HostFacts, SpecInput, build};
use crate::Result;
use crate::container::ResolvedUser;
use crate::container::config::{ContainerConfig, SecurityContext};
use crate::image::ImageConfig;
use crate::sandbox::config::{NamespaceMode, NamespaceOptions, SandboxConfig};
use crate::sandbox::{Sandbox, SandboxState};
use crate::sys::cgroup::CgroupHost;

/// Every capability up to CHECKPOINT_RESTORE but SYS_RESOURCE.
pub(super) const BOUNDING_SET: u64 = (1u64 << 41) - 1 - (1u64 << 24);

/// A v1 host with every controller.
pub(super) const FULL_V1: CgroupHost = CgroupHost {
    v2: false,
    cpu: true,
    cpuset: true,
    memory: true,
    memory_swap: true,
    hugetlb: true,
};

/// A ready pod "pod" with its own network, IPC and UTS namespaces and
/// the hostname "podhost".
pub(super) fn sandbox() -> Sandbox {
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
        handler: "runc".into(),
        state: SandboxState::Ready,
        dir: "/run/crust/sandboxes/sb".into(),
        netns: Some("/run/crust/sandboxes/sb/ns/net".into()),
        ipcns: Some("/run/crust/sandboxes/sb/ns/ipc".into()),
        utsns: Some("/run/crust/sandboxes/sb/ns/uts".into()),
        userns: None,
        hostname: "podhost".into(),
        ips: Vec::new(),
        shm: "/run/crust/sandboxes/sb/shm".into(),
        shm_mounted: true,
        infra_pid: None,
        owed: Vec::new(),
        leftover: false,
    }
}

/// [`sandbox`] created with privileged = true.
pub(super) fn privileged_pod() -> Sandbox {
    let mut sb = sandbox();
    sb.config.privileged = true;
    sb
}

/// A container "c" with a PID namespace of its own and nothing else asked for.
pub(super) fn config() -> ContainerConfig {
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

/// An image with an entrypoint, a Cmd, a PATH and a working directory.
pub(super) fn image() -> ImageConfig {
    ImageConfig {
        entrypoint: vec!["/entry".into()],
        cmd: vec!["default-arg".into()],
        env: vec!["PATH=/bin".into(), "A=image".into()],
        working_dir: "/work".into(),
        ..Default::default()
    }
}

/// A host with [`BOUNDING_SET`], every v1 controller, no AppArmor, a runtime
/// that may not go below oom_score_adj 0, and nothing looked up.
pub(super) fn facts() -> HostFacts {
    HostFacts {
        bounding_set: BOUNDING_SET,
        apparmor: false,
        selinux: false,
        min_oom_score_adj: Some(0),
        cgroups: FULL_V1,
        host_devices: Vec::new(),
        requested_devices: Default::default(),
        mount_sources: Default::default(),
        seccomp_profile: None,
        hostname_file: String::new(),
    }
}

/// Builds `cfg` on a v1 host with every controller.
pub(super) fn build_with(cfg: &ContainerConfig) -> Result<Spec> {
    build_on(cfg, &FULL_V1)
}

/// Builds `cfg` on a host with `cgroups`.
pub(super) fn build_on(cfg: &ContainerConfig, cgroups: &CgroupHost) -> Result<Spec> {
    build_on_host(cfg, cgroups, false)
}

/// Builds on [`facts`] with `cgroups` and `apparmor`, where every bind
/// mount's host path resolves to itself.
pub(super) fn build_on_host(
    cfg: &ContainerConfig,
    cgroups: &CgroupHost,
    apparmor: bool,
) -> Result<Spec> {
    let mut host = facts();
    host.cgroups = cgroups.clone();
    host.apparmor = apparmor;
    host.mount_sources = cfg
        .mounts
        .iter()
        .map(|m| (m.host_path.clone(), Ok(PathBuf::from(&m.host_path))))
        .collect();
    build_facts(cfg, &sandbox(), &host)
}

/// Builds the spec of `cfg` in `sb` on `host`.
pub(super) fn build_facts(cfg: &ContainerConfig, sb: &Sandbox, host: &HostFacts) -> Result<Spec> {
    let img = image();
    let user = ResolvedUser::default();
    build(&SpecInput {
        id: "cid",
        config: cfg,
        sandbox: sb,
        image: &img,
        image_name: "img",
        user: &user,
        rootfs: Path::new("/run/crust/containers/cid/rootfs"),
        target_pid: None,
        host,
        staged_mounts: &Default::default(),
        default_cgroup_parent: "/crust",
    })
}
