//! SPDY/3.1, the multiplexing protocol client-go (kubelet, kubectl, crictl)
//! speaks to streaming servers: our own frame codec (no maintained crate
//! exists) and the session that serves one upgraded connection.

pub mod frame;
pub mod headers;
pub mod session;
