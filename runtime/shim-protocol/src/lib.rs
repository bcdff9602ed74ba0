//! The protocol between crustd and crust-shim, in one place both sides
//! build on, so a change to one side cannot silently break the other.
//!
//! - Files in a container's bundle: [`files`].
//! - The one line a starting shim (or `crust-shim pause`) writes on its
//!   stdout: [`Report`].
//! - The exit record the shim renames into the bundle: [`ExitRecord`].
//! - The control socket's requests and answers: [`control`].
//! - The attach socket's request line and frames: [`attach`].
//!
//! std only: crust-shim stays small.

pub mod attach;
pub mod control;
pub mod files;
pub mod json;
mod messages;

pub use messages::{ExitRecord, Report};
