//! crust's pod networking: network namespaces pinned without a helper process,
//! the loopback interface, and CNI: network config discovery (picked up again
//! when it changes), plugin execution (ADD, DEL, CHECK, STATUS) across a plugin
//! chain, runtime capabilities, and on-disk attachment records.
//!
//! `runtime/` calls into this crate; nothing here knows about CRI or protobuf.

pub mod cache;
pub mod capabilities;
pub mod config;
pub mod error;
pub mod invoke;
pub mod loopback;
pub mod network;
pub mod nsfs;
pub mod result;
pub mod userns;

pub use error::{Error, Result};
pub use network::{Attachment, Cni, PodNetwork, Settings};

/// CNI spec versions crust speaks.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
