//! crust's pod networking: network namespaces pinned without a helper process,
//! the loopback interface, and (later) CNI plugin execution.
//!
//! `runtime/` calls into this crate; nothing here knows about CRI or protobuf.

pub mod loopback;
pub mod nsfs;
