//! Mounts crust prepares for a container before runc runs it, where runc 1.1
//! cannot: the image layers idmapped for a pod with its own user namespace
//! (so the rootfs is usable inside it without copying or chowning a layer),
//! and bind mounts that are idmapped or recursively read-only.
//!
//! Each is a private copy of a tree, attached under the bundle: runc binds
//! it into the container, and the copy keeps its idmapping and read-only
//! flags. Once the overlay is up (it holds its own copies of its layers) or
//! runc has made the container, the prepared mounts are detached again.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::chown;
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::config::ContainerConfig;
use crate::cleanup::{Cleanup, Step};
use crate::container::spec::HostFacts;
use crate::host::BindMount;
use crate::runtime::Runtime;
use crate::sandbox::Sandbox;
use crate::sandbox::config::NamespaceMode;
use crate::sys::bind::Unsupported;
use crate::{Error, Result};

/// Refuses a container whose user namespace differs from its pod's (a
/// container cannot have one of its own) and idmapped mounts whose mappings
/// are not the pod's.
pub(crate) fn check_user_namespace(cfg: &ContainerConfig, sb: &Sandbox) -> Result<()> {
    let pod = sb.config.namespaces.user;
    if let Some(own) = cfg.security.namespaces.user
        && Some(own) != pod
    {
        return Err(Error::invalid(
            "the container's user namespace mappings differ from its pod's; containers join their pod's user namespace",
        ));
    }
    if pod.is_some() && cfg.security.namespaces.pid == NamespaceMode::Node {
        return Err(Error::invalid(
            "a container of a pod with its own user namespace cannot use the node's PID namespace",
        ));
    }
    for m in &cfg.mounts {
        if m.idmap.is_some() && m.idmap != pod {
            return Err(Error::invalid(format!(
                "the mount at {:?} asks for id mappings other than its pod's user namespace mappings; crust idmaps mounts only with those",
                m.container_path
            )));
        }
    }
    Ok(())
}

/// A failure to prepare a mount: the host's inability is a failed
/// precondition, anything else an internal error.
fn prepare_error(e: anyhow::Error) -> Error {
    match e.downcast_ref::<Unsupported>() {
        Some(u) => Error::FailedPrecondition(u.0.clone()),
        None => Error::Internal(e),
    }
}

impl Runtime {
    /// Attaches an idmapped copy of each layer (through the pod's user
    /// namespace at `userns`) under `dir`, and returns their paths in the
    /// layers' order.
    pub(super) fn idmapped_layers(
        &self,
        layers: &[PathBuf],
        userns: &Path,
        dir: &Path,
        undo: &mut Cleanup,
    ) -> Result<Vec<PathBuf>> {
        fs::create_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
        let how = BindMount {
            idmap: Some(userns.to_path_buf()),
            ..Default::default()
        };
        layers
            .iter()
            .enumerate()
            .map(|(i, layer)| self.attach_prepared(layer, &dir.join(i.to_string()), &how, undo))
            .collect()
    }

    /// Makes `target` (a directory, or a file for a file `source`) and
    /// attaches on it the copy of `source` that `how` describes, pushing
    /// its detach on `undo`; returns `target`.
    fn attach_prepared(
        &self,
        source: &Path,
        target: &Path,
        how: &BindMount,
        undo: &mut Cleanup,
    ) -> Result<PathBuf> {
        if source.is_dir() {
            fs::create_dir(target)
        } else {
            fs::write(target, b"")
        }
        .with_context(|| format!("creating {}", target.display()))?;
        undo.push(Step::Unmount(target.to_path_buf()));
        self.host
            .mounts
            .bind(source, target, how)
            .map_err(prepare_error)?;
        Ok(target.to_path_buf())
    }

    /// Gives the empty writable layer to the pod's root, so that the root
    /// directory and what the container creates belong to it.
    pub(super) fn give_upper_to_pod_root(&self, upper: &Path, sb: &Sandbox) -> Result<()> {
        if let Some(user) = sb.config.namespaces.user {
            let (uid, gid) = user.host_root();
            chown(upper, Some(uid), Some(gid))
                .with_context(|| format!("giving {} to the pod's root", upper.display()))?;
        }
        Ok(())
    }

    /// Prepares, under `dir`, each bind mount of `cfg` that is idmapped or
    /// recursively read-only; returns their paths by the mount's index.
    pub(super) fn stage_mounts(
        &self,
        cfg: &ContainerConfig,
        sb: &Sandbox,
        facts: &HostFacts,
        dir: &Path,
        undo: &mut Cleanup,
    ) -> Result<BTreeMap<usize, PathBuf>> {
        let mut staged = BTreeMap::new();
        for (i, m) in cfg.mounts.iter().enumerate() {
            if !m.recursive_read_only && m.idmap.is_none() {
                continue;
            }
            // An unusable source is refused when the spec is built.
            let Some(Ok(source)) = facts.mount_sources.get(&m.host_path) else {
                continue;
            };
            if staged.is_empty() {
                fs::create_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
            }
            let how = BindMount {
                recursive: true,
                read_only: m.recursive_read_only,
                idmap: m.idmap.and(sb.userns.clone()),
            };
            let target = self.attach_prepared(source, &dir.join(i.to_string()), &how, undo)?;
            staged.insert(i, target);
        }
        Ok(staged)
    }

    /// Detaches prepared mounts once what uses them holds its own copies.
    pub(super) fn detach_prepared<'a>(&self, mounts: impl IntoIterator<Item = &'a PathBuf>) {
        for m in mounts {
            if let Err(e) = self.host.mounts.unmount(m) {
                tracing::warn!(mount = %m.display(), error = %format!("{e:#}"), "could not detach a prepared mount; it goes with the bundle");
            }
        }
    }
}
