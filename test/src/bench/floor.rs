//! The floor column: the least work the CRI operations stand for, done
//! directly. RunPodSandbox → pin new net/IPC/UTS namespaces with loopback up
//! (see [`super::namespaces`]); CreateContainer/StartContainer → `runc create`
//! / `runc start`; StopContainer(0)+RemoveContainer → `runc kill KILL`, wait,
//! `runc delete`; StopPodSandbox+RemovePodSandbox → unpin; cold PullImage →
//! fetch, digest-check and unpack the layers (see [`super::registry_fetch`]);
//! PullImage with layers present → the same for the missing layers only.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};

use super::big_image::BigImages;
use super::machine;
use super::metrics as m;
use super::namespaces::{self, PinnedNamespaces};
use super::options::Options;
use super::registry_fetch;
use super::results::RunResult;
use super::runc_bundle::RuncBundles;
use crate::fixtures::{PushedImage, TestImages};
use crate::registry::RegistryClient;
use crate::{cgroups, cleanup, unique};

/// Runs the floor measurements; everything made is removed when it returns.
pub async fn run(images: &TestImages, big: Option<&BigImages>, options: &Options) -> RunResult {
    let mut result = RunResult::new("floor");
    result.version = format!(
        "bare {}",
        machine::tool_version("runc").unwrap_or_else(|| "runc".into())
    );
    let mut floor = Floor::new();
    if let Err(e) = floor.measure(images, big, options, &mut result).await {
        result.fail(&e);
    }
    result
}

/// The floor's private directory, cgroup parent and whatever is still up;
/// dropping it removes them all.
struct Floor {
    dir: PathBuf,
    cgroup_parent: String,
    bundles: Option<RuncBundles>,
    containers: Vec<String>,
    pins: Vec<PinnedNamespaces>,
    ip_netns: Vec<String>,
}

impl Floor {
    fn new() -> Self {
        let suffix = unique::suffix();
        // The containers' init processes are reparented to the benchmark when
        // `runc create` exits; as their subreaper it can wait for them the
        // way a shim does. Turned off again on drop.
        // SAFETY: plain prctl on the calling process.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
        Self {
            dir: std::env::temp_dir().join(format!("crust-bench-floor-{suffix}")),
            cgroup_parent: format!("/crust-bench-floor-{suffix}"),
            bundles: None,
            containers: Vec::new(),
            pins: Vec::new(),
            ip_netns: Vec::new(),
        }
    }

    async fn measure(
        &mut self,
        images: &TestImages,
        big: Option<&BigImages>,
        options: &Options,
        result: &mut RunResult,
    ) -> Result<()> {
        std::fs::create_dir_all(self.dir.join("ns"))
            .with_context(|| format!("creating {}", self.dir.display()))?;
        self.pulls(images, options, result).await?;
        if let Some(big) = big {
            self.big_pulls(big, options, result).await?;
        }
        self.bundles = Some(RuncBundles::prepare(
            &self.dir.join("bundles"),
            &self.cgroup_parent,
        )?);

        // Warm-up round, not recorded.
        self.start_pod("warmup", None)?;
        self.stop_pods(None)?;

        for i in 0..options.n {
            self.start_pod(&format!("floor-{i}"), Some(&mut *result))?;
        }
        self.stop_pods(Some(result))?;
        result.note(
            "RunPodSandbox floor: a thread unshares net+IPC+UTS, sets the hostname, brings lo up (ioctl) and bind-mounts the three namespaces; its teardown unmounts them",
        );
        result.note(
            "container floor: runc create / runc start of a busybox rootfs dir (runc spec, non-terminal sleep 3600, same resources); stop+remove = runc kill KILL, wait, runc delete",
        );
        result.note(
            "pull floor: GET manifest, config and layers over HTTP, sha256-check, gunzip+untar each layer into its own dir, one layer after the other; with layers present, only the missing ones",
        );
        Ok(())
    }

    async fn pulls(
        &mut self,
        images: &TestImages,
        options: &Options,
        result: &mut RunResult,
    ) -> Result<()> {
        let client = RegistryClient::new(&images.registry)?;
        for round in 0..=options.pulls {
            for (key, image) in [
                (m::PULL_BUSYBOX, &images.busybox),
                (m::PULL_LAYERED, &images.layered),
            ] {
                let (repository, tag) = repository_and_tag(images, image)?;
                let dest = self.dir.join("pull").join(format!("{round}-{repository}"));
                let started = Instant::now();
                registry_fetch::fetch_and_unpack(
                    &client,
                    &repository,
                    &tag,
                    &dest,
                    &HashSet::new(),
                )
                .await?;
                if round > 0 {
                    result.samples(key).push(started.elapsed());
                }
                std::fs::remove_dir_all(&dest)
                    .with_context(|| format!("removing {}", dest.display()))?;
            }
        }
        Ok(())
    }

    /// The big images: the first one cold, then the second with the first's
    /// layers present (only its own top layer fetched and unpacked).
    async fn big_pulls(
        &mut self,
        big: &BigImages,
        options: &Options,
        result: &mut RunResult,
    ) -> Result<()> {
        let client = RegistryClient::new(&big.registry)?;
        let repository = super::big_image::REPOSITORY;
        for round in 0..=options.big_pulls {
            let dest = self.dir.join("pull").join(format!("{round}-big"));
            let started = Instant::now();
            registry_fetch::fetch_and_unpack(
                &client,
                repository,
                &big.first.tag,
                &dest.join("first"),
                &HashSet::new(),
            )
            .await?;
            let cold = started.elapsed();
            let started = Instant::now();
            registry_fetch::fetch_and_unpack(
                &client,
                repository,
                &big.second.tag,
                &dest.join("second"),
                &big.shared_layers(),
            )
            .await?;
            let shared = started.elapsed();
            if round > 0 {
                result.samples(m::PULL_BIG_COLD).push(cold);
                result.samples(m::PULL_BIG_SHARED).push(shared);
            }
            std::fs::remove_dir_all(&dest)
                .with_context(|| format!("removing {}", dest.display()))?;
        }
        Ok(())
    }

    /// Pins namespaces, runs `ip netns add`, then creates and starts a container.
    fn start_pod(&mut self, name: &str, result: Option<&mut RunResult>) -> Result<()> {
        let bundles = self.bundles.as_ref().context("bundles not prepared")?;
        let started = Instant::now();
        let pins = PinnedNamespaces::create(&self.dir.join("ns"), name)?;
        let pinned = started.elapsed();
        self.pins.push(pins);

        let ip_name = format!("crust-bench-{}-{name}", std::process::id());
        let started = Instant::now();
        namespaces::ip_netns_add(&ip_name)?;
        let ip_added = started.elapsed();
        self.ip_netns.push(ip_name);

        bundles.write(name)?;
        let started = Instant::now();
        bundles.create(name)?;
        let created = started.elapsed();
        self.containers.push(name.to_string());
        let started = Instant::now();
        bundles.start(name)?;
        let start = started.elapsed();
        if let Some(result) = result {
            result.samples(m::RUN_POD).push(pinned);
            result.samples(m::IP_NETNS_ADD).push(ip_added);
            result.samples(m::CREATE).push(created);
            result.samples(m::START).push(start);
            result.samples(m::CREATE_START).push(created + start);
        }
        Ok(())
    }

    /// Stops and removes every container, each followed by its pod's
    /// namespaces; what fails stays listed for the drop cleanup.
    fn stop_pods(&mut self, mut result: Option<&mut RunResult>) -> Result<()> {
        let bundles = self.bundles.as_ref().context("bundles not prepared")?;
        while let Some(id) = self.containers.first().cloned() {
            let started = Instant::now();
            bundles.kill_wait(&id)?;
            let stopped = started.elapsed();
            bundles.delete(&id)?;
            let container = started.elapsed();
            self.containers.remove(0);
            let started = Instant::now();
            if !self.pins.is_empty() {
                self.pins.remove(0).remove()?;
            }
            let pod = started.elapsed();
            let started = Instant::now();
            if let Some(name) = self.ip_netns.first().cloned() {
                namespaces::ip_netns_del(&name)?;
                self.ip_netns.remove(0);
            }
            let ip_deleted = started.elapsed();
            if let Some(result) = result.as_mut() {
                result.samples(m::STOP_REMOVE_CONTAINER).push(container);
                result.samples(m::STOP_CONTAINER).push(stopped);
                result
                    .samples(m::REMOVE_CONTAINER)
                    .push(container - stopped);
                result.samples(m::STOP_REMOVE_POD).push(pod);
                result.samples(m::IP_NETNS_DEL).push(ip_deleted);
            }
        }
        Ok(())
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        let mut problems = Vec::new();
        if let Some(bundles) = &self.bundles {
            problems.extend(bundles.delete_all());
        }
        for pin in std::mem::take(&mut self.pins) {
            if let Err(e) = pin.remove() {
                problems.push(format!("{e:#}"));
            }
        }
        for name in std::mem::take(&mut self.ip_netns) {
            if let Err(e) = namespaces::ip_netns_del(&name) {
                problems.push(format!("{e:#}"));
            }
        }
        problems.extend(cleanup::remove_dir_when_unmounted(&self.dir));
        problems.extend(cgroups::remove_tree(&self.cgroup_parent));
        // SAFETY: plain prctl on the calling process.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 0) };
        if !problems.is_empty() {
            eprintln!("crust-bench: floor cleanup had problems: {problems:#?}");
        }
    }
}

/// `("busybox", "1.0")` for `127.0.0.1:<port>/busybox:1.0`.
fn repository_and_tag(images: &TestImages, image: &PushedImage) -> Result<(String, String)> {
    let prefix = format!("{}/", images.registry);
    let repository = image
        .repository
        .strip_prefix(&prefix)
        .context("image is not in the benchmark registry")?;
    let tag = image
        .reference
        .rsplit_once(':')
        .map(|(_, t)| t)
        .context("image reference has no tag")?;
    Ok((repository.to_string(), tag.to_string()))
}
