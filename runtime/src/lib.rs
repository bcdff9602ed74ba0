//! crust's domain: pod sandboxes, containers and images, with no knowledge of protobuf.

pub mod cleanup;
pub mod clock;
pub mod container;
pub mod error;
pub mod events;
pub mod fsutil;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod ids;
pub mod image;
pub mod names;
pub mod runtime;
pub mod sandbox;
pub mod stats;
pub mod store;
pub mod sys;
pub mod teardown;

pub use error::{Error, Result};
pub use runtime::{Options, Runtime};
