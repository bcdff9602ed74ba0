//! [`Host::real`]: the parts of the real machine that have no home of their
//! own in `sys/` (pinned namespaces and CNI live in the CNI crate).

use std::path::Path;
use std::sync::Arc;

use anyhow::Result;
use crust_cni::config::NetworkList;
use crust_cni::nsfs::{self, PinRequest};
use crust_cni::{Attachment, Cni, PodNetwork};

use super::{
    CgroupHost, Clock, Facts, Handler, Handlers, Host, MountFeatures, Namespaces, Network,
};
use crate::container::config::ContainerConfig;
use crate::container::spec::HostFacts;
use crate::sandbox::Sandbox;
use crate::sys::cgroup_usage;
use crate::sys::mount::KernelMounts;
use crate::sys::runc::RuncBinary;
use crate::sys::shim::ShimBinary;

pub(super) fn host(opts: &crate::Options) -> Result<Host> {
    let handlers = opts
        .handlers
        .iter()
        .map(|spec| {
            let probe = crate::sys::oci_probe::probe(spec);
            Handler {
                runc: Arc::new(RuncBinary {
                    binary: spec.binary.clone(),
                    root: spec.root.clone(),
                    options: spec.options.clone(),
                }),
                spec: spec.clone(),
                probe,
            }
        })
        .collect();
    let handlers = Handlers::new(&opts.default_handler, handlers)?;
    for h in handlers.iter() {
        match &h.probe.usable {
            Err(why) if h.spec.name == handlers.default_name() => {
                anyhow::bail!(
                    "the default runtime handler {:?} cannot run: {why}",
                    h.spec.name
                )
            }
            Err(why) => {
                tracing::warn!(handler = %h.spec.name, "runtime handler unavailable: {why}")
            }
            Ok(()) => {
                tracing::info!(handler = %h.spec.name, binary = %h.spec.binary.display(), version = %h.probe.version, "runtime handler ready")
            }
        }
    }
    Ok(Host {
        handlers: Arc::new(handlers),
        mounts: Arc::new(KernelMounts),
        shim: Arc::new(ShimBinary {
            shim: opts.shim.clone(),
        }),
        namespaces: Arc::new(KernelNamespaces),
        network: Arc::new(Cni::new(opts.cni.clone())?),
        cgroups: Arc::from(cgroup_usage::host_reader()),
        clock: Arc::new(SystemClock),
        facts: Arc::new(MachineFacts {
            root: opts.root.clone(),
        }),
    })
}

/// Namespaces pinned by bind mounts of nsfs files.
struct KernelNamespaces;

impl Namespaces for KernelNamespaces {
    fn pin_new(&self, req: PinRequest) -> Result<()> {
        nsfs::pin_new(req)
    }

    fn unpin(&self, path: &Path) -> Result<()> {
        nsfs::unpin(path)
    }

    fn is_pinned(&self, path: &Path) -> bool {
        nsfs::is_pinned(path)
    }
}

impl Network for Cni {
    fn network(&self) -> crust_cni::Result<Arc<NetworkList>> {
        Cni::network(self)
    }

    fn status(&self) -> crust_cni::Result<()> {
        Cni::status(self)
    }

    fn add(&self, att: &Attachment) -> crust_cni::Result<PodNetwork> {
        Cni::add(self, att)
    }

    fn del(&self, id: &str) -> crust_cni::Result<()> {
        Cni::del(self, id)
    }

    fn check(&self, id: &str) -> crust_cni::Result<()> {
        Cni::check(self, id)
    }

    fn attached_ids(&self) -> Vec<String> {
        Cni::attached_ids(self)
    }
}

/// The system's wall clock.
struct SystemClock;

impl Clock for SystemClock {
    fn now_ns(&self) -> i64 {
        crate::clock::now_ns()
    }
}

/// This machine, probed.
struct MachineFacts {
    /// The persistent root, where image layers are idmapped from.
    root: std::path::PathBuf,
}

impl Facts for MachineFacts {
    fn cgroups(&self) -> CgroupHost {
        CgroupHost::detect()
    }

    fn selinux(&self) -> bool {
        crate::sys::process::selinux_enabled()
    }

    fn mount_features(&self) -> MountFeatures {
        crate::sys::facts::mount_features(&self.root)
    }

    fn for_container(
        &self,
        cgroups: &CgroupHost,
        config: &ContainerConfig,
        sandbox: &Sandbox,
    ) -> HostFacts {
        crate::sys::facts::probe(cgroups, config, sandbox)
    }
}
