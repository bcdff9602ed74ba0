//! CreateContainer, StartContainer, StopContainer, RemoveContainer, and the
//! container queries, with the state machine kept honest by the shim's exit file.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;

use super::config::ContainerConfig;
use super::{Container, ContainerState, reserved_name, spec, staging, user};
use crate::cleanup::{Cleanup, Step};
use crate::events::EventKind;
use crate::host::{CreateError, Launch};
use crate::names::Reservation;
use crate::runtime::{Entry, Runtime, if_exists};
use crate::sandbox::SandboxState;
use crate::sandbox::config::NamespaceMode;
use crate::sys::runc::RuncStatus;
use crate::timing::Steps;
use crate::{Error, Result, ids};

/// ListContainers filter; empty fields match everything.
#[derive(Clone, Debug, Default)]
pub struct ContainerFilter {
    /// Id or unique id prefix.
    pub id: String,
    /// Only containers in this state.
    pub state: Option<ContainerState>,
    /// Only containers of this sandbox (id or unique prefix).
    pub sandbox_id: String,
    /// Labels that must all match.
    pub labels: BTreeMap<String, String>,
}

impl Runtime {
    /// CreateContainer: builds the rootfs, bundle and shim of a container in a ready
    /// sandbox and returns its id. A retry of a create that outran its deadline gets
    /// the first attempt's id; `deadline` is when the caller stops waiting.
    pub async fn create_container(
        self: &Arc<Self>,
        sandbox_id: &str,
        cfg: ContainerConfig,
        deadline: Option<Instant>,
    ) -> Result<String> {
        cfg.validate()?;
        let sandbox = self.sandbox_entry(sandbox_id)?;
        let sandbox_id = sandbox.snapshot().id;
        let name = reserved_name(&cfg, &sandbox.snapshot().config);
        let ticket = match self.container_names.reserve(&name, "container").await? {
            // A retry gets the first attempt's container only in the same pod
            // sandbox: the name says nothing about which sandbox made it.
            Reservation::Existing(id) => {
                let owner = self.container_entry(&id).map(|e| e.snapshot().sandbox_id);
                return match owner {
                    Ok(owner) if owner == sandbox_id => Ok(id),
                    _ => Err(Error::AlreadyExists(format!(
                        "container name {name} is in use by container {id} of another pod sandbox; remove it first"
                    ))),
                };
            }
            Reservation::Fresh(t) => t,
        };
        let id = self
            .locked(&sandbox.clone(), move |rt| {
                let id = rt.make_container(&sandbox.snapshot(), cfg)?;
                ticket.complete(&id);
                Ok(id)
            })
            .await?;
        self.container_names.claim_before(&name, &id, deadline);
        Ok(id)
    }

    fn make_container(&self, sb: &crate::sandbox::Sandbox, cfg: ContainerConfig) -> Result<String> {
        if !self
            .sandboxes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&sb.id)
        {
            return Err(Error::not_found(format!("pod sandbox {} not found", sb.id)));
        }
        if sb.state != SandboxState::Ready {
            return Err(Error::FailedPrecondition(format!(
                "pod sandbox {} is not ready; containers can only be created in a ready sandbox",
                sb.id
            )));
        }
        let runtime = self
            .host
            .handlers
            .get(&sb.handler)
            .map(|h| h.spec.clone())
            .ok_or_else(|| {
                Error::FailedPrecondition(format!(
                    "pod sandbox {}'s runtime handler {:?} is no longer configured; add it back to the config",
                    sb.id, sb.handler
                ))
            })?;
        let image = self.images.get(&cfg.image).ok_or_else(|| {
            Error::not_found(format!("image {:?} not found; pull it first", cfg.image))
        })?;
        staging::check_user_namespace(&cfg, sb)?;
        let target_pid = match cfg.security.namespaces.pid {
            NamespaceMode::Target => {
                Some(self.target_pid(&cfg.security.namespaces.target_id, &sb.id)?)
            }
            _ => None,
        };
        let log_path = container_log_path(&sb.config.log_directory, &cfg.log_path);
        if let Some(log) = &log_path
            && fs::symlink_metadata(log).is_ok_and(|m| !m.file_type().is_file())
        {
            return Err(Error::invalid(format!(
                "the log path {} exists and is not a regular file (a symlink is not followed)",
                log.display()
            )));
        }
        let id = ids::new_id();
        let mut undo = Cleanup::default();
        let made = self.build_container(
            &Making {
                id: &id,
                sandbox: sb,
                config: &cfg,
                image: &image,
                target_pid,
                log_path: log_path.as_deref(),
                runtime: &runtime,
            },
            &mut undo,
        );
        let container = match made {
            Ok(c) => c,
            Err(e) => {
                let owed = self.roll_back(undo);
                if !owed.is_empty() {
                    let mut kept =
                        Container::lost(&id, self.bundle_dir(&id), self.host.clock.now_ns());
                    kept.sandbox_id = sb.id.clone();
                    kept.config = cfg;
                    kept.image_id = image.id.clone();
                    kept.image_ref = image.id.clone();
                    kept.handler = sb.handler.clone();
                    self.keep_failed_container(kept, owed, &e);
                }
                return Err(e);
            }
        };
        undo.disarm();
        self.watch_exit(&container);
        self.containers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), Entry::new(container));
        tracing::info!(%id, sandbox = %sb.id, "container created");
        self.publish_event(&id, &sb.id, EventKind::Created);
        Ok(id)
    }

    /// Makes the container's bundle, rootfs, log file and shim and records
    /// it, pushing on `undo` how to take away each thing made.
    fn build_container(&self, m: &Making<'_>, undo: &mut Cleanup) -> Result<Container> {
        let (id, sb, cfg, image) = (m.id, m.sandbox, m.config, m.image);
        let mut steps = Steps::new("create", id);
        let bundle = self.bundle_dir(id);
        fs::DirBuilder::new()
            .mode(0o711)
            .create(&bundle)
            .with_context(|| format!("creating {}", bundle.display()))?;
        undo.push(Step::RemoveTree(bundle.clone()));

        let layer = self.layer_dir(id);
        let (upper, work) = (layer.join("upper"), layer.join("work"));
        fs::DirBuilder::new()
            .mode(0o711)
            .create(&layer)
            .with_context(|| format!("creating {}", layer.display()))?;
        undo.push(Step::RemoveDir(layer.clone()));
        for d in [&upper, &work] {
            fs::DirBuilder::new()
                .mode(0o711)
                .create(d)
                .with_context(|| format!("creating {}", d.display()))?;
        }

        steps.done("dirs");
        undo.push(Step::ReleaseImage(id.to_string()));
        self.images.hold(id, image)?;
        steps.done("image lease");

        let rootfs = bundle.join("rootfs");
        fs::create_dir(&rootfs).with_context(|| format!("creating {}", rootfs.display()))?;
        let layers = self.images.layer_dirs(image)?;
        match &sb.userns {
            None => self.host.mounts.overlay(&layers, &upper, &work, &rootfs)?,
            Some(userns) => {
                let lower = self.idmapped_layers(&layers, userns, &bundle.join("lower"), undo)?;
                self.give_upper_to_pod_root(&upper, sb)?;
                let mounted = self.host.mounts.overlay(&lower, &upper, &work, &rootfs);
                self.detach_prepared(&lower);
                mounted.map_err(|e| {
                    Error::FailedPrecondition(format!(
                        "the kernel refused an overlay of idmapped layers for the pod's user namespace: {e:#}"
                    ))
                })?;
            }
        }
        undo.push(Step::Unmount(rootfs.clone()));
        steps.done("overlay");

        let user = user::resolve(&rootfs, &cfg.security, &image.config.user)?;
        let image_name = display_image_name(cfg, image);
        let facts = self.host.facts.for_container(&self.cgroups, cfg, sb);
        let staged = self.stage_mounts(cfg, sb, &facts, &bundle.join("mounts"), undo)?;
        let oci = spec::build(&spec::SpecInput {
            id,
            config: cfg,
            sandbox: sb,
            image: &image.config,
            image_name: &image_name,
            user: &user,
            rootfs: &rootfs,
            target_pid: m.target_pid,
            host: &facts,
            staged_mounts: &staged,
            default_cgroup_parent: &self.opts.default_cgroup_parent,
        })?;
        let cgroup_path = oci
            .linux()
            .as_ref()
            .and_then(|l| l.cgroups_path().as_ref())
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let spec_json = serde_json::to_vec_pretty(&oci).context("encoding config.json")?;
        fs::write(bundle.join("config.json"), spec_json).context("writing config.json")?;
        steps.done("spec");

        if let Some(parent) = m.log_path.and_then(Path::parent) {
            let made: Vec<PathBuf> = parent
                .ancestors()
                .take_while(|d| !d.exists())
                .map(Path::to_path_buf)
                .collect();
            undo.push(Step::RemoveEmptyDirs(made));
            fs::create_dir_all(parent)
                .with_context(|| format!("creating the log directory {}", parent.display()))?;
        }
        // kubelet numbers a container's attempts by the files in its log
        // directory: a create that fails must not leave one behind.
        if let Some(log) = m.log_path.filter(|p| !p.exists()) {
            undo.push(Step::RemoveFile(log.to_path_buf()));
        }

        // Registered before the shim starts: a create that times out or
        // fails after it must not leave the shim, runc or the container's
        // init running.
        undo.push(Step::StopShim {
            id: id.to_string(),
            bundle: bundle.clone(),
            handler: sb.handler.clone(),
        });
        let created = self
            .host
            .shim
            .launch(&Launch {
                id,
                runtime: m.runtime,
                bundle: &bundle,
                log_path: m.log_path,
                tty: cfg.tty,
                stdin: cfg.stdin,
                stdin_once: cfg.stdin_once,
            })
            .map_err(|e| match e {
                CreateError::Runc(msg) => Error::FailedPrecondition(format!(
                    "the OCI runtime could not create the container: {msg}"
                )),
                CreateError::Shim(e) => Error::Internal(e.context("starting crust-shim")),
            })?;
        self.detach_prepared(staged.values());
        steps.done("shim + runc create");

        let stop_signal = parse_signal(&image.config.stop_signal).unwrap_or(libc::SIGTERM);
        let image_ref = image
            .repo_digests
            .first()
            .cloned()
            .unwrap_or_else(|| image.id.clone());
        let container = Container {
            id: id.to_string(),
            sandbox_id: sb.id.clone(),
            config: cfg.clone(),
            image_id: image.id.clone(),
            image_ref,
            image_name,
            created_at: self.host.clock.now_ns(),
            started_at: 0,
            finished_at: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            state: ContainerState::Created,
            pid: created.pid,
            shim_pid: created.shim_pid,
            log_path: m
                .log_path
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default(),
            user,
            stop_signal,
            bundle,
            handler: sb.handler.clone(),
            cgroup_path,
            owed: Vec::new(),
            leftover: false,
        };
        self.container_records.save(id, &container)?;
        steps.done("record");
        Ok(container)
    }

    fn target_pid(&self, target: &str, sandbox_id: &str) -> Result<i32> {
        let entry = self.container_entry(target).map_err(|_| {
            Error::invalid(format!(
                "PID namespace target container {target:?} not found"
            ))
        })?;
        self.refresh_unless_busy(&entry);
        let c = entry.snapshot();
        if c.sandbox_id != sandbox_id {
            return Err(Error::invalid(format!(
                "PID namespace target container {target:?} is in another pod"
            )));
        }
        if c.state != ContainerState::Running {
            return Err(Error::FailedPrecondition(format!(
                "PID namespace target container {target:?} is not running"
            )));
        }
        Ok(c.pid)
    }

    /// StartContainer: lets a created container run.
    pub async fn start_container(self: &Arc<Self>, id: &str) -> Result<()> {
        let entry = self.container_entry(id)?;
        self.locked(&entry.clone(), move |rt| {
            rt.refresh_container(&entry);
            let c = entry.snapshot();
            if c.state != ContainerState::Created {
                return Err(Error::FailedPrecondition(format!(
                    "container {} is {}, only a created container can be started",
                    c.id,
                    state_word(c.state)
                )));
            }
            let mut steps = Steps::new("start", &c.id);
            let started_at = rt.host.clock.now_ns();
            if let Err(e) = rt.oci_runtime(&c)?.start(&c.id) {
                rt.refresh_container(&entry);
                return Err(Error::Internal(e.context("starting the container")));
            }
            steps.done("runc start");
            {
                let mut rec = entry.rec();
                if rec.state == ContainerState::Created {
                    rec.state = ContainerState::Running;
                }
                rec.started_at = started_at;
                rec.finished_at = rec.finished_at.max(started_at);
                rt.container_records.save(&rec.id, &rec)?;
            }
            steps.done("record");
            tracing::info!(id = %c.id, "container started");
            rt.publish_event(&c.id, &c.sandbox_id, EventKind::Started);
            // An exit that came before the record said running is recorded
            // (and announced) now, after the start.
            rt.refresh_container(&entry);
            Ok(())
        })
        .await?;
        Ok(())
    }

    /// RemoveContainer: kills it if needed and removes everything it had. Removing an
    /// unknown container succeeds.
    pub async fn remove_container(self: &Arc<Self>, id: &str) -> Result<()> {
        let Some(entry) = if_exists(self.container_entry(id))? else {
            return Ok(());
        };
        self.stop_entry(&entry, 0).await?;
        self.locked(&entry.clone(), move |rt| rt.remove_locked(&entry))
            .await
    }

    /// Removes a container from a blocking thread (RemovePodSandbox's).
    pub(crate) fn remove_container_entry(&self, entry: &Entry<Container>) -> Result<()> {
        self.stop_container_entry(entry, 0)?;
        let _guard = entry.lock_lifecycle();
        self.remove_locked(entry)
    }

    /// Removes a stopped container, under its lifecycle lock (its stop
    /// settled whatever undo steps it owed).
    fn remove_locked(&self, entry: &Entry<Container>) -> Result<()> {
        let c = entry.snapshot();
        if !self
            .containers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&c.id)
        {
            return Ok(());
        }
        let mut steps = Steps::new("remove", &c.id);
        self.settle(&c)?;
        steps.done("settle");
        self.trash.discard(&c.bundle, &self.trash_bin(&c.bundle))?;
        let layer = self.layer_dir(&c.id);
        self.trash.discard(&layer, &self.trash_bin(&layer))?;
        steps.done("directories");
        self.images.release(&c.id)?;
        steps.done("image lease");
        self.container_records.delete(&c.id)?;
        steps.done("record");
        let name = self.container_reserved_name(&c);
        self.containers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&c.id);
        self.container_names.release(&name, &c.id);
        tracing::info!(id = %c.id, "container removed");
        self.publish_event(&c.id, &c.sandbox_id, EventKind::Deleted);
        Ok(())
    }

    /// ContainerStatus: the container record, by id or unique prefix, with any exit
    /// that happened since the last look recorded.
    pub fn container_status(&self, id: &str) -> Result<Container> {
        let entry = self.container_entry(id)?;
        self.refresh_unless_busy(&entry);
        Ok(entry.snapshot())
    }

    /// ListContainers.
    pub fn list_containers(&self, filter: &ContainerFilter) -> Vec<Container> {
        let wanted_id = if filter.id.is_empty() {
            None
        } else {
            match self.container_entry(&filter.id) {
                Ok(e) => Some(e.snapshot().id),
                Err(_) => return Vec::new(),
            }
        };
        let wanted_sandbox = if filter.sandbox_id.is_empty() {
            None
        } else {
            match self.sandbox_entry(&filter.sandbox_id) {
                Ok(e) => Some(e.snapshot().id),
                Err(_) => return Vec::new(),
            }
        };
        // Exits are recorded as they happen (see `exit_watch`): listing
        // reads the records without probing every container.
        let mut out: Vec<Container> = self
            .all_containers()
            .iter()
            .map(|e| e.snapshot())
            .filter(|c| wanted_id.as_ref().is_none_or(|id| *id == c.id))
            .filter(|c| wanted_sandbox.as_ref().is_none_or(|id| *id == c.sandbox_id))
            .filter(|c| filter.state.is_none_or(|s| s == c.state))
            .filter(|c| {
                filter
                    .labels
                    .iter()
                    .all(|(k, v)| c.config.labels.get(k) == Some(v))
            })
            .collect();
        out.sort_by_key(|c| c.created_at);
        out
    }

    /// ReopenContainerLog: asks the shim to reopen the log file after rotation.
    pub async fn reopen_container_log(self: &Arc<Self>, id: &str) -> Result<()> {
        let entry = self.container_entry(id)?;
        self.blocking(move |rt| {
            rt.refresh_unless_busy(&entry);
            let c = entry.snapshot();
            if c.state != ContainerState::Running {
                return Err(Error::FailedPrecondition(format!(
                    "container {} is {}; logs are reopened only for running containers",
                    c.id,
                    state_word(c.state)
                )));
            }
            rt.host
                .shim
                .control(&c.bundle, crust_shim_protocol::control::Request::ReopenLog)
                .map_err(Error::Internal)
        })
        .await
    }

    pub(crate) fn containers_of(&self, sandbox_id: &str) -> Vec<Arc<Entry<Container>>> {
        self.all_containers()
            .into_iter()
            .filter(|e| e.rec().sandbox_id == sandbox_id)
            .collect()
    }

    /// [`Runtime::refresh_container`] for callers outside the lifecycle
    /// calls: skipped while one of them runs on the container (it records
    /// the exit itself, in order with its own events). `None` when skipped.
    pub(crate) fn refresh_unless_busy(&self, entry: &Entry<Container>) -> Option<ContainerState> {
        let _guard = entry.try_lock_lifecycle()?;
        Some(self.refresh_container(entry))
    }

    /// Picks up an exit the shim recorded (or the loss of the shim) and persists it,
    /// publishing the change. Returns the state after the refresh. The caller
    /// holds the container's lifecycle lock, so the events of one container
    /// go out in the order its state changed.
    pub(crate) fn refresh_container(&self, entry: &Entry<Container>) -> ContainerState {
        let (before, after, id, sandbox_id) = {
            let mut c = entry.rec();
            let before = c.state;
            let after = self.refresh_locked(&mut c);
            (before, after, c.id.clone(), c.sandbox_id.clone())
        };
        if before != after {
            let kind = match after {
                ContainerState::Running => Some(EventKind::Started),
                ContainerState::Exited => Some(EventKind::Stopped),
                _ => None,
            };
            if let Some(kind) = kind {
                self.publish_event(&id, &sandbox_id, kind);
            }
        }
        after
    }

    /// [`Runtime::refresh_container`] on the locked record.
    fn refresh_locked(&self, c: &mut Container) -> ContainerState {
        if !matches!(c.state, ContainerState::Created | ContainerState::Running) {
            return c.state;
        }
        let shim = &self.host.shim;
        let (code, at, message) = match shim.read_exit(&c.bundle) {
            Some(exit) => (exit.exit_code, exit.exited_at, String::new()),
            None => {
                if shim.alive(c.shim_pid) {
                    return c.state;
                }
                // Re-check: the shim may have written the file just before exiting.
                if let Some(exit) = shim.read_exit(&c.bundle) {
                    (exit.exit_code, exit.exited_at, String::new())
                } else {
                    match self.host.runtime(&c.handler).and_then(|r| r.status(&c.id)) {
                        Ok(RuncStatus::Running) => {
                            self.record_started(c);
                            return c.state;
                        }
                        Ok(RuncStatus::Created) => return c.state,
                        _ => (
                            255,
                            self.host.clock.now_ns(),
                            "crust-shim exited without recording the container's exit status"
                                .to_string(),
                        ),
                    }
                }
            }
        };
        c.state = ContainerState::Exited;
        c.exit_code = code;
        c.finished_at = at.max(c.started_at).max(c.created_at);
        c.reason = if code == 0 {
            "Completed"
        } else if self.oom_killed(&c.cgroup_path) {
            "OOMKilled"
        } else {
            "Error"
        }
        .to_string();
        c.message = message;
        self.persist(c);
        self.exited(&c.id);
        tracing::info!(id = %c.id, exit_code = code, "container exited");
        c.state
    }

    /// At restart: a created container that runc already runs was started
    /// by a crustd that died before recording it. Without this its record
    /// would say created for good, and every StartContainer would fail.
    pub(crate) fn recover_start(&self, entry: &Entry<Container>) {
        let mut c = entry.rec();
        if c.state == ContainerState::Created
            && matches!(
                self.host.runtime(&c.handler).and_then(|r| r.status(&c.id)),
                Ok(RuncStatus::Running)
            )
        {
            tracing::info!(id = %c.id, "container was started before the restart");
            self.record_started(&mut c);
        }
    }

    /// Records a created container as running, runc having started it.
    fn record_started(&self, c: &mut Container) {
        if c.state == ContainerState::Created {
            c.state = ContainerState::Running;
            c.started_at = self.host.clock.now_ns();
            self.persist(c);
        }
    }

    fn persist(&self, c: &Container) {
        if let Err(e) = self.container_records.save(&c.id, c) {
            tracing::error!(id = %c.id, error = %format!("{e:#}"), "could not record container state");
        }
    }
}

/// The image as people name it, for ContainerStatus and annotations: what
/// the user wrote in the pod spec (kubelet passes it as
/// `user_specified_image` and the image id as `image`), else the name the
/// client gave, else the image's first tag when the client gave an id.
/// What [`Runtime::build_container`] makes a container of.
struct Making<'a> {
    id: &'a str,
    sandbox: &'a crate::sandbox::Sandbox,
    config: &'a ContainerConfig,
    image: &'a crate::image::Image,
    target_pid: Option<i32>,
    log_path: Option<&'a Path>,
    /// The OCI runtime of the pod's handler.
    runtime: &'a crate::host::HandlerSpec,
}

fn display_image_name(cfg: &ContainerConfig, image: &crate::image::Image) -> String {
    if !cfg.user_specified_image.is_empty() {
        return cfg.user_specified_image.clone();
    }
    let hex = cfg.image.trim_start_matches("sha256:");
    let by_id = !hex.is_empty()
        && hex.bytes().all(|b| b.is_ascii_hexdigit())
        && image.id.trim_start_matches("sha256:").starts_with(hex);
    match image.repo_tags.first() {
        Some(tag) if by_id => tag.clone(),
        _ => cfg.image.clone(),
    }
}

/// The CRI log file of a container: the pod's log directory joined with the
/// container's log path; None when either is empty.
pub(crate) fn container_log_path(log_directory: &str, log_path: &str) -> Option<PathBuf> {
    if log_directory.is_empty() || log_path.is_empty() {
        return None;
    }
    Some(Path::new(log_directory).join(log_path))
}

fn state_word(s: ContainerState) -> &'static str {
    match s {
        ContainerState::Created => "created",
        ContainerState::Running => "running",
        ContainerState::Exited => "exited",
        ContainerState::Unknown => "in an unknown state",
    }
}

/// Parses an image's StopSignal ("SIGTERM", "TERM", "15").
pub(crate) fn parse_signal(s: &str) -> Option<i32> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(n) = s.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<nix::sys::signal::Signal>()
        .ok()
        .map(|sig| sig as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_signals() {
        assert_eq!(parse_signal("SIGTERM"), Some(libc::SIGTERM));
        assert_eq!(parse_signal("quit"), Some(libc::SIGQUIT));
        assert_eq!(parse_signal("9"), Some(9));
        assert_eq!(parse_signal(""), None);
        assert_eq!(parse_signal("SIGNOPE"), None);
    }

    #[test]
    fn image_names_people_read() {
        let image = crate::image::Image {
            id: format!("sha256:{}", "ab".repeat(32)),
            repo_tags: vec!["registry.k8s.io/pause:3.10".into()],
            repo_digests: Vec::new(),
            size: 0,
            config: Default::default(),
            layers: Vec::new(),
            manifest_digests: Vec::new(),
            pulled_at: 0,
        };
        let named = |image_field: &str, user: &str| {
            let cfg = ContainerConfig {
                image: image_field.into(),
                user_specified_image: user.into(),
                ..Default::default()
            };
            display_image_name(&cfg, &image)
        };
        assert_eq!(named(&image.id, "pause:3.10"), "pause:3.10");
        assert_eq!(named(&image.id, ""), "registry.k8s.io/pause:3.10");
        assert_eq!(named("abab", ""), "registry.k8s.io/pause:3.10");
        assert_eq!(named("pause:3.10", ""), "pause:3.10");
    }

    #[test]
    fn log_paths() {
        assert_eq!(
            container_log_path("/var/log/pods/x", "c/0.log"),
            Some(PathBuf::from("/var/log/pods/x/c/0.log"))
        );
        assert_eq!(container_log_path("", "c/0.log"), None);
        assert_eq!(container_log_path("/var/log", ""), None);
    }
}
