//! Container messages.

use crust_runtime::container::config::{
    ContainerConfig, Device, Mount, Profile, Propagation, Resources, SecurityContext, SelinuxLabel,
};
use crust_runtime::container::{Container, ContainerState};
use crust_runtime::events::{ContainerEvent, EventKind};
use crust_runtime::sandbox::config::UserNamespace;
use crust_runtime::{Error, Result};
use k8s_cri::v1;

use super::{namespaces_from, to_btree, to_hash};

/// CreateContainerRequest's config → domain config.
pub fn config_from(c: v1::ContainerConfig) -> Result<ContainerConfig> {
    let meta = c
        .metadata
        .ok_or_else(|| Error::invalid("the container config needs metadata"))?;
    let image = c.image.unwrap_or_default();
    let linux = c.linux.unwrap_or_default();
    let sec = linux.security_context.unwrap_or_default();
    let caps = sec.capabilities.clone().unwrap_or_default();
    // Older clients still send profiles in the deprecated string fields.
    #[allow(deprecated)]
    let (seccomp_path, apparmor_name) = (
        sec.seccomp_profile_path.clone(),
        sec.apparmor_profile.clone(),
    );
    Ok(ContainerConfig {
        name: meta.name,
        attempt: meta.attempt,
        image: image.image,
        image_annotations: to_btree(image.annotations),
        user_specified_image: image.user_specified_image,
        command: c.command,
        args: c.args,
        working_dir: c.working_dir,
        envs: c.envs.into_iter().map(|kv| (kv.key, kv.value)).collect(),
        mounts: c
            .mounts
            .into_iter()
            .map(mount_from)
            .collect::<Result<_>>()?,
        devices: c
            .devices
            .into_iter()
            .map(|d| Device {
                container_path: d.container_path,
                host_path: d.host_path,
                permissions: d.permissions,
            })
            .collect(),
        labels: to_btree(c.labels),
        annotations: to_btree(c.annotations),
        log_path: c.log_path,
        stdin: c.stdin,
        stdin_once: c.stdin_once,
        tty: c.tty,
        resources: linux.resources.map(resources_from).unwrap_or_default(),
        security: SecurityContext {
            add_capabilities: caps.add_capabilities,
            drop_capabilities: caps.drop_capabilities,
            add_ambient_capabilities: caps.add_ambient_capabilities,
            privileged: sec.privileged,
            namespaces: namespaces_from(sec.namespace_options)?,
            run_as_user: sec.run_as_user.map(|v| v.value),
            run_as_group: sec.run_as_group.map(|v| v.value),
            run_as_username: sec.run_as_username,
            readonly_rootfs: sec.readonly_rootfs,
            supplemental_groups: sec.supplemental_groups,
            supplemental_groups_strict: sec.supplemental_groups_policy
                == v1::SupplementalGroupsPolicy::Strict as i32,
            no_new_privs: sec.no_new_privs,
            masked_paths: (!sec.masked_paths.is_empty()).then_some(sec.masked_paths),
            readonly_paths: (!sec.readonly_paths.is_empty()).then_some(sec.readonly_paths),
            seccomp: profile_from("seccomp", sec.seccomp, &seccomp_path)?,
            apparmor: profile_from("AppArmor", sec.apparmor, &apparmor_name)?,
            selinux: sec
                .selinux_options
                .and_then(|o| SelinuxLabel::of(o.user, o.role, o.r#type, o.level)),
        },
        cdi_devices: c.cdi_devices.into_iter().map(|d| d.name).collect(),
    })
}

fn mount_from(m: v1::Mount) -> Result<Mount> {
    let idmap = match (m.uid_mappings.as_slice(), m.gid_mappings.as_slice()) {
        ([], []) => None,
        ([uids], [gids]) => Some(UserNamespace {
            uids: super::id_mapping_from(uids),
            gids: super::id_mapping_from(gids),
        }),
        (uids, gids) => {
            return Err(Error::invalid(format!(
                "the mount at {:?} must give one uid and one gid mapping or none, got {} and {}",
                m.container_path,
                uids.len(),
                gids.len()
            )));
        }
    };
    Ok(Mount {
        container_path: m.container_path,
        host_path: m.host_path,
        readonly: m.readonly,
        recursive_read_only: m.recursive_read_only,
        selinux_relabel: m.selinux_relabel,
        propagation: match v1::MountPropagation::try_from(m.propagation) {
            Ok(v1::MountPropagation::PropagationHostToContainer) => Propagation::HostToContainer,
            Ok(v1::MountPropagation::PropagationBidirectional) => Propagation::Bidirectional,
            _ => Propagation::Private,
        },
        image: m.image.map(|i| i.image).unwrap_or_default(),
        idmap,
    })
}

fn mount_to(m: &Mount) -> v1::Mount {
    v1::Mount {
        container_path: m.container_path.clone(),
        host_path: m.host_path.clone(),
        readonly: m.readonly,
        selinux_relabel: m.selinux_relabel,
        propagation: match m.propagation {
            Propagation::Private => v1::MountPropagation::PropagationPrivate,
            Propagation::HostToContainer => v1::MountPropagation::PropagationHostToContainer,
            Propagation::Bidirectional => v1::MountPropagation::PropagationBidirectional,
        } as i32,
        uid_mappings: m
            .idmap
            .iter()
            .map(|u| super::id_mapping_to(&u.uids))
            .collect(),
        gid_mappings: m
            .idmap
            .iter()
            .map(|u| super::id_mapping_to(&u.gids))
            .collect(),
        recursive_read_only: m.recursive_read_only,
        image: None,
    }
}

/// CRI resources as the runtime records them (CreateContainer and
/// UpdateContainerResources).
pub fn resources_from(r: v1::LinuxContainerResources) -> Resources {
    Resources {
        cpu_period: r.cpu_period,
        cpu_quota: r.cpu_quota,
        cpu_shares: r.cpu_shares,
        memory_limit_in_bytes: r.memory_limit_in_bytes,
        oom_score_adj: r.oom_score_adj,
        cpuset_cpus: r.cpuset_cpus,
        cpuset_mems: r.cpuset_mems,
        hugepage_limits: r
            .hugepage_limits
            .into_iter()
            .map(|h| (h.page_size, h.limit))
            .collect(),
        unified: to_btree(r.unified),
        memory_swap_limit_in_bytes: r.memory_swap_limit_in_bytes,
    }
}

fn resources_to(r: &Resources) -> v1::LinuxContainerResources {
    v1::LinuxContainerResources {
        cpu_period: r.cpu_period,
        cpu_quota: r.cpu_quota,
        cpu_shares: r.cpu_shares,
        memory_limit_in_bytes: r.memory_limit_in_bytes,
        oom_score_adj: r.oom_score_adj,
        cpuset_cpus: r.cpuset_cpus.clone(),
        cpuset_mems: r.cpuset_mems.clone(),
        hugepage_limits: r
            .hugepage_limits
            .iter()
            .map(|(page_size, limit)| v1::HugepageLimit {
                page_size: page_size.clone(),
                limit: *limit,
            })
            .collect(),
        unified: to_hash(&r.unified),
        memory_swap_limit_in_bytes: r.memory_swap_limit_in_bytes,
    }
}

/// A seccomp or AppArmor profile: the structured field, else the
/// deprecated string form ("runtime/default", "unconfined",
/// "localhost/<ref>"). A type this version does not know is refused: running
/// unconfined instead would fail open.
fn profile_from(what: &str, p: Option<v1::SecurityProfile>, deprecated: &str) -> Result<Profile> {
    use v1::security_profile::ProfileType;
    let Some(p) = p else {
        return match deprecated {
            "" => Ok(Profile::Unset),
            "runtime/default" | "docker/default" => Ok(Profile::RuntimeDefault),
            "unconfined" => Ok(Profile::Unconfined),
            other => match other.strip_prefix("localhost/") {
                Some(r) => Ok(Profile::Localhost(r.to_string())),
                None => Err(Error::invalid(format!(
                    "{what} profile {other:?} is not runtime/default, unconfined or localhost/<profile>"
                ))),
            },
        };
    };
    match ProfileType::try_from(p.profile_type) {
        Ok(ProfileType::RuntimeDefault) => Ok(Profile::RuntimeDefault),
        Ok(ProfileType::Unconfined) => Ok(Profile::Unconfined),
        Ok(ProfileType::Localhost) => Ok(Profile::Localhost(p.localhost_ref)),
        Err(_) => Err(Error::invalid(format!(
            "{what} profile type {} is not RuntimeDefault, Unconfined or Localhost",
            p.profile_type
        ))),
    }
}

/// Domain state → CRI state.
pub fn state_to(s: ContainerState) -> i32 {
    match s {
        ContainerState::Created => v1::ContainerState::ContainerCreated as i32,
        ContainerState::Running => v1::ContainerState::ContainerRunning as i32,
        ContainerState::Exited => v1::ContainerState::ContainerExited as i32,
        ContainerState::Unknown => v1::ContainerState::ContainerUnknown as i32,
    }
}

/// CRI state → domain state.
pub fn state_from(v: i32) -> Result<ContainerState> {
    match v1::ContainerState::try_from(v) {
        Ok(v1::ContainerState::ContainerCreated) => Ok(ContainerState::Created),
        Ok(v1::ContainerState::ContainerRunning) => Ok(ContainerState::Running),
        Ok(v1::ContainerState::ContainerExited) => Ok(ContainerState::Exited),
        Ok(v1::ContainerState::ContainerUnknown) => Ok(ContainerState::Unknown),
        Err(_) => Err(Error::invalid(format!("unknown container state {v}"))),
    }
}

fn image_spec(c: &Container) -> v1::ImageSpec {
    let image = if c.image_name.is_empty() {
        &c.config.image
    } else {
        &c.image_name
    };
    v1::ImageSpec {
        image: image.clone(),
        annotations: to_hash(&c.config.image_annotations),
        user_specified_image: c.config.user_specified_image.clone(),
        runtime_handler: String::new(),
    }
}

/// The container's name and attempt.
pub fn metadata(c: &Container) -> v1::ContainerMetadata {
    v1::ContainerMetadata {
        name: c.config.name.clone(),
        attempt: c.config.attempt,
    }
}

/// A list entry.
pub fn list_item(c: &Container) -> v1::Container {
    v1::Container {
        id: c.id.clone(),
        pod_sandbox_id: c.sandbox_id.clone(),
        metadata: Some(metadata(c)),
        image: Some(image_spec(c)),
        image_ref: c.image_ref.clone(),
        state: state_to(c.state),
        created_at: c.created_at,
        labels: to_hash(&c.config.labels),
        annotations: to_hash(&c.config.annotations),
        image_id: c.image_id.clone(),
    }
}

/// ContainerStatus.
pub fn status(c: &Container) -> v1::ContainerStatus {
    let exited = c.state == ContainerState::Exited;
    v1::ContainerStatus {
        id: c.id.clone(),
        metadata: Some(metadata(c)),
        state: state_to(c.state),
        created_at: c.created_at,
        started_at: c.started_at,
        finished_at: if exited { c.finished_at } else { 0 },
        exit_code: if exited { c.exit_code } else { 0 },
        image: Some(image_spec(c)),
        image_ref: c.image_ref.clone(),
        reason: if exited {
            c.reason.clone()
        } else {
            String::new()
        },
        message: c.message.clone(),
        labels: to_hash(&c.config.labels),
        annotations: to_hash(&c.config.annotations),
        mounts: c.config.mounts.iter().map(mount_to).collect(),
        log_path: c.log_path.clone(),
        resources: Some(v1::ContainerResources {
            linux: Some(resources_to(&c.config.resources)),
            windows: None,
        }),
        image_id: c.image_id.clone(),
        user: Some(v1::ContainerUser {
            linux: Some(v1::LinuxContainerUser {
                uid: i64::from(c.user.uid),
                gid: i64::from(c.user.gid),
                supplemental_groups: c
                    .user
                    .additional_gids
                    .iter()
                    .map(|g| i64::from(*g))
                    .collect(),
            }),
        }),
    }
}

/// The verbose `info` of ContainerStatus: pid, bundle, and the sandbox.
pub fn verbose_info(c: &Container) -> std::collections::HashMap<String, String> {
    let info = serde_json::json!({
        "sandboxID": c.sandbox_id,
        "pid": c.pid,
        "shimPid": c.shim_pid,
        "bundle": c.bundle,
        "stopSignal": c.stop_signal,
    });
    [("info".to_string(), info.to_string())]
        .into_iter()
        .collect()
}

/// A container lifecycle event, with the pod's status and its containers'.
pub fn event(e: &ContainerEvent) -> v1::ContainerEventResponse {
    let kind = match e.kind {
        EventKind::Created => v1::ContainerEventType::ContainerCreatedEvent,
        EventKind::Started => v1::ContainerEventType::ContainerStartedEvent,
        EventKind::Stopped => v1::ContainerEventType::ContainerStoppedEvent,
        EventKind::Deleted => v1::ContainerEventType::ContainerDeletedEvent,
    };
    v1::ContainerEventResponse {
        container_id: e.container_id.clone(),
        container_event_type: kind as i32,
        created_at: e.created_at,
        pod_sandbox_status: Some(super::sandbox::status(&e.sandbox)),
        containers_statuses: e.containers.iter().map(status).collect(),
    }
}
