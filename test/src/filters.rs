//! Short constructors for the ListContainers and ListPodSandbox filters.

use k8s_cri::v1::{
    ContainerFilter, ContainerState, ContainerStateValue, PodSandboxFilter, PodSandboxState,
    PodSandboxStateValue,
};

use crate::pod_config::string_map;

/// Containers with id `id`.
pub fn container_id(id: &str) -> ContainerFilter {
    ContainerFilter {
        id: id.into(),
        ..Default::default()
    }
}

/// Containers in `state`.
pub fn container_state(state: ContainerState) -> ContainerFilter {
    ContainerFilter {
        state: Some(ContainerStateValue {
            state: state as i32,
        }),
        ..Default::default()
    }
}

/// Containers of pod sandbox `pod_id`.
pub fn container_pod(pod_id: &str) -> ContainerFilter {
    ContainerFilter {
        pod_sandbox_id: pod_id.into(),
        ..Default::default()
    }
}

/// Containers carrying all of the labels `pairs`.
pub fn container_labels(pairs: &[(&str, &str)]) -> ContainerFilter {
    ContainerFilter {
        label_selector: string_map(pairs),
        ..Default::default()
    }
}

/// Pod sandboxes with id `id`.
pub fn pod_id(id: &str) -> PodSandboxFilter {
    PodSandboxFilter {
        id: id.into(),
        ..Default::default()
    }
}

/// Pod sandboxes in `state`.
pub fn pod_state(state: PodSandboxState) -> PodSandboxFilter {
    PodSandboxFilter {
        state: Some(PodSandboxStateValue {
            state: state as i32,
        }),
        ..Default::default()
    }
}

/// Pod sandboxes carrying all of the labels `pairs`.
pub fn pod_labels(pairs: &[(&str, &str)]) -> PodSandboxFilter {
    PodSandboxFilter {
        label_selector: string_map(pairs),
        ..Default::default()
    }
}
