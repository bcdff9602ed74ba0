//! [`Host::real`]: the parts of the real machine that have no home of their
//! own in `sys/` (pinned namespaces and CNI live in the CNI crate).

use std::path::Path;
use std::sync::Arc;

use anyhow::Result;
use crust_cni::config::NetworkList;
use crust_cni::nsfs::{self, PinRequest};
use crust_cni::{Attachment, Cni, PodNetwork};

use super::{CgroupHost, Clock, Facts, Host, Namespaces, Network};
use crate::container::config::ContainerConfig;
use crate::container::spec::HostFacts;
use crate::sandbox::Sandbox;
use crate::sys::cgroup_usage;
use crate::sys::mount::KernelMounts;
use crate::sys::runc::RuncBinary;
use crate::sys::shim::ShimBinary;

pub(super) fn host(opts: &crate::Options) -> Result<Host> {
    let runc_root = opts.state.join("runc");
    Ok(Host {
        runc: Arc::new(RuncBinary {
            binary: opts.runc.clone(),
            root: runc_root.clone(),
        }),
        mounts: Arc::new(KernelMounts),
        shim: Arc::new(ShimBinary {
            shim: opts.shim.clone(),
            runc: opts.runc.clone(),
            runc_root,
        }),
        namespaces: Arc::new(KernelNamespaces),
        network: Arc::new(Cni::new(opts.cni.clone())?),
        cgroups: Arc::from(cgroup_usage::host_reader()),
        clock: Arc::new(SystemClock),
        facts: Arc::new(MachineFacts),
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
struct MachineFacts;

impl Facts for MachineFacts {
    fn cgroups(&self) -> CgroupHost {
        CgroupHost::detect()
    }

    fn selinux(&self) -> bool {
        crate::sys::process::selinux_enabled()
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
