//! A recording fake of the host for the lifecycle's unit tests: a [`World`]
//! of mounts, runc containers, shims, PID namespace holders and network
//! attachments kept in memory (it outlives a runtime, as the machine
//! outlives a crashed crustd), and a [`FakeHost`] over it that logs every
//! call and fails, or crashes at, the call a test picks. It has three
//! runtime handlers: `runc` (the default), `youki` and `broken` (whose
//! binary "cannot run"); calls to an OCI runtime or a launch are logged with
//! the handler, as `runc.start@youki`.
//!
//! Files the real parts write where crustd reads them (the shim's pid and
//! exit record in the bundle, pin files) are written for real, in the
//! test's temporary directories.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{Result, anyhow, bail};
use crust_cni::config::NetworkList;
use crust_cni::nsfs::PinRequest;
use crust_cni::{Attachment, PodNetwork};
use crust_shim_protocol::files::{EXIT_FILE, SHIM_PID_FILE};
use crust_shim_protocol::{ExitRecord, control};

use super::{
    CgroupHost, Clock, CreateError, Created, ExecCommand, Facts, Handler, HandlerSpec, Handlers,
    Host, Launch, MountFeatures, Mounts, Namespaces, Network, Probe, Runc, RuncStatus, Shim,
    UsageReader,
};
use crate::container::config::ContainerConfig;
use crate::container::spec::HostFacts;
use crate::sandbox::Sandbox;
use crate::sys::cgroup_usage::CgroupUsage;

/// One container as the fake runc knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RuncContainer {
    pub(crate) bundle: PathBuf,
    pub(crate) status: RuncStatus,
    /// The handler whose runtime created it (only that one sees it).
    pub(crate) handler: String,
}

/// What exists on the fake machine.
#[derive(Debug, Default)]
pub(crate) struct World {
    /// Mount points: overlays, shm tmpfs, pinned namespaces.
    pub(crate) mounts: BTreeSet<PathBuf>,
    /// runc's containers by id.
    pub(crate) runc: BTreeMap<String, RuncContainer>,
    /// Live container shims: pid → bundle.
    pub(crate) shims: BTreeMap<i32, PathBuf>,
    /// Live PID namespace holders.
    pub(crate) holders: BTreeSet<i32>,
    /// Network attachments by sandbox id.
    pub(crate) attachments: BTreeSet<String>,
    next_pid: i32,
    now: i64,
}

impl World {
    /// A description of everything that still exists, empty when nothing does.
    pub(crate) fn leftovers(&self) -> Vec<String> {
        let mut out = Vec::new();
        out.extend(self.mounts.iter().map(|m| format!("mount {}", m.display())));
        out.extend(self.runc.keys().map(|id| format!("runc container {id}")));
        out.extend(
            self.shims
                .values()
                .map(|b| format!("shim of {}", b.display())),
        );
        out.extend(
            self.holders
                .iter()
                .map(|p| format!("PID namespace holder {p}")),
        );
        out.extend(
            self.attachments
                .iter()
                .map(|id| format!("network attachment {id}")),
        );
        out
    }

    fn pid(&mut self) -> i32 {
        self.next_pid += 1;
        1000 + self.next_pid
    }
}

/// Which call fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    /// None.
    Never,
    /// Only call `k` (counted from 1 since the last [`FakeHost::inject`]).
    At(usize),
    /// Call `k` and every later one: the host broke.
    From(usize),
    /// Call `k` panics, as if crustd died there: no rollback runs.
    Crash(usize),
}

/// The fake host: a view of a [`World`] that logs and fails calls.
pub(crate) struct FakeHost {
    world: Arc<Mutex<World>>,
    calls: Mutex<Vec<String>>,
    count: AtomicUsize,
    fault: Mutex<Fault>,
    broken: Mutex<Option<&'static str>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl FakeHost {
    /// A fake host over `world`.
    pub(crate) fn new(world: Arc<Mutex<World>>) -> Arc<FakeHost> {
        Arc::new(FakeHost {
            world,
            calls: Mutex::default(),
            count: AtomicUsize::new(0),
            fault: Mutex::new(Fault::Never),
            broken: Mutex::new(None),
        })
    }

    /// The [`Host`] the runtime is opened with.
    pub(crate) fn host(self: &Arc<Self>) -> Host {
        let handler = |name: &str, usable: std::result::Result<(), String>| Handler {
            spec: HandlerSpec {
                name: name.to_string(),
                binary: PathBuf::from(format!("/fake/{name}")),
                root: PathBuf::from(format!("/fake/state/{name}")),
                options: Vec::new(),
            },
            probe: Probe {
                usable,
                version: format!("{name} version fake"),
                features: None,
                user_namespaces: Ok(()),
            },
            runc: Arc::new(FakeRunc {
                host: self.clone(),
                handler: name.to_string(),
            }),
        };
        let handlers = Handlers::new(
            "runc",
            vec![
                handler("runc", Ok(())),
                handler("youki", Ok(())),
                handler("broken", Err("/fake/broken not found".into())),
            ],
        )
        .expect("the default handler is among them");
        Host {
            handlers: Arc::new(handlers),
            mounts: self.clone(),
            shim: self.clone(),
            namespaces: self.clone(),
            network: self.clone(),
            cgroups: self.clone(),
            clock: self.clone(),
            facts: self.clone(),
        }
    }

    /// Fails calls from now on as `fault` says, counting calls afresh; a
    /// call broken by [`FakeHost::break_call`] works again.
    pub(crate) fn inject(&self, fault: Fault) {
        *lock(&self.fault) = fault;
        *lock(&self.broken) = None;
        self.count.store(0, Ordering::SeqCst);
        lock(&self.calls).clear();
    }

    /// Fails every call named `what` (e.g. `"network.del"`) until the
    /// next [`FakeHost::inject`], besides what the fault fails.
    pub(crate) fn break_call(&self, what: &'static str) {
        *lock(&self.broken) = Some(what);
    }

    /// The calls made since the last [`FakeHost::inject`], in order.
    pub(crate) fn calls(&self) -> Vec<String> {
        lock(&self.calls).clone()
    }

    /// The world.
    pub(crate) fn world(&self) -> MutexGuard<'_, World> {
        lock(&self.world)
    }

    /// Counts and logs one call, failing it when the fault says so.
    fn call(&self, what: &str) -> Result<()> {
        self.call_to(what, None)
    }

    /// [`FakeHost::call`] of a call to `handler`'s runtime, logged as
    /// `what@handler`; [`FakeHost::break_call`] names it without the handler.
    fn call_to(&self, what: &str, handler: Option<&str>) -> Result<()> {
        let k = self.count.fetch_add(1, Ordering::SeqCst) + 1;
        lock(&self.calls).push(match handler {
            Some(h) => format!("{what}@{h}"),
            None => what.to_string(),
        });
        if *lock(&self.broken) == Some(what) {
            bail!("injected failure of every {what}");
        }
        match *lock(&self.fault) {
            Fault::At(n) if n == k => bail!("injected failure of {what} (call {k})"),
            Fault::From(n) if k >= n => bail!("injected failure of {what} (call {k}, host broken)"),
            Fault::Crash(n) if k >= n => {
                panic!("injected crash at {what} (call {k})")
            }
            _ => Ok(()),
        }
    }
}

/// One handler's OCI runtime on the fake machine: it sees only the
/// containers it created, as a real runtime sees only its own state root.
pub(crate) struct FakeRunc {
    host: Arc<FakeHost>,
    handler: String,
}

impl FakeRunc {
    fn call(&self, what: &str) -> Result<()> {
        self.host.call_to(what, Some(&self.handler))
    }

    fn world(&self) -> MutexGuard<'_, World> {
        self.host.world()
    }
}

/// The init of the container in `bundle` dies of `signal`: its shim
/// records the exit and ends. False when it had stopped already.
fn kill_init(w: &mut World, bundle: &Path, signal: i32) -> Result<bool> {
    let Some(c) = w.runc.values_mut().find(|c| c.bundle == bundle) else {
        return Ok(false);
    };
    if c.status == RuncStatus::Stopped {
        return Ok(false);
    }
    c.status = RuncStatus::Stopped;
    w.now += 1;
    let record = ExitRecord {
        exit_code: 128 + signal,
        exited_at: w.now,
    };
    crust_shim_protocol::files::write_atomic(&bundle.join(EXIT_FILE), record.encode().as_bytes())?;
    w.shims.retain(|_, b| b != bundle);
    Ok(true)
}

/// `id` in the world's runc table when `handler` made it.
fn own<'w>(w: &'w mut World, handler: &str, id: &str) -> Option<&'w mut RuncContainer> {
    w.runc.get_mut(id).filter(|c| c.handler == handler)
}

impl Runc for FakeRunc {
    fn start(&self, id: &str) -> Result<()> {
        self.call("runc.start")?;
        let mut w = self.world();
        match own(&mut w, &self.handler, id) {
            Some(c) if c.status == RuncStatus::Created => {
                c.status = RuncStatus::Running;
                Ok(())
            }
            Some(c) => bail!("container {id} is {:?}, not created", c.status),
            None => bail!("container {id} does not exist"),
        }
    }

    fn kill(&self, id: &str, signal: i32) -> Result<bool> {
        self.call("runc.kill")?;
        let mut w = self.world();
        let Some(c) = own(&mut w, &self.handler, id) else {
            return Ok(false);
        };
        let bundle = c.bundle.clone();
        kill_init(&mut w, &bundle, signal)
    }

    fn delete(&self, id: &str) -> Result<()> {
        self.call("runc.delete")?;
        let mut w = self.world();
        if own(&mut w, &self.handler, id).is_some()
            && let Some(c) = w.runc.remove(id)
        {
            w.shims.retain(|_, b| *b != c.bundle);
        }
        Ok(())
    }

    fn status(&self, id: &str) -> Result<RuncStatus> {
        self.call("runc.status")?;
        Ok(own(&mut self.world(), &self.handler, id).map_or(RuncStatus::Missing, |c| c.status))
    }

    fn list(&self) -> Result<Vec<String>> {
        self.call("runc.list")?;
        Ok(self
            .world()
            .runc
            .iter()
            .filter(|(_, c)| c.handler == self.handler)
            .map(|(id, _)| id.clone())
            .collect())
    }

    fn update(&self, id: &str, resources: &[u8]) -> Result<()> {
        self.call("runc.update")?;
        serde_json::from_slice::<oci_spec::runtime::LinuxResources>(resources)?;
        match own(&mut self.world(), &self.handler, id) {
            Some(c) if c.status != RuncStatus::Stopped => Ok(()),
            _ => bail!("container {id} is not running"),
        }
    }

    fn spawn_exec(&self, _exec: ExecCommand<'_>) -> std::io::Result<tokio::process::Child> {
        Err(std::io::Error::other("the fake host runs no processes"))
    }
}

impl Mounts for FakeHost {
    fn overlay(&self, _lower: &[PathBuf], upper: &Path, work: &Path, target: &Path) -> Result<()> {
        self.call("mounts.overlay")?;
        for d in [upper, work, target] {
            if !d.is_dir() {
                bail!("{} is not a directory", d.display());
            }
        }
        if !self.world().mounts.insert(target.to_path_buf()) {
            bail!("{} is mounted already", target.display());
        }
        Ok(())
    }

    fn bind(&self, _source: &Path, target: &Path, _how: &super::BindMount) -> Result<()> {
        self.call("mounts.bind")?;
        if !target.exists() {
            bail!("{} does not exist", target.display());
        }
        if !self.world().mounts.insert(target.to_path_buf()) {
            bail!("{} is mounted already", target.display());
        }
        Ok(())
    }

    fn shm_tmpfs(&self, target: &Path, _size_bytes: u64) -> Result<()> {
        self.call("mounts.shm_tmpfs")?;
        if !target.is_dir() {
            bail!("{} is not a directory", target.display());
        }
        self.world().mounts.insert(target.to_path_buf());
        Ok(())
    }

    fn unmount(&self, target: &Path) -> Result<()> {
        self.call("mounts.unmount")?;
        self.world().mounts.remove(target);
        Ok(())
    }

    fn mounts_under(&self, prefix: &Path) -> Result<Vec<PathBuf>> {
        self.call("mounts.mounts_under")?;
        let mut found: Vec<PathBuf> = self
            .world()
            .mounts
            .iter()
            .filter(|m| m.starts_with(prefix))
            .cloned()
            .collect();
        found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        Ok(found)
    }
}

impl Shim for FakeHost {
    fn launch(&self, l: &Launch<'_>) -> std::result::Result<Created, CreateError> {
        self.call_to("shim.launch", Some(&l.runtime.name))
            .map_err(CreateError::Shim)?;
        let mut w = self.world();
        if w.runc.contains_key(l.id) {
            return Err(CreateError::Runc(format!("container {} exists", l.id)));
        }
        let (shim_pid, pid) = (w.pid(), w.pid());
        crust_shim_protocol::files::write_atomic(
            &l.bundle.join(SHIM_PID_FILE),
            shim_pid.to_string().as_bytes(),
        )
        .map_err(|e| CreateError::Shim(anyhow!(e)))?;
        w.shims.insert(shim_pid, l.bundle.to_path_buf());
        w.runc.insert(
            l.id.to_string(),
            RuncContainer {
                bundle: l.bundle.to_path_buf(),
                status: RuncStatus::Created,
                handler: l.runtime.name.clone(),
            },
        );
        Ok(Created { pid, shim_pid })
    }

    fn kill_abandoned(&self, bundle: &Path) {
        self.world().shims.retain(|_, b| b != bundle);
    }

    fn read_exit(&self, bundle: &Path) -> Option<ExitRecord> {
        // The fake's kill writes the record where the real shim does.
        crate::sys::shim::read_exit(bundle)
    }

    fn alive(&self, pid: i32) -> bool {
        self.world().shims.contains_key(&pid)
    }

    fn control(&self, bundle: &Path, request: control::Request) -> Result<()> {
        self.call("shim.control")?;
        if !self.world().shims.values().any(|b| b == bundle) {
            bail!("no shim runs in {}", bundle.display());
        }
        if let control::Request::Signal(signal) = request {
            kill_init(&mut self.world(), bundle, signal)?;
        }
        Ok(())
    }

    fn start_pid_holder(&self, _userns: Option<&Path>) -> Result<i32> {
        self.call("shim.start_pid_holder")?;
        let mut w = self.world();
        let pid = w.pid();
        w.holders.insert(pid);
        Ok(pid)
    }

    fn stop_pid_holder(&self, pid: i32) -> Result<()> {
        self.call("shim.stop_pid_holder")?;
        self.world().holders.remove(&pid);
        Ok(())
    }

    fn pid_holder_alive(&self, pid: i32) -> bool {
        self.world().holders.contains(&pid)
    }
}

impl Namespaces for FakeHost {
    fn pin_new(&self, req: PinRequest) -> Result<()> {
        self.call("namespaces.pin_new")?;
        let mut w = self.world();
        let user = req.user.iter().map(|u| &u.path);
        for path in req.pins.iter().map(|(_, p)| p).chain(user) {
            std::fs::write(path, b"")?;
            w.mounts.insert(path.clone());
        }
        Ok(())
    }

    fn unpin(&self, path: &Path) -> Result<()> {
        self.call("namespaces.unpin")?;
        self.world().mounts.remove(path);
        crate::fsutil::remove_file_if_exists(path)
    }

    fn is_pinned(&self, path: &Path) -> bool {
        self.world().mounts.contains(path)
    }
}

impl Network for FakeHost {
    fn network(&self) -> crust_cni::Result<Arc<NetworkList>> {
        self.call("network.network")
            .map_err(crust_cni::Error::Other)?;
        Ok(Arc::new(NetworkList {
            name: "fake".into(),
            cni_version: "1.0.0".into(),
            disable_check: false,
            plugins: Vec::new(),
            source: PathBuf::from("/fake"),
        }))
    }

    fn status(&self) -> crust_cni::Result<()> {
        Ok(())
    }

    fn add(&self, att: &Attachment) -> crust_cni::Result<PodNetwork> {
        // A failed ADD may have attached half-way: it is recorded first,
        // as the real CNI records it for DEL.
        self.world().attachments.insert(att.container_id.clone());
        self.call("network.add").map_err(crust_cni::Error::Other)?;
        Ok(PodNetwork {
            ips: vec![
                "10.88.0.2"
                    .parse()
                    .map_err(|e| crust_cni::Error::Other(anyhow!("{e}")))?,
            ],
            result: serde_json::Value::Null,
        })
    }

    fn del(&self, id: &str) -> crust_cni::Result<()> {
        self.call("network.del").map_err(crust_cni::Error::Other)?;
        self.world().attachments.remove(id);
        Ok(())
    }

    fn check(&self, id: &str) -> crust_cni::Result<()> {
        self.call("network.check")
            .map_err(crust_cni::Error::Other)?;
        if !self.world().attachments.contains(id) {
            return Err(crust_cni::Error::Other(anyhow!("{id} is not attached")));
        }
        Ok(())
    }

    fn attached_ids(&self) -> Vec<String> {
        self.world().attachments.iter().cloned().collect()
    }
}

impl UsageReader for FakeHost {
    fn read(&self, _cgroup_path: &str) -> Option<CgroupUsage> {
        None
    }

    fn oom_kills(&self, _cgroup_path: &str) -> Option<u64> {
        None
    }
}

impl Clock for FakeHost {
    fn now_ns(&self) -> i64 {
        let mut w = self.world();
        w.now += 1_000;
        w.now
    }
}

impl Facts for FakeHost {
    fn cgroups(&self) -> CgroupHost {
        CgroupHost {
            v2: true,
            cpu: true,
            cpuset: true,
            memory: true,
            memory_swap: true,
            hugetlb: true,
        }
    }

    fn selinux(&self) -> bool {
        false
    }

    fn mount_features(&self) -> MountFeatures {
        MountFeatures {
            recursive_read_only_mounts: true,
            user_namespaces: true,
        }
    }

    fn for_container(
        &self,
        cgroups: &CgroupHost,
        config: &ContainerConfig,
        _sandbox: &Sandbox,
    ) -> HostFacts {
        HostFacts {
            bounding_set: (1 << 41) - 1,
            apparmor: false,
            selinux: false,
            min_oom_score_adj: None,
            cgroups: cgroups.clone(),
            host_devices: Vec::new(),
            requested_devices: Default::default(),
            mount_sources: config
                .mounts
                .iter()
                .map(|m| (m.host_path.clone(), Ok(PathBuf::from(&m.host_path))))
                .collect(),
            seccomp_profile: None,
            hostname_file: String::new(),
        }
    }
}
