//! The runtime facade the CRI layer talks to: owns the object tables, the name
//! reservations, the metadata store, the image store and restart recovery.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use anyhow::Context;

use crate::container::Container;
use crate::host::Host;
use crate::image::{ImageOptions, ImageStore};
use crate::names::Names;
use crate::sandbox::Sandbox;
use crate::store::RecordDir;
use crate::sys::cgroup::CgroupHost;
use crate::{Error, Result, fsutil, ids};

/// File under the root holding the pod CIDR kubelet last set: kubelet sends it
/// again only when it changes, so a restarted crustd must remember it.
const POD_CIDR_FILE: &str = "pod-cidr";

/// Where things live and which helpers to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Persistent root, e.g. /var/lib/crust.
    pub root: PathBuf,
    /// Volatile state dir, e.g. /run/crust.
    pub state: PathBuf,
    /// The runtime handlers (OCI runtimes) pods can choose.
    pub handlers: Vec<crate::host::HandlerSpec>,
    /// The handler an empty `runtime_handler` means.
    pub default_handler: String,
    /// The crust-shim binary.
    pub shim: PathBuf,
    /// Size of each pod's /dev/shm tmpfs.
    pub shm_size: u64,
    /// cgroup parent for pods that do not name one.
    pub default_cgroup_parent: String,
    /// How images are pulled.
    pub images: ImageOptions,
    /// Where CNI configs and plugins are, and where attachments are recorded.
    pub cni: crust_cni::Settings,
}

/// One live object: a lifecycle lock serializing create/start/stop/remove, and the record.
pub(crate) struct Entry<T> {
    /// An async lock, so a call queued behind a long one (a stop's grace
    /// period, a slow runc) waits without holding a thread of the blocking
    /// pool, and goes away when its client does: see [`Runtime::locked`].
    lifecycle: Arc<tokio::sync::Mutex<()>>,
    pub(crate) rec: Mutex<T>,
    /// While a container is being stopped: the earliest deadline any
    /// caller asked for (see `container::stop`).
    stop_by: Mutex<Option<std::time::Instant>>,
}

/// The lifecycle lock of one object, held.
pub(crate) type LifecycleGuard = tokio::sync::OwnedMutexGuard<()>;

impl<T: Clone> Entry<T> {
    pub(crate) fn new(rec: T) -> Arc<Self> {
        Arc::new(Entry {
            lifecycle: Arc::new(tokio::sync::Mutex::new(())),
            rec: Mutex::new(rec),
            stop_by: Mutex::new(None),
        })
    }

    /// Takes the lifecycle lock from a blocking thread (never from async
    /// code: tokio refuses that).
    pub(crate) fn lock_lifecycle(&self) -> LifecycleGuard {
        self.lifecycle.clone().blocking_lock_owned()
    }

    /// Takes the lifecycle lock from async code.
    pub(crate) async fn lock_lifecycle_async(&self) -> LifecycleGuard {
        self.lifecycle.clone().lock_owned().await
    }

    /// The lifecycle lock if no lifecycle call holds it now.
    pub(crate) fn try_lock_lifecycle(&self) -> Option<LifecycleGuard> {
        self.lifecycle.clone().try_lock_owned().ok()
    }

    pub(crate) fn rec(&self) -> MutexGuard<'_, T> {
        self.rec.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The record if nothing holds it now.
    pub(crate) fn try_rec(&self) -> Option<MutexGuard<'_, T>> {
        match self.rec.try_lock() {
            Ok(g) => Some(g),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    pub(crate) fn stop_by(&self) -> MutexGuard<'_, Option<std::time::Instant>> {
        self.stop_by.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn snapshot(&self) -> T {
        self.rec().clone()
    }
}

/// For Stop and Remove, where an unknown id is not an error: `Ok(None)`.
pub(crate) fn if_exists<T>(found: Result<T>) -> Result<Option<T>> {
    match found {
        Ok(e) => Ok(Some(e)),
        Err(Error::NotFound(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The runtime: sandboxes, containers and images.
pub struct Runtime {
    pub(crate) opts: Options,
    /// Everything outside the runtime's own files.
    pub(crate) host: Host,
    pub(crate) images: Arc<ImageStore>,
    pub(crate) sandboxes: RwLock<HashMap<String, Arc<Entry<Sandbox>>>>,
    pub(crate) containers: RwLock<HashMap<String, Arc<Entry<Container>>>>,
    pub(crate) sandbox_names: Names,
    pub(crate) container_names: Names,
    pub(crate) sandbox_records: RecordDir<Sandbox>,
    pub(crate) container_records: RecordDir<Container>,
    /// Ids of sandboxes being created: their network attachments exist before
    /// the sandbox is recorded and must not be collected as orphans.
    pub(crate) creating_sandboxes: Mutex<std::collections::HashSet<String>>,
    pub(crate) pod_cidr: Mutex<String>,
    /// What the host's cgroups can enforce, read at start.
    pub(crate) cgroups: CgroupHost,
    /// The kernel's mount features, read at start.
    pub(crate) mount_features: crate::host::MountFeatures,
    /// What the statistics keep between calls.
    pub(crate) stats: crate::stats::StatsState,
    /// Subscribers of GetContainerEvents.
    pub(crate) events: crate::events::Events,
    /// The bundles watched for exit files.
    pub(crate) exit_watch: Arc<crate::container::exit_watch::ExitWatch>,
    /// What bounds ExecSync's memory.
    pub(crate) exec_limits: crate::container::ExecLimits,
    /// Exited containers settled in the background.
    pub(crate) settler: crate::container::settle::Settler,
    /// Where removed containers' directories go to be deleted.
    pub(crate) trash: crate::trash::Trash,
}

/// The trash directory's name in the state and the root directories.
const TRASH: &str = "trash";

/// Where the runtime keeps one record per pod sandbox under its root
/// directory `root` (the installer counts them to know crust still has pods).
pub fn sandbox_records_dir(root: &Path) -> PathBuf {
    root.join("meta").join("sandboxes")
}

impl Runtime {
    /// Opens the runtime on its directories and recovers the state a previous crustd
    /// left: every object is loaded, exits that happened meanwhile are picked up,
    /// and leftovers of interrupted creates are removed. `host` is the world
    /// outside: [`Host::real`] for crustd.
    pub fn open(opts: Options, host: Host) -> Result<Arc<Runtime>> {
        for dir in [
            opts.root.clone(),
            opts.state.clone(),
            opts.state.join("sandboxes"),
            opts.state.join("containers"),
            opts.root.join("containers"),
        ] {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let images = Arc::new(ImageStore::open(&opts.root, opts.images.clone())?);
        let trash = crate::trash::Trash::start(
            &[opts.state.join(TRASH), opts.root.join(TRASH)],
            host.mounts.clone(),
        )?;
        let pod_cidr = match std::fs::read_to_string(opts.root.join(POD_CIDR_FILE)) {
            Ok(text) => text.trim().to_string(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => {
                return Err(anyhow::Error::new(e)
                    .context(format!(
                        "reading {}",
                        opts.root.join(POD_CIDR_FILE).display()
                    ))
                    .into());
            }
        };
        let cgroups = host.facts.cgroups();
        for (controller, fields) in cgroups.missing() {
            tracing::warn!(
                controller,
                "this host's cgroups lack {controller}: {fields} in container requests are ignored"
            );
        }
        let mount_features = host.facts.mount_features();
        let stats =
            crate::stats::StatsState::new(opts.root.join("containers"), host.cgroups.clone());
        let rt = Arc::new(Runtime {
            sandbox_records: RecordDir::open(sandbox_records_dir(&opts.root))?,
            container_records: RecordDir::open(opts.root.join("meta").join("containers"))?,
            opts,
            host,
            images,
            sandboxes: RwLock::default(),
            containers: RwLock::default(),
            sandbox_names: Names::default(),
            container_names: Names::default(),
            creating_sandboxes: Mutex::default(),
            pod_cidr: Mutex::new(pod_cidr),
            cgroups,
            mount_features,
            stats,
            events: crate::events::Events::default(),
            exit_watch: Arc::new(crate::container::exit_watch::ExitWatch::new()),
            exec_limits: Default::default(),
            settler: crate::container::settle::Settler::new(),
            trash,
        });
        rt.recover()?;
        rt.start_exit_watcher()
            .context("starting the container exit watcher")?;
        rt.start_settler()
            .context("starting the exited-container settler")?;
        Ok(rt)
    }

    /// The image store.
    pub fn images(&self) -> &Arc<ImageStore> {
        &self.images
    }

    /// The runtime handlers, as probed at start.
    pub fn handlers(&self) -> &crate::host::Handlers {
        &self.host.handlers
    }

    /// What handler `h` offers pods on this host (nothing when it cannot
    /// run).
    pub fn handler_features(&self, h: &crate::host::Handler) -> crate::host::MountFeatures {
        match h.probe.usable {
            Ok(()) => crate::host::MountFeatures {
                user_namespaces: self.mount_features.user_namespaces
                    && h.probe.user_namespaces.is_ok(),
                ..self.mount_features
            },
            Err(_) => crate::host::MountFeatures::default(),
        }
    }

    /// The options the runtime was opened with.
    pub fn options(&self) -> &Options {
        &self.opts
    }

    pub(crate) fn sandbox_entry(&self, id: &str) -> Result<Arc<Entry<Sandbox>>> {
        let map = self.sandboxes.read().unwrap_or_else(|p| p.into_inner());
        let id = ids::resolve(map.keys(), id, "pod sandbox")?;
        map.get(&id)
            .cloned()
            .ok_or_else(|| Error::not_found(format!("pod sandbox {id:?} not found")))
    }

    pub(crate) fn container_entry(&self, id: &str) -> Result<Arc<Entry<Container>>> {
        let map = self.containers.read().unwrap_or_else(|p| p.into_inner());
        let id = ids::resolve(map.keys(), id, "container")?;
        map.get(&id)
            .cloned()
            .ok_or_else(|| Error::not_found(format!("container {id:?} not found")))
    }

    pub(crate) fn all_containers(&self) -> Vec<Arc<Entry<Container>>> {
        self.containers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub(crate) fn all_sandboxes(&self) -> Vec<Arc<Entry<Sandbox>>> {
        self.sandboxes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Runs blocking work (lifecycle calls, namespace and file I/O) on the
    /// blocking pool. The work is never cancelled half-way when the client
    /// goes away: it finishes (or rolls back) on its own.
    pub(crate) async fn blocking<T, F>(self: &Arc<Self>, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Runtime) -> Result<T> + Send + 'static,
    {
        let this = self.clone();
        tokio::task::spawn_blocking(move || f(&this))
            .await
            .map_err(|e| Error::internal(format!("lifecycle task failed: {e}")))?
    }

    /// Runs `f` on the blocking pool holding `entry`'s lifecycle lock. The
    /// lock is awaited before a thread is taken, so any number of calls
    /// queued behind a long one cost no thread; once `f` starts it finishes
    /// even if the client leaves.
    pub(crate) async fn locked<E, T, F>(self: &Arc<Self>, entry: &Entry<E>, f: F) -> Result<T>
    where
        E: Clone,
        T: Send + 'static,
        F: FnOnce(&Runtime) -> Result<T> + Send + 'static,
    {
        let guard = entry.lock_lifecycle_async().await;
        self.blocking(move |rt| {
            let _guard = guard;
            f(rt)
        })
        .await
    }

    pub(crate) fn container_reserved_name(&self, c: &Container) -> String {
        let sandbox = self
            .sandboxes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&c.sandbox_id)
            .map(|e| e.snapshot().config);
        match sandbox {
            Some(s) => crate::container::reserved_name(&c.config, &s),
            None => serde_json::json!([c.config.name, c.sandbox_id]).to_string(),
        }
    }

    /// The OCI runtime container `c` runs under (its pod's handler).
    pub(crate) fn oci_runtime(&self, c: &Container) -> Result<Arc<dyn crate::host::Runc>> {
        self.host
            .runtime(&c.handler)
            .map_err(|e| Error::FailedPrecondition(format!("container {}: {e:#}", c.id)))
    }

    /// Deletes OCI runtime container `id` of `handler`; of every usable
    /// handler when it is unknown (empty). Unknown to the runtime is fine.
    pub(crate) fn oci_delete(&self, handler: &str, id: &str) -> anyhow::Result<()> {
        if !handler.is_empty() {
            return self.host.runtime(handler)?.delete(id);
        }
        self.host
            .handlers
            .iter()
            .filter(|h| h.probe.usable.is_ok())
            .try_for_each(|h| h.runc.delete(id))
    }

    /// Where sandbox `id` keeps its pinned namespaces, files and shm.
    pub(crate) fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.opts.state.join("sandboxes").join(id)
    }

    /// The OCI bundle of container `id` (config.json, rootfs, shim files).
    pub(crate) fn bundle_dir(&self, id: &str) -> PathBuf {
        self.opts.state.join("containers").join(id)
    }

    /// The trash directory on the filesystem of `dir` (the state or the
    /// root directory's).
    pub(crate) fn trash_bin(&self, dir: &Path) -> PathBuf {
        if dir.starts_with(&self.opts.state) {
            self.opts.state.join(TRASH)
        } else {
            self.opts.root.join(TRASH)
        }
    }

    /// The writable layer (upper and work directories) of container `id`.
    pub(crate) fn layer_dir(&self, id: &str) -> PathBuf {
        self.opts.root.join("containers").join(id)
    }

    /// Ids of every known sandbox.
    pub(crate) fn sandbox_ids(&self) -> std::collections::HashSet<String> {
        self.sandboxes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// Ids of every known container.
    pub(crate) fn container_ids(&self) -> std::collections::HashSet<String> {
        self.containers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// The CNI network new pods get (the list and the file it came from),
    /// for verbose Status; `None` while there is none.
    pub fn network_config(&self) -> Option<serde_json::Value> {
        let net = self.host.network.network().ok()?;
        let mut json = net.to_json();
        json["source"] = serde_json::Value::String(net.source.to_string_lossy().into_owned());
        Some(json)
    }

    /// NetworkReady: Ok, or why pods cannot be networked.
    pub fn network_status(&self) -> std::result::Result<(), String> {
        self.host.network.status().map_err(|e| e.to_string())
    }

    /// Records the pod CIDR kubelet sets with UpdateRuntimeConfig (given to CNI
    /// plugins that declare the `ipRanges` capability), on disk too, so it
    /// survives a restart of crustd. Several CIDRs (dual stack) are separated
    /// by commas; empty means none.
    pub fn set_pod_cidr(&self, cidr: &str) -> Result<()> {
        let cidr = cidr.trim();
        for part in cidr.split(',').filter(|p| !p.is_empty()) {
            if !is_cidr(part.trim()) {
                return Err(Error::invalid(format!(
                    "pod CIDR {part:?} is not an address range such as 10.244.1.0/24"
                )));
            }
        }
        let mut current = self.pod_cidr.lock().unwrap_or_else(|p| p.into_inner());
        if *current != cidr {
            fsutil::write_atomic(&self.opts.root.join(POD_CIDR_FILE), cidr.as_bytes())
                .context("recording the pod CIDR")?;
            tracing::info!(pod_cidr = %cidr, "pod CIDR updated");
            *current = cidr.to_string();
        }
        Ok(())
    }
}

/// Whether `s` is `<address>/<prefix length>` with a prefix that fits the address.
fn is_cidr(s: &str) -> bool {
    let Some((addr, len)) = s.split_once('/') else {
        return false;
    };
    let Ok(len) = len.parse::<u8>() else {
        return false;
    };
    match addr.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(_)) => len <= 32,
        Ok(std::net::IpAddr::V6(_)) => len <= 128,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::is_cidr;

    #[test]
    fn cidrs() {
        assert!(is_cidr("10.244.1.0/24"));
        assert!(is_cidr("fd00::/64"));
        assert!(!is_cidr("10.244.1.0/33"));
        assert!(!is_cidr("10.244.1.0"));
        assert!(!is_cidr("pods/24"));
    }
}
