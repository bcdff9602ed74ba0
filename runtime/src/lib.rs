//! crust's domain: pod sandboxes, containers and images, with no knowledge of protobuf.

pub mod cleanup;
pub mod clock;
pub mod container;
pub mod error;
pub mod events;
pub mod fsutil;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod host;
pub mod ids;
pub mod image;
pub mod names;
mod owed;
mod recovery;
pub mod runtime;
pub mod sandbox;
#[cfg(test)]
mod state_machine;
pub mod stats;
pub mod store;
pub mod sys;
pub mod teardown;
mod timing;
mod trash;

pub use error::{Error, Result};
pub use host::Host;
pub use runtime::{Options, Runtime};

/// Kills every runc and CNI call still running, for a crustd that exits
/// without waiting for them: restart recovery then finds what a crash
/// leaves, instead of racing calls that are still under way.
pub fn kill_running_helpers() {
    crust_child::kill_all();
}
