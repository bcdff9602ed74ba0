//! crust's domain: pod sandboxes, containers and images, with no knowledge of protobuf.

pub mod error;
pub mod fsutil;
pub mod image;

pub use error::{Error, Result};
