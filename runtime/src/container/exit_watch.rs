//! Notices containers that exit by themselves: one thread watches the bundle
//! directory of every created or running container and records an exit the
//! moment its shim renames the exit file into place, so the STOPPED event
//! and ListContainers follow within milliseconds without anyone polling.
//!
//! A slow sweep of the live containers catches what inotify cannot see: a
//! shim that died without writing the file, or a watch that could not be
//! added.

use crust_shim_protocol::files::EXIT_FILE;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::{Container, ContainerState};
use crate::runtime::Runtime;
use crate::sys::notify::{RenameWatch, Renamed, WatchDescriptor};

/// How often every live container is looked at regardless of inotify.
const SWEEP_PERIOD: Duration = Duration::from_secs(2);

/// How soon an exit seen while a lifecycle call held its container is
/// looked at again.
const RETRY_PERIOD: Duration = Duration::from_millis(50);

/// The watched bundles, by watch descriptor.
pub(crate) struct ExitWatch {
    watch: Option<RenameWatch>,
    by_wd: Mutex<HashMap<WatchDescriptor, String>>,
}

impl ExitWatch {
    /// A watch on no container yet; without inotify only the sweep notices exits.
    pub(crate) fn new() -> ExitWatch {
        let watch = RenameWatch::new()
            .map_err(|e| {
                tracing::warn!(error = %e, "inotify is unavailable; container exits are noticed by a sweep every {}s", SWEEP_PERIOD.as_secs());
            })
            .ok();
        ExitWatch {
            watch,
            by_wd: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<WatchDescriptor, String>> {
        self.by_wd.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Runtime {
    /// Watches container `c`'s bundle for its exit file.
    pub(crate) fn watch_exit(&self, c: &Container) {
        let Some(watch) = &self.exit_watch.watch else {
            return;
        };
        let mut by_wd = self.exit_watch.lock();
        match watch.add(&c.bundle) {
            Ok(wd) => {
                by_wd.insert(wd, c.id.clone());
            }
            Err(e) => {
                tracing::warn!(id = %c.id, error = %e, "cannot watch the container's bundle; its exit is noticed by the sweep");
            }
        }
    }

    /// Starts the thread that records exits as they happen. It holds the
    /// runtime weakly and ends with it.
    pub(crate) fn start_exit_watcher(self: &Arc<Self>) -> std::io::Result<()> {
        for entry in self.all_containers() {
            let c = entry.snapshot();
            if matches!(c.state, ContainerState::Created | ContainerState::Running) {
                self.watch_exit(&c);
            }
        }
        let runtime = Arc::downgrade(self);
        let exits = self.exit_watch.clone();
        std::thread::Builder::new()
            .name("crust-exits".into())
            .spawn(move || watch_exits(runtime, exits))
            .map(drop)
    }

    /// Records the exit of the container behind `wd`, if it has one; false
    /// when a lifecycle call holds the container (the exit is looked at
    /// again shortly).
    fn exit_noticed(&self, wd: WatchDescriptor) -> bool {
        let id = self.exit_watch.lock().get(&wd).cloned();
        let Some(id) = id else {
            return true;
        };
        let Ok(entry) = self.container_entry(&id) else {
            self.forget_watch(wd);
            return true;
        };
        match self.refresh_unless_busy(&entry) {
            None => false,
            Some(ContainerState::Exited) => {
                self.forget_watch(wd);
                true
            }
            Some(_) => true,
        }
    }

    fn forget_watch(&self, wd: WatchDescriptor) {
        if self.exit_watch.lock().remove(&wd).is_some()
            && let Some(watch) = &self.exit_watch.watch
        {
            watch.remove(wd);
        }
    }

    /// Looks at every created or running container no lifecycle call holds.
    fn sweep_exits(&self) {
        for entry in self.all_containers() {
            self.refresh_unless_busy(&entry);
        }
    }
}

fn watch_exits(runtime: Weak<Runtime>, exits: Arc<ExitWatch>) {
    let mut next_sweep = Instant::now() + SWEEP_PERIOD;
    // Exit files seen for containers a lifecycle call held at that moment.
    let mut pending: HashSet<WatchDescriptor> = HashSet::new();
    loop {
        let mut timeout = next_sweep.saturating_duration_since(Instant::now());
        if !pending.is_empty() {
            timeout = timeout.min(RETRY_PERIOD);
        }
        let seen = match &exits.watch {
            Some(watch) => watch.wait(timeout),
            None => {
                std::thread::sleep(timeout);
                Vec::new()
            }
        };
        let Some(rt) = runtime.upgrade() else {
            return;
        };
        for event in seen {
            match event {
                Renamed::Into(wd, name) if name == EXIT_FILE => {
                    pending.insert(wd);
                }
                Renamed::Into(..) => {}
                Renamed::Gone(wd) => {
                    pending.remove(&wd);
                    exits.lock().remove(&wd);
                }
            }
        }
        pending.retain(|wd| !rt.exit_noticed(*wd));
        if Instant::now() >= next_sweep {
            rt.sweep_exits();
            next_sweep = Instant::now() + SWEEP_PERIOD;
        }
    }
}
