//! UpdateContainerResources: new cgroup limits applied to a created or
//! running container through the OCI runtime, and kept in its record, so
//! ContainerStatus (also after a restart of crustd) reports what applies.

use std::sync::Arc;

use super::ContainerState;
use super::config::Resources;
use super::spec;
use crate::runtime::Runtime;
use crate::{Error, Result};

impl Runtime {
    /// UpdateContainerResources: merges `resources` into the container's
    /// (a field left at zero or empty keeps its value, as containerd does,
    /// so `crictl update --memory` changes the memory limit only), applies
    /// them to its cgroup (limits of controllers this host lacks are left
    /// out, as at create) and records them. `oom_score_adj` is a property
    /// of the container's processes, not of its cgroup: it keeps the value
    /// the container was created with.
    pub async fn update_container_resources(
        self: &Arc<Self>,
        id: &str,
        resources: Resources,
    ) -> Result<()> {
        resources.validate()?;
        let entry = self.container_entry(id)?;
        self.locked(&entry.clone(), move |rt| {
            rt.refresh_container(&entry);
            let c = entry.snapshot();
            if !matches!(c.state, ContainerState::Created | ContainerState::Running) {
                let state = format!("{:?}", c.state).to_lowercase();
                return Err(Error::FailedPrecondition(format!(
                    "container {} is {state}; only a created or running container's resources can be updated",
                    c.id
                )));
            }
            let resources = merged(&c.config.resources, resources);
            let limits = spec::limits(&resources, &rt.cgroups)?;
            let json = serde_json::to_vec(&limits)
                .map_err(|e| Error::internal(format!("encoding the resources: {e}")))?;
            rt.oci_runtime(&c)?.update(&c.id, &json).map_err(|e| {
                Error::Internal(e.context(format!("updating the resources of container {}", c.id)))
            })?;
            let mut rec = entry.rec();
            rec.config.resources = resources;
            rt.container_records.save(&rec.id, &rec)?;
            tracing::info!(id = %rec.id, "container resources updated");
            Ok(())
        })
        .await
    }
}

/// `new` over `old`: the limits `new` sets (non-zero, non-empty), `old`'s
/// for the rest; unified keys are merged one by one; `oom_score_adj`
/// always `old`'s.
fn merged(old: &Resources, new: Resources) -> Resources {
    let mut r = old.clone();
    for (field, value) in [
        (&mut r.cpu_period, new.cpu_period),
        (&mut r.cpu_quota, new.cpu_quota),
        (&mut r.cpu_shares, new.cpu_shares),
        (&mut r.memory_limit_in_bytes, new.memory_limit_in_bytes),
        (
            &mut r.memory_swap_limit_in_bytes,
            new.memory_swap_limit_in_bytes,
        ),
    ] {
        if value != 0 {
            *field = value;
        }
    }
    for (field, value) in [
        (&mut r.cpuset_cpus, new.cpuset_cpus),
        (&mut r.cpuset_mems, new.cpuset_mems),
    ] {
        if !value.is_empty() {
            *field = value;
        }
    }
    if !new.hugepage_limits.is_empty() {
        r.hugepage_limits = new.hugepage_limits;
    }
    r.unified.extend(new.unified);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_and_empty_fields_keep_their_values() {
        let old = Resources {
            cpu_shares: 256,
            cpu_quota: 20_000,
            cpu_period: 100_000,
            memory_limit_in_bytes: 64 << 20,
            oom_score_adj: 500,
            cpuset_cpus: "0".into(),
            unified: [("memory.high".to_string(), "1".to_string())].into(),
            ..Default::default()
        };
        let new = Resources {
            memory_limit_in_bytes: 96 << 20,
            oom_score_adj: -999,
            unified: [("pids.max".to_string(), "10".to_string())].into(),
            ..Default::default()
        };
        let r = merged(&old, new);
        assert_eq!(r.memory_limit_in_bytes, 96 << 20);
        assert_eq!(
            (r.cpu_shares, r.cpu_quota, r.cpu_period),
            (256, 20_000, 100_000)
        );
        assert_eq!(r.cpuset_cpus, "0");
        assert_eq!(r.oom_score_adj, 500);
        assert_eq!(r.unified.len(), 2);
    }
}
