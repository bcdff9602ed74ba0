//! Undo steps taken against the host: a failed create's rollback, and the
//! steps kept objects still owe, settled by their Stop, their Remove and the
//! periodic sweep.

use crate::cleanup::{self, Cleanup, Step};
use crate::container::{Container, ContainerState};
use crate::runtime::{Entry, Runtime};
use crate::sandbox::Sandbox;
use crate::{Error, Result, fsutil, teardown};

impl Runtime {
    /// Takes one undo step.
    fn take_step(&self, step: &Step) -> anyhow::Result<()> {
        let host = &self.host;
        match step {
            Step::RemoveTree(p) => teardown::remove_tree(host.mounts.as_ref(), p),
            Step::RemoveDir(p) => fsutil::remove_dir_all_if_exists(p),
            Step::RemoveFile(p) => fsutil::remove_file_if_exists(p),
            Step::RemoveEmptyDirs(dirs) => {
                dirs.iter().try_for_each(|d| fsutil::remove_dir_if_empty(d))
            }
            Step::ReleaseImage(lease) => self.images.release(lease).map_err(anyhow::Error::from),
            Step::Unmount(p) => host.mounts.unmount(p),
            Step::StopShim {
                id,
                bundle,
                handler,
            } => {
                host.shim.kill_abandoned(bundle);
                self.oci_delete(handler, id)
            }
            Step::Unpin(p) => host.namespaces.unpin(p),
            Step::StopPidHolder(pid) => host.shim.stop_pid_holder(*pid),
            Step::DetachNetwork(id) => host.network.del(id).map_err(anyhow::Error::from),
        }
    }

    /// Takes `steps` in order; returns the ones that failed.
    fn take_steps(&self, steps: &[Step]) -> Vec<Step> {
        cleanup::settle(steps, |s| self.take_step(s))
    }

    /// Runs a failed create's undo stack; returns the steps that failed.
    pub(crate) fn roll_back(&self, undo: Cleanup) -> Vec<Step> {
        self.take_steps(&undo.into_steps())
    }

    /// Keeps the container of a create that failed and could not be rolled
    /// back whole: in an unknown state, holding no name, owing `owed`.
    pub(crate) fn keep_failed_container(&self, mut c: Container, owed: Vec<Step>, why: &Error) {
        tracing::error!(id = %c.id, owed = %cleanup::describe(&owed), "a failed create could not be undone; the container is kept until its removal finishes the job");
        c.state = ContainerState::Unknown;
        c.reason = "CreateFailed".to_string();
        c.message = format!("{why}; still to undo: {}", cleanup::describe(&owed));
        c.owed = owed;
        c.leftover = true;
        if let Err(e) = self.container_records.save(&c.id, &c) {
            tracing::error!(id = %c.id, error = %format!("{e:#}"), "could not record the failed container; only this crustd remembers it");
        }
        self.containers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(c.id.clone(), Entry::new(c));
    }

    /// Keeps the sandbox of a create that failed and could not be rolled
    /// back whole: not ready, holding no name, owing `owed`.
    pub(crate) fn keep_failed_sandbox(&self, mut sb: Sandbox, owed: Vec<Step>) {
        tracing::error!(id = %sb.id, owed = %cleanup::describe(&owed), "a failed create could not be undone; the pod sandbox is kept until its removal finishes the job");
        sb.state = crate::sandbox::SandboxState::NotReady;
        sb.owed = owed;
        sb.leftover = true;
        if let Err(e) = self.sandbox_records.save(&sb.id, &sb) {
            tracing::error!(id = %sb.id, error = %format!("{e:#}"), "could not record the failed pod sandbox; only this crustd remembers it");
        }
        self.sandboxes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(sb.id.clone(), Entry::new(sb));
    }

    /// Retries what the container still owes; the caller holds its
    /// lifecycle lock. Once nothing is owed, a container left unknown by
    /// its create is recorded as exited (nothing of it runs).
    pub(crate) fn settle_container(&self, entry: &Entry<Container>) -> Result<()> {
        let owed = entry.rec().owed.clone();
        if owed.is_empty() {
            return Ok(());
        }
        let left = self.take_steps(&owed);
        let mut c = entry.rec();
        c.owed = left.clone();
        if left.is_empty() && c.state == ContainerState::Unknown {
            self.record_gone(&mut c);
        }
        if let Err(e) = self.container_records.save(&c.id, &c) {
            tracing::warn!(id = %c.id, error = %format!("{e:#}"), "could not record what the container still owes");
        }
        still_owed("container", &c.id, &left)
    }

    /// Records a kept container as exited: nothing of it runs any more.
    fn record_gone(&self, c: &mut Container) {
        c.state = ContainerState::Exited;
        c.exit_code = 255;
        c.finished_at = self.host.clock.now_ns().max(c.created_at);
    }

    /// Stops a kept container: one whose create failed runs nothing (what
    /// it owed is settled by now); one whose record could not be read may
    /// still run, so its shim is stopped and its runc container deleted.
    pub(crate) fn stop_leftover(&self, entry: &Entry<Container>) -> Result<()> {
        let (id, bundle, state, handler) = {
            let c = entry.rec();
            (c.id.clone(), c.bundle.clone(), c.state, c.handler.clone())
        };
        if state != ContainerState::Unknown {
            return Ok(());
        }
        self.take_step(&Step::StopShim {
            id: id.clone(),
            bundle,
            handler,
        })
        .map_err(|e| Error::Internal(e.context(format!("stopping container {id}"))))?;
        let mut c = entry.rec();
        self.record_gone(&mut c);
        if let Err(e) = self.container_records.save(&c.id, &c) {
            tracing::warn!(id = %c.id, error = %format!("{e:#}"), "could not record the stopped container");
        }
        Ok(())
    }

    /// Retries what the sandbox still owes; the caller holds its lifecycle
    /// lock.
    pub(crate) fn settle_sandbox(&self, entry: &Entry<Sandbox>) -> Result<()> {
        let owed = entry.rec().owed.clone();
        if owed.is_empty() {
            return Ok(());
        }
        let left = self.take_steps(&owed);
        let mut sb = entry.rec();
        sb.owed = left.clone();
        if let Err(e) = self.sandbox_records.save(&sb.id, &sb) {
            tracing::warn!(id = %sb.id, error = %format!("{e:#}"), "could not record what the pod sandbox still owes");
        }
        still_owed("pod sandbox", &sb.id, &left)
    }
}

/// Ok once `what` `id` owes nothing (`left` is empty), else an error naming
/// the steps still owed, for its Stop or Remove to report (kubelet retries).
fn still_owed(what: &str, id: &str, left: &[Step]) -> Result<()> {
    if left.is_empty() {
        tracing::info!(%id, "the failed create's leftovers of the {what} are undone");
        return Ok(());
    }
    Err(Error::internal(format!(
        "{what} {id} still has leftovers of its create to undo: {}",
        cleanup::describe(left)
    )))
}
