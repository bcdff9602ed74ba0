//! `make bench`: crust measured side by side with containerd (the peer) and
//! with the bare-runc floor on the same machine, reported as ratios.
//!
//! Each runtime gets the same CRI workload ([`workload`]) through the same
//! [`crate::CriClient`]: daemon memory idle, cold pulls, a warm-up round, N
//! pods each with a `sleep` container all kept running (latencies of every
//! step, daemon and shim memory at steady state), then teardown. The floor
//! ([`floor`]) does the least work those operations stand for, directly.
//! Runtimes run one after the other, never concurrently. A last case pulls a
//! 5-layer image of about 100 MiB of random bytes ([`big_image`]), cold and
//! with 4 of its layers present, with `skopeo copy` ([`skopeo`]) of the same
//! image as the reference point.

pub mod big_image;
pub mod containerd;
pub mod containerd_config;
pub mod crust;
pub mod floor;
pub mod machine;
pub mod markdown;
pub mod memory;
pub mod metrics;
pub mod namespaces;
pub mod options;
pub mod pause_image;
pub mod pods;
pub mod registry_fetch;
pub mod report;
pub mod results;
pub mod runc_bundle;
pub mod skopeo;
pub mod stats;
pub mod suite;
pub mod workload;
