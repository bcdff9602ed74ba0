//! Reads what the spec builder needs to know about the machine into a
//! [`HostFacts`]: the runtime's own capabilities and oom_score_adj, its cgroups,
//! AppArmor, the host's device nodes, and what is at the paths a container
//! request names (its devices, bind-mount sources, seccomp profile).

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxDevice, LinuxDeviceType};

use super::cgroup::CgroupHost;
use super::process;
use crate::container::config::{ContainerConfig, Profile};
use crate::container::spec::{self, HostDevice, HostFacts, ProfileFile};
use crate::fsutil;
use crate::sandbox::Sandbox;

/// Largest seccomp profile read (the runtime/default one is about 20 KiB).
const MAX_SECCOMP_PROFILE: u64 = 1 << 20;

/// Directories under /dev whose nodes a privileged container does not get
/// from the host (it has its own).
const SKIPPED_DEV_DIRS: &[&str] = &["/dev/pts", "/dev/shm", "/dev/mqueue", "/dev/fd"];

/// Probes the machine for what building the spec of `config` in `sandbox`
/// needs; `cgroups` is what the runtime found its cgroups can enforce. Only
/// what the request needs is read: the host's /dev only for a privileged
/// container, a seccomp profile only when one applies.
pub fn probe(cgroups: &CgroupHost, config: &ContainerConfig, sandbox: &Sandbox) -> HostFacts {
    let sec = &config.security;
    let seccomp_profile = match &sec.seccomp {
        Profile::Localhost(path) if !sec.privileged && path.starts_with('/') => {
            Some(read_profile(Path::new(path)))
        }
        _ => None,
    };
    let hostname_file = if spec::pod_hostname(sandbox).is_empty() {
        std::fs::read_to_string(sandbox.hostname_file())
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    } else {
        String::new()
    };
    HostFacts {
        bounding_set: process::capability_bounding_set(),
        apparmor: process::apparmor_enabled(),
        selinux: process::selinux_enabled(),
        min_oom_score_adj: (!process::has_capability(process::CAP_SYS_RESOURCE))
            .then(process::own_oom_score_adj),
        cgroups: cgroups.clone(),
        host_devices: if sec.privileged {
            host_devices()
        } else {
            Vec::new()
        },
        requested_devices: config
            .devices
            .iter()
            .map(|d| (d.host_path.clone(), device_at(Path::new(&d.host_path))))
            .collect(),
        mount_sources: config
            .mounts
            .iter()
            .map(|m| {
                let resolved = std::fs::canonicalize(&m.host_path).map_err(|e| e.to_string());
                (m.host_path.clone(), resolved)
            })
            .collect(),
        seccomp_profile,
        hostname_file,
    }
}

/// The device node described by `meta` at `path`; `None` when it is not one.
fn node(path: &Path, meta: &std::fs::Metadata) -> Option<LinuxDevice> {
    let ft = meta.file_type();
    let typ = if ft.is_char_device() {
        LinuxDeviceType::C
    } else if ft.is_block_device() {
        LinuxDeviceType::B
    } else {
        return None;
    };
    let rdev = meta.rdev();
    let mut d = LinuxDevice::default();
    d.set_path(path.to_path_buf());
    d.set_typ(typ);
    d.set_major(nix::sys::stat::major(rdev) as i64);
    d.set_minor(nix::sys::stat::minor(rdev) as i64);
    d.set_file_mode(Some(meta.mode() & 0o777));
    d.set_uid(Some(meta.uid()));
    d.set_gid(Some(meta.gid()));
    Some(d)
}

/// What is at `path` (symlinks followed), which a request names as a device.
fn device_at(path: &Path) -> HostDevice {
    match std::fs::metadata(path) {
        Ok(meta) => node(path, &meta).map_or(HostDevice::NotADevice, HostDevice::Node),
        Err(e) => HostDevice::Unusable(e.to_string()),
    }
}

/// Every device node under the host's /dev (not following symlinks,
/// skipping [`SKIPPED_DEV_DIRS`], /dev/console and /dev/ptmx); what cannot
/// be read is left out.
fn host_devices() -> Vec<LinuxDevice> {
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
            if meta.file_type().is_dir() {
                if !SKIPPED_DEV_DIRS.iter().any(|s| path == Path::new(s)) {
                    stack.push(path);
                }
                continue;
            }
            let Some(d) = node(&path, &meta) else {
                continue;
            };
            if path == Path::new("/dev/console") || path == Path::new("/dev/ptmx") {
                continue;
            }
            out.push(d);
        }
    }
    out
}

/// Reads a Localhost seccomp profile without blocking on a FIFO or reading
/// more than [`MAX_SECCOMP_PROFILE`].
fn read_profile(path: &Path) -> ProfileFile {
    match fsutil::open_nonblocking(path, false) {
        Ok(file) => match fsutil::read_regular_capped(file, MAX_SECCOMP_PROFILE) {
            Ok(data) => ProfileFile::Read(data),
            Err(why) => ProfileFile::Refused(why),
        },
        Err(e) => ProfileFile::CannotOpen(e.to_string()),
    }
}

/// A host id no pod is given, for the user namespace the probe idmaps with.
const PROBE_HOST_ID: u32 = 1 << 31;

/// What the kernel lets crust make for containers, probed once at start:
/// recursive read-only mounts, and idmapped mounts on the filesystem of
/// `root` (where the layers are), which user-namespaced pods need.
pub fn mount_features(root: &Path) -> crate::host::MountFeatures {
    let rro = super::bind::recursive_read_only_supported();
    let idmap = idmap_supported(root);
    if let Err(why) = &idmap {
        tracing::warn!(root = %root.display(), "pods with their own user namespace cannot run here: {why:#}");
    }
    crate::host::MountFeatures {
        recursive_read_only_mounts: rro,
        user_namespaces: idmap.is_ok(),
    }
}

/// Whether the filesystem holding `root` can be idmapped, tried through a
/// probe user namespace; the kernel's refusal if not.
pub(crate) fn idmap_supported(root: &Path) -> anyhow::Result<()> {
    let one = crust_cni::userns::IdMapping {
        inside: 0,
        outside: PROBE_HOST_ID,
        count: 1,
    };
    let holder = crust_cni::userns::Holder::spawn(one, one, nix::sched::CloneFlags::empty())?;
    let userns = std::fs::File::open(holder.ns_path("user"))?;
    super::bind::idmap_supported(root, &userns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::config::{Device, Mount};
    use crate::sandbox::SandboxState;
    use crate::sandbox::config::NamespaceMode;

    /// A fresh directory for one test's files.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("crust-facts-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    const NO_CGROUPS: CgroupHost = CgroupHost {
        v2: false,
        cpu: false,
        cpuset: false,
        memory: false,
        memory_swap: false,
        hugetlb: false,
    };

    fn sandbox(dir: &Path) -> Sandbox {
        Sandbox {
            id: "sb".into(),
            config: Default::default(),
            created_at: 1,
            handler: "runc".into(),
            state: SandboxState::Ready,
            dir: dir.to_path_buf(),
            netns: None,
            ipcns: None,
            utsns: None,
            userns: None,
            hostname: "pod".into(),
            ips: Vec::new(),
            shm: dir.join("shm"),
            shm_mounted: false,
            infra_pid: None,
            owed: Vec::new(),
            leftover: false,
        }
    }

    #[test]
    fn looks_up_what_the_request_names() {
        let dir = scratch("request");
        std::fs::write(dir.join("regular"), "x").unwrap();
        std::fs::write(dir.join("profile.json"), "{}").unwrap();
        std::os::unix::fs::symlink(&dir, dir.join("link")).unwrap();
        let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
        let devices = ["/dev/null", &path("regular"), &path("gone")]
            .iter()
            .map(|p| Device {
                container_path: "/dev/x".into(),
                host_path: p.to_string(),
                permissions: String::new(),
            })
            .collect();
        let mounts = [path("link"), path("gone")]
            .into_iter()
            .map(|host_path| Mount {
                container_path: "/m".into(),
                host_path,
                ..Default::default()
            })
            .collect();
        let mut cfg = ContainerConfig {
            devices,
            mounts,
            ..Default::default()
        };
        cfg.security.seccomp = Profile::Localhost(path("profile.json"));
        let facts = probe(&NO_CGROUPS, &cfg, &sandbox(&dir));

        let Some(HostDevice::Node(null)) = facts.requested_devices.get("/dev/null") else {
            panic!("/dev/null is a device: {:?}", facts.requested_devices);
        };
        assert_eq!(
            (null.typ(), null.major(), null.minor()),
            (LinuxDeviceType::C, 1, 3)
        );
        assert_eq!(null.path(), Path::new("/dev/null"));
        assert_eq!(
            facts.requested_devices.get(&path("regular")),
            Some(&HostDevice::NotADevice)
        );
        assert!(matches!(
            facts.requested_devices.get(&path("gone")),
            Some(HostDevice::Unusable(_))
        ));
        assert_eq!(
            facts.mount_sources.get(&path("link")),
            Some(&Ok(std::fs::canonicalize(&dir).unwrap()))
        );
        assert!(matches!(
            facts.mount_sources.get(&path("gone")),
            Some(Err(_))
        ));
        assert_eq!(
            facts.seccomp_profile,
            Some(ProfileFile::Read(b"{}".to_vec()))
        );
        assert!(
            facts.host_devices.is_empty(),
            "only for a privileged container"
        );
        assert_eq!(facts.hostname_file, "", "the pod has a hostname of its own");
        assert_eq!(facts.cgroups, NO_CGROUPS);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reads_only_what_applies() {
        let dir = scratch("applies");
        std::fs::write(dir.join("hostname"), "node-1\n").unwrap();
        let mut sb = sandbox(&dir);
        sb.config.namespaces.network = NamespaceMode::Node;
        let mut cfg = ContainerConfig::default();
        cfg.security.seccomp = Profile::Localhost(dir.to_string_lossy().into_owned());
        let facts = probe(&NO_CGROUPS, &cfg, &sb);
        assert_eq!(facts.hostname_file, "node-1");
        assert!(
            matches!(facts.seccomp_profile, Some(ProfileFile::Refused(why)) if why.contains("directory"))
        );

        cfg.security.seccomp = Profile::Localhost("relative.json".into());
        assert_eq!(probe(&NO_CGROUPS, &cfg, &sb).seccomp_profile, None);
        cfg.security.seccomp = Profile::Localhost("/nonexistent/profile.json".into());
        assert!(matches!(
            probe(&NO_CGROUPS, &cfg, &sb).seccomp_profile,
            Some(ProfileFile::CannotOpen(_))
        ));
        cfg.security.privileged = true;
        let facts = probe(&NO_CGROUPS, &cfg, &sb);
        assert_eq!(facts.seccomp_profile, None);
        assert!(
            facts
                .host_devices
                .iter()
                .any(|d| d.path() == Path::new("/dev/null")),
            "a privileged container gets the host's /dev"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn host_devices_skip_the_containers_own() {
        let devices = host_devices();
        assert!(devices.iter().all(|d| {
            let p = d.path();
            p != Path::new("/dev/ptmx")
                && p != Path::new("/dev/console")
                && !p.starts_with("/dev/pts")
                && !p.starts_with("/dev/shm")
        }));
    }
}
