//! RunPodSandbox, StopPodSandbox, RemovePodSandbox and the sandbox queries.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use crust_cni::nsfs::{self, Kind, PinRequest, UserPin};

use super::config::SandboxConfig;
use super::{Sandbox, SandboxState, files, network, pidns};
use crate::cleanup::{Cleanup, Step};
use crate::events::EventKind;
use crate::names::Reservation;
use crate::runtime::{Entry, Runtime, if_exists};
use crate::{Error, Result, ids, teardown};

/// ListPodSandbox filter; empty fields match everything.
#[derive(Clone, Debug, Default)]
pub struct SandboxFilter {
    /// Id or unique id prefix.
    pub id: String,
    /// Only sandboxes in this state.
    pub state: Option<SandboxState>,
    /// Labels that must all match.
    pub labels: BTreeMap<String, String>,
}

impl Runtime {
    /// RunPodSandbox: creates the pod's namespaces and files and returns its id.
    /// A retry of a create that outran its deadline gets the first attempt's id.
    /// `deadline` is when the caller stops waiting (see [`crate::names`]).
    pub async fn run_sandbox(
        self: &Arc<Self>,
        cfg: SandboxConfig,
        deadline: Option<Instant>,
    ) -> Result<String> {
        cfg.validate()?;
        let handler = self.host.handlers.for_pod(&cfg.runtime_handler)?;
        if cfg.namespaces.user.is_some() && !self.handler_features(handler).user_namespaces {
            let why = match &handler.probe.user_namespaces {
                Err(why) => why.clone(),
                Ok(()) => format!(
                    "the kernel or the filesystem of {} cannot make idmapped mounts",
                    self.opts.root.display()
                ),
            };
            return Err(Error::FailedPrecondition(format!(
                "pods with their own user namespace cannot run under handler {:?} on this host: {why}",
                handler.spec.name
            )));
        }
        let handler = handler.spec.name.clone();
        let name = cfg.reserved_name();
        let ticket = match self.sandbox_names.reserve(&name, "pod sandbox").await? {
            Reservation::Existing(id) => return Ok(id),
            Reservation::Fresh(t) => t,
        };
        let id = self
            .blocking(move |rt| {
                let id = rt.create_sandbox(cfg, handler)?;
                ticket.complete(&id);
                Ok(id)
            })
            .await?;
        self.sandbox_names.claim_before(&name, &id, deadline);
        Ok(id)
    }

    /// Makes the sandbox of `cfg`, whose containers run under `handler`.
    fn create_sandbox(&self, cfg: SandboxConfig, handler: String) -> Result<String> {
        let sysctls = network::pod_sysctls(&cfg)?;
        if let Some(l) = &cfg.selinux
            && !self.host.facts.selinux()
        {
            return Err(Error::invalid(format!(
                "the pod's selinux_options {l} were asked for, but SELinux is not enabled on this host"
            )));
        }
        if !cfg.host_network() {
            self.host.network.network().map_err(network::net_error)?;
        }
        let id = ids::new_id();
        let _creating = CreatingGuard::new(self, &id);
        let mut undo = Cleanup::default();
        let sandbox = match self.build_sandbox(&id, &cfg, &handler, sysctls, &mut undo) {
            Ok(sb) => sb,
            Err(e) => {
                let owed = self.roll_back(undo);
                if !owed.is_empty() {
                    let dir = self.sandbox_dir(&id);
                    let mut kept = Sandbox::lost(&id, dir, self.host.clock.now_ns());
                    kept.config = cfg;
                    kept.handler = handler;
                    self.keep_failed_sandbox(kept, owed);
                }
                return Err(e);
            }
        };
        undo.disarm();
        self.sandboxes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), Entry::new(sandbox.clone()));
        tracing::info!(%id, "pod sandbox ready");
        self.publish_sandbox_event(&sandbox, EventKind::Started);
        Ok(id)
    }

    /// Makes the sandbox's directory, namespaces, files, shm, PID namespace
    /// holder and network and records it, pushing on `undo` how to take
    /// away each thing made.
    fn build_sandbox(
        &self,
        id: &str,
        cfg: &SandboxConfig,
        handler: &str,
        sysctls: Vec<(String, String)>,
        undo: &mut Cleanup,
    ) -> Result<Sandbox> {
        let host = &self.host;
        let dir = self.sandbox_dir(id);
        fs::DirBuilder::new()
            .mode(0o711)
            .create(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        undo.push(Step::RemoveTree(dir.clone()));

        let hostname = files::effective_hostname(cfg)?;
        let mut pins = Vec::new();
        let ns_dir = dir.join("ns");
        if !cfg.host_network() {
            pins.push((Kind::Net, ns_dir.join("net")));
            pins.push((Kind::Uts, ns_dir.join("uts")));
        }
        if !cfg.host_ipc() {
            pins.push((Kind::Ipc, ns_dir.join("ipc")));
        }
        let pin_path = |k: Kind| {
            pins.iter()
                .find(|(kind, _)| *kind == k)
                .map(|(_, p)| p.clone())
        };
        let (netns, utsns, ipcns) = (
            pin_path(Kind::Net),
            pin_path(Kind::Uts),
            pin_path(Kind::Ipc),
        );
        let user = cfg.namespaces.user.map(|u| UserPin {
            path: ns_dir.join("user"),
            uids: u.uids,
            gids: u.gids,
        });
        let userns = user.as_ref().map(|u| u.path.clone());
        if !pins.is_empty() || user.is_some() {
            fs::create_dir(&ns_dir).with_context(|| format!("creating {}", ns_dir.display()))?;
            let mut paths: Vec<_> = pins.iter().map(|(_, p)| p.clone()).collect();
            paths.extend(userns.clone());
            host.namespaces
                .pin_new(PinRequest {
                    pins,
                    hostname: Some(hostname.clone()),
                    sysctls,
                    user,
                })
                .map_err(|e| match e.downcast_ref::<nsfs::SysctlRefused>() {
                    Some(refused) => Error::invalid(refused.0.clone()),
                    None => Error::Internal(e.context("creating the pod's namespaces")),
                })?;
            for p in paths {
                undo.push(Step::Unpin(p));
            }
        }

        files::write_all(&dir, cfg, &hostname)?;

        let (shm, shm_mounted) = if cfg.host_ipc() {
            ("/dev/shm".into(), false)
        } else {
            let shm = dir.join("shm");
            fs::create_dir(&shm).with_context(|| format!("creating {}", shm.display()))?;
            host.mounts.shm_tmpfs(&shm, self.opts.shm_size)?;
            undo.push(Step::Unmount(shm.clone()));
            (shm, true)
        };

        let infra_pid = if cfg.shared_pid() {
            let pid = pidns::start(host.shim.as_ref(), &dir, userns.as_deref())?;
            undo.push(Step::StopPidHolder(pid));
            Some(pid)
        } else {
            None
        };

        let mut ips = Vec::new();
        if let Some(netns) = &netns {
            let cidr = self
                .pod_cidr
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            let att = network::attachment(id, cfg, netns, &cidr)?;
            // DEL is registered before ADD: a partial ADD is undone too.
            undo.push(Step::DetachNetwork(id.to_string()));
            let attached = host.network.add(&att).map_err(network::net_error)?;
            ips = attached.ips.iter().map(|ip| ip.to_string()).collect();
            tracing::info!(%id, ips = ?ips, "pod network attached");
        }

        let sandbox = Sandbox {
            id: id.to_string(),
            config: cfg.clone(),
            created_at: host.clock.now_ns(),
            handler: handler.to_string(),
            state: SandboxState::Ready,
            dir,
            netns,
            ipcns,
            utsns,
            userns,
            hostname,
            ips,
            shm,
            shm_mounted,
            infra_pid,
            owed: Vec::new(),
            leftover: false,
        };
        self.sandbox_records.save(id, &sandbox)?;
        Ok(sandbox)
    }

    /// StopPodSandbox: kills the pod's containers and releases its namespaces and
    /// shm. Stopping a stopped or unknown sandbox succeeds.
    pub async fn stop_sandbox(self: &Arc<Self>, id: &str) -> Result<()> {
        let Some(entry) = if_exists(self.sandbox_entry(id))? else {
            return Ok(());
        };
        self.locked(&entry.clone(), move |rt| rt.stop_sandbox_locked(&entry))
            .await
    }

    fn stop_sandbox_locked(&self, entry: &Entry<Sandbox>) -> Result<()> {
        self.settle_sandbox(entry)?;
        let sb = entry.snapshot();
        for c in self.containers_of(&sb.id) {
            self.stop_container_entry(&c, 0)?;
        }
        self.release_sandbox_resources(&sb)?;
        if sb.state != SandboxState::NotReady {
            let stopped = {
                let mut rec = entry.rec();
                rec.state = SandboxState::NotReady;
                self.sandbox_records.save(&rec.id, &rec)?;
                rec.clone()
            };
            self.publish_sandbox_event(&stopped, EventKind::Stopped);
        }
        tracing::info!(id = %sb.id, "pod sandbox stopped");
        Ok(())
    }

    fn release_sandbox_resources(&self, sb: &Sandbox) -> Result<()> {
        let host = &self.host;
        if sb.netns.is_some() {
            host.network.del(&sb.id).map_err(network::net_error)?;
        }
        for p in sb.pinned_namespaces() {
            host.namespaces.unpin(p)?;
        }
        if sb.shm_mounted {
            host.mounts.unmount(&sb.shm)?;
        }
        match sb.infra_pid {
            Some(pid) => host.shim.stop_pid_holder(pid)?,
            // A sandbox whose record was lost may have had one.
            None if sb.leftover => pidns::stop_noted(host.shim.as_ref(), &sb.dir)?,
            None => {}
        }
        Ok(())
    }

    /// RemovePodSandbox: removes the pod's containers, then the pod. Removing an
    /// unknown sandbox succeeds.
    pub async fn remove_sandbox(self: &Arc<Self>, id: &str) -> Result<()> {
        let Some(entry) = if_exists(self.sandbox_entry(id))? else {
            return Ok(());
        };
        self.locked(&entry.clone(), move |rt| {
            let sb = entry.snapshot();
            if !rt
                .sandboxes
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(&sb.id)
            {
                return Ok(());
            }
            rt.settle_sandbox(&entry)?;
            for c in rt.containers_of(&sb.id) {
                rt.remove_container_entry(&c)?;
            }
            rt.release_sandbox_resources(&sb)?;
            teardown::remove_tree(rt.host.mounts.as_ref(), &sb.dir)?;
            rt.sandbox_records.delete(&sb.id)?;
            rt.sandboxes
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&sb.id);
            rt.sandbox_names.release(&sb.config.reserved_name(), &sb.id);
            tracing::info!(id = %sb.id, "pod sandbox removed");
            rt.publish_sandbox_event(&entry.snapshot(), EventKind::Deleted);
            Ok(())
        })
        .await
    }

    /// PodSandboxStatus: the sandbox record, by id or unique prefix.
    pub fn sandbox_status(&self, id: &str) -> Result<Sandbox> {
        Ok(self.sandbox_entry(id)?.snapshot())
    }

    /// ListPodSandbox.
    pub fn list_sandboxes(&self, filter: &SandboxFilter) -> Vec<Sandbox> {
        let wanted_id = if filter.id.is_empty() {
            None
        } else {
            match self.sandbox_entry(&filter.id) {
                Ok(e) => Some(e.snapshot().id),
                Err(_) => return Vec::new(),
            }
        };
        let mut out: Vec<Sandbox> = self
            .all_sandboxes()
            .iter()
            .map(|e| e.snapshot())
            .filter(|s| wanted_id.as_ref().is_none_or(|id| *id == s.id))
            .filter(|s| filter.state.is_none_or(|st| st == s.state))
            .filter(|s| {
                filter
                    .labels
                    .iter()
                    .all(|(k, v)| s.config.labels.get(k) == Some(v))
            })
            .collect();
        out.sort_by_key(|s| s.created_at);
        out
    }

    /// Checks at startup that a Ready sandbox still has its namespaces (a reboot
    /// empties /run); one that lost them is NotReady.
    pub(crate) fn recover_sandbox(&self, sb: &mut Sandbox) {
        if sb.state != SandboxState::Ready {
            return;
        }
        let lost = sb
            .pinned_namespaces()
            .any(|p| !self.host.namespaces.is_pinned(p))
            || sb
                .infra_pid
                .is_some_and(|pid| !self.host.shim.pid_holder_alive(pid));
        if lost {
            tracing::warn!(id = %sb.id, "pod sandbox lost its namespaces; marking it NotReady");
            sb.state = SandboxState::NotReady;
            if let Err(e) = self.sandbox_records.save(&sb.id, sb) {
                tracing::warn!(id = %sb.id, error = %format!("{e:#}"), "could not record sandbox state");
            }
        }
    }
}

/// Marks a sandbox as being created for as long as it lives.
struct CreatingGuard<'a> {
    rt: &'a Runtime,
    id: String,
}

impl<'a> CreatingGuard<'a> {
    fn new(rt: &'a Runtime, id: &str) -> Self {
        rt.creating_sandboxes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string());
        CreatingGuard {
            rt,
            id: id.to_string(),
        }
    }
}

impl Drop for CreatingGuard<'_> {
    fn drop(&mut self) {
        self.rt
            .creating_sandboxes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}
