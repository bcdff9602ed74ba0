//! Restart recovery and the orphan sweep: what a previous crustd left is
//! loaded (in parallel), what cannot be loaded is kept as an object in an
//! unknown state for kubelet to remove, and what belongs to no object (an
//! interrupted create, a crash between two steps) is taken away.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use crate::container::{Container, ContainerState};
use crate::runtime::{Entry, Runtime};
use crate::sandbox::config::SandboxConfig;
use crate::sandbox::{Sandbox, SandboxState, pidns};
use crate::{Result, teardown};

/// Threads that refresh recovered containers (each may ask runc).
const RECOVERY_THREADS: usize = 8;

impl Runtime {
    /// Loads every recorded sandbox and container, picks up the exits that
    /// happened meanwhile, and sweeps what belongs to no object.
    pub(crate) fn recover(&self) -> Result<()> {
        let (sandboxes, bad) = self.sandbox_records.load_all()?;
        let mut loaded: Vec<Sandbox> = sandboxes.into_iter().map(|(_, sb)| sb).collect();
        for b in bad {
            tracing::error!(id = %b.id, error = %format!("{:#}", b.error), "unreadable sandbox record: the sandbox is kept NotReady for removal");
            loaded.push(self.unreadable_sandbox(&b.id));
        }
        for mut sb in loaded {
            self.recover_sandbox(&mut sb);
            if !sb.leftover {
                self.sandbox_names
                    .insert_owned(&sb.config.reserved_name(), &sb.id);
            }
            self.sandboxes
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(sb.id.clone(), Entry::new(sb));
        }

        let (containers, bad) = self.container_records.load_all()?;
        let mut loaded: Vec<Container> = containers.into_iter().map(|(_, c)| c).collect();
        for b in bad {
            tracing::error!(id = %b.id, error = %format!("{:#}", b.error), "unreadable container record: the container is kept in an unknown state for removal");
            loaded.push(self.unreadable_container(&b.id, &format!("{:#}", b.error)));
        }
        let entries: Vec<Arc<Entry<Container>>> = loaded.into_iter().map(Entry::new).collect();
        let next = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..RECOVERY_THREADS.min(entries.len()) {
                scope.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(entry) = entries.get(i) else { break };
                        self.refresh_container(entry);
                        self.recover_start(entry);
                    }
                });
            }
        });
        for entry in entries {
            let c = entry.snapshot();
            if !c.leftover {
                let name = self.container_reserved_name(&c);
                self.container_names.insert_owned(&name, &c.id);
            }
            self.containers
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(c.id, entry);
        }

        self.sweep_orphans();
        self.collect_orphans();
        let holders: HashSet<String> = self.container_ids();
        if let Err(e) = self.images.release_all_except(&holders) {
            tracing::warn!(error = %format!("{e:#}"), "could not release the image holds of vanished containers");
        }
        tracing::info!(
            sandboxes = self.all_sandboxes().len(),
            containers = self.all_containers().len(),
            "state recovered"
        );
        Ok(())
    }

    /// A container whose record cannot be read: unknown, for StopContainer
    /// to stop what may still run of it and RemoveContainer to take the
    /// rest away. Nothing is done to it before kubelet asks: a record this
    /// crustd cannot read may be one a newer crustd wrote.
    fn unreadable_container(&self, id: &str, error: &str) -> Container {
        let bundle = self.bundle_dir(id);
        let mut c = Container::lost(id, bundle, self.host.clock.now_ns());
        c.message = format!("crustd could not read the container's record: {error}");
        c
    }

    /// A sandbox whose record cannot be read: not ready, with the paths
    /// every sandbox has, so StopPodSandbox and RemovePodSandbox release
    /// whatever of them exists.
    fn unreadable_sandbox(&self, id: &str) -> Sandbox {
        let dir = self.sandbox_dir(id);
        let ns = dir.join("ns");
        let mut sb = Sandbox::lost(id, dir.clone(), self.host.clock.now_ns());
        sb.netns = Some(ns.join("net"));
        sb.utsns = Some(ns.join("uts"));
        sb.ipcns = Some(ns.join("ipc"));
        sb.shm = dir.join("shm");
        sb.shm_mounted = true;
        sb
    }

    /// Retries what kept objects still owe (a rollback step that failed)
    /// and CNI DEL for attachments no sandbox owns any more (crustd died
    /// between ADD and saving the sandbox, or a DEL failed). crustd calls it
    /// every minute and at start.
    pub fn sweep_orphans(&self) {
        for entry in self.all_containers() {
            if entry.rec().owed.is_empty() {
                continue;
            }
            if let Some(_guard) = entry.try_lock_lifecycle()
                && let Err(e) = self.settle_container(&entry)
            {
                tracing::warn!(error = %e, "a container still owes undo steps");
            }
        }
        for entry in self.all_sandboxes() {
            if entry.rec().owed.is_empty() {
                continue;
            }
            if let Some(_guard) = entry.try_lock_lifecycle()
                && let Err(e) = self.settle_sandbox(&entry)
            {
                tracing::warn!(error = %e, "a pod sandbox still owes undo steps");
            }
        }
        self.detach_orphan_networks();
    }

    /// Runs CNI DEL for attachments whose sandbox is not known (and not
    /// being created).
    fn detach_orphan_networks(&self) {
        let mut known = self.sandbox_ids();
        known.extend(
            self.creating_sandboxes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .cloned(),
        );
        for id in self.host.network.attached_ids() {
            if known.contains(&id) {
                continue;
            }
            tracing::warn!(%id, "detaching the network of a pod sandbox that no longer exists");
            if let Err(e) = self.host.network.del(&id) {
                tracing::warn!(%id, error = %e, "CNI DEL of an orphan attachment failed; it is retried");
            }
        }
    }

    /// Removes directories, mounts and runc state that belong to no known
    /// object: what an interrupted create or a crash between steps left.
    fn collect_orphans(&self) {
        let known_containers = self.container_ids();
        let known_sandboxes = self.sandbox_ids();
        for h in self.host.handlers.iter().filter(|h| h.probe.usable.is_ok()) {
            let Ok(ids) = h.runc.list() else { continue };
            for id in ids.iter().filter(|id| !known_containers.contains(*id)) {
                tracing::warn!(%id, handler = %h.spec.name, "deleting OCI runtime container that belongs to no known container");
                if let Err(e) = h.runc.delete(id) {
                    tracing::warn!(%id, handler = %h.spec.name, error = %format!("{e:#}"), "could not delete orphan OCI runtime container");
                }
            }
        }
        let dirs = [
            (self.opts.state.join("containers"), &known_containers),
            (self.opts.root.join("containers"), &known_containers),
            (self.opts.state.join("sandboxes"), &known_sandboxes),
        ];
        for (parent, known) in dirs {
            let Ok(entries) = std::fs::read_dir(&parent) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if known.contains(&name) {
                    continue;
                }
                tracing::warn!(dir = %e.path().display(), "removing directory that belongs to no known object");
                self.host.shim.kill_abandoned(&e.path());
                if let Err(err) = pidns::stop_noted(self.host.shim.as_ref(), &e.path()) {
                    tracing::warn!(dir = %e.path().display(), error = %format!("{err:#}"), "could not stop an orphan PID namespace holder");
                }
                if let Err(err) = teardown::remove_tree(self.host.mounts.as_ref(), &e.path()) {
                    tracing::warn!(dir = %e.path().display(), error = %format!("{err:#}"), "could not remove orphan directory");
                }
            }
        }
    }
}

impl Container {
    /// The record of a container crustd knows only by id (and bundle): in
    /// an unknown state, for kubelet to remove.
    pub(crate) fn lost(id: &str, bundle: PathBuf, now: i64) -> Container {
        Container {
            id: id.to_string(),
            sandbox_id: String::new(),
            config: Default::default(),
            image_id: String::new(),
            image_ref: String::new(),
            image_name: String::new(),
            created_at: now,
            started_at: 0,
            finished_at: 0,
            exit_code: 0,
            reason: "Unknown".to_string(),
            message: String::new(),
            state: ContainerState::Unknown,
            pid: 0,
            shim_pid: 0,
            log_path: String::new(),
            user: Default::default(),
            stop_signal: libc::SIGKILL,
            bundle,
            handler: String::new(),
            cgroup_path: String::new(),
            owed: Vec::new(),
            leftover: true,
        }
    }
}

impl Sandbox {
    /// The record of a sandbox crustd knows only by id (and directory): not
    /// ready, for kubelet to remove.
    pub(crate) fn lost(id: &str, dir: PathBuf, now: i64) -> Sandbox {
        Sandbox {
            id: id.to_string(),
            config: SandboxConfig::default(),
            created_at: now,
            handler: String::new(),
            state: SandboxState::NotReady,
            dir,
            netns: None,
            ipcns: None,
            utsns: None,
            userns: None,
            shm: PathBuf::new(),
            hostname: String::new(),
            ips: Vec::new(),
            shm_mounted: false,
            infra_pid: None,
            owed: Vec::new(),
            leftover: true,
        }
    }
}
