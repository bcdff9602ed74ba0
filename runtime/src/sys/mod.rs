//! The narrow kernel- and tool-facing layer: mounts, runc and crust-shim
//! invocations and process probes, most of them behind [`crate::host`].
//! Everything above it is plain logic.

pub mod bind;
pub mod cgroup;
pub mod cgroup_usage;
pub mod facts;
pub mod host_command;
pub mod link_stats;
pub mod mount;
pub mod netns;
pub mod notify;
pub mod oci_probe;
pub mod preflight;
pub mod process;
pub mod pty;
pub mod runc;
pub mod shim;
