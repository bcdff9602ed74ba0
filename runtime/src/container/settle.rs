//! Settling exited containers: deleting them from their OCI runtime (`runc
//! delete`: its state and its cgroups) and unmounting their rootfs, under
//! the container's lifecycle lock. StopContainer settles the container it
//! stopped before it returns; a container that exits by itself is settled
//! by a worker thread once its exit (with its OOM verdict, read from its
//! cgroup first) is recorded.
//! RemoveContainer then has only directories and records left to take away;
//! it settles a container itself when the worker has not (a crustd restart
//! forgets what was settled, and settling twice is harmless).

use std::collections::HashSet;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, Weak};

use super::{Container, ContainerState};
use crate::runtime::{Entry, Runtime};

/// The queue of exited containers and the ids of those already settled.
pub(crate) struct Settler {
    queue: Sender<String>,
    work: Mutex<Option<Receiver<String>>>,
    settled: Mutex<HashSet<String>>,
}

impl Settler {
    /// A settler whose worker is not started yet.
    pub(crate) fn new() -> Settler {
        let (queue, work) = channel();
        Settler {
            queue,
            work: Mutex::new(Some(work)),
            settled: Mutex::new(HashSet::new()),
        }
    }

    fn settled(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.settled.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Runtime {
    /// Starts the worker; it holds the runtime weakly and ends with it.
    pub(crate) fn start_settler(self: &Arc<Self>) -> std::io::Result<()> {
        let Some(work) = self
            .settler
            .work
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            return Ok(());
        };
        let runtime = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("crust-settle".into())
            .spawn(move || settle_exits(&runtime, &work))
            .map(drop)
    }

    /// Queues container `id`, whose exit was just recorded, to be settled.
    pub(crate) fn exited(&self, id: &str) {
        let _ = self.settler.queue.send(id.to_string());
    }

    /// Takes container `c` out of its OCI runtime and unmounts what is
    /// mounted in its bundle, unless the worker already has; under its
    /// lifecycle lock.
    pub(crate) fn settle(&self, c: &Container) -> anyhow::Result<()> {
        if self.settler.settled().remove(&c.id) {
            return Ok(());
        }
        self.oci_delete(&c.handler, &c.id)?;
        crate::teardown::unmount_under(self.host.mounts.as_ref(), &c.bundle)
    }

    /// The worker's part for container `id`.
    fn settle_in_background(&self, id: &str) {
        let Some(entry) = self
            .containers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
        else {
            return;
        };
        // Queued while the exit was recorded, under the lock: wait for it.
        // A stop that holds it settles the container itself, and the check
        // below then finds nothing left to do.
        let _guard = entry.lock_lifecycle();
        let known = self
            .containers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(id);
        if known {
            self.settle_exited(&entry);
        }
    }

    /// Settles the container of `entry` if it has exited and is not settled
    /// yet, under its lifecycle lock (which the caller holds). StopContainer
    /// calls it once the container has exited, as containerd deletes the
    /// task in its stop; a failure is left to RemoveContainer.
    pub(crate) fn settle_exited(&self, entry: &Entry<Container>) {
        let c = entry.snapshot();
        if c.state != ContainerState::Exited || c.leftover || self.settler.settled().contains(&c.id)
        {
            return;
        }
        match self
            .oci_delete(&c.handler, &c.id)
            .and_then(|()| crate::teardown::unmount_under(self.host.mounts.as_ref(), &c.bundle))
        {
            Ok(()) => {
                self.settler.settled().insert(c.id);
            }
            Err(e) => {
                tracing::debug!(id = %c.id, error = format!("{e:#}"), "settling the exited container is left to its removal");
            }
        }
    }
}

fn settle_exits(runtime: &Weak<Runtime>, work: &Receiver<String>) {
    for id in work {
        let Some(rt) = runtime.upgrade() else {
            return;
        };
        rt.settle_in_background(&id);
    }
}
