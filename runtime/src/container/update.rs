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
    /// UpdateContainerResources: applies `resources` to the container's
    /// cgroup (limits of controllers this host lacks are left out, as at
    /// create) and records them. `oom_score_adj` is a property of the
    /// container's processes, not of its cgroup: it keeps the value the
    /// container was created with.
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
                return Err(Error::FailedPrecondition(format!(
                    "container {} has exited; only a created or running container's resources can be updated",
                    c.id
                )));
            }
            let limits = spec::limits(&resources, &rt.cgroups)?;
            let json = serde_json::to_vec(&limits)
                .map_err(|e| Error::internal(format!("encoding the resources: {e}")))?;
            rt.host.runc.update(&c.id, &json).map_err(|e| {
                Error::Internal(e.context(format!("updating the resources of container {}", c.id)))
            })?;
            let mut rec = entry.rec();
            let oom_score_adj = rec.config.resources.oom_score_adj;
            rec.config.resources = Resources {
                oom_score_adj,
                ..resources
            };
            rt.container_records.save(&rec.id, &rec)?;
            tracing::info!(id = %rec.id, "container resources updated");
            Ok(())
        })
        .await
    }
}
